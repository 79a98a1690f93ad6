//! The messages of the protocol, built and parsed without I/O: the original dtun's two setup
//! messages (the server's 8-byte address message, the client's peernet message) and dtun's own
//! control messages, which only ever go to a peer that negotiated them (see [`Control`]).

pub mod bodies;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::consts::{ADDRESS_MESSAGE_LEN, PEERNET_EMPTY};

pub use bodies::{ADDR6_LEN, Addr6, MAX_LANS};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("address message must be {ADDRESS_MESSAGE_LEN} bytes, got {0}")]
    AddressLength(usize),
    #[error("peernet message is not text")]
    PeernetNotText,
    #[error("peernet message {0:?} is neither `empty` nor a CIDR such as 10.200.0.0/24")]
    PeernetNotCidr(String),
    #[error("malformed control message")]
    Control,
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

pub use crate::consts::CONTROL_MARKER;
/// Marker appended to the server's PSK identity hint: a dtun client that sees it sends
/// [`Control::Hello`]; the original client only logs the hint. An original server never sends
/// it, so a dtun client never sends it a control message.
pub const HINT_MARKER: &str = ";dtun-ctl=1";
/// Put right before [`HINT_MARKER`] by a server that rekeys (`crate::rekey`): the hint is part
/// of the handshake's transcript, so nobody on the path can take it away, where dropping the
/// Hello answers (whose REKEY flag says the same) could. A client that sees it rekeys; an
/// older dtun client still finds the marker at the end, an original only logs the hint.
pub const HINT_REKEY: &str = ";dtun-rekey=1";
/// Version of the control protocol carried in Hello. Version 2 adds the flags byte, with which
/// the server's Hello answer says what it sent before it and what it heard (see [`HelloFlags`]).
pub const CONTROL_VERSION: u8 = 2;
/// Longest detail text of a Close message.
pub const MAX_CLOSE_DETAIL: usize = 200;
/// Most DNS servers in one Dns message.
pub const MAX_DNS_SERVERS: usize = 8;

/// Defines [`CloseReason`] from one list of `Name = code` lines (the numbers of
/// docs/PROTOCOL.md), with its `code` and `from_code`: a new reason is one more line.
macro_rules! close_reasons {
    ($($(#[$doc:meta])* $name:ident = $code:literal,)*) => {
        /// Why a session was closed, told to a dtun peer just before close_notify.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum CloseReason {
            $($(#[$doc])* $name,)*
            /// A reason this build does not know (a newer peer's): the Close still closes,
            /// and logs show its number. [`CloseReason::from_code`] never makes one of a
            /// known code.
            Other(u8),
        }

        impl CloseReason {
            /// The reason's number on the wire.
            pub fn code(self) -> u8 {
                match self {
                    $(CloseReason::$name => $code,)*
                    CloseReason::Other(code) => code,
                }
            }

            /// The reason a number stands for; an unknown number is [`CloseReason::Other`].
            pub fn from_code(code: u8) -> CloseReason {
                match code {
                    $($code => CloseReason::$name,)*
                    other => CloseReason::Other(other),
                }
            }
        }
    };
}

close_reasons! {
    /// The peer is stopping.
    Shutdown = 1,
    /// Another holder of the id connected; the detail names its address.
    Replaced = 2,
    /// The peer was declared dead (missed keepalives) or failed setup.
    Timeout = 3,
    /// The sender's record sequence numbers are nearly used up: reconnect for fresh keys.
    Exhausted = 4,
    /// The server is at its `-max-clients` limit. Sent instead of the address message, and
    /// only when the session's suite is AES-128-GCM (which only dtun clients offer).
    Refused = 5,
    /// The server's configuration was reloaded and this id was removed or its key changed.
    Revoked = 6,
    /// The server could not set up this client's tunnel (its device, addresses or scripts);
    /// the detail says why. Sent instead of the address message, to dtun clients only.
    SetupFailed = 7,
}

impl CloseReason {
    /// What the reason means, in the words a client logs.
    pub fn words(self) -> String {
        match self {
            CloseReason::Shutdown => "the server shut down".into(),
            CloseReason::Replaced => "another client with this id connected".into(),
            CloseReason::Timeout => "the server timed the session out".into(),
            CloseReason::Exhausted => {
                "the session's keys are used up (reconnecting for fresh ones)".into()
            }
            CloseReason::Refused => "the server is full (its -max-clients)".into(),
            CloseReason::Revoked => "the server revoked this id".into(),
            CloseReason::SetupFailed => "the server could not set up this client's tunnel".into(),
            CloseReason::Other(n) => format!("reason {n}"),
        }
    }
}

/// The flags byte of a version-2 Hello. The server's Hello answer says which setup messages
/// it sent right before the answer and whether it heard the client's Lans, so a client that
/// has the answer knows what was lost and says Hello again (crate::session). Unknown bits
/// are kept and ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HelloFlags(pub u8);

impl HelloFlags {
    /// An Addr6 came right before this answer.
    pub const ADDR6_SENT: u8 = 1;
    /// A Dns came right before this answer.
    pub const DNS_SENT: u8 = 2;
    /// The server has the client's Lans message (whether or not it routes every LAN).
    pub const LANS_HEARD: u8 = 4;
    /// In either Hello: the sender rekeys (`crate::rekey`); both must say so.
    pub const REKEY: u8 = 8;
    /// In a client's Hello: it can roam (it sends records with a connection ID and answers
    /// path challenges). In the answer: a [`Control::Cid`] came right before it.
    pub const ROAM: u8 = 16;

    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    pub fn with(self, bit: u8, on: bool) -> HelloFlags {
        if on { HelloFlags(self.0 | bit) } else { self }
    }
}

/// dtun's control messages (between dtun peers only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Client → server after the peernet message; server → client as the answer. Both sides
    /// may then send control messages; `keepalive_ms` is the sender's keepalive period.
    Hello {
        version: u8,
        keepalive_ms: u32,
        /// On the wire from version 2 on (0 in a client's Hello and from older peers).
        flags: HelloFlags,
    },
    Ping,
    Pong,
    Close {
        reason: CloseReason,
        detail: String,
    },
    /// Server → client right before the Hello answer (after it, from a version-1 server): the
    /// DNS servers of the server's `-dns` (1 to
    /// [`MAX_DNS_SERVERS`], IPv4 or IPv6). Sent only to a client that said Hello.
    Dns(Vec<IpAddr>),
    /// Server → client, right before the Hello answer: the client's IPv6 tunnel address and
    /// the server's, and the length of the prefix (the server's `-pool6`) both lie in. Sent
    /// only to a client that said Hello; check it with [`Addr6::check`] before use.
    Addr6(Addr6),
    /// Client → server, right before its Hello: the LANs of `-peernet` beyond the one the
    /// original's peernet message carries (1 to [`MAX_LANS`], either family).
    Lans(Vec<ipnet::IpNet>),
    /// Either way, between peers whose Hellos both offered rekeying: one fragment of a rekey
    /// message (`crate::rekey::message`).
    Rekey(crate::rekey::message::Fragment),
    /// Server → client, right before a Hello answer with the ROAM flag: the connection ID
    /// the client's records carry from its next epoch on (RFC 9146 format), by which the
    /// server finds the session wherever it comes from.
    Cid([u8; 8]),
    /// Server → a client's new address, before the session moves there: answer with a
    /// [`Control::PathResponse`] of the same token.
    PathChallenge([u8; 8]),
    /// Client → server: the answer to a [`Control::PathChallenge`].
    PathResponse([u8; 8]),
}

impl Control {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![CONTROL_MARKER];
        match self {
            Control::Hello {
                version,
                keepalive_ms,
                flags,
            } => {
                b.push(1);
                b.push(*version);
                b.extend_from_slice(&keepalive_ms.to_be_bytes());
                if *version >= 2 {
                    b.push(flags.0);
                }
            }
            Control::Ping => b.push(2),
            Control::Pong => b.push(3),
            Control::Close { reason, detail } => {
                b.push(4);
                b.push(reason.code());
                let mut end = detail.len().min(MAX_CLOSE_DETAIL);
                while !detail.is_char_boundary(end) {
                    end -= 1;
                }
                b.extend_from_slice(&detail.as_bytes()[..end]);
            }
            Control::Dns(servers) => {
                b.push(5);
                let servers = &servers[..servers.len().min(MAX_DNS_SERVERS)];
                b.push(servers.len() as u8);
                for ip in servers {
                    match ip {
                        IpAddr::V4(v4) => {
                            b.push(4);
                            b.extend_from_slice(&v4.octets());
                        }
                        IpAddr::V6(v6) => {
                            b.push(6);
                            b.extend_from_slice(&v6.octets());
                        }
                    }
                }
            }
            Control::Addr6(a) => {
                b.push(6);
                a.encode(&mut b);
            }
            Control::Lans(lans) => {
                b.push(7);
                bodies::encode_lans(lans, &mut b);
            }
            Control::Rekey(f) => return f.to_bytes(),
            Control::Cid(cid) => {
                b.push(9);
                b.extend_from_slice(cid);
            }
            Control::PathChallenge(token) => {
                b.push(10);
                b.extend_from_slice(token);
            }
            Control::PathResponse(token) => {
                b.push(11);
                b.extend_from_slice(token);
            }
        }
        b
    }

    /// Parses a control record; unknown types and bad lengths are errors (counted drops).
    /// Extra bytes after a Hello are allowed, so later versions can extend it; a Close with a
    /// reason this build does not know is still a Close ([`CloseReason::Other`]).
    pub fn parse(b: &[u8]) -> Result<Control, ProtoError> {
        match b {
            [CONTROL_MARKER, 1, version, k0, k1, k2, k3, rest @ ..] => Ok(Control::Hello {
                version: *version,
                keepalive_ms: u32::from_be_bytes([*k0, *k1, *k2, *k3]),
                flags: match rest.first() {
                    Some(f) if *version >= 2 => HelloFlags(*f),
                    _ => HelloFlags::default(),
                },
            }),
            [CONTROL_MARKER, 2] => Ok(Control::Ping),
            [CONTROL_MARKER, 3] => Ok(Control::Pong),
            [CONTROL_MARKER, 4, reason, detail @ ..] if detail.len() <= MAX_CLOSE_DETAIL => {
                let reason = CloseReason::from_code(*reason);
                // Strict UTF-8, so what parses also encodes back to the same bytes.
                let detail = String::from_utf8(detail.to_vec()).map_err(|_| ProtoError::Control)?;
                Ok(Control::Close { reason, detail })
            }
            [CONTROL_MARKER, 5, count, body @ ..] => parse_dns(*count, body),
            [CONTROL_MARKER, 6, body @ ..] => Addr6::parse(body).map(Control::Addr6),
            [CONTROL_MARKER, 7, body @ ..] => bodies::parse_lans(body).map(Control::Lans),
            [CONTROL_MARKER, crate::rekey::message::REKEY_TYPE, body @ ..] => {
                crate::rekey::message::Fragment::parse(body)
                    .map(Control::Rekey)
                    .map_err(|_| ProtoError::Control)
            }
            [CONTROL_MARKER, 9, body @ ..] => eight(body).map(Control::Cid),
            [CONTROL_MARKER, 10, body @ ..] => eight(body).map(Control::PathChallenge),
            [CONTROL_MARKER, 11, body @ ..] => eight(body).map(Control::PathResponse),
            _ => Err(ProtoError::Control),
        }
    }

    /// Whether a record's plaintext is a control message rather than an IP packet.
    pub fn is_control(b: &[u8]) -> bool {
        b.first() == Some(&CONTROL_MARKER)
    }
}

/// A body of exactly eight bytes (a connection ID or a path token).
fn eight(body: &[u8]) -> Result<[u8; 8], ProtoError> {
    body.try_into().map_err(|_| ProtoError::Control)
}

/// A Dns body after its count: exactly `count` (1 to [`MAX_DNS_SERVERS`]) entries of a family
/// byte (4 or 6) and that family's address, and nothing after them.
fn parse_dns(count: u8, mut body: &[u8]) -> Result<Control, ProtoError> {
    let count = usize::from(count);
    if count == 0 || count > MAX_DNS_SERVERS {
        return Err(ProtoError::Control);
    }
    let mut servers = Vec::with_capacity(count);
    for _ in 0..count {
        let (ip, rest) = match body {
            [4, a, b, c, d, rest @ ..] => (IpAddr::V4(Ipv4Addr::new(*a, *b, *c, *d)), rest),
            [6, rest @ ..] if rest.len() >= 16 => {
                let (addr, rest) = rest.split_at(16);
                let octets: [u8; 16] = addr.try_into().map_err(|_| ProtoError::Control)?;
                (IpAddr::V6(Ipv6Addr::from(octets)), rest)
            }
            _ => return Err(ProtoError::Control),
        };
        servers.push(ip);
        body = rest;
    }
    if !body.is_empty() {
        return Err(ProtoError::Control);
    }
    Ok(Control::Dns(servers))
}

#[cfg(test)]
mod tests;
