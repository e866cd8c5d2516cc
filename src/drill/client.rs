//! The drill's client side: one keep-alive HTTP/1.1 connection per worker
//! and a per-session cookie jar, so the balancer sees what it would see from
//! browsers (several requests per connection, the cookies the site set).

use super::DrillError;
use bytes::Bytes;
use http::header::{COOKIE, HOST, SET_COOKIE, USER_AGENT};
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_rustls::TlsConnector;

/// Largest response body kept for inspection; the drill only needs the
/// JSON fields of small pages, and a bound keeps memory flat when `--path`
/// points at something big.
const MAX_BODY: usize = 1 << 20;

/// Where the drill sends its requests: parsed once so every worker connects
/// the same way and sends the same `Host`.
#[derive(Clone)]
pub(crate) struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
    /// For an `https://` target: the connector (trusting `--ca-file` or
    /// the system's roots) and the name the certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("https", &self.tls.is_some())
            .finish()
    }
}

impl Target {
    /// `url` must be `http[s]://host[:port][/]`; `path` is what is
    /// requested; an https target trusts `ca_file`'s CA, else the system's
    /// roots, and checks the certificate against the URL's host.
    pub(crate) fn parse(url: &str, path: &str, ca_file: Option<&Path>) -> Result<Self, DrillError> {
        let bad = || DrillError::BadTarget(url.to_owned());
        let uri: http::Uri = url.parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad()),
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(DrillError::TargetPath(url.to_owned()));
        }
        let auth = uri.authority().ok_or_else(bad)?;
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(DrillError::BadPath(path.to_owned()));
        }
        let host = auth.host().trim_matches(['[', ']']).to_owned();
        let tls = match (https, ca_file) {
            (true, ca_file) => Some(tls_connector(&host, ca_file)?),
            (false, Some(_)) => return Err(DrillError::CaFileWithoutHttps(url.to_owned())),
            (false, None) => None,
        };
        Ok(Target {
            port: auth.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
            authority: auth.as_str().to_owned(),
            path: path.to_owned(),
            tls,
        })
    }
}

/// The TLS side of an https target: HTTP/1.1 by ALPN, like a browser
/// keeping one connection per tab.
fn tls_connector(
    host: &str,
    ca_file: Option<&Path>,
) -> Result<(TlsConnector, ServerName<'static>), DrillError> {
    let roots = crate::tls::trust_roots(ca_file)?;
    let mut config = crate::tls::client_builder(roots)?.with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| DrillError::BadTarget(host.to_owned()))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// HTTP/1.1 on an open stream; the connection task runs on its own.
async fn handshake<S>(stream: S, authority: &str) -> Result<SendRequest<Empty<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {authority} failed: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One collected answer and when it arrived (for time-to-failover).
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub set_cookies: Vec<String>,
    pub body: Bytes,
    pub at: Instant,
}

/// A worker's connection: reused while the server keeps it open, replaced
/// when it closes, like a browser's.
struct Conn {
    target: Arc<Target>,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Conn {
    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, String> {
        let t = &self.target;
        let stream = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", t.authority))?;
        let _ = stream.set_nodelay(true);
        let Some((connector, name)) = &t.tls else {
            return handshake(stream, &t.authority).await;
        };
        let stream = connector
            .connect(name.clone(), stream)
            .await
            .map_err(|e| format!("TLS handshake with {} failed: {e}", t.authority))?;
        handshake(stream, &t.authority).await
    }

    /// `GET path` with `cookie` as the `Cookie` header. A request that
    /// fails because a reused idle connection was closed under it is sent
    /// once more on a new connection, as browsers do for idempotent
    /// requests; any other failure is the answer.
    async fn get(&mut self, cookie: Option<&str>) -> Result<Answer, String> {
        for _ in 0..2 {
            let open = match self.sender.take() {
                Some(mut s) => s.ready().await.is_ok().then_some(s),
                None => None,
            };
            let (mut sender, reused) = match open {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            let mut req = http::Request::get(self.target.path.as_str())
                .header(HOST, self.target.authority.as_str())
                .header(
                    USER_AGENT,
                    concat!("stickgate-drill/", env!("CARGO_PKG_VERSION")),
                );
            if let Some(c) = cookie {
                req = req.header(COOKIE, c);
            }
            let req = req
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("cannot build the request: {e}"))?;
            let res = match sender.send_request(req).await {
                Ok(r) => r,
                Err(e) if reused && (e.is_canceled() || e.is_incomplete_message()) => {
                    continue;
                }
                Err(e) => return Err(format!("request failed: {e}")),
            };
            let status = res.status();
            let set_cookies = res
                .headers()
                .get_all(SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect();
            let body = http_body_util::Limited::new(res.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the response body failed: {e}"))?
                .to_bytes();
            self.sender = Some(sender);
            return Ok(Answer {
                status,
                set_cookies,
                body,
                at: Instant::now(),
            });
        }
        Err("the connection closed twice before an answer".to_owned())
    }
}

/// `GET` once per entry of `cookies` (the `Cookie` header to send, if
/// any), at most `concurrency` at a time, each bounded by `timeout`.
/// Answers come back in the order of `cookies`.
pub(crate) async fn fetch_all(
    target: &Target,
    cookies: Vec<Option<String>>,
    concurrency: usize,
    timeout: Duration,
) -> Vec<Result<Answer, String>> {
    let n = cookies.len();
    let cookies = Arc::new(cookies);
    let next = Arc::new(AtomicUsize::new(0));
    let target = Arc::new(target.clone());
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (cookies, next, target) = (cookies.clone(), next.clone(), target.clone());
        workers.spawn(async move {
            let mut conn = Conn {
                target,
                sender: None,
            };
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(cookie) = cookies.get(i) else {
                    break;
                };
                let r = match tokio::time::timeout(timeout, conn.get(cookie.as_deref())).await {
                    Ok(r) => r,
                    Err(_) => {
                        conn.sender = None;
                        Err(format!(
                            "no answer within {}",
                            humantime::format_duration(timeout)
                        ))
                    }
                };
                out.push((i, r));
            }
            out
        });
    }
    let mut answers: Vec<Result<Answer, String>> =
        vec![Err("not requested (worker failed)".to_owned()); n];
    while let Some(done) = workers.join_next().await {
        for (i, r) in done.unwrap_or_default() {
            answers[i] = r;
        }
    }
    answers
}

/// A browser-like cookie jar for one site and path: the name/value pairs
/// the site set, updated from every `Set-Cookie`; a cookie set to expire
/// (or to an empty value) is removed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Jar {
    cookies: BTreeMap<String, String>,
}

impl Jar {
    /// Apply the `Set-Cookie` header values of one response.
    pub(crate) fn update(&mut self, set_cookies: &[String]) {
        let now = cookie::time::OffsetDateTime::now_utc();
        for raw in set_cookies {
            let Ok(c) = cookie::Cookie::parse(raw.as_str()) else {
                continue;
            };
            let expired = c.value().is_empty()
                || c.max_age()
                    .is_some_and(|d| d <= cookie::time::Duration::ZERO)
                || c.expires_datetime().is_some_and(|t| t <= now);
            if expired {
                self.cookies.remove(c.name());
            } else {
                self.cookies
                    .insert(c.name().to_owned(), c.value().to_owned());
            }
        }
    }

    /// The value of cookie `name`, if the jar has it.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// The `Cookie` header a browser would send, if any.
    pub(crate) fn header(&self) -> Option<String> {
        (!self.cookies.is_empty()).then(|| {
            self.cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jar_follows_set_cookie_like_a_browser() {
        let mut jar = Jar::default();
        jar.update(&[
            "JSESSIONID=ABC.tomcat1; Path=/; HttpOnly".into(),
            "theme=dark".into(),
        ]);
        assert_eq!(jar.get("JSESSIONID"), Some("ABC.tomcat1"));
        assert_eq!(
            jar.header().as_deref(),
            Some("JSESSIONID=ABC.tomcat1; theme=dark")
        );
        jar.update(&["JSESSIONID=ABC.tomcat2; Path=/".into()]);
        assert_eq!(jar.get("JSESSIONID"), Some("ABC.tomcat2"));
        jar.update(&["theme=; Max-Age=0".into()]);
        assert_eq!(jar.get("theme"), None);
        jar.update(&["JSESSIONID=gone; Expires=Thu, 01 Jan 1970 00:00:00 GMT".into()]);
        assert_eq!(jar.get("JSESSIONID"), None);
        assert_eq!(jar.header(), None);
        jar.update(&["not a cookie".into()]);
        assert_eq!(jar.header(), None);
    }

    #[test]
    fn targets_are_http_or_https_roots() {
        let t = Target::parse("http://127.0.0.1:8080", "/", None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert!(t.tls.is_none());
        let t = Target::parse("http://[::1]/", "/app/?x=1", None).unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 80, "/app/?x=1")
        );
        let t = Target::parse("https://gate.example", "/", None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("gate.example", 443));
        assert!(t.tls.is_some());
        assert!(matches!(
            Target::parse("ftp://gate", "/", None),
            Err(DrillError::BadTarget(_))
        ));
        assert!(matches!(
            Target::parse("127.0.0.1:8080", "/", None),
            Err(DrillError::BadTarget(_))
        ));
        assert!(matches!(
            Target::parse("http://gate/app", "/", None),
            Err(DrillError::TargetPath(_))
        ));
        assert!(matches!(
            Target::parse("http://gate", "app", None),
            Err(DrillError::BadPath(_))
        ));
        let missing = Path::new("/nonexistent/ca.pem");
        assert!(matches!(
            Target::parse("http://gate", "/", Some(missing)),
            Err(DrillError::CaFileWithoutHttps(_))
        ));
        assert!(matches!(
            Target::parse("https://gate", "/", Some(missing)),
            Err(DrillError::Tls(_))
        ));
    }
}
