//! The demultiplexer: owns the socket's read side and the address → session table (data path
//! side). It opens the records of live sessions and writes their packets to the TUNs in
//! coalesced batches, and hands every other datagram to handshake [`Admission`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::mpsc;

use super::admission::{Admission, AdmissionCounters, Outcome};
use super::manager::Event;
use crate::authz;
use crate::consts::{CONTENT_ALERT, CONTENT_APPLICATION_DATA, FINAL_FLIGHT_RESEND};
use crate::dtls::{self, Established, KeyLookup};
use crate::proto::{Control, Peernet};
use crate::pump::{self, Counters, Inbound, Inbox, RateLimit};
use crate::record::Opener;
use crate::tun::TunBatch;
use crate::udp::{Receiver, Udp};

// ---------------------------------------------------------------------------------------------
// Demultiplexer (data path side)

/// Control path → demultiplexer.
pub(super) enum DemuxCmd {
    /// Start routing this peer's records to a new session.
    Install {
        addr: SocketAddr,
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
    /// client has it, it cannot finish. Emptied at the first authenticated record from the
    /// peer, which proves the client finished.
    pub(super) final_flight: Vec<Vec<u8>>,
    /// When `final_flight` was last resent.
    pub(super) resent_at: Option<Instant>,
}

/// What the demultiplexer saw that belongs to no session, for the shutdown summary.
#[derive(Default)]
pub struct DemuxCounters {
    /// Datagrams from addresses without a session that were neither a ClientHello nor part of
    /// a handshake in progress.
    unknown_peer: AtomicU64,
    /// A copy of admission's counters, refreshed every sweep and at shutdown.
    admission: std::sync::Mutex<AdmissionCounters>,
}

impl DemuxCounters {
    pub fn summary(&self) -> String {
        let a = self.admission.lock().map(|a| *a).unwrap_or_default();
        format!(
            "unknown_peer={} cookies={} handshakes={} handshake_failed={} handshake_evicted={} handshake_limit={}",
            self.unknown_peer.load(Relaxed),
            a.cookies,
            a.started,
            a.failed,
            a.evicted,
            a.limit
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
    pub(super) sessions: HashMap<SocketAddr, SessionRx>,
    pub(super) admission: Admission,
    pub(super) cmd_rx: mpsc::UnboundedReceiver<DemuxCmd>,
    pub(super) lookup: KeyLookup,
    /// Dummy keys for unknown identities (RFC 4279 §2): they fail like a wrong key.
    pub(super) dummy: ring::hmac::Key,
    /// Warnings about failed handshakes, at most a few a second.
    pub(super) fail_log: RateLimit,
    pub(super) counters: Arc<DemuxCounters>,
}

/// Whether a datagram starts with a record of the record layer: application data, or an
/// alert after the handshake (epoch 0 alerts belong to a handshake).
fn is_record(dg: &[u8]) -> bool {
    match dg {
        [CONTENT_APPLICATION_DATA, ..] => true,
        [CONTENT_ALERT, _, _, e0, e1, ..] => u16::from_be_bytes([*e0, *e1]) > 0,
        _ => false,
    }
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
                _ = sweep.tick() => self.sweep(Instant::now()),
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
            DemuxCmd::Install { addr, session } => {
                self.sessions.insert(addr, session);
            }
            DemuxCmd::Allow {
                addr,
                session_id,
                nets,
            } => {
                if let Some(s) = self.sessions.get_mut(&addr)
                    && s.session_id == session_id
                {
                    s.allowed = nets;
                }
            }
            DemuxCmd::Remove { addr, session_id } => {
                if self
                    .sessions
                    .get(&addr)
                    .is_some_and(|s| s.session_id == session_id)
                {
                    self.sessions.remove(&addr);
                }
            }
        }
    }

    fn drop_log(&mut self, addr: SocketAddr, reason: &str) {
        if self.out.log_limit.allow() {
            tracing::debug!("drop reason={reason} from {addr}");
        }
    }

    /// One receive buffer: datagrams of `stride` bytes from `addr`. A session's records are
    /// opened a whole buffer at a time; anything else goes datagram by datagram.
    async fn buffer(&mut self, buf: &mut [u8], stride: usize, addr: SocketAddr) {
        if let Some(s) = self.sessions.get_mut(&addr)
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
        if is_record(dg)
            && let Some(s) = self.sessions.get_mut(&addr)
        {
            let stride = dg.len();
            Self::session_records(s, dg, stride, addr, &mut self.out).await;
            return;
        }
        let (lookup, dummy) = (&self.lookup, &self.dummy);
        let key =
            |id: &[u8]| lookup(id).unwrap_or_else(|| ring::hmac::sign(dummy, id).as_ref().to_vec());
        let outcome = self.admission.datagram(dg, addr, Instant::now(), key);
        if let Ok(mut a) = self.counters.admission.lock() {
            *a = self.admission.counters;
        }
        match outcome {
            Outcome::Reply => self.send(addr, "handshake").await,
            Outcome::Quiet => {}
            Outcome::Refused => self.drop_log(addr, "handshake_limit"),
            Outcome::Failed {
                why,
                identity,
                alert,
            } => {
                if alert {
                    self.send(addr, "alert").await;
                }
                if self.fail_log.allow() {
                    tracing::warn!(
                        "handshake with {addr} (claimed id \"{}\") failed: {why}; a client with the wrong -key looks like this",
                        identity.escape_ascii()
                    );
                }
            }
            Outcome::Completed(c) => {
                self.admission.reply.clone_from(&c.final_flight);
                self.send(addr, "final flight").await;
                let est = Established {
                    suite: c.suite,
                    keys: c.keys,
                    peer_identity: c.identity,
                    conn: None,
                    final_flight: vec![c.final_flight],
                };
                let _ = self.out.ev_tx.send(Event::Authenticated {
                    addr,
                    est: Box::new(est),
                });
            }
            Outcome::NotOurs => self.not_ours(dg, addr).await,
        }
    }

    /// A datagram that is no part of a handshake in progress nor a ClientHello.
    async fn not_ours(&mut self, dg: &[u8], addr: SocketAddr) {
        let Some(s) = self.sessions.get_mut(&addr) else {
            self.counters.unknown_peer.fetch_add(1, Relaxed);
            self.drop_log(addr, "unknown_peer");
            return;
        };
        // The client repeats its last flight, so ours was lost (RFC 6347 4.2.4). At most one
        // resend per FINAL_FLIGHT_RESEND: the client repeats its flight once a second at most,
        // and a spoofed trigger gains little.
        if s.final_flight.is_empty()
            || !dtls::is_final_flight(dg)
            || s.resent_at
                .is_some_and(|t| t.elapsed() < FINAL_FLIGHT_RESEND)
        {
            self.drop_log(addr, "unexpected_handshake");
            return;
        }
        s.resent_at = Some(Instant::now());
        for d in &s.final_flight {
            if let Err(e) = self.udp.sock.send_to(d, addr).await
                && !pump::is_lost_datagram(&e)
            {
                tracing::debug!("resending the last handshake flight to {addr}: {e}");
            }
        }
        if self.out.log_limit.allow() {
            tracing::debug!("{addr} repeated its last handshake flight: resent ours");
        }
    }

    /// Sends admission's reply to `addr`.
    async fn send(&mut self, addr: SocketAddr, what: &str) {
        if let Err(e) = self.udp.sock.send_to(&self.admission.reply, addr).await
            && !pump::is_lost_datagram(&e)
            && self.out.log_limit.allow()
        {
            tracing::debug!("sending {what} to {addr}: {e}");
        }
    }

    /// Once a second: drops handshakes past their time, rotates the cookie secret and
    /// publishes admission's counters.
    fn sweep(&mut self, now: Instant) {
        self.admission.sweep(now);
        if let Ok(mut a) = self.counters.admission.lock() {
            *a = self.admission.counters;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_the_record_layer() {
        assert!(is_record(&[CONTENT_APPLICATION_DATA, 0xfe, 0xfd, 0, 1]));
        assert!(is_record(&[CONTENT_ALERT, 0xfe, 0xfd, 0, 1]));
        assert!(!is_record(&[CONTENT_ALERT, 0xfe, 0xfd, 0, 0]));
        assert!(!is_record(&[22, 0xfe, 0xfd, 0, 0]));
        assert!(!is_record(&[]));
    }
}
