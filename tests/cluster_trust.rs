//! Trust between nodes, with five real node processes on loopback (fake
//! drivers, signed gossip): four admitted by the owner's AccessPolicy, one
//! not. The one not admitted cannot join and nothing it says is believed;
//! an admitted node gone bad (this test, over the real channel) cannot
//! claim a VM for another node, report another's status or pose as
//! another; a node whose admission is revoked leaves placement within the
//! suspicion timeout.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Node;
use deorch::gossip::channel::{Channel, ChannelConfig, ChannelKey};
use deorch::gossip::trust::{KeySigner, Members, Signer};
use deorch::gossip::verify::{AcceptAll, MembersOnly};
use deorch::gossip::wire::{
    encode, Body, Claim, DocKey, Entry, Envelope, NodeId, NodeStatus, Resources, TagSet,
    CLAIM_DOMAIN, STATUS_DOMAIN,
};
use deorch::identity::{AddressType, Network, PrivateKey};

const SUSPECT: Duration = Duration::from_secs(1);

fn args(owner: &str, seed: Option<&str>) -> Vec<String> {
    // The short timings past the probe period gossip_args sets.
    let mut extra = deorch::bench_cluster::FAST_TIMINGS[2..].to_vec();
    if let Some(s) = seed {
        extra.extend(["--seed", s]);
    }
    common::gossip_args(owner, &extra)
}

fn gossip_address(n: &Node) -> SocketAddr {
    common::gossip_address(n).parse().unwrap()
}

/// Where `vm` runs, by the node that runs it (`status.node` of a
/// `Running` copy).
fn runner(nodes: &[&Node], vm: &str) -> Option<String> {
    nodes.iter().find_map(|n| {
        let s = n.record("vm", vm)?.status?;
        (s["phase"] == "Running" && s["node"] == n.name.as_str()).then(|| n.name.clone())
    })
}

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

/// An admitted node gone bad: this test process, with its own key, over
/// the real channel (it completes real handshakes), sending whatever
/// envelopes it likes.
struct Rogue {
    sock: UdpSocket,
    ch: Channel,
    id: NodeId,
    signer: KeySigner,
}

impl Rogue {
    fn new(key: &PrivateKey, cluster: &str, admitted: &[(&str, &str)]) -> Rogue {
        let members = Arc::new(Members::new(cluster));
        members.set(
            &admitted
                .iter()
                .map(|(n, a)| (a.to_string(), n.to_string()))
                .collect(),
        );
        let v: Arc<dyn deorch::gossip::Verifier> = Arc::new(MembersOnly {
            members,
            documents: AcceptAll,
        });
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Rogue {
            sock,
            ch: Channel::new(
                ChannelConfig::default(),
                Arc::new(ChannelKey::new(key, cluster)),
                cluster,
                v,
                7,
            ),
            id: NodeId(key.address(AddressType::P2wpkh).unwrap().to_string()),
            signer: KeySigner::new(key.clone(), cluster),
        }
    }

    fn now() -> u64 {
        deorch::gossip::transport::unix_ms()
    }

    /// Send `body` as `from` to `to`; returns once the channel sealed it
    /// (after a handshake if needed).
    fn send(&mut self, to: SocketAddr, from: &NodeId, body: Body) {
        let env = Envelope {
            from: from.clone(),
            addr: self.sock.local_addr().unwrap(),
            incarnation: 1,
            body,
        };
        let before = self.ch.stats().sealed;
        let mut out = Vec::new();
        self.ch.seal(Self::now(), to, &encode(&env), &mut out);
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            for (a, b) in out.drain(..) {
                self.sock.send_to(&b, a).unwrap();
            }
            if self.ch.stats().sealed > before {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the rogue's handshake with {to} did not finish"
            );
            let mut buf = vec![0; 65_536];
            if let Ok((n, src)) = self.sock.recv_from(&mut buf) {
                let _ = self.ch.open(Self::now(), src, &buf[..n], &mut out);
            }
            self.ch.tick(Self::now(), &mut out);
        }
    }

    fn sign_claim(&self, mut c: Claim) -> Claim {
        c.sig = self.signer.sign(CLAIM_DOMAIN, &c.signed_bytes());
        c
    }

    fn sign_status(&self, mut s: NodeStatus) -> NodeStatus {
        s.sig = self.signer.sign(STATUS_DOMAIN, &s.signed_bytes());
        s
    }
}

/// A VM manifest (with a generation when `signed`: signatures bind one).
fn vm(name: &str, placement: &str, signed: bool) -> String {
    let generation = if signed { "  generation: 1\n" } else { "" };
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: {name}\n{generation}spec:\n  cpu: 1\n  memory: 64Mi\n{placement}"
    )
}

#[test]
fn only_admitted_nodes_join_speak_for_themselves_and_leave_when_revoked() {
    let owner_key = PrivateKey::generate(Network::Mainnet);
    let owner = owner_key.address(AddressType::P2wpkh).unwrap().to_string();
    let mut nodes: Vec<Node> = (1..=5)
        .map(|i| {
            let mut n = Node::new(&format!("trust-{i}"));
            n.name = format!("t{i}");
            n
        })
        .collect();
    let ids: Vec<String> = nodes.iter().map(common::give_node_key).collect();
    let rogue_key = PrivateKey::generate(Network::Mainnet);
    let rogue_id = rogue_key.address(AddressType::P2wpkh).unwrap().to_string();
    // t5 is not admitted; the rogue is (a member gone bad).
    let admitted: Vec<(&str, &str)> = vec![
        ("t1", &ids[0]),
        ("t2", &ids[1]),
        ("t3", &ids[2]),
        ("t4", &ids[3]),
        ("rogue", &rogue_id),
    ];
    let policy = common::members_policy(1, &admitted, "");

    let started = Instant::now();
    nodes[0].extra_args.extend(args(&owner, None));
    nodes[0].start();
    common::apply_owner_signed(&nodes[0], &owner_key, &policy);
    let seed = gossip_address(&nodes[0]).to_string();
    for n in nodes.iter_mut().skip(1) {
        n.extra_args.extend(args(&owner, Some(&seed)));
        n.start();
        // Each node is given the owner's policy (docs/SIGNING.md, "Nodes":
        // a node learns who its peers are before it can hear them); t5
        // too: it knows the cluster, the cluster does not know it.
        common::apply_owner_signed(n, &owner_key, &policy);
    }

    // The four admitted nodes see each other up; nobody sees t5, and t5
    // sees nobody.
    let joined = wait(
        "the four admitted nodes see each other",
        Duration::from_secs(20),
        || {
            (0..4).all(|i| {
                let up = common::members_up(&nodes[i]);
                (0..4).filter(|j| *j != i).all(|j| up.contains(&ids[j]))
            })
        },
    );
    eprintln!("four admitted nodes joined in {joined:?}");
    // Each node's Satellite shows its ID.
    for (i, n) in nodes.iter().enumerate() {
        n.wait_for("the Satellite's node ID", |n| {
            n.record("satellite", &n.name)
                .and_then(|r| r.status)
                .is_some_and(|s| s["nodeId"] == ids[i].as_str())
        });
    }
    std::thread::sleep(Duration::from_secs(2));
    for (i, n) in nodes.iter().enumerate() {
        let up = common::members_up(n);
        assert!(!up.contains(&ids[4]), "t{} lists t5 as a member", i + 1);
    }
    assert!(
        common::members_up(&nodes[4]).is_empty(),
        "t5 joined someone"
    );
    let refusals = || {
        std::fs::read_to_string(&nodes[0].log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("peer refused") && l.contains(&ids[4]))
            .count()
    };
    // Logged at the next refusal interval (5 s).
    wait("t1 logs t5's refusal", Duration::from_secs(7), || {
        refusals() >= 1
    });
    let refusals = refusals();
    let up_for = started.elapsed().as_secs();
    assert!(
        refusals as u64 <= up_for / 5 + 2,
        "t1 logged t5's refusal {refusals} times in {up_for} s: per datagram, not per interval"
    );

    // Documents: a VM t2 holds unsigned and placed on itself travels
    // (signed by t2, allowed by the default rule); t5's never does.
    let all: Vec<&Node> = nodes.iter().collect();
    std::fs::write(
        nodes[1].manifests.join("own.yaml"),
        vm("from-t2", "  placement:\n    node: t2\n", false),
    )
    .unwrap();
    std::fs::write(
        nodes[4].manifests.join("own.yaml"),
        vm("from-t5", "  placement:\n    node: t5\n", false),
    )
    .unwrap();
    wait(
        "t2's own VM on every admitted node",
        Duration::from_secs(15),
        || all[..4].iter().all(|n| n.record("vm", "from-t2").is_some()),
    );
    // And t2 cannot place a VM on t3 by itself.
    std::fs::write(
        nodes[1].manifests.join("theirs.yaml"),
        vm("t2-on-t3", "  placement:\n    node: t3\n", false),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    for (i, n) in all.iter().enumerate() {
        if i != 4 {
            assert!(
                n.record("vm", "from-t5").is_none(),
                "t5's VM reached t{}",
                i + 1
            );
        }
        if i != 1 {
            assert!(
                n.record("vm", "t2-on-t3").is_none(),
                "t2 placed a VM on t3 from t{}",
                i + 1
            );
        }
    }

    // Placement: the owner's VMs run on admitted nodes only, once each.
    // Five VMs of 1 CPU on four 2-CPU nodes: once one node is revoked,
    // the three left still have room for them and one more ("after").
    let names: Vec<String> = (1..=5).map(|i| format!("w{i}")).collect();
    for w in &names {
        common::apply_owner_signed(&nodes[0], &owner_key, &vm(w, "", true));
    }
    wait("every w VM runs somewhere", Duration::from_secs(30), || {
        names.iter().all(|w| runner(&all[..4], w).is_some())
    });
    for w in &names {
        let running: Vec<&str> = all
            .iter()
            .filter(|n| {
                n.record("vm", w)
                    .and_then(|r| r.status)
                    .is_some_and(|s| s["phase"] == "Running" && s["node"] == n.name.as_str())
            })
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(running.len(), 1, "{w} runs on {running:?}");
        assert_ne!(running[0], "t5");
    }

    // The rogue: a claim of w1 for another node, another node's status,
    // and an envelope posing as t1; all refused, placement unchanged.
    let cluster = owner.clone();
    let mut rogue = Rogue::new(&rogue_key, &cluster, &admitted);
    let before: Vec<Option<String>> = names.iter().map(|w| runner(&all[..4], w)).collect();
    let w1_on = before[0].clone().unwrap();
    let other = (1..=4)
        .map(|i| format!("t{i}"))
        .find(|t| *t != w1_on)
        .unwrap();
    let other_id = NodeId(ids[other[1..].parse::<usize>().unwrap() - 1].clone());
    let forged_claim = rogue.sign_claim(Claim {
        vm: DocKey::new("VirtualMachine", "default", "w1"),
        node: other_id.clone(),
        epoch: 1_000,
        score: u64::MAX,
        claimed_ms: Rogue::now(),
        sig: Vec::new(),
    });
    let mut forged_status = NodeStatus::idle(
        NodeId(ids[1].clone()),
        1,
        TagSet::default(),
        deorch::model::Performance::High,
        Resources::default(),
    );
    forged_status.incarnation = u64::MAX / 2;
    forged_status.unschedulable = true;
    let forged_status = rogue.sign_status(forged_status);
    let targets: Vec<SocketAddr> = all[..4].iter().map(|n| gossip_address(n)).collect();
    let rid = rogue.id.clone();
    for t in &targets {
        rogue.send(
            *t,
            &rid,
            Body::Gossip(vec![
                Entry::Claim(forged_claim.clone()),
                Entry::Status(Box::new(forged_status.clone())),
            ]),
        );
        // Posing as t1: the channel authenticated the rogue, not t1.
        rogue.send(
            *t,
            &NodeId(ids[0].clone()),
            Body::Gossip(vec![Entry::Claim(forged_claim.clone())]),
        );
    }
    let logged = |n: &Node| {
        let log = std::fs::read_to_string(&n.log).unwrap_or_default();
        log.contains("claims or statuses refused")
            && log.contains(&format!("not signed by {}", other_id))
            && log
                .lines()
                .any(|l| l.contains("not admitted") && l.contains(&ids[0]))
    };
    let t_forged = Instant::now();
    while !all[..4].iter().all(|n| logged(n)) {
        if t_forged.elapsed() > Duration::from_secs(15) {
            for n in &all[..4] {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                for l in log
                    .lines()
                    .filter(|l| l.contains("refused") || l.contains("admitted"))
                {
                    eprintln!("{}: {l}", n.name);
                }
            }
            panic!("not every admitted node logged the forgeries");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = t_forged.elapsed();
    eprintln!("forgeries logged by every node within {refused:?}");
    let after: Vec<Option<String>> = names.iter().map(|w| runner(&all[..4], w)).collect();
    assert_eq!(before, after, "a forged claim moved a VM");

    // Revocation: the owner drops the node running w1. Applied on one
    // other node only; gossip carries it. The revoked node leaves every
    // view within the suspicion timeout (plus the policy's spread), and
    // what ran there runs elsewhere.
    let v: usize = w1_on[1..].parse::<usize>().unwrap() - 1;
    let keep: Vec<usize> = (0..4).filter(|i| *i != v).collect();
    let on_v: Vec<String> = names
        .iter()
        .zip(&after)
        .filter(|(_, r)| r.as_deref() == Some(w1_on.as_str()))
        .map(|(w, _)| w.clone())
        .collect();
    let still: Vec<(&str, &str)> = admitted
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != v)
        .map(|(_, x)| *x)
        .collect();
    let revoked = common::members_policy(2, &still, "");
    let t0 = Instant::now();
    common::apply_owner_signed(&nodes[keep[0]], &owner_key, &revoked);
    let gone = wait(
        "the revoked node leaves every admitted view",
        SUSPECT + Duration::from_secs(6),
        || {
            keep.iter()
                .all(|i| !common::members_up(&nodes[*i]).contains(&ids[v]))
        },
    );
    eprintln!(
        "{w1_on} down everywhere {gone:?} after its revocation (suspicion timeout {SUSPECT:?}); VMs it ran: {on_v:?}"
    );
    let survivors: Vec<&Node> = keep.iter().map(|i| &nodes[*i]).collect();
    wait(
        "the revoked node's VMs run elsewhere",
        Duration::from_secs(20),
        || on_v.iter().all(|w| runner(&survivors, w).is_some()),
    );
    eprintln!(
        "its VMs re-elected elsewhere {:?} after the revocation",
        t0.elapsed()
    );
    // A new VM lands on a node still admitted.
    common::apply_owner_signed(&nodes[keep[0]], &owner_key, &vm("after", "", true));
    wait("the new VM runs", Duration::from_secs(20), || {
        runner(&survivors, "after").is_some()
    });
}

/// The cluster ID is the first owner's address; a signed hand-over makes
/// another address the owner on every node: its documents are accepted
/// as the owner's, the old owner's new ones are not, and the nodes stay
/// admitted throughout (the new owner re-signs the members policy with
/// the hand-over in it, one document).
#[test]
fn the_owner_hands_the_cluster_over_and_every_node_follows() {
    let old = PrivateKey::generate(Network::Mainnet);
    let old_addr = old.address(AddressType::P2wpkh).unwrap().to_string();
    let new = PrivateKey::generate(Network::Mainnet);
    let new_addr = new.address(AddressType::P2wpkh).unwrap().to_string();
    let mut a = Node::new("handover-a");
    a.name = "h1".into();
    let mut b = Node::new("handover-b");
    b.name = "h2".into();
    let (ia, ib) = (common::give_node_key(&a), common::give_node_key(&b));
    let sats = [("h1", ia.as_str()), ("h2", ib.as_str())];
    a.extra_args.extend(args(&old_addr, None));
    a.start();
    common::apply_owner_signed(&a, &old, &common::members_policy(1, &sats, ""));
    let seed = gossip_address(&a).to_string();
    b.extra_args.extend(args(&old_addr, Some(&seed)));
    b.start();
    common::apply_owner_signed(&b, &old, &common::members_policy(1, &sats, ""));
    wait("h1 and h2 see each other", Duration::from_secs(20), || {
        common::members_up(&a).contains(&ib) && common::members_up(&b).contains(&ia)
    });

    // The old owner signs the hand-over (deorch hand-over); the new owner
    // puts it in the members policy and signs that.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deorch"))
        .args([
            "hand-over",
            "--cluster",
            &old_addr,
            "--to",
            &new_addr,
            "--key",
        ])
        .arg({
            let p = a.dir.join("old.key");
            old.save(&p).unwrap();
            p
        })
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hand_over = String::from_utf8(out.stdout).unwrap();
    let indented: String = hand_over.lines().map(|l| format!("  {l}\n")).collect();
    let mut policy = common::members_policy(2, &sats, "");
    policy.push_str(&indented);
    // Signed by the new owner for the cluster (the old owner's address).
    let parsed = deorch::manifest::parse_str(std::path::Path::new("p.yaml"), &policy);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let signed = deorch::identity::sign_manifest(
        &parsed.documents[0].object.to_value(),
        &old_addr,
        &new,
        AddressType::P2wpkh,
    )
    .unwrap();
    let (code, o, e) = a.cli(
        &["apply", "-f", "-"],
        Some(&serde_json::to_string(&signed).unwrap()),
    );
    assert_eq!(code, 0, "{o}{e}");
    wait("the hand-over reaches h2", Duration::from_secs(10), || {
        b.record("accesspolicy", "members")
            .is_some_and(|r| r.object["spec"]["ownerHandOver"].is_array())
    });

    // The new owner's VM is accepted on both (through gossip on h2); the
    // old owner's new VM is refused on both, and the nodes are still
    // members of each other.
    let sign_as = |k: &PrivateKey, name: &str| {
        let parsed =
            deorch::manifest::parse_str(std::path::Path::new("v.yaml"), &vm(name, "", true));
        serde_json::to_string(
            &deorch::identity::sign_manifest(
                &parsed.documents[0].object.to_value(),
                &old_addr,
                k,
                AddressType::P2wpkh,
            )
            .unwrap(),
        )
        .unwrap()
    };
    let (code, o, e) = a.cli(&["apply", "-f", "-"], Some(&sign_as(&new, "by-new")));
    assert_eq!(code, 0, "{o}{e}");
    wait("the new owner's VM on h2", Duration::from_secs(10), || {
        b.record("vm", "by-new").is_some()
    });
    let (code, o, e) = b.cli(&["apply", "-f", "-"], Some(&sign_as(&old, "by-old")));
    assert_ne!(code, 0, "the old owner is still the owner: {o}{e}");
    assert!(format!("{o}{e}").contains("Denied"), "{o}{e}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(a.record("vm", "by-old").is_none() && b.record("vm", "by-old").is_none());
    assert!(common::members_up(&a).contains(&ib) && common::members_up(&b).contains(&ia));
}
