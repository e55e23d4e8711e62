//! The proxy's disk spool: one file per gzip'ed batch, exactly the body that will be
//! POSTed, so replay needs no re-encoding.
//!
//! A file is written under a temporary name, fsync'd, renamed to
//! `<seq:020>-<points>.gz` and the directory fsync'd: after a crash a batch is either
//! wholly in the spool or not at all (temporary files are removed at start). The
//! sequence number orders replay oldest first; the point count in the name keeps
//! the books right across restarts without reading the files. A file is deleted only
//! after the gateway acknowledged it, so delivery is at least once.
//!
//! All methods that touch the disk block; callers run them on the blocking pool.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// A spooled batch, as listed in the directory.
#[derive(Debug, Clone, Copy)]
struct Entry {
    bytes: u64,
    points: u64,
    /// Handed to a worker and not yet acknowledged or returned.
    claimed: bool,
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<u64, Entry>,
    bytes: u64,
    points: u64,
    next_seq: u64,
}

/// The spool directory and its index.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

/// A spool entry taken for delivery.
#[derive(Debug)]
pub struct Taken {
    /// Its sequence number, to acknowledge or return it.
    pub seq: u64,
    /// Points in the batch.
    pub points: u64,
    /// The gzip'ed body.
    pub body: Vec<u8>,
}

fn file_name(seq: u64, points: u64) -> String {
    format!("{seq:020}-{points}.gz")
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".gz")?;
    let (seq, points) = stem.split_once('-')?;
    Some((seq.parse().ok()?, points.parse().ok()?))
}

impl Spool {
    /// Opens (creating) `dir`, removes temporary files a crash left behind, and
    /// indexes the batches waiting there.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        let ctx =
            |e: io::Error| io::Error::new(e.kind(), format!("-spool-dir {}: {e}", dir.display()));
        fs::create_dir_all(dir).map_err(ctx)?;
        let mut state = State::default();
        for entry in fs::read_dir(dir).map_err(ctx)? {
            let entry = entry.map_err(ctx)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some((seq, points)) = parse_name(&name) else {
                continue;
            };
            let bytes = entry.metadata().map_err(ctx)?.len();
            state.files.insert(
                seq,
                Entry {
                    bytes,
                    points,
                    claimed: false,
                },
            );
            state.bytes += bytes;
            state.points += points;
            state.next_seq = state.next_seq.max(seq + 1);
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The directory, for logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `(batches, points, bytes)` waiting in the spool (claimed ones included).
    pub fn size(&self) -> (u64, u64, u64) {
        let s = self.lock();
        (s.files.len() as u64, s.points, s.bytes)
    }

    /// True while some batch waits in the spool.
    pub fn is_empty(&self) -> bool {
        self.lock().files.is_empty()
    }

    /// True while the spool is below its size limit.
    pub fn has_room(&self) -> bool {
        self.lock().bytes < self.max_bytes
    }

    /// Writes one batch durably. Fails when the spool is full or the disk refuses.
    pub fn write(&self, body: &[u8], points: u64) -> io::Result<()> {
        let seq = {
            let mut s = self.lock();
            if s.bytes + body.len() as u64 > self.max_bytes {
                return Err(io::Error::other(format!(
                    "spool {} is full ({} of {} bytes)",
                    self.dir.display(),
                    s.bytes,
                    self.max_bytes
                )));
            }
            let seq = s.next_seq;
            s.next_seq += 1;
            // Reserve the room now so concurrent writers cannot overshoot the cap.
            s.bytes += body.len() as u64;
            seq
        };
        match self.write_file(seq, body, points) {
            Ok(()) => {
                let mut s = self.lock();
                s.points += points;
                s.files.insert(
                    seq,
                    Entry {
                        bytes: body.len() as u64,
                        points,
                        claimed: false,
                    },
                );
                Ok(())
            }
            Err(e) => {
                self.lock().bytes -= body.len() as u64;
                Err(e)
            }
        }
    }

    fn write_file(&self, seq: u64, body: &[u8], points: u64) -> io::Result<()> {
        let tmp = self.dir.join(format!(".tmp-{seq}"));
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(body)?;
            f.sync_all()?;
            fs::rename(&tmp, self.dir.join(file_name(seq, points)))?;
            fs::File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Claims the oldest unclaimed batch and reads it. A file that cannot be read is
    /// renamed `*.bad` (kept for the operator, never deleted) and skipped.
    pub fn take(&self) -> Option<Taken> {
        loop {
            let (seq, entry) = {
                let mut s = self.lock();
                let (&seq, entry) = s.files.iter_mut().find(|(_, e)| !e.claimed)?;
                entry.claimed = true;
                (seq, *entry)
            };
            let path = self.dir.join(file_name(seq, entry.points));
            match fs::read(&path) {
                Ok(body) => {
                    return Some(Taken {
                        seq,
                        points: entry.points,
                        body,
                    })
                }
                Err(e) => {
                    tracing::error!(
                        "Spool file {} unreadable ({e}); set aside as .bad",
                        path.display()
                    );
                    let _ = fs::rename(&path, path.with_extension("gz.bad"));
                    self.forget(seq);
                }
            }
        }
    }

    fn forget(&self, seq: u64) {
        let mut s = self.lock();
        if let Some(e) = s.files.remove(&seq) {
            s.bytes -= e.bytes;
            s.points -= e.points;
        }
    }

    /// The gateway has the batch: delete its file.
    pub fn ack(&self, seq: u64) {
        let points = match self.lock().files.get(&seq) {
            Some(e) => e.points,
            None => return,
        };
        if let Err(e) = fs::remove_file(self.dir.join(file_name(seq, points))) {
            tracing::error!("Cannot remove delivered spool batch {seq}: {e} (it will be sent again after a restart)");
        }
        self.forget(seq);
    }

    /// The batch was not delivered (shutdown): leave it for the next taker.
    pub fn unclaim(&self, seq: u64) {
        if let Some(e) = self.lock().files.get_mut(&seq) {
            e.claimed = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_replay_oldest_first_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.write(b"one", 1).unwrap();
        spool.write(b"two", 2).unwrap();
        fs::write(dir.path().join(".tmp-99"), b"half").unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.size(), (2, 3, 6));
        assert!(!dir.path().join(".tmp-99").exists());
        let a = spool.take().unwrap();
        assert_eq!((a.body.as_slice(), a.points), (&b"one"[..], 1));
        let b = spool.take().unwrap();
        assert_eq!(b.body, b"two");
        assert!(spool.take().is_none(), "both are claimed");
        spool.unclaim(b.seq);
        spool.ack(a.seq);
        spool.write(b"three", 3).unwrap();
        assert_eq!(spool.take().unwrap().body, b"two");
        assert_eq!(spool.take().unwrap().body, b"three");
        assert_eq!(spool.size(), (2, 5, 8));
    }

    #[test]
    fn a_full_spool_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 10).unwrap();
        spool.write(b"12345678", 1).unwrap();
        assert!(spool.has_room());
        let err = spool.write(b"abc", 1).unwrap_err();
        assert!(err.to_string().contains("is full"), "{err}");
        assert_eq!(spool.size(), (1, 1, 8));
    }
}
