//! [`InMemoryBackend`]: a backend that keeps encoded entries in memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use persistent_map_core::{
    async_trait, render_key, BatchOp, Capabilities, Durability, EntryPart, Location,
    PersistentError, Result, StorageBackend,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

const NAME: &str = "memory";

/// A backend that keeps the data it is given in memory, for tests and
/// ephemeral use.
///
/// Entries are stored encoded (as JSON text), exactly as a durable backend
/// would store them, so a type that cannot round-trip fails here too. Clones
/// share one store: a map opened on a clone after another map on the same
/// store was dropped sees that map's data. Entries keep their expiry
/// deadlines. Nothing survives the process.
///
/// ```
/// use persistent_map_core::PersistentMap;
/// use persistent_map_memory::InMemoryBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> persistent_map_core::Result<()> {
/// let store = InMemoryBackend::new();
/// let map = PersistentMap::new(store.clone()).await?;
/// map.insert(7_u8, "seven".to_string()).await?;
/// map.close().await?;
///
/// let reopened: PersistentMap<u8, String, _> = PersistentMap::new(store).await?;
/// assert_eq!(reopened.get(&7), Some("seven".to_string()));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryBackend {
    entries: Arc<Mutex<Store>>,
}

/// Encoded entries, and the deadlines of those that have one: kept apart,
/// so that a store without deadlines costs what it did before expiry.
#[derive(Debug, Clone, Default)]
struct Store {
    values: HashMap<String, String>,
    deadlines: HashMap<String, SystemTime>,
}

impl Store {
    fn put(&mut self, key: String, value: String, deadline: Option<SystemTime>) {
        match deadline {
            Some(deadline) => {
                self.deadlines.insert(key.clone(), deadline);
            }
            None if self.deadlines.is_empty() => {}
            None => {
                self.deadlines.remove(&key);
            }
        }
        self.values.insert(key, value);
    }

    fn remove(&mut self, key: &str) {
        if !self.deadlines.is_empty() {
            self.deadlines.remove(key);
        }
        self.values.remove(key);
    }

    fn get(&self, key: &str) -> Option<(String, Option<SystemTime>)> {
        let value = self.values.get(key)?.clone();
        Some((value, self.deadlines.get(key).copied()))
    }
}

impl InMemoryBackend {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of stored entries, whatever their types.
    #[must_use]
    pub fn stored_len(&self) -> usize {
        self.lock().values.len()
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave a half-written entry
        // (each write is one insert or remove), so the data is still valid.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn encode_key<K: Serialize>(key: &K) -> Result<String> {
    serde_json::to_string(key)
        .map_err(|e| PersistentError::encode(EntryPart::Key, Location::new(NAME), e))
}

fn encode_value<K: Serialize, V: Serialize>(key: &K, value: &V) -> Result<String> {
    serde_json::to_string(value).map_err(|e| {
        PersistentError::encode(
            EntryPart::Value,
            Location::new(NAME).with_key(render_key(key)),
            e,
        )
    })
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for InMemoryBackend
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        let mut out = HashMap::new();
        self.load_into(&mut |k, v| {
            out.insert(k, v);
        })
        .await?;
        Ok(out)
    }

    async fn load_into(&self, sink: &mut (dyn FnMut(K, V) + Send)) -> Result<()> {
        self.load_with_expiry_into(&mut |k, v, _| sink(k, v)).await
    }

    async fn load_with_expiry_into(
        &self,
        sink: &mut (dyn FnMut(K, V, Option<SystemTime>) + Send),
    ) -> Result<()> {
        let Store { values, deadlines } = self.lock().clone();
        for (k, v) in values {
            let deadline = deadlines.get(&k).copied();
            let (key, value) = decode::<K, V>(&k, &v)?;
            sink(key, value, deadline);
        }
        Ok(())
    }

    async fn load_keys_with_expiry(
        &self,
        keys: &[K],
    ) -> Result<Vec<(K, Option<(V, Option<SystemTime>)>)>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let k = encode_key(key)?;
            let stored = self.lock().get(&k);
            let found = match stored {
                Some((v, deadline)) => Some((decode::<K, V>(&k, &v)?.1, deadline)),
                None => None,
            };
            out.push((key.clone(), found));
        }
        Ok(out)
    }

    async fn load_keys(&self, keys: &[K]) -> Result<Vec<(K, Option<V>)>> {
        let found = StorageBackend::<K, V>::load_keys_with_expiry(self, keys).await?;
        Ok(found
            .into_iter()
            .map(|(key, found)| (key, found.map(|(value, _)| value)))
            .collect())
    }

    async fn save(&self, key: K, value: V) -> Result<()> {
        let (k, v) = (encode_key(&key)?, encode_value(&key, &value)?);
        self.lock().put(k, v, None);
        Ok(())
    }

    async fn delete(&self, key: &K) -> Result<()> {
        let k = encode_key(key)?;
        self.lock().remove(&k);
        Ok(())
    }

    async fn apply_batch(&self, batch: &[BatchOp<K, V>]) -> Result<()> {
        // Encode everything first so a bad change leaves the store untouched.
        let mut encoded = Vec::with_capacity(batch.len());
        for op in batch {
            encoded.push(match op {
                BatchOp::Put { key, value } => (
                    encode_key(key)?,
                    Change::Put(encode_value(key, value)?, None),
                ),
                BatchOp::PutExpiring {
                    key,
                    value,
                    expires_at,
                } => (
                    encode_key(key)?,
                    Change::Put(encode_value(key, value)?, Some(*expires_at)),
                ),
                BatchOp::Delete { key } => (encode_key(key)?, Change::Delete),
                BatchOp::DeleteExpired { key, now } => (encode_key(key)?, Change::Sweep(*now)),
                _ => return Err(PersistentError::unknown_change("memory")),
            });
        }
        let mut entries = self.lock();
        for (k, change) in encoded {
            match change {
                Change::Put(v, deadline) => {
                    entries.put(k, v, deadline);
                }
                Change::Delete => {
                    entries.remove(&k);
                }
                Change::Sweep(now) => {
                    if entries.deadlines.get(&k).is_some_and(|at| *at <= now) {
                        entries.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    async fn clear(&self) -> Result<()> {
        *self.lock() = Store::default();
        Ok(())
    }

    async fn len(&self) -> Result<usize> {
        Ok(self.stored_len())
    }

    async fn contains_key(&self, key: &K) -> Result<bool> {
        let k = encode_key(key)?;
        Ok(self.lock().values.contains_key(&k))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_atomic_batch(true)
            .with_durability(Durability::Volatile)
            .with_expiry(true)
    }
}

/// One encoded change of a batch.
enum Change {
    Put(String, Option<SystemTime>),
    Delete,
    /// Remove the entry if its deadline is not after this time.
    Sweep(SystemTime),
}

fn decode<K: DeserializeOwned, V: DeserializeOwned>(k: &str, v: &str) -> Result<(K, V)> {
    let key: K = serde_json::from_str(k)
        .map_err(|e| PersistentError::decode(EntryPart::Key, Location::new(NAME).with_key(k), e))?;
    let value: V = serde_json::from_str(v).map_err(|e| {
        PersistentError::decode(EntryPart::Value, Location::new(NAME).with_key(k), e)
    })?;
    Ok((key, value))
}
