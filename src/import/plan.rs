//! The mapping: which worker is imported, and its lb settings.
//!
//! A stickgate instance serves one backend pool, so one mod_jk worker is
//! chosen (the first lb of `worker.list`, or `--worker`); its members
//! become backends ([`member`](super::member)) and their per-worker
//! values the global settings ([`globals`](super::globals)). The result
//! is a [`Plan`], which only needs writing out.

use super::error::ImportError;
use super::globals::{globals, secs_to_ms, Global};
use super::member::{member, token_problem, Backend};
use super::model::{kind, split_list, Model, Settings, WorkerKind, BALANCE_LISTS};
use super::notes::Cx;
use std::collections::{HashMap, HashSet};

/// What will be written: the chosen worker mapped to stickgate settings.
///
/// Values with a `String` carry the comment written next to them: the
/// mod_jk setting they came from.
pub(super) struct Plan {
    /// The lb (or single) worker imported.
    pub(super) chosen: String,
    /// Its type: an lb, or a single node imported as one backend.
    pub(super) chosen_kind: WorkerKind,
    /// Every worker whose settings went into this plan.
    pub(super) used: HashSet<String>,
    /// The `[[backend]]` list, in member order.
    pub(super) backends: Vec<Backend>,
    /// `[balance] algorithm` from lb `method`.
    pub(super) algorithm: (&'static str, String),
    /// `[session] cookie` from lb `session_cookie`.
    pub(super) cookie: String,
    /// `[session] path_parameter` from lb `session_path`.
    pub(super) path_parameter: String,
    /// `[upstream] connect_timeout` in ms, if any worker set one.
    pub(super) connect_timeout: Option<(u64, String)>,
    /// `[upstream] response_timeout` in ms, from `reply_timeout`.
    pub(super) response_timeout: Option<(u64, String)>,
    /// `[upstream] pool_idle_timeout` in ms, from `connection_pool_timeout`.
    pub(super) pool_idle_timeout: Option<(u64, String)>,
    /// `[upstream] retries` from lb `retries`.
    pub(super) retries: Option<(u32, String)>,
    /// `[upstream.tcp_keepalive] enabled` from `socket_keepalive`.
    pub(super) keepalive: Option<bool>,
    /// Active checks from interval CPing: (interval ms, timeout ms).
    pub(super) active_health: Option<(Option<u64>, Option<u64>)>,
    /// `[health] probe_backoff` in ms, from lb `recover_time`.
    pub(super) probe_backoff: Option<u64>,
}

/// Choose the worker to import (`asked`, or the first lb, or the first
/// single node) and map it and its members.
pub(super) fn plan(cx: &mut Cx<'_>, m: &Model, asked: Option<&str>) -> Result<Plan, ImportError> {
    let candidates: Vec<&str> = if m.has_list {
        m.list.iter().map(|(n, _)| n.as_str()).collect()
    } else {
        m.order
            .iter()
            .filter(|n| !m.templates.contains(*n))
            .map(String::as_str)
            .collect()
    };
    let chosen: String = match asked {
        Some(n) => {
            if !m.workers.contains_key(n) && !m.listed(n) {
                let known: Vec<&str> = m.order.iter().map(String::as_str).collect();
                return Err(cx.unusable(format!(
                    "--worker {n}: no worker of that name in this file (workers: {}); pick one of them",
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                )));
            }
            let k = kind(m.get(n));
            if k != WorkerKind::Lb && !k.is_node() {
                return Err(cx.unusable(format!(
                    "--worker {n}: a {} worker has no backends; pick an lb or ajp13 worker",
                    m.get(n).get("type").map_or("", |t| t.value.as_str())
                )));
            }
            n.to_owned()
        }
        None => candidates
            .iter()
            .find(|n| kind(m.get(n)) == WorkerKind::Lb)
            .or_else(|| candidates.iter().find(|n| kind(m.get(n)).is_node()))
            .map(|n| (*n).to_owned())
            .ok_or_else(|| {
                cx.unusable(if m.has_list {
                    "worker.list names no lb or ajp13 worker; nothing to import (pass --worker NAME to pick one)"
                } else {
                    "no lb or ajp13 worker defined (worker.NAME.type=lb with balance_workers); nothing to import"
                })
            })?,
    };
    let settings = m.get(&chosen);
    let chosen_kind = kind(settings);
    let mut used: HashSet<String> = HashSet::from([chosen.clone()]);
    let mut p = Plan {
        chosen: chosen.clone(),
        chosen_kind,
        used: HashSet::new(),
        backends: Vec::new(),
        algorithm: (
            "weighted_round_robin",
            "mod_jk default method=R (Request)".into(),
        ),
        cookie: "JSESSIONID".into(),
        path_parameter: "jsessionid".into(),
        connect_timeout: None,
        response_timeout: None,
        pool_idle_timeout: None,
        retries: None,
        keepalive: None,
        active_health: None,
        probe_backoff: None,
    };
    let members: Vec<(String, usize)> = if chosen_kind == WorkerKind::Lb {
        lb_settings(cx, &chosen, settings, &mut p)?
    } else {
        vec![(chosen.clone(), m.line_of(&chosen).unwrap_or(1))]
    };
    let mut g = Global::default();
    let mut routes: HashMap<String, String> = HashMap::new();
    for (name, line) in &members {
        if *name == chosen && chosen_kind == WorkerKind::Lb {
            return Err(cx.syntax(
                *line,
                format!("lb worker {chosen} lists itself as a member; list its ajp13 workers"),
            ));
        }
        let b = member(cx, m, name, *line, &mut g)?;
        if let Some(other) = routes.insert(b.route.clone(), name.clone()) {
            let explicit = |w: &str| {
                let s = m.get(w);
                s.get("route").or(s.get("jvm_route")).map(|s| s.line)
            };
            return Err(cx.syntax(
                explicit(name).or(explicit(&other)).unwrap_or(*line),
                format!(
                    "workers {other} and {name} both have route {:?}; stickgate routes must be unique: give each worker its node's jvmRoute (worker.NAME.route)",
                    b.route
                ),
            ));
        }
        used.insert(name.clone());
        p.backends.push(b);
    }
    let merged = globals(cx, &g);
    p.connect_timeout = merged.connect_timeout;
    p.response_timeout = merged.response_timeout;
    p.pool_idle_timeout = merged.pool_idle_timeout;
    p.keepalive = merged.keepalive;
    p.active_health = merged.active_health;
    p.used = used;
    Ok(p)
}

/// The lb worker's own settings; returns its members with the line naming
/// them.
fn lb_settings(
    cx: &mut Cx<'_>,
    name: &str,
    s: &Settings,
    p: &mut Plan,
) -> Result<Vec<(String, usize)>, ImportError> {
    let mut members: Vec<(String, usize)> = Vec::new();
    for dir in BALANCE_LISTS {
        if let Some(b) = s.get(dir) {
            for n in split_list(&b.value) {
                if members.iter().any(|(m, _)| m == n) {
                    cx.note_setting(dir, b, format!("{n} is listed twice; imported once"));
                } else {
                    members.push((n.to_owned(), b.line));
                }
            }
        }
    }
    if members.is_empty() {
        let line = s.get("type").map_or(1, |t| t.line);
        return Err(cx.syntax(
            line,
            format!(
                "lb worker {name} has no members; add worker.{name}.balance_workers=node1,node2"
            ),
        ));
    }
    let handled = [
        "type",
        "reference",
        "balance_workers",
        "balanced_workers",
        "mount",
        "sticky_session",
        "sticky_session_force",
        "method",
        "session_cookie",
        "session_path",
        "retries",
        "recover_time",
    ];
    if let Some(v) = s.get("sticky_session") {
        if !cx.bool("sticky_session", v)? {
            cx.note_setting(
                "sticky_session",
                v,
                "stickgate is always sticky: a session stays on its node while the node is up",
            );
        }
    }
    if let Some(v) = s.get("sticky_session_force") {
        if cx.bool("sticky_session_force", v)? {
            cx.note_setting(
                "sticky_session_force",
                v,
                "stickgate fails a session over to another node (same domain first) instead of answering 500",
            );
        }
    }
    if let Some(v) = s.get("method") {
        p.algorithm = match v.initial() {
            Some('R') => (
                "weighted_round_robin",
                format!("mod_jk method={} (Request)", v.value),
            ),
            Some('S') => (
                "least_sessions",
                format!("mod_jk method={} (Session)", v.value),
            ),
            Some('B') => (
                "least_inflight",
                format!("mod_jk method={} (Busyness)", v.value),
            ),
            Some('T') => {
                cx.note_setting(
                    "method",
                    v,
                    "stickgate does not count bytes per node; weighted_round_robin is used instead",
                );
                (
                    "weighted_round_robin",
                    format!("mod_jk method={} (Traffic) has no equivalent", v.value),
                )
            }
            Some('N') => {
                cx.note_setting(
                    "method",
                    v,
                    "stickgate has no 'next' method; weighted_round_robin is used instead",
                );
                (
                    "weighted_round_robin",
                    format!("mod_jk method={} (Next) has no equivalent", v.value),
                )
            }
            _ => {
                return Err(cx.bad(
                    "method",
                    v,
                    "expected R (Request), T (Traffic), B (Busyness), S (Session) or N (Next)",
                ))
            }
        };
    }
    if let Some(v) = s.get("session_cookie") {
        let c = v.value.trim();
        if let Some(problem) = token_problem(c) {
            return Err(cx.bad("session_cookie", v, problem));
        }
        c.clone_into(&mut p.cookie);
    }
    if let Some(v) = s.get("session_path") {
        let t = v.value.trim();
        let t = t.strip_prefix(';').unwrap_or(t);
        let t = t.strip_suffix('=').unwrap_or(t);
        if let Some(problem) = token_problem(t) {
            return Err(cx.bad("session_path", v, problem));
        }
        t.clone_into(&mut p.path_parameter);
    }
    if let Some(v) = s.get("retries") {
        let n = cx.int("retries", v)?;
        let clamped = n.clamp(0, 7) as u32;
        if clamped as i64 != n {
            cx.note_setting(
                "retries",
                v,
                format!("stickgate allows 0..=7 further attempts; {clamped} is used"),
            );
        }
        p.retries = Some((clamped, format!("mod_jk lb retries={}", v.value.trim())));
    }
    if let Some(v) = s.get("recover_time") {
        let secs = cx.int("recover_time", v)?;
        if secs > 0 {
            p.probe_backoff = Some(secs_to_ms(secs));
        } else {
            cx.note_setting(
                "recover_time",
                v,
                "must be positive; stickgate's default health.probe_backoff is kept",
            );
        }
    }
    cx.note_unhandled(s, |dir| handled.contains(&dir));
    Ok(members)
}

#[cfg(test)]
mod tests {
    use crate::import::tests::{backends, has_note, import, table, BASIC};

    /// Found by the `modjk_import` fuzz target: an unknown `--worker` name
    /// with a newline made the error message two lines.
    #[test]
    fn unknown_worker_name_with_control_characters_is_one_line() {
        let e = import(BASIC, None, Some("no\nsuch\x1bworker")).unwrap_err();
        let line = e.to_string();
        assert!(!line.contains(['\n', '\x1b']), "{line:?}");
        assert!(
            line.contains("--worker no?such?worker: no worker of that name"),
            "{line}"
        );
    }

    #[test]
    fn method_maps_to_algorithm() {
        for (m, want) in [
            ("R", "weighted_round_robin"),
            ("Request", "weighted_round_robin"),
            ("S", "least_sessions"),
            ("b", "least_inflight"),
            ("T", "weighted_round_robin"),
            ("N", "weighted_round_robin"),
        ] {
            let out = import(&format!("{BASIC}worker.lb.method={m}\n"), None, None).unwrap();
            assert_eq!(
                table(&out)["balance"]["algorithm"].as_str(),
                Some(want),
                "{m}"
            );
            assert_eq!(
                has_note(&out, "worker.lb.method="),
                matches!(m, "T" | "N"),
                "{m}"
            );
        }
        let e = import(&format!("{BASIC}worker.lb.method=X\n"), None, None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("workers.properties:7: worker.lb.method=\"X\""),
            "{e}"
        );
    }

    #[test]
    fn session_cookie_and_path() {
        let out = import(
            &format!(
                "{BASIC}worker.lb.session_cookie=MYSESSION\nworker.lb.session_path=;mysession\n"
            ),
            None,
            None,
        )
        .unwrap();
        let t = table(&out);
        assert_eq!(t["session"]["cookie"].as_str(), Some("MYSESSION"));
        assert_eq!(t["session"]["path_parameter"].as_str(), Some("mysession"));
        let out = import(
            &format!("{BASIC}worker.lb.session_cookie=SID\n"),
            None,
            None,
        )
        .unwrap();
        // mod_jk keeps ;jsessionid when only the cookie changes.
        assert_eq!(
            table(&out)["session"]["path_parameter"].as_str(),
            Some("jsessionid")
        );
    }

    #[test]
    fn sticky_false_and_force_are_noted() {
        let out = import(
            &format!(
                "{BASIC}worker.lb.sticky_session=false\nworker.lb.sticky_session_force=true\n"
            ),
            None,
            None,
        )
        .unwrap();
        assert!(has_note(&out, "always sticky"));
        assert!(has_note(&out, "instead of answering 500"));
        let out = import(&format!("{BASIC}worker.lb.sticky_session=1\n"), None, None).unwrap();
        assert!(!has_note(&out, "sticky"));
    }

    #[test]
    fn second_lb_and_worker_flag() {
        let two = format!(
            "{BASIC}worker.list=lb2,status\nworker.lb2.type=lb\nworker.lb2.balance_workers=m1\nworker.m1.host=10.0.1.1\nworker.status.type=status\n"
        );
        let out = import(&two, None, None).unwrap();
        assert_eq!(backends(&table(&out)).len(), 2);
        assert!(has_note(&out, "lb worker lb2"));
        assert!(has_note(&out, "worker status (type status)"));
        assert!(
            !has_note(&out, "worker m1"),
            "member of lb2 is covered by lb2's note"
        );
        let out = import(&two, None, Some("lb2")).unwrap();
        let t = table(&out);
        assert_eq!(backends(&t)[0]["route"].as_str(), Some("m1"));
        assert!(has_note(&out, "lb worker lb"));
        let e = import(&two, None, Some("nope")).unwrap_err().to_string();
        assert!(e.starts_with("workers.properties: --worker nope"), "{e}");
        let e = import(&two, None, Some("status")).unwrap_err().to_string();
        assert!(e.contains("pick an lb or ajp13 worker"), "{e}");
    }

    #[test]
    fn single_ajp_worker_without_lb() {
        let out = import(
            "worker.list=ajp13w\nworker.ajp13w.port=8009\nworker.ajp13w.host=app\n",
            None,
            None,
        )
        .unwrap();
        let t = table(&out);
        assert_eq!(backends(&t)[0]["url"].as_str(), Some("ajp://app:8009"));
        assert!(out.toml.contains("# imported single worker: ajp13w"));
    }
}
