//! The live data path of a relocation (`deorch::relocate::live`) between
//! two real QEMUs with the tiny guest: the guest beats (boot id and a
//! counter it keeps on its disk, fsync'd every 200 ms) on its serial
//! console; it is moved while it beats, and every stream between the two
//! QEMUs passes through the nodes' authenticated tunnel
//! (`relocate::tunnel`), which counts the encrypted bytes.
//!
//! Shows: the beats go on on the receiver with the same boot id and the
//! next counter (no gap, no second boot); the sender ends paused and
//! never beats again; the receiver's disk holds what the guest wrote
//! (byte for byte outside the counter, the counter at least the last one
//! the sender wrote); the bytes on the wire stay within
//! (allocated disk + RAM) × 1.1.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{qemu_available, tiny_guest};
use deorch::gossip::channel::ChannelKey;
use deorch::model::vm::{DiskBus, Machine};
use deorch::qemu::cmdline::{self, QemuDisk, QemuVm};
use deorch::qemu::probe::Accel;
use deorch::qemu::qmp::Qmp;
use deorch::relocate::live::{abort, live_copy, LivePlan, LiveStage};
use deorch::relocate::tunnel::{self, TunnelKey};
use tokio::net::{TcpListener, TcpStream};

const DISK_MIB: u64 = 64;
const RAM_MIB: u64 = 128;

/// Kills QEMUs by pidfile when the test ends, however it ends; then
/// unmounts what the test mounted.
struct Reap(Vec<PathBuf>, Option<Unmount>);
impl Drop for Reap {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Ok(pid) = std::fs::read_to_string(p) {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        self.1.take();
    }
}

fn vm(dir: &Path, kernel: &Path, initrd: &Path) -> QemuVm {
    QemuVm {
        name: "default/mover".into(),
        accel: Accel::Tcg,
        machine: Machine::Pc,
        cpu_model: "qemu64".into(),
        cpus: 1,
        memory_mib: RAM_MIB,
        kernel: Some(kernel.into()),
        initrd: Some(initrd.into()),
        cmdline: Some("console=ttyS0 quiet deorch.heartbeat".into()),
        disks: vec![QemuDisk {
            id: "root".into(),
            path: dir.join("root.qcow2"),
            format: "qcow2".into(),
            bus: DiskBus::Virtio,
            read_only: false,
        }],
        nics: vec![],
        vnc: None,
        spice: None,
        runtime_dir: dir.into(),
    }
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (boot id, counter) of each beat in a serial log.
fn beats(log: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let rest = l.split("deorch-guest: beat ").nth(1)?;
            let mut it = rest.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

async fn connect(dir: &Path) -> Qmp {
    let sock = cmdline::qmp_socket(dir);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Qmp::connect(&sock, Duration::from_secs(10)).await {
            Ok(q) => return q,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("QMP {}: {e}", sock.display()),
        }
    }
}

/// Two admitted nodes' tunnel keys (sender, receiver).
fn tunnel_keys() -> (TunnelKey, TunnelKey) {
    use deorch::gossip::trust::Members;
    use deorch::gossip::verify::{AcceptAll, MembersOnly};
    use deorch::identity::{AddressType, Network, PrivateKey};
    let keys = [
        PrivateKey::generate(Network::Mainnet),
        PrivateKey::generate(Network::Mainnet),
    ];
    let members = Arc::new(Members::new("C"));
    members.set(&std::collections::BTreeMap::from_iter(
        keys.iter().enumerate().map(|(i, k)| {
            (
                k.address(AddressType::P2wpkh).unwrap().to_string(),
                format!("n{i}"),
            )
        }),
    ));
    let key = |k: &PrivateKey| TunnelKey {
        key: Arc::new(ChannelKey::new(k, "C")),
        cluster: "C".into(),
        verifier: Arc::new(MembersOnly {
            members: members.clone(),
            documents: AcceptAll,
        }),
    };
    (key(&keys[0]), key(&keys[1]))
}

/// The nodes' tunnel for one stream to `to` (a port of the receiver's
/// QEMU): returns where the sender's QEMU connects; `count` gets the
/// encrypted bytes that crossed, both ways.
async fn tunnelled(
    to: SocketAddr,
    keys: &(TunnelKey, TunnelKey),
    count: Arc<AtomicU64>,
) -> SocketAddr {
    let (sender, receiver) = keys.clone();
    let receiver_id = receiver.key.id().clone();
    // The receiving node: accepts tunnels from admitted nodes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tunnel_at = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (receiver, count) = (receiver.clone(), count.clone());
            tokio::spawn(async move {
                let Ok((t, _header)) = tunnel::accept(s, &receiver).await else {
                    return;
                };
                let Ok(plain) = TcpStream::connect(to).await else {
                    return;
                };
                if let Ok(n) = t.splice(plain).await {
                    count.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
    });
    // The sending node: a local port for its QEMU, each connection
    // carried through a tunnel.
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = local.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((plain, _)) = local.accept().await {
            let (sender, receiver_id) = (sender.clone(), receiver_id.clone());
            tokio::spawn(async move {
                let Ok(s) = TcpStream::connect(tunnel_at).await else {
                    return;
                };
                if let Ok(t) = tunnel::connect(s, &sender, &receiver_id, b"stream").await {
                    let _ = t.splice(plain).await;
                }
            });
        }
    });
    at
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Allocated bytes of an image (`qemu-img map`: extents holding data).
fn allocated(img: &Path) -> u64 {
    let out = sh(Command::new("qemu-img")
        .args(["map", "-U", "--output=json"])
        .arg(img));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true && e["zero"] != true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

fn raw(img: &Path, out: &Path) -> Vec<u8> {
    sh(Command::new("qemu-img")
        .args(["convert", "-U", "-O", "raw"])
        .arg(img)
        .arg(out));
    std::fs::read(out).unwrap()
}

/// A sender running the beating guest on a disk holding `data` (a
/// pattern at 1 MiB, so the mirror has something to move; the counter at
/// 0), and a receiver waiting paused for it on a fresh disk of the same
/// size, both QMPs connected, the sender beating.
struct Pair {
    base: PathBuf,
    a: PathBuf,
    b: PathBuf,
    sender: Qmp,
    receiver: Qmp,
    a_log: PathBuf,
    boot: String,
    _reap: Reap,
}

async fn start_pair(tag: &str, data: &str) -> Pair {
    start_pair_with(tag, data, None).await
}

/// Unmounts a test's tmpfs when the test ends (QEMUs reaped first).
struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// [`start_pair`], the receiver's directory on a tmpfs of `receiver_space`
/// when given (a receiver whose disk fills up).
async fn start_pair_with(tag: &str, data: &str, receiver_space: Option<&str>) -> Pair {
    let (kernel, initrd) = tiny_guest();
    let base = common::temp_dir(tag);
    let (a, b) = (base.join("a"), base.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    if let Some(size) = receiver_space {
        sh(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&b));
    }
    let reap = Reap(
        vec![cmdline::pidfile(&a), cmdline::pidfile(&b)],
        receiver_space.map(|_| Unmount(b.clone())),
    );
    let size = format!("{DISK_MIB}M");
    for d in [&a, &b] {
        sh(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(d.join("root.qcow2"))
            .arg(&size));
    }
    sh(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &format!("write -P 0xa5 1M {data}")])
        .arg(a.join("root.qcow2")));
    sh(Command::new("qemu-system-x86_64").args(cmdline::args(&vm(&a, &kernel, &initrd))));
    let mut receiver_args = cmdline::args(&vm(&b, &kernel, &initrd));
    receiver_args.extend(["-S", "-incoming", "defer"].map(String::from));
    sh(Command::new("qemu-system-x86_64").args(&receiver_args));
    let sender = connect(&a).await;
    let receiver = connect(&b).await;
    let a_log = cmdline::serial_log(&a);
    let deadline = Instant::now() + Duration::from_secs(60);
    while beats(&a_log).len() < 5 {
        assert!(
            Instant::now() < deadline,
            "the guest did not beat within 60 s: {}",
            std::fs::read_to_string(&a_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let boot = beats(&a_log)[0].0.clone();
    Pair {
        base,
        a,
        b,
        sender,
        receiver,
        a_log,
        boot,
        _reap: reap,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_moves_with_its_disk_and_keeps_beating() {
    if qemu_available() {
        move_and_check("relocate-live", false).await;
    }
}

/// The same move with each side driving only its own QEMU, agreeing on
/// each step over a control tunnel (`relocate::session`), as two nodes
/// do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sides_each_driving_its_own_qemu_move_the_guest_over_a_control_tunnel() {
    if qemu_available() {
        move_and_check("relocate-session", true).await;
    }
}

/// Sender and receiver of `plan` agreeing over a control tunnel, each
/// with its own QMP, as on two nodes.
async fn across_nodes(
    sender: &mut Qmp,
    receiver: Qmp,
    plan: &LivePlan,
    keys: &(TunnelKey, TunnelKey),
    progress: impl FnMut(deorch::relocate::live::LiveProgress),
) -> (deorch::relocate::live::LiveOutcome, Qmp) {
    use deorch::relocate::session::{run_receiver, run_sender};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = l.local_addr().unwrap();
    let (rk, rplan) = (keys.1.clone(), plan.clone());
    let receiving = tokio::spawn(async move {
        let mut receiver = receiver;
        let (s, _) = l.accept().await.unwrap();
        let (mut control, header) = tunnel::accept(s, &rk).await.unwrap();
        assert_eq!(header, b"control");
        run_receiver(&mut control, &mut receiver, &rplan).await?;
        Ok::<Qmp, deorch::relocate::session::SessionError>(receiver)
    });
    let s = TcpStream::connect(at).await.unwrap();
    let mut control = tunnel::connect(s, &keys.0, keys.1.key.id(), b"control")
        .await
        .unwrap();
    let out = run_sender(&mut control, sender, plan, progress)
        .await
        .unwrap_or_else(|e| panic!("sender: {e}"));
    let receiver = receiving
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("receiver: {e}"));
    (out, receiver)
}

async fn move_and_check(tag: &str, two_sides: bool) {
    let Pair {
        base,
        a,
        b,
        mut sender,
        mut receiver,
        a_log,
        boot,
        _reap,
    } = start_pair(tag, "16M").await;
    let alloc = allocated(&a.join("root.qcow2"));

    let (nbd_listen, mig_listen) = (free_port(), free_port());
    let (nbd_bytes, mig_bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let keys = tunnel_keys();
    let plan = LivePlan {
        disks: vec!["root".into()],
        nbd_listen,
        nbd_connect: tunnelled(nbd_listen, &keys, nbd_bytes.clone()).await,
        migration_listen: mig_listen,
        migration_connect: tunnelled(mig_listen, &keys, mig_bytes.clone()).await,
        downtime_limit_ms: 50,
        max_bandwidth: None,
        mirror_timeout: Duration::from_secs(60),
        migrate_timeout: Duration::from_secs(120),
    };
    let mut stages = Vec::new();
    let progress = |p: deorch::relocate::live::LiveProgress| {
        if stages.last() != Some(&p.stage) {
            stages.push(p.stage);
        }
    };
    let (out, mut receiver) = if two_sides {
        across_nodes(&mut sender, receiver, &plan, &keys, progress).await
    } else {
        let out = live_copy(&mut sender, &mut receiver, &plan, progress)
            .await
            .unwrap_or_else(|e| panic!("live copy: {e}"));
        (out, receiver)
    };
    eprintln!("{out:?}");
    assert_eq!(
        stages,
        [
            LiveStage::Mirroring,
            LiveStage::Migrating,
            LiveStage::Switching
        ]
    );
    let switched = Instant::now();

    // The sender is paused for good; the receiver runs.
    let s = sender.execute("query-status", None).await.unwrap();
    assert_eq!(s["running"], false, "{s}");
    assert_eq!(s["status"], "postmigrate", "{s}");
    let r = receiver.execute("query-status", None).await.unwrap();
    assert_eq!(r["running"], true, "{r}");
    let last_a = beats(&a_log).last().unwrap().clone();
    let b_log = cmdline::serial_log(&b);
    while beats(&b_log).len() < 5 {
        assert!(
            switched.elapsed() < Duration::from_secs(20),
            "no beats on the receiver: {}",
            std::fs::read_to_string(&b_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_b = beats(&b_log);
    let after = beats(&a_log);
    assert_eq!(
        after.len(),
        after.iter().filter(|x| x.1 <= last_a.1).count(),
        "the sender beat after the switch"
    );
    assert!(
        on_b.iter().all(|(id, _)| *id == boot),
        "another boot on the receiver: {on_b:?} (sender's {boot})"
    );
    assert_eq!(
        on_b[0].1,
        last_a.1 + 1,
        "the receiver's first beat does not follow the sender's last"
    );
    assert!(on_b.windows(2).all(|w| w[1].1 == w[0].1 + 1), "{on_b:?}");

    // Disks: quit both, compare.
    let last_b = beats(&b_log).last().unwrap().1;
    sender.execute("quit", None).await.ok();
    receiver.execute("quit", None).await.ok();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ra = raw(&a.join("root.qcow2"), &base.join("a.raw"));
    let rb = raw(&b.join("root.qcow2"), &base.join("b.raw"));
    assert_eq!(ra.len(), rb.len());
    assert!(
        ra[512..] == rb[512..],
        "the disks differ outside the counter"
    );
    let counter = |d: &[u8]| -> u64 {
        String::from_utf8_lossy(&d[..32])
            .chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    };
    // The guest writes the counter, then prints the beat: paused between
    // the two, the sender's disk is one ahead of its console, and that
    // beat is printed by the receiver.
    let on_a_disk = counter(&ra);
    assert!(
        on_a_disk == last_a.1 || (on_a_disk == last_a.1 + 1 && on_b[0].1 == on_a_disk),
        "the sender's disk holds {on_a_disk}, its console last said {}",
        last_a.1
    );
    assert!(counter(&rb) >= last_b, "the receiver's disk lost a beat");

    // Bytes on the wire.
    let wire = nbd_bytes.load(Ordering::Relaxed) + mig_bytes.load(Ordering::Relaxed);
    let budget = (alloc + (RAM_MIB << 20)) as f64 * 1.1;
    eprintln!(
        "wire: nbd {} B + migration {} B = {wire} B; allocated {alloc} B, RAM {} B; budget {budget:.0} B; downtime {} ms (QEMU) + switch {} ms; total {} ms",
        nbd_bytes.load(Ordering::Relaxed),
        mig_bytes.load(Ordering::Relaxed),
        RAM_MIB << 20,
        out.qemu_downtime_ms,
        out.switch_ms,
        out.total_ms
    );
    assert!(
        (wire as f64) <= budget,
        "{wire} B on the wire, budget {budget:.0} B"
    );
    assert!(
        nbd_bytes.load(Ordering::Relaxed) >= alloc,
        "less than the allocated data crossed: the tunnel did not carry the mirror"
    );
    std::fs::remove_dir_all(&base).ok();
}

/// After a failed copy: `abort` leaves the sender's guest running (the
/// same boot, beating on without a gap) with no mirror job or NBD client
/// of the copy left.
async fn aborted_and_running_on_the_sender(
    sender: &mut Qmp,
    plan: &LivePlan,
    a_log: &Path,
    boot: &str,
) {
    let notes = abort(sender, plan).await;
    eprintln!("abort: {notes:?}");
    let s = sender.execute("query-status", None).await.unwrap();
    assert_eq!(s["running"], true, "{s}");
    let jobs = sender.execute("query-block-jobs", None).await.unwrap();
    assert_eq!(jobs, serde_json::json!([]), "a mirror job is left");
    let nodes = sender
        .execute("query-named-block-nodes", None)
        .await
        .unwrap();
    assert!(
        !nodes.to_string().contains("reloc-target"),
        "the mirror's NBD client is left: {nodes}"
    );
    let before = beats(a_log).len();
    let t = Instant::now();
    while beats(a_log).len() < before + 5 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the sender stopped beating"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = beats(a_log);
    assert!(all.iter().all(|(id, _)| id == boot), "the guest rebooted");
    assert!(
        all.windows(2).all(|w| w[1].1 == w[0].1 + 1),
        "a gap: {all:?}"
    );
}

/// The receiver's QEMU dies in the middle of the copy: the copy fails,
/// `abort` leaves the sender running the same guest (its beats go on,
/// same boot id, no gap), and nothing of the relocation is left on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_killed_mid_copy_leaves_the_guest_running_on_the_sender() {
    if !qemu_available() {
        return;
    }
    let Pair {
        base,
        b,
        mut sender,
        mut receiver,
        a_log,
        boot,
        _reap,
        ..
    } = start_pair("relocate-abort", "48M").await;
    let (nbd_listen, mig_listen) = (free_port(), free_port());
    let plan = LivePlan {
        disks: vec!["root".into()],
        nbd_listen,
        nbd_connect: nbd_listen,
        migration_listen: mig_listen,
        migration_connect: mig_listen,
        downtime_limit_ms: 50,
        // Slow enough that the kill lands in the middle of the copy.
        max_bandwidth: Some(1 << 20),
        mirror_timeout: Duration::from_secs(60),
        migrate_timeout: Duration::from_secs(60),
    };
    let receiver_pid = std::fs::read_to_string(cmdline::pidfile(&b)).unwrap();
    let mut killed = false;
    let r = live_copy(&mut sender, &mut receiver, &plan, |p| {
        // Kill the receiver once memory is moving.
        if p.stage == LiveStage::Migrating && p.ram_sent > 0 && !killed {
            killed = true;
            let _ = Command::new("kill")
                .args(["-9", receiver_pid.trim()])
                .status();
        }
    })
    .await;
    assert!(killed, "the copy never reached the memory stage");
    let e = r.expect_err("the copy succeeded without a receiver");
    eprintln!("copy failed as it should: {e}");
    aborted_and_running_on_the_sender(&mut sender, &plan, &a_log, &boot).await;
    sender.execute("quit", None).await.ok();
    std::fs::remove_dir_all(&base).ok();
}

/// Offline (stop, copy, start): the guest beats on the sender's disk, is
/// stopped, its disk is copied through the tunnel into the receiver's
/// fresh image (only the allocated data crosses), and the guest booted
/// on the receiver goes on from the counter its disk holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_a_stopped_guest_boots_on_the_receiver_from_the_copied_disk() {
    use deorch::relocate::offline;
    if !qemu_available() {
        return;
    }
    let Pair {
        base,
        a,
        b,
        mut sender,
        mut receiver,
        a_log,
        boot,
        _reap,
    } = start_pair("relocate-offline", "16M").await;
    // The waiting receiver of the live pair is not used: offline starts
    // the VM afresh.
    receiver.execute("quit", None).await.ok();
    // Stop: the guest fsyncs each counter it writes; quit cuts it at once.
    sender.execute("quit", None).await.ok();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last_a = beats(&a_log).last().unwrap().1;
    let alloc = allocated(&a.join("root.qcow2"));

    let keys = tunnel_keys();
    let listen = free_port();
    let wire = Arc::new(AtomicU64::new(0));
    let through = tunnelled(listen, &keys, wire.clone()).await;
    let server = offline::serve(&b.join("root.qcow2"), "qcow2", listen, "root")
        .await
        .unwrap_or_else(|e| panic!("serve: {e}"));
    let t = Instant::now();
    offline::copy(
        &a.join("root.qcow2"),
        "qcow2",
        through,
        "root",
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| panic!("copy: {e}"));
    let took = t.elapsed();
    drop(server);
    let ra = raw(&a.join("root.qcow2"), &base.join("a.raw"));
    let rb = raw(&b.join("root.qcow2"), &base.join("b.raw"));
    assert!(ra == rb, "the copy differs from the source");
    // The tunnel adds a connection's bytes when its splice ends, which
    // may be just after the copy returned (seen once in a full run).
    let settle = Instant::now();
    let moved = loop {
        let m = wire.load(Ordering::Relaxed);
        if m > 0 || settle.elapsed() > Duration::from_secs(5) {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "offline copy: {alloc} B allocated, {moved} B on the wire, {} ms",
        took.as_millis()
    );
    // The 16 MiB pattern must cross (the counter's cluster is mostly
    // zeros, which convert skips even where allocated).
    assert!(moved >= 16 << 20, "less than the data crossed: {moved} B");
    assert!(
        (moved as f64) <= alloc as f64 * 1.1 + 65_536.0,
        "{moved} B on the wire for {alloc} B of data"
    );

    // Start on the receiver: a new boot that goes on from the disk's count.
    let (kernel, initrd) = tiny_guest();
    sh(Command::new("qemu-system-x86_64").args(cmdline::args(&vm(&b, &kernel, &initrd))));
    let b_log = cmdline::serial_log(&b);
    let t = Instant::now();
    while beats(&b_log).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no beat on the receiver"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = beats(&b_log)[0].clone();
    assert_ne!(first.0, boot, "the receiver's guest is the same boot");
    assert!(
        first.1 == last_a + 1 || first.1 == last_a + 2,
        "the receiver's guest counts from {} after the sender's {last_a}",
        first.1
    );
    let mut q = connect(&b).await;
    q.execute("quit", None).await.ok();
    std::fs::remove_dir_all(&base).ok();
}

/// The receiver's disk fills up in the middle of the mirror: the
/// receiver's side is told, the sender aborts, and the guest runs on on
/// the sender (same boot, no gap) with nothing of the copy left there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_whose_disk_fills_up_leaves_the_guest_on_the_sender() {
    use deorch::relocate::session::{run_receiver, run_sender, SessionError};
    if !qemu_available() {
        return;
    }
    let Pair {
        base,
        b,
        mut sender,
        receiver,
        a_log,
        boot,
        _reap,
        ..
    } = start_pair_with("relocate-full", "48M", Some("8M")).await;
    let keys = tunnel_keys();
    let (nbd_listen, mig_listen) = (free_port(), free_port());
    let plan = LivePlan {
        disks: vec!["root".into()],
        nbd_listen,
        nbd_connect: tunnelled(nbd_listen, &keys, Arc::new(AtomicU64::new(0))).await,
        migration_listen: mig_listen,
        migration_connect: tunnelled(mig_listen, &keys, Arc::new(AtomicU64::new(0))).await,
        downtime_limit_ms: 50,
        max_bandwidth: None,
        mirror_timeout: Duration::from_secs(60),
        migrate_timeout: Duration::from_secs(60),
    };
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = l.local_addr().unwrap();
    let (rk, rplan) = (keys.1.clone(), plan.clone());
    let receiving = tokio::spawn(async move {
        let mut receiver = receiver;
        let (s, _) = l.accept().await.unwrap();
        let (mut control, _) = tunnel::accept(s, &rk).await.unwrap();
        run_receiver(&mut control, &mut receiver, &rplan).await
    });
    let s = TcpStream::connect(at).await.unwrap();
    let mut control = tunnel::connect(s, &keys.0, keys.1.key.id(), b"control")
        .await
        .unwrap();
    let e = run_sender(&mut control, &mut sender, &plan, |_| {})
        .await
        .expect_err("a copy into a full disk succeeded");
    eprintln!("sender: {e}");
    assert!(matches!(e, SessionError::Live(_)), "{e}");
    let r = receiving.await.unwrap();
    eprintln!("receiver: {r:?}");
    assert!(
        matches!(&r, Err(SessionError::Aborted(why)) if why.contains("disk root")),
        "the receiver was not told why: {r:?}"
    );
    aborted_and_running_on_the_sender(&mut sender, &plan, &a_log, &boot).await;
    let _ = b;
    sender.execute("quit", None).await.ok();
    drop(_reap);
    std::fs::remove_dir_all(&base).ok();
}
