//! Building the request path's [`Runtime`]: at start, and again on every
//! reload, reconciling the new configuration with the running backends
//! (their health, state, pool and counters carry over when unchanged).

use super::states::{impose_state, watch_health};
use crate::backend::{health, Backend, PoolSettings};
use crate::config::Config;
use crate::proxy::{ProxyStats, Runtime};
use crate::routing::Table;
use crate::store::SessionStore;
use std::sync::Arc;

impl Runtime {
    /// Build backends (with pools and health checkers) for `config`.
    pub fn start(config: Config, store: Arc<dyn SessionStore>) -> Arc<Self> {
        let pool =
            PoolSettings::from_upstream(&config.upstream).for_threads(config.server.threads());
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b.clone(), pool.clone())))
            .collect();
        for b in &backends {
            health::spawn_checker(b, config.health.clone());
        }
        Self::assemble(config, backends, store, Arc::default())
    }

    fn assemble(
        config: Config,
        backends: Vec<Arc<Backend>>,
        store: Arc<dyn SessionStore>,
        stats: Arc<ProxyStats>,
    ) -> Arc<Self> {
        let routes: Vec<Arc<str>> = backends.iter().map(|b| b.config.route.clone()).collect();
        store.set_routes(&routes);
        let table = Table::new(backends, config.algorithm);
        let rt = Arc::new(Runtime {
            config,
            table,
            store,
            stats,
        });
        watch_health(Arc::downgrade(&rt));
        rt
    }

    /// The runtime for a reloaded `config`, built from this one: unchanged
    /// backends are the same objects (health, state, pool, counters and
    /// in-flight requests carry on), changed ones succeed their old self,
    /// new ones start fresh. The store stays; settings that only a restart
    /// can change are reported in the returned warnings.
    pub fn reloaded(&self, mut config: Config) -> (Arc<Self>, Vec<String>) {
        let mut warnings = Vec::new();
        if config.store != self.config.store {
            warnings.push("[store] changed: the running store is kept; restart stickgate to apply the new store settings".to_owned());
        }
        let (a, b) = (&config.session, &self.config.session);
        if a.idle_timeout != b.idle_timeout || a.max_sessions != b.max_sessions {
            warnings.push("session.idle_timeout / session.max_sessions changed: they belong to the store; restart stickgate to apply them".to_owned());
        }
        let (a, b) = (&config.server, &self.config.server);
        if !self.config.server.tls_listen.is_empty()
            && (a.tls_session_tickets, a.tls_session_cache)
                != (b.tls_session_tickets, b.tls_session_cache)
        {
            warnings.push("server.tls_session_tickets / server.tls_session_cache changed: TLS listeners keep their settings; restart stickgate to apply them".to_owned());
        }
        if config.admin.listen != self.config.admin.listen {
            // The listener keeps its address, so it keeps the token rules
            // checked for that address too: a new loopback address without
            // a token must not open the old public listener.
            warnings.push(
                "admin.listen changed: the admin listener and its token stay as they are until a restart"
                    .to_owned(),
            );
            config.admin = self.config.admin.clone();
        } else if config.admin.token != self.config.admin.token {
            tracing::info!("admin token replaced by reload");
        }
        let pool =
            PoolSettings::from_upstream(&config.upstream).for_threads(config.server.threads());
        let same_pool = config.upstream == self.config.upstream;
        let same_health = config.health == self.config.health;
        let mut backends = Vec::with_capacity(config.backends.len());
        for bc in &config.backends {
            let old = self
                .table
                .index_of(&bc.route)
                .map(|i| &self.table.backends[i]);
            let b = match old {
                Some(o) if o.config == *bc && same_pool => {
                    if !same_health {
                        health::spawn_checker(o, config.health.clone());
                    }
                    o.clone()
                }
                Some(o) => {
                    let b = Arc::new(Backend::succeed(o, bc.clone(), pool.clone()));
                    health::spawn_checker(&b, config.health.clone());
                    if o.config.state != bc.state {
                        // The file now says otherwise: that is the newest
                        // operator decision; share it like an API action.
                        let state = bc.state;
                        impose_state(&*self.store, &b, state, "the reloaded config");
                    }
                    b
                }
                None => {
                    let b = Arc::new(Backend::new(bc.clone(), pool.clone()));
                    health::spawn_checker(&b, config.health.clone());
                    tracing::info!(backend = %bc.route, "backend added by reload");
                    b
                }
            };
            backends.push(b);
        }
        for old in &self.table.backends {
            if !config.backends.iter().any(|b| b.route == old.config.route) {
                tracing::info!(
                    backend = old.route(),
                    "backend removed by reload; its sessions fail over"
                );
                self.store.route_down(old.route());
            }
        }
        let rt = Self::assemble(config, backends, self.store.clone(), self.stats.clone());
        (rt, warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::path::Path;
    use std::time::Duration;

    fn config(extra: &str, backends: &[(&str, u16)]) -> Config {
        let nodes: String = backends
            .iter()
            .map(|(r, p)| format!("[[backend]]\nroute = \"{r}\"\nurl = \"http://127.0.0.1:{p}\"\n"))
            .collect();
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[health]\nenabled = false\n{extra}\n{nodes}"
        );
        crate::config::from_str(&text, Path::new("test.toml")).unwrap()
    }

    #[tokio::test]
    async fn reload_keeps_unchanged_backends_and_warns_about_restart_only_keys() {
        let store = MemoryStore::new(Duration::from_secs(60), 100);
        let rt = Runtime::start(config("", &[("a", 1), ("b", 2)]), store);
        rt.table.backends[0].set_up(false, "test");
        let (next, warnings) = rt.reloaded(config("", &[("a", 1), ("b", 3), ("c", 4)]));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(Arc::ptr_eq(&rt.table.backends[0], &next.table.backends[0]));
        assert!(!next.table.backends[0].is_up(), "health carried over");
        assert!(!Arc::ptr_eq(&rt.table.backends[1], &next.table.backends[1]));
        assert_eq!(next.table.backends.len(), 3);
        assert!(
            Arc::ptr_eq(&rt.stats, &next.stats),
            "counters outlive reloads"
        );
        let (_, warnings) = rt.reloaded(config(
            "[session]\nmax_sessions = 5\n",
            &[("a", 1), ("b", 2)],
        ));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("max_sessions"), "{warnings:?}");
        // New pool settings rebuild every backend.
        let (next, _) = rt.reloaded(config(
            "[upstream]\nmax_connections = 3\n",
            &[("a", 1), ("b", 2)],
        ));
        assert!(!Arc::ptr_eq(&rt.table.backends[0], &next.table.backends[0]));
    }
}
