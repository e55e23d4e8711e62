//! What a plaintext connection reads from: a TCP stream, or TLS over one
//! (`-listen-tls-cert`). The connection loop is written once against [`ClientStream`];
//! only the way bytes arrive differs.

use std::future::Future;
use std::io::ErrorKind;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// What one wait-and-read gave.
pub enum Filled {
    /// Bytes were appended (possibly none, after a spurious wake-up).
    Data,
    /// The client closed its side; what was appended before is complete.
    Eof,
    /// Nothing arrived within the idle timeout.
    Idle,
    /// The connection failed; bytes appended before may end anywhere.
    Failed(std::io::Error),
}

/// A client connection the plaintext source reads lines from.
pub trait ClientStream: Send {
    /// Waits for data (at most `idle`), then appends what has arrived, up to about
    /// `max` bytes, to `buf`. Cancel-safe: dropping it loses no byte.
    fn fill<'a>(
        &'a mut self,
        buf: &'a mut Vec<u8>,
        max: usize,
        idle: Option<Duration>,
    ) -> impl Future<Output = Filled> + Send + 'a;
}

impl ClientStream for TcpStream {
    async fn fill(&mut self, buf: &mut Vec<u8>, max: usize, idle: Option<Duration>) -> Filled {
        {
            let ready = match idle {
                Some(t) => tokio::time::timeout(t, self.readable())
                    .await
                    .unwrap_or_else(|_| Err(ErrorKind::TimedOut.into())),
                None => self.readable().await,
            };
            match ready {
                Err(e) if e.kind() == ErrorKind::TimedOut => return Filled::Idle,
                Err(e) => return Filled::Failed(e),
                Ok(()) => {}
            }
            // Allocate only once data is there, so idle connections cost no buffer.
            let start = buf.len();
            while buf.len() < start + max {
                buf.reserve(max);
                match self.try_read_buf(buf) {
                    Ok(0) => return Filled::Eof,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Filled::Failed(e),
                }
            }
            Filled::Data
        }
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    async fn fill(&mut self, buf: &mut Vec<u8>, max: usize, idle: Option<Duration>) -> Filled {
        {
            // TLS has no "readable without reading": a small reserve for the wait, the
            // full chunk once records flow (a record holds at most 16 KiB).
            let start = buf.len();
            buf.reserve(16 * 1024);
            let first = {
                let read = self.read_buf(buf);
                match idle {
                    Some(t) => match tokio::time::timeout(t, read).await {
                        Ok(r) => r,
                        Err(_) => return Filled::Idle,
                    },
                    None => read.await,
                }
            };
            match first {
                Ok(0) => return Filled::Eof,
                Ok(_) => {}
                Err(e) => return Filled::Failed(e),
            }
            // Take what rustls already decrypted, without waiting for more.
            while buf.len() < start + max {
                buf.reserve(16 * 1024);
                let more = futures_now(self.read_buf(buf));
                match more {
                    Some(Ok(0)) => return Filled::Eof,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Filled::Failed(e),
                    None => break,
                }
            }
            Filled::Data
        }
    }
}

/// Polls `f` once: its output if it is ready now, `None` if it would wait. Used only on
/// cancel-safe reads, so dropping a pending one loses nothing.
fn futures_now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}
