//! The client's status board: its state (connecting, up, backing off), the session that is
//! up and the totals of those that ended, published at each change and read by `dtun status`
//! and `-metrics` (a mutex taken at each change of state and by readers, never per packet).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::status::{self, ClientView, Clock, SessionView, Traffic, TunnelView};
use dtun_proto::inbound::Counters;
use dtun_proto::record::Suite;

/// A client session that is up, as the board keeps it.
pub struct LiveSession {
    pub counters: Arc<Counters>,
    pub suite: Suite,
    pub device: String,
    pub local_ip: Ipv4Addr,
    pub peer_ip: Ipv4Addr,
    /// The IPv6 pair (local, peer) when the tunnel has one.
    pub ip6: Option<(std::net::Ipv6Addr, std::net::Ipv6Addr)>,
    pub started: Instant,
    /// Negotiated (the server said Hello) and the period; None: not a dtun server, or -compat.
    pub keepalive: Option<Duration>,
    /// Rekeying, as the session's loop keeps it.
    pub rekey: Arc<RekeyCell>,
}

/// A live session's rekeying, for status: whether it is on, and the epoch and time of the
/// last rekey (the client's forwarding loop writes it).
#[derive(Default)]
pub struct RekeyCell {
    pub on: bool,
    last: std::sync::Mutex<(u16, Option<Instant>)>,
    /// The session roams, and how often the client re-bound its socket.
    pub roam: bool,
    rebinds: std::sync::atomic::AtomicU64,
}

impl RekeyCell {
    pub fn new(on: bool, roam: bool) -> RekeyCell {
        RekeyCell {
            on,
            last: std::sync::Mutex::new((1, None)),
            roam,
            rebinds: Default::default(),
        }
    }

    pub fn rebound(&self) {
        self.rebinds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn roaming(&self) -> status::RoamingView {
        status::RoamingView {
            on: self.roam,
            moves: self.rebinds.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub fn rekeyed(&self, epoch: u16) {
        if let Ok(mut l) = self.last.lock() {
            *l = (epoch, Some(Instant::now()));
        }
    }

    fn get(&self) -> (u16, Option<Instant>) {
        self.last.lock().map(|l| *l).unwrap_or((1, None))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Up,
    BackingOff { until: Instant },
}

struct Board {
    instance: String,
    id: String,
    host: String,
    server: Option<SocketAddr>,
    state: State,
    since: Instant,
    last_error: Option<String>,
    session: Option<LiveSession>,
    sessions: u64,
    /// Sessions that ended, added up.
    past: Traffic,
    /// Authenticated records seen at the last sample, and when that count last moved.
    seen: (u64, Instant),
    /// What `-route` sends through the tunnel, and what it keeps out.
    routes: (Vec<String>, Vec<String>),
    /// The DNS servers in place, and how they were set.
    dns: (Vec<std::net::IpAddr>, Option<&'static str>),
}

/// The client's state, published at each change for `dtun status` and `-metrics`.
pub struct ClientBoard(Mutex<Board>);

impl ClientBoard {
    pub fn new(instance: &str, id: &str, host: &str) -> ClientBoard {
        let now = Instant::now();
        ClientBoard(Mutex::new(Board {
            instance: instance.to_string(),
            id: id.to_string(),
            host: host.to_string(),
            server: None,
            state: State::Connecting,
            since: now,
            last_error: None,
            session: None,
            sessions: 0,
            past: Traffic::zero(),
            seen: (0, now),
            routes: Default::default(),
            dns: Default::default(),
        }))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Board) -> R) -> R {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut b)
    }

    fn set_state(b: &mut Board, s: State) {
        if b.state != s {
            b.state = s;
            b.since = Instant::now();
        }
    }

    /// What `-route` sends through the tunnel and what `-exclude` keeps out (set once).
    pub fn routes(&self, through: Vec<String>, excluded: Vec<String>) {
        self.with(|b| b.routes = (through, excluded));
    }

    /// The DNS servers in place now, and how they were set (`dtun_linux::dns::Watcher`).
    pub fn dns(&self, servers: &[std::net::IpAddr], via: Option<&'static str>) {
        self.with(|b| b.dns = (servers.to_vec(), via));
    }

    /// A new try starts.
    pub fn connecting(&self) {
        self.with(|b| Self::set_state(b, State::Connecting));
    }

    /// The server of `-host` this try goes to, and its address once resolved.
    pub fn server(&self, host: &str, addr: Option<SocketAddr>) {
        self.with(|b| {
            host.clone_into(&mut b.host);
            b.server = addr;
        });
    }

    /// The tunnel is up and forwarding.
    pub fn up(&self, s: LiveSession) {
        self.with(|b| {
            b.seen = (s.counters.authenticated(), Instant::now());
            b.session = Some(s);
            b.sessions += 1;
            Self::set_state(b, State::Up);
        });
    }

    /// The session (if one was up) ended; its counters go to the totals.
    pub fn ended(&self) {
        self.with(|b| {
            if let Some(s) = b.session.take() {
                b.past.add(&Traffic::of(&s.counters));
            }
        });
    }

    /// The last try failed with `error`; the next starts after `delay`.
    pub fn backing_off(&self, delay: Duration, error: String) {
        self.with(|b| {
            Self::set_state(
                b,
                State::BackingOff {
                    until: Instant::now() + delay,
                },
            );
            b.last_error = Some(error);
        });
    }

    pub(super) fn sample(&self) {
        self.with(|b| {
            if let Some(s) = &b.session {
                let n = s.counters.authenticated();
                if n != b.seen.0 {
                    b.seen = (n, Instant::now());
                }
            }
        });
    }

    pub fn view(&self, clock: Clock) -> ClientView {
        self.sample();
        self.with(|b| {
            let tunnel = b.session.as_ref().map(|s| {
                let keepalive =
                    status::Keepalive::new(s.keepalive.is_some(), s.keepalive.unwrap_or_default());
                let (epoch, rekeyed_at) = s.rekey.get();
                let keys_since = rekeyed_at.unwrap_or(s.started);
                TunnelView {
                    device: s.device.clone(),
                    local_ip: s.local_ip,
                    peer_ip: s.peer_ip,
                    local_ip6: s.ip6.map(|p| p.0),
                    peer_ip6: s.ip6.map(|p| p.1),
                    session: SessionView {
                        cipher: s.suite.name(),
                        started: clock.unix(s.started),
                        started_age: clock.age(s.started),
                        last_handshake: clock.unix(keys_since),
                        last_handshake_age: clock.age(keys_since),
                        last_authenticated: clock.unix(b.seen.1),
                        last_authenticated_age: clock.age(b.seen.1),
                        keepalive,
                        rekey: status::RekeyView::new(s.rekey.on, epoch),
                        roaming: s.rekey.roaming(),
                    },
                    traffic: Traffic::of(&s.counters),
                }
            });
            let traffic = match &tunnel {
                Some(t) => b.past.clone().plus(&t.traffic),
                None => b.past.clone(),
            };
            let (state, until) = match b.state {
                State::Connecting => ("connecting", None),
                State::Up => ("up", None),
                State::BackingOff { until } => ("backing_off", Some(until)),
            };
            ClientView {
                role: "client",
                instance: b.instance.clone(),
                version: env!("CARGO_PKG_VERSION"),
                pid: std::process::id(),
                now: clock.unix_now(),
                id: b.id.clone(),
                server_host: b.host.clone(),
                server_address: b.server.map(|a| a.to_string()),
                state,
                state_since: clock.unix(b.since),
                state_since_age: clock.age(b.since),
                backoff_until: until.map(|t| clock.unix(t)),
                backoff_until_in: until.map(|t| clock.until(t)),
                last_error: b.last_error.clone(),
                sessions_started: b.sessions,
                tunnel,
                routes: b.routes.0.clone(),
                excluded: b.routes.1.clone(),
                dns: b.dns.0.iter().map(ToString::to_string).collect(),
                dns_via: b.dns.1,
                traffic,
            }
        })
    }
}
