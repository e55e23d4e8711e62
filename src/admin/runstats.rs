//! Runstats (`-stat-addr`): `stats` → process start time, uptime and memory as JSON.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::{not_a_command, Handler};

/// Resident memory figures from `/proc/self/status`, in bytes (Linux only;
/// zeros elsewhere).
pub fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The runstats handler, started at `started`.
pub fn handler(started: SystemTime) -> Handler {
    let clock = Instant::now();
    Arc::new(move |req: &str| {
        if req != "stats" {
            return not_a_command(req);
        }
        let (rss, peak) = memory();
        let doc = serde_json::json!({
            "service.start-time": humantime::format_rfc3339_seconds(started).to_string(),
            "service.uptime-seconds": clock.elapsed().as_secs(),
            "memory.rss-bytes": rss,
            "memory.peak-rss-bytes": peak,
        });
        format!("{doc}\n")
    })
}
