//! Five real `deorch node run` processes gossiping on loopback (fake
//! hypervisor and storage, unsigned documents, short SWIM timings):
//! a dropped manifest and its deletion reach every store; an automatically
//! placed VM runs on exactly one node; SIGKILL of that node is detected and
//! the VM re-elected; a SIGSTOPped node blocks nothing and catches up on
//! SIGCONT; a SIGSTOPped runner's VM moves, and on SIGCONT the runner
//! stops its stale copy. Two more: a re-pinned VM with a local disk is
//! never started twice, and a VM no node satisfies is Unschedulable.
//! Times are measured and printed; bounds are generous.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Node;
use deorch::api::{Request, Response};

const N: usize = 5;
/// SWIM probe period and suspicion timeout given to every node (those of
/// `common::fast_gossip_flags`).
const PROBE: &str = "200ms";
const SUSPECT: &str = "1s";

/// A gossiping node: the shared test node with gossip flags, and whether
/// it is SIGSTOPped.
struct ClusterNode {
    node: Node,
    stopped: bool,
}

impl std::ops::Deref for ClusterNode {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl ClusterNode {
    fn start(name: &str, seeds: &[String]) -> ClusterNode {
        Self::start_with(name, seeds, "fake")
    }

    /// [`ClusterNode::start`] with `--storage STORAGE` (the shared node's
    /// default is `fake`).
    fn start_with(name: &str, seeds: &[String], storage: &str) -> ClusterNode {
        Self::start_extra(name, seeds, storage, &[])
    }

    /// [`ClusterNode::start_with`] with more flags.
    fn start_extra(name: &str, seeds: &[String], storage: &str, extra: &[&str]) -> ClusterNode {
        let mut node = Node::new(&format!("cluster-{name}"));
        if let Some(i) = node.extra_args.iter().position(|a| a == "--storage") {
            node.extra_args[i + 1] = storage.into();
        }
        node.name = name.into();
        // A stopped peer must not hold up the test's calls for long.
        node.call_timeout = Duration::from_secs(5);
        node.extra_args.extend(common::fast_gossip_flags());
        for s in seeds {
            node.extra_args.extend(["--seed".into(), s.clone()]);
        }
        node.extra_args.extend(extra.iter().map(|s| s.to_string()));
        node.start();
        ClusterNode {
            node,
            stopped: false,
        }
    }

    fn gossip_addr(&self) -> String {
        let file = self.state.join("gossip-address");
        wait("the gossip-address file", Duration::from_secs(10), || {
            file.exists()
        });
        std::fs::read_to_string(&file).unwrap().trim().to_string()
    }

    /// `(phase, node)` of a VM's status on this node.
    fn vm_phase(&self, name: &str) -> Option<(String, String)> {
        let st = self.record("vm", name)?.status?;
        Some((
            st["phase"].as_str().unwrap_or("").to_string(),
            st["node"].as_str().unwrap_or("").to_string(),
        ))
    }

    /// Whether this node runs the VM (its own status says Running here).
    fn runs(&self, vm: &str) -> bool {
        self.vm_phase(vm)
            .is_some_and(|(p, n)| p == "Running" && n == self.name)
    }

    /// Members this node has declared dead (events on its Satellite).
    fn declared_dead(&self, member: &str) -> bool {
        match self.call(&Request::Describe {
            kind: "satellite".into(),
            namespace: None,
            name: self.name.clone(),
        }) {
            Ok(Response::Described { events, .. }) => events
                .iter()
                .any(|e| e.reason == "MemberDown" && e.message.contains(&format!(": {member} ("))),
            _ => false,
        }
    }

    fn signal(&mut self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
        self.stopped = sig == "-STOP";
    }

    /// SIGKILL (also works on a stopped process) and reap.
    fn kill(&mut self) {
        self.node.kill();
        self.stopped = false;
    }

    fn drop_manifest(&self, file: &str, text: &str) {
        write_atomically(&self.manifests.join(file), text);
    }
}

/// Whether `node`'s last event about `member` says it is up.
fn member_up_after_down(node: &ClusterNode, member: &str) -> bool {
    match node.call(&Request::Describe {
        kind: "satellite".into(),
        namespace: None,
        name: node.name.clone(),
    }) {
        Ok(Response::Described { events, .. }) => events
            .iter()
            .rev()
            .find(|e| e.message.contains(&format!(": {member} (")))
            .is_some_and(|e| e.reason == "MemberUp"),
        _ => false,
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Poll `f` every 20 ms until it holds; the time it took, or a panic
/// naming `what` after `limit`.
fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

/// Wait until VM `name` is in (`present`) or gone from every node's store.
fn wait_in_all_stores(nodes: &[ClusterNode], name: &str, present: bool) {
    for n in nodes {
        wait(
            &format!("{name} present={present} in {}'s store", n.name),
            Duration::from_secs(30),
            || n.record("vm", name).is_some() == present,
        );
    }
}

fn vm_yaml(name: &str, placement: &str) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: {name}\nspec:\n  cpu: 1\n  memory: 64Mi\n{placement}"
    )
}

#[test]
fn five_processes_sync_place_once_and_survive_kill_and_stop() {
    let t_start = Instant::now();
    let mut nodes: Vec<ClusterNode> = Vec::new();
    nodes.push(ClusterNode::start("n1", &[]));
    let seed = nodes[0].gossip_addr();
    for i in 2..=N {
        nodes.push(ClusterNode::start(
            &format!("n{i}"),
            std::slice::from_ref(&seed),
        ));
    }
    eprintln!("5 nodes up in {:?}", t_start.elapsed());

    // (a) A manifest dropped on n1 reaches every store; the CLI sees it.
    let t = Instant::now();
    nodes[0].drop_manifest(
        "pinned.yaml",
        &vm_yaml("pinned", "  placement:\n    node: n3\n"),
    );
    wait_in_all_stores(&nodes, "pinned", true);
    let spread = t.elapsed();
    eprintln!("(a) manifest dropped on n1 in all 5 stores after {spread:?}");
    for n in &nodes {
        let (code, out, err) = common::cli_in(
            Some(&n.socket),
            &["get", "vm", "pinned", "-o", "json"],
            None,
        );
        assert_eq!(code, 0, "{}: {err}", n.name);
        assert!(out.contains("\"pinned\""), "{}: {out}", n.name);
        let src = n.record("vm", "pinned").unwrap().source.0;
        let want = if n.name == "n1" { "file:" } else { "gossip" };
        assert!(src.starts_with(want), "{}: source {src}", n.name);
    }
    // Manual placement bypasses the election: n3 runs it, nobody else.
    wait("n3 runs the pinned VM", Duration::from_secs(30), || {
        nodes[2].runs("pinned")
    });
    for n in &nodes {
        if n.name != "n3" {
            assert!(!n.runs("pinned"), "{} runs a VM pinned to n3", n.name);
        }
    }
    // A local deletion travels as a tombstone.
    let t = Instant::now();
    std::fs::remove_file(nodes[0].manifests.join("pinned.yaml")).unwrap();
    wait_in_all_stores(&nodes, "pinned", false);
    eprintln!(
        "(a) deletion on n1 reached all 5 stores after {:?}",
        t.elapsed()
    );

    // Changes through the local API travel too: created on n4, edited on
    // n5 (an object n5 learned from gossip: the edit must win), deleted on
    // n2.
    let t = Instant::now();
    let memory_everywhere = |m: &str| {
        nodes.iter().all(|n| {
            n.record("vm", "viaapi")
                .is_some_and(|r| r.object["spec"]["memory"] == m)
        })
    };
    let apply = |n: &ClusterNode, memory: &str| {
        let yaml = vm_yaml("viaapi", "  placement:\n    node: nowhere\n").replace("64Mi", memory);
        let (code, out, err) = common::cli_in(Some(&n.socket), &["apply", "-f", "-"], Some(&yaml));
        assert_eq!(code, 0, "apply on {}: {out}{err}", n.name);
    };
    apply(&nodes[3], "96Mi");
    wait("viaapi (96Mi) everywhere", Duration::from_secs(30), || {
        memory_everywhere("96Mi")
    });
    let created = t.elapsed();
    apply(&nodes[4], "128Mi");
    wait("n5's edit everywhere", Duration::from_secs(30), || {
        memory_everywhere("128Mi")
    });
    let edited = t.elapsed();
    let (code, out, err) =
        common::cli_in(Some(&nodes[1].socket), &["delete", "vm", "viaapi"], None);
    assert_eq!(code, 0, "delete on n2: {out}{err}");
    wait_in_all_stores(&nodes, "viaapi", false);
    eprintln!(
        "(a) local API: created on n4 everywhere after {created:?}, edited on n5 everywhere after {edited:?}, deleted on n2 everywhere after {:?} (cumulative)",
        t.elapsed()
    );

    // (b) An automatically placed VM runs on exactly one node.
    let t = Instant::now();
    nodes[1].drop_manifest("web.yaml", &vm_yaml("web", ""));
    wait("some node runs web", Duration::from_secs(30), || {
        nodes.iter().any(|n| n.runs("web"))
    });
    let placed = t.elapsed();
    // Everyone agrees on the winner.
    let winner = nodes.iter().position(|n| n.runs("web")).unwrap();
    let wname = nodes[winner].name.clone();
    wait(
        "every node names the same winner",
        Duration::from_secs(30),
        || {
            nodes.iter().all(|n| {
                n.vm_phase("web")
                    .is_some_and(|(p, node)| node == wname && (p == "Running") == (n.name == wname))
            })
        },
    );
    eprintln!("(b) web (auto placement) running on {wname} after {placed:?}; all agree");
    // And it stays that way.
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(2) {
        let runners: Vec<&str> = nodes
            .iter()
            .filter(|n| n.runs("web"))
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(runners, vec![wname.as_str()], "web must run exactly once");
        std::thread::sleep(Duration::from_millis(100));
    }

    // (c) SIGKILL the winner: the others declare it dead, one re-runs web.
    let t = Instant::now();
    nodes[winner].kill();
    let mut dead_times = Vec::new();
    for n in nodes.iter().filter(|n| n.name != wname) {
        let d = wait(
            &format!("{} declares {wname} dead", n.name),
            Duration::from_secs(20),
            || n.declared_dead(&wname),
        );
        dead_times.push((n.name.clone(), t.elapsed().max(d)));
    }
    eprintln!(
        "(c) {wname} SIGKILLed; declared dead by the 4 others after {dead_times:?} (probe {PROBE}, suspicion {SUSPECT})"
    );
    wait("a survivor runs web", Duration::from_secs(30), || {
        nodes.iter().any(|n| n.name != wname && n.runs("web"))
    });
    let reelected = t.elapsed();
    let survivor = nodes
        .iter()
        .position(|n| n.name != wname && n.runs("web"))
        .unwrap();
    let sname = nodes[survivor].name.clone();
    eprintln!("(c) web re-elected and running on {sname} {reelected:?} after the kill");
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(2) {
        let runners: Vec<&str> = nodes
            .iter()
            .filter(|n| n.child.is_some() && n.runs("web"))
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(
            runners,
            vec![sname.as_str()],
            "web must run exactly once after re-election"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // (d) SIGSTOP one node: a manifest dropped on another still reaches the
    // three others; SIGCONT and it catches up.
    let alive: Vec<usize> = (0..N).filter(|&i| nodes[i].child.is_some()).collect();
    let paused = *alive.iter().find(|&&i| i != survivor).unwrap();
    let dropper = *alive
        .iter()
        .find(|&&i| i != survivor && i != paused)
        .unwrap();
    nodes[paused].signal("-STOP");
    let t = Instant::now();
    nodes[dropper].drop_manifest(
        "late.yaml",
        &vm_yaml("late", "  placement:\n    node: nowhere\n"),
    );
    for &i in alive.iter().filter(|&&i| i != paused) {
        wait(
            &format!(
                "late VM in {}'s store while {} is stopped",
                nodes[i].name, nodes[paused].name
            ),
            Duration::from_secs(30),
            || nodes[i].record("vm", "late").is_some(),
        );
    }
    let with_stopped = t.elapsed();
    eprintln!(
        "(d) {} SIGSTOPped; manifest dropped on {} reached the other 3 after {with_stopped:?}",
        nodes[paused].name, nodes[dropper].name
    );
    // Once the others hold it dead, nobody pushes to it any more: what is
    // dropped now reaches it only by rejoining and anti-entropy (the
    // earlier push may wait in its socket buffer).
    let paused_name = nodes[paused].name.clone();
    let d = wait(
        "the stopped node declared dead",
        Duration::from_secs(20),
        || {
            alive
                .iter()
                .filter(|&&i| i != paused)
                .all(|&i| nodes[i].declared_dead(&paused_name))
        },
    );
    eprintln!(
        "(d) {paused_name} declared dead by the other 3 within {:?} of the drop",
        with_stopped + d
    );
    let t = Instant::now();
    nodes[dropper].drop_manifest(
        "later.yaml",
        &vm_yaml("later", "  placement:\n    node: nowhere\n"),
    );
    for &i in alive.iter().filter(|&&i| i != paused) {
        wait(
            &format!("later VM in {}'s store", nodes[i].name),
            Duration::from_secs(30),
            || nodes[i].record("vm", "later").is_some(),
        );
    }
    eprintln!(
        "(d) second manifest reached the other 3 after {:?} ({paused_name} dead)",
        t.elapsed()
    );
    assert!(nodes[survivor].runs("web"), "the paused node disturbed web");
    // Hold it stopped a little longer: no change reaches it meanwhile.
    std::thread::sleep(Duration::from_millis(500));
    nodes[paused].signal("-CONT");
    let t = Instant::now();
    let p = &nodes[paused];
    wait(
        &format!("{} catches up after SIGCONT", p.name),
        Duration::from_secs(30),
        || p.record("vm", "late").is_some() && p.record("vm", "later").is_some(),
    );
    eprintln!(
        "(d) {} caught up (both manifests) {:?} after SIGCONT",
        p.name,
        t.elapsed()
    );
    let t = Instant::now();
    wait(
        "the others see it alive again",
        Duration::from_secs(30),
        || {
            alive
                .iter()
                .filter(|&&i| i != paused)
                .all(|&i| member_up_after_down(&nodes[i], &paused_name))
        },
    );
    eprintln!(
        "(d) {paused_name} alive again for the other 3 after {:?}",
        t.elapsed()
    );
    // Still exactly one web.
    let runners: Vec<&str> = nodes
        .iter()
        .filter(|n| n.child.is_some() && n.runs("web"))
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(runners, vec![sname.as_str()]);

    // (e) SIGSTOP the node running web: the others take it for dead and
    // re-elect (a partition in effect: its frozen copy still "runs");
    // SIGCONT: it hears the newer claim and stops its copy, disks kept.
    let frozen = survivor;
    nodes[frozen].signal("-STOP");
    let t = Instant::now();
    wait(
        "another node runs web while its runner is stopped",
        Duration::from_secs(30),
        || {
            nodes
                .iter()
                .enumerate()
                .any(|(i, n)| i != frozen && n.child.is_some() && n.runs("web"))
        },
    );
    let moved = t.elapsed();
    let second = (0..N)
        .find(|&i| i != frozen && nodes[i].child.is_some() && nodes[i].runs("web"))
        .unwrap();
    eprintln!(
        "(e) {} SIGSTOPped while running web; web running on {} after {moved:?}",
        nodes[frozen].name, nodes[second].name
    );
    nodes[frozen].signal("-CONT");
    let t = Instant::now();
    let second_name = nodes[second].name.clone();
    wait(
        "the resumed node stops its copy",
        Duration::from_secs(30),
        || {
            nodes[frozen]
                .vm_phase("web")
                .is_some_and(|(p, n)| p == "Elsewhere" && n == second_name)
        },
    );
    eprintln!(
        "(e) {} resumed: stopped its copy of web {:?} after SIGCONT",
        nodes[frozen].name,
        t.elapsed()
    );
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(2) {
        let runners: Vec<&str> = nodes
            .iter()
            .filter(|n| n.child.is_some() && n.runs("web"))
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(
            runners,
            vec![second_name.as_str()],
            "web must run exactly once after the heal"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("whole scenario: {:?}", t_start.elapsed());
}

/// VM `name`'s Ready condition on `node`: (reason, message).
fn ready(node: &ClusterNode, name: &str) -> Option<(String, String)> {
    let st = node.record("vm", name)?.status?;
    let c = st["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    Some((
        c["reason"].as_str()?.to_string(),
        c["message"].as_str()?.to_string(),
    ))
}

/// Two real processes: editing `placement.node` of a running VM with a
/// local disk from r1 to r2 never leaves two copies (r1 keeps it and says
/// a relocation is needed, r2 does not start it while r1 reports it
/// running); a VM no node satisfies says Unschedulable on both instead of
/// waiting for the election forever.
#[test]
fn a_repinned_vm_runs_once_and_an_unsatisfiable_one_is_unschedulable() {
    let r1 = ClusterNode::start("r1", &[]);
    let seed = r1.gossip_addr();
    let r2 = ClusterNode::start("r2", &[seed]);
    let pinned = |node: &str| {
        vm_yaml(
            "db",
            &format!(
                "  disks:\n    - {{name: data, size: 1Mi, source: {{blank: {{}}}}}}\n  placement:\n    node: {node}\n"
            ),
        )
    };
    r1.drop_manifest("db.yaml", &pinned("r1"));
    wait("r1 runs db", Duration::from_secs(30), || r1.runs("db"));
    // r1's gossiped status (which lists db) reaches r2 well within this.
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    r1.drop_manifest("db.yaml", &pinned("r2"));
    for n in [&r1, &r2] {
        wait(
            &format!("{} says RelocationRequired", n.name),
            Duration::from_secs(30),
            || ready(n, "db").is_some_and(|(r, _)| r == "RelocationRequired"),
        );
    }
    eprintln!("re-pin refused on both nodes after {:?}", t.elapsed());
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(3) {
        assert!(r1.runs("db"), "r1 keeps its copy");
        assert!(!r2.runs("db"), "r2 must not start a second copy");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        r2.vm_phase("db"),
        Some(("Pending".to_string(), "r1".to_string()))
    );

    // No node is `performance: high`: Unschedulable, and why.
    r2.drop_manifest(
        "picky.yaml",
        &vm_yaml("picky", "  placement:\n    performance: high\n"),
    );
    for n in [&r1, &r2] {
        wait(
            &format!("{} says picky is Unschedulable", n.name),
            Duration::from_secs(30),
            || {
                n.vm_phase("picky")
                    .is_some_and(|(p, _)| p == "Unschedulable")
            },
        );
        let (reason, why) = ready(n, "picky").unwrap();
        assert_eq!(reason, "Unschedulable", "{}", n.name);
        assert!(why.contains("the VM asks for high"), "{}: {why}", n.name);
    }
}

/// The file owns what it declares: an object a manifest file of n1
/// declares, deleted through n2's API (where it came by gossip), is back
/// on both nodes within one rescan interval plus gossip's delay; the same
/// delete on n1 itself is refused, naming the file.
#[test]
fn a_file_declared_object_deleted_on_a_peer_comes_back_at_once() {
    let n1 = ClusterNode::start("o1", &[]);
    let seed = n1.gossip_addr();
    let n2 = ClusterNode::start("o2", std::slice::from_ref(&seed));
    n1.drop_manifest(
        "owned.yaml",
        &vm_yaml("owned", "  placement:\n    node: o1\n"),
    );
    wait_in_all_stores_of(&[&n1, &n2], "owned", true);

    let (code, _, err) = n1.cli(&["delete", "vm", "owned"], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("declared by the manifest file"), "{err}");

    let (code, out, err) = n2.cli(&["delete", "vm", "owned"], None);
    assert_eq!(code, 0, "{out}{err}");
    let t = Instant::now();
    // It may be seen gone for a moment; it must come back everywhere.
    wait("the tombstone on n1", Duration::from_secs(10), || {
        n1.record("vm", "owned").is_none() || n1.log_text().contains("so it is applied again")
    });
    for n in [&n1, &n2] {
        wait(
            &format!("owned back on {}", n.name),
            Duration::from_secs(10),
            || n.record("vm", "owned").is_some(),
        );
    }
    let back = t.elapsed();
    eprintln!("a peer's delete of a file-declared object undone everywhere in {back:?}");
    // Rescan 1 s, probe 200 ms: well within a few seconds.
    assert!(back < Duration::from_secs(5), "{back:?}");
    assert!(n1.log_text().contains("so it is applied again"));
}

fn wait_in_all_stores_of(nodes: &[&ClusterNode], name: &str, present: bool) {
    for n in nodes {
        wait(
            &format!("{name} present={present} in {}'s store", n.name),
            Duration::from_secs(30),
            || n.record("vm", name).is_some() == present,
        );
    }
}

/// A dead node never costs a VM its data: `db` (a writable disk, real
/// `dir` storage) is not started on the survivor when its node is
/// SIGKILLed, it shows `NodeLost` there; `cache` (`stateless: true`) is
/// re-elected as before. `deorch recover db` on the survivor starts it
/// there; the killed node, back, does not run it again and still has its
/// volume.
#[test]
fn a_vm_with_data_is_node_lost_not_restarted_blank() {
    let start = |name: &str, seeds: &[String]| {
        let mut n = ClusterNode::start_with(name, seeds, "dir");
        n.stopped = false;
        n
    };
    let a = start("d1", &[]);
    let seed = a.gossip_addr();
    let b = start("d2", std::slice::from_ref(&seed));
    let mut nodes = [a, b];
    let disk = "  disks:\n    - name: data\n      size: 8Mi\n      source: {blank: {}}\n";
    nodes[0].drop_manifest("db.yaml", &vm_yaml("db", disk));
    nodes[0].drop_manifest(
        "cache.yaml",
        &vm_yaml("cache", &format!("  stateless: true\n{disk}")),
    );
    let volume = |n: &ClusterNode, vm: &str| {
        n.state
            .join(format!("storage/volumes/vm-default-{vm}-data.qcow2"))
    };
    wait("db runs somewhere", Duration::from_secs(30), || {
        nodes.iter().any(|n| n.runs("db"))
    });
    let w = nodes.iter().position(|n| n.runs("db")).unwrap();
    let s = 1 - w;
    let (wname, sname) = (nodes[w].name.clone(), nodes[s].name.clone());
    let data = volume(&nodes[w], "db");
    assert!(data.exists());
    // cache runs on the same node or the other; make it the winner's by
    // waiting for its placement, whichever it is.
    wait("cache runs somewhere", Duration::from_secs(30), || {
        nodes.iter().any(|n| n.runs("cache"))
    });
    let cache_on_winner = nodes[w].runs("cache");

    let t = Instant::now();
    nodes[w].kill();
    wait(
        &format!("{sname} declares {wname} dead"),
        Duration::from_secs(20),
        || nodes[s].declared_dead(&wname),
    );
    wait(
        "db is NodeLost on the survivor",
        Duration::from_secs(15),
        || {
            nodes[s]
                .vm_phase("db")
                .is_some_and(|(p, _)| p == "NodeLost")
        },
    );
    eprintln!("db NodeLost on {sname} {:?} after the kill", t.elapsed());
    // Past the re-elect timeout several times over: still not started,
    // and no blank disk made for it.
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(4) {
        assert!(!nodes[s].runs("db"), "db started blank on {sname}");
        assert!(!volume(&nodes[s], "db").exists(), "a blank disk was made");
        std::thread::sleep(Duration::from_millis(100));
    }
    if cache_on_winner {
        wait(
            "cache re-elected on the survivor",
            Duration::from_secs(15),
            || nodes[s].runs("cache"),
        );
    }
    let (code, out, err) = nodes[s].cli(&["describe", "vm", "db"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("NodeLost") && out.contains("deorch recover"),
        "{out}"
    );

    // The operator recovers it on the survivor.
    let (code, out, err) = nodes[s].cli(&["recover", "db"], None);
    assert_eq!(code, 0, "{out}{err}");
    wait("db runs on the survivor", Duration::from_secs(15), || {
        nodes[s].runs("db")
    });
    let (code, _, err) = nodes[s].cli(&["recover", "db"], None);
    assert_eq!(code, 1, "a second recovery has nothing to do");
    assert!(err.contains("already claimed by this node"), "{err}");

    // The lost node returns: it does not run db again, and its volume
    // (the data) is still there.
    let back = nodes[s].gossip_addr();
    nodes[w]
        .node
        .extra_args
        .extend(["--seed".to_string(), back]);
    nodes[w].node.start();
    wait(
        &format!("{wname} sees db run on {sname}"),
        Duration::from_secs(20),
        || {
            nodes[w]
                .vm_phase("db")
                .is_some_and(|(p, n)| p == "Elsewhere" && n == sname)
        },
    );
    let hold = Instant::now();
    while hold.elapsed() < Duration::from_secs(2) {
        assert!(!nodes[w].runs("db"), "db runs twice");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its disks are kept, as a diverged replica: listed, and a new VM
    // clones it.
    let listed = || {
        let (code, out, err) = nodes[w].cli(&["volume", "list"], None);
        assert_eq!(code, 0, "{err}");
        out
    };
    wait(
        "the lost node's disks kept as a diverged replica",
        Duration::from_secs(15),
        || {
            listed()
                .lines()
                .any(|l| l.starts_with("rep-default-db-diverged-"))
        },
    );
    assert!(!data.exists(), "renamed, not copied");
    let out = listed();
    let line = out
        .lines()
        .find(|l| l.starts_with("rep-default-db-diverged-"))
        .unwrap();
    let replica = line
        .strip_prefix("rep-default-")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.strip_suffix("-data"))
        .unwrap()
        .to_string();
    assert!(
        line.contains(&format!(
            "diverged replica {replica} (default/db runs on {sname})"
        )),
        "{out}"
    );
    let kept = nodes[w]
        .state
        .join(format!("storage/volumes/rep-default-{replica}-data.qcow2"));
    assert!(kept.exists(), "{}", kept.display());
    nodes[w].drop_manifest(
        "db-was.yaml",
        &vm_yaml(
            "db-was",
            &format!(
                "  placement:\n    node: {wname}\n  disks:\n    - name: data\n      source: {{replica: {{name: {replica}, disk: data}}}}\n"
            ),
        ),
    );
    wait(
        "a VM cloned from the diverged replica runs",
        Duration::from_secs(20),
        || nodes[w].runs("db-was"),
    );
    assert!(volume(&nodes[w], "db-was").exists());
    assert!(!nodes[w].runs("db"), "db runs twice");
    // Purged by hand, the clone made from it lives on.
    let name = format!("rep-default-{replica}-data");
    let (code, out, err) = nodes[w].cli(&["volume", "purge", &name], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!kept.exists() && !listed().contains(&name));
    assert!(volume(&nodes[w], "db-was").exists());
    let (code, _, err) = nodes[w].cli(&["volume", "purge", "vm-default-db-was-data"], None);
    assert_ne!(code, 0, "a VM's own volume is not purged by hand");
    assert!(err.contains("not a retained volume"), "{err}");
}

/// A node stopped gracefully (an upgrade) announces when it is back
/// (`--fence-hold`); its VMs run on meanwhile, so its peers do not start
/// copies of them before then, even of a VM that may start anywhere.
#[test]
fn a_gracefully_stopped_nodes_vms_are_not_started_elsewhere_during_its_hold() {
    const HOLD: Duration = Duration::from_secs(6);
    let hold = format!("{}ms", HOLD.as_millis());
    let a = ClusterNode::start_extra("h1", &[], "fake", &["--fence-hold", &hold]);
    let seed = a.gossip_addr();
    let b = ClusterNode::start_extra(
        "h2",
        std::slice::from_ref(&seed),
        "fake",
        &["--fence-hold", &hold],
    );
    let mut nodes = [a, b];
    nodes[0].drop_manifest("web.yaml", &vm_yaml("web", ""));
    wait("web runs somewhere", Duration::from_secs(30), || {
        nodes.iter().any(|n| n.runs("web"))
    });
    let w = nodes.iter().position(|n| n.runs("web")).unwrap();
    let s = 1 - w;
    let t = Instant::now();
    nodes[w].node.stop();
    // Without the announcement the survivor starts it after suspect +
    // re-elect + settle (about 3 s here).
    while t.elapsed() < HOLD - Duration::from_secs(1) {
        assert!(
            !nodes[s].runs("web"),
            "web started on the survivor {:?} after a graceful stop with a {HOLD:?} hold",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait(
        "web re-elected after the hold",
        Duration::from_secs(20),
        || nodes[s].runs("web"),
    );
    let took = t.elapsed();
    eprintln!("graceful stop -> web runs on the survivor: {took:?} (hold {HOLD:?})");
    assert!(took >= HOLD, "{took:?}");
}
