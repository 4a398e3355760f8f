//! DHCPCAST: the node as a relay agent (RFC 1542, option 82 from RFC
//! 3046) for VMs whose NIC or network names central servers.
//!
//! - Up: a VM's request (giaddr 0, no option 82 of its own) gets giaddr =
//!   the relay address, hops + 1 and option 82 with circuit-id =
//!   `namespace/vm/nic`, and goes to every listed server, port 67.
//! - Down: a BOOTREPLY is delivered only when it comes from one of *that
//!   VM's* servers, to *that VM's* relay address, for a MAC in the table
//!   whose circuit-id (when echoed) matches; option 82 is stripped, and the
//!   reply goes to the VM's MAC (or broadcast if it asked).

use std::net::SocketAddrV4;

use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::Encodable;

use super::server::{delivery, encode, Outcome, MAX_HOPS};
use super::{Client, DropReason, Event, Mac, Table, Upstream};

/// Forward a VM's request to its central servers.
pub fn up(msg: &Message, client: &Client, up: &Upstream) -> Outcome {
    if msg.opts().get(OptionCode::RelayAgentInformation).is_some() {
        return Outcome::Drop(DropReason::ClientRelayInfo);
    }
    if msg.hops() >= MAX_HOPS {
        return Outcome::Drop(DropReason::HopLimit);
    }
    let mut m = msg.clone();
    m.set_giaddr(up.giaddr).set_hops(msg.hops() + 1);
    let mut info = RelayAgentInformation::default();
    info.insert(RelayInfo::AgentCircuitId(
        client.identity.as_bytes().to_vec(),
    ));
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
        },
        Err(_) => Outcome::Drop(DropReason::ReplyTooLarge),
    }
}

/// Deliver a central server's reply to its VM.
pub fn down(table: &Table, msg: &Message, mac: Mac, from: SocketAddrV4) -> Outcome {
    let reject = Outcome::Drop(DropReason::RelayReplyRejected);
    let Some(client) = table.get(&mac) else {
        return reject;
    };
    let Some(up) = &client.upstream else {
        return reject;
    };
    if !up.servers.contains(from.ip()) || msg.giaddr() != up.giaddr {
        return reject;
    }
    let mut m = msg.clone();
    if let Some(DhcpOption::RelayAgentInformation(info)) =
        m.opts_mut().remove(OptionCode::RelayAgentInformation)
    {
        match info.get(dhcproto::v4::relay::RelayCode::AgentCircuitId) {
            Some(RelayInfo::AgentCircuitId(id)) if id.as_slice() == client.identity.as_bytes() => {}
            _ => return reject,
        }
    }
    let nak = m.opts().has_msg_type(MessageType::Nak);
    // Towards the VM the packet is a direct reply: delivery by its own
    // fields, ignoring the giaddr that brought it here.
    let mut as_direct = m.clone();
    as_direct.set_giaddr(std::net::Ipv4Addr::UNSPECIFIED);
    let to = delivery(&as_direct, nak, m.yiaddr(), mac);
    match encode(&m) {
        Some(packet) => Outcome::Reply {
            event: Event::RelayedDown,
            packet,
            to,
        },
        None => Outcome::Drop(DropReason::ReplyTooLarge),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::server::tests::{config, request, table, FROM, MAC, SERVER};
    use crate::dhcp::server::{handle, Delivery};
    use dhcproto::v4::Opcode;
    use dhcproto::{Decodable, Decoder};
    use std::net::Ipv4Addr;

    const CENTRAL: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);

    fn relayed_table() -> Table {
        let mut t = table();
        let c = t.clients.get_mut(&MAC).unwrap();
        c.address = None;
        c.upstream = Some(Upstream {
            servers: vec![CENTRAL],
            giaddr: SERVER,
        });
        t
    }

    #[test]
    fn up_sets_giaddr_hops_and_circuit_id() {
        let t = relayed_table();
        let o = handle(
            &config(),
            &t,
            &request(MessageType::Discover, &MAC).to_vec().unwrap(),
            FROM,
        );
        let Outcome::RelayUp { packet, to, .. } = o else {
            panic!("{o:?}")
        };
        assert_eq!(to, vec![SocketAddrV4::new(CENTRAL, 67)]);
        let m = Message::decode(&mut Decoder::new(&packet)).unwrap();
        assert_eq!(m.giaddr(), SERVER);
        assert_eq!(m.hops(), 1);
        let Some(DhcpOption::RelayAgentInformation(info)) =
            m.opts().get(OptionCode::RelayAgentInformation)
        else {
            panic!("no option 82")
        };
        assert_eq!(
            info.get(dhcproto::v4::relay::RelayCode::AgentCircuitId),
            Some(&RelayInfo::AgentCircuitId(b"default/vm/eth0".to_vec()))
        );
        // A VM inserting its own option 82 is dropped.
        let mut m = request(MessageType::Discover, &MAC);
        m.opts_mut()
            .insert(DhcpOption::RelayAgentInformation(info.clone()));
        assert_eq!(
            handle(&config(), &t, &m.to_vec().unwrap(), FROM),
            Outcome::Drop(DropReason::ClientRelayInfo)
        );
    }

    fn offer(giaddr: Ipv4Addr, circuit: &[u8]) -> Vec<u8> {
        let mut m = request(MessageType::Offer, &MAC);
        m.set_opcode(Opcode::BootReply)
            .set_giaddr(giaddr)
            .set_yiaddr([10, 99, 5, 10]);
        let mut info = RelayAgentInformation::default();
        info.insert(RelayInfo::AgentCircuitId(circuit.to_vec()));
        m.opts_mut().insert(DhcpOption::RelayAgentInformation(info));
        m.to_vec().unwrap()
    }

    #[test]
    fn down_only_from_the_vms_servers_to_the_vms_mac() {
        let t = relayed_table();
        let from = SocketAddrV4::new(CENTRAL, 67);
        let o = handle(&config(), &t, &offer(SERVER, b"default/vm/eth0"), from);
        let Outcome::Reply { packet, to, event } = o else {
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
        // Another server, another relay address, another circuit.
        let rogue = SocketAddrV4::new([10, 98, 0, 66].into(), 67);
        let good = offer(SERVER, b"default/vm/eth0");
        assert_eq!(handle(&config(), &t, &good, rogue), rejected);
        let other_relay = offer([10, 20, 0, 7].into(), b"default/vm/eth0");
        assert_eq!(handle(&config(), &t, &other_relay, from), rejected);
        let other_circuit = offer(SERVER, b"default/other/eth0");
        assert_eq!(handle(&config(), &t, &other_circuit, from), rejected);
        // A reply for a VM served locally is not relayed either.
        assert_eq!(handle(&config(), &table(), &good, from), rejected);
    }
}
