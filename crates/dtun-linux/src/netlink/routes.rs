//! Routes and policy rules over rtnetlink: adding and deleting routes in a table, the rules
//! that pick a table by firewall mark, and what route authorisation reads of this host's
//! routes (its networks, addresses and gateways).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleFlags, RuleMessage};
use rtnetlink::{IpVersion, RouteMessageBuilder};

use super::{MAIN_TABLE, Netlink, NetlinkError, is_not_found_errno, local_and_peer, raw_errno};

impl Netlink {
    /// `ip route replace DST [via GW] dev INDEX` in the main table, proto static.
    pub async fn add_route(
        &self,
        dst: IpNet,
        gateway: Option<IpAddr>,
        index: u32,
    ) -> Result<(), NetlinkError> {
        self.add_route_in(MAIN_TABLE, dst, gateway, index).await
    }

    /// `ip route replace DST [via GW] dev INDEX table TABLE`, proto static.
    pub async fn add_route_in(
        &self,
        table: u32,
        dst: IpNet,
        gateway: Option<IpAddr>,
        index: u32,
    ) -> Result<(), NetlinkError> {
        let message = match route_message(dst, gateway, index, table) {
            Ok(message) => message,
            Err(reason) => {
                let op = describe_route("add", dst, gateway, &self.link_name(index).await);
                return Err(NetlinkError::Other { op, reason });
            }
        };
        if let Err(e) = self.handle.route().add(message).replace().execute().await {
            let op = describe_route("add", dst, gateway, &self.link_name(index).await);
            return Err(NetlinkError::new(op, e));
        }
        Ok(())
    }

    /// Deletes that route (dst + oif) from the main table; Ok(()) if it is already gone.
    pub async fn del_route(&self, dst: IpNet, index: u32) -> Result<(), NetlinkError> {
        self.del_route_in(MAIN_TABLE, dst, index).await
    }

    /// Deletes that route (dst + oif) from `table`; Ok(()) if it is already gone.
    pub async fn del_route_in(
        &self,
        table: u32,
        dst: IpNet,
        index: u32,
    ) -> Result<(), NetlinkError> {
        let mut builder = RouteMessageBuilder::<IpAddr>::new();
        builder = match builder.destination_prefix(dst.addr(), dst.prefix_len()) {
            Ok(builder) => builder,
            Err(e) => {
                let op = describe_route("delete", dst, None, &self.link_name(index).await);
                return Err(NetlinkError::Other {
                    op,
                    reason: e.to_string(),
                });
            }
        };
        // Like `ip route del`: match any protocol, type and scope, only dst, table and oif.
        let message = builder
            .output_interface(index)
            .table_id(table)
            .protocol(RouteProtocol::Unspec)
            .scope(RouteScope::NoWhere)
            .kind(RouteType::Unspec)
            .build();
        match self.handle.route().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) if raw_errno(&e).is_some_and(is_not_found_errno) => Ok(()),
            Err(e) => {
                let op = describe_route("delete", dst, None, &self.link_name(index).await);
                Err(NetlinkError::new(op, e))
            }
        }
    }

    /// Whether `table` holds any route, of either family.
    pub async fn table_has_routes(&self, table: u32) -> Result<bool, NetlinkError> {
        let op = || format!("list the routes of table {table}");
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            if self
                .routes(family, op)
                .await?
                .iter()
                .any(|r| route_table(r) == table)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// `ip rule add not fwmark MARK lookup TABLE priority PRIO`, for IPv4 and IPv6; one that
    /// is there already is fine.
    pub async fn add_unmarked_rule(
        &self,
        mark: u32,
        table: u32,
        priority: u32,
    ) -> Result<(), NetlinkError> {
        for v6 in [false, true] {
            self.add_unmarked_rule_for(v6, mark, table, priority)
                .await?;
        }
        Ok(())
    }

    /// [`Netlink::add_unmarked_rule`] for one family (`v6`: IPv6, else IPv4).
    pub async fn add_unmarked_rule_for(
        &self,
        v6: bool,
        mark: u32,
        table: u32,
        priority: u32,
    ) -> Result<(), NetlinkError> {
        let mut req = self
            .handle
            .rule()
            .add()
            .table_id(table)
            .priority(priority)
            .fw_mark(mark)
            .action(RuleAction::ToTable);
        req.message_mut().header.flags = RuleFlags::Invert;
        let r = if v6 {
            req.v6().execute().await
        } else {
            req.v4().execute().await
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if raw_errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => {
                let family = if v6 { "IPv6" } else { "IPv4" };
                let op = format!("add {family} rule `not fwmark {mark:#x} lookup {table}`");
                Err(NetlinkError::new(op, e))
            }
        }
    }

    /// Deletes every rule of either family that `ours` picks; returns how many.
    pub async fn del_rules(
        &self,
        ours: impl Fn(&RuleMessage) -> bool,
    ) -> Result<usize, NetlinkError> {
        let mut count = 0;
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(version)
                .execute()
                .try_collect()
                .await
                .map_err(|e| NetlinkError::new("list routing rules".into(), e))?;
            for rule in rules.into_iter().filter(&ours) {
                match self.handle.rule().del(rule).execute().await {
                    Ok(()) => count += 1,
                    Err(e) if raw_errno(&e).is_some_and(is_not_found_errno) => {}
                    Err(e) => {
                        return Err(NetlinkError::new("delete a dtun routing rule".into(), e));
                    }
                }
            }
        }
        Ok(count)
    }

    /// Destinations of the main-table routes whose output interface is `index`, IPv4 and IPv6,
    /// including the ones the kernel made itself (for example the peer /32 of a p2p address).
    pub async fn routes_on(&self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        let mut destinations = Vec::new();
        let name = self.link_name(index).await;
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let routes = self
                .routes(family, || format!("list routes on {name}"))
                .await?;
            destinations.extend(
                routes
                    .iter()
                    .filter(|route| route_table(route) == u32::from(RouteHeader::RT_TABLE_MAIN))
                    .filter(|route| route_oif(route) == Some(index))
                    .filter_map(route_destination),
            );
        }
        Ok(destinations)
    }

    /// The networks this host reaches other than through the links in `exclude`: the prefix
    /// of every address, and every route of the main table and of the servers' LAN table
    /// (another dtun's clients' LANs) but the default ones (both families;
    /// link-local and multicast left out). Route authorisation refuses a peernet that
    /// overlaps any of them.
    pub async fn networks_elsewhere(&self, exclude: &[u32]) -> Result<Vec<IpNet>, NetlinkError> {
        let op = || "list this host's addresses and routes".to_string();
        let mut nets = Vec::new();
        let addrs = self.all_addresses(op).await?;
        for message in &addrs {
            if exclude.contains(&message.header.index) {
                continue;
            }
            if let (Some(local), _) = local_and_peer(message)
                && let Ok(net) = IpNet::new(local, message.header.prefix_len)
            {
                nets.push(net.trunc());
            }
        }
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let routes = self.routes(family, op).await?;
            nets.extend(
                routes
                    .iter()
                    .filter(|r| {
                        let table = route_table(r);
                        table == MAIN_TABLE || table == crate::routes::LAN_TABLE
                    })
                    .filter(|r| route_oif(r).is_none_or(|oif| !exclude.contains(&oif)))
                    .filter_map(route_destination)
                    .filter(|n| n.prefix_len() > 0),
            );
        }
        nets.retain(|n| match n {
            IpNet::V4(_) => true,
            IpNet::V6(v6) => {
                let seg = v6.addr().segments()[0];
                seg & 0xffc0 != 0xfe80 && seg & 0xff00 != 0xff00
            }
        });
        nets.sort();
        nets.dedup();
        Ok(nets)
    }

    /// Every route of `family`, in every table; `op` names what it is for in an error.
    pub(crate) async fn routes(
        &self,
        family: AddressFamily,
        op: impl Fn() -> String,
    ) -> Result<Vec<RouteMessage>, NetlinkError> {
        let mut query = RouteMessageBuilder::<IpAddr>::new().build();
        query.header.address_family = family;
        self.handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new(op(), e))
    }

    /// Every address of every link; `op` names what it is for in an error.
    async fn all_addresses(
        &self,
        op: impl Fn() -> String,
    ) -> Result<Vec<AddressMessage>, NetlinkError> {
        self.handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new(op(), e))
    }

    /// This host's own addresses and the gateways (next hops) of its routes, in every table,
    /// leaving out the links in `exclude` (our TUNs). Route authorisation refuses a peernet
    /// that covers any of them: routing one into a client's TUN would take the server's own
    /// traffic with it.
    pub async fn own_addresses_and_gateways(
        &self,
        exclude: &[u32],
    ) -> Result<(Vec<IpAddr>, Vec<IpAddr>), NetlinkError> {
        let op = || "list this host's addresses and gateways".to_string();
        let addrs = self.all_addresses(op).await?;
        let mut own = Vec::new();
        for message in addrs.iter().filter(|m| !exclude.contains(&m.header.index)) {
            let (local, peer) = local_and_peer(message);
            own.extend(local);
            // The far end of another point-to-point link is a next hop too.
            own.extend(peer.filter(|p| Some(*p) != local));
        }
        let mut gateways = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let routes = self.routes(family, op).await?;
            for route in routes
                .iter()
                .filter(|r| route_oif(r).is_none_or(|oif| !exclude.contains(&oif)))
            {
                gateways.extend(route_gateways(&route.attributes));
                for hop in route.attributes.iter().filter_map(|a| match a {
                    RouteAttribute::MultiPath(hops) => Some(hops),
                    _ => None,
                }) {
                    for h in hop.iter().filter(|h| !exclude.contains(&h.interface_index)) {
                        gateways.extend(route_gateways(&h.attributes));
                    }
                }
            }
        }
        own.sort();
        own.dedup();
        gateways.sort();
        gateways.dedup();
        Ok((own, gateways))
    }
}

/// The RTM_NEWROUTE message for `ip route replace DST [via GW] dev INDEX`.
pub(super) fn route_message(
    dst: IpNet,
    gateway: Option<IpAddr>,
    index: u32,
    table: u32,
) -> Result<RouteMessage, String> {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .map_err(|e| e.to_string())?
        .output_interface(index)
        .table_id(table);
    match gateway {
        Some(IpAddr::V4(_)) if dst.addr().is_ipv6() => {
            return Err("an IPv6 route cannot have an IPv4 gateway".into());
        }
        // An IPv6 gateway for an IPv4 route becomes RTA_VIA (RFC 5549), as with `ip route`.
        Some(gateway) => builder = builder.gateway(gateway).map_err(|e| e.to_string())?,
        // `ip route` gives device-only IPv4 routes link scope; IPv6 routes stay universe.
        None if dst.addr().is_ipv4() => builder = builder.scope(RouteScope::Link),
        None => {}
    }
    Ok(builder.build())
}

/// `add route 10.0.0.0/24 via 10.86.0.2 on dtun0` and the like.
pub(super) fn describe_route(
    verb: &str,
    dst: IpNet,
    gateway: Option<IpAddr>,
    link: &str,
) -> String {
    match gateway {
        Some(gateway) => format!("{verb} route {dst} via {gateway} on {link}"),
        None => format!("{verb} route {dst} on {link}"),
    }
}

/// The table a route is in: RTA_TABLE when present (tables above 255), else the header's.
pub(crate) fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

fn route_oif(route: &RouteMessage) -> Option<u32> {
    route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Oif(index) => Some(*index),
            _ => None,
        })
}

/// The gateways (RTA_GATEWAY, RTA_VIA) among a route's or a next hop's attributes.
fn route_gateways(attributes: &[RouteAttribute]) -> impl Iterator<Item = IpAddr> + '_ {
    attributes.iter().filter_map(|attribute| match attribute {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        RouteAttribute::Via(RouteVia::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Via(RouteVia::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })
}

/// A route's destination prefix; a route without RTA_DST is the family's default route.
pub(crate) fn route_destination(route: &RouteMessage) -> Option<IpNet> {
    let addr = route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
            _ => None,
        })
        .or(match route.header.address_family {
            AddressFamily::Inet => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            AddressFamily::Inet6 => Some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
            _ => None,
        })?;
    IpNet::new(addr, route.header.destination_prefix_length).ok()
}
