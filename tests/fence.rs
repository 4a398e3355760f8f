//! Self-fencing with the real qemu driver: a gossiping node's fence (a
//! process beside the daemon) pauses the node's VMs when the daemon has
//! been killed and has not renewed its lease within the fence timeout; the
//! returning daemon resumes them (same QEMU, nothing rebooted). A graceful
//! stop writes a hold: the VMs keep running through it, then are paused.
//! The guest's state is read over QMP (`query-status`), not from the node.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{qemu_available, tiny_guest, Node};

const TIMEOUT_MS: u64 = 1000;
const HOLD_MS: u64 = 4000;

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

/// How long until `query-status` says `want` (bounded by `limit`).
fn until_status(dir: &Path, want: &str, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if qmp_status(dir) == want {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn kill9(pid: u64) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

struct Cleanup(Vec<PathBuf>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        // The fence and QEMU outlive the daemon by design: reap them here.
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
fn a_killed_daemons_vms_are_paused_by_its_fence_and_resumed_when_it_returns() {
    if !qemu_available() {
        return;
    }
    let g = tiny_guest().0.parent().unwrap().to_path_buf();
    let mut node = Node::new("fence");
    node.extra_args = [
        "--hypervisor",
        "qemu",
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
    .map(|s| s.to_string())
    .chain([
        "--probe-guest".into(),
        g.display().to_string(),
        "--fence-timeout".into(),
        format!("{TIMEOUT_MS}ms"),
        "--fence-hold".into(),
        format!("{HOLD_MS}ms"),
    ])
    .collect();
    std::fs::write(
        node.manifests.join("tiny.yaml"),
        format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: tiny}}\nspec:\n  boot: {{kernel: {k}, initrd: {i}, cmdline: \"{c}\"}}\n  machine: microvm\n  cpu: 1\n  memory: 128Mi\n---\napiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: tiny}}\nspec:\n  spacesuit: tiny\n",
            k = g.join("vmlinuz").display(),
            i = g.join("initrd.img").display(),
            c = deorch::qemu::probe::TINY_CMDLINE,
        ),
    )
    .unwrap();
    let vm_dir = node.state.join("vms/default/tiny");
    let _cleanup = Cleanup(vec![
        node.state.join("fence/pid"),
        deorch::qemu::cmdline::pidfile(&vm_dir),
    ]);
    node.start();
    node.wait_for("the VM running", |n| {
        n.record("vm", "tiny")
            .and_then(|r| r.status)
            .is_some_and(|s| s["phase"] == "Running")
    });
    let qemu_pid = || {
        std::fs::read_to_string(deorch::qemu::cmdline::pidfile(&vm_dir))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let pid = qemu_pid();
    assert!(!pid.is_empty());
    assert_eq!(qmp_status(&vm_dir), "running");
    let fence: u64 = std::fs::read_to_string(node.state.join("fence/pid"))
        .expect("the node started its fence")
        .trim()
        .parse()
        .unwrap();
    assert!(Path::new(&format!("/proc/{fence}")).exists());

    // 1. kill -9 the daemon: the fence pauses the guest after the timeout
    // (not before: the first look is right after the kill).
    node.kill();
    assert_eq!(qmp_status(&vm_dir), "running", "paused before the timeout");
    let paused = until_status(&vm_dir, "paused", Duration::from_secs(10))
        .expect("the fence paused the VM after the daemon was killed");
    eprintln!("kill -9 -> paused: {paused:?} (timeout {TIMEOUT_MS} ms)");
    assert!(
        paused <= Duration::from_millis(TIMEOUT_MS) + deorch::fence::FENCE_MARGIN,
        "paused {paused:?} after the kill"
    );

    // 2. The daemon returns: the same QEMU runs again, its fence kept.
    node.start();
    let resumed = until_status(&vm_dir, "running", Duration::from_secs(20))
        .expect("the returning daemon resumed the VM");
    eprintln!("restart -> running: {resumed:?}");
    assert_eq!(qemu_pid(), pid, "the same QEMU, not a new boot");
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
        qmp_status(&vm_dir),
        "running",
        "paused during the graceful stop's hold"
    );
    until_status(&vm_dir, "paused", Duration::from_secs(15)).expect("paused once the hold is over");
    let paused = t0.elapsed();
    eprintln!("graceful stop -> paused: {paused:?} (hold {HOLD_MS} ms)");
    // The hold is written after the SIGTERM, and the fence waits the hold
    // and its timeout from then on.
    assert!(
        paused >= Duration::from_millis(HOLD_MS + TIMEOUT_MS),
        "paused {paused:?} after the SIGTERM"
    );
    node.start();
    until_status(&vm_dir, "running", Duration::from_secs(20)).expect("resumed after the hold");
    assert_eq!(qemu_pid(), pid);
    node.stop();
}
