//! Upstream response framing drills: how the balancer reads a backend's
//! HTTP/1.1 response (status line, head, Content-Length, chunked and
//! close-delimited bodies, informational answers, HEAD/204/304) and when it
//! reuses the backend connection afterwards, pinned from the outside with
//! real processes.
//!
//! The backend here is a raw TCP script ([`RawBackend`]): it writes exactly
//! the bytes a drill gives it, in pieces and with pauses when asked, and
//! records which connection carried which request, so the drills can assert
//! the decoded body byte for byte and the number of upstream connections
//! (keep-alive reuse). The client side is a raw socket too ([`Client`]),
//! which checks the balancer's own framing strictly.
//!
//! Why: the upstream HTTP/1.1 client (hyper's client connection today) is
//! to be replaced, for bodiless requests, by a hand-written exchange. These
//! drills pass against the hyper-based code and say, byte for byte, what
//! the replacement must keep doing. The balancer runs with one request
//! thread (`server.threads = 1`): upstream pools are per thread, so with
//! more threads a second client connection could land on a thread with an
//! empty pool and a connection count would prove nothing.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound on every single wait (a read, a connect) of the drills' sockets.
const WAIT: Duration = Duration::from_secs(20);

/// The route of the only backend of every drill.
const ROUTE: &str = "tomcat1";

/// The balancer's rescue probes ask this path (`health.path`); the raw
/// backend answers it by itself, outside any script.
const HEALTH_PATH: &str = "/health";

/// One thing the raw backend does while answering a request.
#[derive(Clone)]
enum Step {
    /// Write these bytes (one `write_all`).
    Write(Vec<u8>),
    /// Pause.
    Sleep(Duration),
    /// Close the connection (no further request is read on it).
    Close,
}

/// Decides the answer: (request path, request number on its connection
/// from 1) -> steps.
type Script = Arc<dyn Fn(&str, usize) -> Vec<Step> + Send + Sync>;

/// `bytes` written whole.
fn write(bytes: impl AsRef<[u8]>) -> Vec<Step> {
    vec![Step::Write(bytes.as_ref().to_vec())]
}

/// `bytes` cut at the given offsets, one write per piece, `pause` between.
fn pieces(bytes: &[u8], cuts: &[usize], pause: Duration) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain([&bytes.len()]) {
        if from > 0 {
            steps.push(Step::Sleep(pause));
        }
        steps.push(Step::Write(bytes[from..to].to_vec()));
        from = to;
    }
    steps
}

/// A 200 with a Content-Length body.
fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A scripted HTTP/1.1 backend on raw TCP: reads request heads (bodiless
/// requests only), records each request line under the connection that
/// carried it, and writes what its [`Script`] says. After the steps (unless
/// one is [`Step::Close`]) it reads the next request on the same
/// connection, as a keep-alive server does.
struct RawBackend {
    port: u16,
    /// Request lines, one list per accepted connection, in accept order.
    conns: Arc<Mutex<Vec<Vec<String>>>>,
    /// Connections accepted (rescue probes included).
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    async fn start(script: impl Fn(&str, usize) -> Vec<Step> + Send + Sync + 'static) -> Self {
        let script: Script = Arc::new(script);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (log, count) = (conns.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every
            // connection task with it.
            let mut running = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = l.accept() => {
                        let Ok((s, _)) = accepted else { break };
                        count.fetch_add(1, Ordering::SeqCst);
                        let index = {
                            let mut log = log.lock().unwrap();
                            log.push(Vec::new());
                            log.len() - 1
                        };
                        running.spawn(serve(s, index, log.clone(), script.clone()));
                    }
                    Some(_) = running.join_next(), if !running.is_empty() => {}
                }
            }
        });
        RawBackend {
            port,
            conns,
            accepted,
            task,
        }
    }

    /// `[health] enabled = false` (no active checks: a script never has to
    /// answer them) and this node as the only backend.
    fn toml(&self) -> String {
        format!(
            "[health]\nenabled = false\n[[backend]]\nroute = \"{ROUTE}\"\nurl = \"http://127.0.0.1:{}\"\n",
            self.port
        )
    }

    /// Request lines per connection that carried any request but rescue
    /// probes. Those come on connections of their own, and may come at any
    /// time on a slow machine (a response head later than
    /// `health.suspect_after` sends one), so drills count these rather
    /// than every accepted connection.
    fn app_conns(&self) -> Vec<Vec<String>> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.iter().any(|l| !is_probe(l)))
            .cloned()
            .collect()
    }

    /// Every request line but the probes, in order of connection.
    fn requests(&self) -> Vec<String> {
        self.app_conns().concat()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_probe(request_line: &str) -> bool {
    request_line.split(' ').nth(1) == Some(HEALTH_PATH)
}

/// One backend connection: read a head, run its script, repeat.
async fn serve(mut s: TcpStream, index: usize, log: Arc<Mutex<Vec<Vec<String>>>>, script: Script) {
    let mut buf = Vec::new();
    let mut n = 0;
    while let Some(head) = read_head(&mut s, &mut buf).await {
        let line = head.split("\r\n").next().unwrap_or_default().to_owned();
        log.lock().unwrap()[index].push(line.clone());
        let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
        if path == HEALTH_PATH {
            let probe = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
            let _ = s.write_all(probe.as_bytes()).await;
            return;
        }
        n += 1;
        for step in script(&path, n) {
            match step {
                Step::Write(b) => {
                    if s.write_all(&b).await.is_err() {
                        return;
                    }
                }
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Close => return,
            }
        }
    }
}

/// The next request head from `s` (bytes after it stay in `buf`); `None`
/// at end of stream, on an error, after [`WAIT`] of silence, or past 64 KiB.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return Some(String::from_utf8_lossy(&head).into_owned());
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response as the balancer framed it for the client.
#[derive(Debug)]
struct Resp {
    /// e.g. `HTTP/1.1 200 OK`.
    status_line: String,
    status: u16,
    /// In order, names lower-cased.
    headers: Vec<(String, String)>,
    /// Decoded (chunked framing removed).
    body: Vec<u8>,
    /// Trailer fields of a chunked body, as sent.
    trailers: Vec<String>,
    /// Heads of informational (1xx) responses received before this one.
    informational: Vec<String>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A response that did not arrive whole: why, and every byte received.
#[derive(Debug)]
struct Cut {
    why: String,
    wire: String,
}

/// A raw keep-alive client connection to the balancer, strict about the
/// framing of what comes back.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    /// Bytes of the response being read, as received.
    wire: Vec<u8>,
}

impl Client {
    async fn open(port: u16) -> Client {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("connect timed out")
            .expect("connect to the balancer");
        Client {
            s,
            buf: Vec::new(),
            wire: Vec::new(),
        }
    }

    /// Send `METHOD path` with `fields` (whole lines, each ending in CRLF)
    /// and read up to the final response.
    async fn try_fetch(&mut self, method: &str, path: &str, fields: &str) -> Result<Resp, Cut> {
        let req = format!("{method} {path} HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
        self.s.write_all(req.as_bytes()).await.map_err(|e| Cut {
            why: format!("write: {e}"),
            wire: String::new(),
        })?;
        let mut informational = Vec::new();
        loop {
            self.wire.clear();
            let mut r = self.response(method == "HEAD").await.map_err(|why| Cut {
                why,
                wire: String::from_utf8_lossy(&[&self.wire[..], &self.buf[..]].concat())
                    .into_owned(),
            })?;
            if (100..200).contains(&r.status) {
                informational.push(String::from_utf8_lossy(&self.wire).into_owned());
                continue;
            }
            r.informational = informational;
            return Ok(r);
        }
    }

    /// Like `try_fetch`, panicking on a response that did not arrive whole.
    async fn fetch(&mut self, method: &str, path: &str) -> Resp {
        self.fetch_with(method, path, "").await
    }

    async fn fetch_with(&mut self, method: &str, path: &str, fields: &str) -> Resp {
        self.try_fetch(method, path, fields)
            .await
            .unwrap_or_else(|c| panic!("{method} {path}: {}; received {:?}", c.why, c.wire))
    }

    async fn get(&mut self, path: &str) -> Resp {
        self.fetch("GET", path).await
    }

    /// One response: head, then the body as its framing says.
    async fn response(&mut self, head_request: bool) -> Result<Resp, String> {
        let status_line = self.line().await?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let l = self.line().await?;
            if l.is_empty() {
                break;
            }
            let (k, v) = l
                .split_once(':')
                .ok_or_else(|| format!("bad field {l:?}"))?;
            headers.push((k.to_ascii_lowercase(), v.trim().to_owned()));
        }
        let mut r = Resp {
            status_line,
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
            informational: Vec::new(),
        };
        if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
            return Ok(r);
        }
        if r.all("transfer-encoding")
            .iter()
            .any(|v| v.contains("chunked"))
        {
            loop {
                let size_line = self.line().await?;
                let hex = size_line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(hex, 16)
                    .map_err(|_| format!("bad chunk size {size_line:?}"))?;
                if size == 0 {
                    break;
                }
                r.body.extend(self.take(size).await?);
                if self.take(2).await? != b"\r\n" {
                    return Err("no CRLF after a chunk".into());
                }
            }
            loop {
                let l = self.line().await?;
                if l.is_empty() {
                    break;
                }
                r.trailers.push(l);
            }
        } else if let Some(len) = r.header("content-length") {
            let len: usize = len.parse().map_err(|_| format!("bad length {len:?}"))?;
            r.body = self.take(len).await?;
        } else {
            while self.fill().await? > 0 {}
            r.body = std::mem::take(&mut self.buf);
            self.wire.extend_from_slice(&r.body);
        }
        Ok(r)
    }

    /// Read more into `buf`; 0 at end of stream.
    async fn fill(&mut self) -> Result<usize, String> {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(WAIT, self.s.read(&mut chunk)).await {
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Ok(Err(e)) => Err(format!("read: {e}")),
            Err(_) => Err(format!("nothing for {WAIT:?}")),
        }
    }

    /// Exactly `n` bytes.
    async fn take(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(format!("closed {} bytes short", n - self.buf.len()));
            }
        }
        let out: Vec<u8> = self.buf.drain(..n).collect();
        self.wire.extend_from_slice(&out);
        Ok(out)
    }

    /// One CRLF-terminated line, without the CRLF.
    async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let l = self.take(end + 2).await?;
                return Ok(String::from_utf8_lossy(&l[..end]).into_owned());
            }
            if self.fill().await? == 0 {
                let part = String::from_utf8_lossy(&self.buf).into_owned();
                self.wire.append(&mut self.buf);
                return Err(format!("closed mid-line after {part:?}"));
            }
        }
    }

    /// Whether the connection stays open and silent for `within` (no
    /// stray byte, no close).
    async fn quiet_for(&mut self, within: Duration) -> bool {
        let mut b = [0u8; 1];
        self.buf.is_empty()
            && tokio::time::timeout(within, self.s.read(&mut b))
                .await
                .is_err()
    }
}

/// A balancer in front of `b` with one request thread.
fn gate_for(b: &RawBackend) -> Gate {
    Gate::start_with(&b.toml(), "threads = 1")
}

/// The backend is still up and usable: the status API says so.
async fn assert_up(gate: &Gate) {
    let s = gate.backend_status(ROUTE).await;
    assert_eq!(s["health"], "up", "{s}");
    assert_eq!(s["state"], "active", "{s}");
}

const PAUSE: Duration = Duration::from_millis(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_extensions_and_trailers_are_decoded_away() {
    let b = RawBackend::start(|path, _| match path {
        "/ext" => write(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;ext=1\r\nhello\r\n\
             6;a=\"b c\";flag\r\n world\r\n\
             0;last=yes\r\n\r\n",
        ),
        "/trailers" => write(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;ext=1\r\nhello\r\n6\r\n world\r\n\
             0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n",
        ),
        _ => write(ok("next")),
    })
    .await;
    let gate = gate_for(&b);
    let mut c = Client::open(gate.port).await;
    let r = c.get("/ext").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "hello world");
    // The extensions were parsed to the end of their lines: the
    // connection carries the next request.
    let next = c.get("/next").await;
    assert_eq!((next.status, next.text().as_str()), (200, "next"));
    assert_eq!(b.app_conns(), [["GET /ext HTTP/1.1", "GET /next HTTP/1.1"]]);

    let r = c.get("/trailers").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "hello world");
    // The trailer section is consumed upstream, not passed on (the client
    // did not ask for trailers with `TE: trailers`).
    assert!(r.trailers.is_empty(), "{r:?}");
    assert_eq!(r.header("x-trailer"), None, "{r:?}");
    let next = c.get("/next").await;
    assert_eq!((next.status, next.text().as_str()), (200, "next"));
    // Not asserted: whether the connection that carried trailers is reused
    // (today it is not; hyper's body ends with the trailers frame and the
    // exchange never sees the end that returns it to the pool).
    assert_eq!(
        b.requests(),
        [
            "GET /ext HTTP/1.1",
            "GET /next HTTP/1.1",
            "GET /trailers HTTP/1.1",
            "GET /next HTTP/1.1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_in_tiny_pieces_is_exact() {
    let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n6\r\n world\r\n10\r\n, in tiny pieces\r\n0\r\n\r\n";
    let body_at = find(resp, b"\r\n\r\n").unwrap() + 4;
    // Every 3 bytes, plus cuts inside "\r\n" after a chunk, inside the
    // two-digit size line "10", and between "0\r\n" and the final CRLF.
    let tail = &resp[body_at..];
    let mut cuts: Vec<usize> = (1..resp.len()).step_by(3).collect();
    let after_hello = body_at + find(tail, b"hello").unwrap() + 5;
    let in_size = body_at + find(tail, b"10\r\n").unwrap() + 1;
    let last = resp.len() - 2;
    cuts.extend([after_hello + 1, in_size, last]);
    cuts.sort();
    cuts.dedup();
    let steps = pieces(resp, &cuts, PAUSE);
    let b = RawBackend::start(move |_, _| steps.clone()).await;
    let gate = gate_for(&b);
    let mut c = Client::open(gate.port).await;
    let r = c.get("/tiny").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "hello world, in tiny pieces");
    let again = c.get("/tiny").await;
    assert_eq!(again.text(), "hello world, in tiny pieces");
    assert_eq!(b.app_conns().len(), 1, "{:?}", b.app_conns());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_body_in_three_pieces_is_exact() {
    let b = RawBackend::start(|_, _| {
        let mut steps = write("HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\nfirst");
        steps.extend([
            Step::Sleep(Duration::from_millis(150)),
            Step::Write(b"-mid-".to_vec()),
            Step::Sleep(Duration::from_millis(150)),
            Step::Write(b"last!".to_vec()),
        ]);
        steps
    })
    .await;
    let gate = gate_for(&b);
    let mut c = Client::open(gate.port).await;
    let r = c.get("/three").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "first-mid-last!");
    let again = c.get("/three").await;
    assert_eq!(again.text(), "first-mid-last!");
    assert_eq!(b.app_conns().len(), 1, "{:?}", b.app_conns());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_body_is_whole_and_its_connection_not_reused() {
    let b = RawBackend::start(|path, _| {
        let mut steps = write(format!(
            "HTTP/1.1 200 OK\r\nX-Path: {path}\r\n\r\nuntil the "
        ));
        steps.extend([
            Step::Sleep(Duration::from_millis(50)),
            Step::Write(b"very end".to_vec()),
            Step::Close,
        ]);
        steps
    })
    .await;
    let gate = gate_for(&b);
    let mut c = Client::open(gate.port).await;
    let r = c.get("/a").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "until the very end");
    // Re-framed for the client, which keeps its connection.
    assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
    assert_eq!(r.header("x-path"), Some("/a"));
    let mut c2 = Client::open(gate.port).await;
    let r = c2.get("/b").await;
    assert_eq!(r.text(), "until the very end");
    assert_eq!(r.header("x-path"), Some("/b"));
    assert_eq!(
        b.app_conns(),
        [["GET /a HTTP/1.1"], ["GET /b HTTP/1.1"]],
        "a close-delimited connection is never reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_is_reused() {
    let b = RawBackend::start(|path, n| write(ok(&format!("{path} #{n}")))).await;
    let gate = gate_for(&b);
    let mut c = Client::open(gate.port).await;
    let first = c.get("/one").await;
    let second = c.get("/two").await;
    assert_eq!((first.status, first.text().as_str()), (200, "/one #1"));
    assert_eq!((second.status, second.text().as_str()), (200, "/two #2"));
    // The pool is the balancer's, not the client connection's.
    let third = Client::open(gate.port).await.get("/three").await;
    assert_eq!((third.status, third.text().as_str()), (200, "/three #3"));
    assert_eq!(
        b.app_conns(),
        [[
            "GET /one HTTP/1.1",
            "GET /two HTTP/1.1",
            "GET /three HTTP/1.1"
        ]],
        "{} connections accepted",
        b.accepted()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_answers_are_reused_only_with_keep_alive() {
    // The backend never closes: only the balancer decides about reuse.
    let b = RawBackend::start(|path, n| {
        let body = format!("{path} #{n}");
        let keep = if path.starts_with("/keep") {
            "Connection: keep-alive\r\n"
        } else {
            ""
        };
        write(format!(
            "HTTP/1.0 200 OK\r\n{keep}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    })
    .await;
    let gate = gate_for(&b);
    let mut c = Client::open(gate.port).await;
    let r = c.get("/plain1").await;
    assert_eq!((r.status, r.text().as_str()), (200, "/plain1 #1"));
    // Today the backend's version reaches the client's status line (hyper
    // writes the response's version), with the length kept and the client
    // connection left open. Pinned so that a change is a decision.
    assert_eq!(r.status_line, "HTTP/1.0 200 OK");
    assert_eq!(r.header("content-length"), Some("10"));
    let r = c.get("/plain2").await;
    assert_eq!((r.status, r.text().as_str()), (200, "/plain2 #1"));
    assert_eq!(
        b.app_conns(),
        [["GET /plain1 HTTP/1.1"], ["GET /plain2 HTTP/1.1"]],
        "an HTTP/1.0 answer without keep-alive was reused"
    );
    let r = c.get("/keep1").await;
    assert_eq!((r.status, r.text().as_str()), (200, "/keep1 #1"));
    assert_eq!(r.status_line, "HTTP/1.0 200 OK");
    let r = c.get("/keep2").await;
    assert_eq!((r.status, r.text().as_str()), (200, "/keep2 #2"));
    // Reused. (The version of the second request line is not asserted:
    // today hyper sends it as HTTP/1.0 once the peer answered in 1.0.)
    let conns = b.app_conns();
    assert_eq!(conns.len(), 3, "{conns:?}");
    let paths: Vec<&str> = conns[2]
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(paths, ["/keep1", "/keep2"], "{conns:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_answer_is_not_reused() {
    // The backend keeps reading: it is the header alone that must stop
    // the balancer from reusing the connection.
    let b = RawBackend::start(|path, n| {
        let body = format!("{path} #{n}");
        write(format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    })
    .await;
    let gate = gate_for(&b);
    let mut c = Client::open(gate.port).await;
    let r = c.get("/a").await;
    assert_eq!((r.status, r.text().as_str()), (200, "/a #1"));
    // Hop-by-hop: the client connection stays open.
    assert_eq!(r.header("connection"), None, "{r:?}");
    let r = c.get("/b").await;
    assert_eq!((r.status, r.text().as_str()), (200, "/b #1"));
    assert_eq!(b.app_conns(), [["GET /a HTTP/1.1"], ["GET /b HTTP/1.1"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_answers_before_the_final_one() {
    let b = RawBackend::start(|path, _| match path {
        "/hints" => write(
            "HTTP/1.1 100 Continue\r\n\r\n\
             HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Final: yes\r\n\r\nfinal",
        ),
        _ => write(ok("next")),
    })
    .await;
    let gate = gate_for(&b);
    let mut c = Client::open(gate.port).await;
    let r = c.get("/hints").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "final");
    assert_eq!(r.header("x-final"), Some("yes"));
    // Today the informational answers are consumed upstream: the client
    // sees neither the 100 nor the 103 (nor its Link field).
    assert!(r.informational.is_empty(), "{:?}", r.informational);
    assert_eq!(r.header("link"), None, "{r:?}");
    let next = c.get("/next").await;
    assert_eq!(next.text(), "next");
    assert_eq!(
        b.app_conns(),
        [["GET /hints HTTP/1.1", "GET /next HTTP/1.1"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answer_has_no_body_whatever_its_length() {
    let b = RawBackend::start(|path, _| match path {
        "/head" => write("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        _ => write(ok("after head")),
    })
    .await;
    let gate = gate_for(&b);
    let mut c = Client::open(gate.port).await;
    let r = c.fetch("HEAD", "/head").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-length"), Some("1000"), "{r:?}");
    // `response` read no body for HEAD: a stray byte would come first here.
    let r = c.get("/get").await;
    assert_eq!((r.status, r.text().as_str()), (200, "after head"));
    assert_eq!(
        b.app_conns(),
        [["HEAD /head HTTP/1.1", "GET /get HTTP/1.1"]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_and_not_modified_have_no_body() {
    let b = RawBackend::start(|path, _| match path {
        "/204" => write("HTTP/1.1 204 No Content\r\nX-K: 1\r\n\r\n"),
        "/304" => write("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n"),
        // A 304 may carry the length of the representation it stands for.
        "/304-length" => {
            write("HTTP/1.1 304 Not Modified\r\nETag: \"v2\"\r\nContent-Length: 1000\r\n\r\n")
        }
        _ => write(ok("after")),
    })
    .await;
    let gate = gate_for(&b);
    let mut c = Client::open(gate.port).await;
    let r = c.get("/204").await;
    assert_eq!((r.status, r.header("x-k")), (204, Some("1")), "{r:?}");
    assert_eq!(r.header("content-length"), None, "{r:?}");
    assert_eq!(r.header("transfer-encoding"), None, "{r:?}");
    let r = c.get("/304").await;
    assert_eq!((r.status, r.header("etag")), (304, Some("\"v1\"")), "{r:?}");
    assert_eq!(r.header("transfer-encoding"), None, "{r:?}");
    let r = c.get("/304-length").await;
    assert_eq!((r.status, r.header("etag")), (304, Some("\"v2\"")), "{r:?}");
    assert_eq!(r.header("transfer-encoding"), None, "{r:?}");
    // A stray body byte of any of these would have come first here.
    let r = c.get("/get").await;
    assert_eq!((r.status, r.text().as_str()), (200, "after"), "{r:?}");
    assert_eq!(
        b.app_conns(),
        [[
            "GET /204 HTTP/1.1",
            "GET /304 HTTP/1.1",
            "GET /304-length HTTP/1.1",
            "GET /get HTTP/1.1"
        ]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_content_length_is_a_502_not_a_dead_node() {
    let b = RawBackend::start(|path, _| match path {
        "/abc" => write("HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello"),
        "/two" => write("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        _ => write(ok("good")),
    })
    .await;
    let gate = gate_for(&b);
    for path in ["/abc", "/two"] {
        let r = Client::open(gate.port).await.get(path).await;
        assert_eq!(r.status, 502, "{path}: {r:?}");
        assert_up(&gate).await;
    }
    let r = Client::open(gate.port).await.get("/good").await;
    assert_eq!((r.status, r.text().as_str()), (200, "good"));
    // Each refused answer was asked once (no retry), on its own connection.
    assert_eq!(
        b.requests(),
        [
            "GET /abc HTTP/1.1",
            "GET /two HTTP/1.1",
            "GET /good HTTP/1.1"
        ]
    );
    assert_up(&gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_status_line_is_a_502() {
    let b = RawBackend::start(|path, _| match path {
        "/bad" => write("HTTP/1.1 abc OK\r\nContent-Length: 5\r\n\r\nhello"),
        _ => write(ok("good")),
    })
    .await;
    let gate = gate_for(&b);
    let r = Client::open(gate.port).await.get("/bad").await;
    assert_eq!(r.status, 502, "{r:?}");
    let r = Client::open(gate.port).await.get("/good").await;
    assert_eq!((r.status, r.text().as_str()), (200, "good"));
    assert_eq!(b.requests(), ["GET /bad HTTP/1.1", "GET /good HTTP/1.1"]);
    assert_up(&gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_chunk_size_never_ends_cleanly() {
    // The backend stays silent after the bad size line (no close): only
    // the balancer's parser can end this.
    let b = RawBackend::start(|path, _| match path {
        "/bad" => write(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
        ),
        _ => write(ok("good")),
    })
    .await;
    let gate = gate_for(&b);
    let mut c = Client::open(gate.port).await;
    let cut = c
        .try_fetch("GET", "/bad", "")
        .await
        .expect_err("a clean answer to a broken chunked body");
    // The connection is cut: with the head and the good chunk when they
    // were flushed before the bad size line was read, with nothing when
    // both came in one read (the in-task exchange decodes them together,
    // and the client's write buffer is dropped with the error); never the
    // terminating chunk, nothing after the bad size line.
    if !cut.wire.is_empty() {
        assert!(cut.wire.starts_with("HTTP/1.1 200 OK\r\n"), "{cut:?}");
        assert!(cut.wire.contains("\r\n\r\n5\r\nhello\r\n"), "{cut:?}");
    }
    assert!(!cut.wire.contains("0\r\n\r\n"), "{cut:?}");
    assert!(!cut.wire.contains("world"), "{cut:?}");
    let r = Client::open(gate.port).await.get("/good").await;
    assert_eq!((r.status, r.text().as_str()), (200, "good"));
    assert_up(&gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_content_length_body_are_not_passed_on() {
    let b = RawBackend::start(|path, _| match path {
        "/extra" => write("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloGARBAGE"),
        _ => write(ok("second")),
    })
    .await;
    let gate = gate_for(&b);
    let mut c = Client::open(gate.port).await;
    let r = c.get("/extra").await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{r:?}");
    let r = c.get("/second").await;
    assert_eq!((r.status, r.text().as_str()), (200, "second"), "{r:?}");
    assert!(c.quiet_for(Duration::from_millis(200)).await);
    // The connection that sent garbage was not used again.
    assert_eq!(
        b.app_conns(),
        [["GET /extra HTTP/1.1"], ["GET /second HTTP/1.1"]]
    );
    assert_up(&gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_canonical_reason_phrase() {
    let b =
        RawBackend::start(|_, _| write("HTTP/1.1 200 Fine\r\nContent-Length: 2\r\n\r\nok")).await;
    let gate = gate_for(&b);
    let r = Client::open(gate.port).await.get("/fine").await;
    assert_eq!(r.status_line, "HTTP/1.1 200 Fine", "{r:?}");
    assert_eq!(r.text(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_fields_all_arrive_in_order() {
    let b = RawBackend::start(|_, _| {
        write(
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nX-A: 1\r\nSet-Cookie: b=2\r\n\
             Content-Length: 2\r\nX-A: 2\r\nSet-Cookie: c=3; HttpOnly\r\n\r\nok",
        )
    })
    .await;
    let gate = gate_for(&b);
    let r = Client::open(gate.port).await.get("/fields").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.all("set-cookie"),
        ["a=1; Path=/", "b=2", "c=3; HttpOnly"],
        "{r:?}"
    );
    assert_eq!(r.all("x-a"), ["1", "2"], "{r:?}");
    assert_eq!(r.text(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_chunked_body_is_exact() {
    const CHUNK: usize = 16 * 1024;
    const CHUNKS: usize = 256;
    let pattern: Vec<u8> = (0..CHUNK * CHUNKS)
        .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
        .collect();
    let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in pattern.chunks(CHUNK) {
        resp.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        resp.extend(chunk);
        resp.extend(b"\r\n");
    }
    resp.extend(b"0\r\n\r\n");
    let b = RawBackend::start(move |_, _| {
        resp.chunks(64 * 1024)
            .map(|p| Step::Write(p.to_vec()))
            .collect()
    })
    .await;
    let gate = gate_for(&b);
    let mut c = Client::open(gate.port).await;
    for _ in 0..2 {
        let r = c.get("/large").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), pattern.len());
        let first_diff = r.body.iter().zip(&pattern).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "bodies differ");
    }
    assert_eq!(b.app_conns().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_head_over_64_kib_is_a_502_not_a_dead_node() {
    // The limit is the 64 KiB read buffer of an upstream connection, but
    // hyper may read up to about twice that before it checks: a head
    // between 64 and ~128 KiB passes or not depending on how it arrives
    // (70 KiB was seen both ways). 48 KiB always fits, 200 KiB never does.
    let b = RawBackend::start(|path, _| {
        let kib = match path {
            "/big" => 200,
            "/fits" => 48,
            _ => 0,
        };
        write(format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
            "a".repeat(kib * 1024)
        ))
    })
    .await;
    let gate = gate_for(&b);
    let r = Client::open(gate.port).await.get("/big").await;
    assert_eq!(r.status, 502, "{:?}", r.status_line);
    assert_up(&gate).await;
    let r = Client::open(gate.port).await.get("/fits").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(r.header("x-big").map(str::len), Some(48 * 1024));
    // Asked once (not retried), and the node stays up.
    assert_eq!(b.requests(), ["GET /big HTTP/1.1", "GET /fits HTTP/1.1"]);
    assert_up(&gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_framing_wins_over_content_length() {
    let b = RawBackend::start(|path, _| match path {
        "/both" => write(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n",
        ),
        _ => write(ok("next")),
    })
    .await;
    let gate = gate_for(&b);
    let mut c = Client::open(gate.port).await;
    let r = c.get("/both").await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{r:?}");
    assert_eq!(r.header("content-length"), None, "{r:?}");
    let r = c.get("/next").await;
    assert_eq!(r.text(), "next");
    // Not asserted: whether that connection is reused (today it is; RFC
    // 9112 section 6.3 would also allow closing it).
    assert_eq!(b.requests(), ["GET /both HTTP/1.1", "GET /next HTTP/1.1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_closed_by_the_backend_is_replaced() {
    // Every answer, then the backend times the connection out.
    let b = RawBackend::start(|path, n| {
        let mut steps = write(ok(&format!("{path} #{n}")));
        steps.extend([Step::Sleep(Duration::from_millis(100)), Step::Close]);
        steps
    })
    .await;
    let gate = gate_for(&b);
    // A session bound to the node: after a peer close the balancer stays
    // on it with a fresh connection. A request without a session would
    // rather move to another node, but with this one node only it stays
    // too (it once got a 502 for about a second after the close).
    let session = "Cookie: JSESSIONID=abc.tomcat1\r\n";
    let mut c = Client::open(gate.port).await;
    let r = c.fetch_with("GET", "/first", session).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/first #1"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c.fetch_with("GET", "/second", session).await;
    assert_eq!((r.status, r.text().as_str()), (200, "/second #1"), "{r:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = c.fetch_with("GET", "/third", "").await;
    assert_eq!((r.status, r.text().as_str()), (200, "/third #1"), "{r:?}");
    assert_eq!(
        b.app_conns(),
        [
            ["GET /first HTTP/1.1"],
            ["GET /second HTTP/1.1"],
            ["GET /third HTTP/1.1"]
        ]
    );
    assert_up(&gate).await;
}
