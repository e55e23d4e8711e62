//! Destinations: a bounded in-memory queue, an optional disk spool, and one writer
//! task each.
//!
//! Admission is decided before anything is enqueued, so that the ingest side can refuse
//! a whole batch (503) instead of acknowledging it and dropping later:
//! 1. while the destination is *spilling* (its spool holds data not yet read back), the
//!    batch goes to the spool, behind that data, so nothing overtakes it;
//! 2. else the memory queue takes it if it holds fewer points than its cap (it never
//!    exceeds cap + one batch, and a batch larger than the cap still passes an empty queue);
//! 3. else the spool takes it (if configured and below `-spool-max-bytes`) and the
//!    destination starts spilling;
//! 4. else `-overflow`: refuse the whole batch (503), or drop this destination's share,
//!    counted and logged.
//!
//! With `-durable` every batch goes to the spool, and its acknowledgement waits for the
//! group fsync. Nothing one destination does (slow, down, reconnecting) blocks another:
//! each has its own task and its own spool thread.
//!
//! Memory ceiling per destination: the memory queue (at most `-outgoing-queue-cap` + one
//! batch of points), the writer's resend window ([`tcp::RESEND_WINDOW`] bytes, shared with
//! the queue's buffers by reference count) and one spool read-back ([`tcp::SPOOL_READ`] bytes).

pub mod addr;
pub mod console;
pub mod dead_letter;
pub mod file;
pub mod replay;
pub mod spool;
pub mod tcp;
pub mod tls;
pub mod unacked;
pub mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use addr::DestAddr;
pub use spool::Spool;

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
    /// True while the writer holds an open connection (console: always).
    pub connected: std::sync::atomic::AtomicBool,
    /// Failed connection attempts since the last successful connect; hash-route
    /// failover takes a destination out of the ring at 3.
    pub consecutive_failures: AtomicU64,
    /// Points admitted to the spool (including the memory queue moved there at shutdown).
    pub spooled: AtomicU64,
    /// Points dropped by `-overflow drop` (nothing could hold them).
    pub dropped: AtomicU64,
    /// Points of records the destination kept refusing, set aside ([`dead_letter`]).
    pub dead_lettered: AtomicU64,
    /// Points a [`file`] destination could not write (counted, not retried).
    pub write_failed: AtomicU64,
}

/// Where a destination's writer sends its lines.
#[derive(Clone, Debug)]
pub enum SinkKind {
    /// A Graphite plaintext receiver over TCP.
    Tcp(DestAddr),
    /// Standard output (`-console-out`).
    Console,
    /// A writer defined elsewhere (the proxy's gateway), see [`writer`].
    Writer(Arc<dyn writer::Writer>),
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
    /// `-replay-rate`: points/s out of the spool (`None`: unlimited); see [`replay`].
    pub replay_rate: Option<u64>,
    /// How TLS destinations are reached ([`tls`]): every TCP destination with
    /// `tls_all` (`-destination-tls`), else those marked `transport plain ssl` in
    /// `-config` ([`DestAddr::tls`](crate::dest::DestAddr)).
    pub tls: Option<tls::DestTls>,
    /// `-destination-tls`.
    pub tls_all: bool,
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
            replay_rate: None,
            tls: None,
            tls_all: false,
        }
    }
}

/// State shared by a destination's producers and its writer task.
pub struct DestShared {
    /// Name shown in logs and APIs: the address as configured, or `console`.
    name: String,
    cap: u64,
    /// Points admitted to the memory queue and not yet written out.
    queued: AtomicU64,
    /// The memory queue's high-water mark: once a large queue has drained, the memory
    /// its batches held goes back to the system ([`crate::memory::QueuePeak`]).
    peak: crate::memory::QueuePeak,
    /// The disk spool, with `-spool-dir` (TCP destinations only).
    spool: Option<Arc<Spool>>,
    /// Why `-spool-dir` was given and the spool could not be opened.
    spool_error: Option<String>,
    /// `-overflow`.
    overflow: Overflow,
    /// The drop log line (`-overflow drop`), and drops since the last one.
    drop_log: (crate::stats::LogGate, AtomicU64),
    /// Per-destination counters.
    pub stats: DestStats,
}

impl std::fmt::Debug for DestShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestShared")
            .field("name", &self.name)
            .field("cap", &self.cap)
            .field("queued", &self.queued)
            .field("spool", &self.spool.as_ref().map(|s| s.dir().to_path_buf()))
            .finish()
    }
}

/// Where an admitted batch share goes; returned by [`Destination::admit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The memory queue (points reserved).
    Memory,
    /// The spool (bytes reserved).
    Spool,
    /// Nothing can hold it and `-overflow drop` is set.
    Drop,
}

impl DestShared {
    /// The destination's name as configured.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The spool, when `-spool-dir` is set.
    pub fn spool(&self) -> Option<&Arc<Spool>> {
        self.spool.as_ref()
    }

    /// Why its spool could not be opened, when `-spool-dir` asked for one. A daemon
    /// starting with such a destination exits instead: an operator who set `-spool-dir`
    /// (and maybe `-durable`) counts on the disk behind every acknowledgement.
    pub fn spool_error(&self) -> Option<&str> {
        self.spool_error.as_deref()
    }

    /// Called by the writer once `points` have left the queue.
    pub fn written(&self, points: u64) {
        self.left_queue(points);
        self.stats.sent.fetch_add(points, Ordering::Relaxed);
        space_freed().notify_waiters();
    }

    fn left_queue(&self, points: u64) {
        let before = self.queued.fetch_sub(points, Ordering::AcqRel);
        self.peak.fell_to(before.saturating_sub(points));
    }

    /// Called by a writer for `points` of the memory queue settled without being sent
    /// (refused for good by the receiver, or moved to the spool).
    pub fn dequeued(&self, points: u64) {
        self.left_queue(points);
        space_freed().notify_waiters();
    }
}

/// Woken whenever a destination queue shrinks, so a source holding a refused batch
/// (the relay's TCP connections) offers it again at once instead of sleeping on a
/// guess. Process-wide: a wake-up for another pipeline only costs a retry.
pub fn space_freed() -> &'static tokio::sync::Notify {
    static SPACE: std::sync::OnceLock<tokio::sync::Notify> = std::sync::OnceLock::new();
    SPACE.get_or_init(tokio::sync::Notify::new)
}

/// The producer-side handle of one destination. Dropping the last handle closes
/// the queue: the writer delivers what is queued, then exits (a destination
/// removed at run time loses nothing it had admitted).
pub struct Destination {
    kind: SinkKind,
    tx: mpsc::UnboundedSender<Chunk>,
    shared: Arc<DestShared>,
    /// Asks a disconnected writer to hand back what its memory queue holds
    /// (hash-route failover re-routes it to the remaining destinations).
    reclaim_tx: mpsc::UnboundedSender<tokio::sync::oneshot::Sender<Vec<Chunk>>>,
}

/// A reclaim request: the writer answers with the chunks it gave up.
pub(crate) type ReclaimRx = mpsc::UnboundedReceiver<tokio::sync::oneshot::Sender<Vec<Chunk>>>;

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
        let (reclaim_tx, reclaim_rx) = mpsc::unbounded_channel();
        let name = match &kind {
            SinkKind::Tcp(a) => a.to_string(),
            SinkKind::Console => "console".to_string(),
            SinkKind::Writer(w) => w.name(),
        };
        let spools = match &kind {
            SinkKind::Tcp(_) => true,
            SinkKind::Console => false,
            SinkKind::Writer(w) => w.spools(),
        };
        let (spool, spool_error) = match (spools, &config.spool_dir) {
            (true, Some(dir)) => {
                match Spool::open(dir, &name, config.spool_max_bytes, config.durable) {
                    Ok(s) => (Some(s), None),
                    Err(e) => {
                        // A daemon refuses to start this way (see `spool_error`); a
                        // destination added at run time still works from memory, and a
                        // batch it cannot hold is refused, never acknowledged and lost.
                        tracing::error!(
                            "Destination {name}: cannot open its spool under {}: {e}; \
                             running without a spool (check -spool-dir permissions and space)",
                            dir.display()
                        );
                        (None, Some(format!("{}: {e}", dir.display())))
                    }
                }
            }
            _ => (None, None),
        };
        let shared = Arc::new(DestShared {
            name,
            cap: config.queue_cap,
            queued: AtomicU64::new(0),
            peak: Default::default(),
            spool,
            spool_error,
            overflow: config.overflow,
            drop_log: Default::default(),
            stats: DestStats::default(),
        });
        let task = match kind.clone() {
            SinkKind::Tcp(addr) => {
                tracing::info!("Adding destination to connection pool: {addr}");
                tokio::spawn(tcp::run(
                    shared.clone(),
                    addr,
                    rx,
                    reclaim_rx,
                    shutdown,
                    config.clone(),
                ))
            }
            SinkKind::Console => tokio::spawn(console::run(shared.clone(), rx, shutdown)),
            SinkKind::Writer(w) => tokio::spawn(w.run(writer::Queue {
                dest: shared.clone(),
                rx,
                shutdown,
                drain_timeout: config.drain_timeout,
            })),
        };
        let dest = Arc::new(Destination {
            kind,
            tx,
            shared,
            reclaim_tx,
        });
        (dest, task)
    }

    /// Takes back what the memory queue holds while the destination is
    /// disconnected (the spool keeps its part). Empty when the writer is connected,
    /// gone, or has nothing; the points leave this queue's accounting.
    pub async fn reclaim(&self) -> Vec<Chunk> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.reclaim_tx.send(tx).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
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
            .inspect(|q| self.peak.rose_to(q + points))
            .is_ok()
    }

    /// Returns a reservation that will not be used (the batch was refused elsewhere).
    pub fn release(&self, points: u64) {
        self.queued.fetch_sub(points, Ordering::AcqRel);
    }

    /// Decides where a share of `points` points and `bytes` bytes goes (see the module
    /// documentation), reserving room there; `None` means refuse the whole batch. A
    /// reservation must be followed by [`deliver`](Self::deliver) or [`cancel`](Self::cancel).
    pub fn admit(&self, points: u64, bytes: usize) -> Option<Admission> {
        let Some(spool) = &self.spool else {
            return if self.try_admit(points) {
                Some(Admission::Memory)
            } else {
                self.overflowed()
            };
        };
        let size = spool::record_size(bytes);
        if spool.durable() {
            return if spool.reserve(size) {
                Some(Admission::Spool)
            } else {
                self.overflowed()
            };
        }
        match spool.reserve_if_spilling(size) {
            Some(true) => return Some(Admission::Spool),
            Some(false) => return self.overflowed(),
            None => {}
        }
        if self.try_admit(points) {
            return Some(Admission::Memory);
        }
        if spool.reserve(size) {
            return Some(Admission::Spool);
        }
        self.overflowed()
    }

    /// True when this destination would refuse any batch right now: its memory
    /// queue is at its cap, it has no spool, and overflow means refuse. Lets the
    /// gateway answer 503 without decompressing a batch it cannot take.
    pub fn refuses_everything(&self) -> bool {
        self.spool.is_none() && self.overflow == Overflow::Refuse && self.queued() >= self.cap
    }

    /// True when a batch would be admitted now (memory queue below its cap, or a spool
    /// below its cap). A source that cannot refuse a batch it already took (the proxy's
    /// batcher) checks this before taking more, so clients feel backpressure instead.
    pub fn has_room(&self) -> bool {
        self.queued() < self.cap
            || self.spool.as_ref().is_some_and(|s| s.has_room())
            || self.overflow == Overflow::Drop
    }

    /// Queues `chunk` in memory whatever the cap. For a batch that must not be refused
    /// (the last one at shutdown): the overshoot is bounded by that batch, and the
    /// writer's drain spools or counts it like any other.
    pub fn push_forced(&self, chunk: Chunk) {
        let q = self.queued.fetch_add(chunk.points, Ordering::AcqRel);
        self.peak.rose_to(q + chunk.points);
        self.push(chunk);
    }

    fn overflowed(&self) -> Option<Admission> {
        (self.overflow == Overflow::Drop).then_some(Admission::Drop)
    }

    /// Returns a reservation of [`admit`](Self::admit) that will not be used.
    pub fn cancel(&self, admission: Admission, points: u64, bytes: usize) {
        match admission {
            Admission::Memory => self.release(points),
            Admission::Spool => {
                if let Some(s) = &self.spool {
                    s.unreserve(spool::record_size(bytes));
                }
            }
            Admission::Drop => {}
        }
    }

    /// Writes a share admitted to the spool ([`Admission::Spool`]). Await the answer before
    /// the batch counts as held, then [`deliver`](Self::deliver) it. When the write fails the
    /// spool has returned the reservation itself (do not [`cancel`](Self::cancel) it).
    pub fn append_spooled(&self, chunk: &Chunk) -> spool::AppendDone {
        let spool = self
            .spool
            .as_ref()
            .expect("spool admission without a spool");
        spool.append(chunk)
    }

    /// [`append_spooled`](Self::append_spooled) for a batch with parts in several spools:
    /// the record stays unreadable until the [`spool::Gate`] commits it (see there).
    pub fn append_spooled_gated(&self, chunk: &Chunk) -> (spool::AppendDone, spool::Gate) {
        let spool = self
            .spool
            .as_ref()
            .expect("spool admission without a spool");
        spool.append_gated(chunk)
    }

    /// Hands a held share to where [`admit`](Self::admit) reserved room: the memory queue, or
    /// the books (a spool share was written by [`append_spooled`](Self::append_spooled); a
    /// dropped one is counted).
    pub fn deliver(&self, chunk: Chunk, admission: Admission) {
        match admission {
            Admission::Memory => self.push(chunk),
            Admission::Spool => {
                self.stats
                    .spooled
                    .fetch_add(chunk.points, Ordering::Relaxed);
            }
            Admission::Drop => self.note_drop(chunk.points),
        }
    }

    /// Counts points dropped by `-overflow drop`, logging at most once per 5 seconds.
    fn note_drop(&self, points: u64) {
        self.stats.dropped.fetch_add(points, Ordering::Relaxed);
        let since = self.drop_log.1.fetch_add(points, Ordering::Relaxed) + points;
        if self.drop_log.0.allow(5) {
            self.drop_log.1.fetch_sub(since, Ordering::Relaxed);
            tracing::warn!(
                "Destination {}: queue and spool full, -overflow drop: dropped {since} points \
                 ({} in total)",
                self.name,
                self.stats.dropped.load(Ordering::Relaxed)
            );
        }
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
