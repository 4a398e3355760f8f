//! [`GossipNode`]: one node's gossip as a sans-IO state machine.
//!
//! Inputs: [`GossipNode::handle_tick`] (time passes) and
//! [`GossipNode::handle_datagram`] (bytes from a peer), plus the local
//! calls [`GossipNode::publish`] and [`GossipNode::set_status`]. Outputs,
//! drained with [`GossipNode::poll`]: datagrams to send and [`Event`]s for
//! the node (documents to apply, VMs to start or stop, members up/down).
//! No sockets, no clock, no threads: the same code runs over UDP
//! ([`super::transport::run_udp`]) and in the simulation
//! ([`super::sim`]).
//!
//! Each tick: SWIM timers; push of hot entries to `fanout` random peers
//! (bounded by `max_bytes_per_tick`); every `anti_entropy_interval_ms` a
//! digest to one random peer; tombstone collection; the placement step.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use super::members::{screen, Members};
use super::membership::{MemberEvent, SwimConfig};
use super::placement::{self, VmRequest};
use super::rng::{mix64, Rng};
use super::store::{EntryStore, Merge};
use super::trust::Signer;
use super::verify::Verifier;
use super::wire::{
    decode, encode, Body, Claim, DocKey, Document, Entry, EntryKey, Envelope, MemberState, Millis,
    NodeAddr, NodeId, NodeStatus,
};
use super::wire::{CLAIM_DOMAIN, STATUS_DOMAIN};
use crate::model::{Placement, RelocationSpec, VirtualMachineSpec};

/// Settings of one gossip node. Defaults: 200 ms rounds, fan-out 3.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Failure detector (foca's timings, see [`super::members`]).
    pub swim: SwimConfig,
    /// Interval the caller should call `handle_tick` at.
    pub tick_ms: u64,
    /// Peers each hot entry is pushed to per tick.
    pub fanout: usize,
    /// Each new entry is pushed `mult × ceil(log10(n + 1))` times.
    pub retransmit_mult: u32,
    /// One digest exchange with a random peer this often.
    pub anti_entropy_interval_ms: u64,
    /// Bytes this node may send per tick for entries (push, anti-entropy
    /// answers); probes are small and not limited.
    pub max_bytes_per_tick: usize,
    /// Tombstones (and claims of deleted VMs) are forgotten this long
    /// after they were written.
    pub tombstone_horizon_ms: u64,
    /// A claimant starts its VM only after holding the best claim this
    /// long (time for competing claims to arrive).
    pub claim_settle_ms: u64,
    /// The node ranked `r` (0 = best) in its own view claims after
    /// `r × claim_backoff_ms` without a claim.
    pub claim_backoff_ms: u64,
    /// A VM whose claimant is dead is re-elected this long after the
    /// death (or the claim's arrival, whichever is later).
    pub reelect_timeout_ms: u64,
    /// Strict mode: a node that has not seen a majority of the cluster
    /// for this long pauses its strict VMs; the others re-elect a strict
    /// VM no sooner than this plus [`STRICT_MARGIN_MS`] after its node's
    /// death.
    pub strict_pause_ms: u64,
}

/// What the others wait beyond `strict_pause_ms` (the cut-off node's
/// tick and the time its engine takes to pause).
pub const STRICT_MARGIN_MS: u64 = 2_000;

/// A member counts toward a majority when heard from within this (its
/// probes, acks and pushes reach every node several times a second).
pub const QUORUM_WINDOW_MS: u64 = 4_000;

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            swim: SwimConfig::default(),
            tick_ms: 200,
            fanout: 3,
            retransmit_mult: 4,
            anti_entropy_interval_ms: 1_000,
            max_bytes_per_tick: 16 * 1024,
            tombstone_horizon_ms: 24 * 3_600_000,
            claim_settle_ms: 3_000,
            claim_backoff_ms: 1_000,
            reelect_timeout_ms: 5_000,
            strict_pause_ms: 3_000,
        }
    }
}

/// What the node should act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A member is alive (new, or back).
    MemberUp(NodeId, NodeAddr),
    /// A member is declared dead.
    MemberDown(NodeId),
    /// A newer version of a document arrived (apply it to the store).
    Document(Document),
    /// A document failed verification and was dropped.
    Rejected {
        /// The document.
        key: DocKey,
        /// Who sent it.
        from: NodeId,
        /// The verifier's reason.
        reason: String,
    },
    /// A node's status changed.
    Status(NodeId),
    /// This node won the election: start the VM.
    Start {
        /// The VM.
        vm: DocKey,
        /// The claim's epoch.
        epoch: u64,
    },
    /// Another node holds the winning claim of a VM this node runs (a
    /// healed partition): stop this copy and keep its disks as a replica.
    StopKeepDisk {
        /// The VM.
        vm: DocKey,
        /// The winner.
        winner: NodeId,
        /// The winning epoch.
        epoch: u64,
    },
}

/// Something to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this datagram.
    Send(NodeAddr, Vec<u8>),
    /// Act on this.
    Event(Event),
}

/// Counters (bench, metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Datagrams sent.
    pub messages_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received (every datagram handed in, decodable or not).
    pub bytes_received: u64,
    /// Datagrams that did not decode.
    pub malformed: u64,
    /// Entries refused by the verifier.
    pub rejected: u64,
    /// Datagrams from nodes that are not admitted (or that claimed to be
    /// another node than the channel authenticated).
    pub unadmitted: u64,
}

#[derive(Debug)]
struct VmTrack {
    req: VmRequest,
    seen: Millis,
    claimed_at: Option<Millis>,
    started: bool,
    /// The claimant my pending claim displaces (re-election).
    displaced: Option<NodeId>,
    /// (base time of the election, my rank, when computed).
    rank_cache: Option<(Millis, usize, Millis)>,
}

/// A relocation as the election sees it: the VM it moves and where to.
#[derive(Debug, Clone)]
struct Reloc {
    vm: DocKey,
    target: Placement,
}

impl Reloc {
    /// From a Relocation manifest's JSON (`None`: not one).
    fn from_json(key: &DocKey, body: &[u8]) -> Option<Reloc> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let spec: RelocationSpec = serde_json::from_value(v.get("spec")?.clone()).ok()?;
        let ns = spec
            .virtual_machine
            .namespace
            .clone()
            .unwrap_or_else(|| key.namespace.clone());
        Some(Reloc {
            vm: DocKey::new("VirtualMachine", &ns, &spec.virtual_machine.name),
            target: spec.target.unwrap_or_default(),
        })
    }
}

impl GossipNode {
    /// The spec of the VirtualMachine document `key` (`None`: unknown,
    /// deleted, or not a VM's spec).
    fn vm_spec(&self, key: &DocKey) -> Option<VirtualMachineSpec> {
        let d = self.document(key).filter(|d| !d.deleted)?;
        let v: serde_json::Value = serde_json::from_slice(&d.body).ok()?;
        serde_json::from_value(v.get("spec")?.clone()).ok()
    }

    /// The image hint of the spacesuit `vm` is made from, when that
    /// spacesuit's image gives its SHA-256, or the hint of its volume
    /// when it is made from a VM (it is on the nodes that made or hold
    /// it).
    fn image_of(&self, vm: &DocKey, spec: &VirtualMachineSpec) -> Option<u64> {
        let suit = spec.spacesuit.as_ref()?;
        let d = self
            .document(&DocKey::new("Spacesuit", &vm.namespace, suit))
            .filter(|d| !d.deleted)?;
        let v: serde_json::Value = serde_json::from_slice(&d.body).ok()?;
        if !v["spec"]["source"]["virtualMachine"].is_null() {
            let volume = crate::model::names::spacesuit_volume(&vm.namespace, suit);
            return Some(super::wire::volume_hint(&volume));
        }
        super::wire::image_hint(v["spec"]["source"]["image"]["sha256"].as_str()?)
    }
}

/// Where a VM placed by hand that holds disks and should run must run
/// (`None`: placed by the radar, stopped, or without disks).
fn pin_of(spec: &VirtualMachineSpec) -> Option<Placement> {
    let p = spec.placement.as_ref()?;
    (p.by_hand()
        && !spec.disks.is_empty()
        && spec.power_state != crate::model::vm::PowerState::Stopped)
        .then(|| Placement {
            node: p.node.clone(),
            address: p.address.clone(),
            ..Placement::default()
        })
}

/// The key of the relocation a VM placed by hand gets when it runs on
/// another node than its placement names: `Relocation NAMESPACE/VM@placement`
/// (`@` is not valid in an object's name, so no Relocation object has
/// it).
pub fn pin_relocation_key(vm: &DocKey) -> DocKey {
    DocKey::new(
        "Relocation",
        &vm.namespace,
        &format!("{}@placement", vm.name),
    )
}

/// Whether `key` is a [`pin_relocation_key`].
pub fn is_pin_relocation(key: &DocKey) -> bool {
    key.kind == "Relocation" && key.name.ends_with("@placement")
}

/// A relocation as one node sees it (see [`GossipNode::relocations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelocationView {
    /// The Relocation.
    pub key: DocKey,
    /// The VM it moves.
    pub vm: DocKey,
    /// The node whose claim on the VM wins (it runs the VM).
    pub runner: Option<NodeId>,
    /// The node whose claim on the relocation wins (its receiver).
    pub receiver: Option<NodeId>,
    /// Over: the VM's claim moved since the receiver was elected
    /// ([`GossipNode::relocation_done`]).
    pub done: bool,
    /// Why no node can receive it (no receiver claimed yet, and none in
    /// this node's view satisfies the target).
    pub unplaceable: Option<String>,
}

/// Where a node's peers come from.
enum Peers {
    /// SWIM membership (foca).
    Swim(Box<Members>),
    /// A fixed list, all taken as alive (simulating 10,000 nodes in one
    /// process, where 10,000 member tables would not fit; the bench says
    /// when it uses this).
    Static(Arc<Vec<(NodeId, NodeAddr)>>),
}

/// One node's gossip state machine.
pub struct GossipNode {
    cfg: GossipConfig,
    me: NodeId,
    addr: NodeAddr,
    peers: Peers,
    store: EntryStore,
    verifier: Arc<dyn Verifier>,
    rng: Rng,
    out: VecDeque<Output>,
    vms: BTreeMap<DocKey, VmTrack>,
    /// Relocations this node knows (their receivers are elected like VMs,
    /// under the Relocation's key, in `vms`).
    relocs: BTreeMap<DocKey, Reloc>,
    /// VMs placed by hand (`placement.node` or `address`) that hold
    /// disks and should run: where their placement names. One that runs
    /// elsewhere is moved there live ([`GossipNode::relocations`]).
    pins: BTreeMap<DocKey, Placement>,
    seeds: Vec<NodeAddr>,
    budget: usize,
    /// A newer claim arrived since [`GossipNode::take_claims_moved`].
    claims_moved: bool,
    /// A Relocation changed since [`GossipNode::handle_relocation_news`].
    relocation_news: bool,
    next_ae: Millis,
    next_join: Millis,
    next_collect: Millis,
    status_seq: u64,
    stats: Stats,
    signer: Option<Arc<dyn Signer>>,
    /// Senders refused since the caller last asked (ID as it claimed,
    /// address, datagrams), for one log line per sender per interval.
    unadmitted: BTreeMap<NodeId, (NodeAddr, u64)>,
    /// Claims and statuses refused since the caller last asked, per
    /// sender: (how many, up to 4 distinct reasons).
    refused_entries: BTreeMap<NodeId, (u64, Vec<String>)>,
    /// Since when this node has not seen a majority of the cluster
    /// (`None`: it sees one).
    quorum_lost_at: Option<Millis>,
    /// When each member was last heard from (any datagram it sent).
    last_heard: HashMap<NodeId, Millis>,
    /// Strict VMs paused for want of a majority stay paused until then
    /// after the majority is back (time for a newer claim made meanwhile
    /// to arrive).
    strict_hold_until: Millis,
}

impl GossipNode {
    /// A node that knows nobody yet. `incarnation` must exceed the one of
    /// any earlier run of this node (e.g. Unix seconds at start), so that
    /// its new status and liveness win over old ones; `seed` fixes its
    /// random choices.
    pub fn new(
        cfg: GossipConfig,
        me: NodeId,
        addr: NodeAddr,
        incarnation: u64,
        verifier: Arc<dyn Verifier>,
        seed: u64,
    ) -> Self {
        let membership = Members::new(
            cfg.swim.clone(),
            me.clone(),
            addr,
            incarnation,
            mix64(seed ^ 0xF0CA),
        );
        GossipNode {
            budget: cfg.max_bytes_per_tick,
            cfg,
            me,
            addr,
            peers: Peers::Swim(Box::new(membership)),
            store: EntryStore::new(),
            verifier,
            rng: Rng::new(seed),
            out: VecDeque::new(),
            vms: BTreeMap::new(),
            relocs: BTreeMap::new(),
            pins: BTreeMap::new(),
            seeds: Vec::new(),
            claims_moved: false,
            relocation_news: false,
            next_ae: 0,
            next_join: 0,
            next_collect: 0,
            status_seq: 0,
            stats: Stats::default(),
            signer: None,
            unadmitted: BTreeMap::new(),
            refused_entries: BTreeMap::new(),
            quorum_lost_at: None,
            strict_hold_until: 0,
            last_heard: HashMap::new(),
        }
    }

    /// Sign this node's claims and statuses with `signer` (a real node's
    /// key; peers that check admission refuse unsigned ones).
    pub fn with_signer(mut self, signer: Arc<dyn Signer>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Claims and statuses refused since the last call: (the sender that
    /// relayed them, how many, up to 4 distinct reasons).
    pub fn take_refused_entries(&mut self) -> Vec<(NodeId, u64, Vec<String>)> {
        std::mem::take(&mut self.refused_entries)
            .into_iter()
            .map(|(id, (n, r))| (id, n, r))
            .collect()
    }

    /// Senders whose datagrams were dropped since the last call: (the ID
    /// they claimed, their address, how many datagrams).
    pub fn take_unadmitted(&mut self) -> Vec<(NodeId, NodeAddr, u64)> {
        std::mem::take(&mut self.unadmitted)
            .into_iter()
            .map(|(id, (a, n))| (id, a, n))
            .collect()
    }

    /// Join through any one member: asks `seed` for its member list (and
    /// asks again every probe interval until someone answers).
    pub fn join(&mut self, seed: NodeAddr) {
        self.seeds.push(seed);
        self.next_join = 0;
    }

    /// Ask the seeds again at the next tick (who is admitted changed).
    pub fn rejoin(&mut self) {
        self.next_join = 0;
    }

    /// Know `id` as alive from the start without gossiping it (a member
    /// list saved from an earlier run, or a simulation's set-up).
    pub fn add_member(&mut self, id: NodeId, addr: NodeAddr, now: Millis) {
        if let Peers::Swim(m) = &mut self.peers {
            m.insert_alive(id, addr, now);
        }
        self.flush_members();
    }

    /// Replace SWIM by a fixed peer list (see [`Peers`]); used by the
    /// 10,000-node benchmark only.
    pub fn use_static_peers(&mut self, peers: Arc<Vec<(NodeId, NodeAddr)>>) {
        self.peers = Peers::Static(peers);
    }

    /// This node's ID.
    pub fn id(&self) -> &NodeId {
        &self.me
    }

    /// This node's address.
    pub fn addr(&self) -> NodeAddr {
        self.addr
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Members known, by SWIM state: `[alive, suspect, dead]` (itself
    /// excluded; static peers are all alive).
    pub fn member_counts(&self) -> [usize; 3] {
        match &self.peers {
            Peers::Swim(m) => m.state_counts(),
            Peers::Static(p) => [p.iter().filter(|x| x.0 != self.me).count(), 0, 0],
        }
    }

    /// The next output, if any.
    pub fn poll(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The stored document of `key`.
    pub fn document(&self, key: &DocKey) -> Option<&Document> {
        match self
            .store
            .get(&EntryKey::Doc(key.clone()))
            .map(|s| &s.entry)
        {
            Some(Entry::Doc(d)) => Some(d),
            _ => None,
        }
    }

    /// The node `vm`'s data waits on: its winning claim's node is dead,
    /// and the VM holds data, so no other node claims it.
    pub fn node_lost(&self, vm: &DocKey) -> Option<&Claim> {
        let track = self.vms.get(vm)?;
        let c = self.claim(vm)?;
        (track.req.holds_data
            && c.node != self.me
            && self.member_state(&c.node) == Some(MemberState::Dead)
            && (!track.req.fastr || self.copy_holders(vm).is_empty()))
        .then_some(c)
    }

    /// The live nodes (this one included) whose status lists the newest
    /// complete FASTR point of `vm` any of them holds.
    pub fn copy_holders(&self, vm: &DocKey) -> Vec<NodeId> {
        let h = vm.hash64();
        let mut ids = self.alive_members();
        if !ids.contains(&self.me) {
            ids.push(self.me.clone());
        }
        let mut best = 0;
        let mut out = Vec::new();
        for id in ids {
            let Some(ms) = self
                .status(&id)
                .and_then(|s| s.copies.iter().find(|c| c.0 == h).map(|c| c.1))
            else {
                continue;
            };
            if ms > best {
                best = ms;
                out.clear();
            }
            if ms == best {
                out.push(id);
            }
        }
        out.sort();
        out
    }

    /// The live nodes (this one included) whose status lists any FASTR
    /// copy of `vm`.
    pub fn copy_holders_any(&self, vm: &DocKey) -> Vec<NodeId> {
        let h = vm.hash64();
        let mut ids = self.alive_members();
        if !ids.contains(&self.me) {
            ids.push(self.me.clone());
        }
        let mut out: Vec<NodeId> = ids
            .into_iter()
            .filter(|id| {
                self.status(id)
                    .is_some_and(|s| s.copies.iter().any(|c| c.0 == h))
            })
            .collect();
        out.sort();
        out
    }

    /// An operator's recovery of a `NodeLost` VM (`deorch recover`): this
    /// node claims it above the dead node's claim and starts it after the
    /// usual settle time, from what this node has (a retained copy of its
    /// volumes, else fresh disks). The lost node's copy, if it returns, is
    /// stopped with its disks kept (the newer claim wins).
    ///
    /// With `from_copy` (`deorch fastr recover`: this node starts it from
    /// its FASTR copy) the claimant may be alive: the newer claim
    /// displaces it, and it stops (rule 5 of the failover).
    pub fn recover(&mut self, vm: &DocKey, from_copy: bool, now: Millis) -> Result<u64, String> {
        let Some(track) = self.vms.get(vm) else {
            return Err(format!(
                "{vm} is not placed by the radar here (unknown, deleted, or placed by hand)"
            ));
        };
        let req = track.req.clone();
        let epoch = match self.claim(vm) {
            Some(c) if c.node == self.me => {
                return Err(format!("{vm} is already claimed by this node"))
            }
            Some(c) if !from_copy && self.member_state(&c.node) != Some(MemberState::Dead) => {
                return Err(format!(
                    "{vm} is claimed by {}, which is not dead in this node's view: nothing to recover",
                    c.node
                ))
            }
            Some(c) => c.epoch + 1,
            None => 1,
        };
        let Some((_, score)) = self.my_rank(&req) else {
            return Err(format!(
                "this node cannot run {vm}: it does not satisfy its placement"
            ));
        };
        if !self.claim_now(vm, epoch, score, now) {
            return Err(format!(
                "{vm}: the claim was not taken (a newer one exists)"
            ));
        }
        Ok(epoch)
    }

    /// The relocations this node knows, with who runs each one's VM and
    /// who won its receiver election, in this node's view.
    ///
    /// Also one per VM placed by hand that runs on another node than its
    /// placement names ([`pin_relocation_key`]): its receiver is that
    /// node, with no election (the user named it), and it is over once
    /// that node reports running the VM.
    pub fn relocations(&self) -> Vec<RelocationView> {
        let mut views: Vec<RelocationView> = self
            .relocs
            .iter()
            .map(|(key, r)| RelocationView {
                key: key.clone(),
                vm: r.vm.clone(),
                runner: self.claim(&r.vm).map(|c| c.node.clone()),
                receiver: self.claim(key).map(|c| c.node.clone()),
                done: self.relocation_done(key),
                unplaceable: self
                    .claim(key)
                    .is_none()
                    .then(|| self.unplaceable(key))
                    .flatten(),
            })
            .collect();
        if self.pins.is_empty() {
            return views;
        }
        // One pass over the statuses (this runs on every tick): who lists
        // each pinned VM, and the nodes by name.
        let view = self.view();
        let by_name: BTreeMap<&str, &NodeId> =
            view.iter().map(|s| (s.name.as_str(), &s.id)).collect();
        let mut listing: BTreeMap<&DocKey, Vec<&NodeId>> = BTreeMap::new();
        for st in &view {
            for vm in st.vms.iter().filter(|vm| self.pins.contains_key(*vm)) {
                listing.entry(vm).or_default().push(&st.id);
            }
        }
        for (vm, on) in listing {
            let pin = &self.pins[vm];
            let to = match &pin.node {
                Some(name) => by_name.get(name.as_str()).map(|id| (*id).clone()),
                None => self.target_node(pin).flatten(),
            };
            let Some(to) = to else { continue };
            // Once the named node lists it, it runs there (during a move
            // both list it until the old copy is gone).
            if on.contains(&&to) || self.member_state(&to) == Some(MemberState::Dead) {
                continue;
            }
            let runner = on[0].clone();
            // Memory moves only to a node with the same accelerator (and
            // host CPU, when the VM sees the host's): no receiver, and
            // why (the sender's VM status says it).
            let (accel, cpu) = self.move_needs(&runner, self.vm_spec(vm).as_ref());
            let there = self.status(&to);
            let clash = match (accel, cpu, there) {
                (Some(a), _, Some(t)) if !t.accel.is_empty() && t.accel != a => Some(format!(
                    "the node its placement names runs {} and the VM runs under {a}: memory does not move between them (stop the VM to move it)",
                    t.accel
                )),
                (_, Some(c), Some(t)) if !t.cpu.is_empty() && t.cpu != c => Some(format!(
                    "the node its placement names has another host CPU ({}) than the one the VM sees ({c}, CPU model host under KVM): give the VM a named spec.cpuModel both have, or stop it to move it",
                    t.cpu
                )),
                _ => None,
            };
            views.push(RelocationView {
                key: pin_relocation_key(vm),
                vm: vm.clone(),
                runner: Some(runner),
                receiver: clash.is_none().then_some(to),
                done: false,
                unplaceable: clash,
            });
        }
        views
    }

    /// The switch of a relocation: this node, whose QEMU now runs `vm`,
    /// claims it above the claim of `from`, the sender (paused for good,
    /// its copy of the VM never runs again), and counts it as started at
    /// once: no settle time, since no other node may start it (`from`
    /// stops on the newer claim, every other node sees it running here).
    ///
    /// A VM placed by hand on this node has no claim: nothing to take
    /// (epoch 0); it counts as run here once this node's status lists it.
    pub fn take_over(&mut self, vm: &DocKey, from: &NodeId, now: Millis) -> Result<u64, String> {
        if let Some(pin) = self.pins.get(vm) {
            return match self.target_node(pin) {
                Some(Some(me)) if me == self.me => Ok(0),
                _ => Err(format!("{vm} is placed by hand on another node")),
            };
        }
        let Some(track) = self.vms.get(vm) else {
            return Err(format!(
                "{vm} is not placed by the radar here (unknown, deleted, or placed by hand)"
            ));
        };
        let req = track.req.clone();
        let epoch = match self.claim(vm) {
            Some(c) if c.node == self.me => return Ok(c.epoch),
            Some(c) if c.node == *from => c.epoch + 1,
            Some(c) => {
                return Err(format!(
                    "{vm} is claimed by {}, not by the sender {from}",
                    c.node
                ))
            }
            None => {
                return Err(format!(
                    "{vm} is claimed by nobody, not by the sender {from}"
                ))
            }
        };
        let score = self.my_rank(&req).map_or(0, |(_, s)| s);
        if !self.claim_now(vm, epoch, score, now) {
            return Err(format!(
                "{vm}: the claim was not taken (a newer one exists)"
            ));
        }
        if let Some(t) = self.vms.get_mut(vm) {
            t.started = true;
            t.displaced = None;
        }
        self.event(Event::Start {
            vm: vm.clone(),
            epoch,
        });
        Ok(epoch)
    }

    /// Whether relocation `key` is over: the VM's claim moved since its
    /// receiver was elected (to that receiver at the switch, or anywhere
    /// else since), so it is never carried out (again).
    pub fn relocation_done(&self, key: &DocKey) -> bool {
        let Some(r) = self.relocs.get(key) else {
            return false;
        };
        match (self.claim(key), self.claim(&r.vm)) {
            (Some(rc), Some(vc)) => vc.epoch > rc.epoch || vc.node == rc.node,
            _ => false,
        }
    }

    /// The winning claim of `vm` in this node's view.
    pub fn claim(&self, vm: &DocKey) -> Option<&Claim> {
        match self
            .store
            .get(&EntryKey::Claim(vm.clone()))
            .map(|s| &s.entry)
        {
            Some(Entry::Claim(c)) => Some(c),
            _ => None,
        }
    }

    /// The status of `id` in this node's view.
    pub fn status(&self, id: &NodeId) -> Option<&NodeStatus> {
        match self
            .store
            .get(&EntryKey::Status(id.clone()))
            .map(|s| &s.entry)
        {
            Some(Entry::Status(s)) => Some(s),
            _ => None,
        }
    }

    /// SWIM state of `id` (`None`: unknown, or static peers).
    pub fn member_state(&self, id: &NodeId) -> Option<MemberState> {
        match &self.peers {
            Peers::Swim(m) => m.get(id).map(|m| m.state),
            Peers::Static(_) => None,
        }
    }

    /// Whether this node sees a majority of the cluster, itself
    /// included: of the admitted nodes (signed mode), else of every
    /// member the failure detector knows (alive, suspect, or dead and
    /// not forgotten); a member counts as seen when it is alive and was
    /// heard from within [`QUORUM_WINDOW_MS`]. Static peers: always.
    pub fn has_quorum(&self, now: Millis) -> bool {
        let Peers::Swim(m) = &self.peers else {
            return true;
        };
        let seen = 1 + m
            .alive_ids()
            .iter()
            .filter(|id| {
                self.verifier.admits(id)
                    && self
                        .last_heard
                        .get(*id)
                        .is_some_and(|t| now < t + QUORUM_WINDOW_MS)
            })
            .count();
        let total = self
            .verifier
            .cluster_size()
            .unwrap_or(m.known_count() + 1)
            .max(seen);
        2 * seen > total
    }

    /// Whether this node's strict VMs are paused here: it has not seen a
    /// majority for `strict_pause_ms`.
    pub fn strict_paused(&self, now: Millis) -> bool {
        now < self.strict_hold_until
            || self
                .quorum_lost_at
                .is_some_and(|t| now >= t + self.cfg.strict_pause_ms)
    }

    /// Whether `vm` is in strict mode.
    pub fn is_strict(&self, vm: &DocKey) -> bool {
        self.vms.get(vm).is_some_and(|t| t.req.strict)
    }

    /// Members this node holds alive (itself excluded).
    pub fn alive_members(&self) -> Vec<NodeId> {
        match &self.peers {
            Peers::Swim(m) => {
                let mut v = m.alive_ids().to_vec();
                v.sort();
                v
            }
            Peers::Static(p) => p
                .iter()
                .map(|x| x.0.clone())
                .filter(|i| *i != self.me)
                .collect(),
        }
    }

    /// Why no node in this node's view may run the automatically placed
    /// `vm` (its election can never settle), or `None` when one may, or
    /// `vm` is not the election's.
    pub fn unplaceable(&self, vm: &DocKey) -> Option<String> {
        let track = self.vms.get(vm)?;
        placement::why_unplaceable(&track.req, self.view())
    }

    /// VMs this node has started and not stopped.
    pub fn running(&self) -> Vec<DocKey> {
        self.vms
            .iter()
            // A relocation won here is not a VM running here.
            .filter(|(k, t)| t.started && k.kind == "VirtualMachine")
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Number of stored entries.
    pub fn entry_count(&self) -> usize {
        self.store.len()
    }

    fn peer_count(&self) -> usize {
        match &self.peers {
            Peers::Swim(m) => m.alive_count(),
            Peers::Static(p) => p.len().saturating_sub(1),
        }
    }

    fn transmits(&self) -> u32 {
        let n = self.peer_count() as f64 + 1.0;
        self.cfg.retransmit_mult * (n.log10().ceil().max(1.0) as u32)
    }

    fn random_peers(&mut self, k: usize) -> Vec<NodeAddr> {
        match &self.peers {
            Peers::Swim(m) => m.sample_alive(&mut self.rng, k),
            Peers::Static(p) => {
                let p = p.clone();
                let mut out = Vec::with_capacity(k);
                let mut tries = 0;
                while out.len() < k.min(p.len().saturating_sub(1)) && tries < 4 * k + 8 {
                    tries += 1;
                    let (id, a) = &p[self.rng.below(p.len())];
                    if *id != self.me && !out.contains(a) {
                        out.push(*a);
                    }
                }
                out
            }
        }
    }

    fn send(&mut self, to: NodeAddr, body: Body) {
        let incarnation = match &self.peers {
            Peers::Swim(m) => m.identity().generation,
            Peers::Static(_) => 0,
        };
        let bytes = encode(&Envelope {
            from: self.me.clone(),
            addr: self.addr,
            incarnation,
            body,
        });
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.budget = self.budget.saturating_sub(bytes.len());
        self.out.push_back(Output::Send(to, bytes));
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn flush_member_events(&mut self) {
        let Peers::Swim(m) = &mut self.peers else {
            return;
        };
        for e in m.take_events() {
            self.out.push_back(Output::Event(match e {
                MemberEvent::Up(id, a) => Event::MemberUp(id, a),
                // foca tells no suspicions (a suspect is still "up").
                MemberEvent::Suspect(_) => continue,
                MemberEvent::Down(id) => Event::MemberDown(id),
            }));
        }
    }

    /// Wrap what foca wants sent in envelopes; then its member events.
    fn flush_members(&mut self) {
        let sends: Vec<(NodeAddr, Vec<u8>)> = match &mut self.peers {
            Peers::Swim(m) => m.take_sends().collect(),
            Peers::Static(_) => return,
        };
        for (to, data) in sends {
            self.send(to, Body::Foca(data));
        }
        self.flush_member_events();
    }

    /// Publish a local document (from this node's store: a manifest
    /// applied here). It is verified like any other.
    pub fn publish(&mut self, now: Millis, doc: Document) -> Result<bool, String> {
        self.verifier.verify_document(&doc)?;
        Ok(self.accept(Entry::Doc(doc), now) == Merge::Newer)
    }

    /// Store another node's status without pushing it (start-up from a
    /// saved view, or a simulation that starts converged).
    pub fn preload_status(&mut self, now: Millis, status: NodeStatus) {
        self.store.offer(Entry::Status(Box::new(status)), now, 0);
    }

    /// Publish this node's status (ID, incarnation and seq are set here).
    pub fn set_status(&mut self, now: Millis, mut status: NodeStatus) {
        self.status_seq += 1;
        status.id = self.me.clone();
        status.incarnation = match &self.peers {
            Peers::Swim(m) => m.identity().generation,
            Peers::Static(_) => 0,
        };
        status.seq = self.status_seq;
        status.sig = Vec::new();
        if let Some(s) = &self.signer {
            status.sig = s.sign(STATUS_DOMAIN, &status.signed_bytes());
        }
        self.accept(Entry::Status(Box::new(status)), now);
    }

    fn accept(&mut self, entry: Entry, now: Millis) -> Merge {
        if let Entry::Doc(d) = &entry {
            if d.deleted && now >= d.written_ms.saturating_add(self.cfg.tombstone_horizon_ms) {
                return Merge::Stale;
            }
        }
        let vm = match &entry {
            Entry::Doc(d) if d.key.kind == "VirtualMachine" => Some(d.key.clone()),
            _ => None,
        };
        let reloc = match &entry {
            Entry::Doc(d) if d.key.kind == "Relocation" => Some(d.key.clone()),
            _ => None,
        };
        let suit = match &entry {
            Entry::Doc(d) if d.key.kind == "Spacesuit" => Some(d.key.clone()),
            _ => None,
        };
        let t = self.transmits();
        let merged = self.store.offer(entry, now, t);
        if let (Merge::Newer, Some(suit)) = (merged, suit) {
            // Its image may be new: the VMs made from it prefer the
            // nodes that hold it.
            let made_from: Vec<DocKey> = self
                .vms
                .keys()
                .filter(|k| k.kind == "VirtualMachine" && k.namespace == suit.namespace)
                .cloned()
                .collect();
            for k in made_from {
                let spec = self
                    .vm_spec(&k)
                    .filter(|s| s.spacesuit.as_deref() == Some(suit.name.as_str()));
                if let Some(s) = spec {
                    let image = self.image_of(&k, &s);
                    if let Some(t) = self.vms.get_mut(&k) {
                        t.req.image = image;
                    }
                }
            }
        }
        if let (Merge::Newer, Some(key)) = (merged, reloc) {
            self.relocation_news = true;
            match self
                .document(&key)
                .filter(|d| !d.deleted)
                .and_then(|d| Reloc::from_json(&key, &d.body))
            {
                Some(r) => {
                    self.relocs.insert(key, r);
                }
                None => {
                    self.relocs.remove(&key);
                    self.vms.remove(&key);
                }
            }
        }
        if let (Merge::Newer, Some(key)) = (merged, vm) {
            let spec = self.vm_spec(&key);
            match spec.as_ref().and_then(pin_of) {
                // No placement to run: the move's view is worked out
                // when the caller next reads `relocations` (every tick).
                Some(pin) => {
                    self.pins.insert(key.clone(), pin);
                }
                None => {
                    self.pins.remove(&key);
                }
            }
            let req = spec.and_then(|s| {
                let mut r = VmRequest::from_spec(key.clone(), &s)?;
                r.image = self.image_of(&key, &s);
                Some(r)
            });
            match req {
                Some(req) => self.track(key, req, now),
                // Deleted, or placed by hand: not the radar's any more.
                None => {
                    self.vms.remove(&key);
                }
            }
        }
        merged
    }

    /// Candidates in this node's view: itself and the members it holds
    /// alive, by their latest status.
    fn view(&self) -> Vec<&NodeStatus> {
        self.store
            .iter()
            .filter_map(|(_, s)| match &s.entry {
                Entry::Status(st) if self.is_candidate(&st.id) => Some(&**st),
                _ => None,
            })
            .collect()
    }

    fn is_candidate(&self, id: &NodeId) -> bool {
        if !self.verifier.admits(id) {
            return false;
        }
        if *id == self.me {
            return true;
        }
        match &self.peers {
            Peers::Swim(m) => m.get(id).is_some_and(|m| m.state == MemberState::Alive),
            Peers::Static(_) => true,
        }
    }

    /// My position in my own ranking of `req` (0 = best), or `None` when I
    /// am not eligible. O(n): counts the candidates that beat me.
    fn my_rank(&self, req: &VmRequest) -> Option<(usize, u64)> {
        let view = self.view();
        let mine = view.iter().find(|s| s.id == self.me)?;
        if !placement::eligible(req, mine) {
            return None;
        }
        let vh = req.vm.hash64();
        let key = |s: &NodeStatus| {
            let nh = s.id.hash64();
            (placement::node_score(req, vh, s), nh)
        };
        let me_key = key(mine);
        let ahead = view
            .iter()
            .filter(|s| placement::eligible(req, s) && key(s) > me_key)
            .count();
        Some((ahead, me_key.0))
    }

    /// What a running VM needs of the node it moves to, beside its own
    /// needs: the accelerator of `sender`, the node that runs it; and its
    /// host CPU when the VM sees that CPU (KVM with the `host` or `max`
    /// CPU model, `host` being the default under KVM), since a guest
    /// that saw one CPU's features may not find them on another. Under
    /// TCG every CPU model is emulated, the same on every host.
    fn move_needs(
        &self,
        sender: &NodeId,
        spec: Option<&VirtualMachineSpec>,
    ) -> (Option<String>, Option<String>) {
        let Some(s) = self.status(sender) else {
            return (None, None);
        };
        let accel = Some(s.accel.clone()).filter(|a| !a.is_empty());
        let host_model = spec
            .is_none_or(|sp| matches!(sp.cpu_model.as_deref(), None | Some("host") | Some("max")));
        let cpu = (accel.as_deref() == Some("kvm") && host_model)
            .then(|| s.cpu.clone())
            .filter(|c| !c.is_empty());
        (accel, cpu)
    }

    /// The node that runs `vm` in this node's view: its winning claim's,
    /// else the one whose status lists it (a VM placed by hand).
    fn runner_of(&self, vm: &DocKey) -> Option<NodeId> {
        // A claim left from before the VM was placed by hand says nothing.
        if let Some(c) = self.claim(vm).filter(|_| !self.pins.contains_key(vm)) {
            return Some(c.node.clone());
        }
        let listing: Vec<NodeId> = self
            .view()
            .into_iter()
            .filter(|s| s.vms.contains(vm))
            .map(|s| s.id.clone())
            .collect();
        // A VM placed by hand runs on its node once that node reports it
        // (during a move both may list it until the old copy is gone).
        let pinned = self
            .pins
            .get(vm)
            .and_then(|p| self.target_node(p))
            .flatten();
        match pinned {
            Some(p) if listing.contains(&p) => Some(p),
            _ => listing.into_iter().next(),
        }
    }

    /// The node a relocation's target names, by name or by the IP of its
    /// gossip address (`Some(None)`: it names one this node does not
    /// know; `None`: it names none).
    fn target_node(&self, t: &Placement) -> Option<Option<NodeId>> {
        if let Some(name) = &t.node {
            let found = self.view().into_iter().find(|s| s.name == *name);
            return Some(found.map(|s| s.id.clone()));
        }
        let ip: std::net::IpAddr = t.address.as_ref()?.parse().ok()?;
        if self.addr.ip() == ip {
            return Some(Some(self.me.clone()));
        }
        let found = self
            .alive_members()
            .into_iter()
            .find(|id| self.addr_of(id).is_some_and(|a| a.ip() == ip));
        Some(found)
    }

    /// Keep each relocation's receiver election in `vms`: the VM's needs,
    /// the target's selector and performance (else the VM's own), its
    /// sender excluded, a named target the only candidate. The sender is
    /// fixed once the election has a claim, so the move of the VM's own
    /// claim at the switch does not change who may receive.
    fn track_relocations(&mut self, now: Millis) {
        let keys: Vec<DocKey> = self.relocs.keys().cloned().collect();
        for key in keys {
            let r = self.relocs[&key].clone();
            let settled = self.claim(&key).is_some() && self.vms.contains_key(&key);
            if settled {
                continue;
            }
            let spec = self.vm_spec(&r.vm);
            let (Some(spec), Some(sender)) = (spec, self.runner_of(&r.vm)) else {
                // The VM is unknown or runs nowhere yet: nothing to move.
                continue;
            };
            let mut req = VmRequest::needs(key.clone(), &spec);
            req.holds_data = false;
            // A node holding the VM's newest FASTR point takes only what
            // changed since: it ranks first.
            if spec.fastr.is_some() {
                req.prefer = self.copy_holders(&r.vm);
            }
            if r.target.selector.is_some() {
                req.selector = r.target.selector.clone();
            }
            if r.target.performance.is_some() {
                req.performance = r.target.performance;
            }
            // Memory moves only between nodes on the same accelerator
            // (and host CPU, when the VM sees the host's).
            (req.accel, req.cpu) = self.move_needs(&sender, Some(&spec));
            req.exclude = Some(sender);
            // A VM placed by hand goes only where its placement names
            // (changing that is how it moves): a Relocation elsewhere
            // finds no receiver.
            let target = match &spec.placement {
                Some(p) if p.by_hand() => p.clone(),
                _ => r.target.clone(),
            };
            req.only = match self.target_node(&target) {
                Some(Some(id)) => Some(id),
                Some(None) => Some(NodeId(String::from("(no such node)"))),
                None => None,
            };
            self.track(key, req, now);
        }
    }

    /// Elect a node for `key` by `req` (a VM, or a relocation's
    /// receiver); a known election keeps its state and takes the new
    /// request.
    fn track(&mut self, key: DocKey, req: VmRequest, now: Millis) {
        self.vms
            .entry(key)
            .and_modify(|t| t.req = req.clone())
            .or_insert(VmTrack {
                req,
                seen: now,
                claimed_at: None,
                started: false,
                rank_cache: None,
                displaced: None,
            });
    }

    /// The placement step (docs/ALGORITHMS.md, "Gossip and placement").
    fn place(&mut self, now: Millis) {
        self.track_relocations(now);
        let keys: Vec<DocKey> = self.vms.keys().cloned().collect();
        let quorum = self.has_quorum(now);
        for vm in keys {
            let claim = self.claim(&vm).cloned();
            let claim_received = self
                .store
                .get(&EntryKey::Claim(vm.clone()))
                .map(|s| s.received)
                .unwrap_or(0);
            let done = self.relocation_done(&vm);
            // A VM with FASTR copies fails over to a holder of its newest
            // point (only there) when its node dies.
            let claimant_dead = claim.as_ref().is_some_and(|c| {
                c.node != self.me && self.member_state(&c.node) == Some(MemberState::Dead)
            });
            let copies = if self.vms[&vm].req.fastr && claimant_dead {
                Some(self.copy_holders(&vm)).filter(|h| !h.is_empty())
            } else {
                // A VM cloned from a copy point is first placed only
                // where a copy of its source is (no data copied).
                self.vms[&vm]
                    .req
                    .copy_source
                    .clone()
                    .filter(|_| claim.is_none())
                    .map(|src| self.copy_holders_any(&src))
            };
            let track = self.vms.get_mut(&vm).expect("key from the map");
            track.req.holders = copies.clone();
            let holds_data = track.req.holds_data && copies.is_none();
            // Strict mode: no claim, and no start, without a majority.
            let strict_blocked = track.req.strict && !quorum;
            match claim {
                Some(c) if c.node == self.me => {
                    let since = *track.claimed_at.get_or_insert(now);
                    if !track.started && !strict_blocked && now >= since + self.cfg.claim_settle_ms
                    {
                        track.started = true;
                        track.displaced = None;
                        self.event(Event::Start { vm, epoch: c.epoch });
                    } else if !track.started {
                        // While settling, tell the claimant this claim
                        // displaces, directly: if it was declared dead
                        // wrongly (it is alive but was unreachable), it
                        // hears of the new claim and stops before this
                        // node starts, whatever gossip's luck.
                        let displaced = track.displaced.clone();
                        if let Some(addr) = displaced.and_then(|d| self.addr_of(&d)) {
                            self.send(addr, Body::Gossip(vec![Entry::Claim(c)]));
                        }
                    }
                }
                Some(_) if done => {
                    // Never re-elected: its VM moved since.
                }
                Some(c) => {
                    track.claimed_at = None;
                    if track.started {
                        track.started = false;
                        self.event(Event::StopKeepDisk {
                            vm: vm.clone(),
                            winner: c.node.clone(),
                            epoch: c.epoch,
                        });
                    }
                    let dead_since = match &self.peers {
                        Peers::Swim(m) => match m.get(&c.node) {
                            Some(mm) if mm.state == MemberState::Dead => Some(mm.since),
                            _ => None,
                        },
                        Peers::Static(_) => None,
                    };
                    // A VM whose data is on the dead node is not started
                    // elsewhere on a blank disk: it is NodeLost until the
                    // node returns or an operator recovers it.
                    if let Some(d) = dead_since.filter(|_| !holds_data && !strict_blocked) {
                        // A node that stopped gracefully said when it is
                        // back (its VMs run on meanwhile): wait for that.
                        let away = self.status(&c.node).map_or(0, |s| s.away_until_ms);
                        let mut wait = self.cfg.reelect_timeout_ms;
                        if self.vms[&vm].req.strict {
                            // Its node, if only cut off, has paused it by
                            // then: it lost the majority at most the
                            // quorum window after its last contact (before
                            // the death), and paused the pause time later.
                            wait = wait.max(
                                QUORUM_WINDOW_MS + self.cfg.strict_pause_ms + STRICT_MARGIN_MS,
                            );
                        }
                        let base = d.max(claim_received).max(away) + wait;
                        if self.maybe_claim(vm.clone(), base, c.epoch + 1, now) {
                            if let Some(t) = self.vms.get_mut(&vm) {
                                t.displaced = Some(c.node.clone());
                            }
                        }
                    }
                }
                None if strict_blocked => {}
                None => {
                    let base = track.seen;
                    // A relocation's claim carries the epoch of the VM's
                    // claim it was elected against: once the VM's claim
                    // moves above it, the relocation is done.
                    let epoch = self
                        .relocs
                        .get(&vm)
                        .and_then(|r| self.claim(&r.vm))
                        .map_or(1, |c| c.epoch);
                    self.maybe_claim(vm, base, epoch, now);
                }
            }
        }
    }

    /// Claim `vm` at `epoch` if I am ranked `r` and `now ≥ base + r ×
    /// claim_backoff_ms`.
    fn maybe_claim(&mut self, vm: DocKey, base: Millis, epoch: u64, now: Millis) -> bool {
        if now < base {
            return false;
        }
        // My turn comes at base + r × backoff. Between rank computations
        // (O(n) each) only the cached turn is checked; the rank is
        // recomputed when the turn comes, since views move.
        let track = &self.vms[&vm];
        let backoff = self.cfg.claim_backoff_ms;
        if let Some((b, r, at)) = track.rank_cache {
            let wait = if r == usize::MAX {
                now < at + 5 * backoff
            } else {
                now < base + r as u64 * backoff
            };
            if b == base && wait {
                return false;
            }
        }
        let req = track.req.clone();
        let r = self.my_rank(&req).map(|x| x.0).unwrap_or(usize::MAX);
        if let Some(t) = self.vms.get_mut(&vm) {
            t.rank_cache = Some((base, r, now));
        }
        if r == usize::MAX || now < base + r as u64 * backoff {
            return false;
        }
        let req = self.vms[&vm].req.clone();
        let Some((_, score)) = self.my_rank(&req) else {
            return false;
        };
        self.claim_now(&vm, epoch, score, now)
    }

    /// Claim `vm` for this node at `epoch`; whether the claim won here
    /// (then its settle time starts now).
    fn claim_now(&mut self, vm: &DocKey, epoch: u64, score: u64, now: Millis) -> bool {
        let mut claim = Claim {
            vm: vm.clone(),
            node: self.me.clone(),
            epoch,
            score,
            claimed_ms: now,
            sig: Vec::new(),
        };
        if let Some(s) = &self.signer {
            claim.sig = s.sign(CLAIM_DOMAIN, &claim.signed_bytes());
        }
        if self.accept(Entry::Claim(claim), now) != Merge::Newer {
            return false;
        }
        if let Some(t) = self.vms.get_mut(vm) {
            t.claimed_at = Some(now);
        }
        true
    }

    /// Where this node reaches member `id` (`None`: unknown).
    pub fn member_addr(&self, id: &NodeId) -> Option<NodeAddr> {
        self.addr_of(id)
    }

    fn addr_of(&self, id: &NodeId) -> Option<NodeAddr> {
        match &self.peers {
            Peers::Swim(m) => m.get(id).map(|m| m.addr),
            Peers::Static(p) => p.iter().find(|x| x.0 == *id).map(|x| x.1),
        }
    }

    /// Receive one datagram from `from` (a transport that does not
    /// authenticate: the sender is who it says it is, if admitted).
    pub fn handle_datagram(&mut self, now: Millis, from: NodeAddr, bytes: &[u8]) {
        self.handle_from(now, from, None, bytes);
    }

    /// Receive one datagram that the channel authenticated as coming from
    /// node `peer` ([`super::channel`]): dropped unless it says it is
    /// from `peer`.
    pub fn handle_authenticated(
        &mut self,
        now: Millis,
        from: NodeAddr,
        peer: &NodeId,
        bytes: &[u8],
    ) {
        self.handle_from(now, from, Some(peer), bytes);
    }

    fn refuse_sender(&mut self, id: NodeId, addr: NodeAddr) {
        self.stats.unadmitted += 1;
        if self.unadmitted.len() < 1024 || self.unadmitted.contains_key(&id) {
            self.unadmitted.entry(id).or_insert((addr, 0)).1 += 1;
        }
    }

    fn handle_from(&mut self, now: Millis, from: NodeAddr, peer: Option<&NodeId>, bytes: &[u8]) {
        self.stats.bytes_received += bytes.len() as u64;
        let env = match decode(bytes) {
            Ok(e) => e,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        if peer.is_some_and(|p| *p != env.from) || !self.verifier.admits(&env.from) {
            self.refuse_sender(env.from, from);
            return;
        }
        // (Every datagram passes here: the known sender costs no
        // allocation.)
        if let Some(t) = self.last_heard.get_mut(&env.from) {
            *t = now;
        } else if env.from != self.me {
            if self.last_heard.len() > 4096 {
                self.last_heard.retain(|_, t| now < *t + QUORUM_WINDOW_MS);
            }
            self.last_heard.insert(env.from.clone(), now);
        }
        let mut replies = Vec::new();
        match env.body {
            Body::Foca(data) => {
                let Peers::Swim(m) = &mut self.peers else {
                    return;
                };
                // The sender is at the address it sent from (the
                // channel authenticated it; unsigned, it is believed).
                m.heard_from(&env.from, from, now);
                // News about nodes that are not members is not believed,
                // and a node speaks only for itself.
                let v = self.verifier.clone();
                let me = m.identity().clone();
                match screen(&data, &env.from, &me, &|id| v.admits(id)) {
                    Ok(d) => m.handle(now, &d),
                    Err(why) => {
                        self.stats.rejected += 1;
                        self.refuse_entry(&env.from, why.to_string());
                    }
                }
                self.flush_members();
            }
            Body::Gossip(entries) => {
                for e in entries {
                    self.receive(e, &env.from, now);
                }
            }
            Body::Digest(d) => {
                let (buckets, versions) = self.store.versions_differing(&d, 512);
                if !buckets.is_empty() {
                    replies.push((from, Body::DigestReply { buckets, versions }));
                }
            }
            Body::DigestReply { buckets, versions } => {
                let (push, mut pull) = self.store.compare(&buckets, &versions);
                self.send_entries(from, &push);
                pull.truncate(256);
                if !pull.is_empty() {
                    replies.push((from, Body::Pull(pull)));
                }
            }
            Body::Pull(keys) => self.send_entries(from, &keys),
            _ => {}
        }
        for (to, body) in replies {
            self.send(to, body);
        }
        self.flush_member_events();
    }

    fn send_entries(&mut self, to: NodeAddr, keys: &[EntryKey]) {
        let mut batch = Vec::new();
        let mut size = 0;
        for k in keys {
            let Some(s) = self.store.get(k) else { continue };
            if size + s.len > self.budget {
                break;
            }
            size += s.len;
            batch.push(s.entry.clone());
        }
        if !batch.is_empty() {
            self.send(to, Body::Gossip(batch));
        }
    }

    /// Count something `from` relayed that was refused (logged once per
    /// sender per interval by the caller).
    fn refuse_entry(&mut self, from: &NodeId, reason: String) {
        if self.refused_entries.len() < 1024 || self.refused_entries.contains_key(from) {
            let e = self.refused_entries.entry(from.clone()).or_default();
            e.0 += 1;
            if e.1.len() < 4 && !e.1.contains(&reason) {
                e.1.push(reason);
            }
        }
    }

    fn receive(&mut self, entry: Entry, from: &NodeId, now: Millis) {
        // Only what would change the store is checked (a signature check
        // costs more than the merge): old and duplicate versions are
        // dropped here as the merge would drop them.
        if let Some(s) = self.store.get(&entry.key()) {
            if s.version >= entry.version() {
                return;
            }
        }
        let verdict = match &entry {
            Entry::Doc(d) => self.verifier.verify_document(d),
            Entry::Claim(c) => self.verifier.verify_claim(c),
            Entry::Status(s) => self.verifier.verify_status(s),
        };
        if let Err(reason) = verdict {
            self.stats.rejected += 1;
            if let Entry::Doc(d) = &entry {
                let key = d.key.clone();
                self.event(Event::Rejected {
                    key,
                    from: from.clone(),
                    reason,
                });
            } else {
                self.refuse_entry(from, reason);
            }
            return;
        }
        let event = match &entry {
            Entry::Doc(d) => Some(Event::Document(d.clone())),
            Entry::Status(s) => Some(Event::Status(s.id.clone())),
            Entry::Claim(_) => None,
        };
        let claim = matches!(entry, Entry::Claim(_));
        if self.accept(entry, now) == Merge::Newer {
            self.claims_moved |= claim;
            if let Some(e) = event {
                self.event(e);
            }
        }
    }

    /// Whether a newer claim arrived since the last call: what the
    /// caller shows of placement (who runs what, who receives a
    /// relocation) can be refreshed at once instead of on the next tick.
    pub fn take_claims_moved(&mut self) -> bool {
        std::mem::take(&mut self.claims_moved)
    }

    /// A Relocation changed (here or from a peer) since the last tick:
    /// run placement and push now, without waiting for the tick, so
    /// that the receiver's claim and the sender's document cross the
    /// network at once (a live move's time starts with them). Within
    /// the tick's byte budget; nothing happens without such news.
    pub fn handle_relocation_news(&mut self, now: Millis) {
        if std::mem::take(&mut self.relocation_news) {
            self.place(now);
            self.push_hot();
        }
    }

    /// Push hot entries to `fanout` random peers, within what is left of
    /// this tick's budget.
    fn push_hot(&mut self) {
        if self.store.has_hot() {
            let targets = self.random_peers(self.cfg.fanout);
            let per = self.budget / targets.len().max(1);
            for to in targets {
                let entries = self.store.take_hot(per);
                if entries.is_empty() {
                    break;
                }
                self.send(to, Body::Gossip(entries));
            }
        }
    }

    /// Time passes: run timers, placement, push, anti-entropy, collection.
    pub fn handle_tick(&mut self, now: Millis) {
        self.budget = self.cfg.max_bytes_per_tick;
        if let Peers::Swim(m) = &mut self.peers {
            m.tick(now);
            // Seeds not known alive are asked again (foca announces once
            // and never retries): every probe interval while this node
            // knows nobody, every 10 once it knows someone (a seed that
            // refused it, e.g. before an admission reached one of them,
            // is not lost for good). A node left alone also asks a few of
            // the members it holds dead: foca stops all traffic once it
            // has no member alive (its announces to down members run
            // only while connected), so two nodes that each declared the
            // other dead (loss, a partition) would never talk again.
            let alone = m.alive_count() == 0;
            if (!self.seeds.is_empty() || alone) && now >= self.next_join {
                let every = if alone { 1 } else { 10 };
                self.next_join = now + every * self.cfg.swim.probe_interval_ms;
                let mut ask: Vec<NodeAddr> = self
                    .seeds
                    .iter()
                    .filter(|s| !m.alive_at(**s))
                    .copied()
                    .collect();
                if alone {
                    for a in m.sample_dead(&mut self.rng, 3) {
                        if !ask.contains(&a) {
                            ask.push(a);
                        }
                    }
                }
                for s in ask {
                    m.announce(s, now);
                }
            }
        }
        self.flush_members();
        if self.has_quorum(now) {
            if let Some(t) = self.quorum_lost_at.take() {
                if now >= t + self.cfg.strict_pause_ms {
                    // Paused: stay so until the claims made while this
                    // node was cut off have reached it.
                    self.strict_hold_until =
                        now + self.cfg.claim_settle_ms + 2 * self.cfg.anti_entropy_interval_ms;
                }
            }
        } else if self.quorum_lost_at.is_none() {
            self.quorum_lost_at = Some(now);
        }
        // Placement first, so a claim made now goes out in this tick's
        // push rather than the next one.
        self.relocation_news = false;
        self.place(now);
        self.push_hot();
        if now >= self.next_ae {
            self.next_ae = now + self.cfg.anti_entropy_interval_ms;
            if let Some(to) = self.random_peers(1).pop() {
                let d = self.store.digest();
                self.send(to, Body::Digest(d));
            }
        }
        if now >= self.next_collect {
            self.next_collect = now + 10_000;
            self.collect(now);
        }
        self.flush_member_events();
    }

    fn collect(&mut self, now: Millis) {
        let horizon = self.cfg.tombstone_horizon_ms;
        let gone: Vec<EntryKey> = self
            .store
            .iter()
            .filter_map(|(k, s)| match &s.entry {
                Entry::Doc(d) if d.deleted && now >= d.written_ms.saturating_add(horizon) => {
                    Some(k.clone())
                }
                _ => None,
            })
            .collect();
        for k in gone {
            self.store.remove(&k);
            if let EntryKey::Doc(d) = k {
                self.store.remove(&EntryKey::Claim(d));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::sim::sim_addr;
    use crate::gossip::verify::AcceptAll;
    use crate::gossip::wire::{Resources, TagSet};
    use crate::model::Performance;

    fn status(id: &str, seq: u64, accel: &str, vms: Vec<DocKey>) -> NodeStatus {
        let mut s = NodeStatus::idle(
            NodeId(id.into()),
            seq,
            TagSet::default(),
            Performance::Low,
            Resources {
                cpu_millis: 8_000,
                memory: 8 << 30,
                storage: 1 << 40,
            },
        );
        s.accel = accel.into();
        s.vms = vms;
        s
    }

    fn vm_doc(key: &DocKey, spec: serde_json::Value, now: Millis) -> Document {
        let body = serde_json::json!({
            "apiVersion": crate::model::API_VERSION, "kind": "VirtualMachine",
            "metadata": {"name": key.name, "namespace": key.namespace},
            "spec": spec,
        });
        Document {
            key: key.clone(),
            generation: 1,
            deleted: false,
            written_ms: now,
            body: serde_json::to_vec(&body).unwrap(),
        }
    }

    /// A VM placed by hand on `b` that runs on `a` gets a move from `a`
    /// to `b`, with no election; none when it is stopped or runs where
    /// its placement names; and no receiver, with why, when `b` runs
    /// another accelerator, or under KVM has another host CPU than the
    /// VM sees.
    #[test]
    fn a_vm_placed_by_hand_elsewhere_moves_there_only_on_the_same_accelerator_and_cpu() {
        let now = 1_000;
        let mut n = GossipNode::new(
            GossipConfig::default(),
            NodeId("c".into()),
            sim_addr(2),
            0,
            Arc::new(AcceptAll),
            1,
        );
        n.use_static_peers(Arc::new(vec![
            (NodeId("a".into()), sim_addr(0)),
            (NodeId("b".into()), sim_addr(1)),
        ]));
        let vm = DocKey::new("VirtualMachine", "default", "db");
        n.preload_status(now, status("a", 1, "tcg", vec![vm.clone()]));
        n.preload_status(now, status("b", 1, "tcg", vec![]));
        let disks = serde_json::json!([{"name": "data", "size": "1Mi", "source": {"blank": {}}}]);
        n.publish(
            now,
            vm_doc(
                &vm,
                serde_json::json!({"placement": {"node": "b"}, "disks": disks}),
                now,
            ),
        )
        .unwrap();
        let v = n.relocations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].key, pin_relocation_key(&vm));
        assert!(is_pin_relocation(&v[0].key));
        assert_eq!(v[0].runner, Some(NodeId("a".into())));
        assert_eq!(v[0].receiver, Some(NodeId("b".into())));
        assert_eq!(v[0].unplaceable, None);

        // b runs KVM, a TCG: no receiver, and why.
        n.preload_status(now, status("b", 2, "kvm", vec![]));
        let v = n.relocations();
        assert_eq!(v[0].receiver, None, "{v:?}");
        assert!(
            v[0].unplaceable.as_deref().unwrap().contains("kvm"),
            "{v:?}"
        );

        // Both KVM, other host CPUs: the VM sees the host's CPU (the
        // default model under KVM), so no receiver, and why; with a named
        // model it moves. Under TCG the host CPU does not matter.
        let with_cpu = |id: &str, seq, accel: &str, cpu: &str, vms| {
            let mut s = status(id, seq, accel, vms);
            s.cpu = cpu.into();
            s
        };
        n.preload_status(
            now,
            with_cpu("a", 2, "kvm", "Intel 6/85 aa", vec![vm.clone()]),
        );
        n.preload_status(now, with_cpu("b", 3, "kvm", "AMD 25/1 bb", vec![]));
        let v = n.relocations();
        assert_eq!(v[0].receiver, None, "{v:?}");
        assert!(
            v[0].unplaceable
                .as_deref()
                .unwrap()
                .contains("host CPU (AMD 25/1 bb)"),
            "{v:?}"
        );
        let mut named = vm_doc(
            &vm,
            serde_json::json!({"placement": {"node": "b"}, "disks": disks, "cpuModel": "qemu64"}),
            now,
        );
        named.generation = 2;
        n.publish(now, named).unwrap();
        assert_eq!(n.relocations()[0].receiver, Some(NodeId("b".into())));
        n.preload_status(
            now,
            with_cpu("a", 3, "tcg", "Intel 6/85 aa", vec![vm.clone()]),
        );
        n.preload_status(now, with_cpu("b", 4, "tcg", "AMD 25/1 bb", vec![]));
        let mut host = vm_doc(
            &vm,
            serde_json::json!({"placement": {"node": "b"}, "disks": disks}),
            now,
        );
        host.generation = 3;
        n.publish(now, host).unwrap();
        assert_eq!(n.relocations()[0].receiver, Some(NodeId("b".into())));

        // Stopped, or placed where it runs: nothing to move.
        n.preload_status(now, status("b", 5, "tcg", vec![]));
        let mut stopped = vm_doc(
            &vm,
            serde_json::json!({"placement": {"node": "b"}, "disks": disks, "powerState": "Stopped"}),
            now,
        );
        stopped.generation = 4;
        n.publish(now, stopped).unwrap();
        assert!(n.relocations().is_empty());
        let mut here = vm_doc(
            &vm,
            serde_json::json!({"placement": {"node": "a"}, "disks": disks}),
            now,
        );
        here.generation = 5;
        n.publish(now, here).unwrap();
        assert!(n.relocations().is_empty());
    }
}
