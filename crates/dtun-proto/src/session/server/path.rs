//! Where a roaming session's records go (RFC 9146 §6), in the demultiplexer: the session
//! moves to a new address only after a record from it authenticated, was no replay and was
//! newer than any before it (the record layer says so: `Opener::newest` went up), and then
//! only once the address answered a path challenge of ours. Until then bulk traffic keeps
//! going to the old address, so a forger cannot move anything and an older record that comes
//! late from a new address moves nothing.
//!
//! An attacker on the path who can copy and inject (but not drop) can still race a copy of
//! the client's records, and of its answer to a challenge, to an address of its own and win
//! the move. The client's own copies then arrive second, as replays: authentic copies of
//! records already accepted (`Opener::authentic_copy`), which only a copier's race makes. So
//! such a copy from any address but the session's is looked at before it is dropped
//! ([`Path::copy_check`]): one sent after the last move (an older one, replayed by anyone who
//! saw it, proves nothing) earns its address a challenge, and the client's answer from there,
//! even as a copy the copier raced, moves the session back and bars the copier's address for
//! [`BARRED_FOR`] (and other challenges for [`COPY_HOLD`]). Challenges are spaced per session,
//! and one in flight is not replaced for [`PROBE_HOLD`]. A copier thus keeps the session's
//! traffic for a challenge's round trip at most once every few seconds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;

use crate::consts::CONTENT_APPLICATION_DATA;
use crate::proto::Control;
use crate::record::{Opener, parse_header};

/// At most one challenge per this much time and session (a client that moves sends a burst
/// from its new address; one challenge answers it all).
pub const CHALLENGE_EVERY: Duration = Duration::from_millis(250);
/// A challenge in flight is not replaced by one to another address for this long.
pub const PROBE_HOLD: Duration = Duration::from_secs(1);
/// A challenge is answered within this or forgotten.
pub const CHALLENGE_LIFETIME: Duration = Duration::from_secs(10);
/// An address the session was moved to by a copier gets no challenge for this long.
pub const BARRED_FOR: Duration = Duration::from_secs(60);
/// After a copier was caught, the session challenges no address for this long.
pub const COPY_HOLD: Duration = Duration::from_secs(5);
/// Copiers' addresses a session remembers (the oldest goes first).
const BARRED_MAX: usize = 8;

/// A challenge on its way to a candidate address.
#[derive(Debug, Clone, Copy)]
struct Probe {
    addr: SocketAddr,
    token: [u8; 8],
    sent_at: Instant,
    /// Sent for a copy: its answer also bars the address the session leaves.
    for_copy: bool,
}

/// What [`Path::records_from`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// The session's own address: nothing to do.
    Current,
    /// A new address proved nothing (the records were not newer than all before, or it is
    /// barred): no move.
    Stale,
    /// A challenge went out recently: wait for its answer.
    Waiting,
    /// Send this PathChallenge record to the new address.
    Challenge(Vec<u8>),
    /// The session moved here ([`Path::copy_check`]).
    Moved(SocketAddr),
}

/// One session's path.
#[derive(Debug)]
pub struct Path {
    current: SocketAddr,
    /// The address the last move left.
    previous: Option<SocketAddr>,
    /// (epoch << 48 | sequence number) from which a record counts as sent after the last
    /// move: a copy of an older one is no evidence of a copier.
    moved_at: u64,
    probe: Option<Probe>,
    last_challenge: Option<Instant>,
    /// Challenges for copies have a spacing of their own: the client reclaims its session
    /// one round trip after a copier took it, whatever challenge went out just before.
    last_copy_challenge: Option<Instant>,
    /// The last move answered a challenge sent for a copy: a copier was caught.
    caught: bool,
    /// Copiers' addresses, and until when each gets no challenge.
    barred: Vec<(SocketAddr, Instant)>,
    /// No challenge at all before this (a copier was caught).
    hold_until: Option<Instant>,
    moves: u64,
}

impl Path {
    pub fn new(current: SocketAddr) -> Path {
        Path {
            current,
            previous: None,
            moved_at: 0,
            probe: None,
            last_challenge: None,
            last_copy_challenge: None,
            caught: false,
            barred: Vec::new(),
            hold_until: None,
            moves: 0,
        }
    }

    /// Where the session's records go.
    pub fn current(&self) -> SocketAddr {
        self.current
    }

    /// The address the last move left.
    pub fn previous(&self) -> Option<SocketAddr> {
        self.previous
    }

    /// Whether a move since the last call answered a challenge sent for a copy (a copier had
    /// taken the session): for the log.
    pub fn take_caught(&mut self) -> bool {
        std::mem::take(&mut self.caught)
    }

    /// How many times the session moved (back from a copier's address included).
    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// Records of this session came from `from` and opened; `newer`: one of them was newer
    /// than every record before it (authenticated, no replay). A challenge goes to a new
    /// address only then, at most one per [`CHALLENGE_EVERY`] for the session, never to a
    /// barred address, and not in place of one to another address sent within
    /// [`PROBE_HOLD`].
    pub fn records_from(
        &mut self,
        now: Instant,
        from: SocketAddr,
        newer: bool,
        rng: &dyn SecureRandom,
    ) -> Seen {
        if from == self.current {
            return Seen::Current;
        }
        let barred = self
            .barred
            .iter()
            .any(|&(a, until)| a == from && now < until);
        if !newer || barred {
            return Seen::Stale;
        }
        let held = self.hold_until.is_some_and(|t| now < t)
            || self.probe.is_some_and(|p| {
                p.addr != from && now.saturating_duration_since(p.sent_at) < PROBE_HOLD
            });
        if held {
            return Seen::Waiting;
        }
        self.challenge(now, from, false, rng)
    }

    /// A challenge to `from`, unless one went out within [`CHALLENGE_EVERY`].
    fn challenge(
        &mut self,
        now: Instant,
        from: SocketAddr,
        for_copy: bool,
        rng: &dyn SecureRandom,
    ) -> Seen {
        let last = if for_copy {
            &mut self.last_copy_challenge
        } else {
            &mut self.last_challenge
        };
        let spaced = last.is_some_and(|t| now.saturating_duration_since(t) < CHALLENGE_EVERY);
        let mut token = [0u8; 8];
        if spaced || rng.fill(&mut token).is_err() {
            return Seen::Waiting;
        }
        *last = Some(now);
        self.probe = Some(Probe {
            addr: from,
            token,
            sent_at: now,
            for_copy,
        });
        Seen::Challenge(Control::PathChallenge(token).to_bytes())
    }

    /// Before a datagram from `from`, not the session's address, is opened: whether its
    /// first record is an authentic copy of one already accepted (`Opener::authentic_copy`;
    /// the datagram is then dropped as a replay by the opening). If that copy is the client's
    /// answer to our challenge to `from`, the session moves there (a copier raced the answer
    /// itself): [`Seen::Moved`]. Otherwise, once the session moved, a copy of a record sent
    /// after the last move earns `from` a challenge (never a barred address, at most one per [`CHALLENGE_EVERY`], held
    /// by nothing else): [`Seen::Challenge`].
    pub fn copy_check(
        &mut self,
        now: Instant,
        from: SocketAddr,
        opener: &mut Opener,
        datagram: &mut [u8],
        rng: &dyn SecureRandom,
    ) -> Seen {
        if from == self.current {
            return Seen::Current;
        }
        let Ok(h) = parse_header(datagram) else {
            return Seen::Stale;
        };
        let epoch_seq = (u64::from(h.epoch) << 48) | h.seq;
        let Some((content_type, plain)) = opener.authentic_copy(datagram) else {
            return Seen::Stale;
        };
        if content_type == CONTENT_APPLICATION_DATA
            && let Ok(Control::PathResponse(token)) = Control::parse(&datagram[plain])
            && let Some(to) = self.response(now, from, token, epoch_seq)
        {
            return Seen::Moved(to);
        }
        let barred = self
            .barred
            .iter()
            .any(|&(a, until)| a == from && now < until);
        // Before any move no copier holds the session: a copy is someone's replay.
        if barred || self.previous.is_none() || epoch_seq < self.moved_at {
            return Seen::Stale;
        }
        self.challenge(now, from, true, rng)
    }

    /// A PathResponse with `token` came in a record from `from` (`epoch_seq`: that record's
    /// epoch << 48 | sequence number): the new address, when it answers the challenge in
    /// flight from the address it went to (the session moves there). An answer to a
    /// challenge sent for a copy also bars the address the session leaves for
    /// [`BARRED_FOR`], and other challenges for [`COPY_HOLD`].
    pub fn response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        token: [u8; 8],
        epoch_seq: u64,
    ) -> Option<SocketAddr> {
        let p = self.probe?;
        if now.saturating_duration_since(p.sent_at) > CHALLENGE_LIFETIME {
            self.probe = None;
            return None;
        }
        if p.addr != from || !constant_time_eq(&p.token, &token) {
            return None;
        }
        self.probe = None;
        if p.for_copy && self.current != from {
            self.caught = true;
            self.barred.retain(|&(_, until)| now < until);
            if self.barred.len() >= BARRED_MAX {
                self.barred.remove(0);
            }
            self.barred.push((self.current, now + BARRED_FOR));
            self.hold_until = Some(now + COPY_HOLD);
        }
        let old = std::mem::replace(&mut self.current, from);
        if old == from {
            return None;
        }
        self.previous = Some(old);
        self.moved_at = self.moved_at.max(epoch_seq);
        self.moves += 1;
        Some(from)
    }
}

fn constant_time_eq(a: &[u8; 8], b: &[u8; 8]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn token(seen: &Seen) -> [u8; 8] {
        let Seen::Challenge(bytes) = seen else {
            panic!("no challenge: {seen:?}");
        };
        match Control::parse(bytes) {
            Ok(Control::PathChallenge(t)) => t,
            other => panic!("{other:?}"),
        }
    }

    /// A move takes a newer record from the new address and its answer to our challenge,
    /// from that address.
    #[test]
    fn moves_only_after_the_new_address_answers() {
        let rng = SystemRandom::new();
        let t0 = Instant::now();
        let (old, new) = (addr("192.0.2.1:1000"), addr("198.51.100.7:2000"));
        let mut p = Path::new(old);
        assert_eq!(p.records_from(t0, old, true, &rng), Seen::Current);
        // Not newer than all before (a replay was refused earlier; an older record): nothing.
        assert_eq!(p.records_from(t0, new, false, &rng), Seen::Stale);
        let seen = p.records_from(t0, new, true, &rng);
        let t = token(&seen);
        // More records from there in the same burst: one challenge.
        assert_eq!(p.records_from(t0, new, true, &rng), Seen::Waiting);
        // The wrong token, or the right one from elsewhere (the old address, a third one):
        // no move.
        let mut wrong = t;
        wrong[0] ^= 1;
        assert_eq!(p.response(t0, new, wrong, 1), None);
        assert_eq!(p.response(t0, old, t, 1), None);
        assert_eq!(p.response(t0, addr("203.0.113.9:9"), t, 1), None);
        assert_eq!(p.current(), old);
        assert_eq!(p.response(t0, new, t, 1), Some(new));
        assert_eq!((p.current(), p.moves()), (new, 1));
        // The token is spent.
        assert_eq!(p.response(t0, new, t, 1), None);
        // A late, older record from the old address moves nothing back.
        assert_eq!(p.records_from(t0, old, false, &rng), Seen::Stale);
        assert_eq!(p.current(), new);
    }

    /// Challenges are spaced per session; one in flight is replaced by a challenge to another
    /// address only after PROBE_HOLD (its answer then no longer counts); an unanswered one
    /// expires.
    #[test]
    fn one_challenge_at_a_time() {
        let rng = SystemRandom::new();
        let t0 = Instant::now();
        let (old, a, b) = (
            addr("192.0.2.1:1000"),
            addr("198.51.100.7:2000"),
            addr("198.51.100.8:2000"),
        );
        let mut p = Path::new(old);
        let ta = token(&p.records_from(t0, a, true, &rng));
        // Twenty other addresses within the spacing, and another after it but within the
        // hold: none is challenged.
        for i in 0..20u16 {
            let other = SocketAddr::from(([198, 51, 100, 9], 3000 + i));
            let t = t0 + Duration::from_millis(u64::from(i));
            assert_eq!(p.records_from(t, other, true, &rng), Seen::Waiting);
        }
        assert_eq!(
            p.records_from(t0 + CHALLENGE_EVERY, b, true, &rng),
            Seen::Waiting
        );
        let later = t0 + PROBE_HOLD;
        let tb = token(&p.records_from(later, b, true, &rng));
        assert_eq!(p.response(later, a, ta, 1), None, "a replaced token");
        let expired = later + CHALLENGE_LIFETIME + Duration::from_millis(1);
        assert_eq!(p.response(expired, b, tb, 1), None);
        assert_eq!((p.current(), p.moves()), (old, 0));
    }

    /// A copier won the race to a move (its copy of the client's answer came first): the
    /// client's own copies, of records sent after the move, earn its address a challenge, and
    /// its answer from there (even a copy of it the copier raced) moves the session back and
    /// bars the copier's address. A copy of a record from before the move (anyone who saw it
    /// may replay it), or from a barred address, earns nothing; neither do forgeries.
    #[test]
    fn the_clients_own_copies_win_the_session_back() {
        use crate::kdf::KeyBlock;
        use crate::record::{Suite, session_pair};
        let rng = SystemRandom::new();
        let t0 = Instant::now();
        let (home, copier) = (addr("192.0.2.1:1000"), addr("198.51.100.66:6666"));
        let kb = KeyBlock::for_test();
        let (mut s, _) = session_pair(Suite::Aes128Gcm, &kb, true, 1, 10);
        let (_, mut o) = session_pair(Suite::Aes128Gcm, &kb, false, 1, 0);
        let seal = |s: &mut crate::record::Sealer, m: &[u8]| {
            crate::session::seal_record(s, CONTENT_APPLICATION_DATA, m).unwrap()
        };
        let mut p = Path::new(home);
        let old = seal(&mut s, b"sent before the move");
        o.open(&mut old.clone()).unwrap();
        // The copier's copy of a fresh record comes first from its port: a challenge there,
        // which it hands to the client; its copy of the answer comes first too: a move.
        let fresh = seal(&mut s, b"fresh");
        o.open(&mut fresh.clone()).unwrap();
        let t = token(&p.records_from(t0, copier, true, &rng));
        let answer = seal(&mut s, &Control::PathResponse(t).to_bytes());
        o.open(&mut answer.clone()).unwrap();
        let es = |r: &[u8]| {
            let h = parse_header(r).unwrap();
            (u64::from(h.epoch) << 48) | h.seq
        };
        assert_eq!(p.response(t0, copier, t, es(&answer)), Some(copier));
        // The client's own copy of its answer, from home: a challenge home (the token it
        // answered went to the copier's port).
        let later = t0 + CHALLENGE_EVERY;
        let mut copy = answer.clone();
        let back = token(&p.copy_check(later, home, &mut o, &mut copy, &rng));
        // A replay of a record from before the move, or a forgery: nothing.
        let then = later + CHALLENGE_EVERY;
        assert_eq!(
            p.copy_check(then, home, &mut o, &mut old.clone(), &rng),
            Seen::Stale
        );
        let mut forged = fresh.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(
            p.copy_check(then, home, &mut o, &mut forged, &rng),
            Seen::Stale
        );
        // The client answers from home; the copier's copy of that answer comes first from its
        // port (the session's address now): no move there. The client's own, from home, is
        // a copy: it moves the session home.
        let answer2 = seal(&mut s, &Control::PathResponse(back).to_bytes());
        o.open(&mut answer2.clone()).unwrap();
        assert_eq!(p.response(then, copier, back, es(&answer2)), None);
        let mut copy2 = answer2.clone();
        assert_eq!(
            p.copy_check(then, home, &mut o, &mut copy2, &rng),
            Seen::Moved(home)
        );
        assert_eq!((p.current(), p.moves()), (home, 2));
        // The copier's port is barred, and no other address is challenged for COPY_HOLD.
        let soon = then + CHALLENGE_EVERY;
        assert_eq!(p.records_from(soon, copier, true, &rng), Seen::Stale);
        let other = addr("203.0.113.5:5");
        assert_eq!(p.records_from(soon, other, true, &rng), Seen::Waiting);
        assert!(matches!(
            p.records_from(then + COPY_HOLD, other, true, &rng),
            Seen::Challenge(_)
        ));
        assert!(matches!(
            p.records_from(then + BARRED_FOR, copier, true, &rng),
            Seen::Challenge(_)
        ));
    }
}
