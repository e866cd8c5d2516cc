//! Memory store throughput and footprint at 100k and 1M sessions.
//!
//! `cargo bench --bench store`
//!
//! Before the timed benchmarks, each store is filled once and the resident
//! memory it added (VmRSS from /proc/self/status, Linux only) is printed on
//! stderr together with the average cost of those first-time binds.
//! Everything runs on one thread.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stickgate::store::{MemoryStore, SessionStore};

const SIZES: [usize; 2] = [100_000, 1_000_000];
/// Distinct ids each timed loop cycles through (spread over the store so
/// lookups are not served from one hot cache line).
const PROBES: usize = 4096;

/// A Tomcat-looking 32-hex base id; `n` keeps them distinct.
fn base_id(n: u64) -> String {
    format!(
        "{:032X}",
        n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5bd1_e995
    )
}

/// Resident set size in KiB, if the platform tells.
fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Filled {
    size: usize,
    store: Arc<MemoryStore>,
    /// Ids known to the store, `PROBES` of them spread over its content.
    hits: Vec<String>,
    /// Ids the store has never seen.
    misses: Vec<String>,
}

fn fill(size: usize, routes: &[Arc<str>]) -> Filled {
    // Ids are generated before the first RSS reading so only the store's
    // own memory (map entries plus its copy of each id) is counted.
    let ids: Vec<String> = (0..size as u64).map(base_id).collect();
    let store = MemoryStore::new(Duration::from_secs(1800), size * 2);
    let before = rss_kib();
    let t = Instant::now();
    for (n, id) in ids.iter().enumerate() {
        store.bind(id, &routes[n % routes.len()]);
    }
    let took = t.elapsed();
    let after = rss_kib();
    assert_eq!(store.status().sessions, size as u64);
    let ns_per_bind = took.as_nanos() as f64 / size as f64;
    match (before, after) {
        (Some(b), Some(a)) => {
            let kib = a.saturating_sub(b);
            eprintln!(
                "store: {size} sessions: +{:.1} MiB resident ({:.0} bytes/session, {:.1} MiB per 100k); \
                 fill {:.0} ns/bind (new ids, incl. map growth)",
                kib as f64 / 1024.0,
                kib as f64 * 1024.0 / size as f64,
                kib as f64 / 1024.0 * 100_000.0 / size as f64,
                ns_per_bind,
            );
        }
        _ => eprintln!(
            "store: {size} sessions: VmRSS not available on this platform; fill {ns_per_bind:.0} ns/bind"
        ),
    }
    let step = size / PROBES;
    let hits = (0..PROBES).map(|k| ids[k * step].clone()).collect();
    let misses = (0..PROBES as u64)
        .map(|k| base_id(size as u64 + 1 + k))
        .collect();
    Filled {
        size,
        store,
        hits,
        misses,
    }
}

fn bench(c: &mut Criterion) {
    let routes: Vec<Arc<str>> = (1..=4).map(|n| format!("tomcat{n}").into()).collect();
    // Fill in increasing size and keep both alive, so memory freed by one
    // store is never reused by the other's measurement.
    let stores: Vec<Filled> = SIZES.iter().map(|&n| fill(n, &routes)).collect();

    let mut g = c.benchmark_group("memory_store");
    g.throughput(Throughput::Elements(1));
    for f in &stores {
        let store: &dyn SessionStore = &*f.store;
        let label = if f.size >= 1_000_000 {
            format!("{}M", f.size / 1_000_000)
        } else {
            format!("{}k", f.size / 1000)
        };

        let mut k = 0usize;
        g.bench_function(BenchmarkId::new("lookup_hit", &label), |b| {
            b.iter(|| {
                k = (k + 1) % PROBES;
                store.lookup(black_box(&f.hits[k]))
            })
        });

        let mut k = 0usize;
        g.bench_function(BenchmarkId::new("lookup_miss", &label), |b| {
            b.iter(|| {
                k = (k + 1) % PROBES;
                store.lookup(black_box(&f.misses[k]))
            })
        });

        // Rebind a known session to another route (moves the counts).
        let mut k = 0usize;
        let mut r = 0usize;
        g.bench_function(BenchmarkId::new("bind_rebind", &label), |b| {
            b.iter(|| {
                k = (k + 1) % PROBES;
                r = (r + 1) % routes.len();
                store.bind(black_box(&f.hits[k]), &routes[r])
            })
        });

        // Bind a new session and forget it again, so the size stays put:
        // one insert plus one removal per iteration.
        let mut k = 0usize;
        g.bench_function(BenchmarkId::new("bind_new_and_forget", &label), |b| {
            b.iter(|| {
                k = (k + 1) % PROBES;
                let id = black_box(&f.misses[k]);
                store.bind(id, &routes[k % routes.len()]);
                store.forget(id);
            })
        });
        assert_eq!(store.status().sessions, f.size as u64);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
