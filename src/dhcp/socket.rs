//! The sockets: UDP port 67 bound to one interface (`SO_BINDTODEVICE`,
//! broadcast allowed), plus, for DHCPCAST, one socket per relay address
//! (`giaddr:67`, not bound to a device: central servers answer through
//! whatever route leads back). Every packet from either goes through
//! [`handle_in`]; this module only moves bytes.
//!
//! A reply to a client that has no address yet goes to its MAC, not to
//! everyone: an Ethernet frame to the chaddr, its IPv4 and UDP headers
//! built here ([`ipv4_udp`]), sent on an `AF_PACKET` socket on the
//! interface ([`LinkSender`]). No neighbour entry is made (the kernel
//! would ARP for an address the client does not have yet), no process is
//! started: what dnsmasq and ISC dhcpd do. Broadcast only when the client
//! asked for it or the packet socket cannot be opened (no `CAP_NET_RAW`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::gateway::Back;
use super::lease::QUARANTINE_MS;
use super::server::{handle_in, Context, Delivery, Outcome, Side, MAX_PACKET};
use super::{format_mac, DhcpError, DhcpServer, DropReason, Event, Mac};

/// Bind UDP `port` on `iface` only, with `SO_REUSEADDR` and `SO_BROADCAST`.
pub fn bind_interface(iface: &str, port: u16) -> Result<std::net::UdpSocket, DhcpError> {
    let err = |what: &'static str| {
        let iface = iface.to_string();
        move |source| DhcpError::Socket {
            iface,
            what,
            source,
        }
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(err("creating the socket"))?;
    s.set_reuse_address(true).map_err(err("SO_REUSEADDR"))?;
    s.set_broadcast(true).map_err(err("SO_BROADCAST"))?;
    s.bind_device(Some(iface.as_bytes())).map_err(err(
        "SO_BINDTODEVICE (needs CAP_NET_RAW and an existing interface)",
    ))?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
        .map_err(err("binding the port"))?;
    s.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
    Ok(s.into())
}

/// The DHCPCAST socket on relay address `addr`, where the central
/// servers' replies come (to giaddr). It reports each datagram's arrival
/// interface (`IP_PKTINFO`): when the relay address is the bridge's own,
/// this socket, bound to the address, also takes the VMs' unicast
/// renewals to the node, which belong to the bridge's server.
#[allow(unsafe_code)]
fn bind_upstream(addr: Ipv4Addr, port: u16) -> std::io::Result<std::net::UdpSocket> {
    use std::os::fd::AsRawFd;
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and an int option of the right size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    s.bind(&SocketAddrV4::new(addr, port).into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// One datagram from `sock` (opened by [`bind_upstream`]): its length,
/// sender, and the index of the interface it arrived on.
#[allow(unsafe_code)]
async fn recv_pktinfo(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddrV4, Option<u32>)> {
    use std::os::fd::AsRawFd;
    sock.async_io(tokio::io::Interest::READABLE, || {
        // SAFETY: every pointer handed to recvmsg points into buffers
        // that outlive the call, with their true lengths; the control
        // messages are read only within what the kernel wrote.
        unsafe {
            let mut from: libc::sockaddr_in = std::mem::zeroed();
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            let mut control = [0u64; 16];
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = &mut from as *mut libc::sockaddr_in as *mut libc::c_void;
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, 0);
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut ifindex = None;
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                    let info =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in_pktinfo);
                    ifindex = Some(info.ipi_ifindex as u32);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            let addr = SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
                u16::from_be(from.sin_port),
            );
            Ok((n as usize, addr, ifindex))
        }
    })
    .await
}

/// The index of interface `iface` (0: none).
#[allow(unsafe_code)]
fn if_index(iface: &str) -> u32 {
    std::ffi::CString::new(iface)
        // SAFETY: a NUL-terminated name.
        .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) })
        .unwrap_or(0)
}

/// The IPv4 header checksum, or the UDP one over `data` (pseudo-header
/// included by the caller): the ones' complement of the ones' complement
/// sum of 16-bit words (RFC 1071).
fn checksum(data: &[u8], start: u32) -> u16 {
    let mut sum = start;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet (TTL 64, don't fragment) carrying `payload` in UDP from
/// `from` to `to`, both checksums set.
pub fn ipv4_udp(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&from.ip().octets());
    p.extend_from_slice(&to.ip().octets());
    let ip_sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p.extend_from_slice(&from.port().to_be_bytes());
    p.extend_from_slice(&to.port().to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    let pseudo = pseudo_header(from.ip(), to.ip(), udp_len);
    let udp_sum = match checksum(&p[20..], pseudo) {
        0 => 0xffff, // 0 means "no checksum" in UDP over IPv4
        s => s,
    };
    p[26..28].copy_from_slice(&udp_sum.to_be_bytes());
    p
}

/// The UDP pseudo-header's sum (RFC 768): addresses, protocol, length.
fn pseudo_header(from: &Ipv4Addr, to: &Ipv4Addr, udp_len: usize) -> u32 {
    [from.octets(), to.octets()]
        .iter()
        .flat_map(|o| {
            [
                u16::from_be_bytes([o[0], o[1]]),
                u16::from_be_bytes([o[2], o[3]]),
            ]
        })
        .map(u32::from)
        .sum::<u32>()
        + 17
        + udp_len as u32
}

/// The payload of an IPv4/UDP packet and its addresses, when both
/// headers are well formed and the IPv4 header checksum is right. The
/// UDP checksum is not checked: a packet socket sees a frame sent from
/// the same host before checksum offload fills it in.
pub fn parse_ipv4_udp(p: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, &[u8])> {
    let ihl = usize::from(p.first()? & 0x0f) * 4;
    if p[0] >> 4 != 4 || ihl < 20 || p.len() < ihl + 8 || p[9] != 17 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if total > p.len() || total < ihl + 8 || checksum(&p[..ihl], 0) != 0 {
        return None;
    }
    let ip = |o: usize| Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
    let udp = &p[ihl..total];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < 8 || udp_len > udp.len() {
        return None;
    }
    let port = |o: usize| u16::from_be_bytes([udp[o], udp[o + 1]]);
    Some((
        SocketAddrV4::new(ip(12), port(0)),
        SocketAddrV4::new(ip(16), port(2)),
        &udp[8..udp_len],
    ))
}

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;

/// The index of interface `iface`.
#[allow(unsafe_code)]
pub fn interface_index(iface: &str) -> std::io::Result<u32> {
    let name = std::ffi::CString::new(iface)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a name"))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// A link-layer address (`sockaddr_ll`): interface `ifindex`, EtherType
/// `protocol`, hardware address `mac` (for sending; ignored by `bind`).
#[allow(unsafe_code)]
pub fn link_address(ifindex: u32, protocol: u16, mac: &Mac) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: `sockaddr_ll` is one of the platform's `sockaddr_*` types
    // (the only requirement of `view_as`); the storage is zeroed.
    let ll: &mut libc::sockaddr_ll = unsafe { storage.view_as() };
    ll.sll_family = libc::AF_PACKET as libc::c_ushort;
    ll.sll_protocol = protocol.to_be();
    ll.sll_ifindex = ifindex as libc::c_int;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(mac);
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the family is AF_PACKET and the storage holds a
    // `sockaddr_ll` of exactly `len` bytes, initialised above.
    unsafe { SockAddr::new(storage, len) }
}

/// Sends IPv4/UDP to a MAC on one interface: an `AF_PACKET` datagram
/// socket (the kernel adds the Ethernet header: the interface's MAC as
/// source, the client's as destination). Its protocol is 0, so it
/// receives nothing.
pub struct LinkSender {
    socket: AsyncFd<Socket>,
    ifindex: u32,
    from: SocketAddrV4,
}

/// Register `s` with the runtime for writability.
#[allow(unsafe_code)]
fn register(s: Socket) -> std::io::Result<AsyncFd<Socket>> {
    // SAFETY: the `Socket` owns its descriptor, so it stays open and the
    // same for as long as the `AsyncFd` holds the socket.
    Ok(unsafe { AsyncFd::register_with_interest(s, tokio::io::Interest::WRITABLE) }?)
}

impl LinkSender {
    /// A sender on `iface` whose packets come from `from` (the server's
    /// address and port). Needs `CAP_NET_RAW`.
    pub fn new(iface: &str, from: SocketAddrV4) -> std::io::Result<LinkSender> {
        let ifindex = interface_index(iface)?;
        let s = Socket::new(Domain::PACKET, Type::DGRAM, None)?;
        s.set_nonblocking(true)?;
        Ok(LinkSender {
            socket: register(s)?,
            ifindex,
            from,
        })
    }

    /// Send `payload` to `to` in a frame addressed to `mac`.
    pub async fn send(&self, mac: &Mac, to: SocketAddrV4, payload: &[u8]) -> std::io::Result<()> {
        let packet = ipv4_udp(self.from, to, payload);
        let addr = link_address(self.ifindex, ETH_P_IP, mac);
        loop {
            let mut ready = self.socket.writable().await?;
            match ready.try_io(|s| s.get_ref().send_to(&packet, &addr)) {
                Ok(sent) => return sent.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }
}

const BROADCAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 68);

/// The serving loop behind [`DhcpServer::run`].
pub(super) async fn serve(
    server: &DhcpServer,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), DhcpError> {
    let iface = server.iface.clone();
    let local = server
        .socket
        .try_clone()
        .and_then(UdpSocket::from_std)
        .map_err(|source| DhcpError::Socket {
            iface: iface.clone(),
            what: "registering the socket",
            source,
        })?;
    let port = server.config.port;
    let link = match LinkSender::new(&iface, SocketAddrV4::new(server.config.server_id, port)) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(%iface, "DHCP: no packet socket ({e}): replies to clients without an address are broadcast");
            None
        }
    };
    // Packets from DHCPCAST upstream sockets, with the socket they came on.
    let (up_tx, mut up_rx) =
        mpsc::channel::<(Vec<u8>, SocketAddrV4, Arc<UdpSocket>, Option<u32>)>(1024);
    let bridge_index = if_index(&iface);
    let mut upstream: HashMap<Ipv4Addr, Arc<UdpSocket>> = HashMap::new();
    let mut readers = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; MAX_PACKET + 1];
    let mut next_expiry = 0u64;
    let mut leases_dirty = false;
    let mut writing: Option<tokio::task::JoinHandle<()>> = None;
    // Replies from DHCPCAST gateways' tunnels (`via`).
    let tunnels = server.tunnels.get().cloned();
    let mut tunneled = tunnels.as_ref().map(|t| t.subscribe());
    // Refusals by gateways have their own log budget.
    let refusals = super::LogLimiter::default();
    let mut flush = tokio::time::interval(WRITE_LEASES_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(%iface, server_id = %server.config.server_id, "DHCP server listening");
    loop {
        let (data, from, via, gateway): (
            Vec<u8>,
            SocketAddrV4,
            Option<Arc<UdpSocket>>,
            Option<String>,
        ) = tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { break; }
                continue;
            }
            _ = flush.tick(), if leases_dirty => {
                if writing.as_ref().is_none_or(|w| w.is_finished()) {
                    writing = write_leases(server);
                    leases_dirty = false;
                }
                continue;
            }
            r = local.recv_from(&mut buf) => match r {
                Ok((n, SocketAddr::V4(from))) => (buf[..n].to_vec(), from, None, None),
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(%iface, "DHCP receive: {e}");
                    continue;
                }
            },
            Some((data, from, sock, arrived)) = up_rx.recv() => {
                // A request that came in on the bridge (a VM's unicast
                // renewal to the node, the relay address being the
                // bridge's) is the bridge server's, as if on its socket.
                if bridge_index != 0 && arrived == Some(bridge_index) && data.first() == Some(&1) {
                    (data, from, None, None)
                } else {
                    (data, from, Some(sock), None)
                }
            }
            Some(back) = async {
                match tunneled.as_mut() {
                    Some(s) => s.rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match back {
                Back::Reply { gateway, server: at, packet } => {
                    (packet, SocketAddrV4::new(at, 67), None, Some(gateway))
                }
                Back::Refused { gateway, reason } => {
                    server.counters.dropped(DropReason::GatewayRefused);
                    let (ok, _) = refusals.admit(crate::clock::now_ms());
                    if ok {
                        tracing::warn!(%iface, %gateway, "DHCPCAST: the gateway refused a request: {reason}");
                    }
                    continue;
                }
            },
        };
        let now_ms = crate::clock::now_ms();
        if now_ms >= next_expiry {
            server.with_leases(|l| l.expire(now_ms));
            next_expiry = now_ms + EXPIRE_EVERY_MS;
        }
        let table = server.table();
        let outcome = if gateway
            .as_deref()
            .is_some_and(|g| !relayed_via(&table, &data, g))
        {
            // Only the gateway a NIC is relayed through answers for it.
            Outcome::Drop(DropReason::RelayReplyRejected)
        } else {
            let leases = server.leases.lock().unwrap_or_else(|p| p.into_inner());
            let cx = Context {
                table: &table,
                leases: &leases,
                now_ms,
                side: match (&via, &gateway) {
                    (_, Some(_)) => Side::Tunnel,
                    (Some(_), None) => Side::Upstream,
                    (None, None) => Side::Interface,
                },
                relay_key: &server.relay_key,
            };
            handle_in(&server.config, &cx, &data, from)
        };
        let counters = &server.counters;
        let log = |what: std::fmt::Arguments| {
            let (ok, left_out) = server.log.admit(now_ms);
            if let Some(n) = left_out {
                tracing::info!(%iface, "DHCP: {n} more events not logged in the last 10 s (see the counters)");
            }
            if ok {
                tracing::info!(%iface, "DHCP {what}");
            }
        };
        let who = |mac: &Mac| {
            table
                .get(mac)
                .map(|c| c.identity.clone())
                .unwrap_or_else(|| format_mac(mac))
        };
        match outcome {
            Outcome::Drop(reason) => {
                log(format_args!("dropped a packet from {from}: {reason}"));
                counters.dropped(reason);
            }
            Outcome::Noted { event, mac, addr } => {
                counters.event(event);
                match (event, addr) {
                    (Event::Decline, Some(a)) => {
                        tracing::warn!(
                            %iface, vm = %who(&mac), address = %a,
                            "DHCP DECLINE: the VM found {a} in use; quarantined for {} s",
                            QUARANTINE_MS / 1000
                        );
                        server.with_leases(|l| {
                            l.quarantine(a, now_ms + QUARANTINE_MS);
                            true
                        });
                    }
                    (Event::Release, Some(a)) => {
                        log(format_args!("RELEASE of {a} by {}", who(&mac)));
                        server.with_leases(|l| l.release(a, &mac));
                    }
                    _ => log(format_args!("{event:?} from {}", who(&mac))),
                }
            }
            Outcome::Reply {
                event,
                packet,
                to,
                bind,
            } => {
                let target = match &to {
                    Delivery::Relay(a) | Delivery::Unicast(a) => a.to_string(),
                    Delivery::Broadcast => "broadcast".into(),
                    Delivery::Client { mac, ip } => format!("{ip} at {}", format_mac(mac)),
                };
                let sent = match to {
                    Delivery::Relay(a) | Delivery::Unicast(a) => {
                        let s = via.as_deref().unwrap_or(&local);
                        s.send_to(&packet, a).await
                    }
                    Delivery::Broadcast => local.send_to(&packet, BROADCAST).await,
                    Delivery::Client { mac, ip } => match &link {
                        Some(l) => l
                            .send(&mac, SocketAddrV4::new(ip, 68), &packet)
                            .await
                            .map(|()| packet.len()),
                        None => local.send_to(&packet, BROADCAST).await,
                    },
                };
                match sent {
                    Ok(_) => {
                        counters.event(event);
                        log(format_args!("{event:?} sent to {target}"));
                        if let Some(b) = bind {
                            let identity = who(&b.mac);
                            let until = now_ms + u64::from(b.secs) * 1000;
                            // The served table only changes when the NIC
                            // held another address or takes one the
                            // table does not give it (a kept renewal).
                            let served = table.get(&b.mac).and_then(|c| c.address);
                            let moved = {
                                let mut l = server.leases.lock().unwrap_or_else(|p| p.into_inner());
                                let before = l.of(&identity, now_ms);
                                l.bind(b.addr, b.mac, &identity, until);
                                before.is_some_and(|a| a != b.addr) || served != Some(b.addr)
                            };
                            if moved {
                                server.readjust();
                            }
                            leases_dirty = true;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%iface, "DHCP send: {e}");
                        counters.send_error();
                    }
                }
            }
            Outcome::RelayUp {
                packet,
                to,
                via: Some(gw),
                ..
            } => {
                let servers = to.iter().map(|a| *a.ip()).collect();
                let sent = match (&tunnels, &tunneled) {
                    (Some(t), Some(sub)) => t.send(&gw, sub.tag, servers, packet),
                    _ => Err("this node has no node tunnels (it runs without gossip)"),
                };
                match sent {
                    Ok(()) => {
                        counters.event(Event::TunneledUp);
                        log(format_args!(
                            "request from {from} sent to gateway {gw} through the tunnel"
                        ));
                    }
                    Err(why) => {
                        counters.dropped(DropReason::TunnelUnavailable);
                        log(format_args!(
                            "request from {from} for gateway {gw} dropped: {why}"
                        ));
                    }
                }
            }
            Outcome::RelayUp {
                giaddr,
                packet,
                to,
                via: None,
            } => {
                let sock = match upstream.get(&giaddr) {
                    Some(s) => s.clone(),
                    None => match bind_upstream(giaddr, port).and_then(UdpSocket::from_std) {
                        Ok(s) => {
                            let s = Arc::new(s);
                            upstream.insert(giaddr, s.clone());
                            let (tx, reader) = (up_tx.clone(), s.clone());
                            readers.spawn(async move {
                                let mut buf = vec![0u8; MAX_PACKET + 1];
                                loop {
                                    match recv_pktinfo(&reader, &mut buf).await {
                                        Ok((n, from, arrived)) => {
                                            let item =
                                                (buf[..n].to_vec(), from, reader.clone(), arrived);
                                            if tx.send(item).await.is_err() {
                                                break;
                                            }
                                        }
                                        Err(e) => tracing::warn!("DHCPCAST receive: {e}"),
                                    }
                                }
                            });
                            s
                        }
                        Err(e) => {
                            tracing::warn!(%giaddr, "DHCPCAST socket on {giaddr}:{port}: {e}");
                            counters.send_error();
                            continue;
                        }
                    },
                };
                let mut ok = false;
                for server_addr in to {
                    match sock.send_to(&packet, server_addr).await {
                        Ok(_) => ok = true,
                        Err(e) => tracing::warn!(%server_addr, "DHCPCAST send: {e}"),
                    }
                }
                if ok {
                    counters.event(Event::RelayedUp);
                    log(format_args!("request relayed up from {from}"));
                } else {
                    counters.send_error();
                }
            }
        }
    }
    readers.abort_all();
    if let Some(w) = writing {
        let _ = w.await;
    }
    if leases_dirty {
        if let Some(w) = write_leases(server) {
            let _ = w.await;
        }
    }
    Ok(())
}

/// Whether `packet`'s client (chaddr) is relayed via `gateway`.
fn relayed_via(table: &super::Table, packet: &[u8], gateway: &str) -> bool {
    super::server::decode(packet)
        .ok()
        .and_then(|m| super::server::mac_of(&m))
        .and_then(|mac| table.get(&mac))
        .and_then(|c| c.upstream.as_ref())
        .is_some_and(|u| u.via.as_deref() == Some(gateway))
}

/// Leases ACKed are written to the lease file at most this often (and
/// when the server stops): the file is rewritten whole, so a write per
/// ACK made a burst of new VMs quadratic. A crash loses at most this much.
const WRITE_LEASES_EVERY: Duration = Duration::from_secs(1);
/// Ended leases are dropped at most this often (leases last minutes to
/// days).
const EXPIRE_EVERY_MS: u64 = 1000;

/// Write the leases to the server's lease file, if it has one, off the
/// serving task.
fn write_leases(server: &DhcpServer) -> Option<tokio::task::JoinHandle<()>> {
    let path = server
        .lease_file
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()?;
    let text = {
        let leases = server.leases.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::to_string(&*leases).ok()?
    };
    Some(tokio::task::spawn_blocking(move || {
        if let Err(e) = crate::state_file::write(&path, text.as_bytes()) {
            tracing::warn!(path = %path.display(), "DHCP leases not recorded: {e}");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_with_valid_checksums() {
        let from = SocketAddrV4::new(Ipv4Addr::new(10, 99, 0, 1), 67);
        let to = SocketAddrV4::new(Ipv4Addr::new(10, 99, 1, 7), 68);
        for len in [0, 1, 300, 301] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let p = ipv4_udp(from, to, &payload);
            assert_eq!(p.len(), 28 + len);
            assert_eq!(checksum(&p[..20], 0), 0, "IPv4 header checksum");
            assert_eq!(parse_ipv4_udp(&p), Some((from, to, &payload[..])));
            let udp_sum = |p: &[u8]| checksum(&p[20..], pseudo_header(from.ip(), to.ip(), 8 + len));
            assert_eq!(udp_sum(&p), 0, "UDP checksum");
            // Any flipped byte of the UDP part is caught by its checksum,
            // of the IPv4 header by the header's.
            let mut bad = p.clone();
            bad[p.len() - 1] ^= 0x40;
            assert_ne!(udp_sum(&bad), 0);
            let mut bad = p.clone();
            bad[15] ^= 1;
            assert_eq!(parse_ipv4_udp(&bad), None);
        }
    }

    #[test]
    fn checksum_matches_a_known_header() {
        // The example of RFC 1071's numerical section.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0),
            !0xddf2
        );
        // An IPv4 header as Linux sent it (checksum 0xb861).
        let h = hex::decode("450000730000400040110000c0a80001c0a800c7").unwrap();
        assert_eq!(checksum(&h, 0), 0xb861);
    }
}
