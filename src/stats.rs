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
    /// Invalid lines by reason ([`crate::line::LineError::index`]).
    pub invalid_by_reason: [AtomicU64; crate::line::LineError::COUNT],
    /// HTTP answers by route and status ([`HTTP_PATHS`] × [`HTTP_CODES`]).
    http: [[AtomicU64; HTTP_CODES.len()]; HTTP_PATHS.len()],
    /// Time from request to answer for `/ingest` batches.
    pub batch_latency: Histogram,
    /// Unix second of the last invalid-line log, for rate limiting.
    last_invalid_log: AtomicU64,
}

/// Routes counted in `polymur_http_requests_total`.
pub const HTTP_PATHS: [&str; 3] = ["/ping", "/ingest", "other"];
/// Status codes counted in `polymur_http_requests_total` (anything else counts as 500).
pub const HTTP_CODES: [u16; 9] = [200, 400, 401, 404, 408, 413, 500, 503, 405];

/// Upper bounds (seconds) of the batch latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A fixed-bucket latency histogram updated with atomics (one add per batch).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is +Inf.
    pub buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of observations in microseconds.
    pub sum_micros: AtomicU64,
    /// Number of observations.
    pub count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
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

impl Stats {
    /// Counts one HTTP answer.
    pub fn count_http(&self, path: &str, code: u16) {
        let p = HTTP_PATHS
            .iter()
            .position(|&x| x == path)
            .unwrap_or(HTTP_PATHS.len() - 1);
        let c = HTTP_CODES.iter().position(|&x| x == code).unwrap_or(6);
        self.http[p][c].fetch_add(1, Ordering::Relaxed);
    }

    /// HTTP answers counted for `(path, code)`.
    pub fn http_count(&self, path: usize, code: usize) -> u64 {
        self.http[path][code].load(Ordering::Relaxed)
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

/// Every `interval`, logs `Last 5.00s: Received N data points | Avg: X/sec.` when
/// data flowed, and the length of every non-empty destination queue.
pub async fn report(pipeline: Arc<Pipeline>, interval: Duration, mut shutdown: Shutdown) {
    let stats = pipeline.stats().clone();
    let mut rate = RateLog::new(stats.received.load(Ordering::Relaxed));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.recv() => return,
        }
        rate.log(stats.received.load(Ordering::Relaxed));
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
