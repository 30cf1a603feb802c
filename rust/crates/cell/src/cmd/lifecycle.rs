//! `cell status`, `cell stop`, `cell destroy`, `cell doctor`.

use std::io::{BufRead, IsTerminal};
use std::time::Duration;

use anyhow::{Context, bail};

use super::{existing, layout, root, ssh_for};
use crate::state::Meta;
use crate::{backend, doctor, instance};

/// The instance's VMs, and whether the firewall's daemon answers (exit 1
/// when the firewall runs but cell-proxy does not answer).
pub(crate) fn status(name: &str) -> anyhow::Result<u8> {
    let (l, meta) = existing(name)?;
    print!("{}", instance::status(&l, &meta));
    if firewall_running(&l) {
        let d = instance::daemon(&ssh_for(&l, &meta)?);
        print!("{}", instance::render_daemon(&d, name));
        if matches!(d, instance::Daemon::Down(_)) {
            return Ok(1);
        }
    }
    Ok(0)
}

fn firewall_running(l: &crate::state::Layout) -> bool {
    instance::running(l)
        .iter()
        .any(|(r, rec)| *r == "firewall" && matches!(rec, crate::supervise::Recorded::Running(_)))
}

pub(crate) fn stop(name: &str, timeout: Duration) -> anyhow::Result<u8> {
    let (l, meta) = existing(name)?;
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

pub(crate) fn doctor() -> anyhow::Result<u8> {
    let (text, ok) = doctor::report(&root()?);
    print!("{text}");
    Ok(if ok { 0 } else { 1 })
}

pub(crate) fn destroy(name: &str, yes: bool) -> anyhow::Result<u8> {
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
