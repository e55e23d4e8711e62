//! The HTTP(S) source: `POST /ping` and `POST /ingest` from polymur-proxy.

pub mod encoding;
pub mod handler;
pub mod inflate;
pub mod quota;
pub mod stats;
pub mod tls;
pub mod zstd;

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::keys::KeyCache;
use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;

/// Limits and options of the ingest listeners.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// `-max-body-bytes`: compressed body cap.
    pub max_body_bytes: usize,
    /// `-max-batch-bytes`: decompressed batch cap.
    pub max_batch_bytes: usize,
    /// `-key-prefix`: prepend the key's name to every metric.
    pub key_prefix: bool,
    /// `-read-timeout`: headers and body must arrive within this time, and an
    /// idle keep-alive connection is closed after it.
    pub read_timeout: Duration,
    /// `-max-line-bytes`, `-tag-normalize`: what the batch builder checks and rewrites.
    pub rules: crate::line::LineRules,
}

/// Everything a request needs.
pub struct Ingest {
    /// Listener options.
    pub config: IngestConfig,
    /// Registered keys.
    pub keys: Arc<KeyCache>,
    /// Where accepted batches go.
    pub pipeline: Arc<Pipeline>,
    /// Answers, refusals and latency of the HTTP listeners.
    pub http: Arc<stats::HttpStats>,
    /// Decode budget in KiB (`-incoming-queue-cap`): bounds the memory of batches
    /// being decompressed and routed at once, whatever the number of clients.
    pub decode_budget: DecodeBudget,
    /// Per-key limits, fair shares and namespaces (issue 14), checked at admission.
    pub tenants: Arc<crate::tenants::Tenants>,
}

/// Memory for batches between "body received" and "held by the destinations".
/// A request reserves its decompressed size (from the gzip trailer, or the batch
/// cap when the trailer cannot be trusted) before inflating, and waits when the
/// budget is spent; the reservation ends once the batch is admitted or refused.
pub struct DecodeBudget {
    kib: tokio::sync::Semaphore,
    total_kib: u32,
}

impl DecodeBudget {
    /// A budget of `bytes` (at least 1 MiB).
    pub fn new(bytes: u64) -> Self {
        let total_kib = (bytes / 1024).clamp(1024, u32::MAX as u64 >> 4) as u32;
        DecodeBudget {
            kib: tokio::sync::Semaphore::new(total_kib as usize),
            total_kib,
        }
    }

    /// `-incoming-queue-cap` counts batches of 100 points, as the Go original did;
    /// at a generous 64 bytes per decompressed point that is the byte budget.
    pub fn from_incoming_queue_cap(cap: u64) -> Self {
        Self::new(cap.saturating_mul(100 * 64))
    }

    /// Reserves room for a batch of about `bytes` decompressed bytes (capped at the
    /// whole budget, so one huge batch can still pass alone).
    pub async fn reserve(&self, bytes: usize) -> tokio::sync::SemaphorePermit<'_> {
        let kib = ((bytes / 1024) as u32 + 1).min(self.total_kib);
        self.kib
            .acquire_many(kib)
            .await
            .expect("the decode budget semaphore is never closed")
    }

    /// KiB currently reserved.
    pub fn in_use_kib(&self) -> u64 {
        (self.total_kib as usize - self.kib.available_permits()) as u64
    }

    /// The whole budget in KiB.
    pub fn total_kib(&self) -> u64 {
        self.total_kib as u64
    }
}

/// How long shutdown waits for in-flight requests.
const GRACE: Duration = Duration::from_secs(10);

/// The current TLS acceptor; SIGHUP swaps in a new one (certificate rotation)
/// while existing connections keep the one they were accepted with.
pub type TlsSlot = Arc<arc_swap::ArcSwap<TlsAcceptor>>;

/// Accepts connections on `listener` until shutdown, then lets in-flight
/// requests finish (up to a grace period) before returning.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsSlot>,
    state: Arc<Ingest>,
    mut shutdown: Shutdown,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let read_timeout = state.config.read_timeout;
    loop {
        let Some((stream, peer)) = crate::net::accept(&listener, &mut shutdown).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let watcher = graceful.watcher();
        let tls: Option<TlsAcceptor> = tls.as_ref().map(|slot| (**slot.load()).clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move {
                    let path = match req.uri().path() {
                        "/ping" => "/ping",
                        "/ingest" => "/ingest",
                        _ => "other",
                    };
                    let started = std::time::Instant::now();
                    let answer = handler::handle(state.clone(), peer, req).await;
                    if let Ok(resp) = &answer {
                        let stats = &state.http;
                        stats.count_http(path, resp.status().as_u16());
                        if path == "/ingest" {
                            stats.batch_latency.observe(started.elapsed());
                        }
                    }
                    answer
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .keep_alive(true);
            match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn).await;
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(read_timeout, acceptor.accept(stream)).await;
                    let stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!("TLS handshake with {peer} failed: {e}");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests still open after {GRACE:?}; closing them");
    }
}
