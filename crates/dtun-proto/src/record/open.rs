//! The receiving half of a session's record layer: one epoch's read key and replay window (and,
//! after a rekey, the previous epoch's for an overlap), records opened in place one at a time
//! or a whole receive buffer at once, each a counted drop when it does not authenticate, and
//! the integrity limit. Besides plain records it reads RFC 9146 connection ID records (AES-128-GCM
//! only) that carry the CID it was given ([`Opener::set_cid`]).

use std::ops::Range;

use crate::ccm8::{self, Ccm8, Job};
use crate::consts::{
    CID_PAYLOAD_OFFSET, CID_RECORD_HEADER_LEN, CONTENT_TLS12_CID, EXPLICIT_NONCE_LEN,
    MAX_RECORD_PLAINTEXT, PAYLOAD_OFFSET, RECORD_HEADER_LEN,
};
use ring::aead::{Aad, Nonce, Tag};

use super::header::{parse_cid, parse_plain};
use super::{
    Cid, Cipher, DropReason, Limits, ReplayWindow, Suite, aad, cid_aad, nonce, parse_header,
};

/// What opening one record gives: its content type and where its plaintext lies, or why it was
/// dropped.
type Opened = Result<(u8, Range<usize>), DropReason>;

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
    /// The previous epoch's opener after a rekey: its records still open until it is retired
    /// ([`Opener::retire_previous`]) or the next rekey replaces it.
    previous: Option<Box<Opener>>,
    /// A record of this epoch opened.
    opened: bool,
    /// Reads RFC 9146 CID records that carry this CID, besides plain records (GCM only).
    cid: Option<Cid>,
    /// epoch ‖ sequence number of the newest record that authenticated and was not a replay,
    /// in this epoch or one before it (0 before any): it only ever grows.
    newest: u64,
}

/// The epoch field of a record's header, if it has one.
#[inline]
fn epoch_of(record: &[u8]) -> Option<u16> {
    match record {
        [_, _, _, e0, e1, ..] => Some(u16::from_be_bytes([*e0, *e1])),
        _ => None,
    }
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
            previous: None,
            opened: false,
            cid: None,
            newest: 0,
        }
    }

    /// Reads RFC 9146 CID records that carry `cid` from now on, besides plain records; `None`:
    /// plain records only. Every CID record with another CID is a drop ([`DropReason::BadCid`]).
    /// Under CCM_8 it does nothing: CCM_8 has no CID records, and each is a `BadCid` drop. The
    /// previous epoch's key takes the CID too, and a rekey keeps it.
    pub fn set_cid(&mut self, cid: Option<Cid>) {
        if self.suite != Suite::Aes128Gcm {
            return;
        }
        self.cid = cid;
        if let Some(p) = self.previous.as_deref_mut() {
            p.cid = cid;
        }
    }

    /// The CID that CID records must carry, if any.
    pub fn cid(&self) -> Option<Cid> {
        self.cid
    }

    /// epoch << 48 | sequence number of the newest record, of any epoch this opener read, that
    /// authenticated and was not a replay (0 before any). Only such a record moves it, and only
    /// upwards: an older record that arrives late opens without moving it. RFC 9146 §6's test
    /// of a datagram from a new address is whether it moved this.
    pub fn newest(&self) -> u64 {
        self.newest
    }

    /// A rekey: reads `epoch` with `key` and `salt` from now on, and the epoch it read until
    /// now for an overlap (an older one is dropped).
    pub fn rekey(&mut self, epoch: u16, key: &[u8; 16], salt: &[u8; 4]) {
        let mut next = Opener::new(self.suite, key, salt, epoch);
        next.limits = self.limits;
        next.cid = self.cid;
        next.newest = self.newest;
        let mut old = std::mem::replace(self, next);
        old.previous = None;
        self.previous = Some(Box::new(old));
    }

    /// Ends the overlap: the previous epoch's records are drops from now on.
    pub fn retire_previous(&mut self) {
        self.previous = None;
    }

    /// Whether a record of the current epoch has opened (after a rekey: the peer has the
    /// new keys).
    pub fn has_opened(&self) -> bool {
        self.opened
    }

    /// The previous epoch still read, if any.
    pub fn previous_epoch(&self) -> Option<u16> {
        self.previous.as_ref().map(|p| p.epoch)
    }

    /// Opens a record of the previous epoch under that epoch's key, if it is one (`None`: it
    /// is not); what opens there moves [`Opener::newest`] here too.
    #[inline]
    fn open_previous(&mut self, record: &mut [u8]) -> Option<Opened> {
        let p = self.previous.as_deref_mut()?;
        if epoch_of(record) != Some(p.epoch) {
            return None;
        }
        let opened = p.open(record);
        if opened.is_ok() {
            self.newest = self.newest.max(p.newest);
        }
        Some(opened)
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

    /// Records that failed authentication under this key and the previous epoch's it still
    /// reads (after the cheap checks).
    pub fn failed_opens(&self) -> u64 {
        self.failed_opens + self.previous.as_ref().map_or(0, |p| p.failed_opens)
    }

    /// Takes back `n` counted failures: a receive path that counts one per datagram (a
    /// spoofer's cost) rather than one per record in it (`crate::pump::Inbox`). Taken from
    /// this epoch's count first, then the previous epoch's: whichever key a datagram's
    /// forgeries tried, one of them counts.
    pub fn forgive_failed_opens(&mut self, n: u64) {
        let here = n.min(self.failed_opens);
        self.failed_opens -= here;
        if let Some(p) = self.previous.as_deref_mut() {
            p.failed_opens = p.failed_opens.saturating_sub(n - here);
        }
    }

    /// The keys saw as many failed authentications as the integrity limit allows, this
    /// epoch's and the previous one's together (a forger must not get a second budget by
    /// aiming at the key still read for the overlap): the session must get fresh keys
    /// (between dtun peers; docs/PROTOCOL.md for an original peer).
    pub fn integrity_limit_reached(&self) -> bool {
        self.failed_opens() >= self.limits.failed_opens
    }

    /// Whether `record` is an authentic copy of a record this opener already accepted: its
    /// (epoch, sequence number) is held by that epoch's replay window and its tag verifies.
    /// It is opened in place, and, like [`Opener::open`], its content type and plaintext are
    /// returned (the caller may read them, never deliver them). Nothing else moves: the
    /// windows, `newest` and `has_opened` stay as they were; a failed tag counts towards the
    /// integrity limit as any. A roaming session's server asks this of a record from an
    /// address that is not the session's (a copier raced the client's records to another
    /// one, docs/PROTOCOL.md "Roaming").
    pub fn authentic_copy(&mut self, record: &mut [u8]) -> Option<(u8, Range<usize>)> {
        let (Ok(h), Some(epoch)) = (parse_header(record), epoch_of(record)) else {
            return None;
        };
        let target = if epoch == self.epoch {
            &mut *self
        } else {
            match self.previous.as_deref_mut() {
                Some(p) if p.epoch == epoch => p,
                _ => return None,
            }
        };
        if !target.window.holds(h.seq) {
            return None;
        }
        let (window, newest, opened) = (target.window.clone(), target.newest, target.opened);
        target.window = ReplayWindow::default();
        let copy = target.open(record).ok();
        (target.window, target.newest, target.opened) = (window, newest, opened);
        copy
    }

    /// Opens one whole record (header included) in place. On success returns its content type
    /// and where its plaintext now lies inside `record`; for a CID record its real content type
    /// and its content alone (the type and any padding after it stripped). The replay window
    /// moves only after the tag verified.
    pub fn open(&mut self, record: &mut [u8]) -> Opened {
        if let Some(opened) = self.open_previous(record) {
            return opened;
        }
        if record.first() == Some(&CONTENT_TLS12_CID) {
            return self.open_cid(record);
        }
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
        self.opened = true;
        self.newest = self.newest.max((u64::from(self.epoch) << 48) | c.seq);
        Ok((c.content_type, PAYLOAD_OFFSET..PAYLOAD_OFFSET + c.len))
    }

    /// Opens a CID record of this epoch (RFC 9146 §4, §5.3): the cheap checks (the CID first,
    /// then as for a plain record), the tag, then the DTLSInnerPlaintext's padding: the last
    /// non-zero byte is the real content type. An authenticated record without one consumes
    /// its sequence number but is a drop that moves nothing else.
    fn open_cid(&mut self, record: &mut [u8]) -> Opened {
        let h = parse_cid(record)?;
        let (Some(cid), Cipher::Gcm(k)) = (self.cid.filter(|c| h.cid == Some(*c)), &self.cipher)
        else {
            return Err(DropReason::BadCid);
        };
        if h.epoch != self.epoch {
            return Err(DropReason::BadEpoch);
        }
        let tag_len = self.suite.tag_len();
        // At least the real content type: an empty DTLSInnerPlaintext is malformed.
        let inner_len = match h.body_len.checked_sub(EXPLICIT_NONCE_LEN + tag_len) {
            Some(0) | None => return Err(DropReason::Truncated),
            Some(n) => n,
        };
        // RFC 9146 §5.3: length_of_DTLSInnerPlaintext MUST NOT exceed 2^14.
        if inner_len > MAX_RECORD_PLAINTEXT {
            return Err(DropReason::Oversized);
        }
        if !self.window.check(h.seq) {
            return Err(DropReason::Replay);
        }
        let epoch_seq = (u64::from(h.epoch) << 48) | h.seq;
        let nonce = nonce(
            &self.salt,
            &record[CID_RECORD_HEADER_LEN..CID_PAYLOAD_OFFSET],
        );
        let aad = cid_aad(epoch_seq, [record[1], record[2]], &cid, inner_len);
        let (inner, tag) = record[CID_PAYLOAD_OFFSET..CID_PAYLOAD_OFFSET + inner_len + tag_len]
            .split_at_mut(inner_len);
        let tag: [u8; 16] = tag[..].try_into().map_err(|_| DropReason::Truncated)?;
        let ok = k
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                Tag::from(tag),
                inner,
                0..,
            )
            .is_ok();
        if !ok {
            self.failed_opens += 1;
            return Err(DropReason::BadTag);
        }
        self.window.accept(h.seq);
        let Some(end) = inner.iter().rposition(|b| *b != 0) else {
            return Err(DropReason::BadInner);
        };
        let content_type = inner[end];
        self.opened = true;
        self.newest = self.newest.max(epoch_seq);
        Ok((content_type, CID_PAYLOAD_OFFSET..CID_PAYLOAD_OFFSET + end))
    }

    /// Opens the records at `ranges` of `buf` in place and in order: `out[i]` gets record i's
    /// content type and where its plaintext lies in `buf`, or why it was dropped. The ranges
    /// ascend and do not overlap; an `Err` among them (a record that did not parse) passes
    /// through. Plain and CID records may mix. CCM_8 records are opened [`ccm8::LANES`] at a
    /// time; each record still moves the replay window in order, after its own tag verified.
    pub fn open_many(
        &mut self,
        buf: &mut [u8],
        ranges: &[Result<Range<usize>, DropReason>],
        out: &mut [Opened],
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
        // What the passes settled: failed authentications, the highest sequence number opened.
        let mut settled = (0, None);
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
            // A record of the previous epoch (around a rekey): alone, under its own key. The
            // window of each epoch still moves in order (the passes of this epoch settle in
            // order among themselves). A CID record (never one under CCM_8): its drop.
            let epoch = epoch_of(rec);
            if let Some(p) = self
                .previous
                .as_deref_mut()
                .filter(|p| epoch == Some(p.epoch))
            {
                let opened = p.open(rec);
                if opened.is_ok() {
                    self.newest = self.newest.max(p.newest);
                }
                out[i] = opened.map(|(ct, pl)| (ct, r.start + pl.start..r.start + pl.end));
                continue;
            }
            // A CID record: CCM_8 reads none (what `open_cid` says under CCM_8).
            if rec.first() == Some(&CONTENT_TLS12_CID) {
                out[i] = parse_cid(rec).and(Err(DropReason::BadCid));
                continue;
            }
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
                let (failed, top) = open_pass(ccm, &mut self.window, &mut jobs, &pending, out);
                settled = (settled.0 + failed, settled.1.max(top));
                n = 0;
            }
        }
        let (failed, top) = open_pass(ccm, &mut self.window, &mut jobs[..n], &pending[..n], out);
        self.failed_opens += settled.0 + failed;
        if let Some(seq) = settled.1.max(top) {
            self.opened = true;
            self.newest = self.newest.max((u64::from(self.epoch) << 48) | seq);
        }
    }

    /// The checks before decryption of a plain record: header, epoch, lengths, replay window.
    fn check(&self, record: &[u8]) -> Result<Checked, DropReason> {
        let tag_len = self.suite.tag_len();
        let header = parse_plain(record)?;
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
/// and a verified tag moves the window. Returns how many failed authentication, and the
/// highest sequence number that opened, if any did.
fn open_pass(
    ccm: &Ccm8,
    window: &mut ReplayWindow,
    jobs: &mut [Job<'_>],
    pending: &[Pending],
    out: &mut [Opened],
) -> (u64, Option<u64>) {
    let verified = ccm.open(jobs);
    let mut failed = 0;
    let mut top = None;
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
            top = top.max(Some(p.seq));
            Ok((p.content_type, p.plaintext.0..p.plaintext.1))
        };
    }
    (failed, top)
}
