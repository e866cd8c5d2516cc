//! Session-affinity store: which route each session lives on.
//!
//! The proxy only sees the [`SessionStore`] trait, so memory, Redis or
//! multicast stores plug in without touching it. [`SessionStore::lookup`]
//! is synchronous and local on purpose: a store that replicates keeps a
//! local cache, and the hot path never waits on the network. Only a cache
//! miss for an id the cluster may know ([`Cached::Unknown`]) and a failover
//! claim, which must be agreed cluster-wide, may wait, bounded by the
//! store's timeout.

pub mod counts;
pub mod key;
pub mod memory;
pub mod multicast;
pub mod redis;

use crate::admin_state::AdminState;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

pub use crate::secret::read_key_file;
pub use counts::PeakWindow;
pub use memory::{MemoryStore, SharedView};

/// Per-route session counts (sessions must never leak: operators watch these).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SessionCounts {
    pub current: u64,
    /// Highest `current` over the last five minutes.
    pub peak_5min: u64,
    /// Highest `current` since this balancer started.
    pub peak: u64,
}

/// Store-wide figures for the status API and logs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreStatus {
    pub kind: &'static str,
    /// Sessions this balancer tracks (its local view).
    pub sessions: u64,
    pub capacity: u64,
    /// Sessions refused because the store was full.
    pub rejected_full: u64,
    pub expired: u64,
    /// Whether the shared part (Redis, peers) is reachable; always true for
    /// `memory`.
    pub healthy: bool,
    /// Failed remote operations since start.
    pub errors: u64,
    /// Writes dropped because the write queue was full.
    pub dropped_writes: u64,
    /// Peers currently seen (multicast), or the Redis endpoint(s).
    pub peers: Vec<String>,
    /// Times another balancer's failover made this one re-check its cache.
    pub invalidations: u64,
    /// Entries in this balancer's unconfirmed tier (ids no backend
    /// confirmed: see [`SessionStore::remember_unconfirmed`]); a high
    /// figure means clients present many made-up ids.
    pub unconfirmed: u64,
}

/// Answer of the local, non-blocking lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// Bound to this route.
    Found(Arc<str>),
    /// Known not to be bound (or the store is purely local).
    Absent,
    /// Not in the local cache; the shared store may know it: ask
    /// [`SessionStore::fetch`].
    Unknown,
}

/// An operator's state change for one backend, as stores replicate it:
/// the newest `at_ms` (Unix milliseconds) wins everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    pub state: AdminState,
    pub at_ms: u64,
}

/// How far ahead of our clock a replicated state change may be dated.
/// Balancer clocks must be NTP-synced; a change dated later than this
/// (a clock far ahead, or a forged record) would outrank every later
/// operator action until that time, so it is refused.
pub const MAX_STATE_SKEW_MS: u64 = 30_000;

impl StateChange {
    /// Whether this change is dated too far ahead of `now_ms` to be
    /// trusted (see [`MAX_STATE_SKEW_MS`]).
    pub fn is_from_the_future(&self, now_ms: u64) -> bool {
        self.at_ms > now_ms.saturating_add(MAX_STATE_SKEW_MS)
    }

    /// Whether this change replaces `other`: the newer one wins; within
    /// the same millisecond the more restrictive state wins (stopped >
    /// disabled > draining > active), so two balancers acting at once
    /// still converge on one answer whatever order they hear them in.
    pub fn supersedes(&self, other: &StateChange) -> bool {
        (self.at_ms, self.state as u8) > (other.at_ms, other.state as u8)
    }
}

/// The newest [`StateChange`] per route, as a replicating store knows it
/// (its own and its peers'). Bounded: past `cap` routes, changes for new
/// routes are ignored (no cluster has that many backends; a peer with a
/// bug cannot grow it without end).
pub(crate) struct StateBook {
    map: Mutex<HashMap<Arc<str>, StateChange>>,
    cap: usize,
}

impl StateBook {
    pub(crate) fn new(cap: usize) -> Self {
        StateBook {
            map: Mutex::new(HashMap::new()),
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, StateChange>> {
        crate::lock::lock(&self.map)
    }

    /// Keep `change` for `route` if it supersedes what is known; returns
    /// whether it did (an equal or older change is ignored).
    pub(crate) fn merge(&self, route: &Arc<str>, change: StateChange) -> bool {
        let mut map = self.lock();
        let full = map.len() >= self.cap;
        match map.get_mut(&**route) {
            Some(cur) if change.supersedes(cur) => {
                *cur = change;
                true
            }
            Some(_) => false,
            None if !full => {
                map.insert(route.clone(), change);
                true
            }
            None => false,
        }
    }

    /// The change known for `route`.
    pub(crate) fn get(&self, route: &str) -> Option<StateChange> {
        self.lock().get(route).copied()
    }

    /// Every route's newest change.
    pub(crate) fn all(&self) -> Vec<(Arc<str>, StateChange)> {
        self.lock().iter().map(|(r, c)| (r.clone(), *c)).collect()
    }
}

/// A future returned by the store for the rare operations that may need to
/// agree with other balancers.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A write already done, as a future: zero-sized, so boxing it for
/// [`StoreFuture`] allocates nothing (a local store's every new session).
struct Bound;

impl Future for Bound {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        std::task::Poll::Ready(())
    }
}

/// Session base id -> route mapping with idle expiry.
pub trait SessionStore: Send + Sync + 'static {
    /// The route bound to a session, refreshing its last-seen time.
    /// Local only; never waits.
    fn lookup(&self, id: &str) -> Cached;

    /// Like `lookup`, told which route the client's own id names: a cache
    /// in front of a shared store treats a disagreement as a reason to
    /// confirm (the client may carry a newer route set by another balancer).
    fn lookup_hinted(&self, id: &str, hint: Option<&str>) -> Cached {
        let _ = hint;
        self.lookup(id)
    }

    /// Ask the shared store about a session the local cache does not hold
    /// (learned by another balancer); `None` if unbound or unreachable
    /// within the store's timeout. Caches what it finds.
    fn fetch<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Arc<str>>> {
        let _ = id;
        Box::pin(std::future::ready(None))
    }

    /// Bind a session to a route: a *confirmed* binding, made only when a
    /// backend has shown the session is real (its `Set-Cookie` issued or
    /// renamed it) or when a confirmed session moves (failover). Never
    /// for an id a client merely presented: those would let anyone fill
    /// the table and inflate counts. Rebinding moves the count.
    fn bind(&self, id: &str, route: &Arc<str>);

    /// Remember where an id no backend has confirmed was sent (a failover
    /// heir, or the node that kept a suffix-less id), so this balancer
    /// keeps sending it there. Local only, in a separately capped tier
    /// with a short expiry that is never counted, never replicated and
    /// can neither evict nor block confirmed sessions: ids only a client
    /// vouches for must not cost shared state. A full tier drops it.
    fn remember_unconfirmed(&self, id: &str, route: &Arc<str>) {
        let _ = (id, route);
    }

    /// Agree on the heir of an orphan no backend confirmed, whose node
    /// `from` (a configured backend) cannot serve it: `proposed` (the
    /// rendezvous heir) unless another balancer already chose one. The
    /// answer is remembered as by [`SessionStore::remember_unconfirmed`].
    /// A store without remote state (or peers) just remembers `proposed`;
    /// a shared store may keep a short-lived, uncounted claim record,
    /// bounded in number, so balancers whose heirs differ (other weights,
    /// another view of health) still agree.
    fn claim_unconfirmed<'a>(
        &'a self,
        id: &'a str,
        from: &'a str,
        proposed: Arc<str>,
    ) -> StoreFuture<'a, Arc<str>> {
        let _ = from;
        self.remember_unconfirmed(id, &proposed);
        Box::pin(std::future::ready(proposed))
    }

    /// The route remembered by [`SessionStore::remember_unconfirmed`].
    fn lookup_unconfirmed(&self, id: &str) -> Option<Arc<str>> {
        let _ = id;
        None
    }

    /// Bind a session that a response is about to hand to the client, and
    /// wait (bounded by the store's timeout) until the binding is durable
    /// where other balancers will look, so a balancer dying right after
    /// answering cannot lose it. Stores without remote state just bind.
    fn bind_now<'a>(&'a self, id: &'a str, route: &'a Arc<str>) -> StoreFuture<'a, ()> {
        self.bind(id, route);
        Box::pin(Bound)
    }

    /// [`SessionStore::bind_now`] for an id no request carried: the
    /// backend has just issued it, so no balancer can hold a binding for
    /// it yet, and a shared store may write it without reading first.
    fn bind_fresh<'a>(&'a self, id: &'a str, route: &'a Arc<str>) -> StoreFuture<'a, ()> {
        self.bind_now(id, route)
    }

    /// The backend ended or replaced the session.
    fn forget(&self, id: &str);

    /// Move an orphaned *confirmed* session from `from` (its dead route,
    /// `None` if it was unbound) to `proposed`, unless another party
    /// already moved it: the answer is the route every balancer must use
    /// from now on. Not for ids no backend confirmed (see
    /// [`SessionStore::remember_unconfirmed`]).
    fn claim<'a>(
        &'a self,
        id: &'a str,
        from: Option<&'a str>,
        proposed: Arc<str>,
    ) -> StoreFuture<'a, Arc<str>>;

    /// A backend went down: a store with a local cache stops trusting its
    /// cached bindings to `route`, because another balancer may move those
    /// sessions while this one sees no request for them.
    fn route_down(&self, route: &str) {
        let _ = route;
    }

    /// Current sessions of one route (least-sessions balancing; cheap).
    fn sessions(&self, route: &str) -> u64;

    /// Current and peak sessions of each route seen.
    fn counts(&self) -> Vec<(Arc<str>, SessionCounts)>;

    /// Store-wide figures.
    fn status(&self) -> StoreStatus;

    /// Share an operator's state change with every balancer (fire and
    /// forget; never blocks the caller; a store without peers does
    /// nothing). The admin API changes the local backend itself; this is
    /// how the other balancers learn it, so a drain or stop applies to the
    /// whole cluster and not only to the balancer the operator asked.
    fn publish_state(&self, route: &str, change: StateChange) {
        let _ = (route, change);
    }

    /// The newest state change known per route, from any balancer
    /// including this one (local, never waits). The proxy polls this every
    /// ~200 ms and applies changes newer than what it has, so every
    /// balancer converges on the operator's last action.
    fn states(&self) -> Vec<(Arc<str>, StateChange)> {
        Vec::new()
    }

    /// The configured routes changed (config reload): track counts (and
    /// move counters, states) for exactly these from now on, so added
    /// backends are counted and removed ones stop costing remote work.
    fn set_routes(&self, routes: &[Arc<str>]) {
        let _ = routes;
    }

    /// The embedded table when this store is the embedded store and
    /// nothing else holds its sessions: what a binary upgrade must hand to
    /// the next process. Shared stores answer `None` (their sessions
    /// outlive the process anyway).
    fn memory(&self) -> Option<&MemoryStore> {
        None
    }
}

/// Why a store could not be started; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis store: {0}")]
    Redis(String),
    #[error("multicast store: {0}")]
    Multicast(String),
}

/// Wall-clock Unix milliseconds: the timestamps balancers compare when
/// they replicate (state changes, session ages).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(state: AdminState, at_ms: u64) -> StateChange {
        StateChange { state, at_ms }
    }

    #[test]
    fn newest_state_change_wins() {
        let book = StateBook::new(16);
        let r: Arc<str> = "tomcat1".into();
        assert!(book.merge(&r, ch(AdminState::Draining, 100)));
        assert!(
            !book.merge(&r, ch(AdminState::Active, 99)),
            "older change ignored"
        );
        assert!(
            !book.merge(&r, ch(AdminState::Draining, 100)),
            "same change again is no change"
        );
        assert_eq!(book.get("tomcat1"), Some(ch(AdminState::Draining, 100)));
        assert!(book.merge(&r, ch(AdminState::Active, 101)));
        assert_eq!(book.get("tomcat1"), Some(ch(AdminState::Active, 101)));
        // Same millisecond: the more restrictive state wins, in any order.
        assert!(book.merge(&r, ch(AdminState::Stopped, 101)));
        assert!(!book.merge(&r, ch(AdminState::Active, 101)));
        assert_eq!(book.get("tomcat1"), Some(ch(AdminState::Stopped, 101)));
        assert_eq!(book.all(), vec![(r, ch(AdminState::Stopped, 101))]);
    }

    #[test]
    fn state_book_is_bounded() {
        let book = StateBook::new(2);
        for r in ["a", "b", "c"] {
            book.merge(&Arc::from(r), ch(AdminState::Stopped, 1));
        }
        assert_eq!(book.all().len(), 2);
        assert_eq!(book.get("c"), None);
        // Known routes still take newer changes.
        assert!(book.merge(&Arc::from("a"), ch(AdminState::Active, 2)));
    }

    #[test]
    fn admin_states_decode_only_known_values() {
        for s in AdminState::ALL {
            assert_eq!(AdminState::from_code(s as u8), Some(s));
            assert_eq!(AdminState::from_name(s.as_str()), Some(s));
        }
        assert_eq!(AdminState::from_code(4), None);
        assert_eq!(AdminState::from_code(255), None);
        assert_eq!(AdminState::from_name("Active"), None);
        assert_eq!(AdminState::from_name(""), None);
    }
}
