//! Handshake admission: which datagrams of peers without a session may cost the server state,
//! and how much. Plain code without I/O: the demultiplexer passes datagrams in and sends what
//! comes out.
//!
//! - A ClientHello without a valid cookie gets a stateless HelloVerifyRequest and nothing is
//!   kept, so spoofed ClientHellos, however many, take no slot and evict nobody.
//! - A handshake exists only for a peer that echoed its cookie (it receives at its address).
//!   Caps: [`MAX_HANDSHAKES`] in all, [`MAX_HANDSHAKES_PER_PREFIX`] per IPv4 /24 or IPv6 /64
//!   and [`MAX_HANDSHAKES_PER_IP`] per address, so one network cannot hold the table. Where
//!   the address's or the network's cap is reached, a random handshake under it makes room:
//!   a neighbour behind the same NAT can slow others down, never lock them out. When the
//!   whole table is full, the oldest handshake makes room if it has stalled for
//!   [`STALL_TIMEOUT`]; else the IPv4 /16 or IPv6 /48 holding the most slots gives up its
//!   oldest to a newcomer from a network that holds fewer; else the newcomer is refused for
//!   now (no state: its next ClientHello, a second later, asks again).
//! - Each handshake has a budget of [`HANDSHAKE_MAX_DATAGRAMS`] datagrams and
//!   [`HANDSHAKE_MAX_BYTES`] bytes (a real client needs two or three); past it, it is dropped.
//!   Every datagram costs one pass over its records, whatever came before.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;

use crate::consts::{CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_TLS12_CID};
use crate::handshake::{
    self, COOKIE_LEN, ClientHello, Completed, Cookies, HVR_LEN, ServerHandshake, Step,
};
use crate::record::Suite;

/// Proven handshakes kept at once, in all, per /24 or /64, and per address.
pub const MAX_HANDSHAKES: usize = 1024;
pub const MAX_HANDSHAKES_PER_PREFIX: usize = 16;
pub const MAX_HANDSHAKES_PER_IP: usize = 8;
/// A proven handshake older than this may be evicted for a newcomer when the table is full.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(3);
/// A proven handshake not finished by then is dropped (the client starts over).
pub const HANDSHAKE_STATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-handshake budget: a real client sends its ClientHello again and its last flight, a
/// few hundred bytes; retransmissions stay far below.
pub const HANDSHAKE_MAX_DATAGRAMS: u32 = 32;
pub const HANDSHAKE_MAX_BYTES: usize = 16 * 1024;
/// Least time between two resends of our flight to one peer.
pub const FLIGHT_RESEND: Duration = Duration::from_millis(250);

/// A proven handshake and what it has cost so far.
struct Pending {
    hs: ServerHandshake,
    datagrams: u32,
    bytes: usize,
    resent_at: Instant,
}

/// What the demultiplexer should do with a datagram.
pub enum Outcome {
    /// Send `reply` to the peer (a HelloVerifyRequest, our flight, or an alert).
    Reply,
    /// Nothing to send.
    Quiet,
    /// Not a handshake datagram of a peer we know: the caller decides (a session's resent
    /// flight, or an unknown peer).
    NotOurs,
    /// The handshake completed: send its final flight, start the session.
    Completed(Box<Completed>),
    /// The handshake failed; `reply` holds an alert if one is to be sent.
    Failed {
        why: String,
        identity: Vec<u8>,
        alert: bool,
    },
    /// Refused: the table is full of handshakes that are not stalled.
    Refused,
}

/// Counters for the shutdown summary and the status output, shared with whoever reports them
/// (atomics: the demultiplexer counts, another task reads).
#[derive(Default, Debug)]
pub struct AdmissionCounters {
    /// Stateless HelloVerifyRequests sent.
    pub cookies: AtomicU64,
    /// Proven handshakes started.
    pub started: AtomicU64,
    /// Handshakes dropped for a newcomer, over budget, or stalled past the state timeout.
    pub evicted: AtomicU64,
    /// ClientHellos refused because every slot held a live handshake.
    pub limit: AtomicU64,
    pub failed: AtomicU64,
}

/// The values of [`AdmissionCounters`] at one moment.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionTotals {
    pub cookies: u64,
    pub started: u64,
    pub evicted: u64,
    pub limit: u64,
    pub failed: u64,
}

impl AdmissionCounters {
    pub fn snapshot(&self) -> AdmissionTotals {
        AdmissionTotals {
            cookies: self.cookies.load(Relaxed),
            started: self.started.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            limit: self.limit.load(Relaxed),
            failed: self.failed.load(Relaxed),
        }
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

pub struct Admission {
    cookies: Cookies,
    pending: HashMap<SocketAddr, Pending>,
    suites: Vec<Suite>,
    hint: Vec<u8>,
    pub counters: Arc<AdmissionCounters>,
    /// Filled with the bytes to send when an [`Outcome`] says so.
    pub reply: Vec<u8>,
}

/// Whether a datagram belongs to a session rather than to admission: it starts with an
/// application data record, a connection ID record (RFC 9146, always encrypted), or an alert
/// past epoch 0 (epoch 0 alerts belong to a handshake).
pub fn is_session_record(dg: &[u8]) -> bool {
    match dg {
        [CONTENT_APPLICATION_DATA | CONTENT_TLS12_CID, ..] => true,
        [CONTENT_ALERT, _, _, e0, e1, ..] => u16::from_be_bytes([*e0, *e1]) > 0,
        _ => false,
    }
}

/// A uniformly random index below `n` (n > 0), from the system's RNG (cheap enough: it runs
/// only when a cap is reached, which takes a proven address).
fn random_below(n: usize) -> usize {
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    (u64::from_le_bytes(b) % n as u64) as usize
}

/// The handshake under `pick` that started first, and when.
fn oldest(
    pending: &HashMap<SocketAddr, Pending>,
    pick: &dyn Fn(&SocketAddr) -> bool,
) -> Option<(SocketAddr, Instant)> {
    pending
        .iter()
        .filter(|(a, _)| pick(a))
        .min_by_key(|(_, p)| p.hs.started)
        .map(|(a, p)| (*a, p.hs.started))
}

/// The wider network an address belongs to when the whole table is full: its IPv4 /16 or
/// IPv6 /48 (a site's usual allocation).
fn aggregate(ip: IpAddr) -> (u8, u128) {
    match ip {
        IpAddr::V4(v4) => (4, u128::from(u32::from(v4) >> 16)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (4, u128::from(u32::from(v4) >> 16)),
            None => (6, u128::from(v6) >> 80),
        },
    }
}

/// The network an address counts against: its /24 (IPv4, also IPv4-mapped) or /64.
fn prefix(ip: IpAddr) -> (u8, u128) {
    match ip {
        IpAddr::V4(v4) => (4, u128::from(u32::from(v4) >> 8)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (4, u128::from(u32::from(v4) >> 8)),
            None => (6, u128::from(v6) >> 64),
        },
    }
}

impl Admission {
    pub fn new(suites: Vec<Suite>, hint: Vec<u8>, now: Instant) -> Self {
        Admission {
            cookies: Cookies::new(now),
            pending: HashMap::new(),
            suites,
            hint,
            counters: Arc::default(),
            reply: Vec::with_capacity(512),
        }
    }

    /// One datagram from `addr`. `key` gives the PSK of an identity (a dummy for unknown ones).
    pub fn datagram(
        &mut self,
        dg: &[u8],
        addr: SocketAddr,
        now: Instant,
        key: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Outcome {
        self.reply.clear();
        let hello = handshake::parse_client_hello(dg);
        if let Some(p) = self.pending.get_mut(&addr) {
            p.datagrams += 1;
            p.bytes += dg.len();
            if p.datagrams > HANDSHAKE_MAX_DATAGRAMS || p.bytes > HANDSHAKE_MAX_BYTES {
                let identity = p.hs.identity().unwrap_or_default().to_vec();
                self.pending.remove(&addr);
                bump(&self.counters.evicted, 1);
                return Outcome::Failed {
                    why: "it sent more than a handshake's budget".into(),
                    identity,
                    alert: false,
                };
            }
            // A new ClientHello (another random) starts over below; the same one again means
            // our flight was lost.
            let restart = hello
                .as_ref()
                .is_some_and(|ch| ch.random != *p.hs.client_random());
            if !restart {
                return match p.hs.datagram(dg, key) {
                    Step::Wait => Outcome::Quiet,
                    Step::Resend if now.duration_since(p.resent_at) >= FLIGHT_RESEND => {
                        p.resent_at = now;
                        self.reply = p.hs.flight();
                        Outcome::Reply
                    }
                    Step::Resend => Outcome::Quiet,
                    Step::Done(c) => {
                        self.pending.remove(&addr);
                        Outcome::Completed(c)
                    }
                    Step::Failed { alert, why } => {
                        let identity = p.hs.identity().unwrap_or_default().to_vec();
                        if let Some(a) = alert {
                            let seq = p.hs.next_seq();
                            self.reply.extend_from_slice(&handshake::alert(a, seq));
                        }
                        self.pending.remove(&addr);
                        bump(&self.counters.failed, 1);
                        Outcome::Failed {
                            why,
                            identity,
                            alert: alert.is_some(),
                        }
                    }
                };
            }
        }
        let Some(ch) = hello else {
            return Outcome::NotOurs;
        };
        if ch.cookie.is_empty() || !self.cookies.check(addr, &ch.random, ch.cookie) {
            self.hello_verify(&ch, addr);
            return Outcome::Reply;
        }
        self.start(&ch, addr, now)
    }

    fn hello_verify(&mut self, ch: &ClientHello, addr: SocketAddr) {
        let cookie: [u8; COOKIE_LEN] = self.cookies.make(addr, &ch.random);
        let mut hvr = [0u8; HVR_LEN];
        handshake::hello_verify_request(ch, &cookie, &mut hvr);
        self.reply.extend_from_slice(&hvr);
        bump(&self.counters.cookies, 1);
    }

    /// A proven ClientHello: make room under the caps and start its handshake.
    fn start(&mut self, ch: &ClientHello, addr: SocketAddr, now: Instant) -> Outcome {
        self.pending.remove(&addr);
        let net = prefix(addr.ip());
        let same_ip = |a: &SocketAddr| a.ip() == addr.ip();
        let same_net = |a: &SocketAddr| prefix(a.ip()) == net;
        for (cap, pick) in [
            (
                MAX_HANDSHAKES_PER_IP,
                &same_ip as &dyn Fn(&SocketAddr) -> bool,
            ),
            (MAX_HANDSHAKES_PER_PREFIX, &same_net),
        ] {
            let under: Vec<SocketAddr> = self.pending.keys().filter(|a| pick(a)).copied().collect();
            if under.len() < cap {
                continue;
            }
            // One of them at random makes room: whoever shares the address or network (a NAT,
            // a neighbour) can slow the others down but never lock them out, and a burst of
            // real clients from one NAT still gets through in a few rounds.
            let victim = under[random_below(under.len())];
            self.pending.remove(&victim);
            bump(&self.counters.evicted, 1);
        }
        if self.pending.len() >= MAX_HANDSHAKES {
            match self.room_for(addr, now) {
                Some(victim) => {
                    self.pending.remove(&victim);
                    bump(&self.counters.evicted, 1);
                }
                None => {
                    bump(&self.counters.limit, 1);
                    return Outcome::Refused;
                }
            }
        }
        match ServerHandshake::start(ch, &self.suites, &self.hint, now) {
            Ok(mut hs) => {
                self.reply = hs.flight();
                self.pending.insert(
                    addr,
                    Pending {
                        hs,
                        datagrams: 1,
                        bytes: ch.message.len(),
                        resent_at: now,
                    },
                );
                bump(&self.counters.started, 1);
                Outcome::Reply
            }
            Err(alert) => {
                bump(&self.counters.failed, 1);
                self.reply
                    .extend_from_slice(&handshake::alert(alert, ch.record_seq));
                Outcome::Failed {
                    why: "no cipher suite in common or no extended master secret".into(),
                    identity: Vec::new(),
                    alert: true,
                }
            }
        }
    }

    /// Which handshake makes room in a full table for a newcomer from `addr`: the oldest that
    /// has stalled; else the oldest of the network aggregate (IPv4 /16, IPv6 /48) holding the
    /// most slots, if that holds more than the newcomer's own. So a network that fills the
    /// table with fresh handshakes from many of its /24s or /64s gives way to everyone else.
    fn room_for(&self, addr: SocketAddr, now: Instant) -> Option<SocketAddr> {
        if let Some((victim, started)) = oldest(&self.pending, &|_| true)
            && now.duration_since(started) >= STALL_TIMEOUT
        {
            return Some(victim);
        }
        let mut held: HashMap<(u8, u128), usize> = HashMap::new();
        for a in self.pending.keys() {
            *held.entry(aggregate(a.ip())).or_default() += 1;
        }
        let ours = held.get(&aggregate(addr.ip())).copied().unwrap_or(0);
        let (&big, &n) = held.iter().max_by_key(|(_, n)| **n)?;
        if n <= ours + 1 {
            return None;
        }
        oldest(&self.pending, &|a| aggregate(a.ip()) == big).map(|(a, _)| a)
    }

    /// Rotates the cookie secret and drops handshakes past [`HANDSHAKE_STATE_TIMEOUT`];
    /// returns how many were dropped.
    pub fn sweep(&mut self, now: Instant) -> usize {
        self.cookies.rotate_if_due(now);
        let before = self.pending.len();
        self.pending
            .retain(|_, p| now.duration_since(p.hs.started) < HANDSHAKE_STATE_TIMEOUT);
        let gone = before - self.pending.len();
        bump(&self.counters.evicted, gone as u64);
        gone
    }
}

#[cfg(test)]
mod tests;
