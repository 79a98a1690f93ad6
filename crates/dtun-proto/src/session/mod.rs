//! The client's session as a state machine without I/O (issue 21; started, not yet what the
//! client runs, see below): the handshake ([`ClientHandshake`]), the address message, the peernet
//! message and the Hello exchange, keepalive and dead-peer detection, and how a session ends.
//! The caller feeds it datagrams and the time and does what each [`Step`] says: send its
//! datagrams, act on its events (make the TUN, set the IPv6 pair and DNS, write packets).
//!
//! It follows what src/client does today (session.rs, hello.rs, forward.rs): the same
//! timers (`SETUP_TIMEOUT`, [`HELLO_RESEND`], [`HELLO_WAIT`], [`MAX_HELLOS`], keepalive with
//! `KEEPALIVE_MISSES`), the same messages in the same order. What it leaves to the caller:
//! the checks of the address pair against the host's networks, the TUN, routes, scripts, DNS
//! settings, ICMP hints, the data path's batching.
//!
//! Not yet as the client has it (so the client does not run this yet): early records are the
//! first 64 candidates, not `client::early`'s reservoir sample; drops are one number, not the
//! client's `Counters` by kind; an unusable Addr6 is dropped without the client's log line;
//! data records are opened one at a time with a copy each (the setup's pace, not the data
//! path's: `client::forward` and `pump` stay the data path). The Hello bookkeeping ([`Heard`])
//! and its timers are already the client's (src/client/hello.rs uses them from here).
//!
//! `pair::Pair` (feature `test-util`) runs it against our admission and server handshake and a scripted server
//! session over a simulated link (loss, duplication, reordering, latency, MTU) and clock.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;

use crate::consts::{
    ALERT_CLOSE_NOTIFY, ALERT_LEVEL_WARNING, CONTENT_ALERT, CONTENT_APPLICATION_DATA,
    FIRST_APP_SEQUENCE, KEEPALIVE_MISSES, PAYLOAD_OFFSET, SETUP_TIMEOUT,
};
use crate::handshake::{ClientHandshake, Established, Failure, HandshakeError, Progress};
use crate::proto::{
    Addr6, AddressMessage, CONTROL_VERSION, CloseReason, Control, HINT_MARKER, HelloFlags,
    ProtoError,
};
use crate::record::{self, Opener, Sealer, Suite};

mod heard;
#[cfg(any(test, feature = "test-util"))]
pub mod pair;

pub use heard::Heard;

/// How long a client that said Hello waits for a complete answer before going on with what
/// it has.
pub const HELLO_WAIT: Duration = Duration::from_secs(2);
/// How long without a complete answer before saying Hello again.
pub const HELLO_RESEND: Duration = Duration::from_millis(400);
/// Most Hellos in one exchange.
pub const MAX_HELLOS: u32 = 8;

/// What a client session needs to know.
#[derive(Clone, Debug)]
pub struct Config {
    pub identity: Vec<u8>,
    pub key: Vec<u8>,
    pub suites: Vec<Suite>,
    /// The peernet message as the original sends it (`Peernet::to_wire`).
    pub peernet: String,
    /// LANs beyond the peernet message (told to dtun servers only).
    pub lans: Vec<ipnet::IpNet>,
    /// Our keepalive period (0: none).
    pub keepalive: Duration,
    /// `-compat`: no control messages, even with a dtun server.
    pub compat: bool,
}

/// What the caller acts on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The handshake is done; `negotiated`: the server is a dtun server (control messages).
    Established {
        suite: Suite,
        hint: Vec<u8>,
        negotiated: bool,
    },
    /// The server's address message: make or readdress the TUN, then call
    /// [`ClientSession::tunnel_ready`].
    Address(AddressMessage),
    /// The server's DNS servers (during the Hello exchange).
    Dns(Vec<IpAddr>),
    /// The setup is over: the IPv6 pair as far as known (`None`: unknown, keep what the TUN
    /// has; `Some(None)`: none).
    Up { addr6: Option<Option<Addr6>> },
    /// An IP packet from the server, for the TUN.
    Packet(Vec<u8>),
    /// The session ended; nothing more comes of it.
    Closed(End),
}

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The handshake failed (its error in words) or timed out.
    Handshake(String),
    /// No address message within `SETUP_TIMEOUT`.
    NoAddress,
    BadAddress(ProtoError),
    /// The server closed it with a reason (Close), or refused it before the address message.
    Closed {
        reason: CloseReason,
        detail: String,
    },
    /// A bare close_notify, or another alert (level, description).
    Alert(u8, u8),
    /// Nothing authenticated from the server for `KEEPALIVE_MISSES` keepalive periods.
    Dead(Duration),
    /// We closed it ([`ClientSession::close`]).
    Ours(CloseReason),
}

/// What to do after a call: datagrams to send (in order), then events.
#[derive(Debug, Default)]
pub struct Step {
    pub send: Vec<Vec<u8>>,
    pub events: Vec<Event>,
}

enum State {
    Handshake {
        hs: Box<ClientHandshake>,
        /// Application datagrams that overtook the end of the handshake.
        early: Vec<Vec<u8>>,
    },
    /// Waiting for the address message.
    Address {
        deadline: Instant,
    },
    /// The address message came; the caller makes the TUN.
    Tunnel,
    Hello {
        heard: Heard,
        said: u32,
        resend_at: Instant,
        deadline: Instant,
    },
    Up,
    Closed,
}

/// The client's side of one session.
pub struct ClientSession {
    cfg: Config,
    state: State,
    keys: Option<(Sealer, Opener)>,
    negotiated: bool,
    last_rx: Instant,
    last_ping: Instant,
    /// Records that did not open or made no sense, counted.
    dropped: u64,
}

/// Most early datagrams kept (the client's `EARLY_CANDIDATES`).
const EARLY: usize = 64;

impl ClientSession {
    /// Starts a session: the first step sends the ClientHello.
    pub fn new(
        cfg: Config,
        rng: &dyn SecureRandom,
        now: Instant,
    ) -> Result<(ClientSession, Step), HandshakeError> {
        let (hs, first) = ClientHandshake::new(&cfg.identity, &cfg.key, &cfg.suites, rng, now)?;
        let s = ClientSession {
            cfg,
            state: State::Handshake {
                hs: Box::new(hs),
                early: Vec::new(),
            },
            keys: None,
            negotiated: false,
            last_rx: now,
            last_ping: now,
            dropped: 0,
        };
        Ok((
            s,
            Step {
                send: vec![first],
                events: vec![],
            },
        ))
    }

    /// Records dropped so far (not opening, malformed, unexpected).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether the session ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// When [`Self::timeout`] wants to be called.
    pub fn next_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Handshake { hs, .. } => hs.next_timeout(),
            State::Address { deadline } => Some(*deadline),
            State::Tunnel | State::Closed => None,
            State::Hello {
                said,
                resend_at,
                deadline,
                ..
            } => Some(if *said < MAX_HELLOS {
                (*resend_at).min(*deadline)
            } else {
                *deadline
            }),
            State::Up => self.keepalive().map(|k| {
                let quiet_until = self.last_rx + k;
                let dead_at = self.last_rx + k * KEEPALIVE_MISSES;
                let ping_at = (self.last_ping + self.ping_every(self.last_rx, k)).max(quiet_until);
                ping_at.min(dead_at)
            }),
        }
    }

    fn keepalive(&self) -> Option<Duration> {
        (self.negotiated && !self.cfg.keepalive.is_zero()).then_some(self.cfg.keepalive)
    }

    /// One ping per period while quiet; four once a reply is overdue (forward.rs).
    fn ping_every(&self, last_rx: Instant, k: Duration) -> Duration {
        let overdue = self.last_ping >= last_rx + k + k / 2;
        if overdue { k / 4 } else { k }
    }

    /// The timer.
    pub fn timeout(&mut self, now: Instant) -> Step {
        let mut step = Step::default();
        match &mut self.state {
            State::Handshake { hs, .. } => match hs.timeout(now) {
                Ok(Some(d)) => step.send.push(d),
                Ok(None) => {}
                Err(f) => self.end(&mut step, End::Handshake(f.error.to_string())),
            },
            State::Address { deadline } if now >= *deadline => {
                self.close_with(&mut step, None);
                self.end(&mut step, End::NoAddress);
            }
            State::Hello { .. } => self.hello_timer(now, &mut step),
            State::Up => {
                if let Some(k) = self.keepalive() {
                    let quiet = now.duration_since(self.last_rx);
                    if quiet >= k * KEEPALIVE_MISSES {
                        self.close_with(&mut step, Some(CloseReason::Timeout));
                        self.end(&mut step, End::Dead(quiet));
                    } else if quiet >= k
                        && now.duration_since(self.last_ping) >= self.ping_every(self.last_rx, k)
                    {
                        self.last_ping = now;
                        self.seal_into(
                            &mut step,
                            CONTENT_APPLICATION_DATA,
                            &Control::Ping.to_bytes(),
                        );
                    }
                }
            }
            _ => {}
        }
        step
    }

    /// One datagram from the server.
    pub fn datagram(&mut self, now: Instant, dg: &[u8]) -> Step {
        let mut step = Step::default();
        if let State::Handshake { hs, early } = &mut self.state {
            if is_early_candidate(dg) {
                if early.len() < EARLY && !early.iter().any(|e| e == dg) {
                    early.push(dg.to_vec());
                }
                return step;
            }
            match hs.datagram(now, dg) {
                Ok(Progress::Send(d)) => step.send.push(d),
                Ok(Progress::Wait) => {}
                Ok(Progress::Established(e)) => {
                    let early = std::mem::take(early);
                    self.established(now, *e, &mut step);
                    for mut d in early {
                        self.records(now, &mut d, &mut step);
                    }
                }
                Err(f) => {
                    if let Some(a) = f.alert.clone() {
                        step.send.push(a);
                    }
                    self.failed(f, &mut step);
                }
            }
            return step;
        }
        if matches!(self.state, State::Closed) {
            return step;
        }
        let mut copy = dg.to_vec();
        self.records(now, &mut copy, &mut step);
        step
    }

    /// The TUN is ready for the address message's pair: send the peernet message, and to a
    /// dtun server our Lans and Hello; the Hello exchange begins.
    pub fn tunnel_ready(&mut self, now: Instant) -> Step {
        let mut step = Step::default();
        if !matches!(self.state, State::Tunnel) {
            return step;
        }
        let peernet = self.cfg.peernet.clone();
        self.seal_into(&mut step, CONTENT_APPLICATION_DATA, peernet.as_bytes());
        if !self.negotiated {
            self.state = State::Up;
            step.events.push(Event::Up { addr6: Some(None) });
            return step;
        }
        self.state = State::Hello {
            heard: Heard::default(),
            said: 0,
            resend_at: now,
            deadline: now + HELLO_WAIT,
        };
        self.hello_timer(now, &mut step);
        step
    }

    /// Ends the session from our side: a Close with `reason` (dtun servers), then close_notify.
    pub fn close(&mut self, _now: Instant, reason: CloseReason) -> Step {
        let mut step = Step::default();
        if matches!(self.state, State::Closed) {
            return step;
        }
        self.close_with(&mut step, Some(reason));
        self.end(&mut step, End::Ours(reason));
        step
    }

    fn established(&mut self, now: Instant, e: Established, step: &mut Step) {
        let hint = e.peer_identity.clone();
        self.negotiated = !self.cfg.compat && hint.ends_with(HINT_MARKER.as_bytes());
        self.keys = Some(record::session_pair(
            e.suite,
            &e.keys,
            true,
            1,
            FIRST_APP_SEQUENCE,
        ));
        self.last_rx = now;
        self.state = State::Address {
            deadline: now + SETUP_TIMEOUT,
        };
        step.events.push(Event::Established {
            suite: e.suite,
            hint,
            negotiated: self.negotiated,
        });
    }

    fn failed(&mut self, f: Failure, step: &mut Step) {
        self.end(step, End::Handshake(f.error.to_string()));
    }

    /// The records of one datagram after the handshake.
    fn records(&mut self, now: Instant, dg: &mut [u8], step: &mut Step) {
        let mut at = 0;
        while at < dg.len() && !matches!(self.state, State::Closed) {
            let Ok(r) = record::record_at(dg, at) else {
                self.dropped += 1;
                return;
            };
            at = r.end;
            let ct = dg[r.start];
            if ct != CONTENT_APPLICATION_DATA && ct != CONTENT_ALERT {
                continue; // late handshake retransmissions
            }
            let Some((_, opener)) = self.keys.as_mut() else {
                return;
            };
            let Ok((content, plain)) = opener.open(&mut dg[r.clone()]) else {
                self.dropped += 1;
                continue;
            };
            self.last_rx = now;
            let data = dg[r.start + plain.start..r.start + plain.end].to_vec();
            if content == CONTENT_ALERT {
                let (level, desc) = match data[..] {
                    [l, d] => (l, d),
                    _ => {
                        self.dropped += 1;
                        continue;
                    }
                };
                self.end(step, End::Alert(level, desc));
                return;
            }
            self.data(now, data, step);
        }
    }

    /// One authenticated application record.
    fn data(&mut self, now: Instant, data: Vec<u8>, step: &mut Step) {
        if let State::Address { .. } = self.state {
            match AddressMessage::parse(&data) {
                Ok(a) => {
                    self.state = State::Tunnel;
                    step.events.push(Event::Address(a));
                }
                Err(e) => match Control::parse(&data) {
                    Ok(Control::Close { reason, detail }) if self.negotiated => {
                        self.end(step, End::Closed { reason, detail });
                    }
                    _ => {
                        self.close_with(step, None);
                        self.end(step, End::BadAddress(e));
                    }
                },
            }
            return;
        }
        if !Control::is_control(&data) {
            if matches!(self.state, State::Hello { .. } | State::Up) && is_ip(&data) {
                step.events.push(Event::Packet(data));
            } else {
                self.dropped += 1;
            }
            return;
        }
        if !self.negotiated {
            self.dropped += 1;
            return;
        }
        let msg = Control::parse(&data);
        match msg {
            Ok(Control::Close { reason, detail }) => self.end(step, End::Closed { reason, detail }),
            Ok(Control::Ping) => {
                self.seal_into(step, CONTENT_APPLICATION_DATA, &Control::Pong.to_bytes())
            }
            Ok(Control::Pong) => {}
            Ok(Control::Dns(servers)) => {
                if let State::Hello { heard, .. } = &mut self.state {
                    heard.dns();
                }
                step.events.push(Event::Dns(servers));
            }
            Ok(Control::Addr6(a)) => {
                if let State::Hello { heard, .. } = &mut self.state {
                    heard.addr6(a.check().ok().map(|()| a));
                }
            }
            Ok(Control::Hello { version, flags, .. }) => {
                if let State::Hello {
                    heard, resend_at, ..
                } = &mut self.state
                {
                    let sent_lans = !self.cfg.lans.is_empty();
                    heard.answer(version, flags);
                    if !heard.complete(sent_lans) {
                        // An answer that shows a loss: say Hello again at once.
                        *resend_at = now;
                    }
                }
                self.hello_timer(now, step);
            }
            Ok(_) => {}
            Err(_) => self.dropped += 1,
        }
    }

    /// The Hello exchange's clock: done when nothing is missing or [`HELLO_WAIT`] passed;
    /// otherwise Hello again every [`HELLO_RESEND`], at most [`MAX_HELLOS`] times.
    fn hello_timer(&mut self, now: Instant, step: &mut Step) {
        let sent_lans = !self.cfg.lans.is_empty();
        let State::Hello {
            heard,
            said,
            resend_at,
            deadline,
        } = &mut self.state
        else {
            return;
        };
        if heard.complete(sent_lans) || now >= *deadline {
            let addr6 = heard.outcome();
            self.state = State::Up;
            self.last_ping = now;
            step.events.push(Event::Up { addr6 });
            return;
        }
        if now < *resend_at || *said >= MAX_HELLOS {
            return;
        }
        let lans = sent_lans && heard.lans_missing();
        *said += 1;
        *resend_at = now + HELLO_RESEND;
        if lans {
            let msg = Control::Lans(self.cfg.lans.clone()).to_bytes();
            self.seal_into(step, CONTENT_APPLICATION_DATA, &msg);
        }
        let hello = Control::Hello {
            version: CONTROL_VERSION,
            keepalive_ms: u32::try_from(self.cfg.keepalive.as_millis()).unwrap_or(u32::MAX),
            flags: HelloFlags::default(),
        }
        .to_bytes();
        self.seal_into(step, CONTENT_APPLICATION_DATA, &hello);
    }

    /// A Close with `reason` to a dtun server (when given), then close_notify.
    fn close_with(&mut self, step: &mut Step, reason: Option<CloseReason>) {
        if let Some(reason) = reason.filter(|_| self.negotiated) {
            let msg = Control::Close {
                reason,
                detail: String::new(),
            }
            .to_bytes();
            self.seal_into(step, CONTENT_APPLICATION_DATA, &msg);
        }
        self.seal_into(
            step,
            CONTENT_ALERT,
            &[ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY],
        );
    }

    fn end(&mut self, step: &mut Step, end: End) {
        self.state = State::Closed;
        step.events.push(Event::Closed(end));
    }

    /// Seals one record onto the step's datagrams (dropped if the keys are used up).
    fn seal_into(&mut self, step: &mut Step, content: u8, payload: &[u8]) {
        let Some((sealer, _)) = self.keys.as_mut() else {
            return;
        };
        let mut rec = vec![0u8; PAYLOAD_OFFSET + payload.len() + 16];
        rec[PAYLOAD_OFFSET..PAYLOAD_OFFSET + payload.len()].copy_from_slice(payload);
        if let Ok(n) = sealer.seal(content, &mut rec, payload.len()) {
            rec.truncate(n);
            step.send.push(rec);
        }
    }
}

/// An IPv4 or IPv6 packet (by its version nibble).
fn is_ip(b: &[u8]) -> bool {
    matches!(b.first().map(|v| v >> 4), Some(4 | 6))
}

/// A datagram of one epoch-1 application-data or alert record: it may be the address message
/// (or a refusal) overtaking the server's last flight.
fn is_early_candidate(dg: &[u8]) -> bool {
    record::parse_header(dg).is_ok_and(|h| {
        h.epoch == 1
            && (h.content_type == CONTENT_APPLICATION_DATA || h.content_type == CONTENT_ALERT)
            && dg.len() == crate::consts::RECORD_HEADER_LEN + h.body_len
    })
}

#[cfg(test)]
mod tests;
