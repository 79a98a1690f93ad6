//! The server's configuration: its key store (`-key`, `-clients`, `-master-key-file`, a config
//! file's clients), listen address, pools, limits and firewall policy.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::Ipv4Net;

use super::{Common, ConfigError, Key, TunSettings, dns_servers, read_master_key};
use crate::cli::Cli;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub keys: dtun_proto::keys::KeyStore,
    pub listen: SocketAddr,
    /// Identity hint sent in ServerKeyExchange (the original sends its own -id).
    pub hint: String,
    pub pool: Ipv4Net,
    /// `-pool6`: IPv6 pairs for dtun clients (None: `off`, or `-compat`).
    pub pool6: Option<ipnet::Ipv6Net>,
    pub linger: Duration,
    /// Devices beyond which unlisted ids are refused.
    pub max_clients: usize,
    pub tun: TunSettings,
    pub common: Common,
    /// `-dns`: pushed to dtun clients after their Hello.
    pub dns: Vec<IpAddr>,
    /// `-instance`, else the `-config` file's stem, else `dtun`: names the nftables table.
    pub instance: String,
    /// `-nat` / `-client-to-client`: None when neither is given (no nftables table).
    pub firewall: Option<dtun_linux::nft::Policy>,
}

impl ServerConfig {
    pub fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        Self::from_cli_with(cli, Default::default())
    }

    /// As [`ServerConfig::from_cli`], with the clients of a config file (`-config`) beside
    /// those of `-clients`; an id in both is an error.
    pub fn from_cli_with(
        cli: &Cli,
        file_clients: std::collections::HashMap<String, dtun_proto::keys::Client>,
    ) -> Result<Self, ConfigError> {
        let ip = cli.listen.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let mut clients = match &cli.clients {
            Some(p) => dtun_proto::keys::load_credentials(p).map_err(ConfigError::Credentials)?,
            None => Default::default(),
        };
        for (id, c) in file_clients {
            if clients.contains_key(&id) {
                let listed = cli
                    .clients
                    .as_deref()
                    .unwrap_or(std::path::Path::new("-clients"));
                return Err(ConfigError::ConfigFile(format!(
                    "client {id:?} is both in {} and in the config file's [clients.{id}]: keep one",
                    listed.display()
                )));
            }
            clients.insert(id, c);
        }
        let master = match &cli.master_key_file {
            Some(p) => Some(read_master_key(p)?),
            None => None,
        };
        let shared = match Key::from_cli(cli) {
            Ok(k) => Some(k.0),
            Err(ConfigError::NoKey) if !clients.is_empty() || master.is_some() => None,
            Err(e) => return Err(e),
        };
        if let Some(k) = &shared {
            dtun_proto::keys::warn_if_short(k, "the key");
        }
        // Isolation groups (group= in the credentials file) need dtun's nftables table.
        let groups = clients.values().any(|c| c.group.is_some());
        Ok(ServerConfig {
            keys: dtun_proto::keys::KeyStore {
                shared,
                master,
                clients,
                allow_unlisted: cli.allow_unlisted,
                disabled: Default::default(),
            },
            listen: SocketAddr::new(ip, cli.port),
            hint: cli.id.clone(),
            pool: cli.pool,
            pool6: if cli.compat {
                None
            } else {
                dtun_proto::pool6::parse_pool6(&cli.pool6).map_err(ConfigError::Pool6)?
            },
            linger: cli.linger,
            max_clients: cli.max_clients,
            tun: TunSettings::from_cli(cli)?,
            common: Common::from_cli(cli)?,
            dns: dns_servers(cli)?,
            instance: cli.instance.clone(),
            firewall: {
                dtun_linux::nft::check_instance(&cli.instance)
                    .map_err(|e| ConfigError::Instance(e.to_string()))?;
                let policy = dtun_linux::nft::Policy {
                    nat: cli.nat,
                    client_to_client: cli.client_to_client.map(|c| c == crate::cli::OnOff::On),
                    groups,
                };
                policy.needs_table().then_some(policy)
            },
        })
    }
}
