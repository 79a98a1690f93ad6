//! What `dtun status` shows: a snapshot of a running dtun, server or client. Its JSON is the
//! stable shape documented in `docs/STATUS.md` (snake_case names; a time `x` is unix seconds,
//! `x_age` how many seconds ago it was, `x_in` how many seconds until it comes); its human
//! view is aligned like `wg show`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use dtun_proto::inbound::{Counters, DropKind};

/// One reading of the clocks, so every time in a snapshot is relative to the same moment.
#[derive(Clone, Copy)]
pub struct Clock {
    now: Instant,
    unix: u64,
}

impl Clock {
    pub fn now() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Clock {
            now: Instant::now(),
            unix,
        }
    }

    pub fn unix_now(&self) -> u64 {
        self.unix
    }

    /// Unix seconds of `t` (past or future).
    pub fn unix(&self, t: Instant) -> u64 {
        if t <= self.now {
            self.unix
                .saturating_sub(self.now.duration_since(t).as_secs())
        } else {
            self.unix + t.duration_since(self.now).as_secs()
        }
    }

    /// Whole seconds since `t` (0 for a time to come).
    pub fn age(&self, t: Instant) -> u64 {
        self.now.saturating_duration_since(t).as_secs()
    }

    /// Whole seconds until `t` (0 once it passed), rounded up.
    pub fn until(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.now);
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }
}

/// Traffic counters: what a session (or several, added up) carried and dropped.
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// Every reason, also those at 0 (the set of keys is stable).
    pub drops: BTreeMap<&'static str, u64>,
}

impl Traffic {
    /// All zero, with every drop reason present.
    pub fn zero() -> Traffic {
        Traffic {
            drops: DropKind::all().map(|d| (d.as_str(), 0)).collect(),
            ..Default::default()
        }
    }

    /// The counters' values now.
    pub fn of(c: &Counters) -> Traffic {
        use std::sync::atomic::Ordering::Relaxed;
        Traffic {
            rx_bytes: c.rx_bytes.load(Relaxed),
            rx_packets: c.rx_packets.load(Relaxed),
            tx_bytes: c.tx_bytes.load(Relaxed),
            tx_packets: c.tx_packets.load(Relaxed),
            drops: DropKind::all().map(|d| (d.as_str(), c.drops(d))).collect(),
        }
    }

    pub fn add(&mut self, o: &Traffic) {
        self.rx_bytes += o.rx_bytes;
        self.rx_packets += o.rx_packets;
        self.tx_bytes += o.tx_bytes;
        self.tx_packets += o.tx_packets;
        for (k, v) in &o.drops {
            *self.drops.entry(k).or_insert(0) += v;
        }
    }

    pub fn plus(mut self, o: &Traffic) -> Traffic {
        self.add(o);
        self
    }
}

/// Keepalive between the peers.
#[derive(Serialize, Clone, Debug)]
pub struct Keepalive {
    /// The peer is a dtun peer (it said Hello): control messages and keepalive are possible.
    pub negotiated: bool,
    /// The period in use, 0 when off.
    pub period_seconds: f64,
    /// Silence after which the session is taken for dead; None when keepalive is off.
    pub dead_after_seconds: Option<f64>,
}

impl Keepalive {
    pub fn new(negotiated: bool, period: Duration) -> Keepalive {
        let on = negotiated && !period.is_zero();
        Keepalive {
            negotiated,
            period_seconds: if on { period.as_secs_f64() } else { 0.0 },
            dead_after_seconds: on
                .then(|| (period * dtun_proto::consts::KEEPALIVE_MISSES).as_secs_f64()),
        }
    }
}

/// Rekeying between the peers (`-rekey`).
#[derive(Serialize, Clone, Debug)]
pub struct RekeyView {
    /// Both peers rekey (both Hellos offered it).
    pub on: bool,
    /// The epoch of the keys in use (1: the handshake's).
    pub epoch: u16,
    /// The keys in use come from a hybrid X25519 + ML-KEM-768 exchange: forward secret, also
    /// against a quantum computer (the handshake's keys come from the PSK alone).
    pub post_quantum: bool,
}

impl RekeyView {
    pub fn new(on: bool, epoch: u16) -> RekeyView {
        RekeyView {
            on,
            epoch,
            post_quantum: epoch > 1,
        }
    }
}

/// A live session, as both roles show it.
#[derive(Serialize, Clone, Debug)]
pub struct SessionView {
    pub cipher: &'static str,
    /// When this session began (its first handshake; rekeying does not move it).
    pub started: u64,
    pub started_age: u64,
    /// When its keys last changed: the handshake, or the last rekey.
    pub last_handshake: u64,
    pub last_handshake_age: u64,
    /// The last record whose tag verified (data, control or alert), to within a second.
    pub last_authenticated: u64,
    pub last_authenticated_age: u64,
    pub keepalive: Keepalive,
    pub rekey: RekeyView,
    pub roaming: RoamingView,
}

/// Roaming (RFC 9146 connection IDs): the session follows its client to a new address.
#[derive(Serialize, Clone, Debug)]
pub struct RoamingView {
    /// The client's records carry a connection ID: the session survives its address change.
    pub on: bool,
    /// How often it moved: the server counts moves to a new address, the client re-binds.
    pub moves: u64,
}

/// A client id with a live session, on the server.
#[derive(Serialize, Clone, Debug)]
pub struct PeerView {
    pub id: String,
    pub endpoint: String,
    pub device: String,
    pub local_ip: Ipv4Addr,
    pub peer_ip: Ipv4Addr,
    /// The IPv6 pair (`-pool6`), null when the tunnel has no IPv6.
    pub local_ip6: Option<Ipv6Addr>,
    pub peer_ip6: Option<Ipv6Addr>,
    /// The client's LAN routes through its device.
    pub routes: Vec<String>,
    /// When the id's device was made (its first session since).
    pub connected_since: u64,
    pub connected_since_age: u64,
    pub session: SessionView,
    /// Since the device was made, across its sessions.
    pub traffic: Traffic,
}

/// A device without a session, kept for `-linger`.
#[derive(Serialize, Clone, Debug)]
pub struct LingeringView {
    pub id: String,
    pub device: String,
    pub local_ip: Ipv4Addr,
    pub peer_ip: Ipv4Addr,
    /// The IPv6 pair (`-pool6`), null when the tunnel has no IPv6.
    pub local_ip6: Option<Ipv6Addr>,
    pub peer_ip6: Option<Ipv6Addr>,
    pub idle_since: u64,
    pub idle_since_age: u64,
    pub expires: u64,
    pub expires_in: u64,
    pub traffic: Traffic,
}

/// What the server saw before sessions: handshake admission (`AdmissionCounters`) and more.
#[derive(Serialize, Clone, Debug, Default)]
pub struct AdmissionView {
    /// Stateless cookies (HelloVerifyRequest) sent.
    pub cookies: u64,
    /// Handshakes started from a proven address.
    pub handshakes: u64,
    pub handshake_failed: u64,
    pub handshake_evicted: u64,
    /// ClientHellos refused: every handshake slot was busy.
    pub handshake_limit: u64,
    /// Datagrams from addresses without a session that started no handshake.
    pub unknown_peer: u64,
    /// Session events lost to a full queue.
    pub events_dropped: u64,
    /// New ids turned away at `-max-clients`.
    pub refused_max_clients: u64,
}

#[derive(Serialize, Clone, Debug)]
pub struct ServerView {
    pub role: &'static str,
    pub instance: String,
    pub version: &'static str,
    pub pid: u32,
    pub now: u64,
    pub listen: String,
    pub pool: String,
    /// `-pool6`, null when off.
    pub pool6: Option<String>,
    /// `-nat`.
    pub nat: bool,
    /// `-client-to-client`: `on`, `off`, or null (left to the host).
    pub client_to_client: Option<&'static str>,
    /// `-dns`: the servers pushed to dtun clients.
    pub dns: Vec<String>,
    pub clients: Vec<PeerView>,
    pub lingering: Vec<LingeringView>,
    pub admission: AdmissionView,
    /// Every session since the server started.
    pub traffic: Traffic,
}

/// The client's tunnel while a session is up.
#[derive(Serialize, Clone, Debug)]
pub struct TunnelView {
    pub device: String,
    pub local_ip: Ipv4Addr,
    pub peer_ip: Ipv4Addr,
    /// The IPv6 pair (`-pool6`), null when the tunnel has no IPv6.
    pub local_ip6: Option<Ipv6Addr>,
    pub peer_ip6: Option<Ipv6Addr>,
    pub session: SessionView,
    /// This session's.
    pub traffic: Traffic,
}

#[derive(Serialize, Clone, Debug)]
pub struct ClientView {
    pub role: &'static str,
    pub instance: String,
    pub version: &'static str,
    pub pid: u32,
    pub now: u64,
    pub id: String,
    /// The server of `-host` this session or try goes to (`host:port`).
    pub server_host: String,
    /// What it resolved to last (None before the first resolution).
    pub server_address: Option<String>,
    /// `connecting`, `up` or `backing_off`.
    pub state: &'static str,
    pub state_since: u64,
    pub state_since_age: u64,
    /// When backing off: when the next try starts.
    pub backoff_until: Option<u64>,
    pub backoff_until_in: Option<u64>,
    /// Why the last session failed or ended, if one did.
    pub last_error: Option<String>,
    pub sessions_started: u64,
    pub tunnel: Option<TunnelView>,
    /// What `-route` sends through the tunnel (empty without it) and keeps out (`-exclude`).
    pub routes: Vec<String>,
    pub excluded: Vec<String>,
    /// The DNS servers dtun put in place, and how (`systemd-resolved`, `resolv.conf`; null
    /// when none).
    pub dns: Vec<String>,
    pub dns_via: Option<&'static str>,
    /// Every session since the client started.
    pub traffic: Traffic,
}

/// A snapshot of either role.
#[derive(Serialize, Clone, Debug)]
#[serde(untagged)]
pub enum Status {
    // Boxed: the views differ in size, and a snapshot is made once per request.
    Server(Box<ServerView>),
    Client(Box<ClientView>),
}

impl Status {
    pub fn json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    pub fn human(&self) -> String {
        match self {
            Status::Server(v) => human_server(v),
            Status::Client(v) => human_client(v),
        }
    }
}

/// `12 s`, `5 min`, `3 h 20 min`, `4 days`.
pub fn span(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        7200..172_800 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} days", secs / 86_400),
    }
}

/// `812 B`, `1.50 KiB`, `12.3 MiB`, `4.01 GiB`.
pub fn bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if n < 1024 {
        format!("{n} B")
    } else if f < K * K {
        format!("{:.2} KiB", f / K)
    } else if f < K * K * K {
        format!("{:.2} MiB", f / (K * K))
    } else {
        format!("{:.2} GiB", f / (K * K * K))
    }
}

/// `09:52:13 UTC` of a unix time.
pub fn time_of_day(unix: u64) -> String {
    let s = unix % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s % 3600 / 60, s % 60)
}

/// Label column width of the human view.
const W: usize = 20;

fn line(out: &mut String, label: &str, value: &str) {
    let _ = writeln!(out, "  {:<W$}{value}", format!("{label}:"));
}

/// `1 packet`, `2 packets`.
fn packets(n: u64) -> String {
    if n == 1 {
        "1 packet".to_string()
    } else {
        format!("{n} packets")
    }
}

fn traffic_lines(out: &mut String, t: &Traffic) {
    line(
        out,
        "transfer",
        &format!(
            "{} received ({}), {} sent ({})",
            bytes(t.rx_bytes),
            packets(t.rx_packets),
            bytes(t.tx_bytes),
            packets(t.tx_packets)
        ),
    );
    let drops: Vec<String> = t
        .drops
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let drops = if drops.is_empty() {
        "none".to_string()
    } else {
        drops.join(", ")
    };
    line(out, "drops", &drops);
}

fn session_lines(out: &mut String, s: &SessionView) {
    line(out, "session", &format!("up for {}", span(s.started_age)));
    line(out, "cipher", s.cipher);
    line(
        out,
        "latest handshake",
        &format!("{} ago", span(s.last_handshake_age)),
    );
    line(
        out,
        "latest record",
        &format!("{} ago", span(s.last_authenticated_age)),
    );
    let k = &s.keepalive;
    let keepalive = match k.dead_after_seconds {
        Some(dead) => format!(
            "every {} (dead after {} of silence)",
            span(k.period_seconds.round() as u64),
            span(dead.round() as u64)
        ),
        None if !k.negotiated => "off (peer speaks no control messages)".to_string(),
        None => "off".to_string(),
    };
    line(out, "keepalive", &keepalive);
    let r = &s.rekey;
    let rekey = match (r.on, r.post_quantum) {
        (false, _) => "off".to_string(),
        (true, false) => "on, epoch 1 (the handshake's keys)".to_string(),
        (true, true) => format!(
            "on, epoch {} (X25519 + ML-KEM-768: post-quantum, forward secret)",
            r.epoch
        ),
    };
    line(out, "rekey", &rekey);
    let roaming = match (s.roaming.on, s.roaming.moves) {
        (false, _) => "off".to_string(),
        (true, 0) => "on".to_string(),
        (true, 1) => "on, moved once".to_string(),
        (true, n) => format!("on, moved {n} times"),
    };
    line(out, "roaming", &roaming);
}

fn human_server(v: &ServerView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "server: {} (pid {})", v.instance, v.pid);
    line(&mut out, "listening on", &v.listen);
    line(&mut out, "pool", &v.pool);
    line(&mut out, "pool6", v.pool6.as_deref().unwrap_or("off"));
    line(&mut out, "nat", if v.nat { "on" } else { "off" });
    line(
        &mut out,
        "client-to-client",
        v.client_to_client.unwrap_or("left to the host"),
    );
    if !v.dns.is_empty() {
        line(&mut out, "dns pushed", &v.dns.join(", "));
    }
    line(
        &mut out,
        "clients",
        &format!(
            "{} connected, {} lingering",
            v.clients.len(),
            v.lingering.len()
        ),
    );
    let a = &v.admission;
    line(
        &mut out,
        "handshakes",
        &format!(
            "{} started, {} failed, {} evicted, {} refused at the limit",
            a.handshakes, a.handshake_failed, a.handshake_evicted, a.handshake_limit
        ),
    );
    line(
        &mut out,
        "before handshakes",
        &format!(
            "{} cookies sent, {} unknown-peer datagrams, {} refused at -max-clients",
            a.cookies, a.unknown_peer, a.refused_max_clients
        ),
    );
    traffic_lines(&mut out, &v.traffic);
    for c in &v.clients {
        let _ = writeln!(out, "\nclient: {}", c.id);
        line(&mut out, "endpoint", &c.endpoint);
        line(
            &mut out,
            "device",
            &device_line(&c.device, c.local_ip, c.peer_ip, c.local_ip6, c.peer_ip6),
        );
        if !c.routes.is_empty() {
            line(&mut out, "routes", &c.routes.join(", "));
        }
        line(
            &mut out,
            "device made",
            &format!("{} ago", span(c.connected_since_age)),
        );
        session_lines(&mut out, &c.session);
        traffic_lines(&mut out, &c.traffic);
    }
    for l in &v.lingering {
        let _ = writeln!(out, "\nlingering: {}", l.id);
        line(
            &mut out,
            "device",
            &device_line(&l.device, l.local_ip, l.peer_ip, l.local_ip6, l.peer_ip6),
        );
        line(
            &mut out,
            "idle since",
            &format!("{} ago", span(l.idle_since_age)),
        );
        line(&mut out, "removed in", &span(l.expires_in));
        traffic_lines(&mut out, &l.traffic);
    }
    out
}

/// `dtun0 (local A, peer B; IPv6 local A6, peer B6)`.
fn device_line(
    device: &str,
    local: Ipv4Addr,
    peer: Ipv4Addr,
    local6: Option<Ipv6Addr>,
    peer6: Option<Ipv6Addr>,
) -> String {
    match (local6, peer6) {
        (Some(l6), Some(p6)) => {
            format!("{device} (local {local}, peer {peer}; IPv6 local {l6}, peer {p6})")
        }
        _ => format!("{device} (local {local}, peer {peer})"),
    }
}

fn human_client(v: &ClientView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "client: {} (id {}, pid {})", v.instance, v.id, v.pid);
    let server = match &v.server_address {
        Some(a) if *a != v.server_host => format!("{} ({a})", v.server_host),
        _ => v.server_host.clone(),
    };
    line(&mut out, "server", &server);
    let state = match (v.state, v.backoff_until, v.backoff_until_in) {
        ("backing_off", Some(t), Some(s)) => format!(
            "backing off until {} (next try in {})",
            time_of_day(t),
            span(s)
        ),
        ("up", ..) => format!("up for {}", span(v.state_since_age)),
        (s, ..) => format!("{s} for {}", span(v.state_since_age)),
    };
    line(&mut out, "state", &state);
    if let Some(e) = &v.last_error {
        line(&mut out, "last error", e);
    }
    line(&mut out, "sessions", &v.sessions_started.to_string());
    if !v.routes.is_empty() {
        let mut routes = v.routes.join(", ");
        if !v.excluded.is_empty() {
            routes.push_str(&format!(" (less {})", v.excluded.join(", ")));
        }
        line(&mut out, "routes", &routes);
    }
    if let Some(via) = v.dns_via {
        line(
            &mut out,
            "dns",
            &format!("{} (through {via})", v.dns.join(", ")),
        );
    }
    if let Some(t) = &v.tunnel {
        line(
            &mut out,
            "device",
            &device_line(&t.device, t.local_ip, t.peer_ip, t.local_ip6, t.peer_ip6),
        );
        session_lines(&mut out, &t.session);
        traffic_lines(&mut out, &t.traffic);
    }
    if v.sessions_started > 1 || v.tunnel.is_none() {
        let _ = writeln!(out, "\nall sessions:");
        traffic_lines(&mut out, &v.traffic);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_sizes() {
        assert_eq!(span(12), "12 s");
        assert_eq!(span(300), "5 min");
        assert_eq!(span(3 * 3600 + 1200), "3 h 20 min");
        assert_eq!(span(5 * 86_400), "5 days");
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(3 << 20), "3.00 MiB");
        assert_eq!(time_of_day(1_796_118_217), "09:43:37 UTC");
    }

    #[test]
    fn clock_ages() {
        let c = Clock::now();
        let past = c.now - Duration::from_secs(12);
        assert_eq!(c.age(past), 12);
        assert_eq!(c.unix(past), c.unix - 12);
        let later = c.now + Duration::from_millis(2500);
        assert_eq!(c.until(later), 3);
        assert_eq!(c.age(later), 0);
    }

    #[test]
    fn traffic_has_every_drop_reason() {
        let t = Traffic::of(&Counters::default());
        assert_eq!(t, Traffic::zero());
        assert!(t.drops.contains_key("replay") && t.drops.contains_key("forged_source"));
    }
}
