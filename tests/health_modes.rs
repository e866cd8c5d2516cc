//! Health-mode drills with real processes: a custom health `path` with
//! `expect_status`, active checks off (passive detection, then backoff
//! re-probes re-admit the node), and `least_inflight` under skewed latency.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// An in-test backend: `/ready` answers `ready_status`; every other path
/// answers 200 with the route, after `delay_ms` (but `/health` at once).
/// Records every path.
struct Probed {
    port: u16,
    route: &'static str,
    ready_status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    paths: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Probed {
    async fn start(route: &'static str) -> Probed {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let ready_status = Arc::new(AtomicU16::new(200));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (rs, dl, ps) = (ready_status.clone(), delay_ms.clone(), paths.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (rs, dl, ps) = (rs.clone(), dl.clone(), ps.clone());
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let (rs, dl, ps) = (rs.clone(), dl.clone(), ps.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        ps.lock().unwrap().push(path.clone());
                        let _ = req.into_body().collect().await;
                        let mut r = http::Response::new(Full::new(Bytes::from(route)));
                        if path == "/ready" {
                            *r.status_mut() =
                                http::StatusCode::from_u16(rs.load(Ordering::Relaxed)).unwrap();
                        } else if path != "/health" {
                            let ms = dl.load(Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Probed {
            port,
            route,
            ready_status,
            delay_ms,
            paths,
            task,
        }
    }

    fn toml(&self) -> String {
        format!(
            "[[backend]]\nroute = \"{}\"\nurl = \"http://127.0.0.1:{}\"\n",
            self.route, self.port
        )
    }

    fn count(&self, path: &str) -> usize {
        self.paths
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

impl Drop for Probed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wait up to `limit` for `route` to show `want`; how long it took.
async fn until_health(gate: &Gate, route: &str, want: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    while t.elapsed() < limit {
        if gate.health(route).await == want {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{route} not {want} after {limit:?}: {}", gate.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_path_and_expect_status_decide_up_and_down() {
    let node = Probed::start("n1").await;
    node.ready_status.store(204, Ordering::Relaxed);
    let gate = Gate::start(&format!(
        "[health]\npath = \"/ready\"\nexpect_status = [204]\ninterval = \"100ms\"\n\
         timeout = \"500ms\"\nrise = 1\nfall = 1\n{}",
        node.toml()
    ));
    until_health(&gate, "n1", "up", Duration::from_secs(5)).await;
    // A backend starts up (as in HAProxy), so "up" can be read before the
    // first probe arrives: wait for that probe, on the configured path.
    let t = Instant::now();
    while node.count("/ready") == 0 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(node.count("/ready") >= 1, "{}", gate.logs());
    assert_eq!(node.count("/health"), 0, "the default path was probed");
    // A 200 is not in expect_status: down, and requests get a clear 503.
    node.ready_status.store(200, Ordering::Relaxed);
    let took = until_health(&gate, "n1", "down", Duration::from_secs(5)).await;
    println!("200 on /ready (expect 204): down after {took:?}");
    let r = get(&gate.url("/"), None).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    node.ready_status.store(204, Ordering::Relaxed);
    until_health(&gate, "n1", "up", Duration::from_secs(5)).await;
    assert_eq!(get(&gate.url("/"), None).await.status, 200);
    // A 503 on /ready is a failure too.
    node.ready_status.store(503, Ordering::Relaxed);
    until_health(&gate, "n1", "down", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_disabled_marks_down_from_traffic_and_readmits_by_backoff_probe() {
    let b1 = Backend::start("tomcat1", &[]);
    let port = b1.port;
    let watcher = Probed::start("tomcat2").await;
    let gate = Gate::start(&format!(
        "[health]\nenabled = false\nprobe_backoff = \"300ms\"\nprobe_backoff_max = \"2400ms\"\n{}{}",
        b1.toml(),
        watcher.toml()
    ));
    let c = client();
    let mut on_b1 = None;
    for _ in 0..10 {
        let r = hit(&c, &gate, None).await;
        if let Some(id) = r.set_cookie("JSESSIONID") {
            on_b1 = Some(id);
            break;
        }
    }
    let id = on_b1.expect("a session on tomcat1");
    drop(b1);
    // Only traffic can find the node dead; its session fails over.
    let r = hit(&c, &gate, Some(&id)).await;
    let down_at = Instant::now();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(&r.body[..], b"tomcat2", "{:?}", r.body);
    assert_eq!(gate.health("tomcat1").await, "down");
    // Back after 1.2 s: re-probes at about 0.3, 0.9, 2.1 s (backoff doubles)
    // find it at the third one.
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(down_at.elapsed())).await;
    let _b1 = Backend::start_on("tomcat1", port, &[]);
    until_health(&gate, "tomcat1", "up", Duration::from_secs(6)).await;
    let up_after = down_at.elapsed();
    println!("tomcat1 back at 1.2 s, re-admitted {up_after:?} after it was marked down");
    assert!(
        up_after >= Duration::from_millis(1700),
        "re-admitted at {up_after:?}: the probe did not back off"
    );
    // The fourth probe (about 4.5 s) at the latest, on a busy machine.
    assert!(up_after < Duration::from_millis(5000), "{up_after:?}");
    assert!(gate.logs().contains("probe connected"), "{}", gate.logs());
    assert_eq!(
        watcher.count("/health") + watcher.count("/ready"),
        0,
        "active checks ran while disabled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_inflight_sends_most_traffic_to_the_fast_node() {
    let slow = Probed::start("slow").await;
    slow.delay_ms.store(300, Ordering::Relaxed);
    let fast = Probed::start("fast").await;
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}[balance]\nalgorithm = \"least_inflight\"\n{}{}",
        slow.toml(),
        fast.toml()
    ));
    gate.wait_health("slow", "up").await;
    gate.wait_health("fast", "up").await;
    let end = Instant::now() + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (c, url) = (client(), gate.url("/work"));
        tasks.push(tokio::spawn(async move {
            let (mut s, mut f) = (0usize, 0usize);
            while Instant::now() < end {
                let r = request(&c, "GET", &url, None, Bytes::new()).await;
                match &r.body[..] {
                    b"slow" => s += 1,
                    b"fast" => f += 1,
                    other => panic!("{other:?}"),
                }
            }
            (s, f)
        }));
    }
    let (mut s, mut f) = (0, 0);
    for t in tasks {
        let (a, b) = t.await.unwrap();
        s += a;
        f += b;
    }
    println!("least_inflight, 6 clients for 2 s: slow (300 ms) {s}, fast {f}");
    assert_eq!(
        gate.health("slow").await,
        "up",
        "the slow node must stay in the race"
    );
    assert!(s >= 1, "the slow node got nothing");
    // Round robin would split them about evenly.
    assert!(f >= 10 * s, "fast {f} vs slow {s}");
}
