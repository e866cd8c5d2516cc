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
}

impl ClientInfo {
    /// The facts of a connection from `peer`.
    pub fn new(peer: SocketAddr, https: bool) -> Self {
        ClientInfo {
            peer,
            https,
            ip: IpText::new(peer.ip()),
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
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
