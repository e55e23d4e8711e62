//! Consul KV store: the Go original's key store, spoken over Consul's HTTP API.
//!
//! Keys are `polymur/gateway/keys/<name>` = `<key>`. [`KeyStore::load`] lists the
//! prefix (`?recurse`); [`KeyStore::changed`] is a Consul blocking query on the same
//! listing, so a revoked key stops working about as soon as Consul commits the
//! delete instead of at the next 30 s sync.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::StoreErrors as _;
use super::{b64_decode, BoxFuture, KeySet, KeyStore, KeyStoreError};

/// Timeout of the plain (non-blocking) requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Consul caps `wait` at 10 minutes.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// A client for one Consul agent.
pub struct ConsulStore {
    /// `http(s)://host:port`, no trailing slash.
    base: String,
    token: Option<String>,
    client: reqwest::Client,
    /// `X-Consul-Index` of the last successful `load`; 0 means "none yet", and makes
    /// [`KeyStore::changed`] fetch a fresh index before it blocks.
    index: AtomicU64,
    /// The KV prefix read and how values are checked (the keys, or the tenants' documents).
    layout: super::Layout,
}

/// One entry of a KV listing, as Consul returns it.
#[derive(Deserialize)]
struct KvEntry {
    #[serde(rename = "Key")]
    key: String,
    /// Base64; `null` for folder entries (`a/b/`) created by the UI.
    #[serde(rename = "Value")]
    value: Option<String>,
}

impl ConsulStore {
    /// The same agent, reading `layout` (e.g. the tenants' documents) instead of the keys.
    pub fn with_layout(mut self, layout: super::Layout) -> Self {
        self.layout = layout;
        self
    }

    /// A store for the agent at `addr`, given as `CONSUL_HTTP_ADDR` is: `host:port`
    /// (plain HTTP) or a `http://` / `https://` URL. `token` is sent as
    /// `X-Consul-Token`. For https, the system CA bundle is trusted, plus the file
    /// named by `CONSUL_CACERT` as Consul's own clients do.
    pub fn new(addr: &str, token: Option<String>) -> Result<Self, KeyStoreError> {
        let ca = std::env::var_os("CONSUL_CACERT").filter(|v| !v.is_empty());
        Self::with_ca_file(addr, token, ca.as_deref().map(std::path::Path::new))
    }

    /// [`ConsulStore::new`] with an explicit private CA instead of `CONSUL_CACERT`.
    pub fn with_ca_file(
        addr: &str,
        token: Option<String>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, KeyStoreError> {
        let addr = addr.trim().trim_end_matches('/');
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_string()
        } else if addr.contains("://") {
            return Err(KeyStoreError::Invalid {
                store: format!("consul {addr}"),
                message: "CONSUL_HTTP_ADDR must be host:port, http://... or https://...".into(),
            });
        } else {
            format!("http://{addr}")
        };
        if base.ends_with("://") {
            return Err(KeyStoreError::Invalid {
                store: "consul".into(),
                message: "empty agent address".into(),
            });
        }
        let client = super::http_client(&format!("consul {base}"), ca_file)?;
        Ok(ConsulStore {
            base,
            token: token.filter(|t| !t.is_empty()),
            client,
            index: AtomicU64::new(0),
            layout: super::KEYS,
        })
    }

    /// URL of the KV entry `<prefix><name>`, with `name` percent-encoded so that any
    /// name reaches Consul as one literal key.
    fn kv_url(&self, name: &str) -> String {
        let pfx = self.layout.prefix;
        format!("{}/v1/kv/{pfx}{}", self.base, encode_path(name))
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.client.request(method, url);
        match &self.token {
            Some(token) => req.header("X-Consul-Token", token),
            None => req,
        }
    }

    /// Sends a request and maps transport errors and ACL refusals to store errors.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, KeyStoreError> {
        let resp = req
            .send()
            .await
            .map_err(|e| self.unavailable(error_chain(&e)))?;
        if resp.status() == reqwest::StatusCode::FORBIDDEN {
            let body = resp.text().await.unwrap_or_default();
            return Err(self.unavailable(format!("403 {} (check CONSUL_HTTP_TOKEN)", body.trim())));
        }
        Ok(resp)
    }

    /// GETs the key listing, blocking when `block` is given as `(index, wait)`.
    /// Returns the listing (None on 404: nothing under the prefix) and the
    /// `X-Consul-Index` answered.
    async fn list(
        &self,
        block: Option<(u64, Duration)>,
    ) -> Result<(Option<Vec<KvEntry>>, u64), KeyStoreError> {
        let pfx = self.layout.prefix;
        let mut url = format!("{}/v1/kv/{pfx}?recurse", self.base);
        let mut timeout = REQUEST_TIMEOUT;
        if let Some((index, wait)) = block {
            let wait = wait.min(MAX_WAIT);
            // Consul adds up to wait/16 of jitter to a blocking query.
            timeout += wait + wait / 16;
            let ms = wait.as_millis().max(1);
            url.push_str(&format!("&index={index}&wait={ms}ms"));
        }
        let resp = self
            .send(self.request(reqwest::Method::GET, &url).timeout(timeout))
            .await?;
        let status = resp.status();
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        // Consul answers a listing the token may not fully read by silently leaving
        // entries out (an empty one is a 404). Taking that as the key set would revoke
        // every tenant because of an ACL mistake, so it is an error: the cache stays.
        if resp
            .headers()
            .get("X-Consul-Results-Filtered-By-ACLs")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
        {
            return Err(self.unavailable(format!(
                "the token may not read all of {pfx} (results filtered by ACLs; check CONSUL_HTTP_TOKEN)"
            )));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok((None, index));
        }
        let body = self.success_body(&format!("GET {url}"), resp).await?;
        let entries: Vec<KvEntry> = serde_json::from_slice(&body)
            .map_err(|e| self.invalid(format!("KV listing is not Consul JSON: {e}")))?;
        Ok((Some(entries), index))
    }

    /// Turns a listing into a key set. Entries that cannot be a key are skipped with a
    /// warning naming the KV key (never the value): folders, nested keys, values that
    /// are empty, not UTF-8 or contain whitespace.
    fn to_set(&self, entries: Vec<KvEntry>) -> Result<KeySet, KeyStoreError> {
        let mut set = KeySet::new();
        for entry in entries {
            let Some(name) = entry.key.strip_prefix(self.layout.prefix) else {
                continue;
            };
            if name.is_empty() || entry.value.is_none() {
                continue; // the prefix's own folder entry
            }
            if name.contains('/') {
                tracing::warn!("Ignoring nested KV entry {}", entry.key);
                continue;
            }
            let raw = b64_decode(entry.value.as_deref().unwrap_or_default())
                .map_err(|e| self.invalid(format!("{}: Value is not base64: {e}", entry.key)))?;
            match String::from_utf8(raw) {
                Ok(key) if self.layout.usable(&key) => {
                    set.insert(name.to_string(), key);
                }
                _ => tracing::warn!(
                    "Ignoring KV entry {}: the value is empty, not UTF-8 or contains whitespace",
                    entry.key
                ),
            }
        }
        Ok(set)
    }
}

impl KeyStore for ConsulStore {
    fn describe(&self) -> String {
        format!("consul {}", self.base)
    }

    fn load(&self) -> BoxFuture<'_, Result<KeySet, KeyStoreError>> {
        Box::pin(async move {
            let (entries, index) = self.list(None).await?;
            let set = self.to_set(entries.unwrap_or_default())?;
            // Consul's blocking-query rules: an index must be at least 1, or the next
            // blocking query would return at once, forever.
            self.index.store(index.max(1), Ordering::Relaxed);
            Ok(set)
        })
    }

    fn changed(&self, max_wait: Duration) -> BoxFuture<'_, Result<(), KeyStoreError>> {
        Box::pin(async move {
            let deadline = Instant::now() + max_wait;
            let mut seen = self.index.load(Ordering::Relaxed);
            if seen == 0 {
                // No successful load yet: learn the current index, then block on it,
                // rather than returning at once and making the caller busy-loop.
                let (_, index) = self.list(None).await?;
                seen = index.max(1);
            }
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                let (_, index) = self.list(Some((seen, left))).await?;
                if index < seen {
                    // The index went backwards (a Consul data reset): per Consul's
                    // docs, start over from 0 with a full read.
                    self.index.store(0, Ordering::Relaxed);
                    return Ok(());
                }
                if index > seen {
                    return Ok(());
                }
                // Same index: the wait elapsed, or Consul woke us for an unrelated
                // write. Block again for what is left.
            }
        })
    }

    fn put<'a>(&'a self, name: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), KeyStoreError>> {
        Box::pin(async move {
            let pfx = self.layout.prefix;
            let url = self.kv_url(name);
            let req = self
                .request(reqwest::Method::PUT, &url)
                .timeout(REQUEST_TIMEOUT)
                .body(key.to_string());
            let resp = self.send(req).await?;
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            if !status.is_success() || body.trim() != "true" {
                return Err(self.unavailable(format!("PUT {pfx}{name}: {status} {}", body.trim())));
            }
            Ok(())
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, KeyStoreError>> {
        Box::pin(async move {
            let pfx = self.layout.prefix;
            let url = self.kv_url(name);
            // Consul's DELETE answers `true` whether or not the key existed, so ask first.
            let resp = self
                .send(
                    self.request(reqwest::Method::GET, &url)
                        .timeout(REQUEST_TIMEOUT),
                )
                .await?;
            match resp.status() {
                reqwest::StatusCode::NOT_FOUND => return Ok(false),
                s if s.is_success() => {}
                s => return Err(self.unavailable(format!("GET {pfx}{name}: {s}"))),
            }
            let resp = self
                .send(
                    self.request(reqwest::Method::DELETE, &url)
                        .timeout(REQUEST_TIMEOUT),
                )
                .await?;
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            if !status.is_success() || body.trim() != "true" {
                return Err(
                    self.unavailable(format!("DELETE {pfx}{name}: {status} {}", body.trim()))
                );
            }
            Ok(true)
        })
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error with its sources (`error sending request: connection refused`), since
/// reqwest's top-level message alone rarely says what went wrong.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let message = s.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let s = ConsulStore::new("127.0.0.1:8500", None).unwrap();
        assert_eq!(s.describe(), "consul http://127.0.0.1:8500");
        let s = ConsulStore::new("https://consul.example:8501/", Some(String::new())).unwrap();
        assert_eq!(s.base, "https://consul.example:8501");
        assert!(s.token.is_none());
        assert!(ConsulStore::new("unix:///tmp/consul.sock", None).is_err());
        assert_eq!(
            s.kv_url("a b/c"),
            "https://consul.example:8501/v1/kv/polymur/gateway/keys/a%20b%2Fc"
        );
    }
}
