//! A join request body (`POST /v1/join`): `deorch::fuzzing::join_request` under libFuzzer,
//! `cargo +nightly fuzz run join_request`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| deorch::fuzzing::join_request(data));
