//! The DHCP state machine as a pure function: packet bytes in, with the
//! config and table, an [`Outcome`] out. No I/O, no clock, no panics on any
//! input (a property test and a fuzz target throw random bytes at it).
//!
//! ```text
//! DISCOVER ─► OFFER (yiaddr = the VM's address, every option)
//! REQUEST  ─► dropped when it names another server (54): RFC 2131 §4.3.2
//!          ─► ACK   when the requested address (50 or ciaddr) is the VM's,
//!                   or one it held that nothing else claims
//!          ─► NAK   otherwise (deorch is authoritative for its VMs)
//! INFORM   ─► ACK   without lease options
//! RELEASE, DECLINE ─► noted (the socket loop ends the lease or
//!                   quarantines the declined address)
//! anything else, or from an unknown MAC ─► dropped, counted by reason
//! ```
//!
//! The lease memory is an input ([`Context`]): the table is already
//! adjusted by it (`lease.rs`), and ACKs say what they bind.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};

use super::{relay, Client, DropReason, Event, Leases, Mac, ServerConfig, Table};

/// Largest request accepted (UDP payload).
pub const MAX_PACKET: usize = 1500;
/// Fixed BOOTP header (236 bytes) plus the magic cookie.
pub const HEADER: usize = 240;
/// Smallest reply the server sends (BOOTP's 300 bytes; some clients
/// ignore shorter ones).
pub const MIN_REPLY: usize = 300;
/// Clients must accept at least this (RFC 2131).
pub const MIN_MAX_MESSAGE: usize = 576;
/// A requested lease longer than a year (or infinite) is dropped.
pub const MAX_REQUESTED_LEASE: u32 = 365 * 24 * 3600;
/// Relay hop limit (RFC 1542 suggests 16).
pub const MAX_HOPS: u8 = 16;
const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// Where a reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// To a relay agent, `giaddr:67`.
    Relay(SocketAddrV4),
    /// To a configured client, `ciaddr:68`.
    Unicast(SocketAddrV4),
    /// Broadcast on the interface, `255.255.255.255:68`.
    Broadcast,
    /// To an unconfigured client: a frame to its MAC carrying UDP to
    /// `ip:68` (built by the socket layer: no neighbour entry).
    Client {
        /// The VM's MAC.
        mac: Mac,
        /// The address in the reply.
        ip: Ipv4Addr,
    },
}

/// A lease an ACK hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind {
    /// The VM's MAC.
    pub mac: Mac,
    /// The address.
    pub addr: Ipv4Addr,
    /// For how long, in seconds.
    pub secs: u32,
}

/// What to do with one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send `packet` as the answer.
    Reply {
        /// What it is (for counters).
        event: Event,
        /// The encoded message.
        packet: Vec<u8>,
        /// Where.
        to: Delivery,
        /// The lease an ACK binds, for the server's memory.
        bind: Option<Bind>,
    },
    /// Forward a VM's request to its central servers (DHCPCAST), from a
    /// socket bound to `giaddr:67`, or through the tunnel to `via`.
    RelayUp {
        /// The relay agent address.
        giaddr: Ipv4Addr,
        /// The request with giaddr and option 82 set.
        packet: Vec<u8>,
        /// The servers, port 67.
        to: Vec<SocketAddrV4>,
        /// The gateway node to send it to through the tunnel, instead of
        /// UDP from this node.
        via: Option<String>,
    },
    /// Nothing to send; count the event (a RELEASE or DECLINE of `addr`
    /// by `mac`).
    Noted {
        /// What it was.
        event: Event,
        /// The VM's MAC.
        mac: Mac,
        /// The address given back or declined.
        addr: Option<Ipv4Addr>,
    },
    /// Dropped.
    Drop(DropReason),
}

fn drop(r: DropReason) -> Outcome {
    Outcome::Drop(r)
}

/// Check the framing every packet must have, walking the option list
/// byte by byte before the decoder sees it: truncation, overruns, a
/// missing End, option overload, and lengths of fixed-size options
/// (summed over RFC 3396 split options, as the decoder concatenates them).
/// Returns how many distinct option codes the packet carries.
pub fn check_frame(buf: &[u8]) -> Result<usize, DropReason> {
    if buf.len() > MAX_PACKET {
        return Err(DropReason::Oversized);
    }
    if buf.len() < HEADER {
        return Err(DropReason::Truncated);
    }
    if buf[0] != 1 && buf[0] != 2 {
        return Err(DropReason::WrongOp);
    }
    if buf[236..240] != MAGIC {
        return Err(DropReason::BadMagic);
    }
    let opts = &buf[HEADER..];
    let mut seen = [false; 256];
    let mut run: Option<(u8, usize)> = None;
    let mut i = 0;
    loop {
        let Some(&code) = opts.get(i) else {
            return Err(DropReason::MissingEnd);
        };
        if code == 0 || code == 255 {
            if let Some((c, len)) = run.take() {
                check_len(c, len)?;
            }
            if code == 255 {
                break;
            }
            i += 1;
            continue;
        }
        let Some(&len) = opts.get(i + 1) else {
            return Err(DropReason::OptionOverrun);
        };
        let len = len as usize;
        if i + 2 + len > opts.len() {
            return Err(DropReason::OptionOverrun);
        }
        run = match run {
            Some((c, total)) if c == code => Some((c, total + len)),
            Some((c, total)) => {
                check_len(c, total)?;
                Some((code, len))
            }
            None => Some((code, len)),
        };
        // The decoder files option 37 under 23 (a dhcproto quirk).
        seen[if code == 37 { 23 } else { code as usize }] = true;
        i += 2 + len;
    }
    Ok(seen.iter().filter(|s| **s).count())
}

fn check_len(code: u8, len: usize) -> Result<(), DropReason> {
    let ok = match code {
        52 => return Err(DropReason::OptionOverload),
        53 | 19 | 20 | 23 | 27 | 29..=31 | 34 | 36 | 37 | 39 | 46 => len == 1,
        1 | 16 | 28 | 32 | 50 | 54 | 118 | 150 => len == 4,
        2 | 24 | 35 | 38 | 51 | 58 | 59 | 91 | 106 | 152..=155 => len == 4,
        13 | 22 | 26 | 57 | 93 => len == 2,
        3..=11 | 41 | 42 | 44 | 45 | 48 | 49 | 65 | 68..=76 | 89 | 92 => len.is_multiple_of(4),
        21 | 33 => len.is_multiple_of(8),
        25 => len.is_multiple_of(2),
        61 => len >= 2,
        80 => len == 0,
        81 => len >= 3,
        94 => len == 3,
        151 | 156 | 157 | 116 => len >= 1,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(DropReason::BadOptionLength)
    }
}

/// Frame check, then decode with dhcproto; options that fail to decode
/// (the decoder silently stops there) make the packet malformed.
pub fn decode(buf: &[u8]) -> Result<Message, DropReason> {
    let codes = check_frame(buf)?;
    let msg = Message::decode(&mut Decoder::new(buf)).map_err(|_| DropReason::Malformed)?;
    if msg.opts().iter().count() != codes {
        return Err(DropReason::Malformed);
    }
    Ok(msg)
}

/// The chaddr of an Ethernet message.
pub fn mac_of(msg: &Message) -> Option<Mac> {
    if msg.htype() != HType::Eth || msg.hlen() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(msg.chaddr().get(..6)?);
    Some(mac)
}

/// Which socket a packet came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The served interface (the VMs' bridge): requests only.
    Interface,
    /// A DHCPCAST upstream socket: central servers' replies only.
    Upstream,
    /// The tunnel from a DHCPCAST gateway node (`via`): central servers'
    /// replies it relayed back, only for NICs relayed through it.
    Tunnel,
}

/// Everything besides the packet that decides its outcome.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The VMs answered (already adjusted by the leases, [`super::lease::adjust`]).
    pub table: &'a Table,
    /// Live leases and quarantined addresses.
    pub leases: &'a Leases,
    /// Now, in ms since the epoch (lease ends are compared with it).
    pub now_ms: u64,
    /// The socket the packet came in on.
    pub side: Side,
    /// The key of the token this node puts in the option 82 it adds and
    /// requires back in central servers' replies ([`relay::token`]).
    pub relay_key: &'a [u8],
}

static NO_LEASES: std::sync::LazyLock<Leases> = std::sync::LazyLock::new(Leases::default);

impl<'a> Context<'a> {
    /// A packet from the interface, with no leases and an empty relay key.
    pub fn interface(table: &'a Table) -> Context<'a> {
        Context {
            table,
            leases: &NO_LEASES,
            now_ms: 0,
            side: Side::Interface,
            relay_key: &[],
        }
    }
}

/// Handle one packet received on the server's interface from `from`,
/// with no lease memory (see [`handle_in`]).
pub fn handle(config: &ServerConfig, table: &Table, buf: &[u8], from: SocketAddrV4) -> Outcome {
    handle_in(config, &Context::interface(table), buf, from)
}

/// Handle one packet received from `from` on `cx.side`.
pub fn handle_in(config: &ServerConfig, cx: &Context, buf: &[u8], from: SocketAddrV4) -> Outcome {
    let table = cx.table;
    let msg = match decode(buf) {
        Ok(m) => m,
        Err(r) => return drop(r),
    };
    let Some(mac) = mac_of(&msg) else {
        return drop(DropReason::BadHardwareAddress);
    };
    match (msg.opcode(), cx.side) {
        (Opcode::BootReply, Side::Upstream | Side::Tunnel) => {
            return relay::down(config, cx, &msg, mac, from)
        }
        (Opcode::BootReply, Side::Interface) => return drop(DropReason::ReplyFromVmSide),
        (_, Side::Upstream | Side::Tunnel) => return drop(DropReason::RequestFromUpstream),
        _ => {}
    }
    let Some(kind) = msg.opts().msg_type() else {
        return drop(DropReason::NoMessageType);
    };
    let Some(client) = table.get(&mac) else {
        return drop(DropReason::UnknownClient);
    };
    if let Some(DhcpOption::ClientIdentifier(id)) = msg.opts().get(OptionCode::ClientIdentifier) {
        if id.len() == 7 && id[0] == 1 && id[1..] != mac {
            return drop(DropReason::ClientIdMismatch);
        }
    }
    if msg.hops() >= MAX_HOPS {
        return drop(DropReason::HopLimit);
    }
    let relayed = !msg.giaddr().is_unspecified();
    if relayed
        && !(config.trusted_relays.contains(&msg.giaddr())
            && config.trusted_relays.contains(from.ip()))
    {
        return drop(DropReason::UntrustedRelay);
    }
    if let Some(DhcpOption::AddressLeaseTime(t)) = msg.opts().get(OptionCode::AddressLeaseTime) {
        if *t > MAX_REQUESTED_LEASE {
            return drop(DropReason::HugeLease);
        }
    }
    if let (Some(up), false) = (&client.upstream, relayed) {
        return relay::up(config, cx, &msg, mac, client, up);
    }
    let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(id)) => Some(*id),
        _ => None,
    };
    let requested = match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(a)) => Some(*a),
        _ => Some(msg.ciaddr()).filter(|a| !a.is_unspecified()),
    };
    match kind {
        MessageType::Discover => {
            let Some(addr) = client.address else {
                return drop(DropReason::NoAddress);
            };
            answer(config, &msg, client, MessageType::Offer, addr, mac)
        }
        MessageType::Request => {
            // RFC 2131 §4.3.2: a REQUEST naming another server is that
            // server's business (the client chose its offer): ignore it.
            if server_id.is_some_and(|id| id != config.server_id) {
                return drop(DropReason::NotOurServer);
            }
            match (requested, client.address) {
                (Some(r), Some(a)) if r == a => {
                    answer(config, &msg, client, MessageType::Ack, a, mac)
                }
                // A VM renewing an address it got before (from this
                // server before a restart, or before its computed address
                // moved) keeps it when nothing else has a claim on it.
                (Some(r), _) if may_keep(table, cx, &client.identity, r) => {
                    answer(config, &msg, client, MessageType::Ack, r, mac)
                }
                _ => nak(config, &msg),
            }
        }
        MessageType::Inform => answer(config, &msg, client, MessageType::Ack, msg.ciaddr(), mac),
        MessageType::Release | MessageType::Decline => {
            if server_id != Some(config.server_id) {
                return drop(DropReason::NotOurServer);
            }
            let event = if kind == MessageType::Release {
                Event::Release
            } else {
                Event::Decline
            };
            let addr = if kind == MessageType::Release {
                Some(msg.ciaddr()).filter(|a| !a.is_unspecified())
            } else {
                // Only the address this VM was given can be declined: a VM
                // cannot take other VMs' addresses out of use.
                match (requested, client.address) {
                    (Some(r), Some(a)) if r == a => Some(r),
                    (Some(r), _) if cx.leases.of(&client.identity, cx.now_ms) == Some(r) => Some(r),
                    _ => return drop(DropReason::ForeignDecline),
                }
            };
            Outcome::Noted { event, mac, addr }
        }
        _ => drop(DropReason::UnsupportedMessageType),
    }
}

/// Whether `identity` (a dynamic NIC) may keep `addr`, an address it
/// asks for that is not its computed one: inside the range, reserved for
/// nobody, no other NIC's computed or adjusted address, and neither
/// declined nor leased to another NIC.
fn may_keep(table: &Table, cx: &Context, identity: &str, addr: Ipv4Addr) -> bool {
    let Some(pool) = &table.pool else {
        return false;
    };
    pool.dynamic.contains(identity)
        && pool.in_range(addr)
        && cx.leases.free_for(addr, identity, cx.now_ms)
        && !pool
            .assigned
            .iter()
            .any(|(id, a)| id != identity && *a == Some(addr))
        && !table
            .clients
            .values()
            .any(|c| c.identity != identity && c.address == Some(addr))
}

fn reply_to(req: &Message, config: &ServerConfig, kind: MessageType) -> Message {
    let mut m = Message::new_with_id(
        req.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr(),
        req.chaddr(),
    );
    m.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_flags(req.flags());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(config.server_id));
    m
}

/// Where a reply to `req` goes (RFC 2131 section 4.1).
pub fn delivery(req: &Message, nak: bool, yiaddr: Ipv4Addr, mac: Mac) -> Delivery {
    if !req.giaddr().is_unspecified() {
        Delivery::Relay(SocketAddrV4::new(req.giaddr(), 67))
    } else if nak {
        Delivery::Broadcast
    } else if !req.ciaddr().is_unspecified() {
        Delivery::Unicast(SocketAddrV4::new(req.ciaddr(), 68))
    } else if req.flags().broadcast() || yiaddr.is_unspecified() {
        Delivery::Broadcast
    } else {
        Delivery::Client { mac, ip: yiaddr }
    }
}

fn answer(
    config: &ServerConfig,
    req: &Message,
    client: &Client,
    kind: MessageType,
    addr: Ipv4Addr,
    mac: Mac,
) -> Outcome {
    let inform = req.opts().has_msg_type(MessageType::Inform);
    let mut m = reply_to(req, config, kind);
    if inform {
        m.set_ciaddr(req.ciaddr());
    } else {
        m.set_ciaddr(req.ciaddr()).set_yiaddr(addr);
    }
    client.options.encode(m.opts_mut(), !inform);
    let event = match (kind, inform) {
        (MessageType::Offer, _) => Event::Offer,
        (_, true) => Event::InformAck,
        _ => Event::Ack,
    };
    let max = max_message_size(req);
    let packet = match fit(&mut m, req, max) {
        Some(p) => p,
        None => return drop(DropReason::ReplyTooLarge),
    };
    let yiaddr = if inform { Ipv4Addr::UNSPECIFIED } else { addr };
    Outcome::Reply {
        event,
        packet,
        to: delivery(req, false, yiaddr, mac),
        bind: (event == Event::Ack).then_some(Bind {
            mac,
            addr,
            secs: client.options.lease_secs,
        }),
    }
}

fn nak(config: &ServerConfig, req: &Message) -> Outcome {
    let mut m = reply_to(req, config, MessageType::Nak);
    if !req.giaddr().is_unspecified() {
        m.set_flags(Flags::default().set_broadcast());
    }
    m.opts_mut().insert(DhcpOption::Message(
        "requested address is not this client's".into(),
    ));
    match encode(&m) {
        Some(packet) => Outcome::Reply {
            event: Event::Nak,
            packet,
            to: delivery(req, true, Ipv4Addr::UNSPECIFIED, [0; 6]),
            bind: None,
        },
        None => drop(DropReason::ReplyTooLarge),
    }
}

fn max_message_size(req: &Message) -> usize {
    match req.opts().get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(n)) => (*n as usize).clamp(MIN_MAX_MESSAGE, MAX_PACKET),
        _ => MIN_MAX_MESSAGE,
    }
}

/// Encode, padded to [`MIN_REPLY`].
pub fn encode(m: &Message) -> Option<Vec<u8>> {
    let mut v = m.to_vec().ok()?;
    if v.len() < MIN_REPLY {
        v.resize(MIN_REPLY, 0);
    }
    Some(v)
}

/// Options the reply keeps when it must shrink to fit.
const ESSENTIAL: [OptionCode; 7] = [
    OptionCode::MessageType,
    OptionCode::ServerIdentifier,
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
];

/// Encode `m` within `max` bytes (UDP payload); when too large, leave out
/// the options the client did not ask for (parameter request list, 55).
fn fit(m: &mut Message, req: &Message, max: usize) -> Option<Vec<u8>> {
    let p = encode(m)?;
    if p.len() <= max {
        return Some(p);
    }
    let asked: Vec<OptionCode> = match req.opts().get(OptionCode::ParameterRequestList) {
        Some(DhcpOption::ParameterRequestList(l)) => l.clone(),
        _ => Vec::new(),
    };
    let drop_codes: Vec<OptionCode> = m
        .opts()
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| !ESSENTIAL.contains(c) && !asked.contains(c))
        .collect();
    for c in drop_codes {
        m.opts_mut().remove(c);
    }
    let p = encode(m)?;
    (p.len() <= max).then_some(p)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dhcp::{LeaseOptions, Upstream};
    use crate::model::network::DhcpOptions;

    pub const MAC: Mac = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];
    pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 1);
    pub const ADDR: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 150);
    pub const FROM: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);

    pub fn table() -> Table {
        let mut t = Table::default();
        let d = DhcpOptions {
            dns_servers: vec!["10.20.0.2".into()],
            ..Default::default()
        };
        t.clients.insert(
            MAC,
            Client {
                identity: "default/vm/eth0".into(),
                address: Some(ADDR),
                options: LeaseOptions::resolve(
                    "10.20.0.0/24".parse().unwrap(),
                    Some(SERVER),
                    None,
                    &d,
                    "vm",
                )
                .unwrap(),
                upstream: None,
            },
        );
        t
    }

    pub fn config() -> ServerConfig {
        ServerConfig::new(SERVER)
    }

    pub fn request(kind: MessageType, mac: &[u8]) -> Message {
        let mut m = Message::new_with_id(
            0x1234,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            mac,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m
    }

    fn run(m: &Message) -> Outcome {
        handle(&config(), &table(), &m.to_vec().unwrap(), FROM)
    }

    fn reply(o: &Outcome) -> Message {
        match o {
            Outcome::Reply { packet, .. } => Message::decode(&mut Decoder::new(packet)).unwrap(),
            other => panic!("no reply: {other:?}"),
        }
    }

    #[test]
    fn discover_gets_an_offer_with_the_address_and_options() {
        let o = run(&request(MessageType::Discover, &MAC));
        let r = reply(&o);
        assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(r.yiaddr(), ADDR);
        assert_eq!(r.xid(), 0x1234);
        assert_eq!(
            r.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(
            r.opts().get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        assert!(matches!(
            o,
            Outcome::Reply {
                to: Delivery::Client { ip: ADDR, .. },
                ..
            }
        ));
    }

    #[test]
    fn request_for_the_right_address_is_acked() {
        let mut m = request(MessageType::Request, &MAC);
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ADDR));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        assert_eq!(reply(&run(&m)).opts().msg_type(), Some(MessageType::Ack));
        // Renewing: ciaddr, no option 50, answered unicast.
        let mut m = request(MessageType::Request, &MAC);
        m.set_ciaddr(ADDR);
        let o = run(&m);
        assert_eq!(reply(&o).opts().msg_type(), Some(MessageType::Ack));
        assert!(matches!(o, Outcome::Reply { to: Delivery::Unicast(a), .. } if *a.ip() == ADDR));
    }

    #[test]
    fn nak_cases() {
        let nak = |m: &Message| {
            let o = run(m);
            assert_eq!(reply(&o).opts().msg_type(), Some(MessageType::Nak), "{m:?}");
            assert!(matches!(
                o,
                Outcome::Reply {
                    to: Delivery::Broadcast,
                    ..
                }
            ));
        };
        // Wrong address.
        let mut m = request(MessageType::Request, &MAC);
        m.opts_mut()
            .insert(DhcpOption::RequestedIpAddress([10, 20, 0, 151].into()));
        nak(&m);
        // Another server's identifier: that server's business, ignored
        // (RFC 2131 §4.3.2), never NAKed.
        let mut m = request(MessageType::Request, &MAC);
        m.opts_mut()
            .insert(DhcpOption::RequestedIpAddress([10, 20, 0, 151].into()));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier([10, 20, 0, 9].into()));
        assert_eq!(run(&m), Outcome::Drop(DropReason::NotOurServer));
        // No address named at all.
        nak(&request(MessageType::Request, &MAC));
        // A known VM the range has no room for.
        let mut t = table();
        t.clients.get_mut(&MAC).unwrap().address = None;
        let mut m = request(MessageType::Request, &MAC);
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ADDR));
        let o = handle(&config(), &t, &m.to_vec().unwrap(), FROM);
        assert_eq!(reply(&o).opts().msg_type(), Some(MessageType::Nak));
    }

    #[test]
    fn unknown_and_spoofed_clients_are_dropped() {
        let other = [0x52, 0x54, 0, 1, 2, 3];
        assert_eq!(
            run(&request(MessageType::Discover, &other)),
            Outcome::Drop(DropReason::UnknownClient)
        );
        let mut m = request(MessageType::Discover, &MAC);
        m.opts_mut().insert(DhcpOption::ClientIdentifier(
            [&[1u8][..], &other[..]].concat(),
        ));
        assert_eq!(run(&m), Outcome::Drop(DropReason::ClientIdMismatch));
        let mut m = request(MessageType::Discover, &MAC);
        m.set_htype(HType::from(6u8));
        assert_eq!(run(&m), Outcome::Drop(DropReason::BadHardwareAddress));
        let m = request(MessageType::Discover, &MAC[..4]);
        assert_eq!(run(&m), Outcome::Drop(DropReason::BadHardwareAddress));
    }

    #[test]
    fn inform_release_decline() {
        let mut m = request(MessageType::Inform, &MAC);
        m.set_ciaddr(ADDR);
        let r = reply(&run(&m));
        assert_eq!(r.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(r.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(r.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert!(r.opts().get(OptionCode::DomainNameServer).is_some());
        let mut m = request(MessageType::Release, &MAC);
        m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        m.set_ciaddr(ADDR);
        assert_eq!(
            run(&m),
            Outcome::Noted {
                event: Event::Release,
                mac: MAC,
                addr: Some(ADDR)
            }
        );
        let mut m = request(MessageType::Decline, &MAC);
        m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ADDR));
        assert_eq!(
            run(&m),
            Outcome::Noted {
                event: Event::Decline,
                mac: MAC,
                addr: Some(ADDR)
            }
        );
        // A VM cannot decline (quarantine) another VM's address.
        let mut m = request(MessageType::Decline, &MAC);
        m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
        m.opts_mut()
            .insert(DhcpOption::RequestedIpAddress([10, 20, 0, 7].into()));
        assert_eq!(run(&m), Outcome::Drop(DropReason::ForeignDecline));
        let mut m = request(MessageType::Decline, &MAC);
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier([1, 1, 1, 1].into()));
        assert_eq!(run(&m), Outcome::Drop(DropReason::NotOurServer));
    }

    #[test]
    fn relayed_requests_only_from_trusted_relays() {
        let relay: Ipv4Addr = [10, 20, 0, 77].into();
        let mut m = request(MessageType::Discover, &MAC);
        m.set_giaddr(relay);
        let bytes = m.to_vec().unwrap();
        let from = SocketAddrV4::new(relay, 67);
        assert_eq!(
            handle(&config(), &table(), &bytes, from),
            Outcome::Drop(DropReason::UntrustedRelay)
        );
        let mut c = config();
        c.trusted_relays.push(relay);
        let o = handle(&c, &table(), &bytes, from);
        assert!(matches!(o, Outcome::Reply { to: Delivery::Relay(a), .. } if a == from));
    }

    #[test]
    fn huge_lease_requests_are_dropped() {
        let mut m = request(MessageType::Discover, &MAC);
        m.opts_mut().insert(DhcpOption::AddressLeaseTime(u32::MAX));
        assert_eq!(run(&m), Outcome::Drop(DropReason::HugeLease));
    }

    #[test]
    fn framing_errors_are_named() {
        let good = request(MessageType::Discover, &MAC).to_vec().unwrap();
        let c = |b: &[u8]| match handle(&config(), &table(), b, FROM) {
            Outcome::Drop(r) => r,
            other => panic!("answered {other:?}"),
        };
        assert_eq!(c(&good[..100]), DropReason::Truncated);
        assert_eq!(c(&vec![1u8; 2000]), DropReason::Oversized);
        let mut b = good.clone();
        b[236] = 0;
        assert_eq!(c(&b), DropReason::BadMagic);
        let mut b = good.clone();
        b[0] = 7;
        assert_eq!(c(&b), DropReason::WrongOp);
        let mut b = good[..good.len() - 1].to_vec(); // no End
        assert_eq!(c(&b), DropReason::MissingEnd);
        b.extend_from_slice(&[12, 200, b'x']); // length past the end
        assert_eq!(c(&b), DropReason::OptionOverrun);
        let mut b = good[..good.len() - 1].to_vec();
        b.extend_from_slice(&[52, 1, 3, 255]);
        assert_eq!(c(&b), DropReason::OptionOverload);
        let mut b = good[..good.len() - 1].to_vec();
        b.extend_from_slice(&[80, 1, 0, 255]); // rapid commit has no data
        assert_eq!(c(&b), DropReason::BadOptionLength);
        let mut b = good[..good.len() - 1].to_vec();
        b.extend_from_slice(&[94, 3, 1, 2, 3, 94, 3, 1, 2, 3, 255]); // 6 once joined
        assert_eq!(c(&b), DropReason::BadOptionLength);
        let mut b = good[..good.len() - 1].to_vec();
        b.extend_from_slice(&[81, 4, 0, 0, 0, 0xc0, 255]); // bad FQDN pointer
        assert_eq!(c(&b), DropReason::Malformed);
    }

    #[test]
    fn replies_shrink_to_the_clients_limit() {
        let mut t = table();
        let c = t.clients.get_mut(&MAC).unwrap();
        c.options.domain_search = (0..40)
            .map(|i| format!("d{i}-a-rather-long-label.x{i}.org"))
            .collect();
        let mut m = request(MessageType::Discover, &MAC);
        m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
        ]));
        let o = handle(&config(), &t, &m.to_vec().unwrap(), FROM);
        let Outcome::Reply { packet, .. } = &o else {
            panic!("{o:?}")
        };
        assert!(packet.len() <= MIN_MAX_MESSAGE);
        assert!(reply(&o).opts().get(OptionCode::DomainSearch).is_none());
    }

    use proptest::prelude::*;

    proptest! {
        /// Random bytes never panic the handler (the CI-run part of the
        /// fuzz target in fuzz/).
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = handle(&config(), &table(), &bytes, FROM);
        }

        /// Valid packets with bytes flipped, cut or appended never panic,
        /// and anything answered is a reply to the known MAC.
        #[test]
        fn mutated_packets_never_panic(
            kind in 1u8..=8,
            flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..12),
            cut in 0usize..400,
            tail in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut m = request(MessageType::from(kind), &MAC);
            m.opts_mut().insert(DhcpOption::RequestedIpAddress(ADDR));
            m.opts_mut().insert(DhcpOption::Hostname("h".into()));
            let mut b = m.to_vec().unwrap();
            for (i, v) in flips {
                if let Some(x) = b.get_mut(i) { *x = v; }
            }
            if cut < b.len() && cut % 3 == 0 { b.truncate(cut); }
            b.extend_from_slice(&tail);
            if let Outcome::Reply { packet, .. } = handle(&config(), &table(), &b, FROM) {
                let r = Message::decode(&mut Decoder::new(&packet)).unwrap();
                prop_assert_eq!(&r.chaddr()[..6], &MAC[..]);
            }
        }
    }

    #[test]
    fn upstream_clients_are_relayed_not_answered() {
        let mut t = table();
        t.clients.get_mut(&MAC).unwrap().upstream = Some(Upstream {
            servers: vec![[10, 98, 0, 2].into()],
            giaddr: SERVER,
            via: None,
        });
        let o = handle(
            &config(),
            &t,
            &request(MessageType::Discover, &MAC).to_vec().unwrap(),
            FROM,
        );
        assert!(
            matches!(o, Outcome::RelayUp { giaddr: SERVER, .. }),
            "{o:?}"
        );
    }
}
