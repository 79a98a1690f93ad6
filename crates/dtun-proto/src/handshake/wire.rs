//! What both sides of the handshake read and write the same way: handshake message framing
//! (RFC 6347 §4.2.2), plaintext record headers, alerts, and two readings of a datagram that
//! the server's demultiplexer and the tests use (is it a last flight, which suite does its
//! ServerHello choose).

use crate::consts::{
    CONTENT_ALERT, CONTENT_CHANGE_CIPHER_SPEC, CONTENT_HANDSHAKE, DTLS12_VERSION, RECORD_HEADER_LEN,
};
use crate::record;

/// Handshake message header: type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3).
pub const HS_HEADER: usize = 12;

pub(super) const CLIENT_HELLO: u8 = 1;
pub(super) const SERVER_HELLO: u8 = 2;
pub(super) const HELLO_VERIFY_REQUEST: u8 = 3;
pub(super) const SERVER_KEY_EXCHANGE: u8 = 12;
pub(super) const SERVER_HELLO_DONE: u8 = 14;
pub(super) const CLIENT_KEY_EXCHANGE: u8 = 16;
pub(super) const FINISHED: u8 = 20;
pub(super) const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
pub(super) const EXT_EMS: u16 = 23;
pub(super) const EXT_RENEGOTIATION_INFO: u16 = 0xff01;
pub(super) const SCSV_RENEGOTIATION: u16 = 0x00ff;
pub(super) const VERIFY_DATA_LEN: usize = 12;
/// Alert descriptions we send (fatal).
pub const ALERT_HANDSHAKE_FAILURE: u8 = 40;
pub const ALERT_DECRYPT_ERROR: u8 = 51;
pub const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
pub const ALERT_ILLEGAL_PARAMETER: u8 = 47;

/// The names of the alerts a server sends during a handshake (RFC 5246 §7.2).
pub(super) fn alert_name(description: u8) -> &'static str {
    match description {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        40 => "handshake_failure",
        47 => "illegal_parameter",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        115 => "unknown_psk_identity",
        _ => "unknown",
    }
}

pub(super) fn u24(b: &[u8]) -> usize {
    usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2])
}

pub(super) fn put_u24(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_be_bytes()[1..]);
}

/// Constant-time equality of two byte strings of public length.
pub(super) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One handshake message of a record: its type, message_seq and the whole message (header
/// included) when it is unfragmented; `None` when the bytes do not parse.
pub(super) struct Message<'a> {
    pub(super) typ: u8,
    pub(super) seq: u16,
    /// Header + body, as hashed (unfragmented messages hash as received).
    pub(super) whole: &'a [u8],
    pub(super) body: &'a [u8],
}

/// The unfragmented handshake messages of one plaintext record body; stops at the first that
/// does not parse or is a fragment (we never reassemble: real flights here are small).
pub(super) fn messages(mut body: &[u8]) -> impl Iterator<Item = Message<'_>> {
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
pub(super) fn push_message(out: &mut Vec<u8>, typ: u8, seq: u16, body: &[u8]) {
    out.push(typ);
    put_u24(out, body.len());
    out.extend_from_slice(&seq.to_be_bytes());
    put_u24(out, 0);
    put_u24(out, body.len());
    out.extend_from_slice(body);
}

/// Appends a plaintext record header for `len` bytes of `content` in epoch 0.
pub(super) fn push_record_header(out: &mut Vec<u8>, content: u8, seq: u64, len: usize) {
    out.push(content);
    out.extend_from_slice(&DTLS12_VERSION);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&seq.to_be_bytes()[2..]);
    out.extend_from_slice(&(len as u16).to_be_bytes());
}

/// Appends one epoch-0 record holding handshake `messages` (already framed) with sequence
/// number `*seq`, and advances it.
pub(super) fn push_handshake_record(out: &mut Vec<u8>, seq: &mut u64, messages: &[u8]) {
    push_record_header(out, CONTENT_HANDSHAKE, *seq, messages.len());
    out.extend_from_slice(messages);
    *seq += 1;
}

/// Appends an epoch-0 ChangeCipherSpec record with sequence number `*seq`, and advances it.
pub(super) fn push_change_cipher_spec(out: &mut Vec<u8>, seq: &mut u64) {
    push_record_header(out, CONTENT_CHANGE_CIPHER_SPEC, *seq, 1);
    out.push(1);
    *seq += 1;
}

/// Reads a length-prefixed vector (`N` = 1 or 2 bytes of length) at `*at` of `b`, and moves
/// past it; `None` when it runs past the end.
pub(super) fn vec_at<'a, const N: usize>(b: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = b.get(*at..*at + N)?;
    let n = len.iter().fold(0usize, |n, x| n << 8 | usize::from(*x));
    let v = b.get(*at + N..*at + N + n)?;
    *at += N + n;
    Some(v)
}

/// The extensions block of a hello message from `at`: (type, data) pairs; `None` when it
/// does not parse. An absent block is an empty list.
pub(super) fn extensions(b: &[u8], mut at: usize) -> Option<Vec<(u16, &[u8])>> {
    if at == b.len() {
        return Some(Vec::new());
    }
    let mut ext = vec_at::<2>(b, &mut at)?;
    if at != b.len() {
        return None;
    }
    let mut out = Vec::with_capacity(4);
    while !ext.is_empty() {
        let typ = u16::from_be_bytes([*ext.first()?, *ext.get(1)?]);
        let mut at = 2;
        let data = vec_at::<2>(ext, &mut at)?;
        out.push((typ, data));
        ext = &ext[at..];
    }
    Some(out)
}

/// Calls `f(msg_type, fragment)` for each unencrypted (epoch 0) handshake message in a
/// datagram whose fragment starts the message.
fn for_each_hello(datagram: &[u8], mut f: impl FnMut(u8, &[u8])) {
    for range in record::records(datagram) {
        let Some(rec) = range.ok().and_then(|r| datagram.get(r)) else {
            return;
        };
        if rec[0] != CONTENT_HANDSHAKE || rec[3..5] != [0, 0] {
            continue;
        }
        let mut body = &rec[RECORD_HEADER_LEN..];
        while body.len() >= HS_HEADER {
            let (offset, len) = (u24(&body[6..9]), u24(&body[9..12]));
            let Some(frag) = body.get(HS_HEADER..HS_HEADER + len) else {
                return;
            };
            if offset == 0 {
                f(body[0], frag);
            }
            body = &body[HS_HEADER + len..];
        }
    }
}

/// Whether a datagram carries part of a last handshake flight: a ChangeCipherSpec record or
/// an encrypted handshake record (the Finished, the only one in epoch 1). Only the last flight
/// of each side has either: the server's ChangeCipherSpec + Finished, the client's
/// ClientKeyExchange + ChangeCipherSpec + Finished.
pub fn is_final_flight(datagram: &[u8]) -> bool {
    record::records(datagram).any(|r| {
        r.ok().and_then(|r| datagram.get(r)).is_some_and(|rec| {
            rec[0] == CONTENT_CHANGE_CIPHER_SPEC
                || (rec[0] == CONTENT_HANDSHAKE && rec[3..5] != [0, 0])
        })
    })
}

/// The cipher suite a ServerHello in this datagram chose, if the datagram carries one.
pub fn server_hello_suite(datagram: &[u8]) -> Option<u16> {
    let mut found = None;
    for_each_hello(datagram, |t, frag| {
        if t == SERVER_HELLO {
            // server_version(2) random(32) session_id<0..32> cipher_suite(2)
            let sid = frag.get(34).map(|n| usize::from(*n));
            if let Some(cs) = sid.and_then(|sid| frag.get(35 + sid..37 + sid)) {
                found = Some(u16::from_be_bytes([cs[0], cs[1]]));
            }
        }
    });
    found
}
