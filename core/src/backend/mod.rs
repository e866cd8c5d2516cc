//! Backends: one runtime object per application node, with its
//! administrative state, health, counters and upstream connection pool.
//!
//! Everything a request reads here is an atomic, so health and state changes
//! made by one task (health checker, a failing request, the admin API) are
//! seen by every request at once without locks.

pub mod ajp;
pub mod health;
pub mod pool;
pub mod stats;

use crate::config::{BackendConfig, InitialState};
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use pool::{Pool, PoolSettings};

/// Administrative state, as an operator (or the config) sets it; the
/// meanings follow mod_jk's activation so migrating operators keep theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    /// Takes new and existing sessions.
    Active = 0,
    /// Rolling restarts: keeps serving its existing sessions until they end
    /// or expire, takes no new ones while an active backend can.
    Draining = 1,
    /// mod_jk's "disabled": only requests of sessions it already holds;
    /// never new sessions, never another node's orphans.
    Disabled = 2,
    /// mod_jk's "stopped": no traffic at all; its sessions fail over now.
    Stopped = 3,
}

impl AdminState {
    /// Every state, in code order.
    pub const ALL: [AdminState; 4] = [
        AdminState::Active,
        AdminState::Draining,
        AdminState::Disabled,
        AdminState::Stopped,
    ];

    /// The state with this code (`state as u8`, also the multicast wire
    /// number); `None` for a code this build does not know, so a peer's
    /// garbage is refused, never mapped to some other state.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u8 == code)
    }

    /// The state named `name` ([`AdminState::as_str`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The name used in the API, the config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Active => "active",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
            AdminState::Stopped => "stopped",
        }
    }

    /// The state an admin action (`enable`, `drain`, `disable`, `stop`)
    /// sets; `None` for an unknown action.
    pub fn from_action(action: &str) -> Option<Self> {
        Some(match action {
            "enable" => AdminState::Active,
            "drain" => AdminState::Draining,
            "disable" => AdminState::Disabled,
            "stop" => AdminState::Stopped,
            _ => return None,
        })
    }
}

impl std::fmt::Display for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<InitialState> for AdminState {
    fn from(s: InitialState) -> Self {
        match s {
            InitialState::Active => AdminState::Active,
            InitialState::Draining => AdminState::Draining,
            InitialState::Disabled => AdminState::Disabled,
            InitialState::Stopped => AdminState::Stopped,
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
    /// Traffic and health counters; shared with the backend's successor
    /// after a reload changes its settings, so counters never reset.
    pub stats: Arc<stats::Counters>,
    /// Unix milliseconds of the admin change that set `state` (0 = from the
    /// config), so the newest change wins when balancers share states.
    state_at_ms: AtomicU64,
    pub cookie_template: ArcSwapOption<CookieTemplate>,
    pub pool: Pool,
    /// The AJP connection pool of an `ajp://` backend (`None` for HTTP).
    pub ajp: Option<ajp::AjpPool>,
    /// Consecutive good/bad health verdicts (rise/fall), shared by active
    /// and passive checks so a passive failure restarts the rise count.
    pub(crate) ok_streak: AtomicU32,
    pub(crate) fail_streak: AtomicU32,
    /// Consecutive failed requests (timeouts, and 5xx with `passive_5xx`);
    /// any other answer resets it (see `health::note_failure`).
    pub(crate) passive_streak: AtomicU32,
    /// A backoff probe task is running (active checks off).
    pub(crate) probing: AtomicBool,
    /// Bumped on every health change, so watchers notice transitions.
    health_epoch: AtomicU64,
    /// Which active checker is current (see `health::spawn_checker`).
    pub(crate) checker_generation: AtomicU64,
    /// Bumped each time the backend goes down, so requests waiting on it
    /// for a response head learn it at once (see [`Backend::watch_down`]).
    down: tokio::sync::watch::Sender<u64>,
    /// A hung-node rescue probe is in flight (at most one per backend).
    pub(crate) rescue_probing: AtomicBool,
    /// When the last rescue probe passed (ms on `Backend::born`), so a
    /// merely slow backend is not probed more than once per `suspect_after`.
    pub(crate) rescue_ok_ms: AtomicU64,
    /// Origin of the millisecond clocks above.
    pub(crate) born: Instant,
}

impl Backend {
    /// Build the runtime object; it starts healthy (like HAProxy) so traffic
    /// flows at once, and the first checks correct that within `fall` rounds.
    pub fn new(config: BackendConfig, pool: PoolSettings) -> Self {
        let state = AdminState::from(config.state) as u8;
        let ajp = (config.ajp.as_ref()).map(|o| ajp::AjpPool::new(&config, (**o).clone(), &pool));
        Backend {
            ajp,
            pool: Pool::new(&config, pool),
            config,
            state: AtomicU8::new(state),
            up: AtomicBool::new(true),
            last_change: std::sync::Mutex::new(Instant::now()),
            inflight: AtomicU32::new(0),
            stats: Arc::default(),
            state_at_ms: AtomicU64::new(0),
            cookie_template: ArcSwapOption::empty(),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            passive_streak: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            health_epoch: AtomicU64::new(0),
            checker_generation: AtomicU64::new(0),
            down: tokio::sync::watch::Sender::new(0),
            rescue_probing: AtomicBool::new(false),
            rescue_ok_ms: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// The successor of `old` after a reload changed its settings: keeps
    /// what an operator set at run time (unless the file now sets another
    /// state), its counters, and, when it is still the same server, its
    /// health and learned cookie attributes, so a weight change neither
    /// resurrects a dead node, forgets a drain nor resets `/metrics`.
    pub fn succeed(old: &Backend, config: BackendConfig, pool: PoolSettings) -> Self {
        let same_server = old.config.authority == config.authority && old.config.tls == config.tls;
        let keep_state = old.config.state == config.state;
        let mut b = Backend::new(config, pool);
        b.stats = old.stats.clone();
        if keep_state {
            b.state.store(old.state() as u8, Ordering::Relaxed);
            b.state_at_ms.store(old.state_at_ms(), Ordering::Relaxed);
        }
        if same_server {
            b.up.store(old.is_up(), Ordering::Relaxed);
            if let (Ok(mut mine), Ok(theirs)) = (b.last_change.lock(), old.last_change.lock()) {
                *mine = *theirs;
            }
            b.cookie_template.store(old.cookie_template.load_full());
        }
        b
    }

    /// The route (jvmRoute) naming this backend.
    pub fn route(&self) -> &str {
        &self.config.route
    }

    /// Current administrative state.
    pub fn state(&self) -> AdminState {
        AdminState::from_code(self.state.load(Ordering::Relaxed)).unwrap_or(AdminState::Stopped)
    }

    /// Change the administrative state as of `at_ms` (Unix milliseconds of
    /// the operator's action); an older change than the one in force is
    /// ignored, so replicated changes converge on the newest. Returns
    /// whether the state changed.
    pub fn set_state(&self, s: AdminState, at_ms: u64) -> bool {
        if at_ms < self.state_at_ms.load(Ordering::Acquire) {
            return false;
        }
        self.state_at_ms.store(at_ms, Ordering::Release);
        self.state.swap(s as u8, Ordering::AcqRel) != s as u8
    }

    /// When the state in force was set (0 = by the config).
    pub fn state_at_ms(&self) -> u64 {
        self.state_at_ms.load(Ordering::Acquire)
    }

    /// Whether health checks (active or passive) consider it reachable.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Record a health verdict and why; returns true if this changed the
    /// flag, so the caller logs each transition once.
    pub fn set_up(&self, up: bool, reason: &str) -> bool {
        let changed = self.up.swap(up, Ordering::AcqRel) != up;
        if changed {
            if !up {
                self.down.send_modify(|n| *n += 1);
                if let Some(a) = &self.ajp {
                    a.clear();
                }
            }
            self.stats.health_history.push(up, reason);
            self.health_epoch.fetch_add(1, Ordering::AcqRel);
            if let Ok(mut t) = self.last_change.lock() {
                *t = Instant::now();
            }
        }
        changed
    }

    /// A receiver that changes when this backend next goes down. Only
    /// requests that already waited `health.suspect_after` subscribe, so
    /// the fast path never touches the channel; subscribe first, then
    /// check [`Backend::is_up`], and no transition can slip between.
    pub fn watch_down(&self) -> tokio::sync::watch::Receiver<u64> {
        self.down.subscribe()
    }

    /// Whether a rescue probe passed after `t` (see `health::suspect`).
    pub fn probed_ok_since(&self, t: Instant) -> bool {
        let at = self.rescue_ok_ms.load(Ordering::Relaxed);
        let since = t.saturating_duration_since(self.born).as_millis() as u64;
        at != 0 && at >= since
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
        self.is_up() && self.state() != AdminState::Stopped
    }

    /// May be given new sessions.
    pub fn takes_new(&self) -> bool {
        self.is_up() && self.state() == AdminState::Active
    }

    /// May be given a new or orphaned session when no active backend can:
    /// a draining node is the last resort (a site that is up beats a
    /// perfect drain), a disabled one never is.
    pub fn takes_new_as_last_resort(&self) -> bool {
        self.is_up() && matches!(self.state(), AdminState::Active | AdminState::Draining)
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
