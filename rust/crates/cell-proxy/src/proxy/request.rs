//! The request stages of an intercepted connection: the decision (Host ==
//! SNI, method and path rules, framing) and the relay to a validated
//! upstream; a later stage (secrets, the spy) plugs in here.

use super::*;

impl Proxy {
    /// Cleartext HTTP on port 80: never relayed; the client is told to use HTTPS.
    pub(super) async fn cleartext(
        self: Arc<Self>,
        stream: TcpStream,
        c: Conn,
        _reason: Option<DenyReason>,
    ) {
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
    pub(super) fn request_event(
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
    pub(super) async fn request(&self, mut req: Request<Incoming>, c: &Conn) -> Response<Body> {
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
                "ambiguous HTTP/1.1 framing (Content-Length with chunked, a bare-LF line ending, or a head a server would refuse): a request-smuggling shape; the rest of this connection is refused too".into(),
                "end lines with CRLF and send either Content-Length or chunked encoding, not both; open a new connection".into(),
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
        let spy = entry.records(&c.name);
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
            // The head only: after the 101 the bytes are relayed as they are.
            let (mut parts, body) = req.into_parts();
            match self.state.secrets.plan(&c.name, &mut parts) {
                Err(b) => return self.secret_denied(c, &method, &path_for_log, &b, started),
                // Re-signing happens on the body path only; an upgrade signed
                // with the placeholders would go out unsigned for AWS.
                Ok(plan) if plan.aws.is_some() => {
                    let b = super::inject::aws_upgrade_refused(&self.state.secrets, &plan);
                    return self.secret_denied(c, &method, &path_for_log, &b, started);
                }
                Ok(_) => {}
            }
            return self
                .upgrade(Request::from_parts(parts, body), c, rule, started)
                .await;
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
        // The secrets stage: placeholders in, values refused, the body scanned.
        let prepared = match self.prepare(req, c).await {
            Ok(p) => p,
            Err(b) => return self.secret_denied(c, &method, &path_for_log, &b, started),
        };
        let (scrub, secrets) = (prepared.plan.scrub, prepared.plan.injected.clone());
        // The spy: the request as it goes upstream (its values redacted
        // when recorded), teed as it streams.
        let recording = match (spy, self.state.spy.get()) {
            (true, Some(recorder)) => {
                let capture = recorder.capture();
                let pending = crate::spy::Pending {
                    id: recorder.next_id(),
                    started,
                    at: std::time::SystemTime::now(),
                    host: c.name.clone(),
                    method: method.to_string(),
                    path: path_for_log.clone(),
                    rule: rule.clone(),
                    request_headers: prepared.req.headers().clone(),
                    request: capture.clone(),
                };
                Some((recorder.clone(), pending, capture))
            }
            _ => None,
        };
        let up_req = match &recording {
            Some((_, _, capture)) => prepared
                .req
                .map(|b| crate::spy::Tee::new(b, capture.clone(), None).boxed()),
            None => prepared.req,
        };
        match client.request(up_req).await {
            Ok(mut resp) => {
                strip_hop_by_hop(resp.headers_mut());
                let status = resp.status().as_u16();
                let resp = if scrub {
                    self.scrub(&method, resp)
                } else {
                    resp.map(|b| b.map_err(BoxError::from).boxed())
                };
                // The response as the agent gets it (already scrubbed).
                let resp = match recording {
                    Some((recorder, pending, _)) => {
                        let secrets = self.state.secrets.clone();
                        let headers = resp.headers().clone();
                        let capture = recorder.capture();
                        let seen = capture.clone();
                        let done: Box<dyn FnOnce(bool) + Send + Sync> = Box::new(move |complete| {
                            pending.finish(&recorder, secrets, status, headers, seen, complete)
                        });
                        resp.map(|b| crate::spy::Tee::new(b, capture, Some(done)).boxed())
                    }
                    None => resp,
                };
                let secrets = (!secrets.is_empty()).then(|| Value::from(secrets));
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
                            ("secrets", secrets.unwrap_or(Value::Null)),
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
                // The body scan stopped the body before the bytes it refused.
                let blocked = prepared.blocked.lock().expect("blocked lock").take();
                if let Some(b) = blocked {
                    return self.secret_denied(c, &method, &path_for_log, &b, started);
                }
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
}
