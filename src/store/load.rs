//! Reading the store back: every record checked, damage reported (never a
//! panic, never a silent change), and what can be saved from a damaged
//! file for `deorch node recover-store`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::{
    content_hash, db_key, seal, Entry, ObjectKey, Record, StoredRecord, FORMAT, RECORDS, STATUS,
};

/// What [`load`] read.
pub(super) struct Loaded {
    pub index: BTreeMap<ObjectKey, Entry>,
    /// Records that fail a check: raw key, what is wrong.
    pub damaged: Vec<(String, String)>,
    /// Status values that fail a check (dropped: status is observed again).
    pub status_dropped: Vec<(String, String)>,
}

/// Check and decode one stored value under `raw_key`.
pub(super) fn decode(raw_key: &str, bytes: &[u8]) -> Result<StoredRecord, String> {
    let json = seal::open(bytes)?;
    let stored: StoredRecord =
        serde_json::from_slice(json).map_err(|e| format!("undecodable: {e}"))?;
    if stored.format != FORMAT {
        return Err(format!(
            "record format {} (this deorch reads {FORMAT})",
            stored.format
        ));
    }
    if db_key(&stored.key) != raw_key {
        return Err(format!(
            "stored under {raw_key} but names {}",
            db_key(&stored.key)
        ));
    }
    if content_hash(&stored.object) != stored.hash {
        return Err("the object does not match its content hash".into());
    }
    Ok(stored)
}

fn record_of(stored: StoredRecord, status: Option<serde_json::Value>) -> Record {
    Record {
        key: stored.key,
        generation: stored.generation,
        source: stored.source,
        hash: stored.hash,
        object: stored.object,
        status,
        deleted: stored.deleted,
        updated_ms: stored.updated_ms,
    }
}

fn decode_status(bytes: &[u8]) -> Result<serde_json::Value, String> {
    serde_json::from_slice(seal::open(bytes)?).map_err(|e| format!("undecodable: {e}"))
}

/// Every record of `db`, checked. An error is a failure to read the
/// tables at all.
pub(super) fn load(db: &Database) -> Result<Loaded, redb::Error> {
    let mut out = Loaded {
        index: BTreeMap::new(),
        damaged: Vec::new(),
        status_dropped: Vec::new(),
    };
    let tx = db.begin_read()?;
    let records = tx.open_table(RECORDS)?;
    let status = tx.open_table(STATUS)?;
    for entry in records.iter()? {
        let (k, v) = entry?;
        let raw_key = k.value().to_string();
        let stored = match decode(&raw_key, v.value()) {
            Ok(s) => s,
            Err(why) => {
                out.damaged.push((raw_key, why));
                continue;
            }
        };
        let st = match status.get(raw_key.as_str())? {
            Some(s) => match decode_status(s.value()) {
                Ok(v) => Some(v),
                Err(why) => {
                    out.status_dropped.push((raw_key.clone(), why));
                    None
                }
            },
            None => None,
        };
        let record = record_of(stored, st);
        out.index.insert(record.key.clone(), Entry::of(&record));
    }
    Ok(out)
}

/// What could be read from a store file, damaged or not.
#[derive(Debug, Default)]
pub struct Salvaged {
    /// Records that pass every check (without status).
    pub records: Vec<Record>,
    /// Records that do not: raw key, what is wrong.
    pub damaged: Vec<(String, String)>,
    /// Why reading stopped early, if it did (the rest of the file is lost).
    pub stopped: Option<String>,
}

/// Read what can be read from the store at `path`, without changing it
/// beyond what redb's own open does. Never panics.
pub fn salvage(path: &Path) -> Salvaged {
    let mut out = Salvaged::default();
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        out.stopped = Some("the file is empty".into());
        return out;
    }
    let result = quietly(|| -> Result<(), String> {
        let db = Database::builder()
            .open(path)
            .map_err(|e| format!("cannot open: {e}"))?;
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let records = tx.open_table(RECORDS).map_err(|e| e.to_string())?;
        for entry in records.iter().map_err(|e| e.to_string())? {
            let (k, v) = entry.map_err(|e| e.to_string())?;
            let raw_key = k.value().to_string();
            match decode(&raw_key, v.value()) {
                Ok(s) => out.records.push(record_of(s, None)),
                Err(why) => out.damaged.push((raw_key, why)),
            }
        }
        Ok(())
    });
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => out.stopped = Some(e),
        Err(panic) => out.stopped = Some(format!("the database is inconsistent ({panic})")),
    }
    out
}

thread_local! {
    /// Set while [`quietly`] runs on this thread: the panic's message, kept
    /// instead of printed.
    static QUIET: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Run `f`, turning a panic inside it (redb's, on a damaged file) into an
/// error carrying its message, without printing it. Other threads' panics
/// print as always.
pub(super) fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let kept = QUIET.with(|q| {
                let mut q = q.borrow_mut();
                match q.as_mut() {
                    Some(slot) => {
                        *slot = match info.location() {
                            Some(l) => {
                                format!("{} at {}:{}", payload(info.payload()), l.file(), l.line())
                            }
                            None => payload(info.payload()),
                        };
                        true
                    }
                    None => false,
                }
            });
            if !kept {
                previous(info)
            }
        }));
    });
    QUIET.with(|q| *q.borrow_mut() = Some(String::new()));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    let message = QUIET.with(|q| q.borrow_mut().take()).unwrap_or_default();
    result.map_err(|_| format!("redb panicked: {message}"))
}

fn payload(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
