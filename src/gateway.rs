//! polymur-gateway: HTTP(S) `/ingest` from polymur-proxy → key check → router →
//! Graphite destinations.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::{ArgAction, Parser};

use crate::admin;
use crate::config::{parse_bytes, parse_duration};
use crate::dest::DestConfig;
use crate::ingest::{self, Ingest, IngestConfig};
use crate::keys::{self, KeyCache, KeyStoreConfig};
use crate::registry::RouterFactory;
use crate::route::hash::HashKind;
use crate::shutdown::{self, Shutdown};

/// Flags of polymur-gateway. Every flag of the Go original keeps its name and
/// default; each is also read from `POLYMUR_GW_<FLAG>`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "polymur-gateway",
    version,
    about = "Receives gzip'ed Graphite batches over HTTP(S) from polymur-proxy and forwards them to Graphite",
    after_help = "Flags may be written Go-style with one dash (-dev-mode, -destinations=a:1,b:2)."
)]
pub struct GatewayArgs {
    /// API listen address ("" disables)
    #[arg(long, env = "POLYMUR_GW_API_ADDR", default_value = "localhost:2030")]
    pub api_addr: String,
    /// TLS Certificate (PEM); HTTPS starts when both -cert and -key are given
    #[arg(long, env = "POLYMUR_GW_CERT")]
    pub cert: Option<PathBuf>,
    /// Dump output to console instead of the destinations
    #[arg(long, env = "POLYMUR_GW_CONSOLE_OUT", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub console_out: bool,
    /// Comma-delimited list of host:port[:instance] destinations
    #[arg(long, env = "POLYMUR_GW_DESTINATIONS", default_value = "")]
    pub destinations: String,
    /// Dev mode: disables the key store; the only key is '123' (name 'dev')
    #[arg(long, env = "POLYMUR_GW_DEV_MODE", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub dev_mode: bool,
    /// Destination distribution methods: broadcast, hash-route
    #[arg(long, env = "POLYMUR_GW_DISTRIBUTION", default_value = "broadcast", value_parser = ["broadcast", "hash-route"])]
    pub distribution: String,
    /// In-flight incoming batch capacity, in units of 100 points (the original's
    /// batch size): bounds points being decoded and routed at once
    #[arg(long, env = "POLYMUR_GW_INCOMING_QUEUE_CAP", default_value_t = 32768)]
    pub incoming_queue_cap: u64,
    /// TLS Key (PEM)
    #[arg(long, env = "POLYMUR_GW_KEY")]
    pub key: Option<PathBuf>,
    /// Prepend every metric with the origin polymur-proxy API key's name
    #[arg(long, env = "POLYMUR_GW_KEY_PREFIX", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub key_prefix: bool,
    /// Polymur-gateway listen address
    #[arg(long, env = "POLYMUR_GW_LISTEN_ADDR", default_value = "0.0.0.0")]
    pub listen_addr: String,
    /// Polymur-gateway listen port (http) [default: 80]
    #[arg(long, env = "POLYMUR_GW_LISTEN_HTTP_PORT")]
    pub listen_http_port: Option<u16>,
    /// Polymur-gateway listen port (https) [default: 443, when -cert and -key are given]
    #[arg(long, env = "POLYMUR_GW_LISTEN_HTTPS_PORT")]
    pub listen_https_port: Option<u16>,
    /// Graphite flush interval for runtime metrics in seconds (0 is disabled)
    #[arg(long, env = "POLYMUR_GW_METRICS_FLUSH", default_value_t = 0)]
    pub metrics_flush: u64,
    /// In-flight message queue capacity per destination (number of data points)
    #[arg(long, env = "POLYMUR_GW_OUTGOING_QUEUE_CAP", default_value_t = 4096)]
    pub outgoing_queue_cap: u64,
    /// runstats listen address ("" disables)
    #[arg(long, env = "POLYMUR_GW_STAT_ADDR", default_value = "localhost:2020")]
    pub stat_addr: String,

    /// API key store: consul, etcd or file (-dev-mode overrides; -keys-file implies file)
    #[arg(long, env = "POLYMUR_GW_KEY_STORE", value_parser = ["consul", "etcd", "file"])]
    pub key_store: Option<String>,
    /// Key file for -key-store file: `<name> <key>` per line, `#` comments; reloaded on change
    #[arg(long, env = "POLYMUR_GW_KEYS_FILE")]
    pub keys_file: Option<PathBuf>,
    /// etcd endpoints for -key-store etcd (comma-separated URLs)
    #[arg(
        long,
        env = "POLYMUR_GW_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: String,
    /// Full key sync interval (seconds or e.g. 30s); changes also apply sooner where the store notifies
    #[arg(long, env = "POLYMUR_GW_KEY_SYNC_INTERVAL", default_value = "30", value_parser = parse_duration)]
    pub key_sync_interval: Duration,
    /// Largest accepted request body (compressed), bytes or with K/M/G
    #[arg(long, env = "POLYMUR_GW_MAX_BODY_BYTES", default_value = "32M", value_parser = parse_bytes)]
    pub max_body_bytes: u64,
    /// Largest accepted batch after decompression, bytes or with K/M/G
    #[arg(long, env = "POLYMUR_GW_MAX_BATCH_BYTES", default_value = "256M", value_parser = parse_bytes)]
    pub max_batch_bytes: u64,
    /// Time allowed to send request headers and body; idle keep-alive connections close after it
    #[arg(long, env = "POLYMUR_GW_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub read_timeout: Duration,
    /// Hash for -distribution hash-route: carbon_ch (graphite-carbon), carbon_ch_c_relay,
    /// fnv1a_ch, jump_fnv1a_ch (carbon-c-relay)
    #[arg(long, env = "POLYMUR_GW_HASH", default_value = "carbon_ch")]
    pub hash: HashKind,
    /// Destinations per metric for hash-route (the next distinct ones on the ring)
    #[arg(long, env = "POLYMUR_GW_REPLICATION_FACTOR", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub replication_factor: u16,
    /// Routing dry-run: read lines or metric names on stdin, print `metric<TAB>dest[,dest]`, exit
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub route_test: bool,
    /// hash-route availability mode: a destination failing 3 reconnects leaves the ring and its
    /// queued lines are re-routed (placement is no longer guaranteed while it is out)
    #[arg(long, env = "POLYMUR_GW_HASH_FAILOVER", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub hash_failover: bool,
    /// Per-destination disk spool for lines the memory queue cannot hold (survives restarts)
    #[arg(long, env = "POLYMUR_GW_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Spool size limit per destination, bytes or with K/M/G
    #[arg(long, env = "POLYMUR_GW_SPOOL_MAX_BYTES", default_value = "1G", value_parser = parse_bytes)]
    pub spool_max_bytes: u64,
    /// What to do with a batch no queue or spool can hold: refuse (503, the proxy retries) or
    /// drop (counted and logged; for mirrors you can afford to lose)
    #[arg(long, env = "POLYMUR_GW_OVERFLOW", default_value = "refuse", value_parser = ["refuse", "drop"])]
    pub overflow: String,
    /// Acknowledge a batch only once it is on disk (fsync, group commit); needs -spool-dir
    #[arg(long, env = "POLYMUR_GW_DURABLE", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub durable: bool,
    /// Admin HTTP address: /metrics, /healthz, /readyz, status page, /api/destinations ("" disables)
    #[arg(long, env = "POLYMUR_GW_ADMIN_ADDR", default_value = "127.0.0.1:2041")]
    pub admin_addr: String,
    /// File of destinations (`host:port[:instance]` per line, `#` comments), added to
    /// -destinations and re-read on SIGHUP
    #[arg(long, env = "POLYMUR_GW_DESTINATIONS_FILE")]
    pub destinations_file: Option<PathBuf>,
    /// Log format: text or json
    #[arg(long, env = "POLYMUR_GW_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// On SIGTERM/SIGINT, how long queues may take to drain to destinations
    #[arg(long, env = "POLYMUR_GW_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Longest line forwarded, in bytes before its newline (after key prefix and tag
    /// normalization): carbon-cache (Twisted's LineReceiver.MAX_LENGTH) closes the connection
    /// on a longer one, so longer lines are dropped and counted (reason too_long)
    #[arg(long, env = "POLYMUR_GW_MAX_LINE_BYTES", default_value_t = crate::line::CARBON_MAX_LINE_BYTES)]
    pub max_line_bytes: usize,
    /// Rewrite Graphite 1.1 tagged names as graphite-carbon 1.1.7 stores them (tags sorted,
    /// `name=` tag and leading `~` dropped, OpenMetrics `m{t="v"}` turned into `m;t=v`) before
    /// routing, so every tag order of a series goes to one carbon-cache under one name; names
    /// carbon's parser rejects are dropped and counted (reason invalid_tags). Off by default,
    /// as carbon's TAG_RELAY_NORMALIZED = False: placement then matches carbon-relay's
    #[arg(long, env = "POLYMUR_GW_TAG_NORMALIZE", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub tag_normalize: bool,
}

impl GatewayArgs {
    /// Which key store the flags select.
    pub fn key_store_config(&self) -> anyhow::Result<KeyStoreConfig> {
        if self.dev_mode {
            return Ok(KeyStoreConfig::Dev);
        }
        let store = self
            .key_store
            .as_deref()
            .unwrap_or(if self.keys_file.is_some() {
                "file"
            } else {
                "consul"
            });
        Ok(match store {
            "file" => KeyStoreConfig::File {
                path: self
                    .keys_file
                    .clone()
                    .context("-key-store file needs -keys-file PATH")?,
            },
            "etcd" => KeyStoreConfig::Etcd {
                endpoints: self
                    .etcd_endpoints
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            },
            _ => KeyStoreConfig::Consul {
                addr: std::env::var("CONSUL_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8500".into()),
                token: std::env::var("CONSUL_HTTP_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
            },
        })
    }

    /// `-max-line-bytes` and `-tag-normalize`, for the batch builder.
    pub fn line_rules(&self) -> crate::line::LineRules {
        crate::line::LineRules {
            max_line_bytes: self.max_line_bytes,
            tag_normalize: self.tag_normalize,
        }
    }

    /// The router factory for `-distribution`.
    pub fn router_factory(&self) -> anyhow::Result<RouterFactory> {
        crate::daemon::router_factory(
            &self.distribution,
            self.hash,
            self.replication_factor as usize,
        )
    }
}

/// `host:port` for a listen address, bracketing IPv6 literals.
fn listen_on(addr: &str, port: u16) -> String {
    if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// SIGHUP part for HTTPS: re-reads the certificate and key. New connections use
/// the new pair; a pair that does not load keeps the old one and says why.
fn reload_tls(slot: &ingest::TlsSlot, cert: &std::path::Path, key: &std::path::Path) {
    match ingest::tls::acceptor(cert, key) {
        Ok(a) => {
            slot.store(Arc::new(a));
            tracing::info!("SIGHUP: TLS certificate reloaded from {}", cert.display());
        }
        Err(e) => tracing::error!("SIGHUP: keeping the current TLS certificate: {e}"),
    }
}

/// Runs the gateway until SIGINT/SIGTERM, then drains and returns.
pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    crate::logging::install_tls_provider();
    tracing::info!("::: Polymur-gateway :::");
    let started = SystemTime::now();
    let destinations =
        crate::daemon::destinations(&args.destinations, args.destinations_file.as_deref())?;
    let make_router = args.router_factory()?;
    let tls = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => Some(ingest::tls::acceptor(c, k)?),
        (None, None) => None,
        _ => bail!("HTTPS needs both -cert and -key"),
    };
    if tls.is_none() && args.listen_https_port.is_some() {
        tracing::warn!("-listen-https-port is ignored: HTTPS starts only with both -cert and -key");
    }
    if args.durable && args.spool_dir.is_none() {
        bail!("-durable needs -spool-dir (acknowledged batches are made durable there)");
    }
    if destinations.is_empty() && !args.console_out {
        tracing::warn!("No -destinations and no -console-out: accepted points are discarded");
    }

    let (listeners_trigger, listeners_shutdown) = Shutdown::new();
    let (workers_trigger, workers_shutdown) = Shutdown::new();

    // Keys: one sync before listening, so valid proxies are not refused at start.
    let store = keys::open(&args.key_store_config()?)?;
    let key_store_desc = store.describe();
    tracing::info!("API key store: {key_store_desc}");
    let cache = Arc::new(KeyCache::new());
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        keys::sync::sync_once(store.as_ref(), &cache),
    )
    .await;
    tokio::spawn(keys::sync::run(
        store.clone(),
        cache.clone(),
        args.key_sync_interval,
        workers_shutdown.clone(),
    ));

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
            durable: args.durable,
        },
        args.hash_failover && args.distribution == "hash-route",
        workers_shutdown.clone(),
    );

    let state = Arc::new(Ingest {
        config: IngestConfig {
            max_body_bytes: args.max_body_bytes as usize,
            max_batch_bytes: args.max_batch_bytes as usize,
            key_prefix: args.key_prefix,
            read_timeout: args.read_timeout,
            rules: args.line_rules(),
        },
        keys: cache,
        pipeline: pipeline.clone(),
        decode_budget: ingest::DecodeBudget::from_incoming_queue_cap(args.incoming_queue_cap),
    });
    let mut servers = Vec::new();
    let http_addr = listen_on(&args.listen_addr, args.listen_http_port.unwrap_or(80));
    let (l, local) = ingest::bind(&http_addr).await?;
    tracing::info!("HTTP listening on {local}");
    servers.push(tokio::spawn(ingest::serve(
        l,
        None,
        state.clone(),
        listeners_shutdown.clone(),
    )));
    let mut tls_slot: Option<ingest::TlsSlot> = None;
    if let Some(tls) = tls {
        let https_addr = listen_on(&args.listen_addr, args.listen_https_port.unwrap_or(443));
        let (l, local) = ingest::bind(&https_addr).await?;
        tracing::info!("HTTPS listening on {local}");
        let slot: ingest::TlsSlot = Arc::new(arc_swap::ArcSwap::from_pointee(tls));
        servers.push(tokio::spawn(ingest::serve(
            l,
            Some(slot.clone()),
            state.clone(),
            listeners_shutdown.clone(),
        )));
        tls_slot = Some(slot);
    }
    {
        // SIGHUP: certificate, keys and destinations file, each kept as it was when
        // its new version does not load.
        let (tls_slot, cert, key) = (tls_slot.clone(), args.cert.clone(), args.key.clone());
        let (store, cache, registry) = (store.clone(), state.keys.clone(), registry.clone());
        let (flag, file) = (args.destinations.clone(), args.destinations_file.clone());
        crate::daemon::on_hup(workers_shutdown.clone(), move || {
            if let (Some(slot), Some(cert), Some(key)) = (&tls_slot, &cert, &key) {
                reload_tls(slot, cert, key);
            }
            if let Some(file) = &file {
                crate::daemon::reload_destinations(&registry, &flag, file);
            }
            let (store, cache) = (store.clone(), cache.clone());
            async move {
                keys::sync::sync_once(store.as_ref(), &cache).await;
            }
        });
    }
    crate::daemon::start_admin(
        &args.api_addr,
        &args.stat_addr,
        Some(registry.clone()),
        started,
        workers_shutdown.clone(),
    )
    .await?;
    // The incoming side is the decode budget: KiB of batches being decoded and
    // routed, reported in the original's unit (points, at 64 bytes a point).
    let st = state.clone();
    crate::daemon::start_reports(
        &pipeline,
        args.metrics_flush,
        move || {
            let b = &st.decode_budget;
            ((b.in_use_kib() * 16) as f64, (b.total_kib() * 16) as f64)
        },
        workers_shutdown.clone(),
    );
    crate::daemon::start_admin_http(
        &args.admin_addr,
        admin::http::AdminState {
            service: "polymur-gateway",
            started,
            pipeline: pipeline.clone(),
            control: Some(registry.clone()),
            extra: None,
            keys: Some((state.keys.clone(), key_store_desc.clone())),
            listening: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        },
        workers_shutdown.clone(),
    )
    .await;

    shutdown::signal().await;
    tracing::info!("Shutting down: closing listeners, finishing in-flight requests");
    listeners_trigger.fire();
    for s in servers {
        let _ = s.await;
    }
    tracing::info!(
        "Draining destination queues (up to {:?})",
        args.drain_timeout
    );
    workers_trigger.fire();
    drop(state);
    for t in registry.take_tasks() {
        let _ = t.await;
    }
    let abandoned: u64 = pipeline
        .destinations()
        .iter()
        .map(|d| d.stats.abandoned.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    tracing::info!(
        "Stopped: {} points received, {abandoned} undelivered",
        stats.received.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}

/// Entry point of the `polymur-gateway` binary.
pub fn main() -> std::process::ExitCode {
    let args = GatewayArgs::parse_from(crate::config::normalize_args(std::env::args_os()));
    if args.route_test {
        return crate::daemon::route_test(
            "polymur-gateway",
            &args.destinations,
            &args.distribution,
            args.hash,
            args.replication_factor as usize,
            args.line_rules(),
        );
    }
    crate::logging::init_with_format(&args.log_format);
    crate::daemon::block_on("polymur-gateway", run(args))
}
