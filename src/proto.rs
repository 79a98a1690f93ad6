//! The original dtun's two setup messages, built and parsed without I/O: the server's 8-byte
//! address message and the client's peernet message (`empty` or a CIDR as text).

use std::net::Ipv4Addr;

use ipnet::IpNet;

use crate::consts::{ADDRESS_MESSAGE_LEN, PEERNET_EMPTY};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("address message must be {ADDRESS_MESSAGE_LEN} bytes, got {0}")]
    AddressLength(usize),
    #[error("peernet message is not text")]
    PeernetNotText,
    #[error("peernet message {0:?} is neither `empty` nor a CIDR such as 10.200.0.0/24")]
    PeernetNotCidr(String),
}

/// Server → client, first record: the client's tunnel address, then the server's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressMessage {
    pub client: Ipv4Addr,
    pub server: Ipv4Addr,
}

impl AddressMessage {
    pub fn to_bytes(self) -> [u8; ADDRESS_MESSAGE_LEN] {
        let mut b = [0u8; ADDRESS_MESSAGE_LEN];
        b[..4].copy_from_slice(&self.client.octets());
        b[4..].copy_from_slice(&self.server.octets());
        b
    }

    pub fn parse(b: &[u8]) -> Result<Self, ProtoError> {
        let b: &[u8; ADDRESS_MESSAGE_LEN] = b
            .try_into()
            .map_err(|_| ProtoError::AddressLength(b.len()))?;
        Ok(AddressMessage {
            client: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            server: Ipv4Addr::new(b[4], b[5], b[6], b[7]),
        })
    }
}

/// Client → server, first record: the LAN the client announces, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peernet {
    Empty,
    Net(IpNet),
}

impl Peernet {
    /// Parses the command-line or wire form. Like Go's `net.ParseCIDR`, host bits are allowed
    /// and cleared (`10.200.0.1/24` is `10.200.0.0/24`).
    pub fn parse_str(s: &str) -> Result<Self, ProtoError> {
        if s == PEERNET_EMPTY {
            return Ok(Peernet::Empty);
        }
        s.parse::<IpNet>()
            .map(|n| Peernet::Net(n.trunc()))
            .map_err(|_| ProtoError::PeernetNotCidr(s.chars().take(64).collect()))
    }

    pub fn parse(b: &[u8]) -> Result<Self, ProtoError> {
        Self::parse_str(std::str::from_utf8(b).map_err(|_| ProtoError::PeernetNotText)?)
    }

    /// The wire form, exactly as the original sends it.
    pub fn to_wire(self) -> String {
        match self {
            Peernet::Empty => PEERNET_EMPTY.to_string(),
            Peernet::Net(n) => n.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_message_matches_capture() {
        let m = AddressMessage::parse(&[0x0a, 0x56, 0, 2, 0x0a, 0x56, 0, 1]).unwrap();
        assert_eq!(m.client, Ipv4Addr::new(10, 86, 0, 2));
        assert_eq!(m.server, Ipv4Addr::new(10, 86, 0, 1));
        assert_eq!(m.to_bytes(), [0x0a, 0x56, 0, 2, 0x0a, 0x56, 0, 1]);
        assert_eq!(
            AddressMessage::parse(&[1; 7]),
            Err(ProtoError::AddressLength(7))
        );
        assert_eq!(
            AddressMessage::parse(&[1; 9]),
            Err(ProtoError::AddressLength(9))
        );
    }

    #[test]
    fn peernet_forms() {
        assert_eq!(Peernet::parse(b"empty"), Ok(Peernet::Empty));
        let p = Peernet::parse(b"10.200.0.0/24").unwrap();
        assert_eq!(p.to_wire(), "10.200.0.0/24");
        assert_eq!(p.to_wire().len(), 13);
        assert_eq!(Peernet::parse(b"10.200.0.9/24"), Ok(p));
        assert!(matches!(
            Peernet::parse(b"fd00::/64"),
            Ok(Peernet::Net(IpNet::V6(_)))
        ));
        assert!(Peernet::parse(b"10.200.0.0").is_err());
        assert!(Peernet::parse(b"10.200.0.0/24\n").is_err());
        assert_eq!(
            Peernet::parse(&[0xff, 0xfe]),
            Err(ProtoError::PeernetNotText)
        );
        assert!(Peernet::parse(b"").is_err());
    }
}
