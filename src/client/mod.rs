//! The client: handshake with the server, receive the address message, bring up the TUN,
//! announce the peernet, run the up script, then forward packets; when the session dies,
//! reconnect with capped exponential backoff, keeping the TUN, its addresses and routes.
//!
//! Here: the reconnect loop, its errors and backoff. One session's protocol is
//! `dtun_proto::session::ClientSession` (no I/O); `session` drives it from the socket and a
//! timer and does the setup's side effects, `forward` is its live loop.

mod addr6;
mod forward;
mod pair;
mod roam;
mod session;
mod sink;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ClientConfig, ConfigError};
use crate::ops::ClientBoard;
use crate::supervise::TaskEnded;
use dtun_linux::hooks::{self, HookError, TunnelEnv};
use dtun_linux::netlink::{Netlink, NetlinkError};
use dtun_linux::routes::Routes;
use dtun_linux::tun::{Tun, TunError};
use dtun_proto::consts::{FAILOVER_DELAY, MAX_BACKOFF, MIN_BACKOFF, REPLACED_BACKOFF};
use dtun_proto::handshake::HandshakeError;
use dtun_proto::proto::{AddressMessage, ProtoError};

pub use addr6::LOG_IPV6_UP;
use session::session;

/// Log line once forwarding starts (tests look for it).
pub const LOG_TUNNEL_UP: &str = "tunnel up";
/// Log line when the path MTU changes the TCP MSS clamp: `path MTU P: TCP MSS clamped to N`.
pub const LOG_MSS_CLAMPED: &str = "TCP MSS clamped to";
/// How often the client re-reads the path MTU the kernel knows for its socket.
const PATH_MTU_EVERY: Duration = Duration::from_secs(1);
/// Path MTUs below this (the smallest datagram every IPv4 host must take) are ignored.
const MIN_PATH_MTU: u32 = 576;

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
    /// The server's address pair conflicts with this host's networks (src/client/pair.rs).
    #[error("refused the server's addresses: {0}")]
    Pair(String),
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("cannot set up -route/-exclude: {0}; dtun removed what it had added of them")]
    Routes(NetlinkError),
    #[error(transparent)]
    RoutesOwner(dtun_linux::routes::RoutesError),
    #[error("{0}; the tunnel is closed")]
    Hook(#[from] HookError),
    #[error("sending to {0} failed: {1}")]
    Send(SocketAddr, std::io::Error),
    #[error("the server ended the session: {0}")]
    Closed(String),
    #[error(
        "the server refused the session ({0}): it is at its -max-clients limit; try later, or ask for an id in its -clients file"
    )]
    Full(String),
    #[error("id {0} in use from {1}: another client holds this id")]
    Replaced(String, String),
    #[error("no sign of life from {0} for {1:?}: the server is gone or the path is down")]
    Dead(SocketAddr, Duration),
    #[error(
        "server {0} is unreachable: an ICMP port unreachable came and nothing from the server within {1:?}"
    )]
    Unreachable(SocketAddr, Duration),
    #[error(
        "our keys are nearly used up (record sequence numbers or an AEAD usage limit, docs/PROTOCOL.md): a new session brings fresh keys"
    )]
    Exhausted,
    #[error(transparent)]
    Internal(#[from] TaskEnded),
}

impl ClientError {
    /// Errors that retrying cannot cure: the user must act.
    fn is_fatal(&self) -> bool {
        match self {
            ClientError::Config(_)
            | ClientError::Hook(_)
            | ClientError::Internal(_)
            | ClientError::Pair(_)
            | ClientError::Routes(_)
            | ClientError::RoutesOwner(_) => true,
            ClientError::Tun(e) => !matches!(e, TunError::Netlink(n) if !n.is_permission_denied()),
            ClientError::Netlink(e) => e.is_permission_denied(),
            _ => false,
        }
    }
}

/// The TUN device and what it was set up with; it outlives sessions.
struct Tunnel {
    tun: Tun,
    addrs: AddressMessage,
    /// The IPv6 pair on the TUN (a dtun server's Addr6), if the tunnel carries IPv6.
    addr6: Option<dtun_proto::proto::Addr6>,
}

impl Tunnel {
    fn env(&self) -> TunnelEnv {
        TunnelEnv {
            tun: self.tun.name.clone(),
            peer_ip: self.addrs.server,
            local_ip: self.addrs.client,
            ip6: self.addr6.map(|a| (a.client, a.server)),
        }
    }
}

/// What every session of a run works with; the TUN and `-route` outlive sessions.
struct Ctx<'a> {
    cfg: &'a ClientConfig,
    nl: &'a Netlink,
    dns: &'a dtun_linux::dns::Dns,
    board: &'a ClientBoard,
    tunnel: &'a mut Option<Tunnel>,
    routes: &'a mut Option<Routes>,
}

/// How a session ended.
enum End {
    Shutdown,
    /// `was_up`: forwarding had started (the backoff starts over).
    Lost {
        error: ClientError,
        was_up: bool,
    },
}

/// Capped exponential backoff with ±20 % jitter.
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: MIN_BACKOFF }
    }
}

impl Backoff {
    pub fn reset(&mut self) {
        self.next = MIN_BACKOFF;
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        let mut b = [0u8; 1];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        // 0.8 .. 1.2 of the base
        base.mul_f64(0.8 + 0.4 * f64::from(b[0]) / 255.0)
    }
}

/// Runs the client until `shutdown` resolves (then: close_notify, down script, Ok), or until
/// an error retrying cannot cure (or, with `-once`, the first failure).
pub async fn run(cfg: ClientConfig, shutdown: impl Future<Output = ()>) -> Result<(), ClientError> {
    let board = ClientBoard::new(&cfg.instance, &cfg.id, &cfg.host);
    run_with(cfg, Arc::new(board), shutdown).await
}

/// [`run`], publishing its state on `board` (for `dtun status` and `-metrics`).
pub async fn run_with(
    cfg: ClientConfig,
    board: Arc<ClientBoard>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClientError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let nl = Netlink::new()?;
    // DNS (src/dns.rs): restores what a killed dtun left; set once the tunnel is up.
    let dns = dtun_linux::dns::Dns::new(&cfg.dns_policy(), &nl).await;
    {
        let board = Arc::clone(&board);
        dns.watch(Box::new(move |servers, via| board.dns(servers, via)));
    }
    if cfg.routes.is_active() {
        let show = |nets: &[ipnet::IpNet]| nets.iter().map(ToString::to_string).collect();
        board.routes(show(&cfg.routes.tunnel_routes()), show(&cfg.routes.exclude));
    }
    let mut tunnel: Option<Tunnel> = None;
    // -route: this network namespace's routing becomes ours (refused while another live dtun
    // owns it), and what a killed dtun left behind goes first.
    let mut routes = None;
    if cfg.routes.is_active() {
        let taken = Routes::take(nl.clone(), cfg.routes.clone(), &cfg.instance, &cfg.host).await;
        routes = Some(taken.map_err(|e| match e {
            dtun_linux::routes::RoutesError::Netlink(e) => ClientError::Routes(e),
            e => ClientError::RoutesOwner(e),
        })?);
    }
    let mut backoff = Backoff::default();
    let mut last_error = String::new();
    // Which server of -host this try goes to: the next one after a failed try, the same one
    // after a session that was up; the backoff grows once per round of them all.
    let mut current = 0usize;
    let result = loop {
        board.connecting();
        let mut ctx = Ctx {
            cfg: &cfg,
            nl: &nl,
            dns: &dns,
            board: &board,
            tunnel: &mut tunnel,
            routes: &mut routes,
        };
        let end = session(&mut ctx, current, shutdown.as_mut()).await;
        board.ended();
        match end {
            End::Shutdown => break Ok(()),
            End::Lost { error, was_up } => {
                if cfg.once || error.is_fatal() {
                    break Err(error);
                }
                if was_up {
                    backoff.reset();
                }
                let failed = cfg.servers[current % cfg.servers.len()].to_string();
                let delay = match error {
                    ClientError::Replaced(..) | ClientError::Full(_) => REPLACED_BACKOFF,
                    _ if !was_up && cfg.servers.len() > 1 => {
                        current = (current + 1) % cfg.servers.len();
                        if current == 0 {
                            backoff.next_delay()
                        } else {
                            FAILOVER_DELAY
                        }
                    }
                    _ => backoff.next_delay(),
                };
                let msg = if cfg.servers.len() > 1 {
                    format!("server {failed}: {error}")
                } else {
                    error.to_string()
                };
                board.backing_off(delay, msg.clone());
                crate::ops::notify::status(&format!("reconnecting: {msg}"));
                if msg != last_error {
                    tracing::warn!(
                        "{msg}; reconnecting (next try in {:.1}s)",
                        delay.as_secs_f64()
                    );
                    last_error = msg;
                } else {
                    tracing::debug!("{msg}; next try in {:.1}s", delay.as_secs_f64());
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.as_mut() => break Ok(()),
                }
            }
        }
    };
    dns.shutdown().await;
    if let Some(t) = tunnel.take() {
        if let Some(down) = &cfg.common.down
            && let Err(e) = hooks::run("down", down, &t.env()).await
        {
            tracing::warn!("{e}");
        }
        if let Some(r) = routes.as_mut()
            && let Err(e) = r.remove().await
        {
            tracing::warn!("{e}");
        }
        tracing::info!("removing {}", t.tun.name);
        let _ = nl.del_link(t.tun.index).await;
    }
    // -kill-switch: lifted at a clean stop, kept after a failure.
    if let Some(r) = routes.as_mut() {
        r.finish(result.is_ok()).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::sink::*;
    use super::wire::take_dns;
    use super::*;

    use dtun_proto::inbound::{Counters, DropKind};

    /// The server's DNS servers reach the DNS state; unusable ones are one counted drop
    /// each, the rest kept. (A malformed Dns record is a counted drop in the session:
    /// dtun_proto::session's tests.)
    #[test]
    fn unusable_dns_servers_are_counted_drops() {
        let dir = std::env::temp_dir().join(format!("dtun-client-dns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let resolv = dir.join("resolv.conf");
        std::fs::write(&resolv, b"nameserver 192.0.2.1\n").unwrap();
        let dns = dtun_linux::dns::Dns::with_paths(&resolv, &dir.join("run"), vec![], true);
        dns.tunnel_up("dtun0", 7);
        let counters = Counters::default();
        take_dns(&["203.0.113.10".parse().unwrap()], &counters, &dns);
        assert_eq!(counters.drops(DropKind::Unexpected), 0);
        let now = std::fs::read_to_string(&resolv).unwrap();
        assert!(now.contains("nameserver 203.0.113.10"), "{now}");
        let bad = [
            "127.0.0.1".parse().unwrap(),
            "fe80::1".parse().unwrap(),
            "203.0.113.10".parse().unwrap(),
        ];
        take_dns(&bad, &counters, &dns);
        assert_eq!(counters.drops(DropKind::Unexpected), 2);
        let now = std::fs::read_to_string(&resolv).unwrap();
        assert!(!now.contains("127.0.0.1") && !now.contains("fe80"), "{now}");
        assert!(now.contains("nameserver 203.0.113.10"), "{now}");
        drop(dns);
        assert_eq!(std::fs::read(&resolv).unwrap(), b"nameserver 192.0.2.1\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn path_mss_is_the_smaller_of_tun_and_path() {
        // Default TUN MTU for a 16-byte tag over IPv4: 1500 - 28 - 37.
        let p = PathMss::new(1435, 28 + 37);
        assert_eq!(p.clamp.get(), (1395, 1375));
        assert_eq!(p.for_path(1500), (1395, 1375));
        assert_eq!(p.for_path(9000), (1395, 1375));
        assert_eq!(p.for_path(1280), (1175, 1155));
        assert_eq!(p.for_path(1492), (1387, 1367));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= MIN_BACKOFF.mul_f64(0.79) && first <= MIN_BACKOFF.mul_f64(1.21));
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
        }
        assert!(last <= MAX_BACKOFF.mul_f64(1.21) && last >= MAX_BACKOFF.mul_f64(0.79));
        b.reset();
        assert!(b.next_delay() <= MIN_BACKOFF.mul_f64(1.21));
    }
}
