//! A counting Graphite sink: the destination the target forwards to.
//!
//! The bench owns the far end of the pipeline so that it reports what *arrived*,
//! not what was sent: a gateway that acknowledges and then drops (the Go
//! original's failure) shows up here as loss. It only counts `\n`s — the cheapest
//! thing that still proves delivery — so the sink costs a fraction of what the
//! target spends per line.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What a sink has seen so far; shared with the progress line and the report.
#[derive(Debug)]
pub struct SinkCounters {
    /// Complete lines received (one per `\n`).
    pub lines: AtomicU64,
    /// Bytes received.
    pub bytes: AtomicU64,
    /// Connections accepted (a reconnecting target shows up here).
    pub connections: AtomicU64,
    /// Nanoseconds after `epoch` at which the last bytes arrived.
    last_arrival_ns: AtomicU64,
    /// Reference point for `last_arrival_ns`.
    epoch: Instant,
}

impl SinkCounters {
    /// When the most recent bytes arrived (the epoch if none did).
    pub fn last_arrival(&self) -> Instant {
        self.epoch + std::time::Duration::from_nanos(self.last_arrival_ns.load(Ordering::Relaxed))
    }

    /// Lines received so far.
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }
}

/// A listening sink; stops accepting when dropped.
pub struct Sink {
    /// Where the target should send (`{sink}` in a `-spawn` command).
    pub addr: SocketAddr,
    /// Live counters.
    pub counters: Arc<SinkCounters>,
    accept: JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Read size: large, so a fast sender costs the sink few syscalls.
const READ_BUF: usize = 256 * 1024;

impl Sink {
    /// Listens on `listen` (loopback; port 0 picks a free one) and counts what arrives.
    pub async fn start(listen: SocketAddr) -> io::Result<Sink> {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            io::Error::new(e.kind(), format!("sink: cannot listen on {listen}: {e}"))
        })?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(SinkCounters {
            lines: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            last_arrival_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let c = counters.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                c.connections.fetch_add(1, Ordering::Relaxed);
                let c = c.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; READ_BUF];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let lines = memchr::memchr_iter(b'\n', &buf[..n]).count();
                                c.lines.fetch_add(lines as u64, Ordering::Relaxed);
                                c.bytes.fetch_add(n as u64, Ordering::Relaxed);
                                let at = c.epoch.elapsed().as_nanos() as u64;
                                c.last_arrival_ns.fetch_max(at, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        Ok(Sink {
            addr,
            counters,
            accept,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn counts_lines_across_connections() {
        let sink = Sink::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
        for _ in 0..2 {
            let mut s = tokio::net::TcpStream::connect(sink.addr).await.unwrap();
            s.write_all(b"a 1 2\nb 3 4\nc 5").await.unwrap();
            s.write_all(b" 6\n").await.unwrap();
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while sink.counters.lines() < 6 && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(sink.counters.lines(), 6);
        assert_eq!(sink.counters.connections.load(Ordering::Relaxed), 2);
    }
}
