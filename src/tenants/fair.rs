//! Weighted fair shares of a destination: of its drain rate first, then of its queue.
//!
//! # Why rates over a minute, and a low mark for the queue
//! The queue in front of a slow destination does not drain steadily: a TCP writer whose
//! kernel send buffer (autotuned to megabytes) is full waits until a third of it is free,
//! which at 80 KB/s is some 15 s, then empties its whole queue at once and passes live
//! traffic straight through for a few seconds. During a stall every point admitted stays
//! queued, so a steady tenant keeps its 200s only if the queue still has room for all it
//! sends meanwhile — more than an equal split of the queue when stalls are long. Shares of
//! a one-second rate cannot promise that room, and neither can shares of the queue. So:
//! 1. **Who is over its share** is decided on rates over [`WindowSum::LENGTH`], long enough
//!    to span several stall cycles: the points each tenant *offered* to the destination
//!    (refused batches included) against the points the destination *drained*, split by
//!    weighted max-min fairness (water-filling): a tenant offering less than its weighted
//!    part gets all it offers, the rest is shared by weight among the others; over means
//!    over by more than a slack (see `Shares`).
//! 2. A tenant **within its rate share is never refused for fairness**: it may use the
//!    whole queue, so a stall eats into the queue for the steady tenants only.
//! 3. A tenant **over its rate share** is admitted only while the queue is below
//!    [`CONGESTED`] of its cap (its batch may cross the mark): it still gets everything the
//!    destination takes while it drains (the queue stays near empty then), nothing that
//!    piles up during a stall.
//!    Several tenants over their shares split that low part of the queue by weight: one
//!    holding its part is admitted only while the others' unused parts stay free.
//!
//! # What a tenant holds
//! The queue is a FIFO and the writer reports only how many points are left in it, so a
//! `Ledger` per destination records who was admitted, in order, and is trimmed from the
//! front to the newest `queued` points: what is left is who the queue's content belongs to.
//! Points that reach a queue without a tenant (self-metrics) are not in the ledger; they
//! only make the ledger keep entries a little longer (tenants look fuller than they are,
//! never emptier). A spilling destination is reported full by the caller: then only the
//! tenants within their rate shares get into the spool.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use super::rate::WindowSum;
use super::{TenantState, Tenants};

/// Queue fill (of its cap) up to which tenants over their rate shares are admitted.
pub const CONGESTED: f64 = 0.1;

/// One destination queue a batch has a part for, as the batch finds it.
#[derive(Debug, Clone, Copy)]
pub struct QueueView<'a> {
    /// The destination's name (one ledger per name).
    pub dest: &'a str,
    /// Points in its queue now (the cap when it is spilling to its spool).
    pub queued: u64,
    /// Its queue cap in points.
    pub cap: u64,
    /// Points it has sent so far (a counter), from which its drain rate is measured.
    pub sent: u64,
    /// The batch's points for this destination.
    pub points: u64,
}

/// A batch refused because its tenant is over its fair share of a destination.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "over fair share of destination {dest}: offering {offered:.0} points/s, its share of \
     the {drained:.0} points/s drained is {fair:.0} (queue {queued} of {cap} points)"
)]
pub struct FairRefusal {
    /// The destination that refused.
    pub dest: String,
    /// What the tenant offers it per second (over the window).
    pub offered: f64,
    /// What the destination drained per second (over the window).
    pub drained: f64,
    /// The tenant's weighted max-min share of that.
    pub fair: f64,
    /// Points in its queue.
    pub queued: u64,
    /// Its queue cap.
    pub cap: u64,
}

/// A batch admitted by [`Tenants::fair_admit`]: its points count as the tenant's, on the way
/// in, until [`Tenants::fair_held`] (now in the queues) or [`Tenants::fair_undo`] (refused
/// after all).
#[derive(Debug)]
#[must_use = "a fair ticket is settled with fair_held or fair_undo"]
pub struct FairTicket {
    tenant: Arc<str>,
    parts: Vec<(String, u64)>,
}

/// The fair level per unit of weight (points over the window) and the slack: points a
/// tenant may offer beyond its share and still count as within. What is queued was
/// offered but not yet drained, so without a slack a tenant of a fast destination would
/// look over its share by the batch or two the writer has not sent yet; a tenant really
/// over (a flood into a stall) passes it within a fraction of a second.
#[derive(Debug, Clone, Copy)]
struct Shares {
    level: f64,
    slack: f64,
}

impl Shares {
    /// [`CONGESTED`] of the queue plus two of the batch being decided.
    fn new(level: f64, q: &QueueView) -> Self {
        Shares {
            level,
            slack: CONGESTED * q.cap as f64 + 2.0 * q.points as f64,
        }
    }
}

/// Who offers to one destination, what it drains, and who holds its queue.
#[derive(Debug)]
struct Ledger {
    /// Runs of admitted points per tenant, in admission order.
    fifo: VecDeque<(Arc<str>, u64)>,
    /// Sum of `fifo`.
    total: u64,
    /// Per tenant: its points in `fifo`, plus those admitted and not yet held.
    held: HashMap<Arc<str>, u64>,
    /// Points admitted by fairness, not yet held or refused.
    on_the_way: u64,
    /// Per tenant: points offered over the window, and its weight.
    offered: HashMap<Arc<str>, (WindowSum, f64)>,
    /// Points the destination sent over the window.
    drained: WindowSum,
    /// Its `sent` counter when last seen.
    last_sent: Option<u64>,
    /// When this ledger started counting (rates over less than a window before that).
    since: Instant,
}

impl Ledger {
    fn new(now: Instant) -> Self {
        Ledger {
            fifo: VecDeque::new(),
            total: 0,
            held: HashMap::new(),
            on_the_way: 0,
            offered: HashMap::new(),
            drained: WindowSum::new(now),
            last_sent: None,
            since: now,
        }
    }

    /// Forgets what the writer has sent: keeps the newest `queued` points (a run partly
    /// sent keeps its unsent part).
    fn trim(&mut self, queued: u64) {
        while self.total > queued {
            let Some((name, n)) = self.fifo.front_mut() else {
                return;
            };
            let cut = (self.total - queued).min(*n);
            *n -= cut;
            let name = name.clone();
            if *n == 0 {
                self.fifo.pop_front();
            }
            self.total -= cut;
            self.take(&name, cut);
        }
    }

    /// Counts `me`'s offer and what the destination drained since it was last seen; a
    /// tenant that offered nothing over the window is no longer counted.
    fn note(&mut self, me: &Arc<str>, weight: f64, q: &QueueView, now: Instant) {
        let drained = q.sent.saturating_sub(self.last_sent.unwrap_or(q.sent));
        self.last_sent = Some(q.sent);
        self.drained.add(drained as f64, now);
        let since = self.since;
        let entry = self
            .offered
            .entry(me.clone())
            .or_insert_with(|| (WindowSum::new(since), weight));
        entry.0.add(q.points as f64, now);
        entry.1 = weight;
        self.offered.retain(|_, (w, _)| w.sum(now) > 0.0);
    }

    /// The fair level per unit of weight (points over the window): weighted max-min
    /// fairness of what was drained among what was offered. Infinite when the
    /// destination drained all that was offered.
    fn level(&self, now: Instant) -> f64 {
        let mut demands: Vec<(f64, f64)> = self
            .offered
            .values()
            .map(|(o, w)| (o.sum(now) / w, *w))
            .collect();
        demands.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut rest = self.drained.sum(now);
        let mut weights: f64 = demands.iter().map(|d| d.1).sum();
        for (per_weight, w) in demands {
            if per_weight * weights > rest {
                return rest / weights;
            }
            rest -= per_weight * w;
            weights -= w;
        }
        f64::INFINITY
    }

    /// True when `name` offers more than its share at `s` by more than the slack.
    fn over(&self, name: &str, s: Shares, now: Instant) -> bool {
        self.offered
            .get(name)
            .is_some_and(|(o, w)| o.sum(now) - s.level * w > s.slack)
    }

    fn held_by(&self, name: &str) -> u64 {
        self.held.get(name).copied().unwrap_or(0)
    }

    fn take(&mut self, name: &str, n: u64) {
        if let Some(h) = self.held.get_mut(name) {
            *h = h.saturating_sub(n);
            if *h == 0 {
                self.held.remove(name);
            }
        }
    }

    /// Appends a held part, merged with the last run when it is the same tenant's.
    fn push(&mut self, name: &Arc<str>, n: u64) {
        self.total += n;
        match self.fifo.back_mut() {
            Some((last, m)) if Arc::ptr_eq(last, name) => *m += n,
            _ => self.fifo.push_back((name.clone(), n)),
        }
    }

    /// Among the tenants over their rate shares, whether `me` may take `q.points` more of
    /// the queue's low part `limit` (the queue below it): below its weighted part of it, or
    /// while the others' unused parts stay free.
    fn within_low_part(&self, me: &str, q: &QueueView, s: Shares, now: Instant) -> bool {
        let limit = CONGESTED * q.cap as f64;
        // Below the mark before the batch, as a queue takes a batch while below its cap.
        let before = (q.queued + self.on_the_way) as f64;
        if before >= limit {
            return false;
        }
        let used = before + q.points as f64;
        let over: Vec<(&Arc<str>, f64)> = self
            .offered
            .iter()
            .filter(|(name, _)| self.over(name, s, now))
            .map(|(name, (_, w))| (name, *w))
            .collect();
        let weights: f64 = over.iter().map(|o| o.1).sum();
        let part = |w: f64| limit * w / weights;
        let my_weight = self.offered.get(me).map_or(1.0, |o| o.1);
        if (self.held_by(me) as f64) < part(my_weight) {
            return true;
        }
        let reserve: f64 = over
            .iter()
            .filter(|(name, _)| ***name != *me)
            .map(|(name, w)| (part(*w) - self.held_by(name) as f64).max(0.0))
            .sum();
        reserve <= 0.0 || used + reserve <= limit
    }

    /// Per second over the window (or since the ledger started, if later).
    fn per_second(&self, sum: f64, now: Instant) -> f64 {
        let secs = now.saturating_duration_since(self.since);
        sum / secs.min(WindowSum::LENGTH).as_secs_f64().max(1.0)
    }
}

/// The ledger of destination `dest`, created empty on first use (without allocating a
/// name for every batch).
fn ledger<'l>(queues: &'l mut HashMap<String, Ledger>, dest: &str, now: Instant) -> &'l mut Ledger {
    if !queues.contains_key(dest) {
        queues.insert(dest.to_string(), Ledger::new(now));
    }
    queues.get_mut(dest).expect("inserted")
}

/// The fair-share books: one ledger per destination name.
#[derive(Debug, Default)]
pub(crate) struct Book {
    queues: HashMap<String, Ledger>,
}

impl Book {
    /// The decision for one queue; see the [module documentation](self).
    fn check(&mut self, me: &Arc<str>, weight: f64, q: &QueueView) -> Result<(), FairRefusal> {
        let now = Instant::now();
        let ledger = ledger(&mut self.queues, q.dest, now);
        ledger.trim(q.queued);
        ledger.note(me, weight, q, now);
        let shares = Shares::new(ledger.level(now), q);
        // Fairness keeps room for the tenants within their shares; with none (a tenant
        // alone, or a destination draining nothing), room is the queue's business.
        let protects = |l: &Ledger| l.offered.keys().any(|n| n != me && !l.over(n, shares, now));
        if !ledger.over(me, shares, now)
            || !protects(ledger)
            || ledger.within_low_part(me, q, shares, now)
        {
            return Ok(());
        }
        let offered = ledger.offered.get(&**me).map_or(0.0, |o| o.0.sum(now));
        let drained = ledger.drained.sum(now);
        Err(FairRefusal {
            dest: q.dest.to_string(),
            offered: ledger.per_second(offered, now),
            drained: ledger.per_second(drained, now),
            fair: ledger.per_second(shares.level * weight, now),
            queued: q.queued,
            cap: q.cap,
        })
    }
}

impl Tenants {
    /// Decides whether `state`'s batch, with its parts for the `queues` it routes to, may
    /// be admitted now (see the [module documentation](self)); every queue must agree.
    pub fn fair_admit(
        &self,
        state: &TenantState,
        queues: &[QueueView],
    ) -> Result<FairTicket, FairRefusal> {
        let me = state.name.clone();
        let weight = state.weight();
        let mut book = self.book();
        let mut refused = None;
        for q in queues.iter().filter(|q| q.points > 0) {
            // Every queue counts the offer, also after one refused.
            if let Err(e) = book.check(&me, weight, q) {
                refused.get_or_insert(e);
            }
        }
        if let Some(e) = refused {
            return Err(e);
        }
        let now = Instant::now();
        let parts: Vec<(String, u64)> = queues
            .iter()
            .filter(|q| q.points > 0)
            .map(|q| (q.dest.to_string(), q.points))
            .collect();
        for (dest, n) in &parts {
            let ledger = ledger(&mut book.queues, dest, now);
            *ledger.held.entry(me.clone()).or_default() += n;
            ledger.on_the_way += n;
        }
        Ok(FairTicket { tenant: me, parts })
    }

    /// The ticket's batch is held: its parts join their queues' ledgers.
    pub fn fair_held(&self, ticket: FairTicket) {
        let mut book = self.book();
        let now = Instant::now();
        for (dest, n) in ticket.parts {
            let ledger = ledger(&mut book.queues, &dest, now);
            ledger.on_the_way = ledger.on_the_way.saturating_sub(n);
            ledger.push(&ticket.tenant, n);
        }
    }

    /// The ticket's batch was refused after all: its points are no longer on the way.
    pub fn fair_undo(&self, ticket: FairTicket) {
        let mut book = self.book();
        for (dest, n) in ticket.parts {
            if let Some(ledger) = book.queues.get_mut(&dest) {
                ledger.on_the_way = ledger.on_the_way.saturating_sub(n);
                ledger.take(&ticket.tenant, n);
            }
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.fair.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination queue the test drains by hand, refusing at its cap like a real one.
    struct Queue {
        queued: u64,
        cap: u64,
        sent: u64,
    }

    impl Queue {
        fn new(cap: u64) -> Self {
            Queue {
                queued: 0,
                cap,
                sent: 0,
            }
        }

        /// Offers `points` from `who`; true when admitted (then queued and held).
        fn offer(&mut self, t: &Tenants, who: &TenantState, points: u64) -> bool {
            let view = QueueView {
                dest: "d",
                queued: self.queued,
                cap: self.cap,
                sent: self.sent,
                points,
            };
            let Ok(ticket) = t.fair_admit(who, &[view]) else {
                return false;
            };
            if self.queued >= self.cap {
                t.fair_undo(ticket);
                return false;
            }
            self.queued += points;
            t.fair_held(ticket);
            true
        }

        /// The writer sends up to `n` points.
        fn drain(&mut self, n: u64) {
            let n = n.min(self.queued);
            self.queued -= n;
            self.sent += n;
        }

        /// One round: `a` offers `a_batches` of 50 points, `b` 10 of 10; counts admitted.
        fn round(
            &mut self,
            t: &Tenants,
            a: &TenantState,
            b: &TenantState,
            a_batches: usize,
        ) -> (u64, u64) {
            let a_ok = (0..a_batches).filter(|_| self.offer(t, a, 50)).count() as u64;
            let b_ok = (0..10).filter(|_| self.offer(t, b, 10)).count() as u64;
            (a_ok * 50, b_ok * 10)
        }
    }

    #[test]
    fn through_a_stall_the_steady_tenant_keeps_its_room_and_the_flood_gets_the_rest() {
        let t = Tenants::new();
        let (a, b) = (t.get("a"), t.get("b"));
        let mut q = Queue::new(2000);
        // A offers 1000 points a round, B 100, the destination takes 330 a round.
        let (mut a_got, mut b_got) = (0, 0);
        for _ in 0..40 {
            let (x, y) = q.round(&t, &a, &b, 20);
            (a_got, b_got) = (a_got + x, b_got + y);
            q.drain(330);
        }
        assert_eq!(b_got, 4000, "the steady tenant keeps every batch");
        assert!(a_got >= 40 * 200, "the flood gets the rest: {a_got}");
        // A 15-round stall (a quarter of the window): nothing drains, B still keeps every
        // batch.
        for _ in 0..15 {
            let (_, y) = q.round(&t, &a, &b, 20);
            b_got += y;
        }
        assert_eq!(
            b_got, 5500,
            "the steady tenant keeps every batch through the stall"
        );
        assert!(q.queued <= 2000, "{}", q.queued);
    }

    #[test]
    fn a_tenant_alone_is_not_refused_and_weights_decide_who_is_within() {
        let t = Tenants::new();
        let a = t.get("a");
        let mut q = Queue::new(1000);
        q.queued = 1000; // spilling: reported full
        q.cap = u64::MAX;
        assert!(
            (0..50).all(|_| q.offer(&t, &a, 100)),
            "alone: nobody to keep room for"
        );
        // c (weight 3) and d both offer 700 a round, the destination takes 1000: c's
        // share is 750, so only d is over its share.
        let t = Tenants::new();
        let cfg = "c weight=3\n";
        t.set_file(super::super::TenantsConfig::parse(cfg, std::path::Path::new("t")).unwrap());
        let (c, d) = (t.get("c"), t.get("d"));
        let mut q = Queue::new(4000);
        let (mut c_no, mut d_no) = (0, 0);
        for round in 0..10 {
            // The first round is the start: nothing drained yet, both look over.
            let counted = usize::from(round > 0);
            for _ in 0..14 {
                c_no += counted * usize::from(!q.offer(&t, &c, 50));
                d_no += counted * usize::from(!q.offer(&t, &d, 50));
            }
            q.drain(1000);
        }
        assert_eq!(c_no, 0, "c is within its weighted share");
        assert!(d_no > 0, "d is over its share");
    }
}
