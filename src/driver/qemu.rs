//! The QEMU hypervisor driver: one daemonized `qemu-system-x86_64` per VM,
//! managed through its runtime directory (`<state>/vms/<namespace>/<name>/`:
//! pidfile, QMP socket, serial log, the configuration it was started with).
//! Because QEMU daemonizes and everything needed to find it again lives in
//! that directory, restarting or upgrading the node never stops a VM: the
//! next `state` call re-adopts it.
//!
//! QEMU runs with `-no-shutdown`, so a guest that powers itself off leaves
//! QEMU alive in the `shutdown` state (reported as a guest shutdown), while a
//! QEMU process that disappears without deorch asking is a crash.
//!
//! Consoles: VNC with a noVNC websocket on the node's address, on ports
//! derived from the VM's identity ([`crate::qemu::console`]) and remembered
//! in the runtime directory (`console.json`) while the VM exists.
//!
//! Disks: the images the storage driver resolved (`VmConfig::disk_images`,
//! raw or qcow2), attached with `-blockdev` on the spec's bus.
//!
//! Live snapshots of a running disk go through QMP (`blockdev-add` of
//! the overlay the storage driver made, then `blockdev-snapshot`); NICs
//! are host taps with `--net linux`, else QEMU's restricted user-mode
//! network; SPICE is added where the spec asks and the module loads.
//!
//! Not yet: console access tied to identity (consoles listen on the
//! node's console address without authentication).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{BoxFuture, DriverError, Hypervisor, StopReason, VmConfig, VmState};
use crate::model::vm::ConsoleStatus;
use crate::qemu::cmdline::{self, NicBackend, QemuNic, QemuVm, Spice, Vnc};
use crate::qemu::console::{self, PortRange};
use crate::qemu::probe::Accel;
use crate::qemu::qmp::Qmp;
use crate::{clock, state_file};

const QMP_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_MARKER: &str = "stop-requested";
const CONFIG_FILE: &str = "config.json";
const CONSOLE_FILE: &str = "console.json";

/// Runs VMs as QEMU processes.
pub struct QemuHypervisor {
    qemu: PathBuf,
    vms_dir: PathBuf,
    accel: Accel,
    console_listen: IpAddr,
    ports: PortRange,
    /// Serialises console port assignment between concurrent starts.
    assigning: Mutex<()>,
    /// Whether this QEMU build serves SPICE (asked once, on first need).
    spice: std::sync::OnceLock<bool>,
    /// CPU models this QEMU build knows (`-cpu help`), probed once.
    cpu_models: std::sync::OnceLock<Vec<String>>,
    /// QEMU's TLS directory for the consoles' websockets (`wss://`).
    console_tls: Option<PathBuf>,
}

impl QemuHypervisor {
    /// VMs' runtime directories go under `vms_dir`; consoles listen on
    /// 127.0.0.1 until [`QemuHypervisor::with_console`] says otherwise.
    pub fn new(
        qemu: impl Into<PathBuf>,
        vms_dir: impl Into<PathBuf>,
        accel: Accel,
    ) -> QemuHypervisor {
        QemuHypervisor {
            qemu: qemu.into(),
            vms_dir: vms_dir.into(),
            accel,
            console_listen: IpAddr::from([127, 0, 0, 1]),
            ports: PortRange::default(),
            assigning: Mutex::new(()),
            spice: std::sync::OnceLock::new(),
            cpu_models: std::sync::OnceLock::new(),
            console_tls: None,
        }
    }

    /// Consoles listen on `listen`, with ports from `ports`.
    pub fn with_console(mut self, listen: IpAddr, ports: PortRange) -> QemuHypervisor {
        self.console_listen = listen;
        self.ports = ports;
        self
    }

    /// The consoles' websockets speak TLS with the credentials in `dir`
    /// (QEMU's `tls-creds-x509` layout), for browsers on HTTPS pages.
    pub fn with_console_tls(mut self, dir: Option<PathBuf>) -> QemuHypervisor {
        self.console_tls = dir;
        self
    }

    /// Whether VM `id`'s websocket was started with TLS.
    fn web_tls(dir: &Path) -> bool {
        std::fs::read(dir.join(CONSOLE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["websocketTls"] == true)
    }

    fn read_console(dir: &Path) -> Option<u16> {
        Self::read_ports(dir).map(|(vnc, _)| vnc)
    }

    /// The VNC port and, when served, the SPICE port a VM holds.
    fn read_ports(dir: &Path) -> Option<(u16, Option<u16>)> {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(CONSOLE_FILE)).ok()?).ok()?;
        let port = |k: &str| v[k].as_u64().and_then(|p| u16::try_from(p).ok());
        Some((port("vnc")?, port("spice")))
    }

    /// Whether this QEMU build has SPICE: Debian ships it as a loadable
    /// module in its own package, so the binary alone does not say. A QEMU
    /// without it exits at once on `-spice` ("no option group 'spice'").
    fn spice_supported(&self) -> bool {
        *self.spice.get_or_init(|| {
            let ok = std::process::Command::new(&self.qemu)
                .args(["-machine", "none", "-display", "none", "-nodefaults", "-S"])
                .args(["-spice", "port=0,disable-ticketing=on", "-qmp", "stdio"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    if let Some(mut i) = c.stdin.take() {
                        let _ = i.write_all(
                            b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n",
                        );
                    }
                    c.wait()
                })
                .is_ok_and(|st| st.success());
            tracing::info!(qemu = %self.qemu.display(), spice = ok, "SPICE support probed");
            ok
        })
    }

    /// The VNC port of VM `id`: the one it holds, or a new one derived from
    /// its identity, avoiding every port another VM of this node holds.
    fn console_port(&self, id: &str, dir: &Path, spice: bool) -> Result<u16, DriverError> {
        let _guard = self.assigning.lock().unwrap_or_else(|p| p.into_inner());
        let mut taken = BTreeSet::new();
        for ns in std::fs::read_dir(&self.vms_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            for vm in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                if vm.path() != dir {
                    taken.extend(Self::read_console(&vm.path()));
                }
            }
        }
        // Ports another process holds are skipped like other VMs' ports.
        let free = |p: u16| {
            std::net::TcpListener::bind((self.console_listen, p)).is_ok()
                && std::net::TcpListener::bind((self.console_listen, self.ports.websocket(p)))
                    .is_ok()
                && (!spice
                    || self.ports.spice(p).is_some_and(|sp| {
                        std::net::TcpListener::bind((self.console_listen, sp)).is_ok()
                    }))
        };
        let port = match Self::read_console(dir) {
            // The port this VM already holds: it keeps it, waiting briefly
            // for a socket of its previous QEMU that the kernel still holds.
            Some(p)
                if !taken.contains(&p)
                    && (0..40).any(|i| {
                        if i > 0 {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        free(p)
                    }) =>
            {
                p
            }
            held => loop {
                let p = console::assign(id, self.ports, &taken).ok_or_else(|| {
                    Self::permanent(
                        "start",
                        id,
                        format!("all {} console ports are taken", self.ports.size),
                    )
                })?;
                if free(p) {
                    if let Some(old) = held {
                        tracing::warn!(
                            vm = id,
                            old,
                            new = p,
                            "console port held by another process; the VM moves"
                        );
                    }
                    break p;
                }
                taken.insert(p);
            },
        };
        let console = json!({
            "vnc": port,
            "websocket": self.ports.websocket(port),
            "spice": if spice { self.ports.spice(port) } else { None },
            "websocketTls": self.console_tls.is_some(),
        });
        state_file::write(&dir.join(CONSOLE_FILE), console.to_string().as_bytes())
            .map_err(|e| Self::permanent("start", id, e.to_string()))?;
        Ok(port)
    }

    /// The runtime directory of VM `id` (`namespace/name`).
    pub fn runtime_dir(&self, id: &str) -> PathBuf {
        self.vms_dir.join(id)
    }

    fn err(op: &str, id: &str, message: impl Into<String>) -> DriverError {
        DriverError::transient(op, id, message)
    }

    fn permanent(op: &str, id: &str, message: impl Into<String>) -> DriverError {
        DriverError::permanent(op, id, message)
    }

    /// The PID in the pidfile, if that process is a live QEMU.
    /// Whether VM `id`'s QEMU has file `path` open (the same inode).
    fn holds(&self, id: &str, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (Some(pid), Ok(want)) = (
            Self::live_pid(&self.runtime_dir(id)),
            std::fs::metadata(path),
        ) else {
            return false;
        };
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::metadata(fd.path()).ok())
            .any(|m| (m.dev(), m.ino()) == (want.dev(), want.ino()))
    }

    fn live_pid(dir: &Path) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(cmdline::pidfile(dir))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // A zombie (state Z) is dead for our purposes.
        let state = stat.rsplit(')').next()?.split_whitespace().next()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        (state != "Z" && exe.to_string_lossy().contains("qemu")).then_some(pid)
    }

    async fn qmp(&self, op: &str, id: &str) -> Result<Qmp, DriverError> {
        let sock = cmdline::qmp_socket(&self.runtime_dir(id));
        Qmp::connect(&sock, QMP_TIMEOUT)
            .await
            .map_err(|e| Self::err(op, id, e.to_string()))
    }

    fn to_qemu(&self, c: &VmConfig) -> Result<QemuVm, DriverError> {
        if let Some(model) = &c.cpu_model {
            let known = self.cpu_models();
            if !known.is_empty() && !known.iter().any(|k| k == model) {
                let lower = model.to_lowercase();
                let close: Vec<&str> = known
                    .iter()
                    .filter(|k| {
                        let k = k.to_lowercase();
                        k.contains(&lower) || lower.contains(&k) && k.len() > 2
                    })
                    .take(8)
                    .map(String::as_str)
                    .collect();
                return Err(Self::permanent(
                    "start",
                    &c.id,
                    format!(
                        "cpuModel {model:?} is not a CPU model of this QEMU build ({} -cpu help lists {} models){}",
                        self.qemu.display(),
                        known.len(),
                        if close.is_empty() {
                            String::new()
                        } else {
                            format!("; close: {}", close.join(", "))
                        }
                    ),
                ));
            }
        }
        qemu_vm(c, self.accel, self.runtime_dir(&c.id))
            .map_err(|m| Self::permanent("start", &c.id, m))
    }

    /// Start QEMU for `config`; `incoming`: paused, waiting for a
    /// migration stream (`-S -incoming defer`).
    async fn launch(&self, config: &VmConfig, incoming: bool) -> Result<(), DriverError> {
        {
            let id = &config.id;

            let dir = self.runtime_dir(id);
            if let Some(pid) = Self::live_pid(&dir) {
                // A guest that shut itself down leaves QEMU waiting: replace it.
                match self
                    .qmp("start", id)
                    .await?
                    .execute("query-status", None)
                    .await
                {
                    Ok(s) if s["status"] == "shutdown" => {
                        Self::kill(pid);
                        Self::wait_gone(pid, Duration::from_secs(5)).await;
                    }
                    _ => {
                        return Err(Self::permanent(
                            "start",
                            id,
                            format!("already running (pid {pid})"),
                        ))
                    }
                }
            }
            let mut vm = self.to_qemu(config)?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| Self::permanent("start", id, format!("{}: {e}", dir.display())))?;
            // The guest's last writes may be in a transfer overlay a
            // relocation left (its QEMU died on it): into the volume first.
            crate::qemu::overlay::fold_files(&dir)
                .await
                .map_err(|e| Self::permanent("start", id, e))?;
            let spice = config.spice
                && {
                    let ok = self.spice_supported();
                    if !ok {
                        tracing::warn!(vm = %id, "SPICE asked for, but this QEMU build has none (package qemu-system-modules-spice): VNC only");
                    }
                    ok
                };
            let port = self.console_port(id, &dir, spice)?;
            vm.vnc = Some(Vnc {
                listen: self.console_listen,
                port,
                websocket: Some(self.ports.websocket(port)),
                websocket_tls: self.console_tls.clone(),
            });
            vm.spice = spice
                .then(|| self.ports.spice(port))
                .flatten()
                .map(|port| Spice {
                    listen: self.console_listen,
                    port,
                });
            for f in [
                cmdline::pidfile(&dir),
                cmdline::qmp_socket(&dir),
                dir.join(STOP_MARKER),
            ] {
                let _ = std::fs::remove_file(f);
            }
            let serial = cmdline::serial_log(&dir);
            if serial.exists() {
                let _ = std::fs::rename(&serial, dir.join("serial.log.1"));
            }
            // What the previous QEMU said before it ended (normally
            // nothing: it logs only errors) goes to the node's log.
            let qemu_log = cmdline::qemu_log(&dir);
            if let Ok(text) = std::fs::read_to_string(&qemu_log) {
                // A stop's "terminating on signal" is no error.
                let last: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.contains("terminating on signal"))
                    .rev()
                    .take(5)
                    .collect();
                if !last.is_empty() {
                    let last: Vec<&str> = last.into_iter().rev().collect();
                    tracing::warn!(vm = %id, log = ?last, "the VM's previous QEMU left errors in its log");
                }
                let _ = std::fs::rename(&qemu_log, dir.join("qemu.log.1"));
            }
            // Re-adoption after a node restart reads it back: durable.
            let bytes = serde_json::to_vec(config).expect("configs serialize");
            state_file::write(&dir.join(CONFIG_FILE), &bytes)
                .map_err(|e| Self::permanent("start", id, e.to_string()))?;
            let mut args = cmdline::args(&vm);
            args.push("-no-shutdown".into());
            if incoming {
                args.extend(["-S", "-incoming", "defer"].map(String::from));
            }
            let out = tokio::process::Command::new(&self.qemu)
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(|e| {
                    Self::permanent(
                        "start",
                        id,
                        format!("cannot run {}: {e}", self.qemu.display()),
                    )
                })?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                return Err(Self::permanent(
                    "start",
                    id,
                    format!(
                        "QEMU refused to start: {}",
                        stderr.lines().last().unwrap_or("").trim()
                    ),
                ));
            }
            // QEMU daemonizes once initialised; QMP answers right after.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match Qmp::connect(&cmdline::qmp_socket(&dir), QMP_TIMEOUT).await {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() > deadline => {
                        return Err(Self::err("start", id, e.to_string()))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }
    }

    /// The CPU models of this QEMU build, from `-cpu help` (lines `x86
    /// NAME  description`), `host` and `max` included; empty when the
    /// probe fails (then nothing is refused on its account).
    fn cpu_models(&self) -> &[String] {
        self.cpu_models.get_or_init(|| {
            let out = std::process::Command::new(&self.qemu)
                .args(["-cpu", "help"])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output();
            let models = match out {
                Ok(o) if o.status.success() => parse_cpu_help(&String::from_utf8_lossy(&o.stdout)),
                _ => Vec::new(),
            };
            tracing::info!(qemu = %self.qemu.display(), models = models.len(), "CPU models probed");
            models
        })
    }

    /// Waits until process `pid` has fully exited: gone from `/proc` or a
    /// zombie. Not "no longer looks like QEMU": a dying process loses its
    /// `/proc/PID/exe` (exit_mm) before it closes its sockets (exit_files),
    /// and a restart in that window found its own console port still held.
    async fn wait_gone(pid: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => true,
                Ok(stat) => {
                    stat.rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().next())
                        == Some("Z")
                }
            };
            if exited {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(pid: u32) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
}

impl Hypervisor for QemuHypervisor {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn accel(&self) -> Option<String> {
        Some(self.accel.as_str().into())
    }

    fn console(&self, id: &str) -> Option<ConsoleStatus> {
        let dir = self.runtime_dir(id);
        let (vnc, spice) = Self::read_ports(&dir)?;
        let ws = self.ports.websocket(vnc);
        Some(ConsoleStatus::served(
            self.console_listen.to_string(),
            vnc,
            ws,
            spice,
            Self::web_tls(&dir),
        ))
    }

    fn start<'a>(&'a self, config: &'a VmConfig) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.launch(config, false))
    }

    fn start_incoming<'a>(
        &'a self,
        config: &'a VmConfig,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.launch(config, true))
    }

    fn vms_dir(&self) -> Option<&Path> {
        Some(&self.vms_dir)
    }

    fn stop<'a>(
        &'a self,
        id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let dir = self.runtime_dir(id);
            // Recorded even when QEMU is gone already (a crash): the VM is
            // now stopped as asked, and a start is no restart.
            let _ = std::fs::write(dir.join(STOP_MARKER), b"");
            let Some(pid) = Self::live_pid(&dir) else {
                return Ok(());
            };
            // ACPI power button first; the guest decides how to shut down.
            if let Ok(mut q) = self.qmp("stop", id).await {
                let _ = q.execute("system_powerdown", None).await;
                let deadline = Instant::now() + timeout;
                while Instant::now() < deadline {
                    match q.execute("query-status", None).await {
                        Ok(s) if s["status"] == "shutdown" => break,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        Err(_) => break,
                    }
                }
                let _ = q.execute("quit", None).await;
            }
            if !Self::wait_gone(pid, Duration::from_secs(5)).await {
                Self::kill(pid);
                Self::wait_gone(pid, Duration::from_secs(5)).await;
            }
            Ok(())
        })
    }

    fn console_ticket<'a>(
        &'a self,
        id: &'a str,
        password: &'a str,
        valid_for: Duration,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let op = "console ticket";
            let (_, spice) =
                Self::read_ports(&self.runtime_dir(id)).ok_or_else(|| DriverError::NotFound {
                    op: op.into(),
                    target: id.into(),
                })?;
            let mut qmp = self.qmp(op, id).await?;
            let web = Self::web_tls(&self.runtime_dir(id));
            use crate::qemu::console::{set_tickets, Ticket};
            let mut what = vec![Ticket::Vnc];
            if web {
                what.push(Ticket::WebVnc);
            }
            if spice.is_some() {
                what.push(Ticket::Spice);
            }
            set_tickets(&mut qmp, password, valid_for, &what)
                .await
                .map_err(|e| Self::err(op, id, e))
        })
    }

    fn pause<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.qmp("pause", id)
                .await?
                .execute("stop", None)
                .await
                .map(|_| ())
                .map_err(|e| Self::err("pause", id, e.to_string()))
        })
    }

    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            self.qmp("resume", id)
                .await?
                .execute("cont", None)
                .await
                .map(|_| ())
                .map_err(|e| Self::err("resume", id, e.to_string()))
        })
    }

    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<VmState, DriverError>> {
        Box::pin(async move {
            let dir = self.runtime_dir(id);
            if !dir.join(CONFIG_FILE).exists() {
                return Ok(VmState::Absent);
            }
            let Some(pid) = Self::live_pid(&dir) else {
                let reason = if dir.join(STOP_MARKER).exists() {
                    StopReason::Requested
                } else {
                    StopReason::Crashed
                };
                return Ok(VmState::Stopped(reason));
            };
            let config: VmConfig = std::fs::read(dir.join(CONFIG_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| Self::err("state", id, "unreadable config.json"))?;
            let started_ms = std::fs::metadata(cmdline::pidfile(&dir))
                .and_then(|m| m.modified())
                .map(clock::unix_ms)
                .unwrap_or(0);
            let status = self
                .qmp("state", id)
                .await?
                .execute("query-status", Some(json!({})))
                .await
                .map_err(|e| Self::err("state", id, e.to_string()))?;
            Ok(match status["status"].as_str().unwrap_or("") {
                // Migration states run no guest code: a relocation's
                // sender after the copy, its receiver before the switch.
                "paused" | "inmigrate" | "postmigrate" | "finish-migrate" => VmState::Paused {
                    pid,
                    started_ms,
                    config: Box::new(config),
                },
                "shutdown" => VmState::Stopped(if dir.join(STOP_MARKER).exists() {
                    StopReason::Requested
                } else {
                    StopReason::GuestShutdown
                }),
                _ => VmState::Running {
                    pid,
                    started_ms,
                    config: Box::new(config),
                },
            })
        })
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let dir = self.runtime_dir(id);
            if let Some(pid) = Self::live_pid(&dir) {
                Self::kill(pid);
                Self::wait_gone(pid, Duration::from_secs(5)).await;
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Self::err("remove", id, e.to_string())),
            }
        })
    }

    fn live_snapshot<'a>(
        &'a self,
        id: &'a str,
        disk: &'a str,
        overlay: &'a Path,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let fail =
                |e: String| Self::permanent("live_snapshot", id, format!("disk {disk}: {e}"));
            let mut qmp = self.qmp("live_snapshot", id).await?;
            // The disk's current top node (earlier snapshots moved it).
            let blocks = qmp
                .execute("query-block", None)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let inserted = block_of(&blocks, disk).map(|b| &b["inserted"]);
            let top = inserted
                .and_then(|i| i["node-name"].as_str())
                .unwrap_or(disk)
                .to_string();
            let carried: Vec<FastrBitmap> = fastr_bitmaps(inserted)
                .into_iter()
                .filter(|b| !b.inconsistent)
                .collect();
            // The storage made the overlay under the disk's own path, on
            // the frozen layer its file became (the same inode, another
            // name). QEMU reopens the old top read-only *by path* when it
            // becomes the backing node, which would now be the overlay:
            // the guest would read the overlay's bytes at the old image's
            // offsets. So the old top first moves to the layer's name,
            // once this QEMU is seen to hold the layer's inode (its top's
            // file; QEMU's own file names are no help: a node added over
            // QMP is named by a `json:` string).
            let layer = crate::driver::qcow2::header(overlay)
                .ok()
                .and_then(|h| h.backing);
            if let Some(layer) = layer.filter(|l| self.holds(id, l)) {
                let read_only = inserted.is_some_and(|i| i["ro"] == true);
                reopen_on(&mut qmp, &top, &layer, read_only)
                    .await
                    .map_err(|e| fail(format!("moving {top} to {}: {e}", layer.display())))?;
            }
            let node = format!("{disk}-{}", crate::driver::cow::nonce());
            qmp.execute(
                "blockdev-add",
                Some(serde_json::json!({
                    "driver": "qcow2",
                    "node-name": node,
                    "file": {"driver": "file", "filename": overlay},
                    "backing": null,
                    "discard": "unmap",
                    "cache": {"direct": false},
                })),
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
            // FASTR's dirty bitmaps (one per point the receivers hold)
            // follow the disk onto its new top node in the same instant:
            // each is added there and given the old one's bits inside the
            // snapshot's transaction, so it misses no write and the next
            // round stays incremental rather than sending the whole disk.
            let mut actions = vec![serde_json::json!({"type": "blockdev-snapshot",
                "data": {"node": top, "overlay": node}})];
            for FastrBitmap {
                name,
                granularity,
                persistent,
                ..
            } in &carried
            {
                actions.push(serde_json::json!({"type": "block-dirty-bitmap-add",
                    "data": {"node": node, "name": name, "granularity": granularity,
                        "persistent": persistent}}));
                actions.push(serde_json::json!({"type": "block-dirty-bitmap-merge",
                    "data": {"node": node, "target": name,
                        "bitmaps": [{"node": top, "name": name}]}}));
            }
            qmp.execute(
                "transaction",
                Some(serde_json::json!({ "actions": actions })),
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
            // The old top is a read-only backing node now: its copies of
            // the bitmaps only take memory.
            for FastrBitmap { name, .. } in &carried {
                let _ = qmp
                    .execute(
                        "block-dirty-bitmap-remove",
                        Some(serde_json::json!({"node": top, "name": name})),
                    )
                    .await;
            }
            Ok(())
        })
    }
}

/// Give node `top` (a qcow2 node, the disk's active top) a new file
/// child on `path`, the same inode under another name: `blockdev-reopen`
/// with the options the node was opened with (`cmdline`,
/// `live_snapshot`), its backing node kept. The new file node does not
/// take QEMU's image locks: the old one, which holds them on the same
/// inode until the reopen drops it, would refuse them.
async fn reopen_on(qmp: &mut Qmp, top: &str, path: &Path, read_only: bool) -> Result<(), String> {
    let graph = qmp
        .execute("x-debug-query-block-graph", None)
        .await
        .map_err(|e| e.to_string())?;
    let list = |key: &str| graph[key].as_array().cloned().unwrap_or_default();
    let (nodes, edges) = (list("nodes"), list("edges"));
    let top_id = nodes
        .iter()
        .find(|n| n["name"].as_str() == Some(top))
        .and_then(|n| n["id"].as_u64())
        .ok_or_else(|| format!("no node {top} in the block graph"))?;
    let backing = edges
        .iter()
        .find(|e| e["parent"].as_u64() == Some(top_id) && e["name"] == "backing")
        .and_then(|e| nodes.iter().find(|n| n["id"] == e["child"]))
        .and_then(|n| n["name"].as_str());
    // Node names are at most 31 bytes.
    let file = format!("f{}", crate::driver::cow::nonce());
    qmp.execute(
        "blockdev-add",
        Some(serde_json::json!({"driver": "file", "node-name": file,
            "filename": path, "locking": "off", "read-only": read_only})),
    )
    .await
    .map_err(|e| e.to_string())?;
    let reopened = qmp
        .execute(
            "blockdev-reopen",
            Some(serde_json::json!({"options": [{
                "driver": "qcow2", "node-name": top, "file": file,
                "backing": backing, "discard": "unmap", "cache": {"direct": false},
                "read-only": read_only,
            }]})),
        )
        .await;
    if let Err(e) = reopened {
        let _ = qmp
            .execute("blockdev-del", Some(serde_json::json!({"node-name": file})))
            .await;
        return Err(e.to_string());
    }
    Ok(())
}

/// One of FASTR's dirty bitmaps on a disk's top node.
#[derive(Debug, Clone)]
pub(crate) struct FastrBitmap {
    pub name: String,
    pub granularity: u64,
    pub persistent: bool,
    /// Loaded from an image a killed QEMU left in use: it may have
    /// missed writes, so it is never a base nor worth carrying.
    pub inconsistent: bool,
}

/// FASTR's dirty bitmaps on a disk's top node, from the `inserted`
/// member of its `query-block` entry.
pub(crate) fn fastr_bitmaps(inserted: Option<&serde_json::Value>) -> Vec<FastrBitmap> {
    inserted
        .and_then(|i| i["dirty-bitmaps"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let name = m["name"].as_str()?;
            name.starts_with(crate::driver::FASTR_TAG)
                .then(|| FastrBitmap {
                    name: name.to_string(),
                    granularity: m["granularity"].as_u64().unwrap_or(65536),
                    persistent: m["persistent"] == true,
                    inconsistent: m["inconsistent"] == true,
                })
        })
        .collect()
}

/// Disk `disk`'s entry (device `disk-NAME`) in QMP `query-block`'s
/// answer `blocks`.
pub(crate) fn block_of<'a>(
    blocks: &'a serde_json::Value,
    disk: &str,
) -> Option<&'a serde_json::Value> {
    let device = format!("disk-{disk}");
    blocks.as_array()?.iter().find(|b| {
        b["qdev"]
            .as_str()
            .is_some_and(|q| q == device || q.contains(&format!("/{device}/")))
    })
}

/// The QEMU model of `c` (the one translation from `VmConfig`, shared by
/// the qemu and libvirt drivers): CPU model by accelerator, memory floor,
/// disks from the storage driver's images, NICs on their host taps
/// (the `linux` network driver) or else on QEMU's restricted user-mode
/// network. The console is left to the caller.
pub fn qemu_vm(c: &VmConfig, accel: Accel, runtime_dir: PathBuf) -> Result<QemuVm, String> {
    if c.disk_images.len() != c.disks.len() {
        return Err("the disks' image paths were not resolved by the storage driver".into());
    }
    if let Some(n) = c.nics.iter().find(|n| !n.model.fits(c.machine)) {
        return Err(format!(
            "NIC {} is model {}, which needs PCI; the {} machine has only virtio-mmio: use model virtio or another machine",
            n.name,
            n.model.as_str(),
            c.machine.as_str()
        ));
    }
    Ok(QemuVm {
        name: c.id.replace('/', "."),
        accel,
        machine: c.machine,
        cpu_model: c.cpu_model.clone().unwrap_or_else(|| match accel {
            Accel::Kvm => "host".into(),
            Accel::Tcg => "qemu64".into(),
        }),
        cpus: c.cpus.max(1),
        memory_mib: (c.memory >> 20).max(16),
        kernel: c.boot.as_ref().map(|b| PathBuf::from(&b.kernel)),
        initrd: c
            .boot
            .as_ref()
            .and_then(|b| b.initrd.as_ref().map(PathBuf::from)),
        cmdline: c.boot.as_ref().map(|b| {
            // Only TCG guests need the host's TSC rate; a KVM host never
            // measures it.
            let tsc = match accel {
                Accel::Tcg => crate::qemu::tsc::host_khz(),
                Accel::Kvm => None,
            };
            crate::qemu::tsc::guest_cmdline(b.cmdline.as_deref(), accel, tsc)
        }),
        disks: c
            .disk_images
            .iter()
            .map(|d| crate::qemu::cmdline::QemuDisk {
                id: d.name.clone(),
                path: d.path.clone(),
                format: d.format.clone(),
                bus: d.bus,
                read_only: d.read_only,
            })
            .collect(),
        nics: c
            .nics
            .iter()
            .map(|n| QemuNic {
                id: n.name.clone(),
                mac: n.mac.clone(),
                model: n.model,
                backend: if n.host_tap {
                    NicBackend::Tap {
                        ifname: n.tap.clone(),
                    }
                } else {
                    NicBackend::UserRestricted
                },
            })
            .collect(),
        vnc: None,
        spice: None,
        runtime_dir,
    })
}

/// CPU model names from `qemu-system-x86_64 -cpu help`: the indented
/// first word of each line under `Available CPUs:` (QEMU 7+), or the
/// second word of each `x86 NAME ...` line (older builds).
fn parse_cpu_help(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_list = false;
    for l in text.lines() {
        if l.starts_with("Available CPUs") {
            in_list = true;
            continue;
        }
        if l.trim().is_empty() || !l.starts_with(char::is_whitespace) {
            in_list = false;
        }
        let mut w = l.split_whitespace();
        match w.next() {
            Some("x86") => out.extend(w.next().map(str::to_string)),
            Some(name) if in_list => out.push(name.to_string()),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_help_of_old_and_new_qemu_builds_is_read() {
        let new = "Available CPUs:\n  486                   (alias configured by machine type)\n  host                  processor with all supported host features \n  max                   Enables all features\n\nRecognized CPUID flags:\n  3dnow 3dnowext\n";
        assert_eq!(parse_cpu_help(new), ["486", "host", "max"]);
        let old = "x86 qemu64  QEMU Virtual CPU version 2.5+\nx86 host  KVM processor with all supported host features\n\nRecognized CPUID flags:\n  fpu vme\n";
        assert_eq!(parse_cpu_help(old), ["qemu64", "host"]);
    }
    use crate::driver::NicConfig;
    use crate::model::vm::{Machine, NicModel};

    fn config(machine: Machine, model: NicModel) -> VmConfig {
        VmConfig {
            id: "default/n".into(),
            cpus: 1,
            memory: 128 << 20,
            machine,
            cpu_model: None,
            boot: None,
            disks: vec![],
            disk_images: vec![],
            nics: vec![NicConfig {
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
                tap: String::new(),
                bridge: String::new(),
                model,
                host_tap: false,
            }],
            spice: false,
        }
    }

    /// Both drivers build from `qemu_vm`: the NIC model the spec asked for
    /// reaches the QEMU model (it used to be virtio whatever the spec said).
    #[test]
    fn the_nic_model_reaches_the_qemu_model() {
        for model in [NicModel::E1000, NicModel::Rtl8139, NicModel::Virtio] {
            let vm = qemu_vm(&config(Machine::Q35, model), Accel::Tcg, "/tmp/x".into()).unwrap();
            assert_eq!(vm.nics[0].model, model);
        }
    }

    /// microvm has no PCI bus: an emulated card is refused with a reason,
    /// not swapped for virtio behind the user's back.
    #[test]
    fn microvm_refuses_an_emulated_nic() {
        let err = qemu_vm(
            &config(Machine::Microvm, NicModel::E1000),
            Accel::Tcg,
            "/tmp/x".into(),
        )
        .unwrap_err();
        assert!(
            err.contains("NIC eth0 is model e1000") && err.contains("microvm"),
            "{err}"
        );
        assert!(qemu_vm(
            &config(Machine::Microvm, NicModel::Virtio),
            Accel::Tcg,
            "/tmp/x".into()
        )
        .is_ok());
    }

    /// A config.json written before NICs had a model reads as virtio, so
    /// an upgraded node neither fails to read it nor flags a change.
    #[test]
    fn a_saved_config_without_a_nic_model_reads_as_virtio() {
        let mut v = serde_json::to_value(config(Machine::Q35, NicModel::Virtio)).unwrap();
        v["nics"][0].as_object_mut().unwrap().remove("model");
        let back: VmConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, config(Machine::Q35, NicModel::Virtio));
        let e1000 = serde_json::to_value(config(Machine::Q35, NicModel::E1000)).unwrap();
        assert_eq!(e1000["nics"][0]["model"], "e1000");
    }

    /// The kernel line both drivers get from `qemu_vm`: the host's TSC
    /// words under TCG (when the host's TSC is invariant), the spacesuit's
    /// line untouched under KVM.
    #[test]
    fn tcg_guests_get_the_host_tsc_through_qemu_vm() {
        let config = VmConfig {
            id: "default/t".into(),
            cpus: 1,
            memory: 128 << 20,
            machine: crate::model::vm::Machine::Microvm,
            cpu_model: None,
            boot: Some(crate::model::vm::Boot {
                kernel: "/k".into(),
                initrd: None,
                cmdline: Some("console=ttyS0 quiet".into()),
            }),
            disks: vec![],
            disk_images: vec![],
            nics: vec![],
            spice: false,
        };
        let line = |accel| {
            qemu_vm(&config, accel, "/tmp/x".into())
                .unwrap()
                .cmdline
                .unwrap()
        };
        assert_eq!(line(Accel::Kvm), "console=ttyS0 quiet");
        match crate::qemu::tsc::host_khz() {
            Some(khz) => assert_eq!(
                line(Accel::Tcg),
                format!("console=ttyS0 quiet tsc_early_khz={khz} tsc=reliable")
            ),
            None => assert_eq!(line(Accel::Tcg), "console=ttyS0 quiet"),
        }
    }
}
