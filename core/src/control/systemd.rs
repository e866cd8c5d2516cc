//! systemd's service notifications (`Type=notify`, sd_notify(3)): `READY=1`
//! once the listeners are bound and every backend was checked once, so
//! units ordered after stickgate start against a balancer that routes;
//! `RELOADING=1` and `READY=1` around a reload, so `systemctl reload` waits
//! for it; `STATUS=` with a one-line summary for `systemctl status`;
//! `WATCHDOG=1` pings when the unit sets `WatchdogSec`. Outside systemd
//! (no `NOTIFY_SOCKET`) every call does nothing.

use sd_notify::NotifyState;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Send `states`; a failure is logged once (the manager may be gone while
/// the balancer keeps serving, which must not flood the log).
fn send(states: &[NotifyState<'_>]) {
    static FAILED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = sd_notify::notify(states) {
        if !FAILED.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET); service status may be stale");
        }
    }
}

/// Whether a service manager listens for notifications.
pub fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Startup (or a reload) finished: the balancer accepts and routes.
/// `status` is only worked out when a service manager listens.
pub fn ready(status: impl FnOnce() -> String) {
    if under_systemd() {
        send(&[NotifyState::Ready, NotifyState::Status(&status())]);
    }
}

/// A reload started; [`ready`] ends it. systemd 253 and later require the
/// monotonic timestamp with it.
pub fn reloading() {
    if !under_systemd() {
        return;
    }
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The balancer stops accepting and drains (SIGTERM).
pub fn stopping() {
    if under_systemd() {
        send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    }
}

/// A binary upgrade hands the service to process `pid` (see
/// `takeover::upgrade`): from now on systemd expects its notifications and
/// watches its exit. Sent by the old main process, so `NotifyAccess=main`
/// accepts it.
pub fn main_pid(pid: u32) {
    if under_systemd() {
        send(&[
            NotifyState::MainPid(pid),
            NotifyState::Status("handing over to the new binary"),
        ]);
    }
}

/// Replace the one-line status `systemctl status` shows.
pub fn status(line: &str) {
    if under_systemd() {
        send(&[NotifyState::Status(line)]);
    }
}

/// When the unit sets `WatchdogSec`, ping at half that interval from the
/// control-plane runtime for as long as it runs: a wedged runtime stops
/// the pings and systemd restarts the service.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let every = watchdog_interval(sd_notify::watchdog_enabled()?);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    }))
}

/// Half the watchdog timeout (systemd's advice), at least 50 ms.
fn watchdog_interval(timeout: Duration) -> Duration {
    (timeout / 2).max(Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_pings_at_half_the_timeout() {
        assert_eq!(
            watchdog_interval(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
        assert_eq!(
            watchdog_interval(Duration::from_millis(20)),
            Duration::from_millis(50)
        );
    }
}
