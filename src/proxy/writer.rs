//! The proxy's gateway as a writer kind of [`crate::dest::Destination`]: the proxy has one
//! destination, named `gateway`, with the same memory queue, admission rule, spool format
//! and recovery as every Graphite destination (`-spool-dir/gateway/seg-*.spool`).
//!
//! # What a record is
//! One record is one batch of `-flush-size` lines (or what `-flush-interval` cut). In the
//! spool it is stored **before** compression: the spool's format is "whole `\n`-terminated
//! lines with a CRC", and its recovery counts lost points from line ends, so an uncompressed
//! batch is a record like any other: no second format, no second set of recovery rules, and
//! a spool written before a change of codec still replays. The price is disk: a spooled
//! batch takes its plaintext size (about 8 times its gzip size), bounded by
//! `-spool-max-bytes`. In the memory queue a batch waits **sealed** (compressed by the
//! batcher when it was admitted, [`super::compression::is_sealed`]): 3.3 M points of the
//! default `-queue-cap` are some 45 MB that way instead of 250 MB of lines. A spool record
//! is compressed when it is sent ([`Gateway::deliver`], milliseconds on the blocking pool);
//! a memory batch that has to go to the spool (at shutdown) is decompressed first. The
//! writer POSTs whole batches, never a split one, unless the gateway answers 413.
//!
//! # `-workers` and the cursor
//! Up to `-workers` batches are in flight at once, memory queue first (those are the oldest,
//! as in [`crate::dest::tcp`]), then the spool. Answers come back in any order, but the
//! spool's cursor means "everything before this was delivered", so it only moves over a
//! prefix of records that are all settled: a record acknowledged while an older one is
//! still being retried waits in `order`. A crash re-sends at most the in-flight window
//! (at-least-once, as everywhere else).
//!
//! # Shutdown
//! When the destination's shutdown fires (after the listener closed and the batcher sealed
//! its last batch), spool reads stop; memory batches are still sent for up to
//! `-drain-timeout`, and with a spool a batch that fails goes to the spool at once. At the
//! deadline the POSTs still running are stopped and their memory batches spooled (or, with
//! no spool, counted as abandoned and logged as lost).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::compression::plain_lines;
use super::sink::{Gateway, Settled};
use crate::dest::spool::{self, Spool, SpoolPos};
use crate::dest::writer::{Queue, Writer, WriterTask};
use crate::dest::Chunk;
use crate::shutdown::{Shutdown, ShutdownTrigger};

/// The destination name of the gateway (and its spool subdirectory).
pub const NAME: &str = "gateway";
/// Bytes read back from the spool at a time (a few batches).
const SPOOL_READ: usize = 1 << 20;
/// How often an idle writer looks at the spool even without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The writer kind: where and how batches are POSTed.
#[derive(Debug)]
pub struct GatewayWriter {
    /// The gateway client and its counters.
    pub gateway: Arc<Gateway>,
    /// `-workers`: batches in flight at once.
    pub workers: usize,
    /// `-max-retry-delay`.
    pub max_retry_delay: Duration,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("base", &self.base())
            .finish()
    }
}

impl Writer for GatewayWriter {
    fn name(&self) -> String {
        NAME.to_string()
    }

    fn run(self: Arc<Self>, queue: Queue) -> WriterTask {
        Box::pin(async move {
            let mut f = Flight::new(self, queue);
            f.run().await;
            let given_back = std::mem::take(&mut f.given_back);
            f.spool_or_count(given_back).await;
            f.close().await;
        })
    }
}

/// Where a batch in flight came from, which decides what settling it releases.
#[derive(Clone, Copy, Debug)]
enum Origin {
    Memory,
    Spool(SpoolPos),
}

/// Spool records in flight, oldest first, each with whether it is settled: `-workers`
/// answers arrive in any order, the cursor must only pass a settled prefix.
#[derive(Debug, Default)]
struct Cursor(VecDeque<(SpoolPos, bool)>);

impl Cursor {
    /// A record ending at `pos` was sent (records start in spool order).
    fn start(&mut self, pos: SpoolPos) {
        self.0.push_back((pos, false));
    }

    /// The record ending at `pos` is settled. Returns where the cursor may move now: the
    /// end of the longest settled prefix, if it grew.
    fn settle(&mut self, pos: SpoolPos) -> Option<SpoolPos> {
        if let Some(slot) = self.0.iter_mut().find(|(p, _)| *p == pos) {
            slot.1 = true;
        }
        let mut upto = None;
        while self.0.front().is_some_and(|(_, done)| *done) {
            upto = self.0.pop_front().map(|(p, _)| p);
        }
        upto
    }
}

/// Completes when the spool published a record (never without a spool).
async fn published(spool: Option<Arc<Spool>>) {
    match spool {
        Some(s) => s.published().await,
        None => std::future::pending().await,
    }
}

/// The writer task's state.
struct Flight {
    w: Arc<GatewayWriter>,
    q: Queue,
    spool: Option<Arc<Spool>>,
    /// Set when shutdown fired: give up at this instant.
    deadline: Option<Instant>,
    /// Fired with the shutdown: failing POSTs hand their batch back (to the spool).
    drain_trigger: ShutdownTrigger,
    drain: Shutdown,
    /// Records read from the spool, not yet started.
    ready: VecDeque<(Chunk, SpoolPos)>,
    /// Spool records in flight, in record order, for the cursor.
    order: Cursor,
    /// Batches in flight by task id.
    inflight: HashMap<tokio::task::Id, (Chunk, Origin)>,
    tasks: JoinSet<Settled>,
    /// The memory queue's senders are all gone.
    closed: bool,
    /// Memory batches that were not delivered (shutdown): spooled, or counted lost, at the end.
    given_back: Vec<Chunk>,
    /// Points moved to the spool at shutdown.
    moved: u64,
}

impl Flight {
    fn new(w: Arc<GatewayWriter>, q: Queue) -> Flight {
        let (drain_trigger, drain) = Shutdown::new();
        Flight {
            spool: q.dest.spool().cloned(),
            w,
            q,
            deadline: None,
            drain_trigger,
            drain,
            ready: VecDeque::new(),
            order: Cursor::default(),
            inflight: HashMap::new(),
            tasks: JoinSet::new(),
            closed: false,
            given_back: Vec::new(),
            moved: 0,
        }
    }

    /// Sends until the memory queue is closed and empty, or drained after shutdown.
    async fn run(&mut self) {
        self.q.dest.stats.connected.store(true, Ordering::Relaxed);
        loop {
            self.fill().await;
            if self.tasks.is_empty() && self.finished() {
                return;
            }
            let room = self.tasks.len() < self.w.workers;
            let idle = self.tasks.is_empty();
            let deadline = self.deadline;
            tokio::select! {
                Some(done) = self.tasks.join_next_with_id(), if !idle => self.settle(done),
                c = self.q.rx.recv(), if room && !self.closed => match c {
                    Some(c) => self.start(c, Origin::Memory),
                    None => self.closed = true,
                },
                _ = self.q.shutdown.recv(), if deadline.is_none() => {
                    self.deadline = Some(Instant::now() + self.q.drain_timeout);
                    self.drain_trigger.fire();
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    return self.abandon().await;
                }
                _ = published(self.spool.clone()), if room && deadline.is_none() => {}
                _ = tokio::time::sleep(IDLE_POLL), if room && deadline.is_none() => {}
            }
        }
    }

    /// Nothing left to send: the memory queue is closed, or drained during shutdown.
    fn finished(&self) -> bool {
        (self.closed || self.deadline.is_some()) && self.q.rx.is_empty()
    }

    /// Starts batches while fewer than `-workers` are in flight: memory queue first, then
    /// the spool (not during shutdown).
    async fn fill(&mut self) {
        while self.tasks.len() < self.w.workers {
            match self.q.rx.try_recv() {
                Ok(c) => {
                    self.start(c, Origin::Memory);
                    continue;
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => self.closed = true,
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {}
            }
            if self.deadline.is_some() {
                return;
            }
            if let Some((c, pos)) = self.ready.pop_front() {
                self.order.start(pos);
                self.start(c, Origin::Spool(pos));
                continue;
            }
            if !self.read_spool().await {
                return;
            }
        }
    }

    /// Reads the next records of the spool into `ready`; false when there are none now.
    async fn read_spool(&mut self) -> bool {
        let Some(spool) = self.spool.clone() else {
            return false;
        };
        if spool.backlog() == 0 {
            spool.try_stop_spilling();
            return false;
        }
        let s = spool.clone();
        match tokio::task::spawn_blocking(move || s.read(SPOOL_READ)).await {
            Ok(Ok(records)) => {
                let got = !records.is_empty();
                self.ready.extend(records);
                got
            }
            Ok(Err(e)) => {
                tracing::error!(
                    "Reading the spool in {} failed: {e}; retrying in 1s",
                    spool.dir().display()
                );
                false
            }
            Err(e) => {
                tracing::error!("Spool read task failed: {e}");
                false
            }
        }
    }

    fn start(&mut self, chunk: Chunk, origin: Origin) {
        let gw = self.w.gateway.clone();
        let (data, points) = (chunk.data.clone(), chunk.points);
        let (max, spool, drain) = (
            self.w.max_retry_delay,
            self.spool.is_some(),
            self.drain.clone(),
        );
        let handle = self
            .tasks
            .spawn(async move { gw.deliver(data, points, max, spool, drain).await });
        self.inflight.insert(handle.id(), (chunk, origin));
    }

    /// Books one finished (or aborted) delivery.
    fn settle(&mut self, done: Result<(tokio::task::Id, Settled), tokio::task::JoinError>) {
        let (id, settled) = match done {
            Ok((id, s)) => (id, s),
            Err(e) => (e.id(), Settled::GaveBack),
        };
        let Some((chunk, origin)) = self.inflight.remove(&id) else {
            return;
        };
        match (origin, settled) {
            (Origin::Memory, Settled::Delivered) => self.q.dest.written(chunk.points),
            (Origin::Memory, Settled::Rejected) => self.q.dest.dequeued(chunk.points),
            (Origin::Memory, Settled::GaveBack) => self.given_back.push(chunk),
            (Origin::Spool(pos), Settled::Delivered | Settled::Rejected) => {
                if settled == Settled::Delivered {
                    self.q
                        .dest
                        .stats
                        .sent
                        .fetch_add(chunk.points, Ordering::Relaxed);
                }
                self.settled(pos);
            }
            // Stays in the spool: the cursor does not pass it, the next start sends it.
            (Origin::Spool(_), Settled::GaveBack) => {}
        }
    }

    /// The spool record ending at `pos` is settled: move the spool's cursor as far as
    /// every older record is settled too.
    fn settled(&mut self, pos: SpoolPos) {
        if let (Some(upto), Some(spool)) = (self.order.settle(pos), &self.spool) {
            spool.delivered(upto);
        }
    }

    /// Moves memory batches to the spool (shutdown), or counts them lost without one.
    async fn spool_or_count(&mut self, chunks: Vec<Chunk>) {
        let points: u64 = chunks.iter().map(|c| c.points).sum();
        if points == 0 {
            return;
        }
        self.q.dest.dequeued(points);
        let stats = &self.q.dest.stats;
        let Some(spool) = &self.spool else {
            stats.abandoned.fetch_add(points, Ordering::Relaxed);
            tracing::error!(
                "Stopped: {points} points could not be delivered or spooled and are lost"
            );
            return;
        };
        let mut failed = 0;
        for c in chunks {
            // The spool holds plain lines: a memory batch sealed by the batcher is
            // decompressed again first.
            let c = match plain_lines(c.data).await {
                Ok(data) => Chunk {
                    data,
                    points: c.points,
                },
                Err(e) => {
                    tracing::error!("A batch of {} points cannot be spooled: {e}", c.points);
                    failed += c.points;
                    continue;
                }
            };
            spool.reserve_forced(spool::record_size(c.data.len()));
            if !matches!(spool.append(&c).await, Ok(Ok(()))) {
                failed += c.points;
            }
        }
        stats.spooled.fetch_add(points - failed, Ordering::Relaxed);
        self.moved += points - failed;
        if failed > 0 {
            stats.abandoned.fetch_add(failed, Ordering::Relaxed);
            tracing::error!(
                "Stopped: {failed} points could not be delivered or spooled and are lost"
            );
        }
    }

    /// The drain deadline passed: stop the POSTs still running; their memory batches and
    /// what the memory queue holds are given back (to go to the spool, or be counted lost).
    async fn abandon(&mut self) {
        self.tasks.abort_all();
        while let Some(done) = self.tasks.join_next_with_id().await {
            self.settle(done);
        }
        while let Ok(c) = self.q.rx.try_recv() {
            self.given_back.push(c);
        }
    }

    /// Says what is left for the next start, and closes the spool (saving the cursor).
    async fn close(&mut self) {
        self.q.dest.stats.connected.store(false, Ordering::Relaxed);
        let Some(spool) = self.spool.clone() else {
            return;
        };
        let unsent = spool.backlog() > 0 || !self.ready.is_empty() || !self.order.0.is_empty();
        if unsent || self.moved > 0 {
            tracing::info!(
                "Stopped: batches left in the spool for the next start ({} points moved there at shutdown, {} bytes not yet read back) in {}",
                self.moved,
                spool.backlog(),
                spool.dir().display()
            );
        }
        let _ = tokio::task::spawn_blocking(move || spool.close()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_only_passes_records_whose_elders_are_settled() {
        let at = |offset| SpoolPos { seq: 1, offset };
        let mut c = Cursor::default();
        for o in [10, 20, 30, 40] {
            c.start(at(o));
        }
        assert_eq!(c.settle(at(30)), None, "10 and 20 still in flight");
        assert_eq!(c.settle(at(20)), None);
        assert_eq!(c.settle(at(10)), Some(at(30)), "10, 20, 30 all settled");
        c.start(at(50));
        assert_eq!(c.settle(at(50)), None, "40 still in flight");
        assert_eq!(c.settle(at(40)), Some(at(50)));
        assert!(c.0.is_empty());
    }
}
