//! The answers to a tenant's batch refused at admission: `429` over a quota (with the
//! seconds until its bucket allows the batch), `503` over its fair share. Both say
//! "retry later" to polymur-proxy, which keeps the batch and honours `Retry-After`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::tenants::{fair::FairRefusal, QuotaExceeded};

fn answer(status: StatusCode, body: String, retry_after: u64) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after));
    r
}

/// `429 Too Many Requests`, naming the limit; nothing of the batch was kept.
pub fn over_quota(client: &str, name: &str, q: &QuotaExceeded) -> Response<Full<Bytes>> {
    tracing::warn!("Batch from {client} (key {name}) refused: {q}");
    let body = format!(
        "Batch Refused: key {name} over quota {}={}, retry after {} s\n",
        q.limit,
        q.value,
        q.retry_after_secs()
    );
    answer(StatusCode::TOO_MANY_REQUESTS, body, q.retry_after_secs())
}

/// `503` for a tenant holding its fair share of a destination queue already.
pub fn over_share(client: &str, name: &str, f: &FairRefusal) -> Response<Full<Bytes>> {
    tracing::warn!("Batch from {client} (key {name}) refused: {f}");
    let body = format!("Batch Refused: key {name} {f}, retry later\n");
    answer(StatusCode::SERVICE_UNAVAILABLE, body, 1)
}
