//! Parked HTTP/1.1 client connections (`server::h1`): a keep-alive
//! connection idle for `PARK_AFTER` (1 s) is taken apart and only its
//! socket and timers are kept; its next bytes start a fresh hyper
//! connection that reads them first. These drills use one raw socket per
//! client (plain or TLS) so that "the same connection" is certain: it
//! serves again after each park, wake bytes split or pipelined are
//! replayed, a body still arriving after an early answer is never read as
//! a request, header and idle timeouts still hold, a WebSocket upgrade
//! works after a park (and early frame bytes reach the backend), SIGTERM
//! closes a parked connection at once, and a parked connection holds no
//! hyper buffers. Real demo nodes, real stickgate processes.

mod common;

use common::tls::{tls_gate, Ca};
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Longer than the gate's `PARK_AFTER` (1 s): an idle connection has been
/// parked by then.
const PARKED: Duration = Duration::from_millis(1600);

/// Any single step of a drill that takes longer than this has failed.
const STEP: Duration = Duration::from_secs(10);

/// The RFC 6455 sample key and the accept value it must get.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// One client connection, read response by response.
struct Conn<S> {
    io: S,
    /// Bytes read but not yet returned as a response.
    buf: Vec<u8>,
}

impl Conn<TcpStream> {
    async fn open(port: u16) -> Self {
        let io = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        Conn {
            io,
            buf: Vec::new(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await
        .expect("write timed out")
        .unwrap_or_else(|e| panic!("write failed (connection closed?): {e}"));
    }

    /// The next whole response (a head, then a Content-Length body if it
    /// has one; bytes after it stay for the next call, or for a tunnel).
    async fn response(&mut self) -> RawResp {
        loop {
            if let Some(n) = response_len(&self.buf) {
                let r = parse_response(&String::from_utf8_lossy(&self.buf[..n]));
                self.buf.drain(..n);
                return r;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(STEP, self.io.read(&mut chunk))
                .await
                .expect("no response within 10 s")
                .unwrap_or_else(|e| panic!("read failed: {e}"));
            assert!(
                n > 0,
                "closed by the server before a whole response: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// How long until the server closes the connection (EOF or reset),
    /// `None` if it is still open after `limit`. Bytes read meanwhile are
    /// kept in `buf`.
    async fn closed_within(&mut self, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let end = start + limit;
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(end.into(), self.io.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Length of the first whole response in `buf`, if there is one.
fn response_len(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let body = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    (buf.len() >= head_end + body).then_some(head_end + body)
}

/// `GET path` with the session cookie if given.
fn get(path: &str, session: Option<&str>) -> String {
    let cookie = session.map_or(String::new(), |s| format!("Cookie: JSESSIONID={s}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{cookie}\r\n")
}

/// The node a demo response came from, and the session's hit count.
fn route_hits(r: &RawResp) -> (String, u64) {
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    (
        v["route"].as_str().expect("route").to_owned(),
        v["hits"].as_u64().expect("hits"),
    )
}

/// A new session on `conn`: (its cookie value, the node holding it).
async fn new_session_on<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>) -> (String, String) {
    conn.send(get("/", None).as_bytes()).await;
    let r = conn.response().await;
    let (route, hits) = route_hits(&r);
    assert_eq!(hits, 1);
    let id = r.set_cookie("JSESSIONID").expect("new session cookie");
    assert!(id.ends_with(&format!(".{route}")), "{id} names {route}");
    (id, route)
}

/// Idle past the park, then a request, `rounds` times on one connection:
/// every answer comes from the session's node, whose hit count goes on,
/// and the gate accepted no other connection meanwhile. Returns the
/// session's cookie value and node.
async fn idle_then_request<S: AsyncRead + AsyncWrite + Unpin>(
    gate: &Gate,
    conn: &mut Conn<S>,
    rounds: u64,
) -> (String, String) {
    let (id, home) = new_session_on(conn).await;
    let accepted = counter(gate, "connections").await;
    for round in 1..=rounds {
        tokio::time::sleep(PARKED).await;
        assert_eq!(
            counter(gate, "parked_connections").await,
            1,
            "round {round}: the idle connection is parked"
        );
        conn.send(get("/", Some(&id)).as_bytes()).await;
        let r = conn.response().await;
        assert_eq!(route_hits(&r), (home.clone(), round + 1), "round {round}");
        assert_eq!(r.set_cookie("JSESSIONID"), None, "round {round}: {r:?}");
    }
    assert_eq!(
        counter(gate, "connections").await,
        accepted,
        "one client socket"
    );
    (id, home)
}

fn two_nodes() -> (Backend, Backend) {
    (
        Backend::start("tomcat1", &[]),
        Backend::start("tomcat2", &[]),
    )
}

fn gate_for(nodes: &[&Backend], server_extra: &str) -> Gate {
    let backends: String = nodes.iter().map(|b| b.toml()).collect();
    Gate::start_with(&format!("{FAST_HEALTH}{backends}"), server_extra)
}

/// A status counter of the gate.
async fn counter(gate: &Gate, name: &str) -> u64 {
    gate.status().await[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keepalive_connection_serves_again_after_each_park() {
    let (a, b) = two_nodes();
    let gate = gate_for(&[&a, &b], "");
    let mut conn = Conn::open(gate.port).await;
    let _ = idle_then_request(&gate, &mut conn, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_bytes_are_replayed_split_pipelined_or_with_a_body() {
    let (a, b) = two_nodes();
    let gate = gate_for(&[&a, &b], "");
    let mut conn = Conn::open(gate.port).await;
    let (id, home) = new_session_on(&mut conn).await;
    let accepted = counter(&gate, "connections").await;

    // Two bytes wake it, the rest of the head follows 300 ms later.
    tokio::time::sleep(PARKED).await;
    let req = get("/", Some(&id));
    conn.send(&req.as_bytes()[..2]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.send(&req.as_bytes()[2..]).await;
    assert_eq!(route_hits(&conn.response().await), (home.clone(), 2));

    // Two requests in one write: both answered, in order.
    tokio::time::sleep(PARKED).await;
    conn.send(format!("{req}{req}").as_bytes()).await;
    assert_eq!(route_hits(&conn.response().await), (home.clone(), 3));
    assert_eq!(route_hits(&conn.response().await), (home.clone(), 4));

    // A request with a 100 kB body: only the first bytes wake the
    // connection, the rest streams through the new hyper connection.
    tokio::time::sleep(PARKED).await;
    let body = vec![b'x'; 100_000];
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: JSESSIONID={id}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.send(&[head.as_bytes(), &body].concat()).await;
    let r = conn.response().await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["bytes"], 100_000);
    assert_eq!(r.json()["route"], home.as_str());

    conn.send(req.as_bytes()).await;
    assert_eq!(route_hits(&conn.response().await), (home, 5));
    assert_eq!(
        counter(&gate, "connections").await,
        accepted,
        "one client socket"
    );
}

/// A node answers a POST before its body arrived (Tomcat does, and so
/// does the demo's `/early`), and the client goes on sending the body for
/// longer than the park: the connection is taken apart only once hyper
/// has read the whole body, so no body byte is ever read as a request, and
/// the next request gets its own answer on the same socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_still_arriving_past_the_park_is_not_read_as_a_request() {
    let (a, b) = two_nodes();
    let gate = gate_for(&[&a, &b], "");
    let mut conn = Conn::open(gate.port).await;
    let (id, home) = new_session_on(&mut conn).await;
    let head = format!(
        "POST /early HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: JSESSIONID={id}\r\nContent-Length: 20000\r\n\r\n"
    );
    conn.send(&[head.as_bytes(), &[b'x'; 1000]].concat()).await;
    let r = conn.response().await;
    assert_eq!(
        (r.status, r.json()["bytes"].as_u64()),
        (200, Some(0)),
        "{r:?}"
    );
    // The other 19 kB over 1.9 s, past the park 1 s after the answer.
    for _ in 0..19 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.send(&[b'y'; 1000]).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.send(get("/", Some(&id)).as_bytes()).await;
    assert_eq!(route_hits(&conn.response().await), (home, 2));
}

/// The parked connection's clock goes on: a head begun there (its bytes
/// all read by the wake, none by hyper yet) gets its 408 after
/// `header_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_holds_for_a_head_begun_on_a_parked_connection() {
    let (a, b) = two_nodes();
    let gate = gate_for(&[&a, &b], "header_timeout = \"1s\"");
    let mut conn = Conn::open(gate.port).await;
    new_session_on(&mut conn).await;
    let before = counter(&gate, "header_timeouts").await;
    tokio::time::sleep(PARKED).await;
    // Fewer bytes than one wake read: all of them come back as replay.
    conn.send(b"GET / HT").await;
    let start = Instant::now();
    let r = conn.response().await;
    let took = start.elapsed();
    eprintln!("408 {took:?} after a partial head on a parked connection (header_timeout 1 s)");
    assert_eq!(r.status, 408, "{r:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "408 after {took:?}, not about 1 s"
    );
    assert!(
        conn.closed_within(Duration::from_secs(2)).await.is_some(),
        "still open after the 408"
    );
    assert_eq!(counter(&gate, "header_timeouts").await - before, 1);
}

/// A parked connection wakes for its idle timeout, closes without a word
/// and counts it in the status API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_parked_connection() {
    let (a, b) = two_nodes();
    let gate = gate_for(&[&a, &b], "idle_timeout = \"2s\"");
    let mut conn = Conn::open(gate.port).await;
    new_session_on(&mut conn).await;
    let before = counter(&gate, "idle_timeouts").await;
    let closed = conn.closed_within(Duration::from_secs(6)).await;
    eprintln!("parked connection closed {closed:?} after its last answer (idle_timeout 2 s)");
    let took = closed.expect("parked connection still open 6 s after its last request");
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(3200),
        "closed after {took:?}, not about 2 s"
    );
    assert!(
        conn.buf.is_empty(),
        "no word on an idle close: {:?}",
        conn.buf
    );
    assert_eq!(counter(&gate, "idle_timeouts").await - before, 1);
}

/// An RFC 6455 opening handshake for `/ws`, with the session cookie.
fn ws_upgrade(session: Option<&str>) -> String {
    let cookie = session.map_or(String::new(), |s| format!("Cookie: JSESSIONID={s}\r\n"));
    format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n{cookie}\r\n"
    )
}

/// A masked client text frame (payloads under 126 bytes).
fn client_text_frame(text: &str) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let len = u8::try_from(text.len()).ok().filter(|&n| n < 126).unwrap();
    let mut f = vec![0x81, 0x80 | len];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Read the `101` on `conn` and go on with the bytes after it as a
/// WebSocket client.
async fn switch<S: AsyncRead + AsyncWrite + Unpin>(mut conn: Conn<S>) -> WebSocketStream<S> {
    let r = conn.response().await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(r.header("sec-websocket-accept"), Some(WS_ACCEPT));
    WebSocketStream::from_partially_read(conn.io, conn.buf, Role::Client, None).await
}

/// Next text message (pings skipped), within `STEP`.
async fn next_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> String {
    loop {
        let m = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("no message within 10 s")
            .expect("tunnel ended")
            .expect("websocket error");
        match m {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_on_a_connection_parked_before() {
    let (a, b) = two_nodes();
    let gate = gate_for(&[&a, &b], "");
    let mut conn = Conn::open(gate.port).await;
    let (id, home) = new_session_on(&mut conn).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    conn.send(ws_upgrade(Some(&id)).as_bytes()).await;
    let mut ws = switch(conn).await;
    ws.send(Message::text("whoami")).await.unwrap();
    let me: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(me["route"], home.as_str(), "the tunnel follows the session");
    assert_eq!(
        format!("{}.{home}", me["session"].as_str().unwrap()),
        id,
        "the node sees the session"
    );
    ws.send(Message::text("after the park")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "after the park");
    ws.close(None).await.unwrap();
}

/// tests/websocket.rs opens its tunnels with tungstenite, which waits for
/// the `101` before it sends a frame: a first frame in the very write of
/// the upgrade request (read by hyper with the head) is covered here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_first_frame_in_the_upgrade_write_reaches_the_backend() {
    let (a, b) = two_nodes();
    let gate = gate_for(&[&a, &b], "");
    let mut conn = Conn::open(gate.port).await;
    let bytes = [
        ws_upgrade(None).into_bytes(),
        client_text_frame("early bird"),
    ]
    .concat();
    conn.send(&bytes).await;
    let mut ws = switch(conn).await;
    assert_eq!(next_text(&mut ws).await, "early bird");
    ws.send(Message::text("and after")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "and after");
    ws.close(None).await.unwrap();
}

/// A TLS client of the gate's TLS listener that trusts `ca` and offers
/// only HTTP/1.1.
async fn tls_http11(
    port: u16,
    ca: &std::path::Path,
) -> Conn<tokio_rustls::client::TlsStream<TcpStream>> {
    let cfg = common::tls::client_config(ca, &[b"http/1.1"]);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("a.test").unwrap();
    let io = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    Conn {
        io,
        buf: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_http11_connection_serves_again_after_each_park_then_upgrades() {
    let dir = tempdir();
    let ca = Ca::new(&dir);
    let cert = ca.leaf(&dir, "a", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let (a, b) = two_nodes();
    let (gate, port) = tls_gate(&[cert], &format!("{}{}", a.toml(), b.toml()), "");
    let mut conn = tls_http11(port, &ca.pem).await;
    let (id, home) = idle_then_request(&gate, &mut conn, 3).await;
    // Parked once more, then upgraded: the tunnel gets the TLS stream.
    tokio::time::sleep(PARKED).await;
    conn.send(ws_upgrade(Some(&id)).as_bytes()).await;
    let mut ws = switch(conn).await;
    ws.send(Message::text("whoami")).await.unwrap();
    let me: serde_json::Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(me["route"], home.as_str(), "the tunnel follows the session");
    ws.close(None).await.unwrap();
}

/// On SIGTERM a parked connection (quiet for longer than the drain's
/// grace already) is closed at once, while a request that woke another
/// parked connection is still answered, with `Connection: close`; then the
/// process exits, long before `shutdown_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_a_parked_connection_at_once_and_finishes_one_in_flight() {
    let (a, b) = two_nodes();
    let mut gate = gate_for(&[&a, &b], "shutdown_timeout = \"10s\"");
    let mut parked = Conn::open(gate.port).await;
    new_session_on(&mut parked).await;
    // Parked too, then woken by a request still running at the signal.
    let mut busy = Conn::open(gate.port).await;
    let (id, home) = new_session_on(&mut busy).await;
    tokio::time::sleep(PARKED).await;
    busy.send(get("/slow?ms=1500", Some(&id)).as_bytes()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = gate.status().await;
        let inflight = backends_sum(&status, "inflight");
        if inflight == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "slow request never in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let term = Instant::now();
    gate.proc.signal("TERM");
    let closed = parked.closed_within(Duration::from_secs(5)).await;
    eprintln!("parked connection closed {closed:?} after SIGTERM (shutdown_timeout 10 s)");
    let closed = closed.expect("parked connection still open 5 s after SIGTERM");
    assert!(
        closed < Duration::from_millis(1000),
        "parked connection closed {closed:?} after SIGTERM"
    );
    assert!(
        parked.buf.is_empty(),
        "no word to a parked client: {:?}",
        parked.buf
    );

    let r = busy.response().await;
    assert_eq!(route_hits(&r), (home, 2), "in-flight request answered");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");

    let exited = wait_for(Duration::from_secs(5), || {
        matches!(gate.proc.child.try_wait(), Ok(Some(_)))
    });
    let took = term.elapsed();
    eprintln!("stickgate exited {took:?} after SIGTERM");
    assert!(
        exited.is_ok(),
        "still running 5 s after SIGTERM: {}",
        gate.logs()
    );
    let status = gate.proc.child.try_wait().unwrap().unwrap();
    assert!(status.success(), "exit status {status}: {}", gate.logs());
}

/// Open `n` keep-alive connections and serve one `GET /health` on each
/// (no session, so nothing is learned); they stay open while returned.
fn served_idle_clients(port: u16, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(STEP)).unwrap();
            s.write_all(get("/health", None).as_bytes()).unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            while response_len(&got).is_none() {
                let n = s.read(&mut chunk).expect("read response");
                assert!(n > 0, "closed before the response ended");
                got.extend_from_slice(&chunk[..n]);
            }
            assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
            s
        })
        .collect()
}

/// Clients come in batches, each served then left idle past the park
/// before the next: a parked connection gives its hyper buffers (8 KiB
/// read, up to 8 KiB write) back, so the next batch reuses them, and RSS
/// grows by the parked connections' own small cost only. Kept whole, the
/// buffers cost every idle connection ~13 KiB (tests/footprint.rs).
/// Measured (debug build, 320 clients in 8 batches of 40): 5.2 KiB each,
/// most of it the first batch's buffers, reused by the others; with
/// parking off (`PARK_AFTER` 1000 s) 13.3 KiB each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connections_give_their_buffers_back() {
    const BATCHES: usize = 8;
    const PER_BATCH: usize = 40;
    // Past the park with room for a busy machine's scheduling delays.
    const IDLE: Duration = Duration::from_secs(2);
    let node = Backend::start("tomcat1", &[]);
    let gate = Gate::start_with(
        &format!("[health]\nenabled = false\n{}", node.toml()),
        "idle_timeout = \"300s\"",
    );
    let (pid, port) = (gate.proc.pid(), gate.port);
    let measured = tokio::task::spawn_blocking(move || {
        let mut conns = served_idle_clients(port, 10);
        std::thread::sleep(IDLE);
        let before = settled_rss(pid);
        for _ in 0..BATCHES {
            conns.extend(served_idle_clients(port, PER_BATCH));
            std::thread::sleep(IDLE);
        }
        let after = settled_rss(pid);
        (before, after, conns)
    })
    .await
    .unwrap();
    let (before, after, conns) = measured;
    let n = (BATCHES * PER_BATCH) as u64;
    let per_conn = after.saturating_sub(before) * 1024 / n;
    eprintln!("{n} parked clients: RSS {before} -> {after} KiB, {per_conn} B each");
    assert!(
        per_conn < 9 * 1024,
        "{per_conn} B per parked client (RSS {before} -> {after} KiB)"
    );
    drop(conns);
}

/// The local ports of the gate's TCP connections to `port` that are
/// established or that the peer closed and we did not yet (CLOSE_WAIT),
/// from /proc/net/tcp: the balancer's side of its upstream connections.
fn upstream_ports(port: u16) -> Vec<u16> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let mut ports: Vec<u16> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let remote = u16::from_str_radix(f.get(2)?.rsplit(':').next()?, 16).ok()?;
            let state = *f.get(3)?;
            (remote == port && (state == "01" || state == "08")).then_some(local)
        })
        .collect();
    ports.sort_unstable();
    ports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_upstream_connection_is_reused_on_its_socket_and_a_backend_close_is_seen() {
    // Slow probes: the drill counts the balancer's sockets to the node.
    let node = Backend::start("tomcat1", &[]);
    let gate = Gate::start(&format!("[health]\ninterval = \"60s\"\n{}", node.toml()));
    // One client connection: it stays on one request thread, whose share
    // of the pool is the one reused.
    let mut conn = Conn::open(gate.port).await;
    conn.send(get("/", None).as_bytes()).await;
    assert_eq!(conn.response().await.status, 200);
    let before = upstream_ports(node.port);
    assert_eq!(before.len(), 1, "one pooled connection: {before:?}");
    // Parked at the housekeeper's first tick after 1 s idle.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = gate.backend_status("tomcat1").await;
        if st["parked_connections"] == 1 && st["idle_connections"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not parked: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for round in 0..3 {
        conn.send(get("/", None).as_bytes()).await;
        assert_eq!(conn.response().await.status, 200, "round {round}");
        assert_eq!(
            upstream_ports(node.port),
            before,
            "round {round}: the parked socket carried the request, no new connection"
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            gate.backend_status("tomcat1").await["parked_connections"],
            1
        );
    }
    // The node stops like Tomcat: it closes idle keep-alive connections;
    // the parked one's task sees it (the socket goes) without a request.
    node.proc.signal("TERM");
    let gone = wait_for(Duration::from_secs(5), || {
        upstream_ports(node.port).is_empty()
    });
    assert!(gone.is_ok(), "still open: {:?}", upstream_ports(node.port));
}
