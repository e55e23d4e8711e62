//! `-replay-rate`: paces delivery out of the spool, so a site back after an outage does
//! not knock over carbon-cache by replaying a day of points as fast as the network allows
//! (carbon-relay-ng #156: 40 K to 1.3 M metrics/min).
//!
//! **Live traffic keeps priority.** The writer takes from the memory queue first and reads
//! the spool only when the queue is empty, and a paced pause ends as soon as a live chunk
//! arrives. Live points are recent, and dashboards and alerts look at recent points;
//! replayed ones fill a gap that is already late, so a few more seconds cost little. The
//! pace counts replayed points only: with live traffic near the rate, replay slows to what
//! is left, never below the rate's worth per second while the queue is idle.

use std::time::{Duration, Instant};

/// The pace of one destination's replay.
#[derive(Debug, Clone)]
pub struct ReplayPace {
    /// Points per second.
    rate: f64,
    /// When the next spool read may start.
    next: Instant,
}

impl ReplayPace {
    /// A pace of `rate` points per second (at least 1).
    pub fn new(rate: u64) -> Self {
        ReplayPace {
            rate: rate.max(1) as f64,
            next: Instant::now(),
        }
    }

    /// Bytes to read from the spool at a time: about a tenth of a second of points at
    /// 64 bytes a point, so the pace is smooth (at least 64 KiB, at most `max`).
    pub fn read_size(&self, max: usize) -> usize {
        ((self.rate * 64.0 / 10.0) as usize).clamp(64 * 1024, max.max(64 * 1024))
    }

    /// When the next read may start.
    pub fn ready_at(&self) -> Instant {
        self.next
    }

    /// `points` were read from the spool: the next read waits until they are paid for.
    pub fn note(&mut self, points: u64) {
        let now = Instant::now();
        self.next = self.next.max(now) + Duration::from_secs_f64(points as f64 / self.rate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_what_was_read() {
        let mut p = ReplayPace::new(1000);
        let t = Instant::now();
        assert!(p.ready_at() <= t + Duration::from_millis(1));
        p.note(500);
        let wait = p.ready_at().saturating_duration_since(t);
        assert!(
            wait >= Duration::from_millis(499) && wait <= Duration::from_millis(600),
            "{wait:?}"
        );
        assert_eq!(p.read_size(4 << 20), 64 * 1024);
        assert_eq!(ReplayPace::new(1_000_000).read_size(4 << 20), 4 << 20);
    }
}
