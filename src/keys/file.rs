//! Key file store: `name key` per line, `#` comments, reloaded when the file changes.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::{BoxFuture, KeySet, KeyStore, KeyStoreError};

/// How often the file's metadata is checked for a change. Cheap (one `stat`), and
/// short enough that a revoked key stops working within about a second.
const POLL: Duration = Duration::from_millis(500);

/// A file modified this shortly before it was read may be modified again within the
/// same timestamp tick without its stamp changing (git's "racy" files); such a read
/// is not trusted to stand for the file, and the next sync reads it again.
const RACY: Duration = Duration::from_secs(2);

/// What `stat` says about the file: a rename (pgw-key, most editors) changes the
/// inode, an edit in place the length or the modification time, a `chmod` or
/// `touch` the change time. Equal stamps mean the file was not rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// True when the content was modified (by the file system's clock) within
    /// [`RACY`] of `read_at`, so a later write in the same tick could keep the stamp.
    fn racy(&self, read_at: SystemTime) -> bool {
        let (secs, nanos) = self.mtime;
        let modified = SystemTime::UNIX_EPOCH
            + Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32);
        modified + RACY > read_at
    }
}

/// The outcome of the last `load`: the stamp read before the content, and whether
/// the content was applied (a good file) and can be skipped while the stamp stays.
#[derive(Clone, Copy, Debug)]
struct Seen {
    stamp: Option<Stamp>,
    /// The content parsed and the stamp was not racy: an equal stamp means the
    /// cache already holds exactly this file.
    settled: bool,
}

/// Keys kept in a plain text file an operator edits or manages with `pgw-key`.
pub struct FileStore {
    path: PathBuf,
    /// The stamp seen at the last `load`; a change means the file was rewritten.
    seen: std::sync::Mutex<Option<Seen>>,
    /// Reads of the file by `load` (for tests and the bench: an unchanged file is
    /// not read again).
    reads: std::sync::atomic::AtomicU64,
}

impl FileStore {
    /// A store over `path`; the file is read on `load`, and on
    /// [`KeyStore::load_if_changed`] only when its stamp changed.
    pub fn new(path: PathBuf) -> Self {
        FileStore {
            path,
            seen: std::sync::Mutex::new(None),
            reads: Default::default(),
        }
    }

    /// How many times `load` has read the file.
    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn stamp(&self) -> Option<Stamp> {
        std::fs::metadata(&self.path).ok().map(|m| Stamp::of(&m))
    }

    fn seen(&self) -> Option<Seen> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self, message: String) -> KeyStoreError {
        KeyStoreError::Invalid {
            store: self.describe(),
            message,
        }
    }

    fn read(&self) -> Result<KeySet, KeyStoreError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| KeyStoreError::Unavailable {
            store: self.describe(),
            message: e.to_string(),
        })?;
        parse(&text).map_err(|m| self.err(m))
    }

    /// Rewrites the file through a temporary file and a rename, so the gateway
    /// never reads a half-written key set.
    fn write(&self, set: &KeySet) -> Result<(), KeyStoreError> {
        let mut text = String::from("# polymur API keys: <name> <key> per line\n");
        for (name, key) in set {
            text.push_str(name);
            text.push(' ');
            text.push_str(key);
            text.push('\n');
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|e| KeyStoreError::Unavailable {
                store: self.describe(),
                message: e.to_string(),
            })
    }
}

/// Parses the key file. Any bad line rejects the whole file (the caller keeps the
/// previous set), because a half-applied file could silently revoke tenants.
pub fn parse(text: &str) -> Result<KeySet, String> {
    let mut set = KeySet::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(name), Some(key), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(format!(
                "line {}: expected `<name> <key>` (two fields)",
                n + 1
            ));
        };
        if set.insert(name.to_string(), key.to_string()).is_some() {
            return Err(format!("line {}: name {name:?} is listed twice", n + 1));
        }
    }
    Ok(set)
}

impl KeyStore for FileStore {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn load(&self) -> BoxFuture<'_, Result<KeySet, KeyStoreError>> {
        Box::pin(async move {
            let read_at = SystemTime::now();
            let stamp = self.stamp();
            self.reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let set = self.read();
            // Remember the stamp even when the content is bad: we retry only once
            // the operator changes the file again, instead of logging every poll.
            let settled = set.is_ok() && stamp.is_some_and(|s| !s.racy(read_at));
            *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(Seen { stamp, settled });
            set
        })
    }

    fn load_if_changed(&self) -> BoxFuture<'_, Result<Option<KeySet>, KeyStoreError>> {
        Box::pin(async move {
            match self.seen() {
                Some(seen) if seen.settled && seen.stamp == self.stamp() => Ok(None),
                _ => self.load().await.map(Some),
            }
        })
    }

    fn changed(&self, max_wait: Duration) -> BoxFuture<'_, Result<(), KeyStoreError>> {
        Box::pin(async move {
            let deadline = Instant::now() + max_wait;
            loop {
                let seen = self.seen().and_then(|s| s.stamp);
                if self.stamp() != seen || Instant::now() >= deadline {
                    return Ok(());
                }
                tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
        })
    }

    fn put<'a>(&'a self, name: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), KeyStoreError>> {
        Box::pin(async move {
            let mut set = match self.read() {
                Ok(set) => set,
                Err(KeyStoreError::Unavailable { .. }) if !self.path.exists() => KeySet::new(),
                Err(e) => return Err(e),
            };
            set.insert(name.to_string(), key.to_string());
            self.write(&set)
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, KeyStoreError>> {
        Box::pin(async move {
            let mut set = self.read()?;
            if set.remove(name).is_none() {
                return Ok(false);
            }
            self.write(&set)?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_pairs_and_comments() {
        let set = parse("# c\n\ncustomer-a  aaa\n\tcustomer-b bbb \n").unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set["customer-a"], "aaa");
        assert!(parse("a b c\n").unwrap_err().contains("line 1"));
        assert!(parse("a x\na y\n").unwrap_err().contains("twice"));
    }
}
