//! A sliding one-second rate, cheap enough to update once per batch.
//!
//! Two one-second slots: the rate is the previous slot weighted by the part of it still
//! inside the last second, plus the current slot. Fair share compares these between
//! tenants, so it reacts within about a second to a tenant that starts flooding.

use std::time::Instant;

/// Points counted in the current and the previous second.
#[derive(Debug, Clone)]
pub struct SlidingRate {
    /// Start of the process clock the slots are numbered from.
    epoch: Instant,
    slot: u64,
    cur: f64,
    prev: f64,
}

impl SlidingRate {
    /// An empty rate.
    pub fn new(epoch: Instant) -> Self {
        SlidingRate {
            epoch,
            slot: 0,
            cur: 0.0,
            prev: 0.0,
        }
    }

    /// The slot of `now` and the part of it elapsed.
    fn position(&self, now: Instant) -> (u64, f64) {
        let t = now.saturating_duration_since(self.epoch).as_secs_f64();
        (t as u64, t.fract())
    }

    fn roll(&mut self, slot: u64) {
        if slot == self.slot {
            return;
        }
        self.prev = if slot == self.slot + 1 { self.cur } else { 0.0 };
        self.cur = 0.0;
        self.slot = slot;
    }

    /// Counts `n` points at `now` (negative: take back a count made for a refused batch).
    pub fn add(&mut self, n: f64, now: Instant) {
        let (slot, _) = self.position(now);
        self.roll(slot);
        self.cur = (self.cur + n).max(0.0);
    }

    /// Points per second over the last second.
    pub fn per_second(&mut self, now: Instant) -> f64 {
        let (slot, frac) = self.position(now);
        self.roll(slot);
        self.prev * (1.0 - frac) + self.cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slides_over_one_second() {
        let t0 = Instant::now();
        let mut r = SlidingRate::new(t0);
        r.add(100.0, t0);
        assert_eq!(r.per_second(t0), 100.0);
        let half = t0 + Duration::from_millis(1500);
        assert!((r.per_second(half) - 50.0).abs() < 1.0);
        assert_eq!(r.per_second(t0 + Duration::from_secs(3)), 0.0);
    }
}
