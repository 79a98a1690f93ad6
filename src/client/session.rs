//! One session, from a fresh socket to its end: the thin async loop around
//! [`ClientSession`] (dtun_proto, no I/O), which holds the protocol (handshake, address
//! message, Hello exchange, keepalive, close). Here: the socket, the timer, and the side
//! effects its events ask for: the TUN (made once, readdressed if the server moved us),
//! `-route`, IPv6, DNS, the up script, the status board; then forwarding (`forward`).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::UdpSocket;

use dtun_linux::hooks;
use dtun_linux::tun;
use dtun_linux::udp::Udp;
use dtun_proto::consts::{BUF_LEN, SETUP_TIMEOUT};
use dtun_proto::proto::{Addr6, AddressMessage};
use dtun_proto::record;
use dtun_proto::session::{self as proto_session, ClientSession};

use super::forward::Live;
use super::sink::{PathMss, Sink};
use super::wire::{Setup, Wire, now};
use super::{ClientError, Ctx, End, LOG_TUNNEL_UP, Tunnel};
use crate::config::ClientConfig;
use crate::ops::LiveSession;
use crate::pump::{self, Link};
use crate::supervise::first_app_sequence;

fn lost(error: ClientError) -> End {
    End::Lost {
        error,
        was_up: false,
    }
}

/// One session, from a fresh socket to its end, with server `server_index` of `-host`.
pub(super) async fn session(
    ctx: &mut Ctx<'_>,
    server_index: usize,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> End {
    let cfg = ctx.cfg;
    let server = match connect_to(ctx, server_index).await {
        Ok(s) => s,
        Err(e) => return lost(e),
    };
    let sock = match connect(server, ctx.routes.is_some()).await {
        Ok(s) => Arc::new(s),
        Err(e) => return lost(e),
    };
    // Batched UDP, but GRO only once forwarding starts: the setup reads datagram by datagram.
    let udp = match Udp::new(Arc::clone(&sock)).and_then(|u| u.set_gro(false).map(|_| u)) {
        Ok(u) => u,
        Err(e) => return lost(ClientError::Socket(server, e)),
    };
    let link = Link {
        udp: udp.clone(),
        peer: server,
        connected: true,
    };
    let rng = ring::rand::SystemRandom::new();
    let (mut s, first) = match ClientSession::new(session_config(cfg), &rng, now()) {
        Ok(r) => r,
        Err(e) => return lost(ClientError::Handshake(server, e, cfg.id.clone())),
    };
    let mut w = Wire {
        sock: &sock,
        link: &link,
        server,
        buf: vec![0u8; BUF_LEN],
        refusals: 0,
        answered: false,
        suite: None,
    };
    w.send_handshake(&first.send).await;

    // 1. The handshake and the address message (or why there is none).
    let addrs = match w.drive(&mut s, ctx.dns, None, shutdown.as_mut()).await {
        Setup::Address(a) => a,
        Setup::Shutdown => return End::Shutdown,
        other => return lost(w.error(other, &cfg.id, false)),
    };
    let Some(suite) = w.suite else {
        return lost(ClientError::NoAddress(SETUP_TIMEOUT));
    };
    // 2. The pair must not take a host of this client's own networks (src/client/pair.rs);
    //    the TUN: made once, kept across sessions; readdressed if the server moved us; then
    //    -route (before the up script, which may build on it).
    let run_up = match tunnel_for(ctx, addrs, suite, server).await {
        Ok(run_up) => run_up,
        Err(e) => {
            w.abort(&mut s).await;
            return lost(e);
        }
    };
    let Some(t) = ctx.tunnel.as_ref() else {
        return lost(ClientError::NoAddress(SETUP_TIMEOUT));
    };
    if !s.negotiated() && !cfg.lans.is_empty() {
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

    // 3. Our peernet message, then (dtun servers) our Lans and Hello: the server tells its
    //    IPv6 pair and DNS before its Hello answer, which says whether they (and our Lans) got
    //    through; the session asks again for what was lost, so the up script sees the tunnel
    //    as it is. Without any answer the tunnel keeps the IPv6 it had. IP packets that come
    //    meanwhile go to the TUN.
    let mut sink = Sink {
        dev: &t.tun.dev,
        writer: dtun_linux::tun::TunWriter::default(),
        mss: pump::mss_clamps(t.tun.mtu),
    };
    let ready = s.tunnel_ready(now());
    let setup = match w.act(&s, ready, ctx.dns, Some(&mut sink)).await {
        Some(r) => r,
        None => {
            w.drive(&mut s, ctx.dns, Some(&mut sink), shutdown.as_mut())
                .await
        }
    };
    let addr6 = match setup {
        Setup::Up(addr6) => addr6,
        Setup::Shutdown => return End::Shutdown,
        other => return lost(w.error(other, &cfg.id, true)),
    };

    // 4. IPv6, -route for IPv6, the up script, DNS, then forwarding.
    if let Err(e) = finish_setup(ctx, addr6, run_up).await {
        w.abort(&mut s).await;
        return lost(e);
    }
    let Some(t) = ctx.tunnel.as_ref() else {
        return lost(ClientError::NoAddress(SETUP_TIMEOUT));
    };
    ctx.dns.tunnel_up(&t.tun.name, t.tun.index);
    // (The IPv6 pair has its own line, LOG_IPV6_UP: scripts read the suite as the last field.)
    tracing::info!(
        "{LOG_TUNNEL_UP}: dev {} local {} peer {} mtu {}, server {server}, {}",
        t.tun.name,
        addrs.client,
        addrs.server,
        t.tun.mtu,
        suite.name()
    );
    crate::ops::notify::ready(&format!(
        "tunnel up: dev {} local {} peer {}, server {server}",
        t.tun.name, addrs.client, addrs.server
    ));
    let counters = Arc::clone(s.counters());
    let rekey = Arc::new(crate::ops::RekeyCell::new(s.rekeys(), s.roams()));
    ctx.board.up(LiveSession {
        counters: Arc::clone(&counters),
        suite,
        device: t.tun.name.clone(),
        local_ip: addrs.client,
        peer_ip: addrs.server,
        ip6: t.addr6.map(|a| (a.client, a.server)),
        started: std::time::Instant::now(),
        keepalive: s.negotiated().then_some(cfg.common.keepalive),
        rekey: Arc::clone(&rekey),
    });
    if let Err(e) = udp.set_gro(true) {
        tracing::debug!("UDP GRO unavailable: {e}");
    }
    let outer = if crate::config::is_ipv4(server.ip()) {
        dtun_proto::consts::UDP4_OVERHEAD
    } else {
        dtun_proto::consts::UDP6_OVERHEAD
    };
    // A roaming session's records carry the connection ID and the inner type too.
    let cid_extra = if s.roams() {
        crate::config::CID_RECORD_EXTRA
    } else {
        0
    };
    let path = PathMss::new(t.tun.mtu, outer + suite.overhead() + cid_extra);
    let Some((sealer, opener)) = s.take_keys(now()) else {
        return lost(ClientError::NoAddress(SETUP_TIMEOUT));
    };
    let (keys_tx, keys_rx) = pump::keys_channel();
    let (out_tx, out_task) = pump::spawn_outbound(
        Arc::clone(&t.tun.dev),
        path.clamp.clone(),
        link.clone(),
        sealer,
        Arc::clone(&counters),
        pump::Steer {
            keys: keys_rx,
            peer: None,
        },
    );
    // A roaming session follows our address: never onto the tunnel's own.
    let roam = s.roams().then(|| {
        let mark = ctx.routes.is_some().then_some(dtun_linux::routes::FWMARK);
        let mut avoid = vec![IpAddr::V4(addrs.client)];
        avoid.extend(t.addr6.map(|a| IpAddr::V6(a.client)));
        super::roam::Roam::new(mark, avoid)
    });
    let mut live = Live {
        tun: &t.tun,
        udp: &udp,
        link: &link,
        id: &cfg.id,
        dns: ctx.dns,
        session: s,
        opener,
        counters: Arc::clone(&counters),
        out_tx,
        out_task,
        keys_tx,
        rekey,
        path,
        roam,
    };
    let error = live.forward(shutdown).await;
    tracing::info!("session with {server} ended ({})", counters.summary());
    match error {
        None => End::Shutdown,
        Some(error) => End::Lost {
            error,
            was_up: true,
        },
    }
}

/// What the session needs of the client's configuration.
fn session_config(cfg: &ClientConfig) -> proto_session::Config {
    proto_session::Config {
        identity: cfg.id.as_bytes().to_vec(),
        key: zeroize::Zeroizing::new(cfg.key.0.to_vec()),
        suites: cfg.common.suites.clone(),
        peernet: cfg.peernet.to_wire(),
        lans: cfg.lans.clone(),
        keepalive: cfg.common.keepalive,
        compat: cfg.common.compat,
        first_sequence: first_app_sequence(),
        rekey: cfg.common.rekey,
        // Roaming rides on rekeying's epochs; the session offers it only with AES-GCM.
        roam: !cfg.common.compat,
    }
}

/// Resolves server `server_index` of `-host` (with `-kill-switch`, its last address stands in
/// when names cannot be looked up) and tells `-route` about it.
async fn connect_to(ctx: &mut Ctx<'_>, server_index: usize) -> Result<SocketAddr, ClientError> {
    let cfg = ctx.cfg;
    let endpoint = &cfg.servers[server_index % cfg.servers.len()];
    ctx.board.server(&endpoint.to_string(), None);
    let server = match cfg.server_addr(server_index).await {
        Ok(s) => s,
        // -kill-switch blocks name lookups while the tunnel is down: its note of the
        // server's last address stands in.
        Err(e) => match ctx
            .routes
            .as_ref()
            .and_then(dtun_linux::routes::Routes::last_address)
        {
            Some(ip) => {
                let s = SocketAddr::new(ip, cfg.port);
                tracing::warn!("{e}; {} {s}", dtun_linux::routes::LOG_LAST_ADDRESS);
                s
            }
            None => return Err(ClientError::Config(e)),
        },
    };
    ctx.board.server(&endpoint.to_string(), Some(server));
    if let Some(r) = ctx.routes.as_mut() {
        r.set_server(server.ip())
            .await
            .map_err(ClientError::Routes)?;
    }
    Ok(server)
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

/// The address message's side effects: the pair checked against this host's networks, the
/// TUN made or readdressed, `-route` applied. Returns whether the up script must run.
async fn tunnel_for(
    ctx: &mut Ctx<'_>,
    addrs: AddressMessage,
    suite: record::Suite,
    server: SocketAddr,
) -> Result<bool, ClientError> {
    super::pair::check_ipv4(ctx.cfg, ctx.nl, ctx.tunnel.as_ref(), addrs).await?;
    let run_up = setup_tunnel(ctx.cfg, ctx.nl, &mut *ctx.tunnel, addrs, suite, server).await?;
    if let (Some(r), Some(t)) = (ctx.routes.as_mut(), ctx.tunnel.as_ref()) {
        r.apply(t.tun.index).await.map_err(ClientError::Routes)?;
    }
    Ok(run_up)
}

/// The Hello exchange's outcome: the IPv6 pair on the TUN (`None`: keep what it has),
/// `-route` for IPv6, then the up script if it must run.
async fn finish_setup(
    ctx: &mut Ctx<'_>,
    addr6: Option<Option<Addr6>>,
    run_up: bool,
) -> Result<(), ClientError> {
    let cfg = ctx.cfg;
    let run_up = match (ctx.tunnel.as_mut(), addr6) {
        (Some(t), Some(addr6)) => super::addr6::apply(cfg, ctx.nl, t, addr6, run_up).await?,
        _ => run_up,
    };
    let Some(t) = ctx.tunnel.as_ref() else {
        return Err(ClientError::NoAddress(SETUP_TIMEOUT));
    };
    if let Some(r) = ctx.routes.as_mut() {
        r.set_ipv6(t.tun.index, t.addr6.is_some())
            .await
            .map_err(ClientError::Routes)?;
    }
    if run_up && let Some(up) = &cfg.common.up {
        hooks::run("up", up, &t.env()).await?;
    }
    Ok(())
}

/// Makes the TUN on the first session; on a later one with other addresses runs the down
/// script with the old values, readdresses, and asks for the up script. Returns whether the
/// up script must run.
async fn setup_tunnel(
    cfg: &ClientConfig,
    nl: &dtun_linux::netlink::Netlink,
    tunnel: &mut Option<Tunnel>,
    addrs: AddressMessage,
    suite: record::Suite,
    server: SocketAddr,
) -> Result<bool, ClientError> {
    if let Some(t) = tunnel {
        t.tun.follow_mtu(nl, cfg.mtu_for(suite, server)).await?;
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
            let tun = tun::create(nl, &cfg.tun.name, cfg.mtu_for(suite, server)).await?;
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
