//! polymur-proxy: what each remote site runs. Graphite plaintext over TCP → batches
//! of `-flush-size` lines → gzip → `POST <gateway>/ingest` over HTTPS.
//!
//! ```text
//! TCP clients ─► plaintext source ─► Batcher ─► Outbox (memory, then -spool-dir) ─► workers ─► gateway
//!                (backpressure when              (sealed gzip batches)              (retry, 401 pause)
//!                 the outbox is full)
//! ```
//! A batch leaves the outbox only when the gateway acknowledged it (or refused it for
//! good with 400/413, logged); see [`sink`] for the retry policy and [`queue`] for
//! where batches wait.

pub mod admin;
pub mod batcher;
pub mod config;
pub mod queue;
pub mod sink;
pub mod spool;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::Parser;

pub use config::ProxyArgs;

use self::batcher::Batcher;
use self::queue::Outbox;
use self::sink::Gateway;
use self::spool::Spool;
use crate::plaintext::{self, PlaintextConfig, PlaintextSource};
use crate::shutdown::{self, Shutdown};
use crate::stats::Stats;

/// Runs the proxy until SIGINT/SIGTERM, then delivers or spools what it holds and
/// returns. A gateway that refuses the key at start is an error (exit 1).
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    crate::logging::install_tls_provider();
    tracing::info!("::: Polymur-proxy :::");
    let started = SystemTime::now();
    if args.gateway.trim().is_empty() && !args.console_out {
        bail!("-gateway is required (e.g. -gateway=https://gateway.example.com)");
    }
    let base = args.gateway_url();
    let workers = args.workers as usize;
    let timeout = args.request_timeout;
    let client = crate::http_client::reqwest_client(args.cert.as_deref(), |b| {
        b.http1_only()
            .pool_max_idle_per_host(workers)
            .pool_idle_timeout(Duration::from_secs(90))
            .timeout(timeout)
    })
    .context("-cert")?;
    let gateway = Gateway::new(client, base.clone(), args.api_key.clone(), args.verbose);

    if !args.console_out {
        match gateway.ping().await {
            Ok((200, _)) => tracing::info!("Gateway {base} accepts the API key"),
            Ok((status, text)) => {
                bail!("gateway {base} refused the API key: {status} {text}")
            }
            // The old proxy exited here; keeping the site's data flowing into the
            // queue (and spool) is more useful: workers retry until the gateway is up.
            Err(e) => tracing::warn!(
                "Gateway {base} unreachable at start ({e}); batches are queued and retried"
            ),
        }
    }

    let spool = match &args.spool_dir {
        Some(dir) => {
            let s = Spool::open(dir, args.spool_max_bytes)?;
            let (batches, points, bytes) = s.size();
            tracing::info!(
                "Spool {}: {batches} batches ({points} points, {bytes} bytes) waiting to be sent",
                dir.display()
            );
            Some(s)
        }
        None => None,
    };
    let outbox = Arc::new(Outbox::new(args.queue_cap.saturating_mul(100), spool));
    let stats = Arc::new(Stats::default());
    let batcher = Arc::new(Batcher::new(
        args.flush_size as usize,
        outbox.clone(),
        stats.clone(),
        args.console_out,
    ));

    // Shutdown happens in stages, each with its own signal.
    let (listeners_trigger, listeners_shutdown) = Shutdown::new();
    let (drain_trigger, drain_shutdown) = Shutdown::new();
    let (stop_trigger, stop_shutdown) = Shutdown::new();

    let mut worker_tasks = Vec::new();
    if !args.console_out {
        for _ in 0..workers {
            worker_tasks.push(tokio::spawn(gateway.clone().worker(
                outbox.clone(),
                args.max_retry_delay,
                drain_shutdown.clone(),
                stop_shutdown.clone(),
            )));
        }
        let o = outbox.clone();
        tokio::spawn(gateway.clone().watch_key(
            args.key_recheck_interval,
            move || o.mem_points() + o.spool().map_or(0, |s| s.size().1),
            stop_shutdown.clone(),
        ));
    }
    let timer = tokio::spawn(
        batcher
            .clone()
            .run_timer(args.flush_interval, listeners_shutdown.clone()),
    );

    let source = PlaintextSource::new(
        batcher.clone(),
        stats.clone(),
        PlaintextConfig {
            idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
            max_inflight_points: args.queue_cap.max(1).saturating_mul(100),
            // The proxy forwards names as sent: normalizing is the gateway's choice.
            rules: crate::line::LineRules {
                max_line_bytes: args.max_line_bytes,
                tag_normalize: false,
            },
        },
    );
    let (listener, local) = plaintext::bind(&args.listen_addr).await?;
    tracing::info!("Listening on {local}");
    let server = tokio::spawn(source.clone().serve(listener, listeners_shutdown.clone()));
    crate::daemon::start_admin("", &args.stat_addr, None, started, stop_shutdown.clone()).await?;
    // The proxy has no Graphite destinations: the pipeline here only carries the
    // counters of what clients sent, for the shared admin page.
    crate::daemon::start_admin_http(
        &args.admin_addr,
        crate::admin::http::AdminState {
            service: "polymur-proxy",
            started,
            pipeline: Arc::new(crate::pipeline::Pipeline::new(
                crate::pipeline::Topology {
                    dests: Vec::new(),
                    router: Box::new(crate::route::broadcast::Broadcast { destinations: 0 }),
                },
                stats.clone(),
            )),
            control: None,
            extra: Some(Arc::new(admin::ProxyAdmin {
                gateway: gateway.clone(),
                outbox: outbox.clone(),
            })),
            keys: None,
            listening: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        },
        stop_shutdown.clone(),
    )
    .await;
    tokio::spawn(report(
        stats.clone(),
        gateway.clone(),
        outbox.clone(),
        Duration::from_secs(5),
        stop_shutdown.clone(),
    ));
    if args.metrics_flush > 0 {
        let (st, o) = (stats.clone(), outbox.clone());
        let last = std::sync::Mutex::new(0u64);
        tokio::spawn(crate::self_metrics::run(
            Duration::from_secs(args.metrics_flush),
            batcher.clone(),
            move |secs| {
                let received = st.received.load(Ordering::Relaxed);
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                let rate = (received - *last) as f64 / secs;
                *last = received;
                vec![
                    ("rate".to_string(), rate),
                    (
                        "incoming-queue.current-size".to_string(),
                        o.mem_points() as f64,
                    ),
                    ("incoming-queue.limit".to_string(), o.cap() as f64),
                ]
            },
            listeners_shutdown.clone(),
        ));
    }

    shutdown::signal().await;
    tracing::info!("Shutting down: closing the listener, batching what clients sent");
    listeners_trigger.fire();
    let _ = server.await;
    let _ = timer.await;
    batcher.flush_if_due(Duration::ZERO, true).await;
    drain_trigger.fire();
    if !worker_tasks.is_empty() {
        tracing::info!(
            "Sending queued batches to the gateway (up to {:?})",
            args.drain_timeout
        );
        let all = async {
            for t in worker_tasks.iter_mut() {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(args.drain_timeout, all).await;
    }
    stop_trigger.fire();
    for t in worker_tasks {
        // A handle awaited to completion above must not be polled again.
        if !t.is_finished() {
            let _ = t.await;
        }
    }
    let lost = outbox.spill().await;
    let spooled = outbox.spool().map(|s| s.size());
    if lost > 0 {
        tracing::error!("Stopped: {lost} points could not be delivered or spooled and are lost");
    }
    if let Some((batches, points, _)) = spooled {
        tracing::info!(
            "Stopped: {batches} batches ({points} points) left in the spool for the next start"
        );
    }
    tracing::info!(
        "Stopped: {} points received, {} sent",
        stats.received.load(Ordering::Relaxed),
        gateway.stats.sent.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Every `interval`: `Last 5.00s: Received N data points | Avg: X/sec.` when data
/// flowed, and what waits for the gateway when anything does.
async fn report(
    stats: Arc<Stats>,
    gateway: Arc<Gateway>,
    outbox: Arc<Outbox>,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    let mut rate = crate::stats::RateLog::new(stats.received.load(Ordering::Relaxed));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.recv() => return,
        }
        rate.log(stats.received.load(Ordering::Relaxed));
        let mem = outbox.mem_points();
        let spooled = outbox.spool().map_or(0, |s| s.size().1);
        if mem + spooled > 0 {
            tracing::info!(
                "Waiting for the gateway: {mem} points in memory (limit {}), {spooled} in the spool; {} sent so far",
                outbox.cap(),
                gateway.stats.sent.load(Ordering::Relaxed)
            );
        }
    }
}

/// Entry point of the `polymur-proxy` binary.
pub fn main() -> std::process::ExitCode {
    let args = ProxyArgs::parse_from(crate::config::normalize_args(std::env::args_os()));
    crate::logging::init_with_format(&args.log_format);
    crate::daemon::block_on("polymur-proxy", run(args))
}
