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

/// A membership datagram (the bytes of a `Body::Foca`, which an admitted
/// peer could fill with anything): `gossip::members::screen` as `n1`
/// sent it to `n2`, which admits every node but `n9`, then foca itself.
/// What the screen passes names `n1` as its sender and carries no news
/// of `n9`.
pub fn gossip_membership(data: &[u8]) {
    use crate::gossip::members::{screen, FocaId, Members};
    use crate::gossip::membership::SwimConfig;
    use crate::gossip::NodeId;
    use foca::{Codec, Header, Member, PostcardCodec};
    let me = FocaId {
        id: NodeId("n2".into()),
        addr: "10.0.0.2:7946".parse().expect("an address"),
        generation: 1,
    };
    let sender = NodeId("n1".into());
    let Ok(out) = screen(data, &sender, &me, &|id| id.0 != "n9") else {
        return;
    };
    let mut c = PostcardCodec;
    let mut rest = &out[..];
    let h: Header<FocaId> = c.decode_header(&mut rest).expect("what passed decodes");
    assert_eq!(h.src.id, sender, "a screened datagram names its sender");
    if rest.len() >= 2 && h.message != foca::Message::Broadcast {
        let n = u16::from_be_bytes([rest[0], rest[1]]);
        rest = &rest[2..];
        for _ in 0..n {
            let m: Member<FocaId> = c.decode_member(&mut rest).expect("what passed decodes");
            assert_ne!(m.id().id.0, "n9", "news of a node not admitted passed");
        }
    }
    let mut m = Members::new(SwimConfig::default(), me.id.clone(), me.addr, 1, 1);
    m.handle(0, &out);
    m.tick(60_000);
    let _ = m.take_sends().count();
}

/// A valid membership datagram (n1 gossips to n2 that n3 and n9 are
/// alive), the seed of the membership corpus.
pub fn sample_membership() -> Vec<u8> {
    use crate::gossip::members::FocaId;
    use crate::gossip::NodeId;
    use foca::{Codec, Header, Member, Message, PostcardCodec};
    let id = |i: u16| FocaId {
        id: NodeId(format!("n{i}")),
        addr: format!("10.0.0.{i}:7946").parse().expect("an address"),
        generation: 1,
    };
    let mut c = PostcardCodec;
    let mut out = Vec::new();
    c.encode_header(
        &Header {
            src: id(1),
            src_incarnation: 0,
            dst: id(2),
            message: Message::Gossip,
        },
        &mut out,
    )
    .expect("encodes");
    out.extend_from_slice(&2u16.to_be_bytes());
    for i in [3, 9] {
        c.encode_member(&Member::alive(id(i)), &mut out)
            .expect("encodes");
    }
    out
}

/// The relocation tunnel's accepting end (`relocate::tunnel::accept`),
/// which a node would open to anyone who can reach its port: `data` is
/// what the opener sends (frames and all), then it closes. Without the
/// keys of an admitted node no tunnel is ever accepted.
pub fn relocate_tunnel(data: &[u8]) {
    use crate::gossip::channel::ChannelKey;
    use crate::gossip::trust::Members;
    use crate::gossip::verify::{AcceptAll, MembersOnly};
    use crate::relocate::tunnel::{accept, TunnelKey};
    use std::sync::{Arc, OnceLock};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    static KEY: OnceLock<TunnelKey> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let k = crate::identity::PrivateKey::from_bytes(
            &[9; 32],
            true,
            crate::identity::Network::Regtest,
        )
        .expect("a valid key");
        TunnelKey {
            key: Arc::new(ChannelKey::new(&k, "fuzz")),
            cluster: "fuzz".into(),
            verifier: Arc::new(MembersOnly {
                members: Arc::new(Members::new("fuzz")),
                documents: AcceptAll,
            }),
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 18);
        let (mut cr, mut cw) = tokio::io::split(client);
        let opener = async {
            let _ = cw.write_all(data).await;
            let _ = cw.shutdown().await;
            let mut sink = Vec::new();
            let _ = cr.read_to_end(&mut sink).await;
        };
        let (r, _) = tokio::join!(accept(server, key), opener);
        assert!(r.is_err(), "a tunnel was accepted from bytes without a key");
    });
}

/// A message of a `fetch` tunnel between nodes (after the tunnel's
/// handshake, an admitted peer's ask or answer), decoded and checked as
/// the holder does before it acts.
pub fn relocate_fetch(data: &[u8]) {
    let _ = crate::relocate::agent::check_fetch_message(data);
}

/// What a DHCPCAST gateway takes from a relaying node's tunnel (a
/// message: an admitted peer's, but any bytes) and from the network (a
/// server's reply): decoded, rewritten towards the server, and back.
pub fn dhcpcast_gateway(data: &[u8]) {
    use crate::dhcp::gateway::{toward_node, toward_server, Msg};
    let (node, gateway) = ([10, 77, 0, 1].into(), [10, 55, 0, 1].into());
    if let Some(Msg::Up { packet, .. } | Msg::Down { packet, .. }) = Msg::decode(data) {
        if let Ok(r) = toward_server(&packet, gateway) {
            assert!(r.packet.len() <= crate::dhcp::server::MAX_PACKET);
        }
        let _ = toward_node(&packet, node);
    }
    let _ = toward_node(data, node);
}

/// A relayed request as a node sends it to its gateway, to mutate.
pub fn sample_dhcpcast_up() -> Vec<u8> {
    crate::dhcp::gateway::sample_up()
}

/// A valid fetch ask, to mutate.
pub fn sample_fetch_ask() -> Vec<u8> {
    crate::relocate::agent::sample_fetch_ask()
}

/// A first handshake message of the tunnel (a frame holding an
/// ephemeral key), the seed of its corpus.
pub fn sample_tunnel_hello() -> Vec<u8> {
    let mut hs = snow::Builder::new(
        crate::relocate::tunnel::TUNNEL_PATTERN
            .parse()
            .expect("a valid pattern"),
    )
    .local_private_key(&[5; 32])
    .expect("set once")
    .build_initiator()
    .expect("an initiator");
    let mut buf = vec![0u8; 1024];
    let n = hs.write_message(&[], &mut buf).expect("fits");
    let mut out = (n as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&buf[..n]);
    out
}

/// The gossip channel (`gossip::channel::Channel::open`), which sees
/// every datagram before anything else: up to 8 datagrams (each a
/// 2-byte little-endian length and its bytes) fed in order to a fresh
/// channel from one address. Nothing arbitrary gets through: without the
/// keys no handshake completes, so no datagram is ever opened.
pub fn gossip_channel(data: &[u8]) {
    use crate::gossip::channel::{Channel, ChannelConfig, ChannelKey};
    use crate::gossip::trust::Members;
    use crate::gossip::verify::{AcceptAll, MembersOnly};
    use std::sync::{Arc, OnceLock};
    static KEY: OnceLock<Arc<ChannelKey>> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let k = crate::identity::PrivateKey::from_bytes(
            &[7; 32],
            true,
            crate::identity::Network::Regtest,
        )
        .expect("a valid key");
        Arc::new(ChannelKey::new(&k, "fuzz"))
    });
    let members = Arc::new(Members::new("fuzz"));
    let v: Arc<dyn crate::gossip::Verifier> = Arc::new(MembersOnly {
        members,
        documents: AcceptAll,
    });
    let mut ch = Channel::new(ChannelConfig::default(), key.clone(), "fuzz", v, 1);
    let from: crate::gossip::NodeAddr = "10.0.0.2:7946".parse().expect("an address");
    let mut rest = data;
    let mut out = Vec::new();
    for _ in 0..8 {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let n = (u16::from_le_bytes(*len) as usize).min(tail.len());
        let (frame, tail) = tail.split_at(n);
        assert!(
            ch.open(0, from, frame, &mut out).is_none(),
            "an arbitrary datagram got through the channel"
        );
        rest = tail;
    }
    ch.tick(10_000, &mut out);
}

/// Frames a real exchange produces (length-prefixed as
/// [`gossip_channel`] reads them): a first handshake message and a data
/// frame of another session.
pub fn sample_channel_frames() -> Vec<u8> {
    use crate::gossip::channel::{Channel, ChannelConfig, ChannelKey};
    use crate::gossip::verify::AcceptAll;
    use std::sync::Arc;
    let k =
        crate::identity::PrivateKey::from_bytes(&[9; 32], true, crate::identity::Network::Regtest)
            .expect("a valid key");
    let mut a = Channel::new(
        ChannelConfig::default(),
        Arc::new(ChannelKey::new(&k, "fuzz")),
        "fuzz",
        Arc::new(AcceptAll),
        2,
    );
    let mut out = Vec::new();
    a.seal(
        0,
        "10.0.0.1:7946".parse().expect("an address"),
        &sample_datagram(),
        &mut out,
    );
    let mut frames = Vec::new();
    for (_, f) in out {
        frames.extend_from_slice(&(f.len() as u16).to_le_bytes());
        frames.extend_from_slice(&f);
    }
    let mut data = vec![4u8];
    data.extend_from_slice(&[1, 0, 0, 0]);
    data.extend_from_slice(&0u64.to_le_bytes());
    data.extend_from_slice(&[0x55; 48]);
    frames.extend_from_slice(&(data.len() as u16).to_le_bytes());
    frames.extend_from_slice(&data);
    frames
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

/// A join request body (`POST /v1/join`) as the node parses and checks
/// it: arbitrary bytes never pass the check, and one that parses checks
/// without panicking whatever its fields hold.
pub fn join_request(data: &[u8]) {
    use crate::http::join::JoinRequest;
    if let Ok(r) = serde_json::from_slice::<JoinRequest>(data) {
        let _ = r.check("C", r.time);
        assert!(
            r.check("C", 1_000).is_err() || r.time.abs_diff(1_000) <= 300,
            "a request far from the clock passed"
        );
    }
}

/// A valid join request body, to mutate.
pub fn sample_join_request() -> Vec<u8> {
    let key =
        crate::identity::PrivateKey::from_bytes(&[7; 32], true, crate::identity::Network::Mainnet)
            .expect("a key");
    let address = key
        .address(crate::identity::AddressType::P2wpkh)
        .expect("an address")
        .to_string();
    let r = crate::http::join::JoinRequest::signed(&key, "C", "sat-new", &address, 1_000);
    serde_json::to_vec(&r).expect("JSON")
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

/// The search bar's command line (`POST /v1/command`): any text is parsed
/// and planned against a small world without a panic; an error's column
/// lies within the text (or one past it); a plan that changes something
/// carries one manifest that validates.
pub fn command(data: &[u8]) {
    use crate::model::{Kind, ObjectKey};
    use crate::store::{Record, SourceId};
    let text = String::from_utf8_lossy(data);
    let rec = |kind: Kind, name: &str, spec: serde_json::Value, status: serde_json::Value| Record {
        key: ObjectKey::new(kind, None, name),
        generation: 1,
        source: SourceId("fuzz".into()),
        hash: String::new(),
        object: serde_json::json!({"apiVersion": crate::model::API_VERSION, "kind": kind.as_str(),
            "metadata": {"name": name}, "spec": spec}),
        status: Some(status),
        deleted: false,
        updated_ms: 0,
    };
    let records = vec![
        rec(
            Kind::Satellite,
            "sat-a",
            serde_json::json!({"addresses": ["10.0.0.7"], "tags": {"macrocosm": {"city": "frankfurt"}}, "performance": "high"}),
            serde_json::json!({}),
        ),
        rec(
            Kind::Spacesuit,
            "tiny",
            serde_json::json!({"memory": "64Mi"}),
            serde_json::json!({}),
        ),
        rec(
            Kind::VirtualMachine,
            "web1",
            serde_json::json!({"spacesuit": "tiny", "disks": [{"name": "data", "source": {"blank": {}}, "size": "8Mi"}]}),
            serde_json::json!({"phase": "Running", "node": "sat-a"}),
        ),
        rec(
            Kind::Replica,
            "web1-r1",
            serde_json::json!({"virtualMachine": {"name": "web1"}}),
            serde_json::json!({"phase": "Ready"}),
        ),
    ];
    match crate::command::answer(
        &text,
        &records
            .into_iter()
            .map(std::sync::Arc::new)
            .collect::<Vec<_>>(),
    ) {
        Err(e) => {
            let column = e["column"].as_u64().expect("an error has a column") as usize;
            assert!(
                column >= 1 && column <= text.chars().count() + 1
                    || text.len() > crate::command::MAX_QUERY,
                "column {column} outside {text:?}"
            );
        }
        Ok((_, Some(yaml))) => {
            let parsed = crate::manifest::parse_str(std::path::Path::new("<command>"), &yaml);
            assert!(
                parsed.diagnostics.is_empty() && parsed.documents.len() == 1,
                "{text:?} planned an invalid manifest: {:?}\n{yaml}",
                parsed.diagnostics
            );
        }
        Ok((_, None)) => {}
    }
}

/// A client's bytes on a console websocket (`http::ws::Decoder`, which
/// sees them before anything else on the SPICE bridge): the first byte
/// chooses the frame limit and the size of the pieces the rest arrives
/// in. Pieces change nothing (the same frames, then the same error);
/// every frame is exactly the bytes it came from (encoded again with
/// their mask: lengths are shortest, no reserved bit passes); what is
/// left undecoded without an error is one unfinished frame; an error is
/// for good.
pub fn websocket(data: &[u8]) {
    use crate::http::ws::{encode, Decoder, Frame, ProtocolError};
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let max = [16usize, 125, 300, 70_000][(first & 3) as usize];
    let piece = 1 + (first >> 2) as usize;
    let run = |step: usize| -> (Vec<Frame>, Option<ProtocolError>, usize) {
        let mut d = Decoder::new(max);
        let mut frames = Vec::new();
        for chunk in rest.chunks(step.max(1)) {
            d.feed(chunk);
            loop {
                match d.next() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => {
                        assert_eq!(d.next(), Err(e.clone()), "an error is for good");
                        return (frames, Some(e), d.pending());
                    }
                }
            }
        }
        (frames, None, d.pending())
    };
    let (frames, error, pending) = run(rest.len());
    let (pieces, error_in_pieces, _) = run(piece);
    assert_eq!(pieces, frames, "pieces of {piece} decode otherwise");
    assert_eq!(error_in_pieces, error);
    let mut at = 0;
    for f in &frames {
        assert!(f.payload.len() <= max, "a frame over the limit passed");
        let head = 6 + match f.payload.len() {
            0..=125 => 0,
            126..=0xffff => 2,
            _ => 8,
        };
        let mask: [u8; 4] = rest[at + head - 4..at + head].try_into().expect("4 bytes");
        let mut again = Vec::new();
        encode(&mut again, f.fin, f.opcode, &f.payload, Some(mask));
        assert_eq!(
            again,
            rest[at..at + again.len()],
            "a frame is not the bytes it came from"
        );
        at += again.len();
    }
    if error.is_none() {
        assert_eq!(pending, rest.len() - at, "bytes lost between frames");
    }
}

/// A client's first frames on the SPICE bridge, the seed of the websocket
/// corpus: a limit of 70,000 bytes, then a fragmented binary message with
/// a ping inside it, a 300-byte frame, a pong and a close.
pub fn sample_websocket() -> Vec<u8> {
    use crate::http::ws::{close_payload, encode, Opcode};
    let mask = Some([0x12, 0x34, 0x56, 0x78]);
    let mut out = vec![3];
    encode(&mut out, false, Opcode::Binary, b"REDQ", mask);
    encode(&mut out, true, Opcode::Ping, b"hi", mask);
    encode(&mut out, true, Opcode::Continuation, &[2, 0, 0, 0], mask);
    encode(&mut out, true, Opcode::Binary, &[7; 300], mask);
    encode(&mut out, true, Opcode::Pong, b"", mask);
    encode(
        &mut out,
        true,
        Opcode::Close,
        &close_payload(1000, "bye"),
        mask,
    );
    out
}
