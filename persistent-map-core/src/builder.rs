//! Options for opening a [`PersistentMap`].

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::StorageBackend;
use crate::error::Result;
use crate::map::PersistentMap;
use crate::pipeline::PipelineConfig;

/// The default upper bound on changes per backend batch.
pub const DEFAULT_MAX_BATCH: usize = 1024;

/// Options for opening a [`PersistentMap`]; start with [`PersistentMap::builder`].
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct PersistentMapBuilder<K, V, B> {
    backend: B,
    config: PipelineConfig,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V, B> PersistentMapBuilder<K, V, B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    pub(crate) fn new(backend: B) -> Self {
        Self {
            backend,
            config: PipelineConfig {
                max_batch: DEFAULT_MAX_BATCH,
            },
            _types: PhantomData,
        }
    }

    /// The most changes the writer hands the backend in one batch
    /// (default [`DEFAULT_MAX_BATCH`]; values below 1 count as 1).
    pub fn max_batch(mut self, changes: usize) -> Self {
        self.config.max_batch = changes.max(1);
        self
    }

    /// Opens the map: loads every stored entry and starts the writer task.
    ///
    /// # Errors
    ///
    /// As [`PersistentMap::new`].
    pub async fn build(self) -> Result<PersistentMap<K, V, B>> {
        PersistentMap::open(self.backend, self.config).await
    }
}

impl<K, V, B> fmt::Debug for PersistentMapBuilder<K, V, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentMapBuilder")
            .field("backend", &std::any::type_name::<B>())
            .field("max_batch", &self.config.max_batch)
            .finish()
    }
}
