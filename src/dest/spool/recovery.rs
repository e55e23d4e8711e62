//! Recovery from damaged segments: damage costs only the damaged record.
//!
//! When the record at the reader's offset does not check out (bad header, cut short, CRC
//! mismatch), the reader scans forward for the next offset where a plausible header and its
//! CRC check out, moves only the bytes in between to `quarantine/`, counts the points they
//! held (the damaged header's own count when it is intact, else the lines in the bytes), and
//! goes on from that record. A torn tail (a crash mid-write) has no good record after it: the
//! segment is cut there, so the next start-up does not find the damage again.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use std::path::Path;

use super::format::{segment_path, segment_seq, Header, MAGIC_LEN, RECORD_HEADER};
use super::{read_cursor, with_path, Spool, SpoolPos};

/// What a start-up finds in a spool directory.
pub(super) struct Found {
    /// Segments to read, oldest first.
    pub seqs: Vec<u64>,
    /// Where reading starts (the saved cursor, when its segment still exists).
    pub start: SpoolPos,
    /// Bytes to replay.
    pub backlog: u64,
    /// The number of the first segment this process writes.
    pub next_seq: u64,
}

/// Lists the segments of `dir`, deletes those wholly before the saved cursor, and works out
/// where to read and write.
pub(super) fn found(dir: &Path) -> io::Result<Found> {
    let mut seqs: Vec<u64> = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| with_path(e, dir))? {
        let entry = entry?;
        let fname = entry.file_name();
        let fname = fname.to_string_lossy();
        if let Some(seq) = segment_seq(&fname) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    let cursor = read_cursor(dir);
    // Segments wholly before the cursor were delivered: delete them.
    let mut start = SpoolPos {
        seq: seqs.first().copied().unwrap_or(1),
        offset: 0,
    };
    if let Some(c) = cursor {
        seqs.retain(|&s| {
            if s < c.seq {
                let _ = fs::remove_file(segment_path(dir, s));
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
        let len = fs::metadata(segment_path(dir, s))
            .map(|m| m.len())
            .unwrap_or(0);
        let from = if s == start.seq {
            start.offset.max(MAGIC_LEN)
        } else {
            MAGIC_LEN
        };
        backlog += len.saturating_sub(from);
    }
    // Above every segment and the cursor: a new segment numbered at or below a cursor
    // whose segment is gone would be skipped (or deleted) by the next start-up.
    let next_seq = seqs
        .last()
        .map(|s| s + 1)
        .unwrap_or(1)
        .max(cursor.map_or(1, |c| c.seq + 1));
    Ok(Found {
        seqs,
        start,
        backlog,
        next_seq,
    })
}

/// Bytes scanned per read while looking for the next good record.
const SCAN_WINDOW: usize = 1 << 20;

impl Spool {
    /// Skips damage at `off` in segment `seq`: quarantines up to the next good record (or
    /// `limit`) and returns the offset to read on from.
    pub(super) fn skip_damage(
        &self,
        file: &File,
        seq: u64,
        off: u64,
        limit: u64,
        complete: bool,
        why: &str,
    ) -> io::Result<u64> {
        let next = find_next_record(file, off + 1, limit)?;
        let to = next.unwrap_or(limit);
        let lost = lost_points(file, off, to);
        self.damaged_points.fetch_add(lost, Ordering::Relaxed);
        let tail = next.is_none();
        self.quarantine(file, seq, off, to, complete && tail, why);
        let resumed = match next {
            Some(at) => format!("reading on at the next good record (offset {at})"),
            None => "nothing readable after it in this segment".to_string(),
        };
        tracing::error!(
            "Spool for destination {}: {lost} points lost in the damaged bytes of segment {} \
             at offset {off}; {resumed}",
            self.name,
            segment_path(&self.dir, seq).display(),
        );
        Ok(to)
    }

    /// Copies `[from, to)` of segment `seq` to `quarantine/` and logs it; the bytes stop
    /// counting. With `cut` (the damage runs to the end of a complete segment) the segment is
    /// cut at `from`, so the next start-up does not find the damage again.
    pub(super) fn quarantine(
        &self,
        file: &File,
        seq: u64,
        from: u64,
        to: u64,
        cut: bool,
        why: &str,
    ) {
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
        self.consumed(to.saturating_sub(from.max(MAGIC_LEN)));
        let seg = segment_path(&self.dir, seq);
        let whole = file.metadata().map(|m| m.len() == to).unwrap_or(false)
            && self.tail.lock().unwrap_or_else(|e| e.into_inner()).live != Some(seq);
        if saved.is_ok() && cut && whole {
            let cut = if from < MAGIC_LEN {
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
                 the records around it are replayed, {n} bytes quarantined to {}",
                self.name,
                seg.display(),
                qpath.display()
            ),
            Err(e) => tracing::error!(
                "Spool for destination {}: segment {} is damaged at offset {from} ({why}); \
                 the records around it are replayed, {n} bytes skipped (could not save them to {}: {e})",
                self.name,
                seg.display(),
                qpath.display()
            ),
        }
    }
}

/// The first offset in `[from, limit)` where a record's header and CRC check out.
pub(super) fn find_next_record(file: &File, from: u64, limit: u64) -> io::Result<Option<u64>> {
    let hdr = RECORD_HEADER as usize;
    let mut start = from;
    while start + RECORD_HEADER <= limit {
        let n = ((limit - start) as usize).min(SCAN_WINDOW + hdr);
        let mut buf = vec![0u8; n];
        file.read_exact_at(&mut buf, start)?;
        let candidates = n - hdr + 1;
        for i in 0..candidates {
            let at = start + i as u64;
            let h = Header::decode(&buf[i..i + hdr]);
            if h.points == 0 || !h.plausible(at, limit) {
                continue;
            }
            if checks_out(file, at, &h)? {
                return Ok(Some(at));
            }
        }
        start += candidates as u64;
    }
    Ok(None)
}

/// True when the record with header `h` at `at` is whole and its CRC matches.
fn checks_out(file: &File, at: u64, h: &Header) -> io::Result<bool> {
    let data_at = at + RECORD_HEADER;
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, data_at + h.len - 1)?;
    if last[0] != b'\n' {
        return Ok(false);
    }
    let mut data = vec![0u8; h.len as usize];
    file.read_exact_at(&mut data, data_at)?;
    Ok(h.matches(&data))
}

/// Points lost in the damaged bytes `[from, to)`: the record's own count when its header is
/// intact (it spans exactly the damage), else the lines the bytes hold.
fn lost_points(file: &File, from: u64, to: u64) -> u64 {
    let mut hdr = [0u8; RECORD_HEADER as usize];
    if to - from >= RECORD_HEADER && file.read_exact_at(&mut hdr, from).is_ok() {
        let h = Header::decode(&hdr);
        if from + RECORD_HEADER + h.len == to && h.points > 0 {
            return h.points as u64;
        }
    }
    let mut buf = vec![0u8; (to - from) as usize];
    match file.read_exact_at(&mut buf, from) {
        Ok(()) => buf.iter().filter(|&&b| b == b'\n').count() as u64,
        Err(_) => 0,
    }
}
