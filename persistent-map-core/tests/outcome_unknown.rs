//! A write whose outcome the backend lost (`ErrorKind::OutcomeUnknown`) is
//! read back: the caller gets `Ok` when it was applied, the error when not
//! or when the store cannot be read, and the cache follows the truth.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_map_core::{
    async_trait, BatchOp, Capabilities, ErrorKind, Location, Operation, PersistentError,
    PersistentMap, Result, StorageBackend, WriteBehind,
};
use persistent_map_memory::InMemoryBackend;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// Writes work.
    None,
    /// The write is applied, then its reply is lost.
    AfterApply,
    /// The connection breaks before the write reaches the store.
    BeforeApply,
    /// As `AfterApply`, and reading back fails too.
    Unreachable,
}

#[derive(Debug, Clone)]
struct LostReply {
    inner: InMemoryBackend,
    loss: Arc<Mutex<Loss>>,
}

impl LostReply {
    fn new() -> Self {
        Self {
            inner: InMemoryBackend::new(),
            loss: Arc::new(Mutex::new(Loss::None)),
        }
    }

    fn set(&self, loss: Loss) {
        *self.loss.lock().expect("not poisoned") = loss;
    }

    fn loss(&self) -> Loss {
        *self.loss.lock().expect("not poisoned")
    }

    async fn stored(&self) -> HashMap<String, u32> {
        StorageBackend::<String, u32>::load_all(&self.inner)
            .await
            .expect("load")
    }
}

fn lost() -> PersistentError {
    PersistentError::OutcomeUnknown {
        backend: "test",
        operation: Operation::Write,
        location: Location::new("test store"),
        source: "connection reset while waiting for the commit".into(),
    }
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for LostReply
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
        match self.loss() {
            Loss::None => self.inner.apply_batch(batch).await,
            Loss::AfterApply | Loss::Unreachable => {
                self.inner.apply_batch(batch).await?;
                Err(lost())
            }
            Loss::BeforeApply => Err(lost()),
        }
    }

    async fn load_keys(&self, keys: &[K]) -> Result<Vec<(K, Option<V>)>> {
        if self.loss() == Loss::Unreachable {
            return Err(PersistentError::Connection {
                backend: "test",
                endpoint: "127.0.0.1:1".into(),
                source: "connection refused".into(),
            });
        }
        self.inner.load_keys(keys).await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new().with_atomic_batch(true)
    }
}

#[tokio::test]
async fn an_applied_write_whose_reply_was_lost_is_ok() {
    let backend = LostReply::new();
    let map: PersistentMap<String, u32, _> =
        PersistentMap::new(backend.clone()).await.expect("open");
    backend.set(Loss::AfterApply);
    // A lone insert (committed by the caller) and a batch (by the writer task).
    assert_eq!(map.insert("a".into(), 1).await.expect("applied"), None);
    map.insert_many([("b".to_string(), 2), ("c".to_string(), 3)])
        .await
        .expect("applied");
    assert_eq!(
        map.remove(&"c".to_string()).await.expect("applied"),
        Some(3)
    );
    assert_eq!(
        (map.get("a"), map.get("b"), map.get("c")),
        (Some(1), Some(2), None)
    );
    let stored = backend.stored().await;
    assert_eq!(stored, HashMap::from([("a".into(), 1), ("b".into(), 2)]));
}

#[tokio::test]
async fn a_write_that_did_not_happen_is_an_error_and_leaves_no_trace() {
    let backend = LostReply::new();
    let map: PersistentMap<String, u32, _> =
        PersistentMap::new(backend.clone()).await.expect("open");
    map.insert("a".into(), 1).await.expect("insert");
    backend.set(Loss::BeforeApply);
    let err = map.insert("a".into(), 2).await.expect_err("not applied");
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
    let err = map
        .insert_many([("b".to_string(), 2)])
        .await
        .expect_err("not applied");
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
    assert_eq!((map.get("a"), map.get("b")), (Some(1), None));
    assert_eq!(backend.stored().await, HashMap::from([("a".into(), 1)]));
}

#[tokio::test]
async fn when_the_store_cannot_be_read_back_the_error_says_the_outcome_is_unknown() {
    let backend = LostReply::new();
    let map: PersistentMap<String, u32, _> =
        PersistentMap::new(backend.clone()).await.expect("open");
    backend.set(Loss::Unreachable);
    let err = map.insert("a".into(), 1).await.expect_err("unknown");
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown);
    assert!(err.is_temporary());
    assert_eq!(map.get("a"), None, "the cache holds only what is known");
}

#[tokio::test]
async fn write_behind_reads_back_a_lost_reply_before_it_gives_up() {
    for (loss, kept) in [(Loss::AfterApply, true), (Loss::BeforeApply, false)] {
        let backend = LostReply::new();
        let map: PersistentMap<String, u32, _> = PersistentMap::builder(backend.clone())
            .write_behind(WriteBehind::new().max_delay(Duration::from_millis(1)))
            .build()
            .await
            .expect("open");
        backend.set(loss);
        map.insert("a".into(), 1).await.expect("queued");
        let flushed = map.flush().await;
        assert_eq!(flushed.is_ok(), kept, "{loss:?}: {flushed:?}");
        assert_eq!(backend.stored().await.contains_key("a"), kept);
    }
}
