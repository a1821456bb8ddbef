//! [`PersistentMap`]: the cache that readers hit, and the API that feeds the write pipeline.

use std::borrow::Borrow;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Mutex, OwnedSemaphorePermit, RwLock, Semaphore};
use tokio::task::JoinHandle;

use crate::backend::{BatchOp, RemoteChanges, StorageBackend};
use crate::batch::{Batch, Transaction};
use crate::builder::PersistentMapBuilder;
use crate::error::{PersistentError, Result};
use crate::pipeline::{self, Cache, Command, Decision, Health, PipelineConfig, Unit, Waiter};

/// A concurrent map whose entries survive restarts.
///
/// Reads ([`get`](Self::get), [`contains_key`](Self::contains_key),
/// [`len`](Self::len), iteration) are served from an in-memory
/// [`DashMap`](dashmap::DashMap) and never wait on the backend. Writes flow through one ordered
/// pipeline into the [`StorageBackend`].
///
/// # Guarantees (write-through, the default)
///
/// * `insert`, `remove`, `clear` and the other writes return `Ok` only once
///   the backend has accepted the change, so it survives the process being
///   killed right after.
/// * When [`flush`](Self::flush) returns `Ok`, every change acknowledged before
///   it is durable on the medium (it survives a power cut).
/// * Changes reach the backend in the order the cache applies them, so
///   concurrent writers to one key leave the store and the cache equal, and a
///   crash never leaves a later change without an earlier acknowledged one.
/// * The cache is updated only after the backend accepted a change: a failed
///   write returns its error and leaves no trace in the cache.
/// * Concurrent writers share backend commits (group commit).
///
/// A change whose future is dropped after it was queued may still be applied;
/// the cache and the store stay equal either way.
///
/// Write-behind mode ([`PersistentMapBuilder::write_behind`]) trades the first
/// guarantee for speed: see [`WriteBehind`](crate::WriteBehind).
///
/// # Shared stores
///
/// When the backend offers a change feed ([`StorageBackend::watch`], e.g. a
/// database server shared by several instances), a write-through map follows
/// the other instances' writes: its writer task re-reads each key announced
/// as changed, in order with its own writes, so a reader sees another
/// instance's acknowledged write shortly after it was made (eventual
/// consistency; there is no cross-instance locking). Write-behind maps do not
/// follow the feed: their cache may be ahead of the store.
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
    cache: Arc<Cache<K, V>>,
    backend: Arc<B>,
    queue: mpsc::UnboundedSender<Command<K, V>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    health: Arc<Health>,
    behind: Option<Behind>,
}

/// The caller side of write-behind mode.
struct Behind {
    /// One permit per queued change: a writer faster than the disk waits here.
    slots: Arc<Semaphore>,
    capacity: usize,
    /// Single-key writes take it shared; writes that span keys (batches,
    /// transactions, clear) take it exclusively, so the queue order stays the
    /// cache order across keys.
    order: RwLock<()>,
}

impl Behind {
    async fn reserve(&self, changes: usize) -> Result<OwnedSemaphorePermit> {
        let wanted = u32::try_from(changes.clamp(1, self.capacity)).unwrap_or(u32::MAX);
        Arc::clone(&self.slots)
            .acquire_many_owned(wanted)
            .await
            .map_err(|_| PersistentError::Closed)
    }
}

impl<K, V, B> PersistentMap<K, V, B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    /// Opens a write-through map on `backend` and loads every stored entry
    /// into the cache.
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
    /// use std::time::Duration;
    /// use persistent_map_core::{PersistentMap, WriteBehind};
    /// use persistent_map_memory::InMemoryBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map_core::Result<()> {
    /// let map: PersistentMap<u64, String, _> = PersistentMap::builder(InMemoryBackend::new())
    ///     .max_batch(4096)
    ///     .write_behind(WriteBehind::new().max_delay(Duration::from_millis(5)))
    ///     .build()
    ///     .await?;
    /// map.insert(1, "queued".to_string()).await?;
    /// map.flush().await?; // durable from here on
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(backend: B) -> PersistentMapBuilder<K, V, B> {
        PersistentMapBuilder::new(backend)
    }

    pub(crate) async fn open(
        backend: B,
        config: PipelineConfig,
        behind_capacity: Option<usize>,
    ) -> Result<Self> {
        // Subscribe before loading: a change made between the load and the
        // subscription would otherwise never reach this cache.
        let feed = match behind_capacity {
            None => backend.watch().await?,
            Some(_) => None,
        };
        let cache = Cache::default();
        backend
            .load_into(&mut |k, v| {
                cache.insert(k, v);
            })
            .await?;
        let cache = Arc::new(cache);
        let backend = Arc::new(backend);
        let health = Arc::new(Health::default());
        let (queue, handle) = pipeline::spawn_writer(
            Arc::clone(&cache),
            Arc::clone(&backend),
            Arc::clone(&health),
            config,
        );
        if let Some(feed) = feed {
            spawn_follower(feed, queue.downgrade());
        }
        let behind = behind_capacity.map(|capacity| Behind {
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            order: RwLock::new(()),
        });
        Ok(Self {
            cache,
            backend,
            queue,
            writer: Mutex::new(Some(handle)),
            health,
            behind,
        })
    }

    /// Inserts `value` under `key` and persists it; returns the value it replaced.
    ///
    /// # Errors
    ///
    /// When the backend refused the change; the map is then unchanged.
    /// Write-behind: when an earlier background write failed.
    pub async fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        let op = BatchOp::Put { key, value };
        match &self.behind {
            None => self.commit_one(op).await,
            Some(behind) => self.queue_one(behind, op).await,
        }
    }

    /// Removes `key` from the map and the store; returns the value it had.
    ///
    /// Removing a missing key writes nothing and returns `None`.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub async fn remove(&self, key: &K) -> Result<Option<V>> {
        let op = BatchOp::Delete { key: key.clone() };
        match &self.behind {
            None => self.commit_one(op).await,
            Some(behind) => self.queue_one(behind, op).await,
        }
    }

    /// Inserts every pair, persisted as one backend batch; returns the values
    /// they replaced, in order.
    ///
    /// The batch is atomic on backends that declare
    /// [`Capabilities::atomic_batch`](crate::Capabilities); on others a failure
    /// may leave a prefix stored, and the cache then holds exactly what was.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub async fn insert_many<I>(&self, entries: I) -> Result<Vec<Option<V>>>
    where
        I: IntoIterator<Item = (K, V)>,
    {
        let ops = entries
            .into_iter()
            .map(|(key, value)| BatchOp::Put { key, value })
            .collect();
        self.write_many(ops).await
    }

    /// [`insert_many`](Self::insert_many) without the replaced values.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub async fn extend<I>(&self, entries: I) -> Result<()>
    where
        I: IntoIterator<Item = (K, V)>,
    {
        self.insert_many(entries).await.map(drop)
    }

    /// Removes every key, persisted as one backend batch; returns how many
    /// were present.
    ///
    /// # Errors
    ///
    /// As [`insert_many`](Self::insert_many).
    pub async fn remove_many<'a, I>(&self, keys: I) -> Result<usize>
    where
        I: IntoIterator<Item = &'a K>,
        K: 'a,
    {
        // No filtering on the cache here: a key may be inserted by a change
        // queued before this one, and the removal must apply to it.
        let ops = keys
            .into_iter()
            .map(|key| BatchOp::Delete { key: key.clone() })
            .collect();
        let replaced = self.write_many(ops).await?;
        Ok(replaced.iter().filter(|old| old.is_some()).count())
    }

    /// Applies `batch` atomically: every change or none, in the store and in
    /// the cache.
    ///
    /// # Errors
    ///
    /// [`PersistentError::Unsupported`] when the backend cannot apply a batch
    /// atomically (nothing is changed); otherwise as [`insert`](Self::insert).
    pub async fn apply(&self, batch: Batch<K, V>) -> Result<()> {
        self.require_atomic()?;
        self.write_many(batch.ops).await.map(drop)
    }

    /// Runs `body` as a transaction: it reads the map through the
    /// [`Transaction`] (seeing its own changes), no other write of this map
    /// happens while it runs, and its changes are applied atomically (all or
    /// none, in the store and in the cache). Returns what `body` returns.
    ///
    /// `body` runs on the map's writer task: keep it short and do not block.
    ///
    /// ```
    /// use persistent_map_core::PersistentMap;
    /// use persistent_map_memory::InMemoryBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map_core::Result<()> {
    /// let accounts = PersistentMap::new(InMemoryBackend::new()).await?;
    /// accounts.insert("alice".to_string(), 100_i64).await?;
    /// accounts.insert("bob".to_string(), 0).await?;
    ///
    /// let moved = accounts
    ///     .transaction(|tx| {
    ///         let alice = tx.get(&"alice".to_string()).unwrap_or(0);
    ///         let amount = alice.min(30);
    ///         let bob = tx.get(&"bob".to_string()).unwrap_or(0);
    ///         tx.insert("alice".to_string(), alice - amount);
    ///         tx.insert("bob".to_string(), bob + amount);
    ///         amount
    ///     })
    ///     .await?;
    /// assert_eq!(moved, 30);
    /// assert_eq!(accounts.get("bob"), Some(30));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`apply`](Self::apply).
    pub async fn transaction<R, F>(&self, body: F) -> Result<R>
    where
        F: FnOnce(&mut Transaction<'_, K, V>) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.require_atomic()?;
        match &self.behind {
            None => {
                let (result_tx, result_rx) = oneshot::channel();
                let job: pipeline::TxFn<K, V> = Box::new(move |tx| {
                    let _ = result_tx.send(body(tx));
                });
                self.send(|reply| Command::Transaction(job, reply)).await?;
                result_rx.await.map_err(|_| PersistentError::Closed)
            }
            Some(behind) => {
                self.health.check()?;
                let _exclusive = behind.order.write().await;
                let mut tx = Transaction::new(&self.cache);
                let result = body(&mut tx);
                let ops = tx.into_ops();
                if !ops.is_empty() {
                    let permit = behind.reserve(ops.len()).await?;
                    self.queue_unit(ops, permit)?;
                }
                Ok(result)
            }
        }
    }

    /// Atomically replaces the value under `key` with what `f` returns for the
    /// current one (`None` removes the key); returns the new value.
    ///
    /// No other write of this key happens between reading the current value
    /// and storing the new one.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub async fn update<F>(&self, key: &K, f: F) -> Result<Option<V>>
    where
        F: FnOnce(Option<&V>) -> Option<V> + Send + 'static,
    {
        let decide = move |current: Option<&V>| match f(current) {
            Some(value) => Decision::Put(value),
            None if current.is_some() => Decision::Delete,
            None => Decision::Keep,
        };
        self.read_modify_write(key.clone(), Box::new(decide)).await
    }

    /// Returns the value under `key`, first inserting `f()` if there is none.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub async fn get_or_insert_with<F>(&self, key: K, f: F) -> Result<V>
    where
        F: FnOnce() -> V + Send + 'static,
    {
        if let Some(value) = self.get(&key) {
            return Ok(value);
        }
        let decide = move |current: Option<&V>| match current {
            Some(_) => Decision::Keep,
            None => Decision::Put(f()),
        };
        let value = self.read_modify_write(key, Box::new(decide)).await?;
        // Keep answers with the present value and Put with the new one.
        Ok(value.expect("get_or_insert_with always leaves a value"))
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
        match &self.behind {
            None => self.send(|reply| Command::Clear(Some(reply))).await,
            Some(behind) => {
                self.health.check()?;
                let _exclusive = behind.order.write().await;
                self.queue
                    .send(Command::Clear(None))
                    .map_err(|_| PersistentError::Closed)?;
                self.cache.clear();
                Ok(())
            }
        }
    }

    /// Removes every entry for which `keep` returns `false`, from the map and
    /// the store, as one batch; returns how many were removed.
    ///
    /// `keep` runs against a consistent view: no other write of this map is
    /// applied while it runs.
    ///
    /// # Errors
    ///
    /// As [`insert_many`](Self::insert_many).
    pub async fn retain<F>(&self, mut keep: F) -> Result<usize>
    where
        F: FnMut(&K, &V) -> bool + Send + 'static,
    {
        match &self.behind {
            None => {
                self.send(|reply| Command::Retain(Box::new(keep), reply))
                    .await
            }
            Some(behind) => {
                self.health.check()?;
                let _exclusive = behind.order.write().await;
                let doomed: Vec<K> = self
                    .cache
                    .iter()
                    .filter(|entry| !keep(entry.key(), entry.value()))
                    .map(|entry| entry.key().clone())
                    .collect();
                if doomed.is_empty() {
                    return Ok(0);
                }
                let permit = behind.reserve(doomed.len()).await?;
                let ops = doomed
                    .iter()
                    .map(|key| BatchOp::Delete { key: key.clone() })
                    .collect();
                self.queue_unit(ops, permit)?;
                for key in &doomed {
                    self.cache.remove(key);
                }
                Ok(doomed.len())
            }
        }
    }

    /// Makes every change acknowledged before this call durable on the medium.
    ///
    /// # Errors
    ///
    /// When durability cannot be confirmed (never `Ok` after a failed sync),
    /// or, write-behind, when a background write failed since the map opened
    /// or was last reloaded.
    pub async fn flush(&self) -> Result<()> {
        self.health.check()?;
        self.send(Command::Flush).await
    }

    /// Replaces the cache with what the store holds now, after every earlier
    /// write. Use it after another process wrote to a shared store, and to
    /// recover a write-behind map whose background write failed: it drops the
    /// changes that were not stored and accepts writes again.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new); the cache is then unchanged.
    pub async fn reload(&self) -> Result<()> {
        match &self.behind {
            None => self.send(Command::Reload).await,
            Some(behind) => {
                let _exclusive = behind.order.write().await;
                self.send(Command::Reload).await
            }
        }
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

    /// Write-behind: the number of changes accepted but not yet covered by a
    /// successful flush. Always 0 in write-through mode.
    pub fn unflushed(&self) -> u64 {
        self.health.unflushed()
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

    fn require_atomic(&self) -> Result<()> {
        if self.backend.capabilities().atomic_batch {
            Ok(())
        } else {
            Err(PersistentError::Unsupported {
                backend: std::any::type_name::<B>(),
                feature: "atomic batches",
            })
        }
    }

    async fn commit_one(&self, op: BatchOp<K, V>) -> Result<Option<V>> {
        self.send(|reply| {
            Command::Commit(Unit {
                ops: vec![op],
                waiter: Waiter::One(reply),
            })
        })
        .await
    }

    async fn write_many(&self, ops: Vec<BatchOp<K, V>>) -> Result<Vec<Option<V>>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        match &self.behind {
            None => {
                self.send(|reply| {
                    Command::Commit(Unit {
                        ops,
                        waiter: Waiter::Many(reply),
                    })
                })
                .await
            }
            Some(behind) => {
                self.health.check()?;
                let permit = behind.reserve(ops.len()).await?;
                let _exclusive = behind.order.write().await;
                let replaced = ops
                    .iter()
                    .map(|op| match op {
                        BatchOp::Put { key, value } => {
                            self.cache.insert(key.clone(), value.clone())
                        }
                        BatchOp::Delete { key } => self.cache.remove(key).map(|(_, v)| v),
                    })
                    .collect();
                self.queue_unit(ops, permit)?;
                Ok(replaced)
            }
        }
    }

    /// Write-behind single-key change.
    async fn queue_one(&self, behind: &Behind, op: BatchOp<K, V>) -> Result<Option<V>> {
        match op {
            BatchOp::Put { key, value } => {
                self.change_behind(behind, key, |_| Decision::Put(value))
                    .await
            }
            BatchOp::Delete { key } => {
                self.change_behind(behind, key, |current| match current {
                    Some(_) => Decision::Delete,
                    None => Decision::Keep,
                })
                .await
            }
        }
    }

    async fn read_modify_write(&self, key: K, decide: pipeline::UpdateFn<V>) -> Result<Option<V>> {
        let Some(behind) = &self.behind else {
            return self.send(|reply| Command::Update(key, decide, reply)).await;
        };
        let mut stored = None;
        self.change_behind(behind, key, |current| {
            let decision = decide(current);
            stored = match &decision {
                Decision::Keep => current.cloned(),
                Decision::Put(value) => Some(value.clone()),
                Decision::Delete => None,
            };
            decision
        })
        .await?;
        Ok(stored)
    }

    /// Write-behind: decides on the key's current value, then updates the
    /// cache and queues the change while holding the key's lock, so the
    /// queue order is the cache order. Returns the value it replaced.
    async fn change_behind(
        &self,
        behind: &Behind,
        key: K,
        decide: impl FnOnce(Option<&V>) -> Decision<V>,
    ) -> Result<Option<V>> {
        self.health.check()?;
        let permit = behind.reserve(1).await?;
        let _shared = behind.order.read().await;
        let entry = self.cache.entry(key.clone());
        let current = match &entry {
            Entry::Occupied(occupied) => Some(occupied.get()),
            Entry::Vacant(_) => None,
        };
        match decide(current) {
            Decision::Keep => Ok(current.cloned()),
            Decision::Put(value) => {
                let op = BatchOp::Put {
                    key,
                    value: value.clone(),
                };
                self.queue_unit(vec![op], permit)?;
                Ok(match entry {
                    Entry::Occupied(mut occupied) => Some(occupied.insert(value)),
                    Entry::Vacant(vacant) => {
                        vacant.insert(value);
                        None
                    }
                })
            }
            Decision::Delete => match entry {
                Entry::Occupied(occupied) => {
                    self.queue_unit(vec![BatchOp::Delete { key }], permit)?;
                    Ok(Some(occupied.remove()))
                }
                Entry::Vacant(_) => Ok(None),
            },
        }
    }

    fn queue_unit(&self, ops: Vec<BatchOp<K, V>>, permit: OwnedSemaphorePermit) -> Result<()> {
        let changes = ops.len() as u64;
        self.queue
            .send(Command::Persist(Unit {
                ops,
                waiter: Waiter::Detached { _slots: permit },
            }))
            .map_err(|_| PersistentError::Closed)?;
        self.health.queued.fetch_add(changes, Ordering::AcqRel);
        Ok(())
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

/// Forwards another instance's changes to the writer, until the feed or the
/// map goes away.
fn spawn_follower<K, V>(mut feed: RemoteChanges<K>, queue: mpsc::WeakUnboundedSender<Command<K, V>>)
where
    K: Send + 'static,
    V: Send + 'static,
{
    tokio::spawn(async move {
        while let Some(change) = feed.recv().await {
            let Some(queue) = queue.upgrade() else { break };
            if queue.send(Command::Remote(change)).is_err() {
                break;
            }
        }
    });
}

impl<K, V, B> Drop for PersistentMap<K, V, B> {
    fn drop(&mut self) {
        let unflushed = self.health.unflushed();
        if self.behind.is_some() && unflushed > 0 {
            tracing::warn!(
                unflushed,
                "write-behind map dropped with changes not yet flushed; they are written \
                 only while the runtime keeps running: call close().await to keep them"
            );
        }
    }
}

impl<K: Eq + Hash, V, B> fmt::Debug for PersistentMap<K, V, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentMap")
            .field("len", &self.cache.len())
            .field("backend", &std::any::type_name::<B>())
            .field("write_behind", &self.behind.is_some())
            .finish_non_exhaustive()
    }
}
