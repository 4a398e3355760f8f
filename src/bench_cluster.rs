//! `deorch bench cluster-auth`: what node authentication costs a real
//! cluster. Five node processes of this executable (fake drivers) gossip
//! on loopback, once with `--gossip-verify unsigned` (plaintext, no
//! admission) and once signed (each node's key admitted by the owner's
//! AccessPolicy, a Noise channel between every pair), same timings. The
//! same owner-signed documents are applied on n1 one at a time; the
//! bench measures how long each takes to reach the other four stores,
//! then the CPU time and RSS of every node over an idle window.
//!
//! The two modes alternate, round after round, so that load from other
//! work on the machine falls on both alike.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::api::{client, Request, Response};
use crate::bench::percentiles;
use crate::bench_node::{cpu_seconds, rss_mib};
use crate::identity::{AddressType, Network, PrivateKey};

const NODES: usize = 5;
const CALL: Duration = Duration::from_secs(30);
/// Short gossip timings (probe 200 ms; suspicion, claim settle and
/// re-election 1 s): this bench's, the same in both modes, and the
/// multi-node tests'.
pub const FAST_TIMINGS: [&str; 8] = [
    "--gossip-probe-interval",
    "200ms",
    "--gossip-suspect-timeout",
    "1s",
    "--gossip-claim-settle",
    "1s",
    "--gossip-reelect-timeout",
    "1s",
];

/// Node authentication off or on.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// `--gossip-verify unsigned`: plaintext gossip, any node may join.
    Off,
    /// `--gossip-verify signed`: admitted node keys, Noise channel.
    On,
}

impl Mode {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Mode::Off => &["--gossip-verify", "unsigned"],
            Mode::On => &["--gossip-verify", "signed"],
        }
    }
}

/// One node process; killed and reaped when dropped.
struct ClusterNode {
    name: String,
    id: String,
    state: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    child: Child,
}

impl ClusterNode {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn call(&self, req: &Request) -> anyhow::Result<Response> {
        Ok(client::call(&self.socket, req, CALL)?)
    }

    /// Whether the node holds a live object `kind`/`name`.
    fn holds(&self, kind: &str, name: &str) -> bool {
        matches!(
            client::call(
                &self.socket,
                &Request::Get {
                    kind: Some(kind.into()),
                    namespace: None,
                    name: Some(name.into()),
                },
                CALL,
            ),
            Ok(Response::Objects { records }) if !records.is_empty()
        )
    }

    /// Apply one document; the call's own duration.
    fn apply(&self, yaml: String) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        match self.call(&Request::Apply {
            filename: "bench.yaml".into(),
            yaml,
            dry_run: false,
        })? {
            Response::Applied { .. } => Ok(t0.elapsed()),
            other => bail!("{}: apply answered {other:?}", self.name),
        }
    }

    /// The IDs of the members this node last saw up (its Satellite's
    /// `MemberUp`/`MemberDown` events, "REASON: NAME (ID)").
    fn members_up(&self) -> Vec<String> {
        let Ok(Response::Described { events, .. }) = self.call(&Request::Describe {
            kind: "satellite".into(),
            namespace: None,
            name: self.name.clone(),
        }) else {
            return Vec::new();
        };
        let mut last = std::collections::BTreeMap::new();
        for e in &events {
            if let Some(id) = e
                .message
                .rsplit_once(" (")
                .and_then(|(_, r)| r.strip_suffix(')'))
            {
                last.insert(id.to_string(), e.reason == "MemberUp");
            }
        }
        last.into_iter()
            .filter_map(|(id, up)| up.then_some(id))
            .collect()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Five nodes in one temporary directory, removed when dropped.
struct Cluster {
    nodes: Vec<ClusterNode>,
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Reap every process before its files go.
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    /// Start n1..n5 in `mode` for the cluster `owner` owns, give each the
    /// owner's AccessPolicy admitting all five, and wait until every node
    /// sees the other four up. Returns the cluster and the time from the
    /// last node's start to that.
    fn start(mode: Mode, owner: &PrivateKey, round: usize) -> anyhow::Result<(Cluster, Duration)> {
        let dir = std::env::temp_dir().join(format!(
            "deorch-bench-cluster-{mode:?}-{round}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).context("creating the bench directory")?;
        let mut cluster = Cluster {
            nodes: Vec::new(),
            dir,
        };
        let owner_addr = owner.address(AddressType::P2wpkh)?.to_string();
        // Keys first: the policy names every node by its key's address.
        let mut keyed = Vec::new();
        for i in 1..=NODES {
            let name = format!("n{i}");
            let state = cluster.dir.join(&name).join("state");
            std::fs::create_dir_all(&state).context("creating a state directory")?;
            let key = PrivateKey::generate(Network::Mainnet);
            key.save(&state.join("node.key"))?;
            keyed.push((name, key.address(AddressType::P2wpkh)?.to_string()));
        }
        let policy = owner_signed(owner, &owner_addr, &members_policy(&keyed))?;
        let mut last_start = Instant::now();
        for (name, id) in keyed {
            let seed = match cluster.nodes.first() {
                Some(n1) => Some(gossip_address(n1)?),
                None => None,
            };
            last_start = Instant::now();
            let node = spawn(&cluster.dir, name, id, mode, &owner_addr, seed.as_deref())?;
            cluster.nodes.push(node);
            let node = cluster.nodes.last().expect("just pushed");
            wait_api(node)?;
            node.apply(policy.clone())
                .with_context(|| format!("{}: applying the members policy", node.name))?;
        }
        let t0 = Instant::now();
        let ids: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();
        loop {
            let all = cluster.nodes.iter().all(|n| {
                let up = n.members_up();
                ids.iter()
                    .filter(|id| **id != n.id)
                    .all(|id| up.contains(id))
            });
            if all {
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let n = &cluster.nodes[NODES - 1];
                bail!(
                    "{mode:?}: the five nodes did not all see each other within 60 s; {} log:\n{}",
                    n.name,
                    n.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let joined = last_start.elapsed();
        Ok((cluster, joined))
    }
}

fn spawn(
    dir: &Path,
    name: String,
    id: String,
    mode: Mode,
    owner: &str,
    seed: Option<&str>,
) -> anyhow::Result<ClusterNode> {
    let home = dir.join(&name);
    let manifests = home.join("manifests");
    std::fs::create_dir_all(&manifests).context("creating a manifest directory")?;
    let state = home.join("state");
    let socket = home.join("node.sock");
    let log = home.join("node.log");
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut cmd = Command::new(&exe);
    cmd.args(["--log", "warn", "node", "run", "--name", &name])
        .args(["--hypervisor", "fake", "--storage", "fake"])
        .arg("--state-dir")
        .arg(&state)
        .arg("--manifests")
        .arg(&manifests)
        .arg("--socket")
        .arg(&socket)
        .args(["--cluster-owner", owner, "--gossip-listen", "127.0.0.1:0"])
        .args(mode.flags())
        .args(FAST_TIMINGS);
    if let Some(s) = seed {
        cmd.args(["--seed", s]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(&log).context("creating node.log")?,
        ))
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    Ok(ClusterNode {
        name,
        id,
        state,
        socket,
        log,
        child,
    })
}

fn wait_api(n: &ClusterNode) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if let Ok(Response::Info(_)) = client::call(&n.socket, &Request::Info, CALL) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!(
        "{} did not answer within 30 s; log:\n{}",
        n.name,
        n.log_tail()
    )
}

fn gossip_address(n: &ClusterNode) -> anyhow::Result<String> {
    let file = n.state.join("gossip-address");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if !text.trim().is_empty() {
                return Ok(text.trim().to_string());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("{} wrote no gossip address; log:\n{}", n.name, n.log_tail())
}

/// The owner's AccessPolicy admitting `nodes` (name, ID) as satellites.
fn members_policy(nodes: &[(String, String)]) -> String {
    let sats: String = nodes
        .iter()
        .map(|(n, a)| format!("    - name: {n}\n      address: \"{a}\"\n"))
        .collect();
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: AccessPolicy\nmetadata:\n  name: members\n  generation: 1\nspec:\n  satellites:\n{sats}  rules: []\n"
    )
}

/// Document `i`: a Network, the same in both modes.
fn network(i: usize) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata:\n  name: conv-{i:05}\n  generation: 1\nspec:\n  ipv4:\n    subnet: 10.{}.{}.0/24\n    gateway: 10.{}.{}.1\n",
        i / 256,
        i % 256,
        i / 256,
        i % 256
    )
}

/// `yaml` (one document) signed by `owner` for `cluster`, as JSON (which
/// the local API reads as YAML).
fn owner_signed(owner: &PrivateKey, cluster: &str, yaml: &str) -> anyhow::Result<String> {
    let parsed = crate::manifest::parse_str(Path::new("bench.yaml"), yaml);
    let Some(doc) = parsed
        .documents
        .first()
        .filter(|_| parsed.diagnostics.is_empty())
    else {
        bail!(
            "the bench's own document is invalid: {:?}",
            parsed.diagnostics
        );
    };
    let signed = crate::identity::sign_manifest(
        &doc.object.to_value(),
        cluster,
        owner,
        AddressType::P2wpkh,
    )?;
    Ok(serde_json::to_string(&signed)?)
}

/// What one round of one mode measured.
#[derive(Default)]
struct Figures {
    joined: Vec<Duration>,
    converged: Vec<Duration>,
    apply: Vec<Duration>,
    /// CPU-seconds per node per minute while documents spread (mean of nodes).
    busy_cpu: Vec<f64>,
    /// CPU-seconds per node per minute idle: mean of nodes, busiest node.
    idle_cpu: Vec<f64>,
    idle_cpu_max: Vec<f64>,
    /// RSS after the idle window: mean of nodes, largest.
    rss: Vec<f64>,
    rss_max: Vec<f64>,
}

fn round(
    mode: Mode,
    owner: &PrivateKey,
    r: usize,
    docs: usize,
    idle: Duration,
    out: &mut Figures,
) -> anyhow::Result<()> {
    let owner_addr = owner.address(AddressType::P2wpkh)?.to_string();
    let signed: Vec<String> = (0..docs)
        .map(|i| owner_signed(owner, &owner_addr, &network(i)))
        .collect::<anyhow::Result<_>>()?;
    let (cluster, joined) = Cluster::start(mode, owner, r)?;
    out.joined.push(joined);
    let nodes = &cluster.nodes;
    // Let the joins' own traffic (policy, statuses) finish.
    std::thread::sleep(Duration::from_secs(2));
    let cpu = |nodes: &[ClusterNode]| -> Vec<f64> {
        nodes.iter().map(|n| cpu_seconds(n.pid())).collect()
    };
    let cpu0 = cpu(nodes);
    let busy0 = Instant::now();
    // A pause of 0-199 ms before each apply (the same sequence in both
    // modes) so that applies fall at every phase of the gossip tick.
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    for (i, yaml) in signed.into_iter().enumerate() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(rng % 200));
        out.apply.push(nodes[0].apply(yaml)?);
        let t0 = Instant::now();
        let name = format!("conv-{i:05}");
        let mut pending: Vec<&ClusterNode> = nodes[1..].iter().collect();
        let mut last = Duration::ZERO;
        while !pending.is_empty() {
            pending.retain(|n| {
                let held = n.holds("network", &name);
                if held {
                    last = t0.elapsed();
                }
                !held
            });
            if t0.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{mode:?}: {name} did not reach {} within 30 s",
                    pending
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        out.converged.push(last);
    }
    let busy = busy0.elapsed().as_secs_f64() / 60.0;
    let cpu1 = cpu(nodes);
    out.busy_cpu
        .push(cpu1.iter().zip(&cpu0).map(|(b, a)| b - a).sum::<f64>() / NODES as f64 / busy);
    std::thread::sleep(Duration::from_secs(2));
    let cpu2 = cpu(nodes);
    std::thread::sleep(idle);
    let cpu3 = cpu(nodes);
    let minutes = idle.as_secs_f64() / 60.0;
    let per_node: Vec<f64> = cpu3
        .iter()
        .zip(&cpu2)
        .map(|(b, a)| (b - a) / minutes)
        .collect();
    out.idle_cpu
        .push(per_node.iter().sum::<f64>() / NODES as f64);
    out.idle_cpu_max
        .push(per_node.iter().copied().fold(0.0, f64::max));
    let rss: Vec<f64> = nodes.iter().map(|n| rss_mib(n.pid()).0).collect();
    out.rss.push(rss.iter().sum::<f64>() / NODES as f64);
    out.rss_max.push(rss.iter().copied().fold(0.0, f64::max));
    let live = nodes
        .iter()
        .filter(|n| Path::new(&format!("/proc/{}", n.pid())).exists());
    if live.count() < NODES {
        bail!("{mode:?}: a node exited during the round");
    }
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Median of `xs` (0 when empty).
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

/// `deorch bench cluster-auth`: `rounds` rounds, each starting five nodes
/// with authentication off, then five with it on, applying `docs`
/// documents and idling `idle` in each.
pub fn run(docs: usize, rounds: usize, idle: Duration) -> anyhow::Result<()> {
    let owner = PrivateKey::generate(Network::Mainnet);
    let mut off = Figures::default();
    let mut on = Figures::default();
    let load0 = loadavg();
    let t0 = Instant::now();
    for r in 0..rounds {
        for (mode, out) in [(Mode::Off, &mut off), (Mode::On, &mut on)] {
            eprintln!("round {}/{rounds}: authentication {mode:?}", r + 1);
            round(mode, &owner, r, docs, idle, out)?;
        }
    }
    let wall = t0.elapsed();
    let p_off = percentiles(&mut off.converged);
    let p_on = percentiles(&mut on.converged);
    let a_off = percentiles(&mut off.apply);
    let a_on = percentiles(&mut on.apply);
    let ms = |d: &[Duration]| -> Vec<f64> { d.iter().map(|d| d.as_secs_f64() * 1e3).collect() };
    let row = |what: &str, off: f64, on: f64, unit: &str, digits: usize| {
        let ratio = if off > 0.0 {
            format!("{:.2}", on / off)
        } else {
            "-".into()
        };
        println!("| {what} | {off:.digits$}{unit} | {on:.digits$}{unit} | {ratio} |");
    };
    println!(
        "{NODES} node processes per mode, {docs} owner-signed Networks applied on n1 one at a time, {rounds} rounds (modes alternate), idle window {} s; load average {load0} before, {} after; {:.0} s wall",
        idle.as_secs(),
        loadavg(),
        wall.as_secs_f64()
    );
    println!();
    println!(
        "| what | off (`--gossip-verify unsigned`) | on (signed, admitted keys, Noise) | on/off |"
    );
    println!("|---|---|---|---|");
    row(
        "last node started → all 5 see the other 4 (median of rounds)",
        median(&ms(&off.joined)),
        median(&ms(&on.joined)),
        " ms",
        0,
    );
    row(
        "apply answered on n1 → in all 5 stores, p50",
        p_off.p50,
        p_on.p50,
        " ms",
        1,
    );
    row("p95", p_off.p95, p_on.p95, " ms", 1);
    row("max", p_off.max, p_on.max, " ms", 1);
    row("`apply` call on n1, p50", a_off.p50, a_on.p50, " ms", 2);
    row(
        "CPU-s per node per minute while documents spread (median of rounds)",
        median(&off.busy_cpu),
        median(&on.busy_cpu),
        "",
        3,
    );
    row(
        "CPU-s per node per minute idle, mean of nodes (median of rounds)",
        median(&off.idle_cpu),
        median(&on.idle_cpu),
        "",
        3,
    );
    row(
        "idle, busiest node",
        median(&off.idle_cpu_max),
        median(&on.idle_cpu_max),
        "",
        3,
    );
    row(
        "RSS per node after the idle window, mean of nodes",
        median(&off.rss),
        median(&on.rss),
        " MiB",
        1,
    );
    row(
        "RSS, largest node",
        median(&off.rss_max),
        median(&on.rss_max),
        " MiB",
        1,
    );
    println!(
        "\n({} convergence samples per mode; idle CPU per round, off: {:?}, on: {:?})",
        off.converged.len(),
        off.idle_cpu
            .iter()
            .map(|x| (x * 1e3).round() / 1e3)
            .collect::<Vec<_>>(),
        on.idle_cpu
            .iter()
            .map(|x| (x * 1e3).round() / 1e3)
            .collect::<Vec<_>>()
    );
    Ok(())
}
