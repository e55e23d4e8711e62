//! Start-up pieces shared by the daemons that route to Graphite destinations
//! (polymur-gateway and the polymur relay): the router chosen by `-distribution`,
//! and the operator listeners (`-api-addr`, `-stat-addr`).

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::bail;

use crate::admin;
use crate::admin::api::DestinationControl;
use crate::dest::{DestAddr, DestConfig, Overflow};
use crate::pipeline::{Pipeline, Topology};
use crate::registry::{Registry, RouterFactory};
use crate::route::broadcast::Broadcast;
use crate::route::dry_run;
use crate::route::hash::HashKind;
use crate::route::hashed::HashRouter;
use crate::route::Router;
use crate::shutdown::Shutdown;
use crate::stats::Stats;

/// The router factory for `-distribution` (`broadcast` or `hash-route` with `-hash`
/// and `-replication-factor`).
pub fn router_factory(
    distribution: &str,
    hash: HashKind,
    replication_factor: usize,
) -> anyhow::Result<RouterFactory> {
    match distribution {
        "broadcast" => Ok(Arc::new(|addrs: &[DestAddr]| {
            Box::new(Broadcast {
                destinations: addrs.len(),
            }) as Box<dyn Router>
        })),
        "hash-route" => Ok(Arc::new(move |addrs: &[DestAddr]| {
            Box::new(HashRouter::new(hash, addrs, replication_factor)) as Box<dyn Router>
        })),
        other => bail!("-distribution {other}: use broadcast or hash-route"),
    }
}

/// Starts the runtime API (when `api_addr` is not empty) over `control`, and runstats
/// (when `stat_addr` is not empty), logging the operator's `API started: ...` and
/// `Runstats started: ...` lines.
pub async fn start_admin(
    api_addr: &str,
    stat_addr: &str,
    control: Option<Arc<dyn DestinationControl>>,
    started: SystemTime,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    if let (false, Some(control)) = (api_addr.is_empty(), control) {
        let (l, local) = crate::ingest::bind(api_addr).await?;
        tracing::info!("API started: {local}");
        tokio::spawn(admin::serve_lines(
            l,
            admin::api::handler(control),
            shutdown.clone(),
        ));
    }
    if !stat_addr.is_empty() {
        let (l, local) = crate::ingest::bind(stat_addr).await?;
        tracing::info!("Runstats started: {local}");
        tokio::spawn(admin::serve_lines(
            l,
            admin::runstats::handler(started),
            shutdown,
        ));
    }
    Ok(())
}

/// Starts the admin HTTP endpoint (`-admin-addr`; empty disables). Observability
/// must not stop the data path, so a port that cannot be bound is logged, not fatal.
pub async fn start_admin_http(addr: &str, state: admin::http::AdminState, shutdown: Shutdown) {
    if addr.is_empty() {
        return;
    }
    match crate::ingest::bind(addr).await {
        Ok((l, local)) => {
            tracing::info!("Admin HTTP started: http://{local}/");
            tokio::spawn(admin::http::serve(l, Arc::new(state), shutdown));
        }
        Err(e) => tracing::warn!("admin endpoint disabled: {e}"),
    }
}

/// `-overflow refuse|drop` as the destinations' policy.
pub fn overflow(flag: &str) -> Overflow {
    if flag == "drop" {
        Overflow::Drop
    } else {
        Overflow::Refuse
    }
}

/// The routing core of a daemon: counters, the pipeline, and the destination
/// registry with a writer per destination (plus failover when asked for).
pub fn routing_core(
    destinations: &[DestAddr],
    console_out: bool,
    make_router: RouterFactory,
    config: DestConfig,
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
    if failover {
        registry.start_failover();
    }
    (stats, pipeline, registry)
}

/// `-route-test`: the routing dry run over stdin/stdout (see [`dry_run`]).
pub fn route_test(
    program: &str,
    destinations: &str,
    distribution: &str,
    hash: HashKind,
    replication_factor: usize,
    rules: crate::line::LineRules,
) -> std::process::ExitCode {
    let dests = match DestAddr::parse_list(destinations) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{program}: -destinations: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let plan = match distribution {
        "hash-route" => dry_run::Plan::Hash(hash, replication_factor),
        _ => dry_run::Plan::Broadcast,
    };
    let stdin = std::io::stdin().lock();
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    match dry_run::run_with(&plan, &dests, &rules, stdin, stdout) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: -route-test: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a daemon's `run` future on a multi-threaded runtime; an error is logged
/// and printed (`<program>: <error>`) and becomes exit code 1.
pub fn block_on(
    program: &str,
    run: impl std::future::Future<Output = anyhow::Result<()>>,
) -> std::process::ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{program}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Reads a destinations file: one `host:port[:instance]` per line, `#` comments.
/// Any bad line rejects the whole file (the caller keeps its current set).
pub fn read_destinations_file(path: &std::path::Path) -> Result<Vec<DestAddr>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out: Vec<DestAddr> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let addr: DestAddr = line
            .parse()
            .map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// `-destinations` plus the destinations file (if any), without duplicates.
pub fn destinations(flag: &str, file: Option<&std::path::Path>) -> anyhow::Result<Vec<DestAddr>> {
    let mut all = DestAddr::parse_list(flag).map_err(|e| anyhow::anyhow!("-destinations: {e}"))?;
    if let Some(path) = file {
        for addr in
            read_destinations_file(path).map_err(|e| anyhow::anyhow!("-destinations-file {e}"))?
        {
            if !all.contains(&addr) {
                all.push(addr);
            }
        }
    }
    Ok(all)
}

/// Runs `reload` on every SIGHUP until shutdown. Each daemon's reload re-reads
/// what it can (certificate, keys, destinations file) and keeps the current
/// configuration for anything that does not load, saying why.
pub fn on_hup<F>(mut shutdown: Shutdown, mut reload: impl FnMut() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {}
                _ = shutdown.recv() => return,
            }
            reload().await;
        }
    });
}

/// SIGHUP part for destinations: re-reads the file and applies it over the
/// `-destinations` flag's list.
pub fn reload_destinations(registry: &Registry, flag: &str, file: &std::path::Path) {
    match destinations(flag, Some(file)) {
        Ok(all) => {
            let (added, removed) = registry.apply(&all);
            tracing::info!(
                "SIGHUP: destinations reloaded from {}: {added} added, {removed} removed",
                file.display()
            );
        }
        Err(e) => tracing::error!("SIGHUP: keeping the current destinations: {e:#}"),
    }
}

/// The periodic reports of a routing daemon: the 5-second `Last 5.00s: ...` log
/// line, and with `-metrics-flush N` the self-metrics every N seconds. `incoming`
/// gives the incoming side's current size and limit, in points.
pub fn start_reports(
    pipeline: &Arc<Pipeline>,
    metrics_flush: u64,
    incoming: impl Fn() -> (f64, f64) + Send + Sync + 'static,
    shutdown: Shutdown,
) {
    tokio::spawn(crate::stats::report(
        pipeline.clone(),
        std::time::Duration::from_secs(5),
        shutdown.clone(),
    ));
    if metrics_flush > 0 {
        tokio::spawn(crate::self_metrics::run_for_pipeline(
            pipeline.clone(),
            std::time::Duration::from_secs(metrics_flush),
            incoming,
            shutdown,
        ));
    }
}
