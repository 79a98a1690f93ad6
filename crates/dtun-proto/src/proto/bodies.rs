//! The bodies of two control messages of dtun (see [`super::Control`]): Addr6
//! (type 6, server → client: the client's IPv6 pair) and Lans (type 7, client → server: the
//! LANs of `-peernet` beyond the one the original's peernet message carries).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::ProtoError;

/// Most LANs in one Lans message.
pub const MAX_LANS: usize = 16;

/// Length of an Addr6 control record: marker, type, prefix length, two addresses.
pub const ADDR6_LEN: usize = 3 + 32;

/// The IPv6 pair of an [`Control::Addr6`](crate::proto::Control::Addr6) message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr6 {
    pub prefix_len: u8,
    pub client: Ipv6Addr,
    pub server: Ipv6Addr,
}

impl Addr6 {
    /// The body after the type byte: prefix length, client, server.
    pub fn encode(&self, b: &mut Vec<u8>) {
        b.push(self.prefix_len);
        b.extend_from_slice(&self.client.octets());
        b.extend_from_slice(&self.server.octets());
    }

    /// Parses the body after the type byte: exactly 33 bytes.
    pub fn parse(body: &[u8]) -> Result<Addr6, ProtoError> {
        let [prefix_len, rest @ ..] = body else {
            return Err(ProtoError::Control);
        };
        if body.len() != ADDR6_LEN - 2 {
            return Err(ProtoError::Control);
        }
        let (client, server) = rest.split_at(16);
        let v6 = |b: &[u8]| {
            <[u8; 16]>::try_from(b)
                .map(Ipv6Addr::from)
                .map_err(|_| ProtoError::Control)
        };
        Ok(Addr6 {
            prefix_len: *prefix_len,
            client: v6(client)?,
            server: v6(server)?,
        })
    }

    /// Whether a client may put this pair on its TUN: both addresses unicast (not
    /// unspecified, loopback, multicast, link-local, IPv4-mapped or -compatible), distinct,
    /// neither the subnet-router anycast address of the prefix, and both in one prefix of 16
    /// to 126 bits. The error says why not, for the log.
    pub fn check(&self) -> Result<(), &'static str> {
        if !(16..=126).contains(&self.prefix_len) {
            return Err("its prefix length is not between 16 and 126");
        }
        for ip in [self.client, self.server] {
            let s = ip.segments();
            if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
                return Err("an address is unspecified, loopback or multicast");
            }
            if s[0] & 0xffc0 == 0xfe80 {
                return Err("an address is link-local");
            }
            if s[..5] == [0; 5] && (s[5] == 0 || s[5] == 0xffff) {
                return Err("an address is IPv4-mapped or IPv4-compatible");
            }
        }
        if self.client == self.server {
            return Err("the client and server addresses are the same");
        }
        let net = ipnet::Ipv6Net::new(self.client, self.prefix_len)
            .map_err(|_| "its prefix length is not between 16 and 126")?
            .trunc();
        if !net.contains(&self.server) {
            return Err("the addresses are not in one prefix");
        }
        if self.client == net.network() || self.server == net.network() {
            return Err("an address is the prefix's subnet-router anycast address");
        }
        Ok(())
    }
}

/// A Lans body after its type byte: a count (1 to [`MAX_LANS`]), then per LAN a family byte
/// (4 or 6), a prefix length and the network's 4 or 16 address bytes (no host bits); nothing
/// after the last. More than [`MAX_LANS`] are cut on the way out.
pub fn encode_lans(lans: &[IpNet], b: &mut Vec<u8>) {
    let lans = &lans[..lans.len().min(MAX_LANS)];
    b.push(lans.len() as u8);
    for net in lans {
        match net.trunc() {
            IpNet::V4(n) => {
                b.extend_from_slice(&[4, n.prefix_len()]);
                b.extend_from_slice(&n.network().octets());
            }
            IpNet::V6(n) => {
                b.extend_from_slice(&[6, n.prefix_len()]);
                b.extend_from_slice(&n.network().octets());
            }
        }
    }
}

/// Parses a Lans body (see [`encode_lans`]); any other shape is malformed.
pub fn parse_lans(body: &[u8]) -> Result<Vec<IpNet>, ProtoError> {
    let [count, rest @ ..] = body else {
        return Err(ProtoError::Control);
    };
    let mut rest: &[u8] = rest;
    let count = usize::from(*count);
    if count == 0 || count > MAX_LANS {
        return Err(ProtoError::Control);
    }
    let mut lans = Vec::with_capacity(count);
    for _ in 0..count {
        let (net, tail) = match rest {
            [4, len, a, b, c, d, tail @ ..] => (
                Ipv4Net::new(Ipv4Addr::new(*a, *b, *c, *d), *len)
                    .map(IpNet::V4)
                    .map_err(|_| ProtoError::Control)?,
                tail,
            ),
            [6, len, tail @ ..] if tail.len() >= 16 => {
                let (addr, tail) = tail.split_at(16);
                let octets: [u8; 16] = addr.try_into().map_err(|_| ProtoError::Control)?;
                (
                    Ipv6Net::new(Ipv6Addr::from(octets), *len)
                        .map(IpNet::V6)
                        .map_err(|_| ProtoError::Control)?,
                    tail,
                )
            }
            _ => return Err(ProtoError::Control),
        };
        // Host bits set: not what a dtun client sends (and it would not round-trip).
        if net.trunc() != net {
            return Err(ProtoError::Control);
        }
        lans.push(net);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(ProtoError::Control);
    }
    Ok(lans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Control;

    /// The Addr6 message (type 6): its exact bytes, every wrong length refused, and the
    /// sanity check of what it assigns.
    #[test]
    fn addr6_message_bytes_garbage_and_sanity() {
        let good = Addr6 {
            prefix_len: 64,
            client: "fd64:7475:6e00::2".parse().unwrap(),
            server: "fd64:7475:6e00::1".parse().unwrap(),
        };
        let m = Control::Addr6(good);
        let b = m.to_bytes();
        assert_eq!(b.len(), ADDR6_LEN);
        assert_eq!(&b[..3], &[0, 6, 64]);
        assert_eq!(&b[3..5], &[0xfd, 0x64]);
        assert_eq!(b[18], 2);
        assert_eq!(b[34], 1);
        assert_eq!(Control::parse(&b), Ok(m));
        assert_eq!(good.check(), Ok(()));
        for cut in 0..b.len() {
            assert_eq!(Control::parse(&b[..cut]), Err(ProtoError::Control), "{cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(Control::parse(&long), Err(ProtoError::Control));
        let with = |f: &dyn Fn(&mut Addr6)| {
            let mut a = good;
            f(&mut a);
            a.check()
        };
        assert!(with(&|a| a.prefix_len = 0).is_err());
        assert!(with(&|a| a.prefix_len = 127).is_err());
        assert!(with(&|a| a.prefix_len = 200).is_err());
        assert!(with(&|a| a.client = Ipv6Addr::UNSPECIFIED).is_err());
        assert!(with(&|a| a.client = Ipv6Addr::LOCALHOST).is_err());
        assert!(with(&|a| a.client = "ff02::1".parse().unwrap()).is_err());
        assert!(with(&|a| a.client = "fe80::2".parse().unwrap()).is_err());
        assert!(with(&|a| a.client = "::ffff:10.0.0.2".parse().unwrap()).is_err());
        assert!(with(&|a| a.client = "::10.0.0.2".parse().unwrap()).is_err());
        assert!(with(&|a| a.server = a.client).is_err());
        assert!(with(&|a| a.server = "fd00:1::1".parse().unwrap()).is_err());
        assert!(with(&|a| a.server = "fd64:7475:6e00::".parse().unwrap()).is_err());
        // A global prefix is fine, and so is a short one.
        assert_eq!(
            with(&|a| {
                a.prefix_len = 48;
                a.client = "2001:db8:1::2".parse().unwrap();
                a.server = "2001:db8:1:ffff::3".parse().unwrap();
            }),
            Ok(())
        );
    }

    /// The Lans message (type 7): its exact bytes, every malformed shape refused, and more
    /// than the limit cut on the way out.
    #[test]
    fn lans_message_bytes_and_garbage() {
        let lans: Vec<IpNet> = vec![
            "10.200.0.0/24".parse().unwrap(),
            "fd00:1::/64".parse().unwrap(),
        ];
        let m = Control::Lans(lans.clone());
        let b = m.to_bytes();
        let mut want = vec![0, 7, 2, 4, 24, 10, 200, 0, 0, 6, 64, 0xfd, 0, 0, 1];
        want.extend_from_slice(&[0; 12]);
        assert_eq!(b, want);
        assert_eq!(Control::parse(&b), Ok(m));
        for bad in [
            &[0, 7][..],
            &[0, 7, 0],
            &[0, 7, 1],
            &[0, 7, 1, 4, 33, 10, 0, 0, 0],
            &[0, 7, 1, 4, 24, 10, 0, 0, 1],
            &[0, 7, 1, 4, 24, 10, 0, 0],
            &[0, 7, 1, 5, 24, 10, 0, 0, 0],
            &[0, 7, 1, 4, 24, 10, 0, 0, 0, 0],
            &[0, 7, 2, 4, 24, 10, 0, 0, 0],
            &[0, 7, 1, 6, 64, 0xfd],
            &[0, 7, 17, 4, 8, 10, 0, 0, 0],
        ] {
            assert_eq!(Control::parse(bad), Err(ProtoError::Control), "{bad:?}");
        }
        let many = Control::Lans(vec!["10.0.0.0/8".parse().unwrap(); 20]);
        assert_eq!(
            Control::parse(&many.to_bytes()),
            Ok(Control::Lans(vec!["10.0.0.0/8".parse().unwrap(); MAX_LANS]))
        );
    }
}
