//! Drills for the edge: TLS termination with SNI, ALPN h2, h2c, redirects,
//! certificate reload, bad certificates, and TLS/HTTP/2 towards backends.
mod common;
use common::tls::*;
use common::*;
use rcgen::{CertificateParams, DnType, KeyPair};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// Accepts any server certificate: only for asking "which certificate
/// does the server present for a name it has none for".
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The leaf certificate a TLS server presents for `sni` (verified against
/// `ca`), and the ALPN protocol it chose.
async fn handshake(port: u16, ca: &Path, sni: &str, alpn: &[&[u8]]) -> (Vec<u8>, Option<Vec<u8>>) {
    handshake_with(port, Some(ca), sni, alpn).await
}

async fn handshake_with(
    port: u16,
    ca: Option<&Path>,
    sni: &str,
    alpn: &[&[u8]],
) -> (Vec<u8>, Option<Vec<u8>>) {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut cfg = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("handshake");
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].to_vec();
    (leaf, conn.alpn_protocol().map(|p| p.to_vec()))
}

fn der_of(pem_file: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(pem_file)
        .unwrap()
        .to_vec()
}

/// curl with our CA; returns (status, http_version, body).
fn curl(args: &[&str]) -> (String, String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut t = tail.split_whitespace();
    (
        t.next().unwrap_or("").into(),
        t.next().unwrap_or("").into(),
        body.into(),
    )
}

#[tokio::test]
async fn sni_picks_the_certificate_and_alpn_negotiates_h2() {
    let dir = tempdir();
    let ca = Ca::new(&dir);
    let a = ca.leaf(&dir, "a", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let b = ca.leaf(&dir, "b", &["b.test", "*.b.test"], &rcgen::PKCS_ED25519);
    let c = ca.leaf(&dir, "c", &["c.test"], &rcgen::PKCS_ECDSA_P384_SHA384);
    let node = Backend::start("tomcat1", &[]);
    let (_gate, port) = tls_gate(&[a.clone(), b.clone(), c.clone()], &node.toml(), "");
    let (leaf, alpn) = handshake(port, &ca.pem, "a.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(leaf, der_of(&a.0));
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (leaf, _) = handshake(port, &ca.pem, "x.b.test", &[b"http/1.1"]).await;
    assert_eq!(leaf, der_of(&b.0), "wildcard SAN chosen by SNI");
    let (leaf, alpn) = handshake(port, &ca.pem, "c.test", &[b"http/1.1"]).await;
    assert_eq!(leaf, der_of(&c.0));
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (leaf, _) = handshake_with(port, None, "unknown.test", &[]).await;
    assert_eq!(
        leaf,
        der_of(&a.0),
        "no match: the first certificate is the default"
    );
}

#[tokio::test]
async fn curl_over_h2_and_http11_is_sticky_and_sees_https() {
    let dir = tempdir();
    let ca = Ca::new(&dir);
    let a = ca.leaf(&dir, "a", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let n1 = Backend::start("tomcat1", &[]);
    let n2 = Backend::start("tomcat2", &[]);
    let (_gate, port) = tls_gate(&[a], &format!("{}{}", n1.toml(), n2.toml()), "");
    let url = format!("https://a.test:{port}/");
    let resolve = format!("a.test:{port}:127.0.0.1");
    let cacert = ca.pem.display().to_string();
    let jar = dir.join("jar").display().to_string();
    let (status, version, body) = curl(&[
        "--http2",
        "--cacert",
        &cacert,
        "--resolve",
        &resolve,
        "-c",
        &jar,
        "-b",
        &jar,
        &url,
    ]);
    assert_eq!((status.as_str(), version.as_str()), ("200", "2"), "{body}");
    let first: serde_json::Value = serde_json::from_str(&body).unwrap();
    for (flag, want_version) in [("--http2", "2"), ("--http1.1", "1.1"), ("--http2", "2")] {
        let (status, version, body) = curl(&[
            flag,
            "--cacert",
            &cacert,
            "--resolve",
            &resolve,
            "-c",
            &jar,
            "-b",
            &jar,
            &url,
        ]);
        assert_eq!((status.as_str(), version.as_str()), ("200", want_version));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["route"], first["route"], "sticky whatever the protocol");
        assert_eq!(v["session"], first["session"]);
    }
    let (_, _, headers) = curl(&[
        "--http2",
        "--cacert",
        &cacert,
        "--resolve",
        &resolve,
        &format!("https://a.test:{port}/headers"),
    ]);
    let h: serde_json::Value = serde_json::from_str(&headers).unwrap();
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(
        h["host"],
        format!("a.test:{port}"),
        "Host preserved from :authority"
    );
}

#[tokio::test]
async fn failover_over_h2_rewrites_the_cookie() {
    let dir = tempdir();
    let ca = Ca::new(&dir);
    let a = ca.leaf(&dir, "a", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let redis = Redis::start();
    let url_arg = format!("redis://127.0.0.1:{}", redis.port);
    let mut nodes = [
        Backend::start("tomcat1", &["--redis", &url_arg]),
        Backend::start("tomcat2", &["--redis", &url_arg]),
    ];
    let (_gate, port) = tls_gate(&[a], &format!("{}{}", nodes[0].toml(), nodes[1].toml()), "");
    let resolve = format!("a.test:{port}:127.0.0.1");
    let cacert = ca.pem.display().to_string();
    let url = format!("https://a.test:{port}/");
    let (_, _, body) = curl(&[
        "--http2",
        "--cacert",
        &cacert,
        "--resolve",
        &resolve,
        "-D",
        "-",
        &url,
    ]);
    let cookie = body
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: JSESSIONID="))
        .and_then(|v| v.split(';').next())
        .expect("session cookie over h2")
        .to_owned();
    let (base, route) = cookie.split_once('.').unwrap();
    let idx = nodes.iter().position(|n| n.route == route).unwrap();
    nodes[idx].proc.kill();
    let (status, version, out) = curl(&[
        "--http2",
        "--cacert",
        &cacert,
        "--resolve",
        &resolve,
        "-D",
        "-",
        "-H",
        &format!("Cookie: JSESSIONID={cookie}"),
        &url,
    ]);
    assert_eq!((status.as_str(), version.as_str()), ("200", "2"), "{out}");
    let other = &nodes[1 - idx].route;
    assert!(
        out.contains(&format!("set-cookie: JSESSIONID={base}.{other}")),
        "{out}"
    );
    assert!(
        out.contains("\"hits\":2"),
        "session continued on the heir: {out}"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_and_redirect_to_https() {
    let dir = tempdir();
    let ca = Ca::new(&dir);
    let a = ca.leaf(&dir, "a", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let n1 = Backend::start("tomcat1", &[]);
    let (h2c_gate, _) = tls_gate(std::slice::from_ref(&a), &n1.toml(), "h2c = true");
    let (status, version, _) = curl(&["--http2-prior-knowledge", &h2c_gate.url("/")]);
    assert_eq!((status.as_str(), version.as_str()), ("200", "2"));
    let (status, version, _) = curl(&["--http1.1", &h2c_gate.url("/")]);
    assert_eq!(
        (status.as_str(), version.as_str()),
        ("200", "1.1"),
        "h2c listener still speaks HTTP/1.1"
    );

    let (redirect_gate, tls_port) = tls_gate(&[a], &n1.toml(), "redirect_http = true");
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "-H",
            "Host: shop.test:8080",
        ])
        .arg(redirect_gate.url("/cart?x=1"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("308 https://shop.test:{tls_port}/cart?x=1")
    );
}

#[tokio::test]
async fn certificates_reload_on_sighup_without_dropping_connections() {
    let dir = tempdir();
    let ca = Ca::new(&dir);
    let first = ca.leaf(&dir, "site", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let first_der = der_of(&first.0);
    let n1 = Backend::start("tomcat1", &[]);
    let (gate, port) = tls_gate(std::slice::from_ref(&first), &n1.toml(), "");
    assert_eq!(handshake(port, &ca.pem, "a.test", &[]).await.0, first_der);

    // An open keep-alive connection across the reload.
    use std::io::{Read, Write};
    let mut keep = std::net::TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    keep.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    keep.write_all(req).unwrap();
    let mut buf = [0u8; 512];
    assert!(keep.read(&mut buf).unwrap() > 0);

    let second = ca.leaf(&dir, "site", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let second_der = der_of(&second.0);
    assert_ne!(second_der, first_der);
    gate.proc.signal("HUP");
    let mut reloaded = false;
    for _ in 0..100 {
        if handshake(port, &ca.pem, "a.test", &[]).await.0 == second_der {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reloaded,
        "new handshakes must present the new certificate: {}",
        gate.logs()
    );
    keep.write_all(req).unwrap();
    let n = keep.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "old connection kept"
    );

    std::fs::write(&second.0, "not a certificate").unwrap();
    gate.proc.signal("HUP");
    wait_for(Duration::from_secs(5), || {
        gate.logs().contains("reload refused")
    })
    .unwrap();
    let (leaf, _) = handshake(port, &ca.pem, "a.test", &[]).await;
    assert_eq!(
        leaf, second_der,
        "a bad file keeps the last good certificate"
    );
    assert!(gate
        .logs()
        .contains("the previous configuration keeps running"));
}

#[tokio::test]
async fn bad_certificate_files_are_named_by_check_and_handshake_garbage_is_counted() {
    let dir = tempdir();
    let ca = Ca::new(&dir);
    let (good_c, good_k) = ca.leaf(&dir, "good", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let (_, other_k) = ca.leaf(&dir, "other", &["b.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    let cases = [
        (dir.join("missing.crt"), good_k.clone(), "missing.crt"),
        (junk.clone(), good_k.clone(), "junk.pem"),
        (good_c.clone(), junk.clone(), "junk.pem"),
        (good_c.clone(), other_k.clone(), "does not match"),
    ];
    for (c, k, needle) in cases {
        let cfg = dir.join("bad.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = [\"127.0.0.1:1\"]\ntls_listen = [\"127.0.0.1:2\"]\n[[server.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n[[backend]]\nroute = \"a\"\nurl = \"http://127.0.0.1:3\"\n",
                c.display(),
                k.display()
            ),
        )
        .unwrap();
        let out = Command::new(stickgate_bin())
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(needle) && err.contains("server.certificate[0]"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }

    let n1 = Backend::start("tomcat1", &[]);
    let (gate, port) = tls_gate(&[(good_c, good_k)], &n1.toml(), "");
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0][..],
    ] {
        raw(port, junk, Duration::from_millis(500));
    }
    let mut failures = 0;
    for _ in 0..50 {
        failures = gate.status().await["tls_handshake_failures"]
            .as_u64()
            .unwrap();
        if failures >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failures >= 2, "handshake failures counted");
    assert_eq!(
        handshake(port, &ca.pem, "a.test", &[]).await.1,
        None::<Vec<u8>>
    );
    assert_eq!(
        get(&gate.url("/health"), None).await.status,
        200,
        "still serving"
    );
}

#[tokio::test]
async fn backends_over_tls_and_http2() {
    let dir = tempdir();
    let ca = Ca::new(&dir);
    let ip = ca.leaf(
        &dir,
        "inner",
        &["127.0.0.1"],
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let node = Backend::start("app", &[]);
    // An inner stickgate terminates TLS (h2 + http/1.1) and h2c for the node;
    // its JSON access log shows which protocol each request arrived over.
    let inner_log = dir.join("inner-access.log");
    let (inner, inner_tls) = tls_gate(
        &[ip],
        &format!(
            "{}[log]\naccess_log = \"{}\"\naccess_log_format = \"json\"\n",
            node.toml(),
            inner_log.display()
        ),
        "h2c = true",
    );
    let backends = format!(
        "[[backend]]\nroute = \"h2c\"\nurl = \"http://127.0.0.1:{}\"\nhttp2 = true\n\
         [[backend]]\nroute = \"tlsh2\"\nurl = \"https://127.0.0.1:{inner_tls}\"\nhttp2 = true\nca_file = \"{ca}\"\n\
         [[backend]]\nroute = \"tlsh1\"\nurl = \"https://127.0.0.1:{inner_tls}\"\nca_file = \"{ca}\"\n",
        inner.port,
        ca = ca.pem.display()
    );
    let outer = Gate::start(&format!("{FAST_HEALTH}{backends}"));
    let c = client();
    for route in ["h2c", "tlsh2", "tlsh1"] {
        let r = request(
            &c,
            "GET",
            &outer.url("/headers"),
            Some(&format!("JSESSIONID=S.{route}")),
            Default::default(),
        )
        .await;
        assert_eq!(r.status, 200, "{route}: {:?}", r.body);
        let up = request(
            &c,
            "POST",
            &outer.url("/upload"),
            Some(&format!("JSESSIONID=S.{route}")),
            bytes::Bytes::from(vec![7u8; 300_000]),
        )
        .await;
        assert_eq!(up.json()["bytes"], 300_000, "{route}");
    }
    let s = outer.status().await;
    for b in s["backends"].as_array().unwrap() {
        assert_eq!(b["health"], "up", "{b}");
        assert_eq!(b["errors"], 0, "{b}");
    }
    // `http2 = true` must really speak HTTP/2 (the inner gate speaks both,
    // so a balancer ignoring the key would pass everything above).
    let want = [
        "HTTP/2.0", "HTTP/2.0", "HTTP/2.0", "HTTP/2.0", "HTTP/1.1", "HTTP/1.1",
    ];
    let mut versions = Vec::new();
    let logged = wait_for(Duration::from_secs(10), || {
        versions = proxied_versions(&inner_log);
        versions.len() >= want.len()
    });
    assert!(logged.is_ok(), "inner access log: {versions:?}");
    assert_eq!(
        versions, want,
        "protocol per request (h2c GET+POST, tlsh2 GET+POST, tlsh1 GET+POST)"
    );
}

/// The HTTP version of each `/headers` and `/upload` request in a JSON
/// access log (health checks left out), in order.
fn proxied_versions(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "/headers" || v["target"] == "/upload")
        .map(|v| v["version"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn rsa_keys_in_pkcs8_and_pkcs1_work() {
    let dir = tempdir();
    let n1 = Backend::start("tomcat1", &[]);
    for (stem, extra) in [("rsa8", &[][..]), ("rsa1", &["-traditional"][..])] {
        let (crt, key) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=rsa.test",
            ])
            .args([
                "-addext",
                "subjectAltName=DNS:rsa.test",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .output()
            .expect("openssl CLI (Debian package openssl) makes the RSA test keys")
            .status
            .success();
        assert!(ok);
        if !extra.is_empty() {
            let out = Command::new("openssl")
                .args(["rsa", "-traditional", "-in"])
                .arg(&key)
                .output()
                .unwrap();
            assert!(String::from_utf8_lossy(&out.stdout).contains("BEGIN RSA PRIVATE KEY"));
            std::fs::write(&key, out.stdout).unwrap();
        }
        let (_gate, port) = tls_gate(&[(crt.clone(), key)], &n1.toml(), "");
        let (leaf, _) = handshake(port, &crt, "rsa.test", &[]).await;
        assert_eq!(leaf, der_of(&crt), "{stem}");
    }
}

/// An HTTPS server (Python's ssl module) that requires a client certificate
/// signed by `ca`, and answers with the client's common name.
const MTLS_SERVER: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        subject = dict(x[0] for x in self.connection.getpeercert()["subject"])
        body = ('{"route":"mtls","client":"%s"}' % subject.get("commonName", "")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(sys.argv[4])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

#[tokio::test]
async fn client_certificate_is_presented_to_an_https_backend() {
    use std::io::BufRead;
    let dir = tempdir();
    let ca = Ca::new(&dir);
    let (srv_crt, srv_key) = ca.leaf(
        &dir,
        "server",
        &["127.0.0.1"],
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "stickgate-lb");
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    let (cli_crt, cli_key) = (dir.join("client.crt"), dir.join("client.key"));
    std::fs::write(&cli_crt, cert.pem()).unwrap();
    std::fs::write(&cli_key, key.serialize_pem()).unwrap();

    let port = free_port();
    let mut child = Command::new("python3")
        .args(["-c", MTLS_SERVER, &port.to_string()])
        .arg(&srv_crt)
        .arg(&srv_key)
        .arg(&ca.pem)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the mutual-TLS test server");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let _server = Proc { child };

    let backend = |route: &str, with_cert: bool| {
        let cc = if with_cert {
            format!(
                "client_cert = {{ cert = \"{}\", key = \"{}\" }}\n",
                cli_crt.display(),
                cli_key.display()
            )
        } else {
            String::new()
        };
        format!(
            "[[backend]]\nroute = \"{route}\"\nurl = \"https://127.0.0.1:{port}\"\nca_file = \"{}\"\n{cc}",
            ca.pem.display()
        )
    };
    let with = Gate::start(&format!("{FAST_HEALTH}{}", backend("mtls", true)));
    let r = get(&with.url("/"), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.json()["client"],
        "stickgate-lb",
        "the backend saw our client certificate"
    );

    let without = Gate::start(&format!("{FAST_HEALTH}{}", backend("mtls", false)));
    let r = get(&without.url("/"), None).await;
    assert!(
        r.status == 502 || r.status == 503,
        "no client certificate: refused ({})",
        r.status
    );
}

/// Connect over TLS with `cfg` (its session cache carries tickets from one
/// connection to the next), send one GET and read the answer, so TLS 1.3
/// tickets sent after the handshake reach the client; returns how the
/// handshake went.
async fn resume_probe(port: u16, cfg: &Arc<rustls::ClientConfig>) -> rustls::HandshakeKind {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await
        .expect("handshake");
    let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
        .await
        .expect("answer within 10 s")
        .ok();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    kind
}

/// A client config trusting `ca`, limited to `versions`.
fn resuming_client(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

#[tokio::test]
async fn returning_tls_clients_resume_instead_of_a_full_handshake() {
    use rustls::HandshakeKind::{Full, Resumed};
    let dir = tempdir();
    let ca = Ca::new(&dir);
    let a = ca.leaf(&dir, "a", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let node = Backend::start("tomcat1", &[]);
    // Defaults: tickets and the session cache on.
    let (_on, port) = tls_gate(std::slice::from_ref(&a), &node.toml(), "");
    for (label, versions) in [
        ("TLS 1.3", &[&rustls::version::TLS13][..]),
        ("TLS 1.2", &[&rustls::version::TLS12][..]),
    ] {
        let client = resuming_client(&ca.pem, versions);
        assert_eq!(resume_probe(port, &client).await, Full, "{label} first");
        assert_eq!(resume_probe(port, &client).await, Resumed, "{label} again");
    }
    // The session cache alone (no tickets) still resumes.
    let (_cache, port) = tls_gate(
        std::slice::from_ref(&a),
        &node.toml(),
        "tls_session_tickets = false",
    );
    let client = resuming_client(&ca.pem, &[&rustls::version::TLS13]);
    assert_eq!(resume_probe(port, &client).await, Full);
    assert_eq!(resume_probe(port, &client).await, Resumed, "cache only");
    // Both off: every handshake is full.
    let (_off, port) = tls_gate(
        &[a],
        &node.toml(),
        "tls_session_tickets = false\ntls_session_cache = 0",
    );
    let client = resuming_client(&ca.pem, &[&rustls::version::TLS13]);
    assert_eq!(resume_probe(port, &client).await, Full);
    assert_eq!(resume_probe(port, &client).await, Full, "resumption off");
}

/// One HTTP/2 request for `route`'s session on `send`: status and body.
async fn h2_slow_get(
    mut send: hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    i: usize,
    route: &str,
) -> (u16, String) {
    let req = http::Request::get("http://127.0.0.1/slow?ms=500")
        .header("cookie", format!("JSESSIONID=S{i:04}.{route}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.expect("h2 stream answered");
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("h2 body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn many_streams_on_one_h2_connection_are_answered_side_by_side() {
    // Twenty streams on one connection, each 500 ms at its node: the
    // streams run inside the connection's task (server::streams), side by
    // side, each sent to the node its cookie names.
    let n1 = Backend::start("tomcat1", &[]);
    let n2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start_with(&format!("{}{}", n1.toml(), n2.toml()), "h2c = true");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gate.port))
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let started = std::time::Instant::now();
    let streams: Vec<_> = (0..20)
        .map(|i| {
            let route = if i % 2 == 0 { "tomcat1" } else { "tomcat2" };
            let send = send.clone();
            tokio::spawn(async move { (route, h2_slow_get(send, i, route).await) })
        })
        .collect();
    for s in streams {
        let (route, (status, body)) = tokio::time::timeout(Duration::from_secs(15), s)
            .await
            .expect("every stream answered within 15 s")
            .unwrap();
        assert_eq!(status, 200, "{route}: {body}");
        assert!(
            body.contains(&format!("\"route\":\"{route}\"")),
            "{route} answered by another node: {body}"
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "20 streams of 500 ms took {took:?}: they did not run side by side"
    );
}
