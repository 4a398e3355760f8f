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

/// Remove the temporary files that writers which died mid-write left
/// under `dir`, `depth` directory levels deep (0: `dir` only). A temporary
/// name carries its writer's pid; one whose process is gone is an orphan
/// that no rename will ever take, and only takes space. A live process's
/// file (this one's included) is never touched; a reused pid only keeps
/// an orphan a while longer. `.git` directories are not entered. Returns the paths
/// removed, for the log.
pub fn sweep_orphans(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    sweep_into(dir, depth, &mut removed);
    removed
}

fn sweep_into(dir: &Path, depth: usize, removed: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if depth > 0 && name != ".git" {
                sweep_into(&entry.path(), depth - 1, removed);
            }
            continue;
        }
        let Some(pid) = name.to_str().and_then(temp_writer) else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if !alive && fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
}

/// The writer's pid, if `name` is a temporary name from [`temp_path`]
/// (`.NAME.tmp<pid>.<n>`).
fn temp_writer(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp")?;
    let (pid, n) = tail.split_once('.')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
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
    fn orphans_of_dead_writers_are_swept_and_live_ones_kept() {
        let d = dir("sweep");
        let vm = d.join("vms/default/web");
        fs::create_dir_all(&vm).unwrap();
        write(&vm.join("config.json"), b"{}").unwrap();
        // A pid that cannot be running (above any pid_max).
        let dead = 4_194_304 + 17;
        let orphan = vm.join(format!(".config.json.tmp{dead}.3"));
        let root_orphan = d.join(format!(".store.snapshot.tmp{dead}.0"));
        // A live writer: the parent of this test process.
        let live = d.join(format!(
            ".leases.json.tmp{}.9",
            std::os::unix::process::parent_id()
        ));
        let unrelated = d.join(".hidden.tmpfile");
        for f in [&orphan, &root_orphan, &live, &unrelated] {
            fs::write(f, b"half").unwrap();
        }
        let too_deep = sweep_orphans(&d, 1);
        assert_eq!(too_deep, [root_orphan]);
        assert!(orphan.exists());
        let removed = sweep_orphans(&d, 3);
        assert_eq!(removed, [orphan]);
        assert!(live.exists() && unrelated.exists());
        assert_eq!(names(&vm), ["config.json"]);
        assert_eq!(temp_writer(".a.b.tmp12.0"), Some(12));
        assert_eq!(temp_writer("a.tmp12.0"), None);
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
