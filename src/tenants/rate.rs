//! A sliding one-second rate, cheap enough to update once per batch, and a one-minute
//! window sum for fair shares.
//!
//! Two one-second slots: the rate is the previous slot weighted by the part of it still
//! inside the last second, plus the current slot: each tenant's accepted points per second
//! on `/metrics` and the status page, next to its limit.

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

/// Slots of [`WindowSum`].
const SLOTS: usize = 12;

/// Points counted over the last [`WindowSum::LENGTH`], in `SLOTS` slots: fair shares
/// compare what tenants offer with what a destination drained over the same window, long
/// enough to span several of a slow destination's stall-and-burst cycles.
#[derive(Debug, Clone)]
pub struct WindowSum {
    epoch: Instant,
    /// The slot number (since `epoch`) of `slots[i]`'s newest use, per slot.
    numbers: [u64; SLOTS],
    slots: [f64; SLOTS],
}

impl WindowSum {
    /// The window: a minute.
    pub const LENGTH: std::time::Duration = std::time::Duration::from_secs(60);

    /// An empty window.
    pub fn new(epoch: Instant) -> Self {
        WindowSum {
            epoch,
            numbers: [u64::MAX; SLOTS],
            slots: [0.0; SLOTS],
        }
    }

    fn slot(&self, now: Instant) -> u64 {
        let slot_len = Self::LENGTH.as_secs_f64() / SLOTS as f64;
        (now.saturating_duration_since(self.epoch).as_secs_f64() / slot_len) as u64
    }

    /// Counts `n` at `now`.
    pub fn add(&mut self, n: f64, now: Instant) {
        let number = self.slot(now);
        let i = (number % SLOTS as u64) as usize;
        if self.numbers[i] != number {
            self.numbers[i] = number;
            self.slots[i] = 0.0;
        }
        self.slots[i] += n;
    }

    /// The sum over the window ending at `now`.
    pub fn sum(&self, now: Instant) -> f64 {
        let newest = self.slot(now);
        let oldest = newest.saturating_sub(SLOTS as u64 - 1);
        self.numbers
            .iter()
            .zip(&self.slots)
            .filter(|(n, _)| (oldest..=newest).contains(*n))
            .map(|(_, v)| v)
            .sum()
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

    #[test]
    fn window_sums_the_last_minute() {
        let t0 = Instant::now();
        let mut w = WindowSum::new(t0);
        w.add(10.0, t0);
        w.add(5.0, t0 + Duration::from_secs(30));
        assert_eq!(w.sum(t0 + Duration::from_secs(30)), 15.0);
        assert_eq!(
            w.sum(t0 + Duration::from_secs(62)),
            5.0,
            "the first slot left"
        );
        assert_eq!(w.sum(t0 + Duration::from_secs(200)), 0.0);
    }
}
