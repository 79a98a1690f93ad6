//! What this host reaches directly: the subnets of its own addresses, for the client's check
//! of the address pair a server gives it (src/client/pair.rs).

use futures::TryStreamExt;
use ipnet::IpNet;

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
