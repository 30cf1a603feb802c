//! Path rules and framing in the lab, end to end: request shapes that
//! servers read differently from the proxy (issue 11 finding 4, issue 17
//! findings 1 and 2) are refused by the real `cell-proxy`, over HTTP/2 and
//! HTTP/1.1, and the fake internet never sees them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use cell_lab::https::{CertKind, Client, FakeHttps, get};
use cell_lab::lab::{WEB_V4, fw_dns};
use cell_lab::probe::{self, Transport};
use cell_lab::{Lab, skip_unless_available};
use hickory_proto::rr::RecordType;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "api.example.test";
const POLICY: &str = r#"{
  "https": [ { "host": "api.example.test", "paths": ["/allowed/**"] } ],
  "dns": { "upstream": ["192.0.2.53"] }
}"#;

/// Shapes a server reads as a path outside `/allowed/`: Tomcat, Jetty and
/// Spring strip `;` parameters (`..;` is `..`), a lenient UTF-8 decoder
/// takes overlong `%c0%ae` as `.`, IIS decodes `%u002e`, a server that
/// decodes twice reads `%2%65.` as `..`, Unicode folding makes `．` a dot.
const DENIED: &[&str] = &[
    "/allowed/..;/denied",
    "/allowed/..;x=1/denied",
    "/allowed/.;/denied",
    "/allowed/%c0%ae%c0%ae/denied",
    "/allowed/%u002e%u002e/denied",
    "/allowed/%2%65./",
    "/allowed/%252e%252e/denied",
    "/allowed/%ef%bc%8e%ef%bc%8e/denied",
    "/allowed/..%20/denied",
    "/allowed/%00/denied",
    "/allowed//denied",
];

struct Setup {
    lab: Lab,
    web: FakeHttps,
    h2: Client,
    h1: Client,
    ip: Ipv4Addr,
}

fn setup() -> Option<Setup> {
    if skip_unless_available() {
        return None;
    }
    let mut lab = Lab::new().expect("lab");
    lab.start_resolver(&[(HOST, WEB_V4)]).unwrap();
    let web = lab.https_server(&[(HOST, CertKind::Valid)]).unwrap();
    let policy = lab.dir.join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    lab.start_proxy(Path::new(env!("CARGO_BIN_EXE_cell-proxy")), &policy, None)
        .unwrap();
    let ca = lab.cell_ca_pem().unwrap();
    let h2 = Client::new(&ca, &[b"h2", b"http/1.1"]).unwrap();
    let h1 = Client::new(&ca, &[b"http/1.1"]).unwrap();
    let m = probe::dns(
        &lab.agent,
        fw_dns(),
        &format!("{HOST}."),
        RecordType::A,
        Transport::Udp,
    )
    .unwrap();
    let ip = *probe::a_records(&m).first().expect("synthetic address");
    Some(Setup {
        lab,
        web,
        h2,
        h1,
        ip,
    })
}

fn at(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), 443)
}

/// Sends `bytes` on one HTTP/1.1 connection and returns all the proxy answered.
fn raw(s: &Setup, bytes: &[u8]) -> String {
    s.lab.block_on(async {
        let mut tls =
            s.h1.raw(s.lab.agent_connect(at(s.ip)).unwrap(), HOST)
                .await
                .unwrap();
        tls.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_to_end(&mut out))
            .await;
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// Under `/allowed/**`, a plain path is relayed; every disguised way out of
/// `/allowed/` is 403 over HTTP/2 and HTTP/1.1, and reaches nobody.
#[test]
fn disguised_dot_segments_are_denied() {
    let Some(s) = setup() else { return };
    let mut reqs = vec![get("GET", HOST, "/allowed/x")];
    reqs.extend(DENIED.iter().map(|p| get("GET", HOST, p)));
    for client in [&s.h2, &s.h1] {
        let got = s
            .lab
            .block_on(client.fetch(
                s.lab.agent_connect(at(s.ip)).unwrap(),
                HOST,
                reqs.clone(),
                0,
            ))
            .unwrap();
        assert_ne!(
            got[0].status,
            StatusCode::FORBIDDEN,
            "the plain path passes"
        );
        for (path, r) in DENIED.iter().zip(&got[1..]) {
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
        }
    }
    // Shapes `http::Uri` will not build, sent as bytes: a backslash, a bare `%`.
    for path in [
        "/allowed\\..\\denied",
        "/allowed/%",
        "/allowed/%u002e%u002e/denied",
    ] {
        let out = raw(
            &s,
            format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(
            out.starts_with("HTTP/1.1 403") || out.starts_with("HTTP/1.1 400"),
            "{path}: {out}"
        );
    }
    let seen = s.web.seen();
    assert_eq!(
        seen.len(),
        2,
        "only the plain path, once per client: {seen:?}"
    );
}

/// Issue 17 finding 1: Content-Length with chunked behind bare-LF line
/// endings (hyper accepts them) is refused, alone or after a bare-LF request.
#[test]
fn bare_lf_framing_is_refused() {
    let Some(s) = setup() else { return };
    let alone = format!(
        "POST /allowed/s HTTP/1.1\nHost: {HOST}\nTransfer-Encoding: chunked\nContent-Length: 3\n\n0\n\n"
    );
    let after = format!(
        "GET /allowed/a HTTP/1.1\nHost: {HOST}\n\n\
POST /allowed/s HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"
    );
    for bytes in [alone, after] {
        let out = raw(&s, bytes.as_bytes());
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert!(!out.contains("HTTP/1.1 200"), "{out}");
    }
    assert!(s.web.seen().is_empty(), "{:?}", s.web.seen());
}
