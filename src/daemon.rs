//! The one daemon layer: a source (HTTP ingest or plaintext TCP) feeding one
//! pipeline, with its destination registry, operator endpoints, 5-second report,
//! SIGHUP reloads and staged shutdown — written once, so polymur-gateway and the
//! polymur relay differ only in the source they bring ([`Source`]), and
//! polymur-proxy shares the listener and operator pieces.
//!
//! Shutdown happens in stages, each with its own signal: [`Listeners`] close first
//! (no new data, in-flight requests finish), then the workers drain the queues to
//! the destinations (or their spools) within `-drain-timeout`.
//!
//! Modules: [`operator`] (runtime API, runstats, admin HTTP), [`reports`] (the
//! 5-second log line and self-metrics), [`destinations`] (`-destinations`,
//! `-destinations-file`, SIGHUP).

pub mod destinations;
pub mod operator;
pub mod plaintext_listen;
pub mod reports;
pub mod rules_config;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::task::JoinHandle;

use crate::config::{CommonFlags, Distribution, PipelineFlags};
use crate::dest::{DestAddr, DestConfig};
use crate::keys::KeyCache;
use crate::pipeline::{Pipeline, Topology};
use crate::registry::{Registry, RouterFactory};
use crate::route::broadcast::Broadcast;
use crate::route::dry_run;
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::stats::Stats;

/// Why a daemon could not start (or stopped): each message names the flag, file or
/// address involved, so the operator knows what to change.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A flag, or a combination of flags, that cannot work.
    #[error("{0}")]
    Config(String),
    /// A listener that cannot be bound, or another I/O failure at start.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The HTTPS certificate or key (`-cert`, `-key`).
    #[error(transparent)]
    Tls(#[from] crate::ingest::tls::TlsError),
    /// The API key store.
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyStoreError),
    /// The proxy's HTTPS client (`-cert`).
    #[error("-cert: {0}")]
    Client(#[from] crate::http_client::ClientError),
}

impl DaemonError {
    /// A configuration error with its message.
    pub fn config(message: impl Into<String>) -> Self {
        DaemonError::Config(message.into())
    }
}

/// The data listeners of a daemon and the signal that closes them: the first stage
/// of shutdown. Also the truth behind `/readyz`'s "listening".
pub struct Listeners {
    trigger: ShutdownTrigger,
    shutdown: Shutdown,
    tasks: Vec<JoinHandle<()>>,
    listening: Arc<AtomicBool>,
}

impl Default for Listeners {
    fn default() -> Self {
        let (trigger, shutdown) = Shutdown::new();
        Listeners {
            trigger,
            shutdown,
            tasks: Vec::new(),
            listening: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Listeners {
    /// The signal a listener's serve loop stops on.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Runs a listener's serve loop until [`Listeners::close`].
    pub fn spawn(&mut self, serve: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(serve));
    }

    /// The flag `/readyz` reports: set by [`Listeners::ready`], cleared by [`Listeners::close`].
    pub fn listening(&self) -> Arc<AtomicBool> {
        self.listening.clone()
    }

    /// Every data listener is bound and serving, and the signal handlers are installed:
    /// `/readyz` says so, and systemd
    /// (`Type=notify`) learns the daemon is up only now, not when the process started,
    /// so units ordered after it find its ports open. The watchdog pings from here on
    /// until the listeners close.
    pub fn ready(&self) {
        self.listening.store(true, Ordering::Relaxed);
        crate::notify::ready();
        let _ = crate::notify::spawn_watchdog(self.shutdown());
    }

    /// Stops accepting and waits for the serve loops (and their in-flight work) to end.
    pub async fn close(self) {
        self.listening.store(false, Ordering::Relaxed);
        self.trigger.fire();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// A SIGHUP step of a source (certificate, keys), run before the destinations file
/// is re-read.
pub type Reload = Box<dyn FnMut() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What a source brings to the daemon layer once its listeners are bound.
pub struct Source {
    /// Its listeners (HTTP and HTTPS, or the plaintext one).
    pub listeners: Listeners,
    /// The operator's line when shutdown starts (it says what happens to in-flight data).
    pub stopping: &'static str,
    /// The incoming side's current size and limit, in points (self-metrics).
    pub incoming: Arc<dyn Fn() -> (f64, f64) + Send + Sync>,
    /// The HTTP source's counters, for the admin page (gateway only).
    pub http: Option<Arc<crate::ingest::stats::HttpStats>>,
    /// Keys and a description of their store, for the admin page (gateway only).
    pub keys: Option<(Arc<KeyCache>, String)>,
    /// The source's own SIGHUP reload, if it has one.
    pub reload: Option<Reload>,
    /// What the source adds to `/metrics` and the status page (the gateway's tenants).
    pub admin: Option<Arc<dyn crate::admin::http::AdminExtra>>,
}

/// A daemon that routes into Graphite destinations (gateway, relay): its flags,
/// pipeline and registry, and the workers' shutdown signal (the second stage).
pub struct RoutingDaemon {
    /// `polymur-gateway` or `polymur`: the admin page's service name.
    pub service: &'static str,
    /// Process start, for runstats and the admin page.
    pub started: SystemTime,
    /// Points accepted, invalid lines, refusals.
    pub stats: Arc<Stats>,
    /// Where sources submit batches.
    pub pipeline: Arc<Pipeline>,
    /// The destinations, changeable at run time.
    pub registry: Arc<Registry>,
    /// The routing rules in force (`-config`, or the default cluster).
    pub rules: rules_config::Current,
    common: CommonFlags,
    flags: PipelineFlags,
    admin_addr: String,
    workers: (ShutdownTrigger, Shutdown),
}

impl RoutingDaemon {
    /// Builds the routing core from the flags: destinations (flag and file), router,
    /// one writer per destination, failover when asked for. `durable` is `-durable`
    /// (the gateway only: a TCP client gets no acknowledgement to delay).
    pub fn start(
        service: &'static str,
        common: CommonFlags,
        flags: PipelineFlags,
        admin_addr: String,
        durable: bool,
    ) -> Result<RoutingDaemon, DaemonError> {
        let flag_dests =
            destinations::all(&flags.destinations, flags.destinations_file.as_deref())?;
        let ring = (flags.distribution == Distribution::HashRoute).then_some(flags.hash);
        crate::route::pos_cache::configure(flags.hash_cache_entries);
        let (destinations, rules, make_router) = rules_config::start(
            flags.config.as_ref(),
            flags.max_line_bytes,
            flag_dests,
            ring,
            flags.replication_factor.into(),
            flags.hash_failover,
        )?;
        // With -config, a member may say `transport plain ssl` now or after a SIGHUP.
        let tls = flags
            .destination_tls
            .client(flags.config.is_some())
            .map_err(DaemonError::Config)?;
        let workers = Shutdown::new();
        let (stats, pipeline, registry) = routing_core(
            &destinations,
            flags.console_out,
            make_router,
            DestConfig {
                queue_cap: flags.outgoing_queue_cap.max(1),
                drain_timeout: flags.drain_timeout,
                spool_dir: flags.spool_dir.clone(),
                spool_max_bytes: flags.spool_max_bytes,
                overflow: flags.overflow.into(),
                durable,
                replay_rate: flags.replay_rate.filter(|&r| r > 0),
                tls,
                tls_all: flags.destination_tls.destination_tls,
            },
            flags.config.is_some(),
            flags.config.is_some()
                || (flags.hash_failover && flags.distribution == Distribution::HashRoute),
            workers.1.clone(),
        );
        if let Some(e) = registry.spool_error() {
            return Err(DaemonError::config(format!("-spool-dir: {e}")));
        }
        let files = rules_config::start_files(&registry, &rules);
        if destinations.is_empty() && files == 0 && !flags.console_out {
            tracing::warn!("No destinations and no -console-out: received points are discarded");
        }
        if flags.config.is_some() {
            registry.fix_membership(
                "with -config the destinations are the file's clusters: change the file and send SIGHUP",
            );
        }
        Ok(RoutingDaemon {
            service,
            started: SystemTime::now(),
            stats,
            pipeline,
            registry,
            rules,
            common,
            flags,
            admin_addr,
            workers,
        })
    }

    /// What the runtime API changes: the registry, or under `-config` the clusters.
    fn control(&self) -> Arc<dyn crate::admin::api::DestinationControl> {
        if self.flags.config.is_some() {
            Arc::new(rules_config::RulesControl::new(
                self.registry.clone(),
                self.rules.clone(),
            ))
        } else {
            self.registry.clone()
        }
    }

    /// The signal background work stops on (second stage of shutdown).
    pub fn workers_shutdown(&self) -> Shutdown {
        self.workers.1.clone()
    }

    /// Serves `source` until SIGINT/SIGTERM, then closes its listeners, drains the
    /// queues and returns.
    pub async fn run(self, source: Source) -> Result<(), DaemonError> {
        let shutdown = self.workers_shutdown();
        let control = self.control();
        operator::start_lines(
            &self.flags.api_addr,
            &self.common.stat_addr,
            Some(control.clone()),
            self.started,
            shutdown.clone(),
        )
        .await?;
        operator::start_http(
            &self.admin_addr,
            crate::admin::http::AdminState {
                service: self.service,
                started: self.started,
                stats: self.stats.clone(),
                pipeline: Some(self.pipeline.clone()),
                control: Some(control),
                extra: crate::admin::http::Extras::of(vec![
                    source.admin.clone(),
                    Some(Arc::new(rules_config::RulesStatus(self.rules.clone()))),
                ]),
                http: source.http.clone(),
                keys: source.keys.clone(),
                listening: source.listeners.listening(),
            },
            shutdown.clone(),
        )
        .await?;
        let incoming = source.incoming.clone();
        reports::start(
            &self.pipeline,
            self.common.metrics_flush,
            move || incoming(),
            shutdown.clone(),
        );
        self.reload_on_hup(source.reload);
        // Last: whoever waits for readiness (systemd, /readyz) may send a SIGHUP at once.
        source.listeners.ready();

        crate::shutdown::signal().await;
        // systemd shows the unit as deactivating while the queues drain.
        crate::notify::stopping();
        tracing::info!("{}", source.stopping);
        source.listeners.close().await;
        self.drain().await;
        Ok(())
    }

    /// SIGHUP: the source's reload, then the destinations file (when there is one).
    fn reload_on_hup(&self, mut reload: Option<Reload>) {
        // Installed even when there is nothing to reload: SIGHUP's default action ends
        // the process, and `systemctl reload` (ExecReload=kill -HUP) must never do that.
        let file = self.flags.destinations_file.clone();
        let config = self.flags.config.clone();
        let line_limit = self.flags.max_line_bytes;
        let rules = self.rules.clone();
        let (registry, flag) = (self.registry.clone(), self.flags.destinations.clone());
        crate::signals::on_hup(self.workers_shutdown(), move || {
            let source_step = reload.as_mut().map(|r| r());
            if let Some(config) = &config {
                rules_config::reload(&registry, &rules, config, line_limit);
            } else if let Some(file) = &file {
                destinations::reload(&registry, &flag, file);
            } else if source_step.is_none() {
                tracing::info!("SIGHUP: nothing to reload (no -destinations-file)");
            }
            async move {
                if let Some(step) = source_step {
                    step.await;
                }
            }
        });
    }

    /// Second stage: the writers deliver (or spool) what their queues hold, within
    /// `-drain-timeout`; then the totals are logged.
    async fn drain(self) {
        tracing::info!(
            "Draining destination queues (up to {:?})",
            self.flags.drain_timeout
        );
        self.workers.0.fire();
        for t in self.registry.take_tasks() {
            let _ = t.await;
        }
        let abandoned: u64 = self
            .pipeline
            .destinations()
            .iter()
            .map(|d| d.stats.abandoned.load(Ordering::Relaxed))
            .sum();
        tracing::info!(
            "Stopped: {} points received, {abandoned} undelivered",
            self.stats.received.load(Ordering::Relaxed)
        );
    }
}

/// The routing core of a daemon: counters, the pipeline, and the destination
/// registry with a writer per destination (plus failover when asked for).
pub fn routing_core(
    destinations: &[DestAddr],
    console_out: bool,
    make_router: RouterFactory,
    config: DestConfig,
    keep_down: bool,
    failover: bool,
    shutdown: Shutdown,
) -> (Arc<Stats>, Arc<Pipeline>, Arc<Registry>) {
    let stats = Arc::new(Stats::default());
    let pipeline = Arc::new(Pipeline::new(
        Topology {
            dests: Vec::new(),
            router: Box::new(Broadcast { destinations: 0 }),
        },
        stats.clone(),
    ));
    let registry = Registry::start(
        destinations,
        console_out,
        pipeline.clone(),
        make_router,
        config,
        shutdown,
    );
    if keep_down {
        registry.keep_down_in_topology();
    }
    if failover {
        registry.start_failover();
    }
    (stats, pipeline, registry)
}

/// `-route-test`: the routing dry run over stdin/stdout (see [`dry_run`]).
pub fn route_test(program: &str, flags: &PipelineFlags) -> std::process::ExitCode {
    if let Some(path) = &flags.config {
        return route_test_rules(program, path, flags.max_line_bytes);
    }
    let dests = match DestAddr::parse_list(&flags.destinations) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{program}: -destinations: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let plan = match flags.distribution {
        Distribution::HashRoute => dry_run::Plan::Hash(flags.hash, flags.replication_factor.into()),
        Distribution::Broadcast => dry_run::Plan::Broadcast,
    };
    let stdin = std::io::stdin().lock();
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    match dry_run::run_with(&plan, &dests, &flags.line_rules(), stdin, stdout) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: -route-test: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `-route-test -config FILE`: [`crate::rules::dry_run`] for each stdin line (a full
/// line, or a bare name).
fn route_test_rules(
    program: &str,
    path: &std::path::Path,
    line_limit: usize,
) -> std::process::ExitCode {
    use std::io::{BufRead, Write};
    let rules = match rules_config::load(path, line_limit) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{program}: -config {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in std::io::stdin().lock().lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{program}: -route-test: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        for l in crate::rules::dry_run(&rules, &line) {
            if writeln!(out, "{l}").is_err() {
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    match out.flush() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}

/// The three daemon binaries, for what each says about itself in its `-h` and the
/// prefix of its environment variables (one table, so the binaries stay one line).
#[derive(Debug, Clone, Copy)]
pub enum Daemon {
    Gateway,
    Relay,
    Proxy,
}

impl Daemon {
    /// Name, one-line description, two flags written Go-style, environment prefix.
    fn describe(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Daemon::Gateway => (
                "polymur-gateway",
                "Receives gzip'ed Graphite batches over HTTP(S) from polymur-proxy and forwards them to Graphite",
                "-dev-mode, -destinations=a:1,b:2",
                "POLYMUR_GW_",
            ),
            Daemon::Relay => (
                "polymur",
                "Relays Graphite plaintext metrics from TCP clients to Graphite destinations",
                "-listen-addr=0.0.0.0:2003, -console-out",
                "POLYMUR_",
            ),
            Daemon::Proxy => (
                "polymur-proxy",
                "Receives Graphite plaintext metrics over TCP and forwards them in gzip'ed batches to a polymur-gateway over HTTPS",
                "-gateway=https://gw.example.com, -verbose",
                "POLYMUR_PROXY_",
            ),
        }
    }
}

/// A daemon's parsed flags: the shared ones, and the pipeline's where it routes (its
/// `-route-test`; the proxy routes nothing).
pub trait DaemonFlags: clap::Args + clap::FromArgMatches {
    fn flags(&self) -> (&CommonFlags, Option<&PipelineFlags>);
}

/// The whole `main` of a daemon binary: parses its flags (command line, then the
/// environment) and hands them to [`main`] with `run`.
pub fn run_cli<C: DaemonFlags, F>(
    daemon: Daemon,
    run: impl FnOnce(C) -> F,
) -> std::process::ExitCode
where
    F: Future<Output = Result<(), DaemonError>>,
{
    let (name, about, example, env_prefix) = daemon.describe();
    let command = clap::Command::new(name)
        .version(env!("CARGO_PKG_VERSION"))
        .about(about)
        .after_help(format!(
            "Flags may be written Go-style with one dash ({example})."
        ));
    let config: C = crate::config::parse(command, env_prefix, std::env::args_os());
    let (common, flags) = config.flags();
    let (common, flags) = (common.clone(), flags.cloned());
    main(name, &common, flags.as_ref(), || run(config))
}

/// The `main` of a daemon binary once its flags are parsed: `-route-test` (when the
/// daemon routes, `dry_run`) answers and exits; otherwise logging starts and `run`
/// runs to completion ([`block_on`]).
pub fn main<F>(
    program: &str,
    common: &crate::config::CommonFlags,
    dry_run: Option<&PipelineFlags>,
    run: impl FnOnce() -> F,
) -> std::process::ExitCode
where
    F: Future<Output = Result<(), DaemonError>>,
{
    if let Some(flags) = dry_run.filter(|f| f.route_test) {
        return route_test(program, flags);
    }
    crate::logging::init(common.log_format);
    block_on(program, common.threads, run())
}

/// Runs a daemon's `run` future on a multi-threaded runtime of `threads` workers
/// (`-threads`; 0: one per core); an error is logged and printed
/// (`<program>: <error>`) and becomes exit code 1.
pub fn block_on(
    program: &str,
    threads: usize,
    run: impl Future<Output = Result<(), DaemonError>>,
) -> std::process::ExitCode {
    crate::memory::tune_allocator();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{program}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
