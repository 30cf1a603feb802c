//! The command line: what `cell` accepts and what `--help` says. Parsing only;
//! the commands themselves live in `cmd`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::{jail, relay, state};

const AFTER_HELP: &str = "\
Start here:
  cell                      build and boot this project's cell, open a shell in the agent VM
  cell agent claude         the same, straight into a harness (pi, claude, codex, opencode)
  cell allow https pypi.org allow a host now, no rebuild (`cell blocked` shows what was refused)
  cell stop                 power both VMs off (the agent's /var is kept; `cell destroy` removes it)

The flake is the current directory's when it has a flake.nix with
cellConfigurations (`nix flake init -t github:cell-sandbox/cell` writes one),
else cell's own default cell. Instances live under $XDG_STATE_HOME/cell
(~/Library/Application Support/cell on macOS); nothing is written into your
repository. `cell doctor` checks this machine.";

/// cell: give a coding agent root in a disposable VM, and let every byte it
/// sends out pass a firewall VM that enforces your allowlist.
#[derive(Parser)]
#[command(version, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// Which cell instance (each has its own VMs, disks, overlay and keys).
    #[arg(long, short = 'i', global = true, env = "CELL_INSTANCE", default_value = "default", value_parser = state::check_name)]
    pub(crate) instance: String,

    #[command(flatten)]
    pub(crate) up: UpArgs,

    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(clap::Args, Clone)]
pub(crate) struct UpArgs {
    /// The flake holding `cellConfigurations.<system>` (default: `.` when it has a
    /// flake.nix, else cell's own). Remembered by the instance.
    #[arg(long, value_name = "REF")]
    pub(crate) flake: Option<String>,

    /// Project directory shared as the agent's /workspace, when the cell has a
    /// workspace (default: the current directory). Remembered by the instance.
    #[arg(long, value_name = "DIR")]
    pub(crate) workspace: Option<PathBuf>,

    /// CPU acceleration: auto (KVM, else TCG with a warning), kvm, tcg. Linux only.
    #[arg(long, value_name = "MODE", default_value = "auto", env = "CELL_ACCEL")]
    pub(crate) accel: String,

    /// Boot prebuilt VM specs from DIR (firewall.json, agent.json) instead of building
    /// the flake: for images built elsewhere, and for the boot tests.
    #[arg(long, value_name = "DIR")]
    pub(crate) specs: Option<PathBuf>,

    /// Hypervisor binary to use instead of qemu-system-* / vfkit from PATH.
    #[arg(long, value_name = "PATH", env = "CELL_HYPERVISOR")]
    pub(crate) hypervisor: Option<PathBuf>,

    /// How long to wait for the VMs to answer over SSH.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub(crate) boot_timeout: Duration,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Harness {
    Pi,
    Claude,
    Codex,
    Opencode,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Kind {
    Https,
    Tcp,
}

#[derive(Subcommand, Clone, Copy)]
pub(crate) enum SecretsAction {
    /// Read every declared secret from its source again and push the values.
    Reload,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Boot both VMs and return (no shell); `cell` alone also opens a shell.
    #[command(
        after_help = "Boots the firewall VM, then the agent VM, and waits until both answer over SSH.\nA running instance is left as it is; a crashed one is cleaned up and restarted."
    )]
    Start {
        #[command(flatten)]
        up: UpArgs,
        /// Return once the processes run, without waiting for SSH.
        #[arg(long)]
        no_wait: bool,
    },
    /// Open a shell in the agent VM (another one if one is open).
    Shell,
    /// Run a command in the agent VM; its exit status is cell's.
    #[command(after_help = "Example: cell run -- git status")]
    Run {
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true,
            value_name = "CMD"
        )]
        cmd: Vec<String>,
    },
    /// Start a coding agent harness in the agent VM (default: the first the cell installs).
    Agent {
        harness: Option<Harness>,
        /// Arguments passed to the harness.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Allow a host now, without a rebuild (the live overlay).
    #[command(after_help = "\
Examples:
  cell allow https pypi.org
  cell allow https api.github.com --method GET --path '/repos/**'
  cell allow tcp db.internal.example:5432 --private-upstream
  cell allow --edit          edit the overlay in $EDITOR (validated before it is used)

In force within a second; the reply lists what changed. An invalid change is refused
and the overlay stays as it was. To make an entry permanent, add it to the Nix
configuration (`cell.policy`) and run `cell provision`.")]
    Allow(AllowArgs),
    /// Take back an allowance, or deny a host the Nix configuration allows.
    #[command(
        after_help = "Removes the overlay's entries for HOST; if the Nix configuration still allows it,\nadds a deny entry (deny wins). `cell allow` lifts it again."
    )]
    Deny {
        /// `api.example.com` or `*.example.com`.
        host: String,
    },
    /// Print the effective policy (Nix baseline + overlay) and where each entry came from.
    Policy {
        /// The overlay document as JSON instead.
        #[arg(long)]
        overlay_json: bool,
    },
    /// Recent connections the firewall refused, each with the command that would allow it.
    Blocked {
        /// Keep printing new denials as they happen.
        #[arg(long, short)]
        follow: bool,
        /// How many to show.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: usize,
    },
    /// The secrets the firewall puts into requests: loaded or not, last used. Never a value.
    #[command(after_help = "\
Each secret is declared in the Nix configuration (cell.secrets.<name>: its hosts, where in a
request it may go, and its source on this machine: keychain, command, env or file). The agent
VM holds only the placeholder `cell-placeholder-<name>`; the firewall swaps in the value, for
those hosts only. `cell` reads the sources when the cell starts and pushes the values to the
firewall daemon's memory (never to a disk, a command line or a log).

  cell secrets           the table
  cell secrets reload    read every source again and push the values (after you rotate a key,
                         or when one could not be read at start)
  cell secrets --json    the firewall's answer as JSON

See docs/secrets.md.")]
    Secrets {
        #[command(subcommand)]
        action: Option<SecretsAction>,
        /// Print the firewall's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What the agent told its model: the exchanges the firewall recorded, decoded.
    #[command(after_help = "\
Shows, per exchange: time, provider, model, status, latency and time to first token, stop
reason, token usage (input, output, cache read/write), the system prompt (folded), what the
agent sent, tool calls with their arguments, and the model's text. Anthropic Messages, OpenAI
Chat Completions and Responses, and AWS Bedrock Runtime (InvokeModel and Converse, their
event streams too) are decoded (JSON and streaming); other hosts are shown generically.

Recorded are the https hosts whose policy entry has `spy = true`, when the firewall keeps a
spy store (cell.firewall.spy.enable): secret values replaced by their placeholders, header
values only for a safe list, bodies capped. See docs/spy.md.

Examples:
  cell spy                    the last 20 exchanges
  cell spy -f                 and follow new ones
  cell spy --json -n 100      one JSON object per exchange
  cell spy --raw -n 1         the last exchange as recorded (sanitized)
  cell spy --file spy.jsonl   a store written by `cell jail --spy FILE`
  cell spy --tui              browse them (/ search, m and t filter by model or tool, q quits)
  cell spy --file spy.jsonl --html run.html
                              that run as a report to open in any browser (no network, no script)")]
    Spy(SpyArgs),
    /// Print the agent VM's SSH public key (add it to a git host as a deploy key).
    Pubkey,
    /// Show the instance's VMs, how to reach them, and whether the firewall's daemon answers.
    #[command(
        after_help = "When the firewall VM runs, `cell status` asks its cell-proxy over SSH what it has in force.\nExit status 1 when cell-proxy does not answer: the agent's egress is then stopped (its\nrules stay in force: fail closed), and the line says how to restart the cell."
    )]
    Status,
    /// Power both VMs off (disks and overlay are kept).
    Stop {
        /// How long the VMs get to shut down cleanly before they are terminated.
        #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Stop the VMs and delete the instance: disks, keys, overlay, logs.
    Destroy {
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
    /// Rebuild after editing the Nix configuration and restart the VMs with it.
    #[command(
        after_help = "Builds first: if the build fails, the running cell keeps running as it was.\nThe overlay (`cell allow`) is kept and put back in force after the restart."
    )]
    Provision {
        #[command(flatten)]
        up: UpArgs,
    },
    /// Check this machine (KVM or Hypervisor.framework, qemu/vfkit, nix and flakes, disk, stale state).
    Doctor,
    /// Print shell completions.
    #[command(
        after_help = "bash: cell completions bash > ~/.local/share/bash-completion/completions/cell\nzsh:  cell completions zsh > \"${fpath[1]}/_cell\"\nfish: cell completions fish > ~/.config/fish/completions/cell.fish"
    )]
    Completions { shell: clap_complete::Shell },
    /// Run a command behind the cell firewall in network namespaces (Linux; no root, no VM).
    Jail(Box<jail::Args>),
    /// (internal) The macOS link relay between two unixgram sockets.
    #[command(hide = true)]
    Relay(relay::Args),
    /// (internal) Joins stdin/stdout to a unix socket (SSH ProxyCommand).
    #[command(hide = true)]
    Connect { path: PathBuf },
}

#[derive(clap::Args)]
pub(crate) struct AllowArgs {
    /// `https`: TLS intercepted, method and path rules apply; `tcp`: spliced as is.
    #[arg(required_unless_present = "edit")]
    pub(crate) kind: Option<Kind>,
    /// HOST for https (`api.example.com`, `*.example.com`), HOST:PORT for tcp.
    #[arg(required_unless_present = "edit")]
    pub(crate) target: Option<String>,
    /// Allowed HTTP method (https; repeatable; default any).
    #[arg(long = "method", value_name = "METHOD")]
    pub(crate) methods: Vec<String>,
    /// Allowed path pattern (https; repeatable; `*` one segment, `**` any; default any).
    #[arg(long = "path", value_name = "PATTERN")]
    pub(crate) paths: Vec<String>,
    /// Port for https (default 443).
    #[arg(long)]
    pub(crate) port: Option<u16>,
    /// Relay TLS untouched after checking the SNI (no interception, no method/path rules).
    #[arg(long)]
    pub(crate) passthrough: bool,
    /// Let the host resolve to a private or shared address (RFC 1918, 100.64/10, ULA):
    /// a service on a corporate network. Loopback, link-local, the firewall and the
    /// agent link stay refused whatever this says.
    #[arg(long)]
    pub(crate) private_upstream: bool,
    /// Open the overlay in $EDITOR instead.
    #[arg(long, conflicts_with_all = ["kind", "target"])]
    pub(crate) edit: bool,
}

#[derive(clap::Args)]
pub(crate) struct SpyArgs {
    /// Read this spy store file instead of the running cell's.
    #[arg(long, value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
    /// How many exchanges to show, the most recent [default: 20; with --tui or --html:
    /// all the store holds, up to 10000].
    #[arg(long, short = 'n', value_name = "N")]
    pub(crate) lines: Option<usize>,
    /// Keep printing new exchanges as they happen (with --tui: start following, the
    /// newest selected).
    #[arg(long, short)]
    pub(crate) follow: bool,
    /// One JSON object per exchange (the decoded summary).
    #[arg(long, conflicts_with = "raw")]
    pub(crate) json: bool,
    /// The exchanges as recorded (bodies included; already sanitized).
    #[arg(long)]
    pub(crate) raw: bool,
    /// Browse the exchanges in the terminal: the list, the selected one in detail
    /// (system prompt, what the agent sent, tool results, the model's text, tool calls
    /// with their arguments), `/` to search, `m` and `t` to filter by model or tool, `f`
    /// to follow the store as it grows, `q` to quit. New exchanges appear as they are
    /// recorded.
    #[arg(long, conflicts_with_all = ["json", "raw"])]
    pub(crate) tui: bool,
    /// Write a report of the exchanges to FILE, one self-contained HTML page: totals,
    /// a chart of tokens and latency over time, the models and tools used, and every
    /// exchange to expand. It loads nothing and runs no script, so it opens in any
    /// browser without a network and is safe to share (bodies are escaped).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["follow", "tui", "json", "raw"])]
    pub(crate) html: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn arguments_parse_as_documented() {
        let p = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("cell").chain(args.iter().copied()))
        };
        assert!(
            p(&[]).unwrap().command.is_none(),
            "`cell` alone is up + shell"
        );
        assert_eq!(p(&["-i", "web", "status"]).unwrap().instance, "web");
        assert!(p(&["--instance", "Bad/Name", "status"]).is_err());
        match p(&["run", "--", "ls", "-la"]).unwrap().command {
            Some(Command::Run { cmd }) => assert_eq!(cmd, ["ls", "-la"]),
            _ => panic!("run"),
        }
        match p(&[
            "allow",
            "https",
            "api.example.com",
            "--method",
            "GET",
            "--path",
            "/v1/**",
        ])
        .unwrap()
        .command
        {
            Some(Command::Allow(AllowArgs {
                methods,
                paths,
                target,
                ..
            })) => {
                assert_eq!(methods, ["GET"]);
                assert_eq!(paths, ["/v1/**"]);
                assert_eq!(target.as_deref(), Some("api.example.com"));
            }
            _ => panic!("allow"),
        }
        assert!(p(&["allow", "--edit"]).is_ok());
        assert!(
            p(&["allow"]).is_err(),
            "allow needs a kind and target or --edit"
        );
        assert!(p(&["allow", "--edit", "https", "x"]).is_err());
        assert!(p(&["agent", "claude", "--", "--resume"]).is_ok());
        assert!(p(&["agent", "gpt"]).is_err());
        assert!(p(&["completions", "zsh"]).is_ok());
        assert!(p(&["start", "--specs", "/tmp/x", "--no-wait", "--accel", "tcg"]).is_ok());
        assert!(p(&["destroy", "--yes"]).is_ok());
    }
}
