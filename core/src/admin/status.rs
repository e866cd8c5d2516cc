//! The status document (`GET /api/status`): what the status page, `ctl
//! status` and operators' scripts read.

use super::Admin;
use crate::backend::stats::HealthEvent;
use crate::backend::{AdminState, Backend};
use crate::control::reload::ReloadStats;
use crate::store::{SessionCounts, StoreStatus};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One backend as the API shows it.
#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub route: String,
    pub url: String,
    pub domain: Option<String>,
    pub weight: u32,
    pub state: AdminState,
    pub health: &'static str,
    pub health_since_secs: f64,
    pub health_history: Vec<HealthEvent>,
    pub inflight: u32,
    pub requests: u64,
    pub errors: u64,
    pub failovers_in: u64,
    /// Hung-node rescue probes sent / failed, and requests that were
    /// waiting on this backend when it went down (re-dispatched or 504).
    pub rescue_probes: u64,
    pub rescue_probes_failed: u64,
    pub rescued: u64,
    pub idle_connections: usize,
    /// Of `idle_connections`, those parked: holding their socket only
    /// (see `backend::pool_conn`).
    pub parked_connections: usize,
    pub sessions: SessionCounts,
    /// Sessions still on a node taken out of rotation (`None` while
    /// active): a rolling restart waits for this to reach 0.
    pub sessions_remaining: Option<u64>,
    /// Out of rotation and no session left: safe to restart.
    pub drained: bool,
    pub responses: Responses,
    pub latency_ms: Latency,
}

/// Backend answers by status class.
#[derive(Debug, Serialize)]
pub struct Responses {
    #[serde(rename = "1xx")]
    pub c1: u64,
    #[serde(rename = "2xx")]
    pub c2: u64,
    #[serde(rename = "3xx")]
    pub c3: u64,
    #[serde(rename = "4xx")]
    pub c4: u64,
    #[serde(rename = "5xx")]
    pub c5: u64,
}

/// Time to the response head since start (`None` before any traffic).
#[derive(Debug, Serialize)]
pub struct Latency {
    pub avg: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// The whole status document.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub uptime_secs: f64,
    pub config_file: Option<String>,
    pub reloads: ReloadStats,
    pub backends: Vec<BackendStatus>,
    pub store: StoreStatus,
    pub connections: u64,
    pub tls_handshake_failures: u64,
    /// Client connections closed because a request head was not complete
    /// within `server.header_timeout` (silent sockets, slowloris, partial
    /// HTTP/2 prefaces).
    pub header_timeouts: u64,
    /// Keep-alive and HTTP/2 connections closed after `server.idle_timeout`.
    pub idle_timeouts: u64,
    /// Times every `server.max_connections` slot was taken.
    pub connection_limit_reached: u64,
    /// Idle HTTP/1.1 client connections parked now: open, holding no
    /// buffers until their next request.
    pub parked_connections: u64,
    pub retries: u64,
    pub access_log_dropped: u64,
}

fn ms(v: Option<f64>) -> Option<f64> {
    v.map(|s| (s * 1e6).round() / 1e3)
}

/// One backend's row.
pub fn backend(b: &Backend, sessions: SessionCounts) -> BackendStatus {
    let state = b.state();
    let out_of_rotation = state != AdminState::Active;
    let [c1, c2, c3, c4, c5] = b.stats.traffic.classes();
    let lat = b.stats.traffic.latency();
    BackendStatus {
        route: b.route().to_owned(),
        url: format!(
            "{}://{}",
            if b.config.tls { "https" } else { "http" },
            b.config.authority
        ),
        domain: b.config.domain.as_deref().map(str::to_owned),
        weight: b.config.weight,
        state,
        health: if b.is_up() { "up" } else { "down" },
        health_since_secs: (b.since_change() * 10.0).round() / 10.0,
        health_history: b.stats.health_history.events(),
        inflight: b.inflight.load(Ordering::Relaxed) as u32,
        requests: b.stats.requests.load(Ordering::Relaxed),
        errors: b.stats.errors.load(Ordering::Relaxed),
        failovers_in: b.stats.failovers_in.load(Ordering::Relaxed),
        rescue_probes: b.stats.rescue_probes.load(Ordering::Relaxed),
        rescue_probes_failed: b.stats.rescue_probes_failed.load(Ordering::Relaxed),
        rescued: b.stats.rescued.load(Ordering::Relaxed),
        idle_connections: b.pool.idle_count(),
        parked_connections: b.pool.parked_count(),
        sessions_remaining: out_of_rotation.then_some(sessions.current),
        drained: out_of_rotation && sessions.current == 0,
        sessions,
        responses: Responses { c1, c2, c3, c4, c5 },
        latency_ms: Latency {
            avg: ms(lat.mean()),
            p50: ms(lat.quantile(0.5)),
            p95: ms(lat.quantile(0.95)),
            p99: ms(lat.quantile(0.99)),
        },
    }
}

/// Snapshot of everything.
pub fn snapshot(admin: &Admin) -> Status {
    let rt = admin.proxy.runtime();
    let counts = rt.store.counts();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: (admin.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        config_file: admin.reloader.path().map(|p| p.display().to_string()),
        reloads: admin.reloader.stats(),
        backends: rt
            .table
            .backends
            .iter()
            .map(|b| backend(b, sessions_of(&counts, b.route())))
            .collect(),
        store: rt.store.status(),
        connections: admin.stats.connections.load(Ordering::Relaxed),
        tls_handshake_failures: admin.stats.tls_handshake_failures.load(Ordering::Relaxed),
        header_timeouts: admin.stats.header_timeouts.load(Ordering::Relaxed),
        idle_timeouts: admin.stats.idle_timeouts.load(Ordering::Relaxed),
        connection_limit_reached: admin.stats.connection_limit_reached.load(Ordering::Relaxed),
        parked_connections: admin.stats.parked.load(Ordering::Relaxed),
        retries: rt.stats.retries.load(Ordering::Relaxed),
        access_log_dropped: admin.proxy.access_log().map_or(0, |l| l.dropped()),
    }
}

/// The row of one route right now, for an action's answer.
pub fn backend_by_route(admin: &Admin, route: &str) -> Option<BackendStatus> {
    let rt = admin.proxy.runtime();
    let b = &rt.table.backends[rt.table.index_of(route)?];
    Some(backend(b, sessions_of(&rt.store.counts(), route)))
}

/// One route's counts out of the store's list (zero when it has none yet).
pub(super) fn sessions_of(counts: &[(Arc<str>, SessionCounts)], route: &str) -> SessionCounts {
    counts
        .iter()
        .find(|(r, _)| **r == *route)
        .map(|(_, c)| c.clone())
        .unwrap_or_default()
}
