//! DHCPCAST: the node as a relay agent (RFC 1542, option 82 from RFC
//! 3046) for VMs whose NIC or network names central servers.
//!
//! - Up: a VM's request (giaddr 0, no option 82 of its own) gets giaddr =
//!   the relay address, hops + 1 and option 82 with circuit-id =
//!   `namespace/vm/nic` (the VM of the bridge port the request came in
//!   on: the port guard drops a chaddr that is not that port's VM), a
//!   remote-id that is this node's token (below), and the server
//!   identifier override (RFC 5107) = the node's address on the bridge.
//!   It goes to every listed server, port 67. The central server names
//!   the node as its server identifier, so the VM unicasts its renewals
//!   to the node, which relays them like any other request.
//! - Down: a BOOTREPLY is taken only from a DHCPCAST upstream socket,
//!   from one of *that VM's* servers, to *that VM's* relay address, for a
//!   MAC in the table, with this node's option 82 echoed (RFC 3046 §2.2):
//!   the VM's circuit-id and the token. The token is an HMAC of (circuit,
//!   chaddr, giaddr) under a key the node draws at start and never sends
//!   towards the VMs, so a VM cannot forge a reply, whatever source
//!   address it fakes. Option 82 is stripped and the reply goes to the
//!   VM's MAC (or broadcast if it asked).
//!
//! The token proves a reply answers a request that went through this
//! node; it does not authenticate the central server to the node (anyone
//! on the path between them sees it). With `via` a gateway node, the
//! path is the node tunnel (`gateway.rs`): requests go there instead of
//! by UDP, and such a NIC takes replies from that tunnel only
//! ([`Side::Tunnel`]), never from an upstream socket.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::relay::{RelayAgentInformation, RelayCode, RelayInfo};
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::Encodable;
use sha2::{Digest, Sha256};

use super::server::{delivery, encode, Context, Outcome, Side, MAX_HOPS};
use super::{Client, DropReason, Event, Mac, ServerConfig, Upstream};

/// Bytes of the token in the remote-id suboption.
pub const TOKEN_LEN: usize = 16;

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The remote-id this node puts in option 82 for (circuit, chaddr,
/// giaddr) and requires back in replies.
pub fn token(key: &[u8], circuit: &[u8], mac: &Mac, giaddr: Ipv4Addr) -> [u8; TOKEN_LEN] {
    let h = hmac_sha256(
        key,
        &[b"deorch dhcpcast\0", circuit, b"\0", mac, &giaddr.octets()],
    );
    let mut t = [0u8; TOKEN_LEN];
    t.copy_from_slice(&h[..TOKEN_LEN]);
    t
}

/// Forward a VM's request to its central servers.
pub fn up(
    config: &ServerConfig,
    cx: &Context,
    msg: &Message,
    mac: Mac,
    client: &Client,
    up: &Upstream,
) -> Outcome {
    if msg.opts().get(OptionCode::RelayAgentInformation).is_some() {
        return Outcome::Drop(DropReason::ClientRelayInfo);
    }
    if msg.hops() >= MAX_HOPS {
        return Outcome::Drop(DropReason::HopLimit);
    }
    let mut m = msg.clone();
    m.set_giaddr(up.giaddr).set_hops(msg.hops() + 1);
    let circuit = client.identity.as_bytes();
    let mut info = RelayAgentInformation::default();
    info.insert(RelayInfo::AgentCircuitId(circuit.to_vec()));
    info.insert(RelayInfo::AgentRemoteId(
        token(cx.relay_key, circuit, &mac, up.giaddr).to_vec(),
    ));
    info.insert(RelayInfo::ServerIdentifierOverride(config.server_id));
    m.opts_mut().insert(DhcpOption::RelayAgentInformation(info));
    match m.to_vec() {
        Ok(packet) => Outcome::RelayUp {
            giaddr: up.giaddr,
            packet,
            to: up
                .servers
                .iter()
                .map(|s| SocketAddrV4::new(*s, 67))
                .collect(),
            via: up.via.clone(),
        },
        Err(_) => Outcome::Drop(DropReason::ReplyTooLarge),
    }
}

/// Deliver a central server's reply (received on an upstream socket) to
/// its VM.
pub fn down(
    _config: &ServerConfig,
    cx: &Context,
    msg: &Message,
    mac: Mac,
    from: SocketAddrV4,
) -> Outcome {
    let reject = Outcome::Drop(DropReason::RelayReplyRejected);
    let Some(client) = cx.table.get(&mac) else {
        return reject;
    };
    let Some(up) = &client.upstream else {
        return reject;
    };
    // A NIC relayed through a gateway takes replies from its tunnel
    // only, never from the network; one relayed by UDP never from a
    // tunnel.
    let tunneled = cx.side == Side::Tunnel;
    if tunneled != up.via.is_some() {
        return reject;
    }
    if !up.servers.contains(from.ip()) || msg.giaddr() != up.giaddr {
        return reject;
    }
    let mut m = msg.clone();
    let Some(DhcpOption::RelayAgentInformation(info)) =
        m.opts_mut().remove(OptionCode::RelayAgentInformation)
    else {
        return reject;
    };
    let circuit = client.identity.as_bytes();
    let ours = matches!(
        info.get(RelayCode::AgentCircuitId),
        Some(RelayInfo::AgentCircuitId(id)) if id.as_slice() == circuit
    ) && matches!(
        info.get(RelayCode::AgentRemoteId),
        Some(RelayInfo::AgentRemoteId(t))
            if t.as_slice() == token(cx.relay_key, circuit, &mac, up.giaddr)
    );
    if !ours {
        return reject;
    }
    let nak = m.opts().has_msg_type(MessageType::Nak);
    // Towards the VM the packet is a direct reply: delivery by its own
    // fields, ignoring the giaddr that brought it here.
    let mut as_direct = m.clone();
    as_direct.set_giaddr(Ipv4Addr::UNSPECIFIED);
    let to = delivery(&as_direct, nak, m.yiaddr(), mac);
    match encode(&m) {
        Some(packet) => Outcome::Reply {
            event: if tunneled {
                Event::TunneledDown
            } else {
                Event::RelayedDown
            },
            packet,
            to,
            bind: None,
        },
        None => Outcome::Drop(DropReason::ReplyTooLarge),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::server::tests::{config, request, table, FROM, MAC, SERVER};
    use crate::dhcp::server::{handle_in, Delivery, Side};
    use crate::dhcp::{Leases, Table};
    use dhcproto::v4::Opcode;
    use dhcproto::{Decodable, Decoder};

    const CENTRAL: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);
    const KEY: &[u8] = b"node key";

    fn relayed_table() -> Table {
        let mut t = table();
        let c = t.clients.get_mut(&MAC).unwrap();
        c.address = None;
        c.upstream = Some(Upstream {
            servers: vec![CENTRAL],
            giaddr: SERVER,
            via: None,
        });
        t
    }

    fn run(t: &Table, side: Side, bytes: &[u8], from: SocketAddrV4) -> Outcome {
        let leases = Leases::default();
        let cx = Context {
            table: t,
            leases: &leases,
            now_ms: 0,
            side,
            relay_key: KEY,
        };
        crate::dhcp::server::handle_in(&config(), &cx, bytes, from)
    }

    fn info_of(packet: &[u8]) -> RelayAgentInformation {
        let m = Message::decode(&mut Decoder::new(packet)).unwrap();
        match m.opts().get(OptionCode::RelayAgentInformation) {
            Some(DhcpOption::RelayAgentInformation(info)) => info.clone(),
            _ => panic!("no option 82"),
        }
    }

    #[test]
    fn up_sets_giaddr_hops_circuit_token_and_server_override() {
        let t = relayed_table();
        let bytes = request(MessageType::Discover, &MAC).to_vec().unwrap();
        let o = run(&t, Side::Interface, &bytes, FROM);
        let Outcome::RelayUp { packet, to, .. } = o else {
            panic!("{o:?}")
        };
        assert_eq!(to, vec![SocketAddrV4::new(CENTRAL, 67)]);
        let m = Message::decode(&mut Decoder::new(&packet)).unwrap();
        assert_eq!(m.giaddr(), SERVER);
        assert_eq!(m.hops(), 1);
        let info = info_of(&packet);
        assert_eq!(
            info.get(RelayCode::AgentCircuitId),
            Some(&RelayInfo::AgentCircuitId(b"default/vm/eth0".to_vec()))
        );
        assert_eq!(
            info.get(RelayCode::AgentRemoteId),
            Some(&RelayInfo::AgentRemoteId(
                token(KEY, b"default/vm/eth0", &MAC, SERVER).to_vec()
            ))
        );
        assert_eq!(
            info.get(RelayCode::ServerIdentifierOverride),
            Some(&RelayInfo::ServerIdentifierOverride(SERVER))
        );
        // A VM inserting its own option 82 is dropped.
        let mut m = request(MessageType::Discover, &MAC);
        m.opts_mut()
            .insert(DhcpOption::RelayAgentInformation(info.clone()));
        assert_eq!(
            run(&t, Side::Interface, &m.to_vec().unwrap(), FROM),
            Outcome::Drop(DropReason::ClientRelayInfo)
        );
    }

    fn offer(giaddr: Ipv4Addr, circuit: &[u8], token: Option<&[u8]>) -> Vec<u8> {
        let mut m = request(MessageType::Offer, &MAC);
        m.set_opcode(Opcode::BootReply)
            .set_giaddr(giaddr)
            .set_yiaddr([10, 99, 5, 10]);
        let mut info = RelayAgentInformation::default();
        info.insert(RelayInfo::AgentCircuitId(circuit.to_vec()));
        if let Some(t) = token {
            info.insert(RelayInfo::AgentRemoteId(t.to_vec()));
        }
        m.opts_mut().insert(DhcpOption::RelayAgentInformation(info));
        m.to_vec().unwrap()
    }

    #[test]
    fn down_only_from_the_vms_servers_with_the_nodes_option_82() {
        let t = relayed_table();
        let from = SocketAddrV4::new(CENTRAL, 67);
        let tok = token(KEY, b"default/vm/eth0", &MAC, SERVER);
        let good = offer(SERVER, b"default/vm/eth0", Some(&tok));
        let o = run(&t, Side::Upstream, &good, from);
        let Outcome::Reply {
            packet, to, event, ..
        } = o
        else {
            panic!("{o:?}")
        };
        assert_eq!(event, Event::RelayedDown);
        assert_eq!(
            to,
            Delivery::Client {
                mac: MAC,
                ip: [10, 99, 5, 10].into()
            }
        );
        let m = Message::decode(&mut Decoder::new(&packet)).unwrap();
        assert!(m.opts().get(OptionCode::RelayAgentInformation).is_none());
        let rejected = Outcome::Drop(DropReason::RelayReplyRejected);
        // The same reply on the VMs' side (a VM faking the server's
        // source address) is never delivered.
        assert_eq!(
            run(&t, Side::Interface, &good, from),
            Outcome::Drop(DropReason::ReplyFromVmSide)
        );
        // Another server, another relay address, another circuit, no or
        // a wrong token, no option 82 at all.
        let rogue = SocketAddrV4::new([10, 98, 0, 66].into(), 67);
        assert_eq!(run(&t, Side::Upstream, &good, rogue), rejected);
        let other_relay = offer([10, 20, 0, 7].into(), b"default/vm/eth0", Some(&tok));
        assert_eq!(run(&t, Side::Upstream, &other_relay, from), rejected);
        let other_circuit = offer(SERVER, b"default/other/eth0", Some(&tok));
        assert_eq!(run(&t, Side::Upstream, &other_circuit, from), rejected);
        let no_token = offer(SERVER, b"default/vm/eth0", None);
        assert_eq!(run(&t, Side::Upstream, &no_token, from), rejected);
        let bad = offer(SERVER, b"default/vm/eth0", Some(&[0u8; TOKEN_LEN]));
        assert_eq!(run(&t, Side::Upstream, &bad, from), rejected);
        let mut bare = request(MessageType::Ack, &MAC);
        bare.set_opcode(Opcode::BootReply).set_giaddr(SERVER);
        assert_eq!(
            run(&t, Side::Upstream, &bare.to_vec().unwrap(), from),
            rejected
        );
        // A reply for a VM served locally is not relayed either.
        assert_eq!(run(&table(), Side::Upstream, &good, from), rejected);
        // Requests on an upstream socket are not served.
        let req = request(MessageType::Discover, &MAC).to_vec().unwrap();
        assert_eq!(
            handle_in(
                &config(),
                &Context {
                    side: Side::Upstream,
                    ..Context::interface(&table())
                },
                &req,
                from
            ),
            Outcome::Drop(DropReason::RequestFromUpstream)
        );
    }

    /// A NIC relayed via a gateway: its requests name the gateway, its
    /// replies count only from the tunnel (a correct one by UDP, from the
    /// right server with the token, is rejected); a NIC relayed by UDP
    /// takes none from a tunnel.
    #[test]
    fn a_nic_via_a_gateway_takes_replies_from_the_tunnel_only() {
        let mut t = relayed_table();
        t.clients
            .get_mut(&MAC)
            .unwrap()
            .upstream
            .as_mut()
            .unwrap()
            .via = Some("gw".into());
        let bytes = request(MessageType::Discover, &MAC).to_vec().unwrap();
        let o = run(&t, Side::Interface, &bytes, FROM);
        assert!(
            matches!(&o, Outcome::RelayUp { via: Some(g), .. } if g == "gw"),
            "{o:?}"
        );
        let from = SocketAddrV4::new(CENTRAL, 67);
        let tok = token(KEY, b"default/vm/eth0", &MAC, SERVER);
        let good = offer(SERVER, b"default/vm/eth0", Some(&tok));
        let rejected = Outcome::Drop(DropReason::RelayReplyRejected);
        assert_eq!(run(&t, Side::Upstream, &good, from), rejected);
        let o = run(&t, Side::Tunnel, &good, from);
        assert!(
            matches!(
                o,
                Outcome::Reply {
                    event: Event::TunneledDown,
                    ..
                }
            ),
            "{o:?}"
        );
        // Through the tunnel the same checks hold: the token, the server.
        let bad = offer(SERVER, b"default/vm/eth0", Some(&[0u8; TOKEN_LEN]));
        assert_eq!(run(&t, Side::Tunnel, &bad, from), rejected);
        let rogue = SocketAddrV4::new([10, 98, 0, 66].into(), 67);
        assert_eq!(run(&t, Side::Tunnel, &good, rogue), rejected);
        // By UDP, not via a gateway: no reply from a tunnel.
        assert_eq!(run(&relayed_table(), Side::Tunnel, &good, from), rejected);
        // No request is taken from a tunnel.
        assert_eq!(
            run(&t, Side::Tunnel, &bytes, from),
            Outcome::Drop(DropReason::RequestFromUpstream)
        );
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
