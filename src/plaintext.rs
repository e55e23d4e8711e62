//! The TCP plaintext source shared by the relay (`polymur`) and `polymur-proxy`:
//! Graphite clients connect and write `<metric> <value> <timestamp>\n` lines.
//!
//! Each connection reads into one large buffer, cuts it after its last `\n` and turns
//! the complete part into a [`Batch`] without allocating per line; the partial last line
//! is carried into the next read. A batch is offered to an [`Intake`] (the relay's
//! pipeline, the proxy's batcher). When the intake is full, the connection keeps the
//! batch, stops reading and retries: TCP flow control then slows the client down. Data
//! is never dropped to make room, and memory stays bounded: one read buffer per busy
//! connection, and at most `max_inflight_points` points waiting for admission in all.

mod stream;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use self::stream::{ClientStream, Filled};
use crate::batch::Batch;
use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;
use crate::stats::Stats;

/// Boxed future, so that intakes can be used as `dyn Intake`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The intake cannot hold the batch now; offer it again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Work an intake did for a batch it refused, kept by the caller for the next
/// offer of the same batch (the pipeline's routing: an md5 per line on a hash ring).
#[derive(Default)]
pub struct Prepared(Option<crate::pipeline::Routed>);

/// What [`Intake::offer`] returns: the batch taken whole, or [`Full`].
pub type Offer<'a> = BoxFuture<'a, Result<(), Full>>;

/// Where a plaintext source delivers its batches.
pub trait Intake: Send + Sync + 'static {
    /// Takes `batch` whole, or refuses it whole with [`Full`]. Offer the same batch
    /// again with the same `prepared`.
    fn offer<'a>(&'a self, batch: &'a Batch, prepared: &'a mut Prepared) -> Offer<'a>;

    /// True when [`offer`](Self::offer) itself waits for room before refusing (the
    /// pipeline's admission does), so the source offers again at once instead of pausing.
    fn waits_for_room(&self) -> bool {
        false
    }
}

/// The relay's intake: the routing pipeline, all-or-nothing per batch, through its one
/// admission path ([`Pipeline::admit_routed`]): it waits a moment for room and until the
/// batch is held (spool appends written), so a slow or full disk slows the clients down
/// like a full queue does.
impl Intake for Pipeline {
    fn offer<'a>(&'a self, batch: &'a Batch, prepared: &'a mut Prepared) -> Offer<'a> {
        Box::pin(async move {
            let routed = prepared.0.get_or_insert_with(|| self.route(batch));
            let deadline = tokio::time::Instant::now() + crate::pipeline::ADMIT_WAIT;
            match self.admit_routed(routed, batch, deadline).await {
                Ok(crate::pipeline::Held) => Ok(()),
                Err(refused) => {
                    tracing::debug!("Batch of {} points not queued: {refused}", batch.len());
                    Err(Full)
                }
            }
        })
    }

    fn waits_for_room(&self) -> bool {
        true
    }
}

/// Bytes reserved for each read; also roughly the largest batch one read produces.
const READ_CHUNK: usize = 128 * 1024;
/// A line longer than this (no `\n` in sight) is garbage: it is counted and skipped.
const MAX_LINE: usize = 64 * 1024;
/// First pause before offering a refused batch again to an intake that does not wait for
/// room itself (the proxy's batcher); doubles up to [`MAX_RETRY_PAUSE`].
const MIN_RETRY_PAUSE: Duration = Duration::from_millis(5);
/// Longest pause between offers of a refused batch.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// At shutdown, how long a connection may keep offering a refused batch, and how long
/// the source waits for its connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// At shutdown a connection is still read for up to this long, until its client pauses
/// for [`DRAIN_IDLE`]: what a client wrote before the signal sits in the kernel's buffer,
/// and for the client it was sent (a restart used to drop it: 100 000 of 200 000 lines
/// written just before a SIGTERM). Complete lines read this way are delivered as usual.
const DRAIN_READ: Duration = Duration::from_secs(2);
/// See [`DRAIN_READ`].
const DRAIN_IDLE: Duration = Duration::from_millis(100);
/// A TLS client must finish its handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of a plaintext listener.
#[derive(Clone, Debug)]
pub struct PlaintextConfig {
    /// Close a connection that sent nothing for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Points read but not yet admitted, across all connections, before reading pauses.
    pub max_inflight_points: u64,
    /// What the batch builder checks and rewrites (`-max-line-bytes`, `-tag-normalize`).
    pub rules: crate::line::LineRules,
}

/// One plaintext listener's shared state.
pub struct PlaintextSource {
    intake: Arc<dyn Intake>,
    stats: Arc<Stats>,
    config: PlaintextConfig,
    /// Permits are points: a connection holds permits for the batch it is offering, so
    /// that thousands of blocked connections cannot each hold a full buffer of lines.
    inflight: Arc<Semaphore>,
    /// Points currently waiting for admission (self-metrics: incoming queue size).
    waiting: AtomicU64,
    /// Open connections.
    connections: AtomicU64,
}

impl PlaintextSource {
    /// A source delivering to `intake`, counting invalid lines in `stats`.
    pub fn new(intake: Arc<dyn Intake>, stats: Arc<Stats>, config: PlaintextConfig) -> Arc<Self> {
        let permits = config
            .max_inflight_points
            .clamp(1, Semaphore::MAX_PERMITS as u64) as usize;
        Arc::new(PlaintextSource {
            intake,
            stats,
            inflight: Arc::new(Semaphore::new(permits)),
            config,
            waiting: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        })
    }

    /// Points read from clients and waiting for the intake to take them.
    pub fn waiting_points(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The limit of [`waiting_points`](Self::waiting_points).
    pub fn max_waiting_points(&self) -> u64 {
        self.config.max_inflight_points
    }

    /// Open client connections.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Accepts connections until shutdown, then lets every connection hand over the
    /// lines it has read (up to a grace period) and returns.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: Shutdown) {
        self.serve_with(listener, None, shutdown).await
    }

    /// Like [`serve`](Self::serve), over TLS with the slot's current acceptor (SIGHUP
    /// swaps it; see [`crate::ingest::tls`]). A client that fails the handshake (no
    /// certificate when one is required, one not signed by the CA) sends nothing.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        tls: crate::ingest::TlsSlot,
        shutdown: Shutdown,
    ) {
        self.serve_with(listener, Some(tls), shutdown).await
    }

    async fn serve_with(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<crate::ingest::TlsSlot>,
        mut shutdown: Shutdown,
    ) {
        let mut conns = JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let Some((stream, peer)) = crate::net::accept(&listener, &mut shutdown).await else {
                break;
            };
            let source = self.clone();
            let shutdown = shutdown.clone();
            let acceptor = tls.as_ref().map(|slot| (**slot.load()).clone());
            conns.spawn(async move {
                source.connections.fetch_add(1, Ordering::Relaxed);
                match acceptor {
                    None => source.connection(stream, peer, shutdown).await,
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                        match handshake.await {
                            Ok(Ok(tls)) => source.connection(tls, peer, shutdown).await,
                            Ok(Err(e)) => tracing::info!("TLS handshake with {peer} failed: {e}"),
                            Err(_) => tracing::info!("TLS handshake with {peer} timed out"),
                        }
                    }
                }
                source.connections.fetch_sub(1, Ordering::Relaxed);
            });
        }
        drop(listener);
        let all_done = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, all_done)
            .await
            .is_err()
        {
            tracing::warn!(
                "{} client connections still open after {SHUTDOWN_GRACE:?}; closing them",
                conns.len()
            );
            conns.abort_all();
        }
    }

    /// Reads one client until EOF, error, idle timeout or shutdown.
    async fn connection<S: ClientStream>(
        &self,
        mut stream: S,
        peer: SocketAddr,
        mut shutdown: Shutdown,
    ) {
        tracing::debug!("Plaintext connection from {peer}");
        let mut buf: Vec<u8> = Vec::new();
        // True while discarding the rest of an over-long line.
        let mut skipping = false;
        // Set at shutdown: the end of the read that follows it (see DRAIN_READ).
        let mut draining: Option<tokio::time::Instant> = None;
        loop {
            let scan_from = buf.len();
            let filled = match draining {
                None => tokio::select! {
                    f = stream.fill(&mut buf, READ_CHUNK, self.config.idle_timeout) => f,
                    _ = shutdown.recv() => {
                        draining = Some(tokio::time::Instant::now() + DRAIN_READ);
                        continue;
                    }
                },
                Some(until) => {
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        // What is left is a partial line or what came after the window.
                        break;
                    }
                    stream
                        .fill(&mut buf, READ_CHUNK, Some(DRAIN_IDLE.min(left)))
                        .await
                }
            };
            let (eof, failed) = match filled {
                Filled::Data => (false, false),
                Filled::Eof => (true, false),
                Filled::Idle if draining.is_some() => break,
                Filled::Idle => {
                    tracing::debug!("Closing idle connection from {peer}");
                    break;
                }
                Filled::Failed(e) => {
                    tracing::debug!("Connection from {peer}: {e}");
                    (false, true)
                }
            };
            // Where the newly read bytes start (the carried tail holds no `\n`).
            let mut from = scan_from;
            if skipping {
                match memchr::memchr(b'\n', &buf[scan_from..]) {
                    Some(i) => {
                        buf.drain(..scan_from + i + 1);
                        skipping = false;
                    }
                    None => buf.clear(),
                }
                from = 0;
            }
            if eof || failed {
                // A last line without `\n` at a clean EOF is kept whole; after an error
                // it may be cut anywhere, so only complete lines are kept.
                if failed {
                    let keep = memchr::memrchr(b'\n', &buf).map_or(0, |i| i + 1);
                    buf.truncate(keep);
                }
                if !skipping && !buf.is_empty() {
                    self.deliver(std::mem::take(&mut buf), peer, &mut shutdown)
                        .await;
                }
                break;
            }
            match memchr::memrchr(b'\n', &buf[from..]) {
                Some(i) => {
                    let cut = from + i + 1;
                    let tail = buf[cut..].to_vec();
                    buf.truncate(cut);
                    let raw = std::mem::replace(&mut buf, tail);
                    if !self.deliver(raw, peer, &mut shutdown).await {
                        break;
                    }
                }
                None if buf.len() > MAX_LINE.max(self.config.rules.max_line_bytes + 1) => {
                    self.stats.invalid.fetch_add(1, Ordering::Relaxed);
                    self.stats.invalid_by_reason[crate::line::LineError::TooLong.index()]
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("Dropped a line over {MAX_LINE} bytes from {peer} (no newline)");
                    buf = Vec::new();
                    skipping = true;
                }
                None => {}
            }
        }
    }

    /// Validates `raw` and offers it until the intake takes it. False when it had to
    /// be given up (shutdown grace over): the connection is then closed.
    async fn deliver(&self, raw: Vec<u8>, peer: SocketAddr, shutdown: &mut Shutdown) -> bool {
        let (batch, rejects) = Batch::build(raw, None, &self.config.rules);
        let batch = batch.with_source(peer.ip());
        if rejects.count > 0 {
            self.stats.note_invalid(&format!("{peer}"), &rejects);
        }
        if batch.is_empty() {
            return true;
        }
        let points = batch.len() as u64;
        let wanted = points.min(self.config.max_inflight_points.max(1)) as u32;
        let permit = tokio::select! {
            p = self.inflight.acquire_many(wanted) => p.ok(),
            _ = shutdown.recv() => {
                let p = self.inflight.acquire_many(wanted);
                tokio::time::timeout(SHUTDOWN_GRACE, p).await.ok().and_then(Result::ok)
            }
        };
        let Some(_permit) = permit else {
            return self.lost(points, peer);
        };
        self.waiting.fetch_add(points, Ordering::Relaxed);
        let mut pause = MIN_RETRY_PAUSE;
        let mut give_up_at = None;
        let mut prepared = Prepared::default();
        let held = loop {
            if self.intake.offer(&batch, &mut prepared).await.is_ok() {
                break true;
            }
            if shutdown.is_shutdown() {
                let at =
                    *give_up_at.get_or_insert_with(|| tokio::time::Instant::now() + SHUTDOWN_GRACE);
                if tokio::time::Instant::now() >= at {
                    break false;
                }
            }
            if !self.intake.waits_for_room() {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
        };
        self.waiting.fetch_sub(points, Ordering::Relaxed);
        held || self.lost(points, peer)
    }

    /// Logs points given up at shutdown (the client's TCP write had succeeded, so they
    /// must at least be reported). Always false.
    fn lost(&self, points: u64, peer: SocketAddr) -> bool {
        tracing::error!(
            "Shutting down: {points} points from {peer} could not be queued within {SHUTDOWN_GRACE:?} and are lost"
        );
        false
    }
}

/// Binds the plaintext listener, naming the address in the error.
pub async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    crate::net::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::AsyncWriteExt;

    /// Records every line; refuses the first `refuse` offers.
    struct Recorder {
        lines: Mutex<Vec<String>>,
        refuse: AtomicU64,
    }

    impl Intake for Recorder {
        fn offer<'a>(&'a self, batch: &'a Batch, _: &'a mut Prepared) -> Offer<'a> {
            // Decided at once: the recorder never waits for room.
            Box::pin(std::future::ready(self.take(batch)))
        }
    }

    impl Recorder {
        fn take(&self, batch: &Batch) -> Result<(), Full> {
            let refused = self
                .refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if refused.is_ok() {
                return Err(Full);
            }
            let mut l = self.lines.lock().unwrap();
            for (line, _) in batch.lines() {
                l.push(String::from_utf8_lossy(line).trim_end().to_string());
            }
            Ok(())
        }
    }

    async fn run(chunks: Vec<Vec<u8>>, refuse: u64) -> (Vec<String>, u64) {
        let rec = Arc::new(Recorder {
            lines: Mutex::new(Vec::new()),
            refuse: AtomicU64::new(refuse),
        });
        let stats = Arc::new(Stats::default());
        let src = PlaintextSource::new(
            rec.clone(),
            stats.clone(),
            PlaintextConfig {
                idle_timeout: Some(Duration::from_secs(5)),
                max_inflight_points: 1000,
                rules: crate::line::LineRules::default(),
            },
        );
        let (l, addr) = bind("127.0.0.1:0").await.unwrap();
        let (trigger, shutdown) = Shutdown::new();
        let task = tokio::spawn(src.serve(l, shutdown));
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        for chunk in chunks {
            c.write_all(&chunk).await.unwrap();
            c.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.shutdown().await.unwrap();
        drop(c);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while src_done(&rec) < 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        trigger.fire();
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        let lines = rec.lines.lock().unwrap().clone();
        (lines, stats.invalid.load(Ordering::Relaxed))
    }

    fn src_done(rec: &Recorder) -> usize {
        rec.lines.lock().unwrap().len()
    }

    #[tokio::test]
    async fn lines_split_across_reads_arrive_whole_and_last_line_is_kept() {
        let (lines, invalid) = run(
            vec![
                b"a.b 1 10\nc.d 2".to_vec(),
                b" 20\ne.f 3 30\nbad\ng.h 4 40".to_vec(),
            ],
            0,
        )
        .await;
        assert_eq!(lines, vec!["a.b 1 10", "c.d 2 20", "e.f 3 30", "g.h 4 40"]);
        assert_eq!(invalid, 1);
    }

    #[tokio::test]
    async fn refused_batches_are_retried_not_dropped() {
        let (lines, _) = run(vec![b"a.b 1 10\n".to_vec(), b"c.d 2 20\n".to_vec()], 5).await;
        assert_eq!(lines, vec!["a.b 1 10", "c.d 2 20"]);
    }

    #[tokio::test]
    async fn overlong_line_is_skipped_up_to_its_newline() {
        let long = vec![b'x'; MAX_LINE + 10];
        let rest = b"more.x 1 2\nok.line 1 2\n".to_vec();
        let (lines, invalid) = run(vec![b"first 1 2\n".to_vec(), long, rest], 0).await;
        assert_eq!(lines, vec!["first 1 2", "ok.line 1 2"]);
        assert_eq!(invalid, 1);
    }
}
