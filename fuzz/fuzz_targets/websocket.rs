//! A client's frames on the console's websocket bridge:
//! `deorch::fuzzing::websocket` under libFuzzer,
//! `cargo +nightly fuzz run websocket`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| deorch::fuzzing::websocket(data));
