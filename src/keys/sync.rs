//! The loop that keeps a [`KeyCache`] in step with a [`KeyStore`].

use std::sync::Arc;
use std::time::Duration;

use super::{KeyCache, KeyStore};
use crate::shutdown::Shutdown;

/// Reads the store once and swaps the result into the cache. On error the cache
/// is left as it was (the seed's promise: an outage never drops a key). SIGHUP and
/// the start use this: the store is read whatever it says about changes.
pub async fn sync_once(store: &dyn KeyStore, cache: &KeyCache) -> bool {
    tracing::info!("Running API key sync");
    let loaded = store.load().await.map(Some);
    apply(store, cache, loaded)
}

/// The periodic sync: like [`sync_once`], but a store that knows it did not change
/// (an unchanged key file) is neither read nor swapped in, so a sync of 100 000 keys
/// costs one `stat` and no memory.
pub async fn sync_if_changed(store: &dyn KeyStore, cache: &KeyCache) -> bool {
    tracing::info!("Running API key sync");
    let loaded = store.load_if_changed().await;
    apply(store, cache, loaded)
}

fn apply(
    store: &dyn KeyStore,
    cache: &KeyCache,
    loaded: Result<Option<super::KeySet>, super::KeyStoreError>,
) -> bool {
    match loaded {
        Ok(Some(set)) => {
            let (new, removed) = cache.replace(set);
            crate::memory::release_freed_memory();
            tracing::info!("API keys refreshed: {new} new, {removed} removed");
            cache.note_sync(true);
            true
        }
        Ok(None) => {
            tracing::debug!("API keys unchanged in {}; not re-read", store.describe());
            cache.note_sync(true);
            true
        }
        Err(e) => {
            tracing::error!(
                "API key sync failed, keeping {} cached keys: {e}",
                cache.len()
            );
            cache.note_sync(false);
            false
        }
    }
}

/// Something that follows a store: reads it and applies what it read (the key cache,
/// the tenants' limits), answering true on success.
pub trait StoreReader: Send + Sync + 'static {
    fn sync(&self, store: &dyn KeyStore) -> impl std::future::Future<Output = bool> + Send;
}

impl StoreReader for KeyCache {
    fn sync(&self, store: &dyn KeyStore) -> impl std::future::Future<Output = bool> + Send {
        sync_if_changed(store, self)
    }
}

/// Runs until shutdown: waits for [`KeyStore::changed`] (a change the store reports, or
/// `interval`), then has `reader` sync. Watch errors back off from 1 s up to `interval`.
pub async fn run<R: StoreReader>(
    store: Arc<dyn KeyStore>,
    reader: Arc<R>,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let waited = tokio::select! {
            r = store.changed(interval) => r,
            _ = shutdown.recv() => return,
        };
        if let Err(e) = waited {
            tracing::warn!(
                "{} watch failed: {e}; retrying in {backoff:?}",
                store.describe()
            );
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {},
                _ = shutdown.recv() => return,
            }
            backoff = (backoff * 2).min(interval.max(Duration::from_secs(1)));
        }
        if reader.sync(store.as_ref()).await {
            backoff = Duration::from_secs(1);
        }
    }
}
