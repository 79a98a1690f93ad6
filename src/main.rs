//! The `dtun` binary: parse the command line, set up logging and signals, run a role.

use anyhow::Context;
use dtun::cli::{
    ClientAddArgs, ClientCommand, Command, DeriveArgs, KeyCommand, ReloadArgs, StatusArgs,
};
use dtun::supervise::TaskEnded;

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (mut cli, matches) = dtun::config::file::parse_args(&argv).unwrap_or_else(|e| e.exit());
    if let Some(command) = cli.command.take() {
        return exit_on(run_command(command));
    }
    let loaded = match dtun::config::file::apply(cli, &matches) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("dtun: {e}");
            std::process::exit(1);
        }
    };
    init_logging(loaded.cli.verbose, loaded.cli.log_format);
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
                .map_err(|e| anyhow::anyhow!(e))
                .and_then(outln),
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
        // A reader that stopped reading (`dtun … | head -1`): nothing to say to anyone.
        if e.downcast_ref::<StdoutClosed>().is_some() {
            std::process::exit(0);
        }
        eprintln!("dtun: {e:#}");
        std::process::exit(1);
    }
}

/// Standard output was closed under a subcommand (EPIPE): it ends quietly ([`exit_on`]). The
/// process keeps SIGPIPE ignored (Rust's default, which the server's sockets rely on), so
/// the write fails instead of killing us, and `print!` would panic: subcommands write with
/// [`out`].
#[derive(Debug, thiserror::Error)]
#[error("standard output closed")]
struct StdoutClosed;

/// Writes `text` to standard output, flushed.
fn out(text: impl AsRef<[u8]>) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_ref())
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => anyhow::Error::new(StdoutClosed),
            _ => anyhow::Error::new(e).context("cannot write to standard output"),
        })
}

/// [`out`] of a line.
fn outln(text: impl std::fmt::Display) -> anyhow::Result<()> {
    out(format!("{text}\n"))
}

/// Runs a subcommand (src/cli/commands.rs).
fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Genkey => outln(dtun_proto::keys::genkey()?),
        Command::Key(KeyCommand::Derive(args)) => key_derive(&args),
        Command::Status(args) => status(&args),
        Command::Reload(args) => reload(&args),
        Command::Down => down(),
        Command::Client(ClientCommand::Add(args)) => client_add(&args),
        Command::Completions { shell } => {
            let mut text = Vec::new();
            dtun::ops::docs::completions(shell.into(), &mut text)?;
            out(text)
        }
        Command::Man => {
            let mut text = Vec::new();
            dtun::ops::docs::man(&mut text)?;
            out(text)
        }
    }
}

/// `dtun key derive -key-file MASTER -id ID`: the key a server with `-master-key-file MASTER`
/// expects from client ID.
fn key_derive(args: &DeriveArgs) -> anyhow::Result<()> {
    let (master, source) = match (&args.key_file, &args.key) {
        (Some(p), _) => (dtun::config::read_key_file(p)?, p.display().to_string()),
        (None, Some(k)) => (
            zeroize::Zeroizing::new(k.as_bytes().to_vec()),
            "-key".to_string(),
        ),
        (None, None) => anyhow::bail!(
            "dtun key derive needs the server's master secret: -key-file FILE (or -key, DTUN_KEY)"
        ),
    };
    dtun::config::check_master_key(&master, &source)?;
    outln(dtun_proto::keys::derive(&master, args.id.as_bytes()))
}

/// `dtun client add NAME`: the client goes into the server's config file
/// (`dtun::ops::client_add`), the running server (the instance named after the file) reloads,
/// and the client's config is printed.
fn client_add(args: &ClientAddArgs) -> anyhow::Result<()> {
    let added = dtun::ops::client_add::add(&dtun::ops::client_add::AddRequest {
        name: &args.name,
        config: &args.config,
        host: args.host.as_deref(),
        group: args.group.as_deref(),
    })
    .map_err(|e| anyhow::anyhow!(e))?;
    eprintln!(
        "dtun: client {} added to {} (address {}{})",
        args.name,
        args.config.display(),
        added.addr,
        added
            .key_file
            .as_ref()
            .map(|p| format!(", key in {}", p.display()))
            .unwrap_or_default()
    );
    let instance = args
        .config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match dtun::ops::control::query(&instance, "reload") {
        Ok(summary) => eprint!("{summary}"),
        Err(e) => eprintln!(
            "dtun: the server was not reloaded ({e}); it reads the client at its next start or reload"
        ),
    }
    out(&added.client_toml)?;
    if args.qr {
        outln(dtun::ops::client_add::qr(&added.client_toml).map_err(|e| anyhow::anyhow!(e))?)?;
    }
    Ok(())
}

/// `dtun status [-json] [INSTANCE]`: asks the dtun named INSTANCE in this network namespace
/// over its control socket and prints its answer. Without INSTANCE, as `wg show`: the one
/// running, or all of them (`-json`: an array), or `dtun` when none is.
fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let request = if args.json { "status json" } else { "status" };
    let names = match &args.instance {
        Some(name) => {
            dtun::config::check_name(name)
                .map_err(|e| anyhow::anyhow!("{}", e.replacen("-instance", "dtun status", 1)))?;
            vec![name.clone()]
        }
        None => dtun::ops::control::running(),
    };
    if names.len() < 2 {
        let name = names.first().map_or("dtun", String::as_str);
        return out(dtun::ops::control::query(name, request)?);
    }
    let (mut replies, mut failed) = (Vec::new(), 0);
    for name in &names {
        match dtun::ops::control::query(name, request) {
            Ok(r) => replies.push(r),
            Err(e) => {
                eprintln!("dtun: {e}");
                failed += 1;
            }
        }
    }
    if args.json {
        let items: Vec<&str> = replies.iter().map(|r| r.trim_end()).collect();
        outln(format!("[{}]", items.join(",\n")))?;
    } else {
        out(replies.join("\n"))?;
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} dtuns did not answer", names.len());
    }
    Ok(())
}

/// `dtun reload [INSTANCE]`: as `kill -HUP`, but waits for the outcome and prints it (exit 1
/// when the new configuration was refused and the running one kept). Without INSTANCE, the one
/// running in this network namespace; with several, exit 2 and the list.
fn reload(args: &ReloadArgs) -> anyhow::Result<()> {
    let instance = match &args.instance {
        Some(name) => {
            dtun::config::check_name(name)
                .map_err(|e| anyhow::anyhow!("{}", e.replacen("-instance", "dtun reload", 1)))?;
            name.clone()
        }
        None => match dtun::ops::control::running().as_slice() {
            [] => "dtun".to_string(),
            [one] => one.clone(),
            several => {
                eprintln!(
                    "dtun: {} dtuns run in this network namespace ({}): name the one to reload: dtun reload NAME (e.g. dtun reload {})",
                    several.len(),
                    several.join(", "),
                    several[0]
                );
                std::process::exit(2);
            }
        },
    };
    out(dtun::ops::control::query(&instance, "reload")?)
}

/// `dtun down`: lifts the kill switch and the routes a killed client left in this network
/// namespace, once no live dtun owns its routing (refused with its pid otherwise).
fn down() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let done = rt.block_on(dtun_linux::routes::down()).map_err(|e| match e {
        dtun_linux::routes::RoutesError::Busy { holder } => anyhow::anyhow!(
            "a live dtun owns the routing of this network namespace ({holder}): stop it, and it removes its routes and kill switch itself"
        ),
        e => e.into(),
    })?;
    outln(done)
}

fn init_logging(verbose: u8, format: dtun::cli::LogFormat) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    // Our own lines at the chosen level; other crates' chatter only from -vv on.
    let default = if verbose >= 2 {
        level.to_string()
    } else {
        format!("warn,dtun={level}")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        dtun::cli::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        dtun::cli::LogFormat::Json => logs.json().with_ansi(false).init(),
    }
}

fn run(loaded: dtun::config::file::Loaded, argv: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        match loaded.cli.host.clone() {
            Some(host) => {
                let cfg = loaded.client_config(&host)?;
                dtun_linux::privilege::check()?;
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
                dtun_linux::privilege::check()?;
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
    control: dtun::ops::control::Control,
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
