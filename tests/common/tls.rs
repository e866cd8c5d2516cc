//! TLS drill helpers: a test CA whose leaves the gate serves and clients
//! trust, and a gate with a TLS listener.

use super::{free_port, wait_for, Gate, FAST_HEALTH};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A test CA; leaf certificates are signed by it, clients trust it.
pub struct Ca {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
    pub pem: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "stickgate test CA");
        let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        let pem = dir.join("ca.pem");
        std::fs::write(&pem, issuer.pem()).unwrap();
        Ca { issuer, pem }
    }

    /// Leaf for `names`, written as `<stem>.crt` / `<stem>.key`.
    pub fn leaf(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> (PathBuf, PathBuf) {
        let p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        let key = KeyPair::generate_for(alg).unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

pub fn cert_toml(pairs: &[(PathBuf, PathBuf)]) -> String {
    pairs
        .iter()
        .map(|(c, k)| {
            format!(
                "[[server.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
                c.display(),
                k.display()
            )
        })
        .collect()
}

/// A TLS-terminating gate: returns it and its TLS port.
pub fn tls_gate(pairs: &[(PathBuf, PathBuf)], backends: &str, server_extra: &str) -> (Gate, u16) {
    let tls_port = free_port();
    let extra = format!(
        "tls_listen = [\"127.0.0.1:{tls_port}\"]\n{server_extra}\n{}",
        cert_toml(pairs)
    );
    // [[server.certificate]] tables must come last in [server].
    let gate = Gate::start_with(&format!("{FAST_HEALTH}{backends}"), &extra);
    wait_for(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    })
    .unwrap();
    (gate, tls_port)
}

/// A client configuration that trusts only the CA in `ca` (a PEM file) and
/// offers `alpn`: ring, as the balancer uses.
pub fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}
