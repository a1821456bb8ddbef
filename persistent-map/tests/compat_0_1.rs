//! Code written against persistent-map 0.1.x (its in-memory parts and its
//! backend trait) compiles and behaves unchanged. The items below follow the
//! 0.1.x documentation line for line.
#![cfg(feature = "in_memory")]

use persistent_map::in_memory::InMemoryBackend;
use persistent_map::{PersistentError, PersistentMap, Result, StorageBackend};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::fs;
use std::hash::Hash;
use std::path::PathBuf;

/// The custom backend of the 0.1.x `StorageBackend` docs, with `?` on
/// `std::io::Error` and `serde_json::Error`.
struct JsonFileBackend {
    path: PathBuf,
}

impl JsonFileBackend {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    fn ensure_file_exists(&self) -> std::io::Result<()> {
        if !self.path.exists() {
            if let Some(parent) = self.path.parent() {
                if !parent.exists() {
                    fs::create_dir_all(parent)?;
                }
            }
            fs::write(&self.path, "{}")?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl<K, V> StorageBackend<K, V> for JsonFileBackend
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + ToString + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>, PersistentError> {
        self.ensure_file_exists()?;
        let content = fs::read_to_string(&self.path)?;
        if content.trim() == "{}" {
            return Ok(HashMap::new());
        }
        let map = serde_json::from_str(&content)?;
        Ok(map)
    }

    async fn save(&self, key: K, value: V) -> Result<(), PersistentError> {
        self.ensure_file_exists()?;
        let mut map: HashMap<K, V> = self.load_all().await?;
        map.insert(key, value);
        let content = serde_json::to_string_pretty(&map)?;
        fs::write(&self.path, content)?;
        Ok(())
    }

    async fn delete(&self, key: &K) -> Result<(), PersistentError> {
        self.ensure_file_exists()?;
        let mut map: HashMap<K, V> = self.load_all().await?;
        map.remove(key);
        let content = serde_json::to_string_pretty(&map)?;
        fs::write(&self.path, content)?;
        Ok(())
    }

    async fn flush(&self) -> Result<(), PersistentError> {
        Ok(())
    }

    // 0.1.x backends could override these; they still can.
    async fn contains_key(&self, key: &K) -> Result<bool, PersistentError> {
        let all: HashMap<K, V> = self.load_all().await?;
        Ok(all.contains_key(key))
    }

    async fn len(&self) -> Result<usize, PersistentError> {
        let all: HashMap<K, V> = self.load_all().await?;
        Ok(all.len())
    }
}

// The helper signatures of the 0.1.x docs.
async fn insert_example(
    map: &PersistentMap<
        String,
        String,
        impl StorageBackend<String, String> + Send + Sync + 'static,
    >,
) -> Result<()> {
    let old = map.insert("key".to_string(), "value".to_string()).await?;
    assert_eq!(old, None);
    let old = map
        .insert("key".to_string(), "new value".to_string())
        .await?;
    assert_eq!(old, Some("value".to_string()));
    Ok(())
}

fn get_example(
    map: &PersistentMap<
        String,
        String,
        impl StorageBackend<String, String> + Send + Sync + 'static,
    >,
) {
    if let Some(value) = map.get(&"key".to_string()) {
        assert_eq!(value, "new value");
    }
}

#[tokio::test]
async fn the_0_1_in_memory_api_compiles_and_works() -> Result<()> {
    let backend = InMemoryBackend::new();
    let map: PersistentMap<String, String, _> = PersistentMap::new(backend).await?;
    insert_example(&map).await?;
    get_example(&map);
    assert!(map.contains_key(&"key".to_string()));
    assert_eq!(map.len(), 1);
    assert!(!map.is_empty());
    map.load().await?;
    let old_value = map.remove(&"key".to_string()).await?;
    assert_eq!(old_value, Some("new value".to_string()));
    map.flush().await?;
    let _backend: &InMemoryBackend = map.backend();
    assert!(map.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_0_1_style_backend_works_with_the_new_map() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("nested/data.json");
    let map = PersistentMap::new(JsonFileBackend::new(&path)).await?;
    map.insert("a".to_string(), 1_u32).await?;
    map.insert("b".to_string(), 2).await?;
    map.remove(&"a".to_string()).await?;
    assert!(StorageBackend::<String, u32>::contains_key(map.backend(), &"b".to_string()).await?);
    map.close().await?;
    drop(map);

    let reopened: PersistentMap<String, u32, _> =
        PersistentMap::new(JsonFileBackend::new(&path)).await?;
    assert_eq!(reopened.get("b"), Some(2));
    assert_eq!(reopened.len(), 1);
    Ok(())
}

#[tokio::test]
async fn clear_now_empties_the_store_too() -> Result<()> {
    let store = InMemoryBackend::new();
    let map = PersistentMap::new(store.clone()).await?;
    map.insert(1_u32, "one".to_string()).await?;
    map.clear().await?;
    map.close().await?;
    let reopened: PersistentMap<u32, String, _> = PersistentMap::new(store).await?;
    assert!(
        reopened.is_empty(),
        "0.1.x left cleared entries in the store"
    );
    Ok(())
}
