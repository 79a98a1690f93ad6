//! Route and source authorisation, as plain functions: which LAN a client may announce (so
//! nobody can hijack the server's traffic with `0.0.0.0/0`), and which inner source addresses
//! a client's packets may carry (WireGuard's AllowedIPs idea).

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

/// Why an announced peernet is not routed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a default route is never installed")]
    Default,
    #[error("it covers this server's own network {0}")]
    CoversHost(IpNet),
    #[error("it overlaps {1}, the LAN of client {0}")]
    OverlapsClient(String, IpNet),
    #[error("it overlaps the tunnel address pool {0}")]
    OverlapsPool(Ipv4Net),
    #[error("it is not among the LANs the credentials file allows this id")]
    NotListed,
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    match (a, b) {
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)) => {
            a.contains(&b.network()) || b.contains(&a.network())
        }
        _ => false,
    }
}

/// Whether `net` may be routed to a client. `host` are the server's own networks, `others`
/// the LANs already routed to other clients, `listed` the LANs a credentials file allows
/// this id (None: no file entry, the defaults apply).
pub fn check_peernet(
    net: IpNet,
    host: &[IpNet],
    others: &[(String, IpNet)],
    pool: Ipv4Net,
    listed: Option<&[IpNet]>,
) -> Result<(), Refusal> {
    if listed.is_none() && net.prefix_len() == 0 {
        return Err(Refusal::Default);
    }
    if let Some((id, other)) = others.iter().find(|(_, o)| overlaps(&net, o)) {
        return Err(Refusal::OverlapsClient(id.clone(), *other));
    }
    if overlaps(&net, &IpNet::V4(pool)) {
        return Err(Refusal::OverlapsPool(pool));
    }
    if let Some(listed) = listed {
        // The operator's list is the authority, even for a default route.
        return if listed.iter().any(|l| l.contains(&net)) {
            Ok(())
        } else {
            Err(Refusal::NotListed)
        };
    }
    if let Some(h) = host.iter().find(|h| overlaps(&net, h)) {
        return Err(Refusal::CoversHost(*h));
    }
    Ok(())
}

/// Whether a packet from a client may carry its source address: the client's tunnel address,
/// an address in one of its accepted LANs, or an IPv6 link-local address (which never leaves
/// the point-to-point link).
pub fn source_allowed(packet: &[u8], tunnel: Ipv4Addr, nets: &[IpNet]) -> bool {
    let src: IpAddr = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            let ip = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
            if ip == tunnel {
                return true;
            }
            ip.into()
        }
        Some(6) if packet.len() >= 40 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&packet[8..24]);
            let ip = std::net::Ipv6Addr::from(b);
            if ip.segments()[0] & 0xffc0 == 0xfe80 {
                return true;
            }
            ip.into()
        }
        _ => return false,
    };
    nets.iter().any(|n| n.contains(&src))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn peernet_rules() {
        let pool: Ipv4Net = "10.86.0.0/16".parse().unwrap();
        let host = [n("172.31.250.0/24"), n("192.168.1.0/24")];
        let others = [("a".to_string(), n("10.200.0.0/24"))];
        let check = |s: &str| check_peernet(n(s), &host, &others, pool, None);
        assert_eq!(check("0.0.0.0/0"), Err(Refusal::Default));
        assert_eq!(check("::/0"), Err(Refusal::Default));
        assert_eq!(check("172.31.0.0/16"), Err(Refusal::CoversHost(host[0])));
        assert_eq!(check("192.168.1.128/25"), Err(Refusal::CoversHost(host[1])));
        assert!(matches!(
            check("10.200.0.0/16"),
            Err(Refusal::OverlapsClient(..))
        ));
        assert!(matches!(
            check("10.86.5.0/24"),
            Err(Refusal::OverlapsPool(_))
        ));
        assert_eq!(check("10.201.0.0/24"), Ok(()));
        assert_eq!(check("fd00:1::/64"), Ok(()));
        let listed = [n("10.50.0.0/16")];
        let l = |s: &str| check_peernet(n(s), &host, &others, pool, Some(&listed));
        assert_eq!(l("10.50.3.0/24"), Ok(()));
        assert_eq!(l("10.201.0.0/24"), Err(Refusal::NotListed));
    }

    #[test]
    fn sources() {
        let tun = Ipv4Addr::new(10, 86, 0, 2);
        let nets = [n("10.200.0.0/24"), n("fd00:1::/64")];
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 86, 0, 2]);
        assert!(source_allowed(&v4, tun, &nets));
        v4[12..16].copy_from_slice(&[10, 200, 0, 9]);
        assert!(source_allowed(&v4, tun, &nets));
        v4[12..16].copy_from_slice(&[8, 8, 8, 8]);
        assert!(!source_allowed(&v4, tun, &nets));
        assert!(!source_allowed(&v4[..19], tun, &nets));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[8..10].copy_from_slice(&[0xfe, 0x80]);
        assert!(source_allowed(&v6, tun, &nets));
        v6[8..10].copy_from_slice(&[0xfd, 0x00]);
        v6[10..12].copy_from_slice(&[0, 1]);
        assert!(source_allowed(&v6, tun, &nets));
        v6[10..12].copy_from_slice(&[0, 2]);
        assert!(!source_allowed(&v6, tun, &nets));
    }
}
