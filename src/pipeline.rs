//! The core shared by every daemon: route a batch and hand it to destinations,
//! all or nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::batch::Batch;
use crate::dest::{Chunk, Destination};
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
#[error("destination {dest} queue is full ({queued} of {cap} points)")]
pub struct Refused {
    /// The first destination that refused.
    pub dest: String,
    /// Its queue length at the time.
    pub queued: u64,
    /// Its cap.
    pub cap: u64,
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

    /// Admits `batch` to every destination it routes to, or to none.
    pub fn submit(&self, batch: &Batch) -> Result<(), Refused> {
        if batch.is_empty() {
            return Ok(());
        }
        let topo = self.topology.load();
        let mut parts: Vec<RoutedPart> = Vec::with_capacity(topo.dests.len());
        topo.router.route(batch, &mut parts);
        for (i, part) in parts.iter().enumerate() {
            let dest = &topo.dests[part.dest];
            if !dest.try_admit(part.points) {
                for done in &parts[..i] {
                    topo.dests[done.dest].release(done.points);
                }
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Refused {
                    dest: dest.name().to_string(),
                    queued: dest.queued(),
                    cap: dest.cap(),
                });
            }
        }
        for part in parts {
            topo.dests[part.dest].push(Chunk {
                data: part.data,
                points: part.points,
            });
        }
        self.stats
            .received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
