//! The mapping of mounts (`uriworkermap.properties` and
//! `worker.NAME.mount`).
//!
//! stickgate has no URI mapping: it forwards every path to its one
//! backend pool. Mounts of the imported worker are listed in the header,
//! and everything a mount did beyond that (exclusions, other workers,
//! extensions) is noted, so the migration shows what Apache httpd did.

use super::error::ImportError;
use super::model::{kind, split_list, Model, WorkerKind};
use super::notes::Cx;
use super::plan::Plan;
use super::properties::Properties;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Mounted paths of the imported worker, from `uriworkermap.properties`
/// and `worker.NAME.mount`.
pub(super) struct Mounts {
    /// The mounted patterns, `worker.NAME.mount` ones first.
    pub(super) paths: Vec<String>,
    /// The `uriworkermap.properties` read, if any, for the header.
    pub(super) source: Option<PathBuf>,
}

/// The imported worker's mounts; notes for the rest of the map. A line
/// that is not `/path=worker` is an error.
pub(super) fn mounts(
    cx: &mut Cx<'_>,
    m: &Model,
    p: &Plan,
    uwm: Option<(&Path, &Properties)>,
) -> Result<Mounts, ImportError> {
    let mut out = Mounts {
        paths: Vec::new(),
        source: uwm.map(|(f, _)| f.to_path_buf()),
    };
    if let Some(mt) = m.get(&p.chosen).get("mount") {
        out.paths.extend(split_list(&mt.value).map(str::to_owned));
    }
    let mut first_line = None;
    // worker -> (patterns, first line)
    let mut others: BTreeMap<String, (Vec<String>, usize)> = BTreeMap::new();
    if let Some((file, props)) = uwm {
        for e in &props.entries {
            let pattern = e.key.trim_start_matches(['!', '-', '|']);
            let flags = &e.key[..e.key.len() - pattern.len()];
            let (worker, ext) = match e.value.split_once(';') {
                Some((w, x)) => (w.trim(), Some(x)),
                None => (e.value.trim(), None),
            };
            if worker.is_empty() || pattern.is_empty() {
                return Err(ImportError::Syntax {
                    file: file.to_path_buf(),
                    line: e.line,
                    problem: "expected /path/*=worker; fix the line or comment it out with #"
                        .into(),
                });
            }
            if worker != p.chosen {
                let o = others
                    .entry(worker.to_owned())
                    .or_insert((Vec::new(), e.line));
                o.0.push(e.key.clone());
                continue;
            }
            let what = format!("{}={}", e.key, e.value);
            if flags.contains('!') {
                cx.note_at(
                    Some((file, e.line)),
                    what,
                    "excluded paths were served by Apache httpd itself; stickgate forwards every path to the backends, so serve them in front of stickgate",
                );
            } else if flags.contains('-') {
                cx.note_at(
                    Some((file, e.line)),
                    what,
                    "a disabled mount; stickgate forwards every path anyway",
                );
            } else {
                if let Some(x) = ext {
                    cx.note_at(
                        Some((file, e.line)),
                        what,
                        format!("mount extensions ({x}) have no stickgate equivalent"),
                    );
                }
                first_line.get_or_insert(e.line);
                out.paths.push(pattern.to_owned());
            }
        }
        for (worker, (pats, line)) in others {
            let why = if kind(m.get(&worker)) == WorkerKind::Status {
                "a status worker: use stickgate's admin API and status page on [admin] listen (stickgate ctl)".to_owned()
            } else {
                format!(
                    "stickgate serves one backend pool per instance: run a second stickgate for it (stickgate import modjk ... --worker {worker})"
                )
            };
            cx.note_at(
                Some((file, line)),
                format!("{worker} mounted on {}", pats.join(", ")),
                why,
            );
        }
    }
    // One note for the imported worker's mounts: at its first mount in the
    // map, or, without a map, at worker.NAME.mount.
    let mounted_at = match uwm {
        Some((file, _)) => first_line.map(|line| Some((file, line))),
        None if !out.paths.is_empty() => {
            let file = cx.file;
            Some(m.get(&p.chosen).get("mount").map(|s| (file, s.line)))
        }
        None => None,
    };
    if let Some(at) = mounted_at {
        cx.note_at(
            at,
            format!("mounts of {} ({})", p.chosen, out.paths.join(", ")),
            "stickgate proxies every path to its backends, not only the mounted ones; restrict paths in front of it if that matters",
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::import::tests::{has_note, import, BASIC};

    #[test]
    fn uriworkermap_mounts_and_others() {
        let out = import(
            &format!("{BASIC}worker.list=status\nworker.status.type=status\n"),
            Some("/app/*=lb\n/app=lb\n!/app/static/*=lb\n/jkstatus=status\n/other/*=elsewhere;reply_timeout=5\n"),
            None,
        )
        .unwrap();
        assert!(out
            .toml
            .contains("# mounted paths (uriworkermap.properties): /app/*, /app\n"));
        assert!(has_note(&out, "stickgate proxies every path"));
        assert!(has_note(
            &out,
            "!/app/static/*=lb (uriworkermap.properties:3)"
        ));
        assert!(has_note(&out, "elsewhere mounted on /other/*"));
        assert!(has_note(&out, "status mounted on /jkstatus"));
        let e = import(BASIC, Some("/a=\n"), None).unwrap_err().to_string();
        assert!(e.starts_with("uriworkermap.properties:1: "), "{e}");
    }
}
