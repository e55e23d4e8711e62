//! Process-wide counters and the operator's 5-second log line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::batch::Rejects;
use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;

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
    /// Bodies that were not valid gzip (400).
    pub malformed: AtomicU64,
    /// Bodies over a size limit (413).
    pub too_large: AtomicU64,
    /// Requests with an unknown key (401).
    pub unauthorized: AtomicU64,
    /// Unix second of the last invalid-line log, for rate limiting.
    last_invalid_log: AtomicU64,
}

impl Stats {
    /// Counts a batch's invalid lines and logs them at most once per second, with
    /// the key name (never the key) and a sample line.
    pub fn note_invalid(&self, source: &str, rejects: &Rejects) {
        if rejects.count == 0 {
            return;
        }
        self.invalid.fetch_add(rejects.count, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.last_invalid_log.load(Ordering::Relaxed);
        if now > last
            && self
                .last_invalid_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            if let Some((err, sample)) = &rejects.sample {
                tracing::warn!(
                    "Dropped {} invalid lines from {source}: {err}, e.g. \"{sample}\"",
                    rejects.count
                );
            }
        }
    }
}

/// Every `interval`, logs `Last 5.00s: Received N data points | Avg: X/sec.` when
/// data flowed, and the length of every non-empty destination queue.
pub async fn report(pipeline: Arc<Pipeline>, interval: Duration, mut shutdown: Shutdown) {
    let stats = pipeline.stats().clone();
    let mut last = stats.received.load(Ordering::Relaxed);
    let mut last_at = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.recv() => return,
        }
        let now = stats.received.load(Ordering::Relaxed);
        let secs = last_at.elapsed().as_secs_f64();
        last_at = Instant::now();
        let n = now - last;
        last = now;
        if n > 0 {
            tracing::info!(
                "Last {secs:.2}s: Received {n} data points | Avg: {:.2}/sec.",
                n as f64 / secs
            );
        }
        for dest in pipeline.destinations().iter() {
            let q = dest.queued();
            if q >= dest.cap() {
                tracing::warn!(
                    "Destination {} queue is at capacity ({}) - further batches are refused with 503",
                    dest.name(),
                    dest.cap()
                );
            } else if q > 0 {
                tracing::info!("Destination {} queue length: {q}", dest.name());
            }
        }
    }
}
