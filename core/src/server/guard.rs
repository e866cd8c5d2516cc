//! Client-connection timers: every connection is bound by a deadline from
//! accept until its first request head is complete, then by
//! `server.idle_timeout` while no request is in flight, and by
//! `server.header_timeout` from the first byte of each later HTTP/1.1 head.
//!
//! Three parts share one [`Timing`]: the IO wrapper [`Guarded`] (sees
//! bytes arrive, answers 408 and fails the read once a deadline passed),
//! the service (counts requests in flight, see [`Timing::begin`]) and the
//! connection task, which sleeps until [`Timing::due`] (re-checked at
//! least every [`Timing::recheck`], so requests never wake it) and then
//! expires the connection.

use super::framing::HeadScan;
use crate::client_upgrade::{ClientIo, HandedOver};
use crate::clock::Coarse;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;

/// How an expired connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head was due: HTTP/1.1 clients get a 408, then close.
    Answer408,
    /// Idle between requests: close without a word (a 408 here could be
    /// read as the answer to a request the client is just sending).
    Close,
}

/// One connection's clock and request count.
pub struct Timing {
    state: Mutex<State>,
    /// The server drains: answers from now on say `Connection: close`
    /// (read once per response, so no lock).
    closing: AtomicBool,
    /// Set with `State::expired`, so that every read (several per
    /// request) looks at a flag instead of taking the lock.
    expired: AtomicBool,
    header: Duration,
    idle: Duration,
}

struct State {
    accepted: Instant,
    requests: u64,
    in_flight: usize,
    /// When the last request ended (or the connection was accepted), and
    /// when the next head began: stamped once per request, compared
    /// against seconds (coarse clock, see [`to_instant`]).
    idle_since: Coarse,
    head_started: Option<Coarse>,
    tunnel: bool,
    expired: Option<Expiry>,
    /// Per request head seen by the HTTP/1.1 scanner, in order: whether it
    /// carried both Content-Length and Transfer-Encoding.
    conflicts: VecDeque<bool>,
    /// Where the socket goes if the request in flight upgrades it
    /// (HTTP/1.1, see `client_upgrade`).
    upgrade: Option<oneshot::Sender<ClientIo>>,
}

impl Timing {
    /// The clock of a connection accepted at `accepted`.
    pub fn new(accepted: Instant, header: Duration, idle: Duration) -> Arc<Self> {
        Arc::new(Timing {
            state: Mutex::new(State {
                accepted,
                requests: 0,
                in_flight: 0,
                idle_since: Coarse::now(),
                head_started: None,
                tunnel: false,
                expired: None,
                conflicts: VecDeque::new(),
                upgrade: None,
            }),
            closing: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            header,
            idle,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock::lock(&self.state)
    }

    /// How often the connection task re-reads the clock: the shorter
    /// timer, so no deadline is ever passed by more than scheduling delay
    /// although nothing wakes the task when a request starts or ends.
    pub fn recheck(&self) -> Duration {
        self.header.min(self.idle).max(Duration::from_millis(1))
    }

    /// Deadline for the first request head (the protocol sniff uses it).
    pub fn first_head_deadline(&self) -> Instant {
        self.lock().accepted + self.header
    }

    /// When the connection expires unless something happens first, and
    /// how; `None` while a request is in flight or a tunnel is open.
    pub fn due(&self) -> Option<(Instant, Expiry)> {
        let s = self.lock();
        if s.tunnel || s.in_flight > 0 || s.expired.is_some() {
            return None;
        }
        Some(if s.requests == 0 {
            (s.accepted + self.header, Expiry::Answer408)
        } else if let Some(t) = s.head_started {
            (to_instant(t) + self.header, Expiry::Answer408)
        } else {
            (to_instant(s.idle_since) + self.idle, Expiry::Close)
        })
    }

    /// Mark the connection expired; the next read fails.
    pub fn expire(&self, how: Expiry) {
        self.lock().expired = Some(how);
        self.expired.store(true, Ordering::Release);
    }

    fn expired(&self) -> Option<Expiry> {
        if !self.expired.load(Ordering::Acquire) {
            return None;
        }
        self.lock().expired
    }

    /// Run the HTTP/1.1 scanner over one read under one lock: `scan` notes
    /// each head it completes (whether it carried conflicting framing) and
    /// says whether any bytes belonged to a head. With nothing in flight,
    /// those start the next head, whose `header_timeout` runs from now.
    fn note_scan(&self, scan: impl FnOnce(&mut dyn FnMut(bool)) -> bool) {
        let mut s = self.lock();
        let head_bytes = scan(&mut |conflict| s.conflicts.push_back(conflict));
        if head_bytes && s.in_flight == 0 && s.requests > 0 && s.head_started.is_none() {
            s.head_started = Some(Coarse::now());
        }
    }

    /// A request reached the service: no deadline until its response body
    /// is done (the guard's drop). Says whether its raw head carried
    /// conflicting framing.
    pub fn begin(self: &Arc<Self>) -> (InFlight, bool) {
        let mut s = self.lock();
        s.requests += 1;
        s.in_flight += 1;
        s.head_started = None;
        let conflict = s.conflicts.pop_front().unwrap_or(false);
        (InFlight(self.clone()), conflict)
    }

    /// The server drains (HTTP/1.1): every answer from now on closes the
    /// connection after it, so a keep-alive client learns it from the
    /// response instead of racing a close with its next request.
    pub fn close_after_response(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// Whether answers must say `Connection: close`.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Whether the connection has been quiet (nothing in flight, no head
    /// started) for `quiet` since `since` and its last request: safe
    /// enough to close while draining.
    pub fn quiet(&self, since: Instant, quiet: Duration) -> bool {
        let s = self.lock();
        s.in_flight == 0
            && s.head_started.is_none()
            && Instant::now() >= to_instant(s.idle_since).max(since) + quiet
    }

    /// A WebSocket tunnel opened on this connection; it has its own idle
    /// timeout (`websocket.idle_timeout`), so the connection's stop here.
    pub fn tunnel(&self) {
        self.lock().tunnel = true;
    }

    /// An HTTP/1.1 request asks to upgrade: should its answer switch
    /// protocols, the socket goes to the returned receiver.
    pub fn expect_upgrade(&self) -> HandedOver {
        let (tx, rx) = oneshot::channel();
        self.lock().upgrade = Some(tx);
        HandedOver::new(rx)
    }

    /// Where the socket goes now that the connection ended, if it ended
    /// in a tunnel.
    pub fn take_upgrade(&self) -> Option<oneshot::Sender<ClientIo>> {
        let mut s = self.lock();
        let tx = s.upgrade.take();
        tx.filter(|_| s.tunnel)
    }

    /// When an idle HTTP/1.1 connection may be taken apart (see
    /// `server::h1`): `after` past the end of its last request, provided
    /// one was served, nothing is in flight and no next head has begun.
    pub fn park_at(&self, after: Duration) -> Option<Instant> {
        let s = self.lock();
        let idle = s.requests > 0
            && s.in_flight == 0
            && s.head_started.is_none()
            && !s.tunnel
            && s.expired.is_none();
        idle.then(|| to_instant(s.idle_since) + after)
    }
}

/// A coarse reading as an `Instant`, for the deadlines the connection's
/// watcher sleeps to: read when it computes one (every `recheck`, not per
/// request), off by at most one kernel tick.
fn to_instant(c: Coarse) -> Instant {
    let now = Instant::now();
    now.checked_sub(c.elapsed()).unwrap_or(now)
}

/// A request in flight; dropped with its response body.
pub struct InFlight(Arc<Timing>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.idle_since = Coarse::now();
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted in flight until the
    /// last byte left (or the body was dropped).
    pub struct Tracked<B> {
        #[pin]
        pub body: B,
        pub guard: Option<InFlight>,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let r = this.body.poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Which protocol the first bytes announce.
pub enum Sniffed {
    /// The full HTTP/2 client preface (24 bytes, kept to replay).
    H2(Bytes),
    /// Anything else: HTTP/1.x (the bytes read so far, kept to replay).
    H1(Bytes),
    /// The deadline passed first, with these bytes read.
    Late(Bytes),
    /// The client closed before saying anything useful.
    Closed,
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Read until the bytes are or are not the HTTP/2 preface, by `deadline`
/// (hyper's own sniffing waits forever on a partial preface).
pub async fn sniff<I: AsyncRead + Unpin>(io: &mut I, deadline: Instant) -> Sniffed {
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    loop {
        let mut chunk = [0u8; 24];
        let want = H2_PREFACE.len() - buf.len();
        let read = tokio::time::timeout_at(deadline, io.read(&mut chunk[..want])).await;
        match read {
            Err(_) => return Sniffed::Late(buf.into()),
            Ok(Err(_)) | Ok(Ok(0)) => return Sniffed::Closed,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf[..] != H2_PREFACE[..buf.len()] {
            return Sniffed::H1(buf.into());
        }
        if buf.len() == H2_PREFACE.len() {
            return Sniffed::H2(buf.into());
        }
    }
}

/// The answer to a client whose request head did not arrive in time.
pub fn response_408() -> Vec<u8> {
    let body = "408 request timeout: request headers not received in time\n";
    format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pin_project_lite::pin_project! {
    /// The client IO as hyper sees it: replays the sniffed bytes, feeds the
    /// timers and the HTTP/1.1 head scanner, fails reads once expired, and
    /// holds the connection's `max_connections` slot until dropped (after
    /// an upgrade, when the tunnel ends).
    pub struct Guarded<I> {
        #[pin]
        io: I,
        prefix: Bytes,
        timing: Arc<Timing>,
        scan: Option<HeadScan>,
        answered: bool,
        _slot: Option<OwnedSemaphorePermit>,
    }
}

impl<I> Guarded<I> {
    /// Wrap `io`; `http1` turns on the head scanner and the per-head timer.
    pub fn new(
        io: I,
        prefix: Bytes,
        timing: Arc<Timing>,
        http1: bool,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Guarded {
            io,
            prefix,
            timing,
            scan: http1.then(HeadScan::default),
            answered: false,
            _slot: slot,
        }
    }
}

impl<I: Unpin> Guarded<I> {
    /// The socket itself, to wait on while the connection is parked.
    pub fn inner_mut(&mut self) -> &mut I {
        &mut self.io
    }

    /// Bytes read from the socket but not yet served (hyper's read buffer
    /// when the connection is taken apart, or what woke a parked one): the
    /// next reads return them first.
    pub fn replay(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if self.prefix.is_empty() {
            // A copy: `bytes` may be a view into hyper's whole read buffer.
            self.prefix = Bytes::copy_from_slice(&bytes);
        } else {
            let mut all = Vec::with_capacity(bytes.len() + self.prefix.len());
            all.extend_from_slice(&bytes);
            all.extend_from_slice(&self.prefix);
            self.prefix = all.into();
        }
    }

    /// Whether replayed bytes wait to be read.
    pub fn has_replay(&self) -> bool {
        !self.prefix.is_empty()
    }

    /// The connection became a tunnel: its bytes are no longer request
    /// heads, so the scanner (and its per-head bookkeeping) stops.
    pub fn into_tunnel(mut self) -> Self {
        self.scan = None;
        self
    }
}

impl<I: AsyncRead + AsyncWrite> AsyncRead for Guarded<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if let Some(how) = this.timing.expired() {
            if how == Expiry::Answer408 && this.scan.is_some() && !*this.answered {
                *this.answered = true;
                let msg = response_408();
                let _ = this.io.as_mut().poll_write(cx, &msg);
                let _ = this.io.as_mut().poll_flush(cx);
            }
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        let before = buf.filled().len();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            if this.prefix.is_empty() {
                // Let go of the buffer the replayed bytes came in.
                *this.prefix = Bytes::new();
            }
        } else {
            std::task::ready!(this.io.as_mut().poll_read(cx, buf))?;
        }
        let new = &buf.filled()[before..];
        if let (Some(scan), false) = (this.scan.as_mut(), new.is_empty()) {
            this.timing.note_scan(|note| scan.feed(new, note));
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite> AsyncWrite for Guarded<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
