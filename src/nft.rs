//! The server's nftables table (`-nat`, `-client-to-client`, isolation groups) and the IPv4
//! forwarding switch.
//!
//! One table per running dtun, `inet dtun-<instance>`, so two dtuns on one host never touch each
//! other's rules. It is made over netlink (the `rustables` crate; never by running `nft`) in one
//! batch that first adds, then deletes, then creates it again: a table left by a `kill -9` is
//! replaced atomically, and a missing one is no error. It is deleted on a clean shutdown. A server
//! with none of `-nat`, `-client-to-client` and `group=` in its credentials makes no table at
//! all (it needs no nf_tables).
//!
//! "Ours" below means a packet whose input (or output) device is in the set `tuns`: the names
//! of this server's TUNs, kept up to date by the manager as it creates and removes devices
//! (`sets`), so another dtun's TUNs with the same name pattern are never taken for ours. With
//! isolation groups each group has a set too (`group-NAME`, and `ungrouped` for the ids
//! without one). What such a packet carries as its source is already checked on the data
//! path: the demultiplexer lets a client's packet into its TUN only with its tunnel address or
//! one of its accepted LANs as the source (a counted `forged_source` drop otherwise). So
//! "entered by one of our TUNs" implies "source is the pool or an accepted LAN".
//!
//! The rule set:
//!
//! ```text
//! table inet dtun-<instance> {                         # userdata: ip_forward=<value before dtun>
//!   set tuns { type ifname; }                          # every TUN of this server
//!   set ungrouped { type ifname; }                     # groups only: ids without group=
//!   set group-red { type ifname; }                     # groups only: one per group
//!   chain postrouting {                                # only with -nat
//!     type nat hook postrouting priority srcnat; policy accept;
//!     iifname @tuns oifname @tuns return               # client to client: never masqueraded
//!     iifname @tuns masquerade                         # tunnel -> out: the server's address
//!   }
//!   chain groups {                                     # groups (unless -client-to-client off)
//!     iifname @ungrouped oifname @ungrouped accept
//!     iifname @group-red oifname @group-red accept     # one per group
//!   }
//!   chain forward {
//!     type filter hook forward priority filter; policy accept;
//!     iifname @tuns oifname @tuns jump groups          # groups: same group passes
//!     iifname @tuns oifname @tuns drop|accept          # see below
//!     iifname @tuns accept                             # -nat: tunnel -> out
//!     oifname @tuns ct state established,related accept   # -nat: the replies
//!     drop                                             # only if dtun turned forwarding on
//!   }
//! }
//! ```
//!
//! The client-to-client verdict: `drop` with `-client-to-client off` (groups play no part) or
//! with groups (what the `groups` chain did not accept is between two groups); `accept` with
//! `-client-to-client on` and no groups; with neither (only `-nat`), what the host had: `drop`
//! when dtun turned forwarding on, else `accept` (this chain's policy).
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
//! dtun runs with `-nat` or `-client-to-client on` (groups alone leave it as the host has it);
//! on exit, when no other `dtun-*` table is left, it is put back to the recorded value.

use std::io;
use std::path::Path;

use rustables::error::QueryError;
use rustables::expr::{Immediate, Masquerade, VerdictKind};
use rustables::{
    Batch, Chain, ChainPolicy, ChainType, Hook, HookClass, MsgType, ProtocolFamily, Rule, Table,
};

mod error;
pub(crate) mod sets;
pub use error::NftError;
use error::{classify, classify_errno};
pub use sets::group_set;

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
    /// Some id of the credentials file has `group=`.
    pub groups: bool,
}

impl Policy {
    /// Whether any table is needed at all.
    pub fn needs_table(&self) -> bool {
        self.nat || self.client_to_client.is_some() || self.groups
    }

    /// Whether isolation groups decide client-to-client traffic (`off` drops it all anyway).
    pub fn grouped(&self) -> bool {
        self.groups && self.client_to_client != Some(false)
    }

    /// Whether dtun must turn IPv4 forwarding on.
    pub fn needs_forwarding(&self) -> bool {
        self.nat || self.client_to_client == Some(true)
    }
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

/// The flags the error messages name.
fn what(policy: &Policy) -> &'static str {
    if policy.nat {
        "-nat"
    } else if policy.client_to_client.is_some() {
        "-client-to-client"
    } else {
        "group= (isolation groups)"
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
    /// Isolation groups are enforced: each TUN also goes into its group's set.
    grouped: bool,
    /// The group sets that exist in the table.
    group_sets: std::collections::HashSet<String>,
    /// Set ids already used in this table's batches.
    next_set_id: u32,
    /// Updates of the sets that failed.
    failures: u64,
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

/// The two forward rules of `-nat` (both families): `iifname @tuns accept` (the tunnel out)
/// and `oifname @tuns ct state established,related accept` (the replies).
pub(crate) fn nat_forward(
    tuns: &rustables::Set,
) -> Result<[Vec<rustables::expr::RawExpression>; 2], QueryError> {
    use rustables::expr::{Bitwise, Cmp, CmpOp, Conntrack, ConntrackKey, ct::ConnTrackState};
    let mut out = sets::name_in(tuns, true)?;
    out.push(verdict(VerdictKind::Accept));
    let mut replies = sets::name_in(tuns, false)?;
    replies.push(Conntrack::new(ConntrackKey::State).into());
    let states = (ConnTrackState::ESTABLISHED | ConnTrackState::RELATED).bits();
    replies.push(Bitwise::new(states.to_le_bytes(), 0u32.to_be_bytes())?.into());
    replies.push(Cmp::new(CmpOp::Neq, 0u32.to_be_bytes()).into());
    replies.push(verdict(VerdictKind::Accept));
    Ok([out, replies])
}

fn verdict(kind: VerdictKind) -> rustables::expr::RawExpression {
    Immediate::new_verdict(kind).into()
}

/// The batch that replaces (or creates) the table, with the sets of `groups` (names as in the
/// credentials file) when the policy is grouped. Set ids 1 to the number of sets are used.
fn build(
    table_name: &str,
    policy: &Policy,
    forward_before: u8,
    groups: &[String],
) -> Result<Batch, QueryError> {
    let table = Table::new(ProtocolFamily::Inet)
        .with_name(table_name)
        .with_userdata(format!("{USERDATA_KEY}{forward_before}").into_bytes());
    let mut batch = Batch::new();
    // Add (a no-op if it exists), delete, create: one atomic replace, fine when it is missing.
    batch.add(&table, MsgType::Add);
    batch.add(&table, MsgType::Del);
    batch.add(&table, MsgType::Add);
    let tuns = sets::empty_set(&table, sets::TUNS, 1)?;
    batch.add(&tuns, MsgType::Add);
    let tun_to_tun = || -> Result<Vec<_>, QueryError> {
        let mut e = sets::name_in(&tuns, true)?;
        e.extend(sets::name_in(&tuns, false)?);
        Ok(e)
    };
    if policy.nat {
        let post = Chain::new(&table)
            .with_name("postrouting")
            .with_hook(Hook::new(HookClass::PostRouting, 100))
            .with_type(ChainType::Nat)
            .with_policy(ChainPolicy::Accept);
        batch.add(&post, MsgType::Add);
        let mut e = tun_to_tun()?;
        e.push(verdict(VerdictKind::Return));
        batch.add(&rule(&post, e)?, MsgType::Add);
        let mut e = sets::name_in(&tuns, true)?;
        e.push(Masquerade::default().into());
        batch.add(&rule(&post, e)?, MsgType::Add);
    }
    let fwd = forward_chain(&table);
    batch.add(&fwd, MsgType::Add);
    forward_rules(&mut batch, &table, &tuns, policy, forward_before, groups, 2)?;
    Ok(batch)
}

/// The `forward` chain of the table.
fn forward_chain(table: &Table) -> Chain {
    Chain::new(table)
        .with_name("forward")
        .with_hook(Hook::new(HookClass::Forward, 0))
        .with_type(ChainType::Filter)
        .with_policy(ChainPolicy::Accept)
}

/// The rules of the `forward` chain and, when the policy is grouped, the `groups` chain with
/// the sets of `groups` (set ids from `first_set_id` on) and their rules.
pub(crate) fn forward_rules(
    batch: &mut Batch,
    table: &Table,
    tuns: &rustables::Set,
    policy: &Policy,
    forward_before: u8,
    groups: &[String],
    first_set_id: u32,
) -> Result<(), QueryError> {
    let fwd = forward_chain(table);
    let tun_to_tun = || -> Result<Vec<_>, QueryError> {
        let mut e = sets::name_in(tuns, true)?;
        e.extend(sets::name_in(tuns, false)?);
        Ok(e)
    };
    let catch_all_drop = forward_before == 0 && policy.needs_forwarding();
    if policy.grouped() {
        let chain = Chain::new(table).with_name(sets::GROUPS_CHAIN);
        batch.add(&chain, MsgType::Add);
        let names =
            std::iter::once(group_set(None)).chain(groups.iter().map(|g| group_set(Some(g))));
        for (i, name) in names.enumerate() {
            let set = sets::empty_set(table, &name, first_set_id + i as u32)?;
            batch.add(&set, MsgType::Add);
            batch.add(&sets::group_rule(&chain, &set)?, MsgType::Add);
        }
        let mut e = tun_to_tun()?;
        e.push(verdict(VerdictKind::Jump {
            chain: sets::GROUPS_CHAIN.to_string(),
        }));
        batch.add(&rule(&fwd, e)?, MsgType::Add);
    }
    let between_tuns = match policy.client_to_client {
        Some(true) if !policy.grouped() => VerdictKind::Accept,
        None if !policy.grouped() && !catch_all_drop => VerdictKind::Accept,
        _ => VerdictKind::Drop,
    };
    let mut e = tun_to_tun()?;
    e.push(verdict(between_tuns));
    batch.add(&rule(&fwd, e)?, MsgType::Add);
    if policy.nat {
        for e in nat_forward(tuns)? {
            batch.add(&rule(&fwd, e)?, MsgType::Add);
        }
    }
    if catch_all_drop {
        batch.add(&rule(&fwd, vec![verdict(VerdictKind::Drop)])?, MsgType::Add);
    }
    Ok(())
}

impl Firewall {
    /// Creates (or replaces) the table of `instance`, with a set for each of `groups` (the
    /// credentials file's; a group seen later gets its set then), and turns forwarding on when
    /// the policy needs it. Its sets start empty: the manager adds each TUN it makes
    /// ([`Firewall::add_tun`]). On an error nothing is left behind.
    pub fn apply(instance: &str, policy: Policy, groups: &[String]) -> Result<Firewall, NftError> {
        Self::apply_at(instance, policy, groups, Path::new(IP_FORWARD))
    }

    fn apply_at(
        instance: &str,
        policy: Policy,
        groups: &[String],
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
        let batch =
            build(&table, &policy, before, groups).map_err(|e| classify(e, &policy, &table))?;
        batch.send().map_err(|e| classify(e, &policy, &table))?;
        let grouped = policy.grouped();
        let group_sets: std::collections::HashSet<String> = if grouped {
            std::iter::once(group_set(None))
                .chain(groups.iter().map(|g| group_set(Some(g))))
                .collect()
        } else {
            Default::default()
        };
        let fw = Firewall {
            table,
            forward_before: Some(before),
            _lock: lock,
            grouped,
            next_set_id: 2 + group_sets.len() as u32,
            group_sets,
            failures: 0,
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
        if fw.grouped {
            tracing::info!(
                "isolation groups: client-to-client traffic passes only within a group ({} groups and the ungrouped ids)",
                groups.len()
            );
        }
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
    fn policies() {
        let none = Policy {
            nat: false,
            client_to_client: None,
            groups: false,
        };
        assert!(!none.needs_table() && !none.needs_forwarding());
        let off = Policy {
            nat: false,
            client_to_client: Some(false),
            groups: false,
        };
        assert!(off.needs_table() && !off.needs_forwarding());
        let nat = Policy {
            nat: true,
            client_to_client: Some(false),
            groups: false,
        };
        assert!(nat.needs_table() && nat.needs_forwarding());
        // Groups alone need the table but leave forwarding to the host; off overrides them.
        let groups = Policy {
            nat: false,
            client_to_client: None,
            groups: true,
        };
        assert!(groups.needs_table() && !groups.needs_forwarding() && groups.grouped());
        let groups_off = Policy {
            client_to_client: Some(false),
            ..groups
        };
        assert!(!groups_off.grouped());
        let groups_on = Policy {
            client_to_client: Some(true),
            ..groups
        };
        assert!(groups_on.grouped() && groups_on.needs_forwarding());
    }
}
