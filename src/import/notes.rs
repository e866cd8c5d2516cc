//! The import context: the notes gathered while mapping, and the errors
//! that blame a line of the workers file.
//!
//! Every mapping step either produces a stickgate setting or says, through
//! [`Cx`], why a mod_jk setting was not carried over; keeping the notes in
//! one place lets each be recorded once and printed in file order.

use super::error::{syntax, ImportError};
use super::model::{setting_error, Setting, Settings};
use super::text::one_line;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// A mod_jk setting (or mount, or worker) that has no stickgate equivalent
/// or only an approximate one. Printed as a `# not carried over: ...`
/// comment in the output and as a warning on stderr, so nothing is dropped
/// silently during a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Where the setting is written, when it is one line.
    pub at: Option<(PathBuf, usize)>,
    /// The setting or object concerned, e.g. `worker.node1.redirect=node2`.
    pub what: String,
    /// Why it is not carried over and what to do instead.
    pub why: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match &self.at {
            Some((file, line)) => format!(
                "not carried over: {} ({}:{}): {}",
                self.what,
                file.display(),
                line,
                self.why
            ),
            None => format!("not carried over: {}: {}", self.what, self.why),
        };
        f.write_str(&one_line(&text))
    }
}

/// Import state: the workers file name and the notes so far.
pub(super) struct Cx<'a> {
    /// The workers file, named by notes and errors without another file.
    pub(super) file: &'a Path,
    /// Notes in the order they were made.
    pub(super) notes: Vec<Note>,
    /// Place and subject of every note, so an inherited setting shared by
    /// many workers is noted once.
    seen: HashSet<(Option<(PathBuf, usize)>, String)>,
}

impl<'a> Cx<'a> {
    /// No notes yet, about `file`.
    pub(super) fn new(file: &'a Path) -> Self {
        Cx {
            file,
            notes: Vec::new(),
            seen: HashSet::new(),
        }
    }
}

impl Cx<'_> {
    /// Note `what` at `file:line` (any file), unless already noted there.
    pub(super) fn note_at(
        &mut self,
        at: Option<(&Path, usize)>,
        what: impl Into<String>,
        why: impl Into<String>,
    ) {
        let at = at.map(|(f, l)| (f.to_path_buf(), l));
        let what = what.into();
        if self.seen.insert((at.clone(), what.clone())) {
            self.notes.push(Note {
                at,
                what,
                why: why.into(),
            });
        }
    }

    /// Note `what` at a line of the workers file (or at none).
    pub(super) fn note(
        &mut self,
        line: Option<usize>,
        what: impl Into<String>,
        why: impl Into<String>,
    ) {
        let file = self.file;
        self.note_at(line.map(|l| (file, l)), what, why);
    }

    /// Note one worker setting as written.
    pub(super) fn note_setting(&mut self, dir: &str, s: &Setting, why: impl Into<String>) {
        self.note(Some(s.line), show(dir, s), why);
    }

    /// Note every setting of `s` that `handled` does not claim, in file
    /// order, with [`why_not`]: nothing is dropped silently.
    pub(super) fn note_unhandled(&mut self, s: &Settings, handled: impl Fn(&str) -> bool) {
        for (dir, v) in by_line(s) {
            if !handled(dir) {
                self.note_setting(dir, v, why_not(dir));
            }
        }
    }

    /// A setting of the workers file whose value cannot be used.
    pub(super) fn bad(&self, dir: &str, s: &Setting, problem: impl Into<String>) -> ImportError {
        setting_error(self.file, dir, s, problem)
    }

    /// A whole line of the workers file that cannot be imported.
    pub(super) fn syntax(&self, line: usize, problem: impl Into<String>) -> ImportError {
        syntax(self.file, line, problem)
    }

    /// The workers file gives nothing to import. The problem may quote a
    /// `--worker` name as typed, so control characters are replaced to
    /// keep the message one line (found by the `modjk_import` fuzz target).
    pub(super) fn unusable(&self, problem: impl Into<String>) -> ImportError {
        ImportError::Unusable {
            file: self.file.to_path_buf(),
            problem: one_line(&problem.into()),
        }
    }

    /// A mod_jk boolean (`true`, `1`, `on`, ... and their opposites).
    pub(super) fn bool(&self, dir: &str, s: &Setting) -> Result<bool, ImportError> {
        match s.value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "on" | "yes" | "t" | "y" => Ok(true),
            "false" | "0" | "off" | "no" | "f" | "n" => Ok(false),
            _ => Err(self.bad(dir, s, "expected true or false")),
        }
    }

    /// A mod_jk whole number.
    pub(super) fn int(&self, dir: &str, s: &Setting) -> Result<i64, ImportError> {
        s.value
            .trim()
            .parse::<i64>()
            .map_err(|_| self.bad(dir, s, "expected a whole number"))
    }
}

/// `worker.OWNER.dir=value`, for notes.
fn show(dir: &str, s: &Setting) -> String {
    format!("worker.{}.{}={}", s.owner, dir, s.value)
}

/// Why a worker directive has no stickgate key, and what to use instead.
pub(super) fn why_not(dir: &str) -> &'static str {
    match dir {
        "redirect" => "stickgate picks the heir itself: a node of the failed node's domain first, then any other",
        "distance" => "stickgate prefers nodes of the failed node's domain, then any other; there are no distance levels",
        "secret" => "AJP secret, HTTP has no equivalent: make the Tomcat HTTP connector reachable only from stickgate",
        "fail_on_status" => "to count 5xx answers of real traffic as failures set health.passive_5xx = true",
        "recovery_options" => "stickgate retries connect errors for any method and dropped connections for idempotent methods only (upstream.retries)",
        "retries" => "attempts on the same node; stickgate instead tries other nodes (upstream.retries)",
        "socket_timeout" => "stickgate bounds the connect (upstream.connect_timeout) and the wait for response headers (upstream.response_timeout)",
        "prepost_timeout" => "AJP CPing before each request has no HTTP equivalent",
        "ping_timeout" | "connection_ping_interval" => "only used by interval CPing (ping_mode I or A), which is not enabled",
        "connection_pool_size" | "connection_pool_minsize" | "cachesize" | "cache_timeout"
        | "connection_acquire_timeout" => "stickgate keeps up to upstream.pool_max_idle idle connections per node and limits concurrency with upstream.max_connections",
        "max_packet_size" | "socket_buffer" => "AJP packet/socket tuning has no HTTP equivalent",
        "lock" => "stickgate's balancing state needs no lock setting",
        "max_reply_timeouts" | "error_escalation_time" => "stickgate marks a node down after health.fall failures and retries it with health.probe_backoff",
        "set_session_cookie" | "session_cookie_path" | "session_cookie_domain" => "stickgate never sets its own session cookie; Tomcat's jvmRoute suffix routes",
        "mount" => "mounts of a worker that is not imported",
        _ => "no stickgate equivalent",
    }
}

/// A worker's settings ordered by line, for notes in file order.
fn by_line(s: &Settings) -> Vec<(&str, &Setting)> {
    let mut v: Vec<(&str, &Setting)> = s.iter().map(|(k, v)| (k.as_str(), v)).collect();
    v.sort_by_key(|(k, s)| (s.line, *k));
    v
}

/// Notes in file order: workers file first, then others, then notes
/// without a line.
pub(super) fn sort_notes(notes: &mut [Note], workers: &Path) {
    notes.sort_by_key(|n| match &n.at {
        Some((f, l)) if f == workers => (0, *l),
        Some((_, l)) => (1, *l),
        None => (2, 0),
    });
}

#[cfg(test)]
mod tests {
    use crate::import::tests::{has_note, import, BASIC};

    #[test]
    fn unknown_settings_become_notes_once() {
        let out = import(
            &format!("worker.tpl.socket_timeout=10\n{BASIC}worker.n1.reference=worker.tpl\nworker.n2.reference=worker.tpl\nworker.n1.redirect=n2\nworker.maintain=60\nworkers.tomcat_home=/opt\n"),
            None,
            None,
        )
        .unwrap();
        let n = out
            .notes
            .iter()
            .filter(|n| n.what == "worker.tpl.socket_timeout=10")
            .count();
        assert_eq!(n, 1, "{:#?}", out.notes);
        assert!(has_note(
            &out,
            "worker.n1.redirect=n2 (workers.properties:10): stickgate picks the heir"
        ));
        assert!(has_note(&out, "worker.maintain=60"));
        assert!(has_note(&out, "workers.tomcat_home=/opt"));
        for n in &out.notes {
            assert!(
                out.toml.contains(&format!("# {n}\n")),
                "{n} missing from the TOML"
            );
        }
    }
}
