//! `-metrics-flush N`: the daemon's own figures as Graphite lines, every N
//! seconds, through the normal pipeline (so they reach the destinations).
//! Names follow the Go original: `<hostname>.polymur.<figure>`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::batch::Batch;
use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;

/// The host name used as the metric root (dots kept, as the original did).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// A destination name as a metric path element: dots (and colons) become `_`.
fn element(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' | ':' | ' ' | '/' => '_',
            c => c,
        })
        .collect()
}

/// Builds one round of self-metric lines. `rate` is points/s since the last round.
pub fn lines(root: &str, pipeline: &Pipeline, incoming_limit: u64, rate: f64, ts: u64) -> String {
    let stats = pipeline.stats();
    let mut out = String::new();
    let mut put = |name: &str, value: String| {
        let _ = writeln!(out, "{root}.polymur.{name} {value} {ts}");
    };
    put("rate", format!("{rate:.2}"));
    // Batches are routed into destination queues on arrival; nothing waits in
    // an incoming queue, so its size is truthfully 0.
    put("incoming-queue.current-size", "0".into());
    put("incoming-queue.limit", incoming_limit.to_string());
    for d in pipeline.destinations() {
        let e = element(d.name());
        put(
            &format!("outgoing-queue.{e}.current-size"),
            d.queued().to_string(),
        );
        put(&format!("outgoing-queue.{e}.limit"), d.cap().to_string());
        put(
            &format!("forwarded.{e}"),
            d.stats.sent.load(Ordering::Relaxed).to_string(),
        );
    }
    put(
        "received-points",
        stats.received.load(Ordering::Relaxed).to_string(),
    );
    put(
        "invalid-lines",
        stats.invalid.load(Ordering::Relaxed).to_string(),
    );
    put(
        "refused-batches",
        stats.refused.load(Ordering::Relaxed).to_string(),
    );
    let (rss, peak) = crate::admin::runstats::memory();
    put("memory.rss-bytes", rss.to_string());
    put("memory.peak-rss-bytes", peak.to_string());
    out
}

/// Submits self-metrics every `every` until shutdown.
pub async fn run(
    pipeline: Arc<Pipeline>,
    every: Duration,
    incoming_limit: u64,
    mut shutdown: Shutdown,
) {
    let root = hostname();
    let mut last = pipeline.stats().received.load(Ordering::Relaxed);
    let mut last_at = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.recv() => return,
        }
        let now = pipeline.stats().received.load(Ordering::Relaxed);
        let rate = (now - last) as f64 / last_at.elapsed().as_secs_f64();
        last = now;
        last_at = Instant::now();
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let text = lines(&root, &pipeline, incoming_limit, rate, ts);
        let (batch, _) = Batch::from_plaintext(text.into_bytes(), None);
        if let Err(e) = pipeline.submit(&batch) {
            tracing::debug!("self-metrics skipped this round: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::broadcast::Broadcast;

    #[test]
    fn lines_are_valid_graphite_with_the_original_names() {
        let pipeline = Pipeline::new(
            crate::pipeline::Topology {
                dests: Vec::new(),
                router: Box::new(Broadcast { destinations: 0 }),
            },
            Default::default(),
        );
        let text = lines("host1", &pipeline, 32768, 12.5, 1_700_000_000);
        let (batch, rejects) = Batch::from_plaintext(text.clone().into_bytes(), None);
        assert_eq!(rejects.count, 0, "{text}");
        assert!(batch.len() >= 5);
        assert!(text.contains("host1.polymur.rate 12.50 1700000000\n"));
        assert!(text.contains("host1.polymur.incoming-queue.limit 32768 1700000000\n"));
        assert_eq!(element("127.0.0.1:2003"), "127_0_0_1_2003");
    }
}
