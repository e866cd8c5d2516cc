//! Resilience drills: backends that drop SYNs, die under load, freeze,
//! reset connections or are not running at all, and upstream keep-alive.
//!
//! Every drill uses real processes or real sockets on loopback. The drills
//! run one at a time (see `SERIAL`) because several of them measure latency
//! and the load drill saturates a small machine.
mod common;
use common::*;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use socket2::{Domain, SockRef, Socket, Type};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// One drill at a time: latency figures mean nothing next to a load drill.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Active checks so rare that only passive detection (live traffic) can mark
/// a backend down during a drill; `fall = 3` so the checker's first round at
/// startup cannot do it either.
const SLOW_HEALTH: &str = "[health]\ninterval = \"30s\"\ntimeout = \"1s\"\nrise = 1\nfall = 3\n";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of `v` (`q` in 0..=1).
fn percentile(v: &[Duration], q: f64) -> Duration {
    assert!(!v.is_empty());
    let mut s = v.to_vec();
    s.sort();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// A session cookie naming `route`, in the demo nodes' id format.
fn cookie_for(route: &str) -> String {
    let base: u128 = rand_u128();
    format!("JSESSIONID={base:032X}.{route}")
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, RandomState};
    let s = RandomState::new();
    (u128::from(s.hash_one(1u8)) << 64) | u128::from(s.hash_one(2u8))
}

fn backend_toml(route: &str, port: u16) -> String {
    format!("[[backend]]\nroute = \"{route}\"\nurl = \"http://127.0.0.1:{port}\"\n")
}

fn route_of(r: &Resp) -> String {
    r.json()["route"].as_str().unwrap_or_default().to_owned()
}

/// A backend whose accept queue is full and never drained: further SYNs are
/// dropped, so connects hang until the connector's timeout.
struct Blackhole {
    port: u16,
    _listener: Socket,
    _held: Vec<TcpStream>,
}

impl Blackhole {
    fn new() -> Blackhole {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut held = Vec::new();
        let mut full = false;
        for _ in 0..16 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(s) => held.push(s),
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
                    full = true;
                    break;
                }
            }
        }
        assert!(
            full,
            "accept queue never filled after {} connects",
            held.len()
        );
        // Proof that SYNs are dropped: one more connect also hangs.
        let t = Instant::now();
        let e = TcpStream::connect_timeout(&addr, Duration::from_millis(300))
            .expect_err("blackhole accepted a connection");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(t.elapsed() >= Duration::from_millis(250));
        Blackhole {
            port: addr.port(),
            _listener: listener,
            _held: held,
        }
    }
}

/// `n` sequential new-session GETs (no cookie) on one keep-alive client;
/// latency and outcome of each.
async fn timed_new_sessions(gate: &Gate, n: usize) -> Vec<(Duration, Result<Resp, String>)> {
    let c = client();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = try_request(&c, "GET", &gate.url("/"), None, Bytes::new()).await;
        out.push((t.elapsed(), r));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_backend_does_not_slow_the_healthy_one() {
    let _serial = SERIAL.lock().await;
    let hole = Blackhole::new();
    let node = Backend::start("tomcat1", &[]);
    let upstream = "[upstream]\nconnect_timeout = \"500ms\"\n";

    // Baseline: the healthy node alone.
    let before_gate = Gate::start(&format!("{upstream}{SLOW_HEALTH}{}", node.toml()));
    let _ = timed_new_sessions(&before_gate, 5).await; // warm up
    let before = timed_new_sessions(&before_gate, 50).await;
    for (_, r) in &before {
        assert_eq!(r.as_ref().map(|r| r.status), Ok(200), "{r:?}");
    }
    let before: Vec<Duration> = before.into_iter().map(|(d, _)| d).collect();
    drop(before_gate);

    // Blackhole listed first so round robin sends it the first new session.
    let gate = Gate::start(&format!(
        "{upstream}{SLOW_HEALTH}{}{}",
        backend_toml("blackhole", hole.port),
        node.toml()
    ));
    assert_eq!(gate.health("blackhole").await, "up");
    let run = timed_new_sessions(&gate, 60).await;
    let errors: Vec<String> = run
        .iter()
        .enumerate()
        .filter_map(|(i, (_, r))| match r {
            Ok(r) if r.status == 200 && route_of(r) == "tomcat1" => None,
            Ok(r) => Some(format!("#{i}: {} {:?}", r.status, r.body)),
            Err(e) => Some(format!("#{i}: {e}")),
        })
        .collect();
    let lat: Vec<Duration> = run.iter().map(|(d, _)| *d).collect();
    let slow: Vec<(usize, Duration)> = lat
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, d)| *d >= Duration::from_millis(450))
        .collect();
    eprintln!(
        "blackhole: before median {:.1} ms p90 {:.1} ms; while: slow requests {:?}, errors {}",
        ms(percentile(&before, 0.5)),
        ms(percentile(&before, 0.9)),
        slow.iter().map(|(i, d)| (*i, ms(*d))).collect::<Vec<_>>(),
        errors.len()
    );
    assert!(errors.is_empty(), "client-visible errors: {errors:#?}");
    // Exactly one request tried the blackhole (then it is down), counted by
    // the balancer itself: a latency threshold alone would also count
    // requests a busy 2-core machine happened to slow down.
    let tried = gate.backend_status("blackhole").await["errors"].clone();
    assert_eq!(
        tried,
        1,
        "requests that tried the blackhole; latencies ms: {:?}",
        lat.iter().map(|d| ms(*d)).collect::<Vec<_>>()
    );
    assert!(!slow.is_empty(), "no request paid the connect timeout");
    let (first_failover, cost) = slow[0];
    assert!(
        first_failover < 3,
        "the blackhole got its first request late: #{first_failover}"
    );
    assert!(
        cost < Duration::from_millis(1500),
        "failover cost {:.0} ms, expected about one connect timeout (500 ms)",
        ms(cost)
    );
    assert_eq!(gate.health("blackhole").await, "down", "{}", gate.logs());

    let after = &lat[first_failover + 1..];
    assert!(after.len() >= 50);
    let after = &after[..50];
    let (med_before, p90_before, med_after, p90_after) = (
        percentile(&before, 0.5),
        percentile(&before, 0.9),
        percentile(after, 0.5),
        percentile(after, 0.9),
    );
    eprintln!(
        "blackhole: failover request #{first_failover} took {:.0} ms; after it: median {:.1} ms p90 {:.1} ms max {:.1} ms",
        ms(cost),
        ms(med_after),
        ms(p90_after),
        ms(*after.iter().max().unwrap())
    );
    assert!(
        p90_after < p90_before * 3 + Duration::from_millis(100),
        "p90 after failover {:.1} ms vs {:.1} ms without the blackhole",
        ms(p90_after),
        ms(p90_before)
    );
    assert!(
        med_after < med_before * 3 + Duration::from_millis(20),
        "median with the blackhole configured {:.1} ms vs {:.1} ms without",
        ms(med_after),
        ms(med_before)
    );

    // A session pinned to the blackhole, on a balancer that still thinks it
    // is up: answered by the healthy node after one connect timeout.
    let gate2 = Gate::start(&format!(
        "{upstream}{SLOW_HEALTH}{}{}",
        backend_toml("blackhole", hole.port),
        node.toml()
    ));
    assert_eq!(gate2.health("blackhole").await, "up");
    let c = client();
    let ck = cookie_for("blackhole");
    let t = Instant::now();
    let r = request(&c, "GET", &gate2.url("/"), Some(&ck), Bytes::new()).await;
    let took = t.elapsed();
    eprintln!(
        "blackhole: sticky request failed over in {:.0} ms",
        ms(took)
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(route_of(&r), "tomcat1");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1500),
        "sticky failover took {:.0} ms, expected about 500 ms",
        ms(took)
    );
    assert_eq!(gate2.health("blackhole").await, "down");
    // Once down, the same session fails over without waiting.
    let t = Instant::now();
    let r = request(&c, "GET", &gate2.url("/"), Some(&ck), Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}

/// What one load client saw.
struct ClientRun {
    first_route: String,
    /// (finished at, status or transport error, serving route)
    results: Vec<(Instant, Result<u16, String>, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_has_no_client_visible_errors() {
    let _serial = SERIAL.lock().await;
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 300;
    let mut b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Arc::new(Gate::start(&format!(
        "{FAST_HEALTH}{}{}",
        b1.toml(),
        b2.toml()
    )));
    let done = Arc::new(AtomicUsize::new(0));
    // Generous: every request must be made (and succeed), however busy
    // the machine; the deadline only stops a hang.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let gate = gate.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let first = request(&c, "GET", &gate.url("/"), None, Bytes::new()).await;
            assert_eq!(first.status, 200);
            let mut cookie = format!("JSESSIONID={}", first.set_cookie("JSESSIONID").unwrap());
            let mut run = ClientRun {
                first_route: route_of(&first),
                results: Vec::new(),
            };
            for _ in 0..PER_CLIENT {
                if Instant::now() >= deadline {
                    break;
                }
                // A few ms in the backend, so the kill always cuts requests
                // in flight on the dead node.
                let url = gate.url("/slow?ms=3");
                let r = try_request(&c, "GET", &url, Some(&cookie), Bytes::new()).await;
                let at = Instant::now();
                match r {
                    Ok(r) => {
                        if let Some(id) = r.set_cookie("JSESSIONID") {
                            cookie = format!("JSESSIONID={id}");
                        }
                        let route = if r.status == 200 {
                            route_of(&r)
                        } else {
                            String::new()
                        };
                        run.results.push((at, Ok(r.status), route));
                    }
                    Err(e) => run.results.push((at, Err(e), String::new())),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            run
        }));
    }
    // Kill a node once a quarter of the load is through.
    let kill_deadline = Instant::now() + Duration::from_secs(8);
    while done.load(Ordering::Relaxed) < CLIENTS * PER_CLIENT / 4 && Instant::now() < kill_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    let done_at_kill = done.load(Ordering::Relaxed);
    b1.proc.kill();
    let mut runs = Vec::new();
    for t in tasks {
        runs.push(t.await.unwrap());
    }
    let total: usize = runs.iter().map(|r| r.results.len()).sum();
    let after_kill = runs
        .iter()
        .flat_map(|r| &r.results)
        .filter(|(at, _, _)| *at > killed_at)
        .count();
    let errors: Vec<String> = runs
        .iter()
        .enumerate()
        .flat_map(|(c, r)| {
            r.results.iter().filter_map(move |(at, s, _)| match s {
                Ok(200) => None,
                Ok(s) => Some(format!(
                    "client {c}: status {s} at kill{:+.0} ms",
                    signed_ms(*at, killed_at)
                )),
                Err(e) => Some(format!(
                    "client {c}: {e} at kill{:+.0} ms",
                    signed_ms(*at, killed_at)
                )),
            })
        })
        .collect();
    let on_dead = runs.iter().filter(|r| r.first_route == "tomcat1").count();
    eprintln!(
        "sigkill: {total} requests ({done_at_kill} before the kill, {after_kill} after), \
         {on_dead}/{CLIENTS} sessions on the killed node, {} errors, took {:.1} s",
        errors.len(),
        killed_at.elapsed().as_secs_f64()
    );
    for e in &errors {
        eprintln!("  {e}");
    }
    for l in gate.logs().lines().filter(|l| l.contains("down")) {
        eprintln!("  stickgate: {l}");
    }
    assert!(errors.is_empty(), "{} client-visible errors", errors.len());
    assert_eq!(
        total,
        CLIENTS * PER_CLIENT,
        "every client must finish all its requests"
    );
    assert!(
        after_kill >= CLIENTS * PER_CLIENT / 2,
        "the kill was not mid-load: only {after_kill} of {total} requests after it"
    );
    assert!(on_dead >= 1, "no session started on tomcat1");
    for (c, r) in runs.iter().enumerate() {
        let last = &r.results.last().expect("no requests").2;
        assert_eq!(
            last, "tomcat2",
            "client {c} (first on {}) ended on {last}",
            r.first_route
        );
        if r.first_route == "tomcat2" {
            assert!(
                r.results.iter().all(|(_, _, route)| route == "tomcat2"),
                "client {c}: a tomcat2 session moved"
            );
        }
    }
    assert_eq!(gate.health("tomcat1").await, "down");
}

fn signed_ms(at: Instant, zero: Instant) -> f64 {
    if at >= zero {
        ms(at - zero)
    } else {
        -ms(zero - at)
    }
}

/// A frozen backend: accepts connections and reads requests, never answers.
/// Keeps everything it received.
struct Hung {
    port: u16,
    accepted: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Hung {
    async fn start() -> Hung {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (a, r) = (accepted.clone(), received.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::Relaxed);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        r.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Hung {
            port,
            accepted,
            received,
            task,
        }
    }

    fn saw(&self, needle: &str) -> bool {
        String::from_utf8_lossy(&self.received.lock().unwrap()).contains(needle)
    }
}

impl Drop for Hung {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An in-test HTTP backend that answers every request 200 with
/// `{"route","bytes"}` and records what it saw and on how many connections.
struct Recorder {
    port: u16,
    /// "METHOD path" of every request, health checks included.
    seen: Arc<Mutex<Vec<String>>>,
    /// Accepted connections.
    conns: Arc<AtomicUsize>,
    /// Connections that carried at least one request other than `/health`.
    traffic_conns: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start(route: &'static str) -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let traffic_conns = Arc::new(AtomicUsize::new(0));
        let (sn, cn, tc) = (seen.clone(), conns.clone(), traffic_conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                cn.fetch_add(1, Ordering::Relaxed);
                let (sn, tc) = (sn.clone(), tc.clone());
                let counted = Arc::new(AtomicBool::new(false));
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let (sn, tc, counted) = (sn.clone(), tc.clone(), counted.clone());
                    async move {
                        let line = format!("{} {}", req.method(), req.uri());
                        if req.uri().path() != "/health" && !counted.swap(true, Ordering::Relaxed) {
                            tc.fetch_add(1, Ordering::Relaxed);
                        }
                        sn.lock().unwrap().push(line);
                        let n = match req.into_body().collect().await {
                            Ok(b) => b.to_bytes().len(),
                            Err(_) => 0,
                        };
                        let body = format!("{{\"route\":\"{route}\",\"bytes\":{n}}}");
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Recorder {
            port,
            seen,
            conns,
            traffic_conns,
            task,
        }
    }

    fn saw(&self, needle: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    fn traffic(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !l.ends_with(" /health"))
            .count()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_backend_get_is_rescued_by_a_failed_probe() {
    let _serial = SERIAL.lock().await;
    let hung = Hung::start().await;
    let node = Backend::start("tomcat1", &[]);
    let gate = Gate::start(&format!(
        "{SLOW_HEALTH}{}{}",
        backend_toml("hung", hung.port),
        node.toml()
    ));
    assert_eq!(gate.health("hung").await, "up");
    let c = client();
    let t = Instant::now();
    let r = request(
        &c,
        "GET",
        &gate.url("/frozen-get"),
        Some(&cookie_for("hung")),
        Bytes::new(),
    )
    .await;
    let took = t.elapsed();
    eprintln!("hung: GET answered {} in {:.0} ms", r.status, ms(took));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(route_of(&r), "tomcat1");
    assert!(
        hung.saw("GET /frozen-get "),
        "the GET never reached the hung node"
    );
    // The default 60 s response timeout never fires: after 500 ms
    // (health.suspect_after) a probe of the hung node fails within the 1 s
    // health.timeout, marks it down, and the waiting GET goes elsewhere.
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(3),
        "GET took {:.0} ms, expected about suspect_after + health.timeout",
        ms(took)
    );
    assert_eq!(gate.health("hung").await, "down", "{}", gate.logs());
    assert!(hung.accepted.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_backend_post_is_not_replayed() {
    let _serial = SERIAL.lock().await;
    let hung = Hung::start().await;
    let healthy = Recorder::start("rec1").await;
    let gate = Gate::start(&format!(
        "[upstream]\nresponse_timeout = \"1s\"\n{SLOW_HEALTH}{}{}",
        backend_toml("hung", hung.port),
        backend_toml("rec1", healthy.port)
    ));
    assert_eq!(gate.health("hung").await, "up");
    let c = client();
    let path = format!("/never-replay-{:016x}", rand_u128() as u64);
    let body = Bytes::from(vec![b'p'; 64 * 1024]);
    let t = Instant::now();
    let r = request(
        &c,
        "POST",
        &gate.url(&path),
        Some(&cookie_for("hung")),
        body,
    )
    .await;
    let took = t.elapsed();
    eprintln!("hung: POST answered {} in {:.0} ms", r.status, ms(took));
    assert!(
        hung.saw(&format!("POST {path} ")),
        "the POST never reached the hung node"
    );
    assert_eq!(r.status, 504, "{:?}", r.body);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "POST took {:.0} ms",
        ms(took)
    );
    // The healthy node works and gets traffic, but never saw the POST.
    let probe = request(&c, "GET", &gate.url("/after-post"), None, Bytes::new()).await;
    assert_eq!(probe.status, 200);
    assert!(healthy.saw("/after-post"));
    assert!(
        !healthy.saw(&path),
        "the POST was replayed on the healthy node: {:?}",
        healthy.seen.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_backend_gets_retried_and_marked_down() {
    let _serial = SERIAL.lock().await;
    // Accept, then close with RST (SO_LINGER 0): a node in its stop window.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let resets = Arc::new(AtomicUsize::new(0));
    let r2 = resets.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
            drop(s);
            r2.fetch_add(1, Ordering::Relaxed);
        }
    });
    let node = Backend::start("tomcat1", &[]);
    let gate = Gate::start(&format!(
        "{SLOW_HEALTH}{}{}",
        backend_toml("gone", port),
        node.toml()
    ));
    assert_eq!(gate.health("gone").await, "up");
    let c = client();
    let ck = cookie_for("gone");
    for i in 0..5 {
        let t = Instant::now();
        let r = request(&c, "GET", &gate.url("/"), Some(&ck), Bytes::new()).await;
        let took = t.elapsed();
        eprintln!(
            "reset: GET #{i} answered {} in {:.1} ms",
            r.status,
            ms(took)
        );
        assert_eq!(r.status, 200, "#{i}: {:?}", r.body);
        assert_eq!(route_of(&r), "tomcat1");
        assert!(took < Duration::from_secs(2), "#{i} took {took:?}");
    }
    assert!(resets.load(Ordering::Relaxed) >= 1);
    assert_eq!(gate.health("gone").await, "down", "{}", gate.logs());
    let s = gate.status().await;
    let gone = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["route"] == "gone")
        .unwrap();
    assert!(gone["errors"].as_u64().unwrap() >= 1, "{gone}");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connect_retries_post_with_its_body() {
    let _serial = SERIAL.lock().await;
    let node = Backend::start("tomcat1", &[]);
    let dead_port = free_port(); // nothing listens there
    let gate = Gate::start(&format!(
        "{SLOW_HEALTH}{}{}",
        backend_toml("dead", dead_port),
        node.toml()
    ));
    assert_eq!(gate.health("dead").await, "up");
    let c = client();
    const LEN: usize = 1 << 20;
    let r = request(
        &c,
        "POST",
        &gate.url("/upload"),
        Some(&cookie_for("dead")),
        Bytes::from(vec![b'u'; LEN]),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let j = r.json();
    assert_eq!(j["route"], "tomcat1");
    assert_eq!(j["bytes"], LEN as u64);
    assert_eq!(gate.health("dead").await, "down", "{}", gate.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let _serial = SERIAL.lock().await;
    let rec = Recorder::start("rec1").await;
    let gate = Gate::start(&format!("{FAST_HEALTH}{}", backend_toml("rec1", rec.port)));
    let shared = client();
    for i in 0..200 {
        // Half on one client connection, half on a new one each time: the
        // upstream pool must not care.
        let r = if i < 100 {
            request(&shared, "GET", &gate.url("/reuse"), None, Bytes::new()).await
        } else {
            request(&client(), "GET", &gate.url("/reuse"), None, Bytes::new()).await
        };
        assert_eq!(r.status, 200, "#{i}");
    }
    let traffic = rec.traffic();
    let conns = rec.traffic_conns.load(Ordering::Relaxed);
    eprintln!(
        "reuse: 200 requests used {conns} upstream connections ({} accepted incl. health checks)",
        rec.conns.load(Ordering::Relaxed)
    );
    assert_eq!(traffic, 200);
    assert!(conns >= 1);
    assert!(
        conns <= 5,
        "200 sequential requests used {conns} upstream connections"
    );
}
