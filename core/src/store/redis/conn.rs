//! One handle over the three ways of reaching Redis: standalone (with a
//! reconnecting connection manager, plus one connection per request
//! thread), Cluster, and Sentinel (master looked up again after a
//! failover).

use crate::config::raw::{SentinelSection, StoreSection};
use crate::config::redact_url;
use crate::lock::lock;
use crate::store::StoreError;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, TlsMode, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// A shared way to reach Redis; cheap to clone into a [`Handle`] per call.
pub enum Conn {
    Single(Box<SingleConn>),
    Cluster(ClusterConnection),
    Sentinel(Box<SentinelConn>),
}

/// Standalone Redis: the reconnecting manager (control plane, and any
/// caller off the request threads), and each request thread's own
/// connection, so a request waiting on Redis (a new session's
/// write-through, a cache miss, a failover claim) is served by its own
/// thread's event loop instead of a hop to the control thread and back.
pub struct SingleConn {
    shared: ConnectionManager,
    client: redis::Client,
    config: redis::AsyncConnectionConfig,
    locals: Arc<[std::sync::Mutex<Local>]>,
}

/// A request thread's own connection.
enum Local {
    /// Not opened yet (or dropped after an error): opened on next use.
    Idle,
    /// Being opened by a task on that thread; the shared one serves.
    Opening,
    Ready(MultiplexedConnection),
    /// Could not be opened: the shared one serves until then.
    Retry(Instant),
}

/// Request threads with a connection of their own (the most
/// `server.threads` allows); any others use the shared one.
const LOCAL_SLOTS: usize = 256;

/// How long a request thread whose connection could not be opened uses
/// the shared one before trying again.
const LOCAL_RETRY: Duration = Duration::from_secs(1);

impl SingleConn {
    /// The calling request thread's connection, if it has one ready; else
    /// it is opened in the background (on this thread) and `None` says to
    /// use the shared one meanwhile.
    fn local(&self) -> Option<Handle> {
        let index = crate::thread_index::current()?;
        let slot = self.locals.get(index)?;
        let mut l = lock(slot);
        match &*l {
            Local::Ready(c) => return Some(Handle::Multiplexed(c.clone())),
            Local::Opening => return None,
            Local::Retry(at) if Instant::now() < *at => return None,
            Local::Idle | Local::Retry(_) => *l = Local::Opening,
        }
        drop(l);
        let (client, config, locals) = (
            self.client.clone(),
            self.config.clone(),
            self.locals.clone(),
        );
        tokio::spawn(async move {
            let opened = client
                .get_multiplexed_async_connection_with_config(&config)
                .await;
            *lock(&locals[index]) = match opened {
                Ok(c) => Local::Ready(c),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot open this request thread's redis connection; using the shared one for now");
                    Local::Retry(Instant::now() + LOCAL_RETRY)
                }
            };
        });
        None
    }

    /// After an error on the calling request thread: its connection is
    /// opened again on next use (it may be what broke).
    fn reset_local(&self) {
        if let Some(slot) = crate::thread_index::current().and_then(|i| self.locals.get(i)) {
            let mut l = lock(slot);
            if matches!(*l, Local::Ready(_)) {
                *l = Local::Idle;
            }
        }
    }
}

/// Sentinel client plus the master connection it last found.
pub struct SentinelConn {
    client: Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
}

/// A connection for one operation (cheap to clone: each variant is a
/// handle to a shared connection).
#[derive(Clone)]
pub enum Handle {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Multiplexed(MultiplexedConnection),
}

impl Handle {
    /// A Cluster connection: a pipeline must stay in one hash slot there.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Handle::Cluster(_))
    }
}

impl Conn {
    /// A Cluster: one pipeline or transaction must stay in one hash slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Redis(e.to_string())
}

impl Conn {
    /// Connect as the config says. Standalone and Sentinel clients connect
    /// lazily on failure, so a Redis that is down at start only delays
    /// sharing; Cluster needs its seed nodes for the slot map.
    pub async fn open(cfg: &StoreSection, timeout: Duration) -> Result<Conn, StoreError> {
        let certs = match &cfg.redis_ca_file {
            Some(p) => Some(std::fs::read(p).map_err(|e| {
                StoreError::Redis(format!("store.redis_ca_file {}: {e}", p.display()))
            })?),
            None => None,
        };
        let tls = |pem: &Vec<u8>| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        };
        if let Some(url) = &cfg.redis_url {
            let client = match &certs {
                Some(pem) => redis::Client::build_with_tls(url.as_str(), tls(pem)),
                None => redis::Client::open(url.as_str()),
            }
            .map_err(err)?;
            let mc = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
                .set_response_timeout(Some(timeout.max(Duration::from_millis(500))))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(2));
            let shared =
                ConnectionManager::new_lazy_with_config(client.clone(), mc).map_err(err)?;
            let limit = Some(timeout.max(Duration::from_millis(500)));
            return Ok(Conn::Single(Box::new(SingleConn {
                shared,
                client,
                config: redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(limit)
                    .set_response_timeout(limit),
                locals: (0..LOCAL_SLOTS)
                    .map(|_| std::sync::Mutex::new(Local::Idle))
                    .collect(),
            })));
        }
        if !cfg.redis_cluster.is_empty() {
            let mut b = redis::cluster::ClusterClientBuilder::new(cfg.redis_cluster.clone())
                .connection_timeout(timeout.max(Duration::from_millis(500)))
                .response_timeout(timeout.max(Duration::from_millis(500)));
            if let Some(pem) = &certs {
                b = b.certs(tls(pem));
            }
            let client = b.build().map_err(err)?;
            let c = client.get_async_connection().await.map_err(|e| {
                StoreError::Redis(format!(
                    "cannot reach the cluster seed nodes: {e} (check store.redis_cluster)"
                ))
            })?;
            return Ok(Conn::Cluster(c));
        }
        if let Some(s) = &cfg.redis_sentinel {
            let client = sentinel_client(s, certs.as_ref().map(tls))?;
            return Ok(Conn::Sentinel(Box::new(SentinelConn {
                client: Mutex::new(client),
                current: Mutex::new(None),
            })));
        }
        Err(StoreError::Redis(
            "no redis_url, redis_cluster or redis_sentinel configured".into(),
        ))
    }

    /// A handle for one operation a request waits on: on a request thread
    /// (standalone Redis), that thread's own connection once it is open.
    pub async fn request_handle(&self) -> redis::RedisResult<Handle> {
        if let Conn::Single(s) = self {
            if let Some(h) = s.local() {
                return Ok(h);
            }
        }
        self.handle().await
    }

    /// A handle for one operation.
    pub async fn handle(&self) -> redis::RedisResult<Handle> {
        match self {
            Conn::Single(c) => Ok(Handle::Single(c.shared.clone())),
            Conn::Cluster(c) => Ok(Handle::Cluster(c.clone())),
            Conn::Sentinel(s) => {
                let mut cur = s.current.lock().await;
                if let Some(c) = &*cur {
                    return Ok(Handle::Multiplexed(c.clone()));
                }
                let c = s.client.lock().await.get_async_connection().await?;
                *cur = Some(c.clone());
                Ok(Handle::Multiplexed(c))
            }
        }
    }

    /// After an error: Sentinel forgets the master so the next operation
    /// asks the sentinels again (the master may have moved); a request
    /// thread's own connection is opened again.
    pub async fn reset(&self) {
        match self {
            Conn::Sentinel(s) => *s.current.lock().await = None,
            Conn::Single(s) => s.reset_local(),
            Conn::Cluster(_) => {}
        }
    }

    /// Redis answers again after an outage: every request thread opens its
    /// connection again (one that broke unnoticed would fail its next
    /// request and cut the store off for another second).
    pub fn reset_locals(&self) {
        if let Conn::Single(s) = self {
            for slot in s.locals.iter() {
                *lock(slot) = Local::Idle;
            }
        }
    }

    /// Human-readable endpoints for the status API (no credentials).
    pub fn describe(cfg: &StoreSection) -> Vec<String> {
        if let Some(u) = &cfg.redis_url {
            vec![redact_url(u)]
        } else if !cfg.redis_cluster.is_empty() {
            cfg.redis_cluster.iter().map(|u| redact_url(u)).collect()
        } else if let Some(s) = &cfg.redis_sentinel {
            s.nodes
                .iter()
                .map(|u| format!("sentinel {} ({})", redact_url(u), s.master))
                .collect()
        } else {
            Vec::new()
        }
    }
}

/// The Sentinel client: sentinels as their URLs say (their password in
/// the URL), the master with the section's own credentials and TLS.
fn sentinel_client(
    s: &SentinelSection,
    certs: Option<redis::TlsCertificates>,
) -> Result<SentinelClient, StoreError> {
    let mut addrs = Vec::with_capacity(s.nodes.len());
    let mut sentinel_auth: Option<(Option<String>, String)> = None;
    for url in &s.nodes {
        let info = url.as_str().into_connection_info().map_err(|e| {
            StoreError::Redis(format!(
                "store.redis_sentinel.nodes {}: {e}",
                redact_url(url)
            ))
        })?;
        let r = info.redis_settings();
        if let (None, Some(p)) = (&sentinel_auth, r.password()) {
            sentinel_auth = Some((r.username().map(str::to_owned), p.to_owned()));
        }
        addrs.push(info.addr().clone());
    }
    let mut b =
        SentinelClientBuilder::new(addrs, &s.master, SentinelServerType::Master).map_err(err)?;
    if let Some((user, pass)) = sentinel_auth {
        if let Some(u) = user {
            b = b.set_client_to_sentinel_username(u);
        }
        b = b.set_client_to_sentinel_password(pass);
    }
    if let Some(u) = &s.username {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(path) = &s.password_file {
        b = b.set_client_to_redis_password(read_password(path)?);
    }
    if s.tls {
        b = b.set_client_to_redis_tls_mode(TlsMode::Secure);
        if let Some(c) = &certs {
            b = b.set_client_to_redis_certificates(c.clone());
        }
    }
    let tls_sentinels = s.nodes.iter().any(|u| u.starts_with("rediss://"));
    if let (true, Some(c)) = (tls_sentinels, certs) {
        b = b.set_client_to_sentinel_certificates(c);
    }
    b.build().map_err(err)
}

/// A Redis password kept in a file: one line, not world-readable.
fn read_password(path: &Path) -> Result<String, StoreError> {
    let what = |e: String| {
        StoreError::Redis(format!(
            "store.redis_sentinel.password_file {}: {e}",
            path.display()
        ))
    };
    let meta = std::fs::metadata(path).map_err(|e| what(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o004 != 0 {
            return Err(what(format!(
                "is world-readable; run `chmod 600 {}`",
                path.display()
            )));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| what(e.to_string()))?;
    let pass = text.trim_end_matches(['\n', '\r']);
    if pass.is_empty() || pass.contains(['\n', '\r']) {
        return Err(what("must hold the password on one line".into()));
    }
    Ok(pass.to_owned())
}

impl ConnectionLike for Handle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Handle::Single(c) => c.req_packed_command(cmd),
            Handle::Cluster(c) => c.req_packed_command(cmd),
            Handle::Multiplexed(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Handle::Single(c) => c.req_packed_commands(cmd, offset, count),
            Handle::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Handle::Multiplexed(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Handle::Single(c) => c.get_db(),
            Handle::Cluster(c) => c.get_db(),
            Handle::Multiplexed(c) => c.get_db(),
        }
    }
}
