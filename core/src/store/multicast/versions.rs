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

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

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

type Shard = Mutex<HashMap<u64, Meta>>;

/// Sharded version table with a size cap.
pub struct Versions {
    shards: Box<[Shard]>,
    seed: RandomState,
    epoch: Instant,
    len: AtomicUsize,
    cap: usize,
    full_logged: AtomicBool,
}

/// One session's entry, locked.
pub struct Slot<'a> {
    map: MutexGuard<'a, HashMap<u64, Meta>>,
    key: u64,
    table: &'a Versions,
}

impl Slot<'_> {
    pub fn get(&self) -> Option<&Meta> {
        self.map.get(&self.key)
    }

    pub fn get_mut(&mut self) -> Option<&mut Meta> {
        self.map.get_mut(&self.key)
    }

    /// Store `meta`; a new entry is refused (false) when the table is full.
    pub fn set(&mut self, meta: Meta) -> bool {
        if let Some(m) = self.map.get_mut(&self.key) {
            *m = meta;
            return true;
        }
        if self.table.len.load(Ordering::Relaxed) >= self.table.cap {
            if !self.table.full_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    capacity = self.table.cap,
                    "multicast store: version table full; new records are replicated without history until sessions expire"
                );
            }
            return false;
        }
        self.table.len.fetch_add(1, Ordering::Relaxed);
        self.map.insert(self.key, meta);
        true
    }
}

impl Versions {
    /// A table holding at most `cap` entries (live sessions + tombstones).
    pub fn new(cap: usize) -> Self {
        Versions {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            seed: RandomState::new(),
            epoch: Instant::now(),
            len: AtomicUsize::new(0),
            cap,
            full_logged: AtomicBool::new(false),
        }
    }

    /// Milliseconds since the table was made (for `fresh_ms`).
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
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
        let now = self.now();
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut map = crate::lock::lock(shard);
            let before = map.len();
            map.retain(|_, m| now.saturating_sub(m.fresh_ms) < max_age_ms);
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
    fn table_cap_and_sweep() {
        let t = Versions::new(2);
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
