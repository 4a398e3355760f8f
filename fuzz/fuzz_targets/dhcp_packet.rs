//! Any bytes into the DHCP server's packet path, with a table holding one
//! known VM and a trusted relay: `cargo +nightly fuzz run dhcp_packet`.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};

use deorch::dhcp::{handle, handle_in, Client, Context, LeaseOptions, Leases, ServerConfig, Side, Table};
use deorch::model::network::DhcpOptions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let server: Ipv4Addr = [10, 20, 0, 1].into();
    let mut config = ServerConfig::new(server);
    config.trusted_relays.push([10, 20, 0, 2].into());
    let mut table = Table::default();
    let options = LeaseOptions::resolve(
        "10.20.0.0/24".parse().unwrap(),
        Some(server),
        None,
        &DhcpOptions::default(),
        "vm",
    )
    .unwrap();
    table.clients.insert(
        [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc],
        Client {
            identity: "default/vm/eth0".into(),
            address: Some([10, 20, 0, 150].into()),
            options,
            upstream: None,
        },
    );
    for from in [
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        SocketAddrV4::new([10, 20, 0, 2].into(), 67),
    ] {
        let _ = handle(&config, &table, data, from);
    }
    // A central server's reply on the DHCPCAST upstream socket: the relay
    // path checks the circuit-id and token of option 82 in it.
    let leases = Leases::default();
    let cx = Context {
        side: Side::Upstream,
        leases: &leases,
        now_ms: 1,
        relay_key: b"fuzz relay key",
        ..Context::interface(&table)
    };
    let _ = handle_in(&config, &cx, data, SocketAddrV4::new([10, 20, 0, 9].into(), 67));
});
