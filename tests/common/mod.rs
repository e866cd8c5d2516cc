//! Shared drill helpers: real demo backends and real `stickgate` processes
//! on free loopback ports, and a small HTTP client.
#![allow(dead_code)]

pub mod tls;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound then released), chosen below the kernel's
/// ephemeral range (32768-60999 by default): a port from `bind(:0)` comes
/// from that range, where the many outgoing connections of a load drill
/// can take it as their source port before the process under test binds
/// it. A port is handed out once per test process, so tests running side
/// by side never get the same one before either has bound it.
///
/// The port is free for UDP as well: the multicast drills bind one port for
/// both (datagrams and full-state transfer), and take theirs from here too.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = rand::random_range(10_000..32_000);
        let free = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free && claim(&[port]) {
            return port;
        }
    }
    panic!("no free loopback port in 10000..32000")
}

/// Record `ports` as handed out; false if any already was.
fn claim(ports: &[u16]) -> bool {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    if ports.iter().any(|p| given.contains(p)) {
        return false;
    }
    given.extend_from_slice(ports);
    true
}

/// A port for a Redis Cluster node: the node also binds its cluster bus
/// on port + 10000, so both must be free and below the ephemeral range.
pub fn free_cluster_port() -> u16 {
    for _ in 0..1000 {
        let port = rand::random_range(10_000..22_000);
        let both = TcpListener::bind(("127.0.0.1", port))
            .and_then(|_| TcpListener::bind(("127.0.0.1", port + 10_000)));
        if both.is_ok() && claim(&[port, port + 10_000]) {
            return port;
        }
    }
    panic!("no free loopback port pair (p, p + 10000) in 10000..32000")
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// SIGKILL now and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send a signal by name ("TERM", "INT", "STOP", "CONT"). For `STOP`,
    /// also wait until every thread is stopped: `kill` returns once the
    /// stop is under way, and on a loaded machine a thread may still run
    /// briefly, take a request and write its session before it freezes.
    pub fn signal(&self, sig: &str) {
        signal_pid(self.pid(), sig);
    }

    /// The OS pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Path of the `stickgate` binary under test.
pub fn stickgate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stickgate"))
}

/// Path of the demo backend example, building it if `cargo test` has not.
pub fn backend_bin() -> PathBuf {
    let bin = stickgate_bin();
    let dir = bin.parent().unwrap();
    let ex = dir.join("examples").join("backend");
    if !ex.exists() {
        let profile_release = dir.ends_with("release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--example", "backend"]);
        if profile_release {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().unwrap().success(),
            "building examples/backend failed"
        );
    }
    ex
}

/// A running demo backend.
pub struct Backend {
    pub route: String,
    pub port: u16,
    pub proc: Proc,
}

impl Backend {
    /// Start a demo node on a free port; waits until it listens.
    /// A port taken between the check and the bind is retried elsewhere.
    pub fn start(route: &str, extra: &[&str]) -> Backend {
        for _ in 0..3 {
            match Self::try_start_on(route, free_port(), extra) {
                Ok(b) => return b,
                Err(line) if line.contains("in use") => continue,
                Err(line) => panic!("backend {route} failed: {line}"),
            }
        }
        panic!("backend {route}: ports taken three times in a row")
    }

    /// Start a demo node on a given port (restarts keep their port).
    pub fn start_on(route: &str, port: u16, extra: &[&str]) -> Backend {
        Self::try_start_on(route, port, extra)
            .unwrap_or_else(|line| panic!("backend {route} failed: {line}"))
    }

    fn try_start_on(route: &str, port: u16, extra: &[&str]) -> Result<Backend, String> {
        let mut child = Command::new(backend_bin())
            .args(["--listen", &format!("127.0.0.1:{port}"), "--route", route])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start demo backend");
        let stderr = child.stderr.take().unwrap();
        let mut line = String::new();
        BufReader::new(stderr).read_line(&mut line).unwrap();
        let proc = Proc { child };
        if !line.contains("listening") {
            return Err(line);
        }
        Ok(Backend {
            route: route.into(),
            port,
            proc,
        })
    }

    /// `[[backend]]` TOML for this node.
    pub fn toml(&self) -> String {
        format!(
            "[[backend]]\nroute = \"{}\"\nurl = \"http://127.0.0.1:{}\"\n",
            self.route, self.port
        )
    }
}

/// A running balancer.
pub struct Gate {
    pub port: u16,
    pub admin_port: u16,
    pub proc: Proc,
    pub dir: PathBuf,
    pub log: PathBuf,
}

/// Fast health settings for drills, used unless a test gives its own: a
/// dead node (connection refused) is down within about 0.5 s, while a live
/// one on a busy 2-core machine needs two checks in a row over 1 s each
/// to be taken down by mistake.
pub const FAST_HEALTH: &str =
    "[health]\ninterval = \"200ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 2\n";

impl Gate {
    /// Start stickgate with `[server]`/`[admin]` filled in and `body` (any
    /// other sections, backends included) appended.
    pub fn start(body: &str) -> Gate {
        Self::start_with(body, "")
    }

    /// Like `start`, with extra `[server]` keys.
    pub fn start_with(body: &str, server_extra: &str) -> Gate {
        // Another test may bind the port between our check and stickgate's
        // bind: that start is retried on new ports, any other failure is not.
        for _ in 0..3 {
            match Self::try_start(body, server_extra) {
                Ok(g) => return g,
                Err(logs) if logs.contains("Address already in use") => continue,
                Err(logs) => panic!("stickgate did not listen: {logs}"),
            }
        }
        panic!("stickgate did not listen: ports taken three times in a row")
    }

    fn try_start(body: &str, server_extra: &str) -> Result<Gate, String> {
        let port = free_port();
        let admin_port = free_port();
        let toml = format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n{server_extra}\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n{body}"
        );
        let dir = tempdir();
        let cfg = dir.join("stickgate.toml");
        std::fs::write(&cfg, toml).unwrap();
        let log = dir.join("stickgate.log");
        let child = Command::new(stickgate_bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .env("STICKGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start stickgate");
        let gate = Gate {
            port,
            admin_port,
            proc: Proc { child },
            dir,
            log,
        };
        let mut gate = gate;
        // The admin listener too: a test's first call may be to the API, and
        // a lost admin port only shows as the process exiting after the
        // proxy port already answered.
        wait_for(Duration::from_secs(10), || {
            let up = |p: u16| TcpStream::connect(("127.0.0.1", p)).is_ok();
            (up(port) && up(admin_port)) || !gate.is_running()
        })
        .map_err(|_| gate.logs())?;
        if !gate.is_running() {
            return Err(gate.logs());
        }
        Ok(gate)
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// What stickgate logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        let r = get(
            &format!("http://127.0.0.1:{}/api/status", self.admin_port),
            None,
        )
        .await;
        serde_json::from_slice(&r.body).expect("status JSON")
    }

    /// Health of one backend per the status API ("up"/"down").
    pub async fn health(&self, route: &str) -> String {
        let s = self.status().await;
        s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["route"] == route)
            .map(|b| b["health"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    /// Wait until the status API shows `route` with health `want`.
    pub async fn wait_health(&self, route: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.health(route).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{route} never became {want}: {}", self.logs());
    }
}

/// A fresh directory under the system temp dir, removed when the test
/// process exits unless the test that made it failed: a failed drill's
/// config and logs stay for reading (their paths are printed at exit).
pub fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "stickgate-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    temp_dirs::register(&d);
    d
}

/// Temp dirs made by this test process, and the tests that panicked.
mod temp_dirs {
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, Once};

    /// (dir, name of the test thread that made it).
    static MADE: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());
    /// Names of threads that panicked (libtest names them after the test).
    static FAILED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or("?").to_owned()
    }

    /// Remember `dir` for removal at exit; the first call installs the
    /// panic hook and the exit handler.
    pub fn register(dir: &Path) {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                lock(&FAILED).push(thread_name());
                previous(info)
            }));
            // SAFETY: `remove_all` takes no arguments and does not panic (it
            // ignores every error), so nothing unwinds out of the handler.
            #[allow(unsafe_code)]
            unsafe {
                libc::atexit(remove_all)
            };
        });
        lock(&MADE).push((dir.to_owned(), thread_name()));
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    extern "C" fn remove_all() {
        let failed = lock(&FAILED).clone();
        for (dir, test) in lock(&MADE).drain(..) {
            if failed.contains(&test) {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "kept {} of failed test {test}",
                    dir.display()
                );
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// Send `sig` (by name) to process `pid`, as [`Proc::signal`] does.
pub fn signal_pid(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
    if sig == "STOP" {
        wait_for(Duration::from_secs(5), || all_threads_stopped(pid))
            .expect("the process's threads did not all stop");
    }
}

/// Whether every thread of process `pid` is in state `T` (stopped).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
            // The state follows the command name, which is in parentheses.
            st.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        })
    })
}

/// Poll `f` every 20 ms until true or `timeout`.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), ()> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(())
}

/// A collected response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON ({}): {:?}", self.status, self.body))
    }

    /// Value of the session cookie (`JSESSIONID` by default) set by this
    /// response, if any.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.to_string())
    }

    /// All Set-Cookie header values.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }
}

/// A keep-alive HTTP client (one per test is enough).
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http()
}

/// One request with an optional `Cookie` header, on a fresh client.
pub async fn get(url: &str, cookie: Option<&str>) -> Resp {
    request(&client(), "GET", url, cookie, Bytes::new()).await
}

/// One request on `c`; panics on transport errors (tests assert statuses).
pub async fn request(
    c: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    cookie: Option<&str>,
    body: Bytes,
) -> Resp {
    try_request(c, method, url, cookie, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Like `request` but returns transport errors.
pub async fn try_request(
    c: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    cookie: Option<&str>,
    body: Bytes,
) -> Result<Resp, String> {
    let mut b = http::Request::builder().method(method).uri(url);
    if let Some(ck) = cookie {
        b = b.header(http::header::COOKIE, ck);
    }
    let req = b.body(Full::new(body)).map_err(|e| e.to_string())?;
    let res = tokio::time::timeout(Duration::from_secs(30), c.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// Send raw bytes on a new connection and read until the server closes or
/// `timeout`; for malformed-request drills.
pub fn raw(port: u16, bytes: &[u8], timeout: Duration) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resident set size of a process in KiB (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A process's RSS once it settled (the lowest of a few samples, 100 ms
/// apart), in KiB.
pub fn settled_rss(pid: u32) -> u64 {
    (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            rss_kib(pid)
        })
        .min()
        .unwrap()
}

/// A status API counter summed over every backend (`requests`,
/// `inflight`, ...).
pub fn backends_sum(status: &serde_json::Value, field: &str) -> u64 {
    status["backends"]
        .as_array()
        .expect("backends in status")
        .iter()
        .map(|b| {
            b[field]
                .as_u64()
                .unwrap_or_else(|| panic!("no {field} in {b}"))
        })
        .sum()
}

// ---------------------------------------------------------------------------
// Helpers added for the sticky / failover / bad-input / lifecycle drills.
// ---------------------------------------------------------------------------

/// A private `redis-server` on a free loopback port, killed when dropped.
pub struct Redis {
    pub port: u16,
    pub proc: Proc,
}

impl Redis {
    /// Start `redis-server --port P --save "" --appendonly no` in its own
    /// temp dir (Redis loads any dump.rdb in its cwd) and wait until it
    /// accepts TCP connections.
    pub fn start() -> Redis {
        Self::start_isolated()
    }

    /// `redis://127.0.0.1:P`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// `[[backend]]` TOML for a route with no process behind it (a port nothing
/// listens on), plus any extra keys (`weight = 2`, `domain = "A"`, ...).
pub fn dead_backend_toml(route: &str, extra: &str) -> String {
    format!(
        "[[backend]]\nroute = \"{route}\"\nurl = \"http://127.0.0.1:{}\"\n{extra}\n",
        free_port()
    )
}

impl Backend {
    /// `[[backend]]` TOML with extra keys (`weight = 3`, `state = "draining"`).
    pub fn toml_with(&self, extra: &str) -> String {
        format!("{}{extra}\n", self.toml())
    }
}

impl Gate {
    /// The status entry of one backend.
    pub async fn backend_status(&self, route: &str) -> serde_json::Value {
        let s = self.status().await;
        s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["route"] == route)
            .cloned()
            .unwrap_or_else(|| panic!("no backend {route} in status: {s}"))
    }

    /// Current session count of each route, in config order.
    pub async fn session_counts(&self) -> Vec<(String, u64)> {
        let s = self.status().await;
        s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["route"].as_str().unwrap().to_owned(),
                    b["sessions"]["current"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// Whether the stickgate process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.proc.child.try_wait(), Ok(None))
    }
}

/// One request with arbitrary extra headers (repeated names become
/// repeated header lines, e.g. several `Cookie` headers).
pub async fn request_with(
    c: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Resp {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body)).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(30), c.request(req))
        .await
        .unwrap_or_else(|_| panic!("{method} {url}: timed out"))
        .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

/// A response parsed out of `raw()` output.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResp {
    /// First value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|_| panic!("not JSON ({}): {:?}", self.status, self.body))
    }

    /// Value of the session cookie set by this response, if any.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .filter_map(|(_, v)| v.split(';').next())
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.to_string())
    }
}

/// Parse every complete HTTP/1.1 response in `text` (as returned by
/// `raw()`), honouring Content-Length and chunked framing.
pub fn parse_responses(text: &str) -> Vec<RawResp> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some((head, after)) = rest.split_once("\r\n\r\n") {
        let mut lines = head.split("\r\n");
        let Some(status) = lines
            .next()
            .filter(|l| l.starts_with("HTTP/1."))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u16>().ok())
        else {
            break;
        };
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let (body, next) = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = String::new();
            let mut r = after;
            loop {
                let Some((size, tail)) = r.split_once("\r\n") else {
                    r = "";
                    break;
                };
                let n =
                    usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap_or(0);
                if n == 0 {
                    r = tail.split_once("\r\n").map_or("", |(_, t)| t);
                    break;
                }
                let take = n.min(tail.len());
                body.push_str(&tail[..take]);
                r = tail[take..].strip_prefix("\r\n").unwrap_or(&tail[take..]);
            }
            (body, r)
        } else if let Some(n) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let take = n.min(after.len());
            (after[..take].to_owned(), &after[take..])
        } else {
            (after.to_owned(), "")
        };
        out.push(RawResp {
            status,
            headers,
            body,
        });
        rest = next;
    }
    out
}

/// The first response in `raw()` output; panics with the text if none.
pub fn parse_response(text: &str) -> RawResp {
    parse_responses(text)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no HTTP response in {text:?}"))
}

// ---------------------------------------------------------------------------
// Redis helpers for the Redis-store drills: a server on a chosen port (to
// restart one where it was), redis-cli, Sentinel and a 3-node Cluster.
// ---------------------------------------------------------------------------

/// Start `redis-server` on loopback `port` with `extra` arguments (after
/// `--port/--bind/--save ""/--appendonly no`), in `cwd` (else a fresh temp
/// dir), and wait until it accepts TCP connections. Never the test's own
/// working dir: Redis loads a `dump.rdb` it finds there at start (`--save ""`
/// does not stop that), and a replica writes one there on full sync.
fn spawn_redis(port: u16, extra: &[&str], cwd: Option<&std::path::Path>) -> Proc {
    let own;
    let cwd = match cwd {
        Some(d) => d,
        None => {
            own = tempdir();
            own.as_path()
        }
    };
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd.current_dir(cwd);
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start redis-server ({e}): `apt-get install redis-server`")
    });
    let mut proc = Proc { child };
    let up = wait_for(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if up.is_err() {
        let status = proc.child.try_wait().ok().flatten();
        panic!("redis-server did not accept connections on port {port} (exit: {status:?})");
    }
    proc
}

/// Run `redis-cli -p PORT args...` and return its stdout (trimmed). Bounded:
/// redis-cli gets `-t 5`-ish behaviour from a 10 s wall-clock kill.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): `apt-get install redis-tools`"));
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-cli -p {port} {args:?} did not finish within 10 s");
            }
        }
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Every key of the Redis on `port` matching `pattern` (`--scan`).
pub fn redis_keys(port: u16, pattern: &str) -> Vec<String> {
    redis_cli(port, &["--scan", "--pattern", pattern])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Redis {
    /// Like `start`, but in its own temp dir, so no `dump.rdb` left in the
    /// working dir is loaded and none is written there.
    pub fn start_isolated() -> Redis {
        Self::start_args(&[], None)
    }

    /// Start a plain redis-server on `port` (e.g. to restart one where it was).
    pub fn start_on(port: u16) -> Redis {
        Redis {
            port,
            proc: spawn_redis(port, &[], None),
        }
    }

    /// Start a redis-server on a free port with extra arguments, in `cwd`.
    pub fn start_args(extra: &[&str], cwd: Option<&std::path::Path>) -> Redis {
        let port = free_port();
        Redis {
            port,
            proc: spawn_redis(port, extra, cwd),
        }
    }

    /// `redis-cli -p P args...` output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// Keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        redis_keys(self.port, pattern)
    }
}

/// One `redis-server --sentinel` watching master `name`; its config file
/// lives in its own temp dir (Sentinel rewrites it).
pub struct Sentinel {
    pub port: u16,
    pub proc: Proc,
    pub dir: PathBuf,
}

impl Sentinel {
    /// Monitor `127.0.0.1:master_port` as `name`, quorum 1, down after 1 s,
    /// failover timeout 2 s; waits until it names the master.
    pub fn start(name: &str, master_port: u16) -> Sentinel {
        Self::start_with(name, master_port, "")
    }

    /// Like `start`, with extra config lines after `sentinel monitor`
    /// (e.g. `sentinel auth-pass <name> <password>\n`).
    pub fn start_with(name: &str, master_port: u16, extra: &str) -> Sentinel {
        let port = free_port();
        let dir = tempdir();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 2000\n{extra}",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server --sentinel ({e})"));
        let s = Sentinel {
            port,
            proc: Proc { child },
            dir,
        };
        let want = master_port.to_string();
        wait_for(Duration::from_secs(10), || {
            s.master_addr(name).ends_with(&want)
        })
        .unwrap_or_else(|_| {
            panic!(
                "sentinel on {port} never named master {name} at {master_port}: {:?}",
                s.master_addr(name)
            )
        });
        s
    }

    /// `host port` of the current master, as one line (empty if unknown).
    pub fn master_addr(&self, name: &str) -> String {
        if TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            return String::new();
        }
        redis_cli(self.port, &["sentinel", "get-master-addr-by-name", name])
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `redis://127.0.0.1:S`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of `n` masters (no replicas) on free loopback ports,
/// each node in its own temp dir; ready (`cluster_state:ok` on every node)
/// when `start` returns.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
    pub dirs: Vec<PathBuf>,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..n {
            let dir = tempdir();
            let port = free_cluster_port();
            let conf = dir.join(format!("nodes-{port}.conf"));
            let proc = spawn_redis(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                    "--cluster-node-timeout",
                    "2000",
                ],
                Some(&dir),
            );
            nodes.push(Redis { port, proc });
            dirs.push(dir);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = RedisCluster { nodes, dirs };
        wait_for(Duration::from_secs(15), || {
            c.nodes
                .iter()
                .all(|r| r.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        })
        .unwrap_or_else(|_| {
            let states: Vec<String> = c
                .nodes
                .iter()
                .map(|r| r.cli(&["cluster", "info"]))
                .collect();
            panic!("cluster never reached cluster_state:ok: {states:?}")
        });
        c
    }

    /// `redis://127.0.0.1:P` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }

    /// Keys matching `pattern` on each node, in node order.
    pub fn keys_per_node(&self, pattern: &str) -> Vec<Vec<String>> {
        self.nodes.iter().map(|r| r.keys(pattern)).collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.proc.kill();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The keep-alive client type of [`client`].
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// `GET /` through `gate` with an optional `JSESSIONID` value.
pub async fn hit(c: &HttpClient, gate: &Gate, id: Option<&str>) -> Resp {
    request(
        c,
        "GET",
        &gate.url("/"),
        id.map(|v| format!("JSESSIONID={v}")).as_deref(),
        Bytes::new(),
    )
    .await
}

/// The `route` a demo node answered with.
pub fn route_of(r: &Resp) -> String {
    r.json()["route"]
        .as_str()
        .unwrap_or_else(|| panic!("no route in {:?}", r.body))
        .to_owned()
}

/// A new session through the gate: (route that took it, cookie value).
pub async fn new_session(c: &HttpClient, gate: &Gate) -> (String, String) {
    let r = hit(c, gate, None).await;
    assert_eq!(r.status, 200, "new session: {:?}", r.body);
    let id = r
        .set_cookie("JSESSIONID")
        .unwrap_or_else(|| panic!("no session cookie: {:?}", r.headers));
    (route_of(&r), id)
}

/// How many of `n` new sessions through the gate landed on `route`.
pub async fn new_sessions_on(c: &HttpClient, gate: &Gate, n: usize, route: &str) -> usize {
    let mut on = 0;
    for _ in 0..n {
        if new_session(c, gate).await.0 == route {
            on += 1;
        }
    }
    on
}

/// The session's hit count a demo node answered with.
pub fn hits_of(r: &Resp) -> u64 {
    r.json()["hits"].as_u64().unwrap()
}

// ---------------------------------------------------------------------------
// Admin API helpers for the admin-API and reload drills.
// ---------------------------------------------------------------------------

/// `http://127.0.0.1:<admin port><path>`.
pub fn admin_url(gate: &Gate, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", gate.admin_port)
}

/// `POST <path>` with an empty body on the gate's admin listener.
pub async fn admin_post(gate: &Gate, path: &str) -> Resp {
    request(
        &client(),
        "POST",
        &admin_url(gate, path),
        None,
        Bytes::new(),
    )
    .await
}

/// `GET <path>` on the gate's admin listener.
pub async fn admin_get(gate: &Gate, path: &str) -> Resp {
    request(&client(), "GET", &admin_url(gate, path), None, Bytes::new()).await
}

/// Health settings for drills that need live nodes to stay up on a busy
/// machine (a 2 s timeout, down after 3 failed checks) while a dead one is
/// still seen within about a second (connection refused fails at once).
pub const STEADY_HEALTH: &str =
    "[health]\ninterval = \"200ms\"\ntimeout = \"2s\"\nrise = 1\nfall = 3\n";

/// `GET path` through `gate` with an optional `JSESSIONID` cookie value.
pub async fn get_path(c: &HttpClient, gate: &Gate, path: &str, cookie: Option<&str>) -> Resp {
    request(
        c,
        "GET",
        &gate.url(path),
        cookie.map(|v| format!("JSESSIONID={v}")).as_deref(),
        Bytes::new(),
    )
    .await
}

/// A new session through the gate that landed on `route` (round robin
/// alternates new sessions, so a few tries suffice).
pub async fn session_on(c: &HttpClient, gate: &Gate, route: &str) -> String {
    for _ in 0..10 {
        let (r, id) = new_session(c, gate).await;
        if r == route {
            return id;
        }
    }
    panic!("no new session landed on {route} in 10 tries")
}

/// The order to replay learned `(session id, route)` pairs: grouped by
/// route. Replaying in creation order would let a balancer that remembers
/// nothing pass anyway: its round robin (same phase, same backends) sends
/// each unknown id to the node that created it, by luck. Grouped, such a
/// balancer gets about half of them wrong.
pub fn replay_order(sessions: &[(String, String)]) -> Vec<&(String, String)> {
    let mut v: Vec<&(String, String)> = sessions.iter().collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

/// A TLS-only `redis-server` on a free loopback port that requires
/// `password`, with a self-signed certificate (rcgen) written to `dir`,
/// which is also its working directory. Killed when dropped.
pub struct TlsRedis {
    pub proc: Proc,
    pub port: u16,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate, to trust as a CA (`store.redis_ca_file`).
    pub ca: PathBuf,
}

impl TlsRedis {
    /// Start it and wait until it accepts TCP connections.
    pub fn start(dir: &std::path::Path, password: &str) -> TlsRedis {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("certificate");
        let (cert, key, ca) = (
            dir.join("redis.crt"),
            dir.join("redis.key"),
            dir.join("ca.pem"),
        );
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        std::fs::write(&ca, ck.cert.pem()).unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-auth-clients", "no", "--requirepass", password])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (run scripts/test.sh to install it)");
        let proc = Proc { child };
        wait_for(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .expect("TLS redis-server did not listen");
        TlsRedis {
            proc,
            port,
            cert,
            key,
            ca,
        }
    }
}
