//! HTTP/1.1 client connections, parked while idle.
//!
//! hyper keeps a read buffer and a write buffer (8 KiB each) for the whole
//! life of a connection, and a keep-alive browser connection is idle most
//! of that life. After [`PARK_AFTER`] without a request, the connection is
//! taken apart (hyper shuts an idle connection down without a word and
//! gives the socket back) and only the socket is kept, with its timers; its
//! next bytes start a fresh hyper connection that reads them first. So an
//! idle connection costs its socket and a small task, as in HAProxy, whose
//! buffers also go back to a pool between requests.
//!
//! The server drives the connection with `poll_without_shutdown` for that,
//! so it also hands the socket over to a tunnel itself after a `101`
//! (see `client_upgrade`), instead of through hyper's upgrade support.

use super::guard::Guarded;
use super::{log_conn_error, ClientService, End, ServerStats, Watch, DRAIN_QUIET};
use crate::config::raw::ServerSection;
use bytes::Bytes;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// How long an HTTP/1.1 connection stays idle before it gives its buffers
/// back: long enough that a client sending requests back to back never
/// pays for a new hyper connection, short enough that browsers' idle
/// keep-alive connections (open for minutes) cost almost nothing.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// How long a closing connection may take to flush and say goodbye (TLS
/// `close_notify`, FIN) before it is dropped.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// Bytes read to wake a parked connection: they go back in front of the
/// next read, and a small buffer keeps the parked task small.
const WAKE_READ: usize = 16;

/// An HTTP/1.1 connection between two hyper connections: all a parked
/// one keeps.
pub(super) struct Conn<I> {
    pub watch: Watch,
    pub io: Guarded<I>,
    pub svc: ClientService,
    pub cfg: Arc<ServerSection>,
}

/// Serve one HTTP/1.1 connection until it ends or parks; a parked one
/// waits in a task of its own, a small one (the serving task, sized for
/// hyper and the timers, ends).
pub(super) async fn serve<I>(mut c: Conn<I>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    loop {
        // Boxed: the connection (and its buffers) exists only while served.
        let mut conn =
            Box::new(builder(&c.cfg).serve_connection(TokioIo::new(c.io), c.svc.clone()));
        let end = c
            .watch
            .run(
                Pin::new(&mut Unshut(&mut conn)),
                |mut u| Pin::new(&mut **u.0).graceful_shutdown(),
                Some(PARK_AFTER),
            )
            .await;
        let parked = match end {
            End::Ended(Err(e)) => return log_conn_error(c.watch.peer, &e),
            End::Stopped => return,
            End::Ended(Ok(())) => false,
            End::Parked => true,
        };
        let parts = conn.into_parts();
        c.io = parts.io.into_inner();
        c.io.replay(parts.read_buf);
        if let Some(to_tunnel) = c.watch.timing.take_upgrade() {
            let _ = to_tunnel.send(Box::new(c.io.into_tunnel()));
            return;
        }
        if !parked {
            return close(c.io).await;
        }
        if !c.io.has_replay() {
            tokio::spawn(park(c));
            return;
        }
    }
}

/// A parked connection's task: wait for its next bytes, then serve them
/// in a new task. (Not an `async fn`: that would keep its argument twice
/// in the task, as argument and as local.)
#[allow(clippy::manual_async_fn)]
fn park<I>(mut c: Conn<I>) -> impl Future<Output = ()> + Send
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        match c.watch.parked(c.io.inner_mut()).await {
            Some(bytes) => {
                c.io.replay(bytes);
                tokio::spawn(serve_boxed(c));
            }
            None => close(c.io).await,
        }
    }
}

/// Say goodbye (TLS `close_notify`, FIN), bounded by [`SHUTDOWN_WAIT`].
async fn close<I: AsyncWrite + Unpin>(mut io: I) {
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, io.shutdown()).await;
}

/// [`serve`] behind a box: its size stays out of the parked task, and the
/// two functions' types out of each other.
fn serve_boxed<I>(c: Conn<I>) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(serve(c))
}

/// One parked connection in `ServerStats::parked`, for as long as it is.
struct Parked(Arc<ServerStats>);

impl Parked {
    fn count(stats: Arc<ServerStats>) -> Self {
        stats.parked.fetch_add(1, Ordering::Relaxed);
        Parked(stats)
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The hyper side of a connection, set up from `[server]`. Header and idle
/// timing are the guard's (hyper's header timer would also cut idle
/// keep-alive at `header_timeout`). Answers are copied into the
/// connection's buffer and sent with one `send` (`writev(false)`): for the
/// small answers that dominate, cheaper than queueing head and body for a
/// vectored write (-1.8 % instructions per request, and a plain send);
/// a backend's body arrives in chunks of at most
/// `pool_conn::MAX_READ_BUF`, which bounds what that buffer grows to.
fn builder(cfg: &ServerSection) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(cfg.max_header_size.max(8192))
        .max_headers(cfg.max_headers)
        .writev(false)
        .keep_alive(true);
    b
}

/// A connection polled to its end without shutting its socket down, so it
/// can be parked or handed to a tunnel.
struct Unshut<'a, C>(&'a mut Box<C>);

impl<I> Future for Unshut<'_, http1::Connection<TokioIo<Guarded<I>>, ClientService>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = hyper::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_without_shutdown(cx)
    }
}

impl Watch {
    /// Wait on a parked connection's socket: its first bytes (to replay),
    /// or `None` once it should close: the client closed, the idle timeout
    /// passed, or the server drains (a parked connection has been quiet for
    /// longer than [`DRAIN_QUIET`] already).
    async fn parked<I: AsyncRead + Unpin>(&mut self, io: &mut I) -> Option<Bytes> {
        const _: () = assert!(PARK_AFTER.as_millis() >= DRAIN_QUIET.as_millis());
        if self.draining.is_some() {
            return None;
        }
        let _counted = Parked::count(self.stats.clone());
        let mut buf = [0u8; WAKE_READ];
        loop {
            let at = self
                .timing
                .due()
                .map_or(Instant::now() + self.timing.recheck(), |(at, _)| at);
            tokio::select! {
                r = io.read(&mut buf) => {
                    return match r {
                        Ok(n) if n > 0 => Some(Bytes::copy_from_slice(&buf[..n])),
                        _ => None,
                    };
                }
                _ = self.drain.changed() => {
                    self.draining = Some(Instant::now());
                    return None;
                }
                _ = tokio::time::sleep_until(at) => {
                    if self.expire_if_due().is_some() {
                        return None;
                    }
                }
            }
        }
    }
}
