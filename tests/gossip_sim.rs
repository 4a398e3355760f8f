//! Gossip in simulation: many `GossipNode`s over the in-memory network
//! (loss, delay, partitions, killed nodes, virtual clock, one seed), and
//! five real nodes over UDP on loopback.
//!
//! `DEORCH_SIM_SEEDS` (default 200) sets the number of seeds of the
//! 20-node scenario; `DEORCH_SIM_BIG_SEEDS` (default 1 in release builds,
//! 0 in debug ones) the number of 1,000-node scenario runs. A failing seed is printed; rerun just it with
//! `DEORCH_SIM_SEED=N`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deorch::gossip::sim::{Cluster, ClusterConfig, NetConfig, SIM_EPOCH};
use deorch::gossip::wire::{encode, Body, Entry, Envelope, MemberState};
use deorch::gossip::{AcceptAll, DocKey, Document, GossipConfig, Verifier};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cfg(nodes: usize, seed: u64, loss: f64) -> ClusterConfig {
    ClusterConfig {
        nodes,
        seed,
        gossip: GossipConfig::default(),
        net: NetConfig {
            loss,
            ..NetConfig::default()
        },
        preload: true,
        static_peers: false,
        statuses: true,
        verifier: Arc::new(AcceptAll),
        auth: false,
    }
}

fn doc(name: &str, body: &str) -> Document {
    Document {
        key: DocKey::new("Network", "default", name),
        generation: 1,
        deleted: false,
        written_ms: SIM_EPOCH,
        body: body.as_bytes().to_vec(),
    }
}

/// Publish one document and run until every live node has it; returns
/// the virtual milliseconds it took.
fn converge(cl: &mut Cluster, from: usize, d: Document, limit_ms: u64) -> Option<u64> {
    let t0 = cl.now;
    cl.publish(from, d).unwrap();
    while cl.now < t0 + limit_ms {
        cl.run_for(50);
        if cl.have_count == cl.alive() {
            return Some(cl.now - t0);
        }
    }
    None
}

#[test]
fn a_document_reaches_every_node_without_and_with_loss() {
    for loss in [0.0, 0.10] {
        let mut c = cfg(200, 1, loss);
        c.statuses = false;
        let mut cl = Cluster::new(&c);
        cl.run_for(1_000);
        let t = converge(&mut cl, 0, doc("net", "{}"), 30_000)
            .unwrap_or_else(|| panic!("no convergence at loss {loss}: {} of 200", cl.have_count));
        eprintln!("200 nodes, loss {loss}: converged in {t} ms (virtual)");
        assert!(t <= 5_000, "{t} ms at loss {loss}");
    }
}

#[test]
fn a_document_reaches_a_thousand_nodes_with_loss() {
    let mut c = cfg(1_000, 11, 0.10);
    c.statuses = false;
    let mut cl = Cluster::new(&c);
    cl.run_for(1_000);
    let t = converge(&mut cl, 0, doc("net", "{}"), 30_000)
        .unwrap_or_else(|| panic!("no convergence: {} of 1000", cl.have_count));
    eprintln!("1,000 nodes, loss 0.1: converged in {t} ms (virtual)");
    assert!(t <= 5_000, "{t} ms");
}

#[test]
fn a_restarted_node_rejoins_through_one_member_and_is_recognised() {
    let mut c = cfg(50, 5, 0.05);
    c.statuses = false;
    let mut cl = Cluster::new(&c);
    cl.run_for(2_000);
    cl.kill(7);
    let id = cl.nodes[7].id().clone();
    cl.run_for(15_000);
    assert!((0..50)
        .filter(|i| *i != 7)
        .all(|i| cl.nodes[i].member_state(&id) == Some(MemberState::Dead)));
    // Same identity, same address, new process: knows only node 3.
    cl.restart(7, 1, 3, &c);
    let t0 = cl.now;
    while (0..50).any(|i| i != 7 && cl.nodes[i].member_state(&id) != Some(MemberState::Alive))
        || cl.nodes[7].alive_members().len() < 49
    {
        assert!(cl.now < t0 + 20_000, "n7 not recognised within 20 s");
        cl.run_for(200);
    }
    eprintln!(
        "restarted n7 recognised by all and knows all in {} ms (virtual)",
        cl.now - t0
    );
}

/// Fails for every document whose body starts with `forged`.
struct RejectForged;
impl Verifier for RejectForged {
    fn verify_document(&self, d: &Document) -> Result<(), String> {
        if d.body.starts_with(b"forged") {
            Err("bad signature".into())
        } else {
            Ok(())
        }
    }
}

#[test]
fn unverified_documents_are_neither_stored_nor_relayed() {
    let mut c = cfg(100, 7, 0.05);
    c.statuses = false;
    c.verifier = Arc::new(RejectForged);
    let mut cl = Cluster::new(&c);
    cl.run_for(1_000);
    let forged = doc("evil", "forged body");
    // A local publish of it is refused too.
    assert!(cl.nodes[3].publish(cl.now, forged.clone()).is_err());
    // An attacker pushes it, and offers it in anti-entropy, to 10 nodes.
    let bytes = encode(&Envelope {
        from: cl.nodes[0].id().clone(),
        addr: cl.addr(0),
        incarnation: 0,
        body: Body::Gossip(vec![Entry::Doc(forged.clone())]),
    });
    let mut sent = 0;
    for to in 1..=10 {
        for _ in 0..3 {
            cl.inject(0, to, &bytes);
            sent += 1;
        }
    }
    cl.run_for(20_000);
    assert!(cl.nodes.iter().all(|n| n.document(&forged.key).is_none()));
    // Only the targeted nodes ever saw it: nobody relayed it.
    assert!(cl.rejected as usize <= sent, "{} > {sent}", cl.rejected);
    assert!(cl.rejected > 0);
    // A genuine document still spreads beside it.
    assert!(converge(&mut cl, 5, doc("good", "{}"), 20_000).is_some());
}

/// Invariant check at one instant: copies of each VM, per side.
fn copies_per_side(cl: &Cluster, sides: &[BTreeSet<usize>]) -> Vec<(DocKey, usize)> {
    let mut worst = Vec::new();
    for (vm, on) in &cl.running {
        for side in sides {
            let n = on
                .iter()
                .filter(|i| side.contains(i) && !cl.killed[**i])
                .count();
            worst.push((vm.clone(), n));
        }
    }
    worst
}

fn n_nodes(cl: &Cluster) -> usize {
    cl.nodes.len()
}

fn run_checking(cl: &mut Cluster, ms: u64, sides: &[BTreeSet<usize>], seed: u64, phase: &str) {
    let end = cl.now + ms;
    while cl.now < end {
        cl.run_for(200);
        for (vm, n) in copies_per_side(cl, sides) {
            assert!(
                n <= 1,
                "seed {seed}, {phase}: {vm} runs {n} times on one side"
            );
        }
    }
}

fn assert_each_once(cl: &Cluster, vms: &[DocKey], seed: u64, phase: &str) {
    for vm in vms {
        let on: Vec<_> = cl
            .running
            .get(vm)
            .map(|s| s.iter().filter(|i| !cl.killed[**i]).copied().collect())
            .unwrap_or_default();
        assert_eq!(on.len(), 1, "seed {seed}, {phase}: {vm} runs on {on:?}");
    }
}

/// One seeded scenario: place VMs, check exactly-once; kill a claimant
/// (odd seeds) and check re-election; partition in two (even seeds),
/// check at most one copy per side, heal, check one copy and that the
/// losers were told to stop and keep their disks.
fn scenario(seed: u64, n: usize, vms: usize) {
    let loss = [0.0, 0.05, 0.10][(seed % 3) as usize];
    let t = Instant::now();
    let mut cl = Cluster::new(&cfg(n, seed, loss));
    // Mass failure (half the cluster) takes SWIM longer to spread on
    // big clusters: suspicions queue up behind each other.
    let slow = if n >= 500 { 2 } else { 1 };
    let lap = |what: &str| {
        if n >= 500 {
            eprintln!("seed {seed}: {what} at {:?}", t.elapsed());
        }
    };
    lap("built");
    let all: BTreeSet<usize> = (0..n).collect();
    cl.run_for(2_000);
    let mut keys = Vec::new();
    for v in 0..vms {
        let from = (seed as usize * 7 + v * 13) % n;
        keys.push(cl.publish_vm(from, &format!("vm{v}"), 1 + (v as u64 % 4)));
        cl.run_for(100 * (seed % 5));
    }
    run_checking(
        &mut cl,
        12_000,
        std::slice::from_ref(&all),
        seed,
        "placement",
    );
    lap("placed");
    assert_each_once(&cl, &keys, seed, "placement");
    assert!(
        cl.starts.values().all(|s| *s == 1),
        "seed {seed}: {:?}",
        cl.starts
    );

    if seed % 2 == 1 {
        // Kill the node that runs vm0: the others re-elect, nobody waits
        // for the dead one.
        let victim = *cl.running[&keys[0]].iter().next().unwrap();
        cl.kill(victim);
        run_checking(
            &mut cl,
            30_000 * slow,
            std::slice::from_ref(&all),
            seed,
            "after kill",
        );
        lap("re-elected");
        assert_each_once(&cl, &keys, seed, "after kill");
    } else {
        let mut order: Vec<usize> = (0..n).collect();
        deorch::gossip::rng::Rng::new(seed).shuffle(&mut order);
        let a: BTreeSet<usize> = order[..n / 2].iter().copied().collect();
        let b: BTreeSet<usize> = order[n / 2..].iter().copied().collect();
        cl.partition(&[a.iter().copied().collect(), b.iter().copied().collect()]);
        run_checking(
            &mut cl,
            30_000 * slow,
            &[a.clone(), b.clone()],
            seed,
            "partitioned",
        );
        lap("partitioned");
        // Each side runs every VM: a dead claimant never blocks a side.
        for vm in &keys {
            for side in [&a, &b] {
                let n = cl
                    .running
                    .get(vm)
                    .map(|s| s.intersection(side).count())
                    .unwrap_or(0);
                if n != 1 {
                    let x = *side.iter().next().unwrap();
                    let c = cl.nodes[x].claim(vm).cloned();
                    let st = c.as_ref().map(|c| cl.nodes[x].member_state(&c.node));
                    let dead: Vec<_> = (0..n_nodes(&cl))
                        .map(|j| cl.nodes[x].member_state(cl.nodes[j].id()))
                        .collect();
                    let dead = format!(
                        "alive {} suspect {} dead {}",
                        dead.iter()
                            .filter(|s| **s == Some(MemberState::Alive))
                            .count(),
                        dead.iter()
                            .filter(|s| **s == Some(MemberState::Suspect))
                            .count(),
                        dead.iter()
                            .filter(|s| **s == Some(MemberState::Dead))
                            .count()
                    );
                    let w: usize = c.as_ref().map(|c| c.node.0[1..].parse().unwrap()).unwrap();
                    let wc = cl.nodes[w].claim(vm).cloned();
                    panic!("seed {seed}: {vm} on one side of the partition: {n}; n{x} sees claim {c:?} state {st:?}, {dead} dead; claimant on this side: {}, its claim {wc:?}, runs {:?}, starts {:?}", side.contains(&w), cl.nodes[w].running(), cl.starts.get(vm));
                }
            }
        }
        let dup_before: usize = cl.running.values().map(|s| s.len() - 1).sum();
        cl.heal();
        cl.run_for(30_000 * slow);
        lap("healed");
        assert_each_once(&cl, &keys, seed, "healed");
        assert!(
            cl.stops as usize >= dup_before,
            "seed {seed}: {} stops for {dup_before} duplicates",
            cl.stops
        );
        // Nobody is dead in anyone's view any more (a suspicion may be
        // in flight at any instant under loss; it is refuted). On 1,000
        // nodes the two halves rediscover each other only through random
        // reconnect probes, which takes longer than the VMs need: there
        // the remaining dead views are reported, not asserted (a known
        // gap: memberlist's periodic push-pull state sync would close it).
        let mut still_dead = 0;
        for i in [0, n / 2, n - 1] {
            for j in 0..n {
                if i != j && cl.nodes[i].member_state(cl.nodes[j].id()) == Some(MemberState::Dead) {
                    still_dead += 1;
                }
            }
        }
        if n < 500 {
            assert_eq!(still_dead, 0, "seed {seed}: dead views after heal");
        } else {
            eprintln!(
                "seed {seed}: {still_dead} of {} sampled views still dead {} s after heal",
                3 * (n - 1),
                30 * slow
            );
        }
    }
}

#[test]
fn placement_over_many_seeds() {
    if let Ok(s) = std::env::var("DEORCH_SIM_SEED") {
        scenario(s.parse().unwrap(), 20, 4);
        return;
    }
    let seeds = env_usize("DEORCH_SIM_SEEDS", 200) as u64;
    let t = Instant::now();
    for seed in 0..seeds {
        let r = std::panic::catch_unwind(|| scenario(seed, 20, 4));
        if r.is_err() {
            panic!("seed {seed} failed; replay with DEORCH_SIM_SEED={seed}");
        }
    }
    eprintln!("{seeds} seeds of 20 nodes in {:?}", t.elapsed());
}

#[test]
fn placement_on_a_thousand_nodes() {
    // Seeds alternate a kill run and a half/half partition run. One run
    // takes ~4 min in a debug build on the shared 2-core box, so the
    // default is one run in release builds and none in debug ones.
    let default = if cfg!(debug_assertions) { 0 } else { 1 };
    let seeds = env_usize("DEORCH_SIM_BIG_SEEDS", default) as u64;
    let t = Instant::now();
    for seed in 0..seeds {
        scenario(1_000_001 + seed, 1_000, 3);
    }
    eprintln!("{seeds} runs of 1,000 nodes in {:?}", t.elapsed());
}

#[tokio::test(flavor = "current_thread")]
async fn five_udp_nodes_converge_and_detect_a_kill() {
    use deorch::gossip::transport::{run_udp, unix_ms, Command, UdpTransport};
    use deorch::gossip::{Event, GossipNode, NodeId};
    use tokio::sync::mpsc;

    let mut gc = GossipConfig {
        tick_ms: 50,
        ..GossipConfig::default()
    };
    gc.swim.probe_interval_ms = 200;
    gc.swim.ack_timeout_ms = 80;
    gc.swim.suspicion_timeout_ms = 1_000;
    let mut cmds = Vec::new();
    let mut events = Vec::new();
    let mut tasks = Vec::new();
    let mut seed_addr = None;
    for i in 0..5 {
        let t = UdpTransport::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        use deorch::gossip::Transport;
        let addr = t.local_addr();
        let node = GossipNode::new(
            gc.clone(),
            NodeId(format!("udp{i}")),
            addr,
            unix_ms(),
            Arc::new(AcceptAll),
            i,
        );
        let (ctx, crx) = mpsc::channel(16);
        let (etx, erx) = mpsc::unbounded_channel();
        if let Some(s) = seed_addr {
            ctx.send(Command::Join(s)).await.unwrap();
        } else {
            seed_addr = Some(addr);
        }
        tasks.push(tokio::spawn(run_udp(node, t, gc.tick_ms, None, crx, etx)));
        cmds.push(ctx);
        events.push(erx);
    }
    // Membership: everyone sees the four others up.
    let mut up = vec![BTreeSet::new(); 5];
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.iter().any(|s| s.len() < 4) {
        assert!(
            Instant::now() < deadline,
            "membership did not converge: {up:?}"
        );
        for (i, rx) in events.iter_mut().enumerate() {
            while let Ok(e) = rx.try_recv() {
                if let Event::MemberUp(id, _) = e {
                    up[i].insert(id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A document published on node 2 reaches the four others.
    let d = Document {
        key: DocKey::new("Network", "default", "lan"),
        generation: 1,
        deleted: false,
        written_ms: unix_ms(),
        body: b"{}".to_vec(),
    };
    cmds[2].send(Command::Publish(d.clone())).await.unwrap();
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < 4 {
        assert!(Instant::now() < deadline, "document reached only {got:?}");
        for (i, rx) in events.iter_mut().enumerate() {
            while let Ok(e) = rx.try_recv() {
                if matches!(&e, Event::Document(x) if *x == d) {
                    got.insert(i);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Kill node 4 (its task and socket go away): the others declare it
    // dead within detection (a few probe periods) + suspicion timeout.
    let killed_at = Instant::now();
    tasks[4].abort();
    let victim = NodeId("udp4".into());
    let mut down = BTreeSet::new();
    let limit =
        Duration::from_millis(10 * gc.swim.probe_interval_ms + gc.swim.suspicion_timeout_ms);
    while down.len() < 4 {
        assert!(
            killed_at.elapsed() < limit * 2,
            "only {down:?} declared udp4 dead"
        );
        for (i, rx) in events.iter_mut().enumerate().take(4) {
            while let Ok(e) = rx.try_recv() {
                if e == Event::MemberDown(victim.clone()) {
                    down.insert(i);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "udp4 declared dead by all in {:?} (limit {:?})",
        killed_at.elapsed(),
        limit
    );
    assert!(killed_at.elapsed() <= limit, "{:?}", killed_at.elapsed());
    drop(cmds);
}

/// Replay one scenario: `N=200 SEED=4 cargo nextest run --test gossip_sim
/// --run-ignored only -- replay_scenario`.
#[test]
#[ignore = "replays one scenario on demand, with N and SEED"]
fn replay_scenario() {
    let n: usize = env_usize("N", 200);
    let seed: u64 = env_usize("SEED", 0) as u64;
    scenario(seed, n, 3);
}

#[test]
fn a_killed_node_is_declared_dead_by_all_99_others() {
    let mut c = cfg(100, 3, 0.0);
    c.statuses = false;
    let mut cl = Cluster::new(&c);
    cl.run_for(2_000);
    cl.kill(0);
    let t0 = cl.now;
    let id = cl.nodes[0].id().clone();
    while (1..100).any(|i| cl.nodes[i].member_state(&id) != Some(MemberState::Dead)) {
        assert!(cl.now < t0 + 15_000, "not declared dead within 15 s");
        cl.run_for(200);
    }
    eprintln!("n0 declared dead by all 99 in {} ms (virtual)", cl.now - t0);
}

/// A member gossips a false identity of another (its ID at an address
/// nobody listens on, a huge generation): the real node never looks dead
/// to anyone, and once foca declares the false identity down every node
/// reaches the real node at its real address again.
#[test]
fn a_false_identity_gossiped_for_a_node_does_not_take_it_down() {
    use deorch::gossip::members::FocaId;
    use deorch::gossip::sim::sim_addr;
    use foca::{Codec, Header, Member, Message, PostcardCodec};
    let n = 20;
    let mut c = cfg(n, 11, 0.0);
    c.statuses = false;
    let mut cl = Cluster::new(&c);
    cl.run_for(3_000);
    let ids: Vec<_> = (0..n).map(|i| cl.nodes[i].id().clone()).collect();
    let victim = ids[5].clone();
    let fake = FocaId {
        id: victim.clone(),
        addr: "10.250.0.1:7946".parse().unwrap(),
        generation: 999,
    };
    let liar = 3;
    for to in (0..n).filter(|i| *i != liar) {
        let mut packet = Vec::new();
        let mut codec = PostcardCodec;
        let me = |i: usize| FocaId {
            id: ids[i].clone(),
            addr: sim_addr(i),
            generation: 0,
        };
        codec
            .encode_header(
                &Header {
                    src: me(liar),
                    src_incarnation: 0,
                    dst: me(to),
                    message: Message::Gossip,
                },
                &mut packet,
            )
            .unwrap();
        packet.extend_from_slice(&1u16.to_be_bytes());
        codec
            .encode_member(&Member::alive(fake.clone()), &mut packet)
            .unwrap();
        let env = Envelope {
            from: ids[liar].clone(),
            addr: sim_addr(liar),
            incarnation: 0,
            body: Body::Foca(packet),
        };
        cl.inject(liar, to, &encode(&env));
    }
    let t0 = cl.now;
    let mut believed = 0;
    while cl.now < t0 + 20_000 {
        cl.run_for(200);
        for i in (0..n).filter(|i| *i != 5) {
            assert_eq!(
                cl.nodes[i].member_state(&victim),
                Some(MemberState::Alive),
                "n{i} does not hold n5 alive {} ms after the lie",
                cl.now - t0
            );
            if cl.nodes[i].member_addr(&victim) == Some(fake.addr) {
                believed += 1;
            }
        }
    }
    for i in (0..n).filter(|i| *i != 5) {
        assert_eq!(
            cl.nodes[i].member_addr(&victim),
            Some(sim_addr(5)),
            "n{i} still sends n5's traffic to the false address"
        );
    }
    // The lie landed (some node used the false address for a while), so
    // the checks above tested something.
    assert!(believed > 0, "no node ever believed the false identity");
    eprintln!(
        "the false address was in use in {believed} of {} node-samples",
        19 * 100
    );
}

/// The receiver of a relocation is elected like a VM's node: exactly one
/// node wins, never the sender (the VM's node), always one that satisfies
/// the target (performance, tags, a named node); a target naming the
/// sender elects nobody and says why.
#[test]
fn a_relocation_elects_one_receiver_that_is_not_the_sender_and_fits_its_target() {
    use deorch::gossip::wire::Millis;
    use deorch::model::Performance;
    fn run_until(cl: &mut Cluster, limit: Millis, f: impl Fn(&Cluster) -> bool) -> bool {
        let t0 = cl.now;
        while cl.now < t0 + limit {
            if f(cl) {
                return true;
            }
            cl.run_for(100);
        }
        f(cl)
    }
    let n = 12;
    let cases: Vec<(&str, Option<serde_json::Value>)> = vec![
        ("automatic", None),
        (
            "performance",
            Some(serde_json::json!({"performance": "high"})),
        ),
        (
            "tags",
            Some(serde_json::json!({"selector": {"macrocosm": {"matchLabels": {"region": "us"}}}})),
        ),
        ("node", Some(serde_json::json!({"node": "n5"}))),
        ("sender", None), // the target is set below to the sender's name
        ("accel", None),  // even nodes run KVM, odd ones TCG
        ("cpu", None),    // all KVM; two host CPUs, every third node the other
    ];
    let mut receivers = BTreeSet::new();
    for (case, (what, target)) in cases.into_iter().enumerate() {
        for seed in 0..6u64 {
            let target = target.clone();
            let mut cl = Cluster::new(&cfg(n, 40 + 10 * case as u64 + seed, 0.05));
            if what == "accel" {
                for i in 0..n {
                    cl.statuses[i].accel = ["kvm", "tcg"][i % 2].into();
                    let (now, st) = (cl.now, cl.statuses[i].clone());
                    cl.nodes[i].set_status(now, st);
                }
            }
            if what == "cpu" {
                for i in 0..n {
                    cl.statuses[i].accel = "kvm".into();
                    cl.statuses[i].cpu = if i % 3 == 0 {
                        "AMD 25/1 aa"
                    } else {
                        "Intel 6/85 bb"
                    }
                    .into();
                    let (now, st) = (cl.now, cl.statuses[i].clone());
                    cl.nodes[i].set_status(now, st);
                }
            }
            cl.run_for(2_000);
            let vm = cl.publish_vm(0, "web", 1);
            assert!(
                run_until(&mut cl, 20_000, |cl| cl
                    .running
                    .get(&vm)
                    .is_some_and(|r| r.len() == 1)),
                "{what}: the VM never ran"
            );
            let sender = *cl.running[&vm].iter().next().unwrap();
            let mut spec = serde_json::json!({"virtualMachine": {"name": "web"}});
            match (what, target) {
                ("sender", _) => spec["target"] = serde_json::json!({"node": format!("n{sender}")}),
                (_, Some(t)) => spec["target"] = t,
                _ => {}
            }
            let name = format!("move-web-{seed}");
            let key = DocKey::new("Relocation", "default", &name);
            let body = serde_json::json!({
                "apiVersion": deorch::model::API_VERSION,
                "kind": "Relocation",
                "metadata": {"name": name, "namespace": "default", "generation": 1},
                "spec": spec,
            });
            let doc = Document {
                key: key.clone(),
                generation: 1,
                deleted: false,
                written_ms: cl.now,
                body: serde_json::to_vec(&body).unwrap(),
            };
            cl.publish(3, doc).unwrap();
            let elected = run_until(&mut cl, 20_000, |cl| cl.running.contains_key(&key));
            if what == "sender" {
                assert!(
                    !elected,
                    "a relocation naming its sender elected {:?}",
                    cl.running.get(&key)
                );
                let why = cl.nodes[3].unplaceable(&key).expect("a reason");
                assert!(why.contains("the relocation's sender"), "{why}");
                continue;
            }
            assert!(elected, "{what}: no receiver within 20 s");
            cl.run_for(5_000);
            let won = &cl.running[&key];
            assert_eq!(won.len(), 1, "{what}: receivers {won:?}");
            assert_eq!(cl.starts[&key], 1, "{what}: started twice");
            let r = *won.iter().next().unwrap();
            assert_ne!(r, sender, "{what}: the sender won its own relocation");
            assert!(
                !cl.nodes[r].running().contains(&key),
                "{what}: the receiver counts the relocation as a VM it runs"
            );
            let ok = match what {
                "performance" => cl.statuses[r].performance == Performance::High,
                "tags" => r % 2 == 1,
                "node" => r == 5 || sender == 5,
                "accel" => r % 2 == sender % 2,
                "cpu" => cl.statuses[r].cpu == cl.statuses[sender].cpu,
                _ => true,
            };
            assert!(ok, "{what}: n{r} does not fit the target");
            if what == "node" && sender == 5 {
                continue;
            }
            for i in 0..n {
                let c = cl.nodes[i].claim(&key).map(|c| c.node.clone());
                assert_eq!(
                    c,
                    Some(cl.nodes[r].id().clone()),
                    "{what}: n{i} holds another claim"
                );
            }
            if what == "automatic" {
                receivers.insert(r);
                // The switch: the receiver claims the VM above the
                // sender. Every node then runs it on the receiver only,
                // counts the relocation over, and never elects it again.
                assert!(!cl.nodes[0].relocation_done(&key), "over before the switch");
                let from = cl.nodes[sender].id().clone();
                let (now, reloc) = (cl.now, vm.clone());
                let epoch = cl.nodes[r]
                    .take_over(&reloc, &from, now)
                    .expect("take over");
                cl.run_for(5_000);
                assert_eq!(cl.running[&vm].len(), 1, "one copy: {:?}", cl.running[&vm]);
                assert!(cl.running[&vm].contains(&r), "runs on the receiver");
                for i in 0..n {
                    assert!(cl.nodes[i].relocation_done(&key), "n{i}: not over");
                    assert_eq!(cl.nodes[i].claim(&vm).map(|c| c.epoch), Some(epoch));
                }
                assert_eq!(cl.starts[&key], 1, "the relocation was elected again");
            }
            eprintln!("{what}: sender n{sender}, receiver n{r}");
        }
    }
    assert!(
        receivers.len() > 1,
        "one receiver for every relocation: {receivers:?}"
    );
}

/// VMs made from a spacesuit whose image only two of 20 nodes hold are
/// all placed on those two (by chance: 1 in 10^8 for 8 VMs).
#[test]
fn vms_go_to_the_nodes_that_hold_their_spacesuit_image() {
    let sha = "5f".repeat(32);
    let hint = deorch::gossip::wire::image_hint(&sha).unwrap();
    let mut cl = Cluster::new(&cfg(20, 42, 0.0));
    cl.run_for(2_000);
    let holders: BTreeSet<usize> = [3, 11].into();
    for &h in &holders {
        cl.add_image(h, hint);
    }
    let suit = serde_json::json!({
        "apiVersion": deorch::model::API_VERSION, "kind": "Spacesuit",
        "metadata": {"name": "base", "namespace": "default", "generation": 1},
        "spec": {"source": {"image": {"path": "/images/base.qcow2", "sha256": sha}}},
    });
    cl.publish(
        5,
        Document {
            key: DocKey::new("Spacesuit", "default", "base"),
            generation: 1,
            deleted: false,
            written_ms: cl.now,
            body: serde_json::to_vec(&suit).unwrap(),
        },
    )
    .unwrap();
    cl.run_for(2_000);
    let mut keys = Vec::new();
    for v in 0..8 {
        keys.push(cl.publish_vm_spec(
            v % 20,
            &format!("suited{v}"),
            1,
            serde_json::json!({"spacesuit": "base"}),
        ));
    }
    cl.run_for(12_000);
    for k in &keys {
        let on: Vec<usize> = cl.running.get(k).into_iter().flatten().copied().collect();
        assert_eq!(on.len(), 1, "{k}: {on:?}");
        assert!(
            holders.contains(&on[0]),
            "{k} runs on {on:?}, not on a holder {holders:?}"
        );
    }
}

/// The nodes that run strict VM `vm` in effect: started there and not
/// paused for want of a majority for a second already (the engine's pause
/// takes a tick and a reconcile; the others wait two seconds beyond the
/// pause time).
fn strict_runners(cl: &Cluster, vm: &DocKey) -> Vec<usize> {
    cl.running
        .get(vm)
        .map(|s| {
            s.iter()
                .copied()
                .filter(|i| {
                    !cl.killed[*i] && !cl.nodes[*i].strict_paused(cl.now.saturating_sub(1_000))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Strict mode over a partition: at no instant do two nodes run a strict
/// VM, across the whole cluster (not per side); the side with a majority
/// runs each strict VM (its node cut off, if in the minority, paused it
/// first), a side without one runs none, and after the heal each runs
/// once. Seeds vary the cluster size (even sizes split in halves, where
/// neither side has a majority), the loss, and which side the runner is.
fn strict_scenario(seed: u64) {
    let n = 3 + (seed % 5) as usize;
    let loss = [0.0, 0.02, 0.05][(seed % 3) as usize];
    let mut cl = Cluster::new(&cfg(n, seed, loss));
    cl.run_for(2_000);
    let strict: Vec<DocKey> = (0..3)
        .map(|v| {
            cl.publish_vm_spec(
                (seed as usize + v) % n,
                &format!("s{v}"),
                1,
                serde_json::json!({"placement": {"strict": true}}),
            )
        })
        .collect();
    let check = |cl: &Cluster, phase: &str| {
        for vm in &strict {
            let on = strict_runners(cl, vm);
            if on.len() > 1 {
                let why: Vec<String> = on
                    .iter()
                    .map(|i| {
                        let nd = &cl.nodes[*i];
                        format!(
                            "n{i}: quorum {} alive {} paused {} claim {:?}",
                            nd.has_quorum(cl.now),
                            nd.alive_members().len(),
                            nd.strict_paused(cl.now),
                            nd.claim(vm).map(|c| (&c.node, c.epoch))
                        )
                    })
                    .collect();
                panic!(
                    "seed {seed}, {phase}: strict {vm} runs on {on:?} at {}: {why:?}",
                    cl.now
                );
            }
        }
    };
    let end = cl.now + 15_000;
    while cl.now < end {
        cl.run_for(100);
        check(&cl, "placement");
    }
    for vm in &strict {
        assert_eq!(
            strict_runners(&cl, vm).len(),
            1,
            "seed {seed}: {vm} placed once"
        );
    }
    // The runner of s0 on the smaller side (or a half).
    let runner = strict_runners(&cl, &strict[0])[0];
    let mut order: Vec<usize> = (0..n).filter(|i| *i != runner).collect();
    deorch::gossip::rng::Rng::new(seed).shuffle(&mut order);
    let small = 1 + (seed as usize / 5) % (n / 2);
    let mut minority: BTreeSet<usize> = order[..small - 1].iter().copied().collect();
    minority.insert(runner);
    let majority: BTreeSet<usize> = (0..n).filter(|i| !minority.contains(i)).collect();
    let has_majority = 2 * majority.len() > n;
    cl.partition(&[
        minority.iter().copied().collect(),
        majority.iter().copied().collect(),
    ]);
    let end = cl.now + 40_000;
    while cl.now < end {
        cl.run_for(100);
        check(&cl, "partitioned");
    }
    for vm in &strict {
        let on = strict_runners(&cl, vm);
        assert!(
            on.iter().all(|i| !minority.contains(i)),
            "seed {seed}: {vm} runs on the minority side {on:?}"
        );
        // Under loss too: two live nodes of a small side that each held
        // the other dead used to stay so (foca goes silent with no member
        // alive), and the VM ran nowhere (seeds 50, 185, 590).
        if has_majority {
            if on.len() != 1 {
                let why: Vec<String> = majority
                    .iter()
                    .map(|i| {
                        let nd = &cl.nodes[*i];
                        let c = nd.claim(vm).cloned();
                        format!(
                            "n{i}: quorum {} paused {} claim {:?} claimant state {:?} running {:?} unplaceable {:?}",
                            nd.has_quorum(cl.now),
                            nd.strict_paused(cl.now),
                            c.as_ref().map(|c| (&c.node, c.epoch)),
                            c.as_ref().map(|c| nd.member_state(&c.node)),
                            cl.running.get(vm),
                            nd.unplaceable(vm),
                        )
                    })
                    .collect();
                let views: Vec<String> = majority
                    .iter()
                    .map(|i| {
                        let others: Vec<String> = (0..n)
                            .map(|j| {
                                format!("n{j}:{:?}", cl.nodes[*i].member_state(cl.nodes[j].id()))
                            })
                            .collect();
                        format!(
                            "n{i} sees {others:?} alive {:?}",
                            cl.nodes[*i].alive_members()
                        )
                    })
                    .collect();
                panic!("seed {seed}: {vm} does not run on the majority side: {why:?} {views:?}");
            }
        } else if !has_majority {
            assert!(
                on.is_empty(),
                "seed {seed}: {vm} runs without a majority: {on:?}"
            );
        }
    }
    cl.heal();
    let end = cl.now + 40_000;
    while cl.now < end {
        cl.run_for(100);
        check(&cl, "healed");
    }
    for vm in &strict {
        assert_eq!(
            strict_runners(&cl, vm).len(),
            1,
            "seed {seed}: {vm} once after the heal"
        );
        assert_eq!(
            cl.running[vm].len(),
            1,
            "seed {seed}: {vm}'s other copies stopped"
        );
    }
}

#[test]
fn strict_vms_never_run_twice_across_a_partition() {
    if let Ok(s) = std::env::var("DEORCH_SIM_SEED") {
        strict_scenario(s.parse().unwrap());
        return;
    }
    let seeds = env_usize("DEORCH_SIM_SEEDS", 100) as u64;
    let t = Instant::now();
    for seed in 0..seeds {
        let r = std::panic::catch_unwind(|| strict_scenario(seed));
        if r.is_err() {
            panic!("seed {seed} failed; replay with DEORCH_SIM_SEED={seed}");
        }
    }
    eprintln!("{seeds} strict seeds in {:?}", t.elapsed());
}
