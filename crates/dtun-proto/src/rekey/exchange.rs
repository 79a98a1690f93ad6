//! The rekey exchange of each role, without I/O: when the client starts one, how it retries and
//! gives up, how the server answers (once per epoch: a repeated Init gets the same Reply), and
//! what each side then installs. The sessions of both roles hold one of these each and turn
//! its outputs into records and events.
//!
//! The client counts an epoch's age only while it carries traffic (the caller says when
//! records flow, [`ClientRekey::traffic`]), so an idle client is never woken to rekey; the
//! caller can also ask for one at once ([`ClientRekey::soon`]: a usage limit of the suite or
//! the sequence space is near).

use std::time::{Duration, Instant};

use ring::rand::SecureRandom;

use super::hybrid::{Initiator, respond};
use super::message::{
    Fragment, Kind, MAX_FRAGMENT, Reassembly, fragments, init_message, parse_init, parse_reply,
    reply_message,
};
use super::{EpochSecret, RekeyError};
use crate::kdf::KeyBlock;

/// How often a client rekeys by default (an epoch's age in time that carried traffic).
pub const REKEY_INTERVAL: Duration = Duration::from_secs(120);
/// How long the client waits for a Reply before sending its Init again.
pub const REKEY_RETRY: Duration = Duration::from_secs(1);
/// A gap in traffic longer than this does not count towards an epoch's age.
pub const IDLE_GAP: Duration = Duration::from_secs(10);
/// How long after a rekey the previous epoch's read key is still used (records in flight
/// at the switch), then dropped: a bounded window for it, for forward secrecy and forgers.
pub const EPOCH_OVERLAP: Duration = Duration::from_secs(20);
/// The last epoch a session rekeys into; past it the session handshakes again (the epoch
/// field is 16 bits and must not wrap).
pub const LAST_EPOCH: u16 = u16::MAX - 1;

/// A new epoch's keys, for the caller's record layer.
#[derive(Debug)]
pub struct NewEpoch {
    pub epoch: u16,
    pub keys: KeyBlock,
}

/// What the client's side wants after a call.
#[derive(Debug, Default)]
pub struct ClientOut {
    /// Control messages (fragments) to send, in order.
    pub send: Vec<Vec<u8>>,
    /// The exchange completed: read `epoch` with `keys.server_*` and send with
    /// `keys.client_*` from now on (the server has them already); keep the old read key for a
    /// short overlap.
    pub rekeyed: Option<NewEpoch>,
    /// The server never answered within the give-up time: treat it like a dead peer.
    pub gave_up: bool,
    /// The last epoch is reached: close and handshake again.
    pub exhausted: bool,
}

/// The client's side.
pub struct ClientRekey {
    interval: Duration,
    give_up: Duration,
    fragment: usize,
    secret: EpochSecret,
    /// Time of this epoch that carried traffic, and when traffic last came.
    active: Duration,
    last_traffic: Option<Instant>,
    /// Rekey at the next chance, whatever the epoch's age.
    soon: bool,
    pending: Option<Pending>,
    reassembly: Reassembly,
    /// Tests only: each exchange's epoch and shared secrets (X25519, ML-KEM), for the proof
    /// that a capture stays closed to whoever lacks one of them.
    #[cfg(any(test, feature = "test-util"))]
    pub revealed: Vec<(u16, [u8; 32], [u8; 32])>,
}

struct Pending {
    initiator: Initiator,
    init: Vec<u8>,
    epoch: u16,
    started: Instant,
    sent_at: Instant,
}

impl ClientRekey {
    /// After the handshake (`epoch1` is its exporter secret); `give_up`: how long an exchange
    /// may go unanswered (the session's dead-peer time).
    pub fn new(epoch1: EpochSecret, interval: Duration, give_up: Duration) -> ClientRekey {
        let next = epoch1.epoch().saturating_add(1);
        ClientRekey {
            interval,
            give_up,
            fragment: MAX_FRAGMENT,
            secret: epoch1,
            active: Duration::ZERO,
            last_traffic: None,
            soon: false,
            pending: None,
            reassembly: Reassembly::new(Kind::Reply, next),
            #[cfg(any(test, feature = "test-util"))]
            revealed: Vec::new(),
        }
    }

    /// Fragments of at most `n` data bytes (a path that is known to be small).
    pub fn with_fragment(mut self, n: usize) -> ClientRekey {
        self.fragment = n.clamp(1, MAX_FRAGMENT);
        self
    }

    /// The current epoch.
    pub fn epoch(&self) -> u16 {
        self.secret.epoch()
    }

    /// Records flowed (either way) at `now`: the epoch's age grows by the time since the
    /// last traffic, unless that gap was idle.
    pub fn traffic(&mut self, now: Instant) {
        if let Some(last) = self.last_traffic {
            let gap = now.saturating_duration_since(last);
            if gap <= IDLE_GAP {
                self.active += gap;
            }
        }
        self.last_traffic = Some(now);
    }

    /// Rekey at the next chance (a usage limit is near).
    pub fn soon(&mut self) {
        self.soon = true;
    }

    /// When [`ClientRekey::timeout`] has something to do: a retry or the give-up of an
    /// exchange in flight. A due rekey waits for traffic ([`ClientRekey::due`]).
    pub fn next_timeout(&self) -> Option<Instant> {
        let p = self.pending.as_ref()?;
        Some((p.sent_at + REKEY_RETRY).min(p.started + self.give_up))
    }

    /// Whether a rekey should start now.
    pub fn due(&self) -> bool {
        self.pending.is_none() && (self.soon || self.active >= self.interval)
    }

    /// Starts an exchange when one is due: the Init's fragments to send.
    pub fn start(&mut self, now: Instant, rng: &dyn SecureRandom) -> Result<ClientOut, RekeyError> {
        if !self.due() {
            return Ok(ClientOut::default());
        }
        if self.secret.epoch() >= LAST_EPOCH {
            return Ok(ClientOut {
                exhausted: true,
                ..ClientOut::default()
            });
        }
        let epoch = self.secret.epoch() + 1;
        let initiator = Initiator::new(rng)?;
        let init = init_message(epoch, initiator.share());
        let send = fragments(Kind::Init, epoch, &init, self.fragment);
        self.pending = Some(Pending {
            initiator,
            init,
            epoch,
            started: now,
            sent_at: now,
        });
        self.reassembly = Reassembly::new(Kind::Reply, epoch);
        Ok(ClientOut {
            send,
            ..ClientOut::default()
        })
    }

    /// The timer: the Init again after REKEY_RETRY, or give up after the give-up time.
    pub fn timeout(&mut self, now: Instant) -> ClientOut {
        let Some(p) = self.pending.as_mut() else {
            return ClientOut::default();
        };
        if now >= p.started + self.give_up {
            self.pending = None;
            return ClientOut {
                gave_up: true,
                ..ClientOut::default()
            };
        }
        if now >= p.sent_at + REKEY_RETRY {
            p.sent_at = now;
            return ClientOut {
                send: fragments(Kind::Init, p.epoch, &p.init, self.fragment),
                ..ClientOut::default()
            };
        }
        ClientOut::default()
    }

    /// A rekey fragment from the server. A Reply for the exchange in flight completes it;
    /// anything else (an Init, another epoch, no exchange in flight, a bad share) is a drop
    /// (`Err`), and the exchange goes on.
    pub fn fragment(&mut self, now: Instant, f: &Fragment) -> Result<ClientOut, RekeyError> {
        let Some(p) = self.pending.as_ref() else {
            return Err(RekeyError::Unexpected);
        };
        if f.kind != Kind::Reply || f.epoch != p.epoch {
            return Err(RekeyError::Unexpected);
        }
        let Some(reply) = self.reassembly.add(f) else {
            return Ok(ClientOut::default());
        };
        let (epoch, share) = parse_reply(&reply)?;
        if epoch != p.epoch {
            return Err(RekeyError::Unexpected);
        }
        let p = self.pending.take().ok_or(RekeyError::Unexpected)?;
        // A bad share ends this exchange: the next one starts when due.
        let shared = p.initiator.finish(&share)?;
        #[cfg(any(test, feature = "test-util"))]
        self.revealed.push((epoch, shared.x25519, shared.mlkem));
        let next = self
            .secret
            .next(&shared, &p.init, &reply)
            .ok_or(RekeyError::Unexpected)?;
        let keys = next.keys();
        self.secret = next;
        self.active = Duration::ZERO;
        self.last_traffic = Some(now);
        self.soon = false;
        Ok(ClientOut {
            rekeyed: Some(NewEpoch { epoch, keys }),
            ..ClientOut::default()
        })
    }
}

/// What the server's side wants after a fragment.
#[derive(Debug, Default)]
pub struct ServerOut {
    /// The Reply's fragments to send (the current epoch's keys: the client reads them with
    /// the old key until it has the new one).
    pub send: Vec<Vec<u8>>,
    /// The next epoch's keys: read `epoch` with `keys.client_*` from now on; send with
    /// `keys.server_*` once a record of that epoch came from the client (it has them then).
    pub next: Option<NewEpoch>,
}

/// The server's side.
pub struct ServerRekey {
    fragment: usize,
    secret: EpochSecret,
    reassembly: Reassembly,
    /// The last Reply's fragments and its epoch: an Init repeated (the Reply was lost) gets
    /// them again, never a second exchange for one epoch.
    last: Option<(u16, Vec<Vec<u8>>)>,
}

impl ServerRekey {
    pub fn new(epoch1: EpochSecret) -> ServerRekey {
        let next = epoch1.epoch().saturating_add(1);
        ServerRekey {
            fragment: MAX_FRAGMENT,
            secret: epoch1,
            reassembly: Reassembly::new(Kind::Init, next),
            last: None,
        }
    }

    /// Fragments of at most `n` data bytes.
    pub fn with_fragment(mut self, n: usize) -> ServerRekey {
        self.fragment = n.clamp(1, MAX_FRAGMENT);
        self
    }

    /// The newest epoch whose keys we have.
    pub fn epoch(&self) -> u16 {
        self.secret.epoch()
    }

    /// A rekey fragment from the client. An Init for the next epoch is answered once, and its
    /// keys come out; the same Init again gets the same Reply; anything else is a drop.
    pub fn fragment(
        &mut self,
        f: &Fragment,
        rng: &dyn SecureRandom,
    ) -> Result<ServerOut, RekeyError> {
        if f.kind != Kind::Init {
            return Err(RekeyError::Unexpected);
        }
        let current = self.secret.epoch();
        if f.epoch == current
            && let Some((epoch, reply)) = &self.last
            && *epoch == current
        {
            // Our Reply was lost: the same Reply again, once per Init repeated (at its first
            // fragment).
            if f.offset == 0 {
                return Ok(ServerOut {
                    send: reply.clone(),
                    next: None,
                });
            }
            return Ok(ServerOut::default());
        }
        if f.epoch != current.wrapping_add(1) || current >= LAST_EPOCH {
            return Err(RekeyError::Unexpected);
        }
        let Some(init) = self.reassembly.add(f) else {
            return Ok(ServerOut::default());
        };
        let (epoch, share) = parse_init(&init)?;
        // The message names the epoch its fragments did (the fuzzer found an Init whose body
        // named another: keys would have been announced for an epoch they are not).
        if epoch != f.epoch {
            return Err(RekeyError::Malformed);
        }
        let (reply_share, shared) = respond(&share, rng)?;
        let reply = reply_message(epoch, &reply_share);
        let next = self
            .secret
            .next(&shared, &init, &reply)
            .ok_or(RekeyError::Unexpected)?;
        let keys = next.keys();
        self.secret = next;
        let send = fragments(Kind::Reply, epoch, &reply, self.fragment);
        self.last = Some((epoch, send.clone()));
        self.reassembly = Reassembly::new(Kind::Init, epoch.wrapping_add(1));
        Ok(ServerOut {
            send,
            next: Some(NewEpoch { epoch, keys }),
        })
    }
}

impl std::fmt::Debug for ServerRekey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerRekey {{ epoch: {}, .. }}", self.secret.epoch())
    }
}

impl std::fmt::Debug for ClientRekey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = self.pending.as_ref().map(|p| p.epoch);
        write!(
            f,
            "ClientRekey {{ epoch: {}, pending: {pending:?}, .. }}",
            self.secret.epoch()
        )
    }
}
