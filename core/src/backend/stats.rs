//! Per-backend traffic figures for the status page and `/metrics`.
//!
//! Every request updates them, so they are plain atomics (no lock, no
//! allocation), striped per request thread on their own cache lines so
//! two cores never write the same line; readers add the stripes up at
//! scrape time (a consistent-enough snapshot).

use crate::lock::lock;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds (seconds) of the latency histogram buckets, as Prometheus
/// clients use by default, plus finer steps where a balancer's traffic is.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How many health transitions each backend remembers for the status API.
const HISTORY: usize = 20;

/// Stripes per counter: request thread `w` writes stripe `(w + 1) %
/// STRIPES`, every other thread stripe 0. More threads than stripes share
/// some (still correct, only slower).
const STRIPES: usize = 8;

/// The stripe the calling thread writes.
fn stripe() -> usize {
    crate::thread_index::current().map_or(0, |w| (w + 1) % STRIPES)
}

/// A counter (or, with wrapping adds and subtracts, a gauge) written per
/// request by every request thread: the `AtomicU64` calls it replaces,
/// without a cache line shared between cores.
#[derive(Debug, Default)]
pub struct Striped {
    stripes: [Padded; STRIPES],
}

/// One cache line pair of its own (adjacent-line prefetch included).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl Striped {
    /// Add `n` on the calling thread's stripe.
    pub fn fetch_add(&self, n: u64, order: Ordering) {
        self.stripes[stripe()].0.fetch_add(n, order);
    }

    /// Subtract `n` on the calling thread's stripe (the sum stays right
    /// when another thread added it: stripes wrap, their sum does not).
    pub fn fetch_sub(&self, n: u64, order: Ordering) {
        self.stripes[stripe()].0.fetch_sub(n, order);
    }

    /// The total over all stripes.
    pub fn load(&self, order: Ordering) -> u64 {
        self.stripes
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.0.load(order)))
    }
}

/// Everything counted about one backend.
#[derive(Debug, Default)]
pub struct Counters {
    /// Attempts sent to it (retries included).
    pub requests: Striped,
    /// Attempts that failed on it (connect, timeout, reset).
    pub errors: AtomicU64,
    /// Orphaned sessions it took over.
    pub failovers_in: AtomicU64,
    /// Hung-node rescue probes sent because a request waited too long.
    pub rescue_probes: AtomicU64,
    /// Rescue probes that failed (each marked the backend down).
    pub rescue_probes_failed: AtomicU64,
    /// Requests that waited on it when it went down and were re-dispatched
    /// to an heir (idempotent) or answered 504 (the others).
    pub rescued: AtomicU64,
    /// Answers by status class and latency.
    pub traffic: TrafficStats,
    pub health_history: HealthHistory,
}

/// Response counts by status class and time-to-response-head histogram,
/// one set per stripe (see [`Striped`]).
#[derive(Debug, Default)]
pub struct TrafficStats {
    stripes: [TrafficStripe; STRIPES],
}

/// One request thread's share of [`TrafficStats`].
#[derive(Debug, Default)]
#[repr(align(128))]
struct TrafficStripe {
    /// Index 0 = 1xx ... 4 = 5xx.
    classes: [AtomicU64; 5],
    /// Non-cumulative bucket counts; the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A latency histogram read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    /// Cumulative `(upper bound, count)` pairs, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub sum_secs: f64,
    pub count: u64,
}

impl LatencySnapshot {
    /// Estimate quantile `q` (0..1) by linear interpolation inside the
    /// bucket that holds it, as Prometheus' `histogram_quantile` does.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut lower = 0.0;
        let mut below = 0u64;
        for &(upper, cum) in &self.buckets {
            if cum as f64 >= rank {
                if upper.is_infinite() {
                    return Some(lower);
                }
                let inside = (cum - below) as f64;
                let frac = if inside > 0.0 {
                    (rank - below as f64) / inside
                } else {
                    1.0
                };
                return Some(lower + (upper - lower) * frac);
            }
            lower = upper;
            below = cum;
        }
        Some(lower)
    }

    /// Mean latency in seconds.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_secs / self.count as f64)
    }
}

impl TrafficStats {
    /// Count one response with its status and time to the response head.
    pub fn record(&self, status: u16, took: Duration) {
        let mine = &self.stripes[stripe()];
        let class = (status / 100).clamp(1, 5) as usize - 1;
        mine.classes[class].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        mine.buckets[slot].fetch_add(1, Ordering::Relaxed);
        mine.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Responses per class `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub fn classes(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.sum(|s| &s.classes[i]))
    }

    /// One field added up over the stripes.
    fn sum(&self, field: impl Fn(&TrafficStripe) -> &AtomicU64) -> u64 {
        self.stripes
            .iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .sum()
    }

    /// The latency histogram now.
    pub fn latency(&self) -> LatencySnapshot {
        let mut cum = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
        for i in 0..=LATENCY_BUCKETS.len() {
            cum += self.sum(|s| &s.buckets[i]);
            let upper = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((upper, cum));
        }
        LatencySnapshot {
            buckets,
            sum_secs: self.sum(|s| &s.sum_micros) as f64 / 1e6,
            count: cum,
        }
    }
}

/// One health transition, as the status page lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthEvent {
    /// Seconds since the Unix epoch.
    pub at_unix: f64,
    pub up: bool,
    pub reason: String,
}

/// The last few health transitions (rare: a lock is fine here).
#[derive(Debug, Default)]
pub struct HealthHistory {
    events: Mutex<VecDeque<HealthEvent>>,
    transitions: AtomicU64,
}

impl HealthHistory {
    /// Remember a transition.
    pub fn push(&self, up: bool, reason: &str) {
        self.transitions.fetch_add(1, Ordering::Relaxed);
        let at_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let mut e = lock(&self.events);
        if e.len() == HISTORY {
            e.pop_front();
        }
        e.push_back(HealthEvent {
            at_unix,
            up,
            reason: reason.to_owned(),
        });
    }

    /// Transitions, newest last.
    pub fn events(&self) -> Vec<HealthEvent> {
        lock(&self.events).iter().cloned().collect()
    }

    /// Transitions since start (a counter for `/metrics`).
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_buckets() {
        let s = TrafficStats::default();
        s.record(200, Duration::from_micros(300));
        s.record(204, Duration::from_millis(3));
        s.record(503, Duration::from_secs(20));
        s.record(99, Duration::ZERO);
        assert_eq!(s.classes(), [1, 2, 0, 0, 1]);
        let l = s.latency();
        assert_eq!(l.count, 4);
        assert_eq!(l.buckets[0], (0.0005, 2));
        assert_eq!(l.buckets.last().unwrap().1, 4);
        assert!(l.buckets.last().unwrap().0.is_infinite());
        assert!((l.sum_secs - 20.0033).abs() < 1e-6, "{}", l.sum_secs);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let s = TrafficStats::default();
        for _ in 0..100 {
            s.record(200, Duration::from_millis(7));
        }
        let l = s.latency();
        let p50 = l.quantile(0.5).unwrap();
        assert!(p50 > 0.005 && p50 <= 0.01, "{p50}");
        assert!(l.quantile(0.99).unwrap() <= 0.01);
        assert_eq!(TrafficStats::default().latency().quantile(0.5), None);
    }

    #[test]
    fn striped_counts_add_up_across_threads() {
        let c = Striped::default();
        let t = TrafficStats::default();
        std::thread::scope(|scope| {
            for w in 0..3 {
                let (c, t) = (&c, &t);
                scope.spawn(move || {
                    crate::thread_index::set(w);
                    for _ in 0..100 {
                        c.fetch_add(1, Ordering::Relaxed);
                        t.record(200, Duration::from_millis(1));
                    }
                });
            }
        });
        // Taken on one thread, given back on another: the gauge is right.
        c.fetch_sub(300, Ordering::Relaxed);
        assert_eq!(c.load(Ordering::Relaxed), 0);
        c.fetch_add(2, Ordering::Relaxed);
        assert_eq!(c.load(Ordering::Relaxed), 2);
        assert_eq!(t.classes(), [0, 300, 0, 0, 0]);
        assert_eq!(t.latency().count, 300);
        assert!((t.latency().sum_secs - 0.3).abs() < 1e-9);
    }

    #[test]
    fn history_keeps_the_newest() {
        let h = HealthHistory::default();
        for i in 0..30 {
            h.push(i % 2 == 0, &format!("r{i}"));
        }
        let e = h.events();
        assert_eq!(e.len(), HISTORY);
        assert_eq!(e.last().unwrap().reason, "r29");
        assert_eq!(h.transitions(), 30);
    }
}
