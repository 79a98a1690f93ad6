//! The key schedule both sides run once the ClientKeyExchange is known: the extended master
//! secret over the session hash (RFC 7627), the key block, the Finished messages'
//! verify_data (RFC 5246 §7.4.9), and sealing and opening a Finished in epoch 1 with our
//! record layer.

use ring::digest;

use super::wire::{FINISHED, HS_HEADER, VERIFY_DATA_LEN, messages, push_message};
use crate::consts::{CONTENT_HANDSHAKE, PAYLOAD_OFFSET};
use crate::kdf::{self, KeyBlock, MASTER_SECRET_LEN, RANDOM_LEN};
use crate::record::{Opener, Sealer, Suite};

/// A Finished message, header included, as hashed.
pub(super) const FINISHED_LEN: usize = HS_HEADER + VERIFY_DATA_LEN;
/// Largest sealed Finished record: header, explicit nonce, message, a 16-byte tag.
pub(super) const FINISHED_RECORD_LEN: usize = PAYLOAD_OFFSET + FINISHED_LEN + 16;

/// The secrets of a handshake whose transcript reached the ClientKeyExchange; wiped when
/// dropped.
pub(super) struct Secrets {
    pub(super) master: zeroize::Zeroizing<[u8; MASTER_SECRET_LEN]>,
    pub(super) keys: KeyBlock,
    /// The first epoch's secret (the exporter a rekey chains from, `crate::rekey`).
    pub(super) epoch1: crate::rekey::EpochSecret,
}

impl Secrets {
    /// `transcript` runs from the ClientHello (the one with the cookie) through the
    /// ClientKeyExchange: its hash is the session hash.
    pub(super) fn derive(
        psk: &[u8],
        transcript: &[u8],
        client_random: &[u8; RANDOM_LEN],
        server_random: &[u8; RANDOM_LEN],
    ) -> Secrets {
        let session_hash = digest::digest(&digest::SHA256, transcript);
        let master = zeroize::Zeroizing::new(kdf::extended_master_secret(
            &kdf::psk_premaster(psk),
            session_hash.as_ref(),
        ));
        let keys = kdf::key_block(&*master, client_random, server_random);
        let epoch1 = crate::rekey::EpochSecret::first(&master, client_random, server_random);
        Secrets {
            master,
            keys,
            epoch1,
        }
    }

    /// The verify_data of a Finished: `label` is "client finished" or "server finished",
    /// `transcript` every handshake message before that Finished.
    pub(super) fn verify_data(&self, label: &[u8], transcript: &[u8]) -> [u8; VERIFY_DATA_LEN] {
        let mut out = [0u8; VERIFY_DATA_LEN];
        let hash = digest::digest(&digest::SHA256, transcript);
        kdf::prf_sha256(&*self.master, label, hash.as_ref(), &mut out);
        out
    }
}

/// The Finished message with `verify_data`, as hashed and sent.
pub(super) fn finished_message(msg_seq: u16, verify_data: &[u8; VERIFY_DATA_LEN]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(FINISHED_LEN);
    push_message(&mut msg, FINISHED, msg_seq, verify_data);
    msg
}

/// Seals a Finished message (`FINISHED_LEN` bytes) as the next epoch-1 record of `sealer`
/// onto `out`; `false` when sealing failed.
pub(super) fn seal_finished(sealer: &mut Sealer, message: &[u8], out: &mut Vec<u8>) -> bool {
    let mut rec = [0u8; FINISHED_RECORD_LEN];
    let Some(plain) = rec.get_mut(PAYLOAD_OFFSET..PAYLOAD_OFFSET + message.len()) else {
        return false;
    };
    plain.copy_from_slice(message);
    match sealer.seal(CONTENT_HANDSHAKE, &mut rec, message.len()) {
        Ok(n) => {
            out.extend_from_slice(&rec[..n]);
            true
        }
        Err(_) => false,
    }
}

/// Why an epoch-1 record was not a Finished.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NotFinished {
    /// Longer than any Finished record.
    Oversized,
    /// It did not decrypt.
    Undecryptable,
    /// It decrypted to something else.
    Malformed,
}

/// Opens an epoch-1 record (header included) and reads it as a Finished: returns the whole
/// message as hashed.
pub(super) fn open_finished(
    opener: &mut Opener,
    rec: &[u8],
) -> Result<[u8; FINISHED_LEN], NotFinished> {
    let mut buf = [0u8; 128];
    let copy = buf.get_mut(..rec.len()).ok_or(NotFinished::Oversized)?;
    copy.copy_from_slice(rec);
    let (content, range) = opener.open(copy).map_err(|_| NotFinished::Undecryptable)?;
    let fin = (content == CONTENT_HANDSHAKE)
        .then(|| messages(&copy[range]).next())
        .flatten()
        .filter(|m| m.typ == FINISHED && m.body.len() == VERIFY_DATA_LEN)
        .ok_or(NotFinished::Malformed)?;
    let mut whole = [0u8; FINISHED_LEN];
    whole.copy_from_slice(fin.whole);
    Ok(whole)
}

/// The opener for the peer's epoch 1 and the sealer for ours, from the key block.
pub(super) fn epoch_one(suite: Suite, keys: &KeyBlock, client: bool) -> (Sealer, Opener) {
    let (ours, theirs) = if client {
        (
            (&keys.client_key, &keys.client_iv),
            (&keys.server_key, &keys.server_iv),
        )
    } else {
        (
            (&keys.server_key, &keys.server_iv),
            (&keys.client_key, &keys.client_iv),
        )
    };
    (
        Sealer::new(suite, ours.0, ours.1, 1, 0),
        Opener::new(suite, theirs.0, theirs.1, 1),
    )
}
