//! Validation of [`RawConfig`] into the runtime [`Config`].

use super::raw::{
    AdminSection, Algorithm, HealthSection, KeepaliveSection, RawConfig, ServerSection, StoreKind,
    StoreSection, UpstreamSection,
};
use crate::admin_state::AdminState;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A fully checked configuration. Cheap to share (`Arc`) between workers.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Arc<ServerSection>,
    pub websocket: Arc<super::raw::WebsocketSection>,
    pub admin: AdminRules,
    /// Access log destination and format; `None` when off.
    pub access_log: Option<AccessLog>,
    pub session: SessionRules,
    pub store: Arc<StoreSection>,
    pub health: Arc<HealthSection>,
    pub upstream: Arc<UpstreamSection>,
    pub algorithm: Algorithm,
    pub backends: Vec<BackendConfig>,
}

/// Checked admin settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRules {
    pub listen: Option<SocketAddr>,
    pub token: Option<AdminToken>,
    /// Spacing of the trend history's points (1 s ..= 60 s).
    pub history_interval: Duration,
}

/// The admin bearer token, read once at load; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Arc<str>);

impl AdminToken {
    /// A token from its text (tests, code-built configs).
    pub fn new(text: &str) -> Self {
        AdminToken(text.into())
    }

    /// Whether `presented` is the token, compared in constant time so the
    /// answer's timing tells an attacker nothing about the prefix.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let want = self.0.as_bytes();
        if presented.len() != want.len() {
            return false;
        }
        want.iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// `None` = standard error.
    pub path: Option<std::path::PathBuf>,
    pub format: super::raw::AccessLogFormat,
}

/// Session naming rules, precomputed for the request path.
#[derive(Debug, Clone)]
pub struct SessionRules {
    pub cookie: Arc<str>,
    /// `;name=` path parameter, `None` when disabled.
    pub path_parameter: Option<Arc<str>>,
    pub separator: Arc<str>,
    pub idle_timeout: Duration,
    pub max_sessions: usize,
    pub rewrite_request: bool,
    pub failover: super::raw::FailoverScope,
}

/// A checked backend definition.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    pub route: Arc<str>,
    /// `host:port` as written in the URL, used for connecting and for Host
    /// when `preserve_host` is off.
    pub authority: Arc<str>,
    pub host: Arc<str>,
    pub port: u16,
    pub weight: u32,
    pub domain: Option<Arc<str>>,
    pub state: AdminState,
    /// `https://` backend.
    pub tls: bool,
    pub http2: bool,
    pub ca_file: Option<std::path::PathBuf>,
    pub client_cert: Option<super::raw::CertFiles>,
    /// An `ajp://` backend's AJP settings; `None` for HTTP.
    pub ajp: Option<Arc<crate::config::ajp::AjpOptions>>,
}

impl BackendConfig {
    /// A plain HTTP/1.1 backend at `host:port`, for code that builds
    /// backends without a file (benches, tests, the demo).
    pub fn plain(route: &str, host: &str, port: u16, weight: u32) -> Self {
        BackendConfig {
            route: route.into(),
            authority: format!("{host}:{port}").into(),
            host: host.into(),
            port,
            weight,
            domain: None,
            state: AdminState::Active,
            tls: false,
            http2: false,
            ca_file: None,
            client_cert: None,
            ajp: None,
        }
    }
}

/// TCP keepalive settings in socket form; `None` when disabled.
pub type Keepalive = Option<socket2::TcpKeepalive>;

impl KeepaliveSection {
    /// The socket option value for these settings.
    pub fn to_socket(&self) -> Keepalive {
        if !self.enabled {
            return None;
        }
        let ka = socket2::TcpKeepalive::new()
            .with_time(self.time)
            .with_interval(self.interval);
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
        let ka = ka.with_retries(self.probes);
        Some(ka)
    }
}

type Problem = (String, String);

fn bad(key: impl Into<String>, problem: impl Into<String>) -> Problem {
    (key.into(), problem.into())
}

/// Check every value and build the runtime form.
pub(super) fn validate(raw: RawConfig) -> Result<Config, Problem> {
    check_server(&raw.server)?;
    check_admin(&raw.admin)?;
    check_health(&raw.health)?;
    check_upstream(&raw.upstream)?;
    check_store(&raw.store)?;
    if let Some(p) = raw.websocket.ping_interval {
        if !raw.websocket.idle_timeout.is_zero() && p >= raw.websocket.idle_timeout {
            return Err(bad(
                "websocket.ping_interval",
                "must be shorter than websocket.idle_timeout, or pings cannot keep a tunnel open",
            ));
        }
    }
    let session = check_session(&raw.session)?;
    if raw.backends.is_empty() {
        return Err(bad(
            "backend",
            "no [[backend]] defined: add at least one with route and url",
        ));
    }
    let mut routes = HashSet::new();
    let mut backends = Vec::with_capacity(raw.backends.len());
    for (i, b) in raw.backends.iter().enumerate() {
        let key = |k: &str| format!("backend[{i}].{k}");
        check_token(&b.route).map_err(|p| bad(key("route"), p))?;
        if b.route.contains(&*session.separator) {
            return Err(bad(
                key("route"),
                format!(
                    "route {:?} contains the route separator {:?}; pick another route or separator",
                    b.route, session.separator
                ),
            ));
        }
        if !routes.insert(b.route.clone()) {
            return Err(bad(
                key("route"),
                format!("route {:?} is used twice; routes must be unique", b.route),
            ));
        }
        if b.weight == 0 || b.weight > 1000 {
            return Err(bad(
                key("weight"),
                "must be 1..=1000 (to take no new sessions use state = \"draining\")",
            ));
        }
        if let Some(d) = &b.domain {
            check_token(d).map_err(|p| bad(key("domain"), p))?;
        }
        let (host, port, tls, is_ajp) =
            parse_backend_url(&b.url).map_err(|p| bad(key("url"), p))?;
        let ajp = crate::config::ajp::check_options(b, is_ajp).map_err(|(k, p)| bad(key(k), p))?;
        if !tls && (b.ca_file.is_some() || b.client_cert.is_some()) {
            return Err(bad(
                key("ca_file"),
                "ca_file and client_cert need an https:// url",
            ));
        }
        if let Some(ca) = &b.ca_file {
            std::fs::metadata(ca)
                .map_err(|e| bad(key("ca_file"), format!("{}: {e}", ca.display())))?;
        }
        if let Some(cc) = &b.client_cert {
            crate::tls::load_pair(cc).map_err(|e| bad(key("client_cert"), e.to_string()))?;
        }
        backends.push(BackendConfig {
            route: b.route.as_str().into(),
            authority: format!("{}:{}", host, port).into(),
            host: host.into(),
            port,
            weight: b.weight,
            domain: b.domain.as_deref().map(Into::into),
            state: b.state,
            tls,
            http2: b.http2,
            ca_file: b.ca_file.clone(),
            client_cert: b.client_cert.clone(),
            ajp: ajp.map(Arc::new),
        });
    }
    Ok(Config {
        server: Arc::new(raw.server),
        websocket: Arc::new(raw.websocket),
        admin: check_admin(&raw.admin)?,
        access_log: check_access_log(&raw.log)?,
        session,
        store: Arc::new(raw.store),
        health: Arc::new(raw.health),
        upstream: Arc::new(raw.upstream),
        algorithm: raw.balance.algorithm,
        backends,
    })
}

/// Most request-path threads: far beyond any core count this runs on,
/// low enough that a typo cannot start a million threads.
const MAX_THREADS: usize = 256;

fn check_server(s: &ServerSection) -> Result<(), Problem> {
    if s.listen.is_empty() {
        return Err(bad("server.listen", "needs at least one address"));
    }
    let mut seen = HashSet::new();
    for a in s.listen.iter().filter(|a| a.port() != 0) {
        if !seen.insert(a) {
            return Err(bad("server.listen", format!("{a} is listed twice")));
        }
    }
    if s.max_header_size < 8192 {
        return Err(bad("server.max_header_size", "must be at least 8192 bytes"));
    }
    if s.max_headers == 0 {
        return Err(bad("server.max_headers", "must be at least 1"));
    }
    if s.max_header_line < 1024 || s.max_header_line > s.max_header_size {
        return Err(bad(
            "server.max_header_line",
            "must be at least 1024 bytes and at most server.max_header_size",
        ));
    }
    if s.max_connections == Some(0) {
        return Err(bad("server.max_connections", "must be at least 1"));
    }
    if s.threads.is_some_and(|n| n == 0 || n > MAX_THREADS) {
        return Err(bad(
            "server.threads",
            format!("must be 1..={MAX_THREADS} (absent: one per core)"),
        ));
    }
    nonzero("server.header_timeout", s.header_timeout)?;
    nonzero("server.idle_timeout", s.idle_timeout)?;
    nonzero("server.body_timeout", s.body_timeout)?;
    for a in s.tls_listen.iter().filter(|a| a.port() != 0) {
        if !seen.insert(a) {
            return Err(bad("server.tls_listen", format!("{a} is listed twice")));
        }
    }
    if !s.tls_listen.is_empty() {
        if s.certificate.is_empty() {
            return Err(bad(
                "server.certificate",
                "tls_listen needs at least one [[server.certificate]] with cert and key",
            ));
        }
        for (i, c) in s.certificate.iter().enumerate() {
            crate::tls::load_pair(c)
                .map_err(|e| bad(format!("server.certificate[{i}]"), e.to_string()))?;
        }
    }
    if s.redirect_http && s.tls_listen.is_empty() {
        return Err(bad(
            "server.redirect_http",
            "needs tls_listen to redirect to",
        ));
    }
    check_takeover_socket(&s.takeover_socket)?;
    check_keepalive("server.tcp_keepalive", &s.tcp_keepalive)
}

/// Longest Unix socket path the kernel takes (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `server.takeover_socket`: empty (off) or an absolute path short enough
/// for a Unix socket, so a typo is refused at load, not at the upgrade.
fn check_takeover_socket(p: &std::path::Path) -> Result<(), Problem> {
    let key = "server.takeover_socket";
    if p.as_os_str().is_empty() {
        return Ok(());
    }
    if !p.is_absolute() || p.file_name().is_none() {
        return Err(bad(key, "must be an absolute file path, e.g. \"/run/stickgate/takeover.sock\" (\"\" turns takeover off)"));
    }
    if p.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(bad(
            key,
            format!("is longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have"),
        ));
    }
    Ok(())
}

fn check_admin(a: &AdminSection) -> Result<AdminRules, Problem> {
    let token = match &a.token_file {
        Some(path) => {
            let t = crate::secret::read_key_file(path).map_err(|e| bad("admin.token_file", e))?;
            let t = String::from_utf8(t).map_err(|_| {
                bad(
                    "admin.token_file",
                    "the token must be text (e.g. `head -c 32 /dev/urandom | base64`)",
                )
            })?;
            Some(AdminToken(t.into()))
        }
        None => None,
    };
    if let Some(addr) = a.listen {
        if !addr.ip().is_loopback() && token.is_none() {
            return Err(bad(
                "admin.listen",
                format!("{addr} is not a loopback address; set admin.token_file so the admin API requires a token, or listen on 127.0.0.1"),
            ));
        }
    }
    if a.history_interval < Duration::from_secs(1) || a.history_interval > Duration::from_secs(60) {
        return Err(bad(
            "admin.history_interval",
            "must be 1s..=60s (default 10s: 360 points are one hour)",
        ));
    }
    Ok(AdminRules {
        listen: a.listen,
        token,
        history_interval: a.history_interval,
    })
}

fn check_access_log(l: &super::raw::LogSection) -> Result<Option<AccessLog>, Problem> {
    let Some(target) = l.access_log.as_deref() else {
        return Ok(None);
    };
    let path =
        match target.trim() {
            "" => return Err(bad(
                "log.access_log",
                "is empty; remove it to turn the access log off, or use \"-\" for standard error",
            )),
            "-" | "stderr" => None,
            p => {
                let p = std::path::PathBuf::from(p);
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                    .map_err(|e| {
                        bad(
                            "log.access_log",
                            format!(
                                "{}: {e} (check the directory exists and is writable)",
                                p.display()
                            ),
                        )
                    })?;
                Some(p)
            }
        };
    Ok(Some(AccessLog {
        path,
        format: l.access_log_format,
    }))
}

fn check_session(s: &super::raw::SessionSection) -> Result<SessionRules, Problem> {
    check_token(&s.cookie).map_err(|p| bad("session.cookie", p))?;
    if s.route_separator.is_empty() || s.route_separator.len() > 4 {
        return Err(bad("session.route_separator", "must be 1 to 4 characters"));
    }
    if s.route_separator
        .chars()
        .any(|c| c.is_whitespace() || c == ';' || c == '=')
    {
        return Err(bad(
            "session.route_separator",
            "must not contain whitespace, ';' or '='",
        ));
    }
    nonzero("session.idle_timeout", s.idle_timeout)?;
    if s.max_sessions == 0 {
        return Err(bad("session.max_sessions", "must be at least 1"));
    }
    let path_parameter = match &s.path_parameter {
        None => Some(s.cookie.to_ascii_lowercase().into()),
        Some(p) if p.is_empty() => None,
        Some(p) => {
            check_token(p).map_err(|e| bad("session.path_parameter", e))?;
            Some(p.as_str().into())
        }
    };
    Ok(SessionRules {
        cookie: s.cookie.as_str().into(),
        path_parameter,
        separator: s.route_separator.as_str().into(),
        idle_timeout: s.idle_timeout,
        max_sessions: s.max_sessions,
        rewrite_request: s.rewrite_request,
        failover: s.failover,
    })
}

fn check_health(h: &HealthSection) -> Result<(), Problem> {
    if !h.path.starts_with('/') {
        return Err(bad("health.path", "must start with '/'"));
    }
    nonzero("health.interval", h.interval)?;
    nonzero("health.timeout", h.timeout)?;
    if h.rise == 0 || h.fall == 0 {
        return Err(bad("health.rise", "rise and fall must be at least 1"));
    }
    if let Some(s) = h.expect_status.iter().find(|s| !(100..=599).contains(*s)) {
        return Err(bad(
            "health.expect_status",
            format!("{s} is not an HTTP status (100..=599)"),
        ));
    }
    nonzero("health.probe_backoff", h.probe_backoff)?;
    if h.probe_backoff_max < h.probe_backoff {
        return Err(bad(
            "health.probe_backoff_max",
            "must not be smaller than probe_backoff",
        ));
    }
    Ok(())
}

fn check_upstream(u: &UpstreamSection) -> Result<(), Problem> {
    nonzero("upstream.connect_timeout", u.connect_timeout)?;
    if u.connect_timeout > Duration::from_secs(30) {
        return Err(bad(
            "upstream.connect_timeout",
            "at most 30s; a long connect timeout lets a dead backend stall requests",
        ));
    }
    nonzero("upstream.response_timeout", u.response_timeout)?;
    nonzero("upstream.body_timeout", u.body_timeout)?;
    nonzero("upstream.queue_timeout", u.queue_timeout)?;
    if u.retries > 7 {
        return Err(bad("upstream.retries", "must be 0..=7"));
    }
    check_keepalive("upstream.tcp_keepalive", &u.tcp_keepalive)
}

fn check_store(s: &StoreSection) -> Result<(), Problem> {
    nonzero("store.timeout", s.timeout)?;
    if s.write_queue == 0 {
        return Err(bad("store.write_queue", "must be at least 1"));
    }
    match s.kind {
        StoreKind::Memory => Ok(()),
        StoreKind::Redis => {
            let set = [
                s.redis_url.is_some(),
                !s.redis_cluster.is_empty(),
                s.redis_sentinel.is_some(),
            ];
            match set.iter().filter(|x| **x).count() {
                1 => {}
                0 => {
                    return Err(bad(
                        "store.redis_url",
                        "kind = \"redis\" needs redis_url, redis_cluster or redis_sentinel",
                    ))
                }
                _ => {
                    return Err(bad(
                        "store.redis_url",
                        "set only one of redis_url, redis_cluster, redis_sentinel",
                    ))
                }
            }
            let urls = s
                .redis_url
                .iter()
                .chain(&s.redis_cluster)
                .chain(s.redis_sentinel.iter().flat_map(|x| &x.nodes));
            for u in urls {
                if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                    return Err(bad(
                        "store.redis_url",
                        format!("{:?} must start with redis:// or rediss://", redact_url(u)),
                    ));
                }
                if redis::Client::open(u.as_str()).is_err() {
                    return Err(bad(
                        "store.redis_url",
                        format!("{:?} is not a valid Redis URL", redact_url(u)),
                    ));
                }
            }
            if let Some(sen) = &s.redis_sentinel {
                if sen.master.is_empty() || sen.nodes.is_empty() {
                    return Err(bad(
                        "store.redis_sentinel",
                        "needs master and at least one node",
                    ));
                }
            }
            Ok(())
        }
        StoreKind::Multicast => {
            if !s.multicast_group.ip().is_multicast() {
                return Err(bad(
                    "store.multicast_group",
                    format!(
                        "{} is not a multicast address (224.0.0.0/4)",
                        s.multicast_group.ip()
                    ),
                ));
            }
            nonzero("store.heartbeat_interval", s.heartbeat_interval)?;
            if s.drop_time <= s.heartbeat_interval {
                return Err(bad(
                    "store.drop_time",
                    "must be longer than heartbeat_interval (Tomcat: 3s vs 500ms)",
                ));
            }
            let Some(path) = &s.key_file else {
                return Err(bad("store.key_file", "kind = \"multicast\" needs key_file: a file with a shared secret of at least 16 bytes, mode 0600"));
            };
            crate::secret::read_key_file(path)
                .map(|_| ())
                .map_err(|e| bad("store.key_file", e))
        }
    }
}

/// `redis://user:secret@host` -> `redis://***@host`, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn check_keepalive(key: &str, k: &KeepaliveSection) -> Result<(), Problem> {
    if !k.enabled {
        return Ok(());
    }
    if k.time < Duration::from_secs(1) || k.interval < Duration::from_secs(1) {
        return Err(bad(
            format!("{key}.time"),
            "time and interval must be at least 1s",
        ));
    }
    if k.probes == 0 {
        return Err(bad(format!("{key}.probes"), "must be at least 1"));
    }
    Ok(())
}

fn nonzero(key: &str, d: Duration) -> Result<(), Problem> {
    if d.is_zero() {
        return Err(bad(
            key,
            "must be greater than zero (e.g. \"500ms\", \"2s\")",
        ));
    }
    Ok(())
}

/// Names used in cookies, routes and domains: RFC 7230 token characters.
fn check_token(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.~!#$&'*+^`|".contains(*c)))
    {
        return Err(format!(
            "{s:?} contains {c:?}; use letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// `ajp://host:port[/]` (port 8009 by default, like Tomcat's AJP
/// connector) or an HTTP URL (see [`parse_url`]) -> (host, port, tls, ajp).
fn parse_backend_url(url: &str) -> Result<(String, u16, bool, bool), String> {
    let Some(rest) = url.strip_prefix("ajp://") else {
        return parse_url(url).map(|(h, p, t)| (h, p, t, false));
    };
    let invalid = || format!("{url:?} is not a valid ajp://host:port URL");
    let (host, _, _) = parse_url(&format!("http://{rest}")).map_err(|_| invalid())?;
    let authority: http::uri::Authority = rest
        .strip_suffix('/')
        .unwrap_or(rest)
        .parse()
        .map_err(|_| invalid())?;
    Ok((host, authority.port_u16().unwrap_or(8009), false, true))
}

/// `http[s]://host:port[/]` -> (host, port, tls). Paths are not
/// supported: a balancer forwards the client's path unchanged.
fn parse_url(url: &str) -> Result<(String, u16, bool), String> {
    let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => {
            return Err(format!(
                "{url:?} must start with http://, https:// or ajp://"
            ))
        }
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') || authority.contains('?') || authority.contains('@') {
        return Err(format!(
            "{url:?}: only scheme, host and port are allowed (no path, query or user)"
        ));
    }
    let uri: http::uri::Authority = authority
        .parse()
        .map_err(|_| format!("{url:?} is not a valid http://host:port URL"))?;
    let host = uri.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok((host.to_string(), port, tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let ok = |u: &str| parse_url(u).unwrap();
        assert_eq!(
            ok("http://127.0.0.1:8081"),
            ("127.0.0.1".into(), 8081, false)
        );
        assert_eq!(ok("http://app/"), ("app".into(), 80, false));
        assert_eq!(ok("https://app"), ("app".into(), 443, true));
        assert_eq!(ok("https://app:8443/"), ("app".into(), 8443, true));
        assert_eq!(ok("http://[::1]:9000"), ("::1".into(), 9000, false));
        assert!(parse_url("http://a:1/x").is_err());
        assert!(parse_url("ftp://a:1").is_err());
        assert!(parse_url("http://").is_err());
    }

    #[test]
    fn takeover_socket_is_off_or_a_short_absolute_path() {
        let check = |p: &str| check_takeover_socket(std::path::Path::new(p));
        assert!(check("").is_ok(), "empty turns it off");
        assert!(check("/run/stickgate/takeover.sock").is_ok());
        assert!(check("takeover.sock").is_err(), "relative");
        assert!(check("/").is_err(), "no file name");
        assert!(check(&format!("/{}", "s".repeat(MAX_SOCKET_PATH))).is_err());
    }

    #[test]
    fn tokens() {
        assert!(check_token("tomcat1").is_ok());
        assert!(check_token("").is_err());
        assert!(check_token("a b").is_err());
        assert!(check_token("a;b").is_err());
    }
}
