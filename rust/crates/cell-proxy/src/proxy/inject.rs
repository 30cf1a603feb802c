//! The secrets stage of an intercepted request (after the decision, before
//! the relay): placeholders put in, values refused, bodies scanned as they
//! stream, AWS requests re-signed, responses scrubbed. The rules are in
//! [`crate::secrets`]; this module plugs them into the request path.

use super::*;
use crate::secrets::scan::{Blocked, Scanned};
use crate::secrets::{Plan, sigv4};
use sha2::Digest;

/// Longest body buffered to hash a SigV4 request that does not send
/// `x-amz-content-sha256` (the signature covers the body's hash).
pub const AWS_BODY_MAX: usize = 32 << 20;

/// A request ready for the relay, with what the response needs.
pub(super) struct Prepared {
    pub req: Request<UpBody>,
    pub plan: Plan,
    /// Set when the body scan stopped the body; read when the relay fails.
    pub blocked: Arc<std::sync::Mutex<Option<Blocked>>>,
}

impl Proxy {
    /// Answers a request the secrets stage refused, with its event.
    pub(super) fn secret_denied(
        &self,
        c: &Conn,
        method: &Method,
        path: &str,
        b: &Blocked,
        started: Instant,
    ) -> Response<Body> {
        let status = StatusCode::from_u16(b.status).unwrap_or(StatusCode::FORBIDDEN);
        self.conn_event(
            c,
            vec![
                ("kind", "http".into()),
                ("method", method.as_str().into()),
                ("path", path.into()),
                ("decision", "deny".into()),
                ("reason", format!("secret-{}", b.reason).into()),
                ("secret", b.secret.clone().into()),
                ("where", b.place.clone().into()),
                ("status", b.status.into()),
                ("duration_ms", (started.elapsed().as_millis() as u64).into()),
            ],
        );
        let mut r = deny_response(status, &b.what, &b.fix);
        r.headers_mut()
            .insert("x-cell-error", HeaderValue::from_static("secret"));
        r
    }

    /// Runs the secrets stage on the head and wraps the body. `Err` is the
    /// answer to send instead (nothing went upstream).
    pub(super) async fn prepare(
        &self,
        req: Request<Metered<Incoming>>,
        c: &Conn,
    ) -> Result<Prepared, Blocked> {
        let (mut parts, body) = req.into_parts();
        let store = self.state.secrets.clone();
        let mut plan = store.plan(&c.name, &mut parts)?;
        let body_plan = plan.body.take();
        let blocked = Arc::new(std::sync::Mutex::new(None));
        let Some(aws) = plan.aws.take() else {
            let body: UpBody = match body_plan {
                Some(bp) => {
                    let mut s = Scanned::new(body, bp.matcher, bp.act, bp.length_may_change);
                    s.blocked = blocked.clone();
                    if bp.length_may_change {
                        parts.headers.remove(header::CONTENT_LENGTH);
                    }
                    s.boxed()
                }
                None => body.map_err(BoxError::from).boxed(),
            };
            return Ok(Prepared {
                req: Request::from_parts(parts, body),
                plan,
                blocked,
            });
        };
        // SigV4: the body is scanned (a value in it is still refused), then
        // hashed if the signature covers it, then the head is re-signed.
        let mut scanned = match body_plan {
            Some(bp) => Scanned::new(body, bp.matcher, bp.act, false),
            None => Scanned::plain(body),
        };
        scanned.blocked = blocked.clone();
        let body: UpBody = if sigv4::needs_body_hash(&parts.headers) {
            let limited = http_body_util::Limited::new(scanned, AWS_BODY_MAX);
            let bytes = match limited.collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    if let Some(b) = blocked.lock().expect("blocked lock").take() {
                        return Err(b);
                    }
                    return Err(Blocked {
                        status: 413,
                        secret: String::new(),
                        reason: "aws-body",
                        place: "body".into(),
                        what: format!(
                            "the body of a SigV4 request without x-amz-content-sha256 is hashed before re-signing, and this one could not be read whole (at most {AWS_BODY_MAX} bytes): {e}"
                        ),
                        fix: "send x-amz-content-sha256 (most SDKs do for S3), or a smaller body"
                            .into(),
                    });
                }
            };
            let hash = hex::encode(sha2::Sha256::digest(&bytes));
            store.resign(&aws, &parts.method, &parts.uri, &mut parts.headers, &hash)?;
            Full::new(bytes).map_err(|never| match never {}).boxed()
        } else {
            let hash = parts
                .headers
                .get("x-amz-content-sha256")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            store.resign(&aws, &parts.method, &parts.uri, &mut parts.headers, &hash)?;
            scanned.boxed()
        };
        plan.injected.push(store_name(&store, aws.secret));
        Ok(Prepared {
            req: Request::from_parts(parts, body),
            plan,
            blocked,
        })
    }

    /// Scrubs a response from a host in a loaded secret's scope.
    pub(super) fn scrub(&self, method: &Method, resp: Response<Incoming>) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        let (matcher, act) = self.state.secrets.scrub(&mut parts.headers);
        let bodiless = *method == Method::HEAD
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        if bodiless || matcher.is_empty() {
            return Response::from_parts(parts, body.map_err(BoxError::from).boxed());
        }
        // The body may shrink or grow by a replacement: its length is not announced.
        parts.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(parts, Scanned::new(body, matcher, act, true).boxed())
    }
}

/// A SigV4 request (signed with an aws secret's placeholders) that asks for
/// a protocol upgrade: not re-signed, so refused rather than sent upstream
/// with a signature AWS would refuse.
pub(super) fn aws_upgrade_refused(store: &crate::secrets::Store, plan: &Plan) -> Blocked {
    let secret = plan
        .aws
        .as_ref()
        .map(|a| store_name(store, a.secret))
        .unwrap_or_default();
    Blocked {
        status: 403,
        reason: "aws-upgrade",
        place: "header upgrade".into(),
        what: format!(
            "a request signed with aws secret `{secret}`'s placeholders asks for a protocol upgrade, which cell cannot re-sign"
        ),
        fix: "send the request without `Upgrade:` (AWS APIs do not use it), or sign it on the host"
            .into(),
        secret,
    }
}

fn store_name(store: &crate::secrets::Store, i: usize) -> String {
    store
        .status()
        .get("secrets")
        .and_then(|s| s.get(i))
        .and_then(|s| s.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string()
}
