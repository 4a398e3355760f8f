//! `deorch bench networks` and `deorch bench load`: what a node daemon
//! costs with many Networks beside its VMs, and how its local API answers
//! while a large file loads. Both run a real node process (fake
//! hypervisor, storage and host network) and read its CPU time and RSS
//! from `/proc`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::api::{client, Request, Response};
use crate::bench::percentiles;

/// A node daemon of this executable on an empty manifest directory.
struct BenchNode {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    manifests: PathBuf,
}

impl BenchNode {
    fn start(tag: &str) -> anyhow::Result<BenchNode> {
        let dir = std::env::temp_dir().join(format!("deorch-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).context("creating the manifest directory")?;
        let socket = dir.join("node.sock");
        let exe = std::env::current_exe().context("finding this executable")?;
        let child = Command::new(&exe)
            .args(["--log", "warn", "node", "run", "--name", "bench"])
            .args(["--hypervisor", "fake", "--storage", "fake"])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--manifests")
            .arg(&manifests)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("node.log")).context("creating node.log")?,
            ))
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let node = BenchNode {
            child,
            dir,
            socket,
            manifests,
        };
        node.wait_objects(1, Duration::from_secs(30))?;
        // The first reconcile pass of the node's own objects.
        node.settle(Duration::from_secs(30));
        Ok(node)
    }

    fn objects(&self) -> Option<usize> {
        match client::call(&self.socket, &Request::Info, Duration::from_secs(30)) {
            Ok(Response::Info(info)) => Some(info.objects),
            _ => None,
        }
    }

    fn wait_objects(&self, n: usize, limit: Duration) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.objects().is_some_and(|have| have >= n) {
                return Ok(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "the node did not hold {n} objects within {limit:?} (log: {})",
            self.dir.join("node.log").display()
        )
    }

    /// CPU seconds (user + system) the node has used.
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    /// (VmRSS, VmHWM) in MiB.
    fn rss_mib(&self) -> (f64, f64) {
        rss_mib(self.child.id())
    }

    /// Wait until the node uses less than 2 % of a core over a second.
    fn settle(&self, limit: Duration) -> Duration {
        let t0 = Instant::now();
        let mut last = self.cpu_seconds();
        while t0.elapsed() < limit {
            std::thread::sleep(Duration::from_secs(1));
            let now = self.cpu_seconds();
            if now - last < 0.02 {
                return t0.elapsed().saturating_sub(Duration::from_secs(1));
            }
            last = now;
        }
        limit
    }

    /// Drop `text` into the manifest directory as `name`, atomically.
    fn drop_file(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.manifests.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).context("writing a manifest")?;
        std::fs::rename(&tmp, self.manifests.join(name)).context("renaming a manifest")?;
        Ok(())
    }
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU seconds (user + system) process `pid` has used.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // /proc counts in USER_HZ, 100 on every Linux ABI.
    ticks as f64 / 100.0
}

/// (VmRSS, VmHWM) of process `pid` in MiB.
pub(crate) fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn network_doc(out: &mut String, namespace: &str, i: usize) {
    let _ = write!(
        out,
        "---\napiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata:\n  name: net-{i:05}\n  namespace: {namespace}\nspec:\n  ipv4:\n    subnet: 10.{}.{}.0/24\n    gateway: 10.{}.{}.1\n",
        i / 256,
        i % 256,
        i / 256,
        i % 256
    );
}

fn vm_doc(out: &mut String, namespace: &str, i: usize, network: Option<usize>) {
    let _ = write!(
        out,
        "---\napiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: vm-{i:05}\n  namespace: {namespace}\nspec:\n  cpu: 1\n  memory: 64Mi\n"
    );
    if let Some(n) = network {
        let _ = write!(
            out,
            "  nics:\n    - name: eth0\n      network: net-{n:05}\n"
        );
    }
}

/// `networks` Networks and `vms` VMs (each on one of the first hundred
/// networks) in one namespace, dropped into a running node: CPU seconds
/// until the node is idle again, and its RSS.
pub fn networks(networks: usize, vms: usize) -> anyhow::Result<()> {
    let node = BenchNode::start("networks")?;
    let (rss0, _) = node.rss_mib();
    let base = node.objects().unwrap_or(0);
    let mut nets = String::new();
    for i in 0..networks {
        network_doc(&mut nets, "bench", i);
    }
    let mut machines = String::new();
    for i in 0..vms {
        vm_doc(&mut machines, "bench", i, Some(i % networks.clamp(1, 100)));
    }
    let cpu0 = node.cpu_seconds();
    let t0 = Instant::now();
    node.drop_file("networks.yaml", &nets)?;
    node.drop_file("vms.yaml", &machines)?;
    node.wait_objects(base + networks + vms, Duration::from_secs(600))?;
    let admitted = t0.elapsed();
    node.settle(Duration::from_secs(900));
    let cpu = node.cpu_seconds() - cpu0;
    // Steady state: what the node holds once it has been quiet a while.
    std::thread::sleep(Duration::from_secs(6));
    let (rss, hwm) = node.rss_mib();
    // Then VMs arrive one at a time through the API, as users add them:
    // what each costs with the networks there.
    let more = 100;
    let cpu1 = node.cpu_seconds();
    for i in 0..more {
        let mut one = String::new();
        vm_doc(&mut one, "bench", vms + i, Some(i % networks.clamp(1, 100)));
        match client::call(
            &node.socket,
            &Request::Apply {
                filename: "bench.yaml".into(),
                yaml: one,
                dry_run: false,
            },
            Duration::from_secs(60),
        ) {
            Ok(Response::Applied { .. }) => {}
            other => bail!("applying a VM: {other:?}"),
        }
    }
    node.settle(Duration::from_secs(600));
    let cpu_more = node.cpu_seconds() - cpu1;
    println!("{networks} Networks + {vms} VMs in one namespace (fake drivers):");
    println!("| what | value |\n|---|---|");
    println!(
        "| dropped -> all admitted | {:.2} s |",
        admitted.as_secs_f64()
    );
    println!("| CPU seconds until idle (user + system) | {cpu:.2} |");
    println!("| RSS before -> quiet after (peak) | {rss0:.1} -> {rss:.1} MiB ({hwm:.1}) |");
    println!(
        "| {more} more VMs, one API apply each: CPU seconds until idle | {cpu_more:.2} ({:.1} ms per VM) |",
        cpu_more * 1e3 / more as f64
    );
    Ok(())
}

/// The local API's latency (`Info`, one call after another) while a file
/// of `objects` VMs loads.
pub fn load(objects: usize) -> anyhow::Result<()> {
    let node = BenchNode::start("load")?;
    let base = node.objects().unwrap_or(0);
    let mut text = String::new();
    for i in 0..objects {
        vm_doc(&mut text, "load", i, None);
    }
    // Idle figure first, same client.
    let idle = sample(&node.socket, Duration::from_secs(2));
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let pinger = {
        let (stop, samples, socket) = (stop.clone(), samples.clone(), node.socket.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = matches!(
                    client::call(&socket, &Request::Info, Duration::from_secs(60)),
                    Ok(Response::Info(_))
                );
                let took = t.elapsed();
                samples.lock().unwrap().push((ok, took, t));
                std::thread::sleep(Duration::from_millis(10).saturating_sub(took));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let cpu0 = node.cpu_seconds();
    let t0 = Instant::now();
    node.drop_file("big.yaml", &text)?;
    let admitted = node.wait_objects(base + objects, Duration::from_secs(600))?;
    let settled = node.settle(Duration::from_secs(60)) + admitted;
    stop.store(true, Ordering::Relaxed);
    let _ = pinger.join();
    let cpu = node.cpu_seconds() - cpu0;
    let _ = t0;
    let all = samples.lock().unwrap().clone();
    let failed = all.iter().filter(|(ok, _, _)| !ok).count();
    let mut slowest = all.clone();
    slowest.sort_by_key(|(_, d, _)| std::cmp::Reverse(*d));
    for (_, d, at) in slowest.iter().take(5) {
        eprintln!(
            "slow call: {:.1} ms at {:.2} s after the drop",
            d.as_secs_f64() * 1e3,
            at.saturating_duration_since(t0).as_secs_f64()
        );
    }
    let mut during: Vec<Duration> = all.iter().map(|(_, d, _)| *d).collect();
    let n = during.len();
    let busy = percentiles(&mut during);
    let mut idle = idle;
    let quiet = percentiles(&mut idle);
    println!(
        "local API (`Info`, one call after another) while a {objects}-object file ({:.1} MB) loads:",
        text.len() as f64 / 1e6
    );
    println!("| what | p50 ms | p99 ms | max ms |\n|---|---|---|---|");
    println!(
        "| idle node | {:.2} | {:.2} | {:.2} |",
        quiet.p50, quiet.p99, quiet.max
    );
    println!(
        "| while the file loads and its objects reconcile ({n} calls, {failed} failed) | {:.2} | {:.2} | {:.2} |",
        busy.p50, busy.p99, busy.max
    );
    println!(
        "dropped -> admitted {:.2} s, -> idle {:.2} s, {cpu:.2} CPU-s",
        admitted.as_secs_f64(),
        settled.as_secs_f64()
    );
    Ok(())
}

fn sample(socket: &Path, for_: Duration) -> Vec<Duration> {
    let t0 = Instant::now();
    let mut out = Vec::new();
    while t0.elapsed() < for_ {
        let t = Instant::now();
        let _ = client::call(socket, &Request::Info, Duration::from_secs(10));
        out.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    out
}
