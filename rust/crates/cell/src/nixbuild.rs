//! Building the VMs with Nix, with progress a person can follow.
//!
//! Runs `nix build --log-format internal-json` and turns its activity stream
//! into one status line: how long so far, how many derivations are built out
//! of how many, what is building now and in which phase. Errors are passed
//! through whole. On a terminal the line is redrawn in place; elsewhere a
//! line is printed when what is building changes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

const ACT_COPY_PATH: u64 = 100;
const ACT_FILE_TRANSFER: u64 = 101;
const ACT_BUILDS: u64 = 104;
const ACT_BUILD: u64 = 105;
const RES_SET_PHASE: u64 = 104;
const RES_PROGRESS: u64 = 105;

/// Folds Nix's activity stream into what is shown.
#[derive(Debug, Default)]
pub struct Progress {
    /// Running builds and downloads: id → (name, phase).
    running: BTreeMap<u64, (String, Option<String>)>,
    builds_id: Option<u64>,
    pub done: u64,
    pub expected: u64,
    /// Error messages, in order.
    pub errors: Vec<String>,
}

/// `/nix/store/abc…-linux-6.6.1.drv` → `linux-6.6.1`.
fn drv_name(s: &str) -> String {
    let base = s.rsplit('/').next().unwrap_or(s);
    let base = base.trim_end_matches(".drv");
    match base.split_once('-') {
        Some((hash, rest)) if hash.len() == 32 => rest.to_string(),
        _ => base.to_string(),
    }
}

impl Progress {
    /// Takes one stderr line; returns whether the display changed.
    pub fn feed(&mut self, line: &str) -> bool {
        let Some(json) = line.strip_prefix("@nix ") else {
            // Not structured: show it as an error line only if it looks like one.
            if line.starts_with("error") {
                self.errors.push(line.to_string());
            }
            return false;
        };
        let Ok(v) = serde_json::from_str::<Value>(json) else {
            return false;
        };
        let id = v.get("id").and_then(Value::as_u64).unwrap_or(0);
        let ty = v.get("type").and_then(Value::as_u64).unwrap_or(0);
        match v.get("action").and_then(Value::as_str) {
            Some("start") => match ty {
                ACT_BUILDS => {
                    self.builds_id = Some(id);
                    false
                }
                ACT_BUILD | ACT_COPY_PATH | ACT_FILE_TRANSFER => {
                    let what = v
                        .get("fields")
                        .and_then(|f| f.get(0))
                        .and_then(Value::as_str)
                        .map(drv_name)
                        .unwrap_or_else(|| {
                            v.get("text")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string()
                        });
                    let verb = if ty == ACT_BUILD { "" } else { "fetching " };
                    self.running.insert(id, (format!("{verb}{what}"), None));
                    true
                }
                _ => false,
            },
            Some("stop") => self.running.remove(&id).is_some(),
            Some("result") => match ty {
                RES_PROGRESS if Some(id) == self.builds_id => {
                    let f = |i: usize| {
                        v.get("fields")
                            .and_then(|f| f.get(i))
                            .and_then(Value::as_u64)
                            .unwrap_or(0)
                    };
                    self.done = f(0);
                    self.expected = f(1);
                    true
                }
                RES_SET_PHASE => {
                    let phase = v
                        .get("fields")
                        .and_then(|f| f.get(0))
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    if let Some(r) = self.running.get_mut(&id) {
                        r.1 = phase;
                        return true;
                    }
                    false
                }
                _ => false,
            },
            Some("msg") => {
                let level = v.get("level").and_then(Value::as_u64).unwrap_or(9);
                if level == 0
                    && let Some(m) = v.get("msg").and_then(Value::as_str)
                {
                    self.errors.push(m.to_string());
                }
                false
            }
            _ => false,
        }
    }

    pub fn render(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs();
        let time = format!("{}m{:02}s", secs / 60, secs % 60);
        let count = if self.expected > 0 {
            format!(" {}/{} built", self.done, self.expected)
        } else {
            String::new()
        };
        let now = match self.running.values().next() {
            Some((name, Some(phase))) => format!(": {name} ({phase})"),
            Some((name, None)) => format!(": {name}"),
            None => String::new(),
        };
        let more = match self.running.len() {
            0 | 1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        format!("[{time}]{count}{now}{more}")
    }
}

/// Builds `installable`; returns its output paths.
pub fn build(installable: &str, extra: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    build_with("nix", installable, extra)
}

fn build_with(nix: &str, installable: &str, extra: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut cmd = Command::new(nix);
    cmd.args([
        "--extra-experimental-features",
        "nix-command flakes",
        "build",
        "--no-link",
        // `--json` rather than `--print-out-paths` (Nix 2.9+): older Nix too.
        "--json",
        "--log-format",
        "internal-json",
        "-v",
    ])
    .args(extra)
    .arg(installable)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // Ctrl-C must reach nix (cell blocks it in itself to clean up).
    crate::signals::unblocked(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!(
                "nix is not installed: cell builds the VMs with Nix. Install it (https://nixos.org/download), then run `cell doctor`"
            )
        } else {
            anyhow::anyhow!("starting nix: {e}")
        }
    })?;
    let stderr = child.stderr.take().context("nix stderr")?;
    let mut stdout = child.stdout.take().context("nix stdout")?;
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut p = Progress::default();
    let mut last = String::new();
    eprintln!("cell: building {installable}");
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if p.feed(&line) {
            let shown = p.render(started.elapsed());
            if tty {
                eprint!("\r\x1b[2K{shown}");
                let _ = std::io::stderr().flush();
            } else if shown.split(']').nth(1) != last.split(']').nth(1) {
                eprintln!("{shown}");
            }
            last = shown;
        }
    }
    if tty {
        eprintln!();
    }
    let status = child.wait()?;
    let out = out_reader.join().unwrap_or_default();
    if !status.success() {
        // Name the set-up problem behind a failure and its fix (`cell doctor`'s checks).
        let fixes = crate::doctor::nix_fixes();
        bail!(
            "the Nix build failed after {}s:\n{}{}",
            started.elapsed().as_secs(),
            p.errors.join("\n"),
            fixes.iter().map(|f| format!("\n  {f}")).collect::<String>()
        );
    }
    eprintln!("cell: built in {}s", started.elapsed().as_secs());
    output_paths(&out)
}

/// The `out` paths from `nix build --json`.
fn output_paths(json: &str) -> anyhow::Result<Vec<PathBuf>> {
    let v: Value = serde_json::from_str(json.trim()).with_context(|| {
        format!("nix build printed something other than its JSON result: {json:.200}")
    })?;
    let paths: Vec<PathBuf> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("outputs")?.get("out")?.as_str().map(PathBuf::from))
        .collect();
    if paths.is_empty() {
        bail!("nix build reported no `out` path: {json:.200}");
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_activity_stream_becomes_a_status_line() {
        let mut p = Progress::default();
        let lines = [
            r#"@nix {"action":"start","id":1,"level":0,"type":104,"text":""}"#,
            r#"@nix {"action":"result","id":1,"type":105,"fields":[2,17,1,0]}"#,
            r#"@nix {"action":"start","id":7,"level":3,"type":105,"text":"building '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-linux-6.6.1.drv'","fields":["/nix/store/0123456789abcdfghijklmnpqrsvwxyz-linux-6.6.1.drv","",1,1]}"#,
            r#"@nix {"action":"result","id":7,"type":104,"fields":["buildPhase"]}"#,
            r#"@nix {"action":"start","id":8,"level":3,"type":101,"text":"downloading 'x'","fields":["https://cache.example/nar/abc.nar.xz"]}"#,
        ];
        for l in lines {
            p.feed(l);
        }
        assert_eq!(
            p.render(Duration::from_secs(72)),
            "[1m12s] 2/17 built: linux-6.6.1 (buildPhase) and 1 more"
        );
        p.feed(r#"@nix {"action":"stop","id":7}"#);
        p.feed(r#"@nix {"action":"stop","id":8}"#);
        p.feed(r#"@nix {"action":"result","id":1,"type":105,"fields":[3,17,0,0]}"#);
        assert_eq!(p.render(Duration::from_secs(80)), "[1m20s] 3/17 built");
    }

    #[test]
    fn errors_are_collected_and_noise_is_ignored() {
        let mut p = Progress::default();
        assert!(!p.feed("warning: Git tree is dirty"));
        assert!(!p.feed("@nix {not json"));
        p.feed(r#"@nix {"action":"msg","level":0,"msg":"error: builder for '/nix/store/x.drv' failed"}"#);
        p.feed(r#"@nix {"action":"msg","level":3,"msg":"chatter"}"#);
        assert_eq!(
            p.errors,
            vec!["error: builder for '/nix/store/x.drv' failed"]
        );
    }

    #[test]
    fn output_paths_come_from_the_json_result() {
        let json = r#"[{"drvPath":"/nix/store/a-cell-vms.drv","outputs":{"out":"/nix/store/b-cell-vms"}}]"#;
        assert_eq!(
            output_paths(json).unwrap(),
            vec![PathBuf::from("/nix/store/b-cell-vms")]
        );
        assert!(output_paths("[]").is_err());
        assert!(output_paths("warning: x").is_err());
    }

    #[test]
    fn missing_nix_says_how_to_get_it() {
        let e = build_with("/nonexistent/nix", ".#x", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nix is not installed"), "{e}");
    }

    #[test]
    fn a_failed_build_reports_nix_errors() {
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("nix");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho '@nix {\"action\":\"msg\",\"level\":0,\"msg\":\"error: flake has no attribute\"}' >&2\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = build_with(fake.to_str().unwrap(), ".#x", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("error: flake has no attribute"), "{e}");
    }
}
