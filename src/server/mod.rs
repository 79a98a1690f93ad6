//! The server: one UDP socket, demultiplexed by us (never by the DTLS crate), one TUN device
//! per client id that outlives its sessions for `-linger`.
//!
//! Two long-lived tasks share the work:
//! - the **demultiplexer** (`demux`) owns the socket's read side and the address → session
//!   table. It opens records of live sessions and writes their packets to the TUNs in
//!   coalesced batches (data path), answers Pings, and hands every other datagram to
//!   **admission** (`admission`, over the handshake in `dtun_proto::handshake`): stateless cookies,
//!   then a capped, budgeted handshake per proven peer;
//! - the **manager** (`manager`, with `device`) owns the devices, the pool and the sessions'
//!   lifecycles (control path): it turns a completed handshake into a session, installs
//!   routes, runs scripts beside itself, ends sessions and removes idle devices. It talks to
//!   the demultiplexer through `DemuxCmd` messages and hears from it through events (a
//!   bounded queue for sessions' events).
//!
//! With `-nat` or `-client-to-client`, the server also keeps its nftables table (`dtun_linux::nft`).

mod demux;
mod device;
mod events;
mod host_view;
mod lan_table;
mod manager;
mod session;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::ops::reload::Reconfigure;
pub use demux::DemuxCounters;
use demux::{Delivery, Demux};
use dtun_proto::admission::Admission;
use manager::Manager;

use crate::config::ServerConfig;
use dtun_linux::netlink::{Netlink, NetlinkError};
use dtun_linux::rate_limit::RateLimit;
use dtun_linux::tun::TunBatch;
use dtun_linux::udp::Udp;
use dtun_proto::consts::EVENT_QUEUE;
use dtun_proto::inbound::Inbox;
use dtun_proto::pool::{Pool, PoolError};
use dtun_proto::proto::{HINT_MARKER, HINT_REKEY};

/// Looks up the key for a client's PSK identity; None: unknown.
pub type KeyLookup = Arc<dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// Log line prefix of a new session (tests look for it).
pub const LOG_CONNECTED: &str = "connected";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "UDP port {port} is already in use on {ip}{holder}: stop the other program or choose another -port",
        holder = dtun_linux::udp::port_holder(*port).map(|h| format!(" by {h}")).unwrap_or_default()
    )]
    PortInUse { ip: IpAddr, port: u16 },
    // The I/O error is in the message, not a `source` (which `{:#}` would print again).
    #[error("cannot listen on {addr}: {error}{hint}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
        hint: String,
    },
    #[error("cannot set up batched UDP on the server socket: {0}")]
    Udp(std::io::Error),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Pool6(#[from] dtun_proto::pool6::Pool6Error),
    #[error(transparent)]
    TaskEnded(#[from] crate::supervise::TaskEnded),
    #[error(transparent)]
    Firewall(#[from] dtun_linux::nft::NftError),
    #[error(transparent)]
    Tun(#[from] dtun_linux::tun::TunError),
}

/// Binds the server socket; dual-stack when the address is `[::]`.
pub fn bind(addr: SocketAddr) -> Result<UdpSocket, ServerError> {
    let map = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::AddrInUse => ServerError::PortInUse {
            ip: addr.ip(),
            port: addr.port(),
        },
        std::io::ErrorKind::PermissionDenied => ServerError::Bind {
            addr,
            error: source,
            hint: format!(
                ": dtun needs CAP_NET_BIND_SERVICE to bind a port below 1024: {}",
                dtun_linux::privilege::GRANT_NET_BIND_SERVICE
            ),
        },
        std::io::ErrorKind::AddrNotAvailable => ServerError::Bind {
            addr,
            error: source,
            hint: ": -listen must be an address of this machine".into(),
        },
        _ => ServerError::Bind {
            addr,
            error: source,
            hint: String::new(),
        },
    };
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(map)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        s.set_only_v6(false).map_err(map)?;
    }
    // Larger buffers absorb bursts; failure to grow them is harmless.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true).map_err(map)?;
    // Our datagrams skip the clients' LAN table (src/server/lan_table.rs).
    dtun_linux::sys::set_mark(&socket2::SockRef::from(&s), dtun_linux::routes::FWMARK).map_err(
        |source| ServerError::Bind {
            addr,
            error: source,
            hint: format!(
                ": dtun needs CAP_NET_ADMIN to mark its socket (SO_MARK): {GRANT}",
                GRANT = dtun_linux::privilege::GRANT_NET_ADMIN
            ),
        },
    )?;
    s.bind(&addr.into()).map_err(map)?;
    UdpSocket::from_std(s.into()).map_err(map)
}

/// Runs the server on `sock` until `shutdown` resolves; then closes every session
/// (close_notify) and removes every device this server made.
pub async fn run(
    sock: UdpSocket,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    run_with(sock, cfg, None, mpsc::channel(1).1, shutdown).await
}

/// As [`run`], answering requests for its snapshot on `status` (`crate::ops`) and taking new
/// credentials and settings from `reloads` while it runs (see `crate::ops::reload`).
pub async fn run_with(
    sock: UdpSocket,
    cfg: ServerConfig,
    status: Option<mpsc::Receiver<crate::ops::ServerRequest>>,
    reloads: mpsc::Receiver<Reconfigure>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let nl = Netlink::new()?;
    // Before anything says "listening": a server that cannot make devices fails now.
    dtun_linux::tun::probe(&cfg.tun.name)?;
    if !cfg.tun.name.contains("%d") {
        tracing::warn!(
            "-name {} has no %d: one client at a time can have a device (use e.g. {}%d)",
            cfg.tun.name,
            cfg.tun.name
        );
    }
    let sock = Arc::new(sock);
    let udp = Udp::new(Arc::clone(&sock)).map_err(ServerError::Udp)?;
    let (pool, pool6) = pools(&cfg)?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (session_tx, session_rx) = mpsc::channel(EVENT_QUEUE);
    // Shared with the manager, which swaps it on a reload.
    let keys = Arc::new(std::sync::RwLock::new(cfg.keys.clone()));
    let lookup = key_lookup(&keys);
    let hint = identity_hint(&cfg);
    let admission = Admission::new(cfg.common.suites.clone(), hint, Instant::now());
    let demux_counters = Arc::new(DemuxCounters::new(Arc::clone(&admission.counters)));
    let demux = Demux {
        udp: udp.clone(),
        out: Delivery {
            ev_tx: ev_tx.clone(),
            events: session_tx,
            counters: Arc::clone(&demux_counters),
            log_limit: RateLimit::new(10),
            tun_batch: TunBatch::default(),
            inbox: Inbox::default(),
        },
        sessions: HashMap::new(),
        by_id: HashMap::new(),
        by_cid: HashMap::new(),
        rng: ring::rand::SystemRandom::new(),
        admission,
        cmd_rx,
        lookup,
        dummy: ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map_err(|_| ServerError::Udp(std::io::Error::other("no system randomness")))?,
        fail_log: RateLimit::new(5),
        counters: Arc::clone(&demux_counters),
    };
    // Last of the fallible steps before the tasks start, so an error leaves nothing behind.
    let (firewall, nat6) = firewall(&cfg)?;
    let mut demux_task = tokio::spawn(demux.run());
    tracing::info!(
        "listening on {} (pool {}, pool6 {}, linger {:?})",
        sock.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        cfg.pool,
        cfg.pool6
            .map_or_else(|| "off".to_string(), |p| p.to_string()),
        cfg.linger
    );
    crate::ops::notify::ready(&format!(
        "listening on {}",
        sock.local_addr().map(|a| a.to_string()).unwrap_or_default()
    ));
    let mut mgr = Manager::new(manager::Setup {
        cfg,
        nl,
        udp,
        pool,
        pool6,
        cmd_tx,
        counters: Arc::clone(&demux_counters),
        status_rx: status,
        keys,
        firewall,
    });
    // The demultiplexer never ends while the manager runs: if it does (a panic when the hook
    // that exits is not installed), the manager shuts down as on a signal and run fails.
    let mut ended = None;
    let stop = async {
        tokio::select! {
            _ = shutdown => {}
            r = &mut demux_task => {
                let e = crate::supervise::TaskEnded::from_join("demultiplexer", r);
                tracing::error!("{e}");
                ended = Some(e);
            }
        }
    };
    mgr.run(ev_rx, session_rx, reloads, stop).await;
    demux_task.abort();
    let (fatal, firewall) = mgr.finish().await;
    if let Some(e) = fatal {
        ended = Some(e);
    }
    remove_firewall(nat6, firewall);
    tracing::info!("server totals: {}", demux_counters.summary());
    match ended {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// The address pools, with every fixed address (`addr`, `addr6`) held from the start, so no
/// other id's hash can take them.
fn pools(cfg: &ServerConfig) -> Result<(Pool, Option<dtun_proto::pool6::Pool6>), ServerError> {
    let mut pool = Pool::new(cfg.pool)?;
    for (id, c) in &cfg.keys.clients {
        if let Some(addr) = c.addr {
            pool.assign_fixed(id, addr)?;
        }
    }
    let mut pool6 = cfg.pool6.map(dtun_proto::pool6::Pool6::new).transpose()?;
    let fixed6 = cfg
        .keys
        .clients
        .iter()
        .filter_map(|(id, c)| Some((id, c.addr6?)));
    for (id, addr6) in fixed6 {
        match pool6.as_mut() {
            Some(p) => {
                p.assign_fixed(id, addr6)?;
            }
            None => tracing::warn!("client {id}: addr6={addr6} unused: -pool6 is off"),
        }
    }
    Ok((pool, pool6))
}

/// The handshakes' key lookup, reading the store a reload swaps.
fn key_lookup(keys: &Arc<std::sync::RwLock<dtun_proto::keys::KeyStore>>) -> KeyLookup {
    let keys = Arc::clone(keys);
    Arc::new(move |identity: &[u8]| {
        let keys = keys.read().unwrap_or_else(|e| e.into_inner());
        keys.key_for(identity)
    })
}

/// The PSK identity hint: with dtun's marker (after the rekey advertisement when we rekey),
/// unless `-compat` (the original's exactly).
fn identity_hint(cfg: &ServerConfig) -> Vec<u8> {
    if cfg.common.compat {
        cfg.hint.as_bytes().to_vec()
    } else if cfg.common.rekey.is_some() {
        format!("{}{HINT_REKEY}{HINT_MARKER}", cfg.hint).into_bytes()
    } else {
        format!("{}{HINT_MARKER}", cfg.hint).into_bytes()
    }
}

/// The nftables table (`-nat`, `-client-to-client`, groups) and, with `-pool6`, IPv6
/// forwarding (`dtun_linux::nat6`; its failure only costs IPv6 forwarding, with a warning).
fn firewall(
    cfg: &ServerConfig,
) -> Result<
    (
        Option<dtun_linux::nft::Firewall>,
        Option<dtun_linux::nat6::Ipv6Forwarding>,
    ),
    ServerError,
> {
    let firewall = match cfg.firewall {
        Some(policy) => {
            let mut groups: Vec<String> = cfg
                .keys
                .clients
                .values()
                .filter_map(|c| c.group.clone())
                .collect();
            groups.sort();
            groups.dedup();
            Some(dtun_linux::nft::Firewall::apply(
                &cfg.instance,
                policy,
                &groups,
            )?)
        }
        None => None,
    };
    let nat6 = match (&firewall, cfg.firewall, cfg.pool6) {
        (Some(fw), Some(policy), Some(_)) if policy.needs_forwarding() => {
            match dtun_linux::nat6::Ipv6Forwarding::apply(fw, &cfg.tun.name, policy, &cfg.instance)
            {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!("{e}: IPv6 from clients is not forwarded");
                    None
                }
            }
        }
        _ => None,
    };
    Ok((firewall, nat6))
}

/// At the end: IPv6 forwarding's guard, then the table (the kernel would remove it with the
/// process anyway: it is owned by our netlink socket).
fn remove_firewall(
    nat6: Option<dtun_linux::nat6::Ipv6Forwarding>,
    firewall: Option<dtun_linux::nft::Firewall>,
) {
    if let Some(n) = nat6 {
        n.remove();
    }
    if let Some(fw) = firewall {
        if fw.failures() > 0 {
            tracing::warn!(
                "{} updates of the nftables sets failed while the server ran",
                fw.failures()
            );
        }
        fw.remove();
    }
}
