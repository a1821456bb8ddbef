//! [`InMemoryBackend`]: a backend that keeps encoded entries in memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

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
/// store was dropped sees that map's data. Nothing survives the process.
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
    entries: Arc<Mutex<HashMap<String, String>>>,
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
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, String>> {
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
        let entries = self.lock().clone();
        for (k, v) in entries {
            let key: K = serde_json::from_str(&k).map_err(|e| {
                PersistentError::decode(EntryPart::Key, Location::new(NAME).with_key(k.clone()), e)
            })?;
            let value: V = serde_json::from_str(&v).map_err(|e| {
                PersistentError::decode(
                    EntryPart::Value,
                    Location::new(NAME).with_key(k.clone()),
                    e,
                )
            })?;
            sink(key, value);
        }
        Ok(())
    }

    async fn save(&self, key: K, value: V) -> Result<()> {
        let (k, v) = (encode_key(&key)?, encode_value(&key, &value)?);
        self.lock().insert(k, v);
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
                BatchOp::Put { key, value } => (encode_key(key)?, Some(encode_value(key, value)?)),
                BatchOp::Delete { key } => (encode_key(key)?, None),
                _ => return Err(PersistentError::unknown_change("memory")),
            });
        }
        let mut entries = self.lock();
        for (k, v) in encoded {
            match v {
                Some(v) => entries.insert(k, v),
                None => entries.remove(&k),
            };
        }
        Ok(())
    }

    async fn clear(&self) -> Result<()> {
        self.lock().clear();
        Ok(())
    }

    async fn len(&self) -> Result<usize> {
        Ok(self.stored_len())
    }

    async fn contains_key(&self, key: &K) -> Result<bool> {
        let k = encode_key(key)?;
        Ok(self.lock().contains_key(&k))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_atomic_batch(true)
            .with_durability(Durability::Volatile)
    }
}
