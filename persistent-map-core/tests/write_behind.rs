//! Write-behind mode: fast acknowledgement, bounded queue, flush covers every
//! earlier change, background errors are reported and never leave holes.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Switchable;
use persistent_map_core::{PersistentError, PersistentMap, WriteBehind};

async fn open(backend: &Switchable, mode: WriteBehind) -> PersistentMap<String, u32, Switchable> {
    PersistentMap::builder(backend.clone())
        .write_behind(mode)
        .build()
        .await
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_return_before_the_backend_and_flush_persists_them() {
    let backend = Switchable::new(true);
    let map = open(&backend, WriteBehind::new()).await;
    backend.gate(true);
    for i in 0..100 {
        map.insert(format!("k{i}"), i).await.expect("queued");
    }
    map.remove(&"k0".to_string()).await.expect("queued");
    assert_eq!(map.len(), 99, "the cache has every change at once");
    assert!(
        backend.stored::<String, u32>().await.is_empty(),
        "nothing reached the backend yet"
    );
    assert_eq!(map.unflushed(), 101);

    backend.gate(false);
    map.flush().await.expect("flush");
    assert_eq!(map.unflushed(), 0);
    let stored = backend.stored::<String, u32>().await;
    assert_eq!(stored.len(), 99);
    assert_eq!(stored.get("k5"), Some(&5));
    assert!(!stored.contains_key("k0"));
    let batches = backend.batches.load(Ordering::SeqCst);
    println!("write-behind: 101 changes in {batches} backend batches");
    assert!(
        batches < 20,
        "queued changes are written in batches, got {batches}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_slows_writers_down() {
    let backend = Switchable::new(true);
    let map = open(&backend, WriteBehind::new().max_pending(10)).await;
    backend.gate(true);
    for i in 0..10 {
        map.insert(format!("k{i}"), i)
            .await
            .expect("room in the queue");
    }
    // The ten changes stay pending while the backend is gated, so the
    // eleventh finds the queue full on its very first poll.
    let mut blocked = std::pin::pin!(map.insert("one too many".to_string(), 0));
    assert!(
        futures::poll!(blocked.as_mut()).is_pending(),
        "the 11th change must wait for room"
    );
    assert_eq!(map.unflushed(), 10, "and it was not queued");
    backend.gate(false);
    blocked.await.expect("insert once there is room");
    map.flush().await.expect("flush");
    assert_eq!(backend.stored::<String, u32>().await.len(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_failure_is_reported_and_leaves_no_hole() {
    let backend = Switchable::new(true);
    let map = open(
        &backend,
        WriteBehind::new().max_delay(Duration::from_millis(1)),
    )
    .await;
    map.insert("before".to_string(), 1).await.expect("insert");
    map.flush().await.expect("flush");

    backend.fail(true);
    map.insert("lost".to_string(), 2)
        .await
        .expect("queued before the failure is known");
    let err = map
        .flush()
        .await
        .expect_err("flush must report the background failure");
    assert!(err.to_string().contains("injected"), "{err}");
    backend.fail(false);

    // The map refuses to pretend later writes are safe...
    let err = map
        .insert("after".to_string(), 3)
        .await
        .expect_err("refused");
    assert!(matches!(err, PersistentError::Shared(_)), "{err:?}");
    assert!(map.flush().await.is_err());
    assert!(!backend.stored::<String, u32>().await.contains_key("after"));

    // ...until reload brings the cache back to the store.
    map.reload().await.expect("reload");
    let cached: HashMap<String, u32> = map.iter().collect();
    assert_eq!(cached, backend.stored::<String, u32>().await);
    assert_eq!(cached.get("before"), Some(&1), "flushed data is kept");
    assert!(
        !cached.contains_key("lost"),
        "the failed change is not pretended stored"
    );
    map.insert("after".to_string(), 3)
        .await
        .expect("writes are accepted again");
    map.close().await.expect("close");
    assert_eq!(backend.stored::<String, u32>().await.get("after"), Some(&3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_persists_everything_queued() {
    let backend = Switchable::new(true);
    let map = open(
        &backend,
        WriteBehind::new().max_delay(Duration::from_secs(60)),
    )
    .await;
    for i in 0..50 {
        map.insert(format!("k{i}"), i).await.expect("queued");
    }
    map.close().await.expect("close");
    assert_eq!(backend.stored::<String, u32>().await.len(), 50);
    assert_eq!(map.unflushed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_write_behind_writers_leave_store_equal_to_cache() {
    let backend = Switchable::new(true);
    let map = open(&backend, WriteBehind::new().max_pending(64)).await;
    let mut tasks = Vec::new();
    for t in 0..8_u32 {
        let map = map.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(u64::from(t));
            for i in 0..500_u32 {
                let key = format!("k{}", rng.u8(0..16));
                match rng.u8(0..10) {
                    0 => {
                        map.remove(&key).await.expect("remove");
                    }
                    1 => {
                        map.update(&key, move |old| Some(old.copied().unwrap_or(0) + i))
                            .await
                            .expect("update");
                    }
                    2 if i % 50 == 0 => {
                        map.extend((0..4).map(|j| (format!("k{j}"), t * 1000 + i)))
                            .await
                            .expect("extend");
                    }
                    _ => {
                        map.insert(key, t * 1000 + i).await.expect("insert");
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    map.flush().await.expect("flush");
    let cached: HashMap<String, u32> = map.iter().collect();
    assert_eq!(backend.stored::<String, u32>().await, cached);
}
