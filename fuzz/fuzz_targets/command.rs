//! The search bar's command line: `deorch::fuzzing::command` under
//! libFuzzer, `cargo +nightly fuzz run command`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| deorch::fuzzing::command(data));
