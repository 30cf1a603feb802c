//! Accept and TLS: a redirected connection is mapped back to its name, the
//! policy decides, the ClientHello is read before anything is answered, and
//! TLS is terminated with a leaf from the cell CA (rules 1, 3 and 5 of the
//! module docs of [`super`]).

use super::*;

impl Proxy {
    pub(super) async fn transparent(self: Arc<Self>, stream: TcpStream, client: SocketAddr) {
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

    pub(super) async fn tls<S: ClientStream>(
        self: Arc<Self>,
        mut stream: S,
        c: Conn,
        rule: String,
        passthrough: bool,
        started: Instant,
    ) {
        let limits = self.state.policy().limits.clone();
        // The ClientHello reader (a 4 KiB buffer and a rustls Acceptor) and the
        // handshake are boxed: they are needed for a few milliseconds, and
        // inline they would stay in the connection's task for its whole life.
        let hello = tokio::time::timeout(
            Duration::from_millis(limits.handshake_timeout_ms.into()),
            Box::pin(read_client_hello(&mut stream)),
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
            Box::pin(acceptor.accept(replay)),
        )
        .await
        {
            // Boxed: the stream (1.2 KB inline, rustls' connection) is moved
            // into the framing watch and on into hyper, and each
            // async fn it passes through would keep a copy of its slot in
            // the connection's task for the connection's life.
            Ok(Ok(t)) => Box::new(t),
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
        let _open = self.state.intercepted.hold();
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
        let in_flight = flags.clone();
        let service = hyper::service::service_fn(move |req| {
            seen.store(true, Ordering::Relaxed);
            let guard = park::InFlight::start(in_flight.clone());
            let me = me.clone();
            let conn = conn.clone();
            async move {
                let resp = me.request(req, &conn).await;
                Ok::<_, std::convert::Infallible>(resp.map(|b| guard.wrap(b)))
            }
        });
        let head_timeout = Duration::from_millis(limits.request_head_timeout_ms.into());
        let keepalive_head = head_timeout.max(Duration::from_secs(30));
        // HTTP/1.1 by ALPN: served with idle connections parked (`park`).
        // HTTP/2, or no ALPN (either may come): hyper-util's auto server.
        let h1 = tls.get_ref().1.alpn_protocol() == Some(b"http/1.1");
        let watch = crate::framing::FramingWatch::new(tls, flags);
        let serve = async {
            if h1 {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.max_buf_size((limits.header_bytes as usize).max(8192))
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(keepalive_head);
                park::serve_h1(
                    &b,
                    watch,
                    service,
                    &stats,
                    keepalive_head,
                    &self.state.parked,
                )
                .await
            } else {
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .max_buf_size((limits.header_bytes as usize).max(8192))
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(keepalive_head);
                builder
                    .http2()
                    .max_header_list_size(limits.header_bytes)
                    .max_concurrent_streams(256);
                // Boxed: 3 KB of connection state that a parked HTTP/1.1
                // connection's task must not carry.
                Box::pin(builder.serve_connection_with_upgrades(TokioIo::new(watch), service)).await
            }
        };
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
}

/// Resolves if no request head has arrived `timeout` after it was called;
/// never resolves once one has.
pub(super) async fn first_head_watch(seen: &std::sync::atomic::AtomicBool, timeout: Duration) {
    tokio::time::sleep(timeout).await;
    if seen.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// Resolves once no plaintext byte has moved either way for `idle`.
pub(super) async fn idle_watch(stats: &crate::framing::Flags, idle: Duration) {
    let moved = || stats.bytes_moved();
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

/// Reads until a whole ClientHello is parsed. Returns the raw bytes (to be
/// replayed) and the SNI. Bounded: at most 64 KiB.
pub(super) async fn read_client_hello<S: AsyncRead + Unpin>(
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
    /// rustls hands its queued records over as one vectored write: one
    /// system call for all of them, not one per record.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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
