//! Upgrading from the proxy's old spool: one file per batch directly in `-spool-dir`.
//!
//! The old layout (the proxy before it used [`crate::dest::Destination`]): each batch was
//! the gzip'ed request body, written under `.tmp-<seq>`, fsync'd and renamed to
//! `<seq, 20 digits>-<points>.gz`; replay went oldest `seq` first; a file that could not be
//! read was renamed `*.gz.bad` and left for the operator.
//!
//! At start, before anything new is admitted, every such batch is decompressed and appended
//! in `seq` order to the destination's spool (`-spool-dir/gateway/`) with `-durable`
//! semantics (each append synced), and its old file is deleted only once its record is on
//! disk. A crash in the middle re-migrates the files not yet deleted (at worst a batch is
//! sent twice, never lost). Leftover `.tmp-*` files were never acknowledged batches (the
//! old code removed them at start too); a file that does not decompress is renamed
//! `.gz.bad`, as before, and logged.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::dest::spool::{self, Spool};
use crate::dest::Chunk;

/// The sequence number and points of an old spool file name `<seq>-<points>.gz`.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".gz")?;
    let (seq, points) = stem.split_once('-')?;
    Some((seq.parse().ok()?, points.parse().ok()?))
}

/// Old batch files in `dir`, oldest first; removes old temporary files.
fn old_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") {
            let _ = fs::remove_file(entry.path());
            continue;
        }
        if let Some((seq, _)) = parse_name(&name) {
            found.push((seq, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The batch's lines, `\n`-terminated (a spool record holds whole lines).
fn lines_of(path: &Path) -> io::Result<Chunk> {
    let gz = fs::read(path)?;
    let mut data = Vec::with_capacity(gz.len() * 8);
    flate2::read::MultiGzDecoder::new(&gz[..]).read_to_end(&mut data)?;
    if data.last().is_some_and(|&b| b != b'\n') {
        data.push(b'\n');
    }
    let points = memchr::memchr_iter(b'\n', &data).count() as u64;
    Ok(Chunk {
        data: Bytes::from(data),
        points,
    })
}

/// Moves the old-format batches of `dir` into the spool of destination `name` under `dir`.
/// Blocking. Returns the batches and points moved.
pub fn old_spool(dir: &Path, name: &str) -> io::Result<(u64, u64)> {
    if !dir.is_dir() {
        return Ok((0, 0));
    }
    let files = old_files(dir)?;
    if files.is_empty() {
        return Ok((0, 0));
    }
    let spool = Spool::open(dir, name, u64::MAX, true)?;
    let moved = move_files(&spool, &files);
    spool.close();
    let (batches, points) = moved?;
    tracing::info!(
        "Spool {}: {batches} batches ({points} points) of the old one-file-per-batch format \
         moved into {}",
        dir.display(),
        spool.dir().display()
    );
    Ok((batches, points))
}

/// Appends in flight at once: one group fsync covers them (see the spool's appender).
const WINDOW: usize = 64;

fn move_files(spool: &Spool, files: &[(u64, PathBuf)]) -> io::Result<(u64, u64)> {
    let (mut batches, mut points) = (0, 0);
    for window in files.chunks(WINDOW) {
        let mut waits = Vec::with_capacity(window.len());
        for (_, path) in window {
            let Some(chunk) = readable(path) else {
                continue;
            };
            spool.reserve_forced(spool::record_size(chunk.data.len()));
            waits.push((path, chunk.points, spool.append(&chunk)));
        }
        // A file goes only once its record is synced; on an error the rest stay for the
        // next start.
        for (path, n, done) in waits {
            done.blocking_recv()
                .map_err(|_| io::Error::other("spool closed while migrating"))??;
            fs::remove_file(path)?;
            batches += 1;
            points += n;
        }
    }
    Ok((batches, points))
}

/// The lines of an old batch file; an empty one is removed, an unreadable one set aside.
fn readable(path: &Path) -> Option<Chunk> {
    match lines_of(path) {
        Ok(c) if c.points > 0 => Some(c),
        Ok(_) => {
            let _ = fs::remove_file(path);
            None
        }
        Err(e) => {
            tracing::error!(
                "Old spool file {} unreadable ({e}); set aside as .bad",
                path.display()
            );
            let _ = fs::rename(path, path.with_extension("gz.bad"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(s: &str) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(s.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn old_batches_move_into_the_spool_in_order_and_their_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("00000000000000000002-1.gz"), gz("b 2 2\n")).unwrap();
        fs::write(d.join("00000000000000000001-2.gz"), gz("a 1 1\na 2 2")).unwrap();
        fs::write(d.join("00000000000000000003-1.gz"), b"not gzip").unwrap();
        fs::write(d.join(".tmp-4"), b"half").unwrap();
        assert_eq!(old_spool(d, "gateway").unwrap(), (2, 3));
        let left: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "gateway")
            .collect();
        assert_eq!(left, vec!["00000000000000000003-1.gz.bad".to_string()]);
        let spool = Spool::open(d, "gateway", 1 << 30, false).unwrap();
        let back: Vec<Bytes> = spool
            .read(1 << 20)
            .unwrap()
            .into_iter()
            .map(|(c, _)| c.data)
            .collect();
        assert_eq!(
            back,
            vec![Bytes::from("a 1 1\na 2 2\n"), Bytes::from("b 2 2\n")]
        );
        spool.close();
        assert_eq!(old_spool(d, "gateway").unwrap(), (0, 0), "read once");
    }
}
