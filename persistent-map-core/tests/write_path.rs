//! Regression tests of the write path: the ways the 0.2 map broke its
//! contract outside the default path (cancelled reloads, replay holes,
//! extreme options, a stopped writer, a panicking backend, unbounded queues,
//! a double load at open, holding the store after drop).

mod common;

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Switchable;
use futures::channel::mpsc;
use futures::StreamExt;
use persistent_map_core::codec::key_from_text;
use persistent_map_core::{
    async_trait, BatchOp, PersistentError, PersistentMap, RemoteChange, RemoteChanges, Result,
    StorageBackend, WriteBehind,
};
use persistent_map_memory::InMemoryBackend;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Waits for `check` with a generous deadline (the machine may be loaded).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn behind() -> WriteBehind {
    WriteBehind::new().max_delay(Duration::from_millis(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_write_behind_reload_still_holds_writes_back_until_done() {
    let backend = Switchable::new(true);
    let map: PersistentMap<String, u32, _> = PersistentMap::builder(backend.clone())
        .write_behind(behind())
        .build()
        .await
        .expect("open");
    map.insert("stored".into(), 1).await.expect("insert");
    map.flush().await.expect("flush");

    backend.gate_loads(true);
    let loads = backend.loads.load(Ordering::SeqCst);
    // Start a reload and give up on it while the writer is inside the load.
    {
        let reload = map.reload();
        tokio::pin!(reload);
        tokio::select! {
            biased;
            _ = &mut reload => panic!("the load is gated"),
            () = eventually("the reload to start loading", || {
                backend.loads.load(Ordering::SeqCst) > loads
            }) => {}
        }
    }
    // A write made now must not be wiped out by the reload under way.
    let mut writer = {
        let map = map.clone();
        tokio::spawn(async move { map.insert("during".into(), 2).await })
    };
    // Held back while the reload runs (this cannot pass by chance: the load
    // stays gated until below).
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut writer)
            .await
            .is_err(),
        "a write made during a reload must wait for it"
    );
    backend.gate_loads(false);
    writer.await.expect("task").expect("insert");
    map.flush().await.expect("flush");
    assert_eq!(map.get("during"), Some(2), "the write is in the cache");
    let stored = backend.stored::<String, u32>().await;
    assert_eq!(stored.get("during"), Some(&2), "the write is in the store");
    let cache: HashMap<String, u32> = map.iter().collect();
    assert_eq!(cache, stored, "cache and store agree");
}

#[tokio::test]
async fn a_failed_unit_on_a_non_atomic_backend_keeps_nothing_after_the_failure() {
    let backend = Switchable::new(false);
    let map: PersistentMap<String, u32, _> =
        PersistentMap::new(backend.clone()).await.expect("open");
    backend.refuse(&"bad".to_string());
    map.insert_many([
        ("a".to_string(), 1),
        ("bad".to_string(), 2),
        ("c".to_string(), 3),
    ])
    .await
    .expect_err("the bad change fails the call");
    let stored = backend.stored::<String, u32>().await;
    assert!(
        !stored.contains_key("c"),
        "a change after the refused one was stored: a hole ({stored:?})"
    );
    assert_eq!(stored.get("a"), Some(&1), "the prefix before it is stored");
    let cache: HashMap<String, u32> = map.iter().collect();
    assert_eq!(
        cache, stored,
        "the cache holds exactly what the store holds"
    );
}

#[tokio::test]
async fn extreme_write_behind_options_work() {
    let backend = Switchable::new(true);
    let map: PersistentMap<String, u32, _> = PersistentMap::builder(backend.clone())
        .max_pending(usize::MAX)
        .write_behind(
            WriteBehind::new()
                .max_delay(Duration::MAX)
                .max_pending(usize::MAX),
        )
        .build()
        .await
        .expect("open");
    map.insert("k".into(), 1).await.expect("insert");
    map.flush()
        .await
        .expect("a flush does not wait for the endless delay");
    assert_eq!(backend.stored::<String, u32>().await.get("k"), Some(&1));
    map.close().await.expect("close");
}

#[test]
fn a_writer_whose_runtime_shut_down_reports_why() {
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let map: PersistentMap<String, u32, _> = first
        .block_on(PersistentMap::new(InMemoryBackend::new()))
        .expect("open");
    first
        .block_on(map.insert("k".into(), 1))
        .expect("insert while the runtime runs");
    drop(first);

    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let err = second
        .block_on(map.insert("k".into(), 2))
        .expect_err("the writer is gone");
    match &err {
        PersistentError::WriterStopped { reason } => {
            assert!(reason.contains("runtime"), "{reason}");
        }
        other => panic!("expected WriterStopped, got {other:?}"),
    }
    assert!(map.is_closed());
    assert_eq!(map.get("k"), Some(1), "reads keep working");
}

/// A backend whose writes panic while `panicking` is set.
#[derive(Debug, Clone, Default)]
struct Panicky {
    inner: InMemoryBackend,
    panicking: Arc<AtomicBool>,
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for Panicky
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        self.inner.load_all().await
    }
    async fn save(&self, key: K, value: V) -> Result<()> {
        assert!(!self.panicking.load(Ordering::SeqCst), "backend bug");
        self.inner.save(key, value).await
    }
    async fn delete(&self, key: &K) -> Result<()> {
        StorageBackend::<K, V>::delete(&self.inner, key).await
    }
}

#[tokio::test]
async fn a_panicking_backend_fails_the_write_and_the_map_carries_on() {
    for mode in [None, Some(behind())] {
        let backend = Panicky::default();
        let mut builder = PersistentMap::builder(backend.clone());
        if let Some(mode) = mode {
            builder = builder.write_behind(mode);
        }
        let map: PersistentMap<String, u32, _> = builder.build().await.expect("open");
        backend.panicking.store(true, Ordering::SeqCst);
        let failed = match mode {
            None => map.insert("k".into(), 1).await.map(drop),
            Some(_) => {
                map.insert("k".into(), 1).await.expect("queued");
                map.flush().await
            }
        };
        let err = failed.expect_err("the backend panicked");
        assert!(err.to_string().contains("backend bug"), "{err}");
        assert!(!map.is_closed(), "the writer survived");
        backend.panicking.store(false, Ordering::SeqCst);
        if mode.is_some() {
            map.reload()
                .await
                .expect("a reload recovers a poisoned map");
        }
        map.insert("k".into(), 2).await.expect("writes work again");
        map.flush().await.expect("flush");
        assert_eq!(
            StorageBackend::<String, u32>::load_all(&backend)
                .await
                .expect("load")
                .get("k"),
            Some(&2)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_through_queue_is_bounded_even_for_cancelled_calls() {
    let backend = Switchable::new(true);
    let map: PersistentMap<String, u32, _> = PersistentMap::builder(backend.clone())
        .max_pending(4)
        .build()
        .await
        .expect("open");
    backend.gate(true);
    // Each call gives up quickly: either after queueing its change (it is
    // then still applied) or while waiting for room (then it never is).
    for i in 0..100 {
        let _ =
            tokio::time::timeout(Duration::from_millis(5), map.insert(format!("k{i}"), i)).await;
    }
    backend.gate(false);
    map.flush().await.expect("flush");
    let stored = backend.stored::<String, u32>().await.len();
    println!("write-through queue bound 4: {stored} of 100 cancelled inserts were queued");
    assert!(
        stored <= 8,
        "with a bound of 4, at most a few cancelled calls can be queued, found {stored}"
    );
    assert_eq!(map.len(), stored, "the cache holds what was stored");
}

/// A shared store whose change feed is a channel the test announces key
/// texts on, counting full loads (`load_into`; a refresh of a few keys goes
/// through `load_keys`).
struct Watched {
    store: InMemoryBackend,
    /// The announcing end, once the map subscribed.
    announce: Mutex<Option<mpsc::UnboundedSender<Vec<String>>>>,
    loads: AtomicUsize,
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for Watched
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        self.store.load_all().await
    }
    async fn load_into(&self, sink: &mut (dyn FnMut(K, V) + Send)) -> Result<()> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.store.load_into(sink).await
    }
    async fn save(&self, key: K, value: V) -> Result<()> {
        self.store.save(key, value).await
    }
    async fn delete(&self, key: &K) -> Result<()> {
        StorageBackend::<K, V>::delete(&self.store, key).await
    }
    async fn watch(&self) -> Result<Option<RemoteChanges<K>>> {
        let (tx, rx) = mpsc::unbounded::<Vec<String>>();
        *self.announce.lock().expect("not poisoned") = Some(tx);
        Ok(Some(Box::pin(rx.map(|texts| {
            texts
                .iter()
                .map(|text| key_from_text(text))
                .collect::<std::result::Result<Vec<K>, _>>()
                .map_or(RemoteChange::Resync, RemoteChange::Changed)
        }))))
    }
}

#[tokio::test]
async fn a_map_on_a_watched_store_loads_it_once_when_it_opens() {
    let store = InMemoryBackend::new();
    store.save("a".to_string(), 1_u32).await.expect("seed");
    let backend = Watched {
        store: store.clone(),
        announce: Mutex::new(None),
        loads: AtomicUsize::new(0),
    };
    let map: PersistentMap<String, u32, _> = PersistentMap::new(backend).await.expect("open");
    // Another instance writes and announces it; once the map shows it, every
    // announcement made before it (such as a resync at open) was handled.
    store
        .save("b".to_string(), 2_u32)
        .await
        .expect("remote write");
    let announce = map
        .backend()
        .announce
        .lock()
        .expect("not poisoned")
        .clone()
        .expect("the map subscribed");
    announce
        .unbounded_send(vec!["b".into()])
        .expect("the map follows the feed");
    eventually("the announced write", || map.get("b") == Some(2)).await;
    assert_eq!(
        map.backend().loads.load(Ordering::SeqCst),
        1,
        "opening a map on a watched store must load it once"
    );
}

/// A backend that records when it is dropped.
#[derive(Debug, Clone, Default)]
struct DropFlag {
    inner: InMemoryBackend,
    dropped: Arc<AtomicBool>,
    alive: Arc<()>,
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        // The last clone going away is the backend being released.
        if Arc::strong_count(&self.alive) == 1 {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for DropFlag
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        self.inner.load_all().await
    }
    async fn save(&self, key: K, value: V) -> Result<()> {
        self.inner.save(key, value).await
    }
    async fn delete(&self, key: &K) -> Result<()> {
        StorageBackend::<K, V>::delete(&self.inner, key).await
    }
    async fn apply_batch(&self, batch: &[BatchOp<K, V>]) -> Result<()> {
        self.inner.apply_batch(batch).await
    }
}

#[tokio::test]
async fn dropping_the_last_handle_of_an_idle_map_releases_the_backend_at_once() {
    let dropped = Arc::new(AtomicBool::new(false));
    let backend = DropFlag {
        inner: InMemoryBackend::new(),
        dropped: Arc::clone(&dropped),
        alive: Arc::new(()),
    };
    let map: PersistentMap<String, u32, _> = PersistentMap::new(backend).await.expect("open");
    map.insert("k".into(), 1).await.expect("insert");
    let clone = map.clone();
    drop(map);
    assert!(
        !dropped.load(Ordering::SeqCst),
        "a clone still holds the map"
    );
    drop(clone);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the backend must be released when the last handle is dropped, not when the writer next runs"
    );
}

/// Not a regression test (0.2 passed it): it guards the release-on-drop
/// design, which must not let queued changes go with the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_changes_queued_when_the_last_handle_drops_are_still_written() {
    let backend = Switchable::new(true);
    let map: PersistentMap<String, u32, _> = PersistentMap::builder(backend.clone())
        .write_behind(WriteBehind::new().max_delay(Duration::from_secs(3600)))
        .build()
        .await
        .expect("open");
    for i in 0..100 {
        map.insert(format!("k{i}"), i).await.expect("insert");
    }
    drop(map);
    let mut stored = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stored < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {stored} of 100 queued changes were written after the drop"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        stored = backend.stored::<String, u32>().await.len();
    }
}
