//! `map.stats()` against operations counted by the backend, in both write
//! modes, with failures, flushes and reloads.

use std::sync::atomic::Ordering;
use std::time::Duration;

use persistent_map_core::{ErrorKind, PersistentMap, WriteBehind};
use persistent_map_memory::InMemoryBackend;

mod common;
use common::Switchable;

/// How long a condition may take on a loaded machine: generous, since a
/// passing run never waits for it.
const DEADLINE: Duration = Duration::from_secs(60);

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_figures_match_what_the_backend_saw() {
    let backend = Switchable::new(true);
    let map: PersistentMap<String, u64, _> = PersistentMap::builder(backend.clone())
        .name("through")
        .build()
        .await
        .expect("open");
    let fresh = map.stats();
    assert_eq!(
        (fresh.commits, fresh.changes_written, fresh.max_batch),
        (0, 0, 0)
    );
    assert_eq!(fresh.mean_batch, 0.0);
    assert_eq!(fresh.since_last_flush, None);
    assert_eq!(fresh.last_error_kind, None);

    // One caller at a time: each write is its own batch.
    for i in 0..10 {
        map.insert(format!("k{i}"), i).await.expect("insert");
    }
    let stats = map.stats();
    assert_eq!(
        (stats.commits, stats.changes_written, stats.max_batch),
        (10, 10, 1)
    );
    map.insert_many((0..7).map(|i| (format!("many{i}"), i)))
        .await
        .expect("insert_many");
    map.remove(&"k0".to_string()).await.expect("remove");
    let stats = map.stats();
    assert_eq!(
        (stats.commits, stats.changes_written, stats.max_batch),
        (12, 18, 7)
    );
    assert_eq!(stats.mean_batch, 18.0 / 12.0);

    // Sixteen concurrent writers share batches (group commit); whatever the
    // grouping, the figures are the backend's.
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let map = map.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    map.insert(format!("w{w}-{i}"), i).await.expect("insert");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let stats = map.stats();
    assert_eq!(stats.commits, backend.batches.load(Ordering::SeqCst) as u64);
    assert_eq!(stats.changes_written, 18 + 400);
    assert_eq!(
        stats.changes_written,
        backend.changes.load(Ordering::SeqCst) as u64
    );
    assert!(stats.max_batch >= 7 && stats.max_batch <= 16, "{stats:?}");
    assert_eq!(stats.entries, map.len());
    assert_eq!(stats.entries, 9 + 7 + 400);
    assert_eq!(stats.write_errors, 0);

    // The backend does not declare its durability: what was written since
    // the last flush is unflushed.
    assert_eq!(stats.unflushed, stats.changes_written);
    map.flush().await.expect("flush");
    let stats = map.stats();
    assert_eq!(stats.unflushed, 0);
    let since = stats.since_last_flush.expect("flushed");
    assert!(since < DEADLINE, "{since:?}");
    map.insert("after".to_string(), 1).await.expect("insert");
    assert_eq!(map.stats().unflushed, 1);
    eventually("the queue to drain", || map.stats().queue_depth == 0).await;
}

#[tokio::test]
async fn a_backend_that_syncs_every_commit_has_nothing_unflushed() {
    // The memory backend declares `Volatile`: a flush cannot help.
    let map = PersistentMap::new(InMemoryBackend::new())
        .await
        .expect("open");
    map.insert(1_u32, 1_u32).await.expect("insert");
    let stats = map.stats();
    assert_eq!((stats.commits, stats.unflushed), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_figures_match_what_the_backend_saw() {
    let backend = Switchable::new(true);
    let map: PersistentMap<String, u64, _> = PersistentMap::builder(backend.clone())
        .max_batch(4)
        .write_behind(WriteBehind::new().max_delay(Duration::MAX))
        .build()
        .await
        .expect("open");
    for i in 0..10 {
        map.insert(format!("k{i}"), i).await.expect("insert");
    }
    // No flush yet: every accepted change is unflushed.
    assert_eq!(map.stats().unflushed, 10);
    map.flush().await.expect("flush");
    let stats = map.stats();
    assert_eq!(stats.changes_written, 10);
    assert_eq!(stats.commits, backend.batches.load(Ordering::SeqCst) as u64);
    assert!(
        (3..=10).contains(&stats.commits),
        "10 changes in batches of at most 4: {stats:?}"
    );
    assert!(stats.max_batch <= 4 && stats.max_batch >= 1, "{stats:?}");
    assert_eq!(stats.unflushed, 0);
    assert!(stats.since_last_flush.is_some());
    assert_eq!(stats.entries, 10);
    eventually("the queue to drain", || map.stats().queue_depth == 0).await;
}

#[tokio::test]
async fn failures_are_counted_with_their_kind() {
    let backend = Switchable::new(true);
    let map: PersistentMap<String, u64, _> =
        PersistentMap::new(backend.clone()).await.expect("open");
    map.insert("ok".to_string(), 1).await.expect("insert");
    backend.fail(true);
    let err = map
        .insert("refused".to_string(), 2)
        .await
        .expect_err("the backend refuses");
    let stats = map.stats();
    assert_eq!(stats.write_errors, 1);
    assert_eq!(stats.last_error_kind, Some(err.kind()));
    assert_eq!(stats.last_error_kind, Some(ErrorKind::Other));
    assert_eq!((stats.commits, stats.changes_written), (1, 1));

    map.flush().await.expect_err("the flush fails");
    map.clear().await.expect_err("the clear fails");
    let stats = map.stats();
    assert_eq!(stats.write_errors, 3);
    assert_eq!(stats.since_last_flush, None, "no flush succeeded");

    backend.fail(false);
    map.flush().await.expect("flush");
    let stats = map.stats();
    assert_eq!(stats.write_errors, 3, "errors are a running count");
    assert!(stats.since_last_flush.is_some());
}

#[tokio::test]
async fn a_write_behind_background_failure_is_counted() {
    let backend = Switchable::new(true);
    let map: PersistentMap<String, u64, _> = PersistentMap::builder(backend.clone())
        .write_behind(WriteBehind::new().max_delay(Duration::from_millis(1)))
        .build()
        .await
        .expect("open");
    backend.fail(true);
    map.insert("lost".to_string(), 1).await.expect("queued");
    map.flush().await.expect_err("the background write failed");
    let stats = map.stats();
    assert_eq!(stats.write_errors, 1);
    assert_eq!(stats.last_error_kind, Some(ErrorKind::Other));
    assert_eq!(stats.commits, 0);

    // A reload replaces the cache: one resync, nothing left unflushed.
    backend.fail(false);
    map.reload().await.expect("reload");
    let stats = map.stats();
    assert_eq!(stats.resyncs, 1);
    assert_eq!(stats.unflushed, 0);
    assert_eq!(stats.entries, 0);
}

#[tokio::test]
async fn the_name_defaults_and_can_be_set() {
    let map: PersistentMap<String, u64, _> = PersistentMap::new(InMemoryBackend::new())
        .await
        .expect("open");
    assert_eq!(map.name(), persistent_map_core::DEFAULT_MAP_NAME);
    assert_eq!(map.name(), "default");
    let named: PersistentMap<String, u64, _> = PersistentMap::builder(InMemoryBackend::new())
        .name(String::from("tokens"))
        .build()
        .await
        .expect("open");
    assert_eq!(named.name(), "tokens");
    assert!(format!("{named:?}").contains("tokens"));
}
