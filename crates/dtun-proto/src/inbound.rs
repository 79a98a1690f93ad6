//! Inbound records, without I/O: opened in place by the session's [`Opener`] (a whole receive
//! buffer at once), classified (application data, alert, counted drop), and counted in the
//! session's [`Counters`], which status and metrics read. The socket readers of the client and
//! of the server's demultiplexer drive it ([`Inbox`]).

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::consts::{CONTENT_ALERT, CONTENT_APPLICATION_DATA};
use crate::record::{DropReason, Opener};

/// Why a packet or record was dropped, for counters and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropKind {
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

impl DropKind {
    const COUNT: usize = DropReason::ALL.len() + 5;

    fn index(self) -> usize {
        match self {
            DropKind::Record(r) => DropReason::ALL.iter().position(|x| *x == r).unwrap_or(0),
            DropKind::NotIp => DropReason::ALL.len(),
            DropKind::TooBig => DropReason::ALL.len() + 1,
            DropKind::Unexpected => DropReason::ALL.len() + 2,
            DropKind::ForgedSource => DropReason::ALL.len() + 3,
            DropKind::ControlFlood => DropReason::ALL.len() + 4,
        }
    }

    /// Every reason, in a fixed order (for status and metrics).
    pub fn all() -> impl Iterator<Item = DropKind> {
        DropReason::ALL.iter().map(|r| DropKind::Record(*r)).chain([
            DropKind::NotIp,
            DropKind::TooBig,
            DropKind::Unexpected,
            DropKind::ForgedSource,
            DropKind::ControlFlood,
        ])
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DropKind::Record(r) => r.as_str(),
            DropKind::NotIp => "not_ip",
            DropKind::TooBig => "too_big",
            DropKind::Unexpected => "unexpected_type",
            DropKind::ForgedSource => "forged_source",
            DropKind::ControlFlood => "control_flood",
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
    drops: [AtomicU64; DropKind::COUNT],
    /// The session's read key reached its integrity limit (failed authentications,
    /// [`Opener::integrity_limit_reached`]): set once by whoever opens its records, read by
    /// whoever owns the session, which closes it if the peer is a dtun peer.
    integrity_limit: AtomicBool,
    /// The session's write key is three quarters through a usage limit: a session that
    /// rekeys should do so now (set by the sender, taken by whoever runs the session).
    rekey_wanted: AtomicBool,
}

impl Counters {
    /// The sender's key wants replacing soon ([`crate::record::Sealer::wants_rekey`]).
    pub fn want_rekey(&self) {
        self.rekey_wanted.store(true, Relaxed);
    }

    /// Whether a rekey was asked for since the last call.
    pub fn take_rekey_wanted(&self) -> bool {
        self.rekey_wanted.swap(false, Relaxed)
    }

    #[inline]
    pub fn count_drop(&self, d: DropKind) {
        self.drops[d.index()].fetch_add(1, Relaxed);
    }

    /// Counts one packet delivered to the TUN.
    #[inline]
    pub fn count_rx(&self, len: usize) {
        self.rx_packets.fetch_add(1, Relaxed);
        self.rx_bytes.fetch_add(len as u64, Relaxed);
    }

    pub fn authenticated(&self) -> u64 {
        self.authenticated.load(Relaxed)
    }

    pub fn drops(&self, d: DropKind) -> u64 {
        self.drops[d.index()].load(Relaxed)
    }

    /// Whether the read key reached its integrity limit (set by `note_integrity_limit`).
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
        let drops: Vec<String> = DropKind::all()
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

/// What an inbound record turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Authenticated application data at this range of the record (or receive buffer).
    Data(Range<usize>),
    /// An authenticated alert: (level, description).
    Alert(u8, u8),
    /// Counted and dropped.
    Dropped(DropKind),
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
        Ok(_) => Inbound::Dropped(DropKind::Unexpected),
        Err(reason) => Inbound::Dropped(DropKind::Record(reason)),
    };
    match inbound {
        Inbound::Dropped(DropKind::Record(_)) => {}
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
    /// (drops counted). `keep` sees the outer type: a connection ID record's is
    /// [`crate::consts::CONTENT_TLS12_CID`], its real type is classified once it opened. Data
    /// ranges index `buf` (a CID record's: its content alone). A malformed record ends its
    /// datagram.
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
#[inline]
pub fn is_ip(packet: &[u8]) -> bool {
    matches!(packet.first().map(|b| b >> 4), Some(4) | Some(6))
}

/// Whether data is an IPv4 or IPv6 packet whose header length field matches its size (so a
/// setup message, which is text, is never taken for one).
#[inline]
pub fn is_whole_ip_packet(p: &[u8]) -> bool {
    match p.first().map(|b| b >> 4) {
        Some(4) => p.len() >= 20 && usize::from(u16::from_be_bytes([p[2], p[3]])) == p.len(),
        Some(6) => p.len() >= 40 && usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 == p.len(),
        _ => false,
    }
}

/// Whether authenticated data is an IP packet the TUN will take; counts it either way.
#[inline]
pub fn accept_packet(counters: &Counters, packet: &[u8]) -> bool {
    if is_ip(packet) {
        counters.count_rx(packet.len());
        true
    } else {
        counters.count_drop(DropKind::NotIp);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_summarise_drops() {
        let c = Counters::default();
        c.count_drop(DropKind::Record(DropReason::Replay));
        c.count_drop(DropKind::Record(DropReason::Replay));
        c.count_drop(DropKind::NotIp);
        assert_eq!(c.drops(DropKind::Record(DropReason::Replay)), 2);
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

    /// A spoofer packing many forged records into one datagram (all under one sequence
    /// number, which a failure never consumes) costs the key one failed authentication per
    /// datagram, as the review's probe needed 30 datagrams to reach CCM_8's 2^16 before.
    #[test]
    fn forged_records_count_once_per_datagram() {
        use crate::consts::{CONTENT_APPLICATION_DATA, PAYLOAD_OFFSET};
        use crate::kdf::KeyBlock;
        use crate::record::{Suite, session_pair};
        let kb = KeyBlock::for_test();
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

    /// Connection ID records among plain ones in a receive buffer: each classified by its real
    /// type, data ranges on the content alone, a CID record with another CID a counted drop.
    #[test]
    fn cid_records_in_an_inbox() {
        use crate::consts::{ALERT_CLOSE_NOTIFY, ALERT_LEVEL_WARNING, CONTENT_APPLICATION_DATA};
        use crate::kdf::KeyBlock;
        use crate::record::{Sealer, Suite, session_pair};
        let kb = KeyBlock::for_test();
        let (mut sealer, _) = session_pair(Suite::Aes128Gcm, &kb, true, 1, 7);
        let (_, mut opener) = session_pair(Suite::Aes128Gcm, &kb, false, 1, 0);
        let seal = |s: &mut Sealer, cid: Option<[u8; 8]>, ct: u8, msg: &[u8]| {
            assert!(s.set_cid(cid));
            let off = s.payload_offset();
            let mut b = vec![0u8; off + msg.len() + s.trailer_len()];
            b[off..off + msg.len()].copy_from_slice(msg);
            let n = s.seal(ct, &mut b, msg.len()).unwrap();
            b.truncate(n);
            b
        };
        let (cid, other) = ([9; 8], [8; 8]);
        opener.set_cid(Some(cid));
        let packet = [0x45, 1, 2, 3];
        let close = [ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY];
        let mut buf = [
            seal(&mut sealer, None, CONTENT_APPLICATION_DATA, &packet),
            seal(&mut sealer, Some(cid), CONTENT_APPLICATION_DATA, &packet),
            seal(&mut sealer, Some(other), CONTENT_APPLICATION_DATA, &packet),
            seal(&mut sealer, Some(cid), CONTENT_ALERT, &close),
        ]
        .concat();
        let stride = buf.len();
        let counters = Counters::default();
        let mut inbox = Inbox::default();
        let inbound = inbox.open(&mut opener, &counters, &mut buf, stride, |_| true);
        let [Inbound::Data(a), Inbound::Data(b), dropped, alert] = inbound else {
            panic!("{inbound:?}");
        };
        assert_eq!(
            (&buf[a.clone()], &buf[b.clone()]),
            (&packet[..], &packet[..])
        );
        assert_eq!(
            *dropped,
            Inbound::Dropped(DropKind::Record(DropReason::BadCid))
        );
        assert_eq!(
            *alert,
            Inbound::Alert(ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY)
        );
        assert_eq!(counters.drops(DropKind::Record(DropReason::BadCid)), 1);
        assert_eq!(counters.authenticated(), 3);
        assert!(
            counters.summary().ends_with("drops bad_cid=1"),
            "{}",
            counters.summary()
        );
    }

    /// After a rekey the opener still reads the previous epoch: forgeries aimed at it count
    /// towards the same integrity limit, and a datagram that mixes forgeries of both epochs
    /// still counts once (the outside review's bypass: one forged previous-epoch record
    /// ahead of 2 000 current ones left the current key's count at 0, and the previous
    /// key's count was never checked).
    #[test]
    fn forgeries_against_the_previous_epoch_count_too() {
        use crate::consts::{CONTENT_APPLICATION_DATA, PAYLOAD_OFFSET};
        use crate::kdf::KeyBlock;
        use crate::record::{Limits, Suite, rekey_opener, session_pair};
        let kb = KeyBlock::for_test();
        let forged = |epoch: u16| {
            let (mut sealer, _) = session_pair(Suite::Aes128Ccm8, &kb, true, epoch, 7);
            let mut rec = vec![0u8; 64];
            let n = sealer.seal(CONTENT_APPLICATION_DATA, &mut rec, 0).unwrap();
            rec.truncate(n);
            rec[PAYLOAD_OFFSET] ^= 1;
            rec
        };
        let (old, new) = (forged(1), forged(2));
        let fresh = || {
            let (_, o) = session_pair(Suite::Aes128Ccm8, &kb, false, 1, 0);
            let mut o = o.with_limits(Limits {
                failed_opens: 150,
                ..Limits::of(Suite::Aes128Ccm8)
            });
            rekey_opener(&mut o, &kb, false, 2);
            o
        };
        // 100 datagrams of one previous-epoch forgery and 200 current ones: 100 counted.
        let mut opener = fresh();
        let mut dg = old.clone();
        for _ in 0..200 {
            dg.extend_from_slice(&new);
        }
        let counters = Counters::default();
        let mut inbox = Inbox::default();
        for _ in 0..100 {
            let mut buf = dg.clone();
            let stride = buf.len();
            inbox.open(&mut opener, &counters, &mut buf, stride, |_| true);
        }
        assert_eq!(opener.failed_opens(), 100);
        assert!(!opener.integrity_limit_reached());
        // Previous-epoch forgeries alone reach the limit.
        let mut opener = fresh();
        let counters = Counters::default();
        for _ in 0..150 {
            let mut buf = old.clone();
            let stride = buf.len();
            inbox.open(&mut opener, &counters, &mut buf, stride, |_| true);
        }
        assert!(opener.integrity_limit_reached());
        assert!(counters.integrity_limit_reached());
    }
}
