//! The HTTP source's counters: answers by route and status, refusals of bodies
//! (malformed, too large, unknown key) and the `/ingest` latency histogram. They
//! belong to the source, not the pipeline: the relay and proxy have none.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters of the HTTP(S) listeners, updated once per request.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Bodies that were not valid gzip (400).
    pub malformed: AtomicU64,
    /// Bodies over a size limit (413).
    pub too_large: AtomicU64,
    /// Requests with an unknown key (401).
    pub unauthorized: AtomicU64,
    /// Batches answered 503 because the decode budget stayed spent for as long as a
    /// batch waits for it (also counted with the pipeline's refusals).
    pub budget_spent: AtomicU64,
    /// HTTP answers by route and status ([`HTTP_PATHS`] × [`HTTP_CODES`]).
    http: [[AtomicU64; HTTP_CODES.len()]; HTTP_PATHS.len()],
    /// Time from request to answer for `/ingest` batches.
    pub batch_latency: Histogram,
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

impl HttpStats {
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
