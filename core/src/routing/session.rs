//! Finding the session id of a request and splitting off its route.
//!
//! Rule (as mod_jk and mod_proxy_balancer): the route is everything after
//! the *first* separator, so `ABC.tomcat1` -> base `ABC`, route `tomcat1`,
//! and `ABC.x.y` -> route `x.y`. Candidates are every cookie of the session
//! name in header order, then the `;jsessionid=` path parameter; the first
//! candidate whose route names a configured backend wins, otherwise the
//! first well-formed one. Malformed values are ignored (treated as no
//! session), never an error.

use http::header::COOKIE;
use http::HeaderMap;

/// The redaction of ids in logs, kept reachable at its old path.
pub use crate::redact::redact;

/// Longest session value accepted; longer ones are ignored as malformed.
pub const MAX_SESSION_LEN: usize = 256;

/// Where the session id was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cookie,
    PathParameter,
}

/// A session id borrowed from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId<'a> {
    /// The whole value as sent (`ABC.tomcat1`).
    pub value: &'a str,
    /// The part before the first separator; the store's key.
    pub base: &'a str,
    /// The part after it, if any.
    pub route: Option<&'a str>,
    pub source: Source,
}

impl<'a> SessionId<'a> {
    /// Parse a raw value; `None` when it is not an acceptable session id.
    pub fn parse(value: &'a str, sep: &str, source: Source) -> Option<Self> {
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if !valid_value(value) {
            return None;
        }
        // A one-byte separator (Tomcat's ".") is a byte search, not a
        // substring search set up per call.
        let split = match sep.as_bytes() {
            [b] if b.is_ascii() => {
                memchr::memchr(*b, value.as_bytes()).map(|i| (&value[..i], &value[i + 1..]))
            }
            _ => value.split_once(sep),
        };
        let (base, route) = match split {
            Some((b, r)) => (b, (!r.is_empty()).then_some(r)),
            None => (value, None),
        };
        if base.is_empty() {
            return None;
        }
        Some(SessionId {
            value,
            base,
            route,
            source,
        })
    }
}

/// Which bytes a session id may hold: visible ASCII without the cookie and
/// URL delimiters (a table: this runs over every id of every request).
static ID_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] =
            c.is_ascii_graphic() && !matches!(c, b';' | b',' | b'"' | b'\\' | b'?' | b'#' | b'/');
        b += 1;
    }
    t
};

/// Visible ASCII without the cookie/URL delimiters, bounded in length.
fn valid_value(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_SESSION_LEN && v.bytes().all(|b| ID_BYTE[b as usize])
}

/// Find the request's session: see the module docs for the precedence.
pub fn find<'a>(
    headers: &'a HeaderMap,
    path: &'a str,
    cookie: &str,
    path_param: Option<&str>,
    sep: &str,
    is_known_route: impl Fn(&str) -> bool,
) -> Option<SessionId<'a>> {
    let mut first = None;
    let known = |s: &SessionId<'_>| s.route.is_some_and(&is_known_route);
    for raw in cookie_values(headers, cookie) {
        if let Some(s) = SessionId::parse(raw, sep, Source::Cookie) {
            if known(&s) {
                return Some(s);
            }
            first.get_or_insert(s);
        }
    }
    if let Some(p) = path_param.and_then(|name| path_parameter(path, name)) {
        if let Some(s) = SessionId::parse(p, sep, Source::PathParameter) {
            if known(&s) || first.is_none() {
                return Some(s);
            }
        }
    }
    first
}

/// Values of every cookie called `name` across all Cookie headers. The
/// header is split as bytes: another cookie with a non-ASCII (obs-text)
/// byte in it must not hide the session cookie beside it.
pub fn cookie_values<'a, 'n>(
    headers: &'a HeaderMap,
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|h| h.as_bytes().split(|&b| b == b';'))
        .filter_map(move |pair| {
            // Names compared as bytes: only the wanted cookie's value is
            // checked for UTF-8, not every other cookie beside it.
            let eq = pair.iter().position(|&b| b == b'=')?;
            let (k, v) = (&pair[..eq], &pair[eq + 1..]);
            if k.trim_ascii() != name.as_bytes() {
                return None;
            }
            std::str::from_utf8(v).ok().map(str::trim)
        })
}

/// The value of the `;name=value` parameter in the path (before any query),
/// name matched case-insensitively as Tomcat's URL rewriting may vary it.
pub fn path_parameter<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let mut rest = path;
    while let Some(i) = rest.find(';') {
        rest = &rest[i + 1..];
        if let Some((k, v)) = rest.split_once('=') {
            if k.eq_ignore_ascii_case(name) {
                let end = v.find([';', '/']).unwrap_or(v.len());
                return Some(&v[..end]);
            }
        }
    }
    None
}

/// `path` with the value of its `;name=` parameter replaced by
/// `with(value)` (failover rewrite, access-log hashing); `None` when the
/// path has no such parameter.
pub fn replace_path_parameter(
    path: &str,
    name: &str,
    with: impl FnOnce(&str) -> String,
) -> Option<String> {
    let v = path_parameter(path, name)?;
    let start = v.as_ptr() as usize - path.as_ptr() as usize;
    Some(format!(
        "{}{}{}",
        &path[..start],
        with(v),
        &path[start + v.len()..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_hold_visible_ascii_without_delimiters() {
        assert!(valid_value("6B941D9A646C9BD5.tomcat1"));
        assert!(valid_value("a-b_c~!$%&'()*+:<=>@[]^`{|}"));
        for bad in [
            "a;b", "a,b", "a\"b", "a\\b", "a?b", "a#b", "a/b", "a b", "a\tb", "é", "a\u{7f}",
        ] {
            assert!(!valid_value(bad), "{bad:?} accepted");
        }
        assert!(!valid_value(""));
        assert!(!valid_value(&"A".repeat(MAX_SESSION_LEN + 1)));
    }

    #[test]
    fn path_parameter_replaced_in_place() {
        let p = "/app;JSESSIONID=ABC.tomcat1/page?x=1;jsessionid=no";
        assert_eq!(
            replace_path_parameter(p, "jsessionid", |v| format!("{v}!")).as_deref(),
            Some("/app;JSESSIONID=ABC.tomcat1!/page?x=1;jsessionid=no")
        );
        assert_eq!(
            replace_path_parameter("/a?jsessionid=X", "jsessionid", |_| String::new()),
            None
        );
    }
    use http::HeaderValue;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    fn known(r: &str) -> bool {
        r == "tomcat1" || r == "tomcat2"
    }

    #[test]
    fn redaction_is_short_stable_and_hides_the_id() {
        let id = "0123456789ABCDEF0123456789ABCDEF";
        let r = redact(id);
        assert_eq!(r.len(), 12);
        assert!(r.starts_with("sid#"));
        assert_eq!(r, redact(id));
        assert_ne!(r, redact("0123456789ABCDEF0123456789ABCDEE"));
        assert!(!r.contains("0123"));
    }

    #[test]
    fn split_on_first_separator() {
        let s = SessionId::parse("ABC.tomcat1", ".", Source::Cookie).unwrap();
        assert_eq!((s.base, s.route), ("ABC", Some("tomcat1")));
        let s = SessionId::parse("ABC.x.y", ".", Source::Cookie).unwrap();
        assert_eq!((s.base, s.route), ("ABC", Some("x.y")));
        let s = SessionId::parse("ABC", ".", Source::Cookie).unwrap();
        assert_eq!((s.base, s.route), ("ABC", None));
        let s = SessionId::parse("ABC.", ".", Source::Cookie).unwrap();
        assert_eq!(s.route, None);
        let s = SessionId::parse("\"ABC.tomcat2\"", ".", Source::Cookie).unwrap();
        assert_eq!(s.route, Some("tomcat2"));
    }

    #[test]
    fn malformed_values_are_no_session() {
        for v in ["", ".tomcat1", "a b", "a\"b", &"x".repeat(300), "é", "a,b"] {
            assert!(SessionId::parse(v, ".", Source::Cookie).is_none(), "{v:?}");
        }
    }

    #[test]
    fn first_cookie_naming_known_route_wins() {
        let h = headers(&["JSESSIONID=AAA.gone; other=1", "JSESSIONID=BBB.tomcat2"]);
        let s = find(&h, "/", "JSESSIONID", None, ".", known).unwrap();
        assert_eq!(s.value, "BBB.tomcat2");
        let h = headers(&["JSESSIONID=AAA.gone; JSESSIONID=CCC"]);
        let s = find(&h, "/", "JSESSIONID", None, ".", known).unwrap();
        assert_eq!(s.value, "AAA.gone");
    }

    #[test]
    fn non_ascii_cookie_beside_does_not_hide_the_session() {
        let mut h = HeaderMap::new();
        let raw = b"pref=caf\xe9; JSESSIONID=AAA.tomcat2; x=\xff\xfe";
        h.append(COOKIE, HeaderValue::from_bytes(raw).unwrap());
        let s = find(&h, "/", "JSESSIONID", None, ".", known).unwrap();
        assert_eq!(s.value, "AAA.tomcat2");
    }

    #[test]
    fn cookie_name_is_exact() {
        let h = headers(&["XJSESSIONID=AAA.tomcat1; jsessionid=B.tomcat1"]);
        assert!(find(&h, "/", "JSESSIONID", None, ".", known).is_none());
    }

    #[test]
    fn path_parameter_forms() {
        assert_eq!(
            path_parameter("/;jsessionid=X.t1", "jsessionid"),
            Some("X.t1")
        );
        assert_eq!(
            path_parameter("/a/b;jsessionid=X.t1?q=;jsessionid=Y", "jsessionid"),
            Some("X.t1")
        );
        assert_eq!(
            path_parameter("/a;foo=1;JSESSIONID=Z/b", "jsessionid"),
            Some("Z")
        );
        assert_eq!(path_parameter("/?;jsessionid=X", "jsessionid"), None);
        assert_eq!(path_parameter("/a;jsessionid", "jsessionid"), None);
        let h = HeaderMap::new();
        let s = find(
            &h,
            "/x;jsessionid=Q.tomcat1",
            "JSESSIONID",
            Some("jsessionid"),
            ".",
            known,
        );
        assert_eq!(s.unwrap().source, Source::PathParameter);
    }

    #[test]
    fn known_path_parameter_beats_unknown_cookie() {
        let h = headers(&["JSESSIONID=AAA.gone"]);
        let s = find(
            &h,
            "/;jsessionid=B.tomcat1",
            "JSESSIONID",
            Some("jsessionid"),
            ".",
            known,
        );
        assert_eq!(s.unwrap().value, "B.tomcat1");
    }
}
