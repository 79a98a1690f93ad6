//! The `dtun` binary: parse the command line, set up logging and signals, run a role.

use anyhow::Context;
use dtun::cli::Cli;
use dtun::config::{ClientConfig, ServerConfig};
use dtun::supervise::TaskEnded;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("genkey") => {
            return exit_on(
                dtun::keys::genkey()
                    .map_err(Into::into)
                    .map(|k| println!("{k}")),
            );
        }
        Some("key") if args.get(2).map(String::as_str) == Some("derive") => {
            return exit_on(key_derive(&args[3..]));
        }
        Some("completions") => {
            let shell = match args.get(2..).unwrap_or_default() {
                [shell] => Ok(shell.as_str()),
                _ => Err(anyhow::anyhow!(
                    "usage: dtun completions SHELL (SHELL: {})",
                    dtun::ops::docs::SHELLS
                )),
            };
            return exit_on(
                shell.and_then(|s| dtun::ops::docs::completions(s, &mut std::io::stdout())),
            );
        }
        Some("man") if args.len() == 2 => {
            return exit_on(dtun::ops::docs::man(&mut std::io::stdout()));
        }
        _ => {}
    }
    let cli = Cli::from_env();
    init_logging(cli.verbose);
    dtun::supervise::install_panic_hook();
    if let Err(e) = run(cli) {
        if e.downcast_ref::<TaskEnded>().is_some()
            || matches!(
                e.downcast_ref::<dtun::client::ClientError>(),
                Some(dtun::client::ClientError::Internal(_))
            )
            || matches!(
                e.downcast_ref::<dtun::server::ServerError>(),
                Some(dtun::server::ServerError::TaskEnded(_))
            )
        {
            tracing::error!("{e:#}");
            std::process::exit(dtun::supervise::EXIT_INTERNAL);
        }
        eprintln!("dtun: {e:#}");
        std::process::exit(1);
    }
}

fn exit_on(r: anyhow::Result<()>) {
    if let Err(e) = r {
        eprintln!("dtun: {e:#}");
        std::process::exit(1);
    }
}

/// `dtun key derive -key-file MASTER -id ID`: the key a server with `-master-key-file MASTER`
/// expects from client ID.
fn key_derive(rest: &[String]) -> anyhow::Result<()> {
    let args = std::iter::once("dtun".to_string())
        .chain(rest.iter().cloned())
        .map(Into::into);
    let cli = Cli::try_parse_normalized(args)?;
    let master = dtun::config::Key::from_cli(&cli)?;
    let source = match &cli.key_file {
        Some(p) => p.display().to_string(),
        None => "-key".to_string(),
    };
    dtun::config::check_master_key(&master.0, &source)?;
    println!("{}", dtun::keys::derive(&master.0, cli.id.as_bytes()));
    Ok(())
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
                dtun::ops::privilege::check()?;
                // On a worker, not on this thread: the worker that sees a datagram arrive
                // then runs the client loop itself instead of waking this thread (a context
                // switch, often to another CPU, on every packet towards the TUN).
                match tokio::spawn(dtun::client::run(cfg, shutdown_signal())).await {
                    Ok(r) => r?,
                    Err(e) => {
                        return Err(TaskEnded::from_join("client loop", Err::<(), _>(e)).into());
                    }
                }
            }
            None => {
                let cfg = ServerConfig::from_cli(&cli)?;
                dtun::ops::privilege::check()?;
                let sock = dtun::server::bind(cfg.listen)?;
                dtun::server::run(sock, cfg, shutdown_signal()).await?;
            }
        }
        Ok(())
    })
}

/// Resolves at the first SIGINT or SIGTERM. The handlers are installed at once, not at the
/// first poll, so a signal during start-up (after the server made its nftables table, say)
/// still takes the clean shutdown path instead of the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(int) => {}
            _ = wait(term) => {}
        }
        tracing::info!("signal received, shutting down");
        dtun::ops::notify::stopping();
    }
}
