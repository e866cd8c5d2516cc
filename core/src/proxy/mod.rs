//! The request path: client request -> session -> routing decision ->
//! upstream attempt(s) -> response rewrite. Data flows one way through
//! [`Proxy::handle`]; each step lives in its own module.

mod forward;
pub mod headers;
pub mod retry;
pub mod rewrite;
pub mod websocket;

use crate::access_log::{self, AccessLogger};
use crate::backend::{health, AdminState, Backend, PoolSettings};
use crate::body::ResponseBody;
use crate::config::Config;
pub use crate::routing::session::redact;
use crate::routing::{SessionId, Source, Table};
use crate::store::{SessionStore, StateChange};
use arc_swap::{ArcSwap, ArcSwapOption};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

impl Runtime {
    /// Build backends (with pools and health checkers) for `config`.
    pub fn start(config: Config, store: Arc<dyn SessionStore>) -> Arc<Self> {
        let pool =
            PoolSettings::from_upstream(&config.upstream).for_threads(config.server.threads());
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b.clone(), pool.clone())))
            .collect();
        for b in &backends {
            health::spawn_checker(b, config.health.clone());
        }
        Self::assemble(config, backends, store, Arc::default())
    }

    fn assemble(
        config: Config,
        backends: Vec<Arc<Backend>>,
        store: Arc<dyn SessionStore>,
        stats: Arc<ProxyStats>,
    ) -> Arc<Self> {
        let routes: Vec<Arc<str>> = backends.iter().map(|b| b.config.route.clone()).collect();
        store.set_routes(&routes);
        let table = Table::new(backends, config.algorithm);
        let rt = Arc::new(Runtime {
            config,
            table,
            store,
            stats,
        });
        watch_health(Arc::downgrade(&rt));
        rt
    }

    /// The runtime for a reloaded `config`, built from this one: unchanged
    /// backends are the same objects (health, state, pool, counters and
    /// in-flight requests carry on), changed ones succeed their old self,
    /// new ones start fresh. The store stays; settings that only a restart
    /// can change are reported in the returned warnings.
    pub fn reloaded(&self, mut config: Config) -> (Arc<Self>, Vec<String>) {
        let mut warnings = Vec::new();
        if config.store != self.config.store {
            warnings.push("[store] changed: the running store is kept; restart stickgate to apply the new store settings".to_owned());
        }
        let (a, b) = (&config.session, &self.config.session);
        if a.idle_timeout != b.idle_timeout || a.max_sessions != b.max_sessions {
            warnings.push("session.idle_timeout / session.max_sessions changed: they belong to the store; restart stickgate to apply them".to_owned());
        }
        if config.admin.listen != self.config.admin.listen {
            // The listener keeps its address, so it keeps the token rules
            // checked for that address too: a new loopback address without
            // a token must not open the old public listener.
            warnings.push(
                "admin.listen changed: the admin listener and its token stay as they are until a restart"
                    .to_owned(),
            );
            config.admin = self.config.admin.clone();
        } else if config.admin.token != self.config.admin.token {
            tracing::info!("admin token replaced by reload");
        }
        let pool =
            PoolSettings::from_upstream(&config.upstream).for_threads(config.server.threads());
        let same_pool = config.upstream == self.config.upstream;
        let same_health = config.health == self.config.health;
        let mut backends = Vec::with_capacity(config.backends.len());
        for bc in &config.backends {
            let old = self
                .table
                .index_of(&bc.route)
                .map(|i| &self.table.backends[i]);
            let b = match old {
                Some(o) if o.config == *bc && same_pool => {
                    if !same_health {
                        health::spawn_checker(o, config.health.clone());
                    }
                    o.clone()
                }
                Some(o) => {
                    let b = Arc::new(Backend::succeed(o, bc.clone(), pool.clone()));
                    health::spawn_checker(&b, config.health.clone());
                    if o.config.state != bc.state {
                        // The file now says otherwise: that is the newest
                        // operator decision; share it like an API action.
                        let state = AdminState::from(bc.state);
                        impose_state(&*self.store, &b, state, "the reloaded config");
                    }
                    b
                }
                None => {
                    let b = Arc::new(Backend::new(bc.clone(), pool.clone()));
                    health::spawn_checker(&b, config.health.clone());
                    tracing::info!(backend = %bc.route, "backend added by reload");
                    b
                }
            };
            backends.push(b);
        }
        for old in &self.table.backends {
            if !config.backends.iter().any(|b| b.route == old.config.route) {
                tracing::info!(
                    backend = old.route(),
                    "backend removed by reload; its sessions fail over"
                );
                self.store.route_down(old.route());
            }
        }
        let rt = Self::assemble(config, backends, self.store.clone(), self.stats.clone());
        (rt, warnings)
    }
}

/// An operator's decision (API action or a changed `state` line): newer
/// than anything this balancer has seen for the backend, applied at once
/// and shared through the store with every other balancer; `stopped` also
/// tells the store the route's sessions are leaving, like a node going down.
fn impose_state(store: &dyn SessionStore, b: &Backend, state: AdminState, by: &str) {
    let at_ms = crate::store::unix_ms().max(b.state_at_ms() + 1);
    b.set_state(state, at_ms);
    store.publish_state(b.route(), StateChange { state, at_ms });
    if state == AdminState::Stopped {
        store.route_down(b.route());
    }
    tracing::info!(backend = b.route(), state = %state, by, "state changed");
}

/// Tell the store when a backend goes down (see `SessionStore::route_down`),
/// checking every 100 ms; stops with the runtime.
fn watch_health(rt: std::sync::Weak<Runtime>) {
    tokio::spawn(async move {
        let mut seen: Vec<u64> = Vec::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tick.tick().await;
            let Some(rt) = rt.upgrade() else { return };
            seen.resize(rt.table.backends.len(), 0);
            for (b, last) in rt.table.backends.iter().zip(seen.iter_mut()) {
                let epoch = b.health_epoch();
                if epoch != *last {
                    *last = epoch;
                    if !b.is_up() {
                        rt.store.route_down(b.route());
                    }
                }
            }
        }
    });
}

/// The proxy service shared by every listener and connection.
pub struct Proxy {
    current: ArcSwap<Runtime>,
    access_log: ArcSwapOption<AccessLogger>,
}

/// Facts about the client connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub https: bool,
    /// The peer's address as header text, written once per connection
    /// (every forwarded request carries it in X-Forwarded-For).
    pub ip: headers::IpText,
}

impl ClientInfo {
    /// The facts of a connection from `peer`.
    pub fn new(peer: SocketAddr, https: bool) -> Self {
        ClientInfo {
            peer,
            https,
            ip: headers::IpText::new(peer.ip()),
        }
    }
}

impl Proxy {
    /// A proxy serving `runtime`.
    pub fn new(runtime: Arc<Runtime>, access_log: Option<Arc<AccessLogger>>) -> Arc<Self> {
        Arc::new(Proxy {
            current: ArcSwap::new(runtime),
            access_log: ArcSwapOption::new(access_log),
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
    }

    /// An operator's state change through the admin API (see
    /// `impose_state`). `None` when no backend has that route.
    pub fn set_state(&self, route: &str, state: AdminState) -> Option<Arc<Backend>> {
        let rt = self.runtime();
        let b = rt.table.backends[rt.table.index_of(route)?].clone();
        impose_state(&*rt.store, &b, state, "the admin API");
        Some(b)
    }

    /// Apply state changes other balancers shared through the store,
    /// checking every 200 ms; the newest change wins (see
    /// `Backend::set_state`). Runs until the proxy is dropped.
    pub fn follow_states(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(proxy) = weak.upgrade() else { return };
                let rt = proxy.runtime();
                for (route, change) in rt.store.states() {
                    let Some(i) = rt.table.index_of(&route) else {
                        continue;
                    };
                    let b = &rt.table.backends[i];
                    if change.at_ms > b.state_at_ms() && b.set_state(change.state, change.at_ms) {
                        if change.state == AdminState::Stopped {
                            rt.store.route_down(&route);
                        }
                        tracing::info!(backend = %route, state = %change.state, "state changed by another balancer");
                    }
                }
            }
        });
    }

    /// Handle one client request; never fails (errors become responses).
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        client: ClientInfo,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let rt = self.current.load_full();
        let (mut parts, body) = req.into_parts();
        let s = &rt.config.session;
        let log = self.access_log.load_full().map(|l| {
            let head = access_log::Head::capture(&parts, client, s.path_parameter.as_deref());
            (l, head)
        });
        let owned = {
            let path = parts.uri.path();
            crate::routing::session::find(
                &parts.headers,
                path,
                &s.cookie,
                s.path_parameter.as_deref(),
                &s.separator,
                |r| rt.table.index_of(r).is_some(),
            )
            .map(OwnedSession::from)
        };
        let session = owned.as_ref().map(|o| o.borrow(&s.separator));
        let ws = websocket::detect(&parts);
        let (response, served) = if let Err(r) = headers::check_request(&parts, &rt.config.server) {
            tracing::info!(peer = %client.peer, error = %r, "request refused");
            (r.response(), None)
        } else if parts.method == http::Method::CONNECT && ws.is_none() {
            let r = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported by this reverse proxy\n",
            );
            (r, None)
        } else if let Some(kind) = ws {
            let (r, served) =
                websocket::handle(&rt, parts, session.as_ref(), client, kind, started).await;
            (r, served.map(Some))
        } else {
            forward::prepare(&mut parts, &rt.config, client);
            match forward::run(&rt, parts, body, session.as_ref()).await {
                Ok(done) => {
                    // Only the access log needs to know who answered.
                    let served = log
                        .as_ref()
                        .map(|_| (done.backend.clone(), done.reason.clone()));
                    let r = finish(&rt, done, session.as_ref(), client, started).await;
                    (r, Some(served))
                }
                Err(f) => {
                    if let Some(s) = &session {
                        tracing::warn!(session = %redact(s.base), error = %f, "request failed");
                    } else {
                        tracing::warn!(error = %f, "request failed");
                    }
                    (f.response(), None)
                }
            }
        };
        let Some(served) = served else {
            // The balancer answered itself: count it by class.
            let class = response.status().as_u16() / 100;
            if let Some(c) = rt.stats.local_errors.get((class as usize).wrapping_sub(4)) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            self.log(log, &response, None, session.as_ref(), started);
            return response;
        };
        self.log(log, &response, served.as_ref(), session.as_ref(), started);
        response
    }

    /// Write the access log line, when the log is on.
    fn log(
        &self,
        log: Option<(Arc<AccessLogger>, access_log::Head)>,
        response: &Response<ResponseBody>,
        served: Option<&websocket::Served>,
        session: Option<&SessionId<'_>>,
        started: Instant,
    ) {
        let Some((log, head)) = log else { return };
        let served = access_log::Served {
            route: served.map(|(b, _)| b.route()),
            reason: served.map(|(_, r)| r),
            session: session.map(|s| s.base),
        };
        log.write(head, response.status(), served, started.elapsed());
    }
}

/// Turn the upstream response into the client response.
async fn finish(
    rt: &Runtime,
    done: forward::Done,
    session: Option<&SessionId<'_>>,
    client: ClientInfo,
    started: Instant,
) -> Response<ResponseBody> {
    let forward::Done {
        response,
        exchange,
        backend,
        reason,
    } = done;
    let (mut parts, body) = response.into_parts();
    backend
        .stats
        .traffic
        .record(parts.status.as_u16(), started.elapsed());
    health::note_status(&backend, &rt.config.health, parts.status);
    headers::strip_hop_by_hop(&mut parts.headers);
    if reason.failed_over_from().is_some() {
        backend.stats.failovers_in.fetch_add(1, Ordering::Relaxed);
    }
    let x = rewrite::Exchange {
        table: &rt.table,
        store: &*rt.store,
        cookie: &rt.config.session.cookie,
        separator: &rt.config.session.separator,
        served: &backend,
        reason: &reason,
        session,
        https: client.https,
    };
    rewrite::apply(&x, &mut parts.headers, !parts.status.is_server_error())
        .store_now(&*rt.store)
        .await;
    let idle = crate::body::IdleTimer::new(rt.config.upstream.body_timeout);
    Response::from_parts(
        parts,
        ResponseBody::Upstream {
            body,
            exchange,
            idle,
        },
    )
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

/// The session id copied out of the request head, which moves upstream.
struct OwnedSession {
    value: Box<str>,
    source: Source,
}

impl From<SessionId<'_>> for OwnedSession {
    fn from(s: SessionId<'_>) -> Self {
        OwnedSession {
            value: s.value.into(),
            source: s.source,
        }
    }
}

impl OwnedSession {
    fn borrow<'a>(&'a self, sep: &str) -> SessionId<'a> {
        SessionId::parse(&self.value, sep, self.source).unwrap_or(SessionId {
            value: &self.value,
            base: &self.value,
            route: None,
            source: self.source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::path::Path;
    use std::time::Duration;

    fn config(extra: &str, backends: &[(&str, u16)]) -> Config {
        let nodes: String = backends
            .iter()
            .map(|(r, p)| format!("[[backend]]\nroute = \"{r}\"\nurl = \"http://127.0.0.1:{p}\"\n"))
            .collect();
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[health]\nenabled = false\n{extra}\n{nodes}"
        );
        crate::config::from_str(&text, Path::new("test.toml")).unwrap()
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
    fn owned_session_borrows_back_with_the_configured_separator() {
        let owned = OwnedSession {
            value: "ABC--t1".into(),
            source: Source::Cookie,
        };
        let s = owned.borrow("--");
        assert_eq!((s.base, s.route), ("ABC", Some("t1")));
        let s = owned.borrow(".");
        assert_eq!((s.base, s.route), ("ABC--t1", None));
        // An id the parser refuses is still carried whole, without a route.
        let odd = OwnedSession {
            value: "--t1".into(),
            source: Source::PathParameter,
        };
        let s = odd.borrow("--");
        assert_eq!((s.value, s.base, s.route), ("--t1", "--t1", None));
        assert_eq!(s.source, Source::PathParameter);
    }

    #[tokio::test]
    async fn reload_keeps_unchanged_backends_and_warns_about_restart_only_keys() {
        let store = MemoryStore::new(Duration::from_secs(60), 100);
        let rt = Runtime::start(config("", &[("a", 1), ("b", 2)]), store);
        rt.table.backends[0].set_up(false, "test");
        let (next, warnings) = rt.reloaded(config("", &[("a", 1), ("b", 3), ("c", 4)]));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(Arc::ptr_eq(&rt.table.backends[0], &next.table.backends[0]));
        assert!(!next.table.backends[0].is_up(), "health carried over");
        assert!(!Arc::ptr_eq(&rt.table.backends[1], &next.table.backends[1]));
        assert_eq!(next.table.backends.len(), 3);
        assert!(
            Arc::ptr_eq(&rt.stats, &next.stats),
            "counters outlive reloads"
        );
        let (_, warnings) = rt.reloaded(config(
            "[session]\nmax_sessions = 5\n",
            &[("a", 1), ("b", 2)],
        ));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("max_sessions"), "{warnings:?}");
        // New pool settings rebuild every backend.
        let (next, _) = rt.reloaded(config(
            "[upstream]\nmax_connections = 3\n",
            &[("a", 1), ("b", 2)],
        ));
        assert!(!Arc::ptr_eq(&rt.table.backends[0], &next.table.backends[0]));
    }
}
