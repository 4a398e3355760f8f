//! Volume retention: deleting a VM or a replica never destroys its disks
//! at once. Its volumes are renamed `retained.<until_ms>.<volume>`
//! ([`crate::model::names::retained_volume`]): stopped, listed by `deorch
//! volume list`, restorable by `deorch volume restore`, and taken back
//! (renamed to their own name) when a VM with the same identity appears
//! again. [`sweep`] destroys those whose time is up, at every resync.
//! `deorch delete --purge` (the tombstone carries
//! [`crate::model::PURGE_ANNOTATION`]) and a retention of zero destroy at
//! once.
//!
//! The name is the whole record: nothing else to keep consistent, and a
//! rename is atomic in both storage drivers, so a crash leaves a volume
//! either live or retained, never lost.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::{info, warn};

use super::{Ctx, ReconcileError};
use crate::model::names::parse_retained;
use crate::store::Record;

/// Default retention: a day. Long enough to survive an editor's save, a
/// git checkout that drops and re-adds a file, a remount, and a mistaken
/// delete noticed the next morning; short enough that the space of
/// deleted VMs comes back by itself. `--purge` frees it at once.
pub const DEFAULT: Duration = Duration::from_secs(24 * 3600);

/// Whether `record` (a tombstone) asks for its volumes to go at once.
pub fn purges(record: &Record) -> bool {
    record
        .object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(crate::model::PURGE_ANNOTATION))
        .and_then(|v| v.as_str())
        == Some("true")
}

/// Until when a deletion now keeps its volumes; `None`: destroy them.
pub fn until(ctx: &Ctx, purge: bool) -> Option<u64> {
    let keep = ctx.config.volume_retention;
    (!purge && !keep.is_zero()).then(|| crate::clock::now_ms() + keep.as_millis() as u64)
}

/// Retained volumes by their original name, the newest (latest deadline)
/// first of each.
pub async fn retained(ctx: &Ctx) -> Result<BTreeMap<String, Vec<(u64, String)>>, ReconcileError> {
    let mut out: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for name in ctx.drivers.storage.list().await? {
        if let Some((until, volume)) = parse_retained(&name) {
            out.entry(volume.to_string())
                .or_default()
                .push((until, name.clone()));
        }
    }
    for v in out.values_mut() {
        v.sort_by(|a, b| b.cmp(a));
    }
    Ok(out)
}

/// Retained volumes by original name, newest first.
pub type Retained = BTreeMap<String, Vec<(u64, String)>>;

/// The retained volumes as last listed, and when. Listing every volume of
/// the node for each new VM's first reconcile would make creating many
/// VMs quadratic; within [`CACHE_FOR`] one listing serves them all, and
/// every retain, restore or purge this node makes drops it.
#[derive(Default)]
pub struct Cache(std::sync::Mutex<Option<(std::time::Instant, std::sync::Arc<Retained>)>>);

/// How long a listing of retained volumes is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(5);

impl Cache {
    /// Forget the listing: this node just retained, restored or purged.
    pub fn invalidate(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// [`retained`], from the cache when it is fresh.
pub async fn retained_cached(ctx: &Ctx) -> Result<std::sync::Arc<Retained>, ReconcileError> {
    if let Some((at, map)) = ctx
        .retained
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        if at.elapsed() < CACHE_FOR {
            return Ok(map.clone());
        }
    }
    let map = std::sync::Arc::new(retained(ctx).await?);
    *ctx.retained.0.lock().unwrap_or_else(|p| p.into_inner()) =
        Some((std::time::Instant::now(), map.clone()));
    Ok(map)
}

/// Destroy the retained volumes whose time is up; how many went.
pub async fn sweep(ctx: &Ctx) -> usize {
    let now = crate::clock::now_ms();
    let all = match retained(ctx).await {
        Ok(all) => all,
        Err(e) => {
            warn!(error = %e, "cannot list retained volumes");
            return 0;
        }
    };
    let mut gone = 0;
    for (volume, copies) in all {
        for (until, name) in copies.into_iter().filter(|(u, _)| *u <= now) {
            match ctx.drivers.storage.destroy(&name).await {
                Ok(()) => {
                    gone += 1;
                    ctx.retained.invalidate();
                    info!(volume = %volume, retained = %name, until, "retention over: volume destroyed");
                }
                Err(e) => warn!(retained = %name, error = %e, "cannot destroy a retained volume"),
            }
        }
    }
    gone
}
