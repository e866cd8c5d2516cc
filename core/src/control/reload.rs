//! Hot reload (SIGHUP or `POST /reload`): the new file is validated and
//! everything that can fail (certificates, new listening sockets) is
//! prepared before anything changes; then the new runtime is swapped in.
//! A bad file leaves the old configuration running and says why.

use crate::access_log::AccessLogger;
use crate::config::{self, Config, ConfigError};
use crate::lock::lock;
use crate::proxy::{Proxy, Runtime};
use crate::server::{self, BindError, ListenerKind, Server};
use crate::store::unix_ms;
use crate::tls::{self, SniResolver, TlsError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Why a reload was refused; the old configuration keeps running.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("stickgate was started without a config file; nothing to reload")]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("reading the config file was interrupted ({0}); try the reload again")]
    Interrupted(String),
}

/// What a successful reload could not apply (restart needed).
#[derive(Debug, Default, serde::Serialize)]
pub struct Reloaded {
    pub warnings: Vec<String>,
}

/// Reload counters for the status API.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReloadStats {
    pub ok: u64,
    pub failed: u64,
    pub last_error: Option<String>,
    /// When the last refused reload happened (Unix seconds): with
    /// `last_ok_unix` it tells whether `last_error` is still the news.
    pub last_error_unix: Option<u64>,
    /// When the last reload was applied (Unix seconds).
    pub last_ok_unix: Option<u64>,
}

/// Owns what a reload touches; one reload runs at a time.
pub struct Reloader {
    path: Option<PathBuf>,
    proxy: Arc<Proxy>,
    server: Arc<Server>,
    resolver: Mutex<Option<Arc<SniResolver>>>,
    serial: tokio::sync::Mutex<()>,
    ok: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_error_unix: AtomicU64,
    last_ok_unix: AtomicU64,
}

impl Reloader {
    /// A reloader for the config file `path` (`None`: built in code).
    pub fn new(
        path: Option<PathBuf>,
        proxy: Arc<Proxy>,
        server: Arc<Server>,
        resolver: Option<Arc<SniResolver>>,
    ) -> Arc<Self> {
        Arc::new(Reloader {
            path,
            proxy,
            server,
            resolver: Mutex::new(resolver),
            serial: tokio::sync::Mutex::new(()),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
            last_error_unix: AtomicU64::new(0),
            last_ok_unix: AtomicU64::new(0),
        })
    }

    /// The config file in use.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// Counters so far.
    pub fn stats(&self) -> ReloadStats {
        ReloadStats {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
            last_error_unix: nonzero(&self.last_error_unix),
            last_ok_unix: nonzero(&self.last_ok_unix),
        }
    }

    /// Re-read the file and apply it, or keep the old configuration and
    /// return why not. Logged either way.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.serial.lock().await;
        super::systemd::reloading();
        let result = self.apply().await;
        super::systemd::ready(|| self.proxy.summary());
        match &result {
            Ok(r) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.last_ok_unix.store(unix_ms() / 1000, Ordering::Relaxed);
                for w in &r.warnings {
                    tracing::warn!("reload: {w}");
                }
                tracing::info!("configuration reloaded");
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.last_error_unix
                    .store(unix_ms() / 1000, Ordering::Relaxed);
                *lock(&self.last_error) = Some(e.to_string());
                tracing::error!(error = %e, "reload refused; the previous configuration keeps running");
            }
        }
        result
    }

    async fn apply(&self) -> Result<Reloaded, ReloadError> {
        let path = self.path.clone().ok_or(ReloadError::NoFile)?;
        let new: Config = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .map_err(|e| ReloadError::Interrupted(e.to_string()))??;
        let plain_add = self
            .bind_missing(&new.server.listen, ListenerKind::Plain)
            .await?;
        let tls_add = self
            .bind_missing(&new.server.tls_listen, ListenerKind::Tls)
            .await?;
        // Last step that can fail; it swaps certificates in on success.
        let tls = self.prepare_tls(&new)?;
        // Nothing can fail from here on: commit.
        let old = self.proxy.runtime();
        let (runtime, warnings): (Arc<Runtime>, _) = old.reloaded(new);
        let server_cfg = runtime.config.server.clone();
        if let Some((resolver, fresh_config)) = tls {
            let mut slot = lock(&self.resolver);
            *slot = Some(resolver);
            self.server.set_config(server_cfg.clone(), fresh_config);
        } else {
            self.server.set_config(server_cfg.clone(), None);
        }
        // The access log follows the file: turned on, off, or to another
        // path or format (same settings: the running log is kept).
        let wanted = runtime.config.access_log.as_ref();
        if self.proxy.access_log().as_ref().map(|l| &l.settings) != wanted {
            self.proxy.set_access_log(AccessLogger::open(wanted));
        }
        self.proxy.swap(runtime);
        for (l, addr) in plain_add {
            self.server.add(l, addr, ListenerKind::Plain);
        }
        for (l, addr) in tls_add {
            self.server.add(l, addr, ListenerKind::Tls);
        }
        for (side, wanted) in [
            (ListenerKind::Plain, &server_cfg.listen),
            (ListenerKind::Tls, &server_cfg.tls_listen),
        ] {
            for addr in surplus(&self.server.addresses(side), wanted) {
                self.server.remove(addr, side).await;
            }
        }
        Ok(Reloaded { warnings })
    }

    /// Load the certificates of the new file. Returns the resolver and, when
    /// TLS is new, the rustls settings the server must start using.
    #[allow(clippy::type_complexity)]
    fn prepare_tls(
        &self,
        new: &Config,
    ) -> Result<Option<(Arc<SniResolver>, Option<Arc<rustls::ServerConfig>>)>, ReloadError> {
        if new.server.tls_listen.is_empty() {
            return Ok(None);
        }
        let current = lock(&self.resolver).clone();
        Ok(Some(match current {
            Some(r) => {
                r.reload(&new.server.certificate)?;
                (r, None)
            }
            None => {
                let r = SniResolver::load(&new.server.certificate)?;
                let cfg = tls::server_config(r.clone(), new.server.tls_resumption())?;
                (r, Some(cfg))
            }
        }))
    }

    /// Bind the addresses `wanted` has and the server does not listen on.
    async fn bind_missing(
        &self,
        wanted: &[SocketAddr],
        side: ListenerKind,
    ) -> Result<Vec<(server::Group, SocketAddr)>, ReloadError> {
        let have = self.server.addresses(side);
        let mut out = Vec::new();
        for addr in surplus(wanted, &have) {
            out.push((server::bind_group(addr, self.server.threads())?, addr));
        }
        Ok(out)
    }
}

/// Addresses in `a` not matched in `b`, counting repeats (several port-0
/// listeners are several listeners).
fn surplus(a: &[SocketAddr], b: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut left: Vec<SocketAddr> = b.to_vec();
    a.iter()
        .filter(|x| match left.iter().position(|y| y == *x) {
            Some(i) => {
                left.swap_remove(i);
                false
            }
            None => true,
        })
        .copied()
        .collect()
}

/// Reload on every SIGHUP until the task is dropped.
pub async fn on_sighup(reloader: Arc<Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            let _ = reloader.reload().await;
        }
    }
}

/// A time kept as Unix seconds, 0 meaning never.
fn nonzero(t: &AtomicU64) -> Option<u64> {
    Some(t.load(Ordering::Relaxed)).filter(|&t| t != 0)
}

#[cfg(test)]
mod tests {
    use super::surplus;
    use std::net::SocketAddr;

    #[test]
    fn surplus_counts_repeats() {
        let a: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(surplus(&[a, a, b], &[a]), vec![a, b]);
        assert_eq!(surplus(&[a], &[a, b]), Vec::<SocketAddr>::new());
        assert_eq!(surplus(&[], &[a]), Vec::<SocketAddr>::new());
    }
}
