//! SigV4: the agent's signature checked against the placeholder secret key,
//! then the request signed again with the real credentials.
//!
//! The agent's AWS SDK or CLI signs with placeholder credentials (header
//! signing: `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…,
//! Signature=…`). For such a request:
//!
//! 1. [`parse`] reads the Authorization header. Anything odd about it is an
//!    error, never a guess: one Authorization header, each component once,
//!    `host` among the signed headers, the signed header names lowercase,
//!    sorted and distinct.
//! 2. [`verify`] recomputes the signature over exactly the headers the agent
//!    signed, with the placeholder secret key, and compares it in constant
//!    time (HMAC `verify_slice`). A request signed with another key, or
//!    changed after signing, is refused.
//! 3. [`resign`] signs the same canonical request (same signed headers, same
//!    `x-amz-date`, region and service) with the real secret key, under the
//!    real access key id. Any `x-amz-security-token` the agent sent is
//!    removed; the real session token, when there is one, is added and
//!    signed. Afterwards the request carries one Authorization, one
//!    x-amz-date and no header or target that still holds the placeholder
//!    access key id.
//!
//! The canonical request follows the SigV4 specification, as the `aws-sigv4`
//! crate builds it: the path is normalised (RFC 3986 dot segments, repeated
//! slashes) and encoded again (`%` becomes `%25`) for every service but `s3`,
//! whose path is taken as it was sent ([`PathMode`]); query parameters are
//! decoded and re-encoded, then sorted by key and value; header values are
//! trimmed of spaces, runs of spaces become one, repeated headers are joined
//! with commas in the order they came.
//!
//! Not re-signable, refused with an error saying what to do instead:
//! bodies signed chunk by chunk (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`,
//! aws-chunked) and presigned URLs (`X-Amz-Signature` in the query).
//! The signing time is not checked here: AWS refuses a stale signature.
//!
//! Nothing here formats a secret, a session token or a signature into an
//! error; `Debug` of [`AwsCredentials`] prints no value.

use std::fmt;

use hmac::{Hmac, Mac};
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const ALGORITHM_V4A: &str = "AWS4-ECDSA-P256-SHA256";
const X_AMZ_DATE: &str = "x-amz-date";
const X_AMZ_CONTENT_SHA256: &str = "x-amz-content-sha256";
const X_AMZ_SECURITY_TOKEN: &str = "x-amz-security-token";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// aws-chunked with unsigned chunks: the chunks do not depend on the
/// signature, so the head can be signed again.
const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
/// The longest Authorization header read.
const AUTHORIZATION_MAX: usize = 8 * 1024;
/// The most signed headers accepted.
const SIGNED_HEADERS_MAX: usize = 64;
/// The longest access key id, region or service name accepted.
const NAME_MAX: usize = 128;
/// The longest secret access key and session token accepted.
const SECRET_MAX: usize = 16 * 1024;

/// Why a request cannot be verified or re-signed, or credentials not read.
/// No variant holds a value from the request or the credentials, only names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    #[error("the Authorization header is not a well-formed SigV4 header: {0}")]
    Malformed(&'static str),
    #[error(
        "the request is signed with {0}, which the firewall cannot re-sign; sign with AWS4-HMAC-SHA256 (SigV4)"
    )]
    Unsupported(&'static str),
    #[error("the request carries more than one `{0}` header; a SigV4 request has exactly one")]
    Repeated(&'static str),
    #[error("the request has no `{0}` header, which a SigV4 request carries")]
    Missing(&'static str),
    #[error(
        "`host` is not among the signed headers; the firewall only re-signs requests whose host is signed"
    )]
    HostNotSigned,
    #[error("the signed header `{0}` is not in the request")]
    SignedHeaderMissing(String),
    #[error(
        "the x-amz-date header is not a SigV4 time (YYYYMMDDTHHMMSSZ) on the date of the credential scope"
    )]
    Date,
    #[error(
        "the body is signed chunk by chunk (x-amz-content-sha256: STREAMING-…, aws-chunked or event stream): each chunk's signature chains from the head's, so the firewall cannot re-sign it without re-chunking the body; configure the client to sign the whole body or send UNSIGNED-PAYLOAD instead (e.g. AWS SDK for Java v2: S3Configuration chunkedEncodingEnabled(false))"
    )]
    Streaming,
    #[error(
        "presigned URLs (X-Amz-Signature in the query) made with the placeholder credentials cannot be re-signed by the firewall; sign in headers (the SDK's default), or presign on the host with real credentials"
    )]
    Presigned,
    #[error("the payload hash {0}")]
    PayloadHash(&'static str),
    #[error(
        "the signature does not match: the request was signed with another secret key, or changed after signing"
    )]
    Mismatch,
    #[error("the AWS credentials {0}")]
    Credentials(String),
    #[error("after re-signing, {0} still holds the placeholder access key id")]
    PlaceholderLeft(&'static str),
}

/// Real AWS credentials, as `credential_process` prints them.
pub struct AwsCredentials {
    pub access_key_id: Zeroizing<String>,
    pub secret_access_key: Zeroizing<String>,
    pub session_token: Option<Zeroizing<String>>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &"<redacted>")
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessJson {
    version: u32,
    access_key_id: Zeroizing<String>,
    secret_access_key: Zeroizing<String>,
    #[serde(default)]
    session_token: Option<Zeroizing<String>>,
}

impl AwsCredentials {
    /// Reads the JSON a `credential_process` prints: `{"Version": 1,
    /// "AccessKeyId": …, "SecretAccessKey": …, "SessionToken": …,
    /// "Expiration": …}` (`SessionToken` and `Expiration` optional, the
    /// latter ignored). Errors say which field is wrong, never its value.
    pub fn from_process_json(text: &str) -> Result<Self, SigV4Error> {
        let cred = |s: String| SigV4Error::Credentials(s);
        let p: ProcessJson = serde_json::from_str(text).map_err(|e| {
            // serde_json's own message may quote the value: only its position is kept.
            let (line, column) = (e.line(), e.column());
            match e.classify() {
                serde_json::error::Category::Data => cred(format!(
                    "are not in the credential_process format (Version 1 and string fields AccessKeyId, SecretAccessKey, optional SessionToken), at line {line} column {column}"
                )),
                _ => cred(format!("are not JSON (at line {line} column {column})")),
            }
        })?;
        if p.version != 1 {
            return Err(cred("have a Version other than 1".into()));
        }
        if !valid_key_id(&p.access_key_id) {
            return Err(cred(format!(
                "have an AccessKeyId that is empty, longer than {NAME_MAX} bytes or not printable ASCII"
            )));
        }
        if p.secret_access_key.is_empty()
            || p.secret_access_key.len() > SECRET_MAX
            || p.secret_access_key.bytes().any(|b| b.is_ascii_control())
        {
            return Err(cred(format!(
                "have a SecretAccessKey that is empty, longer than {SECRET_MAX} bytes or holds a control character"
            )));
        }
        let session_token = match p.session_token {
            Some(t) if t.is_empty() => None,
            Some(t) => {
                if t.len() > SECRET_MAX || HeaderValue::from_str(&t).is_err() {
                    return Err(cred(format!(
                        "have a SessionToken longer than {SECRET_MAX} bytes or that cannot go in a header"
                    )));
                }
                Some(t)
            }
            None => None,
        };
        Ok(AwsCredentials {
            access_key_id: p.access_key_id,
            secret_access_key: p.secret_access_key,
            session_token,
        })
    }
}

/// A parsed `Authorization: AWS4-HMAC-SHA256 …` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    access_key_id: String,
    /// `YYYYMMDD` of the credential scope.
    date: String,
    region: String,
    service: String,
    /// Lowercase, sorted, distinct, `host` among them.
    signed_headers: Vec<HeaderName>,
    signature: [u8; 32],
}

impl Signed {
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }
    pub fn date(&self) -> &str {
        &self.date
    }
    pub fn region(&self) -> &str {
        &self.region
    }
    pub fn service(&self) -> &str {
        &self.service
    }
    pub fn signed_headers(&self) -> &[HeaderName] {
        &self.signed_headers
    }
}

/// How the path goes into the canonical request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathMode {
    /// Dot segments and repeated slashes removed, then every byte but
    /// unreserved ones and `/` percent-encoded (so the sent `%XX` becomes
    /// `%25XX`): every service but S3.
    Normalized,
    /// The path as sent: S3.
    Verbatim,
}

impl PathMode {
    pub fn for_service(service: &str) -> Self {
        if service == "s3" {
            PathMode::Verbatim
        } else {
            PathMode::Normalized
        }
    }
}

/// Whether the caller has to hash the body: the request has no
/// `x-amz-content-sha256`.
pub fn needs_body_hash(headers: &HeaderMap) -> bool {
    !headers.contains_key(X_AMZ_CONTENT_SHA256)
}

/// Reads the SigV4 Authorization header. `Ok(None)`: the request is not
/// SigV4-signed in its headers (no Authorization, or one of another scheme).
pub fn parse(headers: &HeaderMap) -> Result<Option<Signed>, SigV4Error> {
    let all: Vec<&HeaderValue> = headers.get_all(AUTHORIZATION).iter().collect();
    let is_aws4 = |v: &&&HeaderValue| v.as_bytes().trim_ascii_start().starts_with(b"AWS4-");
    let Some(v) = all.iter().find(is_aws4) else {
        return Ok(None);
    };
    if all.len() > 1 {
        return Err(SigV4Error::Repeated("authorization"));
    }
    parse_value(v.as_bytes()).map(Some)
}

fn parse_value(v: &[u8]) -> Result<Signed, SigV4Error> {
    use SigV4Error::Malformed;
    if v.len() > AUTHORIZATION_MAX {
        return Err(Malformed("it is longer than 8 KiB"));
    }
    let s = std::str::from_utf8(v.trim_ascii())
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or(Malformed("it is not ASCII"))?;
    let (algorithm, rest) = s
        .split_once(' ')
        .ok_or(Malformed("nothing follows the algorithm"))?;
    match algorithm {
        ALGORITHM => {}
        ALGORITHM_V4A => return Err(SigV4Error::Unsupported("SigV4a (AWS4-ECDSA-P256-SHA256)")),
        _ => {
            return Err(SigV4Error::Unsupported(
                "an algorithm other than AWS4-HMAC-SHA256",
            ));
        }
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim_matches(' ');
        let (k, v) = part
            .split_once('=')
            .ok_or(Malformed("a component is not `Name=value`"))?;
        let slot = match k {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => {
                return Err(Malformed(
                    "a component is not Credential, SignedHeaders or Signature",
                ));
            }
        };
        if slot.replace(v).is_some() {
            return Err(Malformed("a component is given twice"));
        }
    }
    let credential = credential.ok_or(Malformed("Credential is missing"))?;
    let signed_headers = signed_headers.ok_or(Malformed("SignedHeaders is missing"))?;
    let signature = signature.ok_or(Malformed("Signature is missing"))?;

    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(Malformed(
            "Credential is not KEY-ID/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    if terminator != "aws4_request" {
        return Err(Malformed("Credential does not end in aws4_request"));
    }
    if !valid_key_id(access_key_id) {
        return Err(Malformed("the access key id in Credential is not valid"));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Malformed("the date in Credential is not YYYYMMDD"));
    }
    let scope_name = |n: &str| {
        !n.is_empty()
            && n.len() <= NAME_MAX
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
    };
    if !scope_name(region) {
        return Err(Malformed("the region in Credential is not valid"));
    }
    if !scope_name(service) {
        return Err(Malformed("the service in Credential is not valid"));
    }

    let mut names: Vec<HeaderName> = Vec::new();
    for n in signed_headers.split(';') {
        if names.len() == SIGNED_HEADERS_MAX {
            return Err(Malformed("SignedHeaders names more than 64 headers"));
        }
        let lower_token = !n.is_empty()
            && n.len() <= NAME_MAX
            && n.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
            });
        let name = HeaderName::from_bytes(n.as_bytes())
            .ok()
            .filter(|_| lower_token)
            .ok_or(Malformed(
                "SignedHeaders holds something that is not a lowercase header name",
            ))?;
        if names.last().is_some_and(|last| last.as_str() >= n) {
            return Err(Malformed("SignedHeaders is not sorted, or repeats a name"));
        }
        names.push(name);
    }
    if !names.contains(&HOST) {
        return Err(SigV4Error::HostNotSigned);
    }
    if names.contains(&AUTHORIZATION) {
        return Err(Malformed("SignedHeaders names authorization itself"));
    }

    let mut sig = [0u8; 32];
    if signature.len() != 64
        || !signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        || hex::decode_to_slice(signature, &mut sig).is_err()
    {
        return Err(Malformed("Signature is not 64 lowercase hex digits"));
    }

    Ok(Signed {
        access_key_id: access_key_id.into(),
        date: date.into(),
        region: region.into(),
        service: service.into(),
        signed_headers: names,
        signature: sig,
    })
}

/// An access key id as it may go in a credential scope: printable ASCII
/// without the scope's and the header's separators.
fn valid_key_id(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= NAME_MAX
        && k.bytes()
            .all(|b| b.is_ascii_graphic() && !b"/,;=\"\\".contains(&b))
}

/// The access key id of a presigned URL (`X-Amz-Signature` and
/// `X-Amz-Credential` in the query), so that the caller can refuse one made
/// with a placeholder ([`SigV4Error::Presigned`]) and let others through.
pub fn presigned_access_key_id(uri: &Uri) -> Option<String> {
    let pairs = query_pairs(uri.query()?);
    pairs
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case(b"x-amz-signature"))
        .then_some(())?;
    let (_, cred) = pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(b"x-amz-credential"))?;
    let akid = cred.split(|&b| b == b'/').next()?;
    String::from_utf8(akid.to_vec()).ok()
}

fn reject_presigned(uri: &Uri) -> Result<(), SigV4Error> {
    let presigned = uri.query().is_some_and(|q| {
        query_pairs(q)
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(b"x-amz-signature"))
    });
    if presigned {
        return Err(SigV4Error::Presigned);
    }
    Ok(())
}

/// Checks `payload` (what goes in the canonical request) and, when the
/// request carries it, that `x-amz-content-sha256` is the same.
fn check_payload(headers: &HeaderMap, payload: &str) -> Result<(), SigV4Error> {
    let mut values = headers.get_all(X_AMZ_CONTENT_SHA256).iter();
    if let Some(h) = values.next() {
        if values.next().is_some() {
            return Err(SigV4Error::Repeated(X_AMZ_CONTENT_SHA256));
        }
        let h = h
            .to_str()
            .map_err(|_| SigV4Error::PayloadHash("in x-amz-content-sha256 is not ASCII"))?;
        check_payload_value(h)?;
        if h != payload {
            return Err(SigV4Error::PayloadHash(
                "given for the body is not the request's x-amz-content-sha256",
            ));
        }
    }
    check_payload_value(payload)
}

fn check_payload_value(p: &str) -> Result<(), SigV4Error> {
    let hex = p.len() == 64
        && p.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if hex || p == UNSIGNED_PAYLOAD || p == STREAMING_UNSIGNED_TRAILER {
        Ok(())
    } else if p.starts_with("STREAMING-") {
        Err(SigV4Error::Streaming)
    } else {
        Err(SigV4Error::PayloadHash(
            "is not a lowercase hex SHA-256, UNSIGNED-PAYLOAD or STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        ))
    }
}

/// The request's one `x-amz-date`, on the date of the credential scope.
fn amz_date<'h>(headers: &'h HeaderMap, signed: &Signed) -> Result<&'h str, SigV4Error> {
    let mut values = headers.get_all(X_AMZ_DATE).iter();
    let v = values.next().ok_or(SigV4Error::Missing(X_AMZ_DATE))?;
    if values.next().is_some() {
        return Err(SigV4Error::Repeated(X_AMZ_DATE));
    }
    let b = v.as_bytes();
    let well_formed = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    if !well_formed || &b[..8] != signed.date.as_bytes() {
        return Err(SigV4Error::Date);
    }
    v.to_str().map_err(|_| SigV4Error::Date)
}

/// Checks the signature of a request signed with `secret` (the placeholder).
/// `payload_sha256_hex`: the request's x-amz-content-sha256 when it has one,
/// else the hex SHA-256 of its body.
pub fn verify(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    signed: &Signed,
    secret: &str,
    payload_sha256_hex: &str,
) -> Result<(), SigV4Error> {
    let mode = PathMode::for_service(&signed.service);
    verify_with(
        method,
        uri,
        headers,
        signed,
        secret,
        payload_sha256_hex,
        mode,
    )
}

/// [`verify`] with the path mode given rather than taken from the service
/// (the published test vectors sign paths unnormalised for service `service`).
#[doc(hidden)]
pub fn verify_with(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    signed: &Signed,
    secret: &str,
    payload_sha256_hex: &str,
    mode: PathMode,
) -> Result<(), SigV4Error> {
    reject_presigned(uri)?;
    check_payload(headers, payload_sha256_hex)?;
    let date = amz_date(headers, signed)?;
    let creq = canonical_request(
        method,
        uri,
        headers,
        &signed.signed_headers,
        payload_sha256_hex,
        mode,
    )?;
    let key = signing_key(secret, &signed.date, &signed.region, &signed.service);
    let mut mac = HmacSha256::new_from_slice(&*key).expect("HMAC takes a key of any length");
    mac.update(string_to_sign(date, signed, &creq).as_bytes());
    // Constant time.
    mac.verify_slice(&signed.signature)
        .map_err(|_| SigV4Error::Mismatch)
}

/// Signs the request again with `real`, keeping the signed headers, the
/// x-amz-date, region and service of the agent's signature (`signed`, which
/// [`verify`] has checked). On error `headers` is left as it was.
pub fn resign(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    signed: &Signed,
    real: &AwsCredentials,
    payload_sha256_hex: &str,
) -> Result<(), SigV4Error> {
    reject_presigned(uri)?;
    check_payload(headers, payload_sha256_hex)?;
    let date = amz_date(headers, signed)?.to_string();
    if !valid_key_id(&real.access_key_id) {
        return Err(SigV4Error::Credentials(
            "have an access key id that cannot go in a credential scope".into(),
        ));
    }
    let mut out = headers.clone();
    let token = HeaderName::from_static(X_AMZ_SECURITY_TOKEN);
    let mut names: Vec<HeaderName> = signed
        .signed_headers
        .iter()
        .filter(|n| **n != token)
        .cloned()
        .collect();
    out.remove(&token);
    if let Some(t) = &real.session_token {
        let mut v = HeaderValue::from_str(t).map_err(|_| {
            SigV4Error::Credentials("have a session token that cannot go in a header".into())
        })?;
        v.set_sensitive(true);
        out.insert(token.clone(), v);
        names.push(token);
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    }
    out.remove(AUTHORIZATION);

    let mode = PathMode::for_service(&signed.service);
    let creq = canonical_request(method, uri, &out, &names, payload_sha256_hex, mode)?;
    let key = signing_key(
        &real.secret_access_key,
        &signed.date,
        &signed.region,
        &signed.service,
    );
    let signature = hex::encode(hmac(&*key, string_to_sign(&date, signed, &creq).as_bytes()));
    let value = Zeroizing::new(format!(
        "{ALGORITHM} Credential={}/{}/{}/{}/aws4_request, SignedHeaders={}, Signature={signature}",
        &*real.access_key_id,
        signed.date,
        signed.region,
        signed.service,
        joined(&names),
    ));
    let mut v = HeaderValue::from_str(&value).map_err(|_| {
        SigV4Error::Credentials("have an access key id that cannot go in a header".into())
    })?;
    v.set_sensitive(true);
    out.insert(AUTHORIZATION, v);

    let placeholder = signed.access_key_id.as_bytes();
    if placeholder != real.access_key_id.as_bytes() {
        if out.values().any(|v| contains(v.as_bytes(), placeholder)) {
            return Err(SigV4Error::PlaceholderLeft("a header"));
        }
        let target = uri.path_and_query().map(|pq| pq.as_str()).unwrap_or("");
        if contains(target.as_bytes(), placeholder) {
            return Err(SigV4Error::PlaceholderLeft("the request target"));
        }
    }
    *headers = out;
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn joined(names: &[HeaderName]) -> String {
    names
        .iter()
        .map(HeaderName::as_str)
        .collect::<Vec<_>>()
        .join(";")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new(Vec::with_capacity(4 + secret.len()));
    k.extend_from_slice(b"AWS4");
    k.extend_from_slice(secret.as_bytes());
    let k_date = Zeroizing::new(hmac(&k, date.as_bytes()));
    let k_region = Zeroizing::new(hmac(&*k_date, region.as_bytes()));
    let k_service = Zeroizing::new(hmac(&*k_region, service.as_bytes()));
    Zeroizing::new(hmac(&*k_service, b"aws4_request"))
}

fn string_to_sign(amz_date: &str, signed: &Signed, creq: &[u8]) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{}/{}/{}/aws4_request\n{}",
        signed.date,
        signed.region,
        signed.service,
        hex::encode(Sha256::digest(creq))
    )
}

/// The canonical request over `signed_headers`, as bytes (header values
/// may hold non-UTF-8 bytes; they are signed as sent).
#[doc(hidden)]
pub fn canonical_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    signed_headers: &[HeaderName],
    payload_sha256_hex: &str,
    mode: PathMode,
) -> Result<Vec<u8>, SigV4Error> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b'\n');
    canonical_path(&mut out, uri.path(), mode);
    out.push(b'\n');
    canonical_query(&mut out, uri.query().unwrap_or(""));
    out.push(b'\n');
    for name in signed_headers {
        let values: Vec<&[u8]> = headers
            .get_all(name)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let values = match (values.len(), name == HOST) {
            (0, true) => match uri.authority() {
                Some(a) => vec![a.as_str().as_bytes()],
                None => return Err(SigV4Error::Missing("host")),
            },
            (0, false) => return Err(SigV4Error::SignedHeaderMissing(name.as_str().into())),
            (n, true) if n > 1 => return Err(SigV4Error::Repeated("host")),
            _ => values,
        };
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(b':');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            trim_all(&mut out, v);
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(joined(signed_headers).as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload_sha256_hex.as_bytes());
    Ok(out)
}

/// Appends `v` without leading and trailing spaces, each run of spaces as one.
fn trim_all(out: &mut Vec<u8>, v: &[u8]) {
    let mut space = false;
    let mut started = false;
    for &b in v {
        if b == b' ' {
            space = started;
            continue;
        }
        if space {
            out.push(b' ');
            space = false;
        }
        started = true;
        out.push(b);
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Percent-encodes every byte but the unreserved ones (and `/` with `slash`).
fn encode(out: &mut Vec<u8>, v: &[u8], slash: bool) {
    for &b in v {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (slash && b == b'/') {
            out.push(b);
        } else {
            out.extend_from_slice(&[
                b'%',
                HEX_UPPER[usize::from(b >> 4)],
                HEX_UPPER[usize::from(b & 15)],
            ]);
        }
    }
}

fn canonical_path(out: &mut Vec<u8>, path: &str, mode: PathMode) {
    if path.is_empty() {
        out.push(b'/');
        return;
    }
    match mode {
        PathMode::Verbatim => out.extend_from_slice(path.as_bytes()),
        PathMode::Normalized => encode(out, normalize_path(path).as_bytes(), true),
    }
}

/// RFC 3986 5.2.4 dot-segment removal, also dropping empty segments.
fn normalize_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for s in path.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    let trailing = ["/", "/.", "/..", "/./", "/../"]
        .iter()
        .any(|t| path.ends_with(t));
    if out.is_empty() || trailing {
        out.push('/');
    }
    out
}

/// Splits a query into decoded `(key, value)` pairs (`+` is a space, as
/// `aws-sigv4` reads it); empty pairs are skipped.
fn query_pairs(q: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn canonical_query(out: &mut Vec<u8>, q: &str) {
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = query_pairs(q)
        .into_iter()
        .map(|(k, v)| {
            let (mut ek, mut ev) = (Vec::new(), Vec::new());
            encode(&mut ek, &k, false);
            encode(&mut ev, &v, false);
            (ek, ev)
        })
        .collect();
    pairs.sort();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;
    use aws_sigv4::http_request::{
        PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
        UriPathNormalizationMode, sign,
    };
    use aws_smithy_runtime_api::client::identity::Identity;
    use proptest::prelude::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    const PH_AKID: &str = "cell-placeholder-bedrock.akid";
    const PH_SECRET: &str = "cell-placeholder-bedrock";
    const REAL_AKID: &str = "AKIAIOSFODNN7EXAMPLE";
    const REAL_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const REAL_TOKEN: &str = "FwoGZXIvYXdzEXAMPLEREALTOKEN//////////wEaDEXAMPLE==";

    /// 20150830T123600Z
    fn time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn real(token: Option<&str>) -> AwsCredentials {
        AwsCredentials {
            access_key_id: Zeroizing::new(REAL_AKID.into()),
            secret_access_key: Zeroizing::new(REAL_SECRET.into()),
            session_token: token.map(|t| Zeroizing::new(t.into())),
        }
    }

    /// Signs `headers` as an SDK does: with aws-sigv4's own signer (S3 with
    /// its settings: path as sent, x-amz-content-sha256 added).
    fn aws_sign(
        method: &str,
        uri: &str,
        headers: &mut HeaderMap,
        creds: (&str, &str, Option<&str>),
        service: &str,
        body: SignableBody<'_>,
    ) {
        let identity: Identity =
            Credentials::new(creds.0, creds.1, creds.2.map(String::from), None, "test").into();
        let mut settings = SigningSettings::default();
        if service == "s3" {
            settings.percent_encoding_mode = PercentEncodingMode::Single;
            settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        }
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name(service)
            .time(time())
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.as_str().into(), v.to_str().unwrap().into()))
            .collect();
        let req = SignableRequest::new(
            method,
            uri,
            pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            body,
        )
        .unwrap();
        let (instructions, _) = sign(req, &params).unwrap().into_parts();
        for h in instructions.into_parts().0 {
            headers.insert(h.name(), HeaderValue::from_str(h.value()).unwrap());
        }
    }

    struct Req {
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        payload: String,
    }

    const BODY: &[u8] = br#"{"messages":[{"role":"user","content":"hi"}]}"#;

    /// A Bedrock call as the agent's SDK signs it with the placeholders.
    fn bedrock(token: Option<&str>) -> Req {
        let uri = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke?trace=a%2Fb&a=1";
        let mut headers = HeaderMap::new();
        headers.insert(
            "host",
            "bedrock-runtime.us-east-1.amazonaws.com".parse().unwrap(),
        );
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("user-agent", "aws-cli/2.15".parse().unwrap());
        headers.append("x-custom", "  one   two ".parse().unwrap());
        headers.append("x-custom", "three".parse().unwrap());
        aws_sign(
            "POST",
            uri,
            &mut headers,
            (PH_AKID, PH_SECRET, token),
            "bedrock",
            SignableBody::Bytes(BODY),
        );
        Req {
            method: Method::POST,
            uri: uri.parse().unwrap(),
            headers,
            payload: hex::encode(Sha256::digest(BODY)),
        }
    }

    /// An S3 upload with an unsigned payload and a path S3 takes as sent.
    fn s3_put(payload: &str) -> Req {
        let uri = "/bucket/a%20key/%2Fodd?x-id=PutObject";
        let mut headers = HeaderMap::new();
        headers.insert("host", "s3.us-east-1.amazonaws.com".parse().unwrap());
        headers.insert("content-length", "5".parse().unwrap());
        aws_sign(
            "PUT",
            uri,
            &mut headers,
            (PH_AKID, PH_SECRET, None),
            "s3",
            SignableBody::Precomputed(payload.into()),
        );
        Req {
            method: Method::PUT,
            uri: uri.parse().unwrap(),
            headers,
            payload: payload.into(),
        }
    }

    fn verify_req(r: &Req, secret: &str) -> Result<(), SigV4Error> {
        let signed = parse(&r.headers)?.expect("signed");
        verify(&r.method, &r.uri, &r.headers, &signed, secret, &r.payload)
    }

    fn resign_req(r: &mut Req, creds: &AwsCredentials) -> Result<(), SigV4Error> {
        let signed = parse(&r.headers)?.expect("signed");
        resign(
            &r.method,
            &r.uri,
            &mut r.headers,
            &signed,
            creds,
            &r.payload,
        )
    }

    /// After re-signing, no header and not the target holds the placeholder
    /// key id, and the signed-once headers are there once.
    fn assert_clean(r: &Req) {
        for (n, v) in &r.headers {
            assert!(
                !contains(v.as_bytes(), PH_AKID.as_bytes()),
                "{n} holds the placeholder"
            );
        }
        assert_eq!(r.headers.get_all(AUTHORIZATION).iter().count(), 1);
        assert_eq!(r.headers.get_all(X_AMZ_DATE).iter().count(), 1);
    }

    /// The agent's placeholder signature (made by aws-sigv4) verifies; after
    /// re-signing, the real secret verifies, the placeholder does not, and
    /// the Authorization is the one aws-sigv4 itself makes with the real
    /// credentials (the same signed headers: user-agent stays unsigned).
    #[test]
    fn resign_matches_aws_sigv4_and_verifies_with_real_secret() {
        let mut r = bedrock(None);
        let original = r.headers.clone();
        verify_req(&r, PH_SECRET).unwrap();
        resign_req(&mut r, &real(None)).unwrap();
        verify_req(&r, REAL_SECRET).unwrap();
        assert_eq!(verify_req(&r, PH_SECRET), Err(SigV4Error::Mismatch));
        let signed = parse(&r.headers).unwrap().unwrap();
        assert_eq!(signed.access_key_id(), REAL_AKID);
        assert_eq!(
            (signed.date(), signed.region(), signed.service()),
            ("20150830", "us-east-1", "bedrock")
        );
        assert!(!signed.signed_headers().iter().any(|n| n == "user-agent"));

        let mut expected = original.clone();
        expected.remove(AUTHORIZATION);
        expected.remove(X_AMZ_DATE);
        aws_sign(
            "POST",
            &r.uri.to_string(),
            &mut expected,
            (REAL_AKID, REAL_SECRET, None),
            "bedrock",
            SignableBody::Bytes(BODY),
        );
        assert_eq!(r.headers.get(AUTHORIZATION), expected.get(AUTHORIZATION));
        assert_eq!(r.headers.get(X_AMZ_DATE), original.get(X_AMZ_DATE));
        assert!(r.headers.get(X_AMZ_SECURITY_TOKEN).is_none());
        assert_clean(&r);
    }

    /// Real credentials with a session token: the token is added, signed,
    /// and the result is what aws-sigv4 makes with them.
    #[test]
    fn session_token_is_added_and_signed() {
        let mut r = bedrock(None);
        let mut expected = r.headers.clone();
        resign_req(&mut r, &real(Some(REAL_TOKEN))).unwrap();
        assert_eq!(r.headers.get_all(X_AMZ_SECURITY_TOKEN).iter().count(), 1);
        assert_eq!(r.headers[X_AMZ_SECURITY_TOKEN], REAL_TOKEN);
        let signed = parse(&r.headers).unwrap().unwrap();
        assert!(
            signed
                .signed_headers()
                .iter()
                .any(|n| n == X_AMZ_SECURITY_TOKEN)
        );
        verify_req(&r, REAL_SECRET).unwrap();

        expected.remove(AUTHORIZATION);
        expected.remove(X_AMZ_DATE);
        aws_sign(
            "POST",
            &r.uri.to_string(),
            &mut expected,
            (REAL_AKID, REAL_SECRET, Some(REAL_TOKEN)),
            "bedrock",
            SignableBody::Bytes(BODY),
        );
        assert_eq!(r.headers.get(AUTHORIZATION), expected.get(AUTHORIZATION));
        assert_clean(&r);
    }

    /// A token the agent signed is replaced by the real one, or removed (and
    /// dropped from the signed headers) when the real credentials have none;
    /// an unsigned one is removed too.
    #[test]
    fn agent_session_token_is_replaced_or_removed() {
        let mut r = bedrock(Some("cell-placeholder-token"));
        verify_req(&r, PH_SECRET).unwrap();
        resign_req(&mut r, &real(Some(REAL_TOKEN))).unwrap();
        assert_eq!(r.headers.get_all(X_AMZ_SECURITY_TOKEN).iter().count(), 1);
        assert_eq!(r.headers[X_AMZ_SECURITY_TOKEN], REAL_TOKEN);
        verify_req(&r, REAL_SECRET).unwrap();

        let mut r = bedrock(Some("cell-placeholder-token"));
        resign_req(&mut r, &real(None)).unwrap();
        assert!(r.headers.get(X_AMZ_SECURITY_TOKEN).is_none());
        let signed = parse(&r.headers).unwrap().unwrap();
        assert!(
            !signed
                .signed_headers()
                .iter()
                .any(|n| n == X_AMZ_SECURITY_TOKEN)
        );
        verify_req(&r, REAL_SECRET).unwrap();

        let mut r = bedrock(None);
        r.headers
            .append(X_AMZ_SECURITY_TOKEN, "unsigned".parse().unwrap());
        verify_req(&r, PH_SECRET).unwrap();
        resign_req(&mut r, &real(None)).unwrap();
        assert!(r.headers.get(X_AMZ_SECURITY_TOKEN).is_none());
        assert_clean(&r);
    }

    /// S3: the path is signed as sent (not encoded again), the payload hash
    /// is x-amz-content-sha256; the result is what aws-sigv4 makes.
    #[test]
    fn s3_path_is_verbatim_and_payload_from_header() {
        let hash = hex::encode(Sha256::digest(b"hello"));
        for payload in [UNSIGNED_PAYLOAD, STREAMING_UNSIGNED_TRAILER, hash.as_str()] {
            let mut r = s3_put(payload);
            assert!(!needs_body_hash(&r.headers));
            verify_req(&r, PH_SECRET).unwrap();
            let signed = parse(&r.headers).unwrap().unwrap();
            assert_eq!(
                verify_with(
                    &r.method,
                    &r.uri,
                    &r.headers,
                    &signed,
                    PH_SECRET,
                    payload,
                    PathMode::Normalized
                ),
                Err(SigV4Error::Mismatch)
            );
            let mut expected = r.headers.clone();
            resign_req(&mut r, &real(None)).unwrap();
            verify_req(&r, REAL_SECRET).unwrap();
            expected.remove(AUTHORIZATION);
            expected.remove(X_AMZ_DATE);
            aws_sign(
                "PUT",
                &r.uri.to_string(),
                &mut expected,
                (REAL_AKID, REAL_SECRET, None),
                "s3",
                SignableBody::Precomputed(payload.into()),
            );
            assert_eq!(r.headers.get(AUTHORIZATION), expected.get(AUTHORIZATION));
            assert_clean(&r);
        }
    }

    /// A body signed chunk by chunk is refused with the typed error, which
    /// says what to configure instead.
    #[test]
    fn streaming_payload_is_refused() {
        for p in [
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
            "STREAMING-AWS4-HMAC-SHA256-EVENTS",
        ] {
            let mut r = s3_put(p);
            assert_eq!(verify_req(&r, PH_SECRET), Err(SigV4Error::Streaming));
            let before = r.headers.clone();
            assert_eq!(resign_req(&mut r, &real(None)), Err(SigV4Error::Streaming));
            assert_eq!(r.headers, before);
        }
        let msg = SigV4Error::Streaming.to_string();
        assert!(
            msg.contains("UNSIGNED-PAYLOAD") && msg.contains("aws-chunked"),
            "{msg}"
        );
    }

    /// A presigned URL is refused with the typed error; its key id can be read.
    #[test]
    fn presigned_url_is_refused() {
        let mut r = bedrock(None);
        r.uri = format!(
            "/x?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={PH_AKID}%2F20150830%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=00"
        )
        .parse()
        .unwrap();
        assert_eq!(verify_req(&r, PH_SECRET), Err(SigV4Error::Presigned));
        assert_eq!(resign_req(&mut r, &real(None)), Err(SigV4Error::Presigned));
        assert_eq!(presigned_access_key_id(&r.uri).as_deref(), Some(PH_AKID));
        assert_eq!(presigned_access_key_id(&"/x?a=1".parse().unwrap()), None);
        assert!(SigV4Error::Presigned.to_string().contains("presign"));
    }

    /// Requests without SigV4 in their headers are not for this module.
    #[test]
    fn unsigned_request_is_none() {
        let mut h = HeaderMap::new();
        assert_eq!(parse(&h), Ok(None));
        h.insert("host", "example.com".parse().unwrap());
        assert_eq!(parse(&h), Ok(None));
        for other in ["Bearer abc", "Basic dXNlcjpwYXNz", "AWS AKID:sig"] {
            h.insert(AUTHORIZATION, other.parse().unwrap());
            assert_eq!(parse(&h), Ok(None), "{other}");
        }
    }

    /// Mangled Authorization headers are errors, never a panic or a guess.
    #[test]
    fn mangled_authorization_is_an_error() {
        let good = "Credential=AKID/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let sig = "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let cases = [
            "AWS4-HMAC-SHA256".to_string(),
            "AWS4-HMAC-SHA256 ".into(),
            "AWS4-HMAC-SHA256 ,,,".into(),
            "AWS4-HMAC-SHA256 Credential=a/b".into(),
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request, SignedHeaders=host"
                .into(),
            format!(
                "AWS4-HMAC-SHA256 Credential=AKID/2015083/us-east-1/service/aws4_request, SignedHeaders=host, {sig}"
            ),
            format!(
                "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_requesx, SignedHeaders=host, {sig}"
            ),
            format!(
                "AWS4-HMAC-SHA256 Credential=/20150830/us-east-1/service/aws4_request, SignedHeaders=host, {sig}"
            ),
            format!(
                "AWS4-HMAC-SHA256 Credential=AKID/20150830/US-EAST-1/service/aws4_request, SignedHeaders=host, {sig}"
            ),
            format!(
                "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request, SignedHeaders=x-amz-date;host, {sig}"
            ),
            format!(
                "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request, SignedHeaders=host;host, {sig}"
            ),
            format!(
                "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request, SignedHeaders=Host, {sig}"
            ),
            format!(
                "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request, SignedHeaders=authorization;host, {sig}"
            ),
            format!(
                "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request, SignedHeaders=host;;x, {sig}"
            ),
            "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request, SignedHeaders=host, Signature=5FA0"
                .into(),
            format!(
                "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request, SignedHeaders=host, Signature={}",
                "g".repeat(64)
            ),
            format!("AWS4-HMAC-SHA256 {good}, {sig}"),
            format!("AWS4-HMAC-SHA256 {good}, Extra=1"),
            format!("AWS4-HMAC-SHA256 {}", "Credential=".repeat(1000)),
        ];
        for c in &cases {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_str(c).unwrap());
            assert!(parse(&h).is_err(), "{c}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"AWS4-HMAC-SHA256 Credential=\xff").unwrap(),
        );
        assert_eq!(parse(&h), Err(SigV4Error::Malformed("it is not ASCII")));
        h.insert(
            AUTHORIZATION,
            format!("AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/service/aws4_request, SignedHeaders=x-amz-date, {sig}").parse().unwrap(),
        );
        assert_eq!(parse(&h), Err(SigV4Error::HostNotSigned));
        h.insert(
            AUTHORIZATION,
            format!("AWS4-ECDSA-P256-SHA256 {good}").parse().unwrap(),
        );
        assert!(matches!(parse(&h), Err(SigV4Error::Unsupported(_))));
        h.insert(
            AUTHORIZATION,
            format!("AWS4-HMAC-SHA256 {good}").parse().unwrap(),
        );
        assert!(parse(&h).unwrap().is_some());
        h.append(AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(parse(&h), Err(SigV4Error::Repeated("authorization")));
    }

    /// Changing a signed header, repeating it or removing it after signing
    /// is refused; header names are case-insensitive.
    #[test]
    fn changed_signed_headers_are_refused() {
        let r = bedrock(None);
        let mut c = Req {
            headers: r.headers.clone(),
            ..bedrock(None)
        };
        c.headers
            .insert("content-type", "text/plain".parse().unwrap());
        assert_eq!(verify_req(&c, PH_SECRET), Err(SigV4Error::Mismatch));
        let mut c = Req {
            headers: r.headers.clone(),
            ..bedrock(None)
        };
        c.headers.append("x-custom", "four".parse().unwrap());
        assert_eq!(verify_req(&c, PH_SECRET), Err(SigV4Error::Mismatch));
        let mut c = Req {
            headers: r.headers.clone(),
            ..bedrock(None)
        };
        c.headers.remove("x-custom");
        assert_eq!(
            verify_req(&c, PH_SECRET),
            Err(SigV4Error::SignedHeaderMissing("x-custom".into()))
        );
        let mut c = Req {
            headers: r.headers.clone(),
            ..bedrock(None)
        };
        c.headers.append("host", "evil.example".parse().unwrap());
        assert_eq!(verify_req(&c, PH_SECRET), Err(SigV4Error::Repeated("host")));
        // Values are trimmed: extra spaces around a value do not matter.
        let mut c = Req {
            headers: HeaderMap::new(),
            ..bedrock(None)
        };
        for (n, v) in &r.headers {
            let n = HeaderName::from_bytes(n.as_str().to_uppercase().as_bytes()).unwrap();
            let v = if n == "content-type" {
                "  application/json  ".parse().unwrap()
            } else {
                v.clone()
            };
            c.headers.append(n, v);
        }
        verify_req(&c, PH_SECRET).unwrap();
        let mut c = Req {
            headers: r.headers.clone(),
            ..bedrock(None)
        };
        c.payload = hex::encode(Sha256::digest(b"other body"));
        assert_eq!(verify_req(&c, PH_SECRET), Err(SigV4Error::Mismatch));
    }

    /// The payload hash given must be the request's x-amz-content-sha256.
    #[test]
    fn payload_hash_must_match_header() {
        let mut r = s3_put(UNSIGNED_PAYLOAD);
        r.payload = hex::encode(Sha256::digest(b"hello"));
        assert!(matches!(
            verify_req(&r, PH_SECRET),
            Err(SigV4Error::PayloadHash(_))
        ));
        let mut r = bedrock(None);
        r.payload = "not a hash".into();
        assert!(matches!(
            verify_req(&r, PH_SECRET),
            Err(SigV4Error::PayloadHash(_))
        ));
    }

    /// x-amz-date: exactly one, well-formed, on the scope's date.
    #[test]
    fn amz_date_is_checked() {
        let r = bedrock(None);
        for (change, err) in [
            (Some("20150831T123600Z"), SigV4Error::Date),
            (Some("2015-08-30T12:36"), SigV4Error::Date),
            (None, SigV4Error::Missing(X_AMZ_DATE)),
        ] {
            let mut c = Req {
                headers: r.headers.clone(),
                ..bedrock(None)
            };
            match change {
                Some(d) => c.headers.insert(X_AMZ_DATE, d.parse().unwrap()),
                None => c.headers.remove(X_AMZ_DATE),
            };
            assert_eq!(verify_req(&c, PH_SECRET), Err(err));
        }
        let mut c = Req {
            headers: r.headers.clone(),
            ..bedrock(None)
        };
        c.headers
            .append(X_AMZ_DATE, "20150830T123600Z".parse().unwrap());
        assert_eq!(
            verify_req(&c, PH_SECRET),
            Err(SigV4Error::Repeated(X_AMZ_DATE))
        );
    }

    /// The placeholder key id left in another header or in the target is an
    /// error, and the headers are left as they were.
    #[test]
    fn placeholder_left_is_refused() {
        let mut r = bedrock(None);
        r.headers
            .insert("x-note", format!("key {PH_AKID}").parse().unwrap());
        let before = r.headers.clone();
        assert_eq!(
            resign_req(&mut r, &real(None)),
            Err(SigV4Error::PlaceholderLeft("a header"))
        );
        assert_eq!(r.headers, before);
        let mut r = bedrock(None);
        r.uri = format!("/model/x/invoke?who={PH_AKID}").parse().unwrap();
        assert_eq!(
            resign_req(&mut r, &real(None)),
            Err(SigV4Error::PlaceholderLeft("the request target"))
        );
    }

    /// The key derivation is aws-sigv4's.
    #[test]
    fn signing_key_matches_aws_sigv4() {
        let ours = signing_key(REAL_SECRET, "20150830", "us-east-1", "iam");
        let theirs =
            aws_sigv4::sign::v4::generate_signing_key(REAL_SECRET, time(), "us-east-1", "iam");
        assert_eq!(&ours[..], theirs.as_ref());
    }

    #[test]
    fn path_normalisation() {
        for (p, n) in [
            ("/", "/"),
            ("//", "/"),
            ("/a/./b/../c", "/a/c"),
            ("/a/..", "/"),
            ("/../../x", "/x"),
            ("//a//b//", "/a/b/"),
            ("/a/b/.", "/a/b/"),
            ("/a%2F..", "/a%2F.."),
        ] {
            assert_eq!(normalize_path(p), n, "{p}");
        }
        assert_eq!(decode("a%2Fb+c%zz%4"), b"a/b c%zz%4");
        let mut q = Vec::new();
        canonical_query(&mut q, "b=2&a=%7e&a=1&&c&d=%20+");
        assert_eq!(q, b"a=1&a=~&b=2&c=&d=%20%20");
    }

    /// credential_process JSON: read with or without a token, Expiration ignored.
    #[test]
    fn credentials_from_process_json() {
        let c = AwsCredentials::from_process_json(&format!(
            r#"{{"Version":1,"AccessKeyId":"{REAL_AKID}","SecretAccessKey":"{REAL_SECRET}","SessionToken":"{REAL_TOKEN}","Expiration":"2030-01-01T00:00:00Z"}}"#
        ))
        .unwrap();
        assert_eq!(&*c.access_key_id, REAL_AKID);
        assert_eq!(&*c.secret_access_key, REAL_SECRET);
        assert_eq!(
            c.session_token.as_deref().map(|s| s.as_str()),
            Some(REAL_TOKEN)
        );
        let c = AwsCredentials::from_process_json(&format!(
            r#"{{"Version":1,"AccessKeyId":"{REAL_AKID}","SecretAccessKey":"{REAL_SECRET}"}}"#
        ))
        .unwrap();
        assert!(c.session_token.is_none());
    }

    /// Errors and Debug never show a value.
    #[test]
    fn credentials_never_shown() {
        let secret = "SuperSecretValue0123456789";
        for text in [
            format!(r#"{{"Version":"{secret}","AccessKeyId":"A","SecretAccessKey":"{secret}"}}"#),
            format!(r#"{{"Version":1,"AccessKeyId":"A","SecretAccessKey":["{secret}"]}}"#),
            format!(r#"{{"Version":2,"AccessKeyId":"A","SecretAccessKey":"{secret}"}}"#),
            format!(r#"{{"Version":1,"AccessKeyId":"{secret} x","SecretAccessKey":"{secret}"}}"#),
            format!(
                r#"{{"Version":1,"AccessKeyId":"A","SecretAccessKey":"{secret}","SessionToken":"{secret}\n"}}"#
            ),
            r#"{"Version":1,"AccessKeyId":"A","SecretAccessKey":""}"#.to_string(),
            format!(r#"{{"Version":1,"AccessKeyId":"A","SecretAccessKey":"{secret}"#),
            secret.to_string(),
        ] {
            let e = AwsCredentials::from_process_json(&text).unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains(secret), "{shown}");
            assert!(!shown.contains("SuperSecret"), "{shown}");
        }
        let d = format!("{:?}", real(Some(REAL_TOKEN)));
        for v in [REAL_AKID, REAL_SECRET, REAL_TOKEN] {
            assert!(!d.contains(v), "{d}");
        }
    }

    proptest! {
        /// parse never panics, whatever the Authorization header holds.
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                              tail in "[ -~]{0,300}") {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                h.insert(AUTHORIZATION, v);
                let _ = parse(&h);
            }
            for prefix in ["AWS4-HMAC-SHA256 ", "AWS4-HMAC-SHA256 Credential=", "AWS4-"] {
                if let Ok(v) = HeaderValue::from_str(&format!("{prefix}{tail}")) {
                    h.insert(AUTHORIZATION, v);
                    let _ = parse(&h);
                }
            }
        }

        /// verify and resign never panic on arbitrary values of the signed
        /// headers, the path and the query.
        #[test]
        fn verify_never_panics(value in proptest::collection::vec(any::<u8>(), 0..100),
                               target in "/[!-~]{0,60}") {
            let mut r = bedrock(None);
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                r.headers.insert("x-custom", v.clone());
                r.headers.insert(X_AMZ_DATE, v);
            }
            if let Ok(u) = target.parse() {
                r.uri = u;
            }
            let _ = verify_req(&r, PH_SECRET);
            let _ = resign_req(&mut r, &real(Some(REAL_TOKEN)));
        }
    }
}
