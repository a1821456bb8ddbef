//! [`PersistentMap`]: the cache that readers hit, and the API that feeds the write pipeline.

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use dashmap::DashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;

use crate::backend::{BatchOp, StorageBackend};
use crate::builder::PersistentMapBuilder;
use crate::error::{PersistentError, Result};
use crate::pipeline::{self, Command, PipelineConfig};

/// A concurrent map whose entries survive restarts.
///
/// Reads ([`get`](Self::get), [`contains_key`](Self::contains_key),
/// [`len`](Self::len), iteration) are served from an in-memory
/// [`DashMap`] and never wait on the backend. Writes
/// ([`insert`](Self::insert), [`remove`](Self::remove), [`clear`](Self::clear))
/// flow through one ordered pipeline into the [`StorageBackend`].
///
/// # Guarantees (write-through)
///
/// * `insert`, `remove` and `clear` return `Ok` only once the backend has
///   accepted the change, so it survives the process being killed right after.
/// * When [`flush`](Self::flush) returns `Ok`, every change acknowledged before
///   it is durable on the medium (it survives a power cut).
/// * Changes reach the backend in the order the cache applies them, so
///   concurrent writers to one key leave the store and the cache equal, and a
///   crash never leaves a later change without an earlier acknowledged one.
/// * The cache is updated only after the backend accepted a change: a failed
///   write returns its error and leaves no trace in the cache.
/// * Concurrent writers share backend commits (group commit).
///
/// A change whose `insert`/`remove` future is dropped after it was queued may
/// still be applied; the cache and the store stay equal either way.
///
/// # Example
///
/// ```
/// use persistent_map_core::PersistentMap;
/// use persistent_map_memory::InMemoryBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> persistent_map_core::Result<()> {
/// let map = PersistentMap::new(InMemoryBackend::new()).await?;
/// assert_eq!(map.insert("alice".to_string(), 30_u32).await?, None);
/// assert_eq!(map.insert("alice".to_string(), 31).await?, Some(30));
/// assert_eq!(map.get("alice"), Some(31));
/// assert_eq!(map.remove(&"alice".to_string()).await?, Some(31));
/// assert!(map.is_empty());
/// map.flush().await?;
/// # Ok(())
/// # }
/// ```
pub struct PersistentMap<K, V, B> {
    cache: Arc<DashMap<K, V>>,
    backend: Arc<B>,
    queue: mpsc::UnboundedSender<Command<K, V>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl<K, V, B> PersistentMap<K, V, B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// Opens a map on `backend` and loads every stored entry into the cache.
    ///
    /// Must be called within a tokio runtime: it starts the map's writer task.
    ///
    /// # Errors
    ///
    /// Whatever the backend's load returns: an unreadable file, a record that
    /// no longer decodes, an unreachable server. Nothing is changed on disk.
    pub async fn new(backend: B) -> Result<Self> {
        Self::builder(backend).build().await
    }

    /// Starts a [`PersistentMapBuilder`] to set options before opening.
    ///
    /// ```
    /// use persistent_map_core::PersistentMap;
    /// use persistent_map_memory::InMemoryBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map_core::Result<()> {
    /// let map: PersistentMap<u64, String, _> = PersistentMap::builder(InMemoryBackend::new())
    ///     .max_batch(256)
    ///     .build()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(backend: B) -> PersistentMapBuilder<K, V, B> {
        PersistentMapBuilder::new(backend)
    }

    pub(crate) async fn open(backend: B, config: PipelineConfig) -> Result<Self> {
        let cache = DashMap::new();
        backend
            .load_into(&mut |k, v| {
                cache.insert(k, v);
            })
            .await?;
        let cache = Arc::new(cache);
        let backend = Arc::new(backend);
        let (queue, handle) =
            pipeline::spawn_writer(Arc::clone(&cache), Arc::clone(&backend), config);
        Ok(Self {
            cache,
            backend,
            queue,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Inserts `value` under `key` and persists it; returns the value it replaced.
    ///
    /// # Errors
    ///
    /// When the backend refused the change; the map is then unchanged.
    pub async fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        self.send(|reply| Command::Write(BatchOp::Put { key, value }, reply))
            .await
    }

    /// Removes `key` from the map and the store; returns the value it had.
    ///
    /// Removing a missing key writes nothing and returns `None`.
    ///
    /// # Errors
    ///
    /// When the backend refused the change; the map is then unchanged.
    pub async fn remove(&self, key: &K) -> Result<Option<V>> {
        let key = key.clone();
        self.send(|reply| Command::Write(BatchOp::Delete { key }, reply))
            .await
    }

    /// Returns a clone of the value under `key`, from the cache.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.cache.get(key).map(|entry| entry.value().clone())
    }

    /// Returns whether `key` is in the map.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.cache.contains_key(key)
    }

    /// Returns the number of entries.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Returns whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Removes every entry from the map **and from the store**.
    ///
    /// In 0.1.x `clear` emptied only the cache, so the entries came back on the
    /// next start; it now removes them for good.
    ///
    /// # Errors
    ///
    /// When the backend could not clear the store; the map is then unchanged.
    pub async fn clear(&self) -> Result<()> {
        self.send(Command::Clear).await
    }

    /// Removes every entry for which `keep` returns `false`, from the map and
    /// the store, as one batch; returns how many were removed.
    ///
    /// `keep` runs against a consistent view: no other write of this map is
    /// applied while it runs.
    ///
    /// # Errors
    ///
    /// When the backend refused the batch; the map is then unchanged (on a
    /// backend without atomic batches a prefix of the removals may be stored;
    /// [`reload`](Self::reload) brings the cache back in line).
    pub async fn retain<F>(&self, keep: F) -> Result<usize>
    where
        F: FnMut(&K, &V) -> bool + Send + 'static,
    {
        self.send(|reply| Command::Retain(Box::new(keep), reply))
            .await
    }

    /// Makes every change acknowledged before this call durable on the medium.
    ///
    /// # Errors
    ///
    /// When durability cannot be confirmed; never `Ok` after a failed sync.
    pub async fn flush(&self) -> Result<()> {
        self.send(Command::Flush).await
    }

    /// Replaces the cache with what the store holds now, e.g. after another
    /// process wrote to a shared store. Ordered after every earlier write.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new); the cache is then unchanged.
    pub async fn reload(&self) -> Result<()> {
        self.send(Command::Reload).await
    }

    /// 0.1.x name of [`reload`](Self::reload).
    ///
    /// # Errors
    ///
    /// As [`reload`](Self::reload).
    pub async fn load(&self) -> Result<()> {
        self.reload().await
    }

    /// Flushes, then stops the writer task. Later writes return
    /// [`PersistentError::Closed`]; reads keep working. Once `close` returned,
    /// dropping the map releases the backend at once (files, locks, pools).
    ///
    /// # Errors
    ///
    /// As [`flush`](Self::flush); the writer is stopped either way.
    pub async fn close(&self) -> Result<()> {
        let flushed = match self.send(Command::Close).await {
            Err(PersistentError::Closed) => Ok(()),
            other => other,
        };
        let mut writer = self.writer.lock().await;
        if let Some(handle) = writer.take() {
            // Wait until the writer has dropped its handle on the backend.
            let _ = handle.await;
        }
        flushed
    }

    /// The backend, for backend-specific calls.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Clones of every key, from a snapshot of the cache.
    pub fn keys(&self) -> std::vec::IntoIter<K> {
        self.cache
            .iter()
            .map(|entry| entry.key().clone())
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// Clones of every value, from a snapshot of the cache.
    pub fn values(&self) -> std::vec::IntoIter<V> {
        self.cache
            .iter()
            .map(|entry| entry.value().clone())
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// Owned `(key, value)` pairs of a snapshot of the cache. No lock is held
    /// once this returns, so the iterator can be used across `.await`.
    pub fn iter(&self) -> std::vec::IntoIter<(K, V)> {
        self.cache
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().clone()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// Calls `f` on every entry without cloning. `f` runs while a shard of the
    /// cache is read-locked: it must not call back into this map's writes.
    pub fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        for entry in self.cache.iter() {
            f(entry.key(), entry.value());
        }
    }

    async fn send<T>(
        &self,
        command: impl FnOnce(pipeline::Reply<T>) -> Command<K, V>,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(command(reply))
            .map_err(|_| PersistentError::Closed)?;
        answer.await.map_err(|_| PersistentError::Closed)?
    }
}

impl<K: Eq + Hash, V, B> fmt::Debug for PersistentMap<K, V, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentMap")
            .field("len", &self.cache.len())
            .field("backend", &std::any::type_name::<B>())
            .finish_non_exhaustive()
    }
}
