//! Sources of desired state. Each source turns something outside the node
//! (a manifest directory today; a git repository, peers' gossip and the
//! signed push API later) into accepted objects in the [`Store`].
//!
//! Two kinds of source exist:
//! - **declarative sets** (a file, a git tree): the source states the whole
//!   set of objects it declares; objects it declared before and no longer
//!   does are deleted. [`apply_set`] implements that once for all of them.
//! - **imperative** (the local API's `apply`/`delete`): each request names
//!   its objects.
//!
//! Architecture invariant: sources only write through the store's
//! `apply`/`delete`; they never call reconcilers or drivers.

pub mod dir;
pub mod git;

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

use crate::model::{AnyObject, ObjectKey};
use crate::store::{SourceId, Store, StoreError};

/// A running source of desired state.
pub trait Source: Send + 'static {
    /// Human name, e.g. `dir:/etc/deorch/manifests`.
    fn name(&self) -> String;
    /// Run until `shutdown` turns true, writing into `store`.
    fn run(
        self: Box<Self>,
        store: Arc<Store>,
        shutdown: watch::Receiver<bool>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// What [`apply_set`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SetOutcome {
    /// Objects whose generation changed.
    pub changed: Vec<(ObjectKey, i64)>,
    /// Objects deleted because the source no longer declares them.
    pub deleted: Vec<(ObjectKey, i64)>,
}

/// Make the store hold exactly `objects` for `source`: apply every object
/// (unchanged ones are no-ops), then delete the objects this source owned
/// and no longer declares, unless `keep` says another source declares them
/// now (e.g. a file renamed within one batch).
pub fn apply_set(
    store: &Store,
    source: &SourceId,
    objects: &[AnyObject],
    keep: &BTreeSet<ObjectKey>,
) -> Result<SetOutcome, StoreError> {
    let mut out = SetOutcome::default();
    let mut declared = BTreeSet::new();
    for obj in objects {
        let applied = store.apply(obj, source)?;
        declared.insert(applied.key.clone());
        if applied.changed {
            out.changed.push((applied.key, applied.generation));
        }
    }
    for record in store.list_by_source(source) {
        if declared.contains(&record.key) || keep.contains(&record.key) {
            continue;
        }
        if let Some(generation) = store.delete(&record.key, source)? {
            out.deleted.push((record.key, generation));
        }
    }
    Ok(out)
}
