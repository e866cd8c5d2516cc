//! One attempt through the in-task HTTP/1.1 exchange (`backend::h1`): a
//! bodiless idempotent request to a plain HTTP/1.1 backend, with the same
//! retry rules, timers and verdicts as one through hyper's client: nothing
//! sent on a connect failure; a reused connection failing before any
//! answer is stale; a refused answer on a fresh connection is a 502 that
//! leaves the node up.

use super::{connect_miss, late_miss, replayable, response_head, sent_miss, Miss, Sending, Timers};
use crate::backend::h1::{self, H1Body};
use crate::backend::{health, Backend};
use crate::body::UpstreamBody;
use crate::proxy::Runtime;
use http::{Request, Response};
use std::sync::Arc;

/// Whether a request takes the in-task exchange: bodiless (its end already
/// seen) and idempotent, so that a failure after sending can always be
/// replayed from the attempt loop's copy, as hyper's hand-back would allow.
pub(super) fn eligible(req: Option<&Request<UpstreamBody>>) -> bool {
    req.is_some_and(|r| {
        replayable(r.method())
            && match r.body() {
                UpstreamBody::Empty => true,
                UpstreamBody::Client(b) => http_body::Body::is_end_stream(b),
                UpstreamBody::Tracked(..) => false,
            }
    })
}

/// Send the request on a pooled (or fresh) connection and wait for its
/// head; `stay` as for `Pool::checkout`.
pub(super) async fn attempt(
    rt: &Runtime,
    backend: &Arc<Backend>,
    sending: Sending<'_>,
    stay: bool,
) -> Result<Response<H1Body>, Miss> {
    let (conn, peer_closed) = match backend.pool.checkout_inline(stay).await {
        Ok(c) => c,
        Err(source) => return Err(connect_miss(rt, backend, source)),
    };
    if peer_closed > 0 {
        health::closing_seen(backend, &rt.config.health);
    }
    let timers = Timers::of(rt, None);
    let start = tokio::time::Instant::now();
    let sent_at = start.into_std();
    let head = {
        let req = sending
            .req
            .take()
            .expect("the request stays here until sent");
        // Written after the request's own fields; a replay prepares its
        // copy with them among its fields.
        let forwarding = sending.forwarding.take();
        let extra = forwarding.as_ref().map(|f| f.fields()).unwrap_or_default();
        let exchange = h1::exchange(conn, req.method(), req.uri(), req.headers(), &extra);
        let exchange = std::pin::pin!(exchange);
        response_head(&timers, rt, backend, start, exchange).await
    };
    match head {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(h1::Failed { error, reused })) => {
            let parse = error.is_parse();
            Err(sent_miss(rt, backend, error.into(), parse, reused))
        }
        Err(late) => Err(late_miss(rt, backend, late, sent_at)),
    }
}
