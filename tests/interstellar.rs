//! Layer 2 across satellites, on real kernels: three node daemons, each
//! in its own network namespace with its own state dir, joined by veth
//! "wires" to a switch (a bridge in a hub namespace) that is the
//! underlay. VM ports are namespace endpoints attached where the VM's
//! tap would be (a veth named and marked as deorch names and marks the
//! tap, its other end in a namespace of its own with the VM's MAC and
//! address), so each endpoint is a machine as fast as the kernel: the
//! fake hypervisor "runs" the VMs, everything on the wire is real.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{fresh_netns, sh, Node};
use deorch::api::{Request, Response};
use deorch::model::names;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Namespaces: one per node on a switch, and endpoints; deleted on drop.
struct Lab {
    p: String,
    ns: Vec<String>,
    addr: Vec<String>,
    hub: String,
    others: Vec<String>,
}

impl Lab {
    fn new(n: usize) -> Lab {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let p = format!("is{:x}{seq}", std::process::id() & 0xffff);
        let net = 100 + (std::process::id() % 100) as u8;
        let hub = format!("{p}h");
        let ns: Vec<String> = (0..n).map(|i| format!("{p}n{i}")).collect();
        let addr: Vec<String> = (0..n)
            .map(|i| format!("10.{net}.{}.{}", 200 + seq, i + 1))
            .collect();
        for x in ns.iter().chain([&hub]) {
            fresh_netns(x);
        }
        sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
        let lab = Lab {
            p,
            ns,
            addr,
            hub,
            others: Vec::new(),
        };
        for i in 0..n {
            lab.wire(&lab.ns[i], &format!("v{i}"), &format!("{}/24", lab.addr[i]));
        }
        lab
    }

    /// A veth from namespace `ns` (as `eth0`... named `name`) to the
    /// switch, with `cidr` on it.
    fn wire(&self, ns: &str, tag: &str, cidr: &str) {
        let (v, h) = (format!("{}{tag}", self.p), format!("{}h{tag}", self.p));
        sh(&["ip", "link", "add", &v, "type", "veth", "peer", "name", &h]);
        sh(&["ip", "link", "set", &v, "netns", ns]);
        sh(&["ip", "link", "set", &h, "netns", &self.hub]);
        sh(&[
            "ip", "-n", &self.hub, "link", "set", &h, "master", "br0", "up",
        ]);
        sh(&["ip", "-n", ns, "addr", "add", cidr, "dev", &v]);
        sh(&["ip", "-n", ns, "link", "set", &v, "up"]);
    }

    /// A machine on the switch that is no node (it is not admitted).
    fn stranger(&mut self) -> (String, String) {
        let ns = format!("{}x", self.p);
        fresh_netns(&ns);
        let a = self.addr[0].rsplit_once('.').unwrap().0.to_string() + ".99";
        self.wire(&ns, "x", &format!("{a}/24"));
        self.others.push(ns.clone());
        (ns, a)
    }

    /// The port of `tenant/vm`'s NIC eth0 on node `i`: a veth named and
    /// marked as deorch's tap, its other end the VM (namespace returned).
    fn endpoint(&mut self, i: usize, tenant: &str, vm: &str, ip: &str) -> String {
        let tap = names::tap(tenant, vm, "eth0");
        let mac = names::mac(tenant, vm, "eth0");
        let ep = format!("{}e{}", self.p, self.others.len());
        fresh_netns(&ep);
        self.others.push(ep.clone());
        let node = &self.ns[i];
        sh(&[
            "ip", "-n", node, "link", "add", &tap, "type", "veth", "peer", "name", "eth0", "netns",
            &ep,
        ]);
        sh(&["ip", "-n", node, "link", "set", &tap, "alias", "deorch:tap"]);
        sh(&["ip", "-n", &ep, "link", "set", "eth0", "address", &mac]);
        sh(&[
            "ip",
            "-n",
            &ep,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &ep, "link", "set", "eth0", "mtu", "1450", "up"]);
        ep
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in self.ns.iter().chain(&self.others).chain([&self.hub]) {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// A node daemon in namespace `i` of the lab: linux networking, the fake
/// hypervisor, gossip on its wire.
fn node(lab: &Lab, i: usize, seed: Option<&str>) -> Node {
    let name = format!("sat-{}", (b'a' + i as u8) as char);
    let mut n = Node::new(&format!("l2-{name}"));
    n.name = name;
    n.wrap = vec![
        "nsenter".into(),
        format!("--net=/var/run/netns/{}", lab.ns[i]),
        "--".into(),
    ];
    n.extra_args.extend(
        [
            "--net",
            "linux",
            "--gossip-listen",
            &format!("{}:7946", lab.addr[i]),
            "--cluster",
            "l2",
            "--gossip-verify",
            "unsigned",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(
            deorch::bench_cluster::FAST_TIMINGS
                .iter()
                .map(|s| s.to_string()),
        ),
    );
    if let Some(s) = seed {
        n.extra_args.extend(["--seed".into(), s.into()]);
    }
    n.start();
    n
}

fn network(tenant: &str, mode: &str) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata: {{name: lan, namespace: {tenant}}}\nspec:\n  ipv4: {{subnet: 10.77.0.0/24, gateway: 10.77.0.1}}\n  isolation: {{mode: {mode}}}\n---\n"
    )
}

fn vm(tenant: &str, name: &str, node: &str, ip: &str) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: {name}, namespace: {tenant}}}\nspec:\n  cpu: 1\n  memory: 64Mi\n  placement: {{node: {node}}}\n  nics:\n    - {{name: eth0, network: lan, ipv4: {ip}}}\n---\n"
    )
}

fn record(n: &Node, kind: &str, ns: &str, name: &str) -> Option<deorch::store::Record> {
    match n.call(&Request::Get {
        kind: Some(kind.into()),
        namespace: Some(ns.into()),
        name: Some(name.into()),
    }) {
        Ok(Response::Objects { mut records }) => records.pop(),
        _ => None,
    }
}

fn status(n: &Node, kind: &str, ns: &str, name: &str) -> serde_json::Value {
    record(n, kind, ns, name)
        .and_then(|r| r.status)
        .unwrap_or_default()
}

use common::wait_or_logs as wait;

fn pings(ep: &str, ip: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ep, "busybox", "ping", "-c", "1", "-W", "1", ip,
        ])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn require_tools() -> bool {
    let missing: Vec<&str> = ["nft", "bridge", "tcpdump", "python3", "busybox"]
        .into_iter()
        .filter(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have {missing:?} (scripts/test.sh installs nftables, iproute2, tcpdump, python3)"
    );
    eprintln!("skipping: {missing:?} not installed");
    false
}

fn spoof(ep: &str, kind: &str, own: (&str, &str), victim: (&str, &str)) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/spoof.py");
    sh(&[
        "ip",
        "netns",
        "exec",
        ep,
        "python3",
        script,
        "eth0",
        kind,
        own.0,
        own.1,
        victim.0,
        victim.1,
        "10.77.0.1",
    ]);
}

/// Two tenants, each with an interstellar `lan` on the same subnet
/// 10.77.0.0/24 across three nodes (acme's with ARP, beta's ARP-less),
/// their VMs pinned one per node with the same addresses. Every VM
/// reaches its tenant's others across nodes; no frame of one tenant is
/// ever seen by the other's VMs; not one ARP frame of the ARP-less
/// segment crosses the underlay (while acme's do, so the capture sees
/// them); a stranger on the underlay cannot inject into a segment; each
/// forged frame a hostile VM sends is dropped at its port, counted in its
/// status, and never reaches its neighbour; a third tenant that pins
/// acme's VNI takes acme's segment down (never joins it) until it leaves.
#[test]
fn interstellars_join_a_tenants_vms_across_nodes_and_nothing_else() {
    if !require_tools() {
        return;
    }
    let mut lab = Lab::new(3);
    let pcap_dir = common::temp_dir("l2-pcap");
    let mut underlay = common::capture(&lab.hub, "br0", &pcap_dir.join("underlay.pcap"));
    let seed = format!("{}:7946", lab.addr[0]);
    let nodes: Vec<Node> = (0..3)
        .map(|i| node(&lab, i, (i > 0).then_some(seed.as_str())))
        .collect();
    let ips = ["10.77.0.10", "10.77.0.11", "10.77.0.12"];
    let mut acme = Vec::new();
    let mut beta = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        acme.push(lab.endpoint(i, "acme", &format!("a{i}"), ip));
        beta.push(lab.endpoint(i, "beta", &format!("b{i}"), ip));
    }
    let mut yaml = network("acme", "Interstellar") + &network("beta", "ArplessInterstellar");
    for (i, n) in nodes.iter().enumerate() {
        yaml += &vm("acme", &format!("a{i}"), &n.name, ips[i]);
        yaml += &vm("beta", &format!("b{i}"), &n.name, ips[i]);
    }
    std::fs::write(nodes[0].manifests.join("l2.yaml"), yaml).unwrap();
    let running = |n: &Node, ns: &str, vm: &str| {
        let s = status(n, "vm", ns, vm);
        s["phase"] == "Running" && s["node"] == n.name.as_str()
    };
    wait(
        "every VM runs on its node",
        Duration::from_secs(60),
        &nodes,
        || {
            nodes.iter().enumerate().all(|(i, n)| {
                running(n, "acme", &format!("a{i}")) && running(n, "beta", &format!("b{i}"))
            })
        },
    );
    // The Networks' reconciles report their segments (a VM may run
    // before its node's Network status is written).
    let vni = |t: &str| status(&nodes[0], "network", t, "lan")["interstellar"]["vni"].as_u64();
    wait(
        "both segments in node 0's Network status",
        Duration::from_secs(30),
        &nodes,
        || vni("acme").is_some() && vni("beta").is_some(),
    );
    let (vni_acme, vni_beta) = (vni("acme").unwrap(), vni("beta").unwrap());
    assert_ne!(vni_acme, vni_beta);

    // Beta's frames, as seen by acme's VMs (and the other way round).
    let mac = |t: &str, i: usize| names::mac(t, &format!("{}{i}", &t[..1]), "eth0");
    let mut cap_a: Vec<common::NsProc> = (0..3)
        .map(|i| common::capture(&acme[i], "eth0", &pcap_dir.join(format!("a{i}.pcap"))))
        .collect();
    let mut cap_b: Vec<common::NsProc> = (0..3)
        .map(|i| common::capture(&beta[i], "eth0", &pcap_dir.join(format!("b{i}.pcap"))))
        .collect();

    for (t, eps) in [("acme", &acme), ("beta", &beta)] {
        for (i, ep) in eps.iter().enumerate() {
            for j in (0..3).filter(|j| *j != i) {
                wait(
                    &format!(
                        "{t}: VM {i} (node {i}) pings VM {j} (node {j}) at {}",
                        ips[j]
                    ),
                    Duration::from_secs(30),
                    &nodes,
                    || pings(ep, ips[j]),
                );
            }
        }
    }
    eprintln!("every VM reached its tenant's two others across nodes");

    // A hostile VM on acme's segment: each forged frame is dropped at its
    // port and counted in its status.
    let own = (mac("acme", 0), ips[0]);
    let victim = (mac("acme", 1), ips[1]);
    let kinds = [
        ("mac", "mac"),
        ("ip", "ip"),
        ("garp", "arp"),
        ("dhcp-server", "dhcpServer"),
        ("relay-reply", "dhcpServer"),
        ("chaddr", "chaddr"),
        ("ra", "routerAdvert"),
    ];
    for (kind, _) in kinds {
        spoof(&acme[0], kind, (&own.0, own.1), (&victim.0, victim.1));
    }
    wait(
        "every forged frame counted in a0's status",
        Duration::from_secs(15),
        &nodes,
        || {
            let d = &status(&nodes[0], "vm", "acme", "a0")["nics"]["eth0"]["dropped"];
            kinds
                .iter()
                .all(|(_, rule)| d[rule].as_u64().unwrap_or(0) >= 3)
        },
    );
    let dropped = status(&nodes[0], "vm", "acme", "a0")["nics"]["eth0"]["dropped"].clone();
    eprintln!("a0's port dropped: {dropped}");

    // A stranger on the underlay sends VXLAN to a node: refused.
    let (stranger, _) = lab.stranger();
    let inject = format!(
        "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); [s.sendto(bytes([8,0,0,0])+({vni_acme}).to_bytes(3,'big')+bytes(1)+bytes(64), ('{}', 4789)) for _ in range(5)]",
        lab.addr[0]
    );
    sh(&["ip", "netns", "exec", &stranger, "python3", "-c", &inject]);
    let refused = || {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &lab.ns[0], "nft", "-j", "list", "counters", "table", "inet",
                "deorch",
            ])
            .output()
            .unwrap();
        deorch::fabric::parse_counters(&String::from_utf8_lossy(&out.stdout))
            .get(deorch::fabric::UNDERLAY_REFUSED)
            .copied()
            .unwrap_or(0)
    };
    wait(
        "the stranger's datagrams are refused",
        Duration::from_secs(5),
        &nodes,
        || refused() >= 5,
    );

    std::thread::sleep(Duration::from_millis(500));
    // SIGINT: each tcpdump writes what it holds before it exits.
    for c in cap_a.iter_mut().chain(cap_b.iter_mut()) {
        c.interrupt();
    }
    underlay.interrupt();
    // Isolation: no frame from the other tenant's MACs, ever.
    for i in 0..3 {
        let a = pcap_dir.join(format!("a{i}.pcap"));
        let b = pcap_dir.join(format!("b{i}.pcap"));
        let beta_macs = (0..3)
            .map(|j| format!("ether src {}", mac("beta", j)))
            .collect::<Vec<_>>()
            .join(" or ");
        let acme_macs = (0..3)
            .map(|j| format!("ether src {}", mac("acme", j)))
            .collect::<Vec<_>>()
            .join(" or ");
        assert_eq!(
            common::pcap_count(&a, &beta_macs),
            0,
            "acme VM {i} saw beta's frames"
        );
        assert_eq!(
            common::pcap_count(&b, &acme_macs),
            0,
            "beta VM {i} saw acme's frames"
        );
        assert!(
            common::pcap_count(&a, "icmp") > 0,
            "acme VM {i}'s capture holds its pings"
        );
        assert!(
            common::pcap_count(&b, "icmp") > 0,
            "beta VM {i}'s capture holds its pings"
        );
    }
    // The forged frames never reached the victim.
    let a1 = pcap_dir.join("a1.pcap");
    assert_eq!(
        common::pcap_count(&a1, "ether src 52:54:00:de:ad:01"),
        0,
        "a frame from a forged MAC"
    );
    assert_eq!(
        common::pcap_count(&a1, "src host 10.77.0.99"),
        0,
        "a packet from a forged address"
    );
    assert_eq!(
        common::pcap_count(&a1, "udp src port 67"),
        0,
        "a forged DHCP reply"
    );
    assert_eq!(
        common::pcap_count(
            &a1,
            &format!("arp and ether src {} and arp[14:4] = 0x0a4d000b", own.0)
        ),
        0,
        "a gratuitous ARP claiming a1's address"
    );
    assert_eq!(
        common::pcap_count(&a1, "icmp6 and ip6[40] = 134"),
        0,
        "a router advertisement"
    );
    // The underlay: VXLAN of both segments crossed it; ARP only acme's.
    let u = pcap_dir.join("underlay.pcap");
    let on = |vni: u64, inner: &str| {
        common::pcap_count(
            &u,
            &format!("udp dst port 4789 and (udp[12:4] >> 8) = {vni}{inner}"),
        )
    };
    let arp = " and udp[28:2] = 0x0806";
    eprintln!(
        "underlay: acme {} frames ({} ARP), beta {} frames ({} ARP)",
        on(vni_acme, ""),
        on(vni_acme, arp),
        on(vni_beta, ""),
        on(vni_beta, arp)
    );
    assert!(on(vni_beta, "") > 0, "beta's traffic crossed the underlay");
    assert!(
        on(vni_acme, arp) > 0,
        "acme's ARP crossed the underlay (the capture sees ARP)"
    );
    assert_eq!(
        on(vni_beta, arp),
        0,
        "an ARP frame of the ARP-less segment crossed the underlay"
    );
    // A third tenant pins acme's VNI: neither segment stays up (no
    // tenant ever shares another's segment), until it goes away.
    let gamma = format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata: {{name: lan, namespace: gamma}}\nspec:\n  ipv4: {{subnet: 10.77.0.0/24}}\n  isolation: {{mode: Interstellar, vni: {vni_acme}}}\n"
    );
    let gamma_file = nodes[1].manifests.join("gamma.yaml");
    std::fs::write(&gamma_file, gamma).unwrap();
    let reason = |n: &Node| {
        status(n, "network", "acme", "lan")["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["reason"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    wait(
        "acme's segment is down on every node, its status saying why",
        Duration::from_secs(20),
        &nodes,
        || {
            !pings(&acme[0], ips[1])
                && nodes
                    .iter()
                    .all(|n| reason(n).contains(&"VniCollision".to_string()))
        },
    );
    wait(
        "beta's segment is untouched",
        Duration::from_secs(10),
        &nodes,
        || pings(&beta[0], ips[1]),
    );
    std::fs::remove_file(&gamma_file).unwrap();
    wait(
        "acme's segment is back once the collision is gone",
        Duration::from_secs(30),
        &nodes,
        || pings(&acme[0], ips[1]) && pings(&acme[0], ips[2]),
    );
    for n in &nodes {
        assert!(
            !n.log_text().contains("fabric: a step failed"),
            "{}: {}",
            n.name,
            n.log_text()
        );
    }
    let _ = std::fs::remove_dir_all(&pcap_dir);
}

/// A Network with an uplink is the physical segment behind it: a VM
/// reaches a machine on the far side of the node's interface; without the
/// uplink the bridge is host-only again and the interface is released.
#[test]
fn an_uplink_puts_a_network_on_the_physical_segment_and_host_only_takes_it_off() {
    if !require_tools() {
        return;
    }
    let mut lab = Lab::new(1);
    let n = node(&lab, 0, None);
    // The machine on the physical segment, behind the node's `phys0`.
    let far = format!("{}f", lab.p);
    fresh_netns(&far);
    lab.others.push(far.clone());
    sh(&[
        "ip", "-n", &lab.ns[0], "link", "add", "phys0", "type", "veth", "peer", "name", "eth0",
        "netns", &far,
    ]);
    sh(&[
        "ip",
        "-n",
        &far,
        "addr",
        "add",
        "10.88.0.5/24",
        "dev",
        "eth0",
    ]);
    sh(&["ip", "-n", &far, "link", "set", "eth0", "up"]);
    let ep = lab.endpoint(0, "default", "v0", "10.88.0.10");
    sh(&["ip", "-n", &ep, "link", "set", "eth0", "mtu", "1500"]);
    let net = |uplink: &str| {
        format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata: {{name: lan}}\nspec:\n  ipv4: {{subnet: 10.88.0.0/24, gateway: 10.88.0.1}}\n{uplink}---\n"
        )
    };
    let file = n.manifests.join("lan.yaml");
    std::fs::write(
        &file,
        net("  uplink: phys0\n") + &vm("default", "v0", &n.name, "10.88.0.10"),
    )
    .unwrap();
    let nodes = [n];
    wait(
        "the VM reaches the machine behind the uplink",
        Duration::from_secs(30),
        &nodes,
        || pings(&ep, "10.88.0.5"),
    );
    let link = |dev: &str| {
        let out = Command::new("ip")
            .args(["-n", &lab.ns[0], "-j", "link", "show", "dev", dev])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()[0].clone()
    };
    let bridge = status(&nodes[0], "network", "default", "lan")["bridge"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(link("phys0")["master"], bridge.as_str());
    std::fs::write(
        &file,
        net("") + &vm("default", "v0", &nodes[0].name, "10.88.0.10"),
    )
    .unwrap();
    wait(
        "the uplink is released",
        Duration::from_secs(30),
        &nodes,
        || link("phys0")["master"].is_null(),
    );
    assert!(
        !pings(&ep, "10.88.0.5"),
        "host-only: the far machine is out of reach"
    );
    assert!(
        pings(&ep, "10.88.0.1"),
        "host-only: the node is its gateway"
    );
}

/// iperf3 from endpoint `client` to `server_ip` (a server running in the
/// endpoint that holds it) for `secs`: received bits per second.
fn iperf(client: &str, server_ip: &str, secs: u32) -> f64 {
    let out = Command::new("ip")
        .args([
            "netns", "exec", client, "iperf3", "-J", "-c", server_ip, "-t",
        ])
        .arg(secs.to_string())
        .output()
        .expect("iperf3");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "iperf3: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 answered {v}"))
}

fn iperf_server(ep: &str) -> Child {
    let c = Command::new("ip")
        .args(["netns", "exec", ep, "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    std::thread::sleep(Duration::from_millis(300));
    c
}

fn p50(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The figures of docs/PERFORMANCE.md, "Interstellars": (1) endpoint to
/// endpoint throughput across two nodes over an interstellar with all of
/// deorch's rules on (anti-spoofing on both ports, the underlay filter),
/// beside a bare VXLAN made by hand with no rule, in the same run, runs
/// alternating; (2) how long after a placement change every node's
/// forwarding entries follow the VM: end to end (the manifest written on
/// one node to the entry changed on another) and the fabric agent's own
/// part (from the election change it is told of to the kernel holding
/// it, its log's `since_change_us`).
/// `cargo nextest run --release --test interstellar --run-ignored only bench --no-capture`
#[test]
#[ignore = "a measurement (docs/PERFORMANCE.md), run on demand"]
fn bench_interstellar_figures() {
    assert!(require_tools(), "the bench needs its tools");
    let secs: u32 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    // The bare VXLAN: the same wires, a bridge, a VXLAN port with static
    // entries and two endpoints, no nftables.
    let mut bare = Lab::new(2);
    let vmac = ["52:54:00:00:66:01", "52:54:00:00:66:02"];
    let mut bare_eps = Vec::new();
    for i in 0..2 {
        let ns = bare.ns[i].clone();
        let ep = format!("{}e{}", bare.p, bare.others.len());
        fresh_netns(&ep);
        bare.others.push(ep.clone());
        let other = bare.addr[1 - i].clone();
        for cmd in [
            "link add br0 mtu 1450 type bridge".to_string(),
            "link set br0 up".into(),
            "link add vx0 mtu 1450 type vxlan id 4242 dstport 4789 nolearning".into(),
            "link set vx0 master br0 up".into(),
            format!("link add tap0 mtu 1450 type veth peer name eth0 netns {ep}"),
            "link set tap0 master br0 up".into(),
        ] {
            let args: Vec<&str> = cmd.split(' ').collect();
            let mut full = vec!["ip", "-n", &ns];
            full.extend(args);
            sh(&full);
        }
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "bridge",
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "vx0",
            "dst",
            &other,
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "bridge",
            "fdb",
            "replace",
            vmac[1 - i],
            "dev",
            "vx0",
            "dst",
            &other,
        ]);
        sh(&[
            "ip", "-n", &ep, "link", "set", "eth0", "address", vmac[i], "mtu", "1450", "up",
        ]);
        sh(&[
            "ip",
            "-n",
            &ep,
            "addr",
            "add",
            &format!("10.66.0.{}/24", 10 + i),
            "dev",
            "eth0",
        ]);
        bare_eps.push(ep);
    }
    // deorch: three nodes (the third for the placement change), an
    // interstellar with a VM on each of the first two.
    let mut lab = Lab::new(3);
    let seed = format!("{}:7946", lab.addr[0]);
    let nodes: Vec<Node> = (0..3)
        .map(|i| node(&lab, i, (i > 0).then_some(seed.as_str())))
        .collect();
    let ips = ["10.77.0.10", "10.77.0.11", "10.77.0.12"];
    let eps: Vec<String> = (0..2)
        .map(|i| lab.endpoint(i, "acme", &format!("a{i}"), ips[i]))
        .collect();
    let mut yaml = network("acme", "Interstellar");
    for i in 0..2 {
        yaml += &vm("acme", &format!("a{i}"), &nodes[i].name, ips[i]);
    }
    let file = nodes[0].manifests.join("l2.yaml");
    std::fs::write(&file, &yaml).unwrap();
    wait(
        "deorch's endpoints reach each other",
        Duration::from_secs(60),
        &nodes,
        || pings(&eps[0], ips[1]),
    );
    assert!(pings(&bare_eps[0], "10.66.0.11"), "the bare VXLAN works");
    let mut s1 = iperf_server(&eps[1]);
    let mut s2 = iperf_server(&bare_eps[1]);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        without.push(iperf(&bare_eps[0], "10.66.0.11", secs) / 1e9);
        with.push(iperf(&eps[0], ips[1], secs) / 1e9);
    }
    let _ = (s1.kill(), s2.kill(), s1.wait(), s2.wait());
    let rules = Command::new("ip")
        .args(["netns", "exec", &lab.ns[0], "nft", "list", "ruleset"])
        .output()
        .unwrap();
    let rule_lines = String::from_utf8_lossy(&rules.stdout).lines().count();
    let (w, wo) = (p50(&mut with), p50(&mut without));
    eprintln!(
        "BENCH throughput over {runs} runs of {secs} s: deorch interstellar p50 {w:.2} Gbit/s {with:?}; bare VXLAN p50 {wo:.2} Gbit/s {without:?}; ratio {:.3} (ruleset of {rule_lines} lines on each node)",
        w / wo
    );

    // Placement changes: a VM on node 2 moves to node 1 and back, by its
    // placement; node 0 follows it.
    let mac = names::mac("acme", "a2", "eth0");
    let dst = |n: usize| -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.ns[0], "bridge", "-j", "fdb", "show"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let _ = n;
        v.as_array()?
            .iter()
            .find(|e| e["mac"] == mac.as_str() && e["dst"].is_string())
            .and_then(|e| e["dst"].as_str().map(str::to_string))
    };
    let mut e2e = Vec::new();
    let mut target = 2;
    let mut log_from = 0;
    for round in 0..runs {
        let t = Instant::now();
        let placed = yaml.clone() + &vm("acme", "a2", &nodes[target].name, ips[2]);
        std::fs::write(&file, placed).unwrap();
        let want = lab.addr[target].clone();
        let limit = Duration::from_secs(30);
        while dst(0).as_deref() != Some(want.as_str()) {
            assert!(
                t.elapsed() < limit,
                "round {round}: node 0's entry for a2 never pointed at node {target}: {:?}\n{}",
                dst(0),
                nodes[2].log_text()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        if round > 0 {
            e2e.push(t.elapsed().as_secs_f64() * 1000.0);
        } else {
            log_from = std::fs::read_to_string(&nodes[0].log).unwrap().len();
        }
        target = 3 - target;
    }
    let agent: Vec<f64> = std::fs::read_to_string(&nodes[0].log).unwrap()[log_from..]
        .lines()
        .filter(|l| l.contains("fabric applied"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("since_change_us="))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|us| us / 1000.0)
        .collect();
    let mut agent_sorted = agent.clone();
    eprintln!(
        "BENCH placement change -> node 0's entry: end to end p50 {:.0} ms {e2e:?}; the agent's part p50 {:.1} ms, max {:.1} ms over {} applications",
        p50(&mut e2e),
        p50(&mut agent_sorted),
        agent.iter().cloned().fold(0.0, f64::max),
        agent.len()
    );
    drop(lab);
    drop(bare);
}
