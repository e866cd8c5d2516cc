//! Upstream attempts with bounded retries.
//!
//! Retry rules: an attempt that never reached the backend (connect failed or
//! timed out, slot queue full, connection refused before a byte was sent)
//! is retried on another backend whatever the method, with its body intact.
//! Once a request was sent, only idempotent requests without a body are
//! replayed (GET, HEAD, OPTIONS, PUT, DELETE, TRACE); a POST whose body left
//! is never replayed. After a failure before any response byte on a reused
//! connection, `retry::stay_on_node` says whether the next attempt tries
//! the same node on a fresh connection or goes to the heir at once.
//!
//! Slow is not dead: a response timeout fails that request (504, not
//! replayed unless `upstream.retry_on_response_timeout`) and counts toward
//! `health.fall`; it never marks the backend down by itself. A request that
//! waited `health.suspect_after` for its head triggers a rescue probe of its
//! backend (see `health::suspect`); when the backend goes down meanwhile,
//! idempotent requests waiting on it go to the heir at once, the others get
//! 504.
//!
//! This is the one attempt loop: plain requests and WebSocket upgrades
//! (see [`Outgoing::upgrade`]) go through [`run`], so both follow the same
//! retry rules, the same timers and the same counters. An attempt that
//! fails says itself whether another may follow ([`Miss`]).

use super::{error_response, headers, retry, rewrite, ClientInfo, Runtime};
use crate::backend::ajp::AjpError;
use crate::backend::pool::{ConnectError, Sender};
use crate::backend::{health, Backend};
use crate::body::{BackendBody, Progress, ResponseBody, UpstreamBody, UpstreamLease};
use crate::config::Config;
use crate::routing::{session, NoBackend, Reason, SessionId, Tried};
use http::header::HOST;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[path = "forward_ajp.rs"]
mod ajp;
#[path = "forward_h1.rs"]
mod h1;

/// A successful exchange, ready for the response rewrite.
pub struct Done {
    pub response: Response<BackendBody>,
    pub exchange: UpstreamLease,
    /// The backend that answered, as its place in the runtime's table
    /// (borrowed from there, so no count shared by the request threads is
    /// written for it).
    pub backend: usize,
    pub reason: Reason,
    /// For an upgrade: the fresh connection's sender, kept until the
    /// upgrade resolves (it never returns to the pool).
    pub upgrade: Option<Sender>,
}

/// Why a request got no backend response; each maps to one status.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    NoBackend(#[from] NoBackend),
    #[error("backend {route}: {source}")]
    Connect {
        route: Arc<str>,
        source: ConnectError,
    },
    #[error("backend {route}: no response within {after:?}")]
    Timeout { route: Arc<str>, after: Duration },
    #[error("backend {route}: went down while the request waited for its answer")]
    WentDown { route: Arc<str> },
    #[error("backend {route}: connection failed mid-request: {source}")]
    Upstream {
        route: Arc<str>,
        source: UpstreamError,
    },
    #[error("client request body could not be read: {0}")]
    ClientBody(hyper::Error),
    #[error("client paused its request body for longer than {0:?}")]
    ClientTimeout(Duration),
    #[error("AJP backend {route}: {source}")]
    Ajp { route: Arc<str>, source: AjpError },
}

/// What went wrong on an HTTP connection after the request was handed to
/// it: hyper's client, or the in-task exchange (`backend::h1`).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    H1(#[from] crate::backend::h1::H1Error),
}

impl Failure {
    /// The client-facing answer: short, and saying whose fault it is.
    pub fn response(&self) -> Response<ResponseBody> {
        match self {
            Failure::NoBackend(_) => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 no backend available: all backends are down or disabled\n",
            ),
            Failure::Connect {
                source: ConnectError::Queue(_),
                ..
            } => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 backend busy: connection limit reached\n",
            ),
            Failure::Connect { .. } => error_response(
                StatusCode::BAD_GATEWAY,
                "502 bad gateway: backend unreachable\n",
            ),
            Failure::Timeout { .. } => error_response(
                StatusCode::GATEWAY_TIMEOUT,
                "504 gateway timeout: backend did not answer in time\n",
            ),
            Failure::WentDown { .. } => error_response(
                StatusCode::GATEWAY_TIMEOUT,
                "504 gateway timeout: backend went down before answering; the request was not replayed\n",
            ),
            Failure::Upstream { .. } => error_response(
                StatusCode::BAD_GATEWAY,
                "502 bad gateway: backend closed the connection\n",
            ),
            Failure::ClientBody(_) => error_response(
                StatusCode::BAD_REQUEST,
                "400 bad request: request body could not be read\n",
            ),
            Failure::ClientTimeout(_) => error_response(
                StatusCode::REQUEST_TIMEOUT,
                "408 request timeout: request body stalled\n",
            ),
            Failure::Ajp { source, .. } => ajp::response(source),
        }
    }
}

/// Per-request header work done once, before any attempt (see
/// [`headers::prepare`]).
pub fn prepare(parts: &mut Parts, cfg: &Config, client: ClientInfo) {
    headers::prepare(parts, cfg, client);
}

pub(super) fn replayable(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// What a replay needs: the head of a bodiless idempotent request.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// `headers` are the client's fields as they came: each replay
    /// prepares its copy again (see [`Outgoing::request`]). An upgrade's
    /// head is kept prepared.
    raw: bool,
}

/// What the attempt loop sends: the client's request for the first
/// attempt, the head to rebuild it for another, and how it travels.
pub struct Outgoing {
    request: Option<Request<UpstreamBody>>,
    /// `request`'s forwarding fields, until it is known how it travels
    /// (see [`headers::prepare_deferred`]).
    forwarding: Option<headers::Forwarding>,
    replay: Option<Replay>,
    /// The request body's progress (a body is being streamed).
    progress: Option<Arc<Progress>>,
    /// A WebSocket upgrade: always over a fresh HTTP/1.1 connection.
    upgrade: bool,
    /// The client: a replay's raw head is prepared for it, and AJP sends
    /// it as the fields HTTP carries in X-Forwarded-*.
    client: Option<ClientInfo>,
}

impl Outgoing {
    /// A client request, prepared for the backend (see
    /// [`headers::prepare`]); replayable when idempotent and bodiless.
    ///
    /// The replay copy is taken before the preparation: the client's own
    /// fields (typically Host and Cookie) are fewer than the prepared set
    /// and cost less to copy on every request, while a replay, which is
    /// rare, prepares its copy again.
    pub fn request(mut parts: Parts, body: Incoming, cfg: &Config, client: ClientInfo) -> Self {
        let replay = (body.is_end_stream() && replayable(&parts.method)).then(|| Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            raw: true,
        });
        let forwarding = headers::prepare_deferred(&mut parts, cfg, client);
        let progress = (!body.is_end_stream()).then(Progress::new);
        let body = match &progress {
            Some(p) => UpstreamBody::Tracked(body, p.clone()),
            None => UpstreamBody::Client(body),
        };
        Outgoing {
            request: Some(Request::from_parts(parts, body)),
            forwarding: Some(forwarding),
            replay,
            progress,
            upgrade: false,
            client: Some(client),
        }
    }

    /// A WebSocket upgrade (its head already prepared): a bodiless GET,
    /// so every attempt may be replayed on another backend.
    pub fn upgrade(uri: Uri, headers: HeaderMap) -> Self {
        Outgoing {
            request: None,
            forwarding: None,
            replay: Some(Replay {
                method: Method::GET,
                uri,
                headers,
                raw: false,
            }),
            progress: None,
            upgrade: true,
            client: None,
        }
    }
}

impl Outgoing {
    /// The headers a replay would send (tests look at the upgrade's).
    #[cfg(test)]
    pub(super) fn replay_headers(&self) -> Option<&HeaderMap> {
        self.replay.as_ref().map(|r| &r.headers)
    }
}

impl Replay {
    /// The request for one more attempt; `client` is the one a raw head
    /// is prepared for.
    fn request(&self, cfg: &Config, client: Option<ClientInfo>) -> Request<UpstreamBody> {
        let mut r = Request::new(UpstreamBody::Empty);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        let Some(client) = client.filter(|_| self.raw) else {
            return r;
        };
        let (mut parts, body) = r.into_parts();
        headers::prepare(&mut parts, cfg, client);
        Request::from_parts(parts, body)
    }
}

/// A failed attempt: what to conclude about the backend, and whether
/// another attempt may follow. (A request that never left is still in the
/// attempt loop's hands: [`attempt`] only takes it to send it.)
struct Miss {
    failure: Failure,
    verdict: Verdict,
    /// Failed on a reused keep-alive connection the backend may have closed.
    stale: bool,
    /// A request that left may be sent again (its head is kept when it is
    /// idempotent and bodiless); false ends the attempts.
    replay: bool,
}

impl Miss {
    /// A request that left, failed on a connection that was not stale.
    fn after_send(failure: Failure, verdict: Verdict, replay: bool) -> Self {
        Miss {
            failure,
            verdict,
            stale: false,
            replay,
        }
    }
}

/// What a failed attempt says about the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Nothing (queue full, client at fault, already known down).
    None,
    /// Unreachable (connect failed, fresh connection reset): down now.
    Down,
    /// Failed this request only (response timeout): counts toward `fall`.
    Failed,
}

/// Route and send the request, retrying as the module docs describe.
///
/// `out` is lent, not moved in: the caller's state already holds it, and
/// in the returned future its ~600 bytes would be stored a second time
/// and moved with the future at every await of the callers. (For the same
/// reason this is a plain function around an `async move` block, not an
/// `async fn`, which would copy its arguments into locals of its own.)
#[allow(clippy::manual_async_fn)]
pub fn run<'a>(
    rt: &'a Runtime,
    out: &'a mut Outgoing,
    session: Option<&'a SessionId<'a>>,
) -> impl std::future::Future<Output = Result<Done, Failure>> + use<'a> {
    async move {
        let up = &rt.config.upstream;
        let mut tried = Tried::default();
        let mut stale_retry = true;
        let mut last: Option<Failure> = None;
        let mut sent_id: Option<String> = None;
        // The first attempt and `retries` more; a stale keep-alive connection
        // retried on the same node adds one (it says nothing about the node).
        let mut attempts = up.retries + 1;
        let mut n = 0;
        while n < attempts {
            if n > 0 {
                rt.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            n += 1;
            let decision = match rt.table.decide(&*rt.store, session, &tried).await {
                Ok(d) => d,
                Err(e) => return Err(last.unwrap_or(e.into())),
            };
            let backend = &rt.table.backends[decision.index];
            tried.add(decision.index);
            let req = match (&mut out.request, &out.replay) {
                (Some(r), _) => r,
                (unsent, Some(h)) => {
                    sent_id = None;
                    unsent.insert(h.request(&rt.config, out.client))
                }
                (None, None) => break,
            };
            fit_request(rt, req, backend, session, &mut sent_id, out.upgrade);
            let stay = retry::stay_on_node(
                up.retry_same_node,
                rt.config.session.failover,
                &rt.table.backends,
                decision.index,
                &decision.reason,
            );
            let how = if out.upgrade {
                Via::Upgrade
            } else {
                Via::Pool { stay }
            };
            let progress = out.progress.as_ref();
            let sending = Sending {
                req: &mut out.request,
                forwarding: &mut out.forwarding,
            };
            match attempt(rt, backend, sending, progress, how, out.client).await {
                Ok((response, exchange, upgrade)) => {
                    return Ok(Done {
                        response,
                        exchange,
                        backend: decision.index,
                        reason: decision.reason,
                        upgrade,
                    })
                }
                Err(miss) => {
                    if matches!(
                        miss.failure,
                        Failure::ClientBody(_)
                            | Failure::ClientTimeout(_)
                            | Failure::Ajp {
                                source: AjpError::HeadTooLarge(_),
                                ..
                            }
                    ) {
                        return Err(miss.failure);
                    }
                    backend.stats.errors.fetch_add(1, Ordering::Relaxed);
                    let why = || miss.failure.to_string();
                    match miss.verdict {
                        Verdict::Down => health::mark_down(backend, &rt.config.health, &why()),
                        Verdict::Failed => health::note_failure(backend, &rt.config.health, &why()),
                        Verdict::None => {}
                    }
                    tracing::debug!(error = %miss.failure, "attempt failed, retrying if allowed");
                    if miss.stale && stale_retry && stay {
                        stale_retry = false;
                        attempts += 1;
                        tried.remove(decision.index);
                    }
                    last = Some(miss.failure);
                    if out.request.is_none() && (out.replay.is_none() || !miss.replay) {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or(Failure::NoBackend(NoBackend {
            total: rt.table.backends.len(),
        })))
    }
}

/// Per-attempt changes: Host and session id (see `fit_host_and_session`),
/// then the URI form the backend's protocol needs (an upgrade always
/// travels over HTTP/1.1).
fn fit_request(
    rt: &Runtime,
    req: &mut Request<UpstreamBody>,
    backend: &Backend,
    session: Option<&SessionId<'_>>,
    sent_id: &mut Option<String>,
    upgrade: bool,
) {
    fit_host_and_session(rt, req, backend, session, sent_id);
    if backend.config.http2 && !upgrade {
        absolute_uri(req, backend);
    } else if req.uri().scheme().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        if let Ok(u) = pq.parse::<Uri>() {
            *req.uri_mut() = u;
        }
    }
}

/// Host for the chosen backend when needed, and with `rewrite_request`
/// the session id renamed to the serving backend's route whenever the
/// client still names another one (the failover request and every request
/// sent before the client saw the new cookie). `sent_id` is what an
/// earlier attempt already put in the request.
fn fit_host_and_session(
    rt: &Runtime,
    req: &mut Request<UpstreamBody>,
    backend: &Backend,
    session: Option<&SessionId<'_>>,
    sent_id: &mut Option<String>,
) {
    if !rt.config.server.preserve_host || !req.headers().contains_key(HOST) {
        if let Ok(v) = HeaderValue::from_str(&backend.config.authority) {
            req.headers_mut().insert(HOST, v);
        }
    }
    let s = &rt.config.session;
    let Some(sess) = session.filter(|_| s.rewrite_request) else {
        return;
    };
    if sess.route.is_none_or(|r| r == backend.route()) {
        return;
    }
    let new = rewrite::rewritten_id(sess.base, &s.separator, backend.route());
    let old = sent_id.as_deref().unwrap_or(sess.value).to_owned();
    if old == new {
        return;
    }
    rewrite::rewrite_cookie_header(req.headers_mut(), &s.cookie, &old, &new);
    if let Some(param) = s.path_parameter.as_deref() {
        rewrite_path_parameter(req, param, &new);
    }
    *sent_id = Some(new);
}

/// HTTP/2 needs scheme and authority (`:scheme`, `:authority`); the
/// authority is the client's Host when preserved, else the backend's.
fn absolute_uri(req: &mut Request<UpstreamBody>, backend: &Backend) {
    let scheme = if backend.config.tls { "https" } else { "http" };
    let authority = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or(&backend.config.authority)
        .to_owned();
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if let Ok(u) = format!("{scheme}://{authority}{pq}").parse::<Uri>() {
        *req.uri_mut() = u;
    }
}

fn rewrite_path_parameter(req: &mut Request<UpstreamBody>, param: &str, new: &str) {
    let Some(pq) = req.uri().path_and_query() else {
        return;
    };
    let Some(rebuilt) = session::replace_path_parameter(pq.as_str(), param, |_| new.to_owned())
    else {
        return;
    };
    if let Ok(u) = rebuilt.parse::<Uri>() {
        *req.uri_mut() = u;
    }
}

/// The request an attempt may send, lent by the attempt loop with its
/// pending forwarding fields (see [`headers::prepare_deferred`]).
struct Sending<'a> {
    req: &'a mut Option<Request<UpstreamBody>>,
    forwarding: &'a mut Option<headers::Forwarding>,
}

impl<'a> Sending<'a> {
    /// The request with its forwarding fields among its own, for a way of
    /// travelling that sends only those (hyper's client, AJP).
    fn into_fields(self) -> &'a mut Option<Request<UpstreamBody>> {
        if let (Some(f), Some(r)) = (self.forwarding.take(), self.req.as_mut()) {
            f.apply(r.headers_mut());
        }
        self.req
    }
}

/// Why no response head arrived.
#[derive(Debug, PartialEq, Eq)]
enum Late {
    /// The backend had everything it needed and stayed silent.
    Backend,
    /// The client stopped sending its body.
    Client,
    /// The backend went down (rescue probe, health check, another request)
    /// while this request waited.
    Down,
}

/// The timers of one wait for a response head.
struct Timers<'a> {
    /// First-byte timer, from the request body's last progress.
    after: Duration,
    /// Longest client pause in the middle of the request body.
    body_timeout: Duration,
    /// Start the rescue probe this long after the request body was sent
    /// to its end (zero: never).
    suspect_after: Duration,
    progress: Option<&'a Progress>,
}

impl<'a> Timers<'a> {
    /// The configured timers of an attempt whose request body (if any)
    /// reports its `progress`: the same for every way a request travels.
    fn of(rt: &Runtime, progress: Option<&'a Progress>) -> Self {
        Timers {
            after: rt.config.upstream.response_timeout,
            body_timeout: rt.config.server.body_timeout,
            suspect_after: rt.config.health.suspect_after,
            progress,
        }
    }
}

/// Await the response head. The backend's `after` runs from the request
/// body's last progress, and not at all while the upstream waits on the
/// client for more body; a client pausing longer than `body_timeout` ends
/// the request without blaming the backend. Past `suspect_after` the
/// backend is probed (`health::suspect`) and the wait also ends when the
/// backend goes down. The fast path costs one timer, as before. The
/// timers count from `start`, when the request was handed over.
async fn response_head<F: std::future::Future>(
    t: &Timers<'_>,
    rt: &Runtime,
    backend: &Arc<Backend>,
    start: tokio::time::Instant,
    mut fut: Pin<&mut F>,
) -> Result<F::Output, Late> {
    let mut deadline = start + t.after;
    let mut suspect_at = (!t.suspect_after.is_zero()).then(|| start + t.suspect_after);
    let mut down: Option<tokio::sync::watch::Receiver<u64>> = None;
    // When to look whether the client has paused its body too long (the
    // backend's deadline may be much later than `body_timeout`).
    let mut client_check = t.progress.map(|_| start + t.body_timeout);
    loop {
        let wake = [suspect_at, client_check]
            .into_iter()
            .flatten()
            .fold(deadline, tokio::time::Instant::min);
        let went_down = async {
            match down.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        // Biased, the answer first: it is what ends nearly every wait, and
        // an answer that is there wins over a timer that fired with it.
        tokio::select! {
            biased;
            out = &mut fut => return Ok(out),
            true = went_down => return Err(Late::Down),
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = tokio::time::Instant::now();
        if let (Some(p), Some(at)) = (t.progress, client_check) {
            if at <= now {
                client_check = client_pause(p, t.body_timeout, now)?;
            }
        }
        if suspect_at.is_some_and(|s| s <= now) {
            // Only a request sent to its end waits for a head: while its
            // body still moves (or a backend applies backpressure to it),
            // the suspicion clock waits too, then counts from the last byte.
            let sent = t.progress.map(|p| (p.complete(), p.last()));
            suspect_at = match sent {
                Some((false, _)) => Some(now + t.suspect_after),
                Some((true, last))
                    if tokio::time::Instant::from_std(last) + t.suspect_after > now =>
                {
                    Some(tokio::time::Instant::from_std(last) + t.suspect_after)
                }
                _ => None,
            };
            if suspect_at.is_none() {
                let rx = backend.watch_down();
                if !backend.is_up() {
                    return Err(Late::Down);
                }
                down = Some(rx);
                health::suspect(backend, &rt.config.health);
            }
        }
        if deadline > tokio::time::Instant::now() {
            continue;
        }
        let Some(p) = t.progress else {
            return Err(Late::Backend);
        };
        let last = tokio::time::Instant::from_std(p.last());
        let (limit, late) = if p.waiting_on_client() {
            (t.body_timeout, Late::Client)
        } else {
            (t.after, Late::Backend)
        };
        if last + limit > deadline {
            deadline = last + limit;
        } else {
            return Err(late);
        }
    }
}

/// The next time to look at a request body's progress, `None` once the
/// body was sent to its end, or `Late::Client` when the upstream has been
/// waiting on the client for `limit` since its last byte.
fn client_pause(
    p: &Progress,
    limit: Duration,
    now: tokio::time::Instant,
) -> Result<Option<tokio::time::Instant>, Late> {
    if p.complete() {
        return Ok(None);
    }
    let due = tokio::time::Instant::from_std(p.last()) + limit;
    match (p.waiting_on_client(), due > now) {
        (_, true) => Ok(Some(due)),
        (true, false) => Err(Late::Client),
        // Moving, or held back by the backend: look again later.
        (false, false) => Ok(Some(now + limit)),
    }
}

/// Which connection an attempt uses.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// A pooled keep-alive connection; `stay`: after a peer close, a fresh
    /// one to the same node rather than failing at once.
    Pool { stay: bool },
    /// A fresh HTTP/1.1 connection that never returns to the pool.
    Upgrade,
}

/// One attempt on one backend: the response head, the exchange that
/// returns the connection when the body ends, and for an upgrade the
/// connection's sender. The request is lent and taken only to be sent
/// (hyper hands back one it could not send), so a request that never left
/// stays with the attempt loop for the next try. (An `async move` block,
/// for the reason given at [`run`]: nothing is stored twice.)
#[allow(clippy::type_complexity, clippy::manual_async_fn)]
fn attempt<'a>(
    rt: &'a Runtime,
    backend: &'a Arc<Backend>,
    sending: Sending<'a>,
    progress: Option<&'a Arc<Progress>>,
    via: Via,
    client: Option<ClientInfo>,
) -> impl std::future::Future<
    Output = Result<(Response<BackendBody>, UpstreamLease, Option<Sender>), Miss>,
> + use<'a> {
    async move {
        // Cloned only for a failure: on the sticky path this count is shared
        // by every core.
        let route = || backend.config.route.clone();
        let permit = match backend.pool.permit().await {
            Ok(p) => p,
            Err(source) => {
                return Err(Miss {
                    failure: Failure::Connect {
                        route: route(),
                        source,
                    },
                    verdict: Verdict::None,
                    stale: false,
                    replay: true,
                })
            }
        };
        let mut exchange = UpstreamLease::begin(backend.clone(), permit);
        backend.stats.requests.fetch_add(1, Ordering::Relaxed);
        if let Via::Pool { stay } = via {
            if backend.pool.inline() && h1::eligible(sending.req.as_ref()) {
                return h1::attempt(rt, backend, sending, stay)
                    .await
                    .map(|r| (r.map(BackendBody::H1), exchange, None));
            }
        }
        let req = sending.into_fields();
        if let Some(pool) = &backend.ajp {
            let how = ajp::How {
                progress,
                client,
                upgrade: matches!(via, Via::Upgrade),
            };
            // Boxed: the AJP exchange's state would otherwise size every
            // HTTP request's future (allocated per request, see server.rs).
            return Box::pin(ajp::attempt(rt, backend, pool, req, how))
                .await
                .map(|r| (r.map(BackendBody::Ajp), exchange, None));
        }
        let conn = match via {
            Via::Pool { stay } => backend.pool.checkout(stay).await,
            // Boxed: a fresh connection's dial, TLS and handshake state would
            // otherwise size every request's future.
            Via::Upgrade => Box::pin(backend.pool.connect_upgrade()).await,
        };
        let conn = match conn {
            Ok(c) => c,
            Err(source) => return Err(connect_miss(rt, backend, source)),
        };
        if conn.peer_closed > 0 {
            health::closing_seen(backend, &rt.config.health);
        }
        let mut sender = conn.sender;
        let timers = Timers::of(rt, progress.map(|p| &**p));
        let miss = Miss::after_send;
        // One clock reading for both: the response timers run from it, and
        // a probe that passed after it clears the node (`late_miss`).
        let start = tokio::time::Instant::now();
        let sent_at = start.into_std();
        // Pinned here and lent: taken by value, the send (~580 bytes with the
        // request) would be stored twice in every request's future.
        let head = {
            let sending = req.take().expect("the request stays here until sent");
            let send = std::pin::pin!(sender.try_send(sending));
            response_head(&timers, rt, backend, start, send).await
        };
        match head {
            Ok(Ok(resp)) => {
                let resp = resp.map(BackendBody::Http);
                match via {
                    Via::Upgrade => Ok((resp, exchange, Some(sender))),
                    Via::Pool { .. } => {
                        exchange.set_sender(sender, progress.cloned());
                        Ok((resp, exchange, None))
                    }
                }
            }
            Ok(Err(mut e)) => {
                let unsent = e.take_message();
                let err = e.into_error();
                if err.is_user() {
                    return Err(miss(Failure::ClientBody(err), Verdict::None, false));
                }
                let parse = err.is_parse();
                let miss = sent_miss(rt, backend, err.into(), parse, conn.reused);
                if miss.replay {
                    // Not sent after all: back in the attempt loop's hands.
                    *req = unsent;
                }
                Err(miss)
            }
            Err(late) => Err(late_miss(rt, backend, late, sent_at)),
        }
    }
}

/// The miss of an attempt that got no connection: nothing was sent, so
/// any request may go on; a backend closing its idle connections may be
/// stopping (no verdict), any other failure says it is unreachable.
fn connect_miss(rt: &Runtime, backend: &Arc<Backend>, source: ConnectError) -> Miss {
    let verdict = if let ConnectError::Closing(_) = source {
        health::closing_seen(backend, &rt.config.health);
        Verdict::None
    } else {
        Verdict::Down
    };
    Miss {
        failure: Failure::Connect {
            route: backend.config.route.clone(),
            source,
        },
        verdict,
        stale: false,
        replay: true,
    }
}

/// The miss of a request whose connection failed after it was handed
/// over (hyper's client or the in-task exchange alike). A refused answer
/// (`parse`: over the head limit, or malformed) on a fresh connection is
/// a fault of this answer, which another node would likely give too, not
/// of the node: 502 now, the node stays up. On a reused connection it may
/// be the leftovers of an earlier answer, and any failure there may be a
/// stale keep-alive connection: retried (on a fresh one when the retry
/// policy stays on the node). A fresh connection that fails says the node
/// is unreachable.
fn sent_miss(
    rt: &Runtime,
    backend: &Arc<Backend>,
    source: UpstreamError,
    parse: bool,
    reused: bool,
) -> Miss {
    let failure = Failure::Upstream {
        route: backend.config.route.clone(),
        source,
    };
    if parse && !reused {
        return Miss::after_send(failure, Verdict::None, false);
    }
    if reused {
        health::closing_seen(backend, &rt.config.health);
    }
    Miss {
        verdict: if reused { Verdict::None } else { Verdict::Down },
        stale: reused,
        failure,
        replay: true,
    }
}

/// The miss of a request whose head did not come in time (see [`Late`]),
/// for HTTP and AJP attempts alike.
fn late_miss(rt: &Runtime, backend: &Backend, late: Late, sent_at: std::time::Instant) -> Miss {
    let route = backend.config.route.clone();
    let up = &rt.config.upstream;
    let miss = Miss::after_send;
    match late {
        Late::Backend => {
            let after = up.response_timeout;
            let failure = Failure::Timeout { route, after };
            // A rescue probe that passed while this request waited proved
            // the node alive: the URL is slow, the backend is not failing.
            let verdict = if backend.probed_ok_since(sent_at) {
                Verdict::None
            } else {
                Verdict::Failed
            };
            miss(failure, verdict, up.retry_on_response_timeout)
        }
        Late::Down => {
            backend.stats.rescued.fetch_add(1, Ordering::Relaxed);
            miss(Failure::WentDown { route }, Verdict::None, true)
        }
        Late::Client => {
            let failure = Failure::ClientTimeout(rt.config.server.body_timeout);
            miss(failure, Verdict::None, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::path::Path;

    /// A runtime with one backend where nothing listens, active checks off.
    fn runtime() -> Arc<Runtime> {
        let text = "[server]\nlisten = [\"127.0.0.1:0\"]\n[health]\nenabled = false\n\
                    [[backend]]\nroute = \"t1\"\nurl = \"http://127.0.0.1:1\"\n";
        let cfg = crate::config::from_str(text, Path::new("test.toml")).unwrap();
        Runtime::start(cfg, MemoryStore::new(Duration::from_secs(60), 10))
    }

    fn timers(after_ms: u64, suspect_ms: u64) -> Timers<'static> {
        Timers {
            after: Duration::from_millis(after_ms),
            body_timeout: Duration::from_secs(60),
            suspect_after: Duration::from_millis(suspect_ms),
            progress: None,
        }
    }

    #[tokio::test]
    async fn a_replay_prepares_the_clients_head_again_and_an_upgrades_head_as_kept() {
        let rt = runtime();
        let client = ClientInfo::new("10.9.8.7:5000".parse().unwrap(), false);
        let mut head = HeaderMap::new();
        head.insert(HOST, HeaderValue::from_static("app.example"));
        head.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        head.insert("connection", HeaderValue::from_static("keep-alive"));
        let raw = Replay {
            method: Method::GET,
            uri: Uri::from_static("http://app.example/a?b"),
            headers: head.clone(),
            raw: true,
        };
        for n in 0..2 {
            let r = raw.request(&rt.config, Some(client));
            let h = r.headers();
            assert_eq!(r.uri(), "/a?b", "replay {n}: origin form");
            assert_eq!(
                h["x-forwarded-for"], "10.9.8.7",
                "replay {n}: forged one gone"
            );
            assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1, "replay {n}");
            assert_eq!(h["x-forwarded-host"], "app.example", "replay {n}");
            assert!(!h.contains_key("connection"), "replay {n}: hop-by-hop gone");
        }
        let kept = Replay { raw: false, ..raw };
        let r = kept.request(&rt.config, Some(client));
        assert_eq!(r.headers(), &head, "a prepared head is sent as kept");
    }

    #[test]
    fn only_idempotent_methods_are_replayable() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(replayable(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PROPFIND"] {
            assert!(!replayable(&m.parse().unwrap()), "{m}");
        }
    }

    /// `response_head` waiting on a backend that never answers.
    async fn no_answer(t: &Timers<'_>, rt: &Runtime, b: &Arc<Backend>) -> Result<(), Late> {
        response_head(
            t,
            rt,
            b,
            tokio::time::Instant::now(),
            std::pin::pin!(std::future::pending::<()>()),
        )
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn response_head_gives_up_exactly_at_the_response_timeout() {
        let rt = runtime();
        let b = rt.table.backends[0].clone();
        let t0 = tokio::time::Instant::now();
        let r = no_answer(&timers(2000, 0), &rt, &b).await;
        assert_eq!(r, Err(Late::Backend));
        assert_eq!(t0.elapsed(), Duration::from_millis(2000));
    }

    #[tokio::test(start_paused = true)]
    async fn response_head_returns_an_answer_that_beats_the_timer() {
        let rt = runtime();
        let b = rt.table.backends[0].clone();
        let answer = async {
            tokio::time::sleep(Duration::from_millis(1999)).await;
            42
        };
        let r = response_head(
            &timers(2000, 0),
            &rt,
            &b,
            tokio::time::Instant::now(),
            std::pin::pin!(answer),
        )
        .await;
        assert_eq!(r, Ok(42));
    }

    #[tokio::test(start_paused = true)]
    async fn response_head_of_a_backend_already_down_ends_at_suspect_after() {
        let rt = runtime();
        let b = rt.table.backends[0].clone();
        b.set_up(false, "test");
        let t0 = tokio::time::Instant::now();
        let r = no_answer(&timers(60_000, 500), &rt, &b).await;
        assert_eq!(r, Err(Late::Down));
        assert_eq!(t0.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn response_head_ends_when_the_backend_goes_down_while_waiting() {
        let rt = runtime();
        let b = rt.table.backends[0].clone();
        let downer = b.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            downer.set_up(false, "test");
        });
        let t0 = tokio::time::Instant::now();
        let r = no_answer(&timers(60_000, 500), &rt, &b).await;
        assert_eq!(r, Err(Late::Down));
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(500) && waited < Duration::from_secs(60),
            "{waited:?}"
        );
    }

    #[test]
    fn failures_map_to_one_status_each() {
        let route: Arc<str> = "t1".into();
        let status = |f: Failure| f.response().status().as_u16();
        let connect = |source| Failure::Connect {
            route: route.clone(),
            source,
        };
        assert_eq!(status(NoBackend { total: 2 }.into()), 503);
        assert_eq!(status(connect(ConnectError::Queue(4))), 503);
        assert_eq!(
            status(connect(ConnectError::Timeout(Duration::from_secs(1)))),
            502
        );
        let timeout = Failure::Timeout {
            route: route.clone(),
            after: Duration::from_secs(1),
        };
        assert_eq!(status(timeout), 504);
        assert_eq!(status(Failure::WentDown { route }), 504);
        assert_eq!(status(Failure::ClientTimeout(Duration::from_secs(1))), 408);
    }
}
