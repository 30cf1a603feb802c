//! The host side of secrets: every declared secret is read from its source
//! on the host ([`crate::sources`]) and its value handed to the firewall
//! daemon's memory over the control channel. Nothing here writes a value to
//! a file, an argument list, a log or an error message (docs/secrets.md).
//!
//! Two channels reach the daemon's control socket:
//! - the VM: SSH to the firewall, then `cell-secrets-load` (values on its
//!   stdin, handed to `cell-proxy --load-secrets -`) and
//!   `cell-secrets-status`, both installed by the firewall module;
//! - `cell jail`: the socket itself, in the run directory.
//!
//! The document (names, scopes, sources; never a value) comes from the VM
//! set the flake built (`secrets.json` beside `policy.json`), or, for the
//! jail, from its flags.

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use cell_policy::secrets::{SecretsDocument, load_line};
use serde_json::Value as Json;

use crate::remote::Ssh;
use crate::sources;

/// The longest answer read from the daemon (a status of many secrets).
const MAX_REPLY: u64 = 1 << 20;

/// The secrets document of a VM set: `secrets.json` in `dir`, or none
/// declared when the set has no such file.
pub fn document_in(dir: &Path) -> anyhow::Result<SecretsDocument> {
    let path = dir.join("secrets.json");
    if !path.exists() {
        return Ok(SecretsDocument::default());
    }
    SecretsDocument::load(&path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Where the firewall daemon's control socket is.
pub enum Channel<'a> {
    /// Over SSH to the firewall VM.
    Vm(&'a Ssh),
    /// The socket itself (`cell jail`).
    Socket(&'a Path),
}

fn parse_reply(what: &str, text: &[u8]) -> anyhow::Result<Json> {
    let line = text
        .split(|b| *b == b'\n')
        .find(|l| l.starts_with(b"{"))
        .with_context(|| {
            format!(
                "{what}: no answer from the firewall daemon ({})",
                String::from_utf8_lossy(text).trim()
            )
        })?;
    serde_json::from_slice(line).with_context(|| format!("{what}: the daemon's answer is not JSON"))
}

fn ask_socket(path: &Path, line: &[u8]) -> anyhow::Result<Json> {
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("connecting to the control socket {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(line)?;
    // One answer line per request; the daemon keeps the connection open.
    let mut reply = Vec::new();
    std::io::BufReader::new(s.take(MAX_REPLY))
        .read_until(b'\n', &mut reply)
        .context("reading the control socket's answer")?;
    parse_reply("the control socket", &reply)
}

impl Channel<'_> {
    /// The daemon's view: each declared secret, loaded or not (never a value).
    pub fn status(&self) -> anyhow::Result<Json> {
        match self {
            Channel::Socket(p) => ask_socket(p, b"{\"op\":\"secrets\"}\n"),
            Channel::Vm(ssh) => {
                let out = ssh
                    .firewall("cell-secrets-status")
                    .stdin(std::process::Stdio::null())
                    .output()
                    .context("running ssh")?;
                if !out.status.success() {
                    bail!(
                        "cell-secrets-status failed on the firewall (is the cell running? `cell status`): {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                parse_reply("cell-secrets-status", &out.stdout)
            }
        }
    }

    /// Hands `values` to the daemon's memory; its answer says which were
    /// loaded and which refused.
    fn load(&self, values: &[(&str, Option<&str>)]) -> anyhow::Result<Json> {
        match self {
            Channel::Socket(p) => ask_socket(p, &load_line(values, true)),
            Channel::Vm(ssh) => {
                let mut child = ssh
                    .firewall("cell-secrets-load")
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .context("running ssh")?;
                {
                    let mut stdin = child.stdin.take().context("ssh stdin")?;
                    stdin.write_all(&load_line(values, false))?;
                }
                let out = child.wait_with_output()?;
                // A refusal exits non-zero but still answers on stdout.
                parse_reply("cell-secrets-load", &out.stdout).map_err(|e| {
                    e.context(format!(
                        "on the firewall: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                })
            }
        }
    }
}

/// What a push did, for the caller to print.
#[derive(Debug, Default, PartialEq)]
pub struct Pushed {
    pub loaded: Vec<String>,
    /// Secret and why (from the source, or the daemon's refusal).
    pub failed: Vec<(String, String)>,
}

/// Reads the secrets `only` names (all when `None`) from their sources and
/// pushes the values that could be read. One that cannot be read is left
/// as the daemon has it (unloaded after a boot), and said why.
pub fn push(
    doc: &SecretsDocument,
    only: Option<&[String]>,
    channel: &Channel,
) -> anyhow::Result<Pushed> {
    let mut pushed = Pushed::default();
    let mut read = Vec::new();
    for decl in &doc.secrets {
        if only.is_some_and(|o| !o.contains(&decl.name)) {
            continue;
        }
        match sources::read(decl) {
            Ok(v) => read.push((decl.name.as_str(), v)),
            Err(e) => pushed
                .failed
                .push((decl.name.clone(), format!("{}", e.problem))),
        }
    }
    let loaded = load(&read, channel)?;
    pushed.loaded = loaded.loaded;
    pushed.failed.extend(loaded.failed);
    Ok(pushed)
}

/// Pushes values already read; the answer says which the daemon refused.
pub fn load(read: &[(&str, sources::Value)], channel: &Channel) -> anyhow::Result<Pushed> {
    let mut pushed = Pushed::default();
    if read.is_empty() {
        return Ok(pushed);
    }
    let values: Vec<(&str, Option<&str>)> =
        read.iter().map(|(n, v)| (*n, Some(v.expose()))).collect();
    let reply = channel.load(&values)?;
    for n in reply["loaded"].as_array().into_iter().flatten() {
        pushed.loaded.extend(n.as_str().map(str::to_string));
    }
    for r in reply["refused"].as_array().into_iter().flatten() {
        pushed.failed.push((
            r["name"].as_str().unwrap_or("?").to_string(),
            format!(
                "the firewall refused it: {}",
                r["error"].as_str().unwrap_or("no reason given")
            ),
        ));
    }
    if reply.get("ok").is_none() && reply.get("loaded").is_none() {
        bail!("the firewall daemon did not load the secrets: {reply}");
    }
    Ok(pushed)
}

/// Prints what a push did to stderr: one line per secret that failed, with
/// its source's fix, and that the cell goes on without it.
pub fn report(doc: &SecretsDocument, pushed: &Pushed, prefix: &str) {
    for (name, why) in &pushed.failed {
        let source = doc
            .secrets
            .iter()
            .find(|d| &d.name == name)
            .map(|d| format!(" ({})", sources::describe(&d.source)))
            .unwrap_or_default();
        eprintln!(
            "{prefix}: secret `{name}`{source} is not loaded: {why}\n{prefix}: requests that need it get a 503 until `cell secrets reload` loads it"
        );
    }
    if !pushed.loaded.is_empty() {
        eprintln!(
            "{prefix}: secrets loaded into the firewall: {}",
            pushed.loaded.join(", ")
        );
    }
}

/// The declared secrets the daemon does not hold (after a firewall restart,
/// or a source that failed before): pushed again, so the agent is never
/// used with a secret that could have been loaded. Costs one status round
/// trip when secrets are declared, nothing otherwise.
pub fn ensure_loaded(doc: &SecretsDocument, channel: &Channel, prefix: &str) {
    if doc.secrets.is_empty() {
        return;
    }
    let missing = match channel.status() {
        Ok(s) => unloaded(&s),
        Err(e) => {
            eprintln!("{prefix}: could not ask the firewall which secrets it holds: {e:#}");
            return;
        }
    };
    if missing.is_empty() {
        return;
    }
    match push(doc, Some(&missing), channel) {
        Ok(p) => report(doc, &p, prefix),
        Err(e) => eprintln!("{prefix}: pushing the secrets failed: {e:#}"),
    }
}

fn unloaded(status: &Json) -> Vec<String> {
    status["secrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["loaded"] == Json::Bool(false))
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

fn ago(then: u64, now: u64) -> String {
    if then == 0 {
        return "never".into();
    }
    let d = now.saturating_sub(then);
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

/// `cell secrets`: the daemon's status as a table. Never a value.
pub fn render(status: &Json, now: SystemTime) -> String {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let list = status["secrets"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no secrets are declared (cell.secrets in the Nix configuration; docs/secrets.md)\n"
            .into();
    }
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|s| {
            let text = |k: &str| s[k].as_str().unwrap_or("").to_string();
            let hosts: Vec<&str> = s["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Json::as_str)
                .collect();
            let kind = text("kind");
            [
                text("name"),
                if kind == "aws" {
                    format!(
                        "{} (key id {})",
                        text("placeholder"),
                        text("accessKeyIdPlaceholder")
                    )
                } else {
                    text("placeholder")
                },
                hosts.join(","),
                text("source"),
                if s["loaded"] == Json::Bool(true) {
                    "yes".into()
                } else {
                    "NO".into()
                },
                ago(s["lastUsed"].as_u64().unwrap_or(0), now),
                s["uses"].as_u64().unwrap_or(0).to_string(),
            ]
        })
        .collect();
    let head = [
        "NAME",
        "PLACEHOLDER",
        "SCOPE",
        "SOURCE",
        "LOADED",
        "LAST USED",
        "USES",
    ];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&head);
    for r in &rows {
        line(&r.each_ref().map(String::as_str));
    }
    if rows.iter().any(|r| r[4] == "NO") {
        out.push_str("not loaded: requests that need it get a 503; `cell secrets reload` reads the sources again\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_shows_state_and_never_a_value() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let status = json!({"ok": true, "secrets": [
            {"name": "anthropic", "placeholder": "cell-placeholder-anthropic", "kind": "token",
             "hosts": ["api.anthropic.com"], "source": "keychain", "loaded": true,
             "lastUsed": 9_880, "uses": 3},
            {"name": "bedrock", "placeholder": "cell-placeholder-bedrock",
             "accessKeyIdPlaceholder": "cell-placeholder-bedrock.akid", "kind": "aws",
             "hosts": ["bedrock-runtime.us-east-1.amazonaws.com", "*.example.com"],
             "source": "command", "loaded": false, "lastUsed": null, "uses": 0},
        ]});
        let t = render(&status, now);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("NAME") && lines[0].ends_with("USES"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("anthropic")
                && lines[1].contains("api.anthropic.com")
                && lines[1].contains("keychain")
                && lines[1].contains("yes")
                && lines[1].contains("2m ago")
                && lines[1].ends_with('3'),
            "{t}"
        );
        assert!(
            lines[2].contains("(key id cell-placeholder-bedrock.akid)")
                && lines[2].contains("bedrock-runtime.us-east-1.amazonaws.com,*.example.com")
                && lines[2].contains("NO")
                && lines[2].contains("never"),
            "{t}"
        );
        assert!(t.contains("`cell secrets reload`"), "{t}");
        // Columns line up: every row's SCOPE starts where the header's does.
        let col = lines[0].find("SCOPE").unwrap();
        assert_eq!(lines[1].find("api.anthropic.com"), Some(col), "{t}");
        assert!(render(&json!({"ok": true, "secrets": []}), now).contains("no secrets"));
    }

    #[test]
    fn unloaded_names_only_the_unloaded() {
        let s = json!({"secrets": [
            {"name": "a", "loaded": true}, {"name": "b", "loaded": false}, {"name": "c", "loaded": false}
        ]});
        assert_eq!(unloaded(&s), ["b", "c"]);
    }

    #[test]
    fn a_vm_set_without_secrets_json_declares_none() {
        let d = tempfile::tempdir().unwrap();
        assert!(document_in(d.path()).unwrap().secrets.is_empty());
        std::fs::write(
            d.path().join("secrets.json"),
            r#"{"version": 2, "secrets": []}"#,
        )
        .unwrap();
        let e = document_in(d.path()).unwrap_err().to_string();
        assert!(e.contains("version"), "{e}");
    }
}
