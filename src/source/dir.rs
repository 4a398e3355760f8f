//! The manifest directory: every `*.yaml`/`*.yml` file below it declares a
//! set of objects (source `file:<absolute path>`).
//!
//! When a file is picked up:
//! - **at once** when its writer closes it (`IN_CLOSE_WRITE`), when it is
//!   renamed into or out of the tree, or deleted: these are the moments a
//!   file is complete, so a drop is applied within milliseconds;
//! - **by the periodic rescan** (default every 10 s) for everything else,
//!   because inotify events can be lost (queue overflow, a directory
//!   replaced): files are compared by size, mtime and content hash. A file
//!   that was modified but not closed is taken by the rescan only once its
//!   mtime is older than `settle` (default 5 s), so a writer still writing is
//!   not read half-way.
//!
//! A file replaced by a rename (`sed -i`, editors, atomic writers: a temp
//! file renamed over the target) is complete at the rename, so it is read
//! at once too, even when the vanished temp name also asks for a rescan.
//!
//! A file is read whole or not at all: it is not read while any process
//! has it open for writing (a read lease, `F_SETLEASE`, is refused then:
//! `cat > f` truncates and writes before it closes), nor when its size or
//! mtime changed while it was read; its size is checked before reading.
//! Such a file is taken at its writer's close or a later rescan.
//!
//! An object that no file declares any more (its file rewritten without
//! it, removed or renamed away) is deleted only once it stayed undeclared
//! for the removal grace (`--removal-grace`, default 10 s): a save in two
//! steps (`cat a > f; cat b >> f`), a git checkout or a remount that brings
//! it back within that time changes nothing, not even its generation.
//!
//! A missing or unreadable directory is an error, not an empty set: the
//! node keeps every object its files declared, records a Warning event
//! (`ManifestDirectoryMissing`) and retries at each rescan; only
//! `--allow-empty-manifests` (or a store that holds nothing from it yet)
//! lets it start from a new, empty directory.
//!
//! Editor temp, swap and backup files are ignored
//! ([`crate::manifest::is_manifest_file`]). Each file is one admission
//! batch ([`Trust::Local`]: unsigned documents are accepted, signed ones
//! are verified and authorised like everywhere else). A file with any
//! error or refusal is rejected whole: its diagnostics are logged and
//! recorded as a Warning event on its source (admission records its
//! refusals on the objects), and the objects it declared before stay as
//! they were. Changes that arrive together are applied file by file,
//! applies before deletions, so renaming a file never deletes and
//! re-creates its objects.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::Source;
use crate::admission::{Admission, Batch, Trust};
use crate::clock::now_ms;
use crate::manifest;
use crate::model::ObjectKey;
use crate::store::{Event, SourceId};

/// Settings of a directory source.
#[derive(Debug, Clone)]
pub struct DirConfig {
    /// The directory.
    pub root: PathBuf,
    /// Full rescan period.
    pub rescan_every: Duration,
    /// Age a modified-but-not-closed file must reach before a rescan reads it.
    pub settle: Duration,
    /// How long an object must stay undeclared before it is deleted.
    pub removal_grace: Duration,
    /// Take a missing directory as empty (deleting what its files declared).
    pub allow_missing: bool,
}

/// Default removal grace: longer than an editor's save, a two-step shell
/// rewrite or a git checkout (milliseconds to a second), and than a quick
/// remount; short enough that a deliberate removal shows within seconds.
/// A VM deleted after it still keeps its volumes for the volume retention.
pub const REMOVAL_GRACE: Duration = Duration::from_secs(10);

/// A file held open for writing this long without a change is read anyway
/// (a process that keeps it open and idle must not freeze it forever).
const WRITER_PATIENCE: Duration = Duration::from_secs(60);

impl DirConfig {
    /// Defaults for `root`.
    pub fn new(root: impl Into<PathBuf>) -> DirConfig {
        DirConfig {
            root: root.into(),
            rescan_every: Duration::from_secs(10),
            settle: Duration::from_secs(5),
            removal_grace: REMOVAL_GRACE,
            allow_missing: false,
        }
    }
}

/// A watched manifest directory.
pub struct DirSource {
    config: DirConfig,
}

impl DirSource {
    /// A source for `config.root`.
    pub fn new(config: DirConfig) -> DirSource {
        DirSource { config }
    }
}

impl Source for DirSource {
    fn name(&self) -> String {
        format!("dir:{}", self.config.root.display())
    }

    fn run(
        self: Box<Self>,
        admission: Arc<Admission>,
        shutdown: watch::Receiver<bool>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(run(self.config, admission, shutdown))
    }
}

/// What we know of one file.
#[derive(Debug, Clone, Default)]
struct FileState {
    len: u64,
    mtime: Option<SystemTime>,
    hash: [u8; 32],
    /// Keys the file's last valid version declared.
    keys: BTreeSet<ObjectKey>,
}

/// The directory's state, owned by the watcher task.
struct Tree {
    config: DirConfig,
    root: PathBuf,
    admission: Arc<Admission>,
    files: BTreeMap<PathBuf, FileState>,
    /// Objects no file declares any more, by the file that last declared
    /// them and since when: deleted once older than the removal grace.
    vanished: BTreeMap<ObjectKey, (PathBuf, Instant)>,
    /// Why the directory cannot be read, while it cannot (reported once).
    missing: Option<String>,
}

/// How a batch entry should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Closed after writing, renamed, deleted: complete, take it now.
    Complete,
    /// Seen by a rescan: take it only if it settled.
    Rescan,
}

/// Quiet gap that ends the wait for a rename's second half.
const RENAME_GRACE: Duration = Duration::from_millis(30);
/// Longest wait for it.
const RENAME_GRACE_MAX: Duration = Duration::from_millis(250);

/// The directory's watch, made again when the directory is replaced
/// (renamed away and back, remounted): inotify follows an inode.
struct Watch {
    tx: mpsc::UnboundedSender<notify::Result<notify::Event>>,
    watcher: Option<notify::RecommendedWatcher>,
    /// (device, inode) of the directory watched.
    watched: Option<(u64, u64)>,
}

impl Watch {
    /// Watch `root` unless the same directory is watched already.
    fn ensure(&mut self, root: &Path) {
        let id = std::fs::metadata(root).ok().map(|m| (m.dev(), m.ino()));
        if id.is_none() || id == self.watched {
            return;
        }
        let tx = self.tx.clone();
        let watcher = notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        })
        .and_then(|mut w| w.watch(root, RecursiveMode::Recursive).map(|_| w));
        match watcher {
            Ok(w) => {
                self.watcher = Some(w);
                self.watched = id;
            }
            Err(e) => {
                warn!(dir = %root.display(), error = %e, "cannot watch manifest directory; relying on periodic rescans");
                self.watcher = None;
                self.watched = None;
            }
        }
    }
}

async fn run(config: DirConfig, admission: Arc<Admission>, mut shutdown: watch::Receiver<bool>) {
    survive_lease_breaks();
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let mut tree = Tree {
        config: config.clone(),
        root: canonical(&config.root),
        admission,
        files: BTreeMap::new(),
        vanished: BTreeMap::new(),
        missing: None,
    };
    tree.adopt_previous_sources();
    // A new directory is made only when nothing in the store came from
    // it (or when told): a missing one must not read as "no objects".
    if !config.root.exists() && (tree.files.is_empty() || config.allow_missing) {
        if let Err(e) = std::fs::create_dir_all(&config.root) {
            warn!(dir = %config.root.display(), error = %e, "cannot create manifest directory");
        }
    }
    tree.root = canonical(&config.root);
    let mut watch = Watch {
        tx,
        watcher: None,
        watched: None,
    };
    watch.ensure(&tree.root);
    tree.rescan(true, BTreeMap::new());
    info!(dir = %tree.root.display(), files = tree.files.len(), "manifest directory loaded");

    let mut next_rescan = Instant::now() + config.rescan_every;
    loop {
        // Wake for the rescan, or earlier for the first removal due.
        let wake = tree
            .next_expiry()
            .map_or(next_rescan, |t| t.min(next_rescan));
        let deadline = tokio::time::Instant::from_std(wake);
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep_until(deadline) => {
                if Instant::now() >= next_rescan {
                    watch.ensure(&tree.root);
                    tree.rescan(false, BTreeMap::new());
                    next_rescan = Instant::now() + config.rescan_every;
                }
                tree.expire();
            }
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                let mut batch = BTreeMap::new();
                let mut full = false;
                let mut paired = BTreeSet::new();
                classify(ev, &mut batch, &mut full, &mut paired);
                // Take everything already queued: a rename's two halves
                // must be applied as one batch.
                while let Ok(ev) = rx.try_recv() {
                    classify(ev, &mut batch, &mut full, &mut paired);
                }
                // A file that is gone may be the first half of a rename
                // whose second half the watcher has not delivered yet:
                // wait for a short quiet gap (bounded) before deleting, so
                // a rename never deletes and re-creates its objects. Drops
                // and edits (files that exist) are not delayed, nor are
                // renames whose both halves arrived, nor files that never
                // gave objects (the `.x.tmp` of an atomic drop): their
                // deletion changes nothing.
                let grace_end = Instant::now() + RENAME_GRACE_MAX;
                let unpaired = |batch: &BTreeMap<PathBuf, Why>, paired: &BTreeSet<PathBuf>| {
                    batch.keys().any(|p| {
                        !p.exists() && !paired.contains(p) && tree.files.contains_key(p)
                    })
                };
                while unpaired(&batch, &paired) && Instant::now() < grace_end {
                    match tokio::time::timeout(RENAME_GRACE, rx.recv()).await {
                        Ok(Some(ev)) => classify(ev, &mut batch, &mut full, &mut paired),
                        _ => break,
                    }
                }
                if full {
                    // What the events said is complete stays complete
                    // (a file renamed over its target by `sed -i`).
                    watch.ensure(&tree.root);
                    tree.rescan(false, batch);
                    next_rescan = Instant::now() + config.rescan_every;
                } else if !batch.is_empty() {
                    tree.process(batch);
                }
            }
        }
    }
}

/// `path` made canonical; a missing one by its parent (the sources of its
/// files were recorded canonical).
fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        })
        .map(|p| p.join(name))
        .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

/// A file read whole, or why not now.
enum Read {
    /// Complete: every byte, and the metadata they were read under.
    Whole(Vec<u8>, std::fs::Metadata),
    /// A writer has it open, or it changed while read: not now.
    InProgress(&'static str),
    /// Larger than [`manifest::MAX_FILE`]: refused without being read.
    TooLarge(u64),
    /// Gone or unreadable (retried later).
    Unreadable(std::io::Error),
}

/// Read `path` only when it is complete: no process has it open for
/// writing (a read lease is granted only then) and its size and mtime did
/// not change while it was read. Never reads more than the size limit.
fn read_whole(path: &Path, patience: Duration) -> Read {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Read::Unreadable(e),
    };
    let before = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Read::Unreadable(e),
    };
    if before.len() > manifest::MAX_FILE as u64 {
        return Read::TooLarge(before.len());
    }
    let idle = before
        .modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age >= patience);
    if writer_has_it_open(&file) == Some(true) && !idle {
        return Read::InProgress("a process has it open for writing");
    }
    let mut bytes = Vec::with_capacity(before.len() as usize);
    if let Err(e) = (&file)
        .take(manifest::MAX_FILE as u64 + 1)
        .read_to_end(&mut bytes)
    {
        return Read::Unreadable(e);
    }
    if bytes.len() > manifest::MAX_FILE {
        return Read::TooLarge(bytes.len() as u64);
    }
    let after = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Read::Unreadable(e),
    };
    if after.len() != before.len()
        || after.modified().ok() != before.modified().ok()
        || bytes.len() as u64 != after.len()
    {
        return Read::InProgress("it changed while it was read");
    }
    Read::Whole(bytes, after)
}

/// After reading this much in one batch, freed memory is handed back.
const TRIM_AFTER: usize = 1 << 20;

/// Whether any process has `file` open for writing: a read lease is
/// refused (EAGAIN) exactly then. `None` where leases are not available
/// (another owner without CAP_LEASE, a filesystem without leases): the
/// size and mtime check and the settle time are all there is then.
#[allow(unsafe_code)]
fn writer_has_it_open(file: &std::fs::File) -> Option<bool> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function borrows; F_SETLEASE takes
    // an int argument and touches no memory.
    let r = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) };
    if r == 0 {
        // SAFETY: as above; releases the lease just taken.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        return Some(false);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EBUSY) => Some(true),
        _ => None,
    }
}

/// A writer opening a file while we hold its lease makes the kernel send
/// SIGIO, whose default action ends the process: give it a handler (tokio
/// keeps one registered for the process's life; the lease is released
/// right after it is taken and nothing in the node uses SIGIO).
fn survive_lease_breaks() {
    use tokio::signal::unix::{signal, SignalKind};
    if let Err(e) = signal(SignalKind::io()) {
        warn!(error = %e, "cannot handle SIGIO; manifests are checked for writers without leases");
    }
}

/// Sort one notify event into the batch.
fn classify(
    ev: notify::Result<notify::Event>,
    batch: &mut BTreeMap<PathBuf, Why>,
    full: &mut bool,
    paired: &mut BTreeSet<PathBuf>,
) {
    let ev = match ev {
        Ok(ev) => ev,
        Err(e) => {
            debug!(error = %e, "watch error; rescanning");
            *full = true;
            return;
        }
    };
    if ev.need_rescan() {
        *full = true;
        return;
    }
    match ev.kind {
        // The writer closed the file: it is complete.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            for path in ev.paths {
                batch.insert(path, Why::Complete);
            }
        }
        // Renamed or removed: complete too. A directory renamed or removed
        // (or a path that no longer exists and may have been one) changes
        // many files at once: look at everything.
        EventKind::Modify(ModifyKind::Name(_)) | EventKind::Remove(_) => {
            // Both halves of a rename in one event: its source needs no
            // wait for a second half.
            if matches!(
                ev.kind,
                EventKind::Modify(ModifyKind::Name(RenameMode::Both))
            ) {
                paired.extend(ev.paths.first().cloned());
            }
            for path in ev.paths {
                if path.is_dir() || (!path.exists() && path.extension().is_none()) {
                    *full = true;
                } else {
                    batch.insert(path, Why::Complete);
                }
            }
        }
        // A new directory may already hold files written before the watch
        // on it existed.
        EventKind::Create(_) if ev.paths.iter().any(|p| p.is_dir()) => {
            *full = true;
        }
        // Data written but not closed (the writer may be half-way), reads,
        // opens, metadata: nothing to do now. The close, or a later rescan
        // once the file settled, takes it. (Our own scans open the
        // directory: reacting to that would loop.)
        _ => {}
    }
}

impl Tree {
    /// Source id of a file.
    fn source_of(&self, path: &Path) -> SourceId {
        SourceId(format!("file:{}", path.display()))
    }

    /// Objects in the store that came from files of this directory whose
    /// files we have not seen yet are remembered, so that a file deleted
    /// while the node was down has its objects deleted by the first rescan.
    fn adopt_previous_sources(&mut self) {
        let prefix = format!("file:{}/", self.root.display());
        for record in self.admission.store().list(None) {
            if let Some(path) = record.source.0.strip_prefix("file:") {
                if record.source.0.starts_with(&prefix) {
                    self.files
                        .entry(PathBuf::from(path))
                        .or_default()
                        .keys
                        .insert(record.key);
                }
            }
        }
    }

    /// Whether the directory can be read; when it cannot, say so once
    /// (a Warning event and a log line) and when it can again.
    fn readable(&mut self) -> bool {
        let problem = match std::fs::read_dir(&self.root) {
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                "{} does not exist (unmounted, renamed or mistyped?); every object its files \
                 declared is kept until it is back (or start the node with \
                 --allow-empty-manifests to begin from an empty directory)",
                self.root.display()
            )),
            Err(e) => Some(format!(
                "{} cannot be read: {e}; every object its files declared is kept until it can",
                self.root.display()
            )),
        };
        match (&problem, &self.missing) {
            (Some(p), None) => {
                warn!(dir = %self.root.display(), "manifest directory unreadable: {p}");
                self.admission.store().record_event(Event {
                    time_ms: now_ms(),
                    level: "Warning".into(),
                    object: None,
                    source: Some(SourceId(format!("dir:{}", self.root.display()))),
                    reason: "ManifestDirectoryMissing".into(),
                    message: p.clone(),
                });
            }
            (None, Some(_)) => {
                info!(dir = %self.root.display(), "manifest directory readable again");
            }
            _ => {}
        }
        let ok = problem.is_none();
        self.missing = problem;
        ok
    }

    /// Compare the whole tree with what we know; `initial` takes every file
    /// regardless of its age (nothing can be half-written by us at start).
    /// Paths in `known` keep their classification (events said they are
    /// complete). Nothing happens while the directory cannot be read.
    fn rescan(&mut self, initial: bool, known: BTreeMap<PathBuf, Why>) {
        if !self.readable() && !self.config.allow_missing {
            return;
        }
        let mut found = BTreeSet::new();
        walk(&self.root, &mut found);
        let mut batch: BTreeMap<PathBuf, Why> = known;
        let why = if initial { Why::Complete } else { Why::Rescan };
        for path in &found {
            let meta = std::fs::metadata(path).ok();
            let known = self.files.get(path);
            let same = match (known, &meta) {
                (Some(k), Some(m)) => k.len == m.len() && k.mtime == m.modified().ok(),
                _ => false,
            };
            if !same {
                batch.entry(path.clone()).or_insert(why);
            }
        }
        for path in self.files.keys() {
            if !found.contains(path) {
                batch.insert(path.clone(), Why::Complete);
            }
        }
        for path in self.overruled(&found) {
            if let Some(k) = self.files.get_mut(&path) {
                k.hash = [0; 32];
            }
            batch.insert(path, Why::Complete);
        }
        if !batch.is_empty() {
            self.process(batch);
        }
    }

    /// Files (still present) of which an object was changed or deleted by
    /// something other than a manifest file: a peer through gossip (the
    /// only source admission lets touch a file's object). The file owns
    /// what it declares, so it is admitted again and its version returns,
    /// under a new generation that wins cluster-wide. Two files declaring
    /// one object are left to each other (no ping-pong).
    fn overruled(&self, found: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
        let store = self.admission.store();
        self.files
            .iter()
            .filter(|(path, _)| found.contains(*path))
            .filter(|(path, state)| {
                state.keys.iter().any(|key| {
                    let overruled = match store.provenance(key) {
                        None => true,
                        Some((source, deleted)) => deleted || !source.0.starts_with("file:"),
                    };
                    if overruled {
                        info!(file = %path.display(), object = %key, "changed or deleted elsewhere: the file declares it, so it is applied again");
                    }
                    overruled
                })
            })
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// When the first undeclared object is due for deletion.
    fn next_expiry(&self) -> Option<Instant> {
        self.vanished
            .values()
            .map(|(_, since)| *since + self.config.removal_grace)
            .min()
    }

    /// Delete the objects undeclared for longer than the removal grace:
    /// each file that last declared one is admitted again as the whole of
    /// what it declares now (a declarative batch: admission deletes, in
    /// one transaction, what came from it and is declared nowhere).
    fn expire(&mut self) {
        let now = Instant::now();
        let grace = self.config.removal_grace;
        let due: BTreeSet<PathBuf> = self
            .vanished
            .values()
            .filter(|(_, since)| *since + grace <= now)
            .map(|(p, _)| p.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        if self.missing.is_some() && !self.config.allow_missing {
            // The directory is away: nothing it declared is deleted.
            return;
        }
        self.vanished.retain(|_, (_, since)| *since + grace > now);
        for path in due {
            if self.files.contains_key(&path) {
                // Re-read it: its current documents, and the keep set
                // without what expired.
                if let Some(k) = self.files.get_mut(&path) {
                    k.hash = [0; 32];
                }
                self.process(BTreeMap::from([(path, Why::Complete)]));
            } else {
                let keep = self.keep(&path);
                let batch = Batch::new(self.source_of(&path), Trust::Local).declarative(keep);
                match self.admission.admit(batch) {
                    Ok(out) => {
                        for (key, generation) in &out.deleted {
                            info!(file = %path.display(), object = %key, generation, "deleted (undeclared for the removal grace)");
                        }
                    }
                    Err(e) => {
                        warn!(file = %path.display(), error = %e, "store refused the deletion")
                    }
                }
            }
        }
    }

    /// What a declarative batch of `me` must not delete: what other files
    /// declare, and what is undeclared but still within its grace.
    fn keep(&self, me: &Path) -> BTreeSet<ObjectKey> {
        self.files
            .iter()
            .filter(|(p, _)| p.as_path() != me)
            .flat_map(|(_, s)| s.keys.iter().cloned())
            .chain(self.vanished.keys().cloned())
            .collect()
    }

    /// Note what `path` stopped declaring (`before` minus `now`), and
    /// forget the vanishing of anything declared again.
    fn note_vanished(
        &mut self,
        path: &Path,
        before: &BTreeSet<ObjectKey>,
        now: &BTreeSet<ObjectKey>,
    ) {
        let at = Instant::now();
        for key in before.difference(now) {
            self.vanished
                .entry(key.clone())
                .or_insert_with(|| (path.to_path_buf(), at));
        }
        for key in now {
            self.vanished.remove(key);
        }
    }

    /// Apply one batch of changed paths: read and validate each, apply the
    /// valid ones, then note what vanished (deleted after the grace).
    fn process(&mut self, batch: BTreeMap<PathBuf, Why>) {
        let mut read_bytes = 0usize;
        self.process_batch(batch, &mut read_bytes);
        if read_bytes >= TRIM_AFTER {
            crate::memory::give_back_freed();
        }
    }

    fn process_batch(&mut self, batch: BTreeMap<PathBuf, Why>, read_bytes: &mut usize) {
        let mut applies: Vec<(PathBuf, FileState, Batch)> = Vec::new();
        let mut removals: Vec<PathBuf> = Vec::new();
        for (path, why) in batch {
            if !manifest::is_manifest_file(&path) {
                continue;
            }
            let meta = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                _ => {
                    if self.files.contains_key(&path) {
                        removals.push(path);
                    }
                    continue;
                }
            };
            if why == Why::Rescan {
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                if age.is_some_and(|a| a < self.config.settle) {
                    debug!(file = %path.display(), "modified recently and not closed; waiting for it to settle");
                    continue;
                }
            }
            let (text, meta) = match read_whole(&path, WRITER_PATIENCE) {
                Read::Whole(bytes, meta) => {
                    *read_bytes += bytes.len();
                    (bytes, meta)
                }
                Read::InProgress(why) => {
                    debug!(file = %path.display(), "not read now: {why}; taken at its close or a later rescan");
                    continue;
                }
                Read::TooLarge(len) => {
                    let line = format!(
                        "{}:1:1: file is {len} bytes, larger than {} MiB; refused without reading it",
                        path.display(),
                        manifest::MAX_FILE >> 20
                    );
                    let known = self.files.get(&path);
                    let state = FileState {
                        len: meta.len(),
                        mtime: meta.modified().ok(),
                        hash: [0xff; 32],
                        keys: known.map(|k| k.keys.clone()).unwrap_or_default(),
                    };
                    if known.is_none_or(|k| k.len != state.len || k.mtime != state.mtime) {
                        self.reject(&path, &[line], true);
                    }
                    self.files.insert(path, state);
                    continue;
                }
                Read::Unreadable(e) => {
                    debug!(file = %path.display(), error = %e, "unreadable; will retry");
                    continue;
                }
            };
            let hash: [u8; 32] = Sha256::digest(&text).into();
            let known = self.files.get(&path);
            if known.is_some_and(|k| k.hash == hash) {
                // Touched, same content: remember the new mtime only.
                if let Some(k) = self.files.get_mut(&path) {
                    k.len = meta.len();
                    k.mtime = meta.modified().ok();
                }
                continue;
            }
            let source = self.source_of(&path);
            let mut batch = Batch::new(source, Trust::Local);
            match String::from_utf8(text) {
                Ok(s) => batch.parse(&path.display().to_string(), &s),
                Err(_) => batch.diagnostics.push(manifest::Diagnostic {
                    file: path.clone(),
                    line: 1,
                    col: 1,
                    path: String::new(),
                    message: "file is not UTF-8 text".into(),
                }),
            }
            let mut state = FileState {
                len: meta.len(),
                mtime: meta.modified().ok(),
                hash,
                keys: known.map(|k| k.keys.clone()).unwrap_or_default(),
            };
            if !batch.diagnostics.is_empty() {
                let lines: Vec<String> = batch.diagnostics.iter().map(|d| d.to_string()).collect();
                self.reject(&path, &lines, true);
                // Remember the bad content so the rescan does not re-report
                // it, but keep the keys of the last valid version.
                self.files.insert(path, state);
                continue;
            }
            state.keys = batch
                .docs
                .iter()
                .map(|d| ObjectKey::of(&d.object))
                .collect();
            applies.push((path, state, batch));
        }

        // Everything declared after this batch, by file (as if every file
        // were accepted: a refused file's keys are restored below).
        let previous: BTreeMap<PathBuf, BTreeSet<ObjectKey>> = applies
            .iter()
            .filter_map(|(p, _, _)| Some((p.clone(), self.files.get(p)?.keys.clone())))
            .collect();
        for (path, state, _) in &applies {
            self.files.insert(path.clone(), state.clone());
        }
        let mut removed_states = Vec::new();
        for path in &removals {
            if let Some(s) = self.files.remove(path) {
                removed_states.push((path.clone(), s));
            }
        }
        // What stopped being declared waits out the grace (files are
        // applied before vanishings are noted, so a key moved to another
        // file is declared again at once).
        for (path, state, _) in &applies {
            let before = previous.get(path).cloned().unwrap_or_default();
            self.note_vanished(path, &before, &state.keys);
        }
        for (path, state) in &removed_states {
            self.note_vanished(path, &state.keys, &BTreeSet::new());
        }
        let declared: BTreeSet<ObjectKey> = self
            .files
            .values()
            .flat_map(|s| s.keys.iter().cloned())
            .collect();
        self.vanished.retain(|k, _| !declared.contains(k));
        for (path, _, batch) in applies {
            let keep = self.keep(&path);
            match self.admission.admit(batch.declarative(keep)) {
                Ok(out) if out.committed => {
                    for (key, generation) in out.changed() {
                        info!(file = %path.display(), object = %key, generation, "applied");
                    }
                    for (key, generation) in &out.deleted {
                        info!(file = %path.display(), object = %key, generation, "deleted (no longer in file)");
                    }
                }
                Ok(out) => {
                    // Rejected whole: remember the content (the rescan
                    // does not report it again) with the keys of the last
                    // accepted version.
                    let keys = previous.get(&path).cloned().unwrap_or_default();
                    for key in &keys {
                        self.vanished.remove(key);
                    }
                    if let Some(s) = self.files.get_mut(&path) {
                        s.keys = keys;
                    }
                    self.reject(&path, &out.problems(), false);
                }
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "store refused the file's objects")
                }
            }
        }
        for (path, _) in removed_states {
            let keep = self.keep(&path);
            let batch = Batch::new(self.source_of(&path), Trust::Local).declarative(keep);
            match self.admission.admit(batch) {
                Ok(out) => {
                    for (key, generation) in &out.deleted {
                        info!(file = %path.display(), object = %key, generation, "deleted (file removed)");
                    }
                }
                Err(e) => warn!(file = %path.display(), error = %e, "store refused the deletion"),
            }
        }
    }

    /// Log and record a rejected file; its previous objects stay in force.
    fn reject(&self, path: &Path, lines: &[String], invalid: bool) {
        // A broken file may hold 80,000 errors: the log and the event get
        // the first few and a count (`deorch validate FILE` lists all).
        const SHOWN: usize = 10;
        let mut shown = lines[..lines.len().min(SHOWN)].join("\n");
        if lines.len() > SHOWN {
            shown.push_str(&format!(
                "\n… and {} more (deorch validate {} lists them all)",
                lines.len() - SHOWN,
                path.display()
            ));
        }
        warn!(
            file = %path.display(),
            errors = lines.len(),
            "manifest rejected; the previous valid version stays in force:\n{shown}"
        );
        self.admission.store().record_event(Event {
            time_ms: now_ms(),
            level: "Warning".into(),
            object: None,
            source: Some(self.source_of(path)),
            reason: if invalid {
                "InvalidManifest"
            } else {
                "ManifestRefused"
            }
            .into(),
            message: format!(
                "{} rejected ({} error{}); previous version kept:\n{shown}",
                path.display(),
                lines.len(),
                if lines.len() == 1 { "" } else { "s" },
            ),
        });
    }
}

/// Every manifest file below `dir`, recursively (symlinked directories are
/// not followed, to avoid loops).
fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, out),
            Ok(_) if manifest::is_manifest_file(&path) => {
                out.insert(path);
            }
            _ => {}
        }
    }
}
