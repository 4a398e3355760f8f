//! The engine: a per-object work queue ([`super::queue`]) fed by store
//! changes, placement elections and a periodic resync; a pool of workers;
//! and the dispatch of each object to its kind's reconciler.
//!
//! A failed reconcile becomes a Warning event. What happens next depends on
//! its [`ErrorClass`], decided here only: a transient failure is retried
//! with exponential backoff; a permanent one parks the object, which is
//! not retried (nor revisited by the periodic resync) until it or an object
//! it depends on changes. One object's failure never blocks another.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{broadcast, watch};
use tracing::{debug, info_span, warn, Instrument};

use super::queue::WorkQueue;
use super::{
    dataset, network, replica, report, satellite, spacesuit, vm, Ctx, Drivers, EngineConfig,
    ErrorClass, Outcome, Placement, ReconcileError,
};
use crate::model::{Kind, ObjectKey};
use crate::store::{Event, Record, Store};

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

/// The engine.
pub struct Engine {
    ctx: Arc<Ctx>,
    queue: Arc<WorkQueue>,
    started: broadcast::Sender<ReconcileStarted>,
    /// Reconciles done (when to give freed memory back).
    done: Arc<AtomicU64>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// Reconciles after which a quiet engine hands freed memory back.
const TRIM_AFTER_RECONCILES: u64 = 200;

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
                pending: Default::default(),
                retained: Default::default(),
                vms_by_network: Default::default(),
            }),
            queue,
            started,
            done: Default::default(),
            metrics: None,
        }
    }

    /// Count reconciles (duration per kind) and show the queue's depth in
    /// `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Engine {
        metrics.set_queue(self.queue.clone());
        self.metrics = Some(metrics);
        self
    }

    /// The reconcilers' context (the local API plans dry runs with it).
    pub fn ctx(&self) -> Arc<Ctx> {
        self.ctx.clone()
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
        self.enqueue_all().await;
        let mut workers = Vec::new();
        for _ in 0..self.ctx.config.workers.max(1) {
            let (ctx, queue, started, done) = (
                self.ctx.clone(),
                self.queue.clone(),
                self.started.clone(),
                self.done.clone(),
            );
            let metrics = self.metrics.clone();
            workers.push(tokio::spawn(worker(ctx, queue, started, done, metrics)));
        }
        let mut resync = tokio::time::interval(self.ctx.config.resync_every);
        resync.tick().await;
        // A burst of reconciles (a large file, a restart) frees what it
        // built once it is over: give it back (see crate::memory).
        let mut quiet = tokio::time::interval(std::time::Duration::from_secs(2));
        let (mut seen, mut trimmed) = (0, 0);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = quiet.tick() => {
                    let n = self.done.load(Ordering::Relaxed);
                    if n == seen && n - trimmed >= TRIM_AFTER_RECONCILES {
                        trimmed = n;
                        tokio::task::spawn_blocking(crate::memory::give_back_freed);
                    }
                    seen = n;
                }
                _ = resync.tick() => {
                    self.resync_all();
                    // Retained volumes whose time is up go (off the loop).
                    let ctx = self.ctx.clone();
                    tokio::spawn(async move { super::retention::sweep(&ctx).await });
                }
                change = changes.recv() => match change {
                    Ok(c) if c.status_only => {}
                    Ok(c) => {
                        // A Network's DHCP table is made of its VMs: the
                        // networks the VM was and is on look again.
                        if c.key.kind == Kind::VirtualMachine {
                            let record = self.ctx.store.get(&c.key);
                            let index = &self.ctx.vms_by_network;
                            for n in index.update_in(&self.ctx.store, &c.key, record.as_ref()) {
                                self.queue.add(n);
                            }
                        }
                        // VMs that declare no NICs take their spacesuit's:
                        // its change moves them between networks.
                        if c.key.kind == Kind::Spacesuit {
                            self.spacesuit_changed(&c.key);
                        }
                        // Interstellars decide their VNI against each
                        // other (a collision keeps both down): a change of
                        // one has the others look again.
                        if c.key.kind == Kind::Network {
                            for n in interstellars(&self.ctx.store, &c.key) {
                                self.queue.add(n);
                            }
                        }
                        self.queue.add(c.key)
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        debug!(missed = n, "change notifications lagged; resyncing");
                        self.enqueue_all().await;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                key = next_election(&mut elections) => match key {
                    Some(k) => {
                        // Whether this node answers the VM's DHCP changes too.
                        for n in self.ctx.vms_by_network.networks_of_vm(&k) {
                            self.queue.add(n);
                        }
                        self.queue.add(k)
                    }
                    None => self.enqueue_all().await,
                },
            }
        }
        self.queue.shutdown();
        for w in workers {
            let _ = w.await;
        }
    }

    /// The VMs made from spacesuit `suit` look again, and their networks
    /// with them (the NICs they inherit may have changed).
    fn spacesuit_changed(&self, suit: &ObjectKey) {
        let index = &self.ctx.vms_by_network;
        for vm in self.ctx.store.list(Some(Kind::VirtualMachine)) {
            let made_from = vm
                .object
                .pointer("/spec/spacesuit")
                .and_then(|s| s.as_str());
            if vm.key.namespace != suit.namespace || made_from != Some(suit.name.as_str()) {
                continue;
            }
            for n in index.update_in(&self.ctx.store, &vm.key, Some(&vm)) {
                self.queue.add(n);
            }
            self.queue.add(vm.key);
        }
    }

    /// Everything, parked objects included (start-up, missed changes).
    async fn enqueue_all(&self) {
        // Off the runtime's threads: it decodes every VM.
        let ctx = self.ctx.clone();
        let _ = tokio::task::spawn_blocking(move || ctx.vms_by_network.rebuild(&ctx.store)).await;
        for (key, _, _) in self.ctx.store.generations() {
            self.queue.add(key);
        }
    }

    /// Everything not parked after a permanent failure (the periodic look).
    fn resync_all(&self) {
        for (key, _, _) in self.ctx.store.generations() {
            self.queue.resync(key);
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
    done: Arc<AtomicU64>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) {
    while let Some(key) = queue.next().await {
        done.fetch_add(1, Ordering::Relaxed);
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
        let t0 = Instant::now();
        let result = reconcile_one(&ctx, &record).instrument(span).await;
        if let Some(m) = &metrics {
            m.reconciled(key.kind, result.is_ok(), t0.elapsed().as_secs_f64());
        }
        settle(&ctx, &queue, &record, result);
        queue.done(&key);
    }
}

/// The Networks to look at again when Network `changed` changed: those
/// whose segment collides with its new one, and those kept down by a
/// collision (it may have been with its old one).
fn interstellars(store: &Store, changed: &ObjectKey) -> Vec<ObjectKey> {
    let all = store.list_shared();
    let now = all
        .iter()
        .find(|r| r.key == *changed && !r.deleted)
        .and_then(|r| crate::fabric::segment_of(r));
    all.iter()
        .filter(|r| !r.deleted && r.key != *changed && r.key.kind == Kind::Network)
        .filter(|r| {
            let Some(seg) = crate::fabric::segment_of(r) else {
                return false;
            };
            now.as_ref().is_some_and(|n| n.0 == seg.0 || n.1 == seg.1)
                || r.status
                    .as_ref()
                    .is_some_and(|s| s.to_string().contains(crate::fabric::COLLISION_REASON))
        })
        .map(|r| r.key.clone())
        .collect()
}

/// Schedule what follows a reconcile of `record`: a requeue it asked for,
/// a backoff retry, or parking.
fn settle(ctx: &Ctx, queue: &WorkQueue, record: &Record, result: Result<Outcome, ReconcileError>) {
    let key = &record.key;
    let e = match result {
        Ok(outcome) => {
            queue.forget(key);
            if let (Outcome::RequeueAfter(d), false) = (outcome, record.deleted) {
                queue.add_after(key.clone(), d);
            }
            return;
        }
        Err(e) => e,
    };
    let next = match e.class {
        ErrorClass::Transient => format!("retry in {:?}", queue.retry(key.clone())),
        ErrorClass::Permanent => {
            queue.park(key);
            "not retried until the object changes".to_string()
        }
    };
    warn!(object = %key, reason = %e.reason, next = %next, "{}", e.message);
    ctx.store.record_event(Event {
        time_ms: crate::clock::now_ms(),
        level: "Warning".into(),
        object: Some(key.clone()),
        source: None,
        reason: e.reason.clone(),
        message: format!("{} ({next})", e.message),
    });
}

async fn reconcile_one(ctx: &Ctx, record: &Record) -> Result<Outcome, ReconcileError> {
    match record.key.kind {
        Kind::VirtualMachine => vm::reconcile(ctx, record).await,
        Kind::Network => network::reconcile(ctx, record).await,
        Kind::Spacesuit => spacesuit::reconcile(ctx, record).await,
        Kind::Dataset => dataset::reconcile(ctx, record).await,
        Kind::Replica => replica::reconcile(ctx, record).await,
        Kind::Satellite => satellite::reconcile(ctx, record).await,
        Kind::Relocation => report::relocation(ctx, record),
        Kind::AccessPolicy => report::access_policy(ctx, record),
    }
}
