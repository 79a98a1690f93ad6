//! The client's configuration: its key and id, the server to reach, `-peernet` (split into the
//! peernet message and the LANs beyond it), `-route`/`-exclude`, DNS.

use std::net::{IpAddr, SocketAddr};

use super::{Common, ConfigError, Key, TunSettings, dns_servers};
use crate::cli::Cli;
use crate::proto::Peernet;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub key: Key,
    pub host: String,
    pub port: u16,
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
    /// -route, -exclude, -allow-ipv6-leak.
    pub routes: crate::routes::RouteSpec,
    /// `-dns`: our own DNS servers while the tunnel is up.
    pub dns: Vec<IpAddr>,
    /// `-accept-dns`: take the servers the server pushes (see [`crate::dns::use_pushed_dns`]).
    pub accept_dns: bool,
    /// `-instance`, else the `-config` file's stem, else `dtun` (see `ops::config_file`); names
    /// the control socket `/run/dtun/NETNS.INSTANCE.sock` (`ops::control`).
    pub instance: String,
}

impl ClientConfig {
    pub fn from_cli(cli: &Cli, host: &str) -> Result<Self, ConfigError> {
        if crate::keys::valid_identity(cli.id.as_bytes()).is_none() {
            return Err(ConfigError::Id);
        }
        Ok(ClientConfig {
            key: Key::from_cli(cli)?,
            host: host.to_string(),
            port: cli.port,
            id: cli.id.clone(),
            peernet: split_peernet(&cli.peernet)?.0,
            lans: split_peernet(&cli.peernet)?.1,
            tun: TunSettings::from_cli(cli)?,
            common: Common::from_cli(cli)?,
            once: cli.once,
            routes: crate::routes::RouteSpec::from_flags(
                cli.route.as_deref(),
                &cli.exclude,
                cli.allow_ipv6_leak,
            )
            .map_err(ConfigError::Routes)?,
            dns: dns_servers(cli)?,
            accept_dns: cli.accept_dns,
            instance: {
                crate::ops::control::check_name(&cli.instance).map_err(ConfigError::Instance)?;
                cli.instance.clone()
            },
        })
    }

    /// Resolves -host (a name or an IP literal) to the server's address.
    pub async fn server_addr(&self) -> Result<SocketAddr, ConfigError> {
        let err = |why: String| ConfigError::Resolve {
            host: self.host.clone(),
            port: self.port,
            why,
        };
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| err(e.to_string()))?;
        addrs.next().ok_or_else(|| err("no address found".into()))
    }
}

/// `-peernet`: `empty`, one CIDR (sent as it is, as the original does), or several separated
/// by commas: then the peernet message carries the first IPv4 one (or `empty`) and the rest go
/// to a dtun server in a Lans control message.
pub fn split_peernet(s: &str) -> Result<(Peernet, Vec<ipnet::IpNet>), ConfigError> {
    if !s.contains(',') {
        return Ok((Peernet::parse_str(s).map_err(ConfigError::Peernet)?, vec![]));
    }
    let mut nets = Vec::new();
    for part in s.split(',') {
        match Peernet::parse_str(part.trim()).map_err(ConfigError::Peernet)? {
            Peernet::Net(n) if !nets.contains(&n) => nets.push(n),
            _ => {}
        }
    }
    if nets.len() > 1 + crate::proto::MAX_LANS {
        return Err(ConfigError::Peernet(
            crate::proto::ProtoError::PeernetNotCidr(format!(
                "{} CIDRs (at most {})",
                nets.len(),
                1 + crate::proto::MAX_LANS
            )),
        ));
    }
    let first = nets.iter().position(|n| n.addr().is_ipv4());
    let peernet = first.map_or(Peernet::Empty, |i| Peernet::Net(nets.remove(i)));
    Ok((peernet, nets))
}
