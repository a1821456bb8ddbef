//! [`PersistentMap`]: the cache that readers hit, and the API that feeds the write pipeline.

use std::any::Any;
use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::backend::{BatchOp, Durability, RemoteChanges, StorageBackend};
use crate::batch::{Batch, Transaction};
use crate::builder::PersistentMapBuilder;
use crate::cache::{deadline_in, now, Deadline, NEVER};
use crate::closure::{guarded, Panic};
use crate::detached::Detached;
use crate::error::{PersistentError, Result};
use crate::events::Subscription;
use crate::queue::{
    put_op, Cache, Command, Decision, Keep, Pipeline, PipelineConfig, Reply, TxFn, Unit, UpdateFn,
    Waiter,
};
use crate::stats::{flush_backend, micros, write_batch, MapStats, Stats};
use crate::{sweep, writer};

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
/// the cache and the store stay equal either way. The queue is bounded
/// ([`PersistentMapBuilder::max_pending`]): beyond it, writers wait for room.
///
/// Write-behind mode ([`PersistentMapBuilder::write_behind`]) trades the first
/// guarantee for speed: see [`WriteBehind`](crate::WriteBehind). In both
/// modes the cache and the store see the same changes in the same order.
///
/// # Handles
///
/// A `PersistentMap` is a cheap handle: [`clone`](Clone::clone) it to use
/// the map from many tasks (no `Arc` needed). Clones share the cache, the
/// queue and the backend; [`close`](Self::close) on any of them closes the
/// map for all. The backend is released when the last clone is dropped: at
/// once when the map is idle, otherwise as soon as the writer task has
/// written what was queued, so the same store can be opened again right
/// after `drop(map)`.
///
/// # User closures
///
/// The closures given to [`update`](Self::update),
/// [`get_or_insert_with`](Self::get_or_insert_with), [`retain`](Self::retain)
/// and [`transaction`](Self::transaction) run with no lock of the cache held,
/// so they may read the map; no other write of the map proceeds while one
/// runs, so keep them short. A panic inside one applies nothing of that call,
/// leaves the map working for every other caller, and resumes in the
/// caller's task.
///
/// ```
/// use persistent_map_core::PersistentMap;
/// use persistent_map_memory::InMemoryBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> persistent_map_core::Result<()> {
/// let map = PersistentMap::new(InMemoryBackend::new()).await?;
/// let counter = map.clone();
/// let task = tokio::spawn(async move {
///     counter
///         .update(&"hits".to_string(), |n: Option<&u64>| Some(n.copied().unwrap_or(0) + 1))
///         .await
/// });
/// task.await.expect("no panic")?;
/// assert_eq!(map.get("hits"), Some(1));
///
/// let panicked = tokio::spawn({
///     let map = map.clone();
///     async move { map.update(&"hits".to_string(), |_| -> Option<u64> { panic!("bug") }).await }
/// })
/// .await;
/// assert!(panicked.is_err_and(|e| e.is_panic()));
/// assert_eq!(map.get("hits"), Some(1)); // nothing applied, and the map still works
/// map.insert("hits".to_string(), 5).await?;
/// # Ok(())
/// # }
/// ```
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
/// # Subscriptions
///
/// [`subscribe`](Self::subscribe) gives a stream of
/// [`MapEvent`](crate::MapEvent)s: inserts and updates (with the value
/// replaced), removals, clears, expiries and resyncs.
///
/// * **Order**: events arrive in the order the map applied the changes to
///   its cache, which is the order they reach the store; replaying them onto
///   an empty map gives the map's content.
/// * **Only what was acknowledged**: write-through, an event is published
///   once the backend accepted the change, just before the writer answers
///   the caller; a write that fails gives no event. Write-behind, an event
///   means the map *accepted* the change (it is in the cache and queued): if
///   the background write then fails, the map is poisoned (see
///   [`WriteBehind`](crate::WriteBehind)) and the event is not retracted;
///   a [`reload`](Self::reload) then publishes
///   [`Resynced`](crate::MapEvent::Resynced).
/// * **Slow subscribers never slow writers**: a subscription more than
///   [`event_capacity`](PersistentMapBuilder::event_capacity) events behind
///   loses the oldest and yields [`Lagged`](crate::MapEvent::Lagged) with
///   how many, then goes on from the present.
/// * **Remote changes**: a write-through map that follows a shared store
///   (see above) publishes the changes it re-reads from it with
///   [`Origin::Remote`](crate::Origin::Remote), in order with its own.
///   A key another instance wrote is reported even if the value it read
///   equals the one it held.
/// * **Resyncs are not itemized**: when the whole cache is replaced
///   (`reload`, or a feed that lost notifications), one
///   [`Resynced`](crate::MapEvent::Resynced) stands for every difference;
///   re-read what you care about.
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
    inner: Arc<Inner<K, V, B>>,
}

/// What the handles of one map share.
struct Inner<K, V, B> {
    pipeline: Arc<Pipeline<K, V>>,
    backend: Arc<B>,
    /// The same backend, type-erased, to keep it alive for the writer when
    /// the last handle is dropped with work still queued.
    keepalive: Arc<dyn Any + Send + Sync>,
}

impl<K, V, B> Clone for PersistentMap<K, V, B> {
    /// Another handle on the same map: clones share the cache, the queue and
    /// the backend, as clones of sqlx's `Pool` do.
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
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

    pub(crate) async fn open(backend: B, config: PipelineConfig, name: Arc<str>) -> Result<Self> {
        let span = tracing::info_span!(
            "persistent_map.open",
            map = &*name,
            entries = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        let started = Instant::now();
        let loaded = Self::load_store(&backend, config)
            .instrument(span.clone())
            .await;
        let (cache, feed) = loaded?;
        span.record("entries", cache.len());
        span.record("duration_us", micros(started.elapsed()));
        let capabilities = backend.capabilities();
        let stats = Stats::new(name, capabilities.durability);
        let pipeline = Arc::new(Pipeline::new(
            cache,
            config,
            capabilities.exclusive_lock,
            feed.is_none(),
            capabilities.expiry,
            std::any::type_name::<B>(),
            stats,
        ));
        let backend = Arc::new(backend);
        writer::spawn(Arc::clone(&pipeline), &backend, feed);
        if capabilities.expiry {
            sweep::spawn(Arc::downgrade(&pipeline));
        }
        let keepalive: Arc<dyn Any + Send + Sync> = Arc::clone(&backend) as _;
        Ok(Self {
            inner: Arc::new(Inner {
                pipeline,
                backend,
                keepalive,
            }),
        })
    }

    /// Subscribes to the change feed (write-through only) and loads every
    /// stored entry.
    async fn load_store(
        backend: &B,
        config: PipelineConfig,
    ) -> Result<(Cache<K, V>, Option<RemoteChanges<K>>)> {
        // Subscribe before loading: a change made between the load and the
        // subscription would otherwise never reach this cache. Write-behind
        // maps do not follow a feed (their cache may be ahead of the store).
        let feed = if config.behind_delay.is_none() {
            backend.watch().await?
        } else {
            None
        };
        let cache = Cache::default();
        // Entries that expired are left out of the cache (and swept).
        backend.load_with_expiry_into(&mut cache.loader()).await?;
        Ok((cache, feed))
    }

    fn pipeline(&self) -> &Pipeline<K, V> {
        &self.inner.pipeline
    }

    fn write_behind(&self) -> bool {
        self.pipeline().write_behind()
    }

    /// Inserts `value` under `key` and persists it; returns the value it replaced.
    ///
    /// # Errors
    ///
    /// When the backend refused the change; the map is then unchanged.
    /// Write-behind: when an earlier background write failed.
    ///
    /// With a default time to live ([`PersistentMapBuilder::default_ttl`]),
    /// the entry expires that long from now; otherwise it never expires,
    /// whatever deadline the replaced entry had.
    pub async fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        let deadline = self.pipeline().default_deadline();
        self.put(put_op(key, value, deadline)).await
    }

    /// Inserts `value` under `key`, to expire `ttl` from now; returns the
    /// value it replaced.
    ///
    /// The deadline is stored with the entry (as wall-clock time, in whole
    /// milliseconds), so it survives a restart and every instance sharing
    /// the store keeps it. Once it passes, the entry is gone from `get`,
    /// `contains_key`, `len`, iteration and transactions at once, on every
    /// clone and instance, even before the background sweep deletes it from
    /// the store ([`PersistentMapBuilder::sweep_interval`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use persistent_map_core::PersistentMap;
    /// use persistent_map_memory::InMemoryBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map_core::Result<()> {
    /// let sessions = PersistentMap::new(InMemoryBackend::new()).await?;
    /// sessions
    ///     .insert_with_ttl("token".to_string(), "alice".to_string(), Duration::from_secs(3600))
    ///     .await?;
    /// assert!(sessions.ttl("token") <= Some(Duration::from_secs(3600)));
    ///
    /// sessions.insert_with_ttl("once".to_string(), "bob".to_string(), Duration::ZERO).await?;
    /// assert_eq!(sessions.get("once"), None); // expired at once
    /// assert_eq!(sessions.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`PersistentError::Unsupported`] when the backend stores no deadlines
    /// ([`Capabilities::expiry`](crate::Capabilities)); otherwise as
    /// [`insert`](Self::insert).
    pub async fn insert_with_ttl(&self, key: K, value: V, ttl: Duration) -> Result<Option<V>> {
        self.require_expiry()?;
        self.put(put_op(key, value, deadline_in(ttl))).await
    }

    async fn put(&self, op: BatchOp<K, V>) -> Result<Option<V>> {
        if self.write_behind() {
            return self.pipeline().insert_behind(op).await;
        }
        self.commit_one(op).await
    }

    /// Makes the entry under `key` expire `ttl` from now, keeping its
    /// value; returns whether there was an entry.
    ///
    /// # Errors
    ///
    /// As [`insert_with_ttl`](Self::insert_with_ttl).
    pub async fn expire(&self, key: &K, ttl: Duration) -> Result<bool> {
        self.require_expiry()?;
        let deadline = deadline_in(ttl);
        self.set_deadline(key, deadline).await
    }

    /// Drops the expiry of the entry under `key`, so that it stays until
    /// removed; returns whether there was an entry. Writes nothing when the
    /// entry has no deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// use persistent_map_core::PersistentMap;
    /// use persistent_map_memory::InMemoryBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map_core::Result<()> {
    /// let map = PersistentMap::new(InMemoryBackend::new()).await?;
    /// map.insert("a".to_string(), 1_u32).await?;
    /// assert!(map.expire(&"a".to_string(), Duration::from_secs(60)).await?);
    /// assert!(map.ttl("a").is_some());
    /// assert!(map.persist(&"a".to_string()).await?);
    /// assert_eq!(map.ttl("a"), None);
    /// assert!(!map.persist(&"missing".to_string()).await?);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`insert_with_ttl`](Self::insert_with_ttl).
    pub async fn persist(&self, key: &K) -> Result<bool> {
        self.require_expiry()?;
        self.set_deadline(key, NEVER).await
    }

    async fn set_deadline(&self, key: &K, deadline: Deadline) -> Result<bool> {
        let kept = self
            .read_modify_write(key.clone(), move |_| Decision::SetDeadline(deadline))
            .await?;
        Ok(kept.is_some())
    }

    /// Deletes every entry whose deadline has passed, from the store and
    /// the cache, now rather than at the next background sweep
    /// ([`PersistentMapBuilder::sweep_interval`]); returns how many. Entries
    /// written again since they expired stay, in the store too (the
    /// deletes are conditional on the stored deadline). Write-behind: the
    /// deletes are queued like any change.
    ///
    /// # Errors
    ///
    /// As [`insert_with_ttl`](Self::insert_with_ttl); a batch deleted before
    /// the error stays deleted.
    pub async fn sweep_expired(&self) -> Result<usize> {
        self.require_expiry()?;
        let max_batch = self.pipeline().config.max_batch;
        let mut total = 0;
        loop {
            let swept = if self.write_behind() {
                self.pipeline().sweep_behind().await?
            } else {
                self.request(|reply| Command::Sweep(Some(reply))).await?
            };
            total += swept;
            if swept < max_batch {
                return Ok(total);
            }
        }
    }

    /// The time left before the entry under `key` expires: `None` when it
    /// has no deadline, or there is no such entry.
    pub fn ttl<Q>(&self, key: &Q) -> Option<Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.pipeline().cache.deadline(key)? {
            NEVER => None,
            // Whole milliseconds, as deadlines are kept: never more than
            // the time to live that was asked.
            deadline => Some(Duration::from_millis(deadline.saturating_sub(now()))),
        }
    }

    /// Removes `key` from the map and the store; returns the value it had.
    ///
    /// On a store this map holds exclusively (it takes a lock, as the CSV
    /// backend does), removing a key the map lacks writes nothing. On a store
    /// others may write, the removal is always written, so it also removes a
    /// row another instance added that this cache has not seen yet.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub async fn remove(&self, key: &K) -> Result<Option<V>> {
        if self.write_behind() {
            return self.pipeline().remove_behind(key.clone()).await;
        }
        self.commit_one(BatchOp::Delete { key: key.clone() }).await
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
    /// `body` holds no lock of the cache, so it may read the map, but no
    /// other write of this map can proceed while it runs: keep it short and
    /// do not block. If it panics, nothing of it is applied, the map carries
    /// on, and the panic resumes in the caller.
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
        if self.write_behind() {
            return self.pipeline().transaction_behind(body).await;
        }
        let (outcome_tx, outcome_rx) = oneshot::channel();
        let job: TxFn<K, V> = Box::new(move |tx| {
            let outcome = guarded(|| body(tx));
            let completed = outcome.is_ok();
            let _ = outcome_tx.send(outcome);
            completed
        });
        let committed = self.request(|reply| Command::Transaction(job, reply)).await;
        match outcome_rx.await {
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Ok(Ok(answer)) => committed.map(|()| answer),
            Err(_) => committed.and(Err(PersistentError::Closed)),
        }
    }

    /// Atomically replaces the value under `key` with what `f` returns for the
    /// current one (`None` removes the key); returns the new value.
    ///
    /// No other write of this key happens between reading the current value
    /// and storing the new one. `f` holds no lock of the cache, so it may read
    /// the map; if it panics, nothing is changed and the panic resumes in the
    /// caller.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert).
    pub async fn update<F>(&self, key: &K, f: F) -> Result<Option<V>>
    where
        F: FnOnce(Option<&V>) -> Option<V> + Send + 'static,
    {
        self.read_modify_write(key.clone(), move |current: Option<&V>| match f(current) {
            Some(value) => Decision::Put(value),
            None => Decision::Delete,
        })
        .await
    }

    /// Returns the value under `key`, first inserting `f()` if there is none.
    /// If `f` panics, nothing is changed and the panic resumes in the caller.
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
        let value = self
            .read_modify_write(key, move |current: Option<&V>| match current {
                Some(_) => Decision::Keep,
                None => Decision::Put(f()),
            })
            .await?;
        // Keep answers with the present value and Put with the new one.
        Ok(value.expect("get_or_insert_with always leaves a value"))
    }

    /// Returns a clone of the value under `key`, from the cache.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.pipeline().cache.get(key)
    }

    /// Returns whether `key` is in the map.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.pipeline().cache.contains_key(key)
    }

    /// Returns the number of entries.
    pub fn len(&self) -> usize {
        self.pipeline().cache.len()
    }

    /// Returns whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.pipeline().cache.is_empty()
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
        if self.write_behind() {
            return self.pipeline().clear_behind().await;
        }
        self.request(|reply| Command::Clear(Some(reply))).await
    }

    /// Removes every entry for which `keep` returns `false`, from the map and
    /// the store, as one batch; returns how many were removed.
    ///
    /// `keep` runs against a consistent view: no other write of this map is
    /// applied while it runs. It may read the map. If it panics, nothing is
    /// removed and the panic resumes in the caller.
    ///
    /// # Errors
    ///
    /// As [`insert_many`](Self::insert_many).
    pub async fn retain<F>(&self, keep: F) -> Result<usize>
    where
        F: FnMut(&K, &V) -> bool + Send + 'static,
    {
        if self.write_behind() {
            return self.pipeline().retain_behind(keep).await;
        }
        let (panic_tx, panic_rx) = oneshot::channel::<Panic>();
        let mut panic_tx = Some(panic_tx);
        let mut keep = keep;
        let guarded_keep: Keep<K, V> =
            Box::new(move |key, value| match guarded(|| keep(key, value)) {
                Ok(verdict) => Some(verdict),
                Err(panic) => {
                    if let Some(tx) = panic_tx.take() {
                        let _ = tx.send(panic);
                    }
                    None
                }
            });
        let removed = self
            .request(|reply| Command::Retain(guarded_keep, reply))
            .await;
        if let Ok(panic) = panic_rx.await {
            std::panic::resume_unwind(panic);
        }
        removed
    }

    /// Makes every change acknowledged before this call durable on the medium.
    ///
    /// # Errors
    ///
    /// When durability cannot be confirmed (never `Ok` after a failed sync),
    /// or, write-behind, when a background write failed since the map opened
    /// or was last reloaded.
    pub async fn flush(&self) -> Result<()> {
        self.pipeline().health.check()?;
        if self.pipeline().try_lead() {
            // Nothing is queued or being written: every acknowledged change
            // is in the backend, so the caller can flush it directly.
            return self
                .lead(|backend, pipeline| async move {
                    flush_backend(&*backend, &pipeline.stats).await
                })
                .await;
        }
        self.request(Command::Flush).await
    }

    /// Replaces the cache with what the store holds now, after every earlier
    /// write. Use it after another process wrote to a shared store, and to
    /// recover a write-behind map whose background write failed: it drops the
    /// changes that were not stored and accepts writes again.
    ///
    /// Writes of this map made after `reload` was called wait until it is
    /// done, even if the `reload` future is dropped.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new); the cache is then unchanged.
    pub async fn reload(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        if self.write_behind() {
            self.pipeline()
                .reload_behind(Command::Reload(reply))
                .await?;
        } else {
            self.pipeline().submit(Command::Reload(reply)).await?;
        }
        self.answer(answer).await
    }

    /// 0.1.x name of [`reload`](Self::reload).
    ///
    /// # Errors
    ///
    /// As [`reload`](Self::reload).
    pub async fn load(&self) -> Result<()> {
        self.reload().await
    }

    /// Flushes every change accepted so far, then stops the writer, for
    /// every clone of this map. Later writes and flushes return
    /// [`PersistentError::Closed`]; reads keep working. The backend is
    /// released (files, locks, pools) when the last clone is dropped.
    ///
    /// Closing a closed map does nothing and returns `Ok`.
    ///
    /// # Errors
    ///
    /// As [`flush`](Self::flush); the writer is stopped either way.
    pub async fn close(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let queued = {
            let pipeline = self.pipeline();
            let mut state = pipeline.lock();
            if state.closing {
                false
            } else {
                state.closing = true;
                pipeline.enqueue(&mut state, Command::Close(reply), true);
                true
            }
        };
        let flushed = if queued {
            match answer.await {
                Ok(result) => result,
                Err(_) => Err(self.pipeline().gone().await),
            }
        } else {
            Err(self.pipeline().gone().await)
        };
        // Once this returns the writer has let go of the backend.
        self.pipeline().health.wait_stopped().await;
        match flushed {
            Err(PersistentError::Closed) => Ok(()),
            other => other,
        }
    }

    /// Whether the map was closed (by any clone), or its writer stopped.
    pub fn is_closed(&self) -> bool {
        self.pipeline().health.is_stopped() || self.pipeline().lock().closing
    }

    /// Write-behind: the number of changes accepted but not yet covered by a
    /// successful flush. Always 0 in write-through mode.
    pub fn unflushed(&self) -> u64 {
        self.pipeline().health.unflushed()
    }

    /// Subscribes to this map's changes: the stream yields a
    /// [`MapEvent`](crate::MapEvent) for each change applied from now on,
    /// in the order the map applied them, and ends once the map is closed
    /// (or its last handle dropped) and the events published before were
    /// read. See [Subscriptions](Self#subscriptions) for what an event
    /// promises in each mode.
    ///
    /// A subscription never slows the map: one that falls more than
    /// [`event_capacity`](PersistentMapBuilder::event_capacity) events behind
    /// loses the oldest, then yields [`MapEvent::Lagged`](crate::MapEvent::Lagged)
    /// with how many it lost, and goes on from the present. While nobody is
    /// subscribed, writes build no events at all.
    ///
    /// ```
    /// use futures::StreamExt as _;
    /// use persistent_map_core::{MapEvent, Origin, PersistentMap};
    /// use persistent_map_memory::InMemoryBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map_core::Result<()> {
    /// let map = PersistentMap::new(InMemoryBackend::new()).await?;
    /// let mut events = map.subscribe();
    /// map.insert("alice".to_string(), 30_u32).await?;
    /// map.insert("alice".to_string(), 31).await?;
    /// map.remove(&"alice".to_string()).await?;
    /// map.close().await?;
    ///
    /// let local = Origin::Local;
    /// let key = || "alice".to_string();
    /// assert_eq!(
    ///     events.collect::<Vec<_>>().await,
    ///     [
    ///         MapEvent::Inserted { key: key(), old: None, value: 30, origin: local },
    ///         MapEvent::Inserted { key: key(), old: Some(30), value: 31, origin: local },
    ///         MapEvent::Removed { key: key(), old: Some(31), origin: local },
    ///     ]
    /// );
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe(&self) -> Subscription<K, V> {
        self.pipeline().events.subscribe()
    }

    /// A snapshot of what the map did since it opened: entries, commits and
    /// batch sizes, queue depth, unflushed changes, write errors, remote
    /// changes followed, resyncs and the time since the last flush. See
    /// [`MapStats`] for what each figure counts.
    ///
    /// Cheap: it reads counters, holding no lock across anything slow, and
    /// never waits for the writer.
    ///
    /// ```
    /// use persistent_map_core::PersistentMap;
    /// use persistent_map_memory::InMemoryBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map_core::Result<()> {
    /// let map = PersistentMap::new(InMemoryBackend::new()).await?;
    /// assert_eq!(map.stats().since_last_flush, None);
    /// map.insert(1_u64, "one".to_string()).await?;
    /// map.flush().await?;
    /// let stats = map.stats();
    /// assert_eq!((stats.entries, stats.commits, stats.changes_written), (1, 1, 1));
    /// assert!(stats.since_last_flush.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> MapStats {
        self.pipeline().snapshot()
    }

    /// The map's name, set with [`PersistentMapBuilder::name`]
    /// (default [`DEFAULT_MAP_NAME`](crate::DEFAULT_MAP_NAME)).
    pub fn name(&self) -> &str {
        self.pipeline().stats.name()
    }

    /// When an acknowledged change of this map survives a power cut, as its
    /// backend declares it: at once ([`Durability::OnAcknowledge`]), after a
    /// [`flush`](Self::flush) ([`Durability::OnFlush`]), or never by this
    /// map's doing ([`Durability::ServerManaged`], [`Durability::Volatile`]).
    /// Write-behind maps add their own delay: a change counts once it is
    /// flushed.
    ///
    /// ```
    /// use persistent_map_core::{Durability, PersistentMap};
    /// use persistent_map_memory::InMemoryBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map_core::Result<()> {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::new(InMemoryBackend::new()).await?;
    /// assert_eq!(map.durability(), Durability::Volatile);
    /// # Ok(())
    /// # }
    /// ```
    pub fn durability(&self) -> Durability {
        self.inner.backend.capabilities().durability
    }

    /// The backend, for backend-specific calls.
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    /// Clones of every key, from a snapshot of the cache.
    pub fn keys(&self) -> std::vec::IntoIter<K> {
        let mut keys = Vec::with_capacity(self.len());
        self.for_each(|key, _| keys.push(key.clone()));
        keys.into_iter()
    }

    /// Clones of every value, from a snapshot of the cache.
    pub fn values(&self) -> std::vec::IntoIter<V> {
        let mut values = Vec::with_capacity(self.len());
        self.for_each(|_, value| values.push(value.clone()));
        values.into_iter()
    }

    /// Owned `(key, value)` pairs of a snapshot of the cache. No lock is held
    /// once this returns, so the iterator can be used across `.await`.
    pub fn iter(&self) -> std::vec::IntoIter<(K, V)> {
        let mut entries = Vec::with_capacity(self.len());
        self.for_each(|key, value| entries.push((key.clone(), value.clone())));
        entries.into_iter()
    }

    /// Calls `f` on every entry without cloning. `f` runs while a shard of the
    /// cache is read-locked: it may read the map, but must not wait for a
    /// write of this map.
    pub fn for_each(&self, f: impl FnMut(&K, &V)) {
        self.pipeline().cache.for_each(f);
    }

    fn require_expiry(&self) -> Result<()> {
        if self.pipeline().expiry {
            Ok(())
        } else {
            Err(self.pipeline().expiry_unsupported())
        }
    }

    fn require_atomic(&self) -> Result<()> {
        if self.inner.backend.capabilities().atomic_batch {
            Ok(())
        } else {
            Err(PersistentError::Unsupported {
                backend: std::any::type_name::<B>(),
                feature: "atomic batches",
            })
        }
    }

    async fn commit_one(&self, op: BatchOp<K, V>) -> Result<Option<V>> {
        if self.pipeline().try_lead() {
            return self.commit_led(op).await;
        }
        self.request(|reply| {
            Command::Commit(Unit {
                ops: vec![op],
                waiter: Waiter::One(reply),
            })
        })
        .await
    }

    /// Commits `op` in the caller's task, which [`Pipeline::try_lead`] made
    /// the only writer for now: the same steps as the writer task's, without
    /// the two hand-offs.
    async fn commit_led(&self, op: BatchOp<K, V>) -> Result<Option<V>> {
        if let BatchOp::Delete { key } = &op {
            let pipeline = self.pipeline();
            if pipeline.exclusive && !pipeline.cache.contains_key(key) {
                // The store is this map's alone and lacks the key.
                pipeline.end_lead();
                return Ok(None);
            }
        }
        self.lead(|backend, pipeline| async move {
            write_batch(&*backend, std::slice::from_ref(&op), &pipeline.stats)
                .await
                .map(|()| pipeline.apply(op))
        })
        .await
    }

    /// Runs `work` as the leader [`Pipeline::try_lead`] made the caller,
    /// then hands over to the writer task. The work finishes even if this
    /// future is dropped (it is then spawned), so a commit is never cut off.
    async fn lead<T, W, F>(&self, work: W) -> Result<T>
    where
        T: Send + 'static,
        W: FnOnce(Arc<B>, Arc<Pipeline<K, V>>) -> F,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let pipeline = Arc::clone(&self.inner.pipeline);
        let abandoned = Arc::clone(&pipeline);
        let work = work(Arc::clone(&self.inner.backend), Arc::clone(&pipeline));
        Detached::new(
            async move {
                let answer = work.await;
                pipeline.end_lead();
                #[cfg(feature = "metrics")]
                pipeline.publish_gauges();
                answer
            },
            move || abandoned.abandoned_lead(),
        )
        .await
    }

    async fn write_many(&self, ops: Vec<BatchOp<K, V>>) -> Result<Vec<Option<V>>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let ops = self.pipeline().stamp_all(ops);
        self.pipeline().require_expiry(&ops)?;
        if self.write_behind() {
            return self.pipeline().many_behind(ops).await;
        }
        self.request(|reply| {
            Command::Commit(Unit {
                ops,
                waiter: Waiter::Many(reply),
            })
        })
        .await
    }

    async fn read_modify_write(
        &self,
        key: K,
        decide: impl FnOnce(Option<&V>) -> Decision<V> + Send + 'static,
    ) -> Result<Option<V>> {
        if self.write_behind() {
            return self.pipeline().update_behind(key, decide).await;
        }
        let (panic_tx, panic_rx) = oneshot::channel::<Panic>();
        let guarded_decide: UpdateFn<V> = Box::new(move |current| {
            guarded(|| decide(current)).unwrap_or_else(|panic| {
                let _ = panic_tx.send(panic);
                Decision::Keep
            })
        });
        let stored = self
            .request(|reply| Command::Update(key, guarded_decide, reply))
            .await;
        if let Ok(panic) = panic_rx.await {
            std::panic::resume_unwind(panic);
        }
        stored
    }

    /// Queues a command someone waits for and waits for its answer.
    async fn request<T>(&self, command: impl FnOnce(Reply<T>) -> Command<K, V>) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.pipeline().submit(command(reply)).await?;
        self.answer(answer).await
    }

    async fn answer<T>(&self, answer: oneshot::Receiver<Result<T>>) -> Result<T> {
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(self.pipeline().gone().await),
        }
    }
}

impl<K, V, B> Drop for Inner<K, V, B> {
    fn drop(&mut self) {
        let unflushed = self.pipeline.health.unflushed();
        if self.pipeline.write_behind() && unflushed > 0 && !self.pipeline.health.is_stopped() {
            tracing::warn!(
                unflushed,
                "write-behind map dropped with changes not yet flushed; they are written \
                 only while the runtime keeps running: call close().await to keep them"
            );
        }
        self.pipeline.handles_dropped(Arc::clone(&self.keepalive));
    }
}

impl<K, V, B> fmt::Debug for PersistentMap<K, V, B>
where
    K: Eq + Hash,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentMap")
            .field("len", &self.inner.pipeline.cache.len())
            .field("backend", &std::any::type_name::<B>())
            .field("write_behind", &self.inner.pipeline.write_behind())
            .field("name", &self.inner.pipeline.stats.name())
            .finish_non_exhaustive()
    }
}
