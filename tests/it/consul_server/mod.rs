//! An in-test Consul agent: the subset of Consul's KV HTTP API that polymur uses,
//! implemented after Consul's documentation (`/v1/kv`, blocking queries, ACL tokens).
//!
//! No Consul binary can be installed on these machines, so the Consul client is tested
//! against this. What it models, as real Consul does it:
//! - `GET /v1/kv/<key>` and `?recurse`: a JSON array of `{LockIndex, Key, Flags, Value,
//!   CreateIndex, ModifyIndex}` with `Value` base64 (`null` when empty), `?raw` for the
//!   bare value, `404` with an empty body when nothing matches;
//! - `X-Consul-Index` on every read: for a listing the highest `ModifyIndex` under the
//!   prefix or the index of the last delete under it, else the KV table index; never 0;
//! - blocking queries `?index=N&wait=D`: held until that index exceeds `N` or `wait`
//!   (default 5 min, at most 10 min) passes; no jitter, unlike Consul;
//! - `PUT` (body = raw value, `?flags=`, `?cas=`) and `DELETE` (`?recurse`, `?cas=`),
//!   answering `true`/`false`;
//! - ACLs when started with a token: an unknown token gets `403 ACL not found`; no token
//!   (anonymous, default deny) gets `403 Permission denied` on single keys and writes,
//!   while a listing is filtered to nothing (so `404`) with
//!   `X-Consul-Results-Filtered-By-ACLs: true`. The token is read from `X-Consul-Token`,
//!   `Authorization: Bearer` or `?token=`.
//!
//! It runs on its own thread and runtime, so both sync and async tests can use it, and
//! can be stopped and restarted on the same port (with its data) to simulate an outage.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// One request as the server saw it, for asserting what the client sent.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    /// The ACL token, from whichever place it came.
    pub token: Option<String>,
}

#[derive(Clone)]
struct Entry {
    value: Vec<u8>,
    flags: u64,
    create_index: u64,
    modify_index: u64,
}

#[derive(Default)]
struct State {
    /// The KV table's index: the raft index of its last write.
    index: u64,
    entries: BTreeMap<String, Entry>,
    /// Deleted key → raft index of its deletion (Consul's graveyard).
    tombstones: BTreeMap<String, u64>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every write, to wake blocking queries.
    writes: tokio::sync::watch::Sender<u64>,
    token: Option<String>,
    requests: Mutex<Vec<RecordedRequest>>,
}

struct Running {
    thread: JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

/// The fake agent. Stopped on drop.
pub struct ConsulServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    running: Option<Running>,
}

impl ConsulServer {
    /// An agent without ACLs, on a free loopback port.
    pub fn start() -> ConsulServer {
        Self::launch(None)
    }

    /// An agent that accepts only `token` (ACLs on, default deny).
    pub fn start_with_token(token: &str) -> ConsulServer {
        Self::launch(Some(token.to_string()))
    }

    fn launch(token: Option<String>) -> ConsulServer {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                // Consul's raft log never starts empty; neither does ours.
                index: 5,
                ..State::default()
            }),
            writes: tokio::sync::watch::channel(0).0,
            token,
            requests: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let mut server = ConsulServer {
            shared,
            addr,
            running: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let shared = self.shared.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for the Consul test server");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let stream = tokio::select! {
                        r = listener.accept() => match r {
                            Ok((s, _)) => s,
                            Err(_) => continue,
                        },
                        _ = &mut stopped => return,
                    };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(handle(&shared, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            // Dropping the runtime here drops every connection task: an abrupt outage
            // for clients, including those held in a blocking query.
        });
        self.running = Some(Running { thread, stop });
    }

    /// `127.0.0.1:<port>`, as `CONSUL_HTTP_ADDR` takes it.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a key directly (as another Consul client would).
    pub fn put(&self, key: &str, value: &str) {
        put(&self.shared, key, value.as_bytes(), 0, None);
    }

    /// Deletes a key directly.
    pub fn delete(&self, key: &str) {
        delete(&self.shared, key, false, None);
    }

    /// The value of a key, if set.
    pub fn get(&self, key: &str) -> Option<String> {
        let state = self.shared.state.lock().unwrap();
        state
            .entries
            .get(key)
            .map(|e| String::from_utf8_lossy(&e.value).into_owned())
    }

    /// Every `(key, value)` under `prefix`.
    pub fn list(&self, prefix: &str) -> Vec<(String, String)> {
        let state = self.shared.state.lock().unwrap();
        state
            .entries
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| (k.clone(), String::from_utf8_lossy(&e.value).into_owned()))
            .collect()
    }

    /// The KV table index (the `X-Consul-Index` of an unfiltered read).
    pub fn index(&self) -> u64 {
        self.shared.state.lock().unwrap().index
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Forgets every key and resets the index to 1, as a Consul cluster rebuilt from
    /// scratch would: clients see `X-Consul-Index` go backwards.
    pub fn wipe(&self) {
        {
            let mut state = self.shared.state.lock().unwrap();
            *state = State {
                index: 1,
                ..State::default()
            };
        }
        self.shared.writes.send_modify(|n| *n += 1);
    }

    /// Stops serving: the port refuses connections and open ones are cut. Keys are kept.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(());
            let _ = running.thread.join();
        }
    }

    /// Serves again on the same port, with the same keys and index.
    pub fn restart(&mut self) {
        self.stop();
        // The old listener is closed; retry briefly in case the kernel lags.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match std::net::TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

impl Drop for ConsulServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Applies a PUT; returns false when a `cas` check fails.
fn put(shared: &Shared, key: &str, value: &[u8], flags: u64, cas: Option<u64>) -> bool {
    {
        let mut state = shared.state.lock().unwrap();
        let existing = state.entries.get(key).cloned();
        match (cas, &existing) {
            (Some(0), Some(_)) => return false,
            (Some(n), Some(e)) if n != 0 && e.modify_index != n => return false,
            (Some(n), None) if n != 0 => return false,
            _ => {}
        }
        state.index += 1;
        let index = state.index;
        state.tombstones.remove(key);
        state.entries.insert(
            key.to_string(),
            Entry {
                value: value.to_vec(),
                flags,
                create_index: existing.map_or(index, |e| e.create_index),
                modify_index: index,
            },
        );
    }
    shared.writes.send_modify(|n| *n += 1);
    true
}

/// Applies a DELETE; returns false when a `cas` check fails. Deleting nothing is a
/// success that changes nothing (no index bump), as in Consul.
fn delete(shared: &Shared, key: &str, recurse: bool, cas: Option<u64>) -> bool {
    {
        let mut state = shared.state.lock().unwrap();
        if let Some(n) = cas {
            match state.entries.get(key) {
                Some(e) if e.modify_index == n => {}
                None if n == 0 => return true,
                _ => return false,
            }
        }
        let doomed: Vec<String> = if recurse {
            state
                .entries
                .keys()
                .filter(|k| k.starts_with(key))
                .cloned()
                .collect()
        } else {
            state
                .entries
                .keys()
                .filter(|k| *k == key)
                .cloned()
                .collect()
        };
        if doomed.is_empty() {
            return true;
        }
        state.index += 1;
        let index = state.index;
        for k in doomed {
            state.entries.remove(&k);
            state.tombstones.insert(k, index);
        }
    }
    shared.writes.send_modify(|n| *n += 1);
    true
}

/// Answer to a read: the index it reflects, and the matching entries.
fn read(state: &State, key: &str, recurse: bool) -> (u64, Vec<(String, Entry)>) {
    if !recurse {
        let entries = state
            .entries
            .get(key)
            .map(|e| vec![(key.to_string(), e.clone())])
            .unwrap_or_default();
        return (state.index.max(1), entries);
    }
    let entries: Vec<(String, Entry)> = state
        .entries
        .iter()
        .filter(|(k, _)| k.starts_with(key))
        .map(|(k, e)| (k.clone(), e.clone()))
        .collect();
    let mut index = entries
        .iter()
        .map(|(_, e)| e.modify_index)
        .max()
        .unwrap_or(0);
    let graveyard = state
        .tombstones
        .iter()
        .filter(|(k, _)| k.starts_with(key))
        .map(|(_, i)| *i)
        .max()
        .unwrap_or(0);
    index = index.max(graveyard);
    if index == 0 {
        index = state.index;
    }
    (index.max(1), entries)
}

fn response(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let query = parse_query(uri.query().unwrap_or(""));
    let token = req
        .headers()
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            req.headers()
                .get("Authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string)
        })
        .or_else(|| query.get("token").cloned())
        .filter(|t| !t.is_empty());
    shared.requests.lock().unwrap().push(RecordedRequest {
        method: method.to_string(),
        uri: uri.to_string(),
        token: token.clone(),
    });

    let Some(key) = uri.path().strip_prefix("/v1/kv/") else {
        return response(StatusCode::NOT_FOUND, "");
    };
    let key = percent_decode(key);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return response(StatusCode::BAD_REQUEST, ""),
    };
    let recurse = query.contains_key("recurse");

    // ACLs: an unknown token is an error; anonymous may not read or write, but a
    // listing is filtered rather than refused.
    let mut filtered = false;
    if let Some(required) = &shared.token {
        match &token {
            Some(t) if t == required => {}
            Some(_) => return response(StatusCode::FORBIDDEN, "ACL not found"),
            None if method == Method::GET && recurse => filtered = true,
            None => return response(StatusCode::FORBIDDEN, "Permission denied"),
        }
    }

    let num = |name: &str| query.get(name).and_then(|v| v.parse::<u64>().ok());
    match method {
        Method::GET => {
            let min_index = num("index").unwrap_or(0);
            let wait = query
                .get("wait")
                .and_then(|w| parse_go_duration(w))
                .unwrap_or(Duration::from_secs(300))
                .min(Duration::from_secs(600));
            let deadline = tokio::time::Instant::now() + wait;
            let mut writes = shared.writes.subscribe();
            let (index, entries) = loop {
                let (index, entries) = read(&shared.state.lock().unwrap(), &key, recurse);
                if min_index == 0 || index > min_index {
                    break (index, entries);
                }
                tokio::select! {
                    r = writes.changed() => { if r.is_err() { break (index, entries); } }
                    _ = tokio::time::sleep_until(deadline) => {
                        break read(&shared.state.lock().unwrap(), &key, recurse);
                    }
                }
            };
            let entries = if filtered { Vec::new() } else { entries };
            let mut resp = if entries.is_empty() {
                response(StatusCode::NOT_FOUND, "")
            } else if query.contains_key("raw") {
                response(StatusCode::OK, entries[0].1.value.clone())
            } else {
                let json: Vec<serde_json::Value> = entries
                    .iter()
                    .map(|(k, e)| {
                        let value = if e.value.is_empty() {
                            serde_json::Value::Null
                        } else {
                            base64::engine::general_purpose::STANDARD
                                .encode(&e.value)
                                .into()
                        };
                        serde_json::json!({
                            "LockIndex": 0,
                            "Key": k,
                            "Flags": e.flags,
                            "Value": value,
                            "CreateIndex": e.create_index,
                            "ModifyIndex": e.modify_index,
                        })
                    })
                    .collect();
                let mut r = response(StatusCode::OK, serde_json::to_vec(&json).unwrap());
                r.headers_mut()
                    .insert("Content-Type", "application/json".parse().unwrap());
                r
            };
            let headers = resp.headers_mut();
            headers.insert("X-Consul-Index", index.to_string().parse().unwrap());
            headers.insert("X-Consul-Knownleader", "true".parse().unwrap());
            headers.insert("X-Consul-Lastcontact", "0".parse().unwrap());
            if filtered {
                headers.insert("X-Consul-Results-Filtered-By-ACLs", "true".parse().unwrap());
            }
            resp
        }
        Method::PUT => {
            let ok = put(shared, &key, &body, num("flags").unwrap_or(0), num("cas"));
            response(StatusCode::OK, if ok { "true" } else { "false" })
        }
        Method::DELETE => {
            let ok = delete(shared, &key, recurse, num("cas"));
            response(StatusCode::OK, if ok { "true" } else { "false" })
        }
        _ => response(StatusCode::METHOD_NOT_ALLOWED, ""),
    }
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Go's `time.ParseDuration` for what Consul clients send: `10s`, `500ms`, `1m30s`;
/// a bare number is seconds, as Consul accepts it.
fn parse_go_duration(s: &str) -> Option<Duration> {
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(n * scale);
    }
    Some(total)
}
