//! The core shared by every daemon: route a batch and hand it to destinations,
//! all or nothing.
//!
//! [`Pipeline::submit`] decides admission for every destination the batch routes to
//! (memory queue, spool, or `-overflow drop`; see [`crate::dest`]) before handing any
//! part over, so a refused batch leaves no trace. Parts that went to a spool come back
//! as a [`Ticket`]: the caller acknowledges only once the ticket resolves (records
//! written, and fsynced with `-durable`); [`Pipeline::submit_held`] does both.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::batch::Batch;
use crate::dest::spool::AppendDone;
use crate::dest::{Admission, Chunk, Destination};
use crate::route::{RoutedPart, Router};
use crate::stats::Stats;

/// Destinations and the router built for them; replaced as a whole.
pub struct Topology {
    /// Destinations in router index order.
    pub dests: Vec<Arc<Destination>>,
    /// Splits batches among `dests`.
    pub router: Box<dyn Router>,
}

/// A batch that could not be held for every destination it routes to.
#[derive(Debug, thiserror::Error)]
#[error("destination {dest}: {reason} (queue {queued} of {cap} points)")]
pub struct Refused {
    /// The first destination that refused.
    pub dest: String,
    /// Its queue length at the time.
    pub queued: u64,
    /// Its cap.
    pub cap: u64,
    /// Why: queue (and spool) full, or the spool write failed.
    pub reason: String,
}

/// What an admitted batch still waits for before it may be acknowledged: its spool
/// appends. Dropping it does not undo anything (the appends proceed); it only gives up
/// knowing when they are on disk.
#[must_use = "acknowledge only after Ticket::wait resolves"]
#[derive(Default)]
pub struct Ticket {
    waits: Vec<(Arc<Destination>, AppendDone)>,
}

impl Ticket {
    /// True when nothing went to a spool (the batch is held already).
    pub fn is_ready(&self) -> bool {
        self.waits.is_empty()
    }

    /// Resolves once every spool append of the batch is written (synced with `-durable`);
    /// an error means the batch is not held by that destination's spool and must be refused.
    pub async fn wait(self) -> Result<(), Refused> {
        let mut failed = None;
        for (dest, done) in self.waits {
            let err = match done.await {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "spool closed".to_string(),
            };
            failed.get_or_insert(Refused {
                dest: dest.name().to_string(),
                queued: dest.queued(),
                cap: dest.cap(),
                reason: format!("spool write failed: {err}"),
            });
        }
        failed.map_or(Ok(()), Err)
    }
}

/// A batch routed on one topology, not yet (or not fully) admitted.
pub struct Routed {
    topo: Arc<Topology>,
    parts: Vec<RoutedPart>,
    /// Points of the batch; 0 once admitted (admitting twice is a no-op).
    points: u64,
}

/// Routes batches to destinations. Cheap to share; lock-free on the hot path.
pub struct Pipeline {
    topology: ArcSwap<Topology>,
    stats: Arc<Stats>,
}

impl Pipeline {
    /// A pipeline over an initial topology.
    pub fn new(topology: Topology, stats: Arc<Stats>) -> Self {
        Pipeline {
            topology: ArcSwap::from_pointee(topology),
            stats,
        }
    }

    /// Process counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The current destinations.
    pub fn destinations(&self) -> Vec<Arc<Destination>> {
        self.topology.load().dests.clone()
    }

    /// Swaps in a new topology (runtime destination changes). Batches already
    /// routed keep going to the destinations they were admitted to.
    pub fn set_topology(&self, topology: Topology) {
        self.topology.store(Arc::new(topology));
    }

    /// A refusal that is certain before the batch is even decoded: the router sends
    /// every batch everywhere and some destination refuses everything now. Only an
    /// early answer (the full check still happens in [`submit`](Self::submit)).
    pub fn refuses_now(&self) -> Option<Refused> {
        let topo = self.topology.load();
        if !topo.router.sends_everything_everywhere() {
            return None;
        }
        let dest = topo.dests.iter().find(|d| d.refuses_everything())?;
        Some(Refused {
            dest: dest.name().to_string(),
            queued: dest.queued(),
            cap: dest.cap(),
            reason: "queue full".into(),
        })
    }

    /// Routes `batch` on the current topology. The result can be offered to
    /// [`admit`](Self::admit) repeatedly (a full queue may drain) without paying
    /// for routing again — a hash ring costs an md5 per line.
    pub fn route(&self, batch: &Batch) -> Routed {
        let topo = self.topology.load_full();
        let mut parts: Vec<RoutedPart> = Vec::with_capacity(topo.dests.len());
        if !batch.is_empty() {
            topo.router.route(batch, &mut parts);
        }
        Routed {
            topo,
            parts,
            points: batch.len() as u64,
        }
    }

    /// Admits a routed batch to every destination it routes to, or to none. The
    /// batch is held once the returned [`Ticket`] resolves (at once when no part went
    /// to a spool). If the topology changed since routing, `batch` is routed again.
    pub fn admit(&self, routed: &mut Routed, batch: &Batch) -> Result<Ticket, Refused> {
        if routed.points == 0 {
            return Ok(Ticket::default());
        }
        if !Arc::ptr_eq(&routed.topo, &*self.topology.load()) {
            *routed = self.route(batch);
        }
        let topo = routed.topo.clone();
        let parts = &routed.parts;
        let mut admitted: Vec<Admission> = Vec::with_capacity(parts.len());
        for part in parts {
            let dest = &topo.dests[part.dest];
            match dest.admit(part.points, part.data.len()) {
                Some(a) => admitted.push(a),
                None => {
                    for (done, a) in parts.iter().zip(&admitted) {
                        topo.dests[done.dest].cancel(*a, done.points, done.data.len());
                    }
                    return Err(Refused {
                        dest: dest.name().to_string(),
                        queued: dest.queued(),
                        cap: dest.cap(),
                        reason: if dest.spool().is_some() {
                            "queue and spool full".to_string()
                        } else {
                            "queue is full".to_string()
                        },
                    });
                }
            }
        }
        let mut ticket = Ticket::default();
        for (part, a) in std::mem::take(&mut routed.parts).into_iter().zip(admitted) {
            let dest = &topo.dests[part.dest];
            let chunk = Chunk {
                data: part.data,
                points: part.points,
            };
            if let Some(done) = dest.deliver(chunk, a) {
                ticket.waits.push((dest.clone(), done));
            }
        }
        self.stats
            .received
            .fetch_add(routed.points, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        routed.points = 0;
        Ok(ticket)
    }

    /// Routes and admits `batch` (see [`route`](Self::route) and [`admit`](Self::admit)).
    pub fn submit(&self, batch: &Batch) -> Result<Ticket, Refused> {
        let mut routed = self.route(batch);
        self.admit(&mut routed, batch)
    }

    /// [`admit`](Self::admit), then waits until the batch is held (spool appends
    /// written, and synced with `-durable`). Acknowledge the batch only after `Ok`.
    pub async fn admit_held(&self, routed: &mut Routed, batch: &Batch) -> Result<(), Refused> {
        let ticket = self.admit(routed, batch)?;
        if ticket.is_ready() {
            return Ok(());
        }
        ticket.wait().await
    }

    /// [`submit`](Self::submit), then waits until the batch is held (spool appends written,
    /// and synced with `-durable`). Acknowledge the batch only after `Ok`.
    pub async fn submit_held(&self, batch: &Batch) -> Result<(), Refused> {
        let ticket = self.submit(batch)?;
        if ticket.is_ready() {
            return Ok(());
        }
        ticket.wait().await
    }
}
