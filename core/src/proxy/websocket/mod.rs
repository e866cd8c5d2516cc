//! WebSocket: sticky upgrade, then a frame-aware tunnel.
//!
//! An HTTP/1.1 `GET` with `Upgrade: websocket` (and `Connection: upgrade`),
//! or an HTTP/2 extended CONNECT with `:protocol = websocket` (RFC 8441,
//! translated to an HTTP/1.1 upgrade toward the backend), is routed like
//! any request: same session rules, same failover, connect failures mark
//! the backend down and are retried elsewhere within `upstream.retries`.
//! The upgrade always goes over a fresh upstream connection, which never
//! returns to the pool. On `101` the client gets the answer (with the route
//! cookie rewrite, so a failed-over session learns its new route) and the
//! two upgraded connections are joined by [`tunnel::run`]; any other answer
//! is returned as a normal response.
//!
//! Other `Upgrade` values (`h2c`, anything unknown) are not handled here:
//! the normal path strips the header and forwards a plain request.

pub mod frames;
pub mod tunnel;

use super::forward::{self, Done, Failure};
use super::{error_response, finish, headers, redact, rewrite, ClientInfo, Runtime};
use crate::backend::{health, Backend};
use crate::body::{ResponseBody, UpstreamBody, UpstreamLease};
use crate::routing::{NoBackend, Reason, SessionId, Tried};
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

/// How long the client may take to receive the `101` before the tunnel is
/// abandoned (the upgrade completes once hyper has written it).
const UPGRADE_WAIT: Duration = Duration::from_secs(30);

/// How the client asked for a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 `Upgrade: websocket` (RFC 6455).
    Upgrade,
    /// HTTP/2 extended CONNECT with `:protocol websocket` (RFC 8441).
    ExtendedConnect,
}

/// Whether `parts` asks for a WebSocket, and how.
pub fn detect(parts: &Parts) -> Option<Kind> {
    if parts.method == Method::CONNECT {
        let ws = parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        return ws.then_some(Kind::ExtendedConnect);
    }
    let upgrade = parts.method == Method::GET
        && parts.version == Version::HTTP_11
        && has_token(&parts.headers, header::UPGRADE, "websocket")
        && has_token(&parts.headers, header::CONNECTION, "upgrade");
    upgrade.then_some(Kind::Upgrade)
}

/// Whether any comma-separated token of header `name` equals `token`
/// (ASCII case-insensitive).
fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Route the upgrade, and on success start the tunnel; never fails (errors
/// become responses). Also says which backend answered and why, when one
/// did (access log, counters).
pub async fn handle(
    rt: &Arc<Runtime>,
    mut parts: Parts,
    session: Option<&SessionId<'_>>,
    client: ClientInfo,
    kind: Kind,
    started: std::time::Instant,
) -> (Response<ResponseBody>, Option<Served>) {
    let Some(on_client) = parts.extensions.remove::<OnUpgrade>() else {
        let r = error_response(
            StatusCode::NOT_IMPLEMENTED,
            "501 not implemented: this connection cannot be upgraded\n",
        );
        return (r, None);
    };
    // Extended CONNECT: the backend speaks HTTP/1.1, so the balancer makes
    // the handshake key and checks the answer itself.
    let key = (kind == Kind::ExtendedConnect).then(generate_key);
    forward::prepare(&mut parts, &rt.config, client);
    let head = upgrade_head(parts, key.as_deref());
    let up = match connect(rt, &head, session).await {
        Ok(up) => up,
        Err(f) => {
            match session {
                Some(s) => {
                    tracing::warn!(session = %redact(s.base), error = %f, "websocket upgrade failed")
                }
                None => tracing::warn!(error = %f, "websocket upgrade failed"),
            }
            return (f.response(), None);
        }
    };
    let Upgrading {
        mut response,
        backend,
        reason,
        exchange,
        sender,
    } = up;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        drop(sender); // the connection closes once this answer is read
        if kind == Kind::ExtendedConnect && response.status().is_success() {
            // A 2xx would open an h2 tunnel toward a backend that did not
            // switch protocols.
            let r = error_response(
                StatusCode::BAD_GATEWAY,
                "502 bad gateway: backend did not accept the WebSocket upgrade\n",
            );
            return (r, None);
        }
        let served = (backend.clone(), reason.clone());
        let done = Done {
            response,
            exchange,
            backend,
            reason,
        };
        return (
            finish(rt, done, session, client, started).await,
            Some(served),
        );
    }
    if let Some(k) = &key {
        let want = derive_accept_key(k.as_bytes());
        let got = response.headers().get(header::SEC_WEBSOCKET_ACCEPT);
        if got.is_none_or(|v| v.as_bytes() != want.as_bytes()) {
            let r = error_response(
                StatusCode::BAD_GATEWAY,
                "502 bad gateway: backend sent a wrong Sec-WebSocket-Accept\n",
            );
            return (r, None);
        }
    }
    backend
        .stats
        .traffic
        .record(response.status().as_u16(), started.elapsed());
    let served = (backend.clone(), reason.clone());
    let on_backend = hyper::upgrade::on(&mut response);
    let out = client_response(
        rt,
        response.headers(),
        kind,
        &backend,
        &reason,
        session,
        client,
    )
    .await;
    let settings = tunnel::Settings {
        idle_timeout: rt.config.websocket.idle_timeout,
        ping_interval: rt.config.websocket.ping_interval,
    };
    let label = Label {
        route: backend.config.route.clone(),
        session: session.map(|s| redact(s.base)),
    };
    tokio::spawn(async move {
        let both = tokio::time::timeout(UPGRADE_WAIT, async {
            tokio::try_join!(on_client, on_backend)
        })
        .await;
        drop(sender);
        let (c, b) = match both {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                tracing::debug!(backend = %label.route, error = %e, "websocket upgrade did not complete");
                return;
            }
            Err(_) => {
                tracing::debug!(backend = %label.route, "websocket upgrade timed out");
                return;
            }
        };
        tracing::debug!(backend = %label.route, session = label.session.as_deref().unwrap_or("-"), "websocket tunnel open");
        let start = std::time::Instant::now();
        let r = tunnel::run(TokioIo::new(c), TokioIo::new(b), settings).await;
        drop(exchange); // the tunnel held a connection slot and counted in flight
        let secs = start.elapsed().as_secs_f64();
        match r.end {
            tunnel::End::Violation(side, v) => tracing::info!(
                backend = %label.route,
                session = label.session.as_deref().unwrap_or("-"),
                from = ?side,
                error = %v,
                "websocket tunnel closed: protocol violation"
            ),
            end => tracing::debug!(
                backend = %label.route,
                session = label.session.as_deref().unwrap_or("-"),
                ?end,
                first_gone = ?r.first_gone,
                from_client = r.from_client,
                from_backend = r.from_backend,
                secs,
                "websocket tunnel closed"
            ),
        }
    });
    (out, Some(served))
}

/// The backend that answered an upgrade and why it was chosen.
pub type Served = (Arc<crate::backend::Backend>, crate::routing::Reason);

/// Who a tunnel belongs to, for its log lines.
struct Label {
    route: Arc<str>,
    session: Option<String>,
}

/// The request sent upstream, rebuilt for each attempt.
struct Head {
    uri: Uri,
    headers: HeaderMap,
}

/// Turn the prepared client request into an HTTP/1.1 upgrade: hop-by-hop
/// headers are gone (prepare), so put back exactly the upgrade pair; for
/// extended CONNECT add the handshake headers HTTP/2 does not carry. The
/// upgrade is sent without a body, so no body framing the client sent
/// (`Content-Length`) goes with it: the backend would wait for that body.
fn upgrade_head(parts: Parts, key: Option<&str>) -> Head {
    let mut h = parts.headers;
    h.remove(header::CONTENT_LENGTH);
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Some(k) = key.and_then(|k| HeaderValue::from_str(k).ok()) {
        h.insert(header::SEC_WEBSOCKET_KEY, k);
        h.entry(header::SEC_WEBSOCKET_VERSION)
            .or_insert(HeaderValue::from_static("13"));
    }
    Head {
        uri: parts.uri,
        headers: h,
    }
}

/// A backend answered the upgrade request.
struct Upgrading {
    response: Response<hyper::body::Incoming>,
    backend: Arc<Backend>,
    reason: Reason,
    exchange: UpstreamLease,
    /// Kept until the upgrade resolves, so the connection task stays up.
    sender: hyper::client::conn::http1::SendRequest<UpstreamBody>,
}

/// Route and send the upgrade request: a bodiless GET, so every failed
/// attempt may be retried on another backend, `upstream.retries` times.
async fn connect(
    rt: &Runtime,
    head: &Head,
    session: Option<&SessionId<'_>>,
) -> Result<Upgrading, Failure> {
    let up = &rt.config.upstream;
    let mut tried = Tried::default();
    let mut last: Option<Failure> = None;
    for _ in 0..=up.retries {
        let decision = match rt.table.decide(&*rt.store, session, &tried).await {
            Ok(d) => d,
            Err(e) => return Err(last.unwrap_or(e.into())),
        };
        let backend = rt.table.backends[decision.index].clone();
        tried.add(decision.index);
        let route = backend.config.route.clone();
        let (failure, mark_down) = match attempt(rt, &backend, head, session).await {
            Ok((response, exchange, sender)) => {
                return Ok(Upgrading {
                    response,
                    backend,
                    reason: decision.reason,
                    exchange,
                    sender,
                })
            }
            Err(Miss::Queue(source)) => (Failure::Connect { route, source }, false),
            Err(Miss::Connect(source)) => (Failure::Connect { route, source }, true),
            Err(Miss::Upstream(source)) => (Failure::Upstream { route, source }, true),
            Err(Miss::Timeout(after)) => (Failure::Timeout { route, after }, true),
        };
        backend.stats.errors.fetch_add(1, Ordering::Relaxed);
        if mark_down {
            health::mark_down(&backend, &rt.config.health, &failure.to_string());
        }
        tracing::debug!(error = %failure, "websocket attempt failed, retrying if allowed");
        last = Some(failure);
    }
    Err(last.unwrap_or(Failure::NoBackend(NoBackend {
        total: rt.table.backends.len(),
    })))
}

enum Miss {
    Queue(crate::backend::pool::ConnectError),
    Connect(crate::backend::pool::ConnectError),
    Upstream(hyper::Error),
    Timeout(Duration),
}

type Answered = (
    Response<hyper::body::Incoming>,
    UpstreamLease,
    hyper::client::conn::http1::SendRequest<UpstreamBody>,
);

/// One attempt on one backend over a fresh connection.
async fn attempt(
    rt: &Runtime,
    backend: &Arc<Backend>,
    head: &Head,
    session: Option<&SessionId<'_>>,
) -> Result<Answered, Miss> {
    let permit = backend.pool.permit().await.map_err(Miss::Queue)?;
    let exchange = UpstreamLease::begin(backend.clone(), permit);
    backend.stats.requests.fetch_add(1, Ordering::Relaxed);
    let mut sender = backend.pool.connect().await.map_err(Miss::Connect)?;
    let mut req = Request::new(UpstreamBody::Empty);
    *req.method_mut() = Method::GET;
    *req.uri_mut() = head.uri.clone();
    *req.headers_mut() = head.headers.clone();
    forward::fit_host_and_session(rt, &mut req, backend, session, &mut None);
    let after = rt.config.upstream.response_timeout;
    match tokio::time::timeout(after, sender.send_request(req)).await {
        Ok(Ok(resp)) => Ok((resp, exchange, sender)),
        Ok(Err(e)) => Err(Miss::Upstream(e)),
        Err(_) => Err(Miss::Timeout(after)),
    }
}

/// The client's answer to a successful upgrade: the backend's headers
/// (hop-by-hop removed, route cookie rewritten) as a `101` with the
/// upgrade pair, or for extended CONNECT a `200` without them.
async fn client_response(
    rt: &Runtime,
    backend_headers: &HeaderMap,
    kind: Kind,
    backend: &Backend,
    reason: &Reason,
    session: Option<&SessionId<'_>>,
    client: ClientInfo,
) -> Response<ResponseBody> {
    let mut h = backend_headers.clone();
    headers::strip_hop_by_hop(&mut h);
    h.remove(header::CONTENT_LENGTH);
    if reason.failed_over_from().is_some() {
        backend.stats.failovers_in.fetch_add(1, Ordering::Relaxed);
    }
    let x = rewrite::Exchange {
        table: &rt.table,
        store: &*rt.store,
        cookie: &rt.config.session.cookie,
        separator: &rt.config.session.separator,
        served: backend,
        reason,
        session,
        https: client.https,
    };
    rewrite::apply(&x, &mut h, true).store_now(&*rt.store).await;
    let mut r = Response::new(ResponseBody::empty());
    match kind {
        Kind::Upgrade => {
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        }
        Kind::ExtendedConnect => {
            *r.status_mut() = StatusCode::OK;
            h.remove(header::SEC_WEBSOCKET_ACCEPT);
        }
    }
    *r.headers_mut() = h;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, version: Version, hs: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder()
            .method(method)
            .version(version)
            .uri("/ws");
        for (k, v) in hs {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn detects_websocket_upgrades_only() {
        let ws = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ];
        let p = parts(Method::GET, Version::HTTP_11, &ws);
        assert_eq!(detect(&p), Some(Kind::Upgrade));
        let p = parts(Method::POST, Version::HTTP_11, &ws);
        assert_eq!(detect(&p), None, "only GET upgrades");
        let p = parts(Method::GET, Version::HTTP_10, &ws);
        assert_eq!(detect(&p), None, "HTTP/1.0 cannot upgrade");
        let p = parts(Method::GET, Version::HTTP_11, &[("upgrade", "websocket")]);
        assert_eq!(detect(&p), None, "Connection must name upgrade");
        for other in ["h2c", "foo", "websocketx"] {
            let p = parts(
                Method::GET,
                Version::HTTP_11,
                &[("upgrade", other), ("connection", "Upgrade")],
            );
            assert_eq!(detect(&p), None, "{other}");
        }
        let mut p = parts(Method::CONNECT, Version::HTTP_2, &[]);
        assert_eq!(detect(&p), None, "plain CONNECT is not a WebSocket");
        p.extensions
            .insert(hyper::ext::Protocol::from_static("websocket"));
        assert_eq!(detect(&p), Some(Kind::ExtendedConnect));
    }

    #[test]
    fn upgrade_head_restores_the_upgrade_pair() {
        let p = parts(
            Method::GET,
            Version::HTTP_11,
            &[("sec-websocket-version", "13"), ("content-length", "5")],
        );
        let h = upgrade_head(p, Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
        assert_eq!(h.headers[header::UPGRADE], "websocket");
        assert_eq!(h.headers[header::CONNECTION], "Upgrade");
        assert_eq!(
            h.headers[header::SEC_WEBSOCKET_KEY],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert_eq!(h.headers[header::SEC_WEBSOCKET_VERSION], "13");
    }
}
