//! `-config FILE`: every flag as a TOML key (`key_file`, `max_clients`, `client_to_client =
//! "on"`, lists as arrays), and a server's clients as `[clients.ID]` tables with the fields of a
//! credentials line. Flags given on the command line (or DTUN_KEY) override the file; a
//! relative path in the file is relative to the file's directory. Two names differ from the
//! flags: `clients` holds the `[clients.ID]` tables, so the `-clients FILE` flag is
//! `clients_file`; and `-config`/`-check` have no key.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use toml::Spanned;
use zeroize::Zeroizing;

use super::values;
use crate::cli::{Cipher, Cli, LogFormat, OnOff, SecretArg};
use crate::config::{ClientConfig, ConfigError, ServerConfig};
use dtun_proto::keys::Client;

/// The instance name when neither `-instance` nor `-config` gives one.
pub const DEFAULT_INSTANCE: &str = "dtun";

/// The file, as written. Every value is checked as it is read (`values`).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default, deserialize_with = "values::hosts")]
    host: Option<String>,
    #[serde(default, deserialize_with = "values::secret")]
    key: Option<SecretArg>,
    key_file: Option<Spanned<PathBuf>>,
    port: Option<u16>,
    listen: Option<IpAddr>,
    id: Option<String>,
    #[serde(default, deserialize_with = "values::peernet")]
    peernet: Option<String>,
    up: Option<PathBuf>,
    down: Option<PathBuf>,
    #[serde(default, deserialize_with = "values::duration")]
    keepalive: Option<Duration>,
    #[serde(default, deserialize_with = "values::duration")]
    rekey: Option<Duration>,
    compat: Option<bool>,
    #[serde(default, deserialize_with = "values::choice")]
    cipher: Option<Cipher>,
    once: Option<bool>,
    #[serde(default, deserialize_with = "values::mtu")]
    mtu: Option<u16>,
    name: Option<String>,
    clients_file: Option<PathBuf>,
    #[serde(default)]
    clients: BTreeMap<Spanned<String>, FileClient>,
    master_key_file: Option<PathBuf>,
    allow_unlisted: Option<bool>,
    #[serde(default, deserialize_with = "values::pool")]
    pool: Option<Ipv4Net>,
    #[serde(default, deserialize_with = "values::pool6")]
    pool6: Option<String>,
    max_clients: Option<usize>,
    #[serde(default, deserialize_with = "values::duration")]
    linger: Option<Duration>,
    #[serde(default, deserialize_with = "values::route")]
    route: Option<String>,
    #[serde(default, deserialize_with = "values::exclude")]
    exclude: Option<Vec<String>>,
    allow_ipv6_leak: Option<bool>,
    kill_switch: Option<bool>,
    #[serde(default, deserialize_with = "values::addresses")]
    dns: Option<Vec<IpAddr>>,
    accept_dns: Option<bool>,
    #[serde(default, deserialize_with = "values::cidrs")]
    accept_pool: Option<Vec<IpNet>>,
    nat: Option<bool>,
    #[serde(default, deserialize_with = "values::choice")]
    client_to_client: Option<OnOff>,
    #[serde(default, deserialize_with = "values::instance")]
    instance: Option<String>,
    verbose: Option<u8>,
    #[serde(default, deserialize_with = "values::choice")]
    log_format: Option<LogFormat>,
    metrics: Option<std::net::SocketAddr>,
    metrics_token: Option<PathBuf>,
}

/// `[clients.ID]`: the fields of a credentials file line (`keys::parse_credentials`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClient {
    #[serde(default, deserialize_with = "values::secret")]
    key: Option<SecretArg>,
    key_file: Option<PathBuf>,
    addr: Option<Ipv4Addr>,
    addr6: Option<std::net::Ipv6Addr>,
    #[serde(default, deserialize_with = "values::lans")]
    lans: Option<Vec<IpNet>>,
    #[serde(default, deserialize_with = "values::group")]
    group: Option<String>,
    /// Turned off without being deleted: refused whatever key it brings; a reload ends its
    /// session (Close "revoked").
    #[serde(default)]
    disabled: bool,
}

/// The command line with the config file folded in.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub cli: Cli,
    /// The file's `[clients.ID]` (server only).
    pub clients: HashMap<String, Client>,
    /// The `-config` file, if any.
    pub file: Option<PathBuf>,
    /// The line of each `[clients.ID]` in it, for messages.
    pub client_lines: HashMap<String, usize>,
    /// Secret files read from the config file (itself when it holds keys, `[clients.ID]
    /// key_file`s), for [`crate::ops::perms::check`].
    pub secrets: Vec<PathBuf>,
    /// Warnings found before logging was set up: the caller logs them.
    pub warnings: Vec<String>,
    /// The file's `[clients.ID]` with `disabled = true` (still listed: their addresses stay
    /// theirs).
    pub disabled: std::collections::BTreeSet<String>,
}

/// Parses the command line (either flag style) keeping what clap knows of where each value
/// came from.
pub fn parse_args(args: &[OsString]) -> Result<(Cli, ArgMatches), clap::Error> {
    let m =
        Cli::command().try_get_matches_from(crate::cli::normalize_args(args.iter().cloned()))?;
    let cli = Cli::from_arg_matches(&m)?;
    Ok((cli, m))
}

/// The command line `args` with its `-config` file, if any, read and folded in: the whole
/// configuration a start (or a reload) works from.
pub fn load(args: &[OsString]) -> Result<Loaded, String> {
    let (cli, m) = parse_args(args).map_err(|e| e.to_string().trim().to_string())?;
    apply(cli, &m)
}

/// Folds the `-config` file (if any) into `cli`; `m` tells which flags were given.
pub fn apply(mut cli: Cli, m: &ArgMatches) -> Result<Loaded, String> {
    let given = |id: &str| {
        matches!(
            m.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let Some(path) = cli.config.clone() else {
        return Ok(Loaded {
            cli,
            clients: HashMap::new(),
            file: None,
            client_lines: HashMap::new(),
            secrets: Vec::new(),
            warnings: Vec::new(),
            disabled: Default::default(),
        });
    };
    let text = read_text(&path)?;
    let mut file: FileConfig =
        toml::from_str(&text).map_err(|e| values::describe(&path, &text, &e))?;
    let at = FileAt::new(&path, &text);
    let mut secrets = Vec::new();
    if file.key.is_some() || file.clients.values().any(|c| c.key.is_some()) {
        secrets.push(path.clone());
    }
    let table = std::mem::take(&mut file.clients);
    take_flags(&mut cli, file, &given, &at)?;
    let mut loaded = Loaded {
        cli,
        clients: HashMap::new(),
        file: None,
        client_lines: HashMap::new(),
        secrets,
        warnings: Vec::new(),
        disabled: Default::default(),
    };
    read_clients(table, &at, &mut loaded)?;
    loaded.file = Some(path.clone());
    Ok(loaded)
}

/// Where the file is and what it says, for relative paths and messages with line numbers.
struct FileAt<'a> {
    path: &'a Path,
    text: &'a str,
    dir: PathBuf,
}

impl<'a> FileAt<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        FileAt { path, text, dir }
    }

    /// A path in the file: relative to the file's directory.
    fn rel(&self, p: PathBuf) -> PathBuf {
        if p.is_relative() { self.dir.join(p) } else { p }
    }

    /// The line of a span of the file.
    fn line(&self, span: std::ops::Range<usize>) -> usize {
        values::line_of(self.text, span.start)
    }
}

/// The file's text, or an error that says how to make it readable.
fn read_text(path: &Path) -> Result<Zeroizing<String>, String> {
    Ok(Zeroizing::new(std::fs::read_to_string(path).map_err(
        |e| {
            let hint = match dtun_linux::privilege::unreadable_hint(&e) {
                "" => ": check the path given to -config",
                hint => hint,
            };
            format!(
                "cannot read config file {}: {e}{}",
                path.display(),
                hint.replace("FILE", &path.display().to_string())
            )
        },
    )?))
}

/// The file's flags, each where the command line (or DTUN_KEY) did not give it.
fn take_flags(
    cli: &mut Cli,
    file: FileConfig,
    given: &dyn Fn(&str) -> bool,
    at: &FileAt,
) -> Result<(), String> {
    let path = at.path;
    let rel = |p: PathBuf| at.rel(p);
    // The key: -key, -key-file or DTUN_KEY on the command line replace the file's pair.
    if !given("key") && !given("key_file") {
        if let (Some(_), Some(kf)) = (&file.key, &file.key_file) {
            return Err(format!(
                "{} line {}: key key_file: key and key_file are both set: keep one",
                path.display(),
                at.line(kf.span())
            ));
        }
        if let Some(k) = file.key {
            cli.key = Some(k);
        }
        if let Some(kf) = file.key_file {
            cli.key_file = Some(rel(kf.into_inner()));
        }
    }
    macro_rules! take {
        ($($field:ident),* $(,)?) => {$(
            if !given(stringify!($field)) && let Some(v) = file.$field {
                cli.$field = v.into();
            }
        )*};
    }
    take!(
        port,
        id,
        name,
        keepalive,
        rekey,
        compat,
        cipher,
        once,
        allow_unlisted,
        pool,
        max_clients
    );
    take!(
        linger,
        allow_ipv6_leak,
        accept_dns,
        nat,
        verbose,
        peernet,
        log_format
    );
    take!(kill_switch);
    take!(host, listen, mtu, route, client_to_client, metrics, pool6);
    if !given("dns")
        && let Some(v) = file.dns
    {
        cli.dns = v;
    }
    if !given("accept_pool")
        && let Some(v) = file.accept_pool
    {
        cli.accept_pool = v;
    }
    if !given("exclude")
        && let Some(v) = file.exclude
    {
        cli.exclude = v
            .into_iter()
            .map(|e| match e.strip_prefix('@') {
                Some(p) => format!("@{}", rel(PathBuf::from(p)).display()),
                None => e,
            })
            .collect();
    }
    if !given("up")
        && let Some(p) = file.up
    {
        cli.up = Some(rel(p));
    }
    if !given("down")
        && let Some(p) = file.down
    {
        cli.down = Some(rel(p));
    }
    if !given("clients")
        && let Some(p) = file.clients_file
    {
        cli.clients = Some(rel(p));
    }
    if !given("master_key_file")
        && let Some(p) = file.master_key_file
    {
        cli.master_key_file = Some(rel(p));
    }
    if !given("metrics_token")
        && let Some(p) = file.metrics_token
    {
        cli.metrics_token = Some(rel(p));
    }
    if !given("instance") {
        cli.instance = match file.instance {
            Some(i) => i,
            None => instance_from_stem(path)?,
        };
    }
    Ok(())
}

/// The file's `[clients.ID]` tables: each id checked, its key read (or derived from the master
/// secret), its line kept for messages.
fn read_clients(
    table: BTreeMap<Spanned<String>, FileClient>,
    at: &FileAt,
    loaded: &mut Loaded,
) -> Result<(), String> {
    let path = at.path;
    let rel = |p: PathBuf| at.rel(p);
    for (id, c) in table {
        let line = at.line(id.span());
        let id = id.into_inner();
        loaded.client_lines.insert(id.clone(), line);
        let err = |why: String| format!("{} line {line}: [clients.{id}]: {why}", path.display());
        if dtun_proto::keys::valid_identity(id.as_bytes()).is_none() {
            return Err(err(
                "an id is 1 to 128 bytes of UTF-8 without control characters".into(),
            ));
        }
        let key = match (c.key, c.key_file) {
            (Some(k), None) => Zeroizing::new(k.as_bytes().to_vec()),
            (None, Some(kf)) => {
                let kf = rel(kf);
                loaded.secrets.push(kf.clone());
                let k = crate::config::read_key_file(&kf).map_err(|e| err(e.to_string()))?;
                if k.is_empty() {
                    return Err(err(format!("key file {} is empty", kf.display())));
                }
                k
            }
            (Some(_), Some(_)) => {
                return Err(err("key and key_file are both set: keep one".into()));
            }
            // A listed id of a server with a master secret: its key is derived, as an unlisted
            // id's would be (`dtun client add` lists ids this way, for their addresses).
            (None, None) => match &loaded.cli.master_key_file {
                Some(master) => {
                    let m = crate::config::read_key_file(master).map_err(|e| err(e.to_string()))?;
                    Zeroizing::new(dtun_proto::keys::derive(&m, id.as_bytes()).into_bytes())
                }
                None => {
                    return Err(err(
                        "no key: give key = \"…\" or key_file = \"…\" (or the server a master_key_file)"
                            .into(),
                    ));
                }
            },
        };
        loaded.warnings.extend(dtun_proto::keys::short_key(
            &key,
            &format!("the key of {id} in {}", path.display()),
        ));
        if c.disabled {
            loaded.disabled.insert(id.clone());
        }
        loaded.clients.insert(
            id,
            Client {
                key,
                addr: c.addr,
                addr6: c.addr6,
                lans: c.lans,
                group: c.group,
            },
        );
    }
    Ok(())
}

/// `/etc/dtun/server.toml` → `server` (as `wg-quick@wg0`).
fn instance_from_stem(path: &Path) -> Result<String, String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    dtun_linux::nft::check_instance(&stem).map_err(|_| {
        format!(
            "the config file's name {stem:?} is not an instance name (1 to 32 letters, digits, '-' or '_'): rename the file, or set instance = \"NAME\" in it or -instance NAME"
        )
    })?;
    Ok(stem)
}

impl Loaded {
    /// The server's checked configuration.
    pub fn server_config(&self) -> Result<ServerConfig, ConfigError> {
        let mut cfg = ServerConfig::from_cli_with(&self.cli, self.clients.clone())?;
        cfg.keys.disabled = self.disabled.clone();
        Ok(cfg)
    }

    /// The client's checked configuration (`-host` given).
    pub fn client_config(&self, host: &str) -> Result<ClientConfig, ConfigError> {
        if !self.clients.is_empty() {
            return Err(ConfigError::ConfigFile(format!(
                "{}: [clients.ID] tables are a server's; this configuration has a host, so it is a client's: remove them (or the host)",
                self.file
                    .as_deref()
                    .unwrap_or(Path::new("-config"))
                    .display()
            )));
        }
        ClientConfig::from_cli(&self.cli, host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag has a key of the same name (`-` as `_`); `-clients` is `clients_file`.
    #[test]
    fn every_flag_has_a_key() {
        for key in crate::ops::docs::config_keys() {
            let text = format!("{key} = 0\n");
            if let Err(e) = toml::from_str::<FileConfig>(&text) {
                assert!(!e.message().contains("unknown field"), "{key}: {e}");
            }
        }
    }
}
