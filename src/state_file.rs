//! State files written whole or not at all.
//!
//! Everything deorch reads back after a crash (a VM's `config.json`, which
//! re-adoption depends on; its console ports; DHCP leases; keys; caches)
//! goes through [`write`]: the bytes go to a temporary file beside the
//! target, which is fsynced, then renamed over the target, and the
//! directory is fsynced so the rename itself survives a power cut. A
//! reader sees the old file or the new one, never a part of either.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How [`write_with`] writes.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Permission bits of the new file (before the umask).
    pub mode: u32,
    /// Whether an existing file is replaced. When not, the file appears
    /// only if nothing was at the path (a hard link, not a rename), and an
    /// existing file is an `AlreadyExists` error, never clobbered.
    pub replace: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: 0o644,
            replace: true,
        }
    }
}

impl Options {
    /// Readable by the owner only (keys, secrets), replacing.
    pub fn private() -> Options {
        Options {
            mode: 0o600,
            replace: true,
        }
    }
}

/// Replace `path` with `bytes`, durably (see the module doc).
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, bytes, Options::default())
}

/// [`write`] with other permissions, or without replacing.
pub fn write_with(path: &Path, bytes: &[u8], options: Options) -> io::Result<()> {
    let dir = parent(path);
    let tmp = temp_path(path)?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(options.mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        if options.replace {
            fs::rename(&tmp, path)?;
        } else {
            fs::hard_link(&tmp, path)?;
        }
        File::open(&dir)?.sync_all()
    })();
    // After a rename there is nothing left to remove; after a link or a
    // failure the temporary name goes.
    if !options.replace || result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A hidden name beside `path`, unique per process and call, so writers in
/// other threads or processes never share a temporary file.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file path", path.display()),
        )
    })?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".tmp{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(parent(path).join(tmp))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("deorch-state-file-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// Nothing but the target is left in the directory.
    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_whole_and_leaves_no_temporary_file() {
        let d = dir("replace");
        let f = d.join("config.json");
        write(&f, b"one").unwrap();
        write(&f, b"two, longer").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two, longer");
        assert_eq!(names(&d), ["config.json"]);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn private_files_are_the_owners_and_no_replace_never_clobbers() {
        let d = dir("private");
        let f = d.join("key.wif");
        let once = Options {
            replace: false,
            ..Options::private()
        };
        write_with(&f, b"secret", once).unwrap();
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let e = write_with(&f, b"other", once).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&f).unwrap(), b"secret");
        assert_eq!(names(&d), ["key.wif"]);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let d = dir("fail");
        let f = d.join("leases.json");
        write(&f, b"old").unwrap();
        // A directory where the file should be: the rename fails.
        let blocked = d.join("blocked");
        fs::create_dir_all(blocked.join("x")).unwrap();
        assert!(write(&blocked, b"new").is_err());
        assert_eq!(fs::read(&f).unwrap(), b"old");
        assert_eq!(names(&d), ["blocked", "leases.json"]);
        assert!(write(&d.join("missing-dir/f"), b"x").is_err());
        let _ = fs::remove_dir_all(&d);
    }
}
