//! A memory backend wrapper whose writes can be made to fail or to wait.
#![allow(dead_code)] // each test binary uses a different part of it

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use persistent_map_core::{
    async_trait, BatchOp, Capabilities, PersistentError, Result, StorageBackend,
};
use persistent_map_memory::InMemoryBackend;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;

/// The memory backend, plus switches: fail every write, hold writes until
/// released, count batches and changes, declare atomic batches or not.
#[derive(Debug, Clone)]
pub struct Switchable {
    pub inner: InMemoryBackend,
    pub failing: Arc<AtomicBool>,
    pub gate: Arc<Semaphore>,
    pub gated: Arc<AtomicBool>,
    pub batches: Arc<AtomicUsize>,
    pub changes: Arc<AtomicUsize>,
    pub flushes: Arc<AtomicUsize>,
    pub loads: Arc<AtomicUsize>,
    /// While gated, every load waits for a `release_loads`.
    pub load_gate: Arc<Semaphore>,
    pub loads_gated: Arc<AtomicBool>,
    /// A change to this key (as JSON) is refused.
    pub refused_key: Arc<Mutex<Option<String>>>,
    pub atomic: bool,
    /// Declares an exclusive lock: the map may skip removals of keys it lacks.
    pub exclusive: bool,
}

impl Switchable {
    pub fn new(atomic: bool) -> Self {
        Self {
            inner: InMemoryBackend::new(),
            failing: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            gated: Arc::default(),
            batches: Arc::default(),
            changes: Arc::default(),
            flushes: Arc::default(),
            loads: Arc::default(),
            load_gate: Arc::new(Semaphore::new(0)),
            loads_gated: Arc::default(),
            refused_key: Arc::default(),
            atomic,
            exclusive: false,
        }
    }

    /// While on, loads wait until it is turned off.
    pub fn gate_loads(&self, on: bool) {
        self.loads_gated.store(on, Ordering::SeqCst);
        if !on {
            self.load_gate.add_permits(1_000_000);
        }
    }

    /// Refuse every change to `key` (a non-atomic backend applies the
    /// changes of a batch before it).
    pub fn refuse<K: Serialize>(&self, key: &K) {
        *self.refused_key.lock().expect("not poisoned") =
            Some(serde_json::to_string(key).expect("key encodes"));
    }

    fn refused<K: Serialize>(&self, key: &K) -> bool {
        let refused = self.refused_key.lock().expect("not poisoned");
        refused
            .as_deref()
            .is_some_and(|text| serde_json::to_string(key).is_ok_and(|k| k == text))
    }

    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// While gated, every batch waits for a `release`.
    pub fn gate(&self, on: bool) {
        self.gated.store(on, Ordering::SeqCst);
        if !on {
            self.gate.add_permits(1_000_000);
        }
    }

    pub async fn stored<K, V>(&self) -> HashMap<K, V>
    where
        K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        StorageBackend::<K, V>::load_all(&self.inner)
            .await
            .expect("load")
    }
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for Switchable
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        if self.loads_gated.load(Ordering::SeqCst) {
            let _ = self.load_gate.acquire().await.expect("gate").forget();
        }
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
        if self.gated.load(Ordering::SeqCst) {
            let _ = self.gate.acquire().await.expect("gate").forget();
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(PersistentError::Other("injected write failure".into()));
        }
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.changes.fetch_add(batch.len(), Ordering::SeqCst);
        if self.atomic {
            if batch.iter().any(|op| self.refused(op.key())) {
                return Err(PersistentError::Other("refused key".into()));
            }
            self.inner.apply_batch(batch).await
        } else {
            for op in batch {
                if self.refused(op.key()) {
                    return Err(PersistentError::Other("refused key".into()));
                }
                match op {
                    BatchOp::Put { key, value } => {
                        self.inner.save(key.clone(), value.clone()).await?
                    }
                    BatchOp::Delete { key } => {
                        StorageBackend::<K, V>::delete(&self.inner, key).await?
                    }
                    _ => return Err(PersistentError::unknown_change("switchable")),
                }
            }
            Ok(())
        }
    }

    async fn clear(&self) -> Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(PersistentError::Other("injected write failure".into()));
        }
        StorageBackend::<K, V>::clear(&self.inner).await
    }

    async fn flush(&self) -> Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err(PersistentError::Other("injected fsync failure".into()));
        }
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_atomic_batch(self.atomic)
            .with_exclusive_lock(self.exclusive)
    }
}
