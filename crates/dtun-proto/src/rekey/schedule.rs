//! The key schedule of epochs (the module docs of `rekey` draw it): the first epoch's secret
//! is the handshake's exporter, each next one chains the last one with both shared secrets
//! and the exchange's transcript, and each epoch's traffic keys come from its secret.

use ring::{digest, hkdf};
use zeroize::Zeroizing;

use super::hybrid::Shared;
use crate::kdf::{self, KeyBlock, MASTER_SECRET_LEN, RANDOM_LEN};

/// Length of an epoch secret.
pub const SECRET_LEN: usize = 32;
/// The exporter label of the first epoch's secret (RFC 5705).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-dtun-epoch-secret";
/// What the transcript hash starts with (the exchange's version).
pub const TRANSCRIPT_PREFIX: &[u8] = b"dtun rekey 1";
const EPOCH_LABEL: &[u8] = b"dtun epoch secret";
const CLIENT_KEY: &[u8] = b"dtun client key";
const SERVER_KEY: &[u8] = b"dtun server key";
const CLIENT_IV: &[u8] = b"dtun client iv";
const SERVER_IV: &[u8] = b"dtun server iv";

/// One epoch's secret and its number; wiped when dropped, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct EpochSecret {
    epoch: u16,
    secret: Zeroizing<[u8; SECRET_LEN]>,
}

impl std::fmt::Debug for EpochSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EpochSecret {{ epoch: {}, .. }}", self.epoch)
    }
}

/// An HKDF output length.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(prk: &hkdf::Prk, info: &[&[u8]], out: &mut [u8]) {
    // HKDF-Expand fails only for outputs over 255 hash lengths; ours are 32 bytes at most.
    if let Ok(okm) = prk.expand(info, Len(out.len())) {
        let _ = okm.fill(out);
    }
}

impl EpochSecret {
    /// The first epoch's (the handshake's keys'): the handshake's RFC 5705 exporter.
    pub fn first(
        master: &[u8; MASTER_SECRET_LEN],
        client_random: &[u8; RANDOM_LEN],
        server_random: &[u8; RANDOM_LEN],
    ) -> EpochSecret {
        let mut seed = [0u8; 2 * RANDOM_LEN];
        seed[..RANDOM_LEN].copy_from_slice(client_random);
        seed[RANDOM_LEN..].copy_from_slice(server_random);
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        kdf::prf_sha256(master, EXPORTER_LABEL, &seed, &mut secret[..]);
        EpochSecret { epoch: 1, secret }
    }

    /// A secret as the known-answer tests give it.
    #[cfg(any(test, feature = "test-util"))]
    pub fn from_bytes(epoch: u16, secret: [u8; SECRET_LEN]) -> EpochSecret {
        EpochSecret {
            epoch,
            secret: Zeroizing::new(secret),
        }
    }

    pub fn epoch(&self) -> u16 {
        self.epoch
    }

    /// The secret's bytes (for the known-answer tests and the capture decryptor).
    pub fn bytes(&self) -> &[u8; SECRET_LEN] {
        &self.secret
    }

    /// The next epoch's secret from this one, an exchange's shared secrets and its messages
    /// (the Init and Reply bodies as sent). None after the last epoch (the epoch field is 16
    /// bits and must not wrap: the session handshakes again instead).
    pub fn next(&self, shared: &Shared, init: &[u8], reply: &[u8]) -> Option<EpochSecret> {
        let epoch = self.epoch.checked_add(1)?;
        let mut t = digest::Context::new(&digest::SHA256);
        t.update(TRANSCRIPT_PREFIX);
        t.update(init);
        t.update(reply);
        let t = t.finish();
        let mut ikm = Zeroizing::new([0u8; 2 * super::hybrid::SHARED_LEN]);
        ikm[..32].copy_from_slice(&shared.x25519);
        ikm[32..].copy_from_slice(&shared.mlkem);
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &self.secret[..]).extract(&ikm[..]);
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        expand(
            &prk,
            &[EPOCH_LABEL, &epoch.to_be_bytes(), t.as_ref()],
            &mut secret[..],
        );
        Some(EpochSecret { epoch, secret })
    }

    /// This epoch's traffic keys (the same shape as the handshake's key block).
    pub fn keys(&self) -> KeyBlock {
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &self.secret[..]);
        let e = self.epoch.to_be_bytes();
        let mut keys = KeyBlock {
            client_key: [0; 16],
            server_key: [0; 16],
            client_iv: [0; 4],
            server_iv: [0; 4],
        };
        expand(&prk, &[CLIENT_KEY, &e], &mut keys.client_key);
        expand(&prk, &[SERVER_KEY, &e], &mut keys.server_key);
        expand(&prk, &[CLIENT_IV, &e], &mut keys.client_iv);
        expand(&prk, &[SERVER_IV, &e], &mut keys.server_iv);
        keys
    }
}
