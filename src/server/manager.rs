//! The manager: the pool, the sessions' lifecycles (start, replace, keepalive, close, sequence
//! exhaustion) and the timers (control path side); a device's own plumbing is in `device`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::LOG_CONNECTED;
use super::demux::{DemuxCmd, SessionRx};
use crate::config::ServerConfig;
use crate::consts::{CONTENT_APPLICATION_DATA, KEEPALIVE_MISSES, SETUP_TIMEOUT};
use crate::handshake::Completed;
use crate::netlink::{Netlink, NetlinkError};
use crate::pool::{Pool, PoolError};
use crate::proto::{AddressMessage, CONTROL_VERSION, CloseReason, Control, Peernet, ProtoError};
use crate::pump::{self, Counters, Link, OutboundCmd, OutboundEnd};
use crate::record;
use crate::supervise::first_app_sequence;
use crate::tun::TunError;
use crate::udp::Udp;

use super::device::Device;

// ---------------------------------------------------------------------------------------------
// Manager (control path side)

/// Handshake tasks and the demultiplexer → manager.
pub(super) enum Event {
    Authenticated {
        addr: SocketAddr,
        est: Box<Completed>,
    },
    Peernet {
        session_id: u64,
        peernet: Result<Peernet, ProtoError>,
    },
    Closed {
        session_id: u64,
        level: u8,
        desc: u8,
    },
    Control {
        session_id: u64,
        msg: Control,
    },
    /// The client's peernet message was lost (something else came first).
    SetupLost {
        session_id: u64,
    },
}

pub(super) struct Session {
    pub(super) session_id: u64,
    pub(super) addr: SocketAddr,
    out_tx: mpsc::Sender<OutboundCmd>,
    out_task: pump::OutboundTask,
    pub(super) counters: Arc<Counters>,
    /// Deadline for the client's peernet message.
    setup_deadline: Option<Instant>,
    /// The client said Hello: it is a dtun peer and may get control messages.
    pub(super) negotiated: bool,
    /// The client's keepalive period (zero: none); it pings, we answer.
    pub(super) keepalive: Duration,
    /// Authenticated records seen at the last check, and when that count last moved.
    seen: u64,
    pub(super) alive_at: Instant,
    /// The session's suite and when its handshake completed (for status).
    pub(super) suite: record::Suite,
    pub(super) started: Instant,
}

pub(super) struct Manager {
    pub(super) cfg: ServerConfig,
    pub(super) nl: Netlink,
    pub(super) udp: Udp,
    pub(super) pool: Pool,
    pub(super) pool6: Option<crate::pool6::Pool6>,
    pub(super) cmd_tx: mpsc::UnboundedSender<DemuxCmd>,
    pub(super) devices: HashMap<String, Device>,
    pub(super) next_session: u64,
    pub(super) refusals: Refusals,
    /// Down scripts (each after its device's up script) still running; awaited at shutdown.
    pub(super) scripts: Vec<JoinHandle<()>>,
    /// A task the server needs ended (an outbound task panicked without the exiting panic
    /// hook): the manager stops and the server exits.
    pub(super) fatal: Option<crate::supervise::TaskEnded>,
    /// For status and metrics: the demultiplexer's counters, removed devices' traffic added
    /// up, and the requests for a snapshot (`crate::ops`).
    pub(super) counters: Arc<super::DemuxCounters>,
    pub(super) removed: crate::ops::status::Traffic,
    pub(super) status_rx: Option<mpsc::Receiver<crate::ops::ServerRequest>>,
    /// The key store the handshakes look keys up in; a reload replaces it (`reconfigure`).
    pub(super) keys: Arc<std::sync::RwLock<crate::keys::KeyStore>>,
    /// Ids whose fixed address a reload changed while they had a device: a new device at
    /// their next connect.
    pub(super) stale_addr: std::collections::HashSet<String>,
    /// The nftables table (`-nat`, `-client-to-client`, groups): its sets follow the devices.
    pub(super) firewall: Option<crate::nft::Firewall>,
}

/// Clients refused at the `-max-clients` limit: counted, and logged at most once a second.
pub(super) struct Refusals {
    log: pump::RateLimit,
    pub(super) count: u64,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            log: pump::RateLimit::new(1),
            count: 0,
        }
    }
}

impl Manager {
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
                let Some(id) = crate::keys::valid_identity(&est.identity).map(String::from) else {
                    tracing::warn!(
                        "client from {addr}: refused invalid id \"{}\"",
                        est.identity.escape_ascii()
                    );
                    return;
                };
                if let Err(e) = self.start_session(&id, addr, *est).await {
                    tracing::error!("client {id} from {addr}: cannot set up its tunnel: {e}");
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

    async fn start_session(
        &mut self,
        id: &str,
        addr: SocketAddr,
        est: Completed,
    ) -> Result<(), SessionError> {
        self.readdress_if_stale(id, addr).await;
        if !self.devices.contains_key(id) {
            if self.devices.len() >= self.cfg.max_clients && !self.cfg.keys.clients.contains_key(id)
            {
                self.refuse(id, addr, &est).await;
                return Ok(());
            }
            let dev = self.create_device(id, est.suite, addr).await?;
            self.devices.insert(id.to_string(), dev);
        } else {
            self.end_session_because(
                id,
                Some(CloseReason::Replaced),
                &addr.to_string(),
                &format!("replaced by a new session from {addr}"),
            )
            .await;
            let mtu = self.cfg.tun.mtu_for(est.suite, addr);
            if let Some(dev) = self.devices.get_mut(id) {
                dev.tun.follow_mtu(&self.nl, mtu).await?;
            }
        }
        let Some(dev) = self.devices.get_mut(id) else {
            return Ok(());
        };
        self.next_session += 1;
        let session_id = self.next_session;
        let (mut sealer, opener) =
            record::session_pair(est.suite, &est.keys, false, 1, first_app_sequence());
        let counters = Arc::new(Counters::default());
        // The demultiplexer answers Pings through the outbound task's channel, which must
        // exist before the session can receive anything.
        let (out_tx, out_rx) = pump::outbound_channel();
        let _ = self.cmd_tx.send(DemuxCmd::Install {
            addr,
            session: SessionRx {
                session_id,
                opener,
                tun: Arc::clone(&dev.tun.dev),
                mss: pump::mss_clamps(dev.tun.mtu),
                counters: Arc::clone(&counters),
                awaiting_peernet: true,
                tunnel_ip: dev.pair.client,
                tunnel_ip6: dev.pair6.map(|p| p.client),
                allowed: dev.routes.clone(),
                controls: !self.cfg.common.compat,
                final_flight: est.final_flight,
                resent_at: None,
                out_tx: out_tx.clone(),
                pinged: false,
            },
        });
        let link = Link {
            udp: self.udp.clone(),
            peer: addr,
            connected: false,
        };
        let msg = AddressMessage {
            client: dev.pair.client,
            server: dev.pair.server,
        };
        link.send_record(&mut sealer, CONTENT_APPLICATION_DATA, &msg.to_bytes())
            .await
            .map_err(|e| SessionError::Send(addr, e))?;
        let out_task = pump::spawn_outbound_on(
            out_rx,
            Arc::clone(&dev.tun.dev),
            pump::MssClamp::new(dev.tun.mtu),
            link,
            sealer,
            Arc::clone(&counters),
        );
        dev.idle_since = None;
        dev.session = Some(Session {
            session_id,
            addr,
            out_tx,
            out_task,
            counters,
            setup_deadline: Some(Instant::now() + SETUP_TIMEOUT),
            negotiated: false,
            keepalive: Duration::ZERO,
            seen: 0,
            alive_at: Instant::now(),
            suite: est.suite,
            started: Instant::now(),
        });
        tracing::info!(
            "client {id} {LOG_CONNECTED} from {addr} on {} (local {} peer {}, {})",
            dev.tun.name,
            dev.pair.server,
            dev.pair.client,
            est.suite.name()
        );
        Ok(())
    }

    /// Turns away a new id at the `-max-clients` limit, before it gets a device or runs a
    /// script: Close "refused" to a dtun client (only dtun clients offer AES-128-GCM, and they
    /// read it where the address message would be), then close_notify.
    async fn refuse(&mut self, id: &str, addr: SocketAddr, est: &Completed) {
        self.refusals.count += 1;
        if self.refusals.log.allow() {
            tracing::warn!(
                "client {id} from {addr} refused: {} devices, the -max-clients limit ({} refused so far; ids in -clients still get in)",
                self.devices.len(),
                self.refusals.count
            );
        }
        let (mut sealer, _) =
            record::session_pair(est.suite, &est.keys, false, 1, first_app_sequence());
        let link = Link {
            udp: self.udp.clone(),
            peer: addr,
            connected: false,
        };
        if est.suite == record::Suite::Aes128Gcm && !self.cfg.common.compat {
            let close = Control::Close {
                reason: CloseReason::Refused,
                detail: format!("-max-clients {}", self.cfg.max_clients),
            };
            let _ = link
                .send_record(&mut sealer, CONTENT_APPLICATION_DATA, &close.to_bytes())
                .await;
        }
        let _ = link.send_close_notify(&mut sealer).await;
    }

    /// Answers a dtun client's control message.
    async fn control(&mut self, id: &str, msg: Control) {
        // The device's IPv6 pair, told to a client that says Hello, before the Hello answer:
        // once a client has that answer it knows whether IPv6 comes (src/client/addr6.rs).
        let addr6 = self
            .devices
            .get(id)
            .and_then(|d| d.pair6)
            .zip(self.pool6.as_ref())
            .map(|(pair6, pool6)| Control::Addr6(pool6.message(pair6)));
        let Some(s) = self.devices.get_mut(id).and_then(|d| d.session.as_mut()) else {
            return;
        };
        let reply = match msg {
            Control::Hello { keepalive_ms, .. } => {
                s.negotiated = true;
                s.keepalive = Duration::from_millis(u64::from(keepalive_ms));
                let ours = u32::try_from(self.cfg.common.keepalive.as_millis()).unwrap_or(u32::MAX);
                tracing::debug!("client {id} is a dtun peer (keepalive {:?})", s.keepalive);
                Some(Control::Hello {
                    version: CONTROL_VERSION,
                    keepalive_ms: ours,
                })
            }
            // Only a dtun client pings: a lost Hello must not leave it unanswered. The
            // demultiplexer answers every Ping and passes on only the first.
            Control::Ping if !self.cfg.common.compat => {
                if !s.negotiated {
                    s.negotiated = true;
                    s.keepalive = self.cfg.common.keepalive;
                }
                None
            }
            Control::Close { reason, detail } => {
                tracing::debug!("client {id} is closing: {reason:?} {detail:?}");
                None
            }
            Control::Lans(lans) => {
                self.add_lans(id, lans).await;
                return;
            }
            _ => None,
        };
        // Our -dns right after the Hello answer: only a client that said Hello gets it.
        let dns = matches!(reply, Some(Control::Hello { .. })) && !self.cfg.dns.is_empty();
        if let Some(r) = reply {
            if let (Control::Hello { .. }, Some(addr6)) = (&r, addr6) {
                if let Control::Addr6(a) = &addr6 {
                    tracing::info!(
                        "client {id}: IPv6 inside, local {} peer {}",
                        a.server,
                        a.client
                    );
                }
                let _ = s.out_tx.try_send(OutboundCmd::Send(addr6.to_bytes()));
            }
            let _ = s.out_tx.try_send(OutboundCmd::Send(r.to_bytes()));
        }
        if dns {
            let servers = &self.cfg.dns;
            tracing::info!(
                "client {id}: {} {}",
                crate::dns::LOG_DNS_PUSHED,
                servers
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let msg = Control::Dns(servers.clone()).to_bytes();
            let _ = s.out_tx.try_send(OutboundCmd::Send(msg));
        }
    }

    /// Ends the id's session, if any; the device stays for `-linger`. `reason`: say so and
    /// send close_notify (None: the peer already closed).
    pub(super) async fn end_session(&mut self, id: &str, reason: Option<CloseReason>, why: &str) {
        self.end_session_because(id, reason, "", why).await
    }

    pub(super) async fn end_session_because(
        &mut self,
        id: &str,
        reason: Option<CloseReason>,
        detail: &str,
        why: &str,
    ) {
        let Some(dev) = self.devices.get_mut(id) else {
            return;
        };
        let Some(s) = dev.session.take() else { return };
        let _ = self.cmd_tx.send(DemuxCmd::Remove {
            addr: s.addr,
            session_id: s.session_id,
        });
        let farewell = reason.filter(|_| s.negotiated).map(|reason| {
            Control::Close {
                reason,
                detail: detail.to_string(),
            }
            .to_bytes()
        });
        let stop = OutboundCmd::Stop {
            notify: reason.is_some(),
            farewell: farewell.clone(),
        };
        let _ = s.out_tx.send(stop).await;
        match s.out_task.await {
            // The task ended by itself (its sequence numbers are nearly used up) before it
            // could take the stop: the farewell goes from here, in the reserve it left.
            Ok((mut sealer, OutboundEnd::Exhausted)) if reason.is_some() => {
                let link = Link {
                    udp: self.udp.clone(),
                    peer: s.addr,
                    connected: false,
                };
                if let Some(msg) = farewell {
                    let _ = link
                        .send_record(&mut sealer, CONTENT_APPLICATION_DATA, &msg)
                        .await;
                }
                let _ = link.send_close_notify(&mut sealer).await;
            }
            Ok(_) => {}
            Err(e) => {
                let e = crate::supervise::TaskEnded::from_join("outbound task", Err::<(), _>(e));
                tracing::error!("client {id}: {e}");
                self.fatal = Some(e);
            }
        }
        dev.idle_since = Some(Instant::now());
        dev.past.add(&crate::ops::status::Traffic::of(&s.counters));
        tracing::info!(
            "client {id} from {} disconnected: {why} ({})",
            s.addr,
            s.counters.summary()
        );
    }

    async fn timers(&mut self) {
        let now = Instant::now();
        // An outbound task ends by itself only when its sequence numbers are nearly used up.
        let exhausted: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| d.session.as_ref().is_some_and(|s| s.out_task.is_finished()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in exhausted {
            self.end_session(
                &id,
                Some(CloseReason::Exhausted),
                "its record sequence numbers are nearly used up: the client must reconnect for fresh keys",
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

#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Tun(#[from] TunError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("sending to {0} failed: {1}")]
    Send(SocketAddr, std::io::Error),
    #[error(transparent)]
    Firewall(#[from] crate::nft::NftError),
}
