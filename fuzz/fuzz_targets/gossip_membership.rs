//! A membership datagram through the screen and foca:
//! `deorch::fuzzing::gossip_membership` under libFuzzer,
//! `cargo +nightly fuzz run gossip_membership`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| deorch::fuzzing::gossip_membership(data));
