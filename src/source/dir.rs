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
}

impl DirConfig {
    /// Defaults for `root`.
    pub fn new(root: impl Into<PathBuf>) -> DirConfig {
        DirConfig {
            root: root.into(),
            rescan_every: Duration::from_secs(10),
            settle: Duration::from_secs(5),
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

async fn run(config: DirConfig, admission: Arc<Admission>, mut shutdown: watch::Receiver<bool>) {
    if let Err(e) = std::fs::create_dir_all(&config.root) {
        warn!(dir = %config.root.display(), error = %e, "cannot create manifest directory");
    }
    let root = std::fs::canonicalize(&config.root).unwrap_or_else(|_| config.root.clone());
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let watcher = notify::recommended_watcher(move |ev| {
        let _ = tx.send(ev);
    })
    .and_then(|mut w| w.watch(&root, RecursiveMode::Recursive).map(|_| w));
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(dir = %root.display(), error = %e, "cannot watch manifest directory; relying on periodic rescans");
            None
        }
    };
    let mut tree = Tree {
        config: config.clone(),
        root,
        admission,
        files: BTreeMap::new(),
    };
    tree.adopt_previous_sources();
    tree.rescan(true, BTreeMap::new());
    info!(dir = %tree.root.display(), files = tree.files.len(), "manifest directory loaded");

    let mut next_rescan = Instant::now() + config.rescan_every;
    loop {
        let deadline = tokio::time::Instant::from_std(next_rescan);
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep_until(deadline) => {
                tree.rescan(false, BTreeMap::new());
                next_rescan = Instant::now() + config.rescan_every;
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
                    tree.rescan(false, batch);
                    next_rescan = Instant::now() + config.rescan_every;
                } else if !batch.is_empty() {
                    tree.process(batch);
                }
            }
        }
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

    /// Compare the whole tree with what we know; `initial` takes every file
    /// regardless of its age (nothing can be half-written by us at start).
    /// Paths in `known` keep their classification (events said they are
    /// complete).
    fn rescan(&mut self, initial: bool, known: BTreeMap<PathBuf, Why>) {
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
        if !batch.is_empty() {
            self.process(batch);
        }
    }

    /// Apply one batch of changed paths: read and validate each, apply the
    /// valid ones, then delete what vanished.
    fn process(&mut self, batch: BTreeMap<PathBuf, Why>) {
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
            let text = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
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
        let declared_by_others =
            |me: &Path, files: &BTreeMap<PathBuf, FileState>| -> BTreeSet<ObjectKey> {
                files
                    .iter()
                    .filter(|(p, _)| p.as_path() != me)
                    .flat_map(|(_, s)| s.keys.iter().cloned())
                    .collect()
            };
        for (path, _, batch) in applies {
            let keep = declared_by_others(&path, &self.files);
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
            let keep = declared_by_others(&path, &self.files);
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
        warn!(
            file = %path.display(),
            errors = lines.len(),
            "manifest rejected; the previous valid version stays in force:\n{}",
            lines.join("\n")
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
                "{} rejected ({} error{}); previous version kept:\n{}",
                path.display(),
                lines.len(),
                if lines.len() == 1 { "" } else { "s" },
                lines.join("\n")
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
