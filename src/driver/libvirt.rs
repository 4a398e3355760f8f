//! The libvirt hypervisor driver, for hosts that already run libvirtd. Each
//! VM is a persistent libvirt domain named `deorch.<namespace>.<name>`,
//! defined from the same [`VmConfig`] as the qemu driver's command line: the
//! config goes through the same QEMU model ([`super::qemu::qemu_vm`]) and
//! one function, [`domain_xml`], turns that model into domain XML.
//!
//! - Accelerator: domain type `qemu` (TCG) unless the node's probe boot
//!   found KVM working (`kvm`); the CPU model follows the model's choice.
//! - Boot: direct kernel boot (kernel, initrd, command line), `microvm`
//!   devices on virtio-mmio, no option ROMs, no USB, no balloon.
//! - Serial console: written by QEMU to `serial.log` in the VM's runtime
//!   directory (`<state>/vms/<namespace>/<name>/`, the qemu driver's
//!   layout), beside the configuration it was started with and the stop
//!   marker.
//! - Consoles: VNC with a noVNC websocket on the node's address, on the
//!   port [`crate::qemu::console::assign`] derives from the VM's identity.
//!   The port is kept in the domain definition for as long as the domain
//!   exists, so libvirt itself is the record (no database); `console.json`
//!   in the runtime directory caches it for status. SPICE (when the spec
//!   asks and libvirt's domain capabilities list it) takes the same offset
//!   in a third range right after the websocket range.
//! - QEMU runs as root without relabelling (DAC label `+0:+0`,
//!   `relabel='no'`), as the qemu driver's QEMU does: disk images are
//!   shared copy-on-write layers that libvirt must not chown.
//! - Stop: ACPI power button, then `destroy` after the timeout. Why a
//!   domain is off comes from libvirt's shutoff reason and deorch's stop
//!   marker.
//! - libvirt calls block (FFI): they run on tokio's blocking pool. The
//!   connection is opened on first use (libvirtd's first capability probe
//!   can take a minute) and reopened after libvirtd restarts.
//!
//! Live snapshots of a running disk are external disk-only snapshots
//! onto the overlay the storage driver made (`live_snapshot`); with `--net
//! linux` a NIC is an `ethernet` interface on deorch's tap.
//!
//! Relocation: each domain has deorch's own QMP monitor (`qmp.sock` in the
//! runtime directory, through `<qemu:commandline>`) beside libvirt's. The
//! relocation agent drives the qemu driver's data path through it
//! (`crate::relocate::live`); a receiving domain is defined with this
//! node's disks and started paused on `-incoming defer`
//! (`start_incoming`). libvirt follows QEMU's events: the receiver's
//! domain runs after the relocation's `cont`, the sender's is paused,
//! then removed. The marker of a relocation is the qemu driver's
//! ([`super::marker`]).
//!
//! Not yet: the user-mode NIC (without `--net linux`) is not restricted
//! (libvirt has no `restrict=on`), so a guest can reach out through the
//! host.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use virt::connect::Connect;
use virt::domain::{Domain, DomainShutoffReason, DomainState, DomainStateReason};
use virt::enumutil::Enum;
use virt::error::{Error as VirtError, ErrorNumber};

use super::{BoxFuture, DriverError, Hypervisor, StopReason, VmConfig, VmState};
use crate::model::vm::{ConsoleStatus, DiskBus, Machine};
use crate::qemu::cmdline::{self, NicBackend, QemuVm, Vnc};
use crate::qemu::console::{self, PortRange};
use crate::qemu::probe::Accel;

/// The default libvirt URI (`--libvirt-uri`).
pub const DEFAULT_URI: &str = "qemu:///system";

const STOP_MARKER: &str = "stop-requested";
const CONFIG_FILE: &str = "config.json";
const CONSOLE_FILE: &str = "console.json";

/// Runs VMs as libvirt domains.
pub struct LibvirtHypervisor {
    inner: Arc<Inner>,
}

struct Inner {
    uri: String,
    vms_dir: PathBuf,
    accel: Accel,
    console_listen: IpAddr,
    ports: PortRange,
    /// QEMU's TLS directory for the browsers' console websockets.
    console_tls: Option<PathBuf>,
    /// The open connection, if any (reopened when libvirtd went away).
    conn: Mutex<Option<Connect>>,
    /// Serialises console port assignment and definition between starts.
    assigning: Mutex<()>,
    /// Whether this libvirt's QEMU serves SPICE (asked once).
    spice: Mutex<Option<bool>>,
}

impl LibvirtHypervisor {
    /// Domains on libvirt at `uri`; runtime directories under `vms_dir`;
    /// consoles on 127.0.0.1 until [`LibvirtHypervisor::with_console`].
    pub fn new(uri: impl Into<String>, vms_dir: impl Into<PathBuf>, accel: Accel) -> Self {
        // libvirt's default handler prints every error (e.g. each lookup of
        // a VM not defined yet) to stderr; the driver reports errors itself.
        virt::error::clear_error_callback();
        LibvirtHypervisor {
            inner: Arc::new(Inner {
                uri: uri.into(),
                vms_dir: vms_dir.into(),
                accel,
                console_listen: IpAddr::from([127, 0, 0, 1]),
                ports: PortRange::default(),
                console_tls: None,
                conn: Mutex::new(None),
                assigning: Mutex::new(()),
                spice: Mutex::new(None),
            }),
        }
    }

    /// Consoles listen on `listen`, with ports from `ports`.
    pub fn with_console(mut self, listen: IpAddr, ports: PortRange) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("configured before first use");
        inner.console_listen = listen;
        inner.ports = ports;
        self
    }

    /// The consoles' websockets speak TLS with the credentials in `dir`
    /// (QEMU's `tls-creds-x509` layout): a second VNC server on deorch's
    /// command line, for browsers on HTTPS pages.
    pub fn with_console_tls(mut self, dir: Option<PathBuf>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("configured before first use")
            .console_tls = dir;
        self
    }

    /// The libvirt domain name of VM `id` (`namespace/name`). Namespaces
    /// and names are DNS labels (no dots), so the name is unambiguous.
    pub fn domain_name(id: &str) -> String {
        format!("deorch.{}", id.replace('/', "."))
    }

    /// The runtime directory of VM `id`.
    pub fn runtime_dir(&self, id: &str) -> PathBuf {
        self.inner.vms_dir.join(id)
    }

    /// Run `f` with a connection on the blocking pool. A transient failure
    /// on a dead connection drops it, so the next call reconnects.
    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        id: &str,
        f: impl FnOnce(&Inner, &Connect, &str) -> Result<T, DriverError> + Send + 'static,
    ) -> Result<T, DriverError> {
        let inner = self.inner.clone();
        let target = id.to_string();
        tokio::task::spawn_blocking(move || {
            let conn = inner.connect(op, &target)?;
            let out = f(&inner, &conn, &target);
            if matches!(out, Err(DriverError::Transient { .. })) && conn.is_alive() != Ok(true) {
                inner.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
            }
            out
        })
        .await
        .map_err(|e| transient(op, id, format!("libvirt call panicked: {e}")))?
    }

    /// Define and start the domain of `config`; `incoming`: waiting for a
    /// relocation's stream, paused.
    async fn launch(&self, config: &VmConfig, incoming: bool) -> Result<(), DriverError> {
        // The guest's last writes may be in a transfer overlay a
        // relocation left (its QEMU died on it): into the volume first,
        // unless the domain still runs on it.
        let dir = self.runtime_dir(&config.id);
        if !crate::qemu::overlay::files(&dir).is_empty() {
            let on = self
                .run("start", &config.id, |_, conn, id| {
                    match Inner::lookup(conn, "start", id)? {
                        Some(dom) => active(&dom, "start", id),
                        None => Ok(false),
                    }
                })
                .await?;
            if !on {
                crate::qemu::overlay::fold_files(&dir)
                    .await
                    .map_err(|e| permanent("start", &config.id, e))?;
            }
        }
        let owned = config.clone();
        self.run("start", &config.id, move |inner, conn, id| {
            let config = owned;
            if let Some(dom) = Inner::lookup(conn, "start", id)? {
                if active(&dom, "start", id)? {
                    return Err(permanent("start", id, "already running"));
                }
            }
            let vm = super::qemu::qemu_vm(&config, inner.accel, inner.runtime_dir(id))
                .map_err(|m| permanent("start", id, m))?;
            let dir = inner.runtime_dir(id);
            std::fs::create_dir_all(&dir).map_err(|e| io_permanent("start", id, &dir, e))?;
            let _ = std::fs::remove_file(dir.join(STOP_MARKER));
            let serial = cmdline::serial_log(&dir);
            if serial.exists() {
                let _ = std::fs::rename(&serial, dir.join("serial.log.1"));
            }
            write_atomic(
                &dir,
                CONFIG_FILE,
                &serde_json::to_vec(&config).expect("configs serialize"),
            )
            .map_err(|e| io_permanent("start", id, &dir, e))?;
            let (dom, port, spice) = inner.define(conn, &config, vm, incoming)?;
            write_atomic(
                &dir,
                CONSOLE_FILE,
                json!({"vnc": port, "websocket": inner.ports.websocket(port), "spice": spice,
                    "websocketTls": inner.console_tls.is_some()})
                .to_string()
                .as_bytes(),
            )
            .map_err(|e| io_permanent("start", id, &dir, e))?;
            let started = if incoming {
                dom.create_with_flags(virt::sys::VIR_DOMAIN_START_PAUSED)
            } else {
                dom.create()
            };
            started.map_err(|e| classify("start", id, &e))?;
            Ok(())
        })
        .await
    }
}

impl Inner {
    fn connect(&self, op: &str, id: &str) -> Result<Connect, DriverError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = conn.as_ref() {
            if c.is_alive() == Ok(true) {
                return Ok(c.clone());
            }
        }
        let c = Connect::open(Some(&self.uri)).map_err(|e| {
            transient(
                op,
                id,
                format!("cannot connect to libvirt at {}: {}", self.uri, e.message()),
            )
        })?;
        *conn = Some(c.clone());
        Ok(c)
    }

    fn runtime_dir(&self, id: &str) -> PathBuf {
        self.vms_dir.join(id)
    }

    /// The domain of `id`, `None` when it is not defined.
    fn lookup(conn: &Connect, op: &str, id: &str) -> Result<Option<Domain>, DriverError> {
        match conn.lookup_domain_by_name(&LibvirtHypervisor::domain_name(id)) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.code() == Enum::Known(ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(classify(op, id, &e)),
        }
    }

    fn spice_supported(&self, conn: &Connect, machine: &str) -> bool {
        let mut cached = self.spice.lock().unwrap_or_else(|p| p.into_inner());
        *cached.get_or_insert_with(|| {
            conn.domain_capabilities(
                None,
                Some("x86_64"),
                Some(machine),
                Some(domain_type(self.accel)),
                0,
            )
            .is_ok_and(|caps| graphics_types(&caps).iter().any(|t| t == "spice"))
        })
    }

    /// Define (or redefine) the domain of `config` with its console ports;
    /// returns (VNC port, SPICE port).
    fn define(
        &self,
        conn: &Connect,
        config: &VmConfig,
        mut vm: QemuVm,
        incoming: bool,
    ) -> Result<(Domain, u16, Option<u16>), DriverError> {
        let id = &config.id;
        let name = LibvirtHypervisor::domain_name(id);
        let spice = config.spice && {
            let machine = machine_name(vm.machine);
            let ok = self.spice_supported(conn, machine);
            if !ok {
                tracing::warn!(vm = %id, "SPICE asked for, but this QEMU build has none: VNC only");
            }
            ok
        };
        let _guard = self.assigning.lock().unwrap_or_else(|p| p.into_inner());
        // Every VNC port a defined domain holds, and this domain's own.
        let mut taken = BTreeSet::new();
        let mut mine = None;
        let mut uuid = None;
        let domains = conn
            .list_all_domains(0)
            .map_err(|e| classify("start", id, &e))?;
        for d in domains {
            let Ok(xml) = d.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE) else {
                continue; // gone meanwhile
            };
            if d.name().is_ok_and(|n| n == name) {
                mine = vnc_port(&xml);
                uuid = d.uuid_string().ok();
            } else {
                taken.extend(vnc_port(&xml));
            }
        }
        let ports = self.ports;
        let listen = self.console_listen;
        let bindable = |p: u16| std::net::TcpListener::bind((listen, p)).is_ok();
        let free = |p: u16| {
            bindable(p)
                && bindable(ports.websocket(p))
                && (!spice || ports.spice(p).is_some_and(bindable))
        };
        let port = match mine {
            Some(p)
                if (ports.vnc_base..ports.vnc_base + ports.size).contains(&p)
                    && !taken.contains(&p)
                    && free(p) =>
            {
                p
            }
            _ => loop {
                let p = console::assign(id, ports, &taken).ok_or_else(|| {
                    permanent(
                        "start",
                        id,
                        format!("all {} console ports are taken", ports.size),
                    )
                })?;
                if free(p) {
                    break p;
                }
                taken.insert(p);
            },
        };
        let spice_port = if spice { ports.spice(port) } else { None };
        vm.vnc = Some(Vnc {
            listen,
            port,
            websocket: Some(ports.websocket(port)),
            websocket_tls: self.console_tls.clone(),
        });
        let xml = domain_xml(
            &vm,
            &DomainParams {
                name,
                uuid,
                id: id.clone(),
                spice_port,
                incoming,
            },
        );
        let dom = conn
            .define_domain_xml(&xml)
            .map_err(|e| classify("define", id, &e))?;
        Ok((dom, port, spice_port))
    }
}

/// A libvirt failure as a driver error: a missing domain is `NotFound`;
/// configurations libvirt or QEMU reject, and operations invalid in the
/// domain's state, are permanent; the rest (connection, timeouts, busy) is
/// retried.
fn classify(op: &str, id: &str, e: &VirtError) -> DriverError {
    use ErrorNumber::*;
    let message = e.message().trim().to_string();
    match e.code() {
        Enum::Known(NoDomain) => DriverError::NotFound {
            op: op.into(),
            target: id.into(),
        },
        Enum::Known(
            XmlError | XmlDetail | XmlInvalidSchema | ConfigUnsupported | InvalidArg
            | ArgumentUnsupported | NoSupport | OperationUnsupported | OperationInvalid
            | OperationDenied | AccessDenied | DomExist | NoKernel | NoSource | CpuIncompatible
            | NoSecurityModel,
        ) => permanent(op, id, message),
        // QEMU refused to start (bad image, missing kernel, ...).
        Enum::Known(OperationFailed | InternalError) if op == "start" => {
            permanent(op, id, format!("QEMU refused to start: {message}"))
        }
        _ => transient(op, id, message),
    }
}

fn transient(op: &str, id: &str, message: impl Into<String>) -> DriverError {
    DriverError::transient(op, id, message)
}

fn permanent(op: &str, id: &str, message: impl Into<String>) -> DriverError {
    DriverError::permanent(op, id, message)
}

fn io_permanent(op: &str, id: &str, path: &Path, e: std::io::Error) -> DriverError {
    permanent(op, id, format!("{}: {e}", path.display()))
}

fn domain_type(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "qemu",
    }
}

fn machine_name(m: Machine) -> &'static str {
    match m {
        Machine::Pc => "pc",
        Machine::Q35 => "q35",
        Machine::Microvm => "microvm",
    }
}

/// What a domain needs beyond the QEMU model.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainParams {
    /// libvirt domain name.
    pub name: String,
    /// The UUID of the domain being redefined, if it exists.
    pub uuid: Option<String>,
    /// deorch's id of the VM (`namespace/name`), kept as the description.
    pub id: String,
    /// SPICE port, when SPICE is served.
    pub spice_port: Option<u16>,
    /// Start waiting for a relocation's migration stream (`-incoming
    /// defer`) rather than boot.
    pub incoming: bool,
}

/// Escape a value for XML text or a quoted attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn path(p: &Path) -> String {
    esc(&p.display().to_string())
}

/// `vda`, ..., `vdz`, `vdaa`, ... as libvirt names targets.
fn target_dev(prefix: &str, mut index: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'a' + (index % 26) as u8);
        if index < 26 {
            break;
        }
        index = index / 26 - 1;
    }
    letters.reverse();
    format!("{prefix}{}", String::from_utf8(letters).expect("ascii"))
}

/// The one function that builds domain XML: `vm` (the QEMU model the qemu
/// driver starts from, console included) as a libvirt domain. Every value
/// from the configuration is escaped.
pub fn domain_xml(vm: &QemuVm, p: &DomainParams) -> String {
    let micro = vm.machine == Machine::Microvm;
    let mmio = if micro {
        "<address type='virtio-mmio'/>"
    } else {
        ""
    };
    let mut x = String::new();
    let w = &mut x;
    let _ = writeln!(
        w,
        "<domain type='{}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>",
        domain_type(vm.accel)
    );
    let _ = writeln!(w, "  <name>{}</name>", esc(&p.name));
    if let Some(u) = &p.uuid {
        let _ = writeln!(w, "  <uuid>{}</uuid>", esc(u));
    }
    let _ = writeln!(w, "  <description>deorch VM {}</description>", esc(&p.id));
    let _ = writeln!(w, "  <memory unit='MiB'>{}</memory>", vm.memory_mib);
    let _ = writeln!(w, "  <vcpu>{}</vcpu>", vm.cpus);
    let _ = writeln!(w, "  <os>");
    let _ = writeln!(
        w,
        "    <type arch='x86_64' machine='{}'>hvm</type>",
        machine_name(vm.machine)
    );
    if let Some(k) = &vm.kernel {
        let _ = writeln!(w, "    <kernel>{}</kernel>", path(k));
        if let Some(i) = &vm.initrd {
            let _ = writeln!(w, "    <initrd>{}</initrd>", path(i));
        }
        let _ = writeln!(
            w,
            "    <cmdline>{}</cmdline>",
            esc(vm
                .cmdline
                .as_deref()
                .unwrap_or(cmdline::DEFAULT_KERNEL_CMDLINE))
        );
    }
    let _ = writeln!(w, "  </os>");
    let _ = writeln!(w, "  <features><acpi/></features>");
    let _ = match vm.cpu_model.as_str() {
        "host" => writeln!(w, "  <cpu mode='host-passthrough'/>"),
        "max" => writeln!(w, "  <cpu mode='maximum'/>"),
        m => writeln!(
            w,
            "  <cpu mode='custom' match='exact'><model fallback='forbid'>{}</model></cpu>",
            esc(m)
        ),
    };
    let _ = writeln!(w, "  <clock offset='utc'/>");
    let _ = writeln!(w, "  <on_poweroff>destroy</on_poweroff>");
    let _ = writeln!(w, "  <on_reboot>restart</on_reboot>");
    let _ = writeln!(w, "  <on_crash>destroy</on_crash>");
    let _ = writeln!(w, "  <devices>");
    let mut per_prefix = std::collections::BTreeMap::<&str, usize>::new();
    for d in &vm.disks {
        let (bus, prefix) = match d.bus {
            DiskBus::Virtio => ("virtio", "vd"),
            DiskBus::Scsi => ("scsi", "sd"),
            DiskBus::Sata => ("sata", "sd"),
            DiskBus::Ide => ("ide", "hd"),
        };
        let n = per_prefix.entry(prefix).or_default();
        let dev = target_dev(prefix, *n);
        *n += 1;
        let _ = writeln!(w, "    <disk type='file' device='disk'>");
        let _ = writeln!(
            w,
            "      <driver name='qemu' type='{}' cache='writeback' discard='unmap'/>",
            esc(&d.format)
        );
        let _ = writeln!(w, "      <source file='{}'/>", path(&d.path));
        let _ = writeln!(w, "      <target dev='{dev}' bus='{bus}'/>");
        if d.read_only {
            let _ = writeln!(w, "      <readonly/>");
        }
        let _ = writeln!(w, "      <alias name='ua-disk-{}'/>", esc(&d.id));
        if d.bus == DiskBus::Virtio {
            let _ = writeln!(w, "      {mmio}");
        }
        let _ = writeln!(w, "    </disk>");
    }
    for n in &vm.nics {
        match &n.backend {
            NicBackend::Tap { ifname } => {
                let _ = writeln!(w, "    <interface type='ethernet'>");
                let _ = writeln!(w, "      <target dev='{}' managed='no'/>", esc(ifname));
            }
            NicBackend::UserRestricted => {
                let _ = writeln!(w, "    <interface type='user'>");
            }
        }
        let _ = writeln!(w, "      <mac address='{}'/>", esc(&n.mac));
        // libvirt's model names; on microvm it puts virtio on virtio-mmio
        // (the address element below) and, like QEMU, has no PCI for the
        // others (qemu_vm refuses them first).
        let model = n.model.as_str();
        let _ = writeln!(w, "      <model type='{model}'/>");
        let _ = writeln!(w, "      <alias name='ua-nic-{}'/>", esc(&n.id));
        if micro {
            let _ = writeln!(w, "      {mmio}");
        } else {
            // No option ROM (iPXE): deorch boots kernels directly or from disk.
            let _ = writeln!(w, "      <rom enabled='no'/>");
        }
        let _ = writeln!(w, "    </interface>");
    }
    let _ = writeln!(
        w,
        "    <serial type='file'><source path='{}'/><target port='0'/></serial>",
        path(&cmdline::serial_log(&vm.runtime_dir))
    );
    if let Some(v) = &vm.vnc {
        // With TLS the websocket is deorch's second VNC server (below).
        let ws = v
            .websocket
            .filter(|_| v.websocket_tls.is_none())
            .map(|p| format!(" websocket='{p}'"))
            .unwrap_or_default();
        // Locked: a random password nobody is told (libvirt never shows
        // it without VIR_DOMAIN_XML_SECURE) until a console ticket sets
        // one, which expires.
        let lock = super::console_password();
        let _ = writeln!(
            w,
            "    <graphics type='vnc' port='{}' autoport='no'{ws} listen='{}' passwd='{lock}'/>",
            v.port,
            esc(&v.listen.to_string())
        );
        if let Some(sp) = p.spice_port {
            let _ = writeln!(
                w,
                "    <graphics type='spice' port='{sp}' autoport='no' listen='{}' passwd='{lock}'/>",
                esc(&v.listen.to_string())
            );
        }
    }
    let video = if micro || vm.vnc.is_none() {
        "none"
    } else {
        "vga"
    };
    let _ = writeln!(w, "    <video><model type='{video}'/></video>");
    let _ = writeln!(w, "    <controller type='usb' model='none'/>");
    let _ = writeln!(w, "    <memballoon model='none'/>");
    let _ = writeln!(w, "  </devices>");
    let _ = writeln!(
        w,
        "  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>"
    );
    // deorch's own QMP monitor beside libvirt's, which relocation drives
    // (the qemu driver's data path, libvirt following QEMU's events), and
    // the receiving end of a relocation waiting for its stream.
    let _ = writeln!(w, "  <qemu:commandline>");
    let mut args = vec![
        "-chardev".to_string(),
        format!(
            "socket,id=deorch-qmp,path={},server=on,wait=off",
            cmdline::qmp_socket(&vm.runtime_dir).display()
        ),
        "-mon".into(),
        "chardev=deorch-qmp,mode=control".into(),
    ];
    // The browsers' console (websocket over TLS), which libvirt's
    // graphics element cannot express.
    if let Some(v) = &vm.vnc {
        args.extend(cmdline::web_vnc_args(v, &vm.runtime_dir));
    }
    if p.incoming {
        args.extend(["-incoming".into(), "defer".into()]);
    }
    for a in args {
        let _ = writeln!(w, "    <qemu:arg value='{}'/>", esc(&a));
    }
    let _ = writeln!(w, "  </qemu:commandline>");
    let _ = writeln!(w, "</domain>");
    x
}

/// The opening tags `<NAME ...>` in `xml`, attributes included.
fn elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name} ");
    xml.match_indices(&open)
        .filter_map(|(i, _)| xml[i..].find('>').map(|end| &xml[i..i + end]))
        .collect()
}

/// `element` (an opening tag) without the attribute `name`.
fn drop_attr(element: &str, name: &str) -> String {
    ['\'', '"']
        .into_iter()
        .find_map(|q| {
            let key = format!(" {name}={q}");
            let start = element.find(&key)?;
            let len = element[start + key.len()..].find(q)?;
            Some(format!(
                "{}{}",
                &element[..start],
                &element[start + key.len() + len + 1..]
            ))
        })
        .unwrap_or_else(|| element.to_string())
}

/// libvirt's `passwdValidTo`: UTC `YYYY-MM-DDTHH:MM:SS` of unix seconds.
fn passwd_valid_to(secs: u64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S").to_string())
        .unwrap_or_default()
}

/// An attribute's value in an opening tag (libvirt quotes with `'`).
fn attr<'a>(element: &'a str, name: &str) -> Option<&'a str> {
    ['\'', '"'].into_iter().find_map(|q| {
        let key = format!(" {name}={q}");
        let start = element.find(&key)? + key.len();
        let len = element[start..].find(q)?;
        Some(&element[start..start + len])
    })
}

/// The fixed VNC port in a domain's XML.
fn vnc_port(xml: &str) -> Option<u16> {
    elements(xml, "graphics")
        .into_iter()
        .find(|g| attr(g, "type") == Some("vnc"))
        .and_then(|g| attr(g, "port"))
        .and_then(|p| p.parse().ok())
        .filter(|p: &u16| *p > 0)
}

/// The graphics types domain capabilities list.
fn graphics_types(caps: &str) -> Vec<String> {
    let Some(start) = caps.find("<graphics supported='yes'>") else {
        return Vec::new();
    };
    let section = &caps[start..];
    let section = &section[..section.find("</graphics>").unwrap_or(section.len())];
    section
        .split("<value>")
        .skip(1)
        .filter_map(|v| v.split("</value>").next())
        .map(str::to_string)
        .collect()
}

/// Whether the VM's websocket was started with TLS (deorch's second VNC
/// server).
fn web_tls(dir: &Path) -> bool {
    std::fs::read(dir.join(CONSOLE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["websocketTls"] == true)
}

fn read_console(dir: &Path) -> Option<(u16, Option<u16>)> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(CONSOLE_FILE)).ok()?).ok()?;
    let vnc = v["vnc"].as_u64().and_then(|p| u16::try_from(p).ok())?;
    let spice = v["spice"].as_u64().and_then(|p| u16::try_from(p).ok());
    Some((vnc, spice))
}

fn write_atomic(dir: &Path, file: &str, bytes: &[u8]) -> std::io::Result<()> {
    crate::state_file::write(&dir.join(file), bytes)
}

/// QEMU's PID and start time, from libvirt's pidfile (readable on the
/// local host with the system URI; (0, 0) otherwise).
fn qemu_pid(name: &str) -> (u32, u64) {
    let file = PathBuf::from(format!("/run/libvirt/qemu/{name}.pid"));
    let pid = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let started = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .map(crate::clock::unix_ms)
        .unwrap_or(0);
    (pid, started)
}

/// Whether the domain is running or paused (libvirt's "active").
fn active(dom: &Domain, op: &str, id: &str) -> Result<bool, DriverError> {
    dom.is_active().map_err(|e| classify(op, id, &e))
}

impl Hypervisor for LibvirtHypervisor {
    fn name(&self) -> &'static str {
        "libvirt"
    }

    fn accel(&self) -> Option<String> {
        Some(self.inner.accel.as_str().into())
    }

    fn console(&self, id: &str) -> Option<ConsoleStatus> {
        let dir = self.runtime_dir(id);
        let (vnc, spice) = read_console(&dir)?;
        let ws = self.inner.ports.websocket(vnc);
        Some(ConsoleStatus::served(
            self.inner.console_listen.to_string(),
            vnc,
            ws,
            spice,
            web_tls(&dir),
        ))
    }

    fn start<'a>(&'a self, config: &'a VmConfig) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.launch(config, false))
    }

    /// Defined with `-incoming defer` and started paused: the relocation
    /// drives it through deorch's monitor ([`Hypervisor::qmp_socket`]),
    /// and libvirt sees it run when the relocation says `cont`.
    fn start_incoming<'a>(
        &'a self,
        config: &'a VmConfig,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.launch(config, true))
    }

    fn vms_dir(&self) -> Option<&Path> {
        Some(&self.inner.vms_dir)
    }

    fn stop<'a>(
        &'a self,
        id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let dir = self.runtime_dir(id);
            let pressed = self
                .run("stop", id, move |_, conn, id| {
                    let Some(dom) = Inner::lookup(conn, "stop", id)? else {
                        return Ok(None);
                    };
                    // Recorded even when the domain is off already (the
                    // guest powered off, or it crashed): a start is then
                    // no restart.
                    let _ = std::fs::create_dir_all(&dir);
                    let _ = std::fs::write(dir.join(STOP_MARKER), b"");
                    if !active(&dom, "stop", id)? {
                        return Ok(None);
                    }
                    // ACPI power button first; the guest decides how to
                    // shut down. A refusal (e.g. paused) just waits.
                    Ok(Some(
                        dom.shutdown_flags(virt::sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                            .is_ok(),
                    ))
                })
                .await?;
            let Some(pressed) = pressed else {
                return Ok(());
            };
            let deadline = Instant::now() + if pressed { timeout } else { Duration::ZERO };
            loop {
                let on = self
                    .run("stop", id, |_, conn, id| {
                        match Inner::lookup(conn, "stop", id)? {
                            Some(dom) => active(&dom, "stop", id),
                            None => Ok(false),
                        }
                    })
                    .await?;
                if !on {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.run("stop", id, |_, conn, id| {
                let Some(dom) = Inner::lookup(conn, "stop", id)? else {
                    return Ok(());
                };
                match dom.destroy() {
                    Ok(()) => Ok(()),
                    // Went off between the check and the destroy.
                    Err(_) if !active(&dom, "stop", id)? => Ok(()),
                    Err(e) => Err(classify("stop", id, &e)),
                }
            })
            .await
        })
    }

    fn console_ticket<'a>(
        &'a self,
        id: &'a str,
        password: &'a str,
        valid_for: Duration,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let plain = password.to_string();
        let password = esc(password);
        let until = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            + valid_for.as_secs().max(1);
        let web = web_tls(&self.runtime_dir(id));
        let sock = cmdline::qmp_socket(&self.runtime_dir(id));
        let libvirts = self.run("console ticket", id, move |_, conn, id| {
            let op = "console ticket";
            let dom = Inner::lookup(conn, op, id)?.ok_or_else(|| DriverError::NotFound {
                op: op.into(),
                target: id.into(),
            })?;
            let xml = dom.xml_desc(0).map_err(|e| classify(op, id, &e))?;
            let valid_to = passwd_valid_to(until);
            let graphics = elements(&xml, "graphics");
            if graphics.is_empty() {
                return Err(DriverError::Permanent {
                    op: op.into(),
                    target: id.into(),
                    message: "the domain has no console".into(),
                });
            }
            for g in graphics {
                // The live element's own attributes (type, port, listen)
                // with the ticket added: libvirt changes only the password.
                let open = g.trim_end_matches('/').trim_end();
                let open = drop_attr(&drop_attr(open, "passwd"), "passwdValidTo");
                let update = format!("{open} passwd='{password}' passwdValidTo='{valid_to}'/>");
                dom.update_device_flags(&update, virt::sys::VIR_DOMAIN_AFFECT_LIVE)
                    .map_err(|e| classify(op, id, &e))?;
            }
            Ok(())
        });
        Box::pin(async move {
            libvirts.await?;
            if web {
                // The browsers' VNC server is deorch's: its ticket over
                // deorch's monitor.
                let mut qmp = crate::qemu::qmp::Qmp::connect(&sock, Duration::from_secs(5))
                    .await
                    .map_err(|e| transient("console ticket", id, e.to_string()))?;
                crate::qemu::console::set_tickets(
                    &mut qmp,
                    &plain,
                    valid_for,
                    &[crate::qemu::console::Ticket::WebVnc],
                )
                .await
                .map_err(|e| transient("console ticket", id, e))?;
            }
            Ok(())
        })
    }

    fn pause<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.run("pause", id, |_, conn, id| {
            let dom = Inner::lookup(conn, "pause", id)?.ok_or_else(|| DriverError::NotFound {
                op: "pause".into(),
                target: id.into(),
            })?;
            dom.suspend().map_err(|e| classify("pause", id, &e))
        }))
    }

    fn resume<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.run("resume", id, |_, conn, id| {
            let dom = Inner::lookup(conn, "resume", id)?.ok_or_else(|| DriverError::NotFound {
                op: "resume".into(),
                target: id.into(),
            })?;
            dom.resume().map_err(|e| classify("resume", id, &e))
        }))
    }

    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<VmState, DriverError>> {
        Box::pin(self.run("state", id, |inner, conn, id| {
            let Some(dom) = Inner::lookup(conn, "state", id)? else {
                return Ok(VmState::Absent);
            };
            let dir = inner.runtime_dir(id);
            let requested = dir.join(STOP_MARKER).exists();
            let (state, reason) = dom.state().map_err(|e| classify("state", id, &e))?;
            let state = match state {
                Enum::Known(s) => s,
                // virt 0.5 does not check virDomainGetState's result.
                Enum::Unknown(_) => {
                    return match Inner::lookup(conn, "state", id)? {
                        None => Ok(VmState::Absent),
                        Some(_) => Err(transient("state", id, "libvirt gave no state")),
                    }
                }
            };
            let off = |r: StopReason| {
                Ok(VmState::Stopped(if requested {
                    StopReason::Requested
                } else {
                    r
                }))
            };
            match state {
                DomainState::Shutoff => {
                    let guest = matches!(
                        reason,
                        Enum::Known(DomainStateReason::Shutoff(Enum::Known(
                            DomainShutoffReason::Shutdown
                        )))
                    );
                    off(if guest {
                        StopReason::GuestShutdown
                    } else {
                        StopReason::Crashed
                    })
                }
                DomainState::Crashed => off(StopReason::Crashed),
                DomainState::Paused
                | DomainState::PMSuspended
                | DomainState::Running
                | DomainState::Blocked
                | DomainState::Shutdown
                | DomainState::NoState => {
                    let config: VmConfig = std::fs::read(dir.join(CONFIG_FILE))
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .ok_or_else(|| transient("state", id, "unreadable config.json"))?;
                    let (pid, started_ms) = qemu_pid(&LibvirtHypervisor::domain_name(id));
                    let config = Box::new(config);
                    Ok(
                        if matches!(state, DomainState::Paused | DomainState::PMSuspended) {
                            VmState::Paused {
                                pid,
                                started_ms,
                                config,
                            }
                        } else {
                            VmState::Running {
                                pid,
                                started_ms,
                                config,
                            }
                        },
                    )
                }
            }
        }))
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.run("remove", id, |inner, conn, id| {
            if let Some(dom) = Inner::lookup(conn, "remove", id)? {
                if active(&dom, "remove", id)? {
                    if let Err(e) = dom.destroy() {
                        if active(&dom, "remove", id)? {
                            return Err(classify("remove", id, &e));
                        }
                    }
                }
                match dom.undefine_flags(
                    virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                        | virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                        | virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM,
                ) {
                    Ok(()) => {}
                    Err(e) if e.code() == Enum::Known(ErrorNumber::NoDomain) => {}
                    Err(e) => return Err(classify("remove", id, &e)),
                }
            }
            match std::fs::remove_dir_all(inner.runtime_dir(id)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(transient("remove", id, e.to_string())),
            }
        }))
    }

    /// An external disk-only snapshot onto the overlay the storage driver
    /// made (its backing file is the disk's current image): libvirt's
    /// `virDomainSnapshotCreateXML` with `DISK_ONLY | REUSE_EXT | ATOMIC`,
    /// and `NO_METADATA` because deorch's storage, not libvirt, keeps track
    /// of replicas. The other disks are left alone.
    fn live_snapshot<'a>(
        &'a self,
        id: &'a str,
        disk: &'a str,
        overlay: &'a Path,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        let disk = disk.to_string();
        let overlay = overlay.to_path_buf();
        Box::pin(self.run("live_snapshot", id, move |_, conn, id| {
            let dom =
                Inner::lookup(conn, "live_snapshot", id)?.ok_or_else(|| DriverError::NotFound {
                    op: "live_snapshot".into(),
                    target: id.into(),
                })?;
            let live = dom
                .xml_desc(0)
                .map_err(|e| classify("live_snapshot", id, &e))?;
            let xml = snapshot_xml(&live, &disk, &overlay)
                .map_err(|m| permanent("live_snapshot", id, format!("disk {disk}: {m}")))?;
            let flags = virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
                | virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
                | virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
                | virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
            dom.create_snapshot_xml(&xml, flags)
                .map_err(|e| classify("live_snapshot", id, &e))?;
            Ok(())
        }))
    }
}

/// The `<domainsnapshot>` that moves disk `disk` (deorch's alias
/// `ua-disk-NAME`) of a domain whose live XML is `domain_xml` onto
/// `overlay`, and no other disk.
fn snapshot_xml(domain_xml: &str, disk: &str, overlay: &Path) -> Result<String, String> {
    let alias = format!("<alias name='ua-disk-{}'/>", esc(disk));
    let mut found = false;
    let mut disks = String::new();
    for block in domain_xml.split("<disk ").skip(1) {
        let block = block.split("</disk>").next().unwrap_or("");
        let Some(dev) = block
            .split("<target dev='")
            .nth(1)
            .and_then(|t| t.split('\'').next())
        else {
            continue;
        };
        if block.contains(&alias) {
            found = true;
            // dir storage renames the overlay over the volume's own path.
            // QEMU reopens the old top read-only by its path once it is a
            // backing node, so it would read the overlay in its place; the
            // qemu driver first moves the node onto its layer's name
            // (`blockdev-reopen`), which libvirt offers no call for.
            let source = format!("<source file='{}'", path(overlay));
            if block.contains(&source) {
                return Err(format!(
                    "the overlay {} is the disk's own file name (dir storage): a live snapshot here would make the running guest read the overlay in place of its disk; the libvirt driver refuses it (stop the VM first, or use the qemu hypervisor driver)",
                    overlay.display()
                ));
            }
            let _ = write!(
                disks,
                "<disk name='{dev}' snapshot='external' type='file'><driver type='qcow2'/><source file='{}'/></disk>",
                path(overlay)
            );
        } else {
            let _ = write!(disks, "<disk name='{dev}' snapshot='no'/>");
        }
    }
    if !found {
        return Err("no such disk in the running domain".into());
    }
    Ok(format!(
        "<domainsnapshot><disks>{disks}</disks></domainsnapshot>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::vm::NicModel;
    use crate::qemu::cmdline::{QemuDisk, QemuNic};

    #[test]
    fn snapshot_xml_moves_only_the_named_disk() {
        let live = "<domain><devices>\n<disk type='file' device='disk'>\n<source file='/s/root.qcow2'/>\n<target dev='vda' bus='virtio'/>\n<alias name='ua-disk-root'/>\n</disk>\n<disk type='file' device='disk'>\n<target dev='vdb' bus='virtio'/>\n<alias name='ua-disk-data'/>\n</disk>\n</devices></domain>";
        let x = snapshot_xml(live, "data", Path::new("/s/o'v.qcow2")).unwrap();
        assert_eq!(
            x,
            "<domainsnapshot><disks><disk name='vda' snapshot='no'/><disk name='vdb' snapshot='external' type='file'><driver type='qcow2'/><source file='/s/o&apos;v.qcow2'/></disk></disks></domainsnapshot>"
        );
        assert!(snapshot_xml(live, "swap", Path::new("/x")).is_err());
        let own = snapshot_xml(live, "root", Path::new("/s/root.qcow2")).unwrap_err();
        assert!(own.contains("refuses"), "{own}");
        assert!(
            snapshot_xml(live, "roo", Path::new("/x")).is_err(),
            "no prefix match"
        );
    }

    fn tiny() -> QemuVm {
        QemuVm {
            name: "default.tiny".into(),
            accel: Accel::Tcg,
            machine: Machine::Microvm,
            cpu_model: "qemu64".into(),
            cpus: 1,
            memory_mib: 128,
            kernel: Some("/g/vmlinuz".into()),
            initrd: Some("/g/initrd.img".into()),
            cmdline: Some("console=ttyS0 quiet".into()),
            disks: vec![QemuDisk {
                id: "data".into(),
                path: "/v/data.qcow2".into(),
                format: "qcow2".into(),
                bus: DiskBus::Virtio,
                read_only: false,
            }],
            nics: vec![QemuNic {
                id: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
                model: NicModel::Virtio,
                backend: NicBackend::UserRestricted,
            }],
            vnc: Some(Vnc {
                listen: "127.0.0.1".parse().unwrap(),
                port: 5907,
                websocket: Some(6907),
                websocket_tls: None,
            }),
            spice: None,
            runtime_dir: "/s/vms/default/tiny".into(),
        }
    }

    fn params() -> DomainParams {
        DomainParams {
            name: "deorch.default.tiny".into(),
            uuid: None,
            id: "default/tiny".into(),
            spice_port: None,
            incoming: false,
        }
    }

    #[test]
    fn the_tiny_guest_as_a_domain() {
        let x = domain_xml(&tiny(), &params());
        for want in [
            "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>",
            "<name>deorch.default.tiny</name>",
            "<type arch='x86_64' machine='microvm'>hvm</type>",
            "<kernel>/g/vmlinuz</kernel>",
            "<initrd>/g/initrd.img</initrd>",
            "<cmdline>console=ttyS0 quiet</cmdline>",
            "<model fallback='forbid'>qemu64</model>",
            "<memory unit='MiB'>128</memory>",
            "<source file='/v/data.qcow2'/>",
            "<target dev='vda' bus='virtio'/>",
            "<mac address='52:54:00:12:34:56'/>",
            "<address type='virtio-mmio'/>",
            "<serial type='file'><source path='/s/vms/default/tiny/serial.log'/>",
            "<graphics type='vnc' port='5907' autoport='no' websocket='6907' listen='127.0.0.1' passwd='",
            "<video><model type='none'/></video>",
            "<label>+0:+0</label>",
            "<qemu:arg value='socket,id=deorch-qmp,path=/s/vms/default/tiny/qmp.sock,server=on,wait=off'/>",
            "<qemu:arg value='chardev=deorch-qmp,mode=control'/>",
        ] {
            assert!(x.contains(want), "{want} missing from:\n{x}");
        }
        assert!(!x.contains("incoming"), "{x}");
        // With TLS for the browsers, the websocket is deorch's second VNC
        // server on the command line, not libvirt's graphics'.
        let mut vm = tiny();
        vm.vnc.as_mut().unwrap().websocket_tls = Some("/s/tls/console".into());
        let t = domain_xml(&vm, &params());
        assert!(
            t.contains("<graphics type='vnc' port='5907' autoport='no' listen='127.0.0.1'"),
            "{t}"
        );
        for want in [
            "<qemu:arg value='tls-creds-x509,id=deorch-console-tls,dir=/s/tls/console,endpoint=server,verify-peer=off'/>",
            "<qemu:arg value='unix:/s/vms/default/tiny/vnc-web.sock,id=web,websocket=127.0.0.1:6907,tls-creds=deorch-console-tls,password=on'/>",
        ] {
            assert!(t.contains(want), "{want} missing from:\n{t}");
        }
        let mut waiting = params();
        waiting.incoming = true;
        let w = domain_xml(&tiny(), &waiting);
        assert!(
            w.contains("<qemu:arg value='-incoming'/>\n    <qemu:arg value='defer'/>"),
            "{w}"
        );
        assert!(!x.contains("<rom"), "{x}");
        assert!(!x.contains("spice"), "{x}");
        assert_eq!(vnc_port(&x), Some(5907));
    }

    #[test]
    fn pc_kvm_taps_spice_and_many_disks() {
        let mut vm = tiny();
        vm.machine = Machine::Pc;
        vm.accel = Accel::Kvm;
        vm.cpu_model = "host".into();
        vm.nics[0].backend = NicBackend::Tap {
            ifname: "dtap0".into(),
        };
        for i in 1..28 {
            let mut d = vm.disks[0].clone();
            d.id = format!("d{i}");
            vm.disks.push(d);
        }
        vm.disks[1].bus = DiskBus::Sata;
        vm.disks[1].read_only = true;
        let mut p = params();
        p.spice_port = Some(7907);
        p.uuid = Some("c7a5fdbd-cdaf-9455-926a-d65c16db1809".into());
        let x = domain_xml(&vm, &p);
        for want in [
            "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>",
            "<uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid>",
            "<cpu mode='host-passthrough'/>",
            "<interface type='ethernet'>",
            "<target dev='dtap0' managed='no'/>",
            "<rom enabled='no'/>",
            "<target dev='sda' bus='sata'/>",
            "<readonly/>",
            "<target dev='vdz' bus='virtio'/>",
            "<target dev='vdaa' bus='virtio'/>",
            "<graphics type='spice' port='7907' autoport='no' listen='127.0.0.1' passwd='",
            "<video><model type='vga'/></video>",
        ] {
            assert!(x.contains(want), "{want} missing from:\n{x}");
        }
        assert!(!x.contains("virtio-mmio"), "{x}");
    }

    #[test]
    fn each_nic_model_is_the_domain_interface_model() {
        let mut vm = tiny();
        vm.machine = Machine::Q35;
        for (model, want) in [
            (NicModel::E1000, "e1000"),
            (NicModel::Rtl8139, "rtl8139"),
            (NicModel::Virtio, "virtio"),
        ] {
            vm.nics[0].model = model;
            let x = domain_xml(&vm, &params());
            assert!(
                x.contains(&format!("<model type='{want}'/>")),
                "{model:?}:\n{x}"
            );
            assert_eq!(x.matches("<interface ").count(), 1, "{x}");
        }
    }

    #[test]
    fn every_value_is_escaped() {
        let mut vm = tiny();
        vm.cmdline = Some("console=ttyS0 x='<a&b>' y=\"z\"".into());
        vm.kernel = Some("/g/it's&<here>".into());
        vm.disks[0].path = "/v/a'b.qcow2".into();
        vm.nics[0].mac = "52:54:00:'/>".into();
        let mut p = params();
        p.id = "ns/<evil>".into();
        let x = domain_xml(&vm, &p);
        assert!(
            x.contains(
                "<cmdline>console=ttyS0 x=&apos;&lt;a&amp;b&gt;&apos; y=&quot;z&quot;</cmdline>"
            ),
            "{x}"
        );
        assert!(
            x.contains("<kernel>/g/it&apos;s&amp;&lt;here&gt;</kernel>"),
            "{x}"
        );
        assert!(x.contains("<source file='/v/a&apos;b.qcow2'/>"), "{x}");
        assert!(x.contains("<mac address='52:54:00:&apos;/&gt;'/>"), "{x}");
        assert!(x.contains("deorch VM ns/&lt;evil&gt;"), "{x}");
    }

    #[test]
    fn ports_and_capabilities_are_read_from_libvirt_xml() {
        let live = "<domain><devices><graphics type='spice' port='7001'/>\n<graphics type='vnc' port='5911' autoport='no' websocket='6911' listen='127.0.0.1'>\n<listen type='address'/></graphics></devices></domain>";
        assert_eq!(vnc_port(live), Some(5911));
        assert_eq!(
            vnc_port("<graphics type='vnc' port='-1' autoport='yes'/>"),
            None
        );
        assert_eq!(
            drop_attr("<graphics type='vnc' passwd='x' port='1'", "passwd"),
            "<graphics type='vnc' port='1'"
        );
        assert_eq!(passwd_valid_to(1_780_000_000), "2026-05-28T20:26:40");
        let caps = "<video supported='yes'><enum name='modelType'><value>vga</value></enum></video>\n<graphics supported='yes'>\n<enum name='type'>\n<value>sdl</value>\n<value>vnc</value>\n<value>spice</value>\n</enum>\n</graphics>";
        assert_eq!(graphics_types(caps), ["sdl", "vnc", "spice"]);
        assert_eq!(PortRange::default().spice(5907), Some(7907));
        assert_eq!(target_dev("vd", 0), "vda");
        assert_eq!(target_dev("vd", 25), "vdz");
        assert_eq!(target_dev("vd", 26), "vdaa");
        assert_eq!(target_dev("vd", 27), "vdab");
    }

    #[test]
    fn the_test_driver_answers_without_a_daemon() {
        // libvirt's built-in test driver: lookups and errors, no libvirtd.
        let conn = Connect::open(Some("test:///default")).expect("test driver");
        assert!(Inner::lookup(&conn, "state", "default/none")
            .unwrap()
            .is_none());
        let err = conn
            .define_domain_xml("<domain type='test'><name>x</name>")
            .unwrap_err();
        assert!(
            matches!(
                classify("define", "default/x", &err),
                DriverError::Permanent { .. }
            ),
            "{err:?}"
        );
    }
}
