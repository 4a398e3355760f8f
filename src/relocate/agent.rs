//! The node's relocation agent: it carries out the relocations the radar
//! gives this node, as the sender (the node that runs the VM) or as the
//! receiver (the node the radar elected), over tunnels between the two
//! nodes ([`super::tunnel`]) on the node's gossip address (TCP, the same
//! port number as gossip's UDP).
//!
//! ```text
//! gossip task ── Link (relocations, runners, receivers, addresses) ──► agent
//! sender agent ── control tunnel: Offer (VM config, disk sizes) ──► receiver agent
//!                                                   create volumes, QEMU -incoming defer
//! sender QEMU ─► 127.0.0.1 forwarder ─► tunnel "nbd"/"migration" ─► receiver QEMU
//!               session::run_sender  ◄── Exported/Incoming/.../Running ──►  session::run_receiver
//! receiver agent ── TakeOver (claim at epoch+1) ──► gossip task ──► sender stops, deletes its copy
//! ```
//!
//! While a relocation holds a VM, its marker (`Hypervisor::relocation_lock`)
//! keeps the VM reconciler away from it on both nodes, so nothing resumes
//! the sender's paused QEMU or stops the receiver's incoming one. The VM
//! runs on exactly one node at every moment: the sender's guest runs
//! until migration completes; the receiver's runs only after `cont`,
//! which comes after the sender is paused for good; the sender deletes its
//! copy only once the VM's claim has moved to the receiver. Each node
//! writes the relocation's status as it sees it (phase, progress, reason).
//!
//! Offline mode runs the same way with [`super::offline`]'s data path
//! (the VM stopped first, started on the receiver from the copies). A
//! restarted daemon finishes or rolls back what its markers say
//! (`recover_all`). Not yet: an incremental `zfs send` before the live
//! mirror (offline moves between zfs nodes stream the volumes).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::live::{abort, LivePlan, LiveProgress, LiveStage};
use super::session::{expect, next, run_receiver, run_sender_from, say, SessionError, Step};
use super::tunnel::{self, RateLimit, Tunnel, TunnelKey};
use crate::driver::{DiskImage, Drivers, VmConfig, VmState};
use crate::gossip::node::is_pin_relocation;
use crate::gossip::{DocKey, NodeId, RelocationView};
use crate::model::phase::RelocationPhase;
use crate::model::{Kind, ObjectKey, RelocationProgress, RelocationStatus};
use crate::qemu::qmp::Qmp;
use crate::store::Store;

#[path = "fastr.rs"]
pub mod fastr;
#[path = "fetch.rs"]
mod fetch;
pub use fetch::{check_message as check_fetch_message, sample_ask as sample_fetch_ask, Fetch};

/// What the gossip task tells the agent, kept current.
#[derive(Clone, Default)]
pub struct Link {
    /// This node.
    pub me: Option<NodeId>,
    /// This node's side of tunnels.
    pub key: Option<TunnelKey>,
    /// The relocations the node knows.
    pub relocations: Vec<RelocationView>,
    /// Members' gossip addresses (where their agents listen).
    pub addrs: BTreeMap<NodeId, SocketAddr>,
    /// Members' names.
    pub names: BTreeMap<NodeId, String>,
    /// Live members (this node too) as their statuses describe them.
    pub members: BTreeMap<NodeId, Member>,
}

/// A live member as FASTR's election reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Its tags.
    pub tags: crate::gossip::wire::TagSet,
    /// Its performance class.
    pub performance: crate::model::Performance,
    /// Cordoned.
    pub unschedulable: bool,
    /// The VMs it runs.
    pub vms: Vec<DocKey>,
    /// The FASTR copies it holds: (hash of the VM's key, newest complete
    /// point in unix ms).
    pub copies: Vec<(u64, u64)>,
}

impl Link {
    fn name(&self, id: &NodeId) -> String {
        self.names.get(id).cloned().unwrap_or_else(|| id.0.clone())
    }

    fn view(&self, key: &DocKey) -> Option<&RelocationView> {
        self.relocations.iter().find(|v| v.key == *key)
    }
}

/// What the agent asks of the gossip task.
pub enum Ask {
    /// Claim `vm` above the sender's claim: it runs here now.
    TakeOver {
        /// The VM.
        vm: DocKey,
        /// The sender.
        from: NodeId,
        /// The claim's epoch, or why not.
        reply: oneshot::Sender<Result<u64, String>>,
    },
}

/// What a tunnel asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    /// The Relocation, `namespace/name`.
    relocation: String,
    /// `control`, `nbd` or `migration`.
    stream: String,
}

/// The sender's first message: what the receiver must make.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Offer {
    /// The configuration the VM runs with on the sender.
    config: VmConfig,
    /// Virtual size of each volume, by volume name.
    sizes: BTreeMap<String, u64>,
    /// Stop, copy, start (the VM is stopped on the sender).
    #[serde(default)]
    offline: bool,
    /// Offline: the kind of volume stream the sender's storage sends
    /// (`zfs`); a receiver of that kind answers `Streams`, any other
    /// `Exported` (NBD).
    #[serde(default)]
    stream: Option<String>,
    /// With `stream`: the FASTR points every volume of the VM holds on
    /// the sender, oldest first. A receiver holding its copies whole at
    /// one of them answers `StreamsFrom` it.
    #[serde(default)]
    bases: Vec<String>,
}

/// A streamed offline copy stops the VM for its last pass once a pass
/// while it runs moves at most this much...
const SMALL_PASS_BYTES: u64 = 16 << 20;
/// ...or after this many passes while it runs.
const MAX_RUNNING_PASSES: usize = 4;

/// A task aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The local ends of a receiving session's streams.
#[derive(Debug, Clone)]
struct Ports {
    peer: NodeId,
    /// Local address of each stream (`nbd`, `migration`, `disk:N`).
    streams: BTreeMap<String, SocketAddr>,
}

/// The relocation agent of one node.
pub struct Agent {
    /// The node's drivers.
    pub drivers: Drivers,
    /// The node's store (relocation statuses).
    pub store: Arc<Store>,
    /// Where tunnels are accepted (the gossip address, TCP).
    pub listen: SocketAddr,
    /// From the gossip task.
    pub link: watch::Receiver<Link>,
    /// To the gossip task.
    pub asks: mpsc::UnboundedSender<Ask>,
    /// Cap on what this node sends in relocation streams.
    pub rate: Option<Arc<RateLimit>>,
    /// Copies the engine asks for (`None`: taken by an earlier agent).
    pub fetches: Option<mpsc::UnboundedReceiver<Fetch>>,
    /// The election (who runs a VM another node copies a disk for).
    pub placement: Arc<dyn crate::reconcile::Placement>,
    /// The content-addressed image cache.
    pub images: std::path::PathBuf,
}

/// The marker a relocation leaves on a VM it holds (durable: a restarted
/// daemon finishes or rolls back from it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lock {
    relocation: String,
    /// `sender` or `receiver`.
    role: String,
    /// The other node.
    peer: NodeId,
    peer_name: String,
    /// The VM's volumes on this node.
    volumes: Vec<String>,
    /// Receiver: the FASTR point at which its copies became the volumes
    /// (given back, not destroyed, when the relocation does not switch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<String>,
}

impl Lock {
    fn text(&self) -> String {
        serde_json::to_string(self).expect("locks serialize")
    }
}

struct Shared {
    drivers: Drivers,
    store: Arc<Store>,
    link: watch::Receiver<Link>,
    asks: mpsc::UnboundedSender<Ask>,
    /// Receiving sessions, by relocation.
    incoming: Mutex<BTreeMap<DocKey, Ports>>,
    /// Relocations a session of this node works on.
    busy: Mutex<BTreeSet<DocKey>>,
    /// Relocations this node finished as sender (with the generation of
    /// the object then): not started again unless the object changes.
    done: Mutex<BTreeMap<DocKey, i64>>,
    rate: Option<Arc<RateLimit>>,
    placement: Arc<dyn crate::reconcile::Placement>,
    images: std::path::PathBuf,
    /// FASTR, as the sender of the VMs that run here.
    fastr: Mutex<BTreeMap<DocKey, fastr::VmRepl>>,
    /// VMs a FASTR round works on here (as sender, or receiver: kind
    /// `Fastr`).
    fastr_busy: Mutex<BTreeSet<DocKey>>,
    /// Relocations received here onto this node's FASTR copies of the
    /// VM: the point, and the volumes the copies became.
    adopted: Mutex<BTreeMap<DocKey, (String, Vec<String>)>>,
    /// Relocations sent from here as what changed since a FASTR point
    /// the receiver's copies held: the point (see `finish_sender`).
    based: Mutex<BTreeMap<DocKey, String>>,
}

/// Settings of the copy.
const DOWNTIME_LIMIT_MS: u64 = 50;
const COPY_TIMEOUT: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an offline relocation lets the guest shut down when the VM
/// does not say (as the VM reconciler).
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restarted node waits for gossip to say who runs a VM a
/// relocation marker names.
const RECOVER_WAIT: Duration = Duration::from_secs(20);
/// How long a receiver waits to see its own claim win when the sender
/// comes first.
const SETTLE_WAIT: Duration = Duration::from_secs(15);
/// A status write at most this often while copying.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

impl Agent {
    /// Run until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let listener = match TcpListener::bind(self.listen).await {
            Ok(l) => l,
            Err(e) => {
                warn!(listen = %self.listen, error = %e, "relocation tunnels cannot listen: this node can send VMs but not receive them");
                return;
            }
        };
        info!(listen = %self.listen, "relocation agent listening (TCP)");
        let shared = Arc::new(Shared {
            drivers: self.drivers,
            store: self.store,
            link: self.link.clone(),
            asks: self.asks,
            incoming: Mutex::new(BTreeMap::new()),
            busy: Mutex::new(BTreeSet::new()),
            done: Mutex::new(BTreeMap::new()),
            rate: self.rate,
            placement: self.placement,
            images: self.images,
            fastr: Mutex::new(BTreeMap::new()),
            fastr_busy: Mutex::new(BTreeSet::new()),
            adopted: Mutex::new(BTreeMap::new()),
            based: Mutex::new(BTreeMap::new()),
        });
        shared.clone().recover_all();
        shared.remove_stale_snapshots().await;
        shared.prune_images();
        let mut prune = tokio::time::interval(fetch::IMAGE_GRACE);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fetches = self.fetches;
        let mut link = self.link;
        let mut every = tokio::time::interval(Duration::from_secs(1));
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TUNNELS));
        let refusals = Arc::new(Refusals::default());
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                a = listener.accept() => if let Ok((s, from)) = a {
                    // Bounded: a flood of connections is dropped, not served.
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        refusals.note(from, "too many relocation tunnels open");
                        continue;
                    };
                    let sh = shared.clone();
                    let refusals = refusals.clone();
                    tokio::spawn(async move {
                        if let Err(e) = sh.clone().serve(s).await {
                            refusals.note(from, &e);
                        }
                        drop(permit);
                    });
                },
                c = link.changed() => {
                    if c.is_err() {
                        break;
                    }
                    shared.clone().scan();
                }
                _ = every.tick() => {
                    shared.clone().scan();
                    shared.fastr_scan();
                }
                _ = prune.tick() => shared.prune_images(),
                Some(f) = async { match fetches.as_mut() { Some(r) => r.recv().await, None => None } } => {
                    tokio::spawn(shared.clone().fetch(f));
                }
            }
        }
    }
}

/// Tunnels a node serves at once (each relocation uses a few).
const MAX_TUNNELS: usize = 256;

/// Refused tunnels, logged once per peer address per 5 s, never per
/// connection.
#[derive(Default)]
struct Refusals(Mutex<BTreeMap<std::net::IpAddr, (Option<Instant>, u64)>>);

impl Refusals {
    fn note(&self, from: SocketAddr, why: &str) {
        let mut m = self.0.lock().unwrap();
        if m.len() > 1024 {
            m.clear();
        }
        let e = m.entry(from.ip()).or_insert((None, 0));
        e.1 += 1;
        if e.0.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            warn!(%from, refused = e.1, error = %why, "relocation tunnel refused");
            *e = (Some(Instant::now()), 0);
        }
    }
}

fn key_text(k: &DocKey) -> String {
    format!("{}/{}", k.namespace, k.name)
}

fn object_key(k: &DocKey) -> ObjectKey {
    ObjectKey::new(Kind::Relocation, Some(&k.namespace), &k.name)
}

/// The record that asks for relocation `v`: its Relocation object, or,
/// for a VM placed by hand (no object), the VM's own record.
fn request_key(v: &RelocationView) -> ObjectKey {
    if is_pin_relocation(&v.key) {
        vm_key(&v.vm)
    } else {
        object_key(&v.key)
    }
}

/// The VM a [`is_pin_relocation`] key moves.
fn pin_vm(key: &DocKey) -> Option<DocKey> {
    let name = key.name.strip_suffix("@placement")?;
    is_pin_relocation(key).then(|| DocKey::new("VirtualMachine", &key.namespace, name))
}

fn vm_key(k: &DocKey) -> ObjectKey {
    ObjectKey::new(Kind::VirtualMachine, Some(&k.namespace), &k.name)
}

fn vm_id(k: &DocKey) -> String {
    format!("{}/{}", k.namespace, k.name)
}

/// A dead peer or a cut link ends a tunnel within seconds rather than
/// TCP's quarter of an hour: keepalive probes while it is idle (the
/// receiver waiting for the next step), a bound on unacknowledged data
/// while it sends (the sender's copy). Each side then fails its session
/// and rolls back as for any failure.
pub(crate) fn bound_liveness(s: &TcpStream) {
    let k = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2))
        .with_retries(3);
    let sock = socket2::SockRef::from(s);
    let _ = sock.set_tcp_keepalive(&k);
    let _ = sock.set_tcp_user_timeout(Some(Duration::from_secs(15)));
}

fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl Shared {
    /// Start a sender session for each relocation of a VM this node runs
    /// whose receiver is elected.
    fn scan(self: Arc<Self>) {
        let link = self.link.borrow().clone();
        let Some(me) = link.me.clone() else { return };
        for v in &link.relocations {
            if let (Some(runner), None, Some(why)) = (&v.runner, &v.receiver, &v.unplaceable) {
                if *runner == me {
                    self.unschedulable(&v.key, why);
                }
                continue;
            }
            let (Some(runner), Some(receiver)) = (&v.runner, &v.receiver) else {
                continue;
            };
            if v.done {
                continue;
            }
            if *runner != me || *receiver == me {
                continue;
            }
            // Its claim can come before its membership (a node that just
            // restarted): wait until its address is known.
            if !link.addrs.contains_key(receiver) {
                continue;
            }
            // A VM placed by hand that runs here while its placement
            // names another node moves with no Relocation object: the
            // VM's own record stands for it (its generation: one attempt
            // per version of the VM).
            let pin = is_pin_relocation(&v.key);
            let Some(rec) = self.store.get(&request_key(v)).filter(|r| !r.deleted) else {
                continue;
            };
            if self.done.lock().unwrap().get(&v.key) == Some(&rec.generation) {
                continue;
            }
            // Finished before this daemon started: not again.
            let st: RelocationStatus = rec
                .status
                .clone()
                .filter(|_| !pin)
                .and_then(|s| serde_json::from_value(s).ok())
                .unwrap_or_default();
            if st.observed_generation == Some(rec.generation)
                && matches!(
                    st.phase,
                    Some(RelocationPhase::Failed | RelocationPhase::Succeeded)
                )
            {
                continue;
            }
            if !self.busy.lock().unwrap().insert(v.key.clone()) {
                continue;
            }
            let sh = self.clone();
            let v = v.clone();
            let receiver = receiver.clone();
            tokio::spawn(async move {
                let generation = rec.generation;
                let mode = if pin {
                    None
                } else {
                    rec.object["spec"]["mode"].as_str()
                };
                sh.send(&v, &receiver, mode).await;
                sh.done.lock().unwrap().insert(v.key.clone(), generation);
                sh.busy.lock().unwrap().remove(&v.key);
            });
        }
    }

    /// Update the relocation's status as this node sees it.
    fn status(&self, key: &DocKey, f: impl FnOnce(&mut RelocationStatus)) {
        let k = object_key(key);
        // One step: the reconciler that reports on the object writes its
        // status too.
        let done = self.store.update_status(&k, |rec| {
            let mut st: RelocationStatus = crate::reconcile::previous(rec);
            st.observed_generation = Some(rec.generation);
            f(&mut st);
            Some(serde_json::to_value(&st).expect("statuses serialize"))
        });
        if let Err(e) = done {
            warn!(relocation = %k, error = %e, "relocation status not written");
        }
    }

    /// No node can receive it: say why (it stays `Pending`: a node that
    /// satisfies the target may join later).
    fn unschedulable(&self, key: &DocKey, why: &str) {
        let message = format!("no node can receive the VM: {why}");
        if let Some(vm) = pin_vm(key) {
            self.placement
                .set_relocation_failure(&vm_key(&vm), Some(why.to_string()));
            return;
        }
        self.status(key, |s| {
            if s.phase.is_some_and(|p| p != RelocationPhase::Pending) {
                return;
            }
            let generation = s.observed_generation.unwrap_or(0);
            crate::reconcile::status::set_condition(
                &mut s.conditions,
                "Ready",
                false,
                "Unschedulable",
                &message,
                generation,
            );
            s.phase = Some(RelocationPhase::Pending);
            s.message = Some(message);
        });
    }

    fn phase(&self, key: &DocKey, phase: RelocationPhase, message: impl Into<String>) {
        let message = message.into();
        info!(relocation = %key_text(key), ?phase, %message, "relocation");
        // A move to where a VM is placed by hand has no object of its
        // own: the VM's status carries its failure.
        if let Some(vm) = pin_vm(key) {
            let failed = (phase == RelocationPhase::Failed).then(|| message.clone());
            self.placement.set_relocation_failure(&vm_key(&vm), failed);
        }
        self.status(key, |s| {
            let generation = s.observed_generation.unwrap_or(0);
            crate::reconcile::status::set_condition(
                &mut s.conditions,
                "Ready",
                phase == RelocationPhase::Succeeded,
                &format!("{phase:?}"),
                &message,
                generation,
            );
            s.phase = Some(phase);
            s.message = Some(message);
        });
    }

    /// Wait until the link says `f`, up to `limit` (`None`: forever).
    async fn wait_link(&self, limit: Option<Duration>, f: impl Fn(&Link) -> bool) -> bool {
        let mut link = self.link.clone();
        let until = limit.map(|l| Instant::now() + l);
        loop {
            if f(&link.borrow_and_update()) {
                return true;
            }
            let left = until.map(|u| u.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return false;
            }
            let wait = left.unwrap_or(Duration::from_secs(3600));
            if let Ok(Err(_)) = tokio::time::timeout(wait, link.changed()).await {
                return false;
            }
        }
    }

    /// Open a tunnel to `to` for `stream` of relocation `key`.
    async fn open(&self, to: &NodeId, key: &DocKey, stream: &str) -> Result<Tunnel, String> {
        let (addr, tk) = {
            let link = self.link.borrow();
            (link.addrs.get(to).copied(), link.key.clone())
        };
        let addr = addr.ok_or_else(|| format!("no address known for {to}"))?;
        let tk = tk.ok_or("no tunnel key yet")?;
        let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("{addr}: no connection within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        let _ = s.set_nodelay(true);
        bound_liveness(&s);
        let header = serde_json::to_vec(&Header {
            relocation: key_text(key),
            stream: stream.into(),
        })
        .expect("headers serialize");
        tunnel::connect(s, &tk, to, &header)
            .await
            .map_err(|e| e.to_string())
    }

    /// The sender's side of relocation `v` to `receiver`.
    async fn send(self: &Arc<Self>, v: &RelocationView, receiver: &NodeId, mode: Option<&str>) {
        let link = self.link.borrow().clone();
        let to = link.name(receiver);
        let key = &v.key;
        self.status(key, |s| {
            s.source = link.me.as_ref().map(|m| link.name(m));
            s.destination = Some(to.clone());
            s.progress = None;
            s.downtime_ms = None;
        });
        let offline = mode == Some("Offline");
        let hv = self.drivers.hypervisor.clone();
        let id = vm_id(&v.vm);
        let config = match hv.state(&id).await {
            Ok(VmState::Running { config, .. }) => *config,
            Ok(other) => {
                let what = format!("{other:?}");
                let what = what.split([' ', '(', '{']).next().unwrap_or("");
                self.phase(
                    key,
                    RelocationPhase::Failed,
                    format!("the VM is not running here (it is {what}): only a running VM is relocated live"),
                );
                return;
            }
            Err(e) => {
                self.phase(key, RelocationPhase::Failed, e.to_string());
                return;
            }
        };
        let Some(sock) = hv.qmp_socket(&id) else {
            self.phase(
                key,
                RelocationPhase::Failed,
                format!("the {} driver cannot relocate a running VM yet", hv.name()),
            );
            return;
        };
        // The copies first, when the VM's FASTR policy asks (before the
        // lock: a relocation's lock holds FASTR rounds off).
        if self.fastr_before_relocation(&v.vm).await {
            self.phase(
                key,
                RelocationPhase::Preparing,
                "a FASTR round before the move (triggers.relocation) is done",
            );
        }
        let lock = Lock {
            relocation: key_text(key),
            role: "sender".into(),
            peer: receiver.clone(),
            peer_name: to.clone(),
            volumes: config.disks.iter().map(|d| d.1.clone()).collect(),
            base: None,
        };
        if let Err(e) = hv.set_relocation_lock(&id, Some(&lock.text())) {
            self.phase(key, RelocationPhase::Failed, e.to_string());
            return;
        }
        self.phase(
            key,
            RelocationPhase::Preparing,
            if offline {
                format!("{to} makes the VM's disks; the VM stops here")
            } else {
                format!("{to} makes the VM's disks and a paused QEMU")
            },
        );
        self.based.lock().unwrap().remove(key);
        let sent = if offline {
            self.send_offline(v, receiver, config).await
        } else {
            self.send_live(v, receiver, config, &sock).await
        };
        match sent {
            Ok(downtime) => {
                self.phase(
                    key,
                    RelocationPhase::Switching,
                    format!("the VM runs on {to}; waiting for its claim"),
                );
                self.finish_sender(v, receiver, &to, Some(downtime), &lock.volumes)
                    .await;
            }
            Err(SessionError::Undecided(why)) => {
                warn!(relocation = %key_text(key), %why, "no word from the receiver after the switch: the VM stays paused here until the receiver claims it or says it never ran it");
                self.phase(
                    key,
                    RelocationPhase::Switching,
                    format!("no word from {to} after the switch ({why}): the VM stays paused here until {to} claims it or says it never ran it"),
                );
                self.settle_undecided(v, &lock).await;
            }
            Err(e) => {
                let _ = hv.set_relocation_lock(&id, None);
                // An offline VM stopped by now is started again here by
                // its reconciler once the marker is gone.
                let after = if offline {
                    "the VM runs here (started again if it had stopped)"
                } else {
                    "the VM runs on here as before"
                };
                self.phase(key, RelocationPhase::Failed, format!("{e}; {after}"));
            }
        }
    }

    /// After the switch: once the VM's claim is the receiver's, stop the
    /// paused copy here and delete its disks (replicas stay).
    async fn finish_sender(
        &self,
        v: &RelocationView,
        receiver: &NodeId,
        to: &str,
        downtime: Option<u64>,
        volumes: &[String],
    ) {
        let vm = v.vm.clone();
        let r = receiver.clone();
        // A VM placed by hand has no claim to wait for: the receiver's
        // word that it runs the guest (after `cont`, this copy paused for
        // good) is what there is, and its placement names the receiver.
        if !is_pin_relocation(&v.key) {
            self.wait_link(None, |l| {
                l.relocations
                    .iter()
                    .any(|x| x.vm == vm && x.runner.as_ref() == Some(&r))
            })
            .await;
        }
        let id = vm_id(&v.vm);
        let hv = &self.drivers.hypervisor;
        let mut notes = Vec::new();
        // QEMU goes first (it holds the volumes open), the relocation's
        // marker last: until the volumes are gone the VM reconciler keeps
        // off them (it would otherwise see a copy the receiver's newer
        // claim replaced, and keep its disks as a diverged replica).
        if let Err(e) = hv.stop(&id, Duration::ZERO).await {
            notes.push(format!("stopping the old QEMU: {e}"));
        }
        // Sent as what changed since a FASTR point of the receiver's copy:
        // the volumes here stay as this node's copy of the VM at that
        // point, the base of the new runner's first round to this node.
        let base = self.based.lock().unwrap().remove(&v.key);
        let kept = match base {
            Some(p) => self.keep_as_copies(&v.vm, volumes, &p).await,
            None => false,
        };
        for vol in volumes.iter().filter(|_| !kept) {
            if let Err(e) = self.drivers.storage.destroy(vol).await {
                notes.push(format!("deleting volume {vol}: {e}"));
            }
        }
        if let Err(e) = hv.remove(&id).await {
            notes.push(format!("removing the old QEMU: {e}"));
        }
        let msg = if notes.is_empty() && kept {
            format!("the VM runs on {to}; its disks here are its FASTR copy at the point the move started from")
        } else if notes.is_empty() {
            format!("the VM runs on {to}; its copy here is gone")
        } else {
            format!("the VM runs on {to}; left here: {}", notes.join("; "))
        };
        self.status(&v.key, |s| s.downtime_ms = downtime);
        self.phase(&v.key, RelocationPhase::Succeeded, msg);
    }

    async fn send_live(
        self: &Arc<Self>,
        v: &RelocationView,
        receiver: &NodeId,
        config: VmConfig,
        sock: &std::path::Path,
    ) -> Result<u64, SessionError> {
        let key = &v.key;
        let sizes = self.volume_sizes(&config).await?;
        let disks: Vec<String> = config.disks.iter().map(|d| d.0.clone()).collect();
        let volumes: Vec<String> = config.disks.iter().map(|d| d.1.clone()).collect();
        let id = config.id.clone();
        let hv = self.drivers.hypervisor.clone();
        let storage = self.drivers.storage.clone();
        // Volume streams before the mirror need transfer overlays in the
        // VM's runtime directory. Under libvirt they go in through
        // deorch's own monitor too: libvirt's view of the disk is right
        // again once they are folded back (an active commit pivots to
        // the volume's own node), or the domain is gone with the move.
        let overlay_dir = hv.vms_dir().map(|d| d.join(&id));
        let stream = storage.stream_kind().filter(|_| overlay_dir.is_some());
        let mut control = self
            .open(receiver, key, "control")
            .await
            .map_err(SessionError::Control)?;
        let bases = match stream {
            Some(_) => fastr::complete_points(storage.as_ref(), &volumes).await,
            None => vec![],
        };
        let offer = serde_json::to_vec(&Offer {
            config,
            sizes: sizes.clone(),
            offline: false,
            stream: stream.map(str::to_string),
            bases: bases.clone(),
        })
        .expect("offers serialize");
        control
            .send(&offer)
            .await
            .map_err(|e| SessionError::Control(e.to_string()))?;
        let nbd = self.forward(receiver, key, "nbd").await?;
        let migration = self.forward(receiver, key, "migration").await?;
        let plan = LivePlan {
            disks,
            nbd_listen: nbd.0,
            nbd_connect: nbd.0,
            migration_listen: migration.0,
            migration_connect: migration.0,
            downtime_limit_ms: DOWNTIME_LIMIT_MS,
            max_bandwidth: None,
            mirror_timeout: COPY_TIMEOUT,
            migrate_timeout: COPY_TIMEOUT,
        };
        let mut qmp = Qmp::connect(sock, CONNECT_TIMEOUT)
            .await
            .map_err(|e| SessionError::Control(format!("QMP: {e}")))?;
        let t0 = Instant::now();
        let mut last = Instant::now() - PROGRESS_EVERY;
        let mut copying = false;
        let write = |p: LiveProgress, elapsed: Duration| {
            let moved = p.disk_done + p.ram_sent;
            let rate = (moved as f64 / elapsed.as_secs_f64().max(0.001)) as u64;
            let left = p.disk_total.saturating_sub(p.disk_done) + p.ram_remaining;
            self.status(key, |s| {
                s.progress = Some(RelocationProgress {
                    disk_done: p.disk_done,
                    disk_total: p.disk_total,
                    ram_sent: p.ram_sent,
                    ram_remaining: p.ram_remaining,
                    bytes_per_second: rate,
                    eta_seconds: (rate > 0).then(|| left / rate),
                    elapsed_ms: elapsed.as_millis() as u64,
                })
            });
        };
        // The last progress comes while the guest is paused: its status
        // (a durable write) waits until the switch is over.
        let at_switch = Mutex::new(None);
        let progress = |p: LiveProgress| {
            if !copying {
                copying = true;
                self.phase(
                    key,
                    RelocationPhase::Copying,
                    "disks and memory are copied while the guest runs",
                );
            }
            if p.stage == LiveStage::Switching {
                *at_switch.lock().unwrap() = Some((p, t0.elapsed()));
                return;
            }
            if last.elapsed() < PROGRESS_EVERY {
                return;
            }
            last = Instant::now();
            write(p, t0.elapsed());
        };
        // Deleting the Relocation cancels it, until the switch begins.
        let switching = std::sync::atomic::AtomicBool::new(false);
        let mut progress = progress;
        let progress = |p: LiveProgress| {
            if p.stage == LiveStage::Switching {
                switching.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            progress(p)
        };
        let cancelled = async {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                // A move to where a VM is placed by hand stops when the
                // VM is deleted.
                let gone = self.store.get(&request_key(v)).is_none_or(|r| r.deleted);
                if gone && !switching.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
            }
        };
        let streamed = std::sync::atomic::AtomicU64::new(0);
        let tag = crate::driver::cow::nonce();
        let copy = async {
            let exported = match next(&mut control).await? {
                Step::Exported => true,
                step @ (Step::Streams | Step::StreamsFrom(_)) if stream.is_some() => {
                    let base = match step {
                        Step::StreamsFrom(p) if bases.contains(&p) => {
                            self.based.lock().unwrap().insert(key.clone(), p.clone());
                            self.status(key, |s| s.base = Some(p.clone()));
                            Some(p)
                        }
                        Step::StreamsFrom(p) => {
                            return Err(SessionError::Here(format!(
                                "the receiver asks for the changes since {p}, which is not a point of the VM here"
                            )))
                        }
                        _ => None,
                    };
                    let dir = overlay_dir.as_deref().expect("streams need an overlay dir");
                    let n = self
                        .stream_under_overlays(
                            v,
                            receiver,
                            (&plan.disks, &volumes),
                            &sizes,
                            dir,
                            (&mut control, &mut qmp),
                            (base.as_deref(), &tag),
                        )
                        .await?;
                    streamed.store(n, std::sync::atomic::Ordering::SeqCst);
                    false
                }
                Step::Abort(why) => return Err(SessionError::Aborted(why)),
                got => {
                    return Err(SessionError::Unexpected {
                        expected: "Exported or Streams",
                        got,
                    })
                }
            };
            run_sender_from(&mut control, &mut qmp, &plan, progress, exported).await
        };
        let r = tokio::select! {
            r = copy => r,
            () = cancelled => Err(SessionError::Here("cancelled: the Relocation was deleted".into())),
        };
        let streamed = streamed.load(std::sync::atomic::Ordering::SeqCst);
        drop(control);
        nbd.1.abort();
        migration.1.abort();
        if stream.is_some() {
            if let Err(e) = storage.drop_points(&volumes).await {
                warn!(error = %e, "transfer points were not dropped");
            }
        }
        if let Some((p, elapsed)) = at_switch.lock().unwrap().take() {
            write(p, elapsed);
        }
        match r {
            Ok(o) => {
                info!(relocation = %key_text(key), total_ms = o.total_ms, downtime_ms = o.qemu_downtime_ms, switch_ms = o.switch_ms, streamed_bytes = streamed, disk_bytes = o.disk_bytes, ram_bytes = o.ram_bytes, "relocation copied");
                Ok(o.qemu_downtime_ms + o.switch_ms)
            }
            Err(SessionError::Undecided(why)) => Err(SessionError::Undecided(why)),
            Err(e) => {
                let mut notes = abort(&mut qmp, &plan).await;
                notes.extend(self.fold_back(&id, &mut qmp, &plan.disks).await);
                if !notes.is_empty() {
                    warn!(relocation = %key_text(key), ?notes, "abort left notes");
                }
                Err(e)
            }
        }
    }

    /// Live, between volume-streaming storages, before the mirror: move
    /// the guest's writes onto transfer overlays, take a transfer point
    /// of each (now still) volume, stream it to the receiver while the
    /// guest runs, and say `Streamed`. The bytes streamed.
    #[allow(clippy::too_many_arguments)]
    async fn stream_under_overlays(
        self: &Arc<Self>,
        v: &RelocationView,
        receiver: &NodeId,
        (disks, volumes): (&[String], &[String]),
        sizes: &BTreeMap<String, u64>,
        dir: &std::path::Path,
        (control, qmp): (&mut Tunnel, &mut Qmp),
        (base, tag): (Option<&str>, &str),
    ) -> Result<u64, SessionError> {
        let key = &v.key;
        let bases = super::live::sender_overlays(qmp, disks, dir).await?;
        // What QEMU wrote before the overlay reaches the volume before
        // its point is taken.
        for base in &bases {
            if let Ok(f) = std::fs::File::open(base) {
                let _ = f.sync_all();
            }
        }
        let point = format!("{tag}-0");
        self.drivers
            .storage
            .mark_points(volumes, &point)
            .await
            .map_err(|e| SessionError::Here(format!("transfer point: {e}")))?;
        self.phase(
            key,
            RelocationPhase::Copying,
            "streaming the VM's volumes while it runs on transfer overlays",
        );
        let total: u64 = sizes.values().sum();
        let started = Instant::now();
        let progress = |sent: u64| self.offline_progress(key, sent.min(total), total, started);
        let mut sent = 0;
        self.stream_volumes(receiver, key, volumes, base, &point, &mut sent, &progress)
            .await?;
        if let Some(b) = base {
            info!(relocation = %key_text(key), base = %b, bytes = sent, "streamed what changed since the receiver's FASTR copy");
        }
        say(control, &Step::Streamed).await?;
        Ok(sent)
    }

    /// Fold the transfer overlays of VM `id`'s disks back into its volumes
    /// (the VM stays here) and delete their files; notes of what failed
    /// (the files then stay, and are folded when the VM next starts).
    async fn fold_back(&self, id: &str, qmp: &mut Qmp, disks: &[String]) -> Vec<String> {
        let Some(dir) = self.drivers.hypervisor.vms_dir().map(|d| d.join(id)) else {
            return Vec::new();
        };
        if crate::qemu::overlay::files(&dir).is_empty() {
            return Vec::new();
        }
        if let Err(e) = super::live::fold_overlays(qmp, disks).await {
            return vec![format!(
                "the transfer overlays stay until the VM next starts: {e}"
            )];
        }
        let mut notes = Vec::new();
        for f in crate::qemu::overlay::files(&dir) {
            if let Err(e) = std::fs::remove_file(&f) {
                notes.push(format!("{}: {e}", f.display()));
            }
        }
        notes
    }

    /// The virtual size of each of the VM's volumes, by volume name.
    async fn volume_sizes(&self, config: &VmConfig) -> Result<BTreeMap<String, u64>, SessionError> {
        let mut sizes = BTreeMap::new();
        for (_, vol) in &config.disks {
            let info = self
                .drivers
                .storage
                .volume(vol)
                .await
                .map_err(|e| SessionError::Here(format!("volume {vol}: {e}")))?;
            sizes.insert(vol.clone(), info.size);
        }
        Ok(sizes)
    }

    /// A local listener for this node's QEMU whose connections go to
    /// `to` through tunnels asking for `stream`.
    async fn forward(
        self: &Arc<Self>,
        to: &NodeId,
        key: &DocKey,
        stream: impl Into<String>,
    ) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), SessionError> {
        let stream: String = stream.into();
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| SessionError::Control(e.to_string()))?;
        let at = l
            .local_addr()
            .map_err(|e| SessionError::Control(e.to_string()))?;
        let sh = self.clone();
        let to = to.clone();
        let key = key.clone();
        let h = tokio::spawn(async move {
            while let Ok((plain, _)) = l.accept().await {
                let sh = sh.clone();
                let to = to.clone();
                let key = key.clone();
                let stream = stream.clone();
                tokio::spawn(async move {
                    let _ = plain.set_nodelay(true);
                    match sh.open(&to, &key, &stream).await {
                        Ok(t) => {
                            let _ = t.splice_limited(plain, sh.rate.clone()).await;
                        }
                        Err(e) => {
                            warn!(relocation = %key_text(&key), %stream, error = %e, "stream tunnel failed")
                        }
                    }
                });
            }
        });
        Ok((at, h))
    }

    /// A tunnel a peer opened.
    async fn serve(self: Arc<Self>, s: TcpStream) -> Result<(), String> {
        let _ = s.set_nodelay(true);
        bound_liveness(&s);
        let tk = self.link.borrow().key.clone().ok_or("no tunnel key yet")?;
        let (t, header) = tunnel::accept(s, &tk).await.map_err(|e| e.to_string())?;
        let h: Header =
            serde_json::from_slice(&header).map_err(|e| format!("malformed tunnel header: {e}"))?;
        if h.stream == crate::dhcp::gateway::STREAM {
            let peer = self.link.borrow().name(&t.peer);
            return crate::dhcp::gateway::serve(t, peer, self.drivers.dhcp.as_deref()).await;
        }
        let (ns, name) = h
            .relocation
            .split_once('/')
            .ok_or("malformed relocation name")?;
        let key = DocKey::new("Relocation", ns, name);
        match h.stream.as_str() {
            "fetch" => self.serve_fetch(t, ns, name).await,
            "fastr" => self.serve_fastr(t, ns, name).await,
            "control" => {
                self.receive(t, key).await;
                Ok(())
            }
            "outcome" => {
                let mut t = t;
                let answer = self.outcome(&key).await;
                t.send(answer.as_bytes()).await.map_err(|e| e.to_string())?;
                Ok(())
            }
            stream => {
                // A copy's data comes keyed by the volume it fills.
                let key = match stream.strip_prefix("fetched:") {
                    Some(volume) => DocKey::new("Fetch", ns, volume),
                    None => key,
                };
                let ports = self.incoming.lock().unwrap().get(&key).cloned();
                let at = ports
                    .filter(|p| p.peer == t.peer)
                    .and_then(|p| p.streams.get(stream).copied())
                    .ok_or_else(|| {
                        format!(
                            "{}: no stream {stream:?} from {} receives here",
                            h.relocation, t.peer
                        )
                    })?;
                let plain = TcpStream::connect(at).await.map_err(|e| e.to_string())?;
                let _ = plain.set_nodelay(true);
                t.splice(plain).await.map_err(|e| e.to_string())?;
                Ok(())
            }
        }
    }

    /// What this node, as the receiver of relocation `key`, did with the
    /// VM: `running` (the guest runs here), `gone` (no copy here: it
    /// never ran here, or was rolled back) or `pending`.
    async fn outcome(&self, key: &DocKey) -> &'static str {
        if self.busy.lock().unwrap().contains(key) {
            return "pending";
        }
        let vm = pin_vm(key).or_else(|| self.link.borrow().view(key).map(|v| v.vm.clone()));
        let Some(vm) = vm else { return "pending" };
        match self.drivers.hypervisor.state(&vm_id(&vm)).await {
            Ok(VmState::Running { .. }) => "running",
            Ok(VmState::Absent) => "gone",
            _ => "pending",
        }
    }

    /// The sender after the switch with no word from the receiver: it
    /// stays paused until the VM's claim moves to the receiver (then its
    /// copy goes), or the receiver says it has no copy (then it resumes).
    async fn settle_undecided(&self, v: &RelocationView, lock: &Lock) {
        let receiver = &lock.peer;
        loop {
            let moved = {
                let l = self.link.borrow();
                l.relocations
                    .iter()
                    .any(|x| x.vm == v.vm && x.runner.as_ref() == Some(receiver))
            };
            if moved {
                return self
                    .finish_sender(v, receiver, &lock.peer_name, None, &lock.volumes)
                    .await;
            }
            let answer = match self.open(receiver, &v.key, "outcome").await {
                Ok(mut t) => t.recv().await.ok().flatten(),
                Err(_) => None,
            };
            // Placed by hand: no claim moves; the receiver's word that
            // it runs the guest is the evidence.
            if is_pin_relocation(&v.key) && answer.as_deref() == Some(b"running".as_slice()) {
                return self
                    .finish_sender(v, receiver, &lock.peer_name, None, &lock.volumes)
                    .await;
            }
            if answer.as_deref() == Some(b"gone".as_slice()) {
                let id = vm_id(&v.vm);
                let notes = self.resume_sender(&id).await;
                let mut msg = format!("{} never ran the VM: it runs on here again", lock.peer_name);
                if !notes.is_empty() {
                    msg = format!("{msg} ({})", notes.join("; "));
                }
                self.phase(&v.key, RelocationPhase::Failed, msg);
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Stop the copy's block jobs and targets, resume the guest here and
    /// drop the marker.
    async fn resume_sender(&self, id: &str) -> Vec<String> {
        let hv = &self.drivers.hypervisor;
        let mut notes = Vec::new();
        let disks = match hv.state(id).await {
            Ok(VmState::Running { config, .. } | VmState::Paused { config, .. }) => {
                config.disks.iter().map(|d| d.0.clone()).collect()
            }
            _ => Vec::new(),
        };
        if let Some(sock) = hv.qmp_socket(id) {
            match Qmp::connect(&sock, CONNECT_TIMEOUT).await {
                Ok(mut q) => {
                    let none: SocketAddr = ([127, 0, 0, 1], 0).into();
                    let plan = LivePlan {
                        disks,
                        nbd_listen: none,
                        nbd_connect: none,
                        migration_listen: none,
                        migration_connect: none,
                        downtime_limit_ms: DOWNTIME_LIMIT_MS,
                        max_bandwidth: None,
                        mirror_timeout: COPY_TIMEOUT,
                        migrate_timeout: COPY_TIMEOUT,
                    };
                    notes.extend(abort(&mut q, &plan).await);
                    notes.extend(self.fold_back(id, &mut q, &plan.disks).await);
                }
                Err(e) => notes.push(format!("QMP: {e}")),
            }
        }
        if let Err(e) = hv.set_relocation_lock(id, None) {
            notes.push(e.to_string());
        }
        notes
    }

    /// After a restart: finish or roll back every relocation whose
    /// marker a VM still carries.
    fn recover_all(self: Arc<Self>) {
        for (id, text) in self.drivers.hypervisor.relocation_locks() {
            let Ok(lock) = serde_json::from_str::<Lock>(&text) else {
                warn!(vm = %id, marker = %text, "unreadable relocation marker: left in place");
                continue;
            };
            let Some((ns, name)) = lock.relocation.split_once('/') else {
                continue;
            };
            let key = DocKey::new("Relocation", ns, name);
            if !self.busy.lock().unwrap().insert(key.clone()) {
                continue;
            }
            let sh = self.clone();
            tokio::spawn(async move {
                // A streamed offline copy the crash cut short left its
                // transfer points (a receiver's volumes go whole).
                if lock.role == "sender" && sh.drivers.storage.stream_kind().is_some() {
                    if let Err(e) = sh.drivers.storage.drop_points(&lock.volumes).await {
                        warn!(vm = %id, error = %e, "transfer points were not dropped");
                    }
                }
                sh.recover(&id, &key, &lock).await;
                if let Some(r) = sh.store.get(&object_key(&key)) {
                    sh.done.lock().unwrap().insert(key.clone(), r.generation);
                }
                sh.busy.lock().unwrap().remove(&key);
            });
        }
    }

    async fn recover(&self, id: &str, key: &DocKey, lock: &Lock) {
        let (ns, name) = id.split_once('/').unwrap_or(("default", id));
        let vm = DocKey::new("VirtualMachine", ns, name);
        // Gossip first learns who runs the VM now.
        let known = |l: &Link| {
            l.me.is_some()
                && l.relocations
                    .iter()
                    .any(|x| x.vm == vm && x.runner.is_some())
        };
        self.wait_link(Some(RECOVER_WAIT), known).await;
        let (me, runner) = {
            let l = self.link.borrow();
            let runner = l
                .relocations
                .iter()
                .find(|x| x.vm == vm)
                .and_then(|x| x.runner.clone());
            (l.me.clone(), runner)
        };
        let hv = &self.drivers.hypervisor;
        let state = hv.state(id).await;
        info!(vm = %id, relocation = %key_text(key), role = %lock.role, ?runner, "finishing a relocation a restart interrupted");
        let view = RelocationView {
            key: key.clone(),
            vm: vm.clone(),
            runner: runner.clone(),
            receiver: None,
            done: false,
            unplaceable: None,
        };
        match (lock.role.as_str(), state) {
            // The guest ran here before the restart: it is this node's.
            ("receiver", Ok(VmState::Running { .. })) => {
                if runner != me {
                    let (tx, rx) = oneshot::channel();
                    let _ = self.asks.send(Ask::TakeOver {
                        vm: vm.clone(),
                        from: lock.peer.clone(),
                        reply: tx,
                    });
                    if let Ok(Err(e)) = rx.await {
                        warn!(vm = %id, error = %e, "the VM runs here but its claim was not taken");
                    }
                }
                let _ = hv.set_relocation_lock(id, None);
                self.phase(
                    key,
                    RelocationPhase::Succeeded,
                    format!(
                        "the VM runs here (moved from {}; finished after a restart)",
                        lock.peer_name
                    ),
                );
            }
            // It never ran here: roll back.
            ("receiver", _) => {
                let mut notes = Vec::new();
                if let Err(e) = hv.remove(id).await {
                    notes.push(format!("QEMU: {e}"));
                }
                let mut given = Vec::new();
                if let Some(point) = &lock.base {
                    let (g, failed) = self.give_back(&lock.volumes, point).await;
                    given = g;
                    notes.extend(failed);
                }
                for v in lock.volumes.iter().filter(|v| !given.contains(v)) {
                    if let Err(e) = self.drivers.storage.destroy(v).await {
                        notes.push(format!("volume {v}: {e}"));
                    }
                }
                let _ = hv.set_relocation_lock(id, None);
                let mut msg = format!(
                    "this node restarted before the switch: rolled back; the VM runs on {}",
                    lock.peer_name
                );
                if !notes.is_empty() {
                    msg = format!("{msg}; left here: {}", notes.join("; "));
                }
                self.phase(key, RelocationPhase::Failed, msg);
            }
            // The copy was under way: abandon it; the guest runs on.
            ("sender", Ok(VmState::Running { .. })) => {
                let notes = self.resume_sender(id).await;
                let mut msg = "this node restarted during the copy: abandoned; the VM runs on here"
                    .to_string();
                if !notes.is_empty() {
                    msg = format!("{msg} ({})", notes.join("; "));
                }
                self.phase(key, RelocationPhase::Failed, msg);
            }
            // Paused after the memory copy: the receiver decides.
            ("sender", Ok(VmState::Paused { .. })) => {
                if runner.as_ref() == Some(&lock.peer) {
                    self.finish_sender(&view, &lock.peer, &lock.peer_name, None, &lock.volumes)
                        .await;
                } else {
                    self.settle_undecided(&view, lock).await;
                }
            }
            // No QEMU here any more.
            ("sender", _) => {
                if runner.as_ref() == Some(&lock.peer) {
                    self.finish_sender(&view, &lock.peer, &lock.peer_name, None, &lock.volumes)
                        .await;
                } else {
                    let _ = hv.set_relocation_lock(id, None);
                    self.phase(
                        key,
                        RelocationPhase::Failed,
                        "the VM's QEMU was gone when this node restarted; the VM stays here",
                    );
                }
            }
            (role, _) => {
                warn!(vm = %id, role, "unknown relocation role in a marker: left in place")
            }
        }
    }

    /// The receiver's side: `control` came from the sender.
    async fn receive(self: &Arc<Self>, mut control: Tunnel, key: DocKey) {
        let peer = control.peer.clone();
        // Both ends take the receiver's claim as it stands, without
        // waiting for it to settle: the claim is where sender and
        // receiver meet, not what keeps the guest single (the VM's claim
        // and the switch do that). The sender runs one session per
        // relocation, so a better claim arriving later meets no sender
        // and the relocation counts as done once the VM's claim moves.
        // Still waited for: gossip may bring the sender's view of this
        // node's claim here after the sender's tunnel.
        let ready = |l: &Link| {
            l.view(&key).is_some_and(|v| {
                v.receiver.is_some()
                    && v.receiver == l.me
                    && !v.done
                    && v.runner.as_ref() == Some(&peer)
            })
        };
        let ok = self.wait_link(Some(SETTLE_WAIT), ready).await;
        let view = self.link.borrow().view(&key).cloned();
        let Some(v) = view.filter(|_| ok) else {
            warn!(relocation = %key_text(&key), %peer, "refused: this node is not the elected receiver of a VM that node runs");
            let _ = say_abort(
                &mut control,
                "this node is not the elected receiver of a VM you run",
            )
            .await;
            return;
        };
        if !self.busy.lock().unwrap().insert(key.clone()) {
            let _ = say_abort(&mut control, "a session of this relocation is running here").await;
            return;
        }
        // One read of the link at a time: a second read while the gossip
        // task waits to write may block for good.
        let (from, here) = {
            let l = self.link.borrow();
            (l.name(&peer), l.me.as_ref().map(|m| l.name(m)))
        };
        self.status(&key, |s| {
            s.source = Some(from.clone());
            s.destination = here;
        });
        let r = self.receive_live(&mut control, &v, &peer).await;
        self.incoming.lock().unwrap().remove(&key);
        let adopted = self.adopted.lock().unwrap().remove(&key);
        match r {
            Ok(()) => {
                if adopted.is_some() {
                    self.release_copies(&v.vm);
                }
                self.phase(
                    &key,
                    RelocationPhase::Switching,
                    "the VM runs here; taking its claim",
                );
                let (tx, rx) = oneshot::channel();
                let _ = self.asks.send(Ask::TakeOver {
                    vm: v.vm.clone(),
                    from: peer.clone(),
                    reply: tx,
                });
                let taken = rx.await.unwrap_or_else(|_| Err("gossip stopped".into()));
                let id = vm_id(&v.vm);
                match taken {
                    Ok(epoch) if is_pin_relocation(&key) => {
                        // Placed here by hand: no claim; the reconciler
                        // adopts the running QEMU once the marker is gone.
                        let _ = epoch;
                        let _ = self.drivers.hypervisor.set_relocation_lock(&id, None);
                        self.phase(
                            &key,
                            RelocationPhase::Succeeded,
                            format!(
                                "the VM runs here, where its placement names; moved from {from}"
                            ),
                        );
                    }
                    Ok(epoch) => {
                        let me = self.link.borrow().me.clone();
                        let vm = v.vm.clone();
                        self.wait_link(Some(Duration::from_secs(30)), |l| {
                            l.relocations.iter().any(|x| x.vm == vm && x.runner == me)
                        })
                        .await;
                        let _ = self.drivers.hypervisor.set_relocation_lock(&id, None);
                        self.phase(
                            &key,
                            RelocationPhase::Succeeded,
                            format!("the VM runs here (claim epoch {epoch}); moved from {from}"),
                        );
                    }
                    Err(e) => {
                        // The guest runs here and nowhere else (the sender
                        // is paused for good): keep it, and say so.
                        warn!(relocation = %key_text(&key), error = %e, "the VM runs here but its claim was not taken");
                        let _ = self.drivers.hypervisor.set_relocation_lock(&id, None);
                        self.phase(
                            &key,
                            RelocationPhase::Switching,
                            format!("the VM runs here, but its claim was not taken: {e}"),
                        );
                    }
                }
            }
            Err((e, mut leftovers)) => {
                let id = vm_id(&v.vm);
                let mut notes = Vec::new();
                if let Err(e) = self.drivers.hypervisor.remove(&id).await {
                    notes.push(format!("QEMU: {e}"));
                }
                // This node's FASTR copies, taken as the base, stay copies.
                let mut kept = false;
                if let Some((point, volumes)) = adopted {
                    let (given, failed) = self.give_back(&volumes, &point).await;
                    leftovers.retain(|v| !given.contains(v));
                    kept = failed.is_empty();
                    notes.extend(failed);
                    self.release_copies(&v.vm);
                }
                for vol in leftovers {
                    if let Err(e) = self.drivers.storage.destroy(&vol).await {
                        notes.push(format!("volume {vol}: {e}"));
                    }
                }
                let _ = self.drivers.hypervisor.set_relocation_lock(&id, None);
                let mut msg = format!("{e}; the VM runs on {from}, nothing of it is left here");
                if kept {
                    msg = format!("{e}; the VM runs on {from}; its FASTR copy here is kept");
                }
                if !notes.is_empty() {
                    msg = format!("{e}; left here: {}", notes.join("; "));
                }
                self.phase(&key, RelocationPhase::Failed, msg);
            }
        }
        self.busy.lock().unwrap().remove(&key);
    }

    /// Offline, the receiver of volume streams (its storage of the kind
    /// the sender streams): each stream `vol:I` is fed into the storage's
    /// receive command for the VM's volume `I` (the bulk, then what
    /// changed while the VM stopped); say `Streams`; on `Switch` drop the
    /// transfer points, start the VM and say `Running`.
    async fn receive_streams(
        self: &Arc<Self>,
        control: &mut Tunnel,
        key: &DocKey,
        peer: &NodeId,
        config: &VmConfig,
        base: Option<&str>,
    ) -> Result<(), SessionError> {
        let (takers, streams) = self.stream_takers(control, config, base.is_some()).await?;
        self.await_switch(
            control,
            key,
            peer,
            streams,
            base.map_or(Step::Streams, |p| Step::StreamsFrom(p.to_string())),
            "taking the VM's volumes as streams, the bulk while it runs on the sender",
        )
        .await?;
        drop(takers);
        self.streams_received(control, config).await?;
        self.start_received(control, config).await
    }

    /// The receiver of volume streams: replace each fresh volume of the
    /// VM by a taker of its stream `vol:I` (the storage's receive
    /// command); volumes made from this node's FASTR copies (`adopted`)
    /// stay and take what changed since their point. The takers (stopped
    /// when dropped) and their local ends.
    async fn stream_takers(
        &self,
        control: &mut Tunnel,
        config: &VmConfig,
        adopted: bool,
    ) -> Result<(Vec<AbortOnDrop>, BTreeMap<String, SocketAddr>), SessionError> {
        let storage = &self.drivers.storage;
        let mut takers = Vec::new();
        let mut streams = BTreeMap::new();
        for (i, (_, vol)) in config.disks.iter().enumerate() {
            // The whole volume's stream makes it (at the same path); a
            // copy made the volume takes what changed since its point.
            if !adopted {
                if let Err(e) = storage.destroy(vol).await {
                    return Err(refuse(control, format!("volume {vol}: {e}")).await);
                }
            }
            let argv = match storage.receive_command(vol).await {
                Ok(a) => a,
                Err(e) => return Err(refuse(control, format!("volume {vol}: {e}")).await),
            };
            let l = match TcpListener::bind("127.0.0.1:0").await {
                Ok(l) => l,
                Err(e) => return Err(refuse(control, format!("no local port: {e}")).await),
            };
            let at = l.local_addr().expect("bound");
            takers.push(AbortOnDrop(tokio::spawn(super::offline::take_streams(
                l, argv,
            ))));
            streams.insert(format!("vol:{i}"), at);
        }
        Ok((takers, streams))
    }

    /// The receiver, every volume stream in: the volumes made readable
    /// and their transfer points dropped.
    async fn streams_received(
        &self,
        control: &mut Tunnel,
        config: &VmConfig,
    ) -> Result<(), SessionError> {
        let storage = &self.drivers.storage;
        let volumes: Vec<String> = config.disks.iter().map(|d| d.1.clone()).collect();
        for vol in &volumes {
            if let Err(e) = storage.received(vol).await {
                return Err(refuse(control, format!("volume {vol}: {e}")).await);
            }
        }
        if let Err(e) = storage.drop_points(&volumes).await {
            warn!(error = %e, "transfer points were not dropped");
        }
        Ok(())
    }

    /// Offline, the receiver: its local ends of the streams known, tell
    /// the sender it is `ready` and wait for `Switch`.
    async fn await_switch(
        &self,
        control: &mut Tunnel,
        key: &DocKey,
        peer: &NodeId,
        streams: BTreeMap<String, SocketAddr>,
        ready: Step,
        what: &str,
    ) -> Result<(), SessionError> {
        self.incoming.lock().unwrap().insert(
            key.clone(),
            Ports {
                peer: peer.clone(),
                streams,
            },
        );
        self.phase(key, RelocationPhase::Copying, what);
        say(control, &ready).await?;
        expect(control, Step::Switch, "Switch").await
    }

    /// Offline, the receiver after `Switch`: start the VM from its copies
    /// and say `Running`.
    async fn start_received(
        &self,
        control: &mut Tunnel,
        config: &VmConfig,
    ) -> Result<(), SessionError> {
        if let Err(e) = self.drivers.hypervisor.start(config).await {
            return Err(refuse(control, format!("starting the VM here: {e}")).await);
        }
        if let Err(e) = say(control, &Step::Running).await {
            warn!(error = %e, "the VM runs here; the sender did not hear so");
        }
        Ok(())
    }

    /// Offline, the receiver: serve each fresh volume over NBD (one
    /// client each), say `Exported`; on `Switch` start the VM from the
    /// copies and say `Running`.
    async fn receive_offline(
        self: &Arc<Self>,
        control: &mut Tunnel,
        key: &DocKey,
        peer: &NodeId,
        config: &VmConfig,
        (stream, base): (Option<&str>, Option<&str>),
    ) -> Result<(), SessionError> {
        let storage = &self.drivers.storage;
        if stream.is_some() && stream == storage.stream_kind() {
            return self.receive_streams(control, key, peer, config, base).await;
        }
        let mut servers = Vec::new();
        let mut streams = BTreeMap::new();
        for (i, img) in config.disk_images.iter().enumerate() {
            let at = match free_port() {
                Ok(a) => a,
                Err(e) => return Err(refuse(control, format!("no local port: {e}")).await),
            };
            match super::offline::serve(&img.path, &img.format, at, "disk").await {
                Ok(s) => servers.push(s),
                Err(e) => return Err(refuse(control, format!("disk {}: {e}", img.name)).await),
            }
            streams.insert(format!("disk:{i}"), at);
        }
        self.await_switch(
            control,
            key,
            peer,
            streams,
            Step::Exported,
            "taking the stopped VM's disks",
        )
        .await?;
        drop(servers);
        self.start_received(control, config).await
    }

    /// Offline, the sender. A storage with volume streams (zfs) marks a
    /// transfer point of each volume while the VM still runs and offers
    /// streams; a receiver of the same kind answers `Streams`, and gets
    /// the bulk up to that point while the VM runs, then, the VM
    /// stopped, only what changed since ([`Self::send_streams`]).
    /// Otherwise (`Exported`): stop the VM, copy each disk into the
    /// receiver's NBD export (`qemu-img convert`, zeros skipped). Then
    /// `Switch`. Returns the time the VM was down until the receiver ran
    /// it, in ms.
    async fn send_offline(
        self: &Arc<Self>,
        v: &RelocationView,
        receiver: &NodeId,
        config: VmConfig,
    ) -> Result<u64, SessionError> {
        let key = &v.key;
        let sizes = self.volume_sizes(&config).await?;
        let storage = self.drivers.storage.clone();
        let volumes: Vec<String> = config.disks.iter().map(|d| d.1.clone()).collect();
        let tag = crate::driver::cow::nonce();
        let mut stream = storage.stream_kind();
        if stream.is_some() {
            if let Err(e) = storage.mark_points(&volumes, &format!("{tag}-0")).await {
                warn!(relocation = %key_text(key), error = %e, "no transfer point: the disks are copied once the VM stopped");
                stream = None;
            }
        }
        let sent = async {
            let mut control = self
                .open(receiver, key, "control")
                .await
                .map_err(SessionError::Control)?;
            let bases = match stream {
                Some(_) => fastr::complete_points(storage.as_ref(), &volumes).await,
                None => vec![],
            };
            let offer = serde_json::to_vec(&Offer {
                config: config.clone(),
                sizes: sizes.clone(),
                offline: true,
                stream: stream.map(str::to_string),
                bases: bases.clone(),
            })
            .expect("offers serialize");
            control
                .send(&offer)
                .await
                .map_err(|e| SessionError::Control(e.to_string()))?;
            let mut base = None;
            let streamed = match next(&mut control).await? {
                Step::Exported => false,
                Step::Streams if stream.is_some() => true,
                Step::StreamsFrom(p) if stream.is_some() && bases.contains(&p) => {
                    self.based.lock().unwrap().insert(key.clone(), p.clone());
                    self.status(key, |s| s.base = Some(p.clone()));
                    base = Some(p);
                    true
                }
                Step::Abort(why) => return Err(SessionError::Aborted(why)),
                got => {
                    return Err(SessionError::Unexpected {
                        expected: "Exported or Streams",
                        got,
                    })
                }
            };
            let t0 = if streamed {
                self.send_streams(
                    v,
                    receiver,
                    &config,
                    &sizes,
                    &mut control,
                    (base.as_deref(), &tag),
                )
                .await?
            } else {
                let t0 = Instant::now();
                self.stop_for_copy(v, &config).await?;
                self.copy_disks(v, receiver, &config, &sizes, &mut control, t0)
                    .await?;
                t0
            };
            let switched = async {
                say(&mut control, &Step::Switch).await?;
                expect(&mut control, Step::Running, "Running").await
            };
            match switched.await {
                Ok(()) => Ok(t0.elapsed().as_millis() as u64),
                Err(SessionError::Aborted(why)) => Err(SessionError::Aborted(why)),
                Err(e) => Err(SessionError::Undecided(e.to_string())),
            }
        }
        .await;
        if stream.is_some() {
            if let Err(e) = storage.drop_points(&volumes).await {
                warn!(error = %e, "transfer points were not dropped");
            }
        }
        sent
    }

    /// Stop the VM for an offline copy, within its own `stopTimeout`
    /// (ACPI, then forced).
    async fn stop_for_copy(
        &self,
        v: &RelocationView,
        config: &VmConfig,
    ) -> Result<(), SessionError> {
        let stop_timeout = self
            .store
            .get(&ObjectKey::new(
                Kind::VirtualMachine,
                Some(&v.vm.namespace),
                &v.vm.name,
            ))
            .and_then(|r| {
                serde_json::from_value::<crate::model::Duration>(
                    r.object["spec"]["stopTimeout"].clone(),
                )
                .ok()
            })
            .map_or(DEFAULT_STOP_TIMEOUT, |d| d.0);
        self.drivers
            .hypervisor
            .stop(&config.id, stop_timeout)
            .await
            .map_err(|e| SessionError::Here(format!("stopping the VM: {e}")))
    }

    /// Write the progress of an offline copy: `done` of `total` bytes.
    fn offline_progress(&self, key: &DocKey, done: u64, total: u64, t0: Instant) {
        let elapsed = t0.elapsed();
        self.status(key, |s| {
            s.progress = Some(RelocationProgress {
                disk_done: done,
                disk_total: total,
                ram_sent: 0,
                ram_remaining: 0,
                bytes_per_second: (done as f64 / elapsed.as_secs_f64().max(0.001)) as u64,
                eta_seconds: None,
                elapsed_ms: elapsed.as_millis() as u64,
            })
        });
    }

    /// The stopped VM's disks into the receiver's NBD exports.
    async fn copy_disks(
        self: &Arc<Self>,
        v: &RelocationView,
        receiver: &NodeId,
        config: &VmConfig,
        sizes: &BTreeMap<String, u64>,
        control: &mut Tunnel,
        t0: Instant,
    ) -> Result<(), SessionError> {
        let key = &v.key;
        let total: u64 = sizes.values().sum();
        let by_disk: BTreeMap<String, u64> = config
            .disks
            .iter()
            .map(|(d, v)| (d.clone(), sizes.get(v).copied().unwrap_or(0)))
            .collect();
        self.phase(
            key,
            RelocationPhase::Copying,
            "copying the stopped VM's disks",
        );
        let mut done = 0u64;
        for (i, img) in config.disk_images.iter().enumerate() {
            let stream = format!("disk:{i}");
            let fwd = self.forward(receiver, key, stream).await?;
            let r = super::offline::copy(&img.path, &img.format, fwd.0, "disk", COPY_TIMEOUT).await;
            fwd.1.abort();
            if let Err(e) = r {
                let why = format!("disk {}: {e}", img.name);
                let _ = say(control, &Step::Abort(why.clone())).await;
                return Err(SessionError::Here(why));
            }
            done += by_disk.get(&img.name).copied().unwrap_or(0);
            self.offline_progress(key, done, total, t0);
        }
        Ok(())
    }

    /// The streamed offline copy: each volume up to transfer point
    /// `{tag}-0` (taken while the VM ran) goes while the VM still runs,
    /// then what changed during that pass (`{tag}-1`), and so on while
    /// the passes shrink; then the VM stops, a last point is taken, and
    /// only what changed since the previous one crosses. Returns when the
    /// VM stopped.
    async fn send_streams(
        self: &Arc<Self>,
        v: &RelocationView,
        receiver: &NodeId,
        config: &VmConfig,
        sizes: &BTreeMap<String, u64>,
        control: &mut Tunnel,
        (base, tag): (Option<&str>, &str),
    ) -> Result<Instant, SessionError> {
        let key = &v.key;
        let storage = &self.drivers.storage;
        let volumes: Vec<String> = config.disks.iter().map(|d| d.1.clone()).collect();
        let total: u64 = sizes.values().sum();
        let point = |n: usize| format!("{tag}-{n}");
        let started = Instant::now();
        self.phase(
            key,
            RelocationPhase::Copying,
            "streaming the VM's volumes while it runs",
        );
        let mut sent = 0u64;
        let progress = |sent: u64| self.offline_progress(key, sent.min(total), total, started);
        // The bulk, then what changed during each pass, while the guest
        // runs, until a pass is small (or stops shrinking): the VM is
        // down only for the last one.
        let mut passes = vec![];
        let running = async {
            // From the receiver's FASTR copy, when it holds one.
            let mut from: Option<String> = base.map(str::to_string);
            let mut n = 0;
            loop {
                if n > 0 {
                    storage
                        .mark_points(&volumes, &point(n))
                        .await
                        .map_err(|e| SessionError::Here(format!("transfer point: {e}")))?;
                }
                let before = sent;
                self.stream_volumes(
                    receiver,
                    key,
                    &volumes,
                    from.as_deref(),
                    &point(n),
                    &mut sent,
                    &progress,
                )
                .await?;
                let moved = sent - before;
                let shrank = passes.last().is_none_or(|&prev| moved < prev / 2);
                passes.push(moved);
                from = Some(point(n));
                n += 1;
                if moved <= SMALL_PASS_BYTES || !shrank || n >= MAX_RUNNING_PASSES {
                    return Ok::<usize, SessionError>(n);
                }
            }
        };
        let n = match running.await {
            Ok(n) => n,
            Err(e) => {
                let _ = say(control, &Step::Abort(e.to_string())).await;
                return Err(e);
            }
        };
        let (first, last) = (point(n - 1), point(n));
        let bulk = sent;
        let t0 = Instant::now();
        let rest = async {
            self.stop_for_copy(v, config).await?;
            // QEMU is gone; whatever it wrote reaches the volume before
            // the point is taken.
            for img in &config.disk_images {
                if let Ok(f) = std::fs::File::open(&img.path) {
                    let _ = f.sync_all();
                }
            }
            storage
                .mark_points(&volumes, &last)
                .await
                .map_err(|e| SessionError::Here(format!("transfer point: {e}")))?;
            self.phase(
                key,
                RelocationPhase::Copying,
                "streaming what changed since, the VM stopped",
            );
            self.stream_volumes(
                receiver,
                key,
                &volumes,
                Some(&first),
                &last,
                &mut sent,
                &progress,
            )
            .await
        };
        match rest.await {
            Ok(()) => {
                info!(relocation = %key_text(key), passes = ?passes, delta = sent - bulk, "volumes streamed");
                if let Some(b) = base {
                    info!(relocation = %key_text(key), base = %b, bytes = sent, "streamed what changed since the receiver's FASTR copy");
                }
                Ok(t0)
            }
            Err(e) => {
                let _ = say(control, &Step::Abort(e.to_string())).await;
                Err(e)
            }
        }
    }

    /// Each of `volumes` at transfer point `to` (only what changed since
    /// `from`, when given) into the receiver's stream `vol:I`; `sent`
    /// counts the bytes.
    #[allow(clippy::too_many_arguments)]
    async fn stream_volumes(
        self: &Arc<Self>,
        receiver: &NodeId,
        key: &DocKey,
        volumes: &[String],
        from: Option<&str>,
        to: &str,
        sent: &mut u64,
        progress: &impl Fn(u64),
    ) -> Result<(), SessionError> {
        let storage = &self.drivers.storage;
        for (i, vol) in volumes.iter().enumerate() {
            let argv = storage
                .send_command(vol, from, to)
                .await
                .map_err(|e| SessionError::Here(format!("volume {vol}: {e}")))?;
            let fwd = self.forward(receiver, key, format!("vol:{i}")).await?;
            let r = super::offline::send_stream(&argv, fwd.0, COPY_TIMEOUT).await;
            fwd.1.abort();
            *sent += r.map_err(|e| SessionError::Here(format!("volume {vol}: {e}")))?;
            progress(*sent);
        }
        Ok(())
    }

    /// Make the disks and the paused QEMU, then run the receiver's steps.
    /// On error: the error and the volumes created here.
    async fn receive_live(
        self: &Arc<Self>,
        control: &mut Tunnel,
        v: &RelocationView,
        peer: &NodeId,
    ) -> Result<(), (SessionError, Vec<String>)> {
        let key = &v.key;
        let id = vm_id(&v.vm);
        let mut created = Vec::new();
        let control_err = |e: String| SessionError::Control(e);
        let offer = match tokio::time::timeout(CONNECT_TIMEOUT, control.recv())
            .await
            .unwrap_or(Ok(None))
        {
            Ok(Some(b)) => serde_json::from_slice::<Offer>(&b)
                .map_err(|e| control_err(format!("malformed offer: {e}"))),
            Ok(None) => Err(control_err("closed before the offer".into())),
            Err(e) => Err(control_err(e.to_string())),
        };
        let mut offer = offer.map_err(|e| (e, Vec::new()))?;
        if let Err(why) = check_offer(&self.store, &v.vm, &offer.config) {
            let e = refuse(
                control,
                format!("the offer does not match the VM's spec here: {why}"),
            )
            .await;
            return Err((e, created));
        }
        if offer.config.id != id {
            let e = refuse(
                control,
                format!("the offer is for {}, not {id}", offer.config.id),
            )
            .await;
            return Err((e, created));
        }
        let hv = self.drivers.hypervisor.clone();
        match hv.state(&id).await {
            Ok(VmState::Absent) => {}
            other => {
                let e = refuse(control, format!("a copy of the VM exists here ({other:?})")).await;
                return Err((e, created));
            }
        }
        let lock = Lock {
            relocation: key_text(key),
            role: "receiver".into(),
            peer: peer.clone(),
            peer_name: self.link.borrow().name(peer),
            volumes: offer.config.disks.iter().map(|d| d.1.clone()).collect(),
            base: None,
        };
        if let Err(e) = hv.set_relocation_lock(&id, Some(&lock.text())) {
            let e = refuse(control, e.to_string()).await;
            return Err((e, created));
        }
        self.phase(
            key,
            RelocationPhase::Preparing,
            "making the VM's disks and a paused QEMU",
        );
        let mut images = Vec::new();
        for (disk, vol) in offer.config.disks.clone() {
            let size = offer.sizes.get(&vol).copied().unwrap_or(0);
            let storage = &self.drivers.storage;
            let r = match storage.create(&vol, size).await {
                Ok(()) => {
                    created.push(vol.clone());
                    storage.volume(&vol).await
                }
                Err(e) => Err(e),
            };
            match r {
                Ok(info) => match offer.config.disk_images.iter().find(|i| i.name == disk) {
                    Some(old) => images.push(DiskImage {
                        name: disk.clone(),
                        path: info.path,
                        format: info.format.to_string(),
                        bus: old.bus,
                        read_only: old.read_only,
                    }),
                    None => {
                        let e =
                            refuse(control, format!("the offer has no image of disk {disk}")).await;
                        return Err((e, created));
                    }
                },
                Err(e) => {
                    let e = refuse(control, format!("volume {vol}: {e}")).await;
                    return Err((e, created));
                }
            }
        }
        offer.config.disk_images = images;
        for nic in offer.config.nics.iter().filter(|n| n.host_tap) {
            let mtu = nic_mtu(&self.store, &v.vm, &nic.name);
            if let Err(e) = self
                .drivers
                .net
                .ensure_tap(&nic.tap, &nic.bridge, mtu)
                .await
            {
                let e = refuse(control, format!("tap {}: {e}", nic.tap)).await;
                return Err((e, created));
            }
        }
        // Between volume-streaming storages, a receiver holding FASTR
        // copies of the VM takes only what changed since their point.
        let storage = &self.drivers.storage;
        let streams_here =
            offer.stream.is_some() && offer.stream.as_deref() == storage.stream_kind();
        let base = if streams_here && !offer.bases.is_empty() {
            let volumes: Vec<String> = offer.config.disks.iter().map(|d| d.1.clone()).collect();
            let intent = |p: &str| {
                let mut l = lock.clone();
                l.base = Some(p.to_string());
                hv.set_relocation_lock(&id, Some(&l.text()))
                    .map_err(|e| e.to_string())
            };
            let base = self
                .adopt_copies(&v.vm, &volumes, &offer.bases, intent)
                .await;
            if let Some(p) = &base {
                self.adopted
                    .lock()
                    .unwrap()
                    .insert(key.clone(), (p.clone(), volumes));
            }
            base
        } else {
            None
        };
        if offer.offline {
            return self
                .receive_offline(
                    control,
                    key,
                    peer,
                    &offer.config,
                    (offer.stream.as_deref(), base.as_deref()),
                )
                .await
                .map_err(|e| (e, created));
        }
        let (nbd, migration) = match (free_port(), free_port()) {
            (Ok(nbd), Ok(migration)) => (nbd, migration),
            (Err(e), _) | (_, Err(e)) => {
                let e = refuse(control, format!("no local port: {e}")).await;
                return Err((e, created));
            }
        };
        let ports = Ports {
            peer: peer.clone(),
            streams: [
                ("nbd".to_string(), nbd),
                ("migration".to_string(), migration),
            ]
            .into(),
        };
        // Between volume-streaming storages the volumes come as streams
        // first (the sender's guest runs on transfer overlays meanwhile),
        // and the mirror then carries only what it wrote since.
        if streams_here {
            let (takers, streams) = self
                .stream_takers(control, &offer.config, base.is_some())
                .await
                .map_err(|e| (e, created.clone()))?;
            let mut all = ports.clone();
            all.streams.extend(streams);
            self.incoming.lock().unwrap().insert(key.clone(), all);
            self.phase(
                key,
                RelocationPhase::Copying,
                "taking the VM's volumes as streams while it runs on the sender",
            );
            let step = base.clone().map_or(Step::Streams, Step::StreamsFrom);
            let taken = async {
                say(control, &step).await?;
                expect(control, Step::Streamed, "Streamed").await
            };
            taken.await.map_err(|e| (e, created.clone()))?;
            drop(takers);
            self.streams_received(control, &offer.config)
                .await
                .map_err(|e| (e, created.clone()))?;
        }
        if let Err(e) = hv.start_incoming(&offer.config).await {
            let e = refuse(control, e.to_string()).await;
            return Err((e, created));
        }
        let Some(sock) = hv.qmp_socket(&id) else {
            let e = refuse(control, "no QMP socket".into()).await;
            return Err((e, created));
        };
        let mut qmp = match Qmp::connect(&sock, CONNECT_TIMEOUT).await {
            Ok(q) => q,
            Err(e) => {
                let e = refuse(control, format!("QMP: {e}")).await;
                return Err((e, created));
            }
        };
        self.incoming
            .lock()
            .unwrap()
            .insert(key.clone(), ports.clone());
        let plan = LivePlan {
            disks: offer.config.disks.iter().map(|d| d.0.clone()).collect(),
            nbd_listen: nbd,
            nbd_connect: nbd,
            migration_listen: migration,
            migration_connect: migration,
            downtime_limit_ms: DOWNTIME_LIMIT_MS,
            max_bandwidth: None,
            mirror_timeout: COPY_TIMEOUT,
            migrate_timeout: COPY_TIMEOUT,
        };
        self.phase(
            key,
            RelocationPhase::Copying,
            "taking the disks and memory while the guest runs on the sender",
        );
        run_receiver(control, &mut qmp, &plan)
            .await
            .map_err(|e| (e, created))
    }
}

/// Whether the sender's offered configuration is the VM's as this node's
/// store declares it (its spec, else its spacesuit's): the receiver runs
/// QEMU with it, so an admitted node cannot make it run another kernel,
/// other disks or another size of machine than the VM's.
fn check_offer(store: &Store, vm: &DocKey, c: &VmConfig) -> Result<(), String> {
    use crate::model::vm::{Machine, VirtualMachineSpec};
    use crate::model::SpacesuitSpec;
    let typed = |kind: Kind, name: &str| {
        store
            .get(&ObjectKey::new(kind, Some(&vm.namespace), name))
            .filter(|r| !r.deleted)
            .map(|r| r.object["spec"].clone())
    };
    let spec: VirtualMachineSpec = typed(Kind::VirtualMachine, &vm.name)
        .and_then(|s| serde_json::from_value(s).ok())
        .ok_or("the VM is unknown here")?;
    let suit: Option<SpacesuitSpec> = spec
        .spacesuit
        .as_ref()
        .and_then(|n| typed(Kind::Spacesuit, n))
        .and_then(|s| serde_json::from_value(s).ok());
    let disks: Vec<(String, String)> = crate::reconcile::vm::disk_names(&spec, suit.as_ref())
        .into_iter()
        .map(|d| {
            let v = crate::model::names::vm_volume(&vm.namespace, &vm.name, &d);
            (d, v)
        })
        .collect();
    let mut wrong = Vec::new();
    if c.disks != disks {
        wrong.push(format!("disks {:?}, declared {disks:?}", c.disks));
    }
    let boot = spec
        .boot
        .clone()
        .or(suit.as_ref().and_then(|s| s.boot.clone()));
    if c.boot != boot {
        wrong.push("boot".to_string());
    }
    let memory = spec
        .memory
        .or(suit.as_ref().and_then(|s| s.memory))
        .map_or(512 << 20, |m| m.0);
    if c.memory != memory {
        wrong.push(format!("memory {}, declared {memory}", c.memory));
    }
    let machine = spec
        .machine
        .or(suit.as_ref().and_then(|s| s.machine))
        .unwrap_or(Machine::Q35);
    if c.machine != machine {
        wrong.push("machine".to_string());
    }
    let cpus = spec
        .cpu
        .or(suit.as_ref().and_then(|s| s.cpu))
        .map_or(1, |c| (c.0 / 1000) as u32);
    if c.cpus != cpus {
        wrong.push(format!("cpu {}, declared {cpus}", c.cpus));
    }
    if c.cpu_model != spec.cpu_model {
        wrong.push("cpuModel".to_string());
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

/// Tell the sender why this node stops, and return that.
/// The MTU of NIC `nic` of VM `vm` as this node's store has them: its
/// Network's `mtu` (1500 when unset), as the VM reconciler makes taps.
fn nic_mtu(store: &Store, vm: &DocKey, nic: &str) -> u16 {
    let ns = Some(vm.namespace.as_str());
    store
        .get(&ObjectKey::new(Kind::VirtualMachine, ns, &vm.name))
        .and_then(|r| {
            let nics = r.object["spec"]["nics"].as_array()?.clone();
            let net = nics.iter().find(|n| n["name"] == nic)?["network"]
                .as_str()?
                .to_string();
            let n = store.get(&ObjectKey::new(Kind::Network, ns, &net))?;
            n.object["spec"]["mtu"].as_u64()
        })
        .and_then(|m| u16::try_from(m).ok())
        .unwrap_or(1500)
}

async fn refuse(control: &mut Tunnel, why: String) -> SessionError {
    let _ = say_abort(control, &why).await;
    SessionError::Here(why)
}

async fn say_abort(control: &mut Tunnel, why: &str) -> Result<(), SessionError> {
    say(control, &Step::Abort(why.into())).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AnyObject;
    use crate::store::SourceId;

    fn store_with(objects: &[serde_json::Value]) -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "deorch-offer-{}-{}",
            std::process::id(),
            objects.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("s.redb")).unwrap();
        for o in objects {
            store
                .apply(
                    &AnyObject::from_value(o.clone()).unwrap(),
                    &SourceId("api".into()),
                )
                .unwrap();
        }
        (store, dir)
    }

    #[test]
    fn an_offer_must_be_the_vm_its_spec_and_spacesuit_declare() {
        let suit = serde_json::json!({
            "apiVersion": crate::model::API_VERSION, "kind": "Spacesuit",
            "metadata": {"name": "tiny", "namespace": "default"},
            "spec": {"boot": {"kernel": "/k", "initrd": "/i"}, "machine": "pc", "memory": "128Mi"},
        });
        let vm = serde_json::json!({
            "apiVersion": crate::model::API_VERSION, "kind": "VirtualMachine",
            "metadata": {"name": "mover", "namespace": "default"},
            "spec": {"spacesuit": "tiny", "disks": [{"name": "data", "size": "8Mi", "source": {"blank": {}}}]},
        });
        let (store, dir) = store_with(&[suit, vm]);
        let key = DocKey::new("VirtualMachine", "default", "mover");
        let good = VmConfig {
            id: "default/mover".into(),
            cpus: 1,
            memory: 128 << 20,
            machine: crate::model::vm::Machine::Pc,
            cpu_model: None,
            boot: serde_json::from_value(serde_json::json!({"kernel": "/k", "initrd": "/i"}))
                .unwrap(),
            disks: vec![(
                "data".into(),
                crate::model::names::vm_volume("default", "mover", "data"),
            )],
            disk_images: Vec::new(),
            nics: Vec::new(),
            spice: false,
        };
        assert_eq!(check_offer(&store, &key, &good), Ok(()));
        let mut other_kernel = good.clone();
        other_kernel.boot = serde_json::from_value(serde_json::json!({"kernel": "/evil"})).unwrap();
        assert!(check_offer(&store, &key, &other_kernel)
            .unwrap_err()
            .contains("boot"));
        let mut other_disk = good.clone();
        other_disk.disks[0].1 = "vm-default-victim-data".into();
        assert!(check_offer(&store, &key, &other_disk)
            .unwrap_err()
            .contains("disks"));
        let mut bigger = good.clone();
        bigger.memory = 64 << 30;
        assert!(check_offer(&store, &key, &bigger)
            .unwrap_err()
            .contains("memory"));
        let unknown = DocKey::new("VirtualMachine", "default", "nope");
        assert!(check_offer(&store, &unknown, &good).is_err());
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
