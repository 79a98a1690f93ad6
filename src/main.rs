//! The `dtun` binary: parse the command line, set up logging and signals, run a role.

use anyhow::Context;
use dtun::cli::Cli;
use dtun::config::{ClientConfig, ServerConfig};

fn main() {
    let cli = Cli::from_env();
    init_logging(cli.verbose);
    if let Err(e) = run(cli) {
        eprintln!("dtun: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // Our own lines at the chosen level; the DTLS crate's chatter only from -vv on.
    let default = if verbose >= 2 {
        level.to_string()
    } else {
        format!("warn,dtun={level}")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        match cli.host.clone() {
            Some(host) => {
                let cfg = ClientConfig::from_cli(&cli, &host)?;
                dtun::client::run(cfg, shutdown_signal()).await?;
            }
            None => {
                let cfg = ServerConfig::from_cli(&cli)?;
                let sock = dtun::server::bind(cfg.listen)?;
                dtun::server::run(sock, cfg, shutdown_signal()).await?;
            }
        }
        Ok(())
    })
}

/// Resolves at the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received, shutting down");
}
