//! The in-memory network and a cluster harness: many [`GossipNode`]s in
//! one process, a virtual clock, per-message loss and delay, partitions,
//! killed nodes, all from one seed, so any failing seed replays exactly.
//!
//! The harness is event driven: the next event is either a node's tick
//! (every `tick_ms`, each node at its own phase) or a datagram's arrival,
//! so an idle 1,000-node cluster costs only its probes.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::channel::{Channel, ChannelConfig, ChannelKey};
use super::node::{Event, GossipConfig, GossipNode, Output};
use super::rng::{mix64, Rng};
use super::transport::Transport;
use super::trust::{KeySigner, Members};
use super::verify::Verifier;
use super::wire::{DocKey, Document, Millis, NodeAddr, NodeId, NodeStatus, Resources, TagSet};
use crate::identity::{AddressType, Network, PrivateKey};
use crate::model::Performance;

/// Loss and delay of the simulated network.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Minimum one-way delay.
    pub min_delay_ms: u64,
    /// Maximum one-way delay (uniform in between).
    pub max_delay_ms: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            loss: 0.0,
            min_delay_ms: 1,
            max_delay_ms: 20,
        }
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Millis,
    seq: u64,
    to: usize,
    from: NodeAddr,
    bytes: Vec<u8>,
}

/// The simulated network shared by every endpoint.
pub struct SimNet {
    cfg: NetConfig,
    rng: Rng,
    seq: u64,
    queue: BinaryHeap<Reverse<InFlight>>,
    index: HashMap<NodeAddr, usize>,
    pub(super) group: Vec<u32>,
    pub(super) down: Vec<bool>,
    pub(super) inbox: Vec<VecDeque<(NodeAddr, Vec<u8>)>>,
    pub(super) now: Millis,
    /// Bytes handed to the network.
    pub bytes_sent: u64,
    /// Datagrams lost (random loss, partitions, dead receivers).
    pub dropped: u64,
}

impl SimNet {
    /// A network of `n` endpoints at 10.x.y.z:7946.
    pub fn new(n: usize, cfg: NetConfig, seed: u64) -> Self {
        let addrs: Vec<NodeAddr> = (0..n).map(sim_addr).collect::<Vec<_>>();
        SimNet {
            cfg,
            rng: Rng::new(seed),
            seq: 0,
            queue: BinaryHeap::new(),
            index: addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect(),
            group: vec![0; n],
            down: vec![false; n],
            inbox: vec![VecDeque::new(); n],
            now: 0,
            bytes_sent: 0,
            dropped: 0,
        }
    }

    pub(super) fn send(&mut self, from: NodeAddr, to: NodeAddr, bytes: &[u8]) {
        self.bytes_sent += bytes.len() as u64;
        let Some(&to) = self.index.get(&to) else {
            self.dropped += 1;
            return;
        };
        if self.rng.chance(self.cfg.loss) {
            self.dropped += 1;
            return;
        }
        let span = self.cfg.max_delay_ms.saturating_sub(self.cfg.min_delay_ms) + 1;
        let at = self.now + self.cfg.min_delay_ms + self.rng.below(span as usize) as u64;
        self.seq += 1;
        self.queue.push(Reverse(InFlight {
            at,
            seq: self.seq,
            to,
            from,
            bytes: bytes.to_vec(),
        }));
    }

    pub(super) fn next_at(&self) -> Option<Millis> {
        self.queue.peek().map(|r| r.0.at)
    }

    /// Deliver the next datagram into its inbox; returns its receiver
    /// (`None` if it was dropped by a partition or a dead receiver).
    pub(super) fn deliver_next(&mut self) -> Option<usize> {
        let m = self.queue.pop()?.0;
        let from = self.index.get(&m.from).copied();
        if self.down[m.to] || from.is_some_and(|f| self.group[f] != self.group[m.to]) {
            self.dropped += 1;
            return None;
        }
        self.inbox[m.to].push_back((m.from, m.bytes));
        Some(m.to)
    }
}

/// The address of simulated node `i`.
pub fn sim_addr(i: usize) -> NodeAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8)),
        7946,
    )
}

/// One node's view of the simulated network.
pub struct SimEndpoint {
    net: Rc<RefCell<SimNet>>,
    idx: usize,
    addr: NodeAddr,
}

impl Transport for SimEndpoint {
    fn local_addr(&self) -> NodeAddr {
        self.addr
    }

    fn send_to(&mut self, to: NodeAddr, bytes: &[u8]) -> io::Result<()> {
        self.net.borrow_mut().send(self.addr, to, bytes);
        Ok(())
    }

    fn try_recv(&mut self) -> io::Result<Option<(NodeAddr, Vec<u8>)>> {
        Ok(self.net.borrow_mut().inbox[self.idx].pop_front())
    }
}

/// How a cluster starts.
#[derive(Clone)]
pub struct ClusterConfig {
    /// Nodes.
    pub nodes: usize,
    /// Seed of everything.
    pub seed: u64,
    /// Node settings.
    pub gossip: GossipConfig,
    /// Network.
    pub net: NetConfig,
    /// Everyone knows everyone's membership and status at start (as after
    /// a long uneventful run); otherwise only their own.
    pub preload: bool,
    /// Fixed peer lists instead of SWIM (see [`GossipNode::use_static_peers`]).
    pub static_peers: bool,
    /// Give every node a status (capacity, tags) to place VMs on.
    pub statuses: bool,
    /// Verifier of every node (documents).
    pub verifier: Arc<dyn Verifier>,
    /// Nodes as on a real signed cluster: each a key whose address is
    /// its ID, all admitted, claims and statuses signed and checked,
    /// every datagram over the Noise channel (handshakes travel the
    /// simulated network, so their round trips are in the latency).
    pub auth: bool,
}

/// The trusted mode's verifier: [`Members`] for nodes, claims and
/// statuses, the configured verifier for documents.
struct AuthVerifier {
    members: Arc<Members>,
    documents: Arc<dyn Verifier>,
}

impl Verifier for AuthVerifier {
    fn verify_document(&self, doc: &Document) -> Result<(), String> {
        self.documents.verify_document(doc)
    }
    fn verify_claim(&self, c: &super::wire::Claim) -> Result<(), String> {
        self.members.check_claim(c)
    }
    fn verify_status(&self, s: &NodeStatus) -> Result<(), String> {
        self.members.check_status(s)
    }
    fn admits(&self, id: &NodeId) -> bool {
        self.members.admits(&id.0)
    }
    fn cluster_size(&self) -> Option<usize> {
        Some(self.members.len())
    }
}

/// Many nodes over one simulated network.
pub struct Cluster {
    /// The network.
    pub net: Rc<RefCell<SimNet>>,
    /// The nodes, by index.
    pub nodes: Vec<GossipNode>,
    /// Their channels (auth mode).
    pub channels: Vec<Option<Channel>>,
    wire: Vec<(NodeAddr, Vec<u8>)>,
    endpoints: Vec<SimEndpoint>,
    ticks: BinaryHeap<Reverse<(Millis, usize)>>,
    tick_ms: u64,
    /// Virtual time.
    pub now: Millis,
    /// Nodes killed (no ticks, inbound dropped).
    pub killed: Vec<bool>,
    /// Current status of each node.
    pub statuses: Vec<NodeStatus>,
    /// Which nodes run each VM now (from Start / StopKeepDisk events).
    pub running: BTreeMap<DocKey, BTreeSet<usize>>,
    /// Start events per VM.
    pub starts: BTreeMap<DocKey, u32>,
    /// StopKeepDisk events.
    pub stops: u32,
    /// Rejected documents (all nodes).
    pub rejected: u64,
    needs: HashMap<DocKey, Resources>,
    watch: Option<(DocKey, u64)>,
    have: Vec<bool>,
    /// Nodes holding the watched document.
    pub have_count: usize,
}

/// The cluster ID signatures are bound to in auth mode.
pub const SIM_CLUSTER: &str = "sim";

/// Virtual epoch of a simulation (an arbitrary recent Unix time, so that
/// tombstone arithmetic looks like a real node's).
pub const SIM_EPOCH: Millis = 1_800_000_000_000;

impl Cluster {
    /// Build a cluster.
    pub fn new(c: &ClusterConfig) -> Self {
        let n = c.nodes;
        let net = Rc::new(RefCell::new(SimNet::new(n, c.net, mix64(c.seed ^ 0xA5A5))));
        let now = SIM_EPOCH;
        net.borrow_mut().now = now;
        let keys: Vec<PrivateKey> = if c.auth {
            (0..n)
                .map(|i| {
                    let secret = Sha256::digest(
                        [&c.seed.to_le_bytes()[..], &(i as u64).to_le_bytes()].concat(),
                    );
                    PrivateKey::from_bytes(&secret, true, Network::Regtest).expect("a valid key")
                })
                .collect()
        } else {
            Vec::new()
        };
        let ids: Vec<NodeId> = if c.auth {
            keys.iter()
                .map(|k| {
                    NodeId(
                        k.address(AddressType::P2wpkh)
                            .expect("compressed")
                            .to_string(),
                    )
                })
                .collect()
        } else {
            (0..n).map(|i| NodeId(format!("n{i}"))).collect()
        };
        let verifier: Arc<dyn Verifier> = if c.auth {
            let members = Arc::new(Members::new(SIM_CLUSTER));
            members.set(&ids.iter().map(|id| (id.0.clone(), id.0.clone())).collect());
            Arc::new(AuthVerifier {
                members,
                documents: c.verifier.clone(),
            })
        } else {
            c.verifier.clone()
        };
        let mut rng = Rng::new(mix64(c.seed));
        let mut nodes: Vec<GossipNode> = (0..n)
            .map(|i| {
                let node = GossipNode::new(
                    c.gossip.clone(),
                    ids[i].clone(),
                    sim_addr(i),
                    0,
                    verifier.clone(),
                    mix64(c.seed ^ (i as u64).wrapping_mul(0x9E37)),
                );
                if c.auth {
                    node.with_signer(Arc::new(KeySigner::new(keys[i].clone(), SIM_CLUSTER)))
                } else {
                    node
                }
            })
            .collect();
        let channels: Vec<Option<Channel>> = (0..n)
            .map(|i| {
                c.auth.then(|| {
                    Channel::new(
                        ChannelConfig::default(),
                        Arc::new(ChannelKey::new(&keys[i], SIM_CLUSTER)),
                        SIM_CLUSTER,
                        verifier.clone(),
                        mix64(c.seed ^ 0xC4A7 ^ i as u64),
                    )
                })
            })
            .collect();
        if c.static_peers {
            let peers = Arc::new((0..n).map(|i| (ids[i].clone(), sim_addr(i))).collect());
            for node in &mut nodes {
                node.use_static_peers(Arc::clone(&peers));
            }
        } else if c.preload {
            for (i, node) in nodes.iter_mut().enumerate() {
                for j in (0..n).filter(|j| *j != i) {
                    node.add_member(ids[j].clone(), sim_addr(j), now);
                }
            }
        }
        let statuses: Vec<NodeStatus> = (0..n)
            .map(|i| random_status(ids[i].clone(), i, &mut rng))
            .collect();
        if c.statuses {
            for (i, node) in nodes.iter_mut().enumerate() {
                node.set_status(now, statuses[i].clone());
            }
            if c.preload {
                let entries: Vec<_> = nodes
                    .iter()
                    .map(|nd| nd.status(nd.id()).cloned().expect("just set"))
                    .collect();
                for node in nodes.iter_mut() {
                    for s in &entries {
                        node.preload_status(now, s.clone());
                    }
                }
            }
        }
        let endpoints = (0..n)
            .map(|i| SimEndpoint {
                net: Rc::clone(&net),
                idx: i,
                addr: sim_addr(i),
            })
            .collect();
        let ticks = (0..n)
            .map(|i| Reverse((now + rng.below(c.gossip.tick_ms as usize) as u64, i)))
            .collect();
        let mut cl = Cluster {
            net,
            nodes,
            channels,
            wire: Vec::new(),
            endpoints,
            ticks,
            tick_ms: c.gossip.tick_ms,
            now,
            killed: vec![false; n],
            statuses,
            running: BTreeMap::new(),
            starts: BTreeMap::new(),
            stops: 0,
            rejected: 0,
            needs: HashMap::new(),
            watch: None,
            have: vec![false; n],
            have_count: 0,
        };
        for i in 0..n {
            cl.flush(i);
        }
        cl
    }

    /// Advance virtual time to `until`, processing every tick and arrival.
    pub fn run_until(&mut self, until: Millis) {
        loop {
            let tick_at = self.ticks.peek().map(|r| r.0 .0).unwrap_or(Millis::MAX);
            let net_at = self.net.borrow().next_at().unwrap_or(Millis::MAX);
            let at = tick_at.min(net_at);
            if at > until {
                break;
            }
            self.now = at;
            self.net.borrow_mut().now = at;
            if net_at <= tick_at {
                let to = self.net.borrow_mut().deliver_next();
                if let Some(i) = to {
                    while let Ok(Some((from, bytes))) = self.endpoints[i].try_recv() {
                        match &mut self.channels[i] {
                            Some(ch) => {
                                if let Some((peer, plain)) =
                                    ch.open(at, from, &bytes, &mut self.wire)
                                {
                                    self.nodes[i].handle_authenticated(at, from, &peer, &plain);
                                }
                            }
                            None => self.nodes[i].handle_datagram(at, from, &bytes),
                        }
                    }
                    self.flush(i);
                }
            } else {
                let Reverse((_, i)) = self.ticks.pop().expect("peeked");
                if !self.killed[i] {
                    self.nodes[i].handle_tick(at);
                    if let Some(ch) = &mut self.channels[i] {
                        ch.tick(at, &mut self.wire);
                    }
                    self.flush(i);
                    self.ticks.push(Reverse((at + self.tick_ms, i)));
                }
            }
        }
        self.now = until;
        self.net.borrow_mut().now = until;
    }

    /// Advance by `ms`.
    pub fn run_for(&mut self, ms: u64) {
        let t = self.now + ms;
        self.run_until(t);
    }

    fn flush(&mut self, i: usize) {
        while let Some(o) = self.nodes[i].poll() {
            match o {
                Output::Send(to, bytes) => match &mut self.channels[i] {
                    Some(ch) => ch.seal(self.now, to, &bytes, &mut self.wire),
                    None => self.wire.push((to, bytes)),
                },
                Output::Event(e) => self.on_event(i, e),
            }
        }
        for (to, bytes) in std::mem::take(&mut self.wire) {
            let _ = self.endpoints[i].send_to(to, &bytes);
        }
    }

    fn on_event(&mut self, i: usize, e: Event) {
        match e {
            Event::Start { vm, .. } => {
                *self.starts.entry(vm.clone()).or_default() += 1;
                if let Some(need) = self.needs.get(&vm) {
                    let s = &mut self.statuses[i];
                    s.free.cpu_millis = s.free.cpu_millis.saturating_sub(need.cpu_millis);
                    s.free.memory = s.free.memory.saturating_sub(need.memory);
                    s.vms.push(vm.clone());
                    let st = s.clone();
                    self.nodes[i].set_status(self.now, st);
                }
                self.running.entry(vm).or_default().insert(i);
            }
            Event::StopKeepDisk { vm, .. } => {
                self.stops += 1;
                if let Some(r) = self.running.get_mut(&vm) {
                    r.remove(&i);
                }
            }
            Event::Rejected { .. } => self.rejected += 1,
            Event::Document(d) => {
                if let Some((k, g)) = &self.watch {
                    if d.key == *k && d.generation >= *g && !self.have[i] {
                        self.have[i] = true;
                        self.have_count += 1;
                    }
                }
            }
            _ => {}
        }
    }

    /// Publish `doc` at node `i` and watch how far it spreads.
    pub fn publish(&mut self, i: usize, doc: Document) -> Result<(), String> {
        self.watch = Some((doc.key.clone(), doc.generation));
        self.have = vec![false; self.nodes.len()];
        self.have_count = 0;
        let now = self.now;
        self.nodes[i].publish(now, doc)?;
        self.have[i] = true;
        self.have_count = 1;
        self.flush(i);
        Ok(())
    }

    /// Publish an auto-placed VM (JSON manifest) at node `i`.
    pub fn publish_vm(&mut self, i: usize, name: &str, memory_gib: u64) -> DocKey {
        self.publish_vm_spec(i, name, memory_gib, serde_json::json!({}))
    }

    /// Node `i` now holds the image `hint` (`wire::image_hint`): its
    /// status lists it.
    pub fn add_image(&mut self, i: usize, hint: u64) {
        self.statuses[i].images.push(hint);
        let st = self.statuses[i].clone();
        self.nodes[i].set_status(self.now, st);
    }

    /// [`Cluster::publish_vm`], with `extra` merged into its spec (e.g. a
    /// spacesuit).
    pub fn publish_vm_spec(
        &mut self,
        i: usize,
        name: &str,
        memory_gib: u64,
        extra: serde_json::Value,
    ) -> DocKey {
        let key = DocKey::new("VirtualMachine", "default", name);
        self.needs.insert(
            key.clone(),
            Resources {
                cpu_millis: 1000,
                memory: memory_gib << 30,
                storage: 0,
            },
        );
        let mut spec = serde_json::json!({"cpu": 1, "memory": format!("{memory_gib}Gi")});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let body = serde_json::json!({
            "apiVersion": crate::model::API_VERSION,
            "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "default", "generation": 1},
            "spec": spec
        });
        let doc = Document {
            key: key.clone(),
            generation: 1,
            deleted: false,
            written_ms: self.now,
            body: serde_json::to_vec(&body).expect("json"),
        };
        self.publish(i, doc)
            .expect("verifier accepts the harness's VMs");
        key
    }

    /// Split into groups; nodes in different groups cannot reach each
    /// other. Nodes not listed stay in group 0.
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        let mut net = self.net.borrow_mut();
        net.group.iter_mut().for_each(|g| *g = 0);
        for (gi, g) in groups.iter().enumerate() {
            for &i in g {
                net.group[i] = gi as u32 + 1;
            }
        }
    }

    /// Remove every partition.
    pub fn heal(&mut self) {
        self.net.borrow_mut().group.iter_mut().for_each(|g| *g = 0);
    }

    /// Kill node `i` (like SIGKILL: no more ticks, nothing received).
    pub fn kill(&mut self, i: usize) {
        self.killed[i] = true;
        self.net.borrow_mut().down[i] = true;
        if let Some(vms) = Some(self.nodes[i].running()) {
            for vm in vms {
                if let Some(r) = self.running.get_mut(&vm) {
                    r.remove(&i);
                }
            }
        }
    }

    /// Restart killed node `i` as a new process would: empty state, the
    /// given incarnation (higher than its last run's), joining through
    /// node `seed` only.
    pub fn restart(&mut self, i: usize, incarnation: u64, seed: usize, c: &ClusterConfig) {
        assert!(!c.auth, "restarting a node is not simulated in auth mode");
        let id = self.nodes[i].id().clone();
        let mut node = GossipNode::new(
            c.gossip.clone(),
            id,
            sim_addr(i),
            incarnation,
            c.verifier.clone(),
            mix64(c.seed ^ incarnation ^ i as u64),
        );
        node.join(sim_addr(seed));
        self.nodes[i] = node;
        self.killed[i] = false;
        self.net.borrow_mut().down[i] = false;
        self.net.borrow_mut().inbox[i].clear();
        self.ticks.push(Reverse((self.now + 1, i)));
    }

    /// Put a raw datagram on the wire as if `from` sent it to `to`
    /// (forgeries, malformed input).
    pub fn inject(&mut self, from: usize, to: usize, bytes: &[u8]) {
        let (f, t) = (self.addr(from), self.addr(to));
        self.net.borrow_mut().send(f, t, bytes);
    }

    /// Nodes not killed.
    pub fn alive(&self) -> usize {
        self.killed.iter().filter(|k| !**k).count()
    }

    /// The address of node `i`.
    pub fn addr(&self, i: usize) -> NodeAddr {
        self.endpoints[i].addr
    }
}

fn random_status(id: NodeId, i: usize, rng: &mut Rng) -> NodeStatus {
    let mut tags = TagSet::default();
    tags.microcosm.insert("rack".into(), format!("r{}", i % 8));
    tags.macrocosm
        .insert("region".into(), ["eu", "us"][i % 2].into());
    tags.intercosm.insert("team".into(), format!("t{}", i % 3));
    let total = Resources {
        cpu_millis: 64_000,
        memory: (32 + rng.below(224) as u64) << 30,
        storage: 4 << 40,
    };
    let performance = if rng.chance(0.5) {
        Performance::High
    } else {
        Performance::Low
    };
    NodeStatus::idle(id, 0, tags, performance, total)
}
