//! A DHCP load generator that behaves as many VMs on a bridge: directly
//! attached clients, not a relay. Each exchange is a DISCOVER broadcast
//! from `0.0.0.0:68` in an Ethernet frame whose source is the client's
//! MAC (so the bridge learns where that MAC lives, as it does for a VM's
//! tap), then a REQUEST for the offered address; the replies are read
//! from a packet socket whatever their destination, and each is sorted by
//! how it came: unicast to the chaddr, or broadcast.
//!
//! `perfdhcp` cannot measure this path: in DHCPv4 it always sets giaddr to
//! its own address, so servers answer it as a relay (UDP to `giaddr:67`)
//! and never take the path to a client without an address. Used by
//! `deorch dhcp perf` (benches/dhcp.sh) and tests/dhcp.rs; the counting
//! follows perfdhcp's: an exchange is complete when its ACK arrives,
//! DISCOVERs stop after the period and replies are awaited for `wait`.
//! With [`PerfConfig::relay`] it acts as a relay agent instead (perfdhcp's
//! path, with a client that needs less CPU than perfdhcp).

use std::collections::HashMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use super::socket::{interface_index, ipv4_udp, link_address, parse_ipv4_udp, ETH_P_IP};
use super::Mac;

/// What to send.
#[derive(Debug, Clone)]
pub struct PerfConfig {
    /// The interface the clients sit behind (a veth whose peer is a bridge
    /// port, or a bridge port itself).
    pub iface: String,
    /// DISCOVERs per second.
    pub rate: u32,
    /// How long DISCOVERs are sent.
    pub period: Duration,
    /// How long replies are awaited after the period.
    pub wait: Duration,
    /// The clients' MACs, used in turn.
    pub macs: Vec<Mac>,
    /// Set the broadcast flag (the server then broadcasts its replies).
    pub broadcast: bool,
    /// Act as a relay agent instead, as perfdhcp does: requests with
    /// giaddr = this address (bound, port 67) sent to the server's address
    /// (port 67); the server answers the relay by UDP.
    pub relay: Option<Relay>,
}

/// The relay agent's address and the server's.
#[derive(Debug, Clone, Copy)]
pub struct Relay {
    /// giaddr, an address of this host.
    pub giaddr: Ipv4Addr,
    /// The server's address.
    pub server: Ipv4Addr,
}

/// How requests leave and replies come back.
enum Transport {
    /// Ethernet frames on a packet socket bound to the interface.
    Link(Socket),
    /// UDP from `giaddr:67` to `server:67`.
    Relay(std::net::UdpSocket, Relay),
}

impl Transport {
    fn send(&self, mac: &Mac, m: &mut Message) -> std::io::Result<()> {
        match self {
            Transport::Link(s) => s.send(&frame(mac, m)).map(|_| ()),
            Transport::Relay(s, r) => {
                m.set_giaddr(r.giaddr).set_hops(1);
                let payload = m.to_vec().unwrap_or_default();
                s.send_to(&payload, SocketAddrV4::new(r.server, 67))
                    .map(|_| ())
            }
        }
    }

    /// The next reply's payload and the frame's destination MAC (none on
    /// the relay), within about a millisecond.
    fn recv<'b>(&self, buf: &'b mut [u8]) -> std::io::Result<Option<(&'b [u8], Option<Mac>)>> {
        let quiet = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            )
        };
        match self {
            Transport::Link(s) => {
                let n = match (&*s).read(buf) {
                    Ok(n) => n,
                    Err(e) if quiet(&e) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let f = &buf[..n];
                if n < 14 || f[12..14] != ETH_P_IP.to_be_bytes() {
                    return Ok(None);
                }
                let Some((from, to, payload)) = parse_ipv4_udp(&f[14..]) else {
                    return Ok(None);
                };
                if to.port() != 68 || from.port() != 67 {
                    return Ok(None);
                }
                let dst: Mac = f[..6].try_into().unwrap_or_default();
                Ok(Some((payload, Some(dst))))
            }
            Transport::Relay(s, _) => match s.recv(buf) {
                Ok(n) => Ok(Some((&buf[..n], None))),
                Err(e) if quiet(&e) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }
}

/// What came back.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PerfReport {
    /// Offered DISCOVER rate.
    pub rate: u32,
    /// Seconds DISCOVERs were sent.
    pub seconds: f64,
    /// DISCOVERs sent.
    pub discovers: u64,
    /// OFFERs received (first one of each exchange).
    pub offers: u64,
    /// REQUESTs sent.
    pub requests: u64,
    /// ACKs received (first one of each exchange): completed exchanges.
    pub acks: u64,
    /// NAKs received.
    pub naks: u64,
    /// Replies in a frame addressed to the chaddr.
    pub unicast: u64,
    /// Replies in a frame to ff:ff:ff:ff:ff:ff.
    pub broadcast: u64,
    /// Replies in a frame to any other MAC.
    pub other: u64,
    /// Replies to the relay address (relay mode).
    pub relayed: u64,
    /// DISCOVERs or REQUESTs the socket refused (counted unanswered).
    pub send_errors: u64,
    /// Completed exchanges per second of the period.
    pub acks_per_s: f64,
    /// Exchanges begun that got no ACK, in percent.
    pub unanswered_pct: f64,
}

#[derive(Debug, Clone, Copy)]
struct Exchange {
    mac: Mac,
    offered: bool,
    acked: bool,
}

const BROADCAST_MAC: Mac = [0xff; 6];

/// The client's Ethernet frame: broadcast, from `mac`, UDP 68 -> 67.
fn frame(mac: &Mac, msg: &Message) -> Vec<u8> {
    let payload = msg.to_vec().unwrap_or_default();
    let ip = ipv4_udp(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
        &payload,
    );
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&BROADCAST_MAC);
    f.extend_from_slice(mac);
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    f.extend_from_slice(&ip);
    f
}

/// A request as a Linux guest's client sends it (udhcpc's options).
fn message(kind: MessageType, xid: u32, mac: &Mac, broadcast: bool) -> Message {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, unspecified, unspecified, unspecified, unspecified, mac);
    if broadcast {
        m.set_flags(Flags::default().set_broadcast());
    }
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ClientIdentifier([&[1u8][..], mac].concat()));
    o.insert(DhcpOption::MaxMessageSize(576));
    o.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::DomainName,
        OptionCode::AddressLeaseTime,
    ]));
    m
}

/// Ask the kernel for a receive buffer of `bytes`, past `rmem_max` (root).
#[allow(unsafe_code)]
fn force_receive_buffer(s: &Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket descriptor, and a pointer to a c_int with its
    // size, as SO_RCVBUFFORCE expects.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        let _ = s.set_recv_buffer_size(bytes);
    }
}

/// Run one measurement (blocking: one thread sends and receives).
pub fn run(cfg: &PerfConfig) -> std::io::Result<PerfReport> {
    if cfg.macs.is_empty() || cfg.rate == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "at least one MAC and a rate above 0 are needed",
        ));
    }
    let transport = match cfg.relay {
        None => {
            let ifindex = interface_index(&cfg.iface)?;
            let s = Socket::new(
                Domain::PACKET,
                Type::RAW,
                Some(Protocol::from(i32::from(ETH_P_IP.to_be()))),
            )?;
            s.bind(&link_address(ifindex, ETH_P_IP, &[0; 6]))?;
            force_receive_buffer(&s, 16 << 20);
            s.set_read_timeout(Some(Duration::from_millis(1)))?;
            Transport::Link(s)
        }
        Some(r) => {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddrV4::new(r.giaddr, 67).into())?;
            force_receive_buffer(&s, 16 << 20);
            s.set_read_timeout(Some(Duration::from_millis(1)))?;
            Transport::Relay(s.into(), r)
        }
    };
    let mut report = PerfReport {
        rate: cfg.rate,
        ..PerfReport::default()
    };
    let mut live: HashMap<u32, Exchange> = HashMap::new();
    let xid0 = rand_core::RngCore::next_u32(&mut rand_core::OsRng);
    let mut buf = vec![0u8; 2048];
    let start = Instant::now();
    let stop_sending = start + cfg.period;
    let end = stop_sending + cfg.wait;
    let mut next = 0u64;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now < stop_sending {
            let due = (now - start).as_secs_f64() * f64::from(cfg.rate);
            while (next as f64) < due {
                let mac = cfg.macs[(next % cfg.macs.len() as u64) as usize];
                let xid = xid0.wrapping_add(next as u32);
                next += 1;
                let mut m = message(MessageType::Discover, xid, &mac, cfg.broadcast);
                report.discovers += 1;
                if transport.send(&mac, &mut m).is_err() {
                    report.send_errors += 1;
                    continue;
                }
                live.insert(
                    xid,
                    Exchange {
                        mac,
                        offered: false,
                        acked: false,
                    },
                );
            }
        }
        let Some((payload, dst)) = transport.recv(&mut buf)? else {
            continue;
        };
        let Ok(reply) = Message::decode(&mut Decoder::new(payload)) else {
            continue;
        };
        let Some(ex) = live.get_mut(&reply.xid()) else {
            continue;
        };
        if reply.chaddr().get(..6) != Some(&ex.mac[..]) {
            continue;
        }
        match dst {
            Some(d) if d == ex.mac => report.unicast += 1,
            Some(BROADCAST_MAC) => report.broadcast += 1,
            Some(_) => report.other += 1,
            None => report.relayed += 1,
        }
        match reply.opts().msg_type() {
            Some(MessageType::Offer) if !ex.offered => {
                ex.offered = true;
                report.offers += 1;
                let mut m = message(MessageType::Request, reply.xid(), &ex.mac, cfg.broadcast);
                m.opts_mut()
                    .insert(DhcpOption::RequestedIpAddress(reply.yiaddr()));
                if let Some(DhcpOption::ServerIdentifier(id)) =
                    reply.opts().get(OptionCode::ServerIdentifier)
                {
                    m.opts_mut().insert(DhcpOption::ServerIdentifier(*id));
                }
                report.requests += 1;
                if transport.send(&ex.mac, &mut m).is_err() {
                    report.send_errors += 1;
                }
            }
            Some(MessageType::Ack) if ex.offered && !ex.acked => {
                ex.acked = true;
                report.acks += 1;
            }
            Some(MessageType::Nak) => report.naks += 1,
            _ => {}
        }
    }
    report.seconds = cfg.period.as_secs_f64();
    report.acks_per_s = report.acks as f64 / report.seconds.max(1e-9);
    report.unanswered_pct = if report.discovers == 0 {
        100.0
    } else {
        100.0 * (1.0 - report.acks as f64 / report.discovers as f64)
    };
    Ok(report)
}
