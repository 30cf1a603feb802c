//! Shared by the integration tests that drive the `cell` binary.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `cell ARGS` with its state under `state` (never the user's).
pub fn cell(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cell"))
        .args(args)
        .env("CELL_STATE_DIR", state)
        .env_remove("CELL_INSTANCE")
        .output()
        .unwrap()
}
