//! Weighted fair share of nearly full destination queues.
//!
//! Below [`NEARLY_FULL`] nobody is refused for fairness: the queues have room. Above it,
//! each sending tenant's share of what everyone *offers* (points/s over the last second,
//! refused batches included) is `weight / Σ weights of the tenants sending`:
//! - a tenant offering no more than its share is never refused for fairness — the
//!   steady tenant keeps its 200s;
//! - a tenant offering more is admitted only while what it was *admitted* is below its
//!   weighted share of everything admitted, so it still gets its share of the capacity
//!   (at least as much as any lighter tenant) but no more, and its excess gets the 503s.
//!
//! Above [`RESERVED`] a tenant over its share is refused outright: the last part of the
//! queues is kept for the tenants within their shares, so that one whose share is not
//! taken up by the others cannot still fill the queues to the brim and push the steady
//! tenants into "queue full" 503s.
//!
//! Offered rather than admitted rates decide who is over: a flooding tenant that was
//! refused for a second has a low admitted rate, but its offered rate still shows it is
//! the one flooding, so the light tenant is never the one pushed out.

use std::time::Instant;

use super::{TenantState, Tenants};

/// Queue fill (0..1, the fullest destination) above which fair shares apply.
pub const NEARLY_FULL: f64 = 0.75;

/// Queue fill above which only tenants within their offered share are admitted.
pub const RESERVED: f64 = 0.9;

/// A batch refused because its tenant is over its fair share.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "over fair share: offering {offered:.0} points/s, share {share:.0} points/s (queues {:.0} % full)",
    fill * 100.0
)]
pub struct FairRefusal {
    /// What the tenant offers per second.
    pub offered: f64,
    /// Its weighted share of what everyone offers.
    pub share: f64,
    /// The fullest destination queue's fill.
    pub fill: f64,
}

impl Tenants {
    /// Counts `points` as offered by `state` and decides whether they may be admitted
    /// with the destinations `fill` full; when `Ok`, they count as admitted (take them
    /// back with [`fair_undo`](Self::fair_undo) if the batch is refused later).
    pub fn fair_admit(
        &self,
        state: &TenantState,
        points: f64,
        fill: f64,
    ) -> Result<(), FairRefusal> {
        let now = Instant::now();
        state.rates_mut().offered.add(points, now);
        if fill >= NEARLY_FULL {
            self.fair_check(state, fill, now)?;
        }
        state.rates_mut().admitted.add(points, now);
        Ok(())
    }

    /// Takes back points counted as admitted for a batch refused after all.
    pub fn fair_undo(&self, state: &TenantState, points: f64) {
        state.rates_mut().admitted.add(-points, Instant::now());
    }

    fn fair_check(&self, me: &TenantState, fill: f64, now: Instant) -> Result<(), FairRefusal> {
        let (mut offered_all, mut admitted_all, mut weights) = (0.0, 0.0, 0.0);
        let (mut mine_offered, mut mine_admitted) = (0.0, 0.0);
        for s in self.all() {
            let (offered, admitted) = {
                let mut r = s.rates_mut();
                (r.offered.per_second(now), r.admitted.per_second(now))
            };
            if offered <= 0.0 {
                continue;
            }
            offered_all += offered;
            admitted_all += admitted;
            weights += s.weight();
            if std::ptr::eq(&*s, me) {
                (mine_offered, mine_admitted) = (offered, admitted);
            }
        }
        if weights <= 0.0 {
            return Ok(());
        }
        let part = me.weight() / weights;
        let share = part * offered_all;
        let within = mine_offered <= share;
        if within || (fill < RESERVED && mine_admitted < part * admitted_all) {
            return Ok(());
        }
        Err(FairRefusal {
            offered: mine_offered,
            share,
            fill,
        })
    }
}

impl TenantState {
    pub(crate) fn rates_mut(&self) -> std::sync::MutexGuard<'_, super::Rates> {
        self.rates.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flooding_tenant_is_refused_the_steady_one_is_not() {
        let t = Tenants::new();
        let (a, b) = (t.get("a"), t.get("b"));
        let (mut a_ok, mut a_no, mut b_ok) = (0, 0, 0);
        for _ in 0..10 {
            for _ in 0..10 {
                match t.fair_admit(&a, 1000.0, 0.9) {
                    Ok(()) => a_ok += 1,
                    Err(_) => a_no += 1,
                }
            }
            if t.fair_admit(&b, 1000.0, 0.9).is_ok() {
                b_ok += 1;
            }
        }
        assert_eq!(b_ok, 10, "the steady tenant keeps every batch");
        assert!(
            a_no > a_ok,
            "the flood is mostly refused: {a_ok} ok, {a_no} refused"
        );
        assert!(
            a_ok >= 9,
            "but gets about the steady tenant's share: {a_ok}"
        );
        // Not nearly full: nobody is refused.
        assert!(t.fair_admit(&a, 1000.0, 0.5).is_ok());
    }
}
