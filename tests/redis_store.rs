//! Redis session-store drills: real `stickgate` processes sharing a real
//! Redis (standalone, Sentinel, Cluster) in front of real demo backends, all
//! on loopback. Learned affinity must hold across balancers, failover heirs
//! must be agreed cluster-wide, and a Redis outage must never be visible to
//! clients.
mod common;
use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stickgate::backend::AdminState;
use stickgate::config::raw::StoreSection;
use stickgate::config::StoreKind;
use stickgate::store::redis::RedisStore;
use stickgate::store::{SessionStore, StateChange};

const COOKIE: &str = "JSESSIONID";

// ---------------------------------------------------------------------------
// Shared steps.
// ---------------------------------------------------------------------------

/// `[store]` for a standalone Redis.
fn redis_store(url: &str) -> String {
    format!("[store]\nkind = \"redis\"\nredis_url = \"{url}\"\n")
}

fn base_of(id: &str) -> &str {
    id.split('.').next().unwrap()
}

/// `n` new sessions through `gate`: (cookie value, route), each with one hit.
async fn new_sessions(c: &HttpClient, gate: &Gate, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = hit(c, gate, None).await;
        assert_eq!(r.status, 200, "new session: {:?}", r.body);
        assert_eq!(hits_of(&r), 1);
        let id = r.set_cookie(COOKIE).expect("new session cookie");
        out.push((id, route_of(&r)));
    }
    out
}

/// Poll the status API until `ok` holds; panics with the last status and
/// the balancer's log after `within`.
async fn wait_status(
    gate: &Gate,
    within: Duration,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let end = Instant::now() + within;
    loop {
        let s = gate.status().await;
        if ok(&s) {
            return s;
        }
        if Instant::now() >= end {
            panic!(
                "{what}: not reached within {within:?}\nstore: {}\ncounts: {:?}\nlog:\n{}",
                s["store"],
                counts(&s),
                gate.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn healthy(s: &Value) -> bool {
    s["store"]["healthy"] == true
}

/// `sessions.current` of every backend.
fn counts(s: &Value) -> Vec<(String, u64)> {
    s["backends"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    (
                        b["route"].as_str().unwrap_or("?").to_owned(),
                        b["sessions"]["current"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn total_sessions(s: &Value) -> u64 {
    counts(s).iter().map(|(_, n)| n).sum()
}

/// Session keys (`stickgate:s:*`) in a standalone Redis.
fn session_keys(port: u16) -> Vec<String> {
    redis_keys(port, "stickgate:s:*")
}

/// Wait (bounded) until the Redis on `port` holds at least `n` session keys.
fn wait_session_keys(port: u16, n: usize, within: Duration) -> usize {
    let mut seen = 0;
    let _ = wait_for(within, || {
        seen = session_keys(port).len();
        seen >= n
    });
    seen
}

/// Learn `n` sessions through `from`, then send each one's cookie through
/// `to` twice: it must reach the same node, which must know it (hits grow,
/// no new session issued).
async fn learn_and_follow(from: &Gate, to: &Gate, n: usize, label: &str) -> Vec<(String, String)> {
    let c = client();
    let sessions = new_sessions(&c, from, n).await;
    let routes: BTreeSet<&str> = sessions.iter().map(|(_, r)| r.as_str()).collect();
    assert!(
        routes.len() >= 2,
        "{label}: new sessions should spread over both nodes: {sessions:?}"
    );
    for (id, route) in replay_order(&sessions) {
        assert!(!id.contains('.'), "--no-suffix ids carry no route: {id}");
        for want in 2..=3 {
            let r = hit(&c, to, Some(id)).await;
            assert_eq!(r.status, 200, "{label}: {id}: {:?}", r.body);
            let got = route_of(&r);
            if got != *route {
                // The store's error count tells a slow Redis (fetch timed
                // out) from a binding that never reached it.
                panic!(
                    "{label}: session {id} was learned on {route} but the other balancer sent \
                     it to {got} (its hit {want}); other balancer's store: {}",
                    to.status().await["store"]
                );
            }
            assert_eq!(hits_of(&r), want, "{label}: {id}: session state lost");
            assert_eq!(
                r.set_cookie(COOKIE),
                None,
                "{label}: {id}: new session issued"
            );
        }
    }
    sessions
}

/// Run `f` over `items` with at most `n` in flight, keeping input order.
async fn in_parallel<T, F, Fut, R>(items: Vec<T>, n: usize, f: F) -> Vec<R>
where
    F: Fn(usize, T) -> Fut,
    Fut: std::future::Future<Output = (usize, R)>,
{
    let mut out: Vec<(usize, R)> = futures_util::stream::iter(items.into_iter().enumerate())
        .map(|(i, t)| f(i, t))
        .buffer_unordered(n)
        .collect()
        .await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// One served request of an orphan-drive: which balancer, route, hits.
#[derive(Debug, Clone)]
struct Served {
    via: char,
    route: String,
    hits: u64,
}

/// Drive each session four times, twice through each balancer: first A
/// and B at the same moment (racing to claim the heir), then one after the
/// other (A first for even sessions, B first for odd ones). The cookie is
/// kept like a browser would (updated from Set-Cookie) when `follow`;
/// otherwise the original cookie is sent every time.
async fn drive_pairs(a: &Gate, b: &Gate, cookies: Vec<String>, follow: bool) -> Vec<Vec<Served>> {
    let c = client();
    in_parallel(cookies, 8, |i, cookie| {
        let c = c.clone();
        async move {
            let mut jar = cookie.clone();
            let mut seen = Vec::new();
            let (ra, rb) = tokio::join!(hit(&c, a, Some(&jar)), hit(&c, b, Some(&jar)));
            for (via, r) in [('A', ra), ('B', rb)] {
                assert_eq!(r.status, 200, "{cookie} via {via}: {:?}", r.body);
                if follow {
                    if let Some(v) = r.set_cookie(COOKIE) {
                        jar = v;
                    }
                }
                seen.push(Served {
                    via,
                    route: route_of(&r),
                    hits: hits_of(&r),
                });
            }
            let order = if i % 2 == 0 {
                [('A', a), ('B', b)]
            } else {
                [('B', b), ('A', a)]
            };
            for (via, g) in order {
                let r = hit(&c, g, Some(&jar)).await;
                assert_eq!(r.status, 200, "{cookie} via {via}: {:?}", r.body);
                if follow {
                    if let Some(v) = r.set_cookie(COOKIE) {
                        jar = v;
                    }
                }
                seen.push(Served {
                    via,
                    route: route_of(&r),
                    hits: hits_of(&r),
                });
            }
            (i, seen)
        }
    })
    .await
}

/// Every session must have been served by exactly one backend, never
/// `dead`; returns how many sessions each heir got.
fn assert_one_heir(
    cookies: &[String],
    served: &[Vec<Served>],
    dead: &str,
) -> HashMap<String, usize> {
    let mut split = Vec::new();
    let mut per_heir: HashMap<String, usize> = HashMap::new();
    for (cookie, s) in cookies.iter().zip(served) {
        let routes: BTreeSet<&str> = s.iter().map(|x| x.route.as_str()).collect();
        assert!(
            !routes.contains(dead),
            "{cookie} was served by the dead node {dead}: {s:?}"
        );
        if routes.len() != 1 {
            let trail: Vec<String> = s
                .iter()
                .map(|x| format!("{}->{} (hits {})", x.via, x.route, x.hits))
                .collect();
            split.push(format!("{cookie}: {}", trail.join(", ")));
        } else {
            *per_heir.entry(s[0].route.clone()).or_default() += 1;
        }
    }
    assert!(
        split.is_empty(),
        "{} of {} orphaned sessions were served by more than one heir:\n{}",
        split.len(),
        cookies.len(),
        split.join("\n")
    );
    per_heir
}

// ---------------------------------------------------------------------------
// 1. Learned affinity is shared.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn learned_affinity_is_honoured_by_the_other_balancer() {
    let redis = Redis::start_isolated();
    let n1 = Backend::start("tomcat1", &["--no-suffix"]);
    let n2 = Backend::start("tomcat2", &["--no-suffix"]);
    let body = format!(
        "{FAST_HEALTH}{}{}{}",
        redis_store(&redis.url()),
        n1.toml(),
        n2.toml()
    );
    let a = Gate::start(&body);
    let b = Gate::start(&body);
    learn_and_follow(&a, &b, 20, "A->B").await;
    learn_and_follow(&b, &a, 20, "B->A").await;
    assert!(healthy(&a.status().await) && healthy(&b.status().await));
}

// ---------------------------------------------------------------------------
// 2. Consistent failover.
// ---------------------------------------------------------------------------

/// The `[store]` and backends of two balancers in front of the same live
/// `nodes` (after a dead `t1`) that would pick different heirs on their
/// own: A weighs them equally, B 1:4:40. Rendezvous hashing alone makes
/// balancers with the same weights agree without sharing anything, so only
/// different weights show that the claim in Redis is what agrees.
fn disagreeing_bodies(redis: &Redis, nodes: &[Backend]) -> (String, String) {
    let head = format!(
        "{FAST_HEALTH}{}{}",
        redis_store(&redis.url()),
        dead_backend_toml("t1", "")
    );
    let (mut a, mut b) = (head.clone(), head);
    for (n, w) in nodes.iter().zip([1, 4, 40]) {
        a.push_str(&n.toml());
        b.push_str(&n.toml_with(&format!("weight = {w}")));
    }
    (a, b)
}

/// t1 never started; 200 sessions still carrying `.t1` are requested through
/// both balancers, racing: each lands on exactly one heir, although the
/// balancers' weights differ (see [`disagreeing_bodies`]).
#[tokio::test]
async fn orphans_of_a_dead_route_get_one_heir_across_balancers() {
    let redis = Redis::start_isolated();
    let nodes: Vec<Backend> = ["t2", "t3", "t4"]
        .iter()
        .map(|r| Backend::start(r, &[]))
        .collect();
    let (body_a, body_b) = disagreeing_bodies(&redis, &nodes);
    let a = Gate::start(&body_a);
    let b = Gate::start(&body_b);
    let cookies: Vec<String> = (0..200).map(|n| format!("S{n:04}.t1")).collect();
    let served = drive_pairs(&a, &b, cookies.clone(), false).await;
    let per_heir = assert_one_heir(&cookies, &served, "t1");
    for r in ["t2", "t3", "t4"] {
        assert!(
            per_heir.get(r).copied().unwrap_or(0) >= 10,
            "heirs should spread over the live nodes: {per_heir:?}"
        );
    }
}

/// The heir a balancer would pick alone depends on its weights; here the
/// two balancers are configured with different weights, so they disagree on
/// many heirs, and only the cluster-wide claim in Redis can make them agree.
/// The backends share session data (like a replicated Tomcat cluster), so
/// every session keeps its id and its hit count wherever it lands.
#[tokio::test]
async fn claim_makes_balancers_agree_even_when_their_own_heirs_differ() {
    let redis = Redis::start_isolated();
    let data = redis.url();
    let nodes: Vec<Backend> = ["t2", "t3", "t4"]
        .iter()
        .map(|r| Backend::start(r, &["--redis", &data]))
        .collect();
    let store = redis_store(&redis.url());
    let dead = dead_backend_toml("t1", "");
    let body_a = format!(
        "{FAST_HEALTH}{store}{dead}{}{}{}",
        nodes[0].toml(),
        nodes[1].toml(),
        nodes[2].toml()
    );
    let body_b = format!(
        "{FAST_HEALTH}{store}{dead}{}{}{}",
        nodes[0].toml_with("weight = 1"),
        nodes[1].toml_with("weight = 4"),
        nodes[2].toml_with("weight = 40")
    );
    let a = Gate::start(&body_a);
    let b = Gate::start(&body_b);

    // The sessions exist in the backends' shared data, with 0 hits.
    let bases: Vec<String> = (0..200).map(|n| format!("C{n:04}")).collect();
    let mut mset = vec!["mset".to_owned()];
    for base in &bases {
        mset.push(format!("demo:session:{base}"));
        mset.push("0".into());
    }
    let args: Vec<&str> = mset.iter().map(String::as_str).collect();
    assert_eq!(redis.cli(&args), "OK");

    // Half race (both balancers at once), half go one after the other; for
    // the latter, whoever comes first decides.
    let racing: Vec<String> = bases[..100].iter().map(|b| format!("{b}.t1")).collect();
    let served = drive_pairs(&a, &b, racing.clone(), true).await;
    assert_one_heir(&racing, &served, "t1");

    let c = client();
    let sequential: Vec<String> = bases[100..].iter().map(|b| format!("{b}.t1")).collect();
    let mut by_first: HashMap<char, HashMap<String, usize>> = HashMap::new();
    let mut seq_served = Vec::new();
    for (i, cookie) in sequential.iter().enumerate() {
        let order = if i % 2 == 0 {
            [('A', &a), ('B', &b)]
        } else {
            [('B', &b), ('A', &a)]
        };
        let mut jar = cookie.clone();
        let mut seen = Vec::new();
        for (via, g) in order.iter().chain(order.iter()) {
            let r = hit(&c, g, Some(&jar)).await;
            assert_eq!(r.status, 200, "{cookie} via {via}: {:?}", r.body);
            if let Some(v) = r.set_cookie(COOKIE) {
                jar = v;
            }
            seen.push(Served {
                via: *via,
                route: route_of(&r),
                hits: hits_of(&r),
            });
        }
        *by_first
            .entry(order[0].0)
            .or_default()
            .entry(seen[0].route.clone())
            .or_default() += 1;
        seq_served.push(seen);
    }
    assert_one_heir(&sequential, &seq_served, "t1");

    // Every session kept its data: hits 1..=4, each exactly once.
    for (cookie, s) in racing
        .iter()
        .zip(&served)
        .chain(sequential.iter().zip(&seq_served))
    {
        let hits: BTreeSet<u64> = s.iter().map(|x| x.hits).collect();
        assert_eq!(
            hits,
            (1..=4).collect::<BTreeSet<u64>>(),
            "{cookie}: session data not continuous: {s:?}"
        );
    }

    // Evidence the two balancers would have chosen differently on their
    // own: A (equal weights) spreads, B (1:4:40) mostly picks t4.
    let a_first = &by_first[&'A'];
    let b_first = &by_first[&'B'];
    assert!(
        ["t2", "t3", "t4"]
            .iter()
            .all(|r| a_first.get(*r).copied().unwrap_or(0) >= 5),
        "A's own heirs should spread: {a_first:?}"
    );
    assert!(
        b_first.get("t4").copied().unwrap_or(0) >= 35,
        "B's own heirs should favour t4: {b_first:?}"
    );
}

/// Sessions live on t1; t1 is SIGKILLed; both balancers are asked at once
/// and in turns: each orphan gets one heir, and keeps its data. The heirs'
/// weights differ between the balancers (A 1:1:1, B 1:4:40), so hashing
/// alone would split many orphans: only the claim in Redis agrees.
#[tokio::test]
async fn sessions_of_a_killed_node_get_one_heir_across_balancers() {
    let redis = Redis::start_isolated();
    let data = redis.url();
    let mut nodes: Vec<Backend> = ["t1", "t2", "t3", "t4"]
        .iter()
        .map(|r| Backend::start(r, &["--redis", &data]))
        .collect();
    let head = format!(
        "{FAST_HEALTH}{}{}",
        redis_store(&redis.url()),
        nodes[0].toml()
    );
    let (mut body_a, mut body_b) = (head.clone(), head);
    for (n, w) in nodes[1..].iter().zip([1, 4, 40]) {
        body_a.push_str(&n.toml());
        body_b.push_str(&n.toml_with(&format!("weight = {w}")));
    }
    let a = Gate::start(&body_a);
    let b = Gate::start(&body_b);

    // 60 sessions created on t1 itself, then seen once through each balancer.
    let c = client();
    let direct = format!("http://127.0.0.1:{}/", nodes[0].port);
    let mut cookies = Vec::new();
    for _ in 0..60 {
        let r = request(&c, "GET", &direct, None, Bytes::new()).await;
        let id = r.set_cookie(COOKIE).expect("session cookie from t1");
        assert!(id.ends_with(".t1"), "{id}");
        cookies.push(id);
    }
    for id in &cookies {
        for (g, want) in [(&a, 2), (&b, 3)] {
            let r = hit(&c, g, Some(id)).await;
            assert_eq!(route_of(&r), "t1");
            assert_eq!(hits_of(&r), want);
        }
    }

    nodes[0].proc.kill();
    let served = drive_pairs(&a, &b, cookies.clone(), true).await;
    let per_heir = assert_one_heir(&cookies, &served, "t1");
    assert!(per_heir.len() >= 2, "heirs should spread: {per_heir:?}");
    for (cookie, s) in cookies.iter().zip(&served) {
        let hits: BTreeSet<u64> = s.iter().map(|x| x.hits).collect();
        assert_eq!(
            hits,
            (4..=7).collect::<BTreeSet<u64>>(),
            "{cookie}: replicated session data not continuous: {s:?}"
        );
    }
}

/// A failover decided through one balancer binds the other one too, also
/// after the dead node comes back: no balancer may flap a session back to
/// its old node while another keeps it on the heir. Here B knew the
/// sessions on t1 but saw no request for them while t1 was down.
#[tokio::test]
async fn failover_through_one_balancer_binds_the_other_after_the_node_returns() {
    let redis = Redis::start_isolated();
    let data = redis.url();
    let mut t1 = Backend::start("t1", &["--redis", &data]);
    let t2 = Backend::start("t2", &["--redis", &data]);
    let body = format!(
        "{FAST_HEALTH}{}{}{}",
        redis_store(&redis.url()),
        t1.toml(),
        t2.toml()
    );
    let a = Gate::start(&body);
    let b = Gate::start(&body);
    let c = client();
    // Ten real sessions on t1, issued through A (so A stored them: a
    // balancer only stores sessions a backend issued, never ids a client
    // merely presents).
    let mut ids = Vec::new();
    for _ in 0..60 {
        let (id, route) = new_sessions(&c, &a, 1).await.remove(0);
        if route == "t1" && ids.len() < 10 {
            ids.push(id);
        }
    }
    assert_eq!(ids.len(), 10, "60 new sessions did not put 10 on t1");
    // Both balancers know them on t1 (B through Redis).
    for id in &ids {
        for (g, want) in [(&a, 2), (&b, 3)] {
            let r = hit(&c, g, Some(id)).await;
            assert_eq!(route_of(&r), "t1");
            assert_eq!(hits_of(&r), want);
        }
    }

    let port = t1.port;
    t1.proc.kill();
    let mut renamed = Vec::new();
    for id in &ids {
        let r = hit(&c, &a, Some(id)).await;
        assert_eq!(r.status, 200);
        assert_eq!(route_of(&r), "t2", "{id}");
        assert_eq!(hits_of(&r), 4);
        renamed.push(r.set_cookie(COOKIE).expect("cookie renamed to t2"));
    }
    // A failover decided by A reaches B through Redis within ~200 ms
    // (B re-checks its cached bindings to t1); wait for that, bounded.
    let mut followed = false;
    for _ in 0..100 {
        if b.status().await["store"]["invalidations"]
            .as_u64()
            .unwrap_or(0)
            >= 1
        {
            followed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(followed, "B never followed A's failover: {}", b.logs());
    let _t1 = Backend::start_on("t1", port, &["--redis", &data]);
    a.wait_health("t1", "up").await;
    b.wait_health("t1", "up").await;

    let mut wrong = Vec::new();
    for (id, new_id) in ids.iter().zip(&renamed) {
        for (via, g, cookie) in [("B", &b, new_id), ("B", &b, id), ("A", &a, id)] {
            let r = hit(&c, g, Some(cookie)).await;
            assert_eq!(r.status, 200);
            let got = route_of(&r);
            if got != "t2" {
                wrong.push(format!("{cookie} via {via} -> {got}"));
            }
        }
    }
    let mut in_redis: HashMap<String, usize> = HashMap::new();
    for k in session_keys(redis.port) {
        *in_redis.entry(redis.cli(&["hget", &k, "r"])).or_default() += 1;
    }
    assert!(
        wrong.is_empty(),
        "sessions failed over to t2 (routes in Redis: {in_redis:?}) went back to t1 once it \
         returned, {} of {} requests:\n{}",
        wrong.len(),
        ids.len() * 3,
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 3. A balancer dies; its peer keeps every affinity.
// ---------------------------------------------------------------------------

/// A is SIGKILLed right after its last response. A failure naming the last
/// session learned, with "session keys in Redis right after the kill: 29/30",
/// means that binding was still in A's write-behind queue when A died.
#[tokio::test]
async fn peer_keeps_affinities_of_a_killed_balancer() {
    let redis = Redis::start_isolated();
    let n1 = Backend::start("tomcat1", &["--no-suffix"]);
    let n2 = Backend::start("tomcat2", &["--no-suffix"]);
    let body = format!(
        "{FAST_HEALTH}{}{}{}",
        redis_store(&redis.url()),
        n1.toml(),
        n2.toml()
    );
    let mut a = Gate::start(&body);
    let b = Gate::start(&body);
    let c = client();
    let sessions = new_sessions(&c, &a, 30).await;
    let routes: BTreeSet<&str> = sessions.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(routes.len(), 2, "{sessions:?}");
    // Straight after the last response: nothing waits for A's writes.
    a.proc.kill();
    assert!(!a.is_running());
    let written = session_keys(redis.port).len();
    for (id, route) in replay_order(&sessions) {
        let i = sessions.iter().position(|(x, _)| x == id).unwrap();
        for want in 2..=3 {
            let r = hit(&c, &b, Some(id)).await;
            assert_eq!(r.status, 200);
            assert_eq!(
                route_of(&r),
                *route,
                "session {id} (learned #{i} of 30): learned on {route} through the killed balancer, moved by \
                 its peer (session keys in Redis right after the kill: {written}/30; peer's \
                 store: {})",
                b.status().await["store"]
            );
            assert_eq!(hits_of(&r), want);
        }
    }
}

// ---------------------------------------------------------------------------
// 4. Redis restarted under load.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load_is_invisible_to_clients() {
    let mut redis = Redis::start_isolated();
    let port = redis.port;
    // Ids without a route suffix: through the outage only the balancer's
    // own cache of what Redis held can keep them on their node.
    let n1 = Backend::start("tomcat1", &["--no-suffix"]);
    let n2 = Backend::start("tomcat2", &["--no-suffix"]);
    let body = format!(
        "{FAST_HEALTH}{}{}{}",
        redis_store(&redis.url()),
        n1.toml(),
        n2.toml()
    );
    let gate = Arc::new(Gate::start(&body));
    wait_status(
        &gate,
        Duration::from_secs(5),
        "store healthy at start",
        healthy,
    )
    .await;

    const TASKS: usize = 4;
    const PER_TASK: usize = 250;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (gate, stop, done) = (gate.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let first = hit(&c, &gate, None).await;
            assert_eq!(first.status, 200);
            let id = first.set_cookie(COOKIE).expect("session cookie");
            assert!(!id.contains('.'), "--no-suffix ids carry no route: {id}");
            let route = route_of(&first);
            let mut problems = Vec::new();
            let mut n = 0;
            while n < PER_TASK && !stop.load(Ordering::Relaxed) {
                if started.elapsed() > Duration::from_secs(20) {
                    break;
                }
                let at = started.elapsed();
                let cookie = format!("{COOKIE}={id}");
                match try_request(&c, "GET", &gate.url("/"), Some(&cookie), Bytes::new()).await {
                    Err(e) => problems.push(format!("{at:?}: transport error {e}")),
                    Ok(r) if r.status != 200 => {
                        problems.push(format!("{at:?}: status {} {:?}", r.status, r.body))
                    }
                    Ok(r) => {
                        let got = route_of(&r);
                        if got != route {
                            problems.push(format!("{at:?}: moved {route} -> {got}"));
                        }
                    }
                }
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (id, route, n, problems)
        }));
    }
    let wait_done = |target: u64, within: Duration| {
        let done = done.clone();
        async move {
            let end = Instant::now() + within;
            while done.load(Ordering::Relaxed) < target && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            done.load(Ordering::Relaxed)
        }
    };
    let warm = wait_done(40, Duration::from_secs(10)).await;
    assert!(warm >= 40, "load did not start: {warm} requests");
    assert!(
        wait_session_keys(port, TASKS, Duration::from_secs(3)) >= TASKS,
        "sessions never reached Redis before the outage"
    );

    // Outage: SIGKILL Redis, keep it down ~1.5 s, start a new (empty) one on
    // the same port.
    redis.proc.kill();
    let killed = Instant::now();
    let at_kill = done.load(Ordering::Relaxed);
    wait_status(
        &gate,
        Duration::from_secs(5),
        "store unhealthy after kill",
        |s| !healthy(s),
    )
    .await;
    let noticed = killed.elapsed();
    // Sessions issued while Redis is down, never asked for again: only the
    // write-back after the restart can bring them to the new Redis.
    let issued_during = new_sessions(&client(), &gate, 6).await;
    if let Some(rest) = Duration::from_millis(1500).checked_sub(killed.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let during_outage = done.load(Ordering::Relaxed) - at_kill;
    let redis2 = tokio::task::spawn_blocking(move || Redis::start_on(port))
        .await
        .unwrap();
    let restarted = Instant::now();
    let s = wait_status(
        &gate,
        Duration::from_secs(6),
        "store healthy again after restart",
        healthy,
    )
    .await;
    let recovered = restarted.elapsed();
    let errors = s["store"]["errors"].as_u64().unwrap();
    let after = done.load(Ordering::Relaxed);
    let end_count = wait_done(after + 40, Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);

    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.expect("load task panicked"));
    }
    eprintln!(
        "redis restart drill: {end_count} requests, {during_outage} while Redis was down, \
         outage noticed after {noticed:?}, healthy {recovered:?} after restart, store errors {errors}"
    );
    let problems: Vec<String> = all
        .iter()
        .flat_map(|(id, route, _, p)| p.iter().map(move |x| format!("{id} on {route}: {x}")))
        .collect();
    assert!(
        problems.is_empty(),
        "{} client-visible problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        during_outage >= 10,
        "too little load during the outage: {during_outage}"
    );
    assert!(
        end_count >= after + 40,
        "load ended before enough requests after recovery: {end_count} (recovered at {after})"
    );
    assert!(
        errors > 0,
        "store.errors should count the outage: {}",
        s["store"]
    );

    // The new Redis started empty; the resync wrote the sessions back.
    let total = TASKS + issued_during.len();
    let keys = wait_session_keys(redis2.port, total, Duration::from_secs(5));
    assert!(
        keys >= total,
        "after recovery only {keys} session keys are back in Redis (want >= {total})\nlog:\n{}",
        gate.logs()
    );
    // And they are the right ones: the routes in Redis match.
    let mut in_redis: Vec<String> = session_keys(redis2.port)
        .iter()
        .map(|k| redis2.cli(&["hget", k, "r"]))
        .collect();
    in_redis.sort();
    let mut want: Vec<String> = all.iter().map(|(_, r, _, _)| r.clone()).collect();
    want.extend(issued_during.iter().map(|(_, r)| r.clone()));
    want.sort();
    assert_eq!(in_redis, want, "routes written back");
    // A balancer that never saw the outage's sessions finds their nodes.
    let other = Gate::start(&body);
    let c = client();
    for (id, route) in replay_order(&issued_during) {
        let r = hit(&c, &other, Some(id)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(
            route_of(&r),
            *route,
            "{id}, issued while Redis was down, misrouted after the restart"
        );
        assert_eq!(hits_of(&r), 2);
    }
}

// ---------------------------------------------------------------------------
// 5. Expiry and cluster-wide counts.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn counts_are_cluster_wide_and_idle_sessions_expire() {
    let redis = Redis::start_isolated();
    let n1 = Backend::start("tomcat1", &[]);
    let n2 = Backend::start("tomcat2", &[]);
    let body = format!(
        "{FAST_HEALTH}[session]\nidle_timeout = \"2s\"\n{}{}{}",
        redis_store(&redis.url()),
        n1.toml(),
        n2.toml()
    );
    let a = Gate::start(&body);
    let b = Gate::start(&body);
    let c = client();
    let created = Instant::now();
    let sessions = new_sessions(&c, &a, 5).await;
    for g in [&a, &b] {
        let s = wait_status(g, Duration::from_secs(4), "5 sessions counted", |s| {
            total_sessions(s) == 5
        })
        .await;
        assert_eq!(s["store"]["sessions"], 5, "{}", s["store"]);
    }
    // B never saw them: its counts come from Redis. Per route too.
    let mut want: HashMap<String, u64> = HashMap::new();
    for (_, r) in &sessions {
        *want.entry(r.clone()).or_default() += 1;
    }
    for (route, n) in counts(&b.status().await) {
        assert_eq!(n, want.get(&route).copied().unwrap_or(0), "{route}");
    }

    for g in [&a, &b] {
        wait_status(
            g,
            Duration::from_secs(6),
            "counts fall to 0 when idle",
            |s| total_sessions(s) == 0,
        )
        .await;
    }
    let fell = created.elapsed();
    assert!(fell < Duration::from_secs(8), "{fell:?}");
    let mut left = Vec::new();
    let _ = wait_for(Duration::from_secs(2), || {
        left = session_keys(redis.port);
        left.is_empty()
    });
    assert!(left.is_empty(), "session keys left after expiry: {left:?}");
    let peak = a.status().await["backends"][0]["sessions"]["peak"].clone();
    assert!(peak.as_u64().unwrap() >= 1, "peak kept: {peak}");
}

// ---------------------------------------------------------------------------
// 6. Keys are hashed.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn redis_never_holds_raw_session_ids() {
    let redis = Redis::start_isolated();
    let n1 = Backend::start("tomcat1", &[]);
    let n2 = Backend::start("tomcat2", &["--no-suffix"]);
    let body = format!(
        "{FAST_HEALTH}{}{}{}",
        redis_store(&redis.url()),
        n1.toml(),
        n2.toml()
    );
    let a = Gate::start(&body);
    let c = client();
    let mut bases: Vec<String> = new_sessions(&c, &a, 10)
        .await
        .into_iter()
        .map(|(id, _)| base_of(&id).to_owned())
        .collect();
    // An id bound by its suffix alone (client-chosen, e.g. from another
    // balancer farm): its binding is stored too.
    let r = hit(&c, &a, Some("RAWCLIENTID0123456789.tomcat1")).await;
    assert_eq!(r.status, 200);
    bases.push("RAWCLIENTID0123456789".into());
    for (id, _) in new_sessions(&c, &a, 2).await {
        hit(&c, &a, Some(&id)).await;
        bases.push(base_of(&id).to_owned());
    }

    let n = wait_session_keys(redis.port, 12, Duration::from_secs(3));
    assert!(n >= 12, "only {n} session keys in Redis");
    let keys = redis.keys("*");
    let mut dump = keys.join("\n");
    for k in &keys {
        let t = redis.cli(&["type", k]);
        let v = match t.as_str() {
            "hash" => redis.cli(&["hgetall", k]),
            "zset" => redis.cli(&["zrange", k, "0", "-1"]),
            "string" => redis.cli(&["get", k]),
            other => format!("<{other}>"),
        };
        dump.push('\n');
        dump.push_str(&v);
    }
    let upper = dump.to_ascii_uppercase();
    for base in &bases {
        assert!(
            !upper.contains(&base.to_ascii_uppercase()),
            "raw session id {base} found in Redis:\n{dump}"
        );
    }
    for k in keys.iter().filter(|k| k.starts_with("stickgate:s:")) {
        let h = &k["stickgate:s:".len()..];
        assert!(
            h.len() >= 32 && h.bytes().all(|b| b.is_ascii_hexdigit()),
            "session key is not a hash: {k}"
        );
    }
}

// ---------------------------------------------------------------------------
// 7. Redis down at start.
// ---------------------------------------------------------------------------

/// Redis is down from the start and the nodes issue ids without a route
/// suffix, so every session is created during the outage and only the
/// balancer's local binding keeps it on its node. When Redis comes up, the
/// balancer writes those bindings back (README, "Redis down"), and a second
/// balancer that never saw the sessions routes them through Redis.
#[tokio::test]
async fn starts_and_stays_sticky_without_redis() {
    let port = free_port();
    let n1 = Backend::start("tomcat1", &["--no-suffix"]);
    let n2 = Backend::start("tomcat2", &["--no-suffix"]);
    let body = format!(
        "{FAST_HEALTH}{}{}{}",
        redis_store(&format!("redis://127.0.0.1:{port}")),
        n1.toml(),
        n2.toml()
    );
    let gate = Gate::start(&body);
    let c = client();
    let t = Instant::now();
    let sessions = new_sessions(&c, &gate, 6).await;
    let routes: BTreeSet<&str> = sessions.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(routes.len(), 2, "{sessions:?}");
    for want in 2..=4 {
        for (id, route) in replay_order(&sessions) {
            assert!(!id.contains('.'), "--no-suffix ids carry no route: {id}");
            let r = hit(&c, &gate, Some(id)).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            assert_eq!(route_of(&r), *route, "{id} moved while Redis was down");
            assert_eq!(hits_of(&r), want);
        }
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "24 requests took {:?}: requests must not wait on a dead Redis",
        t.elapsed()
    );
    let s = wait_status(&gate, Duration::from_secs(5), "store unhealthy", |s| {
        !healthy(s)
    })
    .await;
    assert_eq!(s["store"]["kind"], "redis");
    assert!(
        gate.logs().to_lowercase().contains("unreachable"),
        "expected a warning about Redis:\n{}",
        gate.logs()
    );
    assert!(gate.logs().contains("WARN"), "{}", gate.logs());

    // Redis comes up: the bindings made meanwhile are written back...
    let redis = tokio::task::spawn_blocking(move || Redis::start_on(port))
        .await
        .unwrap();
    wait_status(
        &gate,
        Duration::from_secs(5),
        "healthy once Redis is up",
        healthy,
    )
    .await;
    let keys = wait_session_keys(redis.port, 6, Duration::from_secs(5));
    assert_eq!(keys, 6, "sessions created during the outage written back");
    // ...so a balancer that never saw them sends each to its node.
    let other = Gate::start(&body);
    for (id, route) in replay_order(&sessions) {
        let r = hit(&c, &other, Some(id)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(
            route_of(&r),
            *route,
            "{id}, created while Redis was down, misrouted by a second balancer \
             after Redis returned; its store: {}",
            other.status().await["store"]
        );
        assert_eq!(hits_of(&r), 5);
    }
}

/// Redis hangs (SIGSTOP: connections stay open, nothing answers). Requests
/// must not wait on it longer than `store.timeout` (100 ms): sessions the
/// balancer holds keep their node (ids without a route suffix, cached
/// bindings older than `cache_ttl`, so each one would ask Redis), new
/// sessions are still issued, and once Redis answers again (SIGCONT) those
/// are written back and honoured by another balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_costs_requests_at_most_the_store_timeout() {
    let redis = Redis::start_isolated();
    let n1 = Backend::start("tomcat1", &["--no-suffix"]);
    let n2 = Backend::start("tomcat2", &["--no-suffix"]);
    let body = format!(
        "{FAST_HEALTH}{}timeout = \"100ms\"\ncache_ttl = \"200ms\"\n{}{}",
        redis_store(&redis.url()),
        n1.toml(),
        n2.toml()
    );
    let a = Gate::start(&body);
    let c = client();
    let before = new_sessions(&c, &a, 8).await;
    assert_eq!(
        wait_session_keys(redis.port, 8, Duration::from_secs(3)),
        8,
        "sessions in Redis before the hang"
    );
    // Every cached binding is past cache_ttl: the next request for each
    // would re-check with Redis.
    tokio::time::sleep(Duration::from_millis(400)).await;

    redis.proc.signal("STOP");
    let hung = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut latencies = Vec::new();
    let mut created = Vec::new();
    let mut round = 0u64;
    // About 3 s of traffic: the first requests meet the hang before the
    // store's monitor notices it (ping bound 500 ms, every second).
    while hung.elapsed() < Duration::from_secs(3) && round < 300 {
        round += 1;
        for (id, route) in replay_order(&before) {
            let t = Instant::now();
            let r = hit(&c, &a, Some(id)).await;
            let took = t.elapsed();
            latencies.push(took);
            slowest = slowest.max(took);
            assert_eq!(r.status, 200, "{:?}", r.body);
            assert_eq!(route_of(&r), *route, "{id} moved while Redis hung");
            assert_eq!(hits_of(&r), round + 1);
        }
        let t = Instant::now();
        created.extend(new_sessions(&c, &a, 1).await);
        let took = t.elapsed();
        latencies.push(took);
        slowest = slowest.max(took);
    }
    let s = a.status().await;
    redis.proc.signal("CONT");
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    eprintln!(
        "hung redis: {} requests in {:?}, median {median:?}, slowest {slowest:?}, \
         store errors {}",
        latencies.len(),
        hung.elapsed(),
        s["store"]["errors"]
    );
    assert!(round >= 3, "only {round} rounds in 3 s of a hung Redis");
    // 100 ms of store.timeout, plus room for a debug build on a loaded
    // 2-core machine. Without the bound a request would wait until the
    // store's monitor gives up on its ping (500 ms) and drops the
    // connection: measured 503-505 ms with the fetch bound removed.
    assert!(
        slowest < Duration::from_millis(400),
        "a request waited {slowest:?} on a hung Redis (store.timeout 100 ms); median {median:?}"
    );
    assert!(!healthy(&s), "hang not noticed: {}", s["store"]);
    assert!(created.len() >= 3, "{created:?}");

    // Redis answers again: sessions issued during the hang are written
    // back, and a balancer that never saw them routes them.
    wait_status(&a, Duration::from_secs(5), "healthy after SIGCONT", healthy).await;
    let want = before.len() + created.len();
    let keys = wait_session_keys(redis.port, want, Duration::from_secs(5));
    assert_eq!(keys, want, "sessions issued during the hang written back");
    let b = Gate::start(&body);
    for (id, route) in replay_order(&created) {
        let r = hit(&c, &b, Some(id)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(
            route_of(&r),
            *route,
            "{id}, issued while Redis hung, misrouted by another balancer"
        );
        assert_eq!(hits_of(&r), 2);
    }
}

// ---------------------------------------------------------------------------
// 8. Sentinel.
// ---------------------------------------------------------------------------

fn sentinel_store(s: &Sentinel) -> String {
    format!(
        "[store]\nkind = \"redis\"\nredis_sentinel = {{ master = \"mymaster\", nodes = [\"{}\"] }}\n",
        s.url()
    )
}

#[tokio::test]
async fn sentinel_shares_affinity() {
    let master = Redis::start_isolated();
    let sentinel = Sentinel::start("mymaster", master.port);
    let n1 = Backend::start("tomcat1", &["--no-suffix"]);
    let n2 = Backend::start("tomcat2", &["--no-suffix"]);
    let body = format!(
        "{FAST_HEALTH}{}{}{}",
        sentinel_store(&sentinel),
        n1.toml(),
        n2.toml()
    );
    let a = Gate::start(&body);
    let b = Gate::start(&body);
    learn_and_follow(&a, &b, 10, "A->B").await;
    learn_and_follow(&b, &a, 10, "B->A").await;
    assert!(
        wait_session_keys(master.port, 20, Duration::from_secs(3)) >= 20,
        "sessions should be in the master"
    );
    for g in [&a, &b] {
        let s = g.status().await;
        assert!(healthy(&s), "{}", s["store"]);
        assert!(
            s["store"]["peers"][0]
                .as_str()
                .unwrap()
                .contains(&sentinel.port.to_string()),
            "{}",
            s["store"]
        );
    }
}

#[tokio::test]
async fn sentinel_failover_keeps_affinity() {
    let mut master = Redis::start_isolated();
    let replica_dir = tempdir();
    let replica = Redis::start_args(
        &["--replicaof", "127.0.0.1", &master.port.to_string()],
        Some(&replica_dir),
    );
    wait_for(Duration::from_secs(10), || {
        replica
            .cli(&["info", "replication"])
            .contains("master_link_status:up")
    })
    .expect("replica never synced");
    // Started after the replica is attached, so its first INFO sees it.
    let sentinel = Sentinel::start("mymaster", master.port);
    wait_for(Duration::from_secs(15), || {
        redis_cli(sentinel.port, &["sentinel", "replicas", "mymaster"])
            .contains(&replica.port.to_string())
    })
    .expect("sentinel never saw the replica");

    let n1 = Backend::start("tomcat1", &["--no-suffix"]);
    let n2 = Backend::start("tomcat2", &["--no-suffix"]);
    let body = format!(
        "{FAST_HEALTH}{}{}{}",
        sentinel_store(&sentinel),
        n1.toml(),
        n2.toml()
    );
    let a = Gate::start(&body);
    let b = Gate::start(&body);
    learn_and_follow(&a, &b, 6, "before failover").await;
    // Learned through A, not yet asked through B: B must find them in
    // whichever master Redis has after the failover.
    let c = client();
    let pending = new_sessions(&c, &a, 10).await;
    let want = wait_session_keys(master.port, 16, Duration::from_secs(3));
    assert!(want >= 16, "{want}");
    wait_for(Duration::from_secs(5), || {
        session_keys(replica.port).len() >= 16
    })
    .expect("replica never caught up");

    let t = Instant::now();
    master.proc.kill();
    let rport = replica.port.to_string();
    wait_for(Duration::from_secs(15), || {
        sentinel.master_addr("mymaster").ends_with(&rport)
    })
    .unwrap_or_else(|_| {
        panic!(
            "sentinel did not promote the replica: {}",
            sentinel.master_addr("mymaster")
        )
    });
    let promoted = t.elapsed();
    for g in [&a, &b] {
        // Healthy again means it talks to the new master.
        wait_status(
            g,
            Duration::from_secs(10),
            "healthy on the new master",
            healthy,
        )
        .await;
    }
    // A write through A must land in the new master and be read through B.
    let ok = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = new_sessions(&c, &a, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = hit(&c, &b, Some(&probe[0].0)).await;
        if route_of(&r) == probe[0].1 && hits_of(&r) == 2 {
            break;
        }
        assert!(
            Instant::now() < ok,
            "affinity learned through A after the failover never reached B\nA log:\n{}",
            a.logs()
        );
    }
    let recovered = t.elapsed();
    let after_promotion = recovered - promoted;
    // Grouped by route: B's round robin cannot guess them.
    for (id, route) in replay_order(&pending) {
        let r = hit(&c, &b, Some(id)).await;
        assert_eq!(r.status, 200);
        assert_eq!(route_of(&r), *route, "{id} learned before the failover");
        assert_eq!(hits_of(&r), 2);
    }
    learn_and_follow(&a, &b, 6, "after failover").await;
    learn_and_follow(&b, &a, 6, "after failover, reverse").await;
    eprintln!(
        "sentinel failover: promoted after {promoted:?}, sharing again {after_promotion:?} \
         later ({recovered:?} after the kill)"
    );
    // Promotion time is Sentinel's (down-after 1 s, failover-timeout 2 s);
    // ours is finding the new master: the monitor asks Sentinel again on
    // its next one-second tick. Bound with room for a loaded 2-core box.
    assert!(
        after_promotion < Duration::from_secs(5),
        "balancers shared again only {after_promotion:?} after the promotion"
    );
    let _ = std::fs::remove_dir_all(&replica_dir);
}

// ---------------------------------------------------------------------------
// 9. Cluster.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cluster_shares_affinity_and_spreads_keys() {
    let cluster = RedisCluster::start(3);
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let store = format!(
        "[store]\nkind = \"redis\"\nredis_cluster = [{}]\n",
        urls.join(", ")
    );
    let n1 = Backend::start("tomcat1", &["--no-suffix"]);
    let n2 = Backend::start("tomcat2", &["--no-suffix"]);
    let body = format!("{FAST_HEALTH}{store}{}{}", n1.toml(), n2.toml());
    let a = Gate::start(&body);
    let b = Gate::start(&body);
    learn_and_follow(&a, &b, 15, "A->B").await;
    learn_and_follow(&b, &a, 15, "B->A").await;

    let mut per_node = Vec::new();
    let _ = wait_for(Duration::from_secs(3), || {
        per_node = cluster
            .keys_per_node("stickgate:s:*")
            .iter()
            .map(Vec::len)
            .collect();
        per_node.iter().sum::<usize>() >= 30
    });
    assert_eq!(per_node.iter().sum::<usize>(), 30, "{per_node:?}");
    assert!(
        per_node.iter().filter(|n| **n > 0).count() >= 2,
        "session keys should spread over the cluster: {per_node:?}"
    );
    let dbsize: Vec<String> = cluster.nodes.iter().map(|r| r.cli(&["dbsize"])).collect();
    eprintln!("cluster: session keys per node {per_node:?}, dbsize {dbsize:?}");
    // Counts work too: the per-route sets live on the cluster.
    for g in [&a, &b] {
        wait_status(g, Duration::from_secs(4), "30 sessions counted", |s| {
            total_sessions(s) == 30 && healthy(s)
        })
        .await;
    }
}

// ---------------------------------------------------------------------------
// 10. Operators' backend states, shared through Redis (library level: two
//     `RedisStore`s in this process on one real redis-server).
// ---------------------------------------------------------------------------

/// A store on the standalone Redis at `url`, tracking `routes`.
async fn state_store(url: &str, routes: &[&str]) -> Arc<RedisStore> {
    let cfg = StoreSection {
        kind: StoreKind::Redis,
        redis_url: Some(url.to_owned()),
        ..StoreSection::default()
    };
    let routes = routes.iter().map(|r| Arc::from(*r)).collect();
    RedisStore::start(&cfg, Duration::from_secs(600), 10_000, routes)
        .await
        .expect("redis store starts")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn change(state: AdminState, at_ms: u64) -> StateChange {
    StateChange { state, at_ms }
}

/// The change `s` reports for `route`.
fn state_of(s: &dyn SessionStore, route: &str) -> Option<StateChange> {
    s.states()
        .into_iter()
        .find(|(r, _)| &**r == route)
        .map(|(_, c)| c)
}

/// Poll `ok` every 5 ms; how long it took, or a panic naming `what`.
async fn within(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        if ok() {
            return t0.elapsed();
        }
        if t0.elapsed() >= limit {
            panic!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_states_reach_every_balancer_through_redis() {
    let redis = Redis::start_isolated();
    let a = state_store(&redis.url(), &["tomcat1", "tomcat2"]).await;
    let b = state_store(&redis.url(), &["tomcat1", "tomcat2"]).await;

    // Published on A: A knows at once, B within its 200 ms poll.
    let t = now_ms();
    let drain = change(AdminState::Draining, t);
    a.publish_state("tomcat1", drain);
    assert_eq!(
        state_of(&*a, "tomcat1"),
        Some(drain),
        "A knows its own change at once"
    );
    let took = within(Duration::from_secs(1), "B sees A's drain", || {
        state_of(&*b, "tomcat1") == Some(drain)
    })
    .await;
    eprintln!(
        "redis states: B saw A's change after {} ms",
        took.as_millis()
    );
    assert_eq!(
        redis.cli(&["hget", "stickgate:states", "tomcat1"]),
        format!("draining:{t}")
    );

    // An older change published later (by a balancer that has not read
    // the newer one yet) does not override it, in Redis or anywhere.
    let c = state_store(&redis.url(), &["tomcat1", "tomcat2"]).await;
    c.publish_state("tomcat1", change(AdminState::Active, t - 5_000));
    let took = within(Duration::from_secs(2), "C adopts the newer change", || {
        state_of(&*c, "tomcat1") == Some(drain)
    })
    .await;
    eprintln!(
        "redis states: a late, older change gave way to the newer one after {} ms",
        took.as_millis()
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    for s in [&a, &b, &c] {
        assert_eq!(state_of(&**s, "tomcat1"), Some(drain));
    }
    assert_eq!(
        redis.cli(&["hget", "stickgate:states", "tomcat1"]),
        format!("draining:{t}")
    );

    // A newer change from B wins everywhere.
    let enable = change(AdminState::Active, t + 1);
    b.publish_state("tomcat1", enable);
    let took = within(Duration::from_secs(1), "A and C see B's enable", || {
        state_of(&*a, "tomcat1") == Some(enable) && state_of(&*c, "tomcat1") == Some(enable)
    })
    .await;
    eprintln!(
        "redis states: A and C saw B's newer change after {} ms",
        took.as_millis()
    );

    // Garbage in the hash is skipped, never fatal; a balancer that knows
    // the route's real state writes it back over the garbage.
    let stop = change(AdminState::Stopped, t + 2);
    a.publish_state("tomcat2", stop);
    within(Duration::from_secs(1), "B sees the stop", || {
        state_of(&*b, "tomcat2") == Some(stop)
    })
    .await;
    redis.cli(&["hset", "stickgate:states", "tomcat2", "paused:nope"]);
    redis.cli(&["hset", "stickgate:states", "tomcat9", "stopped"]);
    let repaired = within(Duration::from_secs(2), "garbage replaced", || {
        redis.cli(&["hget", "stickgate:states", "tomcat2"]) == format!("stopped:{}", t + 2)
    })
    .await;
    eprintln!(
        "redis states: a malformed value was written over after {} ms",
        repaired.as_millis()
    );
    within(Duration::from_secs(1), "every store has the stop", || {
        [&a, &b, &c]
            .iter()
            .all(|s| state_of(&***s, "tomcat2") == Some(stop))
    })
    .await;
    for s in [&a, &b, &c] {
        assert_eq!(state_of(&**s, "tomcat9"), None);
        assert!(s.status().healthy, "{:?}", s.status());
    }

    // A value dated an hour ahead (a balancer whose clock ran ahead, or a
    // forged write) would outrank every real action for that hour: no
    // store adopts it, and the real state is written back over it.
    let ahead = now_ms() + 3_600_000;
    redis.cli(&[
        "hset",
        "stickgate:states",
        "tomcat2",
        &format!("active:{ahead}"),
    ]);
    let repaired = within(Duration::from_secs(2), "future value replaced", || {
        redis.cli(&["hget", "stickgate:states", "tomcat2"]) == format!("stopped:{}", t + 2)
    })
    .await;
    eprintln!(
        "redis states: a future-dated value was written over after {} ms",
        repaired.as_millis()
    );
    for s in [&a, &b, &c] {
        assert_eq!(
            state_of(&**s, "tomcat2"),
            Some(stop),
            "future value adopted"
        );
    }

    // Reload: B now has tomcat3 too; a state set for it through a
    // balancer is tracked by B from then on (and counted).
    assert!(!b.counts().iter().any(|(r, _)| &**r == "tomcat3"));
    let t3: Vec<Arc<str>> = ["tomcat1", "tomcat2", "tomcat3"]
        .iter()
        .map(|r| Arc::from(*r))
        .collect();
    let disable = change(AdminState::Disabled, t + 3);
    c.set_routes(&t3);
    c.publish_state("tomcat3", disable);
    assert_eq!(state_of(&*c, "tomcat3"), Some(disable));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        state_of(&*b, "tomcat3"),
        None,
        "B does not track tomcat3 before its reload"
    );
    b.set_routes(&t3);
    let took = within(
        Duration::from_secs(1),
        "B tracks tomcat3 after its reload",
        || state_of(&*b, "tomcat3") == Some(disable),
    )
    .await;
    eprintln!(
        "redis states: B picked up a new route's state {} ms after set_routes",
        took.as_millis()
    );
    assert!(b.counts().iter().any(|(r, _)| &**r == "tomcat3"));
    assert_eq!(
        state_of(&*b, "tomcat1"),
        Some(enable),
        "kept across the reload"
    );
    // Routes dropped by a reload are no longer reported.
    b.set_routes(&t3[1..]);
    assert_eq!(state_of(&*b, "tomcat1"), None);
    assert!(!b.counts().iter().any(|(r, _)| &**r == "tomcat1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_state_set_during_a_redis_outage_reaches_the_others_afterwards() {
    let mut redis = Redis::start_isolated();
    let port = redis.port;
    let url = redis.url();
    let a = state_store(&url, &["tomcat1", "tomcat2"]).await;
    let b = state_store(&url, &["tomcat1", "tomcat2"]).await;
    let before = change(AdminState::Draining, now_ms());
    a.publish_state("tomcat2", before);
    within(Duration::from_secs(1), "B sees the first change", || {
        state_of(&*b, "tomcat2") == Some(before)
    })
    .await;

    redis.proc.kill();
    let killed = Instant::now();
    let noticed = within(Duration::from_secs(5), "A notices the outage", || {
        !a.status().healthy
    })
    .await;
    // The operator acts while Redis is down: A shows it at once.
    let stop = change(AdminState::Stopped, now_ms());
    a.publish_state("tomcat1", stop);
    assert_eq!(state_of(&*a, "tomcat1"), Some(stop));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state_of(&*b, "tomcat1"), None, "nothing to carry it yet");

    // Redis comes back empty on the same port.
    let _redis2 = tokio::task::spawn_blocking(move || Redis::start_on(port))
        .await
        .unwrap();
    let restarted = Instant::now();
    let took = within(
        Duration::from_secs(10),
        "B sees the change made during the outage",
        || state_of(&*b, "tomcat1") == Some(stop),
    )
    .await;
    eprintln!(
        "redis states: outage noticed {} ms after the kill, Redis down {} ms; B saw the change \
         made during the outage {} ms after Redis restarted",
        noticed.as_millis(),
        (restarted - killed).as_millis(),
        took.as_millis()
    );
    // The earlier change, lost with Redis's data, is written back too.
    assert_eq!(
        redis_cli(port, &["hget", "stickgate:states", "tomcat2"]),
        format!("draining:{}", before.at_ms)
    );
    assert_eq!(state_of(&*b, "tomcat2"), Some(before));
    assert_eq!(state_of(&*a, "tomcat1"), Some(stop));
}

// ---------------------------------------------------------------------------
// 9. The background writer's batches.
// ---------------------------------------------------------------------------

/// A store on `redis` with readable keys under `prefix`, its sessions idle
/// for up to 10 minutes, counting route `t1`.
async fn store_on(redis: &Redis, prefix: &str, t1: &Arc<str>) -> Arc<RedisStore> {
    let cfg = StoreSection {
        kind: StoreKind::Redis,
        redis_url: Some(redis.url()),
        key_prefix: prefix.into(),
        hash_keys: false,
        timeout: Duration::from_secs(1),
        ..StoreSection::default()
    };
    RedisStore::start(&cfg, Duration::from_secs(600), 1000, vec![t1.clone()])
        .await
        .expect("redis store starts")
}

/// Background writes go to Redis in batches (one pipeline per batch); a
/// write that fails there (its key holds a string, not a session hash)
/// costs only its own session: the others queued with it are still bound
/// and counted, and the counting set still gets its TTL.
#[tokio::test]
async fn a_failing_write_in_a_batch_costs_only_its_own_session() {
    let redis = Redis::start_isolated();
    let t1: Arc<str> = "t1".into();
    let store = store_on(&redis, "batch:", &t1).await;
    redis.cli(&["SET", "batch:s:bad", "not a session"]);
    // Queued without yielding: the writer takes them as one batch.
    for id in ["a", "bad", "b", "c"] {
        store.bind(id, &t1);
    }
    let good = ["a", "b", "c"];
    let bound_and_counted = || {
        good.iter().all(|id| {
            let key = format!("batch:s:{id}");
            redis.cli(&["HGET", &key, "r"]) == "t1"
                && !redis.cli(&["ZSCORE", "batch:r:t1", &key]).is_empty()
        })
    };
    within(
        Duration::from_secs(5),
        "sessions queued beside a failing write bound and counted",
        bound_and_counted,
    )
    .await;
    assert_eq!(redis.cli(&["GET", "batch:s:bad"]), "not a session");
    let set_ttl: i64 = redis.cli(&["PTTL", "batch:r:t1"]).parse().unwrap();
    assert!(set_ttl > 600_000, "counting set TTL {set_ttl} ms");
    let status = store.status();
    assert!(status.errors >= 1, "the failed write is not counted");
    assert!(status.healthy, "one bad key must not cut the store off");
}

/// A new session's binding is written through: it is in Redis (with its
/// TTL) the moment `bind_now` returns, checked before this single-threaded
/// test yields, so the background writer cannot have written it; its
/// per-route count follows through the write-behind queue.
#[tokio::test]
async fn a_new_sessions_binding_is_in_redis_when_bind_now_returns() {
    let redis = Redis::start_isolated();
    let t1: Arc<str> = "t1".into();
    let store = store_on(&redis, "through:", &t1).await;
    for i in 0..20 {
        let id = format!("new{i}");
        store.bind_now(&id, &t1).await;
        let key = format!("through:s:{id}");
        assert_eq!(
            redis.cli(&["HGET", &key, "r"]),
            "t1",
            "session #{i} not in redis when bind_now returned"
        );
        let ttl: i64 = redis.cli(&["PTTL", &key]).parse().unwrap();
        assert!(ttl > 0, "session #{i} without TTL: {ttl}");
    }
    within(Duration::from_secs(5), "20 new sessions counted", || {
        redis.cli(&["ZCARD", "through:r:t1"]) == "20"
    })
    .await;
}

/// Redis forgets its scripts when it restarts or is flushed. A new
/// session's write-through and a write-behind binding then each load the
/// script again and are stored, and the store is not marked unhealthy.
#[tokio::test]
async fn a_script_redis_forgot_is_loaded_again_on_both_write_paths() {
    let redis = Redis::start_isolated();
    let t1: Arc<str> = "t1".into();
    let store = store_on(&redis, "forgot:", &t1).await;
    // Each flush waits until the writer has counted the sessions so far:
    // a count still on its way could be half-way through its own reload
    // (script loaded, not yet run) when the flush lands, and that one
    // write, asked twice to forget, would rightly count as an error.
    let redis = &redis;
    let counted = |n: &'static str| {
        within(
            Duration::from_secs(5),
            "counted before the flush",
            move || redis.cli(&["ZCARD", "forgot:r:t1"]) == n,
        )
    };
    store.bind_now("before", &t1).await;
    assert_eq!(redis.cli(&["HGET", "forgot:s:before", "r"]), "t1");

    counted("1").await;
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    store.bind_now("through", &t1).await;
    assert_eq!(
        redis.cli(&["HGET", "forgot:s:through", "r"]),
        "t1",
        "write-through after SCRIPT FLUSH not stored"
    );

    counted("2").await;
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    store.bind("behind", &t1);
    within(
        Duration::from_secs(5),
        "write-behind after SCRIPT FLUSH",
        || redis.cli(&["HGET", "forgot:s:behind", "r"]) == "t1",
    )
    .await;
    let status = store.status();
    assert_eq!(status.errors, 0, "a forgotten script is not an error");
    assert!(status.healthy);
}

/// How many times Redis ran `command` since it started (INFO commandstats).
fn command_calls(redis: &Redis, command: &str) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A fresh session (an id the request did not carry, which the backend
/// has just issued) is written without the binding script, as one
/// transaction: when `bind_fresh` returns, its record has every field the
/// script gives a new session (route, created, seen, version 1, decided),
/// a TTL, and, unless it was the one of its second that went the
/// scripted way so the writer renews the set's TTL, its count. Checked
/// before this single-threaded test yields, so the writer cannot have
/// written them.
#[tokio::test]
async fn a_fresh_sessions_record_and_count_are_in_redis_when_bind_fresh_returns() {
    let redis = Redis::start_isolated();
    let t1: Arc<str> = "t1".into();
    let store = store_on(&redis, "fresh:", &t1).await;
    let started = Instant::now();
    let before = now_ms();
    let mut counted_at_once = 0;
    for i in 0..20 {
        let id = format!("f{i}");
        store.bind_fresh(&id, &t1).await;
        let key = format!("fresh:s:{id}");
        let fields: HashMap<String, String> = redis
            .cli(&["HGETALL", &key])
            .lines()
            .collect::<Vec<_>>()
            .chunks(2)
            .map(|kv| (kv[0].to_owned(), kv[1].to_owned()))
            .collect();
        assert_eq!(
            fields.get("r").map(String::as_str),
            Some("t1"),
            "#{i}: {fields:?}"
        );
        assert_eq!(
            fields.get("v").map(String::as_str),
            Some("1"),
            "#{i}: {fields:?}"
        );
        for f in ["c", "s", "t"] {
            let ms: u64 = fields[f].parse().unwrap();
            assert!(ms >= before && ms <= now_ms(), "#{i}: {f} = {ms}");
        }
        let ttl: i64 = redis.cli(&["PTTL", &key]).parse().unwrap();
        assert!(ttl > 0 && ttl <= 600_000, "#{i}: TTL {ttl}");
        if !redis.cli(&["ZSCORE", "fresh:r:t1", &key]).is_empty() {
            counted_at_once += 1;
        }
    }
    // One scripted per second of the loop at most (the first at least).
    let scripted_at_most = 1 + started.elapsed().as_secs() as usize;
    assert!(
        counted_at_once >= 20 - scripted_at_most,
        "{counted_at_once} of 20 counted with their binding"
    );
    assert!(command_calls(&redis, "exec") as usize >= 20 - scripted_at_most);
    within(Duration::from_secs(5), "20 fresh sessions counted", || {
        redis.cli(&["ZCARD", "fresh:r:t1"]) == "20"
    })
    .await;
    within(
        Duration::from_secs(5),
        "the counting set's TTL renewed",
        || redis.cli(&["PTTL", "fresh:r:t1"]).parse::<i64>().unwrap() > 600_000,
    )
    .await;
    let status = store.status();
    assert_eq!(status.errors, 0);
    assert!(status.healthy);
}

/// A fresh session whose key another program filled with a string: the
/// transaction's record fails there and its value is untouched (Redis
/// runs the rest of a transaction, so that key, in stickgate's own
/// `key_prefix` space, gets the session TTL and is counted until then);
/// it counts as an error, the binding is retried behind (where the script
/// leaves the key alone), the store stays healthy, and the next fresh
/// session is written as usual.
#[tokio::test]
async fn a_fresh_session_on_a_foreign_key_is_an_error_not_an_outage() {
    let redis = Redis::start_isolated();
    let t1: Arc<str> = "t1".into();
    let store = store_on(&redis, "foreign:", &t1).await;
    store.bind_fresh("first", &t1).await;
    redis.cli(&["SET", "foreign:s:bad", "not a session"]);
    store.bind_fresh("bad", &t1).await;
    assert_eq!(redis.cli(&["GET", "foreign:s:bad"]), "not a session");
    store.bind_fresh("good", &t1).await;
    assert_eq!(redis.cli(&["HGET", "foreign:s:good", "r"]), "t1");
    let status = store.status();
    assert!(status.errors >= 1, "the failed write is not counted");
    assert!(status.healthy, "one bad key must not cut the store off");
}
