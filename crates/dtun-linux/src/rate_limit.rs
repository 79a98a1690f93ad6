//! A per-second budget for log lines a peer can trigger: past it, lines are dropped until the
//! next second, so a flood cannot fill the journal.

use std::time::{Duration, Instant};

/// Lets through at most `per_second` events a second (for logs about network input).
pub struct RateLimit {
    per_second: u32,
    window: Instant,
    used: u32,
}

impl RateLimit {
    pub fn new(per_second: u32) -> Self {
        RateLimit {
            per_second,
            window: Instant::now(),
            used: 0,
        }
    }

    pub fn allow(&mut self) -> bool {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.used = 0;
        }
        self.used += 1;
        self.used <= self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimit;

    #[test]
    fn rate_limit_caps_a_burst() {
        let mut r = RateLimit::new(3);
        let allowed = (0..10).filter(|_| r.allow()).count();
        assert_eq!(allowed, 3);
    }
}
