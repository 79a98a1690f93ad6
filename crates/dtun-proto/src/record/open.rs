//! The receiving half of a session's record layer: one epoch's read key and replay window (and,
//! after a rekey, the previous epoch's for an overlap), records opened in place one at a time
//! or a whole receive buffer at once, each a counted drop when it does not authenticate, and
//! the integrity limit.

use std::ops::Range;

use crate::ccm8::{self, Ccm8, Job};
use crate::consts::{EXPLICIT_NONCE_LEN, MAX_RECORD_PLAINTEXT, PAYLOAD_OFFSET, RECORD_HEADER_LEN};
use ring::aead::{Aad, Nonce, Tag};

use super::{Cipher, DropReason, Limits, ReplayWindow, Suite, aad, nonce, parse_header};

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
        }
    }

    /// A rekey: reads `epoch` with `key` and `salt` from now on, and the epoch it read until
    /// now for an overlap (an older one is dropped).
    pub fn rekey(&mut self, epoch: u16, key: &[u8; 16], salt: &[u8; 4]) {
        let mut next = Opener::new(self.suite, key, salt, epoch);
        next.limits = self.limits;
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

    /// The opener for a record of the previous epoch, if it is one.
    #[inline]
    fn previous_for(&mut self, record: &[u8]) -> Option<&mut Opener> {
        let p = self.previous.as_deref_mut()?;
        (epoch_of(record) == Some(p.epoch)).then_some(p)
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

    /// Opens one whole record (header included) in place. On success returns its content type
    /// and where its plaintext now lies inside `record`. The replay window moves only after the
    /// tag verified.
    pub fn open(&mut self, record: &mut [u8]) -> Result<(u8, Range<usize>), DropReason> {
        if let Some(p) = self.previous_for(record) {
            return p.open(record);
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
            // A record of the previous epoch (around a rekey): alone, under its own key. The
            // window of each epoch still moves in order (the passes of this epoch settle in
            // order among themselves).
            let epoch = epoch_of(rec);
            if let Some(p) = self
                .previous
                .as_deref_mut()
                .filter(|p| epoch == Some(p.epoch))
            {
                out[i] = p
                    .open(rec)
                    .map(|(ct, pl)| (ct, r.start + pl.start..r.start + pl.end));
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
                let (failed, any) = open_pass(ccm, &mut self.window, &mut jobs, &pending, out);
                self.failed_opens += failed;
                self.opened |= any;
                n = 0;
            }
        }
        let (failed, any) = open_pass(ccm, &mut self.window, &mut jobs[..n], &pending[..n], out);
        self.failed_opens += failed;
        self.opened |= any;
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
/// and a verified tag moves the window. Returns how many failed authentication, and whether
/// any opened.
fn open_pass(
    ccm: &Ccm8,
    window: &mut ReplayWindow,
    jobs: &mut [Job<'_>],
    pending: &[Pending],
    out: &mut [Result<(u8, Range<usize>), DropReason>],
) -> (u64, bool) {
    let verified = ccm.open(jobs);
    let mut failed = 0;
    let mut any = false;
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
            any = true;
            Ok((p.content_type, p.plaintext.0..p.plaintext.1))
        };
    }
    (failed, any)
}
