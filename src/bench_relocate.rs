//! `deorch bench relocate`: a live relocation as users run it, beside the
//! same move done by plain QEMU, in one run.
//!
//! Two network namespaces joined by two veth pairs (one for each path, so
//! that each path's bytes are counted on its own link, and both cross the
//! same kind of link). The tiny guest (`guest/build.sh`; kernel command
//! line `deorch.writeload=N`: N MiB/s of O_DIRECT writes to its data disk)
//! runs with a data disk of `--disk-size`, cloned from an image the bench
//! fills with `qemu-io` first (so the allocated size is the disk size).
//!
//! * **deorch**: one `deorch node run` daemon per namespace (qemu
//!   hypervisor, dir storage, `--gossip-verify unsigned`, the short gossip
//!   timings of [`crate::bench_cluster::FAST_TIMINGS`], `--probe-guest`),
//!   the VM applied as a Spacesuit and a VirtualMachine, then moved back
//!   and forth by applying `Relocation` objects (unique names) on the node
//!   that runs it. Per run: the wall time from the apply to phase
//!   Succeeded on both nodes, the sender's `progress.elapsedMs`, the copy
//!   as the sender's agent logs it (`relocation copied total_ms`: first
//!   QMP command to the receiver's `cont`), the status' `downtimeMs`, and
//!   the bytes on the link.
//! * **raw QEMU**: the same guest, disk and load in one plain QEMU per
//!   namespace: the receiver started with `-S -incoming defer` on a fresh
//!   disk of the same size (timed apart), then nbd-server-start and
//!   block-export-add on the receiver, blockdev-add (nbd) and
//!   blockdev-mirror sync=full on the sender, READY, migrate-incoming and
//!   migrate, query-migrate until completed, block-job-cancel (the ready
//!   mirror stops in sync), nbd-server-stop and `cont` on the receiver.
//!   Per run: first QMP command to `cont`, QEMU's total-time and
//!   downtime, completed to `cont`, and the bytes on the link. With
//!   `--raw-tls` both streams run over QEMU's own TLS (`tls-creds-psk`,
//!   a fresh pre-shared key; gnutls), the way QEMU alone authenticates and
//!   encrypts them as deorch's tunnel does; without it they are plain TCP,
//!   neither authenticated nor encrypted.
//!
//! The two paths alternate run by run; both guests run (and write) all
//! along, so load from one falls on the other's runs alike. Everything
//! the bench starts (daemons, their fences, every QEMU) is killed and the
//! namespaces are deleted at the end, also on error.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::api::{client, Request, Response};
use crate::bench::percentiles;
use crate::model::vm::{DiskBus, Machine};
use crate::qemu::cmdline::{self, QemuDisk, QemuVm, Vnc};
use crate::qemu::probe::Accel;
use crate::qemu::qmp::Qmp;

const CALL: Duration = Duration::from_secs(30);
const MEMORY_MIB: u64 = 128;
const GOSSIP_PORT: u16 = 7946;
const NBD_PORT: u16 = 10809;
const MIGRATION_PORT: u16 = 4444;
/// How often both paths poll (statuses, query-block-jobs, query-migrate).
const POLL: Duration = Duration::from_millis(20);
/// The raw QEMUs' VNC port (each namespace has its own).
const RAW_VNC_PORT: u16 = 9000;

/// `deorch bench relocate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Relocations per path (back and forth between the two sides).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Size of the guest's data disk, filled with data before the first run.
    #[arg(long, default_value = "128Mi")]
    pub disk_size: crate::model::Quantity,
    /// MiB the guest writes to its data disk every second, all along (0: none).
    #[arg(long, default_value_t = 0)]
    pub write_mibps: u64,
    /// Print the samples and summaries as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Run raw QEMU's NBD and migration streams over QEMU's own TLS (a
    /// pre-shared key), as protected as deorch's tunnel; plain TCP
    /// otherwise.
    #[arg(long)]
    pub raw_tls: bool,
    /// After the relocations, copy the running VM's data disk to the
    /// other node this many times as the disk of a new (stopped) VM
    /// placed there (a VM made from a VM on another node), beside
    /// `qemu-img convert` into a `qemu-nbd` export on the other side
    /// (plain TCP, or QEMU's TLS with `--raw-tls`).
    #[arg(long, default_value_t = 0)]
    pub copies: usize,
    /// Directory of the tiny guest (built there by guest/build.sh when this
    /// executable's source tree has it).
    #[arg(long, default_value = "/var/lib/deorch/guest")]
    pub guest: PathBuf,
    /// Offline relocations (stop, copy, start) beside the same by hand:
    /// raw QEMU powered down, its disk written into a `qemu-nbd` export
    /// on the other side (`qemu-img convert`), started there.
    #[arg(long)]
    pub offline: bool,
    /// The deorch nodes keep their volumes on ZFS below `ROOT-0` and
    /// `ROOT-1` (destroyed afterwards): their offline relocations stream
    /// the volumes (`zfs send`). Directory storage otherwise.
    #[arg(long, value_name = "ROOT")]
    pub zfs_root: Option<String>,
    /// With `--zfs-root`: the VM has one FASTR copy (`interval` as given,
    /// and a round before each relocation), so each move goes to the
    /// node holding the copy and streams only what changed since its
    /// point; each deorch move waits until the other node holds a copy.
    #[arg(long, value_name = "INTERVAL", requires = "zfs_root")]
    pub fastr: Option<String>,
}

/// What one relocation of the deorch path measured.
#[derive(Debug, Clone, serde::Serialize)]
struct DeorchRun {
    from: String,
    to: String,
    /// Apply answered → phase Succeeded on both nodes (polled every 20 ms).
    wall_ms: f64,
    /// The sender's `progress.elapsedMs` (its first QMP command to the
    /// mirrors stopped; the receiver's `cont` comes after).
    elapsed_ms: u64,
    /// The sender's agent log: first QMP command to the receiver's `cont`.
    copy_ms: Option<u64>,
    /// The status' `downtimeMs` (QEMU's downtime + the switch).
    downtime_ms: u64,
    /// Its two parts, from the sender's agent log: QEMU's downtime, and
    /// the switch (migration completed → the receiver runs the guest).
    qemu_downtime_ms: Option<u64>,
    switch_ms: Option<u64>,
    disk_bytes: u64,
    ram_bytes: u64,
    /// Volume streams before the mirror (zfs), from the agent log.
    streamed_bytes: Option<u64>,
    /// Bytes on the link, sender → receiver and back.
    wire_tx: u64,
    wire_rx: u64,
    /// The sender's phases as polled: apply → Copying (the VM's election,
    /// the receiver's volumes and QEMU made), Copying → Switching (the
    /// copy and the switch), Switching → Succeeded on both (the claim
    /// moves, the old copy is deleted).
    to_copying_ms: Option<f64>,
    copying_ms: Option<f64>,
    finishing_ms: Option<f64>,
    /// MiB/s the guest wrote from before the apply to after the move.
    guest_mibps: Option<f64>,
}

/// What one move of the raw QEMU path measured.
#[derive(Debug, Clone, serde::Serialize)]
struct RawRun {
    from: String,
    to: String,
    /// qemu-img create + the receiver's QEMU started and answering QMP.
    prep_ms: f64,
    /// First QMP command → the receiver's `cont` answered.
    total_ms: f64,
    /// Every mirror READY.
    mirror_ready_ms: f64,
    /// query-migrate's total-time and downtime.
    qemu_total_ms: u64,
    qemu_downtime_ms: u64,
    /// Migration completed → `cont` answered.
    switch_ms: f64,
    disk_bytes: u64,
    ram_bytes: u64,
    wire_tx: u64,
    wire_rx: u64,
    /// MiB/s the guest wrote from before the first command to after the move.
    guest_mibps: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    sh(Command::new("ip").args(args)).map(|_| ())
}

/// The namespaces, links and processes of one bench run; everything is
/// killed and deleted when dropped.
pub(crate) struct Lab {
    pub(crate) dir: PathBuf,
    pub(crate) ns: [String; 2],
    /// deorch's link: interface and address in each namespace.
    pub(crate) d_if: [String; 2],
    pub(crate) d_ip: [String; 2],
    /// The raw QEMU path's link.
    pub(crate) r_if: [String; 2],
    pub(crate) r_ip: [String; 2],
    pub(crate) nodes: Vec<Child>,
    /// The deorch nodes' ZFS roots' prefix (`--zfs-root`).
    pub(crate) zfs_root: Option<String>,
}

impl Lab {
    pub(crate) fn new() -> anyhow::Result<Lab> {
        let pid = std::process::id();
        let p = format!("brl{:x}", pid & 0xffff);
        let net = pid % 250;
        let dir = std::env::temp_dir().join(format!("deorch-bench-relocate-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).context("creating the bench directory")?;
        let lab = Lab {
            dir,
            ns: [format!("{p}a"), format!("{p}b")],
            d_if: [format!("{p}da"), format!("{p}db")],
            d_ip: [format!("10.231.{net}.1"), format!("10.231.{net}.2")],
            r_if: [format!("{p}ra"), format!("{p}rb")],
            r_ip: [format!("10.232.{net}.1"), format!("10.232.{net}.2")],
            nodes: Vec::new(),
            zfs_root: None,
        };
        for ns in &lab.ns {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        for (ifs, ips) in [(&lab.d_if, &lab.d_ip), (&lab.r_if, &lab.r_ip)] {
            ip(&[
                "link", "add", &ifs[0], "type", "veth", "peer", "name", &ifs[1],
            ])?;
            for i in 0..2 {
                ip(&["link", "set", &ifs[i], "netns", &lab.ns[i]])?;
                ip(&[
                    "-n",
                    &lab.ns[i],
                    "addr",
                    "add",
                    &format!("{}/24", ips[i]),
                    "dev",
                    &ifs[i],
                ])?;
                ip(&["-n", &lab.ns[i], "link", "set", &ifs[i], "up"])?;
            }
        }
        Ok(lab)
    }

    /// (rx, tx) bytes of `ifname` in namespace `side`.
    pub(crate) fn link_bytes(&self, side: usize, ifname: &str) -> anyhow::Result<(u64, u64)> {
        let out = sh(Command::new("ip").args([
            "-n",
            &self.ns[side],
            "-s",
            "-j",
            "link",
            "show",
            "dev",
            ifname,
        ]))?;
        let v: Value = serde_json::from_str(&out).context("ip -j -s link")?;
        let s = &v[0]["stats64"];
        Ok((
            s["rx"]["bytes"].as_u64().unwrap_or(0),
            s["tx"]["bytes"].as_u64().unwrap_or(0),
        ))
    }

    /// Every process whose command line names the bench directory (the
    /// daemons' fences, every QEMU): the bench started them all.
    fn own_processes(&self) -> Vec<u32> {
        let me = std::process::id();
        let needle = self.dir.display().to_string();
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                if String::from_utf8_lossy(&cmd).contains(&needle) {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        for _ in 0..3 {
            let pids = self.own_processes();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        for ns in &self.ns {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        // The daemons' logs outlive the run, for a look at what happened.
        let keep = std::env::temp_dir().join("deorch-bench-relocate-logs");
        let _ = std::fs::remove_dir_all(&keep);
        let _ = std::fs::create_dir_all(&keep);
        for side in ["a", "b"] {
            let _ = std::fs::copy(
                self.dir.join(format!("reloc-{side}/node.log")),
                keep.join(format!("reloc-{side}.log")),
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(root) = &self.zfs_root {
            for side in 0..2 {
                let ds = format!("{root}-{side}");
                // zfs-fuse keeps a dataset busy for a while after its
                // last user died.
                for _ in 0..20 {
                    let gone = Command::new("zfs")
                        .args(["destroy", "-r", &ds])
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                        || !Command::new("zfs")
                            .args(["list", &ds])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .is_ok_and(|s| s.success());
                    if gone {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }
}

/// One node daemon of the deorch path.
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) state: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Node {
    fn call(&self, req: &Request) -> anyhow::Result<Response> {
        Ok(client::call(&self.socket, req, CALL)?)
    }

    pub(crate) fn apply(&self, yaml: String) -> anyhow::Result<()> {
        match self.call(&Request::Apply {
            filename: "bench-relocate.yaml".into(),
            yaml,
            dry_run: false,
        })? {
            Response::Applied { .. } => Ok(()),
            other => bail!("{}: apply answered {other:?}", self.name),
        }
    }

    /// The status of `kind`/`name` as this node has it (null if none).
    pub(crate) fn status(&self, kind: &str, name: &str) -> Value {
        match self.call(&Request::Get {
            kind: Some(kind.into()),
            namespace: None,
            name: Some(name.into()),
        }) {
            Ok(Response::Objects { mut records }) => {
                records.pop().and_then(|r| r.status).unwrap_or_default()
            }
            _ => Value::Null,
        }
    }

    pub(crate) fn runs_vm(&self) -> bool {
        let s = self.status("vm", "mover");
        s["phase"] == "Running" && s["node"] == self.name.as_str()
    }

    pub(crate) fn vm_dir(&self) -> PathBuf {
        self.state.join("vms/default/mover")
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `total_ms` of the agent's "relocation copied" line for `name`.
    /// A field of the sender agent's `relocation copied` line for
    /// Relocation `name` (`total_ms`, `downtime_ms`, `switch_ms`).
    fn logged_copy(&self, name: &str, field: &str) -> Option<u64> {
        let text = strip_ansi(&std::fs::read_to_string(&self.log).ok()?);
        let line = text
            .lines()
            .rev()
            .find(|l| l.contains("relocation copied") && l.contains(&format!("/{name}")))?;
        let rest = line.split(&format!(" {field}=")).nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Lines `deorch-guest: wrote` in a serial log: the guest's load loop runs.
fn guest_lines(dir: &Path) -> usize {
    std::fs::read_to_string(cmdline::serial_log(dir))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("deorch-guest: wrote"))
        .count()
}

/// The guest's last load line in `dir`: (MiB written so far, its uptime).
pub(crate) fn last_write(dir: &Path) -> Option<(u64, f64)> {
    let text = std::fs::read_to_string(cmdline::serial_log(dir)).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("deorch-guest: wrote"))?;
    let mut it = line
        .split("deorch-guest: wrote ")
        .nth(1)?
        .split_whitespace();
    let total = it.next()?.parse().ok()?;
    let at = it.nth(2)?.parse().ok()?;
    Some((total, at))
}

/// MiB/s the guest wrote between two load lines.
fn write_rate(a: Option<(u64, f64)>, b: Option<(u64, f64)>) -> Option<f64> {
    let ((m0, t0), (m1, t1)) = (a?, b?);
    (t1 > t0).then(|| m1.saturating_sub(m0) as f64 / (t1 - t0))
}

/// Wait until the guest whose serial log is in `dir` prints a load line
/// beyond the first `after`.
pub(crate) fn guest_goes_on(dir: &Path, after: usize, limit: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while guest_lines(dir) <= after {
        if t0.elapsed() > limit {
            bail!(
                "the guest in {} printed nothing new within {limit:?}: {}",
                dir.display(),
                std::fs::read_to_string(cmdline::serial_log(dir))
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn spawn_node(
    lab: &mut Lab,
    side: usize,
    guest: &Path,
    seed: Option<&str>,
) -> anyhow::Result<Node> {
    let name = format!("reloc-{}", ["a", "b"][side]);
    let home = lab.dir.join(&name);
    let manifests = home.join("manifests");
    std::fs::create_dir_all(&manifests).context("creating a manifest directory")?;
    let node = Node {
        state: home.join("state"),
        socket: home.join("node.sock"),
        log: home.join("node.log"),
        name,
    };
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut cmd = Command::new("nsenter");
    // The network namespace only: `ip netns exec` would give the node a
    // mount namespace of its own, where zfs-fuse's mounts vanish.
    cmd.arg(format!("--net=/var/run/netns/{}", lab.ns[side]))
        .arg("--")
        .arg(&exe)
        .args(["--log", "info", "node", "run", "--name", &node.name])
        .args(["--hypervisor", "qemu"]);
    match &lab.zfs_root {
        Some(root) => cmd.args([
            "--storage",
            "zfs",
            "--storage-root",
            &format!("{root}-{side}"),
        ]),
        None => cmd.args(["--storage", "dir"]),
    };
    cmd.arg("--probe-guest")
        .arg(guest)
        .arg("--state-dir")
        .arg(&node.state)
        .arg("--manifests")
        .arg(&manifests)
        .arg("--socket")
        .arg(&node.socket)
        .args([
            "--gossip-listen",
            &format!("{}:{GOSSIP_PORT}", lab.d_ip[side]),
            "--cluster",
            "bench-relocate",
            "--gossip-verify",
            "unsigned",
        ])
        .args(crate::bench_cluster::FAST_TIMINGS);
    if let Some(s) = seed {
        cmd.args(["--seed", s]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(&node.log).context("creating node.log")?,
        ))
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    lab.nodes.push(child);
    let t0 = Instant::now();
    loop {
        if let Ok(Response::Info(_)) = client::call(&node.socket, &Request::Info, CALL) {
            return Ok(node);
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!(
                "{} did not answer within 30 s; log:\n{}",
                node.name,
                node.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn relocation_yaml(name: &str, offline: bool) -> String {
    let mode = if offline { "  mode: Offline\n" } else { "" };
    format!("apiVersion: deorch.dev/v1alpha1\nkind: Relocation\nmetadata: {{name: {name}}}\nspec:\n  virtualMachine: {{name: mover}}\n{mode}")
}

/// The guest's kernel command line (before the TSC settings QEMU's driver
/// adds for TCG).
fn guest_cmdline(write_mibps: u64) -> String {
    format!(
        "{} deorch.writeload={write_mibps}",
        crate::qemu::probe::TINY_CMDLINE
    )
}

/// The deorch path: two daemons, the VM running on one of them, beating.
pub(crate) struct DeorchSide {
    pub(crate) nodes: [Node; 2],
    /// Which node runs the VM.
    pub(crate) at: usize,
}

/// The VM's manifest: its data disk of `disk_size` from the spacesuit,
/// then `extra` (spec lines, indented by two spaces).
pub(crate) fn vm_yaml(disk_size: u64, extra: &str) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: mover}}\nspec:\n  spacesuit: tiny\n  stopTimeout: 5s\n  disks:\n    - name: data\n      size: {disk_size}\n      source: {{spacesuit: tiny}}\n{extra}"
    )
}

/// The two deorch nodes and the VM, its spec with `vm_extra` too.
pub(crate) fn deorch_setup_with(
    lab: &mut Lab,
    guest: &Path,
    image: &Path,
    disk_size: u64,
    write_mibps: u64,
    vm_extra: &str,
) -> anyhow::Result<DeorchSide> {
    let a = spawn_node(lab, 0, guest, None)?;
    let seed = format!("{}:{GOSSIP_PORT}", lab.d_ip[0]);
    let b = spawn_node(lab, 1, guest, Some(&seed))?;
    let suit = format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: tiny}}\nspec:\n  source: {{image: {{path: {img}, format: qcow2}}}}\n  boot: {{kernel: {k}, initrd: {i}, cmdline: \"{c}\"}}\n  machine: pc\n  cpu: 1\n  memory: {MEMORY_MIB}Mi\n",
        img = image.display(),
        k = guest.join("vmlinuz").display(),
        i = guest.join("initrd.img").display(),
        c = guest_cmdline(write_mibps),
    );
    let vm = vm_yaml(disk_size, vm_extra);
    a.apply(suit)?;
    a.apply(vm)?;
    let nodes = [a, b];
    let t0 = Instant::now();
    let at = loop {
        if let Some(i) = nodes.iter().position(Node::runs_vm) {
            break i;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!(
                "the VM runs nowhere after 300 s; logs:\n{}\n---\n{}",
                nodes[0].log_tail(),
                nodes[1].log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    guest_goes_on(&nodes[at].vm_dir(), 0, Duration::from_secs(90))?;
    Ok(DeorchSide { nodes, at })
}

/// `--fastr`: until the VM's status on its node lists a copy point on
/// the other node.
fn wait_for_copy(d: &DeorchSide, limit: Duration) -> anyhow::Result<()> {
    let (at, other) = (d.at, 1 - d.at);
    let t = Instant::now();
    loop {
        let st = d.nodes[at].status("vm", "mover");
        let held = st["fastr"].as_array().into_iter().flatten().any(|c| {
            c["node"].as_str() == Some(d.nodes[other].name.as_str()) && c["point"].is_string()
        });
        if held {
            return Ok(());
        }
        if t.elapsed() > limit {
            bail!(
                "no FASTR copy on {} within {limit:?}: {st}",
                d.nodes[other].name
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn deorch_run(
    lab: &Lab,
    d: &mut DeorchSide,
    i: usize,
    limit: Duration,
    offline: bool,
) -> anyhow::Result<DeorchRun> {
    let (from, to) = (d.at, 1 - d.at);
    let name = format!("move-{i}");
    let (rx0, tx0) = lab.link_bytes(from, &lab.d_if[from])?;
    let w0 = last_write(&d.nodes[from].vm_dir());
    let t0 = Instant::now();
    d.nodes[from].apply(relocation_yaml(&name, offline))?;
    let (mut copying, mut switching) = (None, None);
    loop {
        let st = [
            d.nodes[0].status("relocation", &name),
            d.nodes[1].status("relocation", &name),
        ];
        match st[from]["phase"].as_str() {
            Some("Copying") => {
                copying.get_or_insert(t0.elapsed());
            }
            Some("Switching") | Some("Succeeded") => {
                switching.get_or_insert(t0.elapsed());
            }
            _ => {}
        }
        if st.iter().all(|s| s["phase"] == "Succeeded") {
            break;
        }
        if st.iter().any(|s| s["phase"] == "Failed") || t0.elapsed() > limit {
            bail!(
                "relocation {name} did not succeed (after {:?}): {} / {}\nlogs:\n{}\n---\n{}",
                t0.elapsed(),
                st[0],
                st[1],
                d.nodes[0].log_tail(),
                d.nodes[1].log_tail()
            );
        }
        std::thread::sleep(POLL);
    }
    let wall = t0.elapsed();
    let (rx1, tx1) = lab.link_bytes(from, &lab.d_if[from])?;
    let st = d.nodes[from].status("relocation", &name);
    let p = &st["progress"];
    let run = DeorchRun {
        from: d.nodes[from].name.clone(),
        to: d.nodes[to].name.clone(),
        wall_ms: ms(wall),
        elapsed_ms: p["elapsedMs"].as_u64().unwrap_or(0),
        copy_ms: d.nodes[from].logged_copy(&name, "total_ms"),
        qemu_downtime_ms: d.nodes[from].logged_copy(&name, "downtime_ms"),
        switch_ms: d.nodes[from].logged_copy(&name, "switch_ms"),
        streamed_bytes: d.nodes[from].logged_copy(&name, "streamed_bytes"),
        downtime_ms: st["downtimeMs"].as_u64().unwrap_or(0),
        disk_bytes: p["diskDone"].as_u64().unwrap_or(0),
        ram_bytes: p["ramSent"].as_u64().unwrap_or(0),
        wire_tx: tx1 - tx0,
        wire_rx: rx1 - rx0,
        to_copying_ms: copying.map(ms),
        copying_ms: copying.zip(switching).map(|(c, s)| ms(s.saturating_sub(c))),
        finishing_ms: switching.map(|s| ms(wall.saturating_sub(s))),
        guest_mibps: None,
    };
    // The VM runs on the receiver (both nodes agree), its guest goes on
    // there, and the old copy is gone.
    let t1 = Instant::now();
    while !(d.nodes[to].runs_vm()
        && d.nodes[from].status("vm", "mover")["node"] == d.nodes[to].name.as_str()
        && !cmdline::pidfile(&d.nodes[from].vm_dir()).exists())
    {
        if t1.elapsed() > Duration::from_secs(60) {
            bail!(
                "after {name}: the VM does not run on {} alone; logs:\n{}\n---\n{}",
                d.nodes[to].name,
                d.nodes[0].log_tail(),
                d.nodes[1].log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = d.nodes[to].vm_dir();
    guest_goes_on(&dir, guest_lines(&dir), Duration::from_secs(30))?;
    d.at = to;
    Ok(DeorchRun {
        // An offline move reboots the guest: its counters start again.
        guest_mibps: (!offline)
            .then(|| write_rate(w0, last_write(&dir)))
            .flatten(),
        ..run
    })
}

/// The raw QEMU path: the running sender, its QMP, its directory.
struct RawSide {
    at: usize,
    dir: PathBuf,
    qmp: Qmp,
    seq: usize,
    accel: Accel,
}

fn raw_vm(dir: &Path, guest: &Path, accel: Accel, write_mibps: u64) -> QemuVm {
    let tsc = match accel {
        Accel::Tcg => crate::qemu::tsc::host_khz(),
        Accel::Kvm => None,
    };
    QemuVm {
        name: "bench.mover".into(),
        accel,
        machine: Machine::Pc,
        cpu_model: match accel {
            Accel::Kvm => "host".into(),
            Accel::Tcg => "qemu64".into(),
        },
        cpus: 1,
        memory_mib: MEMORY_MIB,
        kernel: Some(guest.join("vmlinuz")),
        initrd: Some(guest.join("initrd.img")),
        cmdline: Some(crate::qemu::tsc::guest_cmdline(
            Some(&guest_cmdline(write_mibps)),
            accel,
            tsc,
        )),
        disks: vec![QemuDisk {
            id: "data".into(),
            path: dir.join("data.qcow2"),
            format: "qcow2".into(),
            bus: DiskBus::Virtio,
            read_only: false,
        }],
        nics: vec![],
        // deorch's QEMUs have a VNC console (and so a VGA card): the same.
        vnc: Some(Vnc {
            listen: std::net::IpAddr::from([127, 0, 0, 1]),
            port: RAW_VNC_PORT,
            websocket: None,
            websocket_tls: None,
        }),
        spice: None,
        runtime_dir: dir.into(),
    }
}

async fn qmp_connect(dir: &Path) -> anyhow::Result<Qmp> {
    let sock = cmdline::qmp_socket(dir);
    let t0 = Instant::now();
    loop {
        match Qmp::connect(&sock, Duration::from_secs(30)).await {
            Ok(q) => return Ok(q),
            Err(e) if t0.elapsed() > Duration::from_secs(20) => {
                bail!("QMP {}: {e}", sock.display())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn qmp(q: &mut Qmp, side: &str, cmd: &str, args: Option<Value>) -> anyhow::Result<Value> {
    q.execute(cmd, args)
        .await
        .with_context(|| format!("{side}: {cmd}"))
}

/// Start a raw QEMU in namespace `side` in `dir` (its disk there already).
fn start_raw(
    rt: &tokio::runtime::Runtime,
    lab: &Lab,
    side: usize,
    dir: &Path,
    vm: &QemuVm,
    incoming: bool,
) -> anyhow::Result<Qmp> {
    let mut args = cmdline::args(vm);
    // As deorch's QEMUs: a guest that powers off leaves QEMU to be told
    // to quit.
    args.push("-no-shutdown".into());
    if incoming {
        args.extend(["-S", "-incoming", "defer"].map(String::from));
    }
    sh(Command::new("ip")
        .args(["netns", "exec", &lab.ns[side], "qemu-system-x86_64"])
        .args(&args))?;
    rt.block_on(qmp_connect(dir))
}

fn raw_setup(
    rt: &tokio::runtime::Runtime,
    lab: &Lab,
    guest: &Path,
    image: &Path,
    accel: Accel,
    write_mibps: u64,
) -> anyhow::Result<RawSide> {
    let dir = lab.dir.join("raw-0");
    std::fs::create_dir_all(&dir)?;
    // A copy-on-write clone of the filled image, as deorch's dir storage
    // makes the VM's disk.
    sh(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(image)
        .arg(dir.join("data.qcow2")))?;
    let vm = raw_vm(&dir, guest, accel, write_mibps);
    let qmp = start_raw(rt, lab, 0, &dir, &vm, false)?;
    guest_goes_on(&dir, 0, Duration::from_secs(90))?;
    Ok(RawSide {
        at: 0,
        dir,
        qmp,
        seq: 1,
        accel,
    })
}

#[allow(clippy::too_many_arguments)]
fn raw_run(
    rt: &tokio::runtime::Runtime,
    lab: &Lab,
    r: &mut RawSide,
    guest: &Path,
    disk_size: u64,
    write_mibps: u64,
    limit: Duration,
    tls: bool,
) -> anyhow::Result<RawRun> {
    let (from, to) = (r.at, 1 - r.at);
    // The receiver: a fresh disk of the same size, QEMU waiting paused.
    let tp = Instant::now();
    let dir = lab.dir.join(format!("raw-{}", r.seq));
    r.seq += 1;
    std::fs::create_dir_all(&dir)?;
    new_qcow2(&dir.join("data.qcow2"), disk_size)?;
    let vm = raw_vm(&dir, guest, r.accel, write_mibps);
    let mut dst = start_raw(rt, lab, to, &dir, &vm, true)?;
    let prep = tp.elapsed();
    let host = lab.r_ip[to].clone();
    let (rx0, tx0) = lab.link_bytes(from, &lab.r_if[from])?;
    let w0 = last_write(&r.dir);
    let src = &mut r.qmp;
    let psk = lab.dir.join("psk");
    if tls {
        fresh_psk(&psk)?;
    }
    let (tls_s, tls_c) = (format!("tls-s{}", r.seq), format!("tls-c{}", r.seq));
    let (total, ready, switch, info, disk_bytes) = rt.block_on(async {
        let t0 = Instant::now();
        let mut nbd_args = json!({"addr": {"type": "inet", "data": {"host": host, "port": NBD_PORT.to_string()}}});
        let mut target = json!({"driver": "nbd", "node-name": "bench-target",
                "server": {"type": "inet", "host": host, "port": NBD_PORT.to_string()},
                "export": "data"});
        if tls {
            qmp(&mut dst, "receiver", "object-add", Some(json!({"qom-type": "tls-creds-psk", "id": tls_s, "endpoint": "server", "dir": psk}))).await?;
            qmp(src, "sender", "object-add", Some(json!({"qom-type": "tls-creds-psk", "id": tls_c, "endpoint": "client", "dir": psk, "username": "deorch"}))).await?;
            qmp(&mut dst, "receiver", "migrate-set-parameters", Some(json!({"tls-creds": tls_s}))).await?;
            qmp(src, "sender", "migrate-set-parameters", Some(json!({"tls-creds": tls_c}))).await?;
            nbd_args["tls-creds"] = json!(tls_s);
            target["tls-creds"] = json!(tls_c);
        }
        qmp(
            &mut dst,
            "receiver",
            "nbd-server-start",
            Some(nbd_args),
        )
        .await?;
        qmp(
            &mut dst,
            "receiver",
            "block-export-add",
            Some(json!({"type": "nbd", "id": "bench", "node-name": "data", "name": "data", "writable": true})),
        )
        .await?;
        qmp(src, "sender", "blockdev-add", Some(target)).await?;
        qmp(
            src,
            "sender",
            "blockdev-mirror",
            Some(json!({"job-id": "bench", "device": "data", "target": "bench-target", "sync": "full"})),
        )
        .await?;
        let mut disk_bytes = 0;
        loop {
            let jobs = qmp(src, "sender", "query-block-jobs", None).await?;
            let Some(j) = jobs
                .as_array()
                .and_then(|a| a.iter().find(|j| j["device"] == "bench"))
            else {
                bail!("the mirror ended before READY: {jobs}");
            };
            disk_bytes = j["offset"].as_u64().unwrap_or(disk_bytes);
            if j["ready"] == true {
                break;
            }
            if t0.elapsed() > limit {
                bail!("the mirror was not READY within {limit:?}: {j}");
            }
            tokio::time::sleep(POLL).await;
        }
        let ready = t0.elapsed();
        let uri = format!("tcp:{host}:{MIGRATION_PORT}");
        qmp(&mut dst, "receiver", "migrate-incoming", Some(json!({"uri": uri}))).await?;
        qmp(src, "sender", "migrate", Some(json!({"uri": uri}))).await?;
        let info = loop {
            let info = qmp(src, "sender", "query-migrate", None).await?;
            match info["status"].as_str() {
                Some("completed") => break info,
                Some("failed") | Some("cancelled") => bail!("migration: {info}"),
                _ => {}
            }
            if t0.elapsed() > limit {
                bail!("the migration did not complete within {limit:?}: {info}");
            }
            tokio::time::sleep(POLL).await;
        };
        let completed = Instant::now();
        qmp(src, "sender", "block-job-cancel", Some(json!({"device": "bench"}))).await?;
        loop {
            let jobs = qmp(src, "sender", "query-block-jobs", None).await?;
            match jobs
                .as_array()
                .and_then(|a| a.iter().find(|j| j["device"] == "bench"))
            {
                None => break,
                Some(j) => disk_bytes = j["offset"].as_u64().unwrap_or(disk_bytes),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        qmp(&mut dst, "receiver", "nbd-server-stop", None).await?;
        qmp(&mut dst, "receiver", "cont", None).await?;
        anyhow::Ok((t0.elapsed(), ready, completed.elapsed(), info, disk_bytes))
    })?;
    let (rx1, tx1) = lab.link_bytes(from, &lab.r_if[from])?;
    let run = RawRun {
        from: lab.ns[from].clone(),
        to: lab.ns[to].clone(),
        prep_ms: ms(prep),
        total_ms: ms(total),
        mirror_ready_ms: ms(ready),
        qemu_total_ms: info["total-time"].as_u64().unwrap_or(0),
        qemu_downtime_ms: info["downtime"].as_u64().unwrap_or(0),
        switch_ms: ms(switch),
        disk_bytes,
        ram_bytes: info["ram"]["transferred"].as_u64().unwrap_or(0),
        wire_tx: tx1 - tx0,
        wire_rx: rx1 - rx0,
        guest_mibps: None,
    };
    // The old sender goes, with its disk; the guest goes on here.
    let old = std::mem::replace(&mut r.dir, dir);
    let pid = std::fs::read_to_string(cmdline::pidfile(&old)).unwrap_or_default();
    let _ = rt.block_on(r.qmp.execute("quit", None));
    r.qmp = dst;
    r.at = to;
    let t1 = Instant::now();
    while !pid.trim().is_empty() && Path::new(&format!("/proc/{}", pid.trim())).exists() {
        if t1.elapsed() > Duration::from_secs(10) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&old);
    guest_goes_on(&r.dir, 0, Duration::from_secs(30))?;
    Ok(RawRun {
        guest_mibps: write_rate(w0, last_write(&r.dir)),
        ..run
    })
}

/// Allocated bytes of an image (extents holding data).
fn allocated(img: &Path) -> anyhow::Result<u64> {
    let out = sh(Command::new("qemu-img")
        .args(["map", "-U", "--output=json"])
        .arg(img))?;
    let v: Value = serde_json::from_str(&out).context("qemu-img map")?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["data"] == true && e["zero"] != true)
                .map(|e| e["length"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0))
}

/// The accelerator deorch's QEMU runs with (its `-accel`).
fn accel_of(dir: &Path) -> Accel {
    let pid = std::fs::read_to_string(cmdline::pidfile(dir)).unwrap_or_default();
    let cmd = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    match args.windows(2).find(|w| w[0] == b"-accel").map(|w| w[1]) {
        Some(b"kvm") => Accel::Kvm,
        _ => Accel::Tcg,
    }
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn mib(b: f64) -> f64 {
    b / 1048576.0
}

fn durations(xs: impl Iterator<Item = f64>) -> Vec<Duration> {
    xs.map(|x| Duration::from_secs_f64(x / 1e3)).collect()
}

fn median(xs: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = xs.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

/// `deorch bench relocate`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if sh(Command::new("id").arg("-u"))?.trim() != "0" {
        bail!("bench relocate needs root (network namespaces, veth pairs)");
    }
    for tool in ["ip", "qemu-system-x86_64", "qemu-img", "qemu-io"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            bail!("{tool} is not installed");
        }
    }
    let runs = args.runs.max(1);
    let disk_size = args.disk_size.bytes();
    if disk_size < 16 << 20 || !disk_size.is_multiple_of(512) {
        bail!("--disk-size must be at least 16Mi and a multiple of 512 bytes");
    }
    if args.write_mibps > 0 && args.write_mibps * 2 > disk_size >> 20 {
        bail!("--write-mibps must be at most half the disk size in MiB");
    }
    // The guest, built (or found up to date) by the source tree's script.
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/build.sh");
    if build.exists() {
        sh(Command::new(&build).arg(&args.guest))?;
    }
    for f in ["vmlinuz", "initrd.img"] {
        if !args.guest.join(f).exists() {
            bail!(
                "{} missing (guest/build.sh makes it)",
                args.guest.join(f).display()
            );
        }
    }
    let limit = Duration::from_secs(180 + (disk_size >> 20) / 4);
    let mut lab = Lab::new()?;
    lab.zfs_root = args.zfs_root.clone();
    // The data every run moves: the whole disk written with a pattern.
    let image = lab.dir.join("filled.qcow2");
    let tf = Instant::now();
    new_qcow2(&image, disk_size)?;
    sh(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &format!("write -P 0x5a 0 {disk_size}")])
        .arg(&image))?;
    let alloc = allocated(&image)?;
    eprintln!(
        "filled {} MiB ({} MiB allocated) in {:.1} s",
        disk_size >> 20,
        alloc >> 20,
        tf.elapsed().as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let load0 = loadavg();
    let t_setup = Instant::now();
    let fastr = args.fastr.as_ref().map(|i| {
        format!("  fastr: {{copies: 1, interval: {i}, triggers: {{relocation: true}}}}\n")
    });
    let mut d = deorch_setup_with(
        &mut lab,
        &args.guest,
        &image,
        disk_size,
        args.write_mibps,
        fastr.as_deref().unwrap_or(""),
    )?;
    let accel = accel_of(&d.nodes[d.at].vm_dir());
    eprintln!(
        "deorch: two nodes up, the VM runs on {} ({accel:?}) after {:.1} s",
        d.nodes[d.at].name,
        t_setup.elapsed().as_secs_f64()
    );
    let mut r = raw_setup(&rt, &lab, &args.guest, &image, accel, args.write_mibps)?;
    eprintln!("raw QEMU: the guest runs in {}", lab.ns[0]);
    let mut dr = Vec::new();
    let mut rr = Vec::new();
    let t0 = Instant::now();
    for i in 0..runs {
        if fastr.is_some() {
            let t = Instant::now();
            wait_for_copy(&d, limit)?;
            eprintln!(
                "the other node holds a FASTR copy ({:.1} s)",
                t.elapsed().as_secs_f64()
            );
        }
        let x = deorch_run(&lab, &mut d, i, limit, args.offline)?;
        eprintln!(
            "run {}/{runs} deorch {} -> {}: {:.0} ms wall, {} ms elapsed, copy {:?} ms, downtime {} ms, {:.1} MiB on the link, {:.1} MiB streamed",
            i + 1,
            x.from,
            x.to,
            x.wall_ms,
            x.elapsed_ms,
            x.copy_ms,
            x.downtime_ms,
            mib(x.wire_tx as f64),
            mib(x.streamed_bytes.unwrap_or(0) as f64)
        );
        dr.push(x);
        std::thread::sleep(Duration::from_secs(1));
        let y = if args.offline {
            raw_run_offline(
                &rt,
                &lab,
                &mut r,
                &args.guest,
                disk_size,
                args.write_mibps,
                args.raw_tls,
            )?
        } else {
            raw_run(
                &rt,
                &lab,
                &mut r,
                &args.guest,
                disk_size,
                args.write_mibps,
                limit,
                args.raw_tls,
            )?
        };
        eprintln!(
            "run {}/{runs} raw {} -> {}: {:.0} ms to cont (receiver start {:.0} ms before), QEMU total-time {} ms, downtime {} ms + {:.0} ms to cont, {:.1} MiB on the link",
            i + 1,
            y.from,
            y.to,
            y.total_ms,
            y.prep_ms,
            y.qemu_total_ms,
            y.qemu_downtime_ms,
            y.switch_ms,
            mib(y.wire_tx as f64)
        );
        rr.push(y);
        std::thread::sleep(Duration::from_secs(1));
    }
    let wall = t0.elapsed();
    let load1 = loadavg();
    if args.offline {
        report_offline(&args, alloc, &dr, &rr)?;
    } else {
        report(&args, alloc, &dr, &rr, &load0, &load1, wall, accel)?;
    }
    if args.copies > 0 {
        let (mut dc, mut rc) = (Vec::new(), Vec::new());
        for k in 0..args.copies {
            let x = deorch_copy(&lab, &d, k, limit)?;
            eprintln!(
                "copy {}/{}: deorch {:.0} ms, {:.1} MiB on the link",
                k + 1,
                args.copies,
                x.wall_ms,
                mib(x.wire_tx as f64)
            );
            dc.push(x);
            let y = raw_copy(&lab, &r, &image, disk_size, k, args.raw_tls)?;
            eprintln!(
                "copy {}/{}: raw {:.0} ms, {:.1} MiB on the link",
                k + 1,
                args.copies,
                y.wall_ms,
                mib(y.wire_tx as f64)
            );
            rc.push(y);
        }
        report_copies(&args, alloc, &dc, &rc)?;
    }
    Ok(())
}

/// An empty qcow2 image of `size` bytes at `path`.
pub(crate) fn new_qcow2(path: &Path, size: u64) -> anyhow::Result<()> {
    sh(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size.to_string()))?;
    Ok(())
}

/// A fresh 256-bit pre-shared key for QEMU's `tls-creds-psk` in `dir`
/// (QEMU reads `USER:HEXKEY` lines from `dir/keys.psk`; the user is
/// `deorch`).
fn fresh_psk(dir: &Path) -> anyhow::Result<()> {
    let mut key = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("keys.psk"),
        format!("deorch:{}\n", hex::encode(key)),
    )?;
    Ok(())
}

/// One copy of the VM's data disk to the other node.
#[derive(Debug, Clone, serde::Serialize)]
struct CopyRun {
    /// deorch: apply → the new VM provisioned (Stopped) on the other
    /// node; raw: fresh target and `qemu-nbd` made, `qemu-img convert`
    /// done (flushed).
    wall_ms: f64,
    /// Bytes on the link, sender → receiver.
    wire_tx: u64,
}

/// A stopped VM placed on the other node, its data disk made from the
/// running VM's: the holder snapshots it and writes it into the new
/// volume through the tunnels. Removed (its volume purged) afterwards.
fn deorch_copy(lab: &Lab, d: &DeorchSide, k: usize, limit: Duration) -> anyhow::Result<CopyRun> {
    let (from, to) = (d.at, 1 - d.at);
    let name = format!("copy-{k}");
    let yaml = format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: {name}}}\nspec:\n  spacesuit: tiny\n  powerState: Stopped\n  placement: {{node: {to}}}\n  disks:\n    - name: data\n      source: {{virtualMachine: {{name: mover, disk: data}}}}\n",
        to = d.nodes[to].name
    );
    let (_, tx0) = lab.link_bytes(from, &lab.d_if[from])?;
    let t0 = Instant::now();
    d.nodes[from].apply(yaml)?;
    loop {
        let st = d.nodes[to].status("vm", &name);
        let provisioned = st["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Provisioned" && c["status"] == "True")
        });
        if st["phase"] == "Stopped" && provisioned {
            break;
        }
        if t0.elapsed() > limit {
            bail!(
                "{name} was not provisioned on {} within {limit:?}: {st}\n{}",
                d.nodes[to].name,
                d.nodes[to].log_tail()
            );
        }
        std::thread::sleep(POLL);
    }
    let wall = t0.elapsed();
    let (_, tx1) = lab.link_bytes(from, &lab.d_if[from])?;
    d.nodes[from].call(&Request::Delete {
        kind: "vm".into(),
        namespace: None,
        name: name.clone(),
        purge: true,
    })?;
    let t1 = Instant::now();
    while !d.nodes[to].status("vm", &name).is_null() {
        if t1.elapsed() > Duration::from_secs(60) {
            bail!(
                "{name} was not removed from {} within 60 s",
                d.nodes[to].name
            );
        }
        std::thread::sleep(POLL);
    }
    Ok(CopyRun {
        wall_ms: ms(wall),
        wire_tx: tx1 - tx0,
    })
}

/// The same data copied by hand: a fresh qcow2 of the disk's size
/// exported by `qemu-nbd` on the other side, `qemu-img convert -n
/// --target-is-zero -W` of the filled image into it (deorch's holder
/// runs the same command on its snapshot).
fn raw_copy(
    lab: &Lab,
    r: &RawSide,
    image: &Path,
    disk_size: u64,
    k: usize,
    tls: bool,
) -> anyhow::Result<CopyRun> {
    let from = r.at;
    let dir = lab.dir.join(format!("rawcopy-{k}"));
    std::fs::create_dir_all(&dir)?;
    let (_, tx0) = lab.link_bytes(from, &lab.r_if[from])?;
    let t0 = Instant::now();
    nbd_copy(lab, from, image, &dir.join("copy.qcow2"), disk_size, tls)?;
    let wall = t0.elapsed();
    let (_, tx1) = lab.link_bytes(from, &lab.r_if[from])?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(CopyRun {
        wall_ms: ms(wall),
        wire_tx: tx1 - tx0,
    })
}

/// `image` (qcow2, on side `from`) copied by hand into a fresh qcow2
/// `dst` of `disk_size` bytes on the other side: `qemu-nbd` exports it
/// there, `qemu-img convert -n --target-is-zero -W` writes it (deorch's
/// holder and offline sender run the same command), plain TCP or QEMU's
/// TLS.
fn nbd_copy(
    lab: &Lab,
    from: usize,
    image: &Path,
    dst: &Path,
    disk_size: u64,
    tls: bool,
) -> anyhow::Result<()> {
    let to = 1 - from;
    let pid = dst.with_extension("nbd.pid");
    let host = &lab.r_ip[to];
    let port = (NBD_PORT + 1).to_string();
    let psk = lab.dir.join("psk");
    let mut server_tls: Vec<String> = Vec::new();
    let mut client = format!("nbd://{host}:{port}/data");
    let mut client_tls: Vec<String> = Vec::new();
    if tls {
        fresh_psk(&psk)?;
        server_tls = vec![
            "--object".into(),
            format!(
                "tls-creds-psk,id=tls0,endpoint=server,dir={}",
                psk.display()
            ),
            "--tls-creds".into(),
            "tls0".into(),
        ];
        client_tls = vec![
            "--object".into(),
            format!(
                "tls-creds-psk,id=tls0,endpoint=client,dir={},username=deorch",
                psk.display()
            ),
            "--target-image-opts".into(),
        ];
        client = format!("driver=nbd,host={host},port={port},export=data,tls-creds=tls0");
    }
    new_qcow2(dst, disk_size)?;
    sh(Command::new("ip")
        .args(["netns", "exec", &lab.ns[to], "qemu-nbd", "--fork"])
        .arg(format!("--pid-file={}", pid.display()))
        .args([
            "-f",
            "qcow2",
            "-x",
            "data",
            "--cache=none",
            "--discard=unmap",
        ])
        .args(&server_tls)
        .arg(format!("--bind={host}"))
        .arg(format!("--port={port}"))
        .arg(dst))?;
    let mut convert = Command::new("ip");
    convert
        .args([
            "netns",
            "exec",
            &lab.ns[from],
            "qemu-img",
            "convert",
            "-n",
            "--target-is-zero",
            "-W",
        ])
        .args(&client_tls)
        .args(["-f", "qcow2"]);
    if !tls {
        convert.args(["-O", "raw"]);
    }
    sh(convert.arg(image).arg(&client))?;
    // The copy is on disk: `qemu-img convert` ends with a flush, which
    // the server carries out before it answers. qemu-nbd itself lingers
    // ~1.3 s after its client leaves (measured here), so it is killed, as
    // deorch's puller kills its own.
    let server = std::fs::read_to_string(&pid).unwrap_or_default();
    if !server.trim().is_empty() {
        let _ = Command::new("kill").args(["-9", server.trim()]).status();
    }
    let _ = std::fs::remove_file(&pid);
    Ok(())
}

/// An offline move by hand: the guest powered down (ACPI, as deorch
/// stops it), its disk copied into a fresh one on the other side
/// ([`nbd_copy`]), QEMU started there. The VM is down from the power
/// button to the new QEMU answering QMP (`total_ms`; `prep_ms`: the
/// shutdown).
#[allow(clippy::too_many_arguments)]
fn raw_run_offline(
    rt: &tokio::runtime::Runtime,
    lab: &Lab,
    r: &mut RawSide,
    guest: &Path,
    disk_size: u64,
    write_mibps: u64,
    tls: bool,
) -> anyhow::Result<RawRun> {
    let (from, to) = (r.at, 1 - r.at);
    let dir = lab.dir.join(format!("raw-{}", r.seq));
    r.seq += 1;
    std::fs::create_dir_all(&dir)?;
    let (rx0, tx0) = lab.link_bytes(from, &lab.r_if[from])?;
    let pid = std::fs::read_to_string(cmdline::pidfile(&r.dir)).unwrap_or_default();
    let t0 = Instant::now();
    // As deorch's qemu driver stops it: the power button, the guest's
    // shutdown awaited (stopTimeout 5s), then `quit`.
    rt.block_on(async {
        qmp(&mut r.qmp, "sender", "system_powerdown", None).await?;
        while t0.elapsed() < Duration::from_secs(5) {
            // An error: QEMU is gone already.
            match r.qmp.execute("query-status", None).await {
                Ok(st) if st["status"] != "shutdown" => {}
                _ => break,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = r.qmp.execute("quit", None).await;
        anyhow::Ok(())
    })?;
    // Gone, or a zombie (exited; its parent here, init, reaps it only
    // every few seconds): as deorch's driver waits for it.
    let running = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
            st.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        })
    };
    while !pid.trim().is_empty() && running(pid.trim()) {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let stopped = t0.elapsed();
    nbd_copy(
        lab,
        from,
        &r.dir.join("data.qcow2"),
        &dir.join("data.qcow2"),
        disk_size,
        tls,
    )?;
    let vm = raw_vm(&dir, guest, r.accel, write_mibps);
    r.qmp = start_raw(rt, lab, to, &dir, &vm, false)?;
    let down = t0.elapsed();
    let (rx1, tx1) = lab.link_bytes(from, &lab.r_if[from])?;
    let old = std::mem::replace(&mut r.dir, dir);
    let _ = std::fs::remove_dir_all(&old);
    r.at = to;
    guest_goes_on(&r.dir, 0, Duration::from_secs(60))?;
    Ok(RawRun {
        from: lab.ns[from].clone(),
        to: lab.ns[to].clone(),
        prep_ms: ms(stopped),
        total_ms: ms(down),
        mirror_ready_ms: 0.0,
        qemu_total_ms: 0,
        qemu_downtime_ms: 0,
        switch_ms: 0.0,
        disk_bytes: 0,
        ram_bytes: 0,
        wire_tx: tx1 - tx0,
        wire_rx: rx1 - rx0,
        guest_mibps: None,
    })
}

/// The offline runs: deorch's relocation (apply → succeeded; the VM's
/// downtime from its status) beside the same by hand.
fn report_offline(args: &Args, alloc: u64, dr: &[DeorchRun], rr: &[RawRun]) -> anyhow::Result<()> {
    let pct = |xs: Vec<f64>| percentiles(&mut durations(xs.into_iter()));
    let d_wall = pct(dr.iter().map(|x| x.wall_ms).collect());
    let d_down = pct(dr.iter().map(|x| x.downtime_ms as f64).collect());
    let r_down = pct(rr.iter().map(|x| x.total_ms).collect());
    let r_stop = pct(rr.iter().map(|x| x.prep_ms).collect());
    let d_wire = median(dr.iter().map(|x| x.wire_tx as f64));
    let r_wire = median(rr.iter().map(|x| x.wire_tx as f64));
    let storage = if args.zfs_root.is_some() {
        "zfs (volume streams)"
    } else {
        "dir (NBD)"
    };
    let raw = if args.raw_tls {
        "by hand (TLS)"
    } else {
        "by hand"
    };
    if args.json {
        let p = |p: &crate::bench::Percentiles| json!({"p50": p.p50, "p95": p.p95, "max": p.max});
        let out = json!({
            "offline": true, "storage": storage, "runs": args.runs,
            "diskSize": args.disk_size.bytes(), "allocated": alloc, "writeMiBps": args.write_mibps,
            "deorch": {"wallMs": p(&d_wall), "downtimeMs": p(&d_down), "wireBytesP50": d_wire, "samples": dr},
            "raw": {"downtimeMs": p(&r_down), "shutdownMs": p(&r_stop), "wireBytesP50": r_wire, "samples": rr},
            "ratioDowntimeP50": d_down.p50 / r_down.p50.max(1e-9),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!();
    println!(
        "{} offline moves per path of a VM with a {} MiB data disk ({} MiB allocated), the guest writing {} MiB/s; deorch on {storage}",
        args.runs,
        args.disk_size.bytes() >> 20,
        alloc >> 20,
        args.write_mibps
    );
    println!();
    println!("| path | p50 | p95 | max | on the link (p50) |");
    println!("|---|---|---|---|---|");
    for (what, p, w) in [
        ("deorch: apply → succeeded on both", &d_wall, Some(d_wire)),
        ("deorch: VM down (status downtimeMs)", &d_down, None),
        (
            &*format!("{raw}: VM down (power button → new QEMU answers)"),
            &r_down,
            Some(r_wire),
        ),
        (
            &*format!("{raw}: of which the guest's shutdown"),
            &r_stop,
            None,
        ),
    ] {
        println!(
            "| {what} | {:.0} ms | {:.0} ms | {:.0} ms | {} |",
            p.p50,
            p.p95,
            p.max,
            w.map_or("".into(), |w| format!("{:.1} MiB", mib(w)))
        );
    }
    println!(
        "ratio deorch/by hand, VM down p50: {:.2}",
        d_down.p50 / r_down.p50.max(1e-9)
    );
    Ok(())
}

/// The copies' table.
fn report_copies(args: &Args, alloc: u64, dc: &[CopyRun], rc: &[CopyRun]) -> anyhow::Result<()> {
    let pct = |xs: Vec<f64>| percentiles(&mut durations(xs.into_iter()));
    let d = pct(dc.iter().map(|x| x.wall_ms).collect());
    let r = pct(rc.iter().map(|x| x.wall_ms).collect());
    let wire = |xs: &[CopyRun]| median(xs.iter().map(|x| x.wire_tx as f64));
    let raw = if args.raw_tls {
        "qemu-img → qemu-nbd (TLS)"
    } else {
        "qemu-img → qemu-nbd"
    };
    if args.json {
        let out = serde_json::json!({
            "copies": args.copies,
            "allocatedBytes": alloc,
            "deorch": {"wallMsP50": d.p50, "wallMsP95": d.p95, "wireBytesP50": wire(dc), "samples": dc},
            "raw": {"wallMsP50": r.p50, "wallMsP95": r.p95, "wireBytesP50": wire(rc), "samples": rc},
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!();
    println!(
        "{} copies per path (alternating) of the {} MiB data disk ({} MiB allocated) to the other node",
        args.copies,
        args.disk_size.bytes() >> 20,
        alloc >> 20
    );
    println!();
    println!("| path | p50 | p95 | max | MiB/s of allocated data (p50) | on the link (p50) |");
    println!("|---|---|---|---|---|---|");
    for (path, p, w) in [
        (
            "deorch: apply → VM provisioned on the other node",
            &d,
            wire(dc),
        ),
        (raw, &r, wire(rc)),
    ] {
        println!(
            "| {path} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} | {:.1} MiB |",
            p.p50,
            p.p95,
            p.max,
            mib(alloc as f64) / (p.p50 / 1e3).max(1e-9),
            mib(w)
        );
    }
    println!("ratio deorch/raw p50: {:.2}", d.p50 / r.p50.max(1e-9));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    alloc: u64,
    dr: &[DeorchRun],
    rr: &[RawRun],
    load0: &str,
    load1: &str,
    wall: Duration,
    accel: Accel,
) -> anyhow::Result<()> {
    let raw = if args.raw_tls {
        "raw QEMU (TLS)"
    } else {
        "raw QEMU"
    };
    let pct = |xs: Vec<f64>| percentiles(&mut durations(xs.into_iter()));
    let d_wall = pct(dr.iter().map(|x| x.wall_ms).collect());
    let d_elapsed = pct(dr.iter().map(|x| x.elapsed_ms as f64).collect());
    let d_copy = pct(dr
        .iter()
        .filter_map(|x| x.copy_ms.map(|c| c as f64))
        .collect());
    let d_down = pct(dr.iter().map(|x| x.downtime_ms as f64).collect());
    let d_qdown = pct(dr
        .iter()
        .filter_map(|x| x.qemu_downtime_ms.map(|c| c as f64))
        .collect());
    let d_switch = pct(dr
        .iter()
        .filter_map(|x| x.switch_ms.map(|c| c as f64))
        .collect());
    let d_prep = pct(dr.iter().filter_map(|x| x.to_copying_ms).collect());
    let d_copying = pct(dr.iter().filter_map(|x| x.copying_ms).collect());
    let d_finish = pct(dr.iter().filter_map(|x| x.finishing_ms).collect());
    let r_total = pct(rr.iter().map(|x| x.total_ms).collect());
    let r_with_prep = pct(rr.iter().map(|x| x.total_ms + x.prep_ms).collect());
    let r_qemu = pct(rr.iter().map(|x| x.qemu_total_ms as f64).collect());
    let r_ready = pct(rr.iter().map(|x| x.mirror_ready_ms).collect());
    let r_down = pct(rr
        .iter()
        .map(|x| x.qemu_downtime_ms as f64 + x.switch_ms)
        .collect());
    let r_qdown = pct(rr.iter().map(|x| x.qemu_downtime_ms as f64).collect());
    let base = (alloc + (MEMORY_MIB << 20)) as f64;
    let d_wire = median(dr.iter().map(|x| x.wire_tx as f64));
    let r_wire = median(rr.iter().map(|x| x.wire_tx as f64));
    let d_back = median(dr.iter().map(|x| x.wire_rx as f64));
    let r_back = median(rr.iter().map(|x| x.wire_rx as f64));
    let d_moved = median(dr.iter().map(|x| (x.disk_bytes + x.ram_bytes) as f64));
    let r_moved = median(rr.iter().map(|x| (x.disk_bytes + x.ram_bytes) as f64));
    let d_rate = median(dr.iter().filter_map(|x| x.guest_mibps));
    let r_rate = median(rr.iter().filter_map(|x| x.guest_mibps));
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    if args.json {
        let p = |p: &crate::bench::Percentiles| json!({"p50": p.p50, "p95": p.p95, "max": p.max});
        let out = json!({
            "runs": args.runs,
            "diskSize": args.disk_size.bytes(),
            "allocated": alloc,
            "memoryMiB": MEMORY_MIB,
            "writeMiBps": args.write_mibps,
            "accel": format!("{accel:?}"),
            "loadavg": [load0, load1],
            "wallSeconds": wall.as_secs_f64(),
            "deorch": {
                "wallMs": p(&d_wall), "elapsedMs": p(&d_elapsed), "copyMs": p(&d_copy),
                "downtimeMs": p(&d_down), "applyToCopyingMs": p(&d_prep),
                "copyingToSwitchingMs": p(&d_copying), "switchingToSucceededMs": p(&d_finish),
                "wireBytesP50": d_wire, "guestWriteMiBpsP50": d_rate, "samples": dr,
            },
            "raw": {
                "totalMs": p(&r_total), "totalWithReceiverStartMs": p(&r_with_prep),
                "qemuTotalMs": p(&r_qemu), "mirrorReadyMs": p(&r_ready),
                "downtimeMs": p(&r_down), "qemuDowntimeMs": p(&r_qdown),
                "wireBytesP50": r_wire, "guestWriteMiBpsP50": r_rate, "samples": rr,
            },
            "ratioWallToRawTotalP50": ratio(d_wall.p50, r_total.p50),
            "ratioCopyToRawTotalP50": ratio(d_copy.p50, r_total.p50),
            "ratioCopyingToRawTotalP50": ratio(d_copying.p50, r_total.p50),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{} relocations per path (alternating), data disk {} MiB ({} MiB allocated), RAM {MEMORY_MIB} MiB, guest writes {} MiB/s, {accel:?}; load average {load0} before, {load1} after; {:.0} s wall",
        args.runs,
        args.disk_size.bytes() >> 20,
        alloc >> 20,
        args.write_mibps,
        wall.as_secs_f64()
    );
    println!();
    println!("| path | what | p50 | p95 | max |");
    println!("|---|---|---|---|---|");
    let row = |path: &str, what: &str, p: &crate::bench::Percentiles| {
        println!(
            "| {path} | {what} | {:.0} ms | {:.0} ms | {:.0} ms |",
            p.p50, p.p95, p.max
        );
    };
    row(
        "deorch",
        "total: apply → Succeeded on both nodes (wall, polled every 20 ms)",
        &d_wall,
    );
    row(
        "deorch",
        "total: status `progress.elapsedMs` (sender's first QMP command → mirrors stopped)",
        &d_elapsed,
    );
    row(
        "deorch",
        "copy: sender's first QMP command → receiver's `cont` (agent log)",
        &d_copy,
    );
    row(
        "deorch",
        "phases: apply → Copying (election, receiver's volume and QEMU)",
        &d_prep,
    );
    row(
        "deorch",
        "phases: Copying → Switching (copy and switch)",
        &d_copying,
    );
    row(
        "deorch",
        "phases: Switching → Succeeded on both (claim moves, old copy deleted)",
        &d_finish,
    );
    row(
        raw,
        "total: first QMP command → receiver's `cont`",
        &r_total,
    );
    row(
        raw,
        "total + receiver start (qemu-img create, QEMU -incoming up)",
        &r_with_prep,
    );
    row(raw, "mirror READY", &r_ready);
    row(raw, "query-migrate total-time (memory only)", &r_qemu);
    row(
        "deorch",
        "downtime: status `downtimeMs` (QEMU downtime + switch)",
        &d_down,
    );
    row("deorch", "downtime: QEMU's own (agent log)", &d_qdown);
    row(
        "deorch",
        "downtime: the switch, completed → guest runs on the receiver (agent log)",
        &d_switch,
    );
    row(
        raw,
        "downtime: query-migrate downtime + completed → `cont`",
        &r_down,
    );
    row(raw, "query-migrate downtime", &r_qdown);
    println!();
    println!(
        "ratio deorch/raw of total p50: {:.2} (wall, apply → Succeeded), {:.2} (copy, first QMP command → cont)",
        ratio(d_wall.p50, r_total.p50),
        ratio(d_copy.p50, r_total.p50)
    );
    println!(
        "ratio of the copy alone (deorch Copying → Switching, the receiver elected and ready, over raw first QMP command → cont), p50: {:.2}",
        ratio(d_copying.p50, r_total.p50)
    );
    println!();
    println!("| path | on the link, sender → receiver (p50) | back | disk + RAM moved (QEMU's counters, p50) | link / (allocated disk + RAM) | guest writes during the move (p50) |");
    println!("|---|---|---|---|---|---|");
    for (path, wire, back, moved, rate) in [
        ("deorch", d_wire, d_back, d_moved, d_rate),
        (raw, r_wire, r_back, r_moved, r_rate),
    ] {
        println!(
            "| {path} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} | {rate:.1} MiB/s |",
            mib(wire),
            mib(back),
            mib(moved),
            wire / base
        );
    }
    let streamed: Vec<f64> = dr
        .iter()
        .filter_map(|x| x.streamed_bytes.map(|b| b as f64))
        .collect();
    if !streamed.is_empty() {
        println!();
        println!(
            "deorch volume streams before the mirror (zfs send{}), p50: {:.1} MiB",
            if args.fastr.is_some() {
                ", from the receiver's FASTR point"
            } else {
                ""
            },
            mib(median(streamed.into_iter()))
        );
    }
    Ok(())
}
