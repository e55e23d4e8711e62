//! Consistent-hash rings for `hash-route`.
//!
//! The point of hash routing is that something *else* must find the metric afterwards:
//! graphite-web (CARBONLINK_HOSTS) or a carbon-c-relay cluster computes the owner of a
//! metric independently, so every ring here reproduces a reference implementation bit for
//! bit rather than being "a" consistent hash:
//!
//! * [`HashKind::CarbonCh`]: graphite-carbon 1.1.x `ConsistentHashRing(hash_type='carbon_ch')`,
//!   including its collision shift (a replica whose position is taken moves to +1).
//! * [`HashKind::CarbonChCRelay`]: carbon-c-relay 3.7.x `carbon_ch`, which keeps colliding
//!   positions and lets the first one in its sort order win.
//! * [`HashKind::Fnv1aCh`]: carbon-c-relay `fnv1a_ch` (FNV-1a 32 folded to 16 bits).
//! * [`HashKind::JumpFnv1aCh`]: carbon-c-relay `jump_fnv1a_ch` (jump consistent hash over
//!   64-bit FNV-1a; xorshift re-hash for further replicas).
//!
//! A ring is immutable once built; membership changes (failover) build a new one, which is
//! cheap (a few hundred md5s) compared to the per-line lookups it then serves.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5};

use crate::dest::addr::DestAddr;

/// Ring entries per member for the ring-based hashes. Hardwired in graphite-carbon (and
/// copied by carbon-c-relay); changing it would move metrics away from where graphite-web
/// looks for them.
const REPLICAS: usize = 100;

/// Replication levels up to this many are served from a stack buffer in the jump walk, so
/// the hot path never allocates for any sane configuration.
const JUMP_STACK_SLOTS: usize = 32;

/// Which reference implementation's placement to reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashKind {
    /// graphite-carbon 1.1.x `carbon_ch` (md5 ring with collision shift).
    CarbonCh,
    /// carbon-c-relay 3.7.x `carbon_ch` (md5 ring, no collision shift).
    CarbonChCRelay,
    /// carbon-c-relay `fnv1a_ch`.
    Fnv1aCh,
    /// carbon-c-relay `jump_fnv1a_ch`.
    JumpFnv1aCh,
}

impl HashKind {
    /// Every kind, in the order they are documented.
    pub const ALL: [HashKind; 4] = [
        HashKind::CarbonCh,
        HashKind::CarbonChCRelay,
        HashKind::Fnv1aCh,
        HashKind::JumpFnv1aCh,
    ];

    /// The configuration spelling (what `FromStr` accepts and `Display` prints).
    pub fn name(self) -> &'static str {
        match self {
            HashKind::CarbonCh => "carbon_ch",
            HashKind::CarbonChCRelay => "carbon_ch_c_relay",
            HashKind::Fnv1aCh => "fnv1a_ch",
            HashKind::JumpFnv1aCh => "jump_fnv1a_ch",
        }
    }
}

impl fmt::Display for HashKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A hash name that is not one of [`HashKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown hash {0:?}: expected one of carbon_ch, carbon_ch_c_relay, fnv1a_ch, jump_fnv1a_ch"
)]
pub struct UnknownHashKind(pub String);

impl FromStr for HashKind {
    type Err = UnknownHashKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HashKind::ALL
            .into_iter()
            .find(|k| k.name() == s.trim())
            .ok_or_else(|| UnknownHashKind(s.to_string()))
    }
}

/// An immutable consistent-hash ring over a list of destinations.
///
/// Lookups return indices into the `members` slice the ring was built from, so the caller
/// keeps ownership of its destination objects and the ring stays plain data (`Send + Sync`).
#[derive(Clone, Debug)]
pub struct HashRing {
    kind: HashKind,
    members: usize,
    table: Table,
}

#[derive(Clone, Debug)]
enum Table {
    /// No members: every lookup yields nothing.
    Empty,
    /// carbon_ch / carbon_ch_c_relay / fnv1a_ch.
    Ring(PosRing),
    /// jump_fnv1a_ch: bucket `b` is served by `order[b]`.
    Jump(Box<[u32]>),
}

/// A sorted ring of unique positions. Positions are `u32` because graphite-carbon's
/// collision shift never wraps: a replica bumped past 65535 lands at 65536, 65537, ...,
/// beyond any metric position, and is still reachable by the wrap-around rule.
#[derive(Clone, Debug)]
struct PosRing {
    /// Ascending, unique.
    pos: Box<[u32]>,
    /// Member index owning `pos[i]`.
    owner: Box<[u32]>,
    /// `bucket[b]` = first index whose position is `>= b << 8` (b in 0..=256). Narrows the
    /// search to the handful of entries sharing the metric position's high byte, so a lookup
    /// costs one table read and a tiny binary search instead of a search over the whole ring.
    bucket: Box<[u32]>,
    /// Distinct members present on the ring: the most a lookup can return.
    distinct: usize,
    /// `first[p]` = the owner a walk from metric position `p` finds first (65 536
    /// entries, 128 KiB): replication 1, the common case, then costs one read of a
    /// table that stays in cache instead of a search. Empty above 65 535 members.
    first: Box<[u16]>,
    /// `coarse[p >> 3]` = the owner of all eight positions `p & !7 ..= p | 7` when they
    /// share one (else [`MIXED`]): 8 KiB, small enough to stay in the first-level cache
    /// beside a batch streaming through, where `first` (128 KiB) misses often enough
    /// to be the slowest read of a hash-routed line (a profile put a third of the
    /// router's time on it). A ring has a few hundred points, so at most that many of
    /// the 8 192 entries are mixed. Empty above 254 members.
    coarse: Box<[u8]>,
}

/// A [`PosRing::coarse`] entry whose positions have more than one owner.
const MIXED: u8 = u8::MAX;

impl HashRing {
    /// Builds the ring for `members`, in the order they were configured (graphite-carbon's
    /// collision shift and carbon-c-relay's jump order both depend on it).
    pub fn new(kind: HashKind, members: &[DestAddr]) -> HashRing {
        let table = if members.is_empty() {
            Table::Empty
        } else {
            match kind {
                HashKind::CarbonCh => Table::Ring(build_carbon(members)),
                HashKind::CarbonChCRelay => Table::Ring(build_crelay_carbon(members)),
                HashKind::Fnv1aCh => Table::Ring(build_crelay_fnv1a(members)),
                HashKind::JumpFnv1aCh => Table::Jump(build_jump(members)),
            }
        };
        HashRing {
            kind,
            members: members.len(),
            table,
        }
    }

    /// The hash this ring implements.
    pub fn kind(&self) -> HashKind {
        self.kind
    }

    /// Number of members the ring was built from.
    pub fn len(&self) -> usize {
        self.members
    }

    /// True when the ring was built without members (lookups yield nothing).
    pub fn is_empty(&self) -> bool {
        self.members == 0
    }

    /// Fills `out` (cleared first) with the indices into `members` that own `metric` (the
    /// metric path, first field of a Graphite line): up to `replication` distinct members in
    /// the reference implementation's walk order, fewer if the ring has fewer members.
    ///
    /// Never returns a member twice: graphite-carbon's `get_nodes` repeats the node of a
    /// one-node ring, which would only send the same line twice. Carbon's
    /// `DIVERSE_REPLICAS` (one replica per host) is router policy, not ring placement: ask
    /// for every member and keep the first per host.
    ///
    /// Runs once per line, so it never allocates as long as `out` has room for
    /// `replication` entries (replication above 33 with jump_fnv1a_ch excepted).
    pub fn lookup(&self, metric: &[u8], replication: usize, out: &mut Vec<usize>) {
        out.clear();
        match &self.table {
            Table::Empty => {}
            Table::Ring(ring) => {
                let pos = match self.kind {
                    HashKind::Fnv1aCh => fnv1a_pos(metric),
                    _ => md5_pos(metric),
                };
                ring.walk(pos, replication, out);
            }
            Table::Jump(order) => jump_walk(order, metric, replication, out),
        }
    }

    /// The ring position of `metric` (what [`Self::lookup`] starts its walk from), for
    /// rings whose walk starts from a 16-bit position; `None` for jump_fnv1a_ch and an
    /// empty ring. It depends on the metric and the hash only, never on the members,
    /// which is what makes it safe to cache across ring changes.
    #[inline]
    pub fn position(&self, metric: &[u8]) -> Option<u16> {
        match (&self.table, self.kind) {
            (Table::Ring(_), HashKind::Fnv1aCh) => Some(fnv1a_pos(metric)),
            (Table::Ring(_), _) => Some(md5_pos(metric)),
            _ => None,
        }
    }

    /// [`Self::lookup`] from a position [`Self::position`] returned for this ring's kind:
    /// the same owners in the same order. Does nothing on a ring without positions.
    #[inline]
    pub fn lookup_at(&self, pos: u16, replication: usize, out: &mut Vec<usize>) {
        out.clear();
        if let Table::Ring(ring) = &self.table {
            ring.walk(pos, replication, out);
        }
    }
}

impl PosRing {
    /// Sorts `entries` by position, keeps the first entry of every position (callers put
    /// the winner first) and builds the bucket index.
    fn from_entries(mut entries: Vec<(u32, u32)>) -> PosRing {
        // Stable: equal positions keep the order the caller established.
        entries.sort_by_key(|e| e.0);
        entries.dedup_by_key(|e| e.0);
        let pos: Box<[u32]> = entries.iter().map(|e| e.0).collect();
        let owner: Box<[u32]> = entries.iter().map(|e| e.1).collect();
        let bucket = (0..=256u32)
            .map(|b| pos.partition_point(|&p| p < b << 8) as u32)
            .collect();
        let mut seen: Vec<u32> = owner.to_vec();
        seen.sort_unstable();
        seen.dedup();
        let mut ring = PosRing {
            pos,
            owner,
            bucket,
            distinct: seen.len(),
            first: Box::new([]),
            coarse: Box::new([]),
        };
        if ring.distinct > 0 && seen.last().is_some_and(|&m| m <= u32::from(u16::MAX)) {
            ring.first = (0..=u16::MAX)
                .map(|p| ring.search_first(p) as u16)
                .collect();
        }
        if !ring.first.is_empty() && seen.last().is_some_and(|&m| m < u32::from(MIXED)) {
            ring.coarse = ring
                .first
                .chunks_exact(8)
                .map(|c| match c.iter().all(|&o| o == c[0]) {
                    true => c[0] as u8,
                    false => MIXED,
                })
                .collect();
        }
        ring
    }

    /// The owner a walk from metric position `p` finds first: bisect_left, wrapping.
    fn search_first(&self, p: u16) -> u32 {
        let p = u32::from(p);
        let b = (p >> 8) as usize;
        let lo = self.bucket[b] as usize;
        let hi = self.bucket[b + 1] as usize;
        let idx = lo + self.pos[lo..hi].partition_point(|&x| x < p);
        self.owner[if idx == self.pos.len() { 0 } else { idx }]
    }

    /// bisect_left on the ring (first entry at or after `p`, wrapping to the start), then
    /// clockwise collecting distinct owners; this is what graphite-carbon's `get_nodes` and
    /// carbon-c-relay's `ch_get_nodes` both do.
    #[inline]
    fn walk(&self, p: u16, replication: usize, out: &mut Vec<usize>) {
        if replication == 1 && !self.first.is_empty() {
            let owner = match self.coarse.get(usize::from(p >> 3)) {
                Some(&o) if o != MIXED => u16::from(o),
                _ => self.first[usize::from(p)],
            };
            out.push(usize::from(owner));
            return;
        }
        self.search(p, replication, out);
    }

    /// [`Self::walk`] without the replication-1 table (which is built from it).
    fn search(&self, p: u16, replication: usize, out: &mut Vec<usize>) {
        let want = replication.min(self.distinct);
        if want == 0 {
            return;
        }
        let p = u32::from(p);
        let b = (p >> 8) as usize;
        let lo = self.bucket[b] as usize;
        let hi = self.bucket[b + 1] as usize;
        let n = self.pos.len();
        let mut idx = lo + self.pos[lo..hi].partition_point(|&x| x < p);
        if idx == n {
            idx = 0;
        }
        out.push(self.owner[idx] as usize);
        while out.len() < want {
            idx += 1;
            if idx == n {
                idx = 0;
            }
            let m = self.owner[idx] as usize;
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
}

/// graphite-carbon's ring position: the first two bytes of md5, big-endian (it takes the
/// first four hex digits of `hexdigest()`).
#[inline]
fn md5_pos(key: &[u8]) -> u16 {
    let d = Md5::digest(key);
    u16::from_be_bytes([d[0], d[1]])
}

/// 32-bit FNV-1a over bytes taken as unsigned. carbon-c-relay feeds `char` (signed on x86)
/// which differs for bytes >= 0x80; graphite-carbon/graphite-web (the side that reads the
/// data back) use unsigned bytes, so we follow them. Identical for ASCII metric names.
#[inline]
fn fnv1a_32(key: &[u8]) -> u32 {
    key.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// fnv1a_ch position: the 32-bit hash folded onto 16 bits by xoring its halves.
#[inline]
fn fnv1a_pos(key: &[u8]) -> u16 {
    let h = fnv1a_32(key);
    ((h >> 16) ^ (h & 0xffff)) as u16
}

/// 64-bit FNV-1a, unsigned bytes (see [`fnv1a_32`] for why).
#[inline]
fn fnv1a_64(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// IPv6 hosts are configured bracketed (`[::1]:2003`) but graphite-carbon's destination
/// parser strips the brackets before the host goes into the node key.
fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Python 3 `repr()` of a `str`: graphite-carbon hashes `str((server, instance))`, so the
/// quoting rules are part of the ring position. Single quotes unless the text contains a
/// single quote and no double quote; backslash, the chosen quote and ASCII/C1 control
/// characters are escaped. Other non-ASCII characters are kept, as Python does for
/// printable ones (exotic non-printable code points are not special-cased).
fn push_py_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// graphite-carbon's node key: `str((server, instance))`, e.g. `('127.0.0.1', 'a')` or
/// `('127.0.0.1', None)`. The port is deliberately absent: carbon identifies a cache by
/// host and instance.
fn carbon_node_key(m: &DestAddr) -> String {
    let mut k = String::with_capacity(m.host.len() + 16);
    k.push('(');
    push_py_repr(&mut k, bare_host(&m.host));
    k.push_str(", ");
    match &m.instance {
        Some(i) => push_py_repr(&mut k, i),
        None => k.push_str("None"),
    }
    k.push(')');
    k
}

/// graphite-carbon: members are added in configuration order, replica by replica, and a
/// replica landing on an occupied position moves up by one until it finds a free slot (no
/// wrap-around). Positions therefore end up unique and depend on insertion order.
fn build_carbon(members: &[DestAddr]) -> PosRing {
    let total = members.len() * REPLICAS;
    let mut taken = vec![false; 65536 + total + 1];
    let mut entries = Vec::with_capacity(total);
    for (idx, m) in members.iter().enumerate() {
        let node = carbon_node_key(m);
        for i in 0..REPLICAS {
            let mut p = md5_pos(format!("{node}:{i}").as_bytes()) as usize;
            while taken[p] {
                p += 1;
            }
            taken[p] = true;
            entries.push((p as u32, idx as u32));
        }
    }
    PosRing::from_entries(entries)
}

/// Orders the entries of one position the way carbon-c-relay's qsort comparator does; the
/// first one wins that position (c-relay overwrites the rest with it). Member index is the
/// final tie-break so that identical members resolve deterministically.
fn crelay_sorted(
    mut entries: Vec<(u32, u32)>,
    tie: impl Fn(&DestAddr, &DestAddr) -> Ordering,
    members: &[DestAddr],
) -> PosRing {
    entries.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| tie(&members[a.1 as usize], &members[b.1 as usize]))
            .then(a.1.cmp(&b.1))
    });
    PosRing::from_entries(entries)
}

/// Every member's `REPLICAS` ring positions as `(position, member index)`: `keys` turns a
/// member into the function from replica number to position (carbon-c-relay's rings
/// differ only in that key).
fn replica_entries<F: Fn(usize) -> u16>(
    members: &[DestAddr],
    keys: impl Fn(&DestAddr) -> F,
) -> Vec<(u32, u32)> {
    let mut entries = Vec::with_capacity(members.len() * REPLICAS);
    for (idx, m) in members.iter().enumerate() {
        let pos = keys(m);
        entries.extend((0..REPLICAS).map(|i| (u32::from(pos(i)), idx as u32)));
    }
    entries
}

/// carbon-c-relay `carbon_ch`: same keys as graphite-carbon (formatted without Python's
/// escaping, as c-relay does) but no collision shift; ties on a position go to the lowest
/// host (strcmp), then instance, members without instance last.
fn build_crelay_carbon(members: &[DestAddr]) -> PosRing {
    let entries = replica_entries(members, |m| {
        let host = bare_host(&m.host).to_owned();
        let inst = match &m.instance {
            Some(i) => format!("'{i}'"),
            None => "None".to_string(),
        };
        move |i| md5_pos(format!("('{host}', {inst}):{i}").as_bytes())
    });
    crelay_sorted(
        entries,
        |a, b| {
            bare_host(&a.host).cmp(bare_host(&b.host)).then_with(|| {
                match (&a.instance, &b.instance) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => Ordering::Greater,
                    (Some(_), None) => Ordering::Less,
                    (Some(x), Some(y)) => x.cmp(y),
                }
            })
        },
        members,
    )
}

/// carbon-c-relay `fnv1a_ch`: replica key `"<i>-<instance>"`, or `"<i>-<ip>:<port>"` when
/// the member has no instance (so several caches on one host spread without instances);
/// ties go to the lowest host (strcmp), then port.
fn build_crelay_fnv1a(members: &[DestAddr]) -> PosRing {
    let entries = replica_entries(members, |m| {
        let id = match &m.instance {
            Some(i) => i.clone(),
            None => format!("{}:{}", bare_host(&m.host), m.port),
        };
        move |i| fnv1a_pos(format!("{i}-{id}").as_bytes())
    });
    crelay_sorted(
        entries,
        |a, b| {
            bare_host(&a.host)
                .cmp(bare_host(&b.host))
                .then(a.port.cmp(&b.port))
        },
        members,
    )
}

/// `strtol(s, &end, 10)` with `*end == '\0'`: the whole instance is a (possibly signed,
/// possibly space-prefixed) decimal number. Saturates like strtol.
fn c_whole_number(s: &str) -> Option<i64> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v = digits.bytes().fold(0i64, |v, b| {
        v.saturating_mul(10).saturating_add(i64::from(b - b'0'))
    });
    Some(if neg { -v } else { v })
}

/// Instance order for jump_fnv1a_ch. carbon-c-relay compares two instances numerically
/// when both are whole numbers and with strcmp otherwise; that is not a total order when
/// numeric and non-numeric instances are mixed (and Rust's sort may panic on one), so
/// numeric instances sort before the others here. Identical to c-relay whenever the
/// instances are all numeric or all non-numeric.
fn jump_instance_cmp(a: &str, b: &str) -> Ordering {
    match (c_whole_number(a), c_whole_number(b)) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// carbon-c-relay jump_fnv1a_ch bucket order: members with an instance first, sorted by
/// instance (the instance names the shard, so reordering the config keeps placement);
/// members without instance follow in configuration order.
fn build_jump(members: &[DestAddr]) -> Box<[u32]> {
    let mut order: Vec<u32> = (0..members.len() as u32).collect();
    order.sort_by(
        |&a, &b| match (&members[a as usize].instance, &members[b as usize].instance) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => jump_instance_cmp(x, y),
        },
    );
    order.into_boxed_slice()
}

/// Jump consistent hash (Lamping & Veach), with carbon-c-relay's float arithmetic so the
/// bucket boundaries match exactly.
#[inline]
fn jump_bucket(mut key: u64, buckets: usize) -> usize {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

/// xorshift64* step carbon-c-relay uses to derive the hash for the next replica.
#[inline]
fn xorshift64star(mut h: u64) -> u64 {
    h ^= h >> 12;
    h ^= h << 25;
    h ^= h >> 27;
    h.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// carbon-c-relay's jump replication: pick a bucket among the `k` remaining, then remove it
/// by moving the last remaining bucket into its slot (swap-remove) and re-hash. Instead of
/// copying the whole bucket list per line, only the swapped slots are remembered (at most
/// `replication - 1` of them), in a stack buffer for any realistic replication level.
fn jump_walk(order: &[u32], metric: &[u8], replication: usize, out: &mut Vec<usize>) {
    let n = order.len();
    let want = replication.min(n);
    if want == 0 {
        return;
    }
    let mut h = fnv1a_64(metric);
    let first = jump_bucket(h, n);
    out.push(order[first] as usize);
    if want == 1 {
        return;
    }
    let mut stack = [(0u32, 0u32); JUMP_STACK_SLOTS];
    let mut heap;
    let slots: &mut [(u32, u32)] = if want - 1 <= JUMP_STACK_SLOTS {
        &mut stack
    } else {
        heap = vec![(0u32, 0u32); want - 1];
        &mut heap
    };
    let mut used = 0usize;
    // Value of virtual slot `s` of the bucket list after the swaps so far.
    let get = |slots: &[(u32, u32)], used: usize, s: usize| -> u32 {
        slots[..used]
            .iter()
            .find(|e| e.0 as usize == s)
            .map_or(s as u32, |e| e.1)
    };
    let mut j = first;
    let mut remaining = n;
    while out.len() < want {
        h = xorshift64star(h);
        remaining -= 1;
        let moved = get(slots, used, remaining);
        match slots[..used].iter_mut().find(|e| e.0 as usize == j) {
            Some(e) => e.1 = moved,
            None => {
                slots[used] = (j as u32, moved);
                used += 1;
            }
        }
        j = jump_bucket(h, remaining);
        out.push(order[get(slots, used, j) as usize] as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &str) -> Vec<DestAddr> {
        DestAddr::parse_list(list).unwrap()
    }

    fn names(members: &[DestAddr], idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| members[i].to_string()).collect()
    }

    #[test]
    fn kind_names_round_trip() {
        for k in HashKind::ALL {
            assert_eq!(k.to_string().parse::<HashKind>().unwrap(), k);
        }
        let err = "md5".parse::<HashKind>().unwrap_err().to_string();
        for k in HashKind::ALL {
            assert!(err.contains(k.name()), "{err}");
        }
    }

    /// The replication-1 shortcuts (`coarse`, then `first`) give what the search gives,
    /// at every one of the 65 536 positions, for rings of one to 300 members.
    #[test]
    fn replication_one_tables_agree_with_the_search_everywhere() {
        for kind in [
            HashKind::CarbonCh,
            HashKind::CarbonChCRelay,
            HashKind::Fnv1aCh,
        ] {
            for n in [1usize, 2, 3, 10, 254, 300] {
                let list: Vec<String> = (0..n)
                    .map(|i| format!("10.0.{}.{}:2003:{i}", i / 250, i % 250))
                    .collect();
                let ring = HashRing::new(kind, &addrs(&list.join(",")));
                let Table::Ring(r) = &ring.table else {
                    panic!("{kind} is a ring")
                };
                assert_eq!(r.coarse.is_empty(), n >= 255, "{kind} {n}");
                let mixed = r.coarse.iter().filter(|&&o| o == MIXED).count();
                assert!(
                    n == 1 || n >= 255 || mixed > 0,
                    "{kind} {n}: some buckets are mixed"
                );
                let (mut fast, mut slow) = (Vec::new(), Vec::new());
                for p in 0..=u16::MAX {
                    fast.clear();
                    slow.clear();
                    r.walk(p, 1, &mut fast);
                    r.search(p, 1, &mut slow);
                    assert_eq!(fast, slow, "{kind} {n} members, position {p}");
                }
            }
        }
    }

    #[test]
    fn ring_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<HashRing>();
    }

    #[test]
    fn node_key_follows_python_repr() {
        let m: DestAddr = "127.0.0.1:2003:a".parse().unwrap();
        assert_eq!(carbon_node_key(&m), "('127.0.0.1', 'a')");
        let m: DestAddr = "127.0.0.1:2003".parse().unwrap();
        assert_eq!(carbon_node_key(&m), "('127.0.0.1', None)");
        let m: DestAddr = "[::1]:2003:x".parse().unwrap();
        assert_eq!(carbon_node_key(&m), "('::1', 'x')");
        let mut s = String::new();
        push_py_repr(&mut s, "it's");
        assert_eq!(s, "\"it's\"");
        s.clear();
        push_py_repr(&mut s, "a'b\"c\\\t");
        assert_eq!(s, r#"'a\'b"c\\\t'"#);
    }

    #[test]
    fn fnv_reference_values() {
        // Published FNV-1a test vectors.
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn empty_ring_returns_nothing() {
        for k in HashKind::ALL {
            let ring = HashRing::new(k, &[]);
            assert!(ring.is_empty());
            let mut out = vec![7];
            ring.lookup(b"a.b.c", 3, &mut out);
            assert!(out.is_empty(), "{k}");
        }
    }

    #[test]
    fn replication_is_capped_by_members() {
        let m = addrs("10.0.0.1:2003,10.0.0.2:2003:b,10.0.0.3:2003");
        for k in HashKind::ALL {
            let ring = HashRing::new(k, &m);
            let mut out = Vec::new();
            for metric in ["a.b.c", "servers.web01.cpu.user", "x"] {
                ring.lookup(metric.as_bytes(), 10, &mut out);
                let mut sorted = out.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, vec![0, 1, 2], "{k} {metric}");
                ring.lookup(metric.as_bytes(), 0, &mut out);
                assert!(out.is_empty());
            }
        }
    }

    #[test]
    fn mixed_instance_members() {
        let m = addrs("10.0.0.1:2003,10.0.0.1:2004:a,10.0.0.2:2003,10.0.0.2:2004:b");
        for k in HashKind::ALL {
            let ring = HashRing::new(k, &m);
            let mut out = Vec::with_capacity(4);
            let mut hits = [0usize; 4];
            for i in 0..4000 {
                let metric = format!("host{i:04}.cpu.core{}.user", i % 8);
                ring.lookup(metric.as_bytes(), 2, &mut out);
                assert_eq!(out.len(), 2);
                assert_ne!(out[0], out[1]);
                hits[out[0]] += 1;
            }
            // Every member must own a fair share of the keyspace.
            assert!(hits.iter().all(|&h| h > 500), "{k}: {hits:?}");
        }
        // Jump order: instances first (sorted), then plain members in config order.
        let Table::Jump(order) = &HashRing::new(HashKind::JumpFnv1aCh, &m).table else {
            unreachable!()
        };
        assert_eq!(&order[..], &[1, 3, 0, 2]);
    }

    #[test]
    fn carbon_collision_shift_differs_from_c_relay() {
        // From fixtures/carbon_ch/carbon_ch.three_hosts_collision.tsv and the c-relay twin.
        let m = addrs("127.0.0.1:2003,127.0.0.2:2003,127.0.0.3:2003");
        let mut out = Vec::new();
        HashRing::new(HashKind::CarbonCh, &m).lookup(b"test.metric.24357", 1, &mut out);
        assert_eq!(names(&m, &out), ["127.0.0.3:2003"]);
        HashRing::new(HashKind::CarbonChCRelay, &m).lookup(b"test.metric.24357", 1, &mut out);
        assert_eq!(names(&m, &out), ["127.0.0.1:2003"]);
    }

    #[test]
    fn identical_node_keys_stay_deterministic() {
        // Same host and instance on two ports: carbon refuses this configuration; the ring
        // must still answer consistently rather than panic.
        let m = addrs("10.0.0.1:2003,10.0.0.1:2004");
        for k in HashKind::ALL {
            let a = HashRing::new(k, &m);
            let b = HashRing::new(k, &m);
            let (mut x, mut y) = (Vec::new(), Vec::new());
            a.lookup(b"some.metric", 2, &mut x);
            b.lookup(b"some.metric", 2, &mut y);
            assert_eq!(x, y);
            assert!(!x.is_empty());
        }
    }

    #[test]
    fn lookup_does_not_reallocate() {
        let m: Vec<DestAddr> = (0..40)
            .map(|i| format!("10.0.0.{i}:2003:{i}").parse().unwrap())
            .collect();
        for k in HashKind::ALL {
            let ring = HashRing::new(k, &m);
            let mut out = Vec::with_capacity(40);
            let ptr = out.as_ptr();
            for r in [1, 2, 3, 33, 34, 40] {
                ring.lookup(b"host0042.cpu.core5.user", r, &mut out);
                assert_eq!(out.len(), r);
                let mut s = out.clone();
                s.sort_unstable();
                s.dedup();
                assert_eq!(s.len(), r, "{k}: duplicates in {out:?}");
            }
            assert_eq!(out.as_ptr(), ptr);
        }
    }

    #[test]
    fn jump_replicas_match_naive_swap_remove() {
        // The sparse swap bookkeeping must equal carbon-c-relay's full bucket-list copy.
        let m: Vec<DestAddr> = (0..50)
            .map(|i| format!("10.0.1.{i}:2003").parse().unwrap())
            .collect();
        let ring = HashRing::new(HashKind::JumpFnv1aCh, &m);
        let Table::Jump(order) = &ring.table else {
            unreachable!()
        };
        let mut out = Vec::new();
        for i in 0..300 {
            let metric = format!("svc{i}.latency.p99");
            let mut list: Vec<u32> = order.to_vec();
            let mut h = fnv1a_64(metric.as_bytes());
            let mut expect = Vec::new();
            let mut k = list.len();
            while k > 0 && expect.len() < 45 {
                let j = jump_bucket(h, k);
                expect.push(list[j] as usize);
                h = xorshift64star(h);
                k -= 1;
                list[j] = list[k];
            }
            ring.lookup(metric.as_bytes(), 45, &mut out);
            assert_eq!(out, expect);
        }
    }

    #[test]
    fn c_number_parsing() {
        assert_eq!(c_whole_number("0001"), Some(1));
        assert_eq!(c_whole_number(" -7"), Some(-7));
        assert_eq!(c_whole_number("P0001"), None);
        assert_eq!(c_whole_number("1a"), None);
        assert_eq!(jump_instance_cmp("9", "10"), Ordering::Less);
        assert_eq!(jump_instance_cmp("b", "a"), Ordering::Greater);
    }
}
