//! Destinations: a bounded in-memory queue and one writer task each.
//!
//! Admission is decided against the queue's point count, before anything is
//! enqueued, so that the ingest side can refuse a whole batch (503) instead of
//! acknowledging it and dropping later. A queue admits a batch whenever it holds
//! fewer points than its cap: it never exceeds cap + one batch, and a batch larger
//! than the cap still passes an empty queue. Nothing one destination does (slow,
//! down, reconnecting) blocks another: each has its own task.

pub mod addr;
pub mod console;
pub mod tcp;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use addr::DestAddr;

use crate::shutdown::Shutdown;

/// A run of whole lines for one destination, shared by reference count.
#[derive(Clone, Debug)]
pub struct Chunk {
    /// `\n`-terminated lines.
    pub data: Bytes,
    /// Number of lines in `data`, for queue accounting.
    pub points: u64,
}

/// Counters an operator wants per destination.
#[derive(Debug, Default)]
pub struct DestStats {
    /// Points written to the destination's socket.
    pub sent: AtomicU64,
    /// Points re-sent after a broken connection (at-least-once duplicates).
    pub resent: AtomicU64,
    /// Connection attempts that failed or connections that broke.
    pub errors: AtomicU64,
    /// Points still queued when the process gave up draining at shutdown.
    pub abandoned: AtomicU64,
}

/// Where a destination's writer sends its lines.
#[derive(Clone, Debug)]
pub enum SinkKind {
    /// A Graphite plaintext receiver over TCP.
    Tcp(DestAddr),
    /// Standard output (`-console-out`).
    Console,
}

/// Settings shared by all destinations of a process.
#[derive(Clone, Debug)]
pub struct DestConfig {
    /// `-outgoing-queue-cap`: points a queue admits before refusing batches.
    pub queue_cap: u64,
    /// How long shutdown waits for queues to drain.
    pub drain_timeout: Duration,
    /// `-spool-dir`: where each destination spools what its memory queue cannot hold.
    pub spool_dir: Option<std::path::PathBuf>,
    /// `-spool-max-bytes`: spool cap per destination.
    pub spool_max_bytes: u64,
    /// `-overflow`: what happens to a batch nothing can hold.
    pub overflow: Overflow,
    /// `-durable`: acknowledge only after the batch is on disk.
    pub durable: bool,
}

/// What happens to a batch that neither the memory queue nor the spool can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse the batch (503); the sender retries. Nothing acknowledged is lost.
    Refuse,
    /// Drop it for this destination, counted and logged (mirrors an operator can afford to lose).
    Drop,
}

impl DestConfig {
    /// Memory-only settings: no spool, refuse on overflow.
    pub fn in_memory(queue_cap: u64, drain_timeout: Duration) -> Self {
        DestConfig {
            queue_cap,
            drain_timeout,
            spool_dir: None,
            spool_max_bytes: 0,
            overflow: Overflow::Refuse,
            durable: false,
        }
    }
}

/// State shared by a destination's producers and its writer task.
#[derive(Debug)]
pub struct DestShared {
    /// Name shown in logs and APIs: the address as configured, or `console`.
    name: String,
    cap: u64,
    /// Points admitted and not yet written out.
    queued: AtomicU64,
    /// Per-destination counters.
    pub stats: DestStats,
}

impl DestShared {
    /// The destination's name as configured.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Called by the writer once `points` have left the queue.
    fn written(&self, points: u64) {
        self.queued.fetch_sub(points, Ordering::AcqRel);
        self.stats.sent.fetch_add(points, Ordering::Relaxed);
    }
}

/// The producer-side handle of one destination. Dropping the last handle closes
/// the queue: the writer delivers what is queued, then exits (a destination
/// removed at run time loses nothing it had admitted).
pub struct Destination {
    kind: SinkKind,
    tx: mpsc::UnboundedSender<Chunk>,
    shared: Arc<DestShared>,
}

impl std::ops::Deref for Destination {
    type Target = DestShared;
    fn deref(&self) -> &DestShared {
        &self.shared
    }
}

impl Destination {
    /// Creates the destination and starts its writer task.
    pub fn spawn(
        kind: SinkKind,
        config: &DestConfig,
        shutdown: Shutdown,
    ) -> (Arc<Destination>, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let name = match &kind {
            SinkKind::Tcp(a) => a.to_string(),
            SinkKind::Console => "console".to_string(),
        };
        let shared = Arc::new(DestShared {
            name,
            cap: config.queue_cap,
            queued: AtomicU64::new(0),
            stats: DestStats::default(),
        });
        let task = match kind.clone() {
            SinkKind::Tcp(addr) => {
                tracing::info!("Adding destination to connection pool: {addr}");
                tokio::spawn(tcp::run(
                    shared.clone(),
                    addr,
                    rx,
                    shutdown,
                    config.drain_timeout,
                ))
            }
            SinkKind::Console => tokio::spawn(console::run(shared.clone(), rx, shutdown)),
        };
        let dest = Arc::new(Destination { kind, tx, shared });
        (dest, task)
    }

    /// What this destination writes to.
    pub fn kind(&self) -> &SinkKind {
        &self.kind
    }

    /// The queue cap in points.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Points queued (admitted, not yet written).
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Reserves room for `points` if the queue holds fewer points than its cap.
    /// A successful reservation must be followed by [`push`](Self::push) or
    /// [`release`](Self::release).
    pub fn try_admit(&self, points: u64) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.cap).then_some(q + points)
            })
            .is_ok()
    }

    /// Returns a reservation that will not be used (the batch was refused elsewhere).
    pub fn release(&self, points: u64) {
        self.queued.fetch_sub(points, Ordering::AcqRel);
    }

    /// Hands an admitted chunk to the writer.
    pub fn push(&self, chunk: Chunk) {
        let points = chunk.points;
        if self.tx.send(chunk).is_err() {
            // The writer is gone (process shutting down): keep the books right.
            self.release(points);
            self.stats.abandoned.fetch_add(points, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admission_follows_the_cap_rule() {
        let (_t, shutdown) = Shutdown::new();
        let config = DestConfig::in_memory(3000, Duration::from_secs(1));
        // A destination nobody listens on: port 1 on loopback refuses.
        let (d, _task) = Destination::spawn(
            SinkKind::Tcp("127.0.0.1:1".parse().unwrap()),
            &config,
            shutdown,
        );
        assert!(
            d.try_admit(5000),
            "a batch larger than the cap passes an empty queue"
        );
        assert!(!d.try_admit(1), "then the queue is over its cap");
        d.release(5000);
        assert!(d.try_admit(1000));
        assert!(d.try_admit(1000));
        assert!(d.try_admit(1000));
        assert!(
            !d.try_admit(1000),
            "three 1000-line batches fill a 3000 cap"
        );
        assert_eq!(d.queued(), 3000);
    }
}
