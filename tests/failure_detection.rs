//! Failure detection drills: slow is not dead, a hung (SIGSTOPped) node is
//! rescued by a probe, a stalled response body is aborted, and a connection
//! with an unfinished request body never serves another request.

mod common;

use bytes::Bytes;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_is_not_death_and_is_not_replayed() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start(&format!(
        "[upstream]\nresponse_timeout = \"2s\"\n{STEADY_HEALTH}{}{}",
        b1.toml(),
        b2.toml()
    ));
    let c = client();
    let id = session_on(&c, &gate, "tomcat1").await;
    let before = gate.backend_status("tomcat2").await["requests"]
        .as_u64()
        .unwrap();
    let cookie = format!("JSESSIONID={id}");
    // Three slow GETs at once: neither the timeouts nor their number may
    // eject the node, because the rescue probe proves it alive.
    let slow = (0..3).map(|_| {
        let c = c.clone();
        let (url, cookie) = (gate.url("/slow?ms=3000"), cookie.clone());
        async move {
            let t = Instant::now();
            let r = request(&c, "GET", &url, Some(&cookie), Bytes::new()).await;
            (r, t.elapsed())
        }
    });
    for (r, took) in futures_util::future::join_all(slow).await {
        eprintln!("slow GET: {} in {:.0} ms", r.status, ms(took));
        assert_eq!(r.status, 504, "{:?}", r.body);
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_millis(3000),
            "504 after {:.0} ms: expected the 2 s response timeout, without a replay",
            ms(took)
        );
    }
    let t2 = gate.backend_status("tomcat2").await;
    assert_eq!(
        t2["requests"].as_u64().unwrap(),
        before,
        "a timed-out GET was replayed on tomcat2"
    );
    let t1 = gate.backend_status("tomcat1").await;
    assert_eq!(t1["health"], "up", "{}", gate.logs());
    assert_eq!(t2["health"], "up", "{}", gate.logs());
    assert!(t1["rescue_probes"].as_u64().unwrap() >= 1, "{t1}");
    assert_eq!(t1["rescue_probes_failed"], 0, "{t1}");
    assert!(
        !gate.logs().contains("marked down"),
        "a slow request marked a backend down: {}",
        gate.logs()
    );
    // A slow request within the timer completes on its own node.
    let t = Instant::now();
    let r = request(
        &c,
        "GET",
        &gate.url("/slow?ms=1200"),
        Some(&cookie),
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(route_of(&r), "tomcat1");
    assert!(t.elapsed() >= Duration::from_millis(1200));
    assert_eq!(gate.backend_status("tomcat1").await["health"], "up");
}

/// Two replicating demo nodes (sessions in one Redis) behind a gate with
/// the default rescue settings and a quick re-admission after SIGCONT.
fn replicated_pair() -> (Redis, Backend, Backend, Gate) {
    let redis = Redis::start();
    let url = redis.url();
    let b1 = Backend::start("tomcat1", &["--redis", &url]);
    let b2 = Backend::start("tomcat2", &["--redis", &url]);
    let gate = Gate::start(&format!(
        "[health]\ninterval = \"500ms\"\nrise = 1\n{}{}",
        b1.toml(),
        b2.toml()
    ));
    (redis, b1, b2, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_node_sessions_are_answered_by_the_heir_within_two_seconds() {
    let (_redis, b1, _b2, gate) = replicated_pair();
    let c = client();
    let mut times = Vec::new();
    for round in 1..=5 {
        gate.wait_health("tomcat1", "up").await;
        // Four sessions of tomcat1, two hits each.
        let mut ids = Vec::new();
        for _ in 0..4 {
            let id = session_on(&c, &gate, "tomcat1").await;
            let r = hit(&c, &gate, Some(&id)).await;
            assert_eq!((route_of(&r), hits_of(&r)), ("tomcat1".into(), 2));
            ids.push(id);
        }
        b1.proc.signal("STOP");
        let t = Instant::now();
        let gets = ids.iter().map(|id| {
            let c = c.clone();
            let url = gate.url("/");
            let cookie = format!("JSESSIONID={id}");
            async move {
                let r = request(&c, "GET", &url, Some(&cookie), Bytes::new()).await;
                (r, t.elapsed())
            }
        });
        let answers = futures_util::future::join_all(gets).await;
        b1.proc.signal("CONT");
        let first = answers.iter().map(|(_, d)| *d).min().unwrap();
        for (r, took) in &answers {
            assert_eq!(r.status, 200, "round {round}: {:?}", r.body);
            assert_eq!(route_of(r), "tomcat2", "round {round}");
            assert_eq!(hits_of(r), 3, "round {round}: session data not continued");
            assert!(
                *took < Duration::from_secs(2),
                "round {round}: the heir answered after {:.0} ms",
                ms(*took)
            );
        }
        eprintln!(
            "round {round}: first answer from the heir {:.0} ms after the freeze",
            ms(first)
        );
        times.push(first);
    }
    times.sort();
    eprintln!(
        "frozen node: median time to the heir's answer {:.0} ms (min {:.0}, max {:.0})",
        ms(times[2]),
        ms(times[0]),
        ms(times[4])
    );
    let st = gate.backend_status("tomcat1").await;
    assert!(st["rescue_probes_failed"].as_u64().unwrap() >= 5, "{st}");
    assert!(st["rescued"].as_u64().unwrap() >= 5, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_node_post_gets_504_and_is_not_replayed() {
    let (_redis, b1, _b2, gate) = replicated_pair();
    let c = client();
    let id = session_on(&c, &gate, "tomcat1").await;
    let before = gate.backend_status("tomcat2").await["requests"]
        .as_u64()
        .unwrap();
    b1.proc.signal("STOP");
    let t = Instant::now();
    let r = request(
        &c,
        "POST",
        &gate.url("/upload"),
        Some(&format!("JSESSIONID={id}")),
        Bytes::from(vec![b'p'; 4096]),
    )
    .await;
    let took = t.elapsed();
    b1.proc.signal("CONT");
    eprintln!(
        "frozen node: POST answered {} in {:.0} ms",
        r.status,
        ms(took)
    );
    assert_eq!(r.status, 504, "{:?}", r.body);
    assert!(
        String::from_utf8_lossy(&r.body).contains("not replayed"),
        "{:?}",
        r.body
    );
    assert!(took < Duration::from_secs(3), "{:.0} ms", ms(took));
    assert_eq!(
        gate.backend_status("tomcat2").await["requests"]
            .as_u64()
            .unwrap(),
        before,
        "the POST was replayed on tomcat2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_timeout_replays_only_when_asked() {
    for (retry, want) in [(false, 504), (true, 200)] {
        let b1 = Backend::start("tomcat1", &[]);
        let b2 = Backend::start("tomcat2", &[]);
        // Rescue off: only the response timer can end the wait.
        let gate = Gate::start(&format!(
            "[upstream]\nresponse_timeout = \"1s\"\nretry_on_response_timeout = {retry}\n\
             [health]\ninterval = \"30s\"\nsuspect_after = \"0s\"\n{}{}",
            b1.toml(),
            b2.toml()
        ));
        let c = client();
        let id = session_on(&c, &gate, "tomcat1").await;
        b1.proc.signal("STOP");
        let t = Instant::now();
        let r = hit(&c, &gate, Some(&id)).await;
        let took = t.elapsed();
        b1.proc.signal("CONT");
        eprintln!(
            "retry_on_response_timeout = {retry}: {} in {:.0} ms",
            r.status,
            ms(took)
        );
        assert_eq!(r.status, want, "{:?}", r.body);
        if want == 200 {
            assert_eq!(route_of(&r), "tomcat2");
        }
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_millis(2500),
            "{:.0} ms",
            ms(took)
        );
        let st = gate.backend_status("tomcat1").await;
        assert_eq!(st["rescue_probes"], 0, "rescue is off: {st}");
        assert_eq!(st["health"], "up", "one timeout must not mark it down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_response_body_is_aborted_not_ended() {
    let b1 = Backend::start("tomcat1", &[]);
    let gate = Gate::start(&format!(
        "[upstream]\nbody_timeout = \"1s\"\n{STEADY_HEALTH}{}",
        b1.toml()
    ));
    let c = client();
    let t = Instant::now();
    let r = try_request(
        &c,
        "GET",
        &gate.url("/stall?bytes=300000&after=100000&ms=4000"),
        None,
        Bytes::new(),
    )
    .await;
    let took = t.elapsed();
    eprintln!(
        "stalled body: {:?} after {:.0} ms",
        r.as_ref().map(|r| r.status),
        ms(took)
    );
    assert!(
        r.is_err(),
        "a stalled body must abort the response, not end it cleanly: got {:?}",
        r.map(|r| (r.status, r.body.len()))
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3000),
        "aborted after {:.0} ms; body_timeout is 1 s",
        ms(took)
    );
    // A pause shorter than the timer is fine.
    let r = request(
        &c,
        "GET",
        &gate.url("/stall?bytes=300000&after=100000&ms=300"),
        None,
        Bytes::new(),
    )
    .await;
    assert_eq!((r.status, r.body.len()), (200, 300000));
}

/// Read one HTTP/1.1 response head from a raw socket.
fn read_head(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => out.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answer_does_not_poison_the_next_request() {
    let b1 = Backend::start("tomcat1", &[]);
    let gate = Gate::start(&format!(
        "[upstream]\nresponse_timeout = \"2s\"\n{STEADY_HEALTH}{}",
        b1.toml()
    ));
    // Warm the pool so reuse is the normal path.
    let c = client();
    assert_eq!(hit(&c, &gate, None).await.status, 200);
    // A client announces 1 MB, sends 1 KB, and stalls; the backend answers
    // at once (like Tomcat before reading a body) and swallows the rest.
    let mut slow = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        .unwrap();
    slow.write_all(&[b'x'; 1024]).unwrap();
    let head = read_head(&mut slow);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The next requests must not land on that connection.
    for i in 0..5 {
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(3), hit(&c, &gate, None))
            .await
            .unwrap_or_else(|_| panic!("request {i} hung on a poisoned upstream connection"));
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "request {i} took {:.0} ms",
            ms(t.elapsed())
        );
    }
    drop(slow);
}
