//! Binding a plaintext source's listeners: plaintext on `-listen-addr`, or TLS there
//! (`-listen-tls-cert`/`-listen-tls-key`), or both with `-listen-tls-addr`.

use std::sync::Arc;

use crate::config::ListenTlsFlags;
use crate::daemon::{DaemonError, Listeners};
use crate::ingest::tls::Reloadable;
use crate::net;
use crate::plaintext::PlaintextSource;

/// Binds and spawns the listeners of `source`; returns them with the TLS acceptor to
/// reload on SIGHUP when there is one. Logs `Listening on <addr>` for the plaintext listener and
/// `Listening on <addr> (TLS)` for the TLS one.
pub async fn listen(
    source: &Arc<PlaintextSource>,
    addr: &str,
    flags: &ListenTlsFlags,
) -> Result<(Listeners, Option<Reloadable>), DaemonError> {
    let mut listeners = Listeners::default();
    let tls = flags
        .server_tls()
        .map_err(DaemonError::config)?
        .map(|files| files.load())
        .transpose()?;
    let Some(tls) = tls else {
        let (listener, local) = net::bind(addr).await?;
        tracing::info!("Listening on {local}");
        listeners.spawn(source.clone().serve(listener, listeners.shutdown()));
        return Ok((listeners, None));
    };
    let tls_addr = match &flags.listen_tls_addr {
        Some(tls_addr) => {
            let (listener, local) = net::bind(addr).await?;
            tracing::info!("Listening on {local}");
            listeners.spawn(source.clone().serve(listener, listeners.shutdown()));
            tls_addr.as_str()
        }
        None => addr,
    };
    let (listener, local) = net::bind(tls_addr).await?;
    let mtls = if flags.listen_client_ca.is_some() {
        ", client certificates required"
    } else {
        ""
    };
    tracing::info!("Listening on {local} (TLS{mtls})");
    listeners.spawn(
        source
            .clone()
            .serve_tls(listener, tls.slot(), listeners.shutdown()),
    );
    Ok((listeners, Some(tls)))
}
