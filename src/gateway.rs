//! polymur-gateway: HTTP(S) `/ingest` from polymur-proxy → key check → router →
//! Graphite destinations. The daemon layer ([`crate::daemon`]) does the rest; this
//! file holds what only the gateway has: its flags, TLS, the key store and the
//! HTTP(S) listeners.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, ValueEnum};

use crate::config::{parse_bytes, parse_duration, CommonFlags, PipelineFlags};
use crate::daemon::{DaemonError, Listeners, Reload, RoutingDaemon, Source};
use crate::ingest::{self, Ingest, IngestConfig};
use crate::keys::{self, KeyCache, KeyStore, KeyStoreConfig};
use crate::net;
use crate::tenants::{self, Tenants, TenantsConfig};

/// `-key-store`: where API keys live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyStoreKind {
    // Consul KV (agent from CONSUL_HTTP_ADDR, token from CONSUL_HTTP_TOKEN).
    Consul,
    // etcd v3 (`-etcd-endpoints`).
    Etcd,
    // A local file (`-keys-file`).
    File,
}

/// Flags of polymur-gateway. Every flag of the Go original keeps its name and
/// default; each is also read from `POLYMUR_GW_<FLAG>` (see [`crate::config::parse`]).
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayConfig {
    /// Flags every daemon has.
    #[command(flatten)]
    pub common: CommonFlags,
    /// Destinations, routing, queues and spool.
    #[command(flatten)]
    pub pipeline: PipelineFlags,
    /// TLS Certificate (PEM); HTTPS starts when both -cert and -key are given
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Dev mode: disables the key store; the only key is '123' (name 'dev')
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub dev_mode: bool,
    /// TLS Key (PEM)
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// HTTPS requires a client certificate signed by this CA (PEM); the API key is still required
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
    /// Prepend every metric with the origin polymur-proxy API key's name
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub key_prefix: bool,
    /// Polymur-gateway listen address
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_addr: String,
    /// Polymur-gateway listen port (http) [default: 80]
    #[arg(long)]
    pub listen_http_port: Option<u16>,
    /// Polymur-gateway listen port (https) [default: 443, when -cert and -key are given]
    #[arg(long)]
    pub listen_https_port: Option<u16>,
    /// API key store: consul, etcd or file (-dev-mode overrides; -keys-file implies file)
    #[arg(long, value_enum)]
    pub key_store: Option<KeyStoreKind>,
    /// Key file for -key-store file: `<name> <key>` per line, `#` comments; reloaded on change
    #[arg(long)]
    pub keys_file: Option<PathBuf>,
    /// Per-key limits: `<name> points-per-second=N burst=N batches-per-second=N series-per-minute=N weight=N allow=<prefix>,...` per line, `*` sets the defaults; reloaded on change and SIGHUP (Consul/etcd: JSON under polymur/gateway/tenants/<name>)
    #[arg(long)]
    pub tenants_file: Option<PathBuf>,
    /// etcd endpoints for -key-store etcd (comma-separated URLs)
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: String,
    /// Full key sync interval (seconds or e.g. 30s); changes also apply sooner where the store notifies
    #[arg(long, default_value = "30", value_parser = parse_duration)]
    pub key_sync_interval: Duration,
    /// Largest accepted request body (compressed), bytes or with K/M/G
    #[arg(long, default_value = "32M", value_parser = parse_bytes)]
    pub max_body_bytes: u64,
    /// Largest accepted batch after decompression, bytes or with K/M/G
    #[arg(long, default_value = "256M", value_parser = parse_bytes)]
    pub max_batch_bytes: u64,
    /// Time allowed to send request headers and body; idle keep-alive connections close after it
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub read_timeout: Duration,
    /// Acknowledge a batch only once it is on disk (fsync, group commit); needs -spool-dir
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", value_parser = crate::go_bool!())]
    pub durable: bool,
    /// Admin HTTP address: /metrics, /healthz, /readyz, status page, /api/destinations ("" disables)
    #[arg(long, default_value = "127.0.0.1:2041")]
    pub admin_addr: String,
}

impl crate::daemon::DaemonFlags for GatewayConfig {
    fn flags(&self) -> (&CommonFlags, Option<&crate::config::PipelineFlags>) {
        (&self.common, Some(&self.pipeline))
    }
}

impl GatewayConfig {
    /// Which key store the flags select.
    pub fn key_store_config(&self) -> Result<KeyStoreConfig, DaemonError> {
        if self.dev_mode {
            return Ok(KeyStoreConfig::Dev);
        }
        let default = if self.keys_file.is_some() {
            KeyStoreKind::File
        } else {
            KeyStoreKind::Consul
        };
        Ok(match self.key_store.unwrap_or(default) {
            KeyStoreKind::File => KeyStoreConfig::File {
                path: self
                    .keys_file
                    .clone()
                    .ok_or_else(|| DaemonError::config("-key-store file needs -keys-file PATH"))?,
            },
            KeyStoreKind::Etcd => KeyStoreConfig::Etcd {
                endpoints: self
                    .etcd_endpoints
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            },
            KeyStoreKind::Consul => KeyStoreConfig::Consul {
                addr: std::env::var("CONSUL_HTTP_ADDR").unwrap_or_else(|_| "127.0.0.1:8500".into()),
                token: std::env::var("CONSUL_HTTP_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
            },
        })
    }

    /// The HTTPS acceptor, when both -cert and -key are given.
    fn tls(&self) -> Result<Option<ingest::tls::Reloadable>, DaemonError> {
        let tls = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some(
                ingest::tls::ServerTls {
                    cert: c.clone(),
                    key: k.clone(),
                    client_ca: self.client_ca.clone(),
                }
                .load()?,
            ),
            (None, None) => None,
            _ => return Err(DaemonError::config("HTTPS needs both -cert and -key")),
        };
        if tls.is_none() && self.client_ca.is_some() {
            return Err(DaemonError::config(
                "-client-ca needs HTTPS (-cert and -key): client certificates are checked in the TLS handshake",
            ));
        }
        if tls.is_none() && self.listen_https_port.is_some() {
            tracing::warn!(
                "-listen-https-port is ignored: HTTPS starts only with both -cert and -key"
            );
        }
        Ok(tls)
    }
}

/// Opens the key store and syncs it once before listening, so valid proxies are not
/// refused at start (an unreachable store gets 10 seconds, then the sync loop retries).
async fn open_keys(
    config: &GatewayConfig,
) -> Result<(Arc<dyn KeyStore>, Arc<KeyCache>), DaemonError> {
    let store = keys::open(&config.key_store_config()?)?;
    tracing::info!("API key store: {}", store.describe());
    let cache = Arc::new(KeyCache::new());
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        keys::sync::sync_once(store.as_ref(), &cache),
    )
    .await;
    Ok((store, cache))
}

/// Loads the tenants' limits (`-tenants-file`, and the documents of a Consul or etcd key
/// store) and keeps them followed. A tenants file that does not load stops the start,
/// like any bad flag; later, a bad version keeps the limits in force.
async fn open_tenants(
    config: &GatewayConfig,
    daemon: &RoutingDaemon,
) -> Result<Arc<Tenants>, DaemonError> {
    let tenants = Arc::new(Tenants::new());
    if let Some(path) = &config.tenants_file {
        let file = TenantsConfig::load(path).map_err(|e| DaemonError::config(e.to_string()))?;
        tracing::info!(
            "Tenant limits loaded from {}: {} entries",
            path.display(),
            file.by_name.len()
        );
        tenants.set_file(file);
        tokio::spawn(tenants::store::watch_file(
            path.clone(),
            tenants.clone(),
            daemon.workers_shutdown(),
        ));
    }
    if let Some(store) = keys::open_layout(&config.key_store_config()?, tenants::store::LAYOUT)? {
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            tenants::store::sync_store_once(store.as_ref(), &tenants),
        )
        .await;
        tokio::spawn(keys::sync::run(
            store,
            tenants.clone(),
            config.key_sync_interval,
            daemon.workers_shutdown(),
        ));
    }
    Ok(tenants)
}

/// Runs the gateway until SIGINT/SIGTERM, then drains and returns.
pub async fn run(config: GatewayConfig) -> Result<(), DaemonError> {
    crate::logging::install_tls_provider();
    tracing::info!("::: Polymur-gateway :::");
    let tls = config.tls()?;
    if config.durable && config.pipeline.spool_dir.is_none() {
        return Err(DaemonError::config(
            "-durable needs -spool-dir (acknowledged batches are made durable there)",
        ));
    }
    let (store, cache) = open_keys(&config).await?;
    let daemon = RoutingDaemon::start(
        "polymur-gateway",
        config.common.clone(),
        config.pipeline.clone(),
        config.admin_addr.clone(),
        config.durable,
    )?;
    tokio::spawn(keys::sync::run(
        store.clone(),
        cache.clone(),
        config.key_sync_interval,
        daemon.workers_shutdown(),
    ));
    let tenants = open_tenants(&config, &daemon).await?;
    let state = Arc::new(Ingest {
        config: IngestConfig {
            max_body_bytes: config.max_body_bytes as usize,
            max_batch_bytes: config.max_batch_bytes as usize,
            key_prefix: config.key_prefix,
            read_timeout: config.read_timeout,
            rules: config.pipeline.line_rules(),
        },
        keys: cache,
        pipeline: daemon.pipeline.clone(),
        http: Arc::default(),
        decode_budget: ingest::DecodeBudget::from_incoming_queue_cap(
            config.pipeline.incoming_queue_cap,
        ),
        tenants,
    });
    let tenants_admin = Arc::new(crate::admin::tenants::TenantsAdmin {
        tenants: state.tenants.clone(),
        pipeline: daemon.pipeline.clone(),
        history: Arc::default(),
    });
    tokio::spawn(tenants_admin.clone().sample(daemon.workers_shutdown()));
    let mut source = listen(&config, tls, state, store).await?;
    source.admin = Some(tenants_admin);
    daemon.run(source).await
}

/// Binds the HTTP listener (and the HTTPS one with a certificate) and describes the
/// gateway as a source for the daemon layer.
async fn listen(
    config: &GatewayConfig,
    tls: Option<ingest::tls::Reloadable>,
    state: Arc<Ingest>,
    store: Arc<dyn KeyStore>,
) -> Result<Source, DaemonError> {
    let mut listeners = Listeners::default();
    let http_addr = net::host_port(&config.listen_addr, config.listen_http_port.unwrap_or(80));
    let (l, local) = net::bind(&http_addr).await?;
    tracing::info!("HTTP listening on {local}");
    let stop = listeners.shutdown();
    listeners.spawn(ingest::serve(l, None, state.clone(), stop));
    if let Some(tls) = &tls {
        let https_addr =
            net::host_port(&config.listen_addr, config.listen_https_port.unwrap_or(443));
        let (l, local) = net::bind(&https_addr).await?;
        tracing::info!("HTTPS listening on {local}");
        let stop = listeners.shutdown();
        listeners.spawn(ingest::serve(l, Some(tls.slot()), state.clone(), stop));
    }
    // SIGHUP: the certificate and the keys, each kept as it was when its new version
    // does not load (the daemon layer adds the destinations file).
    let cache = state.keys.clone();
    let (tenants_file, tenants) = (config.tenants_file.clone(), state.tenants.clone());
    let describe = store.describe();
    let reload: Reload = Box::new(move || {
        if let Some(tls) = &tls {
            tls.reload();
        }
        if let Some(path) = &tenants_file {
            tenants::store::reload_file(path, &tenants);
        }
        let (store, cache) = (store.clone(), cache.clone());
        Box::pin(async move {
            keys::sync::sync_once(store.as_ref(), &cache).await;
        })
    });
    // The incoming side is the decode budget: KiB of batches being decoded and
    // routed, reported in the original's unit (points, at 64 bytes a point).
    let incoming = {
        let state = state.clone();
        Arc::new(move || {
            let b = &state.decode_budget;
            ((b.in_use_kib() * 16) as f64, (b.total_kib() * 16) as f64)
        })
    };
    Ok(Source {
        listeners,
        stopping: "Shutting down: closing listeners, finishing in-flight requests",
        incoming,
        http: Some(state.http.clone()),
        keys: Some((state.keys.clone(), describe)),
        reload: Some(reload),
        admin: None,
    })
}
