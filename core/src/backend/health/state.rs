//! [`Health`]: everything a backend knows about its own reachability, in
//! one place. Requests read the flag (an atomic load); checkers, probes and
//! failing requests change it through the methods here, which only decide
//! and record. What follows a change (clearing the pool, logging, starting
//! a probe) is done by the caller in the `health` module, which has the
//! whole backend.

use super::rise_fall::{Outcome, RiseFall};
use crate::backend::stats::HealthHistory;
use crate::lock::lock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One backend's health state.
pub struct Health {
    /// Whether checks (active or passive) consider it reachable.
    up: AtomicBool,
    /// When the flag last changed (for the status API).
    last_change: Mutex<Instant>,
    /// Consecutive good/bad verdicts (rise/fall), shared by active and
    /// passive checks so a passive failure restarts the rise count.
    streak: Mutex<RiseFall>,
    /// Consecutive failed requests (timeouts, and 5xx with `passive_5xx`);
    /// any other answer resets it.
    passive_streak: AtomicU32,
    /// A backoff probe task is running (active checks off).
    probing: AtomicBool,
    /// Bumped on every change, so watchers notice transitions.
    epoch: AtomicU64,
    /// Which active checker is current (see `health::spawn_checker`).
    checker_generation: AtomicU64,
    /// Bumped each time the backend goes down, so requests waiting on it
    /// for a response head learn it at once (see [`Health::watch_down`]).
    down: tokio::sync::watch::Sender<u64>,
    /// A hung-node rescue probe is in flight (at most one per backend).
    pub(super) rescue_probing: AtomicBool,
    /// When the last rescue probe passed (ms on `born`, 0 = never), so a
    /// merely slow backend is not probed more than once per cooldown.
    pub(super) rescue_ok_ms: AtomicU64,
    /// Origin of the millisecond clock above.
    born: Instant,
    /// Active checks completed (passed or failed), so startup can wait for
    /// the first round before telling systemd it is ready.
    checks: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// A backend starts healthy (like HAProxy) so traffic flows at once;
    /// the first checks correct that within `fall` rounds.
    pub fn new() -> Self {
        Health {
            up: AtomicBool::new(true),
            last_change: Mutex::new(Instant::now()),
            streak: Mutex::new(RiseFall::default()),
            passive_streak: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            checker_generation: AtomicU64::new(0),
            down: tokio::sync::watch::Sender::new(0),
            rescue_probing: AtomicBool::new(false),
            rescue_ok_ms: AtomicU64::new(0),
            born: Instant::now(),
            checks: AtomicU64::new(0),
        }
    }

    /// Take over the flag and when it last changed from the health of the
    /// same server before a reload, so a settings change neither
    /// resurrects a dead node nor resets its "since".
    pub fn carry_over(&self, old: &Health) {
        self.up.store(old.is_up(), Ordering::Relaxed);
        let theirs = *lock(&old.last_change);
        *lock(&self.last_change) = theirs;
    }

    /// Whether checks consider the backend reachable.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Set the flag, recording a change (and why) in `history`; returns
    /// true if this changed it, so the caller logs each transition once.
    pub fn set_up(&self, up: bool, reason: &str, history: &HealthHistory) -> bool {
        let changed = self.up.swap(up, Ordering::AcqRel) != up;
        if changed {
            if !up {
                self.down.send_modify(|n| *n += 1);
            }
            history.push(up, reason);
            self.epoch.fetch_add(1, Ordering::AcqRel);
            *lock(&self.last_change) = Instant::now();
        }
        changed
    }

    /// Count one active check verdict with rise/fall hysteresis; returns
    /// the flag to set and the streak that decided it (see
    /// [`RiseFall::observe`]).
    pub fn observe(&self, outcome: Outcome, rise: u32, fall: u32) -> Option<(bool, u32)> {
        lock(&self.streak).observe(outcome, self.is_up(), rise, fall)
    }

    /// Live traffic proved the backend unreachable: set it down and
    /// forget the passes counted so far. True if this changed the flag.
    pub fn mark_down(&self, reason: &str, history: &HealthHistory) -> bool {
        lock(&self.streak).restart_rise();
        self.set_up(false, reason, history)
    }

    /// A probe connected after the backend went down: it is up again, and
    /// earlier failures no longer count. True if this changed the flag.
    pub fn probe_connected(&self, history: &HealthHistory) -> bool {
        lock(&self.streak).restart_fall();
        self.set_up(true, "probe connected", history)
    }

    /// A request failed on the backend without proving it unreachable.
    /// Returns the streak when it reached `fall` (and starts a new one):
    /// the backend is then to be marked down.
    pub fn note_failure(&self, fall: u32) -> Option<u32> {
        let n = self.passive_streak.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= fall {
            self.passive_streak.store(0, Ordering::Relaxed);
            return Some(n);
        }
        None
    }

    /// A response arrived: a 5xx counts as a failure when `count_5xx`
    /// (`health.passive_5xx`), any other answer ends a streak of failures.
    /// Returns the streak when it reached `fall`, as [`Health::note_failure`].
    pub fn note_5xx(&self, server_error: bool, count_5xx: bool, fall: u32) -> Option<u32> {
        if count_5xx && server_error {
            return self.note_failure(fall);
        }
        if self.passive_streak.load(Ordering::Relaxed) != 0 {
            self.passive_streak.store(0, Ordering::Relaxed);
        }
        None
    }

    /// An active check finished, whatever its verdict.
    pub fn checked(&self) {
        self.checks.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether an active check has finished since this backend started.
    pub fn checked_once(&self) -> bool {
        self.checks.load(Ordering::Relaxed) > 0
    }

    /// Claim the backoff probe; false when one is already running.
    pub fn start_probing(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    /// The backoff probe ended.
    pub fn stop_probing(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// Claim a rescue probe: false when the backend is down, a probe is in
    /// flight, or one passed less than `cooldown` ago.
    pub fn begin_rescue(&self, cooldown: Duration) -> bool {
        let now = self.born.elapsed().as_millis() as u64;
        let ok_at = self.rescue_ok_ms.load(Ordering::Relaxed);
        if ok_at != 0 && now < ok_at + cooldown.as_millis() as u64 {
            return false;
        }
        self.is_up() && !self.rescue_probing.swap(true, Ordering::AcqRel)
    }

    /// The rescue probe passed now.
    pub fn rescue_passed(&self) {
        let at = self.born.elapsed().as_millis() as u64;
        self.rescue_ok_ms.store(at.max(1), Ordering::Relaxed);
    }

    /// The rescue probe ended (passed or not).
    pub fn end_rescue(&self) {
        self.rescue_probing.store(false, Ordering::Release);
    }

    /// Whether a rescue probe passed after `t` (see `health::suspect`).
    pub fn probed_ok_since(&self, t: Instant) -> bool {
        let at = self.rescue_ok_ms.load(Ordering::Relaxed);
        let since = t.saturating_duration_since(self.born).as_millis() as u64;
        at != 0 && at >= since
    }

    /// A receiver that changes when the backend next goes down. Subscribe
    /// first, then check [`Health::is_up`], and no transition can slip
    /// between.
    pub fn watch_down(&self) -> tokio::sync::watch::Receiver<u64> {
        self.down.subscribe()
    }

    /// Counter of changes of the flag.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Seconds since the flag last changed.
    pub fn since_change(&self) -> f64 {
        lock(&self.last_change).elapsed().as_secs_f64()
    }

    /// Start a new active checker generation; the older checkers stop.
    pub fn next_checker(&self) -> u64 {
        self.checker_generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether `generation` is still the current checker.
    pub fn is_current_checker(&self, generation: u64) -> bool {
        self.checker_generation.load(Ordering::Acquire) == generation
    }
}
