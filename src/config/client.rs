//! The client's configuration: its key and id, the server to reach, `-peernet` (split into the
//! peernet message and the LANs beyond it), `-route`/`-exclude`, DNS.

use std::net::{IpAddr, SocketAddr};

use super::hosts::{Endpoint, parse_hosts};
use super::{Common, ConfigError, Key, TunSettings, dns_servers};
use crate::cli::Cli;
use dtun_proto::proto::Peernet;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub key: Key,
    /// `-host` as given (for messages and status).
    pub host: String,
    pub port: u16,
    /// `-host` parsed: the servers, tried in order.
    pub servers: Vec<Endpoint>,
    /// Our PSK identity.
    pub id: String,
    pub peernet: Peernet,
    /// `-peernet` beyond the one in the peernet message (several CIDRs): sent to a dtun
    /// server in a Lans control message, never to an original.
    pub lans: Vec<ipnet::IpNet>,
    pub tun: TunSettings,
    pub common: Common,
    /// Exit at the first failure or end of session instead of reconnecting.
    pub once: bool,
    /// -route, -exclude, -allow-ipv6-leak, -kill-switch.
    pub routes: dtun_linux::routes::RouteSpec,
    /// `-dns`: our own DNS servers while the tunnel is up.
    pub dns: Vec<IpAddr>,
    /// `-accept-dns`: take the servers the server pushes (see [`ClientConfig::dns_policy`]).
    pub accept_dns: bool,
    /// `-accept-pool`: the only prefixes the server's address pairs may come from (empty: any
    /// pair that passes the checks of src/client/pair.rs).
    pub accept_pool: Vec<ipnet::IpNet>,
    /// `-instance`, else the `-config` file's stem, else `dtun` (see `config::file`); names
    /// the control socket `/run/dtun/NETNS.INSTANCE.sock` (`ops::control`).
    pub instance: String,
}

impl ClientConfig {
    /// Whether a session of `suite` sends connection ID records (RFC 9146) once the server
    /// agrees to roam: AES-GCM, rekeying on, not `-compat` (what `ClientSession` offers).
    pub fn sends_cid(&self, suite: dtun_proto::record::Suite) -> bool {
        suite == dtun_proto::record::Suite::Aes128Gcm
            && !self.common.compat
            && self.common.rekey.is_some()
    }

    /// The TUN's MTU for a session of `suite` with `server` ([`TunSettings::client_mtu_for`]).
    pub fn mtu_for(&self, suite: dtun_proto::record::Suite, server: SocketAddr) -> u32 {
        self.tun
            .client_mtu_for(suite, server, self.sends_cid(suite))
    }

    pub fn from_cli(cli: &Cli, host: &str) -> Result<Self, ConfigError> {
        if dtun_proto::keys::valid_identity(cli.id.as_bytes()).is_none() {
            return Err(ConfigError::Id);
        }
        Ok(ClientConfig {
            key: Key::from_cli(cli)?,
            host: host.to_string(),
            port: cli.port,
            servers: parse_hosts(host, cli.port).map_err(ConfigError::Host)?,
            id: cli.id.clone(),
            peernet: split_peernet(&cli.peernet)?.0,
            lans: split_peernet(&cli.peernet)?.1,
            tun: TunSettings::from_cli(cli)?,
            common: Common::from_cli(cli)?,
            once: cli.once,
            routes: dtun_linux::routes::RouteSpec::from_flags(
                cli.route.as_deref(),
                &cli.exclude,
                cli.allow_ipv6_leak,
                cli.kill_switch,
            )
            .map_err(ConfigError::Routes)?,
            dns: dns_servers(cli)?,
            accept_dns: cli.accept_dns,
            accept_pool: cli.accept_pool.clone(),
            instance: {
                crate::config::check_name(&cli.instance).map_err(ConfigError::Instance)?;
                cli.instance.clone()
            },
        })
    }

    /// Resolves server `i` of `-host` (a name or an IP literal) to an address.
    pub async fn server_addr(&self, i: usize) -> Result<SocketAddr, ConfigError> {
        let e = &self.servers[i % self.servers.len()];
        let err = |why: String| ConfigError::Resolve {
            host: e.host.clone(),
            port: e.port,
            why,
        };
        let mut addrs = tokio::net::lookup_host((e.host.as_str(), e.port))
            .await
            .map_err(|e| err(e.to_string()))?;
        addrs.next().ok_or_else(|| err("no address found".into()))
    }
}

/// `-peernet`: `empty`, one CIDR (sent as it is, as the original does), or several separated
/// by commas: then the peernet message carries the first IPv4 one (or `empty`) and the rest go
/// to a dtun server in a Lans control message.
pub fn split_peernet(s: &str) -> Result<(Peernet, Vec<ipnet::IpNet>), ConfigError> {
    // Host bits are cleared, as the original's Go does (`-peernet 192.168.1.1/24`).
    let one = |part: &str| -> Result<Peernet, ConfigError> {
        let part = part.trim();
        if part == dtun_proto::consts::PEERNET_EMPTY {
            return Ok(Peernet::Empty);
        }
        dtun_proto::cidr::parse_lan(part)
            .map(Peernet::Net)
            .map_err(ConfigError::Peernet)
    };
    if !s.contains(',') {
        return Ok((one(s)?, vec![]));
    }
    let mut nets = Vec::new();
    for part in s.split(',') {
        match one(part)? {
            Peernet::Net(n) if !nets.contains(&n) => nets.push(n),
            _ => {}
        }
    }
    if nets.len() > 1 + dtun_proto::proto::MAX_LANS {
        return Err(ConfigError::Peernet(format!(
            "{} CIDRs (at most {})",
            nets.len(),
            1 + dtun_proto::proto::MAX_LANS
        )));
    }
    let first = nets.iter().position(|n| n.addr().is_ipv4());
    let peernet = first.map_or(Peernet::Empty, |i| Peernet::Net(nets.remove(i)));
    Ok((peernet, nets))
}

impl ClientConfig {
    /// Whether the client takes the DNS servers the server pushes (its own `-dns` wins anyway).
    /// A split-routing client does not: only `-accept-dns` or `-route all`.
    pub fn uses_pushed_dns(&self) -> bool {
        self.accept_dns || self.routes.all
    }

    /// What the DNS plumbing needs to know of this configuration.
    pub fn dns_policy(&self) -> dtun_linux::dns::DnsPolicy {
        dtun_linux::dns::DnsPolicy {
            own: self.dns.clone(),
            accept_pushed: self.uses_pushed_dns(),
            route_all: self.routes.all,
            compat: self.common.compat,
        }
    }
}
