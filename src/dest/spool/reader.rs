//! The read side, used only by the destination's writer task: records back in order, up to
//! what the append thread has published, and the delivered position (the cursor).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;

use super::format::{segment_path, Header, MAGIC_LEN, RECORD_HEADER, SEGMENT_MAGIC};
use super::{with_path, Spool, SpoolPos, SPILLING};
use crate::dest::Chunk;

/// Where the reader is.
pub(super) struct Reader {
    pub seq: u64,
    pub offset: u64,
    /// The open segment: sequence, handle, and its readable length once it is complete.
    pub file: Option<(u64, Arc<File>, Option<u64>)>,
}

/// What the reader found at its offset.
enum Found {
    /// A good record ending at the position.
    Record(Chunk, SpoolPos),
    /// Nothing more to read now in this segment (the live one: wait for more).
    Wait,
    /// The segment is read to its end: go to the next one.
    End,
    /// Damage or a void record was skipped; read on.
    Skipped,
}

impl Spool {
    /// Records that everything up to `pos` was written to the destination.
    pub fn delivered(&self, pos: SpoolPos) {
        let mut d = self.delivered.lock().unwrap_or_else(|e| e.into_inner());
        if pos > *d {
            *d = pos;
        }
    }

    /// Reads the next records, up to about `max_bytes` of data, in order. Blocking: call it
    /// from a blocking thread. Damage is quarantined and skipped up to the next good record.
    pub fn read(&self, max_bytes: usize) -> io::Result<Vec<(Chunk, SpoolPos)>> {
        let mut guard = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let r: &mut Reader = &mut guard;
        let mut out = Vec::new();
        let mut got = 0usize;
        while got < max_bytes {
            let Some((limit, complete)) = self.position(r)? else {
                break;
            };
            match self.read_one(r, limit, complete)? {
                Found::Record(chunk, pos) => {
                    got += chunk.data.len();
                    out.push((chunk, pos));
                }
                Found::Wait => break,
                Found::End => self.next_segment(r),
                Found::Skipped => {}
            }
        }
        Ok(out)
    }

    /// Moves the reader to the first segment not yet read and opens it: how far it may be
    /// read and whether it is complete. None when there is no segment to read.
    fn position(&self, r: &mut Reader) -> io::Result<Option<(u64, bool)>> {
        let (live_limit, sealed, handle) = {
            let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            let Some(&first) = tail.segments.iter().find(|&&s| s >= r.seq) else {
                return Ok(None);
            };
            if first != r.seq {
                r.seq = first;
                r.offset = 0;
                r.file = None;
            }
            let live = (tail.live == Some(r.seq)).then_some(tail.published);
            let gate = tail
                .gates
                .range(
                    SpoolPos {
                        seq: r.seq,
                        offset: 0,
                    }..,
                )
                .next()
                .filter(|g| g.seq == r.seq)
                .map(|g| g.offset);
            // An open gate holds readers back like the live segment's end does.
            let open_until = match (gate, live) {
                (Some(g), Some(l)) => Some(g.min(l)),
                (g, l) => g.or(l),
            };
            let handle = tail.files.get(&r.seq).cloned();
            (open_until, tail.sealed.get(&r.seq).copied(), handle)
        };
        if r.file.as_ref().map(|f| f.0) != Some(r.seq) {
            // Never opened by name: the file may have been deleted by hand since.
            let file = handle.ok_or_else(|| {
                let path = segment_path(&self.dir, r.seq);
                with_path(io::ErrorKind::NotFound.into(), &path)
            })?;
            r.file = Some((r.seq, file, None));
        }
        if let Some(limit) = live_limit {
            return Ok(Some((limit, false)));
        }
        let (_, file, complete_len) = r.file.as_mut().expect("opened above");
        let len = match complete_len {
            Some(l) => *l,
            None => {
                let on_disk = file.metadata()?.len();
                *complete_len.insert(sealed.map_or(on_disk, |s| s.min(on_disk)))
            }
        };
        Ok(Some((len, true)))
    }

    /// Reads the record at the reader's offset, or skips the damage there.
    fn read_one(&self, r: &mut Reader, limit: u64, complete: bool) -> io::Result<Found> {
        let seq = r.seq;
        let file = &r.file.as_ref().expect("opened by position").1;
        if r.offset < MAGIC_LEN {
            if limit < MAGIC_LEN {
                if !complete {
                    return Ok(Found::Wait);
                }
                self.quarantine(file, seq, 0, limit, true, "segment shorter than its header");
                return Ok(Found::End);
            }
            let mut magic = [0u8; 8];
            file.read_exact_at(&mut magic, 0)?;
            if &magic != SEGMENT_MAGIC {
                self.quarantine(file, seq, 0, limit, true, "not a spool segment (bad magic)");
                return Ok(Found::End);
            }
            r.offset = MAGIC_LEN;
        }
        let off = r.offset;
        if off >= limit {
            return Ok(if complete { Found::End } else { Found::Wait });
        }
        // What is published always ends on a record boundary, so anything that does not
        // check out below `limit` is damage, in the live segment too.
        if limit - off < RECORD_HEADER {
            r.offset = self.skip_damage(file, seq, off, limit, complete, "torn record header")?;
            return Ok(Found::Skipped);
        }
        let mut hdr = [0u8; RECORD_HEADER as usize];
        file.read_exact_at(&mut hdr, off)?;
        let h = Header::decode(&hdr);
        if !h.plausible(off, limit) {
            let why = "bad record header or torn record";
            r.offset = self.skip_damage(file, seq, off, limit, complete, why)?;
            return Ok(Found::Skipped);
        }
        let mut buf = BytesMut::zeroed(h.len as usize);
        file.read_exact_at(&mut buf, off + RECORD_HEADER)?;
        if !h.matches(&buf) {
            r.offset = self.skip_damage(file, seq, off, limit, complete, "checksum mismatch")?;
            return Ok(Found::Skipped);
        }
        let end = off + RECORD_HEADER + h.len;
        r.offset = end;
        self.consumed(RECORD_HEADER + h.len);
        if h.points == 0 {
            // Void: a refused batch's record ([`super::gate`]).
            return Ok(Found::Skipped);
        }
        Ok(Found::Record(
            Chunk {
                data: buf.freeze(),
                points: h.points as u64,
            },
            SpoolPos { seq, offset: end },
        ))
    }

    /// The reader moves past `bytes` bytes: they no longer count against the cap.
    pub(super) fn consumed(&self, bytes: u64) {
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
}
