//! Trend history drills: `GET /api/history` (shape, bounds, `minutes`
//! validation, auth, memory per backend) on a real balancer with real demo
//! nodes, `stickgate ctl drain --wait` against real sessions expiring, and
//! `stickgate ctl status --watch` redrawing until Ctrl-C.
mod common;
use bytes::Bytes;
use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A point every second (the shortest `admin.history_interval`), so a drill
/// sees several points in a few seconds. The body continues the `[admin]`
/// section `Gate::start` opens.
const FAST_HISTORY: &str = "history_interval = \"1s\"\n";

/// Sessions that expire quickly, so a drain finishes within a drill.
const SHORT_SESSIONS: &str = "[session]\nidle_timeout = \"2s\"\n";

fn two_nodes(admin_extra: &str, extra: &str) -> (Backend, Backend, Gate) {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start(&format!(
        "{admin_extra}{STEADY_HEALTH}{extra}{}{}",
        b1.toml(),
        b2.toml()
    ));
    (b1, b2, gate)
}

/// `GET /api/history<query>` as JSON, asserting 200.
async fn history(gate: &Gate, query: &str) -> serde_json::Value {
    let r = admin_get(gate, &format!("/api/history{query}")).await;
    assert_eq!(r.status, 200, "/api/history{query}: {:?}", r.body);
    r.json()
}

fn backend<'a>(doc: &'a serde_json::Value, route: &str) -> &'a serde_json::Value {
    doc["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["route"] == route)
        .unwrap_or_else(|| panic!("no {route} in {doc}"))
}

/// The series of one backend, checked for shape: every column as long as
/// `t`, `t` increasing, at most `capacity` points.
fn columns(doc: &serde_json::Value, route: &str) -> usize {
    let s = &backend(doc, route)["series"];
    let t: Vec<u64> = s["t"]
        .as_array()
        .unwrap_or_else(|| panic!("no t in {s}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    for col in ["requests", "errors", "5xx", "sessions", "p95_ms"] {
        let n = s[col]
            .as_array()
            .unwrap_or_else(|| panic!("no {col} in {s}"))
            .len();
        assert_eq!(
            n,
            t.len(),
            "{route}: column {col} has {n} points, t has {}",
            t.len()
        );
    }
    assert!(
        t.windows(2).all(|w| w[0] <= w[1]),
        "{route}: t not in order: {t:?}"
    );
    let cap = doc["capacity"].as_u64().unwrap() as usize;
    assert_eq!(cap, 360, "capacity");
    assert!(t.len() <= cap, "{route}: {} points > {cap}", t.len());
    t.len()
}

#[tokio::test]
async fn history_shape_bounds_and_bad_minutes() {
    let (_b1, _b2, gate) = two_nodes(FAST_HISTORY, "");
    let c = client();
    let mut ids = Vec::new();
    for _ in 0..6 {
        let (_, id) = new_session(&c, &gate).await;
        ids.push(id);
    }
    // Traffic over a few seconds, so there are points with requests in them.
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        for id in &ids {
            assert_eq!(hit(&c, &gate, Some(id)).await.status, 200);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = admin_post(&gate, "/api/backends/tomcat1/drain").await;
    assert_eq!(r.status, 200);

    // Wait (bounded) for the points of the traffic and the drain's event.
    let deadline = Instant::now() + Duration::from_secs(15);
    let doc = loop {
        let doc = history(&gate, "").await;
        let requests: u64 = backend(&doc, "tomcat2")["series"]["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        let drained = doc["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "state" && e["route"] == "tomcat1");
        if requests > 0 && drained && columns(&doc, "tomcat1") >= 3 {
            break doc;
        }
        assert!(
            Instant::now() < deadline,
            "no traffic points or drain event within 15 s: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(doc["interval_secs"], 1.0);
    assert_eq!(doc["minutes"], 60, "default: the whole history");
    let n1 = columns(&doc, "tomcat1");
    let n2 = columns(&doc, "tomcat2");
    let on1 = backend(&doc, "tomcat1");
    let sessions1 = gate.backend_status("tomcat1").await["sessions"]["current"]
        .as_u64()
        .unwrap();
    assert_eq!(
        on1["series"]["sessions"]
            .as_array()
            .unwrap()
            .last()
            .unwrap(),
        sessions1,
        "the last sessions point of tomcat1 is not its session count: {on1}"
    );
    let drain = &on1["drain"];
    assert_eq!(drain["remaining"], sessions1, "drain of tomcat1: {on1}");
    assert_eq!(
        drain["sessions_at_start"], sessions1,
        "drain of tomcat1: {on1}"
    );
    assert!(
        backend(&doc, "tomcat2")["drain"].is_null(),
        "tomcat2 is active"
    );
    let p95: Vec<f64> = backend(&doc, "tomcat2")["series"]["p95_ms"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_f64())
        .collect();
    assert!(
        !p95.is_empty() && p95.iter().all(|&v| v > 0.0 && v < 10_000.0),
        "p95 points of tomcat2: {p95:?}"
    );
    let kinds: Vec<&str> = doc["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"start"), "events: {kinds:?}");
    let state = doc["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "state")
        .unwrap();
    assert_eq!(state["text"], "tomcat1: active -> draining");
    assert_eq!(state["count"], sessions1);

    // Memory per backend is reported and small.
    let mem1 = on1["memory_bytes"].as_u64().unwrap();
    let total = doc["memory_bytes"].as_u64().unwrap();
    assert!(
        mem1 > 360 * 20 && mem1 < 16 * 1024,
        "memory of one backend's history: {mem1} bytes"
    );
    assert!(total >= 2 * mem1, "total {total} < two backends");
    println!(
        "history: {n1}/{n2} points, {mem1} bytes per backend (ring of 360 allocated at once), {} bytes of events, {total} bytes in all",
        doc["events_memory_bytes"]
    );

    // A window: never more points than it spans (one a second here).
    let one = history(&gate, "?minutes=1").await;
    assert_eq!(one["minutes"], 1);
    assert!(columns(&one, "tomcat1") <= 61);

    // Bad minutes: 400 with a one-line reason, never a panic.
    for bad in [
        "?minutes=0",
        "?minutes=61",
        "?minutes=-5",
        "?minutes=abc",
        "?minutes=",
        "?minutes=1.5",
        "?minutes=99999999999999999999999",
        "?minutes=5&minutes=6",
        "?window=5",
    ] {
        let r = admin_get(&gate, &format!("/api/history{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {:?}", r.body);
        let e = r.json()["error"].as_str().unwrap().to_owned();
        assert!(!e.is_empty() && !e.contains('\n'), "{bad}: {e:?}");
    }
    let r = admin_post(&gate, "/api/history").await;
    assert_eq!(r.status, 405, "POST /api/history");

    // Stopping tomcat1 moves its sessions as their clients come back: one
    // failover event on tomcat2 counting them.
    assert_eq!(
        admin_post(&gate, "/api/backends/tomcat1/stop").await.status,
        200
    );
    for id in &ids {
        assert_eq!(hit(&c, &gate, Some(id)).await.status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc = history(&gate, "?minutes=2").await;
        let failovers: Vec<&serde_json::Value> = doc["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "failover")
            .collect();
        if let [e] = failovers.as_slice() {
            if e["count"] == sessions1 {
                assert_eq!(e["route"], "tomcat2", "{e}");
                println!("failover event: {}", e["text"]);
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no failover event counting {sessions1} sessions: {failovers:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn history_needs_the_token() {
    const TOKEN: &str = "hN4vQ8zW2kR6tY1mP9sB3xL7cD5fG0aJ";
    let dir = tempdir();
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_b1, _b2, gate) = two_nodes(&format!("token_file = \"{}\"\n", token_file.display()), "");
    let r = admin_get(&gate, "/api/history").await;
    assert_eq!(r.status, 401, "no token: {:?}", r.body);
    let r = admin_get(&gate, "/api/history?minutes=0").await;
    assert_eq!(r.status, 401, "auth comes before validation: {:?}", r.body);
    let url = admin_url(&gate, "/api/history?minutes=5");
    let get = |auth: String| {
        let url = url.clone();
        async move {
            request_with(
                &client(),
                "GET",
                &url,
                &[("authorization", &auth)],
                Bytes::new(),
            )
            .await
        }
    };
    assert_eq!(
        get(format!("Bearer {}", TOKEN.to_lowercase())).await.status,
        401
    );
    let r = get(format!("Bearer {TOKEN}")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["minutes"], 5);
}

/// Output of one `stickgate ctl` run.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// `stickgate ctl --admin <gate> args...`, killed after 60 s.
fn ctl(gate: &Gate, args: &[&str]) -> Out {
    let start = Instant::now();
    let mut child = Command::new(stickgate_bin())
        .args(["ctl", "--admin", &admin_url(gate, "")])
        .args(args)
        .env_remove("STICKGATE_ADMIN_TOKEN")
        .env("STICKGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run stickgate ctl");
    let end = start + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stickgate ctl {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drain_wait_ends_when_sessions_expire() {
    let (_b1, _b2, gate) = two_nodes("", SHORT_SESSIONS);
    let c = client();
    let mut on1 = Vec::new();
    for _ in 0..12 {
        let (route, id) = new_session(&c, &gate).await;
        if route == "tomcat1" {
            on1.push(id);
        }
    }
    assert!(on1.len() >= 2, "too few sessions on tomcat1: {}", on1.len());
    let n = on1.len();

    // Kept alive by their clients, the sessions outlast the timeout: exit 1
    // naming how many are left.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keep = {
        let (stop, ids, url) = (stop.clone(), on1.clone(), gate.url("/"));
        tokio::spawn(async move {
            let c = client();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for id in &ids {
                    let cookie = format!("JSESSIONID={id}");
                    let _ = try_request(&c, "GET", &url, Some(&cookie), Bytes::new()).await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let o = tokio::task::block_in_place(|| {
        ctl(&gate, &["drain", "tomcat1", "--wait", "--timeout", "2s"])
    });
    assert_eq!(
        o.code, 1,
        "drain --wait with live sessions: {} {}",
        o.stdout, o.stderr
    );
    assert_eq!(
        o.stderr.trim_end(),
        format!("stickgate: tomcat1: {n} sessions left after 2s"),
        "stdout: {}",
        o.stdout
    );
    assert!(
        o.stdout
            .starts_with(&format!("tomcat1: draining ({n} sessions remaining)\n")),
        "{}",
        o.stdout
    );
    assert!(o.took < Duration::from_secs(10), "took {:?}", o.took);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    keep.await.unwrap();
    let last_touch = Instant::now();

    // Left alone, they expire (idle 2 s): exit 0 once none is left.
    let o = tokio::task::block_in_place(|| {
        ctl(&gate, &["drain", "tomcat1", "--wait", "--timeout", "30s"])
    });
    assert_eq!(o.code, 0, "drain --wait: {} {}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains("tomcat1: drained after") && o.stdout.contains("safe to restart"),
        "{}",
        o.stdout
    );
    let s = gate.backend_status("tomcat1").await;
    assert_eq!(s["sessions_remaining"], 0, "{s}");
    assert_eq!(s["state"], "draining");
    println!(
        "drain --wait: {n} sessions expired, ctl returned {:.1}s after their last request (idle_timeout 2s)",
        last_touch.elapsed().as_secs_f64()
    );

    // Someone enables the route meanwhile: not drained, exit 1.
    session_on(&c, &gate, "tomcat2").await;
    let waiter = {
        let admin = admin_url(&gate, "");
        std::thread::spawn(move || {
            Command::new(stickgate_bin())
                .args([
                    "ctl",
                    "--admin",
                    &admin,
                    "drain",
                    "tomcat2",
                    "--wait",
                    "--timeout",
                    "30s",
                ])
                .env_remove("STICKGATE_ADMIN_TOKEN")
                .output()
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        admin_post(&gate, "/api/backends/tomcat2/enable")
            .await
            .status,
        200
    );
    let out = tokio::task::block_in_place(|| waiter.join().unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("tomcat2 is active again"), "{err}");

    // --timeout without --wait is a usage error.
    let o = ctl(&gate, &["drain", "tomcat1", "--timeout", "5s"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
}

#[tokio::test]
async fn ctl_status_watch_redraws_until_ctrl_c() {
    let (_b1, _b2, gate) = two_nodes("", "");
    let mut child = Command::new(stickgate_bin())
        .args(["ctl", "--admin", &admin_url(&gate, ""), "status", "--watch"])
        .env_remove("STICKGATE_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stdout.read_to_string(&mut all);
        all
    });
    // Three frames take a bit over 4 s; stop after 5.
    tokio::time::sleep(Duration::from_millis(5000)).await;
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let end = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("ctl status --watch did not stop within 5 s of SIGINT");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let out = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "exit after Ctrl-C: {out}");
    let frames = out.matches("ROUTE").count();
    assert!(
        (3..=4).contains(&frames),
        "{frames} frames in 5 s (one every 2 s): {out}"
    );
    let rows = out.lines().filter(|l| l.starts_with("tomcat1 ")).count();
    assert_eq!(rows, frames, "one tomcat1 row per frame: {out}");
}
