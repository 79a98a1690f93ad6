//! The manager's half of a device: made for an id's first session (a TUN, its address pair,
//! the client's LAN routes, the up script), found again when the id comes back, and removed
//! after `-linger` idle or at shutdown (routes, pool pairs, the down script).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use ipnet::IpNet;

use super::Manager;
use crate::server::demux::DemuxCmd;
use crate::server::device::{Device, device_env};
use crate::server::session::SessionError;
use dtun_linux::hooks;
use dtun_linux::tun;
use dtun_proto::authz;
use dtun_proto::pool6::Pair6;
use dtun_proto::proto::Peernet;
use dtun_proto::record;

impl Manager {
    pub(super) async fn create_device(
        &mut self,
        id: &str,
        suite: record::Suite,
        addr: SocketAddr,
    ) -> Result<Device, SessionError> {
        let fixed = self.cfg.keys.clients.get(id).and_then(|c| c.addr);
        let pair = match fixed {
            Some(addr) => self.pool.assign_fixed(id, addr)?,
            None => self.pool.assign(id)?,
        };
        let mtu = self.cfg.tun.mtu_for(suite, addr);
        let group = self.cfg.keys.group_of(id).map(String::from);
        let made = async {
            let tun = tun::create(&self.nl, &self.cfg.tun.name, mtu).await?;
            let set_up = async {
                self.nl
                    .add_p2p_address(tun.index, pair.server, pair.client)
                    .await?;
                // Into the nftables sets before any packet of the session can pass.
                if let Some(fw) = self.firewall.as_mut() {
                    fw.add_tun(&tun.name, group.as_deref())?;
                }
                Ok::<_, SessionError>(())
            };
            match set_up.await {
                Ok(()) => Ok(tun),
                Err(e) => {
                    let _ = self.nl.del_link(tun.index).await;
                    Err(e)
                }
            }
        }
        .await;
        // No IPv6 pair yet: only a dtun peer can use one, and it shows it is one by its
        // Hello (`add_ipv6`); an original peer would never configure its side.
        match made {
            Ok(tun) => Ok(Device {
                up: None,
                up_pending: self.cfg.common.up.is_some(),
                tun,
                pair,
                pair6: None,
                routes: Vec::new(),
                peernet: Vec::new(),
                wanted: Vec::new(),
                session: None,
                idle_since: None,
                created: Instant::now(),
                past: crate::ops::status::Traffic::zero(),
                group,
            }),
            Err(e) => {
                self.pool.release(id);
                Err(e)
            }
        }
    }

    /// Starts the device's up script if it waits for the Hello (beside the manager: a slow
    /// script must not hold up anyone else's setup).
    pub(super) fn start_up_script(&mut self, id: &str) {
        let Some(dev) = self.devices.get_mut(id).filter(|d| d.up_pending) else {
            return;
        };
        dev.up_pending = false;
        let Some(up) = self.cfg.common.up.clone() else {
            return;
        };
        let (id, env) = (
            id.to_string(),
            device_env(&dev.tun.name, dev.pair, dev.pair6),
        );
        dev.up = Some(tokio::spawn(async move {
            if let Err(e) = hooks::run("up", &up, &env).await {
                tracing::warn!("client {id}: {e}");
            }
        }));
    }

    /// The client said Hello, so it is a dtun peer: its device gets its IPv6 pair
    /// (`-pool6`) if it has none yet, and the demultiplexer lets the client's address in.
    pub(super) async fn give_ipv6(&mut self, id: &str) {
        let Some(dev) = self.devices.get(id) else {
            return;
        };
        if dev.pair6.is_some() || self.pool6.is_none() {
            return;
        }
        let (name, index, mtu) = (dev.tun.name.clone(), dev.tun.index, dev.tun.mtu);
        let pair6 = self.add_ipv6(id, &name, index, mtu).await;
        let Some(dev) = self.devices.get_mut(id) else {
            return;
        };
        dev.pair6 = pair6;
        if let (Some(p), Some(s)) = (pair6, dev.session.as_ref()) {
            let _ = self.cmd_tx.send(DemuxCmd::Ipv6 {
                session_id: s.session_id,
                tunnel_ip6: p.client,
            });
        }
    }

    /// The id's IPv6 pair on its device (`-pool6`), or None (off, or the device cannot
    /// carry IPv6: logged, and the tunnel carries IPv4 only).
    async fn add_ipv6(&mut self, id: &str, name: &str, index: u32, mtu: u32) -> Option<Pair6> {
        let pool6 = self.pool6.as_mut()?;
        let fixed = self.cfg.keys.clients.get(id).and_then(|c| c.addr6);
        let pair6 = match fixed {
            Some(addr6) => pool6.assign_fixed(id, addr6),
            None => pool6.assign(id),
        };
        let pair6 = match pair6 {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("client {id}: {e}; its tunnel carries IPv4 only");
                return None;
            }
        };
        let configured =
            dtun_linux::inet6::configure(&self.nl, name, index, mtu, pair6.server, pair6.client)
                .await;
        match configured {
            Ok(()) => Some(pair6),
            Err(e) => {
                tracing::warn!("client {id} on {name}: {e}");
                if fixed.is_none() {
                    pool6.release(id);
                }
                None
            }
        }
    }

    /// Routes the client's announced LAN through its device, if authorisation allows it, and
    /// lets its packets come from there.
    pub(super) async fn set_peernet(&mut self, id: &str, peernet: Peernet) {
        let wanted: Vec<IpNet> = match peernet {
            Peernet::Empty => vec![],
            Peernet::Net(n) => vec![n],
        };
        if let Some(dev) = self.devices.get_mut(id) {
            dev.peernet = wanted.clone();
        }
        self.set_lans(id, wanted, false).await;
    }

    /// A dtun client's Lans message: its LANs beyond the peernet message's.
    pub(super) async fn add_lans(&mut self, id: &str, lans: Vec<IpNet>) {
        let Some(dev) = self.devices.get(id) else {
            return;
        };
        let mut wanted = dev.peernet.clone();
        for net in lans.into_iter().map(|n| n.trunc()) {
            if !wanted.contains(&net) {
                wanted.push(net);
            }
        }
        self.set_lans(id, wanted, false).await;
    }

    /// Routes exactly `wanted` (those authorisation allows) through the id's device, and lets
    /// its packets come from there. `recheck` (a reload): the routes already in place are
    /// checked again too, and go when no longer allowed.
    pub(super) async fn set_lans(&mut self, id: &str, wanted: Vec<IpNet>, recheck: bool) {
        let mut ours: Vec<u32> = self.devices.values().map(|d| d.tun.index).collect();
        ours.sort_unstable();
        let view = match self.host_view.get(&self.nl, &ours, Instant::now()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("client {id}: {e}; not routing its peernet");
                return;
            }
        };
        let host = view.host.clone();
        let (own, gateways) = (view.own.clone(), view.gateways.clone());
        // Every live session's outer address (this client's own too: its records would loop).
        let guarded: Vec<(IpAddr, authz::Guarded)> = self
            .devices
            .iter()
            .filter_map(|(other, d)| {
                let s = d.session.as_ref()?;
                Some((s.addr.ip(), authz::Guarded::Underlay(other.clone())))
            })
            .chain(own.into_iter().map(|ip| (ip, authz::Guarded::Own)))
            .chain(gateways.into_iter().map(|ip| (ip, authz::Guarded::Gateway)))
            .collect();
        let others: Vec<(String, IpNet)> = self
            .devices
            .iter()
            .filter(|(other, _)| other.as_str() != id)
            .flat_map(|(other, d)| d.routes.iter().map(|r| (other.clone(), *r)))
            .collect();
        let pool = self.cfg.pool;
        let pool6 = self.pool6.as_ref().map(|p| IpNet::V6(p.net()));
        let Some(dev) = self.devices.get_mut(id) else {
            return;
        };
        dev.wanted = wanted.clone();
        let listed = self
            .cfg
            .keys
            .clients
            .get(id)
            .and_then(|c| c.lans.as_deref());
        for old in dev.routes.clone() {
            let refusal = if !wanted.contains(&old) {
                None
            } else if recheck {
                match authz::check_peernet(old, &host, &guarded, &others, pool, listed) {
                    Ok(()) => continue,
                    Err(r) => Some(r),
                }
            } else {
                continue;
            };
            let _ = self.lan_table.del(&self.nl, old, dev.tun.index).await;
            dev.routes.retain(|r| *r != old);
            if let Some(r) = refusal {
                tracing::warn!("client {id}: route {old} removed: {r} (reload)");
            }
        }
        for net in wanted {
            if dev.routes.contains(&net) {
                continue;
            }
            if let Some(p6) =
                pool6.filter(|p6| p6.contains(&net.network()) || net.contains(&p6.network()))
            {
                tracing::warn!(
                    "client {id}: refused peernet {net}: it overlaps the IPv6 tunnel pool {p6}; the tunnel stays up without that route"
                );
                continue;
            }
            if let Err(refusal) = authz::check_peernet(net, &host, &guarded, &others, pool, listed)
            {
                tracing::warn!(
                    "client {id}: refused peernet {net}: {refusal}; the tunnel stays up without that route"
                );
                continue;
            }
            let via = match net {
                IpNet::V4(_) => Some(IpAddr::V4(dev.pair.client)),
                IpNet::V6(_) => None,
            };
            match self.lan_table.add(&self.nl, net, via, dev.tun.index).await {
                Ok(()) => {
                    tracing::info!(
                        "client {id}: route {net} via {} dev {}",
                        dev.pair.client,
                        dev.tun.name
                    );
                    dev.routes.push(net);
                }
                Err(e) => {
                    tracing::warn!("client {id}: {e}; the tunnel stays up without that route")
                }
            }
        }
        if let Some(s) = &dev.session {
            let _ = self.cmd_tx.send(DemuxCmd::Allow {
                session_id: s.session_id,
                nets: dev.routes.clone(),
            });
        }
    }

    pub(super) async fn remove_device(&mut self, id: &str) {
        let Some(dev) = self.devices.remove(id) else {
            return;
        };
        self.removed.add(&dev.past);
        for r in &dev.routes {
            let _ = self.lan_table.del(&self.nl, *r, dev.tun.index).await;
        }
        if let Some(fw) = self.firewall.as_mut() {
            fw.remove_tun(&dev.tun.name, dev.group.as_deref());
        }
        if let Err(e) = self.nl.del_link(dev.tun.index).await {
            tracing::warn!("removing {}: {e}", dev.tun.name);
        }
        let fixed = self.cfg.keys.clients.get(id).and_then(|c| c.addr);
        if fixed.is_none() {
            self.pool.release(id);
        }
        let fixed6 = self.cfg.keys.clients.get(id).and_then(|c| c.addr6);
        if let Some(pool6) = self.pool6.as_mut()
            && fixed6.is_none()
        {
            pool6.release(id);
        }
        tracing::info!(
            "client {id}: removed {} and its routes ({} pool pairs in use)",
            dev.tun.name,
            self.pool.in_use()
        );
        if let Some(down) = self.cfg.common.down.clone() {
            // After the device's up script (if still running), beside the manager.
            let env = device_env(&dev.tun.name, dev.pair, dev.pair6);
            let (id, up) = (id.to_string(), dev.up);
            self.scripts.retain(|s| !s.is_finished());
            self.scripts.push(tokio::spawn(async move {
                if let Some(up) = up {
                    let _ = up.await;
                }
                if let Err(e) = hooks::run("down", &down, &env).await {
                    tracing::warn!("client {id}: {e}");
                }
            }));
        }
    }
}
