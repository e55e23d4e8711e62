//! What the daemons ask of glibc's allocator: thresholds suited to batch-sized buffers
//! ([`tune_allocator`], at start) and handing freed memory back after a large set of
//! buffers went away ([`release_freed_memory`]: a key reload, a drained queue).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// glibc's malloc returns freed memory above the heap's top to the kernel once more
/// than its trim threshold is free there, and serves requests above its mmap
/// threshold from fresh mappings. Both start small (128 KiB) and the dynamic rule only
/// raises them to the largest block freed so far: with the pipeline's batch-sized
/// buffers (hundreds of KiB, freed soon after) nearly every batch handed pages back and
/// faulted them in again, zeroed — measured on the gateway bench, 595 000 minor faults
/// in 8 s against 2 800 with the thresholds below, and 12 % of its CPU. Requests up to
/// 4 MiB now come from the heap, and up to 8 MiB of free heap top is kept (per arena);
/// `malloc_trim` after a key reload still returns everything free. An operator's own
/// `GLIBC_TUNABLES` or `MALLOC_*_THRESHOLD_` wins: then nothing is set here.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_env = std::env::vars_os().any(|(k, _)| {
            let k = k.to_string_lossy();
            k == "GLIBC_TUNABLES" || (k.starts_with("MALLOC_") && k.ends_with("_THRESHOLD_"))
        });
        if !set_by_env {
            // SAFETY: mallopt only changes malloc's parameters; it is called before the
            // runtime's threads start, and any value is valid for these two.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
            }
        }
    }
}

/// Hands free heap memory back to the system (`malloc_trim`). glibc keeps what a large
/// set of buffers freed in the arenas of whichever threads freed them, so RSS stays at
/// its high-water mark: after a key reload of 100 000 keys (some 20 MB;
/// docs/BENCHMARKS.md, "Memory, churn, keys and threads") or once a memory queue that
/// held millions of points has drained (a relay whose destination was down stayed at
/// its peak for good).
/// About a millisecond per 20 MB.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A memory queue whose high-water mark reached this many points (about 40 MB of
/// lines) returns memory once it has drained to an eighth of that mark.
pub const DRAINED_FROM_POINTS: u64 = 500_000;

/// Seconds between two drain-triggered releases at most once: a queue that fills and
/// drains every few seconds would otherwise pay for faulting the pages in again.
const RELEASE_EVERY_SECS: u64 = 10;

/// Unix second of the last drain-triggered release (process-wide).
static LAST_RELEASE: AtomicU64 = AtomicU64::new(0);

/// A queue's high-water mark, and the release once it has drained (see
/// [`DRAINED_FROM_POINTS`]).
#[derive(Debug, Default)]
pub struct QueuePeak(AtomicU64);

impl QueuePeak {
    /// Notes that the queue holds `queued` points.
    #[inline]
    pub fn rose_to(&self, queued: u64) {
        if queued > self.0.load(Ordering::Relaxed) {
            self.0.fetch_max(queued, Ordering::Relaxed);
        }
    }

    /// Notes that the queue fell to `left` points; true when that was a drain from a
    /// high-water mark of at least [`DRAINED_FROM_POINTS`] to an eighth of it, and
    /// memory was (or is being) handed back for it.
    /// A drain within [`RELEASE_EVERY_SECS`] of the last release keeps its mark, so a
    /// later fall of the same queue releases once the pause is over.
    pub fn fell_to(&self, left: u64) -> bool {
        let peak = self.0.load(Ordering::Relaxed);
        if peak < DRAINED_FROM_POINTS || left > peak / 8 {
            return false;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = LAST_RELEASE.load(Ordering::Relaxed);
        if now < last + RELEASE_EVERY_SECS {
            return false;
        }
        // One caller wins: the one that takes the mark and then the release slot.
        if self.0.swap(0, Ordering::Relaxed) < DRAINED_FROM_POINTS
            || LAST_RELEASE
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(release_freed_memory)),
            Err(_) => release_freed_memory(),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_follows_a_drain_from_a_large_mark_only() {
        let small = QueuePeak::default();
        small.rose_to(DRAINED_FROM_POINTS - 1);
        assert!(!small.fell_to(0), "below the mark: nothing");
        let q = QueuePeak::default();
        q.rose_to(800_000);
        q.rose_to(100_000);
        assert!(!q.fell_to(100_001), "not yet down to an eighth");
        LAST_RELEASE.store(0, Ordering::Relaxed);
        assert!(q.fell_to(100_000));
        assert!(!q.fell_to(0), "once per high-water mark");
        q.rose_to(900_000);
        assert!(!q.fell_to(0), "and at most once per {RELEASE_EVERY_SECS} s");
        LAST_RELEASE.store(0, Ordering::Relaxed);
        assert!(q.fell_to(0), "the mark was kept through the pause");
    }
}
