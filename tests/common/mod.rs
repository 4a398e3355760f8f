//! Shared fixtures for tests that run real `deorch` node processes.
#![allow(dead_code)]

pub mod browser;
pub mod libvirt;
pub mod samba;
pub mod slapd;
pub mod vnc;
pub mod wss;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deorch::api::client;
use deorch::api::{Request, Response};
use deorch::store::Record;

/// A node process with its own state dir, manifest dir and socket.
pub struct Node {
    pub dir: PathBuf,
    pub manifests: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
    /// Extra `node run` flags (default: the fake hypervisor).
    pub extra_args: Vec<String>,
    /// A command the node runs under, e.g. `ip netns exec NS`.
    pub wrap: Vec<String>,
    /// Node name (`--name`; gossip tells nodes apart by it).
    pub name: String,
    /// How long one local API call may take.
    pub call_timeout: Duration,
    /// The deorch command that runs the node (`node run`; `node join URL`
    /// for a machine joining a cluster).
    pub subcommand: Vec<String>,
    /// Start with the probe answer an earlier node on this host found
    /// (see [`shared_accel`]); off for a test of the probe at start.
    pub shared_probe: bool,
}

/// The accelerator probe's answer, shared by the nodes of every test on
/// this host. A node keeps it in `STATE/accel.json`, keyed by the QEMU,
/// host kernel and probe guest it was found with, and probes again when
/// the key differs; without it, every node of every test would boot its
/// own KVM probe at start (8 s on this machine, where KVM cannot boot).
/// The probe itself is tested by `qemu_qmp`'s real boots.
fn shared_accel() -> PathBuf {
    std::env::temp_dir().join("deorch-test-accel.json")
}

/// Offer the answer a node found (or was given) to the nodes started
/// after it: written whole (a rename), so a reader never sees half.
fn share_accel(state: &Path) {
    let Ok(bytes) = std::fs::read(state.join("accel.json")) else {
        return;
    };
    if std::fs::read(shared_accel()).ok().as_ref() == Some(&bytes) {
        return;
    }
    let tmp = shared_accel().with_extension(format!("{}.tmp", std::process::id()));
    if std::fs::write(&tmp, &bytes).is_ok() {
        let _ = std::fs::rename(&tmp, shared_accel());
    }
}

/// Run a command (program and arguments) that must succeed.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace `name`, deleted first if a crashed run left it,
/// with its loopback up.
pub fn fresh_netns(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
    sh(&["ip", "netns", "add", name]);
    sh(&["ip", "-n", name, "link", "set", "lo", "up"]);
}

/// A fresh temporary directory (removed by `Node::drop` for nodes).
pub fn temp_dir(tag: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!(
        "deorch-{tag}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_u64() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish() as u128
}

impl Node {
    /// Prepare (not start) a node.
    pub fn new(tag: &str) -> Node {
        let dir = temp_dir(tag);
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        Node {
            state: dir.join("state"),
            socket: dir.join("run/deorch.sock"),
            log: dir.join("node.log"),
            manifests,
            dir,
            child: None,
            name: "test-node".into(),
            call_timeout: Duration::from_secs(30),
            extra_args: vec![
                "--hypervisor".into(),
                "fake".into(),
                "--storage".into(),
                "fake".into(),
            ],
            wrap: Vec::new(),
            subcommand: vec!["node".into(), "run".into()],
            shared_probe: true,
        }
    }

    /// Start the process and wait until its API answers.
    pub fn start(&mut self) {
        self.spawn();
        self.wait_up(Duration::from_secs(20));
    }

    /// Start the process (its API may take long to come: a joining node
    /// waits for the owner first).
    pub fn spawn(&mut self) {
        let cached = self.state.join("accel.json");
        if self.shared_probe && !cached.exists() {
            if let Ok(bytes) = std::fs::read(shared_accel()) {
                let _ = std::fs::create_dir_all(&self.state);
                let _ = std::fs::write(&cached, bytes);
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match self.wrap.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_deorch"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_deorch")),
        };
        let child = cmd
            .args(&self.subcommand)
            .args(["--name", &self.name])
            .args(&self.extra_args)
            .arg("--manifests")
            .arg(&self.manifests)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .args([
                "--rescan-interval",
                "1s",
                "--settle",
                "2s",
                "--log",
                "info,deorch=debug",
            ])
            // Deletions by file removal show within a second in tests; a
            // test of the grace itself sets its own.
            .args(
                (!self.extra_args.iter().any(|a| a == "--removal-grace"))
                    .then_some(["--removal-grace", "1s"])
                    .into_iter()
                    .flatten(),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn deorch node");
        self.child = Some(child);
    }

    /// Wait until the API of the process [`Node::spawn`] started answers.
    pub fn wait_up(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Response::Info(_)) = self.call(&Request::Info) {
                share_accel(&self.state);
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("node exited early ({status}); log:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "node did not come up; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL the process and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.wait();
        }
    }

    pub fn call(&self, req: &Request) -> Result<Response, client::ClientError> {
        client::call(&self.socket, req, self.call_timeout)
    }

    /// All live records.
    pub fn records(&self) -> Vec<Record> {
        match self
            .call(&Request::Get {
                kind: None,
                namespace: None,
                name: None,
            })
            .unwrap()
        {
            Response::Objects { records } => records,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The record of kind/name in the default namespace, if live.
    pub fn record(&self, kind: &str, name: &str) -> Option<Record> {
        match self.call(&Request::Get {
            kind: Some(kind.into()),
            namespace: None,
            name: Some(name.into()),
        }) {
            Ok(Response::Objects { mut records }) => records.pop(),
            _ => None,
        }
    }

    /// Poll until `f` holds (bounded).
    pub fn wait_for(&self, what: &str, f: impl FnMut(&Node) -> bool) {
        self.wait_within(what, Duration::from_secs(15), f)
    }

    /// [`Node::wait_for`] with another bound (e.g. libvirt's first define
    /// on a fresh machine probes QEMU for about a minute).
    pub fn wait_within(&self, what: &str, limit: Duration, mut f: impl FnMut(&Node) -> bool) {
        let deadline = Instant::now() + limit;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The URL of the node's HTTP API (started with `--http-listen`) as it
    /// wrote it: `https://ADDR#sha256=PIN` by default.
    pub fn http_url(&self) -> String {
        std::fs::read_to_string(self.state.join("http-url"))
            .expect("the node wrote no http-url (started without --http-listen?)")
            .trim()
            .to_string()
    }

    /// Run the CLI against this node.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        cli_in(Some(&self.socket), args, stdin)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        // QEMU daemonizes: VMs outlive the node by design, so kill this
        // node's VMs here or a failed test leaves them holding ports.
        for ns in std::fs::read_dir(self.state.join("vms"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for vm in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                if let Ok(pid) = std::fs::read_to_string(vm.path().join("qemu.pid")) {
                    let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                }
            }
        }
        if std::thread::panicking() {
            eprintln!("node log ({}):\n{}", self.log.display(), self.log_text());
            let _ = std::fs::copy(
                &self.log,
                std::env::temp_dir().join("deorch-last-failed-node.log"),
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run the `deorch` binary; returns (exit code, stdout, stderr).
pub fn cli_in(socket: Option<&Path>, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deorch"));
    cmd.args(args);
    if let Some(s) = socket {
        cmd.env("DEORCH_SOCKET", s);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn deorch");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A minimal valid VirtualMachine manifest.
pub fn vm_yaml(name: &str, memory: &str) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: {name}\nspec:\n  cpu: 1\n  memory: {memory}\n"
    )
}

/// QEMU must be installed in CI; elsewhere a test says loudly it skipped.
pub fn qemu_available() -> bool {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "qemu-system-x86_64 is missing and CI=true: install it (scripts/test.sh does)"
        );
        eprintln!("SKIPPED: qemu-system-x86_64 not installed");
    }
    ok
}

/// The tiny guest, built by guest/build.sh into a per-user cache:
/// (kernel, initrd).
pub fn tiny_guest() -> (PathBuf, PathBuf) {
    let out = PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/deorch/guest");
    let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/guest/build.sh"))
        .arg(&out)
        .status()
        .expect("run guest/build.sh");
    assert!(status.success(), "guest/build.sh failed");
    (out.join("vmlinuz"), out.join("initrd.img"))
}

/// Tiny deterministic RNG (xorshift) so a failing seed can be replayed.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The shared zfs-fuse pool of the test suite (`deorchtest`, a sparse file
/// in /var/tmp). scripts/test.sh starts the daemon and creates the pool;
/// when run by hand this does the same. Returns a fresh dataset below the
/// pool for one test (destroy it with [`zfs_cleanup`]), or `None` when ZFS
/// is not installed outside CI (under `CI=true` that fails instead).
pub fn zfs_root(tag: &str) -> Option<String> {
    const POOL: &str = "deorchtest";
    if Command::new("zfs").arg("-?").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "zfs (zfs-fuse) is missing and CI=true: install it (scripts/test.sh does)"
        );
        eprintln!("SKIPPED: zfs not installed");
        return None;
    }
    // One test binary at a time sets the daemon and pool up.
    let lock = std::fs::File::create("/var/tmp/deorchtest.lock").expect("lock file");
    lock.lock().expect("lock");
    // scripts/zfs-fuse.sh also clears what a daemon that died left behind.
    let st = Command::new("scripts/zfs-fuse.sh")
        .arg("up")
        .status()
        .expect("run scripts/zfs-fuse.sh");
    assert!(st.success(), "scripts/zfs-fuse.sh up failed");
    let have = Command::new("zpool")
        .args(["list", "-H", "-o", "name", POOL])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        let img = "/var/tmp/deorchtest-pool.img";
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(img)
            .expect("pool file");
        f.set_len(4 << 30).expect("size pool file");
        let out = Command::new("zpool")
            .args(["create", "-f", "-m", "/srv/deorchtest", POOL, img])
            .output()
            .expect("zpool create");
        assert!(
            out.status.success(),
            "zpool create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Datasets mounted later (each volume is one) must appear in the
    // mount namespaces of the tests' own libvirtds too, which are slaves
    // of this mount (tests/common/libvirt.rs).
    let shared = Command::new("mount")
        .args(["--make-shared", "/srv/deorchtest"])
        .output()
        .expect("run mount");
    assert!(
        shared.status.success(),
        "mount --make-shared /srv/deorchtest: {}",
        String::from_utf8_lossy(&shared.stderr)
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let root = format!("{POOL}/{tag}-{}-{nanos}", std::process::id());
    Some(root)
}

/// Destroy a test's dataset tree, retrying while zfs-fuse says busy. An
/// error says what was left; callers in `Drop` report it, never panic.
pub fn zfs_cleanup(root: &str) -> Result<(), String> {
    // zfs-fuse cannot unmount from inside `destroy`; unmount first, and
    // again before every try (an unmount can be refused while busy too).
    let unmount = || {
        for name in zfs_tree(root).iter().rev().filter(|n| !n.contains('@')) {
            let _ = Command::new("zfs").args(["umount", name]).output();
        }
    };
    // zfs-fuse says "busy" for seconds on a loaded machine.
    let mut err = String::new();
    for _ in 0..50 {
        unmount();
        let out = match Command::new("zfs")
            .args(["destroy", "-r", "-R", root])
            .output()
        {
            Ok(out) => out,
            Err(e) => return Err(format!("cannot run zfs to destroy {root}: {e}")),
        };
        err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() || err.contains("does not exist") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "could not destroy {root}: {}{}",
        err.trim(),
        zfs_daemon_note()
    ))
}

/// Whether the zfs-fuse daemon still answers, said so that a reader of a
/// failed test sees at once when the daemon, not the driver, went away
/// (zfs-fuse has exited in the middle of a run before). Empty when it
/// answers.
pub fn zfs_daemon_note() -> String {
    // Bounded: a wedged daemon never answers.
    let answers = Command::new("timeout")
        .args(["-s", "KILL", "10", "zpool", "list"])
        .output()
        .is_ok_and(|o| o.status.success());
    // scripts/zfs-fuse.sh logs every restart it makes: one in the last
    // ten minutes explains a dataset that vanished mid-test.
    let log = "/var/tmp/deorchtest-zfs-fuse-restarts.log";
    let recent = std::fs::metadata(log)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(600));
    let restarts = if recent {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "\n!!! scripts/zfs-fuse.sh restarted the daemon lately: {} !!!",
            lines[lines.len().saturating_sub(3)..].join(" | ")
        )
    } else {
        String::new()
    };
    if answers {
        return restarts;
    }
    let pid = std::fs::read_to_string("/run/zfs-fuse.pid").unwrap_or_default();
    let pid = pid.trim();
    let state = if pid.is_empty() {
        "no pidfile /run/zfs-fuse.pid".to_string()
    } else if Path::new(&format!("/proc/{pid}")).exists() {
        format!("pid {pid} alive but not answering")
    } else {
        format!("pid {pid} has exited")
    };
    format!(
        "\n!!! the zfs-fuse daemon does not answer ({state}): failures above may be its doing; \
         restart it with scripts/zfs-fuse.sh up !!!{restarts}"
    )
}

/// Everything below a dataset (`zfs list -r -t all`), one name per line.
pub fn zfs_tree(root: &str) -> Vec<String> {
    let out = Command::new("zfs")
        .args(["list", "-H", "-r", "-t", "all", "-o", "name", root])
        .output()
        .expect("zfs list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Mode 0755 on a script a test wrote.
fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A `zfs` wrapper program in `dir` that appends each command line to
/// `dir/zfs.log` before running the real `zfs`: (wrapper, log). Given to
/// `ZfsBackend::open_with`, it shows which commands the driver ran.
pub fn zfs_logging_wrapper(dir: &Path) -> (PathBuf, PathBuf) {
    let (wrapper, log) = (dir.join("zfs"), dir.join("zfs.log"));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec zfs \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    make_executable(&wrapper);
    (wrapper, log)
}

/// Wait (polling every 100 ms) until `f` holds; past `limit`, fail with
/// `what` and the logs of `nodes`.
pub fn wait_or_logs<N: std::borrow::Borrow<Node>>(
    what: &str,
    limit: Duration,
    nodes: &[N],
    mut f: impl FnMut() -> bool,
) {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > limit {
            let logs: Vec<String> = nodes
                .iter()
                .map(|n| format!("--- {}:\n{}", n.borrow().name, n.borrow().log_text()))
                .collect();
            panic!("not within {limit:?}: {what}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A busybox udhcpc script in `dir` (`udhcpc -s SCRIPT`) that configures
/// the leased address (so a renewal can be unicast) and appends each
/// `bound`/`renew` event as `EVENT IP SERVERID` to a file: (script,
/// events file).
pub fn udhcpc_recorder(dir: &Path) -> (PathBuf, PathBuf) {
    let (script, events) = (dir.join("renew.sh"), dir.join("events"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr replace $ip/$mask dev $interface; echo \"$1 $ip $serverid\" >> {} ;; esac\nexit 0\n",
            events.display()
        ),
    )
    .unwrap();
    make_executable(&script);
    (script, events)
}

/// Clone requests `(new volume, source)`, at the source's size.
pub fn clone_requests(pairs: &[(&str, &str)]) -> Vec<deorch::driver::CloneRequest> {
    pairs
        .iter()
        .map(|(volume, source)| deorch::driver::CloneRequest {
            volume: volume.to_string(),
            source: source.to_string(),
            size: None,
        })
        .collect()
}

/// Write `marker` over the first sector of an image with `qemu-io`.
pub fn qemu_io_write(img: &Path, format: &str, marker: u8) {
    let out = Command::new("qemu-io")
        .args(["-f", format, "-c"])
        .arg(format!("write -P {marker} 0 512"))
        .arg(img)
        .output()
        .expect("qemu-io");
    assert!(
        out.status.success(),
        "qemu-io write {}: {}",
        img.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first byte of an image, read with `qemu-io`.
pub fn qemu_io_read(img: &Path, format: &str) -> u8 {
    let out = Command::new("qemu-io")
        .args(["-r", "-f", format, "-c", "read -v 0 1"])
        .arg(img)
        .output()
        .expect("qemu-io");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-io read {}: {text}{}",
        img.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let hex = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("qemu-io printed {text}"));
    u8::from_str_radix(hex, 16).unwrap()
}

/// Whether we are root and every tool in `tools` is on `PATH`, with the
/// conditions in `also` (name of what is missing, whether it is there).
/// Otherwise the test skips loudly (false), or fails under `CI=true`,
/// where `install` says what installs them.
pub fn root_with_tools(tools: &[&str], also: &[(&str, bool)], install: &str) -> bool {
    let is_root = rustix::process::geteuid().is_root();
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .chain(also.iter().filter(|(_, ok)| !ok).map(|(what, _)| *what))
        .collect();
    if missing.is_empty() && is_root {
        return true;
    }
    let what = if is_root {
        format!("missing {missing:?}")
    } else {
        "not root (network namespaces and taps need it)".to_string()
    };
    assert!(
        std::env::var("CI").is_err(),
        "{what} and CI=true: {install}"
    );
    eprintln!("\n!!!!!! SKIPPED: {what} ({install}) !!!!!!\n");
    false
}

/// The address deorch's DHCP allocation gives NIC `identity`
/// (`namespace/vm/nic`) on the Network declared in `files`, served from
/// `server`: what a test expects the server to hand out.
pub fn expected_address(files: &[PathBuf], server: &str, identity: &str) -> std::net::Ipv4Addr {
    use deorch::model::AnyObject;
    let mut net = None;
    let mut vms = Vec::new();
    for f in files {
        let parsed = deorch::manifest::parse_file(f);
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        for d in parsed.documents {
            match d.object {
                AnyObject::Network(n) => net = Some(n),
                AnyObject::VirtualMachine(v) => vms.push(v),
                _ => {}
            }
        }
    }
    let net = net.expect("a Network in the manifests");
    deorch::dhcp::Table::build(&net, &vms, server.parse().unwrap(), |_| true)
        .unwrap()
        .clients
        .values()
        .find(|c| c.identity == identity)
        .and_then(|c| c.address)
        .unwrap_or_else(|| panic!("no address for {identity}"))
}

/// Gossip on loopback with the tests' short timings
/// (`deorch::bench_cluster::FAST_TIMINGS`), unsigned documents.
pub fn fast_gossip_flags() -> Vec<String> {
    [
        "--gossip-listen",
        "127.0.0.1:0",
        "--cluster",
        "test",
        "--gossip-verify",
        "unsigned",
    ]
    .iter()
    .chain(&deorch::bench_cluster::FAST_TIMINGS)
    .map(|s| s.to_string())
    .collect()
}

/// The gossip address node `n` bound (`STATE_DIR/gossip-address`, once
/// written).
pub fn gossip_address(n: &Node) -> String {
    let file = n.state.join("gossip-address");
    n.wait_for("the gossip address", |_| file.exists());
    std::fs::read_to_string(&file).unwrap().trim().to_string()
}

/// `node run` flags of a gossiping node of the cluster `owner` owns: any
/// loopback port, a short probe period, then `extra`.
pub fn gossip_args(owner: &str, extra: &[&str]) -> Vec<String> {
    [
        "--cluster-owner",
        owner,
        "--gossip-listen",
        "127.0.0.1:0",
        "--gossip-probe-interval",
        "200ms",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

/// Push `yaml` (one document) signed by the cluster `owner` to a node's
/// HTTP API, and insist it is applied: how tests give themselves
/// AccessPolicies.
pub fn push_owner_signed(
    url: &deorch::http::client::NodeUrl,
    owner: &deorch::identity::PrivateKey,
    yaml: &str,
) {
    // JSON is YAML.
    let r = deorch::http::client::request(
        url,
        "POST",
        "/v1/manifests",
        Some("application/yaml"),
        None,
        owner_signed_json(owner, yaml).as_bytes(),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// A started node (fake drivers) serving its HTTP API on loopback for the
/// cluster whose owner is `owner` (an address), with `extra` flags.
pub fn node_with_http(tag: &str, owner: &str, extra: &[&str]) -> Node {
    let mut n = Node::new(tag);
    n.extra_args.extend(
        ["--http-listen", "127.0.0.1:0", "--cluster-owner", owner]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
    );
    n.start();
    n
}

/// Log in as `user` through a node's HTTP API: fetch a challenge, sign
/// it (P2WPKH) and post it, with `password` when given (level 2). The
/// node's answer, whatever it is.
pub fn login(
    url: &deorch::http::client::NodeUrl,
    user: &deorch::identity::PrivateKey,
    password: Option<&str>,
) -> deorch::http::client::Reply {
    use deorch::http::client::request;
    use deorch::identity::AddressType;
    let t = Duration::from_secs(10);
    let c = request(url, "GET", "/v1/auth/challenge", None, None, b"", t).unwrap();
    let c = c.json()["challenge"].as_str().unwrap().to_string();
    let address = user.address(AddressType::P2wpkh).unwrap().to_string();
    let sig = deorch::identity::sign(user, c.as_bytes(), AddressType::P2wpkh).unwrap();
    let mut body = serde_json::json!({"address": address, "signature": sig, "challenge": c});
    if let Some(p) = password {
        body["password"] = serde_json::json!(p);
    }
    post_login(url, body.to_string().as_bytes())
}

/// `POST /v1/auth/login` with `body` as it is (forged and malformed ones
/// included).
pub fn post_login(url: &deorch::http::client::NodeUrl, body: &[u8]) -> deorch::http::client::Reply {
    deorch::http::client::request(
        url,
        "POST",
        "/v1/auth/login",
        Some("application/json"),
        None,
        body,
        Duration::from_secs(10),
    )
    .unwrap()
}

/// An AccessPolicy `ops` making `subject` an operator once it passes
/// level 2 against `servers` (tried in order), logging in there as
/// `username`: the YAML an owner would write (each server a flow mapping).
pub fn level2_policy(
    subject: &str,
    servers: &[deorch::model::access::DirectoryServer],
    username: &str,
) -> String {
    let servers: String = servers
        .iter()
        .map(|s| format!("          - {}\n", serde_json::to_string(s).unwrap()))
        .collect();
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: AccessPolicy\nmetadata:\n  name: ops\n  generation: 1\nspec:\n  rules:\n    - subjects: [\"{subject}\"]\n      role: operator\n      level2:\n        servers:\n{servers}        usernames:\n          \"{subject}\": {username}\n"
    )
}

/// Give node `n` its key before it first starts (as `node run` would make
/// it, `STATE_DIR/node.key`), so a test knows its ID: the key's P2WPKH
/// address.
pub fn give_node_key(n: &Node) -> String {
    use deorch::identity::{AddressType, Network, PrivateKey};
    std::fs::create_dir_all(&n.state).unwrap();
    let path = n.state.join("node.key");
    let key = match PrivateKey::load(&path) {
        Ok(k) => k,
        Err(_) => {
            let k = PrivateKey::generate(Network::Mainnet);
            k.save(&path).unwrap();
            k
        }
    };
    key.address(AddressType::P2wpkh).unwrap().to_string()
}

/// `yaml` (one document) signed by `owner` for its cluster, as JSON
/// (which `deorch apply` reads as YAML).
pub fn owner_signed_json(owner: &deorch::identity::PrivateKey, yaml: &str) -> String {
    use deorch::identity::AddressType;
    let parsed = deorch::manifest::parse_str(Path::new("owner-signed.yaml"), yaml);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let cluster = owner.address(AddressType::P2wpkh).unwrap().to_string();
    let signed = deorch::identity::sign_manifest(
        &parsed.documents[0].object.to_value(),
        &cluster,
        owner,
        AddressType::P2wpkh,
    )
    .unwrap();
    serde_json::to_string(&signed).unwrap()
}

/// The AccessPolicy `members` at `generation` admitting `satellites`
/// (name, address), plus `rules` (YAML list items, indented 4).
pub fn members_policy(generation: u64, satellites: &[(&str, &str)], rules: &str) -> String {
    let sats: String = satellites
        .iter()
        .map(|(n, a)| format!("    - name: {n}\n      address: \"{a}\"\n"))
        .collect();
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: AccessPolicy\nmetadata:\n  name: members\n  generation: {generation}\nspec:\n  satellites:\n{sats}  rules:\n{}",
        if rules.is_empty() { "    []\n" } else { rules }
    )
}

/// Apply the owner-signed `yaml` on node `n` through its local API.
pub fn apply_owner_signed(n: &Node, owner: &deorch::identity::PrivateKey, yaml: &str) {
    let (code, out, err) = n.cli(&["apply", "-f", "-"], Some(&owner_signed_json(owner, yaml)));
    assert_eq!(code, 0, "{}: apply failed: {out}{err}", n.name);
}

/// The members `n` last saw up, by ID (from its Satellite's events).
pub fn members_up(n: &Node) -> std::collections::BTreeSet<String> {
    let Ok(Response::Described { events, .. }) = n.call(&Request::Describe {
        kind: "satellite".into(),
        namespace: None,
        name: n.name.clone(),
    }) else {
        return std::collections::BTreeSet::new();
    };
    let mut last: std::collections::BTreeMap<String, String> = Default::default();
    for e in &events {
        if let Some(id) = e
            .message
            .rsplit_once(" (")
            .and_then(|(_, r)| r.strip_suffix(')'))
        {
            last.insert(id.to_string(), e.reason.clone());
        }
    }
    last.into_iter()
        .filter(|(_, r)| r == "MemberUp")
        .map(|(id, _)| id)
        .collect()
}

/// Run `f` on a thread that joined the network namespace `name` (made by
/// [`fresh_netns`]): how a test talks to a node inside one.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = Path::new("/run/netns").join(name);
    std::thread::scope(|s| {
        let thread = s.spawn(|| {
            let fd = std::fs::File::open(&path).unwrap();
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&fd),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            f()
        });
        thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A node (not started) with the QEMU driver and the tiny guest as its
/// accelerator probe, and the guest's directory (vmlinuz, initrd.img).
pub fn qemu_node(tag: &str) -> (Node, PathBuf) {
    let g = tiny_guest().0.parent().unwrap().to_path_buf();
    let mut node = Node::new(tag);
    node.extra_args = vec![
        "--hypervisor".into(),
        "qemu".into(),
        "--probe-guest".into(),
        g.display().to_string(),
    ];
    (node, g)
}

/// How many frames of capture `file` (tcpdump's pcap) match the pcap
/// `filter`, as `tcpdump -r` counts them.
pub fn pcap_count(file: &Path, filter: &str) -> usize {
    let out = Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(file)
        .arg(filter)
        .stderr(Stdio::null())
        .output()
        .expect("tcpdump -r");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// A cgroup that freezes the processes put in it at once, as a stalled
/// machine would stop: cgroup v1's freezer controller where it is
/// mounted, else cgroup v2's `cgroup.freeze`. Thawed, its processes put
/// back in the root group, and removed when dropped.
pub struct Freezer {
    dir: PathBuf,
    v2: bool,
}

impl Freezer {
    /// A group named `name`; `None` when the machine has no freezer (a
    /// test that needs one fails under CI).
    pub fn new(name: &str) -> Option<Freezer> {
        let v1 = Path::new("/sys/fs/cgroup/freezer");
        if v1.join("cgroup.procs").exists() {
            let dir = v1.join(name);
            std::fs::create_dir_all(&dir).ok()?;
            return Some(Freezer { dir, v2: false });
        }
        for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
            let root = Path::new(root);
            if root.join("cgroup.controllers").exists() {
                let dir = root.join(name);
                std::fs::create_dir_all(&dir).ok()?;
                if dir.join("cgroup.freeze").exists() {
                    return Some(Freezer { dir, v2: true });
                }
                let _ = std::fs::remove_dir(&dir);
            }
        }
        None
    }

    /// Move `pids` (whole processes) in and freeze them; returns once the
    /// kernel says they are frozen.
    pub fn freeze(&self, pids: &[String]) {
        for p in pids {
            // A process may have exited since it was listed.
            let _ = std::fs::write(self.dir.join("cgroup.procs"), p);
        }
        let (file, value) = if self.v2 {
            ("cgroup.freeze", "1")
        } else {
            ("freezer.state", "FROZEN")
        };
        std::fs::write(self.dir.join(file), value).expect("freezing the cgroup");
        let frozen = || {
            if self.v2 {
                std::fs::read_to_string(self.dir.join("cgroup.events"))
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l == "frozen 1")
            } else {
                std::fs::read_to_string(self.dir.join("freezer.state"))
                    .unwrap_or_default()
                    .trim()
                    == "FROZEN"
            }
        };
        let t = Instant::now();
        while !frozen() {
            assert!(t.elapsed() < Duration::from_secs(10), "not frozen in 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Let its processes run again.
    pub fn thaw(&self) {
        let (file, value) = if self.v2 {
            ("cgroup.freeze", "0")
        } else {
            ("freezer.state", "THAWED")
        };
        let _ = std::fs::write(self.dir.join(file), value);
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        self.thaw();
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        let root = self.dir.parent().unwrap().join("cgroup.procs");
        for p in procs.split_whitespace() {
            let _ = std::fs::write(&root, p);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A process in a network namespace, killed on drop.
pub struct NsProc(pub Child);

impl NsProc {
    /// `args` run in namespace `ns`, stdout and stderr into `log`.
    pub fn start(ns: &str, args: &[&str], log: &Path) -> NsProc {
        let f = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        NsProc(child)
    }

    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGINT, then wait (tcpdump writes what it holds and exits).
    pub fn interrupt(&mut self) {
        if self.0.try_wait().is_ok_and(|s| s.is_none()) {
            sh(&["kill", "-INT", &self.0.id().to_string()]);
            let t = Instant::now();
            while self.0.try_wait().is_ok_and(|s| s.is_none())
                && t.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.stop();
    }
}

impl Drop for NsProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// tcpdump in `ns` on `iface` into `file`, each packet written as it
/// comes, until [`NsProc::interrupt`]ed. Returns once tcpdump says its
/// socket is open ("listening on"), so nothing sent after is missed; a
/// loaded machine may take seconds to get there.
pub fn capture(ns: &str, iface: &str, file: &Path) -> NsProc {
    let log = file.with_extension("log");
    let mut p = NsProc::start(
        ns,
        &[
            "tcpdump",
            "--immediate-mode",
            "-U",
            "-n",
            "-i",
            iface,
            "-w",
            file.to_str().unwrap(),
        ],
        &log,
    );
    let t = Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on")) {
        if let Ok(Some(s)) = p.0.try_wait() {
            panic!(
                "tcpdump on {ns}/{iface} exited ({s}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if t.elapsed() > Duration::from_secs(30) {
            p.stop();
            panic!("tcpdump on {ns}/{iface} did not start in 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}
