//! Sources of desired state. Each source turns something outside the node
//! (the manifest directory, a git repository, the node's replica
//! schedules; the local API, the HTTP push and gossip are sources too,
//! living beside their protocols) into [`Batch`]es for
//! [`crate::admission`], the one gate in front of the store.
//!
//! Two kinds of source exist:
//! - **declarative sets** (a file, a git tree, a schedule): the source
//!   states the whole set of objects it declares; objects it declared
//!   before and no longer does are deleted ([`Batch::declarative`]), in
//!   the same transaction as the applies.
//! - **imperative** (the local API's `apply`/`delete`, a push, a gossiped
//!   document): each request names its objects.
//!
//! Architecture invariant: sources only write through admission; they
//! never call the store's write methods, reconcilers or drivers.

pub mod dir;
pub mod git;
pub mod replica_schedule;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

use crate::admission::Admission;
#[cfg(doc)]
use crate::admission::Batch;

/// A running source of desired state.
pub trait Source: Send + 'static {
    /// Human name, e.g. `dir:/etc/deorch/manifests`.
    fn name(&self) -> String;
    /// Run until `shutdown` turns true, writing through `admission`.
    fn run(
        self: Box<Self>,
        admission: Arc<Admission>,
        shutdown: watch::Receiver<bool>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}
