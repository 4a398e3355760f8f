//! `deorch bench metrics`: the time of one `GET /metrics` as a scraper
//! takes it (a new TCP connection, the request, the whole answer read)
//! from a node's HTTP API with `--objects` objects in its store, beside a
//! scrape of Prometheus' own node exporter (Debian's
//! `prometheus-node-exporter`) on the same machine in the same run.
//!
//! The node side is the node's own HTTP API and metrics ([`crate::http`],
//! [`crate::metrics`]) over a store filled with VMs, a quarter of them
//! with a phase in their status; the scraper's address is in
//! `--metrics-allow` (no session). Two rounds: a quiet store, then one
//! VM's status written before each scrape (a busy node: the changed
//! record is decoded again). No QEMU runs, so the per-VM figures (one
//! read of `/proc/PID/stat` and `/proc/PID/status` per VM running) are
//! not in the figure.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::admission::{Admission, AdmissionConfig};
use crate::bench::percentiles;
use crate::http::client::{request, NodeUrl};
use crate::identity::{AddressType, Network, PrivateKey};
use crate::model::{Kind, ObjectKey, DEFAULT_NAMESPACE};
use crate::store::{SourceId, Store};

/// `deorch bench metrics`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Objects (VMs) in the store.
    #[arg(long, default_value_t = 10_000)]
    pub objects: usize,
    /// Scrapes per round.
    #[arg(long, default_value_t = 200)]
    pub scrapes: usize,
    /// The node exporter to measure beside (skipped, and said so, when
    /// it is not installed).
    #[arg(long, default_value = "prometheus-node-exporter")]
    pub node_exporter: String,
}

/// One scrape: its time and the answer's size.
fn scrape(url: &NodeUrl, path: &str) -> anyhow::Result<(Duration, usize)> {
    let t = Instant::now();
    let r = request(url, "GET", path, None, None, b"", Duration::from_secs(10))?;
    let took = t.elapsed();
    anyhow::ensure!(
        r.status == 200,
        "GET {path}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    Ok((took, r.body.len()))
}

/// `n` scrapes of `url`, `before` run ahead of each (untimed).
fn scrapes(
    url: &NodeUrl,
    path: &str,
    n: usize,
    mut before: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0;
    for i in 0..n {
        before(i)?;
        let (t, b) = scrape(url, path)?;
        times.push(t);
        bytes = b;
    }
    let p = percentiles(&mut times);
    Ok(format!(
        "{:.2} ms | {:.2} ms | {:.2} ms | {bytes} B",
        p.p50, p.p95, p.max
    ))
}

/// The node exporter, listening on a free loopback port.
struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_exporter(program: &str) -> anyhow::Result<Option<(Exporter, NodeUrl)>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = match Command::new(program)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("starting {program}: {e}")),
    };
    let exporter = Exporter(child);
    let url = NodeUrl::parse(&format!("http://127.0.0.1:{port}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrape(&url, "/metrics").is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{program} did not answer on 127.0.0.1:{port} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Some((exporter, url)))
}

/// Run the benchmark and print a Markdown table.
pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = crate::bench::scratch("metrics")?;
    let store = Arc::new(Store::open(&dir.join("store.redb"))?);
    let source = SourceId("bench".into());
    let key = |i: usize| ObjectKey {
        kind: Kind::VirtualMachine,
        namespace: DEFAULT_NAMESPACE.into(),
        name: format!("vm-{i:05}"),
    };
    for i in 0..args.objects {
        store.apply(&crate::bench::bench_vm(i), &source)?;
        if i % 4 == 0 {
            store.set_status(&key(i), serde_json::json!({"phase": "Running"}))?;
        }
    }
    let owner_key = PrivateKey::generate(Network::Mainnet);
    let owner = owner_key.address(AddressType::P2wpkh)?.to_string();
    let admission = Admission::new(
        store.clone(),
        AdmissionConfig {
            cluster: Some(owner.clone()),
            owner: Some(owner.clone()),
        },
    );
    let metrics = crate::metrics::Metrics::new(store.clone(), vec!["127.0.0.0/8".parse()?]);
    metrics.set_admission(admission.clone());
    admission.set_metrics(metrics.clone());
    metrics.set_queue(Arc::new(crate::reconcile::queue::WorkQueue::new(
        Duration::from_millis(100),
        Duration::from_secs(60),
    )));
    let api = crate::http::HttpApi::new(
        admission,
        crate::http::HttpSettings {
            cluster_owner: owner,
            node_key: PrivateKey::generate(Network::Mainnet),
            trusted_nodes: Vec::new(),
            login_ttl: Duration::from_secs(60),
            session_ttl: Duration::from_secs(3600),
            challenge_limit: None,
        },
    )?;
    api.set_metrics(metrics);
    let rt = crate::bench::runtime()?;
    let (stop, shutdown) = watch::channel(false);
    let addr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        tokio::spawn(crate::http::serve(
            crate::http::HttpListener::Plain(l),
            api,
            shutdown,
        ));
        anyhow::Ok(addr)
    })?;
    let url = NodeUrl::parse(&format!("http://{addr}"))?;
    // The first scrape decodes the store once (the shared records).
    scrape(&url, "/metrics")?;
    println!(
        "`GET /metrics` over plain HTTP on loopback, a new connection each, {} scrapes per row, {} objects in the node's store:\n",
        args.scrapes, args.objects
    );
    println!("| what | p50 | p95 | max | answer |\n|---|---|---|---|---|");
    let quiet = scrapes(&url, "/metrics", args.scrapes, |_| Ok(()))?;
    println!("| deorch node, quiet store | {quiet} |");
    let busy = scrapes(&url, "/metrics", args.scrapes, |i| {
        let k = key((i * 37) % args.objects.max(1));
        store.set_status(&k, serde_json::json!({"phase": "Running", "seen": i}))?;
        Ok(())
    })?;
    println!("| deorch node, a VM status written before each | {busy} |");
    match start_exporter(&args.node_exporter)? {
        Some((_exporter, url)) => {
            let peer = scrapes(&url, "/metrics", args.scrapes, |_| Ok(()))?;
            println!(
                "| {} (default collectors) | {peer} |",
                args.node_exporter
            );
        }
        None => println!(
            "| {}: not installed, no peer measured (Debian: apt install prometheus-node-exporter) | | | | |",
            args.node_exporter
        ),
    }
    let _ = stop.send(true);
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
