//! HTTP path patterns and request-path normalization.
//!
//! A pattern is matched against the request path without its query string.
//! `*` matches any run of characters inside one segment (never `/`); `**`
//! matches any run of characters including `/`. Everything else is literal.
//!
//! Security rule: a request path that could mean two different things to the
//! proxy and to the upstream server is never matched by any pattern — see
//! [`normalize_request_path`]. A rule with path patterns therefore denies such
//! requests instead of guessing. The servers it is checked against
//! ([`views`]): nginx (one decode, dot segments merged), Go's `net/http`,
//! Node's WHATWG URL parser (`%2e` as `.`, `\` as `/`), Tomcat, Jetty and
//! Spring (`;` parameters stripped from each segment, so `..;` is `..`, and a
//! second decode), and Unicode-folding servers (fullwidth `．`, overlong
//! UTF-8, IIS `%u002e`). Every path the proxy lets through under a pattern
//! still matches it after each of those (a property test, and `rust/fuzz`).

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
    ///
    /// Security rule: a path with `;` parameters must match both as sent and
    /// with the parameters stripped from every segment (what Tomcat, Jetty
    /// and Spring route on), so `/x/a;.json` is not a `/x/*.json` file.
    pub fn matches(&self, path: &str) -> bool {
        glob_match(self.source.as_bytes(), path.as_bytes())
            && (!path.contains(';')
                || glob_match(
                    strip_parameters(&self.source).as_bytes(),
                    strip_parameters(path).as_bytes(),
                ))
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
/// matched:
/// - not starting with `/`; a fragment; a space, control or non-ASCII byte;
///   a backslash (Tomcat, Node and IIS read it as `/`);
/// - a `%` that does not start a valid escape (`%2%65.` is `%2e.` decoded
///   once, `..` decoded twice; `%u002e` is IIS's `.`);
/// - an escape of `/`, `\`, `.`, `%`, `;`, a control character, or bytes
///   that are not valid UTF-8 once decoded (overlong `%c0%ae` is `.` to a
///   lenient decoder), or a character servers fold into one of those
///   (fullwidth `．` `／`, `‥`, …; see [`folds_to_syntax`]);
/// - a segment that is `.`, `..` or only dots and spaces, also once its `;`
///   parameters are stripped (`..;`, `..;x=1`, `.;`) and decoded (`..%20`);
/// - an empty segment (`//`, `/;x/`) other than a trailing `/` (nginx and
///   Go merge slashes, which would move a `*` match).
pub fn normalize_request_path(target: &str) -> Option<&str> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if !path.starts_with('/') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|&h| hex(h))?;
            let lo = bytes.get(i + 2).and_then(|&l| hex(l))?;
            let d = hi << 4 | lo;
            if matches!(d, b'/' | b'\\' | b'.' | b'%' | b';') || d.is_ascii_control() {
                return None;
            }
            decoded.push(d);
            i += 3;
        } else {
            if b.is_ascii_control() || b >= 0x80 || matches!(b, b' ' | b'#' | b'\\') {
                return None;
            }
            decoded.push(b);
            i += 1;
        }
    }
    let decoded = std::str::from_utf8(&decoded).ok()?;
    if decoded.chars().any(folds_to_syntax) {
        return None;
    }
    // `/` and `;` are never decoded from an escape, so the decoded path has
    // the same segments and parameters as the raw one.
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    for (k, segment) in segments.iter().enumerate() {
        let bare = segment.split(';').next().unwrap_or_default();
        let trailing = k + 1 == segments.len() && segment.is_empty();
        if bare.is_empty() && !trailing {
            return None;
        }
        if !bare.is_empty() && bare.chars().all(|c| c == '.' || c == ' ') {
            return None;
        }
    }
    Some(path)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Characters some server folds into URL syntax (`.`, `/`, `\`, `;`, `%`,
/// `?`, `#`) or into nothing: NFKC compatibility forms (fullwidth and small
/// forms, one- and two-dot leaders, ellipsis, the Greek question mark that
/// NFC makes `;`), Windows best-fit slashes, C1 controls, and invisible
/// spaces and joiners. Refused when decoded from a path on a path-restricted
/// host.
pub fn folds_to_syntax(c: char) -> bool {
    matches!(c,
        '\u{80}'..='\u{a0}'
        | '\u{ad}'
        | '\u{37e}'
        | '\u{2000}'..='\u{200f}'
        | '\u{2024}'..='\u{2026}'
        | '\u{2028}'..='\u{202f}'
        | '\u{2044}'
        | '\u{205f}'..='\u{2064}'
        | '\u{2215}'
        | '\u{29f5}'
        | '\u{29f8}'
        | '\u{3002}'
        | '\u{fe10}'..='\u{fe19}'
        | '\u{fe50}'..='\u{fe6f}'
        | '\u{feff}'
        | '\u{ff00}'..='\u{ffef}'
    )
}

/// The path with each segment's `;` parameters removed (`/a;x/b;y` → `/a/b`).
fn strip_parameters(path: &str) -> String {
    path.split('/')
        .map(|s| s.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

/// How common servers turn a request path into the path they route on, for
/// the property that a path let through under a pattern still matches it
/// there. Each view returns `None` where that server refuses the path.
#[doc(hidden)]
pub mod views {
    /// One percent-decoding pass (invalid escapes stay literal, as nginx).
    pub fn decode(path: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(path.len());
        let mut i = 0;
        while i < path.len() {
            if path[i] == b'%'
                && let (Some(h), Some(l)) = (
                    path.get(i + 1).and_then(|&b| super::hex(b)),
                    path.get(i + 2).and_then(|&b| super::hex(b)),
                )
            {
                out.push(h << 4 | l);
                i += 3;
            } else {
                out.push(path[i]);
                i += 1;
            }
        }
        out
    }

    /// RFC 3986 §5.2.4 dot-segment removal, with empty segments merged
    /// (nginx `merge_slashes`, Go `path.Clean`); a trailing `/` is kept.
    pub fn clean(path: &[u8]) -> Vec<u8> {
        let mut out: Vec<&[u8]> = Vec::new();
        let segments: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        let mut trailing = false;
        for (k, s) in segments.iter().enumerate() {
            let last = k + 1 == segments.len();
            match *s {
                b"." => trailing = last,
                b".." => {
                    out.pop();
                    trailing = last;
                }
                b"" => trailing = last && k > 0,
                s => {
                    out.push(s);
                    trailing = false;
                }
            }
        }
        let mut r = Vec::new();
        for s in &out {
            r.push(b'/');
            r.extend_from_slice(s);
        }
        if r.is_empty() || trailing {
            r.push(b'/');
        }
        r
    }

    /// nginx, Go `net/http`: decode once, then clean.
    pub fn nginx(path: &str) -> Vec<u8> {
        clean(&decode(path.as_bytes()))
    }

    /// Node / WHATWG URL: `\` is `/`, `%2e` counts as `.` in dot segments,
    /// cleaned, then the application decodes once.
    pub fn whatwg(path: &str) -> Vec<u8> {
        let slashed = path.replace('\\', "/");
        let dotted: Vec<String> = slashed
            .split('/')
            .map(|s| {
                let l = s.to_ascii_lowercase();
                match l.as_str() {
                    "%2e" => ".".into(),
                    ".%2e" | "%2e." | "%2e%2e" => "..".into(),
                    _ => s.to_string(),
                }
            })
            .collect();
        decode(&clean(dotted.join("/").as_bytes()))
    }

    /// Tomcat / Jetty / Spring: `\` as `/`, `;` parameters stripped from each
    /// segment, decoded twice (an application decoding again), cleaned.
    pub fn tomcat(path: &str) -> Vec<u8> {
        let stripped = super::strip_parameters(&path.replace('\\', "/"));
        clean(&decode(&decode(stripped.as_bytes())))
    }

    /// Unicode-folding servers: decoded with a lenient UTF-8 decoder that
    /// accepts overlong forms, IIS `%uXXXX` escapes, fullwidth forms folded
    /// to ASCII, dot leaders to dots; then cleaned.
    pub fn folding(path: &str) -> Vec<u8> {
        let b = path.as_bytes();
        let mut raw = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && matches!(b.get(i + 1), Some(b'u' | b'U'))
                && let Some(cp) = b
                    .get(i + 2..i + 6)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
            {
                let mut buf = [0; 4];
                let c = char::from_u32(cp).unwrap_or('\u{fffd}');
                raw.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                i += 6;
            } else {
                raw.push(b[i]);
                i += 1;
            }
        }
        let bytes = decode(&raw);
        let mut out = String::new();
        let mut k = 0;
        while k < bytes.len() {
            let (c, n) = lenient_utf8(&bytes[k..]);
            k += n;
            match c {
                '\u{ff01}'..='\u{ff5e}' => out.push(char::from_u32(c as u32 - 0xfee0).unwrap_or(c)),
                '\u{2024}' | '\u{fe52}' | '\u{3002}' => out.push('.'),
                '\u{2025}' => out.push_str(".."),
                '\u{2026}' => out.push_str("..."),
                '\u{2215}' | '\u{2044}' | '\u{29f8}' => out.push('/'),
                '\u{29f5}' | '\u{fe68}' => out.push('\\'),
                '\u{37e}' => out.push(';'),
                c => out.push(c),
            }
        }
        clean(out.replace('\\', "/").as_bytes())
    }

    /// One character from `b`, overlong forms accepted; invalid bytes as U+FFFD.
    fn lenient_utf8(b: &[u8]) -> (char, usize) {
        let n = match b[0] {
            0x00..=0x7f => return (b[0] as char, 1),
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => return ('\u{fffd}', 1),
        };
        if b.len() < n || !b[1..n].iter().all(|&c| c & 0xc0 == 0x80) {
            return ('\u{fffd}', 1);
        }
        let mut cp = u32::from(b[0]) & (0x7f >> n);
        for &c in &b[1..n] {
            cp = cp << 6 | u32::from(c & 0x3f);
        }
        (char::from_u32(cp).unwrap_or('\u{fffd}'), n)
    }

    /// Every server's view of `path`, named.
    pub fn all(path: &str) -> [(&'static str, Vec<u8>); 4] {
        [
            ("nginx", nginx(path)),
            ("whatwg", whatwg(path)),
            ("tomcat", tomcat(path)),
            ("folding", folding(path)),
        ]
    }
}

/// The property `rust/fuzz` and the tests check: if the proxy lets `target`
/// through under `pattern`, every server view of it still matches `pattern`.
/// Patterns here hold no `%` (a literal escape in a pattern names the decoded
/// character, which this check does not model). Returns the first broken view.
#[doc(hidden)]
pub fn check_views(pattern: &PathPattern, target: &str) -> Result<(), String> {
    let Some(path) = normalize_request_path(target) else {
        return Ok(());
    };
    if !pattern.matches(path) || pattern.as_str().contains('%') {
        return Ok(());
    }
    for (name, view) in views::all(path) {
        let pat = strip_parameters(pattern.as_str());
        if !glob_match(pattern.as_str().as_bytes(), &view) && !glob_match(pat.as_bytes(), &view) {
            let view = String::from_utf8_lossy(&view);
            return Err(format!(
                "{target:?} passes {pattern} but {name} reads {view:?}"
            ));
        }
    }
    Ok(())
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
            "/a%00b",
            "/a//b",
        ] {
            assert_eq!(normalize_request_path(bad), None, "{bad}");
        }
    }

    /// Issue 17 finding 2: a `%` that starts no valid escape is refused
    /// (`%2%65.` decodes once to `%2e.`, and twice to `..`).
    #[test]
    fn invalid_escapes_are_refused() {
        for bad in [
            "/allowed/%2%65./",
            "/allowed/%",
            "/allowed/%2",
            "/allowed/%zz",
            "/allowed/%%32%65",
            "/allowed/%u002e",
        ] {
            assert_eq!(normalize_request_path(bad), None, "{bad}");
        }
        for good in ["/allowed/%41", "/allowed/a%20b", "/allowed/%e2%9c%93"] {
            assert_eq!(normalize_request_path(good), Some(good), "{good}");
        }
    }

    /// Issue 11 finding 4: shapes Tomcat, Jetty, Spring, IIS or a lenient
    /// UTF-8 decoder read as `..` are refused, with their relatives.
    #[test]
    fn dot_segments_in_disguise_are_refused() {
        let allowed = PathPattern::parse("/allowed/**").unwrap();
        for bad in [
            "/allowed/..;/denied",
            "/allowed/..;x=1/denied",
            "/allowed/.;/denied",
            "/allowed/..;x/..;y/denied",
            "/allowed/%c0%ae%c0%ae/denied",
            "/allowed/%e0%80%ae./denied",
            "/allowed/%u002e%u002e/denied",
            "/allowed/%U002E%U002E/denied",
            "/allowed/%ef%bc%8e%ef%bc%8e/denied",
            "/allowed/%e2%80%a5/denied",
            "/allowed/..%20/denied",
            "/allowed/.../denied",
            "/allowed/..%3b/denied",
            "/allowed/;/denied",
            "/allowed\\..\\denied",
            "/allowed/%5c../denied",
            "/allowed/%00/denied",
            "/allowed/%ef%bc%8fdenied",
            "/allowed/%c2%85",
        ] {
            assert_eq!(normalize_request_path(bad), None, "{bad}");
            assert!(check_views(&allowed, bad).is_ok());
        }
        // Parameters elsewhere still pass, but must match with and without them.
        assert!(allowed.matches("/allowed/a;v=1/b"));
        let json = PathPattern::parse("/x/*.json").unwrap();
        assert!(json.matches("/x/a.json"));
        assert!(!json.matches("/x/a;.json"), "Tomcat serves /x/a");
        assert_eq!(normalize_request_path("/x/a;v=1"), Some("/x/a;v=1"));
    }

    #[test]
    fn methods() {
        assert_eq!(normalize_method("get").as_deref(), Some("GET"));
        assert_eq!(normalize_method("PROPFIND").as_deref(), Some("PROPFIND"));
        assert_eq!(normalize_method("G ET"), None);
        assert_eq!(normalize_method(""), None);
    }

    /// Building blocks of hostile paths: every disguise of `.`, `/`, `\\`,
    /// `;` and `%` the servers in [`views`] know, and plain text.
    const PIECES: &[&str] = &[
        "allowed",
        "allowed/",
        "denied",
        "a",
        "x/",
        "/",
        ".",
        "..",
        ".json",
        ";",
        ";x=1",
        "%2e",
        "%2E",
        "%2f",
        "%5c",
        "%25",
        "%32%65",
        "%2",
        "%",
        "%41",
        "%20",
        "%3b",
        "%00",
        "%c0%ae",
        "%c0%af",
        "%e0%80%ae",
        "%u002e",
        "%u002f",
        "%ef%bc%8e",
        "%ef%bc%8f",
        "%e2%80%a4",
        "%e2%80%a5",
        "%cd%be",
        "%e2%88%95",
        "\\",
        "%e2%9c%93",
        "?q",
        "#f",
    ];
    const PATTERNS: &[&str] = &[
        "/allowed/**",
        "/allowed/*",
        "/allowed/*/x",
        "/x/*.json",
        "/*/allowed/**",
        "/**",
        "/a*/**",
    ];

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

        /// Issue 11 finding 4: any path the proxy lets through under a pattern
        /// still matches that pattern as nginx, Go, Node, Tomcat/Spring and
        /// Unicode-folding servers read it.
        #[test]
        fn passed_paths_match_in_every_server_view(
            parts in prop::collection::vec(prop::sample::select(PIECES.to_vec()), 1..8),
            pattern in prop::sample::select(PATTERNS.to_vec()),
        ) {
            let target = format!("/{}", parts.concat());
            let pattern = PathPattern::parse(pattern).unwrap();
            prop_assert_eq!(check_views(&pattern, &target), Ok(()));
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
