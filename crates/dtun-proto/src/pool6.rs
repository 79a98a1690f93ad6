//! IPv6 tunnel addresses (`-pool6`): each client id gets a point-to-point pair (server, client)
//! from an IPv6 prefix, derived from a hash of the id like its IPv4 pair ([`crate::pool`]), so
//! it is the same on every reconnect and after a server restart. A /64 holds 2^63 pairs, so two
//! ids practically never meet; when they do, the later one takes the next free pair.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use ring::digest;

use crate::pool::{SlotError, Slots};

/// The default `-pool6`: a fixed unique local prefix, so addresses survive restarts without
/// configuration. Its global ID is "dtun" in ASCII (64 74 75 6e) and a zero byte; two servers
/// on the default share it (give each its own `-pool6` if their clients meet).
pub const DEFAULT_POOL6: &str = "fd64:7475:6e00::/64";
/// The smallest MTU IPv6 allows (RFC 8200 §5): below it a tunnel carries no IPv6.
pub const IPV6_MIN_MTU: u32 = 1280;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Pool6Error {
    #[error(
        "-pool6 {0} must be a unicast prefix of /16 to /120 (not link-local, multicast or loopback), e.g. {DEFAULT_POOL6}; or `off`"
    )]
    Unsuitable(Ipv6Net),
    #[error("-pool6 {0} (give `off` or an IPv6 prefix such as {DEFAULT_POOL6})")]
    NotAPrefix(String),
    #[error("-pool6 {0} is exhausted ({1} clients): use a larger -pool6")]
    Exhausted(Ipv6Net, usize),
    #[error(
        "fixed address addr6={0} is not a client address of -pool6 {1} (the even offsets ::2, ::4, …)"
    )]
    NotAClientAddress(Ipv6Addr, Ipv6Net),
    #[error("fixed address addr6={0} is held by client {1}")]
    Taken(Ipv6Addr, String),
}

/// Parses `-pool6`: `off` (None) or a prefix, checked like [`Pool6::new`].
pub fn parse_pool6(s: &str) -> Result<Option<Ipv6Net>, Pool6Error> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let net = match crate::cidr::parse_lan(s).and_then(|_| crate::cidr::parse(s)) {
        Ok(ipnet::IpNet::V6(net)) => net,
        Ok(ipnet::IpNet::V4(_)) => {
            return Err(Pool6Error::NotAPrefix(format!("{s:?} is IPv4 (-pool is)")));
        }
        Err(e) => return Err(Pool6Error::NotAPrefix(e)),
    };
    Pool6::new(net).map(|p| Some(p.net))
}

/// One id's IPv6 addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair6 {
    pub server: Ipv6Addr,
    pub client: Ipv6Addr,
}

#[derive(Debug)]
pub struct Pool6 {
    net: Ipv6Net,
    /// Slot i is the pair (network + 2i + 1, network + 2i + 2); at most 2^64 of them.
    slots: Slots,
}

impl Pool6 {
    pub fn new(net: Ipv6Net) -> Result<Self, Pool6Error> {
        let net = net.trunc();
        let seg = net.network().segments()[0];
        let unsuitable = !(16..=120).contains(&net.prefix_len())
            || seg & 0xffc0 == 0xfe80
            || seg & 0xff00 == 0xff00
            || seg == 0;
        if unsuitable {
            return Err(Pool6Error::Unsuitable(net));
        }
        let host_bits = 128 - u32::from(net.prefix_len());
        let hosts = 1u128 << host_bits;
        let slots = ((hosts - 2) / 2).min(1 << 64);
        Ok(Pool6 {
            net,
            slots: Slots::new(slots),
        })
    }

    pub fn net(&self) -> Ipv6Net {
        self.net
    }

    fn pair(&self, slot: u128) -> Pair6 {
        let base = u128::from(self.net.network());
        Pair6 {
            server: Ipv6Addr::from(base + 2 * slot + 1),
            client: Ipv6Addr::from(base + 2 * slot + 2),
        }
    }

    fn home_slot(&self, id: &str) -> u128 {
        // Another domain than the IPv4 pool's hash, so the two are independent.
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"dtun pool6\0");
        ctx.update(id.as_bytes());
        let h = ctx.finish();
        let mut b = [0u8; 16];
        b.copy_from_slice(&h.as_ref()[..16]);
        u128::from_be_bytes(b) % self.slots.count()
    }

    /// The id's pair: the one it holds, else its hash slot or the next free one after it.
    pub fn assign(&mut self, id: &str) -> Result<Pair6, Pool6Error> {
        let home = self.home_slot(id);
        match self.slots.assign(id, home) {
            Ok(slot) => Ok(self.pair(slot)),
            Err(_) => Err(Pool6Error::Exhausted(self.net, self.slots.len())),
        }
    }

    /// The pair whose client address is `client` (`addr6=` in the credentials file).
    pub fn assign_fixed(&mut self, id: &str, client: Ipv6Addr) -> Result<Pair6, Pool6Error> {
        if !self.net.contains(&client) {
            return Err(Pool6Error::NotAClientAddress(client, self.net));
        }
        let offset = u128::from(client) - u128::from(self.net.network());
        match self.slots.assign_fixed(id, offset) {
            Ok(slot) => Ok(self.pair(slot)),
            Err(SlotError::Taken(holder)) => Err(Pool6Error::Taken(client, holder)),
            Err(_) => Err(Pool6Error::NotAClientAddress(client, self.net)),
        }
    }

    /// Returns the id's pair to the pool.
    pub fn release(&mut self, id: &str) {
        self.slots.release(id);
    }

    /// What the Addr6 message tells a client: its pair and the pool's prefix length.
    pub fn message(&self, pair: Pair6) -> crate::proto::Addr6 {
        crate::proto::Addr6 {
            prefix_len: self.net.prefix_len(),
            client: pair.client,
            server: pair.server,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_per_id_distinct_and_sane() {
        let net: Ipv6Net = DEFAULT_POOL6.parse().unwrap();
        let mut p = Pool6::new(net).unwrap();
        let a = p.assign("demo").unwrap();
        let b = p.assign("other").unwrap();
        assert_ne!(a, b);
        assert_eq!(p.assign("demo").unwrap(), a);
        assert!(net.contains(&a.server) && net.contains(&a.client));
        assert_eq!(u128::from(a.client), u128::from(a.server) + 1);
        assert_eq!(p.message(a).check(), Ok(()));
        // A fresh pool (a restarted server) gives the same pair.
        let mut q = Pool6::new(net).unwrap();
        assert_eq!(q.assign("demo").unwrap(), a);
        p.release("demo");
        assert_eq!(p.assign("demo").unwrap(), a);
    }

    #[test]
    fn fixed_addresses_and_small_pools() {
        let mut p = Pool6::new("fd00:1::/64".parse().unwrap()).unwrap();
        let pair = p.assign_fixed("a", "fd00:1::a".parse().unwrap()).unwrap();
        assert_eq!(pair.server, "fd00:1::9".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.assign("a").unwrap(), pair);
        assert!(matches!(
            p.assign_fixed("b", "fd00:1::a".parse().unwrap()),
            Err(Pool6Error::Taken(..))
        ));
        for bad in ["fd00:1::9", "fd00:2::2", "fd00:1::"] {
            assert!(matches!(
                p.assign_fixed("b", bad.parse().unwrap()),
                Err(Pool6Error::NotAClientAddress(..))
            ));
        }
        // A /120: 127 pairs, then full.
        let mut small = Pool6::new("fd00:2::/120".parse().unwrap()).unwrap();
        for i in 0..127 {
            let pair = small.assign(&format!("id{i}")).unwrap();
            assert_ne!(pair.client, "fd00:2::ff".parse::<Ipv6Addr>().unwrap());
        }
        assert!(matches!(small.assign("x"), Err(Pool6Error::Exhausted(..))));
        small.release("id5");
        assert!(small.assign("x").is_ok());
    }

    #[test]
    fn pool6_flag() {
        assert_eq!(parse_pool6("off"), Ok(None));
        assert_eq!(
            parse_pool6(DEFAULT_POOL6),
            Ok(Some(DEFAULT_POOL6.parse().unwrap()))
        );
        // Host bits are refused, as in every CIDR flag (crate::cidr).
        assert!(matches!(
            parse_pool6("fd00:1::5/64"),
            Err(Pool6Error::NotAPrefix(e)) if e.contains("did you mean fd00:1::/64?")
        ));
        for bad in ["fe80::/64", "ff00::/16", "::/64", "fd00::/8", "fd00::/121"] {
            assert!(
                matches!(parse_pool6(bad), Err(Pool6Error::Unsuitable(_))),
                "{bad}"
            );
        }
        let e = parse_pool6("10.0.0.0/8").unwrap_err();
        assert!(matches!(e, Pool6Error::NotAPrefix(_)));
        assert!(e.to_string().contains("`off`"));
    }
}
