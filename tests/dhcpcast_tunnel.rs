//! DHCPCAST through a gateway node (`dhcpcast.via`), on real kernels:
//! two node daemons with signed gossip, each in its own network
//! namespace with its own state dir, joined by an underlay (a switch in
//! a hub namespace, where tcpdump listens); dnsmasq as the central
//! server on a link of the gateway's only; the VM a namespace endpoint
//! on node A's bridge (a veth named and marked as deorch's tap) running
//! busybox udhcpc; an attacker on the underlay.
//!
//! ```text
//!  VM (udhcpc) ── tap ── A ══ underlay (hub br0: tcpdump, attacker X) ══ G ── dnsmasq
//!                       sat-a                                          sat-g  (10.55.0.2)
//! ```
//!
//! First by plain UDP relay (G routes): the lease comes, the token
//! crosses the underlay in the clear, and a reply the attacker forges
//! with it reaches the VM (the threat). Then `via: sat-g`, G's routing
//! off: leases come through the tunnel, the underlay carries no DHCP at
//! all (only the tunnel's TCP), the same forged reply is not delivered,
//! a request for a server G does not relay to is refused by G (logged
//! and counted at both ends); after A restarts, the tunnel opens again
//! and a renewal, unicast to A, comes through it. The time of N leases
//! each way is printed (the figure in docs/PERFORMANCE.md, "DHCP").

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{capture, fresh_netns, sh, Node, NsProc};
use deorch::api::{Request, Response};
use deorch::identity::{AddressType, Network, PrivateKey};
use deorch::model::names;
use dhcproto::v4::relay::{RelayAgentInformation, RelayCode, RelayInfo};
use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};

static SEQ: AtomicU32 = AtomicU32::new(0);

const A_UNDER: &str = "10.201.0.1";
const G_UNDER: &str = "10.201.0.2";
const X_UNDER: &str = "10.201.0.99";
const G_SERVER_SIDE: &str = "10.55.0.1";
const CENTRAL: &str = "10.55.0.2";
/// A server no Network names with `via: sat-g` (in G's store).
const ELSEWHERE: &str = "10.55.0.9";
const BRIDGE_ADDR: &str = "10.77.0.1";
/// What the attacker's forged OFFER offers, and its xid.
const FORGED_IP: &str = "10.77.0.66";
const FORGED_XID: u32 = 0xdead_beef;
/// Leases timed each way.
const LEASES: usize = 20;

/// Namespaces (a, g, hub, central, attacker, endpoints), deleted on drop.
struct Lab {
    p: String,
    a: String,
    g: String,
    hub: String,
    central: String,
    attacker: String,
    others: Vec<String>,
    dir: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let p = format!("dt{:x}{seq}", std::process::id() & 0xffff);
        let n = |s: &str| format!("{p}{s}");
        let lab = Lab {
            a: n("a"),
            g: n("g"),
            hub: n("h"),
            central: n("s"),
            attacker: n("x"),
            others: Vec::new(),
            dir: common::temp_dir(&p),
            p,
        };
        for x in [&lab.a, &lab.g, &lab.hub, &lab.central, &lab.attacker] {
            fresh_netns(x);
        }
        sh(&["ip", "-n", &lab.hub, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &lab.hub, "link", "set", "br0", "up"]);
        lab.wire(&lab.a, "a", &format!("{A_UNDER}/24"));
        lab.wire(&lab.g, "g", &format!("{G_UNDER}/24"));
        lab.wire(&lab.attacker, "x", &format!("{X_UNDER}/24"));
        // The central server's link: to G only.
        let (gv, sv) = (format!("{}gs", lab.p), format!("{}sg", lab.p));
        sh(&[
            "ip", "link", "add", &gv, "type", "veth", "peer", "name", &sv,
        ]);
        sh(&["ip", "link", "set", &gv, "netns", &lab.g]);
        sh(&["ip", "link", "set", &sv, "netns", &lab.central]);
        let cidr = format!("{G_SERVER_SIDE}/24");
        sh(&["ip", "-n", &lab.g, "addr", "add", &cidr, "dev", &gv]);
        sh(&["ip", "-n", &lab.g, "link", "set", &gv, "up"]);
        let cidr = format!("{CENTRAL}/24");
        sh(&["ip", "-n", &lab.central, "addr", "add", &cidr, "dev", &sv]);
        sh(&["ip", "-n", &lab.central, "link", "set", &sv, "up"]);
        // Plain relay: A reaches the server through G (a router), the
        // server answers the node's relay address through G.
        sh(&[
            "ip",
            "-n",
            &lab.a,
            "route",
            "add",
            "10.55.0.0/24",
            "via",
            G_UNDER,
        ]);
        sh(&[
            "ip",
            "-n",
            &lab.central,
            "route",
            "add",
            "10.77.0.0/24",
            "via",
            G_SERVER_SIDE,
        ]);
        sh(&[
            "ip",
            "-n",
            &lab.g,
            "route",
            "add",
            "10.77.0.0/24",
            "via",
            A_UNDER,
        ]);
        lab.forwarding(true);
        // The attacker sends as the central server, towards A.
        sh(&[
            "ip",
            "-n",
            &lab.attacker,
            "addr",
            "add",
            &format!("{CENTRAL}/32"),
            "dev",
            &format!("{}x", lab.p),
        ]);
        sh(&[
            "ip",
            "-n",
            &lab.attacker,
            "route",
            "add",
            "10.77.0.0/24",
            "via",
            A_UNDER,
        ]);
        lab
    }

    fn forwarding(&self, on: bool) {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.g,
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv4.ip_forward={}", u8::from(on)),
        ]);
    }

    /// A veth from `ns` (named PREFIX+tag) to the switch, `cidr` on it.
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

    /// The port of VM `vm`'s eth0 on node A: a veth named and marked as
    /// deorch's tap, its other end (`eth0`, the VM's MAC, no address) in
    /// a namespace of its own, returned.
    fn endpoint(&mut self, vm: &str) -> String {
        let tap = names::tap("default", vm, "eth0");
        let mac = names::mac("default", vm, "eth0");
        let ep = format!("{}e{}", self.p, self.others.len());
        fresh_netns(&ep);
        self.others.push(ep.clone());
        sh(&[
            "ip", "-n", &self.a, "link", "add", &tap, "type", "veth", "peer", "name", "eth0",
            "netns", &ep,
        ]);
        sh(&[
            "ip",
            "-n",
            &self.a,
            "link",
            "set",
            &tap,
            "alias",
            "deorch:tap",
        ]);
        sh(&["ip", "-n", &ep, "link", "set", "eth0", "address", &mac]);
        sh(&["ip", "-n", &ep, "link", "set", "eth0", "up"]);
        ep
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in [&self.a, &self.g, &self.hub, &self.central, &self.attacker]
            .into_iter()
            .chain(&self.others)
        {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One DHCP packet of a capture: when (s), from, to, what.
type Seen = (f64, SocketAddrV4, SocketAddrV4, Message);

/// The DHCP payloads of the IPv4/UDP frames of pcap `file` (Ethernet).
fn dhcp_in(file: &Path) -> Vec<Seen> {
    let b = std::fs::read(file).unwrap();
    assert!(b.len() >= 24, "no pcap header in {}", file.display());
    let le = b[..4] == [0xd4, 0xc3, 0xb2, 0xa1] || b[..4] == [0x4d, 0x3c, 0xb2, 0xa1];
    let nanos = b[..4] == [0x4d, 0x3c, 0xb2, 0xa1] || b[..4] == [0xa1, 0xb2, 0x3c, 0x4d];
    let u32_at = |o: usize| {
        let w: [u8; 4] = b[o..o + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let len = u32_at(at + 8) as usize;
        let when =
            f64::from(u32_at(at)) + f64::from(u32_at(at + 4)) / if nanos { 1e9 } else { 1e6 };
        let frame = &b[at + 16..(at + 16 + len).min(b.len())];
        at += 16 + len;
        if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        if let Some((from, to, payload)) = deorch::dhcp::socket::parse_ipv4_udp(&frame[14..]) {
            if [from.port(), to.port()]
                .iter()
                .all(|p| *p == 67 || *p == 68)
            {
                if let Ok(m) = Message::decode(&mut Decoder::new(payload)) {
                    out.push((when, from, to, m));
                }
            }
        }
    }
    out
}

/// The token node A put in its relayed requests, as the underlay saw it.
fn sniffed_token(file: &Path) -> Option<Vec<u8>> {
    dhcp_in(file).into_iter().find_map(|(_, _, to, m)| {
        if *to.ip() != CENTRAL.parse::<Ipv4Addr>().unwrap() {
            return None;
        }
        match m.opts().get(OptionCode::RelayAgentInformation) {
            Some(DhcpOption::RelayAgentInformation(i)) => match i.get(RelayCode::AgentRemoteId) {
                Some(RelayInfo::AgentRemoteId(t)) => Some(t.clone()),
                _ => None,
            },
            _ => None,
        }
    })
}

/// From each DISCOVER the VM sent to the ACK it got (same xid), as its
/// port saw them (capture `file`): the exchange without udhcpc's start.
fn exchanges(file: &Path) -> Vec<f64> {
    let seen = dhcp_in(file);
    let kind = |m: &Message| m.opts().msg_type();
    let mut out = Vec::new();
    let mut xids = std::collections::BTreeSet::new();
    for (t0, _, _, d) in seen
        .iter()
        .filter(|s| kind(&s.3) == Some(MessageType::Discover))
    {
        // A retransmitted DISCOVER of the same xid counts once (the first).
        if !xids.insert(d.xid()) {
            continue;
        }
        let acked = seen.iter().find(|(t, _, _, m)| {
            t >= t0 && m.xid() == d.xid() && kind(m) == Some(MessageType::Ack)
        });
        if let Some((t1, ..)) = acked {
            out.push(t1 - t0);
        }
    }
    out
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "no DISCOVER-to-ACK exchange captured");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2] * 1000.0
}

/// The attacker, as the central server, sends node A an OFFER for `mac`
/// with A's circuit and `token`, to A's relay address.
fn forge(lab: &Lab, mac: &str, token: &[u8]) {
    let mut m = Message::default();
    let chaddr: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_xid(FORGED_XID)
        .set_chaddr(&chaddr)
        .set_yiaddr(FORGED_IP.parse::<Ipv4Addr>().unwrap())
        .set_giaddr(BRIDGE_ADDR.parse::<Ipv4Addr>().unwrap())
        .set_hops(1);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Offer));
    o.insert(DhcpOption::ServerIdentifier(BRIDGE_ADDR.parse().unwrap()));
    o.insert(DhcpOption::SubnetMask([255, 255, 255, 0].into()));
    o.insert(DhcpOption::AddressLeaseTime(120));
    let mut info = RelayAgentInformation::default();
    info.insert(RelayInfo::AgentCircuitId(b"default/web/eth0".to_vec()));
    info.insert(RelayInfo::AgentRemoteId(token.to_vec()));
    o.insert(DhcpOption::RelayAgentInformation(info));
    let bytes = m.to_vec().unwrap();
    common::in_netns(&lab.attacker, || {
        let s = std::net::UdpSocket::bind((CENTRAL, 67)).unwrap();
        for to in [BRIDGE_ADDR, A_UNDER] {
            for _ in 0..3 {
                s.send_to(&bytes, (to, 67)).unwrap();
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
}

/// One lease by `udhcpc -q` in `ns` (its script does nothing): how long.
fn lease(ns: &str, noop: &Path) -> Duration {
    let t = Instant::now();
    let out = Command::new("timeout")
        .args([
            "20", "ip", "netns", "exec", ns, "busybox", "udhcpc", "-f", "-q", "-n",
        ])
        .args(["-i", "eth0", "-t", "5", "-T", "1", "-s"])
        .arg(noop)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "udhcpc got no lease: {}{}\ndnsmasq:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(noop.with_file_name("dnsmasq.log")).unwrap_or_default()
    );
    t.elapsed()
}

fn leases(ns: &str, noop: &Path) -> Duration {
    lease(ns, noop); // the first may open the tunnel
    (0..LEASES).map(|_| lease(ns, noop)).sum()
}

fn node(ns: &str, name: &str, under: &str, owner: &str, seed: Option<&str>) -> Node {
    let mut n = Node::new(&format!("dt-{name}"));
    n.name = name.into();
    n.wrap = vec![
        "nsenter".into(),
        format!("--net=/var/run/netns/{ns}"),
        "--".into(),
    ];
    n.extra_args.extend(
        [
            "--net",
            "linux",
            "--cluster-owner",
            owner,
            "--gossip-listen",
            &format!("{under}:7946"),
        ]
        .iter()
        .chain(deorch::bench_cluster::FAST_TIMINGS.iter())
        .map(|s| s.to_string()),
    );
    if let Some(s) = seed {
        n.extra_args.extend(["--seed".into(), s.into()]);
    }
    n
}

fn status(n: &Node, kind: &str, name: &str) -> serde_json::Value {
    match n.call(&Request::Get {
        kind: Some(kind.into()),
        namespace: Some("default".into()),
        name: Some(name.into()),
    }) {
        Ok(Response::Objects { mut records }) => {
            records.pop().and_then(|r| r.status).unwrap_or_default()
        }
        _ => serde_json::Value::Null,
    }
}

fn spec(n: &Node, kind: &str, name: &str) -> (serde_json::Value, i64) {
    match n.call(&Request::Get {
        kind: Some(kind.into()),
        namespace: Some("default".into()),
        name: Some(name.into()),
    }) {
        Ok(Response::Objects { mut records }) => records
            .pop()
            .map(|r| (r.object["spec"].clone(), r.generation))
            .unwrap_or_default(),
        _ => Default::default(),
    }
}

use common::wait_or_logs as wait;

fn network(dhcpcast: &str, labels: &str) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata: {{name: lan{labels}}}\nspec:\n  ipv4: {{subnet: 10.77.0.0/24, gateway: {BRIDGE_ADDR}}}\n  dhcpcast: {dhcpcast}\n---\n"
    )
}

fn vm(name: &str, network: &str) -> String {
    format!(
        "apiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {{name: {name}}}\nspec:\n  cpu: 1\n  memory: 64Mi\n  placement: {{node: sat-a}}\n  nics:\n    - {{name: eth0, network: {network}}}\n---\n"
    )
}

fn nodes_of<'a>(a: &'a Node, g: &'a Node) -> [&'a Node; 2] {
    [a, g]
}

fn log_has(n: &Node, needle: &str) -> bool {
    std::fs::read_to_string(&n.log).is_ok_and(|t| t.contains(needle))
}

/// Plain DHCPCAST, then through the gateway's tunnel: leases and a
/// renewal through the tunnel, no DHCP on the underlay, a forged reply
/// with the real token delivered by plain relay and not through the
/// tunnel, a server the gateway does not relay to refused.
///
/// A restarts before the renewal: the tunnel must open again by itself.
#[test]
fn dhcpcast_via_a_gateway_crosses_the_underlay_only_in_the_tunnel() {
    if !common::root_with_tools(
        &[
            "ip", "nft", "bridge", "tcpdump", "busybox", "dnsmasq", "nsenter", "sysctl",
        ],
        &[],
        "scripts/test.sh installs iproute2, nftables, tcpdump, busybox-static, dnsmasq-base",
    ) {
        return;
    }
    let mut lab = Lab::new();
    let web = lab.endpoint("web");
    let rogue = lab.endpoint("rogue");
    let noop = lab.dir.join("noop.sh");
    std::fs::write(&noop, "#!/bin/sh\nexit 0\n").unwrap();
    sh(&["chmod", "+x", noop.to_str().unwrap()]);

    // The central server, on G's link only.
    let dnsmasq_log = lab.dir.join("dnsmasq.log");
    let mut central = NsProc::start(
        &lab.central,
        &[
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--user=root",
            "--bind-interfaces",
            &format!("--interface={}sg", lab.p),
            "--except-interface=lo",
            "--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,2m",
            &format!("--dhcp-leasefile={}", lab.dir.join("leases").display()),
            "--dhcp-authoritative",
            "--no-ping",
            "--log-dhcp",
            "--log-facility=-",
        ],
        &dnsmasq_log,
    );

    // Two admitted nodes, signed gossip.
    let owner_key = PrivateKey::generate(Network::Mainnet);
    let owner = owner_key.address(AddressType::P2wpkh).unwrap().to_string();
    let mut g = node(&lab.g, "sat-g", G_UNDER, &owner, None);
    let mut a = node(
        &lab.a,
        "sat-a",
        A_UNDER,
        &owner,
        Some(&format!("{G_UNDER}:7946")),
    );
    let (ida, idg) = (common::give_node_key(&a), common::give_node_key(&g));
    let members = common::members_policy(1, &[("sat-a", &ida), ("sat-g", &idg)], "");
    // G relays to the central server for whoever names it as `via`: a
    // Network of its own says so (not `lan`, whose gateway address on
    // G's bridge would take the plain relay's replies meant for A).
    std::fs::write(
        g.manifests.join("gw.yaml"),
        format!("apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata: {{name: gw}}\nspec:\n  dhcpcast: {{servers: [{CENTRAL}], via: sat-g}}\n"),
    )
    .unwrap();
    // The rogue's Network names a server G relays to for nobody (A's
    // Networks are A's own: G's store does not take them).
    let a_vms = vm("web", "lan")
        + &format!("apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata: {{name: other}}\nspec:\n  ipv4: {{subnet: 10.78.0.0/24, gateway: 10.78.0.1}}\n  dhcpcast: {{servers: [{ELSEWHERE}], via: sat-g}}\n---\n")
        + &vm("rogue", "other");
    std::fs::write(
        a.manifests.join("lan.yaml"),
        network(&format!("{{servers: [{CENTRAL}]}}"), "") + &a_vms,
    )
    .unwrap();
    g.start();
    common::apply_owner_signed(&g, &owner_key, &members);
    a.start();
    common::apply_owner_signed(&a, &owner_key, &members);
    let nodes = [&a, &g];
    wait(
        "A and G see each other",
        Duration::from_secs(30),
        &nodes,
        || common::members_up(&a).contains(&idg) && common::members_up(&g).contains(&ida),
    );
    let bridge = names::bridge("default", "lan");
    let tap = names::tap("default", "web", "eth0");
    wait(
        "web's port on A's bridge",
        Duration::from_secs(30),
        &nodes,
        || {
            let out = Command::new("ip")
                .args(["-n", &lab.a, "link", "show", &tap])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!("master {bridge}"))
        },
    );

    // 1. Plain DHCPCAST: the lease comes; the token crosses the underlay.
    let pcaps = lab.dir.clone();
    let mut under = capture(&lab.hub, "br0", &pcaps.join("plain.pcap"));
    let mut vm_side = capture(&web, "eth0", &pcaps.join("vm.pcap"));
    let plain = leases(&web, &noop);
    under.interrupt();
    let token = sniffed_token(&pcaps.join("plain.pcap"))
        .expect("plain DHCPCAST shows the node's token on the underlay");
    assert!(
        common::pcap_count(&pcaps.join("plain.pcap"), "udp port 67") > 0,
        "plain relay crossed the underlay as DHCP"
    );
    // The attacker forges a reply with it: the VM gets it (the threat).
    let mac = names::mac("default", "web", "eth0");
    let mut forging = capture(&lab.hub, "br0", &pcaps.join("forge.pcap"));
    forge(&lab, &mac, &token);
    vm_side.interrupt();
    forging.interrupt();
    let forged = format!("udp[12:4] = {FORGED_XID:#x}");
    assert!(
        common::pcap_count(&pcaps.join("vm.pcap"), &forged) > 0,
        "control: by plain relay, a forged reply with the sniffed token reaches the VM; on the underlay:\n{}",
        String::from_utf8_lossy(
            &Command::new("tcpdump")
                .args(["-n", "-v", "-r"])
                .arg(pcaps.join("forge.pcap"))
                .output()
                .unwrap()
                .stdout
        )
    );

    // 2. Through the gateway: G routes no more, A names it as `via`.
    lab.forwarding(false);
    std::fs::write(
        a.manifests.join("lan.yaml"),
        network(&format!("{{servers: [{CENTRAL}], via: sat-g}}"), "") + &a_vms,
    )
    .unwrap();
    wait(
        "A relays via sat-g",
        Duration::from_secs(20),
        &nodes,
        || {
            let (s, generation) = spec(&a, "network", "lan");
            let st = status(&a, "network", "lan");
            s["dhcpcast"]["via"] == "sat-g" && st["observedGeneration"] == generation
        },
    );
    let mut under = capture(&lab.hub, "br0", &pcaps.join("tunnel.pcap"));
    let mut vm_side = capture(&web, "eth0", &pcaps.join("vm-tunnel.pcap"));
    let tunneled = leases(&web, &noop);
    vm_side.interrupt();
    under.interrupt();
    let tunnel_pcap = pcaps.join("tunnel.pcap");
    let dhcp_frames = common::pcap_count(&tunnel_pcap, "udp port 67 or udp port 68");
    let tcp_frames = common::pcap_count(&tunnel_pcap, "tcp port 7946");
    assert_eq!(
        dhcp_frames, 0,
        "DHCP crossed the underlay beside the tunnel"
    );
    assert!(tcp_frames > 0, "the tunnel's TCP is on the underlay");
    // The same forgery, the token right: not delivered (A still has the
    // plain relay's socket on its relay address: rejected there).
    let mut vm_side = capture(&web, "eth0", &pcaps.join("vm2.pcap"));
    forge(&lab, &mac, &token);
    vm_side.interrupt();
    assert_eq!(
        common::pcap_count(&pcaps.join("vm2.pcap"), &forged),
        0,
        "a UDP reply reached a VM relayed through the tunnel"
    );

    let mut under = capture(&lab.hub, "br0", &pcaps.join("tunnel2.pcap"));
    // 3. A server G does not relay to: G refuses, says so, A counts it.
    let _ = Command::new("timeout")
        .args([
            "10", "ip", "netns", "exec", &rogue, "busybox", "udhcpc", "-f", "-q", "-n",
        ])
        .args(["-i", "eth0", "-t", "2", "-T", "1", "-s"])
        .arg(&noop)
        .output();
    wait(
        "G refuses and logs it",
        Duration::from_secs(10),
        &nodes,
        || log_has(&g, "refused a request from sat-a") && log_has(&g, ELSEWHERE),
    );
    wait(
        "A hears the refusal",
        Duration::from_secs(10),
        &nodes,
        || log_has(&a, "the gateway refused a request"),
    );
    // The counters in A's Network status (written at its next
    // reconcile: a label makes one).
    std::fs::write(
        a.manifests.join("lan.yaml"),
        network(
            &format!("{{servers: [{CENTRAL}], via: sat-g}}"),
            ", labels: {round: two}",
        ) + &a_vms.replace("{name: other}", "{name: other, labels: {round: two}}"),
    )
    .unwrap();
    let counted = |d: &serde_json::Value| {
        let n = |k: &str| d[k].as_u64().unwrap_or(0);
        n("tunneledUp") >= 2 * LEASES as u64
            && n("tunneledDown") >= 2 * LEASES as u64
            && d["droppedByReason"]["relay_reply_rejected"]
                .as_u64()
                .unwrap_or(0)
                >= 1
    };
    let t = Instant::now();
    let mut d = status(&a, "network", "lan")["dhcp"].clone();
    while !counted(&d) && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        d = status(&a, "network", "lan")["dhcp"].clone();
    }
    assert!(counted(&d), "A's Network status: {d}");
    // The refusal is counted in the other network's status.
    let t = Instant::now();
    let mut o = status(&a, "network", "other")["dhcp"].clone();
    while o["tunnelDropped"].as_u64().unwrap_or(0) == 0 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        o = status(&a, "network", "other")["dhcp"].clone();
    }
    assert!(
        o["droppedByReason"]["gateway_refused"]
            .as_u64()
            .unwrap_or(0)
            >= 1
            && o["tunnelDropped"].as_u64().unwrap_or(0) >= 1,
        "the refusal in network other's status: {o}"
    );

    // 4. A restarts: the tunnel opens
    // again; a lease and a renewal, unicast to A, come through it.
    a.stop();
    a.start();
    wait(
        "A's server for lan again, G up",
        Duration::from_secs(30),
        &nodes_of(&a, &g),
        || {
            std::fs::read_to_string(&a.log)
                .unwrap_or_default()
                .matches("DHCP server started network=\"default/lan\"")
                .count()
                >= 2
                && common::members_up(&a).contains(&idg)
        },
    );
    // A renewal (udhcpc renews at once on SIGUSR1), unicast to A.
    let (script, events) = common::udhcpc_recorder(&lab.dir);
    let mut client = NsProc::start(
        &web,
        &[
            "busybox",
            "udhcpc",
            "-f",
            "-i",
            "eth0",
            "-t",
            "20",
            "-T",
            "1",
            "-s",
            script.to_str().unwrap(),
        ],
        &lab.dir.join("udhcpc.log"),
    );
    let read = || std::fs::read_to_string(&events).unwrap_or_default();
    wait(
        "bound through the tunnel",
        Duration::from_secs(15),
        &nodes_of(&a, &g),
        || read().contains("bound "),
    );
    sh(&["kill", "-USR1", &client.0.id().to_string()]);
    wait(
        "renewed through the tunnel",
        Duration::from_secs(15),
        &nodes_of(&a, &g),
        || read().contains("renew "),
    );
    client.stop();
    let said = std::fs::read_to_string(lab.dir.join("udhcpc.log")).unwrap_or_default();
    assert!(
        said.contains(&format!("sending renew to server {BRIDGE_ADDR}"))
            && !said.contains("broadcasting renew"),
        "the renewal is unicast to the node and answered:\n{said}"
    );
    assert!(
        read().contains(&format!(" {BRIDGE_ADDR}")),
        "the VM's server is its node: {}",
        read()
    );
    assert!(
        read().lines().all(|l| l
            .split(' ')
            .nth(1)
            .is_some_and(|ip| ip.starts_with("10.77.0.1"))),
        "dnsmasq's range (10.77.0.100-150), chosen by the link selection: {}",
        read()
    );
    under.interrupt();
    let tunnel2 = pcaps.join("tunnel2.pcap");
    let (dhcp2, tcp2) = (
        common::pcap_count(&tunnel2, "udp port 67 or udp port 68"),
        common::pcap_count(&tunnel2, "tcp port 7946"),
    );
    assert_eq!(dhcp2, 0, "DHCP crossed the underlay beside the tunnel");
    assert!(tcp2 > 0, "the tunnel's TCP is on the underlay");
    let dns_log = std::fs::read_to_string(&dnsmasq_log).unwrap_or_default();
    assert!(
        dns_log.matches("DHCPACK").count() > 2 * LEASES,
        "dnsmasq ACKed every lease and the renewal: {dns_log}"
    );
    central.stop();
    let (plain_x, tunnel_x) = (
        exchanges(&pcaps.join("vm.pcap")),
        exchanges(&pcaps.join("vm-tunnel.pcap")),
    );
    assert!(plain_x.len() >= LEASES && tunnel_x.len() >= LEASES);
    eprintln!(
        "DHCPCAST, DISCOVER to ACK at the VM's port, median of {} and {}: plain UDP relay {:.2} ms, through the gateway's tunnel {:.2} ms",
        plain_x.len(),
        tunnel_x.len(),
        median_ms(plain_x),
        median_ms(tunnel_x),
    );
    eprintln!(
        "DHCPCAST, {LEASES} udhcpc leases (DISCOVER/OFFER/REQUEST/ACK) in a row: plain UDP relay {:.1} ms each, through the gateway's tunnel {:.1} ms each",
        plain.as_secs_f64() * 1000.0 / LEASES as f64,
        tunneled.as_secs_f64() * 1000.0 / LEASES as f64,
    );
    eprintln!("underlay while tunneled: {dhcp_frames} DHCP frames, {tcp_frames} tunnel TCP frames; A's counters {d}");
}
