//! The pipeline's counters (what was accepted, refused, invalid) and the operator's
//! 5-second rate line. The HTTP source's own counters are [`crate::ingest::stats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::batch::Rejects;

/// Lets a log line through at most once per so many seconds, from any thread, without a
/// lock: a condition that repeats every batch must not write a line per batch.
#[derive(Debug, Default)]
pub struct LogGate {
    /// Unix second of the last line let through (0: none yet).
    last: AtomicU64,
}

impl LogGate {
    /// True when a line may be logged now: none in the last `secs` seconds (and this
    /// caller won the race to log it).
    pub fn allow(&self, secs: u64) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last.load(Ordering::Relaxed);
        now >= last + secs
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Counters updated per batch (never per line), read by logs and admin endpoints.
#[derive(Debug, Default)]
pub struct Stats {
    /// Points accepted into the pipeline (held for every destination).
    pub received: AtomicU64,
    /// Batches accepted.
    pub batches: AtomicU64,
    /// Invalid lines dropped.
    pub invalid: AtomicU64,
    /// Batches refused because a destination queue was full (503).
    pub refused: AtomicU64,
    /// Invalid lines by reason ([`crate::line::LineError::index`]).
    pub invalid_by_reason: [AtomicU64; crate::line::LineError::COUNT],
    /// The invalid-line log, at most once per second.
    invalid_log: LogGate,
}

impl Stats {
    /// Counts a batch's invalid lines and logs them at most once per second, with
    /// the key name (never the key) and a sample line.
    pub fn note_invalid(&self, source: &str, rejects: &Rejects) {
        if rejects.count == 0 {
            return;
        }
        self.invalid.fetch_add(rejects.count, Ordering::Relaxed);
        for (counter, n) in self.invalid_by_reason.iter().zip(rejects.by_reason) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        if rejects.warn_count() == 0 {
            // Only NaN values, which carbon-cache drops silently too (collectd sends
            // one per counter after each start): not worth a WARN.
            tracing::debug!(
                "Dropped {} NaN values from {source}, e.g. \"{}\"",
                rejects.count,
                rejects.sample.as_ref().map_or("", |s| s.1.as_str())
            );
            return;
        }
        if self.invalid_log.allow(1) {
            if let Some((err, sample)) = &rejects.sample {
                tracing::warn!(
                    "Dropped {} invalid lines from {source}: {err}, e.g. \"{sample}\"",
                    rejects.count
                );
            }
        }
    }
}

/// The operator's `Last 5.00s: Received N data points | Avg: X/sec.` line,
/// computed from a running total; silent when nothing arrived.
pub struct RateLog {
    last: u64,
    at: Instant,
}

impl RateLog {
    /// Starts from the current total.
    pub fn new(total: u64) -> Self {
        RateLog {
            last: total,
            at: Instant::now(),
        }
    }

    /// Logs what arrived since the previous call.
    pub fn log(&mut self, total: u64) {
        let secs = self.at.elapsed().as_secs_f64();
        self.at = Instant::now();
        let n = total.saturating_sub(self.last);
        self.last = total;
        if n > 0 {
            tracing::info!(
                "Last {secs:.2}s: Received {n} data points | Avg: {:.2}/sec.",
                n as f64 / secs
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogGate;

    #[test]
    fn a_log_gate_lets_one_line_through_per_interval() {
        let gate = LogGate::default();
        assert!(gate.allow(10), "the first line goes through");
        assert!(!gate.allow(10), "a second one within 10 s does not");
        assert!(!gate.allow(10));
    }
}
