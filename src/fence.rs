//! Self-fencing: a node's VMs are paused when its daemon stops renewing a
//! lease, by a process that outlives the daemon.
//!
//! A gossiping node's daemon can die (kill -9, OOM, a hung upgrade) while
//! its QEMUs run on (by design: a restarted daemon adopts them). Its peers
//! then re-elect its VMs that may start elsewhere (no data, or
//! `stateless: true`) and would run a second copy beside the first. The
//! *fence* is a small process of the same executable (`deorch node
//! fence`, started by the daemon, in its own session) that watches the
//! lease file `STATE_DIR/fence/lease`: the daemon rewrites it every
//! `timeout / 4`. When the content has not changed for `timeout` (measured
//! on the fence's monotonic clock, so wall-clock jumps do not matter), the
//! fence pauses every running VM of the node through the hypervisor driver
//! (QMP `stop` for the qemu driver, `virsh suspend` for libvirt): guest
//! code stops, disks and memory stay. A returning daemon's engine resumes
//! the VMs still its own (a paused VM whose spec says Running is resumed)
//! and stops those another node has taken over.
//!
//! Peers must not start a copy before the fence has acted: a node refuses
//! a configuration where `suspect + re-elect + claim settle` is shorter
//! than `fence timeout + FENCE_MARGIN` (docs/ALGORITHMS.md, "Fencing").
//! A graceful stop writes a *hold* into the lease (`--fence-hold`, for an
//! upgrade) and announces it in the node's gossiped status, so the fence
//! and the peers both wait that long before acting.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::driver::{Hypervisor, VmState};

/// What the fence needs besides `timeout`: peers wait this much more (the
/// fence's poll and the time a pause takes).
pub const FENCE_MARGIN: Duration = Duration::from_secs(1);

/// How often the fence reads the lease.
const POLL: Duration = Duration::from_millis(200);

/// The fence's directory in a state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("fence")
}

/// The lease file.
pub fn lease_path(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("lease")
}

/// The lease as written: a counter that changes at every renewal and how
/// long the fence must wait beyond its timeout (a graceful stop's hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Changes at every renewal.
    pub counter: u64,
    /// Extra wait before fencing, milliseconds.
    pub hold_ms: u64,
}

impl Lease {
    fn parse(text: &str) -> Option<Lease> {
        let mut it = text.split_whitespace();
        let counter = it.next()?.parse().ok()?;
        let hold_ms = it.next().map_or(Some(0), |h| h.parse().ok())?;
        Some(Lease { counter, hold_ms })
    }
}

/// Renew the lease (the daemon, every `timeout / 4`), with an extra
/// `hold` for the fence to wait (a graceful stop), atomically.
pub fn renew(state_dir: &Path, counter: u64, hold: Duration) -> std::io::Result<()> {
    let d = dir(state_dir);
    std::fs::create_dir_all(&d)?;
    let tmp = d.join(".lease.tmp");
    std::fs::write(&tmp, format!("{counter} {}\n", hold.as_millis()))?;
    std::fs::rename(&tmp, lease_path(state_dir))
}

/// The fence's pid file.
fn pid_path(state_dir: &Path) -> PathBuf {
    dir(state_dir).join("pid")
}

/// Whether a fence runs for `state_dir` (its pid file names a live
/// `deorch` process whose command line is a fence of this state dir).
pub fn running(state_dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_path(state_dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_fence = args.windows(2).any(|w| w == [b"node".as_slice(), b"fence"]);
    let ours = args.iter().any(|a| {
        Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(a)) == state_dir
    });
    (is_fence && ours).then_some(pid)
}

/// Start the fence of `state_dir` unless one runs: `args` are the driver's
/// (`--hypervisor ...`); the fence runs in its own session, so a signal to
/// the daemon's process group does not reach it.
pub fn ensure(state_dir: &Path, timeout: Duration, hypervisor: &str) -> anyhow::Result<u32> {
    use anyhow::Context;
    use std::os::unix::process::CommandExt;
    if let Some(pid) = running(state_dir) {
        return Ok(pid);
    }
    std::fs::create_dir_all(dir(state_dir)).context("creating the fence directory")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir(state_dir).join("fence.log"))
        .context("opening the fence log")?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let child = std::process::Command::new(exe)
        .args(["node", "fence", "--state-dir"])
        .arg(state_dir)
        .args(["--hypervisor", hypervisor])
        .arg("--timeout")
        .arg(format!("{}ms", timeout.as_millis()))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().context("fence log")?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the fence")?;
    let pid = child.id();
    // Not waited for: the fence outlives the daemon by design. Its exit is
    // reaped by init once the daemon is gone, and by the daemon's own
    // `running` check (a zombie has no cmdline) meanwhile.
    std::mem::forget(child);
    std::fs::write(pid_path(state_dir), format!("{pid}\n")).context("writing the fence pid")?;
    Ok(pid)
}

/// The ids (`namespace/name`) of the VMs with a runtime directory under
/// `vms_dir` (the qemu and libvirt drivers keep one per VM).
fn vm_ids(vms_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for ns in std::fs::read_dir(vms_dir).into_iter().flatten().flatten() {
        if !ns.path().is_dir() {
            continue;
        }
        for vm in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            if vm.path().is_dir() {
                out.push(format!(
                    "{}/{}",
                    ns.file_name().to_string_lossy(),
                    vm.file_name().to_string_lossy()
                ));
            }
        }
    }
    out.sort();
    out
}

/// `deorch node fence`: build the driver named by `hypervisor` (`qemu` or
/// `libvirt:URI`) and [`run`] for ever.
pub fn main(state_dir: &Path, hypervisor: &str, timeout: Duration) -> anyhow::Result<()> {
    use crate::driver::{libvirt::LibvirtHypervisor, qemu::QemuHypervisor};
    use crate::qemu::probe::Accel;
    let vms = state_dir.join("vms");
    // The accelerator only matters to starts, which the fence never does.
    let driver: Box<dyn Hypervisor> = match hypervisor.split_once(':') {
        None if hypervisor == "qemu" => {
            Box::new(QemuHypervisor::new("qemu-system-x86_64", vms, Accel::Tcg))
        }
        Some(("libvirt", uri)) => Box::new(LibvirtHypervisor::new(uri, vms, Accel::Tcg)),
        _ => anyhow::bail!("--hypervisor {hypervisor:?}: expected qemu or libvirt:URI"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(state_dir, timeout, driver.as_ref()));
    Ok(())
}

/// Run the fence until killed: watch the lease, pause every running VM
/// when it is `timeout` (plus its hold) old, once per expiry.
pub async fn run(state_dir: &Path, timeout: Duration, hypervisor: &dyn Hypervisor) {
    let vms_dir = state_dir.join("vms");
    let lease_file = lease_path(state_dir);
    let mut last: Option<Lease> = None;
    let mut changed = Instant::now();
    let mut fenced = false;
    let mut polled = Instant::now();
    info!(lease = %lease_file.display(), ?timeout, "fence watching the daemon's lease");
    loop {
        // The fence itself did not run for a timeout: the whole node was
        // frozen or suspended (a cgroup freezer, a host stall, a laptop
        // lid), its daemon with it, and peers may have started copies of
        // its VMs meanwhile. Its VMs are paused before anything else is
        // looked at (a lease the thawed daemon just renewed says nothing
        // of the time it was away); the daemon's engine resumes those
        // still its own. QEMU thaws with the fence, so a guest may run
        // for the few milliseconds this pause takes (docs/ALGORITHMS.md,
        // "Fencing").
        let gap = polled.elapsed();
        polled = Instant::now();
        if gap >= timeout {
            warn!(
                ?gap,
                "the fence did not run for longer than its timeout (the node was frozen or suspended): pausing this node's VMs"
            );
            pause_all(&vms_dir, hypervisor).await;
            fenced = true;
            last = None;
        }
        // Its node is gone (the state directory removed) or another fence
        // took over: nothing left to watch.
        if !state_dir.exists() {
            info!("the state directory is gone: the fence exits");
            return;
        }
        if std::fs::read_to_string(pid_path(state_dir))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|p| p != std::process::id())
        {
            info!("another fence watches this state directory: this one exits");
            return;
        }
        let now = std::fs::read_to_string(&lease_file)
            .ok()
            .and_then(|t| Lease::parse(&t));
        if now.is_some() && now != last {
            if fenced {
                info!("lease renewed: the daemon is back (its engine resumes its VMs)");
            }
            last = now;
            changed = Instant::now();
            fenced = false;
        }
        let hold = Duration::from_millis(last.map_or(0, |l| l.hold_ms));
        if !fenced && changed.elapsed() >= timeout + hold {
            fenced = true;
            warn!(
                since = ?changed.elapsed(),
                "the daemon has not renewed its lease: pausing this node's VMs"
            );
            pause_all(&vms_dir, hypervisor).await;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How long a pause that fails for a transient reason (the VM's QMP
/// socket busy with the daemon's own command, as when both thaw) is
/// tried again, and how often.
const PAUSE_PATIENCE: Duration = Duration::from_secs(2);
const PAUSE_RETRY: Duration = Duration::from_millis(5);

/// Pause every running VM of the node, all at once.
async fn pause_all(vms_dir: &Path, hypervisor: &dyn Hypervisor) {
    let pauses = vm_ids(vms_dir).into_iter().map(|id| async move {
        let t0 = Instant::now();
        loop {
            if !matches!(hypervisor.state(&id).await, Ok(VmState::Running { .. })) {
                return;
            }
            match hypervisor.pause(&id).await {
                Ok(()) => {
                    warn!(vm = %id, "fenced: paused");
                    return;
                }
                Err(crate::driver::DriverError::Transient { .. })
                    if t0.elapsed() < PAUSE_PATIENCE =>
                {
                    tokio::time::sleep(PAUSE_RETRY).await;
                }
                Err(e) => {
                    warn!(vm = %id, error = %e, "fence could not pause");
                    return;
                }
            }
        }
    });
    futures_util::future::join_all(pauses).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_reads_back_with_and_without_hold() {
        assert_eq!(
            Lease::parse("7 0\n"),
            Some(Lease {
                counter: 7,
                hold_ms: 0
            })
        );
        assert_eq!(
            Lease::parse("8"),
            Some(Lease {
                counter: 8,
                hold_ms: 0
            })
        );
        assert_eq!(
            Lease::parse("9 600000"),
            Some(Lease {
                counter: 9,
                hold_ms: 600_000
            })
        );
        assert_eq!(Lease::parse(""), None);
        assert_eq!(Lease::parse("x 1"), None);
    }

    #[test]
    fn renew_writes_what_parse_reads() {
        let d = std::env::temp_dir().join(format!("deorch-fence-{}", std::process::id()));
        renew(&d, 42, Duration::from_secs(3)).unwrap();
        let text = std::fs::read_to_string(lease_path(&d)).unwrap();
        assert_eq!(
            Lease::parse(&text),
            Some(Lease {
                counter: 42,
                hold_ms: 3000
            })
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
