//! Upstream connections: connect with a short timeout, TCP keepalive and
//! optional TLS; keep idle HTTP/1.1 connections per backend for reuse, or
//! one shared multiplexed connection for HTTP/2 backends.
//!
//! Each request thread (`server.threads`) has its own share of every pool:
//! a connection is reused on the core that made it (its driving task lives
//! there), and checkout/checkin never wait on another core. The lock of a
//! share is only ever taken by its own thread on the request path (the
//! status API and `clear` are the rare others).
//!
//! A hand-rolled pool instead of hyper-util's client because the proxy must
//! know, for each attempt, whether the request had left the balancer: a
//! connect failure leaves the request (and its unsent body) in our hands, so
//! even a POST can be retried on another node.

use super::h1;
use super::pool_conn::{self, ConnWatch};
use super::upstream_body::UpstreamBody;
use crate::clock::Coarse;
use crate::config::{BackendConfig, Keepalive};
use crate::lock::lock;
use futures_util::future::Either;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::ServerName;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;

/// Pool limits and socket options shared by every backend.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    pub keepalive: Keepalive,
    pub max_connections: usize,
    pub queue_timeout: Duration,
    /// Request threads sharing the pool; `max_idle` is split among them.
    pub threads: usize,
}

impl PoolSettings {
    /// The pool settings `[upstream]` asks for.
    pub fn from_upstream(up: &crate::config::raw::UpstreamSection) -> Self {
        PoolSettings {
            connect_timeout: up.connect_timeout,
            idle_timeout: up.pool_idle_timeout,
            max_idle: up.pool_max_idle,
            keepalive: up.tcp_keepalive.to_socket(),
            max_connections: up.max_connections,
            queue_timeout: up.queue_timeout,
            threads: 1,
        }
    }

    /// The same settings for a pool used by `threads` request threads.
    pub fn for_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }
}

/// Why no connection could be had. All of these mean the request never
/// reached the backend, so it may be retried elsewhere whatever its method.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(hyper::Error),
    #[error("address {0} did not resolve")]
    Resolve(String),
    #[error("all {0} connection slots busy for longer than the queue timeout")]
    Queue(usize),
    #[error("TLS setup for this backend failed: {0}")]
    Tls(String),
    #[error("the backend closed {0} pooled connection(s): it may be stopping")]
    Closing(usize),
}

/// A connection able to carry requests: HTTP/1.1 (one at a time) or
/// HTTP/2 (multiplexed, shared).
pub enum Sender {
    H1(http1::SendRequest<UpstreamBody>, Arc<ConnWatch>),
    H2(http2::SendRequest<UpstreamBody>),
}

/// When the backend last closed an idle pooled connection.
#[derive(Debug)]
struct PeerCloses {
    origin: Instant,
    /// Milliseconds since `origin` (+1, so 0 means never).
    last_ms: AtomicU64,
}

impl PeerCloses {
    fn note(&self) {
        let ms = self.origin.elapsed().as_millis() as u64 + 1;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn within(&self, window: Duration) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        last != 0 && (self.origin.elapsed().as_millis() as u64) < last + window.as_millis() as u64
    }
}

/// How long after the backend closed an idle pooled connection the pool
/// treats it as possibly stopping (see `Pool::checkout`).
const CLOSING_WINDOW: Duration = Duration::from_secs(1);

impl Sender {
    /// The connection is gone.
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s, _) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// Send a request; if it could not be handed to the connection at all,
    /// the error gives the request back (see `TrySendError::take_message`).
    ///
    /// hyper's own future, not an `async fn` around it: that would keep a
    /// second copy of the request (~270 bytes) in its state and move it
    /// once more, on every request.
    pub fn try_send(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>>> + '_
    {
        match self {
            Sender::H1(s, _) => Either::Left(s.try_send_request(req)),
            Sender::H2(s) => Either::Right(s.try_send_request(req)),
        }
    }
}

/// A connection ready to carry one request.
pub struct Conn {
    pub sender: Sender,
    /// Taken from the pool (it may have gone stale) rather than fresh.
    pub reused: bool,
    /// Idle connections found closed by the backend on the way (a sign it
    /// may be stopping; see `health::closing_seen`).
    pub peer_closed: usize,
}

struct Idle {
    /// `Some` until taken, or until parked (see `pool_conn`).
    sender: Option<http1::SendRequest<UpstreamBody>>,
    watch: Arc<ConnWatch>,
    /// Pooled at (idle ages are compared against seconds: coarse clock).
    since: Coarse,
    /// A parked connection taken for reuse (its task must keep it).
    reused: bool,
}

impl Idle {
    /// Still usable as far as the pool can tell.
    fn alive(&self) -> bool {
        match &self.sender {
            Some(s) => !s.is_closed(),
            None => self.watch.is_parked() && !self.watch.is_dead(),
        }
    }
}

impl Drop for Idle {
    /// Leaving the pool (taken, expired, cleared): a close from now on is
    /// not the backend closing an idle connection; a parked one not taken
    /// for reuse is closed by its task.
    fn drop(&mut self) {
        self.watch.idle.store(false, Ordering::Relaxed);
        if self.sender.is_none() && !self.reused && self.watch.is_parked() {
            self.watch.drop_parked();
        }
    }
}

/// What `take_idle` found.
enum Taken {
    Live(http1::SendRequest<UpstreamBody>, Arc<ConnWatch>),
    /// Parked: its task makes a fresh sender on request.
    Parked(Arc<ConnWatch>),
}

struct Tls {
    /// ALPN http/1.1 (pooled HTTP/1.1 and WebSocket upgrades).
    h1: TlsConnector,
    /// ALPN h2.
    h2: TlsConnector,
    name: ServerName<'static>,
}

/// One request thread's share of a pool, on its own cache lines so two
/// cores never write the same one.
#[repr(align(128))]
#[derive(Default)]
struct Share {
    idle: Mutex<Vec<Idle>>,
    /// Idle connections of the in-task exchange (see [`h1`]), newest last.
    inline: Mutex<Vec<InlineIdle>>,
    shared_h2: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
}

/// An idle connection of the in-task exchange. It has no task watching
/// it: a backend closing it is seen by the next checkout of its thread,
/// by any thread's next fresh connection ([`Pool::fresh_allowed`]), or by
/// the housekeeper's next tick ([`Pool::drop_expired`]), whichever comes
/// first.
struct InlineIdle {
    conn: h1::Conn,
    since: Coarse,
}

/// Per-backend pool of idle keep-alive connections.
pub struct Pool {
    host: Arc<str>,
    port: u16,
    http2: bool,
    /// Plain HTTP/1.1 over TCP (not TLS, h2 or AJP): bodiless requests
    /// use the in-task exchange ([`h1`]).
    inline: bool,
    tls: Option<Tls>,
    tls_error: Option<String>,
    settings: PoolSettings,
    /// One per request thread, then one for every other thread.
    shares: Box<[Share]>,
    /// Idle connections kept per share (`max_idle` split over threads).
    max_idle: usize,
    peer_closes: Arc<PeerCloses>,
    limit: Option<Arc<Semaphore>>,
}

impl Pool {
    /// An empty pool for one backend.
    pub fn new(cfg: &BackendConfig, settings: PoolSettings) -> Self {
        let limit = (settings.max_connections > 0)
            .then(|| Arc::new(Semaphore::new(settings.max_connections)));
        let (tls, tls_error) = if cfg.tls {
            match tls_client(cfg) {
                Ok(t) => (Some(t), None),
                Err(e) => {
                    tracing::error!(backend = &*cfg.route, error = %e, "TLS setup failed; requests to this backend will fail");
                    (None, Some(e))
                }
            }
        } else {
            (None, None)
        };
        Pool {
            host: cfg.host.clone(),
            port: cfg.port,
            http2: cfg.http2,
            inline: !cfg.http2 && !cfg.tls && cfg.ajp.is_none(),
            tls,
            tls_error,
            shares: (0..=settings.threads).map(|_| Share::default()).collect(),
            max_idle: settings.max_idle.div_ceil(settings.threads),
            peer_closes: Arc::new(PeerCloses {
                origin: Instant::now(),
                last_ms: AtomicU64::new(0),
            }),
            limit,
            settings,
        }
    }

    /// The calling thread's share: its request thread's, or the last one
    /// off the request path.
    fn share(&self) -> &Share {
        let threads = self.shares.len() - 1;
        let i = crate::thread_index::current().map_or(threads, |w| w % threads);
        &self.shares[i]
    }

    /// Wait for a request slot when `max_connections` is set (HAProxy's
    /// maxconn + queue); `None` when unlimited.
    pub async fn permit(&self) -> Result<Option<OwnedSemaphorePermit>, ConnectError> {
        let Some(sem) = &self.limit else {
            return Ok(None);
        };
        match tokio::time::timeout(self.settings.queue_timeout, sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(ConnectError::Queue(self.settings.max_connections)),
        }
    }

    /// A reusable connection if one is alive, else a new one. With
    /// `fresh_after_close` false, idle connections found closed by the
    /// backend end the checkout with [`ConnectError::Closing`] instead of
    /// a fresh connection (the retry policy would rather move the request
    /// than try a node that may be stopping).
    pub async fn checkout(&self, fresh_after_close: bool) -> Result<Conn, ConnectError> {
        if self.http2 {
            let share = self.share();
            let shared = lock(&share.shared_h2).clone();
            if let Some(mut s) = shared.filter(|s| !s.is_closed()) {
                if self.ready_within(s.ready()).await {
                    return Ok(Conn {
                        sender: Sender::H2(s),
                        reused: true,
                        peer_closed: 0,
                    });
                }
            }
            let s = Box::pin(self.connect_h2()).await?;
            *lock(&share.shared_h2) = Some(s.clone());
            return Ok(Conn {
                sender: Sender::H2(s),
                reused: false,
                peer_closed: 0,
            });
        }
        let mut peer_closed = 0;
        while let Some(taken) = self.take_idle(&mut peer_closed) {
            let (mut sender, watch) = match taken {
                Taken::Live(sender, watch) => (sender, watch),
                Taken::Parked(watch) => match self.unpark(&watch).await {
                    Some(sender) => (sender, watch),
                    None => {
                        peer_closed += 1;
                        continue;
                    }
                },
            };
            if self.ready_within(sender.ready()).await {
                return Ok(Conn {
                    sender: Sender::H1(sender, watch),
                    reused: true,
                    peer_closed,
                });
            }
            peer_closed += 1;
        }
        let peer_closed = self.fresh_allowed(peer_closed, fresh_after_close)?;
        // Boxed: the dial, TLS and handshake state (~1.3 KiB) would
        // otherwise be part of every checkout, also of the pooled ones.
        Box::pin(self.connect_tracked(true))
            .await
            .map(|(s, watch)| Conn {
                sender: Sender::H1(s, watch),
                reused: false,
                peer_closed,
            })
    }

    /// Before a fresh connection: the idle connections found closed by the
    /// backend (`peer_closed`, or one when it closed any within
    /// [`CLOSING_WINDOW`]), or [`ConnectError::Closing`] when there were
    /// some and `fresh_after_close` is false (see [`Pool::checkout`]).
    fn fresh_allowed(
        &self,
        mut peer_closed: usize,
        fresh_after_close: bool,
    ) -> Result<usize, ConnectError> {
        if peer_closed == 0
            && (self.peer_closes.within(CLOSING_WINDOW) || self.inline_closes_unseen())
        {
            peer_closed = 1;
        }
        if peer_closed > 0 && !fresh_after_close {
            return Err(ConnectError::Closing(peer_closed));
        }
        Ok(peer_closed)
    }

    /// Whether the backend closed an idle in-task connection of any
    /// thread since anyone looked. No task watches those (see
    /// [`InlineIdle`]), so the pool looks before a fresh connection, where
    /// hyper's connection tasks would have told it at once: a node closing
    /// its idle connections on one thread is stopping for every thread,
    /// and this thread's own idle ones may all have been busy at the time.
    fn inline_closes_unseen(&self) -> bool {
        self.inline
            && self
                .shares
                .iter()
                .map(|share| self.drop_closed_inline(&mut lock(&share.inline)))
                .sum::<usize>()
                > 0
    }

    /// Drop the idle in-task connections the backend closed, noting the
    /// close (see [`PeerCloses`]); returns how many went.
    fn drop_closed_inline(&self, idle: &mut Vec<InlineIdle>) -> usize {
        let before = idle.len();
        idle.retain(|c| c.conn.idle_and_open());
        let closed = before - idle.len();
        if closed > 0 {
            self.peer_closes.note();
        }
        closed
    }

    /// Whether bodiless requests to this backend take the in-task
    /// HTTP/1.1 exchange ([`h1`]): plain HTTP/1.1 over TCP.
    pub fn inline(&self) -> bool {
        self.inline
    }

    /// A connection for the in-task exchange: the newest idle one still
    /// open, else a fresh one; with the idle ones found closed by the
    /// backend on the way. `fresh_after_close` as for [`Pool::checkout`].
    pub async fn checkout_inline(
        &self,
        fresh_after_close: bool,
    ) -> Result<(h1::Conn, usize), ConnectError> {
        let mut peer_closed = 0;
        if let Some(conn) = self.take_inline(&mut peer_closed) {
            return Ok((conn, peer_closed));
        }
        let peer_closed = self.fresh_allowed(peer_closed, fresh_after_close)?;
        let t = self.settings.connect_timeout;
        // Boxed: the dial's state would otherwise size every request's
        // future, also of the pooled ones.
        let stream = Box::pin(tokio::time::timeout(t, self.dial_tcp()))
            .await
            .map_err(|_| ConnectError::Timeout(t))??;
        Ok((h1::Conn::new(stream), peer_closed))
    }

    /// The newest idle in-task connection that is still open; counts in
    /// `peer_closed` those the backend closed.
    fn take_inline(&self, peer_closed: &mut usize) -> Option<h1::Conn> {
        let mut idle = lock(&self.share().inline);
        let now = Coarse::now();
        while let Some(InlineIdle { mut conn, since }) = idle.pop() {
            if now.since(since) >= self.settings.idle_timeout {
                // Newest last: all the others are older still.
                idle.clear();
                return None;
            }
            if !conn.idle_and_open() {
                *peer_closed += 1;
                self.peer_closes.note();
                continue;
            }
            conn.reused = true;
            return Some(conn);
        }
        None
    }

    /// Return an in-task connection whose response was read to its end.
    pub fn checkin_inline(&self, conn: h1::Conn) {
        let mut idle = lock(&self.share().inline);
        if idle.len() >= self.max_idle {
            idle.retain(|c| c.conn.idle_and_open());
        }
        if idle.len() < self.max_idle {
            idle.push(InlineIdle {
                conn,
                since: Coarse::now(),
            });
        }
    }

    /// A fresh sender on a parked connection's socket, from its task (on
    /// this thread), within the connect timeout.
    async fn unpark(&self, watch: &ConnWatch) -> Option<http1::SendRequest<UpstreamBody>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if !watch.unpark(tx) {
            return None;
        }
        match tokio::time::timeout(self.settings.connect_timeout, rx).await {
            Ok(Ok(sender)) => Some(sender),
            _ => None,
        }
    }

    /// Whether a pooled connection became ready within the connect timeout:
    /// every wait on an upstream connection is bounded, and one that is
    /// not ready by then is dropped rather than waited on.
    async fn ready_within(
        &self,
        ready: impl std::future::Future<Output = Result<(), hyper::Error>>,
    ) -> bool {
        matches!(
            tokio::time::timeout(self.settings.connect_timeout, ready).await,
            Ok(Ok(()))
        )
    }

    /// A fresh connection in the backend's protocol, bypassing the pool
    /// (health checks must prove new connections work).
    pub async fn connect_any(&self) -> Result<Sender, ConnectError> {
        if self.http2 {
            self.connect_h2().await.map(Sender::H2)
        } else {
            self.connect_tracked(true)
                .await
                .map(|(s, w)| Sender::H1(s, w))
        }
    }

    /// A fresh HTTP/1.1 connection with upgrades (WebSocket tunnels use
    /// it), whatever the backend's usual protocol; it never returns to the
    /// pool.
    pub async fn connect_upgrade(&self) -> Result<Conn, ConnectError> {
        let (s, w) = self.connect_tracked(false).await?;
        Ok(Conn {
            sender: Sender::H1(s, w),
            reused: false,
            peer_closed: 0,
        })
    }

    /// A fresh HTTP/1.1 connection whose task tells the pool when the
    /// backend closes it while it sits idle in the pool; one for the pool
    /// parks while idle, one for an upgrade can be upgraded instead.
    async fn connect_tracked(
        &self,
        pooled: bool,
    ) -> Result<(http1::SendRequest<UpstreamBody>, Arc<ConnWatch>), ConnectError> {
        let t = self.settings.connect_timeout;
        let stream = tokio::time::timeout(t, self.dial(false))
            .await
            .map_err(|_| ConnectError::Timeout(t))??;
        let (sender, conn) = pool_conn::builder()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        let watch = Arc::new(ConnWatch::default());
        let (w, closes) = (watch.clone(), self.peer_closes.clone());
        if pooled {
            tokio::spawn(pool_conn::drive(Box::new(conn), w, move || closes.note()));
        } else {
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
                if w.idle.load(Ordering::Relaxed) {
                    closes.note();
                }
            });
        }
        Ok((sender, watch))
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<UpstreamBody>, ConnectError> {
        let t = self.settings.connect_timeout;
        let stream = tokio::time::timeout(t, self.dial(true))
            .await
            .map_err(|_| ConnectError::Timeout(t))??;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream h2 connection ended");
            }
        });
        Ok(sender)
    }

    /// TCP (and TLS when the backend is https) to the backend.
    async fn dial(&self, h2: bool) -> Result<Box<dyn Io>, ConnectError> {
        let tcp = self.dial_tcp().await?;
        if let Some(e) = &self.tls_error {
            return Err(ConnectError::Tls(e.clone()));
        }
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let connector = if h2 { &tls.h2 } else { &tls.h1 };
        let s = connector.connect(tls.name.clone(), tcp).await?;
        Ok(Box::new(s))
    }

    async fn dial_tcp(&self) -> Result<TcpStream, ConnectError> {
        let mut last = None;
        let addrs = tokio::net::lookup_host((&*self.host, self.port))
            .await
            .map_err(|_| ConnectError::Resolve(format!("{}:{}", self.host, self.port)))?;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    if let Some(ka) = &self.settings.keepalive {
                        let _ = socket2::SockRef::from(&s).set_tcp_keepalive(ka);
                    }
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => ConnectError::Io(e),
            None => ConnectError::Resolve(format!("{}:{}", self.host, self.port)),
        })
    }

    /// The most recently pooled live connection; counts in `peer_closed`
    /// those the backend closed while they were idle (ours expire by age).
    fn take_idle(&self, peer_closed: &mut usize) -> Option<Taken> {
        let mut idle = lock(&self.share().idle);
        let now = Coarse::now();
        while let Some(mut c) = idle.pop() {
            if now.since(c.since) >= self.settings.idle_timeout {
                continue;
            }
            let Some(sender) = c.sender.take() else {
                if c.watch.is_dead() || !c.watch.is_parked() {
                    *peer_closed += 1;
                    continue;
                }
                c.reused = true;
                return Some(Taken::Parked(c.watch.clone()));
            };
            if sender.is_closed() {
                *peer_closed += 1;
                continue;
            }
            return Some(Taken::Live(sender, c.watch.clone()));
        }
        None
    }

    /// Return a connection whose response was fully read.
    pub fn checkin(&self, sender: Sender) {
        let Sender::H1(sender, watch) = sender else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.share().idle);
        if idle.len() >= self.max_idle {
            idle.retain(Idle::alive);
        }
        if idle.len() < self.max_idle {
            watch.idle.store(true, Ordering::Relaxed);
            idle.push(Idle {
                sender: Some(sender),
                watch,
                since: Coarse::now(),
                reused: false,
            });
        }
    }

    /// The backend proved alive after closing idle connections (a probe
    /// passed): it is not stopping, fresh connections are fine again.
    pub fn forget_closes(&self) {
        self.peer_closes.last_ms.store(0, Ordering::Relaxed);
    }

    /// Drop every idle connection (backend marked down: they are suspect),
    /// and forget closes seen so far (they are explained).
    pub fn clear(&self) {
        self.forget_closes();
        for share in &*self.shares {
            lock(&share.idle).clear();
            lock(&share.inline).clear();
            *lock(&share.shared_h2) = None;
        }
    }

    /// Drop idle connections older than `upstream.pool_idle_timeout` in
    /// every share (checkout only looks at the newest, so after a burst the
    /// older ones would sit there with their buffers and descriptors until
    /// the backend closes them); returns how many went.
    pub fn drop_expired(&self) -> usize {
        let max_age = self.settings.idle_timeout;
        self.shares
            .iter()
            .map(|share| {
                let mut idle = lock(&share.idle);
                let now = Coarse::now();
                // Oldest first: checkin pushes, checkout pops.
                let n = idle.partition_point(|c| now.since(c.since) >= max_age);
                idle.drain(..n);
                if idle.is_empty() {
                    idle.shrink_to_fit();
                }
                n + self.drop_inline(share, max_age)
            })
            .sum()
    }

    /// The in-task part of [`Pool::drop_expired`]: also the connections
    /// the backend closed while they sat idle (no task watches them; the
    /// close counts as one seen at once would, see [`PeerCloses`]).
    fn drop_inline(&self, share: &Share, max_age: Duration) -> usize {
        let mut idle = lock(&share.inline);
        let now = Coarse::now();
        let expired = idle.partition_point(|c| now.since(c.since) >= max_age);
        idle.drain(..expired);
        let closed = self.drop_closed_inline(&mut idle);
        if idle.is_empty() {
            idle.shrink_to_fit();
        }
        expired + closed
    }

    /// Park the pooled connections idle for [`pool_conn::PARK_AFTER`] in
    /// every share (see `pool_conn`); returns how many.
    pub fn park_idle(&self) -> usize {
        self.shares
            .iter()
            .map(|share| {
                let mut idle = lock(&share.idle);
                let now = Coarse::now();
                let mut n = 0;
                for c in idle.iter_mut() {
                    if c.sender.is_some() && now.since(c.since) >= pool_conn::PARK_AFTER {
                        c.watch.park();
                        c.sender = None;
                        n += 1;
                    }
                }
                drop(idle);
                for c in lock(&share.inline).iter_mut() {
                    if !c.conn.is_released() && now.since(c.since) >= pool_conn::PARK_AFTER {
                        c.conn.release_buffer();
                        n += usize::from(c.conn.is_released());
                    }
                }
                n
            })
            .sum()
    }

    /// Number of parked idle connections (all threads), for the status
    /// API.
    pub fn parked_count(&self) -> usize {
        self.shares
            .iter()
            .map(|s| {
                let hyper = lock(&s.idle).iter().filter(|c| c.sender.is_none()).count();
                hyper
                    + lock(&s.inline)
                        .iter()
                        .filter(|c| c.conn.is_released())
                        .count()
            })
            .sum()
    }

    /// Number of idle connections (all threads), for the status API.
    pub fn idle_count(&self) -> usize {
        self.shares
            .iter()
            .map(|s| lock(&s.idle).len() + lock(&s.inline).len())
            .sum()
    }
}

/// Any byte stream to a backend (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// rustls client settings for an https backend: system roots or its CA
/// file, optional client certificate; one connector per ALPN protocol.
fn tls_client(cfg: &BackendConfig) -> Result<Tls, String> {
    let roots = crate::tls::trust_roots(cfg.ca_file.as_deref()).map_err(|e| e.to_string())?;
    let builder = crate::tls::client_builder(roots).map_err(|e| e.to_string())?;
    let mut config = match &cfg.client_cert {
        Some(files) => {
            let ck = crate::tls::load_pair(files).map_err(|e| e.to_string())?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&files.key)
                .map_err(|e| format!("{}: {e}", files.key.display()))?;
            builder
                .with_client_auth_cert(ck.cert.clone(), key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut h2 = config.clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    let name =
        ServerName::try_from(cfg.host.to_string()).map_err(|e| format!("{}: {e}", cfg.host))?;
    Ok(Tls {
        h1: TlsConnector::from(Arc::new(config)),
        h2: TlsConnector::from(Arc::new(h2)),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend closing an idle in-task connection that one request
    /// thread pooled is a sign of stopping for every thread: another
    /// thread, its own share empty, ends its checkout with `Closing`
    /// instead of dialing a node that may accept and then reset.
    #[tokio::test]
    async fn a_close_seen_on_one_threads_idle_connection_counts_for_every_thread() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let settings = PoolSettings::from_upstream(&Default::default()).for_threads(2);
        let pool = Pool::new(&BackendConfig::plain("a", "127.0.0.1", port, 1), settings);
        crate::thread_index::set(0);
        let (conn, _) = pool.checkout_inline(true).await.unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        pool.checkin_inline(conn);

        crate::thread_index::set(1);
        let (fresh, closed) = pool.checkout_inline(false).await.unwrap();
        assert_eq!(closed, 0, "nothing closed yet: a fresh connection");
        assert!(!fresh.reused);
        drop(fresh);

        drop(server_side);
        // The driver learns of the close on its next turn.
        tokio::time::sleep(Duration::from_millis(100)).await;
        match pool.checkout_inline(false).await {
            Err(ConnectError::Closing(1)) => {}
            Err(e) => panic!("expected Closing(1), got {e}"),
            Ok(_) => panic!("dialed a node that closed its idle connection"),
        }
        assert_eq!(pool.idle_count(), 0, "the closed connection left the pool");
    }
}
