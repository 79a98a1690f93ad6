//! The manager's snapshot for `dtun status` and `-metrics` (`crate::ops`): its devices and
//! sessions, read between its other events (the counters are relaxed atomics).

use std::time::Duration;

use super::Manager;
use crate::ops::status::{
    AdmissionView, Clock, Keepalive, LingeringView, PeerView, RekeyView, ServerView, SessionView,
    Traffic,
};

use dtun_linux::udp::plain;

impl Manager {
    pub(super) fn status_view(&self) -> ServerView {
        let clock = Clock::now();
        let mut clients = Vec::new();
        let mut lingering = Vec::new();
        let mut traffic = self.removed.clone();
        for (id, d) in &self.devices {
            let live = d.session.as_ref().map(|s| Traffic::of(&s.counters));
            let t = match &live {
                Some(l) => d.past.clone().plus(l),
                None => d.past.clone(),
            };
            traffic.add(&t);
            match &d.session {
                Some(s) => clients.push(PeerView {
                    id: id.clone(),
                    endpoint: plain(s.addr).to_string(),
                    device: d.tun.name.clone(),
                    local_ip: d.pair.server,
                    peer_ip: d.pair.client,
                    local_ip6: d.pair6.map(|p| p.server),
                    peer_ip6: d.pair6.map(|p| p.client),
                    routes: d.routes.iter().map(|r| r.to_string()).collect(),
                    connected_since: clock.unix(d.created),
                    connected_since_age: clock.age(d.created),
                    session: SessionView {
                        cipher: s.suite.name(),
                        started: clock.unix(s.started),
                        started_age: clock.age(s.started),
                        last_handshake: clock.unix(s.rekeyed_at.unwrap_or(s.started)),
                        last_handshake_age: clock.age(s.rekeyed_at.unwrap_or(s.started)),
                        last_authenticated: clock.unix(s.control.alive_at()),
                        last_authenticated_age: clock.age(s.control.alive_at()),
                        keepalive: Keepalive::new(
                            s.control.is_dtun_peer(),
                            if self.cfg.common.keepalive.is_zero() {
                                Duration::ZERO
                            } else {
                                s.control.keepalive()
                            },
                        ),
                        rekey: RekeyView::new(s.control.rekeys(), s.control.epoch()),
                        roaming: crate::ops::status::RoamingView {
                            on: s.control.roams(),
                            moves: s.moves,
                        },
                    },
                    traffic: t,
                }),
                None => {
                    let idle = d.idle_since.unwrap_or(d.created);
                    let expires = idle + self.cfg.linger;
                    lingering.push(LingeringView {
                        id: id.clone(),
                        device: d.tun.name.clone(),
                        local_ip: d.pair.server,
                        peer_ip: d.pair.client,
                        local_ip6: d.pair6.map(|p| p.server),
                        peer_ip6: d.pair6.map(|p| p.client),
                        idle_since: clock.unix(idle),
                        idle_since_age: clock.age(idle),
                        expires: clock.unix(expires),
                        expires_in: clock.until(expires),
                        traffic: t,
                    });
                }
            }
        }
        clients.sort_by(|a, b| a.id.cmp(&b.id));
        lingering.sort_by(|a, b| a.id.cmp(&b.id));
        let (a, unknown_peer, events_dropped) = self.counters.totals();
        ServerView {
            role: "server",
            instance: self.cfg.instance.clone(),
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            now: clock.unix_now(),
            listen: self
                .udp
                .sock
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            pool: self.cfg.pool.to_string(),
            pool6: self.cfg.pool6.map(|p| p.to_string()),
            nat: self.cfg.firewall.is_some_and(|f| f.nat),
            client_to_client: self
                .cfg
                .firewall
                .and_then(|f| f.client_to_client)
                .map(|on| if on { "on" } else { "off" }),
            dns: self.cfg.dns.iter().map(ToString::to_string).collect(),
            clients,
            lingering,
            admission: AdmissionView {
                cookies: a.cookies,
                handshakes: a.started,
                handshake_failed: a.failed,
                handshake_evicted: a.evicted,
                handshake_limit: a.limit,
                unknown_peer,
                events_dropped,
                refused_max_clients: self.refusals.count,
            },
            traffic,
        }
    }
}
