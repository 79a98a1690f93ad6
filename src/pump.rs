//! The data path: moves IP packets between a TUN device and DTLS records, and nothing else.
//!
//! Outbound flow (one task per session, [`spawn_outbound`]):
//!   1. the kernel routes packets to the session's TUN; with offload one read brings a TCP
//!      super-packet of up to 64 KB, which `recv_multiple` splits into MTU-sized packets, each
//!      into its own slot at `PAYLOAD_OFFSET` so the record header fits in front; what is
//!      already queued is drained without waiting;
//!   2. packets over the peer's limit (1500 bytes, the original's buffer) are counted and
//!      dropped; a TCP SYN gets its MSS clamped to the tunnel, on the client also to the
//!      path MTU ([`crate::mss`], [`MssClamp`]);
//!   3. the [`Sealer`] encrypts the whole batch in place and writes header, nonce and tag
//!      around each packet (`seal_many`: CCM_8 records share AES passes, [`crate::ccm8`]);
//!   4. one record, one datagram: runs of equal-sized records leave in one `sendmsg` (UDP GSO,
//!      [`crate::udp::Batcher`]).
//!
//! Inbound flow (the socket's reader, server demultiplexer or client loop, uses [`Inbox`]):
//!   1. `recvmmsg` with UDP GRO brings buffers of same-sized datagrams from one source
//!      ([`crate::udp::Receiver`]);
//!   2. the records of a whole buffer are opened in place by the session's [`Opener`]
//!      (`open_many`: replay window and tag per record, CCM_8 records in shared passes);
//!   3. application data whose first nibble is 4 or 6 goes into a [`crate::tun::TunWriter`]
//!      batch, written coalesced at the end of the receive batch; alerts go to the control
//!      path; everything else is a counted drop.
//!
//! Buffers are allocated once per task; counters are relaxed atomics, no lock per packet.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tun_rs::{AsyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::consts::{
    ALERT_CLOSE_NOTIFY, ALERT_LEVEL_WARNING, CONTENT_ALERT, CONTENT_APPLICATION_DATA,
    MAX_COMPAT_PLAINTEXT, PAYLOAD_OFFSET,
};
use crate::record::{DropReason, Opener, Sealer};
use crate::udp::{Batcher, Udp};

/// One outbound slot: record header and nonce, a packet of at most 1500 bytes, the tag.
const SLOT: usize = PAYLOAD_OFFSET + MAX_COMPAT_PLAINTEXT + 16;
/// Slots per outbound task: two read batches, so a whole super-packet always fits after a read.
const SLOTS: usize = 2 * IDEAL_BATCH_SIZE;

/// Why a packet or record was dropped, for counters and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    Record(DropReason),
    /// Authenticated application data that is not an IPv4/IPv6 packet.
    NotIp,
    /// A TUN packet larger than a peer may receive.
    TooBig,
    /// An authenticated record of a content type we do not expect.
    Unexpected,
    /// A client's packet whose inner source address it may not use.
    ForgedSource,
    /// A control message beyond the session's budget (src/server/demux/records.rs).
    ControlFlood,
}

impl Drop {
    const COUNT: usize = DropReason::ALL.len() + 5;

    fn index(self) -> usize {
        match self {
            Drop::Record(r) => DropReason::ALL.iter().position(|x| *x == r).unwrap_or(0),
            Drop::NotIp => DropReason::ALL.len(),
            Drop::TooBig => DropReason::ALL.len() + 1,
            Drop::Unexpected => DropReason::ALL.len() + 2,
            Drop::ForgedSource => DropReason::ALL.len() + 3,
            Drop::ControlFlood => DropReason::ALL.len() + 4,
        }
    }

    /// Every reason, in a fixed order (for status and metrics).
    pub fn all() -> impl Iterator<Item = Drop> {
        DropReason::ALL.iter().map(|r| Drop::Record(*r)).chain([
            Drop::NotIp,
            Drop::TooBig,
            Drop::Unexpected,
            Drop::ForgedSource,
            Drop::ControlFlood,
        ])
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Record(r) => r.as_str(),
            Drop::NotIp => "not_ip",
            Drop::TooBig => "too_big",
            Drop::Unexpected => "unexpected_type",
            Drop::ForgedSource => "forged_source",
            Drop::ControlFlood => "control_flood",
        }
    }
}

/// Per-session traffic counters, shared with whoever reports them.
#[derive(Default, Debug)]
pub struct Counters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Every record whose tag verified (packets, control, alerts): the peer's signs of life.
    authenticated: AtomicU64,
    drops: [AtomicU64; Drop::COUNT],
    /// The session's read key reached its integrity limit (failed authentications,
    /// [`Opener::integrity_limit_reached`]): set once by whoever opens its records, read by
    /// whoever owns the session, which closes it if the peer is a dtun peer.
    integrity_limit: AtomicBool,
}

impl Counters {
    pub fn count_drop(&self, d: Drop) {
        self.drops[d.index()].fetch_add(1, Relaxed);
    }

    /// Counts one packet delivered to the TUN.
    pub fn count_rx(&self, len: usize) {
        self.rx_packets.fetch_add(1, Relaxed);
        self.rx_bytes.fetch_add(len as u64, Relaxed);
    }

    pub fn authenticated(&self) -> u64 {
        self.authenticated.load(Relaxed)
    }

    pub fn drops(&self, d: Drop) -> u64 {
        self.drops[d.index()].load(Relaxed)
    }

    /// Whether the read key reached its integrity limit ([`note_integrity_limit`]).
    pub fn integrity_limit_reached(&self) -> bool {
        self.integrity_limit.load(Relaxed)
    }

    /// One line for logs: `tx 10 pkts/840 B, rx 9 pkts/756 B, drops replay=1`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "tx {} pkts/{} B, rx {} pkts/{} B",
            self.tx_packets.load(Relaxed),
            self.tx_bytes.load(Relaxed),
            self.rx_packets.load(Relaxed),
            self.rx_bytes.load(Relaxed)
        );
        let drops: Vec<String> = Drop::all()
            .filter(|d| self.drops(*d) > 0)
            .map(|d| format!("{}={}", d.as_str(), self.drops(d)))
            .collect();
        if !drops.is_empty() {
            s.push_str(", drops ");
            s.push_str(&drops.join(" "));
        }
        s
    }
}

/// Lets through at most `per_second` events a second (for logs about network input).
pub struct RateLimit {
    per_second: u32,
    window: Instant,
    used: u32,
}

impl RateLimit {
    pub fn new(per_second: u32) -> Self {
        RateLimit {
            per_second,
            window: Instant::now(),
            used: 0,
        }
    }

    pub fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.used = 0;
        }
        self.used += 1;
        self.used <= self.per_second
    }
}

/// What an inbound record turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Authenticated application data at this range of the record (or receive buffer).
    Data(Range<usize>),
    /// An authenticated alert: (level, description).
    Alert(u8, u8),
    /// Counted and dropped.
    Dropped(Drop),
}

/// Opens one record in place and classifies it; counts drops.
pub fn open(opener: &mut Opener, counters: &Counters, record: &mut [u8]) -> Inbound {
    let result = opener.open(record);
    note_integrity_limit(opener, counters);
    classify(result, record, counters)
}

/// Once the opener's key reached its integrity limit, says so once (log and
/// [`Counters::integrity_limit_reached`]). One comparison per batch while below it.
fn note_integrity_limit(opener: &Opener, counters: &Counters) {
    if opener.integrity_limit_reached() && !counters.integrity_limit.swap(true, Relaxed) {
        tracing::warn!(
            "{} records failed authentication under this session's key: its integrity limit \
             (docs/PROTOCOL.md, AEAD usage limits); a dtun peer's session closes for fresh keys",
            opener.failed_opens()
        );
    }
}

/// What an opened record is (`buf` holds its plaintext); counts it.
fn classify(
    result: Result<(u8, Range<usize>), DropReason>,
    buf: &[u8],
    counters: &Counters,
) -> Inbound {
    let inbound = match result {
        Ok((CONTENT_APPLICATION_DATA, r)) => Inbound::Data(r),
        Ok((CONTENT_ALERT, r)) if r.len() == 2 => Inbound::Alert(buf[r.start], buf[r.start + 1]),
        Ok(_) => Inbound::Dropped(Drop::Unexpected),
        Err(reason) => Inbound::Dropped(Drop::Record(reason)),
    };
    match inbound {
        Inbound::Dropped(Drop::Record(_)) => {}
        _ => {
            counters.authenticated.fetch_add(1, Relaxed);
        }
    }
    if let Inbound::Dropped(d) = inbound {
        counters.count_drop(d);
    }
    inbound
}

/// Opens the records of one receive buffer at a time, so CCM_8 records share AES passes
/// ([`Opener::open_many`]). Its vectors are kept: once grown, a buffer allocates nothing.
#[derive(Default)]
pub struct Inbox {
    ranges: Vec<Result<Range<usize>, DropReason>>,
    /// The datagram each of `ranges` came in.
    datagram: Vec<usize>,
    opened: Vec<Result<(u8, Range<usize>), DropReason>>,
    inbound: Vec<Inbound>,
}

impl Inbox {
    /// Opens, in order, the records of the datagrams in `buf` (`stride` bytes each, the last
    /// one maybe shorter) whose content type `keep` accepts, and classifies each like [`open`]
    /// (drops counted). Data ranges index `buf`. A malformed record ends its datagram.
    ///
    /// Failed authentications count against the key's integrity limit once per datagram, not
    /// once per record: a spoofer packing hundreds of minimal forged records into one
    /// datagram (the replay window does not move on a failure, so they may even share a
    /// sequence number) pays for each datagram, as with one record each. The limit's margin
    /// is kept: even 2 250 records in a 64 KB datagram at 2^16 counted CCM_8 failures give a
    /// forgery a chance below 2^-37 (docs/PROTOCOL.md, AEAD usage limits).
    pub fn open(
        &mut self,
        opener: &mut Opener,
        counters: &Counters,
        buf: &mut [u8],
        stride: usize,
        keep: impl Fn(u8) -> bool,
    ) -> &[Inbound] {
        let stride = stride.max(1);
        self.ranges.clear();
        self.datagram.clear();
        for (d, dg) in buf.chunks(stride).enumerate() {
            let base = d * stride;
            for r in crate::record::records(dg) {
                match r {
                    Ok(r) if !keep(dg[r.start]) => continue,
                    Ok(r) => self.ranges.push(Ok(base + r.start..base + r.end)),
                    Err(e) => self.ranges.push(Err(e)),
                }
                self.datagram.push(d);
            }
        }
        self.opened.clear();
        self.opened
            .resize(self.ranges.len(), Err(DropReason::Truncated));
        opener.open_many(buf, &self.ranges, &mut self.opened);
        // One failed authentication per datagram counts; the others are taken back.
        let mut extra = 0;
        let mut counted = None;
        for (o, &d) in self.opened.iter().zip(&self.datagram) {
            if *o == Err(DropReason::BadTag) {
                if counted == Some(d) {
                    extra += 1;
                }
                counted = Some(d);
            }
        }
        opener.forgive_failed_opens(extra);
        note_integrity_limit(opener, counters);
        self.inbound.clear();
        for o in self.opened.drain(..) {
            self.inbound.push(classify(o, buf, counters));
        }
        &self.inbound
    }
}

/// Whether data starts like an IPv4 or IPv6 packet.
pub fn is_ip(packet: &[u8]) -> bool {
    matches!(packet.first().map(|b| b >> 4), Some(4) | Some(6))
}

/// Whether data is an IPv4 or IPv6 packet whose header length field matches its size (so a
/// setup message, which is text, is never taken for one).
pub fn is_whole_ip_packet(p: &[u8]) -> bool {
    match p.first().map(|b| b >> 4) {
        Some(4) => p.len() >= 20 && usize::from(u16::from_be_bytes([p[2], p[3]])) == p.len(),
        Some(6) => p.len() >= 40 && usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 == p.len(),
        _ => false,
    }
}

/// Whether authenticated data is an IP packet the TUN will take; counts it either way.
pub fn accept_packet(counters: &Counters, packet: &[u8]) -> bool {
    if is_ip(packet) {
        counters.count_rx(packet.len());
        true
    } else {
        counters.count_drop(Drop::NotIp);
        false
    }
}

/// Send errors that mean "this datagram was dropped locally", not "the peer is gone".
pub fn is_lost_datagram(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM)
            | Some(libc::ENOBUFS)
            | Some(libc::EAGAIN)
            | Some(libc::ENETUNREACH)
            | Some(libc::EHOSTUNREACH)
    )
}

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
            Err(e) if is_lost_datagram(&e) => Ok(0),
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
        let mut buf = vec![0u8; PAYLOAD_OFFSET + payload.len() + sealer.suite().tag_len()];
        buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + payload.len()].copy_from_slice(payload);
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

/// Spawns the outbound task with its command channel: the sender and the task's handle.
pub fn spawn_outbound(
    tun: Arc<AsyncDevice>,
    mss: MssClamp,
    link: Link,
    sealer: Sealer,
    counters: Arc<Counters>,
) -> (mpsc::Sender<OutboundCmd>, OutboundTask) {
    let (tx, rx) = outbound_channel();
    (tx, spawn_outbound_on(rx, tun, mss, link, sealer, counters))
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
) -> OutboundTask {
    let task = Outbound::new(tun, mss, link, counters);
    tokio::spawn(task.run(sealer, rx))
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
    log_limit: RateLimit,
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
            log_limit: RateLimit::new(5),
        }
    }

    /// Runs the outbound flow until told to stop or the sequence space is nearly used up.
    async fn run(
        mut self,
        mut sealer: Sealer,
        mut ctl: mpsc::Receiver<OutboundCmd>,
    ) -> (Sealer, OutboundEnd) {
        let link = self.link.clone();
        loop {
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
                cmd = ctl.recv() => match cmd {
                    Some(OutboundCmd::Send(msg)) => {
                        if let Err(e) = link.send_record(&mut sealer, CONTENT_APPLICATION_DATA, &msg).await {
                            tracing::debug!("control message not sent: {e}");
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
                    PAYLOAD_OFFSET,
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
                    let n = self.drain(first);
                    if !self.seal_and_send(&mut sealer, n).await {
                        return (sealer, OutboundEnd::Exhausted);
                    }
                }
            }
        }
    }

    /// Reads what the TUN already holds, without waiting, while a whole split still fits.
    fn drain(&mut self, mut n: usize) -> usize {
        while n + IDEAL_BATCH_SIZE <= SLOTS {
            match self.tun.try_recv_multiple(
                &mut self.raw,
                &mut self.slots[n..n + IDEAL_BATCH_SIZE],
                &mut self.sizes[n..n + IDEAL_BATCH_SIZE],
                PAYLOAD_OFFSET,
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
        let (mss4, mss6) = self.mss.get();
        for i in 0..n {
            let len = self.sizes[i];
            if len > MAX_COMPAT_PLAINTEXT {
                self.counters.count_drop(Drop::TooBig);
                self.sizes[i] = usize::MAX; // does not fit a slot: left unsealed
                continue;
            }
            crate::supervise::fault_point(
                crate::supervise::Site::Outbound,
                &self.slots[i][PAYLOAD_OFFSET..PAYLOAD_OFFSET + len],
            );
            crate::mss::clamp(
                &mut self.slots[i][PAYLOAD_OFFSET..PAYLOAD_OFFSET + len],
                mss4,
                mss6,
            );
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

/// MSS clamps (IPv4, IPv6) for a tunnel of `mtu`.
pub fn mss_clamps(mtu: u32) -> (u16, u16) {
    (
        crate::mss::mss_for_mtu(mtu, false),
        crate::mss::mss_for_mtu(mtu, true),
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
    fn counters_summarise_drops() {
        let c = Counters::default();
        c.count_drop(Drop::Record(DropReason::Replay));
        c.count_drop(Drop::Record(DropReason::Replay));
        c.count_drop(Drop::NotIp);
        assert_eq!(c.drops(Drop::Record(DropReason::Replay)), 2);
        assert!(
            c.summary().ends_with("drops replay=2 not_ip=1"),
            "{}",
            c.summary()
        );
        assert!(accept_packet(&c, &[0x45, 0]));
        assert!(accept_packet(&c, &[0x60, 0]));
        assert!(!accept_packet(&c, &[0x17, 0]));
        assert!(!accept_packet(&c, &[]));
        assert_eq!(c.rx_packets.load(Relaxed), 2);
    }

    #[test]
    fn setup_text_is_never_a_whole_ip_packet() {
        assert!(!is_whole_ip_packet(b"empty"));
        assert!(!is_whole_ip_packet(
            b"fd00:1:2:3:4:5:6::/112_padding_to_forty_bytes"
        ));
        let mut v4 = [0u8; 28];
        v4[0] = 0x45;
        v4[3] = 28;
        assert!(is_whole_ip_packet(&v4));
        v4[3] = 29;
        assert!(!is_whole_ip_packet(&v4));
    }

    #[test]
    fn mss_clamp_packs_both_families() {
        let c = MssClamp::new(1400);
        assert_eq!(c.get(), (1360, 1340));
        let other = c.clone();
        other.set((1240, 65535));
        assert_eq!(c.get(), (1240, 65535));
    }

    /// A spoofer packing many forged records into one datagram (all under one sequence
    /// number, which a failure never consumes) costs the key one failed authentication per
    /// datagram, as the review's probe needed 30 datagrams to reach CCM_8's 2^16 before.
    #[test]
    fn forged_records_count_once_per_datagram() {
        use crate::consts::{CONTENT_APPLICATION_DATA, PAYLOAD_OFFSET};
        use crate::kdf::KeyBlock;
        use crate::record::{Suite, session_pair};
        let kb = KeyBlock {
            client_key: [1; 16],
            server_key: [2; 16],
            client_iv: [3; 4],
            server_iv: [4; 4],
        };
        for suite in [Suite::Aes128Ccm8, Suite::Aes128Gcm] {
            let (mut sealer, _) = session_pair(suite, &kb, true, 1, 7);
            let (_, mut opener) = session_pair(suite, &kb, false, 1, 0);
            let mut rec = vec![0u8; 64];
            let n = sealer.seal(CONTENT_APPLICATION_DATA, &mut rec, 0).unwrap();
            rec.truncate(n);
            rec[PAYLOAD_OFFSET] ^= 1; // a forged tag (empty plaintext: the tag is all there is)
            // Three datagrams of 40 forged records each, in one receive buffer.
            let stride = 40 * rec.len();
            let mut buf: Vec<u8> = std::iter::repeat_n(rec.as_slice(), 120)
                .flatten()
                .copied()
                .collect();
            let counters = Counters::default();
            let mut inbox = Inbox::default();
            let inbound = inbox.open(&mut opener, &counters, &mut buf, stride, |_| true);
            assert_eq!(inbound.len(), 120, "{suite:?}");
            assert_eq!(opener.failed_opens(), 3, "{suite:?}: one per datagram");
        }
    }

    #[test]
    fn rate_limit_caps_a_burst() {
        let mut r = RateLimit::new(3);
        let allowed = (0..10).filter(|_| r.allow()).count();
        assert_eq!(allowed, 3);
    }
}
