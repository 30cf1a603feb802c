//! Hostnames and host patterns.
//!
//! Every name that reaches a policy decision — from the policy file, from a DNS
//! question on the wire, from a TLS SNI or an HTTP `Host` header — goes through
//! [`normalize_host`] first, so that `API.Example.COM.`, `api.example.com` and
//! the Unicode and punycode spellings of an IDN all compare equal. A name that
//! does not normalize is never allowed.

use std::fmt;
use std::net::Ipv4Addr;

/// Longest name we accept, in presentation form without the trailing dot (RFC 1035).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// Why a hostname was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the name is empty")]
    Empty,
    #[error("`{0}` is an IP address, not a hostname")]
    IpLiteral(String),
    #[error("`{0}` is not a valid internationalized domain name")]
    Idna(String),
    #[error("`{name}` has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel { name: String },
    #[error("`{name}` has a label longer than 63 characters")]
    LabelTooLong { name: String },
    #[error("`{name}` is longer than 253 characters")]
    TooLong { name: String },
    #[error("`{name}` contains `{ch}`; hostnames may contain only letters, digits, `-` and `_`")]
    BadChar { name: String, ch: char },
    #[error("`{name}` has a label that starts or ends with `-`")]
    Hyphen { name: String },
}

/// Normalizes a hostname for comparison: lowercase ASCII, no trailing dot,
/// internationalized names in their punycode (`xn--`) form.
///
/// Rejects IP literals, empty labels, over-long names and characters outside
/// letters, digits, `-` and `_`.
pub fn normalize_host(input: &str) -> Result<String, HostError> {
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty() {
        return Err(HostError::Empty);
    }
    if trimmed.contains(':') || trimmed.parse::<Ipv4Addr>().is_ok() {
        return Err(HostError::IpLiteral(input.to_string()));
    }
    let ascii = if trimmed.is_ascii() {
        trimmed.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(trimmed).map_err(|_| HostError::Idna(input.to_string()))?
    };
    if ascii.len() > MAX_NAME_LEN {
        return Err(HostError::TooLong { name: ascii });
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel { name: ascii });
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostError::LabelTooLong { name: ascii });
        }
        if let Some(ch) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(HostError::BadChar { name: ascii, ch });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostError::Hyphen { name: ascii });
        }
    }
    // An all-numeric dotted name such as `10.0.0.1` was caught above; a name like
    // `1.2.3` is not an address to the kernel either, so it is a (strange) name.
    Ok(ascii)
}

/// Which names a rule covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this (normalized) name.
    Exact(String),
    /// Any name strictly below `suffix` (any depth); the bare `suffix` itself
    /// only when `include_apex` is set. Written `*.suffix`.
    Suffix { suffix: String, include_apex: bool },
    /// Every name. Written `*`, and only accepted when the rule says so
    /// explicitly (`allowAnyHost: true`).
    Any,
}

/// Why a host pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("{0}")]
    Host(#[from] HostError),
    #[error(
        "`*` alone would allow every host; name the host (`api.example.com`), a wildcard (`*.example.com`), or set `allowAnyHost: true` on this entry if every host is really what you want"
    )]
    BareStar,
    #[error(
        "`{0}` puts `*` somewhere other than the whole leftmost label; write `*.example.com` (it matches every name below example.com, at any depth)"
    )]
    MisplacedStar(String),
    #[error(
        "`{0}` would allow every name under a top-level domain; name the domains you need (`*.example.com`), or set `allowAnyHost: true` if that is really what you want"
    )]
    TopLevelWildcard(String),
    #[error("`includeApex` only makes sense on a wildcard (`*.example.com`); remove it")]
    ApexWithoutWildcard,
}

impl HostPattern {
    /// Parses a pattern as written in a policy. `include_apex` extends a
    /// wildcard to its bare suffix; `allow_any` permits `*` and top-level
    /// wildcards.
    pub fn parse(input: &str, include_apex: bool, allow_any: bool) -> Result<Self, PatternError> {
        if input == "*" {
            if include_apex {
                return Err(PatternError::ApexWithoutWildcard);
            }
            return if allow_any {
                Ok(HostPattern::Any)
            } else {
                Err(PatternError::BareStar)
            };
        }
        if let Some(rest) = input.strip_prefix("*.") {
            if rest.contains('*') {
                return Err(PatternError::MisplacedStar(input.to_string()));
            }
            let suffix = normalize_host(rest)?;
            if !suffix.contains('.') && !allow_any {
                return Err(PatternError::TopLevelWildcard(input.to_string()));
            }
            return Ok(HostPattern::Suffix {
                suffix,
                include_apex,
            });
        }
        if input.contains('*') {
            return Err(PatternError::MisplacedStar(input.to_string()));
        }
        if include_apex {
            return Err(PatternError::ApexWithoutWildcard);
        }
        Ok(HostPattern::Exact(normalize_host(input)?))
    }

    /// Whether `name` (already normalized with [`normalize_host`]) is covered.
    /// Does this pattern match more than one name (a wildcard, or `*`)?
    pub fn is_wildcard(&self) -> bool {
        !matches!(self, HostPattern::Exact(_))
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => exact == name,
            HostPattern::Suffix {
                suffix,
                include_apex,
            } => {
                if name.len() == suffix.len() {
                    *include_apex && name == suffix
                } else {
                    name.len() > suffix.len() + 1
                        && name.ends_with(suffix.as_str())
                        && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
                }
            }
            HostPattern::Any => true,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Suffix {
                suffix,
                include_apex: false,
            } => write!(f, "*.{suffix}"),
            HostPattern::Suffix {
                suffix,
                include_apex: true,
            } => write!(f, "*.{suffix} (and {suffix})"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalizes_case_trailing_dot_and_idna() {
        assert_eq!(
            normalize_host("API.Example.COM.").unwrap(),
            "api.example.com"
        );
        assert_eq!(
            normalize_host("Bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            normalize_host("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            normalize_host("_ssh._tcp.example").unwrap(),
            "_ssh._tcp.example"
        );
    }

    #[test]
    fn rejects_what_is_not_a_hostname() {
        assert!(matches!(normalize_host(""), Err(HostError::Empty)));
        assert!(matches!(normalize_host("."), Err(HostError::Empty)));
        assert!(matches!(
            normalize_host("10.0.0.1"),
            Err(HostError::IpLiteral(_))
        ));
        assert!(matches!(
            normalize_host("::1"),
            Err(HostError::IpLiteral(_))
        ));
        assert!(matches!(
            normalize_host("a..b"),
            Err(HostError::EmptyLabel { .. })
        ));
        assert!(matches!(
            normalize_host("a b.com"),
            Err(HostError::BadChar { .. })
        ));
        assert!(matches!(
            normalize_host("a\\000.com"),
            Err(HostError::BadChar { .. })
        ));
        assert!(matches!(
            normalize_host("-a.com"),
            Err(HostError::Hyphen { .. })
        ));
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(matches!(
            normalize_host(&long_label),
            Err(HostError::LabelTooLong { .. })
        ));
        let long_name = ["abcdefghij"; 26].join(".");
        assert!(matches!(
            normalize_host(&long_name),
            Err(HostError::TooLong { .. })
        ));
    }

    #[test]
    fn wildcard_never_matches_bare_suffix_unless_asked() {
        let p = HostPattern::parse("*.example.com", false, false).unwrap();
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
        assert!(!p.matches("example.com.evil"));
        let apex = HostPattern::parse("*.example.com", true, false).unwrap();
        assert!(apex.matches("example.com"));
        assert!(apex.matches("a.example.com"));
    }

    #[test]
    fn star_rules() {
        assert_eq!(
            HostPattern::parse("*", false, false),
            Err(PatternError::BareStar)
        );
        assert_eq!(HostPattern::parse("*", false, true), Ok(HostPattern::Any));
        assert!(matches!(
            HostPattern::parse("a.*.com", false, false),
            Err(PatternError::MisplacedStar(_))
        ));
        assert!(matches!(
            HostPattern::parse("*foo.com", false, false),
            Err(PatternError::MisplacedStar(_))
        ));
        assert!(matches!(
            HostPattern::parse("*.com", false, false),
            Err(PatternError::TopLevelWildcard(_))
        ));
        assert!(HostPattern::parse("*.com", false, true).is_ok());
        assert_eq!(
            HostPattern::parse("example.com", true, false),
            Err(PatternError::ApexWithoutWildcard)
        );
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"
    }

    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(label(), 1..5).prop_map(|l| l.join("."))
    }

    proptest! {
        /// Normalization is idempotent, and case or a trailing dot never change the result.
        #[test]
        fn normalize_is_idempotent(n in name(), upper in any::<bool>(), dot in any::<bool>()) {
            let mut spelled = if upper { n.to_ascii_uppercase() } else { n.clone() };
            if dot { spelled.push('.'); }
            if let Ok(norm) = normalize_host(&spelled) {
                prop_assert_eq!(normalize_host(&norm).unwrap(), norm.clone());
                prop_assert_eq!(norm, n.to_ascii_lowercase());
            }
        }

        /// An exact pattern matches its own name in any spelling, and nothing else.
        #[test]
        fn exact_matches_only_itself(a in name(), b in name()) {
            prop_assume!(normalize_host(&a).is_ok() && normalize_host(&b).is_ok());
            let p = HostPattern::parse(&a.to_ascii_uppercase(), false, false).unwrap();
            prop_assert!(p.matches(&normalize_host(&a).unwrap()));
            prop_assert_eq!(p.matches(&normalize_host(&b).unwrap()), a == b);
        }

        /// `*.suffix` matches exactly the names that end in `.suffix`, at any depth,
        /// and the bare suffix only with `includeApex`.
        #[test]
        fn wildcard_semantics(prefix in name(), suffix in name(), other in name(), apex in any::<bool>()) {
            prop_assume!(suffix.contains('.'));
            prop_assume!(normalize_host(&suffix).is_ok() && normalize_host(&prefix).is_ok());
            let p = HostPattern::parse(&format!("*.{suffix}"), apex, false).unwrap();
            let below = format!("{prefix}.{suffix}");
            if normalize_host(&below).is_ok() {
                prop_assert!(p.matches(&below));
            }
            prop_assert_eq!(p.matches(&suffix), apex);
            // Gluing text onto the suffix without a dot never matches.
            let glued = format!("{prefix}{suffix}");
            let dotted = format!(".{suffix}");
            prop_assert!(!p.matches(&glued) || glued.ends_with(&dotted));
            if let Ok(o) = normalize_host(&other) {
                let expected = o.ends_with(&format!(".{suffix}")) || (apex && o == suffix);
                prop_assert_eq!(p.matches(&o), expected);
            }
        }
    }
}
