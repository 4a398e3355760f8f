//! Transfer overlays: the qcow2 a live relocation between two
//! volume-streaming storages (zfs) puts on top of each of the running
//! VM's disks while the disk's volume is streamed (`zfs send` of a
//! transfer point). The guest's writes land in the overlay, so the
//! volume stays exactly as its point took it, and the mirror that
//! follows carries only the overlay's clusters (`sync: top`). The overlay
//! is folded back into the volume (active `block-commit`) if the VM stays
//! on this node, or goes with the VM's runtime directory once the VM runs
//! elsewhere.
//!
//! An overlay lives in the VM's runtime directory as
//! `xfer-DISK.qcow2`, with its volume named as backing file in its
//! header. A QEMU that died on it leaves the guest's latest writes there:
//! [`fold_files`] commits them into the volume before the VM starts again
//! (the qemu driver does so on every start), so no failure starts a VM
//! without the data it wrote.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// The block node name of disk `disk`'s overlay.
pub fn node(disk: &str) -> String {
    format!("xfer-{disk}")
}

/// The overlay file of disk `disk` in runtime directory `dir`.
pub fn path(dir: &Path, disk: &str) -> PathBuf {
    dir.join(format!("xfer-{disk}.qcow2"))
}

/// The overlay files in runtime directory `dir`.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("xfer-") && n.ends_with(".qcow2"))
        })
        .collect();
    out.sort();
    out
}

/// How long committing one overlay into its volume may take.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Make an empty overlay at `overlay` over `base` (of format `format`,
/// `size` bytes), without opening `base` (the running QEMU holds it).
pub async fn create(overlay: &Path, base: &str, format: &str, size: u64) -> Result<(), String> {
    let _ = std::fs::remove_file(overlay);
    let out = Command::new("qemu-img")
        .args([
            "create", "-q", "-f", "qcow2", "-u", "-b", base, "-F", format,
        ])
        .args(["-o", "cluster_size=65536"])
        .arg(overlay)
        .arg(size.to_string())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img create {}: {}",
            overlay.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Commit every overlay left in runtime directory `dir` into the volume
/// its header names, then delete it: for a VM whose QEMU is gone. The
/// number folded.
pub async fn fold_files(dir: &Path) -> Result<usize, String> {
    let found = files(dir);
    for f in &found {
        let run = Command::new("qemu-img")
            .args(["commit", "-q", "-f", "qcow2"])
            .arg(f)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(COMMIT_TIMEOUT, run)
            .await
            .map_err(|_| format!("qemu-img commit {}: timed out", f.display()))?
            .map_err(|e| format!("qemu-img: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "qemu-img commit {}: {}",
                f.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        std::fs::remove_file(f).map_err(|e| format!("{}: {e}", f.display()))?;
        tracing::info!(overlay = %f.display(), "a transfer overlay left by a relocation was committed into its volume");
    }
    Ok(found.len())
}
