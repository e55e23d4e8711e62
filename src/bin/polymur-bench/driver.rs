//! The load loops: HTTP clients posting gzip batches to `/ingest`, and plaintext
//! TCP senders.
//!
//! Every loop is bounded twice — by a shared batch budget and by a deadline — so
//! a stuck or refusing target can never keep the bench running. Bodies are
//! pre-built [`Bytes`]; a send only bumps a reference count.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Limits shared by the clients of one round.
#[derive(Debug)]
pub struct Budget {
    /// No batch is started after this instant.
    pub deadline: Instant,
    /// Batches still to start; clients stop when it reaches zero.
    pub batches_left: AtomicI64,
    /// Set to stop every client early (Ctrl-C); shared by all rounds.
    pub stop: Arc<AtomicBool>,
    /// Per-client pause between batch starts (`-rate`), if any.
    pub pace: Option<Duration>,
    /// Longest wait for one request or write.
    pub request_timeout: Duration,
    /// Pause before re-sending a batch the target refused (503).
    pub retry_pause: Duration,
}

impl Budget {
    /// Claims the next batch, or `None` when time or count is used up.
    fn claim(&self) -> Option<()> {
        if self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return None;
        }
        (self.batches_left.fetch_sub(1, Ordering::Relaxed) > 0).then_some(())
    }
}

/// Counters of one round, updated by every client.
#[derive(Debug, Default)]
pub struct Tally {
    /// Points the target acknowledged (HTTP 200) or, for TCP, fully written.
    pub acked_points: AtomicU64,
    /// Batches acknowledged (or written).
    pub acked_batches: AtomicU64,
    /// `503` answers (queue full; the batch is retried).
    pub refused: AtomicU64,
    /// Transport errors and unexpected statuses (the batch is not retried).
    pub errors: AtomicU64,
}

/// Batch latencies of one client, in microseconds.
pub type Latencies = Vec<u32>;

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

/// Waits for this client's next slot when a rate is set.
async fn pace(budget: &Budget, start: Instant, n: u32) {
    if let Some(p) = budget.pace {
        tokio::time::sleep_until(start + p * n).await;
    }
}

/// Where and as whom an HTTP client posts.
#[derive(Clone, Debug)]
pub struct HttpTarget {
    /// Shared client: its pool keeps one connection per concurrent client alive.
    pub client: reqwest::Client,
    /// `http(s)://host:port/ingest`.
    pub url: String,
    /// `X-Polymur-Key` value.
    pub api_key: String,
    /// `Content-Encoding` of the bodies (`gzip` or `zstd`).
    pub encoding: &'static str,
}

/// One HTTP client: posts bodies in turn (starting at `first`) over a kept-alive
/// connection until the budget runs out. Returns the latency of each acknowledged batch.
pub async fn http_client(
    target: HttpTarget,
    bodies: Arc<[Bytes]>,
    lines_per_batch: u64,
    first: usize,
    budget: Arc<Budget>,
    tally: Arc<Tally>,
) -> Latencies {
    let HttpTarget {
        client,
        url,
        api_key,
        encoding,
    } = target;
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut n = 0u32;
    while budget.claim().is_some() {
        pace(&budget, start, n).await;
        let body = bodies[(first + n as usize) % bodies.len()].clone();
        n += 1;
        // Retry a refused batch until it is acknowledged or the round ends, as
        // polymur-proxy does; the latency counts from the first attempt.
        let t0 = Instant::now();
        loop {
            let send = client
                .post(&url)
                .header("X-Polymur-Key", &api_key)
                .header("Content-Encoding", encoding)
                .body(body.clone())
                .send();
            let status = match tokio::time::timeout(budget.request_timeout, send).await {
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    // Read the answer so the connection can be reused.
                    let _ = resp.bytes().await;
                    status
                }
                Ok(Err(_)) | Err(_) => 0,
            };
            match status {
                200 => {
                    tally
                        .acked_points
                        .fetch_add(lines_per_batch, Ordering::Relaxed);
                    tally.acked_batches.fetch_add(1, Ordering::Relaxed);
                    lat.push(micros(t0.elapsed()));
                    break;
                }
                503 => {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    if budget.stop.load(Ordering::Relaxed) || Instant::now() >= budget.deadline {
                        break;
                    }
                    tokio::time::sleep(budget.retry_pause).await;
                }
                _ => {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                    // A connection refused or reset: don't spin on it.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
    }
    lat
}

/// One plaintext TCP connection: writes batches in turn until the budget runs
/// out, then closes. Returns how long each batch's write took (back-pressure).
pub async fn tcp_client(
    addr: std::net::SocketAddr,
    batches: Arc<[Bytes]>,
    lines_per_batch: u64,
    first: usize,
    budget: Arc<Budget>,
    tally: Arc<Tally>,
) -> Latencies {
    let mut lat = Vec::new();
    let mut stream =
        match tokio::time::timeout(budget.request_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            _ => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                return lat;
            }
        };
    let start = Instant::now();
    let mut n = 0u32;
    while budget.claim().is_some() {
        pace(&budget, start, n).await;
        let batch = &batches[(first + n as usize) % batches.len()];
        n += 1;
        let t0 = Instant::now();
        match tokio::time::timeout(budget.request_timeout, stream.write_all(batch)).await {
            Ok(Ok(())) => {
                tally
                    .acked_points
                    .fetch_add(lines_per_batch, Ordering::Relaxed);
                tally.acked_batches.fetch_add(1, Ordering::Relaxed);
                lat.push(micros(t0.elapsed()));
            }
            _ => {
                // Part of the batch may have gone out: not counted as sent, so a
                // broken connection can only make the loss figure look better,
                // never invent loss. Stop this connection.
                tally.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    let _ = stream.shutdown().await;
    lat
}

/// The `q` quantile (0..=1) of sorted microsecond latencies, in milliseconds.
pub fn quantile_ms(sorted: &[u32], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i] as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile_ms(&v, 0.5), Some(51.0));
        assert_eq!(quantile_ms(&v, 0.99), Some(99.0));
        assert_eq!(quantile_ms(&[], 0.5), None);
    }

    #[tokio::test]
    async fn tcp_client_stops_at_the_batch_budget() {
        let sink = crate::sink::Sink::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let budget = Arc::new(Budget {
            deadline: Instant::now() + Duration::from_secs(10),
            batches_left: AtomicI64::new(3),
            stop: Arc::new(AtomicBool::new(false)),
            pace: None,
            request_timeout: Duration::from_secs(5),
            retry_pause: Duration::from_millis(10),
        });
        let tally = Arc::new(Tally::default());
        let batches: Arc<[Bytes]> = vec![Bytes::from_static(b"a 1 2\nb 1 2\n")].into();
        let lat = tcp_client(sink.addr, batches, 2, 0, budget, tally.clone()).await;
        assert_eq!(lat.len(), 3);
        assert_eq!(tally.acked_points.load(Ordering::Relaxed), 6);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.counters.lines() < 6 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(sink.counters.lines(), 6);
    }
}
