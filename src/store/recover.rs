//! `deorch node recover-store`: rebuild a damaged or lost store from what
//! is still readable in it and from the last verified snapshot, with the
//! node stopped.
//!
//! For each object the newest copy wins (the highest generation; on a tie,
//! the store's). Records that fail their checks and have no copy in the
//! snapshot are reported by name: they are lost here, and come back from
//! their source (a manifest file at the next rescan, gossip's sync for a
//! signed document a peer holds, a re-apply for the rest). The damaged
//! file is never deleted: it is renamed `store.redb.damaged-<ms>`.

use std::collections::BTreeMap;
use std::path::Path;

use super::{lock, salvage, snapshot, Record, Store};

/// What a recovery did.
#[derive(Debug, Default)]
pub struct Report {
    /// Records kept from the store as it was.
    pub from_store: usize,
    /// Records taken from the snapshot (newer there, or missing or damaged
    /// in the store).
    pub from_snapshot: usize,
    /// Damaged records with no copy anywhere: raw key, what was wrong.
    pub lost: Vec<(String, String)>,
    /// Why reading the store stopped early, if it did.
    pub store_problem: Option<String>,
    /// Why the snapshot was not used, if it was not.
    pub snapshot_problem: Option<String>,
    /// Where the old store file went, if it was replaced.
    pub set_aside: Option<String>,
    /// Whether the store was sound and nothing changed.
    pub sound: bool,
}

/// Recover the store of `state_dir` (file names as the node uses them).
pub fn recover(state_dir: &Path, store_file: &str) -> anyhow::Result<Report> {
    let path = state_dir.join(store_file);
    let _lock = lock(&path)?;
    let mut report = Report::default();
    let exists = path.exists();
    let salvaged = if exists {
        salvage(&path)
    } else {
        super::Salvaged {
            stopped: Some("the store file is missing".into()),
            ..Default::default()
        }
    };
    report.store_problem = salvaged.stopped.clone();
    let snap = match snapshot::read(&state_dir.join(snapshot::FILE)) {
        Ok(s) => Some(s),
        Err(e) => {
            report.snapshot_problem = Some(e);
            None
        }
    };
    if salvaged.damaged.is_empty() && salvaged.stopped.is_none() {
        // Sound: nothing to take from the snapshot that the store lacks,
        // unless the store is older (it was replaced by hand).
        let newer = snap.as_ref().is_some_and(|s| {
            let have: BTreeMap<_, _> = salvaged
                .records
                .iter()
                .map(|r| (&r.key, r.generation))
                .collect();
            s.records
                .iter()
                .any(|r| have.get(&r.key).is_none_or(|g| *g < r.generation))
        });
        if !newer {
            report.sound = true;
            report.from_store = salvaged.records.len();
            return Ok(report);
        }
    }
    if !exists && snap.is_none() {
        anyhow::bail!(
            "nothing to recover from: {} is missing and {}",
            path.display(),
            report
                .snapshot_problem
                .as_deref()
                .unwrap_or("there is no snapshot")
        );
    }

    let mut merged: BTreeMap<_, (Record, bool)> = BTreeMap::new();
    for r in salvaged.records {
        merged.insert(r.key.clone(), (r, true));
    }
    if let Some(s) = snap {
        for r in s.records {
            match merged.get(&r.key) {
                Some((have, _)) if have.generation >= r.generation => {}
                _ => {
                    merged.insert(r.key.clone(), (r, false));
                }
            }
        }
    }
    for (raw, why) in salvaged.damaged {
        let found = merged.keys().any(|k| super::db_key(k) == raw);
        if !found {
            report.lost.push((raw, why));
        }
    }
    report.from_store = merged.values().filter(|(_, s)| *s).count();
    report.from_snapshot = merged.len() - report.from_store;
    let records: Vec<Record> = merged.into_values().map(|(r, _)| r).collect();

    let fresh = state_dir.join(format!("{store_file}.recovering"));
    let _ = std::fs::remove_file(&fresh);
    {
        let store = Store::open(&fresh)?;
        store.restore(&records)?;
    }
    let _ = std::fs::remove_file(fresh.with_extension("lock"));
    if exists {
        let aside = state_dir.join(format!("{store_file}.damaged-{}", crate::clock::now_ms()));
        std::fs::rename(&path, &aside)?;
        report.set_aside = Some(aside.display().to_string());
    }
    std::fs::rename(&fresh, &path)?;
    std::fs::File::open(state_dir)?.sync_all()?;
    Ok(report)
}
