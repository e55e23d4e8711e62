//! Where limits come from: `-tenants-file` (reloaded when it changes and on SIGHUP) and
//! the key store's `polymur/gateway/tenants/<name>` JSON documents, watched by the keys'
//! own machinery ([`crate::keys::sync::run`] over a store opened with [`LAYOUT`]).
//! Whatever fails to load leaves the limits in force as they were, like the keys.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Tenants, TenantsConfig, TENANT_PREFIX};
use crate::keys::{KeyStore, Layout};
use crate::shutdown::Shutdown;

/// The tenants' layout in Consul and etcd: JSON documents next to the keys.
pub const LAYOUT: Layout = Layout {
    prefix: TENANT_PREFIX,
    documents: true,
};

/// How often the file's modification time is checked (one `stat`).
const POLL: Duration = Duration::from_millis(500);

/// Re-reads the tenants file; on error the limits in force stay and the log says why.
pub fn reload_file(path: &Path, tenants: &Tenants) -> bool {
    match TenantsConfig::load(path) {
        Ok(config) => {
            let n = config.by_name.len();
            tenants.set_file(config);
            tracing::info!("Tenant limits loaded from {}: {n} entries", path.display());
            true
        }
        Err(e) => {
            tracing::error!("Keeping the tenant limits in force: {e}");
            false
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reloads the file whenever its modification time or length changes, until shutdown.
pub async fn watch_file(path: PathBuf, tenants: Arc<Tenants>, mut shutdown: Shutdown) {
    let mut seen = stamp(&path);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.recv() => return,
        }
        let now = stamp(&path);
        if now != seen {
            seen = now;
            reload_file(&path, &tenants);
        }
    }
}

/// Reads every tenant document from the store once; an unreachable store keeps the
/// limits in force.
pub async fn sync_store_once(store: &dyn KeyStore, tenants: &Tenants) -> bool {
    match store.load().await {
        Ok(docs) => {
            let config = TenantsConfig::from_documents(&docs);
            tracing::info!(
                "Tenant limits refreshed from {}: {} documents",
                store.describe(),
                config.by_name.len()
            );
            tenants.set_store(config);
            true
        }
        Err(e) => {
            tracing::error!("Tenant limits sync failed, keeping the limits in force: {e}");
            false
        }
    }
}

/// Followed by [`crate::keys::sync::run`] until shutdown (changes apply within about a
/// second where the store notifies: Consul blocking queries, etcd watches).
impl crate::keys::sync::StoreReader for Tenants {
    fn sync(&self, store: &dyn KeyStore) -> impl std::future::Future<Output = bool> + Send {
        sync_store_once(store, self)
    }
}
