//! The server's nftables table (`-nat`, `-client-to-client`, isolation groups) and the IPv4
//! forwarding switch.
//!
//! One table per running dtun, `inet dtun-<instance>`, so two dtuns on one host never touch each
//! other's rules. It is made over netlink (the `rustables` crate; never by running `nft`) with
//! the owner flag (`NFT_TABLE_F_OWNER`, Linux 5.12) over a socket dtun keeps open (`socket`):
//! the kernel lets nobody else change it and deletes it when that socket closes, so a dtun
//! that dies (`kill -9` included) leaves no rule behind, and a table that exists with an owner
//! is a running dtun's (a second dtun of that instance is refused). The batch first adds a table
//! without an owner, deletes it, then creates the owned one: a table without an owner (left by
//! an older dtun, or on a kernel without owners, where dtun warns and goes on without) is
//! replaced atomically. It is deleted on a clean shutdown. A server with none of `-nat`,
//! `-client-to-client` and `group=` in its credentials makes no table at all (it needs no
//! nf_tables).
//!
//! "Ours" below means a packet whose input (or output) device is in the set `tuns`: the
//! interface indexes of this server's TUNs, kept up to date by the manager as it creates and
//! removes devices (`sets`), so neither another dtun's TUNs with the same name pattern nor a
//! device made later under the name of one of ours is ever taken for ours. With
//! isolation groups each group has a set too (`group-NAME`, and `ungrouped` for the ids
//! without one). What such a packet carries as its source is already checked on the data
//! path: the demultiplexer lets a client's packet into its TUN only with its tunnel address or
//! one of its accepted LANs as the source (a counted `forged_source` drop otherwise). So
//! "entered by one of our TUNs" implies "source is the pool or an accepted LAN".
//!
//! The rule set:
//!
//! ```text
//! table inet dtun-<instance> {                         # flags owner
//!   set tuns { type iface_index; }                     # every TUN of this server
//!   set ungrouped { type iface_index; }                # groups only: ids without group=
//!   set group-red { type iface_index; }                # groups only: one per group
//!   chain postrouting {                                # only with -nat
//!     type nat hook postrouting priority srcnat; policy accept;
//!     iif @tuns oif @tuns return               # client to client: never masqueraded
//!     iif @tuns masquerade                         # tunnel -> out: the server's address
//!   }
//!   chain groups {                                     # groups (unless -client-to-client off)
//!     iif @ungrouped oif @ungrouped accept
//!     iif @group-red oif @group-red accept     # one per group
//!   }
//!   chain forward {
//!     type filter hook forward priority filter; policy accept;
//!     iif @tuns oif @tuns jump groups          # groups: same group passes
//!     iif @tuns oif @tuns drop|accept          # see below
//!     iif @tuns accept                             # -nat: tunnel -> out
//!     oif @tuns ct state established,related accept   # -nat: the replies
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
//! was off before dtun (recorded in the RunDir state file `/run/dtun/NETNS.ip_forward` by the
//! first dtun of the namespace, so a sibling and a restart after `kill -9` still know it),
//! nothing was forwarded, so anything
//! beyond the lines above would be new: a client cannot reach the server's other networks
//! except through `-nat`, and nothing from outside is forwarded. When the host already
//! forwarded, its own policy stays in charge (an `accept` here only ends this chain; a host's
//! `drop` in another chain still wins). `-client-to-client off` drops even when the host
//! forwards for other reasons.
//!
//! Forwarding (`/proc/sys/net/ipv4/ip_forward` of dtun's network namespace) is turned on while
//! dtun runs with `-nat` or `-client-to-client on` (groups alone leave it as the host has it);
//! on exit, when no other `dtun-*` table is left, it is put back to the recorded value and the
//! record removed. A dtun killed with `kill -9` cannot do that: its table goes with it, but
//! forwarding stays on until the next dtun with a table starts in the namespace and, finding no
//! other dtun table, puts back the recorded value. The dtuns of a namespace take these steps
//! one at a time (the RunDir lock `forwarding`).

mod error;
mod forwarding;
pub(crate) mod sets;
mod socket;

use std::path::Path;

use rustables::error::QueryError;
use rustables::expr::{Immediate, Masquerade, VerdictKind};
use rustables::{
    Batch, Chain, ChainPolicy, ChainType, Hook, HookClass, MsgType, ProtocolFamily, Rule, Table,
};

pub use error::NftError;
use error::{classify, classify_errno};
use forwarding::Decided;
use socket::NftSocket;

use crate::rundir::RunDir;
pub use sets::group_set;

/// Where the kernel keeps the IPv4 forwarding switch of this network namespace.
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Table names start with this; the rest is the instance.
pub const TABLE_PREFIX: &str = "dtun-";
/// NFT_TABLE_F_OWNER (Linux 5.12): the table belongs to the netlink socket that made it.
const OWNER: u32 = rustables::sys::NFT_TABLE_F_OWNER;

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
    /// The socket that made the table: it owns it (the kernel deletes the table when the socket
    /// closes, so also when dtun dies), and every change goes over it.
    sock: NftSocket,
    /// Where the forwarding value from before any dtun is kept.
    dir: RunDir,
    /// IPv4 forwarding as it was before any dtun changed it.
    forward_before: Option<u8>,
    /// Isolation groups are enforced: each TUN also goes into its group's set.
    grouped: bool,
    /// The group sets that exist in the table.
    group_sets: std::collections::HashSet<String>,
    /// The index of each TUN in the sets, by name (to take it out after the device is gone).
    indexes: std::collections::HashMap<String, u32>,
    /// Set ids already used in this table's batches.
    next_set_id: u32,
    /// Updates of the sets that failed.
    failures: u64,
}

/// The `dtun-*` tables of this namespace, each with whether a socket owns it (a table with an
/// owner lives exactly as long as the dtun that made it).
fn dtun_tables() -> Result<Vec<(String, bool)>, QueryError> {
    Ok(rustables::list_tables()?
        .into_iter()
        .filter_map(|t| {
            let name = t.get_name()?.clone();
            let owned = t.get_flags().is_some_and(|f| f & OWNER != 0);
            name.starts_with(TABLE_PREFIX).then_some((name, owned))
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

/// The two forward rules of `-nat` (both families): `iif @tuns accept` (the tunnel out)
/// and `oif @tuns ct state established,related accept` (the replies).
pub(crate) fn nat_forward(
    tuns: &rustables::Set,
) -> Result<[Vec<rustables::expr::RawExpression>; 2], QueryError> {
    use rustables::expr::{Bitwise, Cmp, CmpOp, Conntrack, ConntrackKey, ct::ConnTrackState};
    let mut out = sets::dev_in(tuns, true)?;
    out.push(verdict(VerdictKind::Accept));
    let mut replies = sets::dev_in(tuns, false)?;
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

/// The batch that replaces (or creates) the table, owned by the sending socket when `owned`,
/// with the sets of `groups` (names as in the credentials file) when the policy is grouped. Set
/// ids 1 to the number of sets are used.
fn build(
    table_name: &str,
    policy: &Policy,
    forward_before: u8,
    groups: &[String],
    owned: bool,
) -> Result<Batch, QueryError> {
    let plain = Table::new(ProtocolFamily::Inet).with_name(table_name);
    let table = Table::new(ProtocolFamily::Inet)
        .with_name(table_name)
        .with_flags(if owned { OWNER } else { 0 });
    let mut batch = Batch::new();
    // Add (a no-op if a table without an owner exists: one left by a dtun before this one, or
    // on a kernel without owners), delete, create: one atomic replace, fine when it is missing.
    // A table another live dtun owns refuses the first step (EPERM).
    batch.add(&plain, MsgType::Add);
    batch.add(&plain, MsgType::Del);
    batch.add(&table, MsgType::Add);
    let tuns = sets::empty_set(&table, sets::TUNS, 1)?;
    batch.add(&tuns, MsgType::Add);
    let tun_to_tun = || -> Result<Vec<_>, QueryError> {
        let mut e = sets::dev_in(&tuns, true)?;
        e.extend(sets::dev_in(&tuns, false)?);
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
        let mut e = sets::dev_in(&tuns, true)?;
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
        let mut e = sets::dev_in(tuns, true)?;
        e.extend(sets::dev_in(tuns, false)?);
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
        let table = table_name(instance);
        let what = what(&policy);
        let dir = RunDir::open().map_err(NftError::RunDir)?;
        let who = format!("dtun pid {}, instance {instance}", std::process::id());
        // One dtun of the namespace at a time decides about forwarding.
        let _turn = forwarding::turn(&dir, &who)?;
        let existing = dtun_tables().map_err(|e| classify(e, &policy, &table))?;
        if existing.iter().any(|(n, owned)| *n == table && *owned) {
            return Err(NftError::InstanceInUse(instance.to_string()));
        }
        let others = existing.iter().filter(|(n, _)| *n != table).count();
        let Decided { before, now } =
            forwarding::decide(&dir, forward_path, others, policy.needs_forwarding())?;
        let sock = NftSocket::open().map_err(|e| classify(e, &policy, &table))?;
        let send =
            |owned: bool| build(&table, &policy, before, groups, owned).and_then(|b| sock.send(b));
        match send(true) {
            Ok(()) => {}
            // A kernel before 5.12 has no table owners: the table then outlives a kill -9
            // until this instance starts again.
            Err(QueryError::NetlinkError(e)) if e.error.abs() == libc::EOPNOTSUPP => {
                tracing::warn!(
                    "this kernel has no nftables table owners (Linux 5.12): after a kill -9, inet {table} stays until dtun {instance} starts again"
                );
                send(false).map_err(|e| classify(e, &policy, &table))?;
            }
            // The table appeared, owned by a dtun that started meanwhile.
            Err(QueryError::NetlinkError(e))
                if e.error.abs() == libc::EPERM
                    && dtun_tables()
                        .is_ok_and(|t| t.iter().any(|(n, owned)| *n == table && *owned)) =>
            {
                return Err(NftError::InstanceInUse(instance.to_string()));
            }
            Err(e) => return Err(classify(e, &policy, &table)),
        }
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
            sock,
            dir,
            forward_before: Some(before),
            grouped,
            next_set_id: 2 + group_sets.len() as u32,
            group_sets,
            indexes: Default::default(),
            failures: 0,
        };
        if policy.needs_forwarding()
            && now != 1
            && let Err(e) = forwarding::write(forward_path, 1)
        {
            drop(_turn);
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

    /// Sends a batch that changes the table, over the socket that owns it.
    pub(crate) fn send(&self, batch: Batch) -> Result<(), QueryError> {
        self.sock.send(batch)
    }

    /// Deletes the table; puts forwarding back when no other dtun table is left.
    pub fn remove(self) {
        self.remove_at(Path::new(IP_FORWARD))
    }

    fn remove_at(self, forward_path: &Path) {
        let table = Table::new(ProtocolFamily::Inet).with_name(self.table.as_str());
        let mut batch = Batch::new();
        batch.add(&table, MsgType::Del);
        if let Err(e) = self.sock.send(batch) {
            tracing::warn!("cannot delete nftables table inet {}: {e}", self.table);
        }
        // Closing the socket deletes an owned table in any case.
        drop(self.sock);
        let who = format!("dtun pid {}, table {}", std::process::id(), self.table);
        let _turn = match forwarding::turn(&self.dir, &who) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("{e}; IPv4 forwarding left as is");
                return;
            }
        };
        match dtun_tables() {
            Ok(t) if t.iter().all(|(n, _)| *n == self.table) => {
                if let Some(before) = self.forward_before {
                    forwarding::restore(&self.dir, forward_path, before);
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("cannot list nftables tables: {e}; IPv4 forwarding left as is")
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
