//! Client-facing listeners: accept, socket options, TLS handshakes, HTTP/1.1
//! and HTTP/2 serving with slowloris/size limits, and graceful shutdown.

use crate::body::ResponseBody;
use crate::config::raw::ServerSection;
use crate::proxy::{ClientInfo, Proxy};
use arc_swap::{ArcSwap, ArcSwapOption};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Bind every configured address; the error names the address that failed.
pub async fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, BindError> {
    let mut out = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        out.push(bind(addr)?);
    }
    Ok(out)
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
    let err = |source| BindError { addr, source };
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        s.set_only_v6(true).map_err(err)?;
    }
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    s.listen(1024).map_err(err)?;
    TcpListener::from_std(s.into()).map_err(err)
}

/// Listener-side counters for the status API.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub connections: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Plain,
    Tls,
}

/// One accepting listener; its stop signal ends the accept loop only,
/// never the connections it accepted.
struct Accepter {
    /// The address as configured (port 0 stays 0), to match on reload.
    configured: SocketAddr,
    side: Side,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
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
}

impl Server {
    /// A server with no listeners yet.
    pub fn new(
        proxy: Arc<Proxy>,
        stats: Arc<ServerStats>,
        cfg: Arc<ServerSection>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Arc<Self> {
        Arc::new(Server {
            proxy,
            stats,
            cfg: ArcSwap::new(cfg),
            tls: ArcSwapOption::new(tls.map(|c| Arc::new(TlsAcceptor::from(c)))),
            accepters: Mutex::new(Vec::new()),
            drain: watch::channel(()).0,
        })
    }

    /// Settings for connections accepted from now on (reload).
    pub fn set_config(&self, cfg: Arc<ServerSection>, tls: Option<Arc<rustls::ServerConfig>>) {
        self.cfg.store(cfg);
        if let Some(t) = tls {
            self.tls.store(Some(Arc::new(TlsAcceptor::from(t))));
        }
    }

    /// The configured addresses currently listening on `side`.
    pub fn addresses(&self, side: Side) -> Vec<SocketAddr> {
        self.lock()
            .iter()
            .filter(|a| a.side == side)
            .map(|a| a.configured)
            .collect()
    }

    /// Start accepting on a bound listener.
    pub fn add(self: &Arc<Self>, listener: TcpListener, configured: SocketAddr, side: Side) {
        if let Ok(a) = listener.local_addr() {
            tracing::info!(addr = %a, tls = side == Side::Tls, "listening");
        }
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let me = self.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((stream, peer)) => me.accept(side, stream, peer),
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed; retrying");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                    _ = &mut stopped => break,
                }
            }
        });
        self.lock().push(Accepter {
            configured,
            side,
            stop,
            task,
        });
    }

    /// Stop accepting on one listener (the first with this configured
    /// address); its open connections go on until they end.
    pub async fn remove(&self, configured: SocketAddr, side: Side) {
        let found = {
            let mut all = self.lock();
            all.iter()
                .position(|a| a.configured == configured && a.side == side)
                .map(|i| all.remove(i))
        };
        if let Some(a) = found {
            let _ = a.stop.send(());
            let _ = a.task.await;
            tracing::info!(addr = %configured, "stopped listening");
        }
    }

    /// Wait for `shutdown`, then stop accepting and give in-flight requests
    /// up to `shutdown_timeout` to finish.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()>) {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let all: Vec<Accepter> = std::mem::take(&mut *self.lock());
        for a in all {
            let _ = a.stop.send(());
            let _ = a.task.await;
        }
        let limit = self.cfg.load().shutdown_timeout;
        let _ = self.drain.send(());
        tokio::select! {
            _ = self.drain.closed() => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(limit) => {
                tracing::warn!(timeout = ?limit, "shutdown deadline reached; closing remaining connections");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Accepter>> {
        self.accepters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn accept(self: &Arc<Self>, side: Side, stream: TcpStream, peer: SocketAddr) {
        let cfg = self.cfg.load_full();
        let _ = stream.set_nodelay(true);
        if let Some(ka) = cfg.tcp_keepalive.to_socket() {
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka);
        }
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let ctx = Ctx {
            proxy: self.proxy.clone(),
            cfg,
            stats: self.stats.clone(),
            drain: self.drain.subscribe(),
        };
        match (side, self.tls.load_full()) {
            (Side::Plain, _) => {
                let info = ClientInfo { peer, https: false };
                let h2c = ctx.cfg.h2c;
                serve_io(ctx, TokioIo::new(stream), info, h2c);
            }
            (Side::Tls, Some(acceptor)) => {
                tokio::spawn(async move {
                    let limit = ctx.cfg.header_timeout;
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let info = ClientInfo { peer, https: true };
                            serve_io(ctx, TokioIo::new(tls), info, true);
                        }
                        Ok(Err(e)) => handshake_failed(&ctx, peer, &e.to_string()),
                        Err(_) => handshake_failed(&ctx, peer, "timed out"),
                    }
                });
            }
            (Side::Tls, None) => {
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

fn serve_io<I>(ctx: Ctx, io: TokioIo<I>, info: ClientInfo, h2: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let proxy = ctx.proxy.clone();
    let redirect = (ctx.cfg.redirect_http && !info.https).then(|| https_port(&ctx.cfg));
    let svc = service_fn(move |req| {
        let proxy = proxy.clone();
        async move {
            Ok::<_, Infallible>(match redirect {
                Some(port) => to_https(&req, port),
                None => proxy.handle(req, info).await,
            })
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.cfg.header_timeout)
        .max_buf_size(ctx.cfg.max_header_size.max(8192))
        .max_headers(ctx.cfg.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(ctx.cfg.max_header_size as u32)
        .enable_connect_protocol();
    let builder = if h2 { builder } else { builder.http1_only() };
    let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
    let mut drain = ctx.drain;
    tokio::spawn(async move {
        let mut conn = std::pin::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = drain.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            log_conn_error(info.peer, &*e);
        }
        drop(drain);
    });
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
