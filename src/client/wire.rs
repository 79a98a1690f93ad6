//! The setup's wire: the session's socket read datagram by datagram and the session's timer,
//! feeding [`ClientSession`] until its setup needs the caller (the address message, the end
//! of the Hello exchange) or ends; and what a session's end means for the user.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use dtun_proto::consts::{
    CLOSE_NOTIFY_WORDS, HANDSHAKE_REFUSALS, HANDSHAKE_TIMEOUT, SETUP_TIMEOUT,
};
use dtun_proto::handshake::HandshakeError;
use dtun_proto::inbound::{Counters, DropKind};
use dtun_proto::proto::{Addr6, AddressMessage, CloseReason};
use dtun_proto::record;
use dtun_proto::session::{self as proto_session, ClientSession, Event, Step};

use super::ClientError;
use super::sink::Sink;
use crate::pump::Link;

/// `now` for the session (its clock is std's).
pub(super) fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Takes the server's DNS servers; unusable ones are refused (and logged) by the DNS state:
/// counted drops.
pub(super) fn take_dns(servers: &[IpAddr], counters: &Counters, dns: &dtun_linux::dns::Dns) {
    for _ in 0..dns.pushed(servers) {
        counters.count_drop(DropKind::Unexpected);
    }
}

/// Where the setup stopped.
pub(super) enum Setup {
    Address(AddressMessage),
    Up(Option<Option<Addr6>>),
    Ended(proto_session::End),
    Refused,
    Send(std::io::Error),
    Shutdown,
}

/// The session's socket during the setup, datagram by datagram.
pub(super) struct Wire<'a> {
    pub(super) sock: &'a UdpSocket,
    pub(super) link: &'a Link,
    pub(super) server: SocketAddr,
    pub(super) buf: Vec<u8>,
    /// ICMP port unreachables during the handshake, and whether anything came at all.
    pub(super) refusals: u32,
    pub(super) answered: bool,
    pub(super) suite: Option<record::Suite>,
}

impl Wire<'_> {
    /// Feeds the session datagrams and its timer until its setup needs the caller: the
    /// address message, the end of the Hello exchange, or its end. Shutdown is heard during
    /// the handshake.
    pub(super) async fn drive(
        &mut self,
        s: &mut ClientSession,
        dns: &dtun_linux::dns::Dns,
        mut sink: Option<&mut Sink<'_>>,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Setup {
        loop {
            let handshaking = !s.is_established();
            let timer = s
                .next_timeout()
                .map(Instant::from_std)
                .unwrap_or_else(|| Instant::now() + HANDSHAKE_TIMEOUT);
            let step = tokio::select! {
                r = self.sock.recv(&mut self.buf) => match r {
                    Ok(n) => {
                        self.answered |= handshaking;
                        s.datagram(now(), &self.buf[..n])
                    }
                    Err(e) if handshaking && e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        self.refusals += 1;
                        if self.refusals >= HANDSHAKE_REFUSALS && !self.answered {
                            return Setup::Refused;
                        }
                        continue;
                    }
                    Err(e) => {
                        if handshaking {
                            tracing::debug!("recv: {e}");
                        }
                        continue;
                    }
                },
                _ = tokio::time::sleep_until(timer) => s.timeout(now()),
                _ = shutdown.as_mut(), if handshaking => return Setup::Shutdown,
            };
            if handshaking {
                self.send_handshake(&step.send).await;
                if let Some(r) = self.events(s, step.events, dns, sink.as_deref_mut()).await {
                    return r;
                }
            } else if let Some(r) = self.act(s, step, dns, sink.as_deref_mut()).await {
                return r;
            }
        }
    }

    /// Sends a step's datagrams, then acts on its events; returns where the setup stopped,
    /// if it did.
    pub(super) async fn act(
        &mut self,
        s: &ClientSession,
        step: Step,
        dns: &dtun_linux::dns::Dns,
        sink: Option<&mut Sink<'_>>,
    ) -> Option<Setup> {
        let mut failed = None;
        for d in &step.send {
            if let Err(e) = self.link.send(d).await {
                failed = Some(e);
                break;
            }
        }
        // A session that ended says why (a farewell that did not go out changes nothing).
        match (self.events(s, step.events, dns, sink).await, failed) {
            (Some(Setup::Ended(end)), _) => Some(Setup::Ended(end)),
            (_, Some(e)) => Some(Setup::Send(e)),
            (stop, None) => stop,
        }
    }

    async fn events(
        &mut self,
        s: &ClientSession,
        events: Vec<Event>,
        dns: &dtun_linux::dns::Dns,
        mut sink: Option<&mut Sink<'_>>,
    ) -> Option<Setup> {
        let mut stop = None;
        for e in events {
            match e {
                Event::Established {
                    suite,
                    hint,
                    negotiated,
                } => {
                    let hint = String::from_utf8_lossy(&hint);
                    tracing::debug!(
                        "handshake with {} done (server hint {hint:?}, control messages: {negotiated})",
                        self.server
                    );
                    self.suite = Some(suite);
                }
                Event::Address(a) => stop = Some(Setup::Address(a)),
                Event::Up { addr6 } => stop = Some(Setup::Up(addr6)),
                Event::Closed(end) => stop = Some(Setup::Ended(end)),
                Event::Dns(servers) => take_dns(&servers, s.counters(), dns),
                Event::Packet(mut p) => {
                    if let Some(sink) = sink.as_deref_mut() {
                        sink.push(&mut p).await;
                    }
                }
                Event::Checking(_) => {}
                // Only once the data path holds the keys (and this client offers no rekeying
                // yet: Config::rekey is None).
                Event::Rekeyed { .. } | Event::RetirePrevious => {}
            }
        }
        if let Some(sink) = sink {
            sink.flush().await;
        }
        stop
    }

    /// Sends handshake datagrams on the connected socket. A datagram dropped locally
    /// (firewall, full queue) is lost like any other: the handshake's retransmission deals
    /// with it.
    pub(super) async fn send_handshake(&self, datagrams: &[Vec<u8>]) {
        for d in datagrams {
            if let Err(e) = self.sock.send(d).await
                && !dtun_linux::udp::is_lost_datagram(&e)
            {
                tracing::debug!("sending a handshake datagram: {e}");
            }
        }
    }

    /// The setup failed on our side: close_notify, nothing more.
    pub(super) async fn abort(&self, s: &mut ClientSession) {
        for d in s.close(now(), None).send {
            let _ = self.link.send(&d).await;
        }
    }

    /// Why the setup ended, for the user; `addressed`: the address message had come.
    pub(super) fn error(&self, setup: Setup, id: &str, addressed: bool) -> ClientError {
        let server = self.server;
        match setup {
            Setup::Refused => ClientError::Refused(server),
            Setup::Send(e) => ClientError::Send(server, e),
            Setup::Ended(proto_session::End::Handshake(e)) => match e {
                HandshakeError::Timeout(_) if self.refusals > 0 && !self.answered => {
                    ClientError::Refused(server)
                }
                HandshakeError::Timeout(d) if !self.answered => ClientError::NoAnswer(server, d),
                e => ClientError::Handshake(server, e, id.to_string()),
            },
            Setup::Ended(end) => end_error(end, server, id, addressed),
            // The session stops only at its end, the address message, and the setup's end.
            Setup::Address(_) | Setup::Up(_) | Setup::Shutdown => {
                ClientError::NoAddress(SETUP_TIMEOUT)
            }
        }
    }
}

/// What the end of a session means for the user; `addressed`: the address message had come.
pub(super) fn end_error(
    end: proto_session::End,
    server: SocketAddr,
    id: &str,
    addressed: bool,
) -> ClientError {
    use proto_session::End as E;
    match end {
        E::Handshake(e) => ClientError::Handshake(server, e, id.to_string()),
        E::NoAddress => ClientError::NoAddress(SETUP_TIMEOUT),
        E::BadAddress(e) => ClientError::BadAddress(e),
        // A full server says so where the address message would be.
        E::Closed {
            reason: CloseReason::Refused,
            detail,
        } if !addressed => ClientError::Full(detail.escape_debug().to_string()),
        // Any other reason (the server could not set up our tunnel, say), in words.
        E::Closed { reason, detail } if !addressed => {
            ClientError::Closed(format!("{} ({})", reason.words(), detail.escape_debug()))
        }
        E::Closed {
            reason: CloseReason::Replaced,
            detail,
        } => ClientError::Replaced(id.to_string(), detail.escape_debug().to_string()),
        E::Closed { reason, detail } => ClientError::Closed(if detail.is_empty() {
            reason.words()
        } else {
            format!("{} ({})", reason.words(), detail.escape_debug())
        }),
        E::Alert(level, desc) => {
            let why = if desc == 0 {
                CLOSE_NOTIFY_WORDS.to_string()
            } else {
                format!("alert {level}/{desc}")
            };
            ClientError::Closed(if addressed {
                why
            } else {
                format!("{why} before the address message")
            })
        }
        E::Dead(quiet) => ClientError::Dead(server, quiet),
        E::Unreachable(grace) => ClientError::Unreachable(server, grace),
        E::Ours(Some(CloseReason::Exhausted)) => ClientError::Exhausted,
        E::Ours(_) => ClientError::Closed("closed by this client".into()),
    }
}
