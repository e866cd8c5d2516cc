//! stickgate: a sticky, session-replicating HTTP load balancer for
//! Tomcat-style (`jvmRoute`) clusters.
//!
//! Data flows one way: [`server`] accepts a request, [`proxy`] finds its
//! session and asks [`routing`] for a backend, sends it upstream through the
//! [`backend`] pool, and rewrites the response. [`store`] remembers which
//! session lives where; [`admin`] shows it all. The [`control`] plane
//! (reload, backend states, pollers) changes what the request path sees,
//! apart from it.

pub mod access_log;
pub mod admin;
pub mod admin_state;
pub mod backend;
pub mod body;
pub mod client_info;
pub mod config;
pub mod control;
pub mod lock;
pub mod proxy;
pub mod redact;
pub mod routing;
pub mod secret;
pub mod server;
pub mod store;
pub mod thread_index;
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
    #[error(transparent)]
    Workers(#[from] server::workers::WorkerError),
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
/// `source` is the config file, re-read on SIGHUP and `POST /reload`.
pub async fn run(
    config: Config,
    source: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let threads = config.server.threads();
    let plain = server::bind_all(&config.server.listen, threads)?;
    let tls_listeners = server::bind_all(&config.server.tls_listen, threads)?;
    let admin_listener = match config.admin.listen {
        Some(a) => Some(server::bind(a)?),
        None => None,
    };
    let (tls, resolver) = if config.server.tls_listen.is_empty() {
        (None, None)
    } else {
        let r = tls::SniResolver::load(&config.server.certificate)?;
        (
            Some(tls::server_config(
                r.clone(),
                config.server.tls_resumption(),
            )?),
            Some(r),
        )
    };
    let store = build_store(&config).await?;
    let (listen, tls_listen) = (
        config.server.listen.clone(),
        config.server.tls_listen.clone(),
    );
    let server_cfg = config.server.clone();
    let access_log = access_log::AccessLogger::open(config.access_log.as_ref());
    let runtime = proxy::Runtime::start(config, store);
    let proxy = proxy::Proxy::new(runtime, access_log);
    proxy.follow_states();
    let stats = Arc::new(server::ServerStats::default());
    let workers = server::workers::Workers::start(threads)?;
    let server = server::Server::new(
        proxy.clone(),
        stats.clone(),
        server_cfg,
        tls,
        workers.handles(),
    );
    for (l, a) in plain.into_iter().zip(listen) {
        server.add(l, a, server::ListenerKind::Plain);
    }
    for (l, a) in tls_listeners.into_iter().zip(tls_listen) {
        server.add(l, a, server::ListenerKind::Tls);
    }
    let reloader = control::reload::Reloader::new(source, proxy.clone(), server.clone(), resolver);
    let admin_task = admin_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!(addr = %a, "admin API listening");
        }
        let admin = admin::Admin::new(proxy.clone(), stats.clone(), reloader.clone());
        tokio::spawn(admin::serve(admin, l))
    });
    let reload_task = tokio::spawn(control::reload::on_sighup(reloader));
    control::housekeeping::spawn(Arc::downgrade(&proxy), Arc::downgrade(&server));
    if control::systemd::under_systemd() {
        // Bounded: a check never takes longer than health.timeout.
        let limit = proxy.runtime().config.health.timeout + std::time::Duration::from_secs(1);
        proxy.first_checks(limit).await;
    }
    control::systemd::ready(|| proxy.summary());
    let watchdog = control::systemd::spawn_watchdog();
    server
        .run_until(async {
            shutdown.await;
            control::systemd::stopping();
        })
        .await;
    for t in admin_task.into_iter().chain([reload_task]).chain(watchdog) {
        t.abort();
    }
    workers.stop().await;
    Ok(())
}
