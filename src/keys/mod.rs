//! API keys: where they are stored, and the lock-free cache the request path reads.
//!
//! Every store (dev, file, Consul, etcd) uses the same logical layout as the Go
//! original's Consul KV: `polymur/gateway/keys/<name>` = `<key>`. A store only has to
//! say what is registered ([`KeyStore::load`]) and when that may have changed
//! ([`KeyStore::changed`]); the [`sync`] loop turns that into cache swaps, and keeps
//! the last good set whenever a store fails, so an outage never locks tenants out.

pub mod cache;
pub mod consul;
pub mod dev;
pub mod etcd;
pub mod file;
pub mod sync;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use cache::{fingerprint, KeyCache};

/// The KV prefix under which every store keeps keys (PROTOCOL.md: Consul layout).
pub const KEY_PREFIX: &str = "polymur/gateway/keys/";

/// What a Consul or etcd store reads: the KV prefix, and whether the values are API keys
/// (checked with [`usable_key`]) or JSON documents (the tenants' limits). One store type
/// serves both, so the tenants' limits are watched by the very code that watches the keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// KV prefix, ending in `/`.
    pub prefix: &'static str,
    /// Values are documents (any non-empty text), not API keys.
    pub documents: bool,
}

/// The keys' layout: `polymur/gateway/keys/<name>` = `<key>` (the Go original's).
pub const KEYS: Layout = Layout {
    prefix: KEY_PREFIX,
    documents: false,
};

impl Layout {
    /// Whether `value` can be registered under this layout.
    pub(crate) fn usable(&self, value: &str) -> bool {
        if self.documents {
            !value.trim().is_empty()
        } else {
            usable_key(value)
        }
    }
}

/// Opens a Consul or etcd store reading `layout` instead of the keys (`None` for the
/// file and dev stores, which hold keys only).
pub fn open_layout(
    config: &KeyStoreConfig,
    layout: Layout,
) -> Result<Option<Arc<dyn KeyStore>>, KeyStoreError> {
    Ok(match config {
        KeyStoreConfig::Dev | KeyStoreConfig::File { .. } => None,
        KeyStoreConfig::Consul { addr, token } => Some(Arc::new(
            consul::ConsulStore::new(addr, token.clone())?.with_layout(layout),
        )),
        KeyStoreConfig::Etcd { endpoints } => Some(Arc::new(
            etcd::EtcdStore::new(endpoints.clone())?.with_layout(layout),
        )),
    })
}

/// Registered keys: key name → API key. Ordered so listings are stable.
pub type KeySet = BTreeMap<String, String>;

/// Boxed future, so that stores can be used as `dyn KeyStore`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A failure talking to a key store. The message names the store and address.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("key store {store}: {message}")]
    Unavailable { store: String, message: String },
    #[error("key store {store}: invalid data: {message}")]
    Invalid { store: String, message: String },
    #[error("key store {0} is read-only")]
    ReadOnly(String),
}

/// The errors every store builds the same way: named after the store (its
/// [`KeyStore::describe`]), so the operator sees which one failed.
pub(crate) trait StoreErrors: KeyStore {
    /// The store cannot be reached or answered with an error.
    fn unavailable(&self, message: impl std::fmt::Display) -> KeyStoreError {
        KeyStoreError::Unavailable {
            store: self.describe(),
            message: message.to_string(),
        }
    }

    /// The store answered with data that cannot be used.
    fn invalid(&self, message: impl std::fmt::Display) -> KeyStoreError {
        KeyStoreError::Invalid {
            store: self.describe(),
            message: message.to_string(),
        }
    }

    /// The body of an HTTP answer, or an error naming the request (`what`), the
    /// status and what the store said, when the status is not a success.
    fn success_body(
        &self,
        what: &str,
        resp: reqwest::Response,
    ) -> impl Future<Output = Result<bytes::Bytes, KeyStoreError>> + Send
    where
        Self: Sync,
    {
        async move {
            let status = resp.status();
            let body = resp
                .bytes()
                .await
                .map_err(|e| self.unavailable(consul::error_chain(&e)))?;
            if !status.is_success() {
                return Err(self.unavailable(format!(
                    "{what}: {status} {}",
                    String::from_utf8_lossy(&body).trim()
                )));
            }
            Ok(body)
        }
    }
}

impl<T: KeyStore> StoreErrors for T {}

/// A source of registered API keys.
pub trait KeyStore: Send + Sync + 'static {
    /// Human-readable description for logs, e.g. `consul http://127.0.0.1:8500`.
    fn describe(&self) -> String;

    /// Reads every registered key. An error must leave callers' caches untouched.
    fn load(&self) -> BoxFuture<'_, Result<KeySet, KeyStoreError>>;

    /// Like [`KeyStore::load`], but `Ok(None)` when the store knows that nothing
    /// changed since the last successful `load` (the file store's `stat`), so the
    /// periodic sync neither reads nor rebuilds anything. Stores that cannot tell
    /// read every time.
    fn load_if_changed(&self) -> BoxFuture<'_, Result<Option<KeySet>, KeyStoreError>> {
        Box::pin(async move { self.load().await.map(Some) })
    }

    /// Returns when the store has (or may have) changed since the last `load`, and at
    /// the latest after `max_wait`. Stores with change notification (Consul blocking
    /// queries, etcd watches) return early so that a revoked key stops working within
    /// about a second; others simply poll.
    fn changed(&self, max_wait: Duration) -> BoxFuture<'_, Result<(), KeyStoreError>>;

    /// Registers or replaces `name` with `key` (used by `pgw-key`).
    fn put<'a>(&'a self, name: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), KeyStoreError>>;

    /// Removes `name`; `Ok(false)` when it was not registered.
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, KeyStoreError>>;
}

/// Which store to use, as chosen by `-key-store` / `-dev-mode` and friends.
#[derive(Clone, Debug)]
pub enum KeyStoreConfig {
    /// The single key `123`, named `dev`.
    Dev,
    /// A text file of `name key` lines.
    File { path: PathBuf },
    /// Consul KV; address and token from `CONSUL_HTTP_ADDR` / `CONSUL_HTTP_TOKEN`.
    Consul { addr: String, token: Option<String> },
    /// etcd v3 through its JSON gateway.
    Etcd { endpoints: Vec<String> },
}

/// Opens the configured store.
pub fn open(config: &KeyStoreConfig) -> Result<Arc<dyn KeyStore>, KeyStoreError> {
    Ok(match config {
        KeyStoreConfig::Dev => Arc::new(dev::DevStore),
        KeyStoreConfig::File { path } => Arc::new(file::FileStore::new(path.clone())),
        KeyStoreConfig::Consul { addr, token } => {
            Arc::new(consul::ConsulStore::new(addr, token.clone())?)
        }
        KeyStoreConfig::Etcd { endpoints } => Arc::new(etcd::EtcdStore::new(endpoints.clone())?),
    })
}

/// Builds the HTTP client used by the Consul and etcd stores: system roots plus
/// `extra_ca`, the operator's private CA (`CONSUL_CACERT`); see [`crate::http_client`].
pub(crate) fn http_client(
    store: &str,
    extra_ca: Option<&std::path::Path>,
) -> Result<reqwest::Client, KeyStoreError> {
    crate::http_client::reqwest_client(extra_ca, |b| b).map_err(|e| KeyStoreError::Invalid {
        store: store.to_string(),
        message: e.to_string(),
    })
}

/// Base64 (standard alphabet, padded), the encoding of Consul's `Value` and of every
/// byte field in etcd's JSON gateway.
pub(crate) fn b64_encode(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Inverse of [`b64_encode`].
pub(crate) fn b64_decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text)
}

/// A key value that can be registered: non-empty (an empty key would match a request
/// without a key) and free of whitespace and control bytes, which no HTTP header or
/// key file line could carry intact.
pub(crate) fn usable_key(key: &str) -> bool {
    !key.is_empty() && !key.chars().any(|c| c.is_whitespace() || c.is_control())
}
