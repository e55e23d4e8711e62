//! The proxy's outbox: sealed (gzip'ed) batches waiting for a worker to POST them.
//!
//! Batches wait in memory up to `-queue-cap` points. Beyond that they go to the disk
//! spool when there is one (`-spool-dir`), and once anything is in the spool, new
//! batches follow it there until it is empty again, so delivery stays oldest first:
//! workers take from memory, then from the spool. With neither room in memory nor in
//! the spool, [`Outbox::has_room`] is false and the TCP source stops reading from its
//! clients (backpressure); nothing is dropped to make room.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use super::spool::Spool;
use crate::shutdown::Shutdown;

/// A gzip'ed batch, ready to POST.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The request body.
    pub body: Bytes,
    /// Lines in the batch.
    pub points: u64,
}

/// Where a job came from, to settle it after delivery.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    /// The memory queue (its points count against `-queue-cap` until settled).
    Memory,
    /// A spool file, deleted once delivered.
    Spool(u64),
}

/// A batch handed to a worker.
#[derive(Debug)]
pub struct Job {
    /// What to send.
    pub sealed: Sealed,
    /// Where it is kept until delivered.
    pub origin: Origin,
}

/// Memory queue plus optional spool.
pub struct Outbox {
    queue: Mutex<VecDeque<Sealed>>,
    /// Points in memory: queued, plus taken by workers and not yet settled.
    mem_points: AtomicU64,
    cap: u64,
    spool: Option<Arc<Spool>>,
    ready: Notify,
}

/// How often an idle worker looks at the spool even without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(1);

impl Outbox {
    /// An outbox holding up to `cap` points in memory, overflowing to `spool`.
    pub fn new(cap: u64, spool: Option<Spool>) -> Outbox {
        Outbox {
            queue: Mutex::new(VecDeque::new()),
            mem_points: AtomicU64::new(0),
            cap: cap.max(1),
            spool: spool.map(Arc::new),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Sealed>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The spool, if configured.
    pub fn spool(&self) -> Option<&Arc<Spool>> {
        self.spool.as_ref()
    }

    /// Points held in memory (queued or being sent).
    pub fn mem_points(&self) -> u64 {
        self.mem_points.load(Ordering::Relaxed)
    }

    /// The memory cap in points.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Batches waiting in memory (not counting those being sent).
    pub fn queued_batches(&self) -> usize {
        self.lock().len()
    }

    /// True when a new batch can be held, in memory or in the spool.
    pub fn has_room(&self) -> bool {
        self.mem_points() < self.cap || self.spool.as_ref().is_some_and(|s| s.has_room())
    }

    /// Holds a sealed batch: in memory, or in the spool when memory is full or the
    /// spool already has older batches. If the spool cannot take it (full, disk
    /// error), it stays in memory: admission then refuses further data until room
    /// frees up, so the overshoot is bounded by one batch per sealing connection.
    pub async fn put(&self, sealed: Sealed) {
        if let Some(spool) = &self.spool {
            if self.mem_points() >= self.cap || !spool.is_empty() {
                let (spool, body, points) = (spool.clone(), sealed.body.clone(), sealed.points);
                let written = tokio::task::spawn_blocking(move || spool.write(&body, points)).await;
                match written {
                    Ok(Ok(())) => {
                        self.ready.notify_one();
                        return;
                    }
                    Ok(Err(e)) => tracing::warn!("Batch kept in memory: {e}"),
                    Err(e) => tracing::warn!("Batch kept in memory: spool task failed: {e}"),
                }
            }
        }
        self.mem_points.fetch_add(sealed.points, Ordering::AcqRel);
        self.lock().push_back(sealed);
        self.ready.notify_one();
    }

    /// The next batch to send: memory first, then (unless `memory_only`) the spool.
    /// Waits for one; `None` once `shutdown` fires while nothing is ready.
    pub async fn take(&self, memory_only: bool, shutdown: &mut Shutdown) -> Option<Job> {
        loop {
            if let Some(sealed) = self.lock().pop_front() {
                return Some(Job {
                    sealed,
                    origin: Origin::Memory,
                });
            }
            if shutdown.is_shutdown() {
                return None;
            }
            if !memory_only {
                if let Some(spool) = &self.spool {
                    let spool = spool.clone();
                    if let Ok(Some(t)) = tokio::task::spawn_blocking(move || spool.take()).await {
                        return Some(Job {
                            sealed: Sealed {
                                body: Bytes::from(t.body),
                                points: t.points,
                            },
                            origin: Origin::Spool(t.seq),
                        });
                    }
                }
            }
            tokio::select! {
                _ = self.ready.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = shutdown.recv() => {}
            }
        }
    }

    /// The batch is settled (delivered, or refused for good): release its memory or
    /// delete its spool file.
    pub async fn done(&self, job: Job) {
        match job.origin {
            Origin::Memory => {
                self.mem_points
                    .fetch_sub(job.sealed.points, Ordering::AcqRel);
            }
            Origin::Spool(seq) => {
                if let Some(spool) = self.spool.clone() {
                    let _ = tokio::task::spawn_blocking(move || spool.ack(seq)).await;
                }
            }
        }
    }

    /// A batch that could not be delivered before shutdown: spool files stay where
    /// they are; memory batches go back to the queue for [`Self::spill`].
    pub fn give_back(&self, job: Job) {
        match job.origin {
            Origin::Spool(seq) => {
                if let Some(spool) = &self.spool {
                    spool.unclaim(seq);
                }
            }
            Origin::Memory => {
                self.lock().push_front(job.sealed);
            }
        }
    }

    /// At shutdown, after the workers stopped: writes every memory batch to the spool.
    /// Returns the points that could not be kept (no spool, or the spool refused).
    pub async fn spill(&self) -> u64 {
        let batches: Vec<Sealed> = self.lock().drain(..).collect();
        let mut lost = 0;
        for sealed in batches {
            self.mem_points.fetch_sub(sealed.points, Ordering::AcqRel);
            let Some(spool) = self.spool.clone() else {
                lost += sealed.points;
                continue;
            };
            let points = sealed.points;
            let written =
                tokio::task::spawn_blocking(move || spool.write(&sealed.body, sealed.points)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!("Cannot spool {points} points at shutdown: {e}");
                    lost += points;
                }
                Err(e) => {
                    tracing::error!("Cannot spool {points} points at shutdown: {e}");
                    lost += points;
                }
            }
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(tag: &'static str, points: u64) -> Sealed {
        Sealed {
            body: Bytes::from_static(tag.as_bytes()),
            points,
        }
    }

    #[tokio::test]
    async fn memory_overflows_to_spool_and_order_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out = Outbox::new(10, Some(Spool::open(dir.path(), 1 << 20).unwrap()));
        let (_t, mut sd) = Shutdown::new();
        out.put(sealed("a", 10)).await;
        assert!(out.has_room(), "the spool has room");
        out.put(sealed("b", 5)).await; // memory full: spooled
        let a = out.take(false, &mut sd).await.unwrap();
        out.done(a).await;
        // Memory has room again, but the spool is not empty: "c" follows "b" there.
        out.put(sealed("c", 1)).await;
        let b = out.take(false, &mut sd).await.unwrap();
        assert_eq!(&b.sealed.body[..], b"b");
        out.done(b).await;
        let c = out.take(false, &mut sd).await.unwrap();
        assert_eq!(&c.sealed.body[..], b"c");
        out.done(c).await;
        assert_eq!(out.mem_points(), 0);
        assert!(out.spool().unwrap().is_empty());
    }

    #[tokio::test]
    async fn without_spool_a_full_memory_has_no_room_and_spill_reports_loss() {
        let out = Outbox::new(10, None);
        out.put(sealed("a", 10)).await;
        assert!(!out.has_room());
        assert_eq!(out.spill().await, 10);
        assert!(out.has_room());
    }
}
