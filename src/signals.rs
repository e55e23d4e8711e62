//! SIGHUP: what every daemon reloads on it (certificates, keys, destinations, rules,
//! tenants) runs from here, with systemd told it is reloading. Its own module so the
//! sources (HTTP ingest, plaintext TLS listeners) can ask for it without depending on the
//! daemon layer that assembles them.

use std::future::Future;

use crate::shutdown::Shutdown;

/// Runs `reload` on every SIGHUP until shutdown. Each daemon's reload re-reads
/// what it can (certificate, keys, destinations file) and keeps the current
/// configuration for anything that does not load, saying why.
pub fn on_hup<F>(mut shutdown: Shutdown, mut reload: impl FnMut() -> F + Send + 'static)
where
    F: Future<Output = ()> + Send,
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
            crate::notify::reloading();
            reload().await;
            crate::notify::ready();
        }
    });
}
