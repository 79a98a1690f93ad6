//! The manager: the pool, the sessions' lifecycles (start, replace, keepalive, close, sequence
//! exhaustion) and the timers (control path side); a device's own plumbing is in `device`.
//! Here: the manager's state, its event loop, control messages and timers; starting, refusing
//! and ending a session is in `sessions`.

mod devices;
mod reconfigure;
mod sessions;
mod status;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::demux::DemuxCmd;
use crate::config::ServerConfig;
use crate::pump::OutboundCmd;
use dtun_linux::netlink::Netlink;
use dtun_linux::udp::Udp;
use dtun_proto::consts::{KEEPALIVE_MISSES, SETUP_TIMEOUT};
use dtun_proto::pool::Pool;
use dtun_proto::proto::{CONTROL_VERSION, CloseReason, Control, HelloFlags};

use super::device::Device;
use super::events::Event;

// ---------------------------------------------------------------------------------------------
// Manager (control path side)

pub(super) struct Manager {
    cfg: ServerConfig,
    nl: Netlink,
    udp: Udp,
    pool: Pool,
    pool6: Option<dtun_proto::pool6::Pool6>,
    cmd_tx: mpsc::UnboundedSender<DemuxCmd>,
    devices: HashMap<String, Device>,
    next_session: u64,
    refusals: Refusals,
    /// Down scripts (each after its device's up script) still running; awaited at shutdown.
    scripts: Vec<JoinHandle<()>>,
    /// A task the server needs ended (an outbound task panicked without the exiting panic
    /// hook): the manager stops and the server exits.
    fatal: Option<crate::supervise::TaskEnded>,
    /// For status and metrics: the demultiplexer's counters, removed devices' traffic added
    /// up, and the requests for a snapshot (`crate::ops`).
    counters: Arc<super::DemuxCounters>,
    removed: crate::ops::status::Traffic,
    status_rx: Option<mpsc::Receiver<crate::ops::ServerRequest>>,
    /// The key store the handshakes look keys up in; a reload replaces it (`reconfigure`).
    keys: Arc<std::sync::RwLock<dtun_proto::keys::KeyStore>>,
    /// Ids whose fixed address a reload changed while they had a device: a new device at
    /// their next connect.
    stale_addr: std::collections::HashSet<String>,
    /// The nftables table (`-nat`, `-client-to-client`, groups): its sets follow the devices.
    firewall: Option<dtun_linux::nft::Firewall>,
    /// The table and rule of the clients' LAN routes.
    lan_table: super::lan_table::LanTable,
    /// This host's networks, addresses and gateways for the LAN check, read at most once a
    /// `HOST_VIEW_TTL`.
    host_view: super::host_view::HostViewCache,
}

/// Clients refused at the `-max-clients` limit: counted, and logged at most once a second.
pub(super) struct Refusals {
    log: dtun_linux::rate_limit::RateLimit,
    pub(super) count: u64,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            log: dtun_linux::rate_limit::RateLimit::new(1),
            count: 0,
        }
    }
}

/// What the server hands a new manager; the rest of its state starts empty.
pub(super) struct Setup {
    pub(super) cfg: ServerConfig,
    pub(super) nl: Netlink,
    pub(super) udp: Udp,
    pub(super) pool: Pool,
    pub(super) pool6: Option<dtun_proto::pool6::Pool6>,
    pub(super) cmd_tx: mpsc::UnboundedSender<DemuxCmd>,
    pub(super) counters: Arc<super::DemuxCounters>,
    pub(super) status_rx: Option<mpsc::Receiver<crate::ops::ServerRequest>>,
    pub(super) keys: Arc<std::sync::RwLock<dtun_proto::keys::KeyStore>>,
    pub(super) firewall: Option<dtun_linux::nft::Firewall>,
}

impl Manager {
    pub(super) fn new(s: Setup) -> Manager {
        Manager {
            cfg: s.cfg,
            nl: s.nl,
            udp: s.udp,
            pool: s.pool,
            pool6: s.pool6,
            cmd_tx: s.cmd_tx,
            devices: HashMap::new(),
            next_session: 0,
            refusals: Default::default(),
            scripts: Vec::new(),
            fatal: None,
            counters: s.counters,
            removed: crate::ops::status::Traffic::zero(),
            status_rx: s.status_rx,
            keys: s.keys,
            stale_addr: Default::default(),
            firewall: s.firewall,
            lan_table: Default::default(),
            host_view: Default::default(),
        }
    }

    /// After [`Manager::run`]: removes the clients' LAN rule (when this was its last holder);
    /// gives back whether a task the server needed ended, and the nftables table to remove.
    pub(super) async fn finish(
        mut self,
    ) -> (
        Option<crate::supervise::TaskEnded>,
        Option<dtun_linux::nft::Firewall>,
    ) {
        self.lan_table.close(&self.nl).await;
        (self.fatal.take(), self.firewall.take())
    }

    pub(super) async fn run(
        &mut self,
        mut ev_rx: mpsc::UnboundedReceiver<Event>,
        mut session_rx: mpsc::Receiver<Event>,
        mut reloads: mpsc::Receiver<super::Reconfigure>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut reloadable = true;
        tokio::pin!(shutdown);
        let mut status_rx = self.status_rx.take();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(reply) = async {
                    match status_rx.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let _ = reply.send(self.status_view());
                }
                ev = ev_rx.recv() => match ev {
                    Some(ev) => self.event(ev).await,
                    None => break,
                },
                ev = session_rx.recv() => match ev {
                    Some(ev) => self.event(ev).await,
                    None => break,
                },
                _ = tick.tick() => self.timers().await,
                r = reloads.recv(), if reloadable => match r {
                    Some(r) => self.reconfigure(r).await,
                    None => reloadable = false,
                },
            }
            if self.fatal.is_some() {
                break;
            }
        }
        tracing::info!(
            "shutting down: closing {} session(s)",
            self.devices
                .values()
                .filter(|d| d.session.is_some())
                .count()
        );
        let ids: Vec<String> = self.devices.keys().cloned().collect();
        for id in ids {
            // An up script still running is stopped (killed), so its down script runs now.
            if let Some(up) = self.devices.get(&id).and_then(|d| d.up.as_ref()) {
                up.abort();
            }
            self.end_session(&id, Some(CloseReason::Shutdown), "server shutting down")
                .await;
            self.remove_device(&id).await;
        }
        for script in self.scripts.drain(..) {
            let _ = script.await;
        }
    }

    async fn event(&mut self, ev: Event) {
        match ev {
            Event::Authenticated { addr, est } => {
                // The key lookup refused invalid ids already; never merge or log raw bytes.
                let Some(id) = dtun_proto::keys::valid_identity(&est.identity).map(String::from)
                else {
                    let peer = dtun_linux::udp::plain(addr);
                    tracing::warn!(
                        "client from {peer}: refused invalid id \"{}\"",
                        est.identity.escape_ascii()
                    );
                    return;
                };
                // The key may have changed since the demultiplexer verified the handshake (a
                // reload while it waited in the queue): only the id's key now starts a session.
                if self.cfg.keys.key_id_for(id.as_bytes()) != Some(est.key_id) {
                    self.refuse_revoked(&id, addr, &est).await;
                    return;
                }
                if let Err(e) = self.start_session(&id, addr, *est).await {
                    let peer = dtun_linux::udp::plain(addr);
                    tracing::error!("client {id} from {peer}: cannot set up its tunnel: {e}");
                }
            }
            Event::Peernet {
                session_id,
                peernet,
            } => {
                let Some(id) = self.id_of(session_id) else {
                    return;
                };
                match peernet {
                    Ok(p) => self.set_peernet(&id, p).await,
                    Err(e) => {
                        tracing::warn!("client {id}: {e}; the tunnel stays up without a route")
                    }
                }
                if let Some(s) = self.devices.get_mut(&id).and_then(|d| d.session.as_mut()) {
                    s.setup_deadline = None;
                }
            }
            Event::Closed {
                session_id,
                level,
                desc,
            } => {
                let Some(id) = self.id_of(session_id) else {
                    return;
                };
                let why = if desc == 0 {
                    "close_notify".to_string()
                } else {
                    format!("alert {level}/{desc}")
                };
                self.end_session(&id, None, &format!("peer sent {why}"))
                    .await;
            }
            Event::SetupLost { session_id } => {
                let Some(id) = self.id_of(session_id) else {
                    return;
                };
                self.end_session(
                    &id,
                    Some(CloseReason::Timeout),
                    "its peernet message was lost",
                )
                .await;
            }
            Event::Control { session_id, msg } => {
                let Some(id) = self.id_of(session_id) else {
                    return;
                };
                self.control(&id, msg).await;
            }
        }
    }

    fn id_of(&self, session_id: u64) -> Option<String> {
        self.devices
            .iter()
            .find(|(_, d)| {
                d.session
                    .as_ref()
                    .is_some_and(|s| s.session_id == session_id)
            })
            .map(|(id, _)| id.clone())
    }

    /// Answers a dtun client's control message.
    async fn control(&mut self, id: &str, msg: Control) {
        let Some(s) = self.devices.get_mut(id).and_then(|d| d.session.as_mut()) else {
            return;
        };
        match msg {
            Control::Hello { keepalive_ms, .. } => {
                s.keepalive = Duration::from_millis(u64::from(keepalive_ms));
                tracing::debug!("client {id} is a dtun peer (keepalive {:?})", s.keepalive);
                // Once a session (a Hello said again after a failure would log it again).
                if !s.answered {
                    self.give_ipv6(id).await;
                }
                self.start_up_script(id);
                self.answer_hello(id);
            }
            // Only a dtun client pings: a lost Hello must not leave it unanswered. The
            // demultiplexer answers every Ping and passes on only the first.
            Control::Ping if !self.cfg.common.compat && !s.negotiated => {
                s.negotiated = true;
                s.keepalive = self.cfg.common.keepalive;
                self.start_up_script(id);
            }
            Control::Close { reason, detail } => {
                tracing::debug!("client {id} is closing: {reason:?} {detail:?}");
            }
            Control::Lans(lans) => {
                s.lans_heard = true;
                self.add_lans(id, lans).await;
            }
            _ => {}
        }
    }

    /// Answers a Hello (each one: a client says it again until its answer shows that nothing
    /// was lost, src/client/hello.rs): the device's IPv6 pair and our -dns, then the answer,
    /// whose flags say that those came and whether we have the client's Lans. A client that
    /// has the answer knows whether IPv6 comes before its up script runs.
    fn answer_hello(&mut self, id: &str) {
        let addr6 = self
            .devices
            .get(id)
            .and_then(|d| d.pair6)
            .zip(self.pool6.as_ref())
            .map(|(pair6, pool6)| pool6.message(pair6));
        let Some(s) = self.devices.get_mut(id).and_then(|d| d.session.as_mut()) else {
            return;
        };
        let first = !s.answered;
        s.negotiated = true;
        s.answered = true;
        let dns = &self.cfg.dns;
        let flags = HelloFlags::default()
            .with(HelloFlags::ADDR6_SENT, addr6.is_some())
            .with(HelloFlags::DNS_SENT, !dns.is_empty())
            .with(HelloFlags::LANS_HEARD, s.lans_heard);
        let ours = u32::try_from(self.cfg.common.keepalive.as_millis()).unwrap_or(u32::MAX);
        let answer = Control::Hello {
            version: CONTROL_VERSION,
            keepalive_ms: ours,
            flags,
        };
        if let Some(a) = addr6 {
            if first {
                tracing::info!(
                    "client {id}: IPv6 inside, local {} peer {}",
                    a.server,
                    a.client
                );
            }
            let _ = s
                .out_tx
                .try_send(OutboundCmd::Send(Control::Addr6(a).to_bytes()));
        }
        if !dns.is_empty() {
            if first {
                tracing::info!(
                    "client {id}: {} {}",
                    dtun_linux::dns::LOG_DNS_PUSHED,
                    dns.iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
            let _ = s
                .out_tx
                .try_send(OutboundCmd::Send(Control::Dns(dns.clone()).to_bytes()));
        }
        if !first {
            tracing::debug!("client {id} said Hello again; answered with flags {flags:?}");
        }
        let _ = s.out_tx.try_send(OutboundCmd::Send(answer.to_bytes()));
    }

    async fn timers(&mut self) {
        let now = Instant::now();
        // An outbound task ends by itself only when its keys are nearly used up (sequence
        // numbers or the confidentiality limit); the read key's integrity limit closes only a
        // dtun peer's session (an original's: docs/PROTOCOL.md, AEAD usage limits).
        let exhausted: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| {
                d.session.as_ref().is_some_and(|s| {
                    s.out_task.is_finished()
                        || (s.negotiated && s.counters.integrity_limit_reached())
                })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in exhausted {
            self.end_session(
                &id,
                Some(CloseReason::Exhausted),
                "its keys are nearly used up (record sequence numbers or an AEAD usage limit): the client must reconnect for fresh keys",
            )
            .await;
        }
        let late: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| {
                d.session
                    .as_ref()
                    .and_then(|s| s.setup_deadline)
                    .is_some_and(|t| now >= t)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            self.end_session(
                &id,
                Some(CloseReason::Timeout),
                &format!("no peernet message within {SETUP_TIMEOUT:?}"),
            )
            .await;
        }
        // Keepalive: a dtun client pings when quiet; no authenticated record for
        // KEEPALIVE_MISSES of its periods means it is gone.
        let check = !self.cfg.common.keepalive.is_zero();
        let mut dead = Vec::new();
        for (id, d) in self.devices.iter_mut() {
            let Some(s) = d.session.as_mut() else {
                continue;
            };
            let seen = s.counters.authenticated();
            if seen != s.seen {
                s.seen = seen;
                s.alive_at = now;
            } else if check
                && s.negotiated
                && !s.keepalive.is_zero()
                && now.duration_since(s.alive_at) >= s.keepalive * KEEPALIVE_MISSES
            {
                dead.push((id.clone(), now.duration_since(s.alive_at)));
            }
        }
        for (id, quiet) in dead {
            let why = format!("no keepalive for {:.1}s", quiet.as_secs_f64());
            self.end_session(&id, Some(CloseReason::Timeout), &why)
                .await;
        }
        // Up scripts still waiting for a Hello that did not come (an original peer).
        let due: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| {
                d.up_pending && now.duration_since(d.created) >= dtun_proto::consts::HELLO_GRACE
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.start_up_script(&id);
        }
        let linger = self.cfg.linger;
        let expired: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| {
                d.session.is_none()
                    && d.idle_since
                        .is_some_and(|t| now.duration_since(t) >= linger)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove_device(&id).await;
        }
    }
}

#[cfg(test)]
mod tests;
