//! Client-facing listeners: accept, socket options, HTTP serving with
//! slowloris/size limits, and graceful shutdown.

use crate::config::raw::ServerSection;
use crate::proxy::{ClientInfo, Proxy};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

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

/// Serve `listeners` until `shutdown` resolves, then stop accepting and
/// give in-flight requests up to `shutdown_timeout` to finish.
pub async fn serve(
    proxy: Arc<Proxy>,
    listeners: Vec<TcpListener>,
    cfg: Arc<ServerSection>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut accepters = Vec::new();
    for l in listeners {
        let (proxy, cfg, graceful) = (proxy.clone(), cfg.clone(), graceful.clone());
        let mut stop = stop_rx.clone();
        accepters.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = l.accept() => match r {
                        Ok((stream, peer)) => {
                            handle_conn(&proxy, &cfg, &graceful, stream, peer);
                        }
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

fn handle_conn(
    proxy: &Arc<Proxy>,
    cfg: &ServerSection,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    if let Some(ka) = cfg.tcp_keepalive.to_socket() {
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka);
    }
    let info = ClientInfo { peer, https: false };
    let proxy = proxy.clone();
    let svc = service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, info).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_timeout)
        .max_buf_size(cfg.max_header_size.max(8192))
        .max_headers(cfg.max_headers)
        .keep_alive(true);
    let builder = builder.http1_only();
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log_conn_error(peer, &*e);
        }
    });
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
