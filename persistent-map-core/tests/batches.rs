//! insert_many, remove_many, atomic apply and transactions, update and
//! get_or_insert_with, in write-through mode.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::Switchable;
use persistent_map_core::{Batch, PersistentError, PersistentMap};

#[tokio::test]
async fn insert_many_is_one_backend_batch() {
    let backend = Switchable::new(true);
    let map = PersistentMap::new(backend.clone()).await.expect("open");
    map.insert("k1".to_string(), 0_u32).await.expect("insert");
    let before = backend.batches.load(Ordering::SeqCst);
    let replaced = map
        .insert_many((0..500).map(|i| (format!("k{i}"), i)))
        .await
        .expect("insert_many");
    assert_eq!(backend.batches.load(Ordering::SeqCst) - before, 1);
    assert_eq!(replaced.len(), 500);
    assert_eq!(replaced[1], Some(0));
    assert_eq!(replaced.iter().filter(|r| r.is_some()).count(), 1);

    let keys: Vec<String> = (0..250)
        .map(|i| format!("k{i}"))
        .chain(["missing".to_string()])
        .collect();
    let removed = map.remove_many(&keys).await.expect("remove_many");
    assert_eq!(removed, 250);
    assert_eq!(map.len(), 250);
    assert_eq!(backend.stored::<String, u32>().await.len(), 250);
}

#[tokio::test]
async fn a_failed_atomic_batch_changes_nothing() {
    let backend = Switchable::new(true);
    let map = PersistentMap::new(backend.clone()).await.expect("open");
    map.insert("a".to_string(), 1_u32).await.expect("insert");
    backend.fail(true);
    let mut batch = Batch::new();
    batch.insert("a".to_string(), 2).insert("b".to_string(), 3);
    assert!(map.apply(batch).await.is_err());
    backend.fail(false);
    assert_eq!(map.get("a"), Some(1));
    assert!(!map.contains_key("b"));
    assert_eq!(
        backend.stored::<String, u32>().await,
        HashMap::from([("a".to_string(), 1)])
    );
}

#[tokio::test]
async fn atomic_writes_are_refused_on_a_backend_without_atomic_batches() {
    let backend = Switchable::new(false);
    let map = PersistentMap::new(backend.clone()).await.expect("open");
    let mut batch = Batch::new();
    batch.insert("a".to_string(), 1_u32);
    let err = map.apply(batch).await.expect_err("refused");
    assert!(
        matches!(err, PersistentError::Unsupported { .. }),
        "{err:?}"
    );
    let err = map
        .transaction(|tx| {
            tx.insert("a".to_string(), 1);
        })
        .await
        .expect_err("refused");
    assert!(
        matches!(err, PersistentError::Unsupported { .. }),
        "{err:?}"
    );
    assert!(map.is_empty());
    assert!(backend.stored::<String, u32>().await.is_empty());
    // Plain batches still work, without the atomicity promise.
    map.extend([("a".to_string(), 1)]).await.expect("extend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_are_serializable() {
    let backend = Switchable::new(true);
    let map = PersistentMap::new(backend.clone()).await.expect("open");
    map.insert("a".to_string(), 1000_i64).await.expect("insert");
    map.insert("b".to_string(), 1000).await.expect("insert");
    let mut tasks = Vec::new();
    for t in 0..16 {
        let map = map.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let (from, to) = if (t + i) % 2 == 0 {
                    ("a", "b")
                } else {
                    ("b", "a")
                };
                map.transaction(move |tx| {
                    let from_balance = tx.get(&from.to_string()).unwrap_or(0);
                    let to_balance = tx.get(&to.to_string()).unwrap_or(0);
                    let amount = from_balance.min(7);
                    tx.insert(from.to_string(), from_balance - amount);
                    tx.insert(to.to_string(), to_balance + amount);
                })
                .await
                .expect("transaction");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let total = map.get("a").unwrap_or(0) + map.get("b").unwrap_or(0);
    assert_eq!(total, 2000, "money is neither created nor destroyed");
    let stored = backend.stored::<String, i64>().await;
    assert_eq!(stored.values().sum::<i64>(), 2000);
    assert_eq!(stored.get("a").copied(), map.get("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn update_is_atomic_per_key() {
    let backend = Switchable::new(true);
    let map = PersistentMap::new(backend.clone()).await.expect("open");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let map = map.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                map.update(&"counter".to_string(), |old| {
                    Some(old.copied().unwrap_or(0_u64) + 1)
                })
                .await
                .expect("update");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(map.get("counter"), Some(1600), "no increment lost");
    assert_eq!(
        backend.stored::<String, u64>().await.get("counter"),
        Some(&1600)
    );
    assert_eq!(
        map.update(&"counter".to_string(), |_| None)
            .await
            .expect("remove"),
        None
    );
    assert!(!map.contains_key("counter"));
    assert!(backend.stored::<String, u64>().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_or_insert_with_runs_once() {
    let backend = Switchable::new(true);
    let map = PersistentMap::new(backend.clone()).await.expect("open");
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..16_u32 {
        let map = map.clone();
        let calls = Arc::clone(&calls);
        tasks.push(tokio::spawn(async move {
            map.get_or_insert_with("config".to_string(), move || {
                calls.fetch_add(1, Ordering::SeqCst);
                t
            })
            .await
            .expect("get_or_insert_with")
        }));
    }
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.expect("task"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the initializer runs once");
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "everyone sees the same value: {seen:?}"
    );
    assert_eq!(
        backend.stored::<String, u32>().await.get("config"),
        Some(&seen[0])
    );
}

#[tokio::test]
async fn a_failed_insert_many_on_a_non_atomic_backend_keeps_cache_equal_to_store() {
    let backend = Switchable::new(false);
    let map = PersistentMap::new(backend.clone()).await.expect("open");
    map.insert("a".to_string(), 1_u32).await.expect("insert");
    backend.fail(true);
    assert!(map
        .extend([("a".to_string(), 2), ("b".to_string(), 3)])
        .await
        .is_err());
    backend.fail(false);
    let cached: HashMap<String, u32> = map.iter().collect();
    assert_eq!(cached, backend.stored::<String, u32>().await);
}
