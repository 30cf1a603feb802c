//! `cell-proxy`'s modules as a library: the binary (`main.rs`) is built on
//! it, and so are the fuzz targets in `rust/fuzz` and their corpus replay
//! (`tests/fuzz_corpus.rs`), which call the checks in [`fuzzing`]. Not an API:
//! the modules are hidden from the docs and may change with the daemon.

// Lints about the shape of a public API: these modules are the daemon's
// internals, public only so that the binary and the fuzz targets can share them.
#![allow(clippy::result_unit_err, clippy::len_without_is_empty)]

#[doc(hidden)]
pub mod ca;
#[doc(hidden)]
pub mod control;
#[doc(hidden)]
pub mod dns;
#[doc(hidden)]
pub mod events;
#[doc(hidden)]
pub mod framing;
#[doc(hidden)]
pub mod fuzzing;
#[doc(hidden)]
pub mod nflog;
#[doc(hidden)]
pub mod proxy;
#[doc(hidden)]
pub mod secrets;
/// The `cell spy` recorder.
pub mod spy;
#[doc(hidden)]
pub mod state;
#[doc(hidden)]
pub mod synth;
