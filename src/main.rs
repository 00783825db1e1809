//! The `tether` binary: clap subcommands mapped onto library entry points. This is the only
//! place that installs signal handlers, sets up logging and turns errors into exit codes.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tether::config::{self, AccessLogFormat};

#[derive(Parser)]
#[command(name = "tether", version, about = "Sticky-session L7 proxy for WebSocket services")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the reverse proxy.
    Proxy {
        /// Path to the YAML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file: exit 0, or print every problem found and exit 1.
    Check {
        /// Path to the YAML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Proxy { config } => proxy(&config),
    }
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn proxy(path: &Path) -> ExitCode {
    let loaded = match config::load(path) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(loaded.config.access_log.format);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let running = tether::server::start(loaded.config).await?;
        announce(&running.addrs());
        if let Err(e) = running.watch_config() {
            tracing::warn!(error = %format!("{e:#}"), "config file watching is off; reload with SIGHUP or POST /admin/reload");
        }
        serve_until_signalled(&running).await;
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

/// SIGHUP reloads; the first SIGTERM or SIGINT runs the graceful shutdown sequence; a second
/// one exits at once.
async fn serve_until_signalled(running: &tether::server::Running) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers; running until killed");
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = running.reload().await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down");
    let shutdown = running.shutdown();
    tokio::select! {
        finished = shutdown => {
            if !finished {
                tracing::warn!("shutdown timeout reached with work still in flight");
            }
        }
        _ = term.recv() => {
            tracing::warn!("second signal: exiting at once");
            std::process::exit(1);
        }
        _ = int.recv() => {
            tracing::warn!("second signal: exiting at once");
            std::process::exit(1);
        }
    }
}

/// One `listening <name> <addr>` line per bound listener: scripts and tests bind port 0 and
/// read the real port from here.
fn announce(addrs: &[(String, std::net::SocketAddr)]) {
    let mut out = std::io::stdout().lock();
    for (name, addr) in addrs {
        let _ = writeln!(out, "listening {name} {addr}");
    }
    let _ = out.flush();
}

/// Logs go to stderr (stdout carries only the `listening` lines): JSON unless the config asks
/// for text. `RUST_LOG` overrides the default level.
fn init_logging(format: AccessLogFormat) {
    use tracing_subscriber::EnvFilter;
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if format == AccessLogFormat::Off
        && let Ok(directive) = "tether::access=off".parse()
    {
        filter = filter.add_directive(directive);
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == AccessLogFormat::Text {
        builder.init();
    } else {
        builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init();
    }
}
