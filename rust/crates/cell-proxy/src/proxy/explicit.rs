//! The explicit proxy port: the CA certificate, CONNECT under the same
//! policy as a redirected connection, and nothing in cleartext.

use super::*;

impl Proxy {
    /// One request on the explicit proxy port: CONNECT goes through the same
    /// checks as a redirected connection; anything else is cleartext and refused.
    pub(super) async fn explicit(
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
}
