//! The command line's verbs against real nodes: `deorch vm
//! start|stop|restart|pause|resume`, `deorch logs [-f] [--tail N]`,
//! `deorch get -w`, `deorch events -w`, `-o json|yaml` on every read
//! command (`describe` too), and the exit
//! codes (0 done, 1 failed, 2 usage, 3 not found, 4 no node).
//!
//! One node with the fake drivers checks the verbs' desired-state side,
//! the watch and the formats quickly; one node with the QEMU driver boots
//! the tiny guest and checks that each verb really acts on QEMU (its QMP
//! status, its process, its serial output).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{qemu_available, Node};
use serde_json::Value;

/// A `deorch` process whose output is read line by line as it comes.
struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Streaming {
    fn start(node: &Node, args: &[&str]) -> Streaming {
        let mut child = Command::new(env!("CARGO_BIN_EXE_deorch"))
            .args(args)
            .env("DEORCH_SOCKET", &node.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn deorch");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Streaming { child, lines }
    }

    /// Lines until one satisfies `f` (returned), within `limit`.
    fn until(&self, what: &str, limit: Duration, mut f: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if f(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "no line with {what} within {limit:?}; saw:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_of(args: &[&str], out: &str) -> Value {
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("deorch {args:?} -o json: {e}:\n{out}"))
}

fn phase(node: &Node, name: &str) -> String {
    node.record("vm", name)
        .and_then(|r| r.status)
        .and_then(|s| s["phase"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn ok(node: &Node, args: &[&str]) -> String {
    let (rc, out, err) = node.cli(args, None);
    assert_eq!(rc, 0, "deorch {args:?}: {err}\n{out}");
    out
}

#[test]
fn verbs_watch_formats_and_exit_codes_with_fake_drivers() {
    let mut node = Node::new("cli-verbs");
    std::fs::write(
        node.manifests.join("owned.yaml"),
        common::vm_yaml("owned", "64Mi"),
    )
    .unwrap();
    node.start();
    let (rc, _, err) = node.cli(&["apply", "-f", "-"], Some(&common::vm_yaml("web", "64Mi")));
    assert_eq!(rc, 0, "{err}");
    node.wait_for("web and owned Running", |n| {
        phase(n, "web") == "Running" && phase(n, "owned") == "Running"
    });

    // A watch started now sees what follows, one JSON document per line.
    let watch = Streaming::start(&node, &["get", "-w", "vm", "-o", "json"]);
    let first = watch.until("web ADDED", Duration::from_secs(10), |l| {
        l.contains("\"ADDED\"") && l.contains("\"web\"")
    });
    let doc: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(doc["type"], "ADDED");
    assert_eq!(doc["object"]["metadata"]["name"], "web");
    assert_eq!(doc["object"]["status"]["phase"], "Running");
    let table = Streaming::start(&node, &["get", "--watch", "vm", "web"]);
    let header = table.until("the header", Duration::from_secs(10), |_| true);
    assert!(
        header.starts_with("EVENT") && header.contains("STATUS"),
        "{header}"
    );
    assert!(!header.contains("KIND"), "{header}");
    table.until("web's row", Duration::from_secs(10), |l| {
        l.starts_with("ADDED") && l.contains("web") && l.contains("Running")
    });

    // The power verbs: each a new generation of spec.powerState, then the
    // phase at that generation.
    let gen0 = node.record("vm", "web").unwrap().generation;
    let out = ok(&node, &["vm", "pause", "web"]);
    assert!(out.contains("vm default/web: Paused"), "{out}");
    let r = node.record("vm", "web").unwrap();
    assert_eq!(r.object["spec"]["powerState"], "Paused");
    assert_eq!(r.generation, gen0 + 1);
    watch.until("web MODIFIED to Paused", Duration::from_secs(10), |l| {
        let v: Value = serde_json::from_str(l).unwrap();
        v["type"] == "MODIFIED"
            && v["object"]["metadata"]["name"] == "web"
            && v["object"]["status"]["phase"] == "Paused"
            && v["object"]["status"]["observedGeneration"] == gen0 + 1
    });
    table.until("the Paused row", Duration::from_secs(10), |l| {
        l.starts_with("MODIFIED") && l.contains("Paused")
    });
    // Resuming what is not paused, pausing what is stopped: refused.
    let out = ok(&node, &["vm", "resume", "web", "-o", "json"]);
    let v = json_of(&["vm", "resume"], &out);
    assert_eq!(v["status"]["phase"], "Running");
    assert_eq!(v["spec"]["powerState"], "Running");
    let (rc, _, err) = node.cli(&["vm", "resume", "web"], None);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("is not paused"), "{err}");
    let out = ok(&node, &["vm", "stop", "web", "-o", "yaml"]);
    let v: Value = serde_saphyr::from_str(&out).unwrap();
    assert_eq!(v["status"]["phase"], "Stopped", "{out}");
    let (rc, _, err) = node.cli(&["vm", "pause", "web"], None);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("nothing to pause"), "{err}");
    // Restart of a stopped VM starts it; of a running one stops then starts.
    let out = ok(&node, &["vm", "restart", "web"]);
    assert!(out.contains("Running"), "{out}");
    let before = node.record("vm", "web").unwrap().generation;
    ok(&node, &["vm", "restart", "web"]);
    assert_eq!(node.record("vm", "web").unwrap().generation, before + 2);
    assert_eq!(phase(&node, "web"), "Running");
    // Start of a running VM changes nothing.
    ok(&node, &["vm", "start", "web"]);
    assert_eq!(node.record("vm", "web").unwrap().generation, before + 2);
    // --no-wait returns once recorded.
    let out = ok(&node, &["vm", "stop", "web", "--no-wait"]);
    assert!(out.contains("powerState Stopped asked"), "{out}");
    node.wait_for("web Stopped", |n| phase(n, "web") == "Stopped");
    // The history of the VM holds every verb as a version.
    let state = node.state.display().to_string();
    let args = ["history", "vm", "web", "--state-dir", &state, "-o", "json"];
    let out = ok(&node, &args);
    json_of(&args, &out);
    for power in ["Paused", "Stopped", "Running"] {
        assert!(
            out.contains(&format!("\"powerState\": \"{power}\"")),
            "{power}: {out}"
        );
    }

    // `events -w` prints what comes after it started, one JSON document
    // per event.
    let events = Streaming::start(&node, &["events", "-w", "-o", "json"]);
    std::thread::sleep(Duration::from_millis(700));
    // A VM its manifest file declares changes through its file only.
    let (rc, _, err) = node.cli(&["vm", "stop", "owned"], None);
    assert_eq!(rc, 1, "{err}");
    assert!(
        err.contains("owned.yaml"),
        "the refusal names the file: {err}"
    );
    assert_eq!(phase(&node, "owned"), "Running");
    let line = events.until("the refusal as an event", Duration::from_secs(10), |l| {
        l.contains("owned") && l.contains("Warning")
    });
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "Warning", "{line}");
    drop(events);

    // Deleting it shows in the watch.
    ok(&node, &["delete", "vm", "web"]);
    watch.until("web DELETED", Duration::from_secs(10), |l| {
        l.contains("\"DELETED\"") && l.contains("\"web\"")
    });
    drop(watch);
    drop(table);

    // Every read command speaks JSON.
    let reads: &[&[&str]] = &[
        &["get", "-o", "json"],
        &["get", "vm", "-o", "json"],
        &["get", "vm", "owned", "-o", "json"],
        &["events", "-o", "json"],
        &["events", "vm", "owned", "-o", "json"],
        &["describe", "vm", "owned", "-o", "json"],
        &["version", "-o", "json"],
        &["volume", "list", "-o", "json"],
        &["replica", "list", "-o", "json"],
        &[
            "history",
            "vm",
            "owned",
            "--state-dir",
            &state,
            "-o",
            "json",
        ],
    ];
    for args in reads {
        let out = ok(&node, args);
        let v = json_of(args, &out);
        assert!(!v.is_null(), "{args:?}");
        let yaml: Vec<&str> = args
            .iter()
            .map(|a| if *a == "json" { "yaml" } else { a })
            .collect();
        let out = ok(&node, &yaml);
        let _: Value = serde_saphyr::from_str(out.split("\n---\n").next().unwrap())
            .unwrap_or_else(|e| panic!("deorch {yaml:?}: {e}:\n{out}"));
    }
    // By name: the object; a listing: a List, whatever its length.
    let v = json_of(&["get"], &ok(&node, &["get", "vm", "owned", "-o", "json"]));
    assert_eq!(v["metadata"]["name"], "owned");
    let v = json_of(&["get"], &ok(&node, &["get", "vm", "-o", "json"]));
    assert_eq!(v["kind"], "List");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["items"][0]["metadata"]["name"], "owned");
    let v = json_of(
        &["describe"],
        &ok(&node, &["describe", "vm", "owned", "-o", "json"]),
    );
    assert_eq!(v["object"]["metadata"]["name"], "owned");
    assert_eq!(v["object"]["status"]["phase"], "Running");
    assert!(v["events"].is_array(), "{v}");
    let v = json_of(&["version"], &ok(&node, &["version", "-o", "json"]));
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));

    // Exit codes.
    for args in [
        &["get", "vm", "nosuch"][..],
        &["vm", "stop", "nosuch"],
        &["vm", "restart", "--hard", "nosuch"],
        &["logs", "nosuch"],
        &["delete", "vm", "nosuch"],
        &["describe", "vm", "nosuch"],
    ] {
        let (rc, _, err) = node.cli(args, None);
        assert_eq!(rc, 3, "deorch {args:?} of a missing VM: {err}");
        assert!(err.contains("nosuch"), "{args:?}: {err}");
    }
    let (rc, _, err) = node.cli(&["logs", "owned"], None);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("keeps no serial console"), "{err}");
    let (rc, _, err) = node.cli(&["vm", "frobnicate", "owned"], None);
    assert_eq!(rc, 2, "{err}");
    let (rc, _, err) = common::cli_in(
        Some(&node.dir.join("nobody-listens.sock")),
        &["get", "vm"],
        None,
    );
    assert_eq!(rc, 4, "{err}");
    assert!(err.contains("cannot reach the node"), "{err}");
    let (rc, out, _) = node.cli(&["--help"], None);
    assert_eq!(rc, 0);
    assert!(out.contains("Exit codes: 0 done; 1 failed"), "{out}");
}

/// QMP `query-status` of the tiny VM.
fn qmp_status(node: &Node) -> String {
    let sock = deorch::qemu::cmdline::qmp_socket(&node.state.join("vms/default/tiny"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut q = deorch::qemu::qmp::Qmp::connect(&sock, Duration::from_secs(10))
            .await
            .expect("QMP connects");
        let s = q.execute("query-status", None).await.expect("query-status");
        s["status"].as_str().unwrap_or_default().to_string()
    })
}

fn pid(node: &Node) -> u64 {
    node.record("vm", "tiny")
        .and_then(|r| r.status)
        .and_then(|s| s["pid"].as_u64())
        .unwrap_or(0)
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

/// How many boots `deorch logs` shows, waiting up to `limit` for `want`.
fn boots(node: &Node, want: usize, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let out = ok(node, &["logs", "tiny"]);
        if out.matches(READY).count() >= want {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{want} boot(s) not seen in `deorch logs` within {limit:?}:\n{out}\nnode log:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const READY: &str = "DEORCH-GUEST-READY";
const BOOT: Duration = Duration::from_secs(90);

#[test]
fn power_verbs_and_logs_act_on_a_real_qemu_guest() {
    if !qemu_available() {
        return;
    }
    let (mut node, g) = common::qemu_node("cli-verbs-qemu");
    node.start();
    let yaml = format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: tiny}}\nspec:\n  boot: {{kernel: {k}, initrd: {i}, cmdline: \"{c}\"}}\n  machine: microvm\n  cpu: 1\n  memory: 128Mi\n---\napiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: tiny}}\nspec:\n  spacesuit: tiny\n  restartPolicy: Never\n  stopTimeout: 5s\n",
        k = g.join("vmlinuz").display(),
        i = g.join("initrd.img").display(),
        c = deorch::qemu::probe::TINY_CMDLINE,
    );
    let (rc, _, err) = node.cli(&["apply", "-f", "-"], Some(&yaml));
    assert_eq!(rc, 0, "{err}");
    node.wait_within("phase Running", BOOT, |n| phase(n, "tiny") == "Running");

    // The serial console through the socket: whole, its tail, followed.
    let out = boots(&node, 1, BOOT);
    let tail = ok(&node, &["logs", "tiny", "--tail", "2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    // The guest goes on printing: the tail is the log's end as it was
    // when asked, so at or after the end of what was read before it.
    let after = ok(&node, &["logs", "tiny"]);
    assert!(after.starts_with(&out), "the log only grows");
    let end = after[..].rfind(&tail).map(|at| at + tail.len());
    assert!(
        end.is_some_and(|e| e >= out.len()),
        "the tail is the log's end:\n{tail}\nlog before it:\n{out}\nafter:\n{after}"
    );
    let follow = Streaming::start(&node, &["logs", "tiny", "-f"]);
    follow.until("the first boot's marker", Duration::from_secs(10), |l| {
        l.contains(READY)
    });

    // The console: a ticket in every format, and the noVNC page opened
    // with its password ($BROWSER is echo here: it prints what it opens).
    let t = json_of(&["console"], &ok(&node, &["console", "tiny", "-o", "json"]));
    assert!(t["vncPort"].as_u64().is_some(), "{t}");
    let first = t["password"].as_str().unwrap().to_string();
    let y: Value = serde_saphyr::from_str(&ok(&node, &["console", "tiny", "-o", "yaml"])).unwrap();
    assert_ne!(
        y["password"].as_str().unwrap(),
        first,
        "a new ticket each time"
    );
    let opened = Command::new(env!("CARGO_BIN_EXE_deorch"))
        .args(["console", "tiny", "--open"])
        .env("DEORCH_SOCKET", &node.socket)
        .env("BROWSER", "echo")
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&opened.stdout),
        String::from_utf8_lossy(&opened.stderr),
    );
    if std::path::Path::new("/usr/share/novnc/vnc.html").exists() {
        assert!(opened.status.success(), "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "printed, then given to $BROWSER: {out}");
        assert_eq!(lines[0], lines[1]);
        assert!(
            lines[0].starts_with("file:///usr/share/novnc/vnc.html?host=")
                && lines[0].contains("&password="),
            "{out}"
        );
    } else {
        assert_eq!(opened.status.code(), Some(1));
        assert!(err.contains("install noVNC"), "{err}");
    }

    // Pause and resume: QMP `stop` and `cont`, the same process.
    let p1 = pid(&node);
    assert!(p1 > 0 && alive(p1));
    assert_eq!(qmp_status(&node), "running");
    let out = ok(&node, &["vm", "pause", "tiny"]);
    assert!(out.contains("Paused"), "{out}");
    assert_eq!(qmp_status(&node), "paused");
    ok(&node, &["vm", "resume", "tiny"]);
    assert_eq!(qmp_status(&node), "running");
    assert_eq!(pid(&node), p1);

    // A hard restart resets the guest in the same QEMU: it boots again.
    let out = ok(&node, &["vm", "restart", "tiny", "--hard"]);
    assert!(out.contains("reset"), "{out}");
    boots(&node, 2, BOOT);
    follow.until("the reset's boot marker", BOOT, |l| l.contains(READY));
    assert_eq!(pid(&node), p1, "a reset keeps the process");

    // Stop: the QEMU process ends; start: a new one boots, and the
    // follower goes on into the new log.
    let out = ok(&node, &["vm", "stop", "tiny"]);
    assert!(out.contains("Stopped"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(p1) {
        assert!(Instant::now() < deadline, "QEMU {p1} outlived the stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(&node, &["vm", "start", "tiny"]);
    let p2 = pid(&node);
    assert!(p2 > 0 && p2 != p1 && alive(p2));
    follow.until("the new process's boot marker", BOOT, |l| l.contains(READY));
    boots(&node, 1, BOOT);

    // A graceful restart: a new process again.
    ok(&node, &["vm", "restart", "tiny"]);
    let p3 = pid(&node);
    assert!(p3 > 0 && p3 != p2 && alive(p3) && !alive(p2));
    boots(&node, 1, BOOT);

    // QEMU killed under restartPolicy Never: the VM is down (Failed) with
    // spec.powerState still Running; `vm start` records a stop first,
    // then starts it (a bare new generation would not restart it).
    Command::new("kill")
        .args(["-9", &p3.to_string()])
        .status()
        .unwrap();
    node.wait_within("phase Failed", Duration::from_secs(30), |n| {
        phase(n, "tiny") == "Failed"
    });
    let out = ok(&node, &["vm", "start", "tiny"]);
    assert!(out.contains("Running"), "{out}");
    let p4 = pid(&node);
    assert!(p4 > 0 && p4 != p3 && alive(p4));
    assert_eq!(qmp_status(&node), "running");
    boots(&node, 1, BOOT);
}
