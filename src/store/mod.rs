//! Session-affinity store: which route each session lives on.
//!
//! The proxy only sees the [`SessionStore`] trait, so memory, Redis or
//! multicast stores plug in without touching it. Lookups are synchronous and
//! local on purpose: a store that replicates elsewhere keeps a local cache,
//! and the hot path never waits on the network. Only a failover claim, which
//! must be agreed cluster-wide, may wait.

pub mod memory;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use memory::MemoryStore;

/// Per-route session counts (sessions must never leak: operators watch these).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SessionCounts {
    pub current: u64,
    pub peak: u64,
}

/// Store-wide figures for the status API and logs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreStatus {
    pub kind: &'static str,
    pub sessions: u64,
    pub capacity: u64,
    /// Sessions refused because the store was full.
    pub rejected_full: u64,
    pub expired: u64,
}

/// A future returned by the store for the rare operations that may need to
/// agree with other balancers.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Session base id -> route mapping with idle expiry.
pub trait SessionStore: Send + Sync + 'static {
    /// The route bound to a session, refreshing its last-seen time.
    /// Local only; never waits.
    fn lookup(&self, id: &str) -> Option<Arc<str>>;

    /// Bind a session to a route (learned from a backend's `Set-Cookie`, or
    /// from a request the backend accepted). Rebinding moves the count.
    fn bind(&self, id: &str, route: &Arc<str>);

    /// The backend ended or replaced the session.
    fn forget(&self, id: &str);

    /// Move an orphaned session from `from` (its dead route, `None` if it was
    /// unbound) to `proposed`, unless another party already moved it: the
    /// answer is the route every balancer must use from now on.
    fn claim<'a>(
        &'a self,
        id: &'a str,
        from: Option<&'a str>,
        proposed: Arc<str>,
    ) -> StoreFuture<'a, Arc<str>>;

    /// Current sessions of one route (least-sessions balancing; cheap).
    fn sessions(&self, route: &str) -> u64;

    /// Current and peak sessions of each route seen.
    fn counts(&self) -> Vec<(Arc<str>, SessionCounts)>;

    /// Store-wide figures.
    fn status(&self) -> StoreStatus;
}
