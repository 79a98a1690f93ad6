//! Batched UDP through `quinn-udp`: records go out in runs of equal-sized datagrams handed to
//! the kernel in one `sendmsg` (UDP GSO), and come in through `recvmmsg` with UDP GRO, which
//! glues same-sized datagrams of one sender into one buffer with a stride. On the wire nothing
//! changes: every record is still its own datagram, so a peer without any of this (the
//! original dtun) sees the same packets.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The source address the kernel would pick now for a datagram to `peer` (with firewall
/// mark `mark`): what a fresh socket connected to it gets. No packet is sent.
pub async fn preferred_source(
    peer: SocketAddr,
    mark: Option<u32>,
) -> std::io::Result<std::net::IpAddr> {
    let any: SocketAddr = match peer {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = UdpSocket::bind(any).await?;
    if let Some(m) = mark {
        crate::sys::set_mark(&socket2::SockRef::from(&probe), m)?;
    }
    probe.connect(peer).await?;
    Ok(probe.local_addr()?.ip())
}

/// Largest UDP payload of one GSO send over IPv4 (65535 less IP and UDP headers).
const MAX_GSO_PAYLOAD: usize = 65507;
/// Receive buffers per `recvmmsg`, each up to 64 KB of coalesced datagrams.
pub const RECV_BUFS: usize = 8;
const RECV_BUF_LEN: usize = 65536;

/// A UDP socket with its batching state.
#[derive(Clone)]
pub struct Udp {
    pub sock: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
    /// A send failed with ECONNREFUSED (an ICMP port unreachable came back on a connected
    /// socket, and the send took the error before a receive could): see [`Udp::take_refused`].
    refused: Arc<AtomicBool>,
}

impl Udp {
    /// Turns on GRO (and IP_PKTINFO) for `sock`: from now on every reader must split what it
    /// receives by stride ([`Receiver`]).
    pub fn new(sock: Arc<UdpSocket>) -> std::io::Result<Udp> {
        let state = UdpSocketState::new((&*sock).into())?;
        // quinn-udp sets "don't fragment" for path MTU probing; a tunnel whose -mtu is larger
        // than the path needs the kernel to fragment, as it did before batching.
        allow_fragmentation(&sock);
        Ok(Udp {
            sock,
            state: Arc::new(state),
            refused: Arc::default(),
        })
    }

    /// Turns GRO off (a reader that does not split by stride yet) or back on.
    pub fn set_gro(&self, on: bool) -> std::io::Result<()> {
        crate::sys::set_udp_gro(&socket2::SockRef::from(&*self.sock), on)
    }

    /// Notes a send error: ECONNREFUSED is remembered for [`Udp::take_refused`].
    pub fn note_send_error(&self, e: &std::io::Error) {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            self.refused.store(true, Relaxed);
        }
    }

    /// Re-binds the socket connected to `peer` (the client's) when the kernel would now send
    /// there from another source address than the socket's (ours went away, or another
    /// interface is preferred): dissolves the association and connects again, which picks a
    /// new source address and port. `mark`: the firewall mark the socket carries (`-route`),
    /// so the question is asked of the same routes. Returns the new local address, or None
    /// when the socket's is still the one to use, or the new one would be one of `avoid` (the
    /// tunnel's own addresses: a route to the peer through the tunnel is no path). A socket
    /// left unconnected by a failed connect (no route at that instant) is connected again by
    /// the next call.
    pub async fn rebind_if_moved(
        &self,
        peer: SocketAddr,
        mark: Option<u32>,
        avoid: &[std::net::IpAddr],
    ) -> std::io::Result<Option<SocketAddr>> {
        let connected = self.sock.peer_addr().is_ok_and(|p| p == peer);
        let local = self.sock.local_addr().ok().filter(|_| connected);
        let now = match preferred_source(peer, mark).await {
            Ok(ip) => ip,
            // No route to the peer right now: keep the socket until one appears.
            Err(_) => return Ok(None),
        };
        if local.is_some_and(|l| l.ip() == now) || avoid.contains(&now) {
            return Ok(None);
        }
        crate::sys::disconnect(&*self.sock)?;
        self.sock.connect(peer).await?;
        self.sock.local_addr().map(Some)
    }

    /// Whether a send saw ECONNREFUSED since the last call.
    pub fn take_refused(&self) -> bool {
        self.refused.swap(false, Relaxed)
    }

    fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }

    /// Sends `count` datagrams laid end to end in `buf`, each `segment` bytes but the last,
    /// which may be shorter. A local drop is a lost datagram (Ok). If the kernel refuses
    /// segmentation for this size (EINVAL/EMSGSIZE/EIO: a datagram above the path MTU, a
    /// device without it), the datagrams go one by one.
    pub async fn send_run(
        &self,
        peer: SocketAddr,
        buf: &[u8],
        segment: usize,
        count: usize,
    ) -> std::io::Result<()> {
        let t = Transmit {
            destination: peer,
            ecn: None,
            contents: buf,
            segment_size: (count > 1).then_some(segment),
            src_ip: None,
        };
        let r = self
            .sock
            .async_io(Interest::WRITABLE, || {
                self.state.try_send((&*self.sock).into(), &t)
            })
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if is_lost_datagram(&e) => Ok(()),
            Err(e) if count > 1 => {
                tracing::trace!("GSO send of {count} x {segment} refused ({e}); sending singly");
                for d in buf.chunks(segment) {
                    match self.sock.send_to(d, peer).await {
                        Err(e) if !is_lost_datagram(&e) => return Err(e),
                        _ => {}
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Best effort: IP_PMTUDISC_WANT / IPV6_PMTUDISC_WANT (the kernel default for UDP).
fn allow_fragmentation(sock: &UdpSocket) {
    let s = socket2::SockRef::from(sock);
    let _ = crate::sys::set_pmtudisc_want(&s);
}

/// Gathers records into runs of equal-sized datagrams for [`Udp::send_run`]. One per
/// sending task; its buffer is allocated once.
pub struct Batcher {
    buf: Vec<u8>,
    segment: usize,
    count: usize,
    max_segments: usize,
}

impl Batcher {
    pub fn new(udp: &Udp) -> Batcher {
        Batcher {
            buf: Vec::with_capacity(MAX_GSO_PAYLOAD + RECV_BUF_LEN),
            segment: 0,
            count: 0,
            max_segments: udp.max_segments(),
        }
    }

    /// Adds one datagram, first sending what is queued if `datagram` cannot join the run.
    pub async fn push(&mut self, udp: &Udp, peer: SocketAddr, datagram: &[u8]) {
        let len = datagram.len();
        if self.count > 0
            && (len > self.segment
                || self.count == self.max_segments
                || self.buf.len() + len > MAX_GSO_PAYLOAD)
        {
            self.flush(udp, peer).await;
        }
        if self.count == 0 {
            self.segment = len;
        }
        self.buf.extend_from_slice(datagram);
        self.count += 1;
        // A shorter datagram can only end a run.
        if len < self.segment {
            self.flush(udp, peer).await;
        }
    }

    pub async fn flush(&mut self, udp: &Udp, peer: SocketAddr) {
        if self.count > 0
            && let Err(e) = udp
                .send_run(peer, &self.buf, self.segment, self.count)
                .await
        {
            udp.note_send_error(&e);
            tracing::debug!("sending {} record(s) to {peer} failed: {e}", self.count);
        }
        self.buf.clear();
        self.count = 0;
    }
}

/// Receive buffers for [`Udp`]: `recvmmsg` with GRO fills up to `RECV_BUFS` buffers, each with
/// same-sized datagrams from one source.
pub struct Receiver {
    bufs: Vec<Vec<u8>>,
    metas: [RecvMeta; RECV_BUFS],
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver {
            bufs: vec![vec![0u8; RECV_BUF_LEN]; RECV_BUFS],
            metas: [RecvMeta::default(); RECV_BUFS],
        }
    }
}

impl Receiver {
    /// Waits for datagrams and returns how many buffers were filled; read them with
    /// [`Receiver::buffer`].
    pub async fn recv(&mut self, udp: &Udp) -> std::io::Result<usize> {
        let Receiver { bufs, metas } = self;
        udp.sock
            .async_io(Interest::READABLE, || {
                let mut it = bufs.iter_mut();
                let mut iovs: [IoSliceMut; RECV_BUFS] = std::array::from_fn(|_| {
                    IoSliceMut::new(it.next().map(|b| &mut b[..]).unwrap_or_default())
                });
                udp.state.recv((&*udp.sock).into(), &mut iovs, metas)
            })
            .await
    }

    /// Buffer `i` of the last receive: its source, its stride (the size of each datagram in
    /// it, the last one maybe shorter) and its bytes.
    pub fn buffer(&mut self, i: usize) -> (SocketAddr, usize, &mut [u8]) {
        let m = self.metas[i];
        let end = m.len.min(RECV_BUF_LEN);
        (m.addr, m.stride.max(1), &mut self.bufs[i][..end])
    }
}

/// An IPv4 peer seen through the dual-stack socket (`::ffff:a.b.c.d`) as plain IPv4, for
/// everything a person reads (logs, status); the socket itself keeps the mapped form.
pub fn plain(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        a => a,
    }
}

/// Who holds UDP `port` on this host, as `program (pid N)`, when /proc tells (it does not for
/// another user's process under `ProtectProc=invisible`, or without the rights to read its fds).
pub fn port_holder(port: u16) -> Option<String> {
    let want = format!(":{port:04X} ");
    let inode = ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                // local_address is field 1 (ADDR:PORT in hex), the inode field 9.
                let local = f.get(1)?;
                (format!("{local} ").ends_with(&want)).then(|| f.get(9)?.parse::<u64>().ok())?
            })
        })?;
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str())
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let comm: String = comm
                .trim()
                .chars()
                .filter(|c| !c.is_control())
                .take(32)
                .collect();
            return Some(format!("{comm} (pid {pid})"));
        }
    }
    None
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
