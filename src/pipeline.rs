//! The core shared by every daemon: route a batch and hand it to destinations,
//! all or nothing.
//!
//! Every source (the HTTP handler, the plaintext source, self-metrics) goes through the one
//! admission path, [`Pipeline::admit`] (see [`admit`]): it waits for room, retries, writes the
//! spool parts and answers [`Held`] or [`Refused`]. A refused batch leaves no trace in any
//! memory queue, so the caller may answer `503` and the sender retries it.

mod admit;
mod tenant;

pub use admit::{Held, ADMIT_WAIT};
pub use tenant::TenantRefused;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::batch::Batch;
use crate::dest::Destination;
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

/// A batch routed on one topology, not yet (or not fully) admitted.
pub struct Routed {
    topo: Arc<Topology>,
    parts: Vec<RoutedPart>,
    /// Points of the batch.
    points: u64,
    /// True once the batch is held: admitting it again is a no-op that reports it held.
    held: bool,
    /// Lines taken back from this (down) destination's queue: routed again with
    /// [`Router::route_moved`], also when the topology changes before they are held.
    from: Option<Arc<Destination>>,
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
    /// early answer (the full check still happens in [`admit`](Self::admit)).
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
    /// [`admit_routed`](Self::admit_routed) repeatedly (a full queue may drain) without paying
    /// for routing again — a hash ring costs an md5 per line.
    pub fn route(&self, batch: &Batch) -> Routed {
        self.route_from(batch, None)
    }

    /// [`route`](Self::route), or for lines taken back from `from`,
    /// [`Router::route_moved`].
    fn route_from(&self, batch: &Batch, from: Option<Arc<Destination>>) -> Routed {
        let topo = self.topology.load_full();
        let mut parts: Vec<RoutedPart> = Vec::with_capacity(topo.dests.len());
        if !batch.is_empty() {
            match &from {
                None => topo.router.route(batch, &mut parts),
                Some(d) => {
                    let index = topo.dests.iter().position(|x| Arc::ptr_eq(x, d));
                    topo.router.route_moved(index, batch, &mut parts);
                }
            }
        }
        Routed {
            topo,
            parts,
            points: batch.len() as u64,
            held: false,
            from,
        }
    }

    /// True when the lines `dest` holds may be taken back while it is down and routed
    /// to other destinations (always for a destination the topology no longer has).
    pub fn may_move(&self, dest: &Arc<Destination>) -> bool {
        let topo = self.topology.load();
        match topo.dests.iter().position(|x| Arc::ptr_eq(x, dest)) {
            Some(i) => topo.router.may_move(i),
            None => true,
        }
    }

    /// Holds lines taken back from the queue of the down destination `from`, routed
    /// again over the live ones ([`Router::route_moved`]); refused now when there is no room.
    pub async fn submit_moved(
        &self,
        from: &Arc<Destination>,
        batch: &Batch,
    ) -> Result<(), Refused> {
        let mut routed = self.route_from(batch, Some(from.clone()));
        self.admit_routed(&mut routed, batch, tokio::time::Instant::now())
            .await
            .map(|_| ())
    }

    /// [`admit`](Self::admit) without waiting for room: held now, or refused now. For
    /// callers with their own pacing (hash-route failover re-routing reclaimed lines).
    pub async fn submit_held(&self, batch: &Batch) -> Result<(), Refused> {
        self.admit(batch, tokio::time::Instant::now())
            .await
            .map(|_| ())
    }
}
