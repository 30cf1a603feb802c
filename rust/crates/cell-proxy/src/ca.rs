//! The cell CA and the leaf certificates minted from it.
//!
//! The CA is created on first start in the state directory: `ca.key`
//! (PKCS#8 PEM, mode 0600, never logged, never leaves the firewall) and
//! `ca.crt` (the certificate the agent trusts). Leaves are minted on demand
//! for names the policy allowed, all sharing one in-memory key pair, so
//! minting is a single signature; they are cached, and the cache is bounded.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const CA_CN: &str = "cell CA";
const LEAF_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    dn.push(DnType::OrganizationName, "cell");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    pub cert_path: PathBuf,
    leaf_key: KeyPair,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    cache: Mutex<HashMap<String, (Arc<CertifiedKey>, u64)>>,
    capacity: usize,
    clock: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

fn write_private(path: &Path, data: &str) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Self-signs the CA certificate for `key` and writes it atomically.
fn write_ca_cert(
    params: &CertificateParams,
    key: &KeyPair,
    path: &Path,
) -> anyhow::Result<CertificateDer<'static>> {
    let mut p = params.clone();
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(3600)).into();
    p.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
    let cert = p.self_signed(key).context("self-signing the CA")?;
    let tmp = path.with_extension("crt.tmp");
    fs::write(&tmp, cert.pem()).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(cert.der().clone())
}

impl Ca {
    /// Loads the CA from `dir`, creating it on first use. Refuses a key file
    /// that others can read, and says how to fix it.
    pub fn load_or_create(dir: &Path, cache_capacity: usize) -> anyhow::Result<Ca> {
        fs::create_dir_all(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.crt");
        let params = ca_params();
        let (ca_key, ca_der) = if key_path.exists() {
            let mode = fs::metadata(&key_path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "{} is readable by others (mode {mode:o}); run `chmod 600 {}`",
                    key_path.display(),
                    key_path.display()
                );
            }
            let pem = fs::read_to_string(&key_path)
                .with_context(|| format!("reading {}", key_path.display()))?;
            let key = KeyPair::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
            let der = match fs::read_to_string(&cert_path) {
                Ok(cert_pem) => rustls_pki_types::pem::PemObject::from_pem_slice(
                    cert_pem.as_bytes(),
                )
                .map_err(|e| {
                    anyhow::anyhow!("{} is not a PEM certificate: {e:?}", cert_path.display())
                })?,
                // A crash between writing the key and the certificate: issue it again from the key.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    write_ca_cert(&params, &key, &cert_path)?
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", cert_path.display()));
                }
            };
            (key, der)
        } else {
            let key = KeyPair::generate().context("generating the CA key")?;
            write_private(&key_path, &key.serialize_pem())?;
            let der = write_ca_cert(&params, &key, &cert_path)?;
            tracing::info!(cert = %cert_path.display(), "created the cell CA");
            (key, der)
        };
        let leaf_key = KeyPair::generate().context("generating the leaf key")?;
        let pkcs8 = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&pkcs8)
            .context("loading the leaf key")?;
        Ok(Ca {
            issuer: Issuer::new(params, ca_key),
            ca_der,
            cert_path,
            leaf_key,
            signing_key,
            cache: Mutex::new(HashMap::new()),
            capacity: cache_capacity.max(1),
            clock: Default::default(),
        })
    }

    /// A certificate chain and key for `name` (already normalized and allowed).
    pub fn leaf(&self, name: &str) -> anyhow::Result<Arc<CertifiedKey>> {
        let tick = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut cache = self.cache.lock().expect("cert cache lock");
            if let Some((ck, used)) = cache.get_mut(name) {
                *used = tick;
                return Ok(ck.clone());
            }
        }
        let mut p = CertificateParams::new(vec![name.to_string()]).context("leaf parameters")?;
        p.distinguished_name = {
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, name);
            dn
        };
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        p.not_before = (now - Duration::from_secs(3600)).into();
        p.not_after = (now + LEAF_LIFETIME).into();
        let cert = p
            .signed_by(&self.leaf_key, &self.issuer)
            .context("signing a leaf")?;
        let ck = Arc::new(CertifiedKey::new(
            vec![cert.der().clone(), self.ca_der.clone()],
            self.signing_key.clone(),
        ));
        let mut cache = self.cache.lock().expect("cert cache lock");
        if cache.len() >= self.capacity
            && let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            cache.remove(&oldest);
        }
        cache.insert(name.to_string(), (ck.clone(), tick));
        Ok(ck)
    }

    #[cfg(test)]
    pub fn cached(&self) -> usize {
        self.cache.lock().expect("cert cache lock").len()
    }
}

/// Serves the leaf for the client's SNI. The transparent proxy only hands a
/// connection to TLS after the SNI was checked against the policy, so this
/// never mints for a name that was not allowed.
#[derive(Debug)]
pub struct LeafResolver(pub Arc<Ca>);

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        match self.0.leaf(name) {
            Ok(ck) => Some(ck),
            Err(e) => {
                tracing::error!("minting a certificate for {name} failed: {e:#}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_private_key_mode_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), 4).unwrap();
        let key = dir.path().join("ca.key");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let first_key = fs::read(&key).unwrap();
        let leaf = ca.leaf("api.example.com").unwrap();
        assert_eq!(leaf.cert.len(), 2, "leaf plus CA");
        drop(ca);
        let again = Ca::load_or_create(dir.path(), 4).unwrap();
        assert_eq!(
            fs::read(&key).unwrap(),
            first_key,
            "the CA is not regenerated"
        );
        assert!(again.leaf("api.example.com").is_ok());

        // A lost certificate is issued again from the key.
        fs::remove_file(dir.path().join("ca.crt")).unwrap();
        assert!(Ca::load_or_create(dir.path(), 4).is_ok());
        assert!(dir.path().join("ca.crt").exists());

        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Ca::load_or_create(dir.path(), 4).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn leaf_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), 3).unwrap();
        let a = ca.leaf("a.example").unwrap();
        for i in 0..20 {
            ca.leaf(&format!("n{i}.example")).unwrap();
            assert!(ca.cached() <= 3);
        }
        assert!(Arc::ptr_eq(
            &ca.leaf("n19.example").unwrap(),
            &ca.leaf("n19.example").unwrap()
        ));
        assert!(
            !Arc::ptr_eq(&a, &ca.leaf("a.example").unwrap()),
            "evicted and re-minted"
        );
    }
}
