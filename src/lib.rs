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
pub mod tls;

use config::{Config, StoreKind};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use store::{MemoryStore, SessionStore, StoreError};

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] server::BindError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
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
            store::multicast::MulticastStore::start(&config.store, idle, cap).await?
        }
    })
}

/// Run the balancer until `shutdown` resolves, then drain gracefully.
/// `source` is the config file, re-read on SIGHUP to reload certificates.
pub async fn run(
    config: Config,
    source: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let listeners = server::Listeners {
        plain: server::bind_all(&config.server.listen).await?,
        tls: server::bind_all(&config.server.tls_listen).await?,
    };
    let admin = match config.admin_listen {
        Some(a) => Some(server::bind(a)?),
        None => None,
    };
    let (tls, resolver) = if config.server.tls_listen.is_empty() {
        (None, None)
    } else {
        let r = tls::SniResolver::load(&config.server.certificate)?;
        (Some(tls::server_config(r.clone())?), Some(r))
    };
    let store = build_store(&config).await?;
    let server_cfg = config.server.clone();
    let runtime = proxy::Runtime::start(config, store);
    let proxy = proxy::Proxy::new(runtime);
    let stats = Arc::new(server::ServerStats::default());
    for l in listeners.plain.iter().chain(&listeners.tls) {
        if let Ok(a) = l.local_addr() {
            tracing::info!(addr = %a, "listening");
        }
    }
    let admin_task = admin.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!(addr = %a, "admin API listening");
        }
        tokio::spawn(admin::serve(proxy.clone(), stats.clone(), l))
    });
    let reload_task = match (resolver, source) {
        (Some(r), Some(path)) => Some(tokio::spawn(reload_certificates_on_sighup(r, path))),
        _ => None,
    };
    server::serve(proxy, listeners, tls, server_cfg, stats, shutdown).await;
    for t in admin_task.into_iter().chain(reload_task) {
        t.abort();
    }
    Ok(())
}

/// SIGHUP: re-read the config file and swap in its certificates; new
/// handshakes use them, open connections are untouched. A bad file leaves
/// the old certificates in place and logs why.
async fn reload_certificates_on_sighup(resolver: Arc<tls::SniResolver>, path: PathBuf) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let result = config::load(&path)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    resolver
                        .reload(&c.server.certificate)
                        .map_err(|e| e.to_string())
                });
            match result {
                Ok(()) => tracing::info!(config = %path.display(), "certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "certificate reload failed; keeping the old certificates")
                }
            }
        }
    }
}
