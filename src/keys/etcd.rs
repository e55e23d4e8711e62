//! etcd v3 store, spoken through etcd's official JSON gateway (`/v3/kv/*`, `/v3/watch`)
//! on the client port.
//!
//! The gRPC client crate needs `protoc` at build time, and the README's build must work
//! with just the Rust toolchain; the gateway gives the same operations over the HTTP
//! client we already have. Keys and values are base64 in that API.
//!
//! [`KeyStore::load`] reads the prefix and remembers the store revision it saw;
//! [`KeyStore::changed`] watches the prefix from the next revision, so a change made
//! while we were not watching (even during an outage) is still noticed.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::consul::error_chain;
use super::StoreErrors as _;
use super::{b64_decode, b64_encode, BoxFuture, KeySet, KeyStore, KeyStoreError};

/// Timeout of one unary request to one endpoint.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for an etcd cluster given by its client URLs.
pub struct EtcdStore {
    /// `http(s)://host:port`, no trailing slash.
    endpoints: Vec<String>,
    /// Index of the endpoint that answered last; requests start there, and move on
    /// to the next one when it fails.
    current: AtomicUsize,
    client: reqwest::Client,
    /// Store revision of the last successful `load` (0: none yet).
    revision: AtomicI64,
    /// The KV prefix read and how values are checked (the keys, or the tenants' documents).
    layout: super::Layout,
}

impl EtcdStore {
    /// The same cluster, reading `layout` (e.g. the tenants' documents) instead of the keys.
    pub fn with_layout(mut self, layout: super::Layout) -> Self {
        self.layout = layout;
        self
    }

    /// A store over `endpoints` (`http://host:port`, `https://...`, or bare
    /// `host:port`, which means http). At least one is required.
    pub fn new(endpoints: Vec<String>) -> Result<Self, KeyStoreError> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| e.trim().trim_end_matches('/'))
            .filter(|e| !e.is_empty())
            .map(|e| {
                if e.contains("://") {
                    e.to_string()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        let store = format!("etcd {}", endpoints.join(","));
        if endpoints.is_empty() {
            return Err(KeyStoreError::Invalid {
                store,
                message: "no endpoint given (-etcd-endpoints)".into(),
            });
        }
        if let Some(bad) = endpoints
            .iter()
            .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            return Err(KeyStoreError::Invalid {
                store,
                message: format!("endpoint {bad}: only http:// and https:// are supported"),
            });
        }
        let client = super::http_client(&store, None)?;
        Ok(EtcdStore {
            endpoints,
            current: AtomicUsize::new(0),
            client,
            revision: AtomicI64::new(0),
            layout: super::KEYS,
        })
    }

    /// POSTs `body` to `path` on the current endpoint, then on each other one until
    /// one answers. Returns the endpoint's response, whatever its status.
    async fn post(
        &self,
        path: &str,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, KeyStoreError> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let url = format!("{}{path}", self.endpoints[idx]);
            let mut req = self.client.post(&url).json_body(body);
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            match req.send().await {
                // A 5xx is this member's trouble (no leader, shutting down): try another.
                Ok(resp) if resp.status().is_server_error() => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    errors.push(format!("{url}: {status} {}", text.trim()));
                }
                Ok(resp) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) => errors.push(format!("{url}: {}", error_chain(&e))),
            }
        }
        Err(self.unavailable(errors.join("; ")))
    }

    /// A unary call: POST, then parse the JSON answer (an error status is an error).
    async fn call(&self, path: &str, body: Value) -> Result<Value, KeyStoreError> {
        let resp = self.post(path, &body, Some(REQUEST_TIMEOUT)).await?;
        let bytes = self.success_body(path, resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| self.invalid(format!("{path}: {e}")))
    }

    /// The watch body of [`KeyStore::changed`] on one connection: returns `Ok(true)` when
    /// the prefix changed (or the watch was cancelled, e.g. compacted history, which
    /// also calls for a full read), `Ok(false)` if the stream ended without news.
    async fn watch_once(&self, start_revision: i64) -> Result<bool, KeyStoreError> {
        let mut create = json!({
            "key": b64_encode(self.layout.prefix.as_bytes()),
            "range_end": b64_encode(&prefix_end(self.layout.prefix.as_bytes())),
        });
        if start_revision > 0 {
            create["start_revision"] = json!(start_revision.to_string());
        }
        // No timeout here: the caller bounds the whole watch by `max_wait`.
        let mut resp = self
            .post("/v3/watch", &json!({ "create_request": create }), None)
            .await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(self.unavailable(format!("/v3/watch: {status} {}", text.trim())));
        }
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| self.unavailable(format!("watch stream: {}", error_chain(&e))))?;
            let Some(chunk) = chunk else {
                return Ok(false);
            };
            buf.extend_from_slice(&chunk);
            // The gateway writes one JSON object per message; a chunk may hold several
            // or end mid-object, so parse what is complete and keep the rest.
            let mut stream = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
            let mut consumed = 0;
            while let Some(msg) = stream.next() {
                match msg {
                    Ok(msg) => {
                        consumed = stream.byte_offset();
                        if self.watch_message_says_changed(&msg)? {
                            return Ok(true);
                        }
                    }
                    Err(e) if e.is_eof() => break,
                    Err(e) => return Err(self.invalid(format!("watch stream: {e}"))),
                }
            }
            buf.drain(..consumed);
        }
    }

    fn watch_message_says_changed(&self, msg: &Value) -> Result<bool, KeyStoreError> {
        if let Some(err) = msg.get("error") {
            return Err(self.unavailable(format!("watch: {err}")));
        }
        let Some(result) = msg.get("result") else {
            return Ok(false);
        };
        let events = result
            .get("events")
            .and_then(Value::as_array)
            .is_some_and(|e| !e.is_empty());
        let canceled = result.get("canceled").and_then(Value::as_bool) == Some(true);
        let compacted = int_field(result, "compact_revision") > 0;
        Ok(events || canceled || compacted)
    }
}

impl KeyStore for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd {}", self.endpoints.join(","))
    }

    fn load(&self) -> BoxFuture<'_, Result<KeySet, KeyStoreError>> {
        Box::pin(async move {
            let resp = self
                .call(
                    "/v3/kv/range",
                    json!({
                        "key": b64_encode(self.layout.prefix.as_bytes()),
                        "range_end": b64_encode(&prefix_end(self.layout.prefix.as_bytes())),
                    }),
                )
                .await?;
            let revision = resp.get("header").map_or(0, |h| int_field(h, "revision"));
            let mut set = KeySet::new();
            for kv in resp
                .get("kvs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let field = |name: &str| -> Result<Vec<u8>, KeyStoreError> {
                    let text = kv.get(name).and_then(Value::as_str).unwrap_or_default();
                    b64_decode(text).map_err(|e| self.invalid(format!("kvs.{name}: {e}")))
                };
                let key = String::from_utf8_lossy(&field("key")?).into_owned();
                let Some(name) = key.strip_prefix(self.layout.prefix) else {
                    continue;
                };
                if name.is_empty() || name.contains('/') {
                    tracing::warn!("Ignoring etcd entry {key}: not a key name");
                    continue;
                }
                match String::from_utf8(field("value")?) {
                    Ok(value) if self.layout.usable(&value) => {
                        set.insert(name.to_string(), value);
                    }
                    _ => tracing::warn!(
                        "Ignoring etcd entry {key}: the value is empty, not UTF-8 or contains whitespace"
                    ),
                }
            }
            self.revision.store(revision, Ordering::Relaxed);
            Ok(set)
        })
    }

    fn changed(&self, max_wait: Duration) -> BoxFuture<'_, Result<(), KeyStoreError>> {
        Box::pin(async move {
            let deadline = Instant::now() + max_wait;
            let revision = self.revision.load(Ordering::Relaxed);
            // From the revision after the last load: whatever happened since (also
            // during an outage) arrives as the first events.
            let start = if revision > 0 { revision + 1 } else { 0 };
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                match tokio::time::timeout(left, self.watch_once(start)).await {
                    Err(_elapsed) => return Ok(()),
                    Ok(Ok(true)) => return Ok(()),
                    Ok(Err(e)) => return Err(e),
                    // The member closed the stream without news (e.g. it is shutting
                    // down): pause briefly so a flapping member is not hammered, then
                    // watch again, possibly on another endpoint.
                    Ok(Ok(false)) => {
                        tokio::time::sleep(Duration::from_millis(200).min(left)).await;
                    }
                }
            }
        })
    }

    fn put<'a>(&'a self, name: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), KeyStoreError>> {
        Box::pin(async move {
            let pfx = self.layout.prefix;
            self.call(
                "/v3/kv/put",
                json!({
                    "key": b64_encode(format!("{pfx}{name}").as_bytes()),
                    "value": b64_encode(key.as_bytes()),
                }),
            )
            .await?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, KeyStoreError>> {
        Box::pin(async move {
            let pfx = self.layout.prefix;
            let resp = self
                .call(
                    "/v3/kv/deleterange",
                    json!({ "key": b64_encode(format!("{pfx}{name}").as_bytes()) }),
                )
                .await?;
            Ok(int_field(&resp, "deleted") > 0)
        })
    }
}

/// The `range_end` that selects every key starting with `prefix` (etcd's rule: the
/// prefix with its last byte below 0xff incremented, bytes after it dropped).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// An int64 field; the gateway writes them as JSON strings (`"revision": "42"`),
/// and leaves out those that are zero.
fn int_field(obj: &Value, name: &str) -> i64 {
    match obj.get(name) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// `RequestBuilder::json` needs reqwest's `json` feature; a serialized body with the
/// content type set is the same request.
trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.header("Content-Type", "application/json")
            .body(body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn endpoints() {
        let s = EtcdStore::new(vec![
            "127.0.0.1:2379".into(),
            " http://127.0.0.1:22379/ ".into(),
        ])
        .unwrap();
        assert_eq!(
            s.describe(),
            "etcd http://127.0.0.1:2379,http://127.0.0.1:22379"
        );
        assert!(EtcdStore::new(vec![]).is_err());
        assert!(EtcdStore::new(vec!["unix:///x".into()]).is_err());
        let msg = serde_json::json!({"result": {"header": {"revision": "3"}, "created": true}});
        assert!(!s.watch_message_says_changed(&msg).unwrap());
        let msg = serde_json::json!({"result": {"events": [{"kv": {}}]}});
        assert!(s.watch_message_says_changed(&msg).unwrap());
        assert_eq!(
            int_field(&serde_json::json!({"deleted": "1"}), "deleted"),
            1
        );
    }
}
