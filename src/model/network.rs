//! `Network`: a layer-2 segment on each satellite (a bridge), its IPv4
//! addressing, the DHCP options the node's own DHCP server hands out,
//! DHCPCAST relaying and isolation (interstellars).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    cidr_pattern, ipv4_pattern, Condition, Duration, PositiveDuration, DNS1123_LABEL_PATTERN,
    DOMAIN_PATTERN,
};

/// Desired network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSpec {
    /// Host bridge name (at most 15 characters); derived from the network's
    /// name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = BRIDGE_PATTERN))]
    pub bridge: Option<String>,
    /// MTU of the bridge and taps (68-65535); default 1500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 68))]
    pub mtu: Option<u16>,
    /// IPv4 addressing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Config>,
    /// DHCP served by each node to its own VMs on this network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpOptions>,
    /// Relay DHCP of this network's VMs to central servers instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcpcast: Option<Dhcpcast>,
    /// A host interface (NIC, bond, VLAN device) the bridge is attached
    /// to, so the network is the physical segment behind it; without one
    /// the bridge is host-only (the node's VMs and the node itself).
    /// Excludes an interstellar `isolation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = BRIDGE_PATTERN))]
    pub uplink: Option<String>,
    /// Layer-2 isolation: `Interstellar` makes the network one segment
    /// across every satellite that runs one of its VMs (VXLAN), which no
    /// other namespace's network ever joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
}

impl NetworkSpec {
    /// The MTU of the bridge, taps and DHCP option 26: the spec's, else
    /// 1500, or 1450 on an interstellar (the underlay's 1500 less the 50
    /// bytes of VXLAN encapsulation).
    pub fn effective_mtu(&self) -> u16 {
        let interstellar = self
            .isolation
            .as_ref()
            .is_some_and(|i| i.mode != IsolationMode::None);
        self.mtu.unwrap_or(if interstellar { 1450 } else { 1500 })
    }
}

/// An interface name: 1-15 printable ASCII characters other than space
/// and '/'.
pub const BRIDGE_PATTERN: &str = "^[!-.0-~]{1,15}$";

/// IPv4 addressing of a network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ipv4Config {
    /// Subnet in CIDR form, e.g. `10.20.0.0/24`.
    #[schemars(regex(pattern = cidr_pattern()))]
    pub subnet: String,
    /// Default gateway (must lie inside the subnet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = ipv4_pattern()))]
    pub gateway: Option<String>,
    /// Addresses VMs get when they have no fixed address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<AddressRange>,
    /// True if the subnet is public (routable) address space; checked
    /// against the address (private ranges must say false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
}

/// An inclusive address range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddressRange {
    /// First address.
    #[schemars(regex(pattern = ipv4_pattern()))]
    pub start: String,
    /// Last address.
    #[schemars(regex(pattern = ipv4_pattern()))]
    pub end: String,
}

/// DHCP options. Set per network and overridable per VM NIC; a field left
/// out inherits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DhcpOptions {
    /// Serve DHCP at all (default true when `ipv4` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Lease time (default 1h; at least 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<PositiveDuration>")]
    pub lease_time: Option<Duration>,
    /// Host name (option 12); default the VM's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    /// Broadcast address (option 28); default derived from the subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = ipv4_pattern()))]
    pub broadcast: Option<String>,
    /// Interface MTU (option 26); default the network's MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 68))]
    pub mtu: Option<u16>,
    /// NTP servers (option 42).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = ipv4_pattern())))]
    pub ntp_servers: Vec<String>,
    /// DNS servers (option 6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = ipv4_pattern())))]
    pub dns_servers: Vec<String>,
    /// Domain name (option 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DOMAIN_PATTERN), length(max = 253))]
    pub domain_name: Option<String>,
    /// Domain search list (option 119).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = DOMAIN_PATTERN), length(max = 253)))]
    pub domain_search: Vec<String>,
    /// Log servers (option 7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = ipv4_pattern())))]
    pub log_servers: Vec<String>,
    /// NetBIOS over TCP/IP (options 44, 45, 46).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netbios: Option<Netbios>,
    /// SMTP servers (option 69).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = ipv4_pattern())))]
    pub smtp_servers: Vec<String>,
    /// POP3 servers (option 70).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = ipv4_pattern())))]
    pub pop3_servers: Vec<String>,
    /// IP forwarding on the client (option 19).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_forwarding: Option<bool>,
    /// TCP keepalive interval (option 38).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive_interval: Option<Duration>,
    /// Classless static routes (option 121, RFC 3442). When present the
    /// client ignores the router option, so deorch adds the default route
    /// through the gateway to this list itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classless_static_routes: Vec<StaticRoute>,
}

/// NetBIOS settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Netbios {
    /// NetBIOS name servers / WINS (option 44).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = ipv4_pattern())))]
    pub name_servers: Vec<String>,
    /// NetBIOS datagram distribution servers (option 45).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = ipv4_pattern())))]
    pub datagram_servers: Vec<String>,
    /// Node type (option 46): `B`, `P`, `M` or `H`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_type: Option<NetbiosNodeType>,
}

/// NetBIOS node type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NetbiosNodeType {
    /// Broadcast (1).
    B,
    /// Peer-to-peer (2).
    P,
    /// Mixed (4).
    M,
    /// Hybrid (8).
    H,
}

/// A classless static route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticRoute {
    /// Destination in CIDR form.
    #[schemars(regex(pattern = cidr_pattern()))]
    pub destination: String,
    /// Next hop.
    #[schemars(regex(pattern = ipv4_pattern()))]
    pub gateway: String,
}

/// DHCPCAST: relay a VM's DHCP to designated central servers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dhcpcast {
    /// Central DHCP servers (IPv4 addresses), tried in order.
    #[schemars(length(min = 1), inner(regex(pattern = ipv4_pattern())))]
    pub servers: Vec<String>,
    /// Relay agent address (giaddr); defaults to the node's address on
    /// the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = ipv4_pattern()))]
    pub relay_address: Option<String>,
    /// The satellite (an admitted node beside the central servers) that
    /// relays to them: the node sends its relayed requests to that node
    /// through the encrypted, authenticated node tunnel instead of by
    /// UDP, and takes replies only from that tunnel. The gateway relays
    /// only to servers some Network or VM names with `via` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub via: Option<String>,
}

/// Layer-2 isolation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Isolation {
    /// `None` (a bridge on each node, host-only or on its `uplink`),
    /// `Interstellar` (one segment across satellites over VXLAN, joined
    /// only by this namespace's VMs) or `ArplessInterstellar` (the same,
    /// and no ARP frame ever crosses the underlay: each node answers its
    /// VMs' ARP from the bindings it knows).
    #[serde(default)]
    pub mode: IsolationMode,
    /// Name of the interstellar (isolation group); default the network's.
    /// Networks of one namespace naming the same interstellar are one
    /// segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS1123_LABEL_PATTERN), length(max = 63))]
    pub interstellar: Option<String>,
    /// The VXLAN network identifier (1-16777215); derived from the
    /// namespace and interstellar name when absent (docs/ALGORITHMS.md,
    /// "Interstellar VNIs"). Two segments that end up with one VNI are
    /// both kept down, never joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16_777_215))]
    pub vni: Option<u32>,
}

/// Isolation mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum IsolationMode {
    /// No isolation.
    #[default]
    None,
    /// Layer-2 isolation group.
    Interstellar,
    /// Isolation group without ARP.
    ArplessInterstellar,
}

/// What a node reports about a network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkStatus {
    /// The `metadata.generation` the reconciler last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions (type, status, reason, message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Host bridge in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Active leases on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leases: Option<u32>,
    /// The interstellar segment on this node, when the network is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interstellar: Option<InterstellarStatus>,
    /// What this node's DHCP server on the network answered and dropped
    /// since it started, as of the network's last reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<DhcpCounters>,
}

/// A DHCP server's counters since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DhcpCounters {
    /// OFFERs sent.
    pub offers: u64,
    /// ACKs sent for REQUESTs.
    pub acks: u64,
    /// NAKs sent (a VM asked for an address that is not its own).
    pub naks: u64,
    /// ACKs sent for INFORMs.
    #[serde(default)]
    pub inform_acks: u64,
    /// RELEASEs received.
    #[serde(default)]
    pub releases: u64,
    /// DECLINEs received (a VM found its address in use).
    pub declines: u64,
    /// DHCPCAST requests relayed to central servers.
    #[serde(default)]
    pub relayed_up: u64,
    /// Central servers' replies delivered to VMs.
    #[serde(default)]
    pub relayed_down: u64,
    /// DHCPCAST requests sent to the gateway node through the tunnel
    /// (`dhcpcast.via`).
    #[serde(default)]
    pub tunneled_up: u64,
    /// Central servers' replies that came back through the tunnel and
    /// were delivered to VMs.
    #[serde(default)]
    pub tunneled_down: u64,
    /// DHCPCAST requests for the tunnel that were dropped: no tunnel to
    /// the gateway (unknown node, queue full) or refused by it.
    #[serde(default)]
    pub tunnel_dropped: u64,
    /// Replies the server failed to send.
    #[serde(default)]
    pub send_errors: u64,
    /// Packets dropped, all reasons.
    pub dropped: u64,
    /// Packets dropped, by reason (reasons never seen are left out).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub dropped_by_reason: std::collections::BTreeMap<String, u64>,
    /// Leases live now.
    #[serde(default)]
    pub live_leases: u64,
}

/// An interstellar segment as this node carries it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InterstellarStatus {
    /// Its VXLAN network identifier.
    pub vni: u32,
    /// The VXLAN device on the bridge.
    pub device: String,
}
