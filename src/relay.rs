//! polymur (the relay): Graphite plaintext over TCP → router → Graphite destinations.
//!
//! The same pipeline as the gateway with a different source: clients write lines to
//! `-listen-addr`, batches are routed (broadcast or hash-route) into per-destination
//! queues, and a full queue slows the clients down through TCP instead of dropping.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{parse_duration, CommonFlags, ListenTlsFlags, PipelineFlags};
use crate::daemon::{DaemonError, Reload, RoutingDaemon, Source};
use crate::plaintext::{PlaintextConfig, PlaintextSource};

/// Flags of polymur (the relay). Every flag of the Go original keeps its name and
/// default; each is also read from `POLYMUR_<FLAG>` (see [`crate::config::parse`]).
#[derive(clap::Args, Debug, Clone)]
pub struct RelayConfig {
    /// Flags every daemon has.
    #[command(flatten)]
    pub common: CommonFlags,
    /// Destinations, routing, queues and spool.
    #[command(flatten)]
    pub pipeline: PipelineFlags,
    /// Polymur listen address
    #[arg(long, default_value = "0.0.0.0:2003")]
    pub listen_addr: String,
    /// Admin HTTP address: /metrics, /healthz, /readyz, status page, /api/destinations ("" disables)
    #[arg(long, default_value = "127.0.0.1:2042")]
    pub admin_addr: String,
    /// Close a client connection that sent nothing for this long (0 never closes)
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// TLS on the listener.
    #[command(flatten)]
    pub tls: ListenTlsFlags,
}

impl crate::daemon::DaemonFlags for RelayConfig {
    fn flags(&self) -> (&CommonFlags, Option<&crate::config::PipelineFlags>) {
        (&self.common, Some(&self.pipeline))
    }
}

/// Runs the relay until SIGINT/SIGTERM, then drains and returns.
pub async fn run(config: RelayConfig) -> Result<(), DaemonError> {
    tracing::info!("::: Polymur :::");
    let daemon = RoutingDaemon::start(
        "polymur",
        config.common.clone(),
        config.pipeline.clone(),
        config.admin_addr.clone(),
        // A TCP client gets no acknowledgement to delay.
        false,
    )?;
    let source = PlaintextSource::new(
        daemon.pipeline.clone(),
        daemon.stats.clone(),
        PlaintextConfig {
            idle_timeout: (!config.idle_timeout.is_zero()).then_some(config.idle_timeout),
            max_inflight_points: config
                .pipeline
                .incoming_queue_cap
                .max(1)
                .saturating_mul(100),
            rules: config.pipeline.line_rules(),
        },
    );
    let (listeners, tls) =
        crate::daemon::plaintext_listen::listen(&source, &config.listen_addr, &config.tls).await?;
    // SIGHUP: the listener's certificate (the daemon layer adds the destinations file).
    let reload = tls.map(|tls| -> Reload {
        Box::new(move || {
            tls.reload();
            Box::pin(async {})
        })
    });
    daemon
        .run(Source {
            listeners,
            stopping: "Shutting down: closing the listener, queueing what clients sent",
            incoming: Arc::new(move || {
                (
                    source.waiting_points() as f64,
                    source.max_waiting_points() as f64,
                )
            }),
            http: None,
            keys: None,
            reload,
            admin: None,
        })
        .await
}
