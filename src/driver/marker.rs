//! The relocation marker both QEMU-running drivers keep in a VM's runtime
//! directory (`<vms>/<namespace>/<name>/relocation`): durable, written
//! atomically, gone with the runtime directory (see
//! `Hypervisor::relocation_lock`).

use std::path::Path;

use super::DriverError;
use crate::state_file;

const RELOCATION_MARKER: &str = "relocation";

/// The marker's text in runtime directory `dir`, if it holds one.
pub fn read(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(RELOCATION_MARKER)).ok()
}

/// Every marked VM under `vms_dir`: (`namespace/name`, the marker's text).
pub fn list(vms_dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for ns in std::fs::read_dir(vms_dir).into_iter().flatten().flatten() {
        for vm in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            if let Some(text) = read(&vm.path()) {
                out.push((
                    format!(
                        "{}/{}",
                        ns.file_name().to_string_lossy(),
                        vm.file_name().to_string_lossy()
                    ),
                    text,
                ));
            }
        }
    }
    out
}

/// Set (`Some`) or clear (`None`) the marker of VM `id` in `dir`.
pub fn set(dir: &Path, id: &str, holder: Option<&str>) -> Result<(), DriverError> {
    let f = dir.join(RELOCATION_MARKER);
    let failed = |e: std::io::Error| DriverError::permanent("relocation lock", id, e.to_string());
    match holder {
        Some(h) => {
            std::fs::create_dir_all(dir).map_err(failed)?;
            state_file::write(&f, h.as_bytes()).map_err(failed)
        }
        None => match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(failed(e)),
            _ => Ok(()),
        },
    }
}
