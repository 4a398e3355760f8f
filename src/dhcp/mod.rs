//! The node's DHCP server: one per network interface (bridge), answering
//! only the VMs it is told about, with every option from their manifests,
//! and relaying DHCPCAST VMs to central servers.
//!
//! ```text
//!  manifests ──► Table::build ──► DhcpServer::update ─┐
//!                 (options.rs: merge + resolve,        │   socket.rs (UDP :67, SO_BINDTODEVICE)
//!                  alloc.rs: addresses)                 ▼        │ bytes in / bytes out
//!                                         server::handle(config, table, bytes, from)
//!                                           pure: Outcome = reply | relay | note | drop(reason)
//!                                           relay.rs: DHCPCAST up (giaddr, option 82) and down
//! ```
//!
//! The server keeps no lease database: an address is a function of the
//! VM's identity and of the set of VMs on the network (`alloc.rs`), so a
//! restarted node, or another node, answers the same.
//!
//! API for the node ([`service::DhcpService`] drives it): [`DhcpServer::new`] binds the
//! interface, [`DhcpServer::update`] swaps the table of known VMs,
//! [`DhcpServer::run`] serves until the shutdown signal, and
//! [`DhcpServer::counters`] reports answers and drops by reason.

pub mod alloc;
pub mod gateway;
pub mod lease;
pub mod options;
pub mod perf;
pub mod relay;
pub mod server;
pub mod service;
pub mod socket;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ipnet::Ipv4Net;
use serde::Serialize;
use tokio::sync::watch;

use crate::model::names;
use crate::model::network::{DhcpOptions, NetworkSpec};
use crate::model::{Manifest, VirtualMachineSpec, DEFAULT_NAMESPACE};

pub use lease::{Leases, Pool};
pub use options::LeaseOptions;
pub use server::{handle, handle_in, Bind, Context, Delivery, Outcome, Side};

/// A hardware (Ethernet) address.
pub type Mac = [u8; 6];

/// Parse `52:54:00:12:34:56`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut out = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Format a MAC the usual way.
pub fn format_mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A configuration that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field of a manifest has a value the server cannot use.
    #[error("{field}: {message}")]
    Field {
        /// Field path, e.g. `dhcp.dnsServers`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The network has no IPv4 configuration.
    #[error("network {0} has no ipv4 section: nothing to serve")]
    NoIpv4(String),
}

/// An error of the running server.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The socket could not be set up.
    #[error("DHCP socket on interface {iface}: {what}: {source}")]
    Socket {
        /// Interface.
        iface: String,
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where DHCPCAST relays one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Central servers, in order; requests go to each.
    pub servers: Vec<Ipv4Addr>,
    /// The relay agent address (giaddr) replies come back to.
    pub giaddr: Ipv4Addr,
    /// The gateway node requests go to through the node tunnel
    /// (`dhcpcast.via`); `None`: by UDP from this node.
    pub via: Option<String>,
}

/// One NIC the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// `namespace/vm/nic`: the option 82 circuit ID and allocation key.
    pub identity: String,
    /// The address it gets; `None` when the range is exhausted or the NIC
    /// is relayed.
    pub address: Option<Ipv4Addr>,
    /// Its options.
    pub options: LeaseOptions,
    /// Set when this NIC's DHCP is relayed to central servers.
    pub upstream: Option<Upstream>,
}

/// Every VM NIC the server answers on one interface, by MAC.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Clients by MAC.
    pub clients: HashMap<Mac, Client>,
    /// Problems found while building (a NIC left out says why here).
    pub warnings: Vec<String>,
    /// The range and the whole network's allocation, so that the server
    /// can move a VM off an address a live lease holds
    /// ([`lease::adjust`]); `None` for a table built by hand.
    pub pool: Option<Box<Pool>>,
}

impl Table {
    /// The client with this MAC.
    pub fn get(&self, mac: &Mac) -> Option<&Client> {
        self.clients.get(mac)
    }

    /// Build the table of `network` from every VM attached to it.
    /// `vms` must be every VM of the cluster on that network (addresses
    /// depend on the whole set); `local` says which of them this server
    /// answers (e.g. those running on this node). `server_id` is the
    /// node's address on the network (never handed out; the default
    /// DHCPCAST giaddr).
    pub fn build(
        network: &Manifest<NetworkSpec>,
        vms: &[Manifest<VirtualMachineSpec>],
        server_id: Ipv4Addr,
        local: impl Fn(&Manifest<VirtualMachineSpec>) -> bool,
    ) -> Result<Table, ConfigError> {
        let net_ns = network
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        let net_name = network.metadata.name.clone().unwrap_or_default();
        let spec = &network.spec;
        let v4 = spec
            .ipv4
            .as_ref()
            .ok_or_else(|| ConfigError::NoIpv4(format!("{net_ns}/{net_name}")))?;
        let field_ip = |field: &str, s: &str| -> Result<Ipv4Addr, ConfigError> {
            s.parse().map_err(|_| ConfigError::Field {
                field: field.into(),
                message: format!("{s:?} is not an IPv4 address"),
            })
        };
        let subnet: Ipv4Net = v4.subnet.parse().map_err(|_| ConfigError::Field {
            field: "ipv4.subnet".into(),
            message: format!("{:?} is not an IPv4 CIDR", v4.subnet),
        })?;
        let subnet = subnet.trunc();
        let gateway = match &v4.gateway {
            Some(g) => Some(field_ip("ipv4.gateway", g)?),
            None => None,
        };
        let (start, end) = match &v4.range {
            Some(r) => (
                field_ip("ipv4.range.start", &r.start)?,
                field_ip("ipv4.range.end", &r.end)?,
            ),
            None => {
                let (lo, hi) = (u32::from(subnet.network()), u32::from(subnet.broadcast()));
                if hi - lo < 2 {
                    (subnet.network(), subnet.broadcast())
                } else {
                    (Ipv4Addr::from(lo + 1), Ipv4Addr::from(hi - 1))
                }
            }
        };
        let net_dhcp = spec.dhcp.clone().unwrap_or_default();

        struct Nic<'a> {
            identity: String,
            vm_name: String,
            mac: Mac,
            fixed: Option<Ipv4Addr>,
            dhcp: DhcpOptions,
            dhcpcast: Option<&'a crate::model::network::Dhcpcast>,
            local: bool,
        }
        let mut warnings = Vec::new();
        let mut nics: Vec<Nic> = Vec::new();
        for vm in vms {
            let ns = vm
                .metadata
                .namespace
                .as_deref()
                .unwrap_or(DEFAULT_NAMESPACE);
            let name = vm.metadata.name.as_deref().unwrap_or_default();
            if ns != net_ns {
                continue;
            }
            for nic in vm.spec.nics.iter().filter(|n| n.network == net_name) {
                let identity = format!("{ns}/{name}/{}", nic.name);
                let mac_text = nic
                    .mac
                    .clone()
                    .unwrap_or_else(|| names::mac(ns, name, &nic.name));
                let Some(mac) = parse_mac(&mac_text) else {
                    warnings.push(format!(
                        "{identity}: MAC {mac_text:?} is not valid; left out"
                    ));
                    continue;
                };
                let fixed = match &nic.ipv4 {
                    Some(s) => match s.parse::<Ipv4Addr>() {
                        Ok(a) if subnet.contains(&a) => Some(a),
                        Ok(a) => {
                            warnings.push(format!(
                                "{identity}: fixed address {a} is outside {subnet}; left out"
                            ));
                            continue;
                        }
                        Err(_) => {
                            warnings.push(format!("{identity}: {s:?} is not an IPv4 address"));
                            continue;
                        }
                    },
                    None => None,
                };
                let dhcp = match &nic.dhcp {
                    Some(o) => options::merge(&net_dhcp, o),
                    None => net_dhcp.clone(),
                };
                nics.push(Nic {
                    identity,
                    vm_name: name.to_string(),
                    mac,
                    fixed,
                    dhcp,
                    dhcpcast: nic.dhcpcast.as_ref().or(spec.dhcpcast.as_ref()),
                    local: local(vm),
                });
            }
        }
        nics.sort_by(|a, b| a.identity.cmp(&b.identity));

        // Fixed addresses first: the first identity (in name order) keeps
        // a duplicated one.
        let mut reserved: BTreeSet<Ipv4Addr> = [server_id].into();
        reserved.extend(gateway);
        reserved.insert(subnet.network());
        reserved.insert(subnet.broadcast());
        let mut fixed_owner: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for n in &nics {
            if let Some(a) = n.fixed {
                if let Some(owner) = fixed_owner.get(&a) {
                    warnings.push(format!(
                        "{}: fixed address {a} is already {owner}'s; left out",
                        n.identity
                    ));
                } else {
                    fixed_owner.insert(a, n.identity.clone());
                }
            }
        }
        reserved.extend(fixed_owner.keys().copied());
        let dynamic: BTreeSet<String> = nics
            .iter()
            .filter(|n| n.fixed.is_none() && n.dhcpcast.is_none())
            .map(|n| n.identity.clone())
            .collect();
        let allocated = alloc::allocate(start, end, &reserved, &dynamic);
        let mut assigned = allocated.clone();
        for (a, id) in &fixed_owner {
            assigned.insert(id.clone(), Some(*a));
        }
        let pool = Pool {
            start,
            end,
            reserved: reserved.clone(),
            assigned,
            dynamic: dynamic.clone(),
        };
        let mut clients = HashMap::new();
        for n in nics {
            if !n.local || n.dhcp.enabled == Some(false) {
                continue;
            }
            let address = match n.fixed {
                Some(a) if fixed_owner.get(&a) == Some(&n.identity) => Some(a),
                Some(_) => continue,
                None => allocated.get(&n.identity).copied().flatten(),
            };
            let upstream = match n.dhcpcast {
                Some(c) => {
                    let servers = c
                        .servers
                        .iter()
                        .map(|s| field_ip("dhcpcast.servers", s))
                        .collect::<Result<Vec<_>, _>>()?;
                    let giaddr = match &c.relay_address {
                        Some(r) => field_ip("dhcpcast.relayAddress", r)?,
                        None => server_id,
                    };
                    Some(Upstream {
                        servers,
                        giaddr,
                        via: c.via.clone(),
                    })
                }
                None => None,
            };
            if address.is_none() && upstream.is_none() {
                warnings.push(format!(
                    "{}: no free address in {start}-{end}; it gets no lease",
                    n.identity
                ));
            }
            let opts = LeaseOptions::resolve(
                subnet,
                gateway,
                spec.mtu
                    .or((spec.effective_mtu() != 1500).then(|| spec.effective_mtu())),
                &n.dhcp,
                &n.vm_name,
            )
            .map_err(|e| match e {
                ConfigError::Field { field, message } => ConfigError::Field {
                    field: format!("{}: {field}", n.identity),
                    message,
                },
                other => other,
            })?;
            if let Some(prev) = clients.insert(
                n.mac,
                Client {
                    identity: n.identity.clone(),
                    address,
                    options: opts,
                    upstream,
                },
            ) {
                warnings.push(format!(
                    "{} and {} share MAC {}: neither is answered",
                    prev.identity,
                    n.identity,
                    format_mac(&n.mac)
                ));
                clients.remove(&n.mac);
            }
        }
        Ok(Table {
            clients,
            warnings,
            pool: Some(Box::new(pool)),
        })
    }
}

/// Why a packet got no answer. Every drop is counted by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than the fixed BOOTP header and magic cookie.
    Truncated,
    /// Larger than [`server::MAX_PACKET`].
    Oversized,
    /// The magic cookie is not 99.130.83.99.
    BadMagic,
    /// A BOOTREPLY where a request was expected, or an unknown op.
    WrongOp,
    /// htype is not Ethernet or hlen is not 6.
    BadHardwareAddress,
    /// An option's length runs past the end of the packet.
    OptionOverrun,
    /// The option list has no End option.
    MissingEnd,
    /// A fixed-size option (message type, server id, ...) has the wrong length.
    BadOptionLength,
    /// Option overload (52): options in sname/file are not accepted.
    OptionOverload,
    /// An option's content did not decode.
    Malformed,
    /// No DHCP message type: plain BOOTP is not served.
    NoMessageType,
    /// A message type a server does not take (OFFER, ACK, ...).
    UnsupportedMessageType,
    /// chaddr is not a VM on this interface.
    UnknownClient,
    /// The client identifier (61) names another MAC than chaddr.
    ClientIdMismatch,
    /// A relayed packet from a relay agent that is not trusted.
    UntrustedRelay,
    /// A requested lease time beyond [`server::MAX_REQUESTED_LEASE`].
    HugeLease,
    /// RELEASE/DECLINE, or a REQUEST choosing another server (RFC 2131
    /// §4.3.2: ignored, another server's business).
    NotOurServer,
    /// The VM has no address (range exhausted).
    NoAddress,
    /// A client put relay agent information (82) in its own request.
    ClientRelayInfo,
    /// The hop count reached the limit.
    HopLimit,
    /// A reply from a server that is not this VM's DHCPCAST server, or
    /// for another relay address or circuit.
    RelayReplyRejected,
    /// The reply does not fit the client's maximum message size.
    ReplyTooLarge,
    /// A BOOTREPLY that came from the VMs' side (only central servers,
    /// through the DHCPCAST upstream sockets, send replies).
    ReplyFromVmSide,
    /// A request that came in on a DHCPCAST upstream socket.
    RequestFromUpstream,
    /// A DECLINE of an address that is not the one this VM was given.
    ForeignDecline,
    /// A request on the bridge whose chaddr is not the VM of the port
    /// (tap) it came in on.
    WrongPort,
    /// A request for the tunnel to a DHCPCAST gateway (`via`) that no
    /// tunnel could take: the gateway is not a known node, the node has
    /// no tunnels (no gossip), or the tunnel's queue is full.
    TunnelUnavailable,
    /// The gateway refused a request sent through the tunnel (it relays
    /// to no such server for this node).
    GatewayRefused,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 28] = [
        DropReason::Truncated,
        DropReason::Oversized,
        DropReason::BadMagic,
        DropReason::WrongOp,
        DropReason::BadHardwareAddress,
        DropReason::OptionOverrun,
        DropReason::MissingEnd,
        DropReason::BadOptionLength,
        DropReason::OptionOverload,
        DropReason::Malformed,
        DropReason::NoMessageType,
        DropReason::UnsupportedMessageType,
        DropReason::UnknownClient,
        DropReason::ClientIdMismatch,
        DropReason::UntrustedRelay,
        DropReason::HugeLease,
        DropReason::NotOurServer,
        DropReason::NoAddress,
        DropReason::ClientRelayInfo,
        DropReason::HopLimit,
        DropReason::RelayReplyRejected,
        DropReason::ReplyTooLarge,
        DropReason::ReplyFromVmSide,
        DropReason::RequestFromUpstream,
        DropReason::ForeignDecline,
        DropReason::WrongPort,
        DropReason::TunnelUnavailable,
        DropReason::GatewayRefused,
    ];

    /// snake_case name, as in counters.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::BadMagic => "bad_magic",
            DropReason::WrongOp => "wrong_op",
            DropReason::BadHardwareAddress => "bad_hardware_address",
            DropReason::OptionOverrun => "option_overrun",
            DropReason::MissingEnd => "missing_end",
            DropReason::BadOptionLength => "bad_option_length",
            DropReason::OptionOverload => "option_overload",
            DropReason::Malformed => "malformed",
            DropReason::NoMessageType => "no_message_type",
            DropReason::UnsupportedMessageType => "unsupported_message_type",
            DropReason::UnknownClient => "unknown_client",
            DropReason::ClientIdMismatch => "client_id_mismatch",
            DropReason::UntrustedRelay => "untrusted_relay",
            DropReason::HugeLease => "huge_lease",
            DropReason::NotOurServer => "not_our_server",
            DropReason::NoAddress => "no_address",
            DropReason::ClientRelayInfo => "client_relay_info",
            DropReason::HopLimit => "hop_limit",
            DropReason::RelayReplyRejected => "relay_reply_rejected",
            DropReason::ReplyTooLarge => "reply_too_large",
            DropReason::ReplyFromVmSide => "reply_from_vm_side",
            DropReason::RequestFromUpstream => "request_from_upstream",
            DropReason::ForeignDecline => "foreign_decline",
            DropReason::WrongPort => "wrong_port",
            DropReason::TunnelUnavailable => "tunnel_unavailable",
            DropReason::GatewayRefused => "gateway_refused",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the server did with a packet that was not dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// DISCOVER answered.
    Offer,
    /// REQUEST acknowledged.
    Ack,
    /// REQUEST refused.
    Nak,
    /// INFORM answered (no lease).
    InformAck,
    /// RELEASE noted.
    Release,
    /// DECLINE noted (another host uses the address).
    Decline,
    /// A DHCPCAST request forwarded to central servers.
    RelayedUp,
    /// A central server's reply delivered to its VM.
    RelayedDown,
    /// A DHCPCAST request sent through the tunnel to the gateway node.
    TunneledUp,
    /// A central server's reply that came through the tunnel, delivered
    /// to its VM.
    TunneledDown,
}

/// Live counters (atomics; shared by the socket loop and readers).
#[derive(Debug, Default)]
pub struct Counters {
    events: [AtomicU64; 10],
    drops: [AtomicU64; DropReason::ALL.len()],
    send_errors: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CountersSnapshot {
    /// OFFERs sent.
    pub offers: u64,
    /// ACKs sent for REQUESTs.
    pub acks: u64,
    /// NAKs sent.
    pub naks: u64,
    /// ACKs sent for INFORMs.
    pub inform_acks: u64,
    /// RELEASEs received.
    pub releases: u64,
    /// DECLINEs received.
    pub declines: u64,
    /// Requests relayed to central servers.
    pub relayed_up: u64,
    /// Central servers' replies delivered.
    pub relayed_down: u64,
    /// Requests sent through the tunnel to a DHCPCAST gateway.
    #[serde(default)]
    pub tunneled_up: u64,
    /// Replies from a gateway's tunnel delivered.
    #[serde(default)]
    pub tunneled_down: u64,
    /// Replies the socket failed to send.
    pub send_errors: u64,
    /// Leases live now.
    #[serde(default)]
    pub live_leases: u64,
    /// Packets dropped, by reason (reasons never seen are left out).
    pub dropped: BTreeMap<String, u64>,
}

impl CountersSnapshot {
    /// Drops for one reason.
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.dropped.get(r.as_str()).copied().unwrap_or(0)
    }
    /// All drops.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
    /// Requests for a gateway's tunnel dropped (no tunnel, or refused).
    pub fn tunnel_dropped(&self) -> u64 {
        self.dropped(DropReason::TunnelUnavailable) + self.dropped(DropReason::GatewayRefused)
    }
}

impl Counters {
    /// Count an event.
    pub fn event(&self, e: Event) {
        self.events[e as usize].fetch_add(1, Ordering::Relaxed);
    }
    /// Count a drop.
    pub fn dropped(&self, r: DropReason) {
        self.drops[r as usize].fetch_add(1, Ordering::Relaxed);
    }
    /// Count a failed send.
    pub fn send_error(&self) {
        self.send_errors.fetch_add(1, Ordering::Relaxed);
    }
    /// Read every counter.
    pub fn snapshot(&self) -> CountersSnapshot {
        let e = |x: Event| self.events[x as usize].load(Ordering::Relaxed);
        CountersSnapshot {
            offers: e(Event::Offer),
            acks: e(Event::Ack),
            naks: e(Event::Nak),
            inform_acks: e(Event::InformAck),
            releases: e(Event::Release),
            declines: e(Event::Decline),
            relayed_up: e(Event::RelayedUp),
            relayed_down: e(Event::RelayedDown),
            tunneled_up: e(Event::TunneledUp),
            tunneled_down: e(Event::TunneledDown),
            send_errors: self.send_errors.load(Ordering::Relaxed),
            live_leases: 0,
            dropped: DropReason::ALL
                .iter()
                .map(|r| {
                    (
                        r.as_str().to_string(),
                        self.drops[*r as usize].load(Ordering::Relaxed),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

/// What the server needs besides the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The node's address on the interface: server identifier (54).
    pub server_id: Ipv4Addr,
    /// Relay agents (giaddr) whose relayed requests are answered, e.g. a
    /// benchmark client; empty means relayed requests are dropped.
    pub trusted_relays: Vec<Ipv4Addr>,
    /// Server port (67).
    pub port: u16,
}

impl ServerConfig {
    /// A config on the standard port, trusting no relay.
    pub fn new(server_id: Ipv4Addr) -> ServerConfig {
        ServerConfig {
            server_id,
            trusted_relays: Vec::new(),
            port: 67,
        }
    }
}

/// The DHCP server of one interface.
pub struct DhcpServer {
    iface: String,
    config: ServerConfig,
    /// The table from the manifests.
    base: RwLock<Arc<Table>>,
    /// `base` adjusted by the leases: what is served.
    table: RwLock<Arc<Table>>,
    leases: std::sync::Mutex<Leases>,
    lease_file: std::sync::Mutex<Option<std::path::PathBuf>>,
    relay_key: [u8; 32],
    counters: Arc<Counters>,
    log: LogLimiter,
    socket: std::net::UdpSocket,
    /// The node's tunnels to DHCPCAST gateways (`via`), when it has them.
    tunnels: std::sync::OnceLock<Arc<gateway::Tunnels>>,
}

impl DhcpServer {
    /// Bind the interface (UDP port 67, `SO_BINDTODEVICE`); serves an
    /// empty table until [`DhcpServer::update`].
    pub fn new(iface: &str, config: ServerConfig) -> Result<DhcpServer, DhcpError> {
        let socket = socket::bind_interface(iface, config.port)?;
        let mut relay_key = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut relay_key);
        Ok(DhcpServer {
            iface: iface.to_string(),
            config,
            base: RwLock::new(Arc::new(Table::default())),
            table: RwLock::new(Arc::new(Table::default())),
            leases: std::sync::Mutex::new(Leases::default()),
            lease_file: std::sync::Mutex::new(None),
            relay_key,
            counters: Arc::new(Counters::default()),
            log: LogLimiter::default(),
            socket,
            tunnels: std::sync::OnceLock::new(),
        })
    }

    /// Remember leases in `path` (JSON, written atomically: at once for a
    /// RELEASE or DECLINE, at most once a second for ACKs, see
    /// `socket.rs`) and take the live ones it holds now: a restarted
    /// server then never offers an address a VM still holds.
    pub fn keep_leases_in(&self, path: std::path::PathBuf) {
        if let Ok(text) = std::fs::read_to_string(&path) {
            match serde_json::from_str::<Leases>(&text) {
                Ok(mut l) => {
                    l.expire(crate::clock::now_ms());
                    *self.leases.lock().unwrap_or_else(|p| p.into_inner()) = l;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "DHCP leases unreadable, ignored: {e}")
                }
            }
        }
        *self.lease_file.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
        self.readjust();
    }

    /// Send the requests of NICs relayed `via` a gateway node through
    /// `tunnels` (set before [`DhcpServer::run`]; without it they are
    /// dropped as [`DropReason::TunnelUnavailable`]).
    pub fn relay_through(&self, tunnels: Arc<gateway::Tunnels>) {
        let _ = self.tunnels.set(tunnels);
    }

    /// Replace the table of VMs this server answers.
    pub fn update(&self, table: Table) {
        *self.base.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self.readjust();
    }

    /// Recompute the served table from the base table and the leases.
    fn readjust(&self) {
        let base = self.base.read().unwrap_or_else(|p| p.into_inner()).clone();
        let now = crate::clock::now_ms();
        let adjusted = {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            leases.expire(now);
            lease::adjust(&base, &leases, now)
        };
        for w in adjusted.warnings.iter().skip(base.warnings.len()) {
            tracing::info!(iface = %self.iface, "DHCP: {w}");
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(adjusted);
    }

    /// Change the leases with `f`; readjust and persist when it says so.
    fn with_leases(&self, f: impl FnOnce(&mut Leases) -> bool) {
        let changed = {
            let mut l = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            let changed = f(&mut l);
            if changed {
                self.persist(&l);
            }
            changed
        };
        if changed {
            self.readjust();
        }
    }

    fn persist(&self, leases: &Leases) {
        let path = self
            .lease_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(path) = path {
            let text = serde_json::to_string(leases).expect("leases serialize");
            if let Err(e) = crate::state_file::write(&path, text.as_bytes()) {
                tracing::warn!(path = %path.display(), "DHCP leases not recorded: {e}");
            }
        }
    }

    /// The current table (adjusted by the leases).
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A copy of the leases.
    pub fn leases(&self) -> Leases {
        self.leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The counters so far.
    pub fn counters(&self) -> CountersSnapshot {
        let mut c = self.counters.snapshot();
        c.live_leases = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live(crate::clock::now_ms()) as u64;
        c
    }

    /// The interface served.
    pub fn interface(&self) -> &str {
        &self.iface
    }

    /// Serve until `shutdown` becomes true (or its sender is dropped).
    pub async fn run(&self, shutdown: watch::Receiver<bool>) -> Result<(), DhcpError> {
        socket::serve(self, shutdown).await
    }
}

/// Logs what the server does (offers, ACKs, NAKs, declines, drops) at
/// info level, at most [`LogLimiter::BURST`] lines per
/// [`LogLimiter::WINDOW_MS`]; then one line says how many were left out.
/// The counters count everything.
#[derive(Debug, Default)]
pub struct LogLimiter {
    state: std::sync::Mutex<(u64, u32, u64)>,
}

impl LogLimiter {
    /// Lines per window.
    pub const BURST: u32 = 50;
    /// The window.
    pub const WINDOW_MS: u64 = 10_000;

    /// Whether a line may be logged now; `Some(n)` when `n` lines were
    /// left out in the window that just ended.
    pub fn admit(&self, now_ms: u64) -> (bool, Option<u64>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (start, used, suppressed) = &mut *s;
        let mut report = None;
        if now_ms.saturating_sub(*start) >= Self::WINDOW_MS {
            if *suppressed > 0 {
                report = Some(*suppressed);
            }
            *start = now_ms;
            *used = 0;
            *suppressed = 0;
        }
        if *used < Self::BURST {
            *used += 1;
            (true, report)
        } else {
            *suppressed += 1;
            (false, report)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::network::{AddressRange, Ipv4Config};
    use crate::model::vm::Nic;

    fn network(range: (&str, &str)) -> Manifest<NetworkSpec> {
        Manifest::new(
            "lan",
            NetworkSpec {
                ipv4: Some(Ipv4Config {
                    subnet: "10.0.0.0/24".into(),
                    gateway: Some("10.0.0.1".into()),
                    range: Some(AddressRange {
                        start: range.0.into(),
                        end: range.1.into(),
                    }),
                    public: false,
                }),
                ..Default::default()
            },
        )
    }

    fn vm(name: &str, ipv4: Option<&str>) -> Manifest<VirtualMachineSpec> {
        Manifest::new(
            name,
            VirtualMachineSpec {
                nics: vec![Nic {
                    name: "eth0".into(),
                    network: "lan".into(),
                    ipv4: ipv4.map(str::to_string),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
    }

    fn addresses(t: &Table) -> BTreeMap<String, Option<Ipv4Addr>> {
        t.clients
            .values()
            .map(|c| (c.identity.clone(), c.address))
            .collect()
    }

    #[test]
    fn table_is_independent_of_vm_order_and_reuses_derived_macs() {
        let server: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let net = network(("10.0.0.1", "10.0.0.40"));
        let mut vms: Vec<_> = (0..30).map(|i| vm(&format!("vm{i}"), None)).collect();
        vms.push(vm("fixed", Some("10.0.0.20")));
        let a = Table::build(&net, &vms, server, |_| true).unwrap();
        vms.reverse();
        vms.rotate_left(7);
        let b = Table::build(&net, &vms, server, |_| true).unwrap();
        assert_eq!(addresses(&a), addresses(&b));
        let got: Vec<Ipv4Addr> = addresses(&a).values().flatten().copied().collect();
        let unique: BTreeSet<_> = got.iter().collect();
        assert_eq!(unique.len(), 31, "collisions resolved");
        for reserved in ["10.0.0.1", "10.0.0.2"] {
            assert!(!unique.contains(&reserved.parse::<Ipv4Addr>().unwrap()));
        }
        assert_eq!(
            addresses(&a)["default/fixed/eth0"],
            Some("10.0.0.20".parse().unwrap())
        );
        let mac = parse_mac(&names::mac("default", "vm3", "eth0")).unwrap();
        assert_eq!(a.clients[&mac].identity, "default/vm3/eth0");
    }

    #[test]
    fn local_filter_answers_some_but_allocates_over_all() {
        let server: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let net = network(("10.0.0.10", "10.0.0.200"));
        let vms: Vec<_> = (0..20).map(|i| vm(&format!("vm{i}"), None)).collect();
        let all = Table::build(&net, &vms, server, |_| true).unwrap();
        let some = Table::build(&net, &vms, server, |v| {
            v.metadata.name.as_deref() == Some("vm3")
        })
        .unwrap();
        assert_eq!(some.clients.len(), 1);
        for (mac, c) in &some.clients {
            assert_eq!(all.clients[mac], *c);
        }
    }

    #[test]
    fn duplicates_are_left_out_with_a_warning() {
        let server: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let net = network(("10.0.0.10", "10.0.0.20"));
        let mut twin = vm("b", None);
        twin.spec.nics[0].mac = Some(names::mac("default", "a", "eth0"));
        let vms = vec![
            vm("a", None),
            twin,
            vm("c", Some("10.0.0.5")),
            vm("d", Some("10.0.0.5")),
        ];
        let t = Table::build(&net, &vms, server, |_| true).unwrap();
        let ids: BTreeSet<_> = t.clients.values().map(|c| c.identity.as_str()).collect();
        assert_eq!(ids, ["default/c/eth0"].into());
        assert_eq!(t.warnings.len(), 2, "{:?}", t.warnings);
    }

    /// Issue 18: serving web1 and web2 (web2 bound to its address), a
    /// new VM whose computed address is web2's is offered another one
    /// while web2's lease lives; web2 keeps its own; once the lease ends
    /// the computed addresses apply again. A declined address is offered
    /// to nobody.
    #[test]
    fn a_live_lease_is_never_offered_to_another_vm() {
        let server: Ipv4Addr = "10.0.0.2".parse().unwrap();
        let net = network(("10.0.0.100", "10.0.0.109"));
        let before = Table::build(&net, &[vm("web1", None), vm("web2", None)], server, |_| {
            true
        })
        .unwrap();
        let web2 = parse_mac(&names::mac("default", "web2", "eth0")).unwrap();
        let held = before.clients[&web2].address.unwrap();
        // A third VM whose computed address is web2's (bounded search).
        let (name, after) = (3..200)
            .map(|i| {
                let n = format!("vm{i}");
                let vms = [vm("web1", None), vm("web2", None), vm(&n, None)];
                (n, Table::build(&net, &vms, server, |_| true).unwrap())
            })
            .find(|(n, t)| {
                let m = parse_mac(&names::mac("default", n, "eth0")).unwrap();
                t.clients[&m].address == Some(held)
            })
            .expect("some name collides within 200");
        let new = parse_mac(&names::mac("default", &name, "eth0")).unwrap();
        let mut leases = Leases::default();
        leases.bind(held, web2, "default/web2/eth0", 1_000);
        let served = lease::adjust(&after, &leases, 500);
        assert_eq!(served.clients[&web2].address, Some(held));
        let moved = served.clients[&new].address.unwrap();
        assert_ne!(moved, held);
        let all: BTreeSet<_> = served.clients.values().filter_map(|c| c.address).collect();
        assert_eq!(all.len(), 3, "all distinct: {served:?}");
        // The lease ended: the manifests' addresses again.
        assert_eq!(
            addresses(&lease::adjust(&after, &leases, 1_000)),
            addresses(&after)
        );
        // Declined: nobody gets it, the owner moves too.
        let mut leases = Leases::default();
        leases.quarantine(held, 1_000);
        let served = lease::adjust(&before, &leases, 500);
        assert!(served.clients.values().all(|c| c.address != Some(held)));
        assert!(served.clients.values().all(|c| c.address.is_some()));
    }
}
