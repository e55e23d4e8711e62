//! Groups the lines of all client connections into batches of `-flush-size` lines
//! (or whatever arrived within `-flush-interval`) and admits each to the proxy's one
//! destination (the gateway writer, or the console). A batch admitted to the memory queue
//! is compressed first (sealed, gzip or zstd, see [`super::compression`]) and waits there
//! at its wire size; a batch admitted to the spool stays plain lines and is compressed
//! when it is sent, so a spooled batch can go out in whatever the gateway takes by then.
//! The gateway checks the key and decompresses once per batch, so big batches are what
//! make the remote link cheap.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::compression::Compressor;
use crate::batch::Batch;
use crate::dest::{space_freed, Admission, Chunk, Destination};
use crate::plaintext::{Full, Intake, Offer, Prepared};
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
    /// The gateway (or, with `-console-out`, the console).
    dest: Arc<Destination>,
    stats: Arc<Stats>,
    /// Seals (compresses) what goes to the memory queue ([`Self::sealing`]).
    sealer: Option<Arc<Compressor>>,
    /// One permit per batch being sealed at once: the offering connection goes on
    /// reading while its batch is compressed on the blocking pool, and waits only when
    /// every permit is taken.
    sealing_now: Arc<tokio::sync::Semaphore>,
    /// All of `sealing_now`'s permits: holding them all means nothing is being sealed.
    sealing_permits: u32,
}

/// Batches compressed at once (on the blocking pool) for the memory queue: one per core.
fn sealing_permits() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 16))
}

/// A full batch taken out of [`Current`], not yet compressed.
struct Raw {
    buf: Vec<u8>,
    lines: usize,
}

impl Batcher {
    /// A batcher sealing every `flush_size` lines into `dest`.
    pub fn new(flush_size: usize, dest: Arc<Destination>, stats: Arc<Stats>) -> Self {
        let permits = sealing_permits();
        Batcher {
            current: Mutex::new(Current::default()),
            flush_size: flush_size.max(1),
            dest,
            stats,
            sealer: None,
            sealing_now: Arc::new(tokio::sync::Semaphore::new(permits)),
            sealing_permits: permits as u32,
        }
    }

    /// Batches admitted to the memory queue are compressed with `compressor` first, so
    /// they wait there at their wire size (about 13 bytes per point instead of 76: the
    /// default queue of 3.3 M points took some 500 MiB of RSS as plain lines). Batches
    /// that go to the spool stay plain lines, the spool's one format; the writer unseals a
    /// memory batch that must go there, or be split after a 413.
    pub fn sealing(mut self, compressor: Arc<Compressor>) -> Self {
        self.sealer = Some(compressor);
        self
    }

    /// Delivers `chunk`, admitted to the memory queue, compressed when sealing is on: on
    /// the blocking pool, while the caller goes on (it waits only for a free permit). A
    /// compression that fails or panics delivers the plain lines instead (the writer
    /// takes both): the reservation is always used.
    async fn seal_for_memory(&self, chunk: Chunk) {
        let Some(compressor) = self.sealer.clone() else {
            return self.dest.deliver(chunk, Admission::Memory);
        };
        let permit = self
            .sealing_now
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let dest = self.dest.clone();
        tokio::task::spawn_blocking(move || {
            let sealed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                compressor.compress(&chunk.data)
            }));
            let chunk = match sealed {
                Ok(sealed) => Chunk {
                    data: Bytes::from(sealed),
                    points: chunk.points,
                },
                Err(_) => chunk,
            };
            dest.deliver(chunk, Admission::Memory);
            drop(permit);
        });
    }

    /// Waits until every batch being sealed is in the memory queue: at shutdown, before
    /// the destination drains.
    pub async fn sealed(&self) {
        drop(self.sealing_now.acquire_many(self.sealing_permits).await);
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

    /// Takes the full batch out. Its buffer must not carry the spare half a doubling
    /// `Vec` leaves, as long as it lives as it is: until it is sealed, in the memory queue
    /// with `-console-out`, or on its way to the spool (before sealing, plain batches in the
    /// queue took 120 bytes of RSS per 76-byte line). The next batch starts at about this
    /// one's size, and a buffer that still grew past it is shrunk.
    fn take(cur: &mut Current) -> Raw {
        let len = cur.buf.len();
        let mut buf = std::mem::replace(&mut cur.buf, Vec::with_capacity(len + len / 16));
        if buf.capacity() > len + len / 8 {
            buf.shrink_to_fit();
        }
        let raw = Raw {
            buf,
            lines: cur.lines,
        };
        cur.lines = 0;
        cur.since = None;
        raw
    }

    /// Admits `raw` to the destination: its memory queue, or its spool. The lines were
    /// taken from clients already, so a batch that finds no room waits for some (the
    /// offering connection stops reading meanwhile: backpressure); `force` (the last
    /// batch at shutdown) queues it in memory whatever the cap, for the drain to send or
    /// spool.
    async fn seal(&self, raw: Raw, force: bool) {
        if raw.lines == 0 {
            return;
        }
        let chunk = Chunk {
            data: Bytes::from(raw.buf),
            points: raw.lines as u64,
        };
        let mut warned = false;
        loop {
            let freed = space_freed().notified();
            match self.dest.admit(chunk.points, chunk.data.len()) {
                Some(Admission::Spool) => match self.dest.append_spooled(&chunk).await {
                    Ok(Ok(())) => return self.dest.deliver(chunk, Admission::Spool),
                    Ok(Err(e)) if !warned => {
                        warned = true;
                        tracing::warn!("Batch of {} points waits for room: {e}", chunk.points);
                    }
                    _ => {}
                },
                Some(Admission::Memory) => return self.seal_for_memory(chunk).await,
                Some(admission) => return self.dest.deliver(chunk, admission),
                None if force => return self.dest.push_forced(chunk),
                None => {}
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), freed).await;
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
        self.seal(raw, force).await;
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
    fn offer<'a>(&'a self, batch: &'a Batch, _: &'a mut Prepared) -> Offer<'a> {
        Box::pin(async move {
            if !self.dest.has_room() {
                return Err(Full);
            }
            let full = self.append(batch);
            self.stats
                .received
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for raw in full {
                self.seal(raw, false).await;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dest::writer::{Queue, Writer, WriterTask};
    use crate::dest::{DestConfig, SinkKind};
    use crate::shutdown::Shutdown;

    /// A writer kind that never writes: what is admitted stays queued, for inspection.
    #[derive(Default)]
    struct Hold(std::sync::Mutex<Option<Queue>>);

    impl std::fmt::Debug for Hold {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Hold")
        }
    }

    impl Writer for Hold {
        fn name(&self) -> String {
            "hold".into()
        }
        fn run(self: Arc<Self>, queue: Queue) -> WriterTask {
            *self.0.lock().unwrap() = Some(queue);
            Box::pin(async {})
        }
    }

    impl Hold {
        fn next(&self) -> Option<Chunk> {
            self.0.lock().unwrap().as_mut()?.rx.try_recv().ok()
        }
    }

    fn held(cap: u64) -> (Arc<Hold>, Arc<Destination>) {
        let hold = Arc::new(Hold::default());
        let (_t, shutdown) = Shutdown::new();
        let config = DestConfig::in_memory(cap, Duration::from_secs(1));
        let (d, _) = Destination::spawn(SinkKind::Writer(hold.clone()), &config, shutdown);
        (hold, d)
    }

    #[tokio::test]
    async fn batches_are_cut_at_flush_size_and_on_time() {
        let (hold, dest) = held(1_000_000);
        let b = Batcher::new(3, dest.clone(), Arc::new(Stats::default()));
        let (batch, _) =
            Batch::from_plaintext(b"a 1 1\nb 2 2\nc 3 3\nd 4 4\ne 5 5\n".to_vec(), None);
        b.offer(&batch, &mut Default::default()).await.unwrap();
        tokio::task::yield_now().await;
        let first = hold.next().expect("one batch is full");
        assert_eq!(&first.data[..], b"a 1 1\nb 2 2\nc 3 3\n");
        assert_eq!(first.points, 3);
        b.flush_if_due(Duration::from_secs(3600), false).await;
        assert!(hold.next().is_none(), "not due yet");
        b.flush_if_due(Duration::ZERO, false).await;
        assert_eq!(&hold.next().unwrap().data[..], b"d 4 4\ne 5 5\n");
        assert_eq!(dest.queued(), 5);
    }

    /// Batches filled a few lines at a time keep at most an eighth of spare capacity
    /// (a doubling buffer kept up to half of it, for as long as the batch was queued).
    #[tokio::test]
    async fn full_batches_carry_little_spare_capacity() {
        let (_hold, dest) = held(1_000_000);
        let b = Batcher::new(1000, dest, Arc::new(Stats::default()));
        let mut taken = Vec::new();
        for i in 0..5000 {
            let text: String = (0..7)
                .map(|j| format!("servers.host{i}.metric{j}.with.a.longer.name {j} 1700000000\n"))
                .collect();
            let (batch, _) = Batch::from_plaintext(text.into_bytes(), None);
            taken.extend(b.append(&batch));
        }
        assert!(taken.len() >= 30, "{} batches", taken.len());
        for raw in &taken {
            let (len, cap) = (raw.buf.len(), raw.buf.capacity());
            assert_eq!(raw.lines, 1000);
            assert!(cap <= len + len / 8, "{len} bytes in a buffer of {cap}");
        }
    }

    /// With sealing, what reaches the memory queue is compressed, unseals to exactly the
    /// lines offered, in batches of the flush size; `sealed` returns once all are queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sealed_batches_unseal_to_the_lines_offered() {
        use crate::proxy::compression::{is_sealed, unseal, CompressionFlag};
        let (hold, dest) = held(1_000_000);
        let compressor = Arc::new(Compressor::new(CompressionFlag::Gzip, None));
        let b = Batcher::new(100, dest.clone(), Arc::new(Stats::default())).sealing(compressor);
        let text: String = (0..1000)
            .map(|i| format!("sealed.m{i} {i} 1700000000\n"))
            .collect();
        let (batch, _) = Batch::from_plaintext(text.clone().into_bytes(), None);
        b.offer(&batch, &mut Default::default()).await.unwrap();
        b.sealed().await;
        let mut lines = Vec::new();
        while let Some(c) = hold.next() {
            assert!(is_sealed(&c.data), "a memory batch is compressed");
            assert_eq!(c.points, 100);
            let plain = unseal(&c.data).unwrap();
            lines.extend(
                String::from_utf8(plain)
                    .unwrap()
                    .lines()
                    .map(str::to_string),
            );
        }
        lines.sort();
        let mut want: Vec<String> = text.lines().map(str::to_string).collect();
        want.sort();
        assert_eq!(lines, want);
        assert_eq!(dest.queued(), 1000);
    }

    #[tokio::test]
    async fn a_full_destination_refuses_offers() {
        let (_hold, dest) = held(2);
        let b = Batcher::new(2, dest, Arc::new(Stats::default()));
        let (batch, _) = Batch::from_plaintext(b"a 1 1\nb 2 2\n".to_vec(), None);
        b.offer(&batch, &mut Default::default()).await.unwrap();
        assert_eq!(b.offer(&batch, &mut Default::default()).await, Err(Full));
    }
}
