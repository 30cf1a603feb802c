//! The policy document as written on disk (by the Nix layer, or by hand).
//!
//! Field names are camelCase and equal the Nix option names under
//! `cell.policy`. Parsing is strict: an unknown field is an error that names
//! it, so a typo never silently weakens (or strengthens) the policy.
//! `docs/policy.md` documents every field.

use serde::{Deserialize, Serialize};

fn one() -> u32 {
    1
}

/// The base policy: what the Nix configuration declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDocument {
    /// Format version; only `1` exists.
    #[serde(default = "one")]
    pub version: u32,
    /// Hosts reachable over HTTPS through the intercepting proxy.
    #[serde(default)]
    pub https: Vec<HttpsRule>,
    /// Hosts reachable over plain TCP (spliced after the allow decision).
    #[serde(default)]
    pub tcp: Vec<TcpRule>,
    /// Address ranges routed (forwarded) without the proxy.
    #[serde(default)]
    pub cidr: Vec<CidrRule>,
    /// Host patterns denied even when another entry allows them.
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub dns: DnsSettings,
    #[serde(default)]
    pub limits: Limits,
    /// What `cell jail` lets the command read and write. Only `cell jail`
    /// enforces it; see [`FilesystemSection`].
    #[serde(default, skip_serializing_if = "FilesystemSection::is_empty")]
    pub filesystem: FilesystemSection,
}

impl Default for PolicyDocument {
    fn default() -> Self {
        PolicyDocument {
            version: 1,
            https: Vec::new(),
            tcp: Vec::new(),
            cidr: Vec::new(),
            deny: Vec::new(),
            dns: DnsSettings::default(),
            limits: Limits::default(),
            filesystem: FilesystemSection::default(),
        }
    }
}

/// The `filesystem` section: what `cell jail` lets the command read and
/// write, over its defaults (the host read-only, the current directory
/// read-write, a private `/tmp`, credential locations unreadable).
///
/// Security rule: only `cell jail` enforces this section (Landlock and a mount
/// namespace, in the jail's exec helper). `cell-proxy` parses and validates it,
/// so one document serves the jail and the VM, and otherwise ignores it: in
/// the VM the agent's filesystem is its own machine and the host's is out of
/// its reach whatever this says. The live overlay cannot carry it (an unknown
/// field there is refused), so nothing changes a running jail's filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilesystemSection {
    /// Readable (and executable), whatever the defaults deny: `--allow-read`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_read: Vec<FsPath>,
    /// Readable and writable: `--allow-write`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_write: Vec<FsPath>,
    /// Neither readable nor writable, also inside an allowed tree: `--deny-read`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_read: Vec<FsPath>,
}

impl FilesystemSection {
    pub fn is_empty(&self) -> bool {
        self.allow_read.is_empty() && self.allow_write.is_empty() && self.deny_read.is_empty()
    }
}

/// A path in the `filesystem` section: absolute, `~` or `~/…` (the home
/// directory of the user running `cell jail`), or relative to the directory
/// `cell jail` starts in. Refused when parsed: empty, a NUL byte, `~user/…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FsPath(String);

impl FsPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FsPath {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Err("an empty path; write an absolute path, `~/…` or a relative one".into());
        }
        if s.contains('\0') {
            return Err("a path with a NUL byte cannot name a file".into());
        }
        if s.starts_with('~') && s != "~" && !s.starts_with("~/") {
            return Err(format!(
                "`{s}`: only `~/…` (your own home) is expanded; write the absolute path"
            ));
        }
        Ok(FsPath(s))
    }
}

impl From<FsPath> for String {
    fn from(p: FsPath) -> String {
        p.0
    }
}

/// The live overlay (written by `cell allow` / `cell deny`): additions and
/// denials merged over the base without rebuilding a VM. It cannot change DNS
/// settings or limits; those belong to the Nix configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OverlayDocument {
    #[serde(default = "one")]
    pub version: u32,
    #[serde(default)]
    pub https: Vec<HttpsRule>,
    #[serde(default)]
    pub tcp: Vec<TcpRule>,
    #[serde(default)]
    pub cidr: Vec<CidrRule>,
    #[serde(default)]
    pub deny: Vec<String>,
}

impl Default for OverlayDocument {
    /// The empty overlay (of the current format version).
    fn default() -> Self {
        OverlayDocument {
            version: 1,
            https: Vec::new(),
            tcp: Vec::new(),
            cidr: Vec::new(),
            deny: Vec::new(),
        }
    }
}

/// One HTTPS host entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpsRule {
    /// `api.example.com`, `*.example.com`, or `*` with `allowAnyHost`.
    pub host: String,
    /// With a wildcard: also match the bare suffix (`example.com`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub include_apex: bool,
    /// Required to write `host = "*"` or a top-level wildcard such as `*.com`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_any_host: bool,
    /// Ports; default `[443]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
    /// Allowed methods; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Allowed path patterns; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Check the SNI only and relay the TLS bytes untouched (no interception).
    #[serde(default, skip_serializing_if = "is_false")]
    pub passthrough: bool,
    /// Allow upstream addresses in private and shared ranges (RFC 1918,
    /// RFC 6598, ULA, …) for this host: a service inside a corporate network.
    /// Never loopback, link-local, the firewall or the agent link.
    #[serde(default, skip_serializing_if = "is_false")]
    pub private_upstream: bool,
    /// Record this host's exchanges for `cell spy` (when the daemon runs with
    /// a spy store): what the agent sent and received, secrets redacted.
    /// Absent: recorded if the host is a known model provider's API
    /// ([`crate::policy::KNOWN_PROVIDERS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spy: Option<bool>,
    /// Free text shown next to this entry by `cell policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// One plain-TCP host entry (SSH to a git host, a database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRule {
    pub host: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub include_apex: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_any_host: bool,
    /// Ports; at least one.
    pub ports: Vec<u16>,
    /// As for HTTPS entries: private and shared upstream ranges allowed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub private_upstream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Transport protocol of a CIDR rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// One routed address range: forwarded by the firewall without the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CidrRule {
    /// IPv4 network in CIDR notation, `192.0.2.0/24`.
    pub cidr: String,
    pub protocol: Protocol,
    /// Destination ports; at least one.
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// How the firewall answers DNS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsSettings {
    /// IPv4 range synthetic addresses are drawn from.
    #[serde(default = "default_pool")]
    pub synthetic_pool: String,
    /// TTL of synthetic answers, seconds.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Upstream resolvers (`ip` or `ip:port`) for `forward` names and for the
    /// proxy's own lookups; empty means the firewall's `/etc/resolv.conf`.
    #[serde(default)]
    pub upstream: Vec<String>,
    /// Host patterns answered with their real addresses (forwarded upstream).
    /// Connections to those addresses still need a `cidr` entry.
    #[serde(default)]
    pub forward: Vec<String>,
}

pub(crate) fn default_pool() -> String {
    "198.18.0.0/16".into()
}
fn default_ttl() -> u32 {
    60
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            synthetic_pool: default_pool(),
            ttl: default_ttl(),
            upstream: Vec::new(),
            forward: Vec::new(),
        }
    }
}

/// Resource bounds. Everything the agent can make the firewall hold is bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Most names held in the synthetic table (least recently used is evicted).
    #[serde(default = "default_dns_names")]
    pub dns_names: u32,
    /// Most DNS queries answered at once; more are refused.
    #[serde(default = "default_dns_concurrency")]
    pub dns_concurrency: u32,
    /// Idle timeout of a DNS-over-TCP connection, seconds.
    #[serde(default = "default_dns_tcp_idle")]
    pub dns_tcp_idle_secs: u32,
    /// Timeout of one forwarded upstream query, milliseconds.
    #[serde(default = "default_upstream_timeout")]
    pub dns_upstream_timeout_ms: u32,
    /// Most proxied connections open at once; more are reset.
    #[serde(default = "default_proxy_connections")]
    pub proxy_connections: u32,
    /// Largest request or response head (all headers), bytes.
    #[serde(default = "default_header_bytes")]
    pub header_bytes: u32,
    /// Time allowed for the client's TLS hello and handshake, milliseconds.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_ms: u32,
    /// Time allowed for a request head: on the explicit port from accept, on an
    /// intercepted connection from the end of the TLS handshake, milliseconds.
    /// A silent client is dropped after it.
    #[serde(default = "default_request_head_timeout")]
    pub request_head_timeout_ms: u32,
    /// A proxied connection with no traffic either way is closed after this, seconds.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u32,
    /// Time allowed to connect (and TLS-handshake) upstream, milliseconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u32,
    /// New distinct names under one wildcard entry the firewall may look up
    /// upstream per minute (names already looked up do not count): bounds the
    /// DNS channel an invented name under an allowed wildcard opens.
    #[serde(default = "default_wildcard_names_per_minute")]
    pub wildcard_names_per_minute: u32,
    /// Minted leaf certificates kept in memory.
    #[serde(default = "default_cert_cache")]
    pub cert_cache: u32,
}

fn default_proxy_connections() -> u32 {
    4096
}
fn default_header_bytes() -> u32 {
    64 * 1024
}
fn default_handshake_timeout() -> u32 {
    10_000
}
fn default_request_head_timeout() -> u32 {
    10_000
}
fn default_idle_timeout() -> u32 {
    300
}
fn default_connect_timeout() -> u32 {
    10_000
}
fn default_wildcard_names_per_minute() -> u32 {
    60
}
fn default_cert_cache() -> u32 {
    1024
}

fn default_dns_names() -> u32 {
    65536
}
fn default_dns_concurrency() -> u32 {
    256
}
fn default_dns_tcp_idle() -> u32 {
    10
}
fn default_upstream_timeout() -> u32 {
    2000
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            dns_names: default_dns_names(),
            dns_concurrency: default_dns_concurrency(),
            dns_tcp_idle_secs: default_dns_tcp_idle(),
            dns_upstream_timeout_ms: default_upstream_timeout(),
            proxy_connections: default_proxy_connections(),
            header_bytes: default_header_bytes(),
            handshake_timeout_ms: default_handshake_timeout(),
            request_head_timeout_ms: default_request_head_timeout(),
            idle_timeout_secs: default_idle_timeout(),
            connect_timeout_ms: default_connect_timeout(),
            wildcard_names_per_minute: default_wildcard_names_per_minute(),
            cert_cache: default_cert_cache(),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The section parses with its camelCase names, is strict about unknown
    /// fields and bad paths, and an absent section serialises to nothing (so
    /// documents without it are unchanged).
    #[test]
    fn filesystem_section_parses_strictly() {
        let doc: PolicyDocument = serde_json::from_str(
            r#"{"filesystem":{"allowRead":["~/.ssh/known_hosts"],"allowWrite":["/var/cache/x","build"],"denyRead":["~"]}}"#,
        )
        .unwrap();
        assert_eq!(doc.filesystem.allow_read[0].as_str(), "~/.ssh/known_hosts");
        assert_eq!(doc.filesystem.allow_write.len(), 2);
        assert_eq!(doc.filesystem.deny_read[0].as_str(), "~");
        for bad in [
            r#"{"filesystem":{"allowReads":["/x"]}}"#,
            r#"{"filesystem":{"allowRead":[""]}}"#,
            r#"{"filesystem":{"denyRead":["~bob/.ssh"]}}"#,
            r#"{"filesystem":{"denyRead":["/a\u0000b"]}}"#,
        ] {
            assert!(
                serde_json::from_str::<PolicyDocument>(bad).is_err(),
                "{bad}"
            );
        }
        let plain = serde_json::to_value(PolicyDocument::default()).unwrap();
        assert!(plain.get("filesystem").is_none(), "{plain}");
        let overlay = serde_json::from_str::<OverlayDocument>(r#"{"filesystem":{}}"#);
        assert!(overlay.is_err(), "the overlay cannot change the filesystem");
    }
}
