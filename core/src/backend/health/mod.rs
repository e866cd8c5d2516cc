//! Health: active HTTP checks on an interval and passive detection from
//! real traffic. Both only flip the backend's atomic `up` flag (in its
//! [`Health`]), which every request reads; selection never waits on a
//! check. This module runs the checks and probes and does what follows a
//! change (clearing the pool, logging); [`state`] holds the flag and the
//! counters, [`rise_fall`] the hysteresis as a pure value.

mod rise_fall;
mod state;

pub use rise_fall::{Outcome, RiseFall};
pub use state::Health;

use super::upstream_body::UpstreamBody;
use super::Backend;
use crate::config::raw::HealthSection;
use http::{Request, StatusCode};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

/// Start the active checker of one backend, replacing the one it had (a
/// reload with new health settings). It stops by itself once the backend
/// is dropped (removed by a reload, or shutdown) or a newer checker starts.
pub fn spawn_checker(backend: &Arc<Backend>, cfg: Arc<HealthSection>) {
    let generation = backend.health.next_checker();
    if !cfg.enabled {
        return;
    }
    let weak = Arc::downgrade(backend);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(b) = weak.upgrade() else { break };
            if !b.health.is_current_checker(generation) {
                break;
            }
            let ok = check_once(&b, &cfg).await;
            record(&b, &cfg, ok);
        }
    });
}

/// One HTTP check on a fresh connection (never a pooled one: a check must
/// prove the backend still accepts connections).
async fn check_once(b: &Backend, cfg: &HealthSection) -> Result<(), String> {
    if let Some(ajp) = &b.ajp {
        return check_ajp(ajp, cfg).await;
    }
    let attempt = async {
        let mut sender = b.pool.connect_any().await.map_err(|e| e.to_string())?;
        let uri = if b.config.http2 {
            let scheme = if b.config.tls { "https" } else { "http" };
            format!("{scheme}://{}{}", b.config.authority, cfg.path)
        } else {
            cfg.path.clone()
        };
        let req = Request::get(uri)
            .header(http::header::HOST, &*b.config.authority)
            .header(http::header::USER_AGENT, "stickgate-health")
            .header(http::header::CONNECTION, "close")
            .body(UpstreamBody::Empty)
            .map_err(|e| e.to_string())?;
        let res = sender
            .try_send(req)
            .await
            .map_err(|e| e.into_error().to_string())?;
        let status = res.status();
        if status_ok(cfg, status) {
            Ok(())
        } else {
            Err(format!("status {}", status.as_u16()))
        }
    };
    match tokio::time::timeout(cfg.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
    }
}

/// The check of an AJP backend: a CPing (`ping_mode` has `interval`) or
/// the health path over AJP, bounded by `timeout` like an HTTP check.
async fn check_ajp(ajp: &super::ajp::AjpPool, cfg: &HealthSection) -> Result<(), String> {
    match tokio::time::timeout(cfg.timeout, ajp.check(&cfg.path)).await {
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(status))) if status_ok(cfg, status) => Ok(()),
        Ok(Ok(Some(status))) => Err(format!("status {}", status.as_u16())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
    }
}

fn status_ok(cfg: &HealthSection, s: StatusCode) -> bool {
    if cfg.expect_status.is_empty() {
        s.is_success() || s.is_redirection()
    } else {
        cfg.expect_status.contains(&s.as_u16())
    }
}

/// Apply one active verdict with rise/fall hysteresis.
fn record(b: &Backend, cfg: &HealthSection, verdict: Result<(), String>) {
    b.health.checked();
    let (outcome, reason) = match &verdict {
        Ok(()) => (Outcome::Pass, "health check passed"),
        Err(why) => (Outcome::Fail, why.as_str()),
    };
    let Some((up, streak)) = b.health.observe(outcome, cfg.rise, cfg.fall) else {
        return;
    };
    if !b.set_up(up, reason) {
        return;
    }
    if up {
        tracing::info!(
            backend = b.route(),
            "backend is up (health check passed {streak} times)"
        );
    } else {
        b.pool.clear();
        tracing::warn!(backend = b.route(), reason = %reason, "backend is down (health check failed {streak} times)");
    }
}

/// Passive detection: real traffic just failed on this backend in a way
/// that means it is unreachable (connect error, timeout, reset). Mark it
/// down at once so no other request waits on it; it comes back through the
/// active checker, or a backoff probe when active checks are off.
pub fn mark_down(backend: &Arc<Backend>, cfg: &Arc<HealthSection>, reason: &str) {
    if backend
        .health
        .mark_down(reason, &backend.stats.health_history)
    {
        backend.pool.clear();
        tracing::warn!(
            backend = backend.route(),
            reason,
            "backend marked down by live traffic"
        );
    }
    if !cfg.enabled && backend.health.start_probing() {
        spawn_probe(Arc::downgrade(backend), cfg.clone());
    }
}

/// Passive failure counting: a request that failed on a backend without
/// proving it unreachable (a response timeout: the node may just be slow
/// on that URL) counts toward `fall`; `fall` consecutive failures mark it
/// down. Slow is not dead: one timeout never ejects a node.
pub fn note_failure(backend: &Arc<Backend>, cfg: &Arc<HealthSection>, reason: &str) {
    let streak = backend.health.note_failure(cfg.fall);
    fall_reached(backend, cfg, streak, reason);
}

/// `fall` passive failures in a row (`streak`, when reached) mark the
/// backend down, naming the last one.
fn fall_reached(backend: &Arc<Backend>, cfg: &Arc<HealthSection>, streak: Option<u32>, last: &str) {
    if let Some(n) = streak {
        mark_down(
            backend,
            cfg,
            &format!("{n} consecutive failures, the last: {last}"),
        );
    }
}

/// Passive counting from a response: with `passive_5xx`, `fall`
/// consecutive 5xx answers mark the backend down; any other answer ends a
/// streak of failures (timeouts included).
pub fn note_status(backend: &Arc<Backend>, cfg: &Arc<HealthSection>, status: StatusCode) {
    let fails = backend
        .health
        .note_5xx(status.is_server_error(), cfg.passive_5xx, cfg.fall);
    fall_reached(backend, cfg, fails, "5xx answer");
}

/// Hung-node rescue: a request has waited `suspect_after` for its response
/// head on this backend. Probe it now on a fresh connection (the health
/// check, bounded by `health.timeout`); if the probe fails the backend is
/// marked down at once, which wakes every request waiting on it (see
/// [`Backend::watch_down`]). At most one probe is in flight per backend,
/// and after a passing probe the next waits `suspect_after`, so a backend
/// that is merely slow on some URL costs one cheap check now and then.
pub fn suspect(backend: &Arc<Backend>, cfg: &Arc<HealthSection>) {
    if !cfg.suspect_after.is_zero() {
        probe_now(backend, cfg, cfg.suspect_after);
    }
}

/// A node was seen closing its pooled connections (a reset or close of a
/// reused connection before any answer, or idle connections found closed
/// by the peer): the first sign of a graceful stop. Probe it now, as for a
/// suspected hang; a node going away resets the probe's fresh connection,
/// is marked down, and stops taking new sessions before health checks
/// notice. A node that merely timed out an idle connection passes.
pub fn closing_seen(backend: &Arc<Backend>, cfg: &Arc<HealthSection>) {
    probe_now(backend, cfg, cfg.suspect_after.max(CLOSING_PROBE_COOLDOWN));
}

/// Least time between two going-away probes of one node after one passed
/// (backends with short keep-alive timeouts close idle connections often).
const CLOSING_PROBE_COOLDOWN: std::time::Duration = std::time::Duration::from_millis(500);

/// One rescue probe of `backend` unless one is in flight or one passed
/// less than `cooldown` ago; a failed probe marks it down.
fn probe_now(backend: &Arc<Backend>, cfg: &Arc<HealthSection>, cooldown: std::time::Duration) {
    if !backend.health.begin_rescue(cooldown) {
        return;
    }
    backend.stats.rescue_probes.fetch_add(1, Ordering::Relaxed);
    let (b, cfg) = (backend.clone(), cfg.clone());
    tokio::spawn(async move {
        match check_once(&b, &cfg).await {
            Ok(()) => {
                b.health.rescue_passed();
                b.pool.forget_closes();
                tracing::debug!(backend = b.route(), "rescue probe passed: backend is alive");
            }
            Err(why) => {
                b.stats.rescue_probes_failed.fetch_add(1, Ordering::Relaxed);
                mark_down(&b, &cfg, &format!("rescue probe failed: {why}"));
            }
        }
        b.health.end_rescue();
    });
}

/// With active checks off, re-admit a failed backend once it accepts TCP
/// connections again, probing with exponential backoff.
fn spawn_probe(weak: Weak<Backend>, cfg: Arc<HealthSection>) {
    tokio::spawn(async move {
        let mut wait = cfg.probe_backoff;
        loop {
            tokio::time::sleep(wait).await;
            let Some(b) = weak.upgrade() else { return };
            if b.is_up() {
                b.health.stop_probing();
                return;
            }
            if b.pool.connect_any().await.is_ok() {
                if b.health.probe_connected(&b.stats.health_history) {
                    tracing::info!(backend = b.route(), "backend is up again (probe connected)");
                }
                b.health.stop_probing();
                return;
            }
            wait = (wait * 2).min(cfg.probe_backoff_max);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::PoolSettings;
    use crate::config::BackendConfig;

    fn backend() -> Arc<Backend> {
        let cfg = BackendConfig::plain("t1", "127.0.0.1", 1, 1);
        let pool = PoolSettings::from_upstream(&Default::default());
        Arc::new(Backend::new(cfg, pool))
    }

    fn health(rise: u32, fall: u32) -> HealthSection {
        HealthSection {
            rise,
            fall,
            ..HealthSection::default()
        }
    }

    #[test]
    fn fall_then_rise_hysteresis() {
        let b = backend();
        let h = health(2, 3);
        record(&b, &h, Err("x".into()));
        record(&b, &h, Err("x".into()));
        assert!(b.is_up(), "two failures are below fall=3");
        record(&b, &h, Err("x".into()));
        assert!(!b.is_up());
        record(&b, &h, Ok(()));
        assert!(!b.is_up(), "one success is below rise=2");
        record(&b, &h, Ok(()));
        assert!(b.is_up());
    }

    #[test]
    fn passive_failure_restarts_the_rise_count() {
        let b = backend();
        let h = Arc::new(health(2, 1));
        record(&b, &h, Ok(()));
        record(&b, &h, Ok(()));
        record(&b, &h, Ok(()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { mark_down(&b, &h, "test") });
        assert!(!b.is_up());
        record(&b, &h, Ok(()));
        assert!(!b.is_up(), "earlier successes must not re-admit at once");
        record(&b, &h, Ok(()));
        assert!(b.is_up());
    }

    #[test]
    fn timeouts_mark_down_only_after_fall_in_a_row() {
        let b = backend();
        let h = Arc::new(health(2, 3));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            note_failure(&b, &h, "timeout");
            note_failure(&b, &h, "timeout");
            note_status(&b, &h, StatusCode::OK);
            note_failure(&b, &h, "timeout");
            note_failure(&b, &h, "timeout");
            assert!(b.is_up(), "an answer in between restarts the count");
            note_failure(&b, &h, "timeout");
            assert!(!b.is_up(), "fall=3 failures in a row");
        });
    }

    #[test]
    fn going_down_wakes_watchers() {
        let b = backend();
        let mut rx = b.watch_down();
        assert!(!rx.has_changed().unwrap());
        b.set_up(false, "test");
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        b.set_up(true, "test");
        assert!(
            !rx.has_changed().unwrap(),
            "coming up is no news to waiters"
        );
    }

    #[test]
    fn passive_5xx_counts_only_when_enabled() {
        let b = backend();
        let off = Arc::new(health(2, 2));
        note_status(&b, &off, StatusCode::BAD_GATEWAY);
        note_status(&b, &off, StatusCode::BAD_GATEWAY);
        assert!(b.is_up());
        let on = Arc::new(HealthSection {
            passive_5xx: true,
            ..health(2, 2)
        });
        note_status(&b, &on, StatusCode::INTERNAL_SERVER_ERROR);
        note_status(&b, &on, StatusCode::OK);
        note_status(&b, &on, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(b.is_up(), "a success in between resets the count");
        note_status(&b, &on, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!b.is_up());
    }

    /// A one-shot HTTP server on loopback answering `status_line`; its port.
    fn answer_once(status_line: &'static str) -> u16 {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = write!(s, "{status_line}\r\ncontent-length: 0\r\n\r\n");
            }
        });
        port
    }

    fn check(port: u16) -> Result<(), String> {
        let cfg = BackendConfig::plain("t1", "127.0.0.1", port, 1);
        let b = Backend::new(cfg, PoolSettings::from_upstream(&Default::default()));
        let h = HealthSection {
            timeout: std::time::Duration::from_secs(5),
            ..HealthSection::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(check_once(&b, &h))
    }

    #[test]
    fn check_once_passes_a_2xx_and_fails_an_error_status_or_refusal() {
        assert_eq!(check(answer_once("HTTP/1.1 200 OK")), Ok(()));
        assert_eq!(
            check(answer_once("HTTP/1.1 503 Service Unavailable")),
            Err("status 503".to_owned())
        );
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(check(refused).is_err(), "nothing listens on {refused}");
    }

    #[test]
    fn a_passed_rescue_probe_holds_off_the_next_for_the_cooldown() {
        let port = answer_once("HTTP/1.1 200 OK");
        let cfg = BackendConfig::plain("t1", "127.0.0.1", port, 1);
        let b = Arc::new(Backend::new(
            cfg,
            PoolSettings::from_upstream(&Default::default()),
        ));
        let h = Arc::new(HealthSection {
            timeout: std::time::Duration::from_secs(5),
            ..HealthSection::default()
        });
        let cooldown = std::time::Duration::from_secs(60);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            probe_now(&b, &h, cooldown);
            for _ in 0..500 {
                if !b.health.rescue_probing.load(Ordering::Acquire) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_ne!(
                b.health.rescue_ok_ms.load(Ordering::Relaxed),
                0,
                "probe passed"
            );
            probe_now(&b, &h, cooldown);
        });
        assert_eq!(b.stats.rescue_probes.load(Ordering::Relaxed), 1);
        assert!(b.is_up());
    }
}
