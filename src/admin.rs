//! Admin listener: the status API operators and tests read.

use crate::body::ResponseBody;
use crate::proxy::{error_response, Proxy};
use crate::server::ServerStats;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Serialize;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// One backend as the status API shows it.
#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub route: String,
    pub url: String,
    pub domain: Option<String>,
    pub weight: u32,
    pub state: crate::backend::AdminState,
    pub health: &'static str,
    pub health_since_secs: f64,
    pub inflight: u32,
    pub requests: u64,
    pub errors: u64,
    pub failovers_in: u64,
    pub idle_connections: usize,
    pub sessions: crate::store::SessionCounts,
}

/// The whole status document (`GET /api/status`).
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub backends: Vec<BackendStatus>,
    pub store: crate::store::StoreStatus,
    pub connections: u64,
    pub tls_handshake_failures: u64,
}

/// Snapshot of the proxy for the API.
pub fn status(proxy: &Proxy, stats: &ServerStats) -> Status {
    let rt = proxy.runtime();
    let counts = rt.store.counts();
    let backends = rt
        .table
        .backends
        .iter()
        .map(|b| BackendStatus {
            route: b.route().to_owned(),
            url: format!("http://{}", b.config.authority),
            domain: b.config.domain.as_deref().map(str::to_owned),
            weight: b.config.weight,
            state: b.state(),
            health: if b.is_up() { "up" } else { "down" },
            health_since_secs: (b.since_change() * 10.0).round() / 10.0,
            inflight: b.inflight.load(Ordering::Relaxed),
            requests: b.requests.load(Ordering::Relaxed),
            errors: b.errors.load(Ordering::Relaxed),
            failovers_in: b.failovers_in.load(Ordering::Relaxed),
            idle_connections: b.pool.idle_count(),
            sessions: counts
                .iter()
                .find(|(r, _)| **r == *b.config.route)
                .map(|(_, c)| c.clone())
                .unwrap_or_default(),
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        backends,
        store: rt.store.status(),
        connections: stats.connections.load(Ordering::Relaxed),
        tls_handshake_failures: stats.tls_handshake_failures.load(Ordering::Relaxed),
    }
}

async fn route(
    proxy: Arc<Proxy>,
    stats: Arc<ServerStats>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/api/status") => {
            let body = serde_json::to_vec_pretty(&status(&proxy, &stats)).unwrap_or_default();
            let mut r = Response::new(ResponseBody::full(body));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        (_, "/api/status") => error_response(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
        _ => error_response(StatusCode::NOT_FOUND, "not found; try GET /api/status\n"),
    }
}

/// Serve the admin API on `listener` until the task is dropped.
pub async fn serve(proxy: Arc<Proxy>, stats: Arc<ServerStats>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (proxy, stats) = (proxy.clone(), stats.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (proxy, stats) = (proxy.clone(), stats.clone());
                async move { Ok::<_, Infallible>(route(proxy, stats, req).await) }
            });
            let mut b = auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = b
                .http1_only()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
