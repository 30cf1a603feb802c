//! Secrets through the real daemon, in the lab: the agent holds only
//! placeholders; the fake provider (real TLS, recording every request whole)
//! receives the value only from hosts in the secret's scope, only where the
//! secret allows it; a placeholder headed elsewhere, an unloaded secret and
//! the real value sent by the agent are refused before anything goes
//! upstream; a value the provider echoes never reaches the agent; and after
//! all of it the value is in no event, log, file or command line.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use cell_lab::https::{CertKind, Client, FakeHttps, Fetched, frames, get};
use cell_lab::{Lab, skip_unless_available};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};

mod common;
use common::{at, events_until, resolve};

const POLICY: &str = r#"{
  "https": [ { "host": "api.example.test" }, { "host": "other.example.test" } ],
  "dns": { "upstream": ["192.0.2.53"] }
}"#;

/// `tok`: headers only (the default). `bod`: headers, target and body.
/// `unl`: never loaded.
const SECRETS: &str = r#"{
  "version": 1,
  "secrets": [
    { "name": "tok", "placeholder": "cell-placeholder-tok", "hosts": ["api.example.test"],
      "source": { "env": "TOK" } },
    { "name": "bod", "placeholder": "cell-placeholder-bod", "hosts": ["api.example.test"],
      "locations": ["header", "query", "body"], "source": { "env": "BOD" } },
    { "name": "unl", "placeholder": "cell-placeholder-unl", "hosts": ["api.example.test"],
      "source": { "env": "UNL" } }
  ]
}"#;

const TOK: &str = "sk-tok-3f9a1c77e2b54d08aa61";
const BOD: &str = "sk-bod/91d2+e4f0c3b6a7155e20";

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
        ("api.example.test", cell_lab::lab::WEB_V4),
        ("other.example.test", cell_lab::lab::WEB_V4),
    ])
    .unwrap();
    let web = lab
        .https_server(&[
            ("api.example.test", CertKind::Valid),
            ("other.example.test", CertKind::Valid),
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
    let out = load(&s.lab, &format!(r#"{{"tok":"{TOK}","bod":"{BOD}"}}"#));
    assert!(out.status.success(), "{out:?}");
    Some(s)
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

fn send<B>(s: &Setup, client: &Client, host: &str, req: Request<B>) -> Fetched
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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

fn with_headers(
    host: &str,
    path: &str,
    headers: &[(&'static str, String)],
) -> Request<Full<Bytes>> {
    let mut r = get("GET", host, path);
    for (k, v) in headers {
        r.headers_mut().append(*k, v.parse().unwrap());
    }
    r
}

fn body_text(f: &Fetched) -> String {
    String::from_utf8_lossy(&f.body).into_owned()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Nothing the fake internet received holds `needle`.
fn internet_never_saw(s: &Setup, needle: &str) {
    for r in s.web.recorded() {
        assert!(
            !contains(&r.all_bytes(), needle),
            "upstream saw {needle}: {r:?}"
        );
    }
}

#[test]
fn header_placeholders_become_the_value_for_the_scoped_host_only() {
    let Some(s) = setup() else { return };
    for client in [&s.h1, &s.h2] {
        let basic = base64::engine::general_purpose::STANDARD.encode("me:cell-placeholder-tok");
        let got = send(
            &s,
            client,
            "api.example.test",
            with_headers(
                "api.example.test",
                "/record",
                &[
                    ("authorization", "Bearer cell-placeholder-tok".into()),
                    ("x-api-key", "cell-placeholder-tok".into()),
                    ("proxy-authorization", format!("Basic {basic}")),
                ],
            ),
        );
        assert_eq!(got.status, StatusCode::OK, "{}", body_text(&got));
    }
    let rec = s.web.recorded();
    assert_eq!(rec.len(), 2);
    for r in &rec {
        assert_eq!(
            r.header("authorization").unwrap(),
            format!("Bearer {TOK}").as_bytes()
        );
        assert_eq!(r.header("x-api-key").unwrap(), TOK.as_bytes());
        assert!(!contains(&r.all_bytes(), "cell-placeholder-tok"), "{r:?}");
    }
    // Basic credentials: the placeholder sits inside base64(user:pass). The
    // proxy strips Proxy-Authorization (hop-by-hop), so check Authorization.
    let basic = base64::engine::general_purpose::STANDARD.encode("me:cell-placeholder-tok");
    let got = send(
        &s,
        &s.h1,
        "api.example.test",
        with_headers(
            "api.example.test",
            "/record",
            &[("authorization", format!("Basic {basic}"))],
        ),
    );
    assert_eq!(got.status, StatusCode::OK);
    let sent = s.web.recorded().pop().unwrap();
    let b64 = sent
        .header("authorization")
        .unwrap()
        .strip_prefix(b"Basic ")
        .unwrap()
        .to_vec();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(decoded, format!("me:{TOK}").as_bytes());

    // The event names the secret, never the value.
    let ev = events_until(&s.lab, |ev| {
        ev.iter()
            .filter(|e| e["secrets"] == serde_json::json!(["tok"]))
            .count()
            >= 3
    });
    assert!(ev.iter().all(|e| !e.to_string().contains(TOK)));

    // The same placeholder to another allowed host: refused, naming the secret
    // and its scope; nothing reached the fake internet.
    let before = s.web.recorded().len();
    let got = send(
        &s,
        &s.h2,
        "other.example.test",
        with_headers(
            "other.example.test",
            "/record",
            &[("x-api-key", "cell-placeholder-tok".into())],
        ),
    );
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    let text = body_text(&got);
    assert!(
        text.contains("secret `tok`") && text.contains("api.example.test"),
        "{text}"
    );
    assert_eq!(s.web.recorded().len(), before);
    events_until(&s.lab, |ev| {
        ev.iter().any(|e| {
            e["reason"] == "secret-scope"
                && e["secret"] == "tok"
                && e["host"] == "other.example.test"
        })
    });
}

#[test]
fn query_and_body_locations_are_opt_in_and_bodies_are_rewritten_as_they_stream() {
    let Some(s) = setup() else { return };
    // The target: `bod` allows it (the value percent-encoded), `tok` does not.
    let got = send(
        &s,
        &s.h1,
        "api.example.test",
        get(
            "GET",
            "api.example.test",
            "/record?key=cell-placeholder-bod&x=1",
        ),
    );
    assert_eq!(got.status, StatusCode::OK, "{}", body_text(&got));
    let r = s.web.recorded().pop().unwrap();
    assert_eq!(r.target, "/record?key=sk-bod%2F91d2%2Be4f0c3b6a7155e20&x=1");
    let got = send(
        &s,
        &s.h1,
        "api.example.test",
        get(
            "GET",
            "api.example.test",
            "/record?key=cell-placeholder-tok",
        ),
    );
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert!(
        body_text(&got).contains("add \"query\" to `cell.secrets.tok.locations`"),
        "{}",
        body_text(&got)
    );

    // A body whose placeholder is split across chunks (HTTP/1.1) and DATA
    // frames (HTTP/2), with and without a declared length.
    let parts: Vec<Vec<u8>> = vec![
        b"{\"key\":\"cell-place".to_vec(),
        b"holder-b".to_vec(),
        b"od\",\"keep\":\"cell-placeholder-tok\",\"n\":1}".to_vec(),
    ];
    let whole: Vec<u8> = parts.concat();
    let expected = String::from_utf8(whole.clone())
        .unwrap()
        .replace("cell-placeholder-bod", BOD);
    for (client, declared) in [(&s.h1, false), (&s.h1, true), (&s.h2, false), (&s.h2, true)] {
        let mut req = Request::builder()
            .method("POST")
            .uri("https://api.example.test/record")
            .header("host", "api.example.test");
        if declared {
            req = req.header("content-length", whole.len());
        }
        let req = req
            .body(frames(parts.clone(), Duration::from_millis(30)))
            .unwrap();
        let got = send(&s, client, "api.example.test", req);
        assert_eq!(got.status, StatusCode::OK, "{}", body_text(&got));
        let r = s.web.recorded().pop().unwrap();
        assert!(!r.body_failed);
        // `tok` does not allow the body: its placeholder stays as it is.
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            expected,
            "{:?} declared={declared}",
            r.version
        );
        if let Some(len) = r.header("content-length") {
            assert_eq!(len, expected.len().to_string().as_bytes());
        }
    }
}

#[test]
fn the_real_value_from_the_agent_is_refused_in_every_encoding_and_place() {
    let Some(s) = setup() else { return };
    let e = base64::engine::general_purpose::STANDARD;
    let attempts: Vec<(&str, Request<Full<Bytes>>)> = vec![
        (
            "raw header",
            with_headers(
                "other.example.test",
                "/record",
                &[("x-note", format!("k={TOK}"))],
            ),
        ),
        (
            "raw header, scoped host",
            with_headers(
                "api.example.test",
                "/record",
                &[("authorization", format!("Bearer {TOK}"))],
            ),
        ),
        (
            "basic",
            with_headers(
                "other.example.test",
                "/record",
                &[(
                    "authorization",
                    format!("Basic {}", e.encode(format!("u:{TOK}"))),
                )],
            ),
        ),
        (
            "hex target",
            get(
                "GET",
                "other.example.test",
                &format!("/record?d={}", hex::encode(TOK)),
            ),
        ),
        (
            "percent target",
            get(
                "GET",
                "other.example.test",
                &format!(
                    "/record?d={}",
                    TOK.bytes().map(|b| format!("%{b:02x}")).collect::<String>()
                ),
            ),
        ),
        (
            "base64url target",
            get(
                "GET",
                "other.example.test",
                &format!(
                    "/record?d=xy{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("ab{BOD}"))
                ),
            ),
        ),
        (
            "base64 body",
            Request::builder()
                .method("POST")
                .uri("https://other.example.test/record")
                .header("host", "other.example.test")
                .body(Full::new(Bytes::from(format!(
                    "{{\"blob\":\"{}\"}}",
                    e.encode(format!("--{TOK}--"))
                ))))
                .unwrap(),
        ),
        (
            "raw body",
            Request::builder()
                .method("POST")
                .uri("https://other.example.test/record")
                .header("host", "other.example.test")
                .body(Full::new(Bytes::from(format!("leaked {BOD} here"))))
                .unwrap(),
        ),
    ];
    for (what, req) in attempts {
        let got = send(
            &s,
            &s.h2,
            req.headers()["host"].to_str().unwrap().to_string().as_str(),
            req,
        );
        assert_eq!(
            got.status,
            StatusCode::FORBIDDEN,
            "{what}: {}",
            body_text(&got)
        );
        let text = body_text(&got);
        assert!(text.contains("real value of secret"), "{what}: {text}");
        assert!(!text.contains(TOK) && !text.contains(BOD), "{what}: {text}");
    }
    internet_never_saw(&s, TOK);
    internet_never_saw(&s, BOD);
    internet_never_saw(&s, &hex::encode(TOK));
    events_until(&s.lab, |ev| {
        ev.iter().filter(|e| e["reason"] == "secret-leak").count() >= 8
    });
    // The allowed path still works.
    let got = send(
        &s,
        &s.h1,
        "api.example.test",
        with_headers(
            "api.example.test",
            "/record",
            &[("x-api-key", "cell-placeholder-tok".into())],
        ),
    );
    assert_eq!(got.status, StatusCode::OK);
}

#[test]
fn an_unloaded_secret_is_a_503_that_says_how_to_load_it_and_nothing_goes_upstream() {
    let Some(s) = setup() else { return };
    let got = send(
        &s,
        &s.h1,
        "api.example.test",
        with_headers(
            "api.example.test",
            "/record",
            &[("x-api-key", "cell-placeholder-unl".into())],
        ),
    );
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    let text = body_text(&got);
    assert!(
        text.contains("secret `unl` is not loaded") && text.contains("cell secrets reload"),
        "{text}"
    );
    assert!(s.web.recorded().is_empty());

    // Unloading (null) takes a value back out; loading again brings it in.
    assert!(load(&s.lab, r#"{"tok":null}"#).status.success());
    let got = send(
        &s,
        &s.h1,
        "api.example.test",
        with_headers(
            "api.example.test",
            "/record",
            &[("x-api-key", "cell-placeholder-tok".into())],
        ),
    );
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(s.web.recorded().is_empty());
    assert!(
        load(&s.lab, &format!(r#"{{"tok":"{TOK}"}}"#))
            .status
            .success()
    );
    let got = send(
        &s,
        &s.h1,
        "api.example.test",
        with_headers(
            "api.example.test",
            "/record",
            &[("x-api-key", "cell-placeholder-tok".into())],
        ),
    );
    assert_eq!(got.status, StatusCode::OK);

    // A bad load names the secret and the reason, never the value.
    let out = load(&s.lab, r#"{"tok":"short","nope":"whatever-value-1234"}"#);
    assert!(!out.status.success());
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("no secret `nope`") && said.contains("at least 6"),
        "{said}"
    );
    assert!(
        !said.contains("whatever-value-1234") && !said.contains("\"short\""),
        "{said}"
    );
    // The refused value did not replace the loaded one.
    let got = send(
        &s,
        &s.h1,
        "api.example.test",
        with_headers(
            "api.example.test",
            "/record",
            &[("x-api-key", "cell-placeholder-tok".into())],
        ),
    );
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        s.web.recorded().pop().unwrap().header("x-api-key").unwrap(),
        TOK.as_bytes()
    );

    // The status lists every secret, loaded or not, and no value.
    let status = s.lab.control(r#"{"op":"secrets"}"#).unwrap();
    let text = status.to_string();
    assert!(!text.contains(TOK) && !text.contains(BOD), "{text}");
    let list = status["secrets"].as_array().unwrap();
    let by = |n: &str| list.iter().find(|e| e["name"] == n).unwrap().clone();
    assert_eq!(by("tok")["loaded"], true);
    assert_eq!(by("unl")["loaded"], false);
    assert!(by("tok")["uses"].as_u64().unwrap() >= 2);
    assert!(by("tok")["lastUsed"].as_u64().is_some());
}

#[test]
fn a_value_the_provider_echoes_reaches_the_agent_as_its_placeholder() {
    let Some(s) = setup() else { return };
    for client in [&s.h1, &s.h2] {
        let req = Request::builder()
            .method("POST")
            .uri("https://api.example.test/reflect")
            .header("host", "api.example.test")
            .header("authorization", "Bearer cell-placeholder-tok")
            .body(frames(
                vec![
                    b"body with cell-placeholder-b".to_vec(),
                    b"od inside".to_vec(),
                ],
                Duration::from_millis(20),
            ))
            .unwrap();
        let got = send(&s, client, "api.example.test", req);
        assert_eq!(got.status, StatusCode::OK);
        let text = body_text(&got);
        assert_eq!(
            text,
            "you sent: Bearer cell-placeholder-tok\nand the body: body with cell-placeholder-bod inside\n"
        );
        assert_eq!(got.headers["x-you-sent"], "Bearer cell-placeholder-tok");
        // The provider did get the values.
        let r = s.web.recorded().pop().unwrap();
        assert_eq!(
            r.header("authorization").unwrap(),
            format!("Bearer {TOK}").as_bytes()
        );
        assert!(contains(&r.body, BOD));
    }
}

#[test]
fn no_value_is_left_in_events_logs_files_or_command_lines() {
    let Some(s) = setup() else { return };
    // Exercise injection, refusal and echo first.
    send(
        &s,
        &s.h1,
        "api.example.test",
        with_headers(
            "api.example.test",
            "/reflect",
            &[("authorization", "Bearer cell-placeholder-tok".into())],
        ),
    );
    send(
        &s,
        &s.h1,
        "other.example.test",
        with_headers("other.example.test", "/record", &[("x-k", TOK.into())]),
    );
    send(
        &s,
        &s.h2,
        "other.example.test",
        with_headers(
            "other.example.test",
            "/record",
            &[("x-k", "cell-placeholder-bod".into())],
        ),
    );
    events_until(&s.lab, |ev| {
        ev.iter().any(|e| e["reason"] == "secret-scope")
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
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for v in [TOK, BOD] {
            assert!(!contains(&bytes, v), "{} holds a value", f.display());
        }
    }
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(p.path().join("cmdline")) {
            for v in [TOK, BOD] {
                assert!(
                    !contains(&cmd, v),
                    "{} has a value in its command line",
                    p.path().display()
                );
            }
        }
    }
    // The daemon is not dumpable: its /proc entries belong to root, and no
    // core dump would be written (RLIMIT_CORE 0).
    let pid = s.lab.proxy_pid().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let _ = status; // PR_GET_DUMPABLE is only readable by the process itself
}

#[test]
fn check_refuses_a_secret_scoped_to_a_host_the_policy_does_not_intercept() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"https":[{"host":"other.example.test"},{"host":"pass.example.test","passthrough":true}]}"#).unwrap();
    let secrets = dir.path().join("secrets.json");
    std::fs::write(
        &secrets,
        SECRETS.replace(
            "\"hosts\": [\"api.example.test\"],\n      \"locations\"",
            "\"hosts\": [\"pass.example.test\"],\n      \"locations\"",
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cell-proxy"))
        .args(["--check", "--policy"])
        .arg(&policy)
        .arg("--secrets")
        .arg(&secrets)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"secrets[0].hosts[0]: secret `tok` is scoped to api.example.test, which the policy does not allow"#), "{err}");
    assert!(
        err.contains(r#"add `https."api.example.test" = { };`"#),
        "{err}"
    );
    assert!(
        err.contains("secret `bod` is scoped to pass.example.test, which https[1] passes through")
            || err.contains("passes through without interception"),
        "{err}"
    );
    // With the host allowed, the same document passes.
    std::fs::write(&policy, r#"{"https":[{"host":"api.example.test"}]}"#).unwrap();
    std::fs::write(&secrets, SECRETS).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cell-proxy"))
        .args(["--check", "--policy"])
        .arg(&policy)
        .arg("--secrets")
        .arg(&secrets)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let _ = BodyExt::boxed(Full::new(Bytes::new()));
}
