//! polymur (the relay): Graphite plaintext over TCP → router → Graphite destinations.
//!
//! The same pipeline as the gateway with a different source: clients write lines to
//! `-listen-addr`, batches are routed (broadcast or hash-route) into per-destination
//! queues, and a full queue slows the clients down through TCP instead of dropping.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{ArgAction, Parser};

use crate::config::{parse_bytes, parse_duration};
use crate::dest::DestConfig;
use crate::plaintext::{self, PlaintextConfig, PlaintextSource};
use crate::route::hash::HashKind;
use crate::shutdown::{self, Shutdown};

/// Flags of polymur (the relay). Every flag of the Go original keeps its name and
/// default; each is also read from `POLYMUR_<FLAG>`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "polymur",
    version,
    about = "Relays Graphite plaintext metrics from TCP clients to Graphite destinations",
    after_help = "Flags may be written Go-style with one dash (-listen-addr=0.0.0.0:2003, -console-out)."
)]
pub struct RelayArgs {
    /// API listen address ("" disables)
    #[arg(long, env = "POLYMUR_API_ADDR", default_value = "localhost:2030")]
    pub api_addr: String,
    /// Dump output to console instead of the destinations
    #[arg(long, env = "POLYMUR_CONSOLE_OUT", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub console_out: bool,
    /// Comma-delimited list of host:port[:instance] destinations
    #[arg(long, env = "POLYMUR_DESTINATIONS", default_value = "")]
    pub destinations: String,
    /// Destination distribution methods: broadcast, hash-route
    #[arg(long, env = "POLYMUR_DISTRIBUTION", default_value = "broadcast", value_parser = ["broadcast", "hash-route"])]
    pub distribution: String,
    /// In-flight incoming capacity, in units of 100 points (the original's batch size):
    /// points read from clients and not yet queued for the destinations
    #[arg(long, env = "POLYMUR_INCOMING_QUEUE_CAP", default_value_t = 32768)]
    pub incoming_queue_cap: u64,
    /// Polymur listen address
    #[arg(long, env = "POLYMUR_LISTEN_ADDR", default_value = "0.0.0.0:2003")]
    pub listen_addr: String,
    /// Graphite flush interval for runtime metrics in seconds (0 is disabled)
    #[arg(long, env = "POLYMUR_METRICS_FLUSH", default_value_t = 0)]
    pub metrics_flush: u64,
    /// In-flight message queue capacity per destination (number of data points)
    #[arg(long, env = "POLYMUR_OUTGOING_QUEUE_CAP", default_value_t = 4096)]
    pub outgoing_queue_cap: u64,
    /// runstats listen address ("" disables)
    #[arg(long, env = "POLYMUR_STAT_ADDR", default_value = "localhost:2020")]
    pub stat_addr: String,
    /// Admin HTTP address: /metrics, /healthz, /readyz, status page, /api/destinations ("" disables)
    #[arg(long, env = "POLYMUR_ADMIN_ADDR", default_value = "127.0.0.1:2042")]
    pub admin_addr: String,
    /// Log format: text or json
    #[arg(long, env = "POLYMUR_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// File of destinations (`host:port[:instance]` per line, `#` comments), added to
    /// -destinations and re-read on SIGHUP
    #[arg(long, env = "POLYMUR_DESTINATIONS_FILE")]
    pub destinations_file: Option<PathBuf>,

    /// Hash for -distribution hash-route: carbon_ch (graphite-carbon), carbon_ch_c_relay,
    /// fnv1a_ch, jump_fnv1a_ch (carbon-c-relay)
    #[arg(long, env = "POLYMUR_HASH", default_value = "carbon_ch")]
    pub hash: HashKind,
    /// Destinations per metric for hash-route (the next distinct ones on the ring)
    #[arg(long, env = "POLYMUR_REPLICATION_FACTOR", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub replication_factor: u16,
    /// hash-route availability mode: a destination failing 3 reconnects leaves the ring and its
    /// queued lines are re-routed (placement is no longer guaranteed while it is out)
    #[arg(long, env = "POLYMUR_HASH_FAILOVER", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub hash_failover: bool,
    /// Close a client connection that sent nothing for this long (0 never closes)
    #[arg(long, env = "POLYMUR_IDLE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Per-destination disk spool for lines the memory queue cannot hold (survives restarts)
    #[arg(long, env = "POLYMUR_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Spool size limit per destination, bytes or with K/M/G
    #[arg(long, env = "POLYMUR_SPOOL_MAX_BYTES", default_value = "1G", value_parser = parse_bytes)]
    pub spool_max_bytes: u64,
    /// What to do with a batch no queue or spool can hold: refuse (clients are slowed
    /// down until there is room) or drop (counted and logged)
    #[arg(long, env = "POLYMUR_OVERFLOW", default_value = "refuse", value_parser = ["refuse", "drop"])]
    pub overflow: String,
    /// On SIGTERM/SIGINT, how long queues may take to drain to destinations
    #[arg(long, env = "POLYMUR_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Routing dry-run: read lines or metric names on stdin, print `metric<TAB>dest[,dest]`, exit
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub route_test: bool,
    /// Longest line forwarded, in bytes before its newline (after key prefix and tag
    /// normalization): carbon-cache (Twisted's LineReceiver.MAX_LENGTH) closes the connection
    /// on a longer one, so longer lines are dropped and counted (reason too_long)
    #[arg(long, env = "POLYMUR_MAX_LINE_BYTES", default_value_t = crate::line::CARBON_MAX_LINE_BYTES)]
    pub max_line_bytes: usize,
    /// Rewrite Graphite 1.1 tagged names as graphite-carbon 1.1.7 stores them (tags sorted,
    /// `name=` tag and leading `~` dropped, OpenMetrics `m{t="v"}` turned into `m;t=v`) before
    /// routing, so every tag order of a series goes to one carbon-cache under one name; names
    /// carbon's parser rejects are dropped and counted (reason invalid_tags). Off by default,
    /// as carbon's TAG_RELAY_NORMALIZED = False: placement then matches carbon-relay's
    #[arg(long, env = "POLYMUR_TAG_NORMALIZE", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub tag_normalize: bool,
}

impl RelayArgs {
    /// `-max-line-bytes` and `-tag-normalize`, for the batch builder.
    pub fn line_rules(&self) -> crate::line::LineRules {
        crate::line::LineRules {
            max_line_bytes: self.max_line_bytes,
            tag_normalize: self.tag_normalize,
        }
    }
}

/// Runs the relay until SIGINT/SIGTERM, then drains and returns.
pub async fn run(args: RelayArgs) -> anyhow::Result<()> {
    tracing::info!("::: Polymur :::");
    let started = SystemTime::now();
    let destinations =
        crate::daemon::destinations(&args.destinations, args.destinations_file.as_deref())?;
    let make_router = crate::daemon::router_factory(
        &args.distribution,
        args.hash,
        args.replication_factor as usize,
    )?;
    if destinations.is_empty() && !args.console_out {
        tracing::warn!("No -destinations and no -console-out: received points are discarded");
    }

    let (listeners_trigger, listeners_shutdown) = Shutdown::new();
    let (workers_trigger, workers_shutdown) = Shutdown::new();

    let (stats, pipeline, registry) = crate::daemon::routing_core(
        &destinations,
        args.console_out,
        make_router,
        DestConfig {
            queue_cap: args.outgoing_queue_cap.max(1),
            drain_timeout: args.drain_timeout,
            spool_dir: args.spool_dir.clone(),
            spool_max_bytes: args.spool_max_bytes,
            overflow: crate::daemon::overflow(&args.overflow),
            // A TCP client gets no acknowledgement to delay.
            durable: false,
        },
        args.hash_failover && args.distribution == "hash-route",
        workers_shutdown.clone(),
    );

    let source = PlaintextSource::new(
        pipeline.clone(),
        stats.clone(),
        PlaintextConfig {
            idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
            max_inflight_points: args.incoming_queue_cap.max(1).saturating_mul(100),
            rules: args.line_rules(),
        },
    );
    let (listener, local) = plaintext::bind(&args.listen_addr).await?;
    tracing::info!("Listening on {local}");
    let server = tokio::spawn(source.clone().serve(listener, listeners_shutdown.clone()));

    crate::daemon::start_admin(
        &args.api_addr,
        &args.stat_addr,
        Some(registry.clone()),
        started,
        workers_shutdown.clone(),
    )
    .await?;
    crate::daemon::start_admin_http(
        &args.admin_addr,
        crate::admin::http::AdminState {
            service: "polymur",
            started,
            pipeline: pipeline.clone(),
            control: Some(registry.clone()),
            extra: None,
            keys: None,
            listening: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        },
        workers_shutdown.clone(),
    )
    .await;
    let s = source.clone();
    crate::daemon::start_reports(
        &pipeline,
        args.metrics_flush,
        move || (s.waiting_points() as f64, s.max_waiting_points() as f64),
        workers_shutdown.clone(),
    );

    if let Some(file) = args.destinations_file.clone() {
        let (registry, flag) = (registry.clone(), args.destinations.clone());
        crate::daemon::on_hup(workers_shutdown.clone(), move || {
            crate::daemon::reload_destinations(&registry, &flag, &file);
            std::future::ready(())
        });
    }

    shutdown::signal().await;
    tracing::info!("Shutting down: closing the listener, queueing what clients sent");
    listeners_trigger.fire();
    let _ = server.await;
    tracing::info!(
        "Draining destination queues (up to {:?})",
        args.drain_timeout
    );
    workers_trigger.fire();
    for t in registry.take_tasks() {
        let _ = t.await;
    }
    let abandoned: u64 = pipeline
        .destinations()
        .iter()
        .map(|d| d.stats.abandoned.load(Ordering::Relaxed))
        .sum();
    tracing::info!(
        "Stopped: {} points received, {abandoned} undelivered",
        stats.received.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Entry point of the `polymur` binary.
pub fn main() -> std::process::ExitCode {
    let args = RelayArgs::parse_from(crate::config::normalize_args(std::env::args_os()));
    if args.route_test {
        return crate::daemon::route_test(
            "polymur",
            &args.destinations,
            &args.distribution,
            args.hash,
            args.replication_factor as usize,
            args.line_rules(),
        );
    }
    crate::logging::init_with_format(&args.log_format);
    crate::daemon::block_on("polymur", run(args))
}
