//! `stickgate drill`: a failover drill an operator can run from cron or CI.
//!
//! Failover is the one feature nobody sees working until the night a node
//! dies. The drill makes it routine: it creates sessions through the
//! balancer like browsers would, takes one node out (admin `stop`, or waits
//! for the operator to kill it), requests every session again and checks
//! that each one is still the same session with its data, on whatever node
//! now serves it. The result is a report and an exit code (0 PASS, 1 FAIL,
//! 2 could not run).
//!
//! The target may be `http://` or `https://` (the balancer's TLS listener,
//! trusting `--ca-file` or the system's roots), so the drill goes the way
//! browsers do, `Secure` cookies included.

mod client;
mod report;

pub use report::{DataCheck, Report, Split, TakeOut};

use crate::admin::client::{token_from, AdminClient, ClientError};
use crate::routing::session::{SessionId, Source};
use client::{Answer, Jar, Target};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How many client-visible errors the report quotes; the count covers the
/// rest.
const ERROR_SAMPLES: usize = 5;
/// How often `--wait-for-kill` asks the admin API whether the node is down.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// The command line of `stickgate drill`, also the options of [`run`], so
/// the CLI and a program embedding the drill describe it the same way.
#[derive(Debug, Clone, clap::Args)]
#[command(group(
    clap::ArgGroup::new("take_out")
        .required(true)
        .args(["stop", "wait_for_kill"])
))]
pub struct DrillArgs {
    /// The balancer's URL: http://host[:port] or https://host[:port].
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// PEM file of the CA that signed an https target's certificate
    /// (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// The balancer's admin API.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9901")]
    pub admin: String,
    /// File holding the admin token (else env STICKGATE_ADMIN_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// How many sessions to create (some must land on the drilled node).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub sessions: u32,
    /// Take ROUTE out with the admin API (`stop`), and enable it again at
    /// the end.
    #[arg(long, value_name = "ROUTE")]
    pub stop: Option<String>,
    /// Wait until the operator kills ROUTE by hand (e.g. `systemctl stop
    /// tomcat`) and the balancer reports it down.
    #[arg(long, value_name = "ROUTE")]
    pub wait_for_kill: Option<String>,
    /// With --stop: leave the node stopped after the drill.
    #[arg(long, requires = "stop")]
    pub keep_stopped: bool,
    /// How long --wait-for-kill waits for the node to go down.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = positive_duration)]
    pub wait_timeout: Duration,
    /// The page requested (it must create a session).
    #[arg(long, default_value = "/")]
    pub path: String,
    /// The session cookie's name.
    #[arg(long, default_value = "JSESSIONID")]
    pub cookie: String,
    /// What separates the base id from the route in the cookie.
    #[arg(long, default_value = ".")]
    pub separator: String,
    /// JSON field of the page's answer that counts the session's requests;
    /// a kept session must continue it at previous + 1 (not checked when
    /// the answer has no such numeric field).
    #[arg(long, default_value = "hits")]
    pub counter_field: String,
    /// Requests in flight at once (one keep-alive connection each).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Per-request timeout; a request that takes longer is an error.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub timeout: Duration,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A duration like `10s`, `500ms`, `5m`, not zero.
fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be more than 0".to_owned()),
        Err(e) => Err(format!("{e} (use e.g. 10s, 500ms, 5m)")),
    }
}

/// Why a drill could not run (exit 2): unlike a FAIL, nothing was learnt
/// about failover. Each message names the problem and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The admin API could not be reached or refused (token, address).
    #[error(transparent)]
    Admin(#[from] ClientError),
    /// `--target` is not an http or https URL.
    #[error("--target {0:?} is not a URL like http://127.0.0.1:8080 or https://gate.example")]
    BadTarget(String),
    /// `--ca-file` given for a plain-http target, where it would be
    /// silently ignored.
    #[error("--ca-file is for an https --target; {0:?} is plain http")]
    CaFileWithoutHttps(String),
    /// `--ca-file` could not be used.
    #[error("--ca-file: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// `--target` carries a path, which belongs in `--path`.
    #[error(
        "--target {0:?} has a path or query; give the balancer's root URL and the page in --path"
    )]
    TargetPath(String),
    /// `--path` is not a request path.
    #[error("--path {0:?} is not a path like / or /app/")]
    BadPath(String),
    /// An empty separator would make every id its own route.
    #[error("--separator must not be empty")]
    BadSeparator,
    /// `--admin` answered, but not like stickgate.
    #[error("admin API answered a status that is not stickgate's ({0}); does --admin point at a stickgate admin listener?")]
    BadStatus(String),
    /// The drilled route is not configured.
    #[error("no backend {route:?} on this balancer; configured: {known}")]
    UnknownRoute { route: String, known: String },
    /// The drilled node cannot get sessions (not active or not up).
    #[error("{route} is {state} and {health}: the drill needs it active and up to put sessions on it (`stickgate ctl enable {route}`, start the node)")]
    NotReady {
        route: String,
        state: String,
        health: String,
    },
    /// The cluster failed requests before anything was taken out.
    #[error("{failed} of {total} requests creating sessions failed (first: {first}); the cluster must serve before a drill: check `stickgate ctl status`")]
    Create {
        failed: usize,
        total: usize,
        first: String,
    },
    /// The page does not create sessions (or the cookie name is wrong).
    #[error("GET {path} answered {status} without a {cookie} cookie; point --path at a page that creates a session, or set --cookie to its name")]
    NoCookie {
        path: String,
        status: u16,
        cookie: String,
    },
    /// Neither the cookie nor the answer says which node holds a session.
    #[error("cannot tell which node holds session {value:?}: no route after {separator:?} in the cookie and no JSON \"route\" in the answer")]
    NoRoute { value: String, separator: String },
    /// Nothing to fail over: no session was on the drilled node.
    #[error("no session landed on {route} ({sessions} sessions: {routes}); raise --sessions")]
    NoSessionOnRoute {
        route: String,
        sessions: usize,
        routes: String,
    },
    /// The admin API refused or failed the stop.
    #[error("cannot stop {route} through the admin API: {error}")]
    Stop { route: String, error: ClientError },
    /// The stop was answered, but the node is not stopped.
    #[error(
        "admin API answered state {state:?} after stopping {route}, not \"stopped\"; {restore}"
    )]
    NotStopped {
        route: String,
        state: String,
        restore: String,
    },
    /// Ctrl-C/SIGTERM; says whether a stopped node was enabled again.
    #[error("interrupted; {0}")]
    Interrupted(String),
}

/// One session as the drill's client holds it.
#[derive(Debug, Clone)]
struct Session {
    jar: Jar,
    base: String,
    route: String,
    counter: Option<u64>,
}

/// What became of one session when requested again.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    /// Same session; `Some(true)` data continued, `None` not checked.
    Kept(Option<bool>),
    Lost(Lost),
}

/// Why a session was lost; the names are the report's `lost_by_reason`
/// keys.
#[derive(Debug, Clone, PartialEq)]
enum Lost {
    NewId,
    NoCookie,
    HttpStatus(u16),
    DataNotContinued,
    Error(String),
}

impl Lost {
    fn key(&self) -> &'static str {
        match self {
            Lost::NewId => "new_id",
            Lost::NoCookie => "no_cookie",
            Lost::HttpStatus(_) => "http_status",
            Lost::DataNotContinued => "data_not_continued",
            Lost::Error(_) => "error",
        }
    }
}

/// Settings the evaluation of answers needs.
struct Rules<'a> {
    cookie: &'a str,
    separator: &'a str,
    counter_field: &'a str,
}

impl Rules<'_> {
    /// Base id and route of a session cookie value.
    fn split<'v>(&self, value: &'v str) -> Option<(&'v str, Option<&'v str>)> {
        SessionId::parse(value, self.separator, Source::Cookie).map(|s| (s.base, s.route))
    }

    /// The numeric counter and `route` of a JSON answer, if it is one.
    fn fields(&self, body: &[u8]) -> (Option<u64>, Option<String>) {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => (
                v[self.counter_field].as_u64(),
                v["route"].as_str().map(str::to_owned),
            ),
            Err(_) => (None, None),
        }
    }

    /// The session a creating request produced.
    fn created(&self, path: &str, a: &Answer) -> Result<Session, DrillError> {
        let mut jar = Jar::default();
        jar.update(&a.set_cookies);
        let Some(value) = jar.get(self.cookie).map(str::to_owned) else {
            return Err(DrillError::NoCookie {
                path: path.to_owned(),
                status: a.status.as_u16(),
                cookie: self.cookie.to_owned(),
            });
        };
        let (counter, json_route) = self.fields(&a.body);
        let (base, route) = match self.split(&value) {
            Some((base, route)) => (base.to_owned(), route.map(str::to_owned).or(json_route)),
            None => (value.clone(), json_route),
        };
        let route = route.ok_or_else(|| DrillError::NoRoute {
            value: value.clone(),
            separator: self.separator.to_owned(),
        })?;
        Ok(Session {
            jar,
            base,
            route,
            counter,
        })
    }

    /// Judge the answer to a session's second request; updates its jar
    /// and returns the fate and the route it ended up on.
    fn recheck(&self, s: &mut Session, a: Result<&Answer, &str>) -> (Fate, Option<String>) {
        let a = match a {
            Ok(a) => a,
            Err(e) => return (Fate::Lost(Lost::Error(e.to_owned())), None),
        };
        let status = a.status.as_u16();
        s.jar.update(&a.set_cookies);
        let (counter, json_route) = self.fields(&a.body);
        let value = s.jar.get(self.cookie).map(str::to_owned);
        let parsed = value.as_deref().and_then(|v| self.split(v));
        let route = parsed
            .and_then(|(_, r)| r.map(str::to_owned))
            .or(json_route);
        let fate = if status >= 500 {
            return (Fate::Lost(Lost::Error(format!("HTTP {status}"))), None);
        } else if !(200..300).contains(&status) {
            Fate::Lost(Lost::HttpStatus(status))
        } else if value.is_none() {
            Fate::Lost(Lost::NoCookie)
        } else if parsed.map_or(value.as_deref(), |(b, _)| Some(b)) != Some(s.base.as_str()) {
            Fate::Lost(Lost::NewId)
        } else {
            match (s.counter, counter) {
                (Some(before), Some(after)) if after == before.saturating_add(1) => {
                    Fate::Kept(Some(true))
                }
                (Some(_), Some(_)) => Fate::Lost(Lost::DataNotContinued),
                _ => Fate::Kept(None),
            }
        };
        (fate, route)
    }
}

/// Run a drill: create `--sessions` sessions through `--target`, take the
/// node out, request them all again, and report. `progress` gets one line
/// per phase (the CLI prints them on stderr so `--json` stays clean);
/// when `interrupt` resolves (Ctrl-C) the drill stops, enabling a node it
/// stopped again first.
///
/// `Ok` carries the verdict (PASS or FAIL); `Err` means the drill could
/// not run.
pub async fn run(
    args: &DrillArgs,
    progress: &(dyn Fn(&str) + Sync),
    interrupt: impl Future<Output = ()>,
) -> Result<Report, DrillError> {
    let started = Instant::now();
    let (route, taken_out_by) = match (&args.stop, &args.wait_for_kill) {
        (Some(r), _) => (r.clone(), TakeOut::Stop),
        (None, Some(r)) => (r.clone(), TakeOut::WaitForKill),
        (None, None) => unreachable!("clap requires --stop or --wait-for-kill"),
    };
    let target = Target::parse(&args.target, &args.path, args.ca_file.as_deref())?;
    if args.separator.is_empty() {
        return Err(DrillError::BadSeparator);
    }
    let admin = AdminClient::new(&args.admin, token_from(args.token_file.as_deref())?)?;
    let rules = Rules {
        cookie: &args.cookie,
        separator: &args.separator,
        counter_field: &args.counter_field,
    };
    let concurrency = usize::from(args.concurrency);
    tokio::pin!(interrupt);

    let (state, health) = backend_state(&admin, &route).await?;
    if state != "active" || health != "up" {
        return Err(DrillError::NotReady {
            route,
            state,
            health,
        });
    }

    progress(&format!(
        "creating {} sessions through {} ...",
        args.sessions, args.target
    ));
    let n = args.sessions as usize;
    let created = tokio::select! {
        a = client::fetch_all(&target, vec![None; n], concurrency, args.timeout) => a,
        () = &mut interrupt => return Err(DrillError::Interrupted("no node was taken out".to_owned())),
    };
    let failed: Vec<&String> = created.iter().filter_map(|a| a.as_ref().err()).collect();
    let non_2xx: Vec<u16> = created
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .map(|a| a.status.as_u16())
        .filter(|s| !(200..300).contains(s))
        .collect();
    if !failed.is_empty() || !non_2xx.is_empty() {
        let first = failed
            .first()
            .map(|e| e.to_string())
            .unwrap_or_else(|| format!("HTTP {}", non_2xx[0]));
        return Err(DrillError::Create {
            failed: failed.len() + non_2xx.len(),
            total: n,
            first,
        });
    }
    let mut sessions = created
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .map(|a| rules.created(&args.path, a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut routes_before = BTreeMap::new();
    for s in &sessions {
        *routes_before.entry(s.route.clone()).or_insert(0usize) += 1;
    }
    let on_route = routes_before.get(&route).copied().unwrap_or(0);
    if on_route == 0 {
        return Err(DrillError::NoSessionOnRoute {
            route,
            sessions: n,
            routes: report::dist(&routes_before),
        });
    }
    progress(&format!(
        "created {n} sessions ({}); {on_route} on {route}",
        report::dist(&routes_before)
    ));

    let mut report = Report {
        target: args.target.clone(),
        route: route.clone(),
        taken_out_by,
        sessions: n,
        rechecked: false,
        kept: 0,
        lost: 0,
        lost_by_reason: BTreeMap::new(),
        errors: 0,
        error_samples: Vec::new(),
        on_route: Split {
            created: on_route,
            ..Split::default()
        },
        elsewhere: Split {
            created: n - on_route,
            ..Split::default()
        },
        data: DataCheck {
            field: args.counter_field.clone(),
            ..DataCheck::default()
        },
        routes_before,
        routes_after: BTreeMap::new(),
        first_failover_ms: None,
        node_out_after_ms: 0,
        duration_ms: 0,
        restored: None,
        restore_error: None,
        pass: false,
        verdict: String::new(),
    };

    // Take the node out.
    let out_at = match taken_out_by {
        TakeOut::Stop => {
            let body = admin
                .post(&format!("/api/backends/{route}/stop"))
                .await
                .map_err(|error| DrillError::Stop {
                    route: route.clone(),
                    error,
                })?;
            let out_at = Instant::now();
            let state = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["state"].as_str().map(str::to_owned))
                .unwrap_or_default();
            if state != "stopped" {
                return Err(DrillError::NotStopped {
                    restore: restore(&admin, &route).await,
                    route,
                    state,
                });
            }
            progress(&format!(
                "{route} stopped through the admin API; requesting every session again ..."
            ));
            out_at
        }
        TakeOut::WaitForKill => {
            progress(&format!(
                "waiting for {route} to go down (kill it now, e.g. systemctl stop tomcat) ..."
            ));
            let waited = tokio::select! {
                w = wait_down(&admin, &route, args.wait_timeout) => w,
                () = &mut interrupt => return Err(DrillError::Interrupted(format!("{route} was not taken out by the drill"))),
            };
            match waited {
                Ok(at) => {
                    progress(&format!(
                        "{route} is down; requesting every session again ..."
                    ));
                    at
                }
                Err(why) => {
                    report.node_out_after_ms = millis(started.elapsed());
                    report.duration_ms = report.node_out_after_ms;
                    report.finish(Some(why));
                    return Ok(report);
                }
            }
        }
    };
    report.node_out_after_ms = millis(out_at.duration_since(started));

    // Request every session again: those of the drilled node first, so
    // the time to the first failover is not hidden behind the others.
    let mut order: Vec<usize> = (0..n).filter(|&i| sessions[i].route == route).collect();
    order.extend((0..n).filter(|&i| sessions[i].route != route));
    let cookies = order.iter().map(|&i| sessions[i].jar.header()).collect();
    let answers = tokio::select! {
        a = client::fetch_all(&target, cookies, concurrency, args.timeout) => a,
        () = &mut interrupt => {
            let what = match taken_out_by {
                TakeOut::Stop => restore(&admin, &route).await,
                TakeOut::WaitForKill => format!("{route} was not taken out by the drill"),
            };
            return Err(DrillError::Interrupted(what));
        }
    };
    report.rechecked = true;
    for (&i, answer) in order.iter().zip(&answers) {
        let s = &mut sessions[i];
        let was_on_route = s.route == route;
        let (fate, after) = rules.recheck(s, answer.as_ref().map_err(String::as_str));
        if let Some(r) = after {
            *report.routes_after.entry(r).or_insert(0) += 1;
        }
        let split = if was_on_route {
            &mut report.on_route
        } else {
            &mut report.elsewhere
        };
        match fate {
            Fate::Kept(data) => {
                report.kept += 1;
                split.kept += 1;
                match data {
                    Some(_) => {
                        report.data.checked += 1;
                        report.data.continued += 1;
                    }
                    None => report.data.not_checked += 1,
                }
                if was_on_route {
                    if let Ok(a) = answer {
                        let ms = a.at.saturating_duration_since(out_at).as_secs_f64() * 1e3;
                        let ms = (ms * 10.0).round() / 10.0;
                        if report.first_failover_ms.is_none_or(|f| ms < f) {
                            report.first_failover_ms = Some(ms);
                        }
                    }
                }
            }
            Fate::Lost(why) => {
                report.lost += 1;
                split.lost += 1;
                *report
                    .lost_by_reason
                    .entry(why.key().to_owned())
                    .or_insert(0) += 1;
                match why {
                    Lost::DataNotContinued => report.data.checked += 1,
                    Lost::Error(e) => {
                        report.errors += 1;
                        if report.error_samples.len() < ERROR_SAMPLES {
                            report
                                .error_samples
                                .push(format!("session {} (was on {}): {e}", s.base, s.route));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    if taken_out_by == TakeOut::Stop && !args.keep_stopped {
        match admin.post(&format!("/api/backends/{route}/enable")).await {
            Ok(_) => report.restored = Some(true),
            Err(e) => {
                report.restored = Some(false);
                report.restore_error = Some(e.to_string());
            }
        }
    }
    report.duration_ms = millis(started.elapsed());
    report.finish(None);
    Ok(report)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// State and health of `route` per `GET /api/status`.
async fn backend_state(admin: &AdminClient, route: &str) -> Result<(String, String), DrillError> {
    let body = admin.get("/api/status").await?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| DrillError::BadStatus(format!("not JSON: {e}")))?;
    let backends = v["backends"]
        .as_array()
        .ok_or_else(|| DrillError::BadStatus("no backends list".to_owned()))?;
    let Some(b) = backends.iter().find(|b| b["route"] == route) else {
        let known: Vec<&str> = backends
            .iter()
            .filter_map(|b| b["route"].as_str())
            .collect();
        return Err(DrillError::UnknownRoute {
            route: route.to_owned(),
            known: known.join(", "),
        });
    };
    let field = |k: &str| b[k].as_str().unwrap_or("?").to_owned();
    Ok((field("state"), field("health")))
}

/// Poll the admin API until `route` is reported down; the moment it was
/// seen down, or the reason it was not within `limit`.
async fn wait_down(admin: &AdminClient, route: &str, limit: Duration) -> Result<Instant, String> {
    let deadline = Instant::now() + limit;
    let mut last_error = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, backend_state(admin, route)).await {
            Ok(Ok((_, health))) if health == "down" => return Ok(Instant::now()),
            Ok(Ok(_)) => last_error = None,
            Ok(Err(e)) => last_error = Some(e.to_string()),
            Err(_) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let limit = humantime::format_duration(limit);
            return Err(match last_error {
                Some(e) => format!("{route} was not seen down within {limit}; last admin API error: {e}"),
                None => format!(
                    "{route} did not go down within {limit} (kill it while the drill waits, or raise --wait-timeout)"
                ),
            });
        }
        tokio::time::sleep(POLL_EVERY.min(left)).await;
    }
}

/// Enable `route` again after an aborted drill; says what happened.
async fn restore(admin: &AdminClient, route: &str) -> String {
    match admin.post(&format!("/api/backends/{route}/enable")).await {
        Ok(_) => format!("{route} enabled again"),
        Err(e) => format!("{route} is still stopped ({e}): run `stickgate ctl enable {route}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::StatusCode;

    fn rules() -> Rules<'static> {
        Rules {
            cookie: "JSESSIONID",
            separator: ".",
            counter_field: "hits",
        }
    }

    fn answer(status: u16, set_cookie: Option<&str>, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            set_cookies: set_cookie.into_iter().map(str::to_owned).collect(),
            body: Bytes::from(body.to_owned()),
            at: Instant::now(),
        }
    }

    fn session() -> Session {
        rules()
            .created(
                "/",
                &answer(
                    200,
                    Some("JSESSIONID=ABC.tomcat1; Path=/; HttpOnly"),
                    r#"{"route":"tomcat1","session":"ABC","hits":1}"#,
                ),
            )
            .unwrap()
    }

    #[test]
    fn created_sessions_know_base_route_and_counter() {
        let s = session();
        assert_eq!(
            (s.base.as_str(), s.route.as_str(), s.counter),
            ("ABC", "tomcat1", Some(1))
        );
        let bare = rules()
            .created(
                "/",
                &answer(200, Some("JSESSIONID=XYZ"), r#"{"route":"n2"}"#),
            )
            .unwrap();
        assert_eq!(
            (bare.base.as_str(), bare.route.as_str(), bare.counter),
            ("XYZ", "n2", None)
        );
        assert!(matches!(
            rules().created("/", &answer(200, Some("JSESSIONID=XYZ"), "hello")),
            Err(DrillError::NoRoute { .. })
        ));
        assert!(matches!(
            rules().created("/", &answer(200, None, "{}")),
            Err(DrillError::NoCookie { status: 200, .. })
        ));
    }

    #[test]
    fn replicated_failover_is_kept_with_data() {
        let mut s = session();
        let a = answer(
            200,
            Some("JSESSIONID=ABC.tomcat2; Path=/"),
            r#"{"route":"tomcat2","hits":2}"#,
        );
        assert_eq!(
            rules().recheck(&mut s, Ok(&a)),
            (Fate::Kept(Some(true)), Some("tomcat2".to_owned()))
        );
        assert_eq!(s.jar.get("JSESSIONID"), Some("ABC.tomcat2"));
    }

    #[test]
    fn untouched_session_without_set_cookie_is_kept() {
        let mut s = session();
        let a = answer(200, None, r#"{"route":"tomcat1","hits":2}"#);
        assert_eq!(
            rules().recheck(&mut s, Ok(&a)),
            (Fate::Kept(Some(true)), Some("tomcat1".to_owned()))
        );
        let a = answer(200, None, "<html>no counter</html>");
        assert_eq!(
            rules().recheck(&mut s, Ok(&a)),
            (Fate::Kept(None), Some("tomcat1".to_owned()))
        );
    }

    #[test]
    fn losses_are_classified() {
        let r = rules();
        let new = answer(
            200,
            Some("JSESSIONID=DEF.tomcat2"),
            r#"{"route":"tomcat2","hits":1}"#,
        );
        assert_eq!(
            r.recheck(&mut session(), Ok(&new)).0,
            Fate::Lost(Lost::NewId)
        );
        let reset = answer(200, None, r#"{"hits":1}"#);
        assert_eq!(
            r.recheck(&mut session(), Ok(&reset)).0,
            Fate::Lost(Lost::DataNotContinued)
        );
        let gone = answer(200, Some("JSESSIONID=; Max-Age=0"), "{}");
        assert_eq!(
            r.recheck(&mut session(), Ok(&gone)).0,
            Fate::Lost(Lost::NoCookie)
        );
        let login = answer(302, None, "");
        assert_eq!(
            r.recheck(&mut session(), Ok(&login)).0,
            Fate::Lost(Lost::HttpStatus(302))
        );
        let down = answer(503, None, "");
        assert_eq!(
            r.recheck(&mut session(), Ok(&down)),
            (Fate::Lost(Lost::Error("HTTP 503".into())), None)
        );
        assert_eq!(
            r.recheck(&mut session(), Err("no answer within 10s")),
            (Fate::Lost(Lost::Error("no answer within 10s".into())), None)
        );
    }

    #[test]
    fn durations_must_be_positive() {
        assert_eq!(positive_duration("200ms"), Ok(Duration::from_millis(200)));
        assert!(positive_duration("0s").is_err());
        assert!(positive_duration("soon").is_err());
    }
}
