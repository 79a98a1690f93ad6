//! The forwarding loop of a live session: inbound records to the TUN in batches (the data
//! path: `Inbox`, no per-packet allocation), control records, alerts and the timer to the
//! session's state machine ([`ClientSession`]), whose records go out through the outbound
//! task (`pump`), which holds the sealer; and the path MTU.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use dtun_linux::rate_limit::RateLimit;
use dtun_linux::tun::{Tun, TunWriter};
use dtun_linux::udp::{Receiver, Udp};
use dtun_proto::consts::{CONTENT_ALERT, CONTENT_APPLICATION_DATA};
use dtun_proto::inbound;
use dtun_proto::inbound::{Counters, Inbound, Inbox};
use dtun_proto::proto::{CloseReason, Control};
use dtun_proto::record::{Opener, Sealer};
use dtun_proto::session::{ClientSession, Event, Step};

use super::sink::{PathMss, Sink};
use super::wire::{end_error, now, take_dns};
use super::{ClientError, PATH_MTU_EVERY};
use crate::pump::{self, Link, OutboundCmd};
use crate::supervise::TaskEnded;

/// Records the session wants sealed: (content type, plaintext).
type Records = Vec<(u8, Vec<u8>)>;

/// A live session: its state machine, the data path's read key, the outbound task.
pub(super) struct Live<'a> {
    pub(super) tun: &'a Tun,
    pub(super) udp: &'a Udp,
    pub(super) link: &'a Link,
    /// Our -id (for the error when another client takes it).
    pub(super) id: &'a str,
    pub(super) dns: &'a dtun_linux::dns::Dns,
    pub(super) session: ClientSession,
    pub(super) opener: Opener,
    pub(super) counters: Arc<Counters>,
    pub(super) out_tx: mpsc::Sender<OutboundCmd>,
    pub(super) out_task: pump::OutboundTask,
    /// The outbound task's next write keys (a rekey), and what status shows of rekeying.
    pub(super) keys_tx: pump::KeysTx,
    pub(super) rekey: Arc<crate::ops::RekeyCell>,
    pub(super) path: PathMss,
    /// A roaming session's watch of our own address and routes.
    pub(super) roam: Option<super::roam::Roam>,
}

/// Where the session's records and events go while it is live.
struct Out<'a> {
    out_tx: &'a mpsc::Sender<OutboundCmd>,
    keys_tx: &'a pump::KeysTx,
    rekey: &'a crate::ops::RekeyCell,
    dns: &'a dtun_linux::dns::Dns,
    counters: &'a Counters,
    link: &'a Link,
    id: &'a str,
}

impl Out<'_> {
    /// Does what a step says; returns the end of the session (why, and its farewell records)
    /// if the step ended it.
    fn route(
        &self,
        step: Step,
        log_limit: &mut RateLimit,
        opener: &mut Opener,
    ) -> Option<(ClientError, Records)> {
        let mut end = None;
        for e in step.events {
            match e {
                // A rekey: read the new epoch now (and the old one until the next rekey);
                // the outbound task seals in it from its next batch.
                Event::Rekeyed { epoch, keys, cid } => {
                    dtun_proto::record::rekey_opener(opener, &keys, true, epoch);
                    let send = pump::SendKeys {
                        epoch,
                        keys,
                        is_client: true,
                        cid,
                    };
                    let _ = self.keys_tx.send(Some(Arc::new(send)));
                    self.rekey.rekeyed(epoch);
                    tracing::debug!("rekeyed: epoch {epoch}");
                }
                Event::RetirePrevious => opener.retire_previous(),
                Event::Dns(servers) => take_dns(&servers, self.counters, self.dns),
                Event::Checking(grace) if log_limit.allow() => {
                    tracing::info!(
                        "ICMP port unreachable from {}: checking that the server is still there (the session ends if nothing comes within {grace:?})",
                        self.link.peer
                    );
                }
                Event::Closed(why) => end = Some(end_error(why, self.link.peer, self.id, true)),
                _ => {}
            }
        }
        if let Some(error) = end {
            return Some((error, step.seal));
        }
        for (content, msg) in step.seal {
            if content == CONTENT_APPLICATION_DATA {
                let _ = self.out_tx.try_send(OutboundCmd::Send(msg));
            }
        }
        None
    }
}

impl Live<'_> {
    /// Forwards server → TUN (the other way is the outbound task) until the session ends,
    /// then says farewell as the session asks. Returns None on shutdown, else why it ended.
    pub(super) async fn forward(
        &mut self,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<ClientError> {
        let Live {
            tun,
            udp,
            link,
            id,
            dns,
            session,
            opener,
            counters,
            out_tx,
            out_task,
            keys_tx,
            rekey,
            path,
            roam,
        } = self;
        let (tun, udp, link, dns): (&Tun, &Udp, &Link, &dtun_linux::dns::Dns) =
            (tun, udp, link, dns);
        let out = Out {
            out_tx,
            keys_tx,
            rekey,
            dns,
            counters,
            link,
            id,
        };
        let mut rx = Receiver::default();
        let mut inbox = Inbox::default();
        let mut sink = Sink {
            dev: &tun.dev,
            writer: TunWriter::default(),
            mss: path.clamp.get(),
        };
        let controls = session.negotiated();
        let mut log_limit = RateLimit::new(5);
        // ICMP errors the batched socket noted: looked at every quarter keepalive period (and
        // with the path MTU).
        let keepalive = session.keepalive();
        let tick_every = keepalive.map_or(Duration::from_secs(3600), |k| k / 4);
        let mut tick = tokio::time::interval(tick_every.max(Duration::from_millis(50)));
        let mut pmtu_tick = tokio::time::interval(PATH_MTU_EVERY);
        pmtu_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The outbound task's sealer, if the task ended by itself (sequence numbers used up).
        let mut ended: Option<Sealer> = None;
        // The session's timer: one Sleep, moved only when the session's deadline moves (not
        // made anew per receive batch).
        let mut timer = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
        let mut armed = None;
        // Records sent at the last look: sending also counts as traffic for rekeying.
        let mut sent = counters
            .tx_packets
            .load(std::sync::atomic::Ordering::Relaxed);
        let (error, farewell) = loop {
            // The outbound task's key is three quarters through a usage limit.
            if counters.take_rekey_wanted() {
                session.rekey_soon();
            }
            let want = session.next_timeout();
            if want != armed {
                armed = want;
                if let Some(t) = want {
                    timer.as_mut().reset(Instant::from_std(t));
                }
            }
            tokio::select! {
                _ = shutdown.as_mut() => {
                    break (None, session.close(now(), Some(CloseReason::Shutdown)).seal);
                }
                // The outbound task ends by itself only when its sequence numbers run out.
                r = &mut *out_task => match r {
                    Ok((sealer, _)) => {
                        ended = Some(sealer);
                        let step = session.close(now(), Some(CloseReason::Exhausted));
                        break (Some(ClientError::Exhausted), step.seal);
                    }
                    Err(e) => {
                        return Some(TaskEnded::from_join("outbound task", Err::<(), _>(e)).into());
                    }
                },
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    if let Some((e, f)) = out.route(session.timeout(now()), &mut log_limit, opener) {
                        break (Some(e), f);
                    }
                }
                event = roamed(roam) => {
                    let Some(r) = roam.as_mut() else { continue };
                    let tell = match r.follow(udp, link.peer, event, std::time::Instant::now()).await {
                        super::roam::Change::Nothing => false,
                        super::roam::Change::Tell => true,
                        super::roam::Change::Rebound(local) => {
                            rekey.rebound();
                            tracing::info!("our path to {} changed: rebound to {local}", link.peer);
                            true
                        }
                    };
                    if tell
                        && let Some((e, f)) = out.route(session.path_changed(now()), &mut log_limit, opener)
                    {
                        break (Some(e), f);
                    }
                }
                _ = pmtu_tick.tick() => {
                    path.refresh(&udp.sock);
                    dns.tick();
                    let tx = counters.tx_packets.load(std::sync::atomic::Ordering::Relaxed);
                    if tx != sent {
                        sent = tx;
                        session.traffic(now());
                    }
                    if udp.take_refused()
                        && let Some((e, f)) = out.route(session.unreachable(now()), &mut log_limit, opener)
                    {
                        break (Some(e), f);
                    }
                }
                _ = tick.tick(), if keepalive.is_some() => {
                    if udp.take_refused()
                        && let Some((e, f)) = out.route(session.unreachable(now()), &mut log_limit, opener)
                    {
                        break (Some(e), f);
                    }
                }
                r = rx.recv(udp) => {
                    let n = match r {
                        Ok(n) => n,
                        // ICMP port unreachable: the server may be gone, or someone spoofs it.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            if let Some((e, f)) = out.route(session.unreachable(now()), &mut log_limit, opener) {
                                break (Some(e), f);
                            }
                            continue;
                        }
                        Err(e) => {
                            if log_limit.allow() {
                                tracing::debug!("recv from {}: {e}", link.peer);
                            }
                            continue;
                        }
                    };
                    sink.mss = path.clamp.get();
                    let mut end = None;
                    for i in 0..n {
                        let (_, stride, buf) = rx.buffer(i);
                        let mut batch = Batch { session, opener, out: &out, sink: &mut sink, inbox: &mut inbox, log_limit: &mut log_limit };
                        end = batch.inbound(buf, stride, controls).await;
                        if end.is_some() {
                            break;
                        }
                    }
                    sink.flush().await;
                    if let Some((e, f)) = end {
                        break (Some(e), f);
                    }
                }
            }
        };
        farewell_of(link, out_tx, out_task, ended, farewell).await;
        error
    }
}

/// The next change of a roaming session's path, or time to look at it (never, for one that
/// does not roam): whether an event came.
async fn roamed(roam: &mut Option<super::roam::Roam>) -> bool {
    match roam {
        Some(r) => r.changed().await,
        None => std::future::pending().await,
    }
}

/// The farewell: what the session said at its end (a Close, close_notify), through the
/// outbound task, or from here if the task is gone (`ended`: in the reserve it left).
async fn farewell_of(
    link: &Link,
    out_tx: &mpsc::Sender<OutboundCmd>,
    out_task: &mut pump::OutboundTask,
    ended: Option<Sealer>,
    farewell: Records,
) {
    if let Some(mut sealer) = ended {
        for (content, msg) in &farewell {
            let _ = link.send_record(&mut sealer, *content, msg).await;
        }
        return;
    }
    let notify = farewell.iter().any(|(c, _)| *c == CONTENT_ALERT);
    let farewell = farewell
        .into_iter()
        .find(|(c, _)| *c == CONTENT_APPLICATION_DATA)
        .map(|(_, m)| m);
    let _ = out_tx.send(OutboundCmd::Stop { notify, farewell }).await;
    let _ = out_task.await;
}

/// One receive buffer of a live session.
struct Batch<'a, 's> {
    session: &'a mut ClientSession,
    opener: &'a mut Opener,
    out: &'a Out<'a>,
    sink: &'a mut Sink<'s>,
    inbox: &'a mut Inbox,
    log_limit: &'a mut RateLimit,
}

impl Batch<'_, '_> {
    /// Opens the records of one receive buffer (its datagrams, `stride` bytes each) in one
    /// pass: packets go to the TUN, control records and alerts to the session. Returns the
    /// end of the session if a record (or the read key's integrity limit) ended it.
    async fn inbound(
        &mut self,
        buf: &mut [u8],
        stride: usize,
        controls: bool,
    ) -> Option<(ClientError, Records)> {
        // Other content types are late handshake retransmissions: the handshake is done with
        // them.
        let records = self
            .inbox
            .open(self.opener, self.out.counters, buf, stride, |ct| {
                ct == CONTENT_APPLICATION_DATA || ct == CONTENT_ALERT
            });
        // The read key's integrity limit: a dtun server handshakes again; with an original the
        // session goes on (docs/PROTOCOL.md, AEAD usage limits).
        if controls && self.out.counters.integrity_limit_reached() {
            let step = self.session.close(now(), Some(CloseReason::Exhausted));
            return Some((ClientError::Exhausted, step.seal));
        }
        let mut authenticated = false;
        let mut end = None;
        for record in records {
            match record {
                Inbound::Data(r) => {
                    authenticated = true;
                    let data = &mut buf[r.clone()];
                    if controls && Control::is_control(data) {
                        let step = self.session.control(now(), data);
                        end = self.out.route(step, self.log_limit, self.opener);
                    } else if inbound::accept_packet(self.out.counters, data) {
                        crate::supervise::fault_point(crate::supervise::Site::Client, data);
                        self.sink.push(data).await;
                    } else if self.log_limit.allow() {
                        tracing::debug!("drop reason=not_ip");
                    }
                }
                Inbound::Alert(level, desc) => {
                    authenticated = true;
                    let step = self.session.alert(now(), *level, *desc);
                    end = self.out.route(step, self.log_limit, self.opener);
                }
                Inbound::Dropped(d) => {
                    if self.log_limit.allow() {
                        tracing::debug!("drop reason={}", d.as_str());
                    }
                }
            }
            if end.is_some() {
                break;
            }
        }
        if authenticated {
            self.session.heard(now());
        }
        end
    }
}
