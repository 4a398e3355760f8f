//! Level 2 at login, end to end through a real node's HTTP API, as the
//! product's demonstration: a policy asks a directory password of a user
//! whose servers are tried in order — the first refuses connections, the
//! second is stopped, the third does not know the user, the fourth (a
//! real slapd) accepts. No password: asked for; wrong: refused, the
//! servers' reasons in the node's log and never the password; right:
//! accepted by the fourth, and the session's actions that need level 2
//! pass, here and on a second node that learns them by gossip (the first
//! node signs the change and attests the user and the level 2 it
//! checked).

mod common;

use std::time::{Duration, Instant};

use common::slapd::{directory_server, free_port, slapd_available, start};
use deorch::http::client::{request, NodeUrl};
use deorch::identity::{AddressType, Network, PrivateKey};
use serde_json::json;

const T: Duration = Duration::from_secs(10);
const PASSWORD: &str = "correct horse battery staple";

#[test]
fn login_asks_the_directory_password_and_fails_over_to_the_fourth_server() {
    if !slapd_available() {
        return;
    }
    let refused_port = free_port();
    let mut second = start("h-second", &[("alice", PASSWORD)]);
    let third = start("h-third", &[("bob", PASSWORD)]);
    let fourth = start("h-fourth", &[("alice", PASSWORD)]);
    let second_port = second.port;
    second.stop();

    let owner = PrivateKey::generate(Network::Mainnet);
    let owner_addr = owner.address(AddressType::P2wpkh).unwrap().to_string();
    let user = PrivateKey::generate(Network::Mainnet);
    let user_addr = user.address(AddressType::P2wpkh).unwrap().to_string();
    // Two admitted nodes with signed gossip; the user logs in on the first.
    let gossip = |seed: Option<&str>| -> Vec<String> {
        let mut a = vec!["--http-listen".to_string(), "127.0.0.1:0".to_string()];
        a.extend(common::gossip_args(
            &owner_addr,
            &seed.map(|s| vec!["--seed", s]).unwrap_or_default(),
        ));
        a
    };
    let mut node = common::Node::new("http-level2");
    node.name = "l2a".into();
    let mut peer = common::Node::new("http-level2-peer");
    peer.name = "l2b".into();
    let members = common::members_policy(
        1,
        &[
            ("l2a", &common::give_node_key(&node)),
            ("l2b", &common::give_node_key(&peer)),
        ],
        "",
    );
    node.extra_args.extend(gossip(None));
    node.start();
    common::apply_owner_signed(&node, &owner, &members);
    let seed = common::gossip_address(&node);
    peer.extra_args.extend(gossip(Some(&seed)));
    peer.start();
    common::apply_owner_signed(&peer, &owner, &members);
    let url = NodeUrl::parse(&node.http_url()).unwrap();

    let servers: Vec<_> = [refused_port, second_port, third.port, fourth.port]
        .into_iter()
        .map(directory_server)
        .collect();
    common::push_owner_signed(
        &url,
        &owner,
        &common::level2_policy(&user_addr, &servers, "alice"),
    );
    let login = |password| common::login(&url, &user, password);

    // No password: asked for one, no session.
    let r = login(None);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (401, json!("PasswordRequired"))
    );
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("password required"));
    assert!(r.header("set-cookie").is_none());
    // Wrong: refused after every server said no.
    let r = login(Some("wrong password"));
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (401, json!("Level2Refused"))
    );
    // Right: the fourth accepts.
    let t = Instant::now();
    let r = login(Some(PASSWORD));
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["level2"], true);
    eprintln!("level-2 login through the HTTP API, accepted by the 4th server: {took:?}");
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();

    // An action the level-2 rule allows: applied with this session.
    let vm = "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {name: l2}\nspec:\n  cpu: 1\n  memory: 64Mi\n";
    let r = request(
        &url,
        "POST",
        "/v1/manifests",
        Some("application/yaml"),
        Some(&cookie),
        vm.as_bytes(),
        T,
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The peer takes it as the user's, level 2 attested by the first node
    // (without the attestation its policy rule would refuse it).
    let t = Instant::now();
    peer.wait_within(
        "the level-2 change on the peer",
        Duration::from_secs(10),
        |n| n.record("vm", "l2").is_some(),
    );
    let ann = peer.record("vm", "l2").unwrap().object["metadata"]["annotations"].clone();
    assert_eq!(ann["deorch.dev/on-behalf-of"], user_addr.as_str());
    assert_eq!(ann["deorch.dev/level2"], "true");
    eprintln!("level-2 change on the peer {:?} later", t.elapsed());

    // The log names each server's refusal and never the password.
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.contains("level-2 password required"), "asked");
    assert!(
        log.contains(&format!("ldap://127.0.0.1:{refused_port}"))
            && log.contains("directory server did not accept"),
        "the servers' reasons are logged"
    );
    assert!(
        log.contains("level 2 passed")
            && log.contains(&format!("ldap://127.0.0.1:{}", fourth.port))
    );
    assert!(
        !log.contains(PASSWORD) && !log.contains("wrong password"),
        "a password reached the log"
    );
    drop(third);
    drop(fourth);
    drop(peer);
}
