//! `stickgate ctl`: a small client of the admin API.

use anyhow::Context;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};
use stickgate::admin::client::{token_from, AdminClient};

/// How often `status --watch` redraws.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How often `drain --wait` asks for the route's sessions.
const DRAIN_POLL: Duration = Duration::from_millis(500);

/// What to ask the admin API.
#[derive(clap::Subcommand)]
pub enum Action {
    /// Backends, states, health and sessions.
    Status {
        /// Print the API's JSON instead of a table.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw the table every 2 s until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// No new sessions; existing ones go on until they end (rolling restarts).
    Drain {
        route: String,
        /// Then wait until the route holds no session: exit 0 once it is
        /// empty, 1 naming the sessions left after --timeout.
        #[arg(long)]
        wait: bool,
        /// Longest wait with --wait (e.g. 90s, 30m).
        #[arg(long, requires = "wait", value_parser = humantime::parse_duration, default_value = "1h")]
        timeout: Duration,
    },
    /// Only requests of sessions the node already holds (mod_jk "disabled").
    Disable { route: String },
    /// No traffic at all; the node's sessions fail over now.
    Stop { route: String },
    /// Back to normal service.
    Enable { route: String },
    /// Re-read the config file (like SIGHUP) and report the result.
    Reload,
}

/// Run one ctl action against `admin` (e.g. `http://127.0.0.1:9901`).
pub async fn run(admin: &str, token_file: Option<&Path>, action: Action) -> anyhow::Result<()> {
    let client = AdminClient::new(admin, token_from(token_file)?)?;
    let (route, verb) = match action {
        Action::Status { watch: true, .. } => return watch(&client).await,
        Action::Status { json, .. } => {
            let body = client.get("/api/status").await?;
            if json {
                println!("{}", String::from_utf8_lossy(&body).trim_end());
                return Ok(());
            }
            let v: serde_json::Value = serde_json::from_slice(&body)
                .context("admin API answered something that is not JSON")?;
            print_table(&v);
            return Ok(());
        }
        Action::Reload => {
            let body = client.post("/reload").await?;
            let v: serde_json::Value = serde_json::from_slice(&body)
                .context("admin API answered something that is not JSON")?;
            println!("reloaded");
            for w in v["warnings"].as_array().into_iter().flatten() {
                println!("warning: {}", w.as_str().unwrap_or_default());
            }
            return Ok(());
        }
        Action::Drain {
            route,
            wait: true,
            timeout,
        } => {
            act(&client, &route, "drain").await?;
            return wait_drained(&client, &route, timeout).await;
        }
        Action::Drain { route, .. } => (route, "drain"),
        Action::Disable { route } => (route, "disable"),
        Action::Stop { route } => (route, "stop"),
        Action::Enable { route } => (route, "enable"),
    };
    act(&client, &route, verb).await
}

/// POST one state action and print the backend's answer.
async fn act(client: &AdminClient, route: &str, verb: &str) -> anyhow::Result<()> {
    let body = client
        .post(&format!("/api/backends/{route}/{verb}"))
        .await?;
    let b: serde_json::Value =
        serde_json::from_slice(&body).context("admin API answered something that is not JSON")?;
    let remaining = match b["sessions_remaining"].as_u64() {
        Some(0) => " (no sessions left: safe to restart)".to_owned(),
        Some(n) => format!(" ({n} sessions remaining)"),
        None => String::new(),
    };
    println!(
        "{}: {}{}",
        b["route"].as_str().unwrap_or(route),
        b["state"].as_str().unwrap_or("?"),
        remaining
    );
    Ok(())
}

/// Why `drain --wait` did not end with an empty route.
#[derive(Debug, thiserror::Error)]
enum DrainWait {
    #[error("{route}: {left} session{} left after {}", plural(.left), humantime::format_duration(*.waited))]
    TimedOut {
        route: String,
        left: u64,
        waited: Duration,
    },
    #[error("{route} is {state} again (someone changed it while waiting); {left} sessions on it")]
    Reenabled {
        route: String,
        state: String,
        left: u64,
    },
    #[error("{0} is no longer configured (removed by a reload?)")]
    Gone(String),
}

fn plural(n: &u64) -> &'static str {
    if *n == 1 {
        ""
    } else {
        "s"
    }
}

/// Poll the route's sessions until none is left (exit 0), the timeout
/// passes or someone puts the route back into rotation (exit 1 with the
/// count). A failed poll is retried until the timeout: a busy balancer
/// must not fail a rolling restart script.
async fn wait_drained(client: &AdminClient, route: &str, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut shown = None;
    let mut left = None;
    loop {
        match client.get("/api/status").await {
            Ok(body) => {
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .context("admin API answered something that is not JSON")?;
                let b = v["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|b| b["route"] == route)
                    .ok_or_else(|| DrainWait::Gone(route.to_owned()))?;
                let n = b["sessions"]["current"].as_u64().unwrap_or(0);
                left = Some(n);
                let state = b["state"].as_str().unwrap_or("?");
                if state == "active" {
                    Err(DrainWait::Reenabled {
                        route: route.to_owned(),
                        state: state.to_owned(),
                        left: n,
                    })?;
                }
                if n == 0 {
                    println!(
                        "{route}: drained after {:.1}s: safe to restart",
                        start.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                if shown != Some(n) {
                    shown = Some(n);
                    println!("{route}: {n} session{} remaining", plural(&n));
                }
            }
            Err(e) if start.elapsed() < timeout => eprintln!("stickgate: {e} (retrying)"),
            Err(e) => return Err(e.into()),
        }
        if start.elapsed() >= timeout {
            Err(DrainWait::TimedOut {
                route: route.to_owned(),
                left: left.unwrap_or(0),
                waited: timeout,
            })?;
        }
        tokio::time::sleep(DRAIN_POLL.min(timeout.saturating_sub(start.elapsed()))).await;
    }
}

/// Redraw the status table every 2 s until Ctrl-C (exit 0). An unreachable
/// admin API shows as a line in place of the table, and the watch goes on.
async fn watch(client: &AdminClient) -> anyhow::Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let frame = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            frame = client.get("/api/status") => frame,
        };
        if terminal {
            // Home and clear: a plain redraw, no alternate screen.
            print!("\x1b[H\x1b[2J");
        }
        match frame.map_err(anyhow::Error::from).and_then(|body| {
            serde_json::from_slice::<serde_json::Value>(&body)
                .context("admin API answered something that is not JSON")
        }) {
            Ok(v) => print_table(&v),
            Err(e) => println!("stickgate: {e:#}"),
        }
        println!(
            "every {}s, Ctrl-C to stop; {}",
            WATCH_EVERY.as_secs(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
        if !terminal {
            println!();
        }
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
}

fn print_table(v: &serde_json::Value) {
    println!(
        "{:<16} {:<9} {:<6} {:>8} {:>8} {:>9} {:>9} {:>7} {:>8} {:>9}",
        "ROUTE",
        "STATE",
        "HEALTH",
        "SESSIONS",
        "PEAK5MIN",
        "REMAINING",
        "REQUESTS",
        "ERRORS",
        "INFLIGHT",
        "P95_MS"
    );
    for b in v["backends"].as_array().into_iter().flatten() {
        let remaining = match b["sessions_remaining"].as_u64() {
            Some(0) => "drained".to_owned(),
            Some(n) => n.to_string(),
            None => "-".to_owned(),
        };
        let p95 = b["latency_ms"]["p95"]
            .as_f64()
            .map_or("-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "{:<16} {:<9} {:<6} {:>8} {:>8} {:>9} {:>9} {:>7} {:>8} {:>9}",
            b["route"].as_str().unwrap_or("?"),
            b["state"].as_str().unwrap_or("?"),
            b["health"].as_str().unwrap_or("?"),
            b["sessions"]["current"].to_string(),
            b["sessions"]["peak_5min"].to_string(),
            remaining,
            b["requests"].to_string(),
            b["errors"].to_string(),
            b["inflight"].to_string(),
            p95,
        );
    }
    let s = &v["store"];
    let peers = s["peers"].as_array().map_or(0, |p| p.len());
    println!(
        "store: {} ({}, {} sessions, {} peers/endpoints, {} errors); reloads: {} ok, {} failed",
        s["kind"].as_str().unwrap_or("?"),
        if s["healthy"].as_bool() == Some(false) {
            "UNHEALTHY"
        } else {
            "healthy"
        },
        s["sessions"],
        peers,
        s["errors"],
        v["reloads"]["ok"],
        v["reloads"]["failed"],
    );
}
