//! Body types of the proxy: what goes back to the client, and (re-exported
//! from [`crate::backend::upstream_body`]) what goes to a backend. Plain enums (no boxing) so the hot path allocates nothing for
//! them, and bodies always stream: nothing here buffers a payload.

use crate::backend::pool::Sender;
pub use crate::backend::upstream_body::{Progress, UpstreamBody};
use crate::backend::Backend;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// Keeps the bookkeeping of one upstream exchange alive exactly as long as
/// its response body streams: the in-flight count, the connection slot, and
/// the connection itself, which goes back to the pool only when the response
/// was read to the end (a half-read HTTP/1.1 connection is useless).
pub struct UpstreamLease {
    backend: Arc<Backend>,
    sender: Option<Sender>,
    /// The request body's progress, when it had one: the connection is
    /// reusable only if that body was sent to its end.
    request_body: Option<Arc<Progress>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl UpstreamLease {
    /// Count the request in flight on `backend` until this is dropped.
    pub fn begin(backend: Arc<Backend>, permit: Option<OwnedSemaphorePermit>) -> Self {
        backend.inflight.fetch_add(1, Ordering::Relaxed);
        UpstreamLease {
            backend,
            sender: None,
            request_body: None,
            _permit: permit,
        }
    }

    /// Attach the connection that carries the request, and the progress of
    /// the request body it carried (if any).
    pub fn set_sender(&mut self, sender: Sender, request_body: Option<Arc<Progress>>) {
        self.sender = Some(sender);
        self.request_body = request_body;
    }

    /// The response was read completely: the connection may be reused,
    /// unless the request body never reached its end (pool hygiene: the
    /// backend answered early and the connection is mid-request). An
    /// in-task exchange's connection is in its body, which says whether
    /// it may carry another request.
    fn finish(&mut self, body: &mut BackendBody) {
        if let BackendBody::H1(b) = body {
            if let Some(conn) = b.take_reusable() {
                self.backend.pool.checkin_inline(conn);
            }
        }
        let Some(s) = self.sender.take() else { return };
        if self.request_body.as_ref().is_none_or(|p| p.complete()) {
            self.backend.pool.checkin(s);
        }
    }
}

impl Drop for UpstreamLease {
    fn drop(&mut self) {
        self.backend.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a response body stopped short. The client sees an aborted
/// response (connection reset or h2 stream error), never a clean end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("backend response body failed: {0}")]
    Upstream(#[from] hyper::Error),
    #[error("backend paused its response body for longer than {0:?} (upstream.body_timeout)")]
    Stalled(Duration),
    #[error("AJP backend response body failed: {0}")]
    Ajp(#[from] crate::backend::ajp::AjpError),
    #[error("backend response body failed: {0}")]
    H1(#[from] crate::backend::h1::H1Error),
}

/// A backend's response body: HTTP (hyper's stream, untouched, or the
/// in-task exchange's, see `backend::h1`) or AJP (see `backend::ajp`).
pub enum BackendBody {
    Http(Incoming),
    H1(crate::backend::h1::H1Body),
    Ajp(crate::backend::ajp::AjpBody),
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            BackendBody::Http(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::from),
            BackendBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::from),
            BackendBody::Ajp(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            BackendBody::Http(b) => b.is_end_stream(),
            BackendBody::H1(b) => b.is_end_stream(),
            BackendBody::Ajp(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            BackendBody::Http(b) => b.size_hint(),
            BackendBody::H1(b) => b.size_hint(),
            BackendBody::Ajp(b) => b.size_hint(),
        }
    }
}

/// The idle timer of a streaming response body: armed only when the
/// backend makes the body wait, so a response that arrives in one go
/// never allocates a timer.
pub struct IdleTimer {
    limit: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl IdleTimer {
    /// A timer that fires after `limit` without progress.
    pub fn new(limit: Duration) -> Self {
        IdleTimer {
            limit,
            sleep: None,
            armed: false,
        }
    }

    /// The body made progress: the next wait starts a new period.
    fn progress(&mut self) {
        self.armed = false;
    }

    /// The body is waiting: true once the wait exceeded the limit.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            // The clock is read when a wait starts, not on every poll.
            let deadline = tokio::time::Instant::now() + self.limit;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        self.sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
}

/// Response body sent to the client.
pub enum ResponseBody {
    /// Streamed from a backend.
    Upstream {
        body: BackendBody,
        exchange: UpstreamLease,
        idle: IdleTimer,
    },
    /// Generated by the balancer (errors, admin API).
    Full(Option<Bytes>),
}

impl ResponseBody {
    /// A complete body held in memory (small, balancer-made responses).
    pub fn full(b: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(b.into()))
    }

    /// No body.
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Upstream {
                body,
                exchange,
                idle,
            } => match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending if idle.stalled(cx) => {
                    Poll::Ready(Some(Err(BodyError::Stalled(idle.limit))))
                }
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => {
                    exchange.finish(body);
                    Poll::Ready(None)
                }
                Poll::Ready(Some(r)) => {
                    idle.progress();
                    Poll::Ready(Some(r))
                }
            },
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
            ResponseBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { body, .. } => body.size_hint(),
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let ResponseBody::Upstream { body, exchange, .. } = self {
            if body.is_end_stream() {
                exchange.finish(body);
            }
        }
    }
}
