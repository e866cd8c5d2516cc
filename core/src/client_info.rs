//! Facts about a client connection, set by the server when it accepts one
//! and read by the request path and the access log. A plain value here, so
//! the access log does not import the proxy to name it.

use std::net::SocketAddr;

/// Facts about the client connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The client's address (the TCP peer, before any `X-Forwarded-For`).
    pub peer: SocketAddr,
    /// The connection arrived on a TLS listener.
    pub https: bool,
}
