//! Smallest drill: two nodes, a session sticks.
mod common;
use common::*;

#[tokio::test]
async fn session_sticks_to_its_node() {
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let gate = Gate::start(&format!("{FAST_HEALTH}{}{}", b1.toml(), b2.toml()));
    let first = get(&gate.url("/"), None).await;
    assert_eq!(first.status, 200);
    let id = first.set_cookie("JSESSIONID").expect("new session cookie");
    let route = first.json()["route"].as_str().unwrap().to_owned();
    assert!(id.ends_with(&format!(".{route}")));
    for n in 2..=5 {
        let r = get(&gate.url("/"), Some(&format!("JSESSIONID={id}"))).await;
        assert_eq!(r.json()["route"], route.as_str());
        assert_eq!(r.json()["hits"], n);
    }
}
