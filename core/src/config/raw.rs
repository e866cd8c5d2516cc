//! The TOML file as written by the user: plain serde structs with defaults.
//!
//! Every struct denies unknown keys so a typo is an error at load time instead
//! of a silently ignored setting. Nothing here is used on the hot path: the
//! checked form in [`super::checked`] is.

use crate::admin_state::AdminState;
pub use crate::tls::CertFiles;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Root of the configuration file.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub websocket: WebsocketSection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub session: SessionSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub health: HealthSection,
    #[serde(default)]
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub balance: BalanceSection,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendSection>,
}

/// Client-facing listeners and their protections.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: Vec<SocketAddr>,
    /// TLS listeners (HTTP/1.1 and HTTP/2 by ALPN).
    pub tls_listen: Vec<SocketAddr>,
    /// Certificates chosen by SNI; the first is the default.
    pub certificate: Vec<CertFiles>,
    /// Plain listeners answer 308 to the https URL instead of proxying.
    pub redirect_http: bool,
    /// Accept HTTP/2 with prior knowledge (h2c) on plain listeners.
    pub h2c: bool,
    /// From accept (TLS handshake included) until the first request's
    /// headers are complete, and from the first byte of each later request
    /// until its headers are complete (slowloris bound; 408, then close).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A keep-alive (HTTP/1.1) or HTTP/2 connection with no request in
    /// flight for this long is closed (idle sockets must not pile up).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Client connections open at once; past it new ones wait in the
    /// listen backlog. Absent: half the open-file limit (raised to its
    /// hard maximum at start), leaving the rest for backend connections.
    pub max_connections: Option<usize>,
    /// Request-path threads, each with its own runtime, listening sockets
    /// (SO_REUSEPORT) and upstream connections, so cores share nothing on
    /// the way of a request. Absent: one per core. Applies at start.
    pub threads: Option<usize>,
    /// Whether each request thread is pinned to a core of its own (see
    /// `server::affinity`). Applies at start.
    pub cpu_affinity: CpuAffinity,
    pub max_header_size: usize,
    /// Longest single header line (name, ": " and value); longer -> 431.
    pub max_header_line: usize,
    pub max_headers: usize,
    /// Longest pause of a client in the middle of sending a request body
    /// (then 408; the backend is not blamed).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    pub x_forwarded_for: bool,
    pub x_forwarded_proto: bool,
    pub x_forwarded_host: bool,
    pub preserve_host: bool,
    /// Peers (addresses or CIDR blocks) whose `Forwarded`, `X-Real-IP` and
    /// `X-Forwarded-*` headers are believed and extended; from anyone else
    /// they are removed, so a client cannot forge its address or scheme.
    pub trusted_proxies: Vec<Cidr>,
    pub tcp_keepalive: KeepaliveSection,
    /// TLS session tickets (stateless resumption, TLS 1.3 and 1.2): a
    /// returning client skips the full handshake. Keys live in memory only
    /// and rotate every 6 hours.
    pub tls_session_tickets: bool,
    /// Entries in the server-side TLS session cache (resumption by session
    /// id, for clients without tickets); 0 turns it off. Filled on use,
    /// each entry a few hundred bytes.
    pub tls_session_cache: usize,
    /// Unix socket of the binary upgrade: a `stickgate run` that finds a
    /// running instance here takes over its listening sockets, sessions
    /// and backend states instead of binding (see `control::takeover`).
    /// Empty: no takeover, the default, so several instances on one
    /// machine (and tests) never meet on a shared path.
    pub takeover_socket: PathBuf,
}

impl ServerSection {
    /// `threads`, or the cores this process may use (cgroup quota and
    /// CPU affinity included).
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

impl ServerSection {
    /// How TLS listeners resume returning clients' sessions.
    pub fn tls_resumption(&self) -> crate::tls::Resumption {
        crate::tls::Resumption {
            tickets: self.tls_session_tickets,
            cache: self.tls_session_cache,
        }
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            tls_listen: Vec::new(),
            certificate: Vec::new(),
            redirect_http: false,
            h2c: false,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            threads: None,
            cpu_affinity: CpuAffinity::Auto,
            max_header_size: 32 * 1024,
            max_header_line: 8 * 1024,
            max_headers: 100,
            body_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            x_forwarded_for: true,
            x_forwarded_proto: true,
            x_forwarded_host: true,
            preserve_host: true,
            trusted_proxies: Vec::new(),
            tcp_keepalive: KeepaliveSection::default(),
            tls_session_tickets: true,
            tls_session_cache: 20_000,
            takeover_socket: PathBuf::new(),
        }
    }
}

/// An address block such as `10.0.0.0/8` or `::1` (a single address is a
/// full-length prefix), for `server.trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    /// The block's address (only its first `prefix` bits count).
    pub addr: IpAddr,
    /// Leading bits a peer must share with `addr` to be inside.
    pub prefix: u8,
}

/// A `trusted_proxies` entry that is not an address or address/prefix.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an IP address or CIDR block (like 10.0.0.0/8)")]
pub struct BadCidr(String);

impl TryFrom<String> for Cidr {
    type Error = BadCidr;
    fn try_from(s: String) -> Result<Self, BadCidr> {
        let bad = || BadCidr(s.clone());
        let (a, p) = s.split_once('/').unwrap_or((&s, ""));
        let addr: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p.trim() {
            "" => max,
            p => p.parse().ok().filter(|&n| n <= max).ok_or_else(bad)?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` lies in this block (IPv4-mapped IPv6 peers count as
    /// their IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                prefix_eq(u32::from(net).into(), u32::from(a).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                prefix_eq(u128::from(net), u128::from(a), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` of `bits` bits of `a` and `b` agree.
fn prefix_eq(a: u128, b: u128, prefix: u8, bits: u32) -> bool {
    let shift = bits - u32::from(prefix);
    shift >= bits || (a >> shift) == (b >> shift)
}

/// WebSocket tunnels.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebsocketSection {
    /// A tunnel with no frame in either direction for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// When set, the balancer sends Ping frames both ways on a tunnel idle
    /// this long (and swallows the Pongs), so clients with read timeouts
    /// and NATs keep it.
    #[serde(with = "humantime_serde::option")]
    pub ping_interval: Option<Duration>,
}

impl Default for WebsocketSection {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(600),
            ping_interval: None,
        }
    }
}

/// TCP keepalive probes, so idle connections through NAT/firewalls survive
/// and dead peers are noticed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveSection {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub time: Duration,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub probes: u32,
}

impl Default for KeepaliveSection {
    fn default() -> Self {
        Self {
            enabled: true,
            time: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            probes: 6,
        }
    }
}

/// Admin listener (status page, API, metrics).
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token every admin request must present;
    /// required when `listen` is not a loopback address.
    pub token_file: Option<PathBuf>,
    /// How often the status page's trend history takes a point (it keeps
    /// 360 per backend: one hour at the default 10 s). Shorter only so a
    /// drill need not wait 10 s per point.
    #[serde(with = "humantime_serde")]
    pub history_interval: Duration,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
            token_file: None,
            history_interval: Duration::from_secs(10),
        }
    }
}

/// Logging that is not tracing's diagnostic stream.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Access log: off when absent; `"-"` (or `"stderr"`) for standard
    /// error, else a file path appended to (reopened on reload).
    pub access_log: Option<String>,
    /// `"combined"` (Apache/nginx style plus route and session hash) or
    /// `"json"` (one object per line).
    pub access_log_format: AccessLogFormat,
}

/// `server.cpu_affinity`: pin request threads to cores or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuAffinity {
    /// One thread per allowed CPU, each pinned to its own, when there are
    /// as many threads as CPUs; otherwise none pinned.
    #[default]
    Auto,
    /// No thread pinned: the scheduler places them.
    Off,
}

/// Line format of the access log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    #[default]
    Combined,
    Json,
}

/// How sessions are named and how long they live.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSection {
    pub cookie: String,
    /// Path parameter name (`;jsessionid=`); defaults to the cookie name in
    /// lower case; an empty string turns it off.
    pub path_parameter: Option<String>,
    pub route_separator: String,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub max_sessions: usize,
    /// On failover, rewrite the route in the request's cookie/path parameter
    /// before forwarding (for backends that look sessions up by base id).
    pub rewrite_request: bool,
    /// Which nodes can continue another node's sessions: `domain` (only
    /// nodes of the same `domain`, like Tomcat's DeltaManager per domain)
    /// or `replicated` (every node: sessions live in a shared store).
    /// Decides whether a retry may move a session (`upstream.retry_same_node`).
    pub failover: FailoverScope,
}

/// Which nodes hold replicas of a node's sessions (see
/// `SessionSection::failover`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverScope {
    /// Nodes with the same `domain`; without a domain, none.
    #[default]
    Domain,
    /// Every node.
    Replicated,
}

impl Default for SessionSection {
    fn default() -> Self {
        Self {
            cookie: "JSESSIONID".into(),
            path_parameter: None,
            route_separator: ".".into(),
            idle_timeout: Duration::from_secs(30 * 60),
            max_sessions: 1_000_000,
            rewrite_request: false,
            failover: FailoverScope::Domain,
        }
    }
}

/// Which session-affinity store backs the balancer, and how it reaches
/// the balancers it shares sessions with.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub kind: StoreKind,
    /// Standalone Redis: `redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS.
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes.
    pub redis_cluster: Vec<String>,
    /// Redis Sentinel: master name and sentinel addresses.
    pub redis_sentinel: Option<SentinelSection>,
    /// PEM CA certificate(s) to trust for `rediss://` instead of the
    /// system roots (self-signed Redis TLS).
    pub redis_ca_file: Option<PathBuf>,
    pub key_prefix: String,
    /// Store a SHA-256 of each session id instead of the id (ids are
    /// credentials; a Redis dump must not hand them out).
    pub hash_keys: bool,
    /// Longest wait for the remote store on the request path (a cache miss
    /// or a failover claim); past it the balancer decides locally.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a balancer trusts its cached copy of a binding before
    /// confirming it with the shared store on the next request (so a
    /// session moved by another balancer is followed).
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Pending writes kept while the remote store is slow; beyond this they
    /// are dropped and counted (the local cache still has them).
    pub write_queue: usize,
    /// Multicast: group address for heartbeats and record replication.
    pub multicast_group: SocketAddr,
    /// Multicast: local interface address to send and join on.
    pub multicast_interface: IpAddr,
    /// Multicast: this balancer's UDP+TCP endpoint (unicast peers, full sync).
    pub replication_listen: SocketAddr,
    /// Multicast: static peers' `replication_listen` addresses, for networks
    /// that block multicast.
    pub peers: Vec<SocketAddr>,
    /// Multicast: file holding the shared secret; must not be world-readable.
    pub key_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A peer silent for this long is dropped from membership.
    #[serde(with = "humantime_serde")]
    pub drop_time: Duration,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            redis_url: None,
            redis_cluster: Vec::new(),
            redis_sentinel: None,
            redis_ca_file: None,
            key_prefix: "stickgate:".into(),
            hash_keys: true,
            timeout: Duration::from_millis(100),
            cache_ttl: Duration::from_secs(2),
            write_queue: 65_536,
            multicast_group: SocketAddr::from(([228, 0, 0, 5], 45565)),
            multicast_interface: IpAddr::from([127, 0, 0, 1]),
            replication_listen: SocketAddr::from(([127, 0, 0, 1], 45566)),
            peers: Vec::new(),
            key_file: None,
            heartbeat_interval: Duration::from_millis(500),
            drop_time: Duration::from_secs(3),
        }
    }
}

/// Redis Sentinel settings. The `nodes` URLs reach the sentinels (their
/// own password, if any, goes in those URLs); the `username`,
/// `password_file` and `tls` keys are for the master the sentinels name,
/// which usually requires a password of its own (`requirepass`, the
/// sentinels' `auth-pass`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelSection {
    pub master: String,
    pub nodes: Vec<String>,
    /// ACL user for the master (Redis 6+); none: the default user.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the master's password (a file, not the config, so the
    /// secret stays out of configs and logs; must not be world-readable).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Reach the master over TLS (as `rediss://`), trusting
    /// `store.redis_ca_file` if set, else the system roots.
    #[serde(default)]
    pub tls: bool,
}

/// Store implementations known to this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Memory,
    Redis,
    Multicast,
}

/// Active health checks and passive failure detection.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    pub enabled: bool,
    pub path: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Accepted statuses; empty means any 2xx or 3xx.
    pub expect_status: Vec<u16>,
    pub rise: u32,
    pub fall: u32,
    /// Count 5xx answers of real traffic as failures (passive check).
    pub passive_5xx: bool,
    /// First wait before probing a passively failed backend when active
    /// checks are off; doubles up to `probe_backoff_max`.
    #[serde(with = "humantime_serde")]
    pub probe_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub probe_backoff_max: Duration,
    /// Hung-node rescue: a request that has waited this long for its
    /// response head makes the balancer probe its backend at once (the
    /// health `path` on a fresh connection, bounded by `timeout`); a failed
    /// probe marks the backend down now and its waiting idempotent requests
    /// go to the heir. `"0s"` turns the rescue off.
    #[serde(with = "humantime_serde")]
    pub suspect_after: Duration,
}

impl Default for HealthSection {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/health".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            expect_status: Vec::new(),
            rise: 2,
            fall: 3,
            passive_5xx: false,
            probe_backoff: Duration::from_secs(1),
            probe_backoff_max: Duration::from_secs(30),
            suspect_after: Duration::from_millis(500),
        }
    }
}

/// How the balancer talks to backends.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// First-byte timer: time allowed for the response head once the
    /// request body is sent (a hung or overloaded backend). Its expiry
    /// fails that request (504) and counts toward `health.fall`; it never
    /// marks the backend down by itself.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Idle timer of a response body: the longest pause between two chunks
    /// a backend may make once its head arrived; then the client's response
    /// is aborted (never ended cleanly) and the connection is not reused.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Replay an idempotent request on another backend after its
    /// `response_timeout` expired (HAProxy's `retry-on response-timeout`).
    /// Off by default: a slow URL must not turn into load on every node.
    pub retry_on_response_timeout: bool,
    /// Idle pooled connections are dropped after this; keep it below the
    /// backends' keep-alive timeout (Tomcat: 20 s).
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per backend. Generous on purpose: under a
    /// burst, every connection dropped here is a reconnect, and reconnect
    /// churn can overflow a busy backend's accept queue. Split evenly over
    /// `server.threads` (each thread reuses the connections it made).
    pub pool_max_idle: usize,
    /// Concurrent requests per backend; 0 = unlimited.
    pub max_connections: usize,
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Further attempts on other backends after the first one failed.
    pub retries: u32,
    /// After an attempt failed before any response byte (a pooled
    /// connection closed or reset, a node closing its idle connections):
    /// retry the same node on a fresh connection (`always`), go to the heir
    /// (`never`), or (`auto`) go to the heir when the session has a
    /// replica there (`session.failover`) and stay only when moving would
    /// lose it.
    pub retry_same_node: RetrySameNode,
    pub tcp_keepalive: KeepaliveSection,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            retry_on_response_timeout: false,
            pool_idle_timeout: Duration::from_secs(15),
            pool_max_idle: 1024,
            max_connections: 0,
            queue_timeout: Duration::from_secs(5),
            retries: 2,
            retry_same_node: RetrySameNode::Auto,
            tcp_keepalive: KeepaliveSection::default(),
        }
    }
}

/// Where the next attempt goes after a failure before any response byte
/// (see `UpstreamSection::retry_same_node`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetrySameNode {
    /// Move when a replica can continue the session, else stay.
    #[default]
    Auto,
    /// Always one more try on the same node, on a fresh connection.
    Always,
    /// Always move.
    Never,
}

/// How new sessions are spread.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalanceSection {
    pub algorithm: Algorithm,
}

impl Default for BalanceSection {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::WeightedRoundRobin,
        }
    }
}

/// Balancing algorithms for requests without a usable session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Smooth weighted round robin (nginx's), the default.
    WeightedRoundRobin,
    /// Fewest current sessions relative to weight.
    LeastSessions,
    /// Power of two random choices on in-flight requests relative to weight.
    LeastInflight,
}

/// One application node.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    pub route: String,
    pub url: String,
    /// Speak HTTP/2 to this backend (h2c for http://, ALPN h2 for https://).
    #[serde(default)]
    pub http2: bool,
    /// PEM CA to trust for an https:// backend instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate presented to an https:// backend.
    pub client_cert: Option<CertFiles>,
    #[serde(default = "one")]
    pub weight: u32,
    pub domain: Option<String>,
    /// Administrative state the backend starts in (mod_jk's `activation`).
    #[serde(default)]
    pub state: AdminState,
    /// `ajp://` only: Tomcat's AJP connector `secret` (`requiredSecret`).
    pub ajp_secret: Option<String>,
    /// `ajp://` only: a file holding the secret (first line), so it need
    /// not sit in the config.
    pub ajp_secret_file: Option<PathBuf>,
    /// `ajp://` only: when to CPing (mod_jk's `ping_mode`); default all.
    pub ping_mode: Option<Vec<PingMode>>,
    /// `ajp://` only: longest wait for a CPong (default 2s).
    #[serde(default, with = "humantime_serde::option")]
    pub ping_timeout: Option<Duration>,
    /// `ajp://` only, with `prepost`: ping a pooled connection idle at
    /// least this long before using it (default 1s; 0s: always).
    #[serde(default, with = "humantime_serde::option")]
    pub ping_after_idle: Option<Duration>,
    /// `ajp://` only: largest AJP packet, header included (default 8192,
    /// like mod_jk; 8192..=65536).
    pub max_packet_size: Option<usize>,
}

/// When an AJP backend is sent a CPing (mod_jk's `ping_mode` letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PingMode {
    /// After connecting (mod_jk `C`).
    Connect,
    /// Before a request on an idle pooled connection (mod_jk `P`).
    Prepost,
    /// As the health check (mod_jk `I`).
    Interval,
}

fn one() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_and_single_addresses() {
        let c = |s: &str| Cidr::try_from(s.to_owned());
        let net = c("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = c("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(c("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(c("fd00::/8").unwrap().contains("fd12::1".parse().unwrap()));
        assert!(!c("fd00::/8").unwrap().contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "example.org", "10.0.0.0/x", ""] {
            assert!(c(bad).is_err(), "{bad}");
        }
    }
}
