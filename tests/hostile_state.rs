//! Hostile-state drills: what clients can make the balancer remember.
//! Session ids only a client vouches for must cost no shared state, must
//! not crowd out, move or out-count real sessions, must not hold a drain
//! open, and a URL id must never come back as a cookie; the access log
//! never shows ids; Redis keys always expire; Sentinel masters that need a
//! password work; a late write never undoes a failover claim.
mod common;
use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stickgate::config::raw::StoreSection;
use stickgate::config::StoreKind;
use stickgate::store::redis::{scripts, RedisStore};
use stickgate::store::{unix_ms, SessionStore};

/// A random hex token (made-up session ids and routes).
fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Total of every backend's current session count.
async fn total_sessions(gate: &Gate) -> u64 {
    gate.session_counts().await.iter().map(|(_, n)| n).sum()
}

/// Keys matching `pattern` that have no TTL (one server-side scan).
fn keys_without_ttl(redis: &Redis, pattern: &str) -> Vec<String> {
    let script = "local out = {} \
        for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
          if redis.call('PTTL', k) < 0 then table.insert(out, k) end \
        end return out";
    redis
        .cli(&["EVAL", script, "0", pattern])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn random_ids_and_routes_leave_no_redis_key_without_ttl() {
    let redis = Redis::start();
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}[session]\nmax_sessions = 500\n[store]\nkind = \"redis\"\nredis_url = \"{}\"\n{}{}{}",
        redis.url(),
        b1.toml(),
        b2.toml(),
        dead_backend_toml("tomcat3", "")
    ));
    gate.wait_health("tomcat3", "down").await;
    let c = client();
    let mut real = 0u64;
    for i in 0..600 {
        let (id, route) = (token(), token());
        let r = match i % 6 {
            // Unknown route, live route, dead route, URL id, no suffix: all
            // on a page that creates no session.
            0 => get_path(&c, &gate, "/headers", Some(&format!("{id}.{route}"))).await,
            1 => get_path(&c, &gate, "/headers", Some(&format!("{id}.tomcat1"))).await,
            2 => get_path(&c, &gate, "/headers", Some(&format!("{id}.tomcat3"))).await,
            3 => {
                let path = format!("/headers;jsessionid={id}.{route}");
                get_path(&c, &gate, &path, None).await
            }
            4 => get_path(&c, &gate, "/headers", Some(&id)).await,
            // A page that creates a session: the backend issues a real one.
            _ => {
                let r = get_path(&c, &gate, "/", Some(&format!("{id}.{route}"))).await;
                assert!(r.set_cookie("JSESSIONID").is_some(), "{:?}", r.headers);
                real += 1;
                r
            }
        };
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
    }
    let no_ttl = keys_without_ttl(&redis, "stickgate:*");
    let all = redis.keys("stickgate:*");
    println!(
        "600 hostile requests ({real} created real sessions): {} keys, {} without TTL",
        all.len(),
        no_ttl.len()
    );
    assert!(no_ttl.is_empty(), "keys without TTL: {no_ttl:?}");
    let sessions = redis.keys("stickgate:s:*");
    assert_eq!(
        sessions.len() as u64,
        real,
        "only backend-issued sessions may reach Redis"
    );
    // Orphans of the dead node that no backend confirmed may share their
    // heir through short-lived claim records: at most a tenth of
    // max_sessions (64 here) of the 100 per window.
    let claims = redis.keys("stickgate:u:*").len();
    let local = gate.status().await["store"]["unconfirmed"]
        .as_u64()
        .unwrap();
    println!("unconfirmed claim records: {claims}, local unconfirmed tier: {local}");
    assert!(claims <= 64, "{claims} unconfirmed claim records");
    assert!((1..=64).contains(&local), "local unconfirmed tier: {local}");
    for k in &all {
        let named = k
            .strip_prefix("stickgate:r:")
            .or(k.strip_prefix("stickgate:m:"));
        if let Some(route) = named {
            assert!(
                ["tomcat1", "tomcat2", "tomcat3"].contains(&route),
                "a key named by a client string: {k}"
            );
        }
    }
    // Cluster-wide counts (refreshed every second) count only real ones.
    let end = Instant::now() + Duration::from_secs(5);
    while total_sessions(&gate).await != real {
        assert!(
            Instant::now() < end,
            "counts {:?} != {real} real sessions",
            gate.session_counts().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn forged_ids_neither_fill_the_store_nor_unstick_a_learned_session() {
    let b1 = Backend::start("tomcat1", &["--no-suffix"]);
    let b2 = Backend::start("tomcat2", &["--no-suffix"]);
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}[session]\nmax_sessions = 1000\n[balance]\nalgorithm = \"least_sessions\"\n{}{}",
        b1.toml(),
        b2.toml()
    ));
    let c = client();
    let started = Instant::now();
    for i in 0..3000 {
        let forged = format!("{}.tomcat{}", token(), 1 + i % 2);
        let r = get_path(&c, &gate, "/headers", Some(&forged)).await;
        assert_eq!(r.status, 200, "forged {i}: {:?}", r.body);
    }
    let took = started.elapsed();
    let st = gate.status().await;
    println!(
        "3000 forged ids in {took:.1?}: store {} counts {:?}",
        st["store"],
        gate.session_counts().await
    );
    assert_eq!(st["store"]["sessions"], 0, "{}", st["store"]);
    assert_eq!(st["store"]["rejected_full"], 0, "{}", st["store"]);
    assert_eq!(total_sessions(&gate).await, 0, "forged ids were counted");

    // A real suffix-less session, learned from the backend's Set-Cookie.
    let r = get_path(&c, &gate, "/", None).await;
    let id = r.set_cookie("JSESSIONID").expect("a new session cookie");
    assert!(!id.contains('.'), "--no-suffix ids carry no route: {id}");
    let home = route_of(&r);
    let mut on_home = 0;
    for n in 2..=21 {
        let r = get_path(&c, &gate, "/", Some(&id)).await;
        assert_eq!(r.status, 200);
        if route_of(&r) == home && hits_of(&r) == n {
            on_home += 1;
        }
    }
    println!("learned session after the flood: {on_home} of 20 requests on {home}");
    assert_eq!(on_home, 20, "the learned session lost its node");
    let counts = gate.session_counts().await;
    assert_eq!(total_sessions(&gate).await, 1, "{counts:?}");
}

#[tokio::test]
async fn url_session_ids_never_come_back_as_cookies() {
    let b1 = Backend::start("tomcat1", &[]);
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}{}{}",
        b1.toml(),
        dead_backend_toml("tomcat2", "")
    ));
    gate.wait_health("tomcat2", "down").await;
    let c = client();
    // A real session on tomcat1, known to the store.
    let (route, real) = new_session(&c, &gate).await;
    assert_eq!(route, "tomcat1");
    let base = real.split('.').next().unwrap().to_owned();
    let links = [
        // Someone's id naming the dead node: a failover, but from the URL.
        format!("/headers;jsessionid={}.tomcat2", token()),
        // A stored session named with another node's route in the URL.
        format!("/headers;jsessionid={base}.tomcat2"),
        // A route nobody configured.
        format!("/headers;jsessionid={}.tomcat9", token()),
    ];
    for path in &links {
        let r = get_path(&c, &gate, path, None).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        assert!(
            r.set_cookies().is_empty(),
            "{path} answered with {:?}",
            r.set_cookies()
        );
    }
    // The same failover from the client's own cookie is corrected.
    let own = format!("{}.tomcat2", token());
    let r = get_path(&c, &gate, "/headers", Some(&own)).await;
    let fixed = r
        .set_cookie("JSESSIONID")
        .expect("cookie failover corrected");
    assert!(fixed.ends_with(".tomcat1"), "{fixed}");
}

#[tokio::test]
async fn draining_and_disabled_nodes_take_no_client_made_bindings() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let b3 = Backend::start("tomcat3", &[]);
    let gate = Gate::start(&format!(
        "{STEADY_HEALTH}[session]\nidle_timeout = \"2s\"\n{}{}{}",
        b1.toml_with("state = \"draining\""),
        b2.toml_with("state = \"disabled\""),
        b3.toml()
    ));
    let c = client();
    for i in 0..200 {
        let route = if i % 2 == 0 { "tomcat1" } else { "tomcat2" };
        let forged = format!("{}.{route}", token());
        let r = get_path(&c, &gate, "/headers", Some(&forged)).await;
        assert_eq!(r.status, 200);
    }
    for route in ["tomcat1", "tomcat2"] {
        let s = gate.backend_status(route).await;
        assert!(
            s["requests"].as_u64().unwrap() >= 100,
            "sticky by suffix still reaches {route}: {s}"
        );
        assert_eq!(s["sessions"]["current"], 0, "{s}");
        assert_eq!(s["sessions_remaining"], 0, "{s}");
        assert_eq!(s["drained"], true, "client ids hold {route} open: {s}");
    }
}

#[tokio::test]
async fn access_log_shows_no_session_id_and_escapes_quotes() {
    let b1 = Backend::start("tomcat1", &[]);
    let dir = tempdir();
    let log = dir.join("access.log");
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}[log]\naccess_log = \"{}\"\n{}",
        log.display(),
        b1.toml()
    ));
    let req = "GET /headers;jsessionid=AAAA0001.tomcat1/x;jsessionid=BBBB0002?jsessionid=CCCC0003&JSESSIONID=DDDD0004 HTTP/1.1\r\n\
         Host: x\r\n\
         Referer: https://shop.example/p;jsessionid=EEEE0005?q=1&jsessionid=FFFF0006\r\n\
         User-Agent: ua\\\" \"evil\\\r\n\
         Connection: close\r\n\r\n";
    let answer = raw(gate.port, req.as_bytes(), Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut text = String::new();
    wait_for(Duration::from_secs(5), || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("route=tomcat1")
    })
    .unwrap_or_else(|_| panic!("no access log line: {text:?}"));
    println!("{text}");
    for id in ["AAAA", "BBBB", "CCCC", "DDDD", "EEEE", "FFFF"] {
        assert!(!text.contains(id), "{id} leaked: {text}");
    }
    // Six ids in the target and Referer, plus the routed session.
    assert_eq!(text.matches("sid#").count(), 7, "{text}");
    assert!(
        text.contains(r#""ua\\\" \"evil\\""#),
        "user agent not escaped: {text}"
    );
}

/// The store section of a Redis store on `url` with readable keys.
fn plain_keys(url: &str, prefix: &str) -> StoreSection {
    StoreSection {
        kind: StoreKind::Redis,
        redis_url: Some(url.into()),
        key_prefix: prefix.into(),
        hash_keys: false,
        timeout: Duration::from_secs(1),
        ..StoreSection::default()
    }
}

#[tokio::test]
async fn a_late_bind_never_undoes_a_newer_failover_claim() {
    let redis = Redis::start();
    let routes: Vec<Arc<str>> = vec!["t1".into(), "t2".into()];
    let cfg = plain_keys(&redis.url(), "order:");
    let b = RedisStore::start(&cfg, Duration::from_secs(60), 1000, routes.clone())
        .await
        .unwrap();
    let t1 = routes[0].clone();
    b.bind_now("X", &t1).await;
    assert_eq!(redis.cli(&["HGET", "order:s:X", "r"]), "t1");
    // Another balancer decides to bind X to t1 (say, from a Set-Cookie it
    // saw) but its write-behind queue is slow...
    let decided = unix_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // ...meanwhile t1 dies and this balancer claims X for t2.
    let agreed = b.claim("X", Some("t1"), routes[1].clone()).await;
    assert_eq!(&*agreed, "t2");
    // The late write arrives.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let late = |at: u64| {
        let mut inv = scripts::BIND.key("order:s:X");
        inv.arg("t1").arg(unix_ms()).arg(60_000).arg(at);
        inv
    };
    let (_, stored): (String, String) = late(decided).invoke_async(&mut conn).await.unwrap();
    assert_eq!(stored, "t2", "a bind decided before the claim undid it");
    assert_eq!(redis.cli(&["HGET", "order:s:X", "r"]), "t2");
    assert!(redis.cli(&["PTTL", "order:s:X"]).parse::<i64>().unwrap() > 0);
    // A binding decided after the claim is newer and wins.
    let (_, stored): (String, String) = late(unix_ms() + 1).invoke_async(&mut conn).await.unwrap();
    assert_eq!(stored, "t1");
    assert_eq!(redis.cli(&["HGET", "order:s:X", "r"]), "t1");
}

#[tokio::test]
async fn sentinel_master_with_a_password() {
    const PASS: &str = "s3ntinel-master-pass";
    let master = Redis::start_args(&["--requirepass", PASS], None);
    let sentinel = Sentinel::start_with(
        "hostile",
        master.port,
        &format!("sentinel auth-pass hostile {PASS}\n"),
    );
    let b1 = Backend::start("tomcat1", &[]);
    let dir = tempdir();
    let pass_file = dir.join("master.pass");
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let store = |extra: &str| {
        format!(
            "[store]\nkind = \"redis\"\ntimeout = \"1s\"\nredis_sentinel = {{ master = \"hostile\", nodes = [\"{}\"]{extra} }}\n",
            sentinel.url()
        )
    };
    let with_pass = format!(", password_file = \"{}\"", pass_file.display());
    let gate = Gate::start(&format!("{FAST_HEALTH}{}{}", store(&with_pass), b1.toml()));
    let c = client();
    let (_, id) = new_session(&c, &gate).await;
    let master_keys = |m: &Redis| {
        redis_cli(
            m.port,
            &[
                "-a",
                PASS,
                "--no-auth-warning",
                "--scan",
                "--pattern",
                "stickgate:s:*",
            ],
        )
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
    };
    assert_eq!(master_keys(&master), 1, "session not written to the master");
    let st = gate.status().await;
    assert_eq!(st["store"]["healthy"], true, "{}", st["store"]);
    for text in [gate.logs(), st.to_string()] {
        assert!(!text.contains(PASS), "password leaked: {text}");
    }
    let r = get_path(&c, &gate, "/", Some(&id)).await;
    assert_eq!(hits_of(&r), 2);

    // Without the password the master refuses: nothing is written.
    let blind = Gate::start(&format!("{FAST_HEALTH}{}{}", store(""), b1.toml()));
    new_session(&c, &blind).await;
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let st = blind.status().await;
        if st["store"]["errors"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < end, "no error without a password: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(master_keys(&master), 1, "written without a password?");
}

/// A 0600 multicast key file in a fresh temp dir.
fn multicast_key() -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = tempdir().join("cluster.key");
    std::fs::write(&path, format!("{}{}", token(), token())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A loopback port free for UDP and TCP, below the ephemeral range.
fn replication_port() -> u16 {
    for _ in 0..1000 {
        let port = 20_000 + (rand::random::<u16>() % 12_000);
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if udp.is_ok() && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free replication port")
}

#[tokio::test]
async fn forged_ids_are_never_sent_to_multicast_peers() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let key = multicast_key();
    let ports = [replication_port(), replication_port()];
    let store = |i: usize| {
        format!(
            "[store]\nkind = \"multicast\"\nmulticast_group = \"[ff05::5]:{}\"\nmulticast_interface = \"127.0.0.1\"\n\
             replication_listen = \"127.0.0.1:{}\"\npeers = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\nkey_file = \"{}\"\ntimeout = \"2s\"\n",
            replication_port(),
            ports[i],
            ports[0],
            ports[1],
            key.display()
        )
    };
    let backends = format!("{FAST_HEALTH}{}{}", b1.toml(), b2.toml());
    let a = Gate::start(&format!("{backends}{}", store(0)));
    let b = Gate::start(&format!("{backends}{}", store(1)));
    let c = client();
    for i in 0..500 {
        let forged = format!("{}.tomcat{}", token(), 1 + i % 2);
        let r = get_path(&c, &a, "/headers", Some(&forged)).await;
        assert_eq!(r.status, 200);
    }
    // One real session: replicated, so B has caught up once it shows it.
    new_session(&c, &a).await;
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (sa, sb) = (a.status().await, b.status().await);
        let n = |s: &serde_json::Value| s["store"]["sessions"].as_u64().unwrap_or(0);
        if n(&sb) >= 1 {
            assert_eq!(
                (n(&sa), n(&sb)),
                (1, 1),
                "A {} / B {}",
                sa["store"],
                sb["store"]
            );
            break;
        }
        assert!(
            Instant::now() < end,
            "B never got the real session: {}",
            sb["store"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sentinel_master_over_tls_with_a_password() {
    const PASS: &str = "tls-master-pass";
    let dir = tempdir();
    // A TLS-only master that needs a password; the sentinel reaches it
    // over TLS too, and answers clients in plain text.
    let master = TlsRedis::start(&dir, PASS);
    let (port, ca) = (master.port, master.ca.clone());
    let tls_files = format!(
        "tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients no\n",
        master.cert.display(),
        master.key.display(),
        ca.display()
    );
    let sentinel = Sentinel::start_with(
        "tlsmaster",
        port,
        &format!("sentinel auth-pass tlsmaster {PASS}\ntls-replication yes\n{tls_files}"),
    );
    let pass_file = dir.join("master.pass");
    std::fs::write(&pass_file, PASS).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let b1 = Backend::start("tomcat1", &[]);
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}[store]\nkind = \"redis\"\ntimeout = \"1s\"\nredis_ca_file = \"{}\"\n\
         redis_sentinel = {{ master = \"tlsmaster\", nodes = [\"{}\"], password_file = \"{}\", tls = true }}\n{}",
        ca.display(),
        sentinel.url(),
        pass_file.display(),
        b1.toml()
    ));
    let c = client();
    new_session(&c, &gate).await;
    // The binding is in the master: read it back over TLS.
    let url = format!("rediss://:{PASS}@127.0.0.1:{port}");
    let client = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&ca).unwrap()),
        },
    )
    .unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("stickgate:s:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "the new session is not in the TLS master");
    let st = gate.status().await;
    assert_eq!(st["store"]["healthy"], true, "{}", st["store"]);
    assert_eq!(st["store"]["errors"], 0, "{}", st["store"]);
    assert!(!gate.logs().contains(PASS), "password logged");
}
