//! Header hygiene between client and backend: checks that refuse a
//! request head outright, hop-by-hop removal (RFC 9110 section 7.6.1), the
//! X-Forwarded-* set (believed only from `trusted_proxies`), and the
//! per-request preparation every forwarded request gets.

use super::{error_response, ClientInfo};
use crate::body::ResponseBody;
use crate::config::raw::{Cidr, ServerSection};
use crate::config::Config;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http::{Response, StatusCode, Uri, Version};
use std::net::IpAddr;

/// Where `Transfer-Encoding` is in [`HOP_BY_HOP`].
const TRANSFER_ENCODING_AT: usize = 5;

static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Why a request head is refused before it is routed; each maps to one
/// status, like nginx and HAProxy answer the same heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// One header line is longer than `server.max_header_line` (Tomcat
    /// would refuse it too, after the balancer had spent a backend on it).
    #[error("a header line is longer than {0} bytes")]
    LineTooLong(usize),
    /// Two Host headers: which one the backend believes is anyone's guess.
    #[error("more than one Host header")]
    DuplicateHost,
    /// `Content-Length` together with `Transfer-Encoding` (request
    /// smuggling shape; RFC 9112 section 6.1 allows rejecting it).
    #[error("both Content-Length and Transfer-Encoding")]
    Framing,
}

impl Reject {
    /// The client-facing answer with a one-line body.
    pub fn response(&self) -> Response<ResponseBody> {
        match self {
            Reject::LineTooLong(_) => error_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "431 request header fields too large: a header line is too long\n",
            ),
            Reject::DuplicateHost => error_response(
                StatusCode::BAD_REQUEST,
                "400 bad request: more than one Host header\n",
            ),
            Reject::Framing => error_response(
                StatusCode::BAD_REQUEST,
                "400 bad request: both Content-Length and Transfer-Encoding\n",
            ),
        }
    }
}

/// Marks a request whose HTTP/1.1 head carried both `Content-Length` and
/// `Transfer-Encoding`: hyper keeps only the chunked framing in the parsed
/// headers, so the listener, which sees the raw head, says so here.
#[derive(Debug, Clone, Copy)]
pub struct ConflictingFraming;

/// What [`check_request`]'s pass over an accepted head saw that a later
/// step would otherwise look up by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checked {
    /// An `Upgrade` field is present: only then can the request be a
    /// WebSocket handshake over HTTP/1.1 (most heads skip that check).
    pub upgrade: bool,
}

/// Refuse heads no backend should see (see [`Reject`]). Cheap: one pass
/// over the headers (which also counts Host and the framing headers, so
/// nothing is looked up by name), no allocation.
pub fn check_request(parts: &Parts, cfg: &ServerSection) -> Result<Checked, Reject> {
    if parts.extensions.get::<ConflictingFraming>().is_some() {
        return Err(Reject::Framing);
    }
    let limit = cfg.max_header_line;
    let (mut hosts, mut length, mut chunked) = (0, false, false);
    let mut checked = Checked::default();
    for (name, value) in &parts.headers {
        if name.as_str().len() + 2 + value.len() > limit {
            return Err(Reject::LineTooLong(limit));
        }
        if name == header::HOST {
            hosts += 1;
        } else if name == header::CONTENT_LENGTH {
            length = true;
        } else if name == header::TRANSFER_ENCODING {
            chunked = true;
        } else if name == header::UPGRADE {
            checked.upgrade = true;
        }
    }
    if hosts > 1 {
        return Err(Reject::DuplicateHost);
    }
    if length && chunked {
        return Err(Reject::Framing);
    }
    Ok(checked)
}

/// Per-request header work done once, before any attempt: Host from an
/// absolute-form target (never its userinfo), hop-by-hop removal, cookie
/// crumbs joined, client-made forwarding headers dropped unless the peer
/// is a trusted proxy, then the balancer's own X-Forwarded-* set.
pub fn prepare(parts: &mut Parts, cfg: &Config, client: ClientInfo) {
    // Room for the three X-Forwarded-* fields too: the map arrives sized
    // for the client's fields, and growing it one insert at a time would
    // rehash it more than once.
    parts.headers.reserve(3);
    prepare_deferred(parts, cfg, client).apply(&mut parts.headers);
}

/// [`prepare`], with the forwarding fields returned instead of inserted:
/// the in-task exchange writes them straight into the request head, which
/// spares three inserts of custom names (hashed, on every request); any
/// other way a request travels inserts them first ([`Forwarding::apply`]).
pub fn prepare_deferred(parts: &mut Parts, cfg: &Config, client: ClientInfo) -> Forwarding {
    // Room for Host at once: the map arrives sized for the client's fields.
    parts.headers.reserve(1);
    let host_of_target = parts.uri.authority().and_then(host_value);
    if let Some(v) = &host_of_target {
        parts.headers.insert(header::HOST, v.clone());
    }
    if parts.uri.scheme().is_some() {
        // Origin form from the parts already parsed (every h2 request
        // comes absolute): no second parse of the target.
        let mut origin = http::uri::Parts::default();
        origin.path_and_query = Some(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        if let Ok(u) = Uri::from_parts(origin) {
            parts.uri = u;
        }
    }
    // One pass over the fields tells which of the steps below have
    // anything to do; the steps only remove fields, so what it saw absent
    // stays absent.
    let seen = Seen::of(&parts.headers);
    strip_present(&mut parts.headers, seen.hop);
    if seen.cookies > 1 {
        join_cookies(&mut parts.headers);
    }
    let s = &cfg.server;
    let trusted = is_trusted(&s.trusted_proxies, client.peer.ip());
    if !trusted && seen.forwarding {
        strip_forwarding(&mut parts.headers);
    }
    let fwd = Forwarded {
        for_: s.x_forwarded_for,
        proto: s.x_forwarded_proto,
        host: s.x_forwarded_host,
    };
    let scheme = if client.https { "https" } else { "http" };
    // Host is never removed above (see `strip_hop_by_hop`).
    let host = host_of_target.or(seen.host);
    parts.version = Version::HTTP_11;
    forwarding(&mut parts.headers, fwd, &client.ip, scheme, trusted, host)
}

/// `host[:port]` of an authority, without any `user:password@`.
fn host_value(a: &Authority) -> Option<HeaderValue> {
    if !a.as_str().contains('@') {
        // Already `host[:port]`: copied as it is, nothing formatted.
        return HeaderValue::from_str(a.as_str()).ok();
    }
    let v = match a.port_u16() {
        Some(p) => format!("{}:{p}", a.host()),
        None => a.host().to_owned(),
    };
    HeaderValue::from_str(&v).ok()
}

/// Whether `ip` is listed in `server.trusted_proxies`.
pub fn is_trusted(list: &[Cidr], ip: IpAddr) -> bool {
    list.iter().any(|c| c.contains(ip))
}

/// What [`prepare`] needs to know about a request's fields, from one pass.
struct Seen {
    /// Which [`HOP_BY_HOP`] names are present (see [`hop_bit`]).
    hop: u8,
    /// Cookie fields (HTTP/2 sends one per cookie).
    cookies: usize,
    /// Any field `strip_forwarding` removes.
    forwarding: bool,
    /// The (first) Host field.
    host: Option<HeaderValue>,
}

impl Seen {
    fn of(h: &HeaderMap) -> Self {
        let mut seen = Seen {
            hop: 0,
            cookies: 0,
            forwarding: false,
            host: None,
        };
        for (n, v) in h {
            if n == header::COOKIE {
                seen.cookies += 1;
            } else if n == header::HOST {
                if seen.host.is_none() {
                    seen.host = Some(v.clone());
                }
            } else if let Some(i) = hop_index(n) {
                seen.hop |= hop_bit(i, v);
            } else {
                seen.forwarding |= is_forwarding(n);
            }
        }
        seen
    }
}

/// A field a client could use to forge its address, scheme or host.
fn is_forwarding(n: &HeaderName) -> bool {
    let n = n.as_str();
    n == "forwarded" || n == "x-real-ip" || n.starts_with("x-forwarded-")
}

/// Remove what a client could use to forge its address, scheme or host
/// toward the backend: `Forwarded`, `X-Real-IP` and every `X-Forwarded-*`.
pub fn strip_forwarding(h: &mut HeaderMap) {
    let forged: Vec<HeaderName> = h.keys().filter(|n| is_forwarding(n)).cloned().collect();
    for n in forged {
        h.remove(n);
    }
}

/// HTTP/2 splits Cookie into one field per cookie (RFC 9113 section
/// 8.2.3); an HTTP/1.1 backend must get them as one `Cookie` joined by
/// "; ". Bytes are joined as they are, so a non-ASCII cookie survives.
pub fn join_cookies(h: &mut HeaderMap) {
    let all = h.get_all(header::COOKIE);
    if all.iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in all.iter() {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

/// Remove hop-by-hop headers, including those the `Connection` header names
/// (except Host, which a client must not be able to take away: the backend
/// would then trust whatever else names the host).
/// A request that came chunked also loses any `Content-Length`, so the
/// backend can never see two conflicting framings (request smuggling).
pub fn strip_hop_by_hop(h: &mut HeaderMap) -> Kept {
    // One pass over the fields finds which hop-by-hop headers are there;
    // most heads carry none or only `Connection: keep-alive`, so nothing
    // else is hashed or built.
    let mut present = 0u8;
    let mut set_cookie = false;
    for (n, v) in h.iter() {
        if let Some(i) = hop_index(n) {
            present |= hop_bit(i, v);
        } else if n == header::SET_COOKIE {
            set_cookie = true;
        }
    }
    strip_present(h, present);
    Kept { set_cookie }
}

/// What [`strip_hop_by_hop`]'s pass saw of the fields it keeps: a
/// response without `Set-Cookie` teaches no session (see `rewrite`).
#[derive(Debug, Clone, Copy)]
pub struct Kept {
    pub set_cookie: bool,
}

/// Set in a field survey when a `Connection` value names more than
/// `close` and `keep-alive` (bits 0 to 6 are [`HOP_BY_HOP`]'s names).
const NAMES_OTHERS: u8 = 1 << 7;

/// The survey bits of hop-by-hop field `i` (of [`HOP_BY_HOP`]) with value
/// `v`.
fn hop_bit(i: usize, v: &HeaderValue) -> u8 {
    let named = i == 0 && names_others(v);
    1 << i | if named { NAMES_OTHERS } else { 0 }
}

/// [`strip_hop_by_hop`] once the fields present are known (see
/// [`hop_bit`]).
fn strip_present(h: &mut HeaderMap, present: u8) {
    if present == 0 {
        return;
    }
    if present & (1 << TRANSFER_ENCODING_AT) != 0 {
        h.remove(header::CONTENT_LENGTH);
    }
    if present & NAMES_OTHERS != 0 {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| !n.eq_ignore_ascii_case("close") && !n.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .filter(|n| n != header::HOST)
            .collect();
        for n in &named {
            h.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
}

/// Where `n` is in [`HOP_BY_HOP`]: by its text, which a standard name
/// gives from a table, so a name of another length costs one comparison.
fn hop_index(n: &HeaderName) -> Option<usize> {
    match n.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-connection" => Some(2),
        "te" => Some(3),
        "trailer" => Some(4),
        "transfer-encoding" => Some(5),
        "upgrade" => Some(6),
        _ => None,
    }
}

/// Whether a `Connection` value names anything beyond `close` and
/// `keep-alive` (the usual value, answered without splitting it).
fn names_others(v: &HeaderValue) -> bool {
    let v = v.as_bytes();
    // The exact lowercase spellings first: a plain comparison, where the
    // case-folding one lowercases byte by byte.
    if v == b"keep-alive" || v == b"close" {
        return false;
    }
    !(v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close"))
}

/// Which X-Forwarded-* headers to set.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded {
    pub for_: bool,
    pub proto: bool,
    pub host: bool,
}

pub use crate::client_info::IpText;

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The forwarding fields for a request: the client address appended to
/// X-Forwarded-For, -Proto and -Host set (from `host`, the request's
/// Host). From a `trusted` proxy, the -Proto and -Host it sent are kept
/// (it saw the real client; the balancer only saw the proxy), and its
/// X-Forwarded-For, which the new one extends, leaves the request's fields
/// (so a head written with both has it once). From any other peer, the
/// caller has removed what it sent (`strip_forwarding`).
fn forwarding(
    h: &mut HeaderMap,
    f: Forwarded,
    client: &IpText,
    scheme: &'static str,
    trusted: bool,
    host: Option<HeaderValue>,
) -> Forwarding {
    let mut out = Forwarding::default();
    if f.for_ {
        // From anyone else, `strip_forwarding` already removed theirs.
        let prev = trusted.then(|| h.get(&XFF)).flatten();
        let v = match prev.and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.trim().is_empty() => {
                HeaderValue::from_str(&format!("{prev}, {}", client.as_str()))
            }
            // The address's bytes as they are: no UTF-8 check of text
            // that `Display` wrote.
            _ => HeaderValue::from_bytes(client.as_bytes()),
        };
        let had = prev.is_some();
        if let Ok(v) = v {
            if had {
                h.remove(&XFF);
            }
            out.for_ = Some(v);
        }
    }
    if f.proto && !(trusted && h.contains_key(&XFP)) {
        out.proto = Some(HeaderValue::from_static(scheme));
    }
    if f.host && !(trusted && h.contains_key(&XFH)) {
        out.host = host;
    }
    out
}

/// The X-Forwarded-* fields a request is to get (each `None` when it
/// keeps what it has, or the field is off), set apart from its other
/// fields until it is known how the request travels (see
/// [`prepare_deferred`]).
#[derive(Debug, Default)]
pub struct Forwarding {
    for_: Option<HeaderValue>,
    proto: Option<HeaderValue>,
    host: Option<HeaderValue>,
}

impl Forwarding {
    /// Insert the fields, replacing any of the same name.
    pub fn apply(self, h: &mut HeaderMap) {
        if let Some(v) = self.for_ {
            h.insert(XFF.clone(), v);
        }
        if let Some(v) = self.proto {
            h.insert(XFP.clone(), v);
        }
        if let Some(v) = self.host {
            h.insert(XFH.clone(), v);
        }
    }

    /// The fields as names and values, for a head written directly. The
    /// request's own fields hold none of these names (the untrusted ones
    /// were removed, a trusted proxy's kept ones are not set here).
    pub fn fields(&self) -> [Option<(&'static str, &[u8])>; 3] {
        [
            self.for_.as_ref().map(|v| (XFF.as_str(), v.as_bytes())),
            self.proto.as_ref().map(|v| (XFP.as_str(), v.as_bytes())),
            self.host.as_ref().map(|v| (XFH.as_str(), v.as_bytes())),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_heads_keep_everything_but_their_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "a".parse().unwrap());
        h.insert(header::COOKIE, "JSESSIONID=1.t1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "nothing hop-by-hop: untouched");
        h.insert(header::CONNECTION, "close, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["host", "cookie", "content-length"]);
    }

    #[test]
    fn hop_index_matches_the_list() {
        assert_eq!(HOP_BY_HOP[TRANSFER_ENCODING_AT], header::TRANSFER_ENCODING);
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(n), Some(i), "{n}");
            let upper = HeaderName::from_bytes(n.as_str().to_uppercase().as_bytes()).unwrap();
            assert_eq!(hop_index(&upper), Some(i), "{n} sent in capitals");
        }
        for n in [
            "host",
            "cookie",
            "user-agent",
            "x-connection",
            "tee",
            "content-length",
        ] {
            assert_eq!(hop_index(&HeaderName::from_static(n)), None, "{n}");
        }
    }

    #[test]
    fn connection_keep_alive_or_close_names_no_other_header() {
        let mut h = HeaderMap::new();
        for (v, named) in [
            ("keep-alive", false),
            ("Keep-Alive", false),
            ("close", false),
            ("CLOSE", false),
            ("keep-alive, x-secret", true),
            ("x-secret", true),
            ("keep-alive ", true),
        ] {
            assert_eq!(names_others(&v.parse().unwrap()), named, "{v:?}");
        }
        // A second Connection field that names a header counts too.
        h.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        h.append(header::CONNECTION, "x-other".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        h.insert(header::SET_COOKIE, "a=1".parse().unwrap());
        let kept = strip_hop_by_hop(&mut h);
        assert!(!h.contains_key("x-other") && !h.contains_key(header::CONNECTION));
        assert!(kept.set_cookie, "the survey saw the Set-Cookie it kept");
        assert!(!strip_hop_by_hop(&mut HeaderMap::new()).set_cookie);
    }

    #[test]
    fn strips_named_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn appends_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert(&XFF, "10.0.0.1".parse().unwrap());
        h.insert(header::HOST, "example.org".parse().unwrap());
        let all = Forwarded {
            for_: true,
            proto: true,
            host: true,
        };
        let ip = IpText::new("127.0.0.9".parse().unwrap());
        let host = h.get(header::HOST).cloned();
        forwarding(&mut h, all, &ip, "http", true, host).apply(&mut h);
        assert_eq!(h[&XFF], "10.0.0.1, 127.0.0.9");
        assert_eq!(h[&XFP], "http");
        assert_eq!(h[&XFH], "example.org");
    }

    fn config(server_extra: &str) -> Config {
        let text = format!(
            "[server]\n{server_extra}\n[[backend]]\nroute = \"t1\"\nurl = \"http://127.0.0.1:9\"\n"
        );
        crate::config::from_str(&text, std::path::Path::new("t.toml")).unwrap()
    }

    fn parts(uri: &str, hs: &[(&str, &[u8])]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in hs {
            b = b.header(*k, HeaderValue::from_bytes(v).unwrap());
        }
        b.body(()).unwrap().into_parts().0
    }

    fn client(ip: &str) -> ClientInfo {
        ClientInfo::new(format!("{ip}:5000").parse().unwrap(), false)
    }

    #[test]
    fn ip_text_is_display_for_every_length() {
        for ip in [
            "1.2.3.4",
            "255.255.255.255",
            "::1",
            "::ffff:10.0.0.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "1:2:3:4:5:6:7:8",
        ] {
            let a: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(a).as_str(), a.to_string());
        }
    }

    #[test]
    fn refuses_long_lines_duplicate_host_and_marked_framing() {
        let cfg = config("");
        let ok = parts("/", &[("host", b"a"), ("x-big", &[b'a'; 8000])]);
        assert_eq!(check_request(&ok, &cfg.server), Ok(Checked::default()));
        let up = parts("/", &[("upgrade", b"websocket")]);
        assert_eq!(
            check_request(&up, &cfg.server),
            Ok(Checked { upgrade: true }),
            "the pass notes an Upgrade field"
        );
        let long = parts("/", &[("cookie", &[b'a'; 8200])]);
        assert_eq!(
            check_request(&long, &cfg.server),
            Err(Reject::LineTooLong(8192))
        );
        let two = parts("/", &[("host", b"a"), ("host", b"b")]);
        assert_eq!(check_request(&two, &cfg.server), Err(Reject::DuplicateHost));
        let mut marked = parts("/", &[("transfer-encoding", b"chunked")]);
        marked.extensions.insert(ConflictingFraming);
        assert_eq!(check_request(&marked, &cfg.server), Err(Reject::Framing));
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let cfg = config("");
        let mut p = parts(
            "/",
            &[
                ("host", b"shop"),
                ("forwarded", b"for=1.2.3.4"),
                ("x-real-ip", b"1.2.3.4"),
                ("x-forwarded-for", b"1.2.3.4"),
                ("x-forwarded-port", b"443"),
                ("x-forwarded-proto", b"https"),
                ("x-forwarded-host", b"evil"),
            ],
        );
        prepare(&mut p, &cfg, client("127.0.0.5"));
        let h = &p.headers;
        assert!(!h.contains_key("forwarded") && !h.contains_key("x-real-ip"));
        assert!(!h.contains_key("x-forwarded-port"));
        assert_eq!(h[&XFF], "127.0.0.5");
        assert_eq!(h[&XFP], "http");
        assert_eq!(h[&XFH], "shop");
    }

    #[test]
    fn trusted_proxy_headers_are_kept_and_extended() {
        let cfg = config("trusted_proxies = [\"10.0.0.0/8\"]");
        let mut p = parts(
            "/",
            &[
                ("host", b"shop"),
                ("x-forwarded-for", b"1.2.3.4"),
                ("x-forwarded-proto", b"https"),
                ("x-real-ip", b"1.2.3.4"),
            ],
        );
        prepare(&mut p, &cfg, client("10.1.2.3"));
        let h = &p.headers;
        assert_eq!(h[&XFF], "1.2.3.4, 10.1.2.3");
        assert_eq!(h[&XFP], "https");
        assert_eq!(h["x-real-ip"], "1.2.3.4");
    }

    #[test]
    fn host_survives_connection_and_userinfo_never_copied() {
        let cfg = config("");
        let mut p = parts(
            "/",
            &[("host", b"shop"), ("connection", b"host, x-forwarded-host")],
        );
        prepare(&mut p, &cfg, client("127.0.0.5"));
        assert_eq!(p.headers[header::HOST], "shop");
        assert_eq!(p.headers[&XFH], "shop");
        let mut p = parts("http://user:pw@shop.example:8080/a?b", &[]);
        prepare(&mut p, &cfg, client("127.0.0.5"));
        assert_eq!(p.headers[header::HOST], "shop.example:8080");
        assert_eq!(p.headers[&XFH], "shop.example:8080", "from the target");
        assert_eq!(p.uri, "/a?b");
    }

    #[test]
    fn deferred_forwarding_fields_are_the_ones_prepare_inserts_and_never_twice() {
        let cases = [
            ("", "6.6.6.6", "127.0.0.5"),
            (
                "trusted_proxies = [\"127.0.0.0/8\"]",
                "6.6.6.6",
                "6.6.6.6, 127.0.0.5",
            ),
        ];
        for (extra, sent, want) in cases {
            let cfg = config(extra);
            let head = [("host", &b"shop"[..]), ("x-forwarded-for", sent.as_bytes())];
            let mut applied = parts("/", &head);
            prepare(&mut applied, &cfg, client("127.0.0.5"));
            let mut deferred = parts("/", &head);
            let f = prepare_deferred(&mut deferred, &cfg, client("127.0.0.5"));
            assert!(
                !deferred.headers.contains_key(&XFF),
                "{extra}: XFF left twice"
            );
            let written: Vec<(&str, &[u8])> = f.fields().into_iter().flatten().collect();
            assert_eq!(
                written,
                [
                    ("x-forwarded-for", want.as_bytes()),
                    ("x-forwarded-proto", &b"http"[..]),
                    ("x-forwarded-host", &b"shop"[..])
                ],
                "{extra}"
            );
            f.apply(&mut deferred.headers);
            assert_eq!(deferred.headers, applied.headers, "{extra}");
        }
    }

    #[test]
    fn prepare_joins_crumbs_and_drops_what_connection_names() {
        let cfg = config("");
        let mut p = parts(
            "/",
            &[("host", b"shop"), ("cookie", b"a=1"), ("cookie", b"b=2")],
        );
        prepare(&mut p, &cfg, client("127.0.0.5"));
        let all: Vec<_> = p.headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2"]);
        // Connection names the cookies: they go, and no empty Cookie is
        // left behind by the join that the first pass had planned.
        let mut p = parts(
            "/",
            &[
                ("host", b"shop"),
                ("cookie", b"a=1"),
                ("cookie", b"b=2"),
                ("connection", b"cookie, x-forwarded-for"),
                ("x-forwarded-for", b"6.6.6.6"),
            ],
        );
        prepare(&mut p, &cfg, client("127.0.0.5"));
        assert!(!p.headers.contains_key(header::COOKIE));
        assert!(!p.headers.contains_key(header::CONNECTION));
        assert_eq!(p.headers[&XFF], "127.0.0.5");
    }

    #[test]
    fn cookie_crumbs_are_joined_bytes_intact() {
        let mut h = HeaderMap::new();
        for c in [&b"a=1"[..], b"JSESSIONID=X.t1", b"n=caf\xe9"] {
            h.append(header::COOKIE, HeaderValue::from_bytes(c).unwrap());
        }
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].as_bytes(), b"a=1; JSESSIONID=X.t1; n=caf\xe9");
    }
}
