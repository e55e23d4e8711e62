//! The proxy's part of the admin endpoint: the gateway side (what was sent, what
//! waits in memory and on disk, whether the gateway takes the key).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::sink::Gateway;
use crate::admin::http::{unix_now, AdminExtra};
use crate::admin::prometheus;
use crate::dest::Destination;

/// Figures of the proxy's destination and gateway connection.
pub struct ProxyAdmin {
    /// The gateway and its counters.
    pub gateway: Arc<Gateway>,
    /// The destination holding what waits to be sent (memory queue and spool).
    pub dest: Arc<Destination>,
}

impl ProxyAdmin {
    /// Bytes in the spool not yet read back.
    fn spooled(&self) -> u64 {
        self.dest.spool().map_or(0, |s| s.backlog())
    }

    /// The single-series families: series (with labels), kind, help, value. One row a
    /// family, as a table reads best.
    #[rustfmt::skip]
    fn families(&self) -> [(&'static str, &'static str, &'static str, u64); 9] {
        let s = &self.gateway.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let bytes = self.spooled();
        [
            ("polymur_proxy_sent_points_total", "counter", "Points the gateway acknowledged.", load(&s.sent)),
            ("polymur_proxy_sent_batches_total", "counter", "Batches the gateway acknowledged.", load(&s.batches)),
            ("polymur_proxy_retries_total", "counter", "POSTs retried (network errors, 5xx, 503).", load(&s.retries)),
            ("polymur_dropped_points_total{destination=\"gateway\",reason=\"rejected\"}", "counter", "Points in batches the gateway refused for good (400/413).", load(&s.rejected)),
            ("polymur_proxy_queue_points", "gauge", "Points waiting in memory for the gateway.", self.dest.queued()),
            ("polymur_proxy_queue_limit", "gauge", "Memory queue cap, in points.", self.dest.cap()),
            ("polymur_proxy_spooled_points_total", "counter", "Points written to the spool (memory queue full, or moved there at shutdown).", load(&self.dest.stats.spooled)),
            ("polymur_spool_damaged_points_total{destination=\"gateway\"}", "counter", "Points lost in damaged spool records.", self.dest.spool().map_or(0, |s| s.damaged_points())),
            ("polymur_spool_bytes{destination=\"gateway\"}", "gauge", "Bytes waiting in the spool, not yet read back.", bytes),
        ]
    }
}

impl AdminExtra for ProxyAdmin {
    fn metrics(&self, out: &mut String) {
        for (series, kind, help, value) in self.families() {
            prometheus::single(out, series, kind, help, value);
        }
        let s = &self.gateway.stats;
        let up = self.gateway.key_ok() && !s.failing.load(Ordering::Relaxed);
        let (series, help) = (
            "polymur_destination_up{destination=\"gateway\"}",
            "1 while the gateway takes batches.",
        );
        prometheus::single(out, series, "gauge", help, u8::from(up));
        let paused = "0 while sending is paused because the gateway refused the key.";
        let valid = u8::from(self.gateway.key_ok());
        prometheus::single(out, "polymur_proxy_key_valid", "gauge", paused, valid);
    }

    fn status_html(&self, out: &mut String) {
        let s = &self.gateway.stats;
        let bytes = self.spooled();
        let last = s.last_delivered.load(Ordering::Relaxed);
        let state = if !self.gateway.key_ok() {
            "<span class=bad>key refused (401): sending paused, data kept</span>"
        } else if s.failing.load(Ordering::Relaxed) {
            "<span class=bad>failing: retrying</span>"
        } else {
            "<span class=ok>sending</span>"
        };
        let _ = write!(
            out,
            "<h2>Gateway</h2><p>{} &middot; {state} &middot; last batch acknowledged: {}</p>\
<table><tr><th>counter</th><th>value</th></tr>\
<tr><td>points sent</td><td>{}</td></tr><tr><td>batches sent</td><td>{}</td></tr>\
<tr><td>retries</td><td>{}</td></tr><tr><td>points rejected for good (400/413)</td><td>{}</td></tr>\
<tr><td>points waiting in memory</td><td>{} of {}</td></tr><tr><td>waiting in the spool</td><td>{bytes} bytes</td></tr></table>",
            self.gateway.base().replace('<', "&lt;"),
            if last == 0 { "never".to_string() } else { format!("{} s ago", unix_now().saturating_sub(last)) },
            s.sent.load(Ordering::Relaxed),
            s.batches.load(Ordering::Relaxed),
            s.retries.load(Ordering::Relaxed),
            s.rejected.load(Ordering::Relaxed),
            self.dest.queued(),
            self.dest.cap(),
        );
    }

    fn not_ready(&self) -> Option<String> {
        if !self.gateway.key_ok() {
            return Some("the gateway refuses the API key".into());
        }
        self.gateway
            .stats
            .failing
            .load(Ordering::Relaxed)
            .then(|| "the gateway does not take batches (retrying)".into())
    }
}
