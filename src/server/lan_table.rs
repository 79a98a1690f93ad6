//! Where a server routes its clients' LANs: its own routing table
//! [`LAN_TABLE`](dtun_linux::routes::LAN_TABLE), which every packet but dtun's own datagrams consults
//! before the main table (as wg-quick keeps its tunnel's routes from its own socket):
//!
//! ```text
//! 25718: not from all fwmark 0x6474 lookup 25717
//! table 25717: 192.168.1.0/24 via PEER dev dtunN, fd77::/64 dev dtunN, …  (accepted LANs)
//! ```
//!
//! The server's socket carries the mark [`FWMARK`](dtun_linux::routes::FWMARK) (SO_MARK,
//! [`super::bind`]), so its handshake replies and records to a client always take the main
//! table's path, even when that client's outer address lies inside a LAN another client
//! announced earlier (before, such a client's datagrams went into the announcer's TUN: it
//! could not connect, and the announcer saw its traffic). Everything else (forwarded packets,
//! the server's own) reaches the LANs as before. The rule comes with the first LAN route and
//! goes at exit once no dtun's LAN is left in the table (routes leave with their TUN, so a
//! `kill -9` leaves only the rule, which then matches an empty table: harmless, and taken
//! over by the next start). Each family has its own rule; on a kernel without policy routing
//! for a family (no multiple tables, or IPv6 off) that family's LANs go in the main table as
//! before, with a warning.

use std::net::IpAddr;

use ipnet::IpNet;

use dtun_linux::netlink::{MAIN_TABLE, Netlink, NetlinkError};
use dtun_linux::routes::{FWMARK, LAN_TABLE, PRIO_LANS};
use dtun_linux::rundir::{Lock, LockError, RunDir};

/// The per-namespace lock every server that routes LANs holds shared.
const LOCK: &str = "lans";

/// Where one family's LAN routes go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Place {
    /// No LAN of this family yet.
    #[default]
    Untried,
    /// [`LAN_TABLE`], behind our rule.
    Table,
    /// The main table: this kernel has no policy routing for the family (a router's kernel
    /// without CONFIG_IP_MULTIPLE_TABLES, or IPv6 turned off), so LANs route as before.
    Main,
}

/// Where each family's LAN routes go, and so whether this server put a rule in place.
#[derive(Debug, Default)]
pub(super) struct LanTable {
    v4: Place,
    v6: Place,
    /// Our share of the lock `lans`, taken before our first rule (`None` before, or when it
    /// could not be taken).
    share: Option<Lock>,
    /// The lock was tried (and failed, if `share` is `None`).
    tried_lock: bool,
}

impl LanTable {
    /// Routes `net` (via `gateway`) into the TUN `index`, the family's rule first if need be.
    pub(super) async fn add(
        &mut self,
        nl: &Netlink,
        net: IpNet,
        gateway: Option<IpAddr>,
        index: u32,
    ) -> Result<(), NetlinkError> {
        let v6 = net.addr().is_ipv6();
        let place = if v6 { &mut self.v6 } else { &mut self.v4 };
        if *place == Place::Untried {
            if !self.tried_lock {
                self.tried_lock = true;
                self.share = take_share().await;
            }
            let place = if v6 { &mut self.v6 } else { &mut self.v4 };
            *place = match nl
                .add_unmarked_rule_for(v6, FWMARK, LAN_TABLE, PRIO_LANS)
                .await
            {
                Ok(()) => Place::Table,
                Err(e) if no_policy_routing(&e) => {
                    tracing::warn!(
                        "{e}: this kernel has no policy routing for the family, so clients' LANs go in the main table; a client whose outer address lies in another client's LAN then cannot connect"
                    );
                    Place::Main
                }
                Err(e) => return Err(e),
            };
        }
        nl.add_route_in(self.table(v6), net, gateway, index).await
    }

    pub(super) async fn del(
        &self,
        nl: &Netlink,
        net: IpNet,
        index: u32,
    ) -> Result<(), NetlinkError> {
        nl.del_route_in(self.table(net.addr().is_ipv6()), net, index)
            .await
    }

    fn table(&self, v6: bool) -> u32 {
        match if v6 { self.v6 } else { self.v4 } {
            Place::Main => MAIN_TABLE,
            Place::Untried | Place::Table => LAN_TABLE,
        }
    }

    /// At exit, after the devices went: removes the rules when no other live dtun holds the
    /// lock `lans` (then none routes LANs through the table any more).
    pub(super) async fn close(&mut self, nl: &Netlink) {
        let share = self.share.take();
        let ours = self.v4 == Place::Table || self.v6 == Place::Table;
        *self = LanTable::default();
        let Some(share) = share else {
            if ours {
                tracing::debug!(
                    "LAN table rule left in place (no lock to tell whether another dtun uses it)"
                );
            }
            return;
        };
        match share.last_holder() {
            Ok(true) => {
                if let Err(e) = nl.del_rules(is_lan_rule).await {
                    tracing::warn!("{e}");
                }
            }
            Ok(false) => tracing::debug!("another dtun routes LANs: the LAN table's rule stays"),
            Err(e) => tracing::warn!(
                "cannot tell whether another dtun routes LANs ({e}): the LAN table's rule stays"
            ),
        }
        // Dropped only now: a server starting meanwhile waits for the rule to be gone before
        // it adds its own.
        drop(share);
    }
}

/// Our share of the lock `lans`, or `None`, with a warning, when it cannot be had: the rule is
/// then never removed by us (the safe side: a rule over an empty table is harmless).
async fn take_share() -> Option<Lock> {
    match RunDir::open() {
        Ok(dir) => take_share_in(dir).await,
        Err(e) => {
            tracing::warn!("{e}: the LAN table's rule will be left in place at exit");
            None
        }
    }
}

/// How often, and how far apart, [`take_share_in`] tries the lock.
const SHARE_TRIES: u32 = 5;
const SHARE_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// [`take_share`] in `dir`. Never blocks the manager: each try is a non-blocking `flock`, and
/// a few tries 20 ms apart (under 0.1 s, once in a server's life) cover the moment a server at
/// its exit holds the lock exclusively to remove the rule. Anyone holding it longer (a process
/// of the runtime directory's group: nobody else may open the file) only makes us keep the rule
/// at exit.
async fn take_share_in(dir: RunDir) -> Option<Lock> {
    let mut tries = 0;
    loop {
        tries += 1;
        match dir.lock_shared(LOCK) {
            Ok(lock) => return Some(lock),
            Err(LockError::Held { .. }) if tries < SHARE_TRIES => {
                tokio::time::sleep(SHARE_RETRY).await;
            }
            Err(LockError::Held { holder }) => {
                tracing::warn!(
                    "the LAN table's lock {} is held by {holder}: going on without it, so the table's rule will be left in place at exit",
                    dir.path(&format!("{LOCK}.lock")).display()
                );
                return None;
            }
            Err(e) => {
                tracing::warn!("{e}: the LAN table's rule will be left in place at exit");
                return None;
            }
        }
    }
}

/// The kernel has no policy routing for a family: no rules at all (EOPNOTSUPP), or none for
/// this family (EAFNOSUPPORT: built without multiple tables, or IPv6 off).
fn no_policy_routing(e: &NetlinkError) -> bool {
    matches!(e.errno(), Some(libc::EAFNOSUPPORT | libc::EOPNOTSUPP))
}

/// The rule [`LanTable`] adds: its priority and table.
fn is_lan_rule(rule: &rtnetlink::packet_route::rule::RuleMessage) -> bool {
    use rtnetlink::packet_route::rule::RuleAttribute;
    let attr = |want: &dyn Fn(&RuleAttribute) -> bool| rule.attributes.iter().any(want);
    attr(&|a| matches!(a, RuleAttribute::Priority(p) if *p == PRIO_LANS))
        && attr(&|a| matches!(a, RuleAttribute::Table(t) if *t == LAN_TABLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The review's probe p2: someone holding `NETNS.lans.lock` exclusively does not stall the
    /// manager (the caller of [`LanTable::add`]): the share is given up on at once, and the
    /// rule then stays at exit.
    #[tokio::test]
    async fn a_held_lock_does_not_stall_the_manager() {
        let p = std::env::temp_dir().join(format!("dtun-lans-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        let dir = RunDir::at(&p).unwrap();
        let held = dir.lock(LOCK, "a squatter").unwrap();
        let started = std::time::Instant::now();
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            take_share_in(dir.clone()),
        )
        .await;
        assert!(got.is_ok(), "the manager waited 5 s for the lock");
        assert!(got.unwrap().is_none(), "a share beside an exclusive holder");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        drop(held);
        assert!(take_share_in(dir).await.is_some(), "free again: taken");
        std::fs::remove_dir_all(&p).unwrap();
    }

    /// Only "no policy routing here" falls back to the main table; anything else (a missing
    /// capability, say) is an error for the caller.
    #[test]
    fn only_a_kernel_without_rules_falls_back() {
        let err = |errno: i32| NetlinkError::Kernel {
            op: "add rule".into(),
            errno,
        };
        assert!(no_policy_routing(&err(libc::EAFNOSUPPORT)));
        assert!(no_policy_routing(&err(libc::EOPNOTSUPP)));
        assert!(!no_policy_routing(&err(libc::ENOENT)));
        let denied = NetlinkError::PermissionDenied {
            op: "add rule".into(),
            errno: libc::EPERM,
        };
        assert!(!no_policy_routing(&denied));
        let mut t = LanTable::default();
        assert_eq!((t.table(false), t.table(true)), (LAN_TABLE, LAN_TABLE));
        t.v6 = Place::Main;
        assert_eq!((t.table(false), t.table(true)), (LAN_TABLE, MAIN_TABLE));
    }
}
