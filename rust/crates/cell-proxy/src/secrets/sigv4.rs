//! SigV4 verification and re-signing (being written; this stub keeps the build going).
#![allow(dead_code, unused_variables)]
use zeroize::Zeroizing;

pub struct AwsCredentials {
    pub access_key_id: Zeroizing<String>,
    pub secret_access_key: Zeroizing<String>,
    pub session_token: Option<Zeroizing<String>>,
}
impl AwsCredentials {
    pub fn from_process_json(text: &str) -> Result<Self, SigV4Error> {
        Err(SigV4Error)
    }
}
#[derive(Debug)]
pub struct SigV4Error;
impl std::fmt::Display for SigV4Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not built")
    }
}
pub struct Signed;
impl Signed {
    pub fn access_key_id(&self) -> &str {
        ""
    }
}
pub fn parse(headers: &http::HeaderMap) -> Result<Option<Signed>, SigV4Error> {
    Ok(None)
}
pub fn needs_body_hash(headers: &http::HeaderMap) -> bool {
    false
}
pub fn verify(
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    signed: &Signed,
    secret: &str,
    payload_sha256_hex: &str,
) -> Result<(), SigV4Error> {
    Err(SigV4Error)
}
pub fn resign(
    method: &http::Method,
    uri: &http::Uri,
    headers: &mut http::HeaderMap,
    signed: &Signed,
    real: &AwsCredentials,
    payload_sha256_hex: &str,
) -> Result<(), SigV4Error> {
    Err(SigV4Error)
}
