//! Tenants: per-key quotas, fair shares of nearly full queues, and namespaces.
//!
//! Every batch arrives with an API key, so the gateway knows which site sent it. A
//! [`TenantState`] per key name holds what is enforced on the way in, at the one admission
//! path ([`crate::pipeline::Pipeline::admit_tenant`]):
//! - **quotas** — token buckets for points/s (with a burst) and batches/s, and a distinct
//!   series per minute guard ([`cardinality`]); over quota is `429` with `Retry-After`;
//! - **fair share** — a tenant offering more than its weighted max-min share of what a
//!   destination drains (over a minute) is refused (`503`) once that destination's queue
//!   is 10 % full, so the rest of the queue is kept for the tenants within their shares
//!   and one flooding tenant cannot push them into 503s, even while a slow destination
//!   stalls ([`fair`]);
//! - **namespaces** — `allow=` prefixes; lines outside are dropped and counted.
//!
//! Limits come from `-tenants-file` and from the key store (`polymur/gateway/tenants/<name>`,
//! JSON); [`Tenants`] swaps them in as a whole, and lookups by name are lock-free.

pub mod bucket;
pub mod cardinality;
pub mod config;
pub mod fair;
pub mod history;

pub mod namespace;
pub mod rate;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

pub use config::{Limits, TenantsConfig, TenantsError, DEFAULTS, TENANT_PREFIX};

use crate::batch::Batch;
use bucket::TokenBucket;
use cardinality::SeriesCounter;
use rate::SlidingRate;

/// Per-tenant counters for `/metrics` and the status page.
#[derive(Debug, Default)]
pub struct TenantCounters {
    /// Points accepted (held for every destination).
    pub accepted: AtomicU64,
    /// Batches accepted.
    pub batches: AtomicU64,
    /// Batches refused with 429 (over a quota).
    pub refused_quota: AtomicU64,
    /// Batches refused with 503 because the tenant was over its fair share.
    pub refused_fair: AtomicU64,
    /// Batches refused with 503 because a destination had no room at all.
    pub refused_full: AtomicU64,
    /// Lines dropped because they were outside the tenant's namespace.
    pub dropped_namespace: AtomicU64,
    /// Lines dropped because they were not valid plaintext.
    pub dropped_invalid: AtomicU64,
}

/// A batch over one of its tenant's limits: answered `429` with `Retry-After`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("over quota {limit}={value} (retry after {} s)", self.retry_after_secs())]
pub struct QuotaExceeded {
    /// The limit's name as written in the tenants file.
    pub limit: &'static str,
    /// Its value.
    pub value: f64,
    /// Until the bucket allows the batch (or the next minute for series).
    pub retry_after: Duration,
}

impl QuotaExceeded {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        (self.retry_after.as_secs_f64().ceil() as u64).max(1)
    }
}

/// What is metered per tenant, behind one lock taken once per batch.
#[derive(Debug)]
struct Meter {
    points: Option<TokenBucket>,
    batches: Option<TokenBucket>,
    series: SeriesCounter,
}

/// Accepted points per second, for the rate-vs-limit figures.
#[derive(Debug)]
struct Rates {
    admitted: SlidingRate,
}

/// One key name's limits, meters and counters; kept across reloads.
#[derive(Debug)]
pub struct TenantState {
    /// The key name.
    pub name: Arc<str>,
    limits: ArcSwap<Limits>,
    meter: Mutex<Meter>,
    rates: Mutex<Rates>,
    /// What it sent and what happened to it.
    pub counters: TenantCounters,
}

/// Tokens taken for a batch, returned with [`TenantState::refund`] when the batch is
/// refused later, or made final with [`TenantState::commit`] once it is held.
#[derive(Debug)]
#[must_use = "a charge is committed when the batch is held, refunded otherwise"]
pub struct Charge {
    points: f64,
    batches: bool,
    series: Option<SeriesCounter>,
}

fn unix_minute() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0)
}

fn seconds_to_next_minute() -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(60) - Duration::from_millis((now.as_millis() % 60_000) as u64)
}

impl TenantState {
    fn new(name: &str, limits: Limits, epoch: Instant) -> Self {
        let state = TenantState {
            name: Arc::from(name),
            limits: ArcSwap::from_pointee(Limits::default()),
            meter: Mutex::new(Meter {
                points: None,
                batches: None,
                series: SeriesCounter::default(),
            }),
            rates: Mutex::new(Rates {
                admitted: SlidingRate::new(epoch),
            }),
            counters: TenantCounters::default(),
        };
        state.set_limits(limits);
        state
    }

    /// The limits in force.
    pub fn limits(&self) -> Arc<Limits> {
        self.limits.load_full()
    }

    /// Applies new limits, keeping the buckets' tokens (capped at the new bursts).
    pub fn set_limits(&self, limits: Limits) {
        let now = Instant::now();
        let mut m = self.meter.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = |slot: &mut Option<TokenBucket>, rate: Option<f64>, burst: f64| match rate {
            None => *slot = None,
            Some(rate) => match slot {
                Some(b) => b.set(rate, burst, now),
                None => *slot = Some(TokenBucket::new(rate, burst, now)),
            },
        };
        let pps = limits.points_per_second;
        bucket(&mut m.points, pps, limits.burst.or(pps).unwrap_or(1.0));
        let bps = limits.batches_per_second;
        bucket(&mut m.batches, bps, bps.unwrap_or(1.0).max(1.0));
        drop(m);
        self.limits.store(Arc::new(limits));
    }

    /// The tenant's weight in fair shares.
    pub fn weight(&self) -> f64 {
        self.limits.load().weight.unwrap_or(1.0)
    }

    /// Takes what `batch` costs from every bucket, or refuses it naming the first limit it
    /// is over (nothing taken then).
    pub fn charge(&self, batch: &Batch) -> Result<Charge, QuotaExceeded> {
        let limits = self.limits.load();
        let now = Instant::now();
        let points = batch.len() as f64;
        let mut m = self.meter.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = m.points.as_mut() {
            let wait = b.wait_for(points, now);
            if !wait.is_zero() {
                return Err(over("points-per-second", b.rate(), wait));
            }
        }
        if let Some(b) = m.batches.as_mut() {
            let wait = b.wait_for(1.0, now);
            if !wait.is_zero() {
                return Err(over("batches-per-second", b.rate(), wait));
            }
        }
        let series = match limits.series_per_minute {
            None => None,
            Some(limit) => {
                m.series.roll(unix_minute());
                let mut candidate = m.series.clone();
                batch.lines().for_each(|(_, metric)| candidate.add(metric));
                if candidate.estimate() > limit {
                    return Err(over(
                        "series-per-minute",
                        limit as f64,
                        seconds_to_next_minute(),
                    ));
                }
                Some(candidate)
            }
        };
        if let Some(b) = m.points.as_mut() {
            b.take(points);
        }
        if let Some(b) = m.batches.as_mut() {
            b.take(1.0);
        }
        Ok(Charge {
            points,
            batches: m.batches.is_some(),
            series,
        })
    }

    /// Returns the tokens of a batch refused after it was charged.
    pub fn refund(&self, charge: Charge) {
        let mut m = self.meter.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = m.points.as_mut() {
            b.refund(charge.points);
        }
        if charge.batches {
            if let Some(b) = m.batches.as_mut() {
                b.refund(1.0);
            }
        }
    }

    /// The batch is held: its series now count, and so do its points.
    pub fn commit(&self, charge: Charge) {
        if let Some(series) = &charge.series {
            let mut m = self.meter.lock().unwrap_or_else(|e| e.into_inner());
            m.series.merge(series);
        }
        self.counters
            .accepted
            .fetch_add(charge.points as u64, Ordering::Relaxed);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.rates_mut().admitted.add(charge.points, Instant::now());
    }

    /// Accepted points per second over the last second (for the rate-vs-limit figures).
    pub fn admitted_rate(&self) -> f64 {
        self.rates_mut().admitted.per_second(Instant::now())
    }

    fn rates_mut(&self) -> std::sync::MutexGuard<'_, Rates> {
        self.rates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Distinct series seen this minute (estimate; 0 without a series limit).
    pub fn series_this_minute(&self) -> u64 {
        let m = self.meter.lock().unwrap_or_else(|e| e.into_inner());
        if m.series.is_current(unix_minute()) {
            m.series.estimate()
        } else {
            0
        }
    }
}

fn over(limit: &'static str, value: f64, retry_after: Duration) -> QuotaExceeded {
    QuotaExceeded {
        limit,
        value,
        retry_after,
    }
}

/// Every tenant's state, by key name, and the limits they were built from.
///
/// Lookups ([`get`](Self::get)) read an `ArcSwap` snapshot, never a lock; a key name seen
/// for the first time is added under a lock (once per name). Reloads swap the
/// configuration and apply it to every existing state.
pub struct Tenants {
    /// `-tenants-file`'s content (empty without one).
    file: Mutex<TenantsConfig>,
    /// The key store's tenant documents (empty without any).
    store: Mutex<TenantsConfig>,
    /// The two merged: the store's documents over the file's lines.
    merged: ArcSwap<TenantsConfig>,
    states: ArcSwap<HashMap<Arc<str>, Arc<TenantState>>>,
    adding: Mutex<()>,
    /// Who is sending and who holds each destination queue, for fair shares.
    fair: Mutex<fair::Book>,
    /// Origin of the rate clocks.
    epoch: Instant,
}

impl Default for Tenants {
    fn default() -> Self {
        Tenants {
            file: Mutex::default(),
            store: Mutex::default(),
            merged: ArcSwap::default(),
            states: ArcSwap::default(),
            adding: Mutex::new(()),
            fair: Mutex::default(),
            epoch: Instant::now(),
        }
    }
}

impl Tenants {
    /// No limits: every key name gets an unlimited tenant (still counted).
    pub fn new() -> Self {
        Self::default()
    }

    /// The state of key name `name`, created with its limits on first use.
    pub fn get(&self, name: &str) -> Arc<TenantState> {
        if let Some(s) = self.states.load().get(name) {
            return s.clone();
        }
        let _adding = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.states.load_full();
        if let Some(s) = current.get(name) {
            return s.clone();
        }
        let state = Arc::new(TenantState::new(
            name,
            self.merged.load().effective(name),
            self.epoch,
        ));
        let mut map = (*current).clone();
        map.insert(state.name.clone(), state.clone());
        self.states.store(Arc::new(map));
        state
    }

    /// Every tenant seen so far, by name.
    pub fn all(&self) -> Vec<Arc<TenantState>> {
        let mut v: Vec<_> = self.states.load().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The merged configuration in force.
    pub fn config(&self) -> Arc<TenantsConfig> {
        self.merged.load_full()
    }

    /// Replaces the file's part of the configuration.
    pub fn set_file(&self, config: TenantsConfig) {
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = config;
        self.apply();
    }

    /// Replaces the key store's part of the configuration.
    pub fn set_store(&self, config: TenantsConfig) {
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) = config;
        self.apply();
    }

    fn apply(&self) {
        let _adding = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        let file = self.file.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let merged = file.overlaid(&store);
        for state in self.states.load().values() {
            let limits = merged.effective(&state.name);
            if *state.limits() != limits {
                state.set_limits(limits);
            }
        }
        self.merged.store(Arc::new(merged));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn batch(n: usize) -> Batch {
        let text: String = (0..n).map(|i| format!("t.m{i} 1 1700000000\n")).collect();
        Batch::from_plaintext(text.into_bytes(), None).0
    }

    #[test]
    fn quota_refuses_names_the_limit_and_refunds() {
        let t = Tenants::new();
        let cfg = "* points-per-second=100 burst=100\nb batches-per-second=1\n";
        t.set_file(TenantsConfig::parse(cfg, Path::new("t")).unwrap());
        let a = t.get("a");
        let c = a.charge(&batch(100)).unwrap();
        a.commit(c);
        let e = a.charge(&batch(50)).unwrap_err();
        assert_eq!(e.limit, "points-per-second");
        assert!(e.retry_after > Duration::from_millis(400) && e.retry_after_secs() == 1);
        let b = t.get("b");
        let c = b.charge(&batch(10)).unwrap();
        b.refund(c);
        let c = b.charge(&batch(10)).unwrap();
        b.commit(c);
        assert_eq!(
            b.charge(&batch(10)).unwrap_err().limit,
            "batches-per-second"
        );
        assert_eq!(b.counters.accepted.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn reload_changes_limits_of_existing_tenants() {
        let t = Tenants::new();
        let a = t.get("a");
        assert!(a.charge(&batch(1000)).is_ok(), "no limits: unlimited");
        t.set_store(TenantsConfig::from_documents(
            &[("a".to_string(), r#"{"points-per-second": 10}"#.to_string())].into(),
        ));
        assert_eq!(a.limits().points_per_second, Some(10.0));
        assert!(a.charge(&batch(5)).is_ok());
        assert!(a.charge(&batch(10)).is_err());
    }

    #[test]
    fn series_guard() {
        let t = Tenants::new();
        t.set_file(TenantsConfig::parse("* series-per-minute=150\n", Path::new("t")).unwrap());
        let a = t.get("a");
        let c = a.charge(&batch(100)).unwrap();
        a.commit(c);
        let c = a.charge(&batch(100)).unwrap();
        a.commit(c); // the same 100 series again
        let e = a.charge(&batch(200)).unwrap_err();
        assert_eq!(e.limit, "series-per-minute");
    }
}
