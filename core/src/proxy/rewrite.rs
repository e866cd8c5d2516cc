//! Response side of stickiness: learn session -> route from the backend's
//! `Set-Cookie`, and after a failover make sure the client ends up with
//! `base<sep>new-route`, from the backend's own cookie or, if it sent none,
//! from ours with the attributes the backend last used.

use crate::backend::{Backend, CookieTemplate};
use crate::routing::{Reason, SessionId, Source, Table};
use crate::store::SessionStore;
use cookie::{Cookie, SameSite};
use http::header::{HeaderMap, HeaderValue, SET_COOKIE};
use std::sync::Arc;

/// What the proxy knows about the request's session after routing.
pub struct Exchange<'a> {
    pub table: &'a Table,
    pub store: &'a dyn SessionStore,
    pub cookie: &'a str,
    pub separator: &'a str,
    pub served: &'a Backend,
    /// Why the served backend was chosen.
    pub reason: &'a Reason,
    pub session: Option<&'a SessionId<'a>>,
    pub https: bool,
}

/// Bindings learned from a response's `Set-Cookie`, to be stored by the
/// caller: `store_now` before the response leaves (so a balancer dying
/// right after answering cannot lose a new session), or `store`.
#[must_use = "learned bindings must be stored: call .store_now(store).await or .store(store)"]
#[derive(Debug, Default)]
pub struct Learned<'a> {
    /// Nearly every answer teaches one session at most: kept inline, no
    /// list allocated for it. The route is the table's own `Arc`, lent
    /// (every request thread would write its count if it were cloned).
    first: Option<Binding<'a>>,
    more: Vec<Binding<'a>>,
}

/// One session a response teaches: its id (without the route), the
/// route it is bound to, and whether it is fresh: an id the request did
/// not carry, which the backend has just issued (see
/// [`SessionStore::bind_fresh`]).
#[derive(Debug)]
struct Binding<'a> {
    id: String,
    route: &'a Arc<str>,
    fresh: bool,
}

impl<'a> Learned<'a> {
    fn push(&mut self, binding: Binding<'a>) {
        if self.first.is_none() {
            self.first = Some(binding);
        } else {
            self.more.push(binding);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Binding<'a>> {
        self.first.iter().chain(&self.more)
    }

    /// Store without waiting (write-behind).
    pub fn store(self, store: &dyn SessionStore) {
        for b in self.iter() {
            store.bind(&b.id, b.route);
        }
    }

    /// Store and wait until the bindings are durable in a shared store.
    pub async fn store_now(self, store: &dyn SessionStore) {
        for b in self.iter() {
            if b.fresh {
                store.bind_fresh(&b.id, b.route).await;
            } else {
                store.bind_now(&b.id, b.route).await;
            }
        }
    }

    /// The bindings, owned (tests).
    #[cfg(test)]
    fn owned(&self) -> Vec<(String, Arc<str>)> {
        self.iter()
            .map(|b| (b.id.clone(), Arc::clone(b.route)))
            .collect()
    }

    /// Which bindings are fresh, in order (tests).
    #[cfg(test)]
    fn fresh(&self) -> Vec<bool> {
        self.iter().map(|b| b.fresh).collect()
    }
}

/// Learn from the backend's Set-Cookie headers and add the balancer's own
/// cookie when a failed-over session would otherwise keep its old route.
/// `set_cookie`: whether the answer may carry any (false when a survey of
/// its fields found none: nothing is looked up then).
pub fn apply<'a>(
    x: &Exchange<'a>,
    headers: &mut HeaderMap,
    status_ok: bool,
    set_cookie: bool,
) -> Learned<'a> {
    let mut learned = Learned::default();
    let mut saw_cookie = false;
    let cookies = set_cookie.then(|| headers.get_all(SET_COOKIE));
    for v in cookies.iter().flat_map(|all| all.iter()) {
        let Some((s, name, value, attrs)) = v.to_str().ok().and_then(split_set_cookie) else {
            continue;
        };
        if name != x.cookie {
            continue;
        }
        saw_cookie = true;
        let known = x.served.cookie_template.load();
        // The backend's usual attributes, already read: skip the parse.
        let removal = if known
            .as_deref()
            .is_some_and(|t| !t.expiring && *t.attrs == *attrs)
        {
            false
        } else {
            let Ok(c) = Cookie::parse(s) else {
                continue;
            };
            if !known
                .as_deref()
                .is_some_and(|t| same_template(t, &c) && *t.attrs == *attrs)
            {
                x.served.note_cookie_template(template_of(&c, attrs));
            }
            is_removal(&c)
        };
        if let Some(pair) = learn(x, value, removal) {
            learned.push(pair);
        }
    }
    let Some(s) = x.session else {
        return learned;
    };
    if saw_cookie || !status_ok {
        return learned;
    }
    let served = x.served.route();
    match s.route {
        Some(r) if r != served && corrects_cookie(x, s) => {
            if let Some(v) = our_cookie(x, s.base, served) {
                headers.append(SET_COOKIE, v);
            }
        }
        // A suffix-less id that was balanced as new and kept by the backend
        // (no Set-Cookie): only the client vouches for it, so it is
        // remembered in the store's unconfirmed tier (local, capped,
        // uncounted), never bound.
        None if *x.reason == Reason::New => {
            x.store.remember_unconfirmed(s.base, &x.served.config.route);
        }
        _ => {}
    }
    learned
}

/// Whether the balancer may hand the client `base<sep>served` itself: only
/// for an id that came from the session cookie (never from the URL, which
/// would let a link plant a session id in a victim's browser: Tomcat never
/// turns URL ids into cookies either), and only when the session really
/// failed over: its node, a configured backend, could not serve it (now,
/// or earlier, as a stored binding elsewhere says).
fn corrects_cookie(x: &Exchange<'_>, s: &SessionId<'_>) -> bool {
    if s.source != Source::Cookie {
        return false;
    }
    match x.reason {
        Reason::Failover { from } => x.table.index_of(from).is_some(),
        Reason::Sticky => true,
        Reason::New => false,
    }
}

/// A Set-Cookie header's name, value and attribute part (from the first
/// `;`), read exactly as `Cookie::parse` reads the first two; `None` where
/// it would fail.
fn split_set_cookie(s: &str) -> Option<(&str, &str, &str, &str)> {
    // Byte searches (`;` and `=` are ASCII, so every cut is a char
    // boundary): `str::find(char)` sets up a searcher per call.
    let (pair, attrs) = s.split_at(memchr::memchr(b';', s.as_bytes()).unwrap_or(s.len()));
    let eq = memchr::memchr(b'=', pair.as_bytes())?;
    let (name, value) = (&pair[..eq], &pair[eq + 1..]);
    let name = name.trim();
    (!name.is_empty()).then(|| (s, name, value.trim(), attrs))
}

/// The binding a session cookie (its value, and whether it removes the
/// session) teaches, if any; removals and replaced sessions are forgotten
/// here.
fn learn<'a>(x: &Exchange<'a>, value: &str, removal: bool) -> Option<Binding<'a>> {
    let new = SessionId::parse(value, x.separator, Source::Cookie)?;
    if removal {
        x.store.forget(new.base);
        return None;
    }
    let route = new
        .route
        .and_then(|r| x.table.index_of(r))
        .map_or(&x.served.config.route, |i| {
            &x.table.backends[i].config.route
        });
    let fresh = match x.session {
        Some(old) if old.base == new.base => false,
        Some(old) => {
            x.store.forget(old.base);
            true
        }
        None => true,
    };
    Some(Binding {
        id: new.base.to_owned(),
        route,
        fresh,
    })
}

fn is_removal(c: &Cookie<'_>) -> bool {
    if c.max_age().is_some_and(|d| d.whole_seconds() <= 0) {
        return true;
    }
    c.expires_datetime()
        .is_some_and(|t| t < cookie::time::OffsetDateTime::now_utc())
}

/// Whether `c` carries the attributes of `t` (compared without building
/// a template: the same attributes come back on every new session).
fn same_template(t: &CookieTemplate, c: &Cookie<'_>) -> bool {
    t.path.as_deref() == c.path()
        && t.domain.as_deref() == c.domain()
        && t.secure == c.secure().unwrap_or(false)
        && t.http_only == c.http_only().unwrap_or(false)
        && t.same_site.as_deref() == c.same_site().map(same_site_name)
}

/// `SameSite`'s attribute value, as its `Display` writes it.
fn same_site_name(s: SameSite) -> &'static str {
    match s {
        SameSite::Strict => "Strict",
        SameSite::Lax => "Lax",
        SameSite::None => "None",
    }
}

fn template_of(c: &Cookie<'_>, attrs: &str) -> CookieTemplate {
    CookieTemplate {
        path: c.path().map(str::to_owned),
        domain: c.domain().map(str::to_owned),
        secure: c.secure().unwrap_or(false),
        http_only: c.http_only().unwrap_or(false),
        same_site: c.same_site().map(|s| s.to_string()),
        attrs: attrs.into(),
        expiring: c.max_age().is_some() || c.expires().is_some(),
    }
}

/// `NAME=base<sep>route` with the served (else the old) backend's cookie
/// attributes, or `Path=/; HttpOnly` (+ `Secure` over https).
fn our_cookie(x: &Exchange<'_>, base: &str, route: &str) -> Option<HeaderValue> {
    let old = x
        .reason
        .failed_over_from()
        .and_then(|r| x.table.index_of(r))
        .map(|i| &x.table.backends[i]);
    let t: Option<Arc<CookieTemplate>> = x
        .served
        .cookie_template
        .load_full()
        .or_else(|| old.and_then(|b| b.cookie_template.load_full()));
    let value = format!("{base}{}{route}", x.separator);
    let mut c = Cookie::new(x.cookie, value);
    match t.as_deref() {
        Some(t) => {
            c.set_path(t.path.clone().unwrap_or_else(|| "/".into()));
            if let Some(d) = &t.domain {
                c.set_domain(d.clone());
            }
            c.set_secure(t.secure.then_some(true));
            c.set_http_only(t.http_only.then_some(true));
            c.set_same_site(t.same_site.as_deref().and_then(same_site));
        }
        None => {
            c.set_path("/");
            c.set_http_only(true);
            c.set_secure(x.https.then_some(true));
        }
    }
    HeaderValue::from_str(&c.to_string()).ok()
}

fn same_site(s: &str) -> Option<SameSite> {
    match s {
        "Strict" => Some(SameSite::Strict),
        "Lax" => Some(SameSite::Lax),
        "None" => Some(SameSite::None),
        _ => None,
    }
}

/// With `rewrite_request`: the value to send upstream in place of the
/// client's `old` id after a failover to `route`.
pub fn rewritten_id(base: &str, sep: &str, route: &str) -> String {
    format!("{base}{sep}{route}")
}

/// Replace every occurrence of cookie `name=old` in Cookie headers.
pub fn rewrite_cookie_header(h: &mut HeaderMap, name: &str, old: &str, new: &str) {
    let rewritten: Vec<HeaderValue> = h
        .get_all(http::header::COOKIE)
        .iter()
        .map(|v| {
            let Ok(s) = v.to_str() else { return v.clone() };
            let parts: Vec<String> = s
                .split(';')
                .map(|p| match p.split_once('=') {
                    Some((k, val)) if k.trim() == name && val.trim().trim_matches('"') == old => {
                        format!("{}={new}", k.trim())
                    }
                    _ => p.trim().to_owned(),
                })
                .collect();
            HeaderValue::from_str(&parts.join("; ")).unwrap_or_else(|_| v.clone())
        })
        .collect();
    h.remove(http::header::COOKIE);
    for v in rewritten {
        h.append(http::header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_template_agrees_with_the_template_built() {
        let cookies = [
            "JSESSIONID=a.t1",
            "JSESSIONID=a.t1; Path=/shop; HttpOnly",
            "JSESSIONID=a.t1; Path=/shop",
            "JSESSIONID=a.t1; Path=/; Domain=example.org; Secure; SameSite=Lax",
            "JSESSIONID=a.t1; SameSite=Strict",
            "JSESSIONID=a.t1; SameSite=None; Secure",
        ];
        for a in cookies {
            let ca = Cookie::parse(a).unwrap();
            for b in cookies {
                let cb = Cookie::parse(b).unwrap();
                assert_eq!(
                    same_template(&template_of(&ca, ""), &cb),
                    template_of(&ca, "") == template_of(&cb, ""),
                    "{a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn set_cookie_split_reads_name_and_value_as_the_cookie_crate() {
        let headers = [
            "JSESSIONID=a.t1; Path=/; HttpOnly",
            " JSESSIONID = a.t1 ;Path=/",
            "JSESSIONID=\"q.t1\"; HttpOnly",
            "JSESSIONID=a=b.t1; Domain=.example.org",
            "JSESSIONID=; Max-Age=0",
            "JSESSIONID=a.t1;",
            "JSESSIONID=a.t1",
            "\u{a0}JSESSIONID=a.t1\u{a0}; Secure",
            "=a.t1; Path=/",
            " =a.t1",
            "JSESSIONID",
            "JSESSIONID; Path=/x=y",
            ";JSESSIONID=a.t1",
            "",
        ];
        for h in headers {
            let ours = split_set_cookie(h).map(|(_, n, v, _)| (n, v));
            let theirs = Cookie::parse(h).ok();
            assert_eq!(
                ours,
                theirs.as_ref().map(|c| (c.name(), c.value())),
                "{h:?}"
            );
        }
        assert_eq!(
            split_set_cookie("J=x; Path=/; HttpOnly").map(|(_, _, _, a)| a),
            Some("; Path=/; HttpOnly")
        );
    }

    #[test]
    fn cookie_header_rewrite_touches_only_the_session() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; JSESSIONID=X.t1; b=2".parse().unwrap(),
        );
        rewrite_cookie_header(&mut h, "JSESSIONID", "X.t1", "X.t2");
        assert_eq!(h[http::header::COOKIE], "a=1; JSESSIONID=X.t2; b=2");
    }

    #[test]
    fn removal_cookies_are_recognised() {
        assert!(is_removal(&Cookie::parse("J=x; Max-Age=0").unwrap()));
        assert!(is_removal(
            &Cookie::parse("J=x; Expires=Thu, 01 Jan 1970 00:00:00 GMT").unwrap()
        ));
        assert!(!is_removal(&Cookie::parse("J=x; Path=/").unwrap()));
    }

    mod failover_cookie {
        use super::super::*;
        use crate::store::memory::MemoryStore;
        use std::time::Duration;

        fn table() -> Table {
            Table::for_tests(&["t1", "t2"])
        }

        /// An exchange served by t2 (plain HTTP, `JSESSIONID`, `.`).
        fn on_t2<'a>(
            t: &'a Table,
            store: &'a dyn SessionStore,
            reason: &'a Reason,
            session: Option<&'a SessionId<'a>>,
        ) -> Exchange<'a> {
            Exchange {
                table: t,
                store,
                cookie: "JSESSIONID",
                separator: ".",
                served: &t.backends[1],
                reason,
                session,
                https: false,
            }
        }

        /// Apply the response side of a failover t1 -> t2 of `X.t1` to a
        /// response with `set_cookie` (if any) and `status_ok`.
        fn after_failover(
            set_cookie: Option<&str>,
            status_ok: bool,
        ) -> (HeaderMap, Vec<(String, Arc<str>)>) {
            let t = table();
            let store = MemoryStore::new(Duration::from_secs(60), 10);
            let id = SessionId::parse("X.t1", ".", Source::Cookie).unwrap();
            let reason = Reason::Failover { from: "t1".into() };
            let x = on_t2(&t, &*store, &reason, Some(&id));
            let mut h = HeaderMap::new();
            if let Some(c) = set_cookie {
                h.append(SET_COOKIE, c.parse().unwrap());
            }
            let learned = apply(&x, &mut h, status_ok, true).owned();
            (h, learned)
        }

        fn set_cookies(h: &HeaderMap) -> Vec<&str> {
            h.get_all(SET_COOKIE)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        }

        #[test]
        fn a_failed_over_session_gets_our_cookie_on_success_only() {
            let (h, learned) = after_failover(None, true);
            assert_eq!(set_cookies(&h), ["JSESSIONID=X.t2; HttpOnly; Path=/"]);
            assert!(learned.is_empty(), "{learned:?}");
            let (h, _) = after_failover(None, false);
            assert!(
                set_cookies(&h).is_empty(),
                "an error answer keeps the old cookie"
            );
        }

        #[test]
        fn known_attributes_are_reused_and_removals_still_seen() {
            let t = table();
            let store = MemoryStore::new(Duration::from_secs(60), 10);
            let reason = Reason::New;
            let x = on_t2(&t, &*store, &reason, None);
            let answer = |set_cookie: &str| {
                let mut h = HeaderMap::new();
                h.append(SET_COOKIE, set_cookie.parse().unwrap());
                apply(&x, &mut h, true, true).store(&*store);
            };
            answer("JSESSIONID=A.t2; Path=/app; HttpOnly");
            let first = t.backends[1].cookie_template.load_full().unwrap();
            assert_eq!(&*first.attrs, "; Path=/app; HttpOnly");
            assert_eq!(first.path.as_deref(), Some("/app"));
            // Same attributes: learned without reading them again (the
            // template noted is the very same one).
            answer("JSESSIONID=B.t2; Path=/app; HttpOnly");
            let again = t.backends[1].cookie_template.load_full().unwrap();
            assert!(Arc::ptr_eq(&first, &again));
            assert_eq!(store.get("A").as_deref(), Some("t2"));
            assert_eq!(store.get("B").as_deref(), Some("t2"));
            // Expiring attributes are read every time: a removal forgets,
            // whatever was seen before with the same attributes.
            answer("JSESSIONID=B.t2; Path=/app; Max-Age=0");
            assert_eq!(store.get("B"), None, "Max-Age=0 removes the session");
            answer("JSESSIONID=C.t2; Path=/app; Max-Age=3600");
            answer("JSESSIONID=A.t2; Path=/app; Max-Age=0");
            assert_eq!(store.get("C").as_deref(), Some("t2"));
            assert_eq!(store.get("A"), None, "same attribute names, a removal");
            let last = t.backends[1].cookie_template.load_full().unwrap();
            assert!(last.expiring);
            // The very attributes of the last removal, again: still read.
            store.bind("E", &Arc::from("t2"));
            answer("JSESSIONID=E.t2; Path=/app; Max-Age=0");
            assert_eq!(store.get("E"), None, "a removal with known attributes");
        }

        #[test]
        fn every_session_cookie_of_an_answer_is_learned_in_order() {
            let t = table();
            let store = MemoryStore::new(Duration::from_secs(60), 10);
            let reason = Reason::New;
            let x = on_t2(&t, &*store, &reason, None);
            let mut h = HeaderMap::new();
            for c in [
                "JSESSIONID=A.t2; Path=/",
                "other=1",
                "JSESSIONID=B.t1; Path=/",
                "JSESSIONID=C; Path=/",
            ] {
                h.append(SET_COOKIE, c.parse().unwrap());
            }
            let learned = apply(&x, &mut h, true, true);
            let want: Vec<(String, Arc<str>)> = [("A", "t2"), ("B", "t1"), ("C", "t2")]
                .map(|(id, r)| (id.to_owned(), Arc::from(r)))
                .into();
            assert_eq!(learned.owned(), want);
            learned.store(&*store);
            assert_eq!(store.get("B").as_deref(), Some("t1"));
            assert_eq!(store.get("C").as_deref(), Some("t2"));
        }

        /// Only an id the request did not carry is fresh (written to a
        /// shared store without reading first): a renamed session is not,
        /// whoever may have moved it meanwhile.
        #[test]
        fn only_ids_the_request_did_not_carry_are_fresh() {
            let t = table();
            let store = MemoryStore::new(Duration::from_secs(60), 10);
            let old = SessionId::parse("X.t1", ".", Source::Cookie).unwrap();
            let (new, failover) = (Reason::New, Reason::Failover { from: "t1".into() });
            let cases = [
                (None, &new, "JSESSIONID=A.t2", true),
                (Some(&old), &failover, "JSESSIONID=X.t2", false),
                (Some(&old), &failover, "JSESSIONID=Y.t2", true),
            ];
            for (session, reason, set_cookie, fresh) in cases {
                let x = on_t2(&t, &*store, reason, session);
                let mut h = HeaderMap::new();
                h.append(SET_COOKIE, set_cookie.parse().unwrap());
                let learned = apply(&x, &mut h, true, true);
                assert_eq!(learned.fresh(), [fresh], "{set_cookie}");
                learned.store(&*store);
            }
        }

        #[test]
        fn the_backends_own_cookie_is_learned_and_not_doubled() {
            let (h, learned) = after_failover(Some("JSESSIONID=Y.t2; Path=/app"), true);
            assert_eq!(set_cookies(&h), ["JSESSIONID=Y.t2; Path=/app"]);
            assert_eq!(learned, vec![("Y".to_owned(), Arc::from("t2"))]);
        }
    }
}
