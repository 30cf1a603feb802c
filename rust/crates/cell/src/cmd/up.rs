//! `cell`, `cell start`, `cell provision`: build the VM set, boot both VMs,
//! wait for them, and put the overlay and the secrets back in force.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use super::{host_system, layout, push_overlay, read_overlay};
use crate::cli::UpArgs;
use crate::instance::{self, BootPlan};
use crate::remote::Ssh;
use crate::signals::{self, Signals};
use crate::spec::{self, VmSpec};
use crate::state::Meta;
use crate::{backend, doctor, nixbuild, secrets, supervise};

pub(crate) enum Then {
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

pub(crate) fn up(name: &str, args: &UpArgs, then: Then) -> anyhow::Result<u8> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
