//! The one place that builds QEMU command lines.
//!
//! Choices that cut boot time (measured in docs/PERFORMANCE.md): direct
//! kernel boot, `-nodefaults` (no default VGA, floppy, CD-ROM, NIC),
//! `-no-user-config`, no option ROMs on NICs (`romfile=` / microvm's
//! iPXE never loads on microvm), and the `microvm` machine type where the guest
//! needs no PCI. QEMU daemonizes with a pidfile, so a VM outlives any deorch
//! process, and a restarted node re-adopts it through the pidfile and the
//! QMP socket in the VM's runtime directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::probe::Accel;
use crate::model::vm::{DiskBus, Machine, NicModel};

/// Everything QEMU needs to run one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuVm {
    /// Guest name (shown by QEMU and `ps`).
    pub name: String,
    /// Accelerator.
    pub accel: Accel,
    /// Machine type.
    pub machine: Machine,
    /// CPU model.
    pub cpu_model: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Direct kernel boot.
    pub kernel: Option<PathBuf>,
    /// Initrd for direct kernel boot.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// Disks in boot order.
    pub disks: Vec<QemuDisk>,
    /// NICs.
    pub nics: Vec<QemuNic>,
    /// VNC console.
    pub vnc: Option<Vnc>,
    /// SPICE console.
    pub spice: Option<Spice>,
    /// Directory for the pidfile, QMP socket and serial log.
    pub runtime_dir: PathBuf,
}

/// A disk image.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuDisk {
    /// Device id (the disk's name).
    pub id: String,
    /// Image path.
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: String,
    /// Bus.
    pub bus: DiskBus,
    /// Read-only.
    pub read_only: bool,
}

/// A NIC.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuNic {
    /// Device id (the NIC's name).
    pub id: String,
    /// MAC address.
    pub mac: String,
    /// Device model.
    pub model: NicModel,
    /// Backend.
    pub backend: NicBackend,
}

/// Where a NIC's packets go.
#[derive(Debug, Clone, PartialEq)]
pub enum NicBackend {
    /// A host tap device (already created and attached to its bridge).
    Tap {
        /// Interface name.
        ifname: String,
    },
    /// QEMU's user-mode network, restricted to the guest and QEMU itself
    /// (needs no root; used by tests and the single-node quick start).
    UserRestricted,
}

/// VNC console endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Vnc {
    /// Address to listen on.
    pub listen: IpAddr,
    /// RFB TCP port (≥ 5900).
    pub port: u16,
    /// Websocket port for noVNC.
    pub websocket: Option<u16>,
    /// QEMU's TLS directory (`tls-creds-x509`) for the websocket: then a
    /// second VNC server (id `web`, its RFB end on a Unix socket in the
    /// runtime directory) serves the websocket over TLS for browsers on
    /// HTTPS pages (`wss://`), and the RFB port stays plain for native
    /// clients. Both locked until a console ticket.
    pub websocket_tls: Option<PathBuf>,
}

/// The id of the browsers' VNC server when the websocket has TLS.
pub const WEB_VNC: &str = "web";

/// The browsers' VNC server of `v` as QEMU arguments (none unless its
/// websocket has TLS): the credentials object, and a VNC server whose
/// RFB end is a Unix socket in `runtime_dir` and whose websocket speaks
/// TLS. Locked like the other until a console ticket.
pub fn web_vnc_args(v: &Vnc, runtime_dir: &std::path::Path) -> Vec<String> {
    let (Some(ws), Some(tls)) = (v.websocket, &v.websocket_tls) else {
        return Vec::new();
    };
    let host = match v.listen {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    vec![
        "-object".into(),
        format!(
            "tls-creds-x509,id=deorch-console-tls,dir={},endpoint=server,verify-peer=off",
            opt_path(tls)
        ),
        "-vnc".into(),
        format!(
            "unix:{},id={WEB_VNC},websocket={host}:{ws},tls-creds=deorch-console-tls,password=on",
            opt_path(&runtime_dir.join("vnc-web.sock"))
        ),
    ]
}

/// A path as a QEMU option value (commas doubled).
fn opt_path(p: &std::path::Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// A SPICE server (QEMU's `ui-spice-core` module must be installed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spice {
    /// Address to listen on.
    pub listen: IpAddr,
    /// TCP port.
    pub port: u16,
}

/// Files in a VM's runtime directory.
pub fn pidfile(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("qemu.pid")
}
/// The QMP socket of a VM.
pub fn qmp_socket(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("qmp.sock")
}
/// The serial console log of a VM.
pub fn serial_log(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("serial.log")
}

/// QEMU's own log: given as `-D`, it is also where a daemonized QEMU's
/// stderr goes (assertions, `error_report`), which would otherwise be
/// /dev/null.
pub fn qemu_log(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("qemu.log")
}

/// The kernel command line of a directly booted VM whose spacesuit gives
/// none: the serial console, which deorch reads.
pub const DEFAULT_KERNEL_CMDLINE: &str = "console=ttyS0";

fn microvm(vm: &QemuVm) -> bool {
    vm.machine == Machine::Microvm
}

/// QEMU's device for a NIC model on a machine: virtio-net sits on
/// virtio-mmio on `microvm` and on PCI elsewhere; the emulated cards exist
/// only on PCI, so on `microvm` QEMU refuses them rather than deorch
/// quietly swapping in another card ([`NicModel::fits`] refuses it first).
pub fn nic_device(model: NicModel, machine: Machine) -> &'static str {
    match (model, machine) {
        (NicModel::Virtio, Machine::Microvm) => "virtio-net-device",
        (NicModel::Virtio, Machine::Pc | Machine::Q35) => "virtio-net-pci",
        (NicModel::E1000, _) => "e1000",
        (NicModel::Rtl8139, _) => "rtl8139",
    }
}

/// The arguments of `qemu-system-x86_64` for `vm`.
pub fn args(vm: &QemuVm) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &format!("guest={},debug-threads=on", vm.name)]);
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-daemonize",
    ]);
    push(&["-accel", vm.accel.as_str()]);
    // Not microvm's x-option-roms=off: direct kernel boot is itself an
    // option ROM.
    push(&["-machine", vm.machine.as_str()]);
    push(&["-cpu", &vm.cpu_model]);
    push(&["-smp", &vm.cpus.to_string()]);
    push(&["-m", &format!("{}M", vm.memory_mib)]);
    let rd = &vm.runtime_dir;
    push(&["-pidfile", &pidfile(rd).display().to_string()]);
    push(&["-D", &qemu_log(rd).display().to_string()]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", qmp_socket(rd).display()),
    ]);
    push(&[
        "-chardev",
        &format!("file,id=serial0,path={}", serial_log(rd).display()),
    ]);
    push(&["-serial", "chardev:serial0"]);
    if let Some(k) = &vm.kernel {
        push(&["-kernel", &k.display().to_string()]);
        if let Some(i) = &vm.initrd {
            push(&["-initrd", &i.display().to_string()]);
        }
        push(&[
            "-append",
            vm.cmdline.as_deref().unwrap_or(DEFAULT_KERNEL_CMDLINE),
        ]);
    }
    let bus_suffix = if microvm(vm) { "device" } else { "pci" };
    for d in &vm.disks {
        let ro = if d.read_only { ",read-only=on" } else { "" };
        push(&[
            "-blockdev",
            &format!(
                "driver={},node-name={},file.driver=file,file.filename={},cache.direct=off,discard=unmap{ro}",
                d.format,
                d.id,
                d.path.display()
            ),
        ]);
        let dev = match (d.bus, microvm(vm)) {
            (DiskBus::Virtio, _) => {
                format!("virtio-blk-{bus_suffix},drive={},id=disk-{}", d.id, d.id)
            }
            (DiskBus::Scsi, _) => format!("scsi-hd,drive={},id=disk-{}", d.id, d.id),
            (DiskBus::Sata, _) => format!("ide-hd,drive={},id=disk-{}", d.id, d.id),
            (DiskBus::Ide, _) => format!("ide-hd,drive={},id=disk-{}", d.id, d.id),
        };
        push(&["-device", &dev]);
    }
    for n in &vm.nics {
        let backend = match &n.backend {
            NicBackend::Tap { ifname } => format!(
                "tap,id=net-{},ifname={ifname},script=no,downscript=no,vhost=off",
                n.id
            ),
            NicBackend::UserRestricted => format!("user,id=net-{},restrict=on", n.id),
        };
        push(&["-netdev", &backend]);
        let model = nic_device(n.model, vm.machine);
        // No option ROM (iPXE): deorch boots kernels directly or from disk.
        let rom = if microvm(vm) { "" } else { ",romfile=" };
        push(&[
            "-device",
            &format!(
                "{model},netdev=net-{},mac={},id=nic-{}{rom}",
                n.id, n.mac, n.id
            ),
        ]);
    }
    if let Some(v) = &vm.vnc {
        let display = v.port.saturating_sub(5900);
        let host = match v.listen {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        // Locked: no password is set until an authorised session asks for
        // a console ticket (QMP set_password), which expires.
        let web = web_vnc_args(v, &vm.runtime_dir);
        if web.is_empty() {
            let ws = v
                .websocket
                .map(|p| format!(",websocket={p}"))
                .unwrap_or_default();
            push(&["-vnc", &format!("{host}:{display},password=on{ws}")]);
        } else {
            push(&["-vnc", &format!("{host}:{display},password=on")]);
            let web: Vec<&str> = web.iter().map(String::as_str).collect();
            push(&web);
        }
    }
    if let Some(s) = &vm.spice {
        // Ticketing on and no ticket set: locked likewise.
        push(&["-spice", &format!("port={},addr={}", s.port, s.listen)]);
    }
    if (vm.vnc.is_some() || vm.spice.is_some()) && !microvm(vm) {
        push(&["-device", "VGA"]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> QemuVm {
        QemuVm {
            name: "default/tiny".into(),
            accel: Accel::Tcg,
            machine: Machine::Microvm,
            cpu_model: "qemu64".into(),
            cpus: 1,
            memory_mib: 128,
            kernel: Some("/g/vmlinuz".into()),
            initrd: Some("/g/initrd.img".into()),
            cmdline: Some("console=ttyS0 quiet".into()),
            disks: vec![],
            nics: vec![QemuNic {
                id: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
                model: NicModel::Virtio,
                backend: NicBackend::UserRestricted,
            }],
            vnc: Some(Vnc {
                listen: "127.0.0.1".parse().unwrap(),
                port: 5907,
                websocket: Some(5707),
                websocket_tls: None,
            }),
            spice: None,
            runtime_dir: "/run/deorch/vms/x".into(),
        }
    }

    fn joined(vm: &QemuVm) -> String {
        args(vm).join(" ")
    }

    #[test]
    fn microvm_uses_mmio_devices_and_no_roms() {
        let s = joined(&tiny());
        assert!(s.contains("-machine microvm "), "{s}");
        assert!(
            s.contains("virtio-net-device,netdev=net-eth0,mac=52:54:00:12:34:56"),
            "{s}"
        );
        assert!(!s.contains("romfile"), "{s}");
        assert!(
            s.contains("-vnc 127.0.0.1:7,password=on,websocket=5707"),
            "{s}"
        );
        assert!(s.contains("-nodefaults") && s.contains("-daemonize"), "{s}");
        assert!(s.contains("-pidfile /run/deorch/vms/x/qemu.pid"), "{s}");
    }

    #[test]
    fn a_tls_websocket_is_a_second_vnc_server_and_the_rfb_port_stays_plain() {
        let mut vm = tiny();
        vm.vnc.as_mut().unwrap().websocket_tls = Some("/s/tls/con,sole".into());
        let a = args(&vm);
        let s = a.join(" ");
        assert!(
            s.contains("-object tls-creds-x509,id=deorch-console-tls,dir=/s/tls/con,,sole,endpoint=server,verify-peer=off"),
            "{s}"
        );
        assert!(s.contains("-vnc 127.0.0.1:7,password=on -object"), "{s}");
        assert!(
            s.contains("-vnc unix:/run/deorch/vms/x/vnc-web.sock,id=web,websocket=127.0.0.1:5707,tls-creds=deorch-console-tls,password=on"),
            "{s}"
        );
        assert_eq!(a.iter().filter(|x| *x == "-vnc").count(), 2);
    }

    #[test]
    fn spice_listens_beside_vnc_without_a_ticket_and_one_vga() {
        let mut vm = tiny();
        vm.machine = Machine::Pc;
        vm.spice = Some(Spice {
            listen: "127.0.0.1".parse().unwrap(),
            port: 7907,
        });
        let s = joined(&vm);
        assert!(s.contains("-spice port=7907,addr=127.0.0.1 "), "{s}");
        assert_eq!(s.matches("-device VGA").count(), 1, "{s}");
        vm.vnc = None;
        assert!(
            joined(&vm).contains("-device VGA"),
            "SPICE alone still has a display"
        );
    }

    #[test]
    fn each_nic_model_gets_its_qemu_device() {
        let mut vm = tiny();
        for (machine, model, device) in [
            (Machine::Q35, NicModel::E1000, "e1000"),
            (Machine::Pc, NicModel::Rtl8139, "rtl8139"),
            (Machine::Q35, NicModel::Virtio, "virtio-net-pci"),
            (Machine::Microvm, NicModel::Virtio, "virtio-net-device"),
        ] {
            vm.machine = machine;
            vm.nics[0].model = model;
            let s = joined(&vm);
            assert!(
                s.contains(&format!(
                    "-device {device},netdev=net-eth0,mac=52:54:00:12:34:56"
                )),
                "{model:?} on {machine:?}: {s}"
            );
            assert_eq!(s.matches(",netdev=").count(), 1, "{s}");
        }
    }

    #[test]
    fn pc_nics_have_no_option_rom_and_taps_no_scripts() {
        let mut vm = tiny();
        vm.machine = Machine::Pc;
        vm.nics[0].backend = NicBackend::Tap {
            ifname: "dtap0".into(),
        };
        vm.disks.push(QemuDisk {
            id: "root".into(),
            path: "/v/root.qcow2".into(),
            format: "qcow2".into(),
            bus: DiskBus::Virtio,
            read_only: false,
        });
        let s = joined(&vm);
        assert!(
            s.contains("virtio-net-pci,netdev=net-eth0,mac=52:54:00:12:34:56,id=nic-eth0,romfile="),
            "{s}"
        );
        assert!(
            s.contains("tap,id=net-eth0,ifname=dtap0,script=no,downscript=no"),
            "{s}"
        );
        assert!(
            s.contains("driver=qcow2,node-name=root,file.driver=file,file.filename=/v/root.qcow2"),
            "{s}"
        );
        assert!(s.contains("virtio-blk-pci,drive=root"), "{s}");
    }
}
