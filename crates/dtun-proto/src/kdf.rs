//! TLS 1.2 key derivation (RFC 5246 §5 PRF with HMAC-SHA256, RFC 4279 PSK premaster,
//! RFC 7627 extended master secret, RFC 5246 §6.3 key expansion), as plain functions without I/O.
//!
//! Both sides of the handshake (`crate::handshake`) derive their secrets with these, and the
//! known-answer tests redo the whole derivation from a key.

use ring::hmac;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of a TLS 1.2 master secret.
pub const MASTER_SECRET_LEN: usize = 48;
/// Length of a hello random.
pub const RANDOM_LEN: usize = 32;

/// `P_SHA256(secret, label ‖ seed)` filling `out` (RFC 5246 §5).
pub fn prf_sha256(secret: &[u8], label: &[u8], seed: &[u8], out: &mut [u8]) {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    // A(1) = HMAC(secret, label ‖ seed)
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(label);
    ctx.update(seed);
    let mut a = ctx.sign();
    let mut filled = 0;
    while filled < out.len() {
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(a.as_ref());
        ctx.update(label);
        ctx.update(seed);
        let block = ctx.sign();
        let n = (out.len() - filled).min(block.as_ref().len());
        out[filled..filled + n].copy_from_slice(&block.as_ref()[..n]);
        filled += n;
        a = hmac::sign(&key, a.as_ref());
    }
}

/// The plain-PSK premaster secret of RFC 4279 §2: `N ‖ 0^N ‖ N ‖ psk`, N = len(psk); wiped
/// when dropped.
pub fn psk_premaster(psk: &[u8]) -> Zeroizing<Vec<u8>> {
    let n = u16::try_from(psk.len()).unwrap_or(u16::MAX).to_be_bytes();
    let mut pms = Zeroizing::new(Vec::with_capacity(4 + 2 * psk.len()));
    pms.extend_from_slice(&n);
    pms.resize(2 + psk.len(), 0);
    pms.extend_from_slice(&n);
    pms.extend_from_slice(psk);
    pms
}

/// RFC 7627: `PRF(premaster, "extended master secret", session_hash)`.
pub fn extended_master_secret(premaster: &[u8], session_hash: &[u8]) -> [u8; MASTER_SECRET_LEN] {
    let mut ms = [0u8; MASTER_SECRET_LEN];
    prf_sha256(premaster, b"extended master secret", session_hash, &mut ms);
    ms
}

/// Write keys and implicit IV salts of both directions for an AEAD suite with 16-byte keys and
/// 4-byte salts (AES-128-CCM_8 and AES-128-GCM alike: no MAC keys). Wiped when dropped; its
/// Debug output shows nothing of it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct KeyBlock {
    pub client_key: [u8; 16],
    pub server_key: [u8; 16],
    pub client_iv: [u8; 4],
    pub server_iv: [u8; 4],
}

#[cfg(test)]
impl KeyBlock {
    /// The fixed key block the unit tests seal and open with (1s, 2s, 3s and 4s).
    pub(crate) fn for_test() -> KeyBlock {
        KeyBlock {
            client_key: [1; 16],
            server_key: [2; 16],
            client_iv: [3; 4],
            server_iv: [4; 4],
        }
    }
}

impl std::fmt::Debug for KeyBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBlock { .. }")
    }
}

/// RFC 5246 §6.3: `PRF(master, "key expansion", server_random ‖ client_random)`.
pub fn key_block(
    master_secret: &[u8],
    client_random: &[u8; RANDOM_LEN],
    server_random: &[u8; RANDOM_LEN],
) -> KeyBlock {
    let mut seed = [0u8; 2 * RANDOM_LEN];
    seed[..RANDOM_LEN].copy_from_slice(server_random);
    seed[RANDOM_LEN..].copy_from_slice(client_random);
    let mut block = [0u8; 40];
    prf_sha256(master_secret, b"key expansion", &seed, &mut block);
    let mut kb = KeyBlock {
        client_key: [0; 16],
        server_key: [0; 16],
        client_iv: [0; 4],
        server_iv: [0; 4],
    };
    kb.client_key.copy_from_slice(&block[0..16]);
    kb.server_key.copy_from_slice(&block[16..32]);
    kb.client_iv.copy_from_slice(&block[32..36]);
    kb.server_iv.copy_from_slice(&block[36..40]);
    block.zeroize();
    kb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prf_matches_published_tls12_vector() {
        // The widely used TLS 1.2 PRF-SHA256 test vector (IETF TLS list, 2009).
        let secret = hex::decode("9bbe436ba940f017b17652849a71db35").unwrap();
        let seed = hex::decode("a0ba9f936cda311827a6f796ffd5198c").unwrap();
        let mut out = [0u8; 100];
        prf_sha256(&secret, b"test label", &seed, &mut out);
        assert_eq!(
            hex::encode(out),
            "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff70187347b66"
        );
    }

    /// Zeroize on drop is a property of the types, checked here at compile time.
    #[test]
    fn key_material_is_wiped_on_drop() {
        fn wiped_on_drop<T: ZeroizeOnDrop>(_: &T) {}
        wiped_on_drop(&key_block(
            &[0; MASTER_SECRET_LEN],
            &[1; RANDOM_LEN],
            &[2; RANDOM_LEN],
        ));
        wiped_on_drop(&psk_premaster(b"k"));
    }

    #[test]
    fn psk_premaster_layout() {
        assert_eq!(
            psk_premaster(b"foo").to_vec(),
            vec![0, 3, 0, 0, 0, 0, 3, b'f', b'o', b'o']
        );
    }
}
