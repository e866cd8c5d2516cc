//! Record versions and the rule that orders concurrent writes.
//!
//! The [`MemoryStore`](crate::store::MemoryStore) holds routes and idle
//! times; this side table holds, per session, the version of the last
//! write and the route it named (or a tombstone), plus when the record was
//! last put on the wire. It is keyed by a seeded 64-bit hash of the id, so
//! it does not keep a second copy of the credentials.
//!
//! Every write to a session (local or replicated) happens under this
//! table's shard lock, which makes "compare versions, then change the
//! memory store" atomic per session. Lock order: version shard, then memory
//! shard; nothing takes them the other way round.

use arc_swap::ArcSwap;
use hashbrown::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 64;

/// What this balancer knows of one session's replicated state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub version: u64,
    /// `None`: forgotten (tombstone).
    pub route: Option<Arc<str>>,
    /// When a record for it last crossed the network (sent or received),
    /// in [`Versions::now`] milliseconds; drives touch coalescing and
    /// cleanup.
    pub fresh_ms: u64,
}

/// How an incoming record relates to the local one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It wins: adopt its route (or tombstone) and version.
    Replace,
    /// Same version and route: only its age matters.
    Refresh,
    /// Older (or loses the tie): keep ours.
    Ignore,
}

/// Order an incoming `(version, route)` against the local state.
///
/// Higher version wins. On equal versions with different content the tie
/// is broken the same way on every balancer: a tombstone beats a route,
/// and between routes the greater string (byte order) wins. So balancers
/// that wrote concurrently converge on one answer.
pub fn judge(version: u64, route: Option<&str>, local: Option<(u64, Option<&str>)>) -> Verdict {
    let Some((lv, lroute)) = local else {
        return Verdict::Replace;
    };
    if version != lv {
        return if version > lv {
            Verdict::Replace
        } else {
            Verdict::Ignore
        };
    }
    match (route, lroute) {
        (a, b) if a == b => Verdict::Refresh,
        (None, Some(_)) => Verdict::Replace,
        (Some(_), None) => Verdict::Ignore,
        (Some(a), Some(b)) if a > b => Verdict::Replace,
        _ => Verdict::Ignore,
    }
}

/// Bits of a packed entry: version, route number (0 = tombstone), and
/// the refresh time in ticks, low bits first.
const FRESH_BITS: u32 = 24;
const ROUTE_BITS: u32 = 12;
const VERSION_BITS: u32 = 64 - FRESH_BITS - ROUTE_BITS;
const FRESH_MASK: u64 = (1 << FRESH_BITS) - 1;
const ROUTE_MASK: u64 = (1 << ROUTE_BITS) - 1;
/// Versions count writes to one session; 2^28 of them never happen, and
/// a version that high is kept at the ceiling (still the newest).
const VERSION_MAX: u64 = (1 << VERSION_BITS) - 1;
/// Route names the table can number (number 0 is the tombstone).
const MAX_ROUTES: usize = ROUTE_MASK as usize;

/// One session's entry in 8 bytes (a `Meta` is 32): at a million
/// sessions the table costs ~36 bytes a session instead of ~86.
type Packed = u64;

/// The keys are already seeded 64-bit hashes of the ids: hashing them
/// again is wasted work. Rotated so the bits that pick the shard (the top
/// six) do not also pick the bucket or the control byte inside it.
#[derive(Default, Clone, Copy)]
struct Prehashed;

/// The hasher of [`Prehashed`]: passes a `u64` key through, rotated.
#[derive(Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0.rotate_left(32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl BuildHasher for Prehashed {
    type Hasher = PrehashedHasher;
    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher::default()
    }
}

type Table = HashMap<u64, Packed, Prehashed>;
type Shard = Mutex<Table>;

/// Sharded version table with a size cap.
pub struct Versions {
    shards: Box<[Shard]>,
    seed: RandomState,
    epoch: Instant,
    /// Milliseconds per tick of the packed refresh time: 100 ms, or more
    /// for idle timeouts so long that 2^24 ticks would not span eight of
    /// them (the oldest age that matters is 2.25 idle timeouts).
    tick_ms: u64,
    /// Route names by number - 1; only grows (at most [`MAX_ROUTES`]).
    routes: ArcSwap<Vec<Arc<str>>>,
    routes_write: Mutex<()>,
    len: AtomicUsize,
    cap: usize,
    full_logged: AtomicBool,
}

/// One session's entry, locked.
pub struct Slot<'a> {
    map: MutexGuard<'a, Table>,
    key: u64,
    table: &'a Versions,
}

impl Slot<'_> {
    /// The entry, unpacked.
    pub fn get(&self) -> Option<Meta> {
        self.map.get(&self.key).map(|p| self.table.unpack(*p))
    }

    /// Store `meta`; a new entry is refused (false) when the table is full
    /// or its route cannot be numbered.
    pub fn set(&mut self, meta: Meta) -> bool {
        let Some(packed) = self.table.pack(&meta) else {
            self.table.log_full("route names");
            return false;
        };
        if let Some(m) = self.map.get_mut(&self.key) {
            *m = packed;
            return true;
        }
        if self.table.len.load(Ordering::Relaxed) >= self.table.cap {
            self.table.log_full("entries");
            return false;
        }
        self.table.len.fetch_add(1, Ordering::Relaxed);
        self.map.insert(self.key, packed);
        true
    }
}

impl Versions {
    /// A table holding at most `cap` entries (live sessions + tombstones)
    /// of sessions that expire after `idle` without a request.
    pub fn new(cap: usize, idle: Duration) -> Self {
        let idle_ms = idle.as_millis().min(u128::from(u64::MAX)) as u64;
        Versions {
            shards: (0..SHARDS).map(|_| Mutex::new(Table::default())).collect(),
            seed: RandomState::new(),
            epoch: Instant::now(),
            tick_ms: idle_ms.div_ceil(1 << (FRESH_BITS - 3)).max(100),
            routes: ArcSwap::from_pointee(Vec::new()),
            routes_write: Mutex::new(()),
            len: AtomicUsize::new(0),
            cap,
            full_logged: AtomicBool::new(false),
        }
    }

    fn log_full(&self, what: &str) {
        if !self.full_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                capacity = self.cap,
                what,
                "multicast store: version table full; new records are replicated without history until sessions expire"
            );
        }
    }

    /// Milliseconds since the table was made (for `fresh_ms`).
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The number of `route` (1-based), numbering it if new.
    fn route_number(&self, route: &Arc<str>) -> Option<u64> {
        let find = |names: &[Arc<str>]| names.iter().position(|n| **n == **route);
        if let Some(i) = find(&self.routes.load()) {
            return Some(i as u64 + 1);
        }
        let _guard = crate::lock::lock(&self.routes_write);
        let cur = self.routes.load_full();
        if let Some(i) = find(&cur) {
            return Some(i as u64 + 1);
        }
        if cur.len() >= MAX_ROUTES {
            return None;
        }
        let mut next = (*cur).clone();
        next.push(route.clone());
        self.routes.store(Arc::new(next));
        Some(cur.len() as u64 + 1)
    }

    fn pack(&self, m: &Meta) -> Option<Packed> {
        let route = match &m.route {
            Some(r) => self.route_number(r)?,
            None => 0,
        };
        let fresh = (m.fresh_ms / self.tick_ms) & FRESH_MASK;
        Some(
            (m.version.min(VERSION_MAX) << (FRESH_BITS + ROUTE_BITS))
                | (route << FRESH_BITS)
                | fresh,
        )
    }

    fn unpack(&self, p: Packed) -> Meta {
        self.unpack_at(p, self.now() / self.tick_ms)
    }

    /// `p` unpacked when the clock reads `now` ticks: the refresh time is
    /// the latest one at or before `now` with the stored low bits.
    fn unpack_at(&self, p: Packed, now: u64) -> Meta {
        let route = (p >> FRESH_BITS) & ROUTE_MASK;
        let age = now.wrapping_sub(p & FRESH_MASK) & FRESH_MASK;
        Meta {
            version: p >> (FRESH_BITS + ROUTE_BITS),
            route: match route {
                0 => None,
                n => self.routes.load().get(n as usize - 1).cloned(),
            },
            fresh_ms: now.saturating_sub(age) * self.tick_ms,
        }
    }

    /// Lock the entry of `id` (present or not).
    pub fn slot(&self, id: &str) -> Slot<'_> {
        let key = self.seed.hash_one(id);
        let shard = &self.shards[(key >> 58) as usize % SHARDS];
        Slot {
            map: crate::lock::lock(shard),
            key,
            table: self,
        }
    }

    /// Forget entries no record has refreshed for `max_age_ms`: their
    /// sessions have expired everywhere (an active session is refreshed at
    /// least every quarter idle timeout).
    pub fn sweep(&self, max_age_ms: u64) -> usize {
        let now = self.now() / self.tick_ms;
        let max_age = max_age_ms / self.tick_ms;
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = crate::lock::lock(shard);
            let before = map.len();
            map.retain(|_, p| (now.wrapping_sub(*p & FRESH_MASK) & FRESH_MASK) < max_age);
            removed += before - map.len();
        }
        if removed > 0 {
            self.len.fetch_sub(removed, Ordering::Relaxed);
            self.full_logged.store(false, Ordering::Relaxed);
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_version_wins() {
        assert_eq!(judge(2, Some("a"), Some((1, Some("b")))), Verdict::Replace);
        assert_eq!(judge(1, Some("z"), Some((2, Some("a")))), Verdict::Ignore);
        assert_eq!(judge(3, None, Some((2, Some("a")))), Verdict::Replace);
        assert_eq!(judge(3, Some("a"), Some((2, None))), Verdict::Replace);
        assert_eq!(judge(1, Some("a"), None), Verdict::Replace);
        assert_eq!(judge(1, None, None), Verdict::Replace);
    }

    #[test]
    fn equal_versions() {
        assert_eq!(judge(2, Some("a"), Some((2, Some("a")))), Verdict::Refresh);
        assert_eq!(judge(2, None, Some((2, None))), Verdict::Refresh);
        // Deterministic tie-break: both sides end on the same answer.
        assert_eq!(judge(2, Some("b"), Some((2, Some("a")))), Verdict::Replace);
        assert_eq!(judge(2, Some("a"), Some((2, Some("b")))), Verdict::Ignore);
        assert_eq!(judge(2, None, Some((2, Some("a")))), Verdict::Replace);
        assert_eq!(judge(2, Some("a"), Some((2, None))), Verdict::Ignore);
    }

    #[test]
    fn ties_converge_whatever_the_arrival_order() {
        let writes = [
            (5u64, Some("n1")),
            (5, Some("n2")),
            (5, None),
            (4, Some("n9")),
        ];
        let mut finals = Vec::new();
        for perm in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]] {
            let mut local: Option<(u64, Option<&str>)> = None;
            for i in perm {
                let (v, r) = writes[i];
                if judge(v, r, local) == Verdict::Replace {
                    local = Some((v, r));
                }
            }
            finals.push(local);
        }
        assert!(finals.iter().all(|f| *f == Some((5, None))), "{finals:?}");
    }

    #[test]
    fn entries_pack_into_eight_bytes_and_unpack_unchanged() {
        let t = Versions::new(8, Duration::from_secs(1800));
        let meta = |version, route: Option<&str>, fresh_ms| Meta {
            version,
            route: route.map(Arc::from),
            fresh_ms,
        };
        for m in [
            meta(1, Some("tomcat1"), 0),
            meta(7, Some("tomcat2"), 1_234_500),
            meta(9, None, 99_900),
            meta(VERSION_MAX, Some("tomcat1"), 400),
        ] {
            let p = t.pack(&m).expect("route numbered");
            assert_eq!(t.unpack_at(p, m.fresh_ms / t.tick_ms + 5), m);
        }
        let m = t.unpack_at(t.pack(&meta(u64::MAX, None, 0)).unwrap(), 0);
        assert_eq!(
            m.version, VERSION_MAX,
            "a version past the ceiling stays the newest"
        );
        let m = t.unpack_at(t.pack(&meta(1, None, 1_234_567)).unwrap(), 12_345 + 3);
        assert_eq!(m.fresh_ms, 1_234_500, "kept to the tick");
    }

    #[test]
    fn refresh_times_survive_the_tick_counter_wrapping() {
        let t = Versions::new(8, Duration::from_secs(60));
        let wrap = 1u64 << FRESH_BITS;
        let fresh = (3 * wrap - 40) * t.tick_ms;
        let p = t.pack(&Meta {
            version: 2,
            route: Some("a".into()),
            fresh_ms: fresh,
        });
        let now = 3 * wrap + 10;
        assert_eq!(t.unpack_at(p.unwrap(), now).fresh_ms, fresh);
    }

    #[test]
    fn long_idle_timeouts_get_coarser_ticks_that_span_them() {
        let month = Duration::from_secs(30 * 86_400);
        let t = Versions::new(8, month);
        let span = (1u64 << FRESH_BITS) * t.tick_ms;
        assert!(span >= 8 * month.as_millis() as u64, "{span}");
        assert_eq!(Versions::new(8, Duration::from_secs(1800)).tick_ms, 100);
    }

    #[test]
    fn routes_beyond_the_numbering_are_refused_not_mixed_up() {
        let t = Versions::new(usize::MAX, Duration::from_secs(60));
        for n in 0..MAX_ROUTES {
            let route: Arc<str> = format!("r{n}").into();
            assert_eq!(t.route_number(&route), Some(n as u64 + 1));
        }
        let extra = Meta {
            version: 1,
            route: Some("one-too-many".into()),
            fresh_ms: 0,
        };
        assert!(!t.slot("x").set(extra));
        assert_eq!(t.slot("x").get(), None);
        let again: Arc<str> = "r17".into();
        assert_eq!(t.route_number(&again), Some(18));
    }

    #[test]
    fn table_cap_and_sweep() {
        let t = Versions::new(2, Duration::from_secs(60));
        let m = |v| Meta {
            version: v,
            route: Some("a".into()),
            fresh_ms: t.now(),
        };
        assert!(t.slot("a").set(m(1)));
        assert!(t.slot("b").set(m(1)));
        assert!(!t.slot("c").set(m(1)));
        assert!(t.slot("a").set(m(2)), "updates are always allowed");
        assert_eq!(t.slot("a").get().map(|m| m.version), Some(2));
        assert_eq!(t.len(), 2);
        assert_eq!(t.sweep(u64::MAX), 0);
        assert_eq!(t.sweep(0), 2);
        assert_eq!(t.len(), 0);
        assert!(t.slot("c").set(m(1)));
    }
}
