//! `cargo fuzz run path`: see cell_proxy::fuzzing::path and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cell_proxy::fuzzing::path(data));
