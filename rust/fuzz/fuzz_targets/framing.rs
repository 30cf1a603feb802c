//! `cargo fuzz run framing`: see cell_proxy::fuzzing::framing and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cell_proxy::fuzzing::framing(data));
