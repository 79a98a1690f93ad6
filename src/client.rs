//! The client: handshake with the server, receive the address message, bring up the TUN,
//! announce the peernet, run the up script, then forward packets until the session ends.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::config::{ClientConfig, ConfigError};
use crate::consts::{
    BUF_LEN, CONTENT_APPLICATION_DATA, FIRST_APP_SEQUENCE, HANDSHAKE_QUEUE, HANDSHAKE_TIMEOUT,
    SETUP_TIMEOUT,
};
use crate::dtls::{self, ChannelConn, HandshakeError, Role};
use crate::hooks::{self, HookError, TunnelEnv};
use crate::netlink::{Netlink, NetlinkError};
use crate::proto::{AddressMessage, ProtoError};
use crate::pump::{self, Counters, Inbound, Link, OutboundCmd, RateLimit};
use crate::record::{self, Opener};
use crate::tun::{self, TunError};

/// Log line once forwarding starts (tests look for it).
pub const LOG_TUNNEL_UP: &str = "tunnel up";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open a UDP socket towards {0}: {1}")]
    Socket(SocketAddr, std::io::Error),
    #[error(
        "server {0} refused the connection (ICMP port unreachable): check -host and -port, and that dtun runs there"
    )]
    Refused(SocketAddr),
    #[error("no answer from {0} within {1:?}: check -host, -port and any firewall on the way")]
    NoAnswer(SocketAddr, Duration),
    #[error("handshake with {0} failed: {1}; check -key (and that the server accepts -id {2:?})")]
    Handshake(SocketAddr, HandshakeError, String),
    #[error("the server sent no address message within {0:?}")]
    NoAddress(Duration),
    #[error("bad address message from the server: {0}")]
    BadAddress(ProtoError),
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{0}; the tunnel is closed")]
    Hook(#[from] HookError),
    #[error("sending to {0} failed: {1}")]
    Send(SocketAddr, std::io::Error),
    #[error("the server closed the session ({0})")]
    Closed(String),
}

/// Runs one client session until it ends or `shutdown` resolves (then: close_notify, Ok).
pub async fn run(cfg: ClientConfig, shutdown: impl Future<Output = ()>) -> Result<(), ClientError> {
    tokio::pin!(shutdown);
    let server = cfg.server_addr().await?;
    let local: SocketAddr = match server.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local)
        .await
        .map_err(|e| ClientError::Socket(server, e))?;
    sock.connect(server)
        .await
        .map_err(|e| ClientError::Socket(server, e))?;
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; BUF_LEN];

    // 1. Handshake. Records that overtake the end of our handshake (the address message when
    //    the server's last flight was lost) are kept for step 2.
    let (hs_tx, hs_rx) = mpsc::channel(HANDSHAKE_QUEUE);
    let conn = ChannelConn::new(hs_rx, Arc::clone(&sock), server, true);
    let role = Role::Client {
        identity: cfg.id.as_bytes().to_vec(),
        key: cfg.key.0.clone(),
    };
    let hs = dtls::handshake(role, conn);
    tokio::pin!(hs);
    let mut early: Vec<Vec<u8>> = Vec::new();
    let (mut refused, mut answered) = (false, false);
    let est = loop {
        tokio::select! {
            r = &mut hs => break r,
            r = sock.recv(&mut buf) => match r {
                Ok(n) => {
                    answered = true;
                    if buf[..n].first() == Some(&CONTENT_APPLICATION_DATA) {
                        if early.len() < 4 {
                            early.push(buf[..n].to_vec());
                        }
                    } else {
                        let _ = hs_tx.try_send(buf[..n].to_vec());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused = true,
                Err(e) => tracing::debug!("recv: {e}"),
            },
            _ = &mut shutdown => return Ok(()),
        }
    };
    let est = est.map_err(|f| match f.error {
        HandshakeError::Timeout(_) if refused && !answered => ClientError::Refused(server),
        HandshakeError::Timeout(d) if !answered => ClientError::NoAnswer(server, d),
        e => ClientError::Handshake(server, e, cfg.id.clone()),
    })?;
    drop(hs_tx);
    tracing::info!(
        "handshake with {server} done (server hint {:?})",
        String::from_utf8_lossy(&est.peer_identity)
    );
    let (mut sealer, mut opener) =
        record::session_pair(est.suite, &est.keys, true, 1, FIRST_APP_SEQUENCE);
    let counters = Arc::new(Counters::default());
    let link = Link {
        sock: Arc::clone(&sock),
        peer: None,
    };

    // 2. The address message.
    let addrs = match first_data(&mut opener, &counters, &sock, &mut buf, early).await {
        Some(msg) => AddressMessage::parse(&msg).map_err(ClientError::BadAddress)?,
        None => {
            let _ = link.send_close_notify(&mut sealer).await;
            return Err(ClientError::NoAddress(SETUP_TIMEOUT));
        }
    };
    drop(est.conn);

    // 3. The TUN device.
    let nl = Netlink::new()?;
    let mtu = cfg.tun.mtu_for(est.suite, server);
    let tun = tun::create(&nl, &cfg.tun.name, mtu).await?;
    nl.add_p2p_address(tun.index, addrs.client, addrs.server)
        .await?;

    // 4. Our LAN, then the up script, then forwarding.
    link.send_record(
        &mut sealer,
        CONTENT_APPLICATION_DATA,
        cfg.peernet.to_wire().as_bytes(),
    )
    .await
    .map_err(|e| ClientError::Send(server, e))?;
    let env = TunnelEnv {
        tun: tun.name.clone(),
        peer_ip: addrs.server,
        local_ip: addrs.client,
    };
    if let Some(up) = &cfg.up
        && let Err(e) = hooks::run("up", up, &env).await
    {
        let _ = link.send_close_notify(&mut sealer).await;
        return Err(e.into());
    }
    tracing::info!(
        "{LOG_TUNNEL_UP}: dev {} local {} peer {} mtu {mtu}, server {server}",
        tun.name,
        addrs.client,
        addrs.server
    );

    let (out_tx, out_rx) = mpsc::channel(4);
    let out_task = tokio::spawn(pump::outbound(
        Arc::clone(&tun.dev),
        link,
        sealer,
        Arc::clone(&counters),
        out_rx,
    ));
    let mut log_limit = RateLimit::new(5);
    let result = loop {
        tokio::select! {
            _ = &mut shutdown => {
                let _ = out_tx.send(OutboundCmd::Stop { notify: true }).await;
                break Ok(());
            }
            r = sock.recv(&mut buf) => {
                let n = match r {
                    Ok(n) => n,
                    Err(e) => {
                        if log_limit.allow() {
                            tracing::warn!("server {server} unreachable: {e}");
                        }
                        continue;
                    }
                };
                if let Some(why) = inbound(&mut opener, &counters, &tun.dev, &mut buf[..n], &mut log_limit).await {
                    let _ = out_tx.send(OutboundCmd::Stop { notify: false }).await;
                    break Err(ClientError::Closed(why));
                }
            }
        }
    };
    let _ = out_task.await;
    tracing::info!("session with {server} ended ({})", counters.summary());
    result
}

/// Handles one datagram of a live session; returns why the session ended, if it did.
async fn inbound(
    opener: &mut Opener,
    counters: &Counters,
    tun: &::tun::AsyncDevice,
    dg: &mut [u8],
    log_limit: &mut RateLimit,
) -> Option<String> {
    let mut at = 0;
    while at < dg.len() {
        let r = match record::record_at(dg, at) {
            Ok(r) => r,
            Err(reason) => {
                counters.count_drop(pump::Drop::Record(reason));
                return None;
            }
        };
        at = r.end;
        let rec = &mut dg[r];
        if rec[0] != CONTENT_APPLICATION_DATA && rec[0] != crate::consts::CONTENT_ALERT {
            continue; // a late handshake retransmission: the crate is done with it
        }
        match pump::open(opener, counters, rec) {
            Inbound::Data(r) => {
                if pump::accept_packet(counters, &rec[r.clone()]) {
                    if let Err(e) = tun.send(&rec[r]).await
                        && log_limit.allow()
                    {
                        tracing::debug!("writing to TUN failed: {e}");
                    }
                } else if log_limit.allow() {
                    tracing::debug!("drop reason=not_ip");
                }
            }
            Inbound::Alert(_, 0) => return Some("close_notify".into()),
            Inbound::Alert(level, desc) => return Some(format!("alert {level}/{desc}")),
            Inbound::Dropped(d) => {
                if log_limit.allow() {
                    tracing::debug!("drop reason={}", d.as_str());
                }
            }
        }
    }
    None
}

/// Waits (up to the setup timeout) for the first application record and returns its plaintext.
async fn first_data(
    opener: &mut Opener,
    counters: &Counters,
    sock: &UdpSocket,
    buf: &mut [u8],
    early: Vec<Vec<u8>>,
) -> Option<Vec<u8>> {
    for mut dg in early {
        if let Some(msg) = open_first(opener, counters, &mut dg) {
            return Some(msg);
        }
    }
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT.max(HANDSHAKE_TIMEOUT);
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(buf)).await {
            Err(_) => return None,
            Ok(Err(_)) => continue,
            Ok(Ok(n)) => n,
        };
        if let Some(msg) = open_first(opener, counters, &mut buf[..n]) {
            return Some(msg);
        }
    }
}

fn open_first(opener: &mut Opener, counters: &Counters, dg: &mut [u8]) -> Option<Vec<u8>> {
    let mut at = 0;
    while at < dg.len() {
        let r = record::record_at(dg, at).ok()?;
        at = r.end;
        if dg[r.start] != CONTENT_APPLICATION_DATA {
            continue;
        }
        if let Inbound::Data(p) = pump::open(opener, counters, &mut dg[r.clone()]) {
            return Some(dg[r.start + p.start..r.start + p.end].to_vec());
        }
    }
    None
}
