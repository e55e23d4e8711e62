//! Routers decide which destinations receive which lines of a batch.
//!
//! A router sees the whole batch at once and produces, per destination, one
//! buffer of whole lines. Broadcast hands every destination the batch's own
//! buffer (no copy); hashing appends each line to its owners' buffers.

pub mod broadcast;
pub mod counters;
pub mod dry_run;
pub mod hash_router;
pub mod pos_cache;
pub mod ring;

use bytes::Bytes;

use crate::batch::Batch;

/// The lines of one batch destined for one destination.
#[derive(Debug)]
pub struct RoutedPart {
    /// Index into the destination list the router was built for.
    pub dest: usize,
    /// `\n`-terminated lines.
    pub data: Bytes,
    /// Number of lines in `data`.
    pub points: u64,
}

/// Splits a batch among destinations. Routers are immutable; a change of
/// destinations builds a new one, swapped in atomically.
pub trait Router: Send + Sync {
    /// Appends to `out` the parts of `batch` for each destination that gets any.
    fn route(&self, batch: &Batch, out: &mut Vec<RoutedPart>);

    /// True when every non-empty batch goes to every destination (broadcast), so a
    /// full destination refuses every batch and the refusal can be decided before
    /// the batch is even decompressed.
    fn sends_everything_everywhere(&self) -> bool {
        false
    }

    /// Routes lines taken back from the queue of destination `from` (down; `None`: no
    /// longer in this topology) so they reach a live one. The lines were routed once
    /// already (names rewritten, sent to every cluster they match), so a router with
    /// rules only places them again within the cluster they were queued for.
    fn route_moved(&self, from: Option<usize>, batch: &Batch, out: &mut Vec<RoutedPart>) {
        let _ = from;
        self.route(batch, out);
    }

    /// True when what destination `dest` holds may be taken back and routed again
    /// while it is down ([`route_moved`](Self::route_moved)).
    fn may_move(&self, dest: usize) -> bool {
        let _ = dest;
        true
    }
}
