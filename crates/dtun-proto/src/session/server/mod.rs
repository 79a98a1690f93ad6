//! The server's side of a session as a state machine without I/O, in two halves because the
//! server runs in two tasks:
//!
//! - [`Inlet`] meets every record, in the demultiplexer: the peernet message, control records
//!   told from packets, Pings answered at once, a budget for the other control messages, and
//!   our last handshake flight resent when the client repeats its own.
//! - [`ServerSession`] is the session's control logic, in the manager: the setup deadline,
//!   the Hello exchange (whether the client is a dtun peer, its keepalive, the answer's
//!   messages and flags), Lans, keepalive tracking and dead-peer detection, and how the
//!   session ends.
//!
//! The caller owns the keys (the demultiplexer opens, the outbound task seals), the device,
//! the address pools, routes and scripts. It feeds the halves what they ask for and does what
//! each [`Step`] says; `session::pair::Pair` runs both against our client over a simulated
//! link and clock.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::consts::{KEEPALIVE_MISSES, SETUP_TIMEOUT};
use ring::rand::SystemRandom;

use crate::kdf::KeyBlock;
use crate::proto::{Addr6, CONTROL_VERSION, CloseReason, Control, HelloFlags, Peernet, ProtoError};
use crate::rekey::EpochSecret;
use crate::rekey::exchange::ServerRekey;
use crate::rekey::message::Fragment;

mod inlet;
mod path;
#[cfg(test)]
mod roam_rereview_tests;
#[cfg(test)]
mod tests;

pub use inlet::{CONTROL_BURST, CONTROL_PER_SECOND, ControlVerdict, Inlet, Record};
pub use path::{
    BARRED_FOR, CHALLENGE_EVERY, CHALLENGE_LIFETIME, COPY_HOLD, PROBE_HOLD, Path, Seen,
};

/// What a server session needs to know.
#[derive(Clone, Debug)]
pub struct Config {
    /// Our keepalive period, told in the Hello answer (zero: the server checks no keepalive).
    pub keepalive: Duration,
    /// `-compat`: no control messages.
    pub compat: bool,
    /// We rekey (`crate::rekey`): the hint says so (`proto::HINT_REKEY`) and a client's
    /// exchange is taken from the start of the session.
    pub rekey: bool,
    /// The connection ID this session's records may carry (RFC 9146), given to a client whose
    /// Hello says it roams, when the session rekeys (the client uses it from its next epoch):
    /// None, the session does not roam (`-compat`, a CCM_8 session).
    pub cid: Option<[u8; 8]>,
}

/// What the caller acts on.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// The peernet message came: route the client's LAN.
    Peernet(Peernet),
    /// It came and cannot be read: the tunnel stays up without a route.
    BadPeernet(ProtoError),
    /// The client pinged before any Hello came (its Hello was lost): it is a dtun peer, its
    /// up script may run.
    DtunPeer,
    /// The client said Hello (`first`: the first time this session): its up script may run;
    /// give it its IPv6 pair if it has none, then call [`ServerSession::answer_hello`].
    Hello { first: bool, keepalive: Duration },
    /// The client's LANs beyond its peernet message.
    Lans(Vec<IpNet>),
    /// A rekey exchange gave the next epoch's keys: read `epoch` with the client half of
    /// `keys` from now on (the previous epoch's key too, until the next rekey); seal with its
    /// server half once a record of that epoch came from the client.
    NextKeys { epoch: u16, keys: KeyBlock },
    /// A rekey message that belongs to no exchange, or a bad one: a counted drop.
    Dropped,
    /// The client says why it is closing (its close_notify follows).
    Closing { reason: CloseReason, detail: String },
    /// The session is over: tell the client `reason` (none: it closed, say nothing), then
    /// close_notify; `why` is for the log.
    Ended {
        reason: Option<CloseReason>,
        why: String,
    },
}

/// What to do after one call: control messages to seal and send, in order, then events.
#[derive(Debug, Default)]
pub struct Step {
    pub send: Vec<Vec<u8>>,
    pub events: Vec<Event>,
}

impl Step {
    fn event(e: Event) -> Step {
        Step {
            send: vec![],
            events: vec![e],
        }
    }
}

/// The control logic of one server session.
#[derive(Debug)]
pub struct ServerSession {
    cfg: Config,
    /// Until the peernet message comes.
    setup_deadline: Option<Instant>,
    /// The client said Hello (or pinged): it is a dtun peer and may get control messages.
    negotiated: bool,
    /// We answered a Hello (a later one is a client asking again).
    answered: bool,
    /// The client's Lans message came (the Hello answer says so).
    lans_heard: bool,
    /// The client's keepalive period (zero: none); it pings, we answer.
    keepalive: Duration,
    /// When an authenticated record last came.
    alive_at: Instant,
    ended: bool,
    /// The farewell was given (once).
    farewell_said: bool,
    /// The flags of our last Hello answer (for the log).
    answer_flags: HelloFlags,
    /// The rekey exchange, once the client's Hello offered it and we do.
    rekey: Option<ServerRekey>,
    /// The client's Hello says it roams.
    client_roams: bool,
    rng: SystemRandom,
}

impl ServerSession {
    /// A session whose handshake just completed (its address message is on the way);
    /// `epoch1`: the handshake's first epoch secret, for rekeying.
    pub fn new(cfg: Config, epoch1: Option<EpochSecret>, now: Instant) -> ServerSession {
        // A server that rekeys says so in its hint (`proto::HINT_REKEY`), so it takes a
        // client's exchange from the start, whether or not a Hello came.
        let rekey = epoch1
            .filter(|_| cfg.rekey && !cfg.compat)
            .map(ServerRekey::new);
        ServerSession {
            rekey,
            client_roams: false,
            rng: SystemRandom::new(),
            farewell_said: false,
            answer_flags: HelloFlags::default(),
            cfg,
            setup_deadline: Some(now + SETUP_TIMEOUT),
            negotiated: false,
            answered: false,
            lans_heard: false,
            keepalive: Duration::ZERO,
            alive_at: now,
            ended: false,
        }
    }

    /// The client is a dtun peer (it said Hello or pinged): it gets control messages, a Close
    /// before close_notify, and its read key's integrity limit ends the session.
    pub fn is_dtun_peer(&self) -> bool {
        self.negotiated
    }

    /// The client's keepalive period (zero: none or not told).
    pub fn keepalive(&self) -> Duration {
        self.keepalive
    }

    /// The flags of our last Hello answer.
    pub fn answer_flags(&self) -> HelloFlags {
        self.answer_flags
    }

    /// When an authenticated record last came.
    pub fn alive_at(&self) -> Instant {
        self.alive_at
    }

    /// The peernet message's record ([`Record::Peernet`]).
    pub fn peernet(&mut self, peernet: Result<Peernet, ProtoError>) -> Step {
        if self.ended {
            return Step::default();
        }
        self.setup_deadline = None;
        Step::event(match peernet {
            Ok(p) => Event::Peernet(p),
            Err(e) => Event::BadPeernet(e),
        })
    }

    /// Something else came where the peernet message should be ([`Record::SetupLost`]).
    pub fn setup_lost(&mut self) -> Step {
        self.end(Some(CloseReason::Timeout), "its peernet message was lost")
    }

    /// A control message the inlet passed on (or the first Ping).
    pub fn control(&mut self, msg: Control) -> Step {
        if self.ended {
            return Step::default();
        }
        match msg {
            Control::Hello {
                keepalive_ms,
                flags,
                version,
            } => {
                self.keepalive = Duration::from_millis(u64::from(keepalive_ms));
                self.client_roams = version >= 2 && flags.has(HelloFlags::ROAM);
                Step::event(Event::Hello {
                    first: !self.answered,
                    keepalive: self.keepalive,
                })
            }
            // Only a dtun client pings: a lost Hello must not leave it unanswered.
            Control::Ping if !self.cfg.compat && !self.negotiated => {
                self.negotiated = true;
                self.keepalive = self.cfg.keepalive;
                Step::event(Event::DtunPeer)
            }
            Control::Close { reason, detail } => Step::event(Event::Closing { reason, detail }),
            Control::Lans(lans) => {
                self.lans_heard = true;
                Step::event(Event::Lans(lans))
            }
            Control::Rekey(f) => self.rekey_fragment(&f),
            _ => Step::default(),
        }
    }

    /// The answer to a Hello (each one: a client says it again until its answer shows that
    /// nothing was lost): the IPv6 pair and the DNS servers, then our Hello, whose flags say
    /// that those came and whether we have the client's Lans. A client that has the answer
    /// knows whether IPv6 comes before its up script runs.
    pub fn answer_hello(&mut self, addr6: Option<Addr6>, dns: &[IpAddr]) -> Step {
        if self.ended {
            return Step::default();
        }
        self.negotiated = true;
        self.answered = true;
        let flags = HelloFlags::default()
            .with(HelloFlags::ADDR6_SENT, addr6.is_some())
            .with(HelloFlags::DNS_SENT, !dns.is_empty())
            .with(HelloFlags::LANS_HEARD, self.lans_heard)
            .with(HelloFlags::REKEY, self.rekey.is_some())
            .with(HelloFlags::ROAM, self.roams());
        self.answer_flags = flags;
        let ours = u32::try_from(self.cfg.keepalive.as_millis()).unwrap_or(u32::MAX);
        let mut send = Vec::with_capacity(4);
        if let Some(a) = addr6 {
            send.push(Control::Addr6(a).to_bytes());
        }
        if !dns.is_empty() {
            send.push(Control::Dns(dns.to_vec()).to_bytes());
        }
        if let Some(cid) = self.cfg.cid.filter(|_| self.roams()) {
            send.push(Control::Cid(cid).to_bytes());
        }
        let answer = Control::Hello {
            version: CONTROL_VERSION,
            keepalive_ms: ours,
            flags,
        };
        send.push(answer.to_bytes());
        Step {
            send,
            events: vec![],
        }
    }

    /// The connection ID this session's records may carry.
    pub fn cid(&self) -> Option<[u8; 8]> {
        self.cfg.cid
    }

    /// Whether the session roams: the client's Hello says it can, we rekey (the client
    /// takes the connection ID into its next epoch) and have a connection ID for it.
    pub fn roams(&self) -> bool {
        self.client_roams && self.rekey.is_some() && self.cfg.cid.is_some() && !self.cfg.compat
    }

    /// The newest epoch whose keys we have (1 until the first rekey).
    pub fn epoch(&self) -> u16 {
        self.rekey.as_ref().map_or(1, ServerRekey::epoch)
    }

    /// Whether this session rekeys (both Hellos offered it).
    pub fn rekeys(&self) -> bool {
        self.rekey.is_some()
    }

    /// A rekey fragment from the client: the Reply's fragments to send (under the keys we
    /// send with now: the client reads them before it has the new ones), and the new keys.
    fn rekey_fragment(&mut self, f: &Fragment) -> Step {
        let Some(r) = self.rekey.as_mut() else {
            return Step::event(Event::Dropped);
        };
        match r.fragment(f, &self.rng) {
            Ok(out) => Step {
                send: out.send,
                events: out
                    .next
                    .map(|n| Event::NextKeys {
                        epoch: n.epoch,
                        keys: n.keys,
                    })
                    .into_iter()
                    .collect(),
            },
            Err(_) => Step::event(Event::Dropped),
        }
    }

    /// An alert from the client: close_notify or another, the session is over (nothing is
    /// said back).
    pub fn alert(&mut self, level: u8, desc: u8) -> Step {
        let why = if desc == 0 {
            "peer sent close_notify".to_string()
        } else {
            format!("peer sent alert {level}/{desc}")
        };
        self.end(None, &why)
    }

    /// Authenticated records came (any: data, control, an alert).
    pub fn heard(&mut self, now: Instant) {
        self.alive_at = now;
    }

    /// When [`ServerSession::timeout`] has something to do.
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        let dead = self
            .keepalive_checked()
            .then(|| self.alive_at + self.keepalive * KEEPALIVE_MISSES);
        match (self.setup_deadline, dead) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The timers: no peernet message by the setup deadline, or no authenticated record for
    /// `KEEPALIVE_MISSES` of a dtun client's keepalive periods, end the session.
    pub fn timeout(&mut self, now: Instant) -> Step {
        if self.ended {
            return Step::default();
        }
        if self.setup_deadline.is_some_and(|t| now >= t) {
            return self.end(
                Some(CloseReason::Timeout),
                &format!("no peernet message within {SETUP_TIMEOUT:?}"),
            );
        }
        let quiet = now.saturating_duration_since(self.alive_at);
        if self.keepalive_checked() && quiet >= self.keepalive * KEEPALIVE_MISSES {
            let why = format!("no keepalive for {:.1}s", quiet.as_secs_f64());
            return self.end(Some(CloseReason::Timeout), &why);
        }
        Step::default()
    }

    /// The caller ends the session for a reason of its own (replaced, shutdown, keys used up,
    /// revoked): the Close to send before close_notify, for a dtun peer only.
    pub fn farewell(&mut self, reason: CloseReason, detail: &str) -> Option<Vec<u8>> {
        self.ended = true;
        if std::mem::replace(&mut self.farewell_said, true) {
            return None;
        }
        self.negotiated.then(|| {
            Control::Close {
                reason,
                detail: detail.to_string(),
            }
            .to_bytes()
        })
    }

    /// The session ended (by an event, or [`ServerSession::farewell`]).
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// The server checks a dtun client's keepalive when both sides have one.
    fn keepalive_checked(&self) -> bool {
        !self.cfg.keepalive.is_zero() && self.negotiated && !self.keepalive.is_zero()
    }

    fn end(&mut self, reason: Option<CloseReason>, why: &str) -> Step {
        if self.ended {
            return Step::default();
        }
        self.ended = true;
        Step::event(Event::Ended {
            reason,
            why: why.to_string(),
        })
    }
}
