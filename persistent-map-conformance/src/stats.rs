//! "`map.stats()` counts what the map did": the figures of
//! [`MapStats`](persistent_map_core::MapStats) against operations the case
//! counts itself, in write-through and write-behind mode.

use std::time::Duration;

use persistent_map_core::{Durability, ErrorKind, PersistentMap, WriteBehind};

use crate::factory::StoreFactory;
use crate::types::Fragile;

/// How long a case waits for something that settles on its own. Generous:
/// a loaded 2-core machine must never reach it.
const DEADLINE: Duration = Duration::from_secs(120);

/// "`map.stats()` counts what the map did": one caller's writes are one
/// backend batch each (`insert` one change, `insert_many` all of its
/// changes), a refused write counts as a write error with its kind and as
/// no commit, a flush sets the time since the last flush and leaves nothing
/// unflushed, and what counts as unflushed before it follows the backend's
/// declared [`Durability`]. Write-behind: changes are gathered into batches
/// no larger than `max_batch`, all counted once flushed.
pub async fn stats_follow_counted_operations<F: StoreFactory>(mut factory: F) {
    through(&mut factory).await;
    behind(&mut factory).await;
}

async fn through<F: StoreFactory>(factory: &mut F) {
    let backend = factory.fresh().await.expect("factory opens a fresh store");
    let map: PersistentMap<String, Fragile, _> = PersistentMap::builder(backend)
        .name("conformance-through")
        .build()
        .await
        .expect("a map opens on a fresh store");
    assert_eq!(map.name(), "conformance-through");
    let stats = map.stats();
    assert_eq!(
        (stats.commits, stats.changes_written, stats.entries),
        (0, 0, 0)
    );
    assert_eq!(stats.since_last_flush, None, "no flush yet");

    for i in 0..10 {
        map.insert(format!("k{i}"), Fragile::ok("v"))
            .await
            .expect("insert");
    }
    let stats = map.stats();
    assert_eq!(
        (stats.commits, stats.changes_written, stats.max_batch),
        (10, 10, 1),
        "ten lone inserts are ten batches of one: {stats:?}"
    );
    map.insert_many((0..5).map(|i| (format!("many{i}"), Fragile::ok("v"))))
        .await
        .expect("insert_many");
    map.remove(&"k0".to_string()).await.expect("remove");
    let stats = map.stats();
    assert_eq!(
        (stats.commits, stats.changes_written, stats.max_batch),
        (12, 16, 5),
        "{stats:?}"
    );
    assert_eq!(stats.mean_batch, 16.0 / 12.0);
    assert_eq!(stats.entries, 14);
    assert_eq!((stats.write_errors, stats.last_error_kind), (0, None));

    map.insert("bad".to_string(), Fragile::poisoned())
        .await
        .expect_err("a value that fails to serialize is refused");
    let stats = map.stats();
    assert_eq!(stats.write_errors, 1, "{stats:?}");
    assert_eq!(stats.last_error_kind, Some(ErrorKind::Codec));
    assert_eq!(stats.commits, 12, "a refused batch is no commit");

    let expected_unflushed = match map.durability() {
        Durability::OnFlush | Durability::Undeclared => stats.changes_written,
        _ => 0,
    };
    assert_eq!(
        stats.unflushed,
        expected_unflushed,
        "unflushed before a flush, declared durability {:?}",
        map.durability()
    );
    map.flush().await.expect("flush");
    let stats = map.stats();
    assert_eq!(stats.unflushed, 0, "a flush covers every written change");
    let since = stats.since_last_flush.expect("a flush happened");
    assert!(since < DEADLINE, "the flush just returned: {since:?} ago");
    map.close().await.expect("close");
}

async fn behind<F: StoreFactory>(factory: &mut F) {
    let backend = factory.fresh().await.expect("factory opens a fresh store");
    let map: PersistentMap<String, String, _> = PersistentMap::builder(backend)
        .name("conformance-behind")
        .max_batch(4)
        .write_behind(WriteBehind::new().max_delay(Duration::MAX))
        .build()
        .await
        .expect("a map opens on a fresh store");
    for i in 0..10 {
        map.insert(format!("k{i}"), format!("v{i}"))
            .await
            .expect("insert");
    }
    assert_eq!(
        map.stats().unflushed,
        10,
        "write-behind: every accepted change waits for a flush"
    );
    map.flush().await.expect("flush");
    let stats = map.stats();
    assert_eq!(stats.changes_written, 10, "{stats:?}");
    assert!(
        (3..=10).contains(&stats.commits),
        "10 changes in batches of at most 4: {stats:?}"
    );
    assert!((1..=4).contains(&stats.max_batch), "{stats:?}");
    assert_eq!(stats.unflushed, 0);
    assert_eq!(stats.write_errors, 0);
    assert_eq!(stats.entries, 10);
    assert!(stats.since_last_flush.is_some());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while map.stats().queue_depth != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue never drained: {:?}",
            map.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    map.close().await.expect("close");
}
