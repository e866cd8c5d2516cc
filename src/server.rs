//! Client-facing listeners: accept, socket options, TLS handshakes, HTTP/1.1
//! and HTTP/2 serving with slowloris/size limits, and graceful shutdown.

use crate::body::ResponseBody;
use crate::config::raw::ServerSection;
use crate::proxy::{ClientInfo, Proxy};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
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

/// The bound listeners: plain HTTP and TLS.
pub struct Listeners {
    pub plain: Vec<TcpListener>,
    pub tls: Vec<TcpListener>,
}

#[derive(Clone)]
enum Kind {
    Plain,
    Tls(TlsAcceptor),
}

/// What every connection task needs.
struct Ctx {
    proxy: Arc<Proxy>,
    cfg: Arc<ServerSection>,
    stats: Arc<ServerStats>,
}

/// Serve the listeners until `shutdown` resolves, then stop accepting and
/// give in-flight requests up to `shutdown_timeout` to finish.
pub async fn serve(
    proxy: Arc<Proxy>,
    listeners: Listeners,
    tls: Option<Arc<rustls::ServerConfig>>,
    cfg: Arc<ServerSection>,
    stats: Arc<ServerStats>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut accepters = Vec::new();
    let tls_kind = tls.map(|c| Kind::Tls(TlsAcceptor::from(c)));
    let all = listeners.plain.into_iter().map(|l| (l, Kind::Plain)).chain(
        listeners
            .tls
            .into_iter()
            .filter_map(|l| Some((l, tls_kind.clone()?))),
    );
    for (l, kind) in all {
        let ctx = Arc::new(Ctx {
            proxy: proxy.clone(),
            cfg: cfg.clone(),
            stats: stats.clone(),
        });
        let graceful = graceful.clone();
        let mut stop = stop_rx.clone();
        accepters.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = l.accept() => match r {
                        Ok((stream, peer)) => accept(&ctx, &kind, stream, peer, graceful.watcher()),
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed; retrying");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                    _ = stop.changed() => break,
                }
            }
        }));
    }
    shutdown.await;
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    let _ = stop_tx.send(true);
    for a in accepters {
        let _ = a.await;
    }
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(cfg.shutdown_timeout) => {
            tracing::warn!(timeout = ?cfg.shutdown_timeout, "shutdown deadline reached; closing remaining connections");
        }
    }
}

fn accept(ctx: &Arc<Ctx>, kind: &Kind, stream: TcpStream, peer: SocketAddr, watcher: Watcher) {
    let _ = stream.set_nodelay(true);
    if let Some(ka) = ctx.cfg.tcp_keepalive.to_socket() {
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka);
    }
    ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
    match kind {
        Kind::Plain => {
            let info = ClientInfo { peer, https: false };
            serve_io(ctx, TokioIo::new(stream), info, ctx.cfg.h2c, watcher);
        }
        Kind::Tls(acceptor) => {
            let (ctx, acceptor) = (ctx.clone(), acceptor.clone());
            tokio::spawn(async move {
                let limit = ctx.cfg.header_timeout;
                match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let info = ClientInfo { peer, https: true };
                        serve_io(&ctx, TokioIo::new(tls), info, true, watcher);
                    }
                    Ok(Err(e)) => handshake_failed(&ctx, peer, &e.to_string()),
                    Err(_) => handshake_failed(&ctx, peer, "timed out"),
                }
            });
        }
    }
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

fn serve_io<I>(ctx: &Ctx, io: TokioIo<I>, info: ClientInfo, h2: bool, watcher: Watcher)
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
    let conn = watcher.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log_conn_error(info.peer, &*e);
        }
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
