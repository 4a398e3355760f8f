//! Copy-on-write volumes over a ZFS-like backend (datasets, snapshots,
//! clones, `promote`), with transparent interdependent volume removal.
//!
//! The same algorithm runs over real ZFS ([`super::zfs`]) and over the
//! in-memory backend of the fake ([`super::fake::MemBackend`]), which keeps ZFS's rules
//! (a dataset or snapshot with dependent clones cannot be destroyed) so
//! that the logic and its crash behaviour are tested without a pool.
//!
//! Layout below the driver's root: live volumes are `vol/<name>`; a
//! destroyed volume is first *renamed* to `trash/<name>.<nonce>` (one
//! atomic, durable step that frees the name at once), then [`gc`] finishes
//! it: a trashed dataset without clones is destroyed; one whose snapshots
//! have live clones hands them over with `zfs promote` of the clone of its
//! newest cloned snapshot, after which it has none and is destroyed. A
//! snapshot nobody is cloned from is destroyed. Every step leaves a state
//! from which `gc` (run after each removal and at node start) finishes, so
//! a crash at any point loses nothing and leaks nothing. Dependencies come
//! from the `origin` property only (zfs-fuse has no `clones` property).
//!
//! A replica's volumes are made lazily ([`Storage::capture`]): a *lazy
//! volume* `V` is the snapshot `<source>@lazy.V` of the disk it captured,
//! and nothing else. It is listed and exists like a dataset; the first
//! [`Storage::volume`], clone, revert or rename *materializes* it (clone
//! `vol/V` from the snapshot, then rename the snapshot to an ordinary
//! `s<nonce>`, which stays as the clone's origin). Destroying it renames the
//! snapshot the same way (then `gc` sweeps it). `gc` finishes a
//! materialization a crash cut short (a lazy snapshot whose `vol/V`
//! exists is renamed) and materializes the lazy volumes of a trashed
//! source before anything else, so removing a VM never takes its replicas
//! with it. See docs/ALGORITHMS.md.
//!
//! These names are the backend's *virtual* ones: a backend may keep a
//! volume elsewhere as long as it lists and takes it by them. The zfs one
//! keeps the disks of one VM ([`Storage::group`]) below one parent
//! dataset, snapshots them with one `zfs snapshot -r` (one instant, no
//! guest pause: [`Storage::atomic_points_for`]) and reports a lazy
//! capture's snapshots under their `lazy.` names ([`super::zfs`]); the
//! algorithm here sees `vol/`, `trash/` and [`CowBackend::tidy`] only.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use super::{
    BoxFuture, CloneRequest, DatasetConfig, DatasetState, DriverError, Storage, VolumeInfo,
};

/// A dataset as the backend lists it (names relative to the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ds {
    /// `vol/<name>` or `trash/<name>.<nonce>`.
    pub name: String,
    /// `dataset@snapshot` it was cloned from.
    pub origin: Option<String>,
    /// Its snapshots: (short name, creation order).
    pub snapshots: Vec<(String, u64)>,
}

/// The primitive operations of a ZFS-like store. Names are relative to the
/// driver's root; snapshots are `dataset@name`.
pub trait CowBackend: Send + 'static {
    /// Whether `import` reads the image file it is given (the in-memory
    /// backend takes any path).
    const READS_IMAGE_FILES: bool = true;
    /// Driver name.
    fn kind(&self) -> &'static str;
    /// Every dataset below `vol/` and `trash/`.
    fn list(&mut self) -> Result<Vec<Ds>, DriverError>;
    /// A dataset holding an empty image of `size` bytes.
    fn create(&mut self, ds: &str, size: u64) -> Result<(), DriverError>;
    /// A dataset holding a converted copy of an image file.
    fn import(&mut self, ds: &str, path: &str, format: Option<&str>) -> Result<(), DriverError>;
    /// Snapshots taken atomically together.
    fn snapshot(&mut self, snaps: &[String]) -> Result<(), DriverError>;
    /// A writable clone of a snapshot, its image grown to `size`.
    fn clone(&mut self, snap: &str, ds: &str, size: Option<u64>) -> Result<(), DriverError>;
    /// Several clones `(snapshot, dataset, size)`, in any order; a backend
    /// may run them at once. Stops at (and returns) the first failure.
    fn clone_all(&mut self, clones: &[(String, String, Option<u64>)]) -> Result<(), DriverError> {
        for (snap, ds, size) in clones {
            self.clone(snap, ds, *size)?;
        }
        Ok(())
    }
    /// `zfs promote`.
    fn promote(&mut self, ds: &str) -> Result<(), DriverError>;
    /// Rename a dataset.
    fn rename(&mut self, from: &str, to: &str) -> Result<(), DriverError>;
    /// Rename snapshot `ds@a` to `ds@b` (`to` is the short name `b`); its
    /// clones follow.
    fn rename_snapshot(&mut self, snap: &str, to: &str) -> Result<(), DriverError>;
    /// Destroy a dataset (with its snapshots) or a snapshot; fails while
    /// clones depend on it.
    fn destroy(&mut self, name: &str) -> Result<(), DriverError>;
    /// Whether a dataset exists.
    fn exists(&mut self, ds: &str) -> Result<bool, DriverError>;
    /// Every name directly below `vol/` (datasets and their snapshots,
    /// `vol/<name>` and `vol/<name>@<snapshot>`), in one listing: what
    /// [`exists_any`] looks through.
    fn vol_names(&mut self) -> Result<Vec<String>, DriverError> {
        let mut out = Vec::new();
        for d in self
            .list()?
            .into_iter()
            .filter(|d| d.name.starts_with("vol/"))
        {
            out.extend(d.snapshots.iter().map(|(s, _)| format!("{}@{s}", d.name)));
            out.push(d.name);
        }
        Ok(out)
    }
    /// The image of a dataset.
    fn info(&mut self, ds: &str) -> Result<VolumeInfo, DriverError>;
    /// (total, free) bytes.
    fn capacity(&mut self) -> Result<(u64, u64), DriverError>;
    /// See [`Storage::ensure_dataset`].
    fn ensure_dataset(&mut self, config: &DatasetConfig) -> Result<DatasetState, DriverError>;
    /// See [`Storage::destroy_dataset`].
    fn destroy_dataset(&mut self, config: &DatasetConfig) -> Result<(), DriverError>;
    /// See [`Storage::stream_kind`].
    fn stream_kind(&self) -> Option<&'static str> {
        None
    }
    /// See [`Storage::atomic_points`].
    fn atomic_snapshots(&self) -> bool {
        false
    }
    /// The backend's groups of datasets snapshotted in one command, asked
    /// without the backend's lock (see [`SnapshotSets`]); `None`: none.
    fn snapshot_sets(&self) -> Option<Arc<dyn SnapshotSets>> {
        None
    }
    /// Remove what the backend keeps beside the datasets and no longer
    /// needs (zfs: empty groups, their spent snapshots); called at the end
    /// of every [`gc`]. Best effort: what is left goes at the next one.
    fn tidy(&mut self) {}
    /// `send_command` for dataset `ds` (snapshot names, not tags).
    fn send_argv(&self, ds: &str, from: Option<&str>, to: &str) -> Option<Vec<String>> {
        let _ = (ds, from, to);
        None
    }
    /// `receive_command` for dataset `ds`.
    fn recv_argv(&self, ds: &str) -> Option<Vec<String>> {
        let _ = ds;
        None
    }
    /// Roll a dataset back to snapshot `snap` (`ds@name`), destroying
    /// the later ones.
    fn rollback(&mut self, snap: &str) -> Result<(), DriverError> {
        Err(DriverError::permanent(
            "rollback",
            snap,
            format!("the {} storage cannot roll back", self.kind()),
        ))
    }
}

/// Groups of datasets that a backend snapshots in one command
/// ([`Storage::group`], [`Storage::atomic_points_for`]). Shared with the
/// backend, answered from memory without the backend's lock (a long
/// command holds that).
pub trait SnapshotSets: Send + Sync {
    /// Make the next volumes of these names in `group` (an intent).
    fn group(&self, group: &str, volumes: &[String]);
    /// Whether one command snapshots exactly `volumes` at one instant.
    fn atomic(&self, volumes: &[String]) -> bool;
}

/// Volume names: what every backend can hold as a file or dataset name.
pub fn check_volume_name(op: &str, volume: &str) -> Result<(), DriverError> {
    let ok = !volume.is_empty()
        && volume.len() <= 200
        && !volume.starts_with('.')
        && volume
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(DriverError::Permanent {
            op: op.into(),
            target: volume.into(),
            message: "volume names use letters, digits, '-', '_' and '.' only".into(),
        })
    }
}

/// A name part unique on this node: the time in nanoseconds, in hex.
pub fn nonce() -> String {
    format!("{:x}", crate::clock::now_nanos())
}

fn vol(name: &str) -> String {
    format!("vol/{name}")
}

/// Snapshot names of lazy volumes begin with this.
pub(crate) const LAZY: &str = "lazy.";

/// Every lazy volume: (volume, its snapshot `ds@lazy.<volume>`).
fn lazies(all: &[Ds]) -> Vec<(String, String)> {
    all.iter()
        .flat_map(|d| {
            d.snapshots.iter().filter_map(move |(s, _)| {
                s.strip_prefix(LAZY)
                    .map(|v| (v.to_string(), format!("{}@{s}", d.name)))
            })
        })
        .collect()
}

/// The snapshot holding lazy volume `volume`, if it is one.
fn lazy_snapshot<B: CowBackend + ?Sized>(
    b: &mut B,
    volume: &str,
) -> Result<Option<String>, DriverError> {
    Ok(lazies(&b.list()?)
        .into_iter()
        .find(|(v, _)| v == volume)
        .map(|x| x.1))
}

/// Give a lazy volume's snapshot an ordinary name: it no longer makes a
/// volume (it stays while clones have it as origin; `gc` sweeps it after).
fn retire<B: CowBackend + ?Sized>(b: &mut B, snap: &str) -> Result<(), DriverError> {
    b.rename_snapshot(snap, &format!("s{}", nonce()))
}

/// Make lazy volume `volume` a dataset (`vol/<volume>`). Returns whether it
/// was lazy. Each step leaves a state `gc` or a second call finishes.
fn materialize<B: CowBackend + ?Sized>(b: &mut B, volume: &str) -> Result<bool, DriverError> {
    let Some(snap) = lazy_snapshot(b, volume)? else {
        return Ok(false);
    };
    if !b.exists(&vol(volume))? {
        b.clone(&snap, &vol(volume), None)?;
    }
    retire(b, &snap)?;
    Ok(true)
}

/// Every live volume: the datasets below `vol/` and the lazy volumes.
pub fn volume_names<B: CowBackend + ?Sized>(b: &mut B) -> Result<BTreeSet<String>, DriverError> {
    let all = b.list()?;
    let mut names: BTreeSet<String> = all
        .iter()
        .filter_map(|d| d.name.strip_prefix("vol/").map(str::to_string))
        .collect();
    names.extend(lazies(&all).into_iter().map(|x| x.0));
    Ok(names)
}

/// Whether `volume` exists, as a dataset or lazily.
fn exists_any<B: CowBackend + ?Sized>(b: &mut B, volume: &str) -> Result<bool, DriverError> {
    let (ds, lazy) = (vol(volume), format!("@{LAZY}{volume}"));
    Ok(b.vol_names()?
        .iter()
        .any(|n| *n == ds || (n.starts_with("vol/") && n.ends_with(&lazy))))
}

/// Finish every pending removal. Returns the number of objects destroyed.
pub fn gc<B: CowBackend + ?Sized>(b: &mut B) -> Result<usize, DriverError> {
    let mut destroyed = 0;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let all = b.list()?;
        if rounds > 4 * (all.len() + 4) {
            return Err(DriverError::Permanent {
                op: "gc".into(),
                target: "trash".into(),
                message: "removal made no progress".into(),
            });
        }
        let clones_of = |d: &str| -> Vec<&Ds> {
            all.iter()
                .filter(|x| {
                    x.origin
                        .as_deref()
                        .and_then(|o| o.split_once('@'))
                        .is_some_and(|(ds, _)| ds == d)
                })
                .collect()
        };
        let mut step = None;
        // Lazy volumes first: one whose dataset exists was materialized
        // (its snapshot keeps the lazy name only if a crash came between);
        // one on a trashed source is materialized before the source goes.
        for (volume, snap) in lazies(&all) {
            let made = all.iter().any(|d| d.name == vol(&volume));
            if made {
                step = Some(Step::Retire(snap));
                break;
            }
            if snap.starts_with("trash/") {
                step = Some(Step::Materialize(volume));
                break;
            }
        }
        for d in all
            .iter()
            .filter(|d| step.is_none() && d.name.starts_with("trash/"))
        {
            let clones = clones_of(&d.name);
            if clones.is_empty() {
                step = Some(Step::Destroy(d.name.clone()));
                break;
            }
            // Trashed clones go first (they are leaves or will become so);
            // a live clone takes the snapshots over.
            let txg = |c: &Ds| {
                let snap = c
                    .origin
                    .as_deref()
                    .and_then(|o| o.split_once('@'))
                    .map(|x| x.1);
                d.snapshots
                    .iter()
                    .find(|(n, _)| Some(n.as_str()) == snap)
                    .map(|s| s.1)
                    .unwrap_or(0)
            };
            if let Some(c) = clones
                .iter()
                .filter(|c| !c.name.starts_with("trash/"))
                .max_by_key(|c| txg(c))
            {
                step = Some(Step::Promote(c.name.clone()));
                break;
            }
        }
        match step {
            Some(Step::Destroy(name)) => {
                b.destroy(&name)?;
                destroyed += 1;
                continue;
            }
            Some(Step::Promote(name)) => {
                b.promote(&name)?;
                continue;
            }
            Some(Step::Retire(snap)) => {
                retire(b, &snap)?;
                continue;
            }
            Some(Step::Materialize(volume)) => {
                materialize(b, &volume)?;
                continue;
            }
            None => {}
        }
        // Snapshots nobody is cloned from are spent, but for transfer
        // points (their taker drops them) and lazy volumes.
        let origins: BTreeSet<&str> = all.iter().filter_map(|d| d.origin.as_deref()).collect();
        let mut any = false;
        for d in &all {
            for (s, _) in &d.snapshots {
                if s.starts_with(super::TRANSFER_POINT) || s.starts_with(LAZY) {
                    continue;
                }
                let full = format!("{}@{s}", d.name);
                if !origins.contains(full.as_str()) {
                    b.destroy(&full)?;
                    destroyed += 1;
                    any = true;
                }
            }
        }
        if !any {
            b.tidy();
            return Ok(destroyed);
        }
    }
}

enum Step {
    Destroy(String),
    Promote(String),
    /// A lazy volume's snapshot, given an ordinary name.
    Retire(String),
    /// A lazy volume made a dataset.
    Materialize(String),
}

/// Volumes on a [`CowBackend`]. Operations are serialised (one lock) and
/// run on the blocking pool.
pub struct CowStorage<B: CowBackend> {
    backend: Arc<Mutex<B>>,
    kind: &'static str,
    streams: Option<&'static str>,
    atomic: bool,
    sets: Option<Arc<dyn SnapshotSets>>,
}

impl<B: CowBackend> CowStorage<B> {
    /// Wrap a backend.
    pub fn new(backend: B) -> Self {
        CowStorage {
            kind: backend.kind(),
            streams: backend.stream_kind(),
            atomic: backend.atomic_snapshots(),
            sets: backend.snapshot_sets(),
            backend: Arc::new(Mutex::new(backend)),
        }
    }

    /// Whether the snapshots of `sources` are one instant (one command).
    fn atomic_for(&self, sources: &[&str]) -> bool {
        let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
        self.atomic || self.sets.as_ref().is_some_and(|s| s.atomic(&sources))
    }

    /// Run `f` with the backend on the blocking pool.
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut B) -> Result<T, DriverError> + Send + 'static,
    ) -> Result<T, DriverError> {
        blocking(&self.backend, f).await
    }

    /// The same, synchronously (tests and benchmarks).
    pub fn with_sync<T>(&self, f: impl FnOnce(&mut B) -> T) -> T {
        let mut b = self.backend.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut b)
    }
}

/// Run `f` on the state behind `lock`, on the blocking pool: storage tools
/// are synchronous commands, and one lock serialises a node's changes.
pub async fn blocking<S: Send + 'static, T: Send + 'static>(
    lock: &Arc<Mutex<S>>,
    f: impl FnOnce(&mut S) -> Result<T, DriverError> + Send + 'static,
) -> Result<T, DriverError> {
    let lock = lock.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    })
    .await
    .map_err(|e| DriverError::Transient {
        op: "storage".into(),
        target: String::new(),
        message: e.to_string(),
    })?
}

/// A clone source `volume@point`: that transfer point as it is (a FASTR
/// copy point).
fn point(r: &CloneRequest) -> Option<(&str, &str)> {
    crate::model::names::parse_at_point(&r.source)
}

/// Clones of `requests`' sources, the plain ones from a snapshot of all
/// of them taken now. A source that is a lazy volume is materialized
/// first (found when its snapshot fails: no check up front, every
/// command saved is latency saved under load).
fn clone_now<B: CowBackend + ?Sized>(
    b: &mut B,
    requests: &[CloneRequest],
) -> Result<(), DriverError> {
    for r in requests {
        check_volume_name("clone", &r.volume)?;
        check_volume_name("clone", point(r).map_or(r.source.as_str(), |p| p.0))?;
    }
    let snap = format!("s{}", nonce());
    let sources: BTreeSet<&str> = requests
        .iter()
        .filter(|r| point(r).is_none())
        .map(|r| r.source.as_str())
        .collect();
    let snaps: Vec<String> = sources
        .iter()
        .map(|s| format!("{}@{snap}", vol(s)))
        .collect();
    if !snaps.is_empty() {
        snapshot_materializing(b, &snaps, &sources)?;
    }
    // No existence checks of the new names up front: the backend refuses
    // a name a dataset holds (NameCollision) itself. A lazy volume's name
    // is not looked for here: callers ask `exists` (which sees lazy
    // volumes) before they make a volume.
    let clones: Vec<_> = requests
        .iter()
        .map(|r| {
            let from = match point(r) {
                Some((v, p)) => format!("{}@{}{p}", vol(v), super::TRANSFER_POINT),
                None => format!("{}@{snap}", vol(&r.source)),
            };
            (from, vol(&r.volume), r.size)
        })
        .collect();
    b.clone_all(&clones)
}

/// `b.snapshot(snaps)` of `sources`; when one is missing, each of them
/// that is a lazy volume is materialized and the snapshots taken again.
fn snapshot_materializing<B: CowBackend + ?Sized>(
    b: &mut B,
    snaps: &[String],
    sources: &BTreeSet<&str>,
) -> Result<(), DriverError> {
    match b.snapshot(snaps) {
        Err(e @ DriverError::NotFound { .. }) => {
            // Where the snapshots are taken one per command, some may have
            // been: they go, so that all are taken again at one instant
            // (and no lazy volume is left half made).
            let all = b.list()?;
            let taken: Vec<&String> = snaps
                .iter()
                .filter(|s| {
                    s.split_once('@').is_some_and(|(d, n)| {
                        all.iter()
                            .any(|x| x.name == d && x.snapshots.iter().any(|y| y.0 == n))
                    })
                })
                .collect();
            for s in taken {
                b.destroy(s)?;
            }
            let mut any = false;
            for s in sources {
                any |= materialize(b, s)?;
            }
            if !any {
                return Err(e);
            }
            b.snapshot(snaps)
        }
        r => r,
    }
}

/// A replica of `requests`' sources: their snapshots only, taken together,
/// each named after its new volume (`vol/<source>@lazy.<volume>`). A
/// request that cannot be lazy (a transfer point as source, a size to
/// grow to, a name too long for a snapshot) makes the whole capture
/// [`clone_now`].
fn capture<B: CowBackend + ?Sized>(
    b: &mut B,
    requests: &[CloneRequest],
) -> Result<(), DriverError> {
    for r in requests {
        check_volume_name("capture", &r.volume)?;
        check_volume_name("capture", point(r).map_or(r.source.as_str(), |p| p.0))?;
        if r.volume == r.source {
            return Err(collision("capture", &r.volume));
        }
    }
    let lazy = |r: &CloneRequest| {
        point(r).is_none()
            && r.size.is_none()
            && vol(&r.source).len() + 1 + LAZY.len() + r.volume.len() <= MAX_NAME
    };
    let sources: BTreeSet<&str> = requests.iter().map(|r| r.source.as_str()).collect();
    if !requests.iter().all(lazy) || sources.len() != requests.len() {
        return clone_now(b, requests);
    }
    let snaps: Vec<String> = requests
        .iter()
        .map(|r| format!("{}@{LAZY}{}", vol(&r.source), r.volume))
        .collect();
    snapshot_materializing(b, &snaps, &sources)
}

/// The longest snapshot name below the driver's root kept lazy (ZFS
/// allows 255 bytes with the pool and root before it).
const MAX_NAME: usize = 160;

/// A volume name that is already taken.
pub fn collision(op: &str, volume: &str) -> DriverError {
    DriverError::Condition {
        op: op.into(),
        target: volume.into(),
        reason: "NameCollision",
        message: format!("volume {volume} already exists"),
    }
}

impl<B: CowBackend> Storage for CowStorage<B> {
    fn name(&self) -> &'static str {
        // Not through the lock: a long zfs command holds it.
        self.kind
    }
    fn has_image(&self, path: &str) -> bool {
        !B::READS_IMAGE_FILES || std::path::Path::new(path).exists()
    }
    fn create<'a>(&'a self, volume: &'a str, size: u64) -> BoxFuture<'a, Result<(), DriverError>> {
        let volume = volume.to_string();
        Box::pin(self.with(move |b| {
            check_volume_name("create", &volume)?;
            if exists_any(b, &volume)? {
                return Err(collision("create", &volume));
            }
            b.create(&vol(&volume), size)
        }))
    }
    fn import<'a>(
        &'a self,
        volume: &'a str,
        path: &'a str,
        format: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let (volume, path, format) = (
            volume.to_string(),
            path.to_string(),
            format.map(str::to_string),
        );
        Box::pin(self.with(move |b| {
            check_volume_name("import", &volume)?;
            if exists_any(b, &volume)? {
                return Err(collision("import", &volume));
            }
            b.import(&vol(&volume), &path, format.as_deref())
        }))
    }
    fn clone_volumes<'a>(
        &'a self,
        requests: &'a [CloneRequest],
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let requests = requests.to_vec();
        Box::pin(self.with(move |b| clone_now(b, &requests)))
    }
    fn clone_volumes_live<'a>(
        &'a self,
        requests: &'a [CloneRequest],
        live: &'a super::LiveDisks,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        // As [`Storage::capture`]: one instant for a running VM's disks.
        let sources: Vec<&str> = requests.iter().map(|r| r.source.as_str()).collect();
        let cloned = self.clone_volumes(requests);
        let plain: Vec<&str> = requests
            .iter()
            .filter(|r| point(r).is_none())
            .map(|r| r.source.as_str())
            .collect();
        if self.atomic_for(&plain) {
            return cloned;
        }
        Box::pin(async move { live.paused_for(&sources, cloned).await })
    }
    fn capture<'a>(
        &'a self,
        requests: &'a [CloneRequest],
        live: &'a super::LiveDisks,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        // A snapshot of a running VM's disk is crash-consistent (what a
        // power cut would leave). Several disks are one instant only where
        // one command snapshots them all; elsewhere the VM is paused for
        // them.
        let sources: Vec<&str> = requests.iter().map(|r| r.source.as_str()).collect();
        let owned = requests.to_vec();
        let taken = self.with(move |b| capture(b, &owned));
        if self.atomic_for(&sources) {
            return Box::pin(taken);
        }
        Box::pin(async move { live.paused_for(&sources, taken).await })
    }
    fn destroy<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        let volume = volume.to_string();
        Box::pin(self.with(move |b| {
            check_volume_name("destroy", &volume)?;
            // The lazy snapshot first: were the dataset trashed first, a
            // crash between would leave the snapshot a live volume again.
            if let Some(snap) = lazy_snapshot(b, &volume)? {
                retire(b, &snap)?;
            }
            if b.exists(&vol(&volume))? {
                b.rename(&vol(&volume), &format!("trash/{volume}.{}", nonce()))?;
            }
            gc(b).map(|_| ())
        }))
    }
    fn rename<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        let (from, to) = (from.to_string(), to.to_string());
        Box::pin(self.with(move |b| {
            check_volume_name("rename", &to)?;
            if exists_any(b, &to)? {
                return Err(collision("rename", &to));
            }
            if !b.exists(&vol(&from))? {
                materialize(b, &from)?;
            }
            b.rename(&vol(&from), &vol(&to))
        }))
    }
    fn exists<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<bool, DriverError>> {
        let volume = volume.to_string();
        Box::pin(self.with(move |b| {
            check_volume_name("exists", &volume)?;
            exists_any(b, &volume)
        }))
    }
    fn volume<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<VolumeInfo, DriverError>> {
        let volume = volume.to_string();
        Box::pin(self.with(move |b| match b.info(&vol(&volume)) {
            // Opened for the first time: a lazy volume becomes a dataset.
            Err(e) => match materialize(b, &volume)? {
                true => b.info(&vol(&volume)),
                false => Err(e),
            },
            ok => ok,
        }))
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<String>, DriverError>> {
        Box::pin(self.with(|b| Ok(volume_names(b)?.into_iter().collect())))
    }
    fn gc(&self) -> BoxFuture<'_, Result<usize, DriverError>> {
        Box::pin(self.with(|b| gc(b)))
    }
    fn stream_kind(&self) -> Option<&'static str> {
        self.streams
    }
    fn atomic_points(&self) -> bool {
        self.atomic
    }
    fn atomic_points_for(&self, volumes: &[String]) -> bool {
        self.atomic || self.sets.as_ref().is_some_and(|s| s.atomic(volumes))
    }
    fn group(&self, group: &str, volumes: &[String]) {
        if let Some(s) = &self.sets {
            s.group(group, volumes);
        }
    }
    fn mark_points<'a>(
        &'a self,
        volumes: &'a [String],
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let snaps: Vec<String> = volumes
            .iter()
            .map(|v| format!("{}@{}", vol(v), super::transfer_point(tag)))
            .collect();
        Box::pin(self.with(move |b| b.snapshot(&snaps)))
    }
    fn send_command<'a>(
        &'a self,
        volume: &'a str,
        from: Option<&'a str>,
        to: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        let ds = vol(volume);
        let from = from.map(super::transfer_point);
        let to = super::transfer_point(to);
        let kind = self.kind;
        Box::pin(self.with(move |b| {
            b.send_argv(&ds, from.as_deref(), &to)
                .ok_or_else(|| super::no_streams(kind))
        }))
    }
    fn receive_command<'a>(
        &'a self,
        volume: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        let ds = vol(volume);
        let kind = self.kind;
        Box::pin(self.with(move |b| b.recv_argv(&ds).ok_or_else(|| super::no_streams(kind))))
    }
    fn received<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        let ds = vol(volume);
        Box::pin(self.with(move |b| {
            let path = b.info(&ds)?.path;
            if !B::READS_IMAGE_FILES {
                return Ok(());
            }
            let f = std::fs::File::open(&path).map_err(|e| DriverError::Transient {
                op: "receive".into(),
                target: path.display().to_string(),
                message: e.to_string(),
            })?;
            rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).map_err(|e| {
                DriverError::Transient {
                    op: "receive".into(),
                    target: path.display().to_string(),
                    message: format!("dropping cached pages: {e}"),
                }
            })
        }))
    }
    fn drop_points<'a>(&'a self, volumes: &'a [String]) -> BoxFuture<'a, Result<(), DriverError>> {
        let names: BTreeSet<String> = volumes.iter().map(|v| vol(v)).collect();
        Box::pin(self.with(move |b| {
            let points: Vec<String> = b
                .list()?
                .into_iter()
                .filter(|d| names.contains(&d.name))
                .flat_map(|d| {
                    d.snapshots
                        .into_iter()
                        .filter(|s| {
                            s.0.starts_with(super::TRANSFER_POINT)
                                && !s.0[super::TRANSFER_POINT.len()..].starts_with(super::FASTR_TAG)
                        })
                        .map(move |s| format!("{}@{}", d.name, s.0))
                })
                .collect();
            for p in points {
                b.destroy(&p)?;
            }
            Ok(())
        }))
    }
    fn points<'a>(&'a self, volume: &'a str) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        let ds = vol(volume);
        Box::pin(self.with(move |b| {
            let mut snaps: Vec<(String, u64)> = b
                .list()?
                .into_iter()
                .find(|d| d.name == ds)
                .map(|d| d.snapshots)
                .unwrap_or_default();
            snaps.sort_by_key(|s| s.1);
            Ok(snaps
                .into_iter()
                .filter_map(|s| s.0.strip_prefix(super::TRANSFER_POINT).map(str::to_string))
                .collect())
        }))
    }
    fn point_clones<'a>(
        &'a self,
        volume: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, DriverError>> {
        let of = format!("{}@{}", vol(volume), super::TRANSFER_POINT);
        Box::pin(self.with(move |b| {
            Ok(b.list()?
                .into_iter()
                .filter(|d| d.origin.as_deref().is_some_and(|o| o.starts_with(&of)))
                .filter_map(|d| d.name.strip_prefix("vol/").map(str::to_string))
                .collect())
        }))
    }
    fn rollback<'a>(
        &'a self,
        volume: &'a str,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let ds = vol(volume);
        let snap = format!("{ds}@{}", super::transfer_point(tag));
        Box::pin(self.with(move |b| {
            // A rollback destroys the later snapshots: the lazy volumes
            // among them are made datasets first (their snapshots then have
            // clones, and the rollback refuses, as it does for any volume
            // cloned after the point).
            let on: Vec<String> = lazies(&b.list()?)
                .into_iter()
                .filter(|(_, s)| s.split_once('@').is_some_and(|x| x.0 == ds))
                .map(|x| x.0)
                .collect();
            for v in on {
                materialize(b, &v)?;
            }
            b.rollback(&snap)
        }))
    }
    fn drop_point<'a>(
        &'a self,
        volume: &'a str,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let ds = vol(volume);
        let point = super::transfer_point(tag);
        Box::pin(self.with(move |b| {
            let has = b
                .list()?
                .into_iter()
                .any(|d| d.name == ds && d.snapshots.iter().any(|s| s.0 == point));
            if has {
                b.destroy(&format!("{ds}@{point}"))?;
            }
            Ok(())
        }))
    }
    fn capacity(&self) -> BoxFuture<'_, Result<(u64, u64), DriverError>> {
        Box::pin(self.with(|b| b.capacity()))
    }
    fn ensure_dataset<'a>(
        &'a self,
        config: &'a DatasetConfig,
    ) -> BoxFuture<'a, Result<DatasetState, DriverError>> {
        let config = config.clone();
        Box::pin(self.with(move |b| b.ensure_dataset(&config)))
    }
    fn destroy_dataset<'a>(
        &'a self,
        config: &'a DatasetConfig,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let config = config.clone();
        Box::pin(self.with(move |b| b.destroy_dataset(&config)))
    }
}
