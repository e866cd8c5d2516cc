//! Edge-case drills with real processes: a backend response cut mid-body,
//! a stale pooled keep-alive connection (GET retried, POST not), request
//! smuggling variants, a spoofed `X-Forwarded-Proto`, wss through the TLS
//! listener, IPv6 on both sides, and a non-default cookie name and route
//! separator.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Body = BoxBody<Bytes, std::io::Error>;

/// What a [`Scripted`] backend does with one request.
enum Act {
    /// Answer with this status, extra headers and body.
    Answer(u16, Vec<(&'static str, String)>, Bytes),
    /// Close the connection without answering.
    Close,
    /// Send a head (declaring `Content-Length` when `declared` is set, else
    /// chunked), `sent` bytes of body, then abort the connection.
    Cut {
        declared: Option<usize>,
        sent: usize,
    },
}

/// Decides per request: (request number on its connection, from 1;
/// "METHOD path"; request body).
type Script = Arc<dyn Fn(usize, &str, &Bytes) -> Act + Send + Sync>;

/// Marks a request whose body did not arrive complete.
const ABORTED: &str = "(body aborted)";

/// An in-test HTTP/1.1 backend that answers `/health` with 200 and every
/// other request as `script` says; records "METHOD path" of the others
/// (with [`ABORTED`] when the body broke off).
struct Scripted {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    async fn start(script: Script) -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sn = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (sn, script) = (sn.clone(), script.clone());
                let count = Arc::new(AtomicUsize::new(0));
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let (sn, script, count) = (sn.clone(), script.clone(), count.clone());
                    async move { serve(req, &sn, &script, &count).await }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Scripted { port, seen, task }
    }

    fn toml(&self, route: &str) -> String {
        format!(
            "[[backend]]\nroute = \"{route}\"\nurl = \"http://127.0.0.1:{}\"\n",
            self.port
        )
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    req: http::Request<Incoming>,
    seen: &Mutex<Vec<String>>,
    script: &Script,
    count: &AtomicUsize,
) -> Result<http::Response<Body>, std::io::Error> {
    let line = format!("{} {}", req.method(), req.uri());
    let health = req.uri().path() == "/health";
    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    if health {
        return Ok(http::Response::new(full("ok")));
    }
    let Ok(body) = body else {
        seen.lock().unwrap().push(format!("{line} {ABORTED}"));
        return Err(std::io::Error::other("request body aborted"));
    };
    seen.lock().unwrap().push(line.clone());
    match script(n, &line, &body) {
        Act::Answer(status, headers, body) => {
            let mut r = http::Response::new(Full::new(body).map_err(|e| match e {}).boxed());
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            for (k, v) in headers {
                r.headers_mut().append(k, v.parse().unwrap());
            }
            Ok(r)
        }
        Act::Close => Err(std::io::Error::other("scripted close")),
        Act::Cut { declared, sent } => {
            let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
                Ok(Frame::data(Bytes::from(vec![b'x'; sent]))),
                Err(std::io::Error::other("scripted cut")),
            ];
            let stream = futures_util::stream::iter(frames).then(|f| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                f
            });
            let mut r = http::Response::new(BodyExt::boxed(StreamBody::new(stream)));
            if let Some(cl) = declared {
                r.headers_mut()
                    .insert("content-length", cl.to_string().parse().unwrap());
            }
            Ok(r)
        }
    }
}

fn full(s: &'static str) -> Body {
    Full::new(Bytes::from_static(s.as_bytes()))
        .map_err(|e| match e {})
        .boxed()
}

fn ok(body: String) -> Act {
    Act::Answer(200, vec![], Bytes::from(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_response_cut_mid_body_aborts_the_client_response() {
    let node = Scripted::start(Arc::new(|_, line: &str, _: &Bytes| {
        if line.contains("/chunked") {
            Act::Cut {
                declared: None,
                sent: 100,
            }
        } else {
            Act::Cut {
                declared: Some(1000),
                sent: 100,
            }
        }
    }))
    .await;
    let gate = Gate::start(&format!("{FAST_HEALTH}{}", node.toml("n1")));
    gate.wait_health("n1", "up").await;
    let c = client();
    for path in ["/length", "/chunked"] {
        let r = try_request(&c, "GET", &gate.url(path), None, Bytes::new()).await;
        println!("{path}: {:?}", r.as_ref().map(|r| (r.status, r.body.len())));
        assert!(r.is_err(), "{path}: a cut response ended cleanly: {r:?}");
    }
    // On the wire: the declared length is kept (never a clean short 200),
    // and a chunked body never gets its last chunk.
    let text = raw(
        gate.port,
        b"GET /length HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    );
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 1000"),
        "{head}"
    );
    assert_eq!(body.len(), 100, "{text:?}");
    let text = raw(
        gate.port,
        b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "clean end of a cut body: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_response_head_is_a_502_not_a_dead_node() {
    // /big answers with a 200 KiB header (well over the 64 KiB a backend's
    // head may have), /fits with a 48 KiB one.
    let answer = |line: &str| {
        let size = if line.contains("/big") {
            200 * 1024
        } else if line.contains("/fits") {
            48 * 1024
        } else {
            0
        };
        let headers = if size > 0 {
            vec![("x-big", "a".repeat(size))]
        } else {
            vec![]
        };
        Act::Answer(200, headers, Bytes::from(line.to_owned()))
    };
    let n1 = Scripted::start(Arc::new(move |_, line: &str, _: &Bytes| answer(line))).await;
    let n2 = Scripted::start(Arc::new(move |_, line: &str, _: &Bytes| answer(line))).await;
    let gate = Gate::start(&format!("{FAST_HEALTH}{}{}", n1.toml("n1"), n2.toml("n2")));
    gate.wait_health("n1", "up").await;
    gate.wait_health("n2", "up").await;
    let c = client();
    let cookie = Some("JSESSIONID=abc.n1");
    let big = request(&c, "GET", &gate.url("/big"), cookie, Bytes::new()).await;
    assert_eq!(big.status, 502, "{:?}", big.body);
    let fits = request(&c, "GET", &gate.url("/fits"), cookie, Bytes::new()).await;
    assert_eq!(fits.status, 200);
    assert_eq!(fits.body, "GET /fits");
    // Sent once, to its own node: not retried elsewhere, and the node is
    // neither marked down nor left by the session.
    assert_eq!(n1.seen(), ["GET /big", "GET /fits"]);
    assert!(n2.seen().is_empty(), "retried on n2: {:?}", n2.seen());
    assert_eq!(gate.health("n1").await, "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_retries_get_but_never_post() {
    // The second request on any connection finds it closed by the backend
    // (its keep-alive timer fired as the request arrived).
    let node = Scripted::start(Arc::new(|n, line: &str, body: &Bytes| {
        if n >= 2 {
            Act::Close
        } else {
            ok(format!("{line} {}", body.len()))
        }
    }))
    .await;
    // One request thread: upstream pools are per thread, and the client may
    // open a second connection that the kernel hands to the other thread,
    // whose pool has no stale connection to find.
    let gate = Gate::start_with(
        &format!(
            "[health]\ninterval = \"30s\"\nrise = 1\nfall = 3\n[upstream]\nresponse_timeout = \"3s\"\n{}",
            node.toml("n1")
        ),
        "threads = 1",
    );
    let c = client();
    let cookie = Some("JSESSIONID=abc.n1");
    let first = request(&c, "GET", &gate.url("/a"), cookie, Bytes::new()).await;
    assert_eq!(first.status, 200);
    // On the pooled connection: closed after the request left; replayed on
    // a fresh connection.
    let again = request(&c, "GET", &gate.url("/b"), cookie, Bytes::new()).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.body, "GET /b 0");
    assert_eq!(node.seen(), ["GET /a", "GET /b", "GET /b"]);
    // Requests with a body travel on connections of their own (hyper's
    // client carries bodies; bodiless GETs take the in-task exchange): the
    // first POST opens one, the second finds it closed after its body
    // left, and is never replayed.
    let opener = request(&c, "POST", &gate.url("/o"), cookie, Bytes::from("hi")).await;
    assert_eq!((opener.status, &opener.body[..]), (200, &b"POST /o 2"[..]));
    let post = request(&c, "POST", &gate.url("/c"), cookie, Bytes::from("hello")).await;
    println!(
        "POST on a stale connection: {} {:?}",
        post.status, post.body
    );
    assert_eq!(post.status, 502, "{:?}", post.body);
    assert_eq!(
        node.seen().iter().filter(|l| *l == "POST /c").count(),
        1,
        "POST replayed: {:?}",
        node.seen()
    );
    assert_eq!(
        gate.health("n1").await,
        "up",
        "a stale connection is not a dead node"
    );
}

/// Requests that parse differently on two servers. Each must be refused
/// (400) or forwarded as exactly one request, and never let the inner
/// `GET /smuggled` reach the backend as a request of its own.
const SMUGGLING: &[(&str, &str)] = &[
    (
        "TE chunked, identity",
        "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "TE identity, chunked + CL",
        "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n",
    ),
    (
        "duplicate TE",
        "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "TE obs-fold",
        "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "TE space before colon",
        "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "TE xchunked",
        "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "CL plus sign",
        "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "CL two values",
        "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "CL list",
        "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 40\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "CL inner space",
        "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 1 0\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "CL hex",
        "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "CL with padding spaces",
        "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length:   40   \r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "chunk size overflow",
        "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "chunk extension with bare LF",
        "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "request line: extra token",
        "GET /s HTTP/1.1 GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "request line: two spaces",
        "GET  /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "request line: HTTP/1.1 twice",
        "GET /s HTTP/1.1\r\nHTTP/1.1\r\nHost: x\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "header without colon",
        "GET /s HTTP/1.1\r\nHost: x\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    ),
    (
        "NUL in header value",
        "GET /s HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_variants_are_refused_or_forwarded_as_one_request() {
    let node = Scripted::start(Arc::new(|_, line: &str, body: &Bytes| {
        ok(format!("{line} {}", body.len()))
    }))
    .await;
    let gate = Gate::start(&format!("{FAST_HEALTH}{}", node.toml("n1")));
    gate.wait_health("n1", "up").await;
    let mut refused = 0;
    for (name, req) in SMUGGLING {
        let before = node.seen().len();
        // The client closes its side after the request: whatever the gate
        // made of the bytes is all it will ever get.
        let text = raw(gate.port, req.as_bytes(), Duration::from_secs(2));
        let responses = parse_responses(&text);
        let seen = node.seen()[before..].to_vec();
        println!(
            "{name}: {:?} -> backend saw {seen:?}",
            responses.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        assert!(
            !seen.iter().any(|l| l.contains("/smuggled")),
            "{name}: the inner request reached the backend: {seen:?}"
        );
        match responses.first().map(|r| r.status) {
            None => panic!("{name}: no answer: {text:?}"),
            Some(400) if name.starts_with("chunk") => {
                // The head was fine and may have left before the body
                // broke: the backend must never see that body complete.
                refused += 1;
                assert!(
                    seen.iter().all(|l| l.ends_with(ABORTED)),
                    "{name}: refused but forwarded {seen:?}"
                );
            }
            Some(400) => {
                refused += 1;
                assert!(seen.is_empty(), "{name}: refused but forwarded {seen:?}");
            }
            Some(_) => {
                assert_eq!(seen.len(), 1, "{name}: {seen:?} {text:?}");
                assert!(!seen[0].ends_with(ABORTED), "{name}: {seen:?}");
                // Forwarded means framed by Content-Length alone: the inner
                // request is body bytes.
                assert_eq!(responses[0].body, "POST /s 40", "{name}: {text:?}");
            }
        }
        assert!(responses.len() <= 1, "{name}: several responses: {text:?}");
    }
    println!("{refused} of {} variants refused", SMUGGLING.len());
    assert!(refused >= SMUGGLING.len() / 2, "too few refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_x_forwarded_proto_is_overwritten() {
    let b = Backend::start("tomcat1", &[]);
    let gate = Gate::start(&format!("{FAST_HEALTH}{}", b.toml()));
    let text = raw(
        gate.port,
        b"GET /headers HTTP/1.1\r\nHost: shop\r\nX-Forwarded-Proto: https\r\n\
X-Forwarded-Proto: wss\r\nX-Forwarded-Ssl: on\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    );
    let r = parse_response(&text);
    assert_eq!(r.status, 200, "{text}");
    let h: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert!(h.get("x-forwarded-ssl").is_none(), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_the_tls_listener_is_sticky() {
    let dir = tempdir();
    let ca = common::tls::Ca::new(&dir);
    let leaf = ca.leaf(&dir, "gate", &["localhost"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let b1 = Backend::start("tomcat1", &[]);
    let b2 = Backend::start("tomcat2", &[]);
    let (gate, tls_port) =
        common::tls::tls_gate(&[leaf], &format!("{}{}", b1.toml(), b2.toml()), "");
    gate.wait_health("tomcat1", "up").await;
    gate.wait_health("tomcat2", "up").await;
    let (route, id) = new_session(&client(), &gate).await;
    let cfg = common::tls::client_config(&ca.pem, &[b"http/1.1"]);
    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let mut req = format!("wss://localhost:{tls_port}/ws")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("cookie", format!("JSESSIONID={id}").parse().unwrap());
        let (mut ws, resp) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::client_async(req, tls),
        )
        .await
        .expect("wss handshake timed out")
        .expect("wss handshake");
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("whoami")).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no answer")
            .unwrap()
            .unwrap();
        let who: serde_json::Value = serde_json::from_str(answer.to_text().unwrap()).unwrap();
        assert_eq!(who["route"], route.as_str(), "{who}");
        ws.send(Message::binary(vec![7u8; 70_000])).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no echo")
            .unwrap()
            .unwrap();
        assert_eq!(echo.into_data().len(), 70_000);
        let _ = ws.close(None).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the loopback interface has `::1`; the drill fails loudly when
/// not (an IPv6-less machine must be noticed, not skipped).
fn assert_ipv6_loopback() {
    let out = Command::new("ip")
        .args(["-6", "addr", "show", "lo"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        out.contains("::1") || std::net::TcpListener::bind("[::1]:0").is_ok(),
        "no ::1 on lo: this drill needs IPv6 loopback ({out})"
    );
}

/// A free port on `[::1]` (bound then released).
fn free_v6_port() -> u16 {
    for _ in 0..100 {
        let port = free_port();
        if std::net::TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on [::1]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_listener_and_backend_on_loopback() {
    assert_ipv6_loopback();
    let bport = free_v6_port();
    let mut node = Command::new(backend_bin())
        .args(["--listen", &format!("[::1]:{bport}"), "--route", "tomcat6"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let node_up = wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("::1", bport)).is_ok()
    });
    let (port, admin) = (free_v6_port(), free_port());
    let dir = tempdir();
    let cfg = dir.join("v6.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = [\"[::1]:{port}\"]\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             {FAST_HEALTH}[[backend]]\nroute = \"tomcat6\"\nurl = \"http://[::1]:{bport}\"\n"
        ),
    )
    .unwrap();
    let mut gate = Proc {
        child: Command::new(stickgate_bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let gate_up = wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("::1", port)).is_ok()
    });
    let result = async {
        node_up.map_err(|_| "demo node never listened on [::1]".to_owned())?;
        gate_up.map_err(|_| "stickgate never listened on [::1]".to_owned())?;
        let c = client();
        let url = format!("http://[::1]:{port}/");
        let mut last = None;
        for _ in 0..50 {
            let r = try_request(&c, "GET", &url, None, Bytes::new()).await?;
            if r.status == 200 {
                last = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = last.ok_or("never 200 over IPv6")?;
        let id = r.set_cookie("JSESSIONID").ok_or("no cookie")?;
        let again = try_request(
            &c,
            "GET",
            &url,
            Some(&format!("JSESSIONID={id}")),
            Bytes::new(),
        )
        .await?;
        let body = again.json();
        let h = try_request(
            &c,
            "GET",
            &format!("http://[::1]:{port}/headers"),
            None,
            Bytes::new(),
        )
        .await?
        .json();
        Ok::<_, String>((body, h))
    }
    .await;
    gate.kill();
    let _ = node.kill();
    let _ = node.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let (body, h) = result.unwrap();
    assert_eq!(body["route"], "tomcat6", "{body}");
    assert_eq!(body["hits"], 2, "session not kept over IPv6: {body}");
    assert_eq!(h["x-forwarded-for"], "::1", "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_default_cookie_name_and_route_separator() {
    // Nodes that issue `SID=<id>--<route>` (and ignore JSESSIONID).
    let script = |route: &'static str| -> Script {
        let issued = Arc::new(AtomicUsize::new(0));
        Arc::new(move |_, line: &str, _: &Bytes| {
            if line.contains("/login") {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                Act::Answer(
                    200,
                    vec![(
                        "set-cookie",
                        format!("SID=s{n}x{route}--{route}; Path=/; HttpOnly"),
                    )],
                    Bytes::from(route),
                )
            } else {
                ok(route.to_owned())
            }
        })
    };
    let a = Scripted::start(script("red")).await;
    let b = Scripted::start(script("blue")).await;
    let gate = Gate::start(&format!(
        "{FAST_HEALTH}[session]\ncookie = \"SID\"\nroute_separator = \"--\"\n{}{}",
        a.toml("red"),
        b.toml("blue")
    ));
    gate.wait_health("red", "up").await;
    gate.wait_health("blue", "up").await;
    let c = client();
    let mut by_route = std::collections::HashMap::new();
    for _ in 0..4 {
        let r = request(&c, "GET", &gate.url("/login"), None, Bytes::new()).await;
        let sid = r.set_cookie("SID").expect("SID set");
        by_route.insert(String::from_utf8_lossy(&r.body).into_owned(), sid);
    }
    assert_eq!(by_route.len(), 2, "both nodes took sessions: {by_route:?}");
    for (route, sid) in &by_route {
        for _ in 0..5 {
            let r = request(
                &c,
                "GET",
                &gate.url("/page"),
                Some(&format!("SID={sid}")),
                Bytes::new(),
            )
            .await;
            assert_eq!(&r.body[..], route.as_bytes(), "SID={sid} left its node");
        }
        // JSESSIONID means nothing here; a '.' is not the separator.
        let other = if route == "red" { "blue" } else { "red" };
        let (base, _) = sid.split_once("--").unwrap();
        let r = request(
            &c,
            "GET",
            &gate.url("/page"),
            Some(&format!(
                "JSESSIONID=x.{other}; SID={base}.{other}--{route}"
            )),
            Bytes::new(),
        )
        .await;
        assert_eq!(
            &r.body[..],
            route.as_bytes(),
            "wrong cookie or separator honoured"
        );
    }
    // A session of a node that is gone fails over with the new separator.
    drop(a);
    gate.wait_health("red", "down").await;
    let sid = &by_route["red"];
    let r = request(
        &c,
        "GET",
        &gate.url("/page"),
        Some(&format!("SID={sid}")),
        Bytes::new(),
    )
    .await;
    assert_eq!(&r.body[..], b"blue");
    let (base, _) = sid.split_once("--").unwrap();
    assert_eq!(
        r.set_cookie("SID").as_deref(),
        Some(format!("{base}--blue").as_str()),
        "{:?}",
        r.headers
    );
}
