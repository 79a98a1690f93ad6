//! The demultiplexer: owns the socket's read side and the address → session table (data path
//! side). It opens the records of live sessions and writes their packets to the TUNs in
//! coalesced batches, and hands every other datagram to handshake [`Admission`]. A roaming
//! session's records (RFC 9146 connection IDs) are also found by their connection ID when
//! they come from a new address; the session moves there once the address answered a path
//! challenge ([`Path`]).
//! Here: the commands, the session tables and the datagram loop; what one session's records
//! do (data, peernet, alerts, Pings, path responses) is in `records`.

mod records;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::mpsc;

use super::KeyLookup;
use super::events::Event;
use crate::pump::OutboundCmd;
use dtun_linux::rate_limit::RateLimit;
use dtun_linux::tun::TunBatch;
use dtun_linux::udp::{Receiver, Udp};
use dtun_proto::admission::{
    Admission, AdmissionCounters, Outcome, is_session_record as is_record,
};
use dtun_proto::inbound::{Counters, Inbox};
use dtun_proto::record::{Cid, Opener};
use dtun_proto::session::server::{Inlet, Path, Seen};

// ---------------------------------------------------------------------------------------------
// Demultiplexer (data path side)

/// Control path → demultiplexer.
pub(super) enum DemuxCmd {
    /// Start routing this peer's records to a new session.
    Install {
        addr: SocketAddr,
        session: Box<SessionRx>,
    },
    /// The LANs session `session_id` may now send from.
    Allow { session_id: u64, nets: Vec<IpNet> },
    /// The client's IPv6 tunnel address (its device got its pair at the client's Hello).
    Ipv6 {
        session_id: u64,
        tunnel_ip6: std::net::Ipv6Addr,
    },
    /// A rekey of session `session_id`: read `epoch` now, and send in it once a record of it
    /// came from the client.
    Rekey {
        session_id: u64,
        epoch: u16,
        keys: Box<dtun_proto::kdf::KeyBlock>,
    },
    /// Stop routing to session `session_id`.
    Remove { session_id: u64 },
}

/// What the demultiplexer needs of a live session.
pub(super) struct SessionRx {
    pub(super) session_id: u64,
    pub(super) opener: Opener,
    pub(super) tun: Arc<tun_rs::AsyncDevice>,
    /// MSS clamps (IPv4, IPv6) for SYNs into this TUN.
    pub(super) mss: (u16, u16),
    pub(super) counters: Arc<Counters>,
    /// The client's tunnel address and accepted LANs: the only inner sources it may use.
    pub(super) tunnel_ip: std::net::Ipv4Addr,
    /// The client's IPv6 tunnel address, when its device has one.
    pub(super) tunnel_ip6: Option<std::net::Ipv6Addr>,
    pub(super) allowed: Vec<IpNet>,
    /// The session's outbound task: Pings are answered here, not by the manager.
    pub(super) out_tx: mpsc::Sender<OutboundCmd>,
    /// The outbound task's next write keys, and the ones waiting for the client's first
    /// record of their epoch (which proves it has them).
    pub(super) keys_tx: crate::pump::KeysTx,
    pub(super) pending_send: Option<Arc<crate::pump::SendKeys>>,
    /// When the previous epoch's read key goes (`EPOCH_OVERLAP` after the switch).
    pub(super) retire_at: Option<Instant>,
    /// The session's half that meets every record: the peernet message, control records and
    /// their budget, our final flight resent.
    pub(super) inlet: Inlet,
    /// The connection ID its records may carry (a roaming session's), and where they go.
    pub(super) cid: Option<Cid>,
    pub(super) path: Path,
    /// Tells the outbound task where the records go after a move.
    pub(super) peer_tx: crate::pump::PeerTx,
}

/// What the demultiplexer saw that belongs to no session, for the shutdown summary.
#[derive(Default)]
pub struct DemuxCounters {
    /// Datagrams from addresses without a session that were neither a ClientHello nor part of
    /// a handshake in progress.
    unknown_peer: AtomicU64,
    /// Admission's counters (shared: admission counts, the summary reads).
    admission: Arc<AdmissionCounters>,
    /// Session events dropped because the manager's queue was full.
    events_dropped: AtomicU64,
}

impl DemuxCounters {
    pub(super) fn new(admission: Arc<AdmissionCounters>) -> Self {
        DemuxCounters {
            unknown_peer: AtomicU64::default(),
            events_dropped: AtomicU64::default(),
            admission,
        }
    }

    /// Admission's totals, datagrams from unknown peers, session events dropped.
    pub fn totals(&self) -> (dtun_proto::admission::AdmissionTotals, u64, u64) {
        (
            self.admission.snapshot(),
            self.unknown_peer.load(Relaxed),
            self.events_dropped.load(Relaxed),
        )
    }

    pub fn summary(&self) -> String {
        let a = self.admission.snapshot();
        format!(
            "unknown_peer={} cookies={} handshakes={} handshake_failed={} handshake_evicted={} handshake_limit={} events_dropped={}",
            self.unknown_peer.load(Relaxed),
            a.cookies,
            a.started,
            a.failed,
            a.evicted,
            a.limit,
            self.events_dropped.load(Relaxed)
        )
    }
}

/// Where the demultiplexer's session records go, and what it needs to open them.
pub(super) struct Delivery {
    /// For Authenticated events: one per completed handshake, each of which took a client with a
    /// valid key two round trips from a proven address.
    pub(super) ev_tx: mpsc::UnboundedSender<Event>,
    /// Session events to the manager: bounded, never awaited; a full queue is a counted drop.
    pub(super) events: mpsc::Sender<Event>,
    pub(super) counters: Arc<DemuxCounters>,
    pub(super) log_limit: RateLimit,
    /// Packets on their way into the sessions' TUNs, written once per receive batch.
    pub(super) tun_batch: TunBatch,
    pub(super) inbox: Inbox,
}

pub(super) struct Demux {
    pub(super) udp: Udp,
    pub(super) out: Delivery,
    pub(super) sessions: HashMap<SocketAddr, SessionRx>,
    /// Where each session is, and which session a connection ID belongs to.
    pub(super) by_id: HashMap<u64, SocketAddr>,
    pub(super) by_cid: HashMap<Cid, u64>,
    /// For path challenges.
    pub(super) rng: ring::rand::SystemRandom,
    pub(super) admission: Admission,
    pub(super) cmd_rx: mpsc::UnboundedReceiver<DemuxCmd>,
    pub(super) lookup: KeyLookup,
    /// Dummy keys for unknown identities (RFC 4279 §2): they fail like a wrong key.
    pub(super) dummy: ring::hmac::Key,
    /// Warnings about failed handshakes, at most a few a second.
    pub(super) fail_log: RateLimit,
    pub(super) counters: Arc<DemuxCounters>,
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
                if let Some(old) = self.sessions.remove(&addr) {
                    self.forget(&old);
                }
                self.by_id.insert(session.session_id, addr);
                if let Some(cid) = session.cid {
                    self.by_cid.insert(cid, session.session_id);
                }
                self.sessions.insert(addr, *session);
            }
            DemuxCmd::Allow { session_id, nets } => {
                if let Some(s) = self.session_mut(session_id) {
                    s.allowed = nets;
                }
            }
            DemuxCmd::Ipv6 {
                session_id,
                tunnel_ip6,
            } => {
                if let Some(s) = self.session_mut(session_id) {
                    s.tunnel_ip6 = Some(tunnel_ip6);
                }
            }
            DemuxCmd::Rekey {
                session_id,
                epoch,
                keys,
            } => {
                if let Some(s) = self.session_mut(session_id) {
                    dtun_proto::record::rekey_opener(&mut s.opener, &keys, false, epoch);
                    s.pending_send = Some(Arc::new(crate::pump::SendKeys {
                        epoch,
                        keys: *keys,
                        is_client: false,
                        cid: None,
                    }));
                }
            }
            DemuxCmd::Remove { session_id } => {
                if let Some(addr) = self.by_id.get(&session_id).copied()
                    && let Some(s) = self.sessions.remove(&addr)
                {
                    self.forget(&s);
                }
            }
        }
    }

    /// The live session `session_id`.
    fn session_mut(&mut self, session_id: u64) -> Option<&mut SessionRx> {
        let addr = self.by_id.get(&session_id)?;
        self.sessions
            .get_mut(addr)
            .filter(|s| s.session_id == session_id)
    }

    /// Drops a session's entries in the indexes (it left the address table).
    fn forget(&mut self, s: &SessionRx) {
        self.by_id.remove(&s.session_id);
        if let Some(cid) = s.cid
            && self.by_cid.get(&cid) == Some(&s.session_id)
        {
            self.by_cid.remove(&cid);
        }
    }

    /// Records of a roaming session (found by their connection ID) from `from`, an address
    /// that is not the session's: opened and delivered as any; when one was newer than all
    /// before it, `from` gets a path challenge (RFC 9146 §6: it moves nothing yet).
    async fn roaming_records(
        &mut self,
        session_id: u64,
        buf: &mut [u8],
        stride: usize,
        from: SocketAddr,
    ) {
        let Some(at) = self.by_id.get(&session_id).copied() else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&at) else {
            return;
        };
        // The client's own copy of a record a copier raced to where the session is now?
        // (Dropped as a replay by the opening; looked at first, one datagram at a time.)
        let now = Instant::now();
        for dg in buf.chunks_mut(stride) {
            match s.path.copy_check(now, from, &mut s.opener, dg, &self.rng) {
                Seen::Moved(back) => {
                    let _ = s.path.take_caught();
                    self.caught_copier(session_id, at, back);
                    self.move_session(session_id, at, back);
                    // The rest of the buffer is the session's, at its own address again.
                    if let Some(s) = self.sessions.get_mut(&back) {
                        let _ = Self::session_records(s, buf, stride, back, &mut self.out).await;
                    }
                    return;
                }
                Seen::Challenge(msg) => {
                    // A full queue loses this one; the client's next copies bring another.
                    let _ = s
                        .out_tx
                        .try_send(crate::pump::OutboundCmd::SendTo { to: from, msg });
                    break;
                }
                Seen::Current | Seen::Stale | Seen::Waiting => {}
            }
        }
        let before = s.opener.newest();
        let moved = Self::session_records(s, buf, stride, from, &mut self.out).await;
        let newer = s.opener.newest() > before;
        match s.path.records_from(now, from, newer, &self.rng) {
            Seen::Challenge(msg) => {
                // A full queue loses this one; the client's next records bring another.
                let _ = s
                    .out_tx
                    .try_send(crate::pump::OutboundCmd::SendTo { to: from, msg });
                if self.out.log_limit.allow() {
                    tracing::debug!(
                        "session {session_id} at {at}: records from {from}: path challenge sent"
                    );
                }
            }
            Seen::Stale => {
                if self.out.log_limit.allow() {
                    tracing::debug!(
                        "session {session_id} at {at}: records from {from} are not its newest: no move"
                    );
                }
            }
            Seen::Current | Seen::Waiting | Seen::Moved(_) => {}
        }
        if let Some(to) = moved {
            if s.path.take_caught() {
                self.caught_copier(session_id, at, to);
            }
            self.move_session(session_id, at, to);
        }
    }

    /// The log line of a session won back from a copier.
    fn caught_copier(&mut self, session_id: u64, at: SocketAddr, back: SocketAddr) {
        if self.out.log_limit.allow() {
            tracing::warn!(
                "session {session_id}: the client's own copies of records came from {back} while \
                 the session was at {at}: someone on the path raced them there; moved back, {at} barred"
            );
        }
    }

    /// Moves session `session_id` from `from` to `to` (its client answered the path challenge
    /// from there): the tables, the outbound task, and the manager.
    fn move_session(&mut self, session_id: u64, from: SocketAddr, to: SocketAddr) {
        let Some(s) = self.sessions.remove(&from) else {
            return;
        };
        let displaced = self.sessions.remove(&to).map(|other| {
            self.forget(&other);
            other.session_id
        });
        let _ = s.peer_tx.send(to);
        self.by_id.insert(session_id, to);
        self.sessions.insert(to, s);
        let _ = self.out.ev_tx.send(Event::Moved {
            session_id,
            from,
            to,
            displaced,
        });
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
            // Another session's connection ID from here: its client roamed to where a session
            // it left behind still sits (a NAT gave it that one's old port).
            if let Some(id) = dtun_proto::record::peek_cid(buf)
                .filter(|c| s.cid != Some(*c))
                .and_then(|c| self.by_cid.get(&c))
                .copied()
            {
                self.roaming_records(id, buf, stride, addr).await;
                return;
            }
            // A path response comes from the address challenged, which is not the session's.
            let _ = Self::session_records(s, buf, stride, addr, &mut self.out).await;
            return;
        }
        if let Some(id) = dtun_proto::record::peek_cid(buf).and_then(|c| self.by_cid.get(&c))
            && buf.chunks(stride).all(is_record)
        {
            self.roaming_records(*id, buf, stride, addr).await;
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
            let _ = Self::session_records(s, dg, stride, addr, &mut self.out).await;
            return;
        }
        let (lookup, dummy) = (&self.lookup, &self.dummy);
        let key =
            |id: &[u8]| lookup(id).unwrap_or_else(|| ring::hmac::sign(dummy, id).as_ref().to_vec());
        let outcome = self.admission.datagram(dg, addr, Instant::now(), key);
        match outcome {
            Outcome::Reply => {
                let reply = &self.admission.reply;
                Self::send(&self.udp, &mut self.out.log_limit, reply, addr, "handshake").await;
            }
            Outcome::Quiet => {}
            Outcome::Refused => self.drop_log(addr, "handshake_limit"),
            Outcome::Failed {
                why,
                identity,
                alert,
            } => {
                if alert {
                    let reply = &self.admission.reply;
                    Self::send(&self.udp, &mut self.out.log_limit, reply, addr, "alert").await;
                }
                if self.fail_log.allow() {
                    // An id the server has no key for fails on the wire exactly as a wrong key
                    // does (RFC 4279 §2); the log tells the two apart.
                    let why = match (self.lookup)(&identity) {
                        None if !identity.is_empty() => {
                            "its id is not listed (no key for it in -clients or the config's [clients]) or is disabled".to_string()
                        }
                        _ => why.replace(", or its id is unknown", ""),
                    };
                    tracing::warn!(
                        "handshake with {} (claimed id \"{}\") failed: {why}",
                        dtun_linux::udp::plain(addr),
                        identity.escape_ascii()
                    );
                }
            }
            Outcome::Completed(c) => {
                let flight = &c.final_flight;
                Self::send(
                    &self.udp,
                    &mut self.out.log_limit,
                    flight,
                    addr,
                    "final flight",
                )
                .await;
                let _ = self.out.ev_tx.send(Event::Authenticated { addr, est: c });
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
        // The client repeats its last flight, so ours was lost.
        let Some(flight) = s.inlet.final_flight_again(Instant::now(), dg) else {
            self.drop_log(addr, "unexpected_handshake");
            return;
        };
        if let Err(e) = self.udp.sock.send_to(flight, addr).await
            && !dtun_linux::udp::is_lost_datagram(&e)
        {
            tracing::debug!("resending the last handshake flight to {addr}: {e}");
        }
        if self.out.log_limit.allow() {
            tracing::debug!("{addr} repeated its last handshake flight: resent ours");
        }
    }

    /// Sends `bytes` (admission's reply, or a final flight) to `addr`.
    async fn send(udp: &Udp, log: &mut RateLimit, bytes: &[u8], addr: SocketAddr, what: &str) {
        if let Err(e) = udp.sock.send_to(bytes, addr).await
            && !dtun_linux::udp::is_lost_datagram(&e)
            && log.allow()
        {
            tracing::debug!("sending {what} to {addr}: {e}");
        }
    }

    /// Once a second: drops handshakes past their time, rotates the cookie secret, and ends
    /// the overlaps of rekeys past their time.
    fn sweep(&mut self, now: Instant) {
        self.admission.sweep(now);
        for s in self.sessions.values_mut() {
            if s.retire_at.is_some_and(|t| now >= t) {
                s.retire_at = None;
                s.opener.retire_previous();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtun_proto::consts::{CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_TLS12_CID};

    #[test]
    fn records_of_the_record_layer() {
        assert!(is_record(&[CONTENT_APPLICATION_DATA, 0xfe, 0xfd, 0, 1]));
        assert!(is_record(&[CONTENT_TLS12_CID, 0xfe, 0xfd, 0, 1]));
        assert!(is_record(&[CONTENT_ALERT, 0xfe, 0xfd, 0, 1]));
        assert!(!is_record(&[CONTENT_ALERT, 0xfe, 0xfd, 0, 0]));
        assert!(!is_record(&[22, 0xfe, 0xfd, 0, 0]));
        assert!(!is_record(&[]));
    }
}
