//! Gated appends: a record written but not readable until its batch is known to be held
//! everywhere, so that a batch refused because *another* destination's spool failed keeps
//! nothing here either.
//!
//! The append thread writes a gated record as usual but registers it in `Tail::gates`;
//! readers stop before the first open gate of a segment. The producer then either commits
//! (the record becomes readable) or aborts: the record is rewritten in place as a *void*
//! record (`points = 0`, CRC over the new header), which readers skip. A gate dropped without
//! a decision aborts (a request cancelled mid-way was never acknowledged). A crash before the
//! decision leaves an ordinary record: replayed, at worst a duplicate of a batch the sender
//! retried.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::format::{segment_path, Header};
use super::{Spool, SpoolPos};

/// What the producer decided, and where the record went.
#[derive(Debug, Default)]
pub(super) struct GateSlot {
    /// Where the record starts, once written (None before, or after a failed write).
    pub at: Option<SpoolPos>,
    /// Set once decided.
    pub decision: Option<bool>,
}

/// Shared between a gated append and its producer.
pub(super) type SharedSlot = Arc<Mutex<GateSlot>>;

/// A written-but-unpublished record of one batch; see the module documentation.
pub struct Gate {
    spool: Arc<Spool>,
    slot: SharedSlot,
    data: Bytes,
}

impl Gate {
    pub(super) fn new(spool: Arc<Spool>, slot: SharedSlot, data: Bytes) -> Gate {
        Gate { spool, slot, data }
    }

    /// The batch is held everywhere: make the record readable.
    pub fn commit(self) {
        self.decide(true);
    }

    /// The batch is refused: the record becomes void and is never delivered.
    pub fn abort(self) {
        self.decide(false);
    }

    fn decide(&self, keep: bool) {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.decision.is_some() {
            return;
        }
        slot.decision = Some(keep);
        let Some(at) = slot.at else {
            // Not written yet (the append thread voids it when it gets there) or failed.
            return;
        };
        if !keep {
            self.void(at);
        }
        let mut tail = self.spool.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.gates.remove(&at);
        drop(tail);
        self.spool.ready.notify_one();
    }

    /// Rewrites the record's header as a void record. A failure is logged: the record then
    /// stays an ordinary one (a duplicate when the sender retries, never a loss).
    fn void(&self, at: SpoolPos) {
        let path = segment_path(&self.spool.dir, at.seq);
        let hdr = Header::encode(0, &self.data);
        let done = OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.write_all_at(&hdr, at.offset));
        if let Err(e) = done {
            tracing::warn!(
                "Spool for destination {}: cannot void a refused batch's record in {}: {e}; \
                 it will be delivered (a duplicate when the sender retries)",
                self.spool.name,
                path.display()
            );
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.decide(false);
    }
}
