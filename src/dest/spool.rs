//! The per-destination disk spool: a FIFO tail of a destination's queue on disk.
//!
//! # Why
//! A `200` from `/ingest` promises that every line is held for every destination it
//! routes to. When a destination is slow or down, its bounded memory queue fills; the
//! spool takes what memory cannot hold (and, with `-durable`, everything), so the
//! gateway keeps acknowledging without ever dropping, and a restart replays it.
//!
//! # On disk
//! `<spool-dir>/<destination>/` (`:` in the destination becomes `_`) holds
//! - `seg-<seq, 16 digits>.spool` — append-only segments, read in `seq` order. Each starts
//!   with the 8-byte magic `PMSPOOL1`, then records:
//!   `len: u32 LE | points: u32 LE | crc32: u32 LE | len bytes of whole '\n'-terminated lines`,
//!   the CRC-32 (IEEE, as gzip) covering the `points` field and the data. One record is one
//!   admitted chunk (a batch's share for this destination), never a single line.
//! - `cursor` — `<seq> <offset>`: everything before it was written to the destination. A hint
//!   rewritten every second and at close (temp file + rename); losing it means duplicates on
//!   replay, never loss.
//! - `quarantine/` — bytes that failed their checksum or were cut short (a crash mid-write),
//!   moved aside with their segment name and offset, and reported in the log. Everything
//!   before them is replayed; start-up never fails because of them.
//!
//! A process always appends to a fresh segment, so a torn tail left by a crash is never
//! followed by valid records of a later run.
//!
//! # Threads
//! Appends go, in order, through a channel to one thread per spool, which writes them in
//! groups: with `-durable`, one `fdatasync` covers every record written since the last one
//! (group commit), and each producer's acknowledgement waits for the sync that covers it.
//! Without `-durable` the acknowledgement waits for the `write` only (the page cache survives a
//! killed process, not a power loss). The destination's writer task reads records back with
//! positioned reads, only up to what the append thread has published.
//!
//! # Accounting
//! `state` holds the bytes reserved or written and not yet read back (for the
//! `-spool-max-bytes` cap: admit while below it, so the spool holds at most cap + one record),
//! and a *spilling* bit: once set, every new batch goes to the spool, behind what is already
//! there, until the writer has read everything back and clears it (a compare-and-swap against
//! "spilling, zero bytes", so no batch admitted later can overtake a spooled one).

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{oneshot, Notify};

use super::Chunk;

/// First bytes of every segment file.
const SEGMENT_MAGIC: &[u8; 8] = b"PMSPOOL1";
/// Record header: length, points, CRC-32.
pub const RECORD_HEADER: u64 = 12;
/// Top bit of `state`: the destination is spilling (new batches go to the spool).
const SPILLING: u64 = 1 << 63;
/// How often the cursor is saved and fully delivered segments are deleted.
const TICK: Duration = Duration::from_secs(1);
/// Most bytes the append thread writes before it publishes and acknowledges a group.
const GROUP_BYTES: usize = 8 << 20;
/// A record longer than this is corruption, not data (`-max-batch-bytes` is far below).
const MAX_RECORD: u64 = 1 << 31;

/// Where a record ends: the segment and the offset just past it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpoolPos {
    /// Segment sequence number.
    pub seq: u64,
    /// Byte offset in the segment.
    pub offset: u64,
}

/// Answer to one append: written (and synced with `-durable`), or the I/O error.
pub type AppendDone = oneshot::Receiver<io::Result<()>>;

struct Append {
    data: Bytes,
    points: u64,
    done: Option<oneshot::Sender<io::Result<()>>>,
}

/// Segments that exist and how far the live one is readable.
struct Tail {
    /// Every segment not yet deleted, oldest first; the last may be `live`.
    segments: VecDeque<u64>,
    /// The segment this process appends to (None until the first append).
    live: Option<u64>,
    /// Bytes of `live` written and visible to readers.
    published: u64,
}

/// The read side, used only by the destination's writer task.
struct Reader {
    seq: u64,
    offset: u64,
    /// The open segment: sequence, handle, and its length once it is complete.
    file: Option<(u64, File, Option<u64>)>,
}

/// One destination's spool. See the module documentation.
pub struct Spool {
    dir: PathBuf,
    name: String,
    max_bytes: u64,
    durable: bool,
    state: AtomicU64,
    tx: Mutex<Option<mpsc::Sender<Append>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    tail: Arc<Mutex<Tail>>,
    reader: Mutex<Reader>,
    delivered: Arc<Mutex<SpoolPos>>,
    /// Wakes the destination writer when records are published.
    ready: Arc<Notify>,
    /// Bytes moved to quarantine since start.
    quarantined: AtomicU64,
    /// An exclusive lock on `<dir>/lock`, held while open: a second process given
    /// the same `-spool-dir` must not append to (or replay and delete) these files.
    lock: Mutex<Option<fs::File>>,
}

/// Spool directories open in this process: two destinations must never share one
/// (a destination removed and re-added while its old writer still drains).
fn open_dirs() -> &'static Mutex<HashSet<PathBuf>> {
    static OPEN: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    OPEN.get_or_init(Default::default)
}

/// The spool subdirectory name of a destination: `127.0.0.1:2003:a` → `127.0.0.1_2003_a`.
pub fn dir_name(dest: &str) -> String {
    dest.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:016}.spool"))
}

fn crc(points: u32, data: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(&points.to_le_bytes());
    c.update(data);
    c.sum()
}

/// The on-disk size of a record holding `data_len` bytes.
pub fn record_size(data_len: usize) -> u64 {
    RECORD_HEADER + data_len as u64
}

impl Spool {
    /// Opens (creating if needed) the spool of destination `name` under `root`, and starts its
    /// append thread. Existing segments are queued for replay, after the saved cursor.
    pub fn open(root: &Path, name: &str, max_bytes: u64, durable: bool) -> io::Result<Arc<Spool>> {
        let dir = root.join(dir_name(name));
        fs::create_dir_all(&dir).map_err(|e| with_path(e, &dir))?;
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        if !open_dirs()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(canonical)
        {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("spool {} is already open in this process", dir.display()),
            ));
        }
        let lock = match lock_dir(&dir) {
            Ok(l) => l,
            Err(e) => {
                open_dirs()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&dir.canonicalize().unwrap_or_else(|_| dir.clone()));
                return Err(e);
            }
        };
        let mut seqs: Vec<u64> = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| with_path(e, &dir))? {
            let entry = entry?;
            let fname = entry.file_name();
            let fname = fname.to_string_lossy();
            if let Some(seq) = fname
                .strip_prefix("seg-")
                .and_then(|s| s.strip_suffix(".spool"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let cursor = read_cursor(&dir);
        // Segments wholly before the cursor were delivered: delete them.
        let mut start = SpoolPos {
            seq: seqs.first().copied().unwrap_or(1),
            offset: 0,
        };
        if let Some(c) = cursor {
            seqs.retain(|&s| {
                if s < c.seq {
                    let _ = fs::remove_file(segment_path(&dir, s));
                    false
                } else {
                    true
                }
            });
            if seqs.first() == Some(&c.seq) {
                start = c;
            } else if let Some(&first) = seqs.first() {
                start = SpoolPos {
                    seq: first,
                    offset: 0,
                };
            }
        }
        let mut backlog = 0u64;
        for &s in &seqs {
            let len = fs::metadata(segment_path(&dir, s))
                .map(|m| m.len())
                .unwrap_or(0);
            let from = if s == start.seq {
                start.offset.max(SEGMENT_MAGIC.len() as u64)
            } else {
                SEGMENT_MAGIC.len() as u64
            };
            backlog += len.saturating_sub(from);
        }
        let next_seq = seqs.last().map(|s| s + 1).unwrap_or(1);
        if backlog > 0 {
            tracing::info!(
                "Spool for destination {name}: {backlog} bytes in {} segment(s) to replay from {}",
                seqs.len(),
                dir.display()
            );
        }
        let tail = Arc::new(Mutex::new(Tail {
            segments: seqs.into_iter().collect(),
            live: None,
            published: 0,
        }));
        let ready = Arc::new(Notify::new());
        let delivered = Arc::new(Mutex::new(start));
        let (tx, rx) = mpsc::channel();
        let seg_bytes = (max_bytes / 16).clamp(1 << 20, 64 << 20);
        let appender = Appender {
            dir: dir.clone(),
            name: name.to_string(),
            durable,
            seg_bytes,
            next_seq,
            file: None,
            tail: tail.clone(),
            ready: ready.clone(),
            delivered: delivered.clone(),
            saved: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("spool-{}", dir_name(name)))
            .spawn(move || appender.run(rx))?;
        Ok(Arc::new(Spool {
            lock: Mutex::new(Some(lock)),
            dir,
            name: name.to_string(),
            max_bytes,
            durable,
            state: AtomicU64::new(if backlog > 0 { SPILLING | backlog } else { 0 }),
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            tail,
            reader: Mutex::new(Reader {
                seq: start.seq,
                offset: start.offset,
                file: None,
            }),
            delivered,
            ready,
            quarantined: AtomicU64::new(0),
        }))
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `-durable`: every batch goes through the spool and is synced before it is acknowledged.
    pub fn durable(&self) -> bool {
        self.durable
    }

    /// Bytes reserved or written and not yet read back.
    pub fn backlog(&self) -> u64 {
        self.state.load(Ordering::Acquire) & !SPILLING
    }

    /// True while new batches must go to the spool (it holds data not yet read back).
    pub fn is_spilling(&self) -> bool {
        self.state.load(Ordering::Acquire) & SPILLING != 0
    }

    /// Bytes moved to quarantine since the spool was opened.
    pub fn quarantined(&self) -> u64 {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` if the spool is spilling: `None` when it is not (the memory queue may
    /// take the batch), `Some(false)` when it is spilling but at its cap.
    pub fn reserve_if_spilling(&self, bytes: u64) -> Option<bool> {
        let mut result = None;
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                if s & SPILLING == 0 {
                    result = None;
                    return None;
                }
                if (s & !SPILLING) >= self.max_bytes {
                    result = Some(false);
                    return None;
                }
                result = Some(true);
                Some(s + bytes)
            });
        result
    }

    /// Reserves `bytes` and starts spilling, if the spool is below its cap.
    pub fn reserve(&self, bytes: u64) -> bool {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                ((s & !SPILLING) < self.max_bytes).then_some((s + bytes) | SPILLING)
            })
            .is_ok()
    }

    /// Reserves `bytes` whatever the cap (shutdown moves the memory queue here).
    pub fn reserve_forced(&self, bytes: u64) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some((s + bytes) | SPILLING)
            });
    }

    /// Returns a reservation that will not be written.
    pub fn unreserve(&self, bytes: u64) {
        self.state.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Stops spilling if everything was read back (never with `-durable`). True when the
    /// memory queue may take batches again.
    pub fn try_stop_spilling(&self) -> bool {
        if self.durable {
            return false;
        }
        self.state
            .compare_exchange(SPILLING, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            || self.state.load(Ordering::Acquire) == 0
    }

    /// Appends a chunk for which [`record_size`] bytes were reserved. The answer arrives once
    /// the record is written (and synced, with `-durable`).
    pub fn append(&self, chunk: &Chunk) -> AppendDone {
        let (done, rx) = oneshot::channel();
        let size = record_size(chunk.data.len());
        let msg = Append {
            data: chunk.data.clone(),
            points: chunk.points,
            done: Some(done),
        };
        let sent = match &*self.tx.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.send(msg).map_err(|e| e.0),
            None => Err(msg),
        };
        if let Err(mut msg) = sent {
            self.unreserve(size);
            if let Some(done) = msg.done.take() {
                let _ = done.send(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "spool is closed (shutting down)",
                )));
            }
        }
        rx
    }

    /// Completes when an append was published (the writer should try to read again).
    pub async fn published(&self) {
        self.ready.notified().await
    }

    /// Records that everything up to `pos` was written to the destination.
    pub fn delivered(&self, pos: SpoolPos) {
        let mut d = self.delivered.lock().unwrap_or_else(|e| e.into_inner());
        if pos > *d {
            *d = pos;
        }
    }

    /// Reads the next records, up to about `max_bytes` of data, in order. Blocking: call it
    /// from a blocking thread. Corrupt or torn data is quarantined and skipped.
    pub fn read(&self, max_bytes: usize) -> io::Result<Vec<(Chunk, SpoolPos)>> {
        let mut guard = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let r: &mut Reader = &mut guard;
        let mut out = Vec::new();
        let mut got = 0usize;
        while got < max_bytes {
            // Which segment, and how far it may be read.
            let (limit, complete) = {
                let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
                let Some(&first) = tail.segments.iter().find(|&&s| s >= r.seq) else {
                    break;
                };
                if first != r.seq {
                    r.seq = first;
                    r.offset = 0;
                    r.file = None;
                }
                if tail.live == Some(r.seq) {
                    (tail.published, false)
                } else {
                    (u64::MAX, true)
                }
            };
            if r.file.as_ref().map(|f| f.0) != Some(r.seq) {
                let path = segment_path(&self.dir, r.seq);
                let file = File::open(&path).map_err(|e| with_path(e, &path))?;
                r.file = Some((r.seq, file, None));
            }
            let seq = r.seq;
            let (_, file, complete_len) = r.file.as_mut().expect("opened above");
            let limit = if complete {
                match complete_len {
                    Some(l) => *l,
                    None => *complete_len.insert(file.metadata()?.len()),
                }
            } else {
                limit
            };
            let file = &*file;
            if r.offset < SEGMENT_MAGIC.len() as u64 {
                if limit < SEGMENT_MAGIC.len() as u64 {
                    if complete {
                        self.quarantine(file, seq, 0, limit, "segment shorter than its header");
                        self.next_segment(r);
                        continue;
                    }
                    break;
                }
                let mut magic = [0u8; 8];
                file.read_exact_at(&mut magic, 0)?;
                if &magic != SEGMENT_MAGIC {
                    self.quarantine(file, seq, 0, limit, "not a spool segment (bad magic)");
                    self.next_segment(r);
                    continue;
                }
                r.offset = SEGMENT_MAGIC.len() as u64;
            }
            let off = r.offset;
            if off >= limit {
                if complete {
                    self.next_segment(r);
                    continue;
                }
                break;
            }
            if limit - off < RECORD_HEADER {
                if complete {
                    self.quarantine(file, seq, off, limit, "torn record header");
                    self.next_segment(r);
                    continue;
                }
                break;
            }
            let mut hdr = [0u8; RECORD_HEADER as usize];
            file.read_exact_at(&mut hdr, off)?;
            let len = u32::from_le_bytes(hdr[0..4].try_into().unwrap()) as u64;
            let points = u32::from_le_bytes(hdr[4..8].try_into().unwrap());
            let sum = u32::from_le_bytes(hdr[8..12].try_into().unwrap());
            let end = off + RECORD_HEADER + len;
            if len == 0 || len > MAX_RECORD || end > limit {
                if complete {
                    self.quarantine(file, seq, off, limit, "torn record (cut short)");
                    self.next_segment(r);
                    continue;
                }
                break;
            }
            let mut buf = BytesMut::zeroed(len as usize);
            file.read_exact_at(&mut buf, off + RECORD_HEADER)?;
            if crc(points, &buf) != sum || buf.last() != Some(&b'\n') {
                if complete {
                    self.quarantine(file, seq, off, limit, "checksum mismatch");
                    self.next_segment(r);
                } else {
                    // Written by this process and already published: the disk returned other
                    // bytes. Skip just this record.
                    self.quarantine(file, seq, off, end, "checksum mismatch");
                    r.offset = end;
                }
                continue;
            }
            r.offset = end;
            self.consumed(RECORD_HEADER + len);
            got += len as usize;
            out.push((
                Chunk {
                    data: buf.freeze(),
                    points: points as u64,
                },
                SpoolPos { seq, offset: end },
            ));
        }
        Ok(out)
    }

    /// The reader moves past `bytes` bytes: they no longer count against the cap.
    fn consumed(&self, bytes: u64) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                let spill = s & SPILLING;
                Some(spill | (s & !SPILLING).saturating_sub(bytes))
            });
    }

    fn next_segment(&self, r: &mut Reader) {
        r.seq += 1;
        r.offset = 0;
        r.file = None;
    }

    /// Copies `[from, to)` of segment `seq` to `quarantine/` and logs it; the bytes stop
    /// counting. For a complete segment (`to` is its end) the segment is cut at `from`, so the
    /// next start-up does not find the damage again.
    fn quarantine(&self, file: &File, seq: u64, from: u64, to: u64, why: &str) {
        let n = to.saturating_sub(from);
        let qdir = self.dir.join("quarantine");
        let qpath = qdir.join(format!("seg-{seq:016}.{from}.bad"));
        let saved = (|| -> io::Result<()> {
            fs::create_dir_all(&qdir)?;
            let mut buf = vec![0u8; n as usize];
            file.read_exact_at(&mut buf, from)?;
            fs::write(&qpath, &buf)
        })();
        // The segment header never counted in the backlog.
        self.consumed(to.saturating_sub(from.max(SEGMENT_MAGIC.len() as u64)));
        let seg = segment_path(&self.dir, seq);
        let complete = file.metadata().map(|m| m.len() == to).unwrap_or(false)
            && self.tail.lock().unwrap_or_else(|e| e.into_inner()).live != Some(seq);
        if saved.is_ok() && complete {
            let cut = if from < SEGMENT_MAGIC.len() as u64 {
                fs::remove_file(&seg)
            } else {
                OpenOptions::new()
                    .write(true)
                    .open(&seg)
                    .and_then(|f| f.set_len(from))
            };
            if let Err(e) = cut {
                tracing::warn!("Spool: cannot cut {} at {from}: {e}", seg.display());
            }
        }
        self.quarantined.fetch_add(n, Ordering::Relaxed);
        match saved {
            Ok(()) => tracing::error!(
                "Spool for destination {}: segment {} is damaged at offset {from} ({why}); \
                 the records before it are replayed, {n} bytes quarantined to {}",
                self.name,
                segment_path(&self.dir, seq).display(),
                qpath.display()
            ),
            Err(e) => tracing::error!(
                "Spool for destination {}: segment {} is damaged at offset {from} ({why}); \
                 the records before it are replayed, {n} bytes skipped (could not save them to {}: {e})",
                self.name,
                segment_path(&self.dir, seq).display(),
                qpath.display()
            ),
        }
    }

    /// Stops the append thread after it has written everything sent so far, and saves the
    /// cursor. Blocking. Appends after this fail (their batches are refused).
    pub fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        let canonical = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
        drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()).take());
        open_dirs()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&canonical);
    }
}

/// Takes the exclusive lock of a spool directory, or says who must let go of it.
fn lock_dir(dir: &Path) -> io::Result<fs::File> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| with_path(e, &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "spool {} is in use by another process (give each process its own -spool-dir)",
                dir.display()
            ),
        )),
        Err(fs::TryLockError::Error(e)) => Err(with_path(e, &path)),
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn read_cursor(dir: &Path) -> Option<SpoolPos> {
    let text = fs::read_to_string(dir.join("cursor")).ok()?;
    let mut it = text.split_whitespace();
    Some(SpoolPos {
        seq: it.next()?.parse().ok()?,
        offset: it.next()?.parse().ok()?,
    })
}

/// The append thread's state.
struct Appender {
    dir: PathBuf,
    name: String,
    durable: bool,
    seg_bytes: u64,
    next_seq: u64,
    /// The live segment: sequence, writer, bytes written.
    file: Option<(u64, BufWriter<File>, u64)>,
    tail: Arc<Mutex<Tail>>,
    ready: Arc<Notify>,
    delivered: Arc<Mutex<SpoolPos>>,
    /// The cursor last saved.
    saved: Option<SpoolPos>,
}

impl Appender {
    fn run(mut self, rx: mpsc::Receiver<Append>) {
        let mut last_tick = Instant::now();
        let mut group: Vec<Append> = Vec::new();
        loop {
            match rx.recv_timeout(TICK) {
                Ok(first) => {
                    let mut bytes = first.data.len();
                    group.push(first);
                    while bytes < GROUP_BYTES {
                        match rx.try_recv() {
                            Ok(m) => {
                                bytes += m.data.len();
                                group.push(m);
                            }
                            Err(_) => break,
                        }
                    }
                    let result = self.write_group(&group);
                    for mut m in group.drain(..) {
                        if let Some(done) = m.done.take() {
                            let _ = done.send(match &result {
                                Ok(()) => Ok(()),
                                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                            });
                        }
                    }
                    if let Err(e) = result {
                        tracing::error!(
                            "Spool for destination {}: write failed in {}: {e}; batches are refused until it works again",
                            self.name,
                            self.dir.display()
                        );
                        // Start a fresh segment next time: the live one may end mid-record.
                        self.file = None;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.tick();
                    return;
                }
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.tick();
            }
        }
    }

    /// Writes a group of records, publishes them, and (with `-durable`) syncs them.
    fn write_group(&mut self, group: &[Append]) -> io::Result<()> {
        for m in group {
            let size = record_size(m.data.len());
            let roll = match &self.file {
                None => true,
                Some((_, _, len)) => {
                    *len > SEGMENT_MAGIC.len() as u64 && len + size > self.seg_bytes
                }
            };
            if roll {
                self.roll()?;
            }
            let (_, w, len) = self.file.as_mut().expect("rolled above");
            let points = u32::try_from(m.points).unwrap_or(u32::MAX);
            let len32 = u32::try_from(m.data.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record over 4 GiB"))?;
            let mut hdr = [0u8; RECORD_HEADER as usize];
            hdr[0..4].copy_from_slice(&len32.to_le_bytes());
            hdr[4..8].copy_from_slice(&points.to_le_bytes());
            hdr[8..12].copy_from_slice(&crc(points, &m.data).to_le_bytes());
            w.write_all(&hdr)?;
            w.write_all(&m.data)?;
            *len += size;
        }
        self.publish()
    }

    /// Flushes the live segment (and syncs it with `-durable`), then makes it readable.
    fn publish(&mut self) -> io::Result<()> {
        if let Some((seq, w, len)) = self.file.as_mut() {
            w.flush()?;
            if self.durable {
                w.get_ref().sync_data()?;
            }
            let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            tail.live = Some(*seq);
            tail.published = *len;
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Closes the live segment (complete from now on) and starts the next one.
    fn roll(&mut self) -> io::Result<()> {
        self.publish()?;
        let seq = self.next_seq;
        let path = segment_path(&self.dir, seq);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| with_path(e, &path))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(SEGMENT_MAGIC)?;
        w.flush()?;
        if self.durable {
            // The new file's directory entry must survive a crash too.
            w.get_ref().sync_data()?;
            File::open(&self.dir)?.sync_all()?;
        }
        self.next_seq += 1;
        {
            let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            // The previous live segment is complete from now on: readers use its file length.
            tail.live = Some(seq);
            tail.published = SEGMENT_MAGIC.len() as u64;
            tail.segments.push_back(seq);
        }
        self.file = Some((seq, w, SEGMENT_MAGIC.len() as u64));
        Ok(())
    }

    /// Saves the cursor and deletes segments wholly delivered.
    fn tick(&mut self) {
        let pos = *self.delivered.lock().unwrap_or_else(|e| e.into_inner());
        if self.saved == Some(pos) {
            return;
        }
        let tmp = self.dir.join("cursor.tmp");
        let saved = fs::write(&tmp, format!("{} {}\n", pos.seq, pos.offset))
            .and_then(|_| fs::rename(&tmp, self.dir.join("cursor")));
        if let Err(e) = saved {
            tracing::warn!(
                "Spool for destination {}: cannot save the cursor in {}: {e}",
                self.name,
                self.dir.display()
            );
            return;
        }
        self.saved = Some(pos);
        let live = self.file.as_ref().map(|f| f.0);
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&s) = tail.segments.front() {
            if s >= pos.seq || Some(s) == live {
                break;
            }
            tail.segments.pop_front();
            let _ = fs::remove_file(segment_path(&self.dir, s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(prefix: &str, n: usize) -> Chunk {
        let mut s = String::new();
        for i in 0..n {
            s.push_str(&format!("{prefix}.m{i} {i} 1700000000\n"));
        }
        Chunk {
            data: Bytes::from(s),
            points: n as u64,
        }
    }

    fn append(spool: &Spool, c: &Chunk) {
        assert!(spool.reserve(record_size(c.data.len())));
        spool.append(c).blocking_recv().unwrap().unwrap();
    }

    fn read_all(spool: &Spool) -> Vec<Chunk> {
        let mut out = Vec::new();
        loop {
            let got = spool.read(1 << 20).unwrap();
            if got.is_empty() {
                return out;
            }
            for (c, pos) in got {
                spool.delivered(pos);
                out.push(c);
            }
        }
    }

    #[test]
    fn records_come_back_in_order_and_spilling_stops_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "127.0.0.1:2003", 1 << 30, false).unwrap();
        let chunks: Vec<Chunk> = (0..50).map(|i| chunk(&format!("c{i}"), 100)).collect();
        for c in &chunks {
            append(&spool, c);
        }
        assert!(spool.is_spilling());
        let back = read_all(&spool);
        assert_eq!(back.len(), 50);
        for (a, b) in chunks.iter().zip(&back) {
            assert_eq!((&a.data, a.points), (&b.data, b.points));
        }
        assert_eq!(spool.backlog(), 0);
        assert!(spool.try_stop_spilling());
        assert!(!spool.is_spilling());
    }

    #[test]
    fn a_reopened_spool_replays_after_its_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "d:1", 1 << 30, true).unwrap();
        for i in 0..10 {
            append(&spool, &chunk(&format!("a{i}"), 10));
        }
        // Deliver the first four, then "restart".
        let first = spool.read(1).unwrap();
        assert_eq!(first.len(), 1);
        spool.delivered(first[0].1);
        let more = spool.read(1).unwrap();
        spool.delivered(more[0].1);
        spool.close();
        drop(spool);
        let spool = Spool::open(dir.path(), "d:1", 1 << 30, true).unwrap();
        assert!(spool.is_spilling());
        let back = read_all(&spool);
        assert_eq!(back.len(), 8);
        assert_eq!(back[0].data, chunk("a2", 10).data);
    }

    #[test]
    fn the_cap_refuses_once_reached() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "d:2", 1000, false).unwrap();
        assert_eq!(spool.reserve_if_spilling(10), None);
        assert!(spool.reserve(900));
        assert_eq!(spool.reserve_if_spilling(200), Some(true));
        assert_eq!(spool.reserve_if_spilling(1), Some(false));
        assert!(!spool.reserve(1));
    }

    #[test]
    fn a_torn_tail_is_quarantined_and_the_good_part_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "d:3", 1 << 30, false).unwrap();
        for i in 0..5 {
            append(&spool, &chunk(&format!("t{i}"), 20));
        }
        spool.close();
        let sdir = spool.dir().to_path_buf();
        drop(spool);
        let seg = segment_path(&sdir, 1);
        let len = fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 7).unwrap();
        let spool = Spool::open(dir.path(), "d:3", 1 << 30, false).unwrap();
        let back = read_all(&spool);
        assert_eq!(back.len(), 4);
        assert!(spool.quarantined() > 0);
        assert_eq!(spool.backlog(), 0);
        assert!(sdir.join("quarantine").read_dir().unwrap().count() == 1);
    }
}
