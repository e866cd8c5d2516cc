//! `stickgate drill` against real processes on loopback: demo backends
//! (with and without Redis-replicated sessions), a real balancer, and the
//! real binary, checking its exit code, text and JSON reports.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a finished drill printed and returned.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "drill --json printed no JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

/// A drill process with its output collected by threads, so a test can
/// watch stderr while it runs and never blocks past a deadline.
struct Drill {
    proc: Proc,
    stderr_lines: mpsc::Receiver<String>,
    stdout: std::thread::JoinHandle<String>,
    stderr_seen: Vec<String>,
}

impl Drill {
    fn spawn(args: &[&str]) -> Drill {
        let mut child = Command::new(stickgate_bin())
            .arg("drill")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start stickgate drill");
        let mut out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let (tx, stderr_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Drill {
            proc: Proc { child },
            stderr_lines,
            stdout,
            stderr_seen: Vec::new(),
        }
    }

    /// Wait (bounded) for a stderr line containing `needle`.
    fn wait_stderr(&mut self, needle: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "drill never printed {needle:?}; stderr: {:?}",
            self.stderr_seen
        )
    }

    /// Wait (bounded) for the drill to exit and collect its output.
    fn finish(mut self, limit: Duration) -> Run {
        let end = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.proc.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > end {
                self.proc.kill();
                panic!(
                    "drill did not finish within {limit:?}: {:?}",
                    self.stderr_seen
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout.join().unwrap();
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_secs(2)) {
            self.stderr_seen.push(line);
        }
        Run {
            code: status.code(),
            stdout,
            stderr: self.stderr_seen.join("\n"),
        }
    }
}

/// Run `stickgate drill args...` to the end (at most 30 s).
fn drill(args: &[&str]) -> Run {
    Drill::spawn(args).finish(Duration::from_secs(30))
}

/// Two demo nodes (with `extra` arguments) behind a gate with fast health
/// checks.
fn cluster(extra: &[&str]) -> (Backend, Backend, Gate) {
    let b1 = Backend::start("tomcat1", extra);
    let b2 = Backend::start("tomcat2", extra);
    let gate = Gate::start(&format!("{FAST_HEALTH}{}{}", b1.toml(), b2.toml()));
    (b1, b2, gate)
}

fn target_admin(gate: &Gate) -> (String, String) {
    (
        gate.url(""),
        format!("http://127.0.0.1:{}", gate.admin_port),
    )
}

#[tokio::test]
async fn replicated_sessions_survive_a_stop_and_the_node_comes_back() {
    let redis = Redis::start();
    let url = redis.url();
    let (_b1, _b2, gate) = cluster(&["--redis", &url]);
    let (target, admin) = target_admin(&gate);
    let base = [
        "--target",
        &target,
        "--admin",
        &admin,
        "--sessions",
        "60",
        "--stop",
        "tomcat1",
    ];

    let text = drill(&base);
    assert_eq!(text.code, Some(0), "{}\n{}", text.stdout, text.stderr);
    let last = text.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("PASS: all 60 sessions kept"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("tomcat1           enabled again"),
        "{}",
        text.stdout
    );
    assert_eq!(gate.backend_status("tomcat1").await["state"], "active");

    let run = drill(&[&base[..], &["--json"]].concat());
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let r = run.json();
    assert_eq!(r["pass"], true, "{r}");
    assert_eq!(r["sessions"], 60);
    assert_eq!(r["kept"], 60, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["data"]["checked"], 60, "{r}");
    assert_eq!(r["data"]["continued"], 60, "{r}");
    let on = r["on_route"]["created"].as_u64().unwrap();
    assert!(on > 0, "{r}");
    assert_eq!(r["on_route"]["kept"], on);
    assert_eq!(r["elsewhere"]["kept"], 60 - on);
    // Every session ends on the node that stayed up, renamed to it.
    assert_eq!(
        r["routes_after"],
        serde_json::json!({ "tomcat2": 60 }),
        "{r}"
    );
    assert!(r["first_failover_ms"].as_f64().is_some(), "{r}");
    assert_eq!(r["restored"], true);
    assert!(r["verdict"].as_str().unwrap().starts_with("PASS"), "{r}");
    assert_eq!(gate.backend_status("tomcat1").await["state"], "active");
}

#[tokio::test]
async fn without_replication_the_stopped_nodes_sessions_are_lost() {
    let (_b1, _b2, gate) = cluster(&[]);
    let (target, admin) = target_admin(&gate);
    let base = [
        "--target",
        &target,
        "--admin",
        &admin,
        "--sessions",
        "60",
        "--stop",
        "tomcat1",
    ];

    let text = drill(&base);
    assert_eq!(text.code, Some(1), "{}\n{}", text.stdout, text.stderr);
    let last = text.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("FAIL: ")
            && last.contains("(all on tomcat1); the backends do not replicate sessions?"),
        "{}",
        text.stdout
    );

    let run = drill(&[&base[..], &["--json"]].concat());
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let r = run.json();
    assert_eq!(r["pass"], false);
    let on = r["on_route"]["created"].as_u64().unwrap();
    assert!(on > 0 && on < 60, "{r}");
    assert_eq!(r["lost"], on, "{r}");
    assert_eq!(r["on_route"]["lost"], on, "{r}");
    assert_eq!(r["lost_by_reason"]["new_id"], on, "{r}");
    assert_eq!(r["elsewhere"]["kept"], 60 - on, "{r}");
    assert_eq!(r["elsewhere"]["lost"], 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(
        r["verdict"],
        format!("FAIL: {on} of 60 sessions lost (all on tomcat1); the backends do not replicate sessions?")
    );
    assert_eq!(gate.backend_status("tomcat1").await["state"], "active");

    let unknown = drill(&["--target", &target, "--admin", &admin, "--stop", "tomcat9"]);
    assert_eq!(unknown.code, Some(2), "{}", unknown.stderr);
    assert_eq!(
        unknown.stderr.trim(),
        "stickgate drill: no backend \"tomcat9\" on this balancer; configured: tomcat1, tomcat2"
    );
}

#[tokio::test]
async fn wait_for_kill_passes_when_a_replicated_node_dies() {
    let redis = Redis::start();
    let url = redis.url();
    let (mut b1, _b2, gate) = cluster(&["--redis", &url]);
    let (target, admin) = target_admin(&gate);
    let mut d = Drill::spawn(&[
        "--target",
        &target,
        "--admin",
        &admin,
        "--sessions",
        "40",
        "--wait-for-kill",
        "tomcat1",
        "--wait-timeout",
        "20s",
        "--json",
    ]);
    let line = d.wait_stderr("waiting for tomcat1 to go down", Duration::from_secs(20));
    assert!(line.contains("kill it now"), "{line}");
    b1.proc.kill();
    let run = d.finish(Duration::from_secs(30));
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let r = run.json();
    assert_eq!(r["taken_out_by"], "wait_for_kill");
    assert_eq!(r["kept"], 40, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["data"]["continued"], 40, "{r}");
    assert_eq!(r["restored"], serde_json::Value::Null);
    assert_eq!(gate.health("tomcat1").await, "down");
}

#[test]
fn unreachable_admin_is_a_setup_error() {
    let target = format!("http://127.0.0.1:{}", free_port());
    let admin = format!("http://127.0.0.1:{}", free_port());
    let run = drill(&["--target", &target, "--admin", &admin, "--stop", "tomcat1"]);
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("stickgate drill: cannot reach the admin API at")
            && run.stderr.contains("is stickgate running"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn drill_goes_through_the_https_listener() {
    let redis = Redis::start();
    let url = redis.url();
    let b1 = Backend::start("tomcat1", &["--redis", &url]);
    let b2 = Backend::start("tomcat2", &["--redis", &url]);
    let dir = tempdir();
    let ca = common::tls::Ca::new(&dir);
    let leaf = ca.leaf(&dir, "gate", &["localhost"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let (gate, tls_port) =
        common::tls::tls_gate(&[leaf], &format!("{}{}", b1.toml(), b2.toml()), "");
    let target = format!("https://localhost:{tls_port}");
    let admin = format!("http://127.0.0.1:{}", gate.admin_port);
    let ca_file = ca.pem.to_str().unwrap();
    let base = ["--target", &target, "--admin", &admin, "--sessions", "40"];

    let run = drill(
        &[
            &base[..],
            &["--ca-file", ca_file, "--stop", "tomcat1", "--json"],
        ]
        .concat(),
    );
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let r = run.json();
    assert_eq!(
        (r["kept"].as_u64(), r["errors"].as_u64()),
        (Some(40), Some(0)),
        "{r}"
    );
    assert_eq!(r["data"]["continued"], 40, "{r}");

    // Without the CA the certificate is not trusted: every request fails,
    // and the drill says why instead of reporting lost sessions.
    let run = drill(&[&base[..], &["--stop", "tomcat1"]].concat());
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("invalid peer certificate: UnknownIssuer"),
        "{}",
        run.stderr
    );
    assert_eq!(gate.backend_status("tomcat1").await["state"], "active");

    let run = drill(
        &[
            &base[..],
            &["--ca-file", "/nonexistent/ca.pem", "--stop", "tomcat1"],
        ]
        .concat(),
    );
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("--ca-file: /nonexistent/ca.pem"),
        "{}",
        run.stderr
    );
}
