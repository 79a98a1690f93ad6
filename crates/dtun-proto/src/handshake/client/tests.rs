//! Our client against our server (admission included: the HelloVerifyRequest, then the
//! handshake), in memory over a simulated link with a fake clock: datagrams lost, duplicated,
//! reordered; a wrong key; a server alert; garbage, truncated and corrupted datagrams at every
//! step.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;

use super::*;
use crate::admission::{Admission, Outcome};
use crate::consts::DTLS12_VERSION;
use crate::handshake::wire::{ALERT_HANDSHAKE_FAILURE, ALERT_ILLEGAL_PARAMETER};
use crate::handshake::{Completed, is_final_flight};

const HINT: &[u8] = b"dtun;dtun-ctl=1";
const LATENCY: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    ToServer,
    ToClient,
}

/// What happened on both sides.
struct Run {
    client: Result<Box<Established>, Failure>,
    server: Option<Box<Completed>>,
    server_failed: Option<String>,
    elapsed: Duration,
}

/// The link's verdict on the n-th datagram of a direction: one delay per copy delivered
/// (none: lost).
type Fate<'a> = &'a mut dyn FnMut(Dir, usize) -> Vec<Duration>;
/// Datagrams slipped to the client before the n-th real one reaches it.
type Tamper<'a> = &'a mut dyn FnMut(usize, &[u8]) -> Vec<Vec<u8>>;

fn run(client_key: &[u8], server_key: &[u8], suites: &[Suite], fate: Fate, tamper: Tamper) -> Run {
    let t0 = Instant::now();
    let mut now = t0;
    let from: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let mut adm = Admission::new(
        vec![Suite::Aes128Gcm, Suite::Aes128Ccm8],
        HINT.to_vec(),
        now,
    );
    let (mut client, first) =
        ClientHandshake::new(b"laptop", client_key, suites, &SystemRandom::new(), now).unwrap();
    let mut queue: Vec<(Instant, Dir, Vec<u8>)> = Vec::new();
    let mut counts = [0usize; 2];
    let mut send =
        |queue: &mut Vec<(Instant, Dir, Vec<u8>)>, now: Instant, dir: Dir, dg: Vec<u8>| {
            let n = &mut counts[dir as usize];
            for delay in fate(dir, *n) {
                queue.push((now + LATENCY + delay, dir, dg.clone()));
            }
            *n += 1;
        };
    send(&mut queue, now, Dir::ToServer, first);
    let (mut server, mut server_failed, mut resent_at) = (None, None, None::<Instant>);
    let mut to_client = 0;
    let client_result = loop {
        // The next event: the earliest arrival, or the client's timer.
        queue.sort_by_key(|(t, _, _)| *t);
        let timer = client
            .next_timeout()
            .expect("a handshake in progress has a timer");
        if queue.first().is_none_or(|(t, _, _)| *t > timer) {
            now = timer;
            match client.timeout(now) {
                Ok(Some(dg)) => send(&mut queue, now, Dir::ToServer, dg),
                Ok(None) => {}
                Err(f) => break Err(f),
            }
            continue;
        }
        let (at, dir, dg) = queue.remove(0);
        now = at;
        match dir {
            Dir::ToServer => {
                let key = |_: &[u8]| server_key.to_vec();
                match adm.datagram(&dg, from, now, key) {
                    Outcome::Reply => send(&mut queue, now, Dir::ToClient, adm.reply.clone()),
                    Outcome::Completed(c) => {
                        send(&mut queue, now, Dir::ToClient, c.final_flight.clone());
                        server = Some(c);
                    }
                    Outcome::Failed { why, alert, .. } => {
                        if alert {
                            send(&mut queue, now, Dir::ToClient, adm.reply.clone());
                        }
                        server_failed = Some(why);
                    }
                    // What the server's demultiplexer does for a session whose client repeats
                    // its last flight (server::demux).
                    Outcome::NotOurs => {
                        if let Some(c) = &server
                            && is_final_flight(&dg)
                            && resent_at.is_none_or(|t| now - t >= FINAL_FLIGHT_RESEND)
                        {
                            resent_at = Some(now);
                            send(&mut queue, now, Dir::ToClient, c.final_flight.clone());
                        }
                    }
                    Outcome::Quiet | Outcome::Refused => {}
                }
            }
            Dir::ToClient => {
                let mut ended = None;
                for bad in tamper(to_client, &dg) {
                    match client.datagram(now, &bad) {
                        Ok(Progress::Send(d)) => send(&mut queue, now, Dir::ToServer, d),
                        Ok(Progress::Wait) => {}
                        Ok(Progress::Established(e)) => {
                            ended = Some(Ok(e));
                            break;
                        }
                        Err(f) => {
                            ended = Some(Err(f));
                            break;
                        }
                    }
                }
                to_client += 1;
                if let Some(r) = ended {
                    break r;
                }
                match client.datagram(now, &dg) {
                    Ok(Progress::Send(d)) => send(&mut queue, now, Dir::ToServer, d),
                    Ok(Progress::Wait) => {}
                    Ok(Progress::Established(e)) => break Ok(e),
                    Err(f) => {
                        if let Some(a) = &f.alert {
                            send(&mut queue, now, Dir::ToServer, a.clone());
                        }
                        break Err(f);
                    }
                }
            }
        }
    };
    Run {
        client: client_result,
        server,
        server_failed,
        elapsed: now - t0,
    }
}

fn clean(_: Dir, _: usize) -> Vec<Duration> {
    vec![Duration::ZERO]
}

fn untouched(_: usize, _: &[u8]) -> Vec<Vec<u8>> {
    vec![]
}

/// Both sides done with the same suite and keys, the hint and identity across.
fn assert_agree(r: &Run, suite: Suite) {
    let est = r
        .client
        .as_ref()
        .unwrap_or_else(|f| panic!("client failed: {f:?}"));
    let c = r.server.as_ref().expect("the server completed");
    assert_eq!((est.suite, c.suite), (suite, suite));
    assert_eq!(est.keys, c.keys, "both sides derived the same keys");
    assert_eq!(est.epoch1, c.epoch1, "and the same first epoch secret");
    assert_eq!(est.epoch1.epoch(), 1);
    assert_eq!(est.peer_identity, HINT);
    assert_eq!(c.identity, b"laptop");
}

#[test]
fn completes_against_our_server_in_the_order_of_our_suites() {
    for suites in [
        vec![Suite::Aes128Gcm, Suite::Aes128Ccm8],
        vec![Suite::Aes128Ccm8, Suite::Aes128Gcm],
        vec![Suite::Aes128Ccm8],
    ] {
        let r = run(b"k", b"k", &suites, &mut clean, &mut untouched);
        assert_agree(&r, suites[0]);
        // Three round trips: ClientHello, ClientHello with the cookie, the last flights.
        assert_eq!(r.elapsed, 6 * LATENCY, "{suites:?}");
    }
}

#[test]
fn each_lost_datagram_costs_one_flight_interval() {
    // Datagrams in order: to the server 0 ClientHello, 1 ClientHello with cookie, 2 our last
    // flight; to the client 0 HelloVerifyRequest, 1 the server's flight, 2 its last flight.
    for (dir, lost) in [
        (Dir::ToServer, 0),
        (Dir::ToServer, 1),
        (Dir::ToServer, 2),
        (Dir::ToClient, 0),
        (Dir::ToClient, 1),
        (Dir::ToClient, 2),
    ] {
        let mut fate = |d: Dir, n: usize| {
            if (d, n) == (dir, lost) {
                vec![]
            } else {
                vec![Duration::ZERO]
            }
        };
        let r = run(b"k", b"k", &[Suite::Aes128Gcm], &mut fate, &mut untouched);
        assert_agree(&r, Suite::Aes128Gcm);
        assert_eq!(
            r.elapsed,
            FLIGHT_INTERVAL + 6 * LATENCY,
            "{dir:?} {lost} lost"
        );
    }
}

#[test]
fn a_lossy_link_still_completes_before_the_timeout() {
    // Every other datagram each way lost, for the first eight.
    let mut fate = |_: Dir, n: usize| {
        if n < 8 && n.is_multiple_of(2) {
            vec![]
        } else {
            vec![Duration::ZERO]
        }
    };
    let r = run(b"k", b"k", &[Suite::Aes128Ccm8], &mut fate, &mut untouched);
    assert_agree(&r, Suite::Aes128Ccm8);
    assert!(r.elapsed < HANDSHAKE_TIMEOUT);
}

#[test]
fn duplicated_and_reordered_datagrams_complete_without_waiting() {
    // Every datagram twice, the copy 5 ms later.
    let mut dup = |_: Dir, _: usize| vec![Duration::ZERO, Duration::from_millis(5)];
    let r = run(b"k", b"k", &[Suite::Aes128Gcm], &mut dup, &mut untouched);
    assert_agree(&r, Suite::Aes128Gcm);
    assert_eq!(r.elapsed, 6 * LATENCY);
    // Copies arriving a flight later (after the next flight of the other side went out).
    let mut late = |_: Dir, _: usize| vec![Duration::ZERO, 3 * LATENCY];
    let r = run(b"k", b"k", &[Suite::Aes128Gcm], &mut late, &mut untouched);
    assert_agree(&r, Suite::Aes128Gcm);
    assert!(r.elapsed < FLIGHT_INTERVAL, "{:?}", r.elapsed);
}

#[test]
fn the_server_repeating_its_flight_gets_our_last_one_again_at_once() {
    let rng = SystemRandom::new();
    let t0 = Instant::now();
    let from: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let mut adm = Admission::new(vec![Suite::Aes128Gcm], HINT.to_vec(), t0);
    let (mut c, ch1) =
        ClientHandshake::new(b"laptop", b"k", &[Suite::Aes128Gcm], &rng, t0).unwrap();
    assert!(matches!(
        adm.datagram(&ch1, from, t0, |_| vec![]),
        Outcome::Reply
    ));
    let hvr = adm.reply.clone();
    let Ok(Progress::Send(ch2)) = c.datagram(t0, &hvr) else {
        panic!("a HelloVerifyRequest asks for the ClientHello again")
    };
    assert!(matches!(
        adm.datagram(&ch2, from, t0, |_| vec![]),
        Outcome::Reply
    ));
    let flight = adm.reply.clone();
    let Ok(Progress::Send(last)) = c.datagram(t0, &flight) else {
        panic!("the server's flight asks for our last one")
    };
    // The same flight again (ours was lost): our last flight again, with fresh record
    // sequence numbers, but not more often than FINAL_FLIGHT_RESEND.
    let soon = t0 + FINAL_FLIGHT_RESEND / 2;
    assert!(matches!(c.datagram(soon, &flight), Ok(Progress::Wait)));
    let later = t0 + FINAL_FLIGHT_RESEND;
    let Ok(Progress::Send(again)) = c.datagram(later, &flight) else {
        panic!("a repeated server flight gets ours again")
    };
    assert_eq!(again.len(), last.len());
    assert_ne!(
        again, last,
        "fresh record sequence numbers, a fresh Finished nonce"
    );
    // The HelloVerifyRequest again, before the ServerHello: the ClientHello again.
    let (mut c2, _) = ClientHandshake::new(b"laptop", b"k", &[Suite::Aes128Gcm], &rng, t0).unwrap();
    assert!(matches!(c2.datagram(t0, &hvr), Ok(Progress::Send(_))));
    assert!(matches!(c2.datagram(later, &hvr), Ok(Progress::Send(_))));
}

#[test]
fn a_wrong_key_fails_at_the_finished_on_both_sides() {
    let r = run(
        b"client key",
        b"server key",
        &[Suite::Aes128Gcm],
        &mut clean,
        &mut untouched,
    );
    let why = r.server_failed.expect("the server refused the Finished");
    assert!(why.contains("did not decrypt"), "{why}");
    let f = r.client.err().expect("the client failed");
    assert!(
        matches!(f.error, HandshakeError::Alert(2, ALERT_DECRYPT_ERROR)),
        "{:?}",
        f.error
    );
    assert_eq!(
        f.peer_identity, HINT,
        "the hint is kept for the error message"
    );
    assert!(
        f.error
            .to_string()
            .contains("fatal alert 51 (decrypt_error)")
    );
}

#[test]
fn a_server_alert_ends_the_handshake_with_its_name() {
    let (mut c, _) = ClientHandshake::new(
        b"laptop",
        b"k",
        &[Suite::Aes128Gcm],
        &SystemRandom::new(),
        Instant::now(),
    )
    .unwrap();
    let f = c
        .datagram(
            Instant::now(),
            &super::super::wire::alert(ALERT_HANDSHAKE_FAILURE, 0),
        )
        .err()
        .expect("an alert ends it");
    assert_eq!(
        f.error.to_string(),
        "the server refused it with a fatal alert 40 (handshake_failure)"
    );
    assert!(c.next_timeout().is_none(), "nothing more to wait for");
}

#[test]
fn a_server_hello_we_cannot_accept_ends_it_with_an_alert() {
    let t0 = Instant::now();
    let from: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    // The server chooses CCM_8, which we did not offer (its hello names what we offered,
    // so rewrite the suite in the flight).
    let mut adm = Admission::new(vec![Suite::Aes128Gcm], HINT.to_vec(), t0);
    let rng = SystemRandom::new();
    let (mut c, ch1) =
        ClientHandshake::new(b"laptop", b"k", &[Suite::Aes128Gcm], &rng, t0).unwrap();
    adm.datagram(&ch1, from, t0, |_| vec![]);
    let Ok(Progress::Send(ch2)) = c.datagram(t0, &adm.reply.clone()) else {
        panic!()
    };
    adm.datagram(&ch2, from, t0, |_| vec![]);
    let mut flight = adm.reply.clone();
    let at = RECORD_HEADER_LEN + HS_HEADER + 2 + 32 + 1;
    assert_eq!(flight[at..at + 2], Suite::Aes128Gcm.id().to_be_bytes());
    flight[at..at + 2].copy_from_slice(&Suite::Aes128Ccm8.id().to_be_bytes());
    let f = c.datagram(t0, &flight).err().expect("refused");
    assert!(f.error.to_string().contains("did not offer"), "{}", f.error);
    let alert = f.alert.expect("an alert for the server");
    assert_eq!(alert[RECORD_HEADER_LEN..], [2, ALERT_ILLEGAL_PARAMETER]);
}

/// Garbage: random bytes of several lengths, every truncation of the real datagram, records
/// whose length runs past the end, a message whose length does.
fn garbage(dg: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..dg.len()).map(|n| dg[..n].to_vec()).collect();
    let rng = SystemRandom::new();
    for len in [1, 13, 14, 25, 64, 200, 1400] {
        let mut r = vec![0u8; len];
        rng.fill(&mut r).unwrap();
        out.push(r.clone());
        // Shaped like a record of ours: handshake, DTLS 1.2, random epoch and sequence.
        if len > RECORD_HEADER_LEN {
            r[0] = CONTENT_HANDSHAKE;
            r[1..3].copy_from_slice(&DTLS12_VERSION);
            r[11..13].copy_from_slice(&((len - RECORD_HEADER_LEN) as u16).to_be_bytes());
            out.push(r);
        }
    }
    let mut long = dg.to_vec();
    long[11..13].copy_from_slice(&u16::MAX.to_be_bytes());
    out.push(long);
    if dg.len() > RECORD_HEADER_LEN + HS_HEADER {
        let mut msg = dg.to_vec();
        msg[RECORD_HEADER_LEN + 1..RECORD_HEADER_LEN + 4].copy_from_slice(&[0xff, 0xff, 0xff]);
        out.push(msg);
    }
    out
}

#[test]
fn garbage_and_truncated_datagrams_at_every_step_change_nothing() {
    let mut tamper = |_: usize, dg: &[u8]| garbage(dg);
    let r = run(b"k", b"k", &[Suite::Aes128Gcm], &mut clean, &mut tamper);
    assert_agree(&r, Suite::Aes128Gcm);
    assert_eq!(r.elapsed, 6 * LATENCY, "nothing waited for a timer");
}

#[test]
fn corrupting_any_byte_at_any_step_never_panics() {
    // Each byte of each datagram to the client flipped, in a fresh run each time: it may
    // end the handshake (a ServerHello naming a suite we did not offer) but never panics, and
    // a run whose corruption was ignored still completes.
    for step in 0..3 {
        let mut len = None;
        let mut probe = |n: usize, dg: &[u8]| {
            if n == step {
                len = Some(dg.len());
            }
            vec![]
        };
        run(b"k", b"k", &[Suite::Aes128Gcm], &mut clean, &mut probe);
        for at in 0..len.expect("the step happened") {
            let mut flip = |n: usize, dg: &[u8]| {
                if n != step {
                    return vec![];
                }
                let mut bad = dg.to_vec();
                bad[at] ^= 0xa5;
                vec![bad]
            };
            let r = run(b"k", b"k", &[Suite::Aes128Gcm], &mut clean, &mut flip);
            if let Err(f) = &r.client {
                assert!(
                    matches!(
                        f.error,
                        HandshakeError::Failed(_) | HandshakeError::Alert(..)
                    ),
                    "step {step} byte {at}: {:?}",
                    f.error
                );
            }
        }
    }
}

#[test]
fn without_an_answer_it_resends_every_flight_interval_then_times_out() {
    let t0 = Instant::now();
    let (mut c, _) = ClientHandshake::new(
        b"laptop",
        b"k",
        &[Suite::Aes128Gcm],
        &SystemRandom::new(),
        t0,
    )
    .unwrap();
    let mut sent = 1;
    let mut seqs = vec![];
    let err = loop {
        let t = c.next_timeout().unwrap();
        match c.timeout(t) {
            Ok(Some(dg)) => {
                sent += 1;
                seqs.push(u64::from_be_bytes([
                    0, 0, dg[5], dg[6], dg[7], dg[8], dg[9], dg[10],
                ]));
            }
            Ok(None) => {}
            Err(f) => break (t, f),
        }
    };
    assert_eq!(err.0 - t0, HANDSHAKE_TIMEOUT);
    assert!(matches!(err.1.error, HandshakeError::Timeout(_)));
    // No backoff, as the crate: one flight a second.
    assert_eq!(sent as u32, HANDSHAKE_TIMEOUT.as_secs() as u32);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "fresh record numbers"
    );
}

/// What the `dtls` crate sent as its ClientHello (captured over loopback with
/// `Config { cipher_suites: [GCM, CCM_8], extended_master_secret: Require, psk, .. }` to
/// 127.0.0.1), random zeroed: ours is the same but for the server_name extension at the end.
const CRATE_CLIENT_HELLO: &str = "16fefd000000000000000000690100005d000000000000005dfefd\
    0000000000000000000000000000000000000000000000000000000000000000\
    0000000400a8c0a80100002f000d0010000e0403050306030401050106010807ff01000100001700000000000e\
    000c0000093132372e302e302e31";

#[test]
fn the_client_hello_is_the_crates_without_server_name() {
    let (_, ours) = ClientHandshake::new(
        b"laptop",
        b"k",
        &[Suite::Aes128Gcm, Suite::Aes128Ccm8],
        &SystemRandom::new(),
        Instant::now(),
    )
    .unwrap();
    let mut ours = ours;
    let random = RECORD_HEADER_LEN + HS_HEADER + 2;
    ours[random..random + 32].fill(0);
    let crate_hello = hex::decode(CRATE_CLIENT_HELLO).unwrap();
    // The crate's ends with server_name (4 + 14 bytes): without it, lengths shrink by 18.
    let sni = 18;
    let mut expect = crate_hello[..crate_hello.len() - sni].to_vec();
    let fix = |b: &mut [u8], at: usize, width: usize| {
        let mut n = b[at..at + width]
            .iter()
            .fold(0usize, |n, x| n << 8 | usize::from(*x));
        n -= sni;
        for i in 0..width {
            b[at + i] = (n >> (8 * (width - 1 - i))) as u8;
        }
    };
    fix(&mut expect, 11, 2); // record length
    fix(&mut expect, RECORD_HEADER_LEN + 1, 3); // message length
    fix(&mut expect, RECORD_HEADER_LEN + 9, 3); // fragment length
    let ext_at = expect.len() - (0x2f - sni) - 2;
    fix(&mut expect, ext_at, 2); // extensions length
    assert_eq!(hex::encode(&ours), hex::encode(&expect));
}

#[test]
fn a_second_server_hello_does_not_switch_the_suite() {
    // A forged ServerHello after the real one (another suite we offered), in the same
    // datagram and in a later one: only the first counts (it is message 1; a copy is a copy).
    let t0 = Instant::now();
    let from: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let both = [Suite::Aes128Gcm, Suite::Aes128Ccm8];
    let mut adm = Admission::new(both.to_vec(), HINT.to_vec(), t0);
    let rng = SystemRandom::new();
    let (mut c, ch1) = ClientHandshake::new(b"laptop", b"k", &both, &rng, t0).unwrap();
    adm.datagram(&ch1, from, t0, |_| vec![]);
    let Ok(Progress::Send(ch2)) = c.datagram(t0, &adm.reply.clone()) else {
        panic!()
    };
    adm.datagram(&ch2, from, t0, |_| vec![]);
    let flight = adm.reply.clone();
    let first = record::record_at(&flight, 0).unwrap();
    let mut forged = flight[first.clone()].to_vec();
    let at = RECORD_HEADER_LEN + HS_HEADER + 2 + 32 + 1;
    forged[at..at + 2].copy_from_slice(&Suite::Aes128Ccm8.id().to_be_bytes());
    let mut dg = flight[first.clone()].to_vec();
    dg.extend_from_slice(&forged);
    dg.extend_from_slice(&flight[first.end..]);
    let Ok(Progress::Send(last)) = c.datagram(t0, &dg) else {
        panic!("the flight completes")
    };
    assert!(matches!(c.datagram(t0, &forged), Ok(Progress::Wait)));
    let key = |_: &[u8]| b"k".to_vec();
    let Outcome::Completed(s) = adm.datagram(&last, from, t0, key) else {
        panic!("the server takes our last flight")
    };
    let Ok(Progress::Established(e)) = c.datagram(t0, &s.final_flight) else {
        panic!("our client takes the server's")
    };
    assert_eq!((e.suite, s.suite), (Suite::Aes128Gcm, Suite::Aes128Gcm));
    assert_eq!(e.keys, s.keys);
}
