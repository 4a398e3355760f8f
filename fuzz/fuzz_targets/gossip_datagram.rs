//! A gossip datagram: `deorch::fuzzing::gossip_datagram` under libFuzzer,
//! `cargo +nightly fuzz run gossip_datagram`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| deorch::fuzzing::gossip_datagram(data));
