//! The outside review of the client handshake: what a hostile or spoofing server can make it
//! do with handshake messages that parse and come in order.

use std::time::Instant;

use ring::rand::SystemRandom;

use super::*;
use crate::consts::DTLS12_VERSION;
use crate::handshake::wire::push_message;

/// One epoch-0 handshake record holding `msgs` (already framed), record sequence `seq`.
fn record(seq: u64, msgs: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut seq = seq;
    push_handshake_record(&mut out, &mut seq, msgs);
    out
}

/// A ServerHello choosing AES-128-GCM with extended master secret, message_seq `msg_seq`.
fn server_hello(msg_seq: u16) -> Vec<u8> {
    let mut b = DTLS12_VERSION.to_vec();
    b.extend_from_slice(&[7; 32]);
    b.push(0);
    b.extend_from_slice(&Suite::Aes128Gcm.id().to_be_bytes());
    b.push(0);
    b.extend_from_slice(&[0, 4, 0, 23, 0, 0]);
    let mut m = Vec::new();
    push_message(&mut m, SERVER_HELLO, msg_seq, &b);
    m
}

/// A ServerKeyExchange with a `len`-byte identity hint.
fn server_key_exchange(msg_seq: u16, len: usize) -> Vec<u8> {
    let mut b = (len as u16).to_be_bytes().to_vec();
    b.resize(2 + len, b'h');
    let mut m = Vec::new();
    push_message(&mut m, SERVER_KEY_EXCHANGE, msg_seq, &b);
    m
}

fn client() -> ClientHandshake {
    ClientHandshake::new(
        b"laptop",
        b"key",
        &[Suite::Aes128Gcm, Suite::Aes128Ccm8],
        &SystemRandom::new(),
        Instant::now(),
    )
    .unwrap()
    .0
}

/// Finding 1: after a ServerHello, every further ServerKeyExchange with the next
/// message_seq is taken and appended to the transcript (message_seq even wraps around), so
/// a hostile server, or a spoofer that got its ServerHello in first, grows the client's
/// memory by what it sends for the whole HANDSHAKE_TIMEOUT. A flight has one
/// ServerKeyExchange: the transcript must stay within one flight's size.
#[test]
fn repeated_server_key_exchanges_do_not_grow_the_transcript() {
    let now = Instant::now();
    let mut hs = client();
    assert!(matches!(
        hs.datagram(now, &record(0, &server_hello(0))),
        Ok(Progress::Wait)
    ));
    for i in 1..=300u16 {
        let _ = hs.datagram(now, &record(u64::from(i), &server_key_exchange(i, 16_000)));
    }
    assert!(
        hs.transcript.len() < 70_000,
        "300 ServerKeyExchanges of 16 kB grew the transcript to {} bytes",
        hs.transcript.len()
    );
}

/// A HelloVerifyRequest with a 1-byte `cookie`.
fn hello_verify_request(cookie: u8) -> Vec<u8> {
    let mut m = Vec::new();
    push_message(&mut m, HELLO_VERIFY_REQUEST, 0, &[0xfe, 0xff, 1, cookie]);
    m
}

/// Finding 2: every HelloVerifyRequest whose cookie differs from the last one gets a new
/// ClientHello at once, with no limit (the resend for a repeated flight waits
/// FINAL_FLIGHT_RESEND): an off-path spoofer that guesses our port and alternates two
/// cookies turns each 41-byte datagram into one ClientHello of about 100 bytes to the
/// server, and keeps our cookie wrong. At most one answer per FINAL_FLIGHT_RESEND.
#[test]
fn a_flood_of_new_cookies_is_answered_at_a_bounded_rate() {
    let now = Instant::now();
    let mut hs = client();
    let mut answered = 0;
    for i in 0..100u64 {
        let dg = record(i, &hello_verify_request(i as u8 % 2));
        if let Ok(Progress::Send(_)) = hs.datagram(now, &dg) {
            answered += 1;
        }
    }
    assert!(
        answered <= 2,
        "100 HelloVerifyRequests in one instant got {answered} ClientHellos"
    );
}

/// Finding 3: a plaintext alert of warning level (here no_renegotiation, 1/100) ends the
/// handshake as if the server had refused us, and the user is told to check -key. Only a
/// fatal alert (level 2) ends a TLS handshake (RFC 5246 §7.2.2); an unauthenticated warning
/// from anyone who guesses our port should be a counted drop.
#[test]
fn a_plaintext_warning_alert_does_not_end_the_handshake() {
    let now = Instant::now();
    let mut hs = client();
    let mut warning = Vec::new();
    crate::handshake::wire::push_record_header(&mut warning, crate::consts::CONTENT_ALERT, 0, 2);
    warning.extend_from_slice(&[1, 100]);
    let r = hs.datagram(now, &warning);
    assert!(
        matches!(r, Ok(Progress::Wait)),
        "a warning alert ended the handshake: {:?}",
        r.err().map(|f| f.error.to_string())
    );
    assert!(hs.next_timeout().is_some(), "the handshake is still on");
}

/// Finding 2 (the handshake it breaks): one spoofed HelloVerifyRequest that lands between
/// the server's real one and its ServerHello switches our cookie, so the transcript we hash
/// starts from a ClientHello the server never answered: the server's check of our Finished
/// fails, it sends decrypt_error, and the user is told to check -key. The real exchange
/// (HelloVerifyRequest, ClientHello with its cookie, ServerHello) must still complete.
#[test]
fn one_spoofed_cookie_does_not_break_the_handshake() {
    use crate::admission::{Admission, Outcome};
    let t0 = Instant::now();
    let from: std::net::SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let suites = [Suite::Aes128Gcm, Suite::Aes128Ccm8];
    let mut adm = Admission::new(suites.to_vec(), b"dtun;dtun-ctl=1".to_vec(), t0);
    let key = |_: &[u8]| b"key".to_vec();
    let (mut hs, ch1) =
        ClientHandshake::new(b"laptop", b"key", &suites, &SystemRandom::new(), t0).unwrap();
    let Outcome::Reply = adm.datagram(&ch1, from, t0, key) else {
        panic!("no HelloVerifyRequest");
    };
    let hvr = adm.reply.clone();
    let Ok(Progress::Send(ch2)) = hs.datagram(t0, &hvr) else {
        panic!("no ClientHello with the cookie");
    };
    let Outcome::Reply = adm.datagram(&ch2, from, t0, key) else {
        panic!("no server flight");
    };
    let flight = adm.reply.clone();
    // The spoofer's HelloVerifyRequest (what we answer it with is lost).
    let _ = hs.datagram(t0, &record(9, &hello_verify_request(0x42)));
    let last = match hs.datagram(t0, &flight) {
        Ok(Progress::Send(d)) => d,
        other => panic!("the server's flight got no last flight: {:?}", other.err()),
    };
    match adm.datagram(&last, from, t0, key) {
        Outcome::Completed(c) => match hs.datagram(t0, &c.final_flight) {
            Ok(Progress::Established(_)) => {}
            other => panic!("the server's Finished did not verify: {:?}", other.err()),
        },
        Outcome::Failed { why, .. } => {
            panic!("the server refused our last flight after one spoofed cookie: {why}")
        }
        _ => panic!("the server did not complete"),
    }
}
