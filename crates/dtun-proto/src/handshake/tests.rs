use std::net::SocketAddr;
use std::time::Instant;

use super::testing::client_hello;
use super::wire::{CLIENT_KEY_EXCHANGE, HELLO_VERIFY_REQUEST, push_record_header};
use super::*;
use crate::consts::{CONTENT_HANDSHAKE, RECORD_HEADER_LEN};
use crate::record::{self, Suite};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn client_hello_fields() {
    let dg = client_hello([7; 32], b"abc", 1, 5);
    let ch = parse_client_hello(&dg).unwrap();
    assert_eq!((ch.record_seq, ch.message_seq), (5, 1));
    assert_eq!(ch.random, [7; 32]);
    assert_eq!(ch.cookie, b"abc");
    assert!(ch.extended_master_secret && ch.renegotiation_info);
    assert_eq!(ch.message, &dg[RECORD_HEADER_LEN..]);
    assert_eq!(
        ch.choose(&[Suite::Aes128Ccm8, Suite::Aes128Gcm]),
        Some(Suite::Aes128Gcm)
    );
    assert_eq!(ch.choose(&[Suite::Aes128Ccm8]), Some(Suite::Aes128Ccm8));
}

#[test]
fn every_truncation_of_a_client_hello_is_refused_without_panic() {
    let dg = client_hello([1; 32], b"cookie", 1, 0);
    for n in 0..dg.len() {
        assert!(parse_client_hello(&dg[..n]).is_none(), "truncated at {n}");
    }
    // A fragment (offset 0, shorter than the message) is not a whole ClientHello.
    let mut frag = dg.clone();
    frag[RECORD_HEADER_LEN + 11] -= 1;
    assert!(parse_client_hello(&frag).is_none());
    // Epoch 1 and other message types are not ClientHellos.
    let mut e1 = dg.clone();
    e1[4] = 1;
    assert!(parse_client_hello(&e1).is_none());
    let mut other = dg;
    other[RECORD_HEADER_LEN] = CLIENT_KEY_EXCHANGE;
    assert!(parse_client_hello(&other).is_none());
}

#[test]
fn cookies_bind_address_port_and_random_and_expire_after_two_rotations() {
    let t0 = Instant::now();
    let mut c = Cookies::new(t0);
    let a = addr("192.0.2.1:4000");
    let k = c.make(a, &[1; 32]);
    assert!(c.check(a, &[1; 32], &k));
    assert!(!c.check(addr("192.0.2.2:4000"), &[1; 32], &k));
    assert!(!c.check(addr("192.0.2.1:4001"), &[1; 32], &k));
    assert!(!c.check(a, &[2; 32], &k));
    assert!(!c.check(a, &[1; 32], &k[..19]));
    // IPv4 and its IPv4-mapped IPv6 form are one address (a dual-stack socket reports the latter).
    assert!(c.check(addr("[::ffff:192.0.2.1]:4000"), &[1; 32], &k));
    c.rotate_if_due(t0 + COOKIE_ROTATION);
    assert!(c.check(a, &[1; 32], &k), "the previous secret still counts");
    c.rotate_if_due(t0 + 2 * COOKIE_ROTATION);
    assert!(!c.check(a, &[1; 32], &k), "two rotations later it does not");
}

#[test]
fn hello_verify_request_echoes_the_record_sequence_and_carries_the_cookie() {
    let dg = client_hello([3; 32], b"", 0, 0x0000_0102_0304);
    let ch = parse_client_hello(&dg).unwrap();
    let mut hvr = [0u8; HVR_LEN];
    hello_verify_request(&ch, &[9; COOKIE_LEN], &mut hvr);
    assert_eq!(&hvr[5..11], &[0, 0, 1, 2, 3, 4]);
    assert_eq!(hvr[RECORD_HEADER_LEN], HELLO_VERIFY_REQUEST);
    assert_eq!(&hvr[HVR_LEN - COOKIE_LEN..], &[9; COOKIE_LEN]);
    assert_eq!(record::records(&hvr).count(), 1);
}

#[test]
fn start_requires_a_common_suite_and_extended_master_secret() {
    let now = Instant::now();
    let dg = client_hello([3; 32], b"c", 1, 1);
    let ch = parse_client_hello(&dg).unwrap();
    assert!(ServerHandshake::start(&ch, &[Suite::Aes128Gcm], b"hint", now).is_ok());
    let mut no_ems = dg.clone();
    let at = no_ems.len() - 9;
    no_ems[at..at + 2].copy_from_slice(&[0x00, 0x18]); // another extension number
    let ch = parse_client_hello(&no_ems).unwrap();
    assert!(!ch.extended_master_secret);
    assert_eq!(
        ServerHandshake::start(&ch, &[Suite::Aes128Gcm], b"", now).err(),
        Some(ALERT_HANDSHAKE_FAILURE)
    );
}

#[test]
fn flight_resends_use_fresh_record_sequence_numbers() {
    let dg = client_hello([3; 32], b"c", 1, 10);
    let ch = parse_client_hello(&dg).unwrap();
    let mut hs = ServerHandshake::start(&ch, &[Suite::Aes128Gcm], b"dtun", Instant::now()).unwrap();
    let seqs = |f: &[u8]| -> Vec<u64> {
        record::records(f)
            .map(|r| {
                let r = &f[r.unwrap()];
                u64::from_be_bytes([0, 0, r[5], r[6], r[7], r[8], r[9], r[10]])
            })
            .collect()
    };
    let (a, b) = (hs.flight(), hs.flight());
    assert_eq!(seqs(&a), vec![11, 12, 13]);
    assert_eq!(seqs(&b), vec![14, 15, 16]);
    let bodies = |f: &[u8]| -> Vec<Vec<u8>> {
        record::records(f)
            .map(|r| f[r.unwrap()][RECORD_HEADER_LEN..].to_vec())
            .collect()
    };
    assert_eq!(bodies(&a), bodies(&b), "the same messages each time");
    // The same ClientHello again asks for a resend; another random does not.
    assert!(matches!(hs.datagram(&dg, |_| vec![]), Step::Resend));
    let other = client_hello([4; 32], b"c", 1, 11);
    assert!(matches!(hs.datagram(&other, |_| vec![]), Step::Wait));
}

#[test]
fn epoch_one_records_before_a_key_exchange_cost_nothing() {
    let dg = client_hello([3; 32], b"c", 1, 1);
    let ch = parse_client_hello(&dg).unwrap();
    let mut hs = ServerHandshake::start(&ch, &[Suite::Aes128Gcm], b"", Instant::now()).unwrap();
    let mut rec = Vec::new();
    push_record_header(&mut rec, CONTENT_HANDSHAKE, 1, 40);
    rec[3..5].copy_from_slice(&[0, 1]);
    rec.extend_from_slice(&[0u8; 40]);
    let mut called = false;
    assert!(matches!(
        hs.datagram(&rec, |_| {
            called = true;
            vec![]
        }),
        Step::Wait
    ));
    assert!(!called, "no key is looked up before the ClientKeyExchange");
}

#[test]
fn zero_length_fragments_are_not_kept() {
    let dg = client_hello([3; 32], b"c", 1, 1);
    let ch = parse_client_hello(&dg).unwrap();
    let mut hs = ServerHandshake::start(&ch, &[Suite::Aes128Gcm], b"", Instant::now()).unwrap();
    // 600 zero-length fragments of a ClientKeyExchange in one record: nothing to keep.
    let mut body = Vec::new();
    for i in 0..600u32 {
        body.extend_from_slice(&[CLIENT_KEY_EXCHANGE, 0, 1, 0, 0, 2]);
        body.extend_from_slice(&(i.to_be_bytes()[1..]));
        body.extend_from_slice(&[0, 0, 0]);
    }
    let mut rec = Vec::new();
    push_record_header(&mut rec, CONTENT_HANDSHAKE, 2, body.len());
    rec.extend_from_slice(&body);
    assert!(matches!(hs.datagram(&rec, |_| vec![]), Step::Wait));
    assert!(hs.identity().is_none());
}
