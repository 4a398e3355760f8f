//! `GET /metrics` on real node processes, read by a Prometheus
//! text-format parser that is not ours (`prometheus-parse`): who may read
//! it (an allowed network, the owner's or an admin's session; 401 and 403
//! otherwise), and that the series move as objects are applied and a VM
//! boots under the QEMU driver (objects per kind and phase, reconcile
//! durations, admission verdicts, VMs running, the VM's CPU time and
//! memory).

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{qemu_available, tiny_guest, Node};
use deorch::http::client::{request, NodeUrl, Reply};
use deorch::identity::{AddressType, Network, PrivateKey};
use prometheus_parse::{LineInfo, Scrape, Value};

fn user() -> (PrivateKey, String) {
    let k = PrivateKey::generate(Network::Mainnet);
    let a = k.address(AddressType::P2wpkh).unwrap().to_string();
    (k, a)
}

fn get(url: &NodeUrl, cookie: Option<&str>) -> Reply {
    request(
        url,
        "GET",
        "/metrics",
        None,
        cookie,
        b"",
        Duration::from_secs(10),
    )
    .unwrap()
}

fn session(url: &NodeUrl, key: &PrivateKey) -> String {
    let (_, token) = deorch::cli::http::login_once(url, key, AddressType::P2wpkh).unwrap();
    format!("deorch_session={token}")
}

/// A scrape, parsed; every line must be a comment, a `HELP`/`TYPE` line
/// or a sample as the text format defines them (the parser skips what it
/// cannot read, so a skipped line fails here).
fn parse(r: &Reply) -> Scrape {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(r.body.clone()).expect("UTF-8");
    for line in text.lines() {
        assert!(
            line.starts_with('#') || !matches!(LineInfo::parse(line), LineInfo::Ignored),
            "not a text-format line: {line:?}"
        );
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("a Prometheus scrape")
}

/// The value of the one series `name` with (at least) `labels`; 0 when
/// absent. Histograms give their count.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => panic!("{name} is a summary"),
        })
        .collect();
    assert!(found.len() <= 1, "{name}{labels:?}: {} series", found.len());
    found.first().copied().unwrap_or(0.0)
}

/// The sum over every series of `name` with `labels`.
fn sum(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn metrics_need_an_allowed_network_or_an_owner_or_admin_session() {
    let (owner_key, owner) = user();
    let node = common::node_with_http("metrics-access", &owner, &[]);
    let url = NodeUrl::parse(&node.http_url()).unwrap();

    let r = get(&url, None);
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["code"], "NoSession");
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("--metrics-allow"));
    let r = get(&url, Some("deorch_session=forged"));
    assert_eq!(r.status, 401);

    let (op_key, op) = user();
    let (admin_key, admin) = user();
    common::push_owner_signed(
        &url,
        &owner_key,
        &format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: AccessPolicy\nmetadata:\n  name: staff\n  generation: 1\nspec:\n  rules:\n    - subjects: [\"{op}\"]\n      role: operator\n    - subjects: [\"{admin}\"]\n      role: admin\n"
        ),
    );
    let r = get(&url, Some(&session(&url, &op_key)));
    assert_eq!(r.status, 403, "an operator is no admin");
    assert_eq!(r.json()["code"], "Denied");
    assert!(r.json()["error"].as_str().unwrap().contains(&op));
    for key in [&admin_key, &owner_key] {
        let s = parse(&get(&url, Some(&session(&url, key))));
        // The push above was counted, and the store holds it.
        assert!(
            value(
                &s,
                "deorch_admission_verdicts_total",
                &[("source", "push"), ("verdict", "Applied")]
            ) >= 1.0
        );
        assert_eq!(
            value(&s, "deorch_objects", &[("kind", "AccessPolicy")]),
            1.0,
            "the policy, whatever its phase"
        );
    }
    let log = node.log_text();
    assert!(log.contains("metrics refused"), "refusals are logged");

    // Allowed networks read it without a session; others still may not.
    let open = common::node_with_http("metrics-open", &owner, &["--metrics-allow", "127.0.0.0/8"]);
    let s = parse(&get(&NodeUrl::parse(&open.http_url()).unwrap(), None));
    assert_eq!(value(&s, "deorch_objects", &[("kind", "Satellite")]), 1.0);
    let elsewhere =
        common::node_with_http("metrics-else", &owner, &["--metrics-allow", "10.9.0.0/16"]);
    let r = get(&NodeUrl::parse(&elsewhere.http_url()).unwrap(), None);
    assert_eq!(r.status, 401);

    // A network that is not one is refused at start, by name.
    let dir = common::temp_dir("metrics-bad");
    let out = Command::new(env!("CARGO_BIN_EXE_deorch"))
        .args(["node", "run", "--hypervisor", "fake", "--storage", "fake"])
        .args(["--http-listen", "127.0.0.1:0", "--cluster-owner", &owner])
        .args(["--metrics-allow", "127.0.0.1/8,10.0.0.300/8"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(dir.join("s.sock"))
        .arg("--manifests")
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("metricsAllow") && err.contains("10.0.0.300/8"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn series_move_as_objects_are_applied_and_a_vm_boots() {
    if !qemu_available() {
        return;
    }
    let g = tiny_guest().0.parent().unwrap().to_path_buf();
    let (_, owner) = user();
    let mut node = Node::new("metrics-qemu");
    node.extra_args = [
        "--hypervisor",
        "qemu",
        "--probe-guest",
        &g.display().to_string(),
        "--console-address",
        "127.0.0.1",
        "--console-ports",
        "23000-23099",
        "--http-listen",
        "127.0.0.1:0",
        "--cluster-owner",
        &owner,
        "--metrics-allow",
        "127.0.0.1/32",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    node.start();
    let url = NodeUrl::parse(&node.http_url()).unwrap();
    let before = parse(&get(&url, None));
    assert_eq!(
        sum(&before, "deorch_objects", &[("kind", "VirtualMachine")]),
        0.0
    );
    assert_eq!(value(&before, "deorch_vms_running", &[]), 0.0);
    for state in ["ready", "delayed", "processing", "parked"] {
        assert!(
            before
                .samples
                .iter()
                .any(|x| x.metric == "deorch_reconcile_queue_depth"
                    && x.labels.get("state") == Some(state)),
            "queue depth {state}"
        );
    }
    let reconciled = |s: &Scrape, kind: &str| {
        value(
            s,
            "deorch_reconcile_duration_seconds_count",
            &[("kind", kind), ("result", "ok")],
        )
    };
    let applied = |s: &Scrape| {
        value(
            s,
            "deorch_admission_verdicts_total",
            &[("source", "file"), ("verdict", "Applied")],
        )
    };

    // Objects applied from the manifest directory: a network, the tiny
    // guest's spacesuit, a VM that boots it.
    std::fs::write(
        node.manifests.join("network.yaml"),
        "apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata: {name: default}\nspec:\n  ipv4: {subnet: 10.43.0.0/24, gateway: 10.43.0.1}\n",
    )
    .unwrap();
    std::fs::write(
        node.manifests.join("tiny.yaml"),
        format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: tiny}}\nspec:\n  boot: {{kernel: {k}, initrd: {i}, cmdline: \"{c}\"}}\n  machine: microvm\n  cpu: 1\n  memory: 128Mi\n",
            k = g.join("vmlinuz").display(),
            i = g.join("initrd.img").display(),
            c = deorch::qemu::probe::TINY_CMDLINE,
        ),
    )
    .unwrap();
    std::fs::write(
        node.manifests.join("vm.yaml"),
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: tiny\nspec:\n  spacesuit: tiny\n  powerState: Running\n  stopTimeout: 5s\n  nics:\n    - name: eth0\n      network: default\n",
    )
    .unwrap();
    node.wait_for("the VM running", |n| {
        n.record("vm", "tiny")
            .and_then(|r| r.status)
            .is_some_and(|s| s["phase"] == "Running")
    });
    let running = parse(&get(&url, None));
    assert_eq!(
        value(
            &running,
            "deorch_objects",
            &[("kind", "VirtualMachine"), ("phase", "Running")]
        ),
        1.0
    );
    assert_eq!(sum(&running, "deorch_objects", &[("kind", "Network")]), 1.0);
    assert_eq!(
        sum(&running, "deorch_objects", &[("kind", "Spacesuit")]),
        1.0
    );
    assert!(
        applied(&running) >= applied(&before) + 3.0,
        "three documents"
    );
    assert!(reconciled(&running, "VirtualMachine") > reconciled(&before, "VirtualMachine"));
    assert!(reconciled(&running, "Spacesuit") > reconciled(&before, "Spacesuit"));
    // The histogram's buckets, sum and count agree.
    let h = running
        .samples
        .iter()
        .find(|x| {
            x.metric == "deorch_reconcile_duration_seconds"
                && x.labels.get("kind") == Some("VirtualMachine")
                && x.labels.get("result") == Some("ok")
        })
        .expect("the VM's reconcile histogram");
    let Value::Histogram(buckets) = &h.value else {
        panic!("{h:?}")
    };
    let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
    assert_eq!(inf.count, reconciled(&running, "VirtualMachine"));
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
    assert!(
        value(
            &running,
            "deorch_reconcile_duration_seconds_sum",
            &[("kind", "VirtualMachine"), ("result", "ok")]
        ) > 0.0
    );

    // The VM's QEMU process: counted, with its CPU time and memory.
    assert_eq!(value(&running, "deorch_vms_running", &[]), 1.0);
    let vm = [("namespace", "default"), ("name", "tiny")];
    let rss = value(&running, "deorch_vm_memory_resident_bytes", &vm);
    assert!(rss > 8.0 * 1024.0 * 1024.0, "QEMU resident: {rss}");
    let cpu0 = value(&running, "deorch_vm_cpu_seconds_total", &vm);
    assert!(cpu0 > 0.0, "CPU time of a booted QEMU: {cpu0}");
    // A TCG guest keeps burning CPU: the counter grows between scrapes.
    let deadline = Instant::now() + Duration::from_secs(20);
    let cpu1 = loop {
        std::thread::sleep(Duration::from_millis(500));
        let c = value(&parse(&get(&url, None)), "deorch_vm_cpu_seconds_total", &vm);
        if c > cpu0 || Instant::now() > deadline {
            break c;
        }
    };
    assert!(cpu1 > cpu0, "CPU seconds did not grow: {cpu0} then {cpu1}");
    // The figure is QEMU's own (proc(5)): what `ps` says of that process.
    let pid = node.record("vm", "tiny").unwrap().status.unwrap()["pid"]
        .as_u64()
        .expect("pid in status");
    let ps = Command::new("ps")
        .args(["-o", "rss=", "-p", &pid.to_string()])
        .output()
        .unwrap();
    let ps_rss: f64 = String::from_utf8_lossy(&ps.stdout)
        .trim()
        .parse::<f64>()
        .unwrap()
        * 1024.0;
    let now_rss = value(
        &parse(&get(&url, None)),
        "deorch_vm_memory_resident_bytes",
        &vm,
    );
    assert!(
        (now_rss - ps_rss).abs() < 0.25 * ps_rss,
        "metrics {now_rss} vs ps {ps_rss}"
    );

    // Deleted: the VM's series go with its process.
    std::fs::remove_file(node.manifests.join("vm.yaml")).unwrap();
    node.wait_for("the VM gone", |n| n.record("vm", "tiny").is_none());
    let deadline = Instant::now() + Duration::from_secs(20);
    let gone = loop {
        let s = parse(&get(&url, None));
        if value(&s, "deorch_vms_running", &[]) == 0.0 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(value(&gone, "deorch_vms_running", &[]), 0.0);
    assert_eq!(value(&gone, "deorch_vm_cpu_seconds_total", &vm), 0.0);
    assert_eq!(
        sum(&gone, "deorch_objects", &[("kind", "VirtualMachine")]),
        0.0
    );
    let names: HashMap<&str, usize> = gone.samples.iter().fold(HashMap::new(), |mut m, x| {
        *m.entry(x.metric.as_str()).or_default() += 1;
        m
    });
    eprintln!("series after the run: {names:?}");
}

/// Poll `url`'s metrics until `f` holds (20 s at most); the last scrape.
fn scrape_until(url: &NodeUrl, what: &str, f: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = parse(&get(url, None));
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {:?}", s.samples);
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn gossip_members_traffic_and_placement_decisions_move() {
    let (_, owner) = user();
    let start = |name: &str, seed: Option<&str>| {
        let mut n = Node::new(&format!("metrics-{name}"));
        n.name = name.into();
        n.extra_args.extend(common::fast_gossip_flags());
        n.extra_args.extend(
            [
                "--http-listen",
                "127.0.0.1:0",
                "--cluster-owner",
                &owner,
                "--metrics-allow",
                "127.0.0.1/32",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        if let Some(s) = seed {
            n.extra_args.extend(["--seed".to_string(), s.to_string()]);
        }
        n.start();
        n
    };
    let a = start("gossip-a", None);
    let url = NodeUrl::parse(&a.http_url()).unwrap();
    let alone = parse(&get(&url, None));
    assert_eq!(
        value(&alone, "deorch_gossip_members", &[("state", "alive")]),
        0.0
    );
    let mut b = start("gossip-b", Some(&common::gossip_address(&a)));
    let joined = scrape_until(&url, "b alive in a's view, traffic both ways", |s| {
        value(s, "deorch_gossip_members", &[("state", "alive")]) == 1.0
            && value(s, "deorch_gossip_bytes_total", &[("direction", "received")]) > 0.0
    });
    let sent = value(
        &joined,
        "deorch_gossip_bytes_total",
        &[("direction", "sent")],
    );
    assert!(sent > 0.0);
    assert!(value(&joined, "deorch_gossip_messages_sent_total", &[]) > 0.0);

    // A VM placed automatically: its election is decided (here or on b).
    std::fs::write(a.manifests.join("vm.yaml"), common::vm_yaml("web", "64Mi")).unwrap();
    let placed = scrape_until(&url, "a placement decision", |s| {
        value(
            s,
            "deorch_placement_decisions_total",
            &[("decision", "Here")],
        ) + value(
            s,
            "deorch_placement_decisions_total",
            &[("decision", "Elsewhere")],
        ) >= 1.0
    });
    assert!(
        value(
            &placed,
            "deorch_gossip_bytes_total",
            &[("direction", "sent")]
        ) > sent
    );

    // b dies: a suspects it, then declares it dead.
    b.kill();
    scrape_until(&url, "b suspected or dead", |s| {
        value(s, "deorch_gossip_members", &[("state", "alive")]) == 0.0
            && value(s, "deorch_gossip_members", &[("state", "suspect")])
                + value(s, "deorch_gossip_members", &[("state", "dead")])
                == 1.0
    });
}

#[test]
fn a_replica_is_timed_from_its_declaration_to_ready() {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "qemu-img is missing and CI=true"
        );
        eprintln!("SKIPPED: qemu-img not installed");
        return;
    }
    let (_, owner) = user();
    let mut node = Node::new("metrics-replica");
    node.extra_args = [
        "--hypervisor",
        "fake",
        "--storage",
        "dir",
        "--http-listen",
        "127.0.0.1:0",
        "--cluster-owner",
        &owner,
        "--metrics-allow",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    node.start();
    let url = NodeUrl::parse(&node.http_url()).unwrap();
    let vm = "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: web\nspec:\n  cpu: 1\n  memory: 64Mi\n  disks:\n    - name: root\n      size: 8Mi\n      source:\n        blank: {}\n";
    let (code, out, err) = node.cli(&["apply", "-f", "-"], Some(vm));
    assert_eq!(code, 0, "{out}{err}");
    node.wait_for("web running", |n| {
        n.record("VirtualMachine", "web")
            .and_then(|r| r.status)
            .is_some_and(|s| s["phase"] == "Running")
    });
    let timed = |s: &Scrape| {
        value(
            s,
            "deorch_settle_duration_seconds_count",
            &[("kind", "Replica"), ("phase", "Ready")],
        )
    };
    assert_eq!(timed(&parse(&get(&url, None))), 0.0);
    let t0 = Instant::now();
    let (code, out, err) = node.cli(&["replica", "create", "web", "--name", "r1"], None);
    assert_eq!(code, 0, "{out}{err}");
    let s = scrape_until(&url, "the replica timed", |s| timed(s) == 1.0);
    let took = value(
        &s,
        "deorch_settle_duration_seconds_sum",
        &[("kind", "Replica"), ("phase", "Ready")],
    );
    assert!(
        took > 0.0 && took <= t0.elapsed().as_secs_f64(),
        "{took} s, within the {:?} the command took",
        t0.elapsed()
    );
    assert_eq!(
        value(
            &s,
            "deorch_objects",
            &[("kind", "Replica"), ("phase", "Ready")]
        ),
        1.0
    );
    assert!(
        value(
            &s,
            "deorch_admission_verdicts_total",
            &[("source", "api"), ("verdict", "Applied")]
        ) >= 2.0,
        "the VM and the replica, from the local API"
    );
}
