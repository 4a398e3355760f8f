//! `qemu-img` as the import runs it: `info --output=json` to learn a
//! disk's format and size, `convert -p` with its progress read line by
//! line (`    (12.50/100%)\r`) and handed to a callback.

use std::io::Read;
use std::process::{Command, Stdio};

/// What `qemu-img info` says of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// qemu-img's format name (`vmdk`, `vpc`, `vhdx`, `qcow2`, `raw`, ...).
    pub format: String,
    /// Size the guest sees, in bytes.
    pub virtual_size: u64,
    /// A backing file, which an imported disk must not have.
    pub backing: Option<String>,
    /// The vmdk subformat (`monolithicSparse`, `streamOptimized`, ...).
    pub subformat: Option<String>,
}

/// Where a disk is, as `qemu-img` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file of its own.
    File(String),
    /// `size` bytes at `offset` of `file` (a member of an OVA), read
    /// through qemu's `raw` driver as a slice.
    Slice {
        /// The archive.
        file: String,
        /// Offset of the first byte.
        offset: u64,
        /// Length.
        size: u64,
    },
}

impl Source {
    /// The file name argument for `qemu-img`.
    pub fn arg(&self) -> String {
        match self {
            Source::File(f) => f.clone(),
            Source::Slice { file, offset, size } => format!(
                "json:{}",
                serde_json::json!({
                    "file": {
                        "driver": "raw",
                        "offset": offset,
                        "size": size,
                        "file": {"driver": "file", "filename": file},
                    }
                })
            ),
        }
    }
}

/// `qemu-img info` of `src` (format probed unless `format` is given).
pub fn info(src: &Source, format: Option<&str>) -> Result<Info, String> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["info", "--output=json"]);
    if let Some(f) = format {
        cmd.args(["-f", f]);
    }
    let out = cmd
        .arg(src.arg())
        .output()
        .map_err(|e| format!("cannot run qemu-img (install qemu-utils): {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("qemu-img info printed no JSON: {e}"))?;
    Ok(Info {
        format: v["format"]
            .as_str()
            .ok_or("qemu-img info gave no format")?
            .to_string(),
        virtual_size: v["virtual-size"]
            .as_u64()
            .ok_or("qemu-img info gave no virtual-size")?,
        backing: v["backing-filename"].as_str().map(str::to_string),
        subformat: v["format-specific"]["data"]["create-type"]
            .as_str()
            .map(str::to_string),
    })
}

/// The fraction done in one line of `qemu-img convert -p`.
pub fn progress_of(line: &str) -> Option<f64> {
    let inner = line.trim().strip_prefix('(')?.strip_suffix("%)")?;
    let (done, total) = inner.split_once('/')?;
    let (done, total): (f64, f64) = (done.parse().ok()?, total.parse().ok()?);
    (total > 0.0).then(|| (done / total).clamp(0.0, 1.0))
}

/// `qemu-img convert -p -f FORMAT -O TARGET SRC DST`, calling `progress`
/// with the fraction done as qemu-img reports it.
pub fn convert(
    src: &Source,
    format: &str,
    dst: &std::path::Path,
    target: &str,
    progress: &mut dyn FnMut(f64),
) -> Result<(), String> {
    let mut child = Command::new("qemu-img")
        .args(["convert", "-p", "-f", format, "-O", target])
        .arg(src.arg())
        .arg(dst)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run qemu-img (install qemu-utils): {e}"))?;
    let mut stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut stdout = child.stdout.take().expect("piped");
    let mut buf = [0u8; 4096];
    let mut line = Vec::new();
    loop {
        let n = match stdout.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for b in &buf[..n] {
            if *b == b'\r' || *b == b'\n' {
                if let Some(p) = progress_of(&String::from_utf8_lossy(&line)) {
                    progress(p);
                }
                line.clear();
            } else {
                line.push(*b);
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let errors = errors.join().unwrap_or_default();
    if !status.success() {
        return Err(errors.trim().to_string());
    }
    progress(1.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(progress_of("    (12.50/100%)"), Some(0.125));
        assert_eq!(progress_of("(100.00/100%)"), Some(1.0));
        assert_eq!(progress_of("qemu-img: error"), None);
        assert_eq!(progress_of(""), None);
    }

    #[test]
    fn slice_arg_is_json() {
        let a = Source::Slice {
            file: "/x/a \"b\".ova".into(),
            offset: 1536,
            size: 10,
        }
        .arg();
        let v: serde_json::Value = serde_json::from_str(a.strip_prefix("json:").unwrap()).unwrap();
        assert_eq!(v["file"]["offset"], 1536);
        assert_eq!(v["file"]["file"]["filename"], "/x/a \"b\".ova");
    }
}
