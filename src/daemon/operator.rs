//! The operator endpoints every daemon starts the same way: the runtime API
//! (`-api-addr`), runstats (`-stat-addr`) and the admin HTTP endpoint (`-admin-addr`).

use std::sync::Arc;
use std::time::SystemTime;

use crate::admin;
use crate::admin::api::DestinationControl;
use crate::net;
use crate::shutdown::Shutdown;

/// Starts the runtime API (when `api_addr` is not empty) over `control`, and runstats
/// (when `stat_addr` is not empty), logging the operator's `API started: ...` and
/// `Runstats started: ...` lines. A port that cannot be bound is an error: these
/// addresses are the original's, and operators rely on them.
pub async fn start_lines(
    api_addr: &str,
    stat_addr: &str,
    control: Option<Arc<dyn DestinationControl>>,
    started: SystemTime,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    if let (false, Some(control)) = (api_addr.is_empty(), control) {
        let (l, local) = net::bind(api_addr).await?;
        tracing::info!("API started: {local}");
        tokio::spawn(admin::serve_lines(
            l,
            admin::api::handler(control),
            shutdown.clone(),
        ));
    }
    if !stat_addr.is_empty() {
        let (l, local) = net::bind(stat_addr).await?;
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
pub async fn start_http(addr: &str, state: admin::http::AdminState, shutdown: Shutdown) {
    if addr.is_empty() {
        return;
    }
    match net::bind(addr).await {
        Ok((l, local)) => {
            tracing::info!("Admin HTTP started: http://{local}/");
            tokio::spawn(admin::http::serve(l, Arc::new(state), shutdown));
        }
        Err(e) => tracing::warn!("admin endpoint disabled: {e}"),
    }
}
