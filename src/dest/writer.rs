//! Writer kinds defined outside `dest`: what a destination writes to when it is neither
//! Graphite TCP nor the console (the proxy's HTTPS gateway, [`crate::proxy::writer`]).
//!
//! The destination keeps what makes it a destination — the bounded memory queue, the
//! admission rule, the spool and its recovery — and hands its writer task a [`Queue`]: the
//! memory queue's receiving end and the shared state (accounting, spool, counters). So a new
//! transport is one writer, never a second queue or a second spool format.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Chunk, DestShared};
use crate::shutdown::Shutdown;

/// The writer task's future (a trait object's method cannot be `async fn`).
pub type WriterTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What a writer task gets from its destination.
pub struct Queue {
    /// Accounting, spool and counters shared with the producers.
    pub dest: Arc<DestShared>,
    /// The memory queue: admitted chunks, oldest first. Closed when the destination is dropped.
    pub rx: mpsc::UnboundedReceiver<Chunk>,
    /// Fires when the process shuts down: drain the memory queue (not the spool) for up to
    /// `drain_timeout`, then spool or count what is left, and close the spool.
    pub shutdown: Shutdown,
    /// How long the drain may take.
    pub drain_timeout: Duration,
}

/// A writer kind. Its task owns the [`Queue`] and must keep the destination's books:
/// [`DestShared::written`] for memory chunks it delivered, [`DestShared::dequeued`] for memory
/// chunks it settled otherwise, [`super::Spool::delivered`] for spool records (in record
/// order), and [`super::Spool::close`] at the end.
pub trait Writer: std::fmt::Debug + Send + Sync + 'static {
    /// The destination's name in logs and APIs; also names its spool directory.
    fn name(&self) -> String;
    /// True when the destination keeps a spool under `-spool-dir`.
    fn spools(&self) -> bool {
        true
    }
    /// The writer task.
    fn run(self: Arc<Self>, queue: Queue) -> WriterTask;
}
