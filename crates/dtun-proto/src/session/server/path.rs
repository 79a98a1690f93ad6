//! Where a roaming session's records go (RFC 9146 §6), in the demultiplexer: the session
//! moves to a new address only after a record from it authenticated, was no replay and was
//! newer than any before it (the record layer says so: `Opener::newest` went up), and then
//! only once the address answered a path challenge of ours. Until then bulk traffic keeps
//! going to the old address, so a forger cannot move anything, and an on-path attacker who
//! races a copy of a fresh record from elsewhere gets a challenge it cannot read, not the
//! session's traffic; an older record that comes late from a new address moves nothing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;

use crate::proto::Control;

/// At most one challenge per this much time and session (a client that moves sends a burst
/// from its new address; one challenge answers it all).
pub const CHALLENGE_EVERY: Duration = Duration::from_millis(250);
/// A challenge is answered within this or forgotten.
pub const CHALLENGE_LIFETIME: Duration = Duration::from_secs(10);

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
    /// A new address proved nothing (the records were not newer than all before): no move.
    Stale,
    /// A challenge went out to this address recently: wait for its answer.
    Waiting,
    /// Send this PathChallenge record to the new address.
    Challenge(Vec<u8>),
}

/// One session's path.
#[derive(Debug)]
pub struct Path {
    current: SocketAddr,
    probe: Option<Probe>,
    moves: u64,
}

impl Path {
    pub fn new(current: SocketAddr) -> Path {
        Path {
            current,
            probe: None,
            moves: 0,
        }
    }

    /// Where the session's records go.
    pub fn current(&self) -> SocketAddr {
        self.current
    }

    /// How many times the session moved.
    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// Records of this session came from `from` and opened; `newer`: one of them was newer
    /// than every record before it (authenticated, no replay). A challenge goes to a new
    /// address only then, at most one per [`CHALLENGE_EVERY`]; a challenge to another
    /// address replaces the one in flight.
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
        if !newer {
            return Seen::Stale;
        }
        if let Some(p) = self.probe
            && p.addr == from
            && now.saturating_duration_since(p.sent_at) < CHALLENGE_EVERY
        {
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
        let old = std::mem::replace(&mut self.current, from);
        (old != from).then(|| {
            self.moves += 1;
            from
        })
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

    /// A challenge to another address replaces the one in flight (its answer no longer
    /// counts); an unanswered one expires; challenges to one address are spaced.
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
        let tb = token(&p.records_from(t0, b, true, &rng));
        assert_eq!(p.response(t0, a, ta), None);
        let later = t0 + CHALLENGE_EVERY;
        let tb2 = token(&p.records_from(later, b, true, &rng));
        assert_eq!(p.response(later, b, tb), None, "a replaced token");
        let expired = later + CHALLENGE_LIFETIME + Duration::from_millis(1);
        assert_eq!(p.response(expired, b, tb2), None);
        assert_eq!((p.current(), p.moves()), (old, 0));
    }
}
