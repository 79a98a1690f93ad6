//! The client's handshake messages on their own: the ClientHello and ClientKeyExchange it
//! builds, and the HelloVerifyRequest, ServerHello and ServerKeyExchange it reads (`None`:
//! does not parse, to be ignored).

use super::super::wire::{
    ALERT_HANDSHAKE_FAILURE, ALERT_ILLEGAL_PARAMETER, CLIENT_HELLO, CLIENT_KEY_EXCHANGE, EXT_EMS,
    EXT_RENEGOTIATION_INFO, EXT_SIGNATURE_ALGORITHMS, HS_HEADER, extensions, push_message, vec_at,
};
use crate::consts::DTLS12_VERSION;
use crate::kdf::RANDOM_LEN;
use crate::record::Suite;

/// signature_algorithms as the crate offered them (RFC 5246 §7.4.1.4.1; unused by PSK suites,
/// sent so that a server sees the ClientHello it always saw): ecdsa and rsa with SHA-256, -384
/// and -512, ed25519.
const SIGNATURE_ALGORITHMS: [u8; 14] = [
    0x04, 0x03, 0x05, 0x03, 0x06, 0x03, 0x04, 0x01, 0x05, 0x01, 0x06, 0x01, 0x08, 0x07,
];
/// Longest cookie a HelloVerifyRequest may carry (RFC 6347 §4.2.1: `opaque cookie<0..2^8-1>`).
const MAX_COOKIE: usize = 255;

/// A ClientHello message (header included, as hashed): `suites` in this order, null
/// compression, signature_algorithms, renegotiation_info, extended_master_secret.
pub(super) fn client_hello(
    random: &[u8; RANDOM_LEN],
    cookie: &[u8],
    suites: &[Suite],
    msg_seq: u16,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(96 + cookie.len() + 2 * suites.len());
    b.extend_from_slice(&DTLS12_VERSION);
    b.extend_from_slice(random);
    b.push(0); // no session id
    b.push(cookie.len().min(MAX_COOKIE) as u8);
    b.extend_from_slice(&cookie[..cookie.len().min(MAX_COOKIE)]);
    b.extend_from_slice(&((2 * suites.len()) as u16).to_be_bytes());
    for s in suites {
        b.extend_from_slice(&s.id().to_be_bytes());
    }
    b.extend_from_slice(&[1, 0]); // null compression only
    let mut ext = Vec::with_capacity(32);
    ext.extend_from_slice(&EXT_SIGNATURE_ALGORITHMS.to_be_bytes());
    ext.extend_from_slice(&(SIGNATURE_ALGORITHMS.len() as u16 + 2).to_be_bytes());
    ext.extend_from_slice(&(SIGNATURE_ALGORITHMS.len() as u16).to_be_bytes());
    ext.extend_from_slice(&SIGNATURE_ALGORITHMS);
    ext.extend_from_slice(&EXT_RENEGOTIATION_INFO.to_be_bytes());
    ext.extend_from_slice(&[0, 1, 0]);
    ext.extend_from_slice(&EXT_EMS.to_be_bytes());
    ext.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    b.extend_from_slice(&ext);
    let mut msg = Vec::with_capacity(HS_HEADER + b.len());
    push_message(&mut msg, CLIENT_HELLO, msg_seq, &b);
    msg
}

/// A ClientKeyExchange message (RFC 4279 §2: the PSK identity), header included.
pub(super) fn client_key_exchange(identity: &[u8], msg_seq: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + identity.len());
    body.extend_from_slice(&(identity.len() as u16).to_be_bytes());
    body.extend_from_slice(identity);
    let mut msg = Vec::with_capacity(HS_HEADER + body.len());
    push_message(&mut msg, CLIENT_KEY_EXCHANGE, msg_seq, &body);
    msg
}

/// The cookie of a HelloVerifyRequest body: server_version(2) cookie<1..2^8-1>.
pub(super) fn hello_verify_cookie(body: &[u8]) -> Option<&[u8]> {
    let mut at = 2;
    let cookie = vec_at::<1>(body, &mut at)?;
    (body.len() >= 2 && at == body.len() && !cookie.is_empty()).then_some(cookie)
}

/// The identity hint of a ServerKeyExchange body (RFC 4279 §2).
pub(super) fn key_exchange_hint(body: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    let hint = vec_at::<2>(body, &mut at)?;
    (at == body.len()).then_some(hint)
}

/// What of a ServerHello the client checks and keeps.
pub(super) struct ServerHello {
    version: [u8; 2],
    pub(super) random: [u8; RANDOM_LEN],
    suite: u16,
    compression: u8,
    extended_master_secret: bool,
}

/// Reads a ServerHello body: server_version(2) random(32) session_id<0..32> cipher_suite(2)
/// compression(1) extensions<0..2^16-1>.
pub(super) fn parse_server_hello(b: &[u8]) -> Option<ServerHello> {
    let version = b.get(..2)?.try_into().ok()?;
    let random = b.get(2..34)?.try_into().ok()?;
    let mut at = 34;
    let sid = vec_at::<1>(b, &mut at)?;
    let suite = u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?);
    let compression = *b.get(at + 2)?;
    let ext = extensions(b, at + 3)?;
    (sid.len() <= 32).then_some(ServerHello {
        version,
        random,
        suite,
        compression,
        extended_master_secret: ext.iter().any(|(t, _)| *t == EXT_EMS),
    })
}

impl ServerHello {
    /// The suite it chose, if we can take it: DTLS 1.2, a suite we offered, no compression,
    /// extended master secret. `Err`: why not, and the alert to send.
    pub(super) fn accept(&self, offered: &[Suite]) -> Result<Suite, (String, u8)> {
        if self.version != DTLS12_VERSION {
            return Err((
                format!(
                    "the server answered with version {:02x?}, not DTLS 1.2",
                    self.version
                ),
                ALERT_ILLEGAL_PARAMETER,
            ));
        }
        let Some(suite) = Suite::from_id(self.suite).filter(|s| offered.contains(s)) else {
            return Err((
                format!(
                    "the server chose cipher suite {:#06x}, which we did not offer",
                    self.suite
                ),
                ALERT_ILLEGAL_PARAMETER,
            ));
        };
        if self.compression != 0 {
            return Err((
                format!("the server chose compression method {}", self.compression),
                ALERT_ILLEGAL_PARAMETER,
            ));
        }
        if !self.extended_master_secret {
            return Err((
                "the server does not use the extended master secret (RFC 7627), which we require"
                    .into(),
                ALERT_HANDSHAKE_FAILURE,
            ));
        }
        Ok(suite)
    }
}
