//! Selection: which backend gets a request that has no usable session, and
//! which backend inherits an orphaned session.
//!
//! Selection only reads health and state; it never changes them (that is
//! the health checker's job), so the two compose freely.

use crate::backend::Backend;
use crate::config::Algorithm;
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Backends already tried by this request, so a retry goes elsewhere.
#[derive(Debug, Default, Clone)]
pub struct Tried {
    idx: [usize; 12],
    len: usize,
}

impl Tried {
    /// Whether backend `i` was already tried.
    pub fn has(&self, i: usize) -> bool {
        self.idx[..self.len].contains(&i)
    }

    /// Remember backend `i`.
    pub fn add(&mut self, i: usize) {
        if self.len < self.idx.len() && !self.has(i) {
            self.idx[self.len] = i;
            self.len += 1;
        }
    }

    /// Allow backend `i` again (one retry after a stale keep-alive reuse).
    pub fn remove(&mut self, i: usize) {
        if let Some(k) = self.idx[..self.len].iter().position(|&x| x == i) {
            self.idx[k] = self.idx[self.len - 1];
            self.len -= 1;
        }
    }

    /// Number of distinct backends tried.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing tried yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Precomputed smooth weighted round-robin order for one set of eligible
/// backends; rebuilt only when the set changes, so picking is one atomic add.
struct Sequence {
    mask: u128,
    order: Box<[u16]>,
}

/// Chooses backends for new sessions.
pub struct Selector {
    algorithm: Algorithm,
    seq: ArcSwapOption<Sequence>,
    next: AtomicUsize,
}

/// Most backends the lock-free round-robin sequence covers; beyond this the
/// round robin falls back to weighted random choice.
const SEQ_MAX_BACKENDS: usize = 128;

impl Selector {
    /// A selector for the configured algorithm.
    pub fn new(algorithm: Algorithm) -> Self {
        Selector {
            algorithm,
            seq: ArcSwapOption::empty(),
            next: AtomicUsize::new(0),
        }
    }

    /// Pick among backends satisfying `ok`, skipping `tried`.
    /// `sessions` gives a backend's current session count.
    pub fn pick(
        &self,
        backends: &[Arc<Backend>],
        ok: impl Fn(&Backend) -> bool,
        tried: &Tried,
        sessions: impl Fn(&Backend) -> u64,
    ) -> Option<usize> {
        let eligible = |i: usize| !tried.has(i) && ok(&backends[i]);
        match self.algorithm {
            Algorithm::WeightedRoundRobin if backends.len() <= SEQ_MAX_BACKENDS => {
                self.round_robin(backends, &ok, tried)
            }
            Algorithm::WeightedRoundRobin => weighted_random(backends, eligible),
            Algorithm::LeastSessions => least_by(backends, eligible, |b| sessions(b) as f64),
            Algorithm::LeastInflight => two_choices(backends, eligible),
        }
    }

    fn round_robin(
        &self,
        backends: &[Arc<Backend>],
        ok: &impl Fn(&Backend) -> bool,
        tried: &Tried,
    ) -> Option<usize> {
        let mut mask = 0u128;
        for (i, b) in backends.iter().enumerate() {
            if ok(b) {
                mask |= 1 << i;
            }
        }
        if mask == 0 {
            return None;
        }
        // A guard, not a clone: the reference count is shared by every core.
        let cached = self.seq.load();
        let fresh;
        let seq: &Sequence = match &*cached {
            Some(s) if s.mask == mask => s,
            _ => {
                let s = Arc::new(Sequence {
                    mask,
                    order: smooth_sequence(backends, mask),
                });
                self.seq.store(Some(s.clone()));
                fresh = s;
                &fresh
            }
        };
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..seq.order.len())
            .map(|k| seq.order[(start + k) % seq.order.len()] as usize)
            .find(|&i| !tried.has(i))
    }
}

/// nginx's smooth weighted round robin, run once over a full cycle.
fn smooth_sequence(backends: &[Arc<Backend>], mask: u128) -> Box<[u16]> {
    let members: Vec<(usize, i64)> = backends
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(i, b)| (i, b.config.weight as i64))
        .collect();
    let g = members.iter().fold(0, |g, &(_, w)| gcd(g, w)).max(1);
    let total: i64 = members.iter().map(|&(_, w)| w / g).sum();
    let mut current = vec![0i64; members.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (k, &(_, w)) in members.iter().enumerate() {
            current[k] += w / g;
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= total;
        order.push(members[best].0 as u16);
    }
    order.into_boxed_slice()
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Lowest `load / weight`; ties go to the earliest backend.
fn least_by(
    backends: &[Arc<Backend>],
    eligible: impl Fn(usize) -> bool,
    load: impl Fn(&Backend) -> f64,
) -> Option<usize> {
    (0..backends.len())
        .filter(|&i| eligible(i))
        .min_by(|&a, &b| {
            let la = load(&backends[a]) / backends[a].config.weight as f64;
            let lb = load(&backends[b]) / backends[b].config.weight as f64;
            la.total_cmp(&lb)
        })
}

/// Power of two random choices on in-flight requests relative to weight.
fn two_choices(backends: &[Arc<Backend>], eligible: impl Fn(usize) -> bool) -> Option<usize> {
    let a = weighted_random(backends, &eligible)?;
    let b = weighted_random(backends, |i| i != a && eligible(i)).unwrap_or(a);
    let load = |i: usize| {
        backends[i].inflight.load(Ordering::Relaxed) as f64 / backends[i].config.weight as f64
    };
    Some(if load(b) < load(a) { b } else { a })
}

fn weighted_random(backends: &[Arc<Backend>], eligible: impl Fn(usize) -> bool) -> Option<usize> {
    let total: u64 = (0..backends.len())
        .filter(|&i| eligible(i))
        .map(|i| backends[i].config.weight as u64)
        .sum();
    if total == 0 {
        return None;
    }
    let mut r = rand::random_range(0..total);
    for i in (0..backends.len()).filter(|&i| eligible(i)) {
        let w = backends[i].config.weight as u64;
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}

/// The heir of an orphaned session: weighted rendezvous hashing of the
/// session's base id over the eligible backends. Every balancer computes the
/// same answer from the same healthy set without talking to the others, and
/// only sessions of the dead node move.
pub fn heir(
    backends: &[Arc<Backend>],
    base: &str,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    (0..backends.len())
        .filter(|&i| eligible(i))
        .max_by(|&a, &b| {
            score(base, &backends[a].config.route, backends[a].config.weight).total_cmp(&score(
                base,
                &backends[b].config.route,
                backends[b].config.weight,
            ))
        })
}

/// Weighted rendezvous score: `-w / ln(u)`, `u` uniform in (0,1) from a
/// hash that is stable across processes and versions (FNV-1a + mixer).
/// The logarithm is `libm`'s, computed the same way on every platform, so
/// balancers of different architectures rank heirs identically.
fn score(base: &str, route: &str, weight: u32) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in base.bytes().chain([0xff]).chain(route.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -(weight as f64) / libm::log(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::PoolSettings;
    use crate::config::BackendConfig;

    fn table(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let cfg = BackendConfig::plain(&format!("n{i}"), "127.0.0.1", 1, w);
                let pool = PoolSettings::from_upstream(&Default::default());
                Arc::new(Backend::new(cfg, pool))
            })
            .collect()
    }

    #[test]
    fn smooth_round_robin_follows_weights_and_interleaves() {
        let b = table(&[5, 1, 1]);
        let s = Selector::new(Algorithm::WeightedRoundRobin);
        let picks: Vec<usize> = (0..7)
            .map(|_| s.pick(&b, |_| true, &Tried::default(), |_| 0).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_skips_ineligible_without_bias() {
        let b = table(&[1, 1, 1]);
        b[2].set_up(false, "test");
        let s = Selector::new(Algorithm::WeightedRoundRobin);
        let mut n = [0; 3];
        for _ in 0..100 {
            n[s.pick(&b, |x| x.takes_new(), &Tried::default(), |_| 0)
                .unwrap()] += 1;
        }
        assert_eq!(n, [50, 50, 0]);
    }

    #[test]
    fn tried_backends_are_skipped() {
        let b = table(&[1, 1]);
        let s = Selector::new(Algorithm::LeastInflight);
        let mut t = Tried::default();
        t.add(0);
        for _ in 0..20 {
            assert_eq!(s.pick(&b, |_| true, &t, |_| 0), Some(1));
        }
        t.add(1);
        assert_eq!(s.pick(&b, |_| true, &t, |_| 0), None);
    }

    #[test]
    fn least_sessions_respects_weight() {
        let b = table(&[1, 3]);
        let s = Selector::new(Algorithm::LeastSessions);
        let counts = |x: &Backend| if x.route() == "n0" { 10 } else { 20 };
        assert_eq!(s.pick(&b, |_| true, &Tried::default(), counts), Some(1));
    }

    #[test]
    fn heir_is_stable_and_spreads() {
        let b = table(&[1, 1, 1, 1]);
        let mut n = [0; 4];
        for k in 0..4000 {
            let id = format!("{k:032X}");
            let h = heir(&b, &id, |i| i != 0).unwrap();
            assert_eq!(heir(&b, &id, |i| i != 0), Some(h));
            n[h] += 1;
        }
        assert_eq!(n[0], 0);
        for c in &n[1..] {
            assert!((1150..1520).contains(c), "{n:?}");
        }
    }

    #[test]
    fn heir_moves_only_orphans() {
        let b = table(&[1, 1, 1]);
        for k in 0..500 {
            let id = format!("S{k}");
            let all = heir(&b, &id, |_| true).unwrap();
            let without_0 = heir(&b, &id, |i| i != 0).unwrap();
            if all != 0 {
                assert_eq!(all, without_0);
            }
        }
    }

    /// Golden values: these heirs are what this code chose when the test
    /// was written, written down literally. Balancers of different versions
    /// run side by side during a rolling upgrade and must pick the same heir
    /// for an orphaned session, or a failover splits one session over two
    /// nodes. A change that fails this test reshuffles failover targets
    /// between versions: keep the hash, or ship it as a breaking change.
    #[test]
    fn heir_choice_is_frozen_across_versions() {
        let routes = [
            ("tomcat1", 1),
            ("tomcat2", 2),
            ("tomcat3", 1),
            ("tomcat4", 3),
        ];
        let b: Vec<Arc<Backend>> = routes
            .iter()
            .map(|&(r, w)| {
                let cfg = BackendConfig::plain(r, "127.0.0.1", 1, w);
                Arc::new(Backend::new(
                    cfg,
                    PoolSettings::from_upstream(&Default::default()),
                ))
            })
            .collect();
        // (session base id, heir among all, without tomcat1, among tomcat1 and tomcat3)
        let golden = [
            (
                "6B941D9A646C9BD5A1F0C3E2D4B5A697",
                "tomcat1",
                "tomcat4",
                "tomcat1",
            ),
            (
                "0123456789ABCDEF0123456789ABCDEF",
                "tomcat4",
                "tomcat4",
                "tomcat1",
            ),
            (
                "FEDCBA9876543210FEDCBA9876543210",
                "tomcat4",
                "tomcat4",
                "tomcat1",
            ),
            ("A", "tomcat4", "tomcat4", "tomcat3"),
            ("session-42", "tomcat4", "tomcat4", "tomcat3"),
            (
                "00000000000000000000000000000000",
                "tomcat4",
                "tomcat4",
                "tomcat3",
            ),
            (
                "7F3E1C2B9A8D4E5F6A7B8C9D0E1F2A3B",
                "tomcat2",
                "tomcat2",
                "tomcat1",
            ),
            ("jsessionid", "tomcat4", "tomcat4", "tomcat1"),
        ];
        let name = |i: Option<usize>| i.map(|i| routes[i].0);
        for (id, all, without_first, odd) in golden {
            assert_eq!(name(heir(&b, id, |_| true)), Some(all), "{id}");
            assert_eq!(name(heir(&b, id, |i| i != 0)), Some(without_first), "{id}");
            assert_eq!(name(heir(&b, id, |i| i % 2 == 0)), Some(odd), "{id}");
        }
    }
}
