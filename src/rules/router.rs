//! The one router: routing rules ([`crate::rules::Rules`]) over the daemon's
//! destinations.
//!
//! A daemon without `-config` routes by `match * send to` one cluster made of
//! `-destinations` ([`Rules::single`], [`Cluster::from_flags`]); with `-config` by the
//! file's rules. Either way a batch becomes one buffer per destination, and the pipeline
//! admits all of them or none — the same promise, whatever the rules say.
//!
//! Two shapes skip the per-line decision because they cannot change a name: every line
//! to one `forward` cluster shares the batch's own buffer (broadcast), and every line to
//! one hash cluster only asks the ring (the [`HashRing::lookup`](crate::route::ring::HashRing::lookup)
//! a cache can sit in front of).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::Batch;
use crate::dest::DestAddr;
use crate::route::counters::RouteCounters;
use crate::route::hash_router::HashRouter;
use crate::route::{RoutedPart, Router};
use crate::rules::ast::{ClusterKind, Member};
use crate::rules::plan::Lookup;
use crate::rules::{Action, Cluster, Decision, Outcome, Rules};

/// How a router spends its time per line.
enum Shape {
    /// Every line, unchanged, to every member of one forward cluster: share the buffer.
    Everywhere(usize),
    /// Every line, unchanged, to one hash cluster whose members are the destinations:
    /// the hash router (its ring lookup, exact-size buffers).
    Hash(usize, HashRouter),
    /// Every line, unchanged, to one cluster: placement only.
    OneCluster(usize),
    /// The full decision per line.
    Rules,
}

/// Routes by rules; built for one destination list, replaced when it changes.
pub struct RulesRouter {
    rules: Arc<Rules>,
    /// `down[c][m]`: member `m` of cluster `c` is down (its destination failed to connect).
    down: Vec<Vec<bool>>,
    /// `moving[c]`: cluster `c` moves a down member's share and has a member down now.
    moving: Vec<bool>,
    /// `-hash-failover`: every hash cluster is `dynamic`.
    all_dynamic: bool,
    /// `member_dest[c][m]`: the destination index of member `m` of cluster `c`.
    member_dest: Vec<Vec<Option<usize>>>,
    dests: usize,
    shape: Shape,
    counters: Arc<RouteCounters>,
    /// `ip_prefix[c]`: cluster `c` is `file ip` (each line starts with the sender's address).
    ip_prefix: Vec<bool>,
    /// `fixed[c]`: the destinations every line to cluster `c` goes to, when that does
    /// not depend on the name (`forward`, `file`, a `failover` with no member down), so
    /// a line skips the placement.
    fixed: Vec<Option<Vec<usize>>>,
}

impl RulesRouter {
    /// A router for `rules` over `dests` (the topology's destinations, in index order).
    /// A member not in `dests` (not in service) gets nothing; the registry keeps every
    /// member of a configuration in service, so that happens only without `-config`.
    pub fn new(rules: Arc<Rules>, dests: &[DestAddr], counters: Arc<RouteCounters>) -> Self {
        let members = Members {
            addrs: dests,
            down: &HashSet::new(),
            files: &[],
        };
        Self::with_liveness(rules, members, false, counters)
    }

    /// [`new`](Self::new) knowing which destinations are `down`: the clusters that move
    /// a down member's share (`any_of`, `failover`, `dynamic`, every hash cluster with
    /// `all_dynamic`) place around them; the others keep queueing for them.
    pub fn with_liveness(
        rules: Arc<Rules>,
        members: Members<'_>,
        all_dynamic: bool,
        counters: Arc<RouteCounters>,
    ) -> Self {
        let Members {
            addrs: dests,
            down,
            files,
        } = members;
        let member_dest: Vec<Vec<Option<usize>>> = rules
            .clusters
            .iter()
            .map(|c| member_dest_of(c, dests, files))
            .collect();
        let down_of: Vec<Vec<bool>> = rules
            .clusters
            .iter()
            .map(|c| {
                c.members
                    .iter()
                    .map(|m| matches!(m, Member::Tcp(a) if down.contains(a)))
                    .collect()
            })
            .collect();
        let moving: Vec<bool> = rules
            .clusters
            .iter()
            .zip(&down_of)
            .map(|(c, d)| c.moves_when_down(all_dynamic) && d.iter().any(|&x| x))
            .collect();
        let all: Vec<Option<usize>> = (0..dests.len() + files.len()).map(Some).collect();
        let shape = match rules.single_cluster() {
            Some(c) if moving[c] => Shape::OneCluster(c),
            Some(c) if member_dest[c] == all => {
                let cluster = &rules.clusters[c];
                match (&cluster.kind, cluster.ring_kind()) {
                    (ClusterKind::Forward, _) => Shape::Everywhere(c),
                    (_, Some(kind)) => {
                        Shape::Hash(c, HashRouter::new(kind, dests, cluster.replication))
                    }
                    _ => Shape::OneCluster(c),
                }
            }
            Some(c) => Shape::OneCluster(c),
            None => Shape::Rules,
        };
        let ip_prefix = rules
            .clusters
            .iter()
            .map(|c| c.kind == ClusterKind::File { ip: true })
            .collect();
        let fixed = rules
            .clusters
            .iter()
            .enumerate()
            .map(|(c, cluster)| {
                let dests = |m: &[Option<usize>]| m.iter().flatten().copied().collect();
                match cluster.kind {
                    _ if moving[c] || cluster.members.is_empty() => None,
                    ClusterKind::Forward | ClusterKind::File { .. } => Some(dests(&member_dest[c])),
                    ClusterKind::Failover => Some(dests(&member_dest[c][..1])),
                    _ => None,
                }
            })
            .collect();
        RulesRouter {
            fixed,
            ip_prefix,
            rules,
            down: down_of,
            moving,
            all_dynamic,
            member_dest,
            dests: dests.len() + files.len(),
            shape,
            counters,
        }
    }

    /// The default cluster of a daemon without `-config`: `-destinations` broadcast
    /// (`ring: None`) or on a hash ring.
    pub fn for_flags(
        dests: &[DestAddr],
        ring: Option<crate::route::ring::HashKind>,
        replication: usize,
        counters: Arc<RouteCounters>,
    ) -> Self {
        let cluster = Cluster::from_flags("default", dests, ring, replication);
        RulesRouter::new(Arc::new(Rules::single(cluster)), dests, counters)
    }
}

/// The destinations a router is built over: the addresses in index order, which of them
/// are down, and the names of the file destinations that follow them.
#[derive(Clone, Copy)]
pub struct Members<'a> {
    pub addrs: &'a [DestAddr],
    pub down: &'a HashSet<DestAddr>,
    /// [`crate::dest::file::FileWriter`] names (the paths), index `addrs.len() + i`.
    pub files: &'a [String],
}

fn member_dest_of(c: &Cluster, dests: &[DestAddr], files: &[String]) -> Vec<Option<usize>> {
    c.members
        .iter()
        .map(|m| match m {
            Member::Tcp(a) => dests.iter().position(|d| d == a),
            Member::File(p) => {
                let name = p.display().to_string();
                files
                    .iter()
                    .position(|f| *f == name)
                    .map(|i| dests.len() + i)
            }
        })
        .collect()
}

/// Per-destination output of one batch. A line that goes out unchanged is not copied at
/// once: consecutive ones are kept as a run of the batch's own buffer, copied in one piece
/// when the run breaks — and a destination whose lines are one run (every line, or one
/// contiguous stretch) gets a slice of the batch's buffer, no copy at all.
struct Parts {
    bufs: Vec<Vec<u8>>,
    counts: Vec<u64>,
    /// Room a buffer takes at its first line: the batch's size and an eighth, so it does
    /// not grow by doubling (each doubling copies what it holds, and the queue then holds
    /// twice the bytes) when rewrites lengthen some names (`servers.dc0.` →
    /// `servers.site0.` on a quarter of the lines made every buffer double).
    room: usize,
    /// The batch's buffer.
    data: Bytes,
    /// `runs[d]`: the range of `data` destination `d` gets next, not yet copied.
    runs: Vec<(usize, usize)>,
}

impl Parts {
    fn new(n: usize, batch: &Batch) -> Parts {
        Parts {
            bufs: vec![Vec::new(); n],
            counts: vec![0; n],
            room: batch.data().len() + batch.data().len() / 8,
            data: batch.data().clone(),
            runs: vec![(0, 0); n],
        }
    }

    /// Appends `line` to destination `d` under `name` (`metric` is its name in `line`),
    /// after `prefix` (a `file ip` cluster's `<sender address> `).
    fn push(&mut self, d: usize, prefix: &[u8], line: &[u8], metric: &[u8], name: &[u8]) {
        self.counts[d] += 1;
        let unchanged = unchanged(name, metric);
        if prefix.is_empty() && unchanged {
            if let Some(at) = self.offset(line) {
                let run = &mut self.runs[d];
                if run.0 != run.1 && run.1 == at {
                    run.1 = at + line.len();
                    return;
                }
                self.flush(d);
                self.runs[d] = (at, at + line.len());
                return;
            }
        }
        self.flush(d);
        let buf = &mut self.bufs[d];
        if buf.capacity() == 0 {
            buf.reserve(self.room);
        }
        buf.extend_from_slice(prefix);
        if unchanged {
            buf.extend_from_slice(line);
        } else {
            buf.extend_from_slice(name);
            buf.extend_from_slice(&line[metric.len()..]);
        }
    }

    /// Where `line` starts in the batch's buffer, if it lies there.
    fn offset(&self, line: &[u8]) -> Option<usize> {
        let base = self.data.as_ptr() as usize;
        let at = (line.as_ptr() as usize).checked_sub(base)?;
        (at + line.len() <= self.data.len()).then_some(at)
    }

    /// Copies destination `d`'s pending run into its buffer.
    fn flush(&mut self, d: usize) {
        let (start, end) = std::mem::take(&mut self.runs[d]);
        if start == end {
            return;
        }
        let buf = &mut self.bufs[d];
        if buf.capacity() == 0 {
            buf.reserve(self.room);
        }
        buf.extend_from_slice(&self.data[start..end]);
    }

    fn finish(mut self, out: &mut Vec<RoutedPart>) {
        for dest in 0..self.bufs.len() {
            let points = self.counts[dest];
            if points == 0 {
                continue;
            }
            let (start, end) = self.runs[dest];
            let data = if self.bufs[dest].is_empty() && start != end {
                self.data.slice(start..end)
            } else {
                self.flush(dest);
                Bytes::from(std::mem::take(&mut self.bufs[dest]))
            };
            out.push(RoutedPart { dest, data, points });
        }
    }
}

/// True when `name` is `metric`: most often the very same slice (no rewrite applied),
/// which is decided without comparing the bytes.
#[inline]
fn unchanged(name: &[u8], metric: &[u8]) -> bool {
    std::ptr::eq(name, metric) || name == metric
}

impl RulesRouter {
    /// The members of cluster `c` that `name` goes to now.
    fn place(&self, c: usize, name: &[u8], placed: &mut Vec<usize>) {
        let cluster = &self.rules.clusters[c];
        if self.moving[c] {
            let down = &self.down[c];
            cluster.placement_live(name, &|m| down[m], placed);
        } else {
            cluster.placement(name, placed);
        }
    }

    /// The one cluster holding destination `dest` that may move it, if only one holds it.
    fn moving_cluster_of(&self, dest: usize) -> Option<usize> {
        let mut holders = self
            .member_dest
            .iter()
            .enumerate()
            .filter(|(_, m)| m.contains(&Some(dest)))
            .map(|(c, _)| c);
        let c = holders.next()?;
        let movable = self.rules.clusters[c].moves_when_down(self.all_dynamic);
        (holders.next().is_none() && movable).then_some(c)
    }

    /// Every line to cluster `c` under its own name.
    fn route_one_cluster(&self, c: usize, batch: &Batch, parts: &mut Parts) {
        let src = self.source_prefix(batch);
        let prefix = self.prefix_of(c, &src);
        let mut placed = Vec::with_capacity(self.rules.clusters[c].replication);
        for (line, metric) in batch.lines() {
            self.place(c, metric, &mut placed);
            for &m in &placed {
                if let Some(d) = self.member_dest[c][m] {
                    parts.push(d, prefix, line, metric, metric);
                }
            }
        }
        self.count_cluster(c, batch.len());
    }

    /// `<sender address> ` when some cluster is `file ip` (carbon-c-relay's `srcaddr`,
    /// `(unknown)` when the source did not say), else empty.
    fn source_prefix(&self, batch: &Batch) -> Vec<u8> {
        if !self.ip_prefix.contains(&true) {
            return Vec::new();
        }
        match batch.source() {
            Some(ip) => format!("{ip} ").into_bytes(),
            None => b"(unknown) ".to_vec(),
        }
    }

    /// What a line to cluster `c` starts with: `src` for a `file ip` cluster.
    fn prefix_of<'a>(&self, c: usize, src: &'a [u8]) -> &'a [u8] {
        if self.ip_prefix[c] {
            src
        } else {
            b""
        }
    }

    /// Counts `lines` sent to cluster `c` by the one rule of a single-cluster shape.
    fn count_cluster(&self, c: usize, lines: usize) {
        if let Some(slot) = self.counters.cluster_lines.get(c) {
            slot.1.fetch_add(lines as u64, Ordering::Relaxed);
        }
        if let Some(rule) = self.counters.rules.first() {
            rule.matched.fetch_add(lines as u64, Ordering::Relaxed);
        }
    }

    /// The full decision per line: rewrites, matches, validate, blackhole — replayed from
    /// the decision cache for a name seen before. Names are located
    /// [`AHEAD`](crate::route::pos_cache::AHEAD) lines ahead of their decision
    /// ([`PosCache::pipelined`](crate::route::pos_cache::PosCache::pipelined)), so the
    /// table misses overlap with the work.
    fn route_rules(&self, batch: &Batch, parts: &mut Parts) {
        let mut d = Decision::default();
        let mut t = Tally::new(self.rules.clusters.len(), self.counters.rules.len());
        let src = self.source_prefix(batch);
        let Some(cache) = self.rules.cache().filter(|c| !c.skip_batch()) else {
            for (line, metric) in batch.lines() {
                self.rules.route_into(metric, line, &mut d);
                self.emit_decision(&d, (line, metric), &src, parts, &mut t);
            }
            return self.add(t);
        };
        let (mut hits, mut evictions) = (0u64, 0u64);
        let mut rw = Rewritten::default();
        for (line, metric, probe) in cache.pipelined(batch.lines()) {
            // A remembered plan needs no Decision: its rewrites make the names
            // (none: every action is on `metric`), its actions and outcomes follow.
            if let Some(p) = cache.find(&probe) {
                hits += 1;
                let matched = p.matched.iter().map(|&(r, o)| (r as usize, o));
                if p.rewrites.is_empty() {
                    let actions = p.actions.iter().map(|&(_, a)| (metric, a));
                    self.emit(matched, actions, (line, metric), &src, parts, &mut t);
                } else {
                    rw.make(&self.rules, &p.rewrites, metric);
                    let actions = p.actions.iter().map(|&(n, a)| (rw.name(n, metric), a));
                    self.emit(matched, actions, (line, metric), &src, parts, &mut t);
                }
                continue;
            }
            match self.rules.route_cached(cache, &probe, metric, line, &mut d) {
                Lookup::Hit => hits += 1,
                Lookup::Stored(true) => evictions += 1,
                _ => {}
            }
            self.emit_decision(&d, (line, metric), &src, parts, &mut t);
        }
        cache.learn(hits, evictions, batch.len() as u64);
        self.add(t);
    }

    /// [`emit`](Self::emit) of a [`Decision`].
    fn emit_decision(
        &self,
        d: &Decision,
        lm: (&[u8], &[u8]),
        src: &[u8],
        parts: &mut Parts,
        t: &mut Tally,
    ) {
        self.emit(d.matched().iter().copied(), d.actions(), lm, src, parts, t);
    }

    /// Hands one decided line (`(line, metric)`: what the rules `matched`, the `actions`
    /// with the name each applies under) to the destinations and counts it.
    fn emit<'n>(
        &self,
        matched: impl Iterator<Item = (usize, Outcome)>,
        actions: impl Iterator<Item = (&'n [u8], Action)>,
        lm: (&[u8], &[u8]),
        src: &[u8],
        parts: &mut Parts,
        t: &mut Tally,
    ) {
        let (line, metric) = lm;
        for (rule, outcome) in matched {
            if let Some(k) = self.counters.slot_of(rule) {
                let n = &mut t.per_rule[k];
                n[0] += 1;
                match outcome {
                    Outcome::Sent => {}
                    Outcome::Blackholed => n[1] += 1,
                    Outcome::Dropped => n[2] += 1,
                }
            }
        }
        for (name, action) in actions {
            match action {
                Action::Cluster(c) => {
                    t.per_cluster[c] += 1;
                    let prefix = self.prefix_of(c, src);
                    if let Some(dests) = &self.fixed[c] {
                        for &dest in dests {
                            parts.push(dest, prefix, line, metric, name);
                        }
                        continue;
                    }
                    self.place(c, name, &mut t.placed);
                    for &m in &t.placed {
                        if let Some(dest) = self.member_dest[c][m] {
                            parts.push(dest, prefix, line, metric, name);
                        }
                    }
                }
                Action::Blackhole => t.blackholed += 1,
                Action::Invalid => {
                    t.invalid += 1;
                    if t.invalid_example.is_empty() {
                        t.invalid_example = name.to_vec();
                    }
                }
                Action::Drop { log } => {
                    t.dropped += 1;
                    if log {
                        tracing::warn!(
                            "validate dropped: {}",
                            String::from_utf8_lossy(line.trim_ascii_end())
                        );
                    }
                }
            }
        }
    }

    /// Adds one batch's counts to the shared counters (once per batch, not per line).
    fn add(&self, t: Tally) {
        let c = &self.counters;
        c.blackholed.fetch_add(t.blackholed, Ordering::Relaxed);
        c.dropped.fetch_add(t.dropped, Ordering::Relaxed);
        if t.invalid > 0 {
            c.invalid.fetch_add(t.invalid, Ordering::Relaxed);
            c.note_invalid(&t.invalid_example);
        }
        for (slot, n) in c.cluster_lines.iter().zip(t.per_cluster) {
            slot.1.fetch_add(n, Ordering::Relaxed);
        }
        c.add_rules(&t.per_rule);
    }
}

/// The names a remembered plan's rewrites make of one line's name, back to back (the
/// input name itself is not copied: name 0 is the line's own).
#[derive(Default)]
struct Rewritten {
    arena: Vec<u8>,
    /// `(start, end)` in `arena` of name `k + 1`.
    names: Vec<(usize, usize)>,
    scratch: Vec<u8>,
    locs: Vec<Option<::regex::bytes::CaptureLocations>>,
}

impl Rewritten {
    /// Applies `steps` (a plan's rewrites, in order) to `metric`.
    fn make(&mut self, rules: &Rules, steps: &[u32], metric: &[u8]) {
        self.arena.clear();
        self.names.clear();
        for &step in steps {
            let start = self.arena.len();
            match self.names.last() {
                // The first rewrite reads the line's name: straight into the arena.
                None => rules.rewrite_step(step, metric, &mut self.locs, &mut self.arena),
                Some(&(s, e)) => {
                    self.scratch.clear();
                    let input = &self.arena[s..e];
                    rules.rewrite_step(step, input, &mut self.locs, &mut self.scratch);
                    self.arena.extend_from_slice(&self.scratch);
                }
            }
            self.names.push((start, self.arena.len()));
        }
    }

    /// Name `n` of the plan: 0 is `metric`, `k` what rewrite `k` made.
    fn name<'a>(&'a self, n: u32, metric: &'a [u8]) -> &'a [u8] {
        match (n as usize).checked_sub(1).and_then(|k| self.names.get(k)) {
            Some(&(s, e)) => &self.arena[s..e],
            None => metric,
        }
    }
}

/// One batch's counts, and the placement buffer its lines reuse.
struct Tally {
    blackholed: u64,
    dropped: u64,
    invalid: u64,
    /// The first name of the batch a rewrite made invalid (for the log).
    invalid_example: Vec<u8>,
    per_cluster: Vec<u64>,
    per_rule: Vec<[u64; 3]>,
    placed: Vec<usize>,
}

impl Tally {
    fn new(clusters: usize, rules: usize) -> Tally {
        Tally {
            blackholed: 0,
            dropped: 0,
            invalid: 0,
            invalid_example: Vec::new(),
            per_cluster: vec![0; clusters],
            per_rule: vec![[0; 3]; rules],
            placed: Vec::new(),
        }
    }
}

impl Router for RulesRouter {
    fn route(&self, batch: &Batch, out: &mut Vec<RoutedPart>) {
        if batch.is_empty() {
            return;
        }
        if let Shape::Hash(c, h) = &self.shape {
            h.route(batch, out);
            self.count_cluster(*c, batch.len());
            return;
        }
        if let Shape::Everywhere(c) = self.shape {
            out.extend((0..self.dests).map(|dest| RoutedPart {
                dest,
                data: batch.data().clone(),
                points: batch.len() as u64,
            }));
            self.count_cluster(c, batch.len());
            return;
        }
        let mut parts = Parts::new(self.dests, batch);
        match self.shape {
            Shape::OneCluster(c) => self.route_one_cluster(c, batch, &mut parts),
            _ => self.route_rules(batch, &mut parts),
        }
        parts.finish(out);
    }

    fn sends_everything_everywhere(&self) -> bool {
        matches!(self.shape, Shape::Everywhere(_))
    }

    fn route_moved(&self, from: Option<usize>, batch: &Batch, out: &mut Vec<RoutedPart>) {
        let Some(from) = from else {
            // Taken out of the topology (`-hash-failover` without rules): the default
            // cluster is rebuilt over the live destinations, route as any batch.
            return self.route(batch, out);
        };
        let Some(c) = self.moving_cluster_of(from) else {
            // Not ours to move: the lines stay with the destination they were queued for.
            if !batch.is_empty() {
                out.push(RoutedPart {
                    dest: from,
                    data: batch.data().clone(),
                    points: batch.len() as u64,
                });
            }
            return;
        };
        let mut parts = Parts::new(self.dests, batch);
        let mut placed = Vec::new();
        for (line, metric) in batch.lines() {
            self.place(c, metric, &mut placed);
            for &m in &placed {
                if let Some(d) = self.member_dest[c][m] {
                    parts.push(d, b"", line, metric, metric);
                }
            }
        }
        parts.finish(out);
    }

    fn may_move(&self, dest: usize) -> bool {
        self.moving_cluster_of(dest).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_keep_line_order_and_share_the_batch_for_one_run() {
        let (batch, _) = Batch::from_plaintext(b"a 1 1\nb 2 2\nc 3 3\n".to_vec(), None);
        let lines: Vec<(&[u8], &[u8])> = batch.lines().collect();
        let mut p = Parts::new(3, &batch);
        for &(l, m) in &lines {
            p.push(0, b"", l, m, m);
        }
        p.push(1, b"", lines[0].0, lines[0].1, lines[0].1);
        p.push(1, b"", lines[1].0, lines[1].1, b"x");
        p.push(1, b"ip ", lines[2].0, lines[2].1, lines[2].1);
        p.push(2, b"", lines[0].0, lines[0].1, lines[0].1);
        p.push(2, b"", lines[2].0, lines[2].1, lines[2].1);
        let mut out = Vec::new();
        p.finish(&mut out);
        assert_eq!(
            out[0].data.as_ptr(),
            batch.data().as_ptr(),
            "one run: no copy"
        );
        assert_eq!(&out[0].data[..], &batch.data()[..]);
        assert_eq!(&out[1].data[..], b"a 1 1\nx 2 2\nip c 3 3\n");
        assert_eq!(&out[2].data[..], b"a 1 1\nc 3 3\n", "two runs, in order");
        let points: Vec<u64> = out.iter().map(|p| p.points).collect();
        assert_eq!(points, vec![3, 3, 2]);
    }

    /// The same batch routed cold (every name decided by the rules) and then twice warm
    /// (replayed from the decision cache, rewrites made again on each line's own name)
    /// gives byte-identical parts, for every fixture configuration and the benchmark's.
    #[test]
    fn replayed_decisions_route_exactly_as_the_rules_do() {
        let (mut routed, mut rewritten, mut cached) = (0usize, 0usize, 0usize);
        for (f, text) in crate::rules::testing::configs() {
            let Ok(rules) = Rules::from_str("t.conf", &text) else {
                continue; // includes relative to another directory
            };
            if rules.cache().is_none() {
                continue; // literal rules only: nothing is replayed
            }
            cached += 1;
            let names = crate::rules::testing::names(&text);
            let plain: String = names.iter().map(|n| format!("{n} 1 2\n")).collect();
            let (batch, _) = Batch::from_plaintext(plain.into_bytes(), None);
            let rules = Arc::new(rules);
            let dests = rules.tcp_members();
            let router = RulesRouter::new(rules.clone(), &dests, Arc::new(RouteCounters::new([])));
            let rounds: Vec<Vec<(usize, Vec<u8>, u64)>> = (0..3)
                .map(|_| {
                    let mut out = Vec::new();
                    router.route(&batch, &mut out);
                    out.iter()
                        .map(|p| (p.dest, p.data.to_vec(), p.points))
                        .collect()
                })
                .collect();
            assert_eq!(rounds[0], rounds[1], "{}: first replay", f.display());
            assert_eq!(rounds[0], rounds[2], "{}: second replay", f.display());
            routed += rounds[0].iter().map(|p| p.2 as usize).sum::<usize>();
            let names_out: usize = rounds[0]
                .iter()
                .flat_map(|p| p.1.split(|&b| b == b'\n'))
                .filter(|l| !l.is_empty() && !plain_names_contain(&names, l))
                .count();
            rewritten += names_out;
        }
        assert!(cached >= 5, "{cached} configurations with a decision cache");
        assert!(routed > 5_000, "{routed} lines routed per round");
        assert!(
            rewritten > 100,
            "{rewritten} lines sent under a rewritten name"
        );
    }

    fn plain_names_contain(names: &[String], line: &[u8]) -> bool {
        let name = line.split(|&b| b == b' ').next().unwrap_or(line);
        std::str::from_utf8(name)
            .is_ok_and(|n| names.binary_search_by(|x| x.as_str().cmp(n)).is_ok())
    }
}
