//! The secrets document (`/etc/cell/secrets.json`, compiled by
//! `lib/secrets.nix`): which secret, behind which placeholder, may go to
//! which hosts, in which parts of a request, and where the host CLI reads
//! its value. It never holds a value: values reach the firewall daemon's
//! memory over the control socket (docs/secrets.md).
//!
//! Parsing is strict, like the policy: an unknown field is an error that
//! names it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::host::{HostPattern, normalize_host};
use crate::policy::{ConnDecision, FieldError, Policy};

fn one() -> u32 {
    1
}

fn header_only() -> Vec<Location> {
    vec![Location::Header]
}

/// The whole document.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretsDocument {
    #[serde(default = "one")]
    pub version: u32,
    #[serde(default)]
    pub secrets: Vec<SecretDecl>,
}

/// One declared secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretDecl {
    /// Lower-case letters, digits, `-` and `_`.
    pub name: String,
    /// The agent's environment variable holding the placeholder.
    #[serde(default)]
    pub env: Option<String>,
    /// What the agent holds instead of the value: `cell-placeholder-NAME`.
    pub placeholder: String,
    /// Host patterns (the `cell.policy.https` syntax) the value may go to.
    pub hosts: Vec<String>,
    /// `token` (swapped for its placeholder) or `aws` (requests re-signed).
    #[serde(default)]
    pub kind: Kind,
    /// Where in a request a token placeholder is replaced (`header` by default).
    #[serde(default = "header_only")]
    pub locations: Vec<Location>,
    /// AWS only: the access key id placeholder the agent signs with.
    #[serde(default)]
    pub access_key_id_placeholder: Option<String>,
    /// Where the host CLI reads the value: exactly one kind.
    pub source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Token,
    Aws,
}

/// A part of a request a placeholder may be replaced in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    /// Any request header, including inside `Basic` credentials.
    Header,
    /// The URL's query string.
    Query,
    /// The request body, replaced as it streams.
    Body,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Location::Header => "header",
            Location::Query => "query",
            Location::Body => "body",
        })
    }
}

/// Where the host CLI reads a value. The document holds exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum Source {
    /// The OS keychain: the macOS Keychain, or the Secret Service on Linux,
    /// by service name.
    Keychain(String),
    /// A program and its arguments that print the value.
    Command(Vec<String>),
    /// An environment variable of the host CLI.
    Env(String),
    /// An absolute path outside the Nix store, readable only by its owner.
    File(String),
}

impl Source {
    /// `keychain`, `command`, `env` or `file`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Keychain(_) => "keychain",
            Source::Command(_) => "command",
            Source::Env(_) => "env",
            Source::File(_) => "file",
        }
    }
}

/// A document that failed to parse or validate: every problem, with its field.
#[derive(Debug)]
pub struct SecretsError {
    pub file: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for SecretsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} was refused:", self.file)?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SecretsError {}

/// The placeholder the agent sees for secret `name` (as `lib/secrets.nix`).
/// The line that hands values to the daemon (`NAME: value`, or null to
/// forget one), newline-terminated: `{"op":"secrets-load","values":{…}}` for
/// the control socket, or, with `as_request` false, just the values object
/// (what `cell-proxy --load-secrets -` reads on stdin). Built in one zeroized
/// buffer sized so that it never reallocates: a reallocation would leave a
/// copy of the values in freed memory.
pub fn load_line(values: &[(&str, Option<&str>)], as_request: bool) -> zeroize::Zeroizing<Vec<u8>> {
    use std::collections::BTreeMap;
    #[derive(Serialize)]
    struct Load<'a> {
        op: &'static str,
        values: BTreeMap<&'a str, Option<&'a str>>,
    }
    let map: BTreeMap<&str, Option<&str>> = values.iter().copied().collect();
    // JSON escapes at most 6 bytes per input byte (\u00XX).
    let room = 64
        + values
            .iter()
            .map(|(n, v)| 8 + 6 * n.len() + 6 * v.map_or(4, str::len))
            .sum::<usize>();
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(room));
    let written = if as_request {
        serde_json::to_writer(
            &mut *buf,
            &Load {
                op: "secrets-load",
                values: map,
            },
        )
    } else {
        serde_json::to_writer(&mut *buf, &map)
    };
    written.expect("strings always serialize");
    buf.push(b'\n');
    debug_assert!(buf.capacity() == room, "the buffer never reallocates");
    buf
}

pub fn placeholder(name: &str) -> String {
    format!("cell-placeholder-{name}")
}

/// The access key id placeholder of AWS secret `name`. A `.` never occurs in
/// a secret name, so it never collides with another secret's placeholder.
pub fn access_key_id_placeholder(name: &str) -> String {
    format!("cell-placeholder-{name}.akid")
}

fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
        && n.len() <= 64
}

impl SecretsDocument {
    /// Parses and validates a document; `file` names it in errors.
    pub fn from_json(file: &str, text: &str) -> Result<Self, SecretsError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let doc: SecretsDocument =
            serde_path_to_error::deserialize(de).map_err(|e| SecretsError {
                file: file.into(),
                errors: vec![FieldError {
                    path: e.path().to_string(),
                    message: e.inner().to_string(),
                }],
            })?;
        let errors = doc.problems();
        if errors.is_empty() {
            Ok(doc)
        } else {
            Err(SecretsError {
                file: file.into(),
                errors,
            })
        }
    }

    /// Reads and validates the document at `path`.
    pub fn load(path: &std::path::Path) -> Result<Self, SecretsError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SecretsError {
            file: file.clone(),
            errors: vec![FieldError {
                path: "(file)".into(),
                message: format!("cannot read it: {e}"),
            }],
        })?;
        Self::from_json(&file, &text)
    }

    fn problems(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        let mut err = |path: String, message: String| out.push(FieldError { path, message });
        if self.version != 1 {
            err(
                "version".into(),
                format!("only version 1 exists (found {})", self.version),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.secrets.iter().enumerate() {
            let at = |f: &str| format!("secrets[{i}].{f}");
            if !valid_name(&s.name) {
                err(
                    at("name"),
                    format!(
                        "`{}`: a secret's name is 1–64 lower-case letters, digits, - and _, starting with a letter or digit",
                        s.name
                    ),
                );
            }
            if !seen.insert(s.name.as_str()) {
                err(at("name"), format!("`{}` is declared twice", s.name));
            }
            if s.placeholder != placeholder(&s.name) {
                err(
                    at("placeholder"),
                    format!(
                        "must be `{}` (the placeholder is derived from the name)",
                        placeholder(&s.name)
                    ),
                );
            }
            if s.hosts.is_empty() {
                err(
                    at("hosts"),
                    "name the hosts this secret may be sent to, e.g. [\"api.anthropic.com\"]"
                        .into(),
                );
            }
            for (j, h) in s.hosts.iter().enumerate() {
                if let Err(e) = HostPattern::parse(h, false, false) {
                    err(format!("secrets[{i}].hosts[{j}]"), e.to_string());
                }
            }
            if s.locations.is_empty() {
                err(
                    at("locations"),
                    "name at least one of \"header\", \"query\", \"body\"".into(),
                );
            }
            match (s.kind, &s.access_key_id_placeholder) {
                (Kind::Aws, Some(a)) if *a != access_key_id_placeholder(&s.name) => err(
                    at("accessKeyIdPlaceholder"),
                    format!("must be `{}`", access_key_id_placeholder(&s.name)),
                ),
                (Kind::Aws, None) => err(
                    at("accessKeyIdPlaceholder"),
                    format!(
                        "an aws secret needs one: `{}`",
                        access_key_id_placeholder(&s.name)
                    ),
                ),
                (Kind::Token, Some(_)) => err(
                    at("accessKeyIdPlaceholder"),
                    "only an aws secret has one; remove it or set kind = \"aws\"".into(),
                ),
                _ => {}
            }
            match &s.source {
                Source::Command(c) if c.is_empty() => err(
                    at("source.command"),
                    "give the program and its arguments, e.g. [\"pass\", \"show\", \"anthropic\"]"
                        .into(),
                ),
                Source::File(f) if !f.starts_with('/') => err(
                    at("source.file"),
                    format!("give an absolute path, not `{f}`"),
                ),
                _ => {}
            }
        }
        out
    }

    /// Problems of these secrets against `policy`: a secret scoped to a
    /// host the policy does not intercept could never be injected, so it is
    /// refused with the line that would allow the host.
    pub fn check_against(&self, policy: &Policy) -> Vec<FieldError> {
        let mut out = Vec::new();
        for (i, s) in self.secrets.iter().enumerate() {
            for (j, h) in s.hosts.iter().enumerate() {
                let Ok(pattern) = HostPattern::parse(h, false, false) else {
                    continue;
                };
                // A wildcard scope is checked at a name it covers.
                let probe = match &pattern {
                    HostPattern::Exact(n) => n.clone(),
                    HostPattern::Suffix { suffix, .. } => format!("cell-scope-check.{suffix}"),
                    HostPattern::Any => continue,
                };
                let Ok(probe) = normalize_host(&probe) else {
                    continue;
                };
                let port = 443;
                let message = match policy.connection(&probe, port) {
                    ConnDecision::Https(e) if !e.passthrough => continue,
                    ConnDecision::Https(e) => format!(
                        "secret `{}` is scoped to {h}, which {} passes through without interception, so the value could never be put in; remove `passthrough` from {} or the host from the secret",
                        s.name, e.origin, e.origin
                    ),
                    ConnDecision::Deny(crate::DenyReason::DeniedBy(o)) => format!(
                        "secret `{}` is scoped to {h}, which the policy denies ({o}); remove the host from the secret or the denial",
                        s.name
                    ),
                    _ => format!(
                        "secret `{}` is scoped to {h}, which the policy does not allow over HTTPS on port 443; add `https.\"{h}\" = {{ }};` to `cell.policy` (or `cell allow https {h}`), or remove the host from the secret",
                        s.name
                    ),
                };
                out.push(FieldError {
                    path: format!("secrets[{i}].hosts[{j}]"),
                    message,
                });
            }
        }
        out
    }

    /// The patterns of secret `s`, parsed (invalid ones were refused at load).
    pub fn scope(s: &SecretDecl) -> Vec<HostPattern> {
        s.hosts
            .iter()
            .filter_map(|h| HostPattern::parse(h, false, false).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_load_line_holds_names_and_values_and_never_reallocates() {
        let tricky = "va\"l\\ue\u{1}";
        let line = load_line(&[("a", Some(tricky)), ("b", None)], true);
        assert!(line.ends_with(b"\n"));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op": "secrets-load", "values": {"a": tricky, "b": null}})
        );
        let bare: serde_json::Value =
            serde_json::from_slice(&load_line(&[("a", Some("x"))], false)).unwrap();
        assert_eq!(bare, serde_json::json!({"a": "x"}));
        // The worst case for escaping: every byte a control character.
        let worst = "\u{1}".repeat(1000);
        let line = load_line(&[("w", Some(&worst))], true);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&line).unwrap()["values"]["w"],
            serde_json::json!(worst)
        );
    }

    use super::*;

    fn doc(extra: &str) -> String {
        format!(
            r#"{{"version":1,"secrets":[{{"name":"anthropic","env":"ANTHROPIC_API_KEY","placeholder":"cell-placeholder-anthropic","hosts":["api.anthropic.com"],"source":{{"keychain":"anthropic-api-key"}}{extra}}}]}}"#
        )
    }

    #[test]
    fn the_nix_document_parses_with_header_only_default() {
        let d = SecretsDocument::from_json("t", &doc("")).unwrap();
        let s = &d.secrets[0];
        assert_eq!(s.locations, vec![Location::Header]);
        assert_eq!(s.kind, Kind::Token);
        assert_eq!(s.source, Source::Keychain("anthropic-api-key".into()));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused_by_field() {
        let e = SecretsDocument::from_json("t", &doc(r#","where":["header"]"#)).unwrap_err();
        assert!(e.to_string().contains("where"), "{e}");
        let e = SecretsDocument::from_json("t", &doc(r#","locations":["cookie"]"#)).unwrap_err();
        assert!(e.to_string().contains("locations"), "{e}");
        let bad = doc("").replace("cell-placeholder-anthropic", "sk-ant-real");
        let e = SecretsDocument::from_json("t", &bad).unwrap_err();
        assert!(e.to_string().contains("secrets[0].placeholder"), "{e}");
        let e = SecretsDocument::from_json("t", &doc(r#","kind":"aws""#)).unwrap_err();
        assert!(
            e.to_string().contains("cell-placeholder-anthropic.akid"),
            "{e}"
        );
        let bad = doc("").replace("api.anthropic.com", "*");
        assert!(SecretsDocument::from_json("t", &bad).is_err());
    }

    #[test]
    fn a_scope_the_policy_does_not_intercept_is_refused_with_the_fix() {
        let d = SecretsDocument::from_json("t", &doc("")).unwrap();
        let base = crate::PolicyDocument::from_json(
            "p",
            r#"{"https":[{"host":"github.com"},{"host":"api.anthropic.com","passthrough":true}]}"#,
        )
        .unwrap();
        let p = Policy::build(&base, None).unwrap();
        let e = d.check_against(&p);
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("passthrough"), "{}", e[0]);
        let base =
            crate::PolicyDocument::from_json("p", r#"{"https":[{"host":"github.com"}]}"#).unwrap();
        let e = d.check_against(&Policy::build(&base, None).unwrap());
        assert!(
            e[0].message
                .contains(r#"add `https."api.anthropic.com" = { };`"#),
            "{}",
            e[0]
        );
        let base =
            crate::PolicyDocument::from_json("p", r#"{"https":[{"host":"*.anthropic.com"}]}"#)
                .unwrap();
        assert!(
            d.check_against(&Policy::build(&base, None).unwrap())
                .is_empty()
        );
    }
}
