//! Shared by the integration tests that drive the `cell` binary.

use std::path::Path;

#[allow(dead_code)] // only the VM tests use it
pub mod vm;
use std::process::{Command, Output};

/// Runs `cell ARGS` with its state under `state` (never the user's).
#[allow(dead_code)] // not every test binary uses it
pub fn cell(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cell"))
        .args(args)
        .env("CELL_STATE_DIR", state)
        .env_remove("CELL_INSTANCE")
        .output()
        .unwrap()
}

/// Makes `cmd` (nix, or cell running nix) use a Nix configuration of the
/// test's own, written to `dir/nix.conf`: nothing from this machine's
/// /etc/nix or ~/.config/nix counts, so a test passes on a machine where
/// nobody set Nix up. The defaults: flakes on, no substituters (no network
/// here), no build users (root builds as itself; Nix's default `nixbld`
/// group exists only where someone created it), no sandbox (the tests'
/// derivations use the host's /bin). `extra` lines come last and win.
#[allow(dead_code)] // not every test binary runs Nix
pub fn own_nix<'a>(cmd: &'a mut Command, dir: &Path, extra: &str) -> &'a mut Command {
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("nix.conf");
    std::fs::write(
        &conf,
        format!(
            "experimental-features = nix-command flakes\nsubstituters =\nbuild-users-group =\nsandbox = false\n{extra}\n"
        ),
    )
    .unwrap();
    cmd.env("NIX_CONF_DIR", dir)
        .env("NIX_USER_CONF_FILES", &conf)
        .env_remove("NIX_CONFIG")
        .env_remove("NIX_REMOTE")
}
