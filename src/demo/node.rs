//! A Tomcat-like demo backend node.
//!
//! It exists so stickgate can be tried and tested without a real servlet
//! container: it issues `JSESSIONID=<32 hex>.<jvmRoute>` cookies, honours the
//! `;jsessionid=` path parameter, and — when sessions live in Redis — renames
//! failed-over sessions to its own route the way Tomcat's
//! `JvmRouteBinderValve` does. A few extra endpoints (`/headers`,
//! `/download`, `/upload`, `/slow`) let tests observe what the balancer
//! forwards and how it streams, and `/ws` is a sticky WebSocket echo.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE,
    SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, SET_COOKIE, UPGRADE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::RngExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::config::redact_url;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// How long an idle session lives, in seconds; matches Tomcat's default
/// 30-minute session timeout so demo behaviour looks familiar.
const SESSION_TTL_SECS: u64 = 1800;
/// Prefix of the Redis keys holding hit counts, so demo data is easy to spot
/// and delete in a shared Redis.
const REDIS_KEY_PREFIX: &str = "demo:session:";
/// Size of one `/download` chunk: big enough to be cheap, small enough to
/// keep memory flat whatever size is asked for.
const CHUNK_LEN: usize = 64 * 1024;
/// Shared filler for `/download`; slices of it are sent without copying.
static FILL: [u8; CHUNK_LEN] = [b'.'; CHUNK_LEN];
/// Upper bound on session ids looked up per request, so a request stuffed
/// with cookies cannot turn into hundreds of Redis round trips.
const MAX_CANDIDATES: usize = 16;
/// Longest accepted base id; real ids are 32 characters.
const MAX_BASE_LEN: usize = 64;
/// How often the in-memory store drops expired sessions, so a long load
/// test without cookies does not grow memory forever.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Checks a session in Redis and, only if it exists, counts the hit and
/// refreshes its expiry — atomically, so a session is never resurrected.
const TOUCH_SCRIPT: &str = "if redis.call('EXISTS', KEYS[1]) == 1 then \
     local n = redis.call('INCR', KEYS[1]) \
     redis.call('EXPIRE', KEYS[1], ARGV[1]) \
     return n \
     end \
     return 0";

/// Body type of every response: either a small buffered body or the
/// `/download` stream, boxed so handlers can return either.
type RespBody = BoxBody<Bytes, Infallible>;

/// Settings of one demo node.
///
/// Mirrors the few Tomcat knobs that matter to a sticky balancer: the
/// `jvmRoute`, the session cookie name, whether ids carry the route, and
/// whether sessions are shared (replicated) through Redis.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's `jvmRoute`, e.g. `tomcat1`; appended to session ids so the
    /// balancer can route requests back here.
    pub route: String,
    /// Session cookie name, `JSESSIONID` by default; its lowercase form is
    /// also the path parameter name (`;jsessionid=`).
    pub cookie: String,
    /// Issue bare ids without the `.route` suffix, to exercise balancers
    /// that must remember the binding themselves.
    pub no_suffix: bool,
    /// Keep session data in Redis at this URL, which makes several nodes
    /// behave like a session-replicating cluster.
    pub redis_url: Option<String>,
    /// Share session data in memory with other nodes of the same process
    /// (a replicated cluster without Redis, for `stickgate demo`).
    pub shared: Option<SharedSessions>,
    /// Stop like Tomcat on SIGTERM: close idle keep-alive connections,
    /// finish in-flight requests, keep completing TCP handshakes but reset
    /// each new connection this long after accepting it, then exit. Lets
    /// drills reproduce a rolling restart without a servlet container.
    pub graceful_stop: Option<Duration>,
}

/// Session data shared in-process by several demo nodes, the way Tomcat's
/// DeltaManager replicates sessions to every member.
#[derive(Clone, Default)]
pub struct SharedSessions(Arc<MemoryStore>);

impl SharedSessions {
    /// An empty shared session space.
    pub fn new() -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for SharedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSessions")
    }
}

impl NodeConfig {
    /// Settings with Tomcat's defaults (`JSESSIONID`, route suffix on,
    /// in-memory sessions), so callers only name the route.
    pub fn new(route: impl Into<String>) -> Self {
        Self {
            route: route.into(),
            cookie: "JSESSIONID".to_owned(),
            no_suffix: false,
            redis_url: None,
            shared: None,
            graceful_stop: None,
        }
    }

    /// Checks the settings without touching the network, so a CLI can
    /// reject a bad route, cookie name or Redis URL before announcing that
    /// it listens. [`serve`] runs the same checks.
    pub fn validate(&self) -> Result<(), NodeError> {
        if !valid_route(&self.route) {
            return Err(NodeError::InvalidRoute(self.route.clone()));
        }
        if !valid_cookie_name(&self.cookie) {
            return Err(NodeError::InvalidCookieName(self.cookie.clone()));
        }
        if let Some(url) = &self.redis_url {
            redis_client(url)?;
        }
        Ok(())
    }
}

/// Why a demo node could not start; each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The route would produce invalid cookies or headers.
    #[error("invalid route {0:?}: use 1-64 letters, digits, '-', '_' or '.' (e.g. tomcat1)")]
    InvalidRoute(String),
    /// The cookie name is not a valid HTTP token.
    #[error("invalid cookie name {0:?}: use letters, digits and '-', '_' (e.g. JSESSIONID)")]
    InvalidCookieName(String),
    /// The Redis URL could not be parsed.
    #[error("invalid Redis URL {url}: {source}; use the form redis://host:port[/db]")]
    RedisUrl {
        /// The URL as given, with any password hidden.
        url: String,
        /// What the Redis client objected to.
        source: redis::RedisError,
    },
    /// Redis did not answer at startup.
    #[error("cannot connect to Redis at {url}: {source}; start redis-server there or drop the Redis URL")]
    RedisConnect {
        /// The URL as given, with any password hidden.
        url: String,
        /// The connection error.
        source: redis::RedisError,
    },
    /// The SIGTERM handler for the graceful stop could not be installed.
    #[error("cannot handle SIGTERM for --graceful-stop-ms: {0}; run without it")]
    Signal(std::io::Error),
}

/// Serves the demo node on an already-bound listener until this future is
/// dropped, or, with `graceful_stop`, until a SIGTERM stop has finished.
///
/// Taking a bound listener lets callers use port 0 and learn the real port
/// before serving. Dropping the future also aborts every open connection,
/// which is how tests simulate a node crash. Fails only during setup
/// (invalid settings, unreachable Redis); accept errors are logged and
/// retried.
pub async fn serve(listener: TcpListener, cfg: NodeConfig) -> Result<(), NodeError> {
    let graceful = cfg.graceful_stop;
    let node = Arc::new(Node::new(cfg).await?);
    let mut connections = JoinSet::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sigterm = match graceful {
        Some(_) => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(NodeError::Signal)?,
        ),
        None => None,
    };
    let term = async {
        match sigterm.as_mut() {
            Some(s) => s.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(term);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, Arc::clone(&node), stop_rx.clone()));
                }
                Err(err) => {
                    tracing::warn!(%err, "demo node: accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = &mut term => break,
        }
    }
    let reset_after = graceful.unwrap_or_default();
    let _ = stop_tx.send(true);
    tracing::info!("demo node: stopping like Tomcat (idle connections closed, new ones reset)");
    // Finish in-flight requests while resetting every new connection.
    let mut resets = JoinSet::new();
    let mut linger = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => if let Ok((stream, _)) = accepted {
                resets.spawn(async move {
                    tokio::time::sleep(reset_after).await;
                    // Zero linger: close with RST, as a paused acceptor's
                    // backlog is reset when Tomcat closes its socket.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    drop(stream);
                });
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            Some(_) = resets.join_next(), if !resets.is_empty() => {}
            _ = async { tokio::time::sleep_until(linger.unwrap_or_else(tokio::time::Instant::now)).await },
                if linger.is_some() => return Ok(()),
        }
        if connections.is_empty() && linger.is_none() {
            // Tomcat unloads its webapps after the last request: a second
            // during which the port still completes handshakes.
            linger = Some(tokio::time::Instant::now() + Duration::from_secs(1));
        }
    }
}

/// Runs HTTP/1.1 with keep-alive on one accepted connection; closes it
/// once idle when `stop` turns true (graceful stop).
async fn serve_connection(
    stream: TcpStream,
    node: Arc<Node>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, "demo node: cannot set TCP_NODELAY");
    }
    let service = service_fn(move |req| {
        let node = Arc::clone(&node);
        async move { Ok::<_, Infallible>(node.handle(req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        true = async { stop.wait_for(|s| *s).await.is_ok() } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, "demo node: connection ended with an error");
    }
}

/// Validated settings plus session storage shared by all connections.
struct Node {
    cfg: NodeConfig,
    /// `cfg.cookie` lowercased: the `;jsessionid=` path parameter name.
    path_param: String,
    /// Pre-built `X-Backend` value so every response can carry it cheaply.
    backend: HeaderValue,
    store: Store,
}

impl Node {
    /// Validates the settings and connects to Redis if asked to, so
    /// misconfiguration shows up at startup rather than per request.
    async fn new(cfg: NodeConfig) -> Result<Self, NodeError> {
        cfg.validate()?;
        let backend = HeaderValue::from_str(&cfg.route)
            .map_err(|_| NodeError::InvalidRoute(cfg.route.clone()))?;
        let store = match &cfg.redis_url {
            Some(url) => Store::Redis(connect_redis(url).await?),
            None => Store::Memory(cfg.shared.clone().map(|s| s.0).unwrap_or_default()),
        };
        Ok(Self {
            path_param: cfg.cookie.to_ascii_lowercase(),
            backend,
            store,
            cfg,
        })
    }

    /// Answers one request and stamps `X-Backend` so clients can see which
    /// node served them.
    async fn handle(&self, req: Request<Incoming>) -> Response<RespBody> {
        let mut resp = self.dispatch(req).await;
        resp.headers_mut()
            .insert(HeaderName::from_static("x-backend"), self.backend.clone());
        resp
    }

    /// Routes a request to the node's own paths after removing the session
    /// path parameter, as a servlet container would.
    async fn dispatch(&self, req: Request<Incoming>) -> Response<RespBody> {
        let (path, path_id) = split_path_param(req.uri().path(), &self.path_param);
        let path = path.into_owned();
        let path_id = path_id.map(str::to_owned);
        let query = req.uri().query().map(str::to_owned);
        if path == "/ws" {
            return self.websocket(req, path_id.as_deref()).await;
        }
        let (parts, body) = req.into_parts();
        if path == "/upload" {
            return self.upload(&parts.method, body).await;
        }
        if path == "/early" {
            // Tomcat answers some requests before reading their body, then
            // swallows the rest in the background; so does this endpoint,
            // so drills can check the balancer never reuses such a
            // connection while the body is still on its way.
            tokio::spawn(drain(body));
            return json(
                StatusCode::OK,
                &UploadBody {
                    route: &self.cfg.route,
                    bytes: 0,
                },
            );
        }
        if let Err(err) = drain(body).await {
            return body_failure(&err);
        }
        match path.as_str() {
            "/health" => text(StatusCode::OK, "ok"),
            "/headers" => headers_response(&parts.headers, parts.uri.path_and_query()),
            "/download" => download(query.as_deref()),
            "/stall" => stalling_download(query.as_deref()),
            "/slow" => match parse_query_u64(query.as_deref(), "ms") {
                Ok(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    self.session(path_id.as_deref(), &parts.headers).await
                }
                Err(msg) => text(StatusCode::BAD_REQUEST, msg),
            },
            _ => self.session(path_id.as_deref(), &parts.headers).await,
        }
    }

    /// Counts an uploaded body without buffering it, so tests can push
    /// gigabytes through the balancer and compare byte counts.
    async fn upload(&self, method: &Method, body: Incoming) -> Response<RespBody> {
        if method != Method::POST && method != Method::PUT {
            let mut resp = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use POST or PUT for /upload",
            );
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST, PUT"));
            return resp;
        }
        match drain(body).await {
            Ok(bytes) => json(
                StatusCode::OK,
                &UploadBody {
                    route: &self.cfg.route,
                    bytes,
                },
            ),
            Err(err) => body_failure(&err),
        }
    }

    /// Session handling of `/`: reuse the first known session the request
    /// names (renaming it to this route if it failed over), else start one.
    async fn session(&self, path_id: Option<&str>, headers: &HeaderMap) -> Response<RespBody> {
        match self.find_or_create(path_id, headers).await {
            Ok(s) => self.session_response(&s.base, s.hits, s.set_cookie),
            Err(err) => store_failure(&err),
        }
    }

    /// The first known session the request names (counting the hit), else
    /// a new one; says whether the client must (re)learn its cookie.
    async fn find_or_create(
        &self,
        path_id: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Found, redis::RedisError> {
        let candidates = path_id
            .into_iter()
            .chain(cookie_values(headers, &self.cfg.cookie))
            .take(MAX_CANDIDATES);
        for raw in candidates {
            let Some(id) = SessionId::parse(raw) else {
                continue;
            };
            if let Some(hits) = self.store.touch(id.base).await? {
                return Ok(Found {
                    base: id.base.to_owned(),
                    hits,
                    set_cookie: self.needs_rename(&id),
                });
            }
        }
        let base = new_base_id();
        self.store.create(&base).await?;
        Ok(Found {
            base,
            hits: 1,
            set_cookie: true,
        })
    }

    /// `/ws`: a WebSocket echo with the session handling of `/` (the `101`
    /// carries `Set-Cookie` when a session was created or renamed). Text
    /// and binary messages come back as sent; the text message `whoami`
    /// answers `{"route":..,"session":..}` instead.
    async fn websocket(&self, req: Request<Incoming>, path_id: Option<&str>) -> Response<RespBody> {
        let key = match ws_handshake_key(&req) {
            Ok(key) => key,
            Err(resp) => return *resp,
        };
        let found = match self.find_or_create(path_id, req.headers()).await {
            Ok(s) => s,
            Err(err) => return store_failure(&err),
        };
        let mut resp = Response::new(Full::new(Bytes::new()).boxed());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        match HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            Ok(v) => h.insert(SEC_WEBSOCKET_ACCEPT, v),
            Err(_) => return text(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key"),
        };
        if found.set_cookie {
            match self.session_cookie(&found.base) {
                Some(v) => resp.headers_mut().insert(SET_COOKIE, v),
                None => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "cannot encode session cookie",
                    )
                }
            };
        }
        let whoami =
            serde_json::json!({ "route": self.cfg.route, "session": found.base }).to_string();
        let on_upgrade = hyper::upgrade::on(req);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => echo(TokioIo::new(upgraded), whoami).await,
                Err(err) => tracing::debug!(%err, "demo node: websocket upgrade failed"),
            }
        });
        resp
    }

    /// Whether a known session arrived carrying another node's route, which
    /// Tomcat's `JvmRouteBinderValve` answers by reissuing the cookie.
    fn needs_rename(&self, id: &SessionId<'_>) -> bool {
        !self.cfg.no_suffix && id.route.is_some_and(|route| route != self.cfg.route)
    }

    /// The JSON body of `/`, plus a `Set-Cookie` when the client must
    /// (re)learn its session id.
    fn session_response(&self, base: &str, hits: u64, set_cookie: bool) -> Response<RespBody> {
        let mut resp = json(
            StatusCode::OK,
            &SessionBody {
                route: &self.cfg.route,
                session: base,
                hits,
            },
        );
        if set_cookie {
            match self.session_cookie(base) {
                Some(value) => {
                    resp.headers_mut().insert(SET_COOKIE, value);
                }
                None => {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "cannot encode session cookie",
                    )
                }
            }
        }
        resp
    }

    /// `Set-Cookie` value for a base id.
    fn session_cookie(&self, base: &str) -> Option<HeaderValue> {
        let cookie = format!(
            "{}={}; Path=/; HttpOnly",
            self.cfg.cookie,
            self.full_id(base)
        );
        HeaderValue::from_str(&cookie).ok()
    }

    /// The cookie value for a base id: `<base>.<route>`, or bare with
    /// `no_suffix`.
    fn full_id(&self, base: &str) -> String {
        if self.cfg.no_suffix {
            base.to_owned()
        } else {
            format!("{base}.{}", self.cfg.route)
        }
    }
}

/// The session a request belongs to after lookup or creation.
struct Found {
    base: String,
    hits: u64,
    /// The client must be sent the cookie (new or renamed session).
    set_cookie: bool,
}

/// Largest WebSocket message (and frame) the echo accepts; big enough for
/// the 16 MiB drills with room to spare.
const WS_MAX_MESSAGE: usize = 64 << 20;

/// The `Sec-WebSocket-Key` of a valid RFC 6455 opening handshake, or the
/// error answer (400, or 426 for an unsupported version).
fn ws_handshake_key(req: &Request<Incoming>) -> Result<String, Box<Response<RespBody>>> {
    let h = req.headers();
    let token = |name: HeaderName, want: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(want))
    };
    if req.method() != Method::GET || !token(UPGRADE, "websocket") || !token(CONNECTION, "upgrade")
    {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "/ws needs a WebSocket handshake (GET with Upgrade: websocket)",
        )));
    }
    if h.get(SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        let mut resp = text(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only");
        resp.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Err(Box::new(resp));
    }
    match h.get(SEC_WEBSOCKET_KEY).and_then(|v| v.to_str().ok()) {
        Some(key) if !key.trim().is_empty() => Ok(key.trim().to_owned()),
        _ => Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "missing Sec-WebSocket-Key",
        ))),
    }
}

/// Echo every text and binary message until the peer closes; `whoami`
/// answers with the node and session. Pings are answered by tungstenite.
async fn echo<S>(io: S, whoami: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    use tokio_tungstenite::tungstenite::Message;
    let config = WebSocketConfig::default()
        .max_message_size(Some(WS_MAX_MESSAGE))
        .max_frame_size(Some(WS_MAX_MESSAGE));
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    while let Some(msg) = ws.next().await {
        let reply = match msg {
            Ok(Message::Text(t)) if t.as_str() == "whoami" => Message::text(whoami.as_str()),
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => m,
            Ok(_) => continue,
            Err(err) => {
                tracing::debug!(%err, "demo node: websocket ended");
                return;
            }
        };
        if let Err(err) = ws.send(reply).await {
            tracing::debug!(%err, "demo node: websocket send failed");
            return;
        }
    }
}

/// A session id as sent by a client: the base id that keys the session and
/// the optional `jvmRoute` suffix after the first `.`.
#[derive(Debug, PartialEq, Eq)]
struct SessionId<'a> {
    base: &'a str,
    route: Option<&'a str>,
}

impl<'a> SessionId<'a> {
    /// Splits a raw id; `None` when the base cannot be one this node (or a
    /// peer sharing its Redis) issued, so junk never reaches the store.
    fn parse(raw: &'a str) -> Option<Self> {
        let (base, route) = match raw.split_once('.') {
            Some((base, route)) => (base, Some(route)),
            None => (raw, None),
        };
        let plausible = !base.is_empty()
            && base.len() <= MAX_BASE_LEN
            && base
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        plausible.then_some(Self { base, route })
    }
}

/// A fresh random base id in Tomcat's format: 32 uppercase hex digits.
fn new_base_id() -> String {
    format!("{:032X}", rand::rng().random::<u128>())
}

/// Removes every `;<param>=value` path parameter from `path` and returns
/// the cleaned path with the first non-empty value, as Tomcat does for
/// URL-rewritten sessions.
fn split_path_param<'a>(path: &'a str, param: &str) -> (Cow<'a, str>, Option<&'a str>) {
    let marker = format!(";{param}=");
    if !path.contains(&marker) {
        return (Cow::Borrowed(path), None);
    }
    let mut cleaned = String::with_capacity(path.len());
    let mut found = None;
    let mut rest = path;
    while let Some(start) = rest.find(&marker) {
        cleaned.push_str(&rest[..start]);
        let after = &rest[start + marker.len()..];
        let end = after.find([';', '/']).unwrap_or(after.len());
        if found.is_none() && end > 0 {
            found = Some(&after[..end]);
        }
        rest = &after[end..];
    }
    cleaned.push_str(rest);
    if cleaned.is_empty() {
        cleaned.push('/');
    }
    (Cow::Owned(cleaned), found)
}

/// Values of every cookie called `name` across all `Cookie` headers, in
/// order, so a stale duplicate cannot hide a valid session.
fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(move |pair| {
            let (key, value) = pair.split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches('"'))
        })
}

/// The value of query parameter `name`, if present.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// A required numeric query parameter, or the message a 400 should carry.
fn parse_query_u64(query: Option<&str>, name: &str) -> Result<u64, String> {
    query_param(query, name)
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| format!("query parameter {name} must be a non-negative integer"))
}

/// Reads a request body to the end without keeping it, so the connection
/// stays reusable; returns the byte count.
async fn drain(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            total = total.saturating_add(data.len() as u64);
        }
    }
    Ok(total)
}

/// 400 for a client that broke off while sending its body.
fn body_failure(err: &hyper::Error) -> Response<RespBody> {
    text(
        StatusCode::BAD_REQUEST,
        format!("reading request body failed: {err}"),
    )
}

/// `/headers`: the request headers as received plus the raw path, so tests
/// can check what the balancer added, rewrote or stripped.
fn headers_response(
    headers: &HeaderMap,
    path_and_query: Option<&http::uri::PathAndQuery>,
) -> Response<RespBody> {
    let mut map = serde_json::Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        map.insert(name.as_str().to_owned(), serde_json::Value::String(joined));
    }
    let path = path_and_query.map_or("/", |pq| pq.as_str());
    map.insert(
        "_path".to_owned(),
        serde_json::Value::String(path.to_owned()),
    );
    json(StatusCode::OK, &map)
}

/// `/download?bytes=N`: N filler bytes, streamed in fixed chunks.
fn download(query: Option<&str>) -> Response<RespBody> {
    match parse_query_u64(query, "bytes") {
        Ok(len) => {
            let filler = Filler {
                remaining: len,
                stall: None,
                sleep: None,
            };
            let mut resp = Response::new(filler.boxed());
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            resp.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(len));
            resp
        }
        Err(msg) => text(StatusCode::BAD_REQUEST, msg),
    }
}

/// `/stall?bytes=N&after=A&ms=M`: like `/download`, but pauses `M` ms once
/// `A` bytes went out, so drills can watch the balancer's response-body
/// idle timer (the client must see an aborted response, never a clean
/// short one).
fn stalling_download(query: Option<&str>) -> Response<RespBody> {
    let parsed = ["bytes", "after", "ms"].map(|n| parse_query_u64(query, n));
    match parsed {
        [Ok(len), Ok(after), Ok(ms)] => {
            let stall = Some((len.saturating_sub(after), Duration::from_millis(ms)));
            let filler = Filler {
                remaining: len,
                stall,
                sleep: None,
            };
            let mut resp = Response::new(filler.boxed());
            resp.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(len));
            resp
        }
        [Err(msg), ..] | [_, Err(msg), _] | [.., Err(msg)] => text(StatusCode::BAD_REQUEST, msg),
    }
}

/// A body of `remaining` filler bytes with an exact size hint, so hyper
/// sends a Content-Length and memory use stays at one static chunk.
struct Filler {
    remaining: u64,
    /// Pause once `remaining` drops to this many bytes (`/stall`).
    stall: Option<(u64, Duration)>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Filler {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if let Some((at, pause)) = self.stall {
            if self.remaining <= at {
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
                if std::future::Future::poll(sleep.as_mut(), cx).is_pending() {
                    return Poll::Pending;
                }
                self.stall = None;
            }
        }
        let mut len = usize::try_from(self.remaining).map_or(CHUNK_LEN, |r| r.min(CHUNK_LEN));
        if let Some((at, _)) = self.stall {
            let before = usize::try_from(self.remaining - at).unwrap_or(CHUNK_LEN);
            len = len.min(before.max(1));
        }
        self.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL[..len])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A plain-text response.
fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Body of `/` and `/slow`; a struct so keys keep the documented order.
#[derive(Serialize)]
struct SessionBody<'a> {
    route: &'a str,
    session: &'a str,
    hits: u64,
}

/// Body of `/upload`.
#[derive(Serialize)]
struct UploadBody<'a> {
    route: &'a str,
    bytes: u64,
}

/// A JSON response.
fn json(status: StatusCode, value: &impl Serialize) -> Response<RespBody> {
    let body = match serde_json::to_vec(value) {
        Ok(body) => body,
        Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode JSON"),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// 503 with a one-line reason, so a Redis outage is visible through the
/// balancer rather than looking like a lost session.
fn store_failure(err: &redis::RedisError) -> Response<RespBody> {
    let reason = format!("session store (Redis) unavailable: {err}").replace(['\r', '\n'], " ");
    text(StatusCode::SERVICE_UNAVAILABLE, reason)
}

/// Where sessions live: per node in memory (sticky-only cluster) or shared
/// in Redis (replicated cluster).
enum Store {
    Memory(Arc<MemoryStore>),
    Redis(ConnectionManager),
}

impl Store {
    /// Counts a hit on a known session and returns its new count; `None`
    /// if the session is unknown here.
    async fn touch(&self, base: &str) -> Result<Option<u64>, redis::RedisError> {
        match self {
            Self::Memory(store) => Ok(store.touch(base)),
            Self::Redis(conn) => {
                let hits: u64 = redis::cmd("EVAL")
                    .arg(TOUCH_SCRIPT)
                    .arg(1)
                    .arg(redis_key(base))
                    .arg(SESSION_TTL_SECS)
                    .query_async(&mut conn.clone())
                    .await?;
                Ok((hits > 0).then_some(hits))
            }
        }
    }

    /// Records a new session with one hit.
    async fn create(&self, base: &str) -> Result<(), redis::RedisError> {
        match self {
            Self::Memory(store) => {
                store.create(base);
                Ok(())
            }
            Self::Redis(conn) => {
                redis::cmd("SET")
                    .arg(redis_key(base))
                    .arg(1)
                    .arg("EX")
                    .arg(SESSION_TTL_SECS)
                    .query_async::<()>(&mut conn.clone())
                    .await
            }
        }
    }
}

/// The Redis key holding a session's hit count.
fn redis_key(base: &str) -> String {
    format!("{REDIS_KEY_PREFIX}{base}")
}

/// Connects to Redis with short timeouts so a dead Redis fails requests
/// quickly (503) instead of hanging them.
async fn connect_redis(url: &str) -> Result<ConnectionManager, NodeError> {
    let client = redis_client(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2);
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|source| NodeError::RedisConnect {
            url: redact_url(url),
            source,
        })
}

/// Parses a Redis URL into a client; no connection is made yet.
fn redis_client(url: &str) -> Result<redis::Client, NodeError> {
    redis::Client::open(url).map_err(|source| NodeError::RedisUrl {
        url: redact_url(url),
        source,
    })
}

/// In-memory sessions: base id -> hit count and last use.
#[derive(Default)]
struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

/// The mutex-protected part of [`MemoryStore`].
#[derive(Default)]
struct MemoryInner {
    sessions: HashMap<String, MemorySession>,
    last_sweep: Option<Instant>,
}

/// One in-memory session.
struct MemorySession {
    hits: u64,
    last_used: Instant,
}

impl MemoryStore {
    /// Counts a hit on a live session; expired sessions count as unknown.
    fn touch(&self, base: &str) -> Option<u64> {
        let now = Instant::now();
        let mut inner = crate::lock::lock(&self.inner);
        let session = inner.sessions.get_mut(base)?;
        if expired(session.last_used, now) {
            inner.sessions.remove(base);
            return None;
        }
        session.hits = session.hits.saturating_add(1);
        session.last_used = now;
        Some(session.hits)
    }

    /// Stores a new session with one hit, sweeping expired ones now and then.
    fn create(&self, base: &str) {
        let now = Instant::now();
        let mut inner = crate::lock::lock(&self.inner);
        if inner
            .last_sweep
            .is_none_or(|last| now.duration_since(last) >= SWEEP_EVERY)
        {
            inner.sessions.retain(|_, s| !expired(s.last_used, now));
            inner.last_sweep = Some(now);
        }
        inner.sessions.insert(
            base.to_owned(),
            MemorySession {
                hits: 1,
                last_used: now,
            },
        );
    }
}

/// Whether a session idle since `last_used` has timed out.
fn expired(last_used: Instant, now: Instant) -> bool {
    now.duration_since(last_used) >= Duration::from_secs(SESSION_TTL_SECS)
}

/// Routes become cookie and header text, so keep them to safe characters.
fn valid_route(route: &str) -> bool {
    (1..=64).contains(&route.len())
        && route
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Cookie names must be HTTP tokens (RFC 9110 `tchar`).
fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn new_ids_are_32_uppercase_hex() {
        let id = new_base_id();
        assert_eq!(id.len(), 32);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)));
        assert_ne!(id, new_base_id());
    }

    #[test]
    fn session_id_splits_at_first_dot() {
        assert_eq!(
            SessionId::parse("ABC.tomcat1"),
            Some(SessionId {
                base: "ABC",
                route: Some("tomcat1")
            })
        );
        assert_eq!(
            SessionId::parse("ABC.a.b"),
            Some(SessionId {
                base: "ABC",
                route: Some("a.b")
            })
        );
        assert_eq!(
            SessionId::parse("ABC"),
            Some(SessionId {
                base: "ABC",
                route: None
            })
        );
        assert_eq!(
            SessionId::parse("ABC."),
            Some(SessionId {
                base: "ABC",
                route: Some("")
            })
        );
    }

    #[test]
    fn session_id_rejects_malformed() {
        for raw in [
            "",
            ".tomcat1",
            "A B",
            "A:B.x",
            "ÄÖ",
            "AB*C",
            &"A".repeat(65),
        ] {
            assert_eq!(SessionId::parse(raw), None, "{raw:?}");
        }
        assert!(SessionId::parse(&"A".repeat(64)).is_some());
    }

    #[test]
    fn path_param_is_read_and_stripped() {
        let (path, id) = split_path_param("/;jsessionid=ABC.tomcat1", "jsessionid");
        assert_eq!((path.as_ref(), id), ("/", Some("ABC.tomcat1")));
        let (path, id) = split_path_param("/foo;jsessionid=ABC.t1", "jsessionid");
        assert_eq!((path.as_ref(), id), ("/foo", Some("ABC.t1")));
        let (path, id) = split_path_param("/a;jsessionid=X;v=1/b", "jsessionid");
        assert_eq!((path.as_ref(), id), ("/a;v=1/b", Some("X")));
        let (path, id) = split_path_param("/health;jsessionid=X", "jsessionid");
        assert_eq!((path.as_ref(), id), ("/health", Some("X")));
    }

    #[test]
    fn path_param_edge_cases() {
        let (path, id) = split_path_param("/plain", "jsessionid");
        assert!(matches!(path, Cow::Borrowed("/plain")));
        assert_eq!(id, None);
        let (path, id) = split_path_param("/;jsessionid=", "jsessionid");
        assert_eq!((path.as_ref(), id), ("/", None));
        let (path, id) = split_path_param("/;jsessionid=;jsessionid=B", "jsessionid");
        assert_eq!((path.as_ref(), id), ("/", Some("B")));
        let (path, id) = split_path_param("/;xjsessionid=A", "jsessionid");
        assert_eq!((path.as_ref(), id), ("/;xjsessionid=A", None));
        let (path, id) = split_path_param(";jsessionid=A", "jsessionid");
        assert_eq!((path.as_ref(), id), ("/", Some("A")));
        let (path, id) = split_path_param("/;JSESSIONID=A", "jsessionid");
        assert_eq!((path.as_ref(), id), ("/;JSESSIONID=A", None));
    }

    #[test]
    fn cookies_are_collected_across_headers() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1; JSESSIONID=X.t1"));
        headers.append(
            COOKIE,
            HeaderValue::from_static("JSESSIONID=\"Y.t2\";garbage; =;JSESSIONIDX=Z"),
        );
        let values: Vec<_> = cookie_values(&headers, "JSESSIONID").collect();
        assert_eq!(values, ["X.t1", "Y.t2"]);
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("a=1&bytes=42"), "bytes"), Some("42"));
        assert_eq!(query_param(Some("bytes"), "bytes"), None);
        assert_eq!(query_param(None, "bytes"), None);
        assert!(parse_query_u64(Some("ms=-1"), "ms").is_err());
        assert!(parse_query_u64(Some("ms=x"), "ms").is_err());
        assert_eq!(parse_query_u64(Some("ms=7"), "ms").ok(), Some(7));
    }

    #[test]
    fn settings_are_validated() {
        assert!(valid_route("tomcat-1_a.b"));
        assert!(!valid_route(""));
        assert!(!valid_route("tom cat"));
        assert!(!valid_route("t;1"));
        assert!(valid_cookie_name("JSESSIONID"));
        assert!(!valid_cookie_name("J SESSION"));
        assert!(!valid_cookie_name("a=b"));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://:pw@h:6379/0"), "redis://***@h:6379/0");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn memory_store_counts_hits() {
        let store = MemoryStore::default();
        assert_eq!(store.touch("A"), None);
        store.create("A");
        assert_eq!(store.touch("A"), Some(2));
        assert_eq!(store.touch("A"), Some(3));
    }

    /// Sends one raw HTTP/1.1 request and returns the whole response text.
    async fn roundtrip(addr: std::net::SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Extracts the session id from a `Set-Cookie` line.
    fn set_cookie_id(resp: &str) -> Option<String> {
        let line = resp
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))?;
        let value = line.split_once("JSESSIONID=")?.1;
        Some(value.split(';').next()?.to_owned())
    }

    #[tokio::test]
    async fn sessions_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener, NodeConfig::new("t1")));

        let first = roundtrip(
            addr,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(
            first.to_ascii_lowercase().contains("x-backend: t1"),
            "{first}"
        );
        assert!(first.contains("\"hits\":1"), "{first}");
        let id = set_cookie_id(&first).expect("cookie");
        assert!(id.ends_with(".t1") && id.len() == 35, "{id}");

        let req = format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=bad; JSESSIONID={id}\r\nConnection: close\r\n\r\n");
        let second = roundtrip(addr, &req).await;
        assert!(second.contains("\"hits\":2"), "{second}");
        assert_eq!(set_cookie_id(&second), None);

        let req = format!(
            "GET /slow;jsessionid={id}?ms=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        assert!(roundtrip(addr, &req).await.contains("\"hits\":3"));

        let foreign = id.replace(".t1", ".t2");
        let req = format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID={foreign}\r\nConnection: close\r\n\r\n");
        let renamed = roundtrip(addr, &req).await;
        assert!(renamed.contains("\"hits\":4"), "{renamed}");
        assert_eq!(set_cookie_id(&renamed), Some(id));

        server.abort();
    }

    #[tokio::test]
    async fn side_endpoints_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener, NodeConfig::new("t1")));

        let health = roundtrip(
            addr,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            health.ends_with("\r\n\r\nok") && set_cookie_id(&health).is_none(),
            "{health}"
        );

        let down = roundtrip(
            addr,
            "GET /download?bytes=200000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        let (head, body) = down.split_once("\r\n\r\n").expect("head");
        assert!(
            head.to_ascii_lowercase().contains("content-length: 200000"),
            "{head}"
        );
        assert_eq!(body.len(), 200_000);

        let up = roundtrip(addr, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").await;
        assert!(up.contains(r#"{"route":"t1","bytes":5}"#), "{up}");

        let hdrs = roundtrip(addr, "GET /headers;jsessionid=A?q=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\nConnection: close\r\n\r\n").await;
        assert!(hdrs.contains("\"x-a\":\"1, 2\""), "{hdrs}");
        assert!(
            hdrs.contains("\"_path\":\"/headers;jsessionid=A?q=1\""),
            "{hdrs}"
        );

        let bad = roundtrip(
            addr,
            "GET /download?bytes=-5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");

        server.abort();
    }

    #[tokio::test]
    async fn bad_settings_fail_setup() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let err = serve(listener, NodeConfig::new("bad route"))
            .await
            .expect_err("must fail");
        assert!(matches!(err, NodeError::InvalidRoute(_)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut cfg = NodeConfig::new("t1");
        cfg.redis_url = Some("not a url".to_owned());
        let err = serve(listener, cfg).await.expect_err("must fail");
        assert!(matches!(err, NodeError::RedisUrl { .. }), "{err}");
    }
}
