//! Admin listener: status page, JSON API, state actions, reload and
//! metrics.
//!
//! | Method | Path | What |
//! |---|---|---|
//! | GET | `/` | HTML status page |
//! | GET | `/api/status` | JSON status |
//! | GET | `/api/history?minutes=N` | trends per backend and events (see [`history`]) |
//! | POST | `/api/backends/{route}/{drain,disable,stop,enable}` | change a state |
//! | POST | `/reload` (or `/api/reload`) | reload the config file |
//! | GET | `/metrics` | OpenMetrics / Prometheus text |
//!
//! With `admin.token_file` every request needs the token (`Authorization:
//! Bearer`, or Basic with the token as password so a browser can log in).
//! Writes also refuse cross-site requests (an `Origin` other than the
//! admin's own) and, without a token, Host names other than an IP or
//! `localhost` (DNS rebinding), because a browser on the operator's
//! machine can reach a loopback admin port.

pub mod client;
pub mod history;
mod metrics;
pub mod status;

use crate::backend::AdminState;
use crate::body::ResponseBody;
use crate::config::AdminToken;
use crate::control::reload::Reloader;
use crate::proxy::Proxy;
use crate::server::ServerStats;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// The status page: one self-contained file, no external assets.
const PAGE: &str = include_str!("status.html");

/// What the admin handlers need.
pub struct Admin {
    pub proxy: Arc<Proxy>,
    pub stats: Arc<ServerStats>,
    pub reloader: Arc<Reloader>,
    /// Trends for the status page, fed by [`history::spawn`].
    pub history: history::History,
    started: Instant,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admin")
    }
}

impl Admin {
    /// Admin state for a running balancer. The token is read from the
    /// config in force on every request, so a reload rotates it. Starts the
    /// history sampler (a control-plane task that ends with the admin
    /// state), so it must be called inside the main runtime.
    pub fn new(proxy: Arc<Proxy>, stats: Arc<ServerStats>, reloader: Arc<Reloader>) -> Arc<Self> {
        let admin = Arc::new(Admin {
            proxy,
            stats,
            reloader,
            history: history::History::default(),
            started: Instant::now(),
        });
        history::spawn(Arc::downgrade(&admin));
        admin
    }
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<ResponseBody> {
    json(status, &serde_json::json!({ "error": message.into() }))
}

/// Requests the admin API refuses before looking at the path.
fn guard(admin: &Admin, req: &Request<Incoming>) -> Option<Response<ResponseBody>> {
    let h = req.headers();
    let runtime = admin.proxy.runtime();
    let token = &runtime.config.admin.token;
    if let Some(token) = token {
        if !authorized(token, h.get(http::header::AUTHORIZATION)) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "the admin API needs the token from admin.token_file: send `Authorization: Bearer <token>` (ctl: --token-file or STICKGATE_ADMIN_TOKEN)",
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"stickgate\", charset=\"UTF-8\""),
            );
            return Some(r);
        }
    }
    let host = h
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if token.is_none() && !ip_or_localhost(host) {
        return Some(error(
            StatusCode::FORBIDDEN,
            format!("Host {host:?} refused: without admin.token_file the admin API only answers requests addressed to an IP or localhost (DNS rebinding guard)"),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if let Some(origin) = h.get(http::header::ORIGIN).and_then(|v| v.to_str().ok()) {
            let same = origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host));
            if !same {
                return Some(error(
                    StatusCode::FORBIDDEN,
                    format!("cross-site request from {origin} refused; use the status page served by this admin listener, ctl or curl"),
                ));
            }
        }
    }
    None
}

/// An IP literal (any, with or without port) or `localhost`.
fn ip_or_localhost(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Bearer token, or Basic credentials whose password is the token.
fn authorized(token: &AdminToken, header: Option<&HeaderValue>) -> bool {
    let Some(v) = header.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return token.matches(rest.as_bytes());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return false;
        };
        let password = match raw.iter().position(|&b| b == b':') {
            Some(i) => &raw[i + 1..],
            None => return false,
        };
        return token.matches(password);
    }
    false
}

async fn route(admin: Arc<Admin>, req: Request<Incoming>) -> Response<ResponseBody> {
    if let Some(refused) = guard(&admin, &req) {
        return refused;
    }
    let path = req.uri().path();
    let method = req.method();
    match (method, path) {
        (&Method::GET, "/") => {
            let mut r = Response::new(ResponseBody::full(PAGE));
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            h.insert(
                http::header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'"),
            );
            h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        (&Method::GET, "/api/status") => json(StatusCode::OK, &status::snapshot(&admin)),
        (&Method::GET, "/api/history") => history_answer(&admin, req.uri().query()),
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(ResponseBody::full(metrics::render(&admin)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::POST, "/reload" | "/api/reload") => match admin.reloader.reload().await {
            Ok(done) => json(
                StatusCode::OK,
                &serde_json::json!({ "reloaded": true, "warnings": done.warnings }),
            ),
            Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        },
        (&Method::POST, p) if p.starts_with("/api/backends/") => {
            let rest = &p["/api/backends/".len()..];
            let Some((route, action)) = rest.split_once('/') else {
                return error(StatusCode::NOT_FOUND, "use POST /api/backends/{route}/{drain|disable|stop|enable}");
            };
            let Some(state) = AdminState::from_action(action) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown action {action:?}; use drain, disable, stop or enable"),
                );
            };
            if admin.proxy.set_state(route, state).is_none() {
                let known: Vec<String> = admin
                    .proxy
                    .runtime()
                    .table
                    .backends
                    .iter()
                    .map(|b| b.route().to_owned())
                    .collect();
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no backend with route {route:?}; configured: {}", known.join(", ")),
                );
            }
            match status::backend_by_route(&admin, route) {
                Some(b) => json(StatusCode::OK, &b),
                None => error(StatusCode::NOT_FOUND, "backend removed meanwhile"),
            }
        }
        (_, "/" | "/api/status" | "/api/history" | "/metrics") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
        }
        (_, "/reload" | "/api/reload") => error(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
        (_, p) if p.starts_with("/api/backends/") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "use POST")
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not found; try GET /, GET /api/status, GET /api/history, GET /metrics, POST /api/backends/{route}/{action}, POST /reload",
        ),
    }
}

/// `GET /api/history?minutes=N`: 400 with the reason for a bad query.
fn history_answer(admin: &Admin, query: Option<&str>) -> Response<ResponseBody> {
    let rt = admin.proxy.runtime();
    let interval = rt.config.admin.history_interval;
    match history::parse_minutes(query, interval) {
        Ok(minutes) => {
            let counts = rt.store.counts();
            let doc = admin.history.document(
                minutes,
                interval,
                &rt.table.backends,
                &counts,
                history::now_unix(),
            );
            json(StatusCode::OK, &doc)
        }
        Err(reason) => error(StatusCode::BAD_REQUEST, reason),
    }
}

/// Serve the admin API on `listener` until the task is dropped.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(admin, req).await) }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_are_not_names() {
        for ok in [
            "127.0.0.1:9901",
            "127.0.0.1",
            "localhost:9901",
            "LOCALHOST",
            "[::1]:9901",
            "10.0.0.1:80",
        ] {
            assert!(ip_or_localhost(ok), "{ok}");
        }
        for bad in [
            "evil.example:9901",
            "evil.example",
            "",
            "[nonsense]:1",
            "127.0.0.1.evil.example",
        ] {
            assert!(!ip_or_localhost(bad), "{bad}");
        }
    }
}
