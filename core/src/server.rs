//! Client-facing listeners: accept (bounded by `server.max_connections`),
//! socket options, TLS handshakes, HTTP/1.1 and HTTP/2 serving with
//! slowloris/idle timers (see [`guard`]) and size limits, and graceful
//! shutdown.

pub mod affinity;
mod framing;
mod gate;
mod guard;
mod h1;
mod streams;
pub mod workers;

use crate::body::ResponseBody;
use crate::config::raw::ServerSection;
use crate::proxy::headers::ConflictingFraming;
use crate::proxy::{ClientInfo, Proxy};
use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use guard::{Expiry, Guarded, InFlight, Sniffed, Timing, Tracked};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// Bind every configured address `threads` times (see [`bind_group`]);
/// the error names the address that failed.
pub fn bind_all(addrs: &[SocketAddr], threads: usize) -> Result<Vec<Group>, BindError> {
    addrs.iter().map(|&a| bind_group(a, threads)).collect()
}

/// A listening socket could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source} (is another process using it, or does it need root?)")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Bind one address with SO_REUSEADDR (restarts do not wait for TIME_WAIT)
/// and IPV6_V6ONLY on IPv6 so `[::]` and `0.0.0.0` can both be listed.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let s = socket(addr, false)?;
    TcpListener::from_std(s.into()).map_err(|source| BindError { addr, source })
}

/// One address's listening sockets, one per request thread.
pub type Group = Vec<std::net::TcpListener>;

/// Bind `addr` once per request thread, all with SO_REUSEPORT so the
/// kernel spreads new connections over the threads. SO_REUSEPORT would
/// also let another process of the same user join the group unnoticed:
/// a plain bind tried first fails if anything listens there already.
/// Port 0 becomes the port the first socket got, for all of them.
pub fn bind_group(addr: SocketAddr, threads: usize) -> Result<Group, BindError> {
    if threads <= 1 {
        return Ok(vec![socket(addr, false)?.into()]);
    }
    let mut addr = addr;
    if addr.port() != 0 {
        drop(socket(addr, false)?);
    }
    let mut out: Group = Vec::with_capacity(threads);
    for _ in 0..threads {
        let s = socket(addr, true)?;
        if addr.port() == 0 {
            addr = s
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| BindError {
                    addr,
                    source: std::io::Error::other("no local address after bind"),
                })?;
        }
        out.push(s.into());
    }
    Ok(out)
}

/// A non-blocking listening socket on `addr`.
fn socket(addr: SocketAddr, reuse_port: bool) -> Result<socket2::Socket, BindError> {
    let err = |source| BindError { addr, source };
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    if reuse_port {
        s.set_reuse_port(true).map_err(err)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(true).map_err(err)?;
    }
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    s.listen(1024).map_err(err)?;
    Ok(s)
}

/// Listener-side counters for the status API.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub connections: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    /// Connections closed because a request head was not complete in
    /// `header_timeout` (no byte at all, partial head, partial preface).
    pub header_timeouts: AtomicU64,
    /// Keep-alive / HTTP/2 connections closed after `idle_timeout`.
    pub idle_timeouts: AtomicU64,
    /// Times every `max_connections` slot was taken (accepting paused).
    pub connection_limit_reached: AtomicU64,
    /// Idle HTTP/1.1 connections parked now, holding no buffers (see
    /// `h1`).
    pub parked: AtomicU64,
}

/// Raise the soft open-file limit to the hard one (a proxy needs two
/// descriptors per request, and distributions start processes at 1024);
/// returns the soft limit in force afterwards. The one place the crate
/// needs `unsafe`: libc has no safe wrapper for these two calls.
#[allow(unsafe_code)]
pub fn raise_fd_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return None;
    }
    let want = r.rlim_max.min(1 << 20);
    if r.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            r.rlim_cur = want;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is 32 bits on some targets
    Some(r.rlim_cur as u64)
}

/// `server.max_connections`, or half the open-file limit (the other half
/// for backend connections, files and the admin listener).
fn connection_limit(cfg: &ServerSection) -> usize {
    let fds = raise_fd_limit().unwrap_or(1024);
    cfg.max_connections
        .unwrap_or_else(|| usize::try_from(fds / 2).unwrap_or(usize::MAX).max(64))
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    Plain,
    Tls,
}

/// One configured address's accept loops (one per request thread); their
/// stop signals end the loops only, never the connections they accepted.
struct Accepter {
    /// The address as configured (port 0 stays 0), to match on reload.
    configured: SocketAddr,
    side: ListenerKind,
    /// Copies of the listening sockets (same kernel socket), so a binary
    /// upgrade can hand them to the next process (see `sockets`).
    sockets: Vec<std::net::TcpListener>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Accepter {
    /// Stop every loop and wait until their sockets are closed.
    async fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The client-facing listeners and every connection they accepted.
/// Listeners can be added and removed while running (config reload)
/// without touching the others; shutdown is graceful for all.
pub struct Server {
    proxy: Arc<Proxy>,
    stats: Arc<ServerStats>,
    /// Settings new connections use; replaced on reload.
    cfg: ArcSwap<ServerSection>,
    tls: ArcSwapOption<TlsAcceptor>,
    accepters: Mutex<Vec<Accepter>>,
    /// Connections hold a receiver; a send asks them all to finish.
    drain: watch::Sender<()>,
    /// One permit per open client connection (`server.max_connections`),
    /// shared by every request thread.
    slots: Arc<Semaphore>,
    limit: usize,
    /// The request threads' runtimes; listener `i` of a group runs on
    /// thread `i`.
    workers: Arc<[Handle]>,
}

impl Server {
    /// A server with no listeners yet, accepting on the given request
    /// threads (see [`workers::Workers`]).
    pub fn new(
        proxy: Arc<Proxy>,
        stats: Arc<ServerStats>,
        cfg: Arc<ServerSection>,
        tls: Option<Arc<rustls::ServerConfig>>,
        workers: Arc<[Handle]>,
    ) -> Arc<Self> {
        let limit = connection_limit(&cfg);
        tracing::info!(
            max_connections = limit,
            threads = workers.len(),
            "client connection limit"
        );
        Arc::new(Server {
            proxy,
            stats,
            cfg: ArcSwap::new(cfg),
            tls: ArcSwapOption::new(tls.map(|c| Arc::new(TlsAcceptor::from(c)))),
            accepters: Mutex::new(Vec::new()),
            drain: watch::channel(()).0,
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            workers,
        })
    }

    /// Client connections open now (holding a `max_connections` slot).
    pub fn open_connections(&self) -> usize {
        self.limit - self.slots.available_permits()
    }

    /// Client connections open and not parked: those holding buffers.
    pub fn busy_connections(&self) -> usize {
        let parked = self.stats.parked.load(Ordering::Relaxed) as usize;
        self.open_connections().saturating_sub(parked)
    }

    /// Request threads running; a new listener binds this many sockets.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Run `f` once on every request thread (control plane: work that must
    /// happen on each thread itself, such as an allocator's per-thread
    /// cleanup).
    pub fn on_each_thread(&self, f: fn()) {
        for w in self.workers.iter() {
            w.spawn(async move { f() });
        }
    }

    /// Settings for connections accepted from now on (reload).
    pub fn set_config(&self, cfg: Arc<ServerSection>, tls: Option<Arc<rustls::ServerConfig>>) {
        if cfg.max_connections.is_some_and(|n| n != self.limit) {
            tracing::warn!(
                running = self.limit,
                "server.max_connections changed: it applies at the next restart"
            );
        }
        if cfg.threads() != self.threads() {
            tracing::warn!(
                running = self.threads(),
                "server.threads changed: it applies at the next restart"
            );
        }
        self.cfg.store(cfg);
        if let Some(t) = tls {
            self.tls.store(Some(Arc::new(TlsAcceptor::from(t))));
        }
    }

    /// The configured addresses currently listening on `side`.
    pub fn addresses(&self, side: ListenerKind) -> Vec<SocketAddr> {
        self.lock()
            .iter()
            .filter(|a| a.side == side)
            .map(|a| a.configured)
            .collect()
    }

    /// Start accepting on a bound listener group (see [`bind_group`]):
    /// socket `i` on request thread `i`.
    pub fn add(self: &Arc<Self>, group: Group, configured: SocketAddr, side: ListenerKind) {
        if let Some(a) = group.first().and_then(|l| l.local_addr().ok()) {
            tracing::info!(addr = %a, tls = side == ListenerKind::Tls, sockets = group.len(), "listening");
        }
        let mut accepter = Accepter {
            configured,
            side,
            sockets: group.iter().filter_map(|l| l.try_clone().ok()).collect(),
            stops: Vec::with_capacity(group.len()),
            tasks: Vec::with_capacity(group.len()),
        };
        for (i, listener) in group.into_iter().enumerate() {
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let me = self.clone();
            let rt = &self.workers[i % self.workers.len()];
            accepter.stops.push(stop);
            accepter
                .tasks
                .push(rt.spawn(me.accept_loop(listener, side, stopped)));
        }
        self.lock().push(accepter);
    }

    /// Accept until stopped. Past max_connections, a client this thread
    /// accepted waits (unserved) for a slot, and later ones wait in the
    /// listen backlog until a connection ends: at most one descriptor per
    /// thread beyond the limit.
    async fn accept_loop(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        side: ListenerKind,
        mut stopped: tokio::sync::oneshot::Receiver<()>,
    ) {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch a listening socket; it accepts nothing");
                return;
            }
        };
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut stopped => return,
            };
            // A free slot is taken before a stop is seen: a connection
            // accepted here must be served, not reset (the socket may live
            // on in a new process that would have served it).
            let slot = tokio::select! {
                biased;
                s = self.slot() => s,
                _ = &mut stopped => return,
            };
            self.accept(side, stream, peer, slot);
        }
    }

    /// Stop accepting on one listener (the first with this configured
    /// address); its open connections go on until they end.
    pub async fn remove(&self, configured: SocketAddr, side: ListenerKind) {
        let found = {
            let mut all = self.lock();
            all.iter()
                .position(|a| a.configured == configured && a.side == side)
                .map(|i| all.remove(i))
        };
        if let Some(a) = found {
            a.stop().await;
            tracing::info!(addr = %configured, "stopped listening");
        }
    }

    /// Wait for `shutdown`, then stop accepting and give in-flight requests
    /// up to `shutdown_timeout` to finish.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        self.stop_accepting().await;
        self.drain().await;
    }

    /// Every listening socket, as fresh copies of the same kernel sockets,
    /// grouped by configured address: what a binary upgrade hands to the
    /// next process (connections waiting in their backlog stay queued for
    /// whoever accepts next).
    pub fn listening_sockets(&self) -> Vec<(ListenerKind, SocketAddr, Vec<std::net::TcpListener>)> {
        self.lock()
            .iter()
            .map(|a| {
                let copies = a.sockets.iter().filter_map(|l| l.try_clone().ok());
                (a.side, a.configured, copies.collect())
            })
            .collect()
    }

    /// Stop every accept loop; the sockets stay open where another process
    /// holds them (binary upgrade), and connections go on.
    pub async fn stop_accepting(&self) {
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let all: Vec<Accepter> = std::mem::take(&mut *self.lock());
        for a in all {
            a.stop().await;
        }
    }

    /// Ask every connection to finish and wait up to `shutdown_timeout`
    /// until all are gone, WebSocket tunnels included (an upgraded
    /// connection keeps its `max_connections` slot until it closes).
    pub async fn drain(&self) {
        let limit = self.cfg.load().shutdown_timeout;
        let _ = self.drain.send(());
        let all = u32::try_from(self.limit).unwrap_or(u32::MAX);
        let gone = async {
            self.drain.closed().await;
            let _ = self.slots.acquire_many(all).await;
        };
        tokio::pin!(gone);
        // Near the deadline, open WebSocket tunnels are told to say Close
        // 1001 and end, so their clients reconnect rather than see a reset.
        let grace = GOING_AWAY_GRACE.min(limit / 2);
        tokio::select! {
            _ = &mut gone => return tracing::info!("all connections closed"),
            _ = tokio::time::sleep(limit - grace) => self.proxy.going_away(),
        }
        tokio::select! {
            _ = &mut gone => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(grace) => {
                tracing::warn!(timeout = ?limit, "shutdown deadline reached; closing remaining connections");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Accepter>> {
        crate::lock::lock(&self.accepters)
    }

    /// A free connection slot; says so in the log when all are taken.
    async fn slot(&self) -> OwnedSemaphorePermit {
        if self.slots.available_permits() == 0 {
            let n = self
                .stats
                .connection_limit_reached
                .fetch_add(1, Ordering::Relaxed);
            if n < 10 || n.is_power_of_two() {
                tracing::warn!(
                    max_connections = self.limit,
                    times = n + 1,
                    "client connection limit reached; new connections wait in the backlog"
                );
            }
        }
        let slots = self.slots.clone();
        slots
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed")
    }

    fn accept(
        self: &Arc<Self>,
        side: ListenerKind,
        stream: TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
    ) {
        let accepted = Instant::now();
        let cfg = self.cfg.load_full();
        let _ = stream.set_nodelay(true);
        if let Some(ka) = cfg.tcp_keepalive.to_socket() {
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka);
        }
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let timing = Timing::new(accepted, cfg.header_timeout, cfg.idle_timeout);
        let ctx = Ctx {
            proxy: self.proxy.clone(),
            cfg,
            stats: self.stats.clone(),
            drain: self.drain.subscribe(),
            timing,
            slot,
        };
        match (side, self.tls.load_full()) {
            (ListenerKind::Plain, _) => {
                let info = ClientInfo::new(peer, false);
                let proto = if ctx.cfg.h2c { Proto::Sniff } else { Proto::H1 };
                tokio::spawn(start(ctx, stream, info, proto));
            }
            (ListenerKind::Tls, Some(acceptor)) => {
                tokio::spawn(async move {
                    // The handshake counts against the first head's time.
                    let deadline = ctx.timing.first_head_deadline();
                    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let mut info = ClientInfo::new(peer, true);
                            info.tls = crate::client_info::TlsFacts::of(tls.get_ref().1);
                            let proto = match tls.get_ref().1.alpn_protocol() {
                                Some(b"h2") => Proto::H2,
                                Some(_) => Proto::H1,
                                None => Proto::Sniff,
                            };
                            start(ctx, tls, info, proto).await;
                        }
                        Ok(Err(e)) => handshake_failed(&ctx, peer, &e.to_string()),
                        Err(_) => {
                            ctx.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                            handshake_failed(&ctx, peer, "timed out")
                        }
                    }
                });
            }
            (ListenerKind::Tls, None) => {
                tracing::warn!(%peer, "TLS listener without certificates; connection closed")
            }
        }
    }
}

/// What every connection task needs.
struct Ctx {
    proxy: Arc<Proxy>,
    cfg: Arc<ServerSection>,
    stats: Arc<ServerStats>,
    /// Changes when the server shuts down; held until the connection ends.
    drain: watch::Receiver<()>,
    timing: Arc<Timing>,
    /// The connection's `max_connections` slot, held by its IO.
    slot: OwnedSemaphorePermit,
}

fn handshake_failed(ctx: &Ctx, peer: SocketAddr, why: &str) {
    let n = ctx
        .stats
        .tls_handshake_failures
        .fetch_add(1, Ordering::Relaxed);
    if n < 10 || n.is_power_of_two() {
        tracing::info!(%peer, error = why, failures = n + 1, "TLS handshake failed");
    }
}

/// How to pick the protocol of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
    /// Read the first bytes: the HTTP/2 preface or not (h2c, TLS without ALPN).
    Sniff,
}

/// Find the protocol within the first head's deadline (or until the
/// server drains), then serve.
async fn start<I>(ctx: Ctx, mut io: I, info: ClientInfo, proto: Proto)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (h2, prefix) = match proto {
        Proto::H1 => (false, Bytes::new()),
        Proto::H2 => (true, Bytes::new()),
        Proto::Sniff => match sniff_or_drain(&mut io, &ctx).await {
            Sniffed::H1(b) => (false, b),
            Sniffed::H2(b) => (true, b),
            Sniffed::Closed => return,
            Sniffed::Late(b) => {
                ctx.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %info.peer, "no request in time; connection closed");
                if b.is_empty() {
                    // Silent so far: it may be an HTTP/1.1 client, which
                    // deserves a 408; a partial h2 preface gets nothing.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        io.write_all(&guard::response_408()).await?;
                        io.shutdown().await
                    })
                    .await;
                }
                return;
            }
        },
    };
    serve_io(ctx, io, prefix, info, h2).await;
}

/// The protocol sniff; when the server drains meanwhile, the client has
/// [`DRAIN_QUIET`] more to send its first bytes (it connected before the
/// listener stopped, and its request may be on the way), then it is
/// closed with nothing requested and nothing lost.
async fn sniff_or_drain<I: AsyncRead + Unpin>(io: &mut I, ctx: &Ctx) -> Sniffed {
    let mut drain = ctx.drain.clone();
    let sniff = guard::sniff(io, ctx.timing.first_head_deadline());
    tokio::pin!(sniff);
    tokio::select! {
        s = &mut sniff => return s,
        _ = drain.changed() => {}
    }
    tokio::time::timeout(DRAIN_QUIET, sniff)
        .await
        .unwrap_or(Sniffed::Closed)
}

/// Serve one connection with hyper until it ends, expires (see [`guard`])
/// or the server drains.
async fn serve_io<I>(ctx: Ctx, io: I, prefix: Bytes, info: ClientInfo, h2: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ctx {
        proxy,
        cfg,
        stats,
        drain,
        timing,
        slot,
    } = ctx;
    let io = Guarded::new(io, prefix, timing.clone(), !h2, Some(slot));
    let svc = service(proxy, &cfg, info, timing.clone(), !h2);
    let mut watch = Watch {
        timing,
        stats,
        drain,
        draining: None,
        peer: info.peer,
        h2,
    };
    if h2 {
        // Boxed: the HTTP/2 connection state is large, and inline it would
        // size every connection's task, HTTP/1.1 ones included.
        let exec = streams::StreamExec::default();
        let mut b = hyper::server::conn::http2::Builder::new(exec.clone());
        b.timer(TokioTimer::new())
            .max_header_list_size(cfg.max_header_size as u32)
            .enable_connect_protocol();
        let conn = b.serve_connection(TokioIo::new(io), svc);
        let mut driven = Box::pin(streams::Driven::new(conn, exec));
        let end = watch
            .run(driven.as_mut(), |d| d.conn().graceful_shutdown(), None)
            .await;
        if let End::Ended(Err(e)) = end {
            log_conn_error(watch.peer, &e);
        }
    } else {
        let conn = h1::Conn {
            watch,
            io,
            svc,
            cfg,
        };
        h1::serve(conn).await;
    }
}

/// How [`Watch::run`] ended.
enum End {
    /// The connection ended, well or not.
    Ended(hyper::Result<()>),
    /// Taken apart while idle, as asked (HTTP/1.1).
    Parked,
    /// Expired and given its moment to say goodbye; drop it.
    Stopped,
}

/// Before the shutdown deadline, how long WebSocket tunnels get to send
/// their Close 1001 (at most half of `shutdown_timeout`).
const GOING_AWAY_GRACE: Duration = Duration::from_secs(1);

/// How long a draining HTTP/1.1 keep-alive connection may stay silent
/// before it is closed: a client sending meanwhile gets its answer with
/// `Connection: close` instead of a reset.
const DRAIN_QUIET: Duration = Duration::from_millis(500);

/// How often a draining HTTP/1.1 connection checks whether it is quiet.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// What drives one connection to its end: its timers and the drain signal.
struct Watch {
    timing: Arc<Timing>,
    stats: Arc<ServerStats>,
    /// Held until the connection ends (shutdown waits for all of them).
    drain: watch::Receiver<()>,
    /// Since when the server drains: HTTP/2 gets GOAWAY at once (its
    /// clients retry what the server did not take); an HTTP/1.1
    /// connection answers its next request with `Connection: close`, or is
    /// closed after [`DRAIN_QUIET`] without one. Kept across the lives of
    /// a parked HTTP/1.1 connection (see `h1`).
    draining: Option<Instant>,
    peer: SocketAddr,
    h2: bool,
}

impl Watch {
    /// Run `conn` until it ends, expires or the server drains; with
    /// `park`, also until it has been idle that long (it is then shut
    /// down, which hyper does at once and without a word on an idle
    /// HTTP/1.1 connection).
    async fn run<C>(
        &mut self,
        mut conn: Pin<&mut C>,
        shutdown: impl Fn(Pin<&mut C>),
        park: Option<Duration>,
    ) -> End
    where
        C: Future<Output = hyper::Result<()>>,
    {
        let mut shut = false;
        let mut parking = false;
        // After expiry the connection gets a moment to say goodbye (408 or
        // GOAWAY), then it is dropped whatever it is doing.
        let mut hard_stop: Option<Instant> = None;
        // No wake-up per request: the clock is re-read at least every
        // `recheck` (the shorter of the two timers, and of the park delay),
        // and a deadline is never earlier than a head start or request end
        // seen at the last check plus that, so sleeping until the next
        // check loses no precision.
        let recheck = park.map_or(self.timing.recheck(), |p| self.timing.recheck().min(p));
        // The drain signal and the timer are polled only when they woke
        // the task (see `gate`): the connection wakes it on every request.
        let (mut drain_gate, mut wake_gate) = (gate::Gate::default(), gate::Gate::default());
        loop {
            let poll = match (self.draining, shut) {
                (Some(_), false) => recheck.min(DRAIN_POLL),
                _ => recheck,
            };
            let now = Instant::now();
            let mut at = now + poll;
            if let Some((due, _)) = self.timing.due() {
                at = at.min(due);
            }
            let park_at = park
                .filter(|_| !shut && !parking && self.draining.is_none())
                .and_then(|p| self.timing.park_at(p));
            if let Some(p) = park_at {
                at = at.min(p.max(now));
            }
            let wake = wake_gate.wrap(tokio::time::sleep_until(hard_stop.unwrap_or(at)));
            // Biased, the connection first: it is what wakes the task on
            // every request; the timer and the drain signal are rare, and
            // skipping the random start saves work on each poll.
            tokio::select! {
                biased;
                r = conn.as_mut() => {
                    return match r {
                        Ok(()) if parking => End::Parked,
                        r => End::Ended(r),
                    };
                }
                _ = drain_gate.wrap(self.drain.changed()), if self.draining.is_none() => {
                    self.draining = Some(Instant::now());
                    if self.h2 {
                        shut = true;
                        shutdown(conn.as_mut());
                    } else {
                        self.timing.close_after_response();
                    }
                }
                _ = wake => {
                    let now = Instant::now();
                    if hard_stop.is_some_and(|at| now >= at) {
                        return End::Stopped;
                    }
                    if let (Some(since), false) = (self.draining, shut) {
                        if self.timing.quiet(since, DRAIN_QUIET) {
                            shut = true;
                            shutdown(conn.as_mut());
                        }
                    }
                    if let Some(how) = self.expire_if_due() {
                        if self.h2 || how == Expiry::Close {
                            shutdown(conn.as_mut());
                        }
                        hard_stop = Some(now + Duration::from_secs(1));
                    } else if park_at.is_some() {
                        // Read again: `conn` may have been polled since
                        // (requests and heads are only noted by this task's
                        // own polls of it, so nothing starts unseen).
                        if park.and_then(|p| self.timing.park_at(p)).is_some_and(|p| now >= p) {
                            parking = true;
                            shutdown(conn.as_mut());
                        }
                    }
                }
            }
        }
    }

    /// Expire the connection if its deadline passed; counts it.
    fn expire_if_due(&self) -> Option<Expiry> {
        let (_, how) = self.timing.due().filter(|(at, _)| Instant::now() >= *at)?;
        let counter = match how {
            Expiry::Answer408 => &self.stats.header_timeouts,
            Expiry::Close => &self.stats.idle_timeouts,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %self.peer, ?how, "client connection timed out");
        self.timing.expire(how);
        Some(how)
    }
}

/// What the service answers with: boxed, because hyper keeps a box the
/// size of the service's future for the whole life of an HTTP/1.1
/// connection, also while it is idle; a request's own state (the attempt
/// loop, ~3.9 KiB) then lives only while the request runs.
type Answer =
    Pin<Box<dyn Future<Output = Result<Response<Tracked<ResponseBody>>, Infallible>> + Send>>;

/// The per-connection service: counts requests in flight for the timers,
/// marks heads with conflicting framing, and notes tunnels.
fn service(
    proxy: Arc<Proxy>,
    cfg: &ServerSection,
    info: ClientInfo,
    timing: Arc<Timing>,
    h1: bool,
) -> ClientService {
    ClientService {
        redirect: (cfg.redirect_http && !info.https).then(|| https_port(cfg)),
        conn: Arc::new((proxy, timing)),
        info,
        h1,
    }
}

/// The per-connection service (a named type, so a parked connection can
/// be passed between tasks; see `h1`).
#[derive(Clone)]
struct ClientService {
    /// One allocation per connection, cloned per request: its count is
    /// touched by this connection's thread only, where cloning the proxy's
    /// own `Arc` would bounce one cache line between the request threads
    /// on every request.
    conn: Arc<(Arc<Proxy>, Arc<Timing>)>,
    redirect: Option<u16>,
    info: ClientInfo,
    h1: bool,
}

/// The proxy as a request's future holds it: through its connection's
/// handle (see [`ClientService::conn`]).
struct ConnProxy(Arc<(Arc<Proxy>, Arc<Timing>)>);

impl std::ops::Deref for ConnProxy {
    type Target = Proxy;

    fn deref(&self) -> &Proxy {
        &self.0 .0
    }
}

impl hyper::service::Service<Request<Incoming>> for ClientService {
    type Response = Response<Tracked<ResponseBody>>;
    type Error = Infallible;
    type Future = Answer;

    /// The head is looked at here, before the request's future is built
    /// and boxed: that future then holds the proxy's work and little else
    /// (it is moved whole into its box, per request).
    fn call(&self, mut req: Request<Incoming>) -> Answer {
        let timing = &self.conn.1;
        let (in_flight, conflict) = timing.begin();
        if conflict {
            req.extensions_mut().insert(ConflictingFraming);
        }
        if self.h1
            && req
                .extensions()
                .get::<hyper::upgrade::OnUpgrade>()
                .is_some()
        {
            let handed = timing.expect_upgrade();
            req.extensions_mut().insert(handed);
        }
        let connect = req.method() == http::Method::CONNECT;
        let end = Conclude {
            conn: self.conn.clone(),
            in_flight,
            connect,
        };
        match self.redirect {
            Some(port) => {
                let resp = to_https(&req, port);
                Box::pin(std::future::ready(end.answer(resp)))
            }
            None => {
                let conn = ConnProxy(self.conn.clone());
                Box::pin(Proxy::handle(conn, req, self.info, move |resp| {
                    end.answer(resp)
                }))
            }
        }
    }
}

/// What a request's answer still needs from its connection.
struct Conclude {
    conn: Arc<(Arc<Proxy>, Arc<Timing>)>,
    in_flight: InFlight,
    connect: bool,
}

impl Conclude {
    /// Note a tunnel, or ask the client to close while the connection is
    /// closing, and keep the request counted in flight until its body ends.
    fn answer(
        self,
        mut resp: Response<ResponseBody>,
    ) -> Result<Response<Tracked<ResponseBody>>, Infallible> {
        let timing = &self.conn.1;
        let status = resp.status();
        if status == StatusCode::SWITCHING_PROTOCOLS || (self.connect && status.is_success()) {
            timing.tunnel();
        } else if timing.closing() {
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        Ok(resp.map(|body| Tracked {
            body,
            guard: Some(self.in_flight),
        }))
    }
}

fn https_port(cfg: &ServerSection) -> u16 {
    cfg.tls_listen.first().map(|a| a.port()).unwrap_or(443)
}

/// `redirect_http`: 308 to the same host and path over https.
fn to_https(req: &Request<Incoming>, port: u16) -> Response<ResponseBody> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("localhost");
    let host = strip_port(host);
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    let mut r = Response::new(ResponseBody::empty());
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r
}

/// `example.org:8080` -> `example.org`; `[::1]:8080` -> `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.split(':').next().unwrap_or(host)
}

/// Malformed or oversized requests were already answered (400/431) by
/// hyper; log them once at info so operators see probes and broken clients.
fn log_conn_error(peer: SocketAddr, e: &(dyn std::error::Error + 'static)) {
    match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse() || h.is_parse_status() => {
            tracing::info!(%peer, error = %h, "rejected malformed request");
        }
        Some(h) if h.is_timeout() => {
            tracing::debug!(%peer, "client too slow sending headers or idle; connection closed");
        }
        _ => tracing::debug!(%peer, error = %e, "client connection ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};

    #[test]
    fn strip_port_keeps_the_host_and_ipv6_brackets() {
        assert_eq!(strip_port("example.org:8080"), "example.org");
        assert_eq!(strip_port("example.org"), "example.org");
        assert_eq!(strip_port("[::1]:8443"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("[::1"), "[::1");
        assert_eq!(strip_port(""), "");
    }

    #[test]
    fn https_port_is_the_first_tls_listener_else_443() {
        let mut cfg = ServerSection::default();
        cfg.tls_listen.clear();
        assert_eq!(https_port(&cfg), 443);
        cfg.tls_listen = vec![
            "127.0.0.1:8443".parse().unwrap(),
            "[::1]:9443".parse().unwrap(),
        ];
        assert_eq!(https_port(&cfg), 8443);
    }

    /// `to_https` for a request with these head lines, through a real
    /// HTTP/1.1 connection in memory; the Location it answers.
    async fn redirect(target: &str, host: Option<&str>, port: u16) -> (u16, Option<String>) {
        let (a, b) = tokio::io::duplex(4096);
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
            Ok::<_, std::convert::Infallible>(to_https(&req, port))
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(a), svc),
        );
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(b))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::get(target);
        if let Some(h) = host {
            req = req.header(http::header::HOST, h);
        }
        let res = send
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        let location = res
            .headers()
            .get(http::header::LOCATION)
            .map(|v| v.to_str().unwrap().to_owned());
        let status = res.status().as_u16();
        let _ = res.into_body().collect().await;
        (status, location)
    }

    #[tokio::test]
    async fn to_https_keeps_host_path_and_query_and_names_the_port() {
        let cases = [
            (
                "/a/b?x=1",
                Some("shop.example:8080"),
                443,
                "https://shop.example/a/b?x=1",
            ),
            (
                "/",
                Some("shop.example"),
                8443,
                "https://shop.example:8443/",
            ),
            ("/p", Some("[::1]:8080"), 8443, "https://[::1]:8443/p"),
            ("/p", None, 443, "https://localhost/p"),
        ];
        for (target, host, port, want) in cases {
            let (status, location) = redirect(target, host, port).await;
            assert_eq!(status, 308, "{target} {host:?}");
            assert_eq!(location.as_deref(), Some(want), "{target} {host:?}");
        }
    }

    #[test]
    fn a_listener_group_shares_one_port_and_never_joins_a_taken_one() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let group = bind_group(any, 3).unwrap();
        let ports: Vec<u16> = group
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert_eq!(ports.len(), 3);
        assert!(ports.iter().all(|&p| p == ports[0] && p != 0), "{ports:?}");
        // Another group (another stickgate) on the same port is refused,
        // though both would set SO_REUSEPORT.
        let taken = SocketAddr::from(([127, 0, 0, 1], ports[0]));
        assert!(bind_group(taken, 2).is_err(), "joined a running group");
        // So is a port a plain listener holds.
        let plain = std::net::TcpListener::bind(any).unwrap();
        assert!(bind_group(plain.local_addr().unwrap(), 2).is_err());
        assert!(bind_group(plain.local_addr().unwrap(), 1).is_err());
    }

    #[test]
    fn request_threads_know_their_number() {
        let workers = workers::Workers::start(2, None).unwrap();
        let handles = workers.handles();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for (i, h) in handles.iter().enumerate() {
                assert_eq!(
                    h.spawn(async { workers::current() }).await.unwrap(),
                    Some(i)
                );
            }
            assert_eq!(workers::current(), None);
            workers.stop().await;
        });
    }

    #[test]
    fn configured_connection_limit_wins_over_the_fd_limit() {
        let mut cfg = ServerSection {
            max_connections: Some(7),
            ..ServerSection::default()
        };
        assert_eq!(connection_limit(&cfg), 7);
        cfg.max_connections = None;
        assert!(connection_limit(&cfg) >= 64);
    }
}
