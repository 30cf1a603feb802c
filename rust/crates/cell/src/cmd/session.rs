//! `cell shell`, `cell run`, `cell agent`, `cell pubkey`: sessions in the agent VM.

use std::io::IsTerminal;
use std::os::unix::process::CommandExt;

use anyhow::bail;

use super::{agent_ssh, existing, ssh_for};
use crate::cli::Harness;
use crate::remote::shq;

pub(crate) fn shell(name: &str) -> anyhow::Result<u8> {
    let (l, meta) = existing(name)?;
    Err(agent_ssh(&l, &meta)?.agent(true, None).exec().into())
}

pub(crate) fn run(name: &str, cmd: &[String]) -> anyhow::Result<u8> {
    let (l, meta) = existing(name)?;
    let line = cmd.iter().map(|w| shq(w)).collect::<Vec<_>>().join(" ");
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    Err(agent_ssh(&l, &meta)?.agent(tty, Some(&line)).exec().into())
}

pub(crate) fn agent(name: &str, harness: Option<Harness>, args: &[String]) -> anyhow::Result<u8> {
    let (l, meta) = existing(name)?;
    Err(agent_ssh(&l, &meta)?
        .agent(true, Some(&harness_command(harness, args)))
        .exec()
        .into())
}

pub(crate) fn pubkey(name: &str) -> anyhow::Result<u8> {
    let (l, meta) = existing(name)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_commands_quote_arguments_and_explain_a_missing_harness() {
        let c = harness_command(Some(Harness::Claude), &["--model".into(), "x y".into()]);
        assert!(c.ends_with("exec claude --model 'x y'"), "{c}");
        assert!(c.contains("add it to cell.agent.harnesses"), "{c}");
        let d = harness_command(None, &[]);
        assert!(d.contains("/etc/cell/harnesses"), "{d}");
    }
}
