//! `-metrics-flush N`: every N seconds the daemon's own figures enter its normal
//! data path as Graphite lines (`<hostname>.polymur.rate ...`), so they reach the
//! same destinations as the data they describe.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::batch::Batch;
use crate::pipeline::Pipeline;
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
        let mut prepared = crate::plaintext::Prepared::default();
        if intake.offer(&batch, &mut prepared).await.is_err() {
            tracing::warn!("Self-metrics flush skipped: queues are full");
        }
    }
}

/// A destination name as one metric path node: its dots become `_`
/// (`127.0.0.1:2003` → `127_0_0_1:2003`), as PROTOCOL.md specifies.
pub fn metric_safe(name: &str) -> String {
    name.replace('.', "_")
}

/// The self-metrics of a routing daemon (gateway, relay): the original's rate and
/// queue figures plus the new counters, for [`run`] over the pipeline.
/// `incoming` returns the incoming queue's current size and limit, in points.
pub fn run_for_pipeline(
    pipeline: Arc<Pipeline>,
    interval: Duration,
    incoming: impl Fn() -> (f64, f64) + Send + Sync + 'static,
    shutdown: Shutdown,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    use std::sync::atomic::{AtomicU64, Ordering};
    let p = pipeline.clone();
    let last = AtomicU64::new(p.stats().received.load(Ordering::Relaxed));
    let collect = move |secs: f64| {
        let stats = p.stats();
        let received = stats.received.load(Ordering::Relaxed);
        let rate = received.saturating_sub(last.swap(received, Ordering::Relaxed)) as f64 / secs;
        let (current, limit) = incoming();
        let mut figures = vec![
            ("rate".to_string(), rate),
            ("incoming-queue.current-size".to_string(), current),
            ("incoming-queue.limit".to_string(), limit),
            ("received-points".to_string(), received as f64),
            (
                "invalid-lines".to_string(),
                stats.invalid.load(Ordering::Relaxed) as f64,
            ),
            (
                "refused-batches".to_string(),
                stats.refused.load(Ordering::Relaxed) as f64,
            ),
        ];
        for d in p.destinations() {
            let name = metric_safe(d.name());
            figures.push((
                format!("outgoing-queue.{name}.current-size"),
                d.queued() as f64,
            ));
            figures.push((format!("outgoing-queue.{name}.limit"), d.cap() as f64));
            figures.push((
                format!("forwarded.{name}"),
                d.stats.sent.load(Ordering::Relaxed) as f64,
            ));
        }
        figures
    };
    run(interval, pipeline, collect, shutdown)
}
