//! Record headers: parsing one, and splitting a datagram into its records' byte ranges.

use std::ops::Range;

use super::DropReason;
use crate::consts::RECORD_HEADER_LEN;

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
