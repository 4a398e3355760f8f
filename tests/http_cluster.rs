//! Sessions across the cluster, with two real nodes (HTTP API and signed
//! gossip): a cookie made by node A works on node B with no flag (B knows
//! A is an admitted node from the owner's AccessPolicy); a cookie from a
//! node nobody admitted does not; an address no policy names gets no
//! session; an owner's `revokedSessions` entry, applied on A, ends the
//! session on both nodes.

mod common;

use std::time::{Duration, Instant};

use deorch::http::client::{request, NodeUrl, Reply};
use deorch::identity::{AddressType, Network, PrivateKey};

const T: Duration = Duration::from_secs(10);

fn get(url: &NodeUrl, path: &str, cookie: &str) -> Reply {
    request(url, "GET", path, None, Some(cookie), b"", T).unwrap()
}

#[test]
fn a_cookie_from_one_admitted_node_works_on_another_until_revoked() {
    let owner = PrivateKey::generate(Network::Mainnet);
    let owner_addr = owner.address(AddressType::P2wpkh).unwrap().to_string();
    let user = PrivateKey::generate(Network::Mainnet);
    let user_addr = user.address(AddressType::P2wpkh).unwrap().to_string();
    let stranger = PrivateKey::generate(Network::Mainnet);

    let flags = |extra: &[&str]| -> Vec<String> {
        let mut f = vec!["--http-listen".to_string(), "127.0.0.1:0".to_string()];
        f.extend(common::gossip_args(&owner_addr, extra));
        f
    };
    let mut a = common::Node::new("http-cluster-a");
    a.name = "a".into();
    let mut b = common::Node::new("http-cluster-b");
    b.name = "b".into();
    // c has a key and an HTTP API but is not admitted.
    let mut c = common::Node::new("http-cluster-c");
    c.name = "c".into();
    let (ida, idb) = (common::give_node_key(&a), common::give_node_key(&b));
    common::give_node_key(&c);
    let rules = format!("    - subjects: [\"{user_addr}\"]\n      role: viewer\n");
    let members = |generation: u64, revoked: &str| {
        let mut p = common::members_policy(generation, &[("a", &ida), ("b", &idb)], &rules);
        if !revoked.is_empty() {
            p.push_str(&format!("  revokedSessions: [\"{revoked}\"]\n"));
        }
        p
    };
    a.extra_args.extend(flags(&[]));
    a.start();
    common::apply_owner_signed(&a, &owner, &members(1, ""));
    let seed = common::gossip_address(&a);
    b.extra_args.extend(flags(&["--seed", &seed]));
    b.start();
    common::apply_owner_signed(&b, &owner, &members(1, ""));
    c.extra_args.extend(flags(&[]));
    c.start();
    common::apply_owner_signed(&c, &owner, &members(1, ""));
    let (ua, ub, uc) = (
        NodeUrl::parse(&a.http_url()).unwrap(),
        NodeUrl::parse(&b.http_url()).unwrap(),
        NodeUrl::parse(&c.http_url()).unwrap(),
    );

    // No session for an address no policy names.
    assert!(deorch::cli::http::login_once(&ua, &stranger, AddressType::P2wpkh).is_err());

    // A's cookie on B: accepted, no flag.
    let (_, token) = deorch::cli::http::login_once(&ua, &user, AddressType::P2wpkh).unwrap();
    let cookie = format!("deorch_session={token}");
    let who = get(&ub, "/v1/auth/whoami", &cookie);
    assert_eq!(who.status, 200, "B refused A's cookie: {}", who.json());
    assert_eq!(who.json()["address"], user_addr.as_str());
    assert_eq!(who.json()["node"], ida.as_str());
    let listed = get(&ub, "/v1/objects?kind=AccessPolicy", &cookie);
    assert_eq!(listed.status, 200, "{}", listed.json());

    // The command line on A lists both members (b has no Satellite object
    // on A: the radar has its gossiped status), each with its page, so
    // that A's page links to B's.
    let page = |u: &str| format!("{}/", u.split('#').next().unwrap());
    let t0 = Instant::now();
    let rows = loop {
        let r = request(
            &ua,
            "POST",
            "/v1/command",
            Some("application/json"),
            Some(&cookie),
            br#"{"q": "nodes", "run": false}"#,
            T,
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.json());
        let rows = r.json()["results"].as_array().cloned().unwrap_or_default();
        let url_of = |n: &str| {
            rows.iter()
                .find(|x| x["kind"] == "Satellite" && x["name"] == n)
                .and_then(|x| x["url"].as_str())
                .map(str::to_string)
        };
        if url_of("a").is_some() && url_of("b").is_some() {
            assert_eq!(url_of("a").unwrap(), page(&a.http_url()));
            assert_eq!(url_of("b").unwrap(), page(&b.http_url()));
            break rows;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "`nodes` on A lists no page for a and b: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        rows.iter().all(|x| x["name"] != "c"),
        "c is no member: {rows:?}"
    );
    // A cookie made by c, which no policy admits, is refused by A.
    let (_, from_c) = deorch::cli::http::login_once(&uc, &user, AddressType::P2wpkh).unwrap();
    let r = get(&ua, "/v1/auth/whoami", &format!("deorch_session={from_c}"));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "UntrustedNode", "{}", r.json());

    // Revoked by the owner on A: refused on A and, once gossip carried
    // the policy, on B.
    let fingerprint = who.json()["fingerprint"].as_str().unwrap().to_string();
    common::apply_owner_signed(&a, &owner, &members(2, &fingerprint));
    let t0 = Instant::now();
    for (url, name) in [(&ua, "a"), (&ub, "b")] {
        loop {
            let r = get(url, "/v1/auth/whoami", &cookie);
            if r.status == 401 {
                assert_eq!(r.json()["code"], "SessionRevoked", "{}", r.json());
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{name} still accepts the revoked session"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!(
        "revoked session refused on both nodes {:?} after the policy",
        t0.elapsed()
    );
    // A new login works again.
    let (_, again) = deorch::cli::http::login_once(&ub, &user, AddressType::P2wpkh).unwrap();
    assert_eq!(
        get(&ua, "/v1/auth/whoami", &format!("deorch_session={again}")).status,
        200
    );
}
