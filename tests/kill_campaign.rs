//! A kill -9 campaign against a real node process (fake hypervisor, real
//! `dir` storage: every VM has a qcow2 volume in the state directory).
//!
//! At each kill point the node is SIGKILLed after a random delay while
//! three writers change desired state at once: the local API (`Apply`,
//! `Delete`), atomic drops into the manifest directory (temp file, then
//! rename) and in-place rewrites of manifest files (truncate and write,
//! slowly, or in two steps like `cat a > f; cat b >> f`), plus file
//! removals; an observer polls `Get` meanwhile. After every restart:
//!
//! - every acknowledged object is there, at its acknowledged generation or
//!   above, with the acknowledged content at that generation. Acknowledged
//!   means: for the API, the node answered `Applied`/`Deleted`; for a file,
//!   the node reported (to an observer polling `Get`, or once converged)
//!   the object from that file, at some generation, with the content of
//!   one version the test wrote (each written document carries a unique
//!   version label). Its presence is then owed as long as no version of
//!   the file without it was written since that version: a file change
//!   the node had not read when the kill hit is not acknowledged, and an
//!   object the file dropped may rightly be deleted after the removal
//!   grace. A request in flight at the kill may have landed or not,
//!   nothing else;
//! - the node converges to the files' final content within a bounded
//!   wait, and never shows content that was never written (half a file),
//!   nor a generation lower than one it reported;
//! - no volume is lost: each live VM's volume carries a marker byte
//!   (written once with `qemu-io`, read back through the qcow2 mapping at
//!   every check and with `qemu-io` at the end), keeps its inode while the
//!   VM is never deleted, and is taken back (same inode) when a deleted VM
//!   returns; a deleted VM's volume is retained (`retained.<until>.<vol>`);
//! - no temporary file of a killed node is left in the state directory,
//!   nothing but the test's own files is in the manifest directory.
//!
//! `DEORCH_CAMPAIGN_SEED` replays a campaign's choices (kill timing still
//! varies with the machine), `DEORCH_CAMPAIGN_POINTS` sets its length. The
//! long campaign: `cargo nextest run --test kill_campaign --run-ignored
//! ignored-only --no-capture`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Node, Rng};
use deorch::api::{Request, Response};
use deorch::store::Record;

/// VMs written through the local API: `api-0` ...
const API_VMS: u64 = 8;
/// Manifest files `f0.yaml` ...; file `fI.yaml` declares `fI-a` and/or `fI-b`.
const FILES: u64 = 5;
/// How long the node may take to converge after a restart (a loaded
/// 2-core machine with a compile beside it).
const CONVERGE: Duration = Duration::from_secs(30);
/// The removal grace the node runs with (`common::Node`: 1 s).
const GRACE: Duration = Duration::from_secs(1);
/// The label that tells the versions the test wrote apart.
const VERSION_LABEL: &str = "campaign-version";

#[test]
fn a_short_campaign_loses_nothing() {
    campaign("kill-short", 40, 0x00c0_ffee_5eed_0013);
}

#[test]
#[ignore = "long (minutes): cargo nextest run --test kill_campaign --run-ignored ignored-only --no-capture"]
fn a_long_campaign_of_1000_kill_points_loses_nothing() {
    campaign("kill-long", 1000, 0x0dea_d5ee_d100_0013);
}

// ---------------------------------------------------------------- the model

/// What the test knows for sure about an API object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acked {
    Never,
    Live { generation: i64, version: u64 },
    Deleted { generation: i64 },
}

/// An API request whose answer the kill took away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ApiOp {
    Apply(u64),
    Delete,
}

#[derive(Debug)]
struct ApiObj {
    acked: Acked,
    in_flight: Option<ApiOp>,
}

/// An object a manifest file declares.
#[derive(Debug, Default)]
struct FileKey {
    /// Bumped each time a version of its file without it is written (the
    /// node may then delete it).
    undeclared: u64,
    /// (generation, version) the node reported for it.
    ack: Option<(i64, u64)>,
}

/// One version of a VM the test wrote (API or file).
#[derive(Debug)]
struct Written {
    vm: String,
    memory: u64,
    /// For a file's VM: its `undeclared` count when written. While the
    /// count stays the same, every version of the file since declares it.
    streak: u64,
}

/// A volume the test marked.
#[derive(Debug)]
struct Volume {
    vm: String,
    marker: u8,
}

#[derive(Debug, Default)]
struct Stats {
    kills: u64,
    quick_rounds: u64,
    api_applies: u64,
    api_deletes: u64,
    api_uncertain: u64,
    drops: u64,
    rewrites: u64,
    slow_rewrites: u64,
    two_step_rewrites: u64,
    removals: u64,
    file_acks: u64,
    volumes_checked: u64,
    markers_written: u64,
    restart_ms: Vec<u64>,
}

struct Model {
    api: BTreeMap<String, ApiObj>,
    /// What each file declares now (VM, version), `None`: no file.
    files: Vec<Option<Vec<(String, u64)>>>,
    fkeys: BTreeMap<String, FileKey>,
    /// Every version written, by its label.
    written: BTreeMap<u64, Written>,
    /// The highest generation acknowledged or seen for each VM.
    seen_gen: BTreeMap<String, i64>,
    /// Marked volumes by inode.
    volumes: BTreeMap<u64, Volume>,
    /// The inode of each VM's volume, once marked.
    live_inode: BTreeMap<String, u64>,
    /// VMs that were (or may have been) deleted since their volume was
    /// marked: their volume may be retained until they come back.
    deleted_since: BTreeSet<String>,
    /// Temporary files a killed node left in the state directory: the kill
    /// point they were found after, and their size. Not data loss, so the
    /// campaign goes on and fails at its end with all of them.
    leftovers: BTreeMap<String, (u64, u64)>,
    stats: Stats,
}

impl Model {
    fn new() -> Model {
        let mut fkeys = BTreeMap::new();
        for i in 0..FILES {
            for part in ["a", "b"] {
                fkeys.insert(format!("f{i}-{part}"), FileKey::default());
            }
        }
        Model {
            api: (0..API_VMS)
                .map(|i| {
                    (
                        format!("api-{i}"),
                        ApiObj {
                            acked: Acked::Never,
                            in_flight: None,
                        },
                    )
                })
                .collect(),
            files: vec![None; FILES as usize],
            fkeys,
            written: BTreeMap::new(),
            seen_gen: BTreeMap::new(),
            volumes: BTreeMap::new(),
            live_inode: BTreeMap::new(),
            deleted_since: BTreeSet::new(),
            leftovers: BTreeMap::new(),
            stats: Stats::default(),
        }
    }

    /// A new version of `vm`: its label, with a random memory.
    fn write(&mut self, vm: &str, rng: &mut Rng) -> u64 {
        let version = self.written.len() as u64 + 1;
        let w = Written {
            vm: vm.to_string(),
            memory: memory_of(vm, rng),
            streak: self.fkeys.get(vm).map_or(0, |k| k.undeclared),
        };
        self.written.insert(version, w);
        version
    }

    /// The manifest of a version.
    fn doc(&self, version: u64) -> String {
        let w = &self.written[&version];
        vm_doc(&w.vm, w.memory, version)
    }

    /// The version a record shows: one the test wrote for this VM, with
    /// its content (half a file would show otherwise).
    fn version_of(&self, r: &Record) -> u64 {
        let name = &r.key.name;
        let version: u64 = r.object["metadata"]["labels"][VERSION_LABEL]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{name} (generation {}): no version label: {}",
                    r.generation, r.object
                )
            });
        let w = self
            .written
            .get(&version)
            .unwrap_or_else(|| panic!("{name}: version {version}, never written: {}", r.object));
        assert_eq!(w.vm, *name, "{name} shows version {version} of {}", w.vm);
        assert_eq!(
            memory_mi(r),
            w.memory,
            "{name}: version {version} with other content than written (generation {})",
            r.generation
        );
        version
    }

    /// VMs that must exist now (after convergence), with their version.
    fn live(&self) -> BTreeMap<String, u64> {
        let api = self.api.iter().filter_map(|(n, o)| match o.acked {
            Acked::Live { version, .. } => Some((n.clone(), version)),
            _ => None,
        });
        let files = self.files.iter().flatten().flatten().cloned();
        api.chain(files).collect()
    }
}

// ------------------------------------------------------------------ helpers

/// A VM with one blank 16 MiB disk (a qcow2 volume with `dir` storage).
fn vm_doc(name: &str, memory: u64, version: u64) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: {name}\n  labels:\n    {VERSION_LABEL}: \"{version}\"\nspec:\n  cpu: 1\n  memory: {memory}Mi\n  disks:\n    - name: data\n      source: {{blank: {{}}}}\n      size: 16Mi\n"
    )
}

fn memory_of(name: &str, rng: &mut Rng) -> u64 {
    // Distinct per VM family so a mixed-up record shows.
    let base = if name.starts_with("api") { 64 } else { 320 };
    base + rng.below(192)
}

/// A record's memory in MiB.
fn memory_mi(r: &Record) -> u64 {
    let q: deorch::model::Quantity = r.object["spec"]["memory"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no spec.memory: {}", r.key.name, r.object))
        .parse()
        .unwrap();
    assert_eq!(q.0 % (1 << 20), 0, "{}: memory {q:?}", r.key.name);
    q.0 >> 20
}

fn volume_name(vm: &str) -> String {
    format!("vm-default-{vm}-data.qcow2")
}

fn volumes_dir(node: &Node) -> PathBuf {
    node.state.join("storage/volumes")
}

/// Whether `file` (a name in the volumes directory) is `vm`'s volume,
/// live or retained.
fn names_volume_of(file: &str, vm: &str) -> bool {
    let own = volume_name(vm);
    file == own
        || file
            .strip_prefix("retained.")
            .and_then(|r| r.strip_suffix(&own))
            .and_then(|r| r.strip_suffix('.'))
            .is_some_and(|until| !until.is_empty() && until.bytes().all(|b| b.is_ascii_digit()))
}

/// Every file of the volumes directory: name by inode. The node runs
/// meanwhile: a file it removes between the listing and its `stat` is
/// left out, as a listing a moment later would.
fn volume_files(node: &Node) -> BTreeMap<u64, String> {
    std::fs::read_dir(volumes_dir(node))
        .unwrap()
        .flatten()
        .filter_map(|e| match e.metadata() {
            Ok(m) => Some((m.ino(), e.file_name().to_string_lossy().into_owned())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => panic!("{}: {err}", e.path().display()),
        })
        .collect()
}

/// The first byte of guest data of a qcow2 image without a backing file,
/// through its L1/L2 mapping (QEMU's docs/interop/qcow2.txt): cheap
/// enough to run on every volume after every restart.
fn qcow2_first_byte(path: &Path) -> std::io::Result<u8> {
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let f = std::fs::File::open(path)?;
    let mut h = [0u8; 104];
    f.read_exact_at(&mut h, 0)?;
    let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap());
    let be32 = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    if h[..4] != [b'Q', b'F', b'I', 0xfb] {
        return Err(bad("not a qcow2 image"));
    }
    if be64(&h[8..16]) != 0 {
        return Err(bad("has a backing file"));
    }
    if be32(&h[4..8]) >= 3 && be64(&h[72..80]) & !1 != 0 {
        // Only the dirty bit is understood (extended L2 entries are not).
        return Err(bad("unknown incompatible features"));
    }
    const OFFSET: u64 = 0x00ff_ffff_ffff_fe00;
    if be32(&h[36..40]) == 0 {
        return Ok(0);
    }
    let mut e = [0u8; 8];
    f.read_exact_at(&mut e, be64(&h[40..48]))?;
    let l2 = u64::from_be_bytes(e) & OFFSET;
    if l2 == 0 {
        return Ok(0);
    }
    f.read_exact_at(&mut e, l2)?;
    let entry = u64::from_be_bytes(e);
    if entry & (1 << 62) != 0 {
        return Err(bad("compressed cluster"));
    }
    if entry & 1 != 0 || entry & OFFSET == 0 {
        return Ok(0);
    }
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, entry & OFFSET)?;
    Ok(b[0])
}

/// Write `marker` over the first sector with `qemu-io`; false when it
/// could not (the volume moved meanwhile): tried again later.
fn try_mark(path: &Path, marker: u8) -> bool {
    Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P {marker} 0 512"))
        .arg(path)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    Some(
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => v.parse(),
        }
        .unwrap_or_else(|e| panic!("{name}={v}: {e}")),
    )
}

/// Files under `dir`, recursively.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Temporary files of a node process other than `running` (one that
/// was killed while writing): `state_file`'s `.NAME.tmpPID.N`, and
/// anything in the storage's `tmp/` (emptied when storage opens).
fn leftovers(node: &Node, running: Option<u32>) -> Vec<String> {
    let mut files = Vec::new();
    walk(&node.state, &mut files);
    files
        .iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            let pid = name
                .strip_prefix('.')
                .and_then(|n| n.rsplit_once(".tmp"))
                .and_then(|(_, rest)| rest.split_once('.'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok());
            match pid {
                Some(pid) => Some(pid) != running,
                None => p.parent() == Some(&node.state.join("storage/tmp")),
            }
        })
        .map(|p| p.display().to_string())
        .collect()
}

/// All VM records, by name.
fn vm_records(node: &Node) -> BTreeMap<String, Record> {
    match node.call(&Request::Get {
        kind: Some("vm".into()),
        namespace: None,
        name: None,
    }) {
        Ok(Response::Objects { records }) => records
            .into_iter()
            .map(|r| (r.key.name.clone(), r))
            .collect(),
        other => panic!("get: {other:?}; log:\n{}", node.log_text()),
    }
}

/// Which file declares `name` (`fI-a`, `fI-b`), if it is a file's.
fn file_of(name: &str) -> Option<usize> {
    name.strip_prefix('f')?.split_once('-')?.0.parse().ok()
}

// ---------------------------------------------------------------- campaign

/// What the writers, the observer and the checks share.
struct Shared {
    model: Mutex<Model>,
    /// Set just before the kill: a request failing after it is the kill's.
    fired: AtomicBool,
    /// The `file:` source of each manifest file, as the node records it.
    sources: Vec<String>,
}

fn campaign(tag: &str, default_points: u64, default_seed: u64) {
    let seed = env_u64("DEORCH_CAMPAIGN_SEED").unwrap_or(default_seed);
    let points = env_u64("DEORCH_CAMPAIGN_POINTS").unwrap_or(default_points);
    eprintln!(
        "{tag}: seed {seed:#x}, {points} kill points (DEORCH_CAMPAIGN_SEED={seed:#x} \
         DEORCH_CAMPAIGN_POINTS={points} replays the choices; kill timing varies)"
    );
    // xorshift is stuck at 0.
    let mut rng = Rng(seed.max(1));
    let mut node = Node::new(tag);
    node.extra_args = ["--hypervisor", "fake", "--storage", "dir"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    node.start();
    let canon = std::fs::canonicalize(&node.manifests).unwrap();
    let sh = Shared {
        model: Mutex::new(Model::new()),
        fired: AtomicBool::new(false),
        sources: (0..FILES)
            .map(|i| format!("file:{}", canon.join(format!("f{i}.yaml")).display()))
            .collect(),
    };
    let started = Instant::now();

    // Everything declared once before the first kill.
    let mut setup = Rng(rng.next().max(1));
    for i in 0..API_VMS {
        assert!(api_step(&node, &sh, &mut setup, Some(i)));
    }
    for i in 0..FILES {
        file_step(&node, &sh, &mut setup, Some(i));
    }
    converge(&node, &sh, false);
    after_convergence(&node, &sh);

    // A quick point kills early, within the restart's own work (the store
    // snapshot, the manifest scan, the reconcile of every object), before
    // the node converged.
    let mut quick = false;
    for point in 0..points {
        let delay = Duration::from_millis(if quick {
            rng.below(40)
        } else {
            10 + rng.below(290)
        });
        let pid = node.child.as_ref().unwrap().id();
        sh.fired.store(false, Ordering::SeqCst);
        let (api_seed, file_seed, obs_seed) = (rng.next(), rng.next(), rng.next());
        std::thread::scope(|s| {
            let (node, sh) = (&node, &sh);
            s.spawn(move || {
                let mut r = Rng(api_seed.max(1));
                while !sh.fired.load(Ordering::SeqCst) && api_step(node, sh, &mut r, None) {
                    std::thread::sleep(Duration::from_millis(r.below(15)));
                }
            });
            s.spawn(move || {
                let mut r = Rng(file_seed.max(1));
                while !sh.fired.load(Ordering::SeqCst) {
                    file_step(node, sh, &mut r, None);
                    std::thread::sleep(Duration::from_millis(r.below(20)));
                }
            });
            s.spawn(move || observe(node, sh, Rng(obs_seed.max(1))));
            std::thread::sleep(delay);
            sh.fired.store(true, Ordering::SeqCst);
            let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::KILL)
                .expect("kill -9 the node");
        });
        // Every writer has stopped: the files are complete and final.
        node.kill(); // reap
        let t = Instant::now();
        node.start();
        {
            let mut m = sh.model.lock().unwrap();
            m.stats.kills += 1;
            m.stats.quick_rounds += u64::from(quick);
            m.stats.restart_ms.push(t.elapsed().as_millis() as u64);
        }
        check_acknowledged(&node, &sh);
        check_volumes(&node, &sh);
        note_leftovers(&node, &sh, node.child.as_ref().map(|c| c.id()));
        quick = point + 1 < points && rng.below(4) == 0;
        if !quick {
            converge(&node, &sh, false);
            after_convergence(&node, &sh);
        }
        if (point + 1) % 100 == 0 {
            eprintln!(
                "{tag}: {} kill points, {:.0}s",
                point + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }

    // The end: deletions past their grace done, deleted VMs' volumes
    // retained, and every marker read back by QEMU itself.
    std::thread::sleep(GRACE);
    converge(&node, &sh, true);
    after_convergence(&node, &sh);
    check_volumes(&node, &sh);
    let files = volume_files(&node);
    for (ino, v) in &sh.model.lock().unwrap().volumes {
        let name = &files[ino];
        let read = common::qemu_io_read(&volumes_dir(&node).join(name), "qcow2");
        assert_eq!(read, v.marker, "qemu-io reads {name} ({}) otherwise", v.vm);
    }
    node.stop();
    note_leftovers(&node, &sh, None);

    let m = sh.model.lock().unwrap();
    let s = &m.stats;
    let mut restarts = s.restart_ms.clone();
    restarts.sort_unstable();
    let median = restarts.get(restarts.len() / 2).copied().unwrap_or(0);
    let retained = files
        .values()
        .filter(|n| n.starts_with("retained."))
        .count();
    eprintln!(
        "{tag}: seed {seed:#x}: {} kills ({} before convergence) in {:.1}s; \
         API: {} acknowledged applies, {} acknowledged deletes, {} cut off by the kill; \
         files: {} drops, {} in-place rewrites ({} slow, {} in two steps), {} removals, \
         {} file versions acknowledged; volumes: {} checks of {} marked volumes \
         ({} retained at the end); {} temporary files left by killed nodes; \
         restart median {median} ms, max {} ms",
        s.kills,
        s.quick_rounds,
        started.elapsed().as_secs_f64(),
        s.api_applies,
        s.api_deletes,
        s.api_uncertain,
        s.drops,
        s.rewrites + s.slow_rewrites + s.two_step_rewrites,
        s.slow_rewrites,
        s.two_step_rewrites,
        s.removals,
        s.file_acks,
        s.volumes_checked,
        m.volumes.len(),
        retained,
        m.leftovers.len(),
        restarts.last().copied().unwrap_or(0),
    );
    assert_eq!(s.kills, points);
    assert!(
        m.leftovers.is_empty(),
        "temporary files left in the state directory by killed nodes, never removed \
         (file: (found after kill point, bytes)): {:#?}",
        m.leftovers
    );
}

// ----------------------------------------------------------------- writers

/// One API request (`setup`: apply `api-I`). False when the kill cut it
/// off: the writer stops.
fn api_step(node: &Node, sh: &Shared, rng: &mut Rng, setup: Option<u64>) -> bool {
    let name = format!("api-{}", setup.unwrap_or_else(|| rng.below(API_VMS)));
    let (op, req) = {
        let mut m = sh.model.lock().unwrap();
        let live = matches!(m.api[&name].acked, Acked::Live { .. });
        let op = if setup.is_none() && live && rng.below(4) == 0 {
            // It may land: its volume may be retained from here on.
            m.deleted_since.insert(name.clone());
            ApiOp::Delete
        } else {
            ApiOp::Apply(m.write(&name, rng))
        };
        m.api.get_mut(&name).unwrap().in_flight = Some(op);
        (op, request(&m, &name, op))
    };
    let answer = node.call(&req);
    let mut m = sh.model.lock().unwrap();
    let acked = match (op, answer) {
        (ApiOp::Apply(version), Ok(Response::Applied { objects })) => {
            assert_eq!(objects.len(), 1, "{name}: {objects:?}");
            m.stats.api_applies += 1;
            Acked::Live {
                generation: objects[0].generation,
                version,
            }
        }
        (ApiOp::Delete, Ok(Response::Deleted { generation, .. })) => {
            m.stats.api_deletes += 1;
            Acked::Deleted { generation }
        }
        (_, Ok(other)) => panic!("{name}: {op:?} answered {other:?}"),
        (_, Err(_)) if sh.fired.load(Ordering::SeqCst) => {
            m.stats.api_uncertain += 1;
            return false;
        }
        (_, Err(e)) => panic!(
            "{name}: {op:?} failed without a kill: {e}; log:\n{}",
            node.log_text()
        ),
    };
    let (before, now) = (gen_of(m.api[&name].acked), gen_of(acked));
    assert!(
        now >= before && (now > before || matches!(acked, Acked::Live { .. })),
        "{name}: {op:?} answered generation {now} after {before}"
    );
    let seen = m.seen_gen.entry(name.clone()).or_default();
    *seen = (*seen).max(now);
    let o = m.api.get_mut(&name).unwrap();
    o.acked = acked;
    o.in_flight = None;
    true
}

fn request(m: &Model, name: &str, op: ApiOp) -> Request {
    match op {
        ApiOp::Apply(version) => Request::Apply {
            filename: "campaign.yaml".into(),
            yaml: m.doc(version),
            dry_run: false,
        },
        ApiOp::Delete => Request::Delete {
            kind: "vm".into(),
            namespace: None,
            name: name.to_string(),
            purge: false,
        },
    }
}

fn gen_of(a: Acked) -> i64 {
    match a {
        Acked::Never => 0,
        Acked::Live { generation, .. } | Acked::Deleted { generation } => generation,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileOp {
    /// Temp file, then rename over the target.
    Drop,
    /// `File::create` (truncate) and write, like `cat > f`.
    Rewrite,
    /// Truncated, part written, a pause, the rest, in one open.
    Slow,
    /// `cat a > f; cat b >> f`: two opens, the file whole only after both.
    TwoSteps,
    Remove,
}

/// One change of a manifest file (`setup`: drop `fI.yaml` whole).
fn file_step(node: &Node, sh: &Shared, rng: &mut Rng, setup: Option<u64>) {
    let i = setup.unwrap_or_else(|| rng.below(FILES)) as usize;
    let path = node.manifests.join(format!("f{i}.yaml"));
    let parts: &[&str] = match setup.map_or(rng.below(5), |_| 4) {
        0 => &["a"],
        1 => &["b"],
        _ => &["a", "b"],
    };
    let exists = sh.model.lock().unwrap().files[i].is_some();
    let op = match setup.map_or(rng.below(100), |_| 20) {
        0..10 if exists => FileOp::Remove,
        0..45 => FileOp::Drop,
        45..65 => FileOp::Rewrite,
        65..80 => FileOp::Slow,
        _ if parts.len() == 2 => FileOp::TwoSteps,
        _ => FileOp::Rewrite,
    };
    // The model first: the observer may see the node take the file before
    // this thread is back.
    let (docs, names) = {
        let mut m = sh.model.lock().unwrap();
        let after: Vec<String> = match op {
            FileOp::Remove => Vec::new(),
            _ => parts.iter().map(|p| format!("f{i}-{p}")).collect(),
        };
        let before: Vec<String> = m.files[i]
            .iter()
            .flatten()
            .map(|(n, _)| n.clone())
            .collect();
        for n in before {
            if !after.contains(&n) {
                m.fkeys.get_mut(&n).unwrap().undeclared += 1;
                m.deleted_since.insert(n);
            }
        }
        let versions: Vec<(String, u64)> =
            after.iter().map(|n| (n.clone(), m.write(n, rng))).collect();
        let docs: Vec<String> = versions.iter().map(|(_, v)| m.doc(*v)).collect();
        m.files[i] = (op != FileOp::Remove).then_some(versions);
        let s = &mut m.stats;
        *match op {
            FileOp::Drop => &mut s.drops,
            FileOp::Rewrite => &mut s.rewrites,
            FileOp::Slow => &mut s.slow_rewrites,
            FileOp::TwoSteps => &mut s.two_step_rewrites,
            FileOp::Remove => &mut s.removals,
        } += 1;
        (docs, after)
    };
    let text = docs.join("---\n");
    match op {
        FileOp::Remove => std::fs::remove_file(&path).unwrap(),
        FileOp::Drop => {
            let tmp = node.manifests.join(format!(".f{i}.yaml.tmp"));
            std::fs::write(&tmp, &text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        FileOp::Rewrite => std::fs::write(&path, &text).unwrap(),
        FileOp::Slow => {
            let mut f = std::fs::File::create(&path).unwrap();
            let cut = rng.below(text.len() as u64 + 1) as usize;
            f.write_all(&text.as_bytes()[..cut]).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(1 + rng.below(15)));
            f.write_all(&text.as_bytes()[cut..]).unwrap();
        }
        FileOp::TwoSteps => {
            std::fs::write(&path, &docs[0]).unwrap();
            let t = Instant::now();
            std::thread::sleep(Duration::from_millis(rng.below(10)));
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(format!("---\n{}", docs[1]).as_bytes()).unwrap();
            drop(f);
            if t.elapsed() > GRACE / 2 {
                // The machine stalled this thread near the removal grace:
                // the node may rightly have deleted the second object.
                let mut m = sh.model.lock().unwrap();
                m.fkeys.get_mut(&names[1]).unwrap().undeclared += 1;
                m.deleted_since.insert(names[1].clone());
            }
        }
    }
}

/// Poll `Get` until the kill: what the node reports of a file's objects
/// is acknowledged; nothing it reports may go back or be half a file.
fn observe(node: &Node, sh: &Shared, mut rng: Rng) {
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    while !sh.fired.load(Ordering::SeqCst) {
        let records = match node.call(&Request::Get {
            kind: Some("vm".into()),
            namespace: None,
            name: None,
        }) {
            Ok(Response::Objects { records }) => records,
            Ok(other) => panic!("get answered {other:?}"),
            Err(_) if sh.fired.load(Ordering::SeqCst) => return,
            Err(e) => panic!("get failed without a kill: {e}; log:\n{}", node.log_text()),
        };
        let mut m = sh.model.lock().unwrap();
        for r in records {
            let name = r.key.name.clone();
            let g = r.generation;
            if let Some(prev) = last.insert(name.clone(), g) {
                assert!(
                    g >= prev,
                    "{name}: generation went back from {prev} to {g} while the node ran"
                );
            }
            let seen = m.seen_gen.entry(name.clone()).or_default();
            *seen = (*seen).max(g);
            let version = check_record(sh, &m, &r);
            if let Some(fk) = m.fkeys.get_mut(&name) {
                if fk.ack.replace((g, version)) != Some((g, version)) {
                    m.stats.file_acks += 1;
                }
            }
        }
        drop(m);
        std::thread::sleep(Duration::from_millis(5 + rng.below(20)));
    }
}

/// A record: a VM of the test, from its own source (the API or its
/// file), showing a version written for it. That version.
fn check_record(sh: &Shared, m: &Model, r: &Record) -> u64 {
    let name = &r.key.name;
    let source = match file_of(name) {
        Some(i) if m.fkeys.contains_key(name) => sh.sources[i].as_str(),
        _ if m.api.contains_key(name) => "api",
        _ => panic!("a VM nobody declared: {name}"),
    };
    assert_eq!(r.source.0, source, "{name}: source");
    m.version_of(r)
}

// ------------------------------------------------------------------ checks

/// Right after a restart: every acknowledged object is there, at its
/// generation or above, with its version at that generation; what was in
/// flight landed whole or not at all.
fn check_acknowledged(node: &Node, sh: &Shared) {
    let records = vm_records(node);
    let mut m = sh.model.lock().unwrap();
    let mut versions = BTreeMap::new();
    for (name, r) in &records {
        versions.insert(name.clone(), check_record(sh, &m, r));
        let seen = m.seen_gen.get(name).copied().unwrap_or(0);
        assert!(
            r.generation >= seen,
            "{name}: generation {} after kill -9, {seen} acknowledged or reported before",
            r.generation
        );
    }
    let names: Vec<String> = m.api.keys().cloned().collect();
    for name in names {
        let ApiObj { acked, in_flight } = m.api[&name];
        let now = match records.get(&name) {
            Some(r) => {
                let (g, version) = (r.generation, versions[&name]);
                match acked {
                    Acked::Live {
                        generation,
                        version: acked_version,
                    } if g == generation => assert_eq!(
                        version, acked_version,
                        "{name}: acknowledged generation {g} shows another version after kill -9"
                    ),
                    _ => {
                        assert!(
                            g > gen_of(acked),
                            "{name}: generation {g}, acknowledged {acked:?}"
                        );
                        assert_eq!(
                            in_flight,
                            Some(ApiOp::Apply(version)),
                            "{name}: generation {g}, version {version} after kill -9, \
                             acknowledged {acked:?}, in flight {in_flight:?}: an acknowledged \
                             state is lost"
                        );
                    }
                }
                Acked::Live {
                    generation: g,
                    version,
                }
            }
            None => match acked {
                Acked::Live {
                    generation,
                    version,
                } => {
                    assert_eq!(
                        in_flight,
                        Some(ApiOp::Delete),
                        "acknowledged {name} (generation {generation}, version {version}) \
                         is lost after kill -9"
                    );
                    Acked::Deleted {
                        generation: generation + 1,
                    }
                }
                other => other,
            },
        };
        let o = m.api.get_mut(&name).unwrap();
        o.acked = now;
        o.in_flight = None;
    }
    for (name, fk) in &m.fkeys {
        let i = file_of(name).unwrap();
        match (records.get(name), fk.ack) {
            (Some(r), Some((g, acked_version))) => {
                assert!(
                    r.generation >= g,
                    "{name}: generation {} after kill -9, {g} acknowledged",
                    r.generation
                );
                if r.generation == g {
                    assert_eq!(
                        versions[name], acked_version,
                        "{name}: acknowledged generation {g} shows another version after kill -9"
                    );
                }
            }
            (None, Some((g, version))) => assert_ne!(
                m.written[&version].streak, fk.undeclared,
                "{name} (generation {g}, version {version}), acknowledged from f{i}.yaml, \
                 every version of which declared it since, is lost after kill -9"
            ),
            (_, None) => {}
        }
    }
    for (name, r) in &records {
        let seen = m.seen_gen.entry(name.clone()).or_default();
        *seen = (*seen).max(r.generation);
    }
}

/// No marked volume is lost or changed; a VM never deleted keeps its
/// volume file (same inode). A read that races a rename by the node (a
/// retain or a restore) is retried; a loss persists.
fn check_volumes(node: &Node, sh: &Shared) {
    let mut tries = 0;
    loop {
        match volumes_once(node, sh) {
            Ok(n) => {
                sh.model.lock().unwrap().stats.volumes_checked += n;
                return;
            }
            Err(_) if tries < 10 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}\nlog:\n{}", node.log_text()),
        }
    }
}

fn volumes_once(node: &Node, sh: &Shared) -> Result<u64, String> {
    let files = volume_files(node);
    let m = sh.model.lock().unwrap();
    for name in files.values() {
        if !m
            .api
            .keys()
            .chain(m.fkeys.keys())
            .any(|vm| names_volume_of(name, vm))
        {
            return Err(format!("an unexpected file in the volumes: {name}"));
        }
    }
    let mut checked = 0;
    for (ino, v) in &m.volumes {
        let Some(name) = files.get(ino) else {
            return Err(format!(
                "{}'s volume (inode {ino}, marker {}) is gone, neither live nor retained: {files:?}",
                v.vm, v.marker
            ));
        };
        if !names_volume_of(name, &v.vm) {
            return Err(format!("{}'s volume (inode {ino}) is named {name}", v.vm));
        }
        match qcow2_first_byte(&volumes_dir(node).join(name)) {
            Ok(b) if b == v.marker => checked += 1,
            Ok(b) => {
                return Err(format!(
                    "{name} ({}): first byte {b}, marked {}",
                    v.vm, v.marker
                ))
            }
            Err(e) => return Err(format!("{name} ({}): {e}", v.vm)),
        }
    }
    for (vm, ino) in &m.live_inode {
        if m.deleted_since.contains(vm) {
            continue;
        }
        let own = volume_name(vm);
        let live = files.iter().find(|(_, n)| **n == own).map(|(i, _)| *i);
        if live != Some(*ino) {
            return Err(format!(
                "{vm} was never deleted, yet its volume {own} is inode {live:?}, not {ino}: {files:?}"
            ));
        }
    }
    Ok(checked)
}

/// Wait (bounded) until the node shows the final state: API objects as
/// acknowledged, each file's objects with its final content, a volume for
/// each live VM, the same file for a VM that came back. `end`: also every
/// undeclared object deleted and every deleted VM's volume retained.
fn converge(node: &Node, sh: &Shared, end: bool) {
    let t = Instant::now();
    loop {
        let problems = convergence_problems(node, sh, end);
        if problems.is_empty() {
            return;
        }
        assert!(
            t.elapsed() < CONVERGE,
            "the node did not converge in {CONVERGE:?}: {problems:#?}\nlog:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn convergence_problems(node: &Node, sh: &Shared, end: bool) -> Vec<String> {
    let records = vm_records(node);
    let files: BTreeMap<String, u64> = volume_files(node)
        .into_iter()
        .map(|(i, n)| (n, i))
        .collect();
    let m = sh.model.lock().unwrap();
    let mut p = Vec::new();
    let live = m.live();
    for (name, version) in &live {
        match records.get(name) {
            Some(r) if check_record(sh, &m, r) == *version => {}
            Some(r) => p.push(format!(
                "{name}: version {} (generation {}), want {version}",
                m.version_of(r),
                r.generation
            )),
            None => p.push(format!("{name}: absent, want version {version}")),
        }
        match (files.get(&volume_name(name)), m.live_inode.get(name)) {
            (None, _) => p.push(format!("{name}: no volume")),
            (Some(i), Some(known)) if i != known => p.push(format!(
                "{name}: volume inode {i}, not its own {known} (not taken back)"
            )),
            _ => {}
        }
    }
    for name in records.keys() {
        let undeclared_file_key = m.fkeys.contains_key(name) && !live.contains_key(name);
        if m.api.contains_key(name) && !live.contains_key(name) || end && undeclared_file_key {
            p.push(format!("{name}: still there"));
        }
    }
    if end {
        let by_ino: BTreeMap<u64, &String> = files.iter().map(|(n, i)| (*i, n)).collect();
        for (ino, v) in &m.volumes {
            if !live.contains_key(&v.vm)
                && by_ino.get(ino).is_some_and(|n| !n.starts_with("retained."))
            {
                p.push(format!("{}: deleted, its volume not retained", v.vm));
            }
        }
    }
    p
}

/// Once converged: mark the new volumes, take the node's word for the
/// files' objects, and look for what no one should leave behind.
fn after_convergence(node: &Node, sh: &Shared) {
    let records = vm_records(node);
    let files: BTreeMap<String, u64> = volume_files(node)
        .into_iter()
        .map(|(i, n)| (n, i))
        .collect();
    let mut m = sh.model.lock().unwrap();
    for vm in m.live().into_keys() {
        // Converged: a VM that came back has its own volume again.
        m.deleted_since.remove(&vm);
        let path = volumes_dir(node).join(volume_name(&vm));
        let ino = files[&volume_name(&vm)];
        if let Some(v) = m.volumes.get(&ino) {
            assert_eq!(v.vm, vm, "{vm}'s volume is {}'s", v.vm);
            continue;
        }
        let marker = 1 + (m.stats.markers_written % 255) as u8;
        if try_mark(&path, marker) && std::fs::metadata(&path).is_ok_and(|md| md.ino() == ino) {
            m.stats.markers_written += 1;
            m.volumes.insert(
                ino,
                Volume {
                    vm: vm.clone(),
                    marker,
                },
            );
            m.live_inode.insert(vm, ino);
        }
    }
    for (name, r) in &records {
        let version = check_record(sh, &m, r);
        if let Some(fk) = m.fkeys.get_mut(name) {
            fk.ack = Some((r.generation, version));
        }
    }
    // The manifest directory holds the test's files, nothing else.
    let want: BTreeSet<String> = m
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| f.is_some())
        .map(|(i, _)| format!("f{i}.yaml"))
        .collect();
    let have: BTreeSet<String> = std::fs::read_dir(&node.manifests)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(have, want, "the manifest directory");
    drop(m);
    // No temporary file of a killed node. One of the running node may be
    // in the making: what stays is left over.
    note_leftovers(node, sh, node.child.as_ref().map(|c| c.id()));
}

/// Record the temporary files no running process will finish: those of
/// killed nodes, and what stays in the storage's `tmp/` (one file of the
/// running node may be in the making there).
fn note_leftovers(node: &Node, sh: &Shared, running: Option<u32>) {
    let known = |f: &String| sh.model.lock().unwrap().leftovers.contains_key(f);
    let mut left = leftovers(node, running);
    left.retain(|f| !known(f));
    for _ in 0..10 {
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
        let now = leftovers(node, running);
        left.retain(|f| now.contains(f));
    }
    let mut m = sh.model.lock().unwrap();
    let point = m.stats.kills;
    for f in left {
        if let std::collections::btree_map::Entry::Vacant(e) = m.leftovers.entry(f) {
            let size = std::fs::metadata(e.key()).map_or(0, |md| md.len());
            eprintln!(
                "LEFT OVER after kill point {point}: {} ({size} bytes)",
                e.key()
            );
            e.insert((point, size));
        }
    }
}
