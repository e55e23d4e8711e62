//! What the routing rules did with lines: per cluster sent, and the lines no cluster got
//! (blackholed, dropped by `validate`). Shared by every router built over one
//! configuration, so a destination change (a new router) does not reset them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one loaded configuration; [`RouteCounters::new`] sizes them for its clusters.
#[derive(Debug, Default)]
pub struct RouteCounters {
    /// Lines sent under some name to each cluster (once per cluster, not per member).
    pub cluster_lines: Vec<(String, AtomicU64)>,
    /// Lines sent to `blackhole`, or that no rule sent anywhere.
    pub blackholed: AtomicU64,
    /// Lines a `validate` clause dropped.
    pub dropped: AtomicU64,
}

impl RouteCounters {
    /// Zeroed counters for clusters named `names`, in configuration order.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> RouteCounters {
        RouteCounters {
            cluster_lines: names
                .into_iter()
                .map(|n| (n.to_string(), AtomicU64::new(0)))
                .collect(),
            ..RouteCounters::default()
        }
    }

    /// `(cluster name, lines)` now.
    pub fn clusters(&self) -> Vec<(String, u64)> {
        self.cluster_lines
            .iter()
            .map(|(n, c)| (n.clone(), c.load(Ordering::Relaxed)))
            .collect()
    }
}
