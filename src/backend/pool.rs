//! Upstream connections: connect with a short timeout and TCP keepalive,
//! keep idle HTTP/1.1 connections per backend for reuse.
//!
//! A hand-rolled pool instead of hyper-util's client because the proxy must
//! know, for each attempt, whether the request had left the balancer: a
//! connect failure leaves the request (and its unsent body) in our hands, so
//! even a POST can be retried on another node.

use crate::body::UpstreamBody;
use crate::config::{BackendConfig, Keepalive};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Pool limits and socket options shared by every backend.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    pub keepalive: Keepalive,
    pub max_connections: usize,
    pub queue_timeout: Duration,
}

/// Why no connection could be had. All of these mean the request never
/// reached the backend, so it may be retried elsewhere whatever its method.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(hyper::Error),
    #[error("address {0} did not resolve")]
    Resolve(String),
    #[error("all {0} connection slots busy for longer than the queue timeout")]
    Queue(usize),
}

/// A connection ready to carry one request.
pub struct Conn {
    pub sender: http1::SendRequest<UpstreamBody>,
    /// Taken from the pool (it may have gone stale) rather than fresh.
    pub reused: bool,
}

struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

/// Per-backend pool of idle keep-alive connections.
pub struct Pool {
    host: Arc<str>,
    port: u16,
    settings: PoolSettings,
    idle: Mutex<Vec<Idle>>,
    limit: Option<Arc<Semaphore>>,
}

impl Pool {
    /// An empty pool for one backend.
    pub fn new(cfg: &BackendConfig, settings: PoolSettings) -> Self {
        let limit = (settings.max_connections > 0)
            .then(|| Arc::new(Semaphore::new(settings.max_connections)));
        Pool {
            host: cfg.host.clone(),
            port: cfg.port,
            idle: Mutex::new(Vec::with_capacity(settings.max_idle.min(64))),
            limit,
            settings,
        }
    }

    /// Wait for a request slot when `max_connections` is set (HAProxy's
    /// maxconn + queue); `None` when unlimited.
    pub async fn permit(&self) -> Result<Option<OwnedSemaphorePermit>, ConnectError> {
        let Some(sem) = &self.limit else {
            return Ok(None);
        };
        match tokio::time::timeout(self.settings.queue_timeout, sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(ConnectError::Queue(self.settings.max_connections)),
        }
    }

    /// A reusable idle connection if one is alive, else a new one.
    pub async fn checkout(&self) -> Result<Conn, ConnectError> {
        while let Some(mut sender) = self.take_idle() {
            if sender.ready().await.is_ok() {
                return Ok(Conn {
                    sender,
                    reused: true,
                });
            }
        }
        self.connect().await.map(|sender| Conn {
            sender,
            reused: false,
        })
    }

    /// A fresh connection, bypassing idle ones (retry after a stale reuse).
    pub async fn connect(&self) -> Result<http1::SendRequest<UpstreamBody>, ConnectError> {
        let t = self.settings.connect_timeout;
        let stream = tokio::time::timeout(t, self.dial())
            .await
            .map_err(|_| ConnectError::Timeout(t))??;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    async fn dial(&self) -> Result<TcpStream, ConnectError> {
        let mut last = None;
        let addrs = tokio::net::lookup_host((&*self.host, self.port))
            .await
            .map_err(|_| ConnectError::Resolve(format!("{}:{}", self.host, self.port)))?;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    if let Some(ka) = &self.settings.keepalive {
                        let _ = socket2::SockRef::from(&s).set_tcp_keepalive(ka);
                    }
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => ConnectError::Io(e),
            None => ConnectError::Resolve(format!("{}:{}", self.host, self.port)),
        })
    }

    fn take_idle(&self) -> Option<http1::SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < self.settings.idle_timeout && !c.sender.is_closed() {
                return Some(c.sender);
            }
        }
        None
    }

    /// Return a connection whose response was fully read.
    pub fn checkin(&self, sender: http1::SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() >= self.settings.max_idle {
                idle.retain(|c| !c.sender.is_closed());
            }
            if idle.len() < self.settings.max_idle {
                idle.push(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }

    /// Drop every idle connection (backend marked down: they are suspect).
    pub fn clear(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    /// Number of idle connections, for the status API.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}
