//! A bounded, lock-free cache from a metric name to its ring position, so
//! hash-route pays for MD5 (or FNV) once per series instead of once per line.
//!
//! Graphite series repeat every interval, and a line's ring position depends only
//! on the metric name and the hash, never on the ring's members. So the cache holds
//! *positions*, not owners: the owners are still walked on the current ring for
//! every line (a table read and a few comparisons). A ring change (`putdest`,
//! `deldest`, failover) therefore cannot serve a stale owner, needs no
//! invalidation, and finds the cache as warm as it was — every router a daemon
//! builds for its ring shares one cache.
//!
//! Layout: 8-way sets of eight `AtomicU64` slots, one 64-byte cache line each (a
//! lookup reads one line, as a 2-way set did), each slot `tag << 16 | position`, 0
//! meaning empty. The set is chosen by the high bits of a randomly seeded 64-bit
//! foldhash of the name, the tag is the hash's low 48 bits. Readers and writers use
//! single relaxed loads and stores: no lock, no torn entry, and a race only loses an
//! insertion. A false hit needs two names live in one set whose hashes agree in all
//! 64 bits (the tag and the set index overlap in a few bits when the table has more
//! than 2^19 slots): at most eight chances in 2^48 per lookup that misses, and the
//! seed is new in every process, so no input can be crafted to collide.
//!
//! Why eight ways: with two, the sets that three or more of the series fall into
//! thrash for as long as the series keep coming — 100 000 series in the default
//! 524 288 slots missed 2.5 % of lookups in steady state (an MD5 each, 3.4 % of a
//! hash-routing gateway's CPU); with eight such sets are vanishingly rare.

use std::alloc::{alloc_zeroed, Layout};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Slots of a router's own cache (the daemons take `-hash-cache-entries`): 4 MiB of
/// address space, touched as it fills; eight ways per set keep conflict misses
/// near zero up to a few hundred thousand series.
pub const DEFAULT_SLOTS: usize = 1 << 19;

/// Hits and misses of every cache in the process (what `/metrics` reports).
static HITS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);
/// Lines routed without the cache while it was bypassed.
static BYPASSED: AtomicU64 = AtomicU64::new(0);
/// Routers built over a cache in this process: `/metrics` shows the family only
/// when there was one.
static IN_USE: AtomicU64 = AtomicU64::new(0);

/// Name → ring position, shared by the routers of one hash kind.
pub struct PosCache {
    /// The sets, from index `base` (what comes before is never touched: slack that
    /// lets the table start on a huge-page boundary).
    sets: Box<[Set]>,
    base: usize,
    /// Number of sets in use.
    len: usize,
    /// `64 - log2(sets)`: the set is `hash >> shift`.
    shift: u32,
    seed: foldhash::quality::RandomState,
    /// Batches left to route without the cache (see [`Self::skip_batch`]).
    bypass: AtomicU64,
}

/// A batch answered less than 1 in `POOR` lines from the cache, most of whose
/// misses evicted another name, makes the next `BYPASS` batches skip it: far more series than slots (10 M series, say) would
/// otherwise pay a hash and a table write per line for almost no hits. Every
/// `BYPASS + 1`th batch still uses it, so a series set that shrinks back is noticed.
const POOR: u64 = 4;
const BYPASS: u64 = 15;

/// How the cache answered one lookup.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// The position came from the cache.
    Hit,
    /// Computed and stored in a free slot.
    Filled,
    /// Computed and stored over another name's entry.
    Evicted,
}

/// Ways per set: eight slots fill one 64-byte cache line.
const WAYS: usize = 8;

/// One set: a cache line of slots.
#[repr(C, align(64))]
struct Set([AtomicU64; WAYS]);

/// A located name: its hash and the index of its set.
#[derive(Clone, Copy)]
pub struct Probe {
    hash: u64,
    set: usize,
}

const TAG_MASK: u64 = (1 << 48) - 1;

impl PosCache {
    /// A cache of about `slots` entries (rounded up to a power of two, at least 16).
    pub fn new(slots: usize) -> PosCache {
        let slots = slots.max(2 * WAYS).next_power_of_two();
        let sets = slots / WAYS;
        let (table, base) = zeroed_sets(sets);
        PosCache {
            sets: table,
            base,
            len: sets,
            shift: 64 - sets.trailing_zeros(),
            seed: foldhash::quality::RandomState::default(),
            bypass: AtomicU64::new(0),
        }
    }

    /// Hashes `metric` and asks the CPU to fetch its set. Separate from
    /// [`Self::resolve`] so a router locates a run of names before it needs the
    /// first answer: a prefetch retires at once, so the run's cache misses overlap
    /// instead of each stalling the lookup (measured: without it, the wait on the
    /// table was a quarter of a hash-routing gateway's CPU).
    #[inline]
    pub fn locate(&self, metric: &[u8]) -> Probe {
        // One `write` of the bytes, not `hash_one`: the slice's `Hash` would first
        // hash its length too (a prefix only a sequence of slices needs).
        let mut h = self.seed.build_hasher();
        h.write(metric);
        let hash = h.finish();
        // `shift` is 1 to 63, so `hash >> shift` < sets.
        let set = self.base + (hash >> self.shift) as usize;
        prefetch(&self.sets[set]);
        Probe { hash, set }
    }

    /// The slots of a located name's set.
    #[inline]
    fn read(&self, probe: &Probe) -> [u64; WAYS] {
        let set = &self.sets[probe.set].0;
        std::array::from_fn(|i| set[i].load(Ordering::Relaxed))
    }

    /// The cached position of a located name, if a slot of its set holds its tag.
    #[inline]
    pub fn get(&self, probe: &Probe) -> Option<u16> {
        let tag = probe.hash & TAG_MASK;
        self.read(probe)
            .into_iter()
            .find(|&e| e != 0 && e >> 16 == tag)
            .map(|e| e as u16)
    }

    /// Remembers `pos` for a located name: in an empty slot of its set, else over
    /// the slot three bits of its tag pick (random replacement, no bookkeeping on
    /// the read path).
    /// True when it evicted another name.
    #[inline]
    pub fn insert(&self, probe: &Probe, pos: u16) -> bool {
        let entry = (probe.hash & TAG_MASK) << 16 | u64::from(pos);
        if entry == 0 {
            return false; // indistinguishable from empty; this one name stays uncached
        }
        let (way, evicts) = match self.read(probe).iter().position(|&e| e == 0) {
            Some(free) => (free, false),
            None => ((probe.hash & (WAYS as u64 - 1)) as usize, true),
        };
        self.sets[probe.set].0[way].store(entry, Ordering::Relaxed);
        evicts
    }

    /// The position of a located name, computed by `compute` (and remembered) on a
    /// miss, and how the cache answered.
    #[inline]
    pub fn resolve(&self, probe: &Probe, compute: impl FnOnce() -> u16) -> (u16, Outcome) {
        match self.get(probe) {
            Some(pos) => (pos, Outcome::Hit),
            None => {
                let pos = compute();
                match self.insert(probe, pos) {
                    true => (pos, Outcome::Evicted),
                    false => (pos, Outcome::Filled),
                }
            }
        }
    }

    /// True when the next batch should be routed without the cache (its hashes
    /// computed directly, nothing inserted), because recent batches hit too rarely.
    #[inline]
    pub fn skip_batch(&self) -> bool {
        let left = self.bypass.load(Ordering::Relaxed);
        if left == 0 {
            return false;
        }
        // Racing routers may skip a batch more or less; it only moves the sampling.
        self.bypass.store(left - 1, Ordering::Relaxed);
        true
    }

    /// Records how a batch of `lines` fared in the cache (see [`Self::skip_batch`]):
    /// only a full cache that keeps missing is bypassed — a cold one, filling free
    /// slots, is not.
    #[inline]
    pub fn learn(&self, hits: u64, evictions: u64, lines: u64) {
        if hits * POOR < lines && evictions * 2 > lines - hits {
            self.bypass.store(BYPASS, Ordering::Relaxed);
        }
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.len * WAYS
    }
}

/// Names located before the first of them is resolved ([`PosCache::pipelined`]): their
/// cache loads are independent, so the CPU overlaps their misses instead of waiting for
/// each (8 ahead measured 0.94x of 16, 32 ahead 1.00x).
pub const AHEAD: usize = 16;

impl PosCache {
    /// `items` (a payload and the name to look up) paired with each name's [`Probe`],
    /// located [`AHEAD`] items before it is handed out: a software pipeline, so every
    /// lookup has AHEAD items' worth of work to hide its miss behind (located in chunks
    /// of AHEAD instead, a chunk's first items had little: 1.07x for the rules router).
    pub fn pipelined<'b, T: Copy, I: Iterator<Item = (T, &'b [u8])>>(
        &self,
        mut items: I,
    ) -> Pipelined<'_, 'b, T, I> {
        let mut queue = [None; AHEAD];
        for (slot, (t, name)) in queue.iter_mut().zip(items.by_ref()) {
            *slot = Some((t, name, self.locate(name)));
        }
        Pipelined {
            cache: self,
            items,
            queue,
            head: 0,
        }
    }
}

/// See [`PosCache::pipelined`].
pub struct Pipelined<'c, 'b, T, I> {
    cache: &'c PosCache,
    items: I,
    queue: [Option<(T, &'b [u8], Probe)>; AHEAD],
    head: usize,
}

impl<'b, T: Copy, I: Iterator<Item = (T, &'b [u8])>> Iterator for Pipelined<'_, 'b, T, I> {
    type Item = (T, &'b [u8], Probe);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let out = self.queue[self.head].take()?;
        if let Some((t, name)) = self.items.next() {
            self.queue[self.head] = Some((t, name, self.cache.locate(name)));
        }
        self.head = (self.head + 1) % AHEAD;
        Some(out)
    }
}

/// Adds one batch's hits and misses to the process counters (once per batch,
/// never per line: a shared counter per line would cost more than the lookup).
pub fn count(hits: u64, misses: u64) {
    if hits > 0 {
        HITS.fetch_add(hits, Ordering::Relaxed);
    }
    if misses > 0 {
        MISSES.fetch_add(misses, Ordering::Relaxed);
    }
}

/// Notes that a router routes through a cache.
pub fn note_in_use() {
    IN_USE.fetch_add(1, Ordering::Relaxed);
}

/// Counts lines of a batch routed around the cache (see [`PosCache::skip_batch`]).
pub fn count_bypassed(lines: u64) {
    BYPASSED.fetch_add(lines, Ordering::Relaxed);
}

/// `[hits, misses, bypassed]` of every cache in the process, or `None` if no router
/// used one.
pub fn totals() -> Option<[u64; 3]> {
    (IN_USE.load(Ordering::Relaxed) > 0)
        .then(|| [&HITS, &MISSES, &BYPASSED].map(|c| c.load(Ordering::Relaxed)))
}

/// A hint to bring `slot`'s cache line in; no effect on what any load returns.
#[inline(always)]
fn prefetch(slot: &Set) {
    // SAFETY: SSE is part of the x86_64 baseline, and a prefetch never faults or
    // reads memory on the program's behalf, whatever the address.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            slot as *const Set as *const i8,
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = slot;
}

/// `n` zeroed sets from `alloc_zeroed`, so the pages come from the kernel as
/// they are touched: a small series set costs only the pages it uses. A table of a
/// huge page or more gets a huge page of slack in front and starts at the first
/// 2 MiB boundary in it (the returned index), so all of it can be huge pages: an
/// allocation as it comes is only page-aligned, and its aligned interior left the
/// default 4 MiB table with one huge page of two (`AnonHugePages: 2048 kB`).
fn zeroed_sets(n: usize) -> (Box<[Set]>, usize) {
    const HUGE: usize = 2 << 20;
    let size = std::mem::size_of::<Set>();
    let slack = if n * size >= HUGE { HUGE / size } else { 0 };
    let total = n + slack;
    let layout = Layout::array::<Set>(total).expect("cache size fits the address space");
    // SAFETY: the layout is non-empty (n >= 2) and describes `n` Sets (64-byte
    // aligned); all-zero bytes are a valid Set (AtomicU64s with the representation of
    // u64), and the pointer is handed to a Box with this very layout, which the
    // global allocator frees.
    unsafe {
        let ptr = alloc_zeroed(layout) as *mut Set;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        let addr = ptr as usize;
        // `addr` is 64-byte aligned, so the distance to the boundary is whole sets,
        // fewer than `slack`: the `n` sets from `base` lie inside the allocation.
        let base = if slack > 0 {
            (addr.next_multiple_of(HUGE) - addr) / size
        } else {
            0
        };
        huge_pages(ptr.add(base) as *mut u8, n * size);
        (
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, total)),
            base,
        )
    }
}

/// Asks Linux to back the 2 MiB-aligned interior of the table with huge pages
/// (the usual `madvise` THP mode does nothing without it): lookups land anywhere
/// in the table, and with 4 KiB pages nearly every one also missed the TLB. Only
/// a hint — the table works the same where it is refused.
fn huge_pages(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + len) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside the allocation just made, which nothing
            // else refers to yet; MADV_HUGEPAGE changes no contents.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

/// Slots of the process's position caches (`-hash-cache-entries`; 0: none).
static SLOTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(DEFAULT_SLOTS);

/// Sets the size of the caches [`for_kind`] hands out; called once at start, before any
/// router is built.
pub fn configure(slots: usize) {
    SLOTS.store(slots, std::sync::atomic::Ordering::Relaxed);
}

/// The process's cache for positions under `kind`, made on first use: one per hash kind
/// (positions depend on the hash, never on the members), shared by every router built
/// for it — ring changes, SIGHUP reloads and every cluster of a rules file on that hash
/// keep it warm. `None` when configured off.
pub fn for_kind(kind: crate::route::ring::HashKind) -> Option<Arc<PosCache>> {
    type Caches = std::sync::Mutex<Vec<(crate::route::ring::HashKind, Arc<PosCache>)>>;
    static CACHES: std::sync::OnceLock<Caches> = std::sync::OnceLock::new();
    let slots = SLOTS.load(std::sync::atomic::Ordering::Relaxed);
    if slots == 0 {
        return None;
    }
    let mut caches = CACHES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = caches.iter().find(|(k, _)| *k == kind) {
        return Some(c.clone());
    }
    let c = Arc::new(PosCache::new(slots));
    caches.push((kind, c.clone()));
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_what_was_inserted_and_only_that() {
        let c = PosCache::new(1 << 10);
        let names: Vec<String> = (0..300).map(|i| format!("a.b.c{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            let p = c.locate(n.as_bytes());
            assert_eq!(c.get(&p), None);
            c.insert(&p, i as u16);
        }
        let mut hits = 0;
        for (i, n) in names.iter().enumerate() {
            // A name evicted by a set-mate is a miss, never a wrong answer.
            if let Some(pos) = c.get(&c.locate(n.as_bytes())) {
                assert_eq!(pos, i as u16, "{n}");
                hits += 1;
            }
        }
        assert!(hits > 290, "300 names in 128 sets of eight: {hits} hits");
        assert_eq!(c.slots(), 1024);
    }

    #[test]
    fn a_large_table_starts_on_a_huge_page_and_stays_in_its_allocation() {
        let c = PosCache::new(DEFAULT_SLOTS);
        let start = &c.sets[c.base] as *const Set as usize;
        assert_eq!(start % (2 << 20), 0, "table starts on a 2 MiB boundary");
        assert!(c.base + c.len <= c.sets.len());
        assert_eq!(c.slots(), DEFAULT_SLOTS);
        for i in 0..100_000u32 {
            let p = c.locate(format!("x.{i}").as_bytes());
            assert!(p.set >= c.base && p.set < c.base + c.len);
        }
        let small = PosCache::new(1 << 10);
        assert_eq!((small.base, small.sets.len()), (0, (1 << 10) / WAYS));
    }

    #[test]
    fn a_full_set_evicts_without_answering_wrongly() {
        // Sixteen slots: fifty names share two sets.
        let c = PosCache::new(2);
        let mut hits = 0;
        for _ in 0..3 {
            for i in 0..50u16 {
                let name = format!("m{i}");
                let (pos, how) = c.resolve(&c.locate(name.as_bytes()), || i * 7);
                assert_eq!(pos, i * 7, "{name}");
                hits += usize::from(how == Outcome::Hit);
            }
        }
        assert!(hits < 150);
    }

    #[test]
    fn only_a_full_cache_that_keeps_missing_is_bypassed() {
        let c = PosCache::new(1 << 10);
        c.learn(0, 0, 5000); // cold: every miss filled a free slot
        assert!(!c.skip_batch());
        c.learn(4000, 900, 5000); // warm
        assert!(!c.skip_batch());
        c.learn(100, 4000, 5000); // thrashing
        let skipped = (0..100).take_while(|_| c.skip_batch()).count();
        assert_eq!(
            skipped, BYPASS as usize,
            "then one batch samples the cache again"
        );
    }
}
