//! The HTTPS sink: `-workers` concurrent writers POST compressed batches to
//! `<gateway>/ingest` with `X-Polymur-Key`, over kept-alive HTTP/1.1 connections.
//!
//! The old proxy sent each batch once and forgot it, so every gateway restart lost data
//! at every site. Here a batch leaves its destination ([`super::writer`]) only when the
//! gateway answered 200 (which our gateway sends once the batch is held for every
//! destination), or when it
//! answered 400/413 (that batch can never succeed: dropped, counted and logged). A 413
//! (the batch is over the gateway's `-max-body-bytes` or `-max-batch-bytes`) is first
//! answered by sending the batch again as two halves, down to a single line, so a
//! `-flush-size` larger than the gateway takes costs requests, not data:
//! - network errors, 5xx (503 when the gateway's queues are full) and other answers are
//!   retried with exponential backoff and jitter, waiting at least `Retry-After`;
//! - 401 (key revoked or mistyped) pauses every worker, keeps the data, logs loudly and
//!   pings the gateway periodically until the key is accepted again.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::compression::{is_sealed, plain_lines, Codec, Compressor};
use crate::shutdown::Shutdown;

/// The header carrying the API key (the old proxy spelled it `X-polymur-key`; header
/// names are case-insensitive).
pub const KEY_HEADER: &str = "X-Polymur-Key";
/// First retry delay; doubles per attempt up to the configured maximum.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(250);
/// The longest `Retry-After` honoured, so a misconfigured gateway cannot park us for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// What the gateway said to one POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the gateway holds the batch.
    Delivered,
    /// 400 or 415: this batch will never be accepted.
    Rejected(String),
    /// 413: this batch is too large for the gateway; smaller ones may be accepted.
    TooLarge(String),
    /// 401: the key is not (or no longer) valid.
    Unauthorized(String),
    /// Anything else: try again later, not before `after` when given.
    Retry {
        /// Why, for the log.
        why: String,
        /// The gateway's `Retry-After`.
        after: Option<Duration>,
    },
}

/// Counters of the sink, for logs and self-metrics.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Points the gateway acknowledged.
    pub sent: AtomicU64,
    /// Batches acknowledged.
    pub batches: AtomicU64,
    /// Points dropped because the gateway refused their batch for good (400/413).
    pub rejected: AtomicU64,
    /// POSTs that will be retried.
    pub retries: AtomicU64,
    /// Unix time of the last batch the gateway acknowledged (0: none yet).
    pub last_delivered: AtomicU64,
    /// True when the last POST failed with a network error or a retryable answer.
    pub failing: std::sync::atomic::AtomicBool,
}

/// The gateway as seen from the proxy.
pub struct Gateway {
    client: reqwest::Client,
    base: String,
    key: String,
    /// `false` while sending is paused after a 401.
    key_ok: watch::Sender<bool>,
    /// Counters.
    pub stats: SinkStats,
    verbose: bool,
    /// What batches are sealed with; learns from the gateway's `Accept-Encoding`.
    compressor: Arc<Compressor>,
    /// The client's TLS configuration, to find the cause of a failure the HTTP client
    /// could not name ([`crate::http_client::probe_tls`]).
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Short text of a response body for logs (the gateway's messages are one line).
fn body_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.trim().to_string()
}

/// `Retry-After` in seconds (the HTTP-date form is not used by gateways; ignored).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

/// A random factor in [0.5, 1.0): spreads the retries of many proxies after a gateway
/// restart instead of having them all arrive in the same instant.
fn jitter() -> f64 {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    0.5 + (r >> 11) as f64 / (1u64 << 53) as f64 * 0.5
}

/// The pause before retry number `attempt` (0-based).
pub fn retry_delay(attempt: u32, after: Option<Duration>, max: Duration) -> Duration {
    let exp = MIN_RETRY_DELAY
        .saturating_mul(1u32 << attempt.min(20))
        .min(max.max(MIN_RETRY_DELAY));
    let backoff = exp.mul_f64(jitter());
    match after {
        Some(a) => a.max(backoff),
        None => backoff,
    }
}

impl Gateway {
    /// A gateway client for `base` (`https://host:port`) with `key`.
    pub fn new(client: reqwest::Client, base: String, key: String, verbose: bool) -> Arc<Gateway> {
        Self::with_compressor(client, base, key, verbose, Arc::default())
    }

    /// Like [`Gateway::new`], negotiating the compression of `compressor` from the
    /// gateway's answers (see [`super::compression`]).
    pub fn with_compressor(
        client: reqwest::Client,
        base: String,
        key: String,
        verbose: bool,
        compressor: Arc<Compressor>,
    ) -> Arc<Gateway> {
        Self::build(client, base, key, verbose, compressor, None)
    }

    fn build(
        client: reqwest::Client,
        base: String,
        key: String,
        verbose: bool,
        compressor: Arc<Compressor>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            client,
            base,
            key,
            key_ok: watch::channel(true).0,
            stats: SinkStats::default(),
            verbose,
            compressor,
            tls,
        })
    }

    /// Like [`Gateway::with_compressor`], with the TLS configuration of `client`, used to
    /// explain failures the HTTP client reports without a cause.
    pub fn with_tls(
        client: reqwest::Client,
        tls: Arc<rustls::ClientConfig>,
        base: String,
        key: String,
        verbose: bool,
        compressor: Arc<Compressor>,
    ) -> Arc<Gateway> {
        Self::build(client, base, key, verbose, compressor, Some(tls))
    }

    /// One line naming why a request failed: [`crate::http_client::describe`], and when
    /// that finds no cause on an HTTPS gateway, what a TLS session of its own finds.
    pub async fn describe(&self, e: &reqwest::Error) -> String {
        if let Some(why) = crate::http_client::explained(e) {
            return why;
        }
        let raw = crate::http_client::chain(e);
        match &self.tls {
            Some(tls) if !e.is_timeout() => {
                match crate::http_client::probe_tls(tls.clone(), &self.base, PROBE_TIMEOUT).await {
                    // The same one line as when the request's own error names the cause
                    // (the pooled request lost the race with the server's alert).
                    Some(cause) => {
                        tracing::debug!("Gateway {}: {raw}", self.base);
                        cause
                    }
                    None => raw,
                }
            }
            _ => raw,
        }
    }

    /// The compression choice shared with the batcher.
    pub fn compressor(&self) -> Arc<Compressor> {
        self.compressor.clone()
    }

    /// Remembers what a successful answer says the gateway accepts.
    fn note_accepted(&self, headers: &reqwest::header::HeaderMap) {
        let accepted = headers
            .get(reqwest::header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok());
        self.compressor.note_accept_encoding(accepted);
    }

    /// `POST /ping`: the status and body, or the network error.
    pub async fn ping(&self) -> Result<(u16, String), reqwest::Error> {
        let resp = self
            .client
            .post(format!("{}/ping", self.base))
            .header(KEY_HEADER, &self.key)
            .send()
            .await?;
        let status = resp.status().as_u16();
        if status == 200 {
            self.note_accepted(resp.headers());
        }
        let body = resp.bytes().await.unwrap_or_default();
        Ok((status, body_text(&body)))
    }

    /// `POST /ingest` of one compressed batch, with the `Content-Encoding` its magic
    /// says (a zstd batch is re-encoded to gzip for a gateway that does not take zstd).
    pub async fn post(&self, body: Bytes) -> Outcome {
        let (body, codec) = self.compressor.for_gateway(body);
        let resp = self
            .client
            .post(format!("{}/ingest", self.base))
            .header(KEY_HEADER, &self.key)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_ENCODING, codec.content_encoding())
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    why: self.describe(&e).await,
                    after: None,
                }
            }
        };
        let status = resp.status();
        let after = retry_after(resp.headers());
        if status.is_success() {
            self.note_accepted(resp.headers());
        }
        // Read the body even when it is not needed, so the connection can be reused.
        let text = match resp.bytes().await {
            Ok(b) => body_text(&b),
            Err(e) => {
                if status.is_success() {
                    // The answer was 200; a body cut short does not change that.
                    String::new()
                } else {
                    self.describe(&e).await
                }
            }
        };
        match status.as_u16() {
            200..=299 => Outcome::Delivered,
            // A gateway that does not read zstd (at least not any more): gzip from now on,
            // and this batch again, re-encoded.
            415 if codec == Codec::Zstd => {
                self.compressor.note_zstd_refused();
                Outcome::Retry {
                    why: format!("{status} {text}: the gateway does not take zstd"),
                    after: None,
                }
            }
            413 => Outcome::TooLarge(format!("{status} {text}")),
            400 | 415 => Outcome::Rejected(format!("{status} {text}")),
            401 => Outcome::Unauthorized(format!("{status} {text}")),
            _ => Outcome::Retry {
                why: format!("{status} {text}"),
                after,
            },
        }
    }

    /// The gateway's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// False while sending is paused because the gateway refused the key (401).
    pub fn key_ok(&self) -> bool {
        *self.key_ok.borrow()
    }

    /// Waits until sending is allowed (not paused by a 401).
    async fn wait_key_ok(&self) {
        let mut rx = self.key_ok.subscribe();
        let _ = rx.wait_for(|ok| *ok).await;
    }

    /// After a 401: pauses sending, then pings every `every` until the key is valid.
    /// Runs until `stop`; started once per process.
    pub async fn watch_key(
        self: Arc<Self>,
        every: Duration,
        pending: impl Fn() -> u64 + Send,
        mut stop: Shutdown,
    ) {
        let mut rx = self.key_ok.subscribe();
        loop {
            tokio::select! {
                r = rx.wait_for(|ok| !*ok) => if r.is_err() { return },
                _ = stop.recv() => return,
            }
            tracing::error!(
                "Gateway {} refused the API key (401 invalid key): sending PAUSED, {} points kept; checking the key again every {every:?}",
                self.base,
                pending()
            );
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.recv() => return,
                }
                match self.ping().await {
                    Ok((200, _)) => {
                        tracing::info!("Gateway {} accepts the API key again: sending resumed", self.base);
                        let _ = self.key_ok.send(true);
                        break;
                    }
                    Ok((status, text)) => tracing::error!(
                        "Gateway {} still refuses the API key ({status} {text}): sending paused, {} points kept",
                        self.base,
                        pending()
                    ),
                    Err(e) => {
                        let why = self.describe(&e).await;
                        tracing::warn!("Key check against {} failed: {why}", self.base)
                    }
                }
            }
        }
    }

    /// Delivers one batch (sealed by the batcher, or plain lines from the spool, then
    /// compressed here), retrying as the module doc says.
    /// Ends when the gateway took it ([`Settled::Delivered`]) or refused it for good
    /// ([`Settled::Rejected`], logged and counted). With a spool (`spool`), once `drain`
    /// fired a batch that fails is handed back ([`Settled::GaveBack`]): it is safer on
    /// disk than in a retry loop. Otherwise it retries until its task is aborted at the
    /// drain deadline (the writer then keeps the lines).
    pub async fn deliver(
        &self,
        lines: Bytes,
        points: u64,
        max_delay: Duration,
        spool: bool,
        mut drain: Shutdown,
    ) -> Settled {
        // A memory batch was sealed by the batcher; a spool record is plain lines.
        let body = if is_sealed(&lines) {
            lines.clone()
        } else {
            let compressor = self.compressor.clone();
            let raw = lines.clone();
            match tokio::task::spawn_blocking(move || compressor.compress(&raw)).await {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    tracing::error!("Compressing a batch of {points} points failed: {e}");
                    return Settled::GaveBack;
                }
            }
        };
        let mut attempt = 0u32;
        loop {
            self.wait_key_ok().await;
            match self.post(body.clone()).await {
                Outcome::Delivered => {
                    self.note_delivered(points, attempt);
                    return Settled::Delivered;
                }
                Outcome::TooLarge(why) if points > 1 => {
                    return self
                        .deliver_halves(lines, points, why, max_delay, spool, drain)
                        .await;
                }
                Outcome::Rejected(why) | Outcome::TooLarge(why) => {
                    self.stats.rejected.fetch_add(points, Ordering::Relaxed);
                    tracing::error!(
                        "Gateway {} rejected a batch of {points} points ({why}); it can never be accepted, so it is dropped",
                        self.base
                    );
                    return Settled::Rejected;
                }
                Outcome::Unauthorized(_) => {
                    // Pause everyone; the key watcher logs and re-pings.
                    let _ = self.key_ok.send(false);
                }
                Outcome::Retry { why, after } => {
                    self.stats.failing.store(true, Ordering::Relaxed);
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    if drain.is_shutdown() && spool {
                        tracing::warn!(
                            "Gateway {} did not take a batch of {points} points ({why}); it goes to the spool",
                            self.base
                        );
                        return Settled::GaveBack;
                    }
                    let delay = retry_delay(attempt, after, max_delay);
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(
                        "Gateway {} did not take a batch of {points} points ({why}); retry {attempt} in {:.1}s",
                        self.base,
                        delay.as_secs_f64()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = drain.recv(), if spool && !drain.is_shutdown() => {}
                    }
                }
            }
        }
    }

    /// After a 413: the batch as two halves (split at a line boundary near its
    /// middle), each delivered on its own, halved again while too large. Settles as the
    /// worse of the two: handed back when either is (the writer keeps the whole batch,
    /// so a half already taken is sent again: at least once), else rejected when either
    /// half was a single line too large, else delivered.
    async fn deliver_halves(
        &self,
        lines: Bytes,
        points: u64,
        why: String,
        max_delay: Duration,
        spool: bool,
        drain: Shutdown,
    ) -> Settled {
        let lines = match plain_lines(lines).await {
            Ok(lines) => lines,
            Err(e) => {
                self.stats.rejected.fetch_add(points, Ordering::Relaxed);
                tracing::error!(
                    "Gateway {} rejected a batch of {points} points ({why}) and {e}; it is dropped",
                    self.base
                );
                return Settled::Rejected;
            }
        };
        let Some((first, second)) = split_lines(&lines) else {
            self.stats.rejected.fetch_add(points, Ordering::Relaxed);
            tracing::error!(
                "Gateway {} rejected a batch of {points} points ({why}) that cannot be split; it is dropped",
                self.base
            );
            return Settled::Rejected;
        };
        let (p1, p2) = (line_count(&first), line_count(&second));
        tracing::warn!(
            "Gateway {} refused a batch of {points} points as too large ({why}); sending it as {p1} + {p2} (lower -flush-size to avoid this)",
            self.base
        );
        let a = Box::pin(self.deliver(first, p1, max_delay, spool, drain.clone())).await;
        if a == Settled::GaveBack {
            return a;
        }
        let b = Box::pin(self.deliver(second, p2, max_delay, spool, drain)).await;
        match (a, b) {
            (_, Settled::GaveBack) => Settled::GaveBack,
            (Settled::Rejected, _) | (_, Settled::Rejected) => Settled::Rejected,
            _ => Settled::Delivered,
        }
    }

    /// Counters and log lines of a batch the gateway took.
    fn note_delivered(&self, points: u64, attempt: u32) {
        self.stats.failing.store(false, Ordering::Relaxed);
        self.stats
            .last_delivered
            .store(crate::admin::http::unix_now(), Ordering::Relaxed);
        self.stats.sent.fetch_add(points, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        if self.verbose {
            tracing::info!("Sent batch of {points} points to {}", self.base);
        }
        if attempt > 0 {
            tracing::info!(
                "Gateway {} took the batch after {attempt} retries",
                self.base
            );
        }
    }
}

/// How the delivery of one batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The gateway acknowledged it.
    Delivered,
    /// The gateway refused it for good (400/413): dropped, counted, logged.
    Rejected,
    /// Not delivered; the writer keeps it (in the spool).
    GaveBack,
}

/// `lines` (newline-terminated) cut after the first line that ends past its middle, or
/// else after the last one that ends before it; `None` for a single line.
fn split_lines(lines: &Bytes) -> Option<(Bytes, Bytes)> {
    let mid = lines.len() / 2;
    let cut = memchr::memchr(b'\n', &lines[mid..])
        .map(|i| mid + i + 1)
        .filter(|&cut| cut < lines.len())
        .or_else(|| memchr::memrchr(b'\n', &lines[..mid]).map(|i| i + 1))?;
    Some((lines.slice(..cut), lines.slice(cut..)))
}

/// Lines in a newline-terminated chunk.
fn line_count(b: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', b).count() as u64
}

/// How long [`Gateway::describe`]'s own TLS session may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_lines_cuts_at_a_line_boundary_near_the_middle() {
        let b = Bytes::from_static(b"a 1 1\nbb 2 2\nc 3 3\n");
        let (x, y) = split_lines(&b).unwrap();
        assert_eq!((&x[..], &y[..]), (&b"a 1 1\nbb 2 2\n"[..], &b"c 3 3\n"[..]));
        assert_eq!(line_count(&b), 3);
        let (x, y) = split_lines(&Bytes::from_static(b"a\nb\n")).unwrap();
        assert_eq!((&x[..], &y[..]), (&b"a\n"[..], &b"b\n"[..]));
        assert_eq!(split_lines(&Bytes::from_static(b"only one line\n")), None);
        assert_eq!(split_lines(&Bytes::from_static(b"")), None);
    }

    #[test]
    fn retry_delay_grows_is_capped_and_honours_retry_after() {
        let max = Duration::from_secs(10);
        for attempt in 0..30 {
            let d = retry_delay(attempt, None, max);
            assert!(d <= max, "{d:?}");
            assert!(d >= MIN_RETRY_DELAY / 2, "{d:?}");
        }
        assert!(retry_delay(10, None, max) >= Duration::from_secs(5));
        assert!(retry_delay(0, Some(Duration::from_secs(3)), max) >= Duration::from_secs(3));
    }
}
