//! What a DHCPCAST gateway takes from a relaying node's tunnel and from
//! the network, fed arbitrary bytes: `deorch::fuzzing::dhcpcast_gateway`
//! under libFuzzer, `cargo +nightly fuzz run dhcpcast_gateway`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| deorch::fuzzing::dhcpcast_gateway(data));
