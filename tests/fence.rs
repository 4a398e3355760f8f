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
    node.extra_args.extend(
        [
            "--storage",
            "dir",
            "--gossip-listen",
            "127.0.0.1:0",
            "--cluster",
            "test",
            "--gossip-verify",
            "unsigned",
            "--gossip-probe-interval",
            "200ms",
            "--gossip-suspect-timeout",
            "1s",
            "--gossip-claim-settle",
            "1s",
            "--gossip-reelect-timeout",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
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
    node.wait_for("the VM running", |n| {
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
    node.stop();
}
