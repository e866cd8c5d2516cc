//! Limit drills with real processes: the per-backend connection limit and
//! its queue, the retry limit, a full session store and the shutdown
//! timeout cutting a request that runs too long.

mod common;

use bytes::Bytes;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// One backend, at most one request in it at a time, a short queue.
fn one_slot_gate(b: &Backend, queue_timeout: &str) -> Gate {
    Gate::start(&format!(
        "{FAST_HEALTH}[upstream]\nmax_connections = 1\nqueue_timeout = \"{queue_timeout}\"\n{}",
        b.toml()
    ))
}

/// Wait until the gate's only backend has `n` requests in flight.
async fn until_inflight(gate: &Gate, n: u64) {
    let end = Instant::now() + Duration::from_secs(5);
    while gate.status().await["backends"][0]["inflight"] != n {
        assert!(Instant::now() < end, "never {n} in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_backend_queues_then_answers_503_after_queue_timeout() {
    let b = Backend::start("tomcat1", &[]);
    let gate = one_slot_gate(&b, "400ms");
    gate.wait_health("tomcat1", "up").await;
    let c = client();
    // The slot is taken by a slow request...
    let slow = {
        let (c, url) = (c.clone(), gate.url("/slow?ms=2500"));
        tokio::spawn(async move { request(&c, "GET", &url, None, Bytes::new()).await })
    };
    until_inflight(&gate, 1).await;
    // ...so the next one waits its queue timeout, then gets a clear 503.
    let t = Instant::now();
    let busy = request(&c, "GET", &gate.url("/headers"), None, Bytes::new()).await;
    let waited = t.elapsed();
    println!("queued request answered {} after {waited:?}", busy.status);
    assert_eq!(busy.status, 503, "{:?}", busy.body);
    assert!(
        String::from_utf8_lossy(&busy.body).contains("connection limit reached"),
        "{:?}",
        busy.body
    );
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_millis(1500),
        "the queue wait was {waited:?}, not about 400 ms"
    );
    assert_eq!(slow.await.unwrap().status, 200);
    // A request that fits in the queue waits for the slot and is served.
    let short = {
        let (c, url) = (c.clone(), gate.url("/slow?ms=300"));
        tokio::spawn(async move { request(&c, "GET", &url, None, Bytes::new()).await })
    };
    until_inflight(&gate, 1).await;
    let t = Instant::now();
    let queued = request(&c, "GET", &gate.url("/headers"), None, Bytes::new()).await;
    println!(
        "request queued behind a 300 ms one: {} after {:?}",
        queued.status,
        t.elapsed()
    );
    assert_eq!(queued.status, 200, "{:?}", queued.body);
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "it did not wait for the slot"
    );
    assert_eq!(short.await.unwrap().status, 200);
    // Queue refusals say nothing about the backend's health.
    assert_eq!(gate.health("tomcat1").await, "up");
}

/// A backend that accepts, reads the request head and closes at once:
/// every attempt on it fails after the request left. Counts accepts.
struct Slammer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Slammer {
    async fn start() -> Slammer {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
                });
            }
        });
        Slammer {
            port,
            accepted,
            task,
        }
    }
}

impl Drop for Slammer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_retry_limit() {
    let mut nodes = Vec::new();
    for _ in 0..5 {
        nodes.push(Slammer::start().await);
    }
    // No health checks: only the request touches the nodes. Each failed
    // attempt marks its node down, the next goes to another one.
    let backends: String = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "[[backend]]\nroute = \"n{i}\"\nurl = \"http://127.0.0.1:{}\"\n",
                n.port
            )
        })
        .collect();
    let gate = Gate::start(&format!(
        "[health]\nenabled = false\nprobe_backoff = \"30s\"\nprobe_backoff_max = \"30s\"\n\
         [upstream]\nretries = 2\n{backends}"
    ));
    let r = get(&gate.url("/headers"), None).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    let accepted: Vec<usize> = nodes
        .iter()
        .map(|n| n.accepted.load(Ordering::Relaxed))
        .collect();
    let total: usize = accepted.iter().sum();
    let status = gate.status().await;
    println!(
        "accepts per node {accepted:?}, retries counter {}",
        status["retries"]
    );
    assert_eq!(total, 3, "retries = 2 allows 3 attempts: {accepted:?}");
    assert_eq!(status["retries"], 2, "{status}");
    let down = status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["health"] == "down")
        .count();
    assert_eq!(down, 3, "each failed attempt marks its node down: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_session_store_keeps_routing_by_suffix() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}[session]\nmax_sessions = 4\n{}{}",
        b1.toml(),
        b2.toml()
    ));
    gate.wait_health("tomcat1", "up").await;
    gate.wait_health("tomcat2", "up").await;
    let c = client();
    let mut sessions = Vec::new();
    for _ in 0..12 {
        sessions.push(new_session(&c, &gate).await);
    }
    let store = gate.status().await["store"].clone();
    println!("store after 12 sessions with max_sessions = 4: {store}");
    assert_eq!(store["sessions"], 4, "{store}");
    assert_eq!(store["capacity"], 4, "{store}");
    assert!(store["rejected_full"].as_u64().unwrap() >= 8, "{store}");
    // Every session, tracked or not, stays on its node with its hits.
    for (route, id) in &sessions {
        let r = hit(&c, &gate, Some(id)).await;
        assert_eq!(r.status, 200);
        assert_eq!(&route_of(&r), route, "session moved");
        assert_eq!(hits_of(&r), 2, "session lost");
    }
    assert!(
        gate.logs().contains("session store is full"),
        "no warning logged: {}",
        gate.logs()
    );
    assert_eq!(gate.status().await["store"]["sessions"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_cuts_a_request_that_runs_too_long() {
    let b = Backend::start("tomcat1", &[]);
    let mut gate = Gate::start_with(
        &format!("{FAST_HEALTH}{}", b.toml()),
        "shutdown_timeout = \"1s\"\n",
    );
    gate.wait_health("tomcat1", "up").await;
    let c = client();
    let long = {
        let (c, url) = (c.clone(), gate.url("/slow?ms=8000"));
        tokio::spawn(async move { try_request(&c, "GET", &url, None, Bytes::new()).await })
    };
    let short = {
        let (c, url) = (c.clone(), gate.url("/slow?ms=500"));
        tokio::spawn(async move { try_request(&c, "GET", &url, None, Bytes::new()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    gate.proc.signal("TERM");
    let exited = wait_for(Duration::from_secs(6), || {
        matches!(gate.proc.child.try_wait(), Ok(Some(_)))
    });
    let took = t.elapsed();
    println!("stickgate exited {took:?} after SIGTERM (shutdown_timeout 1 s)");
    assert!(exited.is_ok(), "still running 6 s after SIGTERM");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(3000),
        "exit after {took:?}, not about 1 s"
    );
    let short = short.await.unwrap();
    assert_eq!(
        short.as_ref().map(|r| r.status),
        Ok(200),
        "a request finishing within the timeout must complete: {short:?}"
    );
    let long = long.await.unwrap();
    assert!(
        long.as_ref().map_or(true, |r| r.status != 200),
        "the cut request must not look served: {long:?}"
    );
    println!("long request: {:?}", long.map(|r| r.status));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pausing_its_body_gets_408_after_body_timeout() {
    use std::io::{Read, Write};
    let b = Backend::start("tomcat1", &[]);
    let gate = Gate::start_with(
        &format!("{FAST_HEALTH}{}", b.toml()),
        "body_timeout = \"1s\"\n",
    );
    gate.wait_health("tomcat1", "up").await;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while t.elapsed() < Duration::from_secs(5) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"\n") {
                    break;
                }
            }
        }
    }
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&out).into_owned();
    println!(
        "body paused: answered after {took:?}: {:?}",
        text.lines().next()
    );
    let r = parse_response(&text);
    assert_eq!(r.status, 408, "{text}");
    assert!(r.body.contains("request body stalled"), "{text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3000),
        "408 after {took:?}, body_timeout is 1 s"
    );
    // The client's pause is not the backend's fault.
    assert_eq!(gate.health("tomcat1").await, "up");
    let st = gate.status().await;
    assert_eq!(st["backends"][0]["errors"], 0, "{st}");
}
