//! The gossip channel's frames (handshakes and sealed data):
//! `deorch::fuzzing::gossip_channel` under libFuzzer,
//! `cargo +nightly fuzz run gossip_channel`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| deorch::fuzzing::gossip_channel(data));
