//! The entry points fuzzers and the parser property tests share: each
//! takes arbitrary bytes, feeds them to a parser that faces the network or
//! a user the way the node does, and checks what must hold whatever the
//! input (no panic; a decoded message encodes back to itself; refusals
//! stay refusals). `fuzz/fuzz_targets/*.rs` call them under libFuzzer
//! (`cargo +nightly fuzz run NAME`), `tests/parsers_fuzz.rs` with random
//! and mutated inputs on every CI run.

use std::path::Path;

use crate::identity::session::{Challenge, NonceStore, Session};
use crate::identity::{verify, Address};

/// Split `data` in `n` parts at its first `n - 1` NUL bytes.
fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |b| *b == 0).collect();
    out.resize(n, &[]);
    out
}

/// A gossip datagram: `gossip::wire::decode`, and what decodes encodes
/// back to the same message.
pub fn gossip_datagram(data: &[u8]) {
    if let Ok(env) = crate::gossip::wire::decode(data) {
        let again = crate::gossip::wire::decode(&crate::gossip::wire::encode(&env))
            .expect("an encoded envelope decodes");
        assert_eq!(again, env, "decode(encode(x)) != x");
    }
}

/// The login path: a challenge text, an address and a signature (NUL
/// separated) against a nonce store, then as a session token and a cookie
/// header. Nothing arbitrary logs in or passes as a session.
pub fn login(data: &[u8]) {
    let p = parts(data, 3);
    let text = String::from_utf8_lossy(p[0]);
    let address = String::from_utf8_lossy(p[1]);
    let signature = String::from_utf8_lossy(p[2]);
    let _ = Challenge::parse(&text);
    let mut store = NonceStore::new(
        "bc1qyjjkmdpu7metqt5r36jf872a34syws33s82q2j",
        "bc1qnode",
        60,
        4,
    );
    let issued = store.issue(1_000).text();
    assert!(
        store.login(&text, &address, &signature, 1_001).is_err(),
        "arbitrary input logged in"
    );
    // With a real outstanding challenge and arbitrary signatures.
    let _ = store.login(&issued, &address, &signature, 1_001);
    // A token needs a node's signature: nothing arbitrary passes, even
    // when every signer counted as a node.
    assert!(
        Session::from_token(&text, "C", 0, |_| true).is_err(),
        "an arbitrary token was accepted"
    );
    let mut headers = axum::http::HeaderMap::new();
    if let Ok(v) = axum::http::HeaderValue::from_bytes(p[0]) {
        headers.insert(axum::http::header::COOKIE, v);
        if let Some(token) = crate::http::session_cookie(&headers) {
            let _ = Session::from_token(token, "C", 0, |_| false);
        }
    }
}

/// An address, a signature and a message (NUL separated) through
/// `identity::verify`: parsing never panics, and a parsed address prints
/// back to an address that parses to itself.
pub fn address_and_signature(data: &[u8]) {
    let p = parts(data, 3);
    let address = String::from_utf8_lossy(p[0]);
    if let Ok(a) = Address::parse(&address) {
        assert_eq!(Address::parse(&a.to_string()).ok(), Some(a));
    }
    let _ = verify(&address, &String::from_utf8_lossy(p[1]), p[2]);
}

/// A manifest file's text through the one manifest parser (YAML, schema,
/// checks), as a dropped file or a pushed body is read.
pub fn manifest(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = crate::manifest::parse_str(Path::new("fuzz.yaml"), &text);
    // Something is said of every non-empty input: documents or problems.
    if text.trim().is_empty() {
        assert!(parsed.documents.is_empty());
    }
}

/// A valid gossip datagram (a ping carrying one membership update), the
/// seed of the gossip corpus.
pub fn sample_datagram() -> Vec<u8> {
    use crate::gossip::wire::{encode, Body, Envelope, MemberState, MemberUpdate, NodeId};
    let addr = "127.0.0.1:7946".parse().expect("an address");
    encode(&Envelope {
        from: NodeId("n1".into()),
        addr,
        incarnation: 3,
        body: Body::Ping {
            seq: 7,
            updates: vec![MemberUpdate {
                id: NodeId("n2".into()),
                addr,
                incarnation: 1,
                state: MemberState::Suspect,
            }],
        },
    })
}
