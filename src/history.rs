//! History of desired state: every version the store accepts, kept in an
//! append-only, hash-chained log beside it (`STATE_DIR/history.log`).
//!
//! The store keeps the newest version of each object; this log keeps the
//! versions before it too, with who wrote them (source), who signed them
//! (the signer's address, for a signed document) and when, so that an
//! operator can list and diff them (`deorch history`) and anyone holding
//! the cluster owner's address can check the signed ones offline
//! (`deorch verify-history`).
//!
//! ```text
//! file    = MAGIC(8) record*
//! record  = len:u32le  !len:u32le  payload[len]  hash[32]
//! hash    = SHA-256(previous record's hash ‖ len:u32le ‖ payload)   (32 zero bytes before the first)
//! payload = JSON of an [`Entry`]: a version (kind, namespace, name,
//!           generation, source, signer, time, the whole stored object
//!           with its signature annotations) or an anchor
//! ```
//!
//! - **Where it is written**: the store calls the [`History::hook`]
//!   around every commit of desired state, under its writer lock, with
//!   the records whose generation changes (applies and tombstones from
//!   every source: admission is the only writer), so the log's order is
//!   the commit order. The records are serialised just before the store
//!   commits and written (one `write`) once the commit succeeded, before
//!   the apply returns: a crash of the node loses no accepted version. A
//!   thread of the log ([`Syncer`]) `fdatasync`s 2 ms after, one flush
//!   covering every record written before it started, so an apply does
//!   not wait for a second flush (`deorch bench history`); what a power
//!   cut can take is the records of the last few milliseconds, never the
//!   version the store holds (logged back at the next start, below). A
//!   failed append is logged and does not undo the commit (the store
//!   holds the truth).
//! - **Crash safety**: a record cut short by a crash (an incomplete tail)
//!   is truncated when the node opens the log, never taken as a version; a
//!   complete record that fails its hash is damage, not a torn write: the
//!   node sets the file aside (`history.log.damaged-<ms>`) and starts a new
//!   log whose first record is an anchor naming the last good hash. At
//!   start the node logs, marked `recovered`, every stored version the log
//!   lacks, so that the log ends with what the store holds (the first
//!   start with a history, a store recovered from an older snapshot, or a
//!   power cut that took the last flush).
//! - **Retention**: at most `keep` versions per object and about
//!   `max_bytes` in all; the newest version of every object is always
//!   kept. Compaction rewrites the file (temporary file, fsync, rename)
//!   starting with an anchor that holds the hash of the head of the chain
//!   it replaced, the kept records re-chained behind it.
//! - **What the chain proves**: a record changed, removed or reordered
//!   after it was written breaks the hash of the record after it (or its
//!   own). Whoever can rewrite the file can recompute the chain: what no
//!   one but the signer can forge is a signed version's signature, which
//!   `verify-history` checks against the cluster owner's address.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::identity::signed::{SIGNATURE_ANNOTATION, SIGNER_ANNOTATION};
use crate::model::{AccessPolicySpec, Kind, Manifest};
use crate::store::{Record, Store};

/// File name of the log inside the state directory.
pub const FILE: &str = "history.log";
/// The first bytes of every log.
pub const MAGIC: &[u8; 8] = b"DHIST\0\0\x01";
/// Longest payload accepted (a manifest is far smaller).
pub const MAX_PAYLOAD: usize = 16 << 20;
/// Bytes of a record around its payload: two length words and the hash.
pub const FRAME_OVERHEAD: usize = 8 + 32;
/// Versions kept per object by default.
pub const DEFAULT_KEEP: usize = 100;
/// Bytes the log may take by default.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// How much history a node keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Versions kept per object; 0 turns the log off.
    pub keep: usize,
    /// About how many bytes the log may take; the newest version of every
    /// object is kept even past it.
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: DEFAULT_KEEP,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Entry {
    /// A version the store accepted.
    Version(Version),
    /// The start of a rewritten log (compaction, or a damaged log set
    /// aside).
    Anchor(Anchor),
}

impl Entry {
    /// The entry's sequence number (increasing through the log's life).
    pub fn seq(&self) -> u64 {
        match self {
            Entry::Version(v) => v.seq,
            Entry::Anchor(a) => a.seq,
        }
    }
}

/// A version of an object as the store accepted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    /// Position in the log's whole life (gaps: versions retention dropped).
    pub seq: u64,
    /// The object's kind, e.g. `VirtualMachine`.
    pub kind: String,
    /// Its namespace ("" for cluster-scoped kinds).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The generation stored.
    pub generation: i64,
    /// The store's content hash of it (SHA-256 of the canonical JSON of
    /// labels, annotations and spec).
    #[serde(default)]
    pub hash: String,
    /// Who wrote it: `file:PATH`, `api`, `push`, `git:…`, `gossip`, ….
    pub source: String,
    /// The signer's address, for a signed document (verified by admission
    /// before it was stored; `verify-history` checks it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// When the store accepted it (ms since the Unix epoch).
    pub time_ms: u64,
    /// A tombstone (its object is the last version's, not a signed
    /// document).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Logged at the node's start from the store, not at the commit (the
    /// log lacked it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
    /// The whole stored object, signature annotations included.
    pub object: Value,
}

impl Version {
    /// `KIND/NAMESPACE/NAME` (`KIND/NAME` when cluster-scoped).
    pub fn key_text(&self) -> String {
        if self.namespace.is_empty() {
            format!("{}/{}", self.kind, self.name)
        } else {
            format!("{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A [`Version`] serialised from a store record without copying it: the
/// same JSON as `Entry::Version` (an apply pays for this).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionOf<'a> {
    #[serde(rename = "type")]
    tag: &'static str,
    seq: u64,
    kind: &'static str,
    namespace: &'a str,
    name: &'a str,
    generation: i64,
    hash: &'a str,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    signer: Option<String>,
    time_ms: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    recovered: bool,
    object: &'a Value,
}

impl<'a> VersionOf<'a> {
    fn of(record: &'a Record, seq: u64, recovered: bool) -> VersionOf<'a> {
        let signer = (!record.deleted)
            .then(|| annotation(&record.object, SIGNER_ANNOTATION))
            .flatten()
            .filter(|_| annotation(&record.object, SIGNATURE_ANNOTATION).is_some());
        VersionOf {
            tag: "version",
            seq,
            kind: record.key.kind.as_str(),
            namespace: &record.key.namespace,
            name: &record.key.name,
            generation: record.generation,
            hash: &record.hash,
            source: &record.source.0,
            signer,
            time_ms: record.updated_ms,
            deleted: record.deleted,
            recovered,
            object: &record.object,
        }
    }
}

fn annotation(object: &Value, name: &str) -> Option<String> {
    object
        .pointer("/metadata/annotations")?
        .get(name)?
        .as_str()
        .map(str::to_string)
}

/// The first record of a rewritten log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Anchor {
    /// Position in the log's whole life.
    pub seq: u64,
    /// When the log was rewritten.
    pub time_ms: u64,
    /// Why: `compaction`, or the damage that was set aside.
    pub reason: String,
    /// Hex hash of the last (good) record of the log it replaced: a copy
    /// of that log taken earlier can be checked against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_head: Option<String>,
    /// Records the log it replaced held (good ones).
    pub previous_records: u64,
    /// Versions retention dropped at this rewrite.
    pub dropped: u64,
}

/// One record read from a log.
#[derive(Debug, Clone)]
pub struct Frame {
    /// 1-based position in the file.
    pub index: u64,
    /// Byte offset of its length word.
    pub offset: u64,
    /// The raw payload.
    pub payload: Vec<u8>,
    /// Its chain hash.
    pub hash: [u8; 32],
    /// The payload, decoded.
    pub entry: Entry,
}

impl Frame {
    /// Bytes the record takes in the file.
    pub fn size(&self) -> u64 {
        (self.payload.len() + FRAME_OVERHEAD) as u64
    }

    /// How a message names this record: `record 5 (offset 1234, seq 5,
    /// VirtualMachine/default/web generation 3)`.
    pub fn name(&self) -> String {
        format!(
            "record {} (offset {}{})",
            self.index,
            self.offset,
            what(&self.entry)
        )
    }
}

/// `, seq S, KIND/NS/NAME generation G` (or `, seq S, anchor`).
fn what(entry: &Entry) -> String {
    match entry {
        Entry::Version(v) => format!(
            ", seq {}, {} generation {}",
            v.seq,
            v.key_text(),
            v.generation
        ),
        Entry::Anchor(a) => format!(", seq {}, anchor", a.seq),
    }
}

/// What is wrong with a log, at the first place it goes wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogProblem {
    /// The file does not start with [`MAGIC`].
    #[error("not a deorch history log (it does not start with the history magic bytes)")]
    NotALog,
    /// An incomplete record at the end: a write cut short by a crash.
    #[error("the last {bytes} bytes (from offset {offset}) are an incomplete record, a write cut short by a crash; the node truncates them when it opens the log")]
    TornTail {
        /// Where the incomplete record starts.
        offset: u64,
        /// Its bytes.
        bytes: u64,
    },
    /// A complete record that fails its checks.
    #[error("record {index} (offset {offset}{what}): {why}")]
    Damaged {
        /// 1-based position in the file.
        index: u64,
        /// Byte offset.
        offset: u64,
        /// `, seq …, KIND/NS/NAME generation G` when the payload decodes.
        what: String,
        /// What is wrong.
        why: String,
    },
}

/// A log read from its bytes: the records up to the first problem.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// The good records, in order.
    pub frames: Vec<Frame>,
    /// Byte offset just past the last good record.
    pub end: u64,
    /// The hash of the last good record (zeros when none).
    pub head: [u8; 32],
    /// What stopped the scan, if anything did.
    pub problem: Option<LogProblem>,
}

fn chain(prev: &[u8; 32], payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update((payload.len() as u32).to_le_bytes());
    h.update(payload);
    h.finalize().into()
}

/// The bytes of one record following `prev`, and its hash.
fn frame_bytes(prev: &[u8; 32], payload: &[u8]) -> (Vec<u8>, [u8; 32]) {
    let len = payload.len() as u32;
    let hash = chain(prev, payload);
    let mut out = Vec::with_capacity(payload.len() + FRAME_OVERHEAD);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&hash);
    (out, hash)
}

/// Read a log: every record up to the first problem (see [`LogProblem`]).
/// Checks each record's framing, its place in the hash chain, that its
/// payload decodes and that sequence numbers increase.
pub fn scan(bytes: &[u8]) -> Scan {
    let mut s = Scan::default();
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        s.problem = Some(LogProblem::NotALog);
        return s;
    }
    let mut at = MAGIC.len();
    s.end = at as u64;
    let mut last_seq: Option<u64> = None;
    while at < bytes.len() {
        let index = s.frames.len() as u64 + 1;
        let offset = at as u64;
        let rest = &bytes[at..];
        let torn = || LogProblem::TornTail {
            offset,
            bytes: rest.len() as u64,
        };
        if rest.len() < 8 {
            s.problem = Some(torn());
            return s;
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        let check = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let damaged = |what: String, why: String| LogProblem::Damaged {
            index,
            offset,
            what,
            why,
        };
        if check != !len {
            s.problem = Some(damaged(
                String::new(),
                format!("its length word ({len}) does not match its check word: the record's header was changed"),
            ));
            return s;
        }
        let len = len as usize;
        if len > MAX_PAYLOAD {
            s.problem = Some(damaged(
                String::new(),
                format!("length {len} is above the {MAX_PAYLOAD} a record may have"),
            ));
            return s;
        }
        if rest.len() < len + FRAME_OVERHEAD {
            s.problem = Some(torn());
            return s;
        }
        let payload = &rest[8..8 + len];
        let stored: [u8; 32] = rest[8 + len..8 + len + 32].try_into().expect("32 bytes");
        let entry: Result<Entry, _> = serde_json::from_slice(payload);
        let what = entry.as_ref().map(what).unwrap_or_default();
        if chain(&s.head, payload) != stored {
            s.problem = Some(damaged(
                what,
                if index == 1 {
                    "its hash does not match its content: the record was changed".into()
                } else {
                    "its hash does not follow from its content and the record before it: this record was changed, or one before it was changed, removed or reordered".into()
                },
            ));
            return s;
        }
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                s.problem = Some(damaged(what, format!("its payload does not decode: {e}")));
                return s;
            }
        };
        if let Some(prev) = last_seq.filter(|p| entry.seq() <= *p) {
            s.problem = Some(damaged(
                what,
                format!(
                    "sequence number {} does not follow {prev}: records are out of order",
                    entry.seq()
                ),
            ));
            return s;
        }
        if index > 1 && matches!(entry, Entry::Anchor(_)) {
            s.problem = Some(damaged(
                what,
                "an anchor is only ever the first record of a log".into(),
            ));
            return s;
        }
        // An anchor takes the next number while the versions it keeps
        // keep theirs: versions alone are in order.
        if let Entry::Version(v) = &entry {
            last_seq = Some(v.seq);
        }
        s.head = stored;
        at += len + FRAME_OVERHEAD;
        s.end = at as u64;
        s.frames.push(Frame {
            index,
            offset,
            payload: payload.to_vec(),
            hash: stored,
            entry,
        });
    }
    s
}

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading or writing the file failed.
    #[error("history log {path}: {message}")]
    Io {
        /// The log's path.
        path: String,
        /// What failed.
        message: String,
    },
}

/// Per object: `(seq, generation, content hash)` of each logged version,
/// oldest first.
type Versions = BTreeMap<(String, String, String), Vec<(u64, i64, String)>>;

/// Versions made ready before the store commits ([`History::prepare`]):
/// payloads with their numbers, not yet written.
pub struct Prepared {
    payloads: Vec<PreparedVersion>,
}

/// One version's payload, object key, number, generation and content hash.
type PreparedVersion = (Vec<u8>, (String, String, String), u64, i64, String);

struct Inner {
    file: Arc<File>,
    len: u64,
    head: [u8; 32],
    next_seq: u64,
    versions: Versions,
    /// Versions beyond `keep` of their object, summed.
    excess: usize,
    /// Bytes after the last rewrite (or at open): when what retention must
    /// keep is above `max_bytes`, the next rewrite waits for twice this.
    floor: u64,
}

/// The log a node writes (one per node; shared behind an `Arc`).
pub struct History {
    path: PathBuf,
    retention: Retention,
    syncer: Arc<Syncer>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("path", &self.path)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

fn key_of(v: &Version) -> (String, String, String) {
    (v.kind.clone(), v.namespace.clone(), v.name.clone())
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

impl History {
    /// Open (or create) the log at `path`: an incomplete last record is
    /// truncated; a damaged log is set aside and a new one started with
    /// an anchor (both logged as warnings).
    pub fn open(path: &Path, retention: Retention) -> Result<History, HistoryError> {
        let io = |e: &dyn std::fmt::Display| HistoryError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::state_file::write_with(path, MAGIC, crate::state_file::Options::private())
                    .map_err(|e| io(&e))?;
                MAGIC.to_vec()
            }
            Err(e) => return Err(io(&e)),
        };
        let mut s = scan(&bytes);
        match s.problem.clone() {
            None => {}
            Some(LogProblem::TornTail { offset, bytes }) => {
                warn!(path = %path.display(), offset, bytes, "history: an incomplete last record (a write cut short) is truncated");
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| io(&e))?;
                f.set_len(offset).map_err(|e| io(&e))?;
                f.sync_all().map_err(|e| io(&e))?;
            }
            Some(problem) => {
                let aside = path.with_file_name(format!(
                    "{}.damaged-{}",
                    path.file_name().and_then(|n| n.to_str()).unwrap_or(FILE),
                    now_ms()
                ));
                warn!(path = %path.display(), problem = %problem, kept = %aside.display(), "history: the log is damaged; it is set aside and a new log started");
                std::fs::rename(path, &aside).map_err(|e| io(&e))?;
                let next = s.frames.last().map_or(1, |f| f.entry.seq() + 1);
                let anchor = Entry::Anchor(Anchor {
                    seq: next,
                    time_ms: now_ms(),
                    reason: format!(
                        "the log before was damaged ({problem}); it was set aside as {}",
                        aside.display()
                    ),
                    previous_head: (!s.frames.is_empty()).then(|| hex::encode(s.head)),
                    previous_records: s.frames.len() as u64,
                    dropped: 0,
                });
                let payload = serde_json::to_vec(&anchor).expect("entries serialize");
                let (frame, _) = frame_bytes(&[0; 32], &payload);
                let mut bytes = MAGIC.to_vec();
                bytes.extend_from_slice(&frame);
                crate::state_file::write_with(path, &bytes, crate::state_file::Options::private())
                    .map_err(|e| io(&e))?;
                s = scan(&bytes);
            }
        }
        let inner = Self::index(path, &s, retention).map_err(|e| io(&e))?;
        let syncer = Syncer::start(inner.file.clone(), path).map_err(|e| io(&e))?;
        Ok(History {
            path: path.to_path_buf(),
            retention,
            syncer,
            inner: Mutex::new(inner),
        })
    }

    fn index(path: &Path, s: &Scan, retention: Retention) -> std::io::Result<Inner> {
        let mut versions: Versions = BTreeMap::new();
        for f in &s.frames {
            if let Entry::Version(v) = &f.entry {
                versions
                    .entry(key_of(v))
                    .or_default()
                    .push((v.seq, v.generation, v.hash.clone()));
            }
        }
        let excess = versions
            .values()
            .map(|v| v.len().saturating_sub(retention.keep))
            .sum();
        let file = Arc::new(OpenOptions::new().append(true).open(path)?);
        Ok(Inner {
            file,
            len: s.end,
            head: s.head,
            next_seq: s
                .frames
                .iter()
                .map(|f| f.entry.seq() + 1)
                .max()
                .unwrap_or(1),
            versions,
            excess,
            floor: s.end,
        })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Log, marked `recovered`, every stored version (tombstones too) the
    /// log lacks: an object it has never seen, or one whose last logged
    /// version is not the stored one (a crash cut the store's commit or
    /// the append short, or the store was recovered from an older
    /// snapshot), so that the log always ends with what the store holds.
    /// Returns how many.
    pub fn catch_up(&self, store: &Store) -> Result<usize, HistoryError> {
        let missing: Vec<Record> = {
            let inner = self.lock();
            store
                .all_records()
                .into_iter()
                .filter(|r| {
                    let k = (
                        r.key.kind.as_str().to_string(),
                        r.key.namespace.clone(),
                        r.key.name.clone(),
                    );
                    inner
                        .versions
                        .get(&k)
                        .and_then(|v| v.last())
                        .is_none_or(|(_, g, h)| (*g, h) != (r.generation, &r.hash))
                })
                .collect()
        };
        let refs: Vec<&Record> = missing.iter().collect();
        self.append(&refs, true)?;
        if !missing.is_empty() {
            info!(
                versions = missing.len(),
                "history: stored versions the log lacked were logged as recovered"
            );
        }
        Ok(missing.len())
    }

    /// The hook to give [`Store::set_commit_hook`]: a committing batch's
    /// new versions are serialised just before the store commits and
    /// written once the commit succeeded, before the apply returns (so a
    /// crash of the node loses none); a background thread `fdatasync`s
    /// them [`SYNC_PAUSE`] after ([`Syncer`]), so the apply does not wait
    /// for a second flush.
    /// A failure of the log is logged and does not undo the commit.
    pub fn hook(self: &Arc<Self>) -> crate::store::CommitHook {
        let me = self.clone();
        Arc::new(move |records: &[&Record]| -> crate::store::CommitDone {
            let prepared = me.prepare(records, false);
            let me = me.clone();
            Box::new(move |committed| {
                if !committed {
                    return;
                }
                if let Err(e) = me.commit(prepared) {
                    warn!(error = %e, "history: cannot log the versions just committed (the store has them)");
                }
            })
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io_err(&self, e: &dyn std::fmt::Display) -> HistoryError {
        HistoryError::Io {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// Append `records` as versions and wait until they are on disk.
    pub fn append(&self, records: &[&Record], recovered: bool) -> Result<(), HistoryError> {
        let prepared = self.prepare(records, recovered);
        self.commit(prepared)?;
        self.flush()
    }

    /// Serialise `records` as versions, numbered next.
    pub fn prepare(&self, records: &[&Record], recovered: bool) -> Prepared {
        let first = {
            let mut inner = self.lock();
            let first = inner.next_seq;
            inner.next_seq += records.len() as u64;
            first
        };
        let mut payloads = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let v = VersionOf::of(r, first + i as u64, recovered);
            let payload = serde_json::to_vec(&v).expect("entries serialize");
            if payload.len() > MAX_PAYLOAD {
                warn!(object = %r.key, bytes = payload.len(), "history: a version too large to log is skipped");
                continue;
            }
            let key = (
                v.kind.to_string(),
                v.namespace.to_string(),
                v.name.to_string(),
            );
            payloads.push((payload, key, v.seq, r.generation, r.hash.clone()));
        }
        Prepared { payloads }
    }

    /// Write prepared versions (one `write`) behind the chain's head and
    /// hand them to the syncer; compact if retention says so.
    pub fn commit(&self, prepared: Prepared) -> Result<(), HistoryError> {
        if prepared.payloads.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        let mut bytes = Vec::new();
        let mut head = inner.head;
        for (payload, ..) in &prepared.payloads {
            let (frame, hash) = frame_bytes(&head, payload);
            head = hash;
            bytes.extend_from_slice(&frame);
        }
        if let Err(e) = (&*inner.file).write_all(&bytes) {
            // Whatever part got out is an incomplete tail: cut it, so the
            // next append follows the chain.
            let _ = inner.file.set_len(inner.len);
            return Err(self.io_err(&e));
        }
        inner.len += bytes.len() as u64;
        inner.head = head;
        self.syncer.request();
        let keep = self.retention.keep;
        for (_, k, seq, generation, hash) in prepared.payloads {
            let list = inner.versions.entry(k).or_default();
            list.push((seq, generation, hash));
            if list.len() > keep {
                inner.excess += 1;
            }
        }
        let due = inner.len > self.retention.max_bytes.max(inner.floor * 2)
            || inner.excess >= 256.max(inner.versions.len() / 2);
        if due {
            if let Err(e) = self.compact(&mut inner) {
                warn!(error = %e, "history: compaction failed; the log keeps growing");
            }
        }
        Ok(())
    }

    /// Wait until everything written is on disk (the syncer's last
    /// `fdatasync` covers it).
    pub fn flush(&self) -> Result<(), HistoryError> {
        self.syncer.wait().map_err(|e| self.io_err(&e))
    }

    /// Rewrite the log with what retention keeps, behind an anchor.
    fn compact(&self, inner: &mut Inner) -> Result<(), HistoryError> {
        let io = |e: &dyn std::fmt::Display| HistoryError::Io {
            path: self.path.display().to_string(),
            message: e.to_string(),
        };
        let bytes = std::fs::read(&self.path).map_err(|e| io(&e))?;
        let s = scan(&bytes);
        if s.problem.is_some() || s.head != inner.head {
            return Err(io(&"the log changed under the node; not compacted"));
        }
        let (kept, dropped) = select(&s.frames, self.retention);
        let next = inner.next_seq;
        let anchor = Entry::Anchor(Anchor {
            seq: next,
            time_ms: now_ms(),
            reason: "compaction".into(),
            previous_head: Some(hex::encode(s.head)),
            previous_records: s.frames.len() as u64,
            dropped: dropped as u64,
        });
        // The anchor takes the next number; the kept versions keep theirs
        // (below it): an anchor is always first and out of the order
        // versions keep among themselves.
        let mut out = MAGIC.to_vec();
        let payload = serde_json::to_vec(&anchor).expect("entries serialize");
        let (frame, mut head) = frame_bytes(&[0; 32], &payload);
        out.extend_from_slice(&frame);
        for f in kept {
            let (frame, h) = frame_bytes(&head, &f.payload);
            head = h;
            out.extend_from_slice(&frame);
        }
        crate::state_file::write_with(&self.path, &out, crate::state_file::Options::private())
            .map_err(|e| io(&e))?;
        sync_dir(&self.path);
        let s = scan(&out);
        *inner = Self::index(&self.path, &s, self.retention).map_err(|e| io(&e))?;
        inner.next_seq = inner.next_seq.max(next + 1);
        self.syncer.set_file(inner.file.clone());
        info!(dropped, bytes = out.len(), "history: compacted");
        Ok(())
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.syncer.stop();
    }
}

/// How long the syncer lets writes gather before it flushes them.
pub const SYNC_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// The thread that makes written records durable: one `fdatasync` at a
/// time, [`SYNC_PAUSE`] after the first write it has not covered, each
/// covering everything written before it started, so a burst of commits
/// costs a few flushes, not one each.
pub struct Syncer {
    state: Mutex<SyncState>,
    changed: std::sync::Condvar,
}

struct SyncState {
    file: Arc<File>,
    /// Writes requested / covered by a finished fdatasync.
    written: u64,
    synced: u64,
    /// The last fdatasync's failure, if it failed.
    error: Option<String>,
    stop: bool,
}

impl Syncer {
    fn start(file: Arc<File>, path: &Path) -> std::io::Result<Arc<Syncer>> {
        let me = Arc::new(Syncer {
            state: Mutex::new(SyncState {
                file,
                written: 0,
                synced: 0,
                error: None,
                stop: false,
            }),
            changed: std::sync::Condvar::new(),
        });
        let run = me.clone();
        let path = path.display().to_string();
        std::thread::Builder::new()
            .name("history-sync".into())
            .spawn(move || run.run(&path))?;
        Ok(me)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self, path: &str) {
        let mut st = self.lock();
        loop {
            while st.synced == st.written && !st.stop {
                st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.synced == st.written {
                return;
            }
            // Let the writes of a burst gather: one flush for them all.
            if !st.stop {
                drop(st);
                std::thread::sleep(SYNC_PAUSE);
                st = self.lock();
            }
            let (target, file) = (st.written, st.file.clone());
            drop(st);
            let r = file.sync_data();
            st = self.lock();
            st.synced = target;
            st.error = match r {
                Ok(()) => None,
                Err(e) => {
                    warn!(path, error = %e, "history: fdatasync failed; versions logged since the last one may not survive a power cut");
                    Some(e.to_string())
                }
            };
            self.changed.notify_all();
        }
    }

    fn request(&self) {
        self.lock().written += 1;
        self.changed.notify_all();
    }

    fn set_file(&self, file: Arc<File>) {
        self.lock().file = file;
    }

    fn wait(&self) -> std::io::Result<()> {
        let mut st = self.lock();
        let target = st.written;
        while st.synced < target {
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        match &st.error {
            Some(e) => Err(std::io::Error::other(e.clone())),
            None => Ok(()),
        }
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.changed.notify_all();
    }
}

/// What retention keeps of `frames`: per object the newest `keep`
/// versions, then, oldest first, fewer until the kept bytes fit in three
/// quarters of `max_bytes` (never an object's newest). Returns the kept
/// frames, in order, and how many versions were dropped.
fn select(frames: &[Frame], retention: Retention) -> (Vec<&Frame>, usize) {
    let mut per_key: HashMap<(String, String, String), usize> = HashMap::new();
    for f in frames {
        if let Entry::Version(v) = &f.entry {
            *per_key.entry(key_of(v)).or_default() += 1;
        }
    }
    // How many of each object's versions are still ahead while walking.
    let mut left = per_key.clone();
    let mut keep: Vec<bool> = frames
        .iter()
        .map(|f| match &f.entry {
            Entry::Version(v) => {
                let l = left.get_mut(&key_of(v)).expect("counted");
                let k = *l <= retention.keep.max(1);
                *l -= 1;
                k
            }
            Entry::Anchor(_) => false,
        })
        .collect();
    let target = retention.max_bytes / 4 * 3;
    let mut total: u64 = frames
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(f, _)| f.size())
        .sum();
    if total > target {
        let mut left = per_key;
        for (f, k) in frames.iter().zip(keep.iter_mut()) {
            let Entry::Version(v) = &f.entry else {
                continue;
            };
            let l = left.get_mut(&key_of(v)).expect("counted");
            *l -= 1;
            if total <= target {
                break;
            }
            if *k && *l > 0 {
                *k = false;
                total -= f.size();
            }
        }
    }
    let versions = frames
        .iter()
        .filter(|f| matches!(f.entry, Entry::Version(_)))
        .count();
    let kept: Vec<&Frame> = frames
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(f, _)| f)
        .collect();
    let dropped = versions - kept.len();
    (kept, dropped)
}

/// Read the log at `path` (no lock needed: it is only appended to, and a
/// rewrite replaces it whole by a rename).
pub fn read(path: &Path) -> Result<Scan, HistoryError> {
    let bytes = std::fs::read(path).map_err(|e| HistoryError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(scan(&bytes))
}

/// The versions of one object in `scan`, oldest first.
pub fn versions_of<'a>(
    scan: &'a Scan,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Vec<&'a Version> {
    scan.frames
        .iter()
        .filter_map(|f| match &f.entry {
            Entry::Version(v) if v.kind == kind && v.namespace == namespace && v.name == name => {
                Some(v)
            }
            _ => None,
        })
        .collect()
}

/// How a signed version's signer was found allowed (offline, from the
/// log alone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Authority {
    /// The signer is the cluster owner (or whom the owner handed the
    /// cluster over to, by the policies logged before it).
    Owner,
    /// A trusted AccessPolicy logged before the version allows the signer
    /// `apply` on its kind and namespace: which policy.
    Policy(String),
    /// Not shown by the policies the log holds before it (a right the
    /// offline check does not replay, e.g. a node publishing its own VM
    /// or a session's change, or a policy version retention dropped).
    NotShown(String),
}

/// One signed version checked by [`verify`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckedVersion {
    /// How the record is named.
    pub record: String,
    /// The verified signer.
    pub signer: String,
    /// Why it was allowed, as far as the log shows.
    pub authority: Authority,
}

/// What [`verify`] found in a sound log.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verified {
    /// Records read.
    pub records: usize,
    /// Versions among them.
    pub versions: usize,
    /// Unsigned versions (their integrity rests on the chain alone).
    pub unsigned: usize,
    /// Tombstones (not signed documents; chain only).
    pub deletions: usize,
    /// Every signed version, its signature verified.
    pub signed: Vec<CheckedVersion>,
    /// Anchors: where the log was rewritten and the hash it continues.
    pub anchors: Vec<Anchor>,
    /// An incomplete last record (not a version; the node truncates it).
    pub torn_tail: Option<String>,
}

/// Check a log offline against the cluster `owner`'s address (which is
/// the cluster id signatures are bound to): the chain (every record's
/// framing and hash, sequence order), that each version's fields agree
/// with its object, and every signed version's signature, whose signer
/// must be the one recorded. The first problem is the error, naming the
/// record. Authorisation is reported, not required (see [`Authority`]).
pub fn verify(bytes: &[u8], owner: &str) -> Result<Verified, LogProblem> {
    let s = scan(bytes);
    let mut out = Verified::default();
    match &s.problem {
        None => {}
        Some(p @ LogProblem::TornTail { .. }) => out.torn_tail = Some(p.to_string()),
        Some(p) => return Err(p.clone()),
    }
    let mut policies: BTreeMap<(String, String), Manifest<AccessPolicySpec>> = BTreeMap::new();
    for f in &s.frames {
        out.records += 1;
        let bad = |why: String| LogProblem::Damaged {
            index: f.index,
            offset: f.offset,
            what: what(&f.entry),
            why,
        };
        let v = match &f.entry {
            Entry::Anchor(a) => {
                out.anchors.push(a.clone());
                continue;
            }
            Entry::Version(v) => v,
        };
        out.versions += 1;
        let meta = |p: &str| v.object.pointer(p).and_then(Value::as_str).unwrap_or("");
        if v.object.get("kind").and_then(Value::as_str) != Some(v.kind.as_str())
            || meta("/metadata/name") != v.name
            || meta("/metadata/namespace") != v.namespace
        {
            return Err(bad(format!(
                "the record says {} but its object is {}/{}/{}",
                v.key_text(),
                v.object.get("kind").and_then(Value::as_str).unwrap_or("?"),
                meta("/metadata/namespace"),
                meta("/metadata/name")
            )));
        }
        let generation = v
            .object
            .pointer("/metadata/generation")
            .and_then(Value::as_i64);
        if generation != Some(v.generation) {
            return Err(bad(format!(
                "the record says generation {} but its object has {generation:?}",
                v.generation
            )));
        }
        if v.deleted {
            out.deletions += 1;
            if v.kind == Kind::AccessPolicy.as_str() {
                policies.remove(&(v.namespace.clone(), v.name.clone()));
            }
            continue;
        }
        let signed = annotation(&v.object, SIGNER_ANNOTATION).is_some()
            || annotation(&v.object, SIGNATURE_ANNOTATION).is_some();
        if !signed {
            if let Some(s) = &v.signer {
                return Err(bad(format!(
                    "the record names signer {s} but its object carries no signature"
                )));
            }
            out.unsigned += 1;
        } else {
            let signer = crate::identity::verify_manifest(&v.object, owner).map_err(|e| {
                bad(format!(
                    "its signature does not verify for the cluster of owner {owner}: {e}"
                ))
            })?;
            if v.signer.as_deref() != Some(signer.as_str()) {
                return Err(bad(format!(
                    "signed by {signer} but the record names {}",
                    v.signer.as_deref().unwrap_or("no signer")
                )));
            }
            let authority = authority(&policies, owner, &signer, v);
            out.signed.push(CheckedVersion {
                record: f.name(),
                signer,
                authority,
            });
        }
        if v.kind == Kind::AccessPolicy.as_str() {
            if let Ok(p) = serde_json::from_value(v.object.clone()) {
                policies.insert((v.namespace.clone(), v.name.clone()), p);
            }
        }
    }
    Ok(out)
}

fn authority(
    policies: &BTreeMap<(String, String), Manifest<AccessPolicySpec>>,
    owner: &str,
    signer: &str,
    v: &Version,
) -> Authority {
    use crate::identity::access::{authorize_signer, same_address};
    use crate::model::access::Verb;
    let list: Vec<_> = policies.values().cloned().collect();
    let report = crate::identity::trusted_policies(&list, owner, owner);
    if same_address(signer, &report.owner) {
        return Authority::Owner;
    }
    let Some(kind) = Kind::from_cli(&v.kind) else {
        return Authority::NotShown(format!("unknown kind {}", v.kind));
    };
    match authorize_signer(
        signer,
        Verb::Apply,
        kind,
        &v.namespace,
        &report.owner,
        &report.trusted,
        &[&v.object],
    ) {
        Ok(()) => {
            let by = report
                .trusted
                .iter()
                .find(|p| {
                    p.spec
                        .rules
                        .iter()
                        .any(|r| r.subjects.iter().any(|s| same_address(s, signer)))
                })
                .and_then(|p| p.metadata.name.clone())
                .unwrap_or_default();
            Authority::Policy(by)
        }
        Err(r) => Authority::NotShown(r.reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjectKey;
    use crate::store::SourceId;

    fn record(name: &str, generation: i64) -> Record {
        Record {
            key: ObjectKey::new(Kind::Network, None, name),
            generation,
            source: SourceId("api".into()),
            hash: String::new(),
            object: serde_json::json!({
                "apiVersion": "deorch.dev/v1alpha1", "kind": "Network",
                "metadata": {"name": name, "namespace": "default", "generation": generation},
                "spec": {"mtu": 1400 + generation}
            }),
            status: None,
            deleted: false,
            updated_ms: 1,
        }
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("deorch-history-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join(FILE)
    }

    #[test]
    fn appended_versions_read_back_in_order_and_verify() {
        let path = tmp("roundtrip");
        let h = History::open(&path, Retention::default()).unwrap();
        for g in 1..=5 {
            h.append(&[&record("a", g)], false).unwrap();
        }
        let s = read(&path).unwrap();
        assert!(s.problem.is_none(), "{:?}", s.problem);
        let gens: Vec<i64> = versions_of(&s, "Network", "default", "a")
            .iter()
            .map(|v| v.generation)
            .collect();
        assert_eq!(gens, [1, 2, 3, 4, 5]);
        let v = verify(&std::fs::read(&path).unwrap(), "bc1qowner").unwrap();
        assert_eq!((v.versions, v.unsigned), (5, 5));
    }

    #[test]
    fn a_changed_or_removed_record_breaks_the_chain_at_that_place() {
        let path = tmp("tamper");
        let h = History::open(&path, Retention::default()).unwrap();
        for g in 1..=4 {
            h.append(&[&record("a", g)], false).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        let s = scan(&bytes);
        // Change one byte inside record 3's payload.
        let f = &s.frames[2];
        let mut changed = bytes.clone();
        changed[f.offset as usize + 8 + f.payload.len() / 2] ^= 0x01;
        match verify(&changed, "x") {
            Err(LogProblem::Damaged { index: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
        // Remove record 2: record 3 (now second) no longer follows.
        let f2 = &s.frames[1];
        let mut removed = bytes[..f2.offset as usize].to_vec();
        removed.extend_from_slice(&bytes[(f2.offset + f2.size()) as usize..]);
        match verify(&removed, "x") {
            Err(LogProblem::Damaged { index: 2, what, .. }) => {
                assert!(what.contains("generation 3"), "{what}")
            }
            other => panic!("{other:?}"),
        }
        // A changed length word is damage, not a torn tail.
        let mut header = bytes.clone();
        header[s.frames[1].offset as usize] ^= 0x40;
        assert!(matches!(
            scan(&header).problem,
            Some(LogProblem::Damaged { index: 2, .. })
        ));
    }

    #[test]
    fn a_torn_tail_is_truncated_on_open_and_appending_continues_the_chain() {
        let path = tmp("torn");
        {
            let h = History::open(&path, Retention::default()).unwrap();
            h.append(&[&record("a", 1), &record("b", 1)], false)
                .unwrap();
        }
        let good = std::fs::read(&path).unwrap();
        // Half of a third record, as a kill in the middle of write leaves.
        let (frame, _) = frame_bytes(&scan(&good).head, b"{\"type\":\"version\"}");
        let mut torn = good.clone();
        torn.extend_from_slice(&frame[..frame.len() / 2]);
        std::fs::write(&path, &torn).unwrap();
        assert!(matches!(
            scan(&torn).problem,
            Some(LogProblem::TornTail { .. })
        ));
        let h = History::open(&path, Retention::default()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), good, "truncated back");
        h.append(&[&record("a", 2)], false).unwrap();
        let s = read(&path).unwrap();
        assert!(s.problem.is_none(), "{:?}", s.problem);
        assert_eq!(s.frames.len(), 3);
    }

    #[test]
    fn retention_keeps_the_newest_versions_behind_an_anchor_that_verifies() {
        let path = tmp("retention");
        let retention = Retention {
            keep: 3,
            max_bytes: 1 << 30,
        };
        let h = History::open(&path, retention).unwrap();
        // 300 versions of one object: compaction is due at 256 excess.
        for g in 1..=300 {
            h.append(&[&record("a", g)], false).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        let s = scan(&bytes);
        assert!(s.problem.is_none(), "{:?}", s.problem);
        let Entry::Anchor(a) = &s.frames[0].entry else {
            panic!("no anchor first")
        };
        assert_eq!(a.reason, "compaction");
        let gens: Vec<i64> = versions_of(&s, "Network", "default", "a")
            .iter()
            .map(|v| v.generation)
            .collect();
        assert_eq!(gens.first(), Some(&257), "{gens:?}");
        assert_eq!(gens.last(), Some(&300));
        assert!(gens.len() < 50, "{}", gens.len());
        verify(&bytes, "x").unwrap();
        // Reopened, the numbering goes on above the anchor.
        drop(h);
        let h = History::open(&path, retention).unwrap();
        h.append(&[&record("a", 301)], false).unwrap();
        assert!(read(&path).unwrap().problem.is_none());
    }

    #[test]
    fn the_byte_budget_drops_old_versions_never_an_objects_newest() {
        let path = tmp("bytes");
        let retention = Retention {
            keep: 100,
            max_bytes: 4096,
        };
        let h = History::open(&path, retention).unwrap();
        for g in 1..=40 {
            h.append(&[&record("a", g)], false).unwrap();
            h.append(&[&record(&format!("o{g}"), 1)], false).unwrap();
        }
        let s = read(&path).unwrap();
        assert!(s.problem.is_none(), "{:?}", s.problem);
        for g in 1..=40 {
            assert_eq!(
                versions_of(&s, "Network", "default", &format!("o{g}")).len(),
                1,
                "o{g}'s only version is kept"
            );
        }
        let a = versions_of(&s, "Network", "default", "a");
        assert_eq!(a.last().unwrap().generation, 40);
        assert!(a.len() < 40, "old versions of a were dropped: {}", a.len());
    }

    #[test]
    fn the_store_logs_its_commits_and_what_the_log_lacked_is_caught_up() {
        let path = tmp("store");
        let store = Store::open(&path.with_file_name("store.redb")).unwrap();
        let source = SourceId("api".into());
        let obj = |name: &str, mtu: u32| {
            let parsed = crate::manifest::parse_str(
                Path::new("t.yaml"),
                &format!("apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata:\n  name: {name}\nspec:\n  mtu: {mtu}\n"),
            );
            parsed.documents[0].object.clone()
        };
        // Before the log existed.
        store.apply(&obj("a", 1400), &source).unwrap();
        store.apply(&obj("b", 1400), &source).unwrap();
        let h = Arc::new(History::open(&path, Retention::default()).unwrap());
        assert_eq!(h.catch_up(&store).unwrap(), 2);
        store.set_commit_hook(Some(h.hook()));
        store.apply(&obj("a", 1401), &source).unwrap();
        // Identical content: no new version.
        store.apply(&obj("a", 1401), &source).unwrap();
        store
            .delete(&ObjectKey::new(Kind::Network, None, "b"), &source)
            .unwrap();
        assert_eq!(h.catch_up(&store).unwrap(), 0, "nothing missing");
        let s = read(&path).unwrap();
        let got: Vec<(String, i64, bool, bool)> = s
            .frames
            .iter()
            .filter_map(|f| match &f.entry {
                Entry::Version(v) => Some((v.name.clone(), v.generation, v.recovered, v.deleted)),
                _ => None,
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), 1, true, false),
                ("b".into(), 1, true, false),
                ("a".into(), 2, false, false),
                ("b".into(), 2, false, true),
            ]
        );
    }

    #[test]
    fn a_version_written_from_a_record_reads_back_as_that_record() {
        let mut r = record("a", 7);
        r.deleted = true;
        let payload = serde_json::to_vec(&VersionOf::of(&r, 9, true)).unwrap();
        let Entry::Version(v) = serde_json::from_slice(&payload).unwrap() else {
            panic!("not a version")
        };
        assert_eq!(
            (
                v.seq,
                v.key_text(),
                v.generation,
                v.source.as_str(),
                v.deleted,
                v.recovered
            ),
            (9, "Network/default/a".to_string(), 7, "api", true, true)
        );
        assert_eq!(v.object, r.object);
    }

    #[test]
    fn a_failed_commit_logs_nothing() {
        let path = tmp("abort");
        let h = History::open(&path, Retention::default()).unwrap();
        h.append(&[&record("a", 1)], false).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        // Prepared before the store commits; the commit fails: dropped.
        let prepared = h.prepare(&[&record("a", 2)], false);
        drop(prepared);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        h.append(&[&record("a", 3)], false).unwrap();
        let s = read(&path).unwrap();
        assert!(s.problem.is_none(), "{:?}", s.problem);
        let gens: Vec<i64> = versions_of(&s, "Network", "default", "a")
            .iter()
            .map(|v| v.generation)
            .collect();
        assert_eq!(gens, [1, 3]);
    }

    #[test]
    fn a_damaged_log_is_set_aside_and_a_new_one_anchored_to_its_last_good_hash() {
        let path = tmp("damaged");
        {
            let h = History::open(&path, Retention::default()).unwrap();
            for g in 1..=3 {
                h.append(&[&record("a", g)], false).unwrap();
            }
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let s = scan(&bytes);
        let f = &s.frames[1];
        bytes[f.offset as usize + 12] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let _h = History::open(&path, Retention::default()).unwrap();
        let now = read(&path).unwrap();
        let Entry::Anchor(a) = &now.frames[0].entry else {
            panic!("no anchor")
        };
        assert_eq!(a.previous_records, 1);
        assert_eq!(a.previous_head, Some(hex::encode(s.frames[0].hash)));
        let aside: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".damaged-"))
            .collect();
        assert_eq!(aside.len(), 1);
    }
}
