//! Two maps on one shared store follow each other's writes through the
//! backend's watch feed, in order with their own writes.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use persistent_map_core::{
    async_trait, BatchOp, PersistentMap, RemoteChange, RemoteChanges, Result, StorageBackend,
};
use persistent_map_memory::InMemoryBackend;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

/// A "server": one store, and a bus on which every instance announces the
/// keys (as JSON) it changed.
#[derive(Clone)]
struct Server {
    store: InMemoryBackend,
    bus: broadcast::Sender<(u64, Vec<String>)>,
    ids: Arc<AtomicU64>,
}

impl Server {
    fn new() -> Self {
        Self {
            store: InMemoryBackend::new(),
            bus: broadcast::channel(1024).0,
            ids: Arc::default(),
        }
    }

    fn connect(&self) -> Instance {
        Instance {
            server: self.clone(),
            id: self.ids.fetch_add(1, Ordering::SeqCst),
            failing_reads: Arc::default(),
        }
    }
}

struct Instance {
    server: Server,
    id: u64,
    /// While positive, reads fail (and count down): a server that is away.
    failing_reads: Arc<AtomicU64>,
}

impl Instance {
    fn read_allowed(&self) -> Result<()> {
        let left = self.failing_reads.load(Ordering::SeqCst);
        if left > 0 {
            self.failing_reads.store(left - 1, Ordering::SeqCst);
            return Err(persistent_map_core::PersistentError::Other(
                "server away".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for Instance
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        self.read_allowed()?;
        self.server.store.load_all().await
    }

    async fn save(&self, key: K, value: V) -> Result<()> {
        self.apply_batch(&[BatchOp::Put { key, value }]).await
    }

    async fn delete(&self, key: &K) -> Result<()> {
        self.apply_batch(&[BatchOp::<K, V>::Delete { key: key.clone() }])
            .await
    }

    async fn apply_batch(&self, batch: &[BatchOp<K, V>]) -> Result<()> {
        self.server.store.apply_batch(batch).await?;
        let keys = batch
            .iter()
            .map(|op| serde_json::to_string(op.key()))
            .collect::<std::result::Result<_, _>>()?;
        let _ = self.server.bus.send((self.id, keys));
        Ok(())
    }

    async fn watch(&self) -> Result<Option<RemoteChanges<K>>> {
        let mut bus = self.server.bus.subscribe();
        let me = self.id;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let change = match bus.recv().await {
                    Ok((from, _)) if from == me => continue,
                    Ok((_, keys)) => RemoteChange::Changed(
                        keys.iter()
                            .filter_map(|k| serde_json::from_str(k).ok())
                            .collect(),
                    ),
                    Err(broadcast::error::RecvError::Lagged(_)) => RemoteChange::Resync,
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if tx.send(change).await.is_err() {
                    break;
                }
            }
        });
        Ok(Some(Box::pin(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|change| (change, rx)) },
        ))))
    }
}

/// How long a condition may take on a loaded machine (2 cores shared with
/// other builds): generous, since a passing run never waits for it.
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
async fn each_map_sees_the_other_ones_writes() {
    let server = Server::new();
    let a = PersistentMap::<String, u32, _>::new(server.connect())
        .await
        .expect("a");
    let b = PersistentMap::<String, u32, _>::new(server.connect())
        .await
        .expect("b");

    a.insert("x".to_string(), 1).await.expect("insert");
    eventually("b sees x = 1", || b.get("x") == Some(1)).await;
    // B counts the change it followed; A counts none of its own.
    assert_eq!(b.stats().remote_changes_applied, 1);
    assert_eq!(a.stats().remote_changes_applied, 0);
    b.insert("x".to_string(), 2).await.expect("insert");
    eventually("a sees x = 2", || a.get("x") == Some(2)).await;
    a.remove(&"x".to_string()).await.expect("remove");
    eventually("b sees x removed", || !b.contains_key("x")).await;

    // Interleaved writes converge on the store's final state.
    for i in 0..50 {
        a.insert(format!("k{}", i % 5), i).await.expect("a");
        b.insert(format!("k{}", (i + 2) % 5), i + 1000)
            .await
            .expect("b");
    }
    let stored: HashMap<String, u32> = StorageBackend::<String, u32>::load_all(&server.store)
        .await
        .expect("load");
    eventually("both caches equal the store", || {
        a.iter().collect::<HashMap<_, _>>() == stored
            && b.iter().collect::<HashMap<_, _>>() == stored
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_is_retried_until_the_cache_catches_up() {
    let server = Server::new();
    let a = PersistentMap::<String, u32, _>::new(server.connect())
        .await
        .expect("a");
    let b_backend = server.connect();
    let b_reads = Arc::clone(&b_backend.failing_reads);
    let b = PersistentMap::<String, u32, _>::new(b_backend)
        .await
        .expect("b");

    // B's next three reads fail, as if its server connection were down.
    b_reads.store(3, Ordering::SeqCst);
    a.insert("x".to_string(), 7).await.expect("insert");
    eventually("b to catch up once its reads work again", || {
        b.get("x") == Some(7)
    })
    .await;
    assert_eq!(b_reads.load(Ordering::SeqCst), 0);
    // Reads that failed were made up for by a resync of the whole cache.
    let stats = b.stats();
    assert!(stats.resyncs >= 1, "{stats:?}");
    assert_eq!(stats.write_errors, 0, "a failed read is not a write error");
}
