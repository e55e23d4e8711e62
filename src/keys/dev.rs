//! Dev mode: no store, the single key `123` named `dev` (as the Go original).

use std::time::Duration;

use super::{BoxFuture, KeySet, KeyStore, KeyStoreError};

/// The fixed development key set.
pub struct DevStore;

impl KeyStore for DevStore {
    fn describe(&self) -> String {
        "dev mode (one fixed key, named dev)".into()
    }

    fn load(&self) -> BoxFuture<'_, Result<KeySet, KeyStoreError>> {
        Box::pin(async { Ok(KeySet::from([("dev".to_string(), "123".to_string())])) })
    }

    fn changed(&self, max_wait: Duration) -> BoxFuture<'_, Result<(), KeyStoreError>> {
        Box::pin(async move {
            tokio::time::sleep(max_wait).await;
            Ok(())
        })
    }

    fn put<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<(), KeyStoreError>> {
        Box::pin(async { Err(KeyStoreError::ReadOnly(self.describe())) })
    }

    fn delete<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<bool, KeyStoreError>> {
        Box::pin(async { Err(KeyStoreError::ReadOnly(self.describe())) })
    }
}
