//! Checked configuration of each role, built from the command line: the key loaded, addresses
//! resolved, every user mistake turned into a message that says what to do.
//!
//! Here: the errors, the key, what both roles share (TUN settings, scripts, suites); each
//! role's own configuration is in `server` and `client`.

mod client;
pub mod file;
pub mod hosts;
mod server;
mod values;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::cli::{Cipher, Cli};
use dtun_proto::consts::{PATH_MTU, UDP4_OVERHEAD, UDP6_OVERHEAD};
use dtun_proto::record::Suite;

pub use client::{ClientConfig, split_peernet};
pub use server::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no key given: use -key KEY, -key-file PATH or the DTUN_KEY environment variable")]
    NoKey,
    #[error("the key is empty: give a non-empty -key, -key-file or DTUN_KEY")]
    EmptyKey,
    #[error(
        "the master key in {0} is empty or only whitespace, so every derived key would be one anyone can compute: put a secret in it (`dtun genkey > {0}`)"
    )]
    EmptyMasterKey(String),
    #[error("cannot read key file {0}: {1}{hint}", hint = dtun_linux::privilege::unreadable_hint(.1))]
    KeyFile(PathBuf, std::io::Error),
    #[error(transparent)]
    Pool6(dtun_proto::pool6::Pool6Error),
    #[error("bad -peernet: {0} (give `empty` or CIDRs separated by commas)")]
    Peernet(String),
    #[error("{0}")]
    Host(String),
    #[error("cannot resolve server {host}:{port}: {why}; check -host")]
    Resolve {
        host: String,
        port: u16,
        why: String,
    },
    #[error("bad -name {0:?}: a TUN name has 1 to 15 characters and may contain one %d")]
    TunName(String),
    #[error("-compat speaks only the original's AES-128-CCM_8: drop -cipher gcm or -compat")]
    CompatCipher,
    #[error("bad -id: the id must be 1 to 128 bytes of UTF-8 without control characters")]
    Id,
    #[error(transparent)]
    Credentials(dtun_proto::keys::KeyError),
    /// A bad -route, -exclude (or a line of its file), -allow-ipv6-leak.
    #[error("{0}")]
    Routes(String),
    #[error("-dns takes at most {max} servers, got {0}: keep the first {max}", max = dtun_proto::proto::MAX_DNS_SERVERS)]
    TooManyDns(usize),
    #[error("{0}")]
    Instance(String),
    /// A client of the config file's `[clients.ID]` that clashes with `-clients`, or a config
    /// file setting that does not fit the role.
    #[error("{0}")]
    ConfigFile(String),
}

/// The `-dns` list, checked.
fn dns_servers(cli: &Cli) -> Result<Vec<IpAddr>, ConfigError> {
    if cli.dns.len() > dtun_proto::proto::MAX_DNS_SERVERS {
        return Err(ConfigError::TooManyDns(cli.dns.len()));
    }
    Ok(cli.dns.clone())
}

/// The pre-shared key's bytes. Never printed; wiped when dropped.
#[derive(Clone)]
pub struct Key(pub Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

impl Key {
    /// From -key / DTUN_KEY, or -key-file (its content less one trailing newline).
    pub fn from_cli(cli: &Cli) -> Result<Key, ConfigError> {
        let bytes = if let Some(path) = &cli.key_file {
            read_key_file(path)?
        } else if let Some(k) = &cli.key {
            Zeroizing::new(k.as_bytes().to_vec())
        } else {
            return Err(ConfigError::NoKey);
        };
        if bytes.is_empty() {
            return Err(ConfigError::EmptyKey);
        }
        Ok(Key(bytes))
    }
}

/// A key file's content less one trailing newline (its mode: `ops::perms`).
pub fn read_key_file(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    let mut b = Zeroizing::new(
        std::fs::read(path).map_err(|e| ConfigError::KeyFile(path.to_path_buf(), e))?,
    );
    if b.last() == Some(&b'\n') {
        b.pop();
        if b.last() == Some(&b'\r') {
            b.pop();
        }
    }
    Ok(b)
}

/// The `-master-key-file` secret: refused when empty or blank (HMAC under it would be public),
/// warned about when short.
pub fn read_master_key(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    let b = read_key_file(path)?;
    check_master_key(&b, &path.display().to_string())?;
    Ok(b)
}

/// Refuses a master secret that is empty or whitespace only; warns under
/// [`dtun_proto::keys::MIN_KEY_LEN`] bytes. `source` names where it came from.
pub fn check_master_key(key: &[u8], source: &str) -> Result<(), ConfigError> {
    if key.trim_ascii().is_empty() {
        return Err(ConfigError::EmptyMasterKey(source.to_string()));
    }
    dtun_proto::keys::warn_if_short(key, &format!("the master key in {source}"));
    Ok(())
}

/// Settings shared by both roles' TUN devices.
#[derive(Clone, Debug)]
pub struct TunSettings {
    /// Name pattern such as `dtun%d`.
    pub name: String,
    /// Fixed MTU, or None for the default of the session's suite and address family.
    pub mtu: Option<u16>,
}

impl TunSettings {
    fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        let n = &cli.name;
        if n.is_empty()
            || n.len() > 15
            || n.matches('%').count() > 1
            || (n.contains('%') && !n.contains("%d"))
        {
            return Err(ConfigError::TunName(n.clone()));
        }
        Ok(TunSettings {
            name: n.clone(),
            mtu: cli.mtu,
        })
    }

    /// The MTU for a session of `suite` whose outer packets go to `peer`.
    pub fn mtu_for(&self, suite: Suite, peer: SocketAddr) -> u32 {
        self.mtu
            .map(u32::from)
            .unwrap_or_else(|| default_mtu(suite, peer))
    }

    /// The MTU of a client that sends connection ID records (`cid`: it offers roaming, whose
    /// records are [`CID_RECORD_EXTRA`] bytes longer): without `-mtu`, that much less, so a
    /// full-size packet still fits one unfragmented datagram.
    pub fn client_mtu_for(&self, suite: Suite, peer: SocketAddr, cid: bool) -> u32 {
        match self.mtu {
            Some(m) => u32::from(m),
            None if cid => default_mtu(suite, peer) - CID_RECORD_EXTRA as u32,
            None => default_mtu(suite, peer),
        }
    }
}

/// What a connection ID record (RFC 9146) adds to a plain one: the CID and the inner type.
pub const CID_RECORD_EXTRA: usize = dtun_proto::consts::CID_LEN + 1;

/// 1500 less outer IP/UDP less the record overhead (PROTOCOL.md "Decisions").
pub fn default_mtu(suite: Suite, peer: SocketAddr) -> u32 {
    let outer = if is_ipv4(peer.ip()) {
        UDP4_OVERHEAD
    } else {
        UDP6_OVERHEAD
    };
    (PATH_MTU - outer - suite.overhead()) as u32
}

/// IPv4, or IPv4 seen through a dual-stack socket as ::ffff:a.b.c.d.
pub fn is_ipv4(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    }
}

/// What both roles share beyond the key: scripts, keepalive, compatibility.
#[derive(Clone, Debug)]
pub struct Common {
    pub up: Option<PathBuf>,
    pub down: Option<PathBuf>,
    /// Zero: no keepalive.
    pub keepalive: Duration,
    /// Rekeying between dtun peers (`-rekey`; never with `-compat`).
    pub rekey: Option<Duration>,
    /// Original protocol only: CCM_8, no hint marker, no control messages.
    pub compat: bool,
    /// Cipher suites offered, in order of preference.
    pub suites: Vec<Suite>,
}

impl Common {
    fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        let suites = match (cli.cipher, cli.compat) {
            (Cipher::Gcm, true) => return Err(ConfigError::CompatCipher),
            (Cipher::Ccm8, _) | (Cipher::Auto, true) => vec![Suite::Aes128Ccm8],
            (Cipher::Gcm, false) => vec![Suite::Aes128Gcm],
            (Cipher::Auto, false) => vec![Suite::Aes128Gcm, Suite::Aes128Ccm8],
        };
        Ok(Common {
            up: cli.up.clone(),
            down: cli.down.clone(),
            keepalive: cli.keepalive,
            rekey: (!cli.rekey.is_zero() && !cli.compat).then_some(cli.rekey),
            compat: cli.compat,
            suites,
        })
    }
}

/// Checks an instance name (the rule of `dtun_linux::nft::check_instance`, which a server's table
/// name shares), with a message about the control socket.
pub fn check_name(name: &str) -> Result<(), String> {
    dtun_linux::nft::check_instance(name).map_err(|_| {
        format!(
            "-instance {name:?}: use 1 to 32 letters, digits, '-' or '_' (it names the control socket /run/dtun/NETNS.NAME.sock)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtun_proto::proto::Peernet;

    #[test]
    fn default_mtus_follow_protocol_md() {
        let v4: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:443".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(default_mtu(Suite::Aes128Ccm8, v4), 1443);
        assert_eq!(default_mtu(Suite::Aes128Ccm8, mapped), 1443);
        assert_eq!(default_mtu(Suite::Aes128Ccm8, v6), 1423);
        assert_eq!(default_mtu(Suite::Aes128Gcm, v4), 1435);
        assert_eq!(default_mtu(Suite::Aes128Gcm, v6), 1415);
        // A client that sends connection ID records: 9 bytes less, -mtu as given.
        let t = TunSettings {
            name: "dtun%d".into(),
            mtu: None,
        };
        assert_eq!(t.client_mtu_for(Suite::Aes128Gcm, v4, true), 1426);
        assert_eq!(t.client_mtu_for(Suite::Aes128Gcm, v6, true), 1406);
        assert_eq!(t.client_mtu_for(Suite::Aes128Gcm, v4, false), 1435);
        let fixed = TunSettings {
            mtu: Some(1400),
            ..t
        };
        assert_eq!(fixed.client_mtu_for(Suite::Aes128Gcm, v4, true), 1400);
    }

    #[test]
    fn cipher_choice_and_compat() {
        let suites = |args: &[&'static str]| {
            let mut v = vec!["dtun", "-key", "k"];
            v.extend_from_slice(args);
            ServerConfig::from_cli(&Cli::try_from_args(v).unwrap()).map(|c| c.common.suites)
        };
        use Suite::*;
        assert_eq!(suites(&[]).unwrap(), [Aes128Gcm, Aes128Ccm8]);
        assert_eq!(suites(&["-cipher", "ccm8"]).unwrap(), [Aes128Ccm8]);
        assert_eq!(suites(&["-cipher", "gcm"]).unwrap(), [Aes128Gcm]);
        assert_eq!(suites(&["-compat"]).unwrap(), [Aes128Ccm8]);
        assert!(matches!(
            suites(&["-compat", "-cipher", "gcm"]),
            Err(ConfigError::CompatCipher)
        ));
    }

    #[test]
    fn key_sources() {
        let dir = std::env::temp_dir().join(format!("dtun-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("key");
        std::fs::write(&f, "s3cret\n").unwrap();
        let cli = Cli::try_from_args(["dtun"]).unwrap();
        let with_file = Cli {
            key_file: Some(f.clone()),
            key: None,
            ..cli.clone()
        };
        assert_eq!(Key::from_cli(&with_file).unwrap().0[..], b"s3cret"[..]);
        std::fs::write(&f, "abc\n\n").unwrap();
        assert_eq!(
            Key::from_cli(&with_file).unwrap().0[..],
            b"abc\n"[..],
            "only one newline is removed"
        );
        let none = Cli {
            key: None,
            key_file: None,
            ..cli.clone()
        };
        assert!(matches!(Key::from_cli(&none), Err(ConfigError::NoKey)));
        let empty = Cli {
            key: Some("".into()),
            ..cli.clone()
        };
        assert!(matches!(Key::from_cli(&empty), Err(ConfigError::EmptyKey)));
        let hexish = Cli {
            key: Some("666f6f".into()),
            ..cli
        };
        assert_eq!(
            Key::from_cli(&hexish).unwrap().0[..],
            b"666f6f"[..],
            "never hex-decoded"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// An empty or blank master secret makes every derived key public: hex(HMAC("", id)).
    #[test]
    fn empty_master_key_is_refused() {
        let dir = std::env::temp_dir().join(format!("dtun-cfg-master-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("master");
        let cli = Cli::try_from_args(["dtun"]).unwrap();
        let with_master = Cli {
            master_key_file: Some(f.clone()),
            key: None,
            ..cli
        };
        for blank in ["", "\n", "\r\n", "  \t \n", "\n\n"] {
            std::fs::write(&f, blank).unwrap();
            match ServerConfig::from_cli(&with_master) {
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("master") && msg.contains("dtun genkey"),
                        "{blank:?}: {msg}"
                    );
                }
                Ok(_) => panic!("master key file holding {blank:?} was accepted"),
            }
        }
        // Short but not empty: accepted with a warning, as -key is.
        std::fs::write(&f, "short\n").unwrap();
        let cfg = ServerConfig::from_cli(&with_master).unwrap();
        assert!(cfg.keys.master.is_some_and(|m| m[..] == b"short"[..]));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// No struct that holds key bytes shows them in its Debug output.
    #[test]
    fn debug_output_never_shows_keys() {
        let dir = std::env::temp_dir().join(format!("dtun-cfg-debug-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let master = dir.join("master");
        std::fs::write(&master, "MASTERSECRET-0123456789\n").unwrap();
        let creds = dir.join("clients");
        std::fs::write(&creds, "alice key=ALICESECRET-0123456789\n").unwrap();
        let secrets = ["SHAREDSECRET", "MASTERSECRET", "ALICESECRET"];
        let cli = Cli::try_parse_normalized(
            [
                "dtun",
                "-key",
                "SHAREDSECRET-0123456789",
                "-master-key-file",
                master.to_str().unwrap(),
                "-clients",
                creds.to_str().unwrap(),
            ]
            .map(std::ffi::OsString::from),
        )
        .unwrap();
        let server = ServerConfig::from_cli(&cli).unwrap();
        let client_cli = Cli {
            host: Some("192.0.2.1".into()),
            ..cli.clone()
        };
        let client = ClientConfig::from_cli(&client_cli, "192.0.2.1").unwrap();
        let shown = [
            format!("{cli:?}"),
            format!("{cli:#?}"),
            format!("{server:?}"),
            format!("{:?}", server.keys),
            format!("{:?}", server.keys.clients["alice"]),
            format!("{client:?}"),
            format!("{:?}", client.key),
        ];
        for text in &shown {
            for secret in secrets {
                assert!(!text.contains(secret), "{secret} shown in {text}");
            }
        }
        assert!(shown[0].contains("<redacted>"), "{}", shown[0]);
        // And the key bytes are wiped when dropped: a compile-time fact of their types.
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>(_: &T) {}
        wiped_on_drop(&client.key.0);
        wiped_on_drop(cli.key.as_ref().unwrap());
        wiped_on_drop(server.keys.shared.as_ref().unwrap());
        wiped_on_drop(server.keys.master.as_ref().unwrap());
        wiped_on_drop(&server.keys.clients["alice"].key);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dns_flags() {
        let cfg = |args: &[&'static str]| {
            let mut v = vec!["dtun", "-key", "k", "-host", "192.0.2.1"];
            v.extend_from_slice(args);
            ClientConfig::from_cli(&Cli::try_from_args(v).unwrap(), "192.0.2.1")
        };
        let c = cfg(&["-dns", "203.0.113.10,2001:db8::53", "-accept-dns"]).unwrap();
        assert_eq!(c.dns.len(), 2);
        assert!(c.accept_dns && c.uses_pushed_dns());
        let c = cfg(&[]).unwrap();
        assert!(c.dns.is_empty() && !c.uses_pushed_dns());
        let c = cfg(&["-accept-pool", "10.86.0.0/16,fd86::/64"]).unwrap();
        assert_eq!(
            c.accept_pool,
            [
                "10.86.0.0/16".parse().unwrap(),
                "fd86::/64".parse().unwrap()
            ]
        );
        assert!(cfg(&[]).unwrap().accept_pool.is_empty());
        let e = Cli::try_from_args(["dtun", "-key", "k", "-accept-pool", "10.86.1.1/16"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean 10.86.0.0/16"), "{e}");
        // A full tunnel takes the server's DNS; a split one does not.
        assert!(cfg(&["-route", "all"]).unwrap().uses_pushed_dns());
        assert!(!cfg(&["-route", "10.20.0.0/16"]).unwrap().uses_pushed_dns());
        let nine = "1.1.1.1,1.1.1.2,1.1.1.3,1.1.1.4,1.1.1.5,1.1.1.6,1.1.1.7,1.1.1.8,1.1.1.9";
        let e = cfg(&["-dns", nine]).unwrap_err().to_string();
        assert!(e.contains("at most 8"), "{e}");
        assert!(Cli::try_from_args(["dtun", "-key", "k", "-dns", "not-an-ip"]).is_err());
    }

    #[test]
    fn tun_names() {
        let cli = Cli::try_from_args(["dtun", "-key", "k"]).unwrap();
        for bad in ["", "waytoolongname_x", "a%s", "%d%d"] {
            let c = Cli {
                name: bad.into(),
                ..cli.clone()
            };
            assert!(TunSettings::from_cli(&c).is_err(), "{bad}");
        }
        let ok = Cli {
            name: "vpn%d".into(),
            ..cli
        };
        assert!(TunSettings::from_cli(&ok).is_ok());
    }

    #[test]
    fn several_peernets_split_first_ipv4_into_the_message() {
        let (p, lans) = split_peernet("fd00:1::/64,192.168.1.0/24,10.9.0.0/16").unwrap();
        assert_eq!(p, Peernet::Net("192.168.1.0/24".parse().unwrap()));
        assert_eq!(
            lans,
            vec![
                "fd00:1::/64".parse::<ipnet::IpNet>().unwrap(),
                "10.9.0.0/16".parse().unwrap()
            ]
        );
        let (p, lans) = split_peernet("fd00:1::/64,fd00:2::/64").unwrap();
        assert_eq!(p, Peernet::Empty);
        assert_eq!(lans.len(), 2);
        // One CIDR stays as it was, whatever its family.
        assert_eq!(
            split_peernet("fd00:1::/64").unwrap(),
            (Peernet::Net("fd00:1::/64".parse().unwrap()), vec![])
        );
        assert_eq!(split_peernet("empty").unwrap(), (Peernet::Empty, vec![]));
        assert!(split_peernet("10.0.0.0/8,nope").is_err());
        let many = (0..20)
            .map(|i| format!("10.{i}.0.0/16"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(split_peernet(&many).is_err());
    }
}
