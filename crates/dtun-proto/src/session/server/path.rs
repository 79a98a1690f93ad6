//! Where a roaming session's records go (RFC 9146 §6), in the demultiplexer: the session
//! moves to a new address only after a record from it authenticated, was no replay and was
//! newer than any before it (the record layer says so: `Opener::newest` went up), and then
//! only once the address answered a path challenge of ours. Until then bulk traffic keeps
//! going to the old address, so a forger cannot move anything and an older record that comes
//! late from a new address moves nothing.
//!
//! An attacker on the path who can copy and inject (but not drop) can still race a copy of
//! the client's records, and of its answer to the challenge, to an address of its own and win
//! the move. The client's own copy of a record then arrives second, from the address the
//! session left, as a replay: an authentic copy of a record already accepted, which a client
//! that really moved never sends. So such a copy from the address last left (`Opener::
//! authentic_copy`) sends the session straight back ([`Path::copied`]) and bars the copier's
//! address for [`BARRED_FOR`] and all others for [`COPY_HOLD`]; challenges are spaced per
//! session, and one in flight is not replaced for [`PROBE_HOLD`], so a copier switching ports
//! gains at most the few milliseconds between its copy and the client's own every 5 s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;

use crate::proto::Control;

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
}

/// One session's path.
#[derive(Debug)]
pub struct Path {
    current: SocketAddr,
    /// The address the last move left.
    previous: Option<SocketAddr>,
    probe: Option<Probe>,
    last_challenge: Option<Instant>,
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
            probe: None,
            last_challenge: None,
            barred: Vec::new(),
            hold_until: None,
            moves: 0,
        }
    }

    /// Where the session's records go.
    pub fn current(&self) -> SocketAddr {
        self.current
    }

    /// The address the last move left: an authentic copy of an accepted record from there
    /// means a copier took the session ([`Path::copied`]).
    pub fn previous(&self) -> Option<SocketAddr> {
        self.previous
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
        let spaced = self
            .last_challenge
            .is_some_and(|t| now.saturating_duration_since(t) < CHALLENGE_EVERY)
            || self.hold_until.is_some_and(|t| now < t);
        let held = self.probe.is_some_and(|p| {
            p.addr != from && now.saturating_duration_since(p.sent_at) < PROBE_HOLD
        });
        if spaced || held {
            return Seen::Waiting;
        }
        let mut token = [0u8; 8];
        if rng.fill(&mut token).is_err() {
            return Seen::Waiting;
        }
        self.probe = Some(Probe {
            addr: from,
            token,
            sent_at: now,
        });
        self.last_challenge = Some(now);
        Seen::Challenge(Control::PathChallenge(token).to_bytes())
    }

    /// A PathResponse with `token` came in a record from `from`: the new address, when it
    /// answers the challenge in flight from the address it went to (the session moves
    /// there).
    pub fn response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        token: [u8; 8],
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
        self.move_to(from)
    }

    /// An authentic copy of a record already accepted came from `from`. From the address the
    /// last move left, it shows that move followed a copier: the session goes back there
    /// (returned), the address it leaves is barred for [`BARRED_FOR`], and no address is
    /// challenged for [`COPY_HOLD`].
    pub fn copied(&mut self, now: Instant, from: SocketAddr) -> Option<SocketAddr> {
        if self.previous != Some(from) {
            return None;
        }
        self.barred.retain(|&(_, until)| now < until);
        if self.barred.len() >= BARRED_MAX {
            self.barred.remove(0);
        }
        self.barred.push((self.current, now + BARRED_FOR));
        self.hold_until = Some(now + COPY_HOLD);
        self.probe = None;
        self.move_to(from)
    }

    fn move_to(&mut self, to: SocketAddr) -> Option<SocketAddr> {
        let old = std::mem::replace(&mut self.current, to);
        if old == to {
            return None;
        }
        self.previous = Some(old);
        self.moves += 1;
        Some(to)
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
        assert_eq!(p.response(t0, new, wrong), None);
        assert_eq!(p.response(t0, old, t), None);
        assert_eq!(p.response(t0, addr("203.0.113.9:9"), t), None);
        assert_eq!(p.current(), old);
        assert_eq!(p.response(t0, new, t), Some(new));
        assert_eq!((p.current(), p.moves()), (new, 1));
        // The token is spent.
        assert_eq!(p.response(t0, new, t), None);
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
        assert_eq!(p.response(later, a, ta), None, "a replaced token");
        let expired = later + CHALLENGE_LIFETIME + Duration::from_millis(1);
        assert_eq!(p.response(expired, b, tb), None);
        assert_eq!((p.current(), p.moves()), (old, 0));
    }

    /// A copier won the race to a move: the client's own copy of a record, from the address
    /// the session left, sends it back there at once, and the copier's address gets no
    /// challenge for BARRED_FOR. A copy from anywhere else proves nothing.
    #[test]
    fn a_copy_from_the_address_left_sends_the_session_back() {
        let rng = SystemRandom::new();
        let t0 = Instant::now();
        let (home, copier, other) = (
            addr("192.0.2.1:1000"),
            addr("198.51.100.66:6666"),
            addr("203.0.113.5:5"),
        );
        let mut p = Path::new(home);
        assert_eq!(
            p.copied(t0, home),
            None,
            "no move yet: nothing to go back to"
        );
        let t = token(&p.records_from(t0, copier, true, &rng));
        assert_eq!(p.response(t0, copier, t), Some(copier));
        assert_eq!(p.previous(), Some(home));
        assert_eq!(p.copied(t0, other), None);
        assert_eq!(p.copied(t0, home), Some(home));
        assert_eq!((p.current(), p.moves()), (home, 2));
        // Barred: newer records from the copier's address start nothing for a while.
        let soon = t0 + CHALLENGE_EVERY;
        assert_eq!(p.records_from(soon, copier, true, &rng), Seen::Stale);
        // ... and no other address is challenged during the hold.
        assert_eq!(p.records_from(soon, other, true, &rng), Seen::Waiting);
        assert!(matches!(
            p.records_from(t0 + COPY_HOLD, other, true, &rng),
            Seen::Challenge(_)
        ));
        let after = t0 + BARRED_FOR;
        assert!(matches!(
            p.records_from(after, copier, true, &rng),
            Seen::Challenge(_)
        ));
    }
}
