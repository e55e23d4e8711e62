//! Key file store: `name key` per line, `#` comments, reloaded when the file changes.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::{BoxFuture, KeySet, KeyStore, KeyStoreError};

/// How often the file's metadata is checked for a change. Cheap (one `stat`), and
/// short enough that a revoked key stops working within about a second.
const POLL: Duration = Duration::from_millis(500);

/// Keys kept in a plain text file an operator edits or manages with `pgw-key`.
pub struct FileStore {
    path: PathBuf,
    /// Modification time and length seen at the last `load`; a change of either
    /// means the file was rewritten.
    seen: std::sync::Mutex<Option<(SystemTime, u64)>>,
}

impl FileStore {
    /// A store over `path`; the file is read on each `load`.
    pub fn new(path: PathBuf) -> Self {
        FileStore {
            path,
            seen: std::sync::Mutex::new(None),
        }
    }

    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
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
            let stamp = self.stamp();
            let set = self.read();
            // Remember the stamp even when the content is bad: we retry only once
            // the operator changes the file again, instead of logging every poll.
            *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = stamp;
            set
        })
    }

    fn changed(&self, max_wait: Duration) -> BoxFuture<'_, Result<(), KeyStoreError>> {
        Box::pin(async move {
            let deadline = Instant::now() + max_wait;
            loop {
                let seen = *self.seen.lock().unwrap_or_else(|e| e.into_inner());
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
