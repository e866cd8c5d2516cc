//! Backend states between operators, balancers and the store: an
//! operator's decision applied and shared, decisions of other balancers
//! followed, and the store told when a backend goes down. Pollers run on
//! the control plane, never on the request path.

use crate::backend::{AdminState, Backend};
use crate::proxy::{Proxy, Runtime};
use crate::store::{SessionStore, StateChange};
use std::sync::Arc;

/// An operator's decision (API action or a changed `state` line): newer
/// than anything this balancer has seen for the backend, applied at once
/// and shared through the store with every other balancer; `stopped` also
/// tells the store the route's sessions are leaving, like a node going down.
pub(super) fn impose_state(store: &dyn SessionStore, b: &Backend, state: AdminState, by: &str) {
    let at_ms = crate::store::unix_ms().max(b.state_at_ms() + 1);
    b.set_state(state, at_ms);
    store.publish_state(b.route(), StateChange { state, at_ms });
    if state == AdminState::Stopped {
        store.route_down(b.route());
    }
    tracing::info!(backend = b.route(), state = %state, by, "state changed");
}

/// Tell the store when a backend goes down (see `SessionStore::route_down`),
/// checking every 100 ms; stops with the runtime.
pub(super) fn watch_health(rt: std::sync::Weak<Runtime>) {
    tokio::spawn(async move {
        let mut seen: Vec<u64> = Vec::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tick.tick().await;
            let Some(rt) = rt.upgrade() else { return };
            seen.resize(rt.table.backends.len(), 0);
            for (b, last) in rt.table.backends.iter().zip(seen.iter_mut()) {
                let epoch = b.health_epoch();
                if epoch != *last {
                    *last = epoch;
                    if !b.is_up() {
                        rt.store.route_down(b.route());
                    }
                }
            }
        }
    });
}

impl Proxy {
    /// Wait until every backend has had its first active check (or
    /// `limit` passed, or checks are off), so "ready" means the routing
    /// table reflects the nodes' real state.
    pub async fn first_checks(&self, limit: std::time::Duration) {
        let end = tokio::time::Instant::now() + limit;
        loop {
            let rt = self.runtime();
            let done = !rt.config.health.enabled
                || rt.table.backends.iter().all(|b| b.health.checked_once());
            if done || tokio::time::Instant::now() >= end {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// One line for `systemctl status`: backends up and sessions known.
    pub fn summary(&self) -> String {
        let rt = self.runtime();
        let up = rt.table.backends.iter().filter(|b| b.is_up()).count();
        let sessions: u64 = rt.store.counts().iter().map(|(_, c)| c.current).sum();
        format!(
            "{up}/{} backends up, {sessions} sessions",
            rt.table.backends.len()
        )
    }

    /// An operator's state change through the admin API (see
    /// `impose_state`). `None` when no backend has that route.
    pub fn set_state(&self, route: &str, state: AdminState) -> Option<Arc<Backend>> {
        let rt = self.runtime();
        let b = rt.table.backends[rt.table.index_of(route)?].clone();
        impose_state(&*rt.store, &b, state, "the admin API");
        Some(b)
    }

    /// Apply state changes other balancers shared through the store,
    /// checking every 200 ms; the newest change wins (see
    /// `Backend::set_state`). Runs until the proxy is dropped.
    pub fn follow_states(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(proxy) = weak.upgrade() else { return };
                let rt = proxy.runtime();
                for (route, change) in rt.store.states() {
                    let Some(i) = rt.table.index_of(&route) else {
                        continue;
                    };
                    let b = &rt.table.backends[i];
                    if change.at_ms > b.state_at_ms() && b.set_state(change.state, change.at_ms) {
                        if change.state == AdminState::Stopped {
                            rt.store.route_down(&route);
                        }
                        tracing::info!(backend = %route, state = %change.state, "state changed by another balancer");
                    }
                }
            }
        });
    }
}
