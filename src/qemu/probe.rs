//! Choosing the accelerator by a real boot, never by the mere presence of
//! `/dev/kvm`: some hosts (nested hypervisors) expose a `/dev/kvm` that
//! cannot boot a stock kernel (QEMU aborts on an MSR, or the guest hangs
//! after decompression). At node start the tiny guest is booted under KVM
//! with a short timeout and the `deorch.probe` kernel argument, which makes
//! its `/init` print the ready marker and power off at once. KVM is chosen
//! only if the marker appears in time; otherwise TCG. The result is cached
//! per (QEMU version, host kernel, guest kernel) in the state directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The ready marker the tiny guest prints on its serial console.
pub const READY_MARKER: &str = "DEORCH-GUEST-READY";

/// The tiny guest's kernel command line (the `tiny` spacesuit's, the
/// benches' and the tests'): serial console, quiet, and no boot-time
/// self-tests of the kernel's crypto algorithms, which cost ~0.4 s under
/// TCG and guard nothing this guest uses.
pub const TINY_CMDLINE: &str = "console=ttyS0 quiet cryptomgr.notests";

/// An accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// The name QEMU and the status use.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What the probe found, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    /// The chosen accelerator.
    pub accel: Accel,
    /// Why (e.g. "KVM guest ready in 412 ms", "no /dev/kvm").
    pub reason: String,
    /// Cache key the result is valid for.
    pub key: String,
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct ProbeGuest {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initrd.
    pub initrd: PathBuf,
    /// How long the KVM boot may take.
    pub timeout: Duration,
}

/// Boot `guest` once under `accel`; Ok(elapsed) when the marker appeared.
pub async fn boot_once(guest: &ProbeGuest, accel: Accel) -> Result<Duration, String> {
    let mut cmd = Command::new(&guest.qemu);
    cmd.args(["-accel", accel.as_str(), "-M", "microvm", "-m", "128"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&guest.kernel)
        .arg("-initrd")
        .arg(&guest.initrd)
        .arg("-append")
        .arg(format!("{TINY_CMDLINE} deorch.probe"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if accel == Accel::Kvm {
        cmd.args(["-cpu", "host"]);
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", guest.qemu.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let wait = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(READY_MARKER) {
                return true;
            }
        }
        false
    };
    let outcome = tokio::time::timeout(guest.timeout, wait).await;
    let elapsed = started.elapsed();
    let _ = child.start_kill();
    let status = child.wait().await.ok();
    match outcome {
        Ok(true) => Ok(elapsed),
        Ok(false) => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = e.read_to_string(&mut err).await;
            }
            let last = err.lines().last().unwrap_or("").trim().to_string();
            Err(format!(
                "QEMU exited ({}) before the guest was ready: {last}",
                status.map(|s| s.to_string()).unwrap_or_default()
            ))
        }
        Err(_) => Err(format!("guest not ready within {:?}", guest.timeout)),
    }
}

/// Decide the accelerator, using and refreshing the cache file
/// `state_dir/accel.json`.
pub async fn probe_cached(guest: &ProbeGuest, state_dir: &Path) -> ProbeResult {
    let key = cache_key(guest).await;
    let cache = state_dir.join("accel.json");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Ok(r) = serde_json::from_str::<ProbeResult>(&text) {
            if r.key == key {
                return r;
            }
        }
    }
    let result = probe(guest, key).await;
    let bytes = serde_json::to_vec_pretty(&result).unwrap_or_default();
    if let Err(e) = crate::state_file::write(&cache, &bytes) {
        tracing::debug!(cache = %cache.display(), error = %e, "probe result not cached");
    }
    result
}

/// Probe without the cache.
pub async fn probe(guest: &ProbeGuest, key: String) -> ProbeResult {
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if let Err(e) = usable {
        return ProbeResult {
            accel: Accel::Tcg,
            reason: format!("/dev/kvm not usable ({e})"),
            key,
        };
    }
    match boot_once(guest, Accel::Kvm).await {
        Ok(t) => ProbeResult {
            accel: Accel::Kvm,
            reason: format!("KVM guest ready in {} ms", t.as_millis()),
            key,
        },
        Err(why) => ProbeResult {
            accel: Accel::Tcg,
            reason: format!("/dev/kvm present but a KVM boot failed: {why}"),
            key,
        },
    }
}

async fn cache_key(guest: &ProbeGuest) -> String {
    let qemu = Command::new(&guest.qemu)
        .arg("--version")
        .output()
        .await
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let kernel = std::fs::metadata(&guest.kernel)
        .map(|m| m.len())
        .unwrap_or(0);
    format!("{qemu}|{}|{}:{kernel}", host.trim(), guest.kernel.display())
}
