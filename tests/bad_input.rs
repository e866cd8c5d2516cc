//! Hostile and broken input: the balancer answers with the right status,
//! never forwards a smuggled request, never logs a session id, and keeps
//! serving afterwards.
mod common;
use bytes::Bytes;
use common::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(5);

fn pair() -> (Backend, Backend, Gate) {
    pair_with("")
}

fn pair_with(server_extra: &str) -> (Backend, Backend, Gate) {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start_with(
        &format!("{FAST_HEALTH}{}{}", b1.toml(), b2.toml()),
        server_extra,
    );
    (b1, b2, gate)
}

/// The balancer process is alive and still proxies a normal request.
async fn still_serving(gate: &mut Gate) {
    assert!(gate.is_running(), "stickgate died: {}", gate.logs());
    let r = get(&gate.url("/"), None).await;
    assert_eq!(r.status, 200, "stickgate no longer serves: {:?}", r.body);
}

/// No sent session value (or its base) appears in stickgate's log.
fn assert_not_logged(gate: &Gate, secrets: &[&str]) {
    let logs = gate.logs();
    for s in secrets {
        assert!(
            !logs.contains(s),
            "session id {s:?} appears in the log:\n{logs}"
        );
    }
}

#[tokio::test]
async fn malformed_request_line_is_400() {
    let (_b1, _b2, mut gate) = pair();
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET /\x01path HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let text = raw(gate.port, bad, T);
        let r = parse_response(&text);
        assert_eq!(
            r.status,
            400,
            "{:?} -> {text}",
            String::from_utf8_lossy(bad)
        );
    }
    still_serving(&mut gate).await;
}

#[tokio::test]
async fn oversized_header_block_is_431() {
    let (_b1, _b2, mut gate) = pair_with("max_header_size = 8192");
    let big = "a".repeat(10_000);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let text = raw(gate.port, req.as_bytes(), T);
    let r = parse_response(&text);
    assert_eq!(r.status, 431, "{text}");
    // Many small headers adding up past the limit, too.
    let many: String = (0..400)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(30)))
        .collect();
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let text = raw(gate.port, req.as_bytes(), T);
    let status = parse_response(&text).status;
    assert!(
        status == 431,
        "header block over the limit -> {status}: {text}"
    );
    // Just under the limit still works.
    let ok = "c".repeat(6000);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Ok: {ok}\r\nConnection: close\r\n\r\n");
    let text = raw(gate.port, req.as_bytes(), T);
    assert_eq!(parse_response(&text).status, 200, "{text}");
    still_serving(&mut gate).await;
}

#[tokio::test]
async fn malformed_cookies_are_treated_as_no_session() {
    let (_b1, _b2, mut gate) = pair();
    let long = format!("{}.tomcat1", "A".repeat(292));
    assert_eq!(long.len(), 300);
    let cases: Vec<Vec<u8>> = vec![
        b"JSESSIONID=;;;".to_vec(),
        b"JSESSIONID=\"".to_vec(),
        format!("JSESSIONID={long}").into_bytes(),
        b"JSESSIONID=\xff\xfeSECRET\x80.tomcat1".to_vec(),
        b"JSESSIONID==; =JSESSIONID; JSESSIONID".to_vec(),
    ];
    for cookie in &cases {
        let mut req = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: ".to_vec();
        req.extend_from_slice(cookie);
        req.extend_from_slice(b"\r\n\r\n");
        let text = raw(gate.port, &req, T);
        let r = parse_response(&text);
        let shown = String::from_utf8_lossy(cookie);
        assert_eq!(r.status, 200, "Cookie {shown:?} -> {text}");
        assert_eq!(
            r.json()["hits"],
            1,
            "Cookie {shown:?} must start a new session"
        );
        let id = r
            .set_cookie("JSESSIONID")
            .unwrap_or_else(|| panic!("Cookie {shown:?}: no new session cookie in {text}"));
        assert!(
            id.len() > 32 && id.ends_with(&format!(".{}", r.json()["route"].as_str().unwrap())),
            "{id}"
        );
    }
    assert_not_logged(&gate, &["A".repeat(292).as_str()]);
    still_serving(&mut gate).await;
}

#[tokio::test]
async fn cl_te_smuggling_is_never_forwarded_as_a_second_request() {
    let (_b1, _b2, mut gate) = pair();
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let body = format!("0\r\n\r\n{smuggled}");
    // Content-Length covers the whole tail, chunked framing ends at "0".
    let req = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    let t = Instant::now();
    let text = raw(gate.port, req.as_bytes(), Duration::from_secs(3));
    let responses = parse_responses(&text);
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response on the connection (the tail must not be served): {text}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "connection must be closed after a CL+TE request, not kept open"
    );
    let r = &responses[0];
    match r.status {
        400 => {}
        200 => assert_eq!(
            r.json()["bytes"],
            0,
            "forwarded body must use chunked framing only: {text}"
        ),
        s => panic!("CL+TE request -> {s}: {text}"),
    }
    // The backends saw at most the one /upload, never /smuggled.
    let st = gate.status().await;
    let forwarded = backends_sum(&st, "requests");
    assert!(forwarded <= 1, "{forwarded} requests forwarded: {st}");
    still_serving(&mut gate).await;
}

#[tokio::test]
async fn connect_is_405() {
    let (_b1, _b2, mut gate) = pair();
    let text = raw(
        gate.port,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
        T,
    );
    let r = parse_response(&text);
    assert_eq!(r.status, 405, "{text}");
    let st = gate.status().await;
    let forwarded = backends_sum(&st, "requests");
    assert_eq!(forwarded, 0, "CONNECT must not reach a backend: {st}");
    still_serving(&mut gate).await;
}

#[tokio::test]
async fn all_backends_dead_answers_fast_with_short_text() {
    let (mut b1, mut b2, mut gate) = pair();
    let c = client();
    let first = request(&c, "GET", &gate.url("/"), None, Bytes::new()).await;
    let id = first.set_cookie("JSESSIONID").unwrap();
    b1.proc.kill();
    b2.proc.kill();

    let secret = "5EC12E75E55101D0000000000000BEEF.tomcat1";
    let check = |r: &Resp, what: &str| {
        assert!(
            r.status == 502 || r.status == 503,
            "{what}: {} {:?}",
            r.status,
            r.body
        );
        let ct = r.headers.get("content-type").map(|v| v.to_str().unwrap());
        assert!(
            ct.is_some_and(|ct| ct.starts_with("text/plain")),
            "{what}: {ct:?}"
        );
        let body = std::str::from_utf8(&r.body).expect("UTF-8 body");
        assert!(
            !body.trim().is_empty() && body.len() < 200 && body.lines().count() <= 2,
            "{what}: body should be one short line: {body:?}"
        );
    };
    // Straight after the crash (passive detection) ...
    for (what, cookie) in [
        ("no session", None),
        ("live session", Some(format!("JSESSIONID={id}"))),
        ("made-up session", Some(format!("JSESSIONID={secret}"))),
    ] {
        let t = Instant::now();
        let r = request(&c, "GET", &gate.url("/"), cookie.as_deref(), Bytes::new()).await;
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{what}: {:?}",
            t.elapsed()
        );
        check(&r, what);
    }
    // ... and once health checks agree they are down.
    gate.wait_health("tomcat1", "down").await;
    gate.wait_health("tomcat2", "down").await;
    for _ in 0..5 {
        let t = Instant::now();
        let r = request(
            &c,
            "GET",
            &gate.url("/"),
            Some(&format!("JSESSIONID={secret}")),
            Bytes::new(),
        )
        .await;
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        check(&r, "all down");
    }
    assert!(gate.is_running(), "stickgate died: {}", gate.logs());
    let logs = gate.logs();
    assert!(
        logs.contains("sid#"),
        "failed requests should log sid#…: {logs}"
    );
    let (base, _) = secret.split_once('.').unwrap();
    let (live_base, _) = id.split_once('.').unwrap();
    assert_not_logged(&gate, &[secret, base, &id, live_base]);

    // A node comes back: the balancer serves again.
    let _b1 = Backend::start_on("tomcat1", b1.port, &[]);
    gate.wait_health("tomcat1", "up").await;
    still_serving(&mut gate).await;
}

#[tokio::test]
async fn session_ids_never_appear_in_the_log() {
    // One dead and one live node: failovers, new sessions, errors.
    let b2 = Backend::start("tomcat2", &[]);
    let mut gate = Gate::start(&format!(
        "{FAST_HEALTH}{}{}",
        dead_backend_toml("tomcat1", ""),
        b2.toml()
    ));
    let c = client();
    let secrets = [
        "0DDBA11C0FFEE0DDBA11C0FFEE000001",
        "0DDBA11C0FFEE0DDBA11C0FFEE000002",
        "0DDBA11C0FFEE0DDBA11C0FFEE000003",
    ];
    let mut learned = Vec::new();
    for (i, s) in secrets.iter().enumerate() {
        let cookie = format!("JSESSIONID={s}.tomcat1");
        let r = request(&c, "GET", &gate.url("/"), Some(&cookie), Bytes::new()).await;
        assert_eq!(r.status, 200, "{i}: {:?}", r.body);
        learned.push(r.set_cookie("JSESSIONID").unwrap());
        let path = format!("/;jsessionid={s}.tomcat1");
        let r = request(&c, "GET", &gate.url(&path), None, Bytes::new()).await;
        assert_eq!(r.status, 200);
    }
    // Break the last node too, so error paths log with a session.
    drop(b2);
    for s in &secrets {
        let cookie = format!("JSESSIONID={s}.tomcat2");
        let r = request(&c, "GET", &gate.url("/"), Some(&cookie), Bytes::new()).await;
        assert!(r.status >= 500, "{}", r.status);
    }
    let mut all: Vec<&str> = secrets.to_vec();
    all.extend(learned.iter().map(|s| s.as_str()));
    all.extend(learned.iter().map(|s| s.split('.').next().unwrap()));
    assert_not_logged(&gate, &all);
    assert!(gate.is_running());
}
