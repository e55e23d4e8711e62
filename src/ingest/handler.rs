//! The `/ping` and `/ingest` routes, with the exact answers of the Go original.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCEPT_ENCODING, ALLOW, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_TYPE, RETRY_AFTER,
};
use hyper::{Method, Request, Response, StatusCode};

use super::encoding::{self, Encoding};
use super::inflate::InflateError;
use super::Ingest;
use crate::batch::Batch;
use crate::keys::cache::Tenant;
use crate::keys::fingerprint;
use crate::pipeline::{TenantRefused, ADMIT_WAIT};

/// How long a request waits for the decode budget, in arrival order, before its 503:
/// the `Retry-After` of that 503, so a client that waits is never later than one that
/// was refused and came back. While it waits it holds only its compressed body.
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Bodies at least this large are decompressed on the blocking pool so a big
/// batch never stalls other connections on the same runtime thread.
const BLOCKING_THRESHOLD: usize = 256 * 1024;

/// Every answer: a small, complete body.
pub type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A reply after which the connection is closed (bad key, unread body).
fn reply_close(status: StatusCode, body: &'static str) -> Resp {
    let mut r = reply(status, body);
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The client address for logs: `X-Forwarded-For`'s first entry when present
/// (a load balancer in front), else the peer. Never used for any decision.
fn client(req: &Request<Incoming>, peer: SocketAddr) -> String {
    req.headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| peer.ip().to_string())
}

/// Serves one request.
pub async fn handle(
    state: Arc<Ingest>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    // A gateway URL configured with a trailing slash makes clients ask for `//ingest`:
    // extra leading slashes name the same route.
    let path = match req.uri().path().trim_start_matches('/') {
        "ping" => "/ping",
        "ingest" => "/ingest",
        _ => return Ok(reply(StatusCode::NOT_FOUND, "404 page not found\n")),
    };
    if req.method() != Method::POST {
        // Both routes only take POST: say so, so that a `GET` from a browser or a
        // health check cannot be mistaken for an accepted batch.
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "405 method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return Ok(r);
    }
    let client = client(&req, peer);
    let presented = req
        .headers()
        .get("x-polymur-key")
        .map(|v| v.as_bytes().to_vec());
    let tenant = presented.as_deref().and_then(|k| state.keys.tenant(k));
    let Some(tenant) = tenant else {
        state.http.unauthorized.fetch_add(1, Ordering::Relaxed);
        let fp = presented
            .as_deref()
            .map(fingerprint)
            .unwrap_or_else(|| "none".into());
        tracing::warn!("Invalid key from {client} (key fingerprint {fp}) on {path}");
        return Ok(reply_close(StatusCode::UNAUTHORIZED, "invalid key"));
    };
    if path == "/ping" {
        tracing::info!("Ping from {client} with key {}: key is valid", tenant.name);
        return Ok(advertise(reply(StatusCode::OK, "key is valid\n")));
    }
    Ok(ingest(state, req, (&client, peer.ip()), &tenant).await)
}

/// `POST /ingest` with a valid key: body, a place in the decode budget's line, a check
/// for destination room, decode, then admission to the destinations. Each step answers
/// its own refusal. `client` is the client as logged and `peer` the connection's peer
/// address (what a `file ip` cluster writes: the peer, never a header a client could set).
async fn ingest(
    state: Arc<Ingest>,
    req: Request<Incoming>,
    (client, peer): (&str, std::net::IpAddr),
    tenant: &Tenant,
) -> Resp {
    let name: &str = &tenant.name;
    let coding = req.headers().get(CONTENT_ENCODING).cloned();
    let body = match read_body(&state, req, client, name).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let arrived = tokio::time::Instant::now();
    let enc = match Encoding::of(coding.as_ref().map(|v| v.as_bytes()), &body) {
        Ok(enc) => enc,
        Err(unsupported) => {
            state.http.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("Batch from {client} (key {name}) refused: {unsupported}");
            return advertise(reply(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported Content-Encoding\n",
            ));
        }
    };
    let (batch, rejects, _reservation) =
        match decode_reserved(&state, enc, body, client, name, arrived + BUDGET_WAIT).await {
            Ok((batch, rejects, reservation)) => (batch.with_source(peer), rejects, reservation),
            Err(resp) => return resp,
        };
    // The wait for the budget was this batch's turn in line; the destinations get
    // their own admission wait from now.
    let admit_by = tokio::time::Instant::now() + ADMIT_WAIT;
    admit(&state, client, tenant, &batch, &rejects, admit_by).await
}

/// Reads the whole body within `-read-timeout` and `-max-body-bytes`.
async fn read_body(
    state: &Ingest,
    req: Request<Incoming>,
    client: &str,
    name: &str,
) -> Result<Bytes, Resp> {
    let limits = &state.config;
    let too_large = || {
        state.http.too_large.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("Batch from {client} (key {name}) refused: body over -max-body-bytes");
        reply_close(StatusCode::PAYLOAD_TOO_LARGE, "Batch Too Large\n")
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), limits.max_body_bytes);
    // Reserved up front up to 1 MiB: a client declaring more grows the buffer by
    // sending it, not by saying so.
    let expected = declared.unwrap_or(0).min(1 << 20) as usize;
    match tokio::time::timeout(limits.read_timeout, collect(body, expected)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(e)) => {
            tracing::warn!("Batch from {client} (key {name}): reading body failed: {e}");
            Err(reply_close(StatusCode::BAD_REQUEST, "Batch Malformed\n"))
        }
        Err(_) => {
            tracing::warn!(
                "Batch from {client} (key {name}): body not received within the read timeout"
            );
            Err(reply_close(
                StatusCode::REQUEST_TIMEOUT,
                "Request Timeout\n",
            ))
        }
    }
}

/// The body in one buffer of its declared length: hyper's chunks are views of its
/// read buffer, and collecting them as a list kept every one of those buffers alive
/// until the final copy (about 100 KiB more per client reading a 66 KB body).
async fn collect(
    mut body: Limited<Incoming>,
    expected: usize,
) -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
    let mut buf = Vec::with_capacity(expected);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// A decoded batch, its rejected lines, and the decode budget it holds until admitted.
type Decoded<'a> = (Batch, crate::batch::Rejects, super::BudgetPermit<'a>);

/// Decodes within a decode-budget reservation taken in arrival order by `budget_by`
/// (a client waiting for the budget holds only its compressed body). A body whose
/// size claim is only a hint (several gzip members) reserves up to the cap and
/// decodes again, so the budget bounds memory whatever the body says.
async fn decode_reserved<'a>(
    state: &'a Ingest,
    enc: Encoding,
    body: Bytes,
    client: &str,
    name: &str,
    budget_by: tokio::time::Instant,
) -> Result<Decoded<'a>, Resp> {
    let limits = &state.config;
    let (max, rules) = (limits.max_batch_bytes, limits.rules);
    let claim = enc.claim(&body, max);
    let prefix = limits.key_prefix.then(|| name.to_string());
    let big = body.len() >= BLOCKING_THRESHOLD;
    let busy = || budget_spent(state, client, name);
    let mut reservation = state
        .decode_budget
        .reserve_by(claim.bytes, budget_by)
        .await
        .ok_or_else(busy)?;
    // A full queue usually drains within a write or two: admission waits briefly for room
    // before the answer is 503, so a busy destination slows clients down instead of bouncing
    // them. A batch every destination must take, while one of them takes nothing, is refused
    // before spending the CPU to decompress it. Only budget holders wait here, so the
    // clients behind them keep their order in the budget's line.
    let room_by = tokio::time::Instant::now() + ADMIT_WAIT;
    if let Err(refused) = state.pipeline.room_by(room_by).await {
        // Counted per tenant too: "queue full" is the refusal fair shares are to spare it.
        let counters = &state.tenants.get(name).counters;
        counters.refused_full.fetch_add(1, Ordering::Relaxed);
        return Err(refuse(state, client, name, &refused));
    }
    let mut decoded = decode(enc, body.clone(), claim.bytes, prefix.clone(), big, rules).await;
    if matches!(decoded, Some(Err(InflateError::TooLarge(_)))) && !claim.exact && claim.bytes < max
    {
        drop(reservation);
        reservation = state
            .decode_budget
            .reserve_by(max, budget_by)
            .await
            .ok_or_else(busy)?;
        decoded = decode(enc, body, max, prefix, big, rules).await;
    }
    match decoded {
        None => Err(reply(StatusCode::INTERNAL_SERVER_ERROR, "Internal Error\n")),
        Some(Ok((batch, rejects))) => Ok((batch, rejects, reservation)),
        Some(Err(InflateError::TooLarge(_))) => {
            state.http.too_large.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "Batch from {client} (key {name}) refused: decompresses past -max-batch-bytes"
            );
            Err(reply(StatusCode::PAYLOAD_TOO_LARGE, "Batch Too Large\n"))
        }
        Some(Err(InflateError::Malformed(e))) => {
            state.http.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("Batch from {client} (key {name}) malformed: {e}");
            Err(reply(StatusCode::BAD_REQUEST, "Batch Malformed\n"))
        }
    }
}

/// Counts the rejected lines, then admits the batch to the destinations by `admit_by`.
async fn admit(
    state: &Ingest,
    client: &str,
    tenant: &Tenant,
    batch: &Batch,
    rejects: &crate::batch::Rejects,
    admit_by: tokio::time::Instant,
) -> Resp {
    let name: &str = &tenant.name;
    let quotas = state.tenants.get(name);
    if rejects.count > 0 {
        state
            .pipeline
            .stats()
            .note_invalid(&format!("key {name} ({client})"), rejects);
        quotas
            .counters
            .dropped_invalid
            .fetch_add(rejects.count, Ordering::Relaxed);
    }
    let added = state.config.key_prefix.then_some(name);
    let held = state
        .pipeline
        .admit_tenant(&state.tenants, &quotas, batch, added, admit_by)
        .await;
    match held {
        Ok((crate::pipeline::Held, points)) => {
            tenant.received.fetch_add(points, Ordering::Relaxed);
            tracing::debug!("Batch from {client} (key {name}): {points} points");
            advertise(reply(StatusCode::OK, "Batch Received\n"))
        }
        Err(TenantRefused::Quota(q)) => super::quota::over_quota(client, name, &q),
        Err(TenantRefused::Fair(f)) => super::quota::over_share(client, name, &f),
        Err(TenantRefused::Full(refused)) => refuse(state, client, name, &refused),
    }
}

/// `503` + `Retry-After` when the decode budget stayed spent for [`BUDGET_WAIT`]: every
/// byte of it is held by batches ahead of this one (decoding, or waiting for
/// destination room), so the gateway is saturated and the proxy retries.
fn budget_spent(state: &Ingest, client: &str, name: &str) -> Resp {
    state.http.budget_spent.fetch_add(1, Ordering::Relaxed);
    state
        .pipeline
        .stats()
        .refused
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        "Batch from {client} (key {name}) refused: decode budget spent for {BUDGET_WAIT:?}"
    );
    busy_reply()
}

/// `503` + `Retry-After`: the batch cannot be held now; the proxy retries it.
fn refuse(state: &Ingest, client: &str, name: &str, refused: &crate::pipeline::Refused) -> Resp {
    state
        .pipeline
        .stats()
        .refused
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!("Batch from {client} (key {name}) refused: {refused}");
    busy_reply()
}

/// The 503 the proxy retries after a second.
fn busy_reply() -> Resp {
    let mut r = reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "Batch Refused: destination queue full, retry later\n",
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Adds `Accept-Encoding: zstd, gzip`: a proxy set to `-compression auto` sends zstd
/// once it has seen it (the original Go gateway sends no such header, so gzip stays).
fn advertise(mut r: Resp) -> Resp {
    r.headers_mut().insert(
        ACCEPT_ENCODING,
        HeaderValue::from_static(encoding::ACCEPTED),
    );
    r
}

/// Decompresses and validates a body of at most `limit` decompressed bytes, on the
/// blocking pool when it is large. `None` if the blocking task died.
async fn decode(
    enc: Encoding,
    body: Bytes,
    limit: usize,
    prefix: Option<String>,
    blocking: bool,
    rules: crate::line::LineRules,
) -> Option<Result<(Batch, crate::batch::Rejects), InflateError>> {
    let work = move || -> Result<_, InflateError> {
        let raw = enc.decode(&body, limit)?;
        Ok(Batch::build(raw, prefix.as_deref(), &rules))
    };
    if blocking {
        tokio::task::spawn_blocking(work).await.ok()
    } else {
        Some(work())
    }
}
