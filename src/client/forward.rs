//! The forwarding loop of a live session: inbound records to the TUN, control messages,
//! keepalive and the path MTU; outbound is `pump`'s task.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use dtun_linux::rate_limit::RateLimit;
use dtun_linux::tun::{Tun, TunWriter};
use dtun_linux::udp::{Receiver, Udp};
use dtun_proto::consts::{
    CONTENT_ALERT, CONTENT_APPLICATION_DATA, KEEPALIVE_MISSES, REFUSED_GRACE,
};
use dtun_proto::inbound;
use dtun_proto::inbound::{Counters, Inbound, Inbox};
use dtun_proto::proto::{CloseReason, Control};
use dtun_proto::record::{Opener, Sealer};

use super::{ClientError, LOG_MSS_CLAMPED, MIN_PATH_MTU, PATH_MTU_EVERY};
use crate::pump::{self, OutboundCmd};
use crate::supervise::TaskEnded;

/// Forwards server → TUN (the other way is the outbound task) and keeps the session alive.
/// Returns None on shutdown, else why the session ended; if the outbound task ended by itself,
/// its sealer is in `ended`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    tun: &Tun,
    udp: &Udp,
    server: SocketAddr,
    opener: &mut Opener,
    counters: &Counters,
    out_tx: &mpsc::Sender<OutboundCmd>,
    (out_task, ended): (&mut pump::OutboundTask, &mut Option<Sealer>),
    keepalive: Option<Duration>,
    mut path: PathMss,
    dns: &dtun_linux::dns::Dns,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Option<ClientError> {
    let mut rx = Receiver::default();
    let mut inbox = Inbox::default();
    let mut sink = Sink {
        dev: &tun.dev,
        writer: TunWriter::default(),
        mss: path.clamp.get(),
    };
    let controls = keepalive.is_some();
    let keepalive = keepalive.unwrap_or_default();
    let mut log_limit = RateLimit::new(5);
    let mut last_rx = Instant::now();
    let mut last_ping = Instant::now();
    let tick_every = if keepalive.is_zero() {
        Duration::from_secs(3600)
    } else {
        keepalive / 4
    };
    let mut tick = tokio::time::interval(tick_every.max(Duration::from_millis(50)));
    let mut pmtu_tick = tokio::time::interval(PATH_MTU_EVERY);
    pmtu_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An ICMP port unreachable is unauthenticated (anyone who guesses our port can send one):
    // a hint, never proof. Ping at once; the session ends only if nothing authenticated comes
    // within a keepalive period (REFUSED_GRACE when we cannot ping).
    let grace = if controls && !keepalive.is_zero() {
        keepalive
    } else {
        REFUSED_GRACE
    };
    let mut refused = Refused {
        since: None,
        timer: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
        grace,
        controls,
    };
    loop {
        tokio::select! {
            _ = shutdown.as_mut() => return None,
            () = &mut refused.timer, if refused.since.is_some() => {
                return Some(ClientError::Unreachable(server, grace));
            }
            // The outbound task ends by itself only when its sequence numbers run out.
            r = &mut *out_task => {
                return Some(match r {
                    Ok((sealer, _)) => {
                        *ended = Some(sealer);
                        ClientError::Exhausted
                    }
                    Err(e) => TaskEnded::from_join("outbound task", Err::<(), _>(e)).into(),
                });
            }
            _ = pmtu_tick.tick() => {
                path.refresh(&udp.sock);
                dns.tick();
                if udp.take_refused() {
                    refused.hint(server, out_tx, &mut last_ping, &mut log_limit);
                }
            }
            _ = tick.tick(), if !keepalive.is_zero() => {
                if udp.take_refused() {
                    refused.hint(server, out_tx, &mut last_ping, &mut log_limit);
                }
                let quiet = last_rx.elapsed();
                if quiet >= keepalive * KEEPALIVE_MISSES {
                    return Some(ClientError::Dead(server, quiet));
                }
                // One ping per period while quiet; four once a reply is overdue.
                let every = if quiet >= keepalive + keepalive / 2 { keepalive / 4 } else { keepalive };
                if quiet >= keepalive && last_ping.elapsed() >= every {
                    last_ping = Instant::now();
                    let _ = out_tx.try_send(OutboundCmd::Send(Control::Ping.to_bytes()));
                }
            }
            r = rx.recv(udp) => {
                let n = match r {
                    Ok(n) => n,
                    // ICMP port unreachable: the server may be gone, or someone spoofs it.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        refused.hint(server, out_tx, &mut last_ping, &mut log_limit);
                        continue;
                    }
                    Err(e) => {
                        if log_limit.allow() {
                            tracing::debug!("recv from {server}: {e}");
                        }
                        continue;
                    }
                };
                sink.mss = path.clamp.get();
                for i in 0..n {
                    let (_, stride, buf) = rx.buffer(i);
                    let (authenticated, end) = inbound(
                        &mut Session { opener, counters, sink: &mut sink, inbox: &mut inbox, out_tx, dns },
                        buf,
                        stride,
                        &mut log_limit,
                        controls,
                    )
                    .await;
                    if authenticated {
                        last_rx = Instant::now();
                        refused.since = None;
                    }
                    if end.is_some() {
                        sink.flush().await;
                        return end;
                    }
                }
                sink.flush().await;
            }
        }
    }
}

/// The state of an ICMP port unreachable the client is checking (see [`forward`]).
pub(super) struct Refused {
    /// When the first unanswered hint came.
    pub(super) since: Option<Instant>,
    /// Fires `grace` after `since`.
    pub(super) timer: Pin<Box<tokio::time::Sleep>>,
    pub(super) grace: Duration,
    /// Control messages were negotiated: the client can ping.
    pub(super) controls: bool,
}

impl Refused {
    /// An ICMP port unreachable arrived: ping at once and start the grace period, unless one
    /// is already running.
    pub(super) fn hint(
        &mut self,
        server: SocketAddr,
        out_tx: &mpsc::Sender<OutboundCmd>,
        last_ping: &mut Instant,
        log_limit: &mut RateLimit,
    ) {
        if self.since.is_some() {
            return;
        }
        let now = Instant::now();
        self.since = Some(now);
        self.timer.as_mut().reset(now + self.grace);
        if self.controls {
            *last_ping = now;
            let _ = out_tx.try_send(OutboundCmd::Send(Control::Ping.to_bytes()));
        }
        if log_limit.allow() {
            tracing::info!(
                "ICMP port unreachable from {server}: checking that the server is still there (the session ends if nothing comes within {:?})",
                self.grace
            );
        }
    }
}

/// Where a session's packets go: the TUN, in coalesced batches.
pub(super) struct Sink<'a> {
    pub(super) dev: &'a tun_rs::AsyncDevice,
    pub(super) writer: TunWriter,
    /// MSS clamps (IPv4, IPv6) for SYNs from the server's side, read from the session's
    /// [`PathMss`] once per receive batch.
    pub(super) mss: (u16, u16),
}

/// The session's MSS clamp, following the path MTU: the smaller of what the TUN MTU allows and
/// what fits the path MTU the kernel knows for the connected socket (lowered by ICMP
/// "fragmentation needed" after a too-big datagram with don't-fragment). Clamping on the client
/// covers both directions: both the SYN and the SYN-ACK of a connection pass it.
pub(super) struct PathMss {
    pub(super) clamp: pump::MssClamp,
    /// The clamps from the TUN MTU: the path never raises the clamp above them.
    pub(super) tun: (u16, u16),
    /// Outer IP and UDP headers plus the record overhead of the session's suite.
    pub(super) overhead: usize,
    /// The path MTU last read, 0 before the first reading.
    pub(super) last: u32,
}

impl PathMss {
    pub(super) fn new(tun_mtu: u32, overhead: usize) -> PathMss {
        PathMss {
            clamp: pump::MssClamp::new(tun_mtu),
            tun: pump::mss_clamps(tun_mtu),
            overhead,
            last: 0,
        }
    }

    /// The clamps for a path MTU of `path_mtu`.
    pub(super) fn for_path(&self, path_mtu: u32) -> (u16, u16) {
        let path = dtun_proto::mss::mss_for_path(path_mtu, self.overhead);
        (self.tun.0.min(path.0), self.tun.1.min(path.1))
    }

    /// Re-reads the path MTU of `sock` and updates the clamp, logging when it changes.
    pub(super) fn refresh(&mut self, sock: &UdpSocket) {
        let path_mtu = match dtun_linux::sys::path_mtu(&socket2::SockRef::from(sock)) {
            Ok(m) if m >= MIN_PATH_MTU => m,
            Ok(_) => return,
            Err(e) => {
                if self.last == 0 {
                    tracing::debug!("path MTU unknown: {e}");
                    self.last = 1;
                }
                return;
            }
        };
        if path_mtu == self.last {
            return;
        }
        self.last = path_mtu;
        let mss = self.for_path(path_mtu);
        if mss != self.clamp.get() {
            self.clamp.set(mss);
            tracing::info!(
                "path MTU {path_mtu}: {LOG_MSS_CLAMPED} {} (IPv6 {})",
                mss.0,
                mss.1
            );
        }
    }
}

impl Sink<'_> {
    pub(super) async fn push(&mut self, packet: &mut [u8]) {
        dtun_proto::mss::clamp(packet, self.mss.0, self.mss.1);
        if self.writer.push(packet) {
            self.flush().await;
        }
    }

    pub(super) async fn flush(&mut self) {
        if let Err(e) = self.writer.flush(self.dev).await {
            tracing::debug!("writing to TUN failed: {e}");
        }
    }
}

/// What a live session's inbound records act on.
pub(super) struct Session<'a, 's> {
    pub(super) opener: &'a mut Opener,
    pub(super) counters: &'a Counters,
    pub(super) sink: &'a mut Sink<'s>,
    pub(super) inbox: &'a mut Inbox,
    pub(super) out_tx: &'a mpsc::Sender<OutboundCmd>,
    pub(super) dns: &'a dtun_linux::dns::Dns,
}

/// Handles one receive buffer of a live session (its datagrams, `stride` bytes each). Returns
/// whether any record in it authenticated, and the end of the session if a record said so.
pub(super) async fn inbound(
    s: &mut Session<'_, '_>,
    buf: &mut [u8],
    stride: usize,
    log_limit: &mut RateLimit,
    controls: bool,
) -> (bool, Option<ClientError>) {
    let mut authenticated = false;
    // Other content types are late handshake retransmissions: the handshake is done with them.
    let records = s.inbox.open(s.opener, s.counters, buf, stride, |ct| {
        ct == CONTENT_APPLICATION_DATA || ct == CONTENT_ALERT
    });
    // The read key's integrity limit: a dtun server handshakes again; with an original the
    // session goes on (docs/PROTOCOL.md, AEAD usage limits).
    if controls && s.counters.integrity_limit_reached() {
        return (false, Some(ClientError::Exhausted));
    }
    for record in records {
        match record {
            Inbound::Data(r) => {
                authenticated = true;
                let data = &mut buf[r.clone()];
                if controls && Control::is_control(data) {
                    if let Some(end) = control_record(data, s.counters, s.out_tx, s.dns) {
                        return (true, Some(end));
                    }
                } else if inbound::accept_packet(s.counters, data) {
                    crate::supervise::fault_point(crate::supervise::Site::Client, data);
                    s.sink.push(data).await;
                } else if log_limit.allow() {
                    tracing::debug!("drop reason=not_ip");
                }
            }
            Inbound::Alert(_, 0) => {
                return (
                    true,
                    Some(ClientError::Closed(
                        dtun_proto::consts::CLOSE_NOTIFY_WORDS.into(),
                    )),
                );
            }
            Inbound::Alert(level, desc) => {
                let why = format!("alert {level}/{desc}");
                return (true, Some(ClientError::Closed(why)));
            }
            Inbound::Dropped(d) => {
                if log_limit.allow() {
                    tracing::debug!("drop reason={}", d.as_str());
                }
            }
        }
    }
    (authenticated, None)
}

/// Parses and acts on a control record from the server: a malformed one is a counted drop
/// (the session goes on). Returns the end of the session if the record says so.
pub(super) fn control_record(
    data: &[u8],
    counters: &Counters,
    out_tx: &mpsc::Sender<OutboundCmd>,
    dns: &dtun_linux::dns::Dns,
) -> Option<ClientError> {
    match Control::parse(data) {
        Ok(Control::Dns(servers)) => {
            // Unusable servers are refused (and logged) by the DNS state: counted drops.
            for _ in 0..dns.pushed(&servers) {
                counters.count_drop(inbound::DropKind::Unexpected);
            }
            None
        }
        Ok(c) => on_control(c, out_tx),
        Err(_) => {
            counters.count_drop(inbound::DropKind::Unexpected);
            None
        }
    }
}

/// Acts on a control message from the server; returns the end of the session if it is one.
pub(super) fn on_control(msg: Control, out_tx: &mpsc::Sender<OutboundCmd>) -> Option<ClientError> {
    match msg {
        Control::Ping => {
            let _ = out_tx.try_send(OutboundCmd::Send(Control::Pong.to_bytes()));
            None
        }
        Control::Close {
            reason: CloseReason::Replaced,
            detail,
        } => Some(ClientError::Replaced(
            String::new(),
            detail.escape_debug().to_string(),
        )),
        Control::Close {
            reason: CloseReason::Revoked,
            ..
        } => {
            tracing::warn!(
                "the server revoked this id (Revoked: removed, or its key changed, at a reload): check -id and the key with the server's operator"
            );
            None
        }
        Control::Close { reason, detail } => Some(ClientError::Closed(if detail.is_empty() {
            reason.words()
        } else {
            format!("{} ({})", reason.words(), detail.escape_debug())
        })),
        _ => None,
    }
}
