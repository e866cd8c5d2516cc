//! AJP/1.3 drills against real Tomcat (Debian's tomcat10): each test
//! starts its own instances from generated `CATALINA_BASE` dirs, with only
//! an AJP connector on a free loopback port (`t1` requires a secret), a
//! `jvmRoute`, and the drill servlet (`tests/ajp/Drill.java`, compiled
//! here with javac against Tomcat's servlet-api.jar): a session counter
//! (`/count`), a body counter with CRC-32 (`/echo`), a large download
//! (`/big?mib=N`) and the request facts Tomcat saw (`/info`).
//!
//! Tomcat starts in about 2 s (no JSP, no jar scanning); every wait here
//! is bounded.
mod common;
use common::*;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use stickgate::backend::ajp::codec::{self, Reply};

const TOMCAT_HOME: &str = "/usr/share/tomcat10";
const SECRET: &str = "drill-secret-1";

/// The drill servlet, compiled once per test process.
fn servlet_classes() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        assert!(
            Path::new(TOMCAT_HOME).join("bin/bootstrap.jar").exists(),
            "Debian's tomcat10 is not installed (scripts/test.sh installs it)"
        );
        let dir = tempdir().join("classes");
        std::fs::create_dir_all(&dir).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ajp/Drill.java");
        let ok = Command::new("javac")
            .arg("-d")
            .arg(&dir)
            .arg("-cp")
            .arg(format!("{TOMCAT_HOME}/lib/servlet-api.jar"))
            .arg(src)
            .status()
            .expect("javac (a JDK) is needed for the AJP drills");
        assert!(ok.success(), "javac failed");
        dir
    })
}

/// A real Tomcat with one AJP connector, killed when dropped (and when
/// the test process dies: a watchdog shell kills the JVM once our end of
/// its stdin closes).
struct Tomcat {
    route: String,
    port: u16,
    /// The JVM's pid (signals go to it directly).
    pid: u32,
    _watchdog: Proc,
    _stdin: ChildStdin,
    dir: PathBuf,
}

impl Tomcat {
    fn start(route: &str, secret: Option<&str>) -> Tomcat {
        let classes = servlet_classes();
        let port = free_port();
        let dir = tempdir().join(route);
        let app = dir.join("webapps/ROOT/WEB-INF");
        std::fs::create_dir_all(app.join("classes")).unwrap();
        for d in ["conf", "logs", "temp", "work"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::copy(classes.join("Drill.class"), app.join("classes/Drill.class")).unwrap();
        std::fs::write(dir.join("conf/server.xml"), server_xml(route, port, secret)).unwrap();
        std::fs::write(app.join("web.xml"), WEB_XML).unwrap();
        let java = format!(
            "exec java -Xmx256m -XX:TieredStopAtLevel=1 -Ddrill.node={route} \
             -Dtomcat.util.scan.StandardJarScanFilter.jarsToSkip='*' \
             -Dcatalina.home={TOMCAT_HOME} -Dcatalina.base={base} -Djava.io.tmpdir={base}/temp \
             -cp {TOMCAT_HOME}/bin/bootstrap.jar:{TOMCAT_HOME}/bin/tomcat-juli.jar \
             org.apache.catalina.startup.Bootstrap start",
            base = dir.display()
        );
        let script = format!(
            "( {java} ) >{log} 2>&1 </dev/null & j=$!; echo $j; cat >/dev/null; kill -9 $j",
            log = dir.join("tomcat.log").display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start sh");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid: u32 = line.trim().parse().expect("JVM pid");
        let t = Tomcat {
            route: route.into(),
            port,
            pid,
            _watchdog: Proc { child },
            _stdin: stdin,
            dir,
        };
        let up = wait_for(Duration::from_secs(90), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up.is_ok(), "Tomcat {route} did not listen: {}", t.log());
        t.warm_up(secret);
        t
    }

    /// One request straight over AJP, so the first drill request does not
    /// pay for a cold JVM (class loading, servlet init) on a busy machine.
    fn warm_up(&self, secret: Option<&str>) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(&codec::CPING_PACKET).unwrap();
        let mut pong = [0u8; 5];
        s.read_exact(&mut pong).unwrap();
        let headers = http::HeaderMap::new();
        let mut fr = forward_request("/info", &headers);
        fr.secret = secret;
        let mut out = BytesMut::new();
        codec::encode_forward_request(&fr, codec::DEFAULT_MAX_PACKET, &mut out).unwrap();
        s.write_all(&out).unwrap();
        record_until_end(&mut s);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tomcat.log")).unwrap_or_default()
    }

    /// Send `sig`; for `STOP`, also wait until every thread of the JVM is
    /// stopped (`kill` returns once the stop is under way: on a loaded
    /// machine a thread may still run briefly, and answer a CPing).
    fn signal(&self, sig: &str) {
        signal_pid(self.pid, sig);
    }

    /// `[[backend]]` TOML for this node, with `extra` keys.
    fn toml(&self, extra: &str) -> String {
        format!(
            "[[backend]]\nroute = \"{}\"\nurl = \"ajp://127.0.0.1:{}\"\n{extra}\n",
            self.route, self.port
        )
    }
}

impl Drop for Tomcat {
    fn drop(&mut self) {
        self.signal("KILL");
    }
}

fn server_xml(route: &str, port: u16, secret: Option<&str>) -> String {
    let secret = match secret {
        Some(s) => format!("secretRequired=\"true\" secret=\"{s}\""),
        None => "secretRequired=\"false\"".into(),
    };
    format!(
        r#"<Server port="-1" shutdown="SHUTDOWN"><Service name="Catalina">
<Connector protocol="AJP/1.3" address="127.0.0.1" port="{port}" {secret} maxPostSize="-1"/>
<Engine name="Catalina" defaultHost="localhost" jvmRoute="{route}">
<Host name="localhost" appBase="webapps" unpackWARs="false" autoDeploy="false"/>
</Engine></Service></Server>
"#
    )
}

const WEB_XML: &str = r#"<web-app xmlns="https://jakarta.ee/xml/ns/jakartaee" version="6.0" metadata-complete="true">
<servlet><servlet-name>drill</servlet-name><servlet-class>Drill</servlet-class></servlet>
<servlet-mapping><servlet-name>drill</servlet-name>
<url-pattern>/count</url-pattern><url-pattern>/echo</url-pattern>
<url-pattern>/big</url-pattern><url-pattern>/info</url-pattern>
</servlet-mapping></web-app>
"#;

/// Health settings for the drills: CPing every 200 ms, two misses down.
const HEALTH: &str =
    "[health]\ninterval = \"200ms\"\ntimeout = \"2s\"\nrise = 1\nfall = 2\nsuspect_after = \"1s\"\n";

/// Two Tomcats (`t1` with the secret) behind one gate.
fn cluster() -> (Tomcat, Tomcat, Gate) {
    let t1 = Tomcat::start("t1", Some(SECRET));
    let t2 = Tomcat::start("t2", None);
    let gate = Gate::start(&format!(
        "{HEALTH}{}{}",
        t1.toml(&format!("ajp_secret = \"{SECRET}\"\nping_timeout = \"1s\"")),
        t2.toml("ping_timeout = \"1s\"")
    ));
    (t1, t2, gate)
}

fn node_of(r: &Resp) -> String {
    let text = String::from_utf8_lossy(&r.body);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("node="))
        .unwrap_or_else(|| panic!("no node in {} {text:?}", r.status))
        .to_owned()
}

fn count_of(r: &Resp) -> u32 {
    let text = String::from_utf8_lossy(&r.body);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("count="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {text:?}"))
}

/// A new session on `/count`: (node, `JSESSIONID=...` cookie).
async fn new_session(c: &HttpClient, gate: &Gate) -> (String, String) {
    let r = request(c, "GET", &gate.url("/count"), None, Bytes::new()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(count_of(&r), 1);
    let id = r.set_cookie("JSESSIONID").expect("session cookie");
    let node = node_of(&r);
    assert!(id.ends_with(&format!(".{node}")), "{id} from {node}");
    (node, format!("JSESSIONID={id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ajp_new_session_is_sticky_and_tomcat_sees_the_client() {
    let (_t1, _t2, gate) = cluster();
    let c = client();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let (node, cookie) = new_session(&c, &gate).await;
        for n in 2..=6 {
            let r = request(&c, "GET", &gate.url("/count"), Some(&cookie), Bytes::new()).await;
            assert_eq!(r.status, 200);
            assert_eq!(node_of(&r), node, "sticky");
            assert_eq!(count_of(&r), n, "the same session on the same node");
        }
        nodes.push(node);
    }
    nodes.sort();
    assert_eq!(nodes, ["t1", "t2"], "new sessions are spread");
    // Over a connection whose port we know: Tomcat must see the client's
    // port (AJP_REMOTE_PORT), not the balancer's connection to it.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gate.port)).unwrap();
    let port = s.local_addr().unwrap().port();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /info?a=1&b=%20 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut info = String::new();
    let _ = s.read_to_string(&mut info);
    assert!(info.starts_with("HTTP/1.1 200"), "{info}");
    assert!(info.contains("remote=127.0.0.1 "), "{info}");
    assert!(
        info.contains(&format!(" port={port} ")),
        "client port {port}: {info}"
    );
    assert!(info.contains("query=a=1&b=%20 "), "{info}");
    assert!(info.contains("secure=false scheme=http"), "{info}");
    assert!(info.contains("host=127.0.0.1:80"), "{info}");
}

/// CRC-32 (IEEE), as java.util.zip.CRC32 computes it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (!(crc & 1)).wrapping_add(1));
        }
    }
    !crc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ajp_post_of_5_mib_arrives_whole_with_and_without_content_length() {
    let (_t1, _t2, gate) = cluster();
    let body: Vec<u8> = (0..5u32 << 20).map(|i| (i % 253) as u8).collect();
    let want = format!("bytes={} crc={:x}", body.len(), crc32(&body));
    let c = client();
    let r = request(
        &c,
        "POST",
        &gate.url("/echo"),
        None,
        Bytes::from(body.clone()),
    )
    .await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body);
    assert!(text.contains(&want), "{text} (want {want})");
    // Chunked upload: no Content-Length, Tomcat asks for every packet.
    let mut raw_req = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    for part in body.chunks(100_000) {
        raw_req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        raw_req.extend_from_slice(part);
        raw_req.extend_from_slice(b"\r\n");
    }
    raw_req.extend_from_slice(b"0\r\n\r\n");
    let out = raw(gate.port, &raw_req, Duration::from_secs(30));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(&want), "{out} (want {want})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ajp_200_mib_download_streams_with_bounded_rss() {
    let t2 = Tomcat::start("t2", None);
    let gate = Gate::start(&format!("{HEALTH}{}", t2.toml("")));
    let c = client();
    // Warm up (JIT, pools), then the baseline.
    let r = request(&c, "GET", &gate.url("/big?mib=1"), None, Bytes::new()).await;
    assert_eq!(r.body.len(), 1 << 20);
    let base = rss_kib(gate.proc.pid());
    let started = Instant::now();
    let req = http::Request::get(gate.url("/big?mib=200&chunked=1"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let res = c.request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let (mut got, mut peak, mut pos) = (0usize, base, 0usize);
    while let Some(f) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("download stalled")
    {
        let Ok(d) = f.unwrap().into_data() else {
            continue;
        };
        for (i, b) in d.iter().enumerate() {
            assert_eq!(*b, ((pos + i) % 65536 % 251) as u8, "byte {}", pos + i);
        }
        pos += d.len();
        got += d.len();
        if got % (8 << 20) < d.len() {
            peak = peak.max(rss_kib(gate.proc.pid()));
        }
        assert!(started.elapsed() < Duration::from_secs(240), "too slow");
    }
    assert_eq!(got, 200 << 20);
    let growth = peak.saturating_sub(base);
    eprintln!(
        "200 MiB over AJP in {:?}; stickgate RSS {base} KiB, peak growth {growth} KiB",
        started.elapsed()
    );
    assert!(
        growth < 16 * 1024,
        "RSS grew by {growth} KiB while streaming"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ajp_wrong_secret_is_a_502_with_a_clear_log_line() {
    let t1 = Tomcat::start("t1", Some(SECRET));
    let gate = Gate::start(&format!(
        "{HEALTH}{}",
        t1.toml("ajp_secret = \"not-the-secret\"")
    ));
    let c = client();
    let r = request(&c, "GET", &gate.url("/count"), None, Bytes::new()).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert!(r.set_cookie("JSESSIONID").is_none());
    let logged = wait_for(Duration::from_secs(5), || {
        gate.logs().contains("secret does not match ajp_secret")
    });
    assert!(logged.is_ok(), "{}", gate.logs());
    let b = gate.backend_status("t1").await;
    assert!(b["errors"].as_u64().unwrap_or(0) >= 1, "{b}");
    // A head too big for one 8 KiB AJP packet (each line within the
    // listener's limits): 431 from the balancer, nothing sent to Tomcat.
    let big = "x".repeat(5000);
    let head = format!(
        "GET /count HTTP/1.1\r\nHost: a\r\nX-A: {big}\r\nX-B: {big}\r\nConnection: close\r\n\r\n"
    );
    let out = raw(gate.port, head.as_bytes(), Duration::from_secs(10));
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert!(out.contains("AJP packet size"), "{out}");
}

/// Repeat `GET /count` with `cookie` until `deadline`, counting non-200s;
/// the nodes that answered.
async fn hammer(c: &HttpClient, gate: &Gate, cookie: &str, n: usize) -> (usize, Vec<String>) {
    let mut errors = 0;
    let mut nodes = Vec::new();
    for _ in 0..n {
        match try_request(c, "GET", &gate.url("/count"), Some(cookie), Bytes::new()).await {
            Ok(r) if r.status == 200 => nodes.push(node_of(&r)),
            Ok(r) => {
                eprintln!("{} {:?}", r.status, r.body);
                errors += 1
            }
            Err(e) => {
                eprintln!("{e}");
                errors += 1
            }
        }
    }
    (errors, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ajp_sigstop_is_caught_by_cping_and_sigkill_loses_no_get() {
    let (t1, t2, gate) = cluster();
    let c = client();
    let (node_a, cookie_a) = new_session(&c, &gate).await;
    let (victim, other) = if node_a == "t1" {
        (&t1, &t2)
    } else {
        (&t2, &t1)
    };
    // SIGSTOP: the JVM still accepts connections, only CPing tells.
    victim.signal("STOP");
    let t0 = Instant::now();
    let r = request(
        &c,
        "GET",
        &gate.url("/count"),
        Some(&cookie_a),
        Bytes::new(),
    )
    .await;
    let took = t0.elapsed();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(node_of(&r), other.route, "answered by the other node");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    gate.wait_health(&victim.route, "down").await;
    assert!(
        gate.logs().contains("CPong"),
        "CPing named in the logs: {}",
        gate.logs()
    );
    victim.signal("CONT");
    gate.wait_health(&victim.route, "up").await;
    // SIGKILL under a stream of GETs of a session on the victim.
    let (_, cookie_b) = loop {
        let (n, ck) = new_session(&c, &gate).await;
        if n == victim.route {
            break (n, ck);
        }
    };
    let (errors, _) = hammer(&c, &gate, &cookie_b, 20).await;
    assert_eq!(errors, 0);
    victim.signal("KILL");
    let (errors, nodes) = hammer(&c, &gate, &cookie_b, 50).await;
    assert_eq!(errors, 0, "GETs failed across the SIGKILL");
    assert!(nodes.iter().all(|n| *n == other.route), "{nodes:?}");
}

/// A plain GET of `path` as a Forward Request.
fn forward_request<'a>(path: &'a str, headers: &'a http::HeaderMap) -> codec::ForwardRequest<'a> {
    codec::ForwardRequest {
        method: &http::Method::GET,
        protocol: "HTTP/1.1",
        path,
        query: None,
        remote_addr: "192.0.2.7",
        remote_port: Some(40000),
        server_name: "shop.example",
        server_port: 80,
        is_ssl: false,
        ssl: None,
        headers,
        jvm_route: Some("t1"),
        secret: None,
    }
}

/// Read packets from `s` until END_RESPONSE, returning the raw bytes.
fn record_until_end(s: &mut std::net::TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < end, "no END_RESPONSE in {raw:?}");
        let n = s.read(&mut buf).expect("read from Tomcat");
        assert!(n > 0, "Tomcat closed: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
        let mut copy = BytesMut::from(&raw[..]);
        let mut ended = false;
        while let Some(r) = codec::decode_reply(&mut copy, codec::DEFAULT_MAX_PACKET).unwrap() {
            ended |= matches!(r, Reply::End { .. });
        }
        if ended {
            return raw;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ajp_codec_reads_packets_recorded_from_real_tomcat() {
    let t1 = Tomcat::start("t1", Some(SECRET));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", t1.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // CPing -> CPong, byte for byte.
    s.write_all(&codec::CPING_PACKET).unwrap();
    let mut pong = [0u8; 5];
    s.read_exact(&mut pong).unwrap();
    assert_eq!(pong, [b'A', b'B', 0, 1, 9]);
    // A Forward Request for /count with the secret, recorded to the end.
    let mut headers = http::HeaderMap::new();
    headers.insert("host", "shop.example".parse().unwrap());
    let mut fr = forward_request("/count", &headers);
    fr.secret = Some(SECRET);
    let mut out = BytesMut::new();
    codec::encode_forward_request(&fr, codec::DEFAULT_MAX_PACKET, &mut out).unwrap();
    s.write_all(&out).unwrap();
    let recorded = record_until_end(&mut s);
    let mut buf = BytesMut::from(&recorded[..]);
    let mut replies = Vec::new();
    while let Some(r) = codec::decode_reply(&mut buf, codec::DEFAULT_MAX_PACKET).unwrap() {
        replies.push(r);
    }
    assert!(buf.is_empty(), "every recorded byte decoded");
    let Some(Reply::Headers { status, headers }) = replies.first() else {
        panic!("{replies:?}")
    };
    assert_eq!(*status, 200);
    let cookie = headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("JSESSIONID=") && cookie.contains(".t1;"),
        "{cookie}"
    );
    assert_eq!(headers["x-node"], "t1");
    let body: Vec<u8> = replies
        .iter()
        .filter_map(|r| match r {
            Reply::Body(b) => Some(b.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(String::from_utf8_lossy(&body), "node=t1 count=1\n");
    assert_eq!(replies.last(), Some(&Reply::End { reuse: true }));
    // The recording cut anywhere: waits for more, never panics or errs.
    for cut in 0..recorded.len() {
        let mut b = BytesMut::from(&recorded[..cut]);
        while let Ok(Some(_)) = codec::decode_reply(&mut b, codec::DEFAULT_MAX_PACKET) {}
    }
    // A smaller max_packet_size than Tomcat's packets is a typed error.
    let mut b = BytesMut::from(&recorded[..]);
    let mut result = Ok(None);
    for _ in 0..replies.len() {
        result = codec::decode_reply(&mut b, 16);
        if result.is_err() {
            break;
        }
    }
    assert!(
        matches!(result, Err(codec::CodecError::TooLarge { max: 16, .. })),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ajp_import_modjk_round_trip_serves_the_same_tomcats() {
    let t1 = Tomcat::start("t1", Some(SECRET));
    let t2 = Tomcat::start("t2", None);
    let dir = tempdir();
    let workers = dir.join("workers.properties");
    std::fs::write(
        &workers,
        format!(
            "worker.list=lb\nworker.lb.type=lb\nworker.lb.balance_workers=t1,t2\n\
             worker.t1.type=ajp13\nworker.t1.host=127.0.0.1\nworker.t1.port={}\n\
             worker.t1.secret={SECRET}\nworker.t1.ping_mode=A\nworker.t1.ping_timeout=1000\n\
             worker.t2.type=ajp13\nworker.t2.host=127.0.0.1\nworker.t2.port={}\n\
             worker.t2.ping_mode=A\nworker.t2.max_packet_size=16384\n",
            t1.port, t2.port
        ),
    )
    .unwrap();
    let out = Command::new(stickgate_bin())
        .args(["import", "modjk"])
        .arg(&workers)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("not AJP"), "{text}");
    let mut t: toml::Table = text.parse().expect("import output is TOML");
    let urls: Vec<&str> = t["backend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            format!("ajp://127.0.0.1:{}", t1.port),
            format!("ajp://127.0.0.1:{}", t2.port)
        ]
    );
    // The gate brings its own listeners; everything else is the import's.
    t.remove("server");
    t.remove("admin");
    let gate = Gate::start(&toml::to_string(&t).unwrap());
    let c = client();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let (node, cookie) = new_session(&c, &gate).await;
        let r = request(&c, "GET", &gate.url("/count"), Some(&cookie), Bytes::new()).await;
        assert_eq!((node_of(&r), count_of(&r)), (node.clone(), 2), "sticky");
        nodes.push(node);
    }
    nodes.sort();
    assert_eq!(
        nodes,
        ["t1", "t2"],
        "both imported nodes serve, t1 with its secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ajp_url_on_an_http_port_is_a_502_with_the_error_counted() {
    // A real HTTP node behind an ajp:// url: its answer has the wrong magic.
    let node = Backend::start("h1", &[]);
    let gate = Gate::start(&format!(
        "[health]\nenabled = false\n[[backend]]\nroute = \"h1\"\nurl = \"ajp://127.0.0.1:{}\"\nping_mode = []\n",
        node.port
    ));
    let c = client();
    let r = request(&c, "GET", &gate.url("/count"), None, Bytes::new()).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(&r.body[..], b"502 bad gateway: AJP backend failed\n");
    let logged = wait_for(Duration::from_secs(5), || {
        gate.logs().contains("wrong AJP magic")
    });
    assert!(logged.is_ok(), "{}", gate.logs());
    let b = gate.backend_status("h1").await;
    assert!(b["errors"].as_u64().unwrap_or(0) >= 1, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ajp_cpong_timeout_moves_even_a_post_with_its_body() {
    let t1 = Tomcat::start("t1", None);
    let t2 = Tomcat::start("t2", None);
    // Health checks off: only the CPing before the request can tell.
    let keys = "ping_timeout = \"500ms\"\nping_after_idle = \"0s\"";
    let gate = Gate::start(&format!(
        "[health]\nenabled = false\n{}{}",
        t1.toml(keys),
        t2.toml(keys)
    ));
    let c = client();
    let cookie = loop {
        let (node, cookie) = new_session(&c, &gate).await;
        if node == "t1" {
            break cookie;
        }
    };
    t1.signal("STOP");
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
    let want = format!("node=t2 bytes={} crc={:x}", body.len(), crc32(&body));
    let t0 = Instant::now();
    let r = request(
        &c,
        "POST",
        &gate.url("/echo"),
        Some(&cookie),
        Bytes::from(body),
    )
    .await;
    let took = t0.elapsed();
    t1.signal("CONT");
    assert_eq!(r.status, 200, "{:?}", r.body);
    let text = String::from_utf8_lossy(&r.body);
    assert!(text.contains(&want), "{text} (want {want})");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// A client on a TLS listener: Tomcat learns the connection is secure, and
/// the cipher suite and key size the balancer negotiated (the AJP SSL
/// attributes mod_jk sends from mod_ssl).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ajp_tls_client_reaches_tomcat_with_its_cipher_and_key_size() {
    let t = Tomcat::start("t1", None);
    let dir = tempdir();
    let ca = common::tls::Ca::new(&dir);
    let leaf = ca.leaf(&dir, "a", &["a.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let (_gate, port) = common::tls::tls_gate(std::slice::from_ref(&leaf), &t.toml(""), "");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--tlsv1.3", "--cacert"])
        .arg(&ca.pem)
        .args(["--resolve", &format!("a.test:{port}:127.0.0.1")])
        .arg(format!("https://a.test:{port}/info"))
        .output()
        .expect("curl");
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(info.contains("secure=true scheme=https"), "{info}");
    assert!(
        info.contains("cipher=TLS_AES_") || info.contains("cipher=TLS_CHACHA20_"),
        "cipher suite: {info}"
    );
    assert!(
        info.contains("keysize=128") || info.contains("keysize=256"),
        "key size: {info}"
    );
}
