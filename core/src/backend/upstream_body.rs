//! The request body the pool sends upstream, and the progress tracking the
//! attempt's timer reads. The pool and the health checker send it, the
//! proxy builds it; it lives with the backend so the pool needs nothing
//! from the response side in [`crate::body`] (which re-exports it).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Request body sent upstream: the client's stream, or nothing (a bodiless
/// request rebuilt for a retry).
pub enum UpstreamBody {
    Client(Incoming),
    /// The client's stream, noting progress so the response timeout counts
    /// from the last byte sent rather than from the start of a long upload.
    Tracked(Incoming, Arc<Progress>),
    Empty,
}

/// When the request body last moved, and whether the upstream side is
/// waiting on the client for more: shared with the attempt's timer, so a
/// slow client is never blamed on the backend.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    last_ms: AtomicU64,
    waiting_on_client: AtomicBool,
    /// The whole body went upstream (its end was read from the client).
    complete: AtomicBool,
}

impl Progress {
    /// Progress starting now.
    pub fn new() -> Arc<Self> {
        Arc::new(Progress {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            waiting_on_client: AtomicBool::new(false),
            complete: AtomicBool::new(false),
        })
    }

    /// Whether the body was sent to its end. A connection whose request
    /// body stopped half-way (the backend answered early) still expects
    /// the rest, so it must never carry another request.
    pub fn complete(&self) -> bool {
        self.complete.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the body last made progress (or when tracking began).
    pub fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// The upstream wants more body and the client has not sent it yet.
    pub fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Relaxed)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Client(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Tracked(b, p) => {
                let r = Pin::new(&mut *b).poll_frame(cx);
                p.waiting_on_client.store(r.is_pending(), Ordering::Relaxed);
                if r.is_ready() {
                    p.touch();
                    if matches!(r, Poll::Ready(None)) || b.is_end_stream() {
                        p.complete.store(true, Ordering::Relaxed);
                    }
                }
                r
            }
            UpstreamBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Client(b) | UpstreamBody::Tracked(b, _) => b.is_end_stream(),
            UpstreamBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Client(b) | UpstreamBody::Tracked(b, _) => b.size_hint(),
            UpstreamBody::Empty => SizeHint::with_exact(0),
        }
    }
}
