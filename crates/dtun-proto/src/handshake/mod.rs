//! The server side of the DTLS 1.2 PSK handshake (RFC 6347, RFC 4279, RFC 7627), as plain code
//! without I/O: the demultiplexer feeds it datagrams and sends what it returns.
//!
//! It is ours, not the DTLS crate's, so that admission holds under a flood of spoofed
//! ClientHellos: a ClientHello without a valid cookie gets a HelloVerifyRequest whose cookie is
//! an HMAC of the peer's address and hello random under a rotating secret ([`Cookies`]), and
//! nothing is kept (RFC 6347 §4.2.1). State exists only once a peer has echoed a cookie, that
//! is, once it has shown it receives at its address; then it is a few hundred bytes
//! ([`ServerHandshake`]), every datagram costs one pass over its records, and nothing is
//! reassembled or queued. The crate still does the client side.
//!
//! Flights (message_seq in parentheses; the HelloVerifyRequest is 0, so ours go on from 1):
//! 1. client: ClientHello (0) → we: HelloVerifyRequest (0), stateless;
//! 2. client: ClientHello (1) with the cookie → we: ServerHello (1), ServerKeyExchange (2,
//!    the identity hint), ServerHelloDone (3), in one datagram;
//! 3. client: ClientKeyExchange (2, the identity), ChangeCipherSpec, Finished (3, epoch 1)
//!    → we: ChangeCipherSpec, Finished (4, epoch 1), kept for resending (see `server::demux`).
//!
//! An unknown identity gets a dummy key derived from a per-process secret (RFC 4279 §2), so it
//! fails at the Finished exactly like a known identity with a wrong key: same alert, same work.

mod hello;

use std::time::Instant;

use ring::{digest, rand::SecureRandom};

use crate::consts::{
    CONTENT_ALERT, CONTENT_CHANGE_CIPHER_SPEC, CONTENT_HANDSHAKE, DTLS12_VERSION, PAYLOAD_OFFSET,
    RECORD_HEADER_LEN,
};
use crate::kdf::{self, KeyBlock, RANDOM_LEN};
use crate::record::{self, Opener, Sealer, Suite};

pub use hello::{
    COOKIE_LEN, COOKIE_ROTATION, ClientHello, Cookies, HVR_LEN, hello_verify_request,
    parse_client_hello,
};

/// Handshake message header: type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3).
pub const HS_HEADER: usize = 12;
/// Longest PSK identity we read (RFC 4279 allows 2^16 - 1; ours are at most 128 bytes).
pub const MAX_IDENTITY: usize = 256;

const CLIENT_HELLO: u8 = 1;
const HELLO_VERIFY_REQUEST: u8 = 3;
const SERVER_HELLO: u8 = 2;
const SERVER_KEY_EXCHANGE: u8 = 12;
const SERVER_HELLO_DONE: u8 = 14;
const CLIENT_KEY_EXCHANGE: u8 = 16;
const FINISHED: u8 = 20;
const EXT_EMS: u16 = 23;
const EXT_RENEGOTIATION_INFO: u16 = 0xff01;
const SCSV_RENEGOTIATION: u16 = 0x00ff;
const VERIFY_DATA_LEN: usize = 12;
/// Alert descriptions we send (fatal).
pub const ALERT_HANDSHAKE_FAILURE: u8 = 40;
pub const ALERT_DECRYPT_ERROR: u8 = 51;
pub const ALERT_UNEXPECTED_MESSAGE: u8 = 10;

fn u24(b: &[u8]) -> usize {
    usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2])
}

fn put_u24(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_be_bytes()[1..]);
}

/// Constant-time equality of two byte strings of public length.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One handshake message of a record: its type, message_seq and the whole message (header
/// included) when it is unfragmented; `None` when the bytes do not parse.
struct Message<'a> {
    typ: u8,
    seq: u16,
    /// Header + body, as hashed (unfragmented messages hash as received).
    whole: &'a [u8],
    body: &'a [u8],
}

/// The unfragmented handshake messages of one plaintext record body; stops at the first that
/// does not parse or is a fragment (we never reassemble: real flights here are small).
fn messages(mut body: &[u8]) -> impl Iterator<Item = Message<'_>> {
    std::iter::from_fn(move || {
        if body.len() < HS_HEADER {
            return None;
        }
        let (len, off, frag) = (u24(&body[1..4]), u24(&body[6..9]), u24(&body[9..12]));
        if off != 0 || frag != len || body.len() < HS_HEADER + len {
            body = &[];
            return None;
        }
        let (whole, rest) = body.split_at(HS_HEADER + len);
        body = rest;
        Some(Message {
            typ: whole[0],
            seq: u16::from_be_bytes([whole[4], whole[5]]),
            whole,
            body: &whole[HS_HEADER..],
        })
    })
}

/// A fatal alert in epoch 0 with record sequence `seq`.
pub fn alert(description: u8, seq: u64) -> [u8; RECORD_HEADER_LEN + 2] {
    let mut a = [0u8; RECORD_HEADER_LEN + 2];
    a[0] = CONTENT_ALERT;
    a[1..3].copy_from_slice(&DTLS12_VERSION);
    a[5..11].copy_from_slice(&seq.to_be_bytes()[2..]);
    a[11..13].copy_from_slice(&2u16.to_be_bytes());
    a[13] = 2;
    a[14] = description;
    a
}

/// Appends one handshake message (unfragmented) with `body` to `out`.
fn push_message(out: &mut Vec<u8>, typ: u8, seq: u16, body: &[u8]) {
    out.push(typ);
    put_u24(out, body.len());
    out.extend_from_slice(&seq.to_be_bytes());
    put_u24(out, 0);
    put_u24(out, body.len());
    out.extend_from_slice(body);
}

/// Appends a plaintext record header for `len` bytes of `content` in epoch 0.
fn push_record_header(out: &mut Vec<u8>, content: u8, seq: u64, len: usize) {
    out.push(content);
    out.extend_from_slice(&DTLS12_VERSION);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&seq.to_be_bytes()[2..]);
    out.extend_from_slice(&(len as u16).to_be_bytes());
}

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
        let session_hash = digest::digest(&digest::SHA256, &hashed);
        let ms = kdf::extended_master_secret(&kdf::psk_premaster(&psk), session_hash.as_ref());
        let mut server_random = [0u8; RANDOM_LEN];
        server_random.copy_from_slice(&self.transcript[self.ours_at + HS_HEADER + 2..][..32]);
        let keys = kdf::key_block(&ms, &self.client_random, &server_random);
        let mut opener = Opener::new(self.suite, &keys.client_key, &keys.client_iv, 1);
        let mut buf = [0u8; 128];
        let Some(copy) = buf.get_mut(..rec.len()) else {
            return fail("oversized Finished record");
        };
        copy.copy_from_slice(rec);
        let Ok((content, range)) = opener.open(copy) else {
            return fail(
                "its Finished did not decrypt: the client has another -key, or its id is unknown",
            );
        };
        let Some(fin) = (content == CONTENT_HANDSHAKE)
            .then(|| messages(&copy[range]).next())
            .flatten()
            .filter(|m| m.typ == FINISHED && m.body.len() == VERIFY_DATA_LEN)
        else {
            return fail("the client's Finished is malformed");
        };
        let mut expect = [0u8; VERIFY_DATA_LEN];
        let hash = digest::digest(&digest::SHA256, &hashed);
        kdf::prf_sha256(&ms, b"client finished", hash.as_ref(), &mut expect);
        if !ct_eq(&expect, fin.body) {
            return fail(
                "its Finished did not verify: the client has another -key, or its id is unknown",
            );
        }
        hashed.extend_from_slice(fin.whole);
        let mut ours = [0u8; VERIFY_DATA_LEN];
        let hash = digest::digest(&digest::SHA256, &hashed);
        kdf::prf_sha256(&ms, b"server finished", hash.as_ref(), &mut ours);

        // ChangeCipherSpec (epoch 0), then Finished [4] sealed in epoch 1 from sequence 0.
        let mut out = Vec::with_capacity(2 * RECORD_HEADER_LEN + 1 + 64);
        push_record_header(&mut out, CONTENT_CHANGE_CIPHER_SPEC, self.next_seq, 1);
        out.push(1);
        self.next_seq += 1;
        let mut msg = Vec::with_capacity(HS_HEADER + VERIFY_DATA_LEN);
        push_message(&mut msg, FINISHED, 4, &ours);
        let mut rec = [0u8; PAYLOAD_OFFSET + HS_HEADER + VERIFY_DATA_LEN + 16];
        rec[PAYLOAD_OFFSET..PAYLOAD_OFFSET + msg.len()].copy_from_slice(&msg);
        let mut sealer = Sealer::new(self.suite, &keys.server_key, &keys.server_iv, 1, 0);
        let Ok(n) = sealer.seal(CONTENT_HANDSHAKE, &mut rec, msg.len()) else {
            return fail("sealing our Finished failed");
        };
        out.extend_from_slice(&rec[..n]);
        Step::Done(Box::new(Completed {
            suite: self.suite,
            keys,
            identity: identity.clone(),
            final_flight: out,
            key_id: crate::keys::KeyId::of(&psk),
        }))
    }
}

#[cfg(any(test, feature = "test-util"))]
pub mod testing;
#[cfg(test)]
mod tests;
