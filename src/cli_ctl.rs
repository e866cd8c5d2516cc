//! `stickgate ctl`: a small client of the admin API.

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// What to ask the admin API.
#[derive(clap::Subcommand)]
pub enum Action {
    /// Backends, states, health and sessions.
    Status {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Run one ctl action against `admin` (e.g. `http://127.0.0.1:9901`).
pub async fn run(admin: &str, action: Action) -> anyhow::Result<()> {
    match action {
        Action::Status { json } => {
            let body = get(admin, "/api/status").await?;
            if json {
                println!("{}", String::from_utf8_lossy(&body));
                return Ok(());
            }
            let v: serde_json::Value = serde_json::from_slice(&body)
                .context("admin API answered something that is not JSON")?;
            print_table(&v);
            Ok(())
        }
    }
}

fn print_table(v: &serde_json::Value) {
    println!(
        "{:<16} {:<9} {:<6} {:>8} {:>8} {:>9} {:>7} {:>7}",
        "ROUTE", "STATE", "HEALTH", "SESSIONS", "PEAK", "REQUESTS", "ERRORS", "INFLIGHT"
    );
    for b in v["backends"].as_array().into_iter().flatten() {
        println!(
            "{:<16} {:<9} {:<6} {:>8} {:>8} {:>9} {:>7} {:>7}",
            b["route"].as_str().unwrap_or("?"),
            b["state"].as_str().unwrap_or("?"),
            b["health"].as_str().unwrap_or("?"),
            b["sessions"]["current"],
            b["sessions"]["peak"],
            b["requests"],
            b["errors"],
            b["inflight"],
        );
    }
    println!(
        "store: {} ({} sessions)",
        v["store"]["kind"].as_str().unwrap_or("?"),
        v["store"]["sessions"]
    );
}

async fn get(admin: &str, path: &str) -> anyhow::Result<Bytes> {
    let base: http::Uri = admin
        .parse()
        .with_context(|| format!("--admin {admin:?} is not a URL like http://127.0.0.1:9901"))?;
    let Some(auth) = base.authority().cloned() else {
        bail!("--admin {admin:?} has no host:port");
    };
    let host = auth.host().trim_matches(['[', ']']).to_owned();
    let port = auth.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| anyhow::anyhow!("admin API at {admin} did not accept a connection within 5s"))?
    .with_context(|| {
        format!(
            "cannot reach the admin API at {admin}; is stickgate running with [admin] listen set?"
        )
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, auth.as_str())
        .body(Empty::<Bytes>::new())?;
    let res = sender
        .send_request(req)
        .await
        .context("admin API request failed")?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "admin API answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    Ok(body)
}
