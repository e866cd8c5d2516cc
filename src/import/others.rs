//! Notes for everything in `workers.properties` the plan did not use.
//!
//! One stickgate instance imports one worker; the other workers, the
//! `worker.*` globals and stray keys each get a note saying what to do
//! with them, so a migration drops nothing silently.

use super::model::{kind, split_list, Model, WorkerKind, BALANCE_LISTS};
use super::notes::Cx;
use super::plan::Plan;
use std::collections::HashSet;

/// Notes for workers, `worker.*` globals and stray keys not imported.
pub(super) fn other_workers(cx: &mut Cx<'_>, m: &Model, p: &Plan) {
    // Members of other lb workers are covered by that lb's note.
    let mut elsewhere: HashSet<&str> = HashSet::new();
    for (name, s) in &m.workers {
        if *name != p.chosen && kind(s) == WorkerKind::Lb {
            for d in BALANCE_LISTS {
                if let Some(b) = s.get(d) {
                    elsewhere.extend(split_list(&b.value));
                }
            }
        }
    }
    let mut names: Vec<&str> = m.order.iter().map(String::as_str).collect();
    for (n, _) in &m.list {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    for name in names {
        if p.used.contains(name) || elsewhere.contains(name) {
            continue;
        }
        let listed = m.listed(name);
        if m.templates.contains(name) && !listed {
            continue;
        }
        let s = m.get(name);
        let line = s
            .get("type")
            .filter(|t| t.owner == name)
            .map(|t| t.line)
            .or_else(|| m.line_of(name));
        let (what, why) = match kind(s) {
            WorkerKind::Status => (
                format!("worker {name} (type status)"),
                "use stickgate's admin API and status page on [admin] listen (127.0.0.1:9901 by default; stickgate ctl)".to_owned(),
            ),
            WorkerKind::Lb => (
                format!("lb worker {name}"),
                format!("stickgate serves one backend pool per instance; import it into a second config with --worker {name}"),
            ),
            _ if !listed => (
                format!("worker {name}"),
                "defined but neither listed in worker.list nor a member of an imported worker; nothing to import".to_owned(),
            ),
            _ => (
                format!("worker {name}"),
                format!(
                    "not a member of {}; serve it with a second stickgate instance (--worker {name})",
                    p.chosen
                ),
            ),
        };
        cx.note(line, what, why);
    }
    for g in &m.globals {
        let why = if g.key == "worker.maintain" {
            "stickgate's health checks and session expiry run on their own schedules"
        } else {
            "no stickgate equivalent"
        };
        cx.note(Some(g.line), format!("{}={}", g.key, g.value), why);
    }
    for l in &m.loose {
        cx.note(
            Some(l.line),
            format!("{}={}", l.key, l.value),
            "not a mod_jk worker setting (and not used through $(...))",
        );
    }
}
