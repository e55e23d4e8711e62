//! Realistic Graphite load: metric names, plaintext batches and their gzip bodies.
//!
//! Everything here is built once, before a run starts, so the generator's own cost
//! never shows up in what is measured: the load loops only hand out pre-built,
//! ref-counted buffers. The same builders feed the criterion benches and the
//! allocation test, so every figure in `docs/BENCHMARKS.md` talks about one shape of
//! data.

use std::io::Write;

use bytes::Bytes;
use flate2::write::GzEncoder;

/// The shape of the generated load.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Distinct metric names (series) cycled through.
    pub series: usize,
    /// Target length of each metric name in bytes (names are padded or trimmed).
    pub name_len: usize,
    /// Lines per batch (polymur-proxy flushes at 5000).
    pub batch_lines: usize,
    /// gzip level of the bodies (polymur-proxy uses Go's default, 6).
    pub gzip_level: u32,
    /// Unix time stamped on the points; near "now" so carbon would keep them.
    pub timestamp: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            series: 100_000,
            name_len: 60,
            batch_lines: 5000,
            gzip_level: 6,
            timestamp: now_unix(),
        }
    }
}

/// Seconds since the epoch (0 if the clock is before 1970).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Leaf names seen on real collectd/diamond hosts, so names share prefixes the way
/// production ones do (that matters to the hash ring and to gzip's ratio).
const LEAVES: [&str; 8] = [
    "cpu.core5.user",
    "cpu.core11.system",
    "memory.used",
    "disk.sda0.reads",
    "net.eth0.rx_bytes",
    "load.shortterm",
    "app.requests.rate",
    "app.latency.http.get.p99",
];

/// The `i`th series name, about `len` bytes long and unique per `i`.
pub fn metric_name(i: usize, len: usize) -> String {
    let mut parts = vec![
        "servers".to_string(),
        format!("dc{}", i % 3),
        format!("cluster{:02}", i % 17),
        format!("host{:04}", (i / 8) % 10_000),
        LEAVES[i % LEAVES.len()].to_string(),
        format!("s{i}"),
    ];
    let joined_len = |p: &[String]| p.iter().map(|s| s.len() + 1).sum::<usize>() - 1;
    // Too long: drop leading parts, keeping the unique last one.
    while parts.len() > 1 && joined_len(&parts) > len {
        parts.remove(0);
    }
    let have = joined_len(&parts);
    if have + 1 < len {
        // Too short: a padding segment before the unique suffix, like a long tag.
        let pad: String = (0..len - have - 1)
            .map(|k| (b'a' + ((i + k) % 26) as u8) as char)
            .collect();
        let last = parts.len() - 1;
        parts.insert(last, pad);
    }
    parts.join(".")
}

impl Workload {
    /// Plaintext batch number `k`: `batch_lines` lines over consecutive series,
    /// values shaped like real gauges (integers and decimals).
    pub fn batch(&self, k: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.batch_lines * (self.name_len + 24));
        let series = self.series.max(1);
        for j in 0..self.batch_lines {
            let i = (k * self.batch_lines + j) % series;
            let name = metric_name(i, self.name_len);
            let v = (i * 7919 + k * 31) % 100_000;
            if v.is_multiple_of(3) {
                writeln!(out, "{name} {} {}", v, self.timestamp).expect("vec write");
            } else {
                writeln!(out, "{name} {}.{:02} {}", v / 100, v % 100, self.timestamp)
                    .expect("vec write");
            }
        }
        out
    }

    /// `count` distinct plaintext batches (0, 1, ...).
    pub fn batches(&self, count: usize) -> Vec<Bytes> {
        (0..count.max(1))
            .map(|k| Bytes::from(self.batch(k)))
            .collect()
    }

    /// The gzip body polymur-proxy would send for `plain`.
    pub fn gzip(&self, plain: &[u8]) -> Bytes {
        gzip(plain, self.gzip_level)
    }
}

/// gzip `plain` at `level` (0-9) in one member, as polymur-proxy does.
pub fn gzip(plain: &[u8], level: u32) -> Bytes {
    let mut e = GzEncoder::new(
        Vec::with_capacity(plain.len() / 4),
        flate2::Compression::new(level.min(9)),
    );
    e.write_all(plain).expect("vec write");
    Bytes::from(e.finish().expect("vec write"))
}

#[cfg(test)]
mod tests {
    // This file is also included by the benches, whose harness drops `#[test]`
    // functions and so would leave a `use super::...` unused: paths are spelled out.

    #[test]
    fn names_are_unique_and_about_the_asked_length() {
        for len in [20usize, 60, 120] {
            let names: std::collections::HashSet<String> =
                (0..1000).map(|i| super::metric_name(i, len)).collect();
            assert_eq!(names.len(), 1000);
            for n in &names {
                assert!(n.len() <= len.max(8) + 1, "{n} longer than {len}");
                assert!(n.len() + 8 >= len, "{n} much shorter than {len}");
            }
        }
    }

    #[test]
    fn batches_are_valid_plaintext() {
        let w = super::Workload {
            series: 123,
            batch_lines: 500,
            ..super::Workload::default()
        };
        let raw = w.batch(3);
        let (b, rejects) = polymur::batch::Batch::from_plaintext(raw, None);
        assert_eq!(rejects.count, 0);
        assert_eq!(b.len(), 500);
        let body = w.gzip(b.data());
        assert_eq!(
            polymur::ingest::inflate::gunzip(&body, 1 << 24).unwrap(),
            &b.data()[..]
        );
    }
}
