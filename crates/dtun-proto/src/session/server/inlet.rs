//! The server's half of a session that meets every record (the demultiplexer's): the first
//! record is the peernet message, control records are told from packets, Pings are answered
//! at once (only the first is news), other control messages pass within a per-session budget,
//! and our last handshake flight is resent when the client repeats its own.

use std::time::Instant;

use crate::consts::FINAL_FLIGHT_RESEND;
use crate::handshake::is_final_flight;
use crate::inbound::{DropKind, is_whole_ip_packet};
use crate::proto::{Control, Peernet, ProtoError};

/// Control messages (other than Pings) one session may pass on at once: a client sends at
/// most 8 Hellos and 8 Lans while it sets up (`session::MAX_HELLOS`), then a Close.
pub const CONTROL_BURST: u32 = 32;
/// ... and how many more each second after that.
pub const CONTROL_PER_SECOND: u32 = 8;

/// What one authenticated application record of a session is.
#[derive(Debug)]
pub enum Record {
    /// The peernet message (or what stood in its place and could not be read).
    Peernet(Result<Peernet, ProtoError>),
    /// A control message or a whole IP packet came where the peernet message should be: that
    /// message was lost, and the session should end so the client starts over.
    SetupLost,
    /// A control record: give it to [`Inlet::control`].
    Control,
    /// Anything else: a packet for the data path (which checks that it is IP, and its source).
    Packet,
}

/// What to do with one control record.
#[derive(Debug, PartialEq)]
pub enum ControlVerdict {
    /// A Ping: answer it with a Pong now; `first`: the first of the session, which is news
    /// (the client is a dtun peer) for the session's other half.
    Pong { first: bool },
    /// The answer to a path challenge: for the session's [`super::Path`], in the
    /// demultiplexer.
    PathResponse([u8; 8]),
    /// A message for the session's other half ([`super::ServerSession::control`]).
    Pass(Control),
    /// A counted drop: malformed, unknown, or past the session's budget.
    Drop(DropKind),
}

/// The demultiplexer's per-session state.
#[derive(Debug)]
pub struct Inlet {
    /// The first application record is the peernet message, not a packet.
    awaiting_peernet: bool,
    /// Control messages are understood (not `-compat`); else they are packets (and the data
    /// path's non-IP drops), the closest we come to what the original does with them.
    controls: bool,
    /// A Ping was seen.
    pinged: bool,
    /// Control messages the session may still pass on, and when that was last topped up.
    tokens: u32,
    topped_up: Instant,
    /// Our last handshake flight, resent whenever the client repeats its own: until the
    /// client has it, it cannot finish. Emptied at the first authenticated record from the
    /// peer, which proves the client finished.
    final_flight: Vec<u8>,
    /// When `final_flight` was last resent.
    resent_at: Option<Instant>,
}

impl Inlet {
    /// A new session's; `final_flight` is what admission sent last.
    pub fn new(controls: bool, final_flight: Vec<u8>, now: Instant) -> Inlet {
        Inlet {
            awaiting_peernet: true,
            controls,
            pinged: false,
            tokens: CONTROL_BURST,
            topped_up: now,
            final_flight,
            resent_at: None,
        }
    }

    /// Sorts one authenticated application record (the per-packet path: no clock, no
    /// allocation unless it is the peernet message or a control record).
    #[inline]
    pub fn record(&mut self, data: &[u8]) -> Record {
        if !self.final_flight.is_empty() {
            self.final_flight = Vec::new();
        }
        if self.awaiting_peernet {
            self.awaiting_peernet = false;
            let peernet = Peernet::parse(data);
            let lost = peernet.is_err()
                && ((self.controls && Control::is_control(data)) || is_whole_ip_packet(data));
            return if lost {
                Record::SetupLost
            } else {
                Record::Peernet(peernet)
            };
        }
        if self.controls && Control::is_control(data) {
            Record::Control
        } else {
            Record::Packet
        }
    }

    /// One control record: a Ping is answered at once (so a ping flood never reaches the
    /// session's other half; only the first goes on); other messages pass within the budget,
    /// beyond it they are counted drops (`ControlFlood`); malformed ones and unknown types are
    /// counted drops (`Unexpected`).
    pub fn control(&mut self, now: Instant, data: &[u8]) -> ControlVerdict {
        match Control::parse(data) {
            Ok(Control::Ping) => {
                let first = !self.pinged;
                self.pinged = true;
                ControlVerdict::Pong { first }
            }
            Ok(Control::PathResponse(token)) => ControlVerdict::PathResponse(token),
            Ok(msg) if self.spend(now) => ControlVerdict::Pass(msg),
            Ok(_) => ControlVerdict::Drop(DropKind::ControlFlood),
            Err(_) => ControlVerdict::Drop(DropKind::Unexpected),
        }
    }

    /// A handshake datagram from the session's peer: when it is the client's last flight
    /// again, ours was lost (RFC 6347 4.2.4) and this is what to resend. At most one resend per
    /// `FINAL_FLIGHT_RESEND`: the client repeats its flight once a second at most, and a
    /// spoofed trigger gains little. None: an unexpected handshake datagram (a counted drop).
    pub fn final_flight_again(&mut self, now: Instant, dg: &[u8]) -> Option<&[u8]> {
        if self.final_flight.is_empty()
            || !is_final_flight(dg)
            || self
                .resent_at
                .is_some_and(|t| now.saturating_duration_since(t) < FINAL_FLIGHT_RESEND)
        {
            return None;
        }
        self.resent_at = Some(now);
        Some(&self.final_flight)
    }

    /// Takes one message's worth of the budget, if there is one.
    fn spend(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.topped_up).as_millis()
            * u128::from(CONTROL_PER_SECOND)
            / 1000;
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(CONTROL_BURST);
            self.topped_up = now;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}
