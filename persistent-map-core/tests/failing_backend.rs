//! A backend that fails on demand: the caller gets the error, the cache
//! keeps no phantom, and nothing acknowledged is lost.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use persistent_map_core::{
    async_trait, BatchOp, Capabilities, PersistentError, PersistentMap, Result, StorageBackend,
};
use persistent_map_memory::InMemoryBackend;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Wraps the memory backend; fails every write while `failing` is set, or
/// only writes of the key `"poison"`.
#[derive(Debug, Clone, Default)]
struct Flaky {
    inner: InMemoryBackend,
    failing: Arc<AtomicBool>,
    batches: Arc<AtomicUsize>,
    flush_fails: Arc<AtomicBool>,
}

fn refused() -> PersistentError {
    PersistentError::Other("injected write failure".into())
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for Flaky
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        self.inner.load_all().await
    }

    async fn save(&self, key: K, value: V) -> Result<()> {
        self.apply_batch(&[BatchOp::Put { key, value }]).await
    }

    async fn delete(&self, key: &K) -> Result<()> {
        self.apply_batch(&[BatchOp::<K, V>::Delete { key: key.clone() }])
            .await
    }

    async fn apply_batch(&self, batch: &[BatchOp<K, V>]) -> Result<()> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let poisoned = batch
            .iter()
            .any(|op| serde_json::to_string(op.key()).ok().as_deref() == Some("\"poison\""));
        if self.failing.load(Ordering::Relaxed) || poisoned {
            return Err(refused());
        }
        // Widen the window in which other writers queue up behind this batch.
        tokio::task::yield_now().await;
        self.inner.apply_batch(batch).await
    }

    async fn flush(&self) -> Result<()> {
        if self.flush_fails.load(Ordering::Relaxed) {
            return Err(PersistentError::Other("injected fsync failure".into()));
        }
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new().with_atomic_batch(true)
    }
}

#[tokio::test]
async fn failed_write_returns_error_and_leaves_no_phantom() {
    let backend = Flaky::default();
    let map = PersistentMap::new(backend.clone()).await.expect("open");
    map.insert("a".to_string(), 1_u32).await.expect("insert");

    backend.failing.store(true, Ordering::Relaxed);
    let err = map.insert("b".to_string(), 2).await.expect_err("must fail");
    assert!(err.to_string().contains("injected"), "{err}");
    let err = map
        .insert("a".to_string(), 99)
        .await
        .expect_err("must fail");
    assert!(matches!(err, PersistentError::Other(_)), "{err:?}");
    let err = map.remove(&"a".to_string()).await.expect_err("must fail");
    assert!(matches!(err, PersistentError::Other(_)), "{err:?}");
    assert!(map.clear().await.is_err());

    assert_eq!(
        map.get("a"),
        Some(1),
        "a failed overwrite or remove changes nothing"
    );
    assert_eq!(map.get("b"), None, "a failed insert leaves no phantom");
    assert_eq!(map.len(), 1);

    backend.failing.store(false, Ordering::Relaxed);
    map.insert("c".to_string(), 3)
        .await
        .expect("writes work again");
    map.close().await.expect("close");

    let reopened: PersistentMap<String, u32, _> =
        PersistentMap::new(backend).await.expect("reopen");
    let stored: HashMap<String, u32> = reopened.iter().collect();
    let expected: HashMap<String, u32> = [("a".to_string(), 1), ("c".to_string(), 3)].into();
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_bad_change_in_a_group_commit_fails_only_its_caller() {
    let backend = Flaky::default();
    let map = PersistentMap::new(backend.clone()).await.expect("open");
    let mut tasks = Vec::new();
    for i in 0..64_u32 {
        let map = map.clone();
        tasks.push(tokio::spawn(async move {
            let key = if i == 31 {
                "poison".to_string()
            } else {
                format!("k{i}")
            };
            (key.clone(), map.insert(key, i).await)
        }));
    }
    let mut acknowledged = HashMap::new();
    for task in tasks {
        let (key, result) = task.await.expect("task");
        match result {
            Ok(_) => {
                acknowledged.insert(key, ());
            }
            Err(err) => assert_eq!(key, "poison", "only the bad change may fail: {err}"),
        }
    }
    assert_eq!(acknowledged.len(), 63);
    assert!(!map.contains_key("poison"));
    map.close().await.expect("close");
    let reopened: PersistentMap<String, u32, _> =
        PersistentMap::new(backend).await.expect("reopen");
    for key in acknowledged.keys() {
        assert!(reopened.contains_key(key), "acknowledged {key} was lost");
    }
    assert_eq!(reopened.len(), 63);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_share_backend_batches() {
    let backend = Flaky::default();
    let map = PersistentMap::new(backend.clone()).await.expect("open");
    let mut tasks = Vec::new();
    for t in 0..32_u32 {
        let map = map.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50_u32 {
                map.insert(format!("k{t}-{i}"), i).await.expect("insert");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let batches = backend.batches.load(Ordering::Relaxed);
    println!("group commit: 1600 inserts from 32 tasks took {batches} backend batches");
    assert_eq!(map.len(), 1600);
    assert!(
        batches < 1600 / 2,
        "concurrent writers should share batches, got {batches} for 1600 inserts"
    );
}

#[tokio::test]
async fn failed_flush_is_reported_to_every_waiting_caller() {
    let backend = Flaky::default();
    let map = Arc::new(
        PersistentMap::<String, u32, _>::new(backend.clone())
            .await
            .expect("open"),
    );
    map.insert("a".to_string(), 1).await.expect("insert");
    backend.flush_fails.store(true, Ordering::Relaxed);
    let (a, b) = tokio::join!(map.flush(), map.flush());
    assert!(a.is_err() && b.is_err(), "{a:?} {b:?}");
    assert!(b.expect_err("err").to_string().contains("fsync"));
    backend.flush_fails.store(false, Ordering::Relaxed);
    map.flush().await.expect("flush works again");
}

#[tokio::test]
async fn closed_map_refuses_writes_but_still_reads() {
    let backend = Flaky::default();
    let map = PersistentMap::new(backend).await.expect("open");
    map.insert(1_u8, "one".to_string()).await.expect("insert");
    map.close().await.expect("close");
    assert!(matches!(
        map.insert(2, "two".to_string()).await,
        Err(PersistentError::Closed)
    ));
    assert!(matches!(map.flush().await, Err(PersistentError::Closed)));
    map.close().await.expect("closing twice is fine");
    assert_eq!(map.get(&1), Some("one".to_string()));
}
