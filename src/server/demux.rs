//! The demultiplexer: owns the socket's read side and the address → peer table (data path side).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::mpsc;

use super::manager::Event;
use crate::authz;
use crate::consts::{
    CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE, FINAL_FLIGHT_RESEND,
    HANDSHAKE_QUEUE, MAX_HANDSHAKES, MAX_HANDSHAKES_PER_IP, UNPROVEN_TIMEOUT,
};
use crate::dtls::{self, ChannelConn, KeyLookup, Role};
use crate::proto::{Control, Peernet};
use crate::pump::{self, Counters, Inbound, Inbox, RateLimit};
use crate::record::{Opener, Suite};
use crate::tun::TunBatch;
use crate::udp::{Receiver, Udp};

// ---------------------------------------------------------------------------------------------
// Demultiplexer (data path side)

/// Control path → demultiplexer.
pub(super) enum DemuxCmd {
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
pub(super) struct SessionRx {
    pub(super) session_id: u64,
    pub(super) opener: Opener,
    pub(super) tun: Arc<tun_rs::AsyncDevice>,
    /// MSS clamps (IPv4, IPv6) for SYNs into this TUN.
    pub(super) mss: (u16, u16),
    pub(super) counters: Arc<Counters>,
    /// The first application record is the peernet message, not a packet.
    pub(super) awaiting_peernet: bool,
    /// The client's tunnel address and accepted LANs: the only inner sources it may use.
    pub(super) tunnel_ip: std::net::Ipv4Addr,
    pub(super) allowed: Vec<IpNet>,
    /// Control messages are understood (not -compat); else they are non-IP drops, which is
    /// the closest we come to what the original does with them.
    pub(super) controls: bool,
    /// Our last handshake flight, resent whenever the client repeats its own: until the
    /// client has it, it cannot finish (the crate never resends it). Emptied at the first
    /// authenticated record from the peer, which proves the client finished.
    pub(super) final_flight: Vec<Vec<u8>>,
    /// When `final_flight` was last resent.
    pub(super) resent_at: Option<Instant>,
}

#[derive(Default)]
pub(super) struct Peer {
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
pub(super) struct Delivery {
    pub(super) ev_tx: mpsc::UnboundedSender<Event>,
    pub(super) log_limit: RateLimit,
    /// Packets on their way into the sessions' TUNs, written once per receive batch.
    pub(super) tun_batch: TunBatch,
    pub(super) inbox: Inbox,
}

pub(super) struct Demux {
    pub(super) udp: Udp,
    pub(super) out: Delivery,
    pub(super) peers: HashMap<SocketAddr, Peer>,
    pub(super) cmd_rx: mpsc::UnboundedReceiver<DemuxCmd>,
    pub(super) cmd_tx: mpsc::UnboundedSender<DemuxCmd>,
    pub(super) lookup: KeyLookup,
    pub(super) hint: Vec<u8>,
    /// Cipher suites we accept, in order of preference.
    pub(super) suites: Arc<[Suite]>,
    pub(super) next_token: u64,
    /// Handshakes in progress, for the total limit.
    pub(super) handshakes: usize,
    pub(super) counters: Arc<DemuxCounters>,
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
    pub(super) async fn run(mut self) {
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
                        crate::supervise::fault_point(crate::supervise::Site::Demux, packet);
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
