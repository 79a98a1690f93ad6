//! AEAD usage limits per key and direction (RFC 9147 §4.5.3, draft-irtf-cfrg-aead-limits):
//! how much one key may seal (confidentiality) and how many forged records it may reject
//! (integrity) before the session must get fresh keys. The numbers and the reasoning behind
//! them are in docs/PROTOCOL.md, "AEAD usage limits"; this file is the one place they live.
//!
//! Counting is plain integer arithmetic on the [`Sealer`](super::Sealer) and
//! [`Opener`](super::Opener) that own the key: no allocation, no lock, no atomic.

use super::Suite;

/// `2^34.5` AES block operations under one key: TLS 1.3's limit of `2^24.5` full-size
/// (`2^10`-block) records, counted in blocks so that dtun's 1 400-byte records are not charged
/// as 16 KB ones. With GCM's bound `(σ+q+1)² / 2^129` it keeps an attacker's advantage under
/// `2^-60`; CCM is charged its two AES calls per block, so it stays at least as tight.
pub const SEALED_BLOCKS: u64 = 24_296_003_999; // floor(2^34.5)

/// Blocks kept in reserve below [`SEALED_BLOCKS`]: once no more than this many are left, the
/// sender stops sending packets and closes the session; the reserve is for the close itself
/// (and the tail of a batch that was already being sealed: 256 CCM_8 records of 1 500 bytes
/// are 48 896 blocks).
pub const SEALED_BLOCKS_RESERVE: u64 = 1 << 16;

/// Records that fail authentication, for AES-128-GCM (RFC 9147 §4.5.3: `2^36`).
pub const FAILED_OPENS_GCM: u64 = 1 << 36;

/// Records that fail authentication, for AES-128-CCM_8, between dtun peers. An 8-byte tag is
/// guessed with probability `2^-64` per try, so `2^16` failures bound a forgery's chance per
/// key at `2^-48`, while an off-path spoofer (who must also know the 4-tuple, the epoch and a
/// sequence number inside the window) needs 65 536 datagrams to make a dtun pair handshake
/// again. RFC 9147 gives no limit for CCM_8 ("MUST NOT be used in DTLS without additional
/// safeguards against forgery"); with an original peer nothing closes (docs/PROTOCOL.md).
pub const FAILED_OPENS_CCM8: u64 = 1 << 16;

/// The limits of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// AES block operations the sealer may spend ([`blocks`]).
    pub sealed_blocks: u64,
    /// Failed authentications the opener may see before the session must close.
    pub failed_opens: u64,
}

impl Limits {
    /// The limits of `suite`. Test builds (the test-only feature `test-util`) read
    /// `DTUN_TEST_AEAD_LIMITS=SEALED_BLOCKS,FAILED_OPENS` instead, so a test reaches a limit
    /// in seconds; a release build has no such variable.
    pub fn of(suite: Suite) -> Limits {
        #[cfg(feature = "test-util")]
        if let Some(l) = test_override() {
            return l;
        }
        Limits {
            sealed_blocks: SEALED_BLOCKS,
            failed_opens: match suite {
                Suite::Aes128Gcm => FAILED_OPENS_GCM,
                Suite::Aes128Ccm8 => FAILED_OPENS_CCM8,
            },
        }
    }
}

#[cfg(feature = "test-util")]
fn test_override() -> Option<Limits> {
    let v = std::env::var("DTUN_TEST_AEAD_LIMITS").ok()?;
    let (s, f) = v.split_once(',')?;
    Some(Limits {
        sealed_blocks: s.trim().parse().ok()?,
        failed_opens: f.trim().parse().ok()?,
    })
}

/// AES block operations that sealing `len` plaintext bytes costs under `suite`: GCM one per
/// 16 bytes plus one for the tag; CCM two per 16 bytes (CBC-MAC and CTR) plus three (B0, the
/// additional data, the tag's counter block).
#[inline]
pub fn blocks(suite: Suite, len: usize) -> u64 {
    let b = (len as u64).div_ceil(16);
    match suite {
        Suite::Aes128Gcm => b + 1,
        Suite::Aes128Ccm8 => 2 * b + 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_are_what_the_references_say() {
        // 2^34.5 = 2^34 * sqrt(2).
        let exact = (1u64 << 34) as f64 * std::f64::consts::SQRT_2;
        assert_eq!(SEALED_BLOCKS, exact.floor() as u64);
        // A 1 400-byte GCM record costs 89 blocks: about 273 million records, 380 GB.
        assert_eq!(blocks(Suite::Aes128Gcm, 1400), 89);
        assert_eq!(SEALED_BLOCKS / 89, 272988808);
        assert_eq!(blocks(Suite::Aes128Ccm8, 1400), 179);
        assert!(SEALED_BLOCKS_RESERVE > 256 * blocks(Suite::Aes128Ccm8, 1500));
    }
}
