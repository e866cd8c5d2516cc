//! The Redis store: session affinity shared by every balancer through
//! Redis (standalone, Sentinel or Cluster).
//!
//! A local [`MemoryStore`] sits in front as a cache, so a request rarely
//! waits on Redis: lookups are local, touches and rebinds go out through a
//! bounded write-behind queue (touches coalesced to one per session per
//! `idle_timeout / 8`). Redis is asked, bounded by `store.timeout`, on a
//! cache miss (a session learned by another balancer), when a cached
//! binding is older than `store.cache_ttl` (another balancer may have
//! moved it), to agree on an orphan's heir, and to make a brand-new
//! session's binding durable before its response leaves. When
//! Redis is down, requests keep being served from the cache and route
//! suffixes; when it comes back, the cache is written back where Redis has
//! nothing newer.
//!
//! Keys: `<prefix>s:<sha256(id)>` (a hash with route, created, last seen,
//! version; TTL = idle timeout, so Redis expires idle sessions itself), and
//! `<prefix>r:<route>`, a sorted set of that route's session keys scored by
//! expiry time, which gives cluster-wide per-route counts.

mod conn;
mod scripts;

use super::{
    Cached, MemoryStore, PeakWindow, SessionCounts, SessionStore, StoreError, StoreFuture,
    StoreStatus,
};
use crate::config::raw::StoreSection;
use conn::Conn;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// A write for Redis, applied in the background.
enum Op {
    Bind {
        key: String,
        route: Arc<str>,
    },
    Touch {
        key: String,
        route: Arc<str>,
    },
    Forget {
        key: String,
    },
    Moved {
        key: String,
        from: Option<Arc<str>>,
        to: Arc<str>,
    },
}

/// Cluster-wide count of one route, refreshed from Redis every second.
#[derive(Default)]
struct RouteCount {
    current: AtomicU64,
    peak: AtomicU64,
    window: PeakWindow,
}

/// Session affinity in Redis with a local cache (`kind = "redis"`).
pub struct RedisStore {
    cache: Arc<MemoryStore>,
    conn: Conn,
    prefix: String,
    hash_keys: bool,
    ttl_ms: u64,
    touch_every_ms: u64,
    trust_ms: u64,
    timeout: Duration,
    tx: mpsc::Sender<Op>,
    healthy: AtomicBool,
    errors: AtomicU64,
    dropped: AtomicU64,
    routes: HashMap<Arc<str>, RouteCount>,
    endpoints: Vec<String>,
    invalidations: AtomicU64,
}

const TICK: Duration = Duration::from_secs(1);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RedisStore {
    /// Connect and start the writer, health and count tasks. `routes` are
    /// the configured backends, whose counts are tracked.
    pub async fn start(
        cfg: &StoreSection,
        idle: Duration,
        max_sessions: usize,
        routes: Vec<Arc<str>>,
    ) -> Result<Arc<Self>, StoreError> {
        let conn = Conn::open(cfg, cfg.timeout).await?;
        let cache = MemoryStore::new(idle, max_sessions);
        cache.start_sweeper();
        let (tx, rx) = mpsc::channel(cfg.write_queue);
        let ttl_ms = (idle.as_millis() as u64).max(1000);
        let store = Arc::new(RedisStore {
            cache,
            conn,
            prefix: cfg.key_prefix.clone(),
            hash_keys: cfg.hash_keys,
            ttl_ms,
            touch_every_ms: (ttl_ms / 8).max(500),
            trust_ms: cfg.cache_ttl.as_millis() as u64,
            timeout: cfg.timeout,
            tx,
            healthy: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            routes: routes
                .into_iter()
                .map(|r| (r, RouteCount::default()))
                .collect(),
            endpoints: Conn::describe(cfg),
            invalidations: AtomicU64::new(0),
        });
        if let Err(e) = store.ping().await {
            store.healthy.store(false, Ordering::Relaxed);
            tracing::warn!(error = %e, "redis store unreachable at start; serving from the local cache until it answers");
        }
        tokio::spawn(writer(Arc::downgrade(&store), rx));
        tokio::spawn(monitor(Arc::downgrade(&store)));
        tokio::spawn(follow_moves(Arc::downgrade(&store)));
        Ok(store)
    }

    fn key(&self, id: &str) -> String {
        if self.hash_keys {
            use sha2::Digest;
            let d = sha2::Sha256::digest(id.as_bytes());
            let mut k = String::with_capacity(self.prefix.len() + 2 + 32);
            k.push_str(&self.prefix);
            k.push_str("s:");
            for b in &d[..16] {
                k.push_str(&format!("{b:02x}"));
            }
            k
        } else {
            format!("{}s:{id}", self.prefix)
        }
    }

    fn route_key(&self, route: &str) -> String {
        format!("{}r:{route}", self.prefix)
    }

    /// Counter bumped whenever a balancer moves sessions off `route`.
    fn moved_key(&self, route: &str) -> String {
        format!("{}m:{route}", self.prefix)
    }

    /// The configured route's shared name, so answers from Redis allocate
    /// nothing for known routes.
    fn intern(&self, route: &str) -> Arc<str> {
        self.routes
            .get_key_value(route)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| route.into())
    }

    fn enqueue(&self, op: Op) {
        if !self.healthy.load(Ordering::Relaxed) {
            return;
        }
        if self.tx.try_send(op).is_err() && self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!("redis write queue full: dropping writes (the local cache keeps them); raise store.write_queue or check Redis latency");
        }
    }

    async fn ping(&self) -> redis::RedisResult<()> {
        let fut = async {
            let mut h = self.conn.handle().await?;
            redis::cmd("PING").query_async::<()>(&mut h).await
        };
        match tokio::time::timeout(self.timeout.max(Duration::from_millis(500)), fut).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))),
        }
    }

    /// A remote operation failed: count it, and on connection trouble stop
    /// asking Redis until the monitor sees it answer again.
    async fn failed(&self, e: &redis::RedisError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            self.conn.reset().await;
            if self.healthy.swap(false, Ordering::Relaxed) {
                tracing::warn!(error = %e, "redis store unreachable: serving from the local cache and route suffixes; retrying every second");
            }
        } else {
            self.conn.reset().await;
            tracing::debug!(error = %e, "redis operation failed");
        }
    }

    /// Add `key` to `route`'s counting set, scored by its expiry time.
    async fn zadd(
        &self,
        h: &mut conn::Handle,
        route: &str,
        key: &str,
        expiry: u64,
    ) -> redis::RedisResult<()> {
        redis::cmd("ZADD")
            .arg(self.route_key(route))
            .arg(expiry)
            .arg(key)
            .query_async(h)
            .await
    }

    /// Remove `key` from `route`'s counting set.
    async fn zrem(&self, h: &mut conn::Handle, route: &str, key: &str) -> redis::RedisResult<()> {
        redis::cmd("ZREM")
            .arg(self.route_key(route))
            .arg(key)
            .query_async(h)
            .await
    }

    async fn apply(&self, op: Op) -> redis::RedisResult<()> {
        let mut h = self.conn.handle().await?;
        let now = unix_ms();
        let expiry = now + self.ttl_ms;
        match op {
            Op::Bind { key, route } => {
                let old: Option<String> = scripts::BIND
                    .key(&key)
                    .arg(&*route)
                    .arg(now)
                    .arg(self.ttl_ms)
                    .invoke_async(&mut h)
                    .await?;
                if let Some(old) = old.filter(|o| **o != *route) {
                    self.zrem(&mut h, &old, &key).await?;
                }
                self.zadd(&mut h, &route, &key, expiry).await
            }
            Op::Touch { key, route } => {
                redis::cmd("HSET")
                    .arg(&key)
                    .arg("s")
                    .arg(now)
                    .query_async::<()>(&mut h)
                    .await?;
                redis::cmd("PEXPIRE")
                    .arg(&key)
                    .arg(self.ttl_ms)
                    .query_async::<()>(&mut h)
                    .await?;
                self.zadd(&mut h, &route, &key, expiry).await
            }
            Op::Forget { key } => {
                let old: Option<String> = scripts::FORGET.key(&key).invoke_async(&mut h).await?;
                match old {
                    Some(r) => self.zrem(&mut h, &r, &key).await,
                    None => Ok(()),
                }
            }
            Op::Moved { key, from, to } => {
                if let Some(f) = from.filter(|f| *f != to) {
                    self.zrem(&mut h, &f, &key).await?;
                    redis::cmd("INCR")
                        .arg(self.moved_key(&f))
                        .query_async::<()>(&mut h)
                        .await?;
                }
                self.zadd(&mut h, &to, &key, expiry).await
            }
        }
    }

    /// Write every cached session where Redis has none (after an outage).
    async fn resync(&self) -> usize {
        let mut all: Vec<(String, Arc<str>)> = Vec::new();
        self.cache
            .for_each(|id, route, _| all.push((self.key(id), route.clone())));
        let mut written = 0;
        for chunk in all.chunks(256) {
            let now = unix_ms();
            let jobs = chunk.iter().map(|(key, route)| async move {
                let mut h = self.conn.handle().await?;
                let n: i64 = scripts::SET_IF_ABSENT
                    .key(key)
                    .arg(&**route)
                    .arg(now)
                    .arg(self.ttl_ms)
                    .invoke_async(&mut h)
                    .await?;
                if n == 1 {
                    self.zadd(&mut h, route, key, now + self.ttl_ms).await?;
                }
                Ok::<i64, redis::RedisError>(n)
            });
            for r in futures_util::future::join_all(jobs).await {
                match r {
                    Ok(n) => written += n as usize,
                    Err(e) => {
                        self.failed(&e).await;
                        return written;
                    }
                }
            }
        }
        written
    }

    /// Refresh the cluster-wide per-route counts, dropping expired members.
    async fn refresh_counts(&self) -> redis::RedisResult<()> {
        let mut h = self.conn.handle().await?;
        let now = unix_ms();
        for (route, count) in &self.routes {
            let key = self.route_key(route);
            redis::cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now)
                .query_async::<()>(&mut h)
                .await?;
            let n: u64 = redis::cmd("ZCARD").arg(&key).query_async(&mut h).await?;
            count.current.store(n, Ordering::Relaxed);
            count.peak.fetch_max(n, Ordering::Relaxed);
            count.window.record(n);
        }
        Ok(())
    }
}

/// Try to reach Redis once (for `stickgate check`): `Err` says why not.
/// Unreachable Redis is not fatal at run time; this only warns early.
pub async fn probe(cfg: &StoreSection) -> Result<(), String> {
    let wait = Duration::from_secs(2);
    let attempt = async {
        let conn = Conn::open(cfg, wait).await.map_err(|e| e.to_string())?;
        let mut h = conn.handle().await.map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<()>(&mut h)
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(wait, attempt)
        .await
        .map_err(|_| "no answer within 2s".to_string())?
}

/// Apply queued writes, up to 128 at a time concurrently (the connection
/// pipelines them), until the store is dropped.
async fn writer(store: Weak<RedisStore>, mut rx: mpsc::Receiver<Op>) {
    let mut batch = Vec::with_capacity(128);
    while rx.recv_many(&mut batch, 128).await > 0 {
        let Some(s) = store.upgrade() else { return };
        if !s.healthy.load(Ordering::Relaxed) {
            batch.clear();
            continue;
        }
        let limit = s.timeout.max(Duration::from_secs(1));
        let jobs = batch.drain(..).map(|op| {
            let s = &s;
            async move {
                match tokio::time::timeout(limit, s.apply(op)).await {
                    Ok(r) => r,
                    Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))),
                }
            }
        });
        for r in futures_util::future::join_all(jobs).await {
            if let Err(e) = r {
                s.failed(&e).await;
            }
        }
    }
}

/// Every 200 ms: read the per-route move counters; when another balancer
/// moved sessions off a route, stop trusting cached bindings to it, so a
/// failover decided anywhere is followed here within that interval even if
/// this balancer never saw the route go down.
async fn follow_moves(store: Weak<RedisStore>) {
    let mut seen: HashMap<Arc<str>, i64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = store.upgrade() else { return };
        if !s.healthy.load(Ordering::Relaxed) {
            continue;
        }
        let Ok(mut h) = s.conn.handle().await else {
            continue;
        };
        for route in s.routes.keys() {
            let mut cmd = redis::cmd("GET");
            cmd.arg(s.moved_key(route));
            let q = cmd.query_async::<Option<i64>>(&mut h);
            let Ok(Ok(n)) =
                tokio::time::timeout(s.timeout.max(Duration::from_millis(500)), q).await
            else {
                break;
            };
            let n = n.unwrap_or(0);
            match seen.insert(route.clone(), n) {
                Some(before) if before != n => {
                    s.cache.distrust_route(route);
                    s.invalidations.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }
}

/// Every second: check Redis answers, resynchronise after an outage, and
/// refresh the per-route counts.
async fn monitor(store: Weak<RedisStore>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = store.upgrade() else { return };
        match s.ping().await {
            Ok(()) if !s.healthy.load(Ordering::Relaxed) => {
                s.healthy.store(true, Ordering::Relaxed);
                let n = s.resync().await;
                tracing::info!(
                    written = n,
                    "redis store reachable again; local sessions written back"
                );
            }
            Ok(()) => {}
            Err(e) => {
                s.failed(&e).await;
                continue;
            }
        }
        if let Err(e) = s.refresh_counts().await {
            s.failed(&e).await;
        }
    }
}

impl SessionStore for RedisStore {
    fn lookup(&self, id: &str) -> Cached {
        self.lookup_hinted(id, None)
    }

    fn lookup_hinted(&self, id: &str, hint: Option<&str>) -> Cached {
        let healthy = self.healthy.load(Ordering::Relaxed);
        match self
            .cache
            .get_shared(id, self.touch_every_ms, self.trust_ms)
        {
            Some(v) if healthy && (v.stale || hint.is_some_and(|h| *h != *v.route)) => {
                Cached::Unknown
            }
            Some(v) => {
                if v.touch_due {
                    self.enqueue(Op::Touch {
                        key: self.key(id),
                        route: v.route.clone(),
                    });
                }
                Cached::Found(v.route)
            }
            None if healthy => Cached::Unknown,
            None => Cached::Absent,
        }
    }

    fn fetch<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Arc<str>>> {
        Box::pin(async move {
            let key = self.key(id);
            let q = async {
                let mut h = self.conn.handle().await?;
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("r")
                    .arg("s")
                    .query_async::<(Option<String>, Option<u64>)>(&mut h)
                    .await
            };
            let answer = match tokio::time::timeout(self.timeout, q).await {
                Ok(Ok(answer)) => Some(answer),
                Ok(Err(e)) => {
                    self.failed(&e).await;
                    None
                }
                Err(_) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            match answer {
                Some((Some(route), seen)) => {
                    let route = self.intern(&route);
                    let idle = seen.map(|s| unix_ms().saturating_sub(s)).unwrap_or(0);
                    self.cache.bind_aged(id, &route, idle);
                    Some(route)
                }
                // Redis has no record (or did not answer): a binding this
                // balancer still holds stays, and is written back.
                Some((None, _)) => {
                    let local = self.cache.get(id)?;
                    self.bind(id, &local);
                    Some(local)
                }
                None => self.cache.get(id),
            }
        })
    }

    fn bind(&self, id: &str, route: &Arc<str>) {
        self.cache.bind(id, route);
        self.enqueue(Op::Bind {
            key: self.key(id),
            route: route.clone(),
        });
    }

    fn bind_now<'a>(&'a self, id: &'a str, route: &'a Arc<str>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.cache.bind(id, route);
            let op = Op::Bind {
                key: self.key(id),
                route: route.clone(),
            };
            if !self.healthy.load(Ordering::Relaxed) {
                return;
            }
            match tokio::time::timeout(self.timeout, self.apply(op)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.failed(&e).await;
                    self.bind(id, route);
                }
                Err(_) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    self.bind(id, route);
                }
            }
        })
    }

    fn forget(&self, id: &str) {
        self.cache.forget(id);
        self.enqueue(Op::Forget { key: self.key(id) });
    }

    fn claim<'a>(
        &'a self,
        id: &'a str,
        from: Option<&'a str>,
        proposed: Arc<str>,
    ) -> StoreFuture<'a, Arc<str>> {
        Box::pin(async move {
            let key = self.key(id);
            if self.healthy.load(Ordering::Relaxed) {
                let q = async {
                    let mut h = self.conn.handle().await?;
                    scripts::CLAIM
                        .key(&key)
                        .arg(from.unwrap_or(""))
                        .arg(&*proposed)
                        .arg(unix_ms())
                        .arg(self.ttl_ms)
                        .invoke_async::<String>(&mut h)
                        .await
                };
                match tokio::time::timeout(self.timeout, q).await {
                    Ok(Ok(agreed)) => {
                        let agreed = self.intern(&agreed);
                        self.cache.bind(id, &agreed);
                        self.enqueue(Op::Moved {
                            key,
                            from: from.map(|f| self.intern(f)),
                            to: agreed.clone(),
                        });
                        return agreed;
                    }
                    Ok(Err(e)) => self.failed(&e).await,
                    Err(_) => {
                        self.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let local = self.cache.claim(id, from, proposed).await;
            self.enqueue(Op::Bind {
                key,
                route: local.clone(),
            });
            local
        })
    }

    fn route_down(&self, route: &str) {
        self.cache.distrust_route(route);
    }

    fn sessions(&self, route: &str) -> u64 {
        self.routes
            .get(route)
            .map(|c| c.current.load(Ordering::Relaxed))
            .unwrap_or_else(|| self.cache.sessions(route))
    }

    fn counts(&self) -> Vec<(Arc<str>, SessionCounts)> {
        self.routes
            .iter()
            .map(|(r, c)| {
                let current = c.current.load(Ordering::Relaxed);
                (
                    r.clone(),
                    SessionCounts {
                        current,
                        peak_5min: c.window.peak(current),
                        peak: c.peak.load(Ordering::Relaxed),
                    },
                )
            })
            .collect()
    }

    fn status(&self) -> StoreStatus {
        let local = self.cache.status();
        StoreStatus {
            kind: "redis",
            sessions: self
                .routes
                .values()
                .map(|c| c.current.load(Ordering::Relaxed))
                .sum(),
            healthy: self.healthy.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            dropped_writes: self.dropped.load(Ordering::Relaxed),
            peers: self.endpoints.clone(),
            invalidations: self.invalidations.load(Ordering::Relaxed),
            ..local
        }
    }
}
