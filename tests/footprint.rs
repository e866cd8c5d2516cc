//! Footprint drills (issue 19): idle keep-alive clients cost little memory,
//! idle upstream connections are dropped once past `pool_idle_timeout`
//! even when no request comes to take them, and memory goes back to the
//! system after a burst of clients closed. Real demo node, real stickgate.
mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One drill at a time: RSS figures are per drill.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Open `n` keep-alive connections, send one GET on each (sticky with a
/// session cookie, or to `/health` without one, so that no session is
/// learned) and read the whole answer; they stay open while the returned
/// streams live.
fn idle_clients(port: u16, n: usize, sticky: bool) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = if sticky {
            format!(
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: JSESSIONID={i:032x}.tomcat1\r\n\r\n"
            )
        } else {
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_owned()
        };
        s.write_all(req.as_bytes()).unwrap();
        read_one_response(&mut s);
        conns.push(s);
    }
    conns
}

/// Read one response with a Content-Length body (the demo node's).
fn read_one_response(s: &mut TcpStream) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < end, "no complete response in time");
        let n = s.read(&mut buf).expect("read response");
        assert!(n > 0, "closed before the response ended");
        got.extend_from_slice(&buf[..n]);
        let Some(head_end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("content-length");
        if got.len() >= head_end + 4 + len {
            return;
        }
    }
}

/// Calm health checks: nothing but the drill's own requests.
const CALM: &str = "[health]\nenabled = false\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_clients_stay_small() {
    let _serial = SERIAL.lock().await;
    let node = Backend::start("tomcat1", &[]);
    let gate = Gate::start_with(&format!("{CALM}{}", node.toml()), "idle_timeout = \"300s\"");
    let pid = gate.proc.pid();
    let _warm = idle_clients(gate.port, 10, true);
    let idle = settled_rss(pid);
    let n = 1000;
    let conns = tokio::task::spawn_blocking(move || idle_clients(gate.port, n, true))
        .await
        .unwrap();
    let loaded = settled_rss(pid);
    let per_conn = (loaded.saturating_sub(idle) * 1024) / n as u64;
    eprintln!("{n} idle keep-alive clients: RSS {idle} -> {loaded} KiB, {per_conn} B each");
    // Measured (debug build): 12.9 KiB each (hyper keeps its 8 KiB read
    // and header buffers per connection; resident only where written); a
    // per-connection slot for the whole request state (~7 KiB, boxed per
    // request instead) would push it past the bound.
    assert!(
        per_conn <= 16 * 1024,
        "{per_conn} B per idle client (RSS {idle} -> {loaded} KiB)"
    );
    drop(conns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_expire_without_traffic() {
    let _serial = SERIAL.lock().await;
    let node = Backend::start("tomcat1", &[]);
    let gate = Gate::start(&format!(
        "{CALM}[upstream]\npool_idle_timeout = \"1s\"\n{}",
        node.toml()
    ));
    // Concurrent requests: several upstream connections, all pooled after.
    let reqs = (0..8).map(|_| get_owned(gate.url("/")));
    for r in futures_util::future::join_all(reqs).await {
        assert_eq!(r.status, 200);
    }
    let pooled = idle_count(&gate).await;
    assert!(pooled >= 1, "no idle upstream connection pooled");
    let end = Instant::now() + Duration::from_secs(6);
    let mut left = pooled;
    while Instant::now() < end && left > 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = idle_count(&gate).await;
    }
    assert_eq!(
        left, 0,
        "{left} of {pooled} idle upstream connections still pooled 6 s after pool_idle_timeout = 1s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_goes_back_after_a_burst_of_clients() {
    let _serial = SERIAL.lock().await;
    let node = Backend::start("tomcat1", &[]);
    let gate = Gate::start_with(&format!("{CALM}{}", node.toml()), "idle_timeout = \"300s\"");
    let pid = gate.proc.pid();
    // Learned sessions would stay, spread over the pages the burst used
    // (glibc can only return whole free pages): none here.
    let _warm = idle_clients(gate.port, 10, false);
    let idle = settled_rss(pid);
    let n = 2000;
    let port = gate.port;
    let conns = tokio::task::spawn_blocking(move || idle_clients(port, n, false))
        .await
        .unwrap();
    let loaded = settled_rss(pid);
    drop(conns);
    // The housekeeper looks every second and trims one tick after the fall.
    let end = Instant::now() + Duration::from_secs(6);
    let mut after = loaded;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = rss_kib(pid);
        if after < idle + (loaded - idle) / 2 {
            break;
        }
    }
    eprintln!("burst of {n} clients: RSS idle {idle}, loaded {loaded}, after close {after} KiB");
    assert!(
        after < idle + (loaded - idle) / 2,
        "RSS stayed at {after} KiB after the clients closed (idle {idle}, loaded {loaded})"
    );
}

async fn get_owned(url: String) -> Resp {
    get(&url, None).await
}

async fn idle_count(gate: &Gate) -> u64 {
    gate.backend_status("tomcat1").await["idle_connections"]
        .as_u64()
        .expect("idle_connections")
}
