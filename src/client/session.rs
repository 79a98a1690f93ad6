//! One session, from a fresh socket to its end: connect, handshake, the address message, the
//! TUN (made once, readdressed if the server moved us), `-route`, the Hello and LAN messages,
//! the up script, forwarding, and the farewell when it ends.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::UdpSocket;

use dtun_linux::hooks;
use dtun_linux::netlink::Netlink;
use dtun_linux::routes::Routes;
use dtun_linux::tun;
use dtun_linux::udp::Udp;
use dtun_proto::consts::{BUF_LEN, CONTENT_APPLICATION_DATA, SETUP_TIMEOUT};
use dtun_proto::inbound::Counters;
use dtun_proto::proto::{AddressMessage, CONTROL_VERSION, CloseReason, Control, HINT_MARKER};
use dtun_proto::record::{self, Sealer};

use super::early::{First, first_data};
use super::forward::{PathMss, forward};
use super::handshake::handshake;
use super::{ClientError, End, LOG_TUNNEL_UP, Tunnel};
use crate::config::ClientConfig;
use crate::ops::{ClientBoard, LiveSession};
use crate::pump::{self, Link, OutboundCmd};
use crate::supervise::first_app_sequence;

fn lost(error: ClientError) -> End {
    End::Lost {
        error,
        was_up: false,
    }
}

/// One session, from a fresh socket to its end, with server `server_index` of `-host`.
// The parameters are the client's whole context; they become one session state machine when
// the client's protocol logic moves into the sans-I/O core (the architecture issue).
#[allow(clippy::too_many_arguments)]
pub(super) async fn session(
    cfg: &ClientConfig,
    nl: &Netlink,
    tunnel: &mut Option<Tunnel>,
    routes: &mut Option<Routes>,
    dns: &dtun_linux::dns::Dns,
    board: &ClientBoard,
    server_index: usize,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> End {
    let endpoint = &cfg.servers[server_index % cfg.servers.len()];
    board.server(&endpoint.to_string(), None);
    let server = match cfg.server_addr(server_index).await {
        Ok(s) => s,
        // -kill-switch blocks name lookups while the tunnel is down: its note of the
        // server's last address stands in.
        Err(e) => match routes.as_ref().and_then(Routes::last_address) {
            Some(ip) => {
                let s = SocketAddr::new(ip, cfg.port);
                tracing::warn!("{e}; {} {s}", dtun_linux::routes::LOG_LAST_ADDRESS);
                s
            }
            None => return lost(ClientError::Config(e)),
        },
    };
    board.server(&endpoint.to_string(), Some(server));
    if let Some(r) = routes.as_mut()
        && let Err(e) = r.set_server(server.ip()).await
    {
        return lost(ClientError::Routes(e));
    }
    let sock = match connect(server, routes.is_some()).await {
        Ok(s) => Arc::new(s),
        Err(e) => return lost(e),
    };
    // Batched UDP, but GRO only from step 4 on: the handshake and setup read datagram by
    // datagram.
    let udp = match Udp::new(Arc::clone(&sock)).and_then(|u| u.set_gro(false).map(|_| u)) {
        Ok(u) => u,
        Err(e) => return lost(ClientError::Socket(server, e)),
    };
    let mut buf = vec![0u8; BUF_LEN];

    // 1. Handshake. Records that overtake the end of our handshake (the address message when
    //    the server's last flight was lost, or a close_notify right after it) are kept for
    //    step 2.
    let (est, early) = match handshake(cfg, &sock, server, &mut buf, shutdown.as_mut()).await {
        Ok(r) => r,
        Err(end) => return end,
    };
    let hint = String::from_utf8_lossy(&est.peer_identity).into_owned();
    let negotiated = !cfg.common.compat && hint.ends_with(HINT_MARKER);
    tracing::debug!(
        "handshake with {server} done (server hint {hint:?}, control messages: {negotiated})"
    );
    let (mut sealer, mut opener) =
        record::session_pair(est.suite, &est.keys, true, 1, first_app_sequence());
    let counters = Arc::new(Counters::default());
    let link = Link {
        udp: udp.clone(),
        peer: server,
        connected: true,
    };

    // 2. The address message.
    let addrs = match first_data(&mut opener, &counters, &sock, &mut buf, early).await {
        Some(First::Closed(why)) => {
            return lost(ClientError::Closed(format!(
                "{why} before the address message"
            )));
        }
        Some(First::Data(msg)) => match AddressMessage::parse(&msg) {
            Ok(a) => a,
            // A full server says so where the address message would be (dtun peers only).
            Err(e) => match Control::parse(&msg) {
                Ok(Control::Close {
                    reason: CloseReason::Refused,
                    detail,
                }) if negotiated => {
                    return lost(ClientError::Full(detail.escape_debug().to_string()));
                }
                // Any other reason (the server could not set up our tunnel, say), in words.
                Ok(Control::Close { reason, detail }) if negotiated => {
                    return lost(ClientError::Closed(format!(
                        "{} ({})",
                        reason.words(),
                        detail.escape_debug()
                    )));
                }
                _ => return lost(ClientError::BadAddress(e)),
            },
        },
        None => {
            let _ = link.send_close_notify(&mut sealer).await;
            return lost(ClientError::NoAddress(SETUP_TIMEOUT));
        }
    };
    // The pair must not take a host of this client's own networks (src/client/pair.rs).
    if let Err(e) = super::pair::check_ipv4(cfg, nl, tunnel.as_ref(), addrs).await {
        let _ = link.send_close_notify(&mut sealer).await;
        return lost(e);
    }

    // 3. The TUN device: made once, kept across sessions; readdressed if the server moved us.
    let run_up = match setup_tunnel(cfg, nl, tunnel, addrs, est.suite, server).await {
        Ok(run_up) => run_up,
        Err(e) => {
            let _ = link.send_close_notify(&mut sealer).await;
            return lost(e);
        }
    };
    let Some(t) = tunnel.as_ref() else {
        return lost(ClientError::NoAddress(SETUP_TIMEOUT));
    };

    // 4. -route (before the up script, which may build on it), our LAN, our hello (dtun
    //    servers only), the up script, then forwarding.
    if let Some(r) = routes.as_mut()
        && let Err(e) = r.apply(t.tun.index).await
    {
        let _ = link.send_close_notify(&mut sealer).await;
        return lost(ClientError::Routes(e));
    }
    let mut hello = vec![];
    if negotiated {
        let keepalive_ms = u32::try_from(cfg.common.keepalive.as_millis()).unwrap_or(u32::MAX);
        hello = Control::Hello {
            version: CONTROL_VERSION,
            keepalive_ms,
            flags: Default::default(),
        }
        .to_bytes();
    }
    // -peernet beyond the peernet message (several CIDRs): a dtun server only.
    let mut lans = vec![];
    if negotiated && !cfg.lans.is_empty() {
        lans = Control::Lans(cfg.lans.clone()).to_bytes();
    } else if !cfg.lans.is_empty() {
        tracing::warn!(
            "the server is an original dtun (or -compat): only -peernet {} is announced, not {}",
            cfg.peernet.to_wire(),
            cfg.lans
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    if let Err(e) = link
        .send_record(
            &mut sealer,
            CONTENT_APPLICATION_DATA,
            cfg.peernet.to_wire().as_bytes(),
        )
        .await
    {
        return lost(ClientError::Send(server, e));
    }
    // A dtun server tells its IPv6 pair and DNS before its Hello answer, which says whether
    // they (and our Lans) got through: the exchange asks again for what was lost, so the up
    // script sees the tunnel as it is. Without any answer the tunnel keeps the IPv6 it had.
    let addr6 = if negotiated {
        match super::hello::exchange(
            &link,
            &mut sealer,
            &mut opener,
            &counters,
            &sock,
            &mut buf,
            &t.tun,
            dns,
            &hello,
            &lans,
        )
        .await
        {
            Ok(a) => a,
            Err(e) => return lost(e),
        }
    } else {
        Some(None)
    };
    let run_up = match (tunnel.as_mut(), addr6) {
        (Some(t), Some(addr6)) => match super::addr6::apply(cfg, nl, t, addr6, run_up).await {
            Ok(r) => r,
            Err(e) => {
                let _ = link.send_close_notify(&mut sealer).await;
                return lost(e);
            }
        },
        _ => run_up,
    };
    let Some(t) = tunnel.as_ref() else {
        return lost(ClientError::NoAddress(SETUP_TIMEOUT));
    };
    if let Some(r) = routes.as_mut()
        && let Err(e) = r.set_ipv6(t.tun.index, t.addr6.is_some()).await
    {
        let _ = link.send_close_notify(&mut sealer).await;
        return lost(ClientError::Routes(e));
    }
    if run_up
        && let Some(up) = &cfg.common.up
        && let Err(e) = hooks::run("up", up, &t.env()).await
    {
        let _ = link.send_close_notify(&mut sealer).await;
        return lost(e.into());
    }
    dns.tunnel_up(&t.tun.name, t.tun.index);
    // (The IPv6 pair has its own line, LOG_IPV6_UP: scripts read the suite as the last field.)
    tracing::info!(
        "{LOG_TUNNEL_UP}: dev {} local {} peer {} mtu {}, server {server}, {}",
        t.tun.name,
        addrs.client,
        addrs.server,
        t.tun.mtu,
        est.suite.name()
    );
    crate::ops::notify::ready(&format!(
        "tunnel up: dev {} local {} peer {}, server {server}",
        t.tun.name, addrs.client, addrs.server
    ));

    board.up(LiveSession {
        counters: Arc::clone(&counters),
        suite: est.suite,
        device: t.tun.name.clone(),
        local_ip: addrs.client,
        peer_ip: addrs.server,
        ip6: t.addr6.map(|a| (a.client, a.server)),
        started: std::time::Instant::now(),
        keepalive: negotiated.then_some(cfg.common.keepalive),
    });
    if let Err(e) = udp.set_gro(true) {
        tracing::debug!("UDP GRO unavailable: {e}");
    }
    let outer = if crate::config::is_ipv4(server.ip()) {
        dtun_proto::consts::UDP4_OVERHEAD
    } else {
        dtun_proto::consts::UDP6_OVERHEAD
    };
    let path = PathMss::new(t.tun.mtu, outer + est.suite.overhead());
    let (out_tx, mut out_task) = pump::spawn_outbound(
        Arc::clone(&t.tun.dev),
        path.clamp.clone(),
        link.clone(),
        sealer,
        Arc::clone(&counters),
    );
    // The outbound task's sealer, if the task ended by itself (sequence numbers used up).
    let mut ended: Option<Sealer> = None;
    // Without negotiation (an original server, or -compat) no control message goes out or
    // is understood, so no keepalive either.
    let keepalive = negotiated.then_some(cfg.common.keepalive);
    let error = forward(
        &t.tun,
        &udp,
        server,
        &mut opener,
        &counters,
        &out_tx,
        (&mut out_task, &mut ended),
        keepalive,
        path,
        dns,
        shutdown,
    )
    .await;
    let farewell = match &error {
        None => Some(Control::Close {
            reason: CloseReason::Shutdown,
            detail: String::new(),
        }),
        Some(ClientError::Dead(..)) => Some(Control::Close {
            reason: CloseReason::Timeout,
            detail: String::new(),
        }),
        Some(ClientError::Exhausted) => Some(Control::Close {
            reason: CloseReason::Exhausted,
            detail: String::new(),
        }),
        _ => None,
    };
    let notify = !matches!(
        error,
        Some(ClientError::Closed(_)) | Some(ClientError::Replaced(..))
    );
    let farewell = farewell.filter(|_| negotiated).map(|c| c.to_bytes());
    if let Some(mut sealer) = ended {
        // The task is gone: the farewell goes from here, in the reserve it left.
        if let Some(msg) = farewell {
            let _ = link
                .send_record(&mut sealer, CONTENT_APPLICATION_DATA, &msg)
                .await;
        }
        let _ = link.send_close_notify(&mut sealer).await;
    } else if !matches!(error, Some(ClientError::Internal(_))) {
        let _ = out_tx.send(OutboundCmd::Stop { notify, farewell }).await;
        let _ = out_task.await;
    }
    tracing::info!("session with {server} ended ({})", counters.summary());
    match error {
        None => End::Shutdown,
        Some(ClientError::Replaced(_, by)) => End::Lost {
            error: ClientError::Replaced(cfg.id.clone(), by),
            was_up: true,
        },
        Some(error) => End::Lost {
            error,
            was_up: true,
        },
    }
}

/// A UDP socket connected to the server; with `-route` it carries [`dtun_linux::routes::FWMARK`],
/// so its datagrams skip dtun's routing table and keep the old path.
async fn connect(server: SocketAddr, mark: bool) -> Result<UdpSocket, ClientError> {
    let local: SocketAddr = match server.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local)
        .await
        .map_err(|e| ClientError::Socket(server, e))?;
    if mark {
        dtun_linux::sys::set_mark(&socket2::SockRef::from(&sock), dtun_linux::routes::FWMARK)
            .map_err(|e| ClientError::Socket(server, e))?;
    }
    sock.connect(server)
        .await
        .map_err(|e| ClientError::Socket(server, e))?;
    Ok(sock)
}

/// Makes the TUN on the first session; on a later one with other addresses runs the down
/// script with the old values, readdresses, and asks for the up script. Returns whether the
/// up script must run.
async fn setup_tunnel(
    cfg: &ClientConfig,
    nl: &Netlink,
    tunnel: &mut Option<Tunnel>,
    addrs: AddressMessage,
    suite: record::Suite,
    server: SocketAddr,
) -> Result<bool, ClientError> {
    if let Some(t) = tunnel {
        t.tun.follow_mtu(nl, cfg.tun.mtu_for(suite, server)).await?;
    }
    match tunnel {
        Some(t) if t.addrs == addrs => Ok(false),
        Some(t) => {
            tracing::info!(
                "the server moved us from {} to {}: readdressing {}",
                t.addrs.client,
                addrs.client,
                t.tun.name
            );
            if let Some(down) = &cfg.common.down
                && let Err(e) = hooks::run("down", down, &t.env()).await
            {
                tracing::warn!("{e}");
            }
            nl.flush_addresses(t.tun.index).await?;
            nl.add_p2p_address(t.tun.index, addrs.client, addrs.server)
                .await?;
            t.addrs = addrs;
            Ok(true)
        }
        None => {
            let tun = tun::create(nl, &cfg.tun.name, cfg.tun.mtu_for(suite, server)).await?;
            nl.add_p2p_address(tun.index, addrs.client, addrs.server)
                .await?;
            *tunnel = Some(Tunnel {
                tun,
                addrs,
                addr6: None,
            });
            Ok(true)
        }
    }
}
