//! The mapping of one balanced worker (an lb member) to a `[[backend]]`.
//!
//! Address, weight, route, domain and state are per node in stickgate
//! too and map directly; values stickgate only has globally (timeouts,
//! keepalive, CPing) are collected into [`Global`] for
//! [`globals`](super::globals) to merge. Every other setting is noted.

use super::error::ImportError;
use super::globals::Global;
use super::model::{kind, Model, WorkerKind};
use super::notes::Cx;
use std::collections::HashSet;

/// One `[[backend]]`.
pub(super) struct Backend {
    /// The mod_jk worker it came from, for the comment above it.
    pub(super) worker: String,
    /// What mod_jk connected to (`ajp13 host:port`), for the same comment.
    pub(super) origin: String,
    /// `route`: the node's jvmRoute.
    pub(super) route: String,
    /// `url`: `ajp://` for an AJP worker (the node's AJP connector, as
    /// mod_jk used it), `http://` for an http one.
    pub(super) url: String,
    /// The AJP keys of an `ajp://` backend.
    pub(super) ajp: Option<AjpKeys>,
    /// `weight`, from `lbfactor`.
    pub(super) weight: u32,
    /// `domain`, for failover to a node that holds the session's replicas.
    pub(super) domain: Option<String>,
    /// `state`, from `activation`.
    pub(super) state: &'static str,
}

/// mod_jk's per-worker AJP settings, as `[[backend]]` keys.
#[derive(Default)]
pub(super) struct AjpKeys {
    /// `ping_mode`: mod_jk's letters as a list (empty: no CPing, mod_jk's
    /// default).
    pub(super) ping_mode: Vec<&'static str>,
    /// `ping_timeout` in ms.
    pub(super) ping_timeout: Option<u64>,
    /// `max_packet_size`.
    pub(super) max_packet_size: Option<u32>,
    /// `ajp_secret`, from mod_jk's `secret`.
    pub(super) secret: Option<String>,
}

/// The RFC 7230 token rule stickgate applies to routes, domains and cookie
/// names (see `config::checked`), as a problem to report.
pub(super) fn token_problem(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 64 {
        return Some("must be 1 to 64 characters".into());
    }
    s.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.~!#$&'*+^`|".contains(*c)))
        .map(|c| format!("contains {c:?}; stickgate accepts letters, digits, '-', '_' and '.'"))
}

/// One balanced worker as a `[[backend]]`.
pub(super) fn member(
    cx: &mut Cx<'_>,
    m: &Model,
    name: &str,
    named_at: usize,
    g: &mut Global,
) -> Result<Backend, ImportError> {
    let s = m.get(name);
    let k = kind(s);
    if !k.is_node() {
        let problem = format!(
            "member {name} must be an ajp13 (or ajp14/http) worker to become a stickgate backend"
        );
        return Err(match s.get("type") {
            Some(t) => cx.bad("type", t, problem),
            None => cx.syntax(named_at, problem),
        });
    }
    if s.is_empty() {
        cx.note(
            Some(named_at),
            format!("worker {name}"),
            "has no settings; mod_jk's defaults (localhost:8009) were assumed",
        );
    }
    let mut handled: HashSet<&str> = HashSet::from(["type", "reference"]);
    let mut take = |d: &'static str| {
        handled.insert(d);
        s.get(d)
    };
    // host[:port] and port
    let default_port: u16 = match k {
        WorkerKind::Ajp14 => 8011,
        WorkerKind::Http => 80,
        _ => 8009,
    };
    let host_s = take("host");
    let port_s = take("port");
    let (host, host_port) = match host_s {
        Some(h) => split_host(h.value.trim()).map_err(|p| cx.bad("host", h, p))?,
        None => ("localhost".to_owned(), None),
    };
    let port = match (host_port, port_s) {
        (Some(p), _) => p,
        (None, Some(p)) => match p.value.trim().parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(cx.bad("port", p, "expected a port number 1-65535")),
        },
        (None, None) => default_port,
    };
    let url_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let (url, origin) = if k == WorkerKind::Http {
        (
            format!("http://{url_host}:{port}"),
            format!("http {url_host}:{port}"),
        )
    } else {
        let proto = if k == WorkerKind::Ajp14 {
            "ajp14"
        } else {
            "ajp13"
        };
        if k == WorkerKind::Ajp14 {
            let at = port_s.or(host_s).map(|x| x.line).unwrap_or(named_at);
            cx.note(
                Some(at),
                format!("worker.{name}: ajp14 {url_host}:{port}"),
                "stickgate speaks AJP/1.3 (what Tomcat's AJP connector implements); ajp14's login negotiation is not carried over",
            );
        }
        (
            format!("ajp://{url_host}:{port}"),
            format!("{proto} {url_host}:{port}"),
        )
    };
    // weight
    let weight = match take("lbfactor") {
        None => 1,
        Some(f) => {
            let v: f64 = f
                .value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| cx.bad("lbfactor", f, "expected a number >= 1"))?;
            let w = v.round().clamp(1.0, 1000.0) as u32;
            if (w as f64 - v).abs() > f64::EPSILON {
                cx.note_setting(
                    "lbfactor",
                    f,
                    format!("stickgate weights are whole numbers 1..=1000; weight = {w} is used"),
                );
            }
            w
        }
    };
    // route
    let route_s = take("route");
    let jvm_s = take("jvm_route");
    if let (Some(_), Some(j)) = (route_s, jvm_s) {
        cx.note_setting("jvm_route", j, "route is set too and wins, as in mod_jk");
    }
    let route = match route_s.or(jvm_s) {
        Some(r) => {
            let dir = if route_s.is_some() {
                "route"
            } else {
                "jvm_route"
            };
            let v = r.value.trim();
            if let Some(problem) = route_problem(v) {
                return Err(cx.bad(dir, r, problem));
            }
            v.to_owned()
        }
        None => {
            if let Some(problem) = route_problem(name) {
                return Err(cx.syntax(
                    named_at,
                    format!(
                        "member {name}: the route defaults to the worker name, which {problem}; set worker.{name}.route to the node's jvmRoute"
                    ),
                ));
            }
            name.to_owned()
        }
    };
    let domain = match take("domain") {
        Some(d) => {
            let v = d.value.trim();
            if let Some(problem) = token_problem(v) {
                return Err(cx.bad("domain", d, problem));
            }
            Some(v.to_owned())
        }
        None => None,
    };
    let state = match take("activation") {
        Some(a) => match a.initial() {
            Some('A') => "active",
            Some('D') => "disabled",
            Some('S') => "stopped",
            _ => {
                return Err(cx.bad(
                    "activation",
                    a,
                    "expected A (active), D (disabled) or S (stopped)",
                ))
            }
        },
        None => {
            let stopped = take("stopped");
            let disabled = take("disabled");
            if stopped.map(|v| cx.bool("stopped", v)).transpose()? == Some(true) {
                "stopped"
            } else if disabled.map(|v| cx.bool("disabled", v)).transpose()? == Some(true) {
                "disabled"
            } else {
                "active"
            }
        }
    };
    handled.insert("stopped");
    handled.insert("disabled");
    // Values that become global settings.
    let mut ms = |d: &'static str| -> Result<Option<i64>, ImportError> {
        handled.insert(d);
        s.get(d).map(|v| cx.int(d, v)).transpose()
    };
    let connect = [ms("connect_timeout")?, ms("socket_connect_timeout")?]
        .into_iter()
        .flatten()
        .max();
    let reply = ms("reply_timeout")?;
    let pool = ms("connection_pool_timeout")?;
    g.connect.push((name.to_owned(), connect));
    g.reply.push((name.to_owned(), reply));
    g.pool.push((
        name.to_owned(),
        pool,
        s.get("connection_pool_timeout").cloned(),
    ));
    handled.insert("socket_keepalive");
    let ka = s
        .get("socket_keepalive")
        .map(|v| cx.bool("socket_keepalive", v))
        .transpose()?;
    g.keepalive.push((name.to_owned(), ka));
    handled.insert("ping_mode");
    let mut keys = AjpKeys::default();
    if let Some(pm) = s.get("ping_mode") {
        let modes = ping_modes(&pm.value).ok_or_else(|| {
            cx.bad(
                "ping_mode",
                pm,
                "expected a combination of C (connect), P (prepost), I (interval), A (all)",
            )
        })?;
        g.ping_interval_mode |= modes.contains(&"interval");
        keys.ping_mode = modes;
    }
    for d in ["ping_timeout", "connection_ping_interval"] {
        handled.insert(d);
        if let Some(v) = s.get(d) {
            let n = cx.int(d, v)?;
            if d == "ping_timeout" {
                g.ping_timeout.push(n);
                keys.ping_timeout = u64::try_from(n).ok().filter(|n| *n > 0);
            } else {
                g.ping_every.push(n);
                g.ping_extras.push((d.to_owned(), v.clone()));
            }
        }
    }
    for d in ["max_packet_size", "secret"] {
        handled.insert(d);
    }
    if let Some(v) = s.get("max_packet_size") {
        let n = cx.int("max_packet_size", v)?;
        match u32::try_from(n) {
            Ok(n) if (8192..=65536).contains(&n) => keys.max_packet_size = Some(n),
            _ => return Err(cx.bad("max_packet_size", v, "expected 8192..65536, as mod_jk")),
        }
    }
    keys.secret = s.get("secret").map(|v| v.value.trim().to_owned());
    cx.note_unhandled(s, |dir| handled.contains(dir));
    let ajp = (k != WorkerKind::Http).then_some(keys);
    Ok(Backend {
        worker: name.to_owned(),
        origin,
        route,
        url,
        ajp,
        weight,
        domain,
        state,
    })
}

/// mod_jk's `ping_mode` letters (C, P, I, A, any case, commas or spaces
/// between) as stickgate's list; `None` for another letter.
fn ping_modes(letters: &str) -> Option<Vec<&'static str>> {
    let (mut c, mut p, mut i) = (false, false, false);
    for ch in letters.chars().filter(|c| !c.is_whitespace() && *c != ',') {
        match ch.to_ascii_uppercase() {
            'C' => c = true,
            'P' => p = true,
            'I' => i = true,
            'A' => (c, p, i) = (true, true, true),
            _ => return None,
        }
    }
    let all = [(c, "connect"), (p, "prepost"), (i, "interval")];
    Some(all.into_iter().filter(|x| x.0).map(|x| x.1).collect())
}

/// Why stickgate cannot use `r` as a route (token rule, no `.` since that
/// separates the route in `JSESSIONID=<id>.<route>`).
fn route_problem(r: &str) -> Option<String> {
    token_problem(r).or_else(|| {
        r.contains('.')
            .then(|| "contains '.', which separates id and route in the session id".to_owned())
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
fn split_host(h: &str) -> Result<(String, Option<u16>), String> {
    let port = |p: &str| match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{p:?} is not a port number 1-65535")),
    };
    let (host, p) = if let Some(rest) = h.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| "IPv6 address without closing ']'".to_owned())?;
        match after.strip_prefix(':') {
            Some(p) => (v6, Some(port(p)?)),
            None if after.is_empty() => (v6, None),
            None => return Err("unexpected text after ']'".into()),
        }
    } else if h.matches(':').count() == 1 {
        let (host, p) = h.split_once(':').unwrap_or((h, ""));
        (host, Some(port(p)?))
    } else {
        (h, None)
    };
    let v6 = host.contains(':');
    let ok = !host.is_empty()
        && host.chars().all(|c| {
            if v6 {
                c.is_ascii_hexdigit() || c == ':' || c == '.'
            } else {
                c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'
            }
        });
    if !ok {
        return Err("expected a host name or IP address (optionally host:port)".into());
    }
    Ok((host.to_owned(), p))
}

#[cfg(test)]
mod tests {
    use crate::import::tests::{backends, has_note, import, table, BASIC};

    #[test]
    fn activation_and_old_flags() {
        let out = import(
            &format!("{BASIC}worker.lb.balance_workers=n3,n4,n5\nworker.n1.activation=D\nworker.n2.activation=stopped\nworker.n3.disabled=true\nworker.n4.stopped=1\n"),
            None,
            None,
        )
        .unwrap();
        let t = table(&out);
        let states: Vec<&str> = backends(&t)
            .iter()
            .map(|b| b["state"].as_str().unwrap())
            .collect();
        assert_eq!(
            states,
            ["disabled", "stopped", "disabled", "stopped", "active"]
        );
        assert!(
            has_note(&out, "worker n5"),
            "n5 has no settings: {:#?}",
            out.notes
        );
    }

    #[test]
    fn ipv6_hosts() {
        let out = import(
            "worker.lb.type=lb\nworker.lb.balance_workers=a,b\nworker.a.host=[::1]:8009\nworker.b.host=fd00::2\n",
            None,
            None,
        )
        .unwrap();
        let t = table(&out);
        assert_eq!(backends(&t)[0]["url"].as_str(), Some("ajp://[::1]:8009"));
        assert_eq!(
            backends(&t)[1]["url"].as_str(),
            Some("ajp://[fd00::2]:8009")
        );
    }

    #[test]
    fn ajp_settings_become_backend_keys() {
        let out = import(
            &format!("{BASIC}worker.n1.ping_mode=C,p\nworker.n1.ping_timeout=1500\nworker.n1.max_packet_size=16384\nworker.n1.secret=s3cret\nworker.n2.ping_mode=A\n"),
            None,
            None,
        )
        .unwrap();
        let t = table(&out);
        let b = backends(&t);
        let modes = |i: usize| -> Vec<&str> {
            b[i]["ping_mode"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect()
        };
        assert_eq!(modes(0), ["connect", "prepost"]);
        assert_eq!(modes(1), ["connect", "prepost", "interval"]);
        assert_eq!(b[0]["ping_timeout"].as_str(), Some("1500ms"));
        assert_eq!(b[0]["max_packet_size"].as_integer(), Some(16384));
        assert_eq!(b[0]["ajp_secret"].as_str(), Some("s3cret"));
        assert!(b[1].get("ajp_secret").is_none());
        assert!(!has_note(&out, "max_packet_size"), "{:#?}", out.notes);
        assert!(!has_note(&out, "secret"), "{:#?}", out.notes);
        let e = import(
            &format!("{BASIC}worker.n1.max_packet_size=100\n"),
            None,
            None,
        );
        assert!(e.is_err());
    }

    #[test]
    fn lbfactor_rounding_and_limits() {
        let out = import(
            &format!("{BASIC}worker.n1.lbfactor=2.6\nworker.n2.lbfactor=0\n"),
            None,
            None,
        )
        .unwrap();
        let t = table(&out);
        assert_eq!(backends(&t)[0]["weight"].as_integer(), Some(3));
        assert_eq!(backends(&t)[1]["weight"].as_integer(), Some(1));
        assert!(has_note(&out, "worker.n1.lbfactor=2.6"));
    }
}
