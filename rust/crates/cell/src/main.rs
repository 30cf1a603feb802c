//! `cell`: the host CLI. See `cell --help`.

mod backend;
mod blocked;
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

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use cell_policy::{OverlayDocument, PolicyDocument};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::instance::BootPlan;
use crate::remote::{Ssh, shq};
use crate::signals::Signals;
use crate::spec::VmSpec;
use crate::state::{Layout, Meta};

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
struct Cli {
    /// Which cell instance (each has its own VMs, disks, overlay and keys).
    #[arg(long, short = 'i', global = true, env = "CELL_INSTANCE", default_value = "default", value_parser = state::check_name)]
    instance: String,

    #[command(flatten)]
    up: UpArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Args, Clone)]
struct UpArgs {
    /// The flake holding `cellConfigurations.<system>` (default: `.` when it has a
    /// flake.nix, else cell's own). Remembered by the instance.
    #[arg(long, value_name = "REF")]
    flake: Option<String>,

    /// Project directory shared as the agent's /workspace, when the cell has a
    /// workspace (default: the current directory). Remembered by the instance.
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,

    /// CPU acceleration: auto (KVM, else TCG with a warning), kvm, tcg. Linux only.
    #[arg(long, value_name = "MODE", default_value = "auto", env = "CELL_ACCEL")]
    accel: String,

    /// Boot prebuilt VM specs from DIR (firewall.json, agent.json) instead of building
    /// the flake: for images built elsewhere, and for the boot tests.
    #[arg(long, value_name = "DIR")]
    specs: Option<PathBuf>,

    /// Hypervisor binary to use instead of qemu-system-* / vfkit from PATH.
    #[arg(long, value_name = "PATH", env = "CELL_HYPERVISOR")]
    hypervisor: Option<PathBuf>,

    /// How long to wait for the VMs to answer over SSH.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    boot_timeout: Duration,
}

#[derive(Clone, Copy, ValueEnum)]
enum Harness {
    Pi,
    Claude,
    Codex,
    Opencode,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Https,
    Tcp,
}

#[derive(Subcommand, Clone, Copy)]
enum SecretsAction {
    /// Read every declared secret from its source again and push the values.
    Reload,
}

#[derive(Subcommand)]
enum Command {
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
    Allow {
        /// `https`: TLS intercepted, method and path rules apply; `tcp`: spliced as is.
        #[arg(required_unless_present = "edit")]
        kind: Option<Kind>,
        /// HOST for https (`api.example.com`, `*.example.com`), HOST:PORT for tcp.
        #[arg(required_unless_present = "edit")]
        target: Option<String>,
        /// Allowed HTTP method (https; repeatable; default any).
        #[arg(long = "method", value_name = "METHOD")]
        methods: Vec<String>,
        /// Allowed path pattern (https; repeatable; `*` one segment, `**` any; default any).
        #[arg(long = "path", value_name = "PATTERN")]
        paths: Vec<String>,
        /// Port for https (default 443).
        #[arg(long)]
        port: Option<u16>,
        /// Relay TLS untouched after checking the SNI (no interception, no method/path rules).
        #[arg(long)]
        passthrough: bool,
        /// Let the host resolve to a private or shared address (RFC 1918, 100.64/10, ULA):
        /// a service on a corporate network. Loopback, link-local, the firewall and the
        /// agent link stay refused whatever this says.
        #[arg(long)]
        private_upstream: bool,
        /// Open the overlay in $EDITOR instead.
        #[arg(long, conflicts_with_all = ["kind", "target"])]
        edit: bool,
    },
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
agent sent, tool calls with their arguments, and the model's text. Anthropic Messages and
OpenAI Chat Completions are decoded (JSON and streaming); other hosts are shown generically.

Recorded are the https hosts whose policy entry has `spy = true`, when the firewall keeps a
spy store (cell.firewall.spy.enable): secret values replaced by their placeholders, header
values only for a safe list, bodies capped. See docs/spy.md.

Examples:
  cell spy                    the last 20 exchanges
  cell spy -f                 and follow new ones
  cell spy --json -n 100      one JSON object per exchange
  cell spy --raw -n 1         the last exchange as recorded (sanitized)
  cell spy --file spy.jsonl   a store written by `cell jail --spy FILE`")]
    Spy {
        /// Read this spy store file instead of the running cell's.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// How many exchanges to show.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: usize,
        /// Keep printing new exchanges as they happen.
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per exchange (the decoded summary).
        #[arg(long, conflicts_with = "raw")]
        json: bool,
        /// The exchanges as recorded (bodies included; already sanitized).
        #[arg(long)]
        raw: bool,
    },
    /// Print the agent VM's SSH public key (add it to a git host as a deploy key).
    Pubkey,
    /// Show the instance's VMs and how to reach them.
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
    /// Run a command behind the cell firewall, in network namespaces (Linux, root; no VM).
    Jail(jail::Args),
    /// (internal) The macOS link relay between two unixgram sockets.
    #[command(hide = true)]
    Relay(relay::Args),
    /// (internal) Joins stdin/stdout to a unix socket (SSH ProxyCommand).
    #[command(hide = true)]
    Connect { path: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cell: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> anyhow::Result<PathBuf> {
    state::instances_root()
}

fn layout(name: &str) -> anyhow::Result<Layout> {
    Ok(Layout::new(&root()?, name))
}

fn host_system() -> String {
    let os = if cfg!(target_os = "macos") {
        "darwin"
    } else {
        "linux"
    };
    format!("{}-{os}", std::env::consts::ARCH)
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let name = cli.instance.clone();
    match cli.command {
        None => up(&name, &cli.up, Then::Shell),
        Some(Command::Start { up: args, no_wait }) => up(
            &name,
            &args,
            if no_wait { Then::NoWait } else { Then::Return },
        ),
        Some(Command::Provision { up: args }) => up(&name, &args, Then::Reprovision),
        Some(Command::Shell) => {
            let (l, meta) = existing(&name)?;
            Err(agent_ssh(&l, &meta)?.agent(true, None).exec().into())
        }
        Some(Command::Run { cmd }) => {
            let (l, meta) = existing(&name)?;
            let line = cmd.iter().map(|w| shq(w)).collect::<Vec<_>>().join(" ");
            let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
            Err(agent_ssh(&l, &meta)?.agent(tty, Some(&line)).exec().into())
        }
        Some(Command::Agent { harness, args }) => {
            let (l, meta) = existing(&name)?;
            Err(agent_ssh(&l, &meta)?
                .agent(true, Some(&harness_command(harness, &args)))
                .exec()
                .into())
        }
        Some(Command::Secrets { action, json }) => {
            let (l, meta) = existing(&name)?;
            let ssh = ssh_for(&l, &meta)?;
            let channel = secrets::Channel::Vm(&ssh);
            if let Some(SecretsAction::Reload) = action {
                let doc = secrets_document(&meta)?;
                if doc.secrets.is_empty() {
                    eprintln!(
                        "cell: this cell declares no secrets (cell.secrets; docs/secrets.md)"
                    );
                    return Ok(0);
                }
                let pushed = secrets::push(&doc, None, &channel)?;
                secrets::report(&doc, &pushed, "cell");
                if !pushed.failed.is_empty() {
                    return Ok(1);
                }
            }
            let status = channel.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", secrets::render(&status, std::time::SystemTime::now()));
            }
            Ok(0)
        }
        Some(Command::Allow {
            kind,
            target,
            methods,
            paths,
            port,
            passthrough,
            private_upstream,
            edit,
        }) => {
            let change = if edit {
                Change::Edit
            } else {
                let target = target.unwrap_or_default();
                match kind {
                    Some(Kind::Tcp) => {
                        let (host, port) = target
                            .rsplit_once(':')
                            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                            .with_context(|| {
                                format!(
                                    "`{target}`: tcp needs HOST:PORT, for example github.com:22"
                                )
                            })?;
                        if !methods.is_empty() || !paths.is_empty() || passthrough {
                            bail!("--method, --path and --passthrough apply to https only");
                        }
                        Change::Tcp(host, port, private_upstream)
                    }
                    _ => Change::Https(overlay::HttpsRequest {
                        host: target,
                        port,
                        methods,
                        paths,
                        passthrough,
                        private_upstream,
                    }),
                }
            };
            change_overlay(&name, change)
        }
        Some(Command::Deny { host }) => change_overlay(&name, Change::Deny(host)),
        Some(Command::Policy { overlay_json }) => {
            let l = layout(&name)?;
            let o = read_overlay(&l)?;
            if overlay_json {
                println!("{}", serde_json::to_string_pretty(&o)?);
                return Ok(0);
            }
            let (_, meta) = existing(&name)?;
            let base = base_policy(&meta)?;
            print!(
                "{}",
                overlay::render_effective(&overlay::validate(&base, &o)?)
            );
            Ok(0)
        }
        Some(Command::Blocked { follow, lines }) => blocked_cmd(&name, follow, lines),
        Some(Command::Spy {
            file,
            lines,
            follow,
            json,
            raw,
        }) => spy_cmd(
            &name,
            file,
            lines,
            follow,
            if raw {
                SpyForm::Raw
            } else if json {
                SpyForm::Json
            } else {
                SpyForm::Text
            },
        ),
        Some(Command::Pubkey) => {
            let (l, meta) = existing(&name)?;
            let out = ssh_for(&l, &meta)?
                .agent(false, Some("cat /var/lib/cell-agent/id_ed25519.pub"))
                .output()?;
            if !out.status.success() {
                bail!(
                    "could not read the agent's key (is the cell running? `cell status`): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            print!("{}", String::from_utf8_lossy(&out.stdout));
            Ok(0)
        }
        Some(Command::Status) => {
            let (l, meta) = existing(&name)?;
            print!("{}", instance::status(&l, &meta));
            Ok(0)
        }
        Some(Command::Stop { timeout }) => {
            let (l, meta) = existing(&name)?;
            let _lock = l.lock()?;
            let said = instance::stop_all(&l, instance::backend(&meta)?.as_ref(), timeout)?;
            if said.is_empty() {
                eprintln!("cell: instance `{name}` was not running");
            }
            for line in said {
                eprintln!("cell: {line}");
            }
            Ok(0)
        }
        Some(Command::Destroy { yes }) => destroy(&name, yes),
        Some(Command::Doctor) => {
            let (text, ok) = doctor::report(&root()?);
            print!("{text}");
            Ok(if ok { 0 } else { 1 })
        }
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut Cli::command(), "cell", &mut std::io::stdout());
            Ok(0)
        }
        Some(Command::Jail(args)) => match jail::run(args) {
            Ok(code) => Ok(code),
            Err(e) => {
                eprintln!("cell jail: {e:#}");
                Ok(jail::JAIL_FAILED)
            }
        },
        Some(Command::Relay(args)) => relay::run(args).map(|()| 0),
        Some(Command::Connect { path }) => remote::connect(&path).map(|()| 0),
    }
}

fn existing(name: &str) -> anyhow::Result<(Layout, Meta)> {
    let l = layout(name)?;
    let meta = Meta::load(&l)?;
    Ok((l, meta))
}

fn ssh_for(l: &Layout, meta: &Meta) -> anyhow::Result<Ssh> {
    let running = instance::running(l)
        .iter()
        .any(|(r, rec)| *r == "firewall" && matches!(rec, supervise::Recorded::Running(_)));
    if !running {
        bail!(
            "instance `{}` is not running; `cell --instance {}` starts it",
            l.name,
            l.name
        );
    }
    let route = instance::backend(meta)?.ssh_route(&l.dir, meta.ssh_port);
    Ok(Ssh::new(l, route))
}

/// The secrets document of the VM set the instance runs.
fn secrets_document(meta: &Meta) -> anyhow::Result<cell_policy::secrets::SecretsDocument> {
    let dir = Path::new(&meta.firewall_spec)
        .parent()
        .context("the instance has not been built yet; run `cell`")?;
    secrets::document_in(dir)
}

/// SSH for a session in the agent, after making sure the firewall holds
/// every secret it can (it forgets them when it restarts).
fn agent_ssh(l: &Layout, meta: &Meta) -> anyhow::Result<Ssh> {
    let ssh = ssh_for(l, meta)?;
    match secrets_document(meta) {
        Ok(doc) => secrets::ensure_loaded(&doc, &secrets::Channel::Vm(&ssh), "cell"),
        Err(e) => eprintln!("cell: the secrets document: {e:#}"),
    }
    Ok(ssh)
}

fn harness_command(h: Option<Harness>, args: &[String]) -> String {
    let bin = match h {
        Some(Harness::Pi) => "pi",
        Some(Harness::Claude) => "claude",
        Some(Harness::Codex) => "codex",
        Some(Harness::Opencode) => "opencode",
        None => {
            // The agent module lists the installed harnesses in /etc/cell/harnesses.
            return format!(
                "h=$(head -n1 /etc/cell/harnesses 2>/dev/null); [ -n \"$h\" ] || {{ echo 'cell: this cell installs no harness; set cell.agent.harnesses' >&2; exit 127; }}; cd /workspace 2>/dev/null; exec \"$h\"{}",
                args.iter()
                    .map(|a| format!(" {}", shq(a)))
                    .collect::<String>()
            );
        }
    };
    format!(
        "cd /workspace 2>/dev/null; command -v {bin} >/dev/null || {{ echo 'cell: {bin} is not installed in this cell; add it to cell.agent.harnesses and run `cell provision`' >&2; exit 127; }}; exec {bin}{}",
        args.iter()
            .map(|a| format!(" {}", shq(a)))
            .collect::<String>()
    )
}

enum Then {
    Shell,
    Return,
    NoWait,
    /// Build even when running; only if the build succeeds, restart on it.
    Reprovision,
}

fn default_flake() -> String {
    if Path::new("flake.nix").is_file() {
        ".".into()
    } else {
        option_env!("CELL_DEFAULT_FLAKE")
            .unwrap_or("github:cell-sandbox/cell")
            .into()
    }
}

fn load_specs(dir: &Path) -> anyhow::Result<(VmSpec, VmSpec)> {
    if !dir.join("firewall.json").is_file() || !dir.join("agent.json").is_file() {
        bail!(
            "{} holds no firewall.json and agent.json: it is not a cell's VM set (`cellConfigurations.<system>` must come from cell.lib.mkCell; its `vms` output is what cell boots)",
            dir.display()
        );
    }
    let fw = VmSpec::load(&dir.join("firewall.json"))?;
    let ag = VmSpec::load(&dir.join("agent.json"))?;
    if fw.role != spec::Role::Firewall || ag.role != spec::Role::Agent {
        bail!(
            "{}: firewall.json and agent.json have their roles swapped",
            dir.display()
        );
    }
    Ok((fw, ag))
}

fn up(name: &str, args: &UpArgs, then: Then) -> anyhow::Result<u8> {
    let signals = Signals::install()?;
    let l = layout(name)?;
    let lock = l.lock()?;
    let mut meta = match Meta::load(&l) {
        Ok(m) => m,
        Err(_) if !l.exists() => {
            eprintln!("cell: creating instance `{name}` in {}", l.dir.display());
            Meta {
                version: 1,
                backend: backend::for_host().name().into(),
                flake: String::new(),
                attr: format!("cellConfigurations.{}.vms", host_system()),
                ssh_port: instance::pick_port(2222)?,
                firewall_spec: String::new(),
                agent_spec: String::new(),
                workspace: None,
            }
        }
        Err(e) => return Err(e),
    };
    if let Some(f) = &args.flake {
        meta.flake = flake_ref(f);
    } else if meta.flake.is_empty() {
        meta.flake = flake_ref(&default_flake());
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    if let Some(w) = &args.workspace {
        let w = fs_canon(w)?;
        if let Some(why) = unsafe_workspace(&w, home.as_deref()) {
            bail!(
                "--workspace {}: {why}; share a project directory instead",
                w.display()
            );
        }
        meta.workspace = Some(w);
    } else if meta.workspace.is_none() {
        let cwd = std::env::current_dir().ok();
        meta.workspace = match cwd {
            Some(c) if unsafe_workspace(&c, home.as_deref()).is_none() => Some(c),
            Some(c) => {
                eprintln!(
                    "cell: not sharing {} as the workspace (it holds your home directory); run cell from a project directory or pass --workspace DIR",
                    c.display()
                );
                None
            }
            None => None,
        };
    }
    let spec_dir = match &args.specs {
        Some(d) => d.clone(),
        None => {
            let already = !meta.firewall_spec.is_empty()
                && instance::running(&l)
                    .iter()
                    .all(|(_, r)| matches!(r, supervise::Recorded::Running(_)))
                && !instance::running(&l).is_empty();
            if already && !matches!(then, Then::Reprovision) {
                PathBuf::from(&meta.firewall_spec)
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default()
            } else {
                let flake = meta.flake.clone();
                let outs = nixbuild::build(&format!("{flake}#{}", meta.attr), &[])
                    .with_context(|| format!("building the VMs from {flake}#{}; a flake made by `nix flake init -t github:cell-sandbox/cell` has it", meta.attr))?;
                outs.into_iter()
                    .next()
                    .context("nix build printed no output path")?
            }
        }
    };
    let (fw, ag) = load_specs(&spec_dir)?;
    if matches!(then, Then::Reprovision) && !instance::running(&l).is_empty() {
        // The new images built and load: now the old VMs make way.
        eprintln!("cell: restarting `{name}` on the new build");
        for line in instance::stop_all(
            &l,
            instance::backend(&meta)?.as_ref(),
            Duration::from_secs(20),
        )? {
            eprintln!("cell: {line}");
        }
    }
    meta.firewall_spec = spec_dir.join("firewall.json").to_string_lossy().into();
    meta.agent_spec = spec_dir.join("agent.json").to_string_lossy().into();
    meta.save(&l)?;
    let qemu = args.hypervisor.clone().unwrap_or_else(|| {
        PathBuf::from(if fw.system.starts_with("aarch64") {
            "qemu-system-aarch64"
        } else {
            "qemu-system-x86_64"
        })
    });
    let (accel, warning) = doctor::choose_accel(
        &args.accel,
        &qemu,
        Some((fw.kernel.as_path(), fw.system.as_str())),
    )?;
    if let Some(w) = warning {
        eprintln!("{w}");
    }
    let workspace = meta.workspace.clone();
    let plan = BootPlan {
        firewall: &fw,
        agent: &ag,
        accel,
        workspace: workspace.as_deref().filter(|_| !ag.shares.is_empty()),
        hypervisor: args.hypervisor.as_deref(),
    };
    let booted = instance::boot(&l, &mut meta, &plan, &signals)?;
    if matches!(booted, instance::Booted::AlreadyRunning) {
        eprintln!("cell: instance `{name}` is running");
    }
    if matches!(then, Then::NoWait) {
        return Ok(0);
    }
    // Not ssh_for: a VM that died during boot is reported by wait_for with its log.
    let ssh = Ssh::new(
        &l,
        instance::backend(&meta)?.ssh_route(&l.dir, meta.ssh_port),
    );
    let wait = || -> anyhow::Result<()> {
        instance::wait_for("the firewall VM", args.boot_timeout, &signals, &l, || {
            instance::firewall_ready(&ssh)
        })?;
        instance::wait_for("the agent VM", args.boot_timeout, &signals, &l, || {
            instance::agent_ready(&ssh)
        })
    };
    if let Err(e) = wait() {
        if signals.check().is_err() {
            instance::stop_all(&l, instance::backend(&meta)?.as_ref(), Duration::ZERO)?;
            bail!("interrupted during boot: both VMs were stopped again; nothing is left running");
        }
        return Err(e);
    }
    // The overlay outlives the VMs: put it back in force after a boot.
    if l.overlay().exists() && matches!(booted, instance::Booted::Started) {
        push_overlay(&l, &meta, &read_overlay(&l)?)?;
    }
    // The secrets live in the firewall daemon's memory only: after a boot it
    // holds none. A source that cannot be read is said, and the cell starts
    // without that secret.
    let doc = secrets::document_in(&spec_dir)?;
    if !doc.secrets.is_empty() {
        let channel = secrets::Channel::Vm(&ssh);
        if matches!(booted, instance::Booted::Started) {
            match secrets::push(&doc, None, &channel) {
                Ok(p) => secrets::report(&doc, &p, "cell"),
                Err(e) => eprintln!(
                    "cell: pushing the secrets to the firewall failed: {e:#}\ncell: `cell secrets reload` tries again"
                ),
            }
        } else {
            secrets::ensure_loaded(&doc, &channel, "cell");
        }
    }
    drop(lock);
    match then {
        Then::Shell => {
            let mut shell = ssh.agent(true, None);
            signals::unblocked(&mut shell);
            Err(shell.exec().into())
        }
        _ => Ok(0),
    }
}

/// Why `dir` must not become the agent's workspace: the agent would see
/// (and could change) the user's whole home, keys and all.
fn unsafe_workspace(dir: &Path, home: Option<&Path>) -> Option<&'static str> {
    if dir == Path::new("/") {
        return Some("that is the whole filesystem");
    }
    match home {
        Some(h) if h.starts_with(dir) => Some("that is (or holds) your home directory"),
        _ => None,
    }
}

/// A local flake directory is remembered by its absolute path.
fn flake_ref(f: &str) -> String {
    match std::fs::canonicalize(f) {
        Ok(p) if p.join("flake.nix").is_file() => p.to_string_lossy().into_owned(),
        _ => f.to_string(),
    }
}

fn fs_canon(p: &Path) -> anyhow::Result<PathBuf> {
    std::fs::canonicalize(p).with_context(|| format!("--workspace {}", p.display()))
}

fn read_overlay(l: &Layout) -> anyhow::Result<OverlayDocument> {
    match std::fs::read_to_string(l.overlay()) {
        Ok(text) => Ok(OverlayDocument::from_json(
            &l.overlay().display().to_string(),
            &text,
        )?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(OverlayDocument::default()),
        Err(e) => Err(e).context("reading the overlay"),
    }
}

/// The Nix baseline policy the firewall runs, as installed in the firewall spec's closure.
fn base_policy(meta: &Meta) -> anyhow::Result<PolicyDocument> {
    let dir = Path::new(&meta.firewall_spec)
        .parent()
        .context("the instance has not been built yet; run `cell`")?;
    let path = dir.join("policy.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading the baseline policy {} (`cell provision` rebuilds it)",
            path.display()
        )
    })?;
    Ok(PolicyDocument::from_json(
        &path.display().to_string(),
        &text,
    )?)
}

enum Change {
    Https(overlay::HttpsRequest),
    /// Host, port, privateUpstream.
    Tcp(String, u16, bool),
    Deny(String),
    Edit,
}

fn change_overlay(name: &str, change: Change) -> anyhow::Result<u8> {
    let (l, meta) = existing(name)?;
    let _lock = l.lock()?;
    let base = base_policy(&meta)?;
    let old = read_overlay(&l)?;
    let new = match change {
        Change::Https(req) => {
            let mut o = old.clone();
            overlay::allow_https(&mut o, &req);
            o
        }
        Change::Tcp(host, port, private_upstream) => {
            let mut o = old.clone();
            overlay::allow_tcp(&mut o, &host, port, private_upstream);
            o
        }
        Change::Deny(host) => {
            let mut o = old.clone();
            overlay::deny(&base, &mut o, &host)?;
            o
        }
        Change::Edit => edit_overlay(&l, &base, &old)?,
    };
    if let Err(e) = overlay::validate(&base, &new) {
        bail!("the change was refused; the overlay is unchanged:\n{e}");
    }
    let diff = overlay::diff(&old, &new);
    if diff.is_empty() {
        eprintln!("cell: nothing changed (the overlay already says that)");
        return Ok(0);
    }
    state::write_atomic(
        &l.overlay(),
        &(serde_json::to_string_pretty(&new)? + "\n"),
        0o600,
    )?;
    for line in &diff {
        println!("{line}");
    }
    let running = instance::running(&l)
        .iter()
        .any(|(r, rec)| *r == "firewall" && matches!(rec, supervise::Recorded::Running(_)));
    if running {
        let started = std::time::Instant::now();
        push_overlay(&l, &meta, &new)?;
        println!("in force ({} ms)", started.elapsed().as_millis());
    } else {
        println!("saved; in force when the cell starts");
    }
    Ok(0)
}

fn push_overlay(l: &Layout, meta: &Meta, o: &OverlayDocument) -> anyhow::Result<()> {
    let ssh = ssh_for(l, meta)?;
    let mut child = ssh
        .firewall("cell-overlay-install")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running ssh")?;
    child
        .stdin
        .take()
        .context("ssh stdin")?
        .write_all(serde_json::to_string(o)?.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the firewall refused the overlay (saved on the host; fix it with `cell allow --edit`): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn edit_overlay(
    l: &Layout,
    base: &PolicyDocument,
    old: &OverlayDocument,
) -> anyhow::Result<OverlayDocument> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let draft = l.path("overlay.edit.json");
    let mut text = serde_json::to_string_pretty(old)? + "\n";
    loop {
        state::write_atomic(&draft, &text, 0o600)?;
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&draft)
            .status()
            .with_context(|| format!("starting the editor `{editor}` (set $EDITOR)"))?;
        if !status.success() {
            let _ = std::fs::remove_file(&draft);
            bail!("the editor exited with {status}; the overlay is unchanged");
        }
        text = std::fs::read_to_string(&draft)?;
        let parsed = OverlayDocument::from_json("overlay", &text)
            .map_err(anyhow::Error::from)
            .and_then(|o| overlay::validate(base, &o).map(|_| o));
        match parsed {
            Ok(o) => {
                let _ = std::fs::remove_file(&draft);
                return Ok(o);
            }
            Err(e) => {
                eprintln!("cell: the overlay is not valid:\n{e:#}");
                if !std::io::stdin().is_terminal() {
                    let _ = std::fs::remove_file(&draft);
                    bail!("not applied; the overlay is unchanged");
                }
                eprint!("edit again? [Y/n] ");
                let mut answer = String::new();
                std::io::stdin().lock().read_line(&mut answer)?;
                if answer.trim().eq_ignore_ascii_case("n") {
                    let _ = std::fs::remove_file(&draft);
                    bail!("not applied; the overlay is unchanged");
                }
            }
        }
    }
}

fn blocked_cmd(name: &str, follow: bool, n: usize) -> anyhow::Result<u8> {
    let (l, meta) = existing(name)?;
    let ssh = ssh_for(&l, &meta)?;
    const LOG: &str = "/var/log/cell-proxy/events.jsonl";
    let out = ssh
        .firewall(&format!("tail -n 5000 {LOG}"))
        .output()
        .context("running ssh")?;
    if !out.status.success() {
        bail!(
            "could not read the firewall's event log: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let recent = blocked::recent(&text, n);
    if recent.is_empty() && !follow {
        println!("nothing was refused recently");
    }
    for (d, count) in recent {
        println!("{}", blocked::render_counted(&d, count));
    }

    if follow {
        let mut child = ssh
            .firewall(&format!("tail -n 0 -F {LOG}"))
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("ssh stdout")?;
        for line in std::io::BufReader::new(stdout).lines() {
            if let Some(d) = blocked::parse(&line?) {
                println!("{}", blocked::render(&d));
            }
        }
    }
    Ok(0)
}

#[derive(Clone, Copy)]
enum SpyForm {
    Text,
    Json,
    Raw,
}

fn print_exchange(ex: &serde_json::Value, form: SpyForm) {
    match form {
        SpyForm::Raw => println!("{}", serde_json::to_string_pretty(ex).unwrap_or_default()),
        SpyForm::Json => println!("{}", spy::to_json(&spy::summarize(ex))),
        SpyForm::Text => {
            let width = std::env::var("COLUMNS")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(100);
            print!("{}", spy::render(&spy::summarize(ex), width));
        }
    }
}

fn spy_cmd(
    name: &str,
    file: Option<PathBuf>,
    n: usize,
    follow: bool,
    form: SpyForm,
) -> anyhow::Result<u8> {
    const STORE: &str = "/var/lib/cell-proxy/spy.jsonl";
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the spy store {}", path.display()))?;
        let list = spy::exchanges(&text, Some(n));
        if list.is_empty() && !follow {
            eprintln!(
                "cell: no exchanges in {} (hosts are recorded when their policy entry has spy = true)",
                path.display()
            );
        }
        for ex in &list {
            print_exchange(ex, form);
        }
        if follow {
            // New lines as they are appended (the store rotates by rename:
            // a shorter file means a new one, read from its start).
            let mut offset = text.len() as u64;
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if len < offset {
                    offset = 0;
                }
                if len > offset {
                    use std::io::{Read, Seek};
                    let mut f = std::fs::File::open(&path)?;
                    f.seek(std::io::SeekFrom::Start(offset))?;
                    let mut more = String::new();
                    f.read_to_string(&mut more)?;
                    // Only whole lines; the rest is read next time.
                    let whole = more.rfind('\n').map_or(0, |i| i + 1);
                    for ex in spy::exchanges(&more[..whole], None) {
                        print_exchange(&ex, form);
                    }
                    offset += whole as u64;
                }
            }
        }
        return Ok(0);
    }
    let (l, meta) = existing(name)?;
    let ssh = ssh_for(&l, &meta)?;
    let out = ssh
        .firewall(&format!("test -e {STORE} && tail -n {n} {STORE}"))
        .output()
        .context("running ssh")?;
    if !out.status.success() && !follow {
        eprintln!(
            "cell: the firewall keeps no spy store; set cell.firewall.spy.enable = true and spy = true on the provider's cell.policy.https entry, then `cell provision`"
        );
        return Ok(1);
    }
    for ex in spy::exchanges(&String::from_utf8_lossy(&out.stdout), Some(n)) {
        print_exchange(&ex, form);
    }
    if follow {
        let mut child = ssh
            .firewall(&format!("tail -n 0 -F {STORE}"))
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("ssh stdout")?;
        for line in std::io::BufReader::new(stdout).lines() {
            for ex in spy::exchanges(&line?, None) {
                print_exchange(&ex, form);
            }
        }
    }
    Ok(0)
}

fn destroy(name: &str, yes: bool) -> anyhow::Result<u8> {
    let l = layout(name)?;
    if !l.dir.exists() {
        eprintln!("cell: instance `{name}` does not exist");
        return Ok(0);
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("destroying `{name}` deletes its disks, keys and overlay; pass --yes to confirm");
        }
        eprint!(
            "Destroy instance `{name}`: stop its VMs and delete {} (disks, keys, overlay, logs)? [y/N] ",
            l.dir.display()
        );
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !answer.trim().eq_ignore_ascii_case("y") {
            eprintln!("cell: nothing was deleted");
            return Ok(1);
        }
    }
    {
        let _lock = l.lock()?;
        let backend = Meta::load(&l)
            .ok()
            .and_then(|m| instance::backend(&m).ok())
            .unwrap_or_else(backend::for_host);
        for line in instance::stop_all(&l, backend.as_ref(), Duration::from_secs(10))? {
            eprintln!("cell: {line}");
        }
        std::fs::remove_dir_all(&l.dir).with_context(|| format!("deleting {}", l.dir.display()))?;
    }
    eprintln!("cell: instance `{name}` destroyed");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Some(Command::Allow {
                methods,
                paths,
                target,
                ..
            }) => {
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

    #[test]
    fn home_and_root_are_never_shared_as_the_workspace() {
        let home = Some(Path::new("/home/u"));
        assert!(unsafe_workspace(Path::new("/"), home).is_some());
        assert!(unsafe_workspace(Path::new("/home/u"), home).is_some());
        assert!(unsafe_workspace(Path::new("/home"), home).is_some());
        assert!(unsafe_workspace(Path::new("/home/u/src/app"), home).is_none());
        assert!(unsafe_workspace(Path::new("/home/u2"), home).is_none());
        assert!(unsafe_workspace(Path::new("/srv/app"), None).is_none());
    }

    #[test]
    fn harness_commands_quote_arguments_and_explain_a_missing_harness() {
        let c = harness_command(Some(Harness::Claude), &["--model".into(), "x y".into()]);
        assert!(c.ends_with("exec claude --model 'x y'"), "{c}");
        assert!(c.contains("add it to cell.agent.harnesses"), "{c}");
        let d = harness_command(None, &[]);
        assert!(d.contains("/etc/cell/harnesses"), "{d}");
    }
}
