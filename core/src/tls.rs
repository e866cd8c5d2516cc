//! TLS termination: certificates chosen by SNI, ALPN for h2 and
//! http/1.1, TLS 1.2 and 1.3 only, and certificates that can be reloaded
//! without dropping connections (new handshakes use the new ones).

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One certificate chain and key, PEM (`[[server.certificate]]`, a
/// backend's `client_cert`). Defined here, beside the code that loads it,
/// so this module needs nothing from the config; `config::raw` re-exports
/// it as part of the file's shape.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    /// The PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// The PEM private key of the leaf.
    pub key: PathBuf,
}

/// Why a certificate could not be used; names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: {problem}")]
    File { file: PathBuf, problem: String },
    #[error("tls_listen is set but no [[server.certificate]] is configured")]
    NoCertificate,
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

fn file_err(file: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::File {
        file: file.to_path_buf(),
        problem: problem.into(),
    }
}

/// What a client-side TLS connection (to an https backend, or the drill to
/// an https listener) trusts: the certificates of `ca_file` (a private
/// CA), else the system's roots.
pub fn trust_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(path) = ca_file else {
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        return Ok(roots);
    };
    let bad =
        |e: &dyn std::fmt::Display| file_err(path, format!("cannot read CA certificates: {e}"));
    for c in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(file_err(
            path,
            "no PEM certificate in it; give the CA's certificate file",
        ));
    }
    Ok(roots)
}

/// A client config builder (ring, TLS 1.3 and 1.2) trusting `roots`; the
/// caller adds a client certificate or none.
pub fn client_builder(
    roots: rustls::RootCertStore,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, TlsError>
{
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots))
}

/// Load one PEM certificate chain and its key (RSA, ECDSA or Ed25519).
pub fn load_pair(files: &CertFiles) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_err(&files.cert, format!("cannot read certificate: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&files.cert, format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(file_err(&files.cert, "contains no CERTIFICATE block"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        file_err(
            &files.key,
            format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        )
    })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| file_err(&files.key, format!("unsupported key type: {e}")))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| {
        file_err(
            &files.key,
            format!("does not match {}: {e}", files.cert.display()),
        )
    })?;
    Ok(ck)
}

/// Picks the certificate whose names cover the SNI host name; the first
/// configured certificate is the default (no SNI, or no match).
#[derive(Debug)]
pub struct SniResolver {
    certs: ArcSwap<Vec<Arc<CertifiedKey>>>,
}

impl SniResolver {
    /// Load every configured pair; any bad file is an error naming it.
    pub fn load(files: &[CertFiles]) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(SniResolver {
            certs: ArcSwap::from_pointee(load_all(files)?),
        }))
    }

    /// Replace the certificates (hot reload); on error the old ones stay.
    pub fn reload(&self, files: &[CertFiles]) -> Result<(), TlsError> {
        self.certs.store(Arc::new(load_all(files)?));
        Ok(())
    }
}

fn load_all(files: &[CertFiles]) -> Result<Vec<Arc<CertifiedKey>>, TlsError> {
    if files.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    files.iter().map(|f| load_pair(f).map(Arc::new)).collect()
}

fn covers(ck: &CertifiedKey, host: &str) -> bool {
    let Some(leaf) = ck.cert.first() else {
        return false;
    };
    let Ok(name) = ServerName::try_from(host) else {
        return false;
    };
    webpki::EndEntityCert::try_from(leaf)
        .map(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
        .unwrap_or(false)
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        if let Some(host) = hello.server_name() {
            if let Some(ck) = certs.iter().find(|ck| covers(ck, host)) {
                return Some(ck.clone());
            }
        }
        certs.first().cloned()
    }
}

/// rustls server settings: TLS 1.2/1.3, ALPN h2 then http/1.1.
pub fn server_config(
    resolver: Arc<SniResolver>,
    resumption: Resumption,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.session_storage = if resumption.cache > 0 {
        rustls::server::ServerSessionMemoryCache::new(resumption.cache)
    } else {
        Arc::new(rustls::server::NoServerSessionStorage {})
    };
    if resumption.tickets {
        cfg.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Setup(e.to_string()))?;
    }
    Ok(Arc::new(cfg))
}

/// How returning TLS clients skip the full handshake (`server.tls_session_*`):
/// a full handshake costs the balancer an ECDHE and a signature, a resumed
/// one a fraction of that, so reconnecting browsers and health checkers
/// are far cheaper with it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumption {
    /// Stateless session tickets (keys in memory, rotated every 6 hours).
    pub tickets: bool,
    /// Entries of the server-side session cache; 0: no cache.
    pub cache: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    /// A fresh directory for this test's files.
    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("stickgate-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A self-signed pair for `names`, written under `d` as `<stem>.crt/.key`.
    fn pair(d: &Path, stem: &str, names: &[&str]) -> CertFiles {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let files = CertFiles {
            cert: d.join(format!("{stem}.crt")),
            key: d.join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    fn problem(r: Result<CertifiedKey, TlsError>) -> (PathBuf, String) {
        match r {
            Err(TlsError::File { file, problem }) => (file, problem),
            other => panic!("expected a file error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn load_pair_names_the_bad_file_and_the_problem() {
        let d = dir("load");
        let good = pair(&d, "a", &["a.example"]);
        let other = pair(&d, "b", &["b.example"]);
        assert!(load_pair(&good).is_ok());
        let missing = CertFiles {
            cert: d.join("missing.crt"),
            key: good.key.clone(),
        };
        let (file, why) = problem(load_pair(&missing));
        assert_eq!(file, missing.cert);
        assert!(why.contains("cannot read certificate"), "{why}");
        let empty = d.join("empty.crt");
        std::fs::write(&empty, "not a pem\n").unwrap();
        let (file, why) = problem(load_pair(&CertFiles {
            cert: empty.clone(),
            key: good.key.clone(),
        }));
        assert_eq!(file, empty);
        assert!(why.contains("no CERTIFICATE"), "{why}");
        let (file, why) = problem(load_pair(&CertFiles {
            cert: good.cert.clone(),
            key: good.cert.clone(),
        }));
        assert_eq!(file, good.cert);
        assert!(why.contains("no usable private key"), "{why}");
        let (file, why) = problem(load_pair(&CertFiles {
            cert: good.cert.clone(),
            key: other.key.clone(),
        }));
        assert_eq!(file, other.key);
        assert!(why.contains("does not match"), "{why}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn trust_roots_refuses_a_file_without_certificates() {
        let d = dir("roots");
        let good = pair(&d, "ca", &["ca.example"]);
        assert_eq!(trust_roots(Some(&good.cert)).unwrap().len(), 1);
        let (file, why) = match trust_roots(Some(&good.key)) {
            Err(TlsError::File { file, problem }) => (file, problem),
            other => panic!("{:?}", other.map(|r| r.len())),
        };
        assert_eq!(file, good.key);
        assert!(why.contains("no PEM certificate"), "{why}");
        assert!(trust_roots(Some(&d.join("missing.pem"))).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn sni_picks_the_covering_certificate_else_the_first() {
        let d = dir("sni");
        let a = pair(&d, "a", &["a.example"]);
        let b = pair(&d, "b", &["*.b.example"]);
        assert!(matches!(
            SniResolver::load(&[]),
            Err(TlsError::NoCertificate)
        ));
        let r = SniResolver::load(&[a.clone(), b.clone()]).unwrap();
        let certs = r.certs.load();
        assert!(covers(&certs[0], "a.example"));
        assert!(!covers(&certs[0], "b.example"));
        assert!(covers(&certs[1], "www.b.example"));
        assert!(
            !covers(&certs[1], "b.example"),
            "a wildcard covers one label"
        );
        assert!(!covers(&certs[1], "not a name"));
        // A failed reload keeps the certificates in force.
        let broken = CertFiles {
            cert: d.join("missing.crt"),
            key: a.key.clone(),
        };
        assert!(r.reload(&[broken]).is_err());
        assert_eq!(r.certs.load().len(), 2);
        r.reload(&[b]).unwrap();
        assert_eq!(r.certs.load().len(), 1);
        let on = Resumption {
            tickets: true,
            cache: 100,
        };
        assert!(server_config(r.clone(), on).is_ok());
        let off = Resumption {
            tickets: false,
            cache: 0,
        };
        assert!(server_config(r, off).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
