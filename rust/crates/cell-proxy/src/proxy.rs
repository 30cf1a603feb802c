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

pub type Body = BoxBody<Bytes, hyper::Error>;

/// Everything a connection handler needs.
pub struct Proxy {
    pub state: Arc<State>,
    server_tls: Arc<rustls::ServerConfig>,
    client_tls: Arc<rustls::ClientConfig>,
    /// Upstream for HTTP/2 clients: offers h2 (and http/1.1) by ALPN.
    client_h2: Client<Upstream, Metered<Incoming>>,
    /// Upstream for HTTP/1.1 clients: http/1.1 only. Keeping the client's protocol
    /// keeps gRPC and other h2-only services working, and an HTTP/1.1 client's
    /// requests off a shared h2 connection (measured: lower tail latency, higher
    /// bulk throughput; docs/benchmarks.md).
    client_h1: Client<Upstream, Metered<Incoming>>,
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
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
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
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(LeafResolver(ca.clone())));
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
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

    /// One request on the explicit proxy port: CONNECT goes through the same
    /// checks as a redirected connection; anything else is cleartext and refused.
    async fn explicit(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<Body> {
        let started = Instant::now();
        let deny_event = |reason: &str| {
            self.state.events.emit(event(
                "conn",
                [
                    ("client", client.to_string().into()),
                    ("kind", "explicit".into()),
                    ("decision", "deny".into()),
                    ("reason", reason.into()),
                ],
            ))
        };
        if req.method() == Method::GET
            && req.uri().authority().is_none()
            && req.uri().path() == CA_PATH
        {
            self.state.events.emit(event(
                "conn",
                [
                    ("client", client.to_string().into()),
                    ("kind", "ca".into()),
                    ("decision", "allow".into()),
                ],
            ));
            let mut r = Response::new(
                Full::new(self.ca_pem.clone())
                    .map_err(|never| match never {})
                    .boxed(),
            );
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-pem-file"),
            );
            return r;
        }
        if req.method() != Method::CONNECT {
            let target = req.uri().to_string();
            let https = target
                .strip_prefix("http://")
                .map(|rest| format!("use https://{rest}"));
            deny_event("cleartext-http");
            return deny_response(
                StatusCode::FORBIDDEN,
                &format!(
                    "{} {target}: cleartext HTTP is not relayed; HTTPS is required",
                    req.method()
                ),
                &https.unwrap_or_else(|| "use CONNECT host:port for HTTPS".to_string()),
            );
        }
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let (host, port) = split_authority(&authority);
        let (Ok(name), Some(port)) = (normalize_host(host), port.filter(|p| *p != 0)) else {
            deny_event("bad-target");
            return deny_response(
                StatusCode::FORBIDDEN,
                &format!(
                    "CONNECT {authority}: the target must be hostname:port (addresses are never allowed)"
                ),
                "name the host, e.g. CONNECT api.example.com:443",
            );
        };
        let c = Conn {
            client,
            name,
            port,
            framing: None,
        };
        let policy = self.state.policy();
        let (rule, kind) = match policy.connection(&c.name, c.port) {
            ConnDecision::Deny(reason) => {
                drop(policy);
                self.conn_event(
                    &c,
                    vec![
                        ("kind", "connect".into()),
                        ("decision", "deny".into()),
                        ("reason", reason.to_string().into()),
                    ],
                );
                let fix = match reason {
                    DenyReason::DeniedBy(o) => format!("remove {o} (`cell policy` shows it)"),
                    _ => cell_policy::allow_hint(&c.name),
                };
                return deny_response(
                    StatusCode::FORBIDDEN,
                    &format!("{}:{} is not in the allowlist", c.name, c.port),
                    &fix,
                );
            }
            ConnDecision::Tcp(e) => (e.origin.to_string(), None),
            ConnDecision::Https(e) => (e.origin.to_string(), Some(e.passthrough)),
        };
        drop(policy);
        // A plain TCP entry is connected before the tunnel is granted, so a
        // refused or unreachable upstream is a 403 / 502 that says why rather
        // than a tunnel that closes. (HTTPS entries connect once the
        // ClientHello has shown the SNI: an invented name under a wildcard is
        // never looked up for a client that is not speaking TLS to it.)
        let upstream = match kind {
            None => match self.connect_upstream(&c).await {
                Ok(up) => Some(up),
                Err(e) => {
                    let resp = match e.downcast_ref::<UpstreamRefused>() {
                        Some(refused) => deny_response(
                            StatusCode::FORBIDDEN,
                            &refused.to_string(),
                            &refused.fix(),
                        ),
                        None => text_response(
                            StatusCode::BAD_GATEWAY,
                            format!("cell: could not reach {}:{}: {e:#}\n", c.name, c.port),
                        ),
                    };
                    self.splice_event(&c, "tcp", &rule, Err(e), started);
                    return resp;
                }
            },
            Some(_) => None,
        };
        let me = self.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = hyper::upgrade::on(req).await else {
                return;
            };
            let tunnel = TokioIo::new(upgraded);
            let guard = c.clone();
            match (kind, upstream) {
                (None, Some(up)) => {
                    me.guarded(&guard, async {
                        let r = me.relay(tunnel, up, Vec::new()).await;
                        me.splice_event(&c, "tcp", &rule, r, started);
                    })
                    .await
                }
                (None, None) => {}
                (Some(passthrough), _) => {
                    me.guarded(
                        &guard,
                        me.clone().tls(tunnel, c, rule, passthrough, started),
                    )
                    .await
                }
            }
        });
        Response::new(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        )
    }

    /// Resolves when a reload makes the policy deny this connection's host
    /// and port. In-flight streams of hosts that stay allowed are untouched.
    async fn until_denied(&self, c: &Conn) {
        denied_by_reload(&self.state, c).await
    }

    /// Runs `work` for connection `c` until it ends or a reload denies `c`.
    async fn guarded(&self, c: &Conn, work: impl Future<Output = ()>) {
        tokio::select! {
            () = work => {}
            () = self.until_denied(c) => {}
        }
    }

    fn conn_event(&self, c: &Conn, fields: Vec<(&'static str, Value)>) {
        conn_event(&self.state, c, fields)
    }

    async fn transparent(self: Arc<Self>, stream: TcpStream, client: SocketAddr) {
        let started = Instant::now();
        let dst = match original_dst(&stream) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(%client, "no original destination: {e:#}");
                return reset(stream);
            }
        };
        let name = self
            .state
            .table
            .lock()
            .expect("table lock")
            .name_of(*dst.ip())
            .map(str::to_string);
        let Some(name) = name else {
            self.state.events.emit(event(
                "conn",
                [
                    ("client", client.to_string().into()),
                    ("dst", dst.to_string().into()),
                    ("decision", "deny".into()),
                    ("reason", "unknown-address".into()),
                ],
            ));
            return reset(stream);
        };
        let c = Conn {
            client,
            name,
            port: dst.port(),
            framing: None,
        };
        let policy = self.state.policy();
        let decision = policy.connection(&c.name, c.port);
        match decision {
            ConnDecision::Deny(reason) if c.port == 80 => {
                // Cleartext HTTP: answer in HTTP so the client learns why.
                drop(policy);
                self.cleartext(stream, c, Some(reason)).await;
            }
            ConnDecision::Deny(reason) => {
                self.conn_event(
                    &c,
                    vec![
                        ("decision", "deny".into()),
                        ("reason", reason.to_string().into()),
                    ],
                );
                reset(stream);
            }
            ConnDecision::Tcp(entry) => {
                let rule = entry.origin.to_string();
                drop(policy);
                self.guarded(&c, async {
                    let r = self.splice(stream, &c, Vec::new()).await;
                    self.splice_event(&c, "tcp", &rule, r, started);
                })
                .await;
            }
            ConnDecision::Https(entry) => {
                let (rule, passthrough) = (entry.origin.to_string(), entry.passthrough);
                drop(policy);
                let guard = c.clone();
                self.guarded(
                    &guard,
                    self.clone().tls(stream, c, rule, passthrough, started),
                )
                .await;
            }
        }
    }

    fn splice_event(
        &self,
        c: &Conn,
        kind: &str,
        rule: &str,
        r: anyhow::Result<(u64, u64)>,
        started: Instant,
    ) {
        let ms = started.elapsed().as_millis() as u64;
        match r {
            Ok((up, down)) => self.conn_event(
                c,
                vec![
                    ("kind", kind.into()),
                    ("decision", "allow".into()),
                    ("rule", rule.into()),
                    ("bytes_up", up.into()),
                    ("bytes_down", down.into()),
                    ("duration_ms", ms.into()),
                ],
            ),
            Err(e) => {
                // A refused upstream address is a denial, not a failure.
                let decision = if e.downcast_ref::<UpstreamRefused>().is_some() {
                    "deny"
                } else {
                    "error"
                };
                self.conn_event(
                    c,
                    vec![
                        ("kind", kind.into()),
                        ("decision", decision.into()),
                        ("rule", rule.into()),
                        ("reason", format!("{e:#}").into()),
                        ("duration_ms", ms.into()),
                    ],
                )
            }
        }
    }

    /// Connects to the real `name:port` and relays bytes both ways; `prefix`
    /// (an already-read ClientHello) is sent first.
    async fn splice<S: ClientStream>(
        &self,
        down: S,
        c: &Conn,
        prefix: Vec<u8>,
    ) -> anyhow::Result<(u64, u64)> {
        match self.connect_upstream(c).await {
            Ok(up) => self.relay(down, up, prefix).await,
            Err(e) => {
                // Never an open-then-closed connection: the client learns at once.
                down.abort();
                Err(e)
            }
        }
    }

    async fn connect_upstream(&self, c: &Conn) -> anyhow::Result<TcpStream> {
        let timeout = self.state.policy().limits.connect_timeout_ms;
        connect(
            &self.state,
            &c.name,
            c.port,
            Duration::from_millis(timeout.into()),
        )
        .await
    }

    /// Relays bytes both ways between the client and a connected upstream;
    /// `prefix` (an already-read ClientHello) is sent first.
    async fn relay<S: ClientStream>(
        &self,
        mut down: S,
        mut up: TcpStream,
        prefix: Vec<u8>,
    ) -> anyhow::Result<(u64, u64)> {
        let idle = Duration::from_secs(self.state.policy().limits.idle_timeout_secs.into());
        up.write_all(&prefix).await?;
        let (a, b) = copy_with_idle(&mut down, &mut up, idle).await?;
        Ok((a + prefix.len() as u64, b))
    }

    async fn tls<S: ClientStream>(
        self: Arc<Self>,
        mut stream: S,
        c: Conn,
        rule: String,
        passthrough: bool,
        started: Instant,
    ) {
        let limits = self.state.policy().limits.clone();
        let hello = tokio::time::timeout(
            Duration::from_millis(limits.handshake_timeout_ms.into()),
            read_client_hello(&mut stream),
        )
        .await;
        let (prefix, sni) = match hello {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                self.conn_event(
                    &c,
                    vec![
                        ("decision", "deny".into()),
                        ("reason", format!("not TLS: {e:#}").into()),
                    ],
                );
                return stream.abort();
            }
            Err(_) => {
                self.conn_event(
                    &c,
                    vec![
                        ("decision", "deny".into()),
                        ("reason", "client hello timeout".into()),
                    ],
                );
                return stream.abort();
            }
        };
        // Rule 3: the SNI must name exactly the host behind the address.
        let sni_ok = match &sni {
            None => Err("no SNI".to_string()),
            Some(s) => match normalize_host(s) {
                Ok(n) if n == c.name => Ok(()),
                Ok(n) => Err(format!("SNI {n} does not match {}", c.name)),
                Err(_) => Err(format!("SNI {s:?} is not a hostname")),
            },
        };
        if let Err(reason) = sni_ok {
            self.conn_event(
                &c,
                vec![
                    ("kind", "tls".into()),
                    ("decision", "deny".into()),
                    ("reason", reason.into()),
                ],
            );
            return stream.abort();
        }
        if passthrough {
            let r = self.splice(stream, &c, prefix).await;
            return self.splice_event(&c, "passthrough", &rule, r, started);
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server_tls.clone());
        let replay = Replay {
            prefix: Bytes::from(prefix),
            inner: stream,
        };
        let tls = match tokio::time::timeout(
            Duration::from_millis(limits.handshake_timeout_ms.into()),
            acceptor.accept(replay),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                self.conn_event(
                    &c,
                    vec![
                        ("kind", "tls".into()),
                        ("decision", "error".into()),
                        ("reason", format!("client handshake: {e}").into()),
                    ],
                );
                return;
            }
            Err(_) => {
                self.conn_event(
                    &c,
                    vec![
                        ("kind", "tls".into()),
                        ("decision", "error".into()),
                        ("reason", "client handshake timeout".into()),
                    ],
                );
                return;
            }
        };
        let me = self.clone();
        let flags = crate::framing::Flags::new();
        let stats = flags.clone();
        let conn = Conn {
            framing: Some(flags.clone()),
            ..c.clone()
        };
        // A client that finishes TLS and then says nothing must not hold a
        // connection slot until the idle timeout: no request head within
        // requestHeadTimeoutMs closes it. Later HTTP/1.1 heads: hyper's timer,
        // which also runs while a kept-alive connection waits for its next
        // request, so it is never shorter than 30 s (clients pool connections).
        let head_seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = head_seen.clone();
        let service = hyper::service::service_fn(move |req| {
            seen.store(true, Ordering::Relaxed);
            let me = me.clone();
            let conn = conn.clone();
            async move { Ok::<_, std::convert::Infallible>(me.request(req, &conn).await) }
        });
        let head_timeout = Duration::from_millis(limits.request_head_timeout_ms.into());
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .max_buf_size((limits.header_bytes as usize).max(8192))
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(head_timeout.max(Duration::from_secs(30)));
        builder
            .http2()
            .max_header_list_size(limits.header_bytes)
            .max_concurrent_streams(256);
        let serve = builder.serve_connection_with_upgrades(
            TokioIo::new(crate::framing::FramingWatch::new(tls, flags)),
            service,
        );
        let idle = Duration::from_secs(limits.idle_timeout_secs.into());
        tokio::select! {
            r = serve => {
                if let Err(e) = r {
                    tracing::debug!(client = %c.client, "connection ended: {e}");
                }
            }
            () = idle_watch(&stats, idle) => {
                tracing::debug!(client = %c.client, "closing an idle connection after {idle:?}");
            }
            () = first_head_watch(&head_seen, head_timeout) => {
                self.conn_event(
                    &c,
                    vec![
                        ("kind", "tls".into()),
                        ("decision", "deny".into()),
                        ("reason", "no request head within requestHeadTimeoutMs".into()),
                    ],
                );
                return;
            }
        }
        // One line for the connection, when it ends (its requests have their own).
        self.conn_event(
            &c,
            vec![
                ("kind", "tls".into()),
                ("decision", "allow".into()),
                ("rule", rule.into()),
                (
                    "bytes_up",
                    stats
                        .bytes_up
                        .load(std::sync::atomic::Ordering::Relaxed)
                        .into(),
                ),
                (
                    "bytes_down",
                    stats
                        .bytes_down
                        .load(std::sync::atomic::Ordering::Relaxed)
                        .into(),
                ),
                ("duration_ms", (started.elapsed().as_millis() as u64).into()),
            ],
        );
    }

    /// Cleartext HTTP on port 80: never relayed; the client is told to use HTTPS.
    async fn cleartext(self: Arc<Self>, stream: TcpStream, c: Conn, _reason: Option<DenyReason>) {
        let me = self.clone();
        let conn = c.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let me = me.clone();
            let conn = conn.clone();
            async move {
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "/".into());
                let resp = deny_response(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "cleartext HTTP to {}:{} is not relayed; HTTPS is required",
                        conn.name, conn.port
                    ),
                    &format!("use https://{}{}", conn.name, path),
                );
                me.request_event(
                    &conn,
                    req.method(),
                    &path,
                    "deny",
                    None,
                    Some("cleartext-http"),
                    403,
                    Instant::now(),
                );
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }

    #[allow(clippy::too_many_arguments)]
    fn request_event(
        &self,
        c: &Conn,
        method: &Method,
        path: &str,
        decision: &str,
        rule: Option<String>,
        reason: Option<&str>,
        status: u16,
        started: Instant,
    ) {
        self.conn_event(
            c,
            vec![
                ("kind", "http".into()),
                ("method", method.as_str().into()),
                ("path", path.into()),
                ("decision", decision.into()),
                ("rule", rule.into()),
                ("reason", reason.map(str::to_string).into()),
                ("status", status.into()),
                ("duration_ms", (started.elapsed().as_millis() as u64).into()),
            ],
        );
    }

    /// One intercepted request.
    async fn request(&self, mut req: Request<Incoming>, c: &Conn) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let path_for_log = target.split('?').next().unwrap_or("/").to_string();
        let deny = |status: StatusCode, what: String, fix: String, reason: &str| {
            self.request_event(
                c,
                &method,
                &path_for_log,
                "deny",
                None,
                Some(reason),
                status.as_u16(),
                started,
            );
            deny_response(status, &what, &fix)
        };

        // Counted for every request, first, so the ordinals stay aligned.
        if c.framing
            .as_ref()
            .is_some_and(|f| f.next_request_is_ambiguous())
        {
            return deny(
                StatusCode::BAD_REQUEST,
                "Content-Length together with Transfer-Encoding (a request-smuggling shape)".into(),
                "send either Content-Length or chunked encoding, not both".into(),
                "framing",
            );
        }
        // Rule 4a: Host / :authority must be the SNI (and the port ours).
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            });
        let Some(authority) = authority else {
            return deny(
                StatusCode::BAD_REQUEST,
                "request without Host".into(),
                "send a Host header".into(),
                "no-host",
            );
        };
        let (host, port) = split_authority(&authority);
        let host_ok =
            normalize_host(host).is_ok_and(|h| h == c.name) && port.is_none_or(|p| p == c.port);
        if !host_ok {
            return deny(
                StatusCode::FORBIDDEN,
                format!(
                    "Host `{authority}` does not match the TLS server name `{}` (domain fronting is not allowed)",
                    c.name
                ),
                format!("send requests for {authority} on a connection to {authority}"),
                "host-mismatch",
            );
        }
        // Request smuggling shapes that reach the service anyway (e.g. repeated lengths over
        // HTTP/2). Over HTTP/1.1, hyper refuses two lengths, obs-fold and non-final chunked,
        // and the framing watch (framing.rs) catches Content-Length with chunked.
        if req.headers().contains_key(header::TRANSFER_ENCODING)
            && req.headers().contains_key(header::CONTENT_LENGTH)
            || req.headers().get_all(header::CONTENT_LENGTH).iter().count() > 1
        {
            return deny(
                StatusCode::BAD_REQUEST,
                "ambiguous message framing".into(),
                "send either Content-Length or chunked encoding, once".into(),
                "framing",
            );
        }

        // Rule 2 + 4b: the policy, now, for this request.
        let policy = self.state.policy();
        let entry: HttpsEntry = match policy.connection(&c.name, c.port) {
            ConnDecision::Https(e) if !e.passthrough => e.clone(),
            ConnDecision::Deny(DenyReason::DeniedBy(o)) => {
                return deny(
                    StatusCode::FORBIDDEN,
                    format!("{} is denied by {o}", c.name),
                    format!("remove {o} (`cell policy` shows it)"),
                    "deny-entry",
                );
            }
            _ => {
                return deny(
                    StatusCode::FORBIDDEN,
                    format!("{}:{} is not in the allowlist", c.name, c.port),
                    cell_policy::allow_hint(&c.name),
                    "no-rule",
                );
            }
        };
        drop(policy);
        let rule = entry.origin.to_string();
        if let Some(methods) = &entry.methods
            && !methods.iter().any(|m| m == method.as_str())
        {
            return deny(
                StatusCode::FORBIDDEN,
                format!(
                    "method {method} to {} is not allowed by {rule} (allowed: {})",
                    c.name,
                    methods.join(", ")
                ),
                format!("add \"{method}\" to the methods of {rule}"),
                "method",
            );
        }
        if let Some(paths) = &entry.paths {
            let ok = normalize_request_path(&target)
                .is_some_and(|p| paths.iter().any(|pp| pp.matches(p)));
            if !ok {
                let list: Vec<_> = paths.iter().map(|p| p.as_str()).collect();
                return deny(
                    StatusCode::FORBIDDEN,
                    format!(
                        "path {path_for_log} on {} is not allowed by {rule} (allowed: {})",
                        c.name,
                        list.join(", ")
                    ),
                    format!("add a matching pattern to the paths of {rule}"),
                    "path",
                );
            }
        }

        // Relay.
        let is_upgrade = req.headers().contains_key(header::UPGRADE);
        let client = if req.version() == http::Version::HTTP_2 {
            &self.client_h2
        } else {
            &self.client_h1
        };
        let uri = match Uri::builder()
            .scheme("https")
            .authority(authority_for(&c.name, c.port))
            .path_and_query(target.as_str())
            .build()
        {
            Ok(u) => u,
            Err(_) => {
                return deny(
                    StatusCode::BAD_REQUEST,
                    "malformed request target".into(),
                    "send an origin-form path".into(),
                    "target",
                );
            }
        };
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_11;
        req.headers_mut().insert(
            header::HOST,
            HeaderValue::from_str(&authority_for(&c.name, c.port)).expect("valid host"),
        );
        if is_upgrade {
            return self.upgrade(req, c, rule, started).await;
        }
        strip_hop_by_hop(req.headers_mut());
        // Bodies are metered as they stream; the event is written when the
        // response body ends (or the client goes away), with bytes and duration.
        let up = Arc::new(AtomicU64::new(0));
        let body_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = body_failed.clone();
        let req = req.map(|b| {
            let mut m = Metered::new(b, up.clone(), None);
            m.failed = flag;
            m
        });
        match client.request(req).await {
            Ok(mut resp) => {
                strip_hop_by_hop(resp.headers_mut());
                let status = resp.status().as_u16();
                let (state, conn) = (self.state.clone(), c.clone());
                let done: Box<dyn FnOnce(u64) + Send + Sync> = Box::new(move |down| {
                    conn_event(
                        &state,
                        &conn,
                        vec![
                            ("kind", "http".into()),
                            ("method", method.as_str().into()),
                            ("path", path_for_log.into()),
                            ("decision", "allow".into()),
                            ("rule", rule.into()),
                            ("status", status.into()),
                            ("bytes_up", up.load(Ordering::Relaxed).into()),
                            ("bytes_down", down.into()),
                            ("duration_ms", (started.elapsed().as_millis() as u64).into()),
                        ],
                    )
                });
                resp.map(|b| Metered::new(b, Arc::new(AtomicU64::new(0)), Some(done)).boxed())
            }
            Err(e) => {
                // The client's own body was malformed (an overflowing chunk size,
                // say): its fault, not the upstream's.
                if body_failed.load(Ordering::Relaxed) {
                    return deny(
                        StatusCode::BAD_REQUEST,
                        format!("malformed request body: {}", anyhow!(e)),
                        "send a well-formed body (valid chunk sizes, the declared length)".into(),
                        "framing",
                    );
                }
                if let Some(refused) = refused_in(&e) {
                    return deny(
                        StatusCode::FORBIDDEN,
                        refused.to_string(),
                        refused.fix(),
                        "upstream-address",
                    );
                }
                let why = format!("{:#}", anyhow!(e));
                self.request_event(
                    c,
                    &method,
                    &path_for_log,
                    "error",
                    Some(rule),
                    Some("upstream"),
                    502,
                    started,
                );
                let mut r = text_response(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "cell: could not reach https://{}: {why}\n",
                        authority_for(&c.name, c.port)
                    ),
                );
                r.headers_mut()
                    .insert("x-cell-error", HeaderValue::from_static("upstream"));
                r
            }
        }
    }

    /// WebSocket (and other HTTP/1.1 upgrades): a dedicated upstream
    /// connection, then bytes both ways after the 101.
    async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        c: &Conn,
        rule: String,
        started: Instant,
    ) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let result: anyhow::Result<Response<Body>> = async {
            let limits = self.state.policy().limits.clone();
            let tcp = connect(
                &self.state,
                &c.name,
                c.port,
                Duration::from_millis(limits.connect_timeout_ms.into()),
            )
            .await?;
            let mut cfg = (*self.client_tls).clone();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            let server_name = rustls_pki_types::ServerName::try_from(c.name.clone())?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(server_name, tcp)
                .await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            let client_upgrade = hyper::upgrade::on(&mut req);
            let (parts, body) = req.into_parts();
            let mut up_req = Request::from_parts(parts, body);
            *up_req.uri_mut() = Uri::builder()
                .path_and_query(
                    up_req
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/"),
                )
                .build()?;
            let mut resp = sender.send_request(up_req).await?;
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                let server_upgrade = hyper::upgrade::on(&mut resp);
                let idle = Duration::from_secs(limits.idle_timeout_secs.into());
                let (state, conn) = (self.state.clone(), c.clone());
                tokio::spawn(async move {
                    // Hold the upstream request handle until its connection has handed
                    // over the upgraded I/O: dropped earlier, the connection may close
                    // instead (a race that only loses under load).
                    let upstream = server_upgrade.await;
                    drop(sender);
                    match (client_upgrade.await, upstream) {
                        (Ok(a), Ok(b)) => {
                            let mut a = TokioIo::new(a);
                            let mut b = TokioIo::new(b);
                            // The relay outlives the request: it watches reloads itself.
                            tokio::select! {
                                r = copy_with_idle(&mut a, &mut b, idle) => {
                                    if let Err(e) = r {
                                        tracing::warn!(host = %conn.name, "upgraded stream ended: {e:#}");
                                    }
                                }
                                () = denied_by_reload(&state, &conn) => {}
                            }
                        }
                        (a, b) => {
                            let why = format!("client: {:?}, upstream: {:?}", a.err(), b.err());
                            tracing::warn!(host = %conn.name, "upgrade failed: {why}");
                            conn_event(&state, &conn, vec![("kind", "upgrade".into()), ("decision", "error".into()), ("reason", why.into())]);
                        }
                    }
                });
            }
            Ok(resp.map(|b| b.boxed()))
        }
        .await;
        match result {
            Ok(resp) => {
                self.request_event(
                    c,
                    &method,
                    &path,
                    "allow",
                    Some(rule),
                    None,
                    resp.status().as_u16(),
                    started,
                );
                resp
            }
            Err(e) => {
                if let Some(refused) = e.downcast_ref::<UpstreamRefused>() {
                    self.request_event(
                        c,
                        &method,
                        &path,
                        "deny",
                        Some(rule),
                        Some("upstream-address"),
                        403,
                        started,
                    );
                    return deny_response(
                        StatusCode::FORBIDDEN,
                        &refused.to_string(),
                        &refused.fix(),
                    );
                }
                self.request_event(
                    c,
                    &method,
                    &path,
                    "error",
                    Some(rule),
                    Some("upstream"),
                    502,
                    started,
                );
                text_response(
                    StatusCode::BAD_GATEWAY,
                    format!("cell: upgrade to https://{} failed: {e:#}\n", c.name),
                )
            }
        }
    }
}

/// A body that counts its data bytes as they pass and, when it ends or is
/// dropped, calls `done` once with the count.
pub struct Metered<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
    done: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
    /// Set when the inner body fails (a client's malformed chunked body).
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl<B> Metered<B> {
    fn new(
        inner: B,
        bytes: Arc<AtomicU64>,
        done: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
    ) -> Self {
        Metered {
            inner,
            bytes,
            done,
            failed: Arc::default(),
        }
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.bytes.load(Ordering::Relaxed));
        }
    }
}

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B: hyper::body::Body<Data = Bytes> + Unpin> hyper::body::Body for Metered<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.failed.store(true, Ordering::Relaxed);
                this.finish();
            }
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Resolves if no request head has arrived `timeout` after it was called;
/// never resolves once one has.
async fn first_head_watch(seen: &std::sync::atomic::AtomicBool, timeout: Duration) {
    tokio::time::sleep(timeout).await;
    if seen.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// Resolves once no plaintext byte has moved either way for `idle`.
async fn idle_watch(stats: &crate::framing::Flags, idle: Duration) {
    let moved =
        || stats.bytes_up.load(Ordering::Relaxed) + stats.bytes_down.load(Ordering::Relaxed);
    let mut last = (moved(), Instant::now());
    loop {
        tokio::time::sleep(idle / 4 + Duration::from_millis(5)).await;
        let now = moved();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= idle {
            return;
        }
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

/// An upstream connection refused for the address the name resolved to
/// (`cell_policy::upstream`): a typed error, so that every caller can answer
/// with the reason (403 or a reset) rather than a generic failure.
#[derive(Debug)]
pub struct UpstreamRefused {
    pub name: String,
    pub port: u16,
    /// Each address the name resolved to, and why it was refused.
    pub addrs: Vec<(IpAddr, Refusal)>,
    /// Refused before any lookup: the wildcard entry (origin) whose budget of
    /// new names per minute (the number) is spent.
    pub budget: Option<(String, u32)>,
}

impl UpstreamRefused {
    /// Whether the entry's `privateUpstream` opt-in would allow it.
    fn private_only(&self) -> bool {
        self.addrs
            .iter()
            .all(|(_, r)| matches!(r, Refusal::Private(_)))
    }

    /// The fix for the 403's body.
    fn fix(&self) -> String {
        if let Some((origin, _)) = &self.budget {
            format!(
                "wait a minute, add {} as an entry of its own, or raise limits.wildcardNamesPerMinute ({origin} is a wildcard: every new name under it is visible to its DNS operators)",
                self.name
            )
        } else if self.private_only() {
            format!(
                "if {} really is a service on a private network, set `privateUpstream = true` on its entry (Nix: cell.policy.https.\"{}\".privateUpstream, or .tcp.)",
                self.name, self.name
            )
        } else {
            format!(
                "nothing allows this: DNS for {} points at an address the firewall never connects to",
                self.name
            )
        }
    }
}

impl std::fmt::Display for UpstreamRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((origin, per_minute)) = &self.budget {
            return write!(
                f,
                "{}:{}: {origin} has looked up {per_minute} new names this minute (limits.wildcardNamesPerMinute); a new name under it is not looked up",
                self.name, self.port
            );
        }
        write!(f, "{}:{} resolves to ", self.name, self.port)?;
        for (i, (ip, why)) in self.addrs.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{ip} ({why})")?;
        }
        Ok(())
    }
}

impl std::error::Error for UpstreamRefused {}

/// The [`UpstreamRefused`] anywhere in an error's chain.
fn refused_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a UpstreamRefused> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<UpstreamRefused>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

/// Resolves an allowed name upstream and connects, trying each address the
/// upstream guard lets through (so a rebinding answer is judged on the
/// address actually connected to); refused addresses are an event, and if
/// none is left, an [`UpstreamRefused`] error.
async fn connect(
    state: &State,
    name: &str,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<TcpStream> {
    let fwd = state
        .forwarder()
        .context("no upstream resolver configured (dns.upstream)")?;
    let policy = state.policy();
    let (private_ok, wildcard) = match policy.connection(name, port) {
        ConnDecision::Https(e) => (
            e.private_upstream,
            e.pattern.is_wildcard().then_some(e.origin),
        ),
        ConnDecision::Tcp(e) => (
            e.private_upstream,
            e.pattern.is_wildcard().then_some(e.origin),
        ),
        ConnDecision::Deny(_) => (false, None),
    };
    // An invented name under a wildcard is seen by the domain's DNS: bounded.
    if let Some(origin) = wildcard {
        let per_minute = policy.limits.wildcard_names_per_minute;
        if state
            .name_budget
            .admit(&origin.to_string(), name, per_minute)
            .is_err()
        {
            state.events.emit(event(
                "upstream",
                [
                    ("host", name.into()),
                    ("port", port.into()),
                    ("decision", "deny".into()),
                    ("rule", origin.to_string().into()),
                    ("reason", "wildcard-name-budget".into()),
                ],
            ));
            return Err(anyhow::Error::new(UpstreamRefused {
                name: name.to_string(),
                port,
                addrs: Vec::new(),
                budget: Some((origin.to_string(), per_minute)),
            }));
        }
    }
    drop(policy);
    let addrs = fwd
        .lookup(name)
        .await
        .map_err(|e| anyhow!("resolving {name}: {e}"))?;
    if addrs.is_empty() {
        bail!("{name} has no IPv4 address upstream");
    }
    let policy = state.policy();
    let guard = state.upstream_guard(&policy);
    drop(policy);
    let mut refused = Vec::new();
    let mut allowed = Vec::new();
    for ip in addrs {
        match guard.check(IpAddr::V4(ip), private_ok) {
            Some(why) => refused.push((IpAddr::V4(ip), why)),
            None => allowed.push(ip),
        }
    }
    if !refused.is_empty() {
        state.events.emit(event(
            "upstream",
            [
                ("host", name.into()),
                ("port", port.into()),
                ("decision", "deny".into()),
                (
                    "refused",
                    refused
                        .iter()
                        .map(|(ip, why)| Value::from(format!("{ip}: {why}")))
                        .collect::<Vec<_>>()
                        .into(),
                ),
            ],
        ));
    }
    if allowed.is_empty() {
        return Err(anyhow::Error::new(UpstreamRefused {
            name: name.to_string(),
            port,
            addrs: refused,
            budget: None,
        }));
    }
    let mut last = None;
    for ip in allowed {
        match tokio::time::timeout(
            timeout,
            TcpStream::connect(SocketAddr::new(IpAddr::V4(ip), port)),
        )
        .await
        {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = Some(anyhow!("connecting to {ip}:{port}: {e}")),
            Err(_) => {
                last = Some(anyhow!(
                    "connecting to {ip}:{port}: timed out after {timeout:?}"
                ))
            }
        }
    }
    Err(last.expect("at least one address"))
}

/// Reads until a whole ClientHello is parsed. Returns the raw bytes (to be
/// replayed) and the SNI. Bounded: at most 64 KiB.
async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> anyhow::Result<(Vec<u8>, Option<String>)> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut raw = Vec::with_capacity(2048);
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!("connection closed before the TLS ClientHello");
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > 64 * 1024 {
            bail!("ClientHello larger than 64 KiB");
        }
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            acceptor.read_tls(&mut chunk)?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                return Ok((
                    raw,
                    accepted.client_hello().server_name().map(str::to_string),
                ));
            }
            Ok(None) => continue,
            Err((e, _)) => bail!("{e}"),
        }
    }
}

/// Copies both ways until both sides close or nothing moves for `idle`.
async fn copy_with_idle<A, B>(a: &mut A, b: &mut B, idle: Duration) -> anyhow::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let last = std::sync::Mutex::new(Instant::now());
    let up = pump(&mut ar, &mut bw, &last);
    let down = pump(&mut br, &mut aw, &last);
    let watchdog = async {
        loop {
            tokio::time::sleep(idle / 4 + Duration::from_millis(10)).await;
            if last.lock().expect("idle lock").elapsed() > idle {
                return;
            }
        }
    };
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => Ok(r?),
        _ = watchdog => bail!("idle for {idle:?}"),
    }
}

/// Copies `r` to `w` until EOF (then shuts `w` down), noting activity in `last`.
async fn pump<R, W>(r: &mut R, w: &mut W, last: &std::sync::Mutex<Instant>) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut n = 0u64;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let k = r.read(&mut buf).await?;
        if k == 0 {
            w.shutdown().await.ok();
            return Ok(n);
        }
        w.write_all(&buf[..k]).await?;
        // A TLS stream may hold the tail of a write until the next write or a
        // flush; without this, a peer waiting for that tail (an echo) and a
        // relay waiting to read deadlock until the idle timeout.
        w.flush().await?;
        n += k as u64;
        *last.lock().expect("idle lock") = Instant::now();
    }
}

/// Replays an already-read prefix, then reads from the socket.
struct Replay<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The hyper client's connector: resolves an allowed name upstream, connects,
/// and validates the upstream certificate for that name.
#[derive(Clone)]
pub struct Upstream {
    state: Arc<State>,
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

/// A TLS connection to an upstream, telling hyper which protocol ALPN chose.
pub struct UpstreamIo(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        let h2 = self.0.inner().get_ref().1.alpn_protocol() == Some(b"h2");
        if h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tower_service::Service<Uri> for Upstream {
    type Response = UpstreamIo;
    /// Boxed so that an [`UpstreamRefused`] stays visible through hyper's
    /// error chain (`refused_in`).
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let host = uri.host().context("no host")?.to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = connect(&me.state, &host, port, me.timeout)
                .await
                .map_err(|e| match e.downcast::<UpstreamRefused>() {
                    Ok(refused) => Box::new(refused) as Self::Error,
                    Err(e) => e.into(),
                })?;
            let server_name = rustls_pki_types::ServerName::try_from(host.clone())?;
            let tls = tokio::time::timeout(me.timeout, me.tls.connect(server_name, tcp))
                .await
                .map_err(|_| anyhow!("TLS handshake with {host} timed out"))?
                .with_context(|| {
                    format!(
                        "TLS with {host}:{port} (the upstream certificate must be valid for {host})"
                    )
                })?;
            Ok::<_, Self::Error>(UpstreamIo(TokioIo::new(tls)))
        })
    }
}
