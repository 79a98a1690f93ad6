//! One session's records in the demultiplexer, as its inlet (`dtun_proto::session::server`)
//! sorts them: data to its TUN (after the source check and the MSS clamp), the peernet message
//! and alerts to the manager, control records (Pings answered here, so a ping flood never
//! reaches the manager; the others within a per-session budget, so one client's flood of
//! Hellos cannot fill the queue all sessions' events share); session events go to the manager
//! on a bounded queue, a full one is a counted drop.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tokio::sync::mpsc;

use dtun_proto::authz;
use dtun_proto::inbound;
use dtun_proto::inbound::{Counters, Inbound};
use dtun_proto::proto::Control;
use dtun_proto::session::server::{ControlVerdict, Inlet, Path, Record};

use super::{Delivery, Demux, DemuxCounters, SessionRx};
use crate::pump::OutboundCmd;
use crate::server::events::Event;

/// What a session's control record may touch: its outbound queue (Pongs), its counters, and
/// the manager's event queue.
struct SessionControl<'a> {
    session_id: u64,
    out_tx: &'a mpsc::Sender<OutboundCmd>,
    counters: &'a Counters,
    events: &'a mpsc::Sender<Event>,
    demux: &'a DemuxCounters,
}

impl SessionControl<'_> {
    /// One control record, as the session's inlet says: a Ping is answered here, so a ping
    /// flood never reaches the manager (only the first goes on: it makes the client a dtun
    /// peer); other messages go to the manager within the session's budget; the rest are
    /// counted drops; a path response from `from` may move the session there (returned;
    /// `newest`: the session's newest record, this one or after it).
    fn record(
        &self,
        data: &[u8],
        inlet: &mut Inlet,
        path: &mut Path,
        (from, newest): (SocketAddr, u64),
    ) -> Option<SocketAddr> {
        let now = Instant::now();
        match inlet.control(now, data) {
            ControlVerdict::Pong { first } => {
                // A full queue: the peer pings faster than we send; UDP would lose it too.
                let _ = self
                    .out_tx
                    .try_send(OutboundCmd::Send(Control::Pong.to_bytes()));
                if first {
                    self.report(Control::Ping);
                }
            }
            ControlVerdict::PathResponse(token) => {
                return path.response(now, from, token, newest);
            }
            ControlVerdict::Pass(msg) => self.report(msg),
            ControlVerdict::Drop(kind) => self.counters.count_drop(kind),
        }
        None
    }

    fn report(&self, msg: Control) {
        let ev = Event::Control {
            session_id: self.session_id,
            msg,
        };
        report(self.events, self.demux, ev);
    }
}

/// Queues a session event for the manager without ever waiting: a full queue (the manager is
/// behind, or a peer floods) drops it and counts the drop.
fn report(events: &mpsc::Sender<Event>, counters: &DemuxCounters, ev: Event) {
    if events.try_send(ev).is_err() {
        counters.events_dropped.fetch_add(1, Relaxed);
    }
}

impl Demux {
    /// The records of a session's datagrams (`stride` bytes each) from `addr`, opened
    /// together. Returns where the session moves, if a path response from `addr` proved
    /// the client is there now.
    pub(super) async fn session_records(
        s: &mut SessionRx,
        buf: &mut [u8],
        stride: usize,
        addr: SocketAddr,
        out: &mut Delivery,
    ) -> Option<SocketAddr> {
        let mut moved = None;
        let records = out
            .inbox
            .open(&mut s.opener, &s.counters, buf, stride, |_| true);
        let newest = s.opener.newest();
        let (events, dc) = (&out.events, &*out.counters);
        let (log_limit, tun_batch) = (&mut out.log_limit, &mut out.tun_batch);
        for record in records {
            match record {
                Inbound::Data(r) => match s.inlet.record(&buf[r.clone()]) {
                    Record::Peernet(peernet) => {
                        let ev = Event::Peernet {
                            session_id: s.session_id,
                            peernet,
                        };
                        report(events, dc, ev);
                    }
                    Record::SetupLost => {
                        let ev = Event::SetupLost {
                            session_id: s.session_id,
                        };
                        report(events, dc, ev);
                    }
                    Record::Control => {
                        let sc = SessionControl {
                            session_id: s.session_id,
                            out_tx: &s.out_tx,
                            counters: &s.counters,
                            events,
                            demux: dc,
                        };
                        if let Some(to) =
                            sc.record(&buf[r.clone()], &mut s.inlet, &mut s.path, (addr, newest))
                        {
                            moved = Some(to);
                        }
                    }
                    Record::Packet if !inbound::is_ip(&buf[r.clone()]) => {
                        s.counters.count_drop(inbound::DropKind::NotIp);
                        if log_limit.allow() {
                            tracing::debug!("drop reason=not_ip from {addr}");
                        }
                    }
                    Record::Packet
                        if !authz::source_allowed(
                            &buf[r.clone()],
                            s.tunnel_ip,
                            s.tunnel_ip6,
                            &s.allowed,
                        ) =>
                    {
                        s.counters.count_drop(inbound::DropKind::ForgedSource);
                        if log_limit.allow() {
                            tracing::debug!("drop reason=forged_source from {addr}");
                        }
                    }
                    Record::Packet => {
                        s.counters.count_rx(r.len());
                        let packet = &mut buf[r.clone()];
                        crate::supervise::fault_point(crate::supervise::Site::Demux, packet);
                        dtun_proto::mss::clamp(packet, s.mss.0, s.mss.1);
                        tun_batch.push(&s.tun, packet).await;
                    }
                },
                Inbound::Alert(level, desc) => {
                    let ev = Event::Closed {
                        session_id: s.session_id,
                        level: *level,
                        desc: *desc,
                    };
                    report(events, dc, ev);
                }
                Inbound::Dropped(d) => {
                    if log_limit.allow() {
                        tracing::debug!("drop reason={} from {addr}", d.as_str());
                    }
                }
            }
        }
        // After a rekey: the client's first record of the new epoch shows it has the keys;
        // from now on we send in it too.
        if let Some(next) = s
            .pending_send
            .take_if(|k| s.opener.epoch() == k.epoch && s.opener.has_opened())
        {
            let _ = s.keys_tx.send(Some(next));
            s.retire_at = Some(Instant::now() + dtun_proto::rekey::exchange::EPOCH_OVERLAP);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtun_proto::consts::EVENT_QUEUE;

    /// One control record from the session's own address.
    fn record(sc: &SessionControl<'_>, data: &[u8], inlet: &mut Inlet) {
        let here: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let moved = sc.record(data, inlet, &mut Path::new(here), (here, 0));
        assert_eq!(moved, None);
    }

    /// What a session's control records reach: its outbound queue, the manager's event queue
    /// and the counters (the receivers are returned apart, for the test to drain).
    struct Rig {
        out_tx: mpsc::Sender<OutboundCmd>,
        events: mpsc::Sender<Event>,
        counters: Counters,
        demux: DemuxCounters,
    }

    impl Rig {
        fn new() -> (Rig, mpsc::Receiver<OutboundCmd>, mpsc::Receiver<Event>) {
            let (out_tx, out_rx) = crate::pump::outbound_channel();
            let (events, ev_rx) = mpsc::channel(EVENT_QUEUE);
            let rig = Rig {
                out_tx,
                events,
                counters: Counters::default(),
                demux: DemuxCounters::default(),
            };
            (rig, out_rx, ev_rx)
        }

        fn control(&self, session_id: u64) -> SessionControl<'_> {
            SessionControl {
                session_id,
                out_tx: &self.out_tx,
                counters: &self.counters,
                events: &self.events,
                demux: &self.demux,
            }
        }
    }

    /// A ping flood is answered in the demultiplexer: one event reaches the manager, the
    /// Pongs queue on the session's (bounded) outbound channel; unknown control types and
    /// malformed control records are counted drops; an unknown Close reason is still a Close.
    #[test]
    fn pings_answered_here_and_unknown_controls_counted() {
        let (rig, mut out_rx, mut ev_rx) = Rig::new();
        let (sc, counters, demux) = (rig.control(42), &rig.counters, &rig.demux);
        let mut state = Inlet::new(true, vec![], Instant::now());
        let ping = Control::Ping.to_bytes();
        for _ in 0..10_000 {
            record(&sc, &ping, &mut state);
        }
        assert!(matches!(
            ev_rx.try_recv(),
            Ok(Event::Control {
                session_id: 42,
                msg: Control::Ping
            })
        ));
        assert!(
            ev_rx.try_recv().is_err(),
            "more than one Ping reached the manager"
        );
        let mut pongs = 0;
        while let Ok(cmd) = out_rx.try_recv() {
            assert!(matches!(cmd, OutboundCmd::Send(b) if b == Control::Pong.to_bytes()));
            pongs += 1;
        }
        assert!((1..=8).contains(&pongs), "{pongs} pongs queued");
        // The next Ping after the queue drained is answered again.
        record(&sc, &ping, &mut state);
        assert!(out_rx.try_recv().is_ok());

        for bad in [&[0u8, 9][..], &[0, 0xff, 1], &[0, 2, 0], &[0, 4]] {
            record(&sc, bad, &mut state);
        }
        assert_eq!(counters.drops(inbound::DropKind::Unexpected), 4);
        assert!(ev_rx.try_recv().is_err());
        record(&sc, &[0, 4, 9, b'x'], &mut state);
        assert!(matches!(
            ev_rx.try_recv(),
            Ok(Event::Control {
                msg: Control::Close {
                    reason: dtun_proto::proto::CloseReason::Other(9),
                    ..
                },
                ..
            })
        ));
        assert_eq!(demux.events_dropped.load(Relaxed), 0);
    }

    /// A flood of Hellos from one session reaches the manager as the session's budget and
    /// no more: the rest are ControlFlood drops in the session's counters, and the queue all
    /// sessions share never fills.
    #[test]
    fn a_hello_flood_is_cut_to_the_sessions_budget() {
        let (rig, _out_rx, mut ev_rx) = Rig::new();
        let (sc, counters, demux) = (rig.control(7), &rig.counters, &rig.demux);
        let mut inlet = Inlet::new(true, vec![], Instant::now());
        let hello = Control::Hello {
            version: dtun_proto::proto::CONTROL_VERSION,
            keepalive_ms: 0,
            flags: Default::default(),
        }
        .to_bytes();
        let budget = dtun_proto::session::server::CONTROL_BURST as usize;
        for _ in 0..budget + 8 {
            record(&sc, &hello, &mut inlet);
        }
        let mut passed = 0;
        while let Ok(ev) = ev_rx.try_recv() {
            assert!(matches!(ev, Event::Control { session_id: 7, .. }));
            passed += 1;
        }
        // A second may pass while the loop runs: one more token at most.
        assert!((budget..=budget + 1).contains(&passed), "{passed}");
        assert_eq!(
            counters.drops(inbound::DropKind::ControlFlood) as usize,
            budget + 8 - passed
        );
        assert_eq!(demux.events_dropped.load(Relaxed), 0);
    }

    /// A peer's flood of session events (alerts, control messages) neither grows the queue to
    /// the manager past EVENT_QUEUE nor waits: the rest are counted drops, in the summary.
    #[test]
    fn session_events_are_bounded_and_drops_counted() {
        let (tx, mut rx) = mpsc::channel(EVENT_QUEUE);
        let counters = DemuxCounters::default();
        let flood = 10_000u64;
        for session_id in 0..flood {
            report(&tx, &counters, Event::SetupLost { session_id });
        }
        let dropped = flood - EVENT_QUEUE as u64;
        assert_eq!(counters.events_dropped.load(Relaxed), dropped);
        assert!(
            counters
                .summary()
                .ends_with(&format!("events_dropped={dropped}")),
            "{}",
            counters.summary()
        );
        let mut queued = 0u64;
        while let Ok(ev) = rx.try_recv() {
            // The first ones are kept, in order.
            assert!(matches!(ev, Event::SetupLost { session_id } if session_id == queued));
            queued += 1;
        }
        assert_eq!(queued, EVENT_QUEUE as u64);
        // Once the manager catches up, events flow again.
        report(&tx, &counters, Event::SetupLost { session_id: 7 });
        assert!(rx.try_recv().is_ok());
        assert_eq!(counters.events_dropped.load(Relaxed), dropped);
    }
}
