//! `cell blocked`: the firewall's denials, each with the command that would
//! allow it.
//!
//! Reads cell-proxy's event log (one JSON object per line) and keeps the
//! `deny` decisions and nftables `reject` records.

use serde_json::Value;

/// One denial, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub time: String,
    /// `dns api.example.com`, `https api.example.com:443 POST /v1/x`, …
    pub what: String,
    pub reason: String,
    /// The command that would allow it, when one exists.
    pub fix: Option<String>,
}

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// Shell-quotes a word when it needs it.
fn sh(word: &str) -> String {
    if word
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./:*@".contains(&b))
        && !word.starts_with('*')
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// A denial from one event line; `None` for everything else.
pub fn parse(line: &str) -> Option<Denial> {
    let v: Value = serde_json::from_str(line).ok()?;
    let time = s(&v, "time").unwrap_or("").to_string();
    let raw = s(&v, "reason").unwrap_or("no-rule");
    // A deny entry is not undone by an allow; an invalid name cannot be allowed.
    let denied_by_rule = matches!(raw, "deny-entry" | "invalid-name");
    let reason = match raw {
        "no-rule" => "not in the allowlist".to_string(),
        "deny-entry" => format!("denied by {}", s(&v, "rule").unwrap_or("a deny entry")),
        "invalid-name" => "not a valid hostname".to_string(),
        other => other.replace('-', " "),
    };
    match s(&v, "event")? {
        "dns" if s(&v, "decision") == Some("deny") => {
            let name = s(&v, "name")?;
            Some(Denial {
                time,
                what: format!("dns {name}"),
                fix: (!denied_by_rule).then(|| format!("cell allow https {}", sh(name))),
                reason,
            })
        }
        "conn" if s(&v, "decision") == Some("deny") => {
            let host = s(&v, "host");
            let port = v.get("port").and_then(Value::as_u64);
            let kind = s(&v, "kind").unwrap_or("tcp");
            let (what, fix) = match (host, port, kind) {
                (Some(h), _, "http") => {
                    let method = s(&v, "method").unwrap_or("?");
                    let path = s(&v, "path").unwrap_or("/");
                    (
                        format!("https {h} {method} {path}"),
                        Some(format!(
                            "cell allow https {} --method {} --path {}",
                            sh(h),
                            sh(method),
                            sh(path)
                        )),
                    )
                }
                (Some(h), Some(443), _) => (
                    format!("https {h}:443"),
                    Some(format!("cell allow https {}", sh(h))),
                ),
                (Some(h), Some(p), _) => (
                    format!("tcp {h}:{p}"),
                    Some(format!("cell allow tcp {}", sh(&format!("{h}:{p}")))),
                ),
                (Some(h), None, _) => (format!("{kind} {h}"), None),
                (None, _, _) => (
                    format!("{kind} {}", s(&v, "dst").or(s(&v, "client")).unwrap_or("?")),
                    None,
                ),
            };
            Some(Denial {
                time,
                what,
                fix: fix.filter(|_| !denied_by_rule),
                reason,
            })
        }
        "reject" => {
            let proto = s(&v, "proto").unwrap_or("ip");
            let dst = s(&v, "dst").unwrap_or("?");
            Some(Denial {
                time,
                what: format!("{proto} {dst}"),
                reason: s(&v, "reason")
                    .unwrap_or("not through the proxy (direct IP, UDP or QUIC)")
                    .to_string(),
                fix: None,
            })
        }
        _ => None,
    }
}

pub fn render(d: &Denial) -> String {
    render_counted(d, 1)
}

/// One denial; `count` > 1 when it repeated (shown on its first line).
pub fn render_counted(d: &Denial, count: usize) -> String {
    let time = d.time.get(11..19).unwrap_or(&d.time);
    let times = if count > 1 {
        format!(" (×{count})")
    } else {
        String::new()
    };
    let mut out = format!("{time}  {}  — {}{times}", d.what, d.reason);
    match &d.fix {
        Some(fix) => out.push_str(&format!("\n          allow: {fix}")),
        None if d.reason.starts_with("denied by") => {
            out.push_str("\n          a deny entry wins; `cell policy` shows it")
        }
        None => {}
    }
    out
}

/// The last `n` denials in `text`, oldest first, repeats folded.
pub fn recent(text: &str, n: usize) -> Vec<(Denial, usize)> {
    let mut out: Vec<(Denial, usize)> = Vec::new();
    for d in text.lines().filter_map(parse) {
        match out.last_mut() {
            Some((last, count)) if last.what == d.what && last.reason == d.reason => {
                *count += 1;
                last.time = d.time;
            }
            _ => out.push((d, 1)),
        }
    }
    let from = out.len().saturating_sub(n);
    out.split_off(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_denial_gets_the_command_that_allows_it() {
        let dns = parse(r#"{"event":"dns","client":"10.89.0.2:5353","name":"evil.example","type":"A","decision":"deny","reason":"no-rule","time":"2026-11-24T10:00:01.000Z"}"#).unwrap();
        assert_eq!(dns.fix.as_deref(), Some("cell allow https evil.example"));
        assert_eq!(dns.what, "dns evil.example");

        let http = parse(r#"{"event":"conn","client":"c","host":"api.example.com","port":443,"kind":"http","method":"DELETE","path":"/v1/x y","decision":"deny","reason":"method-not-allowed","time":"t"}"#).unwrap();
        assert_eq!(
            http.fix.as_deref(),
            Some("cell allow https api.example.com --method DELETE --path '/v1/x y'")
        );

        let tcp = parse(r#"{"event":"conn","client":"c","host":"db.example","port":5432,"kind":"tcp","decision":"deny","reason":"no-rule","time":"t"}"#).unwrap();
        assert_eq!(tcp.fix.as_deref(), Some("cell allow tcp db.example:5432"));

        let ruled = parse(r#"{"event":"conn","host":"gist.github.com","port":443,"kind":"tls","decision":"deny","reason":"deny-entry","rule":"overlay:deny[0]","time":"t"}"#).unwrap();
        assert_eq!(ruled.fix, None, "a deny entry is not undone by an allow");
        assert_eq!(ruled.reason, "denied by overlay:deny[0]");
        assert!(render(&ruled).contains("cell policy"));

        let quic = parse(r#"{"event":"reject","proto":"udp","dst":"203.0.113.9:443","time":"t"}"#)
            .unwrap();
        assert_eq!(quic.what, "udp 203.0.113.9:443");
        assert_eq!(quic.fix, None);
    }

    #[test]
    fn allowed_events_and_garbage_are_skipped_and_repeats_fold() {
        let log = [
            r#"{"event":"dns","name":"ok.example","decision":"synthetic","time":"t1"}"#,
            "not json",
            r#"{"event":"dns","name":"x.example","decision":"deny","time":"2026-11-24T10:00:01.000Z"}"#,
            r#"{"event":"dns","name":"x.example","decision":"deny","time":"2026-11-24T10:00:02.000Z"}"#,
            r#"{"event":"policy","decision":"applied","time":"t"}"#,
            r#"{"event":"dns","name":"y.example","decision":"deny","time":"2026-11-24T10:00:03.000Z"}"#,
        ]
        .join("\n");
        let r = recent(&log, 10);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].1, 2);
        assert_eq!(r[0].0.time, "2026-11-24T10:00:02.000Z");
        assert_eq!(recent(&log, 1)[0].0.what, "dns y.example");
        assert!(render(&r[1].0).starts_with("10:00:03  dns y.example"));
        let folded = render_counted(&r[0].0, r[0].1);
        assert!(
            folded.lines().next().unwrap().ends_with("(×2)"),
            "the count is on the first line: {folded}"
        );
    }

    #[test]
    fn odd_names_are_quoted_for_the_shell() {
        assert_eq!(sh("a.b"), "a.b");
        assert_eq!(sh("*.b"), "'*.b'");
        assert_eq!(sh("a'b"), "'a'\\''b'");
        assert_eq!(sh("$(x)"), "'$(x)'");
    }
}
