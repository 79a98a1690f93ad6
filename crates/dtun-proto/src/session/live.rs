//! A live session's side of [`ClientSession`]: keepalive and dead-peer detection, the check
//! after an ICMP port unreachable, control records and alerts, and the hand-over of the keys
//! to the caller's data path.

use std::time::{Duration, Instant};

use crate::consts::{CONTENT_APPLICATION_DATA, KEEPALIVE_MISSES, REFUSED_GRACE};
use crate::inbound::DropKind;
use crate::proto::{CloseReason, Control};
use crate::record::{Opener, Sealer};

use super::{ClientSession, End, Event, State, Step};

impl ClientSession {
    /// When the live session's timer is due: a ping, the dead-peer verdict, or the end of
    /// an ICMP check.
    pub(super) fn live_timeout(&self) -> Option<Instant> {
        let refused = self.refused_since.map(|t| t + self.grace());
        let keepalive = self.keepalive().map(|k| {
            let (rx, ping) = (self.last_rx, self.last_ping);
            // The first moment one of `up_timer`'s conditions holds: a ping once quiet for a
            // period and a period after the last; every quarter period once quiet for one and
            // a half; dead after KEEPALIVE_MISSES.
            let every_period = (rx + k).max(ping + k);
            let overdue = (rx + k + k / 2).max(ping + k / 4);
            every_period.min(overdue).min(rx + k * KEEPALIVE_MISSES)
        });
        [refused, keepalive, self.rekey_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The keepalive period, when pings go out (control messages negotiated, not 0).
    pub fn keepalive(&self) -> Option<Duration> {
        (self.negotiated && !self.cfg.keepalive.is_zero()).then_some(self.cfg.keepalive)
    }

    /// How long after an ICMP port unreachable something authenticated must come: a
    /// keepalive period when we can ping, else [`REFUSED_GRACE`].
    pub(super) fn grace(&self) -> Duration {
        self.keepalive().unwrap_or(REFUSED_GRACE)
    }

    /// Keepalive, dead-peer detection and the ICMP check of a live session.
    pub(super) fn up_timer(&mut self, now: Instant, step: &mut Step) {
        if let Some(since) = self.refused_since
            && now >= since + self.grace()
        {
            let grace = self.grace();
            self.close_with(step, None);
            self.end(step, End::Unreachable(grace));
            return;
        }
        self.rekey_timer(now, step);
        if self.is_closed() {
            return;
        }
        let Some(k) = self.keepalive() else {
            return;
        };
        let quiet = now.saturating_duration_since(self.last_rx);
        if quiet >= k * KEEPALIVE_MISSES {
            self.close_with(step, Some(CloseReason::Timeout));
            self.end(step, End::Dead(quiet));
            return;
        }
        // One ping per period while quiet; four once a reply is overdue.
        let every = if quiet >= k + k / 2 { k / 4 } else { k };
        if quiet >= k && now.saturating_duration_since(self.last_ping) >= every {
            self.last_ping = now;
            self.seal_into(step, CONTENT_APPLICATION_DATA, &Control::Ping.to_bytes());
        }
    }

    /// Hands the keys to the data path once the session is up (the read and write keys);
    /// from now on the session gets control records ([`Self::control`]), alerts
    /// ([`Self::alert`]) and news of authenticated records ([`Self::heard`]), and what it
    /// sends comes in [`Step::seal`]. Keepalive counts from `now`.
    pub fn take_keys(&mut self, now: Instant) -> Option<(Sealer, Opener)> {
        if !matches!(self.state, State::Up) {
            return None;
        }
        let keys = self.keys.take()?;
        self.detached = true;
        self.last_rx = now;
        self.last_ping = now;
        Some(keys)
    }

    /// Something authenticated came from the server (the data path opened it).
    pub fn heard(&mut self, now: Instant) {
        self.last_rx = now;
        self.refused_since = None;
        self.traffic(now);
    }

    /// An authenticated control record of a live session, opened by the data path.
    pub fn control(&mut self, now: Instant, data: &[u8]) -> Step {
        let mut step = Step::default();
        if matches!(self.state, State::Up) {
            self.up_control(now, data, &mut step);
        }
        step
    }

    /// An authenticated alert of a live session, opened by the data path.
    pub fn alert(&mut self, _now: Instant, level: u8, desc: u8) -> Step {
        let mut step = Step::default();
        if !self.is_closed() {
            self.end(&mut step, End::Alert(level, desc));
        }
        step
    }

    /// An ICMP port unreachable came (unauthenticated: anyone who guesses our port can send
    /// one): a hint, never proof. Ping at once; the session ends only if nothing
    /// authenticated comes within a keepalive period (`REFUSED_GRACE` when we cannot ping).
    pub fn unreachable(&mut self, now: Instant) -> Step {
        let mut step = Step::default();
        if !matches!(self.state, State::Up) || self.refused_since.is_some() {
            return step;
        }
        self.refused_since = Some(now);
        if self.negotiated {
            self.last_ping = now;
            self.seal_into(
                &mut step,
                CONTENT_APPLICATION_DATA,
                &Control::Ping.to_bytes(),
            );
        }
        step.events.push(Event::Checking(self.grace()));
        step
    }

    /// A control message of a live session: a malformed one is a counted drop (the session
    /// goes on).
    pub(super) fn up_control(&mut self, now: Instant, data: &[u8], step: &mut Step) {
        match Control::parse(data) {
            Ok(Control::Dns(servers)) => step.events.push(Event::Dns(servers)),
            Ok(Control::Ping) => {
                self.seal_into(step, CONTENT_APPLICATION_DATA, &Control::Pong.to_bytes())
            }
            Ok(Control::Close {
                reason: CloseReason::Revoked,
                ..
            }) => {
                tracing::warn!(
                    "the server revoked this id (Revoked: removed, or its key changed, at a reload): check -id and the key with the server's operator"
                );
            }
            Ok(Control::Close { reason, detail }) => self.end(step, End::Closed { reason, detail }),
            Ok(Control::Rekey(f)) => self.rekey_fragment(now, &f, step),
            // The server checks our new address before it moves the session there: the
            // answer leaves from where we are now.
            Ok(Control::PathChallenge(token)) if self.cid.is_some() => self.seal_into(
                step,
                CONTENT_APPLICATION_DATA,
                &Control::PathResponse(token).to_bytes(),
            ),
            Ok(_) => {}
            Err(_) => self.counters.count_drop(DropKind::Unexpected),
        }
    }
}
