//! Our DTLS 1.2 record layer for epoch-1 application data and alerts: seal and open records
//! in place, RFC 6347 sequence numbers and a 64-record replay window. Plain code, no I/O and
//! no heap allocation per record.
//!
//! The DTLS crate does the handshake; from the first application record on, records are ours.
//! Keys live in a [`Sealer`] / [`Opener`] pair built from the handshake's key block, so a rekey
//! later is a new pair with the next epoch.

use std::ops::Range;

use aes::Aes128;
use ccm::aead::AeadInPlace;
use ccm::aead::generic_array::GenericArray;
use ccm::consts::{U8, U12};
use ccm::{Ccm, KeyInit};

use crate::consts::{
    DTLS12_VERSION, EXPLICIT_NONCE_LEN, MAX_RECORD_PLAINTEXT, MAX_SEQUENCE, PAYLOAD_OFFSET,
    RECORD_HEADER_LEN,
};
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

use crate::kdf::KeyBlock;

type Aes128Ccm8 = Ccm<Aes128, U8, U12>;

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

    /// Bytes a record adds to its plaintext: header, explicit nonce, tag.
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
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::Truncated,
        DropReason::Oversized,
        DropReason::BadEpoch,
        DropReason::Replay,
        DropReason::BadTag,
    ];

    /// Stable name for logs and counters.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Oversized => "oversized",
            DropReason::BadEpoch => "bad_epoch",
            DropReason::Replay => "replay",
            DropReason::BadTag => "bad_tag",
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
}

enum Cipher {
    Ccm8(Box<Aes128Ccm8>),
    Gcm(Box<LessSafeKey>),
}

impl Cipher {
    fn new(suite: Suite, key: &[u8; 16]) -> Cipher {
        match suite {
            Suite::Aes128Ccm8 => {
                Cipher::Ccm8(Box::new(Aes128Ccm8::new(GenericArray::from_slice(key))))
            }
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

fn nonce(salt: &[u8; 4], explicit: &[u8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(explicit);
    n
}

/// Sends records: owns the write key and the send sequence number of one epoch.
pub struct Sealer {
    suite: Suite,
    cipher: Cipher,
    salt: [u8; 4],
    epoch: u16,
    next_seq: u64,
}

impl Sealer {
    pub fn new(suite: Suite, key: &[u8; 16], salt: &[u8; 4], epoch: u16, first_seq: u64) -> Self {
        Sealer {
            suite,
            cipher: Cipher::new(suite, key),
            salt: *salt,
            epoch,
            next_seq: first_seq,
        }
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Seals the `len` plaintext bytes at `buf[PAYLOAD_OFFSET..]` into one record starting at
    /// `buf[0]` and returns the record's length. The explicit nonce is epoch ‖ sequence number
    /// (never random: see PROTOCOL.md "Decisions").
    pub fn seal(
        &mut self,
        content_type: u8,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, SealError> {
        if self.next_seq > MAX_SEQUENCE {
            return Err(SealError::SequenceExhausted(self.epoch));
        }
        let seq = self.next_seq;
        let explicit = ((u64::from(self.epoch) << 48) | seq).to_be_bytes();
        let n = self.seal_with_explicit_nonce(content_type, buf, len, seq, explicit)?;
        self.next_seq += 1;
        Ok(n)
    }

    /// Like [`Sealer::seal`] with a caller-chosen sequence number and explicit nonce, so the
    /// known-answer tests can rebuild records of peers that send random nonces. Never use it to
    /// send: reusing a nonce under one key breaks the cipher.
    pub fn seal_with_explicit_nonce(
        &self,
        content_type: u8,
        buf: &mut [u8],
        len: usize,
        seq: u64,
        explicit: [u8; EXPLICIT_NONCE_LEN],
    ) -> Result<usize, SealError> {
        let tag_len = self.suite.tag_len();
        let total = PAYLOAD_OFFSET + len + tag_len;
        if buf.len() < total || len > MAX_RECORD_PLAINTEXT {
            return Err(SealError::BufferTooSmall(len));
        }
        let epoch_seq = (u64::from(self.epoch) << 48) | (seq & MAX_SEQUENCE);
        let nonce = nonce(&self.salt, &explicit);
        let aad = aad(epoch_seq, content_type, DTLS12_VERSION, len);
        let (head, rest) = buf.split_at_mut(PAYLOAD_OFFSET);
        let (payload, tag_out) = rest.split_at_mut(len);
        match &self.cipher {
            Cipher::Ccm8(c) => {
                let tag = c
                    .encrypt_in_place_detached(GenericArray::from_slice(&nonce), &aad, payload)
                    .map_err(|_| SealError::BufferTooSmall(len))?;
                tag_out[..tag_len].copy_from_slice(&tag);
            }
            Cipher::Gcm(k) => {
                let tag = k
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        payload,
                    )
                    .map_err(|_| SealError::BufferTooSmall(len))?;
                tag_out[..tag_len].copy_from_slice(tag.as_ref());
            }
        }
        head[0] = content_type;
        head[1..3].copy_from_slice(&DTLS12_VERSION);
        head[3..11].copy_from_slice(&epoch_seq.to_be_bytes());
        head[11..13].copy_from_slice(&((EXPLICIT_NONCE_LEN + len + tag_len) as u16).to_be_bytes());
        head[RECORD_HEADER_LEN..PAYLOAD_OFFSET].copy_from_slice(&explicit);
        Ok(total)
    }
}

/// Receives records: owns the read key and the replay window of one epoch.
pub struct Opener {
    suite: Suite,
    cipher: Cipher,
    salt: [u8; 4],
    epoch: u16,
    window: ReplayWindow,
}

impl Opener {
    pub fn new(suite: Suite, key: &[u8; 16], salt: &[u8; 4], epoch: u16) -> Self {
        Opener {
            suite,
            cipher: Cipher::new(suite, key),
            salt: *salt,
            epoch,
            window: ReplayWindow::default(),
        }
    }

    pub fn epoch(&self) -> u16 {
        self.epoch
    }

    /// Opens one whole record (header included) in place. On success returns its content type
    /// and where its plaintext now lies inside `record`. The replay window moves only after the
    /// tag verified.
    pub fn open(&mut self, record: &mut [u8]) -> Result<(u8, Range<usize>), DropReason> {
        let tag_len = self.suite.tag_len();
        let header = parse_header(record)?;
        if header.epoch != self.epoch {
            return Err(DropReason::BadEpoch);
        }
        let body_len = header.body_len;
        if body_len < EXPLICIT_NONCE_LEN + tag_len {
            return Err(DropReason::Truncated);
        }
        let len = body_len - EXPLICIT_NONCE_LEN - tag_len;
        if len > MAX_RECORD_PLAINTEXT {
            return Err(DropReason::Oversized);
        }
        if !self.window.check(header.seq) {
            return Err(DropReason::Replay);
        }
        let epoch_seq = (u64::from(header.epoch) << 48) | header.seq;
        let aad = aad(epoch_seq, header.content_type, [record[1], record[2]], len);
        let (head, rest) = record[..RECORD_HEADER_LEN + body_len].split_at_mut(PAYLOAD_OFFSET);
        let nonce = nonce(&self.salt, &head[RECORD_HEADER_LEN..PAYLOAD_OFFSET]);
        let (payload, tag) = rest.split_at_mut(len);
        let ok = match &self.cipher {
            Cipher::Ccm8(c) => {
                if tag.len() != 8 {
                    return Err(DropReason::Truncated);
                }
                c.decrypt_in_place_detached(
                    GenericArray::from_slice(&nonce),
                    &aad,
                    payload,
                    GenericArray::from_slice(tag),
                )
                .is_ok()
            }
            Cipher::Gcm(k) => {
                let tag: [u8; 16] = tag[..].try_into().map_err(|_| DropReason::Truncated)?;
                k.open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    Tag::from(tag),
                    payload,
                    0..,
                )
                .is_ok()
            }
        };
        if !ok {
            return Err(DropReason::BadTag);
        }
        self.window.accept(header.seq);
        Ok((header.content_type, PAYLOAD_OFFSET..PAYLOAD_OFFSET + len))
    }
}

/// The fields of a record header that routing and opening need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub content_type: u8,
    pub epoch: u16,
    pub seq: u64,
    /// Length of the record body (after the 13-byte header).
    pub body_len: usize,
}

/// Parses the header at the start of `buf`, checking the body fits in `buf`.
pub fn parse_header(buf: &[u8]) -> Result<Header, DropReason> {
    if buf.len() < RECORD_HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    let body_len = usize::from(u16::from_be_bytes([buf[11], buf[12]]));
    if buf.len() < RECORD_HEADER_LEN + body_len {
        return Err(DropReason::Truncated);
    }
    let mut seq = [0u8; 8];
    seq[2..].copy_from_slice(&buf[5..11]);
    Ok(Header {
        content_type: buf[0],
        epoch: u16::from_be_bytes([buf[3], buf[4]]),
        seq: u64::from_be_bytes(seq),
        body_len,
    })
}

/// The byte range of the record that starts at `at` in a datagram.
pub fn record_at(datagram: &[u8], at: usize) -> Result<Range<usize>, DropReason> {
    let h = parse_header(datagram.get(at..).unwrap_or_default())?;
    Ok(at..at + RECORD_HEADER_LEN + h.body_len)
}

/// Splits a datagram into its records' byte ranges; stops at the first malformed one.
pub fn records(datagram: &[u8]) -> impl Iterator<Item = Result<Range<usize>, DropReason>> + '_ {
    let mut at = 0;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || at >= datagram.len() {
            return None;
        }
        match parse_header(&datagram[at..]) {
            Ok(h) => {
                let r = at..at + RECORD_HEADER_LEN + h.body_len;
                at = r.end;
                Some(Ok(r))
            }
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
}

/// RFC 6347 §4.1.2.6 anti-replay window over the last 64 sequence numbers.
#[derive(Default, Clone, Debug)]
pub struct ReplayWindow {
    /// Highest sequence number accepted so far, valid once `seen`.
    top: u64,
    /// Bit i set: `top - i` was accepted.
    bits: u64,
    seen: bool,
}

impl ReplayWindow {
    /// Whether `seq` is new and inside the window (does not record it).
    pub fn check(&self, seq: u64) -> bool {
        if seq > MAX_SEQUENCE {
            return false;
        }
        if !self.seen || seq > self.top {
            return true;
        }
        let back = self.top - seq;
        back < 64 && self.bits & (1 << back) == 0
    }

    /// Records `seq` as received; call only after its record authenticated.
    pub fn accept(&mut self, seq: u64) {
        if !self.seen {
            self.seen = true;
            self.top = seq;
            self.bits = 1;
        } else if seq > self.top {
            let shift = seq - self.top;
            self.bits = if shift >= 64 { 0 } else { self.bits << shift };
            self.bits |= 1;
            self.top = seq;
        } else {
            let back = self.top - seq;
            if back < 64 {
                self.bits |= 1 << back;
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::CONTENT_APPLICATION_DATA;

    const SUITES: [Suite; 2] = [Suite::Aes128Ccm8, Suite::Aes128Gcm];

    fn pair_of(suite: Suite) -> (Sealer, Opener) {
        let kb = KeyBlock {
            client_key: [1; 16],
            server_key: [2; 16],
            client_iv: [3; 4],
            server_iv: [4; 4],
        };
        let (s, _) = session_pair(suite, &kb, true, 1, 7);
        let (_, o) = session_pair(suite, &kb, false, 1, 0);
        (s, o)
    }

    fn pair() -> (Sealer, Opener) {
        pair_of(Suite::Aes128Ccm8)
    }

    fn seal(s: &mut Sealer, msg: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + msg.len()].copy_from_slice(msg);
        let n = s
            .seal(CONTENT_APPLICATION_DATA, &mut buf, msg.len())
            .unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn round_trip_and_nonce_is_epoch_and_sequence() {
        for suite in SUITES {
            let (mut s, mut o) = pair_of(suite);
            let mut rec = seal(&mut s, b"hello");
            assert_eq!(rec.len(), 5 + suite.overhead());
            assert_eq!(&rec[3..11], &[0, 1, 0, 0, 0, 0, 0, 7]);
            assert_eq!(&rec[13..21], &[0, 1, 0, 0, 0, 0, 0, 7]);
            assert_ne!(
                &rec[21..26],
                b"hello",
                "{suite:?} left the plaintext in clear"
            );
            let (ct, r) = o.open(&mut rec).unwrap();
            assert_eq!(ct, CONTENT_APPLICATION_DATA);
            assert_eq!(&rec[r], b"hello");
        }
        assert_eq!(Suite::Aes128Gcm.overhead(), 37);
        assert_eq!(Suite::from_id(0x00a8), Some(Suite::Aes128Gcm));
        assert_eq!(Suite::from_id(0xc0a8), Some(Suite::Aes128Ccm8));
        assert_eq!(Suite::from_id(0xc0a4), None);
    }

    /// A record sealed under one suite never opens under the other with the same keys.
    #[test]
    fn suites_do_not_cross() {
        let (mut s, _) = pair_of(Suite::Aes128Gcm);
        let (_, mut o) = pair_of(Suite::Aes128Ccm8);
        let mut rec = seal(&mut s, b"hello");
        assert!(o.open(&mut rec).is_err());
    }

    #[test]
    fn replay_corruption_truncation_and_epoch_are_drops() {
        for suite in SUITES {
            drops(suite);
        }
    }

    fn drops(suite: Suite) {
        let (mut s, mut o) = pair_of(suite);
        let rec = seal(&mut s, b"packet");
        let mut bad = rec.clone();
        bad[25] ^= 1;
        assert_eq!(o.open(&mut bad), Err(DropReason::BadTag));
        // The bad record must not have moved the window.
        let mut good = rec.clone();
        assert!(o.open(&mut good).is_ok());
        let mut again = rec.clone();
        assert_eq!(o.open(&mut again), Err(DropReason::Replay));
        let mut short = rec[..rec.len() - 1].to_vec();
        assert_eq!(o.open(&mut short), Err(DropReason::Truncated));
        let mut tiny = rec[..10].to_vec();
        assert_eq!(o.open(&mut tiny), Err(DropReason::Truncated));
        let mut epoch = seal(&mut s, b"x");
        epoch[4] = 2;
        assert_eq!(o.open(&mut epoch), Err(DropReason::BadEpoch));
    }

    #[test]
    fn window_accepts_reordering_within_64() {
        let mut w = ReplayWindow::default();
        for seq in [100u64, 90, 99, 37, 101, 164] {
            if w.check(seq) {
                w.accept(seq);
            }
        }
        assert!(!w.check(100));
        assert!(!w.check(101));
        assert!(!w.check(100)); // left behind: 164 - 100 = 64
        assert!(w.check(120));
        assert!(!w.check(164));
        assert!(w.check(165));
        assert!(!w.check(MAX_SEQUENCE + 1));
    }

    #[test]
    fn records_splits_and_stops_on_garbage() {
        let (mut s, _) = pair();
        let mut dg = seal(&mut s, b"a");
        let second = seal(&mut s, b"bc");
        dg.extend_from_slice(&second);
        dg.extend_from_slice(&[23, 0xfe]);
        let v: Vec<_> = records(&dg).collect();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], Ok(0..30));
        assert_eq!(v[1], Ok(30..61));
        assert_eq!(v[2], Err(DropReason::Truncated));
    }
}
