//! The transparent proxy in the lab: the agent's HTTPS and TCP go through the
//! real `cell-proxy` to a fake internet that records what arrives.
//!
//! Each test checks the allowed path, the denied path with the reason the
//! client sees, and that the fake internet saw none of the denied traffic.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use cell_lab::https::{CertKind, Client, FakeHttps, get};
use cell_lab::lab::WEB_V4;
use cell_lab::probe::{self, Outcome};
use cell_lab::{Lab, skip_unless_available};
use http::StatusCode;
use http_body_util::Full;

mod common;
use common::{at, connect_via_proxy, resolve};

const NAMES: &[&str] = &[
    "api.example.test",
    "other.example.test",
    "ro.example.test",
    "git.example.test",
    "pinned.example.test",
    "selfsigned.example.test",
    "expired.example.test",
    "wrongname.example.test",
];

const POLICY: &str = r#"{
  "https": [
    { "host": "api.example.test" },
    { "host": "other.example.test" },
    { "host": "ro.example.test", "methods": ["GET"], "paths": ["/echo", "/sse"] },
    { "host": "pinned.example.test", "passthrough": true },
    { "host": "selfsigned.example.test" },
    { "host": "expired.example.test" },
    { "host": "wrongname.example.test" }
  ],
  "tcp": [ { "host": "git.example.test", "ports": [22] } ],
  "dns": { "upstream": ["192.0.2.53"] }
}"#;

struct Setup {
    lab: Lab,
    web: FakeHttps,
    agent_tls: Client,
    agent_tls_h1: Client,
}

fn setup() -> Option<Setup> {
    setup_with_limits("")
}

/// The same, with `limits` (JSON members, e.g. `"idleTimeoutSecs": 1`) in the policy.
fn setup_with_limits(limits: &str) -> Option<Setup> {
    if skip_unless_available() {
        return None;
    }
    let mut lab = Lab::new().expect("lab");
    let records: Vec<(&str, Ipv4Addr)> = NAMES.iter().map(|n| (*n, WEB_V4)).collect();
    lab.start_resolver(&records).unwrap();
    let web = lab
        .https_server(&[
            ("api.example.test", CertKind::Valid),
            ("other.example.test", CertKind::Valid),
            ("ro.example.test", CertKind::Valid),
            ("pinned.example.test", CertKind::Valid),
            ("selfsigned.example.test", CertKind::SelfSigned),
            ("expired.example.test", CertKind::Expired),
            ("wrongname.example.test", CertKind::WrongName),
        ])
        .unwrap();
    let policy = lab.dir.join("policy.json");
    let text = if limits.is_empty() {
        POLICY.to_string()
    } else {
        POLICY.replace(
            r#""dns": { "upstream": ["192.0.2.53"] }"#,
            &format!(r#""dns": {{ "upstream": ["192.0.2.53"] }}, "limits": {{ {limits} }}"#),
        )
    };
    assert!(limits.is_empty() || text != POLICY);
    std::fs::write(&policy, text).unwrap();
    lab.start_proxy(Path::new(env!("CARGO_BIN_EXE_cell-proxy")), &policy, None)
        .unwrap();
    let ca = lab.cell_ca_pem().unwrap();
    let agent_tls = Client::new(&ca, &[b"h2", b"http/1.1"]).unwrap();
    let agent_tls_h1 = Client::new(&ca, &[b"http/1.1"]).unwrap();
    Some(Setup {
        lab,
        web,
        agent_tls,
        agent_tls_h1,
    })
}

/// Allowed GET and POST over HTTP/2 and HTTP/1.1, relayed to a validated upstream.
#[test]
fn allowed_requests_over_h2_and_h1() {
    let Some(s) = setup() else { return };
    let ip = resolve(&s.lab, "api.example.test");
    for (client, want) in [
        (&s.agent_tls, http::Version::HTTP_2),
        (&s.agent_tls_h1, http::Version::HTTP_11),
    ] {
        let post = http::Request::builder()
            .method("POST")
            .uri("https://api.example.test/echo")
            .header("host", "api.example.test")
            .body(Full::new(Bytes::from_static(b"hello world")))
            .unwrap();
        let got = s
            .lab
            .block_on(client.fetch(
                s.lab.agent_connect(at(ip, 443)).unwrap(),
                "api.example.test",
                vec![get("GET", "api.example.test", "/echo"), post],
                4096,
            ))
            .unwrap();
        assert_eq!(got[0].version, want);
        assert_eq!(got[0].status, StatusCode::OK, "{:?}", got[0]);
        let body = String::from_utf8_lossy(&got[0].body);
        assert!(body.starts_with("GET /echo api.example.test"), "{body}");
        // The upstream leg keeps the client's protocol (h2-only services such as gRPC keep working).
        let upstream = if want == http::Version::HTTP_2 {
            "HTTP/2.0"
        } else {
            "HTTP/1.1"
        };
        assert!(body.contains(upstream), "upstream spoke {upstream}: {body}");
        assert_eq!(got[1].status, StatusCode::OK);
        assert!(String::from_utf8_lossy(&got[1].body).contains("body=11"));
    }
    assert_eq!(s.web.seen().len(), 4);
    // One line per request, written when its response body ended, with bytes and duration.
    let post = wait_event(&s.lab, |e| e["kind"] == "http" && e["method"] == "POST");
    assert_eq!(post["bytes_up"], 11, "{post}");
    assert!(
        post["bytes_down"].as_u64().unwrap() > 0
            && post["status"] == 200
            && post["rule"] == "policy:https[0]",
        "{post}"
    );
    // And one per connection, when it closed.
    let conn = wait_event(&s.lab, |e| e["kind"] == "tls" && e["decision"] == "allow");
    assert!(
        conn["bytes_up"].as_u64().unwrap() > 11 && conn["bytes_down"].as_u64().unwrap() > 0,
        "{conn}"
    );
}

/// The first event matching `pred`, waiting briefly (events are written by a thread).
fn wait_event(lab: &Lab, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(e) = lab.events().into_iter().find(|e| pred(e)) {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no such event in {:#?}",
            lab.events()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn deny_reason(f: &cell_lab::https::Fetched) -> String {
    f.headers
        .get("x-cell-deny-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Method and path rules, Host ≠ SNI (domain fronting), ambiguous paths:
/// 403 with the reason in the header and body; the upstream saw none of them.
#[test]
fn method_path_and_host_are_enforced_per_request() {
    let Some(s) = setup() else { return };
    let ip = resolve(&s.lab, "ro.example.test");
    let reqs = vec![
        get("GET", "ro.example.test", "/echo"),
        get("POST", "ro.example.test", "/echo"),
        get("GET", "ro.example.test", "/admin"),
        get("GET", "ro.example.test", "/echo/../admin"),
        get("GET", "other.example.test", "/echo"),
    ];
    for client in [&s.agent_tls, &s.agent_tls_h1] {
        let got = s
            .lab
            .block_on(client.fetch(
                s.lab.agent_connect(at(ip, 443)).unwrap(),
                "ro.example.test",
                reqs.clone(),
                4096,
            ))
            .unwrap();
        assert_eq!(got[0].status, StatusCode::OK);
        for (i, expect) in [
            (1, "method POST"),
            (2, "path /admin"),
            (3, "path /echo/../admin"),
            (4, "domain fronting"),
        ] {
            assert_eq!(got[i].status, StatusCode::FORBIDDEN, "request {i}");
            assert!(
                deny_reason(&got[i]).contains(expect),
                "request {i}: {:?}",
                deny_reason(&got[i])
            );
            let body = String::from_utf8_lossy(&got[i].body);
            assert!(
                body.contains("to allow it:"),
                "the fix is in the body: {body}"
            );
        }
    }
    let seen = s.web.seen();
    assert_eq!(
        seen.len(),
        2,
        "only the two allowed GETs reached the server: {seen:?}"
    );
}

/// No SNI, an IP SNI, or an SNI naming another (even allowed) host than the
/// address: reset before any certificate is shown; nothing reaches upstream.
#[test]
fn sni_must_name_the_host_behind_the_address() {
    let Some(s) = setup() else { return };
    let ip = resolve(&s.lab, "api.example.test");
    let _other = resolve(&s.lab, "other.example.test");
    for sni in ["other.example.test", "198.18.0.1"] {
        let r = s.lab.block_on(s.agent_tls.fetch(
            s.lab.agent_connect(at(ip, 443)).unwrap(),
            sni,
            vec![get("GET", sni, "/echo")],
            0,
        ));
        let e = format!("{:#}", r.expect_err("must fail"));
        assert!(
            e.contains("TLS handshake") || e.contains("reset"),
            "{sni}: {e}"
        );
    }
    assert!(s.web.seen().is_empty(), "{:?}", s.web.seen());
    wait_event(&s.lab, |e| {
        e["event"] == "conn"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("does not match"))
    });
    wait_event(&s.lab, |e| e["event"] == "conn" && e["reason"] == "no SNI");
}

/// A self-signed, expired or wrong-name upstream certificate: 502, and the
/// request was never sent to that server.
#[test]
fn upstream_certificates_are_validated() {
    let Some(s) = setup() else { return };
    for name in [
        "selfsigned.example.test",
        "expired.example.test",
        "wrongname.example.test",
    ] {
        let ip = resolve(&s.lab, name);
        let got = s
            .lab
            .block_on(s.agent_tls.fetch(
                s.lab.agent_connect(at(ip, 443)).unwrap(),
                name,
                vec![get("GET", name, "/echo")],
                4096,
            ))
            .unwrap();
        assert_eq!(got[0].status, StatusCode::BAD_GATEWAY, "{name}");
        let body = String::from_utf8_lossy(&got[0].body);
        assert!(
            body.contains("certificate") || body.contains("TLS"),
            "{name}: {body}"
        );
    }
    assert!(
        s.web.seen().is_empty(),
        "no request reached a server with a bad certificate: {:?}",
        s.web.seen()
    );
}

/// Plain TCP entries are spliced to the real host; the same host on a port
/// redirected for someone else is reset, and an HTTPS host's SSH attempt too.
#[test]
fn tcp_entries_are_spliced_and_nothing_else() {
    let Some(s) = setup() else { return };
    let ssh = s
        .lab
        .tcp_recorder(SocketAddr::new(IpAddr::V4(WEB_V4), 22))
        .unwrap();
    let git = resolve(&s.lab, "git.example.test");
    let api = resolve(&s.lab, "api.example.test");
    let ok = probe::tcp(&s.lab.agent, at(git, 22), Duration::from_secs(5)).unwrap();
    assert_eq!(ok.outcome, Outcome::Open, "{ok:?}");
    let denied = probe::tcp(&s.lab.agent, at(api, 22), Duration::from_secs(5)).unwrap();
    assert!(
        denied.outcome != Outcome::Open && denied.elapsed < Duration::from_secs(1),
        "{denied:?}"
    );
    let git443 = probe::tcp(&s.lab.agent, at(git, 443), Duration::from_secs(5)).unwrap();
    assert!(
        git443.outcome != Outcome::Open,
        "git.example.test has no HTTPS entry: {git443:?}"
    );
    assert_eq!(ssh.seen().len(), 1, "{:?}", ssh.seen());
}

/// A passthrough host is relayed without interception: the agent sees the
/// upstream's own certificate (issued by the fake internet's CA).
#[test]
fn passthrough_relays_the_upstream_certificate() {
    let Some(s) = setup() else { return };
    let ip = resolve(&s.lab, "pinned.example.test");
    let upstream_trust = Client::new(&s.lab.internet_ca.pem, &[b"http/1.1"]).unwrap();
    let got = s
        .lab
        .block_on(upstream_trust.fetch(
            s.lab.agent_connect(at(ip, 443)).unwrap(),
            "pinned.example.test",
            vec![get("GET", "pinned.example.test", "/echo")],
            4096,
        ))
        .unwrap();
    assert_eq!(got[0].status, StatusCode::OK);
    // Trusting only the cell CA fails: the certificate really is the upstream's.
    let r = s.lab.block_on(s.agent_tls.fetch(
        s.lab.agent_connect(at(ip, 443)).unwrap(),
        "pinned.example.test",
        vec![get("GET", "pinned.example.test", "/echo")],
        0,
    ));
    assert!(r.is_err());
}

/// Both legs settle on AES-128-GCM with SHA-256 even when the client asks for
/// AES-256 first (as curl and most clients do): the cheaper key schedule
/// for each of the two handshakes per connection. Every suite stays on
/// offer: a client that offers only AES-256 still connects.
#[test]
fn both_legs_prefer_aes_128_gcm() {
    use rustls::CipherSuite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
    use rustls_pki_types::pem::PemObject;
    use std::io::{Read, Write};
    let Some(s) = setup() else { return };
    let ip = resolve(&s.lab, "api.example.test");
    let ca = s.lab.cell_ca_pem().unwrap();
    let handshake = |offered: &[rustls::CipherSuite]| {
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .retain(|c| offered.contains(&c.suite()));
        provider
            .cipher_suites
            .sort_by_key(|c| offered.iter().position(|o| *o == c.suite()));
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let conn = rustls::ClientConnection::new(
            std::sync::Arc::new(cfg),
            "api.example.test".try_into().unwrap(),
        )
        .unwrap();
        let tcp = s.lab.agent_connect(at(ip, 443)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"GET /echo HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out).into_owned();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        tls.conn.negotiated_cipher_suite().unwrap().suite()
    };
    assert_eq!(
        handshake(&[TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256]),
        TLS13_AES_128_GCM_SHA256,
        "the agent leg: our order, not the client's"
    );
    assert_eq!(
        handshake(&[TLS13_AES_256_GCM_SHA384]),
        TLS13_AES_256_GCM_SHA384,
        "a client offering only AES-256 still connects"
    );
    // The upstream leg: the fake server honours its client's order, as most do.
    let upstream = s.web.cipher_suites();
    assert!(!upstream.is_empty());
    assert!(
        upstream.iter().all(|c| *c == TLS13_AES_128_GCM_SHA256),
        "{upstream:?}"
    );
}

/// Cleartext HTTP on port 80 gets a 403 that says HTTPS is required; nothing is relayed.
#[test]
fn cleartext_http_is_refused_with_a_reason() {
    use std::io::{Read, Write};
    let Some(s) = setup() else { return };
    let ip = resolve(&s.lab, "api.example.test");
    let mut c = s.lab.agent_connect(at(ip, 80)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /echo HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(
        out.contains("HTTPS is required") && out.contains("https://api.example.test/echo"),
        "{out}"
    );
    assert!(s.web.seen().is_empty());
}

/// An SSE stream's first event reaches the agent long before the stream ends.
#[test]
fn streams_are_relayed_as_they_come() {
    let Some(s) = setup() else { return };
    let ip = resolve(&s.lab, "api.example.test");
    for client in [&s.agent_tls, &s.agent_tls_h1] {
        let got = s
            .lab
            .block_on(client.fetch(
                s.lab.agent_connect(at(ip, 443)).unwrap(),
                "api.example.test",
                vec![get("GET", "api.example.test", "/sse")],
                4096,
            ))
            .unwrap();
        let first = got[0].first_byte_after.expect("a first event");
        assert!(
            first < Duration::from_millis(700),
            "first event after {first:?}"
        );
        assert!(
            got[0].total >= Duration::from_millis(1400),
            "stream ended after {:?}",
            got[0].total
        );
        assert_eq!(
            String::from_utf8_lossy(&got[0].body),
            "data: first\n\ndata: second\n\n"
        );
    }
}

/// A large download streams through with bounded proxy memory.
#[test]
fn large_downloads_stream_with_bounded_memory() {
    let Some(s) = setup() else { return };
    let ip = resolve(&s.lab, "api.example.test");
    let mb: u64 = 100;
    let got = s
        .lab
        .block_on(s.agent_tls.fetch(
            s.lab.agent_connect(at(ip, 443)).unwrap(),
            "api.example.test",
            vec![get("GET", "api.example.test", &format!("/big?mb={mb}"))],
            0,
        ))
        .unwrap();
    assert_eq!(got[0].status, StatusCode::OK);
    assert_eq!(got[0].len, mb << 20, "every byte arrived");
    eprintln!("{mb} MiB through the proxy in {:?}", got[0].total);
    let ev = wait_event(&s.lab, |e| e["kind"] == "http" && e["path"] == "/big");
    assert_eq!(ev["status"], 200);
    assert_eq!(ev["bytes_down"].as_u64(), Some(mb << 20), "{ev}");
    let rss = s.lab.proxy_peak_rss().unwrap();
    assert!(
        rss < 64 << 20,
        "peak RSS {} MiB after a {mb} MiB download",
        rss >> 20
    );
}

/// Writes `request` raw over TLS (HTTP/1.1) and returns everything read until
/// the proxy closes or 3 s pass.
fn raw_exchange(s: &Setup, ip: Ipv4Addr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.lab.block_on(async {
        let mut tls = s
            .agent_tls_h1
            .raw(
                s.lab.agent_connect(at(ip, 443)).unwrap(),
                "api.example.test",
            )
            .await
            .unwrap();
        tls.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// Reads one HTTP/1.1 response with a Content-Length: its head and body.
async fn read_response<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        r.read_exact(&mut b).await.expect("a response head");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.expect("the response body");
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// The daemon's `connections` status: (intercepted, parked, parked_total).
fn connections(lab: &cell_lab::Lab) -> (u64, u64, u64) {
    let st = lab.control(r#"{"op":"status"}"#).unwrap();
    let c = &st["connections"];
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{k} in {st}"));
    (n("intercepted"), n("parked"), n("parked_total"))
}

/// An idle kept-alive HTTP/1.1 connection is parked (hyper's buffers let go)
/// and picks up where it was: the next request, two pipelined ones, and the
/// framing watch's refusal of a smuggling shape all work after a park, and
/// nothing extra reaches the internet. A connection with half a head is
/// never parked: a new hyper connection would restart its header timer.
#[test]
fn idle_http1_connections_are_parked_and_resume() {
    use tokio::io::AsyncWriteExt;
    let Some(s) = setup() else { return };
    let ip = resolve(&s.lab, "api.example.test");
    let lab = &s.lab;
    let get = b"GET /echo HTTP/1.1\r\nHost: api.example.test\r\n\r\n";
    let (first, parked_after_one, pipelined, smuggled, half_head, completed) = lab.block_on(async {
        let mut tls = s
            .agent_tls_h1
            .raw(lab.agent_connect(at(ip, 443)).unwrap(), "api.example.test")
            .await
            .unwrap();
        tls.write_all(get).await.unwrap();
        let first = read_response(&mut tls).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let parked_after_one = connections(lab);
        // Two requests in one write, after a park.
        let two = [&get[..], &get[..]].concat();
        tls.write_all(&two).await.unwrap();
        let pipelined = [read_response(&mut tls).await, read_response(&mut tls).await];
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The watch still follows the stream: CL.TE after a park is refused.
        tls.write_all(b"POST /echo HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api.example.test\r\n\r\n").await.unwrap();
        let smuggled = read_response(&mut tls).await;
        // Half a head on a fresh connection: not at rest, so never parked.
        let before = connections(lab).2;
        let mut tls = s
            .agent_tls_h1
            .raw(lab.agent_connect(at(ip, 443)).unwrap(), "api.example.test")
            .await
            .unwrap();
        tls.write_all(b"GET /echo HTTP/1.1\r\nHost: api.exa").await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let half_head = (before, connections(lab));
        tls.write_all(b"mple.test\r\n\r\n").await.unwrap();
        let completed = read_response(&mut tls).await;
        (first, parked_after_one, pipelined, smuggled, half_head, completed)
    });
    assert!(first.0.starts_with("HTTP/1.1 200"), "{first:?}");
    assert_eq!(
        parked_after_one.1, 1,
        "parked after one request: {parked_after_one:?}"
    );
    assert!(parked_after_one.2 >= 1);
    for r in &pipelined {
        assert!(r.0.starts_with("HTTP/1.1 200"), "{pipelined:?}");
    }
    assert!(smuggled.0.starts_with("HTTP/1.1 400"), "{smuggled:?}");
    let (before, during) = half_head;
    assert_eq!(during.2, before, "a half-read head was parked: {during:?}");
    assert_eq!(during.1, 0);
    assert!(completed.0.starts_with("HTTP/1.1 200"), "{completed:?}");
    assert_eq!(
        s.web.seen().len(),
        4,
        "four clean requests reached the server: {:?}",
        s.web.seen()
    );
    assert!(!s.web.seen().iter().any(|l| l.contains("smuggled")));
}

/// Request-smuggling shapes — Content-Length with chunked (CL.TE, also with
/// a request smuggled behind it), two different lengths, obs-fold, a
/// non-final chunked — are refused with 400 and never reach the upstream.
/// (hyper drops the length of a CL.TE request while parsing; the proxy's
/// framing watch sees the bytes first and refuses that request.)
#[test]
fn smuggling_shapes_are_rejected() {
    let Some(s) = setup() else { return };
    let ip = resolve(&s.lab, "api.example.test");
    let rejected: [&[u8]; 5] = [
        b"POST /echo HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api.example.test\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: api.example.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 4\r\nContent-Length: 9\r\n\r\nabcd",
        b"GET /echo HTTP/1.1\r\nHost: api.example.test\r\nX-Folded: a\r\n b\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: api.example.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    ];
    for (i, req) in rejected.iter().enumerate() {
        let out = raw_exchange(&s, ip, req);
        assert!(out.starts_with("HTTP/1.1 400"), "case {i}: {out:?}");
        assert_eq!(
            out.lines().filter(|l| l.starts_with("HTTP/1.1 ")).count(),
            1,
            "case {i}: one response, then close: {out:?}"
        );
    }
    // A CL.TE request after clean ones on a kept-alive connection: the clean ones pass, it does not.
    let out = raw_exchange(
        &s,
        ip,
        b"GET /echo HTTP/1.1\r\nHost: api.example.test\r\n\r\nPOST /echo HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 5\r\n\r\nhelloPOST /echo HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    let statuses: Vec<&str> = out.lines().filter(|l| l.starts_with("HTTP/1.1 ")).collect();
    assert_eq!(
        statuses,
        vec![
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 400 Bad Request"
        ],
        "{out:?}"
    );
    assert_eq!(
        s.web.seen().len(),
        2,
        "only the two clean requests reached the server: {:?}",
        s.web.seen()
    );
    assert!(!s.web.seen().iter().any(|l| l.contains("smuggled")));
}

/// An HTTP/1.1 upgrade (the WebSocket handshake) is relayed, and bytes flow
/// both ways after the 101.
#[test]
fn upgrades_are_relayed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(s) = setup() else { return };
    let ip = resolve(&s.lab, "api.example.test");
    let echoed = s.lab.block_on(async {
        let mut tls = s.agent_tls_h1.raw(s.lab.agent_connect(at(ip, 443)).unwrap(), "api.example.test").await.unwrap();
        tls.write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: api.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tls.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        tls.write_all(b"ping over the upgraded stream").await.unwrap();
        let mut back = [0u8; 29];
        tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut back)).await.unwrap().unwrap();
        String::from_utf8_lossy(&back).into_owned()
    });
    assert_eq!(echoed, "ping over the upgraded stream");
    assert_eq!(s.web.seen().len(), 1);
}

/// The explicit proxy: CONNECT to an allowed host is intercepted under the
/// same policy (method rules included); CONNECT to a denied host, an unlisted
/// port or an address gets a 403 naming the fix; cleartext absolute-URI
/// requests are refused. Only the allowed request reached the internet.
#[test]
fn explicit_proxy_connect_follows_the_same_policy() {
    let Some(s) = setup() else { return };
    let (head, tunnel) = connect_via_proxy(&s.lab, "ro.example.test:443");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let got = s
        .lab
        .block_on(s.agent_tls.fetch(
            tunnel,
            "ro.example.test",
            vec![
                get("GET", "ro.example.test", "/echo"),
                get("POST", "ro.example.test", "/echo"),
            ],
            4096,
        ))
        .unwrap();
    assert_eq!(got[0].status, StatusCode::OK);
    assert_eq!(
        got[1].status,
        StatusCode::FORBIDDEN,
        "method rules apply inside CONNECT too"
    );

    for (target, expect) in [
        ("evil.example.test:443", "not in the allowlist"),
        ("api.example.test:8443", "not in the allowlist"),
        ("203.0.113.10:443", "addresses are never allowed"),
    ] {
        let (head, _) = connect_via_proxy(&s.lab, target);
        assert!(head.starts_with("HTTP/1.1 403"), "{target}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("x-cell-deny-reason"),
            "{head}"
        );
        assert!(
            head.contains(expect) && head.contains("to allow it:"),
            "{target}: {head}"
        );
    }
    // SNI must still match the CONNECT target.
    let (_, tunnel) = connect_via_proxy(&s.lab, "api.example.test:443");
    let r = s.lab.block_on(s.agent_tls.fetch(
        tunnel,
        "other.example.test",
        vec![get("GET", "other.example.test", "/echo")],
        0,
    ));
    assert!(r.is_err(), "SNI other than the CONNECT target is refused");

    use std::io::{Read, Write};
    let mut c = s
        .lab
        .agent_connect(at(cell_lab::lab::FW_AGENT_V4, cell_lab::lab::EXPLICIT_PORT))
        .unwrap();
    c.write_all(b"GET http://api.example.test/echo HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 403") && out.contains("use https://api.example.test/echo"),
        "{out}"
    );

    assert_eq!(
        s.web.seen(),
        vec!["GET /echo ro.example.test HTTP/2.0".to_string()]
    );
}

/// The agent VM trusts the cell CA by fetching its certificate from the
/// firewall at boot: `GET /cell/ca.crt` on the explicit port returns exactly
/// the certificate that signs the leaves, and nothing else is served there:
/// not the key, not other paths, not other methods.
#[test]
fn explicit_port_serves_the_ca_certificate_and_nothing_else() {
    let Some(s) = setup() else { return };
    let ask = |request: &str| {
        use std::io::{Read, Write};
        let mut c = s
            .lab
            .agent_connect(at(cell_lab::lab::FW_AGENT_V4, cell_lab::lab::EXPLICIT_PORT))
            .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    };
    let ca = s.lab.cell_ca_pem().unwrap();
    let got = ask("GET /cell/ca.crt HTTP/1.1\r\nHost: 10.89.0.1\r\nConnection: close\r\n\r\n");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let body = got.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_eq!(body, ca, "the served certificate is the CA on disk");
    assert!(!got.contains("PRIVATE KEY"));

    for request in [
        "GET /cell/ca.key HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /cell/../ca.key HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "POST /cell/ca.crt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        "GET http://10.89.0.1/cell/ca.crt HTTP/1.1\r\nHost: 10.89.0.1\r\nConnection: close\r\n\r\n",
    ] {
        let got = ask(request);
        assert!(got.starts_with("HTTP/1.1 403"), "{request}: {got}");
        assert!(!got.contains("PRIVATE KEY") && !got.contains("BEGIN CERTIFICATE"));
    }
    assert!(s.web.seen().is_empty());
}

/// A reload that removes a host closes that host's in-flight streams; a
/// stream to a host that stays allowed finishes; new connections to the
/// removed host are refused.
#[test]
fn reload_closes_streams_of_hosts_it_denies() {
    let Some(s) = setup() else { return };
    let api = resolve(&s.lab, "api.example.test");
    let other = resolve(&s.lab, "other.example.test");
    let (a, b) = (
        s.lab.agent_connect(at(api, 443)).unwrap(),
        s.lab.agent_connect(at(other, 443)).unwrap(),
    );
    let (cut, kept) = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(400));
            std::fs::write(
                s.lab.dir.join("policy.json"),
                POLICY.replace(r#"{ "host": "api.example.test" },"#, ""),
            )
            .unwrap();
            let ev = s.lab.reload_proxy().unwrap();
            assert_eq!(ev["decision"], "applied", "{ev}");
        });
        s.lab.block_on(async {
            tokio::join!(
                s.agent_tls.fetch(
                    a,
                    "api.example.test",
                    vec![get("GET", "api.example.test", "/sse")],
                    4096
                ),
                s.agent_tls.fetch(
                    b,
                    "other.example.test",
                    vec![get("GET", "other.example.test", "/sse")],
                    4096
                ),
            )
        })
    });
    match cut {
        Err(_) => {}
        Ok(f) => assert_eq!(
            String::from_utf8_lossy(&f[0].body),
            "data: first\n\n",
            "cut before the second event"
        ),
    }
    let kept = kept.expect("the other stream is untouched");
    assert_eq!(
        String::from_utf8_lossy(&kept[0].body),
        "data: first\n\ndata: second\n\n"
    );
    // The close is an event.
    wait_event(&s.lab, |e| {
        e["decision"] == "closed" && e["host"] == "api.example.test"
    });
    let again = probe::tcp(&s.lab.agent, at(api, 443), Duration::from_secs(5)).unwrap();
    assert!(
        again.failed_fast(Duration::from_secs(1)),
        "new connections to the removed host are reset: {again:?}"
    );
}

/// An upgraded (WebSocket-shaped) stream is closed when a reload denies its host.
#[test]
fn reload_closes_upgraded_streams_of_denied_hosts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(s) = setup() else { return };
    let ip = resolve(&s.lab, "api.example.test");
    let mut tls = s.lab.block_on(async {
        let mut tls = s.agent_tls_h1.raw(s.lab.agent_connect(at(ip, 443)).unwrap(), "api.example.test").await.unwrap();
        tls.write_all(b"GET /upgrade HTTP/1.1\r\nHost: api.example.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tls.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        tls.write_all(b"before").await.unwrap();
        let mut back = [0u8; 6];
        tls.read_exact(&mut back).await.unwrap();
        tls
    });
    std::fs::write(
        s.lab.dir.join("policy.json"),
        POLICY.replace(r#"{ "host": "api.example.test" },"#, ""),
    )
    .unwrap();
    assert_eq!(s.lab.reload_proxy().unwrap()["decision"], "applied");
    let closed = s.lab.block_on(async {
        let _ = tls.write_all(b"after").await;
        let mut buf = [0u8; 16];
        tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await
    });
    match closed {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("the upgraded stream should be closed, got {other:?}"),
    }
}

/// Past `limits.proxyConnections` a new connection is reset at once (and
/// logged); closing some makes room again.
#[test]
fn connection_limit_resets_the_excess() {
    let Some(s) = setup_with_limits(r#""proxyConnections": 8"#) else {
        return;
    };
    let lab = s.lab;
    let ca = lab.cell_ca_pem().unwrap();
    let client = Client::new(&ca, &[b"http/1.1"]).unwrap();
    let ip = resolve(&lab, "api.example.test");
    let held: Vec<_> = (0..8)
        .map(|_| {
            let c = lab.agent_connect(at(ip, 443)).unwrap();
            lab.block_on(client.raw(c, "api.example.test")).unwrap()
        })
        .collect();
    let start = std::time::Instant::now();
    // Refused either way: the reset can already be there when connect() returns.
    let excess = lab
        .agent_connect(at(ip, 443))
        .and_then(|c| lab.block_on(client.raw(c, "api.example.test")));
    assert!(excess.is_err(), "the ninth connection is refused");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "at once: {:?}",
        start.elapsed()
    );
    wait_event(&lab, |e| e["reason"] == "too-many-connections");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let again = lab.block_on(client.fetch(
        lab.agent_connect(at(ip, 443)).unwrap(),
        "api.example.test",
        vec![get("GET", "api.example.test", "/echo")],
        64,
    ));
    assert_eq!(
        again.unwrap()[0].status,
        StatusCode::OK,
        "room again after closing"
    );
}

/// A client that connects and sends nothing, or half a ClientHello, is
/// dropped after `limits.handshakeTimeoutMs` and never holds a slot for long.
#[test]
fn slow_clients_are_dropped_after_the_handshake_timeout() {
    use std::io::{Read, Write};
    let Some(s) = setup_with_limits(r#""handshakeTimeoutMs": 400"#) else {
        return;
    };
    let lab = s.lab;
    let ip = resolve(&lab, "api.example.test");
    for partial in [&b""[..], &b"\x16\x03\x01\x02\x00"[..]] {
        let mut c = lab.agent_connect(at(ip, 443)).unwrap();
        c.write_all(partial).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let start = std::time::Instant::now();
        let mut buf = [0u8; 8];
        let r = c.read(&mut buf);
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "dropped after {took:?}"
        );
    }
    wait_event(&lab, |e| e["reason"] == "client hello timeout");
}

/// A real WebSocket session (RFC 6455 framing on both ends) through the
/// intercepting proxy: text and a 256 KiB binary message echo intact.
#[test]
fn websocket_echo_through_the_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let Some(s) = setup() else { return };
    let ip = resolve(&s.lab, "api.example.test");
    s.lab.block_on(async {
        let tls = s
            .agent_tls_h1
            .raw(
                s.lab.agent_connect(at(ip, 443)).unwrap(),
                "api.example.test",
            )
            .await
            .unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async("wss://api.example.test/ws", tls)
            .await
            .expect("websocket handshake through the proxy");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        ws.send(Message::text("hello through cell")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("hello through cell")
        );
        let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        ws.send(Message::binary(big.clone())).await.unwrap();
        // Bounded: a relay that stalls (it once did, holding the tail of a TLS
        // write unflushed) must fail here, not at the proxy's idle timeout.
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo within 10 s");
        assert_eq!(echoed.unwrap().unwrap(), Message::binary(big));
        ws.close(None).await.unwrap();
    });
    assert_eq!(s.web.seen().len(), 1);
}

/// An intercepted connection on which nothing moves for `limits.idleTimeoutSecs`
/// is closed; one that keeps working is not.
#[test]
fn idle_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(s) = setup_with_limits(r#""idleTimeoutSecs": 1"#) else {
        return;
    };
    let lab = s.lab;
    let client = Client::new(&lab.cell_ca_pem().unwrap(), &[b"http/1.1"]).unwrap();
    let ip = resolve(&lab, "api.example.test");
    let (r, took) = lab.block_on(async {
        let mut tls = client
            .raw(lab.agent_connect(at(ip, 443)).unwrap(), "api.example.test")
            .await
            .unwrap();
        // Busy: a request every 400 ms for 2 s keeps it open.
        let mut buf = vec![0u8; 4096];
        for _ in 0..5 {
            tls.write_all(b"GET /echo HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
                .await
                .unwrap();
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0 && buf.starts_with(b"HTTP/1.1 200"));
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        // Idle: then it is closed.
        let start = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
        (r, start.elapsed())
    });
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "closed, not timed out: {r:?}"
    );
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
}
