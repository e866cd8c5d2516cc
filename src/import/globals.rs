//! The mapping of per-worker mod_jk values to stickgate's global ones.
//!
//! mod_jk sets timeouts, keepalive and CPing per worker; stickgate has one
//! `[upstream]` and one `[health]` for all nodes. Each value is merged
//! here (the largest timeout, the smallest pool timeout, ...) and a note
//! says so whenever the workers disagreed.

use super::model::Setting;
use super::notes::{why_not, Cx};
use super::text::duration;
use std::collections::HashSet;

/// Longest duration written (one year, in ms): absurd mod_jk values are
/// capped so the output always parses.
const MAX_MS: u64 = 365 * 24 * 3600 * 1000;

/// Seconds as written in mod_jk -> milliseconds, capped at [`MAX_MS`].
pub(super) fn secs_to_ms(secs: i64) -> u64 {
    (secs.max(0) as u64).saturating_mul(1000).min(MAX_MS)
}

/// Per-member values that become global stickgate settings. Lists are
/// per worker, in member order, so notes can name each value.
#[derive(Default)]
pub(super) struct Global {
    /// `connect_timeout` / `socket_connect_timeout` (ms; the larger).
    pub(super) connect: Vec<(String, Option<i64>)>,
    /// `reply_timeout` (ms).
    pub(super) reply: Vec<(String, Option<i64>)>,
    /// `connection_pool_timeout` (s), with the setting to blame.
    pub(super) pool: Vec<(String, Option<i64>, Option<Setting>)>,
    /// `socket_keepalive`.
    pub(super) keepalive: Vec<(String, Option<bool>)>,
    /// Whether any member's `ping_mode` asks for interval CPing.
    pub(super) ping_interval_mode: bool,
    /// `ping_timeout` values (ms).
    pub(super) ping_timeout: Vec<i64>,
    /// `connection_ping_interval` values (s).
    pub(super) ping_every: Vec<i64>,
    /// Settings only meaningful with interval CPing, noted if it is off.
    pub(super) ping_extras: Vec<(String, Setting)>,
}

/// The global settings merged from every member, for the plan to write
/// (each with the comment naming the mod_jk setting it came from).
#[derive(Default)]
pub(super) struct Merged {
    /// `[upstream] connect_timeout` in ms, if any worker set one.
    pub(super) connect_timeout: Option<(u64, String)>,
    /// `[upstream] response_timeout` in ms, from `reply_timeout`.
    pub(super) response_timeout: Option<(u64, String)>,
    /// `[upstream] pool_idle_timeout` in ms, from `connection_pool_timeout`.
    pub(super) pool_idle_timeout: Option<(u64, String)>,
    /// `[upstream.tcp_keepalive] enabled` from `socket_keepalive`.
    pub(super) keepalive: Option<bool>,
    /// Active checks from interval CPing: (interval ms, timeout ms).
    pub(super) active_health: Option<(Option<u64>, Option<u64>)>,
}

/// Per-worker values -> the global stickgate ones, noting differences.
pub(super) fn globals(cx: &mut Cx<'_>, g: &Global) -> Merged {
    let mut p = Merged {
        connect_timeout: largest(
            cx,
            "connect_timeout",
            "upstream.connect_timeout",
            &g.connect,
        ),
        ..Merged::default()
    };
    if let Some((ms, _)) = p.connect_timeout {
        if ms > 30_000 {
            cx.note(
                None,
                format!("connect_timeout {}", duration(ms)),
                "stickgate allows at most 30s (a dead node must fail fast); 30s is used",
            );
            p.connect_timeout = Some((30_000, "mod_jk value capped at 30s".into()));
        }
    }
    p.response_timeout = largest(cx, "reply_timeout", "upstream.response_timeout", &g.reply);
    // connection_pool_timeout: seconds; the smallest is the safest.
    let set: Vec<(&str, i64, &Setting)> = g
        .pool
        .iter()
        .filter_map(|(w, v, s)| Some((w.as_str(), (*v)?, s.as_ref()?)))
        .collect();
    if let Some((w, secs, s)) = set.iter().min_by_key(|x| x.1) {
        if *secs > 0 && *secs < 20 {
            p.pool_idle_timeout = Some((
                secs_to_ms(*secs),
                format!("smallest mod_jk connection_pool_timeout (worker {w})"),
            ));
            if set.iter().any(|x| x.1 != *secs) {
                cx.note(
                    None,
                    "connection_pool_timeout per worker",
                    "stickgate's upstream.pool_idle_timeout applies to every node; the smallest is used",
                );
            }
        } else {
            cx.note_setting(
                "connection_pool_timeout",
                s,
                "it matched the AJP connector's connectionTimeout; upstream.pool_idle_timeout (default 15s) must stay below the HTTP connector's keepAliveTimeout (20s by default)",
            );
        }
    }
    let ka: Vec<bool> = g.keepalive.iter().filter_map(|x| x.1).collect();
    if !ka.is_empty() {
        let any = ka.iter().any(|x| *x);
        p.keepalive = Some(any);
        if ka.iter().any(|x| *x != any) || ka.len() < g.keepalive.len() && !any {
            cx.note(
                None,
                "socket_keepalive per worker",
                format!("stickgate's upstream.tcp_keepalive applies to every node; enabled = {any} is used"),
            );
        }
    }
    if g.ping_interval_mode {
        let timeout = g.ping_timeout.iter().copied().filter(|v| *v > 0).max();
        let every = g.ping_every.iter().copied().filter(|v| *v > 0).max();
        p.active_health = Some((
            every.map(secs_to_ms),
            timeout.map(|ms| (ms as u64).min(MAX_MS)),
        ));
    } else {
        for (d, s) in &g.ping_extras {
            cx.note_setting(d, s, why_not(d));
        }
    }
    p
}

/// The largest positive per-worker millisecond value, noting when workers
/// differ (stickgate has one value for all).
fn largest(
    cx: &mut Cx<'_>,
    dir: &str,
    key: &str,
    values: &[(String, Option<i64>)],
) -> Option<(u64, String)> {
    let max = values.iter().filter_map(|x| x.1).filter(|v| *v > 0).max()?;
    let distinct: HashSet<Option<i64>> = values.iter().map(|x| x.1).collect();
    if distinct.len() > 1 {
        let each: Vec<String> = values
            .iter()
            .map(|(w, v)| match v {
                Some(v) if *v > 0 => format!("{w}={v}ms"),
                Some(_) => format!("{w}=none"),
                None => format!("{w}=unset"),
            })
            .collect();
        cx.note(
            None,
            format!("{dir} per worker ({})", each.join(", ")),
            format!(
                "stickgate's {key} applies to every node; the largest, {}, is used",
                duration(max as u64)
            ),
        );
    }
    Some(((max as u64).min(MAX_MS), format!("largest mod_jk {dir}")))
}

#[cfg(test)]
mod tests {
    use crate::import::tests::{has_note, import, table, BASIC};

    #[test]
    fn timeouts_take_the_largest_and_note_the_difference() {
        let out = import(
            &format!("{BASIC}worker.n1.connect_timeout=2000\nworker.n2.connect_timeout=3500\nworker.n1.reply_timeout=120000\nworker.n2.socket_keepalive=true\n"),
            None,
            None,
        )
        .unwrap();
        let t = table(&out);
        assert_eq!(t["upstream"]["connect_timeout"].as_str(), Some("3500ms"));
        assert_eq!(t["upstream"]["response_timeout"].as_str(), Some("120s"));
        assert_eq!(
            t["upstream"]["tcp_keepalive"]["enabled"].as_bool(),
            Some(true)
        );
        assert!(has_note(
            &out,
            "connect_timeout per worker (n1=2000ms, n2=3500ms)"
        ));
        assert!(has_note(
            &out,
            "reply_timeout per worker (n1=120000ms, n2=unset)"
        ));
        let out = import(
            &format!("{BASIC}worker.n1.connect_timeout=90000\n"),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            table(&out)["upstream"]["connect_timeout"].as_str(),
            Some("30s")
        );
    }

    #[test]
    fn interval_ping_turns_on_active_checks() {
        let out = import(
            &format!("{BASIC}worker.n1.ping_mode=A\nworker.n1.ping_timeout=1500\nworker.n1.connection_ping_interval=10\n"),
            None,
            None,
        )
        .unwrap();
        let t = table(&out);
        assert_eq!(t["health"]["enabled"].as_bool(), Some(true));
        assert_eq!(t["health"]["timeout"].as_str(), Some("1500ms"));
        assert_eq!(t["health"]["interval"].as_str(), Some("10s"));
        let out = import(
            &format!("{BASIC}worker.n1.ping_mode=C\nworker.n1.ping_timeout=1500\n"),
            None,
            None,
        )
        .unwrap();
        let t = table(&out);
        assert_eq!(t["health"]["enabled"].as_bool(), Some(false));
        assert!(!has_note(&out, "worker.n1.ping_timeout=1500"));
        assert_eq!(
            t["backend"][0]["ping_timeout"].as_str(),
            Some("1500ms"),
            "CPing timeout per AJP backend"
        );
    }
}
