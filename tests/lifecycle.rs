//! Process lifecycle: `stickgate check` verdicts and graceful shutdown.
mod common;
use bytes::Bytes;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:18080"]
[admin]
listen = "127.0.0.1:19901"
[session]
idle_timeout = "10m"
[health]
interval = "1s"
[[backend]]
route = "tomcat1"
url = "http://127.0.0.1:18081"
[[backend]]
route = "tomcat2"
url = "http://127.0.0.1:18082"
weight = 2
"#;

/// Run `stickgate check --config <file with text>`: (exit ok, file, output).
fn check(text: &str) -> (bool, std::path::PathBuf, String) {
    let dir = tempdir();
    let file = dir.join("stickgate.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(stickgate_bin())
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let mut all = String::from_utf8_lossy(&out.stdout).into_owned();
    all.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), file, all)
}

#[test]
fn check_accepts_a_good_file() {
    let (ok, file, out) = check(GOOD);
    assert!(ok, "good config rejected: {out}");
    assert!(out.contains(&*file.to_string_lossy()), "{out}");
    assert!(out.contains("ok"), "{out}");
}

/// A bad file: non-zero exit and exactly one line naming the file and `key`.
fn assert_rejected(what: &str, text: &str, key: &str) {
    assert_ne!(text, GOOD, "{what}: test edit did not apply");
    let (ok, file, out) = check(text);
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!ok, "{what}: accepted (exit 0): {out:?}");
    assert_eq!(lines.len(), 1, "{what}: want one line: {out:?}");
    assert!(
        lines[0].contains(&*file.to_string_lossy()),
        "{what}: file not named: {out:?}"
    );
    assert!(
        lines[0].contains(key),
        "{what}: key {key:?} not named: {out:?}"
    );
}

#[test]
fn check_rejects_unknown_key() {
    let text = GOOD.replace("idle_timeout = \"10m\"", "idle_timeuot = \"10m\"");
    assert_rejected("unknown key", &text, "idle_timeuot");
}

#[test]
fn check_rejects_bad_url() {
    let text = GOOD.replace("http://127.0.0.1:18082", "ftp://127.0.0.1:18082");
    assert_rejected("bad url", &text, "backend[1].url");
}

#[test]
fn check_rejects_duplicate_route() {
    let text = GOOD.replace("route = \"tomcat2\"", "route = \"tomcat1\"");
    assert_rejected("duplicate route", &text, "route");
}

#[test]
fn check_rejects_bad_duration_naming_the_key() {
    let text = GOOD.replace("interval = \"1s\"", "interval = \"1 fortnight\"");
    assert_rejected("bad health.interval", &text, "interval");
    let text = GOOD.replace("idle_timeout = \"10m\"", "idle_timeout = \"soon\"");
    assert_rejected("bad session.idle_timeout", &text, "idle_timeout");
}

#[test]
fn check_points_at_the_line_of_an_unknown_key() {
    // The typo sits at the start of line 7 of GOOD (line 1 is empty).
    let text = GOOD.replace("idle_timeout = \"10m\"", "idle_timeuot = \"10m\"");
    assert_eq!(
        text.lines().nth(6),
        Some("idle_timeuot = \"10m\""),
        "test layout"
    );
    let (ok, file, out) = check(&text);
    assert!(!ok);
    let want = format!("{}:7:", file.to_string_lossy());
    assert!(out.contains(&want), "want {want:?} in {out:?}");
}

#[test]
fn check_reports_a_missing_file() {
    let missing = tempdir().join("nope.toml");
    let out = Command::new(stickgate_bin())
        .args(["check", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&*missing.to_string_lossy()), "{err}");
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let b1 = Backend::start("tomcat1", &[]);
    let mut gate = Gate::start(&format!("{FAST_HEALTH}{}", b1.toml()));

    // An idle keep-alive client must not hold the shutdown up.
    let mut idle = TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    let slow_url = gate.url("/slow?ms=1500");
    let slow = tokio::spawn(async move {
        let c = client();
        let t = Instant::now();
        let r = try_request(&c, "GET", &slow_url, None, Bytes::new()).await;
        (r, t.elapsed())
    });
    // Wait until the slow request is really in flight upstream.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if gate.backend_status("tomcat1").await["inflight"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "slow request never in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    gate.proc.signal("TERM");
    let term_at = Instant::now();

    // New connections are refused shortly after.
    let deadline = term_at + Duration::from_secs(2);
    loop {
        if TcpStream::connect(("127.0.0.1", gate.port)).is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still accepting connections 2 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The in-flight request completes normally.
    let (r, took) = slow.await.unwrap();
    let r = r.unwrap_or_else(|e| panic!("in-flight request broken by shutdown: {e}"));
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["route"], "tomcat1");
    assert!(took >= Duration::from_millis(1400), "{took:?}");

    // And the process exits 0 within a few seconds.
    let deadline = term_at + Duration::from_secs(6);
    let status = loop {
        if let Some(s) = gate.proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "stickgate still running 6 s after SIGTERM: {}",
            gate.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}: {}", gate.logs());
}

/// The CPUs a process or thread may run on: the `Cpus_allowed_list` line
/// ("0-1", "0,2-3") of the `status` file in `dir` (a /proc entry).
fn cpus_allowed(dir: &std::path::Path) -> Vec<usize> {
    let status = std::fs::read_to_string(dir.join("status")).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap());
    }
    cpus
}

/// The CPUs each thread of `pid` may run on, by thread name.
fn thread_cpus(pid: u32) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = t.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap();
        out.push((name.trim().to_owned(), cpus_allowed(&dir)));
    }
    out.sort();
    out
}

#[test]
fn request_threads_get_a_cpu_each_unless_affinity_is_off() {
    let allowed = cpus_allowed(std::path::Path::new("/proc/self"));
    let n = allowed.len().max(2);
    let node = Backend::start("tomcat1", &[]);
    let threads = format!("threads = {n}\n");
    let pinned = Gate::start_with(&node.toml(), &threads);
    let off = Gate::start_with(&node.toml(), &format!("{threads}cpu_affinity = \"off\""));

    let workers = |pid| -> Vec<(String, Vec<usize>)> {
        thread_cpus(pid)
            .into_iter()
            .filter(|(name, _)| name.starts_with("stickgate-w"))
            .collect()
    };
    let got = workers(pinned.proc.pid());
    assert_eq!(got.len(), n, "{got:?}");
    for (i, (name, cpus)) in got.iter().enumerate() {
        if allowed.len() == n {
            assert_eq!(name, &format!("stickgate-w{i}"));
            assert_eq!(cpus, &vec![allowed[i]], "{name} pinned to its own CPU");
        } else {
            // One CPU here: nothing to spread over, nothing pinned.
            assert_eq!(cpus, &allowed, "{name}");
        }
    }
    for (name, cpus) in thread_cpus(pinned.proc.pid()) {
        if !name.starts_with("stickgate-w") {
            assert_eq!(cpus, allowed, "{name}: only request threads are pinned");
        }
    }
    for (name, cpus) in workers(off.proc.pid()) {
        assert_eq!(cpus, allowed, "{name} with cpu_affinity = \"off\"");
    }
    // Pinned or not, both serve.
    for port in [pinned.port, off.port] {
        let r = raw(
            port,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
}
