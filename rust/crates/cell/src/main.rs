//! `cell`: the host CLI. See `cell --help`.

mod jail;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// cell: give a coding agent root in a disposable machine, and let every byte
/// it sends out pass a firewall that enforces your allowlist.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command behind the cell firewall, in network namespaces (Linux, root; no VM).
    Jail(jail::Args),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Jail(args) => match jail::run(args) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("cell jail: {e:#}");
                ExitCode::from(jail::JAIL_FAILED)
            }
        },
    }
}
