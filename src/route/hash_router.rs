//! `-distribution hash-route`: each line to the owners of its metric on a
//! consistent-hash ring, so graphite-web finds every metric where it was stored.

use std::sync::Arc;

use bytes::Bytes;

use super::pos_cache::{self, Outcome, PosCache, Probe};
use super::ring::{HashKind, HashRing};
use super::{RoutedPart, Router};
use crate::batch::Batch;
use crate::dest::DestAddr;

/// Routes by metric name on a [`HashRing`] with `replication` owners per metric.
pub struct HashRouter {
    ring: HashRing,
    replication: usize,
    members: usize,
    /// Name → ring position; `None` for rings without positions (jump_fnv1a_ch).
    cache: Option<Arc<PosCache>>,
}

impl HashRouter {
    /// A router over `members` (in configuration order, which is ring order), with a
    /// position cache of its own.
    pub fn new(kind: HashKind, members: &[DestAddr], replication: usize) -> Self {
        Self::with_cache(kind, members, replication, pos_cache::for_kind(kind))
    }

    /// A router sharing `cache` with the routers built before it for the same hash
    /// (a daemon's ring changes keep their cache warm: positions do not depend on
    /// the members). `None` computes every position.
    pub fn with_cache(
        kind: HashKind,
        members: &[DestAddr],
        replication: usize,
        cache: Option<Arc<PosCache>>,
    ) -> Self {
        let ring = HashRing::new(kind, members);
        let cache = cache.filter(|_| ring.position(b"").is_some());
        if cache.is_some() {
            pos_cache::note_in_use();
        }
        HashRouter {
            ring,
            replication: replication.max(1),
            members: members.len(),
            cache,
        }
    }

    /// The owners of `metric`, as indices into the member list.
    pub fn owners(&self, metric: &[u8], out: &mut Vec<usize>) {
        match &self.cache {
            Some(cache) => {
                let (pos, how) = self.position(cache, &cache.locate(metric), metric);
                let hit = how == Outcome::Hit;
                pos_cache::count(u64::from(hit), u64::from(!hit));
                self.ring.lookup_at(pos, self.replication, out);
            }
            None => self.ring.lookup(metric, self.replication, out),
        }
    }

    #[inline]
    fn position(&self, cache: &PosCache, probe: &Probe, metric: &[u8]) -> (u16, Outcome) {
        cache.resolve(probe, || self.ring.position(metric).unwrap_or(0))
    }

    /// First pass of [`Router::route`]: every line's owners (`stride` entries per line,
    /// `u32::MAX` for none) and each destination's byte and line count.
    fn place(&self, batch: &Batch, stride: usize) -> Placement {
        let mut p = Placement {
            owners_of_line: Vec::with_capacity(batch.len() * stride),
            shares: vec![Share::default(); self.members],
            line: 0,
        };
        let mut owners = Vec::with_capacity(self.replication);
        let cache = self.cache.as_ref().filter(|c| !c.skip_batch());
        let Some(cache) = cache else {
            for (line, metric) in batch.lines() {
                self.ring.lookup(metric, self.replication, &mut owners);
                p.record(&owners, stride, line.len());
            }
            if self.cache.is_some() {
                pos_cache::count_bypassed(batch.len() as u64);
            }
            return p;
        };
        let (mut hits, mut evictions) = (0u64, 0u64);
        let lines = batch.lines().map(|(line, metric)| (line.len(), metric));
        for (len, metric, probe) in cache.pipelined(lines) {
            let (pos, how) = self.position(cache, &probe, metric);
            hits += u64::from(how == Outcome::Hit);
            evictions += u64::from(how == Outcome::Evicted);
            self.ring.lookup_at(pos, self.replication, &mut owners);
            p.record(&owners, stride, len);
        }
        pos_cache::count(hits, batch.len() as u64 - hits);
        cache.learn(hits, evictions, batch.len() as u64);
        p
    }
}

/// Where the lines of one batch go (see [`HashRouter::place`]).
struct Placement {
    owners_of_line: Vec<u32>,
    /// Per destination, in one allocation (the routing path's allocation count per
    /// batch is bounded by a test).
    shares: Vec<Share>,
    /// Index of the line being recorded.
    line: usize,
}

/// What one destination gets of a batch.
#[derive(Clone, Copy)]
struct Share {
    bytes: usize,
    count: u64,
    /// Stretches of consecutive lines: the exact size of its run list in the second
    /// pass, so that list is one allocation of what it needs.
    runs: usize,
    /// The index of the line just after its last one.
    next_line: usize,
}

impl Default for Share {
    fn default() -> Self {
        Share {
            bytes: 0,
            count: 0,
            runs: 0,
            next_line: usize::MAX,
        }
    }
}

impl Placement {
    #[inline]
    fn record(&mut self, owners: &[usize], stride: usize, len: usize) {
        for k in 0..stride {
            match owners.get(k) {
                Some(&i) => {
                    let share = &mut self.shares[i];
                    share.bytes += len;
                    share.count += 1;
                    share.runs += usize::from(share.next_line != self.line);
                    share.next_line = self.line + 1;
                    self.owners_of_line.push(i as u32);
                }
                None => self.owners_of_line.push(u32::MAX),
            }
        }
        self.line += 1;
    }
}

impl Router for HashRouter {
    fn route(&self, batch: &Batch, out: &mut Vec<RoutedPart>) {
        if self.members == 0 || batch.is_empty() {
            return;
        }
        // Two passes: look every line up once, remembering its owners and each
        // destination's byte count; then fill buffers allocated at their exact size.
        // A ring can be very uneven (graphite-carbon puts every instance-less member
        // of one host side by side), and a buffer sized for an even share would keep
        // a large allocation alive for a few lines — in the queue and in the writer's
        // resend window — multiplying memory by the unevenness.
        let stride = self.replication.min(self.members);
        let placed = self.place(batch, stride);
        // Each destination's run list allocated once at its exact length (counted in
        // the first pass), not regrown per batch.
        let mut runs: Vec<Vec<Run>> = placed
            .shares
            .iter()
            .map(|s| Vec::with_capacity(s.runs))
            .collect();
        let lines = batch
            .lines()
            .zip(placed.owners_of_line.chunks_exact(stride));
        let mut at = 0;
        for ((line, _), line_owners) in lines {
            let end = at + line.len();
            for &i in line_owners.iter().filter(|&&i| i != u32::MAX) {
                let r = &mut runs[i as usize];
                match r.last_mut() {
                    Some(last) if last.end == at => {
                        last.end = end;
                        last.points += 1;
                    }
                    _ => r.push(Run {
                        start: at,
                        end,
                        points: 1,
                    }),
                }
            }
            at = end;
        }
        let data = batch.data();
        for (dest, runs) in runs.iter().enumerate() {
            let bytes = placed.shares[dest].bytes;
            if runs.is_empty() {
                continue;
            }
            if let [r] = runs.as_slice() {
                if 2 * bytes >= data.len() {
                    // Most of the batch in one stretch: a slice of the batch's own buffer,
                    // as broadcast shares it.
                    out.push(RoutedPart {
                        dest,
                        data: data.slice(r.start..r.end),
                        points: r.points,
                    });
                    continue;
                }
            }
            let mut buf = Vec::with_capacity(bytes);
            for r in runs {
                buf.extend_from_slice(&data[r.start..r.end]);
            }
            out.push(RoutedPart {
                dest,
                data: Bytes::from(buf),
                points: placed.shares[dest].count,
            });
        }
    }
}

/// Consecutive lines of a batch going to one destination: `data[start..end]`. A
/// destination's share is copied a run at a time (one copy per run, not per line:
/// neighbours often share an owner, and an uneven ring — graphite-carbon's for
/// instance-less members of one host — sends nearly everything to one member) into one
/// buffer of exactly its size, so a small share never keeps a whole batch alive in a
/// queue and a resend window. A share that is one run of at least half the batch is a
/// slice of the batch's buffer instead. One part per destination: admission reserves
/// each part against the destination's queue as a whole.
#[derive(Clone, Copy)]
struct Run {
    start: usize,
    end: usize,
    points: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a router hands out for each destination, concatenated in order, is exactly
    /// what appending line by line to each owner gives; only a destination holding at
    /// least half the batch in one run gets a slice of the batch's buffer, every other
    /// share is one copied buffer.
    #[test]
    fn parts_are_the_owners_lines_in_order_and_share_only_a_large_share() {
        let even = "127.0.0.1:2104:a,127.0.0.1:2204:b,127.0.0.1:2304:c";
        // Instance-less members of one host: graphite-carbon's ring gives nearly
        // everything to the first.
        let uneven = "127.0.0.1:2001,127.0.0.1:2002,127.0.0.1:2003";
        let text: String = (0..3000).map(|i| format!("m.x{i}.y 1 2\n")).collect();
        let (batch, _) = Batch::from_plaintext(text.into_bytes(), None);
        let mut shared_dests = 0;
        for (list, replication) in [(even, 1), (even, 2), (uneven, 1), (uneven, 3)] {
            let members = DestAddr::parse_list(list).unwrap();
            let router = HashRouter::new(HashKind::CarbonCh, &members, replication);
            let mut want = vec![Vec::new(); members.len()];
            let mut owners = Vec::new();
            for (line, metric) in batch.lines() {
                router.owners(metric, &mut owners);
                for &o in &owners {
                    want[o].extend_from_slice(line);
                }
            }
            let mut parts = Vec::new();
            router.route(&batch, &mut parts);
            for (d, want) in want.iter().enumerate() {
                let mine: Vec<&RoutedPart> = parts.iter().filter(|p| p.dest == d).collect();
                let got: Vec<u8> = mine.iter().flat_map(|p| p.data.iter().copied()).collect();
                assert_eq!(&got, want, "{list} x{replication} dest {d}");
                let points: u64 = mine.iter().map(|p| p.points).sum();
                let lines = want.iter().filter(|&&b| b == b'\n').count() as u64;
                assert_eq!(points, lines, "{list} x{replication} dest {d}");
                for p in &mine {
                    assert_eq!(
                        p.points as usize,
                        p.data.iter().filter(|&&b| b == b'\n').count()
                    );
                }
                let inside =
                    |p: &&RoutedPart| batch.data().as_ptr_range().contains(&p.data.as_ptr());
                assert!(mine.len() <= 1, "one part per destination");
                if mine.iter().any(inside) {
                    shared_dests += 1;
                    assert!(
                        2 * want.len() >= batch.data().len(),
                        "a small share is copied"
                    );
                }
            }
        }
        // uneven x3: every member gets the whole batch, one run each.
        assert!(shared_dests >= 3, "{shared_dests} destinations got slices");
    }

    #[test]
    fn every_line_goes_to_exactly_its_owners() {
        let members: Vec<DestAddr> = ["127.0.0.1:2104:a", "127.0.0.1:2204:b", "127.0.0.1:2304:c"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let router = HashRouter::new(HashKind::CarbonCh, &members, 2);
        let text: String = (0..300).map(|i| format!("m.{i} 1 2\n")).collect();
        let (batch, _) = Batch::from_plaintext(text.into_bytes(), None);
        let mut parts = Vec::new();
        router.route(&batch, &mut parts);
        let total: u64 = parts.iter().map(|p| p.points).sum();
        assert_eq!(total, 600, "replication 2: every line twice");
        let mut owners = Vec::new();
        for p in &parts {
            for line in p.data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let metric = line.split(|&b| b == b' ').next().unwrap();
                router.owners(metric, &mut owners);
                assert!(owners.contains(&p.dest));
            }
        }
    }
}
