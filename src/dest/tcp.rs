//! The TCP writer of one destination: connect, write large batches, reconnect.
//!
//! It takes chunks from the memory queue first (they are the oldest), and once that is
//! empty reads the spool back in order; when the spool has been read to its end it lets
//! the memory queue take new batches again ([`Spool::try_stop_spilling`]).
//!
//! Delivery is at-least-once. Bytes handed to the kernel are not yet at the receiver: when a
//! connection breaks, whatever sat in our send buffer, in flight, or in the receiver's buffer
//! is lost with it. So the writer keeps the chunks it wrote most recently (up to
//! [`RESEND_WINDOW`] bytes, by reference count, no copy) and writes them again on the next
//! connection; those points are counted in `DestStats::resent` and logged.
//!
//! At shutdown it drains the memory queue to the destination for up to the drain timeout
//! (it stops reading the spool, which stays on disk for the next start); what is left then
//! is appended to the spool when there is one, else counted as abandoned.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::spool::{self, Spool, SpoolPos};
use super::{Chunk, DestAddr, DestShared};
use crate::shutdown::Shutdown;

/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A connect that takes longer than this is treated as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Chunks gathered into one vectored write (Linux accepts up to 1024 iovecs).
const MAX_IOV: usize = 64;
/// Bytes of recently written chunks kept to be written again after a broken connection:
/// enough to cover a full local send buffer plus the receiver's receive buffer (Linux
/// autotunes them up to 4 MiB and 6 MiB).
pub const RESEND_WINDOW: usize = 16 << 20;
/// Chunks kept in the resend window at most: many tiny chunks (a destination that
/// gets a few lines per batch) must not pin their buffers' memory.
pub const RESEND_CHUNKS: usize = 1024;
/// Bytes read back from the spool at a time.
pub const SPOOL_READ: usize = 4 << 20;

/// Where a pending chunk came from, which decides what its completion releases.
#[derive(Clone, Copy, Debug)]
enum Origin {
    /// The memory queue: completion releases its points from the queue accounting.
    Memory,
    /// The spool: completion moves the spool's delivered position.
    Spool(SpoolPos),
    /// Written before on a connection that broke: completion counts nothing again.
    Resend,
}

struct Item {
    chunk: Chunk,
    origin: Origin,
}

/// Writer state that survives reconnects.
struct Pending {
    /// Taken from the queue or spool, not yet fully written.
    items: VecDeque<Item>,
    /// Bytes of `items[0]` already written on the current connection.
    front_off: usize,
    /// Fully written chunks, newest last, at most [`RESEND_WINDOW`] bytes.
    recent: VecDeque<Chunk>,
    recent_bytes: usize,
}

impl Pending {
    fn remember(&mut self, chunk: Chunk) {
        self.recent_bytes += chunk.data.len();
        self.recent.push_back(chunk);
        while (self.recent_bytes > RESEND_WINDOW || self.recent.len() > RESEND_CHUNKS)
            && self.recent.len() > 1
        {
            let old = self.recent.pop_front().expect("not empty");
            self.recent_bytes -= old.data.len();
        }
    }

    /// After a broken connection: everything recently written goes out again, then the
    /// front chunk from its start. Returns the points that will be written twice.
    fn requeue_after_break(&mut self) -> u64 {
        let mut again = 0;
        if let Some(front) = self.items.front() {
            again += memchr::memchr_iter(b'\n', &front.chunk.data[..self.front_off]).count() as u64;
        }
        self.front_off = 0;
        self.recent_bytes = 0;
        while let Some(chunk) = self.recent.pop_back() {
            again += chunk.points;
            self.items.push_front(Item {
                chunk,
                origin: Origin::Resend,
            });
        }
        again
    }
}

/// The writer task's state.
struct Writer {
    dest: Arc<DestShared>,
    spool: Option<Arc<Spool>>,
    rx: mpsc::UnboundedReceiver<Chunk>,
    /// Failover asks for the memory queue back while disconnected.
    reclaim: super::ReclaimRx,
    shutdown: Shutdown,
    drain_timeout: Duration,
    /// Set when shutdown was requested: give up at this instant.
    deadline: Option<Instant>,
    pending: Pending,
    /// The memory queue's senders are all gone.
    closed: bool,
}

/// Runs until the memory queue is drained after shutdown (or the drain timeout passes),
/// then closes the spool.
pub async fn run(
    dest: Arc<DestShared>,
    addr: DestAddr,
    rx: mpsc::UnboundedReceiver<Chunk>,
    reclaim: super::ReclaimRx,
    shutdown: Shutdown,
    drain_timeout: Duration,
) {
    let spool = dest.spool().cloned();
    let mut w = Writer {
        dest,
        spool: spool.clone(),
        rx,
        reclaim,
        shutdown,
        drain_timeout,
        deadline: None,
        pending: Pending {
            items: VecDeque::new(),
            front_off: 0,
            recent: VecDeque::new(),
            recent_bytes: 0,
        },
        closed: false,
    };
    w.run(addr).await;
    w.dest.stats.connected.store(false, Ordering::Relaxed);
    if let Some(spool) = spool {
        // Saves the cursor: a restart replays from what was not written.
        let _ = tokio::task::spawn_blocking(move || spool.close()).await;
    }
}

impl Writer {
    async fn run(&mut self, addr: DestAddr) {
        let target = addr.host_port();
        let mut backoff = MIN_BACKOFF;
        loop {
            // Connect, retrying with backoff; during a drain, give up at the deadline.
            let mut stream = loop {
                if let Some(d) = self.deadline {
                    if self.memory_drained() {
                        return;
                    }
                    if Instant::now() >= d {
                        return self.abandon().await;
                    }
                }
                let attempt =
                    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await;
                let err = match attempt {
                    Ok(Ok(s)) => break s,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("connect to {target} timed out"),
                };
                self.dest.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.dest
                    .stats
                    .consecutive_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!("Destination error: {target}: {err}, retrying");
                let pause = match self.deadline {
                    Some(d) => backoff.min(d.saturating_duration_since(Instant::now())),
                    None => backoff,
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = self.shutdown.recv(), if self.deadline.is_none() => {
                        self.deadline = Some(Instant::now() + self.drain_timeout);
                    }
                    Some(answer) = self.reclaim.recv() => {
                        let _ = answer.send(self.give_back());
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            };
            let _ = stream.set_nodelay(true);
            backoff = MIN_BACKOFF;
            self.dest
                .stats
                .consecutive_failures
                .store(0, Ordering::Relaxed);
            self.dest.stats.connected.store(true, Ordering::Relaxed);
            tracing::info!("Connected to destination {target}");

            let err: io::Error = loop {
                if self.pending.items.is_empty() && !self.fill().await {
                    if self.deadline.is_some() || self.closed {
                        // Memory queue drained; the spool stays on disk for the next start.
                        return;
                    }
                    let spool = self.spool.clone();
                    tokio::select! {
                        c = self.rx.recv() => match c {
                            Some(c) => self.pending.items.push_back(Item { chunk: c, origin: Origin::Memory }),
                            None => { self.closed = true; continue; }
                        },
                        _ = async { spool.as_ref().expect("guarded").published().await }, if spool.is_some() => continue,
                        e = peer_closed(&stream) => break e,
                        _ = self.shutdown.recv() => {
                            self.deadline = Some(Instant::now() + self.drain_timeout);
                            continue;
                        }
                    }
                }
                self.top_up();
                let written = match self.deadline {
                    None => write_pending(&mut stream, &mut self.pending, &self.dest).await,
                    Some(d) => match tokio::time::timeout_at(
                        d,
                        write_pending(&mut stream, &mut self.pending, &self.dest),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => return self.abandon().await,
                    },
                };
                if let Err(e) = written {
                    break e;
                }
            };
            self.dest.stats.errors.fetch_add(1, Ordering::Relaxed);
            self.dest.stats.connected.store(false, Ordering::Relaxed);
            tracing::warn!("Destination error: {target}: {err}, retrying");
            let again = self.pending.requeue_after_break();
            if again > 0 {
                self.dest.stats.resent.fetch_add(again, Ordering::Relaxed);
                tracing::warn!(
                    "Destination {target}: connection lost, re-sending {again} points written \
                     just before (at-least-once: the destination may receive them twice)"
                );
            }
        }
    }

    /// Hands back every memory-queue chunk not yet written (failover re-routes
    /// them); spooled records stay in the spool. Only called while disconnected,
    /// so nothing handed back is half-written.
    fn give_back(&mut self) -> Vec<Chunk> {
        let mut out = Vec::new();
        let mut kept = VecDeque::new();
        let mut queued = 0;
        for item in self.pending.items.drain(..) {
            match item.origin {
                Origin::Memory => {
                    queued += item.chunk.points;
                    out.push(item.chunk);
                }
                // Written on the broken connection and perhaps lost: at-least-once
                // means they go to the new owners too (they left the queue already).
                Origin::Resend => out.push(item.chunk),
                Origin::Spool(_) => kept.push_back(item),
            }
        }
        self.pending.items = kept;
        self.pending.front_off = 0;
        while let Ok(c) = self.rx.try_recv() {
            queued += c.points;
            out.push(c);
        }
        self.dest.queued.fetch_sub(queued, Ordering::AcqRel);
        out
    }

    /// True when nothing from the memory queue is left to write.
    fn memory_drained(&self) -> bool {
        self.rx.is_empty()
            && self
                .pending
                .items
                .iter()
                .all(|i| !matches!(i.origin, Origin::Memory))
    }

    /// Takes what is ready from the memory queue without waiting.
    fn top_up(&mut self) -> bool {
        let mut got = false;
        while self.pending.items.len() < MAX_IOV {
            match self.rx.try_recv() {
                Ok(c) => {
                    self.pending.items.push_back(Item {
                        chunk: c,
                        origin: Origin::Memory,
                    });
                    got = true;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        got
    }

    /// Fills `pending` from the memory queue, else from the spool (not during shutdown).
    /// False when there is nothing to write right now.
    async fn fill(&mut self) -> bool {
        if self.top_up() {
            return true;
        }
        if self.deadline.is_some() {
            return false;
        }
        let Some(spool) = self.spool.clone() else {
            return false;
        };
        if spool.backlog() == 0 {
            if spool.try_stop_spilling() {
                // A batch admitted just before the switch may sit in the queue already.
                return self.top_up();
            }
            return false;
        }
        let read = {
            let spool = spool.clone();
            tokio::task::spawn_blocking(move || spool.read(SPOOL_READ)).await
        };
        match read {
            Ok(Ok(records)) => {
                let got = !records.is_empty();
                for (chunk, pos) in records {
                    self.pending.items.push_back(Item {
                        chunk,
                        origin: Origin::Spool(pos),
                    });
                }
                got
            }
            Ok(Err(e)) => {
                tracing::error!(
                    "Destination {}: reading the spool in {} failed: {e}; retrying in 1s",
                    self.dest.name(),
                    spool.dir().display()
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
                false
            }
            Err(e) => {
                tracing::error!(
                    "Destination {}: spool read task failed: {e}",
                    self.dest.name()
                );
                false
            }
        }
    }

    /// The drain deadline passed: what the memory queue still holds goes to the spool (when
    /// there is one), else it is counted as abandoned. Chunks read from the spool stay there:
    /// the spool's cursor has not moved past them.
    async fn abandon(&mut self) {
        let mut memory: Vec<Chunk> = Vec::new();
        for item in self.pending.items.drain(..) {
            if matches!(item.origin, Origin::Memory) {
                memory.push(item.chunk);
            }
        }
        self.pending.front_off = 0;
        while let Ok(c) = self.rx.try_recv() {
            memory.push(c);
        }
        let points: u64 = memory.iter().map(|c| c.points).sum();
        if points == 0 {
            return;
        }
        self.dest.queued.fetch_sub(points, Ordering::AcqRel);
        if let Some(spool) = &self.spool {
            let mut waits = Vec::with_capacity(memory.len());
            for c in &memory {
                spool.reserve_forced(spool::record_size(c.data.len()));
                waits.push(spool.append(c));
            }
            let mut failed = 0u64;
            for (c, w) in memory.iter().zip(waits) {
                if !matches!(w.await, Ok(Ok(()))) {
                    failed += c.points;
                }
            }
            self.dest
                .stats
                .spooled
                .fetch_add(points - failed, Ordering::Relaxed);
            tracing::info!(
                "Destination {}: drain timeout, {} points moved to the spool for the next start",
                self.dest.name(),
                points - failed
            );
            if failed == 0 {
                return;
            }
            self.dest
                .stats
                .abandoned
                .fetch_add(failed, Ordering::Relaxed);
            tracing::error!(
                "Destination {}: {failed} points could not be written to the spool at shutdown",
                self.dest.name()
            );
            return;
        }
        self.dest
            .stats
            .abandoned
            .fetch_add(points, Ordering::Relaxed);
        tracing::error!(
            "Destination {}: drain timeout, {points} points undelivered at shutdown",
            self.dest.name()
        );
    }
}

/// Writes every pending chunk, several per syscall. A chunk is complete once its last byte
/// is handed to the kernel: memory chunks leave the queue accounting, spool chunks move the
/// spool's delivered position, and every chunk enters the resend window.
async fn write_pending(
    stream: &mut TcpStream,
    pending: &mut Pending,
    dest: &DestShared,
) -> io::Result<()> {
    while !pending.items.is_empty() {
        let n = {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(pending.items.len().min(MAX_IOV));
            for (i, it) in pending.items.iter().take(MAX_IOV).enumerate() {
                let from = if i == 0 { pending.front_off } else { 0 };
                slices.push(IoSlice::new(&it.chunk.data[from..]));
            }
            stream.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 {
            let rest = pending.items[0].chunk.data.len() - pending.front_off;
            if left >= rest {
                left -= rest;
                let item = pending.items.pop_front().expect("not empty");
                pending.front_off = 0;
                match item.origin {
                    Origin::Memory => dest.written(item.chunk.points),
                    Origin::Spool(pos) => {
                        dest.stats
                            .sent
                            .fetch_add(item.chunk.points, Ordering::Relaxed);
                        if let Some(s) = dest.spool() {
                            s.delivered(pos);
                        }
                    }
                    Origin::Resend => {}
                }
                pending.remember(item.chunk);
            } else {
                pending.front_off += left;
                left = 0;
            }
        }
    }
    Ok(())
}

/// Completes when the peer closes the connection (or it fails) while we are idle,
/// so a restarted carbon-cache is noticed before the next batch is written into a
/// dead socket.
async fn peer_closed(stream: &TcpStream) -> io::Error {
    let mut buf = [0u8; 512];
    loop {
        if let Err(e) = stream.readable().await {
            return e;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => {
                return io::Error::new(io::ErrorKind::ConnectionReset, "connection closed by peer")
            }
            Ok(_) => continue, // Graphite receivers send nothing; ignore stray bytes.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn chunk(s: &str) -> Chunk {
        Chunk {
            data: Bytes::copy_from_slice(s.as_bytes()),
            points: s.matches('\n').count() as u64,
        }
    }

    #[test]
    fn a_break_resends_recent_chunks_then_the_cut_one_from_its_start() {
        let mut p = Pending {
            items: VecDeque::new(),
            front_off: 0,
            recent: VecDeque::new(),
            recent_bytes: 0,
        };
        p.remember(chunk("a 1 1\nb 1 1\n"));
        p.items.push_back(Item {
            chunk: chunk("c 1 1\nd 1 1\n"),
            origin: Origin::Memory,
        });
        p.front_off = 8; // "c 1 1\nd " written
        assert_eq!(p.requeue_after_break(), 3);
        assert_eq!(p.front_off, 0);
        assert_eq!(p.items.len(), 2);
        assert!(matches!(p.items[0].origin, Origin::Resend));
        assert_eq!(&p.items[1].chunk.data[..], b"c 1 1\nd 1 1\n");
        assert!(p.recent.is_empty());
    }
}
