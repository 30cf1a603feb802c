//! The transparent proxy: every TCP connection the firewall redirects.
//!
//! Security rules, in the order they are applied to a connection:
//!
//! 1. The original destination must be a synthetic address that DNS handed
//!    out; the name behind it is the only name this connection can reach.
//! 2. The policy must allow that name on that port (evaluated again per
//!    request, so a reload applies to the next request).
//! 3. TLS: the ClientHello is read before anything is answered. The SNI must
//!    be present, a hostname, and equal to the name behind the address; no
//!    certificate is minted and no upstream connection is opened otherwise.
//! 4. Intercepted HTTPS: the upstream connection is a fresh TLS connection
//!    that validates the upstream certificate for that name; every request's
//!    `Host`/`:authority` must equal the SNI (no domain fronting), and its
//!    method and path must pass the entry's rules.
//! 5. Denials never time out: a TLS client is reset at once, an HTTP client
//!    gets a 403 that says what was denied and how to allow it.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use cell_policy::path::normalize_request_path;
use cell_policy::policy::HttpsEntry;
use cell_policy::upstream::Refusal;
use cell_policy::{ConnDecision, DenyReason, normalize_host};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::ca::{Ca, LeafResolver};
use crate::events::event;
use crate::state::State;

mod accept;
mod explicit;
mod inject;
mod park;
mod relay;
mod request;
mod upstream;

pub use relay::Metered;
use upstream::*;
pub use upstream::{Upstream, UpstreamIo, UpstreamRefused};

pub type Body = BoxBody<Bytes, BoxError>;
/// What goes upstream: the client's body, metered and scanned for secrets.
pub type UpBody = BoxBody<Bytes, BoxError>;
pub use crate::secrets::scan::BoxError;

/// Everything a connection handler needs.
pub struct Proxy {
    pub state: Arc<State>,
    server_tls: Arc<rustls::ServerConfig>,
    client_tls: Arc<rustls::ClientConfig>,
    /// Upstream for HTTP/2 clients: offers h2 (and http/1.1) by ALPN.
    client_h2: Client<Upstream, UpBody>,
    /// Upstream for HTTP/1.1 clients: http/1.1 only. Keeping the client's protocol
    /// keeps gRPC and other h2-only services working, and an HTTP/1.1 client's
    /// requests off a shared h2 connection (measured: lower tail latency, higher
    /// bulk throughput; docs/benchmarks.md).
    client_h1: Client<Upstream, UpBody>,
    slots: Arc<Semaphore>,
    /// The cell CA certificate (PEM, public), served at [`CA_PATH`] on the
    /// explicit port so the agent VM can trust it at boot without the key
    /// ever leaving the firewall.
    ca_pem: Bytes,
}

/// Where the explicit proxy port serves the CA certificate (origin-form GET).
pub const CA_PATH: &str = "/cell/ca.crt";

/// What the proxy knows about one client connection.
#[derive(Clone, Debug)]
struct Conn {
    client: SocketAddr,
    name: String,
    port: u16,
    /// Set on intercepted connections: requests with ambiguous HTTP/1.1 framing.
    framing: Option<Arc<crate::framing::Flags>>,
}

/// ring's provider with the AES-128-GCM suites first (both legs, both TLS
/// versions): the default puts `TLS13_AES_256_GCM_SHA384` first, whose
/// SHA-384 key schedule and transcript hash this daemon computes twice per
/// intercepted connection without CPU help (x86 has SHA-256 instructions,
/// not SHA-512 ones), and whose AES has 14 rounds to AES-128's 10. Every
/// suite stays on offer; AES-128-GCM is TLS 1.3's mandatory suite and the
/// first of the usual "modern" server configurations.
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite::{
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        TLS13_AES_128_GCM_SHA256,
    };
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            TLS13_AES_128_GCM_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    provider
}

/// Builds the upstream TLS configuration: system roots (honouring
/// `SSL_CERT_FILE`) plus any extra CA files, ALPN h2 and http/1.1.
pub fn client_tls(extra_ca: &[std::path::PathBuf]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    for path in extra_ca {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading CA file {}", path.display()))?;
        for c in certs {
            roots.add(c.with_context(|| format!("parsing {}", path.display()))?)?;
        }
    }
    if roots.is_empty() {
        bail!(
            "no trusted root certificates: install ca-certificates, set SSL_CERT_FILE, or pass --upstream-ca"
        );
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

impl Proxy {
    pub fn new(
        state: Arc<State>,
        ca: Arc<Ca>,
        client_tls: rustls::ClientConfig,
    ) -> anyhow::Result<Arc<Proxy>> {
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(crypto_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(LeafResolver(ca.clone())));
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Our order, not the client's: most clients ask for AES-256 first.
        server.ignore_client_order = true;
        let limits = state.policy().limits.clone();
        let mut h1_only = client_tls.clone();
        h1_only.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client_tls = Arc::new(client_tls);
        let build = |tls: Arc<rustls::ClientConfig>| {
            let upstream = Upstream {
                state: state.clone(),
                tls: tokio_rustls::TlsConnector::from(tls),
                timeout: Duration::from_millis(limits.connect_timeout_ms.into()),
            };
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(32)
                // One bulk stream must not be capped by a fixed HTTP/2 window.
                .http2_adaptive_window(true)
                .build(upstream)
        };
        let client_h2 = build(client_tls.clone());
        let client_h1 = build(Arc::new(h1_only));
        let ca_pem = std::fs::read(&ca.cert_path)
            .with_context(|| format!("reading {}", ca.cert_path.display()))?;
        Ok(Arc::new(Proxy {
            ca_pem: Bytes::from(ca_pem),
            slots: Arc::new(Semaphore::new(limits.proxy_connections as usize)),
            state,
            server_tls: Arc::new(server),
            client_tls,
            client_h2,
            client_h1,
        }))
    }

    /// Accepts redirected connections forever.
    pub async fn serve_transparent(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, client) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Small writes (TLS handshakes, request heads) must not wait for delayed ACKs.
            let _ = stream.set_nodelay(true);
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                reset(stream);
                self.state.events.emit(event(
                    "conn",
                    [
                        ("client", client.to_string().into()),
                        ("decision", "deny".into()),
                        ("reason", "too-many-connections".into()),
                    ],
                ));
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.transparent(stream, client).await;
                drop(permit);
            });
        }
    }

    /// The explicit proxy (HTTP CONNECT, for clients that honour HTTPS_PROXY).
    pub async fn serve_explicit(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, client)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                reset(stream);
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let svc_me = me.clone();
                let service = hyper::service::service_fn(move |req| {
                    let me = svc_me.clone();
                    async move { Ok::<_, std::convert::Infallible>(me.explicit(req, client).await) }
                });
                // A silent client is dropped once requestHeadTimeoutMs passes
                // without a request head: it cannot hold one of the shared
                // connection slots (the harness's own API calls need them).
                let head_timeout =
                    Duration::from_millis(me.state.policy().limits.request_head_timeout_ms.into());
                let _ = hyper::server::conn::http1::Builder::new()
                    .max_buf_size(16 * 1024)
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(head_timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
                drop(permit);
            });
        }
    }

    /// Runs `work` for connection `c` until it ends or a reload denies `c`
    /// (in-flight streams of hosts that stay allowed are untouched).
    ///
    /// A plain future rather than an async fn: an async fn keeps its `work`
    /// argument and the copy its `select!` polls, both for the connection's
    /// whole life — 4 KB of every intercepted connection's task (rustc's
    /// `-Zprint-type-sizes`; docs/benchmarks.md).
    fn guarded<'a, W: Future<Output = ()> + 'a>(
        &'a self,
        c: &'a Conn,
        work: W,
    ) -> Guarded<W, impl Future<Output = ()> + 'a> {
        Guarded {
            work,
            denied: denied_by_reload(&self.state, c),
        }
    }

    fn conn_event(&self, c: &Conn, fields: Vec<(&'static str, Value)>) {
        conn_event(&self.state, c, fields)
    }
}

pin_project_lite::pin_project! {
    /// [`Proxy::guarded`]: `work`, ended early when `denied` resolves.
    struct Guarded<W, D> {
        #[pin]
        work: W,
        #[pin]
        denied: D,
    }
}

impl<W: Future<Output = ()>, D: Future<Output = ()>> Future for Guarded<W, D> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.project();
        if this.work.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        this.denied.poll(cx)
    }
}

/// One `conn` event line for connection `c`.
fn conn_event(state: &State, c: &Conn, fields: Vec<(&'static str, Value)>) {
    let mut m = event(
        "conn",
        [
            ("client", c.client.to_string().into()),
            ("host", c.name.clone().into()),
            ("port", c.port.into()),
        ],
    );
    for (k, v) in fields {
        if !v.is_null() {
            m.insert(k.into(), v);
        }
    }
    state.events.emit(m);
}

/// Resolves when a reload makes the policy deny `c`'s host and port (and
/// says so in the event log); never resolves otherwise.
async fn denied_by_reload(state: &State, c: &Conn) {
    let mut reloads = state.reloads();
    loop {
        if reloads.changed().await.is_err() {
            return std::future::pending().await;
        }
        if let ConnDecision::Deny(reason) = state.policy().connection(&c.name, c.port) {
            conn_event(
                state,
                c,
                vec![
                    ("decision", "closed".into()),
                    ("reason", format!("policy reload: {reason}").into()),
                ],
            );
            return;
        }
    }
}

/// `host[:port]` as it goes in a URI or Host header.
fn authority_for(name: &str, port: u16) -> String {
    if port == 443 {
        name.to_string()
    } else {
        format!("{name}:{port}")
    }
}

/// Splits `host:port`; IPv6 literals keep their brackets (and never match a name).
fn split_authority(a: &str) -> (&str, Option<u16>) {
    if a.starts_with('[') {
        return (a, None);
    }
    match a.rsplit_once(':') {
        Some((h, p)) => match p.parse() {
            Ok(port) => (h, Some(port)),
            Err(_) => (a, Some(0)),
        },
        None => (a, None),
    }
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for name in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(listed) {
        h.remove(name.as_str());
    }
    h.remove(header::TRANSFER_ENCODING);
}

fn text_response(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A denial the client can read: status, `X-Cell-Deny-Reason`, and a body
/// with what was denied and how to allow it. Never echoes header values.
fn deny_response(status: StatusCode, what: &str, fix: &str) -> Response<Body> {
    let mut r = text_response(
        status,
        format!("cell: denied: {what}\nto allow it: {fix}\n"),
    );
    if let Ok(v) = HeaderValue::from_str(&what.replace(['\r', '\n'], " ")) {
        r.headers_mut().insert("x-cell-deny-reason", v);
    }
    r
}

/// A client-side byte stream: a redirected socket, or a CONNECT tunnel.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ends the stream as abruptly as the transport allows.
    fn abort(self)
    where
        Self: Sized,
    {
    }
}

impl ClientStream for TcpStream {
    fn abort(self) {
        reset(self)
    }
}

impl ClientStream for TokioIo<hyper::upgrade::Upgraded> {}

/// Resets a connection (RST, not FIN): a fast, unambiguous failure.
fn reset(stream: TcpStream) {
    // A zero linger makes close() send RST at once; it never blocks.
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

fn original_dst(stream: &TcpStream) -> anyhow::Result<SocketAddrV4> {
    use nix::sys::socket::{getsockopt, sockopt::OriginalDst};
    let raw = getsockopt(stream, OriginalDst).context("SO_ORIGINAL_DST")?;
    Ok(SocketAddrV4::new(
        u32::from_be(raw.sin_addr.s_addr).into(),
        u16::from_be(raw.sin_port),
    ))
}
