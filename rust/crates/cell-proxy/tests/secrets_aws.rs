//! AWS secrets through the real daemon, in the lab, real TLS on both sides:
//! the agent's requests are signed with the placeholder credentials by
//! `aws-sigv4` (the signer of the AWS SDK for Rust, as an SDK in the agent VM
//! would sign them), go through `cell-proxy`, and reach the fake provider
//! (which records every request whole) signed with the real credentials —
//! which this test checks by signing the received request again with the
//! real keys using `aws-sigv4` itself, not the proxy's `sigv4.rs`. Requests
//! the proxy cannot or must not re-sign are refused before anything goes
//! upstream, with a reason and an event naming the secret; and after all of
//! it no real key, token or key id is in any event, file or command line.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation,
    SigningSettings, UriPathNormalizationMode, sign,
};
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use cell_lab::https::{CertKind, Client, FakeHttps, Fetched, Recorded};
use cell_lab::{Lab, skip_unless_available};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Full;
use sha2::{Digest, Sha256};

mod common;
use common::{at, events_until, resolve};

const BEDROCK: &str = "bedrock-runtime.us-east-1.amazonaws.com";
const S3: &str = "cell-test.s3.us-east-1.amazonaws.com";
const OTHER: &str = "other.example.test";

const POLICY: &str = r#"{
  "https": [
    { "host": "bedrock-runtime.us-east-1.amazonaws.com" },
    { "host": "cell-test.s3.us-east-1.amazonaws.com" },
    { "host": "other.example.test" }
  ],
  "dns": { "upstream": ["192.0.2.53"] }
}"#;

/// `aws`: long-term keys. `sts`: temporary keys with a session token.
/// `unl`: never loaded.
const SECRETS: &str = r#"{
  "version": 1,
  "secrets": [
    { "name": "aws", "kind": "aws", "placeholder": "cell-placeholder-aws",
      "accessKeyIdPlaceholder": "cell-placeholder-aws.akid",
      "hosts": ["bedrock-runtime.us-east-1.amazonaws.com", "cell-test.s3.us-east-1.amazonaws.com"],
      "source": { "env": "AWS_CREDS" } },
    { "name": "sts", "kind": "aws", "placeholder": "cell-placeholder-sts",
      "accessKeyIdPlaceholder": "cell-placeholder-sts.akid",
      "hosts": ["bedrock-runtime.us-east-1.amazonaws.com", "cell-test.s3.us-east-1.amazonaws.com"],
      "source": { "env": "STS_CREDS" } },
    { "name": "unl", "kind": "aws", "placeholder": "cell-placeholder-unl",
      "accessKeyIdPlaceholder": "cell-placeholder-unl.akid",
      "hosts": ["bedrock-runtime.us-east-1.amazonaws.com"],
      "source": { "env": "UNL_CREDS" } }
  ]
}"#;

const AWS_AKID: &str = "AKIAQ3EXAMPLE7REALK1";
const AWS_SECRET: &str = "rEaL/SecretKey+0f9a7Qx2LmN8pB4vW6yZ1cD3eF5";
const STS_AKID: &str = "ASIAQ3EXAMPLE9REALT2";
const STS_SECRET: &str = "sTs/TempSecret+9c8b7A6d5E4f3G2h1J0kLmNoPq";
const STS_TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLEreal//sessionToken+a1b2c3d4e5f6g7h8==";

/// Every real value: none may leave the proxy but toward the provider, and
/// none may be written anywhere.
const REAL: [&str; 5] = [AWS_AKID, AWS_SECRET, STS_AKID, STS_SECRET, STS_TOKEN];

/// A Bedrock InvokeModel body.
const JSON_BODY: &[u8] = br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;

struct Setup {
    lab: Lab,
    web: FakeHttps,
    h1: Client,
    h2: Client,
}

fn setup() -> Option<Setup> {
    if skip_unless_available() {
        return None;
    }
    let mut lab = Lab::new().expect("lab");
    lab.start_resolver(&[
        (BEDROCK, cell_lab::lab::WEB_V4),
        (S3, cell_lab::lab::WEB_V4),
        (OTHER, cell_lab::lab::WEB_V4),
    ])
    .unwrap();
    let web = lab
        .https_server(&[
            (BEDROCK, CertKind::Valid),
            (S3, CertKind::Valid),
            (OTHER, CertKind::Valid),
        ])
        .unwrap();
    let policy = lab.dir.join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    let secrets = lab.dir.join("secrets.json");
    std::fs::write(&secrets, SECRETS).unwrap();
    lab.start_proxy_with(
        Path::new(env!("CARGO_BIN_EXE_cell-proxy")),
        &policy,
        None,
        &["--secrets".as_ref(), secrets.as_os_str()],
    )
    .unwrap();
    let ca = lab.cell_ca_pem().unwrap();
    let s = Setup {
        h1: Client::new(&ca, &[b"http/1.1"]).unwrap(),
        h2: Client::new(&ca, &[b"h2"]).unwrap(),
        lab,
        web,
    };
    let out = load(&s.lab, &values());
    assert!(out.status.success(), "{out:?}");
    Some(s)
}

/// What the host CLI pushes: each value the `credential_process` JSON.
fn values() -> String {
    let aws =
        format!(r#"{{"Version":1,"AccessKeyId":"{AWS_AKID}","SecretAccessKey":"{AWS_SECRET}"}}"#);
    let sts = format!(
        r#"{{"Version":1,"AccessKeyId":"{STS_AKID}","SecretAccessKey":"{STS_SECRET}","SessionToken":"{STS_TOKEN}","Expiration":"2099-01-01T00:00:00Z"}}"#
    );
    serde_json::json!({ "aws": aws, "sts": sts }).to_string()
}

/// `cell-proxy --load-secrets -`, values on stdin: what the host CLI runs.
fn load(lab: &Lab, json: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cell-proxy"))
        .arg("--control")
        .arg(lab.control_path())
        .arg("--load-secrets")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn send(s: &Setup, client: &Client, host: &str, req: Request<Full<Bytes>>) -> Fetched {
    let ip = resolve(&s.lab, host);
    s.lab
        .block_on(client.fetch(
            s.lab.agent_connect(at(ip, 443)).unwrap(),
            host,
            vec![req],
            1 << 16,
        ))
        .unwrap()
        .remove(0)
}

fn body_text(f: &Fetched) -> String {
    String::from_utf8_lossy(&f.body).into_owned()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The placeholder credentials of secret `name`, as the agent VM has them.
fn placeholder(name: &str) -> (String, String) {
    (
        format!("cell-placeholder-{name}.akid"),
        format!("cell-placeholder-{name}"),
    )
}

/// How the client signs.
#[derive(Clone, Copy)]
enum Style {
    /// Bedrock-runtime: the path normalised, no x-amz-content-sha256 (the
    /// body's hash is signed).
    Bedrock,
    /// S3: the path as sent, x-amz-content-sha256 of the body.
    S3,
    /// S3 with x-amz-content-sha256 given (UNSIGNED-PAYLOAD, STREAMING-…).
    S3Precomputed(&'static str),
    /// A presigned S3 URL (the signature in the query).
    Presigned,
}

impl Style {
    fn service(self) -> &'static str {
        match self {
            Style::Bedrock => "bedrock",
            _ => "s3",
        }
    }
}

fn settings(style: Style) -> SigningSettings {
    let mut settings = SigningSettings::default();
    if style.service() == "s3" {
        // What the S3 client of the AWS SDK sets.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    if let Style::Presigned = style {
        settings.signature_location = SignatureLocation::QueryParams;
        settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
        settings.expires_in = Some(Duration::from_secs(300));
    }
    settings
}

/// The SigV4 signature of `req` by `aws-sigv4`, applied to it (headers, or
/// the query for a presigned URL); returns aws-sigv4's signature.
fn aws_sign(
    req: &mut Request<Full<Bytes>>,
    body: &[u8],
    creds: (&str, &str, Option<&str>),
    style: Style,
    time: SystemTime,
) -> String {
    let identity: Identity =
        Credentials::new(creds.0, creds.1, creds.2.map(String::from), None, "test").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name(style.service())
        .time(time)
        .settings(settings(style))
        .build()
        .unwrap()
        .into();
    let pairs: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().into(), v.to_str().unwrap().into()))
        .collect();
    let signable_body = match style {
        Style::Bedrock | Style::S3 => SignableBody::Bytes(body),
        Style::S3Precomputed(p) => SignableBody::Precomputed(p.into()),
        Style::Presigned => SignableBody::UnsignedPayload,
    };
    let uri = req.uri().to_string();
    let signable = SignableRequest::new(
        req.method().as_str(),
        &uri,
        pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        signable_body,
    )
    .unwrap();
    let (instructions, signature) = sign(signable, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(req);
    signature
}

/// A request as an AWS SDK builds it before signing.
fn request(method: &str, host: &str, target: &str, body: &[u8]) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("https://{host}{target}"))
        .header("host", host)
        .header("user-agent", "aws-sdk-rust/1.3.8 os/linux lang/rust");
    if !body.is_empty() {
        b = b
            .header("content-type", "application/json")
            .header("content-length", body.len());
    }
    b.body(Full::new(Bytes::copy_from_slice(body))).unwrap()
}

/// `request`, signed by the client with `creds`.
fn signed(
    method: &str,
    host: &str,
    target: &str,
    body: &[u8],
    creds: (&str, &str, Option<&str>),
    style: Style,
) -> Request<Full<Bytes>> {
    let mut r = request(method, host, target, body);
    aws_sign(&mut r, body, creds, style, SystemTime::now());
    r
}

/// The agent's request for secret `name`, signed with its placeholders.
fn agent(
    name: &str,
    method: &str,
    host: &str,
    target: &str,
    body: &[u8],
    style: Style,
) -> Request<Full<Bytes>> {
    let (akid, secret) = placeholder(name);
    signed(method, host, target, body, (&akid, &secret, None), style)
}

/// The parts of `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
struct Authorization {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    signed_headers: Vec<String>,
    signature: String,
}

fn parse_authorization(v: &[u8]) -> Authorization {
    let v = std::str::from_utf8(v).unwrap();
    let rest = v.strip_prefix("AWS4-HMAC-SHA256 ").expect(v);
    let get = |k: &str| {
        rest.split(", ")
            .find_map(|p| p.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {k} in {v}"))
            .to_string()
    };
    let (credential, signed, signature) =
        (get("Credential"), get("SignedHeaders"), get("Signature"));
    let scope: Vec<&str> = credential.split('/').collect();
    assert_eq!(scope.len(), 5, "{v}");
    assert_eq!(scope[4], "aws4_request", "{v}");
    Authorization {
        access_key_id: scope[0].into(),
        date: scope[1].into(),
        region: scope[2].into(),
        service: scope[3].into(),
        signed_headers: signed.split(';').map(String::from).collect(),
        signature,
    }
}

/// `YYYYMMDDTHHMMSSZ` as a time (days from the civil date, proleptic Gregorian).
fn amz_time(s: &str) -> SystemTime {
    assert!(s.len() == 16 && &s[8..9] == "T" && s.ends_with('Z'), "{s}");
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(4, 6), n(6, 8));
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(9, 11) * 3600 + n(11, 13) * 60 + n(13, 15);
    UNIX_EPOCH + Duration::from_secs(secs as u64)
}

fn headers_named<'r>(r: &'r Recorded, name: &str) -> Vec<&'r [u8]> {
    r.headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// The real credentials a request of secret `name` must arrive signed with.
fn real(name: &str) -> (&'static str, &'static str, Option<&'static str>) {
    match name {
        "aws" => (AWS_AKID, AWS_SECRET, None),
        "sts" => (STS_AKID, STS_SECRET, Some(STS_TOKEN)),
        _ => unreachable!(),
    }
}

/// What the provider received is `sent`, signed with the real credentials
/// of `name`: aws-sigv4, given the received request (the headers it names
/// as signed), the real keys and the received x-amz-date, makes exactly the
/// received Authorization; the session token is the real one; no
/// placeholder and no secret key is anywhere in it.
fn assert_resigned(
    rec: &Recorded,
    sent: &Request<Full<Bytes>>,
    body: &[u8],
    name: &str,
    style: Style,
) {
    let (akid, secret, token) = real(name);
    let (ph_akid, ph_secret) = placeholder(name);
    assert_eq!(rec.method, sent.method().as_str());
    assert_eq!(rec.target, sent.uri().path_and_query().unwrap().as_str());
    assert_eq!(rec.body, body, "the body arrived as sent");
    assert!(!rec.body_failed);

    let auths = headers_named(rec, "authorization");
    assert_eq!(auths.len(), 1, "{rec:?}");
    let got = parse_authorization(auths[0]);
    assert_eq!(got.access_key_id, akid, "the real access key id");
    assert_eq!(
        (got.region.as_str(), got.service.as_str()),
        ("us-east-1", style.service())
    );

    // The same headers are signed as the client signed, plus the token.
    let client = parse_authorization(sent.headers()["authorization"].as_bytes());
    assert_eq!(client.access_key_id, ph_akid);
    assert_eq!(got.date, client.date);
    let mut expected = client.signed_headers.clone();
    if token.is_some() {
        expected.push("x-amz-security-token".into());
        expected.sort();
    }
    assert_eq!(got.signed_headers, expected);
    assert_ne!(got.signature, client.signature);

    // x-amz-date as the client signed it, once.
    let dates = headers_named(rec, "x-amz-date");
    assert_eq!(dates, vec![sent.headers()["x-amz-date"].as_bytes()]);
    let time = amz_time(std::str::from_utf8(dates[0]).unwrap());

    // The session token: the real one, once, or none.
    let tokens = headers_named(rec, "x-amz-security-token");
    match token {
        Some(t) => assert_eq!(tokens, vec![t.as_bytes()]),
        None => assert!(tokens.is_empty(), "{rec:?}"),
    }

    // aws-sigv4 signs the received request again with the real keys.
    let mut pairs: Vec<(String, String)> = Vec::new();
    for n in &got.signed_headers {
        if n == "host" {
            // HTTP/2 carries it as :authority.
            for h in headers_named(rec, "host") {
                assert_eq!(h, rec.host.as_bytes());
            }
            pairs.push(("host".into(), rec.host.clone()));
            continue;
        }
        let values = headers_named(rec, n);
        assert!(!values.is_empty(), "signed header {n} did not arrive");
        for v in values {
            pairs.push((n.clone(), String::from_utf8(v.to_vec()).unwrap()));
        }
    }
    let content_sha = headers_named(rec, "x-amz-content-sha256");
    let signable_body = match style {
        Style::Bedrock => {
            assert!(content_sha.is_empty());
            SignableBody::Bytes(&rec.body)
        }
        Style::S3 => {
            let hash = hex::encode(Sha256::digest(&rec.body));
            assert_eq!(content_sha, vec![hash.as_bytes()]);
            SignableBody::Bytes(&rec.body)
        }
        Style::S3Precomputed(p) => {
            assert_eq!(content_sha, vec![p.as_bytes()]);
            SignableBody::Precomputed(p.into())
        }
        Style::Presigned => unreachable!("never re-signed"),
    };
    let identity: Identity =
        Credentials::new(akid, secret, token.map(String::from), None, "real").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(&got.region)
        .name(&got.service)
        .time(time)
        .settings(settings(style))
        .build()
        .unwrap()
        .into();
    let uri = format!("https://{}{}", rec.host, rec.target);
    let signable = SignableRequest::new(
        &rec.method,
        &uri,
        pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        signable_body,
    )
    .unwrap();
    let (instructions, signature) = sign(signable, &params).unwrap().into_parts();
    assert_eq!(signature, got.signature, "aws-sigv4 with the real keys");
    let theirs: Vec<(&str, &str)> = instructions.headers().collect();
    let find = |n: &str| theirs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
    assert_eq!(
        find("authorization").map(str::as_bytes),
        Some(auths[0]),
        "the whole Authorization is aws-sigv4's"
    );
    assert_eq!(find("x-amz-date").map(str::as_bytes), Some(dates[0]));

    // Neither placeholder, and no secret key, anywhere.
    let all = rec.all_bytes();
    for v in [
        ph_akid.as_str(),
        ph_secret.as_str(),
        "cell-placeholder-",
        secret,
    ] {
        assert!(!contains(&all, v), "the provider saw {v}: {rec:?}");
    }
}

#[test]
fn requests_signed_with_the_placeholders_arrive_signed_with_the_real_keys() {
    let Some(s) = setup() else { return };
    let put_body: &[u8] = b"object bytes, signed by their hash";
    // (secret, method, host, target, body, how it is signed)
    type Case<'a> = (&'a str, &'a str, &'a str, &'a str, &'a [u8], Style);
    let cases: Vec<Case> = vec![
        // Bedrock InvokeModel: POST, JSON body, its hash signed.
        (
            "aws",
            "POST",
            BEDROCK,
            "/record?model=anthropic.claude-3-haiku-20240307-v1%3A0&trace=a%2Fb",
            JSON_BODY,
            Style::Bedrock,
        ),
        ("sts", "POST", BEDROCK, "/record", JSON_BODY, Style::Bedrock),
        // S3 PutObject: x-amz-content-sha256 of the body.
        (
            "sts",
            "PUT",
            S3,
            "/record?x-id=PutObject",
            put_body,
            Style::S3,
        ),
        (
            "aws",
            "PUT",
            S3,
            "/record?x-id=PutObject",
            put_body,
            Style::S3,
        ),
        // S3 GetObject with an unsigned payload.
        (
            "aws",
            "GET",
            S3,
            "/record?x-id=GetObject&prefix=a%20b",
            b"",
            Style::S3Precomputed("UNSIGNED-PAYLOAD"),
        ),
    ];
    let mut n = 0;
    for (client, version) in [
        (&s.h1, http::Version::HTTP_11),
        (&s.h2, http::Version::HTTP_2),
    ] {
        for (name, method, host, target, body, style) in &cases {
            let req = agent(name, method, host, target, body, *style);
            let sent = clone(&req);
            let got = send(&s, client, host, req);
            assert_eq!(
                got.status,
                StatusCode::OK,
                "{name} {method} {host}: {}",
                body_text(&got)
            );
            let rec = s.web.recorded();
            n += 1;
            assert_eq!(rec.len(), n);
            let rec = rec.last().unwrap();
            assert_eq!(rec.version, version);
            assert_eq!(rec.host, *host);
            assert_resigned(rec, &sent, body, name, *style);
        }
    }
    // Each allowed request's event names the secret it was signed with.
    let ev = events_until(&s.lab, |ev| {
        let count = |n: &str| {
            ev.iter()
                .filter(|e| e["decision"] == "allow" && e["secrets"] == serde_json::json!([n]))
                .count()
        };
        count("aws") >= 6 && count("sts") >= 4
    });
    for e in &ev {
        for v in REAL {
            assert!(!e.to_string().contains(v), "{e}");
        }
    }
    // And `cell secrets` counts the uses.
    let status = s.lab.control(r#"{"op":"secrets"}"#).unwrap();
    let list = status["secrets"].as_array().unwrap();
    let uses = |n: &str| list.iter().find(|e| e["name"] == n).unwrap()["uses"].clone();
    assert_eq!(uses("aws"), 6);
    assert_eq!(uses("sts"), 4);
}

/// A copy of a request's head (the body left empty), to compare what
/// arrived with.
fn clone(r: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut c = Request::builder()
        .method(r.method())
        .uri(r.uri())
        .body(Full::new(Bytes::new()))
        .unwrap();
    *c.headers_mut() = r.headers().clone();
    c
}

/// One refusal: the status, what the answer must say, the event's reason.
struct Refusal {
    what: &'static str,
    host: &'static str,
    req: Request<Full<Bytes>>,
    status: StatusCode,
    secret: &'static str,
    reason: &'static str,
    says: Vec<String>,
}

/// Sends each refused request over HTTP/1.1 and HTTP/2: the answer is the
/// status with its reasons, `x-cell-error: secret`; the fake internet
/// received nothing at all; each has its event, naming the secret. Every
/// case is tried before failing, and the failure lists each one that failed.
fn assert_refused(s: &Setup, cases: Vec<Refusal>) {
    let mut failed: Vec<String> = Vec::new();
    for c in &cases {
        for client in [&s.h1, &s.h2] {
            let seen = s.web.seen().len();
            let got = send(s, client, c.host, clone_with_body(&c.req));
            let text = body_text(&got);
            let mut problems = Vec::new();
            if got.status != c.status {
                problems.push(format!("status {} (wanted {})", got.status, c.status));
            }
            if got
                .headers
                .get("x-cell-error")
                .is_none_or(|v| v != "secret")
            {
                problems.push("no x-cell-error: secret".into());
            }
            for says in &c.says {
                if !text.contains(says.as_str()) {
                    problems.push(format!("the answer does not say {says:?}"));
                }
            }
            if REAL.iter().any(|v| text.contains(v)) {
                problems.push("the answer holds a real value".into());
            }
            if s.web.seen().len() != seen {
                problems.push("something went upstream".into());
            }
            if !problems.is_empty() {
                failed.push(format!(
                    "{} ({:?}): {}\n    answer: {text}",
                    c.what,
                    got.version,
                    problems.join("; ")
                ));
            }
        }
    }
    assert!(failed.is_empty(), "refusals failed:\n{}", failed.join("\n"));
    let ev = events_until(&s.lab, |ev| {
        cases.iter().all(|c| {
            ev.iter()
                .filter(|e| {
                    e["decision"] == "deny"
                        && e["reason"] == format!("secret-{}", c.reason)
                        && e["secret"] == c.secret
                        && e["host"] == c.host
                        && e["status"] == c.status.as_u16()
                })
                .count()
                >= 2
        })
    });
    for e in &ev {
        for v in REAL {
            assert!(!e.to_string().contains(v), "{e}");
        }
    }
}

fn clone_with_body(r: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut c = clone(r);
    *c.body_mut() = r.body().clone();
    c
}

#[test]
fn requests_that_cannot_be_re_signed_are_refused_and_nothing_goes_upstream() {
    let Some(s) = setup() else { return };
    let (ph_akid, _) = placeholder("aws");
    let does_not_verify =
        "the SigV4 signature with the placeholder of aws secret `aws` does not verify";

    // Signed with the placeholder key id but another secret key.
    let wrong = signed(
        "POST",
        BEDROCK,
        "/record",
        JSON_BODY,
        (&ph_akid, "not-the-placeholder-secret", None),
        Style::Bedrock,
    );

    // The body changed after signing (same length, so only the hash differs).
    let mut body_changed = agent("aws", "POST", BEDROCK, "/record", JSON_BODY, Style::Bedrock);
    let other = String::from_utf8(JSON_BODY.to_vec())
        .unwrap()
        .replace("\"hi\"", "\"ho\"");
    *body_changed.body_mut() = Full::new(Bytes::from(other));

    // A signed header changed after signing.
    let mut header_changed = agent("aws", "POST", BEDROCK, "/record", JSON_BODY, Style::Bedrock);
    header_changed
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));

    // S3: a signed x-amz-content-sha256 changed after signing.
    let mut hash_changed = agent("aws", "PUT", S3, "/record", b"12345", Style::S3);
    hash_changed.headers_mut().insert(
        "x-amz-content-sha256",
        HeaderValue::from_str(&hex::encode(Sha256::digest(b"54321"))).unwrap(),
    );

    // A well-signed request to a host outside the secret's scope.
    let out_of_scope = agent("aws", "POST", OTHER, "/record", JSON_BODY, Style::Bedrock);

    // A presigned URL made with the placeholders, as `aws s3 presign` does.
    let mut presigned = request("GET", S3, "/record?x-id=GetObject", b"");
    let (akid, secret) = placeholder("aws");
    aws_sign(
        &mut presigned,
        b"",
        (&akid, &secret, None),
        Style::Presigned,
        SystemTime::now(),
    );
    let q = presigned.uri().query().unwrap().to_string();
    assert!(
        q.contains("X-Amz-Credential=cell-placeholder-aws.akid") && q.contains("X-Amz-Signature="),
        "{q}"
    );
    assert!(presigned.headers().get("authorization").is_none());

    // Authorization headers that name the placeholder key id but do not parse.
    let mut malformed = agent("aws", "POST", BEDROCK, "/record", JSON_BODY, Style::Bedrock);
    let a = malformed.headers()["authorization"]
        .to_str()
        .unwrap()
        .to_string();
    let cut = a.rsplit_once("Signature=").unwrap().0.to_string() + "Signature=zz";
    malformed
        .headers_mut()
        .insert("authorization", HeaderValue::from_str(&cut).unwrap());
    let mut unsorted = agent("aws", "POST", BEDROCK, "/record", JSON_BODY, Style::Bedrock);
    let a = unsorted.headers()["authorization"]
        .to_str()
        .unwrap()
        .to_string();
    let swapped = a.replace(
        "SignedHeaders=content-length;content-type;host;x-amz-date",
        "SignedHeaders=host;content-length;content-type;x-amz-date",
    );
    assert_ne!(swapped, a);
    unsorted
        .headers_mut()
        .insert("authorization", HeaderValue::from_str(&swapped).unwrap());
    let mut v4a = agent("aws", "POST", BEDROCK, "/record", JSON_BODY, Style::Bedrock);
    let a = v4a.headers()["authorization"].to_str().unwrap().to_string();
    v4a.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&a.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256")).unwrap(),
    );

    // aws-chunked, each chunk signed (what some SDKs do for S3 uploads).
    let streaming = {
        let chunked: &[u8] = b"5;chunk-signature=0000000000000000000000000000000000000000000000000000000000000000\r\nhello\r\n0;chunk-signature=0000000000000000000000000000000000000000000000000000000000000000\r\n\r\n";
        let mut r = request("PUT", S3, "/record?x-id=PutObject", chunked);
        r.headers_mut()
            .insert("content-encoding", HeaderValue::from_static("aws-chunked"));
        r.headers_mut().insert(
            "x-amz-decoded-content-length",
            HeaderValue::from_static("5"),
        );
        aws_sign(
            &mut r,
            chunked,
            (&akid, &secret, None),
            Style::S3Precomputed("STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
            SystemTime::now(),
        );
        r
    };

    // A secret that is not loaded.
    let unloaded = agent("unl", "POST", BEDROCK, "/record", JSON_BODY, Style::Bedrock);

    let verify_fix = "sign with AWS_ACCESS_KEY_ID=cell-placeholder-aws.akid and AWS_SECRET_ACCESS_KEY=cell-placeholder-aws".to_string();
    let malformed_says = |detail: &str| {
        vec![
            format!("the Authorization header is not a well-formed SigV4 header: {detail}"),
            "secret `aws`".into(),
        ]
    };
    let cases = vec![
        Refusal {
            what: "another secret key",
            host: BEDROCK,
            req: wrong,
            status: StatusCode::FORBIDDEN,
            secret: "aws",
            reason: "signature",
            says: vec![
                does_not_verify.into(),
                "signed with another secret key".into(),
                verify_fix.clone(),
            ],
        },
        Refusal {
            what: "body changed",
            host: BEDROCK,
            req: body_changed,
            status: StatusCode::FORBIDDEN,
            secret: "aws",
            reason: "signature",
            says: vec![does_not_verify.into(), "changed after signing".into()],
        },
        Refusal {
            what: "signed header changed",
            host: BEDROCK,
            req: header_changed,
            status: StatusCode::FORBIDDEN,
            secret: "aws",
            reason: "signature",
            says: vec![does_not_verify.into()],
        },
        Refusal {
            what: "x-amz-content-sha256 changed",
            host: S3,
            req: hash_changed,
            status: StatusCode::FORBIDDEN,
            secret: "aws",
            reason: "signature",
            says: vec![does_not_verify.into()],
        },
        Refusal {
            what: "out of scope",
            host: OTHER,
            req: out_of_scope,
            status: StatusCode::FORBIDDEN,
            secret: "aws",
            reason: "scope",
            says: vec![format!(
                "the placeholder of secret `aws` is headed to {OTHER}, outside its scope ({BEDROCK}, {S3})"
            )],
        },
        Refusal {
            what: "presigned",
            host: S3,
            req: presigned,
            status: StatusCode::FORBIDDEN,
            secret: "aws",
            reason: "aws-presigned",
            says: vec![
                "presigned URLs".into(),
                "cannot be re-signed".into(),
                "sign in headers".into(),
                "presign on the host with real credentials".into(),
                "secret `aws`".into(),
            ],
        },
        Refusal {
            what: "unparsable signature",
            host: BEDROCK,
            req: malformed,
            status: StatusCode::FORBIDDEN,
            secret: "aws",
            reason: "aws-malformed",
            says: malformed_says("Signature is not 64 lowercase hex digits"),
        },
        Refusal {
            what: "unsorted signed headers",
            host: BEDROCK,
            req: unsorted,
            status: StatusCode::FORBIDDEN,
            secret: "aws",
            reason: "aws-malformed",
            says: malformed_says("SignedHeaders is not sorted, or repeats a name"),
        },
        Refusal {
            what: "SigV4a",
            host: BEDROCK,
            req: v4a,
            status: StatusCode::FORBIDDEN,
            secret: "aws",
            reason: "aws-unsupported",
            says: vec![
                "signed with SigV4a (AWS4-ECDSA-P256-SHA256), which the firewall cannot re-sign"
                    .into(),
            ],
        },
        Refusal {
            what: "streaming",
            host: S3,
            req: streaming,
            status: StatusCode::FORBIDDEN,
            secret: "aws",
            reason: "aws-streaming",
            says: vec![
                "the body is signed chunk by chunk".into(),
                "sign the whole body or send UNSIGNED-PAYLOAD".into(),
                "secret `aws`".into(),
            ],
        },
        Refusal {
            what: "not loaded",
            host: BEDROCK,
            req: unloaded,
            status: StatusCode::SERVICE_UNAVAILABLE,
            secret: "unl",
            reason: "not-loaded",
            says: vec![
                "secret `unl` is not loaded".into(),
                "run `cell secrets reload`".into(),
            ],
        },
    ];
    assert_refused(&s, cases);
    assert!(s.web.seen().is_empty(), "{:?}", s.web.seen());

    // A signed request asking for a protocol upgrade (HTTP/1.1 only: HTTP/2
    // has no Upgrade): the upgrade path does not re-sign, so it is refused
    // instead of going out signed with the placeholders.
    let mut up = agent("aws", "GET", BEDROCK, "/record", b"", Style::Bedrock);
    up.headers_mut()
        .insert("upgrade", HeaderValue::from_static("websocket"));
    up.headers_mut()
        .insert("connection", HeaderValue::from_static("upgrade"));
    let got = send(&s, &s.h1, BEDROCK, up);
    let text = body_text(&got);
    assert_eq!(got.status, StatusCode::FORBIDDEN, "{text}");
    assert!(
        text.contains("asks for a protocol upgrade") && text.contains("secret `aws`"),
        "{text}"
    );
    assert!(s.web.seen().is_empty(), "{:?}", s.web.seen());
    events_until(&s.lab, |ev| {
        ev.iter()
            .any(|e| e["reason"] == "secret-aws-upgrade" && e["secret"] == "aws")
    });

    // Unloaded at run time: the same 503; loaded again: re-signed again.
    assert!(load(&s.lab, r#"{"aws":null}"#).status.success());
    let req = agent("aws", "POST", BEDROCK, "/record", JSON_BODY, Style::Bedrock);
    assert_refused(
        &s,
        vec![Refusal {
            what: "unloaded",
            host: BEDROCK,
            req: clone_with_body(&req),
            status: StatusCode::SERVICE_UNAVAILABLE,
            secret: "aws",
            reason: "not-loaded",
            says: vec![
                "secret `aws` is not loaded".into(),
                "run `cell secrets reload`".into(),
            ],
        }],
    );
    assert!(load(&s.lab, &values()).status.success());
    let got = send(&s, &s.h1, BEDROCK, clone_with_body(&req));
    assert_eq!(got.status, StatusCode::OK, "{}", body_text(&got));
    let rec = s.web.recorded();
    assert_eq!(rec.len(), 1);
    assert_resigned(&rec[0], &req, JSON_BODY, "aws", Style::Bedrock);
}

#[test]
fn no_real_key_token_or_key_id_is_left_in_events_files_or_command_lines() {
    let Some(s) = setup() else { return };
    // Re-signing with each secret, over both protocols, and refusals.
    for client in [&s.h1, &s.h2] {
        for name in ["aws", "sts"] {
            let got = send(
                &s,
                client,
                BEDROCK,
                agent(name, "POST", BEDROCK, "/record", JSON_BODY, Style::Bedrock),
            );
            assert_eq!(got.status, StatusCode::OK, "{}", body_text(&got));
            let got = send(
                &s,
                client,
                S3,
                agent(name, "PUT", S3, "/record", b"abc", Style::S3),
            );
            assert_eq!(got.status, StatusCode::OK, "{}", body_text(&got));
        }
        let (akid, _) = placeholder("sts");
        let got = send(
            &s,
            client,
            BEDROCK,
            signed(
                "POST",
                BEDROCK,
                "/record",
                JSON_BODY,
                (&akid, "wrong-key", None),
                Style::Bedrock,
            ),
        );
        assert_eq!(got.status, StatusCode::FORBIDDEN);
        // The agent sending a real value is refused too.
        let mut r = request("POST", BEDROCK, "/record", JSON_BODY);
        r.headers_mut()
            .insert("x-note", HeaderValue::from_static(STS_TOKEN));
        let got = send(&s, client, BEDROCK, r);
        assert_eq!(got.status, StatusCode::FORBIDDEN);
        assert!(body_text(&got).contains("real value of secret `sts`"));
    }
    assert_eq!(s.web.recorded().len(), 8);
    // The provider got the real key id and token, so they were in memory.
    assert!(
        s.web
            .recorded()
            .iter()
            .any(|r| contains(&r.all_bytes(), STS_TOKEN))
    );
    events_until(&s.lab, |ev| {
        ev.iter()
            .filter(|e| e["reason"] == "secret-signature")
            .count()
            >= 2
            && ev.iter().filter(|e| e["reason"] == "secret-leak").count() >= 2
            && ev.iter().filter(|e| e["decision"] == "allow").count() >= 8
    });

    let mut files = Vec::new();
    let mut stack = vec![s.lab.dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                files.push(e.path());
            }
        }
    }
    assert!(
        files.iter().any(|f| f.ends_with("events.jsonl")),
        "{files:?}"
    );
    assert!(files.iter().any(|f| f.ends_with("proxy.log")), "{files:?}");
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for v in REAL {
            assert!(!contains(&bytes, v), "{} holds {v}", f.display());
        }
    }
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline")) {
            for v in REAL {
                assert!(
                    !contains(&cmd, v),
                    "{} has {v} in its command line",
                    p.path().display()
                );
            }
        }
    }
    // The status names secrets, never a value.
    let status = s.lab.control(r#"{"op":"secrets"}"#).unwrap().to_string();
    for v in REAL {
        assert!(!status.contains(v), "{status}");
    }
}
