//! A verified copy of the desired state beside the store, to recover from
//! when the store itself is damaged or gone.
//!
//! The node writes it at start (after the store passed its checks), then
//! whenever desired state changed, at most every [`INTERVAL`], and at a
//! graceful stop. Format: one header line (`{"deorchSnapshot":1, "records":
//! N, "sha256": …, "writtenMs": …}`, the digest covering every byte after
//! the header's newline), then one record per line, each as the store keeps
//! it (without status, which is observed again). Written whole or not at
//! all ([`crate::state_file::write`]); a snapshot that fails its digest is
//! refused, not half-used.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{db_key, load::decode, Record, Store, StoredRecord};

/// File name beside the store.
pub const FILE: &str = "store.snapshot";

/// Longest time desired state may have changed without a new snapshot.
pub const INTERVAL: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    deorch_snapshot: u32,
    records: usize,
    sha256: String,
    written_ms: u64,
}

/// A snapshot read back.
#[derive(Debug)]
pub struct Snapshot {
    /// When it was written (Unix ms).
    pub written_ms: u64,
    /// Its records, tombstones included, without status.
    pub records: Vec<Record>,
}

/// Write `store`'s records to `path`; how many.
pub fn write(store: &Store, path: &Path) -> std::io::Result<usize> {
    let records = store.all_records();
    let mut body = Vec::new();
    for r in &records {
        body.extend_from_slice(&StoredRecord::json(r));
        body.push(b'\n');
    }
    let header = Header {
        deorch_snapshot: 1,
        records: records.len(),
        sha256: hex::encode(Sha256::digest(&body)),
        written_ms: crate::clock::now_ms(),
    };
    let mut out = serde_json::to_vec(&header).expect("header serializes");
    out.push(b'\n');
    out.extend_from_slice(&body);
    // Owner only, as the store itself.
    crate::state_file::write_with(path, &out, crate::state_file::Options::private())?;
    Ok(records.len())
}

/// Read and verify the snapshot at `path`.
pub fn read(path: &Path) -> Result<Snapshot, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = |why: String| format!("{}: {why}", path.display());
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| bad("no header line".into()))?;
    let header: Header =
        serde_json::from_slice(&bytes[..nl]).map_err(|e| bad(format!("header: {e}")))?;
    if header.deorch_snapshot != 1 {
        return Err(bad(format!("snapshot format {}", header.deorch_snapshot)));
    }
    let body = &bytes[nl + 1..];
    if hex::encode(Sha256::digest(body)) != header.sha256 {
        return Err(bad("checksum mismatch: the snapshot is damaged".into()));
    }
    let mut records = Vec::with_capacity(header.records);
    for (i, line) in body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let stored: StoredRecord =
            serde_json::from_slice(line).map_err(|e| bad(format!("record {}: {e}", i + 1)))?;
        let raw_key = db_key(&stored.key);
        let stored = decode(&raw_key, line).map_err(|e| bad(format!("{raw_key}: {e}")))?;
        records.push(Record {
            key: stored.key,
            generation: stored.generation,
            source: stored.source,
            hash: stored.hash,
            object: stored.object,
            status: None,
            deleted: stored.deleted,
            updated_ms: stored.updated_ms,
        });
    }
    if records.len() != header.records {
        return Err(bad(format!(
            "{} records, the header says {}",
            records.len(),
            header.records
        )));
    }
    Ok(Snapshot {
        written_ms: header.written_ms,
        records,
    })
}
