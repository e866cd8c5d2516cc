//! systemd drills: a real stickgate started the way systemd starts a
//! `Type=notify` service (NOTIFY_SOCKET, WATCHDOG_USEC), with the test as
//! the service manager reading the notifications.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The service manager's side: the notifications received, in order.
struct Manager {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Manager {
    fn bind(path: &std::path::Path) -> Manager {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Manager {
            sock,
            seen: Vec::new(),
        }
    }

    /// Read until a datagram has a line equal to `line` (or starting with
    /// it when it ends in '='); returns that datagram. Fails after `limit`.
    fn wait_for(&mut self, line: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            let Ok(n) = self.sock.recv(&mut buf) else {
                continue;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(msg.clone());
            let hit = msg.lines().any(|l| {
                if line.ends_with('=') {
                    l.starts_with(line)
                } else {
                    l == line
                }
            });
            if hit {
                return msg;
            }
        }
        panic!("no {line} within {limit:?}; received {:?}", self.seen)
    }
}

#[test]
fn notifies_ready_status_watchdog_reloading_and_stopping() {
    let node = Backend::start("tomcat1", &[]);
    let dir = tempdir();
    let mut manager = Manager::bind(&dir.join("notify.sock"));
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.join("stickgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             {FAST_HEALTH}{}",
            node.toml()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let child = Command::new(stickgate_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", dir.join("notify.sock"))
        .env("WATCHDOG_USEC", "300000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stickgate.log")).unwrap())
        .spawn()
        .expect("start stickgate");
    let gate = Proc { child };

    let ready = manager.wait_for("READY=1", Duration::from_secs(10));
    // Ready means serving: the listener is bound and the backend routes.
    let answered = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    assert!(answered, "READY=1 before the listener was bound");
    assert!(
        ready.contains("STATUS=1/1 backends up, 0 sessions"),
        "status line with READY: {ready:?}"
    );
    eprintln!("READY=1 {:?} after start", started.elapsed());

    // WatchdogSec=300ms: pings every 150 ms.
    manager.wait_for("WATCHDOG=1", Duration::from_secs(2));
    let t = Instant::now();
    manager.wait_for("WATCHDOG=1", Duration::from_secs(2));
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );

    gate.signal("HUP");
    let reloading = manager.wait_for("RELOADING=1", Duration::from_secs(5));
    assert!(
        reloading.contains("MONOTONIC_USEC="),
        "systemd 253+ needs MONOTONIC_USEC with RELOADING=1: {reloading:?}"
    );
    manager.wait_for("READY=1", Duration::from_secs(5));

    gate.signal("TERM");
    manager.wait_for("STOPPING=1", Duration::from_secs(5));
}

/// READY=1 waits for the first round of health checks, so the status line
/// (and the routing table) already shows a dead node as down.
#[test]
fn ready_waits_for_the_first_health_checks() {
    let dir = tempdir();
    let mut manager = Manager::bind(&dir.join("notify.sock"));
    let (port, admin, dead) = (free_port(), free_port(), free_port());
    let node = Backend::start("tomcat1", &[]);
    let cfg = dir.join("stickgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [health]\ninterval = \"5s\"\ntimeout = \"1s\"\nfall = 1\n{}\
             [[backend]]\nroute = \"tomcat2\"\nurl = \"http://127.0.0.1:{dead}\"\n",
            node.toml()
        ),
    )
    .unwrap();
    let child = Command::new(stickgate_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", dir.join("notify.sock"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stickgate.log")).unwrap())
        .spawn()
        .expect("start stickgate");
    let _gate = Proc { child };
    let ready = manager.wait_for("READY=1", Duration::from_secs(10));
    assert!(
        ready.contains("STATUS=1/2 backends up"),
        "the dead node's first check must be in before READY: {ready:?}"
    );
}
