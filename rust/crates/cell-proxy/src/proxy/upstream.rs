//! Upstream connections: the one place the proxy opens a socket to the
//! internet, the address guard it applies, and the TLS connector the
//! HTTP clients use.

use super::*;

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
    pub(super) fn fix(&self) -> String {
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
pub(super) fn refused_in<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a UpstreamRefused> {
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
pub(super) async fn connect(
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

/// The hyper client's connector: resolves an allowed name upstream, connects,
/// and validates the upstream certificate for that name.
#[derive(Clone)]
pub struct Upstream {
    pub(super) state: Arc<State>,
    pub(super) tls: tokio_rustls::TlsConnector,
    pub(super) timeout: Duration,
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
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
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
