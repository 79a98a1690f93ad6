//! The command line: the original's single-dash Go-style flags (`-key foo`, `-port=443`) and the
//! usual `--key foo` alike. Parsing only; `config` turns the result into a checked configuration.

mod commands;

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, Parser};
use ipnet::Ipv4Net;
use zeroize::Zeroizing;

pub use commands::{
    ClientAddArgs, ClientCommand, Command, CompletionShell, DeriveArgs, KeyCommand, ReloadArgs,
    StatusArgs,
};

const EXAMPLES: &str = "\
Examples:
  server:  dtun -key-file /etc/dtun/key
  client:  dtun -host vpn.example.com -key-file /etc/dtun/key -id laptop -peernet 192.168.1.0/24 -up /etc/dtun/up.sh
  keys:    dtun genkey > /etc/dtun/key
           dtun key derive -key-file /etc/dtun/master -id laptop   # for a server with -master-key-file
  status:  dtun status [-json] [INSTANCE]   # what the running dtun (-instance, default dtun) does
  down:    dtun down                        # lift a killed client's kill switch and routes
  shell:   dtun completions bash|zsh|fish   # a completion script
           dtun man                         # the man page (roff)

The key can also come from the DTUN_KEY environment variable, so it never shows in `ps`.";

/// A secret given on the command line (`-key`, `DTUN_KEY`): its Debug output is `<redacted>`
/// and its bytes are wiped when it is dropped. (The copies clap and the process's own argument
/// and environment blocks hold are out of our reach: `-key-file` keeps the key out of them.)
#[derive(Clone, PartialEq, Eq)]
pub struct SecretArg(Zeroizing<String>);

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The inner `Zeroizing` wipes the bytes when a `SecretArg` is dropped.
impl zeroize::ZeroizeOnDrop for SecretArg {}

impl std::ops::Deref for SecretArg {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SecretArg {
    fn from(s: &str) -> Self {
        SecretArg(Zeroizing::new(s.to_string()))
    }
}

impl From<String> for SecretArg {
    fn from(s: String) -> Self {
        SecretArg(Zeroizing::new(s))
    }
}

pub(crate) fn parse_secret(s: &str) -> Result<SecretArg, String> {
    Ok(SecretArg::from(s))
}

/// The `-cipher` choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Cipher {
    /// AES-128-GCM first, then AES-128-CCM_8
    Auto,
    /// AES-128-GCM only (dtun peers only)
    Gcm,
    /// AES-128-CCM_8 only (what the original speaks)
    Ccm8,
}

/// The `-log-format` choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text each (with colours on a terminal)
    Text,
    /// One JSON object a line: timestamp, level, target, fields (message among them)
    Json,
}

/// An `on|off` switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "dtun",
    version,
    about = "A point-to-point VPN over DTLS 1.2 with a pre-shared key, compatible with the original Go dtun",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A command instead of running a server or a client
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server to connect to; selects client mode: host, host:port, [IPv6]:port or
    /// udp://host:port; several separated by commas are tried in order
    // This text is clap's help, shown as written: "[IPv6]" is no link, and escaping it would
    // show the backslashes.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long, value_name = "HOST[:PORT],...")]
    pub host: Option<String>,
    /// Pre-shared key (its bytes as written, never hex-decoded)
    #[arg(
        long,
        env = "DTUN_KEY",
        hide_env_values = true,
        conflicts_with = "key_file",
        value_parser = parse_secret
    )]
    pub key: Option<SecretArg>,
    /// Read the pre-shared key from a file (less one trailing newline)
    #[arg(long = "key-file", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// UDP port
    #[arg(long, default_value_t = dtun_proto::consts::DEFAULT_PORT)]
    pub port: u16,
    /// Server: listen on this IP only (default: every IPv4 and IPv6 address)
    #[arg(long)]
    pub listen: Option<IpAddr>,
    /// Client: PSK identity the server knows us by. Server: identity hint it sends
    #[arg(long, default_value = dtun_proto::consts::DEFAULT_ID)]
    pub id: String,
    /// Client: the LAN behind this client that the server should route to it, or `empty`;
    /// several CIDRs (both families) separated by commas go to a dtun server
    #[arg(long, default_value = dtun_proto::consts::PEERNET_EMPTY)]
    pub peernet: String,
    /// Script run once a tunnel is up, with TUN, PEER_IP and LOCAL_IP set, and LOCAL_IP6 and
    /// PEER_IP6 when it carries IPv6 (server: per device)
    #[arg(long, value_name = "SCRIPT")]
    pub up: Option<PathBuf>,
    /// Script run when a tunnel is torn down, with the same environment as -up
    #[arg(long, value_name = "SCRIPT")]
    pub down: Option<PathBuf>,
    /// Keepalive period between dtun peers; 3 missed means the peer is dead; 0 turns it off
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub keepalive: Duration,
    /// Fresh keys between dtun peers this often (time the session carried traffic), by a
    /// hybrid X25519 + ML-KEM-768 exchange: forward secrecy, post-quantum; 0 turns it off
    #[arg(long, value_parser = parse_rekey, default_value = "2m")]
    pub rekey: Duration,
    /// Behave exactly as the original dtun on the wire: AES-128-CCM_8 only, no control messages
    #[arg(long)]
    pub compat: bool,
    /// Cipher: auto offers AES-128-GCM, then AES-128-CCM_8 (what the original speaks); ccm8 or
    /// gcm offers only that one
    #[arg(long, value_enum, default_value = "auto")]
    pub cipher: Cipher,
    /// Client: exit when the session fails or ends instead of reconnecting
    #[arg(long)]
    pub once: bool,
    /// TUN MTU (default: 1500 less the outer IP/UDP and DTLS overhead, so nothing fragments)
    #[arg(long, value_parser = clap::value_parser!(u16).range(576..=1500))]
    pub mtu: Option<u16>,
    /// TUN device name; %d is replaced by the kernel with a free number
    #[arg(long, default_value = dtun_proto::consts::DEFAULT_TUN_NAME)]
    pub name: String,
    /// Server: per-client credentials, one per line: `ID key=KEY [addr=IP] [addr6=IPV6] [lans=CIDR,...]`
    #[arg(long, value_name = "FILE")]
    pub clients: Option<PathBuf>,
    /// Server: derive each id's key as hex(HMAC-SHA256(secret, id)) (see `dtun key derive`)
    #[arg(long = "master-key-file", value_name = "FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Server: with -clients, ids not in the file may still use -key
    #[arg(long = "allow-unlisted")]
    pub allow_unlisted: bool,
    /// Server: tunnel address pool
    #[arg(long, default_value = dtun_proto::consts::DEFAULT_POOL, value_parser = parse_pool)]
    pub pool: Ipv4Net,
    /// Server: IPv6 tunnel addresses for dtun clients: a prefix (each id gets a pair derived
    /// from it), or `off`
    #[arg(long, value_name = "PREFIX|off", default_value = dtun_proto::pool6::DEFAULT_POOL6)]
    pub pool6: String,
    /// Server: at most this many devices (lingering ones included); beyond it, ids not listed
    /// in -clients are refused (listed ids always get in)
    #[arg(long = "max-clients", value_name = "N", default_value_t = dtun_proto::consts::DEFAULT_MAX_CLIENTS)]
    pub max_clients: usize,
    /// Server: how long an id's device is kept after its session ended (e.g. 90s, 5m)
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub linger: Duration,
    /// Client: send through the tunnel `all` (0.0.0.0/1 and 128.0.0.0/1; dtun's own datagrams
    /// keep their path) or only these CIDRs, separated by commas
    #[arg(long, value_name = "all|CIDR,...")]
    pub route: Option<String>,
    /// Client, with -route: keep these on the old path: CIDRs separated by commas, or @FILE
    /// (one CIDR a line, # comments); may be given more than once
    #[arg(long, value_name = "CIDR,...|@FILE", action = ArgAction::Append)]
    pub exclude: Vec<String>,
    /// Client, with -route all: let IPv6 go the old way (by default it goes through the tunnel
    /// when the tunnel carries IPv6, and is blocked when it does not)
    #[arg(long = "allow-ipv6-leak")]
    pub allow_ipv6_leak: bool,
    /// Client, with -route: block what the tunnel carries whenever it is down, also after a
    /// crash, until a clean stop or `dtun down`
    #[arg(long = "kill-switch")]
    pub kill_switch: bool,
    /// Server: DNS servers pushed to dtun clients. Client: DNS servers used while the tunnel is
    /// up (per-link on the TUN through systemd-resolved when it is on the system bus, else
    /// /etc/resolv.conf rewritten in place; restored on exit)
    #[arg(long, value_name = "IP[,IP...]", value_delimiter = ',')]
    pub dns: Vec<IpAddr>,
    /// Client: use the DNS servers the server pushes (its -dns) while the tunnel is up
    #[arg(long = "accept-dns")]
    pub accept_dns: bool,
    /// Client: take tunnel addresses from the server only inside these CIDRs (IPv4 and IPv6,
    /// separated by commas; a family not listed is not taken); a pair inside this host's own
    /// networks is refused anyway
    #[arg(
        long = "accept-pool",
        value_name = "CIDR[,CIDR...]",
        value_delimiter = ',',
        value_parser = dtun_proto::cidr::parse
    )]
    pub accept_pool: Vec<ipnet::IpNet>,
    /// Server: masquerade what clients send out of the server's other interfaces and turn on
    /// IPv4 forwarding while dtun runs (an nftables table dtun-INSTANCE, removed on exit)
    #[arg(long)]
    pub nat: bool,
    /// Server: `on` lets clients reach each other through the server, `off` drops traffic
    /// between two clients' TUNs; unset leaves it to the host
    #[arg(long = "client-to-client", value_enum, value_name = "on|off")]
    pub client_to_client: Option<OnOff>,
    /// Name of this dtun in its network namespace: `dtun status NAME` asks it over the socket
    /// /run/dtun/NETNS.NAME.sock (a server's nftables table is dtun-NAME)
    #[arg(long, value_name = "NAME", default_value = "dtun")]
    pub instance: String,
    /// Serve Prometheus/OpenMetrics counters over HTTP at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9586); off by default
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Bearer token file for -metrics: scrapes must send `Authorization: Bearer TOKEN`;
    /// required when -metrics is not a loopback address
    #[arg(long = "metrics-token", value_name = "FILE")]
    pub metrics_token: Option<PathBuf>,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short = 'v', action = ArgAction::Count)]
    pub verbose: u8,
    /// Log lines as text, or as one JSON object each (for log shippers)
    #[arg(long = "log-format", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Read the settings (and a server's [clients.ID]) from this TOML file; flags given on the
    /// command line override it; the instance name defaults to the file's stem
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration (keys, credentials, CIDRs, files, scripts) and exit: 0 with one
    /// line OK, or 1 with the error; nothing is set up
    #[arg(long)]
    pub check: bool,
}

/// Parses `-pool`: an IPv4 prefix, checked as every CIDR is (`dtun_proto::cidr`).
pub fn parse_pool(s: &str) -> Result<Ipv4Net, String> {
    match dtun_proto::cidr::parse_lan(s).and_then(|_| dtun_proto::cidr::parse(s))? {
        ipnet::IpNet::V4(net) => Ok(net),
        ipnet::IpNet::V6(_) => Err(format!(
            "{s:?} is IPv6: -pool is the IPv4 pool (IPv6 pairs come from -pool6)"
        )),
    }
}

/// A `-rekey` period: 0 (off) or at least a second.
pub fn parse_rekey(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !d.is_zero() && d < Duration::from_secs(1) {
        return Err(format!(
            "-rekey {s}: use at least 1s (or 0 to turn rekeying off)"
        ));
    }
    Ok(d)
}

/// Parses `1500ms`, `90s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s or 5m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Rewrites Go-style `-flag` into `--flag` so clap can parse the original's command lines.
/// A word that is the value of the flag before it is left alone, as are `-v` and `--` onwards.
pub fn normalize_args<I: IntoIterator<Item = OsString>>(args: I) -> Vec<OsString> {
    // The flags are those of the (sub)command the words so far name: `dtun key derive -id x`
    // looks `id` up in `derive`'s arguments.
    let mut cmd = Cli::command();
    let takes_value = |cmd: &clap::Command, name: &str| {
        cmd.get_arguments()
            .any(|a| a.get_long() == Some(name) && a.get_action().takes_values())
    };
    let mut out: Vec<OsString> = Vec::new();
    // A value-taking flag written without `=`: its value is the next word, whatever it looks
    // like, so the two are joined as `--flag=value` (clap would take `-x` for a flag).
    let mut pending: Option<String> = None;
    let mut rest_verbatim = false;
    for (i, arg) in args.into_iter().enumerate() {
        if let Some(flag) = pending.take() {
            let mut joined = OsString::from(format!("{flag}="));
            joined.push(&arg);
            out.push(joined);
            continue;
        }
        let s = arg.to_string_lossy().into_owned();
        if i == 0 || rest_verbatim {
            out.push(arg);
            continue;
        }
        if s == "--" {
            rest_verbatim = true;
            out.push(arg);
            continue;
        }
        if !s.starts_with('-')
            && let Some(sub) = cmd.find_subcommand(&s).cloned()
        {
            cmd = sub;
            out.push(arg);
            continue;
        }
        let long = if let Some(body) = s.strip_prefix("--") {
            Some(body.to_string())
        } else if s.starts_with('-') && s.len() > 2 && !s[1..].bytes().all(|b| b == b'v') {
            Some(s[1..].to_string())
        } else {
            None
        };
        match long {
            Some(body) if !body.contains('=') && takes_value(&cmd, &body) => {
                pending = Some(format!("--{body}"))
            }
            Some(body) => out.push(OsString::from(format!("--{body}"))),
            None => out.push(arg),
        }
    }
    if let Some(flag) = pending {
        out.push(OsString::from(flag));
    }
    out
}

impl Cli {
    /// Parses the process's arguments in either flag style.
    pub fn from_env() -> Cli {
        Cli::parse_from(normalize_args(std::env::args_os()))
    }

    /// Parses already-split arguments in either flag style.
    pub fn try_parse_normalized<I: IntoIterator<Item = OsString>>(
        args: I,
    ) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(normalize_args(args))
    }

    pub fn try_from_args<I: IntoIterator<Item = &'static str>>(
        args: I,
    ) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(normalize_args(args.into_iter().map(OsString::from)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_and_gnu_style_agree() {
        let a = Cli::try_from_args([
            "dtun",
            "-host",
            "1.2.3.4",
            "-key",
            "foo",
            "-id",
            "demo",
            "-port=4443",
        ])
        .unwrap();
        let b = Cli::try_from_args([
            "dtun",
            "--host",
            "1.2.3.4",
            "--key=foo",
            "--id",
            "demo",
            "--port",
            "4443",
        ])
        .unwrap();
        assert_eq!(a.host.as_deref(), Some("1.2.3.4"));
        assert_eq!(a.key.as_deref(), Some("foo"));
        assert_eq!((a.port, b.port), (4443, 4443));
        assert_eq!(a.id, b.id);
    }

    #[test]
    fn defaults_are_the_originals() {
        let c = Cli::try_from_args(["dtun", "-key", "k"]).unwrap();
        assert_eq!(c.port, 443);
        assert_eq!(c.id, "dtun");
        assert_eq!(c.peernet, "empty");
        assert_eq!(c.pool.to_string(), "10.86.0.0/16");
        assert!(c.host.is_none() && c.listen.is_none() && c.up.is_none() && c.mtu.is_none());
        assert_eq!(c.keepalive, Duration::from_secs(10));
        assert!(!c.compat && !c.once);
        let c = Cli::try_from_args(["dtun", "-key", "k", "-compat", "-keepalive", "0", "-once"])
            .unwrap();
        assert!(c.compat && c.once);
        assert_eq!(c.keepalive, Duration::ZERO);
    }

    #[test]
    fn a_value_that_starts_with_a_dash_is_a_value() {
        let c = Cli::try_from_args(["dtun", "-key", "-secret-", "-v"]).unwrap();
        assert_eq!(c.key.as_deref(), Some("-secret-"));
        assert_eq!(c.verbose, 1);
        let c = Cli::try_from_args(["dtun", "-key", "k", "-vv"]).unwrap();
        assert_eq!(c.verbose, 2);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_from_args(["dtun", "-key", "k", "-pool", "10.86.0.0"]).is_err());
        assert!(Cli::try_from_args(["dtun", "-key", "k", "-mtu", "9000"]).is_err());
        assert!(Cli::try_from_args(["dtun", "-key", "k", "-port", "70000"]).is_err());
        assert!(Cli::try_from_args(["dtun", "-key", "k", "-linger", "5y"]).is_err());
        assert!(Cli::try_from_args(["dtun", "-nosuchflag"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("x").is_err());
    }
}
