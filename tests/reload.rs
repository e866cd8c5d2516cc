//! Hot reload drills (POST /reload and SIGHUP): backends added and
//! removed, a bad file refused while the old config keeps serving,
//! listeners added and removed without dropping open connections, reloads
//! under load, and states set in the file or at run time.
mod common;
use bytes::Bytes;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rewrite the gate's config file: plain listeners on `ports`, the gate's
/// admin listener, then `body` (as `Gate::start` lays it out).
fn write_config(gate: &Gate, ports: &[u16], body: &str) {
    let listen: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let text = format!(
        "[server]\nlisten = [{}]\n\n[admin]\nlisten = \"127.0.0.1:{}\"\n{body}",
        listen.join(", "),
        gate.admin_port
    );
    std::fs::write(gate.dir.join("stickgate.toml"), text).unwrap();
}

/// `POST /reload`, which must succeed without warnings.
async fn reload_ok(gate: &Gate) {
    let r = admin_post(gate, "/reload").await;
    assert_eq!(
        r.status,
        200,
        "reload refused: {:?}\n{}",
        r.body,
        gate.logs()
    );
    let v = r.json();
    assert_eq!(v["reloaded"], true, "{v}");
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
}

/// `GET /` through the gate on `port`.
async fn get_on(port: u16) -> Result<Resp, String> {
    try_request(
        &client(),
        "GET",
        &format!("http://127.0.0.1:{port}/"),
        None,
        Bytes::new(),
    )
    .await
}

// ---------------------------------------------------------------------------
// 1. Adding a backend.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reload_adds_a_backend_and_keeps_the_others() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let b3 = Backend::start("tomcat3", &[]);
    let two = format!("{STEADY_HEALTH}{}{}", b1.toml(), b2.toml());
    let gate = Gate::start(&two);
    let c = client();
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let (route, id) = new_session(&c, &gate).await;
        sessions.push((route, id, 1));
    }
    for (route, id, hits) in &mut sessions {
        let r = hit(&c, &gate, Some(id)).await;
        assert_eq!(&route_of(&r), route);
        *hits = hits_of(&r);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = gate.status().await;

    write_config(&gate, &[gate.port], &format!("{two}{}", b3.toml()));
    reload_ok(&gate).await;

    let after = gate.status().await;
    assert_eq!(after["reloads"]["ok"], 1);
    let routes: Vec<&str> = after["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["route"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["tomcat1", "tomcat2", "tomcat3"]);
    for (i, route) in ["tomcat1", "tomcat2"].into_iter().enumerate() {
        let (old, new) = (&before["backends"][i], &after["backends"][i]);
        assert_eq!(new["route"], route);
        for key in ["requests", "errors", "health", "sessions"] {
            assert_eq!(new[key], old[key], "{route}: {key} changed by the reload");
        }
        assert_eq!(new["responses"]["2xx"], old["responses"]["2xx"], "{route}");
        let (s0, s1) = (
            old["health_since_secs"].as_f64().unwrap(),
            new["health_since_secs"].as_f64().unwrap(),
        );
        assert!(
            s1 >= s0,
            "{route}: health restarted by the reload ({s0}s -> {s1}s)"
        );
    }
    println!(
        "reload added tomcat3; tomcat1 requests {} and health age {}s kept",
        after["backends"][0]["requests"], after["backends"][0]["health_since_secs"]
    );

    // Existing sessions stay where they were and keep their state.
    for (route, id, hits) in &sessions {
        let r = hit(&c, &gate, Some(id)).await;
        assert_eq!(&route_of(&r), route, "session moved by the reload");
        assert_eq!(hits_of(&r), *hits + 1, "session state lost");
    }
    // New sessions reach the new node.
    let on3 = new_sessions_on(&c, &gate, 9, "tomcat3").await;
    assert!(
        on3 >= 2,
        "only {on3} of 9 new sessions reached the added node"
    );
}

// ---------------------------------------------------------------------------
// 2. Removing a backend.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reload_removing_a_backend_fails_its_sessions_over() {
    // Session-sharing nodes, so the heir continues the session.
    let redis = Redis::start();
    let url = redis.url();
    let b1 = Backend::start("tomcat1", &["--redis", &url]);
    let b2 = Backend::start("tomcat2", &["--redis", &url]);
    let gate = Gate::start(&format!("{STEADY_HEALTH}{}{}", b1.toml(), b2.toml()));
    let c = client();
    let mut on2 = Vec::new();
    for _ in 0..4 {
        let (route, id) = new_session(&c, &gate).await;
        if route == "tomcat2" {
            on2.push(id);
        }
    }
    assert!(!on2.is_empty());

    // A slow request of one of its sessions is in flight during the reload:
    // it finishes on the old config, on tomcat2.
    let slow = {
        let url = gate.url("/slow?ms=1500");
        let cookie = format!("JSESSIONID={}", on2[0]);
        tokio::spawn(async move {
            let started = Instant::now();
            let r = request(&client(), "GET", &url, Some(&cookie), Bytes::new()).await;
            (r, started.elapsed())
        })
    };
    // In flight once tomcat2 counts it (not merely sent by the client).
    let mut inflight = serde_json::Value::Null;
    for _ in 0..200 {
        inflight = gate.backend_status("tomcat2").await["inflight"].clone();
        if inflight == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(inflight, 1, "the slow request never reached tomcat2");

    write_config(
        &gate,
        &[gate.port],
        &format!("{STEADY_HEALTH}{}", b1.toml()),
    );
    reload_ok(&gate).await;
    let s = gate.status().await;
    assert_eq!(s["backends"].as_array().unwrap().len(), 1, "{s}");

    let (r, took) = slow.await.unwrap();
    assert_eq!(
        r.status, 200,
        "in-flight request broken by the reload: {:?}",
        r.body
    );
    assert_eq!(
        route_of(&r),
        "tomcat2",
        "the in-flight request did not finish where it started"
    );
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    println!("in-flight request across the reload: 200 from tomcat2 after {took:?}");

    for (i, id) in on2.iter().enumerate() {
        let base = id.strip_suffix(".tomcat2").unwrap();
        let r = hit(&c, &gate, Some(id)).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            route_of(&r),
            "tomcat1",
            "a removed node's session was not failed over"
        );
        assert_eq!(r.json()["session"], base);
        let want = if i == 0 { 3 } else { 2 };
        assert_eq!(hits_of(&r), want, "session state lost in the failover");
        assert_eq!(
            r.set_cookie("JSESSIONID").as_deref(),
            Some(format!("{base}.tomcat1").as_str())
        );
    }
    for _ in 0..4 {
        assert_eq!(new_session(&c, &gate).await.0, "tomcat1");
    }
}

// ---------------------------------------------------------------------------
// 3. A bad file is refused; the old config keeps serving.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalid_file_is_refused_then_fixed_with_sighup() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let good = format!("{STEADY_HEALTH}{}{}", b1.toml(), b2.toml());
    let gate = Gate::start(&good);
    let c = client();
    let (route, id) = new_session(&c, &gate).await;

    // Syntax error on a known line.
    write_config(
        &gate,
        &[gate.port],
        &format!("{good}this is = = not toml\n"),
    );
    let text = std::fs::read_to_string(gate.dir.join("stickgate.toml")).unwrap();
    let line = text.lines().count();
    let r = admin_post(&gate, "/reload").await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    let msg = r.json()["error"].as_str().unwrap().to_owned();
    println!("syntax error: {msg}");
    assert!(!msg.contains('\n'), "not one line: {msg:?}");
    assert!(
        msg.contains(&format!("stickgate.toml:{line}")),
        "no file:line {line}: {msg}"
    );

    // The old config still serves.
    let r = hit(&c, &gate, Some(&id)).await;
    assert_eq!((r.status, route_of(&r)), (200, route.clone()));
    let s = gate.status().await;
    assert_eq!(
        (s["reloads"]["ok"].as_u64(), s["reloads"]["failed"].as_u64()),
        (Some(0), Some(1))
    );
    assert!(s["reloads"]["last_error_unix"].as_u64().is_some(), "{s}");
    assert_eq!(s["reloads"]["last_ok_unix"], serde_json::Value::Null);
    assert!(
        s["reloads"]["last_error"]
            .as_str()
            .unwrap()
            .contains("stickgate.toml:"),
        "{s}"
    );

    // Semantic error: weight = 0.
    write_config(
        &gate,
        &[gate.port],
        &format!("{STEADY_HEALTH}{}{}", b1.toml(), b2.toml_with("weight = 0")),
    );
    let r = admin_post(&gate, "/reload").await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    let msg = r.json()["error"].as_str().unwrap().to_owned();
    println!("semantic error: {msg}");
    assert!(!msg.contains('\n'), "not one line: {msg:?}");
    assert!(
        msg.contains("backend[1].weight"),
        "the key is not named: {msg}"
    );
    let s = gate.status().await;
    assert_eq!(s["reloads"]["failed"], 2);
    assert!(
        s["reloads"]["last_error"]
            .as_str()
            .unwrap()
            .contains("weight"),
        "{s}"
    );
    assert_eq!(
        s["backends"][1]["weight"], 1,
        "the refused file was applied"
    );
    let r = hit(&c, &gate, Some(&id)).await;
    assert_eq!((r.status, route_of(&r)), (200, route.clone()));

    // Fixed, applied on SIGHUP.
    write_config(
        &gate,
        &[gate.port],
        &format!("{STEADY_HEALTH}{}{}", b1.toml(), b2.toml_with("weight = 3")),
    );
    gate.proc.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = gate.status().await;
        if s["reloads"]["ok"] == 1 {
            assert_eq!(s["reloads"]["failed"], 2);
            assert_eq!(s["backends"][1]["weight"], 3, "{s}");
            // The last error stays on record, dated before the success.
            let (bad, good) = (
                &s["reloads"]["last_error_unix"],
                &s["reloads"]["last_ok_unix"],
            );
            assert!(bad.as_u64().unwrap() <= good.as_u64().unwrap(), "{s}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP reload never applied: {}",
            gate.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = hit(&c, &gate, Some(&id)).await;
    assert_eq!((r.status, route_of(&r)), (200, route));
}

// ---------------------------------------------------------------------------
// 4. Listeners added and removed.
// ---------------------------------------------------------------------------

/// Send one GET on a kept-alive connection and read its whole response.
fn exchange(s: &mut TcpStream) -> RawResp {
    s.write_all(b"GET /headers HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("keep-alive connection failed: {e}"),
        }
        let text = String::from_utf8_lossy(&buf);
        if let Some(r) = parse_responses(&text).into_iter().next() {
            let complete = match r.header("content-length") {
                Some(n) => r.body.len() == n.parse::<usize>().unwrap(),
                None => text.ends_with("0\r\n\r\n"),
            };
            if complete {
                return r;
            }
        }
    }
    panic!(
        "no complete response on the kept-alive connection: {:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test]
async fn listeners_are_added_and_removed_without_dropping_connections() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let body = format!("{STEADY_HEALTH}{}{}", b1.toml(), b2.toml());
    let gate = Gate::start(&body);
    let first = gate.port;
    let second = free_port();
    assert!(
        get_on(second).await.is_err(),
        "nothing listens on {second} yet"
    );

    write_config(&gate, &[first, second], &body);
    reload_ok(&gate).await;
    let r = get_on(second).await.expect("the added listener accepts");
    assert_eq!(r.status, 200);
    assert_eq!(get_on(first).await.unwrap().status, 200);

    // A keep-alive connection on the first listener, opened before it goes.
    let mut kept = TcpStream::connect(("127.0.0.1", first)).unwrap();
    assert_eq!(exchange(&mut kept).status, 200);

    write_config(&gate, &[second], &body);
    reload_ok(&gate).await;
    let refused = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], first)),
        Duration::from_secs(2),
    );
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "the removed listener still accepts: {refused:?}"
    );
    let r = exchange(&mut kept);
    assert_eq!(
        r.status, 200,
        "the kept-alive connection was dropped by the reload"
    );
    let r = exchange(&mut kept);
    assert_eq!(r.status, 200);
    assert_eq!(get_on(second).await.expect("second listener").status, 200);
    let s = gate.status().await;
    assert_eq!(s["reloads"]["ok"], 2);
}

#[tokio::test]
async fn reload_with_a_busy_port_changes_nothing() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let body = format!("{STEADY_HEALTH}{}{}", b1.toml(), b2.toml());
    let gate = Gate::start(&body);
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = squatter.local_addr().unwrap().port();
    let fresh = free_port();

    // A new listener on a free port, one on a taken port, and a weight
    // change: all or nothing.
    write_config(
        &gate,
        &[gate.port, fresh, busy],
        &format!("{STEADY_HEALTH}{}{}", b1.toml(), b2.toml_with("weight = 5")),
    );
    let r = admin_post(&gate, "/reload").await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    let msg = r.json()["error"].as_str().unwrap().to_owned();
    println!("busy port: {msg}");
    assert!(
        msg.contains(&format!("127.0.0.1:{busy}")),
        "the address is not named: {msg}"
    );
    assert!(
        get_on(fresh).await.is_err(),
        "a refused reload opened a listener"
    );
    assert_eq!(gate.backend_status("tomcat2").await["weight"], 1);
    assert_eq!(get_on(gate.port).await.unwrap().status, 200);
    drop(squatter);
}

// ---------------------------------------------------------------------------
// 5. Reloads under load.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let with = |w1: u32, w2: u32| {
        format!(
            "{STEADY_HEALTH}{}{}",
            b1.toml_with(&format!("weight = {w1}")),
            b2.toml_with(&format!("weight = {w2}"))
        )
    };
    let gate = Arc::new(Gate::start(&with(1, 1)));
    let extra = free_port();

    let stop_at = Instant::now() + Duration::from_secs(3);
    let requests = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let gate = gate.clone();
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let (route, id) = new_session(&c, &gate).await;
            let mut errors = Vec::new();
            let mut n = 0u64;
            while Instant::now() < stop_at && n < 20_000 {
                n += 1;
                let cookie = format!("JSESSIONID={id}");
                match try_request(&c, "GET", &gate.url("/"), Some(&cookie), Bytes::new()).await {
                    Ok(r) if r.status == 200 && route_of(&r) == route => {}
                    Ok(r) => errors.push(format!(
                        "task {t} request {n}: {} {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    )),
                    Err(e) => errors.push(format!("task {t} request {n}: {e}")),
                }
            }
            requests.fetch_add(n, Ordering::Relaxed);
            errors
        }));
    }

    let steps: [(&[u16], (u32, u32)); 5] = [
        (&[gate.port], (2, 1)),
        (&[gate.port, extra], (2, 1)),
        (&[gate.port, extra], (1, 3)),
        (&[gate.port], (1, 3)),
        (&[gate.port], (1, 1)),
    ];
    let mut reloads = 0;
    for (ports, (w1, w2)) in steps {
        tokio::time::sleep(Duration::from_millis(450)).await;
        write_config(&gate, ports, &with(w1, w2));
        reload_ok(&gate).await;
        reloads += 1;
    }
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.unwrap());
    }
    let total = requests.load(Ordering::Relaxed);
    println!(
        "reload under load: {total} requests, {} errors, {reloads} reloads",
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} of {total} requests failed or lost stickiness; first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(total > 100, "too few requests ({total}) to mean anything");
    let s = gate.status().await;
    assert_eq!(s["reloads"]["ok"], 5);
    assert_eq!(s["backends"][1]["weight"], 1);
}

// ---------------------------------------------------------------------------
// 6. States in the file and at run time.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn state_set_in_the_file_applies_on_reload() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start(&format!("{STEADY_HEALTH}{}{}", b1.toml(), b2.toml()));
    let c = client();

    write_config(
        &gate,
        &[gate.port],
        &format!(
            "{STEADY_HEALTH}{}{}",
            b1.toml(),
            b2.toml_with("state = \"draining\"")
        ),
    );
    reload_ok(&gate).await;
    assert_eq!(gate.backend_status("tomcat2").await["state"], "draining");
    for i in 0..6 {
        assert_eq!(
            new_session(&c, &gate).await.0,
            "tomcat1",
            "new session {i} on the draining node"
        );
    }

    // The line removed again: back to the default, active.
    write_config(
        &gate,
        &[gate.port],
        &format!("{STEADY_HEALTH}{}{}", b1.toml(), b2.toml()),
    );
    reload_ok(&gate).await;
    assert_eq!(gate.backend_status("tomcat2").await["state"], "active");
}

#[tokio::test]
async fn runtime_state_survives_a_reload_that_does_not_set_it() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start(&format!("{STEADY_HEALTH}{}{}", b1.toml(), b2.toml()));
    let r = admin_post(&gate, "/api/backends/tomcat2/drain").await;
    assert_eq!(r.status, 200);

    // Same file: nothing changes.
    reload_ok(&gate).await;
    assert_eq!(gate.backend_status("tomcat2").await["state"], "draining");
    // Other settings of tomcat2 and tomcat1 change, its state line does not.
    write_config(
        &gate,
        &[gate.port],
        &format!(
            "{STEADY_HEALTH}{}{}",
            b1.toml_with("weight = 2"),
            b2.toml_with("weight = 3")
        ),
    );
    reload_ok(&gate).await;
    let b = gate.backend_status("tomcat2").await;
    assert_eq!(
        (b["state"].as_str(), b["weight"].as_u64()),
        (Some("draining"), Some(3)),
        "{b}"
    );
    assert_eq!(gate.backend_status("tomcat1").await["state"], "active");
    let c = client();
    for i in 0..6 {
        assert_eq!(
            new_session(&c, &gate).await.0,
            "tomcat1",
            "new session {i} on the drained node"
        );
    }
}

// ---------------------------------------------------------------------------
// Access log settings follow the file too.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reload_turns_the_access_log_on_changes_and_off() {
    let b1 = Backend::start("tomcat1", &[]);
    let body = format!("{STEADY_HEALTH}{}", b1.toml());
    let gate = Gate::start(&body);
    let c = client();
    assert_eq!(hit(&c, &gate, None).await.status, 200);
    let path = gate.dir.join("access.log");
    let lines_once = |n: usize| {
        let path = path.clone();
        async move {
            let read = || {
                std::fs::read_to_string(&path)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while read().len() < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let lines = read();
            assert_eq!(lines.len(), n, "access log lines: {lines:?}");
            lines
        }
    };
    let log = |format: &str| {
        format!(
            "[log]\naccess_log = \"{}\"\naccess_log_format = \"{format}\"\n{body}",
            path.display()
        )
    };

    write_config(&gate, &[gate.port], &log("combined"));
    reload_ok(&gate).await;
    assert_eq!(hit(&c, &gate, None).await.status, 200);
    let lines = lines_once(1).await;
    assert!(lines[0].contains("route=tomcat1"), "{lines:?}");

    write_config(&gate, &[gate.port], &log("json"));
    reload_ok(&gate).await;
    assert_eq!(hit(&c, &gate, None).await.status, 200);
    let lines = lines_once(2).await;
    let v: serde_json::Value = serde_json::from_str(&lines[1])
        .unwrap_or_else(|e| panic!("format not switched to json ({e}): {lines:?}"));
    assert_eq!(v["route"], "tomcat1");

    write_config(&gate, &[gate.port], &body);
    reload_ok(&gate).await;
    assert_eq!(hit(&c, &gate, None).await.status, 200);
    lines_once(2).await;
}

// ---------------------------------------------------------------------------
// Counters of a backend whose settings change.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn counters_survive_a_weight_change() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start(&format!("{STEADY_HEALTH}{}{}", b1.toml(), b2.toml()));
    let c = client();
    for _ in 0..6 {
        new_session(&c, &gate).await;
    }
    let before = gate.backend_status("tomcat1").await;
    assert!(before["requests"].as_u64().unwrap() > 0);
    write_config(
        &gate,
        &[gate.port],
        &format!("{STEADY_HEALTH}{}{}", b1.toml_with("weight = 2"), b2.toml()),
    );
    reload_ok(&gate).await;
    let after = gate.backend_status("tomcat1").await;
    assert_eq!(after["weight"], 2);
    for key in ["requests", "errors", "failovers_in"] {
        assert_eq!(after[key], before[key], "{key} reset by a weight change");
    }
    assert_eq!(
        after["responses"], before["responses"],
        "responses reset by a weight change"
    );
}
