//! `cell-lab bench`: direct TLS, `cell-proxy` and mitmproxy side by side, in
//! one run, in the lab. Not a test: it never gates CI. See docs/benchmarks.md.
//!
//! The client runs on a thread that has entered the agent namespace; every
//! thread it creates (the tokio workers included) starts there too, so all
//! its sockets are the agent's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::Lab;
use crate::https::CertKind;
use crate::lab::{AGENT_IFACE, FW_AGENT_V4, WEB_V4};

const NAME: &str = "bench.example.test";

/// How long each throughput phase runs, and the knobs of the others.
#[derive(Clone, Debug)]
pub struct Plan {
    pub phase: Duration,
    pub keepalive_conns: usize,
    pub new_conn_workers: usize,
    pub bulk_mb: usize,
    pub rate_per_sec: u32,
    pub idle_conns: usize,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            phase: Duration::from_secs(3),
            keepalive_conns: 16,
            new_conn_workers: 8,
            bulk_mb: 200,
            rate_per_sec: 200,
            idle_conns: 1000,
        }
    }
}

/// One target as the client sees it.
#[derive(Clone)]
struct Target {
    label: &'static str,
    addr: SocketAddr,
    ca_pem: String,
    /// A header every request carries (the secret's placeholder).
    header: Option<(&'static str, &'static str)>,
}

/// The secret of the injection phase: what the agent sends, and the value
/// the proxy puts in its place (never the agent's).
const PLACEHOLDER: &str = "cell-placeholder-bench";
const SECRET_VALUE: &str = "sk-bench-3f9a1c7e5b2d4086a1e9c3b7d5f20486";

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

fn connector(ca_pem: &str) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

async fn tls(t: &Target, c: &tokio_rustls::TlsConnector) -> anyhow::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(t.addr).await?;
    tcp.set_nodelay(true)?;
    Ok(
        c.connect(rustls_pki_types::ServerName::try_from(NAME)?, tcp)
            .await?,
    )
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn http1(stream: Tls) -> anyhow::Result<Sender> {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// One GET (with `t`'s header, if any); returns the body length.
async fn get(send: &mut Sender, path: &str, t: &Target) -> anyhow::Result<u64> {
    send.ready().await?;
    let mut req = http::Request::get(path).header("host", NAME);
    if let Some((name, value)) = t.header {
        req = req.header(name, value);
    }
    let req = req.body(Empty::new())?;
    let resp = send.send_request(req).await?;
    if !resp.status().is_success() {
        // The proxy says why in the body (and X-Cell-Deny-Reason): keep it.
        let status = resp.status();
        let reason = resp
            .headers()
            .get("x-cell-deny-reason")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
        bail!(
            "GET {path}: status {status}{}: {}",
            reason.map(|r| format!(" ({r})")).unwrap_or_default(),
            text.trim()
        );
    }
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame?.into_data() {
            n += d.len() as u64;
        }
    }
    Ok(n)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// All client-side measurements for one target.
async fn measure(
    t: &Target,
    plan: &Plan,
    rss: &(dyn Fn() -> Option<u64> + Sync),
) -> anyhow::Result<Value> {
    let c = connector(&t.ca_pem)?;
    eprintln!("  {}: keep-alive requests/s", t.label);
    // Connect first; the clock starts when every connection is ready.
    let mut senders = Vec::new();
    for _ in 0..plan.keepalive_conns {
        senders.push(http1(tls(t, &c).await?).await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + plan.phase;
    let mut tasks = Vec::new();
    for mut send in senders {
        let (done, t) = (done.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if get(&mut send, "/echo", &t).await.is_err() {
                    break;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let rps = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();

    eprintln!("  {}: new TLS connections/s", t.label);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + plan.phase;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..plan.new_conn_workers {
        let (t, c, done) = (t.clone(), c.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let Ok(stream) = tls(&t, &c).await else { break };
                let Ok(mut send) = http1(stream).await else {
                    break;
                };
                if get(&mut send, "/echo", &t).await.is_err() {
                    break;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let cps = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();

    eprintln!("  {}: bulk download", t.label);
    let mut send = http1(tls(t, &c).await?).await?;
    let start = Instant::now();
    let bytes = get(&mut send, &format!("/big?mb={}", plan.bulk_mb), t).await?;
    let mbps = bytes as f64 / 1e6 / start.elapsed().as_secs_f64();

    eprintln!("  {}: latency at {} requests/s", t.label, plan.rate_per_sec);
    let conns = 4usize;
    let mut tasks = Vec::new();
    let per_conn = plan.rate_per_sec as f64 / conns as f64;
    let mut senders = Vec::new();
    for _ in 0..conns {
        senders.push(http1(tls(t, &c).await?).await?);
    }
    for mut send in senders {
        let (phase, t) = (plan.phase, t.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_conn));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let end = Instant::now() + phase;
            while Instant::now() < end {
                tick.tick().await;
                let s = Instant::now();
                if get(&mut send, "/echo", &t).await.is_err() {
                    break;
                }
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await?);
    }
    lat.sort();

    // Time to the first byte of a streamed response (the fake's /sse sends
    // its first event at once, the next 1.5 s later): what a recorder or a
    // scanner that buffered would delay. A new connection per sample, its
    // handshake not timed; the stream is dropped after the first byte.
    eprintln!("  {}: time to first byte of a stream", t.label);
    let mut ttfb = Vec::new();
    for _ in 0..20 {
        let mut send = http1(tls(t, &c).await?).await?;
        send.ready().await?;
        let mut req = http::Request::get("/sse").header("host", NAME);
        if let Some((name, value)) = t.header {
            req = req.header(name, value);
        }
        let s = Instant::now();
        let resp = send.send_request(req.body(Empty::new())?).await?;
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            if frame?.data_ref().is_some_and(|d| !d.is_empty()) {
                break;
            }
        }
        ttfb.push(s.elapsed());
    }
    ttfb.sort();

    eprintln!("  {}: {} idle connections", t.label, plan.idle_conns);
    let before = rss();
    let mut idle = Vec::new();
    for _ in 0..plan.idle_conns {
        let mut send = http1(tls(t, &c).await?).await?;
        get(&mut send, "/echo", t).await?;
        idle.push(send);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = rss();
    drop(idle);

    Ok(json!({
        "target": t.label,
        "requests_per_sec": rps.round(),
        "new_connections_per_sec": cps.round(),
        "bulk_mb_per_sec": (mbps * 10.0).round() / 10.0,
        "latency_ms_p50": (percentile(&lat, 0.50) * 1000.0).round() / 1000.0,
        "latency_ms_p99": (percentile(&lat, 0.99) * 1000.0).round() / 1000.0,
        "latency_samples": lat.len(),
        "stream_first_byte_ms_p50": (percentile(&ttfb, 0.50) * 1000.0).round() / 1000.0,
        "stream_first_byte_ms_p99": (percentile(&ttfb, 0.99) * 1000.0).round() / 1000.0,
        "rss_mb_before_idle": before.map(|b| (b as f64 / 1048576.0 * 10.0).round() / 10.0),
        "rss_mb_with_idle": held.map(|b| (b as f64 / 1048576.0 * 10.0).round() / 10.0),
    }))
}

/// Runs the client for `t` inside the agent namespace.
fn measure_in_agent(
    lab: &Lab,
    t: Target,
    plan: &Plan,
    rss_of: Option<u32>,
) -> anyhow::Result<Value> {
    let plan = plan.clone();
    lab.agent.run(move || -> anyhow::Result<Value> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let rss = move || rss_of.and_then(process_rss);
        rt.block_on(measure(&t, &plan, &rss))
    })?
}

fn process_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn raise_fd_limit() -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536), hard)?;
    Ok(())
}

struct Mitm(Child);

impl Drop for Mitm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const MITM_ADDON: &str = r#"
from mitmproxy import http

ALLOWED = {"bench.example.test"}

def request(flow: http.HTTPFlow) -> None:
    # The same allowlist cell-proxy enforces: the host, on every request.
    if flow.request.pretty_host not in ALLOWED:
        flow.response = http.Response.make(403, b"denied\n")
"#;

/// Runs the whole comparison; returns the JSON results.
pub fn run(proxy_bin: &Path, mitmdump: Option<&Path>, plan: &Plan) -> anyhow::Result<Value> {
    raise_fd_limit()?;
    let mut lab = Lab::new()?;
    lab.start_resolver(&[(NAME, WEB_V4)])?;
    let _web = lab.https_server(&[(NAME, CertKind::Valid)])?;
    let direct_addr = SocketAddr::new(IpAddr::V4(WEB_V4), 443);
    let mut results = Vec::new();

    eprintln!("direct TLS (no proxy)");
    let direct = Target {
        label: "direct",
        addr: direct_addr,
        ca_pem: lab.internet_ca.pem.clone(),
        header: None,
    };
    results.push(measure_in_agent(&lab, direct, plan, None)?);

    eprintln!("cell-proxy");
    let policy = lab.dir.join("bench-policy.json");
    std::fs::write(
        &policy,
        format!(r#"{{"https":[{{"host":"{NAME}"}}],"dns":{{"upstream":["192.0.2.53"]}}}}"#),
    )?;
    lab.start_proxy(proxy_bin, &policy, None)?;
    let ip = synthetic_address(&lab)?;
    let cell = Target {
        label: "cell-proxy",
        addr: SocketAddr::new(IpAddr::V4(ip), 443),
        ca_pem: lab.cell_ca_pem()?,
        header: None,
    };
    let pid = lab.proxy_pid();
    let kept = |lab: &mut Lab, e: anyhow::Error, phase: &str| {
        // The proxy's log and events say why; a partial run is no result.
        lab.keep();
        e.context(format!(
            "{phase} phase failed; its log and events are kept in {}",
            lab.dir.display()
        ))
    };
    match measure_in_agent(&lab, cell, plan, pid) {
        Ok(r) => results.push(r),
        Err(e) => return Err(kept(&mut lab, e, "cell-proxy")),
    }
    lab.stop_proxy();
    for family in ["inet", "netdev"] {
        lab.firewall
            .exec("nft", &["delete", "table", family, "cell"])?;
    }

    // The same with a secret: every request carries its placeholder in
    // `authorization`, which the proxy replaces by the value; every request
    // head and response is scanned for the value (leaks, echoes).
    eprintln!("cell-proxy with secret injection and spy recording");
    let secrets = lab.dir.join("bench-secrets.json");
    std::fs::write(
        &secrets,
        format!(
            r#"{{"version":1,"secrets":[{{"name":"bench","env":null,"placeholder":"{PLACEHOLDER}","hosts":["{NAME}"],"source":{{"env":"BENCH"}}}}]}}"#
        ),
    )?;
    // The same host, recorded by the spy (bodies capped at the default).
    let spy_policy = lab.dir.join("bench-policy-spy.json");
    std::fs::write(
        &spy_policy,
        format!(
            r#"{{"https":[{{"host":"{NAME}","spy":true}}],"dns":{{"upstream":["192.0.2.53"]}}}}"#
        ),
    )?;
    let store = lab.dir.join("bench-spy.jsonl");
    lab.start_proxy_with(
        proxy_bin,
        &spy_policy,
        None,
        &[
            std::ffi::OsStr::new("--secrets"),
            secrets.as_os_str(),
            std::ffi::OsStr::new("--spy"),
            store.as_os_str(),
        ],
    )?;
    let loaded = lab.control(&format!(
        r#"{{"op":"secrets-load","values":{{"bench":"{SECRET_VALUE}"}}}}"#
    ))?;
    if loaded["ok"] != Value::Bool(true) {
        bail!("the bench secret was not loaded: {loaded}");
    }
    // A new daemon: its own synthetic address for the name, asked again.
    let ip = synthetic_address(&lab)?;
    let injected = Target {
        label: "cell-proxy+secret+spy",
        addr: SocketAddr::new(IpAddr::V4(ip), 443),
        ca_pem: lab.cell_ca_pem()?,
        header: Some(("authorization", "Bearer cell-placeholder-bench")),
    };
    let pid = lab.proxy_pid();
    match measure_in_agent(&lab, injected, plan, pid) {
        Ok(r) => results.push(r),
        Err(e) => return Err(kept(&mut lab, e, "cell-proxy+secret+spy")),
    }
    let status = lab.control(r#"{"op":"secrets"}"#)?;
    let uses = status["secrets"][0]["uses"].as_u64().unwrap_or(0);
    if uses == 0 {
        bail!("the secret was never injected during its phase: {status}");
    }
    eprintln!("  the secret was put into {uses} requests");
    let recorded = std::fs::read_to_string(&store)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(r#""event":"exchange""#))
        .count();
    if recorded == 0 {
        bail!("the spy recorded nothing during its phase");
    }
    eprintln!(
        "  the spy recorded {recorded} exchanges (more may have been dropped by its bounded queue)"
    );
    lab.stop_proxy();
    for family in ["inet", "netdev"] {
        lab.firewall
            .exec("nft", &["delete", "table", family, "cell"])?;
    }

    if let Some(mitmdump) = mitmdump {
        eprintln!("mitmproxy (transparent)");
        let conf = lab.dir.join("mitm");
        std::fs::create_dir_all(&conf)?;
        let addon = lab.dir.join("allowlist.py");
        std::fs::write(&addon, MITM_ADDON)?;
        let log = std::fs::File::create(lab.dir.join("mitm.log"))?;
        let child = lab
            .firewall
            .command(mitmdump)
            .args([
                "--mode",
                "transparent",
                "--listen-host",
                &FW_AGENT_V4.to_string(),
                "--listen-port",
                "8080",
                "-q",
            ])
            .arg("--set")
            .arg(format!("confdir={}", conf.display()))
            .arg("--set")
            .arg(format!(
                "ssl_verify_upstream_trusted_ca={}",
                lab.dir.join("internet-ca.pem").display()
            ))
            .arg("-s")
            .arg(&addon)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting mitmdump")?;
        let mitm = Mitm(child);
        lab.firewall.exec("nft", &["add", "table", "ip", "mitm"])?;
        lab.firewall.exec(
            "nft",
            &["add chain ip mitm pre { type nat hook prerouting priority dstnat; }"],
        )?;
        lab.firewall.exec(
            "nft",
            &[
                "add",
                "rule",
                "ip",
                "mitm",
                "pre",
                "iifname",
                AGENT_IFACE,
                "tcp",
                "dport",
                "443",
                "redirect",
                "to",
                ":8080",
            ],
        )?;
        let ca = conf.join("mitmproxy-ca-cert.pem");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(ca.exists() && port_open(&lab, 8080)) {
            if Instant::now() > deadline {
                bail!(
                    "mitmdump did not start: {}",
                    std::fs::read_to_string(lab.dir.join("mitm.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let target = Target {
            label: "mitmproxy",
            addr: direct_addr,
            ca_pem: std::fs::read_to_string(&ca)?,
            header: None,
        };
        // `ip netns exec` execs mitmdump, so the child's pid is mitmdump's.
        let pid = Some(mitm.0.id());
        results.push(measure_in_agent(&lab, target, plan, pid)?);
        drop(mitm);
    }
    Ok(Value::Array(results))
}

/// The address the running daemon hands the agent for the bench host.
fn synthetic_address(lab: &Lab) -> anyhow::Result<Ipv4Addr> {
    let m = crate::probe::dns(
        &lab.agent,
        crate::lab::fw_dns(),
        &format!("{NAME}."),
        hickory_proto::rr::RecordType::A,
        crate::probe::Transport::Udp,
    )?;
    Ok(*crate::probe::a_records(&m)
        .first()
        .context("no synthetic address")?)
}

fn port_open(lab: &Lab, port: u16) -> bool {
    lab.firewall
        .exec("ss", &["-Hltn", &format!("sport = :{port}")])
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false)
}

/// A Markdown table of the results, with the ratios the targets ask for.
pub fn table(results: &Value) -> String {
    let rows = results.as_array().cloned().unwrap_or_default();
    let get = |label: &str, key: &str| -> Option<f64> {
        rows.iter()
            .find(|r| r["target"] == label)
            .and_then(|r| r[key].as_f64())
    };
    let mut out = String::from(
        "| target | requests/s (keep-alive) | new TLS connections/s | bulk MB/s | p50 ms | p99 ms | stream first byte p50 ms | RSS MB (1,000 idle) |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["target"].as_str().unwrap_or("?"),
            r["requests_per_sec"],
            r["new_connections_per_sec"],
            r["bulk_mb_per_sec"],
            r["latency_ms_p50"],
            r["latency_ms_p99"],
            r["stream_first_byte_ms_p50"],
            r["rss_mb_with_idle"],
        ));
    }
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
        _ => "n/a".into(),
    };
    let diff = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:+.3} ms", a - b),
        _ => "n/a".into(),
    };
    out.push_str(&format!(
        "\nsecret injection and spy recording (cell-proxy+secret+spy vs cell-proxy): added latency p50 {}, p99 {}; stream first byte {}; requests/s {}\n",
        diff(get("cell-proxy+secret+spy", "latency_ms_p50"), get("cell-proxy", "latency_ms_p50")),
        diff(get("cell-proxy+secret+spy", "latency_ms_p99"), get("cell-proxy", "latency_ms_p99")),
        diff(get("cell-proxy+secret+spy", "stream_first_byte_ms_p50"), get("cell-proxy", "stream_first_byte_ms_p50")),
        ratio(get("cell-proxy+secret+spy", "requests_per_sec"), get("cell-proxy", "requests_per_sec")),
    ));
    out.push_str(&format!(
        "\ncell-proxy vs mitmproxy: requests/s {}, new connections/s {}; bulk vs direct: {}; added latency p50 {}, p99 {}\n",
        ratio(get("cell-proxy", "requests_per_sec"), get("mitmproxy", "requests_per_sec")),
        ratio(get("cell-proxy", "new_connections_per_sec"), get("mitmproxy", "new_connections_per_sec")),
        ratio(get("cell-proxy", "bulk_mb_per_sec"), get("direct", "bulk_mb_per_sec")),
        diff(get("cell-proxy", "latency_ms_p50"), get("direct", "latency_ms_p50")),
        diff(get("cell-proxy", "latency_ms_p99"), get("direct", "latency_ms_p99")),
    ));
    out
}
