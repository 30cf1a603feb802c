//! How a new policy gets in: the files changing, SIGHUP, or the control socket.
//!
//! Files are watched by polling their metadata (modification time, size and
//! inode, following symlinks) every 25 ms: that also sees a NixOS rebuild
//! swapping an `/etc` symlink and an editor replacing a file by rename, and a
//! change is in force well within 100 ms.
//!
//! The control socket (mode 0600) speaks one JSON object per line:
//! `{"op":"reload"}` answers with the resulting policy event,
//! `{"op":"status"}` with counts of what is in force,
//! `{"op":"secrets"}` with each declared secret (never a value), and
//! `{"op":"secrets-load","values":{"NAME":"VALUE"|null}}` loads (or, with
//! null, unloads) values into memory; the host CLI sends it, the request
//! line's buffer is zeroized, and the answer names secrets only.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use zeroize::Zeroizing;

use crate::state::State;

const POLL: Duration = Duration::from_millis(25);
/// Longest control request line (a `secrets-load` carries every value).
const MAX_LINE: usize = 256 * 1024;

type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

async fn reload(state: &Arc<State>, cause: &'static str) -> serde_json::Map<String, Value> {
    let st = state.clone();
    tokio::task::spawn_blocking(move || st.reload(cause))
        .await
        .unwrap_or_default()
}

/// Reloads whenever the policy or overlay file changes.
pub async fn watch_files(state: Arc<State>, files: Vec<PathBuf>) {
    let mut last: Vec<Stamp> = files.iter().map(|f| stamp(f)).collect();
    loop {
        tokio::time::sleep(POLL).await;
        let now: Vec<Stamp> = files.iter().map(|f| stamp(f)).collect();
        if now != last {
            last = now;
            reload(&state, "file-change").await;
        }
    }
}

/// Serves the control socket at `path`.
pub async fn serve(state: Arc<State>, path: PathBuf) -> anyhow::Result<()> {
    if path.exists() {
        // A stale socket from a previous run (we hold the only listener for this path).
        std::fs::remove_file(&path)
            .with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut r = BufReader::new(r.take(16 * MAX_LINE as u64));
                loop {
                    // A request may carry secret values: its buffer is zeroized.
                    let mut line = Zeroizing::new(Vec::new());
                    match (&mut r)
                        .take(MAX_LINE as u64 + 1)
                        .read_until(b'\n', &mut line)
                        .await
                    {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let reply = if line.len() > MAX_LINE {
                        json!({"ok": false, "error": format!("request longer than {MAX_LINE} bytes")})
                    } else {
                        answer(&state, &line).await
                    };
                    if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// `{"op":"secrets-load","values":{"NAME":"VALUE" | null, …}}`.
#[derive(serde::Deserialize)]
struct LoadSecrets {
    values: std::collections::BTreeMap<String, Option<Zeroizing<String>>>,
}

async fn answer(state: &Arc<State>, line: &[u8]) -> Value {
    let op = serde_json::from_slice::<serde_json::Map<String, Value>>(line)
        .ok()
        .and_then(|v| v.get("op")?.as_str().map(str::to_string));
    match op.as_deref() {
        Some("secrets-load") => {
            // Parsed again into zeroized strings; a parse error never quotes the line.
            let Ok(req) = serde_json::from_slice::<LoadSecrets>(line) else {
                return json!({"ok": false, "error": "secrets-load wants {\"op\":\"secrets-load\",\"values\":{\"NAME\":\"VALUE\" or null}}"});
            };
            let results = state.secrets.load(req.values.into_iter().collect());
            let mut loaded = Vec::new();
            let mut refused = Vec::new();
            for (name, r) in results {
                match r {
                    Ok(()) => loaded.push(Value::from(name)),
                    Err(e) => refused.push(json!({"name": name, "error": e})),
                }
            }
            state.events.emit(crate::events::event(
                "secrets",
                [
                    ("decision", "loaded".into()),
                    ("loaded", loaded.clone().into()),
                    ("refused", refused.clone().into()),
                ],
            ));
            json!({"ok": refused.is_empty(), "loaded": loaded, "refused": refused})
        }
        Some("secrets") => state.secrets.status(),
        Some("reload") => {
            let ev = reload(state, "control").await;
            json!({"ok": ev.get("decision") == Some(&Value::from("applied")), "event": ev})
        }
        Some("status") => {
            let p = state.policy();
            json!({
                "ok": true,
                "https": p.https.len(), "tcp": p.tcp.len(), "cidr": p.cidr.len(), "deny": p.deny.len(),
                "pool": p.dns.synthetic_pool.to_string(),
                "names": state.table.lock().expect("table lock").len(),
                "secrets_loaded": state.secrets.loaded_count(),
                "pid": std::process::id(),
                "uptime_secs": state.started.elapsed().as_secs(),
                "connections": {
                    "intercepted": state.intercepted.get(),
                    "parked": state.parked.get(),
                    "parked_total": state.parked.total(),
                },
            })
        }
        _ => {
            json!({"ok": false, "error": "unknown request; send {\"op\":\"reload\"}, {\"op\":\"status\"}, {\"op\":\"secrets\"} or {\"op\":\"secrets-load\",…}"})
        }
    }
}
