//! Drills: hostile and careless clients. Idle sockets, partial HTTP/2
//! prefaces, slow heads, idle keep-alive and HTTP/2 connections are all
//! closed on time while normal requests and the admin API are served; the
//! connection limit holds new clients in the backlog; and request heads
//! reach the backends clean (framing, sizes, forwarding headers, Host,
//! cookies, upgrades).

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Let this test process open a few thousand sockets.
fn raise_own_fd_limit() -> u64 {
    stickgate::server::raise_fd_limit().unwrap_or(1024)
}

/// Open file descriptors of a process (Linux).
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Read until the server closes (or `limit`): the bytes it sent and when
/// it closed, counted from `opened`.
async fn until_closed(mut s: TcpStream, opened: Instant, limit: Duration) -> (Vec<u8>, Duration) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, opened.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, Duration::MAX),
        }
    }
}

/// One backend and a gate with `server_extra`.
fn gate_with(server_extra: &str) -> (Backend, Gate) {
    let b = Backend::start("tomcat1", &[]);
    let gate = Gate::start_with(&format!("{FAST_HEALTH}{}", b.toml()), server_extra);
    (b, gate)
}

async fn admin_ok(gate: &Gate) -> Duration {
    let t = Instant::now();
    let r = get(
        &format!("http://127.0.0.1:{}/api/status", gate.admin_port),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_sockets_and_partial_prefaces_are_reaped() {
    reap_idle_sockets(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_sockets_and_partial_prefaces_are_reaped_with_h2c() {
    reap_idle_sockets(true).await;
}

/// 1500 silent sockets and 500 partial HTTP/2 prefaces against a gate
/// with `header_timeout = "2s"`: all closed within 3 s of opening (the
/// silent ones with a 408), while a request and the admin API are served.
async fn reap_idle_sockets(h2c: bool) {
    assert!(raise_own_fd_limit() > 4500, "this drill needs ~4500 fds");
    let (_b, gate) = gate_with(&format!("header_timeout = \"2s\"\nh2c = {h2c}\n"));
    let header_timeout = Duration::from_secs(2);
    let before = fds(gate.proc.pid());
    let mut watchers = Vec::new();
    let started = Instant::now();
    for i in 0..2000 {
        let mut s = TcpStream::connect(("127.0.0.1", gate.port)).await.unwrap();
        let opened = Instant::now();
        if i % 4 == 0 {
            // A partial HTTP/2 preface: used to wait forever, h2c or not.
            s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        }
        let limit = header_timeout + Duration::from_secs(10);
        watchers.push(tokio::spawn(until_closed(s, opened, limit)));
    }
    let opened_in = started.elapsed();
    // While they are held: a normal request and the admin API answer.
    let t = Instant::now();
    let r = get(&gate.url("/"), None).await;
    assert_eq!(r.status, 200);
    let served_in = t.elapsed();
    let admin_in = admin_ok(&gate).await;
    let held = fds(gate.proc.pid()).saturating_sub(before);
    let (mut silent, mut preface) = (Vec::new(), Vec::new());
    let mut answered_408 = 0;
    for (i, w) in watchers.into_iter().enumerate() {
        let (got, closed_after) = w.await.unwrap();
        if i % 4 == 0 {
            preface.push(closed_after);
        } else {
            silent.push(closed_after);
            answered_408 += usize::from(got.starts_with(b"HTTP/1.1 408"));
        }
    }
    silent.sort();
    preface.sort();
    let max = *silent.last().unwrap().max(preface.last().unwrap());
    eprintln!(
        "h2c {h2c}: 2000 idle sockets opened in {opened_in:?}; gate held {held} more fds; \
         a request was served in {served_in:?}, admin in {admin_in:?}; \
         1500 silent closed after min {:?} / median {:?} / max {:?} ({answered_408} got 408); \
         500 partial prefaces closed after max {:?}",
        silent[0],
        silent[750],
        silent.last().unwrap(),
        preface.last().unwrap()
    );
    assert!(
        max <= header_timeout + Duration::from_secs(1),
        "an idle socket lived {max:?} (header_timeout 2s)"
    );
    assert!(silent[0] >= header_timeout - Duration::from_millis(100));
    // Its other descriptors (health probes, pooled upstream connections)
    // may differ by a few between the two counts, as in the check below.
    let least = if h2c { 1900 } else { 1500 } - 5;
    assert!(held >= least, "the gate did not hold the sockets ({held})");
    assert_eq!(answered_408, 1500, "silent HTTP/1.1 sockets get a 408");
    assert!(served_in < Duration::from_secs(1) && admin_in < Duration::from_secs(1));
    let after = wait_for(Duration::from_secs(3), || {
        fds(gate.proc.pid()) <= before + 5
    });
    assert!(after.is_ok(), "fds not released: {}", fds(gate.proc.pid()));
    assert_eq!(get(&gate.url("/"), None).await.status, 200);
}

#[tokio::test]
async fn slow_heads_get_408_within_header_timeout() {
    let (_b, gate) = gate_with("header_timeout = \"1s\"\nidle_timeout = \"5s\"\n");
    // A first head that never completes.
    let mut s = TcpStream::connect(("127.0.0.1", gate.port)).await.unwrap();
    let opened = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let (got, after) = until_closed(s, opened, Duration::from_secs(5)).await;
    assert!(
        got.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(after <= Duration::from_secs(2), "closed after {after:?}");
    // A second head, started after an idle pause, gets header_timeout from
    // its first byte, not from the idle start.
    let mut s = TcpStream::connect(("127.0.0.1", gate.port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let (got, after) = until_closed(s, started, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("HTTP/1.1 408"), "{text}");
    assert!(
        after >= Duration::from_millis(900) && after <= Duration::from_secs(2),
        "second head closed {after:?} after its first byte"
    );
}

#[tokio::test]
async fn idle_keepalive_and_h2_connections_close_after_idle_timeout() {
    let (_b, gate) = gate_with("header_timeout = \"1s\"\nidle_timeout = \"2500ms\"\nh2c = true\n");
    // HTTP/1.1 keep-alive: a request slower than header_timeout is not
    // cut; idle after its response, the connection is closed silently at
    // idle_timeout (not at header_timeout).
    let mut s = TcpStream::connect(("127.0.0.1", gate.port)).await.unwrap();
    s.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let idle_from = Instant::now();
    let (got, after) = until_closed(s, idle_from, Duration::from_secs(6)).await;
    assert!(
        got.is_empty(),
        "idle close is silent: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        after >= Duration::from_millis(2300) && after <= Duration::from_millis(3500),
        "keep-alive closed after {after:?} idle (idle_timeout 2.5s)"
    );
    // HTTP/2 with prior knowledge: GOAWAY and close once no stream is open.
    let tcp = TcpStream::connect(("127.0.0.1", gate.port)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(gate.url("/"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
    let idle_from = Instant::now();
    tokio::time::timeout(Duration::from_secs(6), conn)
        .await
        .expect("h2 connection still open 6 s after its last stream")
        .unwrap()
        .ok();
    let after = idle_from.elapsed();
    assert!(
        after >= Duration::from_millis(2300) && after <= Duration::from_millis(3500),
        "h2 connection closed after {after:?} idle"
    );
    // h2c on: a partial preface is sniffed within header_timeout too.
    let mut s = TcpStream::connect(("127.0.0.1", gate.port)).await.unwrap();
    let opened = Instant::now();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let (got, after) = until_closed(s, opened, Duration::from_secs(5)).await;
    assert!(got.is_empty());
    assert!(
        after <= Duration::from_secs(2),
        "partial preface lived {after:?}"
    );
}

#[tokio::test]
async fn idle_tls_connection_is_closed_after_its_handshake() {
    let dir = tempdir();
    let ca = common::tls::Ca::new(&dir);
    let pair = ca.leaf(&dir, "a", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let b = Backend::start("tomcat1", &[]);
    let (_gate, tls_port) = common::tls::tls_gate(&[pair], &b.toml(), "header_timeout = \"1s\"\n");
    // A TCP connection that never starts its handshake.
    let silent = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    let (_, after) = until_closed(silent, Instant::now(), Duration::from_secs(5)).await;
    assert!(
        after <= Duration::from_secs(2),
        "handshake never started, open {after:?}"
    );
    let cfg = common::tls::client_config(&ca.pem, &[b"http/1.1"]);
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let tcp = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    let opened = Instant::now();
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut got)).await;
    let after = opened.elapsed();
    assert!(
        r.is_ok(),
        "TLS connection idle after its handshake still open"
    );
    assert!(after <= Duration::from_secs(2), "closed after {after:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn connection_limit_holds_new_clients_in_the_backlog() {
    let (_b, gate) = gate_with("header_timeout = \"2s\"\nmax_connections = 20\n");
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(("127.0.0.1", gate.port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    // The admin API is not behind the limit.
    let admin_in = admin_ok(&gate).await;
    assert!(
        admin_in < Duration::from_millis(500),
        "admin took {admin_in:?}"
    );
    // A normal request waits in the backlog until the idle ones are reaped.
    let r = get(&gate.url("/"), None).await;
    let waited = t.elapsed();
    assert_eq!(r.status, 200);
    eprintln!(
        "limit 20 full: admin answered in {admin_in:?}, a request was served after {waited:?}"
    );
    assert!(
        waited >= Duration::from_millis(1500) && waited <= Duration::from_millis(3500),
        "served after {waited:?}: must wait for a slot, then be served"
    );
    assert!(gate.logs().contains("client connection limit reached"));
    drop(idle);
}

/// `GET /headers` through the gate with raw `head` lines; the backend's
/// view of the request headers.
fn echoed(gate: &Gate, request: &[u8]) -> (RawResp, String) {
    let text = raw(gate.port, request, Duration::from_secs(3));
    (parse_response(&text), text)
}

#[tokio::test]
async fn request_heads_reach_backends_clean() {
    let (_b, gate) = gate_with("");
    // CL + TE: 400 and nothing forwarded.
    let (r, text) = echoed(
        &gate,
        b"POST /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 400, "{text}");
    let (r, text) = echoed(
        &gate,
        b"POST /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 400, "{text}");
    let st = gate.status().await;
    assert_eq!(
        st["backends"][0]["requests"], 0,
        "CL+TE reached a backend: {st}"
    );
    // One 16 KiB cookie line: 431.
    let big = format!(
        "GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: a={}\r\n\r\n",
        "b".repeat(16 * 1024)
    );
    let (r, text) = echoed(&gate, big.as_bytes());
    assert_eq!(r.status, 431, "{text}");
    // Duplicate Host: 400.
    let (r, text) = echoed(
        &gate,
        b"GET /headers HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 400, "{text}");
    // Forged forwarding headers are replaced; Host cannot be dropped.
    let (r, text) = echoed(
        &gate,
        b"GET /headers HTTP/1.1\r\nHost: shop\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Host: evil\r\nConnection: close, host\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{text}");
    let h = r.json();
    assert_eq!(h["host"], "shop", "{h}");
    assert_eq!(h["x-forwarded-host"], "shop", "{h}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    for forged in ["forwarded", "x-real-ip", "x-forwarded-port"] {
        assert!(h.get(forged).is_none(), "{forged} passed: {h}");
    }
    // HTTP/1.0 without Host cannot bring its own X-Forwarded-Host.
    let (r, text) = echoed(
        &gate,
        b"GET /headers HTTP/1.0\r\nX-Forwarded-Host: evil\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{text}");
    assert_ne!(r.json()["x-forwarded-host"], "evil", "{text}");
    // Userinfo of an absolute-form target never reaches Host.
    let (r, text) = echoed(
        &gate,
        b"GET http://user:secret@shop.example:8080/headers HTTP/1.1\r\nHost: shop.example:8080\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{text}");
    assert_eq!(r.json()["host"], "shop.example:8080", "{text}");
    assert!(!text.contains("secret"), "{text}");
    // A WebSocket upgrade goes without the client's Content-Length (the
    // demo node answers /headers with 200 instead of switching).
    let (r, text) = echoed(
        &gate,
        b"GET /headers HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(r.status, 200, "{text}");
    assert!(r.json().get("content-length").is_none(), "{text}");
}

#[tokio::test]
async fn trusted_proxies_keep_their_forwarding_headers() {
    let (_b, gate) = gate_with("trusted_proxies = [\"127.0.0.0/8\"]\n");
    let (r, text) = echoed(
        &gate,
        b"GET /headers HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: 203.0.113.9\r\n\
X-Forwarded-Proto: https\r\nX-Real-IP: 203.0.113.9\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{text}");
    let h = r.json();
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");
    assert_eq!(h["x-real-ip"], "203.0.113.9", "{h}");
}

#[tokio::test]
async fn cookies_h2_crumbs_joined_and_non_ascii_keeps_stickiness() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start_with(
        &format!("{FAST_HEALTH}{}{}", b1.toml(), b2.toml()),
        "h2c = true\n",
    );
    // HTTP/2 cookie crumbs: one joined Cookie line for the HTTP/1.1 node.
    let tcp = TcpStream::connect(("127.0.0.1", gate.port)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(gate.url("/headers"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let h: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(h["cookie"], "a=1; b=2", "{h}");
    // A non-ASCII byte in another cookie does not hide the session.
    let c = client();
    let (route, id) = new_session(&c, &gate).await;
    for _ in 0..6 {
        let mut req =
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: pref=caf\xe9; JSESSIONID="
                .to_vec();
        req.extend_from_slice(id.as_bytes());
        req.extend_from_slice(b"\r\n\r\n");
        let text = raw(gate.port, &req, Duration::from_secs(3));
        let r = parse_response(&text);
        assert_eq!(r.status, 200, "{text}");
        assert_eq!(r.json()["route"], route.as_str(), "session moved: {text}");
    }
}
