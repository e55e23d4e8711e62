//! Token buckets: a sustained rate with a burst, for points/s and batches/s.
//!
//! A batch larger than the burst could never pass a bucket that insists on holding the
//! whole batch; instead a full bucket lets any batch through and goes into debt, which
//! later batches wait out. So the sustained rate holds whatever the batch size, and a
//! refused sender learns exactly how long to wait ([`TokenBucket::take`]'s `Err`).

use std::time::{Duration, Instant};

/// One bucket; the caller serialises access (one lock per tenant, taken once per batch).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens the bucket holds.
    burst: f64,
    /// Tokens now; negative while in debt after a batch larger than what was there.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilling at `rate` per second.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Changes rate and burst (a reload), keeping the tokens (capped at the new burst).
    pub fn set(&mut self, rate: f64, burst: f64, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.burst = burst.max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    /// How long until `n` tokens may be taken; zero when they may be taken now.
    pub fn wait_for(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        let need = n.min(self.burst);
        if self.tokens >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.tokens) / self.rate)
        }
    }

    /// Takes `n` tokens (possibly into debt); call after [`wait_for`](Self::wait_for)
    /// said zero.
    pub fn take(&mut self, n: f64) {
        self.tokens -= n;
    }

    /// Returns `n` tokens taken for a batch that was not accepted after all.
    pub fn refund(&mut self, n: f64) {
        self.tokens = (self.tokens + n).min(self.burst);
    }

    /// The configured rate (for the rate-vs-limit figures).
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_burst_and_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 200.0, t0);
        assert_eq!(b.wait_for(150.0, t0), Duration::ZERO);
        b.take(150.0);
        // 50 left: 100 more need 0.5 s.
        assert_eq!(b.wait_for(100.0, t0), Duration::from_millis(500));
        assert_eq!(
            b.wait_for(100.0, t0 + Duration::from_millis(500)),
            Duration::ZERO
        );
        // A batch above the burst passes a full bucket, then the debt is waited out.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.wait_for(1000.0, t1), Duration::ZERO);
        b.take(1000.0);
        assert_eq!(b.wait_for(1.0, t1), Duration::from_secs_f64(801.0 / 100.0));
        b.refund(1000.0);
        assert_eq!(b.wait_for(200.0, t1), Duration::ZERO);
    }
}
