//! The desired-state store: the newest accepted version of every object,
//! keyed by kind/namespace/name, with a monotonic generation, its source and
//! a content hash; deletions are tombstones. Persisted crash-safely: once a
//! mutating call returns `Ok`, the change survives `kill -9`.
//!
//! Status (observed state) is kept beside the desired object and never
//! changes its generation.
//!
//! Layout: one redb file with two tables, `records` (key → the versioned
//! record without status) and `status` (key → status JSON), so that status
//! updates never rewrite the desired object. Every mutation is one redb write
//! transaction committed with immediate durability (fsync) before the call
//! returns; an in-memory index answers reads without touching the disk. A
//! `store.lock` file held with an exclusive lock keeps a second process out.
//!
//! Batches: [`Store::transact`] runs a closure under the writer lock with a
//! [`Txn`] that reads the store (and what the closure staged so far) and
//! stages applies and deletions; when the closure returns `Ok`, everything
//! staged is committed in one redb transaction, else nothing is. Since the
//! checks (generations, and whatever the closure decides from what it
//! read) and the commit happen under one lock, no other writer can slip in
//! between them: a batch of several objects is applied whole or not at
//! all. `apply`, `apply_signed` and `delete` are batches of one.

mod canonical;
mod load;
pub mod recover;
mod seal;
pub mod snapshot;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use redb::{Database, TableDefinition};
use tokio::sync::broadcast;
use tracing::warn;

pub use canonical::{canonical_json, content_hash};
use load::{load, quietly, Loaded};
pub use load::{salvage, Salvaged};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::now_ms;
use crate::model::{AnyObject, Kind, ObjectKey};

/// Where a version of an object came from, e.g. `file:vm.yaml`, `api`,
/// later `git:…`, `gossip:…`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceId(pub String);

/// One stored object (or tombstone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Identity.
    pub key: ObjectKey,
    /// Monotonic per key; bumped by every accepted change and by deletion.
    pub generation: i64,
    /// Who wrote this version.
    pub source: SourceId,
    /// SHA-256 (hex) of the canonical JSON of what the generation covers
    /// (`metadata.labels`, `metadata.annotations`, `spec`).
    pub hash: String,
    /// The whole object as JSON, `metadata.generation` set, without status.
    pub object: Value,
    /// Latest status written by a reconciler, if any.
    pub status: Option<Value>,
    /// True for a tombstone.
    pub deleted: bool,
    /// Milliseconds since the Unix epoch of the last change.
    pub updated_ms: u64,
}

/// Result of an apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The object.
    pub key: ObjectKey,
    /// Its generation now.
    pub generation: i64,
    /// False when the object was identical (same hash): nothing written.
    pub changed: bool,
}

/// A notable happening, shown by `deorch get`/`describe` (e.g. a rejected file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `Normal` or `Warning`.
    pub level: String,
    /// The object concerned, if known.
    pub object: Option<ObjectKey>,
    /// The source concerned (e.g. the file), if any.
    pub source: Option<SourceId>,
    /// CamelCase reason, e.g. `InvalidManifest`.
    pub reason: String,
    /// Human message.
    pub message: String,
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("store {path}: {message}")]
    Io {
        /// Database path.
        path: String,
        /// What failed.
        message: String,
    },
    /// The store file is damaged: records fail their checks, or the
    /// database cannot be read at all. Nothing was changed.
    #[error("store {path} is damaged: {summary}; nothing was changed. Recover with `deorch node recover-store` (the node stopped), or start empty with --init-store (the damaged file is kept aside)")]
    Damaged {
        /// Database path.
        path: String,
        /// What is wrong, short.
        summary: String,
        /// Each damaged record's raw key and what is wrong with it.
        records: Vec<(String, String)>,
    },
    /// A stored record could not be decoded (corruption or version skew).
    #[error("store record {key}: {message}")]
    Corrupt {
        /// Raw key.
        key: String,
        /// What failed.
        message: String,
    },
}

/// A change notification: this key now has this generation (or status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Key that changed.
    pub key: ObjectKey,
    /// Generation after the change.
    pub generation: i64,
    /// True when only the status changed.
    pub status_only: bool,
}

/// Records: `Kind/namespace/name` → [`StoredRecord`] JSON.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// Status: `Kind/namespace/name` → status JSON.
const STATUS: TableDefinition<&str, &[u8]> = TableDefinition::new("status");
/// Format version of stored records.
const FORMAT: u32 = 1;
/// Events kept in memory.
const EVENT_RING: usize = 1000;
/// Longest event message kept (bytes): the ring holds at most
/// `EVENT_RING × EVENT_MESSAGE_MAX`, whatever a broken file says.
pub const EVENT_MESSAGE_MAX: usize = 4096;

/// Cut `text` to at most `max` bytes (at a character boundary), saying how
/// much was left out.
pub fn cap_text(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("… ({cut} more bytes not kept)"));
}

/// The on-disk form of a record (status lives in its own table).
#[derive(Serialize, Deserialize)]
struct StoredRecord {
    format: u32,
    key: ObjectKey,
    generation: i64,
    source: SourceId,
    hash: String,
    object: Value,
    deleted: bool,
    updated_ms: u64,
}

impl StoredRecord {
    /// `record`'s on-disk JSON (status excluded).
    fn json(record: &Record) -> Vec<u8> {
        let stored = StoredRecord {
            format: FORMAT,
            key: record.key.clone(),
            generation: record.generation,
            source: record.source.clone(),
            hash: record.hash.clone(),
            object: record.object.clone(),
            deleted: record.deleted,
            updated_ms: record.updated_ms,
        };
        serde_json::to_vec(&stored).expect("records serialize")
    }
}

/// The store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Store {
    path: PathBuf,
    db: Database,
    /// Serialises mutations (read-decide-write must be atomic).
    writer: Mutex<()>,
    /// Every record, its JSON kept as text: a parsed `Value` tree costs
    /// several times its text, and 10,000 objects must fit a small node.
    index: RwLock<BTreeMap<ObjectKey, Entry>>,
    events: Mutex<VecDeque<Event>>,
    changes: broadcast::Sender<Change>,
    /// Bumped by every committed change of desired state (not status): a
    /// snapshot is due when it moved.
    version: std::sync::atomic::AtomicU64,
    /// Test hook run between a batch's checks and its commit.
    fail_point: Mutex<Option<FailPoint>>,
    /// Run around each commit ([`Store::set_commit_hook`]).
    commit_hook: Mutex<Option<CommitHook>>,
    /// Bumped when a write of the index ends (under its lock): read under
    /// the read lock, it says exactly which index a reader saw.
    index_changes: AtomicU64,
    /// The records [`Store::list_shared`] decoded, with the texts they
    /// were decoded from: an entry whose texts did not change is not
    /// decoded again. Empty until a reader asks (the command line).
    decoded: Mutex<DecodedIndex>,
    _lock: File,
}

/// A write lock of the index that bumps [`Store::index_changes`] when it
/// ends, before the lock is released.
struct IndexWrite<'a> {
    guard: std::sync::RwLockWriteGuard<'a, BTreeMap<ObjectKey, Entry>>,
    changes: &'a AtomicU64,
}

impl std::ops::Deref for IndexWrite<'_> {
    type Target = BTreeMap<ObjectKey, Entry>;
    fn deref(&self) -> &Self::Target {
        &self.guard
    }
}

impl std::ops::DerefMut for IndexWrite<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.guard
    }
}

impl Drop for IndexWrite<'_> {
    fn drop(&mut self) {
        // Runs before the guard field is dropped: still under the lock.
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// What [`Store::list_shared`] decoded.
#[derive(Default)]
struct DecodedIndex {
    /// The [`Store::index_changes`] `all` was made at.
    at: Option<u64>,
    all: Vec<Arc<Record>>,
    by_key: HashMap<ObjectKey, Decoded>,
}

/// A record [`Store::list_shared`] decoded, and what it came from.
struct Decoded {
    object: Arc<str>,
    status: Option<Arc<str>>,
    generation: i64,
    updated_ms: u64,
    record: Arc<Record>,
}

/// A hook [`Store::transact`] calls with the batch's keys after the batch's
/// checks passed and before its commit, with the writer lock held. Inert
/// unless a test sets one ([`Store::set_fail_point`]): it lets a test hold a
/// batch exactly where a racing writer would do harm.
pub type FailPoint = Arc<dyn Fn(&[ObjectKey]) + Send + Sync>;

/// Called just before each commit of desired state, under the writer
/// lock (so in commit order), with the records whose generation changes:
/// new versions and tombstones ([`crate::history`] logs them). What it
/// returns is called once the commit is over (still under the lock), with
/// whether it succeeded.
pub type CommitHook = Arc<dyn Fn(&[&Record]) -> CommitDone + Send + Sync>;
/// The second half of a [`CommitHook`]: `true` when the commit succeeded.
pub type CommitDone = Box<dyn FnOnce(bool) + Send>;

/// A record as the index keeps it.
#[derive(Debug, Clone)]
struct Entry {
    generation: i64,
    source: SourceId,
    hash: String,
    object: Arc<str>,
    status: Option<Arc<str>>,
    deleted: bool,
    updated_ms: u64,
}

impl Entry {
    fn of(r: &Record) -> Entry {
        Entry {
            generation: r.generation,
            source: r.source.clone(),
            hash: r.hash.clone(),
            object: r.object.to_string().into(),
            status: r.status.as_ref().map(|s| s.to_string().into()),
            deleted: r.deleted,
            updated_ms: r.updated_ms,
        }
    }
    fn record(&self, key: &ObjectKey) -> Record {
        Record {
            key: key.clone(),
            generation: self.generation,
            source: self.source.clone(),
            hash: self.hash.clone(),
            object: serde_json::from_str(&self.object).expect("the index holds JSON it wrote"),
            status: self
                .status
                .as_deref()
                .map(|s| serde_json::from_str(s).expect("the index holds JSON it wrote")),
            deleted: self.deleted,
            updated_ms: self.updated_ms,
        }
    }
}

/// redb's page cache; the index answers reads, so a small one suffices.
const CACHE_BYTES: usize = 8 << 20;

/// Hold the store's lock file (`STORE.lock`) exclusively: a second
/// process on the same store is refused.
pub(crate) fn lock(path: &Path) -> Result<File, StoreError> {
    let io = |e: &dyn std::fmt::Display| StoreError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let lock_path = path.with_extension("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io(&e))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(io(&format!(
            "in use by another process (lock {} is held): is a node running on this state directory?",
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io(&e)),
    }
}

fn db_key(key: &ObjectKey) -> String {
    format!("{}/{}/{}", key.kind.as_str(), key.namespace, key.name)
}

impl Store {
    /// Open (or create) the store at `path` (a file), loading its index.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let io = |e: &dyn std::fmt::Display| StoreError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
        }
        let lock = lock(path)?;
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            return Err(StoreError::Damaged {
                path: path.display().to_string(),
                summary: "the file is empty (0 bytes): every object it held is gone from it".into(),
                records: Vec::new(),
            });
        }
        let damaged = |summary: String| StoreError::Damaged {
            path: path.display().to_string(),
            summary,
            records: Vec::new(),
        };
        let opened = quietly(|| -> Result<(Database, Loaded), StoreError> {
            let db = Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(path)
                .map_err(|e| damaged(format!("the database cannot be opened: {e}")))?;
            // Make sure both tables exist, so that readers never fail on them.
            {
                let tx = db.begin_write().map_err(|e| io(&e))?;
                tx.open_table(RECORDS).map_err(|e| io(&e))?;
                tx.open_table(STATUS).map_err(|e| io(&e))?;
                tx.commit().map_err(|e| io(&e))?;
            }
            let loaded = load(&db).map_err(|e| damaged(format!("reading it failed: {e}")))?;
            Ok((db, loaded))
        });
        let (db, loaded) = match opened {
            Ok(r) => r?,
            Err(panic) => return Err(damaged(format!("the database is inconsistent ({panic})"))),
        };
        // Desired state is the owner's business: readable by the node's
        // user only, whatever the umask made of it (an older store too).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io(&e))?;
        }
        if !loaded.damaged.is_empty() {
            let n = loaded.damaged.len();
            let first: Vec<_> = loaded
                .damaged
                .iter()
                .take(5)
                .map(|(k, why)| format!("{k} ({why})"))
                .collect();
            return Err(StoreError::Damaged {
                path: path.display().to_string(),
                summary: format!(
                    "{n} record{} fail their checks: {}{}",
                    if n == 1 { "" } else { "s" },
                    first.join("; "),
                    if n > 5 { "; …" } else { "" }
                ),
                records: loaded.damaged,
            });
        }
        for (key, why) in &loaded.status_dropped {
            warn!(key = %key, problem = %why, "stored status is damaged: dropped (it is observed again)");
        }
        let index = loaded.index;
        let (changes, _) = broadcast::channel(4096);
        Ok(Store {
            path: path.to_path_buf(),
            db,
            writer: Mutex::new(()),
            index: RwLock::new(index),
            events: Mutex::new(VecDeque::new()),
            changes,
            version: std::sync::atomic::AtomicU64::new(0),
            fail_point: Mutex::new(None),
            commit_hook: Mutex::new(None),
            index_changes: AtomicU64::new(0),
            decoded: Mutex::new(DecodedIndex::default()),
            _lock: lock,
        })
    }

    fn io_err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn notify(&self, change: Change) {
        // No receivers is fine.
        let _ = self.changes.send(change);
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ObjectKey, Entry>> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_index(&self) -> IndexWrite<'_> {
        IndexWrite {
            guard: self.index.write().unwrap_or_else(|p| p.into_inner()),
            changes: &self.index_changes,
        }
    }

    /// Accept `obj` from `source`: bump the generation if its hash differs
    /// from the stored one (or it was deleted/absent), persist durably, then
    /// notify subscribers. Idempotent for identical content; identical
    /// content from another source only records the new source.
    pub fn apply(&self, obj: &AnyObject, source: &SourceId) -> Result<Applied, StoreError> {
        self.transact(|tx| tx.apply(obj, source, None))
            .map(|r| r.expect("no generation asked, none refused"))
    }

    /// Accept a signed `obj` at the generation its author signed, so the
    /// stored copy keeps a valid signature: identical content is a no-op,
    /// as in [`Store::apply`]; otherwise `generation` must be above the
    /// stored one, tombstones included (no rollback, no resurrection of a
    /// later deletion), else `Ok(Err(stored generation))` and nothing
    /// changes.
    pub fn apply_signed(
        &self,
        obj: &AnyObject,
        source: &SourceId,
        generation: i64,
    ) -> Result<Result<Applied, i64>, StoreError> {
        self.transact(|tx| tx.apply(obj, source, Some(generation)))
    }

    /// Tombstone `key` (generation + 1), durably. `Ok(None)` if absent or
    /// already deleted.
    pub fn delete(&self, key: &ObjectKey, source: &SourceId) -> Result<Option<i64>, StoreError> {
        self.transact(|tx| tx.delete(key, source, None))
            .map(|r| r.expect("no generation asked, none refused"))
    }

    /// Run `batch` under the writer lock and commit what it staged in one
    /// durable transaction if it returns `Ok`; nothing is written when it
    /// returns `Err`. Subscribers are notified after the commit.
    pub fn transact<T, E>(
        &self,
        batch: impl FnOnce(&mut Txn<'_>) -> Result<T, E>,
    ) -> Result<Result<T, E>, StoreError> {
        self.run_batch(batch, true)
    }

    /// Run `batch` like [`Store::transact`] and throw away what it staged:
    /// what a batch would do, with nothing changed.
    pub fn preview<T, E>(
        &self,
        batch: impl FnOnce(&mut Txn<'_>) -> Result<T, E>,
    ) -> Result<Result<T, E>, StoreError> {
        self.run_batch(batch, false)
    }

    /// Set (or clear) the hook run between a batch's checks and its commit.
    pub fn set_fail_point(&self, hook: Option<FailPoint>) {
        *self.fail_point.lock().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    /// Set (or clear) the hook run around each commit of desired state.
    pub fn set_commit_hook(&self, hook: Option<CommitHook>) {
        *self.commit_hook.lock().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    fn run_batch<T, E>(
        &self,
        batch: impl FnOnce(&mut Txn<'_>) -> Result<T, E>,
        commit: bool,
    ) -> Result<Result<T, E>, StoreError> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut tx = Txn {
            store: self,
            staged: BTreeMap::new(),
            order: Vec::new(),
        };
        let out = match batch(&mut tx) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        if !commit || tx.order.is_empty() {
            return Ok(Ok(out));
        }
        let hook = self
            .fail_point
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(hook) = hook {
            hook(&tx.order);
        }
        let Txn { staged, order, .. } = tx;
        let wtx = self.db.begin_write().map_err(|e| self.io_err(e))?;
        {
            let mut t = wtx.open_table(RECORDS).map_err(|e| self.io_err(e))?;
            let mut st = wtx.open_table(STATUS).map_err(|e| self.io_err(e))?;
            for key in &order {
                let record = &staged[key];
                let bytes = seal::seal(&StoredRecord::json(record));
                let k = db_key(key);
                t.insert(k.as_str(), bytes.as_slice())
                    .map_err(|e| self.io_err(e))?;
                if record.deleted {
                    st.remove(k.as_str()).map_err(|e| self.io_err(e))?;
                }
            }
        }
        let hook = self
            .commit_hook
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let done = hook.and_then(|hook| {
            let index = self.read_index();
            let records: Vec<&Record> = order
                .iter()
                .map(|k| &staged[k])
                .filter(|r| index.get(&r.key).map(|e| e.generation) != Some(r.generation))
                .collect();
            drop(index);
            (!records.is_empty()).then(|| hook(&records))
        });
        let committed = wtx.commit();
        if let Some(done) = done {
            done(committed.is_ok());
        }
        committed.map_err(|e| self.io_err(e))?;
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut changed = Vec::new();
        {
            let mut index = self.write_index();
            for key in &order {
                let record = &staged[key];
                let before = index.get(key).map(|e| e.generation);
                index.insert(key.clone(), Entry::of(record));
                if before != Some(record.generation) {
                    changed.push((key.clone(), record.generation));
                }
            }
        }
        for (key, generation) in changed {
            self.notify(Change {
                key,
                generation,
                status_only: false,
            });
        }
        Ok(Ok(out))
    }

    /// How many batches of desired state this store has committed since it
    /// was opened.
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every record, tombstones included, without status (what a snapshot
    /// keeps).
    pub fn all_records(&self) -> Vec<Record> {
        let picked: Vec<(ObjectKey, Entry)> = self
            .read_index()
            .iter()
            .map(|(k, e)| {
                let mut e = e.clone();
                e.status = None;
                (k.clone(), e)
            })
            .collect();
        picked.iter().map(|(k, e)| e.record(k)).collect()
    }

    /// Write `records` as they are (generation, source, hash and time
    /// kept), replacing what is stored under their keys: recovery only
    /// (`deorch node recover-store`), into a store no node runs on.
    pub fn restore(&self, records: &[Record]) -> Result<(), StoreError> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let wtx = self.db.begin_write().map_err(|e| self.io_err(e))?;
        {
            let mut t = wtx.open_table(RECORDS).map_err(|e| self.io_err(e))?;
            for record in records {
                let bytes = seal::seal(&StoredRecord::json(record));
                t.insert(db_key(&record.key).as_str(), bytes.as_slice())
                    .map_err(|e| self.io_err(e))?;
            }
        }
        wtx.commit().map_err(|e| self.io_err(e))?;
        let mut index = self.write_index();
        for record in records {
            index.insert(
                record.key.clone(),
                Entry::of(&Record {
                    status: None,
                    ..record.clone()
                }),
            );
        }
        Ok(())
    }

    /// The record of `key`, tombstones included.
    pub fn get(&self, key: &ObjectKey) -> Option<Record> {
        self.read_index().get(key).map(|e| e.record(key))
    }

    /// Where the stored version of `key` came from and whether it is a
    /// tombstone, without decoding the object.
    pub fn provenance(&self, key: &ObjectKey) -> Option<(SourceId, bool)> {
        self.read_index()
            .get(key)
            .map(|e| (e.source.clone(), e.deleted))
    }

    /// Live (non-deleted) records, optionally of one kind, sorted by key.
    pub fn list(&self, kind: Option<Kind>) -> Vec<Record> {
        // Copied under the lock (shared text: a count each), decoded after
        // it: decoding 40,000 objects under the read lock stalled every
        // writer, and every reader queued behind them, for seconds.
        let picked: Vec<(ObjectKey, Entry)> = self
            .read_index()
            .iter()
            .filter(|(k, e)| !e.deleted && kind.is_none_or(|kind| k.kind == kind))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        picked.iter().map(|(k, e)| e.record(k)).collect()
    }

    /// Every live record, decoded once and shared: what changed since the
    /// last call is decoded again, the rest is the same `Arc`. For readers
    /// that look at everything often (the command line's every keystroke):
    /// decoding 10,000 objects each time took ~45 ms.
    pub fn list_shared(&self) -> Vec<Arc<Record>> {
        use std::sync::atomic::Ordering;
        let mut cache = self.decoded.lock().unwrap_or_else(|p| p.into_inner());
        let cache = &mut *cache;
        // Under the read lock: what is unchanged is taken as it is, what
        // changed is copied (text: a count each) to be decoded after it.
        let mut out: Vec<Option<Arc<Record>>> = Vec::new();
        let mut changed: Vec<(usize, ObjectKey, Entry)> = Vec::new();
        let at = {
            let index = self.read_index();
            let at = self.index_changes.load(Ordering::Acquire);
            if cache.at == Some(at) {
                return cache.all.clone();
            }
            out.reserve(index.len());
            for (k, e) in index.iter().filter(|(_, e)| !e.deleted) {
                let same = cache.by_key.get(k).filter(|d| {
                    Arc::ptr_eq(&d.object, &e.object)
                        && match (&d.status, &e.status) {
                            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                            (None, None) => true,
                            _ => false,
                        }
                        && d.generation == e.generation
                        && d.updated_ms == e.updated_ms
                });
                match same {
                    Some(d) => out.push(Some(d.record.clone())),
                    None => {
                        changed.push((out.len(), k.clone(), e.clone()));
                        out.push(None);
                    }
                }
            }
            at
        };
        for (i, k, e) in changed {
            let record = Arc::new(e.record(&k));
            out[i] = Some(record.clone());
            cache.by_key.insert(
                k,
                Decoded {
                    object: e.object,
                    status: e.status,
                    generation: e.generation,
                    updated_ms: e.updated_ms,
                    record,
                },
            );
        }
        let all: Vec<Arc<Record>> = out.into_iter().flatten().collect();
        if cache.by_key.len() > all.len() {
            let live: std::collections::HashSet<&ObjectKey> = all.iter().map(|r| &r.key).collect();
            cache.by_key.retain(|k, _| live.contains(k));
        }
        cache.at = Some(at);
        cache.all = all.clone();
        all
    }

    /// Number of live objects.
    pub fn len(&self) -> usize {
        self.read_index().values().filter(|e| !e.deleted).count()
    }

    /// Whether the store holds no live object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live and tombstoned keys with their generations (for resync).
    pub fn generations(&self) -> Vec<(ObjectKey, i64, bool)> {
        self.read_index()
            .iter()
            .map(|(k, e)| (k.clone(), e.generation, e.deleted))
            .collect()
    }

    /// Live records whose current version came from `source`.
    pub fn list_by_source(&self, source: &SourceId) -> Vec<Record> {
        let picked: Vec<(ObjectKey, Entry)> = self
            .read_index()
            .iter()
            .filter(|(_, e)| !e.deleted && e.source == *source)
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        picked.iter().map(|(k, e)| e.record(k)).collect()
    }

    /// Record the status of `key` (durably; does not change the generation).
    /// Ignored for tombstoned or absent keys, and when unchanged.
    pub fn set_status(&self, key: &ObjectKey, status: Value) -> Result<(), StoreError> {
        self.update_status(key, |_| Some(status))
    }

    /// Read, change and write the status of `key` as one step: `f` gets
    /// the live record (status included) and returns the new status, or
    /// `None` to leave it. No other status write of any key comes in
    /// between, so two writers of one status (the agent that carries a
    /// relocation out and the reconciler that reports on it) never undo
    /// each other's fields. `f` must not call back into the store's
    /// writers. Ignored for tombstoned or absent keys, and when unchanged.
    pub fn update_status(
        &self,
        key: &ObjectKey,
        f: impl FnOnce(&Record) -> Option<Value>,
    ) -> Result<(), StoreError> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(record) = self.get(key).filter(|r| !r.deleted) else {
            return Ok(());
        };
        let Some(status) = f(&record) else {
            return Ok(());
        };
        let text = status.to_string();
        let generation = match self.read_index().get(key) {
            Some(e) if !e.deleted => {
                if e.status.as_deref() == Some(text.as_str()) {
                    return Ok(());
                }
                e.generation
            }
            _ => return Ok(()),
        };
        let k = db_key(key);
        let tx = self.db.begin_write().map_err(|e| self.io_err(e))?;
        {
            let mut t = tx.open_table(STATUS).map_err(|e| self.io_err(e))?;
            t.insert(k.as_str(), seal::seal(text.as_bytes()).as_slice())
                .map_err(|e| self.io_err(e))?;
        }
        tx.commit().map_err(|e| self.io_err(e))?;
        if let Some(e) = self.write_index().get_mut(key) {
            e.status = Some(text.into());
        }
        self.notify(Change {
            key: key.clone(),
            generation,
            status_only: true,
        });
        Ok(())
    }

    /// Drop tombstones older than `horizon`.
    pub fn gc_tombstones(&self, horizon: SystemTime) -> Result<usize, StoreError> {
        let horizon_ms = crate::clock::unix_ms(horizon);
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let old: Vec<ObjectKey> = self
            .read_index()
            .iter()
            .filter(|(_, e)| e.deleted && e.updated_ms < horizon_ms)
            .map(|(k, _)| k.clone())
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let tx = self.db.begin_write().map_err(|e| self.io_err(e))?;
        {
            let mut t = tx.open_table(RECORDS).map_err(|e| self.io_err(e))?;
            for k in &old {
                t.remove(db_key(k).as_str()).map_err(|e| self.io_err(e))?;
            }
        }
        tx.commit().map_err(|e| self.io_err(e))?;
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut index = self.write_index();
        for k in &old {
            index.remove(k);
        }
        Ok(old.len())
    }

    /// Add an event (kept in a bounded in-memory ring, newest last). When
    /// the ring is full the oldest `Normal` event goes first, so a burst of
    /// applies does not push out the warnings an operator must see.
    pub fn record_event(&self, mut event: Event) {
        cap_text(&mut event.message, EVENT_MESSAGE_MAX);
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() >= EVENT_RING {
            match events.iter().position(|e| e.level != "Warning") {
                Some(i) => {
                    events.remove(i);
                }
                None => {
                    events.pop_front();
                }
            }
        }
        events.push_back(event);
    }

    /// Events about `key`, or about the source `key`'s current version came
    /// from, or all events when `key` is `None`; oldest first.
    pub fn events(&self, key: Option<&ObjectKey>) -> Vec<Event> {
        let source = key.and_then(|k| self.read_index().get(k).map(|e| e.source.clone()));
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events
            .iter()
            .filter(|e| match key {
                None => true,
                Some(k) => {
                    e.object.as_ref() == Some(k) || (e.source.is_some() && e.source == source)
                }
            })
            .cloned()
            .collect()
    }

    /// Subscribe to changes (a `tokio::sync::broadcast` channel; a lagging
    /// receiver should rescan with [`Store::list`]). Notifications are sent
    /// after the change is durable.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

/// A batch in progress ([`Store::transact`]): reads see the store plus what
/// this batch staged; writes are staged and committed together.
pub struct Txn<'s> {
    store: &'s Store,
    staged: BTreeMap<ObjectKey, Record>,
    /// Staged keys in the order first written.
    order: Vec<ObjectKey>,
}

impl Txn<'_> {
    /// The record of `key` as the batch sees it, tombstones included.
    pub fn get(&self, key: &ObjectKey) -> Option<Record> {
        match self.staged.get(key) {
            Some(r) => Some(r.clone()),
            None => self.store.get(key),
        }
    }

    /// Live records as the batch sees them, optionally of one kind.
    pub fn list(&self, kind: Option<Kind>) -> Vec<Record> {
        let mut out: BTreeMap<ObjectKey, Record> = self
            .store
            .list(kind)
            .into_iter()
            .map(|r| (r.key.clone(), r))
            .collect();
        for (k, r) in &self.staged {
            if kind.is_some_and(|kind| k.kind != kind) {
                continue;
            }
            if r.deleted {
                out.remove(k);
            } else {
                out.insert(k.clone(), r.clone());
            }
        }
        out.into_values().collect()
    }

    /// Live records whose current version (as the batch sees it) came
    /// from `source`.
    pub fn list_by_source(&self, source: &SourceId) -> Vec<Record> {
        let mut out: BTreeMap<ObjectKey, Record> = self
            .store
            .list_by_source(source)
            .into_iter()
            .map(|r| (r.key.clone(), r))
            .collect();
        for (k, r) in &self.staged {
            if r.deleted || r.source != *source {
                out.remove(k);
            } else {
                out.insert(k.clone(), r.clone());
            }
        }
        out.into_values().collect()
    }

    /// What the batch has staged so far, in the order first written
    /// (a dry run's view of the records it would write).
    pub fn staged(&self) -> Vec<Record> {
        self.order.iter().map(|k| self.staged[k].clone()).collect()
    }

    fn stage(&mut self, record: Record) {
        if !self.staged.contains_key(&record.key) {
            self.order.push(record.key.clone());
        }
        self.staged.insert(record.key.clone(), record);
    }

    /// Stage `obj` from `source`. `at: None`: the next generation when the
    /// content changed. `at: Some(g)`: generation `g` (a signed document
    /// keeps the generation its author signed), which must be above the
    /// stored one, tombstones included, else `Err(stored generation)`.
    /// Identical content is a no-op either way (only a new source is
    /// recorded).
    pub fn apply(
        &mut self,
        obj: &AnyObject,
        source: &SourceId,
        at: Option<i64>,
    ) -> Result<Applied, i64> {
        let key = ObjectKey::of(obj);
        let mut object = obj.to_value();
        let hash = content_hash(&object);
        let current = self.get(&key);
        if let Some(cur) = current.as_ref().filter(|c| !c.deleted && c.hash == hash) {
            let generation = cur.generation;
            if cur.source != *source {
                let mut moved = cur.clone();
                moved.source = source.clone();
                self.stage(moved);
            }
            return Ok(Applied {
                key,
                generation,
                changed: false,
            });
        }
        let stored = current.as_ref().map_or(0, |c| c.generation);
        let generation = match at {
            None => stored + 1,
            Some(g) if g > stored => g,
            Some(_) => return Err(stored),
        };
        strip_server_fields(&mut object, generation);
        self.stage(Record {
            key: key.clone(),
            generation,
            source: source.clone(),
            hash,
            object,
            // Status survives spec changes, not deletion.
            status: current.filter(|c| !c.deleted).and_then(|c| c.status),
            deleted: false,
            updated_ms: now_ms(),
        });
        Ok(Applied {
            key,
            generation,
            changed: true,
        })
    }

    /// Stage the deletion of `key` by `source`: a tombstone at the next
    /// generation (`at: None`) or at `at`, which must be above the stored
    /// generation (a signed deletion), else `Err(stored generation)`.
    /// `Ok(None)` when `key` is absent or already deleted.
    pub fn delete(
        &mut self,
        key: &ObjectKey,
        source: &SourceId,
        at: Option<i64>,
    ) -> Result<Option<i64>, i64> {
        let Some(cur) = self.get(key).filter(|c| !c.deleted) else {
            return Ok(None);
        };
        let generation = match at {
            None => cur.generation + 1,
            Some(g) if g > cur.generation => g,
            Some(_) => return Err(cur.generation),
        };
        let mut object = cur.object.clone();
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("generation".into(), Value::from(generation));
        }
        self.stage(Record {
            generation,
            source: source.clone(),
            object,
            status: None,
            deleted: true,
            updated_ms: now_ms(),
            ..cur
        });
        Ok(Some(generation))
    }
}

impl Txn<'_> {
    /// Mark the tombstone staged for `key` as a purge
    /// ([`crate::model::PURGE_ANNOTATION`]): the object's volumes are
    /// destroyed at once instead of retained.
    pub fn purge(&mut self, key: &ObjectKey) {
        let Some(record) = self.staged.get_mut(key).filter(|r| r.deleted) else {
            return;
        };
        if let Some(meta) = record
            .object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
        {
            let annotations = meta
                .entry("annotations")
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(a) = annotations.as_object_mut() {
                a.insert(crate::model::PURGE_ANNOTATION.into(), Value::from("true"));
            }
        }
    }
}

/// Set `metadata.generation`; drop what the store, not the author, owns.
fn strip_server_fields(object: &mut Value, generation: i64) {
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in ["resourceVersion", "uid", "managedFields", "selfLink"] {
                meta.remove(f);
            }
            meta.insert("generation".into(), Value::from(generation));
        }
    }
}

#[cfg(test)]
mod tests;
