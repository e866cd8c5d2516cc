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

use super::forward::{self, Done, Outgoing};
use super::{answered, error_response, finish, headers, redact, ClientInfo, Runtime, Served};
use crate::body::ResponseBody;
use crate::client_upgrade::OnClient;
use crate::routing::SessionId;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

/// How long the client may take to receive the `101` before the tunnel is
/// abandoned (the upgrade completes once hyper has written it).
const UPGRADE_WAIT: Duration = Duration::from_secs(30);

/// How the client asked for a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// HTTP/1.1 `Upgrade: websocket` (RFC 6455).
    Upgrade,
    /// HTTP/2 extended CONNECT with `:protocol websocket` (RFC 8441).
    ExtendedConnect,
}

/// Whether `parts` asks for a WebSocket, and how.
pub fn detect(parts: &Parts) -> Option<Handshake> {
    if parts.method == Method::CONNECT {
        let ws = parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        return ws.then_some(Handshake::ExtendedConnect);
    }
    let upgrade = parts.method == Method::GET
        && parts.version == Version::HTTP_11
        && has_token(&parts.headers, header::UPGRADE, "websocket")
        && has_token(&parts.headers, header::CONNECTION, "upgrade");
    upgrade.then_some(Handshake::Upgrade)
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
pub async fn handle<'a>(
    rt: &'a Arc<Runtime>,
    mut parts: Parts,
    session: Option<&SessionId<'_>>,
    client: ClientInfo,
    kind: Handshake,
    started: std::time::Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Response<ResponseBody>, Option<Served<'a>>) {
    let Some(on_client) = OnClient::take(&mut parts.extensions) else {
        let r = error_response(
            StatusCode::NOT_IMPLEMENTED,
            "501 not implemented: this connection cannot be upgraded\n",
        );
        return (r, None);
    };
    // Extended CONNECT: the backend speaks HTTP/1.1, so the balancer makes
    // the handshake key and checks the answer itself.
    let key = (kind == Handshake::ExtendedConnect).then(generate_key);
    forward::prepare(&mut parts, &rt.config, client);
    let mut out = upgrade_head(parts, key.as_deref());
    let done = match forward::run(rt, &mut out, session).await {
        Ok(done) => done,
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
    if done.response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let mut done = done;
        // The connection closes once this answer is read.
        drop(done.upgrade.take());
        if kind == Handshake::ExtendedConnect && done.response.status().is_success() {
            // A 2xx would open an h2 tunnel toward a backend that did not
            // switch protocols.
            let r = error_response(
                StatusCode::BAD_GATEWAY,
                "502 bad gateway: backend did not accept the WebSocket upgrade\n",
            );
            return (r, None);
        }
        let (r, served) = finish(rt, done, session, client, started).await;
        return (r, Some(served));
    }
    let Done {
        mut response,
        exchange,
        backend,
        reason,
        upgrade: sender,
    } = done;
    let backend = &rt.table.backends[backend];
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
    let on_backend = hyper::upgrade::on(&mut response);
    let served = Served { backend, reason };
    let out = client_response(rt, response.headers(), kind, &served, session, client).await;
    let backend = served.backend;
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
            tokio::try_join!(on_client.wait(), async {
                on_backend
                    .await
                    .map_err(crate::client_upgrade::UpgradeError::from)
            })
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
        let r = tunnel::run(c, TokioIo::new(b), settings, stop).await;
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

/// Who a tunnel belongs to, for its log lines.
struct Label {
    route: Arc<str>,
    session: Option<String>,
}

/// Turn the prepared client request into an HTTP/1.1 upgrade: hop-by-hop
/// headers are gone (prepare), so put back exactly the upgrade pair; for
/// extended CONNECT add the handshake headers HTTP/2 does not carry. The
/// upgrade is sent without a body, so no body framing the client sent
/// (`Content-Length`) goes with it: the backend would wait for that body.
fn upgrade_head(parts: Parts, key: Option<&str>) -> Outgoing {
    let mut h = parts.headers;
    h.remove(header::CONTENT_LENGTH);
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Some(k) = key.and_then(|k| HeaderValue::from_str(k).ok()) {
        h.insert(header::SEC_WEBSOCKET_KEY, k);
        h.entry(header::SEC_WEBSOCKET_VERSION)
            .or_insert(HeaderValue::from_static("13"));
    }
    Outgoing::upgrade(parts.uri, h)
}

/// The client's answer to a successful upgrade: the backend's headers
/// (hop-by-hop removed, route cookie rewritten) as a `101` with the
/// upgrade pair, or for extended CONNECT a `200` without them.
async fn client_response(
    rt: &Runtime,
    backend_headers: &HeaderMap,
    kind: Handshake,
    served: &Served<'_>,
    session: Option<&SessionId<'_>>,
    client: ClientInfo,
) -> Response<ResponseBody> {
    let mut h = backend_headers.clone();
    let kept = headers::strip_hop_by_hop(&mut h);
    h.remove(header::CONTENT_LENGTH);
    answered(rt, served, session, client, &mut h, true, kept).await;
    let mut r = Response::new(ResponseBody::empty());
    match kind {
        Handshake::Upgrade => {
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        }
        Handshake::ExtendedConnect => {
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
    use http::Request;

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
        assert_eq!(detect(&p), Some(Handshake::Upgrade));
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
        assert_eq!(detect(&p), Some(Handshake::ExtendedConnect));
    }

    #[test]
    fn upgrade_head_restores_the_upgrade_pair() {
        let p = parts(
            Method::GET,
            Version::HTTP_11,
            &[("sec-websocket-version", "13"), ("content-length", "5")],
        );
        let out = upgrade_head(p, Some("dGhlIHNhbXBsZSBub25jZQ=="));
        let h = out.replay_headers().expect("an upgrade is replayable");
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "Upgrade");
        assert_eq!(h[header::SEC_WEBSOCKET_KEY], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(h[header::SEC_WEBSOCKET_VERSION], "13");
    }
}
