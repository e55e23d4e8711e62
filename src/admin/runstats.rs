//! Runstats (`-stat-addr`): `stats` → process start time, uptime and memory as JSON,
//! in the Go original's nested shape (`{"service": {...}, "runtime-meminfo": {...}}`),
//! so the tools that read the original's answer keep working.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::{not_a_command, Handler};

/// The process's memory from `/proc/self/status`, in bytes (Linux only; zeros
/// elsewhere). The original reported Go's `runtime.MemStats`; a Rust process has
/// no garbage-collected heap, so these are the kernel's honest equivalents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// Resident set size (`VmRSS`): what the process holds in RAM now.
    pub rss: u64,
    /// Peak resident set size (`VmHWM`).
    pub peak_rss: u64,
    /// Anonymous resident memory (`RssAnon`): heap and stacks, the closest to Go's `HeapAlloc`.
    pub anon_rss: u64,
    /// Virtual size (`VmSize`): address space reserved, the closest to Go's `Sys`.
    pub virtual_size: u64,
    /// Data segment size (`VmData`): heap and anonymous mappings reserved.
    pub data: u64,
}

impl MemInfo {
    /// Reads the current figures.
    pub fn read() -> MemInfo {
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
        MemInfo {
            rss: field("VmRSS:"),
            peak_rss: field("VmHWM:"),
            anon_rss: field("RssAnon:"),
            virtual_size: field("VmSize:"),
            data: field("VmData:"),
        }
    }
}

/// Resident and peak resident memory, in bytes (see [`MemInfo`]).
pub fn memory() -> (u64, u64) {
    let m = MemInfo::read();
    (m.rss, m.peak_rss)
}

/// The runstats answer for a process started at `started`, up for `uptime_secs`.
pub fn document(started: SystemTime, uptime_secs: u64, mem: MemInfo) -> serde_json::Value {
    serde_json::json!({
        "service": {
            "start-time": humantime::format_rfc3339_seconds(started).to_string(),
            "uptime-seconds": uptime_secs,
        },
        "runtime-meminfo": {
            "rss-bytes": mem.rss,
            "peak-rss-bytes": mem.peak_rss,
            "anon-rss-bytes": mem.anon_rss,
            "virtual-bytes": mem.virtual_size,
            "data-bytes": mem.data,
        },
    })
}

/// The runstats handler, started at `started`.
pub fn handler(started: SystemTime) -> Handler {
    let clock = Instant::now();
    Arc::new(move |req: &str| {
        if req != "stats" {
            return not_a_command(req);
        }
        let doc = document(started, clock.elapsed().as_secs(), MemInfo::read());
        format!("{doc}\n")
    })
}
