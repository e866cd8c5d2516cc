//! Backends: one runtime object per application node, with its
//! administrative state, health, counters and upstream connection pool.
//!
//! Everything a request reads here is an atomic, so health and state changes
//! made by one task (health checker, a failing request, the admin API) are
//! seen by every request at once without locks.

pub mod ajp;
pub mod h1;
pub mod health;
pub mod pool;
pub mod pool_conn;
pub mod stats;
pub mod upstream_body;

use crate::config::BackendConfig;
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use crate::admin_state::AdminState;
pub use health::Health;
pub use pool::{Pool, PoolSettings};

/// Cookie attributes the backend last used for the session cookie, reused
/// when the balancer has to write the cookie itself after a failover.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CookieTemplate {
    pub path: Option<String>,
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: Option<String>,
    /// The attribute part of the Set-Cookie it was read from (from the
    /// first `;`): a header with the same part has the same attributes, so
    /// learning a new session skips parsing them again.
    pub attrs: Box<str>,
    /// Those attributes carry `Max-Age` or `Expires`: whether the cookie
    /// is a removal depends on them, so they are read every time.
    pub expiring: bool,
}

/// One application node at run time.
pub struct Backend {
    pub config: BackendConfig,
    state: AtomicU8,
    /// Requests in flight (striped per request thread, see
    /// [`stats::Striped`]).
    pub inflight: stats::Striped,
    /// Traffic and health counters; shared with the backend's successor
    /// after a reload changes its settings, so counters never reset.
    pub stats: Arc<stats::Counters>,
    /// Unix milliseconds of the admin change that set `state` (0 = from the
    /// config), so the newest change wins when balancers share states.
    state_at_ms: AtomicU64,
    pub cookie_template: ArcSwapOption<CookieTemplate>,
    pub pool: Pool,
    /// Reachability: the up flag every request reads, and the counters and
    /// probes that change it (see [`health`]).
    pub health: Health,
    /// The AJP connection pool of an `ajp://` backend (`None` for HTTP).
    pub ajp: Option<ajp::AjpPool>,
}

impl Backend {
    /// Build the runtime object; it starts healthy (like HAProxy) so traffic
    /// flows at once, and the first checks correct that within `fall` rounds.
    pub fn new(config: BackendConfig, pool: PoolSettings) -> Self {
        let state = config.state as u8;
        let ajp = (config.ajp.as_ref()).map(|o| ajp::AjpPool::new(&config, (**o).clone(), &pool));
        Backend {
            ajp,
            pool: Pool::new(&config, pool),
            config,
            state: AtomicU8::new(state),
            inflight: stats::Striped::default(),
            stats: Arc::default(),
            state_at_ms: AtomicU64::new(0),
            cookie_template: ArcSwapOption::empty(),
            health: Health::new(),
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
            b.health.carry_over(&old.health);
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
        self.health.is_up()
    }

    /// Record a health verdict and why; returns true if this changed the
    /// flag, so the caller logs each transition once.
    pub fn set_up(&self, up: bool, reason: &str) -> bool {
        let changed = self.health.set_up(up, reason, &self.stats.health_history);
        if changed && !up {
            if let Some(a) = &self.ajp {
                a.clear();
            }
        }
        changed
    }

    /// A receiver that changes when this backend next goes down. Only
    /// requests that already waited `health.suspect_after` subscribe, so
    /// the fast path never touches the channel; subscribe first, then
    /// check [`Backend::is_up`], and no transition can slip between.
    pub fn watch_down(&self) -> tokio::sync::watch::Receiver<u64> {
        self.health.watch_down()
    }

    /// Whether a rescue probe passed after `t` (see `health::suspect`).
    pub fn probed_ok_since(&self, t: Instant) -> bool {
        self.health.probed_ok_since(t)
    }

    /// Counter of health changes, so pollers notice transitions.
    pub fn health_epoch(&self) -> u64 {
        self.health.epoch()
    }

    /// Seconds since the health flag last changed.
    pub fn since_change(&self) -> f64 {
        self.health.since_change()
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
