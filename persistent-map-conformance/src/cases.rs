//! The rules every backend must follow, one public async function each.
//!
//! Each function's doc quotes the rule it checks, from the
//! [`StorageBackend`] contract. Call them through
//! [`conformance_tests!`](crate::conformance_tests), or directly with a factory.

use std::collections::HashMap;

use persistent_map_core::{BatchOp, PersistentError, PersistentMap, StorageBackend};

pub use crate::crash::{acknowledged_writes_survive_a_drop, acknowledged_writes_survive_a_kill};
pub use crate::distinct_keys::keys_that_share_a_legacy_text_stay_distinct;
pub use crate::expiry::{
    deadlines_follow_update_expire_and_persist, expired_entries_vanish_at_once_and_are_swept,
    expiring_entries_round_trip_through_the_store, the_sweep_spares_a_key_written_again,
};
pub use crate::faults::a_failure_in_the_middle_of_a_batch;
pub use crate::limits::{
    a_large_key_and_a_large_value_round_trip, a_million_changes_in_one_batch,
    keys_that_differ_slightly_stay_distinct,
};
pub use crate::modes::{
    acknowledged_before_close_is_kept, clones_share_one_map, closures_may_read_the_map,
    drop_then_reopen_releases_the_store, mixed_writers_with_a_tiny_queue_finish,
    panicking_closures_leave_the_map_working, remove_reaches_a_shared_store,
    transactions_reach_the_cache_in_every_mode,
};
pub use crate::processes::two_processes_follow_each_other;
pub use crate::sharing::{
    a_sweep_announces_only_what_it_removed, expiry_is_shared_by_live_instances,
    load_keys_answers_in_the_order_asked, subscription_marks_remote_changes,
    two_live_instances_follow_each_other,
};
pub use crate::stats::stats_follow_counted_operations;
pub use crate::subscriptions::{
    a_slow_subscriber_lags_without_slowing_writers, subscription_matches_the_store,
};
pub use crate::sync::flush_syncs_the_store_files;

use crate::factory::StoreFactory;
use crate::harness::{assert_same, contents, open_fresh, reopen};
use crate::types::{awkward_strings, record, Fragile, Point, Record};

/// "`load_all` returns exactly what is stored": text keys and values with
/// quotes, commas, newlines, unicode and empty strings come back unchanged.
pub async fn round_trip_text<F: StoreFactory>(mut factory: F) {
    let map = open_fresh::<F, String, String>(&mut factory).await;
    let mut expected = HashMap::new();
    for (i, key) in awkward_strings().into_iter().enumerate() {
        let value = awkward_strings()[(i + 3) % awkward_strings().len()].clone();
        map.insert(key.clone(), value.clone())
            .await
            .expect("insert");
        expected.insert(key, value);
    }
    assert_same("before reopen", &contents(&map), &expected);
    let map = reopen(&mut factory, map).await;
    assert_same("after reopen", &contents(&map), &expected);
    map.close().await.expect("close");
}

/// "`load_all` returns exactly what is stored": integer keys and nested values
/// (structs, `Option`, `Vec`, maps, enums, extreme integers, floats).
pub async fn round_trip_records<F: StoreFactory>(mut factory: F) {
    let map = open_fresh::<F, u64, Record>(&mut factory).await;
    let mut expected = HashMap::new();
    for n in [0, 1, 2, 3, 41, 42, u64::from(u32::MAX), u64::MAX] {
        map.insert(n, record(n)).await.expect("insert");
        expected.insert(n, record(n));
    }
    let map = reopen(&mut factory, map).await;
    assert_same("after reopen", &contents(&map), &expected);
    map.close().await.expect("close");
}

/// "`load_all` returns exactly what is stored": tuple keys and binary-ish values.
pub async fn round_trip_tuple_keys<F: StoreFactory>(mut factory: F) {
    let map = open_fresh::<F, (u32, String), Vec<u8>>(&mut factory).await;
    let mut expected = HashMap::new();
    for (i, text) in awkward_strings().into_iter().enumerate() {
        let key = (i as u32, text);
        let value: Vec<u8> = (0..=255u8).cycle().skip(i).take(i * 7).collect();
        map.insert(key.clone(), value.clone())
            .await
            .expect("insert");
        expected.insert(key, value);
    }
    let map = reopen(&mut factory, map).await;
    assert_same("after reopen", &contents(&map), &expected);
    map.close().await.expect("close");
}

/// "`load_all` returns exactly what is stored": struct keys, and `Option`
/// values where `None` and `Some("")` stay distinct.
pub async fn round_trip_struct_keys<F: StoreFactory>(mut factory: F) {
    let map = open_fresh::<F, Point, Option<String>>(&mut factory).await;
    let mut expected = HashMap::new();
    for (i, label) in awkward_strings().into_iter().enumerate() {
        let key = Point {
            x: i as i32 - 5,
            y: i32::MIN + i as i32,
            label,
        };
        let value = match i % 3 {
            0 => None,
            1 => Some(String::new()),
            _ => Some(format!("value {i}")),
        };
        map.insert(key.clone(), value.clone())
            .await
            .expect("insert");
        expected.insert(key, value);
    }
    let map = reopen(&mut factory, map).await;
    assert_same("after reopen", &contents(&map), &expected);
    map.close().await.expect("close");
}

/// "`load_all` returns exactly what is stored": values of a mebibyte and more.
pub async fn large_values<F: StoreFactory>(mut factory: F) {
    let map = open_fresh::<F, String, String>(&mut factory).await;
    let big: String = "0123456789abcdef\"\n,".repeat(64 * 1024);
    let mut expected = HashMap::new();
    for i in 0..3 {
        let value = format!("{i}{big}");
        map.insert(format!("big{i}"), value.clone())
            .await
            .expect("insert");
        expected.insert(format!("big{i}"), value);
    }
    let map = reopen(&mut factory, map).await;
    assert_same("after reopen", &contents(&map), &expected);
    map.close().await.expect("close");
}

/// Overwriting a key returns the value it replaced, and only the latest value
/// is stored.
pub async fn insert_returns_previous_value<F: StoreFactory>(mut factory: F) {
    let map = open_fresh::<F, String, String>(&mut factory).await;
    let key = String::from("k");
    assert_eq!(
        map.insert(key.clone(), "one".into()).await.expect("insert"),
        None
    );
    assert_eq!(
        map.insert(key.clone(), "two".into()).await.expect("insert"),
        Some("one".into())
    );
    assert_eq!(
        map.insert(key.clone(), "three".into())
            .await
            .expect("insert"),
        Some("two".into())
    );
    let map = reopen(&mut factory, map).await;
    assert_eq!(map.get(&key), Some("three".into()));
    assert_eq!(map.len(), 1);
    map.close().await.expect("close");
}

/// Removing a key returns its value, and the removal is persisted.
pub async fn remove_returns_value_and_persists<F: StoreFactory>(mut factory: F) {
    let map = open_fresh::<F, String, String>(&mut factory).await;
    for i in 0..10 {
        map.insert(format!("k{i}"), format!("v{i}"))
            .await
            .expect("insert");
    }
    for i in (0..10).step_by(2) {
        assert_eq!(
            map.remove(&format!("k{i}")).await.expect("remove"),
            Some(format!("v{i}"))
        );
    }
    let map = reopen(&mut factory, map).await;
    let expected: HashMap<String, String> = (1..10)
        .step_by(2)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .collect();
    assert_same("after reopen", &contents(&map), &expected);
    map.close().await.expect("close");
}

/// "Removing a missing key is `Ok`": the map returns `None` and changes nothing.
pub async fn remove_missing_key_is_none<F: StoreFactory>(mut factory: F) {
    let map = open_fresh::<F, String, String>(&mut factory).await;
    map.insert("kept".into(), "v".into()).await.expect("insert");
    assert_eq!(
        map.remove(&"never there".to_string())
            .await
            .expect("remove"),
        None
    );
    map.remove(&"kept".to_string()).await.expect("remove");
    assert_eq!(
        map.remove(&"kept".to_string()).await.expect("remove twice"),
        None
    );
    let map = reopen(&mut factory, map).await;
    assert!(
        map.is_empty(),
        "store should be empty, has {:?}",
        contents(&map)
    );
    map.close().await.expect("close");
}

/// "Acknowledged means kept" and "no holes": after a long run of inserts,
/// overwrites and removes, every reopen sees exactly the acknowledged state.
pub async fn reopen_sees_exactly_what_was_acknowledged<F: StoreFactory>(mut factory: F) {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut map = open_fresh::<F, u64, Record>(&mut factory).await;
    let mut model: HashMap<u64, Record> = HashMap::new();
    for round in 0..4 {
        for step in 0..150 {
            let key = rng.u64(0..40);
            if rng.u8(0..10) < 3 {
                let removed = map.remove(&key).await.expect("remove");
                assert_eq!(
                    removed,
                    model.remove(&key),
                    "remove of {key} returned the wrong value"
                );
            } else {
                let value = record(round * 1000 + step);
                let old = map.insert(key, value.clone()).await.expect("insert");
                assert_eq!(
                    old,
                    model.insert(key, value),
                    "insert of {key} returned the wrong value"
                );
            }
        }
        map = reopen(&mut factory, map).await;
        assert_same(&format!("after reopen {round}"), &contents(&map), &model);
    }
    map.close().await.expect("close");
}

/// "Flushed means durable": flush succeeds, and what it covered is there on reopen.
pub async fn flush_then_reopen<F: StoreFactory>(mut factory: F) {
    let map = open_fresh::<F, String, String>(&mut factory).await;
    map.flush().await.expect("flush of an empty map");
    let mut expected = HashMap::new();
    for i in 0..50 {
        map.insert(format!("k{i}"), format!("v{i}"))
            .await
            .expect("insert");
        expected.insert(format!("k{i}"), format!("v{i}"));
        if i % 10 == 0 {
            map.flush().await.expect("flush");
        }
    }
    map.flush().await.expect("flush");
    map.flush().await.expect("a second flush with nothing new");
    let map = reopen(&mut factory, map).await;
    assert_same("after reopen", &contents(&map), &expected);
    map.close().await.expect("close");
}

/// `clear` empties the store as well as the cache, and the map stays usable.
pub async fn clear_empties_the_store<F: StoreFactory>(mut factory: F) {
    let map = open_fresh::<F, String, String>(&mut factory).await;
    for i in 0..20 {
        map.insert(format!("k{i}"), format!("v{i}"))
            .await
            .expect("insert");
    }
    map.clear().await.expect("clear");
    assert!(map.is_empty());
    let map = reopen(&mut factory, map).await;
    assert!(
        map.is_empty(),
        "clear must empty the store, found {:?}",
        contents(&map)
    );
    map.insert("after".into(), "clear".into())
        .await
        .expect("insert after clear");
    let map = reopen(&mut factory, map).await;
    assert_eq!(map.get("after"), Some("clear".into()));
    assert_eq!(map.len(), 1);
    map.close().await.expect("close");
}

/// `retain` removes from the store what it removes from the cache.
pub async fn retain_persists_removals<F: StoreFactory>(mut factory: F) {
    let map = open_fresh::<F, u64, Record>(&mut factory).await;
    for n in 0..30 {
        map.insert(n, record(n)).await.expect("insert");
    }
    let removed = map.retain(|k, _| k % 3 == 0).await.expect("retain");
    assert_eq!(removed, 20);
    let expected: HashMap<u64, Record> = (0..30)
        .filter(|k| k % 3 == 0)
        .map(|n| (n, record(n)))
        .collect();
    assert_same("after retain", &contents(&map), &expected);
    let map = reopen(&mut factory, map).await;
    assert_same("after reopen", &contents(&map), &expected);
    map.close().await.expect("close");
}

/// "Changes reach the backend in the order the cache saw them": many tasks
/// writing and removing overlapping keys leave the store equal to the cache.
pub async fn concurrent_writers_leave_store_equal_to_cache<F: StoreFactory>(mut factory: F) {
    const TASKS: u64 = 16;
    const OPS: u64 = 150;
    const KEYS: u64 = 8;
    let map = open_fresh::<F, u64, Record>(&mut factory).await;
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let map = map.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(task);
            for op in 0..OPS {
                let key = rng.u64(0..KEYS);
                if rng.u8(0..10) == 0 {
                    map.remove(&key).await.expect("remove");
                } else {
                    map.insert(key, record(task * 10_000 + op))
                        .await
                        .expect("insert");
                }
            }
        }));
    }
    // A burst on one key: every write is queued before the first commits,
    // so they share batches and their order inside a batch decides the result.
    for round in 0..20 {
        let burst: Vec<_> = (0..32)
            .map(|i| {
                let map = map.clone();
                tokio::spawn(async move { map.insert(KEYS, record(round * 100 + i)).await })
            })
            .collect();
        for write in burst {
            write.await.expect("burst task").expect("burst insert");
        }
    }
    for handle in handles {
        handle.await.expect("writer task");
    }
    let cached = contents(&map);
    let map = reopen(&mut factory, map).await;
    assert_same(
        "store after concurrent writers vs cache",
        &contents(&map),
        &cached,
    );
    map.close().await.expect("close");
}

/// "Failed means not applied": a value that cannot be encoded is refused with
/// an error, is absent from the cache and the store, and harms nothing else.
pub async fn unencodable_value_is_rejected_without_trace<F: StoreFactory>(mut factory: F) {
    let map = open_fresh::<F, String, Fragile>(&mut factory).await;
    map.insert("good".into(), Fragile::ok("v1"))
        .await
        .expect("insert");
    let err = map
        .insert("bad".into(), Fragile::poisoned())
        .await
        .expect_err("a value that fails to serialize must be refused");
    assert!(
        matches!(err, PersistentError::Codec { .. }),
        "expected a Codec error, got {err:?}"
    );
    let err = map
        .insert("good".into(), Fragile::poisoned())
        .await
        .expect_err("overwriting with a bad value must be refused");
    assert!(matches!(err, PersistentError::Codec { .. }), "got {err:?}");
    assert_eq!(
        map.get("good"),
        Some(Fragile::ok("v1")),
        "the old value must stay"
    );
    assert!(
        !map.contains_key("bad"),
        "a refused insert must leave no phantom"
    );
    map.insert("after".into(), Fragile::ok("v2"))
        .await
        .expect("insert after a failure");
    let map = reopen(&mut factory, map).await;
    let expected: HashMap<String, Fragile> = [
        ("good".to_string(), Fragile::ok("v1")),
        ("after".to_string(), Fragile::ok("v2")),
    ]
    .into_iter()
    .collect();
    assert_same("after reopen", &contents(&map), &expected);
    map.close().await.expect("close");
}

/// "The map calls the write methods in the order its cache saw the changes;
/// a backend must not reorder them": within one batch, later changes to a key win.
pub async fn batch_is_ordered<F: StoreFactory>(mut factory: F) {
    let backend = loaded_backend::<F, String, String>(&mut factory).await;
    let batch: Vec<BatchOp<String, String>> = vec![
        put("a", "1"),
        put("a", "2"),
        put("b", "1"),
        del("a"),
        put("a", "3"),
        put("c", "1"),
        del("c"),
        del("never"),
    ];
    backend.apply_batch(&batch).await.expect("apply_batch");
    StorageBackend::<String, String>::flush(&backend)
        .await
        .expect("flush");
    let stored: HashMap<String, String> = backend.load_all().await.expect("load_all");
    let expected: HashMap<String, String> = [("a", "3"), ("b", "1")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_same("after one ordered batch", &stored, &expected);
}

/// "For a batch on a backend without atomic batches, a prefix of the batch
/// may have been applied"; with `atomic_batch`, none of it.
pub async fn failed_batch_applies_all_or_a_prefix<F: StoreFactory>(mut factory: F) {
    let backend = loaded_backend::<F, String, Fragile>(&mut factory).await;
    let atomic = StorageBackend::<String, Fragile>::capabilities(&backend).atomic_batch;
    let batch = vec![
        BatchOp::Put {
            key: "first".to_string(),
            value: Fragile::ok("1"),
        },
        BatchOp::Put {
            key: "bad".to_string(),
            value: Fragile::poisoned(),
        },
        BatchOp::Put {
            key: "last".to_string(),
            value: Fragile::ok("3"),
        },
    ];
    backend
        .apply_batch(&batch)
        .await
        .expect_err("a batch with an unencodable value must fail");
    let stored: HashMap<String, Fragile> = backend.load_all().await.expect("load_all");
    assert!(
        !stored.contains_key("bad"),
        "the bad change must not be stored"
    );
    assert!(
        !stored.contains_key("last"),
        "a change after the failure must not be stored"
    );
    if atomic {
        assert!(
            stored.is_empty(),
            "the backend declares atomic batches, yet a failed batch left {stored:?}"
        );
    }
}

/// "Idempotent: deleting a missing key is not an error, saving the same value
/// twice leaves the same state."
pub async fn delete_is_idempotent<F: StoreFactory>(mut factory: F) {
    let backend = loaded_backend::<F, String, String>(&mut factory).await;
    StorageBackend::<String, String>::delete(&backend, &"missing".to_string())
        .await
        .expect("delete of a missing key");
    backend
        .save("k".to_string(), "v".to_string())
        .await
        .expect("save");
    backend
        .save("k".to_string(), "v".to_string())
        .await
        .expect("save again");
    StorageBackend::<String, String>::delete(&backend, &"k".to_string())
        .await
        .expect("delete");
    StorageBackend::<String, String>::delete(&backend, &"k".to_string())
        .await
        .expect("delete again");
    let stored: HashMap<String, String> = backend.load_all().await.expect("load_all");
    assert!(
        stored.is_empty(),
        "expected an empty store, found {stored:?}"
    );
}

/// The 0.1.x query methods (`len`, `is_empty`, `contains_key`) agree with `load_all`.
pub async fn legacy_query_methods_agree<F: StoreFactory>(mut factory: F) {
    let backend = loaded_backend::<F, String, String>(&mut factory).await;
    assert!(StorageBackend::<String, String>::is_empty(&backend)
        .await
        .expect("is_empty"));
    for i in 0..5 {
        backend
            .save(format!("k{i}"), format!("v{i}"))
            .await
            .expect("save");
    }
    StorageBackend::<String, String>::delete(&backend, &"k0".to_string())
        .await
        .expect("delete");
    assert_eq!(
        StorageBackend::<String, String>::len(&backend)
            .await
            .expect("len"),
        4
    );
    assert!(!StorageBackend::<String, String>::is_empty(&backend)
        .await
        .expect("is_empty"));
    assert!(
        StorageBackend::<String, String>::contains_key(&backend, &"k3".to_string())
            .await
            .expect("contains_key")
    );
    assert!(
        !StorageBackend::<String, String>::contains_key(&backend, &"k0".to_string())
            .await
            .expect("contains_key")
    );
}

/// With `exclusive_lock`, "a second instance opened on the same store while
/// this one is open is refused with `PersistentError::Locked`"; without it, a
/// second instance opens and sees the first one's acknowledged data.
pub async fn second_opener_is_locked_out<F: StoreFactory>(mut factory: F) {
    let map = open_fresh::<F, String, String>(&mut factory).await;
    map.insert("k".into(), "v".into()).await.expect("insert");
    let exclusive = StorageBackend::<String, String>::capabilities(map.backend()).exclusive_lock;
    let second = match factory.reopen().await {
        Ok(backend) => PersistentMap::<String, String, _>::new(backend).await,
        Err(err) => Err(err),
    };
    match (exclusive, second) {
        (true, Err(PersistentError::Locked { .. })) => {}
        (true, other) => {
            panic!("the backend declares an exclusive lock, but a second opener got {other:?}")
        }
        (false, Ok(second)) => {
            assert_eq!(
                second.get("k"),
                Some("v".into()),
                "a second instance must see acknowledged data"
            );
            second.close().await.expect("close second");
        }
        (false, Err(err)) => {
            panic!("a second opener failed without an exclusive lock declared: {err:?}")
        }
    }
    let map = reopen(&mut factory, map).await;
    assert_eq!(map.get("k"), Some("v".into()));
    map.close().await.expect("close");
}

/// A fresh store's backend, used directly, after the first call a map
/// would make (`load_all`), which is where lazy backends open their files.
async fn loaded_backend<F, K, V>(factory: &mut F) -> F::Backend
where
    F: StoreFactory,
    K: Eq
        + std::hash::Hash
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    V: Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    F::Backend: StorageBackend<K, V>,
{
    let backend = factory.fresh().await.expect("fresh store");
    let stored = StorageBackend::<K, V>::load_all(&backend)
        .await
        .expect("a fresh store loads");
    assert!(stored.is_empty(), "a fresh store must be empty");
    backend
}

fn put(k: &str, v: &str) -> BatchOp<String, String> {
    BatchOp::Put {
        key: k.to_string(),
        value: v.to_string(),
    }
}

fn del(k: &str) -> BatchOp<String, String> {
    BatchOp::Delete { key: k.to_string() }
}
