//! Cost of one per-request routing decision, through the public API:
//! session extraction (`routing::session::find`) + store lookup +
//! `Table::decide` (sticky / balanced choice).
//!
//! `cargo bench --bench routing`
//!
//! Nothing connects: backends are built with `Backend::new` and a pool that
//! is never used. `Table::decide` only awaits on failover, which none of
//! these cases reach, so it is driven with `now_or_never()`: no runtime in
//! the measurement.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::FutureExt;
use http::header::{HeaderValue, COOKIE};
use http::HeaderMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use stickgate::backend::{Backend, PoolSettings};
use stickgate::config::{Algorithm, BackendConfig, InitialState};
use stickgate::routing::{session, Decision, Reason, Table, Tried};
use stickgate::store::{MemoryStore, SessionStore};

const COOKIE_NAME: &str = "JSESSIONID";
const PATH_PARAM: &str = "jsessionid";
const SEP: &str = ".";
/// Sessions preloaded into the store for the learned-session case.
const LEARNED: usize = 100_000;

fn table() -> Table {
    let pool = PoolSettings {
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(15),
        max_idle: 64,
        keepalive: None,
        max_connections: 0,
        queue_timeout: Duration::from_secs(5),
    };
    let backends = [(1, 3), (2, 1), (3, 1), (4, 1)]
        .into_iter()
        .map(|(n, weight)| {
            let cfg = BackendConfig {
                route: format!("tomcat{n}").into(),
                authority: format!("127.0.0.1:{}", 8080 + n).into(),
                host: "127.0.0.1".into(),
                port: 8080 + n,
                weight,
                domain: Some(if n <= 2 { "dc-a" } else { "dc-b" }.into()),
                state: InitialState::Active,
            };
            Arc::new(Backend::new(cfg, pool.clone()))
        })
        .collect();
    Table::new(backends, Algorithm::WeightedRoundRobin)
}

fn cookies(value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.append(COOKIE, HeaderValue::from_str(value).unwrap());
    h
}

/// A Tomcat-looking 32-hex base id.
fn base_id(n: u64) -> String {
    format!("{:032X}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The whole per-request routing step, as the proxy runs it.
fn route(table: &Table, store: &dyn SessionStore, headers: &HeaderMap, path: &str) -> Decision {
    let s = session::find(headers, path, COOKIE_NAME, Some(PATH_PARAM), SEP, |r| {
        table.index_of(r).is_some()
    });
    table
        .decide(store, s.as_ref(), &Tried::default())
        .now_or_never()
        .expect("decide awaited: only failover may wait")
        .expect("a backend is available")
}

fn bench(c: &mut Criterion) {
    let table = table();
    let mut g = c.benchmark_group("decide");
    g.throughput(Throughput::Elements(1));

    // (a) Sticky: suffixed cookie among three other cookies.
    {
        let store = MemoryStore::new(Duration::from_secs(1800), 1_000_000);
        let sid = format!("{}.tomcat3", base_id(7));
        let h = cookies(&format!(
            "_ga=GA1.2.1234567890.1700000000; theme=dark; {COOKIE_NAME}={sid}; csrftoken=8f14e45fceea167a5a36dedd4bea2543"
        ));
        let d = route(&table, &*store, &h, "/shop/cart");
        assert_eq!((d.index, d.reason), (2, Reason::Sticky));
        g.bench_function("sticky_suffix_cookie", |b| {
            b.iter(|| route(&table, &*store, black_box(&h), black_box("/shop/cart")))
        });
    }

    // (b) New session: no cookie, smooth weighted round robin (3:1:1:1).
    {
        let store = MemoryStore::new(Duration::from_secs(1800), 1_000_000);
        let h = cookies("_ga=GA1.2.1234567890.1700000000; theme=dark");
        let d = route(&table, &*store, &h, "/");
        assert_eq!(d.reason, Reason::New);
        g.bench_function("new_session_wrr", |b| {
            b.iter(|| route(&table, &*store, black_box(&h), black_box("/")))
        });
    }

    // (c) Learned session: no suffix, bound in a store of 100k sessions.
    {
        let store = MemoryStore::new(Duration::from_secs(1800), 1_000_000);
        let routes: Vec<Arc<str>> = table
            .backends
            .iter()
            .map(|b| b.config.route.clone())
            .collect();
        for n in 0..LEARNED as u64 {
            store.bind(&base_id(n), &routes[n as usize % routes.len()]);
        }
        // Cycle over a set of known sessions so the lookups are not all one
        // hot cache line.
        let headers: Vec<HeaderMap> = (0..1024u64)
            .map(|k| {
                let n = k * 97 % LEARNED as u64;
                cookies(&format!("theme=dark; {COOKIE_NAME}={}", base_id(n)))
            })
            .collect();
        let d = route(&table, &*store, &headers[1], "/");
        assert_eq!((d.index, d.reason), (97 % 4, Reason::Sticky));
        let mut k = 0usize;
        g.bench_function("learned_no_suffix_100k", |b| {
            b.iter(|| {
                k = (k + 1) & 1023;
                route(&table, &*store, black_box(&headers[k]), black_box("/"))
            })
        });
    }

    // (d) Path parameter: `;jsessionid=<id>.<route>` in the URL, no cookie.
    {
        let store = MemoryStore::new(Duration::from_secs(1800), 1_000_000);
        let h = cookies("theme=dark");
        let path = format!("/shop/cart;{PATH_PARAM}={}.tomcat2", base_id(9));
        let d = route(&table, &*store, &h, &path);
        assert_eq!((d.index, d.reason), (1, Reason::Sticky));
        g.bench_function("path_parameter", |b| {
            b.iter(|| route(&table, &*store, black_box(&h), black_box(&path)))
        });
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
