//! The QMP client against a real QEMU process.

mod common;

use common::{qemu_available, tiny_guest};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use deorch::qemu::qmp::{Qmp, QmpError};

/// Kills a QEMU by pid when the test ends, however it ends.
struct KillOnDrop(u32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0 > 0 {
            let _ = Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .status();
        }
    }
}

#[tokio::test]
async fn qmp_session_commands_errors_and_close() {
    if !qemu_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("deorch-qmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir); // a stale socket from an earlier run
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("qmp.sock");
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu");
    let _guard = KillOnDrop(child.id());
    // The socket file appears at bind(), a moment before QEMU accepts.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut qmp = loop {
        match Qmp::connect(&sock, Duration::from_secs(5)).await {
            Ok(q) => break q,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("connect: {e}"),
        }
    };
    assert!(qmp.version.0 >= 6, "QEMU version {:?}", qmp.version);
    let status = qmp.execute("query-status", None).await.unwrap();
    assert_eq!(status["status"], "prelaunch", "{status}");
    match qmp.execute("no-such-command", None).await {
        Err(QmpError::Command { class, .. }) => assert_eq!(class, "CommandNotFound"),
        other => panic!("expected a command error, got {other:?}"),
    }
    // Still usable after an error.
    qmp.execute("query-status", None).await.unwrap();
    qmp.execute("quit", None).await.unwrap();
    let after = qmp.execute("query-status", None).await;
    assert!(
        matches!(
            after,
            Err(QmpError::Closed { .. }) | Err(QmpError::Io { .. })
        ),
        "{after:?}"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "qemu exited with {status}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn accel_probe_chooses_by_a_real_boot() {
    use deorch::qemu::probe::{boot_once, probe, Accel, ProbeGuest};
    if !qemu_available() {
        return;
    }
    let (kernel, initrd) = tiny_guest();
    let guest = ProbeGuest {
        qemu: "qemu-system-x86_64".into(),
        kernel,
        initrd,
        timeout: Duration::from_secs(8),
    };
    // TCG always works: the probe guest must reach its marker. Boots vary
    // with load, and a rare one prints nothing: a generous watchdog, one retry.
    let tcg = ProbeGuest {
        timeout: Duration::from_secs(30),
        ..guest.clone()
    };
    let t = match boot_once(&tcg, Accel::Tcg).await {
        Ok(t) => t,
        Err(first) => {
            eprintln!("first TCG boot failed ({first}); retrying once");
            boot_once(&tcg, Accel::Tcg)
                .await
                .expect("TCG boot of the tiny guest")
        }
    };
    eprintln!("TCG probe boot: {} ms", t.as_millis());
    let r = probe(&guest, "test".into()).await;
    eprintln!("probe: {r:?}");
    match r.accel {
        // KVM is only ever chosen with evidence of a boot.
        Accel::Kvm => assert!(r.reason.starts_with("KVM guest ready in"), "{r:?}"),
        Accel::Tcg => assert!(r.reason.contains("/dev/kvm"), "{r:?}"),
    }
    // On this kind of machine /dev/kvm exists but cannot boot a guest.
    if std::path::Path::new("/dev/kvm").exists() && boot_once(&guest, Accel::Kvm).await.is_err() {
        assert_eq!(r.accel, Accel::Tcg);
    }
}

#[tokio::test]
async fn the_built_command_line_boots_the_tiny_guest_daemonized() {
    use deorch::model::vm::{Machine, NicModel};
    use deorch::qemu::cmdline::{self, NicBackend, QemuNic, QemuVm, Vnc};
    use deorch::qemu::probe::Accel;
    if !qemu_available() {
        return;
    }
    let (kernel, initrd) = tiny_guest();
    let rd = std::env::temp_dir().join(format!("deorch-cmdline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&rd);
    std::fs::create_dir_all(&rd).unwrap();
    let vm = QemuVm {
        name: "test-tiny".into(),
        accel: Accel::Tcg,
        machine: Machine::Microvm,
        cpu_model: "qemu64".into(),
        cpus: 1,
        memory_mib: 128,
        kernel: Some(kernel),
        initrd: Some(initrd),
        cmdline: Some(deorch::qemu::tsc::guest_cmdline(
            Some(deorch::qemu::probe::TINY_CMDLINE),
            Accel::Tcg,
            deorch::qemu::tsc::host_khz(),
        )),
        disks: vec![],
        nics: vec![QemuNic {
            id: "eth0".into(),
            mac: "52:54:00:00:00:01".into(),
            model: NicModel::Virtio,
            backend: NicBackend::UserRestricted,
        }],
        vnc: Some(Vnc {
            listen: "127.0.0.1".parse().unwrap(),
            port: 5990 + (std::process::id() % 9) as u16,
            websocket: None,
            websocket_tls: None,
        }),
        spice: None,
        runtime_dir: rd.clone(),
    };
    // Watchdog per boot; a rare boot prints nothing, so one retry.
    let mut pid = 0;
    let mut guards = Vec::new();
    for attempt in 1..=2 {
        let _ = std::fs::remove_file(cmdline::serial_log(&rd));
        let out = Command::new("qemu-system-x86_64")
            .args(cmdline::args(&vm))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qemu failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pid = std::fs::read_to_string(cmdline::pidfile(&rd))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        guards.push(KillOnDrop(pid as u32));
        let deadline = Instant::now() + Duration::from_secs(30);
        let serial = cmdline::serial_log(&rd);
        let ready = loop {
            let text = std::fs::read_to_string(&serial).unwrap_or_default();
            if text.contains("DEORCH-GUEST-READY") {
                assert!(
                    text.contains("deorch-guest: lease ip="),
                    "no DHCP lease in:\n{text}"
                );
                break true;
            }
            if Instant::now() > deadline {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                eprintln!("attempt {attempt}: guest not ready in 30 s; serial:\n{text}");
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if ready {
            break;
        }
        assert!(attempt < 2, "the tiny guest did not boot in two attempts");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut qmp = Qmp::connect(&cmdline::qmp_socket(&rd), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        qmp.execute("query-status", None).await.unwrap()["status"],
        "running"
    );
    let vnc = qmp.execute("query-vnc", None).await.unwrap();
    assert_eq!(vnc["enabled"], true, "{vnc}");
    qmp.execute("quit", None).await.unwrap();
    let gone = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/exe")).exists(),
        "QEMU {pid} still running"
    );
    std::fs::remove_dir_all(&rd).ok();
}

/// `spec.nics[].model` reaches the guest's hardware: the qemu driver,
/// given a VmConfig whose NICs are an e1000, an rtl8139 and a virtio-net,
/// starts a QEMU whose PCI bus (QMP `query-pci`) has exactly those cards
/// (vendor:device 8086:100e, 10ec:8139, 1af4:1000) under the NICs' ids.
/// Before the model was carried through, every NIC came up virtio.
#[tokio::test]
async fn the_qemu_driver_gives_each_nic_its_model() {
    use deorch::driver::qemu::QemuHypervisor;
    use deorch::driver::{Hypervisor, NicConfig, VmConfig, VmState};
    use deorch::model::vm::{Machine, NicModel};
    use deorch::qemu::cmdline;
    use deorch::qemu::console::PortRange;
    use deorch::qemu::probe::Accel;
    if !qemu_available() {
        return;
    }
    let vms = std::env::temp_dir().join(format!("deorch-nicmodel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&vms);
    std::fs::create_dir_all(&vms).unwrap();
    let hv = QemuHypervisor::new("qemu-system-x86_64", &vms, Accel::Tcg).with_console(
        "127.0.0.1".parse().unwrap(),
        // Away from the contract's and the node's ranges.
        PortRange {
            vnc_base: 23400,
            ws_base: 23900,
            size: 400,
        },
    );
    let nic = |name: &str, last: u8, model| NicConfig {
        name: name.into(),
        mac: format!("52:54:00:de:0d:{last:02x}"),
        tap: String::new(),
        bridge: String::new(),
        model,
        host_tap: false,
    };
    // No kernel and no disk: the firmware finds nothing to boot and waits,
    // which is enough for the devices to be there.
    let cfg = VmConfig {
        id: "default/nic-models".into(),
        cpus: 1,
        memory: 64 << 20,
        machine: Machine::Q35,
        cpu_model: None,
        boot: None,
        disks: vec![],
        disk_images: vec![],
        nics: vec![
            nic("eth0", 1, NicModel::E1000),
            nic("eth1", 2, NicModel::Rtl8139),
            nic("eth2", 3, NicModel::Virtio),
        ],
        spice: false,
    };
    hv.start(&cfg).await.expect("start");
    let id = cfg.id.clone();
    let pid = match hv.state(&id).await.expect("state") {
        VmState::Running { pid, config, .. } => {
            assert_eq!(*config, cfg, "the saved config carries the models");
            pid
        }
        other => panic!("expected Running, got {other:?}"),
    };
    let _guard = KillOnDrop(pid);
    let mut qmp = Qmp::connect(
        &cmdline::qmp_socket(&hv.runtime_dir(&id)),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let pci = qmp.execute("query-pci", None).await.unwrap();
    let mut found = std::collections::BTreeMap::new();
    for bus in pci.as_array().unwrap() {
        for dev in bus["devices"].as_array().unwrap() {
            if let Some(qdev) = dev["qdev_id"].as_str().filter(|q| q.starts_with("nic-")) {
                found.insert(
                    qdev.to_string(),
                    (
                        dev["id"]["vendor"].as_u64().unwrap(),
                        dev["id"]["device"].as_u64().unwrap(),
                    ),
                );
            }
        }
    }
    let want: std::collections::BTreeMap<String, (u64, u64)> = [
        ("nic-eth0".to_string(), (0x8086, 0x100e)),
        ("nic-eth1".to_string(), (0x10ec, 0x8139)),
        ("nic-eth2".to_string(), (0x1af4, 0x1000)),
    ]
    .into();
    assert_eq!(found, want, "query-pci: {pci}");
    // Another model is another configuration: the reconciler flags it
    // for a restart like any other NIC change.
    let mut changed = cfg.clone();
    changed.nics[0].model = NicModel::Rtl8139;
    assert_eq!(deorch::reconcile::vm::diff(&cfg, &changed), ["nics"]);
    assert!(deorch::reconcile::vm::diff(&cfg, &cfg).is_empty());
    drop(qmp);
    hv.stop(&id, Duration::ZERO).await.expect("forced stop");
    hv.remove(&id).await.expect("remove");
    std::fs::remove_dir_all(&vms).ok();
}
