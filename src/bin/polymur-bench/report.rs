//! The end-of-run report: a human table, or JSON with `-json`.
//!
//! Ratios are the headline in compare mode because the machine this runs on is
//! shared and noisy: two targets measured in alternating rounds see the same
//! noise, so `B/A` is stable where the absolute figures are not.

use std::fmt::Write as _;

use serde::Serialize;

use super::reference::Reference;

/// Everything measured for one target over all its rounds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetReport {
    /// `-label` / `-label-b`.
    pub label: String,
    /// The command that was spawned, if the bench started the target.
    pub command: Option<String>,
    /// The process whose CPU and memory are reported.
    pub pid: Option<u32>,
    /// Rounds run against this target.
    pub rounds: u32,
    /// Batches acknowledged (HTTP 200) or fully written (TCP).
    pub batches: u64,
    /// Points acknowledged (HTTP) or written (TCP).
    pub points_acked: u64,
    /// Points the counting sink(s) received, divided by `-copies`.
    pub points_arrived: u64,
    /// Acknowledged points that never arrived.
    pub points_lost: u64,
    /// Points that arrived more than once (at-least-once resends after a reconnect).
    pub points_extra: u64,
    /// `503` answers (each batch was retried).
    pub refused: u64,
    /// Transport errors and unexpected statuses.
    pub errors: u64,
    /// Seconds from the first send to the last arrival, summed over rounds.
    pub wall_secs: f64,
    /// Arrived points per wall-clock second.
    pub arrived_per_sec: f64,
    /// Target's user+system CPU seconds during the rounds (drain included).
    pub cpu_secs: Option<f64>,
    /// Arrived points per target CPU-second: the figure that survives a noisy host.
    pub arrived_per_cpu_sec: Option<f64>,
    /// Target's peak RSS (`VmHWM`) at the end, MiB.
    pub peak_rss_mib: Option<f64>,
    /// Largest RSS seen by the 100 ms sampler, MiB.
    pub max_sampled_rss_mib: Option<f64>,
    /// Median batch latency (HTTP: request to answer; TCP: time to write), ms.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile batch latency, ms.
    pub latency_p99_ms: Option<f64>,
    /// CPU seconds the bench itself (generator, clients, sinks) used.
    pub bench_cpu_secs: f64,
    /// 1-minute load average when the rounds started and ended.
    pub load_avg: (f64, f64),
    /// Compressed body bytes per point on the wire (gateway targets).
    pub wire_bytes_per_point: Option<f64>,
}

/// `B/A` for the figures that matter.
#[derive(Clone, Debug, Serialize)]
pub struct Ratios {
    /// Arrived points per second, B over A.
    pub arrived_per_sec: f64,
    /// Arrived points per target CPU-second, B over A.
    pub arrived_per_cpu_sec: Option<f64>,
    /// Peak RSS, B over A.
    pub peak_rss: Option<f64>,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `gateway` or `tcp`.
    pub target: String,
    /// Lines per batch, series, name length, clients, ... as given.
    pub load: String,
    /// One entry per target (two in compare mode).
    pub targets: Vec<TargetReport>,
    /// Compare mode: second target over first.
    pub ratios: Option<Ratios>,
    /// Inflate references and the in-process hot path on the same batch.
    pub reference: Option<Reference>,
}

fn opt_ratio(b: Option<f64>, a: Option<f64>) -> Option<f64> {
    match (b, a) {
        (Some(b), Some(a)) if a > 0.0 => Some(b / a),
        _ => None,
    }
}

impl Report {
    /// Fills in `ratios` from the first two targets.
    pub fn compute_ratios(&mut self) {
        if let [a, b, ..] = &self.targets[..] {
            self.ratios = Some(Ratios {
                arrived_per_sec: if a.arrived_per_sec > 0.0 {
                    b.arrived_per_sec / a.arrived_per_sec
                } else {
                    0.0
                },
                arrived_per_cpu_sec: opt_ratio(b.arrived_per_cpu_sec, a.arrived_per_cpu_sec),
                peak_rss: opt_ratio(b.peak_rss_mib, a.peak_rss_mib),
            });
        }
    }

    /// The human-readable table: one column per target (and `B/A` in compare mode),
    /// then the reference figures.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "polymur-bench: target {} | {}", self.target, self.load);
        let mut rows = self.rows();
        if let Some(r) = &self.ratios {
            self.add_ratios(r, &mut rows);
        }
        render(&rows, &mut s);
        if let Some(r) = &self.reference {
            self.reference_lines(r, &mut s);
        }
        s
    }

    /// The per-target rows: a name and one cell per target.
    fn rows(&self) -> Vec<(&'static str, Vec<String>)> {
        let f0 = |v: f64| format!("{v:.0}");
        let f2 = |v: f64| format!("{v:.2}");
        let mil = |v: f64| format!("{:.3} M", v / 1e6);
        let opt =
            |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "n/a".into());
        let col = |f: &dyn Fn(&TargetReport) -> String| self.targets.iter().map(f).collect();
        vec![
            ("", col(&|t| t.label.clone())),
            ("rounds", col(&|t| t.rounds.to_string())),
            ("points acked/sent", col(&|t| t.points_acked.to_string())),
            ("points arrived", col(&|t| t.points_arrived.to_string())),
            ("points lost", col(&|t| t.points_lost.to_string())),
            ("points extra (dups)", col(&|t| t.points_extra.to_string())),
            (
                "503 refused / errors",
                col(&|t| format!("{} / {}", t.refused, t.errors)),
            ),
            ("wall s", col(&|t| f2(t.wall_secs))),
            ("arrived points/s", col(&|t| mil(t.arrived_per_sec))),
            (
                "wire bytes/point",
                col(&|t| opt(t.wire_bytes_per_point, &f2)),
            ),
            ("target CPU s", col(&|t| opt(t.cpu_secs, &f2))),
            (
                "arrived points/CPU-s",
                col(&|t| opt(t.arrived_per_cpu_sec, &mil)),
            ),
            ("peak RSS MiB (VmHWM)", col(&|t| opt(t.peak_rss_mib, &f0))),
            (
                "max sampled RSS MiB",
                col(&|t| opt(t.max_sampled_rss_mib, &f0)),
            ),
            ("batch latency p50 ms", col(&|t| opt(t.latency_p50_ms, &f2))),
            ("batch latency p99 ms", col(&|t| opt(t.latency_p99_ms, &f2))),
            ("bench CPU s", col(&|t| f2(t.bench_cpu_secs))),
            (
                "load avg start/end",
                col(&|t| format!("{:.2}/{:.2}", t.load_avg.0, t.load_avg.1)),
            ),
        ]
    }

    /// The `B/A` column of compare mode.
    fn add_ratios(&self, r: &Ratios, rows: &mut [(&'static str, Vec<String>)]) {
        let ratio = |v: Option<f64>| v.map(|v| format!("{v:.2}x")).unwrap_or_default();
        for (name, cells) in rows.iter_mut() {
            cells.push(match *name {
                "" => "B/A".into(),
                "arrived points/s" => ratio(Some(r.arrived_per_sec)),
                "arrived points/CPU-s" => ratio(r.arrived_per_cpu_sec),
                "peak RSS MiB (VmHWM)" => ratio(r.peak_rss),
                "wire bytes/point" => ratio(opt_ratio(
                    self.targets[1].wire_bytes_per_point,
                    self.targets[0].wire_bytes_per_point,
                )),
                _ => String::new(),
            });
        }
    }

    /// Each target's arrived points per CPU-second over the reference figure `v`, ending the line.
    fn over(&self, v: f64, s: &mut String) {
        for t in &self.targets {
            if let Some(e2e) = t.arrived_per_cpu_sec {
                let _ = write!(s, "   {}: {:.2}x", t.label, e2e / v);
            }
        }
        s.push('\n');
    }

    /// The decode and compression references, each with the targets' figure over it.
    fn reference_lines(&self, r: &Reference, s: &mut String) {
        let _ = writeln!(
            s,
            "reference, one core, same {}-line batch ({} B gzip, {} B plain), lines per CPU-second:",
            r.batch_lines, r.body_bytes, r.plain_bytes
        );
        let mut refline = |name: &str, v: f64| {
            let _ = write!(s, "  {name:<34} {:>9.3} M", v / 1e6);
            self.over(v, s);
        };
        refline("zlib-rs inflate (flate2)", r.zlib_rs_lines_per_cpu_sec);
        if let Some(p) = r.python_zlib_lines_per_cpu_sec {
            refline("python3 zlib.decompress", p);
        }
        refline("libdeflate inflate", r.libdeflate_lines_per_cpu_sec);
        refline(
            "in-process inflate+validate+route",
            r.hot_path_lines_per_cpu_sec,
        );
        refline("zstd decode (one shot)", r.zstd_decode_lines_per_cpu_sec);
        let _ = writeln!(
            s,
            "compression, one core, same batch, lines per CPU-second (bytes per point):"
        );
        let mut cline = |name: &str, v: f64, bpp: f64| {
            let _ = write!(s, "  {name:<34} {:>9.3} M  ({bpp:.2} B/point)", v / 1e6);
            self.over(v, s);
        };
        cline(
            "gzip -6 (flate2 zlib-rs)",
            r.gzip6_lines_per_cpu_sec,
            r.gzip6_bytes_per_point,
        );
        if let Some(p) = r.python_zlib_compress_lines_per_cpu_sec {
            cline("python3 zlib.compress level 6", p, r.gzip6_bytes_per_point);
        }
        let zstd = match r.zstd_level {
            0 => "zstd tuned (libzstd)".to_string(),
            l => format!("zstd -{l} (libzstd)"),
        };
        cline(&zstd, r.zstd_lines_per_cpu_sec, r.zstd_bytes_per_point);
        let _ = writeln!(
            s,
            "  (Nx = target's arrived points per CPU-second over the reference; >= 1 beats it)"
        );
    }
}

/// The rows as aligned columns.
fn render(rows: &[(&'static str, Vec<String>)], s: &mut String) {
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let ncols = rows.first().map(|r| r.1.len()).unwrap_or(0);
    let widths: Vec<usize> = (0..ncols)
        .map(|c| rows.iter().map(|r| r.1[c].len()).max().unwrap_or(0).max(10))
        .collect();
    for (name, cells) in rows {
        let _ = write!(s, "  {name:<w0$}");
        for (c, cell) in cells.iter().enumerate() {
            let _ = write!(s, "  {cell:>w$}", w = widths[c]);
        }
        s.push('\n');
    }
}
