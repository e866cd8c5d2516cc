//! Access log (off by default): one line per request, written by a
//! background task so a slow disk never slows a request; when the queue is
//! full lines are dropped and counted, never waited for. Session ids are
//! credentials: the log carries their hash, and every `;jsessionid=` path
//! parameter and `jsessionid=` query parameter, in the request target and
//! in the Referer, is replaced by it too.

use crate::client_info::ClientInfo;
use crate::config::{AccessLog, AccessLogFormat};
use crate::redact::redact;
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
pub struct LoggedRequest {
    started: SystemTime,
    client: ClientInfo,
    method: http::Method,
    target: String,
    version: http::Version,
    user_agent: Option<String>,
    referer: Option<String>,
}

/// Which backend answered and why (absent when the balancer answered).
pub struct ServedBy<'a> {
    pub route: Option<&'a str>,
    pub reason: Option<&'a Reason>,
    pub session: Option<&'a str>,
}

impl LoggedRequest {
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
        LoggedRequest {
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
    pub fn write(
        &self,
        head: LoggedRequest,
        status: http::StatusCode,
        served: ServedBy<'_>,
        took: Duration,
    ) {
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
fn combined(
    h: &LoggedRequest,
    status: http::StatusCode,
    s: &ServedBy<'_>,
    took: Duration,
) -> String {
    let quote = |v: &Option<String>| quoted(v.as_deref().unwrap_or("-"));
    format!(
        "{} - - [{}] \"{} {} {:?}\" {} - \"{}\" \"{}\" route={} reason={} session={} ms={:.3}\n",
        h.client.peer.ip(),
        clf_time(h.started),
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

/// Apache's Common Log Format time, `10/Oct/2000:13:55:36 +0000`, the
/// form log tools expect between the brackets of a combined line. Always
/// UTC: the balancer reads no time-zone database.
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01, in the
/// proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One JSON access log line. Field names and values are part of the
/// log's contract (log pipelines parse them); a derived `Serialize`
/// writes them straight from the borrowed values, with no map per request.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    time: String,
    client: String,
    https: bool,
    method: &'a str,
    target: &'a str,
    version: String,
    status: u16,
    route: Option<&'a str>,
    reason: String,
    session: Option<String>,
    ms: f64,
    user_agent: Option<&'a str>,
    referer: Option<&'a str>,
}

fn json(h: &LoggedRequest, status: http::StatusCode, s: &ServedBy<'_>, took: Duration) -> String {
    let line = JsonLine {
        time: humantime::format_rfc3339_millis(h.started).to_string(),
        client: h.client.peer.ip().to_string(),
        https: h.client.https,
        method: h.method.as_str(),
        target: &h.target,
        version: format!("{:?}", h.version),
        status: status.as_u16(),
        route: s.route,
        reason: reason_text(s.reason),
        session: s.session.map(redact),
        ms: (took.as_secs_f64() * 1e6).round() / 1e3,
        user_agent: h.user_agent.as_deref(),
        referer: h.referer.as_deref(),
    };
    let mut text = serde_json::to_string(&line).unwrap_or_default();
    text.push('\n');
    text
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

    fn head(uri: &str) -> LoggedRequest {
        let req = http::Request::get(uri)
            .header("user-agent", "curl/8 \"x\"")
            .body(())
            .unwrap();
        capture(req, Some("jsessionid"))
    }

    /// The head of `req` as a plain-HTTP client on loopback sent it.
    fn capture(req: http::Request<()>, param: Option<&str>) -> LoggedRequest {
        let (parts, ()) = req.into_parts();
        let client = ClientInfo::new("127.0.0.1:5000".parse().unwrap(), false);
        LoggedRequest::capture(&parts, client, param)
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
            &ServedBy {
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
        let none = ServedBy {
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
        let served = ServedBy {
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
        assert!(line.contains(" +0000] \"GET "), "CLF time: {line}");
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

    #[test]
    fn combined_time_is_apache_clf() {
        let at = |secs: u64| clf_time(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "01/Jan/1970:00:00:00 +0000");
        // Apache's own example, 10/Oct/2000:13:55:36 -0700, in UTC.
        assert_eq!(at(971_211_336), "10/Oct/2000:20:55:36 +0000");
        assert_eq!(at(951_782_400), "29/Feb/2000:00:00:00 +0000", "leap day");
        assert_eq!(at(1_767_225_599), "31/Dec/2025:23:59:59 +0000");
        assert_eq!(
            at(4_107_542_400),
            "01/Mar/2100:00:00:00 +0000",
            "2100 is no leap year"
        );
    }

    #[test]
    fn json_line_fields_and_values() {
        let h = head("/a?b=1");
        let served = ServedBy {
            route: None,
            reason: None,
            session: None,
        };
        let text = json(&h, http::StatusCode::BAD_GATEWAY, &served, Duration::ZERO);
        assert!(text.ends_with("}\n"), "{text}");
        let j: serde_json::Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = [
            "time",
            "client",
            "https",
            "method",
            "target",
            "version",
            "status",
            "route",
            "reason",
            "session",
            "ms",
            "user_agent",
            "referer",
        ];
        want.sort();
        assert_eq!(keys, want);
        assert_eq!(j["client"], "127.0.0.1");
        assert_eq!(j["https"], false);
        assert_eq!(j["method"], "GET");
        assert_eq!(j["target"], "/a?b=1");
        assert_eq!(j["version"], "HTTP/1.1");
        assert_eq!(j["status"], 502);
        assert_eq!(j["route"], serde_json::Value::Null);
        assert_eq!(j["reason"], "-");
        assert_eq!(j["session"], serde_json::Value::Null);
        assert_eq!(j["ms"], 0.0);
        assert!(j["time"].as_str().unwrap().ends_with('Z'), "{text}");
    }
}
