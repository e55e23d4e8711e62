//! Records a destination refuses: the record its connection keeps breaking on is set aside
//! so that everything behind it can be delivered.
//!
//! A receiver that drops the connection on one line (carbon-cache on a line that is not
//! UTF-8 or longer than 16 384 bytes) would otherwise get that line again on every
//! reconnect, and nothing after it ever. The writer finds the record ([`super::tcp`]'s
//! probe) and hands it here: with a spool it is written, as the plaintext it was, to
//! `<spool-dir>/<dest>/dead-letter/<unix-ms>-<n>.txt`, where an operator can read, fix and
//! replay it (`nc host 2003 < file`); without one it is only logged. Either way its points
//! are counted in `polymur_dropped_points_total{reason="dead_letter"}`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Chunk, DestShared};

/// Folder of the dead-letter files inside a destination's spool folder.
pub const DIR: &str = "dead-letter";

/// Writes `chunk` to a new file under `spool_dir/dead-letter/`, synced, and returns its path.
pub fn write(spool_dir: &Path, chunk: &Chunk) -> io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = spool_dir.join(DIR);
    std::fs::create_dir_all(&dir)?;
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let path = dir.join(format!("{ms}-{}.txt", SEQ.fetch_add(1, Ordering::Relaxed)));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    f.write_all(&chunk.data)?;
    f.sync_all()?;
    Ok(path)
}

/// Sets `chunk` aside for `dest` (file when it has a spool, else log only), counts it and
/// logs one line naming the destination and where the record went.
pub async fn set_aside(dest: &DestShared, chunk: Chunk) {
    dest.stats
        .dead_lettered
        .fetch_add(chunk.points, Ordering::Relaxed);
    let first = preview(&chunk.data);
    let (points, bytes) = (chunk.points, chunk.data.len());
    let Some(spool) = dest.spool().cloned() else {
        tracing::error!(
            "Destination {}: the connection broke on the same record again and again; \
             dropped it to dead-letter (no -spool-dir, so not kept): {points} points, \
             {bytes} bytes, starting {first:?}",
            dest.name()
        );
        return;
    };
    let dir = spool.dir().to_path_buf();
    let written = tokio::task::spawn_blocking(move || write(&dir, &chunk)).await;
    match written {
        Ok(Ok(path)) => tracing::error!(
            "Destination {}: the connection broke on the same record again and again; \
             moved it to dead-letter file {}: {points} points, {bytes} bytes, starting {first:?}",
            dest.name(),
            path.display()
        ),
        Ok(Err(e)) => tracing::error!(
            "Destination {}: the connection broke on the same record again and again; \
             writing it to dead-letter under {} failed ({e}), dropped: {points} points, \
             starting {first:?}",
            dest.name(),
            spool.dir().display()
        ),
        Err(e) => tracing::error!(
            "Destination {}: dead-letter task failed ({e}), dropped {points} points",
            dest.name()
        ),
    }
}

/// The record's first 80 bytes, lossily decoded, for the log line.
fn preview(data: &[u8]) -> String {
    String::from_utf8_lossy(&data[..data.len().min(80)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_record_is_kept_as_the_plaintext_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = Chunk {
            data: Bytes::from_static(b"a 1 1\nb\xff 2 2\n"),
            points: 2,
        };
        let p = write(dir.path(), &chunk).unwrap();
        assert_eq!(p.parent().unwrap(), dir.path().join(DIR));
        assert_eq!(std::fs::read(&p).unwrap(), b"a 1 1\nb\xff 2 2\n");
        let q = write(dir.path(), &chunk).unwrap();
        assert_ne!(p, q, "each record gets its own file");
    }
}
