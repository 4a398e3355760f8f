//! The relocation tunnel's accepting end fed arbitrary bytes:
//! `deorch::fuzzing::relocate_tunnel` under libFuzzer,
//! `cargo +nightly fuzz run relocate_tunnel`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| deorch::fuzzing::relocate_tunnel(data));
