//! The first flight of the server's handshake: reading a ClientHello, and answering one
//! without a valid cookie with a HelloVerifyRequest whose cookie is an HMAC of the peer's
//! address and hello random, keeping nothing (RFC 6347 §4.2.1).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ring::{hmac, rand::SecureRandom};

use super::wire::{
    CLIENT_HELLO, EXT_EMS, EXT_RENEGOTIATION_INFO, HELLO_VERIFY_REQUEST, HS_HEADER,
    SCSV_RENEGOTIATION, ct_eq, messages,
};
use crate::consts::{CONTENT_HANDSHAKE, DTLS12_VERSION, RECORD_HEADER_LEN};
use crate::kdf::RANDOM_LEN;
use crate::record::{self, Suite};

/// Length of our cookies (the crate's is 20 too).
pub const COOKIE_LEN: usize = 20;
/// A cookie is good under the current secret and the one before: 2 to 4 rotations' worth.
pub const COOKIE_ROTATION: Duration = Duration::from_secs(30);
/// Largest HelloVerifyRequest datagram we build.
pub const HVR_LEN: usize = RECORD_HEADER_LEN + HS_HEADER + 3 + COOKIE_LEN;

/// What of a ClientHello the server needs.
#[derive(Debug)]
pub struct ClientHello<'a> {
    /// Record sequence number, echoed in the HelloVerifyRequest (RFC 6347 §4.2.1).
    pub record_seq: u64,
    pub message_seq: u16,
    /// The whole message as hashed into the transcript.
    pub message: &'a [u8],
    pub random: [u8; RANDOM_LEN],
    pub cookie: &'a [u8],
    /// Cipher suites, two bytes each, in the client's order of preference.
    suites: &'a [u8],
    pub extended_master_secret: bool,
    /// The client sent renegotiation_info or its SCSV, so our ServerHello answers with it.
    pub renegotiation_info: bool,
}

impl ClientHello<'_> {
    /// The first of the client's suites (its order decides) that we accept.
    pub fn choose(&self, ours: &[Suite]) -> Option<Suite> {
        self.suites
            .chunks_exact(2)
            .filter_map(|c| Suite::from_id(u16::from_be_bytes([c[0], c[1]])))
            .find(|s| ours.contains(s))
    }
}

/// Reads a datagram as a ClientHello: its first record is an epoch-0 handshake record whose
/// first message is a whole DTLS 1.2 ClientHello. Anything else is `None`.
pub fn parse_client_hello(dg: &[u8]) -> Option<ClientHello<'_>> {
    let rec = dg.get(record::record_at(dg, 0).ok()?)?;
    if rec[0] != CONTENT_HANDSHAKE || rec[3..5] != [0, 0] {
        return None;
    }
    let record_seq = u64::from_be_bytes([0, 0, rec[5], rec[6], rec[7], rec[8], rec[9], rec[10]]);
    let m = messages(&rec[RECORD_HEADER_LEN..]).next()?;
    if m.typ != CLIENT_HELLO {
        return None;
    }
    // client_version(2) random(32) session_id<0..32> cookie<0..255> cipher_suites<2..2^16-2>
    // compression_methods<1..255> extensions<0..2^16-1>
    let b = m.body;
    if b.get(..2)? != DTLS12_VERSION {
        return None;
    }
    let random: [u8; RANDOM_LEN] = b.get(2..34)?.try_into().ok()?;
    let mut at = 34;
    let vec8 = |at: &mut usize| -> Option<&[u8]> {
        let n = usize::from(*b.get(*at)?);
        let v = b.get(*at + 1..*at + 1 + n)?;
        *at += 1 + n;
        Some(v)
    };
    let session_id = vec8(&mut at)?;
    if session_id.len() > 32 {
        return None;
    }
    let cookie = vec8(&mut at)?;
    let n = usize::from(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?));
    let suites = b.get(at + 2..at + 2 + n)?;
    at += 2 + n;
    let _compression = vec8(&mut at)?;
    let (mut ems, mut reneg) = (false, false);
    reneg |= suites
        .chunks_exact(2)
        .any(|c| u16::from_be_bytes([c[0], c[1]]) == SCSV_RENEGOTIATION);
    if let Some(len) = b.get(at..at + 2) {
        let n = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let mut ext = b.get(at + 2..at + 2 + n)?;
        while ext.len() >= 4 {
            let typ = u16::from_be_bytes([ext[0], ext[1]]);
            let len = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
            ext = ext.get(4 + len..)?;
            ems |= typ == EXT_EMS;
            reneg |= typ == EXT_RENEGOTIATION_INFO;
        }
    }
    Some(ClientHello {
        record_seq,
        message_seq: m.seq,
        message: m.whole,
        random,
        cookie,
        suites,
        extended_master_secret: ems,
        renegotiation_info: reneg,
    })
}

/// Stateless cookies: HMAC-SHA256(secret, peer address ‖ hello random), truncated; the secret
/// changes every [`COOKIE_ROTATION`] and the previous one is still accepted.
pub struct Cookies {
    current: hmac::Key,
    previous: hmac::Key,
    rotated_at: Instant,
}

impl Cookies {
    pub fn new(now: Instant) -> Self {
        Cookies {
            current: random_key(),
            previous: random_key(),
            rotated_at: now,
        }
    }

    pub fn rotate_if_due(&mut self, now: Instant) {
        if now.duration_since(self.rotated_at) >= COOKIE_ROTATION {
            self.previous = std::mem::replace(&mut self.current, random_key());
            self.rotated_at = now;
        }
    }

    fn compute(key: &hmac::Key, addr: SocketAddr, random: &[u8; RANDOM_LEN]) -> [u8; COOKIE_LEN] {
        let mut ctx = hmac::Context::with_key(key);
        match addr.ip() {
            std::net::IpAddr::V4(ip) => ctx.update(&ip.to_ipv6_mapped().octets()),
            std::net::IpAddr::V6(ip) => ctx.update(&ip.octets()),
        }
        ctx.update(&addr.port().to_be_bytes());
        ctx.update(random);
        let tag = ctx.sign();
        let mut c = [0u8; COOKIE_LEN];
        c.copy_from_slice(&tag.as_ref()[..COOKIE_LEN]);
        c
    }

    pub fn make(&self, addr: SocketAddr, random: &[u8; RANDOM_LEN]) -> [u8; COOKIE_LEN] {
        Self::compute(&self.current, addr, random)
    }

    pub fn check(&self, addr: SocketAddr, random: &[u8; RANDOM_LEN], cookie: &[u8]) -> bool {
        [&self.current, &self.previous]
            .into_iter()
            .any(|k| ct_eq(&Self::compute(k, addr, random), cookie))
    }
}

fn random_key() -> hmac::Key {
    let mut secret = [0u8; 32];
    // The system RNG failing is not recoverable; a zero key would still be unguessable to no one.
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .expect("system random number generator");
    hmac::Key::new(hmac::HMAC_SHA256, &secret)
}

/// Writes the HelloVerifyRequest for `ch` with `cookie` into `out`; returns its length.
pub fn hello_verify_request(ch: &ClientHello, cookie: &[u8; COOKIE_LEN], out: &mut [u8; HVR_LEN]) {
    let body_len = 3 + COOKIE_LEN;
    let seq = ch.record_seq.to_be_bytes();
    out[0] = CONTENT_HANDSHAKE;
    out[1..3].copy_from_slice(&DTLS12_VERSION);
    out[3..5].copy_from_slice(&[0, 0]);
    out[5..11].copy_from_slice(&seq[2..]);
    out[11..13].copy_from_slice(&((HS_HEADER + body_len) as u16).to_be_bytes());
    let h = &mut out[RECORD_HEADER_LEN..];
    h[0] = HELLO_VERIFY_REQUEST;
    h[1..4].copy_from_slice(&(body_len as u32).to_be_bytes()[1..]);
    h[4..6].copy_from_slice(&[0, 0]);
    h[6..9].copy_from_slice(&[0, 0, 0]);
    h[9..12].copy_from_slice(&(body_len as u32).to_be_bytes()[1..]);
    h[12..14].copy_from_slice(&DTLS12_VERSION);
    h[14] = COOKIE_LEN as u8;
    h[15..15 + COOKIE_LEN].copy_from_slice(cookie);
}
