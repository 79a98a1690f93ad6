//! The rekey messages and how they travel. An Init (1 218 bytes) or a Reply (1 122 bytes) is
//! larger than a small path carries in one datagram, so each goes as control messages of
//! type 8, fragments of at most [`MAX_FRAGMENT`] bytes (a sender may choose fewer) with the
//! message's kind, epoch, length and the fragment's offset; the receiver puts them together
//! in a [`Reassembly`], in any order, duplicates harmless. A fragment's record is at most
//! 554 bytes on an IPv4 path (574 on IPv6): within the 576 bytes every IPv4 host must take,
//! so a rekey never needs IP fragmentation. A lost fragment costs the whole message again
//! (its sender repeats it on a timer).
//!
//! ```text
//! fragment = 0x00 0x08 ‖ kind (1 Init, 2 Reply) ‖ u16 epoch ‖ u16 total ‖ u16 offset ‖ data
//! Init     = u16 epoch ‖ X25519 share (32) ‖ ML-KEM-768 encapsulation key (1184)
//! Reply    = u16 epoch ‖ X25519 share (32) ‖ ML-KEM-768 ciphertext (1088)
//! ```

use super::RekeyError;
use super::hybrid::{CT_LEN, EK_LEN, InitShare, ReplyShare, X25519_LEN};
use crate::consts::CONTROL_MARKER;

/// The control message type of a rekey fragment.
pub const REKEY_TYPE: u8 = 8;
/// Most data bytes in one fragment.
pub const MAX_FRAGMENT: usize = 480;
/// Length of an Init message.
pub const INIT_LEN: usize = 2 + X25519_LEN + EK_LEN;
/// Length of a Reply message.
pub const REPLY_LEN: usize = 2 + X25519_LEN + CT_LEN;
/// Bytes before a fragment's data: marker, type, kind, epoch, total, offset.
pub const FRAGMENT_HEADER: usize = 2 + 1 + 2 + 2 + 2;

/// Which message a fragment belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Init = 1,
    Reply = 2,
}

impl Kind {
    /// The message's whole length.
    pub fn message_len(self) -> usize {
        match self {
            Kind::Init => INIT_LEN,
            Kind::Reply => REPLY_LEN,
        }
    }
}

/// One fragment, as parsed (the control message `Control::Rekey`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    pub kind: Kind,
    pub epoch: u16,
    pub offset: u16,
    pub data: Vec<u8>,
}

impl Fragment {
    /// A fragment's body after the marker and type: the total must be its kind's length, the
    /// data 1 to MAX_FRAGMENT bytes within it.
    pub fn parse(body: &[u8]) -> Result<Fragment, RekeyError> {
        let [kind, e0, e1, t0, t1, o0, o1, data @ ..] = body else {
            return Err(RekeyError::Malformed);
        };
        let kind = match kind {
            1 => Kind::Init,
            2 => Kind::Reply,
            _ => return Err(RekeyError::Malformed),
        };
        let total = usize::from(u16::from_be_bytes([*t0, *t1]));
        let offset = u16::from_be_bytes([*o0, *o1]);
        let end = usize::from(offset) + data.len();
        if total != kind.message_len()
            || data.is_empty()
            || data.len() > MAX_FRAGMENT
            || end > total
        {
            return Err(RekeyError::Malformed);
        }
        Ok(Fragment {
            kind,
            epoch: u16::from_be_bytes([*e0, *e1]),
            offset,
            data: data.to_vec(),
        })
    }

    /// The whole control message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let total = self.kind.message_len() as u16;
        let mut b = Vec::with_capacity(FRAGMENT_HEADER + self.data.len());
        b.extend_from_slice(&[CONTROL_MARKER, REKEY_TYPE, self.kind as u8]);
        b.extend_from_slice(&self.epoch.to_be_bytes());
        b.extend_from_slice(&total.to_be_bytes());
        b.extend_from_slice(&self.offset.to_be_bytes());
        b.extend_from_slice(&self.data);
        b
    }
}

/// A message cut into control messages of at most `max` data bytes each (1 to MAX_FRAGMENT).
pub fn fragments(kind: Kind, epoch: u16, message: &[u8], max: usize) -> Vec<Vec<u8>> {
    let max = max.clamp(1, MAX_FRAGMENT);
    message
        .chunks(max)
        .enumerate()
        .map(|(i, data)| {
            Fragment {
                kind,
                epoch,
                offset: (i * max) as u16,
                data: data.to_vec(),
            }
            .to_bytes()
        })
        .collect()
}

/// One message being put together from its fragments: fragments of another kind or epoch
/// start it over (the session decides which epochs it takes before it gets here).
#[derive(Debug)]
pub struct Reassembly {
    kind: Kind,
    epoch: u16,
    buf: Vec<u8>,
    have: Vec<bool>,
    missing: usize,
}

impl Reassembly {
    pub fn new(kind: Kind, epoch: u16) -> Reassembly {
        Reassembly {
            kind,
            epoch,
            buf: vec![0; kind.message_len()],
            have: vec![false; kind.message_len()],
            missing: kind.message_len(),
        }
    }

    /// Adds a fragment; the whole message once every byte came (then it starts over).
    pub fn add(&mut self, f: &Fragment) -> Option<Vec<u8>> {
        if (f.kind, f.epoch) != (self.kind, self.epoch) {
            *self = Reassembly::new(f.kind, f.epoch);
        }
        let at = usize::from(f.offset);
        // Fragment::parse keeps every fragment within its message.
        let (buf, have) = (
            self.buf.get_mut(at..at + f.data.len())?,
            self.have.get_mut(at..at + f.data.len())?,
        );
        buf.copy_from_slice(&f.data);
        for h in have {
            if !*h {
                *h = true;
                self.missing -= 1;
            }
        }
        if self.missing > 0 {
            return None;
        }
        let whole = std::mem::take(&mut self.buf);
        *self = Reassembly::new(self.kind, self.epoch);
        Some(whole)
    }
}

/// The Init message for `epoch`.
pub fn init_message(epoch: u16, share: &InitShare) -> Vec<u8> {
    let mut b = Vec::with_capacity(INIT_LEN);
    b.extend_from_slice(&epoch.to_be_bytes());
    b.extend_from_slice(&share.x25519);
    b.extend_from_slice(&share.ek[..]);
    b
}

/// The Reply message for `epoch`.
pub fn reply_message(epoch: u16, share: &ReplyShare) -> Vec<u8> {
    let mut b = Vec::with_capacity(REPLY_LEN);
    b.extend_from_slice(&epoch.to_be_bytes());
    b.extend_from_slice(&share.x25519);
    b.extend_from_slice(&share.ct[..]);
    b
}

/// An Init message's epoch and shares.
pub fn parse_init(m: &[u8]) -> Result<(u16, InitShare), RekeyError> {
    let (epoch, x25519, ek) = split::<EK_LEN>(m)?;
    Ok((epoch, InitShare { x25519, ek }))
}

/// A Reply message's epoch and shares.
pub fn parse_reply(m: &[u8]) -> Result<(u16, ReplyShare), RekeyError> {
    let (epoch, x25519, ct) = split::<CT_LEN>(m)?;
    Ok((epoch, ReplyShare { x25519, ct }))
}

/// A message's epoch, X25519 share and the `N` bytes after it.
type Parts<const N: usize> = (u16, [u8; X25519_LEN], Box<[u8; N]>);

/// A message of exactly `2 + 32 + N` bytes, in its parts.
fn split<const N: usize>(m: &[u8]) -> Result<Parts<N>, RekeyError> {
    let [e0, e1, rest @ ..] = m else {
        return Err(RekeyError::Malformed);
    };
    let (x, tail) = rest
        .split_at_checked(X25519_LEN)
        .ok_or(RekeyError::Malformed)?;
    let x25519: [u8; X25519_LEN] = x.try_into().map_err(|_| RekeyError::Malformed)?;
    let tail: Box<[u8; N]> = tail
        .to_vec()
        .into_boxed_slice()
        .try_into()
        .map_err(|_| RekeyError::Malformed)?;
    Ok((u16::from_be_bytes([*e0, *e1]), x25519, tail))
}
