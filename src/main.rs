//! The `stickgate` command: the binary edge, where errors become one-line
//! messages and exit codes.

mod cli_ctl;
mod cli_demo;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "stickgate",
    version,
    about = "Sticky, session-replicating HTTP load balancer for Tomcat-style clusters"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the balancer in the foreground.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (0 = valid).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Talk to a running balancer's admin API.
    Ctl {
        /// Admin API base URL.
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        #[command(subcommand)]
        action: cli_ctl::Action,
    },
    /// Try it in a minute: the balancer plus two demo nodes, no other software.
    Demo {
        /// Where the balancer listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STICKGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
        Command::Ctl { admin, action } => {
            runtime().and_then(|rt| rt.block_on(cli_ctl::run(&admin, action)))
        }
        Command::Demo { listen } => runtime().and_then(|rt| rt.block_on(cli_demo::run(listen))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stickgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = stickgate::config::load(path)?;
    if cfg.store.kind == stickgate::config::StoreKind::Redis {
        let rt = runtime()?;
        if let Err(e) = rt.block_on(stickgate::store::redis::probe(&cfg.store)) {
            eprintln!(
                "{}: warning: store: Redis not reachable now ({e}); stickgate will start anyway, serve from its local cache and use Redis once it answers",
                path.display()
            );
        }
    }
    println!(
        "{}: ok ({} backends, {} listeners, {} TLS listeners)",
        path.display(),
        cfg.backends.len(),
        cfg.server.listen.len(),
        cfg.server.tls_listen.len()
    );
    Ok(())
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = stickgate::config::load(path)?;
    let rt = runtime()?;
    rt.block_on(stickgate::run(
        cfg,
        Some(path.to_path_buf()),
        shutdown_signal(),
    ))?;
    Ok(())
}

/// SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
