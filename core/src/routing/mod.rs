//! Where the route is chosen: session id -> stored or suffix route ->
//! healthy backend, or balancing for new sessions, or a cluster-agreed heir
//! for orphaned sessions. Everything that decides "which backend" is here.

pub mod balance;
pub mod session;

use crate::backend::Backend;
use crate::config::Algorithm;
use crate::store::{Cached, SessionStore};
use balance::Selector;
pub use balance::Tried;
pub use session::{SessionId, Source};
use std::sync::Arc;

/// The backends in force and the selector that spreads new sessions.
pub struct Table {
    pub backends: Vec<Arc<Backend>>,
    selector: Selector,
}

/// Why a backend was chosen; drives logging and the response rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The session's own node (by stored binding or cookie suffix).
    Sticky,
    /// No usable session: balanced.
    New,
    /// The session's node cannot serve it; `from` is the route it had.
    Failover { from: Arc<str> },
}

impl Reason {
    /// The route an orphaned session had, when this was a failover.
    pub fn failed_over_from(&self) -> Option<&str> {
        match self {
            Reason::Failover { from } => Some(from),
            _ => None,
        }
    }
}

/// A routing decision for one attempt.
#[derive(Debug, Clone)]
pub struct Decision {
    pub index: usize,
    pub reason: Reason,
}

/// No backend can take the request.
#[derive(Debug, thiserror::Error)]
#[error("no backend available: all {total} backends are down, disabled or already tried")]
pub struct NoBackend {
    pub total: usize,
}

impl Table {
    /// A table over `backends` using `algorithm` for new sessions.
    pub fn new(backends: Vec<Arc<Backend>>, algorithm: Algorithm) -> Self {
        Table {
            backends,
            selector: Selector::new(algorithm),
        }
    }

    /// A round-robin table of plain backends named `routes` (unit tests
    /// of routing and of the response rewrite share it).
    #[cfg(test)]
    pub(crate) fn for_tests(routes: &[&str]) -> Table {
        use crate::backend::PoolSettings;
        use crate::config::BackendConfig;
        let backends = routes
            .iter()
            .map(|r| {
                let cfg = BackendConfig::plain(r, "127.0.0.1", 1, 1);
                let pool = PoolSettings::from_upstream(&Default::default());
                Arc::new(Backend::new(cfg, pool))
            })
            .collect();
        Table::new(backends, Algorithm::WeightedRoundRobin)
    }

    /// Index of the backend named `route`.
    pub fn index_of(&self, route: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.route() == route)
    }

    /// Choose the backend for an attempt of a request carrying `session`,
    /// skipping backends already `tried`.
    ///
    /// Nothing is bound here for an id a client merely presents: a suffix
    /// naming a live node routes by itself, and the store only holds
    /// sessions a backend confirmed (learned from its `Set-Cookie`, see
    /// `proxy::rewrite`). An unconfirmed id whose configured node cannot
    /// serve it goes to its rendezvous heir, agreed through
    /// [`SessionStore::claim_unconfirmed`] (bounded, expiring, uncounted)
    /// and remembered in the store's local unconfirmed tier; an id whose
    /// route names no configured backend is a new session placed on its
    /// rendezvous heir, and creates nothing at all.
    pub async fn decide(
        &self,
        store: &dyn SessionStore,
        session: Option<&SessionId<'_>>,
        tried: &Tried,
    ) -> Result<Decision, NoBackend> {
        let Some(s) = session else {
            return self.new_session(store, tried);
        };
        let confirmed = match store.lookup_hinted(s.base, s.route) {
            Cached::Found(r) => Some(r),
            Cached::Absent => None,
            Cached::Unknown => store.fetch(s.base).await,
        };
        // Borrowed, not cloned: a route name's count is shared by every
        // session bound to it and by every core.
        let unconfirmed;
        let bound: Option<&str> = match &confirmed {
            Some(r) => Some(r),
            None => {
                unconfirmed = store.lookup_unconfirmed(s.base);
                unconfirmed.as_deref()
            }
        };
        let wanted: Option<&str> = bound.or(s.route);
        let Some(wanted) = wanted else {
            return self.new_session(store, tried);
        };
        let home = self.index_of(wanted);
        if let Some(i) = home {
            if !tried.has(i) && self.backends[i].serves_sessions() {
                return Ok(Decision {
                    index: i,
                    reason: Reason::Sticky,
                });
            }
        }
        let heir = self.heir(s.base, home, tried)?;
        let index = match (&confirmed, home) {
            (Some(_), _) => self.claim(store, s.base, wanted, heir, tried).await,
            (None, Some(_)) => {
                self.claim_unconfirmed(store, s.base, wanted, heir, tried)
                    .await
            }
            // No backend of that name and nothing stored: not a failover
            // (no node lost it), just a new session placed where every
            // balancer would place it.
            (None, None) => {
                return Ok(Decision {
                    index: heir,
                    reason: Reason::New,
                })
            }
        };
        Ok(Decision {
            index,
            reason: Reason::Failover {
                from: wanted.into(),
            },
        })
    }

    fn new_session(&self, store: &dyn SessionStore, tried: &Tried) -> Result<Decision, NoBackend> {
        let sessions = |b: &Backend| store.sessions(b.route());
        let pick = self
            .selector
            .pick(&self.backends, |b| b.takes_new(), tried, sessions)
            .or_else(|| {
                self.selector.pick(
                    &self.backends,
                    |b| b.takes_new_as_last_resort(),
                    tried,
                    sessions,
                )
            });
        pick.map(|index| Decision {
            index,
            reason: Reason::New,
        })
        .ok_or(NoBackend {
            total: self.backends.len(),
        })
    }

    /// Pick the heir of an orphan whose node was `home` (same domain
    /// first, active before draining, never a disabled or stopped node):
    /// rendezvous hashing, so every balancer with the same backends picks
    /// the same one without asking anybody.
    fn heir(&self, base: &str, home: Option<usize>, tried: &Tried) -> Result<usize, NoBackend> {
        let domain = home.and_then(|i| self.backends[i].config.domain.clone());
        let usable = |i: usize, active_only: bool| {
            let b = &self.backends[i];
            !tried.has(i)
                && if active_only {
                    b.takes_new()
                } else {
                    b.takes_new_as_last_resort()
                }
        };
        let same_domain = |i: usize| domain.is_some() && self.backends[i].config.domain == domain;
        balance::heir(&self.backends, base, |i| same_domain(i) && usable(i, true))
            .or_else(|| balance::heir(&self.backends, base, |i| usable(i, true)))
            .or_else(|| balance::heir(&self.backends, base, |i| usable(i, false)))
            .ok_or(NoBackend {
                total: self.backends.len(),
            })
    }

    /// Have the store agree on the heir of an unconfirmed id whose node
    /// (`from`, configured) cannot serve it; another balancer's choice
    /// stands if that node may still take orphans.
    async fn claim_unconfirmed(
        &self,
        store: &dyn SessionStore,
        base: &str,
        from: &str,
        heir: usize,
        tried: &Tried,
    ) -> usize {
        let proposed = self.backends[heir].config.route.clone();
        let agreed = store.claim_unconfirmed(base, from, proposed).await;
        match self.index_of(&agreed) {
            Some(i) if !tried.has(i) && self.backends[i].takes_new_as_last_resort() => i,
            _ => {
                store.remember_unconfirmed(base, &self.backends[heir].config.route);
                heir
            }
        }
    }

    /// Have the store agree on the heir of a confirmed session for the
    /// whole cluster; returns the backend to use.
    async fn claim(
        &self,
        store: &dyn SessionStore,
        base: &str,
        from: &str,
        heir: usize,
        tried: &Tried,
    ) -> usize {
        let proposed = self.backends[heir].config.route.clone();
        let agreed = store.claim(base, Some(from), proposed).await;
        match self.index_of(&agreed) {
            // Another balancer's claim stands if that node still serves
            // sessions it holds (even disabled: the session is its own now).
            Some(i) if !tried.has(i) && self.backends[i].serves_sessions() => i,
            _ => {
                store.bind(base, &self.backends[heir].config.route);
                heir
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::time::Duration;

    fn table(routes: &[&str]) -> Table {
        Table::for_tests(routes)
    }

    fn decide(t: &Table, store: &MemoryStore, cookie: &str, tried: &Tried) -> Decision {
        let id = SessionId::parse(cookie, ".", Source::Cookie).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(t.decide(store, Some(&id), tried)).unwrap()
    }

    #[test]
    fn failed_over_from_names_the_lost_route_only_for_a_failover() {
        let f = Reason::Failover { from: "t1".into() };
        assert_eq!(f.failed_over_from(), Some("t1"));
        assert_eq!(Reason::Sticky.failed_over_from(), None);
        assert_eq!(Reason::New.failed_over_from(), None);
    }

    #[test]
    fn orphan_goes_to_a_live_heir_never_its_down_node() {
        let t = table(&["t1", "t2", "t3"]);
        t.backends[0].set_up(false, "test");
        let store = MemoryStore::new(Duration::from_secs(60), 100);
        for n in 0..20 {
            let d = decide(&t, &store, &format!("ID{n}.t1"), &Tried::default());
            assert_ne!(d.index, 0, "ID{n} sent to its down node");
            assert_eq!(d.reason, Reason::Failover { from: "t1".into() });
        }
    }

    #[test]
    fn heir_skips_tried_backends_and_is_the_same_for_every_table() {
        let (a, b) = (table(&["t1", "t2", "t3"]), table(&["t1", "t2", "t3"]));
        for t in [&a, &b] {
            t.backends[0].set_up(false, "test");
        }
        let store = MemoryStore::new(Duration::from_secs(60), 100);
        let mut heirs = [0usize; 3];
        for n in 0..30 {
            let id = format!("ID{n}.t1");
            let first = decide(&a, &store, &id, &Tried::default()).index;
            assert_eq!(
                first,
                decide(
                    &b,
                    &MemoryStore::new(Duration::from_secs(60), 100),
                    &id,
                    &Tried::default()
                )
                .index
            );
            heirs[first] += 1;
            let mut tried = Tried::default();
            tried.add(first);
            let second = decide(
                &a,
                &MemoryStore::new(Duration::from_secs(60), 100),
                &id,
                &tried,
            )
            .index;
            assert!(
                second != first && second != 0,
                "{id}: {first} then {second}"
            );
        }
        assert!(
            heirs[1] > 0 && heirs[2] > 0,
            "rendezvous spreads heirs: {heirs:?}"
        );
    }
}
