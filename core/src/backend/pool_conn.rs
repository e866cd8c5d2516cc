//! The task behind one pooled HTTP/1.1 upstream connection, which parks
//! the connection while it sits idle.
//!
//! hyper's client connection holds a read buffer, a write buffer and a
//! request channel (~25 KiB together) for as long as it lives, and after a
//! burst the pool keeps hundreds of connections that nobody uses for
//! seconds. Once the pool has held one idle for [`PARK_AFTER`], it drops
//! the connection's sender ([`ConnWatch::park`]); hyper then ends the
//! connection without closing the socket, and this task keeps only the
//! socket, still watching it: a backend closing it is seen at once, as
//! before. A checkout of a parked connection asks the task for a fresh
//! sender on the same socket (no new TCP or TLS handshake).

use super::pool::Io;
use super::upstream_body::UpstreamBody;
use crate::lock::lock;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{oneshot, Notify};

/// Largest read buffer of an upstream HTTP/1.1 connection, so also about
/// the largest response head a backend may send (hyper reads a little
/// past it; nginx allows 4-8 KiB by default, HAProxy 16 KiB). hyper would
/// grow it to 400 KiB: a large body would then reach a client connection
/// in chunks that big, each copied whole into its write buffer
/// (`server::h1`).
pub const MAX_READ_BUF: usize = 64 * 1024;

/// How every upstream HTTP/1.1 connection is set up (fresh or taken out
/// of parking).
pub fn builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.max_buf_size(MAX_READ_BUF);
    b
}

/// How long a pooled connection stays idle before it gives its buffers
/// back: a connection reused within a second (a steady load) never pays
/// for a new hyper connection.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// A fresh sender on a parked connection's socket.
pub type Unparked = oneshot::Sender<http1::SendRequest<UpstreamBody>>;

/// Shared by a pooled HTTP/1.1 connection and the task driving it, so the
/// pool learns at once when the backend closes a connection that sat idle
/// in the pool: a node starting a graceful stop (Tomcat closes its idle
/// keep-alive connections first) is seen before any request fails.
#[derive(Debug, Default)]
pub struct ConnWatch {
    /// In the pool, waiting for a request.
    pub idle: AtomicBool,
    /// The pool dropped the sender on purpose: the task keeps the socket.
    parking: AtomicBool,
    /// The task ended (the backend closed the socket, or it failed).
    dead: AtomicBool,
    /// Set when a parked connection leaves the pool: where its fresh
    /// sender goes, or nothing when the pool dropped it.
    wanted: Mutex<Option<Unparked>>,
    /// Wakes the parked task when it left the pool.
    left: Notify,
}

impl ConnWatch {
    /// The pool is about to drop this connection's sender to park it.
    pub fn park(&self) {
        self.parking.store(true, Ordering::Relaxed);
    }

    /// Parked (its sender dropped by the pool).
    pub fn is_parked(&self) -> bool {
        self.parking.load(Ordering::Relaxed)
    }

    /// Whether the task has ended: a parked connection that is gone.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// A parked connection leaves the pool for reuse: its task makes a
    /// fresh sender on the socket and sends it to `to`. False when the
    /// task has already ended.
    pub fn unpark(&self, to: Unparked) -> bool {
        let mut wanted = lock(&self.wanted);
        if self.is_dead() {
            return false;
        }
        *wanted = Some(to);
        drop(wanted);
        self.left.notify_one();
        true
    }

    /// A parked connection leaves the pool for good: its task closes it.
    pub fn drop_parked(&self) {
        lock(&self.wanted).take();
        self.left.notify_one();
    }

    /// The task ends: a checkout waiting on it hears so at once.
    fn died(&self) {
        let mut wanted = lock(&self.wanted);
        self.dead.store(true, Ordering::Relaxed);
        wanted.take();
    }
}

/// A pooled connection as hyper drives it.
pub type Connection = http1::Connection<TokioIo<Box<dyn Io>>, UpstreamBody>;

/// Drive a pooled connection until it ends, parking it whenever the pool
/// asks; `on_idle_close` runs when the backend closes it while it sits in
/// the pool.
pub async fn drive(mut conn: Box<Connection>, watch: Arc<ConnWatch>, on_idle_close: impl Fn()) {
    // Boxed (by the caller too): the connection (and its buffers) exists
    // only while unparked, and the task stays small.
    loop {
        let ended = poll_fn(|cx| conn.poll_without_shutdown(cx)).await;
        if let Err(e) = &ended {
            tracing::debug!(error = %e, "upstream connection ended");
        }
        if ended.is_err() || !watch.is_parked() {
            break;
        }
        let http1::Parts { io, read_buf, .. } = take_apart(conn);
        if !read_buf.is_empty() {
            // The backend said something unasked: not reusable.
            break;
        }
        // Empty, but it still holds hyper's whole read buffer.
        drop(read_buf);
        let mut io = io.into_inner();
        let mut byte = [0u8; 1];
        let to = tokio::select! {
            // The socket first: when the backend closed it and a checkout
            // asks at the same moment, the close wins and the checkout
            // counts a peer close, instead of getting a dead socket.
            biased;
            // Any byte or EOF from an idle backend ends the connection.
            _ = io.read(&mut byte) => None,
            _ = watch.left.notified() => lock(&watch.wanted).take(),
        };
        let Some(to) = to else {
            break;
        };
        let Ok((sender, fresh)) = builder().handshake(TokioIo::new(io)).await else {
            break;
        };
        watch.parking.store(false, Ordering::Relaxed);
        if to.send(sender).is_err() {
            break;
        }
        conn = Box::new(fresh);
    }
    watch.died();
    if watch.idle.load(Ordering::Relaxed) {
        on_idle_close();
    }
}

/// The connection's socket and unread bytes; its box is freed here, so a
/// parked connection holds nothing of hyper's.
fn take_apart(conn: Box<Connection>) -> http1::Parts<TokioIo<Box<dyn Io>>> {
    conn.into_parts()
}
