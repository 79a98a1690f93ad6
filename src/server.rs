//! The server: one UDP socket, demultiplexed by us (never by the DTLS crate), one TUN device
//! per client id that outlives its sessions for `-linger`.
//!
//! Two long-lived tasks share the work:
//! - the **demultiplexer** owns the socket's read side and the address → peer table. It opens
//!   records of live sessions and writes their packets to the TUN in coalesced batches (data
//!   path), admits ClientHellos under the half-open caps (evicting unproven handshakes first),
//!   and hands handshake datagrams to the crate's per-peer handshake tasks;
//! - the **manager** owns the devices, the pool and the sessions' lifecycles (control path): it
//!   turns a completed handshake into a session, installs routes, ends sessions and removes
//!   idle devices. It talks to the demultiplexer through [`DemuxCmd`] messages.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::authz;
use crate::config::ServerConfig;
use crate::consts::{
    CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE, FINAL_FLIGHT_RESEND,
    FIRST_APP_SEQUENCE, HANDSHAKE_QUEUE, KEEPALIVE_MISSES, MAX_HANDSHAKES, MAX_HANDSHAKES_PER_IP,
    SETUP_TIMEOUT, UNPROVEN_TIMEOUT,
};
use crate::dtls::{self, ChannelConn, Established, KeyLookup, Role};
use crate::hooks::{self, TunnelEnv};
use crate::netlink::{Netlink, NetlinkError};
use crate::pool::{Pair, Pool, PoolError};
use crate::proto::{
    AddressMessage, CONTROL_VERSION, CloseReason, Control, HINT_MARKER, Peernet, ProtoError,
};
use crate::pump::{self, Counters, Inbound, Inbox, Link, OutboundCmd, RateLimit};
use crate::record::{self, Opener, Sealer, Suite};
use crate::tun::{self, Tun, TunBatch, TunError};
use crate::udp::{Receiver, Udp};

/// Log line prefix of a new session (tests look for it).
pub const LOG_CONNECTED: &str = "connected";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "UDP port {port} is already in use on {ip}: stop the other program or choose another -port"
    )]
    PortInUse { ip: IpAddr, port: u16 },
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("cannot set up batched UDP on the server socket: {0}")]
    Udp(std::io::Error),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// Binds the server socket; dual-stack when the address is `[::]`.
pub fn bind(addr: SocketAddr) -> Result<UdpSocket, ServerError> {
    let map = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::AddrInUse => ServerError::PortInUse {
            ip: addr.ip(),
            port: addr.port(),
        },
        std::io::ErrorKind::PermissionDenied => ServerError::Bind {
            addr,
            source,
            hint: ": ports below 1024 need root or CAP_NET_BIND_SERVICE",
        },
        std::io::ErrorKind::AddrNotAvailable => ServerError::Bind {
            addr,
            source,
            hint: ": -listen must be an address of this machine",
        },
        _ => ServerError::Bind {
            addr,
            source,
            hint: "",
        },
    };
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(map)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        s.set_only_v6(false).map_err(map)?;
    }
    // Larger buffers absorb bursts; failure to grow them is harmless.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true).map_err(map)?;
    s.bind(&addr.into()).map_err(map)?;
    UdpSocket::from_std(s.into()).map_err(map)
}

/// Runs the server on `sock` until `shutdown` resolves; then closes every session
/// (close_notify) and removes every device this server made.
pub async fn run(
    sock: UdpSocket,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let nl = Netlink::new()?;
    let sock = Arc::new(sock);
    let udp = Udp::new(Arc::clone(&sock)).map_err(ServerError::Udp)?;
    let mut pool = Pool::new(cfg.pool)?;
    // Fixed addresses are held from the start, so no other id's hash can take them.
    for (id, c) in &cfg.keys.clients {
        if let Some(addr) = c.addr {
            pool.assign_fixed(id, addr)?;
        }
    }
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let keys = cfg.keys.clone();
    let lookup: KeyLookup = Arc::new(move |identity: &[u8]| keys.key_for(identity));
    let demux_counters = Arc::new(DemuxCounters::default());
    let demux = Demux {
        udp: udp.clone(),
        out: Delivery {
            ev_tx: ev_tx.clone(),
            log_limit: RateLimit::new(10),
            tun_batch: TunBatch::default(),
            inbox: Inbox::default(),
        },
        peers: HashMap::new(),
        cmd_rx,
        cmd_tx: cmd_tx.clone(),
        lookup,
        suites: cfg.common.suites.clone().into(),
        hint: if cfg.common.compat {
            cfg.hint.as_bytes().to_vec()
        } else {
            format!("{}{HINT_MARKER}", cfg.hint).into_bytes()
        },
        next_token: 0,
        handshakes: 0,
        counters: Arc::clone(&demux_counters),
    };
    let demux_task = tokio::spawn(demux.run());
    tracing::info!(
        "listening on {} (pool {}, linger {:?})",
        sock.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        cfg.pool,
        cfg.linger
    );
    let mut mgr = Manager {
        cfg,
        nl,
        udp,
        pool,
        cmd_tx,
        devices: HashMap::new(),
        next_session: 0,
    };
    mgr.run(ev_rx, shutdown).await;
    demux_task.abort();
    tracing::info!("server totals: {}", demux_counters.summary());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Demultiplexer (data path side)

/// Control path → demultiplexer.
enum DemuxCmd {
    /// A handshake task ended without a session.
    HandshakeEnded { addr: SocketAddr, token: u64 },
    /// Start routing this peer's records to a new session.
    Install {
        addr: SocketAddr,
        token: u64,
        session: SessionRx,
    },
    /// The LANs session `session_id` may now send from.
    Allow {
        addr: SocketAddr,
        session_id: u64,
        nets: Vec<IpNet>,
    },
    /// Stop routing to session `session_id` at `addr`.
    Remove { addr: SocketAddr, session_id: u64 },
}

/// What the demultiplexer needs of a live session.
struct SessionRx {
    session_id: u64,
    opener: Opener,
    tun: Arc<tun_rs::AsyncDevice>,
    /// MSS clamps (IPv4, IPv6) for SYNs into this TUN.
    mss: (u16, u16),
    counters: Arc<Counters>,
    /// The first application record is the peernet message, not a packet.
    awaiting_peernet: bool,
    /// The client's tunnel address and accepted LANs: the only inner sources it may use.
    tunnel_ip: std::net::Ipv4Addr,
    allowed: Vec<IpNet>,
    /// Control messages are understood (not -compat); else they are non-IP drops, which is
    /// the closest we come to what the original does with them.
    controls: bool,
    /// Our last handshake flight, resent whenever the client repeats its own: until the
    /// client has it, it cannot finish (the crate never resends it). Emptied at the first
    /// authenticated record from the peer, which proves the client finished.
    final_flight: Vec<Vec<u8>>,
    /// When `final_flight` was last resent.
    resent_at: Option<Instant>,
}

#[derive(Default)]
struct Peer {
    session: Option<SessionRx>,
    /// A handshake in progress from this address (also beside a live session).
    handshake: Option<Handshake>,
}

/// A handshake in progress: the crate runs in its own task, fed through `tx`.
struct Handshake {
    token: u64,
    tx: mpsc::Sender<Vec<u8>>,
    started: Instant,
    /// The peer echoed the HelloVerifyRequest cookie: its source address is real.
    proven: Arc<AtomicBool>,
    task: tokio::task::AbortHandle,
}

impl Handshake {
    fn is_proven(&self) -> bool {
        self.proven.load(Relaxed)
    }
}

/// What the demultiplexer saw that belongs to no session, for the shutdown summary.
#[derive(Default)]
pub struct DemuxCounters {
    /// Datagrams from addresses with neither session nor handshake that were no ClientHello.
    unknown_peer: AtomicU64,
    handshakes_started: AtomicU64,
    /// ClientHellos refused because every slot held a proven handshake.
    handshake_limit: AtomicU64,
    /// Unproven handshakes dropped for a newcomer or after `UNPROVEN_TIMEOUT`.
    handshake_evicted: AtomicU64,
}

impl DemuxCounters {
    pub fn summary(&self) -> String {
        format!(
            "unknown_peer={} handshakes={} handshake_evicted={} handshake_limit={}",
            self.unknown_peer.load(Relaxed),
            self.handshakes_started.load(Relaxed),
            self.handshake_evicted.load(Relaxed),
            self.handshake_limit.load(Relaxed)
        )
    }
}

/// Where the demultiplexer's session records go, and what it needs to open them.
struct Delivery {
    ev_tx: mpsc::UnboundedSender<Event>,
    log_limit: RateLimit,
    /// Packets on their way into the sessions' TUNs, written once per receive batch.
    tun_batch: TunBatch,
    inbox: Inbox,
}

struct Demux {
    udp: Udp,
    out: Delivery,
    peers: HashMap<SocketAddr, Peer>,
    cmd_rx: mpsc::UnboundedReceiver<DemuxCmd>,
    cmd_tx: mpsc::UnboundedSender<DemuxCmd>,
    lookup: KeyLookup,
    hint: Vec<u8>,
    /// Cipher suites we accept, in order of preference.
    suites: Arc<[Suite]>,
    next_token: u64,
    /// Handshakes in progress, for the total limit.
    handshakes: usize,
    counters: Arc<DemuxCounters>,
}

/// Whether a datagram starts with a record of the record layer: application data, or an
/// alert after the handshake (epoch 0 alerts are the crate's).
fn is_record(dg: &[u8]) -> bool {
    match dg {
        [CONTENT_APPLICATION_DATA, ..] => true,
        [CONTENT_ALERT, _, _, e0, e1, ..] => u16::from_be_bytes([*e0, *e1]) > 0,
        _ => false,
    }
}

/// Whether a record is a ClientHello in epoch 0 (handshake type 1).
fn is_client_hello(rec: &[u8]) -> bool {
    rec.len() > 13 && rec[0] == CONTENT_HANDSHAKE && rec[3..5] == [0, 0] && rec[13] == 1
}

impl Demux {
    async fn run(mut self) {
        let mut rx = Receiver::default();
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                biased;
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(cmd) => self.apply(cmd),
                    None => return,
                },
                _ = sweep.tick() => self.sweep(),
                r = rx.recv(&self.udp) => match r {
                    Ok(n) => {
                        for i in 0..n {
                            let (addr, stride, buf) = rx.buffer(i);
                            self.buffer(buf, stride, addr).await;
                        }
                        self.out.tun_batch.flush().await;
                    }
                    Err(e) => {
                        // ICMP errors from earlier sends surface here; they are not ours to act on.
                        tracing::trace!("recvmmsg: {e}");
                    }
                },
            }
        }
    }

    fn apply(&mut self, cmd: DemuxCmd) {
        match cmd {
            DemuxCmd::HandshakeEnded { addr, token } => {
                if let Some(p) = self.peers.get_mut(&addr)
                    && p.handshake.as_ref().is_some_and(|h| h.token == token)
                {
                    p.handshake = None;
                    self.handshakes -= 1;
                }
            }
            DemuxCmd::Install {
                addr,
                token,
                session,
            } => {
                let p = self.peers.entry(addr).or_default();
                if p.handshake.as_ref().is_some_and(|h| h.token == token) {
                    p.handshake = None;
                    self.handshakes -= 1;
                }
                p.session = Some(session);
            }
            DemuxCmd::Allow {
                addr,
                session_id,
                nets,
            } => {
                if let Some(s) = self.peers.get_mut(&addr).and_then(|p| p.session.as_mut())
                    && s.session_id == session_id
                {
                    s.allowed = nets;
                }
            }
            DemuxCmd::Remove { addr, session_id } => {
                if let Some(p) = self.peers.get_mut(&addr)
                    && p.session
                        .as_ref()
                        .is_some_and(|s| s.session_id == session_id)
                {
                    p.session = None;
                }
            }
        }
        self.peers
            .retain(|_, p| p.session.is_some() || p.handshake.is_some());
    }

    fn drop_log(&mut self, addr: SocketAddr, reason: &str) {
        if self.out.log_limit.allow() {
            tracing::debug!("drop reason={reason} from {addr}");
        }
    }

    /// One receive buffer: datagrams of `stride` bytes from `addr`. A session's records are
    /// opened a whole buffer at a time; anything else goes datagram by datagram.
    async fn buffer(&mut self, buf: &mut [u8], stride: usize, addr: SocketAddr) {
        if let Some(s) = self.peers.get_mut(&addr).and_then(|p| p.session.as_mut())
            && buf.chunks(stride).all(is_record)
        {
            Self::session_records(s, buf, stride, addr, &mut self.out).await;
            return;
        }
        for dg in buf.chunks_mut(stride) {
            self.datagram(dg, addr).await;
        }
    }

    async fn datagram(&mut self, dg: &mut [u8], addr: SocketAddr) {
        if dg.is_empty() {
            return;
        }
        let is_record = is_record(dg);
        let peer = self.peers.get_mut(&addr);
        match peer {
            Some(p) if is_record && p.session.is_some() => {
                if let Some(s) = p.session.as_mut() {
                    let stride = dg.len();
                    Self::session_records(s, dg, stride, addr, &mut self.out).await;
                }
            }
            Some(p) if !is_record && (p.handshake.is_some() || !is_client_hello(dg)) => {
                // At most one resend per FINAL_FLIGHT_RESEND: the client repeats its flight
                // once a second at most, and a spoofed trigger gains little.
                let resend = p
                    .session
                    .as_mut()
                    .filter(|s| !s.final_flight.is_empty() && dtls::is_final_flight(dg))
                    .filter(|s| {
                        s.resent_at
                            .is_none_or(|t| t.elapsed() >= FINAL_FLIGHT_RESEND)
                    })
                    .map(|s| {
                        s.resent_at = Some(Instant::now());
                        &s.final_flight
                    });
                if let Some(h) = &p.handshake {
                    // A full queue means the crate is behind: losing a datagram is what UDP does.
                    let _ = h.tx.try_send(dg.to_vec());
                } else if let Some(flight) = resend {
                    // The client repeats its last flight, so ours was lost (RFC 6347 4.2.4).
                    for d in flight {
                        if let Err(e) = self.udp.sock.send_to(d, addr).await
                            && !pump::is_lost_datagram(&e)
                        {
                            tracing::debug!("resending the last handshake flight to {addr}: {e}");
                        }
                    }
                    if self.out.log_limit.allow() {
                        tracing::debug!("{addr} repeated its last handshake flight: resent ours");
                    }
                } else {
                    self.drop_log(addr, "unexpected_handshake");
                }
            }
            _ if !is_record && is_client_hello(dg) => self.start_handshake(dg, addr),
            _ => {
                self.counters.unknown_peer.fetch_add(1, Relaxed);
                self.drop_log(addr, "unknown_peer");
            }
        }
    }

    /// The records of a session's datagrams (`stride` bytes each), opened together.
    async fn session_records(
        s: &mut SessionRx,
        buf: &mut [u8],
        stride: usize,
        addr: SocketAddr,
        out: &mut Delivery,
    ) {
        let records = out
            .inbox
            .open(&mut s.opener, &s.counters, buf, stride, |_| true);
        let (ev_tx, log_limit, tun_batch) = (&out.ev_tx, &mut out.log_limit, &mut out.tun_batch);
        for record in records {
            match record {
                Inbound::Data(r) => {
                    if !s.final_flight.is_empty() {
                        s.final_flight = Vec::new();
                    }
                    if s.awaiting_peernet {
                        s.awaiting_peernet = false;
                        let data = &buf[r.clone()];
                        let peernet = Peernet::parse(data);
                        // A control message or a whole IP packet where the peernet message
                        // should be: that message was lost. Close, so the client starts over.
                        let lost = peernet.is_err()
                            && ((s.controls && Control::is_control(data))
                                || pump::is_whole_ip_packet(data));
                        let ev = if lost {
                            Event::SetupLost {
                                session_id: s.session_id,
                            }
                        } else {
                            Event::Peernet {
                                session_id: s.session_id,
                                peernet,
                            }
                        };
                        let _ = ev_tx.send(ev);
                    } else if s.controls && Control::is_control(&buf[r.clone()]) {
                        match Control::parse(&buf[r.clone()]) {
                            Ok(msg) => {
                                let _ = ev_tx.send(Event::Control {
                                    session_id: s.session_id,
                                    msg,
                                });
                            }
                            Err(_) => s.counters.count_drop(pump::Drop::Unexpected),
                        }
                    } else if !pump::is_ip(&buf[r.clone()]) {
                        s.counters.count_drop(pump::Drop::NotIp);
                        if log_limit.allow() {
                            tracing::debug!("drop reason=not_ip from {addr}");
                        }
                    } else if !authz::source_allowed(&buf[r.clone()], s.tunnel_ip, &s.allowed) {
                        s.counters.count_drop(pump::Drop::ForgedSource);
                        if log_limit.allow() {
                            tracing::debug!("drop reason=forged_source from {addr}");
                        }
                    } else {
                        s.counters.count_rx(r.len());
                        let packet = &mut buf[r.clone()];
                        crate::mss::clamp(packet, s.mss.0, s.mss.1);
                        tun_batch.push(&s.tun, packet).await;
                    }
                }
                Inbound::Alert(level, desc) => {
                    let _ = ev_tx.send(Event::Closed {
                        session_id: s.session_id,
                        level: *level,
                        desc: *desc,
                    });
                }
                Inbound::Dropped(d) => {
                    if log_limit.allow() {
                        tracing::debug!("drop reason={} from {addr}", d.as_str());
                    }
                }
            }
        }
    }

    /// The oldest handshake not yet proven (among those from `ip` if given).
    fn oldest_unproven(&self, ip: Option<IpAddr>) -> Option<SocketAddr> {
        self.peers
            .iter()
            .filter(|(a, _)| ip.is_none_or(|ip| a.ip() == ip))
            .filter_map(|(a, p)| p.handshake.as_ref().map(|h| (a, h)))
            .filter(|(_, h)| !h.is_proven())
            .min_by_key(|(_, h)| h.started)
            .map(|(a, _)| *a)
    }

    /// Ends a handshake the crate has not finished: its task is aborted, which drops the
    /// crate's connection and with it the crate's own tasks.
    fn evict(&mut self, addr: SocketAddr) {
        if let Some(h) = self.peers.get_mut(&addr).and_then(|p| p.handshake.take()) {
            h.task.abort();
            self.handshakes -= 1;
            self.counters.handshake_evicted.fetch_add(1, Relaxed);
        }
        self.peers
            .retain(|_, p| p.session.is_some() || p.handshake.is_some());
    }

    /// Drops handshakes whose peer never answered the HelloVerifyRequest.
    fn sweep(&mut self) {
        let stale: Vec<SocketAddr> = self
            .peers
            .iter()
            .filter_map(|(a, p)| p.handshake.as_ref().map(|h| (a, h)))
            .filter(|(_, h)| !h.is_proven() && h.started.elapsed() >= UNPROVEN_TIMEOUT)
            .map(|(a, _)| *a)
            .collect();
        for a in stale {
            self.evict(a);
        }
    }

    /// Admits a ClientHello under the caps. When full, the oldest handshake whose peer has not
    /// proven its address makes room: spoofed ClientHellos can never prove theirs, so they
    /// cannot lock out a real client, whose handshake is proven one round trip in.
    fn start_handshake(&mut self, dg: &[u8], addr: SocketAddr) {
        let per_ip = self
            .peers
            .iter()
            .filter(|(a, p)| a.ip() == addr.ip() && p.handshake.is_some())
            .count();
        for (full, scope) in [
            (per_ip >= MAX_HANDSHAKES_PER_IP, Some(addr.ip())),
            (self.handshakes >= MAX_HANDSHAKES, None),
        ] {
            if !full {
                continue;
            }
            match self.oldest_unproven(scope) {
                Some(victim) => self.evict(victim),
                None => {
                    self.counters.handshake_limit.fetch_add(1, Relaxed);
                    self.drop_log(addr, "handshake_limit");
                    return;
                }
            }
        }
        let (tx, rx) = mpsc::channel(HANDSHAKE_QUEUE);
        let _ = tx.try_send(dg.to_vec());
        self.next_token += 1;
        let token = self.next_token;
        let role = Role::Server {
            hint: self.hint.clone(),
            lookup: Arc::clone(&self.lookup),
        };
        let conn = ChannelConn::new(rx, Arc::clone(&self.udp.sock), addr, false);
        let proven = conn.proven();
        let (ev_tx, cmd_tx) = (self.out.ev_tx.clone(), self.cmd_tx.clone());
        let suites = Arc::clone(&self.suites);
        let task = tokio::spawn(async move {
            match dtls::handshake(role, &suites, conn).await {
                Ok(est) => {
                    let _ = ev_tx.send(Event::Authenticated {
                        addr,
                        token,
                        est: Box::new(est),
                    });
                }
                Err(f) => {
                    tracing::warn!(
                        "handshake with {addr} (claimed id {:?}) failed: {}; a client with the wrong -key looks like this",
                        String::from_utf8_lossy(&f.peer_identity),
                        f.error
                    );
                    let _ = cmd_tx.send(DemuxCmd::HandshakeEnded { addr, token });
                }
            }
        });
        self.peers.entry(addr).or_default().handshake = Some(Handshake {
            token,
            tx,
            started: Instant::now(),
            proven,
            task: task.abort_handle(),
        });
        self.handshakes += 1;
        self.counters.handshakes_started.fetch_add(1, Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// Manager (control path side)

/// Handshake tasks and the demultiplexer → manager.
enum Event {
    Authenticated {
        addr: SocketAddr,
        token: u64,
        est: Box<Established>,
    },
    Peernet {
        session_id: u64,
        peernet: Result<Peernet, ProtoError>,
    },
    Closed {
        session_id: u64,
        level: u8,
        desc: u8,
    },
    Control {
        session_id: u64,
        msg: Control,
    },
    /// The client's peernet message was lost (something else came first).
    SetupLost {
        session_id: u64,
    },
}

/// One id's device, with or without a session.
struct Device {
    tun: Tun,
    pair: Pair,
    /// Routes we added through this device (the client's peernet).
    routes: Vec<IpNet>,
    session: Option<Session>,
    /// When the last session ended; the device goes after `-linger`.
    idle_since: Option<Instant>,
}

struct Session {
    session_id: u64,
    addr: SocketAddr,
    out_tx: mpsc::Sender<OutboundCmd>,
    out_task: JoinHandle<Sealer>,
    counters: Arc<Counters>,
    /// Deadline for the client's peernet message.
    setup_deadline: Option<Instant>,
    /// The client said Hello: it is a dtun peer and may get control messages.
    negotiated: bool,
    /// The client's keepalive period (zero: none); it pings, we answer.
    keepalive: Duration,
    /// Authenticated records seen at the last check, and when that count last moved.
    seen: u64,
    alive_at: Instant,
}

struct Manager {
    cfg: ServerConfig,
    nl: Netlink,
    udp: Udp,
    pool: Pool,
    cmd_tx: mpsc::UnboundedSender<DemuxCmd>,
    devices: HashMap<String, Device>,
    next_session: u64,
}

impl Manager {
    async fn run(
        &mut self,
        mut ev_rx: mpsc::UnboundedReceiver<Event>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                ev = ev_rx.recv() => match ev {
                    Some(ev) => self.event(ev).await,
                    None => break,
                },
                _ = tick.tick() => self.timers().await,
            }
        }
        tracing::info!(
            "shutting down: closing {} session(s)",
            self.devices
                .values()
                .filter(|d| d.session.is_some())
                .count()
        );
        let ids: Vec<String> = self.devices.keys().cloned().collect();
        for id in ids {
            self.end_session(&id, Some(CloseReason::Shutdown), "server shutting down")
                .await;
            self.remove_device(&id).await;
        }
    }

    async fn event(&mut self, ev: Event) {
        match ev {
            Event::Authenticated { addr, token, est } => {
                let id = String::from_utf8_lossy(&est.peer_identity).into_owned();
                if let Err(e) = self.start_session(&id, addr, token, *est).await {
                    tracing::error!("client {id} from {addr}: cannot set up its tunnel: {e}");
                    let _ = self.cmd_tx.send(DemuxCmd::HandshakeEnded { addr, token });
                }
            }
            Event::Peernet {
                session_id,
                peernet,
            } => {
                let Some(id) = self.id_of(session_id) else {
                    return;
                };
                match peernet {
                    Ok(p) => self.set_peernet(&id, p).await,
                    Err(e) => {
                        tracing::warn!("client {id}: {e}; the tunnel stays up without a route")
                    }
                }
                if let Some(s) = self.devices.get_mut(&id).and_then(|d| d.session.as_mut()) {
                    s.setup_deadline = None;
                }
            }
            Event::Closed {
                session_id,
                level,
                desc,
            } => {
                let Some(id) = self.id_of(session_id) else {
                    return;
                };
                let why = if desc == 0 {
                    "close_notify".to_string()
                } else {
                    format!("alert {level}/{desc}")
                };
                self.end_session(&id, None, &format!("peer sent {why}"))
                    .await;
            }
            Event::SetupLost { session_id } => {
                let Some(id) = self.id_of(session_id) else {
                    return;
                };
                self.end_session(
                    &id,
                    Some(CloseReason::Timeout),
                    "its peernet message was lost",
                )
                .await;
            }
            Event::Control { session_id, msg } => {
                let Some(id) = self.id_of(session_id) else {
                    return;
                };
                self.control(&id, msg).await;
            }
        }
    }

    fn id_of(&self, session_id: u64) -> Option<String> {
        self.devices
            .iter()
            .find(|(_, d)| {
                d.session
                    .as_ref()
                    .is_some_and(|s| s.session_id == session_id)
            })
            .map(|(id, _)| id.clone())
    }

    async fn start_session(
        &mut self,
        id: &str,
        addr: SocketAddr,
        token: u64,
        est: Established,
    ) -> Result<(), SessionError> {
        if !self.devices.contains_key(id) {
            let dev = self.create_device(id, est.suite, addr).await?;
            self.devices.insert(id.to_string(), dev);
        } else {
            self.end_session_because(
                id,
                Some(CloseReason::Replaced),
                &addr.to_string(),
                &format!("replaced by a new session from {addr}"),
            )
            .await;
            let mtu = self.cfg.tun.mtu_for(est.suite, addr);
            if let Some(dev) = self.devices.get_mut(id) {
                dev.tun.follow_mtu(&self.nl, mtu).await?;
            }
        }
        let Some(dev) = self.devices.get_mut(id) else {
            return Ok(());
        };
        self.next_session += 1;
        let session_id = self.next_session;
        let (mut sealer, opener) =
            record::session_pair(est.suite, &est.keys, false, 1, FIRST_APP_SEQUENCE);
        let counters = Arc::new(Counters::default());
        let _ = self.cmd_tx.send(DemuxCmd::Install {
            addr,
            token,
            session: SessionRx {
                session_id,
                opener,
                tun: Arc::clone(&dev.tun.dev),
                mss: pump::mss_clamps(dev.tun.mtu),
                counters: Arc::clone(&counters),
                awaiting_peernet: true,
                tunnel_ip: dev.pair.client,
                allowed: dev.routes.clone(),
                controls: !self.cfg.common.compat,
                final_flight: est.final_flight,
                resent_at: None,
            },
        });
        let link = Link {
            udp: self.udp.clone(),
            peer: addr,
            connected: false,
        };
        let msg = AddressMessage {
            client: dev.pair.client,
            server: dev.pair.server,
        };
        link.send_record(&mut sealer, CONTENT_APPLICATION_DATA, &msg.to_bytes())
            .await
            .map_err(|e| SessionError::Send(addr, e))?;
        let (out_tx, out_task) = pump::spawn_outbound(
            Arc::clone(&dev.tun.dev),
            pump::MssClamp::new(dev.tun.mtu),
            link,
            sealer,
            Arc::clone(&counters),
        );
        dev.idle_since = None;
        dev.session = Some(Session {
            session_id,
            addr,
            out_tx,
            out_task,
            counters,
            setup_deadline: Some(Instant::now() + SETUP_TIMEOUT),
            negotiated: false,
            keepalive: Duration::ZERO,
            seen: 0,
            alive_at: Instant::now(),
        });
        tracing::info!(
            "client {id} {LOG_CONNECTED} from {addr} on {} (local {} peer {}, {})",
            dev.tun.name,
            dev.pair.server,
            dev.pair.client,
            est.suite.name()
        );
        Ok(())
    }

    async fn create_device(
        &mut self,
        id: &str,
        suite: record::Suite,
        addr: SocketAddr,
    ) -> Result<Device, SessionError> {
        let fixed = self.cfg.keys.clients.get(id).and_then(|c| c.addr);
        let pair = match fixed {
            Some(addr) => self.pool.assign_fixed(id, addr)?,
            None => self.pool.assign(id)?,
        };
        let mtu = self.cfg.tun.mtu_for(suite, addr);
        let made = async {
            let tun = tun::create(&self.nl, &self.cfg.tun.name, mtu).await?;
            self.nl
                .add_p2p_address(tun.index, pair.server, pair.client)
                .await?;
            Ok::<_, SessionError>(tun)
        }
        .await;
        if let Ok(tun) = &made
            && let Some(up) = &self.cfg.common.up
            && let Err(e) = hooks::run("up", up, &device_env(&tun.name, pair)).await
        {
            tracing::warn!("client {id}: {e}");
        }
        match made {
            Ok(tun) => Ok(Device {
                tun,
                pair,
                routes: Vec::new(),
                session: None,
                idle_since: None,
            }),
            Err(e) => {
                self.pool.release(id);
                Err(e)
            }
        }
    }

    /// Routes the client's announced LAN through its device, if authorisation allows it, and
    /// lets its packets come from there.
    async fn set_peernet(&mut self, id: &str, peernet: Peernet) {
        let wanted: Vec<IpNet> = match peernet {
            Peernet::Empty => vec![],
            Peernet::Net(n) => vec![n],
        };
        let ours: Vec<u32> = self.devices.values().map(|d| d.tun.index).collect();
        let host = match self.nl.networks_elsewhere(&ours).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("client {id}: {e}; not routing its peernet");
                return;
            }
        };
        let others: Vec<(String, IpNet)> = self
            .devices
            .iter()
            .filter(|(other, _)| other.as_str() != id)
            .flat_map(|(other, d)| d.routes.iter().map(|r| (other.clone(), *r)))
            .collect();
        let pool = self.cfg.pool;
        let Some(dev) = self.devices.get_mut(id) else {
            return;
        };
        for old in dev.routes.clone() {
            if !wanted.contains(&old) {
                let _ = self.nl.del_route(old, dev.tun.index).await;
                dev.routes.retain(|r| *r != old);
            }
        }
        for net in wanted {
            if dev.routes.contains(&net) {
                continue;
            }
            let listed = self
                .cfg
                .keys
                .clients
                .get(id)
                .and_then(|c| c.lans.as_deref());
            if let Err(refusal) = authz::check_peernet(net, &host, &others, pool, listed) {
                tracing::warn!(
                    "client {id}: refused peernet {net}: {refusal}; the tunnel stays up without that route"
                );
                continue;
            }
            let via = match net {
                IpNet::V4(_) => Some(IpAddr::V4(dev.pair.client)),
                IpNet::V6(_) => None,
            };
            match self.nl.add_route(net, via, dev.tun.index).await {
                Ok(()) => {
                    tracing::info!(
                        "client {id}: route {net} via {} dev {}",
                        dev.pair.client,
                        dev.tun.name
                    );
                    dev.routes.push(net);
                }
                Err(e) => {
                    tracing::warn!("client {id}: {e}; the tunnel stays up without that route")
                }
            }
        }
        if let Some(s) = &dev.session {
            let _ = self.cmd_tx.send(DemuxCmd::Allow {
                addr: s.addr,
                session_id: s.session_id,
                nets: dev.routes.clone(),
            });
        }
    }

    /// Answers a dtun client's control message.
    async fn control(&mut self, id: &str, msg: Control) {
        let Some(s) = self.devices.get_mut(id).and_then(|d| d.session.as_mut()) else {
            return;
        };
        let reply = match msg {
            Control::Hello { keepalive_ms, .. } => {
                s.negotiated = true;
                s.keepalive = Duration::from_millis(u64::from(keepalive_ms));
                let ours = u32::try_from(self.cfg.common.keepalive.as_millis()).unwrap_or(u32::MAX);
                tracing::debug!("client {id} is a dtun peer (keepalive {:?})", s.keepalive);
                Some(Control::Hello {
                    version: CONTROL_VERSION,
                    keepalive_ms: ours,
                })
            }
            // Only a dtun client pings: a lost Hello must not leave it unanswered.
            Control::Ping if !self.cfg.common.compat => {
                if !s.negotiated {
                    s.negotiated = true;
                    s.keepalive = self.cfg.common.keepalive;
                }
                Some(Control::Pong)
            }
            Control::Close { reason, detail } => {
                tracing::debug!("client {id} is closing: {reason:?} {detail}");
                None
            }
            _ => None,
        };
        if let Some(r) = reply {
            let _ = s.out_tx.try_send(OutboundCmd::Send(r.to_bytes()));
        }
    }

    /// Ends the id's session, if any; the device stays for `-linger`. `reason`: say so and
    /// send close_notify (None: the peer already closed).
    async fn end_session(&mut self, id: &str, reason: Option<CloseReason>, why: &str) {
        self.end_session_because(id, reason, "", why).await
    }

    async fn end_session_because(
        &mut self,
        id: &str,
        reason: Option<CloseReason>,
        detail: &str,
        why: &str,
    ) {
        let Some(dev) = self.devices.get_mut(id) else {
            return;
        };
        let Some(s) = dev.session.take() else { return };
        let _ = self.cmd_tx.send(DemuxCmd::Remove {
            addr: s.addr,
            session_id: s.session_id,
        });
        let farewell = reason.filter(|_| s.negotiated).map(|reason| {
            Control::Close {
                reason,
                detail: detail.to_string(),
            }
            .to_bytes()
        });
        let stop = OutboundCmd::Stop {
            notify: reason.is_some(),
            farewell,
        };
        let _ = s.out_tx.send(stop).await;
        let _ = s.out_task.await;
        dev.idle_since = Some(Instant::now());
        tracing::info!(
            "client {id} from {} disconnected: {why} ({})",
            s.addr,
            s.counters.summary()
        );
    }

    async fn remove_device(&mut self, id: &str) {
        let Some(dev) = self.devices.remove(id) else {
            return;
        };
        for r in &dev.routes {
            let _ = self.nl.del_route(*r, dev.tun.index).await;
        }
        if let Err(e) = self.nl.del_link(dev.tun.index).await {
            tracing::warn!("removing {}: {e}", dev.tun.name);
        }
        let fixed = self.cfg.keys.clients.get(id).and_then(|c| c.addr);
        if fixed.is_none() {
            self.pool.release(id);
        }
        tracing::info!(
            "client {id}: removed {} and its routes ({} pool pairs in use)",
            dev.tun.name,
            self.pool.in_use()
        );
        if let Some(down) = &self.cfg.common.down
            && let Err(e) = hooks::run("down", down, &device_env(&dev.tun.name, dev.pair)).await
        {
            tracing::warn!("client {id}: {e}");
        }
    }

    async fn timers(&mut self) {
        let now = Instant::now();
        let late: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| {
                d.session
                    .as_ref()
                    .and_then(|s| s.setup_deadline)
                    .is_some_and(|t| now >= t)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            self.end_session(
                &id,
                Some(CloseReason::Timeout),
                &format!("no peernet message within {SETUP_TIMEOUT:?}"),
            )
            .await;
        }
        // Keepalive: a dtun client pings when quiet; no authenticated record for
        // KEEPALIVE_MISSES of its periods means it is gone.
        let check = !self.cfg.common.keepalive.is_zero();
        let mut dead = Vec::new();
        for (id, d) in self.devices.iter_mut() {
            let Some(s) = d.session.as_mut() else {
                continue;
            };
            let seen = s.counters.authenticated();
            if seen != s.seen {
                s.seen = seen;
                s.alive_at = now;
            } else if check
                && s.negotiated
                && !s.keepalive.is_zero()
                && now.duration_since(s.alive_at) >= s.keepalive * KEEPALIVE_MISSES
            {
                dead.push((id.clone(), now.duration_since(s.alive_at)));
            }
        }
        for (id, quiet) in dead {
            let why = format!("no keepalive for {:.1}s", quiet.as_secs_f64());
            self.end_session(&id, Some(CloseReason::Timeout), &why)
                .await;
        }
        let linger = self.cfg.linger;
        let expired: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| {
                d.session.is_none()
                    && d.idle_since
                        .is_some_and(|t| now.duration_since(t) >= linger)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove_device(&id).await;
        }
    }
}

/// A script's view of a server-side device: PEER_IP is the client's tunnel address.
fn device_env(tun: &str, pair: Pair) -> TunnelEnv {
    TunnelEnv {
        tun: tun.to_string(),
        peer_ip: pair.client,
        local_ip: pair.server,
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("sending to {0} failed: {1}")]
    Send(SocketAddr, std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hello_detection() {
        let mut rec = vec![22, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 1, 0, 0];
        assert!(is_client_hello(&rec));
        rec[13] = 2;
        assert!(!is_client_hello(&rec));
        rec[13] = 1;
        rec[4] = 1; // epoch 1
        assert!(!is_client_hello(&rec));
        assert!(!is_client_hello(&[22, 0xfe]));
    }
}
