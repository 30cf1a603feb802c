//! The bench's client: TLS to a target (directly, through a redirect, or
//! through an explicit proxy's CONNECT tunnel), HTTP/1.1 or HTTP/2 over it,
//! and the throughput phases, each with the proxy's CPU per request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{NAME, Plan};

/// The HTTP version the client offers (ALPN offers this one alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::H1 => "http/1.1",
            Proto::H2 => "h2",
        }
    }
}

/// One target as the client sees it.
#[derive(Clone)]
pub struct Target {
    pub label: String,
    /// Where the TCP connection goes: the upstream, a redirected address, or
    /// an explicit proxy's port.
    pub addr: SocketAddr,
    /// Ask for a tunnel first (`CONNECT bench.example.test:443`).
    pub explicit: bool,
    pub ca_pem: String,
    /// A header every request carries (the secret's placeholder).
    pub header: Option<(&'static str, &'static str)>,
    pub proto: Proto,
}

/// The peer did not agree to HTTP/2 (no `h2` in its ALPN answer): the h2
/// rows of a peer that only speaks HTTP/1.1 say "n/a", not a number.
#[derive(Debug)]
pub struct NoH2(pub String);

impl std::fmt::Display for NoH2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no HTTP/2 to the client (ALPN answer: {})", self.0)
    }
}

impl std::error::Error for NoH2 {}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Bound on any one connection set-up (TCP, CONNECT, TLS, HTTP handshake).
const SETUP: Duration = Duration::from_secs(10);
/// Bound on one small request.
const REQUEST: Duration = Duration::from_secs(30);
/// Bound on the bulk download.
const BULK: Duration = Duration::from_secs(180);

pub fn connector(ca_pem: &str, proto: Proto) -> anyhow::Result<tokio_rustls::TlsConnector> {
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
    cfg.alpn_protocols = vec![match proto {
        Proto::H1 => b"http/1.1".to_vec(),
        Proto::H2 => b"h2".to_vec(),
    }];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// `CONNECT bench.example.test:443` on `tcp`; Ok once the proxy said 200.
async fn tunnel(tcp: &mut tokio::net::TcpStream) -> anyhow::Result<()> {
    tcp.write_all(format!("CONNECT {NAME}:443 HTTP/1.1\r\nHost: {NAME}:443\r\n\r\n").as_bytes())
        .await?;
    // The proxy sends nothing after its answer until the ClientHello, so
    // reading in chunks cannot swallow TLS bytes.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            bail!("the proxy closed the connection during CONNECT");
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 16 * 1024 {
            bail!("the proxy's CONNECT answer is over 16 KiB");
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status = text.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("CONNECT {NAME}:443: {status}");
    }
    Ok(())
}

async fn tls(t: &Target, c: &tokio_rustls::TlsConnector) -> anyhow::Result<Tls> {
    let mut tcp = tokio::net::TcpStream::connect(t.addr).await?;
    tcp.set_nodelay(true)?;
    if t.explicit {
        tunnel(&mut tcp).await?;
    }
    let s = match c
        .connect(rustls_pki_types::ServerName::try_from(NAME)?, tcp)
        .await
    {
        // A server that does not speak the one protocol offered may refuse
        // the handshake rather than leave ALPN out.
        Err(e) if t.proto == Proto::H2 && e.to_string().contains("NoApplicationProtocol") => {
            return Err(NoH2("refused with a no_application_protocol alert".into()).into());
        }
        r => r?,
    };
    if t.proto == Proto::H2 && s.get_ref().1.alpn_protocol() != Some(b"h2") {
        let got = s
            .get_ref()
            .1
            .alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_else(|| "none".into());
        return Err(NoH2(got).into());
    }
    Ok(s)
}

pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// A new connection to `t`, ready for requests.
pub async fn connect(t: &Target, c: &tokio_rustls::TlsConnector) -> anyhow::Result<Sender> {
    tokio::time::timeout(SETUP, async {
        let io = TokioIo::new(tls(t, c).await?);
        Ok(match t.proto {
            Proto::H1 => {
                let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                Sender::H1(send)
            }
            Proto::H2 => {
                let (send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                Sender::H2(send)
            }
        })
    })
    .await
    .context("connection set-up timed out")?
}

/// The request head for `path` on `send`'s protocol.
pub fn request(
    send: &Sender,
    path: &str,
    t: &Target,
) -> anyhow::Result<http::Request<Empty<Bytes>>> {
    let mut req = match send {
        Sender::H1(_) => http::Request::get(path).header("host", NAME),
        Sender::H2(_) => http::Request::get(format!("https://{NAME}{path}")),
    };
    if let Some((name, value)) = t.header {
        req = req.header(name, value);
    }
    Ok(req.body(Empty::new())?)
}

pub async fn send(
    send: &mut Sender,
    req: http::Request<Empty<Bytes>>,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    Ok(match send {
        Sender::H1(s) => {
            s.ready().await?;
            s.send_request(req).await?
        }
        Sender::H2(s) => {
            s.ready().await?;
            s.send_request(req).await?
        }
    })
}

/// One GET (with `t`'s header, if any); returns the body length.
pub async fn get(s: &mut Sender, path: &str, t: &Target) -> anyhow::Result<u64> {
    let limit = if path.starts_with("/big") {
        BULK
    } else {
        REQUEST
    };
    tokio::time::timeout(limit, get_unbounded(s, path, t))
        .await
        .with_context(|| format!("GET {path}: no complete answer within {limit:?}"))?
}

async fn get_unbounded(s: &mut Sender, path: &str, t: &Target) -> anyhow::Result<u64> {
    let req = request(s, path, t)?;
    let resp = send(s, req).await?;
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

/// CPU seconds of the proxy's processes so far (see [`super::cpu`]); `None`
/// for a target without a proxy.
pub type CpuProbe<'a> = &'a (dyn Fn() -> Option<f64> + Sync);

/// One run of one throughput phase.
#[derive(Clone, Copy, Debug)]
pub struct Phase {
    /// Requests/s, connections/s or MB/s.
    pub rate: f64,
    /// Requests (or connections, or MB) served.
    pub served: f64,
    /// Proxy CPU seconds spent in the phase.
    pub cpu_s: Option<f64>,
}

impl Phase {
    /// Proxy CPU seconds per request (connection, MB).
    pub fn cpu_per(&self) -> Option<f64> {
        self.cpu_s
            .filter(|_| self.served > 0.0)
            .map(|c| c / self.served)
    }
}

/// Runs `f` on `n` tasks until `deadline`; the count of successful rounds.
/// A failed round fails the phase: a peer that drops connections under
/// load must not be reported as merely slow.
async fn rounds<F, Fut>(n: usize, deadline: Instant, f: F) -> anyhow::Result<u64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (done, f) = (done.clone(), f.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                f().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let mut first_err = None;
    for task in tasks {
        if let Err(e) = task.await? {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(done.load(Ordering::Relaxed)),
    }
}

/// Kept-alive requests/s on `plan.keepalive_conns` connections, one task
/// per connection, one request in flight on each.
pub async fn keepalive(
    t: &Target,
    c: &tokio_rustls::TlsConnector,
    plan: &Plan,
    cpu: CpuProbe<'_>,
) -> anyhow::Result<Phase> {
    // Connect first; the clock starts when every connection is ready.
    let mut senders = Vec::new();
    for _ in 0..plan.keepalive_conns {
        senders.push(connect(t, c).await?);
    }
    let done = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu();
    let start = Instant::now();
    let deadline = start + plan.phase;
    let mut tasks = Vec::new();
    for mut s in senders {
        let (done, t) = (done.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                get(&mut s, "/echo", &t).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let mut first_err = None;
    for task in tasks {
        if let Err(e) = task.await? {
            first_err.get_or_insert(e);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu1 = cpu();
    if let Some(e) = first_err {
        return Err(e);
    }
    let n = done.load(Ordering::Relaxed);
    Ok(Phase {
        rate: n as f64 / secs,
        served: n as f64,
        cpu_s: cpu1.zip(cpu0).map(|(b, a)| b - a),
    })
}

/// New connections/s: each connect (+ CONNECT) + handshake + one request.
pub async fn new_conns(
    t: &Target,
    c: &tokio_rustls::TlsConnector,
    plan: &Plan,
    cpu: CpuProbe<'_>,
) -> anyhow::Result<Phase> {
    let cpu0 = cpu();
    let start = Instant::now();
    let (t2, c2) = (t.clone(), c.clone());
    let n = rounds(plan.new_conn_workers, start + plan.phase, move || {
        let (t, c) = (t2.clone(), c2.clone());
        async move {
            let mut s = connect(&t, &c).await?;
            get(&mut s, "/echo", &t).await.map(drop)
        }
    })
    .await?;
    let secs = start.elapsed().as_secs_f64();
    Ok(Phase {
        rate: n as f64 / secs,
        served: n as f64,
        cpu_s: cpu().zip(cpu0).map(|(b, a)| b - a),
    })
}

/// One download of `plan.bulk_mb` MiB; MB/s, and CPU per MB.
pub async fn bulk(
    t: &Target,
    c: &tokio_rustls::TlsConnector,
    plan: &Plan,
    cpu: CpuProbe<'_>,
) -> anyhow::Result<Phase> {
    let mut s = connect(t, c).await?;
    let cpu0 = cpu();
    let start = Instant::now();
    let bytes = get(&mut s, &format!("/big?mb={}", plan.bulk_mb), t).await?;
    let secs = start.elapsed().as_secs_f64();
    let expected = plan.bulk_mb as u64 * 1024 * 1024;
    if bytes != expected {
        bail!("bulk download: {bytes} bytes, expected {expected}");
    }
    let mb = bytes as f64 / 1e6;
    Ok(Phase {
        rate: mb / secs,
        served: mb,
        cpu_s: cpu().zip(cpu0).map(|(b, a)| b - a),
    })
}
