//! A client id's device: its TUN and address pair, the LAN routes the client announced, and
//! the up/down scripts that run with it (the manager's half that touches the kernel).

use std::time::Instant;

use ipnet::IpNet;
use tokio::task::JoinHandle;

use super::session::Session;
use dtun_linux::hooks::TunnelEnv;
use dtun_linux::tun::Tun;
use dtun_proto::pool::Pair;
use dtun_proto::pool6::Pair6;

/// One id's device, with or without a session.
pub(super) struct Device {
    pub(super) tun: Tun,
    pub(super) pair: Pair,
    /// The IPv6 pair on the device (`-pool6`); None when IPv6 is off for it.
    pub(super) pair6: Option<Pair6>,
    /// Routes we added through this device (the client's peernet).
    pub(super) routes: Vec<IpNet>,
    /// What the session's peernet message announced (the Lans message adds to it).
    pub(super) peernet: Vec<IpNet>,
    /// Every LAN the client last asked for (peernet and Lans), routed or refused: a reload
    /// checks them again against the new `lans=`.
    pub(super) wanted: Vec<IpNet>,
    pub(super) session: Option<Session>,
    /// When the last session ended; the device goes after `-linger`.
    pub(super) idle_since: Option<Instant>,
    /// The device's up script, running beside the manager (the down script waits for it).
    pub(super) up: Option<JoinHandle<()>>,
    /// The up script has yet to start: it waits for the client's Hello, which brings the
    /// IPv6 pair (its LOCAL_IP6 and PEER_IP6), or `HELLO_GRACE` without one.
    pub(super) up_pending: bool,
    /// When it was made, and its ended sessions' counters added up (for status and metrics).
    pub(super) created: Instant,
    pub(super) past: crate::ops::status::Traffic,
    /// The isolation group its TUN was put in (nftables sets), as it was at creation.
    pub(super) group: Option<String>,
}

/// A script's view of a server-side device: PEER_IP is the client's tunnel address.
pub(super) fn device_env(tun: &str, pair: Pair, pair6: Option<Pair6>) -> TunnelEnv {
    TunnelEnv {
        tun: tun.to_string(),
        peer_ip: pair.client,
        local_ip: pair.server,
        ip6: pair6.map(|p| (p.server, p.client)),
    }
}
