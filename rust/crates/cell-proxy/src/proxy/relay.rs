//! Relaying bytes: spliced TCP and passthrough, upgraded streams
//! (WebSocket), and bodies metered as they stream.

use super::*;

impl Proxy {
    pub(super) fn splice_event(
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
    pub(super) async fn splice<S: ClientStream>(
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

    pub(super) async fn connect_upstream(&self, c: &Conn) -> anyhow::Result<TcpStream> {
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
    pub(super) async fn relay<S: ClientStream>(
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

    /// WebSocket (and other HTTP/1.1 upgrades): a dedicated upstream
    /// connection, then bytes both ways after the 101.
    pub(super) async fn upgrade(
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
            Ok(resp.map(|b| b.map_err(BoxError::from).boxed()))
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
    pub(super) failed: Arc<std::sync::atomic::AtomicBool>,
}

impl<B> Metered<B> {
    pub(super) fn new(
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

/// Copies both ways until both sides close or nothing moves for `idle`.
pub(super) async fn copy_with_idle<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
) -> anyhow::Result<(u64, u64)>
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
