//! Drill: idle TCP through NAT dies silently, so both the client-side and
//! the upstream sockets carry TCP keepalive with the configured timing.
//! Read back from the kernel with `ss -o` (iproute2), not from our config.
mod common;
use common::*;
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

/// `ss -tno` lines for established TCP sockets touching `port`.
fn sockets_on(port: u16) -> Vec<String> {
    let out = Command::new("ss")
        .args(["-tno", "state", "established"])
        .output()
        .expect("ss (Debian package iproute2) reads socket timers");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let needle = format!(":{port} ");
    let mut lines = Vec::new();
    let mut current = String::new();
    for l in text.lines().skip(1) {
        if !l.starts_with(char::is_whitespace) && !current.is_empty() {
            lines.push(std::mem::take(&mut current));
        }
        current.push_str(l);
        current.push(' ');
    }
    lines.push(current);
    lines.into_iter().filter(|l| l.contains(&needle)).collect()
}

/// Seconds left on a keepalive timer, e.g. `timer:(keepalive,41sec,0)`.
fn keepalive_secs(line: &str) -> Option<u64> {
    let t = line.split("timer:(keepalive,").nth(1)?;
    let v = t.split(',').next()?;
    if let Some(m) = v.strip_suffix("sec") {
        return m.parse::<f64>().ok().map(|s| s.ceil() as u64);
    }
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse::<u64>().ok().map(|ms| ms / 1000 + 1);
    }
    let (min, rest) = v.split_once("min")?;
    let secs = rest.trim_end_matches("sec").parse::<u64>().unwrap_or(0);
    Some(min.parse::<u64>().ok()? * 60 + secs)
}

#[tokio::test]
async fn client_and_upstream_sockets_carry_tcp_keepalive() {
    let node = Backend::start("tomcat1", &[]);
    let body = format!(
        "{FAST_HEALTH}[upstream.tcp_keepalive]\ntime = \"45s\"\ninterval = \"5s\"\nprobes = 3\n{}",
        node.toml()
    );
    let gate = Gate::start_with(
        &body,
        "[server.tcp_keepalive]\ntime = \"30s\"\ninterval = \"5s\"\nprobes = 3\n",
    );
    // A kept-alive client connection that carried one request.
    let mut client = std::net::TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    assert!(client.read(&mut buf).unwrap() > 0);
    let client_port = client.local_addr().unwrap().port();

    let lines = sockets_on(gate.port);
    fn local_peer(l: &str) -> (&str, &str) {
        let mut cols = l.split_whitespace().skip(2);
        (cols.next().unwrap_or(""), cols.next().unwrap_or(""))
    }
    let server_side = lines
        .iter()
        .find(|l| {
            let (local, peer) = local_peer(l);
            local == format!("127.0.0.1:{}", gate.port)
                && peer == format!("127.0.0.1:{client_port}")
        })
        .unwrap_or_else(|| panic!("no accepted socket for our client in ss output: {lines:?}"));
    let left = keepalive_secs(server_side)
        .unwrap_or_else(|| panic!("client-side socket has no keepalive timer: {server_side}"));
    assert!(
        (1..=30).contains(&left),
        "client side: first probe within 30s, got {left}s: {server_side}"
    );

    // The pooled upstream connection to the node (health checks use fresh
    // ones and close them; the pooled one stays established).
    let up = sockets_on(node.port);
    let pooled: Vec<&String> = up
        .iter()
        .filter(|l| {
            local_peer(l).1 == format!("127.0.0.1:{}", node.port) && l.contains("keepalive")
        })
        .collect();
    assert!(
        !pooled.is_empty(),
        "no upstream socket with a keepalive timer: {up:?}"
    );
    for l in pooled {
        let left = keepalive_secs(l).unwrap();
        assert!(
            (1..=45).contains(&left),
            "upstream: first probe within 45s, got {left}s: {l}"
        );
    }
}
