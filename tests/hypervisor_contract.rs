//! One hypervisor contract, run against every `Hypervisor`: the in-memory
//! fake, the qemu driver and the libvirt driver. The real drivers boot the
//! tiny guest (with a copy-on-write data disk and a user-mode NIC) and the
//! contract checks what the guest prints on its serial console: DHCP lease,
//! disk content, ready marker; then state Running, the deterministic console
//! port serving RFB, pause/resume (the guest's counter stops and goes on),
//! a graceful ACPI stop, a restart on the same console port, re-adoption by
//! a new driver instance (a restarted daemon), QEMU's `kill -9` reported as
//! a crash and booted again on the same port, a forced stop and removal. The fake has no serial console or graphics, so those checks
//! are skipped for it only.
//!
//! libvirtd is started by this harness (no systemd here): `virtlogd -d;
//! libvirtd -d` under a file lock when `virsh version` fails, and left
//! running for the next test run, because its first capability probe takes
//! about a minute. Under `CI=true` a missing component fails the test.

mod common;

use common::libvirt::{ci, libvirtd_up, runs, LIBVIRT_URI};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deorch::driver::fake::FakeHypervisor;
use deorch::driver::libvirt::LibvirtHypervisor;
use deorch::driver::qemu::QemuHypervisor;
use deorch::driver::{
    DiskImage, DriverError, Hypervisor, NicConfig, StopReason, VmConfig, VmState,
};
use deorch::model::vm::{Boot, DiskBus, Machine, NicModel};
use deorch::qemu::console::{self, PortRange};
use deorch::qemu::probe::{Accel, READY_MARKER};

/// Console ports of these tests: away from the node's default range and
/// below Linux's ephemeral ports (32768-60999), where any outgoing
/// connection on the machine could hold the VM's home port and move it.
const PORTS: PortRange = PortRange {
    vnc_base: 20900,
    ws_base: 21900,
    size: 500,
};
/// How long one boot may take to print the ready marker (TCG on a busy
/// 2-core machine: 5-12 s on `pc`).
const BOOT_WATCHDOG: Duration = Duration::from_secs(30);
/// Boots tried before the contract gives up.
const BOOT_ATTEMPTS: u32 = 3;
/// How long one driver call may take (libvirt's first define probes QEMU).
const CALL_TIMEOUT: Duration = Duration::from_secs(150);

/// A driver under test, with what the contract needs to look at it.
struct Subject {
    hv: Arc<dyn Hypervisor>,
    /// Where VMs' runtime directories (and serial logs) are; `None`:
    /// nothing boots (the fake).
    vms: Option<PathBuf>,
    /// Whether VMs get graphical consoles.
    consoles: bool,
    /// Scratch directory (runtime dirs, the data disk).
    dir: PathBuf,
    /// Tears down what the driver left running, however the test ends.
    cleanup: Box<dyn Fn()>,
    /// A new instance of the driver over the same state, as a restarted
    /// daemon makes; `None` for the fake (its VMs live in its memory).
    reopen: Option<Box<dyn Fn() -> Arc<dyn Hypervisor>>>,
}

impl Drop for Subject {
    fn drop(&mut self) {
        (self.cleanup)();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fake() -> Option<Subject> {
    Some(Subject {
        hv: Arc::new(FakeHypervisor::default()),
        vms: None,
        consoles: false,
        dir: common::temp_dir("contract-fake"),
        cleanup: Box::new(|| {}),
        reopen: None,
    })
}

/// The browsers' console TLS a node makes from its HTTPS certificate
/// (`tls/console`, the page's certificate and its CA `tls/ca.pem`).
fn console_tls(dir: &std::path::Path) -> PathBuf {
    use deorch::http::tls;
    let t = dir.join("tls");
    tls::self_signed(&t, &[]).unwrap();
    let (console, shared) =
        tls::console_dir(&t, &t.join(tls::CERT_FILE), &t.join(tls::KEY_FILE), &[]).unwrap();
    assert!(shared, "the page's certificate comes with its CA");
    console
}

fn qemu() -> Option<Subject> {
    if !common::qemu_available() {
        return None;
    }
    let dir = common::temp_dir("contract-qemu");
    let vms = dir.join("vms");
    let tls = console_tls(&dir);
    let open = {
        let vms = vms.clone();
        move || -> Arc<dyn Hypervisor> {
            Arc::new(
                QemuHypervisor::new("qemu-system-x86_64", &vms, Accel::Tcg)
                    .with_console("127.0.0.1".parse().unwrap(), PORTS)
                    .with_console_tls(Some(tls.clone())),
            )
        }
    };
    Some(Subject {
        hv: open(),
        reopen: Some(Box::new(open)),
        vms: Some(vms.clone()),
        consoles: true,
        dir,
        // QEMU daemonizes: kill what a failed test left behind.
        cleanup: Box::new(move || {
            for ns in std::fs::read_dir(&vms).into_iter().flatten().flatten() {
                for vm in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                    if let Ok(pid) = std::fs::read_to_string(vm.path().join("qemu.pid")) {
                        let _ = runs("kill", &["-9", pid.trim()]);
                    }
                }
            }
        }),
    })
}

fn libvirt() -> Option<Subject> {
    if !common::qemu_available() || !libvirtd_up() {
        return None;
    }
    let dir = common::temp_dir("contract-libvirt");
    let vms = dir.join("vms");
    let tls = console_tls(&dir);
    let open = {
        let vms = vms.clone();
        move || -> Arc<dyn Hypervisor> {
            Arc::new(
                LibvirtHypervisor::new(LIBVIRT_URI, &vms, Accel::Tcg)
                    .with_console("127.0.0.1".parse().unwrap(), PORTS)
                    .with_console_tls(Some(tls.clone())),
            )
        }
    };
    let id = vm_id("libvirt");
    Some(Subject {
        hv: open(),
        reopen: Some(Box::new(open)),
        vms: Some(vms.clone()),
        consoles: true,
        dir,
        cleanup: Box::new(move || {
            let name = LibvirtHypervisor::domain_name(&id);
            let _ = runs("virsh", &["-c", LIBVIRT_URI, "destroy", &name]);
            let _ = runs("virsh", &["-c", LIBVIRT_URI, "undefine", &name]);
        }),
    })
}

/// One VM id per driver and test process, so runs never share a domain.
fn vm_id(driver: &str) -> String {
    format!("contract/{driver}-{}", std::process::id())
}

/// The tiny guest with a 4 MiB qcow2 data disk whose first sector is 0xab,
/// on the `pc` machine, not the tiny spacesuit's `microvm`: microvm has no
/// HPET or ACPI PM timer, so when the host is busy the guest kernel's PIT
/// calibration of the TSC fails ("tsc: Unable to calibrate against PIT",
/// "No reference (HPET/PMTIMER) available", "Marking TSC unstable") and
/// the kernel hangs with no working clock: 7 of 7 microvm boots hung at
/// load 4-6 on this 2-core machine, 0 of 4 `pc` boots (which calibrate
/// against the HPET instead).
fn tiny_config(s: &Subject, id: &str) -> VmConfig {
    let (kernel, initrd) = if s.vms.is_some() {
        common::tiny_guest()
    } else {
        (
            "/nonexistent/vmlinuz".into(),
            "/nonexistent/initrd.img".into(),
        )
    };
    let disk = s.dir.join("data.qcow2");
    if s.vms.is_some() {
        assert!(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("4M")
            .status()
            .unwrap()
            .success());
        common::qemu_io_write(&disk, "qcow2", 0xab);
    }
    VmConfig {
        id: id.into(),
        cpus: 1,
        memory: 128 << 20,
        machine: Machine::Pc,
        cpu_model: None,
        boot: Some(Boot {
            kernel: kernel.display().to_string(),
            initrd: Some(initrd.display().to_string()),
            cmdline: Some(deorch::qemu::probe::TINY_CMDLINE.into()),
        }),
        disks: vec![("data".into(), "vol-data".into())],
        disk_images: vec![DiskImage {
            name: "data".into(),
            path: disk,
            format: "qcow2".into(),
            bus: DiskBus::Virtio,
            read_only: false,
        }],
        nics: vec![NicConfig {
            name: "eth0".into(),
            mac: "52:54:00:de:0c:01".into(),
            tap: "dtap-contract".into(),
            bridge: "dbr-contract".into(),
            // The tiny guest has only the virtio drivers (the other models
            // are checked in tests/qemu_qmp.rs).
            model: NicModel::Virtio,
            host_tap: false,
        }],
        // SPICE beside VNC where the driver serves consoles (Debian's QEMU
        // has it as a module: scripts/lib.sh installs it).
        spice: s.consoles,
    }
}

async fn call<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took more than {CALL_TIMEOUT:?}"))
}

async fn state(s: &Subject, id: &str) -> VmState {
    match call("state", s.hv.state(id)).await {
        Ok(st) => st,
        Err(e) => {
            let log = s
                .vms
                .as_ref()
                .and_then(|v| std::fs::read_to_string(v.join(id).join("qemu.log")).ok())
                .unwrap_or_default();
            panic!("state: {e}\nqemu.log:\n{log}")
        }
    }
}

fn serial_text(s: &Subject, id: &str) -> String {
    s.vms
        .as_ref()
        .and_then(|vms| std::fs::read_to_string(vms.join(id).join("serial.log")).ok())
        .unwrap_or_default()
}

/// Start `cfg` and wait for the guest's ready marker, under a watchdog:
/// a boot that prints nothing in time is forced off and started once more.
/// Returns the serial text of the boot that worked.
async fn boot(s: &Subject, cfg: &VmConfig) -> String {
    for attempt in 1..=BOOT_ATTEMPTS {
        let t = Instant::now();
        call("start", s.hv.start(cfg)).await.expect("start");
        eprintln!(
            "[{}] start returned in {} ms",
            s.hv.name(),
            t.elapsed().as_millis()
        );
        if s.vms.is_none() {
            return String::new();
        }
        let deadline = Instant::now() + BOOT_WATCHDOG;
        loop {
            let text = serial_text(s, &cfg.id);
            if text.contains(READY_MARKER) {
                eprintln!(
                    "[{}] guest ready {} ms after start (attempt {attempt})",
                    s.hv.name(),
                    t.elapsed().as_millis()
                );
                return text;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "[{}] attempt {attempt}: no ready marker in {BOOT_WATCHDOG:?}; serial:\n{text}",
                    s.hv.name()
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        call("stop", s.hv.stop(&cfg.id, Duration::ZERO))
            .await
            .expect("forced stop after a silent boot");
    }
    panic!(
        "[{}] the tiny guest did not boot in {BOOT_ATTEMPTS} attempts",
        s.hv.name()
    );
}

fn assert_running(st: &VmState, cfg: &VmConfig, driver: &str) {
    match st {
        VmState::Running { config, .. } => {
            assert_eq!(
                **config, *cfg,
                "[{driver}] runs the configuration it was given"
            )
        }
        other => panic!("[{driver}] expected Running, got {other:?}"),
    }
}

/// The console is where the algorithm says (an otherwise empty node: the
/// home port) and VNC answers there with an RFB greeting.
fn check_console(s: &Subject, id: &str) -> Option<u16> {
    use std::io::Read;
    let c = s.hv.console(id);
    if !s.consoles {
        assert_eq!(c, None, "[{}] no console expected", s.hv.name());
        return None;
    }
    let c = c.unwrap_or_else(|| panic!("[{}] no console for a running VM", s.hv.name()));
    let expected = console::assign(id, PORTS, &Default::default()).unwrap();
    assert_eq!(c.vnc_port, Some(expected), "[{}] {c:?}", s.hv.name());
    assert_eq!(c.websocket_port, Some(PORTS.websocket(expected)), "{c:?}");
    assert_eq!(c.host, "127.0.0.1");
    let mut rfb = std::net::TcpStream::connect(("127.0.0.1", expected)).expect("VNC answers");
    rfb.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = [0u8; 12];
    rfb.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..4], b"RFB ", "an RFB greeting on the VNC port");
    match c.spice_port {
        Some(sp) => {
            assert_eq!(Some(sp), PORTS.spice(expected), "[{}] {c:?}", s.hv.name());
            spice_link(sp);
        }
        None => {
            assert!(
                std::env::var("CI").is_err(),
                "[{}] no SPICE under CI=true (is qemu-system-modules-spice installed?): {c:?}",
                s.hv.name()
            );
            eprintln!(
                "[{}] SKIPPED the SPICE check: this QEMU has no SPICE",
                s.hv.name()
            );
        }
    }
    Some(expected)
}

/// The console starts locked: a VNC client without the password is
/// refused; with a console ticket's password it gets through to the
/// framebuffer; a wrong one is refused; after the ticket's lifetime the
/// same password is refused.
async fn check_console_ticket(s: &Subject, id: &str, port: u16) {
    use common::vnc::{vnc_login, VncLogin};
    let name = s.hv.name();
    let login = |pw: Option<String>| {
        tokio::task::spawn_blocking(move || {
            vnc_login("127.0.0.1", port, pw.as_deref()).expect("VNC answers")
        })
    };
    let locked = login(None).await.unwrap();
    assert!(
        matches!(locked, VncLogin::Refused(_)),
        "[{name}] a console starts locked: {locked:?}"
    );
    let password = deorch::driver::console_password();
    call(
        "console ticket",
        s.hv.console_ticket(id, &password, Duration::from_secs(3)),
    )
    .await
    .unwrap_or_else(|e| panic!("[{name}] console ticket: {e}"));
    let issued = Instant::now();
    match login(Some(password.clone())).await.unwrap() {
        VncLogin::Connected { width, height, .. } => {
            assert!(width > 0 && height > 0, "[{name}] {width}x{height}")
        }
        other => panic!("[{name}] the ticket's password was refused: {other:?}"),
    }
    let wrong = login(Some("Wrong123".into())).await.unwrap();
    assert!(
        matches!(wrong, VncLogin::Refused(_)),
        "[{name}] a wrong password: {wrong:?}"
    );
    // The browsers' console: the websocket over TLS (the node's CA), the
    // same ticket.
    let c = s.hv.console(id).expect("a console");
    assert!(c.websocket_tls, "[{name}] {c:?}");
    let (ws, ca) = (c.websocket_port.unwrap(), s.dir.join("tls/ca.pem"));
    let over_wss = |pw: String| {
        let ca = ca.clone();
        tokio::task::spawn_blocking(move || {
            let wss = common::wss::connect("127.0.0.1", ws, &ca).expect("wss handshake");
            common::vnc::rfb_login(wss, Some(&pw)).expect("RFB over wss")
        })
    };
    match over_wss(password.clone()).await.unwrap() {
        VncLogin::Connected { .. } => {}
        other => panic!("[{name}] the ticket's password over wss: {other:?}"),
    }
    let wrong = over_wss("Wrong123".into()).await.unwrap();
    assert!(
        matches!(wrong, VncLogin::Refused(_)),
        "[{name}] a wrong password over wss: {wrong:?}"
    );
    // libvirt counts whole seconds: 3 s after the ticket, at most 4.
    tokio::time::sleep(Duration::from_millis(4500).saturating_sub(issued.elapsed())).await;
    let expired = login(Some(password)).await.unwrap();
    assert!(
        matches!(expired, VncLogin::Refused(_)),
        "[{name}] an expired ticket: {expired:?}"
    );
}

/// A SPICE server answers a client's link message (main channel) with its
/// own link header: magic "REDQ", protocol 2.x, and an error code of 0
/// (`SPICE_LINK_ERR_OK`) in the reply.
fn spice_link(port: u16) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("SPICE answers");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // SpiceLinkMess: connection id, channel type 1 (main), channel id,
    // no common or channel capabilities, capabilities at offset 18.
    let mut mess = Vec::new();
    mess.extend(0u32.to_le_bytes());
    mess.extend([1u8, 0]);
    mess.extend(0u32.to_le_bytes());
    mess.extend(0u32.to_le_bytes());
    mess.extend(18u32.to_le_bytes());
    let mut link = b"REDQ".to_vec();
    link.extend(2u32.to_le_bytes());
    link.extend(2u32.to_le_bytes());
    link.extend((mess.len() as u32).to_le_bytes());
    link.extend(mess);
    c.write_all(&link).unwrap();
    let mut head = [0u8; 16];
    c.read_exact(&mut head).expect("a SPICE link reply");
    assert_eq!(&head[..4], b"REDQ", "SPICE magic: {head:?}");
    assert_eq!(
        u32::from_le_bytes(head[4..8].try_into().unwrap()),
        2,
        "protocol 2"
    );
    let size = u32::from_le_bytes(head[12..16].try_into().unwrap()) as usize;
    assert!((4..4096).contains(&size), "reply size {size}");
    let mut reply = vec![0u8; size];
    c.read_exact(&mut reply).unwrap();
    assert_eq!(
        u32::from_le_bytes(reply[..4].try_into().unwrap()),
        0,
        "SPICE_LINK_ERR_OK"
    );
}

/// The guest's tick counter: it advances every 100 ms while the CPUs run.
async fn ticks_advance(s: &Subject, id: &str, within: Duration) -> bool {
    let before = serial_text(s, id).len();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if serial_text(s, id).len() > before {
            return true;
        }
    }
    false
}

async fn contract(s: Subject, id: String) {
    let name = s.hv.name();
    let real = s.vms.is_some();
    let total = Instant::now();
    let cfg = tiny_config(&s, &id);

    // Unknown VMs: absent, and nothing to pause.
    assert_eq!(state(&s, &id).await, VmState::Absent, "[{name}]");
    assert!(
        call("pause", s.hv.pause(&id)).await.is_err(),
        "[{name}] pausing an absent VM fails"
    );

    // Boot: the guest's lease, disk and ready marker; state Running.
    let serial = boot(&s, &cfg).await;
    if real {
        assert!(
            serial.contains("deorch-guest: lease ip="),
            "[{name}] DHCP lease: {serial}"
        );
        assert!(
            serial.contains("deorch-guest: disk vda sectors=8192 head=abababababababab"),
            "[{name}] the guest reads its disk: {serial}"
        );
    }
    let st = state(&s, &id).await;
    assert_running(&st, &cfg, name);
    let port = check_console(&s, &id);
    if let Some(port) = port {
        check_console_ticket(&s, &id, port).await;
    }

    // Starting a running VM is refused and changes nothing.
    let again = call("start", s.hv.start(&cfg)).await;
    assert!(
        matches!(again, Err(DriverError::Permanent { .. })),
        "[{name}] start while running: {again:?}"
    );
    assert_running(&state(&s, &id).await, &cfg, name);

    // A live snapshot: the running VM switches its disk to an overlay
    // (what replicas and clones of running VMs are made of); QEMU has the
    // overlay open afterwards and the guest goes on.
    if real {
        let base = cfg.disk_images[0].path.clone();
        let overlay = s.dir.join("data-overlay.qcow2");
        assert!(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&overlay)
            .status()
            .unwrap()
            .success());
        call("live_snapshot", s.hv.live_snapshot(&id, "data", &overlay))
            .await
            .unwrap_or_else(|e| panic!("[{name}] live snapshot: {e}"));
        let VmState::Running { pid, .. } = state(&s, &id).await else {
            panic!("[{name}] not running after a live snapshot");
        };
        // Compared as files (device, inode), not as path text: a QEMU in
        // another mount namespace or root (libvirt's) shows other paths.
        use std::os::unix::fs::MetadataExt;
        let file_id = |m: std::fs::Metadata| (m.dev(), m.ino());
        let want = file_id(std::fs::metadata(&overlay).unwrap());
        let fds: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .map(|fd| fd.path())
            .collect();
        let has = fds
            .iter()
            .any(|fd| std::fs::metadata(fd).is_ok_and(|m| file_id(m) == want));
        let open: Vec<PathBuf> = fds
            .iter()
            .filter_map(|fd| std::fs::read_link(fd).ok())
            .collect();
        assert!(
            has,
            "[{name}] QEMU does not have the overlay {} open: {open:?}",
            overlay.display()
        );
        assert!(
            ticks_advance(&s, &id, Duration::from_secs(10)).await,
            "[{name}] the guest stopped ticking after the live snapshot"
        );
        let missing = call(
            "live_snapshot",
            s.hv.live_snapshot(&id, "nope", &s.dir.join("nope.qcow2")),
        )
        .await;
        assert!(
            missing.is_err(),
            "[{name}] a snapshot of no disk: {missing:?}"
        );
    }

    // Pause: CPUs stop (the counter stands still); resume: it goes on.
    call("pause", s.hv.pause(&id)).await.expect("pause");
    assert!(
        matches!(state(&s, &id).await, VmState::Paused { .. }),
        "[{name}] paused"
    );
    if real {
        tokio::time::sleep(Duration::from_millis(300)).await; // in-flight output
        assert!(
            !ticks_advance(&s, &id, Duration::from_secs(1)).await,
            "[{name}] the guest still ticks while paused"
        );
    }
    call("resume", s.hv.resume(&id)).await.expect("resume");
    assert_running(&state(&s, &id).await, &cfg, name);
    if real {
        assert!(
            ticks_advance(&s, &id, Duration::from_secs(10)).await,
            "[{name}] the guest does not tick after resume"
        );
    }

    // Graceful stop: the ACPI power button, well within the timeout.
    let t = Instant::now();
    call("stop", s.hv.stop(&id, Duration::from_secs(30)))
        .await
        .expect("stop");
    let took = t.elapsed();
    eprintln!("[{name}] graceful stop took {} ms", took.as_millis());
    assert_eq!(
        state(&s, &id).await,
        VmState::Stopped(StopReason::Requested),
        "[{name}]"
    );
    if real {
        assert!(
            serial_text(&s, &id).contains("deorch-guest: power button"),
            "[{name}] the guest saw the power button: {}",
            serial_text(&s, &id)
        );
        assert!(took < Duration::from_secs(30), "[{name}] stop was forced");
    }
    // Stopping a stopped VM is a no-op.
    call("stop", s.hv.stop(&id, Duration::from_secs(1)))
        .await
        .expect("second stop");

    // Restart: boots again, on the same console port.
    boot(&s, &cfg).await;
    assert_running(&state(&s, &id).await, &cfg, name);
    assert_eq!(check_console(&s, &id), port, "[{name}] same port");

    if let Some(reopen) = &s.reopen {
        // The daemon restarted: a new instance of the driver finds the
        // running VM (same process, configuration and console port) and
        // controls it.
        let before = state(&s, &id).await;
        let VmState::Running { pid, .. } = before else {
            panic!("[{name}] expected Running, got {before:?}")
        };
        let hv2 = reopen();
        let after = call("state", hv2.state(&id)).await.expect("state");
        assert_running(&after, &cfg, name);
        assert!(
            matches!(after, VmState::Running { pid: p, .. } if p == pid),
            "[{name}] re-adopted the same QEMU: {after:?}, before pid {pid}"
        );
        assert_eq!(
            hv2.console(&id).and_then(|c| c.vnc_port),
            port,
            "[{name}] the new instance reports the same console port"
        );
        call("pause", hv2.pause(&id))
            .await
            .expect("pause through the new instance");
        call("resume", hv2.resume(&id))
            .await
            .expect("resume through the new instance");
        assert!(
            ticks_advance(&s, &id, Duration::from_secs(10)).await,
            "[{name}] the guest runs on after pause/resume by the new instance"
        );

        // QEMU killed with SIGKILL: reported as a crash (what restartPolicy
        // acts on), and the VM starts again on its console port.
        assert!(runs("kill", &["-9", &pid.to_string()]), "[{name}] kill -9");
        let deadline = Instant::now() + Duration::from_secs(20);
        let crashed = loop {
            // A QEMU dying under the question may reset its monitor's
            // connection: a transient answer, asked again.
            let st = match call("state", s.hv.state(&id)).await {
                Ok(st) => st,
                Err(DriverError::Transient { message, .. }) if Instant::now() < deadline => {
                    eprintln!("[{name}] state while QEMU dies: {message}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => panic!("[{name}] state after kill -9: {e}"),
            };
            if !matches!(st, VmState::Running { .. }) || Instant::now() > deadline {
                break st;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            crashed,
            VmState::Stopped(StopReason::Crashed),
            "[{name}] after kill -9"
        );
        boot(&s, &cfg).await;
        assert_running(&state(&s, &id).await, &cfg, name);
        assert_eq!(
            check_console(&s, &id),
            port,
            "[{name}] same port after the crash"
        );
    }

    // Forced stop, then removal: the hypervisor forgets the VM.
    call("stop", s.hv.stop(&id, Duration::ZERO))
        .await
        .expect("forced stop");
    assert_eq!(
        state(&s, &id).await,
        VmState::Stopped(StopReason::Requested),
        "[{name}]"
    );
    call("remove", s.hv.remove(&id)).await.expect("remove");
    assert_eq!(state(&s, &id).await, VmState::Absent, "[{name}]");
    assert_eq!(s.hv.console(&id), None, "[{name}] console forgotten");
    call("remove", s.hv.remove(&id))
        .await
        .expect("removing twice is fine");
    if real {
        let runtime = s.dir.join("vms").join(&id);
        assert!(!Path::new(&runtime).exists(), "[{name}] runtime dir left");
    }
    eprintln!(
        "[{name}] contract passed in {} ms",
        total.elapsed().as_millis()
    );
}

macro_rules! contract_tests {
    ($($test:ident => $subject:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let Some(subject) = $subject() else { return };
            contract(subject, vm_id(stringify!($subject))).await;
        }
    )*};
}

contract_tests! {
    fake_keeps_the_hypervisor_contract => fake,
    qemu_keeps_the_hypervisor_contract => qemu,
    libvirt_keeps_the_hypervisor_contract => libvirt,
}

/// A `cpuModel` this QEMU build does not know is refused before QEMU is
/// started, naming the model and the build's list (probed with
/// `-cpu help`); a model it knows is not refused on that account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_cpu_model_is_refused_with_the_builds_list() {
    let Some(s) = qemu() else {
        assert!(!ci(), "qemu is missing and CI=true");
        return;
    };
    let id = vm_id("qemu-cpu");
    let mut cfg = tiny_config(&s, &id);
    cfg.cpu_model = Some("Bogus-9000".into());
    let err =
        s.hv.start(&cfg)
            .await
            .expect_err("an unknown CPU model starts");
    let text = err.to_string();
    assert!(
        text.contains("\"Bogus-9000\" is not a CPU model of this QEMU build"),
        "{text}"
    );
    assert_eq!(state(&s, &id).await, VmState::Absent, "nothing was started");
    cfg.cpu_model = Some("broadwell".into());
    let err =
        s.hv.start(&cfg)
            .await
            .expect_err("names are case-sensitive");
    assert!(err.to_string().contains("close: Broadwell"), "{err}");
    (s.cleanup)();
}
