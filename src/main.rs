//! The `stickgate` command: the binary edge, where errors become one-line
//! messages and exit codes.

#![deny(unsafe_code)]

#[cfg(feature = "mimalloc")]
mod alloc;
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
        /// File holding the admin token (else env STICKGATE_ADMIN_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        action: cli_ctl::Action,
    },
    /// Try it in a minute: the balancer plus two demo nodes, no other software.
    Demo {
        /// Where the balancer listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Failover drill: create sessions, take a node out, check every session
    /// survived. Exit 0 PASS, 1 FAIL, 2 could not run. Plain-http targets only.
    Drill(stickgate::drill::DrillArgs),
    /// Print a stickgate config converted from another balancer's config.
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
}

#[derive(Subcommand)]
enum ImportSource {
    /// Apache mod_jk: workers.properties [uriworkermap.properties]. The
    /// config goes to stdout; what has no equivalent is listed as
    /// `# not carried over:` comments and warnings on stderr.
    Modjk {
        /// mod_jk's workers.properties.
        workers: PathBuf,
        /// mod_jk's uriworkermap.properties (optional).
        uriworkermap: Option<PathBuf>,
        /// The lb (or ajp13) worker to import; default: the first lb worker
        /// in worker.list.
        #[arg(long)]
        worker: Option<String>,
    },
}

/// Logging to stderr, filtered by `STICKGATE_LOG`: a level (`debug`) and
/// per-target levels (`info,stickgate_core::store=debug`). A value that
/// does not parse is named in one line and `info` is used. (A target
/// filter, not tracing's regex-based env-filter: the same directives for
/// levels and targets, at a fraction of the binary size.)
fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = match std::env::var("STICKGATE_LOG") {
        Ok(v) => v
            .parse::<tracing_subscriber::filter::Targets>()
            .unwrap_or_else(|e| {
                eprintln!(
                    "stickgate: STICKGATE_LOG={v:?} is not a log filter ({e}); using \"info\""
                );
                info_filter()
            }),
        Err(_) => info_filter(),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json()).init(),
    }
}

/// Everything at `info` and above.
fn info_filter() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO)
}

fn main() -> ExitCode {
    #[cfg(feature = "mimalloc")]
    alloc::install();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => return exit_2_on_error(run(&config)),
        Command::Ctl {
            admin,
            token_file,
            action,
        } => runtime()
            .and_then(|rt| rt.block_on(cli_ctl::run(&admin, token_file.as_deref(), action))),
        Command::Demo { listen } => runtime().and_then(|rt| rt.block_on(cli_demo::run(listen))),
        Command::Import { source } => import(source),
        Command::Drill(args) => return drill(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stickgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `stickgate run` that could not start (config, bind, takeover) exits 2
/// with one line, so an upgrade script tells "did not start, the old one
/// still serves" from a crash.
fn exit_2_on_error(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stickgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// One thread for every subcommand: none of them needs more (the request
/// path of `run` has threads of its own), and without tokio's
/// multi-threaded scheduler the binary links no libm and starts smaller.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
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

/// Run a drill; the exit code is its verdict (0 PASS, 1 FAIL, 2 not run).
fn drill(args: &stickgate::drill::DrillArgs) -> ExitCode {
    let progress = |line: &str| eprintln!("{line}");
    let result = runtime().and_then(|rt| {
        Ok(rt.block_on(stickgate::drill::run(args, &progress, shutdown_signal()))?)
    });
    match result {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("stickgate drill: cannot print the report: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                print!("{}", report.to_text());
            }
            if report.pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("stickgate drill: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn import(source: ImportSource) -> anyhow::Result<()> {
    let ImportSource::Modjk {
        workers,
        uriworkermap,
        worker,
    } = source;
    let out =
        stickgate::import::import_modjk(&workers, uriworkermap.as_deref(), worker.as_deref())?;
    for n in &out.notes {
        eprintln!("stickgate: warning: {n}");
    }
    print!("{}", out.toml);
    Ok(())
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = stickgate::config::load(path)?;
    // The control plane (admin, health checks, store, reload) only, on
    // the main thread: the request path runs on `server.threads` threads
    // of its own.
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
