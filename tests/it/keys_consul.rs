//! The Consul key store against the in-test Consul agent (`consul_server`): listing,
//! blocking-query change notification, revocation, outages, ACL tokens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::consul_server::ConsulServer;
use polymur::keys::consul::ConsulStore;
use polymur::keys::sync::sync_once;
use polymur::keys::{KeyCache, KeyStore};

const P: &str = "polymur/gateway/keys/";

fn store(server: &ConsulServer) -> ConsulStore {
    ConsulStore::new(&server.addr(), None).expect("consul store")
}

/// Runs `changed(max_wait)` and returns how long it took, failing the test if it
/// overruns `max_wait` by more than 5 s.
async fn timed_changed(store: &ConsulStore, max_wait: Duration) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(max_wait + Duration::from_secs(5), store.changed(max_wait))
        .await
        .expect("changed() overran its max_wait")
        .expect("changed() failed");
    start.elapsed()
}

#[tokio::test]
async fn load_lists_the_prefix() {
    let server = ConsulServer::start();
    server.put(P, ""); // the folder entry the Consul UI creates
    server.put(&format!("{P}customer-a"), "key-a");
    server.put(&format!("{P}customer-b"), "key-b");
    server.put(&format!("{P}nested/x"), "key-x");
    server.put(&format!("{P}empty"), "");
    server.put("polymur/gateway/other", "not-a-key");
    let set = store(&server).load().await.unwrap();
    assert_eq!(set.len(), 2, "{set:?}");
    assert_eq!(set["customer-a"], "key-a");
    assert_eq!(set["customer-b"], "key-b");
    let req = &server.requests()[0];
    assert_eq!(req.method, "GET");
    assert!(
        req.uri.starts_with("/v1/kv/polymur/gateway/keys/?recurse"),
        "{}",
        req.uri
    );
}

#[tokio::test]
async fn empty_prefix_is_an_empty_set() {
    let server = ConsulServer::start();
    server.put("something/else", "x");
    let set = store(&server).load().await.unwrap();
    assert!(set.is_empty());
}

#[tokio::test]
async fn put_and_delete() {
    let server = ConsulServer::start();
    let s = store(&server);
    s.put("tenant one", "k1").await.unwrap();
    assert_eq!(server.get(&format!("{P}tenant one")).as_deref(), Some("k1"));
    assert_eq!(s.load().await.unwrap()["tenant one"], "k1");
    assert!(s.delete("tenant one").await.unwrap());
    assert!(!s.delete("tenant one").await.unwrap());
    assert!(server.get(&format!("{P}tenant one")).is_none());
}

#[tokio::test]
async fn blocking_query_reports_add_and_revoke_within_a_second() {
    let server = ConsulServer::start();
    server.put(&format!("{P}a"), "key-a");
    let s = Arc::new(store(&server));
    let cache = KeyCache::new();
    assert!(sync_once(s.as_ref(), &cache).await);
    assert_eq!(cache.lookup(b"key-a").as_deref(), Some("a"));

    // Nothing changes: changed() blocks for its whole max_wait.
    let took = timed_changed(&s, Duration::from_millis(1500)).await;
    assert!(
        took >= Duration::from_millis(1400),
        "returned early: {took:?}"
    );
    assert!(
        server.requests().iter().any(|r| r.uri.contains("index=")),
        "no blocking query sent"
    );

    // Add: the waiting query returns as soon as Consul has the write.
    let waiter = tokio::spawn({
        let s = s.clone();
        async move { timed_changed(&s, Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.put(&format!("{P}b"), "key-b");
    let took = waiter.await.unwrap();
    assert!(took < Duration::from_secs(2), "add noticed after {took:?}");
    assert!(sync_once(s.as_ref(), &cache).await);
    assert_eq!(cache.lookup(b"key-b").as_deref(), Some("b"));

    // Revoke.
    let waiter = tokio::spawn({
        let s = s.clone();
        async move { timed_changed(&s, Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.delete(&format!("{P}a"));
    let took = waiter.await.unwrap();
    assert!(
        took < Duration::from_secs(2),
        "revoke noticed after {took:?}"
    );
    assert!(sync_once(s.as_ref(), &cache).await);
    assert!(cache.lookup(b"key-a").is_none());
    assert_eq!(cache.lookup(b"key-b").as_deref(), Some("b"));
}

#[tokio::test]
async fn sync_loop_revokes_promptly() {
    let server = ConsulServer::start();
    server.put(&format!("{P}a"), "key-a");
    let s: Arc<dyn KeyStore> = Arc::new(store(&server));
    let cache = Arc::new(KeyCache::new());
    let (trigger, shutdown) = polymur::shutdown::Shutdown::new();
    assert!(sync_once(s.as_ref(), &cache).await);
    // A 30 s interval: only the blocking query can make this fast.
    let task = tokio::spawn(polymur::keys::sync::run(
        s,
        cache.clone(),
        Duration::from_secs(30),
        shutdown,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.delete(&format!("{P}a"));
    let start = Instant::now();
    while cache.lookup(b"key-a").is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "revoked key still accepted after 3 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    trigger.fire();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("sync loop did not stop")
        .unwrap();
}

#[tokio::test]
async fn outage_keeps_the_cache_and_recovery_resyncs() {
    let mut server = ConsulServer::start();
    server.put(&format!("{P}a"), "key-a");
    let s = store(&server);
    let cache = KeyCache::new();
    assert!(sync_once(&s, &cache).await);

    server.stop();
    assert!(!sync_once(&s, &cache).await);
    assert_eq!(cache.lookup(b"key-a").as_deref(), Some("a"));
    let err = tokio::time::timeout(Duration::from_secs(10), s.changed(Duration::from_secs(30)))
        .await
        .expect("changed() hung on a dead agent")
        .unwrap_err();
    assert!(
        err.to_string().contains(&server.addr()),
        "error does not name the agent: {err}"
    );

    // A change made while we could not see it is picked up after recovery.
    server.put(&format!("{P}b"), "key-b");
    server.restart();
    assert!(sync_once(&s, &cache).await);
    assert_eq!(cache.lookup(b"key-a").as_deref(), Some("a"));
    assert_eq!(cache.lookup(b"key-b").as_deref(), Some("b"));
}

#[tokio::test]
async fn outage_during_a_blocking_query_is_an_error() {
    let mut server = ConsulServer::start();
    let s = Arc::new(store(&server));
    s.load().await.unwrap();
    let waiter = tokio::spawn({
        let s = s.clone();
        async move { s.changed(Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop();
    let result = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("blocking query not ended by the outage")
        .unwrap();
    assert!(result.is_err(), "a cut blocking query must be reported");
}

#[tokio::test]
async fn token_is_sent_and_required() {
    let server = ConsulServer::start_with_token("s3cret");
    server.put(&format!("{P}a"), "key-a");

    let good = ConsulStore::new(&server.addr(), Some("s3cret".into())).unwrap();
    assert_eq!(good.load().await.unwrap()["a"], "key-a");
    good.put("b", "key-b").await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        good.changed(Duration::from_millis(200)),
    )
    .await
    .unwrap()
    .unwrap();
    let requests = server.requests();
    assert!(requests.len() >= 3);
    assert!(
        requests
            .iter()
            .all(|r| r.token.as_deref() == Some("s3cret")),
        "{requests:?}"
    );

    // Anonymous: Consul filters the listing to nothing. That must not empty the cache.
    let cache = KeyCache::new();
    assert!(sync_once(&good, &cache).await);
    let anonymous = ConsulStore::new(&server.addr(), None).unwrap();
    let err = anonymous.load().await.unwrap_err();
    assert!(err.to_string().contains("ACL"), "{err}");
    assert!(!sync_once(&anonymous, &cache).await);
    assert_eq!(cache.len(), 2);

    // A wrong token is refused.
    let wrong = ConsulStore::new(&server.addr(), Some("nope".into())).unwrap();
    let err = wrong.load().await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    assert!(wrong.put("c", "key-c").await.is_err());
    assert!(server.get(&format!("{P}c")).is_none());
}

#[tokio::test]
async fn index_going_backwards_resets() {
    let server = ConsulServer::start();
    for i in 0..5 {
        server.put(&format!("{P}k{i}"), &format!("key-{i}"));
    }
    let s = Arc::new(store(&server));
    assert_eq!(s.load().await.unwrap().len(), 5);
    // The cluster is rebuilt: the index restarts below what we saw. Consul holds our
    // query for its wait, then we must notice and start over.
    server.wipe();
    timed_changed(&s, Duration::from_secs(1)).await;
    assert!(s.load().await.unwrap().is_empty());
    // And blocking works again from the new, lower index.
    let waiter = tokio::spawn({
        let s = s.clone();
        async move { timed_changed(&s, Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.put(&format!("{P}new"), "key-new");
    let took = waiter.await.unwrap();
    assert!(
        took < Duration::from_secs(2),
        "change noticed after {took:?}"
    );
    assert_eq!(s.load().await.unwrap()["new"], "key-new");
}

#[tokio::test]
async fn https_address_is_accepted() {
    // Only the scheme handling; no TLS agent here.
    let s = ConsulStore::new("https://127.0.0.1:1", None).unwrap();
    assert_eq!(s.describe(), "consul https://127.0.0.1:1");
    let err = s.load().await.unwrap_err();
    assert!(err.to_string().contains("https://127.0.0.1:1"), "{err}");
}
