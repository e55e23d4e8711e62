//! polymur-bench: the load generator operators use to size a deployment, and the
//! harness behind the figures in `docs/BENCHMARKS.md`.
//!
//! It drives a gateway over HTTP(S) with gzip batches (`-target gateway`) or a
//! relay/proxy over plaintext TCP (`-target tcp`), while its own counting sinks
//! play the target's destinations. So it reports what *arrived* end to end, the
//! loss between acknowledged and arrived, batch latency, and — read from `/proc`
//! — the target process's CPU seconds and peak RSS. Points per target CPU-second
//! is the headline: it is what a shared, noisy machine cannot fake.
//!
//! Compare mode (`-spawn-b`) runs the same load against two targets in
//! alternating rounds and prints `B/A` ratios, e.g. our relay against
//! carbon-c-relay, or one gateway at two settings.
//!
//! Modules, one concept each:
//! - [`workload`]: metric names, batches, gzip bodies (built before the clock starts);
//! - [`driver`]: the bounded load loops (HTTP clients, TCP senders);
//! - [`sink`]: the counting destination;
//! - [`target`]: spawning or finding a target, loopback-only addresses;
//! - [`procstat`]: CPU and RSS from `/proc`;
//! - [`reference`]: inflate-only and in-process reference figures on the same batch;
//! - [`report`]: the table and `-json`.

mod driver;
mod procstat;
mod reference;
mod report;
mod sink;
mod target;
mod workload;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{ArgAction, Parser};
use tokio::time::Instant;

use driver::{Budget, Tally};
use polymur::config::parse_duration;
use report::{Report, TargetReport};
use target::{Target, TargetSpec};
use workload::Workload;

/// Flags of polymur-bench (Go-style single-dash long flags work too).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "polymur-bench",
    version,
    about = "Load generator and end-to-end benchmark for polymur-gateway, polymur-proxy and the polymur relay",
    after_help = "Example (gateway, spawned by the bench, its destination is the bench's sink):\n  \
        polymur-bench -target gateway -duration 20s -clients 4 \\\n    \
        -spawn 'target/release/polymur-gateway -dev-mode -listen-http-port={port} -destinations={sink} -api-addr= -stat-addr='\n\
        Placeholders in -spawn/-spawn-b: {port} (free port the target must listen on), {sink} \
        (first sink host:port), {sinks} (all sinks, comma-separated), {tmp} (a scratch dir).\n\
        Flags may be written Go-style with one dash."
)]
pub struct BenchArgs {
    /// What to load: `gateway` (HTTP(S) POST /ingest, gzip) or `tcp` (plaintext lines)
    #[arg(long, default_value = "gateway", value_parser = ["gateway", "tcp"])]
    pub target: String,
    /// Command that starts target A (run with `sh -c`, see placeholders below)
    #[arg(long, value_name = "CMD")]
    pub spawn: Option<String>,
    /// Target A's listen address (loopback only); with -spawn, the port to give {port}
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// Target A's process id (for CPU and RSS) when it is not spawned
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Target A's name in the report
    #[arg(long, value_name = "NAME", default_value = "A")]
    pub label: String,
    /// Where target A's counting sink listens (port 0: any free port)
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:0")]
    pub sink: SocketAddr,
    /// Compare mode: command that starts target B
    #[arg(long, value_name = "CMD")]
    pub spawn_b: Option<String>,
    /// Compare mode: target B's listen address
    #[arg(long, value_name = "HOST:PORT")]
    pub addr_b: Option<String>,
    /// Compare mode: target B's process id
    #[arg(long, value_name = "PID")]
    pub pid_b: Option<u32>,
    /// Target B's name in the report
    #[arg(long, value_name = "NAME", default_value = "B")]
    pub label_b: String,
    /// Where target B's counting sink listens
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:0")]
    pub sink_b: SocketAddr,
    /// Counting sinks per target ({sinks}); for broadcast or hash-route set-ups
    #[arg(long, default_value_t = 1)]
    pub sinks: usize,
    /// Copies of each point expected across the sinks (broadcast to N sinks: N)
    #[arg(long, default_value_t = 1)]
    pub copies: u64,

    /// Concurrent HTTP clients (keep-alive) or TCP connections
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Distinct metric names cycled through
    #[arg(long, default_value_t = 100_000)]
    pub series: usize,
    /// Metric name length in bytes
    #[arg(long, default_value_t = 60)]
    pub name_len: usize,
    /// Lines per batch (polymur-proxy flushes at 5000)
    #[arg(long, default_value_t = 5000)]
    pub batch_lines: usize,
    /// gzip level of the bodies (polymur-proxy: 6)
    #[arg(long, default_value_t = 6)]
    pub gzip_level: u32,
    /// Distinct pre-built batches cycled through
    #[arg(long, default_value_t = 8)]
    pub distinct_batches: usize,
    /// Total points per second across clients; 0 = as fast as possible
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Load time per round and target (the round also ends at -points)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Points per round and target at most (the round also ends at -duration)
    #[arg(long, default_value_t = 50_000_000)]
    pub points: u64,
    /// Rounds per target; in compare mode A and B alternate
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// After the load, stop waiting for arrivals once none came for this long
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
    /// After the load, wait at most this long for arrivals
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Pause before re-sending a batch answered 503
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub retry_pause: Duration,

    /// Use https:// for the gateway
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = polymur::go_bool!())]
    pub https: bool,
    /// Compare mode: https:// for target B only (default: as -https), so HTTP and HTTPS run side by side
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = polymur::go_bool!())]
    pub https_b: Option<bool>,
    /// Body compression sent to a gateway: gzip (at -gzip-level) or zstd (at -zstd-level)
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "zstd"])]
    pub encoding: String,
    /// Compare mode: target B's body compression (default: as -encoding)
    #[arg(long, value_parser = ["gzip", "zstd"])]
    pub encoding_b: Option<String>,
    /// zstd level of the bodies (0, polymur-proxy's default: its tuned parameters)
    #[arg(long, default_value_t = polymur::proxy::compression::ZSTD_DEFAULT_LEVEL)]
    pub zstd_level: i32,
    /// CA or self-signed certificate (PEM) to trust for -https
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// X-Polymur-Key to present (a -dev-mode gateway accepts 123)
    #[arg(long, default_value = "123")]
    pub api_key: String,

    /// Also measure zlib-rs, libdeflate and Python zlib inflate of the same batch (gateway)
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "true", value_parser = polymur::go_bool!())]
    pub reference: bool,
    /// Also measure the references with -target tcp: a proxy's end-to-end figure set against
    /// compression alone (gzip -6, Python zlib level 6, zstd) on the same batch
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = polymur::go_bool!())]
    pub reference_tcp: bool,
    /// CPU seconds spent on each reference figure
    #[arg(long, default_value_t = 1.0)]
    pub reference_secs: f64,
    /// Print the report as JSON instead of a table
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = polymur::go_bool!())]
    pub json: bool,
    /// No progress line
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = polymur::go_bool!())]
    pub quiet: bool,
}

/// Set by Ctrl-C: every load loop stops at its next batch.
fn interrupted() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
        .clone()
}

/// The prepared load of one target, shared by its rounds.
struct Load {
    gateway: bool,
    /// What goes on the wire: gzip or zstd bodies (gateway) or plaintext (tcp).
    payloads: Arc<[Bytes]>,
    lines: u64,
    client: Option<reqwest::Client>,
    /// `https` or `http` (gateway).
    scheme: &'static str,
    /// `Content-Encoding` of the bodies (gateway).
    encoding: &'static str,
}

/// Sums over a target's rounds.
#[derive(Default)]
struct Acc {
    report: TargetReport,
    arrived_raw: u64,
    latencies: Vec<u32>,
    max_rss: u64,
}

/// Runs one round of load against `t`, adding its figures to `acc`.
async fn round(
    t: &Target,
    load: &Load,
    args: &BenchArgs,
    acc: &mut Acc,
    progress: Option<String>,
) -> anyhow::Result<()> {
    let copies = args.copies.max(1);
    let before_arrived = t.arrived();
    let before_cpu = t.pid.map(procstat::sample).transpose().ok().flatten();
    let bench_cpu0 = procstat::self_cpu_secs();
    let load0 = procstat::load_average();
    let start = Instant::now();
    let stop = interrupted();
    let batches = args.points.div_ceil(load.lines.max(1)) as i64;
    let pace = (args.rate > 0).then(|| {
        Duration::from_secs_f64(load.lines as f64 * args.clients as f64 / args.rate as f64)
    });
    let budget = Arc::new(Budget {
        deadline: start + args.duration,
        batches_left: AtomicI64::new(batches),
        stop: stop.clone(),
        pace,
        request_timeout: args.drain_timeout,
        retry_pause: args.retry_pause,
    });
    let tally = Arc::new(Tally::default());

    // RSS sampler and progress line, both stopped at the end of the round.
    let done = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sampler = spawn_sampler(
        t,
        Sampler {
            done: done.clone(),
            max_rss: max_rss.clone(),
            tally: tally.clone(),
            progress,
            before_arrived,
            start,
            copies,
        },
    );
    let tasks = spawn_clients(t, load, args, &budget, &tally);
    for task in tasks {
        acc.latencies.extend(task.await.context("load task")?);
    }
    let load_end = Instant::now();

    // Wait for the target to deliver what it acknowledged, bounded twice.
    let acked = tally.acked_points.load(Ordering::Relaxed);
    let expected = before_arrived + acked * copies;
    settle(t, expected, args, load_end, &stop).await;
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;

    let arrived_raw = t.arrived() - before_arrived;
    let end = if arrived_raw > 0 {
        Instant::from_std(t.last_arrival()).max(start)
    } else {
        load_end
    };
    let r = &mut acc.report;
    r.rounds += 1;
    r.batches += tally.acked_batches.load(Ordering::Relaxed);
    r.points_acked += acked;
    r.refused += tally.refused.load(Ordering::Relaxed);
    r.errors += tally.errors.load(Ordering::Relaxed);
    r.wall_secs += (end - start).as_secs_f64();
    r.bench_cpu_secs += procstat::self_cpu_secs() - bench_cpu0;
    if r.rounds == 1 {
        r.load_avg.0 = load0;
    }
    r.load_avg.1 = procstat::load_average();
    acc.arrived_raw += arrived_raw;
    if let (Some(b), Some(a)) = (
        before_cpu,
        t.pid.map(procstat::sample).transpose().ok().flatten(),
    ) {
        *r.cpu_secs.get_or_insert(0.0) += a.cpu_secs - b.cpu_secs;
        r.peak_rss_mib = Some(a.hwm_bytes as f64 / (1 << 20) as f64);
    }
    acc.max_rss = acc.max_rss.max(max_rss.load(Ordering::Relaxed));
    Ok(())
}

/// What the sampler task of a round watches and reports.
struct Sampler {
    done: Arc<AtomicBool>,
    max_rss: Arc<AtomicU64>,
    tally: Arc<Tally>,
    progress: Option<String>,
    before_arrived: u64,
    start: Instant,
    copies: u64,
}

/// Samples the target's RSS every 100 ms (and prints the progress line every
/// 500 ms when asked) until `done`.
fn spawn_sampler(t: &Target, s: Sampler) -> tokio::task::JoinHandle<()> {
    let pid = t.pid;
    let sinks: Vec<_> = t.sinks.iter().map(|s| s.counters.clone()).collect();
    tokio::spawn(async move {
        let mut tick = 0u32;
        while !s.done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tick += 1;
            if let Some(sample) = pid.and_then(|p| procstat::sample(p).ok()) {
                s.max_rss.fetch_max(sample.rss_bytes, Ordering::Relaxed);
            }
            if let (Some(p), true) = (&s.progress, tick.is_multiple_of(5)) {
                let arrived: u64 = sinks.iter().map(|c| c.lines()).sum::<u64>() - s.before_arrived;
                let secs = s.start.elapsed().as_secs_f64();
                eprint!(
                    "\r\x1b[K{p} {secs:5.1}s  acked {:8.3} M  arrived {:8.3} M  {:7.3} M points/s",
                    s.tally.acked_points.load(Ordering::Relaxed) as f64 / 1e6,
                    arrived as f64 / s.copies as f64 / 1e6,
                    arrived as f64 / s.copies as f64 / secs / 1e6,
                );
            }
        }
    })
}

/// Starts the `-clients` load loops against `t`; each returns its batch latencies.
fn spawn_clients(
    t: &Target,
    load: &Load,
    args: &BenchArgs,
    budget: &Arc<Budget>,
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<driver::Latencies>> {
    let mut tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let (budget, tally) = (budget.clone(), tally.clone());
        let first = c * load.payloads.len() / args.clients.max(1);
        let payloads = load.payloads.clone();
        if load.gateway {
            let url = format!("{}://{}/ingest", load.scheme, t.addr);
            let client = load.client.clone().expect("http client");
            let target = driver::HttpTarget {
                client,
                url,
                api_key: args.api_key.clone(),
                encoding: load.encoding,
            };
            tasks.push(tokio::spawn(driver::http_client(
                target, payloads, load.lines, first, budget, tally,
            )));
        } else {
            tasks.push(tokio::spawn(driver::tcp_client(
                t.addr, payloads, load.lines, first, budget, tally,
            )));
        }
    }
    tasks
}

/// Waits until the target delivered `expected` lines, no longer than `-settle`
/// without progress and `-drain-timeout` after the load ended.
async fn settle(t: &Target, expected: u64, args: &BenchArgs, load_end: Instant, stop: &AtomicBool) {
    let mut last = t.arrived();
    let mut last_change = Instant::now();
    while t.arrived() < expected
        && last_change.elapsed() < args.settle
        && load_end.elapsed() < args.drain_timeout
        && !stop.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = t.arrived();
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
}

/// Turns the sums into the per-target report.
fn finish(mut acc: Acc, copies: u64) -> TargetReport {
    let mut r = std::mem::take(&mut acc.report);
    r.points_arrived = acc.arrived_raw / copies.max(1);
    r.points_lost = r.points_acked.saturating_sub(r.points_arrived);
    r.points_extra = r.points_arrived.saturating_sub(r.points_acked);
    if r.wall_secs > 0.0 {
        r.arrived_per_sec = r.points_arrived as f64 / r.wall_secs;
    }
    r.arrived_per_cpu_sec = r
        .cpu_secs
        .filter(|c| *c > 0.0)
        .map(|c| r.points_arrived as f64 / c);
    if acc.max_rss > 0 {
        r.max_sampled_rss_mib = Some(acc.max_rss as f64 / (1 << 20) as f64);
    }
    acc.latencies.sort_unstable();
    r.latency_p50_ms = driver::quantile_ms(&acc.latencies, 0.5);
    r.latency_p99_ms = driver::quantile_ms(&acc.latencies, 0.99);
    r
}

/// Runs the whole benchmark described by `args` and returns the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    polymur::logging::install_tls_provider();
    let gateway = args.target == "gateway";
    let (specs, targets) = start_targets(&args).await?;
    let loads: Vec<Load> = (0..targets.len())
        .map(|i| build_load(&args, i == 1))
        .collect::<anyhow::Result<_>>()?;
    let show = !args.quiet && std::io::stderr().is_terminal();
    let mut accs: Vec<Acc> = targets.iter().map(|_| Acc::default()).collect();
    'rounds: for r in 0..args.rounds.max(1) {
        for ((t, acc), load) in targets.iter().zip(accs.iter_mut()).zip(&loads) {
            if interrupted().load(Ordering::Relaxed) {
                break 'rounds;
            }
            let label = format!("[{} round {}/{}]", t.label, r + 1, args.rounds.max(1));
            if !show && !args.quiet {
                eprintln!("{label} running");
            }
            round(t, load, &args, acc, show.then_some(label)).await?;
            if show {
                eprint!("\r\x1b[K");
            }
        }
    }
    for (acc, load) in accs.iter_mut().zip(&loads) {
        let bytes: usize = load.payloads.iter().map(|p| p.len()).sum();
        acc.report.wire_bytes_per_point =
            Some(bytes as f64 / (load.payloads.len() as f64 * load.lines.max(1) as f64));
    }
    let reference = if args.reference && (gateway || args.reference_tcp) {
        let w = workload(&args);
        let body = w.gzip(&w.batch(0));
        let (lines, secs, zstd_level) =
            (w.batch_lines as u64, args.reference_secs, args.zstd_level);
        Some(
            tokio::task::spawn_blocking(move || reference::measure(&body, lines, secs, zstd_level))
                .await?,
        )
    } else {
        None
    };

    Ok(report(&args, targets, accs, &specs, reference))
}

fn workload(args: &BenchArgs) -> Workload {
    Workload {
        series: args.series.max(1),
        name_len: args.name_len.max(1),
        batch_lines: args.batch_lines.max(1),
        gzip_level: args.gzip_level,
        ..Workload::default()
    }
}

/// One target's batches (compressed for a gateway) and HTTP client, built before the
/// clock starts; `b` selects target B's -https-b and -encoding-b.
fn build_load(args: &BenchArgs, b: bool) -> anyhow::Result<Load> {
    let gateway = args.target == "gateway";
    let w = workload(args);
    let https = if b {
        args.https_b.unwrap_or(args.https)
    } else {
        args.https
    };
    let encoding = match (b, &args.encoding_b) {
        (true, Some(e)) => e.as_str(),
        _ => args.encoding.as_str(),
    };
    let encoding = if encoding == "zstd" { "zstd" } else { "gzip" };
    let plain = w.batches(args.distinct_batches);
    let payloads: Arc<[Bytes]> = if gateway {
        plain
            .iter()
            .map(|b| match encoding {
                "zstd" => Bytes::from(polymur::proxy::compression::zstd(b, args.zstd_level)),
                _ => w.gzip(b),
            })
            .collect()
    } else {
        plain.clone().into()
    };
    let client = if gateway {
        Some(
            polymur::http_client::reqwest_client(args.ca.as_deref(), |b| {
                b.pool_max_idle_per_host(args.clients.max(1))
                    .timeout(args.drain_timeout)
            })
            .context("building the HTTP client")?,
        )
    } else {
        None
    };
    Ok(Load {
        gateway,
        payloads,
        lines: w.batch_lines as u64,
        client,
        scheme: if https { "https" } else { "http" },
        encoding,
    })
}

/// The targets of the run (A, and B in compare mode), started or found.
async fn start_targets(args: &BenchArgs) -> anyhow::Result<(Vec<TargetSpec>, Vec<Target>)> {
    let mut specs = vec![TargetSpec {
        label: args.label.clone(),
        spawn: args.spawn.clone(),
        addr: args.addr.clone(),
        pid: args.pid,
        sink_listen: args.sink,
    }];
    if args.spawn_b.is_some() || args.addr_b.is_some() {
        specs.push(TargetSpec {
            label: args.label_b.clone(),
            spawn: args.spawn_b.clone(),
            addr: args.addr_b.clone(),
            pid: args.pid_b,
            sink_listen: args.sink_b,
        });
    }
    let mut targets = Vec::new();
    for spec in &specs {
        targets.push(Target::start(spec, args.sinks).await?);
    }
    {
        let flag = interrupted();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        });
    }
    Ok((specs, targets))
}

/// Stops the targets and builds the report from their sums.
fn report(
    args: &BenchArgs,
    targets: Vec<Target>,
    accs: Vec<Acc>,
    specs: &[TargetSpec],
    reference: Option<reference::Reference>,
) -> Report {
    let gateway = args.target == "gateway";
    let mut out = Vec::new();
    for ((mut t, acc), spec) in targets.into_iter().zip(accs).zip(specs) {
        let mut rep = finish(acc, args.copies);
        rep.label = spec.label.clone();
        rep.command = t.command.clone();
        rep.pid = t.pid;
        t.stop();
        if rep.points_lost > 0 {
            if let Some(log) = t.log() {
                eprintln!(
                    "{}: points were lost; the target's log is {}",
                    rep.label,
                    log.display()
                );
            }
        }
        out.push(rep);
    }
    let mut report = Report {
        target: args.target.clone(),
        load: format!(
            "{} clients, {}-line batches{}, {} series, {}-byte names, rate {}, {:?} or {} points per round",
            args.clients,
            args.batch_lines,
            if gateway { bodies(args) } else { String::new() },
            args.series,
            args.name_len,
            if args.rate == 0 { "max".to_string() } else { format!("{}/s", args.rate) },
            args.duration,
            args.points
        ),
        targets: out,
        ratios: None,
        reference,
    };
    report.compute_ratios();
    report
}

/// How target A's (and B's) bodies are sent, for the report's load line.
fn bodies(args: &BenchArgs) -> String {
    let one = |enc: &str, https: bool| {
        let level = if enc == "zstd" {
            args.zstd_level
        } else {
            args.gzip_level as i32
        };
        format!(
            "{enc} -{level} over {}",
            if https { "HTTPS" } else { "HTTP" }
        )
    };
    let a = one(&args.encoding, args.https);
    let b = one(
        args.encoding_b.as_deref().unwrap_or(&args.encoding),
        args.https_b.unwrap_or(args.https),
    );
    if args.spawn_b.is_some() || args.addr_b.is_some() {
        format!(" (A: {a}; B: {b})")
    } else {
        format!(" ({a})")
    }
}

/// Entry point of the `polymur-bench` binary.
fn main() -> std::process::ExitCode {
    let args = BenchArgs::parse_from(polymur::config::normalize_args(std::env::args_os()));
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("polymur-bench: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let json = args.json;
    match rt.block_on(run(args)) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("polymur-bench: {e}"),
                }
            } else {
                print!("{}", report.table());
            }
            let lost: u64 = report.targets.iter().map(|t| t.points_lost).sum();
            if lost > 0 {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("polymur-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
