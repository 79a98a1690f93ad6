//! The `dtun` binary: parse the command line, set up logging and signals, run a role.

use anyhow::Context;
use dtun::cli::Cli;
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
        Some("status") => return exit_on(status(&args[2..])),
        Some("reload") => return exit_on(reload(&args[2..])),
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
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (cli, matches) = dtun::ops::config_file::parse_args(&argv).unwrap_or_else(|e| e.exit());
    let loaded = match dtun::ops::config_file::apply(cli, &matches) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("dtun: {e}");
            std::process::exit(1);
        }
    };
    init_logging(loaded.cli.verbose);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    if !loaded.cli.check {
        match dtun::ops::perms::check(&loaded) {
            Ok(warnings) => warnings.iter().for_each(|w| tracing::warn!("{w}")),
            Err(e) => {
                eprintln!("dtun: {e}");
                std::process::exit(1);
            }
        }
    }
    if loaded.cli.check {
        return exit_on(
            dtun::ops::check::check(&loaded)
                .map(|ok| println!("{ok}"))
                .map_err(|e| anyhow::anyhow!(e)),
        );
    }
    dtun::supervise::install_panic_hook();
    if let Err(e) = run(loaded, argv) {
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

/// `dtun status [-json] [INSTANCE]`: asks the dtun named INSTANCE (default `dtun`) in this
/// network namespace over its control socket and prints its answer.
fn status(rest: &[String]) -> anyhow::Result<()> {
    const USAGE: &str = "usage: dtun status [-json] [INSTANCE]";
    let mut json = false;
    let mut instance = None;
    for a in rest {
        match a.as_str() {
            "-json" | "--json" => json = true,
            "-h" | "-help" | "--help" => {
                println!(
                    "{USAGE}\n\nShows what the dtun named INSTANCE (its -instance, default dtun) in this network\nnamespace is doing; -json prints it as JSON (docs/STATUS.md)."
                );
                return Ok(());
            }
            f if f.starts_with('-') => anyhow::bail!("unknown flag {f}: {USAGE}"),
            name if instance.is_none() => instance = Some(name.to_string()),
            extra => anyhow::bail!("one instance at a time, not also {extra:?}: {USAGE}"),
        }
    }
    let instance = instance.unwrap_or_else(|| "dtun".to_string());
    dtun::ops::control::check_name(&instance)
        .map_err(|e| anyhow::anyhow!("{}", e.replacen("-instance", "dtun status", 1)))?;
    let request = if json { "status json" } else { "status" };
    print!("{}", dtun::ops::control::query(&instance, request)?);
    Ok(())
}

/// `dtun reload [INSTANCE]`: as `kill -HUP`, but waits for the outcome and prints it (exit 1
/// when the new configuration was refused and the running one kept).
fn reload(rest: &[String]) -> anyhow::Result<()> {
    const USAGE: &str = "usage: dtun reload [INSTANCE]";
    let instance = match rest {
        [] => "dtun",
        [h] if matches!(h.as_str(), "-h" | "-help" | "--help") => {
            println!(
                "{USAGE}\n\nMakes the dtun server named INSTANCE (its -instance, default dtun) in this network\nnamespace read its configuration again, as SIGHUP does, and prints what changed."
            );
            return Ok(());
        }
        [name] if !name.starts_with('-') => name.as_str(),
        _ => anyhow::bail!("{USAGE}"),
    };
    dtun::ops::control::check_name(instance)
        .map_err(|e| anyhow::anyhow!("{}", e.replacen("-instance", "dtun reload", 1)))?;
    print!("{}", dtun::ops::control::query(instance, "reload")?);
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

fn run(
    loaded: dtun::ops::config_file::Loaded,
    argv: Vec<std::ffi::OsString>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        match loaded.cli.host.clone() {
            Some(host) => {
                let cfg = loaded.client_config(&host)?;
                dtun::ops::privilege::check()?;
                let control = dtun::ops::control::bind(&cfg.instance)?;
                dtun::ops::reload::client_sighup().context("cannot handle SIGHUP")?;
                let board = std::sync::Arc::new(dtun::ops::ClientBoard::new(
                    &cfg.instance,
                    &cfg.id,
                    &cfg.host,
                ));
                let source = dtun::ops::Source::Client(std::sync::Arc::clone(&board));
                let _ops = ops(control, &loaded.cli, source, None).await?;
                // On a worker, not on this thread: the worker that sees a datagram arrive
                // then runs the client loop itself instead of waking this thread (a context
                // switch, often to another CPU, on every packet towards the TUN).
                let client = dtun::client::run_with(cfg, board, shutdown_signal());
                match tokio::spawn(client).await {
                    Ok(r) => r?,
                    Err(e) => {
                        return Err(TaskEnded::from_join("client loop", Err::<(), _>(e)).into());
                    }
                }
            }
            None => {
                let cfg = loaded.server_config()?;
                dtun::ops::privilege::check()?;
                let control = dtun::ops::control::bind(&cfg.instance)?;
                let (reload, reloads) = dtun::ops::reload::ReloadHandle::new(argv, &cfg);
                dtun::ops::reload::on_sighup(reload.clone()).context("cannot handle SIGHUP")?;
                let (source, status) = dtun::ops::Source::server();
                let sock = dtun::server::bind(cfg.listen)?;
                let _ops = ops(control, &loaded.cli, source, Some(reload.clone())).await?;
                dtun::server::run_with(sock, cfg, Some(status), reloads, shutdown_signal()).await?;
            }
        }
        Ok(())
    })
}

/// Starts the status socket (already bound) and `-metrics` (if asked for); they stop when the
/// returned handle is dropped.
async fn ops(
    control: tokio::net::UnixListener,
    cli: &dtun::cli::Cli,
    source: dtun::ops::Source,
    reload: Option<dtun::ops::reload::ReloadHandle>,
) -> anyhow::Result<AbortOnDrop> {
    let token = dtun::ops::metrics::access(cli.metrics, cli.metrics_token.as_deref())?;
    let metrics = match cli.metrics {
        Some(addr) => Some((dtun::ops::metrics::bind(addr).await?, token)),
        None => None,
    };
    Ok(AbortOnDrop(tokio::spawn(dtun::ops::serve(
        control, metrics, source, reload,
    ))))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
