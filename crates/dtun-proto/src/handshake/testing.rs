//! Handshake messages as peers send them, for tests of this crate and of the crates above it
//! (compiled only with `cfg(test)` or the feature `test-util`).

use super::wire::{CLIENT_HELLO, push_message, push_record_header};
use crate::consts::{CONTENT_HANDSHAKE, DTLS12_VERSION};

/// A DTLS 1.2 ClientHello datagram as pion and OpenSSL send it: one record, one message.
pub fn client_hello(random: [u8; 32], cookie: &[u8], msg_seq: u16, rec_seq: u64) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&DTLS12_VERSION);
    body.extend_from_slice(&random);
    body.push(0); // session id
    body.push(cookie.len() as u8);
    body.extend_from_slice(cookie);
    body.extend_from_slice(&[0, 4, 0x00, 0xa8, 0xc0, 0xa8]); // GCM, CCM_8
    body.extend_from_slice(&[1, 0]); // null compression
    let ext: &[u8] = &[0x00, 0x17, 0, 0, 0xff, 0x01, 0, 1, 0];
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(ext);
    let mut msg = Vec::new();
    push_message(&mut msg, CLIENT_HELLO, msg_seq, &body);
    let mut dg = Vec::new();
    push_record_header(&mut dg, CONTENT_HANDSHAKE, rec_seq, msg.len());
    dg.extend_from_slice(&msg);
    dg
}
