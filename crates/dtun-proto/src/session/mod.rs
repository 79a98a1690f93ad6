//! The client's session as a state machine without I/O: the handshake
//! ([`ClientHandshake`]), the address message, the peernet message and the Hello exchange,
//! keepalive and dead-peer detection, the check after an ICMP port unreachable, and how a
//! session ends. The caller (src/client/session.rs) feeds it datagrams, opened control
//! records and the time, and does what each [`Step`] says: send its datagrams, act on its
//! events (make the TUN, set the IPv6 pair and DNS, write packets).
//!
//! The setup runs here datagram by datagram. Once it is up, the caller takes the keys
//! ([`ClientSession::take_keys`]) for its data path (batched receive and `Inbox`, the
//! outbound task's sealer) and feeds only control records, alerts, the fact that something
//! authenticated came, and the timer; what the session then wants sent comes as plaintext
//! records in [`Step::seal`], for the data path's sealer.
//!
//! What it leaves to the caller: the checks of the address pair against the host's
//! networks, the TUN, routes, scripts, DNS settings, the path MTU, the data path.
//!
//! The server's side is [`server`]: an inlet for every record and the session's control
//! logic, in two halves because the server runs its demultiplexer and its manager apart.
//!
//! `pair::Pair` (feature `test-util`) runs the client against our admission, server handshake
//! and both halves of the server's session over a simulated link (loss, duplication,
//! reordering, latency, MTU) and clock.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;

use crate::consts::{
    ALERT_CLOSE_NOTIFY, ALERT_LEVEL_WARNING, CONTENT_ALERT, CONTENT_APPLICATION_DATA,
};
use crate::handshake::{ClientHandshake, HandshakeError, Progress};
use crate::inbound::Counters;
use crate::proto::{Addr6, AddressMessage, CloseReason, Control, ProtoError};
use crate::record::{Opener, Sealer, Suite};

mod early;
mod heard;
mod hello;
mod live;
#[cfg(any(test, feature = "test-util"))]
pub mod pair;
mod rekeying;
pub mod server;
mod setup;

pub use early::{EARLY_CANDIDATES, EarlyRecords, could_be_first};
pub use heard::Heard;
pub use rekeying::REKEY_GIVE_UP;

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
    /// The pre-shared key (wiped when dropped).
    pub key: zeroize::Zeroizing<Vec<u8>>,
    pub suites: Vec<Suite>,
    /// The peernet message as the original sends it (`Peernet::to_wire`).
    pub peernet: String,
    /// LANs beyond the peernet message (told to dtun servers only).
    pub lans: Vec<ipnet::IpNet>,
    /// Our keepalive period (0: none).
    pub keepalive: Duration,
    /// `-compat`: no control messages, even with a dtun server.
    pub compat: bool,
    /// The first sequence number of our application records (`FIRST_APP_SEQUENCE`; a
    /// test may start near the end of the sequence space).
    pub first_sequence: u64,
    /// Rekey every this much time that carried traffic (offered in our Hello; on when the
    /// server offers it too); None: never.
    pub rekey: Option<Duration>,
    /// Offer roaming in our Hello (an AES-GCM session only): with a server that gives us a
    /// connection ID, our records carry it from the next epoch on (RFC 9146) and we answer
    /// its path challenges, so the session survives a change of our address.
    pub roam: bool,
}

/// What the caller acts on.
#[derive(Debug)]
pub enum Event {
    /// The handshake is done; `negotiated`: the server is a dtun server (control messages).
    Established {
        suite: Suite,
        hint: Vec<u8>,
        negotiated: bool,
    },
    /// The server's address message: make or readdress the TUN, then call
    /// [`ClientSession::tunnel_ready`] (or [`ClientSession::close`] if that failed).
    Address(AddressMessage),
    /// The server's DNS servers.
    Dns(Vec<IpAddr>),
    /// The setup is over: the IPv6 pair as far as known (`None`: unknown, keep what the TUN
    /// has; `Some(None)`: none).
    Up { addr6: Option<Option<Addr6>> },
    /// An IP packet from the server, for the TUN (while the session has its keys).
    Packet(Vec<u8>),
    /// An ICMP port unreachable started a check: the session ends unless something
    /// authenticated comes within this.
    Checking(Duration),
    /// A rekey completed (only once the data path holds the keys): seal with `keys`'
    /// client half in `epoch` from now on, and read `epoch` with its server half (keeping
    /// the previous epoch's read key until the next rekey).
    Rekeyed {
        epoch: u16,
        keys: crate::kdf::KeyBlock,
        /// Seal in the RFC 9146 format with this connection ID from this epoch on.
        cid: Option<[u8; 8]>,
    },
    /// The overlap after a rekey is over: stop reading the previous epoch
    /// (`Opener::retire_previous`; only once the data path holds the keys).
    RetirePrevious,
    /// The session ended; nothing more comes of it.
    Closed(End),
}

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    /// The handshake failed or timed out.
    Handshake(HandshakeError),
    /// No address message within the setup's time.
    NoAddress,
    BadAddress(ProtoError),
    /// The server closed it with a reason (Close), or refused it before the address message.
    Closed {
        reason: CloseReason,
        detail: String,
    },
    /// A close_notify (description 0) or another alert (level, description).
    Alert(u8, u8),
    /// Nothing authenticated from the server for `KEEPALIVE_MISSES` keepalive periods.
    Dead(Duration),
    /// An ICMP port unreachable came and nothing authenticated within this.
    Unreachable(Duration),
    /// We closed it ([`ClientSession::close`]), with this reason to a dtun server.
    Ours(Option<CloseReason>),
}

/// What to do after a call: datagrams to send (in order), plaintext records for the data
/// path to seal and send (once it holds the keys), then events.
#[derive(Debug, Default)]
pub struct Step {
    pub send: Vec<Vec<u8>>,
    /// (content type, plaintext), in order; only after [`ClientSession::take_keys`].
    pub seal: Vec<(u8, Vec<u8>)>,
    pub events: Vec<Event>,
}

enum State {
    Handshake {
        hs: Box<ClientHandshake>,
        /// Application datagrams that overtook the end of the handshake.
        early: EarlyRecords,
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
    /// Until the data path takes them.
    keys: Option<(Sealer, Opener)>,
    /// The data path holds the keys: records to send go out in [`Step::seal`].
    detached: bool,
    negotiated: bool,
    last_rx: Instant,
    last_ping: Instant,
    /// When an unanswered ICMP port unreachable came.
    refused_since: Option<Instant>,
    counters: Arc<Counters>,
    /// The handshake's first epoch secret, until rekeying starts with it.
    epoch1: Option<crate::rekey::EpochSecret>,
    /// The rekey exchange, once both sides rekey.
    rekey: Option<crate::rekey::exchange::ClientRekey>,
    /// When the previous epoch's read key goes (after a rekey).
    retire_at: Option<Instant>,
    /// The server's hint says it rekeys (`proto::HINT_REKEY`).
    server_rekeys: bool,
    /// The session's suite (after the handshake).
    suite: Option<Suite>,
    /// The connection ID the server gave us (roaming): our records carry it from the epoch
    /// after the one it came in.
    cid: Option<[u8; 8]>,
    /// For the rekey exchanges' keys.
    rng: ring::rand::SystemRandom,
}

impl ClientSession {
    /// Starts a session: the first step sends the ClientHello.
    pub fn new(
        cfg: Config,
        rng: &dyn SecureRandom,
        now: Instant,
    ) -> Result<(ClientSession, Step), HandshakeError> {
        let (hs, first) = ClientHandshake::new(&cfg.identity, &cfg.key, &cfg.suites, rng, now)?;
        let mut seed = [0u8; 8];
        rng.fill(&mut seed)
            .map_err(|_| HandshakeError::Failed("no randomness".into()))?;
        let state = State::Handshake {
            hs: Box::new(hs),
            early: EarlyRecords::new(u64::from_le_bytes(seed)),
        };
        let s = ClientSession::in_state(cfg, state, now);
        let step = Step {
            send: vec![first],
            ..Step::default()
        };
        Ok((s, step))
    }

    /// A session in `state` with nothing heard or sent yet.
    fn in_state(cfg: Config, state: State, now: Instant) -> ClientSession {
        ClientSession {
            cfg,
            state,
            keys: None,
            detached: false,
            negotiated: false,
            last_rx: now,
            last_ping: now,
            refused_since: None,
            counters: Arc::new(Counters::default()),
            epoch1: None,
            rekey: None,
            retire_at: None,
            server_rekeys: false,
            suite: None,
            cid: None,
            rng: ring::rand::SystemRandom::new(),
        }
    }

    /// A session whose handshake ended with `est` (tests: a captured session's keys, whose
    /// handshake cannot be replayed against our ClientHello).
    #[cfg(any(test, feature = "test-util"))]
    pub fn established_for_test(
        cfg: Config,
        est: crate::handshake::Established,
        now: Instant,
    ) -> (ClientSession, Step) {
        let mut s = ClientSession::in_state(cfg, State::Closed, now);
        let mut step = Step::default();
        s.established(now, est, &mut step);
        (s, step)
    }

    /// The session's counters (records, drops by kind), shared with the data path.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Whether the server is a dtun server and control messages are on.
    pub fn negotiated(&self) -> bool {
        self.negotiated
    }

    /// Whether the handshake is done.
    pub fn is_established(&self) -> bool {
        !matches!(self.state, State::Handshake { .. })
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
            State::Up => self.live_timeout(),
        }
    }

    /// The timer.
    pub fn timeout(&mut self, now: Instant) -> Step {
        let mut step = Step::default();
        match &mut self.state {
            State::Handshake { hs, .. } => match hs.timeout(now) {
                Ok(Some(d)) => step.send.push(d),
                Ok(None) => {}
                Err(f) => {
                    let ignored = hs.ignored();
                    self.failed(f, ignored, &mut step);
                }
            },
            State::Address { deadline } if now >= *deadline => {
                self.close_with(&mut step, None);
                self.end(&mut step, End::NoAddress);
            }
            State::Hello { .. } => self.hello_timer(now, &mut step),
            State::Up => self.up_timer(now, &mut step),
            _ => {}
        }
        step
    }

    /// One datagram from the server (while the session has its keys).
    pub fn datagram(&mut self, now: Instant, dg: &[u8]) -> Step {
        let mut step = Step::default();
        if let State::Handshake { hs, early } = &mut self.state {
            // The address message, or an encrypted alert: a server refusing us at its
            // -max-clients limit sends close_notify right after Finished.
            if could_be_first(dg) {
                early.push(dg);
                return step;
            }
            match hs.datagram(now, dg) {
                Ok(Progress::Send(d)) => step.send.push(d),
                Ok(Progress::Wait) => {}
                Ok(Progress::Established(e)) => {
                    let early = std::mem::replace(early, EarlyRecords::new(0));
                    self.established(now, *e, &mut step);
                    for mut d in early.kept {
                        if !matches!(self.state, State::Address { .. }) {
                            break;
                        }
                        self.records(now, &mut d, &mut step);
                    }
                }
                Err(f) => {
                    let ignored = hs.ignored();
                    self.failed(f, ignored, &mut step);
                }
            }
            return step;
        }
        if matches!(self.state, State::Closed | State::Tunnel) || self.keys.is_none() {
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
            self.last_ping = now;
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

    /// Ends the session from our side: a Close with `reason` (to dtun servers, when given),
    /// then close_notify.
    pub fn close(&mut self, _now: Instant, reason: Option<CloseReason>) -> Step {
        let mut step = Step::default();
        if self.is_closed() {
            return step;
        }
        self.close_with(&mut step, reason);
        self.end(&mut step, End::Ours(reason));
        step
    }

    /// A Close with `reason` to a dtun server (when given), then close_notify.
    pub(super) fn close_with(&mut self, step: &mut Step, reason: Option<CloseReason>) {
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

    pub(super) fn end(&mut self, step: &mut Step, end: End) {
        self.state = State::Closed;
        step.events.push(Event::Closed(end));
    }

    /// Seals one record onto the step's datagrams (dropped if the keys are used up), or
    /// hands it to the data path once that holds the keys.
    pub(super) fn seal_into(&mut self, step: &mut Step, content: u8, payload: &[u8]) {
        if self.detached {
            step.seal.push((content, payload.to_vec()));
            return;
        }
        let Some((sealer, _)) = self.keys.as_mut() else {
            return;
        };
        if let Ok(rec) = seal_record(sealer, content, payload) {
            step.send.push(rec);
        }
    }
}

/// One record of `content` around `payload` (control path: allocates), in the sealer's
/// format (with its connection ID, if it has one).
pub(crate) fn seal_record(
    sealer: &mut Sealer,
    content: u8,
    payload: &[u8],
) -> Result<Vec<u8>, crate::record::SealError> {
    let off = sealer.payload_offset();
    let mut rec = vec![0u8; off + payload.len() + sealer.trailer_len()];
    rec[off..off + payload.len()].copy_from_slice(payload);
    let n = sealer.seal(content, &mut rec, payload.len())?;
    rec.truncate(n);
    Ok(rec)
}

#[cfg(test)]
mod rekey_tests;
#[cfg(test)]
mod roam_tests;
#[cfg(test)]
mod tests;
