//! The one admission path: `admit(batch, deadline) -> Held | Refused`.
//!
//! # Why one path
//! A `200` (or a plaintext client's TCP write going through) is a promise that every line is
//! held for every destination it routes to. Each source used to carry its own copy of the
//! wait-and-retry loop around a two-step "admit, then await the spool ticket", and a retry
//! after a failed spool write found the batch already taken apart and reported an empty
//! success. Here one function owns the whole decision:
//! 1. reserve room for every part (memory queue, spool, or `-overflow drop`), or none: when
//!    some destination has no room, wait for [`space_freed`](crate::dest::space_freed) (or
//!    the deadline) and try again;
//! 2. write the spool parts first and wait until they are written (synced with `-durable`);
//! 3. only then hand the memory parts to their queues.
//!
//! A spool write that fails (ENOSPC, EIO, anything) refuses the batch at once: the memory
//! reservations are returned unused, so no queue keeps any of it, and the routed parts stay
//! intact, so a later attempt really writes them again. A batch is reported [`Held`] only when
//! every part is in memory or written.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Pipeline, Refused, Routed};
use crate::batch::Batch;
use crate::dest::{space_freed, Admission, Chunk, Destination};

/// How long a batch may wait for room in a full destination queue before it is refused
/// (well under the proxies' request timeout and `Retry-After: 1`).
pub const ADMIT_WAIT: Duration = Duration::from_millis(250);

/// Proof that a batch is held for every destination it routes to: acknowledge it.
#[must_use = "a held batch is acknowledged to its sender"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held;

/// Why one attempt did not hold the batch.
enum Attempt {
    /// Some destination has no room now: waiting may help.
    NoRoom(Refused),
    /// A spool write failed: refuse now, the sender retries later.
    WriteFailed(Refused),
}

impl Pipeline {
    /// Routes `batch` and holds it for every destination it routes to, waiting until
    /// `deadline` for room; see the [module documentation](self). `Held` means every part
    /// is in a memory queue or written to a spool (synced with `-durable`).
    pub async fn admit(&self, batch: &Batch, deadline: Instant) -> Result<Held, Refused> {
        let mut routed = self.route(batch);
        self.admit_routed(&mut routed, batch, deadline).await
    }

    /// [`admit`](Self::admit) for a batch routed earlier, so that offering it again after a
    /// refusal does not pay for routing again (a hash ring costs an md5 per line).
    pub async fn admit_routed(
        &self,
        routed: &mut Routed,
        batch: &Batch,
        deadline: Instant,
    ) -> Result<Held, Refused> {
        loop {
            // Registered before the attempt, so room freed in between still wakes us.
            let freed = space_freed().notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.attempt(routed, batch).await {
                Ok(held) => return Ok(held),
                Err(Attempt::NoRoom(_)) if Instant::now() < deadline => {
                    let _ = tokio::time::timeout_at(deadline, freed).await;
                }
                Err(Attempt::NoRoom(r)) => return Err(r),
                Err(Attempt::WriteFailed(r)) => {
                    // Not retried: the sender retries after `Retry-After`. Answered at the
                    // deadline, so that a source offering again at once (the relay's
                    // connections) cannot spin on a failing disk.
                    tokio::time::sleep_until(deadline).await;
                    return Err(r);
                }
            }
        }
    }

    /// Waits until `deadline` for a batch sent everywhere to have a chance: refused when
    /// some destination still refuses everything then. Lets the gateway answer 503 before
    /// spending the CPU to decompress a batch (the full check is [`admit`](Self::admit)).
    pub async fn room_by(&self, deadline: Instant) -> Result<(), Refused> {
        loop {
            let freed = space_freed().notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.refuses_now() {
                None => return Ok(()),
                Some(refused) if Instant::now() >= deadline => return Err(refused),
                Some(_) => {
                    let _ = tokio::time::timeout_at(deadline, freed).await;
                }
            }
        }
    }

    /// One all-or-nothing attempt: reserve every part, write the spool parts, then queue
    /// the memory parts.
    async fn attempt(&self, routed: &mut Routed, batch: &Batch) -> Result<Held, Attempt> {
        if routed.held || routed.points == 0 {
            return Ok(Held);
        }
        if !Arc::ptr_eq(&routed.topo, &*self.topology.load()) {
            *routed = self.route_from(batch, routed.from.clone());
        }
        let topo = routed.topo.clone();
        let admitted = reserve(&topo.dests, routed)?;
        let spooled = write_spool_parts(&topo.dests, routed, &admitted).await;
        if let Err(refused) = spooled {
            for (part, a) in routed.parts.iter().zip(&admitted) {
                // The spool returns its own reservation when a write fails, and a part written
                // to another spool was voided by its gate.
                if *a != Admission::Spool {
                    topo.dests[part.dest].cancel(*a, part.points, part.data.len());
                }
            }
            return Err(Attempt::WriteFailed(refused));
        }
        for (part, a) in std::mem::take(&mut routed.parts).into_iter().zip(admitted) {
            let chunk = Chunk {
                data: part.data,
                points: part.points,
            };
            topo.dests[part.dest].deliver(chunk, a);
        }
        self.stats
            .received
            .fetch_add(routed.points, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        routed.held = true;
        Ok(Held)
    }
}

/// Reserves room for every part, or for none (returning what was reserved).
fn reserve(dests: &[Arc<Destination>], routed: &Routed) -> Result<Vec<Admission>, Attempt> {
    let mut admitted: Vec<Admission> = Vec::with_capacity(routed.parts.len());
    for part in &routed.parts {
        let dest = &dests[part.dest];
        match dest.admit(part.points, part.data.len()) {
            Some(a) => admitted.push(a),
            None => {
                for (done, a) in routed.parts.iter().zip(&admitted) {
                    dests[done.dest].cancel(*a, done.points, done.data.len());
                }
                return Err(Attempt::NoRoom(Refused {
                    dest: dest.name().to_string(),
                    queued: dest.queued(),
                    cap: dest.cap(),
                    reason: if dest.spool().is_some() {
                        "queue and spool full".to_string()
                    } else {
                        "queue is full".to_string()
                    },
                }));
            }
        }
    }
    Ok(admitted)
}

/// Appends the parts admitted to a spool and waits until each is written (synced with
/// `-durable`). The first failure, if any, as the refusal to answer. With parts in several
/// spools each record is gated: readable only once all are written, voided otherwise, so a
/// refused batch keeps nothing in any spool either.
async fn write_spool_parts(
    dests: &[Arc<Destination>],
    routed: &Routed,
    admitted: &[Admission],
) -> Result<(), Refused> {
    let spooled = admitted.iter().filter(|a| **a == Admission::Spool).count();
    let mut waits = Vec::with_capacity(spooled);
    let mut gates = Vec::new();
    for (part, a) in routed.parts.iter().zip(admitted) {
        if *a == Admission::Spool {
            let chunk = Chunk {
                data: part.data.clone(),
                points: part.points,
            };
            let dest = &dests[part.dest];
            if spooled > 1 {
                let (done, gate) = dest.append_spooled_gated(&chunk);
                waits.push((part.dest, done));
                gates.push(gate);
            } else {
                waits.push((part.dest, dest.append_spooled(&chunk)));
            }
        }
    }
    let mut failed = None;
    for (i, done) in waits {
        let err = match done.await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "spool closed".to_string(),
        };
        let dest = &dests[i];
        failed.get_or_insert(Refused {
            dest: dest.name().to_string(),
            queued: dest.queued(),
            cap: dest.cap(),
            reason: format!("spool write failed: {err}"),
        });
    }
    // Dropped gates (a refusal, or this future cancelled) abort.
    if failed.is_none() {
        gates.into_iter().for_each(|g| g.commit());
    }
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dest::{DestConfig, Overflow, SinkKind};
    use crate::pipeline::Topology;
    use crate::route::broadcast::Broadcast;
    use crate::shutdown::Shutdown;
    use crate::stats::Stats;

    fn batch(n: usize) -> Batch {
        let mut s = String::new();
        for i in 0..n {
            s.push_str(&format!("admit.m{i} {i} 1700000000\n"));
        }
        Batch::from_plaintext(s.into_bytes(), None).0
    }

    /// A destination (nobody listening) with a durable spool under `dir`.
    fn spooled_dest(dir: &std::path::Path, port: u16, shutdown: Shutdown) -> Arc<Destination> {
        let config = DestConfig {
            queue_cap: 1000,
            drain_timeout: Duration::from_secs(1),
            spool_dir: Some(dir.to_path_buf()),
            spool_max_bytes: 1 << 30,
            overflow: Overflow::Refuse,
            durable: true,
            replay_rate: None,
            tls: None,
            tls_all: false,
        };
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        Destination::spawn(SinkKind::Tcp(addr), &config, shutdown).0
    }

    fn broadcast(dests: Vec<Arc<Destination>>) -> Pipeline {
        let n = dests.len();
        Pipeline::new(
            Topology {
                dests,
                router: Box::new(Broadcast { destinations: n }),
            },
            Arc::new(Stats::default()),
        )
    }

    /// A pipeline over one destination whose spool write fails.
    fn broken_spool_pipeline(dir: &std::path::Path, shutdown: Shutdown) -> Pipeline {
        let dest = spooled_dest(dir, 1, shutdown);
        // Every append now fails, as on a full disk.
        dest.spool().expect("a spool").close();
        broadcast(vec![dest])
    }

    /// Every record the destination's spool hands back now.
    fn spooled_records(dest: &Destination) -> usize {
        let spool = dest.spool().unwrap();
        let mut n = 0;
        loop {
            let got = spool.read(1 << 20).unwrap();
            if got.is_empty() {
                return n;
            }
            n += got.len();
        }
    }

    #[tokio::test]
    async fn a_batch_refused_by_one_spool_leaves_nothing_in_the_other() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (_t, shutdown) = Shutdown::new();
        let a = spooled_dest(dir_a.path(), 1, shutdown.clone());
        let b = spooled_dest(dir_b.path(), 2, shutdown);
        let p = broadcast(vec![a.clone(), b.clone()]);
        let held = batch(50);
        assert!(p.admit(&held, Instant::now()).await.is_ok());
        b.spool().unwrap().close();
        assert!(p.admit(&batch(70), Instant::now()).await.is_err());
        assert_eq!(
            spooled_records(&a),
            1,
            "only the held batch is delivered by the spool that worked"
        );
        assert_eq!(a.spool().unwrap().backlog(), 0);
        assert_eq!(a.stats.spooled.load(Ordering::Relaxed), 50);
        assert_eq!(p.stats().received.load(Ordering::Relaxed), 50);
    }

    #[tokio::test]
    async fn a_retry_after_a_failed_spool_write_is_refused_again_not_reported_held() {
        let dir = tempfile::tempdir().unwrap();
        let (_t, shutdown) = Shutdown::new();
        let p = broken_spool_pipeline(dir.path(), shutdown);
        let b = batch(100);
        let mut routed = p.route(&b);
        let now = Instant::now();
        let first = p.admit_routed(&mut routed, &b, now).await;
        assert!(first.is_err(), "a failed spool write refuses the batch");
        let second = p.admit_routed(&mut routed, &b, now).await;
        assert!(
            second.is_err(),
            "the retry finds the batch unheld and refuses it again"
        );
        assert!(p.admit(&b, now).await.is_err());
        let dest = &p.destinations()[0];
        assert_eq!(dest.queued(), 0, "no memory queue keeps any of it");
        assert_eq!(dest.spool().unwrap().backlog(), 0, "reservations returned");
        assert_eq!(p.stats().received.load(Ordering::Relaxed), 0);
        assert_eq!(dest.stats.spooled.load(Ordering::Relaxed), 0);
    }
}
