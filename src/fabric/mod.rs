//! The layer-2 fabric: interstellar segments across satellites and the
//! anti-spoofing rules on every VM port (docs/ARCHITECTURE.md, "Layer 2
//! across satellites").
//!
//! The Network reconciler makes the static part (the VXLAN device of a
//! segment on its bridge, the uplink). The [`agent`] keeps the dynamic
//! part in step with desired state and the radar: the VXLAN forwarding
//! entries (head-end replication to the nodes that run the segment's
//! VMs, one entry per remote VM's MAC), the static neighbour entries of an
//! ARP-less segment, and one nftables ruleset (tables `bridge deorch` and
//! `inet deorch`) generated from desired state and replaced atomically.
//!
//! This module is pure: what the fabric should be ([`Desired`]) and the
//! nftables text for it ([`ruleset`]); [`kernel`] applies it.

pub mod agent;
pub mod kernel;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::model::names;
use crate::model::network::IsolationMode;
use crate::model::{NetworkSpec, ObjectKey};

/// The VXLAN header and the outer Ethernet, IPv4 and UDP headers: an
/// interstellar's MTU is the underlay's less this (1450 on a 1500 wire).
pub const VXLAN_OVERHEAD: u16 = 50;

/// The nftables table (in the `bridge` and `inet` families) deorch owns.
pub const TABLE: &str = "deorch";

/// One interstellar segment as every node computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// `namespace` of the Network: the tenant.
    pub namespace: String,
    /// The interstellar's name (the network's unless named).
    pub interstellar: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// The VXLAN device.
    pub device: String,
    /// No ARP across the underlay.
    pub arpless: bool,
    /// The bridges' MAC, the same on every node.
    pub anycast_mac: String,
}

/// The segment a Network spec asks for, before collisions are looked at.
pub fn wanted(namespace: &str, name: &str, spec: &NetworkSpec) -> Option<Segment> {
    let iso = spec.isolation.as_ref()?;
    let arpless = match iso.mode {
        IsolationMode::None => return None,
        IsolationMode::Interstellar => false,
        IsolationMode::ArplessInterstellar => true,
    };
    let interstellar = iso.interstellar.clone().unwrap_or_else(|| name.to_string());
    Some(Segment {
        vni: iso
            .vni
            .unwrap_or_else(|| names::vni(namespace, &interstellar)),
        device: names::vxlan_device(namespace, &interstellar),
        anycast_mac: names::anycast_mac(namespace, &interstellar),
        namespace: namespace.to_string(),
        interstellar,
        arpless,
    })
}

/// The condition reason of a network whose segment collides.
pub const COLLISION_REASON: &str = "VniCollision";

/// (VNI, device) of a Network record's segment, read from its JSON in
/// place (the engine asks this of every Network when one changes).
pub fn segment_of(r: &crate::store::Record) -> Option<(u32, String)> {
    if r.key.kind != crate::model::Kind::Network {
        return None;
    }
    let iso = r.object.pointer("/spec/isolation")?;
    if !matches!(
        iso.get("mode").and_then(|m| m.as_str()),
        Some("Interstellar" | "ArplessInterstellar")
    ) {
        return None;
    }
    let ns = &r.key.namespace;
    let name = iso
        .get("interstellar")
        .and_then(|i| i.as_str())
        .unwrap_or(&r.key.name);
    let vni = iso
        .get("vni")
        .and_then(|v| v.as_u64())
        .map(|v| v as u32)
        .unwrap_or_else(|| names::vni(ns, name));
    Some((vni, names::vxlan_device(ns, name)))
}

/// The segment of network `me` among every Network of the cluster
/// (`all`: each one's key and, for an interstellar, its VNI and device,
/// from [`segment_of`] or [`wanted`]): `Err` names the networks it
/// collides with. Two networks on one VNI, or two networks of one
/// namespace on one interstellar, are both kept down: a segment is never
/// shared by accident, whoever came first (docs/ALGORITHMS.md,
/// "Interstellar VNIs").
pub fn resolve<'a>(
    me: &ObjectKey,
    spec: &NetworkSpec,
    all: impl IntoIterator<Item = (&'a ObjectKey, Option<(u32, String)>)>,
) -> Option<Result<Segment, String>> {
    let seg = wanted(&me.namespace, &me.name, spec)?;
    let mut clash: Vec<String> = Vec::new();
    for (k, other) in all {
        let Some((vni, device)) = other else {
            continue;
        };
        if k != me && (vni == seg.vni || device == seg.device) {
            clash.push(format!("{}/{}", k.namespace, k.name));
        }
    }
    if clash.is_empty() {
        return Some(Ok(seg));
    }
    clash.sort();
    Some(Err(format!(
        "VNI {} (interstellar {:?}) is also wanted by network(s) {}: none of them is brought up until spec.isolation.vni tells them apart",
        seg.vni,
        seg.interstellar,
        clash.join(", ")
    )))
}

/// [`wanted`]'s VNI and device, for [`resolve`].
pub fn id_of(key: &ObjectKey, spec: &NetworkSpec) -> Option<(u32, String)> {
    wanted(&key.namespace, &key.name, spec).map(|s| (s.vni, s.device))
}

/// A VM NIC as the fabric sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Binding {
    /// The VM.
    pub vm: ObjectKey,
    /// The NIC's name.
    pub nic: String,
    /// Its MAC (lower case, colon separated).
    pub mac: String,
    /// Its IPv4 address, when it has one from desired state.
    pub ipv4: Option<Ipv4Addr>,
    /// Its tap on the node that runs it.
    pub tap: String,
}

/// A VM port on this node and what it may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The NIC.
    pub binding: Binding,
    /// The source addresses it may use; `None`: not known to the node
    /// (its DHCP is relayed to a central server), so no IPv4 source rule.
    pub addresses: Option<Vec<Ipv4Addr>>,
}

/// One segment on this node with what the radar says of its VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentState {
    /// The segment.
    pub segment: Segment,
    /// Its bridge here.
    pub bridge: String,
    /// Underlay addresses of the other nodes that run one of its VMs: the
    /// head-end replication list.
    pub remote_nodes: BTreeSet<Ipv4Addr>,
    /// Remote VMs' MACs and the node each runs on.
    pub remote_macs: BTreeMap<String, Ipv4Addr>,
    /// IPv4 → MAC of the segment's remote VMs: the neighbour entries an
    /// ARP-less segment answers from.
    pub neighbours: BTreeMap<Ipv4Addr, String>,
}

/// The whole fabric of this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Interstellar segments with a bridge here.
    pub segments: Vec<SegmentState>,
    /// VM ports here (every network).
    pub ports: Vec<Port>,
    /// Underlay addresses of admitted nodes: the only sources the VXLAN
    /// port accepts.
    pub nodes: BTreeSet<Ipv4Addr>,
    /// VXLAN devices of segments whose VNI collides: taken down at once
    /// (the Network reconciler, which made them, fails from then on).
    pub down: Vec<String>,
}

/// The rules a port has, by the name status uses for their counters.
pub const RULES: [&str; 7] = [
    "vlan",
    "mac",
    "arp",
    "dhcpServer",
    "chaddr",
    "ip",
    "routerAdvert",
];

/// The named counter of `rule` on `tap`.
pub fn counter(tap: &str, rule: &str) -> String {
    format!("{tap}_{rule}")
}

/// The counter of ARP frames an ARP-less segment kept off the underlay.
pub fn arp_counter(device: &str) -> String {
    format!("{device}_arp")
}

/// The counter of VXLAN datagrams from addresses that are no admitted
/// node.
pub const UNDERLAY_REFUSED: &str = "vxlan_refused";

fn hex_mac(mac: &str) -> String {
    format!("0x{}", mac.replace(':', ""))
}

/// The nftables script that makes the fabric's rules exactly `d`, in one
/// transaction (`nft -f`): the tables are created empty if absent,
/// deleted, and written again, so a reader never sees half a ruleset.
pub fn ruleset(d: &Desired) -> String {
    let t = TABLE;
    let mut s = String::new();
    let _ = writeln!(s, "table bridge {t} {{}}\ndelete table bridge {t}");
    let _ = writeln!(s, "table inet {t} {{}}\ndelete table inet {t}");
    let _ = writeln!(s, "table bridge {t} {{");
    for p in &d.ports {
        for r in RULES {
            let _ = writeln!(s, "  counter {} {{}}", counter(&p.binding.tap, r));
        }
    }
    for seg in d.segments.iter().filter(|g| g.segment.arpless) {
        let _ = writeln!(s, "  counter {} {{}}", arp_counter(&seg.segment.device));
    }
    // Every frame a VM sends enters at its tap: one verdict map jumps to
    // the port's chain.
    let _ = writeln!(
        s,
        "  chain prerouting {{\n    type filter hook prerouting priority -300; policy accept;"
    );
    if !d.ports.is_empty() {
        let map: Vec<String> = d
            .ports
            .iter()
            .map(|p| format!("\"{}\" : jump port_{}", p.binding.tap, p.binding.tap))
            .collect();
        let _ = writeln!(s, "    iifname vmap {{ {} }}", map.join(", "));
    }
    let _ = writeln!(s, "  }}");
    for p in &d.ports {
        let tap = &p.binding.tap;
        let mac = &p.binding.mac;
        let c = |r: &str| format!("counter name \"{}\"", counter(tap, r));
        let _ = writeln!(s, "  chain port_{tap} {{");
        let _ = writeln!(s, "    ether type {{ 8021q, 8021ad }} {} drop", c("vlan"));
        let _ = writeln!(s, "    ether saddr != {mac} {} drop", c("mac"));
        let _ = writeln!(s, "    arp saddr ether != {mac} {} drop", c("arp"));
        let _ = writeln!(s, "    udp sport {{ 67, 547 }} {} drop", c("dhcpServer"));
        let _ = writeln!(
            s,
            "    udp dport 67 @th,288,48 != {} {} drop",
            hex_mac(mac),
            c("chaddr")
        );
        let _ = writeln!(
            s,
            "    icmpv6 type nd-router-advert {} drop",
            c("routerAdvert")
        );
        if let Some(addrs) = &p.addresses {
            // 0.0.0.0: a client's DISCOVER and ARP probes (RFC 5227).
            let mut set: Vec<String> = vec!["0.0.0.0".into()];
            set.extend(addrs.iter().map(|a| a.to_string()));
            let set = set.join(", ");
            let _ = writeln!(s, "    arp saddr ip != {{ {set} }} {} drop", c("arp"));
            let _ = writeln!(s, "    ip saddr != {{ {set} }} {} drop", c("ip"));
            let _ = writeln!(s, "    ip saddr 0.0.0.0 udp dport != 67 {} drop", c("ip"));
        }
        let _ = writeln!(s, "  }}");
    }
    // What leaves for the underlay: never the node's own frames (every
    // node is the same anycast gateway), never ARP on an ARP-less segment.
    let _ = writeln!(
        s,
        "  chain postrouting {{\n    type filter hook postrouting priority 0; policy accept;"
    );
    for seg in &d.segments {
        let (dev, mac) = (&seg.segment.device, &seg.segment.anycast_mac);
        let _ = writeln!(s, "    oifname \"{dev}\" ether saddr {mac} drop");
        if seg.segment.arpless {
            let _ = writeln!(
                s,
                "    oifname \"{dev}\" ether type arp counter name \"{}\" drop",
                arp_counter(dev)
            );
        }
    }
    let _ = writeln!(s, "  }}\n}}");
    // VXLAN has no authentication: only admitted nodes may send to it.
    let _ = writeln!(s, "table inet {t} {{");
    let _ = writeln!(s, "  counter {UNDERLAY_REFUSED} {{}}");
    let _ = write!(s, "  set nodes {{ type ipv4_addr;");
    if !d.nodes.is_empty() {
        let n: Vec<String> = d.nodes.iter().map(|a| a.to_string()).collect();
        let _ = write!(s, " elements = {{ {} }};", n.join(", "));
    }
    let _ = writeln!(s, " }}");
    let _ = writeln!(
        s,
        "  chain input {{\n    type filter hook input priority -100; policy accept;"
    );
    if !d.segments.is_empty() {
        let port = crate::driver::linuxnet::VXLAN_PORT;
        let _ = writeln!(
            s,
            "    udp dport {port} ip saddr != @nodes counter name \"{UNDERLAY_REFUSED}\" drop"
        );
        let _ = writeln!(
            s,
            "    meta nfproto ipv6 udp dport {port} counter name \"{UNDERLAY_REFUSED}\" drop"
        );
    }
    let _ = writeln!(s, "  }}\n}}");
    s
}

/// Counters by name from `nft -j list counters` (both families).
pub fn parse_counters(json: &str) -> BTreeMap<String, u64> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let c = e.get("counter")?;
            if c["table"] != TABLE {
                return None;
            }
            Some((c["name"].as_str()?.to_string(), c["packets"].as_u64()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::network::Isolation;
    use crate::model::Kind;

    fn spec(mode: IsolationMode, vni: Option<u32>, interstellar: Option<&str>) -> NetworkSpec {
        NetworkSpec {
            isolation: Some(Isolation {
                mode,
                interstellar: interstellar.map(str::to_string),
                vni,
            }),
            ..Default::default()
        }
    }

    fn key(ns: &str, name: &str) -> ObjectKey {
        ObjectKey::new(Kind::Network, Some(ns), name)
    }

    #[test]
    fn a_vni_is_derived_from_the_tenant_and_the_interstellar_and_can_be_pinned() {
        let a = wanted(
            "acme",
            "lan",
            &spec(IsolationMode::Interstellar, None, None),
        )
        .unwrap();
        let b = wanted(
            "beta",
            "lan",
            &spec(IsolationMode::Interstellar, None, None),
        )
        .unwrap();
        assert_ne!(a.vni, b.vni, "two tenants' `lan` are two segments");
        assert_ne!(a.device, b.device);
        assert!(a.vni > 0 && a.vni < 1 << 24);
        assert_eq!(
            a,
            wanted(
                "acme",
                "lan",
                &spec(IsolationMode::Interstellar, None, None)
            )
            .unwrap(),
            "every node derives the same"
        );
        let named = wanted(
            "acme",
            "other",
            &spec(IsolationMode::ArplessInterstellar, Some(7), Some("lan")),
        )
        .unwrap();
        assert_eq!((named.vni, named.arpless), (7, true));
        assert_eq!(named.device, a.device, "the interstellar names the segment");
        assert!(wanted("acme", "x", &spec(IsolationMode::None, None, None)).is_none());
    }

    #[test]
    fn colliding_segments_are_all_kept_down() {
        let a = spec(IsolationMode::Interstellar, Some(42), None);
        let b = spec(IsolationMode::Interstellar, Some(42), None);
        let c = spec(IsolationMode::Interstellar, None, None);
        let (ka, kb, kc) = (key("t1", "a"), key("t2", "b"), key("t3", "c"));
        let all = [
            (&ka, id_of(&ka, &a)),
            (&kb, id_of(&kb, &b)),
            (&kc, id_of(&kc, &c)),
        ];
        let ra = resolve(&ka, &a, all.clone()).unwrap();
        let rb = resolve(&kb, &b, all.clone()).unwrap();
        assert!(ra.unwrap_err().contains("t2/b"));
        assert!(rb.unwrap_err().contains("t1/a"));
        assert!(resolve(&kc, &c, all).unwrap().is_ok());
        // One namespace, one interstellar, two networks: one device name.
        let d = spec(IsolationMode::Interstellar, None, Some("c"));
        let kd = key("t3", "d");
        let all = [(&kc, id_of(&kc, &c)), (&kd, id_of(&kd, &d))];
        assert!(resolve(&kc, &c, all).unwrap().is_err());
    }

    fn port(tap: &str, mac: &str, ip: Option<&str>) -> Port {
        Port {
            binding: Binding {
                vm: ObjectKey::new(Kind::VirtualMachine, Some("t"), tap),
                nic: "eth0".into(),
                mac: mac.into(),
                ipv4: ip.map(|i| i.parse().unwrap()),
                tap: tap.into(),
            },
            addresses: ip.map(|i| vec![i.parse().unwrap()]),
        }
    }

    #[test]
    fn the_ruleset_names_each_port_and_segment() {
        let seg = wanted(
            "t",
            "lan",
            &spec(IsolationMode::ArplessInterstellar, None, None),
        )
        .unwrap();
        let d = Desired {
            segments: vec![SegmentState {
                bridge: "br".into(),
                remote_nodes: BTreeSet::new(),
                remote_macs: BTreeMap::new(),
                neighbours: BTreeMap::new(),
                segment: seg.clone(),
            }],
            ports: vec![
                port("dt1", "52:54:00:00:00:01", Some("10.0.0.5")),
                port("dt2", "52:54:00:00:00:02", None),
            ],
            nodes: ["192.0.2.1".parse().unwrap()].into(),
            down: Vec::new(),
        };
        let s = ruleset(&d);
        assert!(s.contains("\"dt1\" : jump port_dt1, \"dt2\" : jump port_dt2"));
        assert!(s.contains("ether saddr != 52:54:00:00:00:01 counter name \"dt1_mac\" drop"));
        assert!(s.contains("udp dport 67 @th,288,48 != 0x525400000001"));
        assert!(s.contains("ip saddr != { 0.0.0.0, 10.0.0.5 } counter name \"dt1_ip\" drop"));
        // dt2's DHCP is relayed: its address is not the node's to know.
        let dt2 = s.split("chain port_dt2").nth(1).unwrap();
        assert!(!dt2.split("chain ").next().unwrap().contains("ip saddr !="));
        assert!(s.contains(&format!(
            "oifname \"{}\" ether type arp counter name \"{}_arp\" drop",
            seg.device, seg.device
        )));
        assert!(s.contains("elements = { 192.0.2.1 }"));
        assert!(s.contains("udp dport 4789 ip saddr != @nodes"));
    }

    #[test]
    fn counters_are_read_from_nft_json() {
        let j = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"counter": {"family": "bridge", "name": "dt1_mac", "table": "deorch", "handle": 4, "packets": 3, "bytes": 180}},
            {"counter": {"family": "inet", "name": "x", "table": "other", "handle": 4, "packets": 9, "bytes": 1}}]}"#;
        let c = parse_counters(j);
        assert_eq!(c.get("dt1_mac"), Some(&3));
        assert_eq!(c.len(), 1);
        assert!(parse_counters("not json").is_empty());
    }
}
