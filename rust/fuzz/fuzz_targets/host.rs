//! `cargo fuzz run host`: see cell_proxy::fuzzing::host and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cell_proxy::fuzzing::host(data));
