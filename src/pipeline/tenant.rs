//! The admission path with a tenant: namespace, quota, fair share, then [`Pipeline::admit`].
//!
//! Order matters: lines outside the namespace are dropped first (they cost nothing
//! later), the quota is charged for what remains (a `429` keeps nothing), the batch is
//! routed and its parts checked against the tenant's fair share of each destination queue
//! they go to, and only then is it offered to the destinations. A batch refused at the last step gets its tokens back, so a `503`
//! never also eats into the tenant's quota.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::{Held, Pipeline, Refused, Routed};
use crate::batch::Batch;
use crate::tenants::fair::{FairRefusal, QueueView};
use crate::tenants::{namespace, QuotaExceeded, TenantState, Tenants};

/// Why a tenant's batch was not held.
#[derive(Debug, thiserror::Error)]
pub enum TenantRefused {
    /// Over one of the tenant's limits: `429` with `Retry-After`.
    #[error(transparent)]
    Quota(QuotaExceeded),
    /// Holding its fair share of a destination queue already: `503`, retry later.
    #[error(transparent)]
    Fair(FairRefusal),
    /// A destination has no room: `503`, retry later.
    #[error(transparent)]
    Full(Refused),
}

impl Pipeline {
    /// What fair shares see of the destinations `routed` has parts for: each one's queue
    /// and the part's points. A destination spilling to its spool counts as full, so only
    /// the tenants within their shares are let into the spool.
    fn queue_views<'r>(routed: &'r Routed) -> Vec<QueueView<'r>> {
        routed
            .parts
            .iter()
            .map(|part| {
                let d = &routed.topo.dests[part.dest];
                let spilling = d.spool().is_some_and(|s| s.is_spilling());
                QueueView {
                    dest: d.name(),
                    queued: if spilling { d.cap() } else { d.queued() },
                    cap: d.cap(),
                    sent: d.stats.sent.load(Ordering::Relaxed),
                    points: part.points,
                }
            })
            .collect()
    }

    /// [`admit`](Self::admit) for a batch sent by `tenant`; see the [module
    /// documentation](self). `key_prefix` is the prefix the gateway added to each line
    /// (`-key-prefix`), which namespaces do not see. `Ok` carries the points held: the
    /// batch's, less the lines outside the tenant's namespace.
    pub async fn admit_tenant(
        &self,
        tenants: &Tenants,
        tenant: &TenantState,
        batch: &Batch,
        key_prefix: Option<&str>,
        deadline: Instant,
    ) -> Result<(Held, u64), TenantRefused> {
        let c = &tenant.counters;
        let limits = tenant.limits();
        let batch = match limits.allow.as_deref() {
            Some(allow) => match namespace::filter(batch, allow, key_prefix) {
                Some((kept, outside)) => {
                    c.dropped_namespace.fetch_add(outside, Ordering::Relaxed);
                    tracing::debug!("key {}: {outside} lines outside namespace", tenant.name);
                    Cow::Owned(kept)
                }
                None => Cow::Borrowed(batch),
            },
            None => Cow::Borrowed(batch),
        };
        let charge = tenant.charge(&batch).map_err(|e| {
            c.refused_quota.fetch_add(1, Ordering::Relaxed);
            TenantRefused::Quota(e)
        })?;
        let mut routed = self.route(&batch);
        let ticket = match tenants.fair_admit(tenant, &Self::queue_views(&routed)) {
            Ok(ticket) => ticket,
            Err(e) => {
                tenant.refund(charge);
                c.refused_fair.fetch_add(1, Ordering::Relaxed);
                return Err(TenantRefused::Fair(e));
            }
        };
        match self.admit_routed(&mut routed, &batch, deadline).await {
            Ok(held) => {
                tenant.commit(charge);
                tenants.fair_held(ticket);
                Ok((held, batch.len() as u64))
            }
            Err(refused) => {
                tenant.refund(charge);
                tenants.fair_undo(ticket);
                c.refused_full.fetch_add(1, Ordering::Relaxed);
                Err(TenantRefused::Full(refused))
            }
        }
    }
}
