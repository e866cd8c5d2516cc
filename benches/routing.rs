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
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use stickgate::backend::{Backend, PoolSettings};
use stickgate::config::SessionRules;
use stickgate::routing::{session, Decision, Reason, Table, Tried};
use stickgate::store::{MemoryStore, SessionStore};

/// Sessions preloaded into the store for the learned-session case.
const LEARNED: usize = 100_000;

/// Four backends, weights 3:1:1:1, in two domains; session naming left at
/// its defaults (JSESSIONID, `;jsessionid=`, "."). Built through the config
/// loader so the bench follows whatever a backend definition holds.
const CONFIG: &str = r#"
[[backend]]
route = "tomcat1"
url = "http://127.0.0.1:8081"
weight = 3
domain = "dc-a"

[[backend]]
route = "tomcat2"
url = "http://127.0.0.1:8082"
domain = "dc-a"

[[backend]]
route = "tomcat3"
url = "http://127.0.0.1:8083"
domain = "dc-b"

[[backend]]
route = "tomcat4"
url = "http://127.0.0.1:8084"
domain = "dc-b"
"#;

fn setup() -> (Table, SessionRules) {
    let cfg = stickgate::config::from_str(CONFIG, Path::new("benches/routing.rs"))
        .expect("bench config is valid");
    let pool = PoolSettings::from_upstream(&cfg.upstream);
    let backends = cfg
        .backends
        .iter()
        .map(|b| Arc::new(Backend::new(b.clone(), pool.clone())))
        .collect();
    (Table::new(backends, cfg.algorithm), cfg.session)
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
fn route(
    (table, rules): &(Table, SessionRules),
    store: &dyn SessionStore,
    headers: &HeaderMap,
    path: &str,
) -> Decision {
    let s = session::find(
        headers,
        path,
        &rules.cookie,
        rules.path_parameter.as_deref(),
        &rules.separator,
        |r| table.index_of(r).is_some(),
    );
    table
        .decide(store, s.as_ref(), &Tried::default())
        .now_or_never()
        .expect("decide awaited: only failover may wait")
        .expect("a backend is available")
}

fn bench(c: &mut Criterion) {
    let router = setup();
    let mut g = c.benchmark_group("decide");
    g.throughput(Throughput::Elements(1));

    // (a) Sticky: suffixed cookie among three other cookies.
    {
        let store = MemoryStore::new(Duration::from_secs(1800), 1_000_000);
        let sid = format!("{}.tomcat3", base_id(7));
        let h = cookies(&format!(
            "_ga=GA1.2.1234567890.1700000000; theme=dark; JSESSIONID={sid}; csrftoken=8f14e45fceea167a5a36dedd4bea2543"
        ));
        let d = route(&router, &*store, &h, "/shop/cart");
        assert_eq!((d.index, d.reason), (2, Reason::Sticky));
        g.bench_function("sticky_suffix_cookie", |b| {
            b.iter(|| route(&router, &*store, black_box(&h), black_box("/shop/cart")))
        });
    }

    // (b) New session: no cookie, smooth weighted round robin (3:1:1:1).
    {
        let store = MemoryStore::new(Duration::from_secs(1800), 1_000_000);
        let h = cookies("_ga=GA1.2.1234567890.1700000000; theme=dark");
        let d = route(&router, &*store, &h, "/");
        assert_eq!(d.reason, Reason::New);
        g.bench_function("new_session_wrr", |b| {
            b.iter(|| route(&router, &*store, black_box(&h), black_box("/")))
        });
    }

    // (c) Learned session: no suffix, bound in a store of 100k sessions.
    {
        let store = MemoryStore::new(Duration::from_secs(1800), 1_000_000);
        let routes: Vec<Arc<str>> = router
            .0
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
                cookies(&format!("theme=dark; JSESSIONID={}", base_id(n)))
            })
            .collect();
        let d = route(&router, &*store, &headers[1], "/");
        assert_eq!((d.index, d.reason), (97 % 4, Reason::Sticky));
        let mut k = 0usize;
        g.bench_function("learned_no_suffix_100k", |b| {
            b.iter(|| {
                k = (k + 1) & 1023;
                route(&router, &*store, black_box(&headers[k]), black_box("/"))
            })
        });
    }

    // (d) Path parameter: `;jsessionid=<id>.<route>` in the URL, no cookie.
    {
        let store = MemoryStore::new(Duration::from_secs(1800), 1_000_000);
        let h = cookies("theme=dark");
        let path = format!("/shop/cart;jsessionid={}.tomcat2", base_id(9));
        let d = route(&router, &*store, &h, &path);
        assert_eq!((d.index, d.reason), (1, Reason::Sticky));
        g.bench_function("path_parameter", |b| {
            b.iter(|| route(&router, &*store, black_box(&h), black_box(&path)))
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
