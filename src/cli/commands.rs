//! dtun's subcommands (`dtun genkey`, `dtun key derive`, `dtun status`, `dtun reload`,
//! `dtun down`, `dtun completions`, `dtun man`): their arguments, parsed by clap like the role's flags, so
//! each has its own `--help`, unknown arguments are refused, and completions and the man page
//! list them. Running them is `main.rs`'s part.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::{SecretArg, parse_secret};

/// What `dtun` does when its first word is a command rather than a flag.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print a random 256-bit key as 64 hex characters (use it as -key-file's content)
    Genkey,
    /// Key tools for a server with -master-key-file
    #[command(subcommand)]
    Key(KeyCommand),
    /// Show what a running dtun in this network namespace does
    Status(StatusArgs),
    /// Make a running dtun read its configuration again (as SIGHUP does) and print what changed;
    /// exits 1 when the new configuration is refused and the running one kept
    Reload(ReloadArgs),
    /// Manage a server's clients
    #[command(subcommand)]
    Client(ClientCommand),
    /// Remove what a killed client left in this network namespace: its -kill-switch (which
    /// blocks what the tunnel carried) and its -route rules and routes; refused while a dtun
    /// runs with -route here (stopping that one cleanly removes them)
    Down,
    /// Print a completion script for a shell
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the man page (roff)
    Man,
}

/// `dtun key …`.
#[derive(Debug, Clone, Subcommand)]
pub enum KeyCommand {
    /// Print the key a server with -master-key-file expects from one client id
    Derive(DeriveArgs),
}

/// `dtun key derive`.
#[derive(Debug, Clone, Args)]
pub struct DeriveArgs {
    /// The server's master secret, read from this file (less one trailing newline)
    #[arg(long = "key-file", value_name = "PATH", conflicts_with = "key")]
    pub key_file: Option<PathBuf>,
    /// The server's master secret itself
    #[arg(long, env = "DTUN_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub key: Option<SecretArg>,
    /// The client's id (its -id)
    #[arg(long)]
    pub id: String,
}

/// `dtun status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Print JSON (its fields: docs/STATUS.md)
    #[arg(long)]
    pub json: bool,
    /// The dtun to ask: its -instance (a config file's stem); default dtun
    #[arg(value_name = "INSTANCE")]
    pub instance: Option<String>,
}

/// `dtun reload`.
#[derive(Debug, Clone, Args)]
pub struct ReloadArgs {
    /// The dtun to reload: its -instance (a config file's stem); default dtun
    #[arg(value_name = "INSTANCE")]
    pub instance: Option<String>,
}

/// The shells `dtun completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl From<CompletionShell> for clap_complete::Shell {
    fn from(s: CompletionShell) -> Self {
        match s {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// `dtun client …`.
#[derive(Debug, Clone, Subcommand)]
pub enum ClientCommand {
    /// Add a client to the server's config file: a fresh key (or one derived from
    /// -master-key-file) and a fixed address; reloads the running server and prints the
    /// client's config
    Add(ClientAddArgs),
}

/// `dtun client add`.
#[derive(Debug, Clone, Args)]
pub struct ClientAddArgs {
    /// The new client's id
    pub name: String,
    /// The server's config file
    #[arg(long, value_name = "FILE", default_value = "/etc/dtun/server.toml")]
    pub config: PathBuf,
    /// The server as clients reach it (host, host:port), for the printed config
    #[arg(long, value_name = "HOST[:PORT]")]
    pub host: Option<String>,
    /// The client's isolation group
    #[arg(long)]
    pub group: Option<String>,
    /// Also print the client's config as a QR code
    #[arg(long)]
    pub qr: bool,
}
