//! `cell blocked`: what the firewall refused, each with the command that would allow it.

use std::io::BufRead;

use anyhow::{Context, bail};

use super::{existing, ssh_for};

pub(crate) fn blocked(name: &str, follow: bool, n: usize) -> anyhow::Result<u8> {
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
    let recent = crate::blocked::recent(&text, n);
    if recent.is_empty() && !follow {
        println!("nothing was refused recently");
    }
    for (d, count) in recent {
        println!("{}", crate::blocked::render_counted(&d, count));
    }

    if follow {
        let mut child = ssh
            .firewall(&format!("tail -n 0 -F {LOG}"))
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("ssh stdout")?;
        for line in std::io::BufReader::new(stdout).lines() {
            if let Some(d) = crate::blocked::parse(&line?) {
                println!("{}", crate::blocked::render(&d));
            }
        }
    }
    Ok(0)
}
