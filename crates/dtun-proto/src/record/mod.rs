//! Our DTLS 1.2 record layer for epoch-1 application data and alerts: seal and open records
//! in place, RFC 6347 sequence numbers and a 64-record replay window. Plain code, no I/O and
//! no heap allocation per record.
//!
//! The handshake (`crate::handshake`) seals only its Finished messages here; from the first
//! application record on, every record goes through this layer.
//! Keys live in a [`Sealer`] / [`Opener`] pair built from the handshake's key block; a rekey
//! (`crate::rekey`) gives each the next epoch's keys ([`rekey_sealer`], [`rekey_opener`]), and
//! the opener reads the previous epoch too until that is retired.
//!
//! Besides the plain DTLS 1.2 record, AES-128-GCM sessions may use RFC 9146's connection ID
//! record (content type 25): [`Sealer::set_cid`] seals in it, [`Opener::set_cid`] reads it
//! (docs/PROTOCOL.md, "Connection ID records").

mod header;
pub mod limits;
mod open;
mod replay;
mod seal;

use crate::ccm8::Ccm8;
use crate::consts::{CID_LEN, CONTENT_TLS12_CID, EXPLICIT_NONCE_LEN, RECORD_HEADER_LEN};
use ring::aead::{AES_128_GCM, LessSafeKey, UnboundKey};

use crate::kdf::KeyBlock;

pub use header::{Header, parse_header, peek_cid, record_at, records};
pub use limits::Limits;
pub use open::Opener;
pub use replay::ReplayWindow;
pub use seal::Sealer;

/// A connection ID (RFC 9146) as our records carry it: [`CID_LEN`] bytes.
pub type Cid = [u8; CID_LEN];

/// A negotiated cipher suite of the record layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// TLS_PSK_WITH_AES_128_CCM_8 (0xc0a8), the original's only suite.
    Aes128Ccm8,
    /// TLS_PSK_WITH_AES_128_GCM_SHA256 (0x00a8, RFC 5487): what two dtun peers negotiate,
    /// several times faster than CCM_8 (ring's AES-NI/CLMUL code).
    Aes128Gcm,
}

impl Suite {
    /// IANA cipher suite id.
    pub fn id(self) -> u16 {
        match self {
            Suite::Aes128Ccm8 => 0xc0a8,
            Suite::Aes128Gcm => 0x00a8,
        }
    }

    /// The suite with IANA id `id`, if the record layer implements it.
    pub fn from_id(id: u16) -> Option<Suite> {
        match id {
            0xc0a8 => Some(Suite::Aes128Ccm8),
            0x00a8 => Some(Suite::Aes128Gcm),
            _ => None,
        }
    }

    /// Short name for logs and the `-cipher` flag.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Aes128Ccm8 => "aes-128-ccm8",
            Suite::Aes128Gcm => "aes-128-gcm",
        }
    }

    /// Authentication tag length.
    pub fn tag_len(self) -> usize {
        match self {
            Suite::Aes128Ccm8 => 8,
            Suite::Aes128Gcm => 16,
        }
    }

    /// Bytes a plain record adds to its plaintext: header, explicit nonce, tag (a CID record
    /// adds `CID_LEN` + 1 more: its CID and the inner content type).
    pub fn overhead(self) -> usize {
        RECORD_HEADER_LEN + EXPLICIT_NONCE_LEN + self.tag_len()
    }
}

/// Why a received record was dropped. Every drop is counted, none ends a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than a header, or its length field points past the datagram.
    Truncated,
    /// Plaintext longer than TLS allows.
    Oversized,
    /// Not the epoch of the current keys.
    BadEpoch,
    /// Sequence number already seen or left behind by the window.
    Replay,
    /// Authentication failed.
    BadTag,
    /// A connection ID record whose CID is not the one this opener reads (or an opener that
    /// reads none: a session without CIDs, or any CCM_8 session).
    BadCid,
    /// An authenticated connection ID record whose inner plaintext holds no content type (all
    /// zeros).
    BadInner,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::Truncated,
        DropReason::Oversized,
        DropReason::BadEpoch,
        DropReason::Replay,
        DropReason::BadTag,
        DropReason::BadCid,
        DropReason::BadInner,
    ];

    /// Stable name for logs and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::BadEpoch => "bad_epoch",
            DropReason::Replay => "replay",
            DropReason::BadTag => "bad_tag",
            DropReason::BadCid => "bad_cid",
            DropReason::BadInner => "bad_inner",
        }
    }
}

/// Failure to seal: the only ones are caller errors or an exhausted sequence space.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("record buffer too small for {0} bytes of plaintext")]
    BufferTooSmall(usize),
    #[error("sequence numbers of epoch {0} exhausted")]
    SequenceExhausted(u16),
    #[error("the key of epoch {0} reached its AEAD usage limit (docs/PROTOCOL.md)")]
    UsageLimit(u16),
}

enum Cipher {
    Ccm8(Box<Ccm8>),
    Gcm(Box<LessSafeKey>),
}

impl Cipher {
    fn new(suite: Suite, key: &[u8; 16]) -> Cipher {
        match suite {
            Suite::Aes128Ccm8 => Cipher::Ccm8(Box::new(Ccm8::new(key))),
            Suite::Aes128Gcm => Cipher::Gcm(Box::new(LessSafeKey::new(
                // A 16-byte key is always valid for AES-128-GCM.
                UnboundKey::new(&AES_128_GCM, key).expect("AES-128 key is 16 bytes"),
            ))),
        }
    }
}

/// The 13-byte additional data: seq_num(epoch ‖ seq48) ‖ type ‖ version ‖ plaintext length.
/// The version is the record's own, as pion does, so a changed version fails the tag.
fn aad(epoch_seq: u64, content_type: u8, version: [u8; 2], len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&epoch_seq.to_be_bytes());
    a[8] = content_type;
    a[9..11].copy_from_slice(&version);
    a[11..13].copy_from_slice(&(len as u16).to_be_bytes());
    a
}

/// The 31-byte additional data of a CID record (RFC 9146 §5.3): seq_num_placeholder (8 ×
/// 0xff) ‖ tls12_cid ‖ cid_length ‖ tls12_cid ‖ version ‖ epoch ‖ seq48 ‖ cid ‖ length of the
/// DTLSInnerPlaintext (content, real type, padding). The version is the record's own, as in
/// [`aad`].
fn cid_aad(epoch_seq: u64, version: [u8; 2], cid: &Cid, inner_len: usize) -> [u8; 23 + CID_LEN] {
    let mut a = [0u8; 23 + CID_LEN];
    a[..8].fill(0xff);
    a[8] = CONTENT_TLS12_CID;
    a[9] = CID_LEN as u8;
    a[10] = CONTENT_TLS12_CID;
    a[11..13].copy_from_slice(&version);
    a[13..21].copy_from_slice(&epoch_seq.to_be_bytes());
    a[21..21 + CID_LEN].copy_from_slice(cid);
    a[21 + CID_LEN..].copy_from_slice(&(inner_len as u16).to_be_bytes());
    a
}

fn nonce(salt: &[u8; 4], explicit: &[u8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(explicit);
    n
}

/// Builds the sealer and opener of one side from the handshake's key block.
pub fn session_pair(
    suite: Suite,
    kb: &KeyBlock,
    is_client: bool,
    epoch: u16,
    first_seq: u64,
) -> (Sealer, Opener) {
    if is_client {
        (
            Sealer::new(suite, &kb.client_key, &kb.client_iv, epoch, first_seq),
            Opener::new(suite, &kb.server_key, &kb.server_iv, epoch),
        )
    } else {
        (
            Sealer::new(suite, &kb.server_key, &kb.server_iv, epoch, first_seq),
            Opener::new(suite, &kb.client_key, &kb.client_iv, epoch),
        )
    }
}

/// A rekey of one side's reading half: the peer's keys of the new epoch.
pub fn rekey_opener(opener: &mut Opener, kb: &KeyBlock, is_client: bool, epoch: u16) {
    if is_client {
        opener.rekey(epoch, &kb.server_key, &kb.server_iv);
    } else {
        opener.rekey(epoch, &kb.client_key, &kb.client_iv);
    }
}

/// A rekey of one side's sending half: its own keys of the new epoch.
pub fn rekey_sealer(sealer: &mut Sealer, kb: &KeyBlock, is_client: bool, epoch: u16) {
    if is_client {
        sealer.rekey(epoch, &kb.client_key, &kb.client_iv);
    } else {
        sealer.rekey(epoch, &kb.server_key, &kb.server_iv);
    }
}

#[cfg(test)]
mod cid_tests;
#[cfg(test)]
mod tests;
