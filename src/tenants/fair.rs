//! Weighted fair shares of destination queues: fair buffer sharing.
//!
//! # Why shares of the queue, not of a rate
//! The queue in front of a slow destination does not drain at a steady rate: a TCP writer
//! whose kernel send buffer is full waits (seconds, with a megabytes-large autotuned buffer)
//! until a third of it is free, then empties the whole queue at once. During such a stall
//! nothing leaves the queue, so every point admitted stays there: a steady tenant survives
//! the stall only if the queue still has room for what it sends meanwhile. Rates measured
//! over a second or two cannot promise that room; the queue's own content can. So each
//! tenant's share is a part of the *queue*:
//! - `share = cap × weight / Σ weights of the active tenants` (active: offered a batch in
//!   the last [`ACTIVE`], refused ones included);
//! - a tenant holding less than its share (points in the queue plus batches on their way
//!   in) is never refused for fairness — the steady tenant keeps its 200s through a stall
//!   as long as what it sends during it fits in its share;
//! - a tenant at or over its share is admitted only while the queue keeps, after its batch,
//!   the room the other active tenants are still entitled to (their shares less what they
//!   hold); when they hold their shares already, room is left to the queue itself. A tenant
//!   alone, or with quiet company, may still use the whole queue; once the others send, it
//!   is cut back to its share and its excess gets the 503s.
//!
//! # What a tenant holds
//! The queue is a FIFO and the writer reports only how many points are left in it, so a
//! [`Ledger`] per destination records who was admitted, in order, and is trimmed from the
//! front to the newest `queued` points: what is left is who the queue's content belongs to.
//! Points that reach a queue without a tenant (self-metrics) are not in the ledger; they
//! only make the ledger keep entries a little longer (tenants look fuller than they are,
//! never emptier). A spilling destination is reported full by the caller: then only the
//! tenants within their shares get in, so one tenant cannot fill the spool for the others.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{TenantState, Tenants};

/// How long a tenant counts as sending after its last batch: its share of the queues is
/// kept for it that long. Long enough for a collector that sends every 10-30 s.
pub const ACTIVE: Duration = Duration::from_secs(30);

/// One destination queue a batch has a part for, as the batch finds it.
#[derive(Debug, Clone, Copy)]
pub struct QueueView<'a> {
    /// The destination's name (one ledger per name).
    pub dest: &'a str,
    /// Points in its queue now (the cap when it is spilling to its spool).
    pub queued: u64,
    /// Its queue cap in points.
    pub cap: u64,
    /// The batch's points for this destination.
    pub points: u64,
}

/// A batch refused because its tenant holds its fair share of a queue already.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "over fair share of destination {dest}: holds {held} of {queued} points queued, \
     share {share} of {cap}"
)]
pub struct FairRefusal {
    /// The destination whose queue refused.
    pub dest: String,
    /// What the tenant holds there (queued and on the way in).
    pub held: u64,
    /// Its weighted share of that queue.
    pub share: u64,
    /// Points in that queue.
    pub queued: u64,
    /// That queue's cap.
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

/// Who holds the points of one destination queue, oldest first.
#[derive(Debug, Default)]
struct Ledger {
    /// Runs of admitted points per tenant, in admission order.
    fifo: VecDeque<(Arc<str>, u64)>,
    /// Sum of `fifo`.
    total: u64,
    /// Per tenant: its points in `fifo`, plus those admitted and not yet held.
    held: HashMap<Arc<str>, u64>,
    /// Points admitted by fairness, not yet held or refused.
    on_the_way: u64,
}

impl Ledger {
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
}

/// The ledger of destination `dest`, created empty on first use (without allocating a
/// name for every batch).
fn ledger<'l>(queues: &'l mut HashMap<String, Ledger>, dest: &str) -> &'l mut Ledger {
    if !queues.contains_key(dest) {
        queues.insert(dest.to_string(), Ledger::default());
    }
    queues.get_mut(dest).expect("inserted")
}

/// The fair-share books: who is sending, and who holds each queue.
#[derive(Debug, Default)]
pub(crate) struct Book {
    /// Per active tenant: when it last offered a batch, and its weight then.
    active: HashMap<Arc<str>, (Instant, f64)>,
    /// Per destination name.
    queues: HashMap<String, Ledger>,
}

impl Book {
    /// The decision for one queue; see the [module documentation](self).
    fn check(&mut self, me: &Arc<str>, q: &QueueView, weights: f64) -> Result<(), FairRefusal> {
        let ledger = ledger(&mut self.queues, q.dest);
        ledger.trim(q.queued);
        let share_of = |w: f64| q.cap as f64 * w / weights;
        let mine = ledger.held_by(me);
        let my_weight = self.active.get(me).map_or(1.0, |a| a.1);
        let share = share_of(my_weight);
        if (mine as f64) < share {
            return Ok(());
        }
        let reserve: f64 = self
            .active
            .iter()
            .filter(|(name, _)| *name != me)
            .map(|(name, (_, w))| (share_of(*w) - ledger.held_by(name) as f64).max(0.0))
            .sum();
        // Nobody else is entitled to more: room is the queue's (or the spool's) business.
        let used = q.queued + ledger.on_the_way;
        if reserve <= 0.0 || (used + q.points) as f64 + reserve <= q.cap as f64 {
            return Ok(());
        }
        Err(FairRefusal {
            dest: q.dest.to_string(),
            held: mine,
            share: share as u64,
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
        let now = Instant::now();
        let me = state.name.clone();
        let mut book = self.book();
        book.active
            .retain(|_, (seen, _)| now.saturating_duration_since(*seen) < ACTIVE);
        book.active.insert(me.clone(), (now, state.weight()));
        let weights: f64 = book.active.values().map(|a| a.1).sum();
        for q in queues.iter().filter(|q| q.points > 0) {
            book.check(&me, q, weights)?;
        }
        let parts: Vec<(String, u64)> = queues
            .iter()
            .filter(|q| q.points > 0)
            .map(|q| (q.dest.to_string(), q.points))
            .collect();
        for (dest, n) in &parts {
            let ledger = ledger(&mut book.queues, dest);
            *ledger.held.entry(me.clone()).or_default() += n;
            ledger.on_the_way += n;
        }
        Ok(FairTicket { tenant: me, parts })
    }

    /// The ticket's batch is held: its parts join their queues' ledgers.
    pub fn fair_held(&self, ticket: FairTicket) {
        let mut book = self.book();
        for (dest, n) in ticket.parts {
            let ledger = ledger(&mut book.queues, &dest);
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

    /// A queue of `cap` points the test drains by hand.
    struct Queue {
        queued: u64,
        cap: u64,
    }

    impl Queue {
        fn new(cap: u64) -> Self {
            Queue { queued: 0, cap }
        }

        /// Offers `points` from `who`; true when admitted (then queued and held).
        fn offer(&mut self, t: &Tenants, who: &TenantState, points: u64) -> bool {
            let view = QueueView {
                dest: "d",
                queued: self.queued,
                cap: self.cap,
                points,
            };
            match t.fair_admit(who, &[view]) {
                Ok(ticket) => {
                    self.queued += points;
                    t.fair_held(ticket);
                    true
                }
                Err(_) => false,
            }
        }
    }

    #[test]
    fn through_a_stall_the_flood_gets_half_the_queue_and_the_steady_one_its_room() {
        let t = Tenants::new();
        let (a, b) = (t.get("a"), t.get("b"));
        let mut q = Queue::new(2000);
        // Nothing drains: ten "seconds" of A offering 1000 and B 100 points a second.
        let (mut a_ok, mut b_ok) = (0, 0);
        for _ in 0..10 {
            for _ in 0..20 {
                a_ok += u64::from(q.offer(&t, &a, 50));
            }
            for _ in 0..10 {
                b_ok += u64::from(q.offer(&t, &b, 10));
            }
        }
        assert_eq!(b_ok, 100, "the steady tenant keeps every batch");
        assert_eq!(a_ok * 50, 1000, "the flood stops at its share");
        assert_eq!(q.queued, 2000);
        // The writer sends everything: both may send again.
        q.queued = 0;
        assert!(q.offer(&t, &a, 50) && q.offer(&t, &b, 10));
    }

    #[test]
    fn a_tenant_alone_may_fill_the_queue_and_gives_way_when_another_sends() {
        let t = Tenants::new();
        let (a, b) = (t.get("a"), t.get("b"));
        let mut q = Queue::new(1000);
        while q.queued < 1000 {
            assert!(q.offer(&t, &a, 100), "alone: the whole queue");
        }
        assert!(q.offer(&t, &b, 100), "B holds nothing: within its share");
        q.queued -= 500; // the writer sent A's oldest 500
        assert!(!q.offer(&t, &a, 100), "A holds 500 of 1100: its share");
        assert!(q.offer(&t, &b, 100), "the room freed is B's");
        q.queued = 1000; // spilling: reported full
        for _ in 0..3 {
            assert!(q.offer(&t, &b, 100), "B within its share (held 200..400)");
        }
        assert!(
            q.offer(&t, &a, 100) && q.offer(&t, &b, 100),
            "both hold their shares: fairness leaves it to the queue (or the spool)"
        );
        // Weights: with c at weight 3, c's share is three quarters.
        let t = Tenants::new();
        let cfg = "c weight=3\n";
        t.set_file(super::super::TenantsConfig::parse(cfg, std::path::Path::new("t")).unwrap());
        let (c, d) = (t.get("c"), t.get("d"));
        let mut q = Queue::new(1000);
        assert!(q.offer(&t, &d, 10));
        while q.offer(&t, &c, 50) {}
        assert_eq!(q.queued, 760, "c stops at 750, its share");
    }
}
