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
pub mod compression;
pub mod config;
pub mod queue;
pub mod sink;
pub mod spool;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use config::ProxyConfig;

use self::batcher::Batcher;
use self::queue::Outbox;
use self::sink::Gateway;
use self::spool::Spool;
use crate::daemon::{operator, DaemonError, Listeners};
use crate::plaintext::{PlaintextConfig, PlaintextSource};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::stats::Stats;

/// Runs the proxy until SIGINT/SIGTERM, then delivers or spools what it holds and
/// returns. A gateway that refuses the key at start is an error (exit 1).
pub async fn run(config: ProxyConfig) -> Result<(), DaemonError> {
    crate::logging::install_tls_provider();
    tracing::info!("::: Polymur-proxy :::");
    let started = SystemTime::now();
    let gateway = connect(&config).await?;
    let outbox = Arc::new(Outbox::new(
        config.queue_cap.saturating_mul(100),
        open_spool(&config)?,
    ));
    let stats = Arc::new(Stats::default());
    let batcher = Arc::new(
        Batcher::new(
            config.flush_size as usize,
            outbox.clone(),
            stats.clone(),
            config.console_out,
        )
        .compress_with(gateway.compressor()),
    );
    // After the listeners close: `drain` lets the workers finish the outbox, `stop`
    // ends them (and everything else) once -drain-timeout is spent.
    let (drain_trigger, drain) = Shutdown::new();
    let (stop_trigger, stop) = Shutdown::new();
    let workers = start_workers(&config, &gateway, &outbox, &drain, &stop);

    let mut listeners = Listeners::default();
    let source = PlaintextSource::new(
        batcher.clone(),
        stats.clone(),
        PlaintextConfig {
            idle_timeout: (!config.idle_timeout.is_zero()).then_some(config.idle_timeout),
            max_inflight_points: config.queue_cap.max(1).saturating_mul(100),
        },
    );
    let tls = crate::plaintext::listen::listen(
        &source,
        &config.listen_addr,
        &config.listen_tls,
        &mut listeners,
    )
    .await?;
    let closing = listeners.shutdown();
    crate::ingest::tls::reload_on_hup(tls.into_iter().collect(), closing.clone());
    listeners.spawn(
        batcher
            .clone()
            .run_timer(config.flush_interval, closing.clone()),
    );
    listeners.ready();
    let parts = Parts {
        stats,
        gateway,
        outbox,
        batcher,
    };
    observe(&config, started, &parts, &listeners, stop).await?;

    crate::shutdown::signal().await;
    tracing::info!("Shutting down: closing the listener, batching what clients sent");
    listeners.close().await;
    parts.batcher.flush_if_due(Duration::ZERO, true).await;
    deliver(config.drain_timeout, workers, drain_trigger, stop_trigger).await;
    parts.log_stopped().await;
    Ok(())
}

/// What the proxy's observers and its shutdown look at.
struct Parts {
    stats: Arc<Stats>,
    gateway: Arc<Gateway>,
    outbox: Arc<Outbox>,
    batcher: Arc<Batcher>,
}

impl Parts {
    /// Spills what is still in memory to the spool and logs what is left where.
    async fn log_stopped(&self) {
        let lost = self.outbox.spill().await;
        let spooled = self.outbox.spool().map(|s| s.size());
        if lost > 0 {
            tracing::error!(
                "Stopped: {lost} points could not be delivered or spooled and are lost"
            );
        }
        if let Some((batches, points, _)) = spooled {
            tracing::info!(
                "Stopped: {batches} batches ({points} points) left in the spool for the next start"
            );
        }
        tracing::info!(
            "Stopped: {} points received, {} sent",
            self.stats.received.load(Ordering::Relaxed),
            self.gateway.stats.sent.load(Ordering::Relaxed)
        );
    }
}

/// The gateway client; unless -console-out, pings the gateway once: a refused key
/// stops the proxy, an unreachable gateway does not.
async fn connect(config: &ProxyConfig) -> Result<Arc<Gateway>, DaemonError> {
    if config.gateway.trim().is_empty() && !config.console_out {
        return Err(DaemonError::config(
            "-gateway is required (e.g. -gateway=https://gateway.example.com)",
        ));
    }
    let base = config.gateway_url();
    let workers = config.workers as usize;
    let timeout = config.request_timeout;
    let identity = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => Some(crate::http_client::Identity { cert, key }),
        _ => None,
    };
    let client = crate::http_client::reqwest_client_with(config.cert.as_deref(), identity, |b| {
        b.http1_only()
            .pool_max_idle_per_host(workers)
            .pool_idle_timeout(Duration::from_secs(90))
            .timeout(timeout)
    })?;
    let compressor = Arc::new(compression::Compressor::new(
        config.compression,
        config.compression_level,
    ));
    let gateway = Gateway::with_compressor(
        client,
        base.clone(),
        config.api_key.clone(),
        config.verbose,
        compressor,
    );
    if !config.console_out {
        match gateway.ping().await {
            Ok((200, _)) => tracing::info!("Gateway {base} accepts the API key"),
            Ok((status, text)) => {
                return Err(DaemonError::config(format!(
                    "gateway {base} refused the API key: {status} {text}"
                )))
            }
            // The old proxy exited here; keeping the site's data flowing into the
            // queue (and spool) is more useful: workers retry until the gateway is up.
            Err(e) => tracing::warn!(
                "Gateway {base} unreachable at start ({}); batches are queued and retried",
                crate::http_client::describe(&e)
            ),
        }
    }
    Ok(gateway)
}

/// `-spool-dir`: opens the spool and says what waits in it from the last run.
fn open_spool(config: &ProxyConfig) -> Result<Option<Spool>, DaemonError> {
    let Some(dir) = &config.spool_dir else {
        return Ok(None);
    };
    let s = Spool::open(dir, config.spool_max_bytes)?;
    let (batches, points, bytes) = s.size();
    tracing::info!(
        "Spool {}: {batches} batches ({points} points, {bytes} bytes) waiting to be sent",
        dir.display()
    );
    Ok(Some(s))
}

/// The `-workers` senders and the key re-check (none with -console-out).
fn start_workers(
    config: &ProxyConfig,
    gateway: &Arc<Gateway>,
    outbox: &Arc<Outbox>,
    drain: &Shutdown,
    stop: &Shutdown,
) -> Vec<tokio::task::JoinHandle<()>> {
    if config.console_out {
        return Vec::new();
    }
    let workers = (0..config.workers)
        .map(|_| {
            tokio::spawn(gateway.clone().worker(
                outbox.clone(),
                config.max_retry_delay,
                drain.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let o = outbox.clone();
    tokio::spawn(gateway.clone().watch_key(
        config.key_recheck_interval,
        move || o.mem_points() + o.spool().map_or(0, |s| s.size().1),
        stop.clone(),
    ));
    workers
}

/// Runstats, the admin endpoint, the 5-second report and the self-metrics.
async fn observe(
    config: &ProxyConfig,
    started: SystemTime,
    parts: &Parts,
    listeners: &Listeners,
    stop: Shutdown,
) -> Result<(), DaemonError> {
    operator::start_lines("", &config.common.stat_addr, None, started, stop.clone()).await?;
    operator::start_http(
        &config.admin_addr,
        crate::admin::http::AdminState {
            service: "polymur-proxy",
            started,
            stats: parts.stats.clone(),
            // No Graphite destinations: the gateway side is the `extra` part.
            pipeline: None,
            control: None,
            extra: Some(Arc::new(admin::ProxyAdmin {
                gateway: parts.gateway.clone(),
                outbox: parts.outbox.clone(),
            })),
            http: None,
            keys: None,
            listening: listeners.listening(),
        },
        stop.clone(),
    )
    .await;
    tokio::spawn(report(
        parts.stats.clone(),
        parts.gateway.clone(),
        parts.outbox.clone(),
        Duration::from_secs(5),
        stop,
    ));
    if config.common.metrics_flush > 0 {
        tokio::spawn(crate::self_metrics::run(
            Duration::from_secs(config.common.metrics_flush),
            parts.batcher.clone(),
            self_metrics(&parts.stats, &parts.outbox),
            listeners.shutdown(),
        ));
    }
    Ok(())
}

/// The proxy's self-metrics: the original's rate and incoming-queue figures.
fn self_metrics(
    stats: &Arc<Stats>,
    outbox: &Arc<Outbox>,
) -> impl Fn(f64) -> Vec<(String, f64)> + Send + 'static {
    let (st, o) = (stats.clone(), outbox.clone());
    let last = std::sync::Mutex::new(0u64);
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
    }
}

/// Second and third stages: the workers send what the outbox holds for up to
/// `drain_timeout`, then stop (what they did not send stays in the outbox).
async fn deliver(
    drain_timeout: Duration,
    mut workers: Vec<tokio::task::JoinHandle<()>>,
    drain: ShutdownTrigger,
    stop: ShutdownTrigger,
) {
    drain.fire();
    if !workers.is_empty() {
        tracing::info!("Sending queued batches to the gateway (up to {drain_timeout:?})");
        let all = async {
            for t in workers.iter_mut() {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(drain_timeout, all).await;
    }
    stop.fire();
    for t in workers {
        // A handle awaited to completion above must not be polled again.
        if !t.is_finished() {
            let _ = t.await;
        }
    }
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
