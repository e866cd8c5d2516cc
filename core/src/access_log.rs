//! Access log (off by default): one line per request, written by a
//! background task so a slow disk never slows a request; when the queue is
//! full lines are dropped and counted, never waited for. Session ids are
//! credentials: the log carries their hash, and every `;jsessionid=` path
//! parameter and `jsessionid=` query parameter, in the request target and
//! in the Referer, is replaced by it too.

use crate::config::{AccessLog, AccessLogFormat};
use crate::proxy::ClientInfo;
use crate::routing::session::redact;
use crate::routing::Reason;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// A running access log.
pub struct AccessLogger {
    tx: mpsc::Sender<String>,
    format: AccessLogFormat,
    /// The settings it was opened with (a reload with other settings opens
    /// a new one).
    pub settings: AccessLog,
    dropped: Arc<AtomicU64>,
}

/// What the log needs from the request head, copied before the request
/// moves upstream (only when the log is on).
pub struct Head {
    started: SystemTime,
    client: ClientInfo,
    method: http::Method,
    target: String,
    version: http::Version,
    user_agent: Option<String>,
    referer: Option<String>,
}

/// Which backend answered and why (absent when the balancer answered).
pub struct Served<'a> {
    pub route: Option<&'a str>,
    pub reason: Option<&'a Reason>,
    pub session: Option<&'a str>,
}

impl Head {
    /// Copy the request line and the headers the log shows; session ids
    /// (parameters named `param` or `jsessionid`, any case) are hashed in
    /// the copy of the target and of the Referer.
    pub fn capture(parts: &http::request::Parts, client: ClientInfo, param: Option<&str>) -> Self {
        let names: &[&str] = match param {
            Some(p) => &[p, TOMCAT_PARAM],
            None => &[TOMCAT_PARAM],
        };
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let header = |h| {
            parts
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Head {
            started: SystemTime::now(),
            client,
            method: parts.method.clone(),
            target: redact_ids(pq, names),
            version: parts.version,
            user_agent: header(http::header::USER_AGENT),
            referer: header(http::header::REFERER).map(|r| redact_ids(&r, names)),
        }
    }
}

/// Tomcat's own name for URL session ids, hashed even when the balancer's
/// path parameter is renamed or off (a backend may still put it in links).
const TOMCAT_PARAM: &str = "jsessionid";

/// `text` (a request target or URL) with the value of every `;name=`,
/// `?name=` and `&name=` parameter, `name` any of `names` in any case,
/// replaced by its [`redact`]ed hash. A value ends at `;`, `/`, `?`, `&`
/// or `#`.
pub fn redact_ids(text: &str, names: &[&str]) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let start = matches!(b[i], b';' | b'?' | b'&').then(|| value_start(b, i + 1, names));
        let Some(Some(v)) = start else {
            i += 1;
            continue;
        };
        let end = text[v..]
            .find([';', '/', '?', '&', '#'])
            .map_or(text.len(), |e| v + e);
        if end > v {
            out.push_str(&text[copied..v]);
            out.push_str(&redact(&text[v..end]));
            copied = end;
        }
        i = end;
    }
    out.push_str(&text[copied..]);
    out
}

/// Where the value starts if `b[at..]` is `name=` for one of `names`.
fn value_start(b: &[u8], at: usize, names: &[&str]) -> Option<usize> {
    let rest = &b[at..];
    names.iter().find_map(|n| {
        let n = n.as_bytes();
        let hit = !n.is_empty()
            && rest.len() > n.len()
            && rest[n.len()] == b'='
            && rest[..n.len()].eq_ignore_ascii_case(n);
        hit.then_some(at + n.len() + 1)
    })
}

/// A value inside a double-quoted field of the combined format: `"` and
/// `\` are backslash-escaped and anything not printable ASCII becomes
/// `\xNN`, so a header can neither close the field nor forge a line.
fn quoted(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => {
                let mut buf = [0u8; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{byte:02x}"));
                }
            }
        }
    }
    out
}

impl AccessLogger {
    /// Start the writer for `settings`; `None` when the log is off.
    pub fn open(settings: Option<&AccessLog>) -> Option<Arc<Self>> {
        let settings = settings?.clone();
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let path = settings.path.clone();
        tokio::spawn(writer(rx, path, dropped.clone()));
        Some(Arc::new(AccessLogger {
            tx,
            format: settings.format,
            settings,
            dropped,
        }))
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queue one line.
    pub fn write(&self, head: Head, status: http::StatusCode, served: Served<'_>, took: Duration) {
        let line = match self.format {
            AccessLogFormat::Combined => combined(&head, status, &served, took),
            AccessLogFormat::Json => json(&head, status, &served, took),
        };
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn reason_text(r: Option<&Reason>) -> String {
    match r {
        Some(Reason::Sticky) => "sticky".into(),
        Some(Reason::New) => "new".into(),
        Some(Reason::Failover { from }) => format!("failover:{from}"),
        None => "-".into(),
    }
}

/// Apache/nginx "combined" plus route, routing reason, hashed session and
/// time to the response head, so existing log tools parse the front.
fn combined(h: &Head, status: http::StatusCode, s: &Served<'_>, took: Duration) -> String {
    let quote = |v: &Option<String>| quoted(v.as_deref().unwrap_or("-"));
    format!(
        "{} - - [{}] \"{} {} {:?}\" {} - \"{}\" \"{}\" route={} reason={} session={} ms={:.3}\n",
        h.client.peer.ip(),
        humantime::format_rfc3339_millis(h.started),
        h.method,
        quoted(&h.target.replace('"', "%22")),
        h.version,
        status.as_u16(),
        quote(&h.referer),
        quote(&h.user_agent),
        s.route.unwrap_or("-"),
        reason_text(s.reason),
        s.session.map(redact).as_deref().unwrap_or("-"),
        took.as_secs_f64() * 1000.0,
    )
}

fn json(h: &Head, status: http::StatusCode, s: &Served<'_>, took: Duration) -> String {
    let mut line = serde_json::json!({
        "time": humantime::format_rfc3339_millis(h.started).to_string(),
        "client": h.client.peer.ip().to_string(),
        "https": h.client.https,
        "method": h.method.as_str(),
        "target": h.target,
        "version": format!("{:?}", h.version),
        "status": status.as_u16(),
        "route": s.route,
        "reason": reason_text(s.reason),
        "session": s.session.map(redact),
        "ms": (took.as_secs_f64() * 1e6).round() / 1e3,
        "user_agent": h.user_agent,
        "referer": h.referer,
    })
    .to_string();
    line.push('\n');
    line
}

/// Drain the queue into the file (or stderr), flushing whenever the queue
/// runs empty; a write error is reported once and lines are counted as
/// dropped until writing works again.
async fn writer(
    mut rx: mpsc::Receiver<String>,
    path: Option<std::path::PathBuf>,
    dropped: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(256);
    let mut failing = false;
    while rx.recv_many(&mut batch, 256).await > 0 {
        let lines = std::mem::take(&mut batch);
        let n = lines.len() as u64;
        let path = path.clone();
        let result = tokio::task::spawn_blocking(move || write_lines(path.as_deref(), &lines))
            .await
            .unwrap_or_else(|e| Err((n, std::io::Error::other(e.to_string()))));
        match result {
            Ok(()) => failing = false,
            Err((n, e)) if !failing => {
                failing = true;
                dropped.fetch_add(n, Ordering::Relaxed);
                tracing::error!(error = %e, "access log write failed; dropping lines until it works again");
            }
            Err((n, _)) => {
                dropped.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

fn write_lines(
    path: Option<&std::path::Path>,
    lines: &[String],
) -> Result<(), (u64, std::io::Error)> {
    let n = lines.len() as u64;
    let write = |w: &mut dyn Write| -> std::io::Result<()> {
        for l in lines {
            w.write_all(l.as_bytes())?;
        }
        w.flush()
    };
    match path {
        None => write(&mut std::io::stderr().lock()).map_err(|e| (n, e)),
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| (n, e))?;
            write(&mut std::io::BufWriter::new(f)).map_err(|e| (n, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(uri: &str) -> Head {
        let req = http::Request::get(uri)
            .header("user-agent", "curl/8 \"x\"")
            .body(())
            .unwrap();
        capture(req, Some("jsessionid"))
    }

    /// The head of `req` as a plain-HTTP client on loopback sent it.
    fn capture(req: http::Request<()>, param: Option<&str>) -> Head {
        let (parts, ()) = req.into_parts();
        let client = ClientInfo::new("127.0.0.1:5000".parse().unwrap(), false);
        Head::capture(&parts, client, param)
    }

    #[test]
    fn path_parameter_is_hashed() {
        let h = head("/app;jsessionid=6B941D9A646C9BD5.tomcat1?x=1");
        assert!(!h.target.contains("6B941D9A"), "{}", h.target);
        assert!(h.target.starts_with("/app;jsessionid=sid#"), "{}", h.target);
        assert!(h.target.ends_with("?x=1"), "{}", h.target);
    }

    #[test]
    fn every_session_parameter_is_hashed_in_target_and_referer() {
        let req = http::Request::get(
            "/a;jsessionid=AAAA1111.t1/b;JSESSIONID=BBBB2222?q=1&jsessionid=CCCC3333&z=2",
        )
        .header(
            "referer",
            "https://x.example/p;jsessionid=DDDD4444?JSessionId=EEEE5555",
        )
        .body(())
        .unwrap();
        let h = capture(req, Some("sid"));
        let line = combined(
            &h,
            http::StatusCode::OK,
            &Served {
                route: None,
                reason: None,
                session: None,
            },
            Duration::ZERO,
        );
        for id in ["AAAA1111", "BBBB2222", "CCCC3333", "DDDD4444", "EEEE5555"] {
            assert!(!line.contains(id), "{id} leaked: {line}");
        }
        assert_eq!(line.matches("sid#").count(), 5, "{line}");
        assert!(h.target.starts_with("/a;jsessionid=sid#"), "{}", h.target);
        assert!(h.target.contains("/b;JSESSIONID=sid#"), "{}", h.target);
        assert!(h.target.contains("?q=1&jsessionid=sid#"), "{}", h.target);
        assert!(h.target.ends_with("&z=2"), "{}", h.target);
        assert_eq!(
            redact_ids("/x;sid=V", &["sid"]),
            format!("/x;sid={}", redact("V"))
        );
        assert_eq!(
            redact_ids("/x;sid=;sidx=V?sid", &["sid"]),
            "/x;sid=;sidx=V?sid"
        );
    }

    #[test]
    fn quotes_and_backslashes_cannot_break_out_of_a_field() {
        let req = http::Request::get("/")
            .header("user-agent", "evil\\\" 200 - \"forged")
            .header("referer", "r\\")
            .body(())
            .unwrap();
        let h = capture(req, None);
        let none = Served {
            route: None,
            reason: None,
            session: None,
        };
        let line = combined(&h, http::StatusCode::OK, &none, Duration::ZERO);
        assert!(
            line.contains(r#""r\\" "evil\\\" 200 - \"forged""#),
            "{line}"
        );
        // Every quote inside a field is escaped: unescaped quotes delimit
        // exactly the three quoted fields.
        let mut unescaped = 0;
        let mut esc = false;
        for c in line.chars() {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => unescaped += 1,
                _ => {}
            }
        }
        assert_eq!(unescaped, 6, "{line}");
        assert_eq!(quoted("a\u{7f}é"), "a\\x7f\\xc3\\xa9");
    }

    #[test]
    fn combined_line_has_route_reason_and_hashed_session() {
        let h = head("/");
        let from: Arc<str> = "tomcat1".into();
        let reason = Reason::Failover { from };
        let served = Served {
            route: Some("tomcat2"),
            reason: Some(&reason),
            session: Some("6B941D9A646C9BD5"),
        };
        let line = combined(
            &h,
            http::StatusCode::OK,
            &served,
            Duration::from_micros(1500),
        );
        assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
        assert!(
            line.contains("\"GET / HTTP/1.1\" 200 - \"-\" \"curl/8 \\\"x\\\"\""),
            "{line}"
        );
        assert!(
            line.contains("route=tomcat2 reason=failover:tomcat1 session=sid#"),
            "{line}"
        );
        assert!(!line.contains("6B941D9A"), "{line}");
        assert!(line.trim_end().ends_with("ms=1.500"), "{line}");
        let j: serde_json::Value = serde_json::from_str(&json(
            &h,
            http::StatusCode::OK,
            &served,
            Duration::from_micros(1500),
        ))
        .unwrap();
        assert_eq!(j["route"], "tomcat2");
        assert_eq!(j["status"], 200);
        assert_eq!(j["ms"], 1.5);
    }
}
