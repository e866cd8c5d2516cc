//! Facts about a client connection, set by the server when it accepts one
//! and read by the request path and the access log. A plain value here, so
//! the access log does not import the proxy to name it.

use std::net::{IpAddr, SocketAddr};

/// Facts about the client connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The client's address (the TCP peer, before any `X-Forwarded-For`).
    pub peer: SocketAddr,
    /// The connection arrived on a TLS listener.
    pub https: bool,
    /// The peer's address as header text, written once per connection
    /// (every forwarded request carries it in X-Forwarded-For).
    pub ip: IpText,
    /// What the TLS handshake settled (TLS listeners only): AJP backends
    /// pass it on as Tomcat's SSL request attributes.
    pub tls: Option<TlsFacts>,
}

/// The negotiated TLS version and cipher suite of a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFacts {
    pub version: rustls::ProtocolVersion,
    pub suite: rustls::CipherSuite,
}

impl TlsFacts {
    /// What `conn` negotiated, once its handshake is done.
    pub fn of(conn: &rustls::ServerConnection) -> Option<Self> {
        Some(TlsFacts {
            version: conn.protocol_version()?,
            suite: conn.negotiated_cipher_suite()?.suite(),
        })
    }

    /// The version as servlet containers name it (`TLSv1.3`).
    pub fn version_name(&self) -> &'static str {
        match self.version {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        }
    }

    /// The suite's IANA name (`TLS_AES_128_GCM_SHA256`,
    /// `TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384`): rustls names TLS 1.3
    /// suites `TLS13_*`, servlet containers use the IANA `TLS_*`.
    pub fn suite_name(&self) -> &'static str {
        let name = self.suite.as_str().unwrap_or("TLS_UNKNOWN");
        TLS13_IANA
            .iter()
            .find(|(rustls, _)| *rustls == name)
            .map_or(name, |(_, iana)| iana)
    }

    /// Bits of the bulk cipher's key (what `javax.servlet.request.key_size`
    /// reports): 128 for AES-128, 256 for AES-256 and ChaCha20.
    pub fn key_bits(&self) -> Option<u16> {
        let name = self.suite.as_str()?;
        if name.contains("AES_128") {
            Some(128)
        } else if name.contains("AES_256") || name.contains("CHACHA20") {
            Some(256)
        } else {
            None
        }
    }
}

/// rustls's TLS 1.3 suite names and their IANA names (renamed without an
/// allocation per request).
const TLS13_IANA: [(&str, &str); 5] = [
    ("TLS13_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"),
    ("TLS13_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"),
    (
        "TLS13_CHACHA20_POLY1305_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
    ),
    ("TLS13_AES_128_CCM_SHA256", "TLS_AES_128_CCM_SHA256"),
    ("TLS13_AES_128_CCM_8_SHA256", "TLS_AES_128_CCM_8_SHA256"),
];

impl ClientInfo {
    /// The facts of a connection from `peer`.
    pub fn new(peer: SocketAddr, https: bool) -> Self {
        ClientInfo {
            peer,
            https,
            ip: IpText::new(peer.ip()),
            tls: None,
        }
    }
}

/// An IP address as text, formatted once per connection and kept inline
/// (no allocation; `ClientInfo` stays `Copy`). 45 bytes hold the longest
/// form, an IPv6 address with an embedded IPv4 tail.
#[derive(Clone, Copy)]
pub struct IpText {
    len: u8,
    buf: [u8; 45],
}

impl IpText {
    /// `ip` as `Display` writes it.
    pub fn new(ip: IpAddr) -> Self {
        use std::io::Write;
        let mut buf = [0u8; 45];
        let mut w = &mut buf[..];
        let _ = write!(w, "{ip}");
        let len = (45 - w.len()) as u8;
        IpText { len, buf }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// The text's bytes (ASCII), for a header value.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{CipherSuite, ProtocolVersion};

    #[test]
    fn tls_facts_name_suites_and_key_sizes_as_servlet_containers_do() {
        let f = |version, suite| TlsFacts { version, suite };
        let t13 = f(
            ProtocolVersion::TLSv1_3,
            CipherSuite::TLS13_AES_128_GCM_SHA256,
        );
        assert_eq!(t13.suite_name(), "TLS_AES_128_GCM_SHA256");
        assert_eq!((t13.key_bits(), t13.version_name()), (Some(128), "TLSv1.3"));
        let t12 = f(
            ProtocolVersion::TLSv1_2,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        );
        assert_eq!(t12.suite_name(), "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384");
        assert_eq!((t12.key_bits(), t12.version_name()), (Some(256), "TLSv1.2"));
        let cc = f(
            ProtocolVersion::TLSv1_3,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        );
        assert_eq!(cc.key_bits(), Some(256));
    }
}
