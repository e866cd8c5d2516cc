//! `stickgate ctl`: a small client of the admin API.

use anyhow::Context;
use std::path::Path;
use stickgate::admin::client::{token_from, AdminClient};

/// What to ask the admin API.
#[derive(clap::Subcommand)]
pub enum Action {
    /// Backends, states, health and sessions.
    Status {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// No new sessions; existing ones go on until they end (rolling restarts).
    Drain { route: String },
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
        Action::Status { json } => {
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
        Action::Drain { route } => (route, "drain"),
        Action::Disable { route } => (route, "disable"),
        Action::Stop { route } => (route, "stop"),
        Action::Enable { route } => (route, "enable"),
    };
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
        b["route"].as_str().unwrap_or(&route),
        b["state"].as_str().unwrap_or("?"),
        remaining
    );
    Ok(())
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
