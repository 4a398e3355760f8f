//! The sockets: UDP port 67 bound to one interface (`SO_BINDTODEVICE`,
//! broadcast allowed), plus, for DHCPCAST, one socket per relay address
//! (`giaddr:67`, not bound to a device: central servers answer through
//! whatever route leads back). Every packet from either goes through
//! [`handle_in`]; this module only moves bytes.
//!
//! A reply to a client that has no address yet goes to its MAC, not to
//! everyone: a neighbour entry (`ip neigh replace ADDR lladdr MAC`) first,
//! then unicast UDP; broadcast only when the client asked for it or the
//! entry cannot be made.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::lease::QUARANTINE_MS;
use super::server::{handle_in, Context, Delivery, Outcome, Side, MAX_PACKET};
use super::{format_mac, DhcpError, DhcpServer, Event, Mac};

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

fn bind_upstream(addr: Ipv4Addr, port: u16) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddrV4::new(addr, port).into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Install a neighbour entry so that a unicast reply reaches `mac`.
async fn neighbour(iface: &str, ip: Ipv4Addr, mac: &Mac) -> bool {
    let run = tokio::process::Command::new("ip")
        .args(["-4", "neigh", "replace", &ip.to_string(), "lladdr"])
        .arg(format_mac(mac))
        .args(["dev", iface, "nud", "reachable"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    matches!(
        tokio::time::timeout(Duration::from_secs(2), run).await,
        Ok(Ok(s)) if s.success()
    )
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
    // Packets from DHCPCAST upstream sockets, with the socket they came on.
    let (up_tx, mut up_rx) = mpsc::channel::<(Vec<u8>, SocketAddrV4, Arc<UdpSocket>)>(1024);
    let mut upstream: HashMap<Ipv4Addr, Arc<UdpSocket>> = HashMap::new();
    let mut readers = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; MAX_PACKET + 1];
    tracing::info!(%iface, server_id = %server.config.server_id, "DHCP server listening");
    loop {
        let (data, from, via): (Vec<u8>, SocketAddrV4, Option<Arc<UdpSocket>>) = tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() { break; }
                continue;
            }
            r = local.recv_from(&mut buf) => match r {
                Ok((n, SocketAddr::V4(from))) => (buf[..n].to_vec(), from, None),
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(%iface, "DHCP receive: {e}");
                    continue;
                }
            },
            Some((data, from, sock)) = up_rx.recv() => (data, from, Some(sock)),
        };
        let now_ms = crate::clock::now_ms();
        server.with_leases(|l| l.expire(now_ms));
        let table = server.table();
        let outcome = {
            let leases = server.leases.lock().unwrap_or_else(|p| p.into_inner());
            let cx = Context {
                table: &table,
                leases: &leases,
                now_ms,
                side: if via.is_some() {
                    Side::Upstream
                } else {
                    Side::Interface
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
                    Delivery::Client { mac, ip } => {
                        if neighbour(&iface, ip, &mac).await {
                            local.send_to(&packet, SocketAddrV4::new(ip, 68)).await
                        } else {
                            local.send_to(&packet, BROADCAST).await
                        }
                    }
                };
                match sent {
                    Ok(_) => {
                        counters.event(event);
                        log(format_args!("{event:?} sent to {target}"));
                        if let Some(b) = bind {
                            let identity = who(&b.mac);
                            server.with_leases(|l| {
                                let changed = l.of(&identity, now_ms) != Some(b.addr);
                                l.bind(b.addr, b.mac, &identity, now_ms + u64::from(b.secs) * 1000);
                                changed
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%iface, "DHCP send: {e}");
                        counters.send_error();
                    }
                }
            }
            Outcome::RelayUp { giaddr, packet, to } => {
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
                                    match reader.recv_from(&mut buf).await {
                                        Ok((n, SocketAddr::V4(from))) => {
                                            let item = (buf[..n].to_vec(), from, reader.clone());
                                            if tx.send(item).await.is_err() {
                                                break;
                                            }
                                        }
                                        Ok(_) => {}
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
    Ok(())
}
