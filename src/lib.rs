//! stickgate: a sticky, session-replicating HTTP load balancer for
//! Tomcat-style (`jvmRoute`) clusters.
//!
//! Data flows one way: [`server`] accepts a request, [`proxy`] finds its
//! session and asks [`routing`] for a backend, sends it upstream through the
//! [`backend`] pool, and rewrites the response. [`store`] remembers which
//! session lives where; [`admin`] shows it all.

pub mod admin;
pub mod backend;
pub mod body;
pub mod config;
pub mod demo;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod store;

use config::{Config, StoreKind};
use std::future::Future;
use std::sync::Arc;
use store::{MemoryStore, SessionStore, StoreError};

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] server::BindError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Build and start the session store the config asks for.
pub async fn build_store(config: &Config) -> Result<Arc<dyn SessionStore>, StoreError> {
    let idle = config.session.idle_timeout;
    let cap = config.session.max_sessions;
    Ok(match config.store.kind {
        StoreKind::Memory => {
            let s = MemoryStore::new(idle, cap);
            s.start_sweeper();
            s
        }
        StoreKind::Redis => {
            let routes = config.backends.iter().map(|b| b.route.clone()).collect();
            store::redis::RedisStore::start(&config.store, idle, cap, routes).await?
        }
        StoreKind::Multicast => {
            return Err(StoreError::Multicast(
                "not available in this build yet".into(),
            ))
        }
    })
}

/// Run the balancer until `shutdown` resolves, then drain gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let listeners = server::bind_all(&config.server.listen).await?;
    let admin = match config.admin_listen {
        Some(a) => Some(server::bind(a)?),
        None => None,
    };
    let store = build_store(&config).await?;
    let server_cfg = config.server.clone();
    let runtime = proxy::Runtime::start(config, store);
    let proxy = proxy::Proxy::new(runtime);
    for l in &listeners {
        if let Ok(a) = l.local_addr() {
            tracing::info!(addr = %a, "listening");
        }
    }
    let admin_task = admin.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!(addr = %a, "admin API listening");
        }
        tokio::spawn(admin::serve(proxy.clone(), l))
    });
    server::serve(proxy, listeners, server_cfg, shutdown).await;
    if let Some(t) = admin_task {
        t.abort();
    }
    Ok(())
}
