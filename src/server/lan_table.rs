//! Where a server routes its clients' LANs: its own routing table
//! [`LAN_TABLE`](crate::routes::LAN_TABLE), which every packet but dtun's own datagrams consults
//! before the main table (as wg-quick keeps its tunnel's routes from its own socket):
//!
//! ```text
//! 25718: not from all fwmark 0x6474 lookup 25717
//! table 25717: 192.168.1.0/24 via PEER dev dtunN, fd77::/64 dev dtunN, …  (accepted LANs)
//! ```
//!
//! The server's socket carries the mark [`FWMARK`](crate::routes::FWMARK) (SO_MARK,
//! [`super::bind`]), so its handshake replies and records to a client always take the main
//! table's path, even when that client's outer address lies inside a LAN another client
//! announced earlier (before, such a client's datagrams went into the announcer's TUN: it
//! could not connect, and the announcer saw its traffic). Everything else (forwarded packets,
//! the server's own) reaches the LANs as before. The rule comes with the first LAN route and
//! goes at exit once no dtun's LAN is left in the table (routes leave with their TUN, so a
//! `kill -9` leaves only the rule, which then matches an empty table: harmless, and taken
//! over by the next start).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::netlink::{Netlink, NetlinkError};
use crate::routes::{FWMARK, LAN_TABLE, PRIO_LANS};

/// Whether this server put the rule in place.
#[derive(Debug, Default)]
pub(super) struct LanTable {
    rule: bool,
}

impl LanTable {
    /// Routes `net` (via `gateway`) into the TUN `index`, the rule first if need be.
    pub(super) async fn add(
        &mut self,
        nl: &Netlink,
        net: IpNet,
        gateway: Option<IpAddr>,
        index: u32,
    ) -> Result<(), NetlinkError> {
        if !self.rule {
            nl.add_unmarked_rule(FWMARK, LAN_TABLE, PRIO_LANS).await?;
            self.rule = true;
        }
        nl.add_route_in(LAN_TABLE, net, gateway, index).await
    }

    pub(super) async fn del(nl: &Netlink, net: IpNet, index: u32) -> Result<(), NetlinkError> {
        nl.del_route_in(LAN_TABLE, net, index).await
    }

    /// At exit, after the devices went: removes the rule unless another dtun still has LANs
    /// in the table.
    pub(super) async fn close(&mut self, nl: &Netlink) {
        if !self.rule {
            return;
        }
        match nl.table_has_routes(LAN_TABLE).await {
            Ok(true) => tracing::debug!("another dtun routes LANs: its rule stays"),
            Ok(false) => {
                if let Err(e) = nl.del_rules(is_lan_rule).await {
                    tracing::warn!("{e}");
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
        self.rule = false;
    }
}

/// The rule [`LanTable`] adds: its priority and table.
fn is_lan_rule(rule: &rtnetlink::packet_route::rule::RuleMessage) -> bool {
    use rtnetlink::packet_route::rule::RuleAttribute;
    let attr = |want: &dyn Fn(&RuleAttribute) -> bool| rule.attributes.iter().any(want);
    attr(&|a| matches!(a, RuleAttribute::Priority(p) if *p == PRIO_LANS))
        && attr(&|a| matches!(a, RuleAttribute::Table(t) if *t == LAN_TABLE))
}
