//! DHCPCAST through a gateway node (`dhcpcast.via`): the relaying node
//! sends its relayed requests to an admitted node beside the central
//! servers over the node tunnel (Noise, the peer checked against the
//! admitted nodes: `relocate::tunnel`), never by UDP; the gateway relays
//! them to the servers and sends their replies back the same way.
//!
//! ```text
//! VM ─► node A (relay.rs: giaddr A, option 82: circuit, token, server-id-override A)
//!        └─ Tunnels ══ tunnel "dhcpcast" (TCP, encrypted) ══► gateway G (Gateway)
//!                                      giaddr G, 82.5 link selection = A ─► central server :67
//!        ◄═════════════ giaddr A again, 82.5 stripped ═════════════ G :67 ◄─┘ (by xid + chaddr)
//! ```
//!
//! On the path between A and G there is no DHCP to read or forge: only
//! the tunnel's TCP. A NIC relayed through a gateway takes replies from
//! that gateway's tunnel only (`relay::down`, [`Side::Tunnel`]), with the
//! same checks as replies by UDP (the token, the circuit, the servers).
//! The gateway relays only to servers that some Network, VM or Spacesuit
//! in its store names with `via` itself (no open relay), and only for
//! admitted nodes (the tunnel). It relays from its own address towards
//! each server (a socket bound to that address and port 67, so its own
//! DHCP servers' sockets on bridges keep theirs) with giaddr = that
//! address and the RFC 3527 link selection (82.5) = the relaying node's
//! giaddr, so the server picks the VM's subnet (dnsmasq and Kea honour
//! it); the relaying node's option 82 (circuit, token, server identifier
//! override) goes along unchanged, so the VM still renews through its
//! own node.
//!
//! Messages in the tunnel (one per frame, after the header naming the
//! stream [`STREAM`]): `U` tag servers packet (up), `D` tag server packet
//! (down), `R` tag reason (the gateway refused); the tag routes a reply
//! to the DHCP server (network) of the relaying node that asked.
//!
//! [`Side::Tunnel`]: super::server::Side::Tunnel

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dhcproto::v4::relay::{RelayCode, RelayInfo};
use dhcproto::v4::{DhcpOption, Message, Opcode, OptionCode};
use serde::Serialize;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use super::server::{decode, encode, mac_of, MAX_HOPS, MAX_PACKET};
use super::{LogLimiter, Mac};
use crate::gossip::NodeId;
use crate::model::Kind;
use crate::relocate::agent::Link;
use crate::relocate::tunnel::{self, Stream, Tunnel};
use crate::store::Store;

/// The tunnel stream's name in the header.
pub const STREAM: &str = "dhcpcast";
/// Messages waiting for one gateway's tunnel (or for one relaying node's
/// tunnel, at the gateway); more are dropped and counted.
pub const QUEUE: usize = 256;
/// Servers one request may name.
const MAX_SERVERS: usize = 16;
/// A refusal's text is cut to this.
const MAX_REASON: usize = 512;
/// A request's replies are matched for this long.
const PENDING_FOR: Duration = Duration::from_secs(30);
/// Requests awaiting replies at a gateway.
const MAX_PENDING: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One message in the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// A relayed request, for `servers`.
    Up {
        /// Routes the replies back to the DHCP server that asked.
        tag: u32,
        /// Central servers.
        servers: Vec<Ipv4Addr>,
        /// The request as the relaying node built it.
        packet: Vec<u8>,
    },
    /// A central server's reply, giaddr the relaying node's again.
    Down {
        /// The tag of the request.
        tag: u32,
        /// The server that answered.
        server: Ipv4Addr,
        /// The reply.
        packet: Vec<u8>,
    },
    /// The gateway refused a request.
    Refused {
        /// The tag of the request.
        tag: u32,
        /// Why.
        reason: String,
    },
}

impl Msg {
    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Msg::Up {
                tag,
                servers,
                packet,
            } => {
                b.push(b'U');
                b.extend_from_slice(&tag.to_be_bytes());
                b.push(servers.len() as u8);
                for s in servers {
                    b.extend_from_slice(&s.octets());
                }
                b.extend_from_slice(packet);
            }
            Msg::Down {
                tag,
                server,
                packet,
            } => {
                b.push(b'D');
                b.extend_from_slice(&tag.to_be_bytes());
                b.extend_from_slice(&server.octets());
                b.extend_from_slice(packet);
            }
            Msg::Refused { tag, reason } => {
                b.push(b'R');
                b.extend_from_slice(&tag.to_be_bytes());
                let mut end = reason.len().min(MAX_REASON);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                b.extend_from_slice(&reason.as_bytes()[..end]);
            }
        }
        b
    }

    /// Parse one message; `None` for anything malformed.
    pub fn decode(b: &[u8]) -> Option<Msg> {
        let (&kind, rest) = b.split_first()?;
        let tag = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        let rest = &rest[4..];
        let ip = |b: &[u8]| -> Option<Ipv4Addr> {
            Some(Ipv4Addr::from(<[u8; 4]>::try_from(b.get(..4)?).ok()?))
        };
        match kind {
            b'U' => {
                let (&n, rest) = rest.split_first()?;
                let n = usize::from(n);
                if n == 0 || n > MAX_SERVERS || rest.len() < 4 * n {
                    return None;
                }
                let servers = rest[..4 * n].chunks(4).filter_map(ip).collect();
                let packet = rest[4 * n..].to_vec();
                (packet.len() <= MAX_PACKET).then_some(Msg::Up {
                    tag,
                    servers,
                    packet,
                })
            }
            b'D' => {
                let server = ip(rest)?;
                let packet = rest[4..].to_vec();
                (packet.len() <= MAX_PACKET).then_some(Msg::Down {
                    tag,
                    server,
                    packet,
                })
            }
            b'R' if rest.len() <= MAX_REASON => Some(Msg::Refused {
                tag,
                reason: String::from_utf8_lossy(rest).into_owned(),
            }),
            _ => None,
        }
    }
}

/// What identifies a request's replies: xid and chaddr.
type ReplyKey = (u32, Mac);

fn reply_key(m: &Message) -> Option<ReplyKey> {
    Some((m.xid(), mac_of(m)?))
}

/// A request as the gateway relays it, with what its replies need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// The request for the server.
    pub packet: Vec<u8>,
    /// The relaying node's giaddr (replies get it back).
    pub giaddr: Ipv4Addr,
    /// Its xid and chaddr (what identifies its replies).
    pub key: (u32, Mac),
}

/// The request as the gateway relays it: giaddr the gateway's address
/// towards the server, hops + 1, and the link selection suboption (82.5)
/// = the relaying node's giaddr in its option 82.
pub fn toward_server(packet: &[u8], gateway: Ipv4Addr) -> Result<Relayed, &'static str> {
    let mut m = decode(packet).map_err(|_| "a malformed DHCP message")?;
    if m.opcode() != Opcode::BootRequest {
        return Err("not a request");
    }
    let key = reply_key(&m).ok_or("not an Ethernet client")?;
    let giaddr = m.giaddr();
    if giaddr.is_unspecified() {
        return Err("a request no node relayed (no giaddr)");
    }
    if m.hops() >= MAX_HOPS {
        return Err("hop limit");
    }
    let Some(DhcpOption::RelayAgentInformation(info)) =
        m.opts_mut().get_mut(OptionCode::RelayAgentInformation)
    else {
        return Err("no option 82 from the relaying node");
    };
    if info.get(RelayCode::AgentCircuitId).is_none() || info.get(RelayCode::AgentRemoteId).is_none()
    {
        return Err("option 82 without the relaying node's circuit and token");
    }
    if info.get(RelayCode::LinkSelection).is_some() {
        return Err("option 82 already selects a link");
    }
    info.insert(RelayInfo::LinkSelection(giaddr));
    let hops = m.hops() + 1;
    m.set_giaddr(gateway).set_hops(hops);
    let out = dhcproto::Encodable::to_vec(&m).map_err(|_| "does not encode")?;
    if out.len() > MAX_PACKET {
        return Err("too large with the link selection");
    }
    Ok(Relayed {
        packet: out,
        giaddr,
        key,
    })
}

/// A server's reply as the relaying node gets it back: giaddr its own
/// again, the link selection suboption gone.
pub fn toward_node(packet: &[u8], giaddr: Ipv4Addr) -> Result<Vec<u8>, &'static str> {
    let mut m = decode(packet).map_err(|_| "a malformed DHCP message")?;
    if m.opcode() != Opcode::BootReply {
        return Err("not a reply");
    }
    if let Some(DhcpOption::RelayAgentInformation(info)) =
        m.opts_mut().get_mut(OptionCode::RelayAgentInformation)
    {
        info.remove(RelayCode::LinkSelection);
    }
    m.set_giaddr(giaddr);
    encode(&m).ok_or("does not encode")
}

/// A message `op` for MAC 02:00:00:00:0c:01 as node `node` relays it
/// (giaddr, hops, its option 82): the fuzz seed's and the tests'.
fn relayed_sample(op: Opcode, node: Ipv4Addr) -> Message {
    use dhcproto::v4::relay::RelayAgentInformation;
    use dhcproto::v4::{HType, MessageType};
    let mut m = Message::default();
    m.set_opcode(op)
        .set_htype(HType::Eth)
        .set_xid(0x1234_5678)
        .set_chaddr(&[2, 0, 0, 0, 0xc, 1])
        .set_giaddr(node)
        .set_hops(1);
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    let mut info = RelayAgentInformation::default();
    info.insert(RelayInfo::AgentCircuitId(b"default/web/eth0".to_vec()));
    info.insert(RelayInfo::AgentRemoteId(vec![7; 16]));
    info.insert(RelayInfo::ServerIdentifierOverride(node));
    m.opts_mut().insert(DhcpOption::RelayAgentInformation(info));
    m
}

/// A relayed DISCOVER of node 10.77.0.1 for its gateway (the fuzz
/// corpus's seed).
pub fn sample_up() -> Vec<u8> {
    let m = relayed_sample(Opcode::BootRequest, Ipv4Addr::new(10, 77, 0, 1));
    Msg::Up {
        tag: 1,
        servers: vec![Ipv4Addr::new(10, 55, 0, 2)],
        packet: dhcproto::Encodable::to_vec(&m).expect("encodes"),
    }
    .encode()
}

// ---------------------------------------------------------------------
// The relaying node's side.

/// What comes back from a gateway to one DHCP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Back {
    /// A server's reply.
    Reply {
        /// The gateway node it came through.
        gateway: String,
        /// The central server that answered.
        server: Ipv4Addr,
        /// The reply, giaddr this node's.
        packet: Vec<u8>,
    },
    /// The gateway refused a request.
    Refused {
        /// The gateway node.
        gateway: String,
        /// Why.
        reason: String,
    },
}

type Subscribers = Arc<Mutex<HashMap<u32, mpsc::Sender<Back>>>>;

/// The node's tunnels to DHCPCAST gateways: one long-lived tunnel per
/// gateway node, opened at its first request and opened again when it
/// fails (backing off up to 5 s), with a bounded queue in front.
pub struct Tunnels {
    link: watch::Receiver<Link>,
    queues: Mutex<HashMap<String, mpsc::Sender<Vec<u8>>>>,
    subscribers: Subscribers,
    next_tag: AtomicU32,
}

/// One DHCP server's share of the tunnels: its tag and its replies.
pub struct Subscription {
    /// The tag its requests carry.
    pub tag: u32,
    /// Replies and refusals for it.
    pub rx: mpsc::Receiver<Back>,
    subscribers: Subscribers,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.subscribers).remove(&self.tag);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tunnels {
    /// Tunnels opened with what `link` says (the node's key, who is
    /// admitted, members' names and addresses).
    pub fn new(link: watch::Receiver<Link>) -> Arc<Tunnels> {
        Arc::new(Tunnels {
            link,
            queues: Mutex::new(HashMap::new()),
            subscribers: Arc::new(Mutex::new(HashMap::new())),
            next_tag: AtomicU32::new(1),
        })
    }

    /// A DHCP server's tag and the channel of its replies.
    pub fn subscribe(&self) -> Subscription {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        lock(&self.subscribers).insert(tag, tx);
        Subscription {
            tag,
            rx,
            subscribers: self.subscribers.clone(),
        }
    }

    /// Queue a relayed request for `gateway`'s tunnel. Must be called
    /// within the runtime (the first request to a gateway starts its
    /// tunnel's task).
    pub fn send(
        self: &Arc<Self>,
        gateway: &str,
        tag: u32,
        servers: Vec<Ipv4Addr>,
        packet: Vec<u8>,
    ) -> Result<(), &'static str> {
        if servers.is_empty() || servers.len() > MAX_SERVERS {
            return Err("between 1 and 16 servers");
        }
        let msg = Msg::Up {
            tag,
            servers,
            packet,
        }
        .encode();
        let tx = {
            let mut q = lock(&self.queues);
            q.entry(gateway.to_string())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    tokio::spawn(self.clone().carry(gateway.to_string(), rx));
                    tx
                })
                .clone()
        };
        tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => "the tunnel's queue is full",
            mpsc::error::TrySendError::Closed(_) => "the tunnel's task ended",
        })
    }

    /// Open a tunnel to the node named `gateway`.
    async fn open(&self, gateway: &str) -> Result<Tunnel, String> {
        let (id, addr, key) = {
            let l = self.link.borrow();
            let id: Option<NodeId> = l
                .names
                .iter()
                .find(|(_, n)| n.as_str() == gateway)
                .map(|(id, _)| id.clone());
            let addr = id.as_ref().and_then(|i| l.addrs.get(i).copied());
            (id, addr, l.key.clone())
        };
        let id = id.ok_or_else(|| format!("no member node is named {gateway:?}"))?;
        let addr = addr.ok_or_else(|| format!("no address known for {gateway}"))?;
        let key = key.ok_or("no tunnel key yet (gossip not started)")?;
        let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("{addr}: no connection within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        let _ = s.set_nodelay(true);
        crate::relocate::agent::bound_liveness(&s);
        let header = serde_json::to_vec(&Header {
            relocation: "",
            stream: STREAM,
        })
        .expect("headers serialize");
        tunnel::connect(s, &key, &id, &header)
            .await
            .map_err(|e| e.to_string())
    }

    /// Keep the tunnel to `gateway` and carry its queue.
    async fn carry(self: Arc<Self>, gateway: String, mut rx: mpsc::Receiver<Vec<u8>>) {
        let mut backoff = Duration::from_millis(100);
        let mut said: Option<(String, Instant)> = None;
        loop {
            let why = match self.open(&gateway).await {
                Ok(t) => {
                    backoff = Duration::from_millis(100);
                    said = None;
                    tracing::info!(%gateway, peer = %t.peer, "DHCPCAST tunnel to the gateway open");
                    let (mut r, mut w) = t.split();
                    let subscribers = self.subscribers.clone();
                    let gw = gateway.clone();
                    let mut reader = tokio::spawn(async move {
                        loop {
                            match r.recv().await {
                                Ok(Some(m)) => route(&subscribers, &gw, &m),
                                Ok(None) => return "closed by the gateway".to_string(),
                                Err(e) => return e.to_string(),
                            }
                        }
                    });
                    let why = loop {
                        tokio::select! {
                            m = rx.recv() => match m {
                                Some(m) => {
                                    if let Err(e) = w.send(&m).await {
                                        break e.to_string();
                                    }
                                }
                                None => {
                                    reader.abort();
                                    return;
                                }
                            },
                            r = &mut reader => break r.unwrap_or_else(|e| e.to_string()),
                        }
                    };
                    reader.abort();
                    why
                }
                Err(e) => e,
            };
            // One line per cause, again after 30 s while it lasts.
            let repeat = said
                .as_ref()
                .is_some_and(|(w, t)| *w == why && t.elapsed() < Duration::from_secs(30));
            if !repeat {
                tracing::warn!(%gateway, "DHCPCAST tunnel to the gateway: {why}; trying again");
                said = Some((why, Instant::now()));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// A gateway's message to the DHCP server whose tag it carries.
fn route(subscribers: &Subscribers, gateway: &str, bytes: &[u8]) {
    let (tag, back) = match Msg::decode(bytes) {
        Some(Msg::Down {
            tag,
            server,
            packet,
        }) => (
            tag,
            Back::Reply {
                gateway: gateway.to_string(),
                server,
                packet,
            },
        ),
        Some(Msg::Refused { tag, reason }) => (
            tag,
            Back::Refused {
                gateway: gateway.to_string(),
                reason,
            },
        ),
        _ => {
            tracing::debug!(%gateway, "DHCPCAST: a malformed message from the gateway, dropped");
            return;
        }
    };
    let tx = lock(subscribers).get(&tag).cloned();
    if let Some(tx) = tx {
        let _ = tx.try_send(back);
    }
}

/// The tunnel header, as the relocation agent reads it (`relocate::agent`).
#[derive(Serialize)]
struct Header<'a> {
    relocation: &'a str,
    stream: &'a str,
}

// ---------------------------------------------------------------------
// The gateway's side.

struct Pending {
    reply: mpsc::Sender<Vec<u8>>,
    tag: u32,
    giaddr: Ipv4Addr,
    servers: Vec<Ipv4Addr>,
    source: Ipv4Addr,
    until: Instant,
}

/// A gateway's counters since the node started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayCounters {
    /// Requests relayed to central servers.
    pub relayed_up: u64,
    /// Replies sent back through tunnels.
    pub relayed_down: u64,
    /// Requests refused (a server not served via this node, malformed).
    pub refused: u64,
    /// Messages dropped (no pending request, queue full, send failed).
    pub dropped: u64,
}

/// This node as a DHCPCAST gateway for other nodes.
pub struct Gateway {
    me: String,
    store: Arc<Store>,
    /// Sockets on port 67 by local address, with their readers.
    sockets: tokio::sync::Mutex<HashMap<Ipv4Addr, Arc<UdpSocket>>>,
    /// The local address towards each server.
    sources: Mutex<HashMap<Ipv4Addr, Ipv4Addr>>,
    pending: Mutex<HashMap<ReplyKey, Pending>>,
    /// Servers relayed via this node, as of a store version.
    allowed: Mutex<Option<(u64, Instant, BTreeSet<Ipv4Addr>)>>,
    counters: [AtomicU64; 4],
    log: LogLimiter,
    /// Refusals have their own budget: relays do not drown them.
    refusals: LogLimiter,
}

impl Gateway {
    /// The gateway of the node named `me`, reading `store` for the
    /// servers it may relay to.
    pub fn new(me: &str, store: Arc<Store>) -> Arc<Gateway> {
        Arc::new(Gateway {
            me: me.to_string(),
            store,
            sockets: tokio::sync::Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            allowed: Mutex::new(None),
            counters: Default::default(),
            log: LogLimiter::default(),
            refusals: LogLimiter::default(),
        })
    }

    /// Its counters.
    pub fn counters(&self) -> GatewayCounters {
        let c = |i: usize| self.counters[i].load(Ordering::Relaxed);
        GatewayCounters {
            relayed_up: c(0),
            relayed_down: c(1),
            refused: c(2),
            dropped: c(3),
        }
    }

    fn count(&self, i: usize) {
        self.counters[i].fetch_add(1, Ordering::Relaxed);
    }

    fn log(&self, level: tracing::Level, what: std::fmt::Arguments) {
        let limiter = match level {
            tracing::Level::WARN => &self.refusals,
            _ => &self.log,
        };
        let (ok, left_out) = limiter.admit(crate::clock::now_ms());
        if let Some(n) = left_out {
            tracing::info!("DHCPCAST gateway: {n} more events not logged in the last 10 s");
        }
        if ok {
            if level == tracing::Level::WARN {
                tracing::warn!("DHCPCAST gateway: {what}");
            } else {
                tracing::info!("DHCPCAST gateway: {what}");
            }
        }
    }

    /// Whether some Network, VM or Spacesuit names `server` with `via`
    /// this node.
    fn serves(&self, server: Ipv4Addr) -> bool {
        let version = self.store.version();
        // The set as of this store version; a server it holds is taken
        // for up to a second after a change (no rescan per request while
        // the store changes), one it lacks is looked for again.
        if let Some((v, at, set)) = &*lock(&self.allowed) {
            let known = set.contains(&server);
            if *v == version || (known && at.elapsed() < Duration::from_secs(1)) {
                return known;
            }
        }
        let set = served_via(&self.store, &self.me);
        let ok = set.contains(&server);
        *lock(&self.allowed) = Some((version, Instant::now(), set));
        ok
    }

    /// Serve one relaying node's tunnel until it closes.
    pub async fn serve<S: Stream>(self: Arc<Self>, t: Tunnel<S>, peer: String) {
        let (mut r, mut w) = t.split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if w.send(&m).await.is_err() {
                    break;
                }
            }
        });
        tracing::info!(%peer, "DHCPCAST gateway: a node's tunnel open");
        loop {
            match r.recv().await {
                Ok(Some(m)) => self.up(&peer, &m, &tx).await,
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(%peer, "DHCPCAST gateway: tunnel ended: {e}");
                    break;
                }
            }
        }
        drop(tx);
        let _ = writer.await;
    }

    fn refuse(&self, peer: &str, tag: u32, reason: String, reply: &mpsc::Sender<Vec<u8>>) {
        self.count(2);
        self.log(
            tracing::Level::WARN,
            format_args!("refused a request from {peer}: {reason}"),
        );
        let _ = reply.try_send(Msg::Refused { tag, reason }.encode());
    }

    /// One message from relaying node `peer`.
    async fn up(self: &Arc<Self>, peer: &str, bytes: &[u8], reply: &mpsc::Sender<Vec<u8>>) {
        let Some(Msg::Up {
            tag,
            servers,
            packet,
        }) = Msg::decode(bytes)
        else {
            self.count(2);
            self.log(
                tracing::Level::WARN,
                format_args!("a malformed message from {peer}, dropped"),
            );
            return;
        };
        if let Some(s) = servers.iter().find(|s| !self.serves(**s)) {
            let me = &self.me;
            return self.refuse(
                peer,
                tag,
                format!(
                    "no Network, VM or Spacesuit relays to {s} via {me}: {me} does not relay there"
                ),
                reply,
            );
        }
        for server in servers.iter().copied() {
            let source = match self.source_towards(server) {
                Ok(a) => a,
                Err(e) => {
                    self.count(3);
                    self.log(
                        tracing::Level::WARN,
                        format_args!("no route to {server}: {e}"),
                    );
                    continue;
                }
            };
            let Relayed {
                packet: out,
                giaddr,
                key,
            } = match toward_server(&packet, source) {
                Ok(x) => x,
                Err(e) => return self.refuse(peer, tag, e.to_string(), reply),
            };
            let sock = match self.socket(source).await {
                Ok(s) => s,
                Err(e) => {
                    self.count(3);
                    self.log(
                        tracing::Level::WARN,
                        format_args!("no socket on {source}:67: {e}"),
                    );
                    continue;
                }
            };
            if !self.remember(
                key,
                Pending {
                    reply: reply.clone(),
                    tag,
                    giaddr,
                    servers: servers.clone(),
                    source,
                    until: Instant::now() + PENDING_FOR,
                },
            ) {
                self.count(3);
                self.log(
                    tracing::Level::WARN,
                    format_args!("{MAX_PENDING} requests await replies: one from {peer} dropped"),
                );
                return;
            }
            match sock.send_to(&out, SocketAddrV4::new(server, 67)).await {
                Ok(_) => {
                    self.count(0);
                    self.log(
                        tracing::Level::INFO,
                        format_args!("relayed a request of {peer} (giaddr {giaddr}) to {server} from {source}"),
                    );
                }
                Err(e) => {
                    self.count(3);
                    self.log(
                        tracing::Level::WARN,
                        format_args!("sending to {server}: {e}"),
                    );
                }
            }
        }
    }

    /// Keep a request's reply route; false when too many wait.
    fn remember(&self, key: ReplyKey, p: Pending) -> bool {
        let mut pending = lock(&self.pending);
        if pending.len() >= MAX_PENDING && !pending.contains_key(&key) {
            let now = Instant::now();
            pending.retain(|_, p| p.until > now && !p.reply.is_closed());
            if pending.len() >= MAX_PENDING {
                return false;
            }
        }
        pending.insert(key, p);
        true
    }

    /// This node's address towards `server` (the kernel's route).
    fn source_towards(&self, server: Ipv4Addr) -> std::io::Result<Ipv4Addr> {
        if let Some(a) = lock(&self.sources).get(&server) {
            return Ok(*a);
        }
        let probe = std::net::UdpSocket::bind("0.0.0.0:0")?;
        probe.connect(SocketAddrV4::new(server, 67))?;
        let a = match probe.local_addr()? {
            SocketAddr::V4(a) => *a.ip(),
            SocketAddr::V6(_) => return Err(std::io::Error::other("not IPv4")),
        };
        lock(&self.sources).insert(server, a);
        Ok(a)
    }

    /// The socket on `addr:67` (bound to that address only, so DHCP
    /// servers bound to bridges keep their packets), its reader started.
    async fn socket(self: &Arc<Self>, addr: Ipv4Addr) -> std::io::Result<Arc<UdpSocket>> {
        let mut sockets = self.sockets.lock().await;
        if let Some(s) = sockets.get(&addr) {
            return Ok(s.clone());
        }
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddrV4::new(addr, 67).into())?;
        s.set_nonblocking(true)?;
        let s = Arc::new(UdpSocket::from_std(s.into())?);
        sockets.insert(addr, s.clone());
        let (me, reader) = (Arc::downgrade(self), s.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_PACKET + 1];
            loop {
                let got = reader.recv_from(&mut buf).await;
                let Some(me) = me.upgrade() else { return };
                match got {
                    Ok((n, SocketAddr::V4(from))) => me.down(&buf[..n], from, addr),
                    Ok(_) => {}
                    Err(e) => tracing::warn!("DHCPCAST gateway receive on {addr}:67: {e}"),
                }
            }
        });
        Ok(s)
    }

    /// A packet on the socket of `local`: a server's reply goes back
    /// through the tunnel its request came from.
    fn down(&self, bytes: &[u8], from: SocketAddrV4, local: Ipv4Addr) {
        let Some(key) = decode(bytes).ok().as_ref().and_then(reply_key) else {
            self.count(3);
            return;
        };
        let route = {
            let pending = lock(&self.pending);
            pending
                .get(&key)
                .filter(|p| {
                    p.until > Instant::now() && p.source == local && p.servers.contains(from.ip())
                })
                .map(|p| (p.reply.clone(), p.tag, p.giaddr))
        };
        let Some((reply, tag, giaddr)) = route else {
            self.count(3);
            self.log(
                tracing::Level::INFO,
                format_args!("a packet from {from} answers no request relayed here, dropped"),
            );
            return;
        };
        let packet = match toward_node(bytes, giaddr) {
            Ok(p) => p,
            Err(e) => {
                self.count(3);
                self.log(
                    tracing::Level::INFO,
                    format_args!("a packet from {from}: {e}, dropped"),
                );
                return;
            }
        };
        let msg = Msg::Down {
            tag,
            server: *from.ip(),
            packet,
        };
        match reply.try_send(msg.encode()) {
            Ok(()) => {
                self.count(1);
                self.log(
                    tracing::Level::INFO,
                    format_args!("a reply of {from} sent back for giaddr {giaddr}"),
                );
            }
            Err(_) => self.count(3),
        }
    }
}

/// Serve a tunnel a relaying node opened for [`STREAM`] (called by the
/// relocation agent, whose listener takes every node tunnel).
pub async fn serve<S: Stream>(
    t: Tunnel<S>,
    peer: String,
    dhcp: Option<&super::service::DhcpService>,
) -> Result<(), String> {
    let gateway = dhcp.and_then(|d| d.gateway()).ok_or(
        "this node is no DHCPCAST gateway: it runs no DHCP service (--net linux) or no gossip",
    )?;
    gateway.serve(t, peer).await;
    Ok(())
}

/// Every server some Network, VM or Spacesuit relays `via` the node
/// named `me`.
pub fn served_via(store: &Store, me: &str) -> BTreeSet<Ipv4Addr> {
    let mut out = BTreeSet::new();
    let mut take = |d: &serde_json::Value| {
        if d["via"].as_str() == Some(me) {
            for s in d["servers"].as_array().into_iter().flatten() {
                if let Some(a) = s.as_str().and_then(|s| s.parse().ok()) {
                    out.insert(a);
                }
            }
        }
    };
    for r in store.list(Some(Kind::Network)) {
        take(&r.object["spec"]["dhcpcast"]);
    }
    for kind in [Kind::VirtualMachine, Kind::Spacesuit] {
        for r in store.list(Some(kind)) {
            for nic in r.object["spec"]["nics"].as_array().into_iter().flatten() {
                take(&nic["dhcpcast"]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::relay::RelayAgentInformation;
    use dhcproto::{Decodable, Decoder, Encodable};

    const MAC: Mac = [2, 0, 0, 0, 0xc, 1];
    const NODE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 55, 0, 1);

    fn relayed(op: Opcode) -> Message {
        relayed_sample(op, NODE)
    }

    fn info(packet: &[u8]) -> (Message, RelayAgentInformation) {
        let m = Message::decode(&mut Decoder::new(packet)).unwrap();
        let Some(DhcpOption::RelayAgentInformation(i)) =
            m.opts().get(OptionCode::RelayAgentInformation).cloned()
        else {
            panic!("no option 82")
        };
        (m, i)
    }

    #[test]
    fn the_gateway_relays_as_itself_selecting_the_nodes_link_and_gives_it_back() {
        let req = relayed(Opcode::BootRequest).to_vec().unwrap();
        let Relayed {
            packet: out,
            giaddr,
            key,
        } = toward_server(&req, GATEWAY).unwrap();
        assert_eq!((giaddr, key), (NODE, (0x1234_5678, MAC)));
        let (m, i) = info(&out);
        assert_eq!(m.giaddr(), GATEWAY);
        assert_eq!(m.hops(), 2);
        assert_eq!(
            i.get(RelayCode::LinkSelection),
            Some(&RelayInfo::LinkSelection(NODE))
        );
        // The node's suboptions go along unchanged.
        let (_, before) = info(&req);
        for code in [
            RelayCode::AgentCircuitId,
            RelayCode::AgentRemoteId,
            RelayCode::ServerIdentifierOverride,
        ] {
            assert_eq!(i.get(code), before.get(code));
        }
        // A server's reply echoing all of option 82 goes back with the
        // node's giaddr, without 82.5.
        let mut reply = m.clone();
        reply
            .set_opcode(Opcode::BootReply)
            .set_yiaddr([10, 77, 0, 50]);
        let back = toward_node(&reply.to_vec().unwrap(), NODE).unwrap();
        let (b, bi) = info(&back);
        assert_eq!(b.giaddr(), NODE);
        assert_eq!(b.yiaddr(), Ipv4Addr::new(10, 77, 0, 50));
        assert!(bi.get(RelayCode::LinkSelection).is_none());
        assert_eq!(
            bi.get(RelayCode::AgentRemoteId),
            before.get(RelayCode::AgentRemoteId)
        );
        // Refused: a reply sent up, a request sent down, a request no
        // node relayed, one without the node's option 82, one that
        // already selects a link.
        assert!(toward_server(&reply.to_vec().unwrap(), GATEWAY).is_err());
        assert!(toward_node(&req, NODE).is_err());
        let mut bare = relayed(Opcode::BootRequest);
        bare.set_giaddr(Ipv4Addr::UNSPECIFIED);
        assert!(toward_server(&bare.to_vec().unwrap(), GATEWAY).is_err());
        let mut no82 = relayed(Opcode::BootRequest);
        no82.opts_mut().remove(OptionCode::RelayAgentInformation);
        assert!(toward_server(&no82.to_vec().unwrap(), GATEWAY).is_err());
        assert!(toward_server(&out, GATEWAY).is_err(), "82.5 twice");
        assert!(toward_server(&req[..100], GATEWAY).is_err());
    }

    proptest::proptest! {
        /// What a peer's tunnel or the network hands the gateway never
        /// panics it: random bytes, and valid packets with bytes flipped.
        #[test]
        fn random_and_mutated_input_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1600),
            flips in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..12),
        ) {
            let _ = Msg::decode(&bytes);
            let _ = toward_server(&bytes, GATEWAY);
            let _ = toward_node(&bytes, NODE);
            let mut b = relayed(Opcode::BootRequest).to_vec().unwrap();
            for (i, v) in flips {
                if let Some(x) = b.get_mut(i) { *x = v; }
            }
            if let Ok(r) = toward_server(&b, GATEWAY) {
                proptest::prop_assert!(r.packet.len() <= MAX_PACKET);
            }
            let _ = toward_node(&b, NODE);
        }
    }

    #[test]
    fn messages_round_trip_and_garbage_is_none() {
        let all = [
            Msg::Up {
                tag: 7,
                servers: vec![GATEWAY, NODE],
                packet: vec![1, 2, 3],
            },
            Msg::Down {
                tag: u32::MAX,
                server: GATEWAY,
                packet: vec![9; 300],
            },
            Msg::Refused {
                tag: 0,
                reason: "no".into(),
            },
        ];
        for m in all {
            assert_eq!(Msg::decode(&m.encode()), Some(m.clone()));
        }
        for bad in [
            &b""[..],
            b"U",
            b"U\0\0\0\x01",
            b"U\0\0\0\x01\x00",
            b"U\0\0\0\x01\x02\x01\x02\x03\x04",
            b"D\0\0\0\x01\x0a",
            b"X\0\0\0\x01",
        ] {
            assert_eq!(Msg::decode(bad), None, "{bad:?}");
        }
        let long = "é".repeat(400);
        let Some(Msg::Refused { reason, .. }) = Msg::decode(
            &Msg::Refused {
                tag: 1,
                reason: long,
            }
            .encode(),
        ) else {
            panic!("a long reason is cut, not refused")
        };
        assert!(reason.len() <= MAX_REASON);
    }
}
