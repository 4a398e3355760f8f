//! Joining a cluster in minutes (`deorch node join`, issue 19): two
//! machines, each node in its own network namespace with its own state
//! dir, joined by a veth pair. `sat-a` is a member (HTTP API, signed
//! gossip); a new machine runs `deorch node join URL` with a config file,
//! asks, and waits; the owner approves with one signed command; the new
//! node is a member and runs a real QEMU guest placed on it, and its config
//! file holds what it learnt, so the service restarts it as a member.
//! Refusals: a request signed by another key, a name already taken; a
//! node nobody approved stays out.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{qemu_available, sh, tiny_guest, Node};
use deorch::http::client::{request, NodeUrl};
use deorch::http::join::JoinRequest;
use deorch::identity::{AddressType, Network, PrivateKey};

struct Lab {
    ns: [String; 2],
}

impl Lab {
    fn new() -> Lab {
        let pid = std::process::id();
        let ns = [format!("dj-a-{pid}"), format!("dj-b-{pid}")];
        for n in &ns {
            common::fresh_netns(n);
        }
        sh(&[
            "ip", "-n", &ns[0], "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
            "netns", &ns[1],
        ]);
        for (i, n) in ns.iter().enumerate() {
            let a = format!("10.196.0.{}/24", i + 1);
            sh(&["ip", "-n", n, "addr", "add", &a, "dev", "eth0"]);
            sh(&["ip", "-n", n, "link", "set", "eth0", "up"]);
        }
        Lab { ns }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Kill the QEMU of `vm` on `n` (a daemon's end never stops its VMs).
struct Qemu(Vec<std::path::PathBuf>);

impl Drop for Qemu {
    fn drop(&mut self) {
        for f in &self.0 {
            if let Ok(pid) = std::fs::read_to_string(f) {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
    }
}

fn in_ns(ns: &str) -> Vec<String> {
    vec!["ip".into(), "netns".into(), "exec".into(), ns.into()]
}

/// Where the test's own calls come from: the new machine's namespace.
const CALLER: usize = 1;

fn get_join(lab: &Lab, url: &NodeUrl) -> serde_json::Value {
    let r = common::in_netns(&lab.ns[CALLER], || {
        request(
            url,
            "GET",
            "/v1/join",
            None,
            None,
            b"",
            Duration::from_secs(5),
        )
        .unwrap()
    });
    assert_eq!(r.status, 200);
    r.json()
}

/// `deorch ARGS` run on the new machine (its namespace).
fn cli(lab: &Lab, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns[CALLER]])
        .arg(env!("CARGO_BIN_EXE_deorch"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_new_machine_joins_on_the_owners_approval_and_runs_a_vm_placed_on_it() {
    if !qemu_available() {
        return;
    }
    let guest = tiny_guest().0.parent().unwrap().to_path_buf();
    let lab = Lab::new();
    let owner_key = PrivateKey::generate(Network::Mainnet);
    let owner = owner_key.address(AddressType::P2wpkh).unwrap().to_string();
    let timings: Vec<String> = deorch::bench_cluster::FAST_TIMINGS
        .iter()
        .map(|s| s.to_string())
        .collect();

    // sat-a: a member, alone so far.
    let mut a = Node::new("join-a");
    a.name = "sat-a".into();
    a.wrap = in_ns(&lab.ns[0]);
    let a_id = common::give_node_key(&a);
    a.extra_args = [
        "--hypervisor",
        "fake",
        "--storage",
        "dir",
        "--cluster-owner",
        &owner,
        "--gossip-listen",
        "10.196.0.1:7946",
        "--http-listen",
        "10.196.0.1:0",
    ]
    .map(String::from)
    .to_vec();
    a.extra_args.extend(timings.clone());
    a.start();
    common::apply_owner_signed(
        &a,
        &owner_key,
        &common::members_policy(1, &[("sat-a", &a_id)], ""),
    );
    a.wait_for("the HTTP URL", |n| n.state.join("http-url").exists());
    let url_text = a.http_url();
    let url = NodeUrl::parse(&url_text).unwrap();
    assert_eq!(get_join(&lab, &url)["seeds"][0], "10.196.0.1:7946");

    // The new machine: a config file as the package ships one, and
    // `deorch node join URL --config FILE`.
    let mut b = Node::new("join-b");
    b.name = "sat-b".into();
    b.wrap = in_ns(&lab.ns[1]);
    b.call_timeout = Duration::from_secs(10);
    // Its own probe, not an earlier node's answer: what is tested is
    // that it runs while the node waits.
    b.shared_probe = false;
    std::fs::create_dir_all(&b.dir).unwrap();
    let config = b.dir.join("node.yaml");
    std::fs::write(
        &config,
        format!(
            "# the node's settings\nhypervisor: qemu\nstorage: dir\nprobeGuest: {}\nfenceTimeout: 0s\n",
            guest.display()
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let mut flags: Vec<String> = [
        "--config",
        &config_arg,
        "--gossip-listen",
        "10.196.0.2:7946",
    ]
    .map(String::from)
    .to_vec();
    flags.extend(timings);
    b.extra_args = flags.clone();
    b.subcommand = vec![
        "node".into(),
        "join".into(),
        url_text.clone(),
        "--expect-owner".into(),
        owner.clone(),
    ];
    b.spawn();

    // Its request waits on sat-a; it is not a member, and says so.
    let t = Instant::now();
    let b_id = loop {
        let reqs = get_join(&lab, &url)["requests"].clone();
        if let Some(r) = reqs.as_array().and_then(|r| r.first()) {
            assert_eq!(r["name"], "sat-b");
            assert_eq!(r["from"], "10.196.0.2");
            break r["address"].as_str().unwrap().to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no join request reached sat-a: {}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (code, out, err) = cli(&lab, &["node", "requests", "--node", &url_text]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sat-b") && out.contains(&b_id), "{out}");
    assert!(
        b.log_text().contains("deorch node approve sat-b"),
        "{}",
        b.log_text()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !b.socket.exists(),
        "the joining node runs before approval:\n{}",
        b.log_text()
    );

    // Refusals: a request in sat-b's name signed by another key, and a
    // name that is a member's.
    let cluster = owner.clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let other = PrivateKey::generate(Network::Mainnet);
    let other_id = other.address(AddressType::P2wpkh).unwrap().to_string();
    let mut forged = JoinRequest::signed(&other, &cluster, "sat-x", &other_id, now);
    forged.address = b_id.clone();
    let post = |req: &JoinRequest| {
        common::in_netns(&lab.ns[CALLER], || {
            request(
                &url,
                "POST",
                "/v1/join",
                Some("application/json"),
                None,
                &serde_json::to_vec(req).unwrap(),
                Duration::from_secs(5),
            )
            .unwrap()
        })
    };
    let r = post(&forged);
    assert_eq!(r.status, 400, "{}", r.json());
    assert!(r.json()["error"].as_str().unwrap().contains("signature"));
    let r = post(&JoinRequest::signed(
        &other, &cluster, "sat-a", &other_id, now,
    ));
    assert_eq!(r.status, 409, "{}", r.json());
    // A wrong owner key cannot approve.
    let not_owner = b.dir.join("not-owner.key");
    other.save(&not_owner).unwrap();
    let approve = |key: &std::path::Path| {
        cli(
            &lab,
            &[
                "node",
                "approve",
                "sat-b",
                "--node",
                &url_text,
                "--key",
                &key.display().to_string(),
            ],
        )
    };
    let (code, _, err) = approve(&not_owner);
    assert_ne!(code, 0, "a stranger approved a join");
    assert!(err.contains("refused"), "{err}");
    assert!(!b.socket.exists());

    // The new node probed its accelerator while it waited (an owner
    // takes seconds or minutes to approve; the probe boot takes up to 8 s
    // here, where /dev/kvm cannot boot a guest).
    b.wait_within(
        "the accelerator probed while waiting",
        Duration::from_secs(30),
        |n| {
            std::fs::read_to_string(&n.log)
                .unwrap_or_default()
                .contains("accelerator probed while waiting")
        },
    );
    assert!(b.state.join("accel.json").exists());

    // The owner approves: one signed command.
    let owner_file = b.dir.join("owner.key");
    owner_key.save(&owner_file).unwrap();
    let (code, out, err) = approve(&owner_file);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("generation 2"), "{out}");
    let approved = Instant::now();

    // A VM placed on the new node, signed by the owner, given to sat-a.
    let vm = format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: joined, generation: 1}}\nspec:\n  cpu: 1\n  memory: 128Mi\n  machine: microvm\n  boot: {{kernel: {k}, initrd: {i}, cmdline: \"{c}\"}}\n  placement: {{node: sat-b}}\n",
        k = guest.join("vmlinuz").display(),
        i = guest.join("initrd.img").display(),
        c = deorch::qemu::probe::TINY_CMDLINE,
    );
    common::apply_owner_signed(&a, &owner_key, &vm);
    let _qemu = Qemu(vec![deorch::qemu::cmdline::pidfile(
        &b.state.join("vms/default/joined"),
    )]);
    b.wait_up(Duration::from_secs(30));
    let admitted_in = approved.elapsed();
    a.wait_within("sat-a sees sat-b up", Duration::from_secs(30), |n| {
        common::members_up(n).contains(&b_id)
    });
    let member_in = approved.elapsed();
    b.wait_within(
        "the VM placed on sat-b runs there",
        Duration::from_secs(60),
        |n| {
            n.record("vm", "joined")
                .and_then(|r| r.status)
                .is_some_and(|s| s["phase"] == "Running" && s["node"] == "sat-b")
        },
    );
    let running_in = approved.elapsed();
    eprintln!(
        "after approval: sat-b runs as a member in {admitted_in:?}, sat-a sees it up in {member_in:?}, its VM runs in {running_in:?}"
    );
    assert!(
        running_in < Duration::from_secs(60),
        "placing VMs took {running_in:?} after approval"
    );
    assert!(get_join(&lab, &url)["requests"]
        .as_array()
        .unwrap()
        .is_empty());

    // The config file holds what joining learnt: the service restarts it
    // as a member with `node run --config FILE` alone.
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.starts_with("# the node's settings\n"), "{text}");
    assert!(text.contains(&format!("clusterOwner: {owner}")), "{text}");
    assert!(text.contains("seeds: [\"10.196.0.1:7946\"]"), "{text}");
    assert!(!b.state.join("join/approved.json").exists());
    b.stop();
    b.subcommand = vec!["node".into(), "run".into()];
    b.extra_args = vec!["--config".into(), config_arg];
    b.start();
    b.wait_within("sat-b sees sat-a up again", Duration::from_secs(30), |n| {
        common::members_up(n).contains(&a_id)
    });
}
