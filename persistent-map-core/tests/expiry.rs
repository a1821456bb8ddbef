//! Expiry on backends that store no deadlines (refused, with nothing
//! applied) and the parts of expiry that need no store: what readers and
//! `retain` see.

mod common;

use std::time::Duration;

use common::Switchable;
use persistent_map_core::{Batch, ErrorKind, PersistentMap, WriteBehind};
use persistent_map_memory::InMemoryBackend;

const HOUR: Duration = Duration::from_secs(3600);

fn assert_unsupported<T: std::fmt::Debug>(result: persistent_map_core::Result<T>, what: &str) {
    let err = result.expect_err(what);
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{what}: {err}");
    assert!(err.to_string().contains("expiry"), "{what}: {err}");
}

#[tokio::test]
async fn a_backend_without_deadlines_refuses_expiry_and_applies_nothing() {
    for behind in [false, true] {
        let backend = Switchable::new(true);
        let builder = PersistentMap::builder(backend.clone());
        let builder = if behind {
            builder.write_behind(WriteBehind::new())
        } else {
            builder
        };
        let map: PersistentMap<String, u32, _> = builder.build().await.expect("open");
        map.insert("plain".into(), 1).await.expect("insert");
        let key = "plain".to_string();
        assert_unsupported(
            map.insert_with_ttl("k".into(), 1, HOUR).await,
            "insert_with_ttl",
        );
        assert_unsupported(map.expire(&key, HOUR).await, "expire");
        assert_unsupported(map.persist(&key).await, "persist");
        assert_unsupported(map.sweep_expired().await, "sweep_expired");
        let mut batch = Batch::new();
        batch
            .insert("b1".into(), 1)
            .insert_with_ttl("b2".into(), 2, HOUR);
        assert_unsupported(map.apply(batch).await, "a batch with a deadline");
        assert_unsupported(
            map.transaction(|tx| {
                tx.insert("t1".into(), 1);
                tx.insert_with_ttl("t2".into(), 2, HOUR);
            })
            .await,
            "a transaction with a deadline",
        );
        map.flush().await.expect("the map still works");
        let mut keys: Vec<String> = map.keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["plain"],
            "behind={behind}: nothing of the refused calls is cached"
        );
        let stored = backend.stored::<String, u32>().await;
        assert_eq!(
            stored.len(),
            1,
            "behind={behind}: nothing of them is stored: {stored:?}"
        );
        assert_eq!(map.ttl("plain"), None);
        map.insert("after".into(), 2).await.expect("writes go on");
    }
}

#[tokio::test]
async fn a_default_ttl_on_a_backend_without_deadlines_fails_to_open() {
    let opened = PersistentMap::<String, u32, _>::builder(Switchable::new(true))
        .default_ttl(HOUR)
        .build()
        .await;
    assert_unsupported(opened, "default_ttl");
}

#[tokio::test]
async fn retain_and_iteration_skip_expired_entries() {
    let map: PersistentMap<String, u32, _> = PersistentMap::builder(InMemoryBackend::new())
        .sweep_interval(HOUR)
        .build()
        .await
        .expect("open");
    map.insert_with_ttl("gone".into(), 1, Duration::ZERO)
        .await
        .expect("insert_with_ttl");
    map.insert("kept".into(), 2).await.expect("insert");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while map.get("gone").is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the entry expires");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut seen = Vec::new();
    let removed = map
        .retain(move |k, _| {
            seen.push(k.clone());
            assert_eq!(seen, ["kept"], "retain sees only live entries");
            true
        })
        .await
        .expect("retain");
    assert_eq!(removed, 0);
    assert_eq!(map.values().collect::<Vec<_>>(), [2]);
    assert_eq!(map.iter().count(), 1);
    let mut count = 0;
    map.for_each(|_, _| count += 1);
    assert_eq!(count, 1);
    assert_eq!(map.stats().entries, 1, "stats count live entries");
    assert_eq!(map.sweep_expired().await.expect("sweep"), 1);
    assert_eq!(map.stats().expired_swept, 1);
    assert_eq!(map.sweep_expired().await.expect("sweep"), 0, "nothing left");
}

#[tokio::test]
async fn the_sweep_publishes_expired_events_in_both_modes() {
    use futures::StreamExt as _;
    use persistent_map_core::{MapEvent, Origin};
    for behind in [false, true] {
        let builder = PersistentMap::builder(InMemoryBackend::new()).sweep_interval(HOUR);
        let builder = if behind {
            builder.write_behind(WriteBehind::new())
        } else {
            builder
        };
        let map: PersistentMap<String, u32, _> = builder.build().await.expect("open");
        let mut events = map.subscribe();
        map.insert_with_ttl("gone".into(), 1, Duration::ZERO)
            .await
            .expect("insert_with_ttl");
        map.insert("kept".into(), 2).await.expect("insert");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while map.get("gone").is_some() {
            assert!(tokio::time::Instant::now() < deadline, "the entry expires");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(map.sweep_expired().await.expect("sweep"), 1);
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(events.next().await.expect("an event"));
        }
        assert_eq!(
            seen,
            [
                MapEvent::Inserted {
                    key: "gone".into(),
                    old: None,
                    value: 1,
                    origin: Origin::Local
                },
                MapEvent::Inserted {
                    key: "kept".into(),
                    old: None,
                    value: 2,
                    origin: Origin::Local
                },
                MapEvent::Expired {
                    key: "gone".into(),
                    value: 1
                },
            ],
            "behind={behind}"
        );
    }
}
