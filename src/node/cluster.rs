//! The node's gossip task: [`GossipNode`] over [`UdpTransport`], tied to
//! the node's store and engine.
//!
//! ```text
//! store change (source file:/api/push/...) ──► Document ──► GossipNode ──► peers
//! peers ──► GossipNode (relay filter) ──► Event::Document ──► admission (source "gossip") ──► store
//! own Satellite (tags, capacity) + VMs run here ──► NodeStatus ──► peers
//! claims/starts in GossipNode ──► ClusterPlacement ──► engine (vm::is_mine)
//! ```
//!
//! Changes written with the [`GOSSIP_SOURCE`] source are never published
//! again (no echo loop); local deletions travel as tombstones.
//!
//! A peer's document goes through admission like any other source's
//! ([`crate::admission`]): in signed mode ([`Trust::Signed`]) it must be
//! signed for the cluster *and* its signer authorised by AccessPolicy
//! (`apply`; `delete` for a tombstone, whose body is the signed tombstone
//! manifest), at a generation above the stored one. The gossip layer's
//! verifier ([`RelayFilter`]) checks the signature before a document is
//! stored and relayed, so forged documents die at the first honest node;
//! its refusals are admission verdicts too (logged, recorded as events).
//! A document refused for want of authorisation is offered to admission
//! again when an AccessPolicy changes (the policy naming its signer may
//! arrive after it). A document's
//! gossip generation is the store's generation, raised above the version
//! gossip already holds when the local store counted differently (objects
//! learned from peers get local generations), so a local edit always wins
//! over what it edits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, info, warn};

use super::config::{GossipSettings, GossipVerify};
use crate::admission::{Admission, Batch, Deletion, Signature, Trust, Verdict};
use crate::gossip::channel::{Channel, ChannelConfig, ChannelKey};
use crate::gossip::membership::SwimConfig;
use crate::gossip::transport::{unix_ms, Transport, UdpTransport};
use crate::gossip::trust::{KeySigner, Members};
use crate::gossip::verify::document_body;
use crate::gossip::{
    AcceptAll, Claim, DocKey, Document, Event, GossipConfig, GossipNode, NodeId, NodeStatus,
    Output, Resources, TagSet, Verifier,
};
use crate::identity::{AddressType, PrivateKey};
use crate::model::{Kind, ObjectKey, SatelliteSpec, SatelliteStatus};
use crate::reconcile::{Elected, FetchVolume, Placement};
use crate::relocate::agent::{Agent, Ask, Fetch, Link};
use crate::relocate::tunnel::TunnelKey;
use crate::store::{Record, SourceId, Store};

/// Source of every change this task writes into the store.
pub const GOSSIP_SOURCE: &str = "gossip";

/// Sources whose records stay on this node: the gossip task's own writes,
/// and the Satellite object the node registers for itself.
fn is_local_only(source: &SourceId) -> bool {
    source.0 == GOSSIP_SOURCE || source.0 == "node"
}

/// Refused peers and entries are logged once per sender per this
/// interval, never per datagram.
pub const REFUSAL_LOG_INTERVAL_MS: u64 = 5_000;

/// File in the state directory holding the bound gossip address.
pub const GOSSIP_ADDRESS_FILE: &str = "gossip-address";

/// The election as the engine reads it, kept current by the gossip task.
pub struct ClusterPlacement {
    /// Operator recoveries for the gossip task (`deorch recover`).
    recoveries: tokio::sync::mpsc::UnboundedSender<Recovery>,
    recoveries_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Recovery>>>,
    elected: Mutex<BTreeMap<ObjectKey, Elected>>,
    /// VMs other live nodes report running, and those nodes.
    running_on: Mutex<BTreeMap<ObjectKey, Vec<String>>>,
    /// Other live nodes' gossip IPv4 addresses by name (the fabric's
    /// underlay).
    underlay: Mutex<BTreeMap<String, std::net::Ipv4Addr>>,
    /// Other live members' gossip addresses (what a joining node is told
    /// to join through, `GET /v1/join`).
    gossip_peers: Mutex<Vec<std::net::SocketAddr>>,
    changes: broadcast::Sender<ObjectKey>,
    /// Copies from peers, for the relocation agent (which owns the
    /// tunnels).
    fetches: mpsc::UnboundedSender<Fetch>,
    fetches_rx: Mutex<Option<mpsc::UnboundedReceiver<Fetch>>>,
    /// Failed moves of VMs placed by hand on another node (the agent's).
    relocation_failures: Mutex<BTreeMap<ObjectKey, String>>,
    /// Other live nodes by the images and spacesuit volumes their
    /// statuses list (hints: `image_hint`, `volume_hint`).
    holders: Mutex<BTreeMap<u64, Vec<String>>>,
    /// FASTR copies of the VMs that run here (the agent's).
    fastr: Mutex<BTreeMap<ObjectKey, Vec<crate::model::FastrCopy>>>,
    /// FASTR copies this node holds: VM → newest complete point (unix
    /// ms), for the node's status; whether that changed since published.
    held: Mutex<(BTreeMap<ObjectKey, u64>, bool)>,
    /// FASTR rounds asked for (`deorch fastr sync`).
    sync_asks: Mutex<BTreeSet<ObjectKey>>,
    /// Recoveries from FASTR copies asked for (`deorch fastr recover`).
    fastr_recoveries: Mutex<Vec<crate::reconcile::FastrRecovery>>,
    /// Counts election changes; the gossip task shows its figures there.
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

impl ClusterPlacement {
    fn new() -> Self {
        let (recoveries, rx) = tokio::sync::mpsc::unbounded_channel();
        let (fetches, fetches_rx) = mpsc::unbounded_channel();
        ClusterPlacement {
            fetches,
            fetches_rx: Mutex::new(Some(fetches_rx)),
            recoveries,
            recoveries_rx: Mutex::new(Some(rx)),
            elected: Mutex::new(BTreeMap::new()),
            running_on: Mutex::new(BTreeMap::new()),
            underlay: Mutex::new(BTreeMap::new()),
            gossip_peers: Mutex::new(Vec::new()),
            changes: broadcast::channel(1024).0,
            relocation_failures: Mutex::new(BTreeMap::new()),
            holders: Mutex::new(BTreeMap::new()),
            fastr: Mutex::new(BTreeMap::new()),
            held: Mutex::new((BTreeMap::new(), false)),
            sync_asks: Mutex::new(BTreeSet::new()),
            fastr_recoveries: Mutex::new(Vec::new()),
            metrics: std::sync::OnceLock::new(),
        }
    }

    /// The FASTR copies this node holds, as its status lists them.
    fn held_copies(&self) -> Vec<(u64, u64)> {
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        h.1 = false;
        h.0.iter()
            .take(crate::gossip::wire::MAX_STATUS_COPIES)
            .map(|(k, ms)| (doc_key(k).hash64(), *ms))
            .collect()
    }

    /// Whether the held copies changed since the status last listed them.
    fn held_changed(&self) -> bool {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    fn set(&self, key: ObjectKey, e: Option<Elected>) {
        let mut m = self.elected.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match &e {
            Some(e) => m.insert(key.clone(), e.clone()).as_ref() != Some(e),
            None => m.remove(&key).is_some(),
        };
        drop(m);
        if changed {
            if let Some(metrics) = self.metrics.get() {
                metrics.placement_decision(e.as_ref());
            }
            let _ = self.changes.send(key);
        }
    }

    /// Replace the map of VMs other nodes run; VMs whose entry changed
    /// are looked at again.
    fn set_running(&self, now: BTreeMap<ObjectKey, Vec<String>>) {
        let mut m = self.running_on.lock().unwrap_or_else(|p| p.into_inner());
        let changed: BTreeSet<ObjectKey> = m
            .keys()
            .chain(now.keys())
            .filter(|k| m.get(*k) != now.get(*k))
            .cloned()
            .collect();
        *m = now;
        drop(m);
        for k in changed {
            let _ = self.changes.send(k);
        }
    }
}

/// One `deorch recover` (or the claim of `deorch fastr recover`: `true`),
/// with where its answer goes.
type Recovery = (
    ObjectKey,
    bool,
    tokio::sync::oneshot::Sender<Result<u64, String>>,
);

impl Placement for ClusterPlacement {
    fn recover(&self, vm: &ObjectKey, from_copy: bool) -> Result<u64, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.recoveries
            .send((vm.clone(), from_copy, tx))
            .map_err(|_| "gossip is not running".to_string())?;
        rx.blocking_recv()
            .map_err(|_| "gossip stopped before it answered".to_string())?
    }

    fn fastr_recover(
        &self,
        vm: &ObjectKey,
        at: Option<String>,
    ) -> Result<crate::reconcile::FastrAnswer, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.fastr_recoveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((vm.clone(), at, tx));
        Ok(rx)
    }

    fn take_fastr_recoveries(&self) -> Vec<crate::reconcile::FastrRecovery> {
        std::mem::take(
            &mut *self
                .fastr_recoveries
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    fn elected(&self, vm: &ObjectKey) -> Elected {
        self.elected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(vm)
            .cloned()
            .unwrap_or(Elected::Pending)
    }

    fn fastr(&self, vm: &ObjectKey) -> Option<Vec<crate::model::FastrCopy>> {
        self.fastr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(vm)
            .cloned()
    }

    fn fastr_sync(&self, vm: &ObjectKey) -> Result<(), String> {
        let on = self.running_on(vm);
        if !on.is_empty() {
            return Err(format!("{vm} runs on {}: ask that node", on.join(", ")));
        }
        self.sync_asks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(vm.clone());
        Ok(())
    }

    fn take_fastr_sync(&self, vm: &ObjectKey) -> bool {
        self.sync_asks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vm)
    }

    fn held_copy(&self, vm: &ObjectKey) -> Option<u64> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(vm)
            .copied()
    }

    fn set_held_copy(&self, vm: &ObjectKey, point_ms: Option<u64>) {
        let mut h = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let before = h.0.get(vm).copied();
        if before != point_ms {
            match point_ms {
                Some(ms) => h.0.insert(vm.clone(), ms),
                None => h.0.remove(vm),
            };
            h.1 = true;
        }
    }

    fn set_fastr(&self, vm: &ObjectKey, copies: Option<Vec<crate::model::FastrCopy>>) {
        let mut m = self.fastr.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match copies {
            Some(c) => m.insert(vm.clone(), c.clone()).as_ref() != Some(&c),
            None => m.remove(vm).is_some(),
        };
        drop(m);
        if changed {
            let _ = self.changes.send(vm.clone());
        }
    }

    fn running_on(&self, vm: &ObjectKey) -> Vec<String> {
        self.running_on
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(vm)
            .cloned()
            .unwrap_or_default()
    }

    fn subscribe(&self) -> broadcast::Receiver<ObjectKey> {
        self.changes.subscribe()
    }

    fn node_addresses(&self) -> BTreeMap<String, std::net::Ipv4Addr> {
        self.underlay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn volume_holders(&self, volume: &str) -> Vec<String> {
        let hint = crate::gossip::wire::volume_hint(volume);
        self.holders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hint)
            .cloned()
            .unwrap_or_default()
    }

    fn relocation_failure(&self, vm: &ObjectKey) -> Option<String> {
        let m = self
            .relocation_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        m.get(vm).cloned()
    }

    fn set_relocation_failure(&self, vm: &ObjectKey, why: Option<String>) {
        let mut m = self
            .relocation_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let changed = match why {
            Some(w) => m.insert(vm.clone(), w.clone()).as_ref() != Some(&w),
            None => m.remove(vm).is_some(),
        };
        drop(m);
        if changed {
            // The VM's status says so at once.
            let _ = self.changes.send(vm.clone());
        }
    }

    fn fetch_volume(
        &self,
        fetch: FetchVolume,
    ) -> crate::driver::BoxFuture<'static, Result<(), String>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let sent = self.fetches.send(Fetch::Volume { fetch, reply });
        Box::pin(async move {
            sent.map_err(|_| "the relocation agent is not running".to_string())?;
            rx.await
                .map_err(|_| "the relocation agent stopped before it answered".to_string())?
        })
    }

    fn fetch_image(
        &self,
        spacesuit: ObjectKey,
        sha256: String,
    ) -> crate::driver::BoxFuture<'static, Result<std::path::PathBuf, String>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let sent = self.fetches.send(Fetch::Image {
            spacesuit,
            sha256,
            reply,
        });
        Box::pin(async move {
            sent.map_err(|_| "the relocation agent is not running".to_string())?;
            rx.await
                .map_err(|_| "the relocation agent stopped before it answered".to_string())?
        })
    }
}

fn doc_key(k: &ObjectKey) -> DocKey {
    DocKey::new(k.kind.as_str(), &k.namespace, &k.name)
}

fn object_key(k: &DocKey) -> Option<ObjectKey> {
    Some(ObjectKey {
        kind: Kind::from_kind(&k.kind)?,
        namespace: k.namespace.clone(),
        name: k.name.clone(),
    })
}

/// A bound, not yet running, gossip task.
pub struct Cluster {
    settings: GossipSettings,
    name: String,
    key: PrivateKey,
    admission: Arc<Admission>,
    store: Arc<Store>,
    transport: UdpTransport,
    placement: Arc<ClusterPlacement>,
    /// To the relocation agent.
    link: watch::Sender<Link>,
    /// From the relocation agent.
    asks: mpsc::UnboundedSender<Ask>,
    asks_rx: mpsc::UnboundedReceiver<Ask>,
    /// The node's content-addressed image cache (spacesuit images fetched
    /// from peers, by SHA-256).
    images: std::path::PathBuf,
    /// Where the node serves its page ([`Cluster::set_page`]).
    page: String,
    /// The members as the page lists them.
    radar: watch::Sender<Vec<RadarNode>>,
}

/// A live member as its status describes it, for the page's `nodes`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RadarNode {
    /// Its name.
    pub name: String,
    /// Its ID (address).
    pub node_id: String,
    /// Its tags.
    pub tags: TagSet,
    /// `high` or `low`.
    pub performance: crate::model::Performance,
    /// Cordoned.
    pub unschedulable: bool,
    /// The VMs it runs.
    pub vms: usize,
    /// Free CPU (millicores), memory and storage (bytes).
    pub free: [u64; 3],
    /// Total CPU (millicores), memory and storage (bytes).
    pub total: [u64; 3],
    /// Load average × 1000.
    pub load_milli: u32,
    /// Its page (empty: none).
    pub page: String,
}

impl Cluster {
    /// Bind the UDP socket (and record its address in the state directory).
    pub async fn bind(
        settings: &GossipSettings,
        name: &str,
        key: PrivateKey,
        admission: Arc<Admission>,
        state_dir: &std::path::Path,
    ) -> anyhow::Result<Cluster> {
        let store = admission.store().clone();
        let (asks, asks_rx) = mpsc::unbounded_channel();
        let transport = UdpTransport::bind(settings.listen)
            .await
            .with_context(|| format!("binding gossip on {}", settings.listen))?;
        std::fs::write(
            state_dir.join(GOSSIP_ADDRESS_FILE),
            format!("{}\n", transport.local_addr()),
        )
        .context("writing the gossip address file")?;
        match settings.verify {
            GossipVerify::Signed => info!(
                cluster = ?admission.cluster(),
                "gossip: only manifests signed for this cluster by an authorised signer are accepted; only signed ones are published"
            ),
            GossipVerify::Unsigned => warn!(
                cluster = %settings.cluster,
                "gossip: --gossip-verify unsigned: every document a peer sends is applied; use only on a trusted network"
            ),
        }
        info!(addr = %transport.local_addr(), seeds = ?settings.seeds, "gossip listening");
        Ok(Cluster {
            settings: settings.clone(),
            name: name.to_string(),
            key,
            admission,
            store,
            transport,
            placement: Arc::new(ClusterPlacement::new()),
            link: watch::channel(Link::default()).0,
            page: String::new(),
            radar: watch::channel(Vec::new()).0,
            asks,
            asks_rx,
            images: state_dir.join("images"),
        })
    }

    /// Where this node serves its page: its status carries it, so that
    /// every node's page links to the others'. A URL whose host is
    /// unspecified (`0.0.0.0`) gets the gossip address's IP.
    pub fn set_page(&mut self, url: &str) {
        let base = url.split('#').next().unwrap_or(url);
        let base = match self.transport.local_addr().ip() {
            ip if !ip.is_unspecified() => base
                .replace("://0.0.0.0:", &format!("://{ip}:"))
                .replace("://[::]:", &format!("://{ip}:")),
            _ => base.to_string(),
        };
        let mut base = base;
        if !base.ends_with('/') {
            base.push('/');
        }
        if base.len() <= crate::gossip::wire::MAX_STATUS_PAGE {
            self.page = base;
        }
    }

    /// The gossip addresses to join this cluster through: this node's (its
    /// IP left unspecified when it listens on all) and every other live
    /// member's, as the gossip task last saw them.
    pub fn join_seeds(&self) -> Arc<dyn Fn() -> Vec<String> + Send + Sync> {
        let me = self.transport.local_addr();
        let placement = self.placement.clone();
        Arc::new(move || {
            let peers = placement
                .gossip_peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            std::iter::once(me)
                .chain(peers)
                .map(|a| a.to_string())
                .collect()
        })
    }

    /// The live members, as the page's `nodes` lists them.
    pub fn radar(&self) -> watch::Receiver<Vec<RadarNode>> {
        self.radar.subscribe()
    }

    /// The node's relocation agent, tied to this gossip task: it accepts
    /// tunnels on the gossip address (TCP) and carries out the
    /// relocations the election gives this node.
    pub fn relocation_agent(&self, drivers: crate::reconcile::Drivers, rate: Option<u64>) -> Agent {
        Agent {
            drivers,
            store: self.store.clone(),
            listen: self.transport.local_addr(),
            link: self.link.subscribe(),
            asks: self.asks.clone(),
            rate: rate.map(|r| Arc::new(crate::relocate::tunnel::RateLimit::new(r))),
            fetches: self
                .placement
                .fetches_rx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
            placement: self.placement.clone(),
            images: self.images.clone(),
        }
    }

    /// Count election changes and show gossip's figures in `metrics`.
    pub fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.placement.metrics.set(metrics);
    }

    /// The election, for the engine.
    pub fn placement(&self) -> Arc<ClusterPlacement> {
        self.placement.clone()
    }

    fn gossip_config(&self) -> GossipConfig {
        let s = &self.settings;
        let probe = s.probe_interval.as_millis() as u64;
        let tick = (probe / 2).clamp(10, 200);
        GossipConfig {
            swim: SwimConfig {
                probe_interval_ms: probe,
                ack_timeout_ms: (probe * 2 / 5).max(5),
                suspicion_timeout_ms: s.suspect_timeout.as_millis() as u64,
                reconnect_interval_ms: (probe * 2).max(20),
                ..SwimConfig::default()
            },
            tick_ms: tick,
            anti_entropy_interval_ms: (probe).clamp(tick, 1_000),
            claim_settle_ms: s.claim_settle.as_millis() as u64,
            claim_backoff_ms: (s.claim_settle.as_millis() as u64 / 3).max(tick),
            reelect_timeout_ms: s.reelect_timeout.as_millis() as u64,
            ..GossipConfig::default()
        }
    }

    /// Run until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let cfg = self.gossip_config();
        let tick_ms = cfg.tick_ms;
        let cluster_id = self
            .admission
            .cluster()
            .unwrap_or(&self.settings.cluster)
            .to_string();
        let signed = self.settings.verify == GossipVerify::Signed;
        let members = signed.then(|| Arc::new(Members::new(&cluster_id)));
        let filter = Arc::new(RelayFilter {
            admission: self.admission.clone(),
            refused: Mutex::new(Vec::new()),
            members: members.clone(),
        });
        let verifier: Arc<dyn Verifier> = match self.settings.verify {
            GossipVerify::Signed => filter.clone(),
            GossipVerify::Unsigned => Arc::new(AcceptAll),
        };
        let now = unix_ms();
        // A restarted node must come back with a higher incarnation.
        let incarnation = now / 1000;
        let seed = crate::gossip::rng::hash64(&[self.name.as_bytes(), &now.to_le_bytes()]);
        let me = NodeId(
            self.key
                .address(AddressType::P2wpkh)
                .expect("node keys are compressed")
                .to_string(),
        );
        info!(node = %self.name, id = %me, "gossip identity: the node's address");
        let node = GossipNode::new(
            cfg,
            me.clone(),
            self.transport.local_addr(),
            incarnation,
            verifier.clone(),
            seed,
        )
        .with_signer(Arc::new(KeySigner::new(self.key.clone(), &cluster_id)));
        let channel_key = Arc::new(ChannelKey::new(&self.key, &cluster_id));
        let tunnel_key = TunnelKey {
            key: channel_key.clone(),
            cluster: cluster_id.clone(),
            verifier: verifier.clone(),
        };
        let channel = signed.then(|| {
            Channel::new(
                ChannelConfig::default(),
                channel_key.clone(),
                &cluster_id,
                verifier.clone(),
                seed ^ 0x5eed,
            )
        });
        let mut task = Task {
            node,
            me,
            members,
            channel,
            next_refusal_log: 0,
            wire: Vec::new(),
            key: self.key.clone(),
            admission: self.admission.clone(),
            filter,
            reported: BTreeMap::new(),
            denied: BTreeSet::new(),
            store: self.store.clone(),
            placement: self.placement.clone(),
            name: self.name.clone(),
            transport: self.transport,
            vms: BTreeSet::new(),
            running: BTreeSet::new(),
            status_dirty: true,
            away_until_ms: 0,
            trust: match self.settings.verify {
                GossipVerify::Signed => Trust::Signed,
                GossipVerify::Unsigned => Trust::UnsignedByChoice,
            },
            link: self.link,
            images: self.images.clone(),
            page: self.page.clone(),
            radar: self.radar,
        };
        task.link.send_modify(|l| {
            l.key = Some(tunnel_key);
            l.me = Some(task.me.clone());
        });
        let mut asks = self.asks_rx;
        task.refresh_members();
        for s in &self.settings.seeds {
            task.node.join(*s);
        }
        let mut changes = self.store.subscribe();
        let mut recoveries = self
            .placement
            .recoveries_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("one gossip task per placement");
        task.publish_all();
        let mut interval = tokio::time::interval(Duration::from_millis(tick_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    task.announce_away(self.settings.fence_hold, tick_ms).await;
                    break;
                }
                Some((vm, from_copy, reply)) = recoveries.recv() => {
                    let answer = task.node.recover(&doc_key(&vm), from_copy, unix_ms());
                    match &answer {
                        Ok(epoch) => warn!(%vm, epoch, "recovered by an operator: this node claims it and starts it from what it has here"),
                        Err(e) => info!(%vm, error = %e, "recovery refused"),
                    }
                    let _ = reply.send(answer);
                    task.drain();
                }
                Some(ask) = asks.recv() => match ask {
                    Ask::TakeOver { vm, from, reply } => {
                        let answer = task.node.take_over(&vm, &from, unix_ms());
                        match &answer {
                            Ok(epoch) => info!(%vm, epoch, %from, "relocation switch: this node claims the VM it now runs"),
                            Err(e) => warn!(%vm, error = %e, "relocation switch: the claim was not taken"),
                        }
                        let _ = reply.send(answer);
                        task.drain();
                        task.refresh_placement();
                    }
                },
                _ = interval.tick() => {
                    if task.status_dirty {
                        task.publish_status();
                    }
                    task.node.handle_tick(unix_ms());
                    task.tick_channel();
                    task.drain();
                    // Claims settle and starts happen on ticks.
                    task.refresh_placement();
                    if let Some(m) = task.placement.metrics.get() {
                        let s = task.node.stats();
                        let [alive, suspect, dead] = task.node.member_counts();
                        m.set_gossip(crate::metrics::GossipFigures {
                            alive: alive as u64,
                            suspect: suspect as u64,
                            dead: dead as u64,
                            messages_sent: s.messages_sent,
                            bytes_sent: s.bytes_sent,
                            bytes_received: s.bytes_received,
                        });
                    }
                }
                r = task.transport.readable() => {
                    if let Err(e) = r {
                        warn!(error = %e, "gossip socket failed; gossip stops");
                        break;
                    }
                    loop {
                        match task.transport.try_recv() {
                            Ok(Some((from, bytes))) => {
                                task.receive(from, &bytes);
                                task.report_filtered(&from.to_string());
                            }
                            Ok(None) => break,
                            Err(e) => {
                                debug!(error = %e, "gossip receive failed");
                                break;
                            }
                        }
                    }
                    task.node.handle_relocation_news(unix_ms());
                    // A claim that arrived (a relocation's receiver, a
                    // switch) reaches the agent and the reconciler now.
                    if task.node.take_claims_moved() {
                        task.drain();
                        task.refresh_placement();
                    }
                }
                c = changes.recv() => match c {
                    Ok(c) if c.status_only => {
                        // A VM's status says whether it runs here.
                        // A spacesuit's says whether its volume is here.
                        if (c.key.kind == Kind::Satellite && c.key.name == task.name)
                            || c.key.kind == Kind::VirtualMachine
                            || c.key.kind == Kind::Spacesuit
                        {
                            task.status_dirty = true;
                        }
                    }
                    Ok(c) => {
                        task.local_change(&c.key);
                        task.node.handle_relocation_news(unix_ms());
                        if c.key.kind == Kind::AccessPolicy {
                            task.refresh_members();
                            task.retry_denied();
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => task.publish_all(),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
            task.drain();
        }
        info!("gossip stopped");
    }
}

/// The gossip layer's verifier in signed mode: a document's body must
/// match its key and carry a signature admission accepts
/// ([`Admission::check_signature`]), or it is neither stored nor relayed.
/// Refusals are kept for the task to report as admission verdicts.
/// In signed mode it also holds the admitted nodes: only they are
/// members, and claims and statuses must be signed by the node they are
/// about ([`Members`]).
struct RelayFilter {
    admission: Arc<Admission>,
    refused: Mutex<Vec<(DocKey, u64, Verdict)>>,
    members: Option<Arc<Members>>,
}

impl Verifier for RelayFilter {
    fn verify_document(&self, doc: &Document) -> Result<(), String> {
        let verdict = match document_body(doc) {
            Err(reason) => Verdict::Invalid { reason },
            Ok(v) => match self.admission.check_signature(&v) {
                Signature::Valid(_) => return Ok(()),
                Signature::Refused(v) => v,
                Signature::None => Verdict::Unsigned {
                    reason: "unsigned: signed gossip takes only documents signed for the cluster"
                        .into(),
                },
            },
        };
        let reason = verdict.to_string();
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((doc.key.clone(), doc.generation, verdict));
        Err(reason)
    }

    fn verify_claim(&self, claim: &Claim) -> Result<(), String> {
        self.members
            .as_ref()
            .map_or(Ok(()), |m| m.check_claim(claim))
    }

    fn verify_status(&self, status: &NodeStatus) -> Result<(), String> {
        self.members
            .as_ref()
            .map_or(Ok(()), |m| m.check_status(status))
    }

    fn admits(&self, id: &NodeId) -> bool {
        self.members.as_ref().is_none_or(|m| m.admits(&id.0))
    }

    fn cluster_size(&self) -> Option<usize> {
        self.members.as_ref().map(|m| m.len())
    }
}

struct Task {
    node: GossipNode,
    /// This node's ID (its address).
    me: NodeId,
    /// The admitted nodes (signed mode).
    members: Option<Arc<Members>>,
    /// The authenticated channel (signed mode).
    channel: Option<Channel>,
    /// When refused senders are logged next (once per interval).
    next_refusal_log: u64,
    /// Datagrams the channel produced, to send.
    wire: Vec<(std::net::SocketAddr, Vec<u8>)>,
    /// The node key (signs what this node publishes).
    key: PrivateKey,
    admission: Arc<Admission>,
    filter: Arc<RelayFilter>,
    /// Last verdict reported per document refused by the relay filter, so
    /// a peer re-sending it does not flood the log.
    reported: BTreeMap<DocKey, (u64, &'static str)>,
    /// Documents refused as `Denied`/`Level2Required`: offered again when
    /// an AccessPolicy changes.
    denied: BTreeSet<DocKey>,
    store: Arc<Store>,
    placement: Arc<ClusterPlacement>,
    name: String,
    transport: UdpTransport,
    /// VirtualMachine documents gossip knows (live).
    vms: BTreeSet<DocKey>,
    /// VMs this node's election says it runs (for its status).
    running: BTreeSet<DocKey>,
    status_dirty: bool,
    /// Unix ms until which this node is away by choice (0: not away).
    away_until_ms: u64,
    /// This node's page ([`Cluster::set_page`]).
    page: String,
    /// The members for the page ([`Cluster::radar`]).
    radar: watch::Sender<Vec<RadarNode>>,
    /// What admission requires of peers' documents.
    trust: Trust,
    /// To the relocation agent.
    link: watch::Sender<Link>,
    /// The node's image cache (`STATE/images`), listed in its status.
    images: std::path::PathBuf,
}

impl Task {
    /// The spacesuit images this node holds, as its status lists them:
    /// the files of its image cache (named by their SHA-256) and the
    /// images of spacesuits whose file exists here, at most
    /// `MAX_STATUS_IMAGES` (a hint for the election; the fetch checks).
    fn image_hints(&self) -> Vec<u64> {
        use crate::gossip::wire::{image_hint, volume_hint, MAX_STATUS_IMAGES};
        let mut hints: BTreeSet<u64> = std::fs::read_dir(&self.images)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| image_hint(&e.file_name().to_string_lossy()))
            .collect();
        for rec in self.store.list(Some(Kind::Spacesuit)) {
            // A spacesuit made from a VM here: its volume, which this
            // node's status of it lists once made.
            if !rec.object["spec"]["source"]["virtualMachine"].is_null() {
                let volume =
                    crate::model::names::spacesuit_volume(&rec.key.namespace, &rec.key.name);
                let listed = rec.status.as_ref().is_some_and(|s| {
                    s["volumes"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|v| v.as_str() == Some(volume.as_str())))
                });
                if listed && !rec.deleted {
                    hints.insert(volume_hint(&volume));
                }
                continue;
            }
            let image = &rec.object["spec"]["source"]["image"];
            let (Some(path), Some(sha)) = (image["path"].as_str(), image["sha256"].as_str()) else {
                continue;
            };
            if let Some(h) = image_hint(sha).filter(|_| std::path::Path::new(path).is_file()) {
                hints.insert(h);
            }
        }
        hints.into_iter().take(MAX_STATUS_IMAGES).collect()
    }

    /// Publish every record written by a local source (start, or after
    /// missed notifications); unchanged ones are no-ops.
    fn publish_all(&mut self) {
        for (key, _, _) in self.store.generations() {
            self.local_change(&key);
        }
        self.status_dirty = true;
    }

    /// A store change: publish it unless it came from gossip.
    fn local_change(&mut self, key: &ObjectKey) {
        let Some(rec) = self.store.get(key) else {
            return;
        };
        // A spacesuit's image may be here: the status lists it before the
        // next placement, so VMs that arrive with their spacesuit go
        // where the image is.
        if (key.kind == Kind::Satellite && key.name == self.name) || key.kind == Kind::Spacesuit {
            self.status_dirty = true;
        }
        if is_local_only(&rec.source) {
            return;
        }
        let Some(doc) = self.document_of(&rec) else {
            return;
        };
        let dk = doc.key.clone();
        let deleted = doc.deleted;
        let published = self.node.publish(unix_ms(), doc);
        // The filter's refusals of our own documents are not verdicts on
        // a peer's.
        self.filter
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        match published {
            Ok(true) => {
                debug!(doc = %dk, "published");
                self.track(&dk, deleted);
            }
            Ok(false) => {}
            Err(reason) => {
                warn!(doc = %dk, %reason, "not published: refused by the gossip verifier")
            }
        }
    }

    /// The gossip document of a local record, or `None` when gossip
    /// already holds this very content.
    fn document_of(&self, rec: &Record) -> Option<Document> {
        let dk = doc_key(&rec.key);
        let mut body = rec.object.clone();
        let generation = publish_generation(rec, self.node.document(&dk))?;
        if let Some(meta) = body.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.insert("generation".into(), generation.into());
            if rec.deleted {
                let ann = meta
                    .entry("annotations")
                    .or_insert_with(|| serde_json::json!({}));
                if let Some(a) = ann.as_object_mut() {
                    a.insert(
                        crate::gossip::verify::DELETED_ANNOTATION.into(),
                        "true".into(),
                    );
                }
            }
        }
        // In signed mode what this node's own sources hold unsigned (its
        // directory, its local API, a session's change) is signed by the
        // node: peers authorise the node like a user (docs/SIGNING.md,
        // "Nodes").
        if self.trust == Trust::Signed && self.admission.check_signature(&body) == Signature::None {
            if let Some(cluster) = self.admission.cluster() {
                match crate::identity::sign_manifest(&body, cluster, &self.key, AddressType::P2wpkh)
                {
                    Ok(signed) => body = signed,
                    Err(e) => {
                        warn!(object = %rec.key, error = %e, "cannot sign with the node key");
                        return None;
                    }
                }
            }
        }
        Some(Document {
            key: dk,
            generation,
            deleted: rec.deleted,
            written_ms: rec.updated_ms,
            body: serde_json::to_vec(&body).expect("JSON serializes"),
        })
    }

    fn track(&mut self, dk: &DocKey, deleted: bool) {
        if dk.kind != Kind::VirtualMachine.as_str() {
            return;
        }
        if deleted {
            self.vms.remove(dk);
            if let Some(key) = object_key(dk) {
                self.placement.set(key, None);
            }
        } else {
            self.vms.insert(dk.clone());
        }
    }

    /// Report what the relay filter refused from peers (once per
    /// document version and verdict).
    fn report_filtered(&mut self, from: &str) {
        let refused = std::mem::take(
            &mut *self
                .filter
                .refused
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (dk, generation, verdict) in refused {
            if self.reported.get(&dk) == Some(&(generation, verdict.code())) {
                continue;
            }
            self.reported
                .insert(dk.clone(), (generation, verdict.code()));
            if let Some(key) = object_key(&dk) {
                self.admission.report(
                    &SourceId(GOSSIP_SOURCE.into()),
                    &format!("gossip from {from}, generation {generation}"),
                    &key,
                    &verdict,
                );
            }
        }
    }

    /// Offer the documents refused for want of authorisation again (an
    /// AccessPolicy changed).
    fn retry_denied(&mut self) {
        for dk in std::mem::take(&mut self.denied) {
            if let Some(doc) = self.node.document(&dk).cloned() {
                self.apply_remote(doc);
            }
        }
    }

    /// A document from a peer: through admission, marked as gossip's.
    fn apply_remote(&mut self, doc: Document) {
        let Some(key) = object_key(&doc.key) else {
            warn!(doc = %doc.key, "gossiped document of an unknown kind");
            return;
        };
        let source = SourceId(GOSSIP_SOURCE.into());
        let at = format!("gossip:{key}@{}", doc.generation);
        let mut batch = Batch::new(source.clone(), self.trust);
        if doc.deleted {
            // A signed tombstone is the signed manifest of the deletion;
            // in unsigned mode the deletion is taken as it is.
            let tombstone = if self.trust == Trust::Signed {
                let mut parsed = Batch::new(source.clone(), self.trust);
                parsed.parse(&at, &String::from_utf8_lossy(&doc.body));
                match (parsed.diagnostics.first(), parsed.docs.pop()) {
                    (None, Some(d)) => Some(d.object),
                    (d, _) => {
                        let reason = d.map_or("empty".into(), |d| d.to_string());
                        self.admission
                            .report(&source, &at, &key, &Verdict::Invalid { reason });
                        return;
                    }
                }
            } else {
                None
            };
            batch.deletions.push(Deletion {
                key: key.clone(),
                at,
                tombstone,
                purge: false,
            });
        } else {
            // The same content from another node (e.g. the same file
            // dropped on both): keep the local record and its source.
            if let Some(cur) = self.store.get(&key).filter(|r| !r.deleted) {
                if same_content(&doc.body, &cur.object) {
                    self.track(&doc.key, false);
                    return;
                }
            }
            batch.parse(&at, &String::from_utf8_lossy(&doc.body));
            if let Some(d) = batch.diagnostics.first() {
                let verdict = Verdict::Invalid {
                    reason: d.to_string(),
                };
                self.admission.report(&source, &at, &key, &verdict);
                return;
            }
        }
        match self.admission.admit(batch) {
            Ok(outcome) => {
                let verdict = outcome.verdicts.first().map(|a| &a.verdict);
                match verdict {
                    Some(Verdict::Applied { .. } | Verdict::Unchanged { .. }) => {
                        self.denied.remove(&doc.key);
                        self.track(&doc.key, false);
                    }
                    Some(Verdict::Deleted { .. } | Verdict::Absent) => {
                        self.denied.remove(&doc.key);
                        self.track(&doc.key, true);
                    }
                    Some(Verdict::Denied { .. } | Verdict::Level2Required { .. }) => {
                        self.denied.insert(doc.key.clone());
                    }
                    _ => {}
                }
            }
            Err(e) => warn!(object = %key, error = %e, "gossiped document not stored"),
        }
    }

    fn member_event(&self, what: &str, level: &str, id: &NodeId) {
        let name = self.label(id);
        info!(member = %name, id = %id, "{what}");
        self.store.record_event(crate::store::Event {
            time_ms: unix_ms(),
            level: level.into(),
            object: Some(ObjectKey::new(Kind::Satellite, None, &self.name)),
            source: Some(SourceId(GOSSIP_SOURCE.into())),
            reason: what.into(),
            message: format!("{what}: {name} ({id})"),
        });
    }

    /// Send what the node produced and act on its events.
    fn drain(&mut self) {
        while let Some(o) = self.node.poll() {
            match o {
                Output::Send(to, bytes) => match &mut self.channel {
                    Some(ch) => ch.seal(unix_ms(), to, &bytes, &mut self.wire),
                    None => self.wire.push((to, bytes)),
                },
                Output::Event(e) => match e {
                    Event::Document(d) => self.apply_remote(d),
                    Event::MemberUp(id, addr) => {
                        info!(%addr, "member address");
                        self.member_event("MemberUp", "Normal", &id)
                    }
                    Event::MemberDown(id) => self.member_event("MemberDown", "Warning", &id),
                    Event::Rejected { key, from, reason } => {
                        warn!(doc = %key, %from, %reason, "gossiped document rejected")
                    }
                    Event::Start { vm, epoch } if vm.kind == "Relocation" => info!(
                        relocation = %vm,
                        epoch,
                        "elected as the relocation's receiver: waiting for the sender"
                    ),
                    Event::Start { vm, epoch } => info!(%vm, epoch, "elected: this node runs it"),
                    Event::StopKeepDisk { vm, winner, epoch } => {
                        info!(%vm, %winner, epoch, "lost the election: stopping, disks kept")
                    }
                    Event::Status(_) => {}
                },
            }
        }
        self.flush_wire();
    }

    fn flush_wire(&mut self) {
        for (to, bytes) in self.wire.drain(..) {
            if let Err(e) = self.transport.send_to(to, &bytes) {
                debug!(%to, error = %e, "gossip send failed");
            }
        }
    }

    /// A datagram from the socket: through the channel (signed mode),
    /// then to the gossip node.
    fn receive(&mut self, from: std::net::SocketAddr, bytes: &[u8]) {
        let now = unix_ms();
        match &mut self.channel {
            Some(ch) => {
                if let Some((peer, plain)) = ch.open(now, from, bytes, &mut self.wire) {
                    self.node.handle_authenticated(now, from, &peer, &plain);
                }
            }
            None => self.node.handle_datagram(now, from, bytes),
        }
    }

    /// Channel timers, and the log of refused senders (once per sender
    /// per [`REFUSAL_LOG_INTERVAL_MS`], never per datagram).
    fn tick_channel(&mut self) {
        let now = unix_ms();
        if let Some(ch) = &mut self.channel {
            ch.tick(now, &mut self.wire);
        }
        if now < self.next_refusal_log {
            return;
        }
        self.next_refusal_log = now + REFUSAL_LOG_INTERVAL_MS;
        if let Some(ch) = &mut self.channel {
            for (addr, n, reason) in ch.take_refused() {
                warn!(%addr, datagrams = n, %reason, "gossip: peer refused (not admitted, or not who it says)");
            }
        }
        for (from, n, reasons) in self.node.take_refused_entries() {
            let reasons = reasons.join("; ");
            warn!(%from, entries = n, %reasons, "gossip: claims or statuses refused (a node speaks only for itself)");
        }
        for (id, addr, n) in self.node.take_unadmitted() {
            warn!(%addr, claimed = %crate::identity::session::bounded(&id.0), datagrams = n, "gossip: datagrams from a node that is not admitted dropped");
        }
    }

    /// Recompute the admitted nodes from the policies that count (start,
    /// and every AccessPolicy change): revoked ones stop being members at
    /// once (their sessions end, their datagrams are dropped, SWIM
    /// declares them dead after the suspicion timeout).
    fn refresh_members(&mut self) {
        let Some(m) = &self.members else { return };
        let now = match self.admission.satellites() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "gossip: no admitted nodes");
                BTreeMap::new()
            }
        };
        let (added, revoked) = m.set(&now);
        if !added.is_empty() {
            self.node.rejoin();
        }
        for a in added {
            info!(node = %a, name = ?m.name_of(&a), "gossip: node admitted");
        }
        for a in revoked {
            warn!(node = %a, "gossip: node admission revoked");
        }
        if !m.admits(&self.me.0) {
            warn!(id = %self.me, "this node is not admitted by any AccessPolicy of the cluster: peers ignore it (deorch node id; docs/SIGNING.md, \"Nodes\")");
        }
        self.status_dirty = true;
    }

    /// The name of node `id` (its admission's, else what it says).
    fn label(&self, id: &NodeId) -> String {
        if *id == self.me {
            return self.name.clone();
        }
        self.members
            .as_ref()
            .and_then(|m| m.name_of(&id.0))
            .or_else(|| self.node.status(id).map(|s| s.name.clone()))
            .unwrap_or_else(|| id.0.clone())
    }

    fn refresh_placement(&mut self) {
        let running: BTreeSet<DocKey> = self.node.running().into_iter().collect();
        let cut_off = self.node.strict_paused(unix_ms());
        for dk in &self.vms {
            let Some(key) = object_key(dk) else { continue };
            let mine =
                running.contains(dk) || self.node.claim(dk).is_some_and(|c| c.node == self.me);
            let e = if cut_off && mine && self.node.is_strict(dk) {
                Elected::NoQuorum
            } else if running.contains(dk) {
                Elected::Here
            } else {
                match self.node.claim(dk) {
                    Some(c) if self.node.node_lost(dk).is_some() => Elected::NodeLost {
                        node: self.label(&c.node),
                        epoch: c.epoch,
                    },
                    Some(c) if c.node != self.me => Elected::Elsewhere {
                        node: self.label(&c.node),
                        epoch: c.epoch,
                    },
                    _ => match self.node.unplaceable(dk) {
                        Some(why) => Elected::Unschedulable { why },
                        None => Elected::Pending,
                    },
                }
            };
            self.placement.set(key, Some(e));
        }
        let mut elsewhere: BTreeMap<ObjectKey, Vec<String>> = BTreeMap::new();
        let mut holders: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for id in self.node.alive_members() {
            let Some(st) = self.node.status(&id) else {
                continue;
            };
            for dk in &st.vms {
                if let Some(key) = object_key(dk) {
                    elsewhere.entry(key).or_default().push(self.label(&id));
                }
            }
            if id != self.me {
                for h in &st.images {
                    holders.entry(*h).or_default().push(self.label(&id));
                }
            }
        }
        // Before the VMs' changes go out: the fabric reads where they run.
        let peers: Vec<(NodeId, std::net::SocketAddr)> = self
            .node
            .alive_members()
            .into_iter()
            .filter(|id| *id != self.me)
            .filter_map(|id| Some((id.clone(), self.node.member_addr(&id)?)))
            .collect();
        let underlay: BTreeMap<String, std::net::Ipv4Addr> = peers
            .iter()
            .filter_map(|(id, a)| match a.ip() {
                std::net::IpAddr::V4(ip) => Some((self.label(id), ip)),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
        *self
            .placement
            .gossip_peers
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = peers.into_iter().map(|(_, a)| a).collect();
        *self
            .placement
            .underlay
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = underlay;
        self.placement.set_running(elsewhere);
        *self
            .placement
            .holders
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = holders;
        let relocations = self.node.relocations();
        let mut addrs = BTreeMap::new();
        let mut names = BTreeMap::from([(self.me.clone(), self.name.clone())]);
        let mut members = BTreeMap::new();
        for id in self.node.alive_members() {
            if let Some(a) = self.node.member_addr(&id) {
                addrs.insert(id.clone(), a);
            }
            names.insert(id.clone(), self.label(&id));
            if let Some(st) = self.node.status(&id) {
                members.insert(
                    id.clone(),
                    crate::relocate::agent::Member {
                        tags: st.tags.clone(),
                        performance: st.performance,
                        unschedulable: st.unschedulable,
                        vms: st.vms.clone(),
                        copies: st.copies.clone(),
                    },
                );
            }
        }
        // This node as its own status says, with what runs here now.
        if let Some(st) = self.node.status(&self.me) {
            members.insert(
                self.me.clone(),
                crate::relocate::agent::Member {
                    tags: st.tags.clone(),
                    performance: st.performance,
                    unschedulable: st.unschedulable,
                    vms: running.iter().cloned().collect(),
                    copies: st.copies.clone(),
                },
            );
        }
        let mut radar: Vec<RadarNode> = self
            .node
            .alive_members()
            .into_iter()
            .chain([self.me.clone()])
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|id| {
                let st = self.node.status(&id)?;
                let r = |r: &Resources| [r.cpu_millis, r.memory, r.storage];
                Some(RadarNode {
                    name: self.label(&id),
                    node_id: id.0.clone(),
                    tags: st.tags.clone(),
                    performance: st.performance,
                    unschedulable: st.unschedulable,
                    vms: if id == self.me {
                        running.len()
                    } else {
                        st.vms.len()
                    },
                    free: r(&st.free),
                    total: r(&st.total),
                    load_milli: st.load_milli,
                    page: st.page.clone(),
                })
            })
            .collect();
        radar.sort_by(|a, b| a.name.cmp(&b.name));
        self.radar.send_if_modified(|r| {
            let changed = *r != radar;
            if changed {
                *r = radar;
            }
            changed
        });
        self.link.send_if_modified(|l| {
            let same = l.relocations == relocations
                && l.addrs == addrs
                && l.names == names
                && l.members == members;
            if !same {
                (l.relocations, l.addrs, l.names, l.members) = (relocations, addrs, names, members);
            }
            !same
        });
        if running != self.running {
            self.running = running;
            self.status_dirty = true;
        }
        if self.placement.held_changed() {
            self.status_dirty = true;
        }
    }

    /// A graceful stop: tell the peers this node is back within `hold`
    /// (its VMs run on, and its fence waits as long), so they do not
    /// re-elect its VMs before; a few ticks spread it.
    async fn announce_away(&mut self, hold: Duration, tick_ms: u64) {
        if hold.is_zero() {
            return;
        }
        self.away_until_ms = unix_ms() + hold.as_millis() as u64;
        self.publish_status();
        for _ in 0..5 {
            self.node.handle_tick(unix_ms());
            self.drain();
            tokio::time::sleep(Duration::from_millis(tick_ms)).await;
        }
        info!(?hold, "graceful stop announced to the peers: they wait this long before re-electing this node's VMs");
    }

    /// This node's status from its Satellite object: tags, performance,
    /// capacity (declared, else detected), minus what its VMs use.
    fn publish_status(&mut self) {
        self.status_dirty = false;
        let key = ObjectKey::new(Kind::Satellite, None, &self.name);
        let rec = self.store.get(&key).filter(|r| !r.deleted);
        let spec: SatelliteSpec = rec
            .as_ref()
            .and_then(|r| serde_json::from_value(r.object["spec"].clone()).ok())
            .unwrap_or_default();
        let status: SatelliteStatus = rec
            .as_ref()
            .and_then(|r| r.status.clone())
            .and_then(|s| serde_json::from_value(s).ok())
            .unwrap_or_default();
        let res = |r: &crate::model::satellite::Resources| Resources {
            cpu_millis: r.cpu.map(|c| c.millis()).unwrap_or(0),
            memory: r.memory.map(|m| m.bytes()).unwrap_or(0),
            storage: r.storage.map(|s| s.bytes()).unwrap_or(0),
        };
        let detected = status
            .capacity
            .as_ref()
            .map(res)
            .unwrap_or_else(|| Resources {
                cpu_millis: std::thread::available_parallelism()
                    .map(|n| n.get() as u64 * 1000)
                    .unwrap_or(1000),
                memory: meminfo_total(),
                storage: 0,
            });
        let declared = spec.capacity.as_ref().map(res).unwrap_or_default();
        let pick = |d: u64, x: u64| if d > 0 { d } else { x };
        let total = Resources {
            cpu_millis: pick(declared.cpu_millis, detected.cpu_millis),
            memory: pick(declared.memory, detected.memory),
            storage: pick(declared.storage, detected.storage),
        };
        let mut free = total;
        let mut vms = self.running_here_by_status();
        for dk in &self.running {
            vms.push(dk.clone());
            if let Some(req) = self
                .node
                .document(dk)
                .and_then(|d| crate::gossip::placement::VmRequest::from_json(dk.clone(), &d.body))
            {
                free.cpu_millis = free.cpu_millis.saturating_sub(req.need.cpu_millis);
                free.memory = free.memory.saturating_sub(req.need.memory);
                free.storage = free.storage.saturating_sub(req.need.storage);
            }
        }
        let st = NodeStatus {
            id: self.me.clone(),
            name: self.name.clone(),
            sig: Vec::new(),
            incarnation: 0,
            seq: 0,
            tags: TagSet::from(&spec.tags),
            performance: spec.performance.unwrap_or(crate::model::Performance::Low),
            total,
            free,
            load_milli: load_milli(),
            vms,
            unschedulable: spec.unschedulable,
            away_until_ms: self.away_until_ms,
            accel: status.accel.clone().unwrap_or_default(),
            cpu: status.cpu.clone().unwrap_or_default(),
            images: self.image_hints(),
            copies: self.placement.held_copies(),
            page: self.page.clone(),
        };
        debug!(?st, "publishing node status");
        self.node.set_status(unix_ms(), st);
    }
}

impl Task {
    /// VMs outside this node's election (placed by hand, or kept while the
    /// election is pending) whose status, written by this node's engine,
    /// says they run here: peers must know, so that a re-pinned VM is not
    /// started on its new node while it still runs here.
    fn running_here_by_status(&self) -> Vec<DocKey> {
        self.store
            .list(Some(Kind::VirtualMachine))
            .into_iter()
            .filter(|r| !self.running.contains(&doc_key(&r.key)))
            .filter(|r| {
                r.status.as_ref().is_some_and(|s| {
                    s["node"] == self.name.as_str()
                        && (s["phase"] == "Running" || s["phase"] == "Paused")
                })
            })
            .map(|r| doc_key(&r.key))
            .collect()
    }
}

/// The generation to publish a local record at, given the version gossip
/// holds for its key: `None` when that version already has this content;
/// else the store's generation, raised above the held one.
fn publish_generation(rec: &Record, known: Option<&Document>) -> Option<u64> {
    if let Some(k) = known {
        if k.deleted == rec.deleted && (rec.deleted || same_content(&k.body, &rec.object)) {
            return None;
        }
    }
    Some((rec.generation.max(0) as u64).max(known.map_or(0, |k| k.generation + 1)))
}

/// Whether two manifests carry the same content, `metadata.generation`
/// aside (gossip's generation and the store's may differ).
fn same_content(body: &[u8], object: &serde_json::Value) -> bool {
    let Ok(mut a) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let mut b = object.clone();
    for v in [&mut a, &mut b] {
        if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            m.remove("generation");
            // The node's signature on what it publishes is not content.
            if let Some(ann) = m.get_mut("annotations").and_then(|a| a.as_object_mut()) {
                ann.remove(crate::identity::signed::SIGNER_ANNOTATION);
                ann.remove(crate::identity::signed::SIGNATURE_ANNOTATION);
                if ann.is_empty() {
                    m.remove("annotations");
                }
            }
        }
    }
    a == b
}

fn meminfo_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            let l = t.lines().find(|l| l.starts_with("MemTotal:"))?;
            l.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn load_milli() -> u32 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|l| (l * 1000.0) as u32)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(generation: i64, deleted: bool, cpu: u32) -> Record {
        Record {
            key: ObjectKey::new(Kind::VirtualMachine, None, "web"),
            generation,
            source: SourceId("api".into()),
            hash: String::new(),
            object: serde_json::json!({
                "kind": "VirtualMachine",
                "metadata": {"name": "web", "namespace": "default", "generation": generation},
                "spec": {"cpu": cpu},
            }),
            status: None,
            deleted,
            updated_ms: 0,
        }
    }

    fn doc(generation: u64, deleted: bool, cpu: u32) -> Document {
        Document {
            key: DocKey::new("VirtualMachine", "default", "web"),
            generation,
            deleted,
            written_ms: 0,
            body: serde_json::to_vec(&record(generation as i64, deleted, cpu).object).unwrap(),
        }
    }

    #[test]
    fn a_local_change_is_published_above_what_gossip_holds_and_echoes_are_not() {
        // Nothing known: the store's generation.
        assert_eq!(publish_generation(&record(3, false, 1), None), Some(3));
        // The same content at another generation (learned from a peer,
        // counted differently here): nothing to publish.
        assert_eq!(
            publish_generation(&record(1, false, 1), Some(&doc(7, false, 1))),
            None
        );
        // A local edit of a document a peer wrote at generation 7: 8.
        assert_eq!(
            publish_generation(&record(2, false, 2), Some(&doc(7, false, 1))),
            Some(8)
        );
        // The store ahead of gossip: the store's.
        assert_eq!(
            publish_generation(&record(9, false, 2), Some(&doc(7, false, 1))),
            Some(9)
        );
        // A local deletion of a live document: a tombstone above it; an
        // already known tombstone is not republished.
        assert_eq!(
            publish_generation(&record(2, true, 1), Some(&doc(7, false, 1))),
            Some(8)
        );
        assert_eq!(
            publish_generation(&record(2, true, 1), Some(&doc(8, true, 1))),
            None
        );
        // Re-creating a deleted document beats its tombstone.
        assert_eq!(
            publish_generation(&record(3, false, 1), Some(&doc(8, true, 1))),
            Some(9)
        );
    }
}
