//! The login path (challenge, address, signature; token; cookie header): `deorch::fuzzing::login` under libFuzzer,
//! `cargo +nightly fuzz run login`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| deorch::fuzzing::login(data));
