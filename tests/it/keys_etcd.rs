//! The etcd key store against a real etcd 3.4 (Debian `etcd-server`) on loopback,
//! through its JSON gateway: listing, watch notification, revocation, outage,
//! recovery and endpoint failover.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{free_port, Etcd};
use polymur::keys::etcd::EtcdStore;
use polymur::keys::sync::sync_once;
use polymur::keys::{KeyCache, KeyStore};

const P: &str = "polymur/gateway/keys/";

fn store(etcd: &Etcd) -> Arc<EtcdStore> {
    Arc::new(EtcdStore::new(vec![etcd.endpoint()]).expect("etcd store"))
}

/// Spawns `changed(max_wait)`; the handle yields how long it took.
fn spawn_changed(
    s: &Arc<EtcdStore>,
    max_wait: Duration,
) -> tokio::task::JoinHandle<(Duration, bool)> {
    let s = s.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        let r = tokio::time::timeout(max_wait + Duration::from_secs(10), s.changed(max_wait))
            .await
            .expect("changed() overran its max_wait");
        (start.elapsed(), r.is_ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_put_delete() {
    let etcd = Etcd::start();
    etcd.put(&format!("{P}customer-a"), "key-a");
    etcd.put(&format!("{P}customer-b"), "key-b");
    etcd.put(&format!("{P}nested/x"), "key-x");
    etcd.put("polymur/gateway/keyz", "not-under-the-prefix");
    let s = store(&etcd);
    let set = s.load().await.unwrap();
    assert_eq!(set.len(), 2, "{set:?}");
    assert_eq!(set["customer-a"], "key-a");
    assert_eq!(set["customer-b"], "key-b");

    s.put("customer-c", "key-c").await.unwrap();
    assert_eq!(
        etcd.get(&format!("{P}customer-c")).as_deref(),
        Some("key-c")
    );
    assert!(s.delete("customer-a").await.unwrap());
    assert!(!s.delete("customer-a").await.unwrap());
    assert!(etcd.get(&format!("{P}customer-a")).is_none());
    let set = s.load().await.unwrap();
    assert_eq!(set.keys().collect::<Vec<_>>(), ["customer-b", "customer-c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_prefix_is_an_empty_set() {
    let etcd = Etcd::start();
    assert!(store(&etcd).load().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_add_and_revoke() {
    let etcd = Etcd::start();
    etcd.put(&format!("{P}a"), "key-a");
    let s = store(&etcd);
    let cache = KeyCache::new();
    assert!(sync_once(s.as_ref(), &cache).await);

    // No change: blocks for the whole max_wait.
    let (took, ok) = spawn_changed(&s, Duration::from_millis(1500))
        .await
        .unwrap();
    assert!(ok);
    assert!(
        took >= Duration::from_millis(1400),
        "returned early: {took:?}"
    );

    let waiter = spawn_changed(&s, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.put(&format!("{P}b"), "key-b");
    let (took, ok) = waiter.await.unwrap();
    assert!(
        ok && took < Duration::from_secs(3),
        "add noticed after {took:?}"
    );
    assert!(sync_once(s.as_ref(), &cache).await);
    assert_eq!(cache.lookup(b"key-b").as_deref(), Some("b"));

    let waiter = spawn_changed(&s, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.delete(&format!("{P}a"));
    let (took, ok) = waiter.await.unwrap();
    assert!(
        ok && took < Duration::from_secs(3),
        "revoke noticed after {took:?}"
    );
    assert!(sync_once(s.as_ref(), &cache).await);
    assert!(cache.lookup(b"key-a").is_none());

    // A change between load and watch is not lost: the watch starts at the next revision.
    etcd.put(&format!("{P}c"), "key-c");
    let (took, ok) = spawn_changed(&s, Duration::from_secs(30)).await.unwrap();
    assert!(
        ok && took < Duration::from_secs(3),
        "missed change after {took:?}"
    );
    // Writes elsewhere do not wake the watch.
    s.load().await.unwrap();
    let waiter = spawn_changed(&s, Duration::from_millis(1500));
    etcd.put("other/key", "x");
    let (took, _) = waiter.await.unwrap();
    assert!(
        took >= Duration::from_millis(1400),
        "woken by another prefix: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_loop_revokes_within_3_seconds() {
    let etcd = Etcd::start();
    etcd.put(&format!("{P}a"), "key-a");
    let s: Arc<dyn KeyStore> = store(&etcd);
    let cache = Arc::new(KeyCache::new());
    assert!(sync_once(s.as_ref(), &cache).await);
    let (trigger, shutdown) = polymur::shutdown::Shutdown::new();
    let task = tokio::spawn(polymur::keys::sync::run(
        s,
        cache.clone(),
        Duration::from_secs(30),
        shutdown,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.delete(&format!("{P}a"));
    let start = Instant::now();
    while cache.lookup(b"key-a").is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "still accepted after 3 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    trigger.fire();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("sync loop did not stop")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_keeps_the_cache_and_recovery_resyncs() {
    let mut etcd = Etcd::start();
    etcd.put(&format!("{P}a"), "key-a");
    let s = store(&etcd);
    let cache = KeyCache::new();
    assert!(sync_once(s.as_ref(), &cache).await);

    // A watch in progress when etcd dies ends promptly (as an error or a change).
    let waiter = spawn_changed(&s, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.stop();
    let (took, _) = waiter.await.unwrap();
    assert!(
        took < Duration::from_secs(10),
        "watch outlived etcd by {took:?}"
    );

    assert!(!sync_once(s.as_ref(), &cache).await);
    assert_eq!(cache.lookup(b"key-a").as_deref(), Some("a"));
    let err = tokio::time::timeout(Duration::from_secs(10), s.changed(Duration::from_secs(30)))
        .await
        .expect("changed() hung while etcd is down")
        .unwrap_err();
    assert!(err.to_string().contains(&etcd.endpoint()), "{err}");

    etcd.restart();
    // The watch picks up a change made after the last good load.
    etcd.put(&format!("{P}b"), "key-b");
    let (took, ok) = spawn_changed(&s, Duration::from_secs(30)).await.unwrap();
    assert!(ok && took < Duration::from_secs(3), "{took:?}");
    assert!(sync_once(s.as_ref(), &cache).await);
    assert_eq!(cache.lookup(b"key-a").as_deref(), Some("a"));
    assert_eq!(cache.lookup(b"key-b").as_deref(), Some("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_is_skipped() {
    let etcd = Etcd::start();
    etcd.put(&format!("{P}a"), "key-a");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let s = Arc::new(EtcdStore::new(vec![dead, etcd.endpoint()]).unwrap());
    assert_eq!(s.load().await.unwrap()["a"], "key-a");
    let waiter = spawn_changed(&s, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.put(&format!("{P}b"), "key-b");
    let (took, ok) = waiter.await.unwrap();
    assert!(ok && took < Duration::from_secs(3), "{took:?}");
}
