//! One attempt on an `ajp://` backend, with the same retry rules as an
//! HTTP attempt: a connect failure or a CPing without CPong means nothing
//! was sent (any method may go to another node, body intact); a reused
//! connection that fails before any answer is stale (retried like a
//! stale keep-alive connection); a malformed packet or wrong magic drops
//! the connection and answers 502 (never replayed: the backend may have
//! acted on the request), counted as a backend failure.

use super::{error_response, late_miss, response_head, Failure, Miss, Timers, Verdict};
use crate::backend::ajp::{client, AjpBody, AjpError, AjpPool};
use crate::backend::{health, Backend};
use crate::body::{Progress, ResponseBody, UpstreamBody};
use crate::proxy::{ClientInfo, Runtime};
use http::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

/// What the attempt loop knows about the request besides its head.
pub(super) struct How<'a> {
    pub progress: Option<&'a Arc<Progress>>,
    pub client: Option<ClientInfo>,
    /// A WebSocket upgrade (AJP cannot carry one).
    pub upgrade: bool,
}

/// Send `req` to an AJP backend and wait for its head.
pub(super) async fn attempt(
    rt: &Runtime,
    backend: &Arc<Backend>,
    pool: &AjpPool,
    req: &mut Option<Request<UpstreamBody>>,
    how: How<'_>,
) -> Result<Response<AjpBody>, Miss> {
    let route = backend.config.route.clone();
    let fail = |source, verdict, replay| Miss {
        failure: Failure::Ajp {
            route: route.clone(),
            source,
        },
        verdict,
        stale: false,
        replay,
    };
    // Refused before it leaves: no other node may get it either, so it is
    // taken from the attempt loop (as on an encoding failure below).
    if how.upgrade {
        req.take();
        return Err(fail(AjpError::Upgrade, Verdict::None, false));
    }
    let to_send = req.as_ref().expect("the attempt loop lends a request");
    let client = how
        .client
        .unwrap_or_else(|| ClientInfo::new(SocketAddr::from(([127, 0, 0, 1], 0)), false));
    let head = match pool.encode(to_send, &client) {
        Ok(h) => h,
        Err(e) => {
            req.take();
            return Err(fail(e, Verdict::None, false));
        }
    };
    let first_chunk = client::declares_body(to_send.headers());
    // A node out of reach leaves the request with the attempt loop, for
    // another node.
    let conn = match pool.checkout().await {
        Ok(c) => c,
        Err(e) => return Err(fail(e, Verdict::Down, true)),
    };
    let reused = conn.reused;
    let req = req.take().expect("the request stays here until sent");
    let timers = Timers::of(rt, how.progress.map(|p| &**p));
    let start = tokio::time::Instant::now();
    let sent_at = start.into_std();
    let send = std::pin::pin!(pool.send(conn, head, req.into_body(), first_chunk));
    match response_head(&timers, rt, backend, start, send).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(AjpError::ClientBody(e))) => Err(Miss {
            failure: Failure::ClientBody(e),
            verdict: Verdict::None,
            stale: false,
            replay: false,
        }),
        Ok(Err(e @ (AjpError::Io(_) | AjpError::Closed))) => {
            if reused {
                health::closing_seen(backend, &rt.config.health);
            }
            let verdict = if reused { Verdict::None } else { Verdict::Down };
            let mut m = fail(e, verdict, true);
            m.stale = reused;
            Err(m)
        }
        Ok(Err(AjpError::SecretRefused)) => {
            tracing::error!(
                backend = &*route,
                "AJP backend refused the request: its connector's secret does not match ajp_secret (or ajp_secret is missing); fix the backend's ajp_secret"
            );
            // Tomcat refused before running the application: a bodiless
            // idempotent request may try another node.
            Err(fail(AjpError::SecretRefused, Verdict::Failed, true))
        }
        Ok(Err(e)) => {
            tracing::warn!(backend = &*route, error = %e, "AJP protocol error: connection dropped");
            Err(fail(e, Verdict::Failed, false))
        }
        Err(late) => Err(late_miss(rt, backend, late, sent_at)),
    }
}

/// The client-facing answer to an AJP failure.
pub(super) fn response(e: &AjpError) -> Response<ResponseBody> {
    match e {
        AjpError::HeadTooLarge(_) => error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "431 request header fields too large: the request head does not fit the backend's AJP packet size\n",
        ),
        AjpError::Upgrade => error_response(
            StatusCode::BAD_GATEWAY,
            "502 bad gateway: WebSocket upgrades cannot travel over AJP\n",
        ),
        AjpError::Connect(_)
        | AjpError::ConnectTimeout(_)
        | AjpError::Resolve(_)
        | AjpError::PingTimeout(_) => error_response(
            StatusCode::BAD_GATEWAY,
            "502 bad gateway: backend unreachable\n",
        ),
        _ => error_response(
            StatusCode::BAD_GATEWAY,
            "502 bad gateway: AJP backend failed\n",
        ),
    }
}
