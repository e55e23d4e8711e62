//! The key file store: an unchanged file is not read again by the periodic sync (a
//! sync of 100 000 keys costs one `stat`), a changed one is read within one interval,
//! and an edit in place too recent for its timestamp to tell is read again.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::support::*;
use polymur::keys::file::FileStore;
use polymur::keys::sync::{sync_if_changed, sync_once};
use polymur::keys::{KeyCache, KeyStore};

/// Writes `text` to `path` and dates its content a minute back, as a file an
/// operator edited a while ago (a fresh file is re-read until its timestamp is
/// old enough to trust).
fn write_settled(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(60))
        .unwrap();
}

#[tokio::test]
async fn unchanged_file_is_not_read_again_and_a_change_is_read_within_one_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    write_settled(&path, "customer-a key-aaa\n");
    let store = Arc::new(FileStore::new(path.clone()));
    let cache = Arc::new(KeyCache::new());
    assert!(sync_once(store.as_ref(), &cache).await);
    assert_eq!(store.reads(), 1);
    for _ in 0..5 {
        assert!(sync_if_changed(store.as_ref(), &cache).await);
    }
    assert_eq!(store.reads(), 1, "an unchanged file was read again");
    assert_eq!(cache.lookup(b"key-aaa").as_deref(), Some("customer-a"));

    // The sync loop at a 1 s interval picks up a rewrite (through a rename, as
    // pgw-key does) within that interval.
    let (trigger, shutdown) = polymur::shutdown::Shutdown::new();
    let interval = Duration::from_secs(1);
    let task = tokio::spawn(polymur::keys::sync::run(
        store.clone() as Arc<dyn KeyStore>,
        cache.clone(),
        interval,
        shutdown,
    ));
    store.put("customer-b", "key-bbb").await.unwrap();
    let deadline = tokio::time::Instant::now() + interval * 3;
    while cache.lookup(b"key-bbb").is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cache.lookup(b"key-bbb").as_deref(), Some("customer-b"));
    let reads = store.reads();
    assert!(reads >= 2, "{reads}");
    trigger.fire();
    task.await.unwrap();
}

#[tokio::test]
async fn an_edit_in_place_too_recent_to_trust_its_timestamp_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    std::fs::write(&path, "customer-a key-aaa\n").unwrap();
    let store = FileStore::new(path.clone());
    let cache = KeyCache::new();
    assert!(sync_once(&store, &cache).await);
    // Same length, same inode, possibly the same timestamp tick.
    std::fs::write(&path, "customer-a key-zzz\n").unwrap();
    assert!(sync_if_changed(&store, &cache).await);
    assert_eq!(store.reads(), 2);
    assert!(cache.lookup(b"key-aaa").is_none());
    assert_eq!(cache.lookup(b"key-zzz").as_deref(), Some("customer-a"));
}

#[tokio::test]
async fn a_broken_file_keeps_failing_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    write_settled(&path, "customer-a key-aaa\n");
    let store = FileStore::new(path.clone());
    let cache = KeyCache::new();
    assert!(sync_once(&store, &cache).await);
    write_settled(&path, "customer-a key-aaa extra\n");
    assert!(!sync_if_changed(&store, &cache).await);
    // Still broken: reported as a failed sync every time, the last good set kept.
    assert!(!sync_if_changed(&store, &cache).await);
    assert_eq!(cache.lookup(b"key-aaa").as_deref(), Some("customer-a"));
    write_settled(&path, "customer-b key-bbb\n");
    assert!(sync_if_changed(&store, &cache).await);
    assert_eq!(cache.lookup(b"key-bbb").as_deref(), Some("customer-b"));
}

/// The gateway binary at `-key-sync-interval=1s`: syncs run every second, but the
/// file is applied once (the start) until it changes; the change is applied within
/// a few intervals and the new key is accepted.
#[test]
fn gateway_applies_the_key_file_only_when_it_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    write_settled(&path, "customer-a key-aaa\n");
    let sink = LineSink::start();
    let gw = Gateway::start(&[
        "-keys-file",
        path.to_str().unwrap(),
        "-key-sync-interval=1s",
        "-destinations",
        &sink.addr(),
    ]);
    // The start's sync plus three periodic ones.
    assert!(
        gw.proc.wait_log_count("Running API key sync", 4, secs(10)),
        "{}",
        gw.proc.all_output()
    );
    assert_eq!(
        gw.proc.log_count("API keys refreshed"),
        1,
        "{}",
        gw.proc.all_output()
    );
    write_settled(&path, "customer-a key-aaa\ncustomer-b key-bbb\n");
    assert!(
        gw.proc
            .wait_log_count("API keys refreshed: 1 new, 0 removed", 2, secs(5)),
        "{}",
        gw.proc.all_output()
    );
    assert_eq!(gw.ingest("key-bbb", "m.b 1 1700000000\n").status, 200);
    assert!(sink.wait_count(1, secs(10)));
}
