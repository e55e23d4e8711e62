//! The in-memory key cache read by every request.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ring::digest::{digest, SHA256};

use super::KeySet;

/// SHA-256 digest of an API key; the cache is indexed by it so that a lookup's
/// timing depends on the digest, never on how many leading bytes of a real key a
/// guess shares.
type KeyDigest = [u8; 32];

fn key_digest(key: &[u8]) -> KeyDigest {
    let d = digest(&SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A short, non-reversible name for a key, safe to print in logs (first 8 hex
/// digits of its SHA-256). Keys themselves never reach a log line.
pub fn fingerprint(key: &[u8]) -> String {
    key_digest(key)[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One registered key name and what it sent; kept across syncs while the name
/// stays registered, so per-tenant counters survive key rotation.
#[derive(Debug)]
pub struct Tenant {
    /// The key's name (the tenant namespace with `-key-prefix`).
    pub name: Arc<str>,
    /// Points accepted from this key.
    pub received: std::sync::atomic::AtomicU64,
}

/// Lock-free map from key digest to tenant. Readers take a snapshot pointer
/// (`ArcSwap::load`), so the sync task swapping in a new set never blocks a batch.
#[derive(Default)]
pub struct KeyCache {
    by_digest: ArcSwap<HashMap<KeyDigest, Arc<Tenant>>>,
    /// Serialises `replace` (a SIGHUP sync against the periodic one). The diff is
    /// computed from the map's tenants, so no second copy of the key set is kept.
    replacing: std::sync::Mutex<()>,
    /// Unix time of the last successful sync (0: never).
    pub last_sync_ok: std::sync::atomic::AtomicU64,
    /// Unix time of the last failed sync (0: never).
    pub last_sync_failed: std::sync::atomic::AtomicU64,
}

impl KeyCache {
    /// An empty cache: every key is refused until the first sync.
    pub fn new() -> Self {
        Self::default()
    }

    /// The name of the key, or `None` when it is not registered.
    pub fn lookup(&self, key: &[u8]) -> Option<Arc<str>> {
        self.tenant(key).map(|t| t.name.clone())
    }

    /// The tenant the key belongs to, with its counters.
    pub fn tenant(&self, key: &[u8]) -> Option<Arc<Tenant>> {
        self.by_digest.load().get(&key_digest(key)).cloned()
    }

    /// Every registered tenant (for metrics and the status page; never keys).
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        let mut v: Vec<Arc<Tenant>> = self.by_digest.load().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.dedup_by(|a, b| Arc::ptr_eq(a, b));
        v
    }

    /// Records the outcome of a sync attempt.
    pub fn note_sync(&self, ok: bool) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let slot = if ok {
            &self.last_sync_ok
        } else {
            &self.last_sync_failed
        };
        slot.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// Number of registered keys.
    pub fn len(&self) -> usize {
        self.by_digest.load().len()
    }

    /// True when no key is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the whole set; returns `(new, removed)` counted by name, for the
    /// `API keys refreshed: N new, M removed` log line. A name whose key changed
    /// counts as neither: the name stays registered.
    pub fn replace(&self, set: KeySet) -> (usize, usize) {
        let _one_at_a_time = self.replacing.lock().unwrap_or_else(|e| e.into_inner());
        let old: HashMap<Arc<str>, Arc<Tenant>> = self
            .by_digest
            .load()
            .values()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        let added: Vec<&String> = set
            .keys()
            .filter(|n| !old.contains_key(n.as_str()))
            .collect();
        let new = added.len();
        for name in added {
            if let Some(why) = name_problem(name) {
                tracing::warn!(
                    "API key name {name:?} {why}: with -key-prefix its lines would be sent as \
                     {name}.<metric>, which carbon stores as another series than intended; \
                     rename the key"
                );
            }
        }
        let removed = old.keys().filter(|n| !set.contains_key(&***n)).count();
        let mut map = HashMap::with_capacity(set.len());
        for (name, key) in set {
            let tenant = old.get(name.as_str()).cloned().unwrap_or_else(|| {
                Arc::new(Tenant {
                    name: Arc::from(name),
                    received: Default::default(),
                })
            });
            map.insert(key_digest(key.as_bytes()), tenant);
        }
        self.by_digest.store(Arc::new(map));
        (new, removed)
    }
}

/// Why a key name cannot stand in front of a metric name as a path segment, if it
/// cannot: `-key-prefix` sends `<name>.<metric>`, and carbon reads `;` as the start of
/// Graphite 1.1 tags, `/` as a directory of its whisper tree, and blanks as the end of
/// the name (the key stores accept such names; the original gateway prefixed them all).
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.contains(';') {
        Some("contains ';' (carbon reads what follows as tags)")
    } else if name.contains('/') {
        Some("contains '/' (a directory in carbon's whisper tree)")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains blanks or control characters (the end of a Graphite name)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_break_a_prefixed_metric_are_named() {
        for ok in ["site-paris", "dev", "a.b", "tenant_1", "Zürich"] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        for bad in ["", "evil;tenant=other", "a/b", "a b", "a\tb", "a\u{7}"] {
            assert!(name_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn lookup_and_diff() {
        let cache = KeyCache::new();
        assert!(cache.lookup(b"123").is_none());
        let mut set = KeySet::new();
        set.insert("dev".into(), "123".into());
        set.insert("b".into(), "bbb".into());
        assert_eq!(cache.replace(set.clone()), (2, 0));
        assert_eq!(cache.lookup(b"123").as_deref(), Some("dev"));
        assert!(cache.lookup(b"12").is_none());
        set.remove("b");
        set.insert("c".into(), "ccc".into());
        assert_eq!(cache.replace(set), (1, 1));
        assert!(cache.lookup(b"bbb").is_none());
        assert_eq!(cache.lookup(b"ccc").as_deref(), Some("c"));
        assert_eq!(fingerprint(b"123").len(), 8);
    }
}
