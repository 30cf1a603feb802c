//! The validated, merged policy and the decisions made from it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use ipnet::Ipv4Net;
use serde::de::DeserializeOwned;

use crate::document::{
    CidrRule, DnsSettings, HttpsRule, Limits, OverlayDocument, PolicyDocument, Protocol, TcpRule,
};
use crate::host::{HostPattern, normalize_host};
use crate::path::{PathPattern, normalize_method};

/// Where an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The base policy (the Nix configuration).
    Base,
    /// The live overlay (`cell allow`).
    Overlay,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Base => "policy",
            Source::Overlay => "overlay",
        })
    }
}

/// Names one entry of the policy: `https[2]` of the overlay, say. Shown in
/// deny reasons and event lines as `overlay:https[2]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    pub source: Source,
    pub section: &'static str,
    pub index: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}[{}]", self.source, self.section, self.index)
    }
}

/// A validated HTTPS entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsEntry {
    pub pattern: HostPattern,
    pub ports: Vec<u16>,
    pub methods: Option<Vec<String>>,
    pub paths: Option<Vec<PathPattern>>,
    pub passthrough: bool,
    /// Private and shared upstream ranges allowed ([`crate::upstream`]).
    pub private_upstream: bool,
    /// Exchanges recorded for `cell spy`: as the entry says, else
    /// [`HttpsEntry::records`] decides by the host.
    pub spy: Option<bool>,
    pub comment: Option<String>,
    pub origin: Origin,
}

/// The model providers' API hosts whose exchanges a spy store records
/// unless their entry says `spy: false`: Anthropic, OpenAI (and Azure
/// OpenAI), Bedrock Runtime, Google's Gemini API, Mistral, Groq, DeepSeek,
/// OpenRouter, xAI.
pub const KNOWN_PROVIDERS: &[&str] = &[
    "api.anthropic.com",
    "api.openai.com",
    "*.openai.azure.com",
    "bedrock-runtime.*.amazonaws.com",
    "generativelanguage.googleapis.com",
    "api.mistral.ai",
    "api.groq.com",
    "api.deepseek.com",
    "openrouter.ai",
    "api.x.ai",
];

/// Is `host` one of [`KNOWN_PROVIDERS`]? (`*` stands for one label.)
pub fn known_provider(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    KNOWN_PROVIDERS.iter().any(|p| {
        let (pl, hl): (Vec<&str>, Vec<&str>) = (p.split('.').collect(), host.split('.').collect());
        pl.len() == hl.len() && pl.iter().zip(&hl).all(|(a, b)| *a == "*" || a == b)
    })
}

impl HttpsEntry {
    /// Whether a spy store records requests to `host` under this entry.
    pub fn records(&self, host: &str) -> bool {
        self.spy.unwrap_or_else(|| known_provider(host))
    }
}

/// A validated TCP entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpEntry {
    pub pattern: HostPattern,
    pub ports: Vec<u16>,
    /// Private and shared upstream ranges allowed ([`crate::upstream`]).
    pub private_upstream: bool,
    pub comment: Option<String>,
    pub origin: Origin,
}

/// A validated routed range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrEntry {
    pub net: Ipv4Net,
    pub protocol: Protocol,
    pub ports: Vec<u16>,
    pub comment: Option<String>,
    pub origin: Origin,
}

/// A host pattern with where it came from (deny and forward lists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternEntry {
    pub pattern: HostPattern,
    pub origin: Origin,
}

/// Validated DNS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    pub synthetic_pool: Ipv4Net,
    pub ttl: u32,
    pub upstream: Vec<SocketAddr>,
    pub forward: Vec<PatternEntry>,
}

/// The effective policy: base and overlay, validated and merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub https: Vec<HttpsEntry>,
    pub tcp: Vec<TcpEntry>,
    pub cidr: Vec<CidrEntry>,
    pub deny: Vec<PatternEntry>,
    pub dns: Dns,
    pub limits: Limits,
}

/// One problem in a policy document: where, what, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, `https[2].host`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a policy or overlay was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {path}: {message}")]
    Syntax {
        file: String,
        path: String,
        message: String,
    },
    #[error("{file}: {} problem(s):\n{}", .errors.len(), .errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        file: String,
        errors: Vec<FieldError>,
    },
}

/// Why a name gets no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// No entry allows it.
    NoRule,
    /// A `deny` entry matches it.
    DeniedBy(Origin),
    /// It is not a valid hostname.
    InvalidName,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NoRule => f.write_str("no-rule"),
            DenyReason::DeniedBy(_) => f.write_str("deny-entry"),
            DenyReason::InvalidName => f.write_str("invalid-name"),
        }
    }
}

/// What DNS does with a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameDecision {
    /// Answer with a synthetic address; the entry that allows it.
    Synthetic { name: String, origin: Origin },
    /// Forward to the upstream resolver and answer with real addresses.
    Forward { name: String, origin: Origin },
    /// Answer NXDOMAIN; nothing is sent upstream.
    Deny(DenyReason),
}

/// What the proxy does with a connection to `name:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnDecision<'a> {
    Https(&'a HttpsEntry),
    Tcp(&'a TcpEntry),
    Deny(DenyReason),
}

fn parse_json<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, PolicyError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut message = inner.to_string();
        if message.contains("unknown field") {
            message
                .push_str(" (check the spelling; field names are camelCase, as in docs/policy.md)");
        }
        PolicyError::Syntax {
            file: file.to_string(),
            path: if path == "." {
                "(document)".into()
            } else {
                path
            },
            message,
        }
    })
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        file: path.display().to_string(),
        source,
    })
}

impl PolicyDocument {
    /// Parses a policy document; `file` names it in errors.
    pub fn from_json(file: &str, text: &str) -> Result<Self, PolicyError> {
        parse_json(file, text)
    }
}

impl OverlayDocument {
    pub fn from_json(file: &str, text: &str) -> Result<Self, PolicyError> {
        parse_json(file, text)
    }
}

/// Collects field errors while validating.
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn version(&mut self, v: u32) {
        if v != 1 {
            self.err(
                "version",
                format!("unsupported version {v}; this cell-proxy understands version 1"),
            );
        }
    }

    fn pattern(
        &mut self,
        path: &str,
        host: &str,
        include_apex: bool,
        allow_any: bool,
    ) -> Option<HostPattern> {
        match HostPattern::parse(host, include_apex, allow_any) {
            Ok(p) => Some(p),
            Err(e) => {
                self.err(path, e.to_string());
                None
            }
        }
    }

    fn ports(&mut self, path: &str, ports: &[u16]) -> Vec<u16> {
        if ports.is_empty() {
            self.err(path, "needs at least one port, e.g. `[443]`");
        }
        if ports.contains(&0) {
            self.err(path, "port 0 is not a port; use 1-65535");
        }
        let mut v = ports.to_vec();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn https(&mut self, i: usize, r: &HttpsRule, source: Source) -> Option<HttpsEntry> {
        let p = format!("https[{i}]");
        let pattern = self.pattern(
            &format!("{p}.host"),
            &r.host,
            r.include_apex,
            r.allow_any_host,
        );
        let ports = self.ports(&format!("{p}.ports"), r.ports.as_deref().unwrap_or(&[443]));
        let methods = r.methods.as_ref().map(|ms| {
            if ms.is_empty() {
                self.err(format!("{p}.methods"), "an empty list allows no request at all; remove `methods` to allow every method");
            }
            ms.iter()
                .enumerate()
                .filter_map(|(j, m)| {
                    let n = normalize_method(m);
                    if n.is_none() {
                        self.err(format!("{p}.methods[{j}]"), format!("`{m}` is not an HTTP method; write e.g. `GET` or `POST`"));
                    }
                    n
                })
                .collect::<Vec<_>>()
        });
        let paths = r.paths.as_ref().map(|ps| {
            if ps.is_empty() {
                self.err(
                    format!("{p}.paths"),
                    "an empty list allows no request at all; remove `paths` to allow every path",
                );
            }
            ps.iter()
                .enumerate()
                .filter_map(|(j, s)| match PathPattern::parse(s) {
                    Ok(pp) => Some(pp),
                    Err(e) => {
                        self.err(format!("{p}.paths[{j}]"), e.to_string());
                        None
                    }
                })
                .collect::<Vec<_>>()
        });
        if r.passthrough && (r.methods.is_some() || r.paths.is_some()) {
            self.err(
                format!("{p}.passthrough"),
                "a passthrough host is not decrypted, so `methods` and `paths` cannot be checked; remove them or set `passthrough = false`",
            );
        }
        if r.passthrough && r.spy == Some(true) {
            self.err(
                format!("{p}.spy"),
                "a passthrough host is not decrypted, so nothing of it can be recorded; remove `spy` or set `passthrough = false`",
            );
        }
        Some(HttpsEntry {
            pattern: pattern?,
            ports,
            methods,
            paths,
            passthrough: r.passthrough,
            private_upstream: r.private_upstream,
            spy: r.spy,
            comment: r.comment.clone(),
            origin: Origin {
                source,
                section: "https",
                index: i,
            },
        })
    }

    fn tcp(&mut self, i: usize, r: &TcpRule, source: Source) -> Option<TcpEntry> {
        let p = format!("tcp[{i}]");
        let pattern = self.pattern(
            &format!("{p}.host"),
            &r.host,
            r.include_apex,
            r.allow_any_host,
        );
        let ports = self.ports(&format!("{p}.ports"), &r.ports);
        Some(TcpEntry {
            pattern: pattern?,
            ports,
            private_upstream: r.private_upstream,
            comment: r.comment.clone(),
            origin: Origin {
                source,
                section: "tcp",
                index: i,
            },
        })
    }

    fn cidr(
        &mut self,
        i: usize,
        r: &CidrRule,
        source: Source,
        pool: Option<Ipv4Net>,
    ) -> Option<CidrEntry> {
        let p = format!("cidr[{i}]");
        let ports = self.ports(&format!("{p}.ports"), &r.ports);
        let net = match r.cidr.parse::<ipnet::IpNet>() {
            Ok(ipnet::IpNet::V4(n)) => n,
            Ok(ipnet::IpNet::V6(_)) => {
                self.err(format!("{p}.cidr"), format!("`{}` is IPv6; the agent has no IPv6 route, so only IPv4 ranges can be forwarded", r.cidr));
                return None;
            }
            Err(_) => {
                let hint = if r.cidr.parse::<Ipv4Addr>().is_ok() {
                    format!("; for a single address write `{}/32`", r.cidr)
                } else {
                    String::new()
                };
                self.err(
                    format!("{p}.cidr"),
                    format!("`{}` is not an IPv4 network in CIDR notation{hint}", r.cidr),
                );
                return None;
            }
        };
        if net.trunc() != net {
            self.err(
                format!("{p}.cidr"),
                format!("`{net}` has host bits set; did you mean `{}`?", net.trunc()),
            );
        }
        if net.prefix_len() == 0 {
            self.err(format!("{p}.cidr"), "`0.0.0.0/0` would route everything around the proxy; list hosts under `https` or `tcp` instead");
        }
        for (bad, what) in [
            ("0.0.0.0/8", "the unspecified range"),
            ("127.0.0.0/8", "loopback"),
            (
                "169.254.0.0/16",
                "link-local (cloud metadata services live there)",
            ),
            ("224.0.0.0/4", "multicast"),
            ("240.0.0.0/4", "reserved and broadcast addresses"),
        ] {
            let bad: Ipv4Net = bad.parse().expect("constant network");
            if net.prefix_len() != 0
                && (bad.contains(&net.network()) || net.contains(&bad.network()))
            {
                self.err(
                    format!("{p}.cidr"),
                    format!("`{net}` overlaps {what} ({bad}), which is never forwarded"),
                );
            }
        }
        if let Some(pool) = pool
            && net.prefix_len() != 0
            && (pool.contains(&net.network()) || net.contains(&pool.network()))
        {
            self.err(format!("{p}.cidr"), format!("`{net}` overlaps the synthetic DNS pool {pool}; pick another range or move `dns.syntheticPool`"));
        }
        Some(CidrEntry {
            net,
            protocol: r.protocol,
            ports,
            comment: r.comment.clone(),
            origin: Origin {
                source,
                section: "cidr",
                index: i,
            },
        })
    }

    fn patterns(
        &mut self,
        section: &'static str,
        list: &[String],
        source: Source,
        allow_any: bool,
    ) -> Vec<PatternEntry> {
        list.iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let pattern = self.pattern(&format!("{section}[{i}]"), h, false, allow_any)?;
                Some(PatternEntry {
                    pattern,
                    origin: Origin {
                        source,
                        section,
                        index: i,
                    },
                })
            })
            .collect()
    }

    fn dns(&mut self, d: &DnsSettings) -> Option<Dns> {
        let pool = match d.synthetic_pool.parse::<Ipv4Net>() {
            Ok(pool) => {
                if pool.trunc() != pool {
                    self.err(
                        "dns.syntheticPool",
                        format!(
                            "`{pool}` has host bits set; did you mean `{}`?",
                            pool.trunc()
                        ),
                    );
                }
                if !(8..=28).contains(&pool.prefix_len()) {
                    self.err("dns.syntheticPool", format!("`{pool}` must be between a /8 and a /28 (a /16 such as `198.18.0.0/16` holds 65534 names)"));
                }
                let private = [
                    "10.0.0.0/8",
                    "172.16.0.0/12",
                    "192.168.0.0/16",
                    "100.64.0.0/10",
                    "198.18.0.0/15",
                ]
                .iter()
                .map(|s| s.parse::<Ipv4Net>().expect("constant network"))
                .any(|r| r.contains(&pool));
                if !private {
                    self.err("dns.syntheticPool", format!("`{pool}` is not inside a private or reserved range; synthetic addresses must never be real ones. Use a range inside 198.18.0.0/15, 100.64.0.0/10, 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"));
                }
                Some(pool)
            }
            Err(_) => {
                self.err(
                    "dns.syntheticPool",
                    format!(
                        "`{}` is not an IPv4 network in CIDR notation, e.g. `198.18.0.0/16`",
                        d.synthetic_pool
                    ),
                );
                None
            }
        };
        if d.ttl > 86_400 {
            self.err("dns.ttl", "at most 86400 seconds (one day)");
        }
        let upstream = d
            .upstream
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let parsed = s
                    .parse::<SocketAddr>()
                    .ok()
                    .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)));
                if parsed.is_none() {
                    self.err(format!("dns.upstream[{i}]"), format!("`{s}` is not an address; write `192.0.2.53` or `192.0.2.53:53` (names cannot be used: they would need DNS to resolve)"));
                }
                parsed
            })
            .collect();
        let forward = self.patterns("dns.forward", &d.forward, Source::Base, false);
        Some(Dns {
            synthetic_pool: pool?,
            ttl: d.ttl,
            upstream,
            forward,
        })
    }

    fn limits(&mut self, l: &Limits) {
        let mut range = |name: &str, v: u32, lo: u32, hi: u32| {
            if !(lo..=hi).contains(&v) {
                self.err(
                    format!("limits.{name}"),
                    format!("{v} is out of range; use {lo}..={hi}"),
                );
            }
        };
        range("dnsNames", l.dns_names, 16, 1 << 24);
        range("dnsConcurrency", l.dns_concurrency, 1, 65_536);
        range("dnsTcpIdleSecs", l.dns_tcp_idle_secs, 1, 3600);
        range(
            "dnsUpstreamTimeoutMs",
            l.dns_upstream_timeout_ms,
            50,
            60_000,
        );
        // The proxy's bounds, as docs/policy.md and the Nix options state them:
        // a zero timeout or connection limit would deny everything in ways
        // that look like an outage.
        range("proxyConnections", l.proxy_connections, 1, 1_000_000);
        range("headerBytes", l.header_bytes, 1024, 1 << 20);
        range("handshakeTimeoutMs", l.handshake_timeout_ms, 100, 120_000);
        range(
            "requestHeadTimeoutMs",
            l.request_head_timeout_ms,
            100,
            120_000,
        );
        range("idleTimeoutSecs", l.idle_timeout_secs, 1, 86_400);
        range("connectTimeoutMs", l.connect_timeout_ms, 100, 120_000);
        range("certCache", l.cert_cache, 1, 1 << 20);
        range(
            "wildcardNamesPerMinute",
            l.wildcard_names_per_minute,
            1,
            100_000,
        );
    }
}

impl Policy {
    /// Validates a base document (and an optional overlay) into the effective policy.
    /// Every problem is reported, not just the first.
    pub fn build(
        base: &PolicyDocument,
        overlay: Option<&OverlayDocument>,
    ) -> Result<Policy, (Vec<FieldError>, Vec<FieldError>)> {
        let mut c = Checker { errors: Vec::new() };
        c.version(base.version);
        let dns = c.dns(&base.dns);
        let pool = dns.as_ref().map(|d| d.synthetic_pool);
        let mut https: Vec<_> = base
            .https
            .iter()
            .enumerate()
            .filter_map(|(i, r)| c.https(i, r, Source::Base))
            .collect();
        let mut tcp: Vec<_> = base
            .tcp
            .iter()
            .enumerate()
            .filter_map(|(i, r)| c.tcp(i, r, Source::Base))
            .collect();
        let mut cidr: Vec<_> = base
            .cidr
            .iter()
            .enumerate()
            .filter_map(|(i, r)| c.cidr(i, r, Source::Base, pool))
            .collect();
        let mut deny = c.patterns("deny", &base.deny, Source::Base, true);
        c.limits(&base.limits);
        let base_errors = std::mem::take(&mut c.errors);

        if let Some(o) = overlay {
            c.version(o.version);
            https.extend(
                o.https
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| c.https(i, r, Source::Overlay)),
            );
            tcp.extend(
                o.tcp
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| c.tcp(i, r, Source::Overlay)),
            );
            cidr.extend(
                o.cidr
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| c.cidr(i, r, Source::Overlay, pool)),
            );
            deny.extend(c.patterns("deny", &o.deny, Source::Overlay, true));
        }
        let overlay_errors = c.errors;
        match dns {
            Some(dns) if base_errors.is_empty() && overlay_errors.is_empty() => Ok(Policy {
                https,
                tcp,
                cidr,
                deny,
                dns,
                limits: base.limits.clone(),
            }),
            _ => Err((base_errors, overlay_errors)),
        }
    }

    /// Reads and validates the base policy file and, when given, the overlay.
    /// A missing overlay file counts as an empty overlay.
    pub fn load(base_path: &Path, overlay_path: Option<&Path>) -> Result<Policy, PolicyError> {
        let base_name = base_path.display().to_string();
        let base = PolicyDocument::from_json(&base_name, &read(base_path)?)?;
        let overlay = match overlay_path {
            Some(p) if p.exists() => {
                let name = p.display().to_string();
                Some((name.clone(), OverlayDocument::from_json(&name, &read(p)?)?))
            }
            _ => None,
        };
        Policy::build(&base, overlay.as_ref().map(|(_, o)| o)).map_err(|(b, o)| {
            if !b.is_empty() {
                PolicyError::Invalid {
                    file: base_name,
                    errors: b,
                }
            } else {
                PolicyError::Invalid {
                    file: overlay.map(|(n, _)| n).unwrap_or_default(),
                    errors: o,
                }
            }
        })
    }

    fn denied_by(&self, name: &str) -> Option<Origin> {
        self.deny
            .iter()
            .find(|d| d.pattern.matches(name))
            .map(|d| d.origin)
    }

    /// The DNS decision for a name as asked on the wire.
    ///
    /// Security rule: only `Forward` ever causes an upstream query, and only
    /// for names a `dns.forward` entry covers and no `deny` entry does.
    /// Names that do not normalize (odd bytes, over-long) are denied.
    pub fn resolve_name(&self, raw: &str) -> NameDecision {
        let Ok(name) = normalize_host(raw) else {
            return NameDecision::Deny(DenyReason::InvalidName);
        };
        if let Some(o) = self.denied_by(&name) {
            return NameDecision::Deny(DenyReason::DeniedBy(o));
        }
        if let Some(f) = self.dns.forward.iter().find(|f| f.pattern.matches(&name)) {
            return NameDecision::Forward {
                origin: f.origin,
                name,
            };
        }
        let origin = self
            .https
            .iter()
            .find(|r| r.pattern.matches(&name))
            .map(|r| r.origin)
            .or_else(|| {
                self.tcp
                    .iter()
                    .find(|r| r.pattern.matches(&name))
                    .map(|r| r.origin)
            });
        match origin {
            Some(origin) => NameDecision::Synthetic { name, origin },
            None => NameDecision::Deny(DenyReason::NoRule),
        }
    }

    /// The decision for a connection to `name:port` (name already normalized).
    /// An HTTPS entry wins over a TCP entry for the same host and port.
    pub fn connection(&self, name: &str, port: u16) -> ConnDecision<'_> {
        if let Some(o) = self.denied_by(name) {
            return ConnDecision::Deny(DenyReason::DeniedBy(o));
        }
        if let Some(r) = self
            .https
            .iter()
            .find(|r| r.ports.contains(&port) && r.pattern.matches(name))
        {
            return ConnDecision::Https(r);
        }
        if let Some(r) = self
            .tcp
            .iter()
            .find(|r| r.ports.contains(&port) && r.pattern.matches(name))
        {
            return ConnDecision::Tcp(r);
        }
        ConnDecision::Deny(DenyReason::NoRule)
    }

    /// Every TCP port some host entry allows, sorted: the ports the firewall
    /// redirects to the transparent proxy. Port 80 is included whenever there
    /// is an HTTPS entry, so that cleartext HTTP gets an answer saying HTTPS
    /// is required instead of a bare reset.
    pub fn proxied_ports(&self) -> Vec<u16> {
        let cleartext = (!self.https.is_empty()).then_some(80);
        let mut v: Vec<u16> = self
            .https
            .iter()
            .flat_map(|r| r.ports.iter().copied())
            .chain(self.tcp.iter().flat_map(|r| r.ports.iter().copied()))
            .chain(cleartext)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// The command and Nix option that would allow `name`, for deny messages.
pub fn allow_hint(name: &str) -> String {
    format!(
        "run `cell allow https {name}`, or add `{{ host = \"{name}\"; }}` to `cell.policy.https`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(json: &str) -> Result<Policy, Vec<FieldError>> {
        let doc = PolicyDocument::from_json("test.json", json).expect("syntax");
        Policy::build(&doc, None).map_err(|(b, _)| b)
    }

    fn errors(json: &str) -> Vec<String> {
        build(json)
            .expect_err("should be invalid")
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let e =
            PolicyDocument::from_json("p.json", r#"{"https":[{"host":"a.com","method":["GET"]}]}"#)
                .unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("p.json: https[0]"), "{s}");
        assert!(s.contains("unknown field `method`"), "{s}");
        assert!(s.contains("methods"), "the expected names are listed: {s}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let e =
            PolicyDocument::from_json("p.json", r#"{"tcp":[{"host":"a.com","ports":[70000]}]}"#)
                .unwrap_err();
        assert!(e.to_string().starts_with("p.json: tcp[0].ports[0]"), "{e}");
    }

    #[test]
    fn known_providers_match_by_label() {
        for h in [
            "api.anthropic.com",
            "API.OpenAI.com.",
            "bedrock-runtime.us-east-1.amazonaws.com",
            "myorg.openai.azure.com",
        ] {
            assert!(known_provider(h), "{h}");
        }
        for h in [
            "anthropic.com",
            "evil-api.anthropic.com",
            "bedrock-runtime.amazonaws.com",
            "a.b.openai.azure.com",
            "api.openai.com.evil.test",
            "pypi.org",
        ] {
            assert!(!known_provider(h), "{h}");
        }
    }

    #[test]
    fn all_problems_reported_with_fixes() {
        let errs = errors(
            r#"{"https":[{"host":"*"},{"host":"a.com","methods":["G T"],"paths":["v1"]},{"host":"b.com","passthrough":true,"paths":["/x"]},{"host":"c.com","passthrough":true,"spy":true}],
                "tcp":[{"host":"10.0.0.1","ports":[22]},{"host":"git.example","ports":[]}],
                "cidr":[{"cidr":"10.1.2.3/24","protocol":"tcp","ports":[5432]},{"cidr":"169.254.169.254/32","protocol":"tcp","ports":[80]},{"cidr":"198.18.0.0/24","protocol":"tcp","ports":[1]},{"cidr":"fd00::/8","protocol":"tcp","ports":[1]}],
                "dns":{"syntheticPool":"8.8.0.0/16","upstream":["resolver.example"]},
                "limits":{"dnsNames":1,"handshakeTimeoutMs":0,"requestHeadTimeoutMs":0,"proxyConnections":0}}"#,
        );
        let expect = [
            "https[0].host: `*` alone would allow every host",
            "https[1].methods[0]: `G T` is not an HTTP method",
            "https[1].paths[0]: `v1` must start with `/`",
            "https[2].passthrough: a passthrough host is not decrypted",
            "https[3].spy: a passthrough host is not decrypted, so nothing of it can be recorded",
            "tcp[0].host: `10.0.0.1` is an IP address",
            "tcp[1].ports: needs at least one port",
            "cidr[0].cidr: `10.1.2.3/24` has host bits set; did you mean `10.1.2.0/24`?",
            "cidr[1].cidr: `169.254.169.254/32` overlaps link-local",
            "cidr[3].cidr: `fd00::/8` is IPv6",
            "dns.syntheticPool: `8.8.0.0/16` is not inside a private or reserved range",
            "dns.upstream[0]: `resolver.example` is not an address",
            "limits.dnsNames: 1 is out of range",
            "limits.handshakeTimeoutMs: 0 is out of range; use 100..=120000",
            "limits.requestHeadTimeoutMs: 0 is out of range",
            "limits.proxyConnections: 0 is out of range",
        ];
        for e in expect {
            assert!(
                errs.iter().any(|x| x.starts_with(e)),
                "missing {e:?} in {errs:#?}"
            );
        }
        // The pool was invalid, so the overlap check against it could not run; check it separately.
        let errs = errors(r#"{"cidr":[{"cidr":"198.18.0.0/24","protocol":"tcp","ports":[1]}]}"#);
        assert!(
            errs[0].contains("overlaps the synthetic DNS pool"),
            "{errs:?}"
        );
    }

    #[test]
    fn one_entry_makes_a_host_resolvable_and_reachable() {
        let p = build(r#"{"https":[{"host":"API.example.com."}],"tcp":[{"host":"git.example.org","ports":[22]}]}"#).unwrap();
        assert!(matches!(
            p.resolve_name("api.EXAMPLE.com"),
            NameDecision::Synthetic { .. }
        ));
        assert!(matches!(
            p.connection("api.example.com", 443),
            ConnDecision::Https(_)
        ));
        assert!(matches!(
            p.connection("api.example.com", 22),
            ConnDecision::Deny(_)
        ));
        assert!(matches!(
            p.resolve_name("git.example.org."),
            NameDecision::Synthetic { .. }
        ));
        assert!(matches!(
            p.connection("git.example.org", 22),
            ConnDecision::Tcp(_)
        ));
        assert!(matches!(
            p.resolve_name("other.example.com"),
            NameDecision::Deny(DenyReason::NoRule)
        ));
        assert_eq!(p.proxied_ports(), vec![22, 80, 443]);
    }

    #[test]
    fn deny_wins_and_overlay_merges() {
        let base = PolicyDocument::from_json(
            "b",
            r#"{"https":[{"host":"*.github.com"}],"deny":["gist.github.com"]}"#,
        )
        .unwrap();
        let overlay = OverlayDocument::from_json(
            "o",
            r#"{"https":[{"host":"pypi.org","ports":[443,8443]}],"deny":["evil.github.com"]}"#,
        )
        .unwrap();
        let p = Policy::build(&base, Some(&overlay)).unwrap();
        assert!(matches!(
            p.resolve_name("api.github.com"),
            NameDecision::Synthetic { .. }
        ));
        match p.resolve_name("gist.github.com") {
            NameDecision::Deny(DenyReason::DeniedBy(o)) => {
                assert_eq!(o.to_string(), "policy:deny[0]")
            }
            d => panic!("{d:?}"),
        }
        match p.resolve_name("evil.github.com") {
            NameDecision::Deny(DenyReason::DeniedBy(o)) => {
                assert_eq!(o.to_string(), "overlay:deny[0]")
            }
            d => panic!("{d:?}"),
        }
        match p.resolve_name("pypi.org") {
            NameDecision::Synthetic { origin, .. } => {
                assert_eq!(origin.to_string(), "overlay:https[0]")
            }
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            p.connection("gist.github.com", 443),
            ConnDecision::Deny(_)
        ));
        assert_eq!(p.proxied_ports(), vec![80, 443, 8443]);
    }

    #[test]
    fn overlay_cannot_touch_dns_or_limits() {
        let e =
            OverlayDocument::from_json("o.json", r#"{"dns":{"forward":["*.corp"]}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `dns`"), "{e}");
    }

    #[test]
    fn overlay_errors_are_reported_against_the_overlay() {
        let base = PolicyDocument::default();
        let overlay = OverlayDocument::from_json("o", r#"{"https":[{"host":"*"}]}"#).unwrap();
        let (b, o) = Policy::build(&base, Some(&overlay)).unwrap_err();
        assert!(b.is_empty());
        assert_eq!(o[0].path, "https[0].host");
    }

    #[test]
    fn forward_and_invalid_names() {
        let p = build(r#"{"tcp":[{"host":"db.corp.example","ports":[5432]}],"dns":{"forward":["*.corp.example"]}}"#).unwrap();
        assert!(matches!(
            p.resolve_name("db.corp.example"),
            NameDecision::Forward { .. }
        ));
        assert!(matches!(
            p.resolve_name("corp.example"),
            NameDecision::Deny(DenyReason::NoRule)
        ));
        assert!(matches!(
            p.resolve_name("a\\000.corp.example"),
            NameDecision::Deny(DenyReason::InvalidName)
        ));
        assert!(errors(r#"{"dns":{"forward":["*"]}}"#)[0].starts_with("dns.forward[0]"));
    }

    #[test]
    fn idna_names_match_both_spellings() {
        let p = build(r#"{"https":[{"host":"bücher.example"}]}"#).unwrap();
        assert!(matches!(
            p.resolve_name("xn--bcher-kva.example"),
            NameDecision::Synthetic { .. }
        ));
        assert!(matches!(
            p.resolve_name("BÜCHER.example"),
            NameDecision::Synthetic { .. }
        ));
    }
}
