//! The server side of the handshake: a ClientHello with a valid cookie starts a
//! [`ServerHandshake`] (a few hundred bytes); every datagram of the client's costs one pass
//! over its records, and nothing is reassembled or queued.
//!
//! An unknown identity gets a dummy key derived from a per-process secret (RFC 4279 §2), so it
//! fails at the Finished exactly like a known identity with a wrong key: same alert, same work.

use std::time::Instant;

use ring::rand::SecureRandom;

use super::MAX_IDENTITY;
use super::finished::{
    NotFinished, Secrets, epoch_one, finished_message, open_finished, seal_finished,
};
use super::hello::ClientHello;
use super::wire::{
    ALERT_DECRYPT_ERROR, ALERT_HANDSHAKE_FAILURE, ALERT_UNEXPECTED_MESSAGE, CLIENT_HELLO,
    CLIENT_KEY_EXCHANGE, EXT_EMS, EXT_RENEGOTIATION_INFO, HS_HEADER, SERVER_HELLO,
    SERVER_HELLO_DONE, SERVER_KEY_EXCHANGE, ct_eq, messages, push_change_cipher_spec, push_message,
    push_record_header,
};
use crate::consts::{CONTENT_ALERT, CONTENT_HANDSHAKE, DTLS12_VERSION, RECORD_HEADER_LEN};
use crate::kdf::{KeyBlock, RANDOM_LEN};
use crate::record::{self, Suite};

/// A completed handshake.
pub struct Completed {
    pub suite: Suite,
    pub keys: KeyBlock,
    /// The client's PSK identity.
    pub identity: Vec<u8>,
    /// Our ChangeCipherSpec + Finished, one datagram, to resend if the client repeats its flight.
    pub final_flight: Vec<u8>,
    /// The key it was completed with: a reload may have replaced it by the time the session
    /// would start (`server::manager`).
    pub key_id: crate::keys::KeyId,
    /// The first epoch's secret, which a rekey chains from (`crate::rekey`).
    pub epoch1: crate::rekey::EpochSecret,
}

/// What the demultiplexer should do after a datagram.
pub enum Step {
    /// Nothing to send (a ChangeCipherSpec, a duplicate, bytes we ignore).
    Wait,
    /// The client repeated its ClientHello: our flight was lost, send it again.
    Resend,
    Done(Box<Completed>),
    /// The handshake failed: send `alert` if any, and forget this peer's handshake.
    Failed {
        alert: Option<u8>,
        why: String,
    },
}

/// A handshake whose peer proved its address; at most a few hundred bytes.
pub struct ServerHandshake {
    pub started: Instant,
    client_random: [u8; RANDOM_LEN],
    suite: Suite,
    /// ClientHello (with cookie), ServerHello, ServerKeyExchange, ServerHelloDone: hashed
    /// into the session hash and the Finished messages.
    transcript: Vec<u8>,
    /// Where our flight's messages start in `transcript`.
    ours_at: usize,
    /// Next record sequence number of ours in epoch 0 (above the ClientHello's, so above the
    /// HelloVerifyRequest's: the client's replay window drops anything lower).
    next_seq: u64,
    /// The ClientKeyExchange as hashed, and the identity in it.
    key_exchange: Option<(Vec<u8>, Vec<u8>)>,
}

impl ServerHandshake {
    /// Starts from a ClientHello whose cookie checked out; `Err` is the alert to send.
    pub fn start(
        ch: &ClientHello,
        suites: &[Suite],
        hint: &[u8],
        now: Instant,
    ) -> Result<ServerHandshake, u8> {
        let suite = ch.choose(suites).ok_or(ALERT_HANDSHAKE_FAILURE)?;
        if !ch.extended_master_secret {
            return Err(ALERT_HANDSHAKE_FAILURE);
        }
        let mut server_random = [0u8; RANDOM_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut server_random)
            .map_err(|_| ALERT_HANDSHAKE_FAILURE)?;
        let mut transcript = Vec::with_capacity(ch.message.len() + 128 + hint.len());
        transcript.extend_from_slice(ch.message);
        let ours_at = transcript.len();
        // ServerHello: version, random, empty session id, suite, null compression, extensions.
        let mut sh = Vec::with_capacity(64);
        sh.extend_from_slice(&DTLS12_VERSION);
        sh.extend_from_slice(&server_random);
        sh.push(0);
        sh.extend_from_slice(&suite.id().to_be_bytes());
        sh.push(0);
        let mut ext = Vec::with_capacity(9);
        if ch.renegotiation_info {
            ext.extend_from_slice(&EXT_RENEGOTIATION_INFO.to_be_bytes());
            ext.extend_from_slice(&[0, 1, 0]);
        }
        ext.extend_from_slice(&EXT_EMS.to_be_bytes());
        ext.extend_from_slice(&[0, 0]);
        sh.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        sh.extend_from_slice(&ext);
        push_message(&mut transcript, SERVER_HELLO, 1, &sh);
        let mut ske = Vec::with_capacity(2 + hint.len());
        ske.extend_from_slice(&(hint.len().min(u16::MAX as usize) as u16).to_be_bytes());
        ske.extend_from_slice(&hint[..hint.len().min(u16::MAX as usize)]);
        push_message(&mut transcript, SERVER_KEY_EXCHANGE, 2, &ske);
        push_message(&mut transcript, SERVER_HELLO_DONE, 3, &[]);
        Ok(ServerHandshake {
            started: now,
            client_random: ch.random,
            suite,
            transcript,
            ours_at,
            next_seq: ch.record_seq + 1,
            key_exchange: None,
        })
    }

    /// The record sequence number for our next epoch-0 record (an alert, say).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The client random this handshake answers.
    pub fn client_random(&self) -> &[u8; RANDOM_LEN] {
        &self.client_random
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Our flight (ServerHello, ServerKeyExchange, ServerHelloDone) as one datagram, one
    /// record each, with fresh record sequence numbers every time (RFC 6347 §4.2.4).
    pub fn flight(&mut self) -> Vec<u8> {
        let ours = &self.transcript[self.ours_at..];
        let mut out = Vec::with_capacity(ours.len() + 3 * RECORD_HEADER_LEN);
        for m in messages(ours) {
            push_record_header(&mut out, CONTENT_HANDSHAKE, self.next_seq, m.whole.len());
            out.extend_from_slice(m.whole);
            self.next_seq += 1;
        }
        out
    }

    /// The identity the client claimed, once its ClientKeyExchange arrived.
    pub fn identity(&self) -> Option<&[u8]> {
        self.key_exchange.as_ref().map(|(_, id)| id.as_slice())
    }

    /// Takes one datagram of the client's. `key` gives the PSK for an identity (a dummy one
    /// for unknown identities). Records other than the ones of this flight are ignored.
    pub fn datagram(&mut self, dg: &[u8], key: impl FnOnce(&[u8]) -> Vec<u8>) -> Step {
        let mut key = Some(key);
        for range in record::records(dg) {
            let Some(rec) = range.ok().and_then(|r| dg.get(r)) else {
                return Step::Wait;
            };
            let epoch = u16::from_be_bytes([rec[3], rec[4]]);
            match (rec[0], epoch) {
                (CONTENT_HANDSHAKE, 0) => {
                    for m in messages(&rec[RECORD_HEADER_LEN..]) {
                        match m.typ {
                            CLIENT_HELLO => {
                                let again = m.body.get(2..34) == Some(&self.client_random[..]);
                                if again && self.key_exchange.is_none() {
                                    return Step::Resend;
                                }
                            }
                            CLIENT_KEY_EXCHANGE if self.key_exchange.is_none() => {
                                let b = m.body;
                                let n = b
                                    .get(..2)
                                    .map(|n| usize::from(u16::from_be_bytes([n[0], n[1]])));
                                match n.and_then(|n| b.get(2..2 + n)) {
                                    Some(id) if id.len() <= MAX_IDENTITY => {
                                        self.key_exchange = Some((m.whole.to_vec(), id.to_vec()))
                                    }
                                    _ => {
                                        return Step::Failed {
                                            alert: Some(ALERT_UNEXPECTED_MESSAGE),
                                            why: "malformed ClientKeyExchange".into(),
                                        };
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                // Epoch 1 only once the key exchange is known: before it nothing can open.
                (CONTENT_HANDSHAKE, 1) if self.key_exchange.is_some() => {
                    if let Some(k) = key.take() {
                        return self.finished(rec, k);
                    }
                }
                (CONTENT_ALERT, 0) => {
                    return Step::Failed {
                        alert: None,
                        why: format!("the client sent alert {:?}", rec.get(13..15)),
                    };
                }
                _ => {} // ChangeCipherSpec and anything else: nothing to do.
            }
        }
        Step::Wait
    }

    /// Checks the client's Finished and builds ours.
    fn finished(&mut self, rec: &[u8], key: impl FnOnce(&[u8]) -> Vec<u8>) -> Step {
        let fail = |why: &str| Step::Failed {
            alert: Some(ALERT_DECRYPT_ERROR),
            why: why.to_string(),
        };
        let Some((cke, identity)) = self.key_exchange.as_ref() else {
            return Step::Wait;
        };
        let psk = zeroize::Zeroizing::new(key(identity));
        let mut hashed = self.transcript.clone();
        hashed.extend_from_slice(cke);
        let mut server_random = [0u8; RANDOM_LEN];
        server_random.copy_from_slice(&self.transcript[self.ours_at + HS_HEADER + 2..][..32]);
        let secrets = Secrets::derive(&psk, &hashed, &self.client_random, &server_random);
        let (mut sealer, mut opener) = epoch_one(self.suite, &secrets.keys, false);
        let fin = match open_finished(&mut opener, rec) {
            Ok(fin) => fin,
            Err(NotFinished::Oversized) => return fail("oversized Finished record"),
            Err(NotFinished::Undecryptable) => {
                return fail(
                    "its Finished did not decrypt: the client has another -key, or its id is unknown",
                );
            }
            Err(NotFinished::Malformed) => return fail("the client's Finished is malformed"),
        };
        let expect = secrets.verify_data(b"client finished", &hashed);
        if !ct_eq(&expect, &fin[HS_HEADER..]) {
            return fail(
                "its Finished did not verify: the client has another -key, or its id is unknown",
            );
        }
        hashed.extend_from_slice(&fin);
        let ours = secrets.verify_data(b"server finished", &hashed);

        // ChangeCipherSpec (epoch 0), then Finished [4] sealed in epoch 1 from sequence 0.
        let mut out = Vec::with_capacity(2 * RECORD_HEADER_LEN + 1 + 64);
        push_change_cipher_spec(&mut out, &mut self.next_seq);
        if !seal_finished(&mut sealer, &finished_message(4, &ours), &mut out) {
            return fail("sealing our Finished failed");
        }
        Step::Done(Box::new(Completed {
            suite: self.suite,
            keys: secrets.keys,
            identity: identity.clone(),
            final_flight: out,
            key_id: crate::keys::KeyId::of(&psk),
            epoch1: secrets.epoch1,
        }))
    }
}
