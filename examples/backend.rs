//! Tomcat-like demo backend for trying stickgate by hand.
//!
//! `cargo run --release --example backend -- --listen 127.0.0.1:8081 --route tomcat1`
//!
//! Prints `backend <route> listening on <addr>` to stderr once bound (with
//! the real port when `--listen` uses port 0) and serves until killed.

use std::process::ExitCode;

use clap::Parser;
use stickgate::demo::node::{serve, NodeConfig};
use tokio::net::TcpListener;

/// Command line of the demo backend; mirrors the Tomcat settings a sticky
/// balancer cares about.
#[derive(Debug, Parser)]
#[command(about = "Tomcat-like demo backend node for stickgate")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: String,
    /// jvmRoute appended to session ids, e.g. tomcat1.
    #[arg(long)]
    route: String,
    /// Keep sessions in this Redis (e.g. redis://127.0.0.1:6379) to act as a
    /// session-replicating cluster.
    #[arg(long)]
    redis: Option<String>,
    /// Issue session ids without the ".route" suffix.
    #[arg(long)]
    no_suffix: bool,
    /// Session cookie name.
    #[arg(long, default_value = "JSESSIONID")]
    cookie: String,
    /// Stop like Tomcat on SIGTERM: close idle keep-alive connections,
    /// finish in-flight requests, reset new connections this many ms after
    /// accepting them, then exit (rolling-restart drills).
    #[arg(long)]
    graceful_stop_ms: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    // RUST_LOG as target=level directives; warnings only by default.
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::Targets>().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new().with_default(tracing::Level::WARN)
        });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(level)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    let args = Args::parse();
    let cfg = NodeConfig {
        route: args.route,
        cookie: args.cookie,
        no_suffix: args.no_suffix,
        redis_url: args.redis,
        shared: None,
        graceful_stop: args.graceful_stop_ms.map(std::time::Duration::from_millis),
    };
    if let Err(err) = cfg.validate() {
        return fail(&err.to_string());
    }
    let listener = match TcpListener::bind(&args.listen).await {
        Ok(listener) => listener,
        Err(err) => return fail(&format!("cannot listen on {}: {err}", args.listen)),
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(err) => return fail(&format!("cannot read bound address: {err}")),
    };
    eprintln!("backend {} listening on {addr}", cfg.route);
    match serve(listener, cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err.to_string()),
    }
}

/// Prints a one-line error and yields a failing exit code.
fn fail(message: &str) -> ExitCode {
    eprintln!("backend: {message}");
    ExitCode::FAILURE
}
