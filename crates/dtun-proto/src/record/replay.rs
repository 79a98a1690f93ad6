//! The anti-replay window of one epoch.

use crate::consts::MAX_SEQUENCE;

/// RFC 6347 §4.1.2.6 anti-replay window over the last 64 sequence numbers.
#[derive(Default, Clone, Debug)]
pub struct ReplayWindow {
    /// Highest sequence number accepted so far, valid once `seen`.
    top: u64,
    /// Bit i set: `top - i` was accepted.
    bits: u64,
    seen: bool,
}

impl ReplayWindow {
    /// Whether `seq` is new and inside the window (does not record it).
    pub fn check(&self, seq: u64) -> bool {
        if seq > MAX_SEQUENCE {
            return false;
        }
        if !self.seen || seq > self.top {
            return true;
        }
        let back = self.top - seq;
        back < 64 && self.bits & (1 << back) == 0
    }

    /// Whether `seq` was accepted and is still inside the window (a replay the window can
    /// vouch for, not one merely left behind).
    pub fn holds(&self, seq: u64) -> bool {
        self.seen
            && seq <= self.top
            && self.top - seq < 64
            && self.bits & (1 << (self.top - seq)) != 0
    }

    /// Records `seq` as received; call only after its record authenticated.
    pub fn accept(&mut self, seq: u64) {
        if !self.seen {
            self.seen = true;
            self.top = seq;
            self.bits = 1;
        } else if seq > self.top {
            let shift = seq - self.top;
            self.bits = if shift >= 64 { 0 } else { self.bits << shift };
            self.bits |= 1;
            self.top = seq;
        } else {
            let back = self.top - seq;
            if back < 64 {
                self.bits |= 1 << back;
            }
        }
    }
}
