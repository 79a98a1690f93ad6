//! Whether the client takes the address pair a server gives it (IPv4 in the address message,
//! IPv6 in a dtun server's Addr6). The pair's peer becomes a host route into the TUN and its
//! local address one of ours, so a server, even one that knows the key, could take over a
//! host of the client's own network with it (its resolver, its printer) if the pair were
//! taken as it comes. A pair is refused when an address of it is one of this host's own
//! addresses, a gateway of its routes, a resolver of /etc/resolv.conf, a host it has a route
//! of its own for, or lies in a subnet on one of its links; it is taken with a warning when it
//! only lies inside a broader routed prefix (a 10.0.0.0/8 route to an office network must not
//! make the default pool 10.86.0.0/16 unusable). `-accept-pool` narrows what is taken. The
//! checks need nothing from the server: an original server's pair is judged the same way.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{AddressMessage, ClientConfig, ClientError, Tunnel};
use dtun_linux::netlink::{Netlink, NetlinkError};

/// What the pair is checked against: this host as it is, less our own TUN.
#[derive(Debug, Default)]
pub(crate) struct Host {
    pub(crate) own: Vec<IpAddr>,
    pub(crate) gateways: Vec<IpAddr>,
    pub(crate) resolvers: Vec<IpAddr>,
    pub(crate) on_link: Vec<IpNet>,
    /// Routed prefixes other than the default routes and the on-link subnets.
    pub(crate) routed: Vec<IpNet>,
}

impl Host {
    /// Reads the host's addresses, gateways, on-link subnets and routes over netlink (leaving
    /// out `tun`, ours, which carries the pair of the session before), and the resolvers of
    /// `resolv_conf`.
    pub(crate) async fn read(
        nl: &Netlink,
        tun: Option<u32>,
        resolv_conf: &std::path::Path,
    ) -> Result<Host, NetlinkError> {
        let exclude: Vec<u32> = tun.into_iter().collect();
        let (own, gateways) = nl.own_addresses_and_gateways(&exclude).await?;
        let on_link = nl.on_link_networks(&exclude).await?;
        let routed = nl
            .networks_elsewhere(&exclude)
            .await?
            .into_iter()
            .filter(|n| !on_link.contains(n))
            .collect();
        Ok(Host {
            own,
            gateways,
            resolvers: resolvers(resolv_conf),
            on_link,
            routed,
        })
    }
}

/// The `nameserver` addresses of a resolv.conf; none from one a dtun wrote (its servers are
/// the tunnel's own, often the server's tunnel address).
fn resolvers(path: &std::path::Path) -> Vec<IpAddr> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return vec![];
    };
    if text.starts_with(dtun_linux::dns::MARKER) {
        return vec![];
    }
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next()?.parse().ok())
        .collect()
}

/// Judges the pair (`local`, `peer`) against `host` and `-accept-pool` (`accept`, empty: no
/// narrowing). `Ok` holds the warnings to log; `Err` says why the pair is refused and what
/// to do, for the user.
pub(crate) fn judge(
    local: IpAddr,
    peer: IpAddr,
    host: &Host,
    accept: &[IpNet],
) -> Result<Vec<String>, String> {
    let pair = format!("local {local} peer {peer}");
    let refuse = |why: String| {
        Err(format!(
            "the server gave this client the address pair {pair}, but {why}; the server's -pool{} must lie outside this client's networks: change it there, or give this client -accept-pool with the range it may take",
            if local.is_ipv6() { "6" } else { "" }
        ))
    };
    if local == peer {
        return refuse("both are the same address".into());
    }
    for (role, ip) in [("local", local), ("peer", peer)] {
        if let Some(why) = unusable(ip) {
            return refuse(format!("{role} {ip} is {why}"));
        }
    }
    let family: Vec<&IpNet> = accept
        .iter()
        .filter(|n| n.addr().is_ipv4() == local.is_ipv4())
        .collect();
    if !accept.is_empty() {
        for (role, ip) in [("local", local), ("peer", peer)] {
            if !family.iter().any(|n| n.contains(&ip)) {
                let list = accept
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                return Err(format!(
                    "the server gave this client the address pair {pair}, but {role} {ip} is outside -accept-pool {list}: this client takes only addresses in it; widen -accept-pool if the server's -pool{} is meant to be there",
                    if local.is_ipv6() { "6" } else { "" }
                ));
            }
        }
    }
    let mut warnings = Vec::new();
    for (role, ip) in [("local", local), ("peer", peer)] {
        let what = if host.own.contains(&ip) {
            Some("an address of this host (another link's, or another tunnel's)".to_string())
        } else if host.gateways.contains(&ip) {
            Some("a gateway of this host's routes".to_string())
        } else if host.resolvers.contains(&ip) {
            Some("a DNS server of this host (/etc/resolv.conf)".to_string())
        } else if let Some(n) = host.on_link.iter().find(|n| n.contains(&ip)) {
            Some(format!(
                "inside {n}, a subnet on this host's own link (taking it would send that host's traffic to the server)"
            ))
        } else {
            host.routed
                .iter()
                .find(|n| n.contains(&ip) && n.prefix_len() == n.max_prefix_len())
                .map(|n| format!("{n}, a host this client has a route of its own for"))
        };
        if let Some(what) = what {
            return refuse(format!("{role} {ip} is {what}"));
        }
        if family.is_empty()
            && warnings.is_empty()
            && let Some(n) = host.routed.iter().find(|n| n.contains(&ip))
        {
            warnings.push(format!(
                "the server's address pair ({pair}) lies inside {n}, which this host routes elsewhere: those addresses now go through the tunnel; if hosts of {n} use them, change the server's -pool, or give this client an -accept-pool that leaves them out"
            ));
        }
    }
    Ok(warnings)
}

/// Refuses (a fatal [`ClientError::Pair`]) or takes, logging warnings, the IPv4 pair of the
/// address message, against this host as it is less our TUN (a reconnect's pair may be the
/// one it carries).
pub(super) async fn check_ipv4(
    cfg: &ClientConfig,
    nl: &Netlink,
    tunnel: Option<&Tunnel>,
    addrs: AddressMessage,
) -> Result<(), ClientError> {
    let host = Host::read(
        nl,
        tunnel.map(|t| t.tun.index),
        std::path::Path::new(dtun_linux::dns::RESOLV_CONF),
    )
    .await?;
    let warnings = judge(
        addrs.client.into(),
        addrs.server.into(),
        &host,
        &cfg.accept_pool,
    )
    .map_err(ClientError::Pair)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(())
}

/// Whether the IPv6 pair of an Addr6 is taken: a refusal is logged (the tunnel then carries
/// IPv4 only), as an unusable Addr6 is.
pub(super) async fn take_ipv6(
    cfg: &ClientConfig,
    nl: &Netlink,
    t: &Tunnel,
    a: &dtun_proto::proto::Addr6,
) -> Result<bool, ClientError> {
    let host = Host::read(
        nl,
        Some(t.tun.index),
        std::path::Path::new(dtun_linux::dns::RESOLV_CONF),
    )
    .await?;
    match judge(a.client.into(), a.server.into(), &host, &cfg.accept_pool) {
        Ok(warnings) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
            Ok(true)
        }
        Err(e) => {
            tracing::warn!(
                "refused the server's IPv6 addresses: {e}; the tunnel carries IPv4 only"
            );
            Ok(false)
        }
    }
}

/// Why an address cannot be a tunnel address, if it cannot.
fn unusable(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("unspecified"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => Some("link-local"),
        ip if ip.is_loopback() => Some("loopback"),
        ip if ip.is_multicast() => Some("multicast"),
        ip if ip.is_unspecified() => Some("unspecified"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// A client on 192.0.2.0/24 (its address .10, gateway .1, resolver .53), with a route to
    /// an office network 10.0.0.0/8 and one to a single host 198.51.100.7.
    fn lan_host() -> Host {
        Host {
            own: vec![ip("192.0.2.10"), ip("2001:db8:1::10")],
            gateways: vec![ip("192.0.2.1"), ip("2001:db8:1::1")],
            resolvers: vec![ip("203.0.113.53")],
            on_link: vec![net("192.0.2.0/24"), net("2001:db8:1::/64")],
            routed: vec![net("10.0.0.0/8"), net("198.51.100.7/32")],
        }
    }

    #[test]
    fn a_pair_from_the_default_pool_is_taken() {
        let w = judge(ip("10.86.0.2"), ip("10.86.0.1"), &Host::default(), &[]).unwrap();
        assert!(w.is_empty());
        let w = judge(ip("fd86::2"), ip("fd86::1"), &lan_host(), &[]).unwrap();
        assert!(w.is_empty());
    }

    #[test]
    fn a_pair_on_the_clients_lan_is_refused_with_the_conflict_named() {
        let h = lan_host();
        for (local, peer, needle) in [
            (
                "10.86.0.2",
                "192.0.2.53",
                "inside 192.0.2.0/24, a subnet on this host's own link",
            ),
            (
                "192.0.2.77",
                "10.86.0.1",
                "local 192.0.2.77 is inside 192.0.2.0/24",
            ),
            ("10.86.0.2", "192.0.2.10", "an address of this host"),
            ("10.86.0.2", "192.0.2.1", "a gateway"),
            ("10.86.0.2", "203.0.113.53", "a DNS server of this host"),
            (
                "10.86.0.2",
                "198.51.100.7",
                "a host this client has a route of its own for",
            ),
            ("2001:db8:1::99", "fd86::1", "2001:db8:1::/64"),
            ("10.86.0.2", "10.86.0.2", "the same address"),
            ("10.86.0.2", "127.0.0.1", "loopback"),
            ("10.86.0.2", "224.0.0.1", "multicast"),
            ("10.86.0.2", "255.255.255.255", "broadcast"),
            ("0.0.0.0", "10.86.0.1", "unspecified"),
            ("10.86.0.2", "169.254.0.1", "link-local"),
        ] {
            let e = judge(ip(local), ip(peer), &h, &[]).unwrap_err();
            assert!(e.contains(needle), "{local} {peer}: {e}");
            assert!(e.contains("-pool") && e.contains("-accept-pool"), "{e}");
        }
    }

    #[test]
    fn a_pair_inside_a_broader_route_is_taken_with_a_warning() {
        let w = judge(ip("10.86.0.2"), ip("10.86.0.1"), &lan_host(), &[]).unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("10.0.0.0/8") && w[0].contains("-accept-pool"),
            "{w:?}"
        );
        // An -accept-pool that covers it is the user's word: no warning.
        let w = judge(
            ip("10.86.0.2"),
            ip("10.86.0.1"),
            &lan_host(),
            &[net("10.86.0.0/16")],
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn accept_pool_narrows_what_is_taken() {
        let accept = [net("10.86.0.0/16"), net("fd86::/64")];
        let h = Host::default();
        judge(ip("10.86.3.2"), ip("10.86.3.1"), &h, &accept).unwrap();
        judge(ip("fd86::2"), ip("fd86::1"), &h, &accept).unwrap();
        let e = judge(ip("10.87.0.2"), ip("10.87.0.1"), &h, &accept).unwrap_err();
        assert!(
            e.contains("outside -accept-pool 10.86.0.0/16,fd86::/64"),
            "{e}"
        );
        let e = judge(ip("10.86.0.2"), ip("10.99.0.1"), &h, &accept).unwrap_err();
        assert!(e.contains("peer 10.99.0.1"), "{e}");
        // A family -accept-pool does not list is not taken at all.
        let e = judge(ip("fd99::2"), ip("fd99::1"), &h, &accept[..1]).unwrap_err();
        assert!(e.contains("outside -accept-pool"), "{e}");
        // Narrowing never widens: a LAN address inside -accept-pool is still refused.
        let e = judge(
            ip("10.86.0.2"),
            ip("192.0.2.53"),
            &lan_host(),
            &[net("0.0.0.0/0")],
        )
        .unwrap_err();
        assert!(e.contains("192.0.2.0/24"), "{e}");
    }

    #[test]
    fn resolvers_come_from_resolv_conf_but_not_from_a_dtun_one() {
        let dir = std::env::temp_dir().join(format!("dtun-pair-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("resolv.conf");
        std::fs::write(
            &f,
            "# x\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nsearch a\n",
        )
        .unwrap();
        assert_eq!(resolvers(&f), [ip("192.0.2.53"), ip("fe80::1")]);
        std::fs::write(
            &f,
            format!("{}x\nnameserver 10.86.0.1\n", dtun_linux::dns::MARKER),
        )
        .unwrap();
        assert!(resolvers(&f).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
