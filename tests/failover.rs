//! Failover drills: a node dies (SIGKILL), is drained, disabled, stopped or never
//! came up; its sessions must land on the right heir with the right cookie,
//! and never flap back.
mod common;
use bytes::Bytes;
use common::*;
use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// A tiny in-test backend that never sets a session cookie on its own.
// ---------------------------------------------------------------------------

/// Cookie the tiny backend sets on `/login`, to teach the balancer its
/// cookie attributes.
const LOGIN_COOKIE_ATTRS: &str = "Path=/app; Secure; HttpOnly; SameSite=Lax";

/// A hyper server on its own thread and runtime: `GET /health` -> 200 `ok`,
/// `/login` -> 200 with `Set-Cookie: JSESSIONID=NEW.<route>; <attrs>`,
/// anything else -> 200 `{"route":"<route>"}` without any Set-Cookie.
/// Stopping it drops the runtime, which closes the listener and every open
/// connection, like a crash.
struct Tiny {
    route: String,
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tiny {
    fn start(route: &str) -> Tiny {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let name = route.to_owned();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let name = name.clone();
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| {
                                    let name = name.clone();
                                    async move { Ok::<_, Infallible>(tiny_answer(&name, &req)) }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                        _ = &mut rx => break,
                    }
                }
            });
            // Dropping `rt` here aborts every connection task.
        });
        Tiny {
            route: route.to_owned(),
            port,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Crash it: listener and connections close.
    fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn toml(&self) -> String {
        format!(
            "[[backend]]\nroute = \"{}\"\nurl = \"http://127.0.0.1:{}\"\n",
            self.route, self.port
        )
    }
}

impl Drop for Tiny {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tiny_answer(
    route: &str,
    req: &http::Request<hyper::body::Incoming>,
) -> http::Response<http_body_util::Full<Bytes>> {
    let mut b = http::Response::builder().status(200);
    let body = match req.uri().path() {
        "/health" => "ok".to_owned(),
        path => {
            if path == "/login" {
                b = b.header(
                    "set-cookie",
                    format!("JSESSIONID=NEW.{route}; {LOGIN_COOKIE_ATTRS}"),
                );
            }
            b = b.header("content-type", "application/json");
            format!("{{\"route\":\"{route}\"}}")
        }
    };
    b.body(http_body_util::Full::new(Bytes::from(body)))
        .unwrap()
}

/// The attributes of the Set-Cookie header for cookie `name`, lower-cased,
/// name=value first.
fn cookie_line(r: &Resp, name: &str) -> Vec<String> {
    let line = r
        .set_cookies()
        .into_iter()
        .find(|c| c.trim_start().starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no Set-Cookie {name}: {:?}", r.headers));
    line.split(';').map(|p| p.trim().to_owned()).collect()
}

fn has_attr(parts: &[String], attr: &str) -> bool {
    parts[1..].iter().any(|p| p.eq_ignore_ascii_case(attr))
}

// ---------------------------------------------------------------------------
// Shared steps.
// ---------------------------------------------------------------------------

fn base_of(id: &str) -> &str {
    id.split('.').next().unwrap()
}

/// New sessions through the gate, grouped by route, until `want` routes
/// each hold `per_route` sessions.
async fn sessions_by_route(
    gate: &Gate,
    want: &[&str],
    per_route: usize,
) -> HashMap<String, Vec<String>> {
    let c = client();
    let mut by: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..40 {
        let r = get_path(&c, gate, "/", None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let route = r.json()["route"].as_str().unwrap().to_owned();
        by.entry(route)
            .or_default()
            .push(r.set_cookie("JSESSIONID").expect("new session cookie"));
        if want
            .iter()
            .all(|w| by.get(*w).is_some_and(|v| v.len() >= per_route))
        {
            return by;
        }
    }
    panic!("40 new sessions did not fill {want:?}: {by:?}");
}

/// Replicated pair: redis, two demo nodes sharing it, a gate, and one
/// session with two hits. Returns (redis, nodes, gate, session route, id).
async fn replicated_session() -> (Redis, Vec<Backend>, Gate, String, String) {
    let redis = Redis::start();
    let url = redis.url();
    let b1 = Backend::start("tomcat1", &["--redis", &url]);
    let b2 = Backend::start("tomcat2", &["--redis", &url]);
    let gate = Gate::start(&format!("{FAST_HEALTH}{}{}", b1.toml(), b2.toml()));
    let c = client();
    let first = get_path(&c, &gate, "/", None).await;
    assert_eq!(first.status, 200);
    let id = first.set_cookie("JSESSIONID").expect("session cookie");
    let route = first.json()["route"].as_str().unwrap().to_owned();
    assert_eq!(id, format!("{}.{route}", base_of(&id)));
    let again = get_path(&c, &gate, "/", Some(&id)).await;
    assert_eq!(again.json()["route"], route.as_str());
    assert_eq!(again.json()["hits"], 2);
    (redis, vec![b1, b2], gate, route, id)
}

fn other(route: &str) -> &'static str {
    if route == "tomcat1" {
        "tomcat2"
    } else {
        "tomcat1"
    }
}

// ---------------------------------------------------------------------------
// Drills.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn replicated_failover_keeps_session_and_renames_cookie() {
    let (_redis, mut nodes, gate, old_route, id) = replicated_session().await;
    let base = base_of(&id).to_owned();
    let new_route = other(&old_route);
    nodes
        .iter_mut()
        .find(|b| b.route == old_route)
        .unwrap()
        .proc
        .kill();

    // Straight after the crash, before any health check had to notice.
    let c = client();
    let t = Instant::now();
    let r = get_path(&c, &gate, "/", Some(&id)).await;
    assert_eq!(r.status, 200, "failover request: {:?}", r.body);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let j = r.json();
    assert_eq!(j["route"], new_route);
    assert_eq!(
        j["session"],
        base.as_str(),
        "replicated session kept its id"
    );
    assert_eq!(j["hits"], 3, "replicated session state continued");
    assert_eq!(
        r.set_cookie("JSESSIONID").as_deref(),
        Some(format!("{base}.{new_route}").as_str()),
        "client must learn the new route"
    );

    let new_id = format!("{base}.{new_route}");
    for n in 4..=7 {
        let r = get_path(&c, &gate, "/", Some(&new_id)).await;
        assert_eq!(r.json()["route"], new_route);
        assert_eq!(r.json()["hits"], n);
    }
    assert!(
        gate.backend_status(new_route).await["failovers_in"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

#[tokio::test]
async fn no_flap_back_when_the_dead_node_returns() {
    let (redis, mut nodes, gate, old_route, id) = replicated_session().await;
    let base = base_of(&id).to_owned();
    let new_route = other(&old_route);
    let dead = nodes.iter_mut().find(|b| b.route == old_route).unwrap();
    let port = dead.port;
    dead.proc.kill();

    let c = client();
    let r = get_path(&c, &gate, "/", Some(&id)).await;
    assert_eq!(r.json()["route"], new_route);
    assert_eq!(r.json()["hits"], 3);
    gate.wait_health(&old_route, "down").await;

    // The old node comes back on its port, with the same shared sessions.
    let _back = Backend::start_on(&old_route, port, &["--redis", &redis.url()]);
    gate.wait_health(&old_route, "up").await;

    let new_id = format!("{base}.{new_route}");
    let mut hits = 3;
    for round in 0..5 {
        for cookie in [&id, &new_id] {
            hits += 1;
            let r = get_path(&c, &gate, "/", Some(cookie)).await;
            assert_eq!(r.status, 200);
            assert_eq!(
                r.json()["route"],
                new_route,
                "round {round}: cookie {cookie} flapped back to the revived node"
            );
            assert_eq!(r.json()["hits"], hits);
            if cookie == &id {
                assert_eq!(
                    r.set_cookie("JSESSIONID").as_deref(),
                    Some(new_id.as_str()),
                    "stale cookie must be corrected"
                );
            }
        }
    }
}

#[tokio::test]
async fn balancer_writes_cookie_when_backend_sends_none() {
    let mut r1 = Tiny::start("r1");
    let r2 = Tiny::start("r2");
    let gate = Gate::start(&format!("{FAST_HEALTH}{}{}", r1.toml(), r2.toml()));
    let c = client();

    let r = get_path(&c, &gate, "/", Some("ABC.r1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["route"], "r1");
    assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());

    r1.stop();
    let r = get_path(&c, &gate, "/", Some("ABC.r1")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["route"], "r2");
    let parts = cookie_line(&r, "JSESSIONID");
    assert_eq!(parts[0], "JSESSIONID=ABC.r2", "{parts:?}");
    assert!(parts[1..].iter().any(|p| p == "Path=/"), "{parts:?}");
    assert!(has_attr(&parts, "HttpOnly"), "{parts:?}");
    assert!(
        !has_attr(&parts, "Secure"),
        "plain http: no Secure {parts:?}"
    );

    // The corrected cookie sticks without further rewriting.
    let r = get_path(&c, &gate, "/", Some("ABC.r2")).await;
    assert_eq!(r.json()["route"], "r2");
    assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
    // A client still sending the old value is served and corrected again.
    let r = get_path(&c, &gate, "/", Some("ABC.r1")).await;
    assert_eq!(r.json()["route"], "r2");
    assert_eq!(r.set_cookie("JSESSIONID").as_deref(), Some("ABC.r2"));
}

#[tokio::test]
async fn balancer_cookie_reuses_backend_cookie_attributes() {
    // r1 never started: nothing listens on its port.
    let r2 = Tiny::start("r2");
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}{}{}",
        dead_backend_toml("r1", ""),
        r2.toml()
    ));
    gate.wait_health("r1", "down").await;
    let c = client();

    let login = get_path(&c, &gate, "/login", None).await;
    assert_eq!(login.status, 200);
    assert_eq!(login.json()["route"], "r2");
    assert_eq!(login.set_cookie("JSESSIONID").as_deref(), Some("NEW.r2"));

    let r = get_path(&c, &gate, "/", Some("DEF.r1")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["route"], "r2");
    let parts = cookie_line(&r, "JSESSIONID");
    assert_eq!(parts[0], "JSESSIONID=DEF.r2", "{parts:?}");
    assert!(parts[1..].iter().any(|p| p == "Path=/app"), "{parts:?}");
    assert!(has_attr(&parts, "Secure"), "{parts:?}");
    assert!(has_attr(&parts, "HttpOnly"), "{parts:?}");
    assert!(
        parts[1..]
            .iter()
            .any(|p| p.eq_ignore_ascii_case("SameSite=Lax")),
        "{parts:?}"
    );
    assert!(
        !parts[1..].iter().any(|p| p == "Path=/"),
        "only one Path: {parts:?}"
    );
}

#[tokio::test]
async fn non_replicated_failover_issues_a_new_session() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let mut nodes = [b1, b2];
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}{}{}",
        nodes[0].toml(),
        nodes[1].toml()
    ));
    let c = client();
    let first = get_path(&c, &gate, "/", None).await;
    let id = first.set_cookie("JSESSIONID").unwrap();
    let old_route = first.json()["route"].as_str().unwrap().to_owned();
    let new_route = other(&old_route);
    let counts: HashMap<_, _> = gate.session_counts().await.into_iter().collect();
    assert_eq!(counts[&old_route], 1, "{counts:?}");
    assert_eq!(counts[new_route], 0, "{counts:?}");

    nodes
        .iter_mut()
        .find(|b| b.route == old_route)
        .unwrap()
        .proc
        .kill();
    let r = get_path(&c, &gate, "/", Some(&id)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["route"], new_route);
    assert_eq!(
        r.json()["hits"],
        1,
        "state was not replicated: fresh session"
    );
    let new_id = r.set_cookie("JSESSIONID").expect("new session cookie");
    assert_ne!(base_of(&new_id), base_of(&id), "a new session id");
    assert_eq!(new_id, format!("{}.{new_route}", base_of(&new_id)));

    let counts: HashMap<_, _> = gate.session_counts().await.into_iter().collect();
    assert_eq!(
        counts[&old_route], 0,
        "old session still counted: {counts:?}"
    );
    assert_eq!(counts[new_route], 1, "{counts:?}");
    assert_eq!(gate.status().await["store"]["sessions"], 1);

    let r = get_path(&c, &gate, "/", Some(&new_id)).await;
    assert_eq!(r.json()["route"], new_route);
    assert_eq!(r.json()["hits"], 2);
}

#[tokio::test]
async fn rewrite_request_sends_the_new_route_upstream() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let mut nodes = [b1, b2];
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}[session]\nrewrite_request = true\n{}{}",
        nodes[0].toml(),
        nodes[1].toml()
    ));
    let by = sessions_by_route(&gate, &["tomcat1"], 2).await;
    let (cookie_id, param_id) = (&by["tomcat1"][0], &by["tomcat1"][1]);
    nodes[0].proc.kill();
    let c = client();

    // Cookie form, among other cookies.
    let line = format!("a=1; JSESSIONID={cookie_id}; b=2");
    let r = request(&c, "GET", &gate.url("/headers"), Some(&line), Bytes::new()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["x-backend"], "tomcat2");
    let want = format!("{}.tomcat2", base_of(cookie_id));
    assert_eq!(
        r.json()["cookie"],
        format!("a=1; JSESSIONID={want}; b=2").as_str(),
        "backend must receive the rewritten cookie"
    );
    assert_eq!(r.set_cookie("JSESSIONID").as_deref(), Some(want.as_str()));

    // Path parameter form.
    let r = request(
        &c,
        "GET",
        &gate.url(&format!("/headers;jsessionid={param_id}?q=1")),
        None,
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["x-backend"], "tomcat2");
    assert_eq!(
        r.json()["_path"],
        format!("/headers;jsessionid={}.tomcat2?q=1", base_of(param_id)).as_str(),
        "backend must receive the rewritten path parameter"
    );
}

#[tokio::test]
async fn rewrite_request_also_rewrites_a_stale_cookie_after_failover() {
    // Browsers fire several requests with the old cookie while the first
    // failover answer is still on its way; each must reach the heir with
    // the rewritten id, not only the one that triggered the failover.
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let mut nodes = [b1, b2];
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}[session]\nrewrite_request = true\n{}{}",
        nodes[0].toml(),
        nodes[1].toml()
    ));
    let by = sessions_by_route(&gate, &["tomcat1"], 1).await;
    let id = &by["tomcat1"][0];
    nodes[0].proc.kill();
    let c = client();
    let want = format!("JSESSIONID={}.tomcat2", base_of(id));
    for attempt in 1..=3 {
        let r = get_path(&c, &gate, "/headers", Some(id)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["x-backend"], "tomcat2");
        assert_eq!(
            r.json()["cookie"],
            want.as_str(),
            "request {attempt} with the old cookie reached the heir unrewritten"
        );
    }
}

#[tokio::test]
async fn draining_node_keeps_its_sessions_but_takes_no_new_ones() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}{}{}",
        b1.toml(),
        b2.toml_with("state = \"draining\"")
    ));
    assert_eq!(gate.backend_status("tomcat2").await["state"], "draining");
    // A session that already lives on tomcat2 (made there directly).
    let direct = get(&format!("http://127.0.0.1:{}/", b2.port), None).await;
    let id = direct.set_cookie("JSESSIONID").unwrap();
    let c = client();
    for n in 2..=5 {
        let r = get_path(&c, &gate, "/", Some(&id)).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["route"],
            "tomcat2",
            "existing session left draining node"
        );
        assert_eq!(r.json()["hits"], n);
    }
    for i in 0..50 {
        let r = get_path(&c, &gate, "/", None).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["route"],
            "tomcat1",
            "new session {i} went to the draining node"
        );
    }
}

#[tokio::test]
async fn stopped_node_sessions_fail_over() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}{}{}",
        b1.toml(),
        b2.toml_with("state = \"stopped\"")
    ));
    assert_eq!(gate.backend_status("tomcat2").await["state"], "stopped");
    let direct = get(&format!("http://127.0.0.1:{}/", b2.port), None).await;
    let id = direct.set_cookie("JSESSIONID").unwrap();
    let c = client();
    let r = get_path(&c, &gate, "/", Some(&id)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["route"], "tomcat1", "stopped node still served");
    let new_id = r.set_cookie("JSESSIONID").expect("heir's session cookie");
    assert!(new_id.ends_with(".tomcat1"), "{new_id}");
    for _ in 0..10 {
        let r = get_path(&c, &gate, "/", None).await;
        assert_eq!(r.json()["route"], "tomcat1");
        let r = get_path(&c, &gate, "/", Some(&id)).await;
        assert_eq!(r.json()["route"], "tomcat1");
    }
    assert_eq!(
        gate.backend_status("tomcat2").await["requests"],
        0,
        "no request may reach a stopped node"
    );
}

#[tokio::test]
async fn disabled_node_serves_only_its_own_sessions() {
    // mod_jk's "disabled": sticky requests still reach it; new sessions and
    // other nodes' orphans never do, even when nothing else could take them.
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let mut nodes = [b1, b2];
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}{}{}",
        nodes[0].toml(),
        nodes[1].toml_with("state = \"disabled\"")
    ));
    assert_eq!(gate.backend_status("tomcat2").await["state"], "disabled");
    let direct = get(&format!("http://127.0.0.1:{}/", nodes[1].port), None).await;
    let own = direct.set_cookie("JSESSIONID").unwrap();
    let c = client();
    for n in 2..=4 {
        let r = get_path(&c, &gate, "/", Some(&own)).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["route"],
            "tomcat2",
            "own session left the disabled node"
        );
        assert_eq!(r.json()["hits"], n);
    }
    for i in 0..20 {
        let r = get_path(&c, &gate, "/", None).await;
        assert_eq!(
            r.json()["route"],
            "tomcat1",
            "new session {i} reached the disabled node"
        );
    }
    nodes[0].proc.kill();
    gate.wait_health("tomcat1", "down").await;
    let orphan = get_path(&c, &gate, "/", Some("ORPHAN1.tomcat1")).await;
    assert_eq!(
        orphan.status, 503,
        "an orphan must not be handed to a disabled node"
    );
    let fresh = get_path(&c, &gate, "/", None).await;
    assert_eq!(
        fresh.status, 503,
        "a new session must not go to a disabled node"
    );
    let r = get_path(&c, &gate, "/", Some(&own)).await;
    assert_eq!(r.json()["route"], "tomcat2", "own session still served");
    assert_eq!(r.json()["hits"], 5);
}

#[tokio::test]
async fn draining_node_is_the_last_resort_for_new_sessions() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let mut nodes = [b1, b2];
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}{}{}",
        nodes[0].toml(),
        nodes[1].toml_with("state = \"draining\"")
    ));
    nodes[0].proc.kill();
    gate.wait_health("tomcat1", "down").await;
    let c = client();
    let r = get_path(&c, &gate, "/", None).await;
    assert_eq!(
        r.status, 200,
        "a draining node keeps the site up when it is all there is"
    );
    assert_eq!(r.json()["route"], "tomcat2");
}

#[tokio::test]
async fn failover_prefers_the_same_domain() {
    let b2 = Backend::start("tomcat2", &[]);
    let b3 = Backend::start("tomcat3", &[]);
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}{}{}{}",
        dead_backend_toml("tomcat1", "domain = \"A\""),
        b2.toml_with("domain = \"A\""),
        b3.toml_with("domain = \"B\"")
    ));
    gate.wait_health("tomcat1", "down").await;
    let c = client();
    for n in 0..20 {
        let r = get_path(&c, &gate, "/", Some(&format!("S{n}.tomcat1"))).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["route"],
            "tomcat2",
            "session S{n}.tomcat1 left its domain"
        );
    }
}

#[tokio::test]
async fn idle_sessions_expire_from_the_counts() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}[session]\nidle_timeout = \"2s\"\n{}{}",
        b1.toml(),
        b2.toml()
    ));
    let c = client();
    for _ in 0..6 {
        assert_eq!(get_path(&c, &gate, "/", None).await.status, 200);
    }
    let last_request = Instant::now();
    let total = |v: &[(String, u64)]| v.iter().map(|(_, n)| n).sum::<u64>();
    let counts = gate.session_counts().await;
    assert_eq!(total(&counts), 6, "sessions counted: {counts:?}");

    let deadline = last_request + Duration::from_secs(8);
    let gone_after = loop {
        let counts = gate.session_counts().await;
        if total(&counts) == 0 {
            break last_request.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "sessions never expired: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        gone_after >= Duration::from_secs(1),
        "sessions dropped after only {gone_after:?} idle (timeout 2s)"
    );
    let st = gate.status().await;
    assert_eq!(st["store"]["sessions"], 0, "{st}");
    assert!(st["store"]["expired"].as_u64().unwrap() >= 6, "{st}");
}

#[tokio::test]
async fn sessions_are_not_expired_before_their_idle_timeout() {
    let b1 = Backend::start("tomcat1", &[]);
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}[session]\nidle_timeout = \"2s\"\n{}",
        b1.toml()
    ));
    let started = Instant::now();
    let c = client();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let r = get_path(&c, &gate, "/", None).await;
        ids.push(r.set_cookie("JSESSIONID").unwrap());
    }
    // Touch every session again late in a wall-clock second of the
    // balancer's life (it started within a few ms of `started`): a store
    // that rounds times down to whole seconds then forgets them after
    // only ~1.1 s of idleness.
    let touch_at = started + Duration::from_millis(850);
    tokio::time::sleep_until(touch_at.into()).await;
    for id in &ids {
        assert_eq!(get_path(&c, &gate, "/", Some(id)).await.status, 200);
    }
    let last_touch = Instant::now();
    let deadline = last_touch + Duration::from_secs(8);
    let gone_after = loop {
        let n: u64 = gate.session_counts().await.iter().map(|(_, n)| n).sum();
        if n == 0 {
            break last_touch.elapsed();
        }
        assert!(Instant::now() < deadline, "sessions never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        gone_after >= Duration::from_millis(1900),
        "sessions idle for only {gone_after:?} were expired (idle_timeout = 2s)"
    );
}
