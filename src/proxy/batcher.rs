//! Groups the lines of all client connections into batches of `-flush-size` lines
//! (or whatever arrived within `-flush-interval`), compresses each once (gzip or zstd,
//! see [`super::compression`]), and hands it to
//! the outbox. The gateway checks the key and decompresses once per batch, so big
//! batches are what make the remote link cheap.

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::compression::Compressor;
use super::queue::{Outbox, Sealed};
use crate::batch::Batch;
use crate::plaintext::{BoxFuture, Full, Intake};
use crate::shutdown::Shutdown;
use crate::stats::Stats;

/// The batch being filled.
#[derive(Default)]
struct Current {
    /// `\n`-terminated lines.
    buf: Vec<u8>,
    lines: usize,
    /// When the first line arrived (the flush-interval clock).
    since: Option<Instant>,
}

/// The proxy's [`Intake`]: the plaintext source offers batches here.
pub struct Batcher {
    current: Mutex<Current>,
    flush_size: usize,
    outbox: Arc<Outbox>,
    stats: Arc<Stats>,
    /// `-console-out`: print lines instead of queueing them for the gateway.
    console: bool,
    /// `-compression`: gzip unless [`Batcher::compress_with`] says otherwise.
    compressor: Arc<Compressor>,
}

/// A full batch taken out of [`Current`], not yet compressed.
struct Raw {
    buf: Vec<u8>,
    lines: usize,
}

impl Batcher {
    /// A batcher sealing every `flush_size` lines into `outbox`.
    pub fn new(flush_size: usize, outbox: Arc<Outbox>, stats: Arc<Stats>, console: bool) -> Self {
        Batcher {
            current: Mutex::new(Current::default()),
            flush_size: flush_size.max(1),
            outbox,
            stats,
            console,
            compressor: Arc::default(),
        }
    }

    /// Seals batches with `compressor` (shared with the gateway client, which learns
    /// whether the gateway takes zstd).
    pub fn compress_with(mut self, compressor: Arc<Compressor>) -> Self {
        self.compressor = compressor;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `batch`'s lines, taking out each batch that reaches the flush size.
    fn append(&self, batch: &Batch) -> Vec<Raw> {
        let mut full = Vec::new();
        let data = batch.data();
        let mut cur = self.lock();
        if cur.since.is_none() {
            cur.since = Some(Instant::now());
        }
        // Copy runs of whole lines: find the byte offset where the batch fills up.
        let mut start = 0usize;
        let mut end = 0usize;
        for (line, _) in batch.lines() {
            end += line.len();
            cur.lines += 1;
            if cur.lines >= self.flush_size {
                cur.buf.extend_from_slice(&data[start..end]);
                start = end;
                full.push(Self::take(&mut cur));
                cur.since = Some(Instant::now());
            }
        }
        cur.buf.extend_from_slice(&data[start..end]);
        if cur.lines == 0 {
            cur.since = None;
        }
        full
    }

    fn take(cur: &mut Current) -> Raw {
        let raw = Raw {
            buf: std::mem::take(&mut cur.buf),
            lines: cur.lines,
        };
        cur.lines = 0;
        cur.since = None;
        raw
    }

    /// Compresses `raw` (on the blocking pool: a 5000-line batch takes milliseconds)
    /// and queues it; with `-console-out`, prints it instead.
    async fn seal(&self, raw: Raw) {
        if raw.lines == 0 {
            return;
        }
        if self.console {
            let _ = tokio::task::spawn_blocking(move || {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&raw.buf);
                let _ = out.flush();
            })
            .await;
            return;
        }
        let points = raw.lines as u64;
        let compressor = self.compressor.clone();
        let body = tokio::task::spawn_blocking(move || compressor.compress(&raw.buf)).await;
        match body {
            Ok(body) => {
                self.outbox
                    .put(Sealed {
                        body: Bytes::from(body),
                        points,
                    })
                    .await
            }
            Err(e) => tracing::error!("Compressing a batch of {points} points failed: {e}"),
        }
    }

    /// Seals the current batch if it is older than `interval`, or whatever it holds
    /// when `force` (shutdown).
    pub async fn flush_if_due(&self, interval: Duration, force: bool) {
        let raw = {
            let mut cur = self.lock();
            let due = cur.since.is_some_and(|s| s.elapsed() >= interval);
            if cur.lines == 0 || !(due || force) {
                return;
            }
            Self::take(&mut cur)
        };
        self.seal(raw).await;
    }

    /// Seals batches whose first line is `interval` old, until shutdown.
    pub async fn run_timer(self: Arc<Self>, interval: Duration, mut shutdown: Shutdown) {
        let tick = (interval / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.recv() => return,
            }
            self.flush_if_due(interval, false).await;
        }
    }
}

/// Gzip as the gateway expects it (one member, level 6 like Go's gzip.Writer).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    super::compression::gzip(data, super::compression::GZIP_DEFAULT_LEVEL)
}

impl Intake for Batcher {
    fn offer<'a>(
        &'a self,
        batch: &'a Batch,
        _: &'a mut crate::plaintext::Prepared,
    ) -> BoxFuture<'a, Result<(), Full>> {
        Box::pin(async move {
            if !self.console && !self.outbox.has_room() {
                return Err(Full);
            }
            let full = self.append(batch);
            self.stats
                .received
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for raw in full {
                self.seal(raw).await;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gunzip(data: &[u8]) -> String {
        use std::io::Read;
        let mut s = String::new();
        flate2::read::GzDecoder::new(data)
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    #[tokio::test]
    async fn batches_are_cut_at_flush_size_and_on_time() {
        let outbox = Arc::new(Outbox::new(1_000_000, None));
        let b = Batcher::new(3, outbox.clone(), Arc::new(Stats::default()), false);
        let (batch, _) =
            Batch::from_plaintext(b"a 1 1\nb 2 2\nc 3 3\nd 4 4\ne 5 5\n".to_vec(), None);
        b.offer(&batch, &mut Default::default()).await.unwrap();
        assert_eq!(outbox.queued_batches(), 1);
        b.flush_if_due(Duration::from_secs(3600), false).await;
        assert_eq!(outbox.queued_batches(), 1, "not due yet");
        b.flush_if_due(Duration::ZERO, false).await;
        assert_eq!(outbox.queued_batches(), 2);
        let (_t, mut sd) = Shutdown::new();
        let first = outbox.take(true, &mut sd).await.unwrap();
        assert_eq!(gunzip(&first.sealed.body), "a 1 1\nb 2 2\nc 3 3\n");
        assert_eq!(first.sealed.points, 3);
        let second = outbox.take(true, &mut sd).await.unwrap();
        assert_eq!(gunzip(&second.sealed.body), "d 4 4\ne 5 5\n");
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_offers() {
        let outbox = Arc::new(Outbox::new(2, None));
        let b = Batcher::new(2, outbox.clone(), Arc::new(Stats::default()), false);
        let (batch, _) = Batch::from_plaintext(b"a 1 1\nb 2 2\n".to_vec(), None);
        b.offer(&batch, &mut Default::default()).await.unwrap();
        assert_eq!(b.offer(&batch, &mut Default::default()).await, Err(Full));
    }
}
