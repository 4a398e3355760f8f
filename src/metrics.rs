//! The node's metrics: `GET /metrics` on the HTTP listener, in the
//! Prometheus text format (0.0.4), encoded by `prometheus-client`.
//!
//! Two halves, so that no figure is kept twice:
//!
//! - **counted where it happens**, through the [`Metrics`] handle the node
//!   gives each owner: reconcile durations per kind (the engine's
//!   workers), admission verdicts per source (admission's report of each
//!   verdict), placement decisions (the gossip task's election), gossip
//!   members and traffic (the gossip task, each tick), replica and
//!   relocation durations (watched here from the store's changes:
//!   declared → `Ready`/`Succeeded`/`Failed`);
//! - **read at scrape time** from the one owner of the figure: objects per
//!   kind and phase (the store's shared decoded records), queue depth (the
//!   engine's queue), VMs running and each one's CPU time and resident
//!   memory (`/proc` of the QEMU process in each VM's runtime directory),
//!   DHCP counters (the DHCP service), FASTR lag (the age of each copy's
//!   newest point, from the placement).
//!
//! Who may read it: a client whose address is in `--metrics-allow`
//! (CIDRs; none by default), or a session of the cluster owner or of an
//! admin (a session that may apply AccessPolicies). Anyone else gets 401
//! without a session and 403 with one.
//!
//! Architecture invariant: collecting never writes anything it reads, and
//! a handler only checks access and renders (the figures' owners keep
//! them).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ipnet::IpNet;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::{broadcast, watch};
use tracing::warn;

use crate::admission::{Admission, Verdict};
use crate::dhcp::CountersSnapshot;
use crate::driver::Hypervisor;
use crate::http::tls::PeerAddr;
use crate::http::HttpApi;
use crate::model::{Kind, ObjectKey};
use crate::reconcile::queue::{QueueDepth, WorkQueue};
use crate::reconcile::{Elected, Placement};
use crate::store::{SourceId, Store};

/// The prefix of every metric name.
pub const PREFIX: &str = "deorch";

type Labels<const N: usize> = [(&'static str, &'static str); N];
type Histograms<const N: usize> = Family<Labels<N>, Histogram, fn() -> Histogram>;

fn reconcile_histogram() -> Histogram {
    // 0.5 ms .. ~65 s: a status write to a VM's boot under TCG.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

fn settle_histogram() -> Histogram {
    // 0.1 s .. ~27 min: a local replica to a relocation of a large disk.
    Histogram::new(exponential_buckets(0.1, 2.0, 15))
}

/// Gossip as the gossip task last saw it (each tick).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipFigures {
    /// Members alive (this node excluded).
    pub alive: u64,
    /// Members suspected (missed probes, not declared dead yet).
    pub suspect: u64,
    /// Members declared dead and not forgotten yet.
    pub dead: u64,
    /// Datagrams sent.
    pub messages_sent: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
}

/// The node's metrics (one per node; see the module doc).
pub struct Metrics {
    registry: Registry,
    reconcile: Histograms<2>,
    verdicts: Family<[(&'static str, String); 2], Counter>,
    decisions: Family<Labels<1>, Counter>,
    settled: Histograms<2>,
    gossip: Mutex<Option<GossipFigures>>,
    allow: Vec<IpNet>,
    store: Arc<Store>,
    admission: OnceLock<Arc<Admission>>,
    queue: OnceLock<Arc<WorkQueue>>,
    hypervisor: OnceLock<Arc<dyn Hypervisor>>,
    dhcp: OnceLock<Arc<crate::dhcp::service::DhcpService>>,
    placement: OnceLock<Arc<dyn Placement>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics of a node whose store is `store`, readable without a
    /// session from the networks in `allow`.
    pub fn new(store: Arc<Store>, allow: Vec<IpNet>) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix(PREFIX);
        let reconcile: Histograms<2> = Family::new_with_constructor(reconcile_histogram);
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, by kind and result (ok, error)",
            reconcile.clone(),
        );
        let verdicts = Family::default();
        registry.register(
            "admission_verdicts",
            "Documents admission decided, by source (file, git, push, api, gossip, schedule, node) and verdict",
            verdicts.clone(),
        );
        let decisions = Family::default();
        registry.register(
            "placement_decisions",
            "Changes of a VM's election as this node sees it, by the new decision (Here, Elsewhere, Pending, Unschedulable, NodeLost, NoQuorum, Dropped)",
            decisions.clone(),
        );
        let settled: Histograms<2> = Family::new_with_constructor(settle_histogram);
        registry.register(
            "settle_duration_seconds",
            "Time from a Replica or Relocation being declared to its final phase, by kind and phase (Ready, Failed, Succeeded)",
            settled.clone(),
        );
        Arc::new(Metrics {
            registry,
            reconcile,
            verdicts,
            decisions,
            settled,
            gossip: Mutex::new(None),
            allow,
            store,
            admission: OnceLock::new(),
            queue: OnceLock::new(),
            hypervisor: OnceLock::new(),
            dhcp: OnceLock::new(),
            placement: OnceLock::new(),
        })
    }

    /// The admission whose AccessPolicies say who is an admin.
    pub fn set_admission(&self, admission: Arc<Admission>) {
        let _ = self.admission.set(admission);
    }

    /// The engine's queue (depth at scrape time).
    pub fn set_queue(&self, queue: Arc<WorkQueue>) {
        let _ = self.queue.set(queue);
    }

    /// The hypervisor whose QEMU processes are measured.
    pub fn set_hypervisor(&self, hypervisor: Arc<dyn Hypervisor>) {
        let _ = self.hypervisor.set(hypervisor);
    }

    /// The node's DHCP servers.
    pub fn set_dhcp(&self, dhcp: Arc<crate::dhcp::service::DhcpService>) {
        let _ = self.dhcp.set(dhcp);
    }

    /// The placement whose FASTR copies' lag is shown.
    pub fn set_placement(&self, placement: Arc<dyn Placement>) {
        let _ = self.placement.set(placement);
    }

    /// One reconcile of a `kind` object took `seconds`.
    pub fn reconciled(&self, kind: Kind, ok: bool, seconds: f64) {
        let result = if ok { "ok" } else { "error" };
        self.reconcile
            .get_or_create(&[("kind", kind.as_str()), ("result", result)])
            .observe(seconds);
    }

    /// Admission decided `verdict` for a document from `source` (its id's
    /// scheme only, `file:/etc/...` counting as `file`: a bounded set).
    pub fn verdict(&self, source: &SourceId, verdict: &Verdict) {
        let source = source.0.split(':').next().unwrap_or_default();
        self.verdicts
            .get_or_create(&[
                ("source", source.to_string()),
                ("verdict", verdict.code().to_string()),
            ])
            .inc();
    }

    /// A VM's election changed to `e` (`None`: the VM left the election).
    pub fn placement_decision(&self, e: Option<&Elected>) {
        let decision = match e {
            Some(Elected::Here) => "Here",
            Some(Elected::Elsewhere { .. }) => "Elsewhere",
            Some(Elected::Pending) => "Pending",
            Some(Elected::Unschedulable { .. }) => "Unschedulable",
            Some(Elected::NodeLost { .. }) => "NodeLost",
            Some(Elected::NoQuorum) => "NoQuorum",
            None => "Dropped",
        };
        self.decisions
            .get_or_create(&[("decision", decision)])
            .inc();
    }

    /// Gossip's figures now.
    pub fn set_gossip(&self, figures: GossipFigures) {
        *self.gossip.lock().unwrap_or_else(|p| p.into_inner()) = Some(figures);
    }

    /// Whether a client at `ip` may read the metrics without a session.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Whether the session of `address` may read them: the cluster owner
    /// or an admin (may apply AccessPolicies).
    fn admits_session(&self, address: &str, level2: bool) -> bool {
        self.admission.get().is_some_and(|a| {
            a.authorise_session(
                address,
                level2,
                crate::model::access::Verb::Apply,
                Kind::AccessPolicy,
                "",
                None,
            )
            .is_ok()
        })
    }

    /// Watch the store until `shutdown`: a Replica or Relocation declared
    /// (a change of its spec) is timed until its status reaches a final
    /// phase.
    pub async fn watch_durations(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.store.subscribe();
        let mut started: HashMap<ObjectKey, Instant> = HashMap::new();
        loop {
            let change = tokio::select! {
                _ = shutdown.changed() => return,
                c = changes.recv() => c,
            };
            let c = match change {
                Ok(c) => c,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if !matches!(c.key.kind, Kind::Replica | Kind::Relocation) {
                continue;
            }
            let Some(record) = self.store.get(&c.key).filter(|r| !r.deleted) else {
                started.remove(&c.key);
                continue;
            };
            if !c.status_only {
                started.insert(c.key.clone(), Instant::now());
                continue;
            }
            let st = record.status.as_ref();
            let phase = st.and_then(|s| s["phase"].as_str()).unwrap_or_default();
            let observed = st.and_then(|s| s["observedGeneration"].as_i64());
            let phase: &'static str = match phase {
                "Ready" => "Ready",
                "Succeeded" => "Succeeded",
                "Failed" => "Failed",
                _ => continue,
            };
            if observed.is_some_and(|g| g != record.generation) {
                continue;
            }
            if let Some(t0) = started.remove(&c.key) {
                self.settled
                    .get_or_create(&[("kind", c.key.kind.as_str()), ("phase", phase)])
                    .observe(t0.elapsed().as_secs_f64());
            }
        }
    }

    /// The text a scrape gets (what is read at scrape time is read now).
    pub async fn render(self: &Arc<Self>) -> String {
        let dhcp = match self.dhcp.get() {
            Some(d) => d.all_counters().await,
            None => Vec::new(),
        };
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.render_with(dhcp)).await {
            Ok(text) => text,
            Err(e) => {
                warn!(error = %e, "metrics: rendering failed");
                String::new()
            }
        }
    }

    /// [`Metrics::render`] with the DHCP counters already read.
    pub fn render_with(&self, dhcp: Vec<(String, CountersSnapshot)>) -> String {
        let now = Scrape {
            objects: objects(&self.store),
            queue: self.queue.get().map(|q| q.depth()),
            vms: self
                .hypervisor
                .get()
                .and_then(|h| h.vms_dir())
                .map(vm_processes),
            dhcp,
            fastr: Vec::new(),
            fastr_rpo: Vec::new(),
            gossip: *self.gossip.lock().unwrap_or_else(|p| p.into_inner()),
        };
        let mut now = now;
        if let Some(p) = self.placement.get() {
            (now.fastr, now.fastr_rpo) = fastr_lag(&self.store, p.as_ref(), crate::clock::now_ms());
        }
        let mut out = String::with_capacity(16 << 10);
        let mut scraped = Registry::with_prefix(PREFIX);
        scraped.register_collector(Box::new(now));
        // Writing to a String cannot fail; a metric that cannot encode
        // (none here) would leave the text short, not wrong.
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry)
            .and_then(|_| prometheus_text::encode(&mut out, &scraped))
        {
            warn!(error = %e, "metrics: encoding failed");
        }
        out
    }
}

/// What is read at scrape time, encoded once.
#[derive(Debug, Default)]
struct Scrape {
    objects: BTreeMap<(&'static str, String), i64>,
    queue: Option<QueueDepth>,
    vms: Option<Vec<VmProcess>>,
    dhcp: Vec<(String, CountersSnapshot)>,
    fastr: Vec<FastrLag>,
    fastr_rpo: Vec<FastrRpo>,
    gossip: Option<GossipFigures>,
}

/// One QEMU process of a VM.
#[derive(Debug, Clone, PartialEq)]
pub struct VmProcess {
    /// The VM's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident memory, bytes.
    pub rss_bytes: i64,
}

/// How old a FASTR copy's newest point is.
#[derive(Debug, Clone, PartialEq)]
struct FastrLag {
    namespace: String,
    name: String,
    holder: String,
    seconds: f64,
}

/// A FASTR policy's recovery point target and whether it is missed now
/// (the VM's `FastrCopies` condition says `RpoExceeded` or
/// `CopyFailing`): the series an alert rule watches.
#[derive(Debug)]
struct FastrRpo {
    namespace: String,
    name: String,
    target_seconds: f64,
    exceeded: bool,
}

/// Live objects by kind and status phase (`None`: no phase yet or a kind
/// without phases).
fn objects(store: &Store) -> BTreeMap<(&'static str, String), i64> {
    let records = store.list_shared();
    let mut counts: HashMap<(&'static str, &str), i64> = HashMap::new();
    for k in Kind::ALL {
        counts.insert((k.as_str(), "None"), 0);
    }
    for r in &records {
        let phase = r
            .status
            .as_ref()
            .and_then(|s| s.get("phase"))
            .and_then(|p| p.as_str())
            .unwrap_or("None");
        *counts.entry((r.key.kind.as_str(), phase)).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((k, p), n)| ((k, p.to_string()), n))
        .collect()
}

/// The QEMU process of each VM below `vms_dir` (`NAMESPACE/NAME/qemu.pid`)
/// that runs, with its CPU time and resident memory.
pub fn vm_processes(vms_dir: &std::path::Path) -> Vec<VmProcess> {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let mut out = Vec::new();
    let dirs = |p: &std::path::Path| {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .collect::<Vec<_>>()
    };
    for ns in dirs(vms_dir) {
        for vm in dirs(&ns.path()) {
            let Some(pid) = std::fs::read_to_string(crate::qemu::cmdline::pidfile(&vm.path()))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let Some((cpu, rss)) = process_figures(pid) else {
                continue;
            };
            out.push(VmProcess {
                namespace: ns.file_name().to_string_lossy().into_owned(),
                name: vm.file_name().to_string_lossy().into_owned(),
                cpu_seconds: cpu as f64 / ticks,
                rss_bytes: rss,
            });
        }
    }
    out
}

/// CPU ticks (user + system) and resident bytes of `pid`, if it is a live
/// QEMU (not a zombie, not a process that reused the PID).
fn process_figures(pid: u32) -> Option<(u64, i64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, tail) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1;
    let fields: Vec<&str> = tail.split_whitespace().collect();
    // After the command: state is field 3 of proc(5), utime 14, stime 15.
    if fields.first() == Some(&"Z") || !comm.starts_with("qemu") {
        return None;
    }
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some((utime + stime, rss_kib * 1024))
}

/// The age of the newest point of each FASTR copy of the VMs in `store`,
/// and each policy's target and whether it is missed.
fn fastr_lag(
    store: &Store,
    placement: &dyn Placement,
    now_ms: u64,
) -> (Vec<FastrLag>, Vec<FastrRpo>) {
    let mut out = Vec::new();
    let mut rpo = Vec::new();
    for r in store.list_shared() {
        if r.key.kind != Kind::VirtualMachine {
            continue;
        }
        let copies = placement.fastr(&r.key).unwrap_or_default();
        let policy = r
            .object
            .pointer("/spec/fastr")
            .and_then(|f| serde_json::from_value::<crate::model::vm::Fastr>(f.clone()).ok());
        if let Some(f) = &policy {
            // Ages as of now, not as of the last status write.
            let aged: Vec<crate::model::FastrCopy> = copies
                .iter()
                .cloned()
                .map(|mut c| {
                    c.age_ms = c
                        .point
                        .as_deref()
                        .and_then(crate::relocate::agent::fastr::point_ms)
                        .map(|p| now_ms.saturating_sub(p));
                    c
                })
                .collect();
            let (_, reason, _) = crate::reconcile::vm::fastr_condition(&aged, f);
            rpo.push(FastrRpo {
                namespace: r.key.namespace.clone(),
                name: r.key.name.clone(),
                target_seconds: crate::reconcile::vm::rpo_target(f).as_secs_f64(),
                exceeded: matches!(reason, "RpoExceeded" | "CopyFailing"),
            });
        }
        for copy in copies {
            let Some(point_ms) = copy
                .point
                .as_deref()
                .and_then(|p| p.strip_prefix("fastr-"))
                .and_then(|ms| ms.parse::<u64>().ok())
            else {
                continue;
            };
            out.push(FastrLag {
                namespace: r.key.namespace.clone(),
                name: r.key.name.clone(),
                holder: copy.node.clone(),
                seconds: now_ms.saturating_sub(point_ms) as f64 / 1000.0,
            });
        }
    }
    (out, rpo)
}

/// The labels of a VM's series.
fn vm_labels<'a>(namespace: &'a str, name: &'a str) -> [(&'static str, &'a str); 2] {
    [("namespace", namespace), ("name", name)]
}

/// One metric family: its descriptor, then each series.
fn family<M: EncodeMetric, L: prometheus_client::encoding::EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in series {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        family(
            &mut e,
            "objects",
            "Live objects in the store, by kind and status phase (None: no phase).",
            MetricType::Gauge,
            self.objects.iter().map(|((kind, phase), n)| {
                (
                    [("kind", *kind), ("phase", phase.as_str())],
                    ConstGauge::new(*n),
                )
            }),
        )?;
        if let Some(q) = &self.queue {
            family(
                &mut e,
                "reconcile_queue_depth",
                "Objects in the reconcile queue: ready to run, waiting for a retry or requeue (delayed), being reconciled (processing), parked after a permanent failure.",
                MetricType::Gauge,
                [
                    ("ready", q.ready),
                    ("delayed", q.delayed),
                    ("processing", q.processing),
                    ("parked", q.parked),
                ]
                .map(|(state, n)| ([("state", state)], ConstGauge::new(n as i64))),
            )?;
        }
        if let Some(vms) = &self.vms {
            family(
                &mut e,
                "vms_running",
                "QEMU processes of VMs running on this node.",
                MetricType::Gauge,
                [([("driver", "qemu")], ConstGauge::new(vms.len() as i64))],
            )?;
            family(
                &mut e,
                "vm_cpu_seconds",
                "CPU time (user + system) of a VM's QEMU process.",
                MetricType::Counter,
                vms.iter().map(|v| {
                    (
                        vm_labels(&v.namespace, &v.name),
                        ConstCounter::new(v.cpu_seconds),
                    )
                }),
            )?;
            family(
                &mut e,
                "vm_memory_resident_bytes",
                "Resident memory (VmRSS) of a VM's QEMU process.",
                MetricType::Gauge,
                vms.iter().map(|v| {
                    (
                        vm_labels(&v.namespace, &v.name),
                        ConstGauge::new(v.rss_bytes),
                    )
                }),
            )?;
        }
        if !self.dhcp.is_empty() {
            let events = |c: &CountersSnapshot| {
                [
                    ("offer", c.offers),
                    ("ack", c.acks),
                    ("nak", c.naks),
                    ("inform_ack", c.inform_acks),
                    ("release", c.releases),
                    ("decline", c.declines),
                    ("relayed_up", c.relayed_up),
                    ("relayed_down", c.relayed_down),
                    ("tunneled_up", c.tunneled_up),
                    ("tunneled_down", c.tunneled_down),
                    ("send_error", c.send_errors),
                ]
            };
            family(
                &mut e,
                "dhcp_messages",
                "DHCP messages by network and event (offer, ack, nak, inform_ack sent; release, decline received; relayed_up, relayed_down; tunneled_up, tunneled_down through a DHCPCAST gateway's tunnel; send_error).",
                MetricType::Counter,
                self.dhcp.iter().flat_map(|(network, c)| {
                    events(c).map(|(event, n)| {
                        (
                            [("network", network.as_str()), ("event", event)],
                            ConstCounter::new(n),
                        )
                    })
                }),
            )?;
            family(
                &mut e,
                "dhcp_dropped",
                "DHCP packets dropped, by network and reason.",
                MetricType::Counter,
                self.dhcp.iter().flat_map(|(network, c)| {
                    c.dropped.iter().map(move |(reason, n)| {
                        (
                            [("network", network.as_str()), ("reason", reason.as_str())],
                            ConstCounter::new(*n),
                        )
                    })
                }),
            )?;
            family(
                &mut e,
                "dhcp_leases",
                "DHCP leases live now, by network.",
                MetricType::Gauge,
                self.dhcp.iter().map(|(network, c)| {
                    (
                        [("network", network.as_str())],
                        ConstGauge::new(c.live_leases as i64),
                    )
                }),
            )?;
        }
        if !self.fastr.is_empty() {
            family(
                &mut e,
                "fastr_lag_seconds",
                "Age of the newest complete point of a FASTR copy (the live recovery point), by VM and holder.",
                MetricType::Gauge,
                self.fastr.iter().map(|f| {
                    (
                        [
                            ("namespace", f.namespace.as_str()),
                            ("name", f.name.as_str()),
                            ("holder", f.holder.as_str()),
                        ],
                        ConstGauge::new(f.seconds),
                    )
                }),
            )?;
        }
        if !self.fastr_rpo.is_empty() {
            family(
                &mut e,
                "fastr_rpo_target_seconds",
                "The recovery point a VM's FASTR policy promises (three intervals, at least 3 s).",
                MetricType::Gauge,
                self.fastr_rpo.iter().map(|f| {
                    (
                        vm_labels(&f.namespace, &f.name),
                        ConstGauge::new(f.target_seconds),
                    )
                }),
            )?;
            family(
                &mut e,
                "fastr_rpo_exceeded",
                "1 while a VM's FASTR copies miss its recovery point (a copy older than the target, or failing), else 0: alert on it.",
                MetricType::Gauge,
                self.fastr_rpo
                    .iter()
                    .map(|f| {
                        (
                            vm_labels(&f.namespace, &f.name),
                            ConstGauge::new(i64::from(f.exceeded)),
                        )
                    }),
            )?;
        }
        if let Some(g) = &self.gossip {
            family(
                &mut e,
                "gossip_members",
                "Members this node knows, by SWIM state (itself excluded).",
                MetricType::Gauge,
                [("alive", g.alive), ("suspect", g.suspect), ("dead", g.dead)]
                    .map(|(state, n)| ([("state", state)], ConstGauge::new(n as i64))),
            )?;
            family(
                &mut e,
                "gossip_messages_sent",
                "Gossip datagrams sent.",
                MetricType::Counter,
                [([("transport", "udp")], ConstCounter::new(g.messages_sent))],
            )?;
            family(
                &mut e,
                "gossip_bytes",
                "Gossip payload bytes, by direction.",
                MetricType::Counter,
                [("sent", g.bytes_sent), ("received", g.bytes_received)]
                    .map(|(d, n)| ([("direction", d)], ConstCounter::new(n))),
            )?;
        }
        Ok(())
    }
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "error": message, "code": code }))).into_response()
}

/// `GET /metrics`: the metrics, for a client in `--metrics-allow` or a
/// session of the owner or an admin.
pub async fn scrape(
    State(api): State<Arc<HttpApi>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
) -> Response {
    let Some(metrics) = api.metrics() else {
        return refuse(
            StatusCode::NOT_FOUND,
            "NotFound",
            "this node keeps no metrics",
        );
    };
    if !metrics.allows(peer.ip()) {
        let Some(token) = crate::http::session_cookie(&headers) else {
            warn!(%peer, "metrics refused: no session, and not in --metrics-allow");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "NoSession",
                "/metrics needs a session of the cluster owner or an admin (deorch login), or a client address in the node's --metrics-allow",
            );
        };
        let session = match api.check_session(token) {
            Ok(s) => s,
            Err(e) => {
                warn!(%peer, reason = %e, "metrics refused: bad session");
                return refuse(StatusCode::UNAUTHORIZED, "BadSession", &e.to_string());
            }
        };
        if !metrics.admits_session(&session.address, session.level2) {
            warn!(%peer, address = %session.address, "metrics refused: not the owner or an admin");
            return refuse(
                StatusCode::FORBIDDEN,
                "Denied",
                &format!(
                    "{} is neither the cluster owner nor an admin (may apply AccessPolicies): /metrics shows the whole node",
                    session.address
                ),
            );
        }
    }
    let text = metrics.render().await;
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_takes_v4_mapped_addresses() {
        let dir = std::env::temp_dir().join(format!("deorch-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(Store::open(&dir.join("s.redb")).unwrap());
        let m = Metrics::new(store, vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(m.allows("127.0.0.1".parse().unwrap()));
        assert!(m.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!m.allows("10.0.0.1".parse().unwrap()));
        assert!(!m.allows("::1".parse().unwrap()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A placement whose one VM has a FASTR copy on `b`, 90 s old.
    struct OneCopy(u64);

    impl Placement for OneCopy {
        fn elected(&self, _: &ObjectKey) -> Elected {
            Elected::Here
        }
        fn subscribe(&self) -> broadcast::Receiver<ObjectKey> {
            broadcast::channel(1).1
        }
        fn fastr(&self, _: &ObjectKey) -> Option<Vec<crate::model::FastrCopy>> {
            Some(vec![crate::model::FastrCopy {
                node: "b".into(),
                point: Some(format!("fastr-{}", self.0 - 90_000)),
                age_ms: None,
                bytes_sent: 0,
                error: None,
            }])
        }
    }

    #[test]
    fn dhcp_counters_and_fastr_lag_are_encoded_per_network_and_copy() {
        let dir = std::env::temp_dir().join(format!("deorch-metrics-enc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(Store::open(&dir.join("s.redb")).unwrap());
        store
            .apply(&crate::bench::bench_vm(1), &SourceId("api".into()))
            .unwrap();
        let m = Metrics::new(store, Vec::new());
        m.set_placement(Arc::new(OneCopy(crate::clock::now_ms())));
        let counters = CountersSnapshot {
            offers: 3,
            acks: 2,
            live_leases: 1,
            dropped: [("truncated".to_string(), 4)].into(),
            ..Default::default()
        };
        let text = m.render_with(vec![("default/lan".into(), counters)]);
        for line in [
            "deorch_dhcp_messages_total{network=\"default/lan\",event=\"offer\"} 3",
            "deorch_dhcp_messages_total{network=\"default/lan\",event=\"ack\"} 2",
            "deorch_dhcp_dropped_total{network=\"default/lan\",reason=\"truncated\"} 4",
            "deorch_dhcp_leases{network=\"default/lan\"} 1",
            "# TYPE deorch_fastr_lag_seconds gauge",
            "deorch_objects{kind=\"VirtualMachine\",phase=\"None\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
        }
        let lag: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "deorch_fastr_lag_seconds{namespace=\"default\",name=\"vm-00001\",holder=\"b\"} ",
                )
            })
            .expect("the copy's lag")
            .parse()
            .unwrap();
        assert!((90.0..100.0).contains(&lag), "{lag}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The alert series: a VM's FASTR target, and whether its copies miss
    /// it now (the same judge as the VM's `RpoExceeded` condition).
    #[test]
    fn a_fastr_copy_older_than_three_intervals_raises_the_rpo_alert_series() {
        let dir = std::env::temp_dir().join(format!("deorch-metrics-rpo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(Store::open(&dir.join("s.redb")).unwrap());
        let yaml = "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {name: f1}\nspec:\n  cpu: 1\n  memory: 64Mi\n  fastr: {copies: 1, interval: 5s}\n";
        let parsed = crate::manifest::parse_str(std::path::Path::new("f1.yaml"), yaml);
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        store
            .apply(&parsed.documents[0].object, &SourceId("api".into()))
            .unwrap();
        let m = Metrics::new(store, Vec::new());
        let series = |m: &Metrics, name: &str| -> String {
            let text = m.render_with(Vec::new());
            let prefix = format!("deorch_{name}{{namespace=\"default\",name=\"f1\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_string))
                .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
        };
        // A point 90 s old against a 15 s target.
        m.set_placement(Arc::new(OneCopy(crate::clock::now_ms())));
        assert_eq!(series(&m, "fastr_rpo_target_seconds"), "15.0");
        assert_eq!(series(&m, "fastr_rpo_exceeded"), "1");
        // A point 1 s old: within it.
        let m2 = Metrics::new(m.store.clone(), Vec::new());
        m2.set_placement(Arc::new(OneCopy(crate::clock::now_ms() + 89_000)));
        assert_eq!(series(&m2, "fastr_rpo_exceeded"), "0");
        // The example alert rules use only names a node serves.
        let text = m.render_with(Vec::new());
        let rules = include_str!("../docs/prometheus-alerts.yaml");
        let mut used = 0;
        for (at, _) in rules.match_indices("deorch_") {
            let name: String = rules[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                text.lines()
                    .any(|l| !l.starts_with('#') && l.starts_with(&format!("{name}{{"))),
                "docs/prometheus-alerts.yaml uses {name}, which the node does not serve:\n{text}"
            );
            used += 1;
        }
        assert!(used >= 3, "{used}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_grafana_dashboard_uses_only_names_the_node_serves() {
        let dir = std::env::temp_dir().join(format!("deorch-metrics-dash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(Store::open(&dir.join("s.redb")).unwrap());
        store
            .apply(&crate::bench::bench_vm(1), &SourceId("api".into()))
            .unwrap();
        // Every family with a series: what a node with gossip, DHCP and
        // FASTR copies serves.
        let m = Metrics::new(store, Vec::new());
        m.reconciled(Kind::VirtualMachine, true, 0.01);
        m.verdict(&SourceId("file:/m/a.yaml".into()), &Verdict::Absent);
        m.placement_decision(Some(&Elected::Here));
        m.settled
            .get_or_create(&[("kind", "Replica"), ("phase", "Ready")])
            .observe(1.0);
        m.set_gossip(GossipFigures::default());
        m.set_placement(Arc::new(OneCopy(crate::clock::now_ms())));
        m.set_queue(Arc::new(WorkQueue::new(
            std::time::Duration::from_millis(10),
            std::time::Duration::from_secs(1),
        )));
        let dhcp = CountersSnapshot {
            dropped: [("truncated".to_string(), 1)].into(),
            ..Default::default()
        };
        let mut text = m.render_with(vec![("default/lan".into(), dhcp)]);
        let mut vms = Registry::with_prefix(PREFIX);
        vms.register_collector(Box::new(Scrape {
            vms: Some(vec![VmProcess {
                namespace: "default".into(),
                name: "web".into(),
                cpu_seconds: 1.5,
                rss_bytes: 1 << 20,
            }]),
            ..Default::default()
        }));
        prometheus_text::encode(&mut text, &vms).unwrap();
        let served: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../docs/grafana-dashboard.json"))
                .expect("docs/grafana-dashboard.json is JSON");
        let mut used = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                let mut rest = expr;
                while let Some(at) = rest.find("deorch_") {
                    let name: String = rest[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    assert!(
                        served.contains(name.as_str()),
                        "panel {:?} uses {name}, which no scrape has: {served:?}",
                        panel["title"]
                    );
                    used += 1;
                    rest = &rest[at + name.len()..];
                }
            }
        }
        assert!(used >= 15, "{used} metric names in the dashboard");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn this_process_is_no_qemu() {
        assert_eq!(process_figures(std::process::id()), None);
    }
}
