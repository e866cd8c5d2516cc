//! What a drill found, in one structure: printed as a readable report or
//! as JSON (`--json`) for scripts, and reduced to PASS/FAIL for the exit
//! code, so cron and CI can act on it.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// How the node was taken out, because the two drills answer different
/// questions: `stop` tests the balancer's planned failover, `wait_for_kill`
/// an unplanned crash the health check has to notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TakeOut {
    /// `POST /api/backends/{route}/stop` on the admin API.
    Stop,
    /// The operator killed the node; the balancer reported it down.
    WaitForKill,
}

/// Sessions of one group (those on the drilled node, or the others), so a
/// report shows whether only the failed-over sessions suffered or the
/// untouched ones too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Split {
    /// Sessions of this group created before the node went out.
    pub created: usize,
    /// Of those, still the same session (and data) afterwards.
    pub kept: usize,
    /// Of those, not kept.
    pub lost: usize,
}

/// The session-data check: with a counter the application increments on
/// every request (the demo node's `hits`), a replicated session must
/// continue at previous + 1 on the new node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DataCheck {
    /// The JSON field read (`--counter-field`).
    pub field: String,
    /// Sessions with the same id whose answers both carried the field.
    pub checked: usize,
    /// Of those, the ones that continued (previous + 1).
    pub continued: usize,
    /// Sessions with the same id but without a numeric field to compare
    /// (so their data was not checked).
    pub not_checked: usize,
}

/// The drill's findings. `pass` is true only when every session survived
/// with no client-visible error (and a stopped node was enabled again).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The balancer URL the sessions went through.
    pub target: String,
    /// The node taken out.
    pub route: String,
    /// How it was taken out.
    pub taken_out_by: TakeOut,
    /// Sessions created through the balancer before the node went out.
    pub sessions: usize,
    /// False when the drill ended before requesting the sessions again
    /// (the node never went down); the counts below are then 0.
    pub rechecked: bool,
    /// Same base id, a 2xx answer and, where checked, data continued.
    pub kept: usize,
    /// Not kept: `sessions - kept` once rechecked.
    pub lost: usize,
    /// Why sessions were lost: `new_id` (the node that answered did not
    /// know the session and started another), `no_cookie` (the session
    /// cookie was removed), `http_status` (a non-2xx answer below 500),
    /// `data_not_continued` (same id, counter not previous + 1), `error`
    /// (a client-visible error, see `errors`).
    pub lost_by_reason: BTreeMap<String, usize>,
    /// Client-visible errors: status >= 500, connection errors, timeouts.
    pub errors: usize,
    /// The first few errors, each naming the session's old route.
    pub error_samples: Vec<String>,
    /// The sessions that were on `route`.
    pub on_route: Split,
    /// The sessions that were on other nodes (must stay untouched).
    pub elsewhere: Split,
    /// The session-data check.
    pub data: DataCheck,
    /// Route -> sessions right after creation.
    pub routes_before: BTreeMap<String, usize>,
    /// Route -> sessions after the drill, from the session cookie's route
    /// suffix (else the answer's JSON `route`); errors not counted.
    pub routes_after: BTreeMap<String, usize>,
    /// From the node going out (the stop answered, or the balancer first
    /// reporting it down) to the first kept answer of a session that was
    /// on it.
    pub first_failover_ms: Option<f64>,
    /// From the drill's start to the node going out (includes the wait
    /// for the operator's kill).
    pub node_out_after_ms: u64,
    /// The whole drill.
    pub duration_ms: u64,
    /// After `--stop`: whether the node was enabled again (`None` with
    /// `--keep-stopped` or `--wait-for-kill`).
    pub restored: Option<bool>,
    /// Why enabling it again failed.
    pub restore_error: Option<String>,
    /// The result the exit code reflects.
    pub pass: bool,
    /// The last line of the text report: `PASS: ...` or `FAIL: ...`.
    pub verdict: String,
}

impl Report {
    /// Decide `pass` and write `verdict` from the counts; `abort` is the
    /// reason when the drill could not re-request the sessions.
    pub(crate) fn finish(&mut self, abort: Option<String>) {
        let mut problems = Vec::new();
        let mut hint = None;
        if let Some(why) = abort {
            problems.push(why);
        } else {
            if self.lost > 0 {
                let place = if self.elsewhere.lost == 0 {
                    format!("all on {}", self.route)
                } else if self.on_route.lost == 0 {
                    format!("none on {}: all on nodes that stayed up", self.route)
                } else {
                    format!(
                        "{} on {}, {} elsewhere",
                        self.on_route.lost, self.route, self.elsewhere.lost
                    )
                };
                problems.push(format!(
                    "{} of {} lost ({place})",
                    self.lost,
                    plural(self.sessions, "session")
                ));
                hint = self.hint();
            }
            if self.errors > 0 {
                let first = self.error_samples.first().map_or("", String::as_str);
                problems.push(format!(
                    "{} (first: {first})",
                    plural(self.errors, "client-visible error")
                ));
            }
        }
        let restore = self.restore_error.as_ref().map(|e| {
            format!(
                "{} was not enabled again ({e}): run `stickgate ctl enable {}`",
                self.route, self.route
            )
        });
        self.pass = problems.is_empty() && restore.is_none();
        self.verdict = if self.pass {
            let data = if self.data.checked == self.sessions {
                format!(", data continued for all ({})", self.data.field)
            } else if self.data.checked == 0 {
                format!(
                    ", data not checked (no numeric {:?} field)",
                    self.data.field
                )
            } else {
                format!(
                    ", data continued for {} ({} not checked)",
                    self.data.checked, self.data.not_checked
                )
            };
            let after = self.first_failover_ms.map_or(String::new(), |ms| {
                format!(", first failover after {ms:.1} ms")
            });
            format!(
                "PASS: all {} kept ({} failed over from {}{data}), no client-visible errors{after}",
                plural(self.sessions, "session"),
                self.on_route.created,
                self.route
            )
        } else {
            let mut line = format!("FAIL: {}", problems.join(", "));
            for extra in hint.map(str::to_owned).into_iter().chain(restore) {
                if line.len() > "FAIL: ".len() {
                    line.push_str("; ");
                }
                line.push_str(&extra);
            }
            line
        };
    }

    /// The likeliest cause of the losses, for the FAIL line.
    fn hint(&self) -> Option<&'static str> {
        let count = |k: &str| self.lost_by_reason.get(k).copied().unwrap_or(0);
        let top = [
            "new_id",
            "data_not_continued",
            "error",
            "no_cookie",
            "http_status",
        ]
        .into_iter()
        .max_by_key(|k| count(k))?;
        if count(top) == 0 {
            return None;
        }
        Some(match top {
            "new_id" if self.elsewhere.lost == 0 => "the backends do not replicate sessions?",
            "new_id" => "sessions on nodes that stayed up changed too: did the balancer move them?",
            "data_not_continued" => {
                "ids were kept but data did not continue: replication incomplete or lagging?"
            }
            "error" => "was another node up to take over?",
            "no_cookie" => "the application removed the session cookie",
            _ => "the application answered without 2xx for a session it used to serve",
        })
    }

    /// The readable report, ending with the verdict line.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let how = match self.taken_out_by {
            TakeOut::Stop => "stopped through the admin API",
            TakeOut::WaitForKill => "killed by the operator",
        };
        let _ = writeln!(
            o,
            "stickgate drill: {} through {}; {} {how}",
            plural(self.sessions, "session"),
            self.target,
            self.route
        );
        let _ = writeln!(o, "{:<18}{}", "before", dist(&self.routes_before));
        if self.rechecked {
            let _ = writeln!(
                o,
                "{:<18}kept {}/{}",
                format!("on {}", self.route),
                self.on_route.kept,
                self.on_route.created
            );
            let _ = writeln!(
                o,
                "{:<18}kept {}/{}",
                "elsewhere", self.elsewhere.kept, self.elsewhere.created
            );
            let reasons = if self.lost_by_reason.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    self.lost_by_reason
                        .iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let _ = writeln!(o, "{:<18}{}{reasons}", "lost", self.lost);
            let _ = writeln!(o, "{:<18}{}", "client errors", self.errors);
            for e in &self.error_samples {
                let _ = writeln!(o, "{:<18}{e}", "");
            }
            let data = if self.data.checked + self.data.not_checked == 0 {
                "no session kept its id".to_owned()
            } else if self.data.checked == 0 {
                format!("not checked (no numeric {:?} field)", self.data.field)
            } else {
                format!(
                    "{}/{} checked ({} == previous + 1){}",
                    self.data.continued,
                    self.data.checked,
                    self.data.field,
                    if self.data.not_checked > 0 {
                        format!(", {} not checked", self.data.not_checked)
                    } else {
                        String::new()
                    }
                )
            };
            let _ = writeln!(o, "{:<18}{data}", "data continued");
            let _ = writeln!(o, "{:<18}{}", "after", dist(&self.routes_after));
            let since = match self.taken_out_by {
                TakeOut::Stop => format!("{} was stopped", self.route),
                TakeOut::WaitForKill => format!("the balancer reported {} down", self.route),
            };
            let first = self.first_failover_ms.map_or_else(
                || "none".to_owned(),
                |ms| format!("{ms:.1} ms after {since}"),
            );
            let _ = writeln!(o, "{:<18}{first}", "first failover");
        } else {
            let _ = writeln!(o, "{:<18}not re-requested", "sessions");
        }
        let _ = writeln!(
            o,
            "{:<18}{} ms ({} out after {} ms)",
            "duration", self.duration_ms, self.route, self.node_out_after_ms
        );
        match (self.restored, &self.restore_error) {
            (Some(true), _) => {
                let _ = writeln!(o, "{:<18}enabled again", self.route);
            }
            (Some(false), Some(e)) => {
                let _ = writeln!(o, "{:<18}NOT enabled again: {e}", self.route);
            }
            _ if self.taken_out_by == TakeOut::Stop => {
                let _ = writeln!(o, "{:<18}left stopped (--keep-stopped)", self.route);
            }
            _ => {}
        }
        let _ = writeln!(o, "{}", self.verdict);
        o
    }
}

/// `1 session`, `2 sessions`.
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `tomcat1: 31, tomcat2: 29`.
pub(crate) fn dist(m: &BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        return "-".to_owned();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            target: "http://127.0.0.1:8080".into(),
            route: "tomcat1".into(),
            taken_out_by: TakeOut::Stop,
            sessions: 200,
            rechecked: true,
            kept: 200,
            lost: 0,
            lost_by_reason: BTreeMap::new(),
            errors: 0,
            error_samples: vec![],
            on_route: Split {
                created: 95,
                kept: 95,
                lost: 0,
            },
            elsewhere: Split {
                created: 105,
                kept: 105,
                lost: 0,
            },
            data: DataCheck {
                field: "hits".into(),
                checked: 200,
                continued: 200,
                not_checked: 0,
            },
            routes_before: BTreeMap::from([("tomcat1".into(), 95), ("tomcat2".into(), 105)]),
            routes_after: BTreeMap::from([("tomcat2".into(), 200)]),
            first_failover_ms: Some(2.5),
            node_out_after_ms: 300,
            duration_ms: 800,
            restored: Some(true),
            restore_error: None,
            pass: false,
            verdict: String::new(),
        }
    }

    #[test]
    fn all_kept_passes() {
        let mut r = report();
        r.finish(None);
        assert!(r.pass);
        assert!(r.verdict.starts_with("PASS: all 200 sessions kept (95 failed over from tomcat1, data continued for all (hits))"), "{}", r.verdict);
        let text = r.to_text();
        assert!(text.ends_with(&format!("{}\n", r.verdict)), "{text}");
        assert!(text.contains("on tomcat1        kept 95/95"), "{text}");
    }

    #[test]
    fn losses_on_the_node_blame_replication() {
        let mut r = report();
        r.kept = 105;
        r.lost = 95;
        r.on_route = Split {
            created: 95,
            kept: 0,
            lost: 95,
        };
        r.lost_by_reason.insert("new_id".into(), 95);
        r.finish(None);
        assert!(!r.pass);
        assert_eq!(
            r.verdict,
            "FAIL: 95 of 200 sessions lost (all on tomcat1); the backends do not replicate sessions?"
        );
    }

    #[test]
    fn errors_and_a_failed_restore_fail() {
        let mut r = report();
        r.errors = 3;
        r.error_samples = vec!["session on tomcat1: HTTP 503".into()];
        r.kept = 197;
        r.lost = 3;
        r.on_route.kept = 92;
        r.on_route.lost = 3;
        r.lost_by_reason.insert("error".into(), 3);
        r.restored = Some(false);
        r.restore_error = Some("admin API did not answer within 30s".into());
        r.finish(None);
        assert!(!r.pass);
        assert_eq!(
            r.verdict,
            "FAIL: 3 of 200 sessions lost (all on tomcat1), 3 client-visible errors (first: session on tomcat1: HTTP 503); \
             was another node up to take over?; \
             tomcat1 was not enabled again (admin API did not answer within 30s): run `stickgate ctl enable tomcat1`"
        );
        let mut only_restore = report();
        only_restore.restore_error = Some("refused".into());
        only_restore.finish(None);
        assert!(!only_restore.pass);
        assert_eq!(
            only_restore.verdict,
            "FAIL: tomcat1 was not enabled again (refused): run `stickgate ctl enable tomcat1`"
        );
    }

    #[test]
    fn a_node_that_never_went_down_fails() {
        let mut r = report();
        r.rechecked = false;
        r.finish(Some("tomcat1 did not go down within 5m".into()));
        assert!(!r.pass);
        assert_eq!(r.verdict, "FAIL: tomcat1 did not go down within 5m");
        assert!(r.to_text().contains("not re-requested"));
    }
}
