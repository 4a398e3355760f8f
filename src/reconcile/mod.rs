//! The reconcile engine: a per-object work queue ([`queue`]) fed by store
//! changes and a periodic resync, a pool of workers, and one reconciler per
//! kind ([`vm`], [`kinds`]). Each reconciler observes, plans (a pure
//! function) and executes through the driver traits, then writes status
//! with conditions and `observedGeneration`. Errors become a `Ready=False`
//! condition with the failing operation as reason, a Warning event, and a
//! retry with exponential backoff; one object's failure never blocks another.
//!
//! Architecture invariant: reconcilers read desired state from the store
//! and write only status; only drivers touch the host.

pub mod kinds;
pub mod names;
pub mod queue;
pub mod status;
pub mod vm;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tracing::{debug, info_span, warn, Instrument};

use crate::driver::fake::{FakeHypervisor, FakeNet, FakeStorage};
use crate::driver::{DriverError, Hypervisor, Net, Storage};
use crate::model::{Kind, Manifest, ObjectKey, Spec};
use crate::store::{Event, Record, Store, StoreError};
use queue::WorkQueue;

/// The drivers a node uses.
#[derive(Clone)]
pub struct Drivers {
    /// Runs VMs.
    pub hypervisor: Arc<dyn Hypervisor>,
    /// Holds volumes.
    pub storage: Arc<dyn Storage>,
    /// Bridges and taps.
    pub net: Arc<dyn Net>,
    /// The node's DHCP servers, one per served bridge (only with a `Net`
    /// driver whose bridges are real interfaces).
    pub dhcp: Option<Arc<crate::dhcp::service::DhcpService>>,
}

impl Drivers {
    /// In-memory fakes of all three.
    pub fn fake() -> Drivers {
        Drivers {
            hypervisor: Arc::new(FakeHypervisor::default()),
            storage: Arc::new(FakeStorage::default()),
            net: Arc::new(FakeNet::default()),
            dhcp: None,
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's name.
    pub node_name: String,
    /// This node's addresses.
    pub node_addresses: Vec<String>,
    /// First retry delay after an error.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Full resync period.
    pub resync_every: Duration,
    /// How often a running VM is looked at (QEMU may exit at any time).
    pub vm_poll: Duration,
    /// Retry period while waiting for a referenced object.
    pub blocked_retry: Duration,
    /// Concurrent reconciles.
    pub workers: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node_name: "satellite".into(),
            node_addresses: vec![],
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(120),
            resync_every: Duration::from_secs(60),
            vm_poll: Duration::from_secs(2),
            blocked_retry: Duration::from_secs(5),
            workers: 4,
        }
    }
}

/// What a successful reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing until the object changes.
    Done,
    /// Look again after this long.
    RequeueAfter(Duration),
}

/// A failed reconcile: the reason and message go into the status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ReconcileError {
    /// CamelCase reason, e.g. `StartFailed`.
    pub reason: String,
    /// Human message.
    pub message: String,
    /// Worth retrying with backoff.
    pub transient: bool,
}

impl ReconcileError {
    /// An error that retrying will not fix.
    pub fn permanent(reason: &str, message: String) -> ReconcileError {
        ReconcileError {
            reason: reason.into(),
            message,
            transient: false,
        }
    }
}

impl From<DriverError> for ReconcileError {
    fn from(e: DriverError) -> Self {
        let op = e.op().to_string();
        let mut reason: String = op
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect::<String>())
                    .unwrap_or_default()
            })
            .collect();
        reason.push_str("Failed");
        if let DriverError::Condition { reason: r, .. } = &e {
            reason = r.to_string();
        }
        ReconcileError {
            reason,
            // A disk in use frees up when its VM stops: retry with backoff.
            transient: match &e {
                DriverError::Permanent { .. } => false,
                DriverError::Condition { reason, .. } => *reason == "VolumeInUse",
                _ => true,
            },
            message: e.to_string(),
        }
    }
}

impl From<StoreError> for ReconcileError {
    fn from(e: StoreError) -> Self {
        ReconcileError {
            reason: "StoreFailed".into(),
            message: e.to_string(),
            transient: true,
        }
    }
}

/// A reconcile began (for the drop → reconcile benchmark and tests).
#[derive(Debug, Clone)]
pub struct ReconcileStarted {
    /// Object.
    pub key: ObjectKey,
    /// Its generation.
    pub generation: i64,
    /// When.
    pub at: Instant,
}

/// The outcome of the cluster's placement election for one VM, in this
/// node's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elected {
    /// This node won and its claim has settled: run the VM here.
    Here,
    /// Another node holds the winning claim.
    Elsewhere {
        /// The winner (its gossip node ID, the node name).
        node: String,
        /// The claim's election epoch.
        epoch: u64,
    },
    /// No settled claim yet (election in progress).
    Pending,
    /// No node in this node's view satisfies the VM's placement
    /// constraints, so no claim will ever settle.
    Unschedulable {
        /// Which constraints the nodes fail.
        why: String,
    },
}

/// The placement election (the gossip layer), as the engine sees it:
/// read once at the start of a VM's reconcile (`vm::Cluster::read`),
/// before anything is resolved, planned or executed.
pub trait Placement: Send + Sync {
    /// Who runs the automatically placed VM `vm`.
    fn elected(&self, vm: &ObjectKey) -> Elected;
    /// The other live nodes whose gossiped status says they run `vm`
    /// (placed by hand or by the election): a node starts a VM only when
    /// no other node reports running it.
    fn running_on(&self, vm: &ObjectKey) -> Vec<String> {
        let _ = vm;
        Vec::new()
    }
    /// VMs whose election outcome changed (the engine looks at them again).
    fn subscribe(&self) -> broadcast::Receiver<ObjectKey>;
}

/// What reconcilers get.
pub struct Ctx {
    /// Desired state.
    pub store: Arc<Store>,
    /// Drivers.
    pub drivers: Drivers,
    /// Settings.
    pub config: EngineConfig,
    /// The cluster's election, when the node gossips; `None`: a standalone
    /// node runs every automatically placed VM itself.
    pub placement: Option<Arc<dyn Placement>>,
}

impl Ctx {
    /// A live object of kind `kind`, typed.
    pub fn typed<S: Spec>(&self, kind: Kind, namespace: &str, name: &str) -> Option<Manifest<S>> {
        let r = self
            .store
            .get(&ObjectKey::new(kind, Some(namespace), name))?;
        if r.deleted {
            return None;
        }
        serde_json::from_value(r.object).ok()
    }
    /// Write status (no-op when unchanged).
    pub fn write_status<T: Serialize>(
        &self,
        key: &ObjectKey,
        status: &T,
    ) -> Result<(), ReconcileError> {
        let v = serde_json::to_value(status).expect("status serializes");
        self.store.set_status(key, v).map_err(ReconcileError::from)
    }
}

/// The engine.
pub struct Engine {
    ctx: Arc<Ctx>,
    queue: Arc<WorkQueue>,
    started: broadcast::Sender<ReconcileStarted>,
}

impl Engine {
    /// An engine over `store` using `drivers`.
    pub fn new(store: Arc<Store>, drivers: Drivers, config: EngineConfig) -> Engine {
        Self::with_placement(store, drivers, config, None)
    }

    /// An engine whose automatically placed VMs run where `placement`
    /// elects them.
    pub fn with_placement(
        store: Arc<Store>,
        drivers: Drivers,
        config: EngineConfig,
        placement: Option<Arc<dyn Placement>>,
    ) -> Engine {
        let queue = Arc::new(WorkQueue::new(config.backoff_base, config.backoff_max));
        let (started, _) = broadcast::channel(4096);
        Engine {
            ctx: Arc::new(Ctx {
                store,
                drivers,
                config,
                placement,
            }),
            queue,
            started,
        }
    }

    /// Every reconcile start.
    pub fn started(&self) -> broadcast::Receiver<ReconcileStarted> {
        self.started.subscribe()
    }

    /// Run until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.ctx.store.subscribe();
        let mut elections = self.ctx.placement.as_ref().map(|p| p.subscribe());
        // Restart resumes where it stopped: look at everything once.
        self.enqueue_all();
        let mut workers = Vec::new();
        for _ in 0..self.ctx.config.workers.max(1) {
            let (ctx, queue, started) =
                (self.ctx.clone(), self.queue.clone(), self.started.clone());
            workers.push(tokio::spawn(worker(ctx, queue, started)));
        }
        let mut resync = tokio::time::interval(self.ctx.config.resync_every);
        resync.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = resync.tick() => self.enqueue_all(),
                change = changes.recv() => match change {
                    Ok(c) if c.status_only => {}
                    Ok(c) => {
                        // A Network's DHCP table is made of its VMs.
                        if c.key.kind == Kind::VirtualMachine {
                            for n in self.ctx.store.list(Some(Kind::Network)) {
                                if n.key.namespace == c.key.namespace {
                                    self.queue.add(n.key);
                                }
                            }
                        }
                        self.queue.add(c.key)
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        debug!(missed = n, "change notifications lagged; resyncing");
                        self.enqueue_all();
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                key = next_election(&mut elections) => match key {
                    Some(k) => self.queue.add(k),
                    None => self.enqueue_all(),
                },
            }
        }
        self.queue.shutdown();
        for w in workers {
            let _ = w.await;
        }
    }

    fn enqueue_all(&self) {
        for (key, _, _) in self.ctx.store.generations() {
            self.queue.add(key);
        }
    }
}

/// The next VM whose election changed; `None` after a lag (look at
/// everything). Never resolves without a placement.
async fn next_election(rx: &mut Option<broadcast::Receiver<ObjectKey>>) -> Option<ObjectKey> {
    let Some(r) = rx else {
        return std::future::pending().await;
    };
    match r.recv().await {
        Ok(k) => Some(k),
        Err(broadcast::error::RecvError::Lagged(_)) => None,
        Err(broadcast::error::RecvError::Closed) => {
            *rx = None;
            std::future::pending().await
        }
    }
}

async fn worker(
    ctx: Arc<Ctx>,
    queue: Arc<WorkQueue>,
    started: broadcast::Sender<ReconcileStarted>,
) {
    while let Some(key) = queue.next().await {
        let Some(record) = ctx.store.get(&key) else {
            queue.done(&key);
            continue;
        };
        let _ = started.send(ReconcileStarted {
            key: key.clone(),
            generation: record.generation,
            at: Instant::now(),
        });
        let span = info_span!("reconcile", object = %key, generation = record.generation);
        let result = reconcile_one(&ctx, &record).instrument(span).await;
        match result {
            Ok(outcome) => {
                queue.forget(&key);
                if let Outcome::RequeueAfter(d) = outcome {
                    if !record.deleted {
                        queue.add_after(key.clone(), d);
                    }
                }
            }
            Err(e) => {
                let delay = if e.transient {
                    Some(queue.retry(key.clone()))
                } else {
                    None
                };
                warn!(object = %key, reason = %e.reason, retry_in = ?delay, "{}", e.message);
                ctx.store.record_event(Event {
                    time_ms: crate::source::dir::now_ms(),
                    level: "Warning".into(),
                    object: Some(key.clone()),
                    source: None,
                    reason: e.reason.clone(),
                    message: match delay {
                        Some(d) => format!("{} (retry in {d:?})", e.message),
                        None => e.message.clone(),
                    },
                });
            }
        }
        queue.done(&key);
    }
}

async fn reconcile_one(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    match record.key.kind {
        Kind::VirtualMachine => vm::reconcile(ctx, record).await,
        Kind::Network => kinds::network(ctx, record).await,
        Kind::Spacesuit => kinds::spacesuit(ctx, record).await,
        Kind::Dataset => kinds::dataset(ctx, record).await,
        Kind::Replica => kinds::replica(ctx, record).await,
        Kind::Satellite => kinds::satellite(ctx, record).await,
        Kind::Relocation => {
            kinds::not_yet(
                ctx,
                record,
                "relocation is not implemented yet (it arrives with the radar and the VM drivers)",
            )
            .await
        }
        Kind::AccessPolicy => kinds::not_yet(
            ctx,
            record,
            "access policies are stored but not enforced yet (they arrive with the identity work)",
        )
        .await,
    }
}
