//! The HTTP(S) source: `POST /ping` and `POST /ingest` from polymur-proxy.

pub mod encoding;
pub mod handler;
pub mod inflate;
mod park;
pub mod quota;
pub mod stats;
pub mod tls;
pub mod zstd;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

/// The most decoded bytes in flight at once. The default `-incoming-queue-cap` (32768)
/// alone would allow 200 MiB, so 256 clients each held a decoded batch (161 MiB peak
/// RSS measured, docs/BENCHMARKS.md). 8 MiB is twenty 5000-line batches decoding or
/// waiting for destination room, which keeps two cores and the destinations busy; the
/// other clients wait in arrival order holding only their compressed bodies. At 256
/// clients 8 MiB measured 4 answers 503 and a p99 of 484 ms where 32 MiB had 757 and
/// 908 ms: fewer holders compete for a full destination queue. A batch larger than the
/// whole budget still passes, alone.
pub const DECODE_CEILING: u64 = 8 << 20;

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
    /// at a generous 64 bytes per decompressed point that is the byte budget, up to
    /// [`DECODE_CEILING`].
    pub fn from_incoming_queue_cap(cap: u64) -> Self {
        Self::new(cap.saturating_mul(100 * 64).min(DECODE_CEILING))
    }

    /// Reserves room for a batch of about `bytes` decompressed bytes (capped at the
    /// whole budget, so one huge batch can still pass alone), or `None` when the
    /// budget stays spent until `deadline`. Waiters are served in arrival order
    /// (tokio's semaphore is FIFO, also for `acquire_many`), so no client waits
    /// through several rounds of others, and a waiting client holds no decoded batch.
    pub async fn reserve_by(
        &self,
        bytes: usize,
        deadline: tokio::time::Instant,
    ) -> Option<BudgetPermit<'_>> {
        let kib = ((bytes / 1024) as u32 + 1).min(self.total_kib);
        match tokio::time::timeout_at(deadline, self.kib.acquire_many(kib)).await {
            Ok(permit) => Some(permit.expect("the decode budget semaphore is never closed")),
            Err(_) => None,
        }
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

/// A reservation of the decode budget, returned when dropped.
pub type BudgetPermit<'a> = tokio::sync::SemaphorePermit<'a>;

/// hyper's read buffer grows by doubling while reads fill it, up to about 400 KiB by
/// default: a 66 KB body grew it to 128 KiB on every connection reading one, which at
/// 256 clients was 32 MiB. Bodies are collected into their own buffer anyway, so a
/// larger read buffer only saves a few read calls per body.
const READ_BUFFER_MAX: usize = 32 * 1024;

/// How long shutdown waits for in-flight requests.
const GRACE: Duration = Duration::from_secs(10);

/// The current TLS acceptor; SIGHUP swaps in a new one (certificate rotation)
/// while existing connections keep the one they were accepted with.
pub type TlsSlot = Arc<arc_swap::ArcSwap<TlsAcceptor>>;

/// One connection's service: the routes, timed and counted, and whether an answer
/// ended the connection (then it is not parked, see [`park`]).
#[derive(Clone)]
struct ConnService {
    state: Arc<Ingest>,
    peer: SocketAddr,
    closing: Arc<AtomicBool>,
}

impl park::Closing for ConnService {
    fn closing(&self) -> &AtomicBool {
        &self.closing
    }
}

type Answer = Result<handler::Resp, std::convert::Infallible>;

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for ConnService {
    type Response = handler::Resp;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let (state, peer, closing) = (self.state.clone(), self.peer, self.closing.clone());
        Box::pin(async move {
            if asks_close(req.version(), req.headers()) {
                closing.store(true, Ordering::Relaxed);
            }
            let path = match req.uri().path() {
                "/ping" => "/ping",
                "/ingest" => "/ingest",
                _ => "other",
            };
            let started = std::time::Instant::now();
            let answer = handler::handle(state.clone(), peer, req).await;
            if let Ok(resp) = &answer {
                if asks_close(hyper::Version::HTTP_11, resp.headers()) {
                    closing.store(true, Ordering::Relaxed);
                }
                let stats = &state.http;
                stats.count_http(path, resp.status().as_u16());
                if path == "/ingest" {
                    stats.batch_latency.observe(started.elapsed());
                }
            }
            answer
        })
    }
}

/// Serves one HTTPS connection: the handshake within `read_timeout`, then hyper
/// until the client leaves or shutdown (such connections are not parked, see [`park`]).
async fn serve_tls(
    builder: &hyper::server::conn::http1::Builder,
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    service: ConnService,
    read_timeout: Duration,
    mut shutdown: Shutdown,
) {
    let peer = service.peer;
    let stream = match tokio::time::timeout(read_timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake with {peer} failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let _ = park::drive(conn, None, &mut shutdown).await;
}

/// True when a message in `version` with `headers` ends its connection.
fn asks_close(version: hyper::Version, headers: &hyper::HeaderMap) -> bool {
    let close = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    close || version < hyper::Version::HTTP_11
}

/// Accepts connections on `listener` until shutdown, then lets in-flight
/// requests finish (up to a grace period) before returning.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsSlot>,
    state: Arc<Ingest>,
    mut shutdown: Shutdown,
) {
    // Every connection task holds a sender; all of them gone means all finished.
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
    let read_timeout = state.config.read_timeout;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .max_buf_size(READ_BUFFER_MAX)
        .keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let Some((stream, peer)) = crate::net::accept(&listener, &mut shutdown).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let service = ConnService {
            state: state.clone(),
            peer,
            closing: Default::default(),
        };
        let (builder, open, shutdown) = (builder.clone(), open_tx.clone(), shutdown.clone());
        let tls: Option<TlsAcceptor> = tls.as_ref().map(|slot| (**slot.load()).clone());
        let task = async move {
            let _open = &open;
            match tls {
                None => {
                    let limits = (read_timeout, &open);
                    park::serve_plain(&builder, stream, service, limits, shutdown).await
                }
                // Boxed: the TLS state is large, and the task of a parked plain
                // connection should hold little more than its socket.
                Some(acceptor) => {
                    let tls =
                        serve_tls(&builder, acceptor, stream, service, read_timeout, shutdown);
                    Box::pin(tls).await
                }
            }
        };
        tokio::spawn(task);
    }
    drop(listener);
    drop(open_tx);
    if tokio::time::timeout(GRACE, open_rx.recv()).await.is_err() {
        tracing::warn!("in-flight requests still open after {GRACE:?}; closing them");
    }
}
