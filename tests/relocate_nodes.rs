//! Relocation between two real node daemons, each in its own network
//! namespace with its own state dir, joined by a veth pair: the tiny
//! guest (its heartbeat counter kept on its disk, fsync'd every 0.2 s)
//! moves live from the node the radar placed it on to the other one,
//! named by nobody: the Relocation names only the VM.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{qemu_available, tiny_guest, Node};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair, deleted on drop.
struct Lab {
    ns: [String; 2],
    addr: [String; 2],
}

impl Lab {
    fn new() -> Lab {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let p = format!("rl{:x}{seq}", std::process::id() & 0xffff);
        let ns = [format!("{p}a"), format!("{p}b")];
        let net = 100 + (std::process::id() % 100) as u8;
        let addr = [format!("10.{net}.{seq}.1"), format!("10.{net}.{seq}.2")];
        for n in &ns {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
            sh(&["ip", "netns", "add", n]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        let (va, vb) = (format!("{p}va"), format!("{p}vb"));
        sh(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ]);
        for (i, v) in [&va, &vb].into_iter().enumerate() {
            sh(&["ip", "link", "set", v, "netns", &ns[i]]);
            sh(&[
                "ip",
                "-n",
                &ns[i],
                "addr",
                "add",
                &format!("{}/24", addr[i]),
                "dev",
                v,
            ]);
            sh(&["ip", "-n", &ns[i], "link", "set", v, "up"]);
        }
        Lab { ns, addr }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Kills the QEMUs of a node's state dir when the test ends.
struct Reap(Vec<PathBuf>);
impl Drop for Reap {
    fn drop(&mut self) {
        for state in &self.0 {
            let out = Command::new("find")
                .arg(state.join("vms"))
                .args(["-name", "qemu.pid"])
                .output();
            for p in out
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
                .lines()
            {
                if let Ok(pid) = std::fs::read_to_string(p) {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                }
            }
        }
    }
}

fn node(lab: &Lab, i: usize, name: &str, guest: &Path, seed: Option<&str>) -> Node {
    let mut n = Node::new(&format!("reloc-{name}"));
    n.name = name.into();
    n.wrap = ["ip", "netns", "exec", &lab.ns[i]]
        .map(String::from)
        .to_vec();
    n.extra_args = [
        "--hypervisor",
        "qemu",
        "--probe-guest",
        &guest.display().to_string(),
        "--gossip-listen",
        &format!("{}:7946", lab.addr[i]),
        "--cluster",
        "reloc",
        "--gossip-verify",
        "unsigned",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(
        deorch::bench_cluster::FAST_TIMINGS
            .iter()
            .map(|s| s.to_string()),
    )
    .collect();
    if let Some(s) = seed {
        n.extra_args.extend(["--seed".into(), s.into()]);
    }
    n.start();
    n
}

fn status(n: &Node, kind: &str, name: &str) -> serde_json::Value {
    n.record(kind, name)
        .and_then(|r| r.status)
        .unwrap_or_default()
}

fn runs(n: &Node, vm: &str) -> bool {
    let s = status(n, "vm", vm);
    s["phase"] == "Running" && s["node"] == n.name.as_str()
}

/// (boot id, counter) of each beat in a serial log.
fn beats(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.split("deorch-guest: beat ").nth(1)?;
            let mut it = rest.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

fn serial(n: &Node, vm: &str) -> PathBuf {
    n.state.join(format!("vms/default/{vm}/serial.log"))
}

fn qemu_of(n: &Node, vm: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(n.state.join(format!("vms/default/{vm}/qemu.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn volumes(n: &Node) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(n.state.join("storage/volumes"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_running_vm_moves_to_the_node_the_radar_elects_by_its_name_only() {
    if !qemu_available() {
        return;
    }
    let (kernel, initrd) = tiny_guest();
    let guest = kernel.parent().unwrap().to_path_buf();
    let lab = Lab::new();
    let a = node(&lab, 0, "sat-a", &guest, None);
    let b = node(
        &lab,
        1,
        "sat-b",
        &guest,
        Some(&format!("{}:7946", lab.addr[0])),
    );
    let _reap = Reap(vec![a.state.clone(), b.state.clone()]);
    let nodes = [&a, &b];

    std::fs::write(
        a.manifests.join("mover.yaml"),
        format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: tiny}}\nspec:\n  boot: {{kernel: {k}, initrd: {i}, cmdline: \"{c} deorch.heartbeat\"}}\n  machine: pc\n  cpu: 1\n  memory: 128Mi\n---\napiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: mover}}\nspec:\n  spacesuit: tiny\n  stopTimeout: 5s\n  disks:\n    - name: data\n      size: 8Mi\n      source: {{blank: {{}}}}\n",
            k = kernel.display(),
            i = initrd.display(),
            c = deorch::qemu::probe::TINY_CMDLINE,
        ),
    )
    .unwrap();
    let t = Instant::now();
    let (from, to) = loop {
        if let Some(i) = nodes.iter().position(|n| runs(n, "mover")) {
            break (nodes[i], nodes[1 - i]);
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "the VM runs nowhere; logs:\n{}\n{}",
            a.log_text(),
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Let it beat a few times on its first node.
    let t = Instant::now();
    while beats(&std::fs::read_to_string(serial(from, "mover")).unwrap_or_default()).len() < 5 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no heartbeat on {}: {}",
            from.name,
            std::fs::read_to_string(serial(from, "mover")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = volumes(to);

    // The Relocation names the VM only; it arrives at `to` through
    // gossip if dropped on `from`, and the other way round.
    std::fs::write(
        a.manifests.join("move.yaml"),
        "apiVersion: deorch.dev/v1alpha1\nkind: Relocation\nmetadata: {name: move}\nspec:\n  virtualMachine: {name: mover}\n",
    )
    .unwrap();
    let t = Instant::now();
    let mut old_serial = String::new();
    loop {
        if let Ok(s) = std::fs::read_to_string(serial(from, "mover")) {
            old_serial = s;
        }
        // Never two copies running guest code: checked on the counters
        // below (two copies would beat the same numbers, or skip some).
        let done = |n: &Node| status(n, "relocation", "move")["phase"] == "Succeeded";
        if done(from) && done(to) && runs(to, "mover") {
            break;
        }
        let failed = nodes
            .iter()
            .find(|n| status(n, "relocation", "move")["phase"] == "Failed");
        assert!(
            failed.is_none() && t.elapsed() < Duration::from_secs(120),
            "relocation did not succeed: {} / {}\nlogs:\n{}\n{}",
            status(from, "relocation", "move"),
            status(to, "relocation", "move"),
            from.log_text(),
            to.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t.elapsed();
    let st = status(from, "relocation", "move");
    eprintln!("relocated in {took:?}: {st}");
    assert_eq!(st["source"], from.name.as_str(), "{st}");
    assert_eq!(st["destination"], to.name.as_str(), "{st}");
    let downtime = st["downtimeMs"].as_u64().expect("downtime in the status");
    assert!(downtime < 1_000, "downtime {downtime} ms");
    let progress = &st["progress"];
    assert!(progress["diskTotal"].as_u64().unwrap() >= 8 << 20, "{st}");

    // The old node runs nothing and holds nothing of the VM.
    let t = Instant::now();
    while qemu_of(from, "mover").is_some() || volumes(from).iter().any(|v| v.contains("mover")) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the old node still has the VM: qemu {:?}, volumes {:?}",
            qemu_of(from, "mover"),
            volumes(from)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(volumes(to).len() > before.len(), "{:?}", volumes(to));

    // The guest goes on beating on the new node: the same boot, its
    // counter (read back from its disk) going on from where it was.
    let old = beats(&old_serial);
    let (boot, last) = old.last().cloned().expect("beats on the old node");
    assert!(old.iter().all(|b| b.0 == boot), "one boot on the old node");
    let t = Instant::now();
    let new = loop {
        let new = beats(&std::fs::read_to_string(serial(to, "mover")).unwrap_or_default());
        if new.len() >= 5 {
            break new;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no beats on the new node"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        new.iter().all(|b| b.0 == boot),
        "the same boot goes on: {new:?}"
    );
    assert_eq!(
        new[0].1,
        last + 1,
        "the counter goes on with no gap: {last} then {new:?}"
    );
    for w in new.windows(2) {
        assert_eq!(w[1].1, w[0].1 + 1, "{new:?}");
    }
    // The VM's status on the new node says it runs there, with a console.
    let vm = status(to, "vm", "mover");
    assert_eq!(vm["node"], to.name.as_str(), "{vm}");
    let vnc = vm["console"]["vncPort"].as_u64();
    eprintln!("console on the new node: {}", vm["console"]);
    if let Some(port) = vnc {
        let ns = &lab.ns[if std::ptr::eq(to, &a) { 0 } else { 1 }];
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}; head -c 12 <&3"))
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("RFB"),
            "the console answers on the new node: {out:?}"
        );
    }
    drop((a, b));
}
