//! A live session's rekeying on the client's side (`crate::rekey`): offered in our Hello
//! when configured, on when the server's answer offers it too. The exchange's Init goes out
//! when an epoch has carried traffic for the rekey interval (or a usage limit is near), again
//! each second until the Reply comes, and the session ends like a dead peer's when none comes.
//! A completed exchange rekeys the session's own keys, or, once the data path holds them,
//! tells it to ([`Event::Rekeyed`]).

use std::time::{Duration, Instant};

use crate::consts::{CONTENT_APPLICATION_DATA, KEEPALIVE_MISSES};
use crate::inbound::DropKind;
use crate::proto::CloseReason;
use crate::record;
use crate::rekey::exchange::{ClientOut, ClientRekey, EPOCH_OVERLAP, NewEpoch};
use crate::rekey::message::Fragment;

use super::{ClientSession, End, Event, Step};

/// How long an exchange may go unanswered at least (three keepalive periods when that is
/// longer; this without keepalive): a short keepalive must not turn a lossy path's few lost
/// Init or Reply fragments into a lost session.
pub const REKEY_GIVE_UP: Duration = Duration::from_secs(30);

impl ClientSession {
    /// The epoch our records are sealed in (1 until the first rekey).
    pub fn epoch(&self) -> u16 {
        self.rekey.as_ref().map_or(1, ClientRekey::epoch)
    }

    /// Tests only: each rekey's epoch and shared secrets (X25519, ML-KEM).
    #[cfg(any(test, feature = "test-util"))]
    pub fn revealed_for_test(&self) -> Vec<(u16, [u8; 32], [u8; 32])> {
        self.rekey
            .as_ref()
            .map(|r| r.revealed.clone())
            .unwrap_or_default()
    }

    /// Whether this session rekeys (both Hellos offered it).
    pub fn rekeys(&self) -> bool {
        self.rekey.is_some()
    }

    /// Records flowed at `now` (the data path says so, either way): an epoch's age for
    /// rekeying counts only such time.
    pub fn traffic(&mut self, now: Instant) {
        if let Some(r) = self.rekey.as_mut() {
            r.traffic(now);
        }
    }

    /// A usage limit of the keys is near: rekey at the next chance (a session without
    /// rekeying closes instead, as before).
    pub fn rekey_soon(&mut self) -> bool {
        match self.rekey.as_mut() {
            Some(r) => {
                r.soon();
                true
            }
            None => false,
        }
    }

    /// The Hello exchange ended with the server's answer offering rekeying (and ours).
    pub(super) fn start_rekeying(&mut self) {
        let (Some(interval), Some(epoch1)) = (self.cfg.rekey, self.epoch1.take()) else {
            return;
        };
        self.rekey = Some(ClientRekey::new(epoch1, interval, self.give_up()));
    }

    /// Whether our Hello offers roaming: configured, the session rekeys on our side, and its
    /// suite is AES-GCM (the connection ID record format is GCM only).
    pub(super) fn offers_roaming(&self) -> bool {
        self.cfg.roam
            && !self.cfg.compat
            && self.cfg.rekey.is_some()
            && self.suite == Some(crate::record::Suite::Aes128Gcm)
    }

    /// The Hello exchange gave us a connection ID (`cid`) and rekeying is on: rekey at once,
    /// so the session roams (its next epoch carries the ID) and its traffic is forward
    /// secret from its first seconds.
    pub(super) fn start_roaming(&mut self, cid: Option<[u8; 8]>) {
        if let (Some(cid), Some(r)) = (cid.filter(|_| self.offers_roaming()), self.rekey.as_mut()) {
            self.cid = Some(cid);
            r.soon();
        }
    }

    /// Whether the session roams (our records carry the server's connection ID, from the
    /// first rekey on).
    pub fn roams(&self) -> bool {
        self.cid.is_some()
    }

    /// Our path to the server changed (a new source address or port, a new route): tell the
    /// server at once with a keepalive, so it challenges the new address and moves the session
    /// without waiting for our next packet.
    pub fn path_changed(&mut self, now: Instant) -> Step {
        let mut step = Step::default();
        if matches!(self.state, super::State::Up) && self.negotiated {
            self.last_ping = now;
            self.seal_into(
                &mut step,
                CONTENT_APPLICATION_DATA,
                &crate::proto::Control::Ping.to_bytes(),
            );
        }
        step
    }

    /// When the rekey timer is due: a retry, the give-up, a rekey due now, or the end of an
    /// overlap.
    pub(super) fn rekey_timeout(&self) -> Option<Instant> {
        let r = self.rekey.as_ref()?;
        if r.due() {
            return Some(self.last_rx.min(self.last_ping));
        }
        [r.next_timeout(), self.retire_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// The rekey timer: start a due exchange, repeat the Init, or give up.
    pub(super) fn rekey_timer(&mut self, now: Instant, step: &mut Step) {
        if self.retire_at.is_some_and(|t| now >= t) {
            self.retire_at = None;
            if let Some((_, opener)) = self.keys.as_mut() {
                opener.retire_previous();
            }
            if self.detached {
                step.events.push(Event::RetirePrevious);
            }
        }
        let Some(r) = self.rekey.as_mut() else {
            return;
        };
        let out = if r.due() {
            match r.start(now, &self.rng) {
                Ok(out) => out,
                Err(e) => {
                    tracing::debug!("rekey: {e}");
                    ClientOut::default()
                }
            }
        } else {
            r.timeout(now)
        };
        self.rekey_out(now, out, step);
    }

    /// A rekey fragment from the server.
    pub(super) fn rekey_fragment(&mut self, now: Instant, f: &Fragment, step: &mut Step) {
        let Some(r) = self.rekey.as_mut() else {
            self.counters.count_drop(DropKind::Unexpected);
            return;
        };
        match r.fragment(now, f) {
            Ok(out) => self.rekey_out(now, out, step),
            Err(_) => self.counters.count_drop(DropKind::Unexpected),
        }
    }

    fn rekey_out(&mut self, now: Instant, out: ClientOut, step: &mut Step) {
        for msg in &out.send {
            self.seal_into(step, CONTENT_APPLICATION_DATA, msg);
        }
        if out.gave_up {
            self.close_with(step, Some(CloseReason::Timeout));
            self.end(step, End::Dead(self.give_up()));
            return;
        }
        if out.exhausted {
            self.close_with(step, Some(CloseReason::Exhausted));
            self.end(step, End::Ours(Some(CloseReason::Exhausted)));
            return;
        }
        if let Some(new) = out.rekeyed {
            self.retire_at = Some(now + EPOCH_OVERLAP);
            self.rekeyed(new, step);
        }
    }

    /// How long an exchange may go unanswered: three keepalive periods, at least
    /// [`REKEY_GIVE_UP`].
    fn give_up(&self) -> Duration {
        self.keepalive()
            .map_or(REKEY_GIVE_UP, |k| (k * KEEPALIVE_MISSES).max(REKEY_GIVE_UP))
    }

    /// The next epoch's keys: ours, or the data path's.
    fn rekeyed(&mut self, new: NewEpoch, step: &mut Step) {
        if let Some((sealer, opener)) = self.keys.as_mut() {
            record::rekey_sealer(sealer, &new.keys, true, new.epoch);
            record::rekey_opener(opener, &new.keys, true, new.epoch);
            if self.cid.is_some() {
                sealer.set_cid(self.cid);
            }
        }
        if self.detached {
            step.events.push(Event::Rekeyed {
                epoch: new.epoch,
                keys: new.keys,
                cid: self.cid,
            });
        }
    }
}
