//! The periodic reports of a routing daemon: the operator's 5-second log line and,
//! with `-metrics-flush N`, the self-metrics. They read the pipeline, so they live
//! above it, in the daemon layer (the counters in `stats` know nothing of it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;
use crate::stats::RateLog;

/// The periodic reports of a routing daemon: the 5-second `Last 5.00s: ...` log
/// line, and with `-metrics-flush N` the self-metrics every N seconds. `incoming`
/// gives the incoming side's current size and limit, in points.
pub fn start(
    pipeline: &Arc<Pipeline>,
    metrics_flush: u64,
    incoming: impl Fn() -> (f64, f64) + Send + Sync + 'static,
    shutdown: Shutdown,
) {
    tokio::spawn(report(
        pipeline.clone(),
        Duration::from_secs(5),
        shutdown.clone(),
    ));
    if metrics_flush > 0 {
        tokio::spawn(crate::self_metrics::run_for_pipeline(
            pipeline.clone(),
            Duration::from_secs(metrics_flush),
            incoming,
            shutdown,
        ));
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
