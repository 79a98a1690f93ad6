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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::demux::DemuxCmd;
use crate::config::ServerConfig;
use crate::pump::OutboundCmd;
use dtun_linux::netlink::Netlink;
use dtun_linux::udp::Udp;
use dtun_proto::inbound::DropKind;
use dtun_proto::pool::Pool;
use dtun_proto::proto::{CloseReason, Control};
use dtun_proto::rekey::message::Kind as RekeyKind;
use dtun_proto::session::server::{
    self as server_session, Event as SessionEvent, ServerSession, Step,
};

use super::device::Device;
use super::events::Event;

/// Rekey Init fragments (three per exchange) the manager takes each second from all sessions
/// together: 100 exchanges, about 8 ms of CPU, where a fleet of 1 000 clients rekeying every 2
/// minutes needs 25 fragments a second.
const REKEY_INITS_PER_SECOND: u32 = 300;

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
    /// Rekey Init fragments all sessions together may pass on each second.
    rekey_budget: dtun_linux::rate_limit::RateLimit,
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
            rekey_budget: dtun_linux::rate_limit::RateLimit::new(REKEY_INITS_PER_SECOND),
        }
    }

    /// The control logic's settings for a new session.
    fn session_config(&self) -> server_session::Config {
        server_session::Config {
            keepalive: self.cfg.common.keepalive,
            compat: self.cfg.common.compat,
            rekey: self.cfg.common.rekey.is_some(),
            cid: None,
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
            } => self.session_call(session_id, |s| s.peernet(peernet)).await,
            Event::Closed {
                session_id,
                level,
                desc,
            } => {
                self.session_call(session_id, |s| s.alert(level, desc))
                    .await
            }
            Event::SetupLost { session_id } => {
                self.session_call(session_id, ServerSession::setup_lost)
                    .await
            }
            Event::Control { session_id, msg } => {
                // Each whole Init costs an ML-KEM encapsulation and an X25519 agreement here, in
                // the task every session shares: all sessions together get REKEY_INITS_PER_SECOND
                // fragments (the client sends its Init again a second later).
                if let Control::Rekey(f) = &msg
                    && f.kind == RekeyKind::Init
                    && !self.rekey_budget.allow()
                {
                    self.count_drop(session_id, DropKind::ControlFlood);
                    return;
                }
                self.session_call(session_id, |s| s.control(msg)).await
            }
            Event::Moved {
                session_id,
                from,
                to,
                displaced,
            } => self.moved(session_id, from, to, displaced).await,
        }
    }

    /// A roaming client answered our path challenge from a new address: its session lives
    /// there now. A session the demultiplexer found at that address is over (its client
    /// left it: the address is proven to be another's now).
    async fn moved(
        &mut self,
        session_id: u64,
        from: SocketAddr,
        to: SocketAddr,
        displaced: Option<u64>,
    ) {
        if let Some(id) = self.id_of(session_id)
            && let Some(s) = self.devices.get_mut(&id).and_then(|d| d.session.as_mut())
        {
            s.addr = to;
            s.moves += 1;
            tracing::info!(
                "client {id} moved from {} to {} (roaming)",
                dtun_linux::udp::plain(from),
                dtun_linux::udp::plain(to)
            );
        }
        if let Some(other) = displaced.and_then(|d| self.id_of(d)) {
            let why = format!(
                "its address {} now belongs to another session",
                dtun_linux::udp::plain(to)
            );
            // Nothing said: its address is another client's now.
            self.end_session_because(&other, None, "", &why).await;
        }
    }

    /// Gives a session's control logic what its demultiplexer half reported, and does what
    /// it says.
    async fn session_call(&mut self, session_id: u64, f: impl FnOnce(&mut ServerSession) -> Step) {
        let Some(id) = self.id_of(session_id) else {
            return;
        };
        let Some(s) = self.devices.get_mut(&id).and_then(|d| d.session.as_mut()) else {
            return;
        };
        let step = f(&mut s.control);
        self.session_step(&id, step).await;
    }

    /// Does what a session's control logic says: its control messages go out (in order, on
    /// the session's outbound queue), then its events.
    async fn session_step(&mut self, id: &str, step: Step) {
        // A rekey's new read key reaches the demultiplexer before its Reply leaves, so the
        // client's first records of the new epoch never find it missing.
        let (keys, events): (Vec<_>, Vec<_>) = step
            .events
            .into_iter()
            .partition(|e| matches!(e, SessionEvent::NextKeys { .. }));
        for event in keys {
            if let SessionEvent::NextKeys { epoch, keys } = event {
                self.next_keys(id, epoch, keys);
            }
        }
        if let Some(s) = self.devices.get(id).and_then(|d| d.session.as_ref()) {
            for msg in step.send {
                let _ = s.out_tx.try_send(OutboundCmd::Send(msg));
            }
        }
        for event in events {
            match event {
                SessionEvent::Peernet(p) => self.set_peernet(id, p).await,
                SessionEvent::BadPeernet(e) => {
                    tracing::warn!("client {id}: {e}; the tunnel stays up without a route")
                }
                // Only a dtun client pings: a lost Hello must not leave it unanswered.
                SessionEvent::DtunPeer => self.start_up_script(id),
                SessionEvent::Hello { first, keepalive } => {
                    tracing::debug!("client {id} is a dtun peer (keepalive {keepalive:?})");
                    // Once a session (a Hello said again after a failure would log it again).
                    if first {
                        self.give_ipv6(id).await;
                    }
                    self.start_up_script(id);
                    self.answer_hello(id, first);
                }
                SessionEvent::Lans(lans) => self.add_lans(id, lans).await,
                SessionEvent::Closing { reason, detail } => {
                    tracing::debug!("client {id} is closing: {reason:?} {detail:?}");
                }
                // Taken above, before the step's messages.
                SessionEvent::NextKeys { .. } => {}
                SessionEvent::Dropped => {
                    if let Some(s) = self.devices.get(id).and_then(|d| d.session.as_ref()) {
                        s.counters.count_drop(DropKind::Unexpected);
                    }
                }
                SessionEvent::Ended { reason, why } => {
                    self.end_session(id, reason, &why).await;
                    return;
                }
            }
        }
    }

    /// Counts a drop in session `session_id`'s counters.
    fn count_drop(&self, session_id: u64, kind: DropKind) {
        if let Some(s) = self
            .devices
            .values()
            .filter_map(|d| d.session.as_ref())
            .find(|s| s.session_id == session_id)
        {
            s.counters.count_drop(kind);
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

    /// A rekey: the demultiplexer reads the new epoch now and moves the outbound task to it
    /// at the client's first record of it.
    fn next_keys(&mut self, id: &str, epoch: u16, keys: dtun_proto::kdf::KeyBlock) {
        if let Some(s) = self.devices.get_mut(id).and_then(|d| d.session.as_mut()) {
            s.rekeyed_at = Some(Instant::now());
            let _ = self.cmd_tx.send(DemuxCmd::Rekey {
                session_id: s.session_id,
                epoch,
                keys: Box::new(keys),
            });
            tracing::debug!("client {id}: rekeyed, epoch {epoch}");
        }
    }

    /// Answers a Hello (each one: a client says it again until its answer shows that nothing
    /// was lost): the device's IPv6 pair and our -dns, then the answer, whose flags say that
    /// those came and whether we have the client's Lans (`ServerSession::answer_hello`).
    fn answer_hello(&mut self, id: &str, first: bool) {
        let addr6 = self
            .devices
            .get(id)
            .and_then(|d| d.pair6)
            .zip(self.pool6.as_ref())
            .map(|(pair6, pool6)| pool6.message(pair6));
        let Some(s) = self.devices.get_mut(id).and_then(|d| d.session.as_mut()) else {
            return;
        };
        let dns = &self.cfg.dns;
        let step = s.control.answer_hello(addr6, dns);
        if first {
            if let Some(a) = addr6 {
                tracing::info!(
                    "client {id}: IPv6 inside, local {} peer {}",
                    a.server,
                    a.client
                );
            }
            if !dns.is_empty() {
                tracing::info!(
                    "client {id}: {} {}",
                    dtun_linux::dns::LOG_DNS_PUSHED,
                    dns.iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
        } else {
            let flags = s.control.answer_flags();
            tracing::debug!("client {id} said Hello again; answered with flags {flags:?}");
        }
        for msg in step.send {
            let _ = s.out_tx.try_send(OutboundCmd::Send(msg));
        }
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
                        || (s.control.is_dtun_peer() && s.counters.integrity_limit_reached())
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
        // The sessions' own timers (setup deadline, keepalive), after telling each whether
        // its client was heard since the last tick.
        let mut steps = Vec::new();
        for (id, d) in self.devices.iter_mut() {
            let Some(s) = d.session.as_mut() else {
                continue;
            };
            let seen = s.counters.authenticated();
            if seen != s.seen {
                s.seen = seen;
                s.control.heard(now);
            }
            let step = s.control.timeout(now);
            if !step.events.is_empty() || !step.send.is_empty() {
                steps.push((id.clone(), step));
            }
        }
        for (id, step) in steps {
            self.session_step(&id, step).await;
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
