//! The desired-state store: the newest accepted version of every object,
//! keyed by kind/namespace/name, with a monotonic generation, its source and
//! a content hash; deletions are tombstones. Persisted crash-safely: once a
//! mutating call returns `Ok`, the change survives `kill -9`.
//!
//! Status (observed state) is kept beside the desired object and never
//! changes its generation.
//!
//! OWNER: store helper. The signatures below are the contract.

use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// The store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Store {
    _private: (),
}

impl Store {
    /// Open (or create) the store at `path` (a file), loading its index.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let _ = path;
        unimplemented!("store helper")
    }
    /// Accept `obj` from `source`: bump the generation if its hash differs
    /// from the stored one (or it was deleted/absent), persist durably, then
    /// notify subscribers. Idempotent for identical content.
    pub fn apply(&self, obj: &AnyObject, source: &SourceId) -> Result<Applied, StoreError> {
        let _ = (obj, source);
        unimplemented!("store helper")
    }
    /// Tombstone `key` (generation + 1), durably. `Ok(None)` if absent or
    /// already deleted.
    pub fn delete(&self, key: &ObjectKey, source: &SourceId) -> Result<Option<i64>, StoreError> {
        let _ = (key, source);
        unimplemented!("store helper")
    }
    /// The record of `key`, tombstones included.
    pub fn get(&self, key: &ObjectKey) -> Option<Record> {
        let _ = key;
        unimplemented!("store helper")
    }
    /// Live (non-deleted) records, optionally of one kind, sorted by key.
    pub fn list(&self, kind: Option<Kind>) -> Vec<Record> {
        let _ = kind;
        unimplemented!("store helper")
    }
    /// Live records whose current version came from `source`.
    pub fn list_by_source(&self, source: &SourceId) -> Vec<Record> {
        let _ = source;
        unimplemented!("store helper")
    }
    /// Record the status of `key` (durably; does not change the generation).
    /// Ignored for tombstoned or absent keys.
    pub fn set_status(&self, key: &ObjectKey, status: Value) -> Result<(), StoreError> {
        let _ = (key, status);
        unimplemented!("store helper")
    }
    /// Drop tombstones older than `horizon`.
    pub fn gc_tombstones(&self, horizon: SystemTime) -> Result<usize, StoreError> {
        let _ = horizon;
        unimplemented!("store helper")
    }
    /// Add an event (kept in a bounded in-memory ring, newest last).
    pub fn record_event(&self, event: Event) {
        let _ = event;
        unimplemented!("store helper")
    }
    /// Events about `key`, or about sources whose current objects include
    /// `key`, or all events when `key` is `None`; oldest first.
    pub fn events(&self, key: Option<&ObjectKey>) -> Vec<Event> {
        let _ = key;
        unimplemented!("store helper")
    }
    /// Subscribe to changes (a `tokio::sync::broadcast` channel; a lagging
    /// receiver should rescan with [`Store::list`]).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Change> {
        unimplemented!("store helper")
    }
}
