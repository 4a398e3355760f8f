//! A message of a `fetch` tunnel (a copy between nodes) fed arbitrary
//! bytes: `deorch::fuzzing::relocate_fetch` under libFuzzer,
//! `cargo +nightly fuzz run relocate_fetch`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| deorch::fuzzing::relocate_fetch(data));
