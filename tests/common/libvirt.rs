//! libvirtd for the tests that drive it: started by the harness when it
//! does not answer (no systemd here).
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The libvirt the tests use.
pub const LIBVIRT_URI: &str = "qemu:///system";

pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A component is missing: fail under CI, skip loudly elsewhere.
pub fn missing(what: &str) -> bool {
    assert!(
        !ci(),
        "{what} is missing and CI=true: install it (scripts/test.sh does)"
    );
    eprintln!("SKIPPED: {what} not installed");
    true
}

pub fn runs(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Make sure libvirtd answers at [`LIBVIRT_URI`], starting `virtlogd` and
/// `libvirtd` (daemonized, so they are not our children) when it does not.
/// `false` when libvirt is not installed (outside CI).
pub fn libvirtd_up() -> bool {
    let answers = || runs("virsh", &["-c", LIBVIRT_URI, "version"]);
    if !runs("virsh", &["--version"]) || !runs("libvirtd", &["--version"]) {
        return !missing("libvirt (libvirt-daemon-system, libvirt-clients)");
    }
    kvm_device_like_udev();
    if answers() {
        return true;
    }
    // One test process at a time starts the daemons.
    let lock = std::fs::File::create("/var/tmp/deorch-libvirtd.lock").expect("lock file");
    lock.lock().expect("lock");
    if answers() {
        return true;
    }
    eprintln!("starting virtlogd and libvirtd (left running for later tests)");
    let t = Instant::now();
    // Each forks and exits at once: status() reaps the parent.
    assert!(runs("virtlogd", &["-d"]) || runs("pgrep", &["-x", "virtlogd"]));
    assert!(runs("libvirtd", &["-d"]), "libvirtd -d failed");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !answers() {
        assert!(
            Instant::now() < deadline,
            "libvirtd did not answer at {LIBVIRT_URI} in 120 s"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("libvirtd answers after {} ms", t.elapsed().as_millis());
    true
}

/// Without udev (as here), `/dev/kvm` stays root-only (0600). libvirt
/// checks it as its QEMU user, finds KVM "gone" since its last probe, and
/// throws its QEMU capability cache away on every lookup: each define then
/// re-probes QEMU for ~50 s. udev on a normal Debian host makes it
/// root:kvm 0660 (libvirt-qemu is in group kvm); do the same.
fn kvm_device_like_udev() {
    use std::os::unix::fs::PermissionsExt;
    let kvm = Path::new("/dev/kvm");
    let Ok(meta) = std::fs::metadata(kvm) else {
        return;
    };
    if meta.permissions().mode() & 0o060 == 0 && runs("getent", &["group", "kvm"]) {
        eprintln!("/dev/kvm is root-only: making it root:kvm 0660 as udev would");
        assert!(runs("chgrp", &["kvm", "/dev/kvm"]), "chgrp kvm /dev/kvm");
        std::fs::set_permissions(kvm, std::fs::Permissions::from_mode(0o660))
            .expect("chmod 0660 /dev/kvm");
    }
}
