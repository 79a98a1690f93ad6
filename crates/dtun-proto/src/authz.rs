//! Route and source authorisation, as plain functions: which LAN a client may announce (so
//! nobody can hijack the server's traffic with `0.0.0.0/0`, a public prefix or another
//! client's outer address), and which inner source addresses a client's packets may carry
//! (WireGuard's AllowedIPs idea).

use std::fmt;
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
    #[error(
        "without a lans= entry only private (RFC 1918), CGNAT (100.64.0.0/10) and ULA (fc00::/7) \
         ranges are routed; list it for this id in the credentials file (-clients) to allow it"
    )]
    NotPrivate,
    #[error("it covers {0}, {1}")]
    Covers(IpAddr, Guarded),
}

/// An address no announced LAN may cover, whatever the credentials file says: routing it into
/// a client's TUN would take this server's own traffic (or another client's) away from where
/// it must go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Guarded {
    /// The outer (underlay) address of a live session, with the client's id: that client's
    /// own DTLS records would go into the announcer's TUN.
    Underlay(String),
    /// One of this server's own addresses.
    Own,
    /// A gateway or next hop of one of this server's routes.
    Gateway,
}

impl fmt::Display for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Guarded::Underlay(id) => write!(f, "the outer address of client {id}'s session"),
            Guarded::Own => f.write_str("an address of this server"),
            Guarded::Gateway => f.write_str("a gateway of this server's routes"),
        }
    }
}

/// The ranges a client may announce without a `lans=` entry: RFC 1918, CGNAT (RFC 6598) and
/// IPv6 unique local addresses (RFC 4193).
const PRIVATE: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

/// Whether `net` lies wholly inside one of the private ranges (RFC 1918, CGNAT, ULA).
pub fn is_private(net: &IpNet) -> bool {
    PRIVATE
        .iter()
        .filter_map(|p| p.parse::<IpNet>().ok())
        .any(|p| p.contains(net))
}

/// An address as routing sees it: an IPv4-mapped IPv6 address (a dual-stack socket's view of
/// an IPv4 peer) is its IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    match (a, b) {
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)) => {
            a.contains(&b.network()) || b.contains(&a.network())
        }
        _ => false,
    }
}

/// Whether `net` may be routed to a client. `host` are the server's own networks, `guarded`
/// the addresses no route may cover (live sessions' outer addresses, the server's own
/// addresses, its routes' gateways), `others` the LANs already routed to other clients,
/// `listed` the LANs a credentials file allows this id (None: no file entry, so only private
/// ranges that overlap none of the host's networks).
pub fn check_peernet(
    net: IpNet,
    host: &[IpNet],
    guarded: &[(IpAddr, Guarded)],
    others: &[(String, IpNet)],
    pool: Ipv4Net,
    listed: Option<&[IpNet]>,
) -> Result<(), Refusal> {
    if listed.is_none() && net.prefix_len() == 0 {
        return Err(Refusal::Default);
    }
    if let Some((ip, what)) = guarded.iter().find(|(ip, _)| net.contains(&canonical(*ip))) {
        return Err(Refusal::Covers(canonical(*ip), what.clone()));
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
    if !is_private(&net) {
        return Err(Refusal::NotPrivate);
    }
    if let Some(h) = host.iter().find(|h| overlaps(&net, h)) {
        return Err(Refusal::CoversHost(*h));
    }
    Ok(())
}

/// Whether a packet from a client may carry its source address: the client's tunnel address
/// (IPv4, or IPv6 when the tunnel has IPv6), an address in one of its accepted LANs, or an
/// IPv6 link-local address (which never leaves the point-to-point link).
#[inline]
pub fn source_allowed(
    packet: &[u8],
    tunnel: Ipv4Addr,
    tunnel6: Option<std::net::Ipv6Addr>,
    nets: &[IpNet],
) -> bool {
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
            if ip.segments()[0] & 0xffc0 == 0xfe80 || Some(ip) == tunnel6 {
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
        let check = |s: &str| check_peernet(n(s), &host, &[], &others, pool, None);
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
        let l = |s: &str| check_peernet(n(s), &host, &[], &others, pool, Some(&listed));
        assert_eq!(l("10.50.3.0/24"), Ok(()));
        assert_eq!(l("10.201.0.0/24"), Err(Refusal::NotListed));
    }

    /// Without a lans= entry only private, CGNAT and ULA ranges; with one, the list decides.
    #[test]
    fn public_prefixes_need_a_listing() {
        let pool: Ipv4Net = "10.86.0.0/16".parse().unwrap();
        let check = |s: &str| check_peernet(n(s), &[], &[], &[], pool, None);
        for public in [
            "128.0.0.0/1",
            "64.0.0.0/2",
            "198.51.100.7/32",
            "8.8.8.8/32",
            "2000::/3",
            "2001:db8::/32",
            "172.32.0.0/16",
            "169.254.0.0/16",
            "fe80::/64",
            "0.0.0.0/5",
            "11.0.0.0/8",
        ] {
            assert_eq!(check(public), Err(Refusal::NotPrivate), "{public}");
        }
        for private in [
            "10.201.0.0/24",
            "10.128.0.0/9",
            "172.16.0.0/12",
            "172.20.1.0/24",
            "192.168.7.0/24",
            "100.64.0.0/10",
            "100.100.1.0/24",
            "fd00:1::/64",
            "fc00::/7",
        ] {
            assert_eq!(check(private), Ok(()), "{private}");
        }
        let listed = [n("198.51.100.0/24"), n("2001:db8::/32")];
        let l = |s: &str| check_peernet(n(s), &[], &[], &[], pool, Some(&listed));
        assert_eq!(l("198.51.100.7/32"), Ok(()));
        assert_eq!(l("2001:db8:1::/48"), Ok(()));
    }

    /// No prefix may cover a live session's outer address, the server's own addresses or its
    /// gateways: not without a lans= entry, not with one, not even the default route.
    #[test]
    fn guarded_addresses_are_never_covered() {
        let pool: Ipv4Net = "10.86.0.0/16".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let guarded = [
            // A dual-stack socket sees an IPv4 client as ::ffff:a.b.c.d.
            (ip("::ffff:10.77.0.2"), Guarded::Underlay("victim".into())),
            (ip("192.168.9.1"), Guarded::Own),
            (ip("fd00:9::1"), Guarded::Own),
            (ip("100.64.0.1"), Guarded::Gateway),
        ];
        let check = |s: &str, listed: Option<&[IpNet]>| {
            check_peernet(n(s), &[], &guarded, &[], pool, listed)
        };
        let everything = [n("0.0.0.0/0"), n("::/0")];
        for listed in [None, Some(&everything[..])] {
            assert_eq!(
                check("10.77.0.2/32", listed),
                Err(Refusal::Covers(
                    ip("10.77.0.2"),
                    Guarded::Underlay("victim".into())
                ))
            );
            assert!(matches!(
                check("10.0.0.0/8", listed),
                Err(Refusal::Covers(_, Guarded::Underlay(_)))
            ));
            assert_eq!(
                check("192.168.9.0/24", listed),
                Err(Refusal::Covers(ip("192.168.9.1"), Guarded::Own))
            );
            assert_eq!(
                check("fd00:9::/64", listed),
                Err(Refusal::Covers(ip("fd00:9::1"), Guarded::Own))
            );
            assert_eq!(
                check("100.64.0.0/24", listed),
                Err(Refusal::Covers(ip("100.64.0.1"), Guarded::Gateway))
            );
            assert_eq!(check("10.77.0.3/32", listed), Ok(()));
        }
        // Even the operator's default route may not swallow them.
        assert!(matches!(
            check("0.0.0.0/0", Some(&everything[..])),
            Err(Refusal::Covers(..))
        ));
        let msg = check("10.77.0.0/16", None).unwrap_err().to_string();
        assert_eq!(
            msg,
            "it covers 10.77.0.2, the outer address of client victim's session"
        );
    }

    #[test]
    fn sources() {
        let tun = Ipv4Addr::new(10, 86, 0, 2);
        let nets = [n("10.200.0.0/24"), n("fd00:1::/64")];
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 86, 0, 2]);
        assert!(source_allowed(&v4, tun, None, &nets));
        v4[12..16].copy_from_slice(&[10, 200, 0, 9]);
        assert!(source_allowed(&v4, tun, None, &nets));
        v4[12..16].copy_from_slice(&[8, 8, 8, 8]);
        assert!(!source_allowed(&v4, tun, None, &nets));
        assert!(!source_allowed(&v4[..19], tun, None, &nets));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[8..10].copy_from_slice(&[0xfe, 0x80]);
        assert!(source_allowed(&v6, tun, None, &nets));
        v6[8..10].copy_from_slice(&[0xfd, 0x00]);
        v6[10..12].copy_from_slice(&[0, 1]);
        assert!(source_allowed(&v6, tun, None, &nets));
        v6[10..12].copy_from_slice(&[0, 2]);
        assert!(!source_allowed(&v6, tun, None, &nets));
        // The client's own IPv6 tunnel address, and only its own.
        let own: std::net::Ipv6Addr = "fd64:7475:6e00::2".parse().unwrap();
        v6[8..24].copy_from_slice(&own.octets());
        assert!(!source_allowed(&v6, tun, None, &nets));
        assert!(source_allowed(&v6, tun, Some(own), &nets));
        let other: std::net::Ipv6Addr = "fd64:7475:6e00::4".parse().unwrap();
        assert!(!source_allowed(&v6, tun, Some(other), &nets));
        assert!(!source_allowed(&v6[..39], tun, Some(own), &nets));
    }
}
