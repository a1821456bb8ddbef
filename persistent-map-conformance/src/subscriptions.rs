//! "A subscription reports the map's changes in the order it applied them,
//! once acknowledged": the events, replayed, give what the store holds.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt as _;
use persistent_map_core::{MapEvent, PersistentMap};

use crate::factory::StoreFactory;
use crate::harness::{assert_same, contents, reopen};

/// How long the events may take to arrive once the writers are done.
/// Generous: a loaded 2-core machine must never reach it.
const PATIENCE: Duration = Duration::from_secs(60);

/// "Events arrive in the order the map applied the changes, and only once
/// the backend acknowledged them": 16 tasks insert, update and remove
/// overlapping keys at once while a subscription reads; replaying its
/// events in order onto an empty map gives exactly the map's content and
/// what the store holds when it is opened again. Each event's old value
/// must be the one the replay held for its key, so a reordering anywhere is
/// caught, not only one that changes the final state.
pub async fn subscription_matches_the_store<F: StoreFactory>(mut factory: F) {
    const TASKS: u64 = 16;
    const OPS: u64 = 100;
    const KEYS: u64 = 12;
    let backend = factory.fresh().await.expect("factory opens a fresh store");
    let map: PersistentMap<String, String, _> = PersistentMap::builder(backend)
        // Room for every event, so the case checks order, not lag.
        .event_capacity(usize::try_from(TASKS * OPS * 4).unwrap_or(usize::MAX))
        .build()
        .await
        .expect("a map opens on a fresh store");
    assert!(map.is_empty(), "a fresh store must be empty");
    let events = map.subscribe();
    let reader = tokio::spawn(events.collect::<Vec<_>>());

    let writers: Vec<_> = (0..TASKS)
        .map(|task| {
            let map = map.clone();
            tokio::spawn(async move {
                let mut rng = fastrand::Rng::with_seed(task);
                let key = |n: u64| format!("key {n}");
                for op in 0..OPS {
                    let value = format!("{task}/{op}");
                    let k = key(rng.u64(0..KEYS));
                    match rng.u8(0..20) {
                        0..=2 => {
                            map.remove(&k).await.expect("remove");
                        }
                        3 => {
                            let pair = [(k, value.clone()), (key(rng.u64(0..KEYS)), value)];
                            map.insert_many(pair).await.expect("insert_many");
                        }
                        4 => {
                            map.update(&k, move |old| old.map(|old| format!("{old}+{value}")))
                                .await
                                .expect("update");
                        }
                        _ => {
                            map.insert(k, value).await.expect("insert");
                        }
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer task");
    }
    let cached = contents(&map);
    // Closing ends the subscription once its events are read.
    let map = reopen(&mut factory, map).await;
    let events = tokio::time::timeout(PATIENCE, reader)
        .await
        .unwrap_or_else(|_| panic!("the subscription did not end within {PATIENCE:?} of close"))
        .expect("reader task");

    let replayed = replay(&events);
    assert_same("the events replayed vs the map", &replayed, &cached);
    assert_same(
        "the events replayed vs the store opened again",
        &replayed,
        &contents(&map),
    );
    map.close().await.expect("close");
}

/// Applies `events` in order to an empty map, checking each old value.
fn replay(events: &[MapEvent<String, String>]) -> HashMap<String, String> {
    let mut state = HashMap::new();
    for (n, event) in events.iter().enumerate() {
        match event {
            MapEvent::Inserted {
                key, old, value, ..
            } => {
                let before = state.insert(key.clone(), value.clone());
                assert_eq!(
                    &before, old,
                    "event {n} ({event:?}) says it replaced another value than the one \
                     the events before it left"
                );
            }
            MapEvent::Removed { key, old, .. } => {
                let before = state.remove(key);
                assert_eq!(
                    &before, old,
                    "event {n} ({event:?}) says it removed another value than the one \
                     the events before it left"
                );
            }
            MapEvent::Cleared { .. } => state.clear(),
            other => panic!(
                "event {n}: {other:?} from a lone map with room for every event \
                 (the case cannot replay it)"
            ),
        }
    }
    state
}

/// "A subscriber that falls behind gets a `Lagged(n)` item and continues
/// from the present; slow subscribers never slow writers": with room for 8
/// events and a subscription nobody reads, 200 writes all finish; the
/// subscription then yields one `Lagged` first, and counts every event
/// exactly once: missed or delivered. Then it goes on with the next change.
pub async fn a_slow_subscriber_lags_without_slowing_writers<F: StoreFactory>(mut factory: F) {
    const WRITES: u64 = 200;
    let backend = factory.fresh().await.expect("factory opens a fresh store");
    let map: PersistentMap<String, String, _> = PersistentMap::builder(backend)
        .event_capacity(8)
        .build()
        .await
        .expect("a map opens on a fresh store");
    let mut events = map.subscribe();
    let writes = async {
        for i in 0..WRITES {
            map.insert(format!("k{}", i % 20), format!("v{i}"))
                .await
                .expect("insert");
        }
    };
    tokio::time::timeout(PATIENCE, writes)
        .await
        .expect("writes finish while the subscription is not read");
    let first = tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("an event")
        .expect("the stream goes on");
    let MapEvent::Lagged { missed } = first else {
        panic!("a subscription that fell behind first says so, got {first:?}");
    };
    // Every event was published before the subscription read anything:
    // all of them were overwritten or skipped to reach the present.
    assert_eq!(missed, WRITES, "each lost event counted once");
    // It went on from the present: what it delivers now is the next change.
    map.insert("after".into(), "x".into())
        .await
        .expect("insert");
    let next = tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("an event")
        .expect("the stream goes on");
    match next {
        MapEvent::Inserted { key, value, .. } => {
            assert_eq!(
                (key.as_str(), value.as_str()),
                ("after", "x"),
                "{missed} missed"
            );
        }
        other => panic!("the next change, not {other:?}"),
    }
    map.close().await.expect("close");
}
