//! The TCP writer of one destination: connect, write large batches, reconnect.
//!
//! It takes chunks from the memory queue first (they are the oldest), and once that is
//! empty reads the spool back in order; when the spool has been read to its end it lets
//! the memory queue take new batches again ([`Spool::try_stop_spilling`]).
//!
//! Delivery is at-least-once. Bytes handed to the kernel are not yet at the receiver: when a
//! connection breaks, whatever sat in our send buffer, in flight, or in the receiver's buffer
//! is lost with it. So the writer keeps the chunks it wrote most recently (up to
//! [`RESEND_WINDOW`] bytes, by reference count, no copy) and, on the next connection, writes
//! again the part the destination may not have: the kernel's unacknowledged bytes at the
//! break plus an allowance for the receiver's buffers ([`unacked`]), from the start of the
//! line that cuts into (the whole window where the kernel cannot tell). Those points are
//! counted in `DestStats::resent` and logged.
//!
//! A destination that drops the connection on one record (carbon-cache on a line it cannot
//! take) would get that record again on every connection and nothing after it. When
//! [`STUCK_BREAKS`] breaks in a row each resume before where the previous connection had got
//! to, the writer backs off and then sends the suspect records one at a time; the one after
//! which the connection breaks goes to [`dead_letter`], and sending goes on. Reconnect-loop
//! log lines are throttled to one per [`LOG_EVERY`] with counts.
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
use super::tls::{Conn, DestTls};
use super::{dead_letter, unacked};
use super::{Chunk, DestAddr, DestConfig, DestShared};
use crate::shutdown::Shutdown;

/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A connect that takes longer than this is treated as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Chunks gathered into one vectored write (Linux accepts up to 1024 iovecs).
const MAX_IOV: usize = 64;
/// An idle writer woken by a chunk smaller than this yields once before writing, so the
/// small batches of other requests ready at that moment share its write. Measured with
/// 100-line batches: `writev` per request 1.70 → 1.43, 1.04-1.07x points per CPU-s. A 1 ms
/// linger instead made it 0.85x: with the default 4096-point queue the queue filled
/// while the writer slept, and requests waited for room.
const COALESCE_BELOW: usize = 64 << 10;
/// Bytes of recently written chunks kept to be written again after a broken connection:
/// enough to cover a full local send buffer plus the receiver's receive buffer (Linux
/// autotunes them up to 4 MiB and 6 MiB).
pub const RESEND_WINDOW: usize = 16 << 20;
/// A resend window at most this large is not trimmed to what the connection holds
/// ([`Pending::trim`]): the two socket queries are not worth it for less.
const TRIM_FROM: usize = 1 << 20;
/// Chunks kept in the resend window at most: many tiny chunks (a destination that
/// gets a few lines per batch) must not pin their buffers' memory.
pub const RESEND_CHUNKS: usize = 1024;
/// Bytes read back from the spool at a time.
pub const SPOOL_READ: usize = 4 << 20;
/// Breaks in a row at the same place before the writer probes for the record causing them.
const STUCK_BREAKS: u32 = 3;
/// While probing, how long a record must stay on an open connection, once the peer's kernel
/// acknowledged it, to be taken as accepted (a receiver that refuses a line closes at once).
const PROBE_GRACE: Duration = Duration::from_millis(250);
/// Longest wait for the peer's kernel to acknowledge a probed record.
const PROBE_ACK_WAIT: Duration = Duration::from_secs(5);
/// At most one line per this for each kind of reconnect-loop log line.
const LOG_EVERY: Duration = Duration::from_secs(5);

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
    /// Position in the stream of written bytes: grows with every write and moves back by
    /// what a break re-queues, so "did a connection get past what it started with" is a
    /// comparison of two positions.
    pos: u64,
    /// The largest receive window the peer advertised on the current connection: how far
    /// its window is below this tells how much it holds unread ([`unacked::at_risk`]).
    max_window: u32,
}

impl Pending {
    fn new() -> Self {
        Pending {
            items: VecDeque::new(),
            front_off: 0,
            recent: VecDeque::new(),
            recent_bytes: 0,
            pos: 0,
            max_window: 0,
        }
    }

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

    /// Drops the oldest chunks the destination can no longer lose: those wholly before
    /// the last `keep` bytes, `keep` being what [`unacked::at_risk`] says is at risk now.
    ///
    /// Sound because a byte that is neither unacknowledged nor held by the peer now can
    /// never be again: whatever is at risk at a later break was at risk now or written
    /// since, and the window keeps both (what was at risk now, and every later write). So
    /// the window follows what the connection really holds instead of a fixed
    /// [`RESEND_WINDOW`] per destination (16 MiB each, copied shares under hash-route:
    /// three destinations kept 48 MiB for a receiver that kept up).
    fn trim(&mut self, keep: usize) {
        while let Some(front) = self.recent.front() {
            if self.recent_bytes - front.data.len() < keep {
                break;
            }
            self.recent_bytes -= front.data.len();
            self.recent.pop_front();
        }
    }

    /// After a broken connection: the last `at_risk` bytes written (all of the resend
    /// window when `None`) go out again, from the start of the line they cut into. Returns
    /// the points that will be written twice.
    fn requeue_after_break(&mut self, at_risk: Option<usize>) -> u64 {
        let mut budget = at_risk.unwrap_or(usize::MAX);
        let mut again = 0;
        let mut requeued = 0;
        if let Some(front) = self.items.front() {
            let off = self.front_off;
            let from = if budget >= off {
                0
            } else {
                line_start(&front.chunk.data, off - budget)
            };
            again += newlines(&front.chunk.data[from..off]);
            requeued += off - from;
            budget = budget.saturating_sub(off - from);
            self.front_off = from;
        }
        while budget > 0 {
            let Some(chunk) = self.recent.pop_back() else {
                break;
            };
            let len = chunk.data.len();
            let chunk = if len <= budget {
                chunk
            } else {
                let from = line_start(&chunk.data, len - budget);
                let data = chunk.data.slice(from..);
                Chunk {
                    points: newlines(&data),
                    data,
                }
            };
            budget -= chunk.data.len().min(budget);
            requeued += chunk.data.len();
            again += chunk.points;
            self.items.push_front(Item {
                chunk,
                origin: Origin::Resend,
            });
        }
        // What was not re-queued reached the destination: it leaves the window.
        self.recent.clear();
        self.recent_bytes = 0;
        self.pos -= (requeued as u64).min(self.pos);
        again
    }
}

/// Where the line holding byte `at` of `data` starts.
fn line_start(data: &[u8], at: usize) -> usize {
    memchr::memrchr(b'\n', &data[..at]).map_or(0, |i| i + 1)
}

fn newlines(data: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', data).count() as u64
}

/// Log lines of a reconnect loop: the first at once, then at most one per
/// [`LOG_EVERY`] with what happened in between (a destination that drops every
/// connection must not write thousands of lines a second).
#[derive(Default)]
struct Throttle {
    next: Option<Instant>,
    events: u64,
    points: u64,
}

impl Throttle {
    /// Notes one event of `points`; when a line may be logged now, returns the events
    /// and points since the last line (this one included).
    fn note(&mut self, points: u64) -> Option<(u64, u64)> {
        self.events += 1;
        self.points += points;
        let now = Instant::now();
        if self.next.is_some_and(|t| now < t) {
            return None;
        }
        self.next = Some(now + LOG_EVERY);
        let out = (self.events, self.points);
        (self.events, self.points) = (0, 0);
        Some(out)
    }
}

/// Consecutive breaks that did not get past what the connection started by
/// re-sending (the poison-record loop) before the writer looks for the record.
struct Stuck {
    /// Highest stream position written before the last break; `None` right after a
    /// record was set aside (positions moved).
    high: Option<u64>,
    /// Breaks in a row without progress.
    breaks: u32,
    /// While probing: the suspect records end at this position.
    probe_until: Option<u64>,
    /// Pause before reconnecting after a break without progress.
    backoff: Duration,
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
    /// Detects a connection that keeps breaking at the same place.
    stuck: Stuck,
    /// "Destination error" lines.
    error_log: Throttle,
    /// "Connected to destination" lines.
    connect_log: Throttle,
    /// "re-sending N points" lines.
    resend_log: Throttle,
    /// `-replay-rate`: the pace of spool reads (`None`: as fast as the destination takes).
    pace: Option<super::replay::ReplayPace>,
    /// `-destination-tls`: connections are TLS ([`super::tls`]).
    tls: Option<DestTls>,
}

/// Runs until the memory queue is drained after shutdown (or the drain timeout passes),
/// then closes the spool. From `config` it takes the drain timeout, `-replay-rate` and TLS.
pub async fn run(
    dest: Arc<DestShared>,
    addr: DestAddr,
    rx: mpsc::UnboundedReceiver<Chunk>,
    reclaim: super::ReclaimRx,
    shutdown: Shutdown,
    config: DestConfig,
) {
    let spool = dest.spool().cloned();
    let mut w = Writer {
        dest,
        spool: spool.clone(),
        rx,
        reclaim,
        shutdown,
        drain_timeout: config.drain_timeout,
        deadline: None,
        pending: Pending::new(),
        closed: false,
        stuck: Stuck {
            high: None,
            breaks: 0,
            probe_until: None,
            backoff: MIN_BACKOFF,
        },
        error_log: Throttle::default(),
        connect_log: Throttle::default(),
        resend_log: Throttle::default(),
        pace: config.replay_rate.map(super::replay::ReplayPace::new),
        tls: config.tls.filter(|_| config.tls_all || addr.tls),
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
        loop {
            let Some(mut stream) = self.connect(&addr).await else {
                return;
            };
            // The probe has no drain deadline of its own: during shutdown, plain sending.
            let ended = if self.stuck.probe_until.is_some() && self.deadline.is_none() {
                match self.probe(&mut stream).await {
                    Ok(()) => self.serve(&mut stream).await,
                    Err(e) => Err(e),
                }
            } else {
                self.serve(&mut stream).await
            };
            let err = match ended {
                Ok(()) => return,
                Err(Ended::Abandon) => return self.abandon().await,
                Err(Ended::Broken(e)) => e,
            };
            self.dest.stats.errors.fetch_add(1, Ordering::Relaxed);
            self.dest.stats.connected.store(false, Ordering::Relaxed);
            // A TLS failure (an alert: the peer refused our certificate after the handshake,
            // as TLS 1.3 lets it) means the peer discarded what its kernel acknowledged.
            let refused = super::tls::session_failed(&err);
            if let Some((n, _)) = self.error_log.note(0) {
                let err = match refused {
                    true => super::tls::describe(&err),
                    false => err.to_string(),
                };
                tracing::warn!("Destination error: {target}: {err}, retrying{}", more(n));
            }
            let pause = self.after_break(&target, &stream, refused);
            drop(stream);
            if let Some(pause) = pause {
                self.pause(pause).await;
            }
        }
    }

    /// Connects, retrying with backoff; during a drain, gives up at the deadline (`None`).
    async fn connect(&mut self, addr: &DestAddr) -> Option<Conn> {
        let target = addr.host_port();
        let mut backoff = MIN_BACKOFF;
        let stream = loop {
            if let Some(d) = self.deadline {
                if self.memory_drained() {
                    return None;
                }
                if Instant::now() >= d {
                    self.abandon().await;
                    return None;
                }
            }
            let err = match self.open(addr, &target).await {
                Ok(s) => break s,
                Err(e) => e,
            };
            self.dest.stats.errors.fetch_add(1, Ordering::Relaxed);
            self.dest
                .stats
                .consecutive_failures
                .fetch_add(1, Ordering::Relaxed);
            if let Some((n, _)) = self.error_log.note(0) {
                tracing::warn!("Destination error: {target}: {err}, retrying{}", more(n));
            }
            self.pause(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        self.dest
            .stats
            .consecutive_failures
            .store(0, Ordering::Relaxed);
        self.dest.stats.connected.store(true, Ordering::Relaxed);
        if let Some((n, _)) = self.connect_log.note(0) {
            let over = if self.tls.is_some() { " over TLS" } else { "" };
            tracing::info!("Connected to destination {target}{over}{}", more(n));
        }
        Some(stream)
    }

    /// One attempt: TCP, then the TLS handshake with `-destination-tls`. The error
    /// names the cause in one line.
    async fn open(&self, addr: &DestAddr, target: &str) -> Result<Conn, String> {
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("connect to {target} timed out")),
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Conn::Plain(tcp));
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, tls.handshake(&addr.host, tcp)).await {
            Ok(r) => r,
            Err(_) => Err("TLS handshake timed out (is it a plaintext port?)".into()),
        }
    }

    /// Sleeps `pause` (cut short by the drain deadline), answering shutdown and reclaim.
    async fn pause(&mut self, pause: Duration) {
        let pause = match self.deadline {
            Some(d) => pause.min(d.saturating_duration_since(Instant::now())),
            None => pause,
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
    }

    /// Writes what comes until the connection breaks (`Broken`), the memory queue is
    /// drained at shutdown or closed (`Ok`), or the drain deadline passes (`Abandon`).
    async fn serve(&mut self, stream: &mut Conn) -> Result<(), Ended> {
        loop {
            if self.pending.items.is_empty() && !self.fill().await {
                if self.deadline.is_some() || self.closed {
                    // Memory queue drained; the spool stays on disk for the next start.
                    return Ok(());
                }
                let spool = self.spool.clone();
                tokio::select! {
                    c = self.rx.recv() => match c {
                        Some(c) => {
                            let small = c.data.len() < COALESCE_BELOW;
                            self.pending.items.push_back(Item { chunk: c, origin: Origin::Memory });
                            if small {
                                // Lets the tasks that are ready (other requests) queue theirs
                                // first, so they share this write.
                                tokio::task::yield_now().await;
                            }
                        }
                        None => { self.closed = true; continue; }
                    },
                    _ = async { spool.as_ref().expect("guarded").published().await }, if spool.is_some() => continue,
                    e = stream.peer_closed() => return Err(Ended::Broken(e)),
                    _ = self.shutdown.recv() => {
                        self.deadline = Some(Instant::now() + self.drain_timeout);
                        continue;
                    }
                }
            }
            self.top_up();
            let written = match self.deadline {
                None => write_pending(stream, &mut self.pending, &self.dest).await,
                Some(d) => match tokio::time::timeout_at(
                    d,
                    write_pending(stream, &mut self.pending, &self.dest),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => return Err(Ended::Abandon),
                },
            };
            written.map_err(Ended::Broken)?;
        }
    }

    /// After a break: re-queues what the destination may not have (see [`unacked`]; the
    /// whole resend window when the peer `refused` the TLS session),
    /// and tells whether this connection got past what it started by re-sending. If
    /// not, returns how long to wait before reconnecting, and after [`STUCK_BREAKS`]
    /// such breaks in a row arms the probe that finds the record causing them.
    fn after_break(&mut self, target: &str, stream: &Conn, refused: bool) -> Option<Duration> {
        let high = self.pending.pos;
        let at_risk = match refused {
            // The kernel's figures say what arrived, not what the peer kept: all again.
            true => None,
            false => unacked::at_risk(stream.tcp(), self.pending.max_window)
                .map(|n| n + stream.tls_slack()),
        };
        self.pending.max_window = 0;
        let again = self.pending.requeue_after_break(at_risk);
        if again > 0 {
            self.dest.stats.resent.fetch_add(again, Ordering::Relaxed);
            if let Some((n, points)) = self.resend_log.note(again) {
                tracing::warn!(
                    "Destination {target}: connection lost, re-sending {points} points written \
                     just before (at-least-once: the destination may receive them twice){}",
                    more(n)
                );
            }
        }
        let resume = self.pending.pos;
        let stuck = self.stuck.high.is_some_and(|h| resume < h);
        self.stuck.high = Some(self.stuck.high.map_or(high, |h| h.max(high)));
        if !stuck {
            self.stuck.breaks = 0;
            self.stuck.backoff = MIN_BACKOFF;
            return None;
        }
        self.stuck.breaks += 1;
        if self.stuck.breaks >= STUCK_BREAKS && self.stuck.probe_until.is_none() {
            self.stuck.probe_until = self.stuck.high;
            tracing::warn!(
                "Destination {target}: the connection broke {} times in a row before getting \
                 past the same data; sending the next records one at a time to find the one \
                 it refuses (it goes to dead-letter)",
                self.stuck.breaks
            );
        }
        let pause = self.stuck.backoff;
        self.stuck.backoff = (pause * 2).min(MAX_BACKOFF);
        Some(pause)
    }

    /// Sends the suspect records one at a time, each only once the previous one was
    /// acknowledged and the connection stayed open for [`PROBE_GRACE`]. The record after
    /// which the connection breaks is set aside ([`dead_letter`]); once past the suspect
    /// range, normal sending resumes. A peer that closes before it is sent anything
    /// refuses connections, not a record: nothing is set aside then.
    async fn probe(&mut self, stream: &mut Conn) -> Result<(), Ended> {
        if let Ok(e) = tokio::time::timeout(PROBE_GRACE, stream.peer_closed()).await {
            return Err(Ended::Broken(e));
        }
        while let Some(until) = self.stuck.probe_until {
            if self.pending.pos >= until || (self.pending.items.is_empty() && !self.fill().await) {
                break;
            }
            if let Err(e) = self.probe_front(stream).await {
                // A TLS session the peer ended (our certificate refused) is not about a record.
                if !super::tls::session_failed(&e) {
                    self.set_aside_front().await;
                }
                return Err(Ended::Broken(e));
            }
        }
        self.stuck.probe_until = None;
        self.stuck.breaks = 0;
        Ok(())
    }

    /// Writes the front record alone and waits until it is acknowledged and the
    /// connection stays open for [`PROBE_GRACE`]; then completes it.
    async fn probe_front(&mut self, stream: &mut Conn) -> io::Result<()> {
        let item = self.pending.items.front().expect("filled");
        let rest = item.chunk.data.slice(self.pending.front_off..);
        stream.write_all(&rest).await?;
        stream.flush().await?;
        // Wait for the peer's kernel to acknowledge it, noticing a close meanwhile.
        let until = Instant::now() + PROBE_ACK_WAIT;
        while unacked::unacknowledged(stream.tcp()).is_some_and(|n| n > 0) && Instant::now() < until
        {
            let tick = Duration::from_millis(5);
            if let Ok(e) = tokio::time::timeout(tick, stream.peer_closed()).await {
                return Err(e);
            }
        }
        if let Ok(e) = tokio::time::timeout(PROBE_GRACE, stream.peer_closed()).await {
            return Err(e);
        }
        self.pending.pos += rest.len() as u64;
        let item = self.pending.items.pop_front().expect("filled");
        self.pending.front_off = 0;
        complete(&item, &self.dest);
        self.pending.remember(item.chunk);
        Ok(())
    }

    /// The front record is the one the destination refuses: out of the queue (its
    /// accounting released as if written), into [`dead_letter`].
    async fn set_aside_front(&mut self) {
        let Some(item) = self.pending.items.pop_front() else {
            return;
        };
        let data = item.chunk.data.slice(self.pending.front_off..);
        self.pending.front_off = 0;
        match item.origin {
            Origin::Memory => {
                self.dest
                    .queued
                    .fetch_sub(item.chunk.points, Ordering::AcqRel);
                super::space_freed().notify_waiters();
            }
            Origin::Spool(pos) => {
                if let Some(s) = self.dest.spool() {
                    s.delivered(pos);
                }
            }
            Origin::Resend => {}
        }
        let chunk = Chunk {
            points: newlines(&data),
            data,
        };
        dead_letter::set_aside(&self.dest, chunk).await;
        // Positions moved: the next break starts a new judgement.
        self.stuck = Stuck {
            high: None,
            breaks: 0,
            probe_until: None,
            backoff: MIN_BACKOFF,
        };
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
        if !self.paced().await {
            return !self.pending.items.is_empty();
        }
        let size = self
            .pace
            .as_ref()
            .map_or(SPOOL_READ, |p| p.read_size(SPOOL_READ));
        let read = {
            let spool = spool.clone();
            tokio::task::spawn_blocking(move || spool.read(size)).await
        };
        match read {
            Ok(Ok(records)) => {
                let got = !records.is_empty();
                if let Some(p) = self.pace.as_mut() {
                    p.note(records.iter().map(|(c, _)| c.points).sum());
                }
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

    /// Waits until `-replay-rate` allows the next spool read. False when the wait ended
    /// otherwise: a live chunk arrived (it goes first, and is in `pending` now), the
    /// queue closed, or shutdown started.
    async fn paced(&mut self) -> bool {
        let Some(at) = self.pace.as_ref().map(|p| p.ready_at()) else {
            return true;
        };
        if at <= std::time::Instant::now() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => true,
            c = self.rx.recv() => {
                match c {
                    Some(c) => self.pending.items.push_back(Item { chunk: c, origin: Origin::Memory }),
                    None => self.closed = true,
                }
                false
            }
            _ = self.shutdown.recv() => {
                self.deadline = Some(Instant::now() + self.drain_timeout);
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
        let name = self.dest.name();
        let failed = match &self.spool {
            None => points,
            Some(spool) => {
                let failed = spool_all(spool, &memory).await;
                self.dest
                    .stats
                    .spooled
                    .fetch_add(points - failed, Ordering::Relaxed);
                tracing::info!(
                    "Destination {name}: drain timeout, {} points moved to the spool for the next start",
                    points - failed
                );
                failed
            }
        };
        if failed > 0 {
            self.dest
                .stats
                .abandoned
                .fetch_add(failed, Ordering::Relaxed);
            let what = match self.spool {
                Some(_) => "could not be written to the spool",
                None => "undelivered",
            };
            tracing::error!(
                "Destination {name}: drain timeout, {failed} points {what} at shutdown"
            );
        }
    }
}

/// Appends `memory` to the spool past its cap (shutdown must not lose them to a full
/// spool); returns the points whose append failed.
async fn spool_all(spool: &Spool, memory: &[Chunk]) -> u64 {
    let mut waits = Vec::with_capacity(memory.len());
    for c in memory {
        spool.reserve_forced(spool::record_size(c.data.len()));
        waits.push(spool.append(c));
    }
    let mut failed = 0u64;
    for (c, w) in memory.iter().zip(waits) {
        if !matches!(w.await, Ok(Ok(()))) {
            failed += c.points;
        }
    }
    failed
}

/// Writes every pending chunk, several per syscall. A chunk is complete once its last byte
/// is handed to the kernel: memory chunks leave the queue accounting, spool chunks move the
/// spool's delivered position, and every chunk enters the resend window.
async fn write_pending(
    stream: &mut Conn,
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
        pending.pos += n as u64;
        if let Some(w) = unacked::peer_window(stream.tcp()) {
            pending.max_window = pending.max_window.max(w);
        }
        let mut left = n;
        while left > 0 {
            let rest = pending.items[0].chunk.data.len() - pending.front_off;
            if left >= rest {
                left -= rest;
                let item = pending.items.pop_front().expect("not empty");
                pending.front_off = 0;
                complete(&item, dest);
                pending.remember(item.chunk);
            } else {
                pending.front_off += left;
                left = 0;
            }
        }
        if pending.recent_bytes > TRIM_FROM {
            if let Some(keep) = unacked::at_risk(stream.tcp(), pending.max_window) {
                pending.trim(keep + stream.tls_slack());
            }
        }
    }
    // TLS: what rustls could not pass on to the socket yet must not wait for the next
    // batch (plain TCP has nothing to flush).
    stream.flush().await
}

/// A chunk's last byte was handed to the kernel: memory chunks leave the queue
/// accounting, spool chunks move the spool's delivered position.
fn complete(item: &Item, dest: &DestShared) {
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
}

/// How a connection's service ended other than by a clean finish.
enum Ended {
    /// The connection broke: reconnect.
    Broken(io::Error),
    /// The drain deadline passed: spool or count what is left.
    Abandon,
}

/// " (N more since the last report)" for a throttled log line that stands for several events.
fn more(events: u64) -> String {
    if events > 1 {
        format!(" ({} more since the last report)", events - 1)
    } else {
        String::new()
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

    fn pending() -> Pending {
        Pending::new()
    }

    /// Queues `s` as a chunk taken from the memory queue, not yet written.
    fn queue(p: &mut Pending, s: &str) {
        p.items.push_back(Item {
            chunk: chunk(s),
            origin: Origin::Memory,
        });
    }

    #[test]
    fn a_break_resends_recent_chunks_then_the_cut_one_from_its_start() {
        let mut p = pending();
        p.remember(chunk("a 1 1\nb 1 1\n"));
        queue(&mut p, "c 1 1\nd 1 1\n");
        p.front_off = 8; // "c 1 1\nd " written
        p.pos = 20;
        assert_eq!(p.requeue_after_break(None), 3);
        assert_eq!(p.front_off, 0);
        assert_eq!(p.pos, 0);
        assert_eq!(p.items.len(), 2);
        assert!(matches!(p.items[0].origin, Origin::Resend));
        assert_eq!(&p.items[1].chunk.data[..], b"c 1 1\nd 1 1\n");
        assert!(p.recent.is_empty());
    }

    #[test]
    fn a_break_resends_only_the_bytes_at_risk_from_a_line_start() {
        let mut p = pending();
        p.remember(chunk("old 1 1\n"));
        p.remember(chunk("a 1 1\nb 1 1\nc 1 1\n"));
        p.pos = 26;
        // 8 bytes at risk cut into "b 1 1\n": it and "c 1 1\n" go again, nothing older.
        assert_eq!(p.requeue_after_break(Some(8)), 2);
        assert_eq!(p.items.len(), 1);
        assert_eq!(&p.items[0].chunk.data[..], b"b 1 1\nc 1 1\n");
        assert_eq!(p.items[0].chunk.points, 2);
        assert_eq!(p.pos, 14);
        assert!(p.recent.is_empty(), "what was not re-queued was received");
    }

    #[test]
    fn a_break_inside_the_front_chunk_restarts_it_at_the_line_at_risk() {
        let mut p = pending();
        p.remember(chunk("old 1 1\n"));
        queue(&mut p, "a 1 1\nb 1 1\nc 1 1\n");
        p.front_off = 15; // up to "c 1" written
        p.pos = 23;
        assert_eq!(
            p.requeue_after_break(Some(4)),
            1,
            "\"b 1 1\\n\" was written"
        );
        assert_eq!(p.front_off, 6, "restarts at \"b\"");
        assert_eq!(p.items.len(), 1, "the older chunk is not re-sent");
        assert_eq!(p.pos, 14);
    }

    #[test]
    fn trimming_keeps_the_newest_whole_chunks_that_cover_the_bytes_at_risk() {
        let mut p = pending();
        for c in ["a 1 1\n", "bb 1 1\n", "ccc 1 1\n", "dddd 1 1\n"] {
            p.remember(chunk(c));
        }
        let total = p.recent_bytes;
        p.trim(total);
        assert_eq!(p.recent.len(), 4, "everything at risk: nothing dropped");
        // 10 bytes at risk: "dddd 1 1\n" (9) is not enough, "ccc 1 1\n" is needed too.
        p.trim(10);
        let kept: Vec<&[u8]> = p.recent.iter().map(|c| &c.data[..]).collect();
        assert_eq!(kept, [&b"ccc 1 1\n"[..], &b"dddd 1 1\n"[..]]);
        assert_eq!(p.recent_bytes, 17);
        p.trim(9);
        assert_eq!(p.recent.len(), 1);
        assert_eq!(p.recent_bytes, 9);
    }

    fn shared() -> DestShared {
        DestShared {
            name: "test".into(),
            cap: u64::MAX,
            queued: std::sync::atomic::AtomicU64::new(0),
            peak: Default::default(),
            spool: None,
            spool_error: None,
            overflow: super::super::Overflow::Refuse,
            drop_log: Default::default(),
            stats: Default::default(),
        }
    }

    /// Writes `chunks` chunks of `size` bytes through `write_pending` to a real peer.
    async fn write_through(
        conn: &mut Conn,
        p: &mut Pending,
        dest: &DestShared,
        chunks: usize,
        size: usize,
    ) {
        let line = "trim.test.metric 1 1700000000\n";
        let body: String = line.repeat(size / line.len());
        for _ in 0..chunks {
            queue(p, &body);
            write_pending(conn, p, dest).await.unwrap();
        }
    }

    /// On a real connection the window follows what the peer may not have: a peer that
    /// reads everything leaves little of 48 MiB written; a peer that reads nothing leaves
    /// every byte it holds in the window (16 MiB written: all of it, at most the cap).
    #[tokio::test]
    async fn the_resend_window_follows_what_the_connection_holds() {
        use tokio::io::AsyncReadExt;
        let dest = shared();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A reader that keeps up.
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0usize;
            loop {
                match s.read(&mut buf).await.unwrap() {
                    0 => return n,
                    k => n += k,
                }
            }
        });
        let mut conn = Conn::Plain(TcpStream::connect(addr).await.unwrap());
        // Before Linux 6.2 the kernel does not report the peer's window: nothing is
        // trimmed then (see `unacked::at_risk`).
        let knows_window = unacked::peer_window(conn.tcp()).is_some();
        let mut p = pending();
        write_through(&mut conn, &mut p, &dest, 48, 1 << 20).await;
        let written = p.pos as usize;
        let kept = p.recent_bytes;
        drop(conn);
        assert_eq!(reader.await.unwrap(), written);
        if knows_window {
            assert!(
                kept < RESEND_WINDOW / 2,
                "a peer that keeps up: {kept} bytes kept of {written} written"
            );
        } else {
            assert!(
                kept >= RESEND_WINDOW - (1 << 20),
                "the peer's window unknown: {kept} bytes kept of {written} written"
            );
        }

        // A peer that accepts and reads nothing: all it holds stays at risk.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stalled = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let _ = rx.await;
            drop(s);
        });
        let mut conn = Conn::Plain(TcpStream::connect(addr).await.unwrap());
        let mut p = pending();
        // As much as the two kernels take (a write that would block ends the loop).
        let line = "trim.test.metric 1 1700000000\n";
        let body: String = line.repeat((256 << 10) / line.len());
        let mut written = 0usize;
        for _ in 0..64 {
            queue(&mut p, &body);
            match tokio::time::timeout(
                Duration::from_millis(300),
                write_pending(&mut conn, &mut p, &dest),
            )
            .await
            {
                Ok(r) => {
                    r.unwrap();
                    written = p.pos as usize;
                }
                Err(_) => break,
            }
        }
        assert!(
            written > 2 * TRIM_FROM,
            "the kernels took only {written} bytes"
        );
        assert!(
            p.recent_bytes >= written.min(RESEND_WINDOW - (256 << 10)),
            "a peer that read nothing: {} bytes kept of {written} written",
            p.recent_bytes
        );
        let _ = tx.send(());
        stalled.await.unwrap();
    }

    #[test]
    fn a_throttled_line_reports_what_it_stood_for() {
        let mut t = Throttle::default();
        assert_eq!(t.note(5), Some((1, 5)));
        assert_eq!(t.note(7), None);
        assert_eq!(t.note(1), None);
        t.next = Some(Instant::now());
        assert_eq!(t.note(2), Some((3, 10)));
    }
}
