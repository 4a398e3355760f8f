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

/// A libvirtd of a node's own, as on a machine of its own: in the node's
/// network namespace, and in a mount namespace where `/run/libvirt`,
/// `/var/lib/libvirt`, `/var/cache/libvirt`, `/var/log/libvirt` and
/// `/etc/libvirt` are directories of its own under `dir` (its domains,
/// state and configuration apart from every other libvirtd). Its socket
/// is `dir/sock/libvirt-sock` ([`OwnLibvirtd::uri`]). QEMU's output goes
/// to files (no virtlogd in its namespace). Killed, with every QEMU it
/// started, on drop.
pub struct OwnLibvirtd {
    pub dir: std::path::PathBuf,
    pub uri: String,
    child: std::process::Child,
}

impl OwnLibvirtd {
    /// Start one in each network namespace, each with its files under
    /// `dir(namespace)`, and wait until all answer (libvirtd takes ~8 s
    /// here before it does).
    pub fn start_all(
        netns: &[String],
        dir: impl Fn(&str) -> std::path::PathBuf,
    ) -> Vec<OwnLibvirtd> {
        let mut all: Vec<OwnLibvirtd> = netns.iter().map(|n| Self::spawn(n, &dir(n))).collect();
        for l in &mut all {
            l.wait_ready();
        }
        all
    }

    /// Start one in network namespace `netns`, its files under `dir`.
    /// QEMU's capabilities, if the host's libvirt has probed them, are
    /// copied (libvirt checks they still hold).
    fn spawn(netns: &str, dir: &Path) -> OwnLibvirtd {
        let _ = std::fs::remove_dir_all(dir);
        for d in ["run", "lib", "cache", "log", "etc", "sock"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let caps = Path::new("/var/cache/libvirt/qemu");
        if caps.is_dir() {
            runs(
                "cp",
                &[
                    "-a",
                    &caps.display().to_string(),
                    &dir.join("cache").display().to_string(),
                ],
            );
        }
        let sock = dir.join("sock");
        std::fs::write(
            dir.join("etc/libvirtd.conf"),
            format!("unix_sock_dir = \"{}\"\n", sock.display()),
        )
        .unwrap();
        std::fs::write(dir.join("etc/qemu.conf"), "stdio_handler = \"file\"\n").unwrap();
        let d = dir.display();
        let script = format!(
            "set -e\n\
             for m in run/libvirt:run lib/libvirt:lib cache/libvirt:cache log/libvirt:log; do\n\
               t=/var/${{m%%:*}}; mkdir -p $t; mount --bind {d}/${{m##*:}} $t\n\
             done\n\
             mkdir -p /etc/libvirt; mount --bind {d}/etc /etc/libvirt\n\
             exec libvirtd --config {d}/etc/libvirtd.conf --pid-file {d}/libvirtd.pid"
        );
        let log = std::fs::File::create(dir.join("libvirtd.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{netns}"))
            // A slave of the host's mounts: a dataset zfs-fuse mounts
            // later below a shared mount (the test pool's, see
            // `zfs_root`) appears here too, as on a machine of its own.
            .args(["--", "unshare", "--mount", "--propagation", "slave", "--"])
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nsenter libvirtd");
        let uri = format!("qemu+unix:///system?socket={}/libvirt-sock", sock.display());
        OwnLibvirtd {
            dir: dir.to_path_buf(),
            uri,
            child,
        }
    }

    fn wait_ready(&mut self) {
        let me = self;
        let dir = me.dir.clone();
        let t = Instant::now();
        while !runs("virsh", &["-c", &me.uri, "version"]) {
            if let Ok(Some(st)) = me.child.try_wait() {
                panic!(
                    "libvirtd of {} exited ({st}): {}",
                    dir.display(),
                    std::fs::read_to_string(dir.join("libvirtd.log")).unwrap_or_default()
                );
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "libvirtd of {} did not answer in 120 s",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "libvirtd of {} answers after {} ms",
            dir.display(),
            t.elapsed().as_millis()
        );
    }

    /// `virsh` on this libvirtd: (success, stdout).
    pub fn virsh(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("virsh")
            .args(["-c", &self.uri])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    }

    /// The names of the domains it defines.
    pub fn domains(&self) -> Vec<String> {
        self.virsh(&["list", "--all", "--name"])
            .1
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for OwnLibvirtd {
    fn drop(&mut self) {
        // Its QEMUs first (their pidfiles are in its /run/libvirt/qemu).
        for e in std::fs::read_dir(self.dir.join("run/qemu"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "pid") {
                if let Ok(pid) = std::fs::read_to_string(e.path()) {
                    runs("kill", &["-9", pid.trim()]);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
