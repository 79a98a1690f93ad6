//! A second outside review, of the copy check as 3ee67f3 made it: `Opener::authentic_copy` and
//! `Path` together, as `src/server/demux` `roaming_records` puts them together (`Server::recv`
//! below: the copy check of a datagram from an address not the session's, then the opening,
//! a path response's move, and a newer record's challenge). Three of these failed on 3ee67f3,
//! where a copy from the address last left sent the session straight back: a replay of a
//! record from before a legitimate move (either epoch) did so and barred the client's real
//! address, and a copier that raced the client's own move was never caught. Since, a copy
//! counts only when sent after the last move, earns its address a challenge, and moves the
//! session only by the client's answer from there (`Path::copy_check`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;

use super::path::{BARRED_FOR, CHALLENGE_EVERY, Path, Seen};
use crate::consts::CONTENT_APPLICATION_DATA;
use crate::kdf::KeyBlock;
use crate::proto::Control;
use crate::record::{
    Cid, DropReason, Opener, Sealer, Suite, rekey_opener, rekey_sealer, session_pair,
};

const CID: Cid = [0xc1, 0xd0, 9, 9, 9, 9, 9, 9];

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The client's sealer and the server's opener (GCM, epoch `epoch`, our CID).
fn pair(epoch: u16) -> (Sealer, Opener) {
    let kb = KeyBlock::for_test();
    let (mut s, _) = session_pair(Suite::Aes128Gcm, &kb, true, epoch, 1);
    let (_, mut o) = session_pair(Suite::Aes128Gcm, &kb, false, epoch, 0);
    assert!(s.set_cid(Some(CID)));
    o.set_cid(Some(CID));
    (s, o)
}

fn seal(s: &mut Sealer, msg: &[u8]) -> Vec<u8> {
    let off = s.payload_offset();
    let mut buf = vec![0u8; off + msg.len() + s.trailer_len()];
    buf[off..off + msg.len()].copy_from_slice(msg);
    let n = s
        .seal(CONTENT_APPLICATION_DATA, &mut buf, msg.len())
        .unwrap();
    buf.truncate(n);
    buf
}

/// The server side of one roaming session, deciding as the demux does.
struct Server {
    o: Opener,
    p: Path,
    rng: SystemRandom,
    /// The last challenge's token.
    token: Option<[u8; 8]>,
    /// How many times a copy moved the session.
    sent_back: u32,
}

impl Server {
    fn new(o: Opener, at: SocketAddr) -> Server {
        Server {
            o,
            p: Path::new(at),
            rng: SystemRandom::new(),
            token: None,
            sent_back: 0,
        }
    }

    fn took(&mut self, seen: Seen) {
        match seen {
            Seen::Challenge(bytes) => {
                let Ok(Control::PathChallenge(t)) = Control::parse(&bytes) else {
                    panic!("not a challenge");
                };
                self.token = Some(t);
            }
            Seen::Moved(_) => self.sent_back += 1,
            _ => {}
        }
    }

    /// One datagram (one record) of this session from `from`, as `roaming_records` (or, from
    /// the session's own address, `session_records`) takes it.
    fn recv(&mut self, now: Instant, from: SocketAddr, rec: &[u8]) {
        if from != self.p.current() {
            let seen = self
                .p
                .copy_check(now, from, &mut self.o, &mut rec.to_vec(), &self.rng);
            let moved = matches!(seen, Seen::Moved(_));
            self.took(seen);
            if moved {
                return;
            }
        }
        let before = self.o.newest();
        let mut r = rec.to_vec();
        if let Ok((_, plain)) = self.o.open(&mut r)
            && let Ok(Control::PathResponse(t)) = Control::parse(&r[plain])
        {
            let _ = self.p.response(now, from, t, self.o.newest());
        }
        let newer = self.o.newest() > before;
        let seen = self.p.records_from(now, from, newer, &self.rng);
        self.took(seen);
    }

    /// The client's answer to the last challenge it was handed.
    fn answer_record(&self, s: &mut Sealer) -> Vec<u8> {
        let t = self.token.expect("no challenge to answer");
        seal(s, &Control::PathResponse(t).to_bytes())
    }
}

/// A client moves from `home` to `new` after sending `before` records from home; returns the
/// records it sent from home.
fn move_after(
    sv: &mut Server,
    s: &mut Sealer,
    t: Instant,
    home: SocketAddr,
    new: SocketAddr,
    before: usize,
) -> Vec<Vec<u8>> {
    let sent: Vec<Vec<u8>> = (0..before).map(|_| seal(s, b"at home")).collect();
    for r in &sent {
        sv.recv(t, home, r);
    }
    sv.recv(t, new, &seal(s, b"moved: a keepalive"));
    let a = sv.answer_record(s);
    sv.recv(t, new, &a);
    assert_eq!(sv.p.current(), new, "the legitimate move");
    assert_eq!(sv.p.previous(), Some(home));
    sent
}

/// FOUND (medium, failed on 3ee67f3). A record the client sent from `home` *before* it moved is still held by
/// the replay window after the move (for the next 64 records: an idle client sends one
/// keepalive every few seconds, so minutes). Anyone who saw it and can send from `home` (the
/// old LAN behind the same NAT mapping, or a spoofer) replays it once: the demux takes it for
/// the client's own copy, sends the session back to `home` without any challenge, and bars the
/// client's real address `new` for 60 s (its records from there are Stale, downstream goes
/// to `home`). Before 3ee67f3 such a replay only got `home` a challenge it could not answer.
/// A copier's copy is of a record first accepted from the address the session moved to, i.e.
/// never older than the record that started the move; a record from before the move is no
/// evidence of a copier.
#[test]
fn a_replay_of_a_record_from_before_the_move_sends_nothing_back() {
    let t0 = Instant::now();
    let (home, new) = (addr("192.0.2.1:1000"), addr("198.51.100.7:7000"));
    let (mut s, o) = pair(2);
    let mut sv = Server::new(o, home);
    let sent = move_after(&mut sv, &mut s, t0, home, new, 5);
    // The client lives on at `new`: 40 keepalives (a few minutes of an idle client).
    for _ in 0..40 {
        sv.recv(t0, new, &seal(&mut s, b"keepalive"));
    }
    assert!(
        sv.o.authentic_copy(&mut sent[2].clone()).is_some(),
        "the window still vouches for a record sent from home before the move"
    );
    // The attacker, from home, replays it.
    let t1 = t0 + Duration::from_secs(30);
    sv.recv(t1, home, &sent[2]);
    assert_eq!(
        (sv.p.current(), sv.sent_back),
        (new, 0),
        "one replayed pre-move record sent the session back to {home}"
    );
    // ... and barred the client's own address.
    sv.recv(t1, new, &seal(&mut s, b"keepalive"));
    assert_eq!(sv.p.current(), new);
}

/// FOUND (medium, the same with any traffic; failed on 3ee67f3). The previous epoch's window is frozen for the
/// whole overlap (EPOCH_OVERLAP, 20 s), however much the client sends in the new epoch: a record
/// of epoch 2 sent from `home` stays an "authentic copy" after a rekey and a move, and a
/// replay of it from `home` sends the session back and bars `new`, even for a busy client.
#[test]
fn a_previous_epoch_record_from_before_the_move_sends_nothing_back() {
    let t0 = Instant::now();
    let (home, new) = (addr("192.0.2.1:1000"), addr("198.51.100.7:7000"));
    let (mut s, o) = pair(2);
    let mut sv = Server::new(o, home);
    let old: Vec<Vec<u8>> = (0..3).map(|_| seal(&mut s, b"epoch 2")).collect();
    for r in &old {
        sv.recv(t0, home, r);
    }
    let kb = KeyBlock::for_test();
    rekey_sealer(&mut s, &kb, true, 3);
    rekey_opener(&mut sv.o, &kb, false, 3);
    move_after(&mut sv, &mut s, t0, home, new, 1);
    // A busy client: a thousand records of epoch 3 from `new`.
    for _ in 0..1000 {
        sv.recv(t0, new, &seal(&mut s, b"busy"));
    }
    assert_eq!(sv.o.previous_epoch(), Some(2), "still inside the overlap");
    sv.recv(t0 + Duration::from_secs(5), home, &old[1]);
    assert_eq!(
        (sv.p.current(), sv.sent_back),
        (new, 0),
        "an epoch-2 record from before the move sent the session back"
    );
}

/// FOUND (low-medium, failed on 3ee67f3). The copy check looks only at the address the last move left. A
/// copier on the path while the client itself moves (home -> new; NAT rebinding or a new
/// interface) races the client's first record from `new` to its own address and the answer to
/// the challenge too (it passes the challenge on to the client: the client answers any): the
/// session moves to the copier, `previous` is `home`, and the client's own copies keep coming
/// from `new`, which the check never looks at. The copier keeps the session as long as it
/// copies; nothing is caught, nothing barred.
#[test]
fn a_copier_racing_a_move_is_caught_too() {
    let t0 = Instant::now();
    let (home, new, copier) = (
        addr("192.0.2.1:1000"),
        addr("198.51.100.7:7000"),
        addr("203.0.113.66:6666"),
    );
    let (mut s, o) = pair(2);
    let mut sv = Server::new(o, home);
    for _ in 0..3 {
        sv.recv(t0, home, &seal(&mut s, b"at home"));
    }
    // The client moved: its first record from `new`, the copier's copy of it first.
    let first = seal(&mut s, b"moved");
    sv.recv(t0, copier, &first);
    sv.recv(t0, new, &first);
    // The challenge went to the copier; the client answers it (from `new`), the copier's
    // copy of the answer first.
    let answer = sv.answer_record(&mut s);
    sv.recv(t0, copier, &answer);
    sv.recv(t0, new, &answer);
    assert_eq!(
        sv.p.current(),
        copier,
        "the copier won the race (as before 3ee67f3)"
    );
    // From now on every record of the client arrives from the copier first, then from `new`;
    // the client answers every challenge it is handed.
    let mut answered = sv.token;
    for i in 0..200u64 {
        let t = t0 + Duration::from_millis(50 * i);
        let r = if sv.token != answered {
            answered = sv.token;
            sv.answer_record(&mut s)
        } else {
            seal(&mut s, b"data")
        };
        sv.recv(t, copier, &r);
        sv.recv(t, new, &r);
    }
    assert_ne!(
        sv.p.current(),
        copier,
        "10 s later the copier still has the session; sent back {} times",
        sv.sent_back
    );
}

/// Held: the copy check still catches the plain copier (the client stays at `home`). The rule
/// the findings above suggest (a copy counts only when it is no older than the record that
/// started the move) would keep this: the copy that sends the session back here (the client's
/// answer) is newer than the record that started the move.
#[test]
fn the_plain_copier_is_still_caught_and_barred() {
    let t0 = Instant::now();
    let (home, copier) = (addr("192.0.2.1:1000"), addr("203.0.113.66:6666"));
    let (mut s, o) = pair(2);
    let mut sv = Server::new(o, home);
    sv.recv(t0, home, &seal(&mut s, b"at home"));
    let r = seal(&mut s, b"raced");
    sv.recv(t0, copier, &r);
    sv.recv(t0, home, &r);
    let a = sv.answer_record(&mut s);
    sv.recv(t0, copier, &a);
    sv.recv(t0, home, &a);
    assert_eq!(sv.p.current(), copier, "the copier won the race");
    // The client's own copy of its answer, from home, earned home a challenge; the client
    // answers it, the copier's copy first (from where the session is), then the client's own
    // from home: back.
    let t1 = t0 + CHALLENGE_EVERY;
    sv.recv(t1, home, &seal(&mut s, b"more from home"));
    let a = sv.answer_record(&mut s);
    sv.recv(t1, copier, &a);
    sv.recv(t1, home, &a);
    assert_eq!((sv.p.current(), sv.sent_back), (home, 1));
    // Barred: newer records from the copier start nothing until BARRED_FOR is over.
    for i in 1..10u64 {
        let t = t0 + Duration::from_secs(6 * i);
        let r = seal(&mut s, b"more");
        sv.recv(t, copier, &r);
        sv.recv(t, home, &r);
        assert_eq!(sv.p.current(), home, "at {i}");
    }
    let _ = BARRED_FOR;
}

/// Held: `authentic_copy` leaves the opener as it was, in both epochs: windows (the copy is
/// still a replay, the next record still opens), `newest`, `has_opened` of an epoch with no
/// record yet, the previous epoch; a record left behind the window, or one in the window's
/// range that never arrived, is no copy; a record with another CID is never decrypted (no
/// failed open); a forged one is one failed open, no more.
#[test]
fn authentic_copy_moves_nothing_in_either_epoch() {
    let (mut s, mut o) = pair(2);
    let recs: Vec<Vec<u8>> = (0..100).map(|_| seal(&mut s, b"x")).collect();
    for (i, r) in recs.iter().enumerate() {
        // Record 98 never arrives.
        if i != 98 {
            o.open(&mut r.clone()).unwrap();
        }
    }
    assert!(
        o.authentic_copy(&mut recs[10].clone()).is_none(),
        "behind the window"
    );
    assert!(
        o.authentic_copy(&mut recs[98].clone()).is_none(),
        "never accepted"
    );
    assert!(o.authentic_copy(&mut recs[97].clone()).is_some());
    let kb = KeyBlock::for_test();
    rekey_opener(&mut o, &kb, false, 3);
    rekey_sealer(&mut s, &kb, true, 3);
    let newest = o.newest();
    assert!(o.authentic_copy(&mut recs[99].clone()).is_some());
    assert!(!o.has_opened(), "no record of epoch 3 yet");
    assert_eq!(o.newest(), newest);
    assert_eq!(o.open(&mut recs[99].clone()), Err(DropReason::Replay));
    assert!(
        o.open(&mut recs[98].clone()).is_ok(),
        "the late one still opens"
    );
    assert_eq!(o.newest(), newest, "a late one moves nothing");
    // Another CID: not decrypted, not counted.
    let (mut other, _) = session_pair(Suite::Aes128Gcm, &kb, true, 3, 1);
    assert!(other.set_cid(Some([7; 8])));
    let foreign = seal(&mut other, b"y");
    assert!(o.authentic_copy(&mut foreign.clone()).is_none());
    assert_eq!(o.failed_opens(), 0);
    let mut forged = recs[97].clone();
    *forged.last_mut().unwrap() ^= 1;
    assert!(o.authentic_copy(&mut forged).is_none());
    assert_eq!(o.failed_opens(), 1);
    let e3 = seal(&mut s, b"epoch 3");
    o.open(&mut e3.clone()).unwrap();
    assert!(o.has_opened());
}
