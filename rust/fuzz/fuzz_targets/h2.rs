//! `cargo fuzz run h2`: see cell_proxy::fuzzing::h2 and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cell_proxy::fuzzing::h2(data));
