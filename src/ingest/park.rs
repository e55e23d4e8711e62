//! Keep-alive connections parked between requests without hyper's buffers.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB header write buffer per connection for
//! its whole life, so 5 000 idle keep-alive proxies cost about 80 MiB. A plain-HTTP
//! connection is therefore served in bursts: once hyper has answered and finds nothing
//! more to read, it is asked to finish (without closing the socket, and without a
//! `Connection: close`: the answer is already on the wire), and the task keeps only the
//! socket until the client sends again; then a fresh hyper connection serves the next
//! request. TLS connections are not parked: rustls may hold decrypted bytes that a wait
//! on the socket would not see.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::shutdown::Shutdown;

/// The socket as hyper sees it: replays bytes hyper had read but not used (`prefix`),
/// and notes when hyper waits to read after it wrote (an answer went out, nothing
/// new arrived: the connection is idle) and when the client closed.
pub(super) struct Watched {
    inner: TcpStream,
    prefix: Bytes,
    wrote: bool,
    eof: bool,
    idle: Arc<AtomicBool>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.prefix.is_empty() {
            let n = me.prefix.len().min(buf.remaining());
            buf.put_slice(&me.prefix[..n]);
            me.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    me.wrote = false;
                    me.idle.store(false, Ordering::Relaxed);
                } else if buf.remaining() > 0 {
                    me.eof = true;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if me.wrote {
                    me.idle.store(true, Ordering::Relaxed);
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            me.wrote = true;
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            me.wrote = true;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A service that can say the connection must close after its answer (the request
/// asked for it, or the answer carries `Connection: close`): such a connection is
/// never parked.
pub(super) trait Closing {
    /// Set once an answer on this connection ends it.
    fn closing(&self) -> &AtomicBool;
}

/// Serves a plain-HTTP connection until the client leaves, an idle wait exceeds
/// `idle_timeout`, or shutdown (which lets a request in progress finish).
pub(super) async fn serve_plain<S>(
    builder: &http1::Builder,
    mut stream: TcpStream,
    service: S,
    (idle_timeout, open): (Duration, &OpenConns),
    mut shutdown: Shutdown,
) where
    S: HttpService<Incoming> + Closing + Clone + Unpin,
    S::Future: Unpin,
    S::ResBody: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut prefix = Bytes::new();
    loop {
        if prefix.is_empty() && !wait_for_request(&stream, idle_timeout, &mut shutdown).await {
            return;
        }
        let idle = Arc::new(AtomicBool::new(false));
        let io = Watched {
            inner: stream,
            prefix,
            wrote: false,
            eof: false,
            idle: idle.clone(),
        };
        let conn = builder.serve_connection(TokioIo::new(io), service.clone());
        // Boxed: hyper's connection state lives on the heap only while serving, so a
        // parked connection's task holds little more than the socket.
        let park_after = match open.strong_count() > PARK_AT_ONCE_ABOVE {
            true => Duration::ZERO,
            false => PARK_AFTER,
        };
        let idle = Some((&*idle, park_after));
        let Some(parts) = Box::pin(drive(conn, idle, &mut shutdown)).await else {
            return;
        };
        let io = parts.io.into_inner();
        if io.eof || service.closing().load(Ordering::Relaxed) || shutdown.is_shutdown() {
            return;
        }
        // A copy: `read_buf` is a view of hyper's whole read buffer, which would
        // otherwise stay allocated for as long as the connection is parked.
        (stream, prefix) = (io.inner, Bytes::copy_from_slice(&parts.read_buf));
    }
}

/// Parked: waits (holding only the socket) until the client sends a byte. False when
/// it closed, the wait timed out, or shutdown came first.
async fn wait_for_request(stream: &TcpStream, timeout: Duration, shutdown: &mut Shutdown) -> bool {
    let mut byte = [0u8; 1];
    tokio::select! {
        r = tokio::time::timeout(timeout, stream.peek(&mut byte)) => matches!(r, Ok(Ok(n)) if n > 0),
        _ = shutdown.recv() => false,
    }
}

/// Every connection task holds a clone; their number is the number of open connections.
pub(super) type OpenConns = tokio::sync::mpsc::Sender<()>;

/// How long a connection stays idle in hyper before it is parked, while few are open.
/// A client sending batches back to back is then never parked (re-creating hyper's
/// connection per request cost 13 % of the gateway's CPU with 100-line batches); one
/// that pauses longer (a proxy between flushes) is.
const PARK_AFTER: Duration = Duration::from_millis(500);

/// Above this many open connections an idle one is parked at once: in a reconnect
/// storm, thousands of connections each holding hyper's buffers for [`PARK_AFTER`]
/// raised the peak, and glibc kept that memory (2.3x RSS over eight 5000-connection
/// cycles, against 1.25x parking at once).
const PARK_AT_ONCE_ABOVE: usize = 64;

/// Polls `conn` to its end without closing the socket. When `idle` has stayed up for
/// its duration (hyper answered and waits for more) or shutdown comes, the connection
/// is asked to finish: at once when idle, after the request in progress otherwise.
/// `None` on an error, or when it ended on its own (hyper closes it: a timeout, a bad
/// request).
pub(super) async fn drive<I, S>(
    mut conn: http1::Connection<I, S>,
    idle: Option<(&AtomicBool, Duration)>,
    shutdown: &mut Shutdown,
) -> Option<hyper::server::conn::http1::Parts<I, S>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: HttpService<Incoming> + Unpin,
    S::Future: Unpin,
    S::ResBody: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut stop = pin!(shutdown.recv());
    let park_after = idle.map_or(Duration::ZERO, |(_, d)| d);
    let mut park = pin!(tokio::time::sleep(park_after));
    let (mut armed, mut asked) = (false, false);
    let done = std::future::poll_fn(|cx| loop {
        match conn.poll_without_shutdown(cx) {
            Poll::Ready(r) => return Poll::Ready(r),
            Poll::Pending if asked => return Poll::Pending,
            Poll::Pending => {}
        }
        let now_idle = idle.is_some_and(|(f, _)| f.load(Ordering::Relaxed));
        if now_idle && !armed && !park_after.is_zero() {
            park.as_mut()
                .reset(tokio::time::Instant::now() + park_after);
        }
        armed = now_idle;
        let idle_long = armed && (park_after.is_zero() || park.as_mut().poll(cx).is_ready());
        if !idle_long && stop.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        asked = true;
        Pin::new(&mut conn).graceful_shutdown();
    })
    .await;
    (done.is_ok() && asked).then(|| conn.into_parts())
}
