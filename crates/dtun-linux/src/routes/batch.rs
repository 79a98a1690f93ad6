//! The netlink plumbing of dtun's routing tables (the tunnel's and the kill switch's): routes
//! added and deleted in pipelined batches ([`IN_FLIGHT`] requests at a time, not one round
//! trip each), the rules in front of a table, and route messages with dtun's protocol.

use std::net::IpAddr;

use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute};

use super::{FWMARK, ROUTE_PROTOCOL};
use crate::netlink::{Netlink, NetlinkError, is_not_found_errno, raw_errno, route_table};

/// Netlink requests in flight at once while adding or removing many routes.
const IN_FLIGHT: usize = 256;

/// The rules in front of `table`: `lookup main suppress_prefixlength 0` at `prio_suppress`
/// (with `-route all`: the main table's routes but its default win), then `not fwmark FWMARK
/// lookup TABLE` at `prio_table`. One already there is fine.
pub(super) async fn add_rules(
    nl: &Netlink,
    all: bool,
    table: u32,
    prio_suppress: u32,
    prio_table: u32,
) -> Result<(), NetlinkError> {
    let handle = nl.handle();
    for v6 in [false, true] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        if all {
            let mut req = handle
                .rule()
                .add()
                .table_id(u32::from(RouteHeader::RT_TABLE_MAIN))
                .priority(prio_suppress)
                .action(RuleAction::ToTable);
            req.message_mut()
                .attributes
                .push(RuleAttribute::SuppressPrefixLen(0));
            let op = || format!("add {family} rule `lookup main suppress_prefixlength 0`");
            if v6 {
                ok_if_exists(req.v6().execute().await, op)?;
            } else {
                ok_if_exists(req.v4().execute().await, op)?;
            }
        }
    }
    nl.add_unmarked_rule(FWMARK, table, prio_table).await
}

/// Adds (or replaces) routes, [`IN_FLIGHT`] requests at a time.
pub(super) async fn add_batch(
    nl: &Netlink,
    messages: Vec<RouteMessage>,
) -> Result<(), NetlinkError> {
    let handle = nl.handle().clone();
    futures::stream::iter(messages.into_iter().map(|m| {
        let handle = handle.clone();
        async move {
            let what = describe(&m);
            let v6 = m.header.address_family == AddressFamily::Inet6;
            handle
                .route()
                .add(m)
                .replace()
                .execute()
                .await
                .map_err(|e| {
                    let op = format!("add route {what}");
                    // EPERM is a missing CAP_NET_ADMIN; EACCES on an IPv6 route is the
                    // kernel's "IPv6 is disabled on nexthop device".
                    if v6 && raw_errno(&e) == Some(libc::EACCES) {
                        return NetlinkError::Other {
                            op,
                            reason: "IPv6 is disabled on the TUN (net.ipv6.conf.default.disable_ipv6 or .all is 1): enable it, or leave IPv6 prefixes out of -route".into(),
                        };
                    }
                    NetlinkError::new(op, e)
                })
        }
    }))
    .buffer_unordered(IN_FLIGHT)
    .try_for_each(|()| async { Ok(()) })
    .await
}

/// Deletes routes, [`IN_FLIGHT`] requests at a time; one already gone is no error.
pub(super) async fn del_batch(
    nl: &Netlink,
    messages: Vec<RouteMessage>,
) -> Result<(), NetlinkError> {
    let handle = nl.handle().clone();
    futures::stream::iter(messages.into_iter().map(|m| {
        let handle = handle.clone();
        async move {
            let what = describe(&m);
            match handle.route().del(m).execute().await {
                Ok(()) => Ok(()),
                Err(e) if raw_errno(&e).is_some_and(is_not_found_errno) => Ok(()),
                Err(e) => Err(NetlinkError::new(format!("delete route {what}"), e)),
            }
        }
    }))
    .buffer_unordered(IN_FLIGHT)
    .try_for_each(|()| async { Ok(()) })
    .await
}

fn ok_if_exists(
    r: Result<(), rtnetlink::Error>,
    op: impl Fn() -> String,
) -> Result<(), NetlinkError> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if raw_errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(NetlinkError::new(op(), e)),
    }
}

/// A route in `table` with dtun's protocol: `dst dev OIF` (unicast) or `throw dst`,
/// `unreachable dst`.
pub(super) fn route_in(table: u32, dst: IpNet, kind: RouteType, oif: Option<u32>) -> RouteMessage {
    let mut message = RouteMessageBuilder::<IpAddr>::new().build();
    let family = match dst {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    message.header.address_family = family;
    message.header.destination_prefix_length = dst.prefix_len();
    message.header.table = RouteHeader::RT_TABLE_UNSPEC;
    message.header.protocol = RouteProtocol::from(ROUTE_PROTOCOL);
    message.header.kind = kind;
    message.header.scope = RouteScope::Universe;
    message.attributes.push(RouteAttribute::Table(table));
    // A /0 has no destination attribute (never made here, but harmless).
    if dst.prefix_len() > 0 {
        message
            .attributes
            .push(RouteAttribute::Destination(dst.addr().into()));
    }
    if let Some(oif) = oif {
        message.attributes.push(RouteAttribute::Oif(oif));
        if dst.addr().is_ipv4() {
            message.header.scope = RouteScope::Link;
        }
    }
    message
}

/// `10.0.0.0/8 (throw)` and the like, for an error message.
fn describe(m: &RouteMessage) -> String {
    let dst = crate::netlink::route_destination(m)
        .map(|d| d.to_string())
        .unwrap_or_else(|| "?".into());
    format!("{dst} ({:?}) in table {}", m.header.kind, route_table(m))
}
