//! The key schedule against known answers computed apart (a few lines of Python's hmac and
//! hashlib, docs/PROTOCOL.md "Rekeying"), the hybrid exchange end to end and against
//! tampering, and the fragments in any order.

use ring::rand::SystemRandom;

use super::hybrid::{InitShare, ReplyShare};
use super::message::{
    Fragment, INIT_LEN, Kind, MAX_FRAGMENT, REPLY_LEN, Reassembly, fragments, init_message,
    parse_init, parse_reply, reply_message,
};
use super::*;
use crate::proto::Control;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn the_schedule_matches_known_answers() {
    let master: [u8; 48] = std::array::from_fn(|i| i as u8);
    let cr: [u8; 32] = std::array::from_fn(|i| 0x10 + i as u8);
    let sr: [u8; 32] = std::array::from_fn(|i| 0x20 + i as u8);
    let s1 = EpochSecret::first(&master, &cr, &sr);
    assert_eq!(s1.epoch(), 1);
    assert_eq!(
        s1.bytes()[..],
        unhex("212d6fa48e34a9e1b75c1e1226f6693595bf74dfbc3ac492aa8919d651a30c78")[..]
    );
    let shared = Shared {
        x25519: [0x41; 32],
        mlkem: [0x42; 32],
    };
    let s2 = s1.next(&shared, b"init", b"reply").unwrap();
    assert_eq!(s2.epoch(), 2);
    assert_eq!(
        s2.bytes()[..],
        unhex("e694d5dd58934bdbbfd05c1f71e98a1a44f95bba67ab1b401f93c1c0443af616")[..]
    );
    let k = s2.keys();
    assert_eq!(
        k.client_key[..],
        unhex("b91eb5f9c311739b4775994b127e0a89")[..]
    );
    assert_eq!(
        k.server_key[..],
        unhex("fb91508aa35f695386272aa109c1d64b")[..]
    );
    assert_eq!(k.client_iv[..], unhex("93c200c5")[..]);
    assert_eq!(k.server_iv[..], unhex("234734e8")[..]);
    // Each input counts: either shared secret, the transcript, the chain.
    let other = |x: u8, m: u8, init: &[u8]| {
        let sh = Shared {
            x25519: [x; 32],
            mlkem: [m; 32],
        };
        s1.next(&sh, init, b"reply").unwrap()
    };
    assert_ne!(other(0x40, 0x42, b"init"), s2, "the X25519 secret");
    assert_ne!(other(0x41, 0x43, b"init"), s2, "the ML-KEM secret");
    assert_ne!(other(0x41, 0x42, b"inIt"), s2, "the transcript");
    let s1b = EpochSecret::from_bytes(1, [0; 32]);
    assert_ne!(
        s1b.next(&shared, b"init", b"reply").unwrap(),
        s2,
        "the chain"
    );
    // The epoch field never wraps.
    let last = EpochSecret::from_bytes(u16::MAX, [7; 32]);
    assert!(last.next(&shared, b"init", b"reply").is_none());
}

#[test]
fn both_sides_of_an_exchange_reach_the_same_next_epoch() {
    let rng = SystemRandom::new();
    let s1 = EpochSecret::from_bytes(1, [9; 32]);
    let initiator = Initiator::new(&rng).unwrap();
    let init = init_message(2, initiator.share());
    assert_eq!(init.len(), INIT_LEN);
    let (epoch, share) = parse_init(&init).unwrap();
    assert_eq!(epoch, 2);
    let (reply_share, theirs) = respond(&share, &rng).unwrap();
    let reply = reply_message(2, &reply_share);
    assert_eq!(reply.len(), REPLY_LEN);
    let (_, reply_share) = parse_reply(&reply).unwrap();
    let ours = initiator.finish(&reply_share).unwrap();
    assert_eq!(ours.x25519, theirs.x25519);
    assert_eq!(ours.mlkem, theirs.mlkem);
    let a = s1.next(&ours, &init, &reply).unwrap();
    let b = s1.next(&theirs, &init, &reply).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.keys(), b.keys());
    // Fresh randomness each time: another exchange, another epoch secret.
    let i2 = Initiator::new(&rng).unwrap();
    let (r2, _) = respond(i2.share(), &rng).unwrap();
    let other = i2.finish(&r2).unwrap();
    assert_ne!(other.x25519, ours.x25519);
    assert_ne!(other.mlkem, ours.mlkem);
}

#[test]
fn a_tampered_exchange_gives_other_secrets_or_fails() {
    let rng = SystemRandom::new();
    // A flipped ciphertext bit: ML-KEM's implicit rejection, another secret, no error.
    let initiator = Initiator::new(&rng).unwrap();
    let (mut reply, theirs) = respond(initiator.share(), &rng).unwrap();
    reply.ct[100] ^= 1;
    let ours = initiator.finish(&reply).unwrap();
    assert_eq!(ours.x25519, theirs.x25519);
    assert_ne!(ours.mlkem, theirs.mlkem);
    // A low-order X25519 point (all zeros): refused, both ways.
    let initiator = Initiator::new(&rng).unwrap();
    let (mut reply, _) = respond(initiator.share(), &rng).unwrap();
    reply.x25519 = [0; 32];
    assert!(matches!(initiator.finish(&reply), Err(RekeyError::X25519)));
    let initiator = Initiator::new(&rng).unwrap();
    let mut bad = initiator.share().clone();
    bad.x25519 = [0; 32];
    assert!(matches!(respond(&bad, &rng), Err(RekeyError::X25519)));
    // An encapsulation key whose coefficients are not reduced mod q (FIPS 203 §7.2).
    let mut bad: InitShare = initiator.share().clone();
    bad.ek[0] = 0xff;
    bad.ek[1] |= 0x0f;
    assert!(matches!(
        respond(&bad, &rng),
        Err(RekeyError::EncapsulationKey)
    ));
    let _: Option<ReplyShare> = None;
}

#[test]
fn fragments_fit_a_small_path_and_come_together_in_any_order() {
    let message: Vec<u8> = (0..INIT_LEN).map(|i| (i * 7) as u8).collect();
    let frags = fragments(Kind::Init, 5, &message, MAX_FRAGMENT);
    assert_eq!(frags.len(), 3);
    // Record: 13 header + 8 explicit nonce + 16 tag; IPv4 + UDP 28.
    assert!(frags.iter().all(|f| f.len() + 13 + 8 + 16 + 28 <= 576));
    let parsed: Vec<Fragment> = frags
        .iter()
        .map(|f| match Control::parse(f) {
            Ok(Control::Rekey(fr)) => fr,
            other => panic!("{other:?}"),
        })
        .collect();
    for order in [[0, 1, 2], [2, 0, 1], [1, 1, 2]] {
        let mut r = Reassembly::new(Kind::Init, 5);
        let got: Vec<Option<Vec<u8>>> = order.iter().map(|&i| r.add(&parsed[i])).collect();
        if order == [1, 1, 2] {
            assert!(got.iter().all(Option::is_none), "one is missing");
            assert_eq!(r.add(&parsed[0]).as_deref(), Some(&message[..]));
        } else {
            assert_eq!(got[2].as_deref(), Some(&message[..]));
        }
    }
    // Another epoch's fragment starts over.
    let mut r = Reassembly::new(Kind::Init, 5);
    assert!(r.add(&parsed[0]).is_none());
    let newer = fragments(Kind::Init, 6, &message, MAX_FRAGMENT);
    for f in &newer[1..] {
        let Ok(Control::Rekey(f)) = Control::parse(f) else {
            panic!()
        };
        assert!(r.add(&f).is_none());
    }
    assert!(r.add(&parsed[0]).is_none(), "epoch 5's first fragment");
    // Tiny fragments work too.
    let reply: Vec<u8> = vec![3; REPLY_LEN];
    let tiny = fragments(Kind::Reply, 2, &reply, 100);
    assert_eq!(tiny.len(), REPLY_LEN.div_ceil(100));
    let mut r = Reassembly::new(Kind::Reply, 2);
    let mut whole = None;
    for f in tiny.iter().rev() {
        let Ok(Control::Rekey(f)) = Control::parse(f) else {
            panic!()
        };
        whole = r.add(&f).or(whole);
    }
    assert_eq!(whole, Some(reply));
}

#[test]
fn malformed_fragments_are_errors() {
    let good = fragments(Kind::Reply, 2, &[1; REPLY_LEN], MAX_FRAGMENT);
    assert!(Control::parse(&good[2]).is_ok());
    let mut cases: Vec<Vec<u8>> = vec![
        vec![0, 8],
        vec![0, 8, 1, 0, 2, 0, 0, 0],             // no data
        vec![0, 8, 3, 0, 2, 0x04, 0x62, 0, 0, 1], // unknown kind
        vec![0, 8, 2, 0, 2, 0x04, 0x61, 0, 0, 1], // total not a Reply's
    ];
    let mut past_end = good[2].clone();
    past_end.push(0); // runs one byte past the message
    cases.push(past_end);
    let mut too_long = vec![0, 8, 1, 0, 2, 0x04, 0xc2, 0, 0];
    too_long.extend(std::iter::repeat_n(0, MAX_FRAGMENT + 1));
    cases.push(too_long);
    for c in cases {
        assert!(Control::parse(&c).is_err(), "{c:?}");
    }
    assert!(parse_init(&[0; INIT_LEN - 1]).is_err());
    assert!(parse_reply(&[0; REPLY_LEN + 1]).is_err());
}
