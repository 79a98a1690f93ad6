//! What this host reaches and how: the subnets of its own addresses (the client's check of
//! the address pair a server gives it, src/client/pair.rs) and the interface a destination
//! is routed to (whether a pushed DNS server goes through the tunnel, src/dns/via_tunnel.rs).

use futures::TryStreamExt;
use ipnet::IpNet;

use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::RouteAttribute;

use super::{Netlink, NetlinkError, local_and_peer};

impl Netlink {
    /// The on-link subnets of this host: the prefix of every address shorter than a host
    /// route (a /32 or /128 says nothing beyond the address), leaving out the links in
    /// `exclude` (our TUN).
    pub async fn on_link_networks(&self, exclude: &[u32]) -> Result<Vec<IpNet>, NetlinkError> {
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new("list this host's addresses".into(), e))?;
        let mut nets: Vec<IpNet> = addrs
            .iter()
            .filter(|m| !exclude.contains(&m.header.index))
            .filter_map(|m| {
                let (local, _) = local_and_peer(m);
                IpNet::new(local?, m.header.prefix_len).ok()
            })
            .filter(|n| n.prefix_len() < n.max_prefix_len())
            .map(|n| n.trunc())
            .collect();
        nets.sort();
        nets.dedup();
        Ok(nets)
    }
}

impl Netlink {
    /// The output interface the kernel picks for `ip` from an ordinary socket (no mark), as
    /// `ip route get IP` shows it; `None` when it has no route.
    pub async fn route_get_oif(&self, ip: std::net::IpAddr) -> Result<Option<u32>, NetlinkError> {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        let query = RouteMessageBuilder::<std::net::IpAddr>::new()
            .destination_prefix(ip, len)
            .map_err(|e| NetlinkError::Other {
                op: format!("look up the route to {ip}"),
                reason: e.to_string(),
            })?
            .build();
        let mut answers = self.handle.route().get(query).execute();
        match answers.try_next().await {
            Ok(Some(route)) => Ok(route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            })),
            Ok(None) => Ok(None),
            Err(e)
                if matches!(
                    super::raw_errno(&e),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(NetlinkError::new(format!("look up the route to {ip}"), e)),
        }
    }
}
