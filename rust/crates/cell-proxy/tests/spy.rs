//! The spy recorder through the real daemon, in the lab (real TLS both
//! sides): only hosts whose entry says `spy` are recorded; a stream's first
//! event reaches the agent before the stream ends with recording on; the
//! store holds what the agent sent and received with every secret value
//! replaced by its placeholder and unsafe header values dropped; bodies are
//! capped and marked; the store stays within its bounds under a flood; a
//! Bedrock event stream is recorded whole and `cell spy` decodes it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use cell_lab::https::{CertKind, Client, FakeHttps, Fetched, get};
use cell_lab::{Lab, skip_unless_available};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

mod common;
use common::{at, resolve};

const POLICY: &str = r#"{
  "https": [ { "host": "api.example.test", "spy": true }, { "host": "other.example.test" },
             { "host": "api.anthropic.com" }, { "host": "api.openai.com", "spy": false },
             { "host": "bedrock-runtime.us-east-1.amazonaws.com" } ],
  "dns": { "upstream": ["192.0.2.53"] }
}"#;

const SECRETS: &str = r#"{
  "version": 1,
  "secrets": [
    { "name": "key", "placeholder": "cell-placeholder-key", "hosts": ["api.example.test"],
      "locations": ["header", "body"], "source": { "env": "KEY" } }
  ]
}"#;

const VALUE: &str = "sk-spy-8c1e4b7a92d36f05e1b4";

/// A Bedrock Runtime endpoint: recorded by the provider default.
const BEDROCK: &str = "bedrock-runtime.us-east-1.amazonaws.com";

struct Setup {
    lab: Lab,
    web: FakeHttps,
    h1: Client,
    h2: Client,
    store: PathBuf,
}

fn setup(extra: &[&str]) -> Option<Setup> {
    if skip_unless_available() {
        return None;
    }
    let mut lab = Lab::new().expect("lab");
    lab.start_resolver(&[
        ("api.example.test", cell_lab::lab::WEB_V4),
        ("other.example.test", cell_lab::lab::WEB_V4),
        ("api.anthropic.com", cell_lab::lab::WEB_V4),
        ("api.openai.com", cell_lab::lab::WEB_V4),
        (BEDROCK, cell_lab::lab::WEB_V4),
    ])
    .unwrap();
    let web = lab
        .https_server(&[
            ("api.example.test", CertKind::Valid),
            ("other.example.test", CertKind::Valid),
            ("api.anthropic.com", CertKind::Valid),
            ("api.openai.com", CertKind::Valid),
            (BEDROCK, CertKind::Valid),
        ])
        .unwrap();
    let policy = lab.dir.join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    let secrets = lab.dir.join("secrets.json");
    std::fs::write(&secrets, SECRETS).unwrap();
    let store = lab.dir.join("spy.jsonl");
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--secrets".as_ref(),
        secrets.as_os_str(),
        "--spy".as_ref(),
        store.as_os_str(),
    ];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    lab.start_proxy_with(
        Path::new(env!("CARGO_BIN_EXE_cell-proxy")),
        &policy,
        None,
        &args,
    )
    .unwrap();
    let loaded = lab
        .control(&format!(
            r#"{{"op":"secrets-load","values":{{"key":"{VALUE}"}}}}"#
        ))
        .unwrap();
    assert_eq!(loaded["ok"], Value::Bool(true), "{loaded}");
    let ca = lab.cell_ca_pem().unwrap();
    Some(Setup {
        h1: Client::new(&ca, &[b"http/1.1"]).unwrap(),
        h2: Client::new(&ca, &[b"h2"]).unwrap(),
        lab,
        web,
        store,
    })
}

fn send(s: &Setup, client: &Client, host: &str, req: Request<Full<Bytes>>) -> Fetched {
    let ip = resolve(&s.lab, host);
    s.lab
        .block_on(client.fetch(
            s.lab.agent_connect(at(ip, 443)).unwrap(),
            host,
            vec![req],
            1 << 20,
        ))
        .unwrap()
        .remove(0)
}

/// The store's exchanges (all files, oldest first), once `n` are there.
fn exchanges(s: &Setup, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&s.store).unwrap_or_default();
        let list: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &Value| v["event"] == "exchange")
            .collect();
        if list.len() >= n || std::time::Instant::now() > deadline {
            return list;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn post(host: &str, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", host)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", "cell-placeholder-key")
        .header("cookie", "session=abc")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[test]
fn spied_hosts_are_recorded_redacted_and_others_not_at_all() {
    let Some(s) = setup(&[]) else { return };
    let body =
        r#"{"model":"m","messages":[{"role":"user","content":"key is cell-placeholder-key"}]}"#;
    for client in [&s.h1, &s.h2] {
        // /reflect answers with what it received: the injected value comes
        // back, and the agent gets the placeholder.
        let got = send(
            &s,
            client,
            "api.example.test",
            post("api.example.test", "/reflect", body),
        );
        assert_eq!(got.status, StatusCode::OK);
        let text = String::from_utf8_lossy(&got.body);
        assert!(!text.contains(VALUE), "the agent saw the value: {text}");
        let other = send(
            &s,
            client,
            "other.example.test",
            post("other.example.test", "/record", "{}"),
        );
        // The placeholder to a host outside the scope is refused; either
        // way nothing of other.example.test is recorded.
        assert_eq!(other.status, StatusCode::FORBIDDEN);
        let plain = send(
            &s,
            client,
            "other.example.test",
            get("GET", "other.example.test", "/echo"),
        );
        assert_eq!(plain.status, StatusCode::OK);
    }
    // The upstream did get the value: the recorder saw the real request.
    assert!(
        s.web
            .recorded()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains(VALUE)),
        "the value was injected into the body"
    );
    let ex = exchanges(&s, 2);
    assert_eq!(ex.len(), 2, "one exchange per spied request: {ex:#?}");
    for e in &ex {
        assert_eq!(e["host"], "api.example.test", "{e}");
        assert_eq!(e["method"], "POST");
        assert_eq!(e["path"], "/reflect");
        assert_eq!(e["status"], 200);
        assert_eq!(e["complete"], true);
        assert!(e["durationMs"].as_f64().unwrap() > 0.0);
        let req = &e["request"];
        assert_eq!(req["headers"]["content-type"], "application/json");
        assert_eq!(req["headers"]["anthropic-version"], "2023-06-01");
        assert_eq!(
            req["headers"]["x-api-key"],
            Value::Null,
            "names only: {req}"
        );
        assert_eq!(req["headers"]["cookie"], Value::Null);
        assert_eq!(
            req["body"]["text"], body,
            "the request as the agent wrote it"
        );
        // `bytes` counts what went upstream: the value is longer than its placeholder.
        assert_eq!(
            req["body"]["bytes"],
            body.len() + VALUE.len() - "cell-placeholder-key".len()
        );
        let resp = e["response"]["body"]["text"].as_str().unwrap();
        assert!(resp.contains("cell-placeholder-key"), "{resp}");
    }
    let store = std::fs::read_to_string(&s.store).unwrap();
    assert!(!store.contains(VALUE), "the value is in the spy store");
    assert!(
        !store.contains("session=abc"),
        "a cookie is in the spy store"
    );
}

/// A known provider's host is recorded without being named; `spy: false`
/// turns that off.
#[test]
fn known_provider_hosts_are_recorded_unless_their_entry_says_no() {
    let Some(s) = setup(&[]) else { return };
    for host in ["api.anthropic.com", "api.openai.com"] {
        let got = send(&s, &s.h1, host, get("GET", host, "/echo"));
        assert_eq!(got.status, StatusCode::OK, "{host}");
    }
    // The anthropic one arrives; give the other the same time to show up.
    exchanges(&s, 1);
    std::thread::sleep(Duration::from_millis(500));
    let ex: Vec<Value> = std::fs::read_to_string(&s.store)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v["event"] == "exchange")
        .collect();
    let hosts: Vec<&str> = ex.iter().filter_map(|e| e["host"].as_str()).collect();
    assert_eq!(hosts, ["api.anthropic.com"], "{ex:#?}");
}

#[test]
fn a_recorded_stream_reaches_the_agent_as_it_streams() {
    let Some(s) = setup(&[]) else { return };
    for client in [&s.h1, &s.h2] {
        let got = send(
            &s,
            client,
            "api.example.test",
            get("GET", "api.example.test", "/sse"),
        );
        assert_eq!(got.status, StatusCode::OK);
        let first = got.first_byte_after.expect("a body");
        // The server sends the second event 1.5 s after the first: a
        // recorder that buffered would deliver nothing before then.
        assert!(
            first < Duration::from_millis(700) && got.total >= Duration::from_millis(1400),
            "first byte after {first:?}, whole stream {:?}",
            got.total
        );
        assert_eq!(
            String::from_utf8_lossy(&got.body),
            "data: first\n\ndata: second\n\n"
        );
    }
    let ex = exchanges(&s, 2);
    assert_eq!(ex.len(), 2);
    for e in &ex {
        assert_eq!(
            e["response"]["body"]["text"],
            "data: first\n\ndata: second\n\n"
        );
        assert_eq!(
            e["response"]["headers"]["content-type"],
            "text/event-stream"
        );
        let first = e["firstByteMs"].as_f64().unwrap();
        let total = e["durationMs"].as_f64().unwrap();
        assert!(first < 700.0 && total >= 1400.0, "{e}");
    }
}

#[test]
fn bodies_are_capped_and_the_store_stays_within_its_bounds() {
    let Some(s) = setup(&[
        "--spy-body-max",
        "1024",
        "--spy-max-bytes",
        "65536",
        "--spy-keep",
        "2",
    ]) else {
        return;
    };
    let big = "x".repeat(300_000);
    let got = send(
        &s,
        &s.h1,
        "api.example.test",
        post("api.example.test", "/record", &big),
    );
    assert_eq!(got.status, StatusCode::OK);
    let ex = exchanges(&s, 1);
    let req = &ex[0]["request"]["body"];
    assert_eq!(req["bytes"], 300_000, "{req}");
    assert_eq!(req["cut"], true);
    assert_eq!(req["text"].as_str().unwrap().len(), 1024);
    // A flood: many exchanges of ~2 KiB lines, bounded in count and time.
    let reqs: Vec<_> = (0..300)
        .map(|i| {
            post(
                "api.example.test",
                "/echo",
                &format!("{i:04}{}", "y".repeat(900)),
            )
        })
        .collect();
    let ip = resolve(&s.lab, "api.example.test");
    let out = s
        .lab
        .block_on(s.h1.fetch(
            s.lab.agent_connect(at(ip, 443)).unwrap(),
            "api.example.test",
            reqs,
            1 << 16,
        ))
        .unwrap();
    assert!(out.iter().all(|f| f.status == StatusCode::OK));
    std::thread::sleep(Duration::from_millis(500));
    let dir = s.store.parent().unwrap();
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("spy.jsonl"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    files.sort();
    assert!(
        files.len() <= 3,
        "the store and at most 2 rotated files: {files:?}"
    );
    assert!(
        files.iter().any(|(n, _)| n == "spy.jsonl.1"),
        "it rotated: {files:?}"
    );
    for (name, len) in &files {
        assert!(*len <= 65536, "{name} is {len} bytes");
    }
}

fn bedrock_post(path: &str, accept: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", BEDROCK)
        .header("content-type", "application/json")
        .header("accept", accept)
        .header("x-amz-date", "20261202T150102Z")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A Bedrock Runtime exchange through the real daemon, its entry without
/// `spy` (the provider default records it): the event stream's first part
/// reaches the agent before the stream ends, the store keeps the binary
/// frames whole (base64), and the built `cell spy --file` decodes model,
/// text, tool call, stop reason and tokens from them and from a Converse
/// exchange.
#[test]
fn a_bedrock_event_stream_is_recorded_as_it_streams_and_cell_spy_decodes_it() {
    let Some(s) = setup(&[]) else { return };
    let invoke = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":64,"system":"Be brief.","messages":[{"role":"user","content":"list the files"}]}"#;
    let stream_path = "/model/anthropic.claude-lab-1%3A0/invoke-with-response-stream";
    let mut streamed = Vec::new();
    for client in [&s.h1, &s.h2] {
        let got = send(
            &s,
            client,
            BEDROCK,
            bedrock_post(stream_path, "application/vnd.amazon.eventstream", invoke),
        );
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(
            got.headers["content-type"],
            "application/vnd.amazon.eventstream"
        );
        // The server sends its second part 300 ms after the first: a
        // recorder that buffered would deliver the first byte at the end.
        let first = got.first_byte_after.expect("a body");
        assert!(
            got.total.saturating_sub(first) >= Duration::from_millis(200),
            "first byte after {first:?}, whole stream {:?}",
            got.total
        );
        streamed.push(got.body);
    }
    let converse = r#"{"system":[{"text":"Be brief."}],"messages":[{"role":"user","content":[{"text":"list the files"}]}],"inferenceConfig":{"maxTokens":64}}"#;
    let got = send(
        &s,
        &s.h1,
        BEDROCK,
        bedrock_post(
            "/model/amazon.nova-lab-1%3A0/converse",
            "application/json",
            converse,
        ),
    );
    assert_eq!(got.status, StatusCode::OK);

    let ex = exchanges(&s, 3);
    assert_eq!(ex.len(), 3, "{ex:#?}");
    for (e, body) in ex[..2].iter().zip(&streamed) {
        assert_eq!(e["host"], BEDROCK);
        assert_eq!(e["path"], stream_path);
        assert_eq!(e["complete"], true);
        assert_eq!(e["request"]["headers"]["x-amz-date"], Value::Null);
        let resp = &e["response"];
        assert_eq!(
            resp["headers"]["content-type"],
            "application/vnd.amazon.eventstream"
        );
        assert_eq!(resp["body"]["bytes"], body.len(), "{e}");
        assert!(
            resp["body"]["base64"].is_string(),
            "binary frames are stored as base64: {e}"
        );
        assert!(e["firstByteMs"].as_f64().unwrap() + 200.0 <= e["durationMs"].as_f64().unwrap());
    }

    let cell = Path::new(env!("CARGO_BIN_EXE_cell-proxy")).with_file_name("cell");
    if !cell.exists() {
        if std::env::var_os("CI").is_some() {
            panic!("{} missing: build the workspace", cell.display());
        }
        eprintln!(
            "SKIPPED (decoding): {} not built; cargo build -p cell",
            cell.display()
        );
        return;
    }
    let spy = |flags: &[&str]| {
        let out = std::process::Command::new(&cell)
            .arg("spy")
            .args(flags)
            .arg("--file")
            .arg(&s.store)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let decoded: Vec<Value> = spy(&["--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("one summary per line"))
        .collect();
    assert_eq!(decoded.len(), 3, "{decoded:#?}");
    let hint = "(a stale cell binary? cargo build -p cell)";
    for d in &decoded {
        assert_eq!(d["provider"], "bedrock", "{d} {hint}");
        assert_eq!(d["system"], "Be brief.", "{d}");
        assert_eq!(d["sent"][0]["text"], "list the files", "{d}");
        assert_eq!(d["text"], "Checking.", "{d}");
        assert_eq!(d["toolCalls"][0]["name"], "run", "{d}");
        assert_eq!(d["toolCalls"][0]["arguments"], r#"{"cmd":"ls"}"#, "{d}");
        assert_eq!(d["stop"], "tool_use", "{d}");
        assert_eq!(d["usage"]["input"], 21, "{d}");
        assert_eq!(d["usage"]["output"], 9, "{d}");
        assert_eq!(d["partial"], serde_json::json!([]), "{d}");
        let model = if d["path"] == stream_path {
            assert_eq!(d["stream"], true);
            "anthropic.claude-lab-1:0"
        } else {
            assert_eq!(d["stream"], false);
            "amazon.nova-lab-1:0"
        };
        assert_eq!(d["model"], model, "{d}");
    }
    assert_eq!(
        decoded.iter().filter(|d| d["path"] == stream_path).count(),
        2
    );
    let shown = spy(&[]);
    for want in [
        "bedrock  anthropic.claude-lab-1:0  200 POST /model/anthropic.claude-lab-1%3A0/invoke-with-response-stream",
        "(first token ",
        "tokens in 21 out 9",
        "assistant  Checking.",
        "tool call  run {\"cmd\":\"ls\"}",
    ] {
        assert!(shown.contains(want), "{want} not in\n{shown}");
    }
}
