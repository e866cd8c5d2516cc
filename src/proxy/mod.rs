//! The request path: client request -> session -> routing decision ->
//! upstream attempt(s) -> response rewrite. Data flows one way through
//! [`Proxy::handle`]; each step lives in its own module.

mod forward;
pub mod headers;
pub mod rewrite;
pub mod websocket;

use crate::backend::{health, Backend, PoolSettings};
use crate::body::ResponseBody;
use crate::config::Config;
pub use crate::routing::session::redact;
use crate::routing::{SessionId, Source, Table};
use crate::store::SessionStore;
use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

pub use forward::Failure;

/// Everything a request needs, swapped as a whole on reload so a request
/// sees one consistent configuration from start to end.
pub struct Runtime {
    pub config: Config,
    pub table: Table,
    pub store: Arc<dyn SessionStore>,
}

impl Runtime {
    /// Build backends (with pools and health checkers) for `config`.
    pub fn start(config: Config, store: Arc<dyn SessionStore>) -> Arc<Self> {
        let pool = PoolSettings::from_upstream(&config.upstream);
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b.clone(), pool.clone())))
            .collect();
        for b in &backends {
            health::spawn_checker(b, config.health.clone());
        }
        let table = Table::new(backends, config.algorithm);
        let rt = Arc::new(Runtime {
            config,
            table,
            store,
        });
        watch_health(Arc::downgrade(&rt));
        rt
    }
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
}

/// Facts about the client connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub https: bool,
}

impl Proxy {
    /// A proxy serving `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Arc<Self> {
        Arc::new(Proxy {
            current: ArcSwap::new(runtime),
        })
    }

    /// The runtime in force (status API, reload).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Handle one client request; never fails (errors become responses).
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        client: ClientInfo,
    ) -> Response<ResponseBody> {
        let rt = self.current.load_full();
        let (mut parts, body) = req.into_parts();
        let ws = websocket::detect(&parts);
        if parts.method == http::Method::CONNECT && ws.is_none() {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported by this reverse proxy\n",
            );
        }
        let s = &rt.config.session;
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
        if let Some(kind) = ws {
            return websocket::handle(&rt, parts, session.as_ref(), client, kind).await;
        }
        forward::prepare(&mut parts, &rt.config, client);
        match forward::run(&rt, parts, body, session.as_ref()).await {
            Ok(done) => finish(&rt, done, session.as_ref(), client).await,
            Err(f) => {
                if let Some(s) = &session {
                    tracing::warn!(session = %redact(s.base), error = %f, "request failed");
                } else {
                    tracing::warn!(error = %f, "request failed");
                }
                f.response()
            }
        }
    }
}

/// Turn the upstream response into the client response.
async fn finish(
    rt: &Runtime,
    done: forward::Done,
    session: Option<&SessionId<'_>>,
    client: ClientInfo,
) -> Response<ResponseBody> {
    let forward::Done {
        response,
        exchange,
        backend,
        reason,
    } = done;
    let (mut parts, body) = response.into_parts();
    health::note_status(&backend, &rt.config.health, parts.status);
    headers::strip_hop_by_hop(&mut parts.headers);
    if reason.failed_over_from().is_some() {
        backend
            .failovers_in
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    Response::from_parts(parts, ResponseBody::Upstream { body, exchange })
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
