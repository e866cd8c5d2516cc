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
pub mod client_upgrade;
pub mod clock;
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
    #[error("{0}; {advice}", advice = .0.advice())]
    Takeover(#[from] control::takeover::TakeoverError),
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
/// With `server.takeover_socket`, a running instance found there hands
/// over its sockets, sessions and states (see `control::takeover`), and
/// this one can hand over to the next.
pub async fn run(
    config: Config,
    source: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let threads = config.server.threads();
    let mut taking = control::takeover::Taking::connect(&config.server.takeover_socket).await?;
    let plain = open_groups(&config.server.listen, false, threads, taking.as_mut())?;
    let tls_listeners = open_groups(&config.server.tls_listen, true, threads, taking.as_mut())?;
    let admin_listener = match config.admin.listen {
        Some(a) => Some(open_admin(a, taking.as_mut())?),
        None => None,
    };
    if let Some(t) = taking.as_mut() {
        t.close_unused();
    }
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
    if let Some(t) = taking.as_mut() {
        t.receive_sessions(&*store).await?;
    }
    let (listen, tls_listen) = (
        config.server.listen.clone(),
        config.server.tls_listen.clone(),
    );
    let server_cfg = config.server.clone();
    let takeover_path = config.server.takeover_socket.clone();
    let access_log = access_log::AccessLogger::open(config.access_log.as_ref());
    let runtime = proxy::Runtime::start(config, store);
    if let Some(t) = &taking {
        t.apply_states(&runtime);
    }
    let proxy = proxy::Proxy::new(runtime, access_log);
    proxy.follow_states();
    let stats = Arc::new(server::ServerStats::default());
    let cpus = server::affinity::plan(
        server_cfg.cpu_affinity,
        threads,
        &server::affinity::allowed_cpus(),
    );
    if let Some(c) = &cpus {
        tracing::info!(cpus = ?c, "request threads pinned one per CPU (server.cpu_affinity)");
    }
    let workers = server::workers::Workers::start(threads, cpus.as_deref())?;
    let server = server::Server::new(
        proxy.clone(),
        stats.clone(),
        server_cfg,
        tls,
        workers.handles(),
    );
    // Bounded: a check never takes longer than health.timeout.
    let checks = proxy.runtime().config.health.timeout + std::time::Duration::from_secs(1);
    let took_over = taking.is_some();
    // The last step that can fail: after `go` the old process no longer
    // accepts, so nothing may stop this one from serving.
    let listening = match takeover_path.as_os_str().is_empty() {
        true => None,
        false => Some(control::takeover::Listening::bind(&takeover_path)?),
    };
    if let Some(t) = taking {
        // Routing for real before the old process stops accepting.
        proxy.first_checks(checks).await;
        let store = proxy.runtime().store.clone();
        let following = t.go(&*store).await;
        let limit =
            proxy.runtime().config.server.shutdown_timeout + std::time::Duration::from_secs(30);
        following.spawn(store, limit);
        tracing::info!("took over from the previous process: accepting");
    }
    for (l, a) in plain.into_iter().zip(listen) {
        server.add(l, a, server::ListenerKind::Plain);
    }
    for (l, a) in tls_listeners.into_iter().zip(tls_listen) {
        server.add(l, a, server::ListenerKind::Tls);
    }
    let reloader = control::reload::Reloader::new(source, proxy.clone(), server.clone(), resolver);
    let admin_copy = admin_listener.as_ref().and_then(|l| {
        let copy = socket2::SockRef::from(l).try_clone().ok()?;
        Some((proxy.runtime().config.admin.listen?, copy.into()))
    });
    let admin_task = admin_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!(addr = %a, "admin API listening");
        }
        let admin = admin::Admin::new(proxy.clone(), stats.clone(), reloader.clone());
        tokio::spawn(admin::serve(admin, l))
    });
    let reload_task = tokio::spawn(control::reload::on_sighup(reloader));
    control::housekeeping::spawn(Arc::downgrade(&proxy), Arc::downgrade(&server));
    if control::systemd::under_systemd() && !took_over {
        proxy.first_checks(checks).await;
    }
    let (file, handover) = match listening {
        Some(l) => {
            let source = control::takeover::Source {
                server: server.clone(),
                admin: admin_copy,
                proxy: proxy.clone(),
            };
            let (file, rx) = l.serve(source);
            (Some(file), Some(rx))
        }
        None => (None, None),
    };
    control::systemd::ready(|| proxy.summary());
    let watchdog = control::systemd::spawn_watchdog();
    let upgrades = file
        .as_ref()
        .and_then(|_| control::takeover::upgrade::on_sigusr2());
    let mut handover = wait_for_end(shutdown, handover).await;
    if handover.is_none() {
        // After a handover the new process is the service: not stopping.
        control::systemd::stopping();
    }
    server.stop_accepting().await;
    if let Some(t) = &admin_task {
        t.abort();
    }
    let store = proxy.runtime().store.clone();
    if let Some(h) = handover.as_mut() {
        h.stopped(&*store).await;
        tokio::select! {
            _ = server.drain() => {}
            _ = h.follow(&*store) => {}
        }
    } else {
        server.drain().await;
    }
    if let Some(h) = handover {
        h.done(&*store).await;
    }
    if let Some(f) = file {
        f.remove();
    }
    for t in admin_task
        .into_iter()
        .chain([reload_task])
        .chain(watchdog)
        .chain(upgrades)
    {
        t.abort();
    }
    workers.stop().await;
    Ok(())
}

/// One proxy address group per configured address: the old process's
/// sockets when taking over and it had the address, else bound here.
fn open_groups(
    addrs: &[std::net::SocketAddr],
    tls: bool,
    threads: usize,
    mut taking: Option<&mut control::takeover::Taking>,
) -> Result<Vec<server::Group>, server::BindError> {
    addrs
        .iter()
        .map(
            |&a| match taking.as_deref_mut().and_then(|t| t.group(tls, a)) {
                Some(g) => Ok(g),
                None => server::bind_group(a, threads),
            },
        )
        .collect()
}

/// The admin listener: taken over, or bound here.
fn open_admin(
    addr: std::net::SocketAddr,
    taking: Option<&mut control::takeover::Taking>,
) -> Result<tokio::net::TcpListener, server::BindError> {
    match taking.and_then(|t| t.admin(addr)) {
        Some(l) => tokio::net::TcpListener::from_std(l)
            .map_err(|source| server::BindError { addr, source }),
        None => server::bind(addr),
    }
}

/// Until `shutdown` or a successful takeover by a new process (then its
/// handover).
async fn wait_for_end(
    shutdown: impl Future<Output = ()>,
    handover: Option<tokio::sync::oneshot::Receiver<control::takeover::Handover>>,
) -> Option<control::takeover::Handover> {
    let taken = async {
        match handover {
            Some(rx) => match rx.await {
                Ok(h) => Some(h),
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown => None,
        h = taken => {
            tracing::info!("a new process took over: no new connections here, finishing in-flight requests");
            h
        }
    }
}
