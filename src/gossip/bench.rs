//! `deorch bench gossip`: convergence time of a new document against the
//! cluster size, with and without loss, bytes per node per second, and
//! the wall-clock time of one placement decision over 10,000 nodes.
//!
//! Convergence runs on the simulated network (virtual time, 200 ms
//! rounds, 1-20 ms one-way delay). Up to 1,000 nodes it runs the whole
//! node (SWIM membership by foca included); the "static peers" rows replace SWIM
//! by a fixed peer list so that 10,000 nodes fit in one process (10,000
//! member tables of 10,000 entries would not), with the same push and
//! anti-entropy code.

use std::sync::Arc;
use std::time::Instant;

use super::placement::{self, VmRequest};
use super::rng::Rng;
use super::sim::{Cluster, ClusterConfig, NetConfig, SIM_EPOCH};
use super::verify::AcceptAll;
use super::wire::{DocKey, Document, NodeId, NodeStatus, Resources, TagSet};
use super::GossipConfig;
use crate::model::{Performance, TagSelector};

struct Run {
    converge_ms: Option<u64>,
    bytes_per_node_s: f64,
    idle_bytes_per_node_s: f64,
}

fn one(n: usize, loss: f64, swim: bool, seed: u64) -> Run {
    let cfg = ClusterConfig {
        nodes: n,
        seed,
        gossip: GossipConfig::default(),
        net: NetConfig {
            loss,
            ..NetConfig::default()
        },
        preload: swim,
        static_peers: !swim,
        statuses: false,
        verifier: Arc::new(AcceptAll),
        auth: false,
    };
    let mut cl = Cluster::new(&cfg);
    cl.run_for(2_000);
    // Idle traffic (probes, digests) over 5 s.
    let b0 = cl.net.borrow().bytes_sent;
    cl.run_for(5_000);
    let idle = (cl.net.borrow().bytes_sent - b0) as f64 / n as f64 / 5.0;
    let doc = Document {
        key: DocKey::new("VirtualMachine", "default", "bench"),
        generation: 1,
        deleted: false,
        written_ms: SIM_EPOCH,
        body: vec![b'x'; 1024],
    };
    let b1 = cl.net.borrow().bytes_sent;
    let t0 = cl.now;
    cl.publish(0, doc).expect("accepted");
    let mut converge_ms = None;
    while cl.now < t0 + 60_000 {
        cl.run_for(10);
        if cl.have_count == n {
            converge_ms = Some(cl.now - t0);
            break;
        }
    }
    let span = (cl.now - t0).max(1) as f64 / 1000.0;
    let bytes = (cl.net.borrow().bytes_sent - b1) as f64 / n as f64 / span;
    Run {
        converge_ms,
        bytes_per_node_s: bytes,
        idle_bytes_per_node_s: idle,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Run the benchmark and print Markdown tables.
pub fn run(sizes: &[usize], runs: u64) -> anyhow::Result<()> {
    println!("## Convergence of a new 1 KiB document (virtual time, 200 ms rounds, fan-out 3)\n");
    println!("median of {runs} seeds; bytes per node per second while it spreads, and idle\n");
    println!("| nodes | membership | loss | converged (ms) | max (ms) | kbit/s per node spreading | kbit/s per node idle |");
    println!("|---|---|---|---|---|---|---|");
    for &n in sizes {
        for swim in [true, false] {
            if swim && n > 1_000 {
                continue;
            }
            for loss in [0.0, 0.10] {
                let wall = Instant::now();
                let rs: Vec<Run> = (0..runs).map(|s| one(n, loss, swim, 1 + s)).collect();
                let failed = rs.iter().filter(|r| r.converge_ms.is_none()).count();
                let times: Vec<f64> = rs
                    .iter()
                    .filter_map(|r| r.converge_ms)
                    .map(|t| t as f64)
                    .collect();
                let (med, max) = if times.is_empty() {
                    (f64::NAN, f64::NAN)
                } else {
                    (
                        median(times.clone()),
                        times.iter().cloned().fold(0.0, f64::max),
                    )
                };
                println!(
                    "| {n} | {} | {:.0} % | {med:.0}{} | {max:.0} | {:.1} | {:.1} |",
                    if swim { "SWIM (foca)" } else { "static peers" },
                    loss * 100.0,
                    if failed > 0 {
                        format!(" ({failed} runs did not converge in 60 s)")
                    } else {
                        String::new()
                    },
                    median(
                        rs.iter()
                            .map(|r| r.bytes_per_node_s * 8.0 / 1000.0)
                            .collect()
                    ),
                    median(
                        rs.iter()
                            .map(|r| r.idle_bytes_per_node_s * 8.0 / 1000.0)
                            .collect()
                    ),
                );
                eprintln!(
                    "  ({n} nodes, loss {loss}, swim {swim}: {:?} wall)",
                    wall.elapsed()
                );
            }
        }
    }
    placement_time(10_000);
    Ok(())
}

/// Wall-clock time of `placement::best` over `n` node statuses.
fn placement_time(n: usize) {
    let mut rng = Rng::new(42);
    let nodes: Vec<NodeStatus> = (0..n)
        .map(|i| {
            let mut tags = TagSet::default();
            tags.microcosm.insert("rack".into(), format!("r{}", i % 40));
            tags.macrocosm
                .insert("region".into(), ["eu", "us", "ap"][i % 3].into());
            tags.intercosm.insert("team".into(), format!("t{}", i % 7));
            let total = Resources {
                cpu_millis: 64_000,
                memory: (32 + rng.below(480) as u64) << 30,
                storage: 8 << 40,
            };
            let performance = if i % 2 == 0 {
                Performance::High
            } else {
                Performance::Low
            };
            NodeStatus::idle(
                NodeId(format!("bc1qnode{i:05}")),
                1,
                tags,
                performance,
                total,
            )
        })
        .collect();
    let sel: TagSelector = serde_json::from_value(serde_json::json!({
        "macrocosm": {"matchLabels": {"region": "eu"}},
        "microcosm": {"matchExpressions": [{"key": "rack", "operator": "NotIn", "values": ["r1", "r2"]}]}
    }))
    .expect("selector");
    for (label, selector, perf) in [
        ("no filter", None, None),
        (
            "selector + performance: high",
            Some(sel),
            Some(Performance::High),
        ),
    ] {
        let mut times = Vec::new();
        for v in 0..2_000 {
            let req = VmRequest {
                vm: DocKey::new("VirtualMachine", "default", &format!("vm{v}")),
                selector: selector.clone(),
                performance: perf,
                need: Resources {
                    cpu_millis: 2_000,
                    memory: 4 << 30,
                    storage: 0,
                },
                holds_data: false,
                exclude: None,
                only: None,
                accel: None,
                cpu: None,
                image: None,
                fastr: false,
                holders: None,
                copy_source: None,
                strict: false,
                prefer: Vec::new(),
            };
            let t = Instant::now();
            let best = placement::best(&req, &nodes);
            times.push(t.elapsed().as_secs_f64() * 1e6);
            assert!(best.is_some());
        }
        times.sort_by(|a, b| a.total_cmp(b));
        println!(
            "\nplacement decision over {n} nodes, {label}: p50 {:.0} µs, p99 {:.0} µs (2,000 VMs)",
            times[times.len() / 2],
            times[times.len() * 99 / 100]
        );
    }
}

/// CPU time this thread has run so far (the simulation is one thread):
/// the first field of /proc/thread-self/schedstat, in ns.
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// One minute's figures of a simulated cluster.
struct AuthRun {
    cpu_first_min: f64,
    cpu_second_min: f64,
    bytes_per_node_s: f64,
    converge_ms: Option<u64>,
    handshakes: u64,
    placed: usize,
}

fn auth_run(n: usize, auth: bool, seed: u64) -> AuthRun {
    let cfg = ClusterConfig {
        nodes: n,
        seed,
        gossip: GossipConfig::default(),
        net: NetConfig::default(),
        preload: true,
        static_peers: false,
        statuses: true,
        verifier: Arc::new(AcceptAll),
        auth,
    };
    let mut cl = Cluster::new(&cfg);
    // A minute of a fresh cluster (sessions made as peers are first
    // contacted), then two more, with 20 VMs placed in each and, in the
    // last, a document to converge.
    let mut mins = [0.0; 3];
    let b0 = cl.net.borrow().bytes_sent;
    let mut converge_ms = None;
    for (m, min) in mins.iter_mut().enumerate() {
        let c0 = cpu_seconds();
        for v in 0..20 {
            cl.publish_vm(v % n, &format!("m{m}-vm{v}"), 1);
            cl.run_for(1_000);
        }
        if m == 2 {
            let doc = Document {
                key: DocKey::new("Network", "default", "bench"),
                generation: 1,
                deleted: false,
                written_ms: cl.now,
                body: vec![b'x'; 1024],
            };
            let t0 = cl.now;
            cl.publish(0, doc).expect("accepted");
            while cl.now < t0 + 20_000 {
                cl.run_for(10);
                if cl.have_count == n {
                    converge_ms = Some(cl.now - t0);
                    break;
                }
            }
        }
        let end = SIM_EPOCH + (m as u64 + 1) * 60_000;
        cl.run_until(end.max(cl.now));
        *min = (cpu_seconds() - c0) / n as f64;
    }
    let span = (cl.now - SIM_EPOCH) as f64 / 1000.0;
    let bytes = cl.net.borrow().bytes_sent;
    AuthRun {
        cpu_first_min: mins[0],
        cpu_second_min: mins[2],
        bytes_per_node_s: (bytes - b0) as f64 / n as f64 / span,
        converge_ms,
        handshakes: cl
            .channels
            .iter()
            .flatten()
            .map(|c| c.stats().handshakes)
            .sum(),
        placed: cl.running.values().filter(|r| r.len() == 1).count(),
    }
}

/// `deorch bench gossip-auth`: the same simulated cluster with node
/// authentication off and on (keys, signed claims and statuses, the Noise
/// channel): CPU-seconds per node per simulated minute (real CPU of this
/// process, one thread: the virtual clock makes crypto look free, the CPU
/// does not), bytes, convergence, and the cost of one handshake.
pub fn auth(sizes: &[usize]) -> anyhow::Result<()> {
    println!("# Node authentication off vs on, simulated cluster (virtual time, 200 ms rounds, 1-20 ms delay)");
    println!("| nodes | auth | CPU s/node/min, minute 1 (cold) | minute 3 (warm) | bytes/node/s | 1 KiB doc converges | handshakes | VMs placed once |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for &n in sizes {
        for auth in [false, true] {
            let r = auth_run(n, auth, 7);
            println!(
                "| {n} | {} | {:.4} | {:.4} | {:.0} | {} | {} | {}/60 |",
                if auth { "on" } else { "off" },
                r.cpu_first_min,
                r.cpu_second_min,
                r.bytes_per_node_s,
                r.converge_ms.map_or("no".into(), |m| format!("{m} ms")),
                r.handshakes,
                r.placed,
            );
        }
    }
    let (us, rtt) = handshake_cost(2_000);
    println!();
    println!("Handshake per peer (Noise XX + binding check, both ends, this machine): {us:.0} µs CPU, {rtt} messages (1.5 round trips) before the first datagram is delivered");
    Ok(())
}

/// CPU per completed handshake between two channels in this process
/// (both ends' work), and the messages one takes.
pub fn handshake_cost(count: usize) -> (f64, usize) {
    use super::channel::{Channel, ChannelConfig, ChannelKey};
    use super::trust::Members;
    use super::verify::MembersOnly;
    use crate::identity::{AddressType, Network, PrivateKey};
    let ka = PrivateKey::generate(Network::Regtest);
    let kb = PrivateKey::generate(Network::Regtest);
    let members = Arc::new(Members::new("bench"));
    members.set(
        &[&ka, &kb]
            .iter()
            .map(|k| {
                let a = k
                    .address(AddressType::P2wpkh)
                    .expect("compressed")
                    .to_string();
                (a.clone(), a)
            })
            .collect(),
    );
    let v: Arc<dyn super::Verifier> = Arc::new(MembersOnly {
        members,
        documents: AcceptAll,
    });
    let aa: super::NodeAddr = "127.0.0.1:1".parse().expect("address");
    let ba: super::NodeAddr = "127.0.0.1:2".parse().expect("address");
    let kb_ch = Arc::new(ChannelKey::new(&kb, "bench"));
    let ka_ch = Arc::new(ChannelKey::new(&ka, "bench"));
    let mut messages = 0;
    let t0 = Instant::now();
    for i in 0..count {
        // Fresh channels each round: a first contact every time.
        let mut a = Channel::new(
            ChannelConfig::default(),
            ka_ch.clone(),
            "bench",
            v.clone(),
            i as u64,
        );
        let mut b = Channel::new(
            ChannelConfig::default(),
            kb_ch.clone(),
            "bench",
            v.clone(),
            !(i as u64),
        );
        let mut wire = Vec::new();
        a.seal(0, ba, b"first", &mut wire);
        let mut delivered = false;
        let mut msgs = 0;
        while !delivered {
            let mut next = Vec::new();
            for (to, bytes) in wire.drain(..) {
                msgs += 1;
                if to == ba {
                    let mut out = Vec::new();
                    delivered |= b.open(0, aa, &bytes, &mut out).is_some();
                    next.extend(out);
                } else {
                    let mut out = Vec::new();
                    a.open(0, ba, &bytes, &mut out);
                    next.extend(out);
                }
            }
            assert!(!next.is_empty() || delivered, "handshake stalled");
            wire = next;
        }
        messages = msgs - 1;
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / count as f64;
    (us, messages)
}
