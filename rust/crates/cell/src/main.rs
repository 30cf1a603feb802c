//! `cell`: the host CLI. See `cell --help`. This file only parses and
//! dispatches: the command line is `cli`, each command is a module of `cmd`.

mod backend;
mod blocked;
mod cli;
mod cmd;
mod doctor;
mod instance;
mod jail;
mod nixbuild;
mod overlay;
mod relay;
mod remote;
mod secrets;
mod signals;
mod sources;
mod spec;
mod spy;
mod state;
mod supervise;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match cmd::run(cli::Cli::parse()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cell: {e:#}");
            ExitCode::FAILURE
        }
    }
}
