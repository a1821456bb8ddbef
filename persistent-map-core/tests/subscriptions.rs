//! Change subscriptions: order, acknowledgement in each mode, lag, and the
//! end of the stream.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::Switchable;
use futures::StreamExt as _;
use persistent_map_core::{
    Batch, MapEvent, Origin, PersistentMap, StorageBackend, Subscription, WriteBehind,
};
use persistent_map_memory::InMemoryBackend;

/// Generous: a loaded machine must never reach it; a passing run never waits it out.
const PATIENCE: Duration = Duration::from_secs(60);

type Event = MapEvent<String, u32>;

fn k(name: &str) -> String {
    name.to_owned()
}

fn inserted(key: &str, old: Option<u32>, value: u32) -> Event {
    MapEvent::Inserted {
        key: k(key),
        old,
        value,
        origin: Origin::Local,
    }
}

fn removed(key: &str, old: Option<u32>) -> Event {
    MapEvent::Removed {
        key: k(key),
        old,
        origin: Origin::Local,
    }
}

/// The next event, waiting at most [`PATIENCE`].
async fn next(events: &mut Subscription<String, u32>) -> Option<Event> {
    tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("an event (or the end) within the patience")
}

/// Every event up to the end of the stream.
async fn rest(events: Subscription<String, u32>) -> Vec<Event> {
    tokio::time::timeout(PATIENCE, events.collect())
        .await
        .expect("the stream ends within the patience")
}

/// Applies `events` in order to `state`, checking that each `old` is what
/// the replay held, so a reordering anywhere is caught.
fn replay(state: &mut HashMap<String, u32>, events: &[Event]) {
    for (n, event) in events.iter().enumerate() {
        match event {
            MapEvent::Inserted {
                key, old, value, ..
            } => {
                let before = state.insert(key.clone(), *value);
                assert_eq!(&before, old, "event {n} ({event:?}) replaced another value");
            }
            MapEvent::Removed { key, old, .. } => {
                let before = state.remove(key);
                assert_eq!(&before, old, "event {n} ({event:?}) removed another value");
            }
            MapEvent::Cleared { .. } => state.clear(),
            other => panic!("event {n}: unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn every_kind_of_write_is_published_in_order_with_the_value_it_replaced() {
    let map = PersistentMap::new(InMemoryBackend::new())
        .await
        .expect("open");
    let events = map.subscribe();

    map.insert(k("a"), 1).await.expect("insert");
    map.insert(k("a"), 2).await.expect("update");
    map.extend([(k("b"), 3), (k("c"), 4)])
        .await
        .expect("extend");
    map.update(&k("b"), |v| v.map(|v| v * 10))
        .await
        .expect("update");
    map.update(&k("zz"), |_| None)
        .await
        .expect("a no-op update");
    map.remove(&k("a")).await.expect("remove");
    let mut batch = Batch::new();
    batch.insert(k("d"), 5).remove(k("c"));
    map.apply(batch).await.expect("apply");
    map.transaction(|tx| {
        tx.insert(k("e"), 6);
        tx.remove(&k("d"));
    })
    .await
    .expect("transaction");
    map.retain(|_, v| *v != 30).await.expect("retain");
    map.get_or_insert_with(k("e"), || 99)
        .await
        .expect("present");
    map.clear().await.expect("clear");
    map.close().await.expect("close");

    assert_eq!(
        rest(events).await,
        [
            inserted("a", None, 1),
            inserted("a", Some(1), 2),
            inserted("b", None, 3),
            inserted("c", None, 4),
            inserted("b", Some(3), 30),
            removed("a", Some(2)),
            inserted("d", None, 5),
            removed("c", Some(4)),
            inserted("e", None, 6),
            removed("d", Some(5)),
            removed("b", Some(30)),
            MapEvent::Cleared {
                origin: Origin::Local
            },
        ]
    );
}

#[tokio::test]
async fn a_removal_of_a_key_the_cache_lacks_is_published_only_when_it_is_written() {
    // No exclusive lock: another instance may hold the key, so the removal
    // is written, and published with no old value.
    let shared = Switchable::new(true);
    let map = PersistentMap::new(shared.clone()).await.expect("open");
    let events = map.subscribe();
    assert_eq!(map.remove(&k("never")).await.expect("remove"), None);
    map.remove_many([&k("nor this")])
        .await
        .expect("remove_many");
    map.close().await.expect("close");
    assert_eq!(
        rest(events).await,
        [removed("never", None), removed("nor this", None)]
    );

    // An exclusive store lacks the key too: nothing changed, nothing published.
    let mut exclusive = Switchable::new(true);
    exclusive.exclusive = true;
    let map = PersistentMap::new(exclusive.clone()).await.expect("open");
    let events = map.subscribe();
    assert_eq!(map.remove(&k("never")).await.expect("remove"), None);
    map.remove_many([&k("nor this")])
        .await
        .expect("remove_many");
    map.insert(k("marker"), 1).await.expect("insert");
    map.close().await.expect("close");
    assert_eq!(rest(events).await, [inserted("marker", None, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_are_published_in_the_order_of_the_map() {
    let backend = InMemoryBackend::new();
    let map: PersistentMap<String, u32, _> = PersistentMap::builder(backend.clone())
        .event_capacity(1 << 16)
        .build()
        .await
        .expect("open");
    let events = map.subscribe();
    let reader = tokio::spawn(rest(events));
    let writers: Vec<_> = (0..16_u32)
        .map(|w| {
            let map = map.clone();
            tokio::spawn(async move {
                for i in 0..200_u32 {
                    let key = format!("k{}", (w * 7 + i) % 24);
                    if i % 5 == 4 {
                        map.remove(&key).await.expect("remove");
                    } else {
                        map.insert(key, w * 1000 + i).await.expect("insert");
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let in_map: HashMap<String, u32> = map.iter().collect();
    map.close().await.expect("close");
    let events = reader.await.expect("reader");
    assert!(
        !events.iter().any(|e| matches!(e, MapEvent::Lagged { .. })),
        "the capacity holds every event"
    );
    let mut state = HashMap::new();
    replay(&mut state, &events);
    assert_eq!(state, in_map, "the replay equals the map");
    let stored: HashMap<String, u32> = backend.load_all().await.expect("load");
    assert_eq!(state, stored, "the replay equals the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_never_blocks_writers_and_goes_on_from_the_present() {
    let map = PersistentMap::builder(InMemoryBackend::new())
        .event_capacity(4)
        .build()
        .await
        .expect("open");
    let mut stalled = map.subscribe();
    let writes = async {
        for i in 0..1000_u32 {
            map.insert(format!("k{}", i % 10), i).await.expect("insert");
        }
    };
    tokio::time::timeout(PATIENCE, writes)
        .await
        .expect("every write finishes while the subscriber reads nothing");

    assert_eq!(
        next(&mut stalled).await,
        Some(MapEvent::Lagged { missed: 1000 }),
        "one lag item counting every event it will never see"
    );
    map.insert(k("after"), 1).await.expect("insert");
    assert_eq!(
        next(&mut stalled).await,
        Some(inserted("after", None, 1)),
        "after the lag, the next change from the present"
    );
    map.close().await.expect("close");
    assert_eq!(next(&mut stalled).await, None);
}

#[tokio::test]
async fn a_lag_is_the_lagging_subscription_s_own() {
    let map = PersistentMap::builder(InMemoryBackend::new())
        .event_capacity(8)
        .build()
        .await
        .expect("open");
    let mut stalled = map.subscribe();
    let mut reading = map.subscribe();
    for i in 0..100_u32 {
        map.insert(k("key"), i).await.expect("insert");
        let old = i.checked_sub(1);
        assert_eq!(next(&mut reading).await, Some(inserted("key", old, i)));
    }
    assert_eq!(
        next(&mut stalled).await,
        Some(MapEvent::Lagged { missed: 100 })
    );
}

#[tokio::test]
async fn a_refused_write_is_not_published() {
    let backend = Switchable::new(true);
    let map = PersistentMap::new(backend.clone()).await.expect("open");
    let mut events = map.subscribe();
    backend.fail(true);
    map.insert(k("refused"), 1).await.expect_err("refused");
    map.clear().await.expect_err("refused");
    backend.fail(false);
    map.insert(k("kept"), 2).await.expect("insert");
    assert_eq!(next(&mut events).await, Some(inserted("kept", None, 2)));
}

#[tokio::test]
async fn a_batch_refused_half_way_publishes_exactly_the_stored_prefix() {
    // Without atomic batches, the changes before the refused key stay.
    let backend = Switchable::new(false);
    let map = PersistentMap::new(backend.clone()).await.expect("open");
    let events = map.subscribe();
    backend.refuse(&k("b"));
    map.extend([(k("a"), 1), (k("b"), 2), (k("c"), 3)])
        .await
        .expect_err("b is refused");
    map.insert(k("marker"), 0).await.expect("insert");
    map.close().await.expect("close");
    let events = rest(events).await;
    assert_eq!(
        events,
        [inserted("a", None, 1), inserted("marker", None, 0)]
    );
    let stored: HashMap<String, u32> = backend.stored().await;
    let mut state = HashMap::new();
    replay(&mut state, &events);
    assert_eq!(state, stored, "the events describe the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_publishes_what_it_accepts_and_never_retracts_it() {
    let backend = Switchable::new(true);
    let map = PersistentMap::builder(backend.clone())
        .write_behind(WriteBehind::new())
        .build()
        .await
        .expect("open");
    let mut events = map.subscribe();
    backend.gate(true);
    map.insert(k("a"), 1).await.expect("queued");
    map.update(&k("a"), |v| v.map(|v| v + 1))
        .await
        .expect("queued");
    map.extend([(k("b"), 3), (k("c"), 4)])
        .await
        .expect("queued");
    map.remove(&k("b")).await.expect("queued");
    map.retain(|key, _| key != "c").await.expect("queued");
    map.transaction(|tx| {
        tx.insert(k("d"), 5);
    })
    .await
    .expect("queued");
    map.clear().await.expect("queued");
    // Every event is published before the backend wrote anything.
    for expected in [
        inserted("a", None, 1),
        inserted("a", Some(1), 2),
        inserted("b", None, 3),
        inserted("c", None, 4),
        removed("b", Some(3)),
        removed("c", Some(4)),
        inserted("d", None, 5),
        MapEvent::Cleared {
            origin: Origin::Local,
        },
    ] {
        assert_eq!(next(&mut events).await, Some(expected));
    }
    backend.gate(false);
    map.flush().await.expect("flush");

    // A change accepted, then refused in the background: its event stands.
    backend.fail(true);
    map.insert(k("lost"), 9).await.expect("accepted");
    assert_eq!(next(&mut events).await, Some(inserted("lost", None, 9)));
    map.flush().await.expect_err("the background write failed");
    backend.fail(false);
    map.reload().await.expect("reload");
    assert_eq!(next(&mut events).await, Some(MapEvent::Resynced));
    assert!(
        !map.contains_key("lost"),
        "reload dropped the unstored change"
    );
    map.close().await.expect("close");
    assert_eq!(next(&mut events).await, None);
}

#[tokio::test]
async fn reload_publishes_one_resynced() {
    let backend = InMemoryBackend::new();
    let map = PersistentMap::new(backend.clone()).await.expect("open");
    let events = map.subscribe();
    // Written behind the map's back: the reload brings them in unitemized.
    backend.save(k("x"), 1_u32).await.expect("save");
    backend.save(k("y"), 2_u32).await.expect("save");
    map.reload().await.expect("reload");
    map.insert(k("z"), 3).await.expect("insert");
    map.close().await.expect("close");
    assert_eq!(
        rest(events).await,
        [MapEvent::Resynced, inserted("z", None, 3)]
    );
}

#[tokio::test]
async fn the_stream_ends_after_its_buffered_events_when_the_map_closes() {
    let map = PersistentMap::new(InMemoryBackend::new())
        .await
        .expect("open");
    let mut events = map.subscribe();
    map.insert(k("a"), 1).await.expect("insert");
    map.close().await.expect("close");
    assert_eq!(next(&mut events).await, Some(inserted("a", None, 1)));
    assert_eq!(next(&mut events).await, None);
    let mut late = map.subscribe();
    assert_eq!(
        next(&mut late).await,
        None,
        "a closed map has no more events"
    );
}

#[tokio::test]
async fn the_stream_ends_when_the_last_handle_is_dropped() {
    let map = PersistentMap::new(InMemoryBackend::new())
        .await
        .expect("open");
    let events = map.subscribe();
    let other = map.clone();
    map.insert(k("a"), 1).await.expect("insert");
    drop(map);
    other.insert(k("b"), 2).await.expect("a clone still works");
    drop(other);
    assert_eq!(
        rest(events).await,
        [inserted("a", None, 1), inserted("b", None, 2)]
    );
}

#[tokio::test]
async fn a_subscription_sees_only_what_follows_it() {
    let map = PersistentMap::new(InMemoryBackend::new())
        .await
        .expect("open");
    map.insert(k("before"), 1).await.expect("insert");
    let first = map.subscribe();
    drop(first);
    let mut events = map.subscribe();
    map.insert(k("after"), 2).await.expect("insert");
    assert_eq!(next(&mut events).await, Some(inserted("after", None, 2)));
}

#[test]
fn subscriptions_and_events_are_ordinary_values() {
    fn usable<T: Send + Sync + Unpin + std::fmt::Debug + 'static>() {}
    usable::<Subscription<String, u32>>();
    usable::<MapEvent<String, u32>>();
    usable::<Origin>();
}
