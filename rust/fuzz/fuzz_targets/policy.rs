//! `cargo fuzz run policy`: see cell_proxy::fuzzing::policy and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cell_proxy::fuzzing::policy(data));
