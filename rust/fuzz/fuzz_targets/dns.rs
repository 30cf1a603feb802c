//! `cargo fuzz run dns`: see cell_proxy::fuzzing::dns and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cell_proxy::fuzzing::dns(data));
