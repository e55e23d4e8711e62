//! polymur-proxy: what each remote site runs. Graphite plaintext over TCP → batches
//! of `-flush-size` lines → gzip → `POST <gateway>/ingest` over HTTPS.
//!
//! ```text
//! TCP clients ─► plaintext source ─► Batcher ─► Destination "gateway" ─────────► gateway
//!                (backpressure when  (seals      (memory queue of sealed batches,  (writer: -workers
//!                 it has no room)     for memory) then -spool-dir of plain lines)   POSTs, retry)
//! ```
//! The proxy's sink is a [`crate::dest::Destination`] like the relay's and the gateway's,
//! with its own writer kind ([`writer`]): one queue, one spool format, one set of recovery
//! rules. A batch leaves it only when the gateway acknowledged it (or refused it for good
//! with 400/413, logged); see [`sink`] for the retry policy. An old spool directory (one
//! file per batch) is moved into the new one at start ([`migrate`]).

pub mod admin;
pub mod batcher;
pub mod compression;
pub mod config;
pub mod migrate;
pub mod sink;
pub mod writer;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use config::ProxyConfig;

use self::batcher::Batcher;
use self::sink::Gateway;
use self::writer::GatewayWriter;
use crate::daemon::{operator, DaemonError, Listeners};
use crate::dest::{DestConfig, Destination, Overflow, SinkKind};
use crate::plaintext::{PlaintextConfig, PlaintextSource};
use crate::shutdown::Shutdown;
use crate::stats::Stats;

/// Runs the proxy until SIGINT/SIGTERM, then delivers or spools what it holds and
/// returns. A gateway that refuses the key at start is an error (exit 1).
pub async fn run(config: ProxyConfig) -> Result<(), DaemonError> {
    crate::logging::install_tls_provider();
    tracing::info!("::: Polymur-proxy :::");
    let started = SystemTime::now();
    let gateway = connect(&config).await?;
    migrate_spool(&config).await?;
    // The destination's shutdown fires after the listener closed and the batcher sealed
    // its last batch; `stop` ends everything else once the destination has drained.
    let (dest_trigger, dest_shutdown) = Shutdown::new();
    let (stop_trigger, stop) = Shutdown::new();
    let (dest, dest_task) = open_destination(&config, &gateway, dest_shutdown);
    if let Some(e) = dest.spool_error() {
        return Err(DaemonError::config(format!("-spool-dir: {e}")));
    }
    let stats = Arc::new(Stats::default());
    let batcher = Batcher::new(config.flush_size as usize, dest.clone(), stats.clone());
    let batcher = Arc::new(match config.console_out {
        true => batcher,
        false => batcher.sealing(gateway.compressor()),
    });
    if !config.console_out {
        let d = dest.clone();
        tokio::spawn(gateway.clone().watch_key(
            config.key_recheck_interval,
            move || d.queued(),
            stop.clone(),
        ));
    }

    let source = PlaintextSource::new(
        batcher.clone(),
        stats.clone(),
        PlaintextConfig {
            idle_timeout: (!config.idle_timeout.is_zero()).then_some(config.idle_timeout),
            max_inflight_points: config.queue_cap.max(1).saturating_mul(100),
            // The proxy forwards names as sent: normalizing is the gateway's choice.
            rules: crate::line::LineRules {
                max_line_bytes: config.max_line_bytes,
                tag_normalize: false,
            },
        },
    );
    let (mut listeners, tls) =
        crate::daemon::plaintext_listen::listen(&source, &config.listen_addr, &config.listen_tls)
            .await?;
    let closing = listeners.shutdown();
    let reloads_tls = tls.is_some();
    crate::ingest::tls::reload_on_hup(tls.into_iter().collect(), closing.clone());
    listeners.spawn(
        batcher
            .clone()
            .run_timer(config.flush_interval, closing.clone()),
    );
    // SIGHUP must not end the proxy (its default action would): `systemctl reload`.
    if !reloads_tls {
        crate::signals::on_hup(stop.clone(), || async {
            tracing::info!("SIGHUP: the proxy has nothing to reload");
        });
    }
    listeners.ready();
    let parts = Parts {
        stats,
        gateway,
        dest,
        batcher,
    };
    observe(&config, started, &parts, &listeners, stop).await?;

    crate::shutdown::signal().await;
    // systemd shows the unit as deactivating while the queues drain.
    crate::notify::stopping();
    tracing::info!("Shutting down: closing the listener, batching what clients sent");
    listeners.close().await;
    parts.batcher.flush_if_due(Duration::ZERO, true).await;
    parts.batcher.sealed().await;
    if !config.console_out {
        tracing::info!(
            "Sending queued batches to the gateway (up to {:?})",
            config.drain_timeout
        );
    }
    dest_trigger.fire();
    let _ = dest_task.await;
    stop_trigger.fire();
    parts.log_stopped();
    Ok(())
}

/// What the proxy's observers and its shutdown look at.
struct Parts {
    stats: Arc<Stats>,
    gateway: Arc<Gateway>,
    /// The proxy's one destination: the gateway writer, or the console.
    dest: Arc<Destination>,
    batcher: Arc<Batcher>,
}

impl Parts {
    /// What was received and sent (the writer said what is left in the spool).
    fn log_stopped(&self) {
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
    let tls = crate::http_client::tls_config_with(config.cert.as_deref(), identity)?;
    let client = crate::http_client::reqwest_client_on(tls.clone(), |b| {
        b.http1_only()
            .pool_max_idle_per_host(workers)
            .pool_idle_timeout(Duration::from_secs(90))
            .timeout(timeout)
    })?;
    let compressor = Arc::new(compression::Compressor::new(
        config.compression,
        config.compression_level,
    ));
    let gateway = Gateway::with_tls(
        client,
        Arc::new(tls),
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
                gateway.describe(&e).await
            ),
        }
    }
    Ok(gateway)
}

/// `-spool-dir` written by an older proxy (one file per batch): moved into the
/// destination's spool once, before anything new is admitted.
async fn migrate_spool(config: &ProxyConfig) -> Result<(), DaemonError> {
    let Some(dir) = config.spool_dir.clone() else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || migrate::old_spool(&dir, writer::NAME))
        .await
        .map_err(|e| DaemonError::config(format!("-spool-dir migration failed: {e}")))?
        .map_err(|e| {
            DaemonError::config(format!(
                "-spool-dir: moving the old spool files failed: {e} (the files not moved are \
                 kept; fix the cause and start again)"
            ))
        })?;
    Ok(())
}

/// The proxy's one destination: the gateway writer (or the console with -console-out),
/// with `-queue-cap` × 100 points in memory and `-spool-dir` behind it.
fn open_destination(
    config: &ProxyConfig,
    gateway: &Arc<Gateway>,
    shutdown: Shutdown,
) -> (Arc<Destination>, tokio::task::JoinHandle<()>) {
    let kind = if config.console_out {
        SinkKind::Console
    } else {
        SinkKind::Writer(Arc::new(GatewayWriter {
            gateway: gateway.clone(),
            workers: config.workers as usize,
            max_retry_delay: config.max_retry_delay,
        }))
    };
    let dest_config = DestConfig {
        queue_cap: config.queue_cap.saturating_mul(100).max(1),
        drain_timeout: config.drain_timeout,
        spool_dir: config.spool_dir.clone(),
        spool_max_bytes: config.spool_max_bytes,
        overflow: Overflow::Refuse,
        durable: false,
        replay_rate: None,
        tls: None,
        tls_all: false,
    };
    Destination::spawn(kind, &dest_config, shutdown)
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
                dest: parts.dest.clone(),
            })),
            http: None,
            keys: None,
            listening: listeners.listening(),
        },
        stop.clone(),
    )
    .await?;
    tokio::spawn(report(
        parts.stats.clone(),
        parts.gateway.clone(),
        parts.dest.clone(),
        Duration::from_secs(5),
        stop,
    ));
    if config.common.metrics_flush > 0 {
        tokio::spawn(crate::self_metrics::run(
            Duration::from_secs(config.common.metrics_flush),
            parts.batcher.clone(),
            self_metrics(&parts.stats, &parts.dest),
            listeners.shutdown(),
        ));
    }
    Ok(())
}

/// The proxy's self-metrics: the original's rate and incoming-queue figures.
fn self_metrics(
    stats: &Arc<Stats>,
    dest: &Arc<Destination>,
) -> impl Fn(f64) -> Vec<(String, f64)> + Send + 'static {
    let (st, o) = (stats.clone(), dest.clone());
    let last = std::sync::Mutex::new(0u64);
    move |secs| {
        let received = st.received.load(Ordering::Relaxed);
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        let rate = (received - *last) as f64 / secs;
        *last = received;
        vec![
            ("rate".to_string(), rate),
            ("incoming-queue.current-size".to_string(), o.queued() as f64),
            ("incoming-queue.limit".to_string(), o.cap() as f64),
        ]
    }
}

/// Every `interval`: `Last 5.00s: Received N data points | Avg: X/sec.` when data
/// flowed, and what waits for the gateway when anything does.
async fn report(
    stats: Arc<Stats>,
    gateway: Arc<Gateway>,
    dest: Arc<Destination>,
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
        let mem = dest.queued();
        let spooled = dest.spool().map_or(0, |s| s.backlog());
        if mem + spooled > 0 {
            tracing::info!(
                "Waiting for the gateway: {mem} points in memory (limit {}), {spooled} bytes in the spool; {} sent so far",
                dest.cap(),
                gateway.stats.sent.load(Ordering::Relaxed)
            );
        }
    }
}
