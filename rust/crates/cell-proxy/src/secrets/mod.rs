//! Secrets: values the agent never holds, put in by the proxy.
//!
//! The document (`--secrets`, compiled by `lib/secrets.nix`) says which
//! secret may go to which hosts and where in a request; the values arrive
//! over the control socket from the host CLI and live only in this
//! process's memory, in zeroized buffers (the process is not dumpable:
//! `main` clears `PR_SET_DUMPABLE`).
//!
//! For one request, after the allow decision ([`Store::plan`]):
//!
//! - a placeholder of a loaded secret whose scope covers the host, in a
//!   location the secret allows, is replaced by the value (headers, also
//!   inside `Basic` credentials; the request target and the body only when
//!   opted in; the body as it streams);
//! - a placeholder headed to a host outside its scope is refused (403), so is
//!   one in a header or the target the secret does not allow there; one of a
//!   secret that is not loaded is refused with 503; nothing is sent upstream;
//! - the real value, raw or encoded ([`encodings`]), in any request to any
//!   host is refused (403) and reported: the agent should never have it;
//! - responses from a host in a loaded secret's scope have the raw value
//!   replaced by its placeholder, in headers and the streamed body.
//!
//! Nothing here ever formats a value: errors and events name the secret,
//! where it was found and the fix.

pub mod scan;
pub mod sigv4;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use cell_policy::HostPattern;
use cell_policy::secrets::{Kind, Location, SecretDecl, SecretsDocument};
use http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use scan::{Action, Blocked, Encoding, Found, Matcher, Pattern, Tag, What};
use sigv4::{AwsCredentials, SigV4Error};

/// Values shorter than this are matched raw only: their encodings would be
/// too short to tell from ordinary text.
const ENCODED_MIN: usize = 12;
/// Values shorter than this are refused: a leak check on them would block
/// ordinary text.
pub const VALUE_MIN: usize = 6;
/// The longest value accepted (a service account key is a few KiB).
pub const VALUE_MAX: usize = 32 * 1024;

/// A loaded value.
pub enum Loaded {
    Token(Zeroizing<String>),
    Aws(AwsCredentials),
}

#[derive(Default)]
struct Usage {
    /// Unix seconds of the last injection (0: never).
    last: AtomicU64,
    count: AtomicU64,
}

/// One secret: its declaration, scope and (maybe) value.
struct Secret {
    decl: SecretDecl,
    scope: Vec<HostPattern>,
    value: Option<Loaded>,
    loaded_at: u64,
    usage: Arc<Usage>,
}

/// The matchers built from the declarations and loaded values.
#[derive(Default)]
pub struct Compiled {
    /// Placeholders (all secrets) and real values in every encoding (loaded ones).
    pub request: Arc<Matcher>,
    /// Real values, raw (loaded ones), to be replaced by their placeholder.
    pub response: Arc<Matcher>,
}

#[derive(Default)]
pub struct Store {
    secrets: RwLock<Vec<Secret>>,
    compiled: RwLock<Arc<Compiled>>,
}

/// What [`Store::plan`] decided for one request.
#[derive(Default)]
pub struct Plan {
    /// Names of the secrets put into the head so far.
    pub injected: Vec<String>,
    /// Scan the request body (always, when any secret is declared).
    pub body: Option<BodyPlan>,
    /// Replace real values in the response by placeholders.
    pub scrub: bool,
    /// A SigV4-signed request to re-sign with this AWS secret.
    pub aws: Option<AwsPlan>,
}

pub struct BodyPlan {
    pub matcher: Arc<Matcher>,
    pub act: scan::Act,
    /// A replacement may change the body's length: don't announce it.
    pub length_may_change: bool,
}

pub struct AwsPlan {
    pub secret: usize,
    pub signed: sigv4::Signed,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Every way the agent might write `v` that we look for: raw, base64 and
/// base64url (at each of the three alignments inside a longer encoding, so
/// `user:VALUE` in Basic credentials is found too), hex in either case, and
/// percent-encoding of every byte in either case.
pub fn encodings(v: &[u8]) -> Vec<(Zeroizing<Vec<u8>>, Encoding)> {
    let z = |b: Vec<u8>| Zeroizing::new(b);
    let mut out = vec![(z(v.to_vec()), Encoding::Raw)];
    if v.len() < ENCODED_MIN {
        return out;
    }
    for (engine, enc) in [
        (
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            Encoding::Base64,
        ),
        (
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            Encoding::Base64Url,
        ),
    ] {
        for k in 0..3usize {
            let mut input = Zeroizing::new(vec![0u8; k]);
            input.extend_from_slice(v);
            let s = Zeroizing::new(engine.encode(&*input));
            // Characters that depend on the k prefix bytes, or on what follows.
            let skip = (8 * k).div_ceil(6);
            let full = 8 * (k + v.len()) / 6;
            out.push((z(s.as_bytes()[skip..full].to_vec()), enc));
        }
    }
    let lower = Zeroizing::new(hex::encode(v));
    out.push((z(lower.to_ascii_uppercase().into_bytes()), Encoding::Hex));
    out.push((z(lower.as_bytes().to_vec()), Encoding::Hex));
    for upper in [true, false] {
        let mut p = Zeroizing::new(Vec::with_capacity(v.len() * 3));
        for b in v {
            let h = if upper {
                format!("%{b:02X}")
            } else {
                format!("%{b:02x}")
            };
            p.extend_from_slice(h.as_bytes());
        }
        out.push((p, Encoding::Percent));
    }
    // Percent-encoding of the reserved characters only (what URL encoders write).
    let mut p = Zeroizing::new(Vec::new());
    for b in v {
        if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
            p.push(*b)
        } else {
            p.extend_from_slice(format!("%{b:02X}").as_bytes())
        }
    }
    if *p != v {
        out.push((p, Encoding::Percent));
    }
    out
}

/// `v` as it goes in a URL: unreserved bytes as they are, the rest %XX.
fn percent_encode(v: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut p = Zeroizing::new(Vec::with_capacity(v.len()));
    for b in v {
        if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
            p.push(*b)
        } else {
            p.extend_from_slice(format!("%{b:02X}").as_bytes())
        }
    }
    p
}

impl Store {
    /// Installs the document; values and usage of secrets it still declares are kept.
    pub fn set_document(&self, doc: &SecretsDocument) {
        let mut secrets = self.secrets.write().expect("secrets lock");
        let mut old: Vec<Secret> = std::mem::take(&mut *secrets);
        for d in &doc.secrets {
            let kept = old
                .iter()
                .position(|s| s.decl.name == d.name && s.decl.kind == d.kind)
                .map(|i| old.swap_remove(i));
            let (value, loaded_at, usage) = match kept {
                Some(s) => (s.value, s.loaded_at, s.usage),
                None => (None, 0, Arc::default()),
            };
            secrets.push(Secret {
                scope: SecretsDocument::scope(d),
                decl: d.clone(),
                value,
                loaded_at,
                usage,
            });
        }
        *self.compiled.write().expect("compiled lock") = Arc::new(compile(&secrets));
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.read().expect("secrets lock").is_empty()
    }

    /// Loads (`Some`) or unloads (`None`) values by name. Returns, per name,
    /// `Ok(())` or why it was refused (never quoting the value).
    pub fn load(
        &self,
        values: Vec<(String, Option<Zeroizing<String>>)>,
    ) -> Vec<(String, Result<(), String>)> {
        let mut out = Vec::new();
        let mut secrets = self.secrets.write().expect("secrets lock");
        for (name, value) in values {
            let Some(s) = secrets.iter_mut().find(|s| s.decl.name == name) else {
                out.push((
                    name.clone(),
                    Err(format!("no secret `{name}` is declared on this firewall")),
                ));
                continue;
            };
            let Some(value) = value else {
                s.value = None;
                out.push((name, Ok(())));
                continue;
            };
            let loaded = match s.decl.kind {
                Kind::Token => check_token(&value).map(|()| Loaded::Token(value)),
                Kind::Aws => AwsCredentials::from_process_json(&value)
                    .map_err(|e| e.to_string())
                    .and_then(|c| {
                        check_token(&c.secret_access_key)?;
                        Ok(Loaded::Aws(c))
                    }),
            };
            match loaded {
                Ok(l) => {
                    s.value = Some(l);
                    s.loaded_at = now();
                    out.push((name, Ok(())));
                }
                Err(e) => out.push((name, Err(e))),
            }
        }
        *self.compiled.write().expect("compiled lock") = Arc::new(compile(&secrets));
        out
    }

    /// How many declared secrets have a value.
    pub fn loaded_count(&self) -> usize {
        let secrets = self.secrets.read().expect("secrets lock");
        secrets.iter().filter(|s| s.value.is_some()).count()
    }

    /// What `cell secrets` shows: everything but the value.
    pub fn status(&self) -> Value {
        let secrets = self.secrets.read().expect("secrets lock");
        let list: Vec<Value> = secrets
            .iter()
            .map(|s| {
                let u = &s.usage;
                let last = u.last.load(Ordering::Relaxed);
                json!({
                    "name": s.decl.name,
                    "placeholder": s.decl.placeholder,
                    "accessKeyIdPlaceholder": s.decl.access_key_id_placeholder,
                    "kind": match s.decl.kind { Kind::Token => "token", Kind::Aws => "aws" },
                    "hosts": s.decl.hosts,
                    "locations": s.decl.locations.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                    "source": s.decl.source.kind(),
                    "loaded": s.value.is_some(),
                    "loadedAt": (s.loaded_at > 0).then_some(s.loaded_at),
                    "lastUsed": (last > 0).then_some(last),
                    "uses": u.count.load(Ordering::Relaxed),
                })
            })
            .collect();
        json!({ "ok": true, "secrets": list })
    }

    fn used(&self, i: usize) {
        if let Some(u) = self
            .secrets
            .read()
            .expect("secrets lock")
            .get(i)
            .map(|s| s.usage.clone())
        {
            u.last.store(now(), Ordering::Relaxed);
            u.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The request stage: rewrites the head of a request to `host` (already
    /// allowed) and says what to do with its body and response.
    pub fn plan(
        self: &Arc<Self>,
        host: &str,
        parts: &mut http::request::Parts,
    ) -> Result<Plan, Blocked> {
        let compiled = self.compiled.read().expect("compiled lock").clone();
        let mut plan = Plan::default();
        if compiled.request.is_empty() {
            return Ok(plan);
        }
        let view = self.view(host);
        plan.scrub = view.scrub;

        // SigV4 first: a request signed with an AWS placeholder is re-signed
        // later; one made with it that cannot be re-signed is refused here.
        let mut skip_authorization = false;
        if let Some(akid) = sigv4::presigned_access_key_id(&parts.uri)
            && let Some(i) = view.aws_key_id(&akid)
        {
            return Err(view.presigned(i));
        }
        match sigv4::parse(&parts.headers) {
            Ok(Some(signed)) => {
                if let Some(i) = view.aws_key_id(signed.access_key_id()) {
                    view.check_aws(i, "header authorization")?;
                    skip_authorization = true;
                    plan.aws = Some(AwsPlan { secret: i, signed });
                }
            }
            Ok(None) => {}
            // A SigV4 Authorization that does not parse: refused when the
            // request names an AWS placeholder key id (the agent meant to
            // sign with it), else left to the rules below.
            Err(e) => {
                if let Some(i) = view.aws_key_id_in(&parts.headers) {
                    return Err(view.unparsable(i, &e));
                }
            }
        }

        let mut injected: Vec<usize> = Vec::new();
        let mut rewritten: Vec<(http::HeaderName, usize, HeaderValue)> = Vec::new();
        for (idx, (name, value)) in parts.headers.iter().enumerate() {
            if skip_authorization && name == http::header::AUTHORIZATION {
                continue;
            }
            let place = format!("header {name}");
            let mut act = |f: &Found| view.act(f, Location::Header, &place, &mut injected);
            let mut new = scan::rewrite(&compiled.request, value.as_bytes(), &mut act)?;
            // Basic credentials: the placeholder (or value) inside base64(user:pass).
            if (name == http::header::AUTHORIZATION || name == http::header::PROXY_AUTHORIZATION)
                && let Some(b64) = value.as_bytes().strip_prefix(b"Basic ")
                && let Ok(decoded) =
                    base64::engine::general_purpose::STANDARD.decode(b64.trim_ascii())
            {
                let decoded = Zeroizing::new(decoded);
                let place = format!("header {name} (Basic credentials)");
                let mut act = |f: &Found| view.act(f, Location::Header, &place, &mut injected);
                if let Some(inner) = scan::rewrite(&compiled.request, &decoded, &mut act)? {
                    let enc =
                        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*inner));
                    new = Some(Zeroizing::new(format!("Basic {}", &*enc).into_bytes()));
                }
            }
            if let Some(new) = new {
                let v = HeaderValue::from_bytes(&new).map_err(|_| Blocked {
                    status: 500,
                    secret: String::new(),
                    reason: "value",
                    place: place.clone(),
                    what: format!("a secret's value cannot go in {place}: it is not a valid header value"),
                    fix: "store the value without line breaks or control characters, then run `cell secrets reload`".into(),
                })?;
                rewritten.push((name.clone(), idx, v));
            }
        }
        if !rewritten.is_empty() {
            // Rebuild in order, so repeated headers keep their order.
            let mut headers = HeaderMap::with_capacity(parts.headers.len());
            for (idx, (name, value)) in parts.headers.iter().enumerate() {
                match rewritten.iter().find(|(_, i, _)| *i == idx) {
                    Some((_, _, v)) => headers.append(name.clone(), v.clone()),
                    None => headers.append(name.clone(), value.clone()),
                };
            }
            parts.headers = headers;
        }

        // The request target: path and query.
        if let Some(pq) = parts.uri.path_and_query() {
            let place = "the request target (path and query)".to_string();
            let mut act = |f: &Found| view.act(f, Location::Query, &place, &mut injected);
            if let Some(new) = scan::rewrite(&compiled.request, pq.as_str().as_bytes(), &mut act)? {
                let mut p = parts.uri.clone().into_parts();
                p.path_and_query = Some(http::uri::PathAndQuery::try_from(new.to_vec()).map_err(
                    |_| Blocked {
                        status: 400,
                        secret: String::new(),
                        reason: "target",
                        place: place.clone(),
                        what: "the request target is not valid after putting in the secret".into(),
                        fix: "send the placeholder in a query parameter's value".into(),
                    },
                )?);
                parts.uri = http::Uri::from_parts(p).expect("valid parts");
            }
        }
        injected.sort_unstable();
        injected.dedup();
        for &i in &injected {
            self.used(i);
        }
        plan.injected = injected.iter().map(|&i| view.name(i).to_string()).collect();

        // The body, as it streams.
        let length_may_change = view.body_may_change;
        let me = self.clone();
        let mut body_injected = Vec::new();
        let act: scan::Act = Box::new(move |f: &Found| {
            let a = view.act(f, Location::Body, "body", &mut body_injected);
            if let Action::Replace(_) = a {
                me.used(f.tag.secret);
            }
            a
        });
        plan.body = Some(BodyPlan {
            matcher: compiled.request.clone(),
            act,
            length_may_change,
        });
        Ok(plan)
    }

    /// Scrubs response headers; returns the body matcher and action.
    /// A function that returns its bytes with every loaded value (raw)
    /// replaced by its placeholder: what the spy keeps of a body or a
    /// header. Made once per exchange (it copies the placeholders).
    pub fn redactor(&self) -> impl FnMut(&[u8]) -> Vec<u8> + use<> {
        let (m, mut act) = self.scrub(&mut HeaderMap::new());
        move |bytes: &[u8]| match scan::rewrite(&m, bytes, &mut act) {
            Ok(Some(new)) => new.to_vec(),
            _ => bytes.to_vec(),
        }
    }

    pub fn scrub(&self, headers: &mut HeaderMap) -> (Arc<Matcher>, scan::Act) {
        let compiled = self.compiled.read().expect("compiled lock").clone();
        let placeholders: Vec<Zeroizing<Vec<u8>>> = self
            .secrets
            .read()
            .expect("secrets lock")
            .iter()
            .map(|s| Zeroizing::new(s.decl.placeholder.clone().into_bytes()))
            .collect();
        let key_ids: Vec<Option<Zeroizing<Vec<u8>>>> = self
            .secrets
            .read()
            .expect("secrets lock")
            .iter()
            .map(|s| {
                s.decl
                    .access_key_id_placeholder
                    .clone()
                    .map(|a| Zeroizing::new(a.into_bytes()))
            })
            .collect();
        let act = move |f: &Found| {
            let with = match f.tag.what {
                What::KeyIdPlaceholder => key_ids[f.tag.secret].clone(),
                _ => None,
            };
            Action::Replace(with.unwrap_or_else(|| placeholders[f.tag.secret].clone()))
        };
        let mut act: scan::Act = Box::new(act);
        let mut fixed = Vec::new();
        for (idx, v) in headers.values().enumerate() {
            if let Ok(Some(new)) = scan::rewrite(&compiled.response, v.as_bytes(), &mut act)
                && let Ok(v) = HeaderValue::from_bytes(&new)
            {
                fixed.push((idx, v));
            }
        }
        if !fixed.is_empty() {
            let mut out = HeaderMap::with_capacity(headers.len());
            for (idx, (name, value)) in headers.iter().enumerate() {
                match fixed.iter().find(|(i, _)| *i == idx) {
                    Some((_, v)) => out.append(name.clone(), v.clone()),
                    None => out.append(name.clone(), value.clone()),
                };
            }
            *headers = out;
        }
        (compiled.response.clone(), act)
    }

    /// Re-signs a SigV4 request whose body hash is `payload_sha256_hex`.
    pub fn resign(
        &self,
        aws: &AwsPlan,
        method: &http::Method,
        uri: &http::Uri,
        headers: &mut HeaderMap,
        payload_sha256_hex: &str,
    ) -> Result<(), Blocked> {
        let secrets = self.secrets.read().expect("secrets lock");
        let s = &secrets[aws.secret];
        let blocked = |status: u16, reason: &'static str, what: String, fix: String| Blocked {
            status,
            secret: s.decl.name.clone(),
            reason,
            place: "header authorization".into(),
            what,
            fix,
        };
        let Some(Loaded::Aws(real)) = &s.value else {
            return Err(not_loaded(&s.decl, "header authorization"));
        };
        sigv4::verify(method, uri, headers, &aws.signed, &s.decl.placeholder, payload_sha256_hex)
            .map_err(|e| match e {
                // Its own message says what to configure instead.
                SigV4Error::Streaming | SigV4Error::Presigned => blocked(
                    403,
                    if e == SigV4Error::Streaming {
                        "aws-streaming"
                    } else {
                        "aws-presigned"
                    },
                    format!(
                        "the request signed with the placeholder of aws secret `{}` cannot be re-signed: {e}",
                        s.decl.name
                    ),
                    "see docs/secrets.md, \"AWS (SigV4)\"".into(),
                ),
                e => blocked(
                    403,
                    "signature",
                    format!(
                        "the SigV4 signature with the placeholder of aws secret `{}` does not verify: {e}",
                        s.decl.name
                    ),
                    format!(
                        "sign with AWS_ACCESS_KEY_ID={} and AWS_SECRET_ACCESS_KEY={} as the cell sets them",
                        s.decl.access_key_id_placeholder.as_deref().unwrap_or(""),
                        s.decl.placeholder
                    ),
                ),
            })?;
        sigv4::resign(method, uri, headers, &aws.signed, real, payload_sha256_hex).map_err(
            |e| {
                blocked(
                    400,
                    "signature",
                    format!(
                        "the request could not be re-signed for aws secret `{}`: {e}",
                        s.decl.name
                    ),
                    "see docs/secrets.md, \"AWS\"".into(),
                )
            },
        )?;
        drop(secrets);
        self.used(aws.secret);
        Ok(())
    }

    /// A snapshot of what one request needs, taken once per request.
    fn view(&self, host: &str) -> View {
        let secrets = self.secrets.read().expect("secrets lock");
        let mut v = View::default();
        for s in secrets.iter() {
            let in_scope = s.scope.iter().any(|p| p.matches(host));
            let loaded = s.value.is_some();
            if in_scope && loaded {
                v.scrub = true;
                if s.decl.kind == Kind::Token && s.decl.locations.contains(&Location::Body) {
                    v.body_may_change = true;
                }
            }
            let value = match (&s.value, in_scope) {
                (Some(Loaded::Token(t)), true) => Some(Zeroizing::new(t.as_bytes().to_vec())),
                _ => None,
            };
            v.secrets.push(ViewSecret {
                decl: s.decl.clone(),
                in_scope,
                loaded,
                value,
            });
        }
        v.host = host.to_string();
        v
    }
}

#[derive(Default)]
struct View {
    host: String,
    secrets: Vec<ViewSecret>,
    scrub: bool,
    body_may_change: bool,
}

struct ViewSecret {
    decl: SecretDecl,
    in_scope: bool,
    loaded: bool,
    /// The value, only when loaded and the host is in scope.
    value: Option<Zeroizing<Vec<u8>>>,
}

fn not_loaded(d: &SecretDecl, place: &str) -> Blocked {
    Blocked {
        status: 503,
        secret: d.name.clone(),
        reason: "not-loaded",
        place: place.into(),
        what: format!("secret `{}` is not loaded", d.name),
        fix: "run `cell secrets reload` on the host (`cell secrets` shows why it is missing)"
            .into(),
    }
}

impl View {
    fn name(&self, i: usize) -> &str {
        &self.secrets[i].decl.name
    }

    fn aws_key_id(&self, akid: &str) -> Option<usize> {
        self.secrets
            .iter()
            .position(|s| s.decl.access_key_id_placeholder.as_deref() == Some(akid))
    }

    fn scope_blocked(&self, d: &SecretDecl, place: &str) -> Blocked {
        Blocked {
            status: 403,
            secret: d.name.clone(),
            reason: "scope",
            place: place.into(),
            what: format!(
                "the placeholder of secret `{}` is headed to {}, outside its scope ({})",
                d.name,
                self.host,
                d.hosts.join(", ")
            ),
            fix: format!(
                "send it only to {}, or add {} to `cell.secrets.{}.hosts`",
                d.hosts.join(", "),
                self.host,
                d.name
            ),
        }
    }

    /// The aws secret whose placeholder key id one of `headers` holds.
    fn aws_key_id_in(&self, headers: &HeaderMap) -> Option<usize> {
        self.secrets.iter().position(|s| {
            s.decl
                .access_key_id_placeholder
                .as_deref()
                .is_some_and(|a| {
                    headers
                        .values()
                        .any(|v| memchr::memmem::find(v.as_bytes(), a.as_bytes()).is_some())
                })
        })
    }

    /// A presigned URL made with the placeholders of aws secret `i`: it
    /// cannot be re-signed (the signature is in the target the agent holds).
    fn presigned(&self, i: usize) -> Blocked {
        const PLACE: &str = "the request target (path and query)";
        let s = &self.secrets[i];
        if !s.in_scope {
            return self.scope_blocked(&s.decl, PLACE);
        }
        Blocked {
            status: 403,
            secret: s.decl.name.clone(),
            reason: "aws-presigned",
            place: PLACE.into(),
            what: format!(
                "the request is a presigned URL made with the placeholder credentials of aws secret `{}`: {}",
                s.decl.name,
                SigV4Error::Presigned
            ),
            fix: "let the AWS SDK or CLI send the request itself (it signs in headers, which the firewall re-signs); a presigned URL has to be made on the host, with the real credentials".into(),
        }
    }

    /// A SigV4 Authorization header that does not parse, in a request that
    /// names the placeholder key id of aws secret `i`.
    fn unparsable(&self, i: usize, e: &SigV4Error) -> Blocked {
        const PLACE: &str = "header authorization";
        let s = &self.secrets[i];
        if !s.in_scope {
            return self.scope_blocked(&s.decl, PLACE);
        }
        Blocked {
            status: 403,
            secret: s.decl.name.clone(),
            reason: match e {
                SigV4Error::Unsupported(_) => "aws-unsupported",
                _ => "aws-malformed",
            },
            place: PLACE.into(),
            what: format!(
                "the request carries the placeholder access key id of aws secret `{}` but cannot be re-signed: {e}",
                s.decl.name
            ),
            fix: format!(
                "let the AWS SDK or CLI sign the request (AWS4-HMAC-SHA256 in the Authorization header) with AWS_ACCESS_KEY_ID={} and AWS_SECRET_ACCESS_KEY={} as the cell sets them",
                s.decl.access_key_id_placeholder.as_deref().unwrap_or(""),
                s.decl.placeholder
            ),
        }
    }

    fn check_aws(&self, i: usize, place: &str) -> Result<(), Blocked> {
        let s = &self.secrets[i];
        if !s.in_scope {
            return Err(self.scope_blocked(&s.decl, place));
        }
        if !s.loaded {
            return Err(not_loaded(&s.decl, place));
        }
        Ok(())
    }

    /// The decision for one match in `loc`.
    fn act(&self, f: &Found, loc: Location, place: &str, injected: &mut Vec<usize>) -> Action {
        let s = &self.secrets[f.tag.secret];
        let d = &s.decl;
        match f.tag.what {
            What::Value(enc) => Action::Block(Blocked {
                status: 403,
                secret: d.name.clone(),
                reason: "leak",
                place: place.into(),
                what: format!(
                    "the request carries the real value of secret `{}` ({} in {place}); the agent should only ever have its placeholder",
                    d.name,
                    enc.as_str()
                ),
                fix: format!(
                    "use the placeholder {} instead; if the agent found the value somewhere, rotate it",
                    d.placeholder
                ),
            }),
            What::KeyIdPlaceholder => {
                if s.in_scope {
                    Action::Keep
                } else {
                    Action::Block(self.scope_blocked(d, place))
                }
            }
            What::Placeholder => {
                if !s.in_scope {
                    return Action::Block(self.scope_blocked(d, place));
                }
                if d.kind == Kind::Aws {
                    return Action::Block(Blocked {
                        status: 403,
                        secret: d.name.clone(),
                        reason: "aws",
                        place: place.into(),
                        what: format!(
                            "the secret key placeholder of aws secret `{}` is sent in {place}; it is only ever used to sign (SigV4)",
                            d.name
                        ),
                        fix: "let the AWS SDK or CLI sign the request with it".into(),
                    });
                }
                if !d.locations.contains(&loc) {
                    if loc == Location::Body {
                        return Action::Keep;
                    }
                    return Action::Block(Blocked {
                        status: 403,
                        secret: d.name.clone(),
                        reason: "location",
                        place: place.into(),
                        what: format!(
                            "secret `{}` may not be put in {place} (it goes in: {})",
                            d.name,
                            d.locations
                                .iter()
                                .map(|l| l.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        fix: format!("add \"{loc}\" to `cell.secrets.{}.locations`", d.name),
                    });
                }
                let Some(value) = &s.value else {
                    return Action::Block(not_loaded(d, place));
                };
                injected.push(f.tag.secret);
                Action::Replace(if loc == Location::Query {
                    percent_encode(value)
                } else {
                    value.clone()
                })
            }
        }
    }
}

fn check_token(v: &str) -> Result<(), String> {
    if v.len() < VALUE_MIN {
        return Err(format!(
            "the value is {} bytes; at least {VALUE_MIN} are needed (a shorter one could not be told from ordinary text)",
            v.len()
        ));
    }
    if v.len() > VALUE_MAX {
        return Err(format!("the value is longer than {VALUE_MAX} bytes"));
    }
    if v.bytes().any(|b| b.is_ascii_control()) {
        return Err(
            "the value holds a control character or line break; it could not go in a header".into(),
        );
    }
    if v.starts_with("cell-placeholder-") {
        return Err("the value is a cell placeholder, not the real secret".into());
    }
    Ok(())
}

/// The matchers for these secrets.
fn compile(secrets: &[Secret]) -> Compiled {
    let mut req = Vec::new();
    let mut resp = Vec::new();
    let pat = |b: &[u8], secret: usize, what: What| Pattern {
        bytes: Zeroizing::new(b.to_vec()),
        tag: Tag { secret, what },
    };
    for (i, s) in secrets.iter().enumerate() {
        req.push(pat(s.decl.placeholder.as_bytes(), i, What::Placeholder));
        if let Some(a) = &s.decl.access_key_id_placeholder {
            req.push(pat(a.as_bytes(), i, What::KeyIdPlaceholder));
        }
        let mut values: Vec<&[u8]> = Vec::new();
        match &s.value {
            Some(Loaded::Token(t)) => values.push(t.as_bytes()),
            Some(Loaded::Aws(c)) => {
                values.push(c.secret_access_key.as_bytes());
                if let Some(t) = &c.session_token {
                    values.push(t.as_bytes());
                }
                // The key id is not a secret, but the agent should never learn it.
                resp.push(pat(c.access_key_id.as_bytes(), i, What::KeyIdPlaceholder));
            }
            None => {}
        }
        for v in values {
            for (bytes, enc) in encodings(v) {
                req.push(Pattern {
                    bytes,
                    tag: Tag {
                        secret: i,
                        what: What::Value(enc),
                    },
                });
            }
            resp.push(pat(v, i, What::Value(Encoding::Raw)));
        }
    }
    Compiled {
        request: Arc::new(Matcher::new(req)),
        response: Arc::new(Matcher::new(resp)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "bedrock-runtime.us-east-1.amazonaws.com";
    const AKID: &str = "cell-placeholder-bedrock.akid";
    const SIG: &str = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";

    fn store() -> Arc<Store> {
        let doc: SecretsDocument = serde_json::from_value(json!({
            "version": 1,
            "secrets": [{
                "name": "bedrock", "kind": "aws", "placeholder": "cell-placeholder-bedrock",
                "accessKeyIdPlaceholder": AKID, "hosts": [HOST], "source": { "env": "B" }
            }]
        }))
        .unwrap();
        let s = Arc::new(Store::default());
        s.set_document(&doc);
        let value = r#"{"Version":1,"AccessKeyId":"AKIAREAL0000EXAMPLE1","SecretAccessKey":"real/secret+key0123456789abcdefghijklmno"}"#;
        let out = s.load(vec![("bedrock".into(), Some(Zeroizing::new(value.into())))]);
        assert!(out[0].1.is_ok());
        s
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method("PUT").uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn auth(service: &str, signed: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={AKID}/20150830/us-east-1/{service}/aws4_request, SignedHeaders={signed}, Signature={SIG}"
        )
    }

    fn refused(s: &Arc<Store>, host: &str, p: &mut http::request::Parts) -> Blocked {
        err(s.plan(host, p))
    }

    fn err<T>(r: Result<T, Blocked>) -> Blocked {
        match r {
            Ok(_) => panic!("not refused"),
            Err(b) => b,
        }
    }

    fn planned(r: Result<Plan, Blocked>) -> Plan {
        match r {
            Ok(p) => p,
            Err(b) => panic!("refused: {}", b.what),
        }
    }

    /// A presigned URL made with the placeholder key id is refused (in
    /// scope: it cannot be re-signed; out of scope: the scope); one made
    /// with another key id is not the firewall's business.
    #[test]
    fn presigned_url_with_the_placeholder_is_refused() {
        let s = store();
        let uri = format!(
            "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={AKID}%2F20150830%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature={SIG}"
        );
        let b = refused(&s, HOST, &mut parts(&uri, &[]));
        assert_eq!(
            (b.status, b.reason, b.secret.as_str()),
            (403, "aws-presigned", "bedrock")
        );
        assert!(
            b.what.contains(&SigV4Error::Presigned.to_string()),
            "{}",
            b.what
        );
        assert!(b.fix.contains("on the host"), "{}", b.fix);
        let b = refused(&s, "other.example", &mut parts(&uri, &[]));
        assert_eq!(b.reason, "scope");

        let other = uri.replace(AKID, "AKIAOTHER00000000000");
        let plan = planned(s.plan(HOST, &mut parts(&other, &[])));
        assert!(plan.aws.is_none());
    }

    /// A SigV4 Authorization that does not parse is refused with the parse
    /// error when the request names the placeholder key id (in any header);
    /// without it, the request is left to the other rules.
    #[test]
    fn unparsable_authorization_with_the_placeholder_is_refused() {
        let s = store();
        let cases = [
            (
                auth("bedrock", "host;x-amz-date").replace(SIG, "zz"),
                "aws-malformed",
                SigV4Error::Malformed("Signature is not 64 lowercase hex digits"),
            ),
            (
                auth("bedrock", "x-amz-date;host"),
                "aws-malformed",
                SigV4Error::Malformed("SignedHeaders is not sorted, or repeats a name"),
            ),
            (
                auth("bedrock", "x-amz-date"),
                "aws-malformed",
                SigV4Error::HostNotSigned,
            ),
            (
                auth("bedrock", "host;x-amz-date")
                    .replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"),
                "aws-unsupported",
                SigV4Error::Unsupported("SigV4a (AWS4-ECDSA-P256-SHA256)"),
            ),
        ];
        for (a, reason, e) in &cases {
            let mut p = parts(
                "/x",
                &[("authorization", a), ("x-amz-date", "20150830T123600Z")],
            );
            let b = refused(&s, HOST, &mut p);
            assert_eq!(
                (b.status, b.reason, b.secret.as_str()),
                (403, *reason, "bedrock"),
                "{a}"
            );
            assert!(b.what.contains(&e.to_string()), "{a}: {}", b.what);
            assert!(b.what.contains("aws secret `bedrock`"), "{}", b.what);
            assert!(b.fix.contains(AKID), "{}", b.fix);
            // Out of scope, the scope is what is wrong.
            let mut p = parts("/x", &[("authorization", a)]);
            assert_eq!(refused(&s, "other.example", &mut p).reason, "scope");
        }
        // Two Authorization headers, the placeholder in one of them.
        let a = auth("bedrock", "host;x-amz-date");
        let mut p = parts(
            "/x",
            &[("authorization", &a), ("authorization", "Bearer x")],
        );
        let b = refused(&s, HOST, &mut p);
        assert_eq!(b.reason, "aws-malformed");
        assert!(
            b.what
                .contains(&SigV4Error::Repeated("authorization").to_string())
        );
        // The placeholder key id in another header than Authorization.
        let bad = auth("bedrock", "x-amz-date").replace(AKID, "AKIAOTHER00000000000");
        let mut p = parts("/x", &[("authorization", &bad), ("x-key", AKID)]);
        assert_eq!(refused(&s, HOST, &mut p).reason, "aws-malformed");
        // Without the placeholder: not ours to judge.
        let mut p = parts("/x", &[("authorization", &bad)]);
        let plan = planned(s.plan(HOST, &mut p));
        assert!(plan.aws.is_none());
    }

    /// A well-formed SigV4 request with the placeholder: planned for
    /// re-signing; refused 503 when the secret is not loaded; at re-signing,
    /// a streaming payload and a signature that does not verify are refused
    /// with their own reasons.
    #[test]
    fn signed_requests_are_planned_and_refused_at_re_signing() {
        let s = store();
        let streaming = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
        let headers = [
            (
                "authorization",
                auth("s3", "host;x-amz-content-sha256;x-amz-date"),
            ),
            ("x-amz-date", "20150830T123600Z".to_string()),
            ("x-amz-content-sha256", streaming.to_string()),
        ];
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut p = parts(&format!("https://{HOST}/b/k"), &h);
        let mut plan = planned(s.plan(HOST, &mut p));
        let aws = plan.aws.take().expect("re-signed later");
        let b = err(s.resign(&aws, &p.method, &p.uri, &mut p.headers, streaming));
        assert_eq!((b.status, b.reason), (403, "aws-streaming"));
        assert!(
            b.what.contains(&SigV4Error::Streaming.to_string()),
            "{}",
            b.what
        );

        let hash = "UNSIGNED-PAYLOAD";
        p.headers
            .insert("x-amz-content-sha256", hash.parse().unwrap());
        let b = err(s.resign(&aws, &p.method, &p.uri, &mut p.headers, hash));
        assert_eq!((b.status, b.reason), (403, "signature"));
        assert!(b.what.contains("does not verify"), "{}", b.what);
        assert!(b.fix.contains(AKID) && b.fix.contains("cell-placeholder-bedrock"));

        s.load(vec![("bedrock".into(), None)]);
        let mut p = parts(&format!("https://{HOST}/b/k"), &h);
        let b = refused(&s, HOST, &mut p);
        assert_eq!((b.status, b.reason), (503, "not-loaded"));
        assert!(b.what.contains("secret `bedrock` is not loaded"));
        assert!(b.fix.contains("cell secrets reload"));
    }
}
