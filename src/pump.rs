//! The data path: moves IP packets between a TUN device and DTLS records, and nothing else.
//!
//! Outbound flow (one task per session, [`spawn_outbound`]):
//!   1. the kernel routes packets to the session's TUN; with offload one read brings a TCP
//!      super-packet of up to 64 KB, which `recv_multiple` splits into MTU-sized packets, each
//!      into its own slot at `PAYLOAD_OFFSET` so the record header fits in front; what is
//!      already queued is drained without waiting;
//!   2. packets over the peer's limit (1500 bytes, the original's buffer) are counted and
//!      dropped; a TCP SYN gets its MSS clamped to the tunnel, on the client also to the
//!      path MTU ([`dtun_proto::mss`], [`MssClamp`]);
//!   3. the [`Sealer`] encrypts the whole batch in place and writes header, nonce and tag
//!      around each packet (`seal_many`: CCM_8 records share AES passes, [`dtun_proto::ccm8`]);
//!   4. one record, one datagram: runs of equal-sized records leave in one `sendmsg` (UDP GSO,
//!      [`dtun_linux::udp::Batcher`]).
//!
//! Inbound flow (the socket's reader, server demultiplexer or client loop, uses
//! [`Inbox`](dtun_proto::inbound::Inbox)):
//!   1. `recvmmsg` with UDP GRO brings buffers of same-sized datagrams from one source
//!      ([`dtun_linux::udp::Receiver`]);
//!   2. the records of a whole buffer are opened in place by the session's
//!      [`Opener`](dtun_proto::record::Opener)
//!      (`open_many`: replay window and tag per record, CCM_8 records in shared passes);
//!   3. application data whose first nibble is 4 or 6 goes into a [`dtun_linux::tun::TunWriter`]
//!      batch, written coalesced at the end of the receive batch; alerts go to the control
//!      path; everything else is a counted drop.
//!
//! Buffers are allocated once per task; counters are relaxed atomics, no lock per packet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::mpsc;
use tun_rs::{AsyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use dtun_linux::udp::{Batcher, Udp};
use dtun_proto::consts::{
    ALERT_CLOSE_NOTIFY, ALERT_LEVEL_WARNING, CID_LEN, CONTENT_ALERT, CONTENT_APPLICATION_DATA,
    MAX_COMPAT_PLAINTEXT, PAYLOAD_OFFSET,
};
use dtun_proto::inbound::{Counters, DropKind};
use dtun_proto::record::Sealer;

/// One outbound slot: record header (with a connection ID, RFC 9146) and nonce, a packet of at
/// most 1500 bytes, the inner content type of a connection ID record, the tag.
const SLOT: usize = PAYLOAD_OFFSET + CID_LEN + MAX_COMPAT_PLAINTEXT + 1 + 16;
/// Slots per outbound task: two read batches, so a whole super-packet always fits after a read.
const SLOTS: usize = 2 * IDEAL_BATCH_SIZE;

/// Where a session's records go: a peer through a (possibly shared) socket.
#[derive(Clone)]
pub struct Link {
    pub udp: Udp,
    pub peer: SocketAddr,
    /// The socket is connected to `peer` (client): plain `send` for single records.
    pub connected: bool,
}

impl Link {
    /// Sends one datagram. A local drop (a firewall's EPERM, a full queue's ENOBUFS, no route
    /// for a moment) is a lost datagram, as on the wire: Ok(0), not an error.
    pub async fn send(&self, datagram: &[u8]) -> std::io::Result<usize> {
        let sock = &self.udp.sock;
        let r = if self.connected {
            sock.send(datagram).await
        } else {
            sock.send_to(datagram, self.peer).await
        };
        match r {
            Err(e) if dtun_linux::udp::is_lost_datagram(&e) => Ok(0),
            Err(e) => {
                self.udp.note_send_error(&e);
                Err(e)
            }
            r => r,
        }
    }

    /// Seals `payload` as one record of `content_type` and sends it (control path: allocates).
    pub async fn send_record(
        &self,
        sealer: &mut Sealer,
        content_type: u8,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let off = sealer.payload_offset();
        let mut buf = vec![0u8; off + payload.len() + sealer.trailer_len()];
        buf[off..off + payload.len()].copy_from_slice(payload);
        let n = sealer
            .seal(content_type, &mut buf, payload.len())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.send(&buf[..n]).await.map(|_| ())
    }

    pub async fn send_close_notify(&self, sealer: &mut Sealer) -> std::io::Result<()> {
        self.send_record(
            sealer,
            CONTENT_ALERT,
            &[ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY],
        )
        .await
    }
}

/// Commands from the control path to an outbound task.
#[derive(Debug)]
pub enum OutboundCmd {
    /// Send this plaintext as one application record (a control message).
    Send(Vec<u8>),
    /// Send this control message to another address than the peer's (a path challenge to
    /// where a roaming client's records came from).
    SendTo { to: SocketAddr, msg: Vec<u8> },
    /// Stop; send `farewell` (a control message) and close_notify first if `notify`.
    Stop {
        notify: bool,
        farewell: Option<Vec<u8>>,
    },
}

/// Why an outbound task returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundEnd {
    /// Told to stop (or its command channel closed).
    Stopped,
    /// Its key is nearly used up: sequence numbers or the AEAD confidentiality limit
    /// ([`Sealer::nearly_exhausted`]): it sent
    /// nothing more, and the owner must close the session (Close reason 4, exhausted, and
    /// close_notify, with the sealer returned) so the client reconnects with fresh keys.
    Exhausted,
}

/// The outbound task's handle: it returns its sealer, so the caller can send more control
/// records in the same sequence space, and why it ended.
pub type OutboundTask = tokio::task::JoinHandle<(Sealer, OutboundEnd)>;

/// A rekey's write keys for the outbound task: seal in `epoch` with our half of `keys` from
/// the next batch on.
pub struct SendKeys {
    pub epoch: u16,
    pub keys: dtun_proto::kdf::KeyBlock,
    pub is_client: bool,
    /// Seal in the RFC 9146 format with this connection ID from this epoch on (the client's
    /// records of a roaming session).
    pub cid: Option<dtun_proto::record::Cid>,
}

/// Where a session's owner puts the next write keys (a watch, not the command queue: a rekey
/// must never be lost to a full queue, and only the newest keys matter).
pub type KeysTx = tokio::sync::watch::Sender<Option<Arc<SendKeys>>>;
pub type KeysRx = tokio::sync::watch::Receiver<Option<Arc<SendKeys>>>;

/// A new keys channel for one outbound task.
pub fn keys_channel() -> (KeysTx, KeysRx) {
    tokio::sync::watch::channel(None)
}

/// Where a roaming session's records go from now on (the server moves it; a watch for the
/// same reason as the keys).
pub type PeerTx = tokio::sync::watch::Sender<SocketAddr>;
pub type PeerRx = tokio::sync::watch::Receiver<SocketAddr>;

/// What a session's owner changes in its outbound task besides commands: the next write
/// keys, and (server) the peer's address after a move.
pub struct Steer {
    pub keys: KeysRx,
    pub peer: Option<PeerRx>,
}

/// Spawns the outbound task with its command channel: the sender and the task's handle.
pub fn spawn_outbound(
    tun: Arc<AsyncDevice>,
    mss: MssClamp,
    link: Link,
    sealer: Sealer,
    counters: Arc<Counters>,
    steer: Steer,
) -> (mpsc::Sender<OutboundCmd>, OutboundTask) {
    let (tx, rx) = outbound_channel();
    (
        tx,
        spawn_outbound_on(rx, tun, mss, link, sealer, counters, steer),
    )
}

/// An outbound task's command channel, made before the task (the server hands the sender to
/// the demultiplexer before the session's first record is sent).
pub fn outbound_channel() -> (mpsc::Sender<OutboundCmd>, mpsc::Receiver<OutboundCmd>) {
    mpsc::channel(8)
}

/// Spawns the outbound task on a channel from [`outbound_channel`].
pub fn spawn_outbound_on(
    rx: mpsc::Receiver<OutboundCmd>,
    tun: Arc<AsyncDevice>,
    mss: MssClamp,
    link: Link,
    sealer: Sealer,
    counters: Arc<Counters>,
    steer: Steer,
) -> OutboundTask {
    let task = Outbound::new(tun, mss, link, counters);
    tokio::spawn(task.run(sealer, rx, steer))
}

/// The outbound task's state: its buffers, allocated once.
struct Outbound {
    tun: Arc<AsyncDevice>,
    link: Link,
    counters: Arc<Counters>,
    /// The TUN's raw read: a virtio-net header and up to a 64 KB super-packet.
    raw: Vec<u8>,
    slots: Vec<Vec<u8>>,
    /// Packet lengths in the slots, then what [`Sealer::seal_many`] made of them.
    sizes: Vec<usize>,
    records: Vec<usize>,
    batcher: Batcher,
    /// MSS clamps for IPv4 and IPv6 SYNs: from the TUN MTU, lowered by the client to the
    /// path MTU when that is smaller.
    mss: MssClamp,
    log_limit: dtun_linux::rate_limit::RateLimit,
}

impl Outbound {
    fn new(tun: Arc<AsyncDevice>, mss: MssClamp, link: Link, counters: Arc<Counters>) -> Self {
        Outbound {
            batcher: Batcher::new(&link.udp),
            tun,
            link,
            counters,
            raw: vec![0u8; VIRTIO_NET_HDR_LEN + 65535],
            slots: vec![vec![0u8; SLOT]; SLOTS],
            sizes: vec![0; SLOTS],
            records: vec![0; SLOTS],
            mss,
            log_limit: dtun_linux::rate_limit::RateLimit::new(5),
        }
    }

    /// Runs the outbound flow until told to stop or the sequence space is nearly used up.
    async fn run(
        mut self,
        mut sealer: Sealer,
        mut ctl: mpsc::Receiver<OutboundCmd>,
        steer: Steer,
    ) -> (Sealer, OutboundEnd) {
        let Steer { mut keys, mut peer } = steer;
        let mut link = self.link.clone();
        loop {
            if sealer.wants_rekey() {
                self.counters.want_rekey();
            }
            if sealer.nearly_exhausted() {
                tracing::warn!(
                    "{} record sequence numbers and {} AES blocks of the key's usage limit left: \
                     closing the session for fresh keys",
                    sealer.remaining(),
                    sealer.blocks_left()
                );
                return (sealer, OutboundEnd::Exhausted);
            }
            tokio::select! {
                biased;
                Ok(()) = keys.changed() => {
                    if let Some(k) = keys.borrow_and_update().clone() {
                        dtun_proto::record::rekey_sealer(&mut sealer, &k.keys, k.is_client, k.epoch);
                        if k.cid.is_some() {
                            sealer.set_cid(k.cid);
                        }
                    }
                }
                Ok(to) = moved(&mut peer) => {
                    link.peer = to;
                    self.link.peer = to;
                }
                cmd = ctl.recv() => match cmd {
                    Some(OutboundCmd::Send(msg)) => {
                        if let Err(e) = link.send_record(&mut sealer, CONTENT_APPLICATION_DATA, &msg).await {
                            tracing::debug!("control message not sent: {e}");
                        }
                    }
                    Some(OutboundCmd::SendTo { to, msg }) => {
                        let there = Link { peer: to, connected: false, ..link.clone() };
                        if let Err(e) = there.send_record(&mut sealer, CONTENT_APPLICATION_DATA, &msg).await {
                            tracing::debug!("control message to {to} not sent: {e}");
                        }
                    }
                    Some(OutboundCmd::Stop { notify: true, farewell }) => {
                        if let Some(msg) = farewell {
                            let _ = link.send_record(&mut sealer, CONTENT_APPLICATION_DATA, &msg).await;
                        }
                        if let Err(e) = link.send_close_notify(&mut sealer).await {
                            tracing::debug!("close_notify not sent: {e}");
                        }
                        return (sealer, OutboundEnd::Stopped);
                    }
                    Some(OutboundCmd::Stop { notify: false, .. }) | None => {
                        return (sealer, OutboundEnd::Stopped);
                    }
                },
                r = self.tun.recv_multiple(
                    &mut self.raw,
                    &mut self.slots[..IDEAL_BATCH_SIZE],
                    &mut self.sizes[..IDEAL_BATCH_SIZE],
                    sealer.payload_offset(),
                ) => {
                    let first = match r {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => {
                            if self.log_limit.allow() {
                                tracing::warn!("reading the TUN device failed: {e}");
                            }
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let n = self.drain(first, sealer.payload_offset());
                    if !self.seal_and_send(&mut sealer, n).await {
                        return (sealer, OutboundEnd::Exhausted);
                    }
                }
            }
        }
    }

    /// Reads what the TUN already holds, without waiting, while a whole split still fits.
    fn drain(&mut self, mut n: usize, offset: usize) -> usize {
        while n + IDEAL_BATCH_SIZE <= SLOTS {
            match self.tun.try_recv_multiple(
                &mut self.raw,
                &mut self.slots[n..n + IDEAL_BATCH_SIZE],
                &mut self.sizes[n..n + IDEAL_BATCH_SIZE],
                offset,
            ) {
                Ok(k) => n += k,
                Err(_) => break,
            }
        }
        n
    }

    /// Seals slots `..n` and sends them in GSO runs. False: the sequence space is exhausted.
    async fn seal_and_send(&mut self, sealer: &mut Sealer, n: usize) -> bool {
        let peer = self.link.peer;
        let off = sealer.payload_offset();
        let (mss4, mss6) = self.mss.get();
        for i in 0..n {
            let len = self.sizes[i];
            if len > MAX_COMPAT_PLAINTEXT {
                self.counters.count_drop(DropKind::TooBig);
                self.sizes[i] = usize::MAX; // does not fit a slot: left unsealed
                continue;
            }
            crate::supervise::fault_point(
                crate::supervise::Site::Outbound,
                &self.slots[i][off..off + len],
            );
            dtun_proto::mss::clamp(&mut self.slots[i][off..off + len], mss4, mss6);
        }
        let sealed = sealer.seal_many(
            CONTENT_APPLICATION_DATA,
            &mut self.slots[..n],
            &self.sizes[..n],
            &mut self.records[..n],
        );
        for i in 0..n {
            let rec = self.records[i];
            if rec == 0 {
                continue;
            }
            self.batcher
                .push(&self.link.udp, peer, &self.slots[i][..rec])
                .await;
            self.counters.tx_packets.fetch_add(1, Relaxed);
            self.counters
                .tx_bytes
                .fetch_add(self.sizes[i] as u64, Relaxed);
        }
        self.batcher.flush(&self.link.udp, peer).await;
        if let Err(e) = sealed {
            tracing::warn!("{e}: the session must be renewed");
            return false;
        }
        true
    }
}

/// The next address a roaming session's records go to (never, without a watch).
async fn moved(peer: &mut Option<PeerRx>) -> Result<SocketAddr, ()> {
    match peer {
        Some(rx) => match rx.changed().await {
            Ok(()) => Ok(*rx.borrow_and_update()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// MSS clamps (IPv4, IPv6) for a tunnel of `mtu`.
pub fn mss_clamps(mtu: u32) -> (u16, u16) {
    (
        dtun_proto::mss::mss_for_mtu(mtu, false),
        dtun_proto::mss::mss_for_mtu(mtu, true),
    )
}

/// The MSS clamps (IPv4, IPv6) of a session, shared by its tasks: both values packed into one
/// atomic, so a reader gets a consistent pair with one relaxed load per batch, no lock.
#[derive(Clone, Debug)]
pub struct MssClamp(Arc<AtomicU32>);

impl MssClamp {
    /// Clamps for a tunnel of `mtu` ([`mss_clamps`]).
    pub fn new(mtu: u32) -> MssClamp {
        MssClamp(Arc::new(AtomicU32::new(Self::pack(mss_clamps(mtu)))))
    }

    pub fn get(&self) -> (u16, u16) {
        let v = self.0.load(Relaxed);
        ((v >> 16) as u16, v as u16)
    }

    pub fn set(&self, mss: (u16, u16)) {
        self.0.store(Self::pack(mss), Relaxed);
    }

    fn pack((v4, v6): (u16, u16)) -> u32 {
        (u32::from(v4) << 16) | u32::from(v6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mss_clamp_packs_both_families() {
        let c = MssClamp::new(1400);
        assert_eq!(c.get(), (1360, 1340));
        let other = c.clone();
        other.set((1240, 65535));
        assert_eq!(c.get(), (1240, 65535));
    }
}
