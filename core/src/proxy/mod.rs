//! The request path: client request -> session -> routing decision ->
//! upstream attempt(s) -> response rewrite. Data flows one way through
//! [`Proxy::handle`]; each step lives in its own module.

mod forward;
pub mod headers;
pub mod retry;
pub mod rewrite;
pub mod websocket;

use crate::access_log::{self, AccessLogger};
use crate::backend::{health, Backend};
use crate::body::ResponseBody;
pub use crate::client_info::ClientInfo;
use crate::config::Config;
use crate::lock::lock;
pub use crate::routing::session::redact;
use crate::routing::{SessionId, Source, Table};
use crate::store::SessionStore;
use arc_swap::{ArcSwap, ArcSwapOption};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use forward::Failure;

/// Everything a request needs, swapped as a whole on reload so a request
/// sees one consistent configuration from start to end.
pub struct Runtime {
    pub config: Config,
    pub table: Table,
    pub store: Arc<dyn SessionStore>,
    /// Counters that outlive reloads.
    pub stats: Arc<ProxyStats>,
}

/// Proxy-wide counters for the status API and `/metrics`.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Attempts beyond the first (another backend, or a stale connection).
    pub retries: AtomicU64,
    /// Balancer-made error answers by status class `[4xx, 5xx]` (no
    /// backend, unreachable, timeout, bad client body).
    pub local_errors: [AtomicU64; 2],
}

impl ProxyStats {
    /// Count an answer the balancer made itself, by status class.
    fn count_local(&self, status: StatusCode) {
        let slot = match status.as_u16() {
            400..=499 => &self.local_errors[0],
            500..=599 => &self.local_errors[1],
            _ => return,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

/// A request thread's own handle on the runtime in force: requests clone
/// this one, whose count only that thread writes, instead of the
/// runtime's `Arc`, whose count every request thread would write on every
/// request (a cache line bouncing between cores).
struct Local(Arc<Runtime>);

/// One request thread's [`Local`], on cache lines of its own.
#[repr(align(128))]
#[derive(Default)]
struct LocalSlot(Mutex<Option<Arc<Local>>>);

/// Request threads with a slot; any further ones share the runtime's `Arc`.
const LOCAL_SLOTS: usize = 64;

/// The proxy service shared by every listener and connection.
pub struct Proxy {
    current: ArcSwap<Runtime>,
    locals: Box<[LocalSlot]>,
    access_log: ArcSwapOption<AccessLogger>,
    /// Set once, when the shutdown deadline is near: open WebSocket
    /// tunnels say Close 1001 ("going away") to both peers and end.
    going_away: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    /// A proxy serving `runtime`.
    pub fn new(runtime: Arc<Runtime>, access_log: Option<Arc<AccessLogger>>) -> Arc<Self> {
        Arc::new(Proxy {
            current: ArcSwap::new(runtime),
            locals: (0..LOCAL_SLOTS).map(|_| LocalSlot::default()).collect(),
            access_log: ArcSwapOption::new(access_log),
            going_away: tokio::sync::watch::Sender::new(false),
        })
    }

    /// The access log in force (reload compares and replaces it).
    pub fn access_log(&self) -> Option<Arc<AccessLogger>> {
        self.access_log.load_full()
    }

    /// Replace the access log (reload with other log settings).
    pub fn set_access_log(&self, log: Option<Arc<AccessLogger>>) {
        self.access_log.store(log);
    }

    /// The runtime in force (status API, reload).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Put a reloaded runtime in force: requests already running finish on
    /// the one they started with.
    pub fn swap(&self, runtime: Arc<Runtime>) {
        self.current.store(runtime);
        // The threads' handles would keep the old runtime (its pools, its
        // store) alive until their next request.
        for slot in self.locals.iter() {
            *lock(&slot.0) = None;
        }
    }

    /// The runtime in force, through the calling request thread's handle.
    fn runtime_here(&self) -> Arc<Local> {
        let slot = crate::thread_index::current().and_then(|i| self.locals.get(i));
        let Some(slot) = slot else {
            return Arc::new(Local(self.current.load_full()));
        };
        // Locked before loading: a `swap` clears every slot after storing,
        // so an old runtime put here meanwhile is cleared again.
        let mut held = lock(&slot.0);
        let current = self.current.load();
        if let Some(l) = &*held {
            if Arc::ptr_eq(&l.0, &current) {
                return l.clone();
            }
        }
        let l = Arc::new(Local(arc_swap::Guard::into_inner(current)));
        *held = Some(l.clone());
        l
    }

    /// The shutdown deadline is near: every open WebSocket tunnel sends
    /// Close 1001 to both peers (at a frame boundary) and ends, so clients
    /// reconnect cleanly instead of seeing a reset.
    pub fn going_away(&self) {
        self.going_away.send_replace(true);
    }

    /// Handle one client request; never fails (errors become responses).
    ///
    /// The head is read (session, checks, header preparation) before the
    /// returned future is built, which then holds only what the awaits
    /// need: every request's future is boxed and moved whole, so its size
    /// is paid per request (see `server::Answer`).
    ///
    /// `this` is whatever owns or lends the proxy for the request's life
    /// (a connection's handle, a reference). `then` turns the response into
    /// what the caller's service answers, inside this future rather than
    /// through a wrapper that would hold it (and move it) once more.
    pub fn handle<P, T>(
        this: P,
        req: Request<Incoming>,
        client: ClientInfo,
        then: impl FnOnce(Response<ResponseBody>) -> T,
    ) -> impl std::future::Future<Output = T>
    where
        P: std::ops::Deref<Target = Proxy>,
    {
        let started = Instant::now();
        let local = this.runtime_here();
        let rt = &local.0;
        let (parts, body) = req.into_parts();
        let s = &rt.config.session;
        let log = this.access_log.load_full().map(|l| {
            let head =
                access_log::LoggedRequest::capture(&parts, client, s.path_parameter.as_deref());
            Box::new((l, head))
        });
        let owned = crate::routing::session::find(
            &parts.headers,
            parts.uri.path(),
            &s.cookie,
            s.path_parameter.as_deref(),
            &s.separator,
            |r| rt.table.index_of(r).is_some(),
        )
        .map(OwnedSession::from);
        let checked = headers::check_request(&parts, &rt.config.server);
        // Without an Upgrade field only an extended CONNECT (h2) can ask
        // for a WebSocket: most heads skip the token search.
        let ws = match checked {
            Ok(c) if c.upgrade || parts.method == http::Method::CONNECT => {
                websocket::detect(&parts)
            }
            _ => None,
        };
        let mut step = if let Err(r) = checked {
            tracing::info!(peer = %client.peer, error = %r, "request refused");
            Step::Answer(r.response())
        } else if parts.method == http::Method::CONNECT && ws.is_none() {
            Step::Answer(error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported by this reverse proxy\n",
            ))
        } else if let Some(kind) = ws {
            Step::WebSocket(Box::new(parts), kind)
        } else {
            Step::Forward(forward::Outgoing::request(parts, body, &rt.config, client))
        };
        async move {
            let rt = &local.0;
            let session = owned.as_ref().map(OwnedSession::borrow);
            let (response, by) = match step {
                Step::Answer(r) => (r, AnsweredBy::Balancer),
                Step::WebSocket(parts, kind) => {
                    let stop = this.going_away.subscribe();
                    // Boxed: a rare path whose state would otherwise size
                    // every request's future.
                    let (r, served) = Box::pin(websocket::handle(
                        rt,
                        *parts,
                        session.as_ref(),
                        client,
                        kind,
                        started,
                        stop,
                    ))
                    .await;
                    (r, served.map_or(AnsweredBy::Balancer, AnsweredBy::Backend))
                }
                // Lent to the attempt loop: `step` already holds it in this
                // future (see `forward::run`).
                Step::Forward(ref mut out) => match forward::run(rt, out, session.as_ref()).await {
                    Ok(done) => {
                        // In steps rather than through `finish`: see `Arrived`.
                        let mut a = Arrived::new(rt, done, started);
                        a.answered(rt, session.as_ref(), client).await;
                        let (r, served) = a.respond(rt);
                        (r, AnsweredBy::Backend(served))
                    }
                    Err(f) => {
                        if let Some(s) = &session {
                            tracing::warn!(session = %redact(s.base), error = %f, "request failed");
                        } else {
                            tracing::warn!(error = %f, "request failed");
                        }
                        (f.response(), AnsweredBy::Balancer)
                    }
                },
            };
            let served = match by {
                AnsweredBy::Backend(served) => Some(served),
                AnsweredBy::Balancer => {
                    rt.stats.count_local(response.status());
                    None
                }
            };
            this.log(log, &response, served.as_ref(), session.as_ref(), started);
            then(response)
        }
    }

    /// Write the access log line, when the log is on.
    fn log(
        &self,
        log: Option<Box<(Arc<AccessLogger>, access_log::LoggedRequest)>>,
        response: &Response<ResponseBody>,
        served: Option<&Served<'_>>,
        session: Option<&SessionId<'_>>,
        started: Instant,
    ) {
        let Some(log) = log else { return };
        let (log, head) = *log;
        let served = access_log::ServedBy {
            route: served.map(|s| s.backend.route()),
            reason: served.map(|s| &s.reason),
            session: session.map(|s| s.base),
        };
        log.write(head, response.status(), served, started.elapsed());
    }
}

/// Who answered a request: the balancer itself (refused, no backend,
/// upstream failure) or a backend.
enum AnsweredBy<'a> {
    Balancer,
    Backend(Served<'a>),
}

/// The backend that answered and why it was chosen (counters, access log).
pub struct Served<'a> {
    pub backend: &'a Arc<Backend>,
    pub reason: crate::routing::Reason,
}

/// Turn the upstream response into the client response (see [`Arrived`]).
async fn finish<'a>(
    rt: &'a Runtime,
    done: forward::Done,
    session: Option<&SessionId<'_>>,
    client: ClientInfo,
    started: Instant,
) -> (Response<ResponseBody>, Served<'a>) {
    let mut a = Arrived::new(rt, done, started);
    a.answered(rt, session, client).await;
    a.respond(rt)
}

/// A backend's answer on its way to the client. Only the session store's
/// write is awaited between the steps, so the request's own future holds
/// these pieces in place rather than a [`finish`] future moved whole at
/// its await (a few hundred bytes per request).
struct Arrived<'a> {
    parts: http::response::Parts,
    body: crate::body::BackendBody,
    exchange: crate::body::UpstreamLease,
    served: Served<'a>,
    kept: headers::Kept,
}

impl<'a> Arrived<'a> {
    /// Account the answer on its backend and drop its hop-by-hop fields.
    fn new(rt: &'a Runtime, done: forward::Done, started: Instant) -> Self {
        let forward::Done {
            response,
            exchange,
            backend,
            reason,
            upgrade: _,
        } = done;
        let backend = &rt.table.backends[backend];
        let (mut parts, body) = response.into_parts();
        backend
            .stats
            .traffic
            .record(parts.status.as_u16(), started.elapsed());
        health::note_status(backend, &rt.config.health, parts.status);
        let kept = headers::strip_hop_by_hop(&mut parts.headers);
        Arrived {
            parts,
            body,
            exchange,
            served: Served { backend, reason },
            kept,
        }
    }

    /// Rewrite the session cookie and store what the answer taught (a 5xx
    /// binds nothing).
    async fn answered(
        &mut self,
        rt: &Runtime,
        session: Option<&SessionId<'_>>,
        client: ClientInfo,
    ) {
        let learn = !self.parts.status.is_server_error();
        answered(
            rt,
            &self.served,
            session,
            client,
            &mut self.parts.headers,
            learn,
            self.kept,
        )
        .await;
    }

    /// The client's response, streaming the backend's body.
    fn respond(self, rt: &Runtime) -> (Response<ResponseBody>, Served<'a>) {
        let idle = crate::body::IdleTimer::new(rt.config.upstream.body_timeout);
        let body = ResponseBody::Upstream {
            body: self.body,
            exchange: self.exchange,
            idle,
        };
        (Response::from_parts(self.parts, body), self.served)
    }
}

/// The one place a backend's answer is accounted and rewritten, for plain
/// responses and WebSocket upgrades alike: a failover counts on the heir,
/// then the session cookie gets its route (see `rewrite::apply`) and what
/// the answer taught about the session is stored. `learn` is false for a
/// 5xx, which binds nothing; `kept` says whether hop-by-hop removal saw
/// any `Set-Cookie`.
pub(super) async fn answered(
    rt: &Runtime,
    served: &Served<'_>,
    session: Option<&SessionId<'_>>,
    client: ClientInfo,
    headers: &mut http::HeaderMap,
    learn: bool,
    kept: headers::Kept,
) {
    if served.reason.failed_over_from().is_some() {
        served
            .backend
            .stats
            .failovers_in
            .fetch_add(1, Ordering::Relaxed);
    }
    let x = rewrite::Exchange {
        table: &rt.table,
        store: &*rt.store,
        cookie: &rt.config.session.cookie,
        separator: &rt.config.session.separator,
        served: served.backend,
        reason: &served.reason,
        session,
        https: client.https,
    };
    rewrite::apply(&x, headers, learn, kept.set_cookie)
        .store_now(&*rt.store)
        .await;
}

/// A balancer-made response with a short text body.
pub fn error_response(status: StatusCode, msg: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(msg));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// What a request head leads to, decided before any await. (Nearly every
/// request is a `Forward`, the largest: boxing it would cost an allocation
/// per request to save bytes on the rare ones.)
#[allow(clippy::large_enum_variant)]
enum Step {
    /// Refused by the balancer itself.
    Answer(Response<ResponseBody>),
    /// A WebSocket handshake (boxed: rare, and its head is large).
    WebSocket(Box<http::request::Parts>, websocket::Handshake),
    /// A request for a backend.
    Forward(forward::Outgoing),
}

/// The session id copied out of the request head, which moves upstream,
/// with where its base and route lie (so it is not parsed again).
struct OwnedSession {
    value: Box<str>,
    base_len: usize,
    route_at: Option<usize>,
    source: Source,
}

impl From<SessionId<'_>> for OwnedSession {
    fn from(s: SessionId<'_>) -> Self {
        // `base` is a prefix of `value` and `route` a suffix (see
        // `SessionId::parse`).
        OwnedSession {
            value: s.value.into(),
            base_len: s.base.len(),
            route_at: s.route.map(|r| s.value.len() - r.len()),
            source: s.source,
        }
    }
}

impl OwnedSession {
    fn borrow(&self) -> SessionId<'_> {
        SessionId {
            value: &self.value,
            base: &self.value[..self.base_len],
            route: self.route_at.map(|i| &self.value[i..]),
            source: self.source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::time::Duration;

    fn test_runtime() -> Arc<Runtime> {
        let text = "[server]\nlisten = [\"127.0.0.1:0\"]\n[health]\nenabled = false\n\
                    [[backend]]\nroute = \"t1\"\nurl = \"http://127.0.0.1:1\"\n";
        let cfg = crate::config::from_str(text, std::path::Path::new("test.toml")).unwrap();
        Runtime::start(cfg, MemoryStore::new(Duration::from_secs(60), 10))
    }

    #[tokio::test]
    async fn a_request_thread_reuses_its_handle_and_a_reload_leaves_none_on_the_old_runtime() {
        crate::thread_index::set(0);
        let (old, new) = (test_runtime(), test_runtime());
        let held_elsewhere = Arc::strong_count(&old);
        let proxy = Proxy::new(old.clone(), None);
        let first = proxy.runtime_here();
        assert!(Arc::ptr_eq(&first.0, &old));
        assert!(
            Arc::ptr_eq(&proxy.runtime_here(), &first),
            "one handle per thread"
        );
        drop(first);
        proxy.swap(new.clone());
        assert!(
            lock(&proxy.locals[0].0).is_none(),
            "the swap cleared the slot"
        );
        assert_eq!(
            Arc::strong_count(&old),
            held_elsewhere,
            "old runtime still held"
        );
        assert!(Arc::ptr_eq(&proxy.runtime_here().0, &new));
    }

    #[test]
    fn error_responses_are_short_plain_text() {
        let r = error_response(StatusCode::BAD_GATEWAY, "502 bad gateway\n");
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            r.headers()[http::header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }

    #[test]
    fn owned_session_borrows_back_what_was_parsed() {
        for (raw, sep, want) in [
            ("ABC--t1", "--", ("ABC--t1", "ABC", Some("t1"))),
            ("ABC--t1", ".", ("ABC--t1", "ABC--t1", None)),
            ("\"ABC.t1\"", ".", ("ABC.t1", "ABC", Some("t1"))),
            ("ABC.", ".", ("ABC.", "ABC", None)),
            ("ABC.t1.x", ".", ("ABC.t1.x", "ABC", Some("t1.x"))),
        ] {
            let parsed = SessionId::parse(raw, sep, Source::PathParameter).unwrap();
            let owned = OwnedSession::from(parsed);
            let s = owned.borrow();
            assert_eq!(s, parsed, "{raw} with {sep}");
            assert_eq!((s.value, s.base, s.route), want, "{raw} with {sep}");
            assert_eq!(s.source, Source::PathParameter);
        }
    }
}
