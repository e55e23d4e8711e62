//! The admission path with a tenant: namespace, quota, fair share, then [`Pipeline::admit`].
//!
//! Order matters: lines outside the namespace are dropped first (they cost nothing
//! later), the quota is charged for what remains (a `429` keeps nothing), the fair share
//! is checked against how full the destinations are, and only then is the batch offered
//! to the destinations. A batch refused at the last step gets its tokens back, so a `503`
//! never also eats into the tenant's quota.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::{Held, Pipeline, Refused};
use crate::batch::Batch;
use crate::tenants::{fair::FairRefusal, namespace, QuotaExceeded, TenantState, Tenants};

/// Why a tenant's batch was not held.
#[derive(Debug, thiserror::Error)]
pub enum TenantRefused {
    /// Over one of the tenant's limits: `429` with `Retry-After`.
    #[error(transparent)]
    Quota(QuotaExceeded),
    /// Over its fair share of nearly full queues: `503`, retry later.
    #[error(transparent)]
    Fair(FairRefusal),
    /// A destination has no room: `503`, retry later.
    #[error(transparent)]
    Full(Refused),
}

impl Pipeline {
    /// How full the fullest destination's memory queue is (0..1): what fair shares
    /// react to. A destination with a spool that is spilling counts as full.
    pub fn fill(&self) -> f64 {
        self.topology
            .load()
            .dests
            .iter()
            .map(|d| {
                if d.spool().is_some_and(|s| s.is_spilling()) {
                    return 1.0;
                }
                d.queued() as f64 / d.cap().max(1) as f64
            })
            .fold(0.0, f64::max)
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
        let points = batch.len() as f64;
        if let Err(e) = tenants.fair_admit(tenant, points, self.fill()) {
            tenant.refund(charge);
            c.refused_fair.fetch_add(1, Ordering::Relaxed);
            return Err(TenantRefused::Fair(e));
        }
        match self.admit(&batch, deadline).await {
            Ok(held) => {
                tenant.commit(charge);
                Ok((held, batch.len() as u64))
            }
            Err(refused) => {
                tenant.refund(charge);
                tenants.fair_undo(tenant, points);
                c.refused_full.fetch_add(1, Ordering::Relaxed);
                Err(TenantRefused::Full(refused))
            }
        }
    }
}
