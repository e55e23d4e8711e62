//! Tenants on the admin surface: `/metrics` families per key name and a status page
//! section with each tenant's and each destination's 15-minute rate history.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::admin::http::AdminExtra;
use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;
use crate::tenants::history::{sparkline, History, STEP};
use crate::tenants::{TenantCounters, TenantState, Tenants};

/// What the admin endpoint shows about tenants.
pub struct TenantsAdmin {
    /// The tenants.
    pub tenants: Arc<Tenants>,
    /// The destinations, for their history.
    pub pipeline: Arc<Pipeline>,
    /// Rates sampled every [`STEP`].
    pub history: Arc<History>,
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn html(v: &str) -> String {
    v.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl TenantsAdmin {
    /// Samples every tenant's accepted points and every destination's forwarded points
    /// each [`STEP`] until shutdown (first sample at once).
    pub async fn sample(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            for t in self.tenants.all() {
                let n = t.counters.accepted.load(Ordering::Relaxed);
                self.history.sample(&format!("tenant:{}", t.name), n, STEP);
            }
            for d in self.pipeline.destinations() {
                let n = d.stats.sent.load(Ordering::Relaxed);
                self.history.sample(&format!("dest:{}", d.name()), n, STEP);
            }
            tokio::select! {
                _ = tokio::time::sleep(STEP) => {}
                _ = shutdown.recv() => return,
            }
        }
    }
}

/// One counter family with a `key` label.
fn family(out: &mut String, name: &str, kind: &str, help: &str, rows: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

/// Reads one of a tenant's counters.
type Counter = fn(&TenantCounters) -> &AtomicU64;

/// A counter family split by reason: name, help, and each reason's counter.
type ReasonFamily = (
    &'static str,
    &'static str,
    &'static [(&'static str, Counter)],
);

/// The counter families split by reason.
const BY_REASON: [ReasonFamily; 2] = [
    (
        "polymur_tenant_refused_batches_total",
        "Batches refused per key name: quota (429), fair_share and queue_full (503).",
        &[
            ("quota", |c| &c.refused_quota),
            ("fair_share", |c| &c.refused_fair),
            ("queue_full", |c| &c.refused_full),
        ],
    ),
    (
        "polymur_tenant_dropped_lines_total",
        "Lines dropped per key name: outside_namespace, invalid.",
        &[
            ("outside_namespace", |c| &c.dropped_namespace),
            ("invalid", |c| &c.dropped_invalid),
        ],
    ),
];

/// Rows `key="…",reason="…"` of a family of [`BY_REASON`].
fn by_reason(all: &[Arc<TenantState>], reasons: &[(&str, Counter)]) -> Vec<(String, String)> {
    all.iter()
        .flat_map(|t| {
            let k = label(&t.name);
            reasons.iter().map(move |(r, counter)| {
                let v = counter(&t.counters).load(Ordering::Relaxed).to_string();
                (format!("key=\"{k}\",reason=\"{r}\""), v)
            })
        })
        .collect()
}

impl AdminExtra for TenantsAdmin {
    fn metrics(&self, out: &mut String) {
        let all = self.tenants.all();
        let rows = |f: &dyn Fn(&TenantState) -> String| -> Vec<(String, String)> {
            all.iter()
                .map(|t| (format!("key=\"{}\"", label(&t.name)), f(t)))
                .collect()
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        family(
            out,
            "polymur_tenant_accepted_points_total",
            "counter",
            "Points accepted per key name (held for every destination).",
            &rows(&|t| load(&t.counters.accepted)),
        );
        for (name, help, reasons) in BY_REASON {
            family(out, name, "counter", help, &by_reason(&all, reasons));
        }
        family(
            out,
            "polymur_tenant_rate_points_per_second",
            "gauge",
            "Points accepted per second over the last second, per key name.",
            &rows(&|t| format!("{:.1}", t.admitted_rate())),
        );
        let limited: Vec<_> = all
            .iter()
            .filter_map(|t| {
                t.limits()
                    .points_per_second
                    .map(|l| (format!("key=\"{}\"", label(&t.name)), l.to_string()))
            })
            .collect();
        family(
            out,
            "polymur_tenant_limit_points_per_second",
            "gauge",
            "The points-per-second limit per key name (absent: unlimited).",
            &limited,
        );
        family(
            out,
            "polymur_tenant_series_this_minute",
            "gauge",
            "Distinct series this minute (estimate), per key name with a series-per-minute limit.",
            &rows(&|t| t.series_this_minute().to_string()),
        );
    }

    fn status_html(&self, page: &mut String) {
        page.push_str("<h2>Tenants</h2><table><tr><th>key name</th><th>accepted</th><th>rate / limit (points/s)</th>\
<th>refused: quota (429)</th><th>fair share (503)</th><th>queue full (503)</th><th>outside namespace</th><th>invalid</th><th>last 15 minutes</th></tr>");
        for t in self.tenants.all() {
            let c = &t.counters;
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let limit = t.limits().points_per_second;
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{:.0} / {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                html(&t.name),
                load(&c.accepted),
                t.admitted_rate(),
                limit.map_or("unlimited".to_string(), |l| format!("{l:.0}")),
                load(&c.refused_quota),
                load(&c.refused_fair),
                load(&c.refused_full),
                load(&c.dropped_namespace),
                load(&c.dropped_invalid),
                sparkline(&self.history.rates(&format!("tenant:{}", t.name)), limit),
            );
        }
        page.push_str("</table><h2>Destination rates</h2><table><tr><th>destination</th><th>last 15 minutes (points/s forwarded)</th></tr>");
        for d in self.pipeline.destinations() {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td></tr>",
                html(d.name()),
                sparkline(&self.history.rates(&format!("dest:{}", d.name())), None)
            );
        }
        page.push_str("</table>");
    }
}
