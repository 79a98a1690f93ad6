//! The server's nftables table (`-nat`, `-client-to-client`) and the IPv4 forwarding switch.
//!
//! One table per running dtun, `inet dtun-<instance>`, so two dtuns on one host never touch each
//! other's rules. It is made over netlink (the `rustables` crate; never by running `nft`) in one
//! batch that first adds, then deletes, then creates it again: a table left by a `kill -9` is
//! replaced atomically, and a missing one is no error. It is deleted on a clean shutdown. A server
//! with neither flag makes no table at all (it needs no nf_tables).
//!
//! "Ours" below means a packet whose input (or output) device name starts with the TUN name
//! pattern's prefix (`-name`, `dtun%d` → `dtun`): every TUN this server makes has that name.
//! What such a packet carries as its source is already checked on the data path: the
//! demultiplexer lets a client's packet into its TUN only with its tunnel address or one of its
//! accepted LANs as the source (a counted `forged_source` drop otherwise). So "entered by one of
//! our TUNs" implies "source is the pool or an accepted LAN".
//!
//! The rule set:
//!
//! ```text
//! table inet dtun-<instance> {                         # userdata: ip_forward=<value before dtun>
//!   chain postrouting {                                # only with -nat
//!     type nat hook postrouting priority srcnat; policy accept;
//!     iifname "dtun*" oifname != "dtun*" masquerade    # tunnel -> out: the server's address
//!   }
//!   chain forward {
//!     type filter hook forward priority filter; policy accept;
//!     iifname "dtun*" oifname "dtun*" drop             # -client-to-client off
//!     iifname "dtun*" oifname "dtun*" accept           # -client-to-client on
//!     iifname "dtun*" oifname != "dtun*" accept        # -nat: tunnel -> out
//!     oifname "dtun*" ct state established,related accept   # -nat: the replies
//!     drop                                             # only if dtun turned forwarding on
//!   }
//! }
//! ```
//!
//! The last `drop` is what keeps forwarding from opening anything else: when IPv4 forwarding
//! was off before dtun (recorded in the table's userdata, inherited from a leftover or a sibling
//! dtun table so a restart after `kill -9` still knows it), nothing was forwarded, so anything
//! beyond the lines above would be new: a client cannot reach the server's other networks
//! except through `-nat`, and nothing from outside is forwarded. When the host already
//! forwarded, its own policy stays in charge (an `accept` here only ends this chain; a host's
//! `drop` in another chain still wins). `-client-to-client off` drops even when the host
//! forwards for other reasons.
//!
//! Forwarding (`/proc/sys/net/ipv4/ip_forward` of dtun's network namespace) is turned on while
//! dtun runs with `-nat` or `-client-to-client on`; on exit, when no other `dtun-*` table is
//! left, it is put back to the recorded value.

use std::io;
use std::path::Path;

use rustables::error::QueryError;
use rustables::expr::{Cmp, CmpOp, Masquerade, Meta, MetaType};
use rustables::{
    Batch, Chain, ChainPolicy, ChainType, Hook, HookClass, MsgType, ProtocolFamily, Rule, Table,
};

/// Where the kernel keeps the IPv4 forwarding switch of this network namespace.
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Table names start with this; the rest is the instance.
pub const TABLE_PREFIX: &str = "dtun-";
const USERDATA_KEY: &str = "ip_forward=";

/// What the table must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub nat: bool,
    /// None: left to the host (no rule).
    pub client_to_client: Option<bool>,
}

impl Policy {
    /// Whether any table is needed at all.
    pub fn needs_table(&self) -> bool {
        self.nat || self.client_to_client.is_some()
    }

    /// Whether dtun must turn IPv4 forwarding on.
    pub fn needs_forwarding(&self) -> bool {
        self.nat || self.client_to_client == Some(true)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(
        "-instance {0:?}: use 1 to 32 letters, digits, '-' or '_' (it names the nftables table dtun-NAME)"
    )]
    BadInstance(String),
    #[error(
        "another dtun runs as instance {0:?} in this network namespace: give this one another -instance NAME"
    )]
    InstanceInUse(String),
    #[error(
        "{what} needs CAP_NET_ADMIN to create the nftables table {table}: run dtun as root or grant it \
         the capability (systemd: AmbientCapabilities=CAP_NET_ADMIN)"
    )]
    Permission { what: &'static str, table: String },
    #[error(
        "{what}: this kernel has no nf_tables support ({detail}): load the modules (modprobe nf_tables \
         nft_masq nft_ct) or build the kernel with CONFIG_NF_TABLES, CONFIG_NF_TABLES_INET, \
         CONFIG_NFT_MASQ and CONFIG_NFT_CT; or run without {what}"
    )]
    NoNfTables { what: &'static str, detail: String },
    #[error("{what}: the kernel refused the nftables table {table}: {detail}")]
    Kernel {
        what: &'static str,
        table: String,
        detail: String,
    },
    #[error("cannot take the instance lock (an abstract unix socket): {0}")]
    Lock(io::Error),
    #[error(
        "cannot turn on IPv4 forwarding ({IP_FORWARD}: {0}): run as root in a namespace whose \
         /proc/sys is writable, or run without -nat / -client-to-client on"
    )]
    Forwarding(io::Error),
}

/// Checks an `-instance` name.
pub fn check_instance(name: &str) -> Result<(), NftError> {
    let ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NftError::BadInstance(name.to_string()))
    }
}

/// The table name of an instance.
pub fn table_name(instance: &str) -> String {
    format!("{TABLE_PREFIX}{instance}")
}

/// The fixed part of a TUN name pattern (`dtun%d` → `dtun`).
pub fn tun_prefix(pattern: &str) -> &str {
    pattern.split('%').next().unwrap_or(pattern)
}

/// The flags the error messages name.
fn what(policy: &Policy) -> &'static str {
    if policy.nat {
        "-nat"
    } else {
        "-client-to-client"
    }
}

/// Turns a failure of nf_tables into a message that says what to do.
fn classify(e: QueryError, policy: &Policy, table: &str) -> NftError {
    let what = what(policy);
    let errno = match &e {
        // The kernel sends a negative errno; take its magnitude whatever the sign convention.
        QueryError::NetlinkError(m) => Some(m.error.abs()),
        QueryError::NetlinkOpenError(n)
        | QueryError::NetlinkSendError(n)
        | QueryError::NetlinkRecvError(n) => Some(*n as i32),
        _ => None,
    };
    classify_errno(errno, &e.to_string(), what, table)
}

fn classify_errno(errno: Option<i32>, text: &str, what: &'static str, table: &str) -> NftError {
    let detail = match errno {
        Some(n) => format!("{text}: {}", io::Error::from_raw_os_error(n)),
        None => text.to_string(),
    };
    match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => NftError::Permission {
            what,
            table: table.to_string(),
        },
        // No nfnetlink (EPROTONOSUPPORT), no nf_tables subsystem or family (EAFNOSUPPORT,
        // EOPNOTSUPP), or no expression/chain type such as masq, ct or nat (ENOENT).
        Some(libc::EPROTONOSUPPORT)
        | Some(libc::EAFNOSUPPORT)
        | Some(libc::EOPNOTSUPP)
        | Some(libc::ENOENT) => NftError::NoNfTables { what, detail },
        _ => NftError::Kernel {
            what,
            table: table.to_string(),
            detail,
        },
    }
}

/// dtun's table while it exists. [`Firewall::remove`] deletes it and restores forwarding.
#[derive(Debug)]
pub struct Firewall {
    table: String,
    /// IPv4 forwarding as it was before any dtun changed it.
    forward_before: Option<u8>,
    /// Held while the table is ours: a second dtun with the same instance cannot bind it.
    _lock: std::os::unix::net::UnixDatagram,
}

/// Binds the abstract socket that marks `instance` as running in this network namespace (it
/// vanishes with the process, also after `kill -9`).
fn lock_instance(instance: &str) -> Result<std::os::unix::net::UnixDatagram, NftError> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("dtun-instance-{instance}");
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(NftError::Lock)?;
    std::os::unix::net::UnixDatagram::bind_addr(&addr).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            NftError::InstanceInUse(instance.to_string())
        } else {
            NftError::Lock(e)
        }
    })
}

fn read_forward(path: &Path) -> io::Result<u8> {
    let s = std::fs::read_to_string(path)?;
    Ok(if s.trim() == "0" { 0 } else { 1 })
}

fn write_forward(path: &Path, v: u8) -> io::Result<()> {
    std::fs::write(path, if v == 0 { "0\n" } else { "1\n" })
}

/// The `dtun-*` tables of this namespace with the forwarding value each recorded.
fn dtun_tables() -> Result<Vec<(String, Option<u8>)>, QueryError> {
    Ok(rustables::list_tables()?
        .into_iter()
        .filter_map(|t| {
            let name = t.get_name()?.clone();
            if !name.starts_with(TABLE_PREFIX) {
                return None;
            }
            let recorded = t
                .get_userdata()
                .and_then(|u| std::str::from_utf8(u).ok())
                .and_then(|u| u.strip_prefix(USERDATA_KEY))
                .and_then(|v| v.trim().parse::<u8>().ok());
            Some((name, recorded))
        })
        .collect())
}

pub(crate) fn ifname_is(
    prefix: &str,
    input: bool,
    eq: bool,
) -> [rustables::expr::RawExpression; 2] {
    let meta = Meta::new(if input {
        MetaType::IifName
    } else {
        MetaType::OifName
    });
    // A prefix without the trailing NUL matches every name that starts with it (as "dtun*").
    let cmp = Cmp::new(
        if eq { CmpOp::Eq } else { CmpOp::Neq },
        prefix.as_bytes().to_vec(),
    );
    [meta.into(), cmp.into()]
}

pub(crate) fn rule(
    chain: &Chain,
    exprs: Vec<rustables::expr::RawExpression>,
) -> Result<Rule, QueryError> {
    let mut r = Rule::new(chain)?;
    for e in exprs {
        r.add_expr(e);
    }
    Ok(r)
}

/// The batch that replaces (or creates) the table. `catch_all_drop`: forwarding was off
/// before dtun, so whatever the rules do not allow is dropped.
fn build(
    table_name: &str,
    prefix: &str,
    policy: &Policy,
    forward_before: u8,
) -> Result<Batch, QueryError> {
    let table = Table::new(ProtocolFamily::Inet)
        .with_name(table_name)
        .with_userdata(format!("{USERDATA_KEY}{forward_before}").into_bytes());
    let mut batch = Batch::new();
    // Add (a no-op if it exists), delete, create: one atomic replace, fine when it is missing.
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);
    use rustables::expr::{Conntrack, ConntrackKey, Immediate, VerdictKind};
    let verdict = |k| -> rustables::expr::RawExpression { Immediate::new_verdict(k).into() };
    if policy.nat {
        let post = Chain::new(&table)
            .with_name("postrouting")
            .with_hook(Hook::new(HookClass::PostRouting, 100))
            .with_type(ChainType::Nat)
            .with_policy(ChainPolicy::Accept);
        batch.add(&post, MsgType::Add);
        let mut e = Vec::new();
        e.extend(ifname_is(prefix, true, true));
        e.extend(ifname_is(prefix, false, false));
        e.push(Masquerade::default().into());
        batch.add(&rule(&post, e)?, MsgType::Add);
    }
    let fwd = Chain::new(&table)
        .with_name("forward")
        .with_hook(Hook::new(HookClass::Forward, 0))
        .with_type(ChainType::Filter)
        .with_policy(ChainPolicy::Accept);
    batch.add(&fwd, MsgType::Add);
    if let Some(on) = policy.client_to_client {
        let mut e = Vec::new();
        e.extend(ifname_is(prefix, true, true));
        e.extend(ifname_is(prefix, false, true));
        e.push(verdict(if on {
            VerdictKind::Accept
        } else {
            VerdictKind::Drop
        }));
        batch.add(&rule(&fwd, e)?, MsgType::Add);
    }
    if policy.nat {
        let mut e = Vec::new();
        e.extend(ifname_is(prefix, true, true));
        e.extend(ifname_is(prefix, false, false));
        e.push(verdict(VerdictKind::Accept));
        batch.add(&rule(&fwd, e)?, MsgType::Add);
        let mut e = Vec::new();
        e.extend(ifname_is(prefix, false, true));
        e.push(Conntrack::new(ConntrackKey::State).into());
        let states = (rustables::expr::ct::ConnTrackState::ESTABLISHED
            | rustables::expr::ct::ConnTrackState::RELATED)
            .bits();
        e.push(rustables::expr::Bitwise::new(states.to_le_bytes(), 0u32.to_be_bytes())?.into());
        e.push(Cmp::new(CmpOp::Neq, 0u32.to_be_bytes()).into());
        e.push(verdict(VerdictKind::Accept));
        batch.add(&rule(&fwd, e)?, MsgType::Add);
    }
    if forward_before == 0 && policy.needs_forwarding() {
        batch.add(&rule(&fwd, vec![verdict(VerdictKind::Drop)])?, MsgType::Add);
    }
    Ok(batch)
}

impl Firewall {
    /// Creates (or replaces) the table of `instance` for TUNs named `tun_pattern`, and turns
    /// forwarding on when the policy needs it. On an error nothing is left behind.
    pub fn apply(instance: &str, tun_pattern: &str, policy: Policy) -> Result<Firewall, NftError> {
        Self::apply_at(instance, tun_pattern, policy, Path::new(IP_FORWARD))
    }

    fn apply_at(
        instance: &str,
        tun_pattern: &str,
        policy: Policy,
        forward_path: &Path,
    ) -> Result<Firewall, NftError> {
        check_instance(instance)?;
        let lock = lock_instance(instance)?;
        let table = table_name(instance);
        let what = what(&policy);
        let existing = dtun_tables().map_err(|e| classify(e, &policy, &table))?;
        let now = read_forward(forward_path).map_err(NftError::Forwarding)?;
        // A leftover of ours or a sibling dtun knows the value from before any dtun.
        let before = existing
            .iter()
            .find(|(n, _)| *n == table)
            .or_else(|| existing.first())
            .and_then(|(_, v)| *v)
            .unwrap_or(now);
        let batch = build(&table, tun_prefix(tun_pattern), &policy, before)
            .map_err(|e| classify(e, &policy, &table))?;
        batch.send().map_err(|e| classify(e, &policy, &table))?;
        let fw = Firewall {
            table,
            forward_before: Some(before),
            _lock: lock,
        };
        if policy.needs_forwarding()
            && now != 1
            && let Err(e) = write_forward(forward_path, 1)
        {
            fw.remove_at(forward_path);
            return Err(NftError::Forwarding(e));
        }
        tracing::info!(
            "{what}: nftables table inet {} in place{}",
            fw.table,
            if policy.needs_forwarding() {
                format!(" (IPv4 forwarding on, was {before})")
            } else {
                String::new()
            }
        );
        Ok(fw)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Deletes the table; puts forwarding back when no other dtun table is left.
    pub fn remove(self) {
        self.remove_at(Path::new(IP_FORWARD))
    }

    fn remove_at(self, forward_path: &Path) {
        let table = Table::new(ProtocolFamily::Inet).with_name(self.table.as_str());
        let mut batch = Batch::new();
        batch.add(&table, MsgType::Del);
        if let Err(e) = batch.send() {
            tracing::warn!("cannot delete nftables table inet {}: {e}", self.table);
        }
        let others = match dtun_tables() {
            Ok(t) => t.len(),
            Err(e) => {
                tracing::warn!("cannot list nftables tables: {e}; IPv4 forwarding left as is");
                return;
            }
        };
        if others == 0
            && let Some(before) = self.forward_before
            && read_forward(forward_path).ok() != Some(before)
        {
            match write_forward(forward_path, before) {
                Ok(()) => tracing::info!("IPv4 forwarding back to {before}"),
                Err(e) => tracing::warn!("cannot restore {}: {e}", forward_path.display()),
            }
        }
        tracing::info!("nftables table inet {} removed", self.table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names() {
        assert!(check_instance("dtun").is_ok());
        assert!(check_instance("office_2-b").is_ok());
        for bad in ["", "a b", "x/y", "é", &"a".repeat(33)] {
            let e = check_instance(bad).unwrap_err().to_string();
            assert!(e.contains("-instance"), "{e}");
        }
        assert_eq!(table_name("srv"), "dtun-srv");
    }

    #[test]
    fn tun_prefixes() {
        assert_eq!(tun_prefix("dtun%d"), "dtun");
        assert_eq!(tun_prefix("vpn-%d"), "vpn-");
        assert_eq!(tun_prefix("tunx"), "tunx");
    }

    #[test]
    fn policies() {
        let none = Policy {
            nat: false,
            client_to_client: None,
        };
        assert!(!none.needs_table() && !none.needs_forwarding());
        let off = Policy {
            nat: false,
            client_to_client: Some(false),
        };
        assert!(off.needs_table() && !off.needs_forwarding());
        let nat = Policy {
            nat: true,
            client_to_client: Some(false),
        };
        assert!(nat.needs_table() && nat.needs_forwarding());
    }

    #[test]
    fn errors_say_what_to_do() {
        let m = classify_errno(Some(libc::EPROTONOSUPPORT), "open", "-nat", "dtun-x").to_string();
        assert!(m.contains("no nf_tables") && m.contains("modprobe"), "{m}");
        let m = classify_errno(Some(libc::ENOENT), "kernel", "-nat", "dtun-x").to_string();
        assert!(m.contains("CONFIG_NFT_MASQ"), "{m}");
        let m = classify_errno(Some(libc::EPERM), "kernel", "-nat", "dtun-x").to_string();
        assert!(m.contains("CAP_NET_ADMIN") && m.contains("dtun-x"), "{m}");
        let m = classify_errno(Some(libc::EINVAL), "kernel", "-nat", "dtun-x").to_string();
        assert!(m.contains("refused") && m.contains("dtun-x"), "{m}");
        let m = NftError::Forwarding(io::Error::from_raw_os_error(libc::EROFS)).to_string();
        assert!(
            m.contains("ip_forward") && m.contains("without -nat"),
            "{m}"
        );
    }
}
