//! The one place dtun talks to the Linux kernel about links, addresses and routes, over rtnetlink
//! (never by running `ip`); every failure names the operation and the link it was aimed at.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleFlags, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};

/// What the user is told when the kernel refuses a change for lack of privilege.
use crate::ops::privilege::GRANT_NET_ADMIN;

/// The main routing table's number.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// A failed netlink operation. The message says what was being done and to which link; the
/// kernel's errno (if any) is reachable through [`NetlinkError::errno`] and the `is_*` helpers,
/// so callers can treat "already exists" or "not found" as benign where that makes sense.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened, or there was no tokio runtime to drive it.
    #[error("failed to open a netlink socket: {0}")]
    Socket(std::io::Error),
    /// The kernel answered EPERM or EACCES: the process lacks CAP_NET_ADMIN.
    #[error("failed to {op}: dtun needs CAP_NET_ADMIN: {GRANT_NET_ADMIN}")]
    PermissionDenied {
        /// What was being attempted, e.g. `add route 10.0.0.0/24 on dtun0`.
        op: String,
        /// EPERM or EACCES, kept so the original answer is not lost.
        errno: i32,
    },
    /// The kernel refused the request with some other errno.
    #[error("failed to {op}: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// What was being attempted, e.g. `add route 10.0.0.0/24 on dtun0`.
        op: String,
        /// The positive errno the kernel answered with.
        errno: i32,
    },
    /// The request was invalid before it reached the kernel, the connection task is gone, or
    /// the kernel's answer made no sense.
    #[error("failed to {op}: {reason}")]
    Other {
        /// What was being attempted.
        op: String,
        /// Why it failed.
        reason: String,
    },
}

impl NetlinkError {
    /// Wraps an rtnetlink error with a description of the operation.
    pub(crate) fn new(op: String, err: rtnetlink::Error) -> Self {
        match raw_errno(&err) {
            Some(errno) if errno == libc::EPERM || errno == libc::EACCES => {
                NetlinkError::PermissionDenied { op, errno }
            }
            Some(errno) => NetlinkError::Kernel { op, errno },
            None => NetlinkError::Other {
                op,
                reason: match err {
                    rtnetlink::Error::RequestFailed => "the netlink connection is closed".into(),
                    other => other.to_string(),
                },
            },
        }
    }

    /// The errno the kernel answered with, if the kernel answered at all.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::PermissionDenied { errno, .. } | NetlinkError::Kernel { errno, .. } => {
                Some(*errno)
            }
            NetlinkError::Socket(e) => e.raw_os_error(),
            NetlinkError::Other { .. } => None,
        }
    }

    /// True when the kernel said the thing being created is already there (EEXIST).
    pub fn is_already_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// True when the kernel said the link, route or address does not exist
    /// (ENOENT, ESRCH or ENODEV).
    pub fn is_not_found(&self) -> bool {
        self.errno().is_some_and(is_not_found_errno)
    }

    /// True when the kernel refused for lack of CAP_NET_ADMIN (EPERM or EACCES).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, NetlinkError::PermissionDenied { .. })
    }
}

/// The positive errno inside an rtnetlink error, if it carries one.
pub(crate) fn raw_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|code| code.get().abs()),
        _ => None,
    }
}

pub(crate) fn is_not_found_errno(errno: i32) -> bool {
    matches!(errno, libc::ENOENT | libc::ESRCH | libc::ENODEV)
}

/// A handle on one rtnetlink socket. Cheap to clone; all clones share the socket and its
/// connection task, which ends when the last clone is dropped.
#[derive(Clone)]
pub struct Netlink {
    /// Requests go through this; the connection task spawned in [`Netlink::new`] does the I/O.
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace and spawns its connection
    /// task on the current tokio runtime.
    pub fn new() -> Result<Netlink, NetlinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            NetlinkError::Socket(std::io::Error::other(
                "not called from inside a tokio runtime",
            ))
        })?;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        runtime.spawn(connection);
        Ok(Netlink { handle })
    }

    /// The rtnetlink handle, for the modules that build their own requests (src/routes.rs).
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The interface index of the link called `name`.
    pub async fn link_index(&self, name: &str) -> Result<u32, NetlinkError> {
        let op = || format!("look up link {name}");
        let link = self
            .handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await
            .map_err(|e| NetlinkError::new(op(), e))?;
        match link {
            Some(link) => Ok(link.header.index),
            // The kernel answers a named get with ENODEV, so this is only a fallback.
            None => Err(NetlinkError::Kernel {
                op: op(),
                errno: libc::ENODEV,
            }),
        }
    }

    /// Sets the MTU and brings the link up.
    pub async fn set_link_up(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        if let Err(e) = self.handle.link().change(message).execute().await {
            let op = format!("set MTU {mtu} and bring up {}", self.link_name(index).await);
            return Err(NetlinkError::new(op, e));
        }
        Ok(())
    }

    /// Point-to-point IPv4 address, like `ip addr add LOCAL peer PEER/32 dev X` (IFA_LOCAL=local,
    /// IFA_ADDRESS=peer, prefix 32). Succeeds if that exact address is already there.
    pub async fn add_p2p_address(
        &self,
        index: u32,
        local: Ipv4Addr,
        peer: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let mut request = self.handle.address().add(index, local.into(), 32);
        // The builder sets IFA_ADDRESS = IFA_LOCAL; a point-to-point address puts the peer there.
        for attribute in &mut request.message_mut().attributes {
            if let AddressAttribute::Address(address) = attribute {
                *address = peer.into();
            }
        }
        match request.execute().await {
            Ok(()) => Ok(()),
            // EEXIST from RTM_NEWADDR means same local, same peer and same prefix on this link.
            Err(e) if raw_errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => {
                let op = format!(
                    "add address {local} peer {peer}/32 on {}",
                    self.link_name(index).await
                );
                Err(NetlinkError::new(op, e))
            }
        }
    }

    /// Removes every IPv4 address on the link (used when a device's addresses change).
    pub async fn flush_addresses(&self, index: u32) -> Result<(), NetlinkError> {
        let messages = match self.ipv4_address_messages(index).await {
            Ok(messages) => messages,
            Err(e) => {
                let op = format!("list addresses on {}", self.link_name(index).await);
                return Err(NetlinkError::new(op, e));
            }
        };
        for message in messages {
            let (local, _) = local_and_peer(&message);
            match self.handle.address().del(message).execute().await {
                Ok(()) => {}
                // Deleting a primary address takes its secondaries with it, so a later delete in
                // this loop may find its address already gone.
                Err(e)
                    if raw_errno(&e)
                        .is_some_and(|n| n == libc::EADDRNOTAVAIL || is_not_found_errno(n)) => {}
                Err(e) => {
                    let local = local.map_or_else(|| "?".to_string(), |ip| ip.to_string());
                    let op = format!("delete address {local} on {}", self.link_name(index).await);
                    return Err(NetlinkError::new(op, e));
                }
            }
        }
        Ok(())
    }

    /// IPv4 addresses on the link as (local, peer) pairs; peer == local when the address is not
    /// point-to-point.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, NetlinkError> {
        let messages = match self.ipv4_address_messages(index).await {
            Ok(messages) => messages,
            Err(e) => {
                let op = format!("list addresses on {}", self.link_name(index).await);
                return Err(NetlinkError::new(op, e));
            }
        };
        Ok(messages
            .iter()
            .filter_map(|message| match local_and_peer(message) {
                (Some(IpAddr::V4(local)), Some(IpAddr::V4(peer))) => Some((local, peer)),
                _ => None,
            })
            .collect())
    }

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
                Ok(()) => {}
                Err(e) if raw_errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => {
                    let family = if v6 { "IPv6" } else { "IPv4" };
                    let op = format!("add {family} rule `not fwmark {mark:#x} lookup {table}`");
                    return Err(NetlinkError::new(op, e));
                }
            }
        }
        Ok(())
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
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessageBuilder::<IpAddr>::new().build();
            query.header.address_family = family;
            let routes: Result<Vec<RouteMessage>, _> =
                self.handle.route().get(query).execute().try_collect().await;
            let routes = match routes {
                Ok(routes) => routes,
                Err(e) => {
                    let op = format!("list routes on {}", self.link_name(index).await);
                    return Err(NetlinkError::new(op, e));
                }
            };
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
    async fn routes(
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

    /// Deletes a link; Ok(()) if already gone.
    pub async fn del_link(&self, index: u32) -> Result<(), NetlinkError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if raw_errno(&e).is_some_and(is_not_found_errno) => Ok(()),
            Err(e) => {
                let op = format!("delete link {}", self.link_name(index).await);
                Err(NetlinkError::new(op, e))
            }
        }
    }

    /// Every IPv4 address message on the link.
    async fn ipv4_address_messages(
        &self,
        index: u32,
    ) -> Result<Vec<AddressMessage>, rtnetlink::Error> {
        let mut request = self.handle.address().get().set_link_index_filter(index);
        request.message_mut().header.family = AddressFamily::Inet;
        let messages: Vec<AddressMessage> = request.execute().try_collect().await?;
        Ok(messages
            .into_iter()
            .filter(|message| message.header.family == AddressFamily::Inet)
            .collect())
    }

    /// The link's name for an error message, or `ifindex N` if it cannot be found. Only called
    /// once something has already failed, so the happy path costs no extra request.
    async fn link_name(&self, index: u32) -> String {
        let link = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await;
        link.ok()
            .flatten()
            .and_then(|link| {
                link.attributes
                    .into_iter()
                    .find_map(|attribute| match attribute {
                        LinkAttribute::IfName(name) => Some(name),
                        _ => None,
                    })
            })
            .unwrap_or_else(|| format!("ifindex {index}"))
    }
}

/// The RTM_NEWROUTE message for `ip route replace DST [via GW] dev INDEX`.
fn route_message(
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
fn describe_route(verb: &str, dst: IpNet, gateway: Option<IpAddr>, link: &str) -> String {
    match gateway {
        Some(gateway) => format!("{verb} route {dst} via {gateway} on {link}"),
        None => format!("{verb} route {dst} on {link}"),
    }
}

/// IFA_LOCAL and IFA_ADDRESS of an address message, local falling back to address.
fn local_and_peer(message: &AddressMessage) -> (Option<IpAddr>, Option<IpAddr>) {
    let mut local = None;
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    (local.or(address), address.or(local))
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

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::ErrorMessage;

    fn kernel_error(errno: i32) -> rtnetlink::Error {
        let mut message = ErrorMessage::default();
        message.code = std::num::NonZeroI32::new(-errno);
        rtnetlink::Error::NetlinkError(message)
    }

    #[test]
    fn eexist_message_names_op_and_errno() {
        let dst: IpNet = "10.0.0.0/24".parse().unwrap();
        let gw: IpAddr = "10.86.0.2".parse().unwrap();
        let op = describe_route("add", dst, Some(gw), "dtun0");
        let err = NetlinkError::new(op, kernel_error(libc::EEXIST));
        assert_eq!(
            err.to_string(),
            "failed to add route 10.0.0.0/24 via 10.86.0.2 on dtun0: File exists (os error 17)"
        );
        assert!(err.is_already_exists());
        assert!(!err.is_not_found());
    }

    #[test]
    fn eperm_and_eacces_ask_for_cap_net_admin() {
        for errno in [libc::EPERM, libc::EACCES] {
            let err = NetlinkError::new("delete link dtun0".into(), kernel_error(errno));
            assert_eq!(
                err.to_string(),
                format!("failed to delete link dtun0: dtun needs CAP_NET_ADMIN: {GRANT_NET_ADMIN}")
            );
            assert!(err.is_permission_denied());
            assert_eq!(err.errno(), Some(errno));
        }
    }

    #[test]
    fn not_found_errnos() {
        for errno in [libc::ENOENT, libc::ESRCH, libc::ENODEV] {
            assert!(NetlinkError::new("x".into(), kernel_error(errno)).is_not_found());
        }
        let closed = NetlinkError::new("x".into(), rtnetlink::Error::RequestFailed);
        assert_eq!(closed.errno(), None);
        assert_eq!(
            closed.to_string(),
            "failed to x: the netlink connection is closed"
        );
    }

    #[test]
    fn ipv6_route_with_ipv4_gateway_is_refused_before_the_kernel() {
        let dst: IpNet = "fd00::/64".parse().unwrap();
        assert!(route_message(dst, Some("10.0.0.1".parse().unwrap()), 1, MAIN_TABLE).is_err());
    }
}
