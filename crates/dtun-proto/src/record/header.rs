//! Record headers: parsing one, and splitting a datagram into its records' byte ranges. Two
//! formats: the plain DTLS 1.2 header (13 bytes) and RFC 9146's connection ID record
//! (content type 25, 21 bytes: the CID sits between the sequence number and the length).

use std::ops::Range;

use super::{Cid, DropReason};
use crate::consts::{CID_LEN, CID_RECORD_HEADER_LEN, CONTENT_TLS12_CID, RECORD_HEADER_LEN};

/// The fields of a record header that routing and opening need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The outer content type: [`CONTENT_TLS12_CID`] for a CID record, whose real type is
    /// inside its ciphertext.
    pub content_type: u8,
    pub epoch: u16,
    pub seq: u64,
    /// The connection ID of a CID record; `None` for a plain record.
    pub cid: Option<Cid>,
    /// Length of the header: [`RECORD_HEADER_LEN`], or [`CID_RECORD_HEADER_LEN`] with a CID.
    pub header_len: usize,
    /// Length of the record body (after the header).
    pub body_len: usize,
}

impl Header {
    /// The whole record's length: header and body.
    #[inline]
    pub fn record_len(&self) -> usize {
        self.header_len + self.body_len
    }
}

/// Parses the header at the start of `buf`, checking the body fits in `buf`.
#[inline]
pub fn parse_header(buf: &[u8]) -> Result<Header, DropReason> {
    if buf.first() == Some(&CONTENT_TLS12_CID) {
        parse_cid(buf)
    } else {
        parse_plain(buf)
    }
}

/// The epoch ‖ sequence number field (bytes 3..11, the same in both formats) as a u64.
#[inline]
fn epoch_seq(buf: &[u8]) -> (u16, u64) {
    let mut seq = [0u8; 8];
    seq[2..].copy_from_slice(&buf[5..11]);
    (
        u16::from_be_bytes([buf[3], buf[4]]),
        u64::from_be_bytes(seq),
    )
}

/// A plain header, whatever its content type says (the caller has looked at it).
#[inline]
pub(super) fn parse_plain(buf: &[u8]) -> Result<Header, DropReason> {
    if buf.len() < RECORD_HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    let body_len = usize::from(u16::from_be_bytes([buf[11], buf[12]]));
    if buf.len() < RECORD_HEADER_LEN + body_len {
        return Err(DropReason::Truncated);
    }
    let (epoch, seq) = epoch_seq(buf);
    Ok(Header {
        content_type: buf[0],
        epoch,
        seq,
        cid: None,
        header_len: RECORD_HEADER_LEN,
        body_len,
    })
}

/// A CID record's header (RFC 9146 §4): the CID after the sequence number, then the length.
pub(super) fn parse_cid(buf: &[u8]) -> Result<Header, DropReason> {
    let Some(cid) = cid_field(buf) else {
        return Err(DropReason::Truncated);
    };
    let l = CID_AT + CID_LEN;
    let body_len = usize::from(u16::from_be_bytes([buf[l], buf[l + 1]]));
    if buf.len() < CID_RECORD_HEADER_LEN + body_len {
        return Err(DropReason::Truncated);
    }
    let (epoch, seq) = epoch_seq(buf);
    Ok(Header {
        content_type: buf[0],
        epoch,
        seq,
        cid: Some(cid),
        header_len: CID_RECORD_HEADER_LEN,
        body_len,
    })
}

/// Where a CID record's CID starts: where a plain record's length would be.
const CID_AT: usize = RECORD_HEADER_LEN - 2;

/// The CID field of a record that has a whole CID header (its type not checked).
#[inline]
fn cid_field(buf: &[u8]) -> Option<Cid> {
    if buf.len() < CID_RECORD_HEADER_LEN {
        return None;
    }
    buf[CID_AT..CID_AT + CID_LEN].try_into().ok()
}

/// The connection ID of a datagram's first record, if that is a CID record with a whole
/// header (its body is not checked): what the server's demultiplexer finds a session by.
#[inline]
pub fn peek_cid(datagram: &[u8]) -> Option<Cid> {
    match datagram.first() {
        Some(&CONTENT_TLS12_CID) => cid_field(datagram),
        _ => None,
    }
}

/// The byte range of the record that starts at `at` in a datagram.
pub fn record_at(datagram: &[u8], at: usize) -> Result<Range<usize>, DropReason> {
    let h = parse_header(datagram.get(at..).unwrap_or_default())?;
    Ok(at..at + h.record_len())
}

/// Splits a datagram into its records' byte ranges (plain and CID records alike); stops at the
/// first malformed one.
pub fn records(datagram: &[u8]) -> impl Iterator<Item = Result<Range<usize>, DropReason>> + '_ {
    let mut at = 0;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || at >= datagram.len() {
            return None;
        }
        match parse_header(&datagram[at..]) {
            Ok(h) => {
                let r = at..at + h.record_len();
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
