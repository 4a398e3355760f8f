//! `deorch bench`: the benchmarks whose figures are in `docs/PERFORMANCE.md`.
//! Each prints what it measured and the peer it was compared with in the
//! same run. They are commands, not timed tests: run them on a quiet
//! machine (`deorch bench all`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use notify::Watcher;
use tokio::sync::watch;

use crate::model::{
    vm::{Disk, DiskSource, Nic},
    AnyObject, Kind, Manifest, ObjectKey, Quantity, VirtualMachineSpec,
};
use crate::reconcile::{Drivers, Engine, EngineConfig};
use crate::source::dir::{DirConfig, DirSource};
use crate::source::Source;
use crate::store::{SourceId, Store};

/// Percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 95th percentile.
    pub p95: f64,
    /// Maximum.
    pub max: f64,
}

/// Nearest-rank percentiles of `samples` (durations).
pub fn percentiles(samples: &mut [Duration]) -> Percentiles {
    samples.sort();
    let at = |q: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1].as_secs_f64() * 1e3
    };
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// The benches' runtime: two workers, like the node on this machine.
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

pub(crate) fn scratch(tag: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("deorch-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn vm_doc(name: &str, memory_mi: u64) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: {name}\n  labels:\n    app: bench\nspec:\n  cpu: 2\n  memory: {memory_mi}Mi\n  disks:\n    - name: root\n      source:\n        spacesuit: tiny\n  nics:\n    - name: eth0\n      network: default\n"
    )
}

/// File written → reconcile started, over `count` drops, in one process
/// (directory source + store + engine with fake drivers), beside the raw
/// inotify latency of the same kind of write (the floor).
pub fn drop_latency(count: usize) -> anyhow::Result<()> {
    let dir = scratch("drop")?;
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let rt = runtime()?;
    let store = Arc::new(Store::open(&dir.join("store.redb"))?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let engine = Engine::new(
        store.clone(),
        Drivers::fake(),
        EngineConfig {
            node_name: "bench".into(),
            ..EngineConfig::default()
        },
    );
    let mut started = engine.started();
    let source = Box::new(DirSource::new(DirConfig {
        root: manifests.clone(),
        rescan_every: Duration::from_secs(3600),
        ..DirConfig::new(manifests.clone())
    }));
    rt.spawn(engine.run(stop_rx.clone()));
    let admission = crate::admission::Admission::new(store.clone(), Default::default());
    rt.spawn(source.run(admission, stop_rx));
    std::thread::sleep(Duration::from_millis(300));

    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("drop-{i}");
        let key = ObjectKey::new(Kind::VirtualMachine, None, &name);
        let path = manifests.join(format!("{name}.yaml"));
        let doc = vm_doc(&name, 128);
        let t0 = Instant::now();
        std::fs::write(&path, doc)?;
        let deadline = t0 + Duration::from_secs(10);
        let at = rt.block_on(async {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, started.recv()).await {
                    Ok(Ok(ev)) if ev.key == key => return Ok(ev.at),
                    Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                    Ok(Err(e)) => bail!("engine stopped: {e}"),
                    Err(_) => bail!("no reconcile of {key} within 10 s"),
                }
            }
        })?;
        samples.push(at.saturating_duration_since(t0));
    }
    let _ = stop_tx.send(true);
    let ours = percentiles(&mut samples);

    // The floor: a bare inotify watcher seeing the same kind of write.
    let raw_dir = dir.join("raw");
    std::fs::create_dir_all(&raw_dir)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if matches!(
                ev.kind,
                notify::EventKind::Access(notify::event::AccessKind::Close(
                    notify::event::AccessMode::Write
                ))
            ) {
                let _ = tx.send(Instant::now());
            }
        }
    })?;
    watcher.watch(&raw_dir, notify::RecursiveMode::NonRecursive)?;
    let mut raw = Vec::with_capacity(count);
    for i in 0..count {
        let t0 = Instant::now();
        std::fs::write(raw_dir.join(format!("f{i}.yaml")), vm_doc("x", 128))?;
        let at = rx
            .recv_timeout(Duration::from_secs(5))
            .context("raw inotify event")?;
        raw.push(at.saturating_duration_since(t0));
    }
    let floor = percentiles(&mut raw);
    drop(watcher);
    rt.shutdown_timeout(Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&dir);

    println!("file written -> reconcile started, {count} drops:");
    println!("| what | p50 ms | p99 ms | max ms |\n|---|---|---|---|");
    println!(
        "| deorch (notify + parse + validate + store fsync + engine) | {:.2} | {:.2} | {:.2} |",
        ours.p50, ours.p99, ours.max
    );
    println!(
        "| bare inotify close-write event (floor) | {:.2} | {:.2} | {:.2} |",
        floor.p50, floor.p99, floor.max
    );
    println!("| kubelet static pods (file check period, documented) | 20000 | 20000 | 20000 |");
    Ok(())
}

/// Current resident set size of this process, bytes.
pub fn rss_bytes() -> u64 {
    vm_rss("/proc/self/status")
}

/// `VmRSS` of a `/proc/.../status` file, bytes (0 when unreadable).
fn vm_rss(status: &str) -> u64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

pub(crate) fn bench_vm(i: usize) -> AnyObject {
    let spec = VirtualMachineSpec {
        cpu: Some(crate::model::Cpu(2000)),
        memory: Some(Quantity((256 + (i as u64 % 512)) << 20)),
        disks: vec![Disk {
            name: "root".into(),
            source: DiskSource {
                spacesuit: Some("tiny".into()),
                ..Default::default()
            },
            ..Default::default()
        }],
        nics: vec![Nic {
            name: "eth0".into(),
            network: "default".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut m = Manifest::new(&format!("vm-{i:05}"), spec);
    m.metadata.labels = Some([("app".to_string(), format!("app-{}", i % 50))].into());
    AnyObject::VirtualMachine(m)
}

/// Apply `objects` VMs to a fresh store (each durable), then report the
/// process RSS, the apply rate and the reopen time.
pub fn store_footprint(objects: usize) -> anyhow::Result<()> {
    let dir = scratch("store")?;
    let before = rss_bytes();
    let path = dir.join("store.redb");
    let t0 = Instant::now();
    {
        let store = Store::open(&path)?;
        let source = SourceId("bench".into());
        for i in 0..objects {
            store.apply(&bench_vm(i), &source)?;
        }
        let apply_secs = t0.elapsed().as_secs_f64();
        let after = rss_bytes();
        println!("store with {objects} VirtualMachine objects:");
        println!("| what | value |\n|---|---|");
        println!(
            "| durable applies per second (one fsync'd transaction each) | {:.0} |",
            objects as f64 / apply_secs
        );
        println!(
            "| process RSS before opening the store | {:.1} MB |",
            before as f64 / 1e6
        );
        println!(
            "| process RSS with {objects} objects | {:.1} MB |",
            after as f64 / 1e6
        );
    }
    let t1 = Instant::now();
    let store = Store::open(&path)?;
    let n = store.list(None).len();
    println!(
        "| reopen and load the index ({n} objects) | {:.0} ms |",
        t1.elapsed().as_secs_f64() * 1e3
    );
    println!(
        "| store file size | {:.1} MB |",
        std::fs::metadata(&path)?.len() as f64 / 1e6
    );
    drop(store);
    // The figure that matters: a node daemon holding these objects.
    let socket = dir.join("node.sock");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).context("creating the manifest directory")?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut node = Command::new(&exe)
        .args([
            "--log",
            "warn",
            "node",
            "run",
            "--name",
            "bench",
            "--hypervisor",
            "fake",
        ])
        .arg("--state-dir")
        .arg(&dir)
        .arg("--manifests")
        .arg(&manifests)
        .arg("--socket")
        .arg(&socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answered = false;
    while Instant::now() < deadline {
        if let Ok(crate::api::Response::Info(info)) =
            crate::api::client::call(&socket, &crate::api::Request::Info, Duration::from_secs(5))
        {
            if info.objects >= objects {
                answered = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the engine's first pass over every object finish.
    std::thread::sleep(Duration::from_secs(3));
    let rss_kb = std::fs::read_to_string(format!("/proc/{}/status", node.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let _ = node.kill();
    let _ = node.wait();
    if !answered {
        bail!("the node did not come up with {objects} objects");
    }
    println!(
        "| RSS of a node daemon serving these {objects} objects (after its first reconcile pass) | {:.1} MB |",
        rss_kb as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `deorch validate` throughput on `documents` documents (100 per file),
/// beside `check-jsonschema` on the same documents (one per file, as it
/// takes them) when it is installed.
pub fn validate_throughput(documents: usize, schemas: &Path) -> anyhow::Result<()> {
    let dir = scratch("validate")?;
    let multi = dir.join("multi");
    let single = dir.join("single");
    std::fs::create_dir_all(&multi)?;
    std::fs::create_dir_all(&single)?;
    let per_file = 100;
    let mut written = 0;
    let mut singles = Vec::new();
    while written < documents {
        let n = per_file.min(documents - written);
        let docs: Vec<String> = (written..written + n)
            .map(|i| vm_doc(&format!("vm-{i}"), 128 + i as u64 % 512))
            .collect();
        std::fs::write(
            multi.join(format!("f{written:06}.yaml")),
            docs.join("---\n"),
        )?;
        for (j, d) in docs.iter().enumerate() {
            let p = single.join(format!("d{:06}.yaml", written + j));
            std::fs::write(&p, d)?;
            singles.push(p);
        }
        written += n;
    }
    let mut sink = std::io::sink();
    let t0 = Instant::now();
    let summary = crate::manifest::run_validate(std::slice::from_ref(&multi), &mut sink);
    let ours = t0.elapsed().as_secs_f64();
    if summary.errors != 0 || summary.documents != documents {
        bail!("benchmark corpus did not validate cleanly: {summary:?}");
    }
    let t1 = Instant::now();
    let summary1 = crate::manifest::run_validate(std::slice::from_ref(&single), &mut sink);
    let ours_single = t1.elapsed().as_secs_f64();
    println!("validation of {documents} VirtualMachine documents:");
    println!("| tool | layout | seconds | documents/s |\n|---|---|---|---|");
    println!(
        "| deorch validate (library, 1 thread) | {} files x {per_file} docs | {ours:.2} | {:.0} |",
        documents.div_ceil(per_file),
        documents as f64 / ours
    );
    println!(
        "| deorch validate (library, 1 thread) | {} files x 1 doc | {ours_single:.2} | {:.0} |",
        summary1.files,
        documents as f64 / ours_single
    );
    let schema = schemas.join("virtualmachine.json");
    match Command::new("check-jsonschema").arg("--version").output() {
        Ok(o) if o.status.success() => {
            let t2 = Instant::now();
            let status = Command::new("check-jsonschema")
                .arg("--schemafile")
                .arg(&schema)
                .args(&singles)
                .output()?;
            let peer = t2.elapsed().as_secs_f64();
            if !status.status.success() {
                bail!(
                    "check-jsonschema rejected the corpus: {}",
                    String::from_utf8_lossy(&status.stdout)
                );
            }
            let version = String::from_utf8_lossy(&o.stdout).trim().to_string();
            println!(
                "| {version} | {documents} files x 1 doc | {peer:.2} | {:.0} |",
                documents as f64 / peer
            );
        }
        _ => {
            println!("| check-jsonschema | not installed (pip install check-jsonschema) | - | - |")
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Replica latency: all disks of a VM (two volumes) captured through the
/// storage driver (`Storage::capture`, as the Replica reconciler does),
/// `count` times, while a writer rewrites one disk at full speed; in turn
/// with the same disks cloned at once (`clone_volumes`) and the bare
/// `zfs snapshot` command on the same pool; then the first open of each
/// replica (where a lazy one's clone is made). `zfs_root` is a dataset (e.g. `deorchtest/bench`); the `dir`
/// driver is measured without the writer (a running disk there is
/// snapshotted by QEMU, not through files).
pub fn replica_latency(count: usize, zfs_root: Option<&str>) -> anyhow::Result<()> {
    use crate::driver::{CloneRequest, LiveDisks, Storage};
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let rt = runtime()?;
    let run = |name: &str,
               storage: Arc<dyn Storage>,
               load: bool,
               peer: Option<String>|
     -> anyhow::Result<()> {
        rt.block_on(async {
            // The two disks as the VM reconciler makes a VM's: one group
            // (on zfs one `zfs snapshot -r` takes both, no pause needed).
            storage.group(&bench_group(), &["bench-root".into(), "bench-data".into()]);
            storage.create("bench-root", 256 << 20).await?;
            storage.create("bench-data", 256 << 20).await?;
            let img = storage.volume("bench-data").await?.path;
            let stop = Arc::new(AtomicBool::new(false));
            let written = Arc::new(AtomicU64::new(0));
            let writer = load.then(|| {
                let (stop, written) = (stop.clone(), written.clone());
                std::thread::spawn(move || {
                    let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
                    let block = vec![0x5au8; 1 << 20];
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..16 {
                            let _ = f.write_all(&block);
                        }
                        let _ = f.sync_data();
                        let _ = std::io::Seek::rewind(&mut f);
                        written.fetch_add(16, Ordering::Relaxed);
                    }
                })
            });
            let started = Instant::now();
            // In turn: a replica as the reconciler takes it (`capture`: on
            // zfs the snapshots only, clones made when first used), the
            // same disks cloned at once (`clone_volumes`: snapshots, then
            // clones; what a replica was before), and the peer, the bare
            // `zfs snapshot` of the disk being written (gc sweeps these
            // afterwards), so all three see the same load.
            let mut samples = Vec::with_capacity(count);
            let mut eager = Vec::with_capacity(count);
            let mut bare = Vec::with_capacity(count);
            for i in 0..count {
                let reqs = |kind: &str| {
                    ["root", "data"].map(|d| CloneRequest {
                        volume: format!("bench-{kind}{i}-{d}"),
                        source: format!("bench-{d}"),
                        size: None,
                    })
                };
                let t = Instant::now();
                storage.capture(&reqs("rep"), &LiveDisks::default()).await?;
                samples.push(t.elapsed());
                let t = Instant::now();
                storage.clone_volumes(&reqs("clone")).await?;
                eager.push(t.elapsed());
                if let Some(ds) = &peer {
                    let snap = format!("{ds}@peer{i}");
                    let t = Instant::now();
                    crate::driver::cmd::run("zfs", &["snapshot", &snap], Duration::from_secs(60))
                        .map_err(|e| anyhow::anyhow!("zfs snapshot: {}", e.message()))?;
                    bare.push(t.elapsed());
                }
            }
            let secs = started.elapsed().as_secs_f64();
            if peer.is_some() {
                let p = percentiles(&mut bare);
                println!(
                    "zfs snapshot (bare command, 1 disk, same load, in turn with the above): p50 {:.1} ms, p99 {:.1} ms over {count}",
                    p.p50, p.p99
                );
            }
            stop.store(true, Ordering::Relaxed);
            if let Some(w) = writer {
                let _ = w.join();
            }
            let p = percentiles(&mut samples);
            let e = percentiles(&mut eager);
            // A replica's clone is made when it is first used: opening one
            // volume of each replica (the first read or write) says what
            // that costs, once.
            let t = Instant::now();
            let mut first = Vec::with_capacity(count);
            for i in 0..count {
                let t = Instant::now();
                storage.volume(&format!("bench-rep{i}-root")).await?;
                first.push(t.elapsed());
            }
            let f = percentiles(&mut first);
            let opened = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let volumes = storage.list().await?;
            for v in &volumes {
                storage.destroy(v).await?;
            }
            let writing = if load {
                format!(
                    " while writing {:.0} MiB/s into one disk",
                    written.load(Ordering::Relaxed) as f64 / secs
                )
            } else {
                String::new()
            };
            println!(
                "{name}: replica of 2 disks (capture) p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {count}{writing}",
                p.p50, p.p99, p.max,
            );
            println!(
                "{name}: the same 2 disks cloned at once (clone_volumes) p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {count}, alternating with the replicas",
                e.p50, e.p99, e.max,
            );
            println!(
                "{name}: first open of a replica's volume (its clone made, no load) p50 {:.1} ms, p99 {:.1} ms ({opened:.0} ms for {count}); destroying all {} volumes took {:.0} ms",
                f.p50,
                f.p99,
                volumes.len(),
                t.elapsed().as_secs_f64() * 1e3
            );
            anyhow::Ok(())
        })
    };
    let dir = scratch("replica")?;
    run(
        "dir (qcow2)",
        Arc::new(crate::driver::dir::DirStorage::open(&dir)?),
        false,
        None,
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(root) = zfs_root {
        let backend = crate::driver::zfs::ZfsBackend::open(root)?;
        run(
            "zfs",
            Arc::new(crate::driver::cow::CowStorage::new(backend)),
            true,
            Some(format!("{root}/grp/{}/bench-data", bench_group())),
        )?;
    }
    Ok(())
}

/// The group of the replica bench's two disks, named as a VM's.
fn bench_group() -> String {
    crate::model::names::vm_group("bench", "replica")
}

/// Bytes allocated on disk under `dir` (what `du` counts).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// Space a ZFS dataset tree uses, once the pool has written it out.
fn zfs_used(dataset: &str) -> anyhow::Result<u64> {
    // zfs-fuse updates `used` when a transaction group commits (<= 5 s).
    let _ = crate::driver::cmd::run("sync", &[], Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(6));
    let out = crate::driver::cmd::run(
        "zfs",
        &["get", "-Hp", "-o", "value", "used", dataset],
        Duration::from_secs(60),
    )
    .map_err(|e| anyhow::anyhow!("zfs get used: {}", e.message()))?;
    Ok(out.stdout.trim().parse()?)
}

/// VM disk from a spacesuit: `count` clones of a spacesuit holding
/// `data_mib` MiB of written data; the time of each clone and the extra
/// space all of them use, beside a full copy of the same image with
/// `qemu-img convert` (what a non-linked clone costs).
pub fn clone_cost(count: usize, data_mib: u64, zfs_root: Option<&str>) -> anyhow::Result<()> {
    use crate::driver::Storage;
    let rt = runtime()?;
    let run = |name: &str,
               storage: Arc<dyn Storage>,
               used: &dyn Fn() -> anyhow::Result<u64>|
     -> anyhow::Result<()> {
        rt.block_on(async {
            storage.create("suit", 1 << 30).await?;
            let info = storage.volume("suit").await?;
            let w = Command::new("qemu-io")
                .args(["-f", info.format, "-c"])
                .arg(format!("write -P 0x5a 0 {data_mib}M"))
                .arg(&info.path)
                .output()?;
            if !w.status.success() {
                bail!("qemu-io write: {}", String::from_utf8_lossy(&w.stderr));
            }
            // The first clone freezes the spacesuit (dir: its layer); count
            // from there, as a node does once the spacesuit is in use.
            storage.clone_volume("vm0-root", "suit", None).await?;
            let before = used()?;
            let mut samples = Vec::with_capacity(count);
            for i in 1..=count {
                let t = Instant::now();
                storage
                    .clone_volume(&format!("vm{i}-root"), "suit", None)
                    .await?;
                samples.push(t.elapsed());
            }
            let extra = used()?.saturating_sub(before);
            let copy = std::env::temp_dir().join(format!("deorch-bench-copy-{}", std::process::id()));
            let t = Instant::now();
            let c = Command::new("qemu-img")
                .args(["convert", "-O", "qcow2", "-f", info.format])
                .arg(&info.path)
                .arg(&copy)
                .output()?;
            let copy_time = t.elapsed();
            let copy_size = std::fs::metadata(&copy).map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.blocks() * 512
            });
            let _ = std::fs::remove_file(&copy);
            if !c.status.success() {
                bail!("qemu-img convert: {}", String::from_utf8_lossy(&c.stderr));
            }
            let p = percentiles(&mut samples);
            println!(
                "{name}: VM disk from a spacesuit with {data_mib} MiB written: p50 {:.1} ms, p99 {:.1} ms over {count}; extra space {:.1} KiB per clone; full copy (qemu-img convert) {:.0} ms and {:.1} MiB",
                p.p50,
                p.p99,
                extra as f64 / count as f64 / 1024.0,
                copy_time.as_secs_f64() * 1e3,
                copy_size.unwrap_or(0) as f64 / (1 << 20) as f64,
            );
            for v in storage.list().await? {
                storage.destroy(&v).await?;
            }
            anyhow::Ok(())
        })
    };
    let dir = scratch("clone")?;
    let d = dir.clone();
    run(
        "dir (qcow2)",
        Arc::new(crate::driver::dir::DirStorage::open(&dir)?),
        &move || Ok(allocated(&d)),
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(root) = zfs_root {
        let backend = crate::driver::zfs::ZfsBackend::open(root)?;
        let r = root.to_string();
        run(
            "zfs",
            Arc::new(crate::driver::cow::CowStorage::new(backend)),
            &move || zfs_used(&r),
        )?;
    }
    Ok(())
}

/// Login round trip over loopback HTTPS: `GET /v1/auth/challenge`, sign
/// with a P2WPKH key, `POST /v1/auth/login`, `GET /v1/auth/whoami` with
/// the cookie; `count` times, one TLS connection per request, against an
/// in-process HTTP API (real store, node key, axum server). Beside it, the
/// floor: a bare `GET /v1/cluster` over the same client.
pub fn login_latency(count: usize, level2: Option<&[String]>) -> anyhow::Result<()> {
    use crate::http::client::{request, NodeUrl};
    use crate::identity::{AddressType, Network, PrivateKey};
    let dir = scratch("login")?;
    let rt = runtime()?;
    let store = Arc::new(Store::open(&dir.join("store.redb"))?);
    let owner = PrivateKey::generate(Network::Mainnet);
    let owner_addr = owner.address(AddressType::P2wpkh)?.to_string();
    let admission = crate::admission::Admission::new(
        store,
        crate::admission::AdmissionConfig {
            cluster: Some(owner_addr.clone()),
            owner: Some(owner_addr.clone()),
        },
    );
    let api = crate::http::HttpApi::new(
        admission.clone(),
        crate::http::HttpSettings {
            cluster_owner: owner_addr.clone(),
            node_key: PrivateKey::generate(Network::Mainnet),
            trusted_nodes: Vec::new(),
            login_ttl: Duration::from_secs(60),
            session_ttl: Duration::from_secs(3600),
            // The bench is one client doing thousands of logins.
            challenge_limit: None,
        },
    )?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // Over TLS, the default: a self-signed certificate, pinned.
    let tls = crate::http::tls::self_signed(&dir.join("tls"), &[]).map_err(anyhow::Error::msg)?;
    let (listener, bound) = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let bound = l.local_addr()?;
        anyhow::Ok((crate::http::tls::TlsListener::new(l, tls.config)?, bound))
    })?;
    let node = NodeUrl::parse(&format!("https://{bound}#sha256={}", tls.fingerprint))?;
    rt.spawn(crate::http::serve(
        crate::http::HttpListener::Tls(listener),
        api,
        stop_rx,
    ));
    // A user as real ones are: named by an owner-signed AccessPolicy,
    // which the login looks up.
    let user = PrivateKey::generate(Network::Mainnet);
    let user_addr = user.address(AddressType::P2wpkh)?.to_string();
    // With level 2: the rule asks a password of the user, checked against
    // the given directory server at every login.
    let (level2_yaml, password) = match level2 {
        Some([uri, bind_dn, user, password_file]) => (
            format!(
                "      level2:\n        servers:\n          - uri: {uri}\n            bindDn: \"{bind_dn}\"\n        usernames:\n          \"{user_addr}\": {user}\n"
            ),
            Some(
                std::fs::read_to_string(password_file)?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
        ),
        Some(_) => bail!("--level2 takes URI BIND_DN USER PASSWORD_FILE"),
        None => (String::new(), None),
    };
    let policy = crate::manifest::parse_str(
        Path::new("bench-policy.yaml"),
        &format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: AccessPolicy\nmetadata:\n  name: viewers\n  generation: 1\nspec:\n  rules:\n    - subjects: [\"{user_addr}\"]\n      role: viewer\n{level2_yaml}"
        ),
    );
    if !policy.diagnostics.is_empty() {
        bail!("the bench's policy: {:?}", policy.diagnostics);
    }
    let signed = crate::identity::sign_manifest(
        &policy.documents[0].object.to_value(),
        &owner_addr,
        &owner,
        AddressType::P2wpkh,
    )?;
    let mut batch = crate::admission::Batch::new(
        crate::store::SourceId("bench".into()),
        crate::admission::Trust::Signed,
    );
    batch.parse("<bench>", &serde_saphyr::to_string(&signed)?);
    if !admission.admit(batch)?.committed {
        bail!("the bench's AccessPolicy was refused");
    }
    let warmup = (count / 10).clamp(1, 50);
    let mut samples = Vec::with_capacity(count);
    let mut floor = Vec::with_capacity(count);
    for i in 0..count + warmup {
        let t0 = Instant::now();
        let r = request(
            &node,
            "GET",
            "/v1/cluster",
            None,
            None,
            b"",
            Duration::from_secs(10),
        )?;
        let t1 = Instant::now();
        if r.status != 200 {
            bail!("GET /v1/cluster: {}", r.status);
        }
        let (addr, token) =
            crate::cli::http::login_with(&node, &user, AddressType::P2wpkh, password.as_deref())?;
        let who = crate::cli::http::whoami_once(&node, &token)?;
        let t2 = Instant::now();
        if who != addr {
            bail!("whoami said {who}, expected {addr}");
        }
        if i >= warmup {
            floor.push(t1 - t0);
            samples.push(t2 - t1);
        }
    }
    let _ = stop_tx.send(true);
    let ours = percentiles(&mut samples);
    let bare = percentiles(&mut floor);
    println!(
        "login round trip (challenge -> sign -> login -> whoami, 3 HTTP requests, loopback{}), n={count}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        if password.is_some() { ", level 2: an LDAP bind per login" } else { "" },
        ours.p50, ours.p99, ours.max
    );
    println!(
        "floor: one bare GET /v1/cluster on the same client, n={count}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        bare.p50, bare.p99, bare.max
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Poll `f` every 2 ms until it is true or `limit` passes; the time it took.
fn time_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn serial_ready(dir: &Path) -> bool {
    std::fs::read(crate::qemu::cmdline::serial_log(dir))
        .is_ok_and(|b| b.windows(18).any(|w| w == b"DEORCH-GUEST-READY"))
}

fn qmp_answers(rt: &tokio::runtime::Runtime, dir: &Path) -> bool {
    let sock = crate::qemu::cmdline::qmp_socket(dir);
    sock.exists()
        && rt.block_on(async {
            match crate::qemu::qmp::Qmp::connect(&sock, Duration::from_millis(500)).await {
                Ok(mut q) => q.execute("query-status", None).await.is_ok(),
                Err(_) => false,
            }
        })
}

fn rss_of(pid: u32) -> u64 {
    vm_rss(&format!("/proc/{pid}/status"))
}

fn write_manifest(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// VM boot through a real node beside `virsh start` of the same guest:
/// `count` times each (after one warm-up), manifest file dropped → QEMU
/// running with QMP answering, and → the guest's ready marker on its
/// serial console; `virsh start` → the same marker, with the domain
/// defined from the same VM model beforehand (libvirtd must run), on
/// `virsh.1` as the machine type. The two sides alternate boot by boot, so
/// a drift in the host's speed (this is a shared VM: TCG boots of the same
/// guest vary by ~30% from one minute to the next) falls on both alike.
/// Then the daemon's RSS per running VM, `parallel` VMs at once, the floor
/// (bare QEMU until QMP answers), and the ratio of the two ready times.
pub fn vm_boot(
    count: usize,
    parallel: usize,
    kernel: &Path,
    initrd: &Path,
    machine: &str,
    virsh: Option<(&str, &str)>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = scratch("vm")?;
    let manifests = dir.join("manifests");
    let state = dir.join("state");
    std::fs::create_dir_all(&manifests)?;
    let suit = format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata:\n  name: tiny\nspec:\n  boot:\n    kernel: {}\n    initrd: {}\n    cmdline: {}\n  machine: {machine}\n  cpu: 1\n  memory: 128Mi\n",
        kernel.display(),
        initrd.display(),
        crate::qemu::probe::TINY_CMDLINE,
    );
    write_manifest(&manifests, "spacesuit.yaml", &suit)?;
    write_manifest(
        &manifests,
        "network.yaml",
        include_str!("../manifests/network.yaml"),
    )?;
    let vm = |name: &str| {
        format!("apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: {name}\nspec:\n  spacesuit: tiny\n  nics:\n    - name: eth0\n      network: default\n")
    };
    let mut node = Command::new(std::env::current_exe()?)
        .args(["node", "run", "--hypervisor", "qemu", "--storage", "dir"])
        .arg("--manifests")
        .arg(&manifests)
        .arg("--state-dir")
        .arg(&state)
        .arg("--socket")
        .arg(dir.join("deorch.sock"))
        .stdout(std::fs::File::create(dir.join("node.log"))?)
        .stderr(std::fs::File::create(dir.join("node.err"))?)
        .spawn()?;
    let vms = state.join("vms").join("default");
    let virsh_side = virsh.map(|(uri, m)| VirshSide::new(uri, m, kernel, initrd, &dir));
    let result = (|| -> anyhow::Result<(f64, Option<f64>)> {
        let mut to_qmp = Vec::new();
        let mut to_ready = Vec::new();
        let mut hung = 0;
        let mut v = VirshSamples::default();
        for i in 0..=count {
            let name = format!("b{i}");
            let rdir = vms.join(&name);
            let t = Instant::now();
            write_manifest(&manifests, &format!("{name}.yaml"), &vm(&name))?;
            let qmp = time_until(Duration::from_secs(120), || qmp_answers(&rt, &rdir));
            let ready =
                time_until(Duration::from_secs(60), || serial_ready(&rdir)).map(|_| t.elapsed());
            match (qmp, ready) {
                (Some(q), Some(r)) if i > 0 => {
                    to_qmp.push(q);
                    to_ready.push(r);
                }
                (Some(_), Some(_)) => {}
                (None, _) => bail!("{name}: QEMU never answered QMP (see {})", dir.display()),
                (Some(_), None) => hung += 1,
            }
            std::fs::remove_file(manifests.join(format!("{name}.yaml")))?;
            if time_until(Duration::from_secs(60), || !rdir.exists()).is_none() {
                bail!("{name}: not removed within 60 s");
            }
            if let Some(side) = &virsh_side {
                side.boot(i, i > 0, &mut v)?;
            }
        }
        let q = percentiles(&mut to_qmp);
        let r = percentiles(&mut to_ready);
        println!(
            "deorch ({machine}): manifest drop -> QMP answering p50 {:.0} ms, p99 {:.0} ms; -> guest ready p50 {:.0} ms, p99 {:.0} ms over {}; {hung} boots silent for 60 s",
            q.p50, q.p99, r.p50, r.p99, to_ready.len()
        );
        let virsh_ready = virsh_side.as_ref().map(|side| v.report(&side.machine));
        // Daemon RSS per running VM.
        let idle = rss_of(node.id());
        for i in 0..parallel {
            write_manifest(&manifests, &format!("p{i}.yaml"), &vm(&format!("p{i}")))?;
        }
        for i in 0..parallel {
            let rdir = vms.join(format!("p{i}"));
            if time_until(Duration::from_secs(120), || qmp_answers(&rt, &rdir)).is_none() {
                bail!("p{i}: QEMU never answered QMP");
            }
        }
        std::thread::sleep(Duration::from_secs(2));
        let busy = rss_of(node.id());
        println!(
            "deorch daemon RSS: {:.1} MB idle, {:.1} MB with {parallel} VMs running: {:.2} MB per VM",
            idle as f64 / 1e6,
            busy as f64 / 1e6,
            busy.saturating_sub(idle) as f64 / 1e6 / parallel as f64
        );
        console_latency(
            &(0..parallel)
                .map(|i| vms.join(format!("p{i}")))
                .collect::<Vec<_>>(),
        )?;
        for i in 0..parallel {
            std::fs::remove_file(manifests.join(format!("p{i}.yaml")))?;
        }
        for i in 0..parallel {
            let rdir = vms.join(format!("p{i}"));
            let _ = time_until(Duration::from_secs(60), || !rdir.exists());
        }
        Ok((r.p50, virsh_ready))
    })();
    let _ = Command::new("kill").arg(node.id().to_string()).status();
    let _ = node.wait();
    let (deorch_ready, virsh_ready) = result?;
    qemu_floor(count, kernel, initrd, machine, &dir)?;
    if let (Some(side), Some(virsh_ready)) = (&virsh_side, virsh_ready) {
        println!(
            "ratio: deorch ({machine}) drop -> ready p50 / virsh start ({}) -> ready p50 = {:.2}",
            side.machine,
            deorch_ready / virsh_ready
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Console connection latency on the running VMs in `dirs` (their
/// `console.json`, on the node's default console address, loopback): 50
/// times per VM each, TCP connect until QEMU's VNC server sends its RFB
/// version, and until its websocket port (noVNC's) answers the HTTP
/// upgrade with `101`; beside the floor, a TCP connect to a listener of
/// this process and its first byte. deorch is not in the path: the client
/// speaks to QEMU.
fn console_latency(dirs: &[PathBuf]) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let host = std::net::Ipv4Addr::LOCALHOST;
    let read_until = |s: &mut TcpStream, end: &[u8]| -> anyhow::Result<Vec<u8>> {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while !got.windows(end.len()).any(|w| w == end) {
            let n = s.read(&mut buf)?;
            if n == 0 {
                bail!("console closed after {} bytes", got.len());
            }
            got.extend_from_slice(&buf[..n]);
        }
        Ok(got)
    };
    let (mut vnc, mut ws, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    let listener = TcpListener::bind((host, 0))?;
    let floor_port = listener.local_addr()?.port();
    let server = std::thread::spawn(move || {
        for mut c in listener.incoming().take(50 * 2).flatten() {
            let _ = c.write_all(b"x");
        }
    });
    for dir in dirs {
        let ports: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("console.json"))?)?;
        let port = |k: &str| {
            ports[k]
                .as_u64()
                .map(|p| p as u16)
                .ok_or_else(|| anyhow::anyhow!("{}: no {k} port", dir.display()))
        };
        let (vnc_port, ws_port) = (port("vnc")?, port("websocket")?);
        for _ in 0..50 {
            let t = Instant::now();
            let mut s = TcpStream::connect((host, vnc_port))?;
            let banner = read_until(&mut s, b"\n")?;
            vnc.push(t.elapsed());
            if !banner.starts_with(b"RFB ") {
                bail!("port {vnc_port} is not VNC: {banner:?}");
            }
            let t = Instant::now();
            let mut s = TcpStream::connect((host, ws_port))?;
            s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}:{ws_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n").as_bytes())?;
            let head = read_until(&mut s, b"\r\n\r\n")?;
            ws.push(t.elapsed());
            if !head.starts_with(b"HTTP/1.1 101") {
                bail!(
                    "port {ws_port}: no websocket upgrade: {}",
                    String::from_utf8_lossy(&head)
                );
            }
        }
    }
    for _ in 0..50 * 2 {
        let t = Instant::now();
        let mut s = TcpStream::connect((host, floor_port))?;
        read_until(&mut s, b"x")?;
        floor.push(t.elapsed());
    }
    let _ = server.join();
    for (what, samples) in [
        ("VNC connect -> RFB version", &mut vnc),
        ("websocket connect -> 101 upgrade", &mut ws),
        ("floor: TCP connect -> first byte", &mut floor),
    ] {
        let p = percentiles(samples);
        println!(
            "console: {what} p50 {:.3} ms, p99 {:.3} ms over {}",
            p.p50,
            p.p99,
            samples.len()
        );
    }
    Ok(())
}

/// The bench guest as the drivers see it (one vCPU, 128 MiB, a NIC).
fn bench_config(
    name: &str,
    kernel: &Path,
    initrd: &Path,
    machine: &str,
) -> anyhow::Result<crate::driver::VmConfig> {
    Ok(crate::driver::VmConfig {
        id: format!("bench/{name}"),
        cpus: 1,
        memory: 128 << 20,
        machine: serde_json::from_value(serde_json::Value::String(machine.into()))?,
        cpu_model: None,
        boot: Some(crate::model::vm::Boot {
            kernel: kernel.display().to_string(),
            initrd: Some(initrd.display().to_string()),
            cmdline: Some(crate::qemu::probe::TINY_CMDLINE.into()),
        }),
        disks: vec![],
        disk_images: vec![],
        nics: vec![crate::driver::NicConfig {
            name: "eth0".into(),
            mac: "52:54:00:de:0c:01".into(),
            tap: String::new(),
            bridge: String::new(),
            model: crate::model::vm::NicModel::Virtio,
            host_tap: false,
        }],
        spice: false,
    })
}

/// The floor: QEMU started with the command line deorch builds for the
/// same guest (`src/qemu/cmdline.rs`), daemonized, until QMP answers.
fn qemu_floor(
    count: usize,
    kernel: &Path,
    initrd: &Path,
    machine: &str,
    dir: &Path,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut samples = Vec::new();
    for i in 0..=count {
        let rdir = dir.join("floor").join(format!("f{i}"));
        std::fs::create_dir_all(&rdir)?;
        let config = bench_config(&format!("f{i}"), kernel, initrd, machine)?;
        let vm =
            crate::driver::qemu::qemu_vm(&config, crate::qemu::probe::Accel::Tcg, rdir.clone())
                .map_err(|e| anyhow::anyhow!(e))?;
        let t = Instant::now();
        let st = Command::new("qemu-system-x86_64")
            .args(crate::qemu::cmdline::args(&vm))
            .status()?;
        if !st.success() {
            bail!("qemu-system-x86_64 failed to start");
        }
        let answered =
            time_until(Duration::from_secs(30), || qmp_answers(&rt, &rdir)).map(|_| t.elapsed());
        if let Ok(pid) = std::fs::read_to_string(crate::qemu::cmdline::pidfile(&rdir)) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        match answered {
            Some(d) if i > 0 => samples.push(d),
            Some(_) => {}
            None => bail!("f{i}: QEMU never answered QMP"),
        }
    }
    let p = percentiles(&mut samples);
    println!(
        "floor ({machine}): QEMU with deorch's command line -> QMP answering p50 {:.0} ms, p99 {:.0} ms over {}",
        p.p50,
        p.p99,
        samples.len()
    );
    Ok(())
}

/// The `virsh start` side of [`vm_boot`]: the same guest as a libvirt
/// domain, defined beforehand from the same VM model the libvirt driver
/// uses, started with `virsh start` until the ready marker.
struct VirshSide {
    uri: String,
    machine: String,
    kernel: PathBuf,
    initrd: PathBuf,
    dir: PathBuf,
}

/// What the `virsh start` side measured.
#[derive(Default)]
struct VirshSamples {
    to_ready: Vec<Duration>,
    start_returns: Vec<Duration>,
    hung: usize,
}

impl VirshSamples {
    /// Print the figures; the ready p50 in ms.
    fn report(&mut self, machine: &str) -> f64 {
        let r = percentiles(&mut self.to_ready);
        let s = percentiles(&mut self.start_returns);
        println!(
            "virsh start ({machine}): command returns p50 {:.0} ms; -> guest ready p50 {:.0} ms, p99 {:.0} ms over {}; {} boots silent for 60 s",
            s.p50, r.p50, r.p99, self.to_ready.len(), self.hung
        );
        r.p50
    }
}

impl VirshSide {
    fn new(uri: &str, machine: &str, kernel: &Path, initrd: &Path, dir: &Path) -> Self {
        Self {
            uri: uri.into(),
            machine: machine.into(),
            kernel: kernel.into(),
            initrd: initrd.into(),
            dir: dir.join("virsh"),
        }
    }

    fn virsh(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new("virsh")
            .arg("-c")
            .arg(&self.uri)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "virsh {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Boot number `i` once; its times go into `into` if `keep`.
    fn boot(&self, i: usize, keep: bool, into: &mut VirshSamples) -> anyhow::Result<()> {
        use crate::driver::libvirt::{domain_xml, DomainParams};
        let name = format!("deorch-bench-virsh-{i}");
        let rdir = self.dir.join(&name);
        std::fs::create_dir_all(&rdir)?;
        let config = bench_config(&name, &self.kernel, &self.initrd, &self.machine)?;
        let vm =
            crate::driver::qemu::qemu_vm(&config, crate::qemu::probe::Accel::Tcg, rdir.clone())
                .map_err(|e| anyhow::anyhow!(e))?;
        let xml = domain_xml(
            &vm,
            &DomainParams {
                name: name.clone(),
                uuid: None,
                id: config.id.clone(),
                spice_port: None,
                incoming: false,
            },
        );
        let file = rdir.join("domain.xml");
        std::fs::write(&file, xml)?;
        let _ = self.virsh(&["destroy", &name]);
        let _ = self.virsh(&["undefine", &name]);
        self.virsh(&["define", &file.display().to_string()])?;
        let t = Instant::now();
        self.virsh(&["start", &name])?;
        let started = t.elapsed();
        let ready =
            time_until(Duration::from_secs(60), || serial_ready(&rdir)).map(|_| t.elapsed());
        let _ = self.virsh(&["destroy", &name]);
        let _ = self.virsh(&["undefine", &name]);
        match ready {
            Some(r) if keep => {
                into.to_ready.push(r);
                into.start_returns.push(started);
            }
            Some(_) => {}
            None => into.hung += 1,
        }
        Ok(())
    }
}

/// The command line's server side with `objects` VMs in the store: for
/// each query, the store's records listed and decoded, the query answered
/// over them, and the answer serialized, p50 and p95 of `samples` each.
/// (The page's figure, key to rendered results, is the browser bench in
/// tests/web_ui.rs; this says where the node's part of it goes.)
pub fn command_latency(objects: usize, samples: usize) -> anyhow::Result<()> {
    let dir = scratch("command")?;
    let store = Store::open(&dir.join("store.redb"))?;
    let source = SourceId("bench".into());
    for i in 0..objects {
        store.apply(&bench_vm(i), &source)?;
    }
    println!("the command line's server side, {objects} VMs in the store, p50 (p95) of {samples}:");
    println!("| query | list + decode | answer | serialize | rows |\n|---|---|---|---|---|");
    let half = format!("vm vm-{:05}", objects / 2);
    let queries = [half.as_str(), "app-7", "vms", "vm-0"];
    // Each query as typed on a quiet store, then `vms` with one VM's status
    // written just before each (a busy node: the changed record alone is
    // decoded again).
    let runs = queries.iter().map(|q| (*q, false)).chain([("vms", true)]);
    for (n, (q, busy)) in runs.enumerate() {
        let (mut list, mut answer, mut ser) = (Vec::new(), Vec::new(), Vec::new());
        let mut rows = 0;
        for i in 0..samples {
            if busy {
                let key = crate::model::ObjectKey {
                    kind: crate::model::Kind::VirtualMachine,
                    namespace: crate::model::DEFAULT_NAMESPACE.into(),
                    name: format!("vm-{:05}", (i * 37 + n) % objects.max(1)),
                };
                store.set_status(&key, serde_json::json!({"phase": "Running", "seen": i}))?;
            }
            let t = Instant::now();
            let records = store.list_shared();
            list.push(t.elapsed());
            let t = Instant::now();
            let (v, _) =
                crate::command::answer(q, &records).map_err(|e| anyhow::anyhow!("{q}: {e}"))?;
            answer.push(t.elapsed());
            let t = Instant::now();
            let bytes = serde_json::to_vec(&v)?;
            ser.push(t.elapsed());
            rows = v["results"].as_array().map_or(0, Vec::len);
            std::hint::black_box(bytes);
        }
        let f = |s: &mut Vec<Duration>| {
            let p = percentiles(s);
            format!("{:.1} ms ({:.1})", p.p50, p.p95)
        };
        let q = if busy {
            format!("`{q}`, a status written before each")
        } else {
            format!("`{q}`")
        };
        println!(
            "| {q} | {} | {} | {} | {rows} |",
            f(&mut list),
            f(&mut answer),
            f(&mut ser)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What a tenant's session costs the command line on top: `objects` VMs in
/// ten namespaces, a signed AccessPolicy that lets one address list one
/// of them, and each query's records filtered for that address as
/// `/v1/command` filters them, p50 and p95 of `samples`.
pub fn command_tenant_latency(objects: usize, samples: usize) -> anyhow::Result<()> {
    use crate::admission::{Admission, AdmissionConfig};
    use crate::identity::{AddressType, Network, PrivateKey};
    let dir = scratch("command-tenant")?;
    let store = Arc::new(Store::open(&dir.join("store.redb"))?);
    let source = SourceId("bench".into());
    for i in 0..objects {
        let mut vm = bench_vm(i);
        if let AnyObject::VirtualMachine(m) = &mut vm {
            m.metadata.namespace = Some(format!("team-{}", i % 10));
        }
        store.apply(&vm, &source)?;
    }
    let owner = PrivateKey::generate(Network::Mainnet);
    let owner_addr = owner.address(AddressType::P2wpkh)?.to_string();
    let tenant = PrivateKey::generate(Network::Mainnet)
        .address(AddressType::P2wpkh)?
        .to_string();
    let policy = format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: tenants, generation: 1}}\nspec:\n  rules:\n    - subjects: [\"{tenant}\"]\n      role: viewer\n      namespaces: [team-3]\n"
    );
    let parsed = crate::manifest::parse_str(Path::new("policy.yaml"), &policy);
    let doc = parsed
        .documents
        .first()
        .ok_or_else(|| anyhow::anyhow!("the policy does not parse: {:?}", parsed.diagnostics))?;
    let signed = crate::identity::sign_manifest(
        &doc.object.to_value(),
        &owner_addr,
        &owner,
        AddressType::P2wpkh,
    )?;
    let parsed = crate::manifest::parse_str(Path::new("signed.json"), &signed.to_string());
    let signed = parsed
        .documents
        .first()
        .ok_or_else(|| anyhow::anyhow!("the signed policy does not parse"))?;
    store.apply(&signed.object, &source)?;
    let admission = Admission::new(
        store.clone(),
        AdmissionConfig {
            cluster: Some(owner_addr.clone()),
            owner: Some(owner_addr),
        },
    );
    println!("a tenant's `/v1/command` with {objects} VMs in 10 namespaces, the tenant may list one, p50 (p95) of {samples}:");
    println!("| query | list | authorise each | answer | rows |\n|---|---|---|---|---|");
    // app-13: labels of VMs i % 50 == 13, all in the tenant's team-3.
    for q in ["vms", "app-13"] {
        let (mut list, mut auth, mut answer) = (Vec::new(), Vec::new(), Vec::new());
        let mut rows = 0;
        for _ in 0..samples {
            let t = Instant::now();
            let records = store.list_shared();
            list.push(t.elapsed());
            let t = Instant::now();
            let what: Vec<_> = records
                .iter()
                .map(|r| (r.key.kind, r.key.namespace.as_str(), Some(&r.object)))
                .collect();
            let allowed = admission.authorise_session_each(
                &tenant,
                false,
                crate::model::access::Verb::List,
                &what,
            );
            let visible: Vec<Arc<crate::store::Record>> = records
                .iter()
                .zip(allowed)
                .filter(|(_, a)| a.is_ok())
                .map(|(r, _)| r.clone())
                .collect();
            auth.push(t.elapsed());
            let t = Instant::now();
            let (v, _) =
                crate::command::answer(q, &visible).map_err(|e| anyhow::anyhow!("{q}: {e}"))?;
            answer.push(t.elapsed());
            rows = v["results"].as_array().map_or(0, Vec::len);
        }
        let f = |s: &mut Vec<Duration>| {
            let p = percentiles(s);
            format!("{:.1} ms ({:.1})", p.p50, p.p95)
        };
        println!(
            "| `{q}` | {} | {} | {} | {rows} |",
            f(&mut list),
            f(&mut auth),
            f(&mut answer)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
