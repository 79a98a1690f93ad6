//! Records that arrive before the client's handshake has ended: only the shapes a server's
//! first record can have are kept, so spoofed ones cannot crowd the real one out.

use crate::consts::{
    ADDRESS_MESSAGE_LEN, CONTENT_ALERT, CONTENT_APPLICATION_DATA, RECORD_HEADER_LEN,
};
use crate::record::{self, Suite};

/// Most early candidates kept (at most 45 bytes each).
pub const EARLY_CANDIDATES: usize = 64;

/// Application-data datagrams that arrive before our handshake has ended: the address message
/// overtakes the server's last flight when that is lost. They are opened once the handshake
/// is established (as when the `dtls` crate did the handshake and told the keys only then), so
/// they are kept as candidates until then; what a spoofer sends must not crowd out the real one:
/// - only a datagram of exactly one record shaped like the address message (application data,
///   epoch 1, 8 bytes of plaintext under CCM_8 or GCM) or a refusal is a candidate;
/// - a copy of a kept datagram takes no second place;
/// - past [`EARLY_CANDIDATES`], reservoir sampling: every candidate seen so far stays with the
///   same chance, so a flood before the real record cannot push it out for sure (keeping the
///   first few did), nor can one after it (keeping the last few would).
///
/// A flood of well-shaped forgeries can still lower the real record's chance (to 64 in the
/// number of candidates); then the setup times out and the client reconnects.
pub struct EarlyRecords {
    pub kept: Vec<Vec<u8>>,
    /// Distinct candidates seen.
    seen: u64,
    /// The sampler's state (splitmix64), seeded from the session's secure randomness: a
    /// spoofer sees nothing of which slot a candidate took.
    state: u64,
}

impl EarlyRecords {
    pub fn new(seed: u64) -> EarlyRecords {
        EarlyRecords {
            kept: Vec::new(),
            seen: 0,
            state: seed,
        }
    }

    pub fn push(&mut self, datagram: &[u8]) {
        if !could_be_first(datagram) || self.kept.iter().any(|k| k == datagram) {
            return;
        }
        self.seen += 1;
        if self.kept.len() < EARLY_CANDIDATES {
            self.kept.push(datagram.to_vec());
            return;
        }
        let slot = self.next() % self.seen;
        if let Some(k) = usize::try_from(slot)
            .ok()
            .and_then(|s| self.kept.get_mut(s))
        {
            k.clear();
            k.extend_from_slice(datagram);
        }
    }

    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Whether a datagram is one record shaped like the server's first: the address message
/// (application data in epoch 1 with 8 bytes of plaintext under CCM_8 or GCM), or what a
/// server refusing us sends instead: a Close control record (at most 3 + 200 bytes) and an
/// encrypted alert (2 bytes: close_notify).
pub fn could_be_first(datagram: &[u8]) -> bool {
    let Ok(h) = record::parse_header(datagram) else {
        return false;
    };
    let plain = [Suite::Aes128Ccm8, Suite::Aes128Gcm]
        .map(|s| h.body_len.checked_sub(s.overhead() - RECORD_HEADER_LEN));
    let fits = |ok: &dyn Fn(usize) -> bool| plain.iter().flatten().any(|n| ok(*n));
    let shaped = match h.content_type {
        CONTENT_APPLICATION_DATA => fits(&|n| {
            n == ADDRESS_MESSAGE_LEN || (3..=3 + crate::proto::MAX_CLOSE_DETAIL).contains(&n)
        }),
        CONTENT_ALERT => fits(&|n| n == 2),
        _ => false,
    };
    shaped && h.epoch == 1 && datagram.len() == RECORD_HEADER_LEN + h.body_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{FIRST_APP_SEQUENCE, PAYLOAD_OFFSET};
    use crate::kdf::KeyBlock;
    use crate::proto::AddressMessage;

    /// A datagram shaped like the server's address message under `suite` (application data,
    /// epoch 1, 8 bytes of plaintext) whose tag does not verify: what a spoofer sends.
    fn spoofed(suite: Suite, seq: u64) -> Vec<u8> {
        let body = 8 + 8 + suite.tag_len();
        let mut d = vec![CONTENT_APPLICATION_DATA, 0xfe, 0xfd, 0, 1];
        d.extend_from_slice(&seq.to_be_bytes()[2..]);
        d.extend_from_slice(&(body as u16).to_be_bytes());
        d.extend((0..body).map(|i| (i as u8).wrapping_mul(37) ^ seq as u8));
        d
    }

    /// Spoofed records that arrive before the server's real address message (during the
    /// handshake) must not crowd it out of the early buffer: 2000 of other shapes, 62 of its
    /// own shape and 2000 copies of one; the real one still opens once the keys are known.
    /// Before the fix the buffer kept the first 4 datagrams of any kind.
    #[test]
    fn spoofed_early_records_do_not_crowd_out_the_address_message() {
        let kb = KeyBlock::for_test();
        let msg = AddressMessage {
            client: "10.86.0.2".parse().unwrap(),
            server: "10.86.0.1".parse().unwrap(),
        };
        for suite in [Suite::Aes128Gcm, Suite::Aes128Ccm8] {
            let (mut server, _) = record::session_pair(suite, &kb, false, 1, FIRST_APP_SEQUENCE);
            let (_, mut opener) = record::session_pair(suite, &kb, true, 1, FIRST_APP_SEQUENCE);
            let mut real = vec![0u8; PAYLOAD_OFFSET + 8 + suite.tag_len()];
            real[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 8].copy_from_slice(&msg.to_bytes());
            let n = server.seal(CONTENT_APPLICATION_DATA, &mut real, 8).unwrap();
            real.truncate(n);
            // Spoofed records of every other shape, then of the address message's own shape
            // (under both suites), then the real one.
            let mut early = EarlyRecords::new(7);
            for i in 0..2000u64 {
                let mut junk = spoofed(suite, i);
                match i % 4 {
                    0 => junk.push(0),                  // another length
                    1 => junk[4] = 2,                   // another epoch
                    2 => junk[0] = 22,                  // a handshake record
                    _ => junk.truncate(junk.len() - 1), // truncated
                }
                early.push(&junk);
            }
            for i in 0..EARLY_CANDIDATES as u64 / 2 - 1 {
                early.push(&spoofed(Suite::Aes128Gcm, FIRST_APP_SEQUENCE + i));
                early.push(&spoofed(Suite::Aes128Ccm8, FIRST_APP_SEQUENCE + i));
            }
            early.push(&real);
            // The same spoofed record again and again takes one place at most.
            for _ in 0..2000 {
                early.push(&spoofed(suite, 7));
            }
            let found = early.kept.into_iter().find_map(|mut dg| {
                let (_, plain) = opener.open(&mut dg).ok()?;
                Some(dg[plain].to_vec())
            });
            assert_eq!(found.as_deref(), Some(&msg.to_bytes()[..]), "{suite:?}");
        }
    }

    /// Past the first 64, every distinct candidate stays with the same chance (reservoir
    /// sampling): over many seeds, the real record after 320 forgeries is kept about one
    /// time in five (64 of 321).
    #[test]
    fn past_the_first_candidates_each_stays_with_the_same_chance() {
        let real = spoofed(Suite::Aes128Gcm, 99_999);
        let mut kept = 0;
        for seed in 0..300u64 {
            let mut early = EarlyRecords::new(seed.wrapping_mul(0x9e37_79b9));
            for i in 0..320 {
                early.push(&spoofed(Suite::Aes128Gcm, i));
            }
            early.push(&real);
            assert_eq!(early.kept.len(), EARLY_CANDIDATES);
            kept += usize::from(early.kept.contains(&real));
        }
        // 64 of 321: about 60 of 300.
        assert!((35..90).contains(&kept), "{kept}");
    }
}
