//! ZFS storage: a [`CowBackend`] over the `zfs`/`zpool` commands (`-H`
//! output, argument vectors, no shell). Each volume is a filesystem
//! dataset holding one raw image `disk.img`: zfs-fuse has no zvols, and the
//! same layout works on kernel OpenZFS. Tested against zfs-fuse.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::cmd::{self, CmdError};
use super::cow::{CowBackend, CowStorage, Ds};
use super::{DatasetConfig, DatasetState, DriverError, VolumeInfo};

const TIMEOUT: Duration = Duration::from_secs(120);
const IMAGE: &str = "disk.img";
/// How long a "dataset is busy" answer is retried before it is returned:
/// zfs-fuse keeps a dataset busy until it has processed the release of
/// every file a process had open there, which lags well behind the
/// process's death on a loaded machine (over 1.3 s beside a compile, and
/// seconds after a SIGKILL of a process holding an image).
const BUSY_PATIENCE: Duration = Duration::from_secs(10);
/// The first pause between two tries; each next one doubles, up to
/// [`BUSY_PAUSE_MAX`].
const BUSY_PAUSE_FIRST: Duration = Duration::from_millis(50);
const BUSY_PAUSE_MAX: Duration = Duration::from_secs(1);
/// User property marking what deorch created.
pub const MANAGED: &str = "deorch:managed";

/// ZFS storage of one node.
pub type ZfsStorage = CowStorage<ZfsBackend>;

/// The `zfs` commands below `<pool>/<root>`.
#[derive(Debug)]
pub struct ZfsBackend {
    pool: String,
    root: String,
    program: String,
    /// Whether `zfs snapshot a@s b@s` works (not on zfs-fuse).
    multi_snapshot: bool,
}

/// The storage a node starts with over `root`: opened (live volumes
/// mounted again) and every removal a crash interrupted finished (`gc`).
/// Returns it with the number of objects `gc` destroyed. The node and the
/// crash tests both recover through here.
///
/// A transient `gc` failure (a dataset still busy after a crash) does not
/// keep the node from starting: what is left is already out of the live
/// names (in `trash/`), and the `gc` after the next removal finishes it.
pub fn open_recovered(root: &str) -> Result<(ZfsStorage, usize), DriverError> {
    let mut backend = ZfsBackend::open(root)?;
    let finished = match super::cow::gc(&mut backend) {
        Ok(n) => n,
        Err(e @ DriverError::Transient { .. }) => {
            tracing::warn!(error = %e, "storage: interrupted removals left for the next gc");
            0
        }
        Err(e) => return Err(e),
    };
    Ok((CowStorage::new(backend), finished))
}

fn zfs_err(e: CmdError, op: &str, target: &str) -> DriverError {
    e.into_driver(op, target)
}

impl ZfsBackend {
    /// Use `root` (e.g. `pool0/deorch`), creating `root/vol` and
    /// `root/trash`. Fails with `PoolMissing` when the pool is not there.
    pub fn open(root: &str) -> Result<ZfsBackend, DriverError> {
        Self::open_with(root, "zfs")
    }

    /// The same with another `zfs` program (e.g. a wrapper entering a mount
    /// namespace).
    pub fn open_with(root: &str, program: &str) -> Result<ZfsBackend, DriverError> {
        let pool = root.split('/').next().unwrap_or(root).to_string();
        let b = ZfsBackend {
            pool: pool.clone(),
            root: root.trim_end_matches('/').to_string(),
            program: program.to_string(),
            multi_snapshot: true,
        };
        let mut b = b;
        if let Err(e) = b.zfs(&["list", "-H", "-o", "name", &pool]) {
            return Err(DriverError::Condition {
                op: "open".into(),
                target: pool.clone(),
                reason: "PoolMissing",
                message: format!("pool {pool} is not available: {}", e.message()),
            });
        }
        for sub in ["vol", "trash"] {
            let ds = format!("{}/{sub}", b.root);
            if b.zfs(&["list", "-H", "-o", "name", &ds]).is_err() {
                b.zfs(&["create", "-p", &ds])
                    .map_err(|e| zfs_err(e, "open", &ds))?;
            }
        }
        b.mount_live()?;
        // Whether one `zfs snapshot` takes several (zfs-fuse's does not):
        // asked of two datasets that do not exist, so nothing is made.
        let probe = |n: &str| format!("{}/vol/.deorch-probe-{n}@p", b.root);
        if let Err(CmdError::Failed(m)) = b.zfs(&["snapshot", &probe("a"), &probe("b")]) {
            b.multi_snapshot = !m.contains("too many arguments");
        }
        Ok(b)
    }

    /// Mount every live volume that is not: the pool was imported without
    /// mounting (zfs-fuse after a restart, a host without zfs-mount), or a
    /// process was killed between a rename's unmount and its remount. An
    /// unmounted volume's image is unreachable, so this runs at open, the
    /// node's recovery point.
    fn mount_live(&self) -> Result<(), DriverError> {
        let vol = format!("{}/vol", self.root);
        let out = self
            .zfs(&["list", "-H", "-r", "-o", "name,mounted", &vol])
            .map_err(|e| zfs_err(e, "open", &vol))?;
        for line in out.lines() {
            let mut f = line.split('\t');
            let (Some(name), Some(mounted)) = (f.next(), f.next()) else {
                continue;
            };
            if mounted == "no" && name.starts_with(&format!("{vol}/")) {
                if let Err(e) = self.zfs(&["mount", name]) {
                    tracing::warn!(dataset = name, error = %e.message(), "zfs mount");
                }
            }
        }
        Ok(())
    }

    fn zfs(&self, args: &[&str]) -> Result<String, CmdError> {
        cmd::run(&self.program, args, TIMEOUT).map(|o| o.stdout)
    }

    /// `zfs args...`, tried again while the dataset is busy (see
    /// [`BUSY_PATIENCE`]); any other error is returned at once, and so is
    /// the last busy one once the patience is spent, as a transient error
    /// for the reconciler's own backoff.
    fn zfs_retry(&self, op: &str, target: &str, args: &[&str]) -> Result<String, DriverError> {
        self.zfs_retry_after(op, target, args, &[])
    }

    /// [`Self::zfs_retry`], unmounting `unmount` before every try: rename
    /// and destroy need their datasets unmounted, and zfs-fuse cannot
    /// unmount from inside them, so an unmount refused because a file was
    /// still open (busy) must be retried with the command, not only once.
    fn zfs_retry_after(
        &self,
        op: &str,
        target: &str,
        args: &[&str],
        unmount: &[&str],
    ) -> Result<String, DriverError> {
        let mut backoff = Backoff::new(BUSY_PATIENCE);
        let started = std::time::Instant::now();
        let mut tries = 0;
        loop {
            for ds in unmount {
                self.unmount(ds);
            }
            tries += 1;
            let err = match self.zfs(args) {
                Ok(out) => return Ok(out),
                Err(e) => zfs_err(e, op, target),
            };
            let DriverError::Transient { message, .. } = &err else {
                return Err(err);
            };
            match backoff.next() {
                Some(pause) => {
                    tracing::debug!(op, target, pause_ms = pause.as_millis() as u64, error = %message, "zfs busy, trying again");
                    std::thread::sleep(pause);
                }
                None => {
                    return Err(DriverError::transient(
                        op,
                        target,
                        format!(
                            "{message} (still after {tries} tries in {:.1} s)",
                            started.elapsed().as_secs_f64()
                        ),
                    ))
                }
            }
        }
    }

    /// Unmount before renaming or destroying: zfs-fuse cannot unmount
    /// from inside those commands ("dataset is busy"), but can on its own.
    fn unmount(&self, full: &str) {
        if let Err(CmdError::Failed(m)) = self.zfs(&["umount", full]) {
            if !m.contains("not currently mounted") {
                tracing::debug!(dataset = full, error = %m, "zfs umount");
            }
        }
    }

    fn full(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root)
    }

    fn rel<'a>(&self, full: &'a str) -> Option<&'a str> {
        full.strip_prefix(self.root.as_str())?.strip_prefix('/')
    }

    fn mountpoint(&self, full: &str, op: &str) -> Result<PathBuf, DriverError> {
        let out = self
            .zfs(&["get", "-H", "-o", "value", "mountpoint", full])
            .map_err(|e| zfs_err(e, op, full))?;
        let mp = out.trim();
        if !mp.starts_with('/') {
            return Err(DriverError::Permanent {
                op: op.into(),
                target: full.into(),
                message: format!("dataset is not mounted (mountpoint {mp:?})"),
            });
        }
        Ok(PathBuf::from(mp))
    }

    fn image(&self, rel: &str, op: &str) -> Result<PathBuf, DriverError> {
        Ok(self.mountpoint(&self.full(rel), op)?.join(IMAGE))
    }

    fn grow(&self, rel: &str, size: u64, op: &str) -> Result<(), DriverError> {
        let img = self.image(rel, op)?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&img)
            .map_err(|e| cmd::io_error(op, rel, e))?;
        let len = f.metadata().map_err(|e| cmd::io_error(op, rel, e))?.len();
        if size > len {
            f.set_len(size).map_err(|e| cmd::io_error(op, rel, e))?;
        }
        Ok(())
    }

    fn prop(&self, full: &str, prop: &str) -> Result<String, CmdError> {
        Ok(self
            .zfs(&["get", "-H", "-p", "-o", "value", prop, full])?
            .trim()
            .to_string())
    }
}

/// Pauses between tries of a busy command: exponential from
/// [`BUSY_PAUSE_FIRST`], capped at [`BUSY_PAUSE_MAX`], and none once the
/// next pause would end past the patience.
#[derive(Debug)]
struct Backoff {
    pause: Duration,
    left: Duration,
}

impl Backoff {
    fn new(patience: Duration) -> Backoff {
        Backoff {
            pause: BUSY_PAUSE_FIRST,
            left: patience,
        }
    }

    fn next(&mut self) -> Option<Duration> {
        let pause = self.pause;
        self.left = self.left.checked_sub(pause)?;
        self.pause = (pause * 2).min(BUSY_PAUSE_MAX);
        Some(pause)
    }
}

impl CowBackend for ZfsBackend {
    fn kind(&self) -> &'static str {
        "zfs"
    }

    fn stream_kind(&self) -> Option<&'static str> {
        Some("zfs")
    }
    fn atomic_snapshots(&self) -> bool {
        self.multi_snapshot
    }

    fn send_argv(&self, ds: &str, from: Option<&str>, to: &str) -> Option<Vec<String>> {
        let mut argv = vec![self.program.clone(), "send".into()];
        if let Some(f) = from {
            argv.extend(["-i".into(), f.to_string()]);
        }
        argv.push(format!("{}@{to}", self.full(ds)));
        Some(argv)
    }

    /// `-F`: the volume is rolled back to its newest point (or, holding
    /// none, replaced) first; nothing else writes it meanwhile.
    fn recv_argv(&self, ds: &str) -> Option<Vec<String>> {
        Some(vec![
            self.program.clone(),
            "recv".into(),
            "-F".into(),
            self.full(ds),
        ])
    }

    fn rollback(&mut self, snap: &str) -> Result<(), DriverError> {
        self.zfs_retry("rollback", snap, &["rollback", "-r", &self.full(snap)])
            .map(|_| ())
    }

    fn list(&mut self) -> Result<Vec<Ds>, DriverError> {
        let fs = self
            .zfs(&[
                "list",
                "-H",
                "-r",
                "-t",
                "filesystem",
                "-o",
                "name,origin",
                &self.root,
            ])
            .map_err(|e| zfs_err(e, "list", &self.root))?;
        let mut out: BTreeMap<String, Ds> = BTreeMap::new();
        for line in fs.lines() {
            let mut f = line.split('\t');
            let (Some(name), Some(origin)) = (f.next(), f.next()) else {
                continue;
            };
            let Some(rel) = self.rel(name) else { continue };
            if !(rel.starts_with("vol/") || rel.starts_with("trash/")) {
                continue;
            }
            let origin = if origin == "-" {
                None
            } else {
                Some(self.rel(origin).unwrap_or(origin).to_string())
            };
            out.insert(
                rel.to_string(),
                Ds {
                    name: rel.to_string(),
                    origin,
                    snapshots: Vec::new(),
                },
            );
        }
        let snaps = self
            .zfs(&[
                "list",
                "-H",
                "-r",
                "-t",
                "snapshot",
                "-o",
                "name,createtxg",
                &self.root,
            ])
            .map_err(|e| zfs_err(e, "list", &self.root))?;
        for line in snaps.lines() {
            let mut f = line.split('\t');
            let (Some(name), Some(txg)) = (f.next(), f.next()) else {
                continue;
            };
            let Some((ds, snap)) = name.split_once('@') else {
                continue;
            };
            if let Some(d) = self.rel(ds).and_then(|r| out.get_mut(r)) {
                d.snapshots
                    .push((snap.to_string(), txg.trim().parse().unwrap_or(0)));
            }
        }
        Ok(out.into_values().collect())
    }

    fn create(&mut self, ds: &str, size: u64) -> Result<(), DriverError> {
        let full = self.full(ds);
        self.zfs(&["create", &full])
            .map_err(|e| zfs_err(e, "create", ds))?;
        if let Err(e) = self.grow(ds, size, "create") {
            let _ = self.zfs_retry_after("create", ds, &["destroy", &full], &[&full]);
            return Err(e);
        }
        Ok(())
    }

    fn import(&mut self, ds: &str, path: &str, format: Option<&str>) -> Result<(), DriverError> {
        let full = self.full(ds);
        self.zfs(&["create", &full])
            .map_err(|e| zfs_err(e, "import", ds))?;
        let result = self.image(ds, "import").and_then(|img| {
            let img = img.to_string_lossy().to_string();
            let mut args = vec!["convert", "-O", "raw"];
            if let Some(f) = format {
                args.extend(["-f", f]);
            }
            args.extend([path, img.as_str()]);
            cmd::run("qemu-img", &args, TIMEOUT)
                .map(|_| ())
                .map_err(|e| e.into_driver("import", path))
        });
        if result.is_err() {
            let _ = self.zfs_retry_after("import", ds, &["destroy", &full], &[&full]);
        }
        result
    }

    fn snapshot(&mut self, snaps: &[String]) -> Result<(), DriverError> {
        let full: Vec<String> = snaps.iter().map(|s| self.full(s)).collect();
        let root = format!("{}/vol/", self.root);
        let err = move |e: CmdError, s: &str| {
            let target = s.split_once('@').map(|x| x.0).unwrap_or(s);
            zfs_err(
                e,
                "clone",
                target.strip_prefix(root.as_str()).unwrap_or(target),
            )
        };
        if full.len() > 1 && self.multi_snapshot {
            let mut args = vec!["snapshot"];
            args.extend(full.iter().map(String::as_str));
            match self.zfs(&args) {
                Ok(_) => return Ok(()),
                Err(CmdError::Failed(m)) if m.contains("too many arguments") => {
                    self.multi_snapshot = false;
                }
                Err(e) => return Err(err(e, &full[0])),
            }
        }
        // Older zfs (zfs-fuse) takes one snapshot per command: still one
        // instant per disk, but not across disks; issued at once, they are
        // as close together as the pool allows.
        let this = &*self;
        let results = std::thread::scope(|sc| {
            let running: Vec<_> = full
                .iter()
                .map(|s| sc.spawn(move || this.zfs(&["snapshot", s]).map_err(|e| (e, s))))
                .collect();
            running
                .into_iter()
                .map(|h| h.join().expect("zfs snapshot thread"))
                .collect::<Vec<_>>()
        });
        for r in results {
            r.map_err(|(e, s)| err(e, s))?;
        }
        Ok(())
    }

    fn clone_all(&mut self, clones: &[(String, String, Option<u64>)]) -> Result<(), DriverError> {
        // Each `zfs clone` waits for a transaction group to commit; issued
        // at once, the clones of one replica share commits instead of
        // queueing behind each other (the replica latency under load).
        let this = &*self;
        let results = std::thread::scope(|sc| {
            let running: Vec<_> = clones
                .iter()
                .map(|(snap, ds, _)| {
                    sc.spawn(move || {
                        this.zfs(&["clone", &this.full(snap), &this.full(ds)])
                            .map_err(|e| zfs_err(e, "clone", ds.strip_prefix("vol/").unwrap_or(ds)))
                    })
                })
                .collect();
            running
                .into_iter()
                .map(|h| h.join().expect("zfs clone thread"))
                .collect::<Vec<_>>()
        });
        for r in results {
            r?;
        }
        for (_, ds, size) in clones {
            if let Some(size) = size {
                self.grow(ds, *size, "clone")?;
            }
        }
        Ok(())
    }

    fn clone(&mut self, snap: &str, ds: &str, size: Option<u64>) -> Result<(), DriverError> {
        self.zfs(&["clone", &self.full(snap), &self.full(ds)])
            .map_err(|e| zfs_err(e, "clone", ds.strip_prefix("vol/").unwrap_or(ds)))?;
        if let Some(size) = size {
            self.grow(ds, size, "clone")?;
        }
        Ok(())
    }

    fn promote(&mut self, ds: &str) -> Result<(), DriverError> {
        self.zfs_retry("promote", ds, &["promote", &self.full(ds)])
            .map(|_| ())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), DriverError> {
        let (f, t) = (self.full(from), self.full(to));
        // `zfs rename` also unmounts and remounts the clones of the
        // dataset's snapshots, which zfs-fuse cannot do from inside it.
        let prefix = format!("{from}@");
        let clones: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|d| d.origin.as_deref().is_some_and(|o| o.starts_with(&prefix)))
            .map(|d| self.full(&d.name))
            .collect();
        let mut unmount: Vec<&str> = clones.iter().map(String::as_str).collect();
        unmount.push(&f);
        let result = self.zfs_retry_after("rename", from, &["rename", &f, &t], &unmount);
        for c in clones.iter().filter(|c| c.contains("/vol/")) {
            let _ = self.zfs(&["mount", c]);
        }
        // A live volume is mounted again (its image must be reachable);
        // trash stays unmounted. On failure, the original is remounted.
        let mounted = if result.is_ok() { &t } else { &f };
        if result.is_err() || to.starts_with("vol/") {
            let _ = self.zfs(&["mount", mounted]);
        }
        result.map(|_| ())
    }

    fn rename_snapshot(&mut self, snap: &str, to: &str) -> Result<(), DriverError> {
        let ds = snap.split_once('@').map_or(snap, |x| x.0);
        let to = format!("{}@{to}", self.full(ds));
        self.zfs_retry("rename", snap, &["rename", &self.full(snap), &to])
            .map(|_| ())
    }

    fn destroy(&mut self, name: &str) -> Result<(), DriverError> {
        let full = self.full(name);
        if name.contains('@') {
            self.zfs_retry("destroy", name, &["destroy", &full])
        } else {
            self.zfs_retry_after("destroy", name, &["destroy", "-r", &full], &[&full])
        }
        .map(|_| ())
    }

    fn exists(&mut self, ds: &str) -> Result<bool, DriverError> {
        match self.zfs(&["list", "-H", "-o", "name", &self.full(ds)]) {
            Ok(_) => Ok(true),
            Err(CmdError::Failed(m)) if m.contains("does not exist") => Ok(false),
            Err(e) => Err(zfs_err(e, "exists", ds)),
        }
    }

    fn vol_names(&mut self) -> Result<Vec<String>, DriverError> {
        let root = format!("{}/vol", self.root);
        let out = self
            .zfs(&[
                "list",
                "-H",
                "-r",
                "-d",
                "2",
                "-t",
                "filesystem,snapshot",
                "-o",
                "name",
                &root,
            ])
            .map_err(|e| zfs_err(e, "list", &root))?;
        Ok(out
            .lines()
            .filter_map(|l| self.rel(l.trim()).map(str::to_string))
            .collect())
    }

    fn info(&mut self, ds: &str) -> Result<VolumeInfo, DriverError> {
        let path = self.image(ds, "volume")?;
        let size = std::fs::metadata(&path)
            .map_err(|e| DriverError::Condition {
                op: "volume".into(),
                target: ds.into(),
                reason: "VolumeMissing",
                message: format!("{}: {e}", path.display()),
            })?
            .len();
        Ok(VolumeInfo {
            path,
            format: "raw",
            size,
        })
    }

    fn capacity(&mut self) -> Result<(u64, u64), DriverError> {
        let used = self.prop(&self.pool, "used");
        let avail = self.prop(&self.pool, "available");
        match (used, avail) {
            (Ok(u), Ok(a)) => {
                let (u, a): (u64, u64) = (u.parse().unwrap_or(0), a.parse().unwrap_or(0));
                Ok((u + a, a))
            }
            (Err(e), _) | (_, Err(e)) => Err(zfs_err(e, "capacity", &self.pool)),
        }
    }

    fn ensure_dataset(&mut self, config: &DatasetConfig) -> Result<DatasetState, DriverError> {
        let pool = config.pool.as_deref().unwrap_or(&self.pool);
        let full = format!("{pool}/{}", config.path);
        let exists = self.zfs(&["list", "-H", "-o", "name", &full]).is_ok();
        if exists {
            let managed = self.prop(&full, MANAGED).unwrap_or_default();
            if managed != "yes" {
                return Err(DriverError::Condition {
                    op: "dataset".into(),
                    target: full.clone(),
                    reason: "NameCollision",
                    message: format!(
                        "{full} exists and was not created by deorch; it is left untouched"
                    ),
                });
            }
            for (k, v) in &config.properties {
                let current = self.prop(&full, k).unwrap_or_default();
                if &current != v {
                    let kv = format!("{k}={v}");
                    self.zfs(&["set", &kv, &full])
                        .map_err(|e| zfs_err(e, "set", &kv))?;
                }
            }
        } else {
            let mut args: Vec<String> = vec!["create".into(), "-p".into()];
            args.extend(["-o".into(), format!("{MANAGED}=yes")]);
            for (k, v) in &config.properties {
                args.extend(["-o".into(), format!("{k}={v}")]);
            }
            args.push(full.clone());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.zfs(&args).map_err(|e| zfs_err(e, "dataset", &full))?;
        }
        let num = |p: &str| {
            self.prop(&full, p)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(DatasetState {
            used: num("used"),
            available: num("available"),
            mountpoint: self.prop(&full, "mountpoint").ok(),
            unsupported: Vec::new(),
        })
    }

    fn destroy_dataset(&mut self, config: &DatasetConfig) -> Result<(), DriverError> {
        let pool = config.pool.as_deref().unwrap_or(&self.pool);
        let full = format!("{pool}/{}", config.path);
        if self.zfs(&["list", "-H", "-o", "name", &full]).is_err() {
            return Ok(());
        }
        if self.prop(&full, MANAGED).unwrap_or_default() != "yes" {
            return Err(DriverError::Condition {
                op: "dataset".into(),
                target: full.clone(),
                reason: "NameCollision",
                message: format!("{full} was not created by deorch; not destroyed"),
            });
        }
        self.zfs_retry_after("destroy", &full, &["destroy", "-r", &full], &[&full])
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_backoff_doubles_to_its_cap_and_stops_within_the_patience() {
        let mut b = Backoff::new(BUSY_PATIENCE);
        let pauses: Vec<Duration> = std::iter::from_fn(|| b.next()).collect();
        assert_eq!(pauses[0], BUSY_PAUSE_FIRST);
        assert_eq!(pauses[1], BUSY_PAUSE_FIRST * 2);
        assert!(pauses.iter().all(|p| *p <= BUSY_PAUSE_MAX));
        assert!(pauses.contains(&BUSY_PAUSE_MAX), "{pauses:?}");
        let total: Duration = pauses.iter().sum();
        assert!(total <= BUSY_PATIENCE, "{total:?}");
        // Within one capped pause of the patience: it is not given up early.
        assert!(total + BUSY_PAUSE_MAX > BUSY_PATIENCE, "{total:?}");
        assert_eq!(Backoff::new(Duration::from_millis(10)).next(), None);
    }
}
