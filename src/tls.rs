//! TLS termination: certificates chosen by SNI, ALPN for h2 and
//! http/1.1, TLS 1.2 and 1.3 only, and certificates that can be reloaded
//! without dropping connections (new handshakes use the new ones).

use crate::config::raw::CertFiles;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
pub fn server_config(resolver: Arc<SniResolver>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
