//! Drill: the Redis store over TLS (`rediss://`) with a password, against
//! a real redis-server with a certificate made by the test.
mod common;
use common::*;
use std::time::Duration;

/// A TLS-only redis-server with `requirepass`, certificate from rcgen.
fn tls_redis(dir: &std::path::Path) -> (Proc, u16, std::path::PathBuf) {
    let r = TlsRedis::start(dir, "s3cret-pass");
    (r.proc, r.port, r.ca)
}

#[tokio::test]
async fn learned_affinity_is_shared_over_tls_with_auth() {
    let dir = tempdir();
    let (_redis, port, ca) = tls_redis(&dir);
    let b1 = Backend::start("tomcat1", &["--no-suffix"]);
    let b2 = Backend::start("tomcat2", &["--no-suffix"]);
    let store = format!(
        "[store]\nkind = \"redis\"\nredis_url = \"rediss://:s3cret-pass@127.0.0.1:{port}\"\nredis_ca_file = \"{}\"\n",
        ca.display()
    );
    let body = format!("{FAST_HEALTH}{store}{}{}", b1.toml(), b2.toml());
    let a = Gate::start(&body);
    let b = Gate::start(&body);
    let c = client();
    let mut sessions = Vec::new();
    for _ in 0..6 {
        let first = request(&c, "GET", &a.url("/"), None, Default::default()).await;
        let id = first.set_cookie("JSESSIONID").expect("session");
        let route = first.json()["route"].as_str().unwrap().to_owned();
        sessions.push((id, route));
    }
    // Learned bindings are written behind; wait until Redis holds all six
    // (B's cluster-wide count), then B must honour every one.
    let mut stored = 0;
    for _ in 0..100 {
        let st = b.status().await;
        stored = st["store"]["sessions"].as_u64().unwrap_or(0);
        if stored >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored, 6, "B never saw the six sessions in Redis");
    // Grouped by route, so B's round robin cannot guess the nodes.
    for (id, route) in replay_order(&sessions) {
        let again = request(
            &c,
            "GET",
            &b.url("/"),
            Some(&format!("JSESSIONID={id}")),
            Default::default(),
        )
        .await;
        assert_eq!(
            again.json()["route"],
            route.as_str(),
            "B sent a learned session to the wrong node"
        );
        assert_eq!(again.json()["hits"], 2, "same session continued");
    }
    let s = a.status().await;
    assert_eq!(s["store"]["kind"], "redis");
    assert_eq!(s["store"]["healthy"], true, "{s}");
    assert!(
        !a.logs().contains("s3cret-pass"),
        "password must not be logged"
    );
}

#[tokio::test]
async fn wrong_password_is_reported_not_fatal() {
    let dir = tempdir();
    let (_redis, port, ca) = tls_redis(&dir);
    let b1 = Backend::start("tomcat1", &[]);
    let store = format!(
        "[store]\nkind = \"redis\"\nredis_url = \"rediss://:wrong@127.0.0.1:{port}\"\nredis_ca_file = \"{}\"\n",
        ca.display()
    );
    let gate = Gate::start(&format!("{FAST_HEALTH}{store}{}", b1.toml()));
    let r = get(&gate.url("/"), None).await;
    assert_eq!(
        r.status, 200,
        "requests are served even when Redis refuses us"
    );
    let s = gate.status().await;
    assert_eq!(s["store"]["healthy"], false, "{s}");
}
