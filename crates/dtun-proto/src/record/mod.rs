//! Our DTLS 1.2 record layer for epoch-1 application data and alerts: seal and open records
//! in place, RFC 6347 sequence numbers and a 64-record replay window. Plain code, no I/O and
//! no heap allocation per record.
//!
//! The handshake (`crate::handshake`) seals only its Finished messages here; from the first
//! application record on, every record goes through this layer.
//! Keys live in a [`Sealer`] / [`Opener`] pair built from the handshake's key block, so a rekey
//! later is a new pair with the next epoch.

mod header;
pub mod limits;
mod replay;

use std::ops::Range;

use crate::ccm8::{self, Ccm8, Job};
use crate::consts::{
    DTLS12_VERSION, EXHAUSTION_MARGIN, EXPLICIT_NONCE_LEN, MAX_RECORD_PLAINTEXT, MAX_SEQUENCE,
    PAYLOAD_OFFSET, RECORD_HEADER_LEN,
};
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

use crate::kdf::KeyBlock;

pub use header::{Header, parse_header, record_at, records};
pub use limits::Limits;
pub use replay::ReplayWindow;

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
    /// AES block operations spent under this key ([`limits::blocks`]), against
    /// `limits.sealed_blocks`: the confidentiality limit.
    sealed_blocks: u64,
    limits: Limits,
}

impl Sealer {
    pub fn new(suite: Suite, key: &[u8; 16], salt: &[u8; 4], epoch: u16, first_seq: u64) -> Self {
        Sealer {
            suite,
            cipher: Cipher::new(suite, key),
            salt: *salt,
            epoch,
            next_seq: first_seq,
            sealed_blocks: 0,
            limits: Limits::of(suite),
        }
    }

    /// The same sealer under other limits (tests).
    #[cfg(any(test, feature = "test-util"))]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Sequence numbers not used yet in this epoch.
    pub fn remaining(&self) -> u64 {
        (MAX_SEQUENCE + 1).saturating_sub(self.next_seq)
    }

    /// AES block operations left before the key's confidentiality limit.
    pub fn blocks_left(&self) -> u64 {
        self.limits.sealed_blocks.saturating_sub(self.sealed_blocks)
    }

    /// At most [`EXHAUSTION_MARGIN`] sequence numbers or [`limits::SEALED_BLOCKS_RESERVE`]
    /// blocks of the usage limit are left: time to close the session (the margin is for the
    /// close itself).
    pub fn nearly_exhausted(&self) -> bool {
        self.remaining() <= EXHAUSTION_MARGIN || self.blocks_left() <= limits::SEALED_BLOCKS_RESERVE
    }

    /// Whether the key may seal `len` more bytes; the error says which limit is reached.
    #[inline]
    fn admit(&self, len: usize) -> Result<u64, SealError> {
        if self.next_seq > MAX_SEQUENCE {
            return Err(SealError::SequenceExhausted(self.epoch));
        }
        let cost = limits::blocks(self.suite, len);
        if cost > self.blocks_left() {
            return Err(SealError::UsageLimit(self.epoch));
        }
        Ok(cost)
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
        let cost = self.admit(len)?;
        let seq = self.next_seq;
        let explicit = ((u64::from(self.epoch) << 48) | seq).to_be_bytes();
        let n = self.seal_at(content_type, buf, len, seq, explicit)?;
        self.next_seq += 1;
        self.sealed_blocks += cost;
        Ok(n)
    }

    /// Like [`Sealer::seal`] with a caller-chosen sequence number and explicit nonce, so the
    /// known-answer tests can rebuild records of peers that send random nonces. Reusing a
    /// nonce under one key breaks the cipher, so this exists only in test builds: with
    /// `cfg(test)` or the test-only feature `test-util` (which only the self dev-dependency
    /// in Cargo.toml turns on); a normal build of the crate has no such method.
    #[cfg(any(test, feature = "test-util"))]
    pub fn seal_with_explicit_nonce(
        &self,
        content_type: u8,
        buf: &mut [u8],
        len: usize,
        seq: u64,
        explicit: [u8; EXPLICIT_NONCE_LEN],
    ) -> Result<usize, SealError> {
        self.seal_at(content_type, buf, len, seq, explicit)
    }

    /// Seals one record with sequence number `seq` and explicit nonce `explicit`; the caller
    /// guarantees both are used once.
    fn seal_at(
        &self,
        content_type: u8,
        buf: &mut [u8],
        len: usize,
        seq: u64,
        explicit: [u8; EXPLICIT_NONCE_LEN],
    ) -> Result<usize, SealError> {
        if len > MAX_RECORD_PLAINTEXT {
            return Err(SealError::BufferTooSmall(len));
        }
        let tag_len = self.suite.tag_len();
        let total = PAYLOAD_OFFSET + len + tag_len;
        if buf.len() < total {
            return Err(SealError::BufferTooSmall(len));
        }
        let epoch_seq = (u64::from(self.epoch) << 48) | (seq & MAX_SEQUENCE);
        let nonce = nonce(&self.salt, &explicit);
        let aad = aad(epoch_seq, content_type, DTLS12_VERSION, len);
        let (head, rest) = buf[..total].split_at_mut(PAYLOAD_OFFSET);
        write_header(head, content_type, epoch_seq, explicit, len + tag_len);
        let (payload, tag_out) = rest.split_at_mut(len);
        match &self.cipher {
            Cipher::Ccm8(c) => {
                let mut job = [Job {
                    nonce,
                    aad,
                    data: payload,
                    tag: [0; ccm8::TAG_LEN],
                }];
                c.seal(&mut job);
                tag_out.copy_from_slice(&job[0].tag);
            }
            Cipher::Gcm(k) => {
                let tag = k
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        payload,
                    )
                    .map_err(|_| SealError::BufferTooSmall(len))?;
                tag_out.copy_from_slice(tag.as_ref());
            }
        }
        Ok(total)
    }

    /// Seals a batch of packets: slot i holds `sizes[i]` plaintext bytes at `PAYLOAD_OFFSET`,
    /// and `records[i]` gets the length of its record, or 0 if the packet does not fit its slot
    /// or is over `MAX_RECORD_PLAINTEXT` (not sent). CCM_8 records are sealed [`ccm8::LANES`] at a time. Fails, leaving the rest
    /// unsealed, once the sequence numbers run out.
    pub fn seal_many<S: AsMut<[u8]>>(
        &mut self,
        content_type: u8,
        slots: &mut [S],
        sizes: &[usize],
        records: &mut [usize],
    ) -> Result<(), SealError> {
        records.fill(0);
        let ccm = match &self.cipher {
            Cipher::Ccm8(c) => c,
            Cipher::Gcm(_) => {
                for ((slot, &len), rec) in slots.iter_mut().zip(sizes).zip(records.iter_mut()) {
                    match self.seal(content_type, slot.as_mut(), len) {
                        Ok(n) => *rec = n,
                        Err(SealError::BufferTooSmall(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                return Ok(());
            }
        };
        let mut jobs: [Job; ccm8::LANES] = std::array::from_fn(|_| Job::default());
        let mut tags: [&mut [u8]; ccm8::LANES] = std::array::from_fn(|_| Default::default());
        let mut n = 0;
        let mut result = Ok(());
        for ((slot, &len), rec) in slots.iter_mut().zip(sizes).zip(records.iter_mut()) {
            let buf = slot.as_mut();
            if len > MAX_RECORD_PLAINTEXT {
                continue;
            }
            let total = PAYLOAD_OFFSET + len + ccm8::TAG_LEN;
            if buf.len() < total {
                continue;
            }
            match self.admit(len) {
                Ok(cost) => self.sealed_blocks += cost,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            let epoch_seq = (u64::from(self.epoch) << 48) | self.next_seq;
            self.next_seq += 1;
            let explicit = epoch_seq.to_be_bytes();
            let (head, rest) = buf[..total].split_at_mut(PAYLOAD_OFFSET);
            write_header(head, content_type, epoch_seq, explicit, len + ccm8::TAG_LEN);
            let (payload, tag) = rest.split_at_mut(len);
            jobs[n] = Job {
                nonce: nonce(&self.salt, &explicit),
                aad: aad(epoch_seq, content_type, DTLS12_VERSION, len),
                data: payload,
                tag: [0; ccm8::TAG_LEN],
            };
            tags[n] = tag;
            *rec = total;
            n += 1;
            if n == ccm8::LANES {
                seal_pass(ccm, &mut jobs, &mut tags);
                n = 0;
            }
        }
        seal_pass(ccm, &mut jobs[..n], &mut tags[..n]);
        result
    }
}

fn seal_pass(ccm: &Ccm8, jobs: &mut [Job<'_>], tags: &mut [&mut [u8]]) {
    ccm.seal(jobs);
    for (job, tag) in jobs.iter().zip(tags.iter_mut()) {
        tag.copy_from_slice(&job.tag);
    }
}

/// Writes a record header and explicit nonce in front of a body of `sealed_len` bytes
/// (ciphertext and tag).
fn write_header(
    head: &mut [u8],
    content_type: u8,
    epoch_seq: u64,
    explicit: [u8; EXPLICIT_NONCE_LEN],
    sealed_len: usize,
) {
    head[0] = content_type;
    head[1..3].copy_from_slice(&DTLS12_VERSION);
    head[3..11].copy_from_slice(&epoch_seq.to_be_bytes());
    head[11..13].copy_from_slice(&((EXPLICIT_NONCE_LEN + sealed_len) as u16).to_be_bytes());
    head[RECORD_HEADER_LEN..PAYLOAD_OFFSET].copy_from_slice(&explicit);
}

/// Receives records: owns the read key and the replay window of one epoch.
pub struct Opener {
    suite: Suite,
    cipher: Cipher,
    salt: [u8; 4],
    epoch: u16,
    window: ReplayWindow,
    /// Records that passed the cheap checks (epoch, length, replay window) and failed
    /// authentication: the integrity limit counts these, not every bad datagram.
    failed_opens: u64,
    limits: Limits,
}

impl Opener {
    pub fn new(suite: Suite, key: &[u8; 16], salt: &[u8; 4], epoch: u16) -> Self {
        Opener {
            suite,
            cipher: Cipher::new(suite, key),
            salt: *salt,
            epoch,
            window: ReplayWindow::default(),
            failed_opens: 0,
            limits: Limits::of(suite),
        }
    }

    /// The same opener under other limits (tests).
    #[cfg(any(test, feature = "test-util"))]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn epoch(&self) -> u16 {
        self.epoch
    }

    /// Records that failed authentication under this key (after the cheap checks).
    pub fn failed_opens(&self) -> u64 {
        self.failed_opens
    }

    /// Takes back `n` counted failures: a receive path that counts one per datagram (a
    /// spoofer's cost) rather than one per record in it (`crate::pump::Inbox`).
    pub fn forgive_failed_opens(&mut self, n: u64) {
        self.failed_opens = self.failed_opens.saturating_sub(n);
    }

    /// The key saw as many failed authentications as its integrity limit allows: the session
    /// must get fresh keys (between dtun peers; docs/PROTOCOL.md for an original peer).
    pub fn integrity_limit_reached(&self) -> bool {
        self.failed_opens >= self.limits.failed_opens
    }

    /// Opens one whole record (header included) in place. On success returns its content type
    /// and where its plaintext now lies inside `record`. The replay window moves only after the
    /// tag verified.
    pub fn open(&mut self, record: &mut [u8]) -> Result<(u8, Range<usize>), DropReason> {
        let c = self.check(record)?;
        let tag_len = self.suite.tag_len();
        let (payload, tag) =
            record[PAYLOAD_OFFSET..PAYLOAD_OFFSET + c.len + tag_len].split_at_mut(c.len);
        let ok = match &self.cipher {
            Cipher::Ccm8(ccm) => {
                let mut job = [Job {
                    nonce: c.nonce,
                    aad: c.aad,
                    data: payload,
                    tag: tag.try_into().map_err(|_| DropReason::Truncated)?,
                }];
                ccm.open(&mut job) == 1
            }
            Cipher::Gcm(k) => {
                let tag: [u8; 16] = tag[..].try_into().map_err(|_| DropReason::Truncated)?;
                k.open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(c.nonce),
                    Aad::from(c.aad),
                    Tag::from(tag),
                    payload,
                    0..,
                )
                .is_ok()
            }
        };
        if !ok {
            self.failed_opens += 1;
            return Err(DropReason::BadTag);
        }
        self.window.accept(c.seq);
        Ok((c.content_type, PAYLOAD_OFFSET..PAYLOAD_OFFSET + c.len))
    }

    /// Opens the records at `ranges` of `buf` in place and in order: `out[i]` gets record i's
    /// content type and where its plaintext lies in `buf`, or why it was dropped. The ranges
    /// ascend and do not overlap; an `Err` among them (a record that did not parse) passes
    /// through. CCM_8 records are opened [`ccm8::LANES`] at a time; each record still moves
    /// the replay window in order, after its own tag verified.
    pub fn open_many(
        &mut self,
        buf: &mut [u8],
        ranges: &[Result<Range<usize>, DropReason>],
        out: &mut [Result<(u8, Range<usize>), DropReason>],
    ) {
        let Cipher::Ccm8(ccm) = &self.cipher else {
            for (r, o) in ranges.iter().zip(out.iter_mut()) {
                *o = match r {
                    Ok(r) => match buf.get_mut(r.clone()) {
                        Some(rec) => self
                            .open(rec)
                            .map(|(ct, p)| (ct, r.start + p.start..r.start + p.end)),
                        None => Err(DropReason::Truncated),
                    },
                    Err(e) => Err(*e),
                };
            }
            return;
        };
        let mut jobs: [Job; ccm8::LANES] = std::array::from_fn(|_| Job::default());
        let mut pending = [Pending::default(); ccm8::LANES];
        let mut n = 0;
        let mut rest: &mut [u8] = buf;
        let mut base = 0;
        for (i, r) in ranges.iter().enumerate() {
            out[i] = Err(DropReason::Truncated);
            let r = match r {
                Ok(r) if r.start >= base && r.end <= base + rest.len() => r.clone(),
                Ok(_) => continue,
                Err(e) => {
                    out[i] = Err(*e);
                    continue;
                }
            };
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(r.start - base);
            let (rec, after) = tail.split_at_mut(r.len());
            rest = after;
            base = r.end;
            let c = match self.check(rec) {
                Ok(c) => c,
                Err(e) => {
                    out[i] = Err(e);
                    continue;
                }
            };
            let (payload, tag) =
                rec[PAYLOAD_OFFSET..PAYLOAD_OFFSET + c.len + ccm8::TAG_LEN].split_at_mut(c.len);
            let Ok(tag) = <[u8; ccm8::TAG_LEN]>::try_from(&*tag) else {
                continue;
            };
            jobs[n] = Job {
                nonce: c.nonce,
                aad: c.aad,
                data: payload,
                tag,
            };
            let start = r.start + PAYLOAD_OFFSET;
            pending[n] = Pending {
                index: i,
                seq: c.seq,
                content_type: c.content_type,
                plaintext: (start, start + c.len),
            };
            n += 1;
            if n == ccm8::LANES {
                self.failed_opens += open_pass(ccm, &mut self.window, &mut jobs, &pending, out);
                n = 0;
            }
        }
        self.failed_opens += open_pass(ccm, &mut self.window, &mut jobs[..n], &pending[..n], out);
    }

    /// The checks before decryption: header, epoch, lengths, replay window.
    fn check(&self, record: &[u8]) -> Result<Checked, DropReason> {
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
        Ok(Checked {
            content_type: header.content_type,
            seq: header.seq,
            len,
            nonce: nonce(&self.salt, &record[RECORD_HEADER_LEN..PAYLOAD_OFFSET]),
            aad: aad(epoch_seq, header.content_type, [record[1], record[2]], len),
        })
    }
}

/// A record that passed [`Opener::check`].
struct Checked {
    content_type: u8,
    seq: u64,
    len: usize,
    nonce: [u8; 12],
    aad: [u8; 13],
}

/// A record of a CCM_8 pass awaiting its tag.
#[derive(Clone, Copy, Default)]
struct Pending {
    index: usize,
    seq: u64,
    content_type: u8,
    plaintext: (usize, usize),
}

/// Opens one pass of records and settles each in order, as [`Opener::open`] would have one
/// after the other: a sequence number still new (two copies of one record can share a pass)
/// and a verified tag moves the window. Returns how many failed authentication.
fn open_pass(
    ccm: &Ccm8,
    window: &mut ReplayWindow,
    jobs: &mut [Job<'_>],
    pending: &[Pending],
    out: &mut [Result<(u8, Range<usize>), DropReason>],
) -> u64 {
    let verified = ccm.open(jobs);
    let mut failed = 0;
    for (j, p) in pending.iter().enumerate() {
        // The window first, as for one record: a copy of a record accepted earlier in the
        // pass is a replay, whatever its tag.
        out[p.index] = if !window.check(p.seq) {
            Err(DropReason::Replay)
        } else if verified & (1 << j) == 0 {
            failed += 1;
            Err(DropReason::BadTag)
        } else {
            window.accept(p.seq);
            Ok((p.content_type, p.plaintext.0..p.plaintext.1))
        };
    }
    failed
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
mod tests;
