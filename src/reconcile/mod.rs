//! Reconciliation: the engine ([`engine`]: workers fed by a per-object
//! work queue ([`queue`]) from store changes, elections and a periodic
//! resync) and one reconciler per kind ([`vm`], [`network`], [`spacesuit`],
//! [`dataset`], [`replica`], [`satellite`]; [`report`] for the kinds that
//! only report), with the types they share.
//!
//! Every reconciler runs the same steps: `resolve` builds the complete
//! desired configuration from the spec and the store; `observe` asks the
//! drivers; `plan` is a pure function of the two returning a [`Plan`] whose
//! actions carry everything they need; `execute` only calls drivers; the
//! status step writes conditions, phase and `observedGeneration`. A failure
//! becomes a `Ready=False` condition with the failing operation as reason
//! and a Warning event; its [`ErrorClass`] decides whether the engine
//! retries it with backoff or parks it until the object changes. One
//! object's failure never blocks another.
//!
//! Architecture invariant: reconcilers read desired state from the store
//! and write only status; only drivers touch the host.

pub mod dataset;
pub mod engine;
pub mod kind;
pub mod netindex;
pub mod network;
pub mod queue;
pub mod replica;
pub mod report;
pub mod retention;
pub mod satellite;
pub mod spacesuit;
pub mod status;
pub mod vm;

pub use crate::driver::Drivers;
/// Names live in the model (DHCP derives MACs from them too); re-exported
/// for the VM reconciler's `super::names` paths.
pub use crate::model::names;
pub use engine::{Engine, ReconcileStarted};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::driver::{DriverError, LiveDisks};
use crate::model::{Kind, Manifest, ObjectKey, Spec};
use crate::store::{Record, Store, StoreError};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's name.
    pub node_name: String,
    /// This node's ID: the address of its key (shown in its Satellite's
    /// status).
    pub node_id: Option<String>,
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
    /// How long the volumes of a deleted VM or replica are kept (under a
    /// `retained.<until>.<volume>` name) before they are destroyed; zero:
    /// destroyed at once. See [`retention`].
    pub volume_retention: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node_name: "satellite".into(),
            node_id: None,
            node_addresses: vec![],
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(120),
            resync_every: Duration::from_secs(60),
            vm_poll: Duration::from_secs(2),
            blocked_retry: Duration::from_secs(5),
            workers: 4,
            volume_retention: retention::DEFAULT,
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

/// What a kind's planner decided from desired and observed state alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan<A> {
    /// Carry out these actions in order (none: already as desired).
    Act(Vec<A>),
    /// Wait for another object to appear; look again after
    /// [`EngineConfig::blocked_retry`].
    Wait {
        /// Status reason, e.g. `SourceNotFound`.
        reason: &'static str,
        /// What is missing.
        message: String,
    },
    /// The desired state cannot be reached as declared.
    Fail(ReconcileError),
}

impl<A> Plan<A> {
    /// The actions to carry out (none while waiting), or the failure the
    /// reconcile ends in.
    pub fn actions(&self) -> Result<&[A], ReconcileError> {
        match self {
            Plan::Act(actions) => Ok(actions),
            Plan::Wait { .. } => Ok(&[]),
            Plan::Fail(e) => Err(e.clone()),
        }
    }
}

/// The disks of running VMs that a clone reads (the hypervisor snapshots
/// them), compared by their volumes so that plans compare by value.
#[derive(Clone, Default)]
pub struct Live(pub LiveDisks);

impl PartialEq for Live {
    fn eq(&self, other: &Live) -> bool {
        self.0.volumes == other.0.volumes
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Live").field(&self.0.volumes).finish()
    }
}

/// What reconciling `record` would do on this node now, with nothing
/// executed and no status written: each kind's resolve, observe and plan,
/// reading desired state through `ctx` (see [`Ctx::with_pending`]).
pub async fn preview(ctx: &Ctx, record: &Record) -> kind::Preview {
    use kind::Preview;
    let status_only = |what: &str| Preview {
        note: Some(what.to_string()),
        ..Preview::default()
    };
    match record.key.kind {
        Kind::VirtualMachine => vm::preview(ctx, record).await,
        Kind::Network => kind::preview::<network::Networks>(ctx, record).await,
        Kind::Spacesuit => kind::preview::<spacesuit::Spacesuits>(ctx, record).await,
        Kind::Dataset => kind::preview::<dataset::Datasets>(ctx, record).await,
        Kind::Replica => kind::preview::<replica::Replicas>(ctx, record).await,
        Kind::Satellite => status_only("status only: the node reports its capacity into it"),
        Kind::Relocation => status_only(
            "carried out by the node that runs the VM and the receiver the radar elects (gossip on, qemu driver, Live mode)",
        ),
        Kind::AccessPolicy => status_only("status only: admission enforces it"),
    }
}

/// The object `record` holds, typed as its kind.
pub fn decode<S: Spec>(record: &Record) -> Result<Manifest<S>, ReconcileError> {
    serde_json::from_value(record.object.clone())
        .map_err(|e| ReconcileError::permanent("Unreadable", e.to_string()))
}

/// The status `record` carries (empty when it has none or an older shape).
pub fn previous<T: DeserializeOwned + Default>(record: &Record) -> T {
    record
        .status
        .clone()
        .and_then(|s| serde_json::from_value(s).ok())
        .unwrap_or_default()
}

/// Whether retrying can help: the one classification the engine acts on
/// (see [`engine`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// May succeed later without any change (busy, timeout, a referenced
    /// object not there yet): retried with exponential backoff.
    Transient,
    /// Fails again until the object changes (bad spec, checksum mismatch,
    /// pool full): not retried until then; the status says why.
    Permanent,
}

impl ErrorClass {
    /// A driver failure's class. `NotFound` is transient (what is missing
    /// may be on its way); a disk in use frees up when its VM stops.
    pub fn of(e: &DriverError) -> ErrorClass {
        match e {
            DriverError::Transient { .. } | DriverError::NotFound { .. } => ErrorClass::Transient,
            DriverError::Condition { reason, .. } if *reason == "VolumeInUse" => {
                ErrorClass::Transient
            }
            DriverError::Permanent { .. } | DriverError::Condition { .. } => ErrorClass::Permanent,
        }
    }
}

/// A failed reconcile: the reason and message go into the status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ReconcileError {
    /// CamelCase reason, e.g. `StartFailed`.
    pub reason: String,
    /// Human message.
    pub message: String,
    /// Retried with backoff, or not until the object changes.
    pub class: ErrorClass,
}

impl ReconcileError {
    /// An error that retrying will not fix.
    pub fn permanent(reason: &str, message: String) -> ReconcileError {
        ReconcileError {
            reason: reason.into(),
            message,
            class: ErrorClass::Permanent,
        }
    }

    /// An error worth retrying with backoff.
    pub fn transient(reason: &str, message: String) -> ReconcileError {
        ReconcileError {
            reason: reason.into(),
            message,
            class: ErrorClass::Transient,
        }
    }

    /// Whether the engine retries it with backoff.
    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }
}

impl From<DriverError> for ReconcileError {
    fn from(e: DriverError) -> Self {
        let reason = match &e {
            DriverError::Condition { reason, .. } => reason.to_string(),
            _ => {
                let mut r: String = e.op().split('_').map(capitalized).collect();
                r.push_str("Failed");
                r
            }
        };
        ReconcileError {
            reason,
            class: ErrorClass::of(&e),
            message: e.to_string(),
        }
    }
}

/// `word` with its first letter upper-cased (`clone` → `Clone`).
fn capitalized(word: &str) -> String {
    let mut c = word.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

impl From<crate::model::phase::InvalidTransition> for ReconcileError {
    fn from(e: crate::model::phase::InvalidTransition) -> Self {
        ReconcileError::permanent("InvalidTransition", e.to_string())
    }
}

impl From<StoreError> for ReconcileError {
    fn from(e: StoreError) -> Self {
        ReconcileError::transient("StoreFailed", e.to_string())
    }
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
    /// The winning claim is a dead node's, and the VM holds data there:
    /// nobody starts it elsewhere on its own.
    NodeLost {
        /// The dead node.
        node: String,
        /// Its claim's epoch.
        epoch: u64,
    },
    /// Strict mode: this node runs or holds the claim of the VM but has
    /// not seen a majority of the cluster for a while: pause it here.
    NoQuorum,
}

/// Where the answer to a `deorch fastr recover` comes.
pub type FastrAnswer = tokio::sync::oneshot::Receiver<Result<String, String>>;

/// One `deorch fastr recover`: the VM, the point, where to answer.
pub type FastrRecovery = (
    ObjectKey,
    Option<String>,
    tokio::sync::oneshot::Sender<Result<String, String>>,
);

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
    /// The underlay (gossip) IPv4 address of every other live node, by
    /// name: where an interstellar segment's frames for its VMs go.
    fn node_addresses(&self) -> BTreeMap<String, std::net::Ipv4Addr> {
        BTreeMap::new()
    }
    /// VMs whose election outcome changed (the engine looks at them again).
    fn subscribe(&self) -> broadcast::Receiver<ObjectKey>;
    /// Why the last live move of `vm` to the node its placement names
    /// (it runs here, placed by hand elsewhere) failed; `None` while none
    /// failed.
    fn relocation_failure(&self, vm: &ObjectKey) -> Option<String> {
        let _ = vm;
        None
    }
    /// Other live nodes whose status lists the spacesuit volume `volume`
    /// (made there from a VM): where a node without it copies it from.
    fn volume_holders(&self, volume: &str) -> Vec<String> {
        let _ = volume;
        Vec::new()
    }
    /// The FASTR copies of `vm` (which runs here) as its sender last
    /// saw them; `None`: no replication from here.
    fn fastr(&self, vm: &ObjectKey) -> Option<Vec<crate::model::FastrCopy>> {
        let _ = vm;
        None
    }
    /// Ask for a FASTR round of `vm` now (it must run here and have a
    /// policy).
    fn fastr_sync(&self, vm: &ObjectKey) -> Result<(), String> {
        let _ = vm;
        Err("this node does not gossip: FASTR has no other node to copy to".into())
    }
    /// Whether a round of `vm` was asked for (the agent takes the ask).
    fn take_fastr_sync(&self, vm: &ObjectKey) -> bool {
        let _ = vm;
        false
    }
    /// The FASTR receiver's word: this node holds a complete copy of
    /// `vm` at point `point_ms` (unix ms), or none.
    fn set_held_copy(&self, vm: &ObjectKey, point_ms: Option<u64>) {
        let _ = (vm, point_ms);
    }
    /// The newest complete point of `vm` this node last said it holds.
    fn held_copy(&self, vm: &ObjectKey) -> Option<u64> {
        let _ = vm;
        None
    }
    /// The FASTR sender's word on `vm`'s copies.
    fn set_fastr(&self, vm: &ObjectKey, copies: Option<Vec<crate::model::FastrCopy>>) {
        let _ = (vm, copies);
    }
    /// The relocation agent's word on that move: `Some(why)` when it
    /// failed, `None` when it started again or succeeded.
    fn set_relocation_failure(&self, vm: &ObjectKey, why: Option<String>) {
        let _ = (vm, why);
    }
    /// An operator's recovery of a `NodeLost` VM: this node claims it
    /// above the dead node's claim (blocking; not from async code). The
    /// new claim's epoch, or why not.
    ///
    /// With `from_copy` (`deorch fastr recover`), the claimant may be
    /// alive: this node's newer claim displaces it (it stops, its disks
    /// kept as a diverged replica).
    fn recover(&self, vm: &ObjectKey, from_copy: bool) -> Result<u64, String> {
        let _ = (vm, from_copy);
        Err("this node does not gossip: there is no cluster to recover a VM in".into())
    }
    /// Ask the relocation agent to start `vm` on this node from its FASTR
    /// copy here at point `at` (newest when `None`); the answer comes on
    /// the receiver.
    fn fastr_recover(&self, vm: &ObjectKey, at: Option<String>) -> Result<FastrAnswer, String> {
        let _ = (vm, at);
        Err("this node does not gossip: FASTR has no copies to recover from".into())
    }
    /// The recoveries asked for (the agent takes them).
    fn take_fastr_recoveries(&self) -> Vec<FastrRecovery> {
        Vec::new()
    }
    /// Copy a volume another node holds into a new volume here, through
    /// the nodes' tunnels (a point-in-time copy, also of a running VM's
    /// disk).
    fn fetch_volume(
        &self,
        fetch: FetchVolume,
    ) -> crate::driver::BoxFuture<'static, Result<(), String>> {
        let _ = fetch;
        Box::pin(async { Err(NO_CLUSTER.to_string()) })
    }
    /// The image file whose SHA-256 is `sha256`, fetched from any peer
    /// that holds it (for the spacesuit `spacesuit`, which names that
    /// hash) and checked; its path in this node's image cache.
    fn fetch_image(
        &self,
        spacesuit: ObjectKey,
        sha256: String,
    ) -> crate::driver::BoxFuture<'static, Result<std::path::PathBuf, String>> {
        let _ = (spacesuit, sha256);
        Box::pin(async { Err(NO_CLUSTER.to_string()) })
    }
}

/// A copy, made here, of a volume another node holds: a VM's disk made
/// from a disk of a VM that runs (or rests) on another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchVolume {
    /// The node that holds the source (its name).
    pub from: String,
    /// The VM the copy is for (`namespace/name`): the holder gives the
    /// source only to the node that runs a VM whose spec names it.
    pub for_vm: String,
    /// The source volume on `from`.
    pub source: String,
    /// The new volume here.
    pub volume: String,
    /// Grow the copy to this size (when larger than the source).
    pub size: Option<u64>,
}

/// What a node without gossip answers a fetch.
const NO_CLUSTER: &str = "this node does not gossip: there is no peer to copy from";

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
    /// Records a dry run would write, read in place of the store's (empty
    /// in the engine: reconcilers read the store). Every read of desired
    /// state goes through [`Ctx::get`] and [`Ctx::list`], so a preview
    /// plans against the store as the batch would leave it.
    pub pending: BTreeMap<ObjectKey, Record>,
    /// This node's retained volumes as last listed (shared by every
    /// reconcile of the engine; see [`retention::retained_cached`]).
    pub retained: Arc<retention::Cache>,
    /// VMs by Network, kept by the engine (see [`netindex`]).
    pub vms_by_network: Arc<netindex::VmsByNetwork>,
}

impl Ctx {
    /// The same node's context, seeing `pending` on top of its store: what
    /// [`preview`] plans against.
    pub fn with_pending(&self, pending: Vec<Record>) -> Ctx {
        Ctx {
            store: self.store.clone(),
            drivers: self.drivers.clone(),
            config: self.config.clone(),
            placement: self.placement.clone(),
            pending: pending.into_iter().map(|r| (r.key.clone(), r)).collect(),
            retained: self.retained.clone(),
            vms_by_network: self.vms_by_network.clone(),
        }
    }

    /// The record of `key` (tombstones included).
    pub fn get(&self, key: &ObjectKey) -> Option<Record> {
        match self.pending.get(key) {
            Some(r) => Some(r.clone()),
            None => self.store.get(key),
        }
    }

    /// Live records, optionally of one kind, sorted by key.
    pub fn list(&self, kind: Option<Kind>) -> Vec<Record> {
        let mut records = self.store.list(kind);
        if self.pending.is_empty() {
            return records;
        }
        records.retain(|r| !self.pending.contains_key(&r.key));
        records.extend(
            self.pending
                .values()
                .filter(|r| !r.deleted && kind.is_none_or(|k| r.key.kind == k))
                .cloned(),
        );
        records.sort_by(|a, b| a.key.cmp(&b.key));
        records
    }

    /// A live object of kind `kind`, typed.
    pub fn typed<S: Spec>(&self, kind: Kind, namespace: &str, name: &str) -> Option<Manifest<S>> {
        let r = self.get(&ObjectKey::new(kind, Some(namespace), name))?;
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
        self.update_status(key, |_| Some(status))
    }

    /// Change the stored status of `key` in one step (see
    /// [`Store::update_status`]): `f` gets the live record and returns
    /// the new status, or `None` to leave it.
    pub fn update_status<T: Serialize>(
        &self,
        key: &ObjectKey,
        f: impl FnOnce(&Record) -> Option<T>,
    ) -> Result<(), ReconcileError> {
        self.store
            .update_status(key, |record| {
                let mut v = serde_json::to_value(f(record)?).expect("status serializes");
                status::mark_no_effect_yet(&mut v, record);
                Some(v)
            })
            .map_err(ReconcileError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_errors_are_classified_in_one_place() {
        use ErrorClass::{Permanent, Transient};
        let condition = |reason| DriverError::Condition {
            op: "create".into(),
            target: "vm-a-root".into(),
            reason,
            message: "no".into(),
        };
        let cases = [
            (
                DriverError::transient("live_snapshot", "a", "busy"),
                "LiveSnapshotFailed",
                Transient,
            ),
            (
                DriverError::permanent("start", "a", "bad"),
                "StartFailed",
                Permanent,
            ),
            (
                DriverError::not_found("clone", "base"),
                "CloneFailed",
                Transient,
            ),
            (condition("VolumeInUse"), "VolumeInUse", Transient),
            (condition("PoolFull"), "PoolFull", Permanent),
        ];
        for (e, reason, class) in cases {
            let r = ReconcileError::from(e.clone());
            assert_eq!((r.reason.as_str(), r.class), (reason, class), "{e}");
            assert_eq!(r.message, e.to_string());
        }
    }

    #[test]
    fn plans_hand_out_their_actions_or_their_failure() {
        assert_eq!(Plan::Act(vec![1, 2]).actions(), Ok(&[1, 2][..]));
        let wait: Plan<u8> = Plan::Wait {
            reason: "SourceNotFound",
            message: "later".into(),
        };
        assert_eq!(wait.actions(), Ok(&[][..]));
        let e = ReconcileError::permanent("Bad", "no".into());
        assert_eq!(Plan::<u8>::Fail(e.clone()).actions(), Err(e));
    }
}
