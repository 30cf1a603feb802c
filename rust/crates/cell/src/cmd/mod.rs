//! The commands: one module each, called from `run` with what clap parsed.
//! Shared here: how a command finds its instance and reaches its VMs.

mod blocked;
mod lifecycle;
mod policy;
mod secrets;
mod session;
mod spy;
mod up;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::cli::{Cli, Command};
use crate::remote::Ssh;
use crate::state::{self, Layout, Meta};
use crate::{instance, jail, relay, remote, supervise};

pub(crate) use policy::{push_overlay, read_overlay};

/// Runs what the command line asks for; the exit status is the result.
pub(crate) fn run(cli: Cli) -> anyhow::Result<u8> {
    let name = cli.instance.clone();
    match cli.command {
        None => up::up(&name, &cli.up, up::Then::Shell),
        Some(Command::Start { up: args, no_wait }) => up::up(
            &name,
            &args,
            if no_wait {
                up::Then::NoWait
            } else {
                up::Then::Return
            },
        ),
        Some(Command::Provision { up: args }) => up::up(&name, &args, up::Then::Reprovision),
        Some(Command::Shell) => session::shell(&name),
        Some(Command::Run { cmd }) => session::run(&name, &cmd),
        Some(Command::Agent { harness, args }) => session::agent(&name, harness, &args),
        Some(Command::Pubkey) => session::pubkey(&name),
        Some(Command::Secrets { action, json }) => secrets::secrets(&name, action, json),
        Some(Command::Allow(args)) => policy::allow(&name, args),
        Some(Command::Deny { host }) => policy::deny(&name, host),
        Some(Command::Policy { overlay_json }) => policy::show(&name, overlay_json),
        Some(Command::Blocked { follow, lines }) => blocked::blocked(&name, follow, lines),
        Some(Command::Spy(args)) => spy::spy(&name, args),
        Some(Command::Status) => lifecycle::status(&name),
        Some(Command::Stop { timeout }) => lifecycle::stop(&name, timeout),
        Some(Command::Destroy { yes }) => lifecycle::destroy(&name, yes),
        Some(Command::Doctor) => lifecycle::doctor(),
        Some(Command::Completions { shell }) => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "cell", &mut std::io::stdout());
            Ok(0)
        }
        Some(Command::Jail(args)) => match jail::run(*args) {
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

pub(crate) fn root() -> anyhow::Result<PathBuf> {
    state::instances_root()
}

pub(crate) fn layout(name: &str) -> anyhow::Result<Layout> {
    Ok(Layout::new(&root()?, name))
}

pub(crate) fn host_system() -> String {
    let os = if cfg!(target_os = "macos") {
        "darwin"
    } else {
        "linux"
    };
    format!("{}-{os}", std::env::consts::ARCH)
}

pub(crate) fn existing(name: &str) -> anyhow::Result<(Layout, Meta)> {
    let l = layout(name)?;
    let meta = Meta::load(&l)?;
    Ok((l, meta))
}

pub(crate) fn ssh_for(l: &Layout, meta: &Meta) -> anyhow::Result<Ssh> {
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
pub(crate) fn secrets_document(
    meta: &Meta,
) -> anyhow::Result<cell_policy::secrets::SecretsDocument> {
    let dir = Path::new(&meta.firewall_spec)
        .parent()
        .context("the instance has not been built yet; run `cell`")?;
    crate::secrets::document_in(dir)
}

/// SSH for a session in the agent, after making sure the firewall holds
/// every secret it can (it forgets them when it restarts).
pub(crate) fn agent_ssh(l: &Layout, meta: &Meta) -> anyhow::Result<Ssh> {
    let ssh = ssh_for(l, meta)?;
    match secrets_document(meta) {
        Ok(doc) => crate::secrets::ensure_loaded(&doc, &crate::secrets::Channel::Vm(&ssh), "cell"),
        Err(e) => eprintln!("cell: the secrets document: {e:#}"),
    }
    Ok(ssh)
}
