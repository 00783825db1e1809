//! The `tether` binary: clap subcommands mapped onto library entry points. This is the only
//! place that turns errors into exit codes.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "Sticky-session L7 proxy for WebSocket services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file: exit 0, or print every problem found and exit 1.
    Check {
        /// Path to the YAML config file.
        #[arg(short, long, value_name = "FILE")]
        config: std::path::PathBuf,
    },
    /// Run the reference STOMP-over-WebSocket backend.
    Backend(tether::backend::BackendArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match tether::config::load(&config) {
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    eprintln!("warning: {warning}");
                }
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Backend(args) => run_backend(args),
    }
}

/// Binds the listeners, prints `listening <name> <addr>` per listener on stdout (so scripts and
/// tests can bind port 0), logs JSON lines to stderr, and maps SIGTERM/SIGINT to a graceful
/// shutdown. Exit 0 after a clean drain.
fn run_backend(args: tether::backend::BackendArgs) -> ExitCode {
    init_json_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let main = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        println!("listening backend {}", main.local_addr()?);
        let internal = match args.internal_listen {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                println!("listening internal {}", l.local_addr()?);
                Some(l)
            }
            None => None,
        };
        let shutdown = shutdown_signal()?;
        let listeners = tether::backend::BackendListeners { main, internal };
        tether::backend::run(args, listeners, shutdown).await?;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT. Handlers are installed before returning so a signal
/// that arrives right after startup is not lost.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// JSON lines on stderr; stdout carries only the `listening` lines. `RUST_LOG` overrides the
/// default `info` filter.
fn init_json_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
