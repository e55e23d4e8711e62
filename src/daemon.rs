//! Start-up pieces shared by the daemons that route to Graphite destinations
//! (polymur-gateway and the polymur relay): the router chosen by `-distribution`,
//! and the operator listeners (`-api-addr`, `-stat-addr`).

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::bail;

use crate::admin;
use crate::admin::api::DestinationControl;
use crate::dest::DestAddr;
use crate::registry::RouterFactory;
use crate::route::broadcast::Broadcast;
use crate::route::hash::HashKind;
use crate::route::hashed::HashRouter;
use crate::route::Router;
use crate::shutdown::Shutdown;

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
