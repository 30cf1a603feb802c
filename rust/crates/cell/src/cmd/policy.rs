//! `cell allow`, `cell deny`, `cell policy`: the live overlay over the Nix baseline.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, bail};
use cell_policy::{OverlayDocument, PolicyDocument};

use super::{existing, layout, ssh_for};
use crate::cli::{AllowArgs, Kind};
use crate::state::{self, Layout, Meta};
use crate::{instance, overlay, supervise};

pub(crate) fn allow(name: &str, a: AllowArgs) -> anyhow::Result<u8> {
    let change = if a.edit {
        Change::Edit
    } else {
        let target = a.target.unwrap_or_default();
        match a.kind {
            Some(Kind::Tcp) => {
                let (host, port) = target
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                    .with_context(|| {
                        format!("`{target}`: tcp needs HOST:PORT, for example github.com:22")
                    })?;
                if !a.methods.is_empty() || !a.paths.is_empty() || a.passthrough {
                    bail!("--method, --path and --passthrough apply to https only");
                }
                Change::Tcp(host, port, a.private_upstream)
            }
            _ => Change::Https(overlay::HttpsRequest {
                host: target,
                port: a.port,
                methods: a.methods,
                paths: a.paths,
                passthrough: a.passthrough,
                private_upstream: a.private_upstream,
            }),
        }
    };
    change_overlay(name, change)
}

pub(crate) fn deny(name: &str, host: String) -> anyhow::Result<u8> {
    change_overlay(name, Change::Deny(host))
}

/// The effective policy, or the overlay as JSON.
pub(crate) fn show(name: &str, overlay_json: bool) -> anyhow::Result<u8> {
    let l = layout(name)?;
    let o = read_overlay(&l)?;
    if overlay_json {
        println!("{}", serde_json::to_string_pretty(&o)?);
        return Ok(0);
    }
    let (_, meta) = existing(name)?;
    let base = base_policy(&meta)?;
    print!(
        "{}",
        overlay::render_effective(&overlay::validate(&base, &o)?)
    );
    Ok(0)
}

pub(crate) fn read_overlay(l: &Layout) -> anyhow::Result<OverlayDocument> {
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

pub(crate) fn push_overlay(l: &Layout, meta: &Meta, o: &OverlayDocument) -> anyhow::Result<()> {
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
