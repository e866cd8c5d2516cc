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
//! expiry time, which gives cluster-wide per-route counts (TTL renewed on
//! every write). Only sessions a backend confirmed get an `s:` key. An
//! orphan no backend confirmed gets at most a `<prefix>u:<sha256(id)>`
//! string (its agreed heir; TTL of the unconfirmed tier, never counted),
//! and no more than the unconfirmed tier's size of them are created per
//! such TTL window (`<prefix>u#<window>` counts them). Every key written
//! has a TTL, except the operators' states hash below.
//!
//! Operators' backend state changes live in one hash, `<prefix>states`:
//! field = route, value = `"<state>:<at_ms>"` (e.g.
//! `draining:1732350000123`), written only if newer than what it holds
//! ([`scripts::STATE_SET`]) and read back every 200 ms by every balancer.
//! Each balancer also keeps the newest change it knows locally and writes
//! it again wherever Redis has something older or nothing (Redis restarted
//! empty, or the change was made during an outage), so an operator's action
//! is never lost to a Redis outage.

mod batch;
mod conn;
pub mod scripts;

use super::memory::{unconfirmed_capacity, UNCONFIRMED_MAX_IDLE};
use super::{
    unix_ms, Cached, MemoryStore, PeakWindow, SessionCounts, SessionStore, StateBook, StateChange,
    StoreError, StoreFuture, StoreStatus, MAX_STATE_SKEW_MS,
};
use crate::config::raw::StoreSection;
use crate::lock::lock;
use arc_swap::ArcSwap;
use batch::Write;
use conn::Conn;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// A write for Redis, applied in the background.
enum Op {
    Bind {
        id: Box<str>,
        key: String,
        route: Arc<str>,
        /// When this balancer decided it (unix ms): a newer move stored by
        /// another balancer wins over it (see [`scripts::BIND`]).
        at: u64,
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
    /// The counting-set bookkeeping of a binding already written through
    /// (see `RedisStore::bind_now`): only the binding must be in Redis
    /// before the response leaves; counts follow behind.
    Count {
        key: String,
        route: Arc<str>,
        stored: Stored,
    },
}

/// What the BIND script left in Redis: the route before (if any) and
/// after.
#[derive(Debug)]
struct Stored {
    old: Option<Arc<str>>,
    now: Arc<str>,
}

/// A queued write whose next commands depend on its script's answer (see
/// [`RedisStore::then_writes`]).
enum Then {
    Bind {
        id: Box<str>,
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
}

/// A fresh session's write without the binding script (see
/// [`RedisStore::fresh_transaction`]).
struct Fresh {
    /// A configured route: the session joins its counting set.
    counted: bool,
}

impl Fresh {
    /// Exactly the record [`scripts::BIND`] creates for an id Redis has
    /// none of (every field, version 1, decided `at`), its TTL, and its
    /// count, as one transaction: Redis runs none of it unless it got all
    /// of it, so a balancer dying half-way never leaves a record without
    /// a TTL, and the count is as durable as the binding. Measured on a
    /// new-session load, Redis spends about a quarter less CPU per session
    /// than on the script and the count's later `ZADD`.
    fn build(&self, key: &str, route: &str, at: u64, store: &RedisStore) -> redis::Pipeline {
        let mut p = redis::pipe();
        p.atomic();
        p.cmd("HSET")
            .arg(key)
            .arg("r")
            .arg(route)
            .arg("s")
            .arg(at)
            .arg("c")
            .arg(at)
            .arg("v")
            .arg(1)
            .arg("t")
            .arg(at)
            .ignore();
        p.cmd("PEXPIRE").arg(key).arg(store.ttl_ms).ignore();
        if self.counted {
            p.cmd("ZADD")
                .arg(store.route_key(route))
                .arg(at + store.ttl_ms)
                .arg(key)
                .ignore();
        }
        p
    }
}

/// Cluster-wide count of one route, refreshed from Redis every second.
#[derive(Default)]
struct RouteCount {
    current: AtomicU64,
    peak: AtomicU64,
    window: PeakWindow,
    /// When a fresh session of this route last went the scripted way, so
    /// that the writer renews the counting set's TTL (unix ms; see
    /// [`RedisStore::fresh_transaction`]).
    renewal_sent_ms: AtomicU64,
}

/// The configured routes and their counts; swapped whole on a config
/// reload so the hot path reads it without a lock.
type Routes = HashMap<Arc<str>, Arc<RouteCount>>;

/// Routes whose state changes are remembered (far more than any cluster).
const MAX_STATE_ROUTES: usize = 4096;

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
    routes: ArcSwap<Routes>,
    endpoints: Vec<String>,
    invalidations: AtomicU64,
    /// Newest state change per route known here (own and read from Redis).
    states: StateBook,
    /// Routes whose known change Redis may not have yet; written by
    /// [`write_states`] when `states_kick` fires.
    states_due: Mutex<HashSet<Arc<str>>>,
    states_kick: Arc<Notify>,
    /// A malformed value in the states hash was logged (once).
    states_malformed: AtomicBool,
    /// Unconfirmed claim records stored per window of
    /// `unconfirmed_ttl_ms` at most (see [`scripts::UNCONFIRMED_CLAIM`]).
    unconfirmed_cap: u64,
    /// Life of an unconfirmed claim record (and the admission window).
    unconfirmed_ttl_ms: u64,
    /// The unconfirmed claim cap was reached and logged (once).
    unconfirmed_full: AtomicBool,
}

const TICK: Duration = Duration::from_secs(1);

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
            routes: ArcSwap::from_pointee(
                routes
                    .into_iter()
                    .map(|r| (r, Arc::new(RouteCount::default())))
                    .collect(),
            ),
            endpoints: Conn::describe(cfg),
            invalidations: AtomicU64::new(0),
            states: StateBook::new(MAX_STATE_ROUTES),
            states_due: Mutex::new(HashSet::new()),
            states_kick: Arc::new(Notify::new()),
            states_malformed: AtomicBool::new(false),
            unconfirmed_cap: unconfirmed_capacity(max_sessions) as u64,
            unconfirmed_ttl_ms: (idle.min(UNCONFIRMED_MAX_IDLE).as_millis() as u64).max(1000),
            unconfirmed_full: AtomicBool::new(false),
        });
        if let Err(e) = store.ping().await {
            store.healthy.store(false, Ordering::Relaxed);
            tracing::warn!(error = %e, "redis store unreachable at start; serving from the local cache until it answers");
        }
        tokio::spawn(writer(Arc::downgrade(&store), rx));
        tokio::spawn(monitor(Arc::downgrade(&store)));
        tokio::spawn(follow_moves(Arc::downgrade(&store)));
        tokio::spawn(write_states(
            Arc::downgrade(&store),
            store.states_kick.clone(),
        ));
        Ok(store)
    }

    fn key(&self, id: &str) -> String {
        self.key_in("s:", id)
    }

    /// The unconfirmed claim record of `id`.
    fn unconfirmed_key(&self, id: &str) -> String {
        self.key_in("u:", id)
    }

    fn key_in(&self, namespace: &str, id: &str) -> String {
        if self.hash_keys {
            use sha2::Digest;
            let d = sha2::Sha256::digest(id.as_bytes());
            let mut k = String::with_capacity(self.prefix.len() + 2 + 32);
            k.push_str(&self.prefix);
            k.push_str(namespace);
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for b in &d[..16] {
                k.push(HEX[usize::from(b >> 4)] as char);
                k.push(HEX[usize::from(b & 0xf)] as char);
            }
            k
        } else {
            format!("{}{namespace}{id}", self.prefix)
        }
    }

    fn route_key(&self, route: &str) -> String {
        format!("{}r:{route}", self.prefix)
    }

    /// Counter bumped whenever a balancer moves sessions off `route`.
    fn moved_key(&self, route: &str) -> String {
        format!("{}m:{route}", self.prefix)
    }

    /// The hash of every route's newest operator state change.
    fn states_key(&self) -> String {
        format!("{}states", self.prefix)
    }

    /// The configured route's shared name, so answers from Redis allocate
    /// nothing for known routes.
    fn intern(&self, route: &str) -> Arc<str> {
        self.routes
            .load()
            .get_key_value(route)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| route.into())
    }

    /// Have [`write_states`] write these routes' known changes to Redis.
    fn states_due(&self, routes: impl IntoIterator<Item = Arc<str>>) {
        lock(&self.states_due).extend(routes);
        self.states_kick.notify_one();
    }

    /// Write the due state changes (each only if newer than Redis's); the
    /// ones that fail stay due and are retried.
    async fn write_due_states(&self) {
        if !self.healthy.load(Ordering::Relaxed) {
            return;
        }
        let due: Vec<Arc<str>> = {
            let mut due = lock(&self.states_due);
            due.drain().collect()
        };
        let key = self.states_key();
        for (i, route) in due.iter().enumerate() {
            let Some(change) = self.states.get(route) else {
                continue;
            };
            let q = async {
                let mut h = self.conn.handle().await?;
                scripts::STATE_SET
                    .key(&key)
                    .arg(&**route)
                    .arg(change.state.as_str())
                    .arg(change.at_ms)
                    .arg(unix_ms().saturating_add(MAX_STATE_SKEW_MS))
                    .invoke_async::<i64>(&mut h)
                    .await
            };
            let result =
                match tokio::time::timeout(self.timeout.max(Duration::from_secs(1)), q).await {
                    Ok(r) => r,
                    Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))),
                };
            match result {
                Ok(written) => {
                    tracing::debug!(route = %route, state = %change.state, at_ms = change.at_ms, written = written == 1, "backend state published to redis");
                }
                Err(e) => {
                    // Keep this one and the rest for the next attempt (the
                    // monitor kicks again when Redis answers).
                    lock(&self.states_due).extend(due[i..].iter().cloned());
                    self.failed(&e).await;
                    return;
                }
            }
        }
    }

    /// Merge the states hash read from Redis into the local view, and mark
    /// for writing every configured route where this balancer knows a
    /// newer change than Redis has (lost in an outage or a Redis restart).
    /// A value dated too far ahead of our clock counts as malformed: it is
    /// ignored and our own change for that route written over it.
    fn merge_states(&self, remote: &HashMap<Vec<u8>, Vec<u8>>) {
        let routes = self.routes.load();
        let now = unix_ms();
        let mut stored: HashMap<&str, StateChange> = HashMap::new();
        for (route, value) in remote {
            let parsed = std::str::from_utf8(route).ok().and_then(|r| {
                let v = std::str::from_utf8(value).ok()?;
                Some((r, parse_state(v)?))
            });
            let parsed = parsed.filter(|(_, c)| !c.is_from_the_future(now));
            let Some((route, change)) = parsed else {
                if !self.states_malformed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        key = %self.states_key(),
                        route = %String::from_utf8_lossy(route).escape_debug(),
                        value = %String::from_utf8_lossy(value).escape_debug(),
                        "ignoring a malformed or future-dated backend state in redis (logged once); check the balancers' clocks (NTP)"
                    );
                }
                continue;
            };
            stored.insert(route, change);
            if let Some((r, _)) = routes.get_key_value(route) {
                self.states.merge(r, change);
            }
        }
        let behind: Vec<Arc<str>> = routes
            .keys()
            .filter(|r| {
                self.states.get(r).is_some_and(|mine| {
                    stored
                        .get(&***r)
                        .is_none_or(|theirs| mine.supersedes(theirs))
                })
            })
            .cloned()
            .collect();
        if !behind.is_empty() {
            self.states_due(behind);
        }
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

    /// Whether `route` is a configured backend: only those may name keys
    /// (a route read from Redis or a request is anybody's string).
    fn configured(&self, route: &str) -> bool {
        self.routes.load().contains_key(route)
    }

    /// A confirmed binding's write, dated now (see [`Op::Bind`]).
    fn bind_op(&self, id: &str, route: &Arc<str>) -> Op {
        Op::Bind {
            id: id.into(),
            key: self.key(id),
            route: route.clone(),
            at: unix_ms(),
        }
    }

    /// Run a new session's write-through (bounded by `store.timeout`);
    /// when it fails or times out, the binding is queued for the writer
    /// instead, with its decision time kept, so the retry cannot outrank
    /// a move another balancer made meanwhile.
    async fn write_through<T>(
        &self,
        write: impl std::future::Future<Output = redis::RedisResult<T>>,
        id: &str,
        key: &str,
        route: &Arc<str>,
        at: u64,
    ) -> Option<T> {
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(done)) => return Some(done),
            Ok(Err(e)) => self.failed(&e).await,
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.enqueue(Op::Bind {
            id: id.into(),
            key: key.to_owned(),
            route: route.clone(),
            at,
        });
        None
    }

    /// How a fresh session (see [`SessionStore::bind_fresh`]) is written
    /// without [`scripts::BIND`]: one `MULTI`/`EXEC` with its record, TTL
    /// and count (see [`Fresh::build`]). `None` when it goes the scripted
    /// way instead: on a Cluster (the record and the counting set are in
    /// different slots), with Redis unreachable, and for one fresh session
    /// per route and [`batch::COUNT_TTL_EVERY`], so that the writer, which
    /// counts that one, renews the counting set's TTL as often as it would
    /// if every count were queued.
    fn fresh_transaction(&self, route: &str) -> Option<Fresh> {
        if self.conn.is_cluster() || !self.healthy.load(Ordering::Relaxed) {
            return None;
        }
        let routes = self.routes.load();
        let Some(count) = routes.get(route) else {
            return Some(Fresh { counted: false });
        };
        let now = unix_ms();
        let last = count.renewal_sent_ms.load(Ordering::Relaxed);
        let every = batch::COUNT_TTL_EVERY.as_millis() as u64;
        if now.saturating_sub(last) >= every
            && count
                .renewal_sent_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return None;
        }
        Some(Fresh { counted: true })
    }

    /// The counting set's TTL given with a renewal: one renewal interval
    /// longer than a session's, so the set outlives every member added
    /// until the next renewal (see [`batch::CountTtl`]).
    fn count_set_ttl_ms(&self) -> u64 {
        self.ttl_ms + batch::COUNT_TTL_EVERY.as_millis() as u64
    }

    /// Add `key` to `route`'s counting set, scored by its expiry time: a
    /// plain `ZADD`, or [`scripts::COUNT_ADD`] (which also renews the
    /// set's TTL) when the route's renewal is due. Routes that are not
    /// configured are not counted.
    fn count_add(
        &self,
        route: &Arc<str>,
        key: &str,
        expiry: u64,
        ttl: &mut batch::CountTtl,
        out: &mut Vec<Write>,
    ) {
        if !self.configured(route) {
            return;
        }
        let set = self.route_key(route);
        if ttl.due(route) {
            let mut w = Write::eval(&scripts::COUNT_ADD, &set);
            w.cmd.arg(expiry).arg(key).arg(self.count_set_ttl_ms());
            out.push(w);
        } else {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(set).arg(expiry).arg(key);
            out.push(Write::plain(zadd));
        }
    }

    /// Remove `key` from `route`'s counting set.
    fn count_remove(&self, route: &str, key: &str) -> Write {
        let mut zrem = redis::cmd("ZREM");
        zrem.arg(self.route_key(route)).arg(key);
        Write::plain(zrem)
    }

    /// Write the binding (one script call); a newer move stored by another
    /// balancer is kept and followed in the cache.
    async fn bind_step(
        &self,
        h: &mut conn::Handle,
        id: &str,
        key: &str,
        route: &Arc<str>,
        at: u64,
    ) -> redis::RedisResult<Stored> {
        let (old, now): (String, String) = scripts::BIND
            .key(key)
            .arg(&**route)
            .arg(unix_ms())
            .arg(self.ttl_ms)
            .arg(at)
            .invoke_async(h)
            .await?;
        Ok(self.stored(id, route, &old, &now))
    }

    /// What [`scripts::BIND`] answered for binding `id` to `route`; a
    /// newer move another balancer stored meanwhile is followed.
    fn stored(&self, id: &str, route: &Arc<str>, old: &str, now: &str) -> Stored {
        let now = if now == &**route {
            route.clone()
        } else {
            let moved = self.intern(now);
            if self.configured(&moved) {
                self.cache.bind(id, &moved);
            }
            moved
        };
        let old = (!old.is_empty()).then(|| self.intern(old));
        Stored { old, now }
    }

    /// The counting sets after a binding: counted under the stored route,
    /// and no longer under the one it replaced.
    fn count_writes(
        &self,
        key: &str,
        route: &Arc<str>,
        stored: &Stored,
        expiry: u64,
        ttl: &mut batch::CountTtl,
        out: &mut Vec<Write>,
    ) {
        if stored.now != *route {
            return self.count_add(&stored.now, key, expiry, ttl, out);
        }
        if let Some(old) = stored.old.as_ref().filter(|old| *old != route) {
            out.push(self.count_remove(old, key));
        }
        self.count_add(route, key, expiry, ttl, out);
    }

    /// The first commands of `op`: those that need no answer are complete;
    /// an op whose next writes depend on its script's answer is returned,
    /// to be finished by [`RedisStore::then_writes`].
    fn first_writes(
        &self,
        op: Op,
        now: u64,
        ttl: &mut batch::CountTtl,
        out: &mut Vec<Write>,
    ) -> Option<Then> {
        let expiry = now + self.ttl_ms;
        match op {
            Op::Count { key, route, stored } => {
                self.count_writes(&key, &route, &stored, expiry, ttl, out);
                None
            }
            Op::Moved { key, from, to } => {
                if let Some(f) = from.filter(|f| *f != to && self.configured(f)) {
                    out.push(self.count_remove(&f, &key));
                    let mut bump = Write::eval(&scripts::BUMP, &self.moved_key(&f));
                    bump.cmd.arg(self.ttl_ms);
                    out.push(bump);
                }
                self.count_add(&to, &key, expiry, ttl, out);
                None
            }
            Op::Bind { id, key, route, at } => {
                let mut w = Write::eval(&scripts::BIND, &key);
                w.cmd.arg(&*route).arg(now).arg(self.ttl_ms).arg(at);
                out.push(w);
                Some(Then::Bind { id, key, route })
            }
            Op::Touch { key, route } => {
                let mut w = Write::eval(&scripts::TOUCH, &key);
                w.cmd.arg(now).arg(self.ttl_ms);
                out.push(w);
                Some(Then::Touch { key, route })
            }
            Op::Forget { key } => {
                out.push(Write::eval(&scripts::FORGET, &key));
                Some(Then::Forget { key })
            }
        }
    }

    /// The counting-set writes that follow a script's answer.
    fn then_writes(
        &self,
        then: Then,
        answer: redis::Value,
        now: u64,
        ttl: &mut batch::CountTtl,
        out: &mut Vec<Write>,
    ) -> redis::RedisResult<()> {
        let expiry = now + self.ttl_ms;
        match then {
            Then::Bind { id, key, route } => {
                let (old, stored): (String, String) = redis::from_redis_value(answer)?;
                let stored = self.stored(&id, &route, &old, &stored);
                self.count_writes(&key, &route, &stored, expiry, ttl, out);
            }
            Then::Touch { key, route } => {
                let stored: Option<String> = redis::from_redis_value(answer)?;
                if stored.is_some_and(|r| *r == *route) {
                    self.count_add(&route, &key, expiry, ttl, out);
                }
            }
            Then::Forget { key } => {
                let old: Option<String> = redis::from_redis_value(answer)?;
                if let Some(r) = old {
                    out.push(self.count_remove(&r, &key));
                }
            }
        }
        Ok(())
    }

    /// Apply a batch of queued writes: their first commands in one go, then
    /// the counting-set writes that depend on the scripts' answers in a
    /// second. A failing command costs only its own op.
    async fn apply_batch(&self, ops: &mut Vec<Op>, ttl: &mut batch::CountTtl) {
        let now = unix_ms();
        let mut first = Vec::with_capacity(ops.len() * 2);
        let mut pending = Vec::new();
        for op in ops.drain(..) {
            if let Some(then) = self.first_writes(op, now, ttl, &mut first) {
                pending.push((first.len() - 1, then));
            }
        }
        let mut h = match self.conn.handle().await {
            Ok(h) => h,
            Err(e) => return self.batch_failed(&e, ttl).await,
        };
        let answers = match self.send_batch(&mut h, &first).await {
            Ok(a) => a,
            Err(e) => return self.batch_failed(&e, ttl).await,
        };
        let mut answers: Vec<Option<redis::RedisResult<redis::Value>>> =
            answers.into_iter().map(Some).collect();
        let mut second = Vec::with_capacity(pending.len());
        let mut errors: Vec<redis::RedisError> = Vec::new();
        for (i, then) in pending {
            let answer = answers
                .get_mut(i)
                .and_then(Option::take)
                .unwrap_or(Ok(redis::Value::Nil));
            if let Err(e) = answer.and_then(|a| self.then_writes(then, a, now, ttl, &mut second)) {
                errors.push(e);
            }
        }
        errors.extend(answers.into_iter().flatten().filter_map(Result::err));
        match self.send_batch(&mut h, &second).await {
            Ok(a) => errors.extend(a.into_iter().filter_map(Result::err)),
            Err(e) => errors.push(e),
        }
        if let Some(e) = errors.first() {
            let more = errors.len() as u64 - 1;
            self.errors.fetch_add(more, Ordering::Relaxed);
            self.batch_failed(e, ttl).await;
        }
    }

    /// Send a batch's commands, bounded like any background write.
    async fn send_batch(
        &self,
        h: &mut conn::Handle,
        writes: &[Write],
    ) -> redis::RedisResult<Vec<redis::RedisResult<redis::Value>>> {
        let limit = self.timeout.max(Duration::from_secs(1));
        match tokio::time::timeout(limit, batch::send(h, writes)).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))),
        }
    }

    /// Some of a batch failed: counted (and Redis marked unreachable if
    /// that is why); every counting set's TTL is renewed with its next add.
    async fn batch_failed(&self, e: &redis::RedisError, ttl: &mut batch::CountTtl) {
        ttl.forget();
        self.failed(e).await;
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
                if n == 1 && self.configured(route) {
                    scripts::COUNT_ADD
                        .key(self.route_key(route))
                        .arg(now + self.ttl_ms)
                        .arg(key)
                        .arg(self.count_set_ttl_ms())
                        .invoke_async::<i64>(&mut h)
                        .await?;
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

    /// The shared unconfirmed claim: an existing record of another
    /// balancer, else `proposed` stored if this window's admissions are
    /// under the cap; `None` when nothing is stored.
    async fn shared_unconfirmed_claim(
        &self,
        id: &str,
        from: &str,
        proposed: &str,
    ) -> redis::RedisResult<Option<String>> {
        let mut h = self.conn.handle().await?;
        let key = self.unconfirmed_key(id);
        let ttl = self.unconfirmed_ttl_ms;
        let run = |may_create: &'static str| {
            let mut inv = scripts::UNCONFIRMED_CLAIM.key(&key);
            inv.arg(from).arg(proposed).arg(ttl).arg(may_create);
            inv
        };
        if let Some(r) = run("0").invoke_async::<Option<String>>(&mut h).await? {
            return Ok(Some(r));
        }
        let window = format!("{}u#{}", self.prefix, unix_ms() / ttl);
        let admitted: u64 = scripts::BUMP
            .key(window)
            .arg(ttl.saturating_mul(2))
            .invoke_async(&mut h)
            .await?;
        if admitted > self.unconfirmed_cap {
            if !self.unconfirmed_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    cap = self.unconfirmed_cap,
                    "redis: too many failovers of unconfirmed session ids (made-up ids?); further ones are not shared this window (logged once)"
                );
            }
            return Ok(None);
        }
        run("1").invoke_async(&mut h).await
    }

    /// Refresh the cluster-wide per-route counts, dropping expired members.
    async fn refresh_counts(&self) -> redis::RedisResult<()> {
        let mut h = self.conn.handle().await?;
        let now = unix_ms();
        let routes = self.routes.load_full();
        for (route, count) in routes.iter() {
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

/// Writes applied as one batch at most.
const BATCH: usize = 128;

/// How long the writer lets a batch gather after its first write: the
/// request threads then queue writes without waking the writer's thread
/// for each one (write-behind may wait that long; counts follow within it).
const LINGER: Duration = Duration::from_millis(1);

/// Apply queued writes, up to [`BATCH`] at a time as one batch (see
/// [`RedisStore::apply_batch`]), until the store is dropped.
async fn writer(store: Weak<RedisStore>, mut rx: mpsc::Receiver<Op>) {
    let mut ops = Vec::with_capacity(BATCH);
    let mut ttl = batch::CountTtl::default();
    while rx.recv_many(&mut ops, BATCH).await > 0 {
        if ops.len() < BATCH {
            tokio::time::sleep(LINGER).await;
            while ops.len() < BATCH {
                let Ok(op) = rx.try_recv() else { break };
                ops.push(op);
            }
        }
        let Some(s) = store.upgrade() else { return };
        if !s.healthy.load(Ordering::Relaxed) {
            ops.clear();
            continue;
        }
        s.apply_batch(&mut ops, &mut ttl).await;
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
        let limit = s.timeout.max(Duration::from_millis(500));
        let routes = s.routes.load_full();
        seen.retain(|r, _| routes.contains_key(r));
        let mut answered = true;
        for route in routes.keys() {
            let mut cmd = redis::cmd("GET");
            cmd.arg(s.moved_key(route));
            let q = cmd.query_async::<Option<i64>>(&mut h);
            let Ok(Ok(n)) = tokio::time::timeout(limit, q).await else {
                answered = false;
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
        if !answered {
            continue;
        }
        // Operators' state changes made through any balancer.
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(s.states_key());
        let q = cmd.query_async::<HashMap<Vec<u8>, Vec<u8>>>(&mut h);
        match tokio::time::timeout(limit, q).await {
            Ok(Ok(remote)) => s.merge_states(&remote),
            // Not a hash (someone else's key): never fatal.
            Ok(Err(e))
                if !e.is_io_error()
                    && !e.is_timeout()
                    && !s.states_malformed.swap(true, Ordering::Relaxed) =>
            {
                tracing::debug!(key = %s.states_key(), error = %e, "cannot read backend states from redis (logged once)");
            }
            _ => {}
        }
    }
}

/// Write operators' state changes to Redis as they are published (and
/// again after an outage), until the store is dropped.
async fn write_states(store: Weak<RedisStore>, kick: Arc<Notify>) {
    loop {
        // Also wake up now and then: to notice the store is gone, and to
        // retry changes a transient error left due.
        let _ = tokio::time::timeout(TICK, kick.notified()).await;
        let Some(s) = store.upgrade() else { return };
        s.write_due_states().await;
    }
}

/// A value of the states hash: `"<state>:<at_ms>"`; `None` if malformed.
fn parse_state(value: &str) -> Option<StateChange> {
    let (name, at) = value.split_once(':')?;
    if at.is_empty() || !at.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(StateChange {
        state: crate::admin_state::AdminState::from_name(name)?,
        at_ms: at.parse().ok()?,
    })
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
                s.conn.reset_locals();
                s.healthy.store(true, Ordering::Relaxed);
                let n = s.resync().await;
                tracing::info!(
                    written = n,
                    "redis store reachable again; local sessions written back"
                );
                // Operator state changes made (or lost) meanwhile.
                let routes: Vec<Arc<str>> = s.states.all().into_iter().map(|(r, _)| r).collect();
                s.states_due(routes);
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
                let mut h = self.conn.request_handle().await?;
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
        self.enqueue(self.bind_op(id, route));
    }

    fn bind_now<'a>(&'a self, id: &'a str, route: &'a Arc<str>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.cache.bind(id, route);
            if !self.healthy.load(Ordering::Relaxed) {
                return;
            }
            let (at, key) = (unix_ms(), self.key(id));
            // One round trip before the response leaves: the binding. Its
            // counting-set bookkeeping is written behind.
            let write = async {
                let mut h = self.conn.request_handle().await?;
                self.bind_step(&mut h, id, &key, route, at).await
            };
            if let Some(stored) = self.write_through(write, id, &key, route, at).await {
                self.enqueue(Op::Count {
                    key,
                    route: route.clone(),
                    stored,
                });
            }
        })
    }

    fn bind_fresh<'a>(&'a self, id: &'a str, route: &'a Arc<str>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let Some(fresh) = self.fresh_transaction(route) else {
                return self.bind_now(id, route).await;
            };
            self.cache.bind(id, route);
            let (at, key) = (unix_ms(), self.key(id));
            let write = async {
                let mut h = self.conn.request_handle().await?;
                fresh
                    .build(&key, route, at, self)
                    .query_async::<()>(&mut h)
                    .await
            };
            self.write_through(write, id, &key, route, at).await;
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
                    let mut h = self.conn.request_handle().await?;
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
            self.enqueue(self.bind_op(id, &local));
            local
        })
    }

    fn route_down(&self, route: &str) {
        self.cache.distrust_route(route);
    }

    /// Kept in the local cache's unconfirmed tier only: nothing reaches
    /// Redis for an id no backend confirmed.
    fn remember_unconfirmed(&self, id: &str, route: &Arc<str>) {
        self.cache.remember_unconfirmed(id, route);
    }

    fn lookup_unconfirmed(&self, id: &str) -> Option<Arc<str>> {
        self.cache.lookup_unconfirmed(id)
    }

    /// Agreed through a short-lived `u:` record (TTL: the unconfirmed
    /// tier's idle limit; not counted; at most `unconfirmed_cap` created
    /// per window), remembered in the local unconfirmed tier.
    fn claim_unconfirmed<'a>(
        &'a self,
        id: &'a str,
        from: &'a str,
        proposed: Arc<str>,
    ) -> StoreFuture<'a, Arc<str>> {
        Box::pin(async move {
            let mut agreed = proposed.clone();
            if self.healthy.load(Ordering::Relaxed) {
                let q = self.shared_unconfirmed_claim(id, from, &proposed);
                match tokio::time::timeout(self.timeout, q).await {
                    Ok(Ok(Some(r))) if self.configured(&r) => agreed = self.intern(&r),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => self.failed(&e).await,
                    Err(_) => {
                        self.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            self.cache.remember_unconfirmed(id, &agreed);
            agreed
        })
    }

    fn sessions(&self, route: &str) -> u64 {
        self.routes
            .load()
            .get(route)
            .map(|c| c.current.load(Ordering::Relaxed))
            .unwrap_or_else(|| self.cache.sessions(route))
    }

    fn counts(&self) -> Vec<(Arc<str>, SessionCounts)> {
        self.routes
            .load()
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
                .load()
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

    /// Remembered at once (so this balancer's [`SessionStore::states`]
    /// shows it even while Redis is down), then written by the background
    /// writer; if Redis is unreachable it is written when it answers again.
    fn publish_state(&self, route: &str, change: StateChange) {
        let route = self.intern(route);
        if self.states.merge(&route, change) {
            self.states_due([route]);
        }
    }

    /// The newest change known for each configured route.
    fn states(&self) -> Vec<(Arc<str>, StateChange)> {
        let routes = self.routes.load();
        self.states
            .all()
            .into_iter()
            .filter(|(r, _)| routes.contains_key(r))
            .collect()
    }

    /// Counts already tracked for routes that stay are kept; added routes
    /// start at zero (the next refresh reads them from Redis).
    fn set_routes(&self, routes: &[Arc<str>]) {
        let old = self.routes.load();
        let new: Routes = routes
            .iter()
            .map(|r| (r.clone(), old.get(r).cloned().unwrap_or_default()))
            .collect();
        self.routes.store(Arc::new(new));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin_state::AdminState;

    #[test]
    fn state_values_parse_strictly() {
        assert_eq!(
            parse_state("draining:1732350000123"),
            Some(StateChange {
                state: AdminState::Draining,
                at_ms: 1_732_350_000_123
            })
        );
        assert_eq!(
            parse_state("active:0").map(|c| c.state),
            Some(AdminState::Active)
        );
        for bad in [
            "",
            "draining",
            "draining:",
            ":123",
            "paused:123",
            "Draining:123",
            "draining:12a",
            "draining:-1",
            "draining:+1",
            "draining: 1",
            "draining:1:2",
            "draining:99999999999999999999999",
        ] {
            assert_eq!(parse_state(bad), None, "{bad:?}");
        }
    }
}
