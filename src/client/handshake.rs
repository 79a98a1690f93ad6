//! The client's handshake on its socket: [`ClientHandshake`] (dtun_proto, no I/O) driven from
//! the session's connected UDP socket and a timer, until it is established, fails, or the
//! client is asked to stop. Application records that overtake the end of the handshake (the
//! address message when the server's last flight was lost, or a close_notify right after it)
//! are kept for the session's next step.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use dtun_proto::consts::{HANDSHAKE_REFUSALS, HANDSHAKE_TIMEOUT};
use dtun_proto::handshake::{ClientHandshake, Established, HandshakeError, Progress};

use super::early::{EarlyRecords, could_be_first};
use super::{ClientError, End};
use crate::config::ClientConfig;

fn lost(error: ClientError) -> End {
    End::Lost {
        error,
        was_up: false,
    }
}

/// Runs one handshake with `server` over `sock` (connected to it); `buf` is the session's
/// receive buffer. `Err` is how the session ends: the error, or a shutdown.
pub(super) async fn handshake(
    cfg: &ClientConfig,
    sock: &UdpSocket,
    server: SocketAddr,
    buf: &mut [u8],
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Result<(Box<Established>, EarlyRecords), End> {
    let rng = ring::rand::SystemRandom::new();
    let hs = ClientHandshake::new(
        cfg.id.as_bytes(),
        &cfg.key.0,
        &cfg.common.suites,
        &rng,
        std::time::Instant::now(),
    );
    let (mut hs, first) = match hs {
        Ok(h) => h,
        Err(e) => return Err(lost(ClientError::Handshake(server, e, cfg.id.clone()))),
    };
    send_handshake(sock, &first).await;
    let mut early = EarlyRecords::default();
    let (mut refusals, mut answered) = (0u32, false);
    let est = loop {
        let timer = hs.next_timeout().map(Instant::from_std);
        tokio::select! {
            r = sock.recv(buf) => match r {
                Ok(n) => {
                    answered = true;
                    // The address message, or an encrypted alert: a server refusing us at its
                    // -max-clients limit sends close_notify right after Finished.
                    if could_be_first(&buf[..n]) {
                        early.push(&buf[..n]);
                        continue;
                    }
                    match hs.datagram(std::time::Instant::now(), &buf[..n]) {
                        Ok(Progress::Send(d)) => send_handshake(sock, &d).await,
                        Ok(Progress::Wait) => {}
                        Ok(Progress::Established(e)) => break Ok(e),
                        Err(f) => break Err(f),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    refusals += 1;
                    if refusals >= HANDSHAKE_REFUSALS && !answered {
                        return Err(lost(ClientError::Refused(server)));
                    }
                }
                Err(e) => tracing::debug!("recv: {e}"),
            },
            _ = tokio::time::sleep_until(timer.unwrap_or_else(|| Instant::now() + HANDSHAKE_TIMEOUT)) => {
                match hs.timeout(std::time::Instant::now()) {
                    Ok(Some(d)) => send_handshake(sock, &d).await,
                    Ok(None) => {}
                    Err(f) => break Err(f),
                }
            }
            _ = shutdown.as_mut() => return Err(End::Shutdown),
        }
    };
    match est {
        Ok(est) => Ok((est, early)),
        Err(f) => {
            if let Some(alert) = &f.alert {
                send_handshake(sock, alert).await;
            }
            tracing::debug!(
                "handshake with {server} failed ({} datagram parts ignored)",
                hs.ignored()
            );
            Err(lost(match f.error {
                HandshakeError::Timeout(_) if refusals > 0 && !answered => {
                    ClientError::Refused(server)
                }
                HandshakeError::Timeout(d) if !answered => ClientError::NoAnswer(server, d),
                e => ClientError::Handshake(server, e, cfg.id.clone()),
            }))
        }
    }
}

/// Sends a handshake datagram on the connected socket. A datagram dropped locally (firewall,
/// full queue) is lost like any other: the handshake's retransmission deals with it.
async fn send_handshake(sock: &UdpSocket, dg: &[u8]) {
    if let Err(e) = sock.send(dg).await
        && !dtun_linux::udp::is_lost_datagram(&e)
    {
        tracing::debug!("sending a handshake datagram: {e}");
    }
}
