//! The append thread: writes records in groups, rolls segments, syncs (`-durable`), saves
//! the cursor and deletes delivered segments.
//!
//! # Failures leave the spool usable
//! A failed write (ENOSPC, EIO, anything) fails exactly the appends that are not published:
//! the live segment is cut back to what was published (so no refused batch is ever replayed)
//! and sealed there, the failed appends give their reserved bytes back, and the next append
//! starts a fresh segment under a number never used before (a segment whose header could not
//! be written is removed, and its number is not reused). Delivered segments are deleted even
//! when the cursor cannot be saved, so a destination that drains the spool frees the disk, and
//! appends work again as soon as there is space: no restart needed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use super::format::{record_size, segment_path, Header, MAGIC_LEN, SEGMENT_MAGIC};
use super::gate::SharedSlot;
use super::{with_path, SpoolPos, Tail};

/// How often the cursor is saved and fully delivered segments are deleted.
const TICK: Duration = Duration::from_secs(1);
/// Most bytes the append thread writes before it publishes and acknowledges a group.
const GROUP_BYTES: usize = 8 << 20;

/// One record to append, and who waits for it.
pub(super) struct Append {
    pub data: Bytes,
    pub points: u64,
    pub done: Option<oneshot::Sender<io::Result<()>>>,
    /// Set for a gated append ([`super::gate`]).
    pub gate: Option<SharedSlot>,
}

/// The segment being appended to.
struct Live {
    seq: u64,
    w: BufWriter<File>,
    /// Bytes written (header and records).
    len: u64,
    /// Bytes flushed (synced with `-durable`) and visible to readers.
    published: u64,
}

/// The append thread's state.
pub(super) struct Appender {
    pub dir: PathBuf,
    pub name: String,
    pub durable: bool,
    pub seg_bytes: u64,
    /// The next segment number; never reused within a process, even after a failed roll.
    pub next_seq: u64,
    pub tail: Arc<Mutex<Tail>>,
    pub ready: Arc<Notify>,
    pub delivered: Arc<Mutex<SpoolPos>>,
    /// The spool's reservation state: failed appends give their bytes back here.
    pub state: Arc<AtomicU64>,
    /// The cursor last saved.
    pub saved: Option<SpoolPos>,
    /// Whether the last cursor save failed (logged once until it works again).
    pub cursor_failing: bool,
    live: Option<Live>,
}

impl Appender {
    /// An append thread's state; `next_seq` is above every segment and the cursor.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: PathBuf,
        name: &str,
        durable: bool,
        seg_bytes: u64,
        next_seq: u64,
        tail: Arc<Mutex<Tail>>,
        ready: Arc<Notify>,
        delivered: Arc<Mutex<SpoolPos>>,
        state: Arc<AtomicU64>,
    ) -> Appender {
        Appender {
            dir,
            name: name.to_string(),
            durable,
            seg_bytes,
            next_seq,
            tail,
            ready,
            delivered,
            state,
            saved: None,
            cursor_failing: false,
            live: None,
        }
    }

    pub fn run(mut self, rx: mpsc::Receiver<Append>) {
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
                    self.commit(&mut group);
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

    /// Writes a group and answers each append: the published ones succeed, the others fail
    /// and give their reservation back.
    fn commit(&mut self, group: &mut Vec<Append>) {
        let (ok, err) = self.write_group(group);
        for (i, mut m) in group.drain(..).enumerate() {
            let result = match &err {
                Some(e) if i >= ok => {
                    self.state
                        .fetch_sub(record_size(m.data.len()), Ordering::AcqRel);
                    self.ungate(&m);
                    Err(io::Error::new(e.kind(), e.to_string()))
                }
                _ => Ok(()),
            };
            if let Some(done) = m.done.take() {
                let _ = done.send(result);
            }
        }
        if let Some(e) = err {
            tracing::error!(
                "Spool for destination {}: write failed in {}: {e}; batches are refused until it works again",
                self.name,
                self.dir.display()
            );
            self.seal_live();
            // Space may be held by delivered segments: free it now.
            self.delete_delivered();
        }
    }

    /// Writes a group of records and publishes them. Returns how many of the group (from
    /// the front) are published, and the error that stopped the rest.
    fn write_group(&mut self, group: &[Append]) -> (usize, Option<io::Error>) {
        let mut ok = 0;
        let mut deleted = self.live_deleted();
        for (i, m) in group.iter().enumerate() {
            let size = record_size(m.data.len());
            let roll = match &self.live {
                None => true,
                Some(l) => {
                    std::mem::take(&mut deleted)
                        || l.len > MAGIC_LEN && l.len + size > self.seg_bytes
                }
            };
            if roll {
                if let Err(e) = self.publish() {
                    return (ok, Some(e));
                }
                ok = i;
                if let Err(e) = self.open_next() {
                    return (ok, Some(e));
                }
            }
            if let Err(e) = self.write_record(m) {
                return (ok, Some(e));
            }
        }
        match self.publish() {
            Ok(()) => (group.len(), None),
            Err(e) => (ok, Some(e)),
        }
    }

    fn write_record(&mut self, m: &Append) -> io::Result<()> {
        let live = self.live.as_mut().expect("rolled before writing");
        if u32::try_from(m.data.len()).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record over 4 GiB",
            ));
        }
        let mut points = u32::try_from(m.points).unwrap_or(u32::MAX);
        if let Some(slot) = &m.gate {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            if slot.decision == Some(false) {
                // Aborted before it was written: write it void.
                points = 0;
            } else {
                let at = SpoolPos {
                    seq: live.seq,
                    offset: live.len,
                };
                slot.at = Some(at);
                self.tail
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .gates
                    .insert(at);
            }
        }
        live.w.write_all(&Header::encode(points, &m.data))?;
        live.w.write_all(&m.data)?;
        live.len += record_size(m.data.len());
        Ok(())
    }

    /// A gated append failed: its gate no longer holds readers back.
    fn ungate(&self, m: &Append) {
        let Some(slot) = &m.gate else {
            return;
        };
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = slot.at.take() {
            self.tail
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .gates
                .remove(&at);
        }
    }

    /// True when the live segment's file was deleted (by hand: the daemon deletes only
    /// delivered segments, never the live one). What it holds is still read back through
    /// the readers' handle; new records go to a new segment, so that a restart finds them.
    fn live_deleted(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(live) = &self.live else {
            return false;
        };
        let gone = live.w.get_ref().metadata().is_ok_and(|m| m.nlink() == 0);
        if gone {
            tracing::warn!(
                "Spool for destination {}: {} was deleted while in use; its records are \
                 still delivered from the open file (a restart before then loses them), new \
                 ones go to a new segment",
                self.name,
                segment_path(&self.dir, live.seq).display()
            );
        }
        gone
    }

    /// Flushes the live segment (and syncs it with `-durable`), then makes it readable.
    fn publish(&mut self) -> io::Result<()> {
        if let Some(live) = self.live.as_mut() {
            if live.published < live.len {
                live.w.flush()?;
                if self.durable {
                    live.w.get_ref().sync_data()?;
                }
                live.published = live.len;
                let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
                tail.live = Some(live.seq);
                tail.published = live.len;
            }
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Completes the live segment (readers use its file length from now on) and starts the
    /// next one. On failure there is no live segment, and the number is not reused.
    fn open_next(&mut self) -> io::Result<()> {
        if let Some(old) = self.live.take() {
            drop(old.w);
            self.tail.lock().unwrap_or_else(|e| e.into_inner()).live = None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = segment_path(&self.dir, seq);
        let create = || {
            OpenOptions::new()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)
        };
        let file = match create() {
            // The directory was deleted by hand: make it again rather than refuse every
            // batch until a restart.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(
                    "Spool for destination {}: {} was deleted while in use; making it again",
                    self.name,
                    self.dir.display()
                );
                fs::create_dir_all(&self.dir).and_then(|_| create())
            }
            r => r,
        }
        .map_err(|e| with_path(e, &path))?;
        // The readers' handle (see `Tail::files`); positioned reads share no offset.
        let read = match file.try_clone() {
            Ok(f) => Arc::new(f),
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(with_path(e, &path));
            }
        };
        let started = (|| -> io::Result<BufWriter<File>> {
            let mut w = BufWriter::with_capacity(1 << 20, file);
            w.write_all(SEGMENT_MAGIC)?;
            w.flush()?;
            if self.durable {
                // The new file's directory entry must survive a crash too.
                w.get_ref().sync_data()?;
                File::open(&self.dir)?.sync_all()?;
            }
            Ok(w)
        })();
        let w = match started {
            Ok(w) => w,
            Err(e) => {
                // Never replayed, never appended to: a later roll takes the next number.
                let _ = fs::remove_file(&path);
                return Err(with_path(e, &path));
            }
        };
        {
            let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            tail.live = Some(seq);
            tail.published = MAGIC_LEN;
            tail.segments.push_back(seq);
            tail.files.insert(seq, read);
        }
        self.live = Some(Live {
            seq,
            w,
            len: MAGIC_LEN,
            published: MAGIC_LEN,
        });
        Ok(())
    }

    /// After a failed write: the live segment ends at what was published. Its unpublished
    /// bytes (appends that were refused) are cut off, and readers stop at the published
    /// length even if the cut fails; the next append starts a new segment.
    fn seal_live(&mut self) {
        let Some(live) = self.live.take() else {
            return;
        };
        // Buffered bytes belong to refused appends: discard them, do not flush.
        let (file, _unwritten) = live.w.into_parts();
        if let Err(e) = file.set_len(live.published) {
            tracing::warn!(
                "Spool for destination {}: cannot cut {} back to {} bytes: {e}; \
                 readers stop there",
                self.name,
                segment_path(&self.dir, live.seq).display(),
                live.published
            );
        }
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.sealed.insert(live.seq, live.published);
        tail.live = None;
    }

    /// Deletes segments wholly delivered, then saves the cursor.
    fn tick(&mut self) {
        self.delete_delivered();
        let pos = *self.delivered.lock().unwrap_or_else(|e| e.into_inner());
        if self.saved == Some(pos) {
            return;
        }
        let tmp = self.dir.join("cursor.tmp");
        let saved = fs::write(&tmp, format!("{} {}\n", pos.seq, pos.offset))
            .and_then(|_| fs::rename(&tmp, self.dir.join("cursor")));
        match saved {
            Ok(()) => {
                self.saved = Some(pos);
                self.cursor_failing = false;
            }
            Err(e) => {
                if !self.cursor_failing {
                    tracing::warn!(
                        "Spool for destination {}: cannot save the cursor in {}: {e} \
                         (delivered segments are still deleted; a restart may replay some \
                         records twice)",
                        self.name,
                        self.dir.display()
                    );
                }
                self.cursor_failing = true;
            }
        }
    }

    /// Deletes segments the destination has received entirely, oldest first. Independent of
    /// the cursor file: a restart that finds the cursor before a deleted segment starts at the
    /// first segment left, which only repeats records, never skips any.
    fn delete_delivered(&mut self) {
        let pos = *self.delivered.lock().unwrap_or_else(|e| e.into_inner());
        let live = self.live.as_ref().map(|l| l.seq);
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&s) = tail.segments.front() {
            if Some(s) == live || s > pos.seq {
                break;
            }
            if s == pos.seq {
                let path = segment_path(&self.dir, s);
                let end = match tail.sealed.get(&s) {
                    Some(&l) => l,
                    None => fs::metadata(&path).map(|m| m.len()).unwrap_or(u64::MAX),
                };
                if pos.offset < end {
                    break;
                }
            }
            tail.segments.pop_front();
            tail.sealed.remove(&s);
            tail.files.remove(&s);
            let _ = fs::remove_file(segment_path(&self.dir, s));
        }
    }
}
