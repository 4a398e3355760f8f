//! `deorch bench fastr`: FASTR's recovery point (RPO) and cost as users
//! run it, beside the same replication done the way Proxmox's `pvesr`
//! does it (`zfs snapshot`, then `zfs send -i` piped through `ssh` into
//! `zfs recv` on the other node), on the same guest, disk and write load,
//! in alternating windows of the same run; then a failover.
//!
//! Two network namespaces (the relocation bench's lab, both deorch nodes
//! on zfs below `--zfs-root`), the tiny guest writing `--write-mibps` of
//! random data to its data disk all along.
//!
//! * **deorch**: the VM with `fastr: {copies: 1, interval: I}`; the RPO is
//!   sampled every 100 ms from the VM's status as users read it (now −
//!   the time of the copy's newest point).
//! * **pvesr's way**: with `fastr` removed from the VM, a loop on the
//!   VM's own dataset: every `I` (or at once when a round took longer),
//!   `zfs snapshot`, `zfs send -i` from the previous snapshot, through
//!   `ssh` (an `sshd` the bench runs in the other namespace, on the second
//!   link) into `zfs recv -F`; the RPO sampled every 100 ms as now − the
//!   snapshot time of the last round that completed.
//!
//! Per window: RPO percentiles, bytes on the path's link per byte the
//! guest wrote, the machine's busy CPU (both cores, the guest's included)
//! and the deorch daemons' own CPU. Then the failover: the VM's node's
//! daemon and QEMU are killed and the time until the VM runs on the
//! other node (its status) and its guest writes again is measured.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bench::percentiles;
use crate::bench_node::cpu_seconds;
use crate::bench_relocate::{
    deorch_setup_with, guest_goes_on, last_write, loadavg, new_qcow2, sh, vm_yaml, DeorchSide, Lab,
};

/// `deorch bench fastr`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// ZFS root prefix of the two nodes (`ROOT-0`, `ROOT-1`; destroyed
    /// afterwards).
    #[arg(long, value_name = "ROOT", required_unless_present = "dir")]
    pub zfs_root: Option<String>,
    /// The nodes on `dir` (qcow2) storage instead: FASTR through QEMU's
    /// dirty bitmaps and backup jobs. pvesr's way (zfs) does not run.
    #[arg(long, conflicts_with = "zfs_root")]
    pub dir: bool,
    /// Size of the guest's data disk (filled before the start).
    #[arg(long, default_value = "512Mi")]
    pub disk_size: crate::model::Quantity,
    /// MiB the guest writes every second, all along.
    #[arg(long, default_value_t = 50)]
    pub write_mibps: u64,
    /// Replication interval of both paths.
    #[arg(long, default_value = "1s")]
    pub interval: crate::model::Duration,
    /// Seconds each measured window lasts.
    #[arg(long, default_value_t = 30)]
    pub window: u64,
    /// Windows per path (alternating).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Directory of the tiny guest.
    #[arg(long, default_value = "/var/lib/deorch/guest")]
    pub guest: PathBuf,
}

/// What one window measured.
#[derive(Debug, Clone, Default)]
struct Window {
    rpo_ms: Vec<f64>,
    link: u64,
    written: f64,
    secs: f64,
    busy_cores: f64,
    daemons: [f64; 2],
}

fn now_ms() -> u64 {
    crate::clock::now_ms()
}

/// (busy, total) jiffies of the whole machine.
fn machine_cpu() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The guest's MiB written so far, as its serial log says.
fn written(dir: &Path) -> f64 {
    last_write(dir).map(|w| w.0 as f64).unwrap_or(0.0)
}

struct Meter {
    t: Instant,
    link: u64,
    written: f64,
    cpu: (u64, u64),
    daemons: [f64; 2],
}

fn meter(lab: &Lab, d: &DeorchSide, ifname: &str) -> anyhow::Result<Meter> {
    let pids: Vec<u32> = lab.nodes.iter().map(Child::id).collect();
    Ok(Meter {
        t: Instant::now(),
        link: lab.link_bytes(d.at, ifname)?.1,
        written: written(&d.nodes[d.at].vm_dir()),
        cpu: machine_cpu(),
        daemons: [cpu_seconds(pids[d.at]), cpu_seconds(pids[1 - d.at])],
    })
}

fn close(
    lab: &Lab,
    d: &DeorchSide,
    ifname: &str,
    m0: Meter,
    rpo_ms: Vec<f64>,
) -> anyhow::Result<Window> {
    let m1 = meter(lab, d, ifname)?;
    let secs = m1.t.duration_since(m0.t).as_secs_f64();
    let (b0, t0) = m0.cpu;
    let (b1, t1) = m1.cpu;
    let cores = cores() as f64;
    Ok(Window {
        rpo_ms,
        link: m1.link - m0.link,
        written: (m1.written - m0.written) * 1048576.0,
        secs,
        busy_cores: (b1 - b0) as f64 / (t1 - t0).max(1) as f64 * cores,
        daemons: [
            (m1.daemons[0] - m0.daemons[0]) / secs,
            (m1.daemons[1] - m0.daemons[1]) / secs,
        ],
    })
}

/// The point time of the VM's first FASTR copy, as its status shows it.
fn point_ms(d: &DeorchSide) -> Option<u64> {
    d.nodes[d.at].status("vm", "mover")["fastr"][0]["point"]
        .as_str()
        .and_then(|p| p.strip_prefix("fastr-"))
        .and_then(|p| p.parse().ok())
}

fn fastr_spec(interval: Duration) -> String {
    format!(
        "  fastr: {{copies: 1, interval: {}ms}}\n",
        interval.as_millis()
    )
}

/// A window of deorch's FASTR.
fn deorch_window(lab: &Lab, d: &DeorchSide, a: &Args) -> anyhow::Result<Window> {
    let disk = a.disk_size.bytes();
    let interval = a.interval.0;
    let from = now_ms();
    d.nodes[d.at].apply(vm_yaml(disk, &fastr_spec(interval)))?;
    // Caught up: a point taken after the policy was (re)applied.
    let t = Instant::now();
    while point_ms(d).is_none_or(|p| p < from) {
        if t.elapsed() > Duration::from_secs(300) {
            bail!("no FASTR point within 300 s: {}", d.nodes[d.at].log_tail());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ifname = &lab.d_if[d.at];
    let m0 = meter(lab, d, ifname)?;
    let mut rpo = Vec::new();
    while m0.t.elapsed() < Duration::from_secs(a.window) {
        if let Some(p) = point_ms(d) {
            rpo.push(now_ms().saturating_sub(p) as f64);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let w = close(lab, d, ifname, m0, rpo)?;
    // Off again, so the other path runs alone.
    d.nodes[d.at].apply(vm_yaml(disk, ""))?;
    std::thread::sleep(interval + Duration::from_secs(2));
    Ok(w)
}

/// An sshd in namespace `ns`, listening on `ip`, taking `key`.
struct Sshd {
    child: Child,
    key: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sshd(lab: &Lab, side: usize) -> anyhow::Result<Sshd> {
    let dir = lab.dir.join("sshd");
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all("/run/sshd")?;
    let host = dir.join("host");
    let key = dir.join("client");
    for k in [&host, &key] {
        sh(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(k))?;
    }
    std::fs::copy(dir.join("client.pub"), dir.join("authorized_keys"))?;
    let conf = dir.join("sshd_config");
    std::fs::write(
        &conf,
        format!(
            "Port 22\nListenAddress {ip}\nHostKey {host}\nPermitRootLogin yes\nAuthorizedKeysFile {dir}/authorized_keys\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPidFile {dir}/sshd.pid\n",
            ip = lab.r_ip[side],
            host = host.display(),
            dir = dir.display()
        ),
    )?;
    let child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", lab.ns[side]))
        .arg("--")
        .arg("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("sshd.log"))?))
        .spawn()
        .context("starting sshd")?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(Sshd { child, key })
}

/// pvesr's way, kept across its windows: the next snapshot's number.
struct Peer {
    ds: String,
    dst: String,
    zfs: String,
    ssh: String,
    n: u64,
}

impl Peer {
    /// One round: snapshot, send (incremental after the first), receive
    /// on the other side; the snapshot's time when it completed.
    fn round(&mut self) -> anyhow::Result<u64> {
        let snap = format!("{}@xfer-peer-{}", self.ds, self.n);
        let at = now_ms();
        sh(Command::new(&self.zfs).args(["snapshot", &snap]))?;
        let from = if self.n > 0 {
            format!("-i @xfer-peer-{} ", self.n - 1)
        } else {
            String::new()
        };
        let pipe = format!(
            "set -o pipefail; {zfs} send {from}{snap} | {ssh} '{zfs} recv -F {dst}'",
            zfs = self.zfs,
            ssh = self.ssh,
            dst = self.dst
        );
        sh(Command::new("bash").args(["-c", &pipe]))?;
        if self.n > 1 {
            let old = format!("{}@xfer-peer-{}", self.ds, self.n - 2);
            let _ = sh(Command::new(&self.zfs).args(["destroy", &old]));
        }
        self.n += 1;
        Ok(at)
    }
}

/// A window of pvesr's way.
fn peer_window(lab: &Lab, d: &DeorchSide, a: &Args, peer: &mut Peer) -> anyhow::Result<Window> {
    let interval = a.interval.0;
    // Caught up first (the first round sends the whole volume).
    let last = Arc::new(AtomicU64::new(peer.round()?));
    let stop = Arc::new(AtomicBool::new(false));
    let ifname = &lab.r_if[d.at];
    let m0 = meter(lab, d, ifname)?;
    let window = Duration::from_secs(a.window);
    let result = std::thread::scope(|s| {
        let (last2, stop2) = (last.clone(), stop.clone());
        let looping = s.spawn(move || -> anyhow::Result<()> {
            while !stop2.load(Ordering::SeqCst) {
                let t = Instant::now();
                last2.store(peer.round()?, Ordering::SeqCst);
                if let Some(rest) = interval.checked_sub(t.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            Ok(())
        });
        let mut rpo = Vec::new();
        while m0.t.elapsed() < window {
            rpo.push(now_ms().saturating_sub(last.load(Ordering::SeqCst)) as f64);
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::SeqCst);
        let w = close(lab, d, ifname, m0, rpo);
        looping.join().expect("the peer loop")?;
        w
    });
    result
}

/// Run the bench (see the module doc).
pub fn run(args: Args) -> anyhow::Result<()> {
    if sh(Command::new("id").arg("-u"))?.trim() != "0" {
        bail!("bench fastr needs root (network namespaces, zfs)");
    }
    let tools: &[&str] = if args.dir {
        &["ip", "qemu-img", "qemu-io"]
    } else {
        &[
            "ip",
            "qemu-img",
            "qemu-io",
            "zfs",
            "ssh",
            "ssh-keygen",
            "/usr/sbin/sshd",
        ]
    };
    for tool in tools {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            bail!("{tool} is not installed (packages zfs-fuse, openssh-client, openssh-server)");
        }
    }
    let disk = args.disk_size.bytes();
    if args.write_mibps * 2 > disk >> 20 {
        bail!("--write-mibps must be at most half the disk size in MiB");
    }
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/build.sh");
    if build.exists() {
        sh(Command::new(&build).arg(&args.guest))?;
    }
    let interval = args.interval.0;
    let mut lab = Lab::new()?;
    lab.zfs_root = args.zfs_root.clone();
    let image = lab.dir.join("filled.qcow2");
    new_qcow2(&image, disk)?;
    sh(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &format!("write -P 0x5a 0 {disk}")])
        .arg(&image))?;
    let load0 = loadavg();
    let t_setup = Instant::now();
    let d = deorch_setup_with(
        &mut lab,
        &args.guest,
        &image,
        disk,
        args.write_mibps,
        &fastr_spec(interval),
    )?;
    eprintln!(
        "deorch: two nodes up, the VM runs on {} after {:.1} s",
        d.nodes[d.at].name,
        t_setup.elapsed().as_secs_f64()
    );
    let other = 1 - d.at;
    let peer_side = match &args.zfs_root {
        Some(root) => {
            let server = sshd(&lab, other)?;
            let zfs = sh(Command::new("sh").args(["-c", "command -v zfs"]))?
                .trim()
                .to_string();
            let peer = Peer {
                ds: format!("{root}-{}/vol/vm-default-mover-data", d.at),
                dst: format!("{root}-{other}/pvesr-copy"),
                ssh: format!(
                    "nsenter --net=/var/run/netns/{ns} -- ssh -i {key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR root@{ip}",
                    ns = lab.ns[d.at],
                    key = server.key.display(),
                    ip = lab.r_ip[other]
                ),
                zfs,
                n: 0,
            };
            Some((server, peer))
        }
        None => None,
    };
    let (server, mut peer) = match peer_side {
        Some((s, p)) => (Some(s), Some(p)),
        None => (None, None),
    };
    let mut dw = Vec::new();
    let mut pw = Vec::new();
    for r in 0..args.rounds.max(1) {
        let w = deorch_window(&lab, &d, &args)?;
        eprintln!(
            "window {r} deorch: RPO p50 {:.0} ms",
            percentiles(&mut ms(&w.rpo_ms)).p50
        );
        dw.push(w);
        let Some(peer) = peer.as_mut() else {
            continue;
        };
        let w = peer_window(&lab, &d, &args, peer)?;
        eprintln!(
            "window {r} pvesr's way: RPO p50 {:.0} ms",
            percentiles(&mut ms(&w.rpo_ms)).p50
        );
        pw.push(w);
    }
    // Failover: FASTR on again and caught up, then the VM's node dies.
    let from = now_ms();
    d.nodes[d.at].apply(vm_yaml(disk, &fastr_spec(interval)))?;
    let t = Instant::now();
    while point_ms(&d).is_none_or(|p| p < from) {
        if t.elapsed() > Duration::from_secs(300) {
            bail!("no FASTR point before the failover");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let qemu = std::fs::read_to_string(crate::qemu::cmdline::pidfile(&d.nodes[d.at].vm_dir()))
        .unwrap_or_default();
    let killed = Instant::now();
    let _ = lab.nodes[d.at].kill();
    let _ = lab.nodes[d.at].wait();
    let _ = Command::new("kill").args(["-9", qemu.trim()]).status();
    let t = Instant::now();
    while !d.nodes[other].runs_vm() {
        if t.elapsed() > Duration::from_secs(120) {
            bail!(
                "the VM did not run on the other node within 120 s: {}",
                d.nodes[other].log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let running = killed.elapsed();
    guest_goes_on(&d.nodes[other].vm_dir(), 0, Duration::from_secs(120))?;
    let writing = killed.elapsed();
    let load1 = loadavg();
    drop(server);

    println!(
        "FASTR on {}, interval {} ms, {} window(s) of {} s per path, alternating; data disk {} MiB, guest writes {} MiB/s; load average {load0} before, {load1} after",
        if args.dir {
            "dir (qcow2; pvesr's way needs zfs: not run)"
        } else {
            "zfs beside pvesr's way (zfs send -i through ssh)"
        },
        interval.as_millis(),
        args.rounds.max(1),
        args.window,
        disk >> 20,
        args.write_mibps
    );
    println!();
    println!("| path | RPO p50 | p99 | max | on the link per byte written | guest wrote | machine CPU busy (of {} cores) | deorch daemons' CPU (sender / receiver) |", cores());
    println!("|---|---|---|---|---|---|---|---|");
    let deorch = if args.dir {
        "deorch FASTR, dir (dirty bitmaps, backup jobs)"
    } else {
        "deorch FASTR"
    };
    for (name, ws) in [
        (deorch, &dw),
        ("pvesr's way (zfs send -i, ssh, zfs recv)", &pw),
    ] {
        if ws.is_empty() {
            continue;
        }
        let all: Vec<f64> = ws.iter().flat_map(|w| w.rpo_ms.clone()).collect();
        let p = percentiles(&mut ms(&all));
        let link: u64 = ws.iter().map(|w| w.link).sum();
        let wrote: f64 = ws.iter().map(|w| w.written).sum();
        let secs: f64 = ws.iter().map(|w| w.secs).sum();
        let busy = ws.iter().map(|w| w.busy_cores * w.secs).sum::<f64>() / secs;
        let dm = |i: usize| ws.iter().map(|w| w.daemons[i] * w.secs).sum::<f64>() / secs;
        println!(
            "| {name} | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} | {:.1} MiB/s | {busy:.2} | {:.2} / {:.2} |",
            p.p50,
            p.p99,
            p.max,
            link as f64 / wrote.max(1.0),
            wrote / 1048576.0 / secs,
            dm(0),
            dm(1)
        );
    }
    println!();
    println!(
        "failover (the VM's node's daemon and QEMU killed): the VM Running on the other node after {:.1} s, its guest writing again after {:.1} s",
        running.as_secs_f64(),
        writing.as_secs_f64()
    );
    Ok(())
}

fn ms(xs: &[f64]) -> Vec<Duration> {
    xs.iter()
        .map(|x| Duration::from_secs_f64(x / 1000.0))
        .collect()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
