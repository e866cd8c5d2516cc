//! Binary upgrade through `server.takeover_socket`, with real processes:
//! a second `stickgate run` on the same config takes the first one's
//! listening sockets, sessions and backend states while clients keep
//! sending requests; the first one drains and exits 0.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The old process's `shutdown_timeout` in these drills.
const SHUTDOWN: Duration = Duration::from_secs(5);

/// `[server]` keys of every drill: the takeover socket, a short drain and
/// two request threads (two SO_REUSEPORT sockets per address to hand over).
fn server_keys(sock: &Path) -> String {
    format!(
        "takeover_socket = \"{}\"\nshutdown_timeout = \"5s\"\nthreads = 2\n",
        sock.display()
    )
}

/// A takeover socket path in a fresh directory.
fn sock_path() -> PathBuf {
    tempdir().join("takeover.sock")
}

/// Two suffix-less demo nodes (ids carry no route: only the store knows
/// where a session lives) and the first balancer, A.
fn cluster(sock: &Path) -> (Backend, Backend, Gate) {
    let b1 = Backend::start("tomcat1", &["--no-suffix"]);
    let b2 = Backend::start("tomcat2", &["--no-suffix"]);
    let gate = Gate::start_with(
        &format!("{FAST_HEALTH}{}{}", b1.toml(), b2.toml()),
        &server_keys(sock),
    );
    // The listeners answer a moment before the takeover socket is bound.
    let bound = wait_for(Duration::from_secs(10), || sock.exists());
    assert!(bound.is_ok(), "no takeover socket: {}", gate.logs());
    (b1, b2, gate)
}

/// Start the next process on `cfg`, logging to `log`.
fn start_next(cfg: &Path, log: &Path) -> Proc {
    let child = Command::new(stickgate_bin())
        .args(["run", "--config"])
        .arg(cfg)
        .env("STICKGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start the next stickgate");
    Proc { child }
}

/// Wait until `log` has `line`; the instant it was seen.
fn wait_log(log: &Path, line: &str, limit: Duration) -> Instant {
    let ok = wait_for(limit, || {
        std::fs::read_to_string(log).is_ok_and(|t| t.contains(line))
    });
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        ok.is_ok(),
        "no {line:?} within {limit:?} in {}:\n{text}",
        log.display()
    );
    Instant::now()
}

/// Wait for `p` to exit; its exit code and when it was seen gone.
fn wait_exit(p: &mut Proc, limit: Duration) -> (Option<i32>, Instant) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(Some(s)) = p.child.try_wait() {
            return (s.code(), Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("process {} still running after {limit:?}", p.pid());
}

/// Watch B's log and A's process together (every millisecond, at most
/// 30 s): when B said it accepts, when A was gone, A's exit code.
fn ready_and_gone(log_b: &Path, a: &mut Proc) -> (Instant, Instant, Option<i32>) {
    let end = Instant::now() + Duration::from_secs(30);
    let mut ready = None;
    while Instant::now() < end {
        if ready.is_none()
            && std::fs::read_to_string(log_b)
                .is_ok_and(|t| t.contains("took over from the previous process"))
        {
            ready = Some(Instant::now());
        }
        if let Ok(Some(s)) = a.child.try_wait() {
            let gone = Instant::now();
            let ready = ready.unwrap_or_else(|| {
                wait_log(
                    log_b,
                    "took over from the previous process",
                    Duration::from_secs(1),
                )
            });
            return (ready, gone, s.code());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!(
        "A still running 30 s after B started:\n{}",
        std::fs::read_to_string(log_b).unwrap_or_default()
    );
}

/// `n` new suffix-less sessions through the gate: (cookie, node).
async fn learn(gate: &Gate, n: usize) -> Vec<(String, String)> {
    let c = client();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (route, id) = new_session(&c, gate).await;
        assert!(!id.contains('.'), "suffix-less ids only: {id}");
        out.push((id, route));
    }
    out
}

/// How many of `sessions` still reach their node through the gate (and
/// the node knew them: no new cookie). Asked node by node: in the order
/// they were learned, round robin alone would send every unknown id back
/// to the node that created it.
async fn still_home(gate: &Gate, sessions: &[(String, String)]) -> usize {
    let c = client();
    let mut home = 0;
    let mut by_node = sessions.to_vec();
    by_node.sort_by(|a, b| a.1.cmp(&b.1));
    for (id, route) in &by_node {
        let r = hit(&c, gate, Some(id)).await;
        if r.status == 200 && route_of(&r) == *route && r.set_cookie("JSESSIONID").is_none() {
            home += 1;
        }
    }
    home
}

/// What a load loop saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    non_2xx: AtomicU64,
    wrong_node: AtomicU64,
}

impl Tally {
    fn line(&self) -> String {
        format!(
            "ok {} failed {} non-2xx {} wrong node {}",
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.non_2xx.load(Ordering::Relaxed),
            self.wrong_node.load(Ordering::Relaxed)
        )
    }

    fn clean(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
            + self.non_2xx.load(Ordering::Relaxed)
            + self.wrong_node.load(Ordering::Relaxed)
            == 0
    }
}

/// Requests with the learned sessions until `stop`, each checked for its
/// node: a new client (so a new TCP connection) per request, or one
/// keep-alive client for all. Bounded by `stop` and 60 s.
fn load(
    port: u16,
    sessions: Arc<Vec<(String, String)>>,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let url = format!("http://127.0.0.1:{port}/");
        let shared = client();
        let end = Instant::now() + Duration::from_secs(60);
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            let (id, route) = &sessions[i % sessions.len()];
            i += 1;
            let c = if keep_alive { shared.clone() } else { client() };
            let cookie = format!("JSESSIONID={id}");
            match try_request(&c, "GET", &url, Some(&cookie), bytes::Bytes::new()).await {
                Ok(r) if !(200..300).contains(&r.status) => {
                    tally.non_2xx.fetch_add(1, Ordering::Relaxed);
                }
                Ok(r) if route_of(&r) != *route => {
                    tally.wrong_node.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    eprintln!(
                        "load ({}): {e}",
                        if keep_alive {
                            "keep-alive"
                        } else {
                            "new connection"
                        }
                    );
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_process_takes_over_under_load_without_losing_a_request_or_a_session() {
    let sock = sock_path();
    let (_b1, _b2, mut a) = cluster(&sock);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "takeover socket mode");
    let sessions = Arc::new(learn(&a, 200).await);
    let per_node = |n: &str| sessions.iter().filter(|(_, r)| r == n).count();
    assert!(
        per_node("tomcat1") > 0 && per_node("tomcat2") > 0,
        "both nodes hold sessions"
    );
    let r = admin_post(&a, "/api/backends/tomcat2/drain").await;
    assert_eq!(r.status, 200, "drain on A: {:?}", r.body);

    let stop = Arc::new(AtomicBool::new(false));
    let (fresh, kept) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    // Three clients of each kind.
    let loads: Vec<_> = (0..6)
        .map(|i| {
            let tally = if i % 2 == 0 { &fresh } else { &kept };
            load(
                a.port,
                sessions.clone(),
                i % 2 == 1,
                stop.clone(),
                tally.clone(),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = fresh.ok.load(Ordering::Relaxed) + kept.ok.load(Ordering::Relaxed);

    let log_b = a.dir.join("b.log");
    let started = Instant::now();
    let mut b = start_next(&a.dir.join("stickgate.toml"), &log_b);
    let (ready, gone, code) = tokio::task::block_in_place(|| ready_and_gone(&log_b, &mut a.proc));
    let during = fresh.ok.load(Ordering::Relaxed) + kept.ok.load(Ordering::Relaxed) - before;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.unwrap();
    }
    let handover = gone.saturating_duration_since(ready);
    println!(
        "B started -> ready {:?}, B ready -> A gone {handover:?}; requests from B's start to A's exit: {during}",
        ready - started
    );
    println!("new connection per request: {}", fresh.line());
    println!("keep-alive: {}", kept.line());
    assert_eq!(code, Some(0), "A's exit code; A's log:\n{}", a.logs());
    assert!(
        handover < SHUTDOWN + Duration::from_secs(1),
        "A drained for {handover:?}"
    );
    assert!(
        fresh.clean() && kept.clean(),
        "{} / {}\nA:\n{}\nB:\n{}",
        fresh.line(),
        kept.line(),
        a.logs(),
        std::fs::read_to_string(&log_b).unwrap_or_default()
    );
    assert!(during > 0, "no request ran during the handover");

    // B serves on A's ports, with A's sessions and A's backend states.
    assert!(b.child.try_wait().unwrap().is_none(), "B exited");
    let home = still_home(&a, &sessions).await;
    println!(
        "sessions kept: {home}/{} ({:.0} %)",
        sessions.len(),
        100.0 * home as f64 / sessions.len() as f64
    );
    assert_eq!(home, sessions.len(), "sessions lost their node through B");
    assert_eq!(
        a.backend_status("tomcat2").await["state"],
        "draining",
        "B's admin API"
    );
    assert_eq!(a.backend_status("tomcat1").await["state"], "active");
    let st = a.status().await;
    assert!(
        st["store"]["sessions"].as_u64().unwrap() >= 200,
        "{}",
        st["store"]
    );
    assert!(std::fs::read_to_string(&log_b)
        .unwrap()
        .contains("sessions taken over"));
    b.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_cannot_start_leaves_the_old_one_serving() {
    let sock = sock_path();
    let (_b1, _b2, mut a) = cluster(&sock);
    let sessions = learn(&a, 20).await;
    let cfg = a.dir.join("stickgate.toml");
    let good = std::fs::read_to_string(&cfg).unwrap();

    // A config that does not load: B never reaches the socket.
    let broken = a.dir.join("broken.toml");
    std::fs::write(&broken, format!("{good}\n[no_such_section]\nx = 1\n")).unwrap();
    let out = run_to_end(&broken);
    assert_eq!(out.0, Some(2), "exit code; stderr: {}", out.1);
    assert_eq!(out.1.trim().lines().count(), 1, "one line: {}", out.1);
    assert!(out.1.contains("no_such_section"), "{}", out.1);

    // A config that loads, but B fails after A handed its sockets over
    // (an added address is taken): A sees the takeover fail and serves on.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = taken.local_addr().unwrap();
    let clash = a.dir.join("clash.toml");
    let text = good.replacen(
        &format!("listen = [\"127.0.0.1:{}\"]", a.port),
        &format!("listen = [\"127.0.0.1:{}\", \"{extra}\"]", a.port),
        1,
    );
    assert_ne!(text, good, "config layout changed");
    std::fs::write(&clash, text).unwrap();
    let out = run_to_end(&clash);
    assert_eq!(out.0, Some(2), "exit code; stderr: {}", out.1);
    let last = out.1.trim().lines().last().unwrap_or_default().to_owned();
    assert!(last.contains(&extra.to_string()), "{last}");

    assert!(a.is_running(), "A stopped:\n{}", a.logs());
    assert_eq!(
        still_home(&a, &sessions).await,
        sessions.len(),
        "A lost sessions"
    );
    let logs = a.logs();
    assert!(logs.contains("takeover by a new process failed"), "{logs}");
    // And A can still be taken over afterwards.
    let mut b = start_next(&cfg, &a.dir.join("b.log"));
    let (code, _) = tokio::task::block_in_place(|| wait_exit(&mut a.proc, Duration::from_secs(30)));
    assert_eq!(code, Some(0));
    assert_eq!(still_home(&a, &sessions).await, sessions.len());
    b.kill();
}

/// Run `stickgate run` to its end (bounded): exit code and stderr.
fn run_to_end(cfg: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(stickgate_bin())
        .args(["run", "--config"])
        .arg(cfg)
        .env("STICKGATE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            return (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("stickgate run {} did not exit", cfg.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_takeovers_in_a_row() {
    let sock = sock_path();
    let (_b1, _b2, mut a) = cluster(&sock);
    let sessions = learn(&a, 40).await;
    let cfg = a.dir.join("stickgate.toml");
    let mut b = start_next(&cfg, &a.dir.join("b.log"));
    let (code, _) = tokio::task::block_in_place(|| wait_exit(&mut a.proc, Duration::from_secs(30)));
    assert_eq!(code, Some(0), "A:\n{}", a.logs());
    let more = learn(&a, 10).await; // learned by B
    let mut c = start_next(&cfg, &a.dir.join("c.log"));
    let (code, _) = tokio::task::block_in_place(|| wait_exit(&mut b, Duration::from_secs(30)));
    let b_log = std::fs::read_to_string(a.dir.join("b.log")).unwrap_or_default();
    assert_eq!(code, Some(0), "B:\n{b_log}");
    assert!(c.child.try_wait().unwrap().is_none(), "C exited");
    let all: Vec<_> = sessions.iter().chain(&more).cloned().collect();
    assert_eq!(
        still_home(&a, &all).await,
        all.len(),
        "sessions lost on the way A -> B -> C"
    );
    assert!(sock.exists(), "C listens on the takeover socket");
    c.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_finishes_on_the_old_process() {
    let sock = sock_path();
    let (_b1, _b2, mut a) = cluster(&sock);
    let url = format!("ws://127.0.0.1:{}/ws", a.port);
    let (mut ws, mut b) = websocket_then_takeover(&a, &url).await;
    // New requests go to B; the tunnel stays on A, which waits for it.
    assert_eq!(get(&a.url("/"), None).await.status, 200);
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let m = format!("during {i}");
        ws.send(Message::text(m.clone())).await.unwrap();
        assert_eq!(
            next_text(&mut ws).await,
            m,
            "the tunnel broke during the handover"
        );
    }
    assert!(a.is_running(), "A left before its tunnel ended");
    ws.close(None).await.unwrap();
    let closed = Instant::now();
    // Read the node's Close answer; the tunnel then ends on both sides.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    drop(ws);
    let (code, gone) = tokio::task::block_in_place(|| wait_exit(&mut a.proc, SHUTDOWN));
    println!("A exited {:?} after the tunnel closed", gone - closed);
    assert_eq!(code, Some(0), "A:\n{}", a.logs());
    b.kill();
}

/// A WebSocket that outlives the old process's `shutdown_timeout` is
/// closed cleanly: Close 1001 ("going away") shortly before the deadline,
/// then A exits 0; the client reconnects through B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_open_at_the_deadline_gets_close_1001() {
    let sock = sock_path();
    let (_b1, _b2, mut a) = cluster(&sock);
    let url = format!("ws://127.0.0.1:{}/ws", a.port);
    let (mut ws, mut b) = websocket_then_takeover(&a, &url).await;
    let handed = Instant::now();
    // The client stays silent; A must not keep it past its deadline.
    let close = tokio::time::timeout(SHUTDOWN + Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(c))) => return c,
                Some(Ok(_)) => continue,
                other => panic!("no Close frame before the connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("no Close within the shutdown deadline");
    let at = handed.elapsed();
    let code = close.map(|c| u16::from(c.code));
    assert_eq!(code, Some(1001), "Close code");
    assert!(
        at < SHUTDOWN + Duration::from_secs(1),
        "closed after {at:?}"
    );
    let (exit, _) = tokio::task::block_in_place(|| wait_exit(&mut a.proc, Duration::from_secs(5)));
    assert_eq!(exit, Some(0), "A:\n{}", a.logs());
    let (mut again, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("a new websocket through B");
    again.send(Message::text("after")).await.unwrap();
    assert_eq!(next_text(&mut again).await, "after");
    b.kill();
}

/// A WebSocket open through A (one message echoed), then B started and
/// taken over: the tunnel is still on A.
async fn websocket_then_takeover(
    a: &Gate,
    url: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Proc,
) {
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("handshake timed out")
    .expect("websocket through A");
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "before");
    let log_b = a.dir.join("b.log");
    let b = start_next(&a.dir.join("stickgate.toml"), &log_b);
    tokio::task::block_in_place(|| {
        wait_log(
            &log_b,
            "took over from the previous process",
            Duration::from_secs(30),
        )
    });
    (ws, b)
}

/// The next text message, within 10 s.
async fn next_text<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.as_str().to_owned(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no text message: {other:?}"),
        }
    }
    panic!("no text message within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_take_over() {
    let sock = sock_path();
    let (_b1, _b2, mut a) = cluster(&sock);
    if rustix_uid() != 0 {
        eprintln!("not root: the peer-credential refusal is covered by the unit test only");
        return;
    }
    // Open the socket to everyone for this test, so only the peer
    // credential check stands between a stranger and the listeners.
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let script = format!(
        "import os, socket, struct\n\
         os.setgid(65534); os.setuid(65534)\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
         s.settimeout(5)\n\
         s.connect({path:?})\n\
         p = b'SGTAKEOV' + struct.pack('>HI', 1, os.getpid())\n\
         try:\n\
         \x20   s.sendall(bytes([1]) + struct.pack('>I', len(p)) + p)\n\
         \x20   got = s.recv(100)\n\
         except (BrokenPipeError, ConnectionResetError):\n\
         \x20   got = b''\n\
         print(len(got))\n",
        path = sock.display().to_string()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(said.trim(), "0", "a stranger got bytes back");
    assert!(
        a.logs()
            .contains("takeover refused: the peer runs as another user"),
        "{}",
        a.logs()
    );
    assert!(a.is_running());
    assert_eq!(get(&a.url("/"), None).await.status, 200);
}

/// This process's user id.
fn rustix_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The documented systemd upgrade (`systemctl kill -s USR2 --kill-whom=main
/// stickgate`) without systemd: the test plays the service manager on
/// NOTIFY_SOCKET. SIGUSR2 makes A start its own binary again; that child
/// takes over, A names it the main process (MAINPID=) and exits 0, and
/// the child says READY=1 and serves A's sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_the_new_binary_which_takes_over_and_becomes_the_main_process() {
    let sock = sock_path();
    let b1 = Backend::start("tomcat1", &["--no-suffix"]);
    let b2 = Backend::start("tomcat2", &["--no-suffix"]);
    let dir = tempdir();
    let notify = std::os::unix::net::UnixDatagram::bind(dir.join("notify.sock")).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.join("stickgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n{}[admin]\nlisten = \"127.0.0.1:{admin}\"\n{FAST_HEALTH}{}{}",
            server_keys(&sock),
            b1.toml(),
            b2.toml()
        ),
    )
    .unwrap();
    let log = dir.join("stickgate.log");
    let mut a = Proc {
        child: Command::new(stickgate_bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .env("NOTIFY_SOCKET", dir.join("notify.sock"))
            .env("STICKGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    };
    let mut seen = Vec::new();
    let mut wait_note = |prefix: &str| -> String {
        let end = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.push(msg.clone());
                if let Some(l) = msg.lines().find(|l| l.starts_with(prefix)) {
                    return l.to_owned();
                }
            }
        }
        panic!("no {prefix} notification; got {seen:?}");
    };
    tokio::task::block_in_place(|| wait_note("READY=1"));
    let gate = Gate {
        port,
        admin_port: admin,
        proc: Proc {
            child: Command::new("true").spawn().unwrap(),
        },
        dir: dir.clone(),
        log: log.clone(),
    };
    let sessions = learn(&gate, 30).await;

    a.signal("USR2");
    let main_pid = tokio::task::block_in_place(|| {
        let l = wait_note("MAINPID=");
        wait_note("READY=1");
        l
    });
    let pid: u32 = main_pid["MAINPID=".len()..].parse().unwrap();
    let _successor = KillOnDrop(pid);
    assert_ne!(pid, a.pid());
    let (code, _) =
        tokio::task::block_in_place(|| wait_exit(&mut a, SHUTDOWN + Duration::from_secs(5)));
    assert_eq!(
        code,
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let alive = Command::new("kill")
        .args(["-0", &pid.to_string()])
        .status()
        .unwrap();
    assert!(alive.success(), "the new main process {pid} is not running");
    let home = still_home(&gate, &sessions).await;
    assert_eq!(
        home,
        sessions.len(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// `curl` over TLS with the test CA: the status code it got.
fn curl_tls(port: u16, ca: &Path) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// TLS listeners travel like plain ones; an address the new config adds is
/// bound, one it drops is closed once the old process is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listeners_are_handed_over_and_changed_addresses_are_bound_or_closed() {
    let dir = tempdir();
    let ca = tls::Ca::new(&dir);
    let leaf = ca.leaf(&dir, "gate", &["localhost"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let sock = sock_path();
    let b1 = Backend::start("tomcat1", &["--no-suffix"]);
    let b2 = Backend::start("tomcat2", &["--no-suffix"]);
    let backends = format!("{}{}", b1.toml(), b2.toml());
    let (mut a, tls_port) = tls::tls_gate(&[leaf], &backends, &server_keys(&sock));
    assert_eq!(curl_tls(tls_port, &ca.pem), "200", "TLS through A");
    let sessions = learn(&a, 20).await;

    // B adds a plain address.
    let cfg = a.dir.join("stickgate.toml");
    let original = std::fs::read_to_string(&cfg).unwrap();
    let extra = free_port();
    let wider = original.replacen(
        &format!("listen = [\"127.0.0.1:{}\"]", a.port),
        &format!("listen = [\"127.0.0.1:{}\", \"127.0.0.1:{extra}\"]", a.port),
        1,
    );
    assert_ne!(wider, original, "config layout changed");
    let cfg_b = a.dir.join("b.toml");
    std::fs::write(&cfg_b, wider).unwrap();
    let mut b = start_next(&cfg_b, &a.dir.join("b.log"));
    let (code, _) = tokio::task::block_in_place(|| wait_exit(&mut a.proc, Duration::from_secs(30)));
    assert_eq!(code, Some(0), "A:\n{}", a.logs());
    assert_eq!(curl_tls(tls_port, &ca.pem), "200", "TLS through B");
    let on_extra = get(&format!("http://127.0.0.1:{extra}/"), None).await;
    assert_eq!(on_extra.status, 200, "B's added address");
    assert_eq!(still_home(&a, &sessions).await, sessions.len());

    // C has the original config again: the added address goes away.
    let mut c = start_next(&cfg, &a.dir.join("c.log"));
    let (code, _) = tokio::task::block_in_place(|| wait_exit(&mut b, Duration::from_secs(30)));
    let c_log = std::fs::read_to_string(a.dir.join("c.log")).unwrap_or_default();
    assert_eq!(code, Some(0), "B exit");
    assert!(c.child.try_wait().unwrap().is_none(), "C exited:\n{c_log}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", extra)).is_err(),
        "the dropped address still accepts"
    );
    assert!(c_log.contains("address no longer configured"), "{c_log}");
    assert_eq!(curl_tls(tls_port, &ca.pem), "200", "TLS through C");
    assert_eq!(still_home(&a, &sessions).await, sessions.len());
    c.kill();
}

/// A socket file whose process is gone (a crash, a kill -9) is no
/// obstacle: the next start binds normally and listens there itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_file_is_replaced_at_start() {
    let sock = sock_path();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let (_b1, _b2, mut a) = cluster(&sock);
    assert!(a.logs().contains("stale takeover socket"), "{}", a.logs());
    let sessions = learn(&a, 10).await;
    let mut b = start_next(&a.dir.join("stickgate.toml"), &a.dir.join("b.log"));
    let (code, _) = tokio::task::block_in_place(|| wait_exit(&mut a.proc, Duration::from_secs(30)));
    assert_eq!(code, Some(0), "A did not hand over:\n{}", a.logs());
    assert_eq!(still_home(&a, &sessions).await, sessions.len());
    b.kill();
}

/// A process this test did not spawn itself (A's child), killed when the
/// test ends, whether it passed or not.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}
