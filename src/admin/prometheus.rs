//! The Prometheus text exposition, family by family: what `/metrics` serves for
//! the pipeline, its destinations, the HTTP source, the keys and the process.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::dest::Destination;
use crate::ingest::stats::{HttpStats, HTTP_CODES, HTTP_PATHS, LATENCY_BUCKETS};
use crate::keys::KeyCache;
use crate::line::LineError;
use crate::stats::Stats;

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Escapes a Prometheus label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `# HELP` and `# TYPE` of a family whose series the caller writes.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A family of one series: `series` is the name, with its labels if it has any.
pub fn single(
    out: &mut String,
    series: &str,
    kind: &str,
    help: &str,
    value: impl std::fmt::Display,
) {
    header(out, series.split('{').next().unwrap_or(series), kind, help);
    let _ = writeln!(out, "{series} {value}");
}

/// Points and batches accepted, invalid lines by reason, refused batches.
pub fn pipeline(out: &mut String, stats: &Stats) {
    let accepted = "Points accepted into the pipeline (held for every destination).";
    single(
        out,
        "polymur_received_points_total",
        "counter",
        accepted,
        load(&stats.received),
    );
    single(
        out,
        "polymur_received_batches_total",
        "counter",
        "Batches accepted.",
        load(&stats.batches),
    );
    header(
        out,
        "polymur_invalid_lines_total",
        "counter",
        "Lines dropped as invalid, by reason.",
    );
    for e in LineError::ALL {
        let n = load(&stats.invalid_by_reason[e.index()]);
        let _ = writeln!(
            out,
            "polymur_invalid_lines_total{{reason=\"{}\"}} {n}",
            e.label()
        );
    }
    let refused = "Batches refused with 503 because a destination could not hold them.";
    single(
        out,
        "polymur_refused_batches_total",
        "counter",
        refused,
        load(&stats.refused),
    );
}

/// A per-destination family: name, kind, help, and the figure of one destination.
type DestFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Destination) -> u64,
);

const BEFORE_DROPS: [DestFamily; 6] = [
    (
        "polymur_forwarded_points_total",
        "counter",
        "Points written to each destination.",
        |d| load(&d.stats.sent),
    ),
    (
        "polymur_destination_queue_points",
        "gauge",
        "Points queued in memory for each destination.",
        |d| d.queued(),
    ),
    (
        "polymur_destination_queue_limit",
        "gauge",
        "Queue cap of each destination, in points.",
        |d| d.cap(),
    ),
    (
        "polymur_destination_up",
        "gauge",
        "1 while the destination's connection is open.",
        |d| u64::from(d.stats.connected.load(Ordering::Relaxed)),
    ),
    (
        "polymur_destination_errors_total",
        "counter",
        "Failed connects and broken connections.",
        |d| load(&d.stats.errors),
    ),
    (
        "polymur_resent_points_total",
        "counter",
        "Points re-sent after a broken connection (possible duplicates).",
        |d| load(&d.stats.resent),
    ),
];

const AFTER_DROPS: [DestFamily; 2] = [
    (
        "polymur_spool_bytes",
        "gauge",
        "Bytes waiting in each destination's disk spool (0 without -spool-dir).",
        |d| d.spool().map_or(0, |s| s.backlog()),
    ),
    (
        "polymur_spooled_points_total",
        "counter",
        "Points written to each destination's spool.",
        |d| load(&d.stats.spooled),
    ),
];

/// Every destination's counters and gauges, labelled `destination="<name>"`.
pub fn destinations(out: &mut String, dests: &[std::sync::Arc<Destination>]) {
    let families = |out: &mut String, list: &[DestFamily]| {
        for (name, kind, help, figure) in list {
            header(out, name, kind, help);
            for d in dests {
                let _ = writeln!(
                    out,
                    "{name}{{destination=\"{}\"}} {}",
                    label(d.name()),
                    figure(d)
                );
            }
        }
    };
    families(out, &BEFORE_DROPS);
    header(
        out,
        "polymur_dropped_points_total",
        "counter",
        "Points dropped, by destination and reason.",
    );
    for d in dests {
        let damaged = d.spool().map_or(0, |s| s.damaged_points());
        for (reason, n) in [
            ("shutdown", load(&d.stats.abandoned)),
            ("overflow", load(&d.stats.dropped)),
            ("spool_damaged", damaged),
            ("dead_letter", load(&d.stats.dead_lettered)),
            ("write_failed", load(&d.stats.write_failed)),
        ] {
            let name = label(d.name());
            let _ = writeln!(
                out,
                "polymur_dropped_points_total{{destination=\"{name}\",reason=\"{reason}\"}} {n}"
            );
        }
    }
    families(out, &AFTER_DROPS);
}

/// HTTP answers by route and status, and the `/ingest` latency histogram.
pub fn http(out: &mut String, stats: &HttpStats) {
    header(
        out,
        "polymur_http_requests_total",
        "counter",
        "HTTP answers by route and status.",
    );
    for (p, path) in HTTP_PATHS.iter().enumerate() {
        for (c, code) in HTTP_CODES.iter().enumerate() {
            let v = stats.http_count(p, c);
            if v > 0 {
                let _ = writeln!(
                    out,
                    "polymur_http_requests_total{{path=\"{path}\",code=\"{code}\"}} {v}"
                );
            }
        }
    }
    let h = &stats.batch_latency;
    let name = "polymur_batch_latency_seconds";
    header(
        out,
        name,
        "histogram",
        "Time from /ingest request to answer.",
    );
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += load(&h.buckets[i]);
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    cumulative += load(&h.buckets[LATENCY_BUCKETS.len()]);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum {}", load(&h.sum_micros) as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {}", load(&h.count));
}

/// Points per key name and the health of the key sync (gateway only).
pub fn keys(out: &mut String, keys: &KeyCache, now: u64) {
    header(
        out,
        "polymur_key_received_points_total",
        "counter",
        "Points accepted per API key name.",
    );
    for t in keys.tenants() {
        let n = t.received.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "polymur_key_received_points_total{{key_name=\"{}\"}} {n}",
            label(&t.name)
        );
    }
    let ok = keys.last_sync_ok.load(Ordering::Relaxed);
    single(
        out,
        "polymur_key_names",
        "gauge",
        "Registered API key names.",
        keys.tenants().len(),
    );
    let last = "Unix time of the last successful key sync (0: never).";
    single(
        out,
        "polymur_key_sync_last_success_timestamp_seconds",
        "gauge",
        last,
        ok,
    );
    let age = if ok == 0 {
        -1.0
    } else {
        now.saturating_sub(ok) as f64
    };
    let age_help = "Seconds since the last successful key sync (-1: never).";
    single(out, "polymur_key_sync_age_seconds", "gauge", age_help, age);
    let failed = keys.last_sync_failed.load(Ordering::Relaxed);
    let up = u8::from(ok >= failed && ok > 0);
    single(
        out,
        "polymur_key_sync_up",
        "gauge",
        "1 when the last key sync succeeded.",
        up,
    );
}

/// hash-route's name → ring position cache (shown once a router uses one).
pub fn hash_cache(out: &mut String) {
    let Some(counts) = crate::route::pos_cache::totals() else {
        return;
    };
    let name = "polymur_hash_cache_lookups_total";
    let help = "hash-route ring positions by result: hit (from the cache), miss (hashed and \
        remembered), bypass (hashed; the cache was skipped after batches with few hits).";
    header(out, name, "counter", help);
    for (result, n) in ["hit", "miss", "bypass"].iter().zip(counts) {
        let _ = writeln!(out, "{name}{{result=\"{result}\"}} {n}");
    }
}

/// Memory and start time of the process.
pub fn process(out: &mut String, started: SystemTime) {
    let (rss, peak) = super::runstats::memory();
    let start = super::http::unix(started);
    single(
        out,
        "polymur_process_resident_memory_bytes",
        "gauge",
        "Resident memory.",
        rss,
    );
    single(
        out,
        "polymur_process_peak_resident_memory_bytes",
        "gauge",
        "Peak resident memory.",
        peak,
    );
    single(
        out,
        "polymur_process_start_time_seconds",
        "gauge",
        "Process start, Unix time.",
        start,
    );
}
