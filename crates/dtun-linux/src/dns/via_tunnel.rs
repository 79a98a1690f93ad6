//! Pushed DNS servers go through the tunnel: a server the client took from the server but
//! that this host's routes would send elsewhere (a split-routing client whose `-route` does
//! not cover it, an `-exclude` of a full tunnel) gets a host route on the TUN, removed when
//! the servers change, the tunnel goes down or dtun exits (and with the TUN anyway). The
//! queries then go where the server meant them, encrypted, instead of out of the client's own
//! link in clear. A pushed server on this host's own networks (one of its addresses, a
//! gateway, inside an on-link subnet) is not routed: that would take a host of the client's
//! LAN; it is asked there, with a warning.
//!
//! The netlink calls run in one task of their own, in order ([`Cmd`]), so the session's task
//! never waits for them.

use std::net::IpAddr;

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};

use crate::netlink::Netlink;

/// Log line when a pushed server gets its host route (tests look for it).
pub const LOG_DNS_ROUTED: &str = "routed through the tunnel";

pub(super) enum Cmd {
    /// The servers taken from the server now (empty: none, or the client's own `-dns`).
    Set {
        index: u32,
        tun: String,
        servers: Vec<IpAddr>,
    },
    /// Answered once everything sent before it is done.
    Flush(oneshot::Sender<()>),
}

pub(super) fn spawn(nl: Netlink) -> mpsc::UnboundedSender<Cmd> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(nl, rx));
    tx
}

async fn run(nl: Netlink, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    // Our host routes, and the TUN they are on.
    let mut routed: Vec<(IpNet, u32)> = Vec::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Set {
                index,
                tun,
                servers,
            } => {
                let mut keep = Vec::new();
                for (net, on) in routed.drain(..) {
                    if on == index && servers.contains(&net.addr()) {
                        keep.push((net, on));
                    } else if let Err(e) = nl.del_route(net, on).await {
                        tracing::warn!("{e}");
                    }
                }
                routed = keep;
                for ip in servers {
                    if routed.iter().any(|(n, _)| n.addr() == ip) {
                        continue;
                    }
                    if let Some(net) = route(&nl, index, &tun, ip).await {
                        routed.push((net, index));
                    }
                }
            }
            Cmd::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Adds a host route for `ip` on the TUN if it needs one and may have one; returns it.
async fn route(nl: &Netlink, index: u32, tun: &str, ip: IpAddr) -> Option<IpNet> {
    match nl.route_get_oif(ip).await {
        Ok(Some(oif)) if oif == index => return None,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!("DNS server {ip}: {e}; not routed through the tunnel");
            return None;
        }
    }
    let lan = async {
        let (own, gateways) = nl.own_addresses_and_gateways(&[index]).await?;
        let on_link = nl.on_link_networks(&[index]).await?;
        Ok::<_, crate::netlink::NetlinkError>(
            own.contains(&ip) || gateways.contains(&ip) || on_link.iter().any(|n| n.contains(&ip)),
        )
    };
    match lan.await {
        Ok(false) => {}
        Ok(true) => {
            tracing::warn!(
                "DNS server {ip} from the server is on this host's own network: asked there, not through the tunnel (routing it into {tun} would take that host from the LAN); the server's -dns should name a server of its own side"
            );
            return None;
        }
        Err(e) => {
            tracing::warn!("DNS server {ip}: {e}; not routed through the tunnel");
            return None;
        }
    }
    let net = IpNet::from(ip);
    match nl.add_route(net, None, index).await {
        Ok(()) => {
            tracing::info!(
                "DNS server {ip} {LOG_DNS_ROUTED} (host route on {tun}): this host's routes sent it elsewhere"
            );
            Some(net)
        }
        Err(e) => {
            tracing::warn!("{e}: DNS server {ip} is not routed through the tunnel");
            None
        }
    }
}
