//! A backend as a third party would write it, against `persistent-map-core`
//! only: the whole map is one JSON object in one file, replaced atomically
//! (write a temporary file, rename it over) on every batch.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::path::{Path, PathBuf};

use persistent_map_core::codec::KeyFormat;
use persistent_map_core::{
    async_trait, render_key, BatchOp, Capabilities, Durability, EntryPart, Location,
    PersistentError, Result, StorageBackend,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Mutex;

/// How keys are written as the file's object keys: the format that keeps
/// distinct keys distinct (`None` and `Some("null")` of an `Option<String>`
/// key get two texts).
const KEY_FORMAT: KeyFormat = KeyFormat::Distinct;

/// A JSON-object-in-a-file backend.
#[derive(Debug)]
pub struct JsonFileBackend {
    path: PathBuf,
    /// The file's content, keyed by the key's text; `None` until first read.
    entries: Mutex<Option<BTreeMap<String, Value>>>,
}

impl JsonFileBackend {
    /// A backend on `path`; nothing is touched until the map opens it.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            entries: Mutex::new(None),
        }
    }

    fn location(&self) -> Location {
        Location::new(self.path.display().to_string())
    }

    async fn read(&self) -> Result<BTreeMap<String, Value>> {
        match tokio::fs::read(&self.path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                PersistentError::corrupt(self.location(), format!("not a JSON object: {e}"))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(PersistentError::io(&self.path, e)),
        }
    }

    async fn write(&self, entries: &BTreeMap<String, Value>) -> Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| PersistentError::io(dir, e))?;
        }
        let bytes = serde_json::to_vec_pretty(entries)?;
        let temp = self.path.with_extension("json.tmp");
        tokio::fs::write(&temp, bytes)
            .await
            .map_err(|e| PersistentError::io(&temp, e))?;
        // rename is atomic: a crash leaves the old or the new file, never half of one.
        tokio::fs::rename(&temp, &self.path)
            .await
            .map_err(|e| PersistentError::io(&self.path, e))
    }
}

async fn sync_path(path: &Path) -> Result<()> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&owned)?.sync_all())
        .await
        .map_err(|e| PersistentError::Other(Box::new(e)))?
        .map_err(|e| PersistentError::io(path, e))
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for JsonFileBackend
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        let entries = self.read().await?;
        let mut out = HashMap::with_capacity(entries.len());
        for (text, value) in &entries {
            let at = self.location().with_key(render_key(text));
            let key = KEY_FORMAT
                .decode(text)
                .map_err(|e| PersistentError::decode(EntryPart::Key, at.clone(), e))?;
            let value = V::deserialize(value)
                .map_err(|e| PersistentError::decode(EntryPart::Value, at, e))?;
            out.insert(key, value);
        }
        *self.entries.lock().await = Some(entries);
        Ok(out)
    }

    async fn save(&self, key: K, value: V) -> Result<()> {
        self.apply_batch(&[BatchOp::Put { key, value }]).await
    }

    async fn delete(&self, key: &K) -> Result<()> {
        self.apply_batch(&[BatchOp::<K, V>::Delete { key: key.clone() }])
            .await
    }

    async fn apply_batch(&self, batch: &[BatchOp<K, V>]) -> Result<()> {
        let mut guard = self.entries.lock().await;
        let mut next = match guard.take() {
            Some(entries) => entries,
            None => self.read().await?,
        };
        let before = next.clone();
        for op in batch {
            let text = KEY_FORMAT
                .encode(op.key())
                .map_err(|e| PersistentError::encode(EntryPart::Key, self.location(), e));
            let applied = text.and_then(|text| match op {
                BatchOp::Put { value, .. } => serde_json::to_value(value)
                    .map_err(|e| {
                        PersistentError::encode(
                            EntryPart::Value,
                            self.location().with_key(render_key(&text)),
                            e,
                        )
                    })
                    .map(|value| {
                        next.insert(text, value);
                    }),
                BatchOp::Delete { .. } => {
                    next.remove(&text);
                    Ok(())
                }
                // A kind of change added after this backend was written.
                _ => Err(PersistentError::unknown_change("json-file")),
            });
            if let Err(err) = applied {
                *guard = Some(before);
                return Err(err);
            }
        }
        match self.write(&next).await {
            Ok(()) => {
                *guard = Some(next);
                Ok(())
            }
            Err(err) => {
                *guard = Some(before);
                Err(err)
            }
        }
    }

    async fn flush(&self) -> Result<()> {
        let _serialised = self.entries.lock().await;
        if !tokio::fs::try_exists(&self.path).await.unwrap_or(false) {
            // Nothing was ever written, so nothing needs to be durable.
            return Ok(());
        }
        sync_path(&self.path).await?;
        match self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => sync_path(dir).await,
            None => sync_path(Path::new(".")).await,
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_atomic_batch(true)
            .with_durability(Durability::OnFlush)
    }
}
