//! Multicast session-store drills: real `stickgate` processes replicating
//! affinity to each other over loopback (multicast group, unicast peers,
//! TCP full-state transfer) in front of real demo backends.
//!
//! Loopback multicast: Linux delivers it on `lo` once the socket names
//! 127.0.0.1 as its interface (the store does). Where it does not, run as
//! root `ip link set lo multicast on; ip route add 224.0.0.0/4 dev lo`
//! (`scripts/test.sh` does); without it these drills fail: a balancer that
//! cannot join the group fails to start with that hint in its log, and
//! one whose datagrams never arrive fails the replication waits.
mod common;
use common::*;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const COOKIE: &str = "JSESSIONID";

// ---------------------------------------------------------------------------
// Shared steps.
// ---------------------------------------------------------------------------

/// A 0600 key file in a fresh temp dir.
fn key_file() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = tempdir().join("cluster.key");
    let secret: String = (0..4)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    std::fs::write(&path, secret).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A cluster's shared multicast settings; `store(i)` is balancer `i`'s
/// `[store]` section, with the default heartbeat (500 ms) and drop time
/// (3 s), and a generous `timeout` (the longest a request waits for a
/// restarted balancer's state transfer) for slow debug builds.
struct Cluster {
    group: String,
    key: PathBuf,
    listen: Vec<u16>,
    /// Static peers instead of working multicast.
    static_peers: bool,
}

impl Cluster {
    fn new(balancers: usize, static_peers: bool) -> Cluster {
        let group_port = free_port();
        Cluster {
            group: if static_peers {
                // IPv6 groups are not joined: multicast is off, and only
                // the static peers carry replication.
                format!("[ff05::5]:{group_port}")
            } else {
                format!("228.0.0.5:{group_port}")
            },
            key: key_file(),
            listen: (0..balancers).map(|_| free_port()).collect(),
            static_peers,
        }
    }

    fn store(&self, i: usize) -> String {
        let peers: Vec<String> = if self.static_peers {
            self.listen
                .iter()
                .map(|p| format!("\"127.0.0.1:{p}\""))
                .collect()
        } else {
            Vec::new()
        };
        format!(
            "[store]\nkind = \"multicast\"\nmulticast_group = \"{}\"\nmulticast_interface = \"127.0.0.1\"\n\
             replication_listen = \"127.0.0.1:{}\"\npeers = [{}]\nkey_file = \"{}\"\n\
             timeout = \"2s\"\n",
            self.group,
            self.listen[i],
            peers.join(", "),
            self.key.display()
        )
    }
}

/// `n` new sessions through `gate`: (cookie value, route).
async fn new_sessions(c: &HttpClient, gate: &Gate, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = hit(c, gate, None).await;
        assert_eq!(r.status, 200, "new session: {:?}", r.body);
        let id = r.set_cookie(COOKIE).expect("new session cookie");
        out.push((id, route_of(&r)));
    }
    out
}

/// Poll the status API until `ok`; returns the wait, panics after 10 s
/// with the last status and the balancer's log.
async fn wait_status(gate: &Gate, what: &str, ok: impl Fn(&Value) -> bool) -> Duration {
    let t0 = Instant::now();
    let mut last = Value::Null;
    while t0.elapsed() < Duration::from_secs(10) {
        last = gate.status().await;
        if ok(&last) {
            return t0.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{what}: not within 10s; status {last}; log:\n{}",
        gate.logs()
    );
}

fn store_sessions(s: &Value) -> u64 {
    s["store"]["sessions"].as_u64().unwrap_or(0)
}

/// Replay each session through `to` (grouped by route, so round robin
/// cannot get it right by luck): same node, session known, no new cookie.
async fn follow(c: &HttpClient, to: &Gate, sessions: &[(String, String)], label: &str) {
    let mut order: Vec<&(String, String)> = sessions.iter().collect();
    order.sort_by(|a, b| a.1.cmp(&b.1));
    for (id, route) in order {
        let r = hit(c, to, Some(id)).await;
        assert_eq!(r.status, 200, "{label}: {id}: {:?}", r.body);
        let got = route_of(&r);
        assert_eq!(
            got,
            *route,
            "{label}: session {id} lives on {route} but went to {got}; store: {}",
            to.status().await["store"]
        );
        assert!(hits_of(&r) >= 2, "{label}: {id}: session state lost");
        assert_eq!(
            r.set_cookie(COOKIE),
            None,
            "{label}: {id}: new session issued"
        );
    }
}

// ---------------------------------------------------------------------------
// Drills.
// ---------------------------------------------------------------------------

/// Affinity learned by one balancer is honoured by the other, both ways,
/// over the multicast group; the status API shows the peer.
#[tokio::test]
async fn learned_affinity_is_shared_over_multicast() {
    let n1 = Backend::start("tomcat1", &["--no-suffix"]);
    let n2 = Backend::start("tomcat2", &["--no-suffix"]);
    let cl = Cluster::new(2, false);
    let backends = format!("{FAST_HEALTH}{}{}", n1.toml(), n2.toml());
    let a = Gate::start(&format!("{backends}{}", cl.store(0)));
    let b = Gate::start(&format!("{backends}{}", cl.store(1)));
    let peer_a = format!("127.0.0.1:{}", cl.listen[0]);
    wait_status(&b, "B sees A", |s| {
        s["store"]["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| *x == *peer_a))
    })
    .await;
    let c = client();
    let sessions = new_sessions(&c, &a, 20).await;
    let took = wait_status(&b, "B learned 20 sessions", |s| store_sessions(s) == 20).await;
    eprintln!("A->B: 20 sessions replicated within {took:?}");
    follow(&c, &b, &sessions, "A->B").await;
    let more = new_sessions(&c, &b, 20).await;
    wait_status(&a, "A learned 40 sessions", |s| store_sessions(s) == 40).await;
    follow(&c, &a, &more, "B->A").await;
    for g in [&a, &b] {
        let s = g.status().await;
        assert_eq!(s["store"]["kind"], "multicast");
        assert_eq!(s["store"]["healthy"], true, "{s}");
        assert_eq!(s["store"]["errors"], 0, "{s}");
    }
}

/// A balancer is SIGKILLed: its peer keeps every affinity and learns new
/// ones; the balancer restarts (same replication port) and gets the whole
/// state back from its peer before serving those sessions.
#[tokio::test]
async fn killed_balancer_restarts_with_the_full_state() {
    let n1 = Backend::start("tomcat1", &["--no-suffix"]);
    let n2 = Backend::start("tomcat2", &["--no-suffix"]);
    let cl = Cluster::new(2, false);
    let backends = format!("{FAST_HEALTH}{}{}", n1.toml(), n2.toml());
    let body_a = format!("{backends}{}", cl.store(0));
    let mut a = Gate::start(&body_a);
    let b = Gate::start(&format!("{backends}{}", cl.store(1)));
    let c = client();
    let mut sessions = new_sessions(&c, &a, 30).await;
    wait_status(&b, "B learned 30 sessions", |s| store_sessions(s) == 30).await;
    a.proc.kill();
    follow(&c, &b, &sessions, "after the kill, via B").await;
    sessions.extend(new_sessions(&c, &b, 10).await);
    let t0 = Instant::now();
    let a2 = Gate::start(&body_a);
    // Straight away: a miss waits (at most store.timeout) for the state
    // transfer, which starts as soon as A's first heartbeat is answered.
    follow(&c, &a2, &sessions, "via the restarted A").await;
    eprintln!(
        "restarted balancer: 40 sessions followed {:?} after start (heartbeat 500ms)",
        t0.elapsed()
    );
    assert_eq!(store_sessions(&a2.status().await), 40);
    wait_status(&b, "B lists the restarted A once", |s| {
        s["store"]["peers"].as_array().is_some_and(|p| p.len() == 1)
    })
    .await;
}

/// Multicast off (static peers only), three balancers: affinity learned
/// on any one is honoured by the others.
#[tokio::test]
async fn static_peers_share_affinity_without_multicast() {
    let n1 = Backend::start("tomcat1", &["--no-suffix"]);
    let n2 = Backend::start("tomcat2", &["--no-suffix"]);
    let cl = Cluster::new(3, true);
    let backends = format!("{FAST_HEALTH}{}{}", n1.toml(), n2.toml());
    let gates: Vec<Gate> = (0..3)
        .map(|i| Gate::start(&format!("{backends}{}", cl.store(i))))
        .collect();
    let c = client();
    let sessions = new_sessions(&c, &gates[0], 20).await;
    for g in &gates[1..] {
        wait_status(g, "peer learned 20 sessions", |s| store_sessions(s) == 20).await;
        follow(&c, g, &sessions, "static peers").await;
    }
    for g in &gates {
        wait_status(g, "two peers listed", |s| {
            s["store"]["peers"].as_array().map(Vec::len) == Some(2)
        })
        .await;
    }
    assert!(
        gates[0].logs().contains("static peers only"),
        "{}",
        gates[0].logs()
    );
}

/// t1 dies. Balancer B weights the heirs 1:40, A equally, so on their own
/// they would pick different heirs for many sessions. A serves each orphan
/// first and its claim replicates: B then sends it to the same heir, and
/// the session keeps its data (backends share it through Redis).
#[tokio::test]
async fn a_claim_made_on_one_balancer_is_followed_by_the_other() {
    let data = Redis::start();
    let nodes: Vec<Backend> = ["t1", "t2", "t3"]
        .iter()
        .map(|r| Backend::start(r, &["--redis", &data.url()]))
        .collect();
    let cl = Cluster::new(2, false);
    let a = Gate::start(&format!(
        "{FAST_HEALTH}{}{}{}{}",
        nodes[0].toml(),
        nodes[1].toml(),
        nodes[2].toml(),
        cl.store(0)
    ));
    let b = Gate::start(&format!(
        "{FAST_HEALTH}{}{}{}{}",
        nodes[0].toml(),
        nodes[1].toml_with("weight = 1"),
        nodes[2].toml_with("weight = 40"),
        cl.store(1)
    ));
    let c = client();
    let orphans: Vec<String> = new_sessions(&c, &a, 90)
        .await
        .into_iter()
        .filter(|(_, r)| r == "t1")
        .map(|(id, _)| id)
        .collect();
    assert!(orphans.len() >= 20, "{}", orphans.len());
    let mut nodes = nodes;
    nodes[0].proc.kill();
    a.wait_health("t1", "down").await;
    b.wait_health("t1", "down").await;

    let mut heir: HashMap<String, String> = HashMap::new();
    for id in &orphans {
        let r = hit(&c, &a, Some(id)).await;
        assert_eq!(r.status, 200);
        assert_eq!(hits_of(&r), 2, "{id}: data lost");
        heir.insert(id.clone(), route_of(&r));
    }
    let a_heirs: BTreeSet<&str> = heir.values().map(String::as_str).collect();
    let on_t2 = heir.values().filter(|r| *r == "t2").count();
    assert!(
        on_t2 >= 3,
        "A's equal weights should give t2 some heirs: {a_heirs:?}"
    );
    // Every claim has crossed once B counts the sessions per node as A does
    // (t1's orphans moved to their heirs).
    let a_counts = a.session_counts().await;
    wait_status(&b, "B counts sessions per node as A does", |s| {
        let b_counts: Vec<(String, u64)> = s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["route"].as_str().unwrap().to_owned(),
                    n["sessions"]["current"].as_u64().unwrap(),
                )
            })
            .collect();
        b_counts == a_counts
    })
    .await;
    for id in &orphans {
        for (via, g, hits) in [("B", &b, 3), ("A", &a, 4)] {
            let r = hit(&c, g, Some(id)).await;
            assert_eq!(r.status, 200);
            assert_eq!(
                route_of(&r),
                heir[id],
                "{id}: A moved it to {} but {via} sent it elsewhere; B's store: {}",
                heir[id],
                b.status().await["store"]
            );
            assert_eq!(hits_of(&r), hits, "{id}: data lost");
        }
    }
    eprintln!(
        "claims: {} orphans, {on_t2} on t2 (B alone would mostly pick t3), all followed by B",
        orphans.len()
    );
}

/// Wait (polling `watched`'s status every 50 ms) until `ok`, at most
/// `limit`; returns the wait, else panics with the last status and both
/// balancers' logs.
async fn wait_within(
    watched: &Gate,
    other: &Gate,
    limit: Duration,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let last = watched.status().await;
        if ok(&last) {
            return t0.elapsed();
        }
        if t0.elapsed() >= limit {
            panic!(
                "{what}: not within {limit:?}; status {last}\n--- log of the watched balancer:\n{}\n--- log of the other balancer:\n{}",
                watched.logs(),
                other.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The admin state (`state`) of `route` in a status document.
fn state_in(s: &Value, route: &str) -> String {
    s["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["route"] == route))
        .and_then(|b| b["state"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Operator actions made on one balancer apply to the whole cluster, in
/// front of a session-replicating (shared Redis) pair of nodes: a drain on
/// A reaches B (which keeps tomcat1's sessions there but sends it no new
/// ones), a stop on B reaches A (which fails tomcat1's sessions over to
/// tomcat2, data kept, and B agrees), and an enable on A reaches B.
#[tokio::test]
async fn operator_states_made_on_one_balancer_apply_on_the_other() {
    const LIMIT: Duration = Duration::from_secs(2);
    let data = Redis::start();
    let n1 = Backend::start("tomcat1", &["--redis", &data.url()]);
    let n2 = Backend::start("tomcat2", &["--redis", &data.url()]);
    let cl = Cluster::new(2, false);
    let backends = format!("{STEADY_HEALTH}{}{}", n1.toml(), n2.toml());
    let a = Gate::start(&format!("{backends}{}", cl.store(0)));
    let b = Gate::start(&format!("{backends}{}", cl.store(1)));
    for (g, peer, name) in [
        (&a, cl.listen[1], "A sees B"),
        (&b, cl.listen[0], "B sees A"),
    ] {
        let peer = format!("127.0.0.1:{peer}");
        wait_status(g, name, |s| {
            s["store"]["peers"]
                .as_array()
                .is_some_and(|p| p.iter().any(|x| *x == *peer))
        })
        .await;
    }
    let c = client();
    let sessions = new_sessions(&c, &a, 10).await;
    let on_t1: Vec<String> = sessions
        .iter()
        .filter(|(_, r)| r == "tomcat1")
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        on_t1.len() >= 2 && on_t1.len() <= 8,
        "10 new sessions should be spread: {sessions:?}"
    );
    for id in &on_t1 {
        assert_eq!(id.rsplit('.').next(), Some("tomcat1"), "{id}");
    }

    // Drain on A -> B shows it.
    let t0 = Instant::now();
    let r = admin_post(&a, "/api/backends/tomcat1/drain").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["state"], "draining");
    wait_within(&b, &a, LIMIT, "B shows tomcat1 draining", |s| {
        state_in(s, "tomcat1") == "draining"
    })
    .await;
    let drain_delay = t0.elapsed();
    eprintln!("drain on A -> draining on B after {drain_delay:?}");

    // B: no new sessions on tomcat1, its existing sessions stay there.
    for (id, route) in new_sessions(&c, &b, 10).await {
        assert_eq!(
            route, "tomcat2",
            "new session {id} via B went to draining tomcat1"
        );
    }
    for id in &on_t1 {
        let r = hit(&c, &b, Some(id)).await;
        assert_eq!(r.status, 200, "{id}: {:?}", r.body);
        assert_eq!(route_of(&r), "tomcat1", "{id} left draining tomcat1 via B");
        assert_eq!(hits_of(&r), 2, "{id}: session data lost");
        assert_eq!(r.set_cookie(COOKIE), None, "{id}: new cookie");
    }

    // Stop on B -> A shows it.
    let t0 = Instant::now();
    let r = admin_post(&b, "/api/backends/tomcat1/stop").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["state"], "stopped");
    wait_within(&a, &b, LIMIT, "A shows tomcat1 stopped", |s| {
        state_in(s, "tomcat1") == "stopped"
    })
    .await;
    let stop_delay = t0.elapsed();
    eprintln!("stop on B -> stopped on A after {stop_delay:?}");
    let t1_requests = |s: &Value| {
        s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["route"] == "tomcat1")
            .unwrap()["requests"]
            .as_u64()
            .unwrap()
    };
    let before = (
        t1_requests(&a.status().await),
        t1_requests(&b.status().await),
    );

    // A fails tomcat1's sessions over to tomcat2 (same id, data kept), and
    // B then sends each to tomcat2 too, by its old and by its new cookie.
    for id in &on_t1 {
        let base = id.rsplit_once('.').unwrap().0;
        let r = hit(&c, &a, Some(id)).await;
        assert_eq!(r.status, 200, "{id}: {:?}", r.body);
        assert_eq!(
            route_of(&r),
            "tomcat2",
            "{id}: stopped tomcat1 still served via A"
        );
        assert_eq!(
            r.json()["session"],
            base,
            "{id}: replicated session lost its id"
        );
        assert_eq!(hits_of(&r), 3, "{id}: session data lost in the failover");
        let new_id = format!("{base}.tomcat2");
        assert_eq!(r.set_cookie(COOKIE).as_deref(), Some(new_id.as_str()));
        for (n, cookie) in [(4, id), (5, &new_id)] {
            let r = hit(&c, &b, Some(cookie)).await;
            assert_eq!(r.status, 200, "{cookie}: {:?}", r.body);
            assert_eq!(
                route_of(&r),
                "tomcat2",
                "{cookie}: A failed it over to tomcat2 but B disagrees; B's store: {}",
                b.status().await["store"]
            );
            assert_eq!(r.json()["session"], base);
            assert_eq!(hits_of(&r), n, "{cookie}: session data lost via B");
        }
    }
    let after = (
        t1_requests(&a.status().await),
        t1_requests(&b.status().await),
    );
    assert_eq!(before, after, "a request reached stopped tomcat1");

    // Enable on A -> B shows it active.
    let t0 = Instant::now();
    let r = admin_post(&a, "/api/backends/tomcat1/enable").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["state"], "active");
    wait_within(&b, &a, LIMIT, "B shows tomcat1 active", |s| {
        state_in(s, "tomcat1") == "active"
    })
    .await;
    let enable_delay = t0.elapsed();
    eprintln!("enable on A -> active on B after {enable_delay:?}");
    eprintln!(
        "operator states: {} of 10 sessions on tomcat1; drain {drain_delay:?}, stop {stop_delay:?}, enable {enable_delay:?}",
        on_t1.len()
    );
}
