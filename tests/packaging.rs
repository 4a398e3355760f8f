//! The Debian package (scripts/deb.sh, packaging/): built here from this
//! test's own binary, installed with dpkg into a throwaway root (`dpkg
//! --root`, maintainer scripts run chrootless as dpkg's
//! `--force-script-chrootless` does, with `DPKG_ROOT` set), and the
//! installed files used as they are:
//! - the installed binary runs `version` and `validate`, and runs a node
//!   from the installed /etc/deorch/node.yaml (only the paths moved below
//!   the throwaway root, by `DEORCH_*` variables as a `systemctl edit`
//!   drop-in would);
//! - `systemd-analyze verify` accepts the installed unit (and does catch a
//!   broken copy of it);
//! - a node with a QEMU VM and its fence, run as the unit runs it (its
//!   ExecStart, under its capability bound and no-new-privileges), then
//!   stopped as the unit stops it (its KillSignal to the main process
//!   only: KillMode=process), leaves the VM's QEMU and the fence running,
//!   and the node started again adopts both.
//!
//! systemd itself is not PID 1 on the machines these tests run on, so the
//! unit's stop is carried out by the test from the unit's own settings.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Node;
use deorch::api::{Request, Response};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const UNIT: &str = "lib/systemd/system/deorch.service";

/// Whether the packaging tools are here (under `CI=true` they must be).
fn tools() -> bool {
    common::root_with_tools(
        &[
            "dpkg",
            "dpkg-deb",
            "strip",
            "readelf",
            "ldd",
            "gzip",
            "setpriv",
            "systemd-analyze",
            "man",
            "bash",
        ],
        &[],
        "scripts/test.sh installs dpkg, binutils, gzip, util-linux, systemd, man-db, bash",
    )
}

/// Run a command that must succeed; its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Build the .deb from this test's binary into `dir`; its path.
fn build_deb(dir: &Path) -> PathBuf {
    let t0 = Instant::now();
    let out = run(Command::new(format!("{REPO}/scripts/deb.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_deorch"), "--fast", "--out"])
        .arg(dir));
    let deb = PathBuf::from(out.lines().last().expect("deb.sh printed the .deb"));
    assert!(deb.is_file(), "{}", deb.display());
    eprintln!("built {} in {:?}", deb.display(), t0.elapsed());
    deb
}

/// An empty root with an empty dpkg database.
fn empty_root(root: &Path) {
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/log"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for f in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
        std::fs::write(root.join(f), "").unwrap();
    }
}

/// `dpkg --root=ROOT ARGS`: the dependencies are not in the throwaway
/// root (the host's libraries and QEMU serve), and the maintainer scripts
/// run on the host with `DPKG_ROOT=ROOT`.
fn dpkg(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg(format!("--log={}", root.join("var/log/dpkg.log").display()))
        .args(["--force-depends", "--force-script-chrootless"])
        .args(args)
        .output()
        .expect("run dpkg")
}

/// Build the package and install it into `root`.
fn install(root: &Path) {
    let deb = build_deb(&root.with_extension("debs"));
    empty_root(root);
    let out = dpkg(root, &["-i", deb.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "dpkg -i: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The unit's `[Service]` settings: key to values, in order (a key may
/// repeat).
fn service_settings(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = "";
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section == "[Service]" {
            let (k, v) = line.split_once('=').expect("key=value");
            out.entry(k.trim().into())
                .or_default()
                .push(v.trim().into());
        }
    }
    out
}

fn one<'a>(s: &'a BTreeMap<String, Vec<String>>, key: &str) -> Option<&'a str> {
    s.get(key).and_then(|v| v.last()).map(String::as_str)
}

/// The capability names of the unit's bounding set.
fn bounding_set(s: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    s.get("CapabilityBoundingSet")
        .expect("the unit bounds the capabilities")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The kernel's number of a capability (those the unit may name).
fn cap_bit(name: &str) -> u32 {
    match name {
        "cap_chown" => 0,
        "cap_dac_override" => 1,
        "cap_dac_read_search" => 2,
        "cap_fowner" => 3,
        "cap_kill" => 5,
        "cap_net_bind_service" => 10,
        "cap_net_broadcast" => 11,
        "cap_net_admin" => 12,
        "cap_net_raw" => 13,
        "cap_ipc_lock" => 14,
        "cap_sys_chroot" => 18,
        "cap_sys_ptrace" => 19,
        "cap_sys_admin" => 21,
        "cap_sys_nice" => 23,
        "cap_sys_resource" => 24,
        "cap_mknod" => 27,
        "cap_lease" => 28,
        other => panic!("the test does not know {other}: add its number"),
    }
}

/// A field of /proc/PID/status.
fn proc_status(pid: u32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// Alive: exists and is not a zombie.
fn alive(pid: u32) -> bool {
    proc_status(pid, "State").is_some_and(|s| !s.starts_with('Z'))
}

/// The installed node, run as the unit runs it: its ExecStart with the
/// executable and config file taken below `root`, under its capability
/// bound and no-new-privileges (setpriv), with `env` as a drop-in's
/// `Environment=` would give.
struct Unit {
    root: PathBuf,
    settings: BTreeMap<String, Vec<String>>,
    env: Vec<(String, String)>,
}

impl Unit {
    fn new(root: &Path, node: &Node) -> Unit {
        let text = std::fs::read_to_string(root.join(UNIT)).unwrap();
        let env = [
            ("DEORCH_STATE_DIR", node.state.display().to_string()),
            ("DEORCH_MANIFESTS", node.manifests.display().to_string()),
            ("DEORCH_SOCKET", node.socket.display().to_string()),
            ("DEORCH_NAME", node.name.clone()),
            ("DEORCH_LOG", "info,deorch=debug".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Unit {
            root: root.to_path_buf(),
            settings: service_settings(&text),
            env,
        }
    }

    /// The ExecStart line, re-rooted.
    fn exec_start(&self) -> Vec<String> {
        let line = one(&self.settings, "ExecStart").expect("ExecStart");
        line.split_whitespace()
            .map(|w| {
                if w.starts_with("/usr/") || w.starts_with("/etc/") {
                    self.root.join(&w[1..]).display().to_string()
                } else {
                    w.to_string()
                }
            })
            .collect()
    }

    /// Start it for `node` and wait until its local API answers.
    fn start(&self, node: &mut Node) {
        let caps: Vec<String> = bounding_set(&self.settings)
            .iter()
            .map(|c| format!("+{}", c.trim_start_matches("cap_")))
            .collect();
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--bounding-set=-all,{}", caps.join(",")));
        if one(&self.settings, "NoNewPrivileges") == Some("yes") {
            cmd.arg("--no-new-privs");
        }
        let exec = self.exec_start();
        cmd.arg("--").args(&exec);
        for (k, _) in std::env::vars() {
            if k.starts_with("DEORCH_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn setpriv");
        node.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Response::Info(_)) = node.call(&Request::Info) {
                return;
            }
            if let Some(status) = node.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("node exited early ({status}); log:\n{}", node.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "node did not come up; log:\n{}",
                node.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop it as systemd stops the unit: KillMode=process sends the
    /// KillSignal to the main process only and waits TimeoutStopSec. The
    /// daemon must have exited by then, cleanly.
    fn stop(&self, node: &mut Node) {
        assert_eq!(
            one(&self.settings, "KillMode"),
            Some("process"),
            "any other KillMode signals the VMs too"
        );
        let signal = one(&self.settings, "KillSignal").unwrap_or("SIGTERM");
        let timeout = one(&self.settings, "TimeoutStopSec")
            .map(|t| t.parse::<deorch::model::Duration>().unwrap().0)
            .unwrap_or(Duration::from_secs(90));
        let mut child = node.child.take().expect("running");
        run(Command::new("kill")
            .arg(format!("-{}", signal.trim_start_matches("SIG")))
            .arg(child.id().to_string()));
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                t0.elapsed() < timeout,
                "the daemon outlived TimeoutStopSec ({timeout:?}): systemd would SIGKILL it; log:\n{}",
                node.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "{status} at {signal}; log:\n{}",
            node.log_text()
        );
        eprintln!("stopped with {signal} in {:?}", t0.elapsed());
    }
}

/// A throwaway root inside `node`'s directory, the package installed, and
/// the node's paths moved below it.
fn installed_node(tag: &str) -> (Node, PathBuf) {
    let mut node = Node::new(tag);
    node.name = tag.into();
    let root = node.dir.join("root");
    install(&root);
    node.state = root.join("var/lib/deorch");
    node.manifests = root.join("etc/deorch/manifests");
    node.socket = root.join("run/deorch/deorch.sock");
    (node, root)
}

fn vm_yaml(name: &str) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: {name}\nspec:\n  cpu: 1\n  memory: 64Mi\n"
    )
}

#[test]
fn the_deb_installs_into_a_throwaway_root_and_its_binary_runs_there() {
    if !tools() {
        return;
    }
    let (mut node, root) = installed_node("pkg-files");
    let q = |args: &[&str]| {
        run(Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(args))
    };
    assert_eq!(
        q(&["-W", "-f=${Status} ${Version}", "deorch"]),
        format!("install ok installed {}", env!("CARGO_PKG_VERSION"))
    );

    // Files, modes, conffile.
    let mode = |p: &str| {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let m = std::fs::metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        (m.permissions().mode() & 0o7777, m.uid(), m.gid())
    };
    assert_eq!(mode("usr/bin/deorch"), (0o755, 0, 0));
    assert_eq!(mode("var/lib/deorch"), (0o700, 0, 0), "state: root's only");
    assert_eq!(
        mode("etc/deorch/manifests"),
        (0o700, 0, 0),
        "manifests: root's only"
    );
    assert_eq!(mode(UNIT).0, 0o644);
    assert!(
        q(&["-W", "-f=${Conffiles}", "deorch"]).contains("/etc/deorch/node.yaml "),
        "node.yaml is a conffile"
    );
    // The postinst enabled the unit, in the root (chrootless).
    let wants = root.join("etc/systemd/system/multi-user.target.wants/deorch.service");
    assert_eq!(
        std::fs::read_link(&wants).expect("the unit is enabled"),
        Path::new("/lib/systemd/system/deorch.service")
    );

    // Completions and man pages, made by the binary.
    run(Command::new("bash")
        .arg("-n")
        .arg(root.join("usr/share/bash-completion/completions/deorch")));
    for f in [
        "usr/share/zsh/vendor-completions/_deorch",
        "usr/share/fish/vendor_completions.d/deorch.fish",
    ] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        assert!(text.contains("node") && text.contains("validate"), "{f}");
    }
    for page in [
        "deorch",
        "deorch-node-run",
        "deorch-validate",
        "deorch-completions",
    ] {
        let path = root.join(format!("usr/share/man/man1/{page}.1.gz"));
        let text = run(Command::new("gzip").arg("-dc").arg(&path));
        assert!(text.contains(".TH"), "{page}: {text}");
    }
    let run_page = run(Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man1/deorch-node-run.1.gz")));
    assert!(
        run_page.contains("DEORCH_STATE_DIR"),
        "flags with their variables"
    );

    // Depends names the package of every library the binary needs.
    let bin = root.join("usr/bin/deorch");
    let depends = q(&["-W", "-f=${Depends}", "deorch"]);
    let named: Vec<&str> = depends
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap())
        .collect();
    let dynamic = run(Command::new("readelf").arg("-d").arg(&bin));
    let ldd = run(Command::new("ldd").arg(&bin));
    for soname in dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1))
        .map(|s| s.trim_end_matches(']'))
    {
        let path = ldd
            .lines()
            .find_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                match w.as_slice() {
                    [s, "=>", p, ..] if *s == soname => Some(p.to_string()),
                    [p, ..] if p.ends_with(&format!("/{soname}")) => Some(p.to_string()),
                    _ => None,
                }
            })
            .unwrap_or_else(|| panic!("{soname} not in ldd:\n{ldd}"));
        let dir = Path::new(&path).parent().unwrap().file_name().unwrap();
        let owner = run(Command::new("dpkg")
            .arg("-S")
            .arg(format!("*/{}/{soname}", dir.to_string_lossy())));
        let pkg = owner.split(':').next().unwrap();
        assert!(
            named.contains(&pkg),
            "{soname} ({pkg}) not in Depends: {depends}"
        );
    }

    // The installed binary: version and validate.
    let out = run(Command::new(&bin).arg("version"));
    assert!(
        out.starts_with(&format!("deorch {}\n", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    std::fs::write(node.manifests.join("web.yaml"), vm_yaml("web")).unwrap();
    let ok = Command::new(&bin)
        .arg("validate")
        .arg(&node.manifests)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = node.dir.join("bad.yaml");
    std::fs::write(&bad, vm_yaml("web").replace("cpu: 1", "cpu: lots")).unwrap();
    let refused = Command::new(&bin)
        .arg("validate")
        .arg(&bad)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stdout).into_owned()
        + &String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(said.contains("bad.yaml:") && said.contains("cpu"), "{said}");

    // The shipped node.yaml runs a node (qemu driver, dir storage) that
    // applies the manifest directory, and stops cleanly as the unit stops
    // it. QEMU is not needed until a VM starts: the VM stays unstarted
    // here, as the test without QEMU would not boot it.
    std::fs::remove_file(node.manifests.join("web.yaml")).unwrap();
    std::fs::write(
        node.manifests.join("net.yaml"),
        "apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata:\n  name: lan\nspec:\n  mtu: 1500\n",
    )
    .unwrap();
    let unit = Unit::new(&root, &node);
    unit.start(&mut node);
    match node.call(&Request::Info).unwrap() {
        Response::Info(info) => {
            assert_eq!(
                (info.hypervisor.as_str(), info.storage.as_str()),
                ("qemu", "dir"),
                "as node.yaml says"
            );
            assert_eq!(info.manifests, node.manifests.display().to_string());
        }
        other => panic!("{other:?}"),
    }
    node.wait_for("the manifest applied", |n| {
        n.record("network", "lan").is_some()
    });
    unit.stop(&mut node);

    // Purge: program, unit, config and enablement gone; the state (disks,
    // store, node key) kept, and said so.
    let out = dpkg(&root, &["--purge", "deorch"]);
    assert!(out.status.success(), "{out:?}");
    for gone in ["usr/bin/deorch", UNIT, "etc/deorch/node.yaml"] {
        assert!(!root.join(gone).exists(), "{gone} left after purge");
    }
    assert!(std::fs::symlink_metadata(&wants).is_err(), "still enabled");
    assert!(
        node.state.join("store.redb").exists(),
        "the state was removed"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kept /var/lib/deorch"),
        "{out:?}"
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_installed_unit() {
    if !tools() {
        return;
    }
    let node = Node::new("pkg-verify");
    let root = node.dir.join("root");
    install(&root);
    // The root stands for a Debian system: systemd's own units (the
    // targets the unit's default dependencies name) as the host has them.
    let units = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    run(Command::new("cp")
        .args(["-a", "/lib/systemd/system/."])
        .arg(&units));
    let verify = |unit: &str| {
        let out = Command::new("systemd-analyze")
            .arg(format!("--root={}", root.display()))
            .args(["verify", unit])
            // Documentation=man:... is checked with man(1): the pages
            // the package installed.
            .env("MANPATH", root.join("usr/share/man"))
            .current_dir(&node.dir)
            .output()
            .expect("systemd-analyze");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, said) = verify("deorch.service");
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    // The check can fail: a copy with a misspelt setting and a missing
    // program is refused, each named.
    let text = std::fs::read_to_string(root.join(UNIT)).unwrap();
    let broken = text
        .replace("KillMode=process", "KilMode=process")
        .replace("/usr/bin/deorch", "/usr/bin/deorch-missing");
    assert_ne!(broken, text);
    std::fs::write(
        root.join("etc/systemd/system/deorch-broken.service"),
        broken,
    )
    .unwrap();
    let (ok, said) = verify("deorch-broken.service");
    assert!(!ok, "{said}");
    assert!(
        said.contains("KilMode") && said.contains("deorch-missing"),
        "{said}"
    );

    // What the stop test relies on.
    let s = service_settings(&text);
    assert_eq!(one(&s, "KillMode"), Some("process"));
    assert_eq!(one(&s, "Restart"), Some("on-failure"));
    assert_eq!(
        one(&s, "ExecStart"),
        Some("/usr/bin/deorch node run --config /etc/deorch/node.yaml")
    );
    for stop in ["ExecStop", "ExecStopPost", "ExecReload"] {
        assert!(!s.contains_key(stop), "{stop}: would act on the VMs");
    }
}

/// QMP `query-status` of the VM whose runtime directory is `dir`.
fn qmp_status(dir: &Path) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = deorch::qemu::cmdline::qmp_socket(dir);
        let mut q = match deorch::qemu::qmp::Qmp::connect(&sock, Duration::from_secs(5)).await {
            Ok(q) => q,
            Err(e) => return format!("no QMP: {e}"),
        };
        match q.execute("query-status", None).await {
            Ok(v) => v["status"].as_str().unwrap_or("?").to_string(),
            Err(e) => format!("error: {e}"),
        }
    })
}

/// Kills what outlives the daemon by design (QEMU, the fence).
struct Reap(Vec<u32>);
impl Drop for Reap {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

#[test]
fn stopped_as_the_unit_stops_it_a_node_leaves_its_vm_and_fence_running_and_adopts_them_again() {
    if !(tools() && common::qemu_available()) {
        return;
    }
    let guest = common::tiny_guest().0.parent().unwrap().to_path_buf();
    let (mut node, root) = installed_node("pkg-stop");
    let name = "tiny";
    std::fs::write(
        node.manifests.join("tiny.yaml"),
        format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: tiny}}\nspec:\n  boot: {{kernel: {k}, initrd: {i}, cmdline: \"{c}\"}}\n  machine: microvm\n  cpu: 1\n  memory: 128Mi\n---\napiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: {name}}}\nspec:\n  spacesuit: tiny\n",
            k = guest.join("vmlinuz").display(),
            i = guest.join("initrd.img").display(),
            c = deorch::qemu::probe::TINY_CMDLINE,
        ),
    )
    .unwrap();
    let mut unit = Unit::new(&root, &node);
    // Gossip (on loopback, the tests' short timings): a node that gossips
    // runs the fence. The fence's hold at a graceful stop is the shipped
    // default (10 min).
    let flags = common::fast_gossip_flags();
    for pair in flags.chunks(2) {
        let var = format!(
            "DEORCH_{}",
            pair[0]
                .trim_start_matches("--")
                .replace('-', "_")
                .to_uppercase()
        );
        unit.env.push((var, pair[1].clone()));
    }
    unit.env
        .push(("DEORCH_PROBE_GUEST".into(), guest.display().to_string()));
    unit.start(&mut node);
    node.wait_within("the VM running", Duration::from_secs(120), |n| {
        n.record("vm", name)
            .and_then(|r| r.status)
            .is_some_and(|s| s["phase"] == "Running")
    });
    let qemu_pid = |node: &Node| {
        node.record("vm", name)
            .and_then(|r| r.status)
            .and_then(|s| s["pid"].as_u64())
            .unwrap_or(0) as u32
    };
    let qemu = qemu_pid(&node);
    let fence: u32 = std::fs::read_to_string(node.state.join("fence/pid"))
        .expect("the node started its fence")
        .trim()
        .parse()
        .unwrap();
    let _reap = Reap(vec![qemu, fence]);
    let vm_dir = node.state.join(format!("vms/default/{name}"));
    assert_eq!(qmp_status(&vm_dir), "running");

    // The unit's bound holds for the daemon and what it started.
    let mask: u64 = bounding_set(&unit.settings)
        .iter()
        .map(|c| 1u64 << cap_bit(c))
        .sum();
    let daemon = node.child.as_ref().unwrap().id();
    for (what, pid) in [("daemon", daemon), ("QEMU", qemu), ("fence", fence)] {
        let bnd = proc_status(pid, "CapBnd").unwrap();
        assert_eq!(
            u64::from_str_radix(&bnd, 16).unwrap(),
            mask,
            "{what}'s bounding set"
        );
        assert_eq!(
            proc_status(pid, "NoNewPrivs").as_deref(),
            Some("1"),
            "{what}"
        );
    }

    // Stop (as `systemctl stop` or the first half of a restart).
    unit.stop(&mut node);
    assert!(alive(qemu), "QEMU killed with the daemon");
    assert!(alive(fence), "the fence killed with the daemon");
    // Past the fence's timeout: the stop's hold keeps the VM running.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(qmp_status(&vm_dir), "running", "paused during the hold");
    assert!(alive(qemu) && alive(fence));

    // Start again: the same QEMU adopted, the same fence kept.
    unit.start(&mut node);
    node.wait_for("the VM adopted", |n| {
        n.record("vm", name)
            .and_then(|r| r.status)
            .is_some_and(|s| s["phase"] == "Running" && s["pid"].as_u64() == Some(qemu as u64))
    });
    assert_eq!(qemu_pid(&node), qemu, "the same QEMU, not a new boot");
    let again: u32 = std::fs::read_to_string(node.state.join("fence/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(again, fence, "one fence, kept across the restart");
    assert_eq!(qmp_status(&vm_dir), "running");
    unit.stop(&mut node);
    assert!(alive(qemu) && alive(fence));
}
