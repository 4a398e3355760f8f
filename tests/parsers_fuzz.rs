//! Every parser that faces the network or a user, fed random bytes and
//! mutations of valid inputs on each CI run (the same entry points the
//! libFuzzer targets in `fuzz/` call, see `deorch::fuzzing`).

use deorch::fuzzing;
use deorch::identity::{sign, AddressType, Network, PrivateKey};
use proptest::prelude::*;

/// Valid inputs to mutate: a gossip datagram, a login, a signature, a
/// manifest, channel frames.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let k = PrivateKey::generate(Network::Mainnet);
    let a = k.address(AddressType::P2wpkh).unwrap().to_string();
    let msg =
        b"deorch login\ncluster: C\nnode: N\nissued: 1\nnonce: 00000000000000000000000000000000";
    let sig = sign(&k, msg, AddressType::P2wpkh).unwrap();
    let login = [&msg[..], b"\0", a.as_bytes(), b"\0", sig.as_bytes()].concat();
    let manifest = b"apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {name: web}\nspec:\n  cpu: 2\n  memory: 1Gi\n  disks:\n    - {name: root, size: 1Gi}\n".to_vec();
    let datagram = fuzzing::sample_datagram();
    vec![
        ("gossip_datagram", datagram),
        ("login", login.clone()),
        ("address_and_signature", login),
        ("manifest", manifest),
        ("gossip_channel", fuzzing::sample_channel_frames()),
        ("gossip_membership", fuzzing::sample_membership()),
        ("relocate_tunnel", fuzzing::sample_tunnel_hello()),
        ("relocate_fetch", fuzzing::sample_fetch_ask()),
        (
            "command",
            b"create vm web2 from web1 on city=frankfurt performance=high".to_vec(),
        ),
        ("websocket", fuzzing::sample_websocket()),
        ("join_request", fuzzing::sample_join_request()),
        ("dhcpcast_gateway", fuzzing::sample_dhcpcast_up()),
    ]
}

fn run(target: &str, data: &[u8]) {
    match target {
        "gossip_datagram" => fuzzing::gossip_datagram(data),
        "login" => fuzzing::login(data),
        "address_and_signature" => fuzzing::address_and_signature(data),
        "manifest" => fuzzing::manifest(data),
        "gossip_channel" => fuzzing::gossip_channel(data),
        "gossip_membership" => fuzzing::gossip_membership(data),
        "relocate_tunnel" => fuzzing::relocate_tunnel(data),
        "relocate_fetch" => fuzzing::relocate_fetch(data),
        "command" => fuzzing::command(data),
        "websocket" => fuzzing::websocket(data),
        "join_request" => fuzzing::join_request(data),
        "dhcpcast_gateway" => fuzzing::dhcpcast_gateway(data),
        _ => unreachable!(),
    }
}

const TARGETS: [&str; 12] = [
    "gossip_datagram",
    "login",
    "address_and_signature",
    "manifest",
    "gossip_channel",
    "gossip_membership",
    "relocate_tunnel",
    "relocate_fetch",
    "command",
    "websocket",
    "join_request",
    "dhcpcast_gateway",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes(target in 0..TARGETS.len(), data in proptest::collection::vec(any::<u8>(), 0..600)) {
        run(TARGETS[target], &data);
    }

    #[test]
    fn mutated_valid_inputs(
        which in 0..TARGETS.len(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..8),
    ) {
        let (target, mut data) = seeds().swap_remove(which);
        for (at, byte, op) in edits {
            let i = if data.is_empty() { 0 } else { at % data.len() };
            match op {
                0 if !data.is_empty() => data[i] = byte,
                1 => data.insert(i, byte),
                _ if !data.is_empty() => { data.remove(i); }
                _ => data.push(byte),
            }
        }
        run(target, &data);
    }
}

/// The kept corpus (every file under `fuzz/corpus/TARGET/`) still passes;
/// `DEORCH_BLESS=1` writes the seeds into it.
#[test]
fn the_kept_corpus_passes() {
    if std::env::var_os("DEORCH_BLESS").is_some() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (target, data) in seeds() {
            std::fs::create_dir_all(root.join(target)).unwrap();
            std::fs::write(root.join(target).join("seed"), data).unwrap();
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut n = 0;
    for target in TARGETS {
        for f in std::fs::read_dir(root.join(target))
            .into_iter()
            .flatten()
            .flatten()
        {
            run(target, &std::fs::read(f.path()).unwrap());
            n += 1;
        }
    }
    assert!(
        n >= TARGETS.len(),
        "a corpus of {n} files under {}",
        root.display()
    );
}
