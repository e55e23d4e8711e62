//! The operator endpoints every daemon starts the same way: the runtime API
//! (`-api-addr`), runstats (`-stat-addr`) and the admin HTTP endpoint (`-admin-addr`).

use std::sync::Arc;
use std::time::SystemTime;

use crate::admin;
use crate::admin::api::DestinationControl;
use crate::net;
use crate::shutdown::Shutdown;

/// Binds a side port (runtime API, runstats, admin HTTP) — one policy for all of
/// them. A port the operator set (flag or environment) that cannot be bound is fatal:
/// the configuration is wrong and systemd should say so. A *default* port that is busy
/// is a warning and the daemon runs without that endpoint: the original's defaults
/// collide (gateway and proxy both default runstats to `localhost:2020`), and a second
/// daemon on the host must not fail to start over an endpoint nobody asked for. Data
/// listeners are always fatal (see [`net::bind`]). `Ok(None)` when disabled or skipped.
pub async fn bind_side(
    flag: &str,
    id: &str,
    what: &str,
    addr: &str,
) -> std::io::Result<Option<(tokio::net::TcpListener, std::net::SocketAddr)>> {
    if addr.is_empty() {
        return Ok(None);
    }
    match net::bind(addr).await {
        Ok(bound) => Ok(Some(bound)),
        Err(e) if crate::config::given(id) => Err(std::io::Error::new(
            e.kind(),
            format!("{e} ({flag}, {what}): choose another address, or {flag}= to disable it"),
        )),
        Err(e) => {
            tracing::warn!(
                "{what} not started: {e} (the default {flag}; another polymur daemon on this host? \
                 set {flag} to another address, or {flag}= to disable it)"
            );
            Ok(None)
        }
    }
}

/// Starts the runtime API (when `api_addr` is not empty) over `control`, and runstats
/// (when `stat_addr` is not empty), logging the operator's `API started: ...` and
/// `Runstats started: ...` lines. Binding follows [`bind_side`].
pub async fn start_lines(
    api_addr: &str,
    stat_addr: &str,
    control: Option<Arc<dyn DestinationControl>>,
    started: SystemTime,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    if let Some(control) = control {
        if let Some((l, local)) =
            bind_side("-api-addr", "api_addr", "runtime API", api_addr).await?
        {
            tracing::info!("API started: {local}");
            tokio::spawn(admin::serve_lines(
                l,
                admin::api::handler(control),
                shutdown.clone(),
            ));
        }
    }
    if let Some((l, local)) = bind_side("-stat-addr", "stat_addr", "runstats", stat_addr).await? {
        tracing::info!("Runstats started: {local}");
        tokio::spawn(admin::serve_lines(
            l,
            admin::runstats::handler(started),
            shutdown,
        ));
    }
    Ok(())
}

/// Starts the admin HTTP endpoint (`-admin-addr`; empty disables). Binding follows
/// [`bind_side`].
pub async fn start_http(
    addr: &str,
    state: admin::http::AdminState,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    if let Some((l, local)) = bind_side("-admin-addr", "admin_addr", "admin endpoint", addr).await?
    {
        tracing::info!("Admin HTTP started: http://{local}/");
        tokio::spawn(admin::http::serve(l, Arc::new(state), shutdown));
    }
    Ok(())
}
