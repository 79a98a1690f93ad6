//! The client side of the handshake as a state machine without I/O, in the shape of the
//! server's and of boringtun's `Tunn`: [`ClientHandshake::new`] gives the first flight, every
//! datagram of the server's goes to [`ClientHandshake::datagram`], and the caller calls
//! [`ClientHandshake::timeout`] at [`ClientHandshake::next_timeout`]. Time comes in as
//! `Instant`, randomness through ring's `SecureRandom`.
//!
//! What it sends is what the webrtc-rs `dtls` crate (the client's handshake before) sent,
//! minus the server_name extension (the crate put the server's IP address there, which RFC
//! 6066 §3 does not allow and no server we talk to reads): a ClientHello offering our suites in
//! the configured order with signature_algorithms, renegotiation_info and
//! extended_master_secret; the cookie of a HelloVerifyRequest echoed with message_seq 1; then
//! ClientKeyExchange (the identity), ChangeCipherSpec and Finished in one datagram. Like the
//! crate it resends its last flight every [`FLIGHT_INTERVAL`] without backoff and gives up
//! after [`HANDSHAKE_TIMEOUT`]; it also resends it at once (at most every
//! [`FINAL_FLIGHT_RESEND`]) when the server repeats its previous flight (RFC 6347 §4.2.4).
//!
//! A datagram that does not parse, a message out of order, an epoch-1 record that does not
//! open: each is ignored and counted ([`ClientHandshake::ignored`]), never an error. What ends
//! the handshake: an alert, a ServerHello we cannot accept (a suite we did not offer, no
//! extended master secret), a server Finished that opens but does not verify, the timeout.

use std::time::{Duration, Instant};

use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use super::finished::{Secrets, epoch_one, finished_message, open_finished, seal_finished};
use super::wire::{
    ALERT_DECRYPT_ERROR, HELLO_VERIFY_REQUEST, HS_HEADER, Message, SERVER_HELLO, SERVER_HELLO_DONE,
    SERVER_KEY_EXCHANGE, alert_name, ct_eq, messages, push_change_cipher_spec,
    push_handshake_record,
};
use crate::consts::{
    ALERT_LEVEL_WARNING, CONTENT_ALERT, CONTENT_HANDSHAKE, FINAL_FLIGHT_RESEND, FLIGHT_INTERVAL,
    HANDSHAKE_TIMEOUT, PAYLOAD_OFFSET, RECORD_HEADER_LEN,
};
use crate::kdf::{KeyBlock, RANDOM_LEN};
use crate::record::{self, Opener, Sealer, Suite};
use messages::{
    client_hello, client_key_exchange, hello_verify_cookie, key_exchange_hint, parse_server_hello,
};

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no handshake completed within {0:?}")]
    Timeout(Duration),
    /// The server sent an alert (level, description).
    #[error("the server refused it with {} alert {} ({})", if *.0 == 2 { "a fatal" } else { "an" }, .1, alert_name(*.1))]
    Alert(u8, u8),
    #[error("{0}")]
    Failed(String),
}

/// A completed client handshake.
pub struct Established {
    pub suite: Suite,
    pub keys: KeyBlock,
    /// The server's identity hint (empty without a ServerKeyExchange).
    pub peer_identity: Vec<u8>,
    /// The first epoch's secret, which a rekey chains from (`crate::rekey`).
    pub epoch1: crate::rekey::EpochSecret,
}

/// A failed handshake, with the identity hint the server sent, if any.
#[derive(Debug)]
pub struct Failure {
    pub error: HandshakeError,
    pub peer_identity: Vec<u8>,
    /// An alert to send the server (when we are the side that gave up on it).
    pub alert: Option<Vec<u8>>,
}

/// What to do after a datagram of the server's.
pub enum Progress {
    /// Send this datagram (our next flight, or our last one again).
    Send(Vec<u8>),
    /// Nothing to send.
    Wait,
    /// The server's Finished verified: the handshake is done.
    Established(Box<Established>),
}

/// Where the handshake stands.
enum Phase {
    /// Our ClientHello is out: a HelloVerifyRequest or the ServerHello comes next.
    Hello,
    /// The ServerHello came: the ServerKeyExchange (optional) and ServerHelloDone come next.
    ServerFlight {
        suite: Suite,
        server_random: [u8; RANDOM_LEN],
        /// A flight has one ServerKeyExchange: later ones are ignored, so a hostile server
        /// cannot grow the transcript for as long as the handshake may take.
        hint_taken: bool,
    },
    /// Our last flight is out: the server's ChangeCipherSpec and Finished come next.
    Finished(Box<LastFlight>),
    /// Established or failed: nothing more to do.
    Over,
}

/// Our last flight and what checks the server's answer.
struct LastFlight {
    suite: Suite,
    keys: KeyBlock,
    /// ClientKeyExchange and Finished, as hashed; resent with fresh record sequence numbers.
    key_exchange: Vec<u8>,
    finished: Vec<u8>,
    /// Our epoch 1 (the Finished, from sequence 0) and the server's.
    sealer: Sealer,
    opener: Opener,
    /// The server's verify_data we expect.
    expect: [u8; 12],
    /// The first epoch's secret, for [`Established`].
    epoch1: crate::rekey::EpochSecret,
}

/// The client side of one handshake.
pub struct ClientHandshake {
    identity: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
    suites: Vec<Suite>,
    random: [u8; RANDOM_LEN],
    /// The cookie in the ClientHello we last sent (empty before a HelloVerifyRequest): the
    /// transcript starts at that ClientHello.
    cookie: Vec<u8>,
    /// A different cookie that came after one was taken: it goes out with the next flight of
    /// the timer, not at once, so a flood of HelloVerifyRequests costs at most one ClientHello
    /// per FLIGHT_INTERVAL, and one spoofed cookie arriving just before the server's flight
    /// does not change the ClientHello that flight answers.
    pending_cookie: Option<Vec<u8>>,
    /// message_seq of our ClientHello: 0, then 1 once a HelloVerifyRequest came.
    hello_seq: u16,
    /// Handshake messages hashed so far, from the ClientHello the server answered.
    transcript: Vec<u8>,
    /// message_seq of the server's message we take next.
    recv_seq: u16,
    /// message_seq the server's current flight starts at: a message below it is the server
    /// repeating its previous flight, so ours was lost.
    flight_start: u16,
    /// Next epoch-0 record sequence number of ours.
    next_seq: u64,
    phase: Phase,
    peer_identity: Vec<u8>,
    started: Instant,
    sent_at: Instant,
    /// Records and messages ignored (malformed, out of order, not opening, not expected).
    ignored: u64,
}

impl ClientHandshake {
    /// Starts a handshake as `identity` with `key`, offering `suites` in this order; returns
    /// it and the first flight (a ClientHello) to send.
    pub fn new(
        identity: &[u8],
        key: &[u8],
        suites: &[Suite],
        rng: &dyn SecureRandom,
        now: Instant,
    ) -> Result<(ClientHandshake, Vec<u8>), HandshakeError> {
        if suites.is_empty() {
            return Err(HandshakeError::Failed("no cipher suite to offer".into()));
        }
        if identity.len() > u16::MAX as usize || key.len() > u16::MAX as usize {
            return Err(HandshakeError::Failed(
                "the identity or key is too long".into(),
            ));
        }
        let mut random = [0u8; RANDOM_LEN];
        rng.fill(&mut random)
            .map_err(|_| HandshakeError::Failed("no random numbers from the system".into()))?;
        let mut hs = ClientHandshake {
            identity: identity.to_vec(),
            key: Zeroizing::new(key.to_vec()),
            suites: suites.to_vec(),
            random,
            cookie: Vec::new(),
            pending_cookie: None,
            hello_seq: 0,
            transcript: Vec::new(),
            recv_seq: 0,
            flight_start: 0,
            next_seq: 0,
            phase: Phase::Hello,
            peer_identity: Vec::new(),
            started: now,
            sent_at: now,
            ignored: 0,
        };
        let flight = hs.flight(now);
        Ok((hs, flight))
    }

    /// Records and messages ignored so far.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// The server's identity hint, once its ServerKeyExchange came.
    pub fn peer_identity(&self) -> &[u8] {
        &self.peer_identity
    }

    /// When [`Self::timeout`] wants to be called; `None` once the handshake is over.
    pub fn next_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Over => None,
            _ => Some((self.sent_at + FLIGHT_INTERVAL).min(self.started + HANDSHAKE_TIMEOUT)),
        }
    }

    /// The timer: our last flight again when it is due, an error past [`HANDSHAKE_TIMEOUT`].
    pub fn timeout(&mut self, now: Instant) -> Result<Option<Vec<u8>>, Failure> {
        if matches!(self.phase, Phase::Over) {
            return Ok(None);
        }
        if now >= self.started + HANDSHAKE_TIMEOUT {
            return Err(self.fail(HandshakeError::Timeout(HANDSHAKE_TIMEOUT), AlertOut::None));
        }
        if now >= self.sent_at + FLIGHT_INTERVAL {
            return Ok(Some(self.flight(now)));
        }
        Ok(None)
    }

    /// Takes one datagram of the server's.
    pub fn datagram(&mut self, now: Instant, dg: &[u8]) -> Result<Progress, Failure> {
        let (mut send, mut resend) = (false, false);
        for range in record::records(dg) {
            if matches!(self.phase, Phase::Over) {
                break;
            }
            let Some(rec) = range.ok().and_then(|r| dg.get(r)) else {
                self.ignored += 1;
                break;
            };
            let epoch = u16::from_be_bytes([rec[3], rec[4]]);
            match (rec[0], epoch) {
                (CONTENT_HANDSHAKE, 0) => {
                    for m in messages(&rec[RECORD_HEADER_LEN..]) {
                        match self.message(&m) {
                            Ok(Next::Nothing) => {}
                            Ok(Next::Send) => send = true,
                            Ok(Next::Resend) => resend = true,
                            Err((error, alert)) => {
                                let alert = alert.map_or(AlertOut::None, AlertOut::Plain);
                                return Err(self.fail(error, alert));
                            }
                        }
                    }
                }
                (CONTENT_HANDSHAKE, 1) => {
                    if let Some(done) = self.server_finished(rec)? {
                        return Ok(Progress::Established(done));
                    }
                }
                (CONTENT_ALERT, 0) => match rec.get(RECORD_HEADER_LEN..) {
                    // Only a fatal alert ends a handshake (RFC 5246 §7.2.2); an unauthenticated
                    // warning from whoever guesses our port is a counted drop.
                    Some(&[ALERT_LEVEL_WARNING, _]) => self.ignored += 1,
                    Some(&[level, description]) => {
                        return Err(
                            self.fail(HandshakeError::Alert(level, description), AlertOut::None)
                        );
                    }
                    _ => self.ignored += 1,
                },
                (CONTENT_ALERT, 1) => self.sealed_alert(rec)?,
                // The server's ChangeCipherSpec says nothing its Finished does not.
                _ => {}
            }
        }
        let resend = resend && now.duration_since(self.sent_at) >= FINAL_FLIGHT_RESEND;
        if (send || resend) && !matches!(self.phase, Phase::Over) {
            return Ok(Progress::Send(self.flight(now)));
        }
        Ok(Progress::Wait)
    }

    /// One epoch-0 handshake message of the server's.
    fn message(&mut self, m: &Message) -> Result<Next, (HandshakeError, Option<u8>)> {
        if m.typ == HELLO_VERIFY_REQUEST && matches!(self.phase, Phase::Hello) {
            return Ok(self.hello_verify_request(m));
        }
        if m.seq < self.flight_start {
            return Ok(Next::Resend);
        }
        if m.seq != self.recv_seq {
            // A copy of one we took, or one ahead of a lost one: the server repeats its flight.
            self.ignored += 1;
            return Ok(Next::Nothing);
        }
        match (&self.phase, m.typ) {
            (Phase::Hello, SERVER_HELLO) => self.server_hello(m),
            (
                Phase::ServerFlight {
                    hint_taken: false, ..
                },
                SERVER_KEY_EXCHANGE,
            ) => {
                match key_exchange_hint(m.body) {
                    Some(hint) => {
                        self.peer_identity = hint.to_vec();
                        self.take(m);
                        if let Phase::ServerFlight { hint_taken, .. } = &mut self.phase {
                            *hint_taken = true;
                        }
                    }
                    None => self.ignored += 1,
                }
                Ok(Next::Nothing)
            }
            (Phase::ServerFlight { .. }, SERVER_HELLO_DONE) if m.body.is_empty() => {
                self.take(m);
                self.key_exchange();
                Ok(Next::Send)
            }
            _ => {
                self.ignored += 1;
                Ok(Next::Nothing)
            }
        }
    }

    /// Hashes a message of the server's flight and expects the next one.
    fn take(&mut self, m: &Message) {
        self.transcript.extend_from_slice(m.whole);
        self.recv_seq = m.seq.wrapping_add(1);
    }

    /// A HelloVerifyRequest: its cookie goes into our ClientHello. The same cookie again is
    /// the server repeating itself (our ClientHello was lost, or the first was duplicated).
    fn hello_verify_request(&mut self, m: &Message) -> Next {
        let Some(cookie) = hello_verify_cookie(m.body) else {
            self.ignored += 1;
            return Next::Nothing;
        };
        if cookie == self.cookie.as_slice() {
            // The cookie we sent, again: a cookie that differs was not the server's.
            self.pending_cookie = None;
            return Next::Resend;
        }
        if !self.cookie.is_empty() {
            self.ignored += 1;
            self.pending_cookie = Some(cookie.to_vec());
            return Next::Nothing;
        }
        self.cookie = cookie.to_vec();
        // RFC 6347 §4.2.2: the ClientHello answering a HelloVerifyRequest has message_seq 1,
        // and so has the ServerHello answering it (the HelloVerifyRequest was the server's 0).
        // The HelloVerifyRequest's own message_seq is not relied on: it may not be 0.
        self.hello_seq = 1;
        self.recv_seq = 1;
        self.flight_start = 1;
        Next::Send
    }

    /// The ServerHello: the suite must be one we offered, with extended master secret.
    fn server_hello(&mut self, m: &Message) -> Result<Next, (HandshakeError, Option<u8>)> {
        let Some(sh) = parse_server_hello(m.body) else {
            self.ignored += 1;
            return Ok(Next::Nothing);
        };
        let suite = sh
            .accept(&self.suites)
            .map_err(|(why, alert)| (HandshakeError::Failed(why), Some(alert)))?;
        let server_random = sh.random;
        // The transcript starts at the ClientHello the server answered: ours as it stands.
        self.transcript = self.client_hello_message();
        self.flight_start = m.seq;
        self.take(m);
        self.phase = Phase::ServerFlight {
            suite,
            server_random,
            hint_taken: false,
        };
        Ok(Next::Nothing)
    }

    /// The ServerHelloDone came: derive the keys and make our last flight.
    fn key_exchange(&mut self) {
        let Phase::ServerFlight {
            suite,
            server_random,
            ..
        } = self.phase
        else {
            return;
        };
        let seq = self.hello_seq;
        let key_exchange = client_key_exchange(&self.identity, seq + 1);
        self.transcript.extend_from_slice(&key_exchange);
        let secrets = Secrets::derive(&self.key, &self.transcript, &self.random, &server_random);
        let verify = secrets.verify_data(b"client finished", &self.transcript);
        let finished = finished_message(seq + 2, &verify);
        self.transcript.extend_from_slice(&finished);
        let mut expect = [0u8; 12];
        expect.copy_from_slice(&secrets.verify_data(b"server finished", &self.transcript));
        let (sealer, opener) = epoch_one(suite, &secrets.keys, true);
        self.flight_start = self.recv_seq;
        self.phase = Phase::Finished(Box::new(LastFlight {
            suite,
            keys: secrets.keys,
            epoch1: secrets.epoch1,
            key_exchange,
            finished,
            sealer,
            opener,
            expect,
        }));
    }

    /// An epoch-1 handshake record: the server's Finished, once our last flight is out.
    fn server_finished(&mut self, rec: &[u8]) -> Result<Option<Box<Established>>, Failure> {
        let Phase::Finished(last) = &mut self.phase else {
            self.ignored += 1;
            return Ok(None);
        };
        let Ok(fin) = open_finished(&mut last.opener, rec) else {
            // Forged, or a copy of one already taken: nothing a spoofer can end us with.
            self.ignored += 1;
            return Ok(None);
        };
        if !ct_eq(&fin[HS_HEADER..], &last.expect) {
            let alert = sealed_alert(&mut last.sealer, ALERT_DECRYPT_ERROR)
                .map_or(AlertOut::None, AlertOut::Sealed);
            return Err(self.fail(
                HandshakeError::Failed(
                    "the server's Finished did not verify: the handshake was tampered with".into(),
                ),
                alert,
            ));
        }
        let done = Box::new(Established {
            suite: last.suite,
            keys: last.keys.clone(),
            peer_identity: self.peer_identity.clone(),
            epoch1: last.epoch1.clone(),
        });
        self.phase = Phase::Over;
        Ok(Some(done))
    }

    /// An epoch-1 alert: one that opens under the server's keys ends the handshake.
    fn sealed_alert(&mut self, rec: &[u8]) -> Result<(), Failure> {
        let Phase::Finished(last) = &mut self.phase else {
            self.ignored += 1;
            return Ok(());
        };
        let mut buf = [0u8; 64];
        let opened = buf.get_mut(..rec.len()).and_then(|copy| {
            copy.copy_from_slice(rec);
            let (content, range) = last.opener.open(copy).ok()?;
            match copy.get(range)? {
                &[level, description] if content == CONTENT_ALERT => Some((level, description)),
                _ => None,
            }
        });
        match opened {
            Some((level, description)) => {
                Err(self.fail(HandshakeError::Alert(level, description), AlertOut::None))
            }
            None => {
                self.ignored += 1;
                Ok(())
            }
        }
    }

    /// Our ClientHello message as it stands (with the cookie, once we have one).
    fn client_hello_message(&self) -> Vec<u8> {
        client_hello(&self.random, &self.cookie, &self.suites, self.hello_seq)
    }

    /// Our current flight as one datagram, with fresh record sequence numbers (RFC 6347
    /// §4.2.4); notes when it went out.
    fn flight(&mut self, now: Instant) -> Vec<u8> {
        self.sent_at = now;
        if matches!(self.phase, Phase::Hello)
            && let Some(cookie) = self.pending_cookie.take()
        {
            self.cookie = cookie;
        }
        let mut out = Vec::with_capacity(256);
        if matches!(self.phase, Phase::Hello | Phase::ServerFlight { .. }) {
            let hello = self.client_hello_message();
            push_handshake_record(&mut out, &mut self.next_seq, &hello);
        }
        match &mut self.phase {
            Phase::Hello | Phase::ServerFlight { .. } | Phase::Over => {}
            Phase::Finished(last) => {
                push_handshake_record(&mut out, &mut self.next_seq, &last.key_exchange);
                push_change_cipher_spec(&mut out, &mut self.next_seq);
                if !seal_finished(&mut last.sealer, &last.finished, &mut out) {
                    // Out of epoch-1 sequence numbers after 2^48 resends: cannot happen
                    // within HANDSHAKE_TIMEOUT; the flight goes without its Finished.
                    debug_assert!(false, "sealing our Finished failed");
                }
            }
        }
        out
    }

    /// Ends the handshake, with the alert to send the server, if any.
    fn fail(&mut self, error: HandshakeError, alert: AlertOut) -> Failure {
        let alert = match alert {
            AlertOut::None => None,
            AlertOut::Plain(d) => {
                let a = super::wire::alert(d, self.next_seq);
                self.next_seq += 1;
                Some(a.to_vec())
            }
            AlertOut::Sealed(r) => Some(r),
        };
        self.phase = Phase::Over;
        Failure {
            error,
            peer_identity: self.peer_identity.clone(),
            alert,
        }
    }
}

/// What a message asks of us.
enum Next {
    Nothing,
    /// Our next flight is ready.
    Send,
    /// The server repeated its previous flight: ours was lost.
    Resend,
}

/// The alert that goes with a failure.
enum AlertOut {
    None,
    Plain(u8),
    Sealed(Vec<u8>),
}

/// A fatal alert sealed in epoch 1 (after our ChangeCipherSpec, the server reads only that).
fn sealed_alert(sealer: &mut Sealer, description: u8) -> Option<Vec<u8>> {
    let mut rec = [0u8; PAYLOAD_OFFSET + 2 + 16];
    rec[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 2].copy_from_slice(&[2, description]);
    let n = sealer.seal(CONTENT_ALERT, &mut rec, 2).ok()?;
    Some(rec[..n].to_vec())
}

mod messages;
#[cfg(test)]
mod review;
#[cfg(test)]
mod tests;
