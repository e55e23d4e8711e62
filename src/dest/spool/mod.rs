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
//!   moved aside with their segment name and offset, and reported in the log with the points
//!   they held. Only the damaged bytes: the reader resumes at the next record whose header and
//!   CRC check out ([`recovery`]). Start-up never fails because of them.
//!
//! The code follows the concerns: [`format`] (record layout, CRC), [`appender`] (appending,
//! rolling, syncing, the cursor; surviving a full disk), `reader` (reading back, the delivered
//! position), [`recovery`] (damage and quarantine).
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

mod appender;
mod format;
mod gate;
mod reader;
mod recovery;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use tokio::sync::{oneshot, Notify};

use super::Chunk;
use appender::{Append, Appender};
pub use format::{dir_name, record_size, SpoolPos, RECORD_HEADER};
#[cfg(test)]
use format::{segment_path, MAGIC_LEN};
pub use gate::Gate;
use reader::Reader;

/// Top bit of `state`: the destination is spilling (new batches go to the spool).
const SPILLING: u64 = 1 << 63;

/// Answer to one append: written (and synced with `-durable`), or the I/O error. On an
/// error the spool has already returned the append's reservation.
pub type AppendDone = oneshot::Receiver<io::Result<()>>;

/// Segments that exist and how far the live one is readable.
struct Tail {
    /// Every segment not yet deleted, oldest first; the last may be `live`.
    segments: VecDeque<u64>,
    /// The segment this process appends to (None until the first append).
    live: Option<u64>,
    /// Bytes of `live` written and visible to readers.
    published: u64,
    /// Complete segments cut short by a failed write: readers stop at this length even if
    /// the file could not be truncated (the bytes after it belong to refused batches).
    sealed: HashMap<u64, u64>,
    /// Where gated records start that wait for their producer's decision ([`gate`]):
    /// readers stop before the first one of a segment.
    gates: BTreeSet<SpoolPos>,
    /// A read handle on every segment in `segments`, opened when the segment was found at
    /// start or created: a segment deleted by hand while the daemon runs (an operator
    /// freeing disk space) is still read back to the end, so what was acknowledged is
    /// delivered. Closed when the segment is deleted as delivered.
    files: HashMap<u64, Arc<fs::File>>,
}

/// One destination's spool. See the module documentation.
pub struct Spool {
    dir: PathBuf,
    name: String,
    max_bytes: u64,
    durable: bool,
    /// Bytes reserved or written and not yet read back, and the [`SPILLING`] bit; shared
    /// with the append thread, which gives back the reservations of failed appends.
    state: Arc<AtomicU64>,
    tx: Mutex<Option<mpsc::Sender<Append>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    tail: Arc<Mutex<Tail>>,
    reader: Mutex<Reader>,
    delivered: Arc<Mutex<SpoolPos>>,
    /// Wakes the destination writer when records are published.
    ready: Arc<Notify>,
    /// Bytes moved to quarantine since start.
    quarantined: AtomicU64,
    /// Points lost in damaged records since start (estimated from line ends when the
    /// damaged header cannot be trusted).
    damaged_points: AtomicU64,
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

impl Spool {
    /// Opens (creating if needed) the spool of destination `name` under `root`, and starts its
    /// append thread. Existing segments are queued for replay, after the saved cursor.
    pub fn open(root: &Path, name: &str, max_bytes: u64, durable: bool) -> io::Result<Arc<Spool>> {
        let dir = root.join(dir_name(name));
        fs::create_dir_all(&dir).map_err(|e| with_path(e, &dir))?;
        let lock = claim(&dir)?;
        let recovery::Found {
            seqs,
            start,
            backlog,
            next_seq,
        } = recovery::found(&dir)?;
        if backlog > 0 {
            tracing::info!(
                "Spool for destination {name}: {backlog} bytes in {} segment(s) to replay from {}",
                seqs.len(),
                dir.display()
            );
        }
        let mut files = HashMap::new();
        for &seq in &seqs {
            let path = format::segment_path(&dir, seq);
            let file = fs::File::open(&path).map_err(|e| with_path(e, &path))?;
            files.insert(seq, Arc::new(file));
        }
        let tail = Arc::new(Mutex::new(Tail {
            segments: seqs.into_iter().collect(),
            live: None,
            published: 0,
            sealed: HashMap::new(),
            gates: BTreeSet::new(),
            files,
        }));
        let ready = Arc::new(Notify::new());
        let delivered = Arc::new(Mutex::new(start));
        let (tx, rx) = mpsc::channel();
        let seg_bytes = (max_bytes / 16).clamp(1 << 20, 64 << 20);
        let state = Arc::new(AtomicU64::new(if backlog > 0 {
            SPILLING | backlog
        } else {
            0
        }));
        let appender = Appender::new(
            dir.clone(),
            name,
            durable,
            seg_bytes,
            next_seq,
            tail.clone(),
            ready.clone(),
            delivered.clone(),
            state.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("spool-{}", dir_name(name)))
            .spawn(move || appender.run(rx))?;
        Ok(Arc::new(Spool {
            lock: Mutex::new(Some(lock)),
            dir,
            name: name.to_string(),
            max_bytes,
            durable,
            state,
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
            damaged_points: AtomicU64::new(0),
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

    /// True while the spool is below `-spool-max-bytes` (a reservation would succeed).
    pub fn has_room(&self) -> bool {
        self.backlog() < self.max_bytes
    }

    /// True while new batches must go to the spool (it holds data not yet read back).
    pub fn is_spilling(&self) -> bool {
        self.state.load(Ordering::Acquire) & SPILLING != 0
    }

    /// Bytes moved to quarantine since the spool was opened.
    pub fn quarantined(&self) -> u64 {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Points lost in damaged records since the spool was opened.
    pub fn damaged_points(&self) -> u64 {
        self.damaged_points.load(Ordering::Relaxed)
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
        self.send(chunk, None)
    }

    /// [`append`](Self::append), but the record stays unreadable until the returned [`Gate`]
    /// commits it; aborted (or dropped), it is never delivered. For a batch whose parts go to
    /// several spools: it is held only once all of them are written.
    pub fn append_gated(self: &Arc<Self>, chunk: &Chunk) -> (AppendDone, Gate) {
        let slot = gate::SharedSlot::default();
        let done = self.send(chunk, Some(slot.clone()));
        (done, Gate::new(self.clone(), slot, chunk.data.clone()))
    }

    fn send(&self, chunk: &Chunk, gate: Option<gate::SharedSlot>) -> AppendDone {
        let (done, rx) = oneshot::channel();
        let size = record_size(chunk.data.len());
        let msg = Append {
            data: chunk.data.clone(),
            points: chunk.points,
            done: Some(done),
            gate,
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

/// Registers `dir` as open in this process and takes its lock.
fn claim(dir: &Path) -> io::Result<fs::File> {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
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
    let lock = match lock_dir(dir) {
        Ok(l) => l,
        Err(e) => {
            open_dirs()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()));
            return Err(e);
        }
    };
    Ok(lock)
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

pub(super) fn with_path(e: io::Error, path: &Path) -> io::Error {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use bytes::Bytes;

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

    /// Appends `count` chunks named `<prefix>0`.. of `points` points each, and returns them.
    fn append_numbered(spool: &Spool, prefix: &str, count: usize, points: usize) -> Vec<Chunk> {
        let chunks: Vec<Chunk> = (0..count)
            .map(|i| chunk(&format!("{prefix}{i}"), points))
            .collect();
        for c in &chunks {
            append(spool, c);
        }
        chunks
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
        let chunks = append_numbered(&spool, "c", 50, 100);
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
        append_numbered(&spool, "a", 10, 10);
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
        append_numbered(&spool, "t", 5, 20);
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

    /// Offsets where each record of segment 1 starts.
    fn record_offsets(seg: &Path) -> Vec<u64> {
        let bytes = fs::read(seg).unwrap();
        let mut at = MAGIC_LEN as usize;
        let mut out = Vec::new();
        while at + RECORD_HEADER as usize <= bytes.len() {
            out.push(at as u64);
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            at += RECORD_HEADER as usize + len;
        }
        out
    }

    fn flip(seg: &Path, at: u64, n: usize) {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new().read(true).write(true).open(seg).unwrap();
        let mut buf = vec![0u8; n];
        f.read_exact_at(&mut buf, at).unwrap();
        for b in &mut buf {
            *b ^= 0xff;
        }
        f.write_all_at(&buf, at).unwrap();
    }

    #[test]
    fn damage_in_the_middle_costs_only_the_damaged_records() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "d:4", 1 << 30, false).unwrap();
        let chunks = append_numbered(&spool, "x", 50, 20);
        spool.close();
        let sdir = spool.dir().to_path_buf();
        drop(spool);
        let seg = segment_path(&sdir, 1);
        let offsets = record_offsets(&seg);
        assert_eq!(offsets.len(), 50);
        // 16 bytes in the data of record 20, and 16 bytes over the header of record 35.
        flip(&seg, offsets[20] + RECORD_HEADER + 100, 16);
        flip(&seg, offsets[35], 16);
        let spool = Spool::open(dir.path(), "d:4", 1 << 30, false).unwrap();
        let back = read_all(&spool);
        let want: Vec<&Chunk> = chunks
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 20 && *i != 35)
            .map(|(_, c)| c)
            .collect();
        assert_eq!(back.len(), want.len(), "every undamaged record is replayed");
        for (a, b) in want.iter().zip(&back) {
            assert_eq!(a.data, b.data);
        }
        assert_eq!(spool.damaged_points(), 40, "the loss is counted");
        let damaged = (offsets[21] - offsets[20]) + (offsets[36] - offsets[35]);
        assert_eq!(
            spool.quarantined(),
            damaged,
            "only the damaged records quarantined"
        );
        assert_eq!(spool.backlog(), 0);
    }

    /// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount(size: &str) -> Option<Tmpfs> {
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
                return None;
            }
            Some(Tmpfs(dir))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    fn try_append(spool: &Spool, c: &Chunk) -> bool {
        if !spool.reserve(record_size(c.data.len())) {
            return false;
        }
        spool.append(c).blocking_recv().unwrap().is_ok()
    }

    fn full_disk_then_space_again(durable: bool) {
        let Some(fs) = Tmpfs::mount("2m") else {
            return;
        };
        let spool = Spool::open(fs.0.path(), "d:5", 1 << 30, durable).unwrap();
        let mut written = Vec::new();
        let mut failed = 0;
        for i in 0..200 {
            let c = chunk(&format!("full{i}"), 500);
            if try_append(&spool, &c) {
                written.push(c);
            } else {
                failed += 1;
            }
        }
        assert!(failed > 0 && !written.is_empty(), "{failed} failed");
        let expected: u64 = written.iter().map(|c| record_size(c.data.len())).sum();
        assert_eq!(
            spool.backlog(),
            expected,
            "failed appends gave back their bytes"
        );
        // Exactly the appends that succeeded come back: nothing of a refused one.
        let back = read_all(&spool);
        assert_eq!(back.len(), written.len());
        for (a, b) in written.iter().zip(&back) {
            assert_eq!(a.data, b.data);
        }
        assert_eq!(spool.quarantined(), 0);
        // Delivered segments are deleted (within a tick), and appends work again.
        let again = chunk("again", 500);
        let mut ok = false;
        for _ in 0..50 {
            if try_append(&spool, &again) {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(ok, "the spool accepts again once space is free");
        let back = read_all(&spool);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].data, again.data);
        spool.close();
    }

    #[test]
    fn a_full_disk_fails_appends_and_the_spool_works_again_when_space_returns() {
        full_disk_then_space_again(false);
    }

    #[test]
    fn a_full_disk_with_durable_fails_appends_and_works_again_when_space_returns() {
        full_disk_then_space_again(true);
    }
}
