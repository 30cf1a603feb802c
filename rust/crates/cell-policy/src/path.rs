//! HTTP path patterns and request-path normalization.
//!
//! A pattern is matched against the request path without its query string.
//! `*` matches any run of characters inside one segment (never `/`); `**`
//! matches any run of characters including `/`. Everything else is literal.
//!
//! Security rule: a request path that could mean two different things to the
//! proxy and to the upstream server (`..` or `.` segments, encoded `/`, `\` or
//! `.`, a backslash, a fragment, control characters) is never matched by any
//! pattern — see [`normalize_request_path`]. A rule with path patterns
//! therefore denies such requests instead of guessing.

use std::fmt;

/// A validated path pattern (`/repos/*/issues`, `/v1/**`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
}

/// Why a path pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathPatternError {
    #[error("`{0}` must start with `/` (patterns match the request path, e.g. `/v1/**`)")]
    NoLeadingSlash(String),
    #[error(
        "`{0}` contains `?` or `#`; patterns match the path only, without the query string or fragment"
    )]
    QueryOrFragment(String),
    #[error("`{0}` contains `***`; use `*` (one segment) or `**` (any depth)")]
    TripleStar(String),
    #[error("`{0}` contains a space or control character")]
    BadChar(String),
    #[error("`{0}` contains a `.` or `..` segment, which no normalized request path has")]
    DotSegment(String),
}

impl PathPattern {
    pub fn parse(input: &str) -> Result<Self, PathPatternError> {
        if !input.starts_with('/') {
            return Err(PathPatternError::NoLeadingSlash(input.into()));
        }
        if input.contains('?') || input.contains('#') {
            return Err(PathPatternError::QueryOrFragment(input.into()));
        }
        if input.contains("***") {
            return Err(PathPatternError::TripleStar(input.into()));
        }
        if input.chars().any(|c| c.is_control() || c == ' ') {
            return Err(PathPatternError::BadChar(input.into()));
        }
        if input.split('/').any(|s| s == "." || s == "..") {
            return Err(PathPatternError::DotSegment(input.into()));
        }
        Ok(PathPattern {
            source: input.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the normalized `path` (see [`normalize_request_path`]) matches.
    pub fn matches(&self, path: &str) -> bool {
        glob_match(self.source.as_bytes(), path.as_bytes())
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Iterative glob matcher with one backtrack point per star kind; linear in
/// practice and never recursive, so a hostile path cannot blow the stack.
fn glob_match(pat: &[u8], text: &[u8]) -> bool {
    // Dynamic programming over pattern tokens keeps the worst case at
    // O(len(pat) * len(text)), both of which are bounded (policy size, header limit).
    #[derive(Clone, Copy)]
    enum Tok {
        Lit(u8),
        Star,
        DoubleStar,
    }
    let mut toks = Vec::with_capacity(pat.len());
    let mut i = 0;
    while i < pat.len() {
        if pat[i] == b'*' {
            if pat.get(i + 1) == Some(&b'*') {
                toks.push(Tok::DoubleStar);
                i += 2;
            } else {
                toks.push(Tok::Star);
                i += 1;
            }
        } else {
            toks.push(Tok::Lit(pat[i]));
            i += 1;
        }
    }
    // reach[j] = pattern prefix of length t can match text prefix of length j.
    let mut reach = vec![false; text.len() + 1];
    reach[0] = true;
    for tok in toks {
        let mut next = vec![false; text.len() + 1];
        match tok {
            Tok::Lit(c) => {
                for j in 0..text.len() {
                    if reach[j] && text[j] == c {
                        next[j + 1] = true;
                    }
                }
            }
            Tok::Star | Tok::DoubleStar => {
                let crosses = matches!(tok, Tok::DoubleStar);
                let mut carry = false;
                for j in 0..=text.len() {
                    carry |= reach[j];
                    next[j] = carry;
                    if j < text.len() && text[j] == b'/' && !crosses {
                        carry = false;
                    }
                }
            }
        }
        reach = next;
    }
    reach[text.len()]
}

/// Turns a request target into the path that patterns are matched against:
/// the part before `?`. Returns `None` for any path whose meaning could differ
/// between us and the upstream server, so that it is denied rather than
/// matched: not starting with `/`, `.`/`..` segments, `\`, encoded `/`, `\`,
/// `.` or `%` of any case, a fragment, or control characters and spaces.
pub fn normalize_request_path(target: &str) -> Option<&str> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if !path.starts_with('/') || path.contains('#') || path.contains('\\') {
        return None;
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b >= 0x80)
    {
        return None;
    }
    let lower = path.to_ascii_lowercase();
    for bad in ["%2f", "%5c", "%2e", "%25", "%00"] {
        if lower.contains(bad) {
            return None;
        }
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return None;
    }
    Some(path)
}

/// Validates and normalizes an HTTP method name (RFC 9110 token), uppercased.
pub fn normalize_method(input: &str) -> Option<String> {
    let ok = !input.is_empty()
        && input.len() <= 32
        && input
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then(|| input.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, t: &str) -> bool {
        PathPattern::parse(p).unwrap().matches(t)
    }

    #[test]
    fn stars() {
        assert!(m("/v1/messages", "/v1/messages"));
        assert!(!m("/v1/messages", "/v1/messages/x"));
        assert!(m("/repos/*/issues", "/repos/cell/issues"));
        assert!(!m("/repos/*/issues", "/repos/a/b/issues"));
        assert!(m("/repos/**", "/repos/a/b/c"));
        assert!(m("/repos/**", "/repos/"));
        assert!(!m("/repos/**", "/repos"));
        assert!(m("/**", "/"));
        assert!(m("/*.tar.gz", "/x.tar.gz"));
        assert!(!m("/*.tar.gz", "/a/x.tar.gz"));
        assert!(m("/a/**/z", "/a/b/c/z"));
    }

    #[test]
    fn pattern_errors() {
        assert!(matches!(
            PathPattern::parse("v1"),
            Err(PathPatternError::NoLeadingSlash(_))
        ));
        assert!(matches!(
            PathPattern::parse("/a?b"),
            Err(PathPatternError::QueryOrFragment(_))
        ));
        assert!(matches!(
            PathPattern::parse("/***"),
            Err(PathPatternError::TripleStar(_))
        ));
        assert!(matches!(
            PathPattern::parse("/a/../b"),
            Err(PathPatternError::DotSegment(_))
        ));
    }

    #[test]
    fn ambiguous_request_paths_are_refused() {
        assert_eq!(normalize_request_path("/a/b?x=1"), Some("/a/b"));
        for bad in [
            "/a/../admin",
            "/a/./b",
            "/a%2fb",
            "/a%2Fb",
            "/%2e%2e/admin",
            "/a\\b",
            "/a%5cb",
            "/a%252fb",
            "relative",
            "/a#frag",
            "/a b",
            "/a\u{0}b",
        ] {
            assert_eq!(normalize_request_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn methods() {
        assert_eq!(normalize_method("get").as_deref(), Some("GET"));
        assert_eq!(normalize_method("PROPFIND").as_deref(), Some("PROPFIND"));
        assert_eq!(normalize_method("G ET"), None);
        assert_eq!(normalize_method(""), None);
    }

    /// Reference matcher: a straightforward recursive definition.
    fn reference(p: &[u8], t: &[u8]) -> bool {
        if p.is_empty() {
            return t.is_empty();
        }
        if p.starts_with(b"**") {
            return (0..=t.len()).any(|k| reference(&p[2..], &t[k..]));
        }
        if p[0] == b'*' {
            return (0..=t.len())
                .take_while(|&k| k == 0 || t[k - 1] != b'/')
                .any(|k| reference(&p[1..], &t[k..]));
        }
        !t.is_empty() && t[0] == p[0] && reference(&p[1..], &t[1..])
    }

    proptest! {
        /// The iterative matcher agrees with the recursive definition.
        #[test]
        fn matcher_agrees_with_reference(p in "/[ab/*]{0,8}", t in "/[ab/]{0,10}") {
            prop_assume!(!p.contains("***"));
            prop_assert_eq!(glob_match(p.as_bytes(), t.as_bytes()), reference(p.as_bytes(), t.as_bytes()));
        }

        /// A single `*` never lets a match cross a `/`.
        #[test]
        fn star_never_crosses_slash(a in "[a-z]{1,5}", b in "[a-z]{1,5}") {
            let p = PathPattern::parse("/x/*").unwrap();
            let crossing = format!("/x/{a}/{b}");
            prop_assert!(!p.matches(&crossing));
        }
    }
}
