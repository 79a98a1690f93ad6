//! The sending half of a session's record layer: one epoch's write key and sequence numbers,
//! records sealed in place one at a time or a whole batch at once (CCM_8 records share AES
//! passes), and the confidentiality limit. With a connection ID set (AES-128-GCM only) it seals
//! RFC 9146 CID records instead of plain ones.

use crate::ccm8::{self, Ccm8, Job};
use crate::consts::{
    CID_PAYLOAD_OFFSET, CID_RECORD_HEADER_LEN, CONTENT_TLS12_CID, DTLS12_VERSION,
    EXHAUSTION_MARGIN, EXPLICIT_NONCE_LEN, MAX_RECORD_PLAINTEXT, MAX_SEQUENCE, PAYLOAD_OFFSET,
    RECORD_HEADER_LEN,
};
use ring::aead::{Aad, Nonce};

use super::{Cid, Cipher, Limits, SealError, Suite, aad, cid_aad, limits, nonce};

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
    /// Seal RFC 9146 CID records with this CID (GCM only); `None`: plain records.
    cid: Option<Cid>,
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
            cid: None,
        }
    }

    /// From the next record on, seals RFC 9146 connection ID records carrying `cid` (`Some`),
    /// or plain records (`None`). Only AES-128-GCM has CID records: under CCM_8 this returns
    /// false and changes nothing. A rekey keeps the setting.
    pub fn set_cid(&mut self, cid: Option<Cid>) -> bool {
        if self.suite != Suite::Aes128Gcm {
            return false;
        }
        self.cid = cid;
        true
    }

    /// The CID records are sealed with, if any.
    pub fn cid(&self) -> Option<Cid> {
        self.cid
    }

    /// Where the caller puts a record's plaintext in the buffer [`Sealer::seal`] seals:
    /// [`PAYLOAD_OFFSET`], or [`CID_PAYLOAD_OFFSET`] with a CID.
    #[inline]
    pub fn payload_offset(&self) -> usize {
        if self.cid.is_some() {
            CID_PAYLOAD_OFFSET
        } else {
            PAYLOAD_OFFSET
        }
    }

    /// Bytes a record has after its plaintext: the tag, and with a CID the inner content type
    /// before it.
    #[inline]
    pub fn trailer_len(&self) -> usize {
        self.suite.tag_len() + usize::from(self.cid.is_some())
    }

    /// A rekey: seals with `key` and `salt` in `epoch` from now on, from sequence number 0
    /// and with the usage limits counted afresh.
    pub fn rekey(&mut self, epoch: u16, key: &[u8; 16], salt: &[u8; 4]) {
        self.cipher = Cipher::new(self.suite, key);
        self.salt = *salt;
        self.epoch = epoch;
        self.next_seq = 0;
        self.sealed_blocks = 0;
    }

    pub fn epoch(&self) -> u16 {
        self.epoch
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

    /// Three quarters of a usage limit (blocks, or sequence numbers past all but a reserve)
    /// are spent: a session that rekeys should now, well before it must close.
    pub fn wants_rekey(&self) -> bool {
        self.blocks_left() <= self.limits.sealed_blocks / 4
            || self.remaining() <= EXHAUSTION_MARGIN * 16
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

    /// Seals the `len` plaintext bytes at `buf[self.payload_offset()..]` into one record
    /// starting at `buf[0]` and returns the record's length. The explicit nonce is epoch ‖
    /// sequence number (never random: see PROTOCOL.md "Decisions"). With a CID the record is
    /// a CID record: the content type goes after the plaintext, inside the ciphertext, and the
    /// record is `payload_offset() + len + trailer_len()` bytes.
    pub fn seal(
        &mut self,
        content_type: u8,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, SealError> {
        match self.cid {
            None => self.seal_plain(content_type, buf, len),
            Some(cid) => self.seal_cid(content_type, buf, len, &cid),
        }
    }

    /// [`Sealer::seal`] of a plain record.
    #[inline]
    fn seal_plain(
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

    /// [`Sealer::seal`] of a CID record: the usage limit counts the inner plaintext (`len` + 1).
    fn seal_cid(
        &mut self,
        content_type: u8,
        buf: &mut [u8],
        len: usize,
        cid: &Cid,
    ) -> Result<usize, SealError> {
        let cost = self.admit(len.saturating_add(1))?;
        let epoch_seq = (u64::from(self.epoch) << 48) | self.next_seq;
        let n = self.seal_cid_at(content_type, buf, len, epoch_seq, cid)?;
        self.next_seq += 1;
        self.sealed_blocks += cost;
        Ok(n)
    }

    /// Seals one CID record (RFC 9146 §4, §5.3) of sequence number `epoch_seq`, used once.
    /// The DTLSInnerPlaintext is the content and its type, without padding.
    fn seal_cid_at(
        &self,
        content_type: u8,
        buf: &mut [u8],
        len: usize,
        epoch_seq: u64,
        cid: &Cid,
    ) -> Result<usize, SealError> {
        // set_cid refuses CCM_8, so this is always GCM.
        let Cipher::Gcm(k) = &self.cipher else {
            return Err(SealError::BufferTooSmall(len));
        };
        let inner_len = len.saturating_add(1);
        if inner_len > MAX_RECORD_PLAINTEXT {
            return Err(SealError::BufferTooSmall(len));
        }
        let tag_len = self.suite.tag_len();
        let total = CID_PAYLOAD_OFFSET + inner_len + tag_len;
        if buf.len() < total {
            return Err(SealError::BufferTooSmall(len));
        }
        let explicit = epoch_seq.to_be_bytes();
        let aad = cid_aad(epoch_seq, DTLS12_VERSION, cid, inner_len);
        let (head, rest) = buf[..total].split_at_mut(CID_PAYLOAD_OFFSET);
        head[0] = CONTENT_TLS12_CID;
        head[1..3].copy_from_slice(&DTLS12_VERSION);
        head[3..11].copy_from_slice(&explicit);
        head[11..CID_RECORD_HEADER_LEN - 2].copy_from_slice(cid);
        let body_len = (EXPLICIT_NONCE_LEN + inner_len + tag_len) as u16;
        head[CID_RECORD_HEADER_LEN - 2..CID_RECORD_HEADER_LEN]
            .copy_from_slice(&body_len.to_be_bytes());
        head[CID_RECORD_HEADER_LEN..].copy_from_slice(&explicit);
        let (inner, tag_out) = rest.split_at_mut(inner_len);
        inner[len] = content_type;
        let tag = k
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce(&self.salt, &explicit)),
                Aad::from(aad),
                inner,
            )
            .map_err(|_| SealError::BufferTooSmall(len))?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(total)
    }

    /// Like [`Sealer::seal`] with a caller-chosen sequence number and explicit nonce, so the
    /// known-answer tests can rebuild records of peers that send random nonces. Reusing a
    /// nonce under one key breaks the cipher, so this exists only in test builds: with
    /// `cfg(test)` or the test-only feature `test-util` (which only the self dev-dependency
    /// in Cargo.toml turns on); a normal build of the crate has no such method. Plain records
    /// only, whatever the CID setting.
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

    /// Seals a batch of packets: slot i holds `sizes[i]` plaintext bytes at
    /// [`Sealer::payload_offset`], and `records[i]` gets the length of its record, or 0 if the
    /// packet does not fit its slot or is over `MAX_RECORD_PLAINTEXT` (not sent). CCM_8
    /// records are sealed [`ccm8::LANES`] at a time; GCM ones one by one, as CID records when a
    /// CID is set (looked at once per batch). Fails, leaving the rest unsealed, once the
    /// sequence numbers or the usage limit run out.
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
                return match self.cid {
                    None => self.seal_each(slots, sizes, records, |s, buf, len| {
                        s.seal_plain(content_type, buf, len)
                    }),
                    Some(cid) => self.seal_each(slots, sizes, records, |s, buf, len| {
                        s.seal_cid(content_type, buf, len, &cid)
                    }),
                };
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

impl Sealer {
    /// Seals each slot with `one`, one record at a time: [`Sealer::seal_many`] for GCM.
    #[inline]
    fn seal_each<S: AsMut<[u8]>>(
        &mut self,
        slots: &mut [S],
        sizes: &[usize],
        records: &mut [usize],
        mut one: impl FnMut(&mut Sealer, &mut [u8], usize) -> Result<usize, SealError>,
    ) -> Result<(), SealError> {
        for ((slot, &len), rec) in slots.iter_mut().zip(sizes).zip(records.iter_mut()) {
            match one(self, slot.as_mut(), len) {
                Ok(n) => *rec = n,
                Err(SealError::BufferTooSmall(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
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
