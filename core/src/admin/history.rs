//! Trend history for the status page and `GET /api/history`: one point
//! per backend every `admin.history_interval` (10 s) for the last hour, and
//! a bounded list of events (state and health changes, reloads, failovers).
//!
//! Nothing here runs on the request path: a control-plane task on the main
//! runtime reads the counters the status API already shows (backend stats,
//! store counts) once a second for events and once per interval for a
//! point, and keeps differences. Memory is bounded: [`CAPACITY`] points per
//! backend in a ring allocated once, and [`EVENTS`] events of at most
//! [`TEXT_MAX`] bytes of text. The history lives in this process only: it
//! starts empty on every start.

use super::Admin;
use crate::backend::stats::LatencySnapshot;
use crate::backend::{AdminState, Backend};
use crate::control::reload::ReloadStats;
use crate::store::SessionCounts;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Points kept per backend: one hour at the default 10 s interval.
pub const CAPACITY: usize = 360;
/// Events kept (the oldest is dropped first).
pub const EVENTS: usize = 200;
/// Longest event text in bytes (a reload error can be long).
pub const TEXT_MAX: usize = 160;
/// How often events are looked for (state changes, health, reloads).
const EVENT_TICK: Duration = Duration::from_secs(1);
/// Failovers to one backend less than this apart are one event (a node's
/// sessions move over several seconds as their clients come back).
const FAILOVER_MERGE_SECS: f64 = 5.0;
/// The drain estimate uses the sessions of at most this recent past (12
/// points at the default interval): recent enough to follow a change of
/// pace, long enough to smooth sessions expiring in bursts.
const SLOPE_WINDOW_SECS: f64 = 120.0;

/// What one backend did during one interval. 24 bytes: the whole ring of a
/// backend is [`CAPACITY`] of these.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    /// Unix seconds at the end of the interval.
    t: u32,
    requests: u32,
    errors: u32,
    c5xx: u32,
    /// Sessions on the backend at `t` (a gauge, not a difference).
    sessions: u32,
    /// 95th percentile of the time to the response head during the
    /// interval, in ms; NaN when nothing was answered.
    p95_ms: f32,
}

/// Cumulative counters at the last point, to difference against.
#[derive(Debug, Clone)]
struct Totals {
    requests: u64,
    errors: u64,
    c5xx: u64,
    latency: LatencySnapshot,
}

impl Totals {
    fn read(b: &Backend) -> Totals {
        Totals {
            requests: b.stats.requests.load(Ordering::Relaxed),
            errors: b.stats.errors.load(Ordering::Relaxed),
            c5xx: b.stats.traffic.classes()[4],
            latency: b.stats.traffic.latency(),
        }
    }
}

/// What the event watcher last saw of a backend.
#[derive(Debug, Clone, Copy)]
struct Marks {
    state: AdminState,
    state_at_ms: u64,
    transitions: u64,
    failovers_in: u64,
}

impl Marks {
    fn read(b: &Backend) -> Marks {
        Marks {
            state: b.state(),
            state_at_ms: b.state_at_ms(),
            transitions: b.stats.health_history.transitions(),
            failovers_in: b.stats.failovers_in.load(Ordering::Relaxed),
        }
    }
}

/// When a backend left rotation and how many sessions it had then, the
/// start of its drain bar.
#[derive(Debug, Clone, Copy, Serialize)]
struct DrainStart {
    since_unix: f64,
    sessions_at_start: u64,
}

/// One backend's ring and the marks its differences are taken from.
#[derive(Debug)]
struct Series {
    route: Arc<str>,
    points: VecDeque<Point>,
    totals: Totals,
    marks: Marks,
    drain: Option<DrainStart>,
}

impl Series {
    fn new(b: &Backend, now: f64, sessions: u64) -> Series {
        let marks = Marks::read(b);
        Series {
            route: b.config.route.clone(),
            points: VecDeque::with_capacity(CAPACITY),
            totals: Totals::read(b),
            drain: (marks.state != AdminState::Active).then_some(DrainStart {
                since_unix: now,
                sessions_at_start: sessions,
            }),
            marks,
        }
    }

    /// Bytes this backend's history holds: the ring (allocated once, full
    /// size), the latency buckets kept for differences and the route.
    fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Series>()
            + self.points.capacity() * std::mem::size_of::<Point>()
            + self.totals.latency.buckets.capacity() * std::mem::size_of::<(f64, u64)>()
            + self.route.len()
    }

    fn push(&mut self, p: Point) {
        if self.points.len() == CAPACITY {
            self.points.pop_front();
        }
        self.points.push_back(p);
    }
}

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The history began (balancer start).
    Start,
    /// An administrative state change (drain, disable, stop, enable).
    State,
    /// A health transition (up or down, with its reason).
    Health,
    /// A config reload, applied or refused.
    Reload,
    /// Sessions moved to a backend from a failed or stopped one.
    Failover,
    /// A backend added or removed by a reload.
    Backend,
}

/// One entry of the event timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unix seconds when it happened (the start, for merged failovers).
    pub at_unix: f64,
    pub kind: EventKind,
    /// The backend concerned, if one is.
    pub route: Option<String>,
    /// One line for the timeline, at most [`TEXT_MAX`] bytes.
    pub text: String,
    /// Sessions involved: moved by a failover, held at a state change.
    pub count: Option<u64>,
    /// Last failover merged into this event (failovers only).
    pub until_unix: Option<f64>,
}

#[derive(Debug, Default)]
struct Inner {
    series: Vec<Series>,
    events: VecDeque<Event>,
    /// Reloads (ok, failed) last seen.
    reloads: (u64, u64),
    started: bool,
}

impl Inner {
    fn event(&mut self, at_unix: f64, kind: EventKind, route: Option<&Arc<str>>, text: String) {
        self.push_event(Event {
            at_unix,
            kind,
            route: route.map(|r| r.to_string()),
            text: clip(text),
            count: None,
            until_unix: None,
        });
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() == EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    fn events_memory_bytes(&self) -> usize {
        self.events.capacity() * std::mem::size_of::<Event>()
            + self
                .events
                .iter()
                .map(|e| e.text.capacity() + e.route.as_ref().map_or(0, String::capacity))
                .sum::<usize>()
    }

    /// Count `n` sessions failed over to `route` at `now`: into the latest
    /// failover event of that route if it is recent, else a new one.
    fn failover(&mut self, route: &Arc<str>, n: u64, now: f64) {
        let open = self.events.iter_mut().rev().find(|e| {
            e.kind == EventKind::Failover
                && e.route.as_deref() == Some(&**route)
                && e.until_unix.unwrap_or(e.at_unix) >= now - FAILOVER_MERGE_SECS
        });
        if let Some(e) = open {
            let total = e.count.unwrap_or(0) + n;
            e.count = Some(total);
            e.until_unix = Some(now);
            e.text = failover_text(route, total);
            return;
        }
        self.push_event(Event {
            at_unix: now,
            kind: EventKind::Failover,
            route: Some(route.to_string()),
            text: failover_text(route, n),
            count: Some(n),
            until_unix: Some(now),
        });
    }
}

fn failover_text(route: &str, n: u64) -> String {
    format!(
        "{n} session{} failed over to {route}",
        if n == 1 { "" } else { "s" }
    )
}

/// Cut `text` to [`TEXT_MAX`] bytes on a character boundary, one line.
fn clip(text: String) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.len() <= TEXT_MAX {
        return one_line;
    }
    let mut end = TEXT_MAX - 3;
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &one_line[..end])
}

/// Unix seconds now (the clock of points and events).
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn sessions_of(counts: &[(Arc<str>, SessionCounts)], route: &str) -> u64 {
    super::status::sessions_of(counts, route).current
}

/// The per-backend series and the event list, shared by the sampler task
/// and the admin handlers.
#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Inner>,
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::lock::lock(&self.inner)
    }

    /// Look for events: new, removed and changed backends, health
    /// transitions, failovers, reloads. Called every second.
    fn watch(
        &self,
        backends: &[Arc<Backend>],
        counts: &[(Arc<str>, SessionCounts)],
        reloads: &ReloadStats,
        now: f64,
    ) {
        let mut inner = self.lock();
        let initial = !inner.started;
        if initial {
            inner.started = true;
            inner.reloads = (reloads.ok, reloads.failed);
            inner.event(now, EventKind::Start, None, "history started".to_owned());
        }
        watch_reloads(&mut inner, reloads, now);
        let gone: Vec<Arc<str>> = inner
            .series
            .iter()
            .filter(|s| !backends.iter().any(|b| b.route() == &*s.route))
            .map(|s| s.route.clone())
            .collect();
        for route in gone {
            inner.series.retain(|s| s.route != route);
            let text = format!("{route} removed by a reload; its sessions fail over");
            inner.event(now, EventKind::Backend, Some(&route), text);
        }
        for b in backends {
            let sessions = sessions_of(counts, b.route());
            match inner.series.iter().position(|s| &*s.route == b.route()) {
                Some(i) => watch_backend(&mut inner, i, b, sessions, now),
                None => {
                    inner.series.push(Series::new(b, now, sessions));
                    if !initial {
                        let route = b.config.route.clone();
                        let text = format!("{route} added by a reload");
                        inner.event(now, EventKind::Backend, Some(&route), text);
                    }
                }
            }
        }
    }

    /// Take one point per backend: what happened since the last one.
    fn sample(&self, backends: &[Arc<Backend>], counts: &[(Arc<str>, SessionCounts)], now: f64) {
        let mut inner = self.lock();
        for s in inner.series.iter_mut() {
            let Some(b) = backends.iter().find(|b| b.route() == &*s.route) else {
                continue;
            };
            let totals = Totals::read(b);
            let point = difference(&s.totals, &totals, sessions_of(counts, b.route()), now);
            s.totals = totals;
            s.push(point);
        }
    }

    /// The history of the last `minutes` before `now` (Unix seconds), with
    /// the live session counts for drain estimates.
    pub fn document(
        &self,
        minutes: u32,
        interval: Duration,
        backends: &[Arc<Backend>],
        counts: &[(Arc<str>, SessionCounts)],
        now: f64,
    ) -> HistoryDoc {
        let from = now - f64::from(minutes) * 60.0;
        let inner = self.lock();
        let docs: Vec<BackendHistory> = inner
            .series
            .iter()
            .map(|s| {
                let live = backends.iter().find(|b| b.route() == &*s.route);
                backend_doc(s, live, sessions_of(counts, &s.route), from, now)
            })
            .collect();
        let events_memory_bytes = inner.events_memory_bytes();
        HistoryDoc {
            now_unix: now,
            minutes,
            interval_secs: interval.as_secs_f64(),
            capacity: CAPACITY,
            memory_bytes: docs.iter().map(|b| b.memory_bytes).sum::<usize>() + events_memory_bytes,
            events_memory_bytes,
            backends: docs,
            events: inner
                .events
                .iter()
                .filter(|e| e.until_unix.unwrap_or(e.at_unix) >= from)
                .cloned()
                .collect(),
        }
    }
}

fn watch_reloads(inner: &mut Inner, reloads: &ReloadStats, now: f64) {
    let (ok, failed) = inner.reloads;
    if reloads.ok > ok {
        let at = reloads.last_ok_unix.map_or(now, |t| t as f64);
        let n = reloads.ok - ok;
        let text = if n == 1 {
            "configuration reloaded".to_owned()
        } else {
            format!("configuration reloaded ({n} times)")
        };
        inner.event(at, EventKind::Reload, None, text);
    }
    if reloads.failed > failed {
        let at = reloads.last_error_unix.map_or(now, |t| t as f64);
        let why = reloads.last_error.as_deref().unwrap_or("unknown error");
        inner.event(
            at,
            EventKind::Reload,
            None,
            format!("reload refused: {why}"),
        );
    }
    inner.reloads = (reloads.ok, reloads.failed);
}

fn watch_backend(inner: &mut Inner, i: usize, b: &Backend, sessions: u64, now: f64) {
    let marks = Marks::read(b);
    let (old, route) = (inner.series[i].marks, inner.series[i].route.clone());
    inner.series[i].marks = marks;
    if marks.state != old.state || marks.state_at_ms != old.state_at_ms {
        let at = if marks.state_at_ms > 0 {
            marks.state_at_ms as f64 / 1000.0
        } else {
            now
        };
        if marks.state == AdminState::Active {
            inner.series[i].drain = None;
        } else if old.state == AdminState::Active || inner.series[i].drain.is_none() {
            inner.series[i].drain = Some(DrainStart {
                since_unix: at,
                sessions_at_start: sessions,
            });
        }
        inner.push_event(Event {
            at_unix: at,
            kind: EventKind::State,
            route: Some(route.to_string()),
            text: format!("{route}: {} -> {}", old.state, marks.state),
            count: Some(sessions),
            until_unix: None,
        });
    }
    let new = marks.transitions.saturating_sub(old.transitions);
    if new > 0 {
        let events = b.stats.health_history.events();
        let skip = events.len().saturating_sub(new as usize);
        for e in &events[skip..] {
            let verdict = if e.up { "up" } else { "down" };
            let text = if e.reason.is_empty() {
                format!("{route} {verdict}")
            } else {
                format!("{route} {verdict}: {}", e.reason)
            };
            inner.event(e.at_unix, EventKind::Health, Some(&route), text);
        }
    }
    // A counter smaller than before belongs to a new backend object (removed
    // and added again): everything it counted is new.
    let moved = if marks.failovers_in >= old.failovers_in {
        marks.failovers_in - old.failovers_in
    } else {
        marks.failovers_in
    };
    if moved > 0 {
        inner.failover(&route, moved, now);
    }
}

/// `now - before` for a counter that may have restarted from zero.
fn delta(before: u64, now: u64) -> u32 {
    let d = if now >= before { now - before } else { now };
    u32::try_from(d).unwrap_or(u32::MAX)
}

/// The point between two readings of a backend's counters.
fn difference(before: &Totals, now: &Totals, sessions: u64, at: f64) -> Point {
    let restarted = now.latency.count < before.latency.count;
    let window = if restarted {
        now.latency.clone()
    } else {
        LatencySnapshot {
            buckets: now
                .latency
                .buckets
                .iter()
                .zip(&before.latency.buckets)
                .map(|(&(upper, n), &(_, b))| (upper, n.saturating_sub(b)))
                .collect(),
            sum_secs: (now.latency.sum_secs - before.latency.sum_secs).max(0.0),
            count: now.latency.count - before.latency.count,
        }
    };
    Point {
        t: at as u32,
        requests: delta(before.requests, now.requests),
        errors: delta(before.errors, now.errors),
        c5xx: delta(before.c5xx, now.c5xx),
        sessions: u32::try_from(sessions).unwrap_or(u32::MAX),
        p95_ms: window
            .quantile(0.95)
            .map_or(f32::NAN, |s| ((s * 1e4).round() / 10.0) as f32),
    }
}

/// Columns of one backend's points, oldest first (`t` in Unix seconds).
#[derive(Debug, Default, Serialize)]
pub struct Columns {
    pub t: Vec<u32>,
    pub requests: Vec<u32>,
    pub errors: Vec<u32>,
    #[serde(rename = "5xx")]
    pub c5xx: Vec<u32>,
    pub sessions: Vec<u32>,
    /// `null` for an interval without answers.
    pub p95_ms: Vec<Option<f32>>,
}

/// A backend out of rotation: how far its drain got.
#[derive(Debug, Serialize)]
pub struct Drain {
    /// When it left rotation (or when the history started, if it never
    /// was in rotation since).
    pub since_unix: f64,
    pub sessions_at_start: u64,
    /// Sessions left now.
    pub remaining: u64,
    /// Change of its sessions per minute over the last two minutes of the
    /// drain (negative while draining); `None` before two points.
    pub per_minute: Option<f64>,
    /// Seconds until no session is left at that pace; `None` when the
    /// count does not fall.
    pub eta_secs: Option<f64>,
}

/// One backend in `GET /api/history`.
#[derive(Debug, Serialize)]
pub struct BackendHistory {
    pub route: String,
    /// Bytes its history holds in memory.
    pub memory_bytes: usize,
    pub series: Columns,
    /// Present while the backend is out of rotation.
    pub drain: Option<Drain>,
}

/// The document of `GET /api/history`.
#[derive(Debug, Serialize)]
pub struct HistoryDoc {
    pub now_unix: f64,
    pub minutes: u32,
    /// Seconds between points (`admin.history_interval`).
    pub interval_secs: f64,
    /// Most points a series holds.
    pub capacity: usize,
    /// Bytes the whole history holds (every backend and the events).
    pub memory_bytes: usize,
    pub events_memory_bytes: usize,
    pub backends: Vec<BackendHistory>,
    /// Oldest first.
    pub events: Vec<Event>,
}

fn backend_doc(
    s: &Series,
    live: Option<&Arc<Backend>>,
    remaining: u64,
    from: f64,
    now: f64,
) -> BackendHistory {
    let mut c = Columns::default();
    for p in s.points.iter().filter(|p| f64::from(p.t) >= from) {
        c.t.push(p.t);
        c.requests.push(p.requests);
        c.errors.push(p.errors);
        c.c5xx.push(p.c5xx);
        c.sessions.push(p.sessions);
        c.p95_ms.push((!p.p95_ms.is_nan()).then_some(p.p95_ms));
    }
    let out = live.is_some_and(|b| b.state() != AdminState::Active);
    BackendHistory {
        route: s.route.to_string(),
        memory_bytes: s.memory_bytes(),
        drain: s.drain.filter(|_| out).map(|d| drain(s, d, remaining, now)),
        series: c,
    }
}

fn drain(s: &Series, d: DrainStart, remaining: u64, now: f64) -> Drain {
    let from = d.since_unix.max(now - SLOPE_WINDOW_SECS);
    let mut xy: Vec<(f64, f64)> = s
        .points
        .iter()
        .filter(|p| f64::from(p.t) >= from)
        .map(|p| (f64::from(p.t), f64::from(p.sessions)))
        .collect();
    xy.push((now, remaining as f64));
    let per_sec = slope(&xy);
    Drain {
        since_unix: d.since_unix,
        sessions_at_start: d.sessions_at_start.max(remaining),
        remaining,
        per_minute: per_sec.map(|v| (v * 600.0).round() / 10.0),
        eta_secs: match (remaining, per_sec) {
            (0, _) => Some(0.0),
            (n, Some(v)) if v < 0.0 => Some((n as f64 / -v).round()),
            _ => None,
        },
    }
}

/// Least-squares slope of `y` over `x`; `None` for fewer than two
/// distinct `x`.
fn slope(xy: &[(f64, f64)]) -> Option<f64> {
    let n = xy.len() as f64;
    if xy.len() < 2 {
        return None;
    }
    let mx = xy.iter().map(|p| p.0).sum::<f64>() / n;
    let my = xy.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = xy.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = xy.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 1e-9).then(|| sxy / sxx)
}

/// Feed `history` until the admin state is dropped: events every second,
/// a point every `admin.history_interval` (read each time, so a reload
/// changes it). A control-plane task: it only reads counters.
pub fn spawn(admin: Weak<Admin>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVENT_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_point = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            let Some(admin) = admin.upgrade() else { return };
            let rt = admin.proxy.runtime();
            let counts = rt.store.counts();
            let now = now_unix();
            let history = &admin.history;
            history.watch(&rt.table.backends, &counts, &admin.reloader.stats(), now);
            // Half a tick of slack: a 1 s interval is not skipped for a
            // tick that came a few ms early.
            let due = rt
                .config
                .admin
                .history_interval
                .saturating_sub(EVENT_TICK / 2);
            if last_point.elapsed() >= due {
                last_point = tokio::time::Instant::now();
                history.sample(&rt.table.backends, &counts, now);
            }
        }
    });
}

/// The `minutes` of `GET /api/history?minutes=N` (default: all, i.e. the
/// span `CAPACITY` points cover, at least 60); the error is the one-line
/// reason for a 400.
pub fn parse_minutes(query: Option<&str>, interval: Duration) -> Result<u32, String> {
    let max = max_minutes(interval);
    let mut minutes = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "minutes" {
            return Err(format!(
                "unknown query parameter {key:?}; use ?minutes=1..{max}"
            ));
        }
        if minutes.is_some() {
            return Err("minutes given twice".to_owned());
        }
        let n = value
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| value.parse::<u32>().ok())
            .flatten()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                format!("minutes must be a whole number from 1 to {max}, not {value:?}")
            })?;
        minutes = Some(n);
    }
    Ok(minutes.unwrap_or(max))
}

/// How many minutes `CAPACITY` points cover (at least an hour).
fn max_minutes(interval: Duration) -> u32 {
    let covered = interval.as_secs() * CAPACITY as u64 / 60;
    u32::try_from(covered).unwrap_or(u32::MAX).max(60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Table;

    fn counts(route: &str, n: u64) -> Vec<(Arc<str>, SessionCounts)> {
        vec![(
            route.into(),
            SessionCounts {
                current: n,
                ..Default::default()
            },
        )]
    }

    #[test]
    fn points_never_exceed_capacity_and_differences_are_per_interval() {
        let table = Table::for_tests(&["t1"]);
        let b = &table.backends[0];
        let h = History::default();
        let reloads = ReloadStats::default();
        h.watch(&table.backends, &counts("t1", 0), &reloads, 1000.0);
        for i in 0..1000u32 {
            b.stats.requests.fetch_add(3, Ordering::Relaxed);
            b.stats.traffic.record(200, Duration::from_millis(7));
            b.stats.traffic.record(503, Duration::from_millis(7));
            h.sample(
                &table.backends,
                &counts("t1", u64::from(i)),
                1000.0 + f64::from(i),
            );
        }
        let inner = h.lock();
        let s = &inner.series[0];
        assert_eq!(s.points.len(), CAPACITY);
        assert_eq!(s.points.capacity(), CAPACITY, "the ring never grows");
        let last = s.points.back().unwrap();
        assert_eq!((last.requests, last.c5xx, last.sessions), (3, 1, 999));
        assert!(last.p95_ms > 5.0 && last.p95_ms <= 10.0, "{}", last.p95_ms);
        assert_eq!(s.points.front().unwrap().t, 1000 + 1000 - CAPACITY as u32);
        assert!(s.memory_bytes() < 10 * 1024, "{} bytes", s.memory_bytes());
    }

    #[test]
    fn an_idle_interval_has_no_latency() {
        let table = Table::for_tests(&["t1"]);
        let h = History::default();
        h.watch(&table.backends, &[], &ReloadStats::default(), 1.0);
        h.sample(&table.backends, &[], 2.0);
        let doc = h.document(60, Duration::from_secs(10), &table.backends, &[], 3.0);
        assert_eq!(doc.backends[0].series.p95_ms, vec![None]);
    }

    #[test]
    fn events_are_bounded_and_failovers_merge() {
        let table = Table::for_tests(&["t1", "t2"]);
        let (b1, b2) = (&table.backends[0], &table.backends[1]);
        let h = History::default();
        let mut reloads = ReloadStats::default();
        h.watch(&table.backends, &counts("t1", 4), &reloads, 100.0);
        b1.set_state(AdminState::Draining, 101_000);
        b2.stats.failovers_in.fetch_add(2, Ordering::Relaxed);
        h.watch(&table.backends, &counts("t1", 4), &reloads, 101.0);
        b2.stats.failovers_in.fetch_add(3, Ordering::Relaxed);
        reloads.failed = 1;
        reloads.last_error = Some("x".repeat(1000));
        h.watch(&table.backends, &counts("t1", 4), &reloads, 103.0);
        let doc = h.document(
            60,
            Duration::from_secs(10),
            &table.backends,
            &counts("t1", 3),
            104.0,
        );
        let kinds: Vec<EventKind> = doc.events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Start,
                EventKind::State,
                EventKind::Failover,
                EventKind::Reload
            ],
            "{:?}",
            doc.events
        );
        assert_eq!(doc.events[1].count, Some(4));
        assert_eq!(
            doc.events[2].count,
            Some(5),
            "two failovers 2 s apart are one event"
        );
        assert!(doc.events[3].text.len() <= TEXT_MAX);
        let d = doc.backends[0].drain.as_ref().expect("t1 drains");
        assert_eq!((d.sessions_at_start, d.remaining), (4, 3));
        assert!(doc.backends[1].drain.is_none());
        for i in 0..(EVENTS as u64 * 2) {
            b1.set_up(i % 2 == 1, "flap");
            h.watch(&table.backends, &[], &reloads, 200.0 + i as f64);
        }
        assert_eq!(h.lock().events.len(), EVENTS);
        // The worst case: every event with the longest text and a route.
        let worst = EVENTS * (std::mem::size_of::<Event>() + TEXT_MAX + 64);
        assert!(worst < 64 * 1024, "{worst} bytes of events at most");
    }

    #[test]
    fn drain_estimate_follows_the_slope() {
        let table = Table::for_tests(&["t1"]);
        let b = &table.backends[0];
        let h = History::default();
        let r = ReloadStats::default();
        h.watch(&table.backends, &counts("t1", 100), &r, 1000.0);
        b.set_state(AdminState::Draining, 1_000_000);
        h.watch(&table.backends, &counts("t1", 100), &r, 1000.0);
        // 10 sessions fewer every 10 s: 1 per second.
        for i in 1..=5u64 {
            h.sample(
                &table.backends,
                &counts("t1", 100 - 10 * i),
                1000.0 + 10.0 * i as f64,
            );
        }
        let doc = h.document(
            60,
            Duration::from_secs(10),
            &table.backends,
            &counts("t1", 50),
            1050.0,
        );
        let d = doc.backends[0].drain.as_ref().expect("draining");
        assert_eq!((d.sessions_at_start, d.remaining), (100, 50));
        assert_eq!(d.per_minute, Some(-60.0));
        assert_eq!(d.eta_secs, Some(50.0));
        // The minutes asked for bound the points (one every 10 s here).
        let doc = h.document(1, Duration::from_secs(10), &table.backends, &[], 1090.0);
        assert_eq!(doc.backends[0].series.t, [1030, 1040, 1050]);
        // A count that does not fall gives no estimate.
        for i in 6..=20u64 {
            h.sample(&table.backends, &counts("t1", 50), 1000.0 + 10.0 * i as f64);
        }
        let doc = h.document(
            60,
            Duration::from_secs(10),
            &table.backends,
            &counts("t1", 50),
            1200.0,
        );
        let flat = doc.backends[0].drain.as_ref().unwrap();
        assert_eq!(flat.eta_secs, None, "{flat:?}");
        b.set_state(AdminState::Active, 1_201_000);
        h.watch(&table.backends, &counts("t1", 50), &r, 1201.0);
        let doc = h.document(60, Duration::from_secs(10), &table.backends, &[], 1201.0);
        assert!(
            doc.backends[0].drain.is_none(),
            "enabled again: no drain bar"
        );
    }

    #[test]
    fn minutes_are_checked() {
        let ten = Duration::from_secs(10);
        assert_eq!(parse_minutes(None, ten), Ok(60));
        assert_eq!(parse_minutes(Some(""), ten), Ok(60));
        assert_eq!(parse_minutes(Some("minutes=5"), ten), Ok(5));
        assert_eq!(parse_minutes(Some("minutes=60"), ten), Ok(60));
        assert_eq!(
            parse_minutes(Some("minutes=360"), Duration::from_secs(60)),
            Ok(360)
        );
        for bad in [
            "minutes=0",
            "minutes=61",
            "minutes=-1",
            "minutes=+5",
            "minutes=5.5",
            "minutes=",
            "minutes",
            "minutes=99999999999999999999",
            "minutes=5&minutes=6",
            "mins=5",
        ] {
            let e = parse_minutes(Some(bad), ten).unwrap_err();
            assert!(!e.contains('\n') && !e.is_empty(), "{bad}: {e:?}");
        }
    }
}
