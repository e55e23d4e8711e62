//! `-metrics-flush N`: every N seconds the daemon's own figures enter its normal
//! data path as Graphite lines (`<hostname>.polymur.rate ...`), so they reach the
//! same destinations as the data they describe.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::batch::Batch;
use crate::plaintext::Intake;
use crate::shutdown::Shutdown;

/// The host name used as the metric prefix, as Go's `os.Hostname()` reports it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Builds the lines of one flush: `figures` are `(name under <host>.polymur., value)`.
pub fn lines(host: &str, figures: &[(String, f64)]) -> Vec<u8> {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut out = String::new();
    let (rss, peak) = crate::admin::runstats::memory();
    let memory = [
        ("memory.rss-bytes".to_string(), rss as f64),
        ("memory.peak-rss-bytes".to_string(), peak as f64),
    ];
    for (name, value) in figures.iter().chain(memory.iter()) {
        let _ = writeln!(out, "{host}.polymur.{name} {value} {ts}");
    }
    out.into_bytes()
}

/// Every `interval`, offers the figures `collect` returns (given the seconds since the
/// previous flush) to `intake`. A flush the intake cannot take is skipped with a log
/// line: self-metrics must never hold up client data.
pub async fn run(
    interval: Duration,
    intake: Arc<dyn Intake>,
    collect: impl Fn(f64) -> Vec<(String, f64)> + Send + 'static,
    mut shutdown: Shutdown,
) {
    let host = hostname();
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.recv() => return,
        }
        let secs = last.elapsed().as_secs_f64().max(0.001);
        last = tokio::time::Instant::now();
        let (batch, _) = Batch::from_plaintext(lines(&host, &collect(secs)), None);
        if intake.offer(&batch).await.is_err() {
            tracing::warn!("Self-metrics flush skipped: queues are full");
        }
    }
}

/// `-` and `.` free form of a destination name for a metric path (`host:port` →
/// `host:port` with dots as `_`).
pub fn metric_safe(name: &str) -> String {
    name.replace('.', "_")
}
