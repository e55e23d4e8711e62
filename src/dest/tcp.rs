//! The TCP writer of one destination: connect, write large batches, reconnect.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Chunk, DestAddr, DestShared};
use crate::shutdown::Shutdown;

/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A connect that takes longer than this is treated as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Chunks gathered into one vectored write (Linux accepts up to 1024 iovecs).
const MAX_IOV: usize = 64;

/// Writer state that survives reconnects: what was taken from the queue but not
/// yet fully written.
struct Pending {
    chunks: VecDeque<Chunk>,
    /// Bytes of `chunks[0]` already written on the current connection.
    front_off: usize,
}

impl Pending {
    fn points(&self) -> u64 {
        self.chunks.iter().map(|c| c.points).sum()
    }

    /// After a broken connection, restart the front chunk at the beginning of
    /// the line that was cut, so the new connection never starts mid-line.
    fn rewind_to_line_start(&mut self) {
        if let Some(front) = self.chunks.front() {
            self.front_off = memchr::memrchr(b'\n', &front.data[..self.front_off])
                .map(|i| i + 1)
                .unwrap_or(0);
        }
    }
}

/// Runs until the queue is drained after shutdown (or the drain timeout passes).
pub async fn run(
    dest: Arc<DestShared>,
    addr: DestAddr,
    mut rx: mpsc::UnboundedReceiver<Chunk>,
    mut shutdown: Shutdown,
    drain_timeout: Duration,
) {
    let target = addr.host_port();
    let mut pending = Pending {
        chunks: VecDeque::new(),
        front_off: 0,
    };
    let mut backoff = MIN_BACKOFF;
    let mut deadline: Option<Instant> = None;

    loop {
        // Connect, retrying with backoff; during a drain, give up at the deadline.
        let mut stream = loop {
            if let Some(d) = deadline {
                if pending.chunks.is_empty() && rx.is_empty() {
                    return;
                }
                if Instant::now() >= d {
                    return abandon(&dest, &mut pending, &mut rx);
                }
            }
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await;
            let err = match attempt {
                Ok(Ok(s)) => break s,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("connect to {target} timed out"),
            };
            dest.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("Destination error: {target}: {err}, retrying");
            let pause = match deadline {
                Some(d) => backoff.min(d.saturating_duration_since(Instant::now())),
                None => backoff,
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.recv(), if deadline.is_none() => {
                    deadline = Some(Instant::now() + drain_timeout);
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        let _ = stream.set_nodelay(true);
        backoff = MIN_BACKOFF;
        tracing::info!("Connected to destination {target}");

        let err: io::Error = loop {
            if pending.chunks.is_empty() {
                if deadline.is_some() {
                    match rx.try_recv() {
                        Ok(c) => pending.chunks.push_back(c),
                        Err(_) => return,
                    }
                } else {
                    tokio::select! {
                        c = rx.recv() => match c {
                            Some(c) => pending.chunks.push_back(c),
                            None => return,
                        },
                        e = peer_closed(&stream) => break e,
                        _ = shutdown.recv() => {
                            deadline = Some(Instant::now() + drain_timeout);
                            continue;
                        }
                    }
                }
            }
            while pending.chunks.len() < MAX_IOV {
                match rx.try_recv() {
                    Ok(c) => pending.chunks.push_back(c),
                    Err(_) => break,
                }
            }
            let written = match deadline {
                None => write_pending(&mut stream, &mut pending, &dest).await,
                Some(d) => match tokio::time::timeout_at(
                    d,
                    write_pending(&mut stream, &mut pending, &dest),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => return abandon(&dest, &mut pending, &mut rx),
                },
            };
            if let Err(e) = written {
                break e;
            }
        };
        dest.stats.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("Destination error: {target}: {err}, retrying");
        pending.rewind_to_line_start();
    }
}

/// Writes every pending chunk, several per syscall, releasing each from the
/// queue accounting once its last byte is handed to the kernel.
async fn write_pending(
    stream: &mut TcpStream,
    pending: &mut Pending,
    dest: &DestShared,
) -> io::Result<()> {
    while !pending.chunks.is_empty() {
        let n = {
            let mut slices: Vec<IoSlice<'_>> =
                Vec::with_capacity(pending.chunks.len().min(MAX_IOV));
            for (i, c) in pending.chunks.iter().take(MAX_IOV).enumerate() {
                let from = if i == 0 { pending.front_off } else { 0 };
                slices.push(IoSlice::new(&c.data[from..]));
            }
            stream.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 {
            let front = &pending.chunks[0];
            let rest = front.data.len() - pending.front_off;
            if left >= rest {
                left -= rest;
                dest.written(front.points);
                pending.chunks.pop_front();
                pending.front_off = 0;
            } else {
                pending.front_off += left;
                left = 0;
            }
        }
    }
    Ok(())
}

/// Completes when the peer closes the connection (or it fails) while we are idle,
/// so a restarted carbon-cache is noticed before the next batch is written into a
/// dead socket.
async fn peer_closed(stream: &TcpStream) -> io::Error {
    let mut buf = [0u8; 512];
    loop {
        if let Err(e) = stream.readable().await {
            return e;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => {
                return io::Error::new(io::ErrorKind::ConnectionReset, "connection closed by peer")
            }
            Ok(_) => continue, // Graphite receivers send nothing; ignore stray bytes.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return e,
        }
    }
}

/// Gives up on what is still queued when the drain deadline passes.
fn abandon(dest: &DestShared, pending: &mut Pending, rx: &mut mpsc::UnboundedReceiver<Chunk>) {
    let mut points = pending.points();
    pending.chunks.clear();
    while let Ok(c) = rx.try_recv() {
        points += c.points;
    }
    if points > 0 {
        dest.queued.fetch_sub(points, Ordering::AcqRel);
        dest.stats.abandoned.fetch_add(points, Ordering::Relaxed);
        tracing::error!(
            "Destination {}: drain timeout, {points} points undelivered at shutdown",
            dest.name()
        );
    }
}
