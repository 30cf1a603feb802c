//! The published SigV4 test vectors (tests/data/sigv4, see its README)
//! against `cell_proxy::secrets::sigv4`: for each signed request, the
//! canonical request is the published one and `verify` accepts the published
//! signature; with another secret, one byte of the body, of a signed header
//! or of the path changed, it refuses.

use std::path::{Path, PathBuf};

use cell_proxy::secrets::sigv4::{self, PathMode, SigV4Error};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use sha2::{Digest, Sha256};

struct Vector {
    name: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Vec<u8>,
    secret: String,
    mode: PathMode,
    canonical: String,
}

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sigv4")
}

/// Reads `header-signed-request.txt`: a request line, `Name:value` headers
/// (a line starting with whitespace continues the previous value, joined by
/// a space as obs-fold is unfolded), an empty line, the body.
fn load(dir: &Path) -> Vector {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(dir.join("header-signed-request.txt")).unwrap();
    let context: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("context.json")).unwrap()).unwrap();
    let canonical = std::fs::read_to_string(dir.join("header-canonical-request.txt")).unwrap();

    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let request_line = lines.next().unwrap();
    let request_line = request_line
        .strip_suffix(" HTTP/1.1")
        .unwrap_or(request_line);
    let (method, target) = request_line.split_once(' ').unwrap();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            let last = fields.last_mut().unwrap();
            last.1.push(' ');
            last.1.push_str(line);
        } else {
            let (n, v) = line.split_once(':').unwrap();
            fields.push((n.to_string(), v.trim_start().to_string()));
        }
    }
    let mut headers = HeaderMap::new();
    for (n, v) in fields {
        headers.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(&v).unwrap(),
        );
    }
    Vector {
        name,
        method: Method::from_bytes(method.as_bytes()).unwrap(),
        uri: target.parse().unwrap(),
        headers,
        body: body.as_bytes().to_vec(),
        secret: context["credentials"]["secret_access_key"]
            .as_str()
            .unwrap()
            .to_string(),
        mode: if context["normalize"].as_bool().unwrap_or(true) {
            PathMode::Normalized
        } else {
            PathMode::Verbatim
        },
        canonical,
    }
}

fn vectors() -> Vec<Vector> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.iter().map(|d| load(d)).collect()
}

/// What goes in the canonical request for the body: x-amz-content-sha256
/// when sent, else the body's SHA-256.
fn payload(headers: &HeaderMap, body: &[u8]) -> String {
    match headers.get("x-amz-content-sha256") {
        Some(v) => v.to_str().unwrap().to_string(),
        None => hex::encode(Sha256::digest(body)),
    }
}

fn check(
    v: &Vector,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    secret: &str,
) -> Result<(), SigV4Error> {
    let signed = sigv4::parse(headers)?.expect("the vector is SigV4-signed");
    sigv4::verify_with(
        &v.method,
        uri,
        headers,
        &signed,
        secret,
        &payload(headers, body),
        v.mode,
    )
}

/// Every vector in the data directory is read (none silently missing).
#[test]
fn all_vectors_are_present() {
    let names: Vec<String> = vectors().into_iter().map(|v| v.name).collect();
    assert_eq!(names.len(), 37, "{names:?}");
    for n in [
        "get-vanilla",
        "get-vanilla-query-order-key-case",
        "post-x-www-form-urlencoded",
        "get-header-value-trim",
        "get-header-key-duplicate",
        "post-vanilla-query",
        "get-slash-dot-slash-normalized",
        "get-relative-relative-unnormalized",
        "double-encode-path",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing");
    }
}

/// The canonical request built is the published one, byte for byte.
#[test]
fn canonical_requests_match() {
    for v in vectors() {
        let signed = sigv4::parse(&v.headers).unwrap().unwrap();
        let creq = sigv4::canonical_request(
            &v.method,
            &v.uri,
            &v.headers,
            signed.signed_headers(),
            &payload(&v.headers, &v.body),
            v.mode,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(creq).unwrap(),
            v.canonical.trim_end_matches('\n'),
            "{}",
            v.name
        );
    }
}

/// The published signature verifies with the published secret.
#[test]
fn published_signatures_verify() {
    for v in vectors() {
        check(&v, &v.uri, &v.headers, &v.body, &v.secret)
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
    }
}

/// Another secret (one character changed, or the empty string) is refused.
#[test]
fn another_secret_is_refused() {
    for v in vectors() {
        let mut other = v.secret.clone().into_bytes();
        other[0] ^= 1;
        let other = String::from_utf8(other).unwrap();
        for s in [other.as_str(), ""] {
            assert_eq!(
                check(&v, &v.uri, &v.headers, &v.body, s),
                Err(SigV4Error::Mismatch),
                "{}",
                v.name
            );
        }
    }
}

/// One byte more in the body, or one hex digit of x-amz-content-sha256
/// changed, is refused.
#[test]
fn a_changed_body_is_refused() {
    for v in vectors() {
        let mut body = v.body.clone();
        body.push(b'x');
        let mut headers = v.headers.clone();
        if let Some(h) = headers.get("x-amz-content-sha256") {
            let mut s = h.to_str().unwrap().to_string();
            let last = if s.ends_with('0') { "1" } else { "0" };
            s.replace_range(63.., last);
            headers.insert("x-amz-content-sha256", s.parse().unwrap());
        }
        assert!(
            check(&v, &v.uri, &headers, &body, &v.secret).is_err(),
            "{}",
            v.name
        );
    }
}

/// Each signed header with one byte changed is refused, and so is one
/// more value of it appended; a header that is not signed may change.
#[test]
fn a_changed_signed_header_is_refused() {
    for v in vectors() {
        let signed = sigv4::parse(&v.headers).unwrap().unwrap();
        for name in signed.signed_headers() {
            let mut headers = v.headers.clone();
            let Some(old) = headers.get(name).map(|h| h.as_bytes().to_vec()) else {
                continue; // `host` from the URI
            };
            let mut new = old.clone();
            let i = new.len() - 2; // x-amz-date: a digit of the time, still well-formed
            new[i] = if new[i] == b'1' { b'2' } else { b'1' };
            headers.insert(name, HeaderValue::from_bytes(&new).unwrap());
            assert!(
                check(&v, &v.uri, &headers, &v.body, &v.secret).is_err(),
                "{}: {name} changed",
                v.name
            );
            let mut headers = v.headers.clone();
            headers.append(name, HeaderValue::from_static("extra"));
            assert!(
                check(&v, &v.uri, &headers, &v.body, &v.secret).is_err(),
                "{}: {name} repeated",
                v.name
            );
        }
        let mut headers = v.headers.clone();
        headers.insert("x-unsigned", HeaderValue::from_static("anything"));
        check(&v, &v.uri, &headers, &v.body, &v.secret)
            .unwrap_or_else(|e| panic!("{}: unsigned header added: {e}", v.name));
    }
}

/// One byte more in the path, or a query parameter added, is refused.
#[test]
fn a_changed_target_is_refused() {
    for v in vectors() {
        let path = v.uri.path();
        let query = v.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        for target in [
            format!("{path}x{query}"),
            match v.uri.query() {
                Some(q) => format!("{path}?{q}&extra=1"),
                None => format!("{path}?extra=1"),
            },
        ] {
            let uri: Uri = target.parse().unwrap();
            assert_eq!(
                check(&v, &uri, &v.headers, &v.body, &v.secret),
                Err(SigV4Error::Mismatch),
                "{}: {target}",
                v.name
            );
        }
    }
}
