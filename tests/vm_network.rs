//! The whole network data path with real parts, inside a network namespace
//! the test creates: `deorch node run --net linux --hypervisor qemu` makes
//! the Network's bridge (with the node's address) and the VM's tap, QEMU
//! (TCG, machine `pc`) attaches the tiny guest's NIC to the tap, and the
//! guest's own busybox udhcpc gets its lease from the node's DHCP server
//! with exactly the manifest's options. Then a changed Network manifest
//! changes what the next boot is served, a node killed and restarted
//! serves the same again, an interface deorch did not make is left alone,
//! and deletions remove the tap and the bridge.
//!
//! Needs root (namespaces, taps); a missing tool skips on a laptop and
//! fails when `CI=true`.

mod common;

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{tiny_guest, Node};

fn have(tools: &[&str]) -> bool {
    common::root_with_tools(
        tools,
        &[],
        "scripts/test.sh installs qemu-system-x86, iproute2 and busybox-static",
    )
}

/// A network namespace, deleted on drop (with every interface in it).
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("dvn{:x}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }
    /// `ip -j -d link show dev NAME` in the namespace, when it exists.
    fn link(&self, dev: &str) -> Option<serde_json::Value> {
        let out = Command::new("ip")
            .args(["-n", &self.0, "-j", "-d", "link", "show", "dev", dev])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().and_then(|a| a.first()).cloned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn network_yaml(dns: &str, domain: &str) -> String {
    format!(
        "\
apiVersion: deorch.dev/v1alpha1
kind: Network
metadata:
  name: lan
spec:
  mtu: 1400
  ipv4:
    subnet: 10.77.0.0/24
    gateway: 10.77.0.1
    range: {{start: 10.77.0.100, end: 10.77.0.199}}
  dhcp:
    leaseTime: 30m
    dnsServers: [{dns}]
    ntpServers: [10.77.0.123]
    domainName: {domain}
    domainSearch: [{domain}, example.org]
    netbios: {{nameServers: [10.77.0.137]}}
    classlessStaticRoutes:
      - {{destination: 192.168.50.0/24, gateway: 10.77.0.254}}
"
    )
}

const VM: &str = "\
apiVersion: deorch.dev/v1alpha1
kind: VirtualMachine
metadata:
  name: tiny
spec:
  spacesuit: tiny
  stopTimeout: 5s
  nics:
    - name: eth0
      network: lan
      dhcp: {hostName: tiny-guest}
";

/// The lease line the guest prints (guest/udhcpc.script's order), for
/// the network as `network_yaml(dns, domain)` declares it.
fn expected_lease(ip: Ipv4Addr, dns: &str, domain: &str) -> String {
    format!(
        "deorch-guest: lease ip={ip} mask=24 subnet=255.255.255.0 broadcast=10.77.0.255 \
         router=10.77.0.1 dns={dns} domain={domain} search={domain} example.org \
         ntpsrv=10.77.0.123 mtu=1400 hostname=tiny-guest lease=1800 serverid=10.77.0.1 \
         staticroutes=192.168.50.0/24 10.77.0.254 0.0.0.0/0 10.77.0.1 wins=10.77.0.137",
        dns = dns.replace(", ", " ")
    )
}

fn vm_status(node: &Node) -> serde_json::Value {
    node.record("vm", "tiny")
        .and_then(|r| r.status)
        .unwrap_or_default()
}

fn net_status(node: &Node, name: &str) -> serde_json::Value {
    node.record("network", name)
        .and_then(|r| r.status)
        .unwrap_or_default()
}

/// The lease line of the current boot, with a watchdog: a boot that
/// prints nothing for 30 s (rare under TCG) is killed and the restart
/// policy boots it again.
fn wait_lease(node: &Node) -> (String, Duration) {
    let serial = node.state.join("vms/default/tiny/serial.log");
    for attempt in 1..=3 {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&serial).unwrap_or_default();
            if let Some(line) = text
                .lines()
                .find(|l| l.starts_with("deorch-guest: lease") || l.contains("no DHCP lease"))
            {
                if text.contains("DEORCH-GUEST-READY") {
                    return (line.trim_end().to_string(), t0.elapsed());
                }
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let pid = vm_status(node)["pid"].as_u64().unwrap_or(0);
        eprintln!("boot attempt {attempt}: no lease and ready marker in 30 s; killing QEMU {pid}");
        assert!(pid > 0, "no QEMU; node log:\n{}", node.log_text());
        kill_qemu_and_wait_for_new_boot(node, pid);
    }
    panic!(
        "three boots without a lease; node log:\n{}",
        node.log_text()
    );
}

fn kill_qemu_and_wait_for_new_boot(node: &Node, pid: u64) {
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while vm_status(node)["pid"].as_u64().is_none_or(|p| p == pid)
        || vm_status(node)["phase"] != "Running"
    {
        assert!(
            Instant::now() < deadline,
            "no new boot; log:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_guest_gets_its_lease_from_the_nodes_dhcp_server_on_a_real_bridge() {
    if !have(&["ip", "qemu-system-x86_64", "busybox"]) {
        return;
    }
    let g = tiny_guest().0.parent().unwrap().to_path_buf();
    // Dropped after the node (declared first): the node and its QEMU go
    // first, then the namespace with every interface in it.
    let ns = Netns::new();
    let mut node = Node::new("vmnet");
    node.wrap = vec!["ip".into(), "netns".into(), "exec".into(), ns.0.clone()];
    node.extra_args = vec![
        "--hypervisor".into(),
        "qemu".into(),
        "--net".into(),
        "linux".into(),
        "--probe-guest".into(),
        g.display().to_string(),
    ];
    // An interface deorch did not create, named by a second Network.
    run(&[
        "ip", "-n", &ns.0, "link", "add", "foreign0", "mtu", "1300", "type", "bridge",
    ]);
    let m = &node.manifests;
    std::fs::write(
        m.join("network.yaml"),
        network_yaml("10.77.0.53, 9.9.9.9", "lab.test"),
    )
    .unwrap();
    std::fs::write(
        m.join("foreign.yaml"),
        "apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata: {name: foreign}\nspec:\n  bridge: foreign0\n  mtu: 9000\n  ipv4: {subnet: 10.78.0.0/24}\n",
    )
    .unwrap();
    std::fs::write(
        m.join("suit.yaml"),
        format!(
            "apiVersion: deorch.dev/v1alpha1\nkind: Spacesuit\nmetadata: {{name: tiny}}\nspec:\n  boot: {{kernel: {k}, initrd: {i}, cmdline: \"{c}\"}}\n  machine: pc\n  cpu: 1\n  memory: 128Mi\n",
            k = g.join("vmlinuz").display(),
            i = g.join("initrd.img").display(),
            c = deorch::qemu::probe::TINY_CMDLINE,
        ),
    )
    .unwrap();
    std::fs::write(m.join("vm.yaml"), VM).unwrap();
    let want_ip = common::expected_address(
        &[m.join("network.yaml"), m.join("vm.yaml")],
        "10.77.0.1",
        "default/tiny/eth0",
    );
    let t_start = Instant::now();
    node.start();

    // Bridge and tap: made by deorch, marked, MTU applied, tap on the bridge.
    let bridge = deorch::model::names::bridge("default", "lan");
    let tap = deorch::model::names::tap("default", "tiny", "eth0");
    let t_api = Instant::now();
    node.wait_for("the Network's bridge", |n| {
        net_status(n, "lan")["conditions"][0]["status"] == "True"
    });
    let t_bridge = t_api.elapsed();
    let br = ns.link(&bridge).expect("bridge exists");
    assert_eq!(br["ifalias"], "deorch:bridge", "{br}");
    assert_eq!(br["linkinfo"]["info_kind"], "bridge");
    assert_eq!(br["mtu"], 1400);
    let addrs = run(&[
        "ip", "-n", &ns.0, "-4", "-o", "addr", "show", "dev", &bridge,
    ]);
    assert!(
        addrs.contains("10.77.0.1/24"),
        "the node's address: {addrs}"
    );
    node.wait_for("phase Running", |n| vm_status(n)["phase"] == "Running");
    eprintln!(
        "after the API answered: bridge + address + DHCP server ready in {} ms, VM Running (tap + QEMU) in {} ms",
        t_bridge.as_millis(),
        t_api.elapsed().as_millis()
    );
    let t = ns.link(&tap).expect("tap exists");
    assert_eq!(t["ifalias"], "deorch:tap", "{t}");
    assert_eq!(t["linkinfo"]["info_data"]["type"], "tap");
    assert_eq!(t["master"].as_str(), Some(bridge.as_str()));
    assert_eq!(t["mtu"], 1400);

    // The foreign bridge is refused and untouched.
    node.wait_for("the foreign Network's status", |n| {
        net_status(n, "foreign")["conditions"][0]["reason"] == "InterfaceNotOwned"
    });
    let f = ns.link("foreign0").unwrap();
    assert_eq!(f["mtu"], 1300, "foreign MTU unchanged: {f}");
    assert!(f.get("ifalias").is_none(), "{f}");
    let faddrs = run(&[
        "ip", "-n", &ns.0, "-4", "-o", "addr", "show", "dev", "foreign0",
    ]);
    assert!(faddrs.trim().is_empty(), "no address added: {faddrs}");

    // The guest's udhcpc: a lease from deorch with exactly these options.
    let (lease, boot) = wait_lease(&node);
    let total = t_start.elapsed();
    assert_eq!(
        lease,
        expected_lease(want_ip, "10.77.0.53, 9.9.9.9", "lab.test"),
        "node log:\n{}",
        node.log_text()
    );
    eprintln!(
        "first lease {:.1} s after node start ({:.1} s of it waiting on the console)",
        total.as_secs_f64(),
        boot.as_secs_f64()
    );
    // The data path works both ways: the namespace reaches the guest
    // through bridge and tap at the leased address.
    run(&[
        "ip",
        "netns",
        "exec",
        &ns.0,
        "busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        &want_ip.to_string(),
    ]);
    // Status and the durable record of what is served.
    assert_eq!(net_status(&node, "lan")["leases"], 1);
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(node.state.join("dhcp/default.lan.json")).unwrap(),
    )
    .unwrap();
    let r = &rec["reservations"][0];
    assert_eq!(r["identity"], "default/tiny/eth0");
    assert_eq!(r["address"], want_ip.to_string());
    assert_eq!(
        r["mac"],
        deorch::model::names::mac("default", "tiny", "eth0")
    );
    assert_eq!(rec["interface"], bridge.as_str());

    // A changed manifest changes what is served: the next boot's lease
    // has the new DNS server and domain.
    let generation = node.record("network", "lan").unwrap().generation;
    std::fs::write(
        node.manifests.join("network.yaml"),
        network_yaml("10.77.0.54", "changed.test"),
    )
    .unwrap();
    node.wait_for("the changed Network reconciled", |n| {
        net_status(n, "lan")["observedGeneration"]
            .as_i64()
            .is_some_and(|g| g > generation)
    });
    // That status carries the server's counters: the first boot's exchange.
    let dhcp = &net_status(&node, "lan")["dhcp"];
    assert!(
        dhcp["offers"].as_u64() >= Some(1) && dhcp["acks"].as_u64() >= Some(1),
        "DHCP counters in the Network's status: {dhcp}"
    );
    let pid = vm_status(&node)["pid"].as_u64().unwrap();
    kill_qemu_and_wait_for_new_boot(&node, pid);
    let (lease2, _) = wait_lease(&node);
    assert_eq!(
        lease2,
        expected_lease(want_ip, "10.77.0.54", "changed.test")
    );

    // A node killed and started again re-adopts bridge, tap and VM and
    // serves again: the next boot gets the same lease from the new process.
    let starts = |n: &Node| {
        std::fs::read_to_string(&n.log)
            .unwrap_or_default()
            .matches("DHCP server started")
            .count()
    };
    let before = starts(&node);
    node.kill();
    node.start();
    node.wait_for("the Network served again", |n| starts(n) > before);
    let pid = vm_status(&node)["pid"].as_u64().unwrap();
    assert_eq!(
        ns.link(&tap).unwrap()["master"].as_str(),
        Some(bridge.as_str())
    );
    kill_qemu_and_wait_for_new_boot(&node, pid);
    let (lease3, _) = wait_lease(&node);
    assert_eq!(lease3, lease2, "the restarted node serves the same lease");

    // Deleting the VM removes its tap; deleting the Network its bridge,
    // its server and its record.
    std::fs::remove_file(node.manifests.join("vm.yaml")).unwrap();
    node.wait_for("the tap removed", |_| ns.link(&tap).is_none());
    std::fs::remove_file(node.manifests.join("network.yaml")).unwrap();
    node.wait_for("the bridge removed", |_| ns.link(&bridge).is_none());
    node.wait_for("the DHCP record removed", |n| {
        !n.state.join("dhcp/default.lan.json").exists()
    });
    assert!(ns.link("foreign0").is_some(), "foreign bridge kept");
}
