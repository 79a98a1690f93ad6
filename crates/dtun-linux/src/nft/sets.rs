//! The sets of dtun's nftables table: the interface indexes of this server's TUNs (`tuns`)
//! and, with isolation groups, of each group's TUNs (`group-NAME`, and `ungrouped` for the ids
//! without `group=`). The manager adds a TUN when it creates the device and takes it out when
//! it removes it ([`Firewall::add_tun`], [`Firewall::remove_tun`]), each in one netlink batch
//! over the table's own socket.
//!
//! Indexes, not names: the kernel never gives a new device the index of an old one (it counts
//! up), while a name is free again the moment a device goes. So a device another program
//! makes later under a name one of ours had is never matched (`meta iif`/`oif`).
//!
//! A failed update is counted ([`Firewall::failures`]) and logged, never silent. A TUN that
//! could not be added is not used: the manager refuses the session and removes the device, as a
//! TUN outside the sets would escape the client-to-client and group rules.

use rustables::data_type::DataType;
use rustables::error::QueryError;
use rustables::expr::{Lookup, Meta, MetaType, RawExpression, VerdictKind};
use rustables::set::SetBuilder;
use rustables::{Batch, Chain, MsgType, ProtocolFamily, Rule, Set, Table};

use super::{Firewall, NftError, classify_errno, rule, verdict};

/// The set of every TUN of this server.
pub(crate) const TUNS: &str = "tuns";
/// The chain that accepts traffic within a group.
pub(super) const GROUPS_CHAIN: &str = "groups";

/// An interface index as nf_tables compares it (`meta iif`): 4 bytes, host order.
struct IfIndex(u32);

impl DataType for IfIndex {
    /// nft's `iface_index` type (so `nft list` shows the devices' names).
    const TYPE: u32 = 20;
    const LEN: u32 = 4;

    fn data(&self) -> Vec<u8> {
        self.0.to_ne_bytes().to_vec()
    }
}

/// The set of a group's TUNs (None: the ungrouped ids).
pub fn group_set(group: Option<&str>) -> String {
    match group {
        Some(g) => format!("group-{g}"),
        None => "ungrouped".to_string(),
    }
}

/// An empty set of interface indexes in `table`, with a set id unique in its batch.
pub(crate) fn empty_set(table: &Table, name: &str, id: u32) -> Result<Set, QueryError> {
    let (mut set, _) = SetBuilder::<IfIndex>::new(name, table)?.finish();
    // The builder leaves the family unset (the table's is needed).
    set.family = ProtocolFamily::Inet;
    // nft's userdata (libnftnl's NFTNL_UDATA_SET_KEYBYTEORDER = host order, as nft writes for
    // iface_index): only so that `nft list` shows the elements; the kernel does not read it.
    let mut udata = vec![0u8, 4];
    udata.extend_from_slice(&1u32.to_ne_bytes());
    Ok(set.with_id(id).with_userdata(udata))
}

/// `iif @set` (`input`) or `oif @set`.
pub(crate) fn dev_in(set: &Set, input: bool) -> Result<Vec<RawExpression>, QueryError> {
    let meta = Meta::new(if input { MetaType::Iif } else { MetaType::Oif });
    Ok(vec![meta.into(), Lookup::new(set)?.into()])
}

/// In the groups chain: `iif @set oif @set accept`.
pub(super) fn group_rule(chain: &Chain, set: &Set) -> Result<Rule, QueryError> {
    let mut e = dev_in(set, true)?;
    e.extend(dev_in(set, false)?);
    e.push(verdict(VerdictKind::Accept));
    rule(chain, e)
}

/// The elements message for one device in one set.
fn element(
    table: &Table,
    set: &str,
    index: u32,
) -> Result<rustables::set::SetElementList, QueryError> {
    let mut b = SetBuilder::<IfIndex>::new(set, table)?;
    b.add(&IfIndex(index));
    Ok(b.finish().1)
}

impl Firewall {
    fn table_ref(&self) -> Table {
        Table::new(ProtocolFamily::Inet).with_name(self.table.as_str())
    }

    /// Puts the TUN `tun` of an id in `group` into the sets (and creates the group's set if the
    /// group is new). An error is counted and logged here; the caller must not use the TUN.
    pub fn add_tun(&mut self, tun: &str, group: Option<&str>) -> Result<(), NftError> {
        let index = match crate::sys::if_index(tun) {
            Ok(i) => i,
            Err(e) => {
                self.failures += 1;
                tracing::error!(
                    "nftables: cannot add {tun} to the sets of inet {}: no index for it: {e}",
                    self.table
                );
                return Err(NftError::Device(tun.to_string(), e));
            }
        };
        let table = self.table_ref();
        let mut batch = Batch::new();
        let mut new_set = None;
        let result = (|| -> Result<(), QueryError> {
            batch.add(&element(&table, TUNS, index)?, MsgType::Add);
            if self.grouped {
                let name = group_set(group);
                if !self.group_sets.contains(&name) {
                    let set = empty_set(&table, &name, self.next_set_id)?;
                    batch.add(&set, MsgType::Add);
                    let chain = Chain::new(&table).with_name(GROUPS_CHAIN);
                    batch.add(&group_rule(&chain, &set)?, MsgType::Add);
                    new_set = Some(name.clone());
                }
                batch.add(&element(&table, &name, index)?, MsgType::Add);
            }
            Ok(())
        })()
        .and_then(|()| self.sock.send(batch));
        match result {
            Ok(()) => {
                if let Some(name) = new_set {
                    self.next_set_id += 1;
                    self.group_sets.insert(name);
                }
                self.indexes.insert(tun.to_string(), index);
                tracing::debug!(
                    "nftables: {tun} (index {index}) added to the sets of inet {}",
                    self.table
                );
                Ok(())
            }
            Err(e) => {
                self.failures += 1;
                let e = self.error(e);
                tracing::error!(
                    "nftables: cannot add {tun} to the sets of inet {}: {e} ({} set updates failed so far)",
                    self.table,
                    self.failures
                );
                Err(e)
            }
        }
    }

    /// Takes the TUN `tun` of an id in `group` out of the sets; an error is counted and logged.
    pub fn remove_tun(&mut self, tun: &str, group: Option<&str>) {
        // The index it was added with (the device may be gone by now).
        let Some(index) = self.indexes.remove(tun) else {
            tracing::debug!("nftables: {tun} is not in the sets of inet {}", self.table);
            return;
        };
        let table = self.table_ref();
        let mut batch = Batch::new();
        let result = (|| -> Result<(), QueryError> {
            batch.add(&element(&table, TUNS, index)?, MsgType::Del);
            if self.grouped {
                batch.add(&element(&table, &group_set(group), index)?, MsgType::Del);
            }
            Ok(())
        })()
        .and_then(|()| self.sock.send(batch));
        match result {
            Ok(()) => tracing::debug!("nftables: {tun} out of the sets of inet {}", self.table),
            Err(e) => {
                self.failures += 1;
                tracing::error!(
                    "nftables: cannot take {tun} out of the sets of inet {}: {} ({} set updates failed so far)",
                    self.table,
                    self.error(e),
                    self.failures
                );
            }
        }
    }

    /// Turns isolation groups on in a table made without them (a reload brought the first
    /// `group=`), for `policy` (grouped): in one batch, the `groups` chain with a set for the
    /// ungrouped ids and each of `groups`, every TUN of `members` (name, group) in its group's
    /// set, and the `forward` chain's rules flushed and built again for `policy`. Atomic:
    /// on an error nothing changed.
    pub fn enable_groups(
        &mut self,
        policy: &super::Policy,
        groups: &[String],
        members: &[(String, Option<String>)],
    ) -> Result<(), NftError> {
        let table = self.table_ref();
        let mut batch = Batch::new();
        let first = self.next_set_id;
        let names: Vec<String> = std::iter::once(group_set(None))
            .chain(groups.iter().map(|g| group_set(Some(g))))
            .collect();
        let result = (|| -> Result<(), QueryError> {
            // Looked up by name: the set exists, it is not part of this batch.
            let tuns = empty_set(&table, TUNS, first + names.len() as u32)?;
            let fwd = Chain::new(&table).with_name("forward");
            batch.add(&Rule::new(&fwd)?, MsgType::Del);
            let before = self.forward_before.unwrap_or(1);
            super::forward_rules(&mut batch, &table, &tuns, policy, before, groups, first)?;
            for (tun, group) in members {
                // The index the TUN was added to the sets with (a TUN not in them is in none).
                if let Some(&index) = self.indexes.get(tun) {
                    batch.add(
                        &element(&table, &group_set(group.as_deref()), index)?,
                        MsgType::Add,
                    );
                }
            }
            Ok(())
        })()
        .and_then(|()| self.sock.send(batch));
        match result {
            Ok(()) => {
                self.grouped = true;
                self.next_set_id = first + names.len() as u32 + 1;
                self.group_sets.extend(names);
                tracing::info!(
                    "isolation groups: client-to-client traffic passes only within a group ({} groups and the ungrouped ids; turned on by a reload)",
                    groups.len()
                );
                Ok(())
            }
            Err(e) => {
                self.failures += 1;
                Err(self.error(e))
            }
        }
    }

    /// How many updates of the sets failed.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    fn error(&self, e: QueryError) -> NftError {
        let errno = match &e {
            QueryError::NetlinkError(m) => Some(m.error.abs()),
            _ => None,
        };
        classify_errno(errno, &e.to_string(), "the TUN sets", &self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_in_host_order_as_the_kernel_compares_them() {
        assert_eq!(IfIndex(7).data(), 7u32.to_ne_bytes());
        assert_eq!(IfIndex::LEN as usize, IfIndex(7).data().len());
        assert_eq!(group_set(Some("red")), "group-red");
        assert_eq!(group_set(None), "ungrouped");
    }
}
