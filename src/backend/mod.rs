//! Backends: one runtime object per application node, with its
//! administrative state, health, counters and upstream connection pool.
//!
//! Everything a request reads here is an atomic, so health and state changes
//! made by one task (health checker, a failing request, the admin API) are
//! seen by every request at once without locks.

pub mod health;
pub mod pool;

use crate::config::{BackendConfig, InitialState};
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use pool::{Pool, PoolSettings};

/// Administrative state, as an operator (or the config) sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    /// Takes new and existing sessions.
    Active = 0,
    /// Keeps serving its existing sessions, takes no new ones (rolling restarts).
    Draining = 1,
    /// Takes no traffic; its sessions fail over.
    Disabled = 2,
}

impl AdminState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => AdminState::Active,
            1 => AdminState::Draining,
            _ => AdminState::Disabled,
        }
    }
}

impl From<InitialState> for AdminState {
    fn from(s: InitialState) -> Self {
        match s {
            InitialState::Active => AdminState::Active,
            InitialState::Draining => AdminState::Draining,
            InitialState::Disabled => AdminState::Disabled,
        }
    }
}

/// Cookie attributes the backend last used for the session cookie, reused
/// when the balancer has to write the cookie itself after a failover.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CookieTemplate {
    pub path: Option<String>,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: Option<String>,
}

/// One application node at run time.
pub struct Backend {
    pub config: BackendConfig,
    state: AtomicU8,
    up: AtomicBool,
    /// When the health flag last changed (for the status API).
    last_change: std::sync::Mutex<Instant>,
    pub inflight: AtomicU32,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub failovers_in: AtomicU64,
    pub cookie_template: ArcSwapOption<CookieTemplate>,
    pub pool: Pool,
    /// Consecutive good/bad health verdicts (rise/fall), shared by active
    /// and passive checks so a passive failure restarts the rise count.
    pub(crate) ok_streak: AtomicU32,
    pub(crate) fail_streak: AtomicU32,
    /// A backoff probe task is running (active checks off).
    pub(crate) probing: AtomicBool,
    /// Bumped on every health change, so watchers notice transitions.
    health_epoch: AtomicU64,
}

impl Backend {
    /// Build the runtime object; it starts healthy (like HAProxy) so traffic
    /// flows at once, and the first checks correct that within `fall` rounds.
    pub fn new(config: BackendConfig, pool: PoolSettings) -> Self {
        let state = AdminState::from(config.state) as u8;
        Backend {
            pool: Pool::new(&config, pool),
            config,
            state: AtomicU8::new(state),
            up: AtomicBool::new(true),
            last_change: std::sync::Mutex::new(Instant::now()),
            inflight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            failovers_in: AtomicU64::new(0),
            cookie_template: ArcSwapOption::empty(),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            health_epoch: AtomicU64::new(0),
        }
    }

    /// The route (jvmRoute) naming this backend.
    pub fn route(&self) -> &str {
        &self.config.route
    }

    /// Current administrative state.
    pub fn state(&self) -> AdminState {
        AdminState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Change the administrative state (config, admin API).
    pub fn set_state(&self, s: AdminState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// Whether health checks (active or passive) consider it reachable.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Record a health verdict; returns true if this changed the flag, so the
    /// caller logs each transition once.
    pub fn set_up(&self, up: bool) -> bool {
        let changed = self.up.swap(up, Ordering::AcqRel) != up;
        if changed {
            self.health_epoch.fetch_add(1, Ordering::AcqRel);
            if let Ok(mut t) = self.last_change.lock() {
                *t = Instant::now();
            }
        }
        changed
    }

    /// Counter of health changes (see `health_epoch`).
    pub fn health_epoch(&self) -> u64 {
        self.health_epoch.load(Ordering::Acquire)
    }

    /// Seconds since the health flag last changed.
    pub fn since_change(&self) -> f64 {
        self.last_change
            .lock()
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0)
    }

    /// May serve requests of sessions it already holds.
    pub fn serves_sessions(&self) -> bool {
        self.is_up() && matches!(self.state(), AdminState::Active | AdminState::Draining)
    }

    /// May be given new sessions.
    pub fn takes_new(&self) -> bool {
        self.is_up() && self.state() == AdminState::Active
    }

    /// Remember the backend's cookie attributes if they changed.
    pub fn note_cookie_template(&self, t: CookieTemplate) {
        let cur = self.cookie_template.load();
        if cur.as_deref() != Some(&t) {
            self.cookie_template.store(Some(Arc::new(t)));
        }
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("route", &self.route())
            .field("state", &self.state())
            .field("up", &self.is_up())
            .finish()
    }
}
