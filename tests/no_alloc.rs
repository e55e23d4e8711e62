//! The hot path allocates per batch, never per line.
//!
//! A counting global allocator (this test binary only) counts the heap
//! allocations made by the calling thread while a batch is inflated, validated,
//! prefixed and routed. A 5000-line batch must cost the same number of
//! allocations as a 50-line one, within a small constant: any per-line `Vec`,
//! `String` or growing buffer would show up as thousands more.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use polymur::batch::Batch;
/// The load generator's workload (it lives in the `polymur-bench` binary, outside the library).
#[allow(dead_code)]
#[path = "../src/bin/polymur-bench/workload.rs"]
mod workload;
use polymur::dest::DestAddr;
use polymur::ingest::inflate::gunzip;
use polymur::route::broadcast::Broadcast;
use polymur::route::hash_router::HashRouter;
use polymur::route::ring::HashKind;
use polymur::route::{RoutedPart, Router};
use workload::Workload;

/// Counts allocations (and reallocations, which are allocations too) of threads
/// that switched counting on, so tests running in parallel do not disturb each other.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

fn bump(size: usize) {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
            let _ = BYTES.try_with(|c| c.set(c.get() + size as u64));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations<R>(f: impl FnOnce() -> R) -> (u64, R) {
    BYTES.with(|c| c.set(0));
    COUNT.with(|c| c.set(0));
    COUNTING.with(|on| on.set(true));
    let r = f();
    COUNTING.with(|on| on.set(false));
    (COUNT.with(|c| c.get()), r)
}

fn raw(lines: usize, name_len: usize) -> Vec<u8> {
    Workload {
        batch_lines: lines,
        name_len,
        series: 1_000_000,
        ..Workload::default()
    }
    .batch(1)
}

/// Most allocations a whole batch may cost on any path below (buffers, span
/// index, parts list, per-destination buffers), whatever its size.
const PER_BATCH_MAX: u64 = 16;
/// How many more a 100x larger batch may need (e.g. one span-index regrowth).
const SLACK: u64 = 2;

fn assert_per_batch(what: &str, small: u64, large: u64) {
    assert!(
        large <= small + SLACK,
        "{what}: 5000 lines took {large} allocations, 50 lines {small}: something allocates per line"
    );
    assert!(
        large <= PER_BATCH_MAX,
        "{what}: {large} allocations for one batch"
    );
}

fn route_allocs(router: &dyn Router, lines: usize, name_len: usize, prefix: Option<&str>) -> u64 {
    let input = raw(lines, name_len);
    let (n, parts) = allocations(|| {
        let (batch, rejects) = Batch::from_plaintext(input, prefix);
        assert_eq!(rejects.count, 0);
        let mut parts: Vec<RoutedPart> = Vec::with_capacity(3);
        router.route(&batch, &mut parts);
        parts
    });
    let points: u64 = parts.iter().map(|p| p.points).sum();
    assert!(points >= lines as u64, "every line routed");
    n
}

#[test]
fn validation_allocates_per_batch_not_per_line() {
    for name_len in [12usize, 60, 200] {
        for prefix in [None, Some("customer-a")] {
            let count = |lines| {
                let input = raw(lines, name_len);
                allocations(|| Batch::from_plaintext(input, prefix)).0
            };
            let (small, large) = (count(50), count(5000));
            assert_per_batch(
                &format!("from_plaintext name_len {name_len} prefix {prefix:?}"),
                small,
                large,
            );
        }
    }
}

#[test]
fn invalid_lines_do_not_allocate_per_line() {
    let count = |lines: usize| {
        let mut input = raw(lines, 60);
        // Every tenth line broken: the copy path plus one sample for the log.
        for (i, chunk) in input.split_mut(|&b| b == b'\n').enumerate() {
            if i % 10 == 0 && !chunk.is_empty() {
                chunk[0] = 0x01;
            }
        }
        let (n, (b, r)) = allocations(|| Batch::from_plaintext(input, None));
        assert_eq!(r.count as usize, lines.div_ceil(10));
        assert_eq!(b.len(), lines - lines.div_ceil(10));
        n
    };
    assert_per_batch("from_plaintext with invalid lines", count(50), count(5000));
}

#[test]
fn routing_allocates_per_batch_not_per_line() {
    let dests: Vec<DestAddr> = ["127.0.0.1:2104:a", "127.0.0.1:2204:b", "127.0.0.1:2304:c"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let routers: Vec<(String, Box<dyn Router>)> = vec![
        (
            "broadcast_1".into(),
            Box::new(Broadcast { destinations: 1 }),
        ),
        (
            "broadcast_3".into(),
            Box::new(Broadcast { destinations: 3 }),
        ),
        (
            "carbon_ch_rf1".into(),
            Box::new(HashRouter::new(HashKind::CarbonCh, &dests, 1)),
        ),
        (
            "carbon_ch_rf2".into(),
            Box::new(HashRouter::new(HashKind::CarbonCh, &dests, 2)),
        ),
        (
            "fnv1a_ch_rf1".into(),
            Box::new(HashRouter::new(HashKind::Fnv1aCh, &dests, 1)),
        ),
        (
            "jump_fnv1a_ch_rf1".into(),
            Box::new(HashRouter::new(HashKind::JumpFnv1aCh, &dests, 1)),
        ),
    ];
    for (name, router) in &routers {
        for prefix in [None, Some("customer-a")] {
            let small = route_allocs(router.as_ref(), 50, 60, prefix);
            let large = route_allocs(router.as_ref(), 5000, 60, prefix);
            assert_per_batch(&format!("{name} prefix {prefix:?}"), small, large);
        }
    }
}

#[test]
fn inflate_allocates_per_batch() {
    let count = |lines| {
        let w = Workload {
            batch_lines: lines,
            ..Workload::default()
        };
        let body = w.gzip(&w.batch(0));
        // Warm the per-thread decompressor: its one allocation is per thread, not per batch.
        gunzip(&body, 1 << 28).unwrap();
        allocations(|| gunzip(&body, 1 << 28).unwrap()).0
    };
    assert_per_batch("gunzip", count(50), count(5000));
}

/// A hash ring can be very uneven: graphite-carbon keys members by host and
/// instance only, so instance-less members on one host sit side by side and one of
/// them gets almost every line. Per-destination buffers must be sized to what each
/// really receives: a buffer sized for an even share pinned its whole allocation for
/// a handful of lines (in the queue and in the writer's resend window), which grew
/// a hash-routing gateway to 1.9 GiB under load.
#[test]
fn hash_routing_buffers_are_sized_to_what_each_destination_gets() {
    let dests: Vec<DestAddr> = ["127.0.0.1:2003", "127.0.0.1:2004", "127.0.0.1:2005"]
        .iter()
        .map(|d| d.parse().unwrap())
        .collect();
    let router = HashRouter::new(HashKind::CarbonCh, &dests, 1);
    let (batch, _) = Batch::from_plaintext(raw(5000, 60), None);
    let (_, parts) = allocations(|| {
        let mut parts: Vec<RoutedPart> = Vec::with_capacity(3);
        router.route(&batch, &mut parts);
        parts
    });
    let allocated = BYTES.with(|c| c.get());
    let data = batch.data().len() as u64;
    let points: Vec<u64> = parts.iter().map(|p| p.points).collect();
    assert!(
        points.iter().max().unwrap() * 10 > 9 * 5000,
        "the ring is as uneven as expected: {points:?}"
    );
    // The lines once, plus a 4-byte owner index per line, plus small change.
    let bound = data + 5000 * 4 + 4096;
    assert!(
        allocated <= bound,
        "routing allocated {allocated} bytes for {data} bytes of lines (bound {bound})"
    );
}
