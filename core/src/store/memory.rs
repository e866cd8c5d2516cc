//! The embedded store: a sharded hash map with idle expiry and a size cap.
//!
//! Sharded so concurrent requests rarely meet on a lock, keyed by base
//! session id with a per-process random hash seed (ids are attacker-chosen),
//! and swept by a background task so idle sessions never leak.

use super::key::{KeyRef, SessionKey};
use super::{Cached, PeakWindow, SessionCounts, SessionStore, StoreFuture, StoreStatus};
use crate::clock::Coarse;
use crate::lock::lock;
use arc_swap::ArcSwap;
use hashbrown::Equivalent;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SHARDS: usize = 64;

/// A route and its session counters; entries point at it, so counting is
/// an atomic add with no map lookup.
struct RouteSlot {
    name: Arc<str>,
    current: AtomicU64,
    peak: AtomicU64,
    window: PeakWindow,
}

impl RouteSlot {
    fn inc(&self) {
        let n = self.current.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(n, Ordering::Relaxed);
        self.window.record(n);
    }
    fn dec(&self) {
        self.current.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Entry {
    route: Arc<RouteSlot>,
    /// Milliseconds since the store's epoch.
    last_seen: u64,
    /// When a replicating store last told the others about this session,
    /// in [`TICK_MS`] units since the epoch, so refreshes go out now and
    /// then, not per hit.
    synced: u32,
    /// When the binding was last set or confirmed ([`TICK_MS`] units;
    /// [`UNCONFIRMED`] = must be re-checked): a cache in front of a shared store re-checks entries older
    /// than its trust window, so a rebind by another balancer is seen.
    checked: u32,
}

/// Unit of the bookkeeping stamps: coarse on purpose, so an entry stays
/// 24 bytes (u32 of 100 ms wraps after 13 years of uptime).
const TICK_MS: u64 = 100;

/// `checked` value of a binding that must be confirmed before it is used.
const UNCONFIRMED: u32 = u32::MAX;

fn ticks(ms: u64) -> u32 {
    (ms / TICK_MS) as u32
}

/// A cached binding as a replicating store sees it.
#[derive(Debug, Clone)]
pub struct SharedView {
    pub route: Arc<str>,
    /// Time to tell the shared store the session is still in use.
    pub touch_due: bool,
    /// Older than the trust window: confirm with the shared store.
    pub stale: bool,
}

/// Session ids are [`SessionKey`]s: Tomcat-style hex ids packed inline.
/// A table of its own hashes: an id is hashed once per lookup, and the
/// same hash picks the shard (bits 32..38, which the table's bucket index
/// and control bytes do not use) and the slot in it.
type Table = hashbrown::HashTable<(SessionKey, Entry)>;
type Shard = Mutex<Table>;

/// An id ready to look up: its key form and its keyed hash.
#[derive(Clone, Copy)]
struct Probe<'a> {
    key: KeyRef<'a>,
    hash: u64,
}

impl Probe<'_> {
    fn matches(&self) -> impl Fn(&(SessionKey, Entry)) -> bool + '_ {
        move |(k, _)| self.key.equivalent(k)
    }
}

/// In-process session store (the default `kind = "memory"`).
pub struct MemoryStore {
    shards: Box<[Shard]>,
    seed: RandomState,
    /// One slot per route (see [`Routes`]).
    routes: ArcSwap<Routes>,
    routes_write: Mutex<()>,
    epoch: Coarse,
    idle_ms: u64,
    /// Least time between two recorded touches of a session (see
    /// `get_idle`): a second, or a sixteenth of the idle timeout.
    touch_ms: u64,
    capacity: u64,
    len: AtomicU64,
    rejected: AtomicU64,
    expired: AtomicU64,
    full_logged: AtomicBool,
    /// The unconfirmed tier (see [`SessionStore::remember_unconfirmed`]):
    /// a second, smaller map with a shorter expiry whose entries are never
    /// counted, so ids only a client vouches for can neither fill this
    /// table nor show up in per-route counts. `None` in the tier itself.
    unconfirmed: Option<Box<MemoryStore>>,
}

/// Longest life of an unconfirmed binding: long enough to keep a
/// failed-over session on its heir until the client has the corrected
/// cookie, short enough that a flood of made-up ids drains away quickly.
pub const UNCONFIRMED_MAX_IDLE: Duration = Duration::from_secs(600);

/// Size of the unconfirmed tier for a store of `capacity` sessions: a
/// tenth of it, at least 64 and at most 65 536 entries.
pub fn unconfirmed_capacity(capacity: usize) -> usize {
    (capacity / 10).clamp(64, 65_536)
}

/// The route slots, in the order first seen. Usually a handful (the
/// configured routes), found by comparing names, which is cheaper than
/// hashing them (every new session looks its route up); past
/// [`ROUTES_SCANNED`] (peers may name many) through a hash index.
#[derive(Clone, Default)]
struct Routes {
    list: Vec<Arc<RouteSlot>>,
    index: HashMap<Arc<str>, usize>,
}

/// How many routes are found by a scan before the index is used.
const ROUTES_SCANNED: usize = 16;

impl Routes {
    fn find(&self, route: &str) -> Option<&Arc<RouteSlot>> {
        if self.list.len() <= ROUTES_SCANNED {
            self.list.iter().find(|s| &*s.name == route)
        } else {
            self.index.get(route).map(|&i| &self.list[i])
        }
    }

    fn add(&mut self, slot: Arc<RouteSlot>) {
        self.index.insert(slot.name.clone(), self.list.len());
        self.list.push(slot);
    }
}

impl MemoryStore {
    /// A store whose sessions expire after `idle` without a request, holding
    /// at most `capacity` sessions (plus a separate unconfirmed tier of
    /// [`unconfirmed_capacity`] entries).
    pub fn new(idle: Duration, capacity: usize) -> Arc<Self> {
        let tier = Self::plain(
            idle.min(UNCONFIRMED_MAX_IDLE),
            unconfirmed_capacity(capacity),
            None,
        );
        Arc::new(Self::plain(idle, capacity, Some(Box::new(tier))))
    }

    fn plain(idle: Duration, capacity: usize, unconfirmed: Option<Box<MemoryStore>>) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Table::new())).collect(),
            seed: RandomState::new(),
            routes: ArcSwap::from_pointee(Routes::default()),
            routes_write: Mutex::new(()),
            // One idle timeout in the past, so a replicated record's age
            // (`bind_aged`) is never clamped by this store's short uptime.
            epoch: Coarse::now().checked_sub(idle).unwrap_or_else(Coarse::now),
            idle_ms: (idle.as_millis() as u64).max(1),
            touch_ms: (idle.as_millis() as u64 / 16).min(1000),
            capacity: capacity as u64,
            len: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            full_logged: AtomicBool::new(false),
            unconfirmed,
        }
    }

    /// Run the expiry sweep in the background until the store is dropped.
    pub fn start_sweeper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = Duration::from_millis((self.idle_ms / 4).clamp(250, 10_000));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { break };
                store.sweep();
            }
        });
    }

    /// Remove every session idle for longer than the idle timeout.
    pub fn sweep(&self) -> u64 {
        if let Some(tier) = &self.unconfirmed {
            tier.sweep();
        }
        let now = self.now();
        let mut removed = 0u64;
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            map.retain(|(_, e)| {
                let keep = !self.is_expired(e, now);
                if !keep {
                    e.route.dec();
                    removed += 1;
                }
                keep
            });
        }
        if removed > 0 {
            self.len.fetch_sub(removed, Ordering::Relaxed);
            self.expired.fetch_add(removed, Ordering::Relaxed);
            tracing::debug!(removed, "expired idle sessions");
        }
        removed
    }

    fn now(&self) -> u64 {
        Coarse::now().since(self.epoch).as_millis() as u64
    }

    fn is_expired(&self, e: &Entry, now: u64) -> bool {
        now.saturating_sub(e.last_seen) >= self.idle_ms
    }

    fn probe<'a>(&self, id: &'a str) -> Probe<'a> {
        let key = KeyRef::new(id);
        Probe {
            key,
            hash: self.seed.hash_one(key),
        }
    }

    fn shard(&self, probe: &Probe<'_>) -> &Shard {
        &self.shards[(probe.hash >> 32) as usize % SHARDS]
    }

    fn slot(&self, route: &Arc<str>) -> Arc<RouteSlot> {
        if let Some(s) = self.routes.load().find(route) {
            return s.clone();
        }
        let _guard = lock(&self.routes_write);
        let cur = self.routes.load_full();
        if let Some(s) = cur.find(route) {
            return s.clone();
        }
        let slot = Arc::new(RouteSlot {
            name: route.clone(),
            current: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            window: PeakWindow::default(),
        });
        let mut next = (*cur).clone();
        next.add(slot.clone());
        self.routes.store(Arc::new(next));
        slot
    }

    /// Insert or rebind under the shard lock; false when the store is full.
    fn put(&self, map: &mut Table, probe: Probe<'_>, slot: Arc<RouteSlot>) -> bool {
        let now = self.now();
        if let Some((_, e)) = map.find_mut(probe.hash, probe.matches()) {
            if !Arc::ptr_eq(&e.route, &slot) {
                e.route.dec();
                slot.inc();
                e.route = slot;
            }
            e.last_seen = now;
            e.checked = ticks(now);
            return true;
        }
        if self.len.load(Ordering::Relaxed) >= self.capacity {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            if self.unconfirmed.is_some() && !self.full_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    capacity = self.capacity,
                    "session store is full: new sessions are not tracked (suffix routing still works); raise session.max_sessions or lower session.idle_timeout"
                );
            }
            return false;
        }
        slot.inc();
        self.len.fetch_add(1, Ordering::Release);
        let entry = Entry {
            route: slot,
            last_seen: now,
            synced: ticks(now),
            checked: ticks(now),
        };
        map.insert_unique(probe.hash, (probe.key.to_key(), entry), |(k, _)| {
            self.seed.hash_one(k)
        });
        true
    }
}

impl MemoryStore {
    /// The bound route, refreshing last-seen.
    pub fn get(&self, id: &str) -> Option<Arc<str>> {
        self.get_idle(id).map(|(r, _)| r)
    }

    /// The bound route and how long (ms) the session had been idle before
    /// this call. Touches closer together than `touch_ms` are coalesced
    /// (a session hit on every request writes its entry once a second at
    /// most), so the idle time is since the last recorded touch.
    pub fn get_idle(&self, id: &str) -> Option<(Arc<str>, u64)> {
        self.with_live(id, |e, now| {
            let idle = now.saturating_sub(e.last_seen);
            if idle >= self.touch_ms {
                e.last_seen = now;
            }
            (e.route.name.clone(), idle)
        })
    }

    /// The bound route (refreshing last-seen), whether the session is due
    /// for a refresh to the shared store (at most once per `touch_every_ms`
    /// however often it is requested), and whether the binding is older
    /// than `trust_ms` and should be confirmed with the shared store.
    pub fn get_shared(&self, id: &str, touch_every_ms: u64, trust_ms: u64) -> Option<SharedView> {
        self.with_live(id, |e, now| {
            e.last_seen = now;
            let t = ticks(now);
            let touch_due = t.wrapping_sub(e.synced) >= ticks(touch_every_ms);
            if touch_due {
                e.synced = t;
            }
            SharedView {
                route: e.route.name.clone(),
                touch_due,
                stale: e.checked == UNCONFIRMED || t.wrapping_sub(e.checked) >= ticks(trust_ms),
            }
        })
    }

    /// Run `f` on a live entry; an expired one is removed and counted.
    fn with_live<R>(&self, id: &str, f: impl FnOnce(&mut Entry, u64) -> R) -> Option<R> {
        // An empty table (the unconfirmed tier, nearly always) answers
        // without hashing or locking. `put` counts an entry before it
        // inserts it, so a zero here means none was there.
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let probe = self.probe(id);
        let mut map = lock(self.shard(&probe));
        let mut found = map.find_entry(probe.hash, probe.matches()).ok()?;
        // The clock only for an entry found: most lookups of ids nobody
        // bound (suffix routing) end above.
        let now = self.now();
        let e = &mut found.get_mut().1;
        if self.is_expired(e, now) {
            e.route.dec();
            found.remove();
            self.len.fetch_sub(1, Ordering::Relaxed);
            self.expired.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(f(e, now))
    }

    /// Visit every live session with its route and idle time (ms): full
    /// state for resynchronising a shared store or a joining peer.
    pub fn for_each(&self, mut f: impl FnMut(&str, &Arc<str>, u64)) {
        let now = self.now();
        for shard in self.shards.iter() {
            let map = lock(shard);
            for (key, e) in map.iter() {
                if !self.is_expired(e, now) {
                    key.with_str(|id| f(id, &e.route.name, now.saturating_sub(e.last_seen)));
                }
            }
        }
    }

    /// Bind with a given idle age (replicated records keep their age, so a
    /// copy never outlives the original).
    pub fn bind_aged(&self, id: &str, route: &Arc<str>, idle_ms: u64) {
        let slot = self.slot(route);
        let probe = self.probe(id);
        let mut map = lock(self.shard(&probe));
        self.put(&mut map, probe, slot);
        if let Some((_, e)) = map.find_mut(probe.hash, probe.matches()) {
            e.last_seen = self.now().saturating_sub(idle_ms);
        }
    }

    /// Mark every binding to `route` as unconfirmed (see `get_shared`).
    pub fn distrust_route(&self, route: &str) {
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            for (_, e) in map.iter_mut() {
                if *e.route.name == *route {
                    e.checked = UNCONFIRMED;
                }
            }
        }
    }

    /// The idle timeout in force.
    pub fn idle_ms(&self) -> u64 {
        self.idle_ms
    }

    /// The unconfirmed tier (see [`SessionStore::remember_unconfirmed`]),
    /// for a binary upgrade to hand over; `None` in the tier itself.
    pub fn unconfirmed_tier(&self) -> Option<&MemoryStore> {
        self.unconfirmed.as_deref()
    }
}

impl SessionStore for MemoryStore {
    fn lookup(&self, id: &str) -> Cached {
        match self.get(id) {
            Some(r) => Cached::Found(r),
            None => Cached::Absent,
        }
    }

    fn bind(&self, id: &str, route: &Arc<str>) {
        let slot = self.slot(route);
        let probe = self.probe(id);
        self.put(&mut lock(self.shard(&probe)), probe, slot);
    }

    fn forget(&self, id: &str) {
        if let Some(tier) = &self.unconfirmed {
            tier.forget(id);
        }
        let probe = self.probe(id);
        let mut map = lock(self.shard(&probe));
        if let Ok(found) = map.find_entry(probe.hash, probe.matches()) {
            let ((_, e), _) = found.remove();
            e.route.dec();
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn claim<'a>(
        &'a self,
        id: &'a str,
        from: Option<&'a str>,
        proposed: Arc<str>,
    ) -> StoreFuture<'a, Arc<str>> {
        let slot = self.slot(&proposed);
        let probe = self.probe(id);
        let mut map = lock(self.shard(&probe));
        let now = self.now();
        let answer = match map.find(probe.hash, probe.matches()) {
            Some((_, e))
                if Some(&*e.route.name) != from
                    && !self.is_expired(e, now)
                    && *e.route.name != *proposed =>
            {
                e.route.name.clone()
            }
            _ => {
                self.put(&mut map, probe, slot);
                proposed
            }
        };
        drop(map);
        Box::pin(std::future::ready(answer))
    }

    fn lookup_unconfirmed(&self, id: &str) -> Option<Arc<str>> {
        self.unconfirmed.as_ref()?.get(id)
    }

    fn memory(&self) -> Option<&MemoryStore> {
        Some(self)
    }

    fn remember_unconfirmed(&self, id: &str, route: &Arc<str>) {
        if let Some(tier) = &self.unconfirmed {
            tier.bind(id, route);
        }
    }

    fn sessions(&self, route: &str) -> u64 {
        self.routes
            .load()
            .find(route)
            .map(|s| s.current.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    fn counts(&self) -> Vec<(Arc<str>, SessionCounts)> {
        self.routes
            .load()
            .list
            .iter()
            .map(|s| {
                (s.name.clone(), {
                    let current = s.current.load(Ordering::Relaxed);
                    SessionCounts {
                        current,
                        peak_5min: s.window.peak(current),
                        peak: s.peak.load(Ordering::Relaxed),
                    }
                })
            })
            .collect()
    }

    fn status(&self) -> StoreStatus {
        StoreStatus {
            kind: "memory",
            sessions: self.len.load(Ordering::Relaxed),
            capacity: self.capacity,
            rejected_full: self.rejected.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            healthy: true,
            unconfirmed: self
                .unconfirmed
                .as_ref()
                .map_or(0, |t| t.len.load(Ordering::Relaxed)),
            ..StoreStatus::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_and_text_ids_are_kept_apart_and_listed_as_given() {
        let s = MemoryStore::new(Duration::from_secs(60), 100);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let ids = [
            "6B941D9A646C9BD5B01F3A1C2D3E4F50",
            "6b941d9a646c9bd5b01f3a1c2d3e4f50",
            "6B941D9A646C9BD5B01F3A1C2D3E4F5",
            "node0x1",
        ];
        for (n, id) in ids.iter().enumerate() {
            s.bind(id, if n % 2 == 0 { &a } else { &b });
        }
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(
                s.get(id).as_deref(),
                Some(if n % 2 == 0 { "a" } else { "b" })
            );
        }
        assert_eq!(s.get("6B941D9A646C9BD5B01F3A1C2D3E4f50"), None);
        let mut listed = Vec::new();
        s.for_each(|id, _, _| listed.push(id.to_string()));
        listed.sort();
        let mut want: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        want.sort();
        assert_eq!(listed, want);
        s.forget(ids[1]);
        assert_eq!(s.get(ids[1]), None);
        assert_eq!(s.get(ids[0]).as_deref(), Some("a"));
        assert_eq!(s.status().sessions, 3);
    }

    fn count(s: &MemoryStore, r: &str) -> u64 {
        s.counts()
            .into_iter()
            .find(|(n, _)| &**n == r)
            .map(|(_, c)| c.current)
            .unwrap_or(0)
    }

    #[test]
    fn touches_closer_than_touch_ms_are_coalesced() {
        let r: Arc<str> = "t1".into();
        // idle 16 s: touches are recorded once a second at most.
        let s = MemoryStore::new(Duration::from_secs(16), 10);
        s.bind("a", &r);
        // 40 ms: ages come from the coarse clock (one kernel tick, up to
        // 10 ms, of resolution).
        std::thread::sleep(Duration::from_millis(40));
        let (_, first) = s.get_idle("a").unwrap();
        let (_, second) = s.get_idle("a").unwrap();
        assert!(first >= 30 && second >= 30, "{first} {second}: not touched");
        // idle 160 ms: a touch 40 ms later is recorded (10 ms window).
        let s = MemoryStore::new(Duration::from_millis(160), 10);
        s.bind("a", &r);
        std::thread::sleep(Duration::from_millis(40));
        let (_, first) = s.get_idle("a").unwrap();
        let (_, second) = s.get_idle("a").unwrap();
        assert!(first >= 30 && second < 30, "{first} {second}: touch lost");
    }

    #[test]
    fn many_routes_each_keep_their_own_count() {
        // Past the scanned few, routes are found through the index.
        let s = MemoryStore::new(Duration::from_secs(60), 1000);
        let routes: Vec<Arc<str>> = (0..40).map(|i| format!("node{i}").into()).collect();
        for (i, r) in routes.iter().enumerate() {
            for n in 0..=i {
                s.bind(&format!("S{i}-{n}"), &Arc::from(&**r));
            }
        }
        for (i, r) in routes.iter().enumerate() {
            assert_eq!(s.sessions(r), i as u64 + 1, "{r}");
            assert_eq!(count(&s, r), i as u64 + 1, "{r}");
        }
        assert_eq!(s.counts().len(), routes.len());
        s.bind("S39-0", &routes[0]);
        assert_eq!((s.sessions("node0"), s.sessions("node39")), (2, 39));
        assert_eq!(s.sessions("node40"), 0);
    }

    #[test]
    fn bind_lookup_rebind_forget() {
        let s = MemoryStore::new(Duration::from_secs(60), 10);
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        s.bind("X", &a);
        assert_eq!(s.get("X").as_deref(), Some("a"));
        s.bind("X", &b);
        assert_eq!((count(&s, "a"), count(&s, "b")), (0, 1));
        s.forget("X");
        assert_eq!(s.get("X"), None);
        assert_eq!(count(&s, "b"), 0);
        assert_eq!(s.status().sessions, 0);
    }

    #[test]
    fn cap_is_enforced_and_counted() {
        let s = MemoryStore::new(Duration::from_secs(60), 2);
        let a: Arc<str> = "a".into();
        for id in ["1", "2", "3"] {
            s.bind(id, &a);
        }
        assert_eq!(s.status().sessions, 2);
        assert_eq!(s.status().rejected_full, 1);
        assert_eq!(s.get("3"), None);
    }

    #[test]
    fn unconfirmed_tier_is_separate_capped_and_uncounted() {
        let s = MemoryStore::new(Duration::from_secs(60), 100);
        let a: Arc<str> = "a".into();
        let tier = unconfirmed_capacity(100);
        for i in 0..tier * 3 {
            s.remember_unconfirmed(&format!("F{i}"), &a);
        }
        assert_eq!(s.lookup_unconfirmed("F0").as_deref(), Some("a"));
        assert_eq!(s.lookup_unconfirmed(&format!("F{}", tier * 2)), None);
        assert_eq!(count(&s, "a"), 0, "unconfirmed ids are never counted");
        assert_eq!(s.status().sessions, 0);
        assert_eq!(s.status().unconfirmed, tier as u64);
        assert_eq!(s.lookup("F0"), Cached::Absent, "not a confirmed binding");
        for i in 0..100 {
            s.bind(&format!("R{i}"), &a);
        }
        assert_eq!(s.status().sessions, 100, "confirmed table untouched");
        assert_eq!(s.status().rejected_full, 0);
        s.forget("F0");
        assert_eq!(s.lookup_unconfirmed("F0"), None);
    }

    #[test]
    fn unconfirmed_entries_expire_sooner() {
        let s = MemoryStore::new(Duration::from_secs(3600), 10);
        let tier = s.unconfirmed.as_ref().unwrap();
        assert_eq!(tier.idle_ms(), UNCONFIRMED_MAX_IDLE.as_millis() as u64);
        assert_eq!(tier.capacity, 64);
    }

    #[test]
    fn claim_agrees_once() {
        let s = MemoryStore::new(Duration::from_secs(60), 10);
        let dead: Arc<str> = "dead".into();
        s.bind("X", &dead);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let first = rt.block_on(s.claim("X", Some("dead"), "n1".into()));
        let second = rt.block_on(s.claim("X", Some("dead"), "n2".into()));
        assert_eq!((&*first, &*second), ("n1", "n1"));
        assert_eq!(count(&s, "dead"), 0);
        assert_eq!(count(&s, "n1"), 1);
    }

    #[test]
    fn distrusted_routes_are_stale_until_confirmed() {
        let s = MemoryStore::new(Duration::from_secs(60), 10);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        s.bind("X", &a);
        s.bind("Y", &b);
        let view = |id| s.get_shared(id, 60_000, 60_000).unwrap();
        assert!(!view("X").stale);
        assert!(!view("X").touch_due, "just bound: nothing to refresh yet");
        s.distrust_route("a");
        assert!(view("X").stale);
        assert!(!view("Y").stale, "other routes stay trusted");
        s.bind("X", &a);
        assert!(!view("X").stale, "a confirmed binding is trusted again");
        assert!(s.get_shared("X", 0, 60_000).unwrap().touch_due);
    }

    #[test]
    fn peak_survives_decrease() {
        let s = MemoryStore::new(Duration::from_secs(60), 10);
        let a: Arc<str> = "a".into();
        s.bind("1", &a);
        s.bind("2", &a);
        s.forget("1");
        let c = s.counts();
        assert_eq!((c[0].1.current, c[0].1.peak), (1, 2));
    }

    #[test]
    fn status_reports_kind_capacity_health_and_expiries() {
        let s = MemoryStore::new(Duration::from_millis(20), 10);
        s.bind("X", &Arc::from("a"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.sweep(), 1);
        let st = s.status();
        assert_eq!(st.kind, "memory");
        assert_eq!(st.capacity, 10);
        assert!(st.healthy, "a memory store is always healthy");
        assert_eq!((st.sessions, st.expired), (0, 1));
    }
}
