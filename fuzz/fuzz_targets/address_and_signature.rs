//! An address, a signature and a message: `deorch::fuzzing::address_and_signature` under libFuzzer,
//! `cargo +nightly fuzz run address_and_signature`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| deorch::fuzzing::address_and_signature(data));
