//! A real node with the QEMU driver boots the tiny guest from manifests,
//! survives its own kill -9 without stopping the VM (re-adoption), restarts
//! a killed QEMU per restartPolicy, stops the guest by ACPI, and deletes it.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Node;

fn qemu_available() -> bool {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "qemu-system-x86_64 is missing and CI=true"
        );
        eprintln!("SKIPPED: qemu-system-x86_64 not installed");
    }
    ok
}

fn guest() -> PathBuf {
    let out = PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/deorch/guest");
    let ok = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/guest/build.sh"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(ok.success(), "guest/build.sh failed");
    out
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

fn vm_yaml(power: &str) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: tiny\nspec:\n  spacesuit: tiny\n  powerState: {power}\n  stopTimeout: 20s\n  nics:\n    - name: eth0\n      network: default\n"
    )
}

/// Wait (watchdog) until the serial log has had `n` ready markers.
fn wait_ready(node: &Node, n: usize) -> String {
    let serial = node.state.join("vms/default/tiny/serial.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        if text.matches("DEORCH-GUEST-READY").count() >= n {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "guest not ready within 60 s; serial:\n{text}\nnode log:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tiny_vm_lifecycle_with_the_qemu_driver() {
    if !qemu_available() {
        return;
    }
    let g = guest();
    let mut node = Node::new("qemu");
    node.extra_args = vec![
        "--hypervisor".into(),
        "qemu".into(),
        "--probe-guest".into(),
        g.display().to_string(),
    ];
    std::fs::write(node.manifests.join("network.yaml"), "apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata: {name: default}\nspec:\n  ipv4: {subnet: 10.42.0.0/24, gateway: 10.42.0.1}\n").unwrap();
    std::fs::write(
        node.manifests.join("tiny.yaml"),
        format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: tiny}}\nspec:\n  boot: {{kernel: {k}, initrd: {i}, cmdline: console=ttyS0 quiet}}\n  machine: microvm\n  cpu: 1\n  memory: 128Mi\n",
            k = g.join("vmlinuz").display(),
            i = g.join("initrd.img").display()
        ),
    )
    .unwrap();
    let vm = node.manifests.join("vm.yaml");
    std::fs::write(&vm, vm_yaml("Running")).unwrap();
    node.start();

    // Boots: QEMU running, the guest's own DHCP lease and ready marker seen.
    node.wait_for("phase Running", |n| {
        n.record("vm", "tiny")
            .is_some_and(|r| r.status.is_some_and(|s| s["phase"] == "Running"))
    });
    let serial = wait_ready(&node, 1);
    assert!(serial.contains("deorch-guest: lease ip="), "{serial}");
    let st = node.record("vm", "tiny").unwrap().status.unwrap();
    let pid = st["pid"].as_u64().expect("pid in status");
    assert!(alive(pid));
    let accel = st["accel"].as_str().unwrap().to_string();
    assert!(accel == "tcg" || accel == "kvm", "{st}");
    let sat = node
        .record("satellite", "test-node")
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        sat["accel"],
        accel.as_str(),
        "the satellite shows the probed accelerator"
    );

    // The daemon dies; the VM does not, and is re-adopted.
    node.kill();
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(pid), "killing the node must not stop its VMs");
    node.start();
    node.wait_for("re-adoption", |n| {
        n.record("vm", "tiny").is_some_and(|r| {
            r.status
                .is_some_and(|s| s["phase"] == "Running" && s["pid"] == pid)
        })
    });
    assert!(
        node.record("vm", "tiny").unwrap().status.unwrap()["restarts"].is_null(),
        "re-adoption is not a restart"
    );

    // QEMU killed: restarted by restartPolicy Always.
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    node.wait_for("restart after a crash", |n| {
        n.record("vm", "tiny").is_some_and(|r| {
            r.status
                .is_some_and(|s| s["restarts"] == 1 && s["phase"] == "Running" && s["pid"] != pid)
        })
    });
    wait_ready(&node, 1);
    let pid2 = node.record("vm", "tiny").unwrap().status.unwrap()["pid"]
        .as_u64()
        .unwrap();

    // Stopped by spec: ACPI power button, the guest powers off.
    std::fs::write(&vm, vm_yaml("Stopped")).unwrap();
    node.wait_for("stopped", |n| {
        n.record("vm", "tiny")
            .is_some_and(|r| r.status.is_some_and(|s| s["phase"] == "Stopped"))
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid2) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!alive(pid2), "QEMU still running after a stop");
    let serial =
        std::fs::read_to_string(node.state.join("vms/default/tiny/serial.log")).unwrap_or_default();
    eprintln!(
        "graceful power-off seen: {}",
        serial.contains("power button")
    );

    // Deleted: its runtime directory goes away.
    std::fs::remove_file(&vm).unwrap();
    node.wait_for("runtime dir removed", |n| {
        !n.state.join("vms/default/tiny").exists()
    });
}
