//! `cluster NAME file [ip] PATH…`: a destination that appends lines to a file
//! (archiving, debugging), as carbon-c-relay's `file` clusters do.
//!
//! It is a destination like a TCP one — its own bounded queue and writer task, its own
//! counters — so a slow disk never holds up another cluster's writer (only admission, all
//! or nothing per batch, feels its full queue, as with a slow TCP member). The file is opened for append (created when missing) and opened
//! again after [`reopen_all`] (SIGHUP), so logrotate can move it away. A failed write
//! drops that chunk's lines, counted in the destination's `errors` and `write_failed`; the
//! failure is logged once when it starts and once when writing works again (with the
//! number of points lost), not once per line: a disk that stays full must not flood the
//! log, and lines are not kept back, since holding them would fill the queue and turn a
//! debugging copy into back-pressure on every other cluster.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::writer::{Queue, Writer, WriterTask};
use super::{Chunk, DestShared};

/// Bumped by [`reopen_all`]; a writer that opened its file under an older value opens it
/// again before its next write.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Most bytes one blocking write gathers from the queue.
const GATHER_BYTES: usize = 1 << 20;

/// Makes every file destination open its file again before the next write (SIGHUP:
/// logrotate has moved the old one away).
pub fn reopen_all() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// One member of a `file` cluster.
#[derive(Debug)]
pub struct FileWriter {
    path: PathBuf,
}

impl FileWriter {
    /// A writer appending to `path`.
    pub fn new(path: &Path) -> Arc<FileWriter> {
        Arc::new(FileWriter {
            path: path.to_path_buf(),
        })
    }
}

impl Writer for FileWriter {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    /// A file is its own persistence: no spool in front of it.
    fn spools(&self) -> bool {
        false
    }

    fn run(self: Arc<Self>, queue: Queue) -> WriterTask {
        Box::pin(run(self.path.clone(), queue))
    }
}

/// The open file and the state of its failure log.
struct Appender {
    path: PathBuf,
    file: Option<(std::fs::File, u64)>,
    /// Points lost since writes started failing (`None`: writes work).
    failing: Option<u64>,
}

impl Appender {
    /// Appends `data`, opening the file first when needed. Blocking.
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let generation = GENERATION.load(Ordering::Relaxed);
        if self.file.as_ref().is_none_or(|(_, g)| *g != generation) {
            self.file = None;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.file = Some((f, generation));
        }
        let (f, _) = self.file.as_mut().expect("opened above");
        let r = f.write_all(data);
        if r.is_err() {
            // Open it again next time: the directory may have come back.
            self.file = None;
        }
        r
    }

    /// Books the outcome of one gathered write of `points` points.
    fn settle(&mut self, dest: &DestShared, points: u64, result: std::io::Result<()>) {
        match result {
            Ok(()) => {
                dest.written(points);
                if let Some(lost) = self.failing.take() {
                    tracing::info!(
                        "File {}: writing again ({lost} points were lost while it failed)",
                        self.path.display()
                    );
                }
            }
            Err(e) => {
                dest.dequeued(points);
                dest.stats.errors.fetch_add(1, Ordering::Relaxed);
                dest.stats.write_failed.fetch_add(points, Ordering::Relaxed);
                match &mut self.failing {
                    Some(lost) => *lost += points,
                    None => {
                        tracing::error!(
                            "File {}: write failed: {e}; its lines are dropped (counted) until writes succeed",
                            self.path.display()
                        );
                        self.failing = Some(points);
                    }
                }
            }
        }
    }
}

/// Takes `first` and whatever else is queued now, up to [`GATHER_BYTES`].
fn gather(first: Chunk, rx: &mut tokio::sync::mpsc::UnboundedReceiver<Chunk>) -> (Vec<u8>, u64) {
    let mut points = first.points;
    let mut data = first.data.to_vec();
    while data.len() < GATHER_BYTES {
        let Ok(c) = rx.try_recv() else { break };
        data.extend_from_slice(&c.data);
        points += c.points;
    }
    (data, points)
}

async fn run(path: PathBuf, mut queue: Queue) {
    let dest = queue.dest.clone();
    dest.stats.connected.store(true, Ordering::Relaxed);
    let mut appender = Some(Appender {
        path,
        file: None,
        failing: None,
    });
    loop {
        let chunk = tokio::select! {
            c = queue.rx.recv() => c,
            _ = queue.shutdown.recv() => None,
        };
        // At shutdown (or when the destination is dropped) what is queued is written out.
        let last = chunk.is_none();
        let Some(first) = chunk.or_else(|| queue.rx.try_recv().ok()) else {
            return;
        };
        let (data, points) = gather(first, &mut queue.rx);
        let mut a = appender
            .take()
            .expect("the appender is put back after each write");
        let a = match tokio::task::spawn_blocking(move || {
            let r = a.write(&data);
            (a, r)
        })
        .await
        {
            Ok((mut a, r)) => {
                a.settle(&dest, points, r);
                a
            }
            Err(e) => {
                tracing::error!("File writer task failed: {e}");
                return;
            }
        };
        appender = Some(a);
        if last && queue.rx.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dest::{DestConfig, Destination, SinkKind};
    use crate::shutdown::Shutdown;
    use bytes::Bytes;
    use std::time::Duration;

    fn chunk(s: &str) -> Chunk {
        Chunk {
            data: Bytes::from(s.to_string()),
            points: s.lines().count() as u64,
        }
    }

    async fn wait_sent(d: &Destination, n: u64) {
        for _ in 0..200 {
            if d.stats.sent.load(Ordering::Relaxed) + d.stats.write_failed.load(Ordering::Relaxed)
                >= n
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn appends_reopens_after_rotation_and_counts_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("archive.log");
        std::fs::write(&path, "before\n").unwrap();
        let (trigger, shutdown) = Shutdown::new();
        let config = DestConfig::in_memory(1000, Duration::from_secs(1));
        let (d, task) =
            Destination::spawn(SinkKind::Writer(FileWriter::new(&path)), &config, shutdown);
        assert!(d.try_admit(2));
        d.push(chunk("a 1 1\nb 2 2\n"));
        wait_sent(&d, 2).await;
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "before\na 1 1\nb 2 2\n"
        );

        // logrotate: move the file away, then SIGHUP.
        let rotated = dir.path().join("archive.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        reopen_all();
        assert!(d.try_admit(1));
        d.push(chunk("c 3 3\n"));
        wait_sent(&d, 3).await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "c 3 3\n");

        // The directory goes away: the lines are dropped and counted, nothing blocks.
        drop(dir);
        reopen_all();
        assert!(d.try_admit(1));
        d.push(chunk("d 4 4\n"));
        wait_sent(&d, 4).await;
        assert_eq!(d.stats.write_failed.load(Ordering::Relaxed), 1);
        assert_eq!(d.stats.errors.load(Ordering::Relaxed), 1);
        assert_eq!(d.queued(), 0);
        trigger.fire();
        drop(d);
        task.await.unwrap();
    }
}
