//! A session's start and end, as the manager sees them: a completed handshake turned into a
//! session (a device made or reused, the address message sent, the outbound task started), a
//! new id turned away at `-max-clients`, and a session ended (farewell, close_notify, its
//! traffic added to the device's totals).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use dtun_proto::consts::CONTENT_APPLICATION_DATA;
use dtun_proto::handshake::Completed;
use dtun_proto::inbound::Counters;
use dtun_proto::proto::{AddressMessage, CloseReason, Control};
use dtun_proto::record;
use dtun_proto::session::server::{Inlet, Path, ServerSession};

use super::Manager;
use crate::pump::{self, Link, OutboundCmd, OutboundEnd};
use crate::server::LOG_CONNECTED;
use crate::server::demux::{DemuxCmd, SessionRx};
use crate::server::session::{Session, SessionError};
use crate::supervise::first_app_sequence;

impl Manager {
    pub(super) async fn start_session(
        &mut self,
        id: &str,
        addr: SocketAddr,
        est: Completed,
    ) -> Result<(), SessionError> {
        if !self.device_for(id, addr, &est).await? {
            return Ok(());
        }
        // One instant for the session's start, its setup deadline and its "last heard".
        let now = Instant::now();
        // A roaming session's connection ID (AES-GCM sessions of a server that rekeys): random,
        // so it tells an on-path observer nothing but which records belong together.
        let cid = self.new_cid(est.suite);
        let mut cfg = self.session_config();
        cfg.cid = cid;
        let control = ServerSession::new(cfg, Some(est.epoch1.clone()), now);
        let Some(dev) = self.devices.get_mut(id) else {
            return Ok(());
        };
        self.next_session += 1;
        let session_id = self.next_session;
        let (mut sealer, mut opener) =
            record::session_pair(est.suite, &est.keys, false, 1, first_app_sequence());
        opener.set_cid(cid);
        let counters = Arc::new(Counters::default());
        // The demultiplexer answers Pings through the outbound task's channel, which must
        // exist before the session can receive anything.
        let (out_tx, out_rx) = pump::outbound_channel();
        let (keys_tx, keys_rx) = pump::keys_channel();
        let (peer_tx, peer_rx) = tokio::sync::watch::channel(addr);
        let _ = self.cmd_tx.send(DemuxCmd::Install {
            addr,
            session: Box::new(SessionRx {
                session_id,
                opener,
                tun: Arc::clone(&dev.tun.dev),
                mss: pump::mss_clamps(dev.tun.mtu),
                counters: Arc::clone(&counters),
                tunnel_ip: dev.pair.client,
                tunnel_ip6: dev.pair6.map(|p| p.client),
                allowed: dev.routes.clone(),
                out_tx: out_tx.clone(),
                keys_tx,
                pending_send: None,
                retire_at: None,
                inlet: Inlet::new(!self.cfg.common.compat, est.final_flight, now),
                cid,
                path: Path::new(addr),
                peer_tx,
            }),
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
            pump::Steer {
                keys: keys_rx,
                peer: Some(peer_rx),
            },
        );
        dev.idle_since = None;
        dev.session = Some(Session {
            session_id,
            addr,
            out_tx,
            out_task,
            counters,
            control,
            seen: 0,
            key_id: est.key_id,
            suite: est.suite,
            started: now,
            rekeyed_at: None,
            moves: 0,
        });
        let peer = dtun_linux::udp::plain(addr);
        tracing::info!(
            "client {id} {LOG_CONNECTED} from {peer} on {} (local {} peer {}, {})",
            dev.tun.name,
            dev.pair.server,
            dev.pair.client,
            est.suite.name()
        );
        Ok(())
    }

    /// A new session's connection ID, when it may roam: an AES-GCM session (the connection
    /// ID record format is GCM only) of a server that rekeys (the client takes the ID into
    /// its next epoch), never with `-compat`. Unique among the live sessions.
    fn new_cid(&self, suite: record::Suite) -> Option<record::Cid> {
        use ring::rand::SecureRandom;
        if suite != record::Suite::Aes128Gcm
            || self.cfg.common.compat
            || self.cfg.common.rekey.is_none()
        {
            return None;
        }
        let rng = ring::rand::SystemRandom::new();
        loop {
            let mut cid = [0u8; dtun_proto::consts::CID_LEN];
            rng.fill(&mut cid).ok()?;
            let taken = self
                .devices
                .values()
                .filter_map(|d| d.session.as_ref())
                .any(|s| s.control.cid() == Some(cid));
            if !taken {
                return Some(cid);
            }
        }
    }

    /// The id's device for a new session from `addr`: its own (the session it had ends and
    /// its MTU follows the new path) or a new one. `false`: refused at `-max-clients`, and told.
    async fn device_for(
        &mut self,
        id: &str,
        addr: SocketAddr,
        est: &Completed,
    ) -> Result<bool, SessionError> {
        self.readdress_if_stale(id, addr).await;
        if !self.devices.contains_key(id) {
            if self.devices.len() >= self.cfg.max_clients && !self.cfg.keys.clients.contains_key(id)
            {
                self.refuse(id, addr, est).await;
                return Ok(false);
            }
            let dev = match self.create_device(id, est.suite, addr).await {
                Ok(dev) => dev,
                Err(e) => {
                    // The client is told why (Close "setup failed", dtun clients only), not
                    // left waiting for an address message that never comes.
                    let why = e.for_the_client();
                    self.turn_away(addr, est, CloseReason::SetupFailed, &why)
                        .await;
                    return Err(e);
                }
            };
            self.devices.insert(id.to_string(), dev);
        } else {
            self.end_replaced(id, addr).await;
            let mtu = self.cfg.tun.mtu_for(est.suite, addr);
            if let Some(dev) = self.devices.get_mut(id) {
                dev.tun.follow_mtu(&self.nl, mtu).await?;
            }
        }
        Ok(true)
    }

    /// Turns away a new id at the `-max-clients` limit, before it gets a device or runs a
    /// script: Close "refused", then close_notify.
    async fn refuse(&mut self, id: &str, addr: SocketAddr, est: &Completed) {
        self.refusals.count += 1;
        if self.refusals.log.allow() {
            let peer = dtun_linux::udp::plain(addr);
            tracing::warn!(
                "client {id} from {peer} refused: {} devices, the -max-clients limit ({} refused so far; ids in -clients still get in)",
                self.devices.len(),
                self.refusals.count
            );
        }
        let detail = format!("-max-clients {}", self.cfg.max_clients);
        self.turn_away(addr, est, CloseReason::Refused, &detail)
            .await;
    }

    /// Turns away a completed handshake whose key is no longer the id's (a reload changed or
    /// removed it while the handshake waited for the manager): Close "revoked", close_notify.
    pub(super) async fn refuse_revoked(&mut self, id: &str, addr: SocketAddr, est: &Completed) {
        let now = match self.cfg.keys.key_for(id.as_bytes()) {
            Some(_) => "its key changed",
            None => "its credentials were removed",
        };
        let peer = dtun_linux::udp::plain(addr);
        tracing::warn!(
            "client {id} from {peer} refused: its handshake completed with a key that is no longer its key ({now}, reload)",
        );
        self.turn_away(addr, est, CloseReason::Revoked, "reload")
            .await;
    }

    /// Ends a completed handshake without a session: Close `reason` to a dtun client (only
    /// dtun clients offer AES-128-GCM, and they read it where the address message would be),
    /// then close_notify.
    async fn turn_away(
        &mut self,
        addr: SocketAddr,
        est: &Completed,
        reason: CloseReason,
        detail: &str,
    ) {
        let (mut sealer, _) =
            record::session_pair(est.suite, &est.keys, false, 1, first_app_sequence());
        let link = Link {
            udp: self.udp.clone(),
            peer: addr,
            connected: false,
        };
        if est.suite == record::Suite::Aes128Gcm && !self.cfg.common.compat {
            let close = Control::Close {
                reason,
                detail: detail.to_string(),
            };
            let _ = link
                .send_record(&mut sealer, CONTENT_APPLICATION_DATA, &close.to_bytes())
                .await;
        }
        let _ = link.send_close_notify(&mut sealer).await;
    }

    /// Ends the id's session, if any; the device stays for `-linger`. `reason`: say so and
    /// send close_notify (None: the peer already closed).
    pub(in crate::server) async fn end_session(
        &mut self,
        id: &str,
        reason: Option<CloseReason>,
        why: &str,
    ) {
        self.end_session_because(id, reason, "", why).await
    }

    /// Ends the id's session because a new one of the id came from `addr` (Close "replaced").
    pub(in crate::server) async fn end_replaced(&mut self, id: &str, addr: SocketAddr) {
        let addr = dtun_linux::udp::plain(addr);
        let why = format!("replaced by a new session from {addr}");
        self.end_session_because(id, Some(CloseReason::Replaced), &addr.to_string(), &why)
            .await;
    }

    pub(in crate::server) async fn end_session_because(
        &mut self,
        id: &str,
        reason: Option<CloseReason>,
        detail: &str,
        why: &str,
    ) {
        let Some(dev) = self.devices.get_mut(id) else {
            return;
        };
        let Some(mut s) = dev.session.take() else {
            return;
        };
        let _ = self.cmd_tx.send(DemuxCmd::Remove {
            session_id: s.session_id,
        });
        let farewell = reason.and_then(|reason| s.control.farewell(reason, detail));
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
            dtun_linux::udp::plain(s.addr),
            s.counters.summary()
        );
    }
}
