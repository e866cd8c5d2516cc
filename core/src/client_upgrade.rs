//! The client side of a protocol upgrade (WebSocket, RFC 8441 extended
//! CONNECT), whichever server code carried the connection.
//!
//! HTTP/2 streams are upgraded through hyper's `OnUpgrade`. HTTP/1.1
//! connections are driven by the server itself, without hyper's upgrade
//! support, because an idle one is taken apart to free its buffers (see
//! `server::h1`); after a `101` the server hands the socket to the tunnel
//! through [`HandedOver`] instead.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

/// A byte stream a tunnel can relay on.
pub trait ClientStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientStream for T {}

/// The client's connection once upgraded: plain or TLS, HTTP/1.1 socket or
/// HTTP/2 stream, so one tunnel serves them all.
pub type ClientIo = Box<dyn ClientStream>;

/// Put in an HTTP/1.1 upgrade request's extensions by the server: the
/// socket arrives here once the `101` has been written. (Shared and taken
/// once, because extensions must be `Clone`.)
#[derive(Clone)]
pub struct HandedOver(Arc<Mutex<Option<oneshot::Receiver<ClientIo>>>>);

impl HandedOver {
    /// The receiving end of a handover.
    pub fn new(rx: oneshot::Receiver<ClientIo>) -> Self {
        HandedOver(Arc::new(Mutex::new(Some(rx))))
    }
}

/// Why the client side of an upgrade never arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("the client connection ended before the upgrade completed")]
    Gone,
    #[error("upgrade failed: {0}")]
    Hyper(#[from] hyper::Error),
}

/// Where the client's upgraded connection will come from.
pub enum OnClient {
    Hyper(OnUpgrade),
    Handed(oneshot::Receiver<ClientIo>),
}

impl OnClient {
    /// Take the request's upgrade handle (the server's if it put one,
    /// else hyper's); `None` when the connection cannot be upgraded.
    pub fn take(ext: &mut http::Extensions) -> Option<Self> {
        let hyper = ext.remove::<OnUpgrade>();
        let handed = ext
            .remove::<HandedOver>()
            .and_then(|h| crate::lock::lock(&h.0).take());
        match handed {
            Some(rx) => Some(OnClient::Handed(rx)),
            None => hyper.map(OnClient::Hyper),
        }
    }

    /// Wait for the upgraded connection.
    pub async fn wait(self) -> Result<ClientIo, UpgradeError> {
        match self {
            OnClient::Hyper(on) => Ok(Box::new(TokioIo::new(on.await?))),
            OnClient::Handed(rx) => rx.await.map_err(|_| UpgradeError::Gone),
        }
    }
}
