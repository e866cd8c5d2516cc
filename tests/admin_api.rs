//! Admin API drills: an operator drains, disables, stops and enables nodes
//! through the API and `stickgate ctl`, with and without a token; the
//! cross-site and DNS-rebinding guards; `/metrics` read by a real
//! OpenMetrics parser; the access log; the status page; and a state set on
//! one balancer showing on another that shares its Redis.
mod common;
use bytes::Bytes;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Sessions that expire quickly, so a drain can finish within a test.
const SHORT_SESSIONS: &str = "[session]\nidle_timeout = \"2s\"\n";

/// `POST /api/backends/{route}/{verb}`.
async fn action(gate: &Gate, route: &str, verb: &str) -> Resp {
    admin_post(gate, &format!("/api/backends/{route}/{verb}")).await
}

/// `n` new sessions; the cookies of those that landed on `route`.
async fn sessions_on(c: &HttpClient, gate: &Gate, n: usize, route: &str) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (r, id) = new_session(c, gate).await;
        if r == route {
            out.push(id);
        }
    }
    assert!(!out.is_empty(), "none of {n} new sessions reached {route}");
    out
}

/// Two demo nodes and a gate in front of them (plus `extra` sections).
fn two_nodes(extra: &str) -> (Backend, Backend, Gate) {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start(&format!("{STEADY_HEALTH}{extra}{}{}", b1.toml(), b2.toml()));
    (b1, b2, gate)
}

// ---------------------------------------------------------------------------
// 1. The four actions through the API.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn drain_keeps_existing_sessions_until_they_expire() {
    let (_b1, _b2, gate) = two_nodes(SHORT_SESSIONS);
    let c = client();
    let on1 = sessions_on(&c, &gate, 4, "tomcat1").await;

    let r = action(&gate, "tomcat1", "drain").await;
    assert_eq!(r.status, 200, "drain: {:?}", r.body);
    let b = r.json();
    assert_eq!(b["route"], "tomcat1");
    assert_eq!(b["state"], "draining");
    assert_eq!(
        b["sessions_remaining"],
        on1.len() as u64,
        "sessions_remaining must count tomcat1's sessions: {b}"
    );
    assert_eq!(b["drained"], false);

    // Its existing sessions still reach it (and keep their state there).
    for id in &on1 {
        let r = hit(&c, &gate, Some(id)).await;
        assert_eq!(
            route_of(&r),
            "tomcat1",
            "existing session left the draining node"
        );
        assert_eq!(hits_of(&r), 2);
    }
    // New sessions avoid it while another node is active.
    for i in 0..10 {
        let (route, _) = new_session(&c, &gate).await;
        assert_eq!(
            route, "tomcat2",
            "new session {i} reached the draining node"
        );
    }
    let last_touch = Instant::now();

    // Once its sessions expire (idle 2 s) it reports drained.
    let deadline = last_touch + Duration::from_secs(10);
    loop {
        let s = gate.backend_status("tomcat1").await;
        if s["drained"] == true {
            assert_eq!(s["sessions_remaining"], 0, "{s}");
            assert_eq!(s["state"], "draining", "{s}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tomcat1 never drained after its sessions idled out: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "drain: {} sessions on tomcat1, drained {:.1}s after their last request (idle_timeout 2s)",
        on1.len(),
        last_touch.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn disable_serves_only_own_sessions_and_enable_restores() {
    let (_b1, _b2, gate) = two_nodes("");
    let c = client();
    let on1 = sessions_on(&c, &gate, 4, "tomcat1").await;

    let r = action(&gate, "tomcat1", "disable").await;
    assert_eq!(r.status, 200, "disable: {:?}", r.body);
    assert_eq!(r.json()["state"], "disabled");
    assert_eq!(r.json()["sessions_remaining"], on1.len() as u64);

    for id in &on1 {
        for n in 2..=3 {
            let r = hit(&c, &gate, Some(id)).await;
            assert_eq!(
                route_of(&r),
                "tomcat1",
                "own session left the disabled node"
            );
            assert_eq!(hits_of(&r), n);
        }
    }
    for i in 0..10 {
        let (route, _) = new_session(&c, &gate).await;
        assert_eq!(
            route, "tomcat2",
            "new session {i} reached the disabled node"
        );
    }

    let r = action(&gate, "tomcat1", "enable").await;
    assert_eq!(r.status, 200, "enable: {:?}", r.body);
    let b = r.json();
    assert_eq!(b["state"], "active");
    assert!(b["sessions_remaining"].is_null(), "{b}");
    assert_eq!(b["drained"], false);
    let back = new_sessions_on(&c, &gate, 10, "tomcat1").await;
    assert!(
        back >= 3,
        "only {back} of 10 new sessions reached the re-enabled node"
    );
}

#[tokio::test]
async fn stop_fails_sessions_over_at_once_and_enable_restores() {
    // Nodes sharing sessions (like a Tomcat cluster with replication), so
    // the heir continues the session and reissues the cookie with its route.
    let redis = Redis::start();
    let url = redis.url();
    let b1 = Backend::start("tomcat1", &["--redis", &url]);
    let b2 = Backend::start("tomcat2", &["--redis", &url]);
    let gate = Gate::start(&format!("{STEADY_HEALTH}{}{}", b1.toml(), b2.toml()));
    let c = client();
    let id = sessions_on(&c, &gate, 2, "tomcat1").await.remove(0);
    let base = id
        .strip_suffix(".tomcat1")
        .expect("route suffix")
        .to_owned();
    let r = hit(&c, &gate, Some(&id)).await;
    assert_eq!((route_of(&r).as_str(), hits_of(&r)), ("tomcat1", 2));
    let before = gate.backend_status("tomcat1").await["requests"].clone();

    let r = action(&gate, "tomcat1", "stop").await;
    assert_eq!(r.status, 200, "stop: {:?}", r.body);
    assert_eq!(r.json()["state"], "stopped");

    // The very next request of its session is served by the other node,
    // with the same base id and the cookie rewritten to the heir's route.
    let r = hit(&c, &gate, Some(&id)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        route_of(&r),
        "tomcat2",
        "stopped node still served its session"
    );
    assert_eq!(r.json()["session"], base, "the session changed its base id");
    assert_eq!(hits_of(&r), 3, "the session's state was lost");
    let moved = r
        .set_cookie("JSESSIONID")
        .expect("cookie rewritten to the heir");
    assert_eq!(moved, format!("{base}.tomcat2"));
    for n in 4..=6 {
        let r = hit(&c, &gate, Some(&moved)).await;
        assert_eq!((route_of(&r).as_str(), hits_of(&r)), ("tomcat2", n));
    }
    let r = hit(&c, &gate, Some(&id)).await;
    assert_eq!(
        route_of(&r),
        "tomcat2",
        "the old cookie must not reach the stopped node"
    );
    for i in 0..6 {
        let (route, _) = new_session(&c, &gate).await;
        assert_eq!(route, "tomcat2", "new session {i} reached the stopped node");
    }
    let after = gate.backend_status("tomcat1").await;
    assert_eq!(
        after["requests"], before,
        "a request reached the stopped node: {after}"
    );

    let r = action(&gate, "tomcat1", "enable").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "active");
    let back = new_sessions_on(&c, &gate, 10, "tomcat1").await;
    assert!(
        back >= 3,
        "only {back} of 10 new sessions reached the re-enabled node"
    );
}

#[tokio::test]
async fn bad_action_requests() {
    let (_b1, _b2, gate) = two_nodes("");
    let r = action(&gate, "nosuch", "drain").await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    let msg = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("nosuch") && msg.contains("tomcat1") && msg.contains("tomcat2"),
        "404 must name the route and the configured ones: {msg}"
    );

    let r = action(&gate, "tomcat1", "explode").await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let msg = r.json()["error"].as_str().unwrap().to_owned();
    assert!(msg.contains("explode") && msg.contains("drain"), "{msg}");

    let r = admin_get(&gate, "/api/backends/tomcat1/drain").await;
    assert_eq!(r.status, 405, "GET on an action: {:?}", r.body);

    for route in ["tomcat1", "tomcat2"] {
        assert_eq!(gate.backend_status(route).await["state"], "active");
    }
}

// ---------------------------------------------------------------------------
// 2. stickgate ctl, the real binary.
// ---------------------------------------------------------------------------

/// What a finished `stickgate ctl` run said.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `stickgate ctl --admin <admin> args...` with `STICKGATE_ADMIN_TOKEN`
/// unset unless given in `env`; killed after 40 s.
fn ctl(admin: &str, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(stickgate_bin());
    cmd.args(["ctl", "--admin", admin])
        .args(args)
        .env_remove("STICKGATE_ADMIN_TOKEN")
        .env("STICKGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run stickgate ctl");
    let end = Instant::now() + Duration::from_secs(40);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stickgate ctl {args:?} did not finish within 40 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Exit 1 with exactly one line on stderr and nothing on stdout.
fn assert_one_line_failure(o: &Out, what: &str) {
    assert_eq!(
        o.code, 1,
        "{what}: exit {} {}{}",
        o.code, o.stdout, o.stderr
    );
    assert_eq!(
        o.stderr.trim_end().lines().count(),
        1,
        "{what}: not one line: {:?}",
        o.stderr
    );
    assert!(o.stdout.is_empty(), "{what}: stdout {:?}", o.stdout);
}

#[tokio::test]
async fn ctl_actions_status_and_errors() {
    let (_b1, _b2, gate) = two_nodes("");
    let c = client();
    let n = sessions_on(&c, &gate, 4, "tomcat1").await.len();
    let admin = admin_url(&gate, "");

    let o = ctl(&admin, &["drain", "tomcat1"], &[]);
    assert_eq!(o.code, 0, "ctl drain: {}{}", o.stdout, o.stderr);
    assert_eq!(
        o.stdout,
        format!("tomcat1: draining ({n} sessions remaining)\n")
    );
    assert_eq!(gate.backend_status("tomcat1").await["state"], "draining");

    let o = ctl(&admin, &["status"], &[]);
    assert_eq!(o.code, 0, "ctl status: {}{}", o.stdout, o.stderr);
    println!("ctl status:\n{}", o.stdout);
    let row = |route: &str| {
        o.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(route))
            .unwrap_or_else(|| panic!("no row for {route} in\n{}", o.stdout))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert!(o.stdout.starts_with("ROUTE"), "no header:\n{}", o.stdout);
    assert_eq!(row("tomcat1")[1], "draining");
    assert_eq!(row("tomcat2")[1], "active");
    assert_eq!(row("tomcat1")[2], "up");

    let o = ctl(&admin, &["status", "--json"], &[]);
    assert_eq!(o.code, 0, "ctl status --json: {}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout)
        .unwrap_or_else(|e| panic!("ctl status --json is not JSON ({e}): {}", o.stdout));
    let routes: Vec<&str> = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["route"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["tomcat1", "tomcat2"]);

    for (verb, state) in [("disable", "disabled"), ("stop", "stopped")] {
        let o = ctl(&admin, &[verb, "tomcat2"], &[]);
        assert_eq!(o.code, 0, "ctl {verb}: {}", o.stderr);
        assert!(
            o.stdout.starts_with(&format!("tomcat2: {state}")),
            "{}",
            o.stdout
        );
    }
    let o = ctl(&admin, &["enable", "tomcat2"], &[]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "tomcat2: active\n"),
        "{}",
        o.stderr
    );

    let o = ctl(&admin, &["stop", "nosuch"], &[]);
    assert_one_line_failure(&o, "ctl stop nosuch");
    assert!(o.stderr.contains("nosuch"), "{}", o.stderr);
    assert_eq!(gate.backend_status("tomcat2").await["state"], "active");

    let closed = format!("http://127.0.0.1:{}", free_port());
    let o = ctl(&closed, &["status"], &[]);
    assert_one_line_failure(&o, "ctl against a closed port");
    assert_eq!(
        o.stderr.matches("os error").count(),
        1,
        "the cause is printed twice: {}",
        o.stderr
    );
    println!("ctl against a closed port: {}", o.stderr.trim_end());
}

// ---------------------------------------------------------------------------
// 3. The admin token.
// ---------------------------------------------------------------------------

const TOKEN: &str = "Zq3xR8vT1mK5pL9wN2bH7cY4dF6gJ0sA";

/// Write `text` to `dir/name` with `mode`.
fn write_mode(dir: &std::path::Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// GET `path` on the admin listener with extra headers.
async fn admin_get_with(gate: &Gate, path: &str, headers: &[(&str, &str)]) -> Resp {
    request_with(
        &client(),
        "GET",
        &admin_url(gate, path),
        headers,
        Bytes::new(),
    )
    .await
}

#[tokio::test]
async fn token_is_required_when_configured() {
    let dir = tempdir();
    let token_file = write_mode(&dir, "admin.token", &format!("{TOKEN}\n"), 0o600);
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    // The body continues the [admin] section Gate::start opened.
    let gate = Gate::start(&format!(
        "token_file = \"{}\"\n{STEADY_HEALTH}{}{}",
        token_file.display(),
        b1.toml(),
        b2.toml()
    ));

    for path in ["/api/status", "/metrics", "/"] {
        let r = admin_get(&gate, path).await;
        assert_eq!(r.status, 401, "{path} without a token: {:?}", r.body);
        let challenge = r
            .headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap());
        assert!(
            challenge.is_some_and(|v| v.starts_with("Basic")),
            "401 without WWW-Authenticate: Basic: {:?}",
            r.headers
        );
    }
    let r = admin_post(&gate, "/api/backends/tomcat1/drain").await;
    assert_eq!(r.status, 401, "an action without a token");

    let wrong = format!("Bearer {}", TOKEN.to_lowercase());
    let r = admin_get_with(&gate, "/api/status", &[("authorization", &wrong)]).await;
    assert_eq!(r.status, 401, "wrong token");
    let r = admin_get_with(&gate, "/api/status", &[("authorization", "Bearer ")]).await;
    assert_eq!(r.status, 401, "empty token");

    let bearer = format!("Bearer {TOKEN}");
    let r = admin_get_with(&gate, "/api/status", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "Bearer: {:?}", r.body);
    assert_eq!(r.json()["backends"].as_array().unwrap().len(), 2);

    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("anything:{TOKEN}"))
    );
    let r = admin_get_with(&gate, "/", &[("authorization", &basic)]).await;
    assert_eq!(r.status, 200, "Basic with the token as password");
    let bad_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN}:nope"))
    );
    let r = admin_get_with(&gate, "/", &[("authorization", &bad_basic)]).await;
    assert_eq!(r.status, 401, "the token as user name is not the password");

    let r = request_with(
        &client(),
        "POST",
        &admin_url(&gate, "/api/backends/tomcat1/drain"),
        &[("authorization", &bearer)],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "action with the token: {:?}", r.body);
    assert_eq!(r.json()["state"], "draining");

    let admin = admin_url(&gate, "");
    let tf = token_file.to_str().unwrap();
    let o = ctl(&admin, &["--token-file", tf, "enable", "tomcat1"], &[]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "tomcat1: active\n"),
        "{}",
        o.stderr
    );
    let o = ctl(&admin, &["status"], &[("STICKGATE_ADMIN_TOKEN", TOKEN)]);
    assert_eq!(o.code, 0, "ctl with STICKGATE_ADMIN_TOKEN: {}", o.stderr);
    assert!(o.stdout.contains("tomcat1"), "{}", o.stdout);
    let o = ctl(&admin, &["status"], &[]);
    assert_one_line_failure(&o, "ctl without a token");
    assert!(o.stderr.contains("token"), "{}", o.stderr);
    let o = ctl(
        &admin,
        &["status"],
        &[("STICKGATE_ADMIN_TOKEN", "not-the-token-at-all")],
    );
    assert_one_line_failure(&o, "ctl with a wrong token");
}

/// `POST /reload` with `auth` as the Authorization header.
async fn reload_with(gate: &Gate, auth: &str) -> Resp {
    request_with(
        &client(),
        "POST",
        &admin_url(gate, "/reload"),
        &[("authorization", auth)],
        Bytes::new(),
    )
    .await
}

#[tokio::test]
async fn reload_rotates_the_token_but_keeps_it_while_the_listener_stays() {
    let dir = tempdir();
    let token_file = write_mode(&dir, "admin.token", TOKEN, 0o600);
    let b1 = Backend::start("tomcat1", &[]);
    let gate = Gate::start(&format!(
        "token_file = \"{}\"\n{STEADY_HEALTH}{}",
        token_file.display(),
        b1.toml()
    ));
    let (old, new) = (
        format!("Bearer {TOKEN}"),
        format!("Bearer {}", TOKEN.to_lowercase()),
    );
    let status_with = |auth: String| {
        let gate = &gate;
        async move {
            admin_get_with(gate, "/api/status", &[("authorization", &auth)])
                .await
                .status
        }
    };

    // The operator writes a new token and reloads with the old one.
    std::fs::write(&token_file, TOKEN.to_lowercase()).unwrap();
    let r = reload_with(&gate, &old).await;
    assert_eq!(r.status, 200, "reload: {:?}", r.body);
    assert_eq!(r.json()["warnings"], serde_json::json!([]), "{:?}", r.body);
    assert_eq!(
        status_with(old.clone()).await,
        401,
        "old token still accepted"
    );
    assert_eq!(status_with(new.clone()).await, 200, "new token refused");

    // A new admin address (and no token there) cannot take effect without
    // a restart, so the running listener keeps its token too.
    let cfg = gate.dir.join("stickgate.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text
        .replace(
            &format!(":{}\"", gate.admin_port),
            &format!(":{}\"", free_port()),
        )
        .replace(&format!("token_file = \"{}\"", token_file.display()), "");
    std::fs::write(&cfg, text).unwrap();
    let r = reload_with(&gate, &new).await;
    assert_eq!(r.status, 200, "reload: {:?}", r.body);
    let warnings = r.json()["warnings"].to_string();
    assert!(warnings.contains("admin.listen changed"), "{warnings}");
    let r = admin_get(&gate, "/api/status").await;
    assert_eq!(
        r.status, 401,
        "the token was dropped from the running listener"
    );
    assert_eq!(status_with(new).await, 200);
}

/// `stickgate check --config <dir>/<name>` with `admin` as the [admin] body.
fn check(dir: &std::path::Path, name: &str, admin: &str) -> Out {
    let cfg = dir.join(name);
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\n\n[admin]\n{admin}\n{}",
            free_port(),
            dead_backend_toml("tomcat1", "")
        ),
    )
    .unwrap();
    let out = Command::new(stickgate_bin())
        .args(["check", "--config"])
        .arg(&cfg)
        .env("STICKGATE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run stickgate check");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn check_refuses_unsafe_admin_settings() {
    let dir = tempdir();
    let port = free_port();
    let good = write_mode(&dir, "good.token", TOKEN, 0o600);
    let open = write_mode(&dir, "open.token", TOKEN, 0o644);
    let short = write_mode(&dir, "short.token", "tooshort", 0o600);

    let o = check(
        &dir,
        "open.toml",
        &format!(
            "listen = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"",
            open.display()
        ),
    );
    assert_one_line_failure(&o, "world-readable token file");
    assert!(
        o.stderr.contains("admin.token_file") && o.stderr.contains("chmod"),
        "{}",
        o.stderr
    );

    let o = check(
        &dir,
        "short.toml",
        &format!(
            "listen = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"",
            short.display()
        ),
    );
    assert_one_line_failure(&o, "short token");
    assert!(o.stderr.contains("admin.token_file"), "{}", o.stderr);

    let o = check(&dir, "public.toml", &format!("listen = \"0.0.0.0:{port}\""));
    assert_one_line_failure(&o, "non-loopback admin without a token");
    assert!(o.stderr.contains("admin.listen"), "{}", o.stderr);

    let o = check(
        &dir,
        "public-token.toml",
        &format!(
            "listen = \"0.0.0.0:{port}\"\ntoken_file = \"{}\"",
            good.display()
        ),
    );
    assert_eq!(o.code, 0, "non-loopback admin with a token: {}", o.stderr);
    assert!(o.stdout.contains(": ok"), "{}", o.stdout);
}

// ---------------------------------------------------------------------------
// 4. Cross-site and DNS-rebinding guards.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cross_site_and_rebinding_guards() {
    let (_b1, _b2, gate) = two_nodes("");
    let post = |origin: String| {
        let url = admin_url(&gate, "/api/backends/tomcat1/drain");
        async move {
            request_with(
                &client(),
                "POST",
                &url,
                &[("origin", &origin)],
                Bytes::new(),
            )
            .await
        }
    };
    let r = post("http://evil.example".into()).await;
    assert_eq!(r.status, 403, "cross-site POST: {:?}", r.body);
    assert_eq!(gate.backend_status("tomcat1").await["state"], "active");
    let r = request_with(
        &client(),
        "POST",
        &admin_url(&gate, "/reload"),
        &[("origin", "http://evil.example")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 403, "cross-site reload");
    assert_eq!(gate.status().await["reloads"]["ok"], 0);

    let r = post(format!("http://127.0.0.1:{}", gate.admin_port)).await;
    assert_eq!(r.status, 200, "same-origin POST: {:?}", r.body);
    assert_eq!(r.json()["state"], "draining");

    let evil = format!("evil.example:{}", gate.admin_port);
    let r = admin_get_with(&gate, "/api/status", &[("host", &evil)]).await;
    assert_eq!(r.status, 403, "DNS-rebound Host: {:?}", r.body);
    let r = admin_get_with(&gate, "/", &[("host", &evil)]).await;
    assert_eq!(r.status, 403, "DNS-rebound Host on the page");
    let local = format!("localhost:{}", gate.admin_port);
    let r = admin_get_with(&gate, "/api/status", &[("host", &local)]).await;
    assert_eq!(r.status, 200, "Host localhost");
}

// ---------------------------------------------------------------------------
// 5. /metrics through a real OpenMetrics parser.
// ---------------------------------------------------------------------------

/// A Python with `prometheus_client` (the pyenv `python3` on PATH may lack
/// Debian's package, which lives in /usr/bin/python3).
fn python_with_prometheus() -> String {
    for py in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(py)
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return py.to_owned();
        }
    }
    panic!("no python3 with prometheus_client: `apt-get install python3-prometheus-client`");
}

const PARSE_OPENMETRICS: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "samples": [
        {"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;

/// Parse `text` with prometheus_client's OpenMetrics parser: one JSON
/// object per family with `name`, `type` and `samples`.
fn parse_openmetrics(text: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new(python_with_prometheus())
        .args(["-c", PARSE_OPENMETRICS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn metrics_parse_as_openmetrics() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start(&format!(
        "{STEADY_HEALTH}{}{}{}",
        b1.toml(),
        b2.toml(),
        dead_backend_toml("tomcat3", "")
    ));
    gate.wait_health("tomcat3", "down").await;
    let c = client();
    let mut made = 0u64;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(new_session(&c, &gate).await.1);
        made += 1;
    }
    for id in &ids {
        for _ in 0..2 {
            assert_eq!(hit(&c, &gate, Some(id)).await.status, 200);
            made += 1;
        }
    }
    // One failover: a session of the dead node.
    let r = hit(&c, &gate, Some("ORPHAN0123456789.tomcat3")).await;
    assert_eq!(r.status, 200);
    made += 1;

    let r = admin_get(&gate, "/metrics").await;
    assert_eq!(r.status, 200);
    let ct = r.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    let families = parse_openmetrics(&text);
    println!(
        "metrics: {} families parsed by prometheus_client",
        families.len()
    );

    let family = |name: &str, kind: &str| -> Vec<serde_json::Value> {
        let f = families
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no family {name} in\n{text}"));
        assert_eq!(f["type"], kind, "{name}");
        f["samples"].as_array().unwrap().clone()
    };
    let value = |s: &serde_json::Value| s["value"].as_f64().unwrap();
    let of = |samples: &[serde_json::Value], name: &str, labels: &[(&str, &str)]| -> f64 {
        let hit: Vec<&serde_json::Value> = samples
            .iter()
            .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
            .collect();
        assert_eq!(hit.len(), 1, "{name} {labels:?}: {hit:?}");
        value(hit[0])
    };

    let responses = family("stickgate_backend_responses", "counter");
    let mut ok = 0.0;
    for route in ["tomcat1", "tomcat2", "tomcat3"] {
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            let n = of(
                &responses,
                "stickgate_backend_responses_total",
                &[("route", route), ("class", class)],
            );
            if class == "2xx" {
                ok += n;
            } else {
                assert_eq!(n, 0.0, "{route} {class}");
            }
        }
    }
    assert_eq!(ok, made as f64, "2xx answers counted vs requests made");
    assert_eq!(
        of(
            &responses,
            "stickgate_backend_responses_total",
            &[("route", "tomcat3"), ("class", "2xx")]
        ),
        0.0
    );

    let hist = family("stickgate_backend_response_seconds", "histogram");
    let mut counted = 0.0;
    for route in ["tomcat1", "tomcat2", "tomcat3"] {
        let mut buckets: Vec<(f64, f64)> = hist
            .iter()
            .filter(|s| {
                s["name"] == "stickgate_backend_response_seconds_bucket"
                    && s["labels"]["route"] == route
            })
            .map(|s| {
                let le = s["labels"]["le"].as_str().unwrap();
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (bound, value(s))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() >= 2, "{route}: buckets {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{route}: buckets not cumulative: {buckets:?}"
        );
        let inf = buckets.last().unwrap();
        assert!(inf.0.is_infinite(), "{route}: no +Inf bucket");
        let count = of(
            &hist,
            "stickgate_backend_response_seconds_count",
            &[("route", route)],
        );
        let sum = of(
            &hist,
            "stickgate_backend_response_seconds_sum",
            &[("route", route)],
        );
        assert_eq!(inf.1, count, "{route}: +Inf bucket != count");
        assert!(
            sum >= 0.0 && (count == 0.0) == (sum == 0.0),
            "{route}: sum {sum} count {count}"
        );
        counted += count;
    }
    assert_eq!(counted, made as f64, "histogram counts vs requests made");

    let sessions = family("stickgate_backend_sessions", "gauge");
    let on = |route| of(&sessions, "stickgate_backend_sessions", &[("route", route)]);
    assert_eq!(on("tomcat3"), 0.0);
    assert!(
        on("tomcat1") + on("tomcat2") >= ids.len() as f64,
        "{sessions:?}"
    );

    let failovers = family("stickgate_failovers", "counter");
    assert_eq!(of(&failovers, "stickgate_failovers_total", &[]), 1.0);
    let retries = family("stickgate_retries", "counter");
    let retried = of(&retries, "stickgate_retries_total", &[]);
    // tomcat3 was down before the first request, so nothing was ever
    // attempted there: the failover picked the heir at once, no retry.
    assert_eq!(retried, 0.0, "retries");

    let transitions = family("stickgate_backend_health_transitions", "counter");
    let t = |route| {
        of(
            &transitions,
            "stickgate_backend_health_transitions_total",
            &[("route", route)],
        )
    };
    assert!(t("tomcat3") >= 1.0, "tomcat3 went down: {transitions:?}");
    assert_eq!((t("tomcat1"), t("tomcat2")), (0.0, 0.0));

    let errors = family("stickgate_store_errors", "counter");
    assert_eq!(
        of(
            &errors,
            "stickgate_store_errors_total",
            &[("kind", "memory")]
        ),
        0.0
    );
    let peers = family("stickgate_store_peers", "gauge");
    assert_eq!(
        of(&peers, "stickgate_store_peers", &[("kind", "memory")]),
        0.0
    );
    println!(
        "metrics: {made} requests, 2xx {ok}, failovers 1, retries {retried}, tomcat3 transitions {}",
        t("tomcat3")
    );
}

// ---------------------------------------------------------------------------
// 6. Access log.
// ---------------------------------------------------------------------------

/// The file's lines once it has `n` (bounded wait), checking no more come.
async fn log_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let read = || {
        std::fs::read_to_string(path)
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
    assert_eq!(
        lines.len(),
        n,
        "one line per request expected:\n{}",
        lines.join("\n")
    );
    lines
}

#[tokio::test]
async fn access_log_combined_hashes_session_ids() {
    let dir = tempdir();
    let path = dir.join("access.log");
    let (_b1, _b2, gate) = two_nodes(&format!("[log]\naccess_log = \"{}\"\n", path.display()));
    let c = client();
    let (route, id) = new_session(&c, &gate).await;
    let base = id.split('.').next().unwrap().to_owned();
    for _ in 0..2 {
        assert_eq!(route_of(&hit(&c, &gate, Some(&id)).await), route);
    }
    let r = request(
        &c,
        "GET",
        &gate.url(&format!("/;jsessionid={id}?x=1")),
        None,
        Bytes::new(),
    )
    .await;
    assert_eq!(route_of(&r), route, "path parameter session");

    let lines = log_lines(&path, 4).await;
    println!("access log (combined):\n{}", lines.join("\n"));
    for (i, l) in lines.iter().enumerate() {
        assert!(l.starts_with("127.0.0.1 - - ["), "{l}");
        assert!(l.contains("\" 200 "), "{l}");
        assert!(l.contains(&format!("route={route} ")), "{l}");
        assert!(l.contains(" reason="), "{l}");
        assert!(!l.contains(&base), "raw session id in the access log: {l}");
        if i == 0 {
            assert!(l.contains("reason=new session=-"), "{l}");
        } else {
            assert!(l.contains("reason=sticky session=sid#"), "{l}");
        }
    }
    assert!(lines[3].contains("\"GET /;jsessionid=sid#"), "{}", lines[3]);
    assert!(lines[3].contains("?x=1 HTTP/1.1\""), "{}", lines[3]);
    // The same session hashes to the same value on every line.
    let hash = |l: &str| {
        l.split("session=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(hash(&lines[1]), hash(&lines[3]));
}

#[tokio::test]
async fn access_log_json_lines() {
    let dir = tempdir();
    let path = dir.join("access.json");
    let (_b1, _b2, gate) = two_nodes(&format!(
        "[log]\naccess_log = \"{}\"\naccess_log_format = \"json\"\n",
        path.display()
    ));
    let c = client();
    let (route, id) = new_session(&c, &gate).await;
    let base = id.split('.').next().unwrap().to_owned();
    assert_eq!(route_of(&hit(&c, &gate, Some(&id)).await), route);
    let r = request(
        &c,
        "GET",
        &gate.url(&format!("/;jsessionid={id}")),
        None,
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200);

    let lines = log_lines(&path, 3).await;
    for (i, l) in lines.iter().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert_eq!(v["status"], 200, "{l}");
        assert_eq!(v["route"], route.as_str(), "{l}");
        assert_eq!(v["method"], "GET", "{l}");
        assert!(!l.contains(&base), "raw session id in the access log: {l}");
        if i > 0 {
            assert!(v["session"].as_str().unwrap().starts_with("sid#"), "{l}");
            assert_eq!(v["reason"], "sticky", "{l}");
        }
    }
    println!("access log (json): {}", lines[2]);
}

// ---------------------------------------------------------------------------
// 7. Status page.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn status_page_is_served() {
    let (_b1, _b2, gate) = two_nodes("");
    let r = admin_get(&gate, "/").await;
    assert_eq!(r.status, 200);
    let ct = r.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("text/html"), "{ct}");
    let csp = r
        .headers
        .get("content-security-policy")
        .expect("Content-Security-Policy header")
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src"), "{csp}");
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("stickgate"), "page without the name");
}

// ---------------------------------------------------------------------------
// 8. States replicated through Redis.
// ---------------------------------------------------------------------------

/// Wait until `gate` shows `route` in `state`; the delay.
async fn wait_state(gate: &Gate, route: &str, state: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let s = gate.backend_status(route).await;
        if s["state"] == state {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{route} never became {state} within {limit:?}: {s}\n{}",
            gate.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn state_changes_replicate_through_redis() {
    let redis = Redis::start();
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let cfg = format!(
        "{STEADY_HEALTH}[store]\nkind = \"redis\"\nredis_url = \"{}\"\n{}{}",
        redis.url(),
        b1.toml(),
        b2.toml()
    );
    let a = Gate::start(&cfg);
    let b = Gate::start(&cfg);
    for g in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while g.status().await["store"]["healthy"] != true {
            assert!(
                Instant::now() < deadline,
                "store never healthy: {}",
                g.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let r = action(&a, "tomcat1", "drain").await;
    assert_eq!(r.status, 200);
    let drain = wait_state(&b, "tomcat1", "draining", Duration::from_secs(5)).await;
    let r = action(&b, "tomcat1", "enable").await;
    assert_eq!(r.status, 200);
    let enable = wait_state(&a, "tomcat1", "active", Duration::from_secs(5)).await;
    let r = action(&a, "tomcat2", "stop").await;
    assert_eq!(r.status, 200);
    let stop = wait_state(&b, "tomcat2", "stopped", Duration::from_secs(5)).await;
    println!(
        "redis state replication: drain A->B {} ms, enable B->A {} ms, stop A->B {} ms",
        drain.as_millis(),
        enable.as_millis(),
        stop.as_millis()
    );
    for (what, d) in [("drain", drain), ("enable", enable), ("stop", stop)] {
        assert!(
            d <= Duration::from_secs(2),
            "{what} took {d:?} to replicate"
        );
    }
    // The other node's view stays as set.
    assert_eq!(b.backend_status("tomcat1").await["state"], "active");
    assert_eq!(a.backend_status("tomcat2").await["state"], "stopped");
}
