//! `cargo fuzz run client_hello`: see cell_proxy::fuzzing::client_hello and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cell_proxy::fuzzing::client_hello(data));
