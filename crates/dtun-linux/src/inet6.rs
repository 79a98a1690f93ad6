//! IPv6 on a TUN device: the kernel's per-device IPv6 switch (`disable_ipv6`, which a host may
//! set for every new device) and the point-to-point IPv6 address pair, over rtnetlink, with
//! IFA_F_NODAD so the address is usable at once (no duplicate address detection delay).

use std::net::Ipv6Addr;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};

use crate::netlink::{Netlink, NetlinkError, raw_errno};
use dtun_proto::pool6::IPV6_MIN_MTU;

/// Why a device cannot carry IPv6, for a warning; the tunnel then runs with IPv4 only.
#[derive(Debug, thiserror::Error)]
pub enum Inet6Error {
    #[error("MTU {0} is below IPv6's minimum of {IPV6_MIN_MTU}: IPv6 inside the tunnel is off")]
    Mtu(u32),
    #[error("this host has no IPv6 (no {0}): IPv6 inside the tunnel is off")]
    NoIpv6(String),
    #[error("cannot turn IPv6 on for {dev} ({path}: {err}): IPv6 inside the tunnel is off")]
    Sysctl {
        dev: String,
        path: String,
        err: std::io::Error,
    },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

/// Makes sure the kernel runs IPv6 on `dev`: a host with `net.ipv6.conf.default.disable_ipv6=1`
/// gives every new device IPv6 off, and then an IPv6 address cannot be added.
pub fn enable_on(dev: &str) -> Result<(), Inet6Error> {
    let path = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
    let sysctl = |err| Inet6Error::Sysctl {
        dev: dev.to_string(),
        path: path.clone(),
        err,
    };
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "0" => Ok(()),
        Ok(_) => std::fs::write(&path, b"0").map_err(sysctl),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::path::Path::new("/proc/sys/net/ipv6").exists() {
                Err(sysctl(e))
            } else {
                Err(Inet6Error::NoIpv6("/proc/sys/net/ipv6".into()))
            }
        }
        Err(e) => Err(sysctl(e)),
    }
}

/// Turns IPv6 on for the device and gives it the pair `local` peer `peer`, if its MTU allows.
pub async fn configure(
    nl: &Netlink,
    dev: &str,
    index: u32,
    mtu: u32,
    local: Ipv6Addr,
    peer: Ipv6Addr,
) -> Result<(), Inet6Error> {
    if mtu < IPV6_MIN_MTU {
        return Err(Inet6Error::Mtu(mtu));
    }
    enable_on(dev)?;
    nl.add_p2p_address6(index, local, peer).await?;
    Ok(())
}

impl Netlink {
    /// Point-to-point IPv6 address, like `ip -6 addr add LOCAL peer PEER/128 dev X nodad`.
    /// Succeeds if that exact address is already there.
    pub async fn add_p2p_address6(
        &self,
        index: u32,
        local: Ipv6Addr,
        peer: Ipv6Addr,
    ) -> Result<(), NetlinkError> {
        let mut request = self.handle().address().add(index, local.into(), 128);
        let message = request.message_mut();
        message.header.flags = AddressHeaderFlags::Nodad;
        for attribute in &mut message.attributes {
            if let AddressAttribute::Address(address) = attribute {
                *address = peer.into();
            }
        }
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(e) if raw_errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(NetlinkError::new(
                format!("add address {local} peer {peer}/128 on ifindex {index}"),
                e,
            )),
        }
    }

    /// Removes the link's IPv6 addresses other than link-local ones (a device readdressed, or
    /// a server that stopped giving IPv6).
    pub async fn flush_addresses6(&self, index: u32) -> Result<(), NetlinkError> {
        let op = || format!("remove the IPv6 addresses of ifindex {index}");
        let mut request = self.handle().address().get().set_link_index_filter(index);
        request.message_mut().header.family = AddressFamily::Inet6;
        let messages: Vec<_> = request
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new(op(), e))?;
        for message in messages {
            let link_local = message.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Address(std::net::IpAddr::V6(ip))
                    if ip.segments()[0] & 0xffc0 == 0xfe80)
            });
            if message.header.family != AddressFamily::Inet6
                || message.header.index != index
                || link_local
            {
                continue;
            }
            match self.handle().address().del(message).execute().await {
                Ok(()) => {}
                Err(e)
                    if raw_errno(&e).is_some_and(|n| {
                        n == libc::EADDRNOTAVAIL || crate::netlink::is_not_found_errno(n)
                    }) => {}
                Err(e) => return Err(NetlinkError::new(op(), e)),
            }
        }
        Ok(())
    }
}
