//! A manifest file's text: `deorch::fuzzing::manifest` under libFuzzer,
//! `cargo +nightly fuzz run manifest`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| deorch::fuzzing::manifest(data));
