//! Self-fencing with the real qemu and libvirt drivers: a gossiping node's fence (a
//! process beside the daemon) pauses the node's VMs when the daemon has
//! been killed and has not renewed its lease within the fence timeout; the
//! returning daemon resumes them (same QEMU, nothing rebooted). A graceful
//! stop writes a hold: the VMs keep running through it, then are paused.
//! The guest's state is read from QEMU itself (QMP `query-status`) or
//! from libvirt (`virsh domstate`), not from the node.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::libvirt::{libvirtd_up, LIBVIRT_URI};
use common::{qemu_available, tiny_guest, Node};

const TIMEOUT_MS: u64 = 1000;
const HOLD_MS: u64 = 4000;

/// Which driver the node runs its VM with.
#[derive(Clone, Copy, PartialEq)]
enum Driver {
    Qemu,
    Libvirt,
}

/// The VM as the hypervisor sees it: `running`, `paused`, ...
struct Guest {
    driver: Driver,
    /// Runtime directory (qemu: its QMP socket).
    dir: PathBuf,
    /// libvirt domain.
    domain: String,
}

impl Guest {
    fn status(&self) -> String {
        match self.driver {
            Driver::Qemu => qmp_status(&self.dir),
            Driver::Libvirt => {
                let out = Command::new("virsh")
                    .args(["-c", LIBVIRT_URI, "domstate", &self.domain])
                    .output()
                    .expect("virsh");
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            }
        }
    }

    /// How long until it says `want` (bounded by `limit`).
    fn until(&self, want: &str, limit: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.status() == want {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

/// QMP `query-status` of the VM whose runtime directory is `dir`.
fn qmp_status(dir: &Path) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = deorch::qemu::cmdline::qmp_socket(dir);
        let mut q = match deorch::qemu::qmp::Qmp::connect(&sock, Duration::from_secs(5)).await {
            Ok(q) => q,
            Err(e) => return format!("no QMP: {e}"),
        };
        match q.execute("query-status", None).await {
            Ok(v) => v["status"].as_str().unwrap_or("?").to_string(),
            Err(e) => format!("error: {e}"),
        }
    })
}

fn kill9(pid: u64) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

struct Cleanup(Vec<PathBuf>, Option<String>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        // The fence and QEMU outlive the daemon by design: reap them here.
        if let Some(domain) = &self.1 {
            for verb in ["destroy", "undefine"] {
                let _ = Command::new("virsh")
                    .args(["-c", LIBVIRT_URI, verb, domain])
                    .output();
            }
        }
        for pidfile in &self.0 {
            if let Ok(p) = std::fs::read_to_string(pidfile) {
                if let Ok(pid) = p.trim().parse::<u64>() {
                    kill9(pid);
                }
            }
        }
    }
}

#[test]
fn with_qemu_a_killed_daemons_vms_are_paused_by_its_fence_and_resumed_when_it_returns() {
    if qemu_available() {
        fenced(Driver::Qemu);
    }
}

#[test]
fn with_libvirt_a_killed_daemons_vms_are_paused_by_its_fence_and_resumed_when_it_returns() {
    if qemu_available() && libvirtd_up() {
        fenced(Driver::Libvirt);
    }
}

fn fenced(driver: Driver) {
    let g = tiny_guest().0.parent().unwrap().to_path_buf();
    let tag = match driver {
        Driver::Qemu => "fq",
        Driver::Libvirt => "fl",
    };
    let mut node = Node::new(&format!("fence-{tag}"));
    // A name of its own: libvirt's domains are shared by every test.
    let name = format!("{tag}{}", std::process::id());
    let mut hypervisor = vec!["--hypervisor".to_string()];
    match driver {
        Driver::Qemu => hypervisor.push("qemu".into()),
        Driver::Libvirt => {
            hypervisor.extend(["libvirt".into(), "--libvirt-uri".into(), LIBVIRT_URI.into()])
        }
    }
    node.extra_args = hypervisor;
    node.extra_args
        .extend(["--storage".to_string(), "dir".to_string()]);
    node.extra_args.extend(common::fast_gossip_flags());
    node.extra_args.extend([
        "--probe-guest".into(),
        g.display().to_string(),
        "--fence-timeout".into(),
        format!("{TIMEOUT_MS}ms"),
        "--fence-hold".into(),
        format!("{HOLD_MS}ms"),
    ]);
    std::fs::write(
        node.manifests.join("tiny.yaml"),
        format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: tiny}}\nspec:\n  boot: {{kernel: {k}, initrd: {i}, cmdline: \"{c}\"}}\n  machine: microvm\n  cpu: 1\n  memory: 128Mi\n---\napiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: {name}}}\nspec:\n  spacesuit: tiny\n",
            k = g.join("vmlinuz").display(),
            i = g.join("initrd.img").display(),
            c = deorch::qemu::probe::TINY_CMDLINE,
        ),
    )
    .unwrap();
    let vm_dir = node.state.join(format!("vms/default/{name}"));
    let domain =
        deorch::driver::libvirt::LibvirtHypervisor::domain_name(&format!("default/{name}"));
    let _cleanup = Cleanup(
        vec![
            node.state.join("fence/pid"),
            deorch::qemu::cmdline::pidfile(&vm_dir),
        ],
        (driver == Driver::Libvirt).then(|| domain.clone()),
    );
    let guest = Guest {
        driver,
        dir: vm_dir.clone(),
        domain,
    };
    node.start();
    // The first define of a fresh libvirtd probes QEMU (~1 min), then TCG boots.
    node.wait_within("the VM running", Duration::from_secs(240), |n| {
        n.record("vm", &name)
            .and_then(|r| r.status)
            .is_some_and(|s| s["phase"] == "Running")
    });
    // QEMU's pid as the node reports it (the node must be up).
    let qemu_pid = |node: &Node| {
        node.record("vm", &name)
            .and_then(|r| r.status)
            .and_then(|s| s["pid"].as_u64())
            .unwrap_or(0)
    };
    let pid = qemu_pid(&node);
    assert!(pid > 0);
    assert_eq!(guest.status(), "running");
    let fence: u64 = std::fs::read_to_string(node.state.join("fence/pid"))
        .expect("the node started its fence")
        .trim()
        .parse()
        .unwrap();
    assert!(Path::new(&format!("/proc/{fence}")).exists());

    // 1. kill -9 the daemon: the fence pauses the guest after the timeout
    // (not before: the first look is right after the kill).
    node.kill();
    assert_eq!(guest.status(), "running", "paused before the timeout");
    let paused = guest
        .until("paused", Duration::from_secs(10))
        .expect("the fence paused the VM after the daemon was killed");
    eprintln!("{tag}: kill -9 -> paused: {paused:?} (timeout {TIMEOUT_MS} ms)");
    assert!(
        paused <= Duration::from_millis(TIMEOUT_MS) + deorch::fence::FENCE_MARGIN,
        "paused {paused:?} after the kill"
    );

    // 2. The daemon returns: the same QEMU runs again, its fence kept.
    node.start();
    let resumed = guest
        .until("running", Duration::from_secs(20))
        .expect("the returning daemon resumed the VM");
    eprintln!("{tag}: restart -> running: {resumed:?}");
    node.wait_for("the pid reported again", |n| qemu_pid(n) > 0);
    assert_eq!(qemu_pid(&node), pid, "the same QEMU, not a new boot");
    let again: u64 = std::fs::read_to_string(node.state.join("fence/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(again, fence, "one fence, kept across the daemon's restart");

    // 3. A graceful stop holds the fence off for --fence-hold.
    let t0 = Instant::now();
    node.stop();
    std::thread::sleep(Duration::from_millis(TIMEOUT_MS + 1500).saturating_sub(t0.elapsed()));
    assert_eq!(
        guest.status(),
        "running",
        "paused during the graceful stop's hold"
    );
    guest
        .until("paused", Duration::from_secs(15))
        .expect("paused once the hold is over");
    let paused = t0.elapsed();
    eprintln!("{tag}: graceful stop -> paused: {paused:?} (hold {HOLD_MS} ms)");
    // The hold is written after the SIGTERM, and the fence waits the hold
    // and its timeout from then on.
    assert!(
        paused >= Duration::from_millis(HOLD_MS + TIMEOUT_MS),
        "paused {paused:?} after the SIGTERM"
    );
    node.start();
    guest
        .until("running", Duration::from_secs(20))
        .expect("resumed after the hold");
    node.wait_for("the pid reported again", |n| qemu_pid(n) > 0);
    assert_eq!(qemu_pid(&node), pid);

    // 4. The whole node frozen (cgroup freezer: daemon, fence and QEMU)
    // for longer than the timeout, then thawed: the thawed daemon renews
    // its lease at once, yet the fence pauses the guest first (it saw
    // that it did not run itself), and the daemon resumes it.
    if driver == Driver::Qemu {
        let daemon = node.child.as_ref().map(|c| c.id()).unwrap();
        let Some(frozen) =
            common::Freezer::new(&format!("deorchtest-fence-{}", std::process::id()))
        else {
            assert!(
                std::env::var_os("CI").is_none(),
                "no cgroup freezer (v1 or v2)"
            );
            eprintln!("{tag}: no cgroup freezer here: the freeze step is skipped");
            node.stop();
            return;
        };
        let fence_log = node.state.join("fence/fence.log");
        let logged = || {
            std::fs::read_to_string(&fence_log)
                .unwrap_or_default()
                .matches("fenced: paused")
                .count()
        };
        let before = logged();
        frozen.freeze(&[daemon.to_string(), fence.to_string(), pid.to_string()]);
        std::thread::sleep(Duration::from_millis(3 * TIMEOUT_MS));
        let t0 = Instant::now();
        frozen.thaw();
        let mut seen_paused = None;
        while t0.elapsed() < Duration::from_secs(10) && logged() == before {
            if seen_paused.is_none() && guest.status() == "paused" {
                seen_paused = Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            logged() > before,
            "the fence did not pause the VM after the node thawed: {}",
            std::fs::read_to_string(&fence_log).unwrap_or_default()
        );
        let text = std::fs::read_to_string(&fence_log).unwrap_or_default();
        assert!(
            text.contains("the fence did not run for longer than its timeout"),
            "{text}"
        );
        eprintln!("{tag}: thawed -> fence paused the VM (logged within {:?}; QMP saw paused at {seen_paused:?})", t0.elapsed());
        guest
            .until("running", Duration::from_secs(20))
            .expect("the daemon resumed the VM after the thaw");
        assert_eq!(qemu_pid(&node), pid, "the same QEMU after the thaw");
    }
    node.stop();
}

/// Heartbeats read: (when read, boot id, counter).
type Beats = std::sync::Arc<std::sync::Mutex<Vec<(Instant, String, u64)>>>;

/// The heartbeats of VM `vm` on `nodes`, as the guest prints them on its
/// serial console (each node's `vms/default/VM/serial.log`), timestamped
/// when read; a thread reads every 20 ms until `stop`.
fn collector(
    nodes: Vec<PathBuf>,
    vm: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Beats {
    let beats: Beats = Default::default();
    let b = beats.clone();
    std::thread::spawn(move || {
        let mut offsets = vec![0usize; nodes.len()];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for (i, state) in nodes.iter().enumerate() {
                let log = state.join(format!("vms/default/{vm}/serial.log"));
                let text = std::fs::read(&log).unwrap_or_default();
                if text.len() < offsets[i] {
                    offsets[i] = 0; // a new boot's log
                }
                let new = &text[offsets[i]..];
                // Whole lines only.
                let Some(end) = new.iter().rposition(|c| *c == b'\n') else {
                    continue;
                };
                let at = Instant::now();
                for line in String::from_utf8_lossy(&new[..=end]).lines() {
                    let mut it = line
                        .split("deorch-guest: beat ")
                        .nth(1)
                        .unwrap_or("")
                        .split_whitespace();
                    if let (Some(boot), Some(n)) =
                        (it.next(), it.next().and_then(|n| n.parse().ok()))
                    {
                        b.lock().unwrap().push((at, boot.to_string(), n));
                    }
                }
                offsets[i] += end + 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    beats
}

fn boots(beats: &Beats) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (_, b, _) in beats.lock().unwrap().iter() {
        if !out.contains(b) {
            out.push(b.clone());
        }
    }
    out
}

fn gossip_node(tag: &str, name: &str, seed: Option<&str>, guest: &Path) -> Node {
    let mut node = Node::new(tag);
    node.name = name.into();
    node.call_timeout = Duration::from_secs(10);
    node.extra_args = ["--hypervisor", "qemu", "--storage", "dir"]
        .map(String::from)
        .to_vec();
    node.extra_args.extend(common::fast_gossip_flags());
    node.extra_args.extend([
        "--fence-timeout".into(),
        "1s".into(),
        "--probe-guest".into(),
        guest.display().to_string(),
    ]);
    if let Some(s) = seed {
        node.extra_args.extend(["--seed".into(), s.into()]);
    }
    node.start();
    node
}

fn runs_on(node: &Node, vm: &str) -> bool {
    node.record("vm", vm)
        .and_then(|r| r.status)
        .is_some_and(|s| s["phase"] == "Running" && s["node"] == node.name.as_str())
}

/// Two nodes, the qemu driver, the guest's own heartbeat: kill -9 the
/// daemon of the node running a VM that may start anywhere (no disk) and
/// of one that holds data. At no moment do two copies of the movable VM
/// beat (the fence paused the first before the peer started the second,
/// and the returning daemon does not resume it); the VM with data never
/// starts elsewhere and its disk counter never goes back.
#[test]
fn two_nodes_never_run_two_copies_and_no_disk_counter_goes_back() {
    if !qemu_available() {
        return;
    }
    let g = tiny_guest().0.parent().unwrap().to_path_buf();
    let mut a = gossip_node("fence-2a", "fa", None, &g);
    let file = a.state.join("gossip-address");
    a.wait_for("the gossip address", |_| file.exists());
    let seed = std::fs::read_to_string(&file).unwrap().trim().to_string();
    let mut b = gossip_node("fence-2b", "fb", Some(&seed), &g);
    let mut cleanup = vec![];
    for n in [&a, &b] {
        cleanup.push(n.state.join("fence/pid"));
        for vm in ["free", "data"] {
            cleanup.push(deorch::qemu::cmdline::pidfile(
                &n.state.join(format!("vms/default/{vm}")),
            ));
        }
    }
    let _cleanup = Cleanup(cleanup, None);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let states = vec![a.state.clone(), b.state.clone()];
    let free_beats = collector(states.clone(), "free", stop.clone());
    let data_beats = collector(states, "data", stop.clone());
    let suit = |name: &str| {
        format!(
            "---\napiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: {name}}}\nspec:\n  boot: {{kernel: {k}, initrd: {i}, cmdline: \"{c} deorch.heartbeat\"}}\n  machine: microvm\n  cpu: 1\n  memory: 128Mi\n",
            k = g.join("vmlinuz").display(),
            i = g.join("initrd.img").display(),
            c = deorch::qemu::probe::TINY_CMDLINE,
        )
    };
    let nic = "  nics:\n    - {name: eth0, network: default}\n";
    std::fs::write(
        a.manifests.join("all.yaml"),
        format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata: {{name: default}}\nspec:\n  ipv4: {{subnet: 10.42.0.0/24, gateway: 10.42.0.1}}\n{}{}---\napiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: free}}\nspec:\n  spacesuit: hb-free\n{nic}---\napiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: data}}\nspec:\n  spacesuit: hb-data\n  disks:\n    - name: counter\n      size: 4Mi\n      source: {{blank: {{}}}}\n{nic}",
            suit("hb-free"),
            suit("hb-data"),
        ),
    )
    .unwrap();
    let until = |what: &str, limit: Duration, mut f: Box<dyn FnMut() -> bool + '_>| {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < limit, "timed out after {limit:?}: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let t0 = Instant::now();
    while free_beats.lock().unwrap().is_empty() || data_beats.lock().unwrap().is_empty() {
        if t0.elapsed() > Duration::from_secs(120) {
            for n in [&a, &b] {
                for vm in ["free", "data"] {
                    let log = n.state.join(format!("vms/default/{vm}/serial.log"));
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let text: Vec<&str> = text.lines().filter(|l| !l.contains("tick")).collect();
                    eprintln!("SERIAL {} {vm}: {}", n.name, text.join(" | "));
                }
            }
            panic!("no heartbeats from both VMs in 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let nodes = [&mut a, &mut b];
    let x = if runs_on(nodes[0], "free") { 0 } else { 1 };
    assert!(runs_on(nodes[x], "free"), "free runs on neither node");
    let data_on_x = runs_on(nodes[x], "data");
    let first_free = boots(&free_beats);
    assert_eq!(first_free.len(), 1);

    // kill -9 the daemon of the node running `free`.
    let [a, b] = nodes;
    let (victim, survivor) = if x == 0 { (a, b) } else { (b, a) };
    let killed = Instant::now();
    victim.kill();
    until(
        "free beating from a second boot on the survivor",
        Duration::from_secs(60),
        Box::new(|| boots(&free_beats).len() == 2),
    );
    eprintln!(
        "free: second copy beating {:?} after the kill (data on the killed node: {data_on_x})",
        killed.elapsed()
    );
    assert!(runs_on(survivor, "free"));
    // The returning daemon finds its copy paused and the claim lost: it
    // stops it and never resumes it. It listens on a new port (port 0),
    // so it needs a seed to find the survivor, as a real node has one.
    if !victim.extra_args.iter().any(|a| a == "--seed") {
        let file = survivor.state.join("gossip-address");
        let seed = std::fs::read_to_string(&file).unwrap().trim().to_string();
        victim.extra_args.extend(["--seed".into(), seed]);
    }
    victim.start();
    until(
        "the victim stops its old copy of free",
        Duration::from_secs(60),
        Box::new(|| {
            !std::path::Path::new(&format!(
                "/proc/{}",
                std::fs::read_to_string(deorch::qemu::cmdline::pidfile(
                    &victim.state.join("vms/default/free")
                ))
                .unwrap_or_default()
                .trim()
            ))
            .exists()
                || std::fs::read_to_string(deorch::qemu::cmdline::pidfile(
                    &victim.state.join("vms/default/free"),
                ))
                .is_err()
        }),
    );
    until(
        "data beating again",
        Duration::from_secs(60),
        Box::new(|| {
            data_beats
                .lock()
                .unwrap()
                .last()
                .is_some_and(|(t, _, _)| t.elapsed() < Duration::from_millis(500))
        }),
    );
    std::thread::sleep(Duration::from_secs(2));

    // No overlap: every beat of the first copy came before the second's first.
    let free = free_beats.lock().unwrap().clone();
    let second = boots(&free_beats)[1].clone();
    let first_of_second = free.iter().find(|(_, b, _)| *b == second).unwrap().0;
    let last_of_first = free
        .iter()
        .filter(|(_, b, _)| *b == first_free[0])
        .map(|(t, _, _)| *t)
        .max()
        .unwrap();
    eprintln!(
        "free: first copy's last beat {:?} before the second's first",
        first_of_second.duration_since(last_of_first)
    );
    assert!(
        last_of_first < first_of_second,
        "two copies of free beat at once"
    );
    // The VM with data: one boot, the counter only goes up.
    let data = data_beats.lock().unwrap().clone();
    assert_eq!(boots(&data_beats).len(), 1, "data booted twice: {data:?}");
    for w in data.windows(2) {
        assert!(w[1].2 > w[0].2, "data's disk counter went back: {w:?}");
    }
    eprintln!(
        "data: {} beats, counter {}..{}, one boot",
        data.len(),
        data[0].2,
        data[data.len() - 1].2
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    victim.stop();
    survivor.stop();
}
