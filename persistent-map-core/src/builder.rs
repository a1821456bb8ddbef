//! Options for opening a [`PersistentMap`].

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::StorageBackend;
use crate::error::Result;
use crate::map::PersistentMap;
use crate::queue::PipelineConfig;
use crate::stats::DEFAULT_MAP_NAME;

/// The default upper bound on changes per backend batch.
pub const DEFAULT_MAX_BATCH: usize = 1024;

/// The default bound on changes queued and not yet settled, in both modes.
pub const DEFAULT_MAX_PENDING: usize = 100_000;

/// How often, by default, the background sweep deletes expired entries
/// ([`PersistentMapBuilder::sweep_interval`]).
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The default number of events a subscription may fall behind by before
/// it loses the oldest ([`PersistentMapBuilder::event_capacity`]).
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// Write-behind mode: writes return as soon as the cache is updated and the
/// change is queued; a background task persists queued changes in batches.
///
/// What it guarantees:
///
/// * Every change covered by a [`flush`](PersistentMap::flush) that returned
///   `Ok` is durable. Changes after the last flush may be lost in a crash, but
///   only as a suffix: the store never keeps a later change without an earlier
///   one.
/// * The queue is bounded ([`max_pending`](Self::max_pending)): a writer
///   faster than the disk waits for room instead of growing memory.
/// * The cache and the store see the same changes in the same order:
///   `transaction`, `update`, `retain` and `clear` apply to the cache at
///   once, like `insert`, and later writes decide on what they left.
/// * A background write error is never swallowed: the next `flush` and every
///   later write return it, and nothing queued after it is persisted (that
///   would leave a hole). [`reload`](PersistentMap::reload) brings the cache
///   back to what the store holds and accepts writes again.
/// * [`close`](PersistentMap::close) flushes and stops the task. Dropping
///   the last handle of a map with unflushed changes logs a warning; the
///   queued changes are still written while the runtime keeps running.
///
/// ```
/// use std::time::Duration;
/// use persistent_map_core::WriteBehind;
///
/// let mode = WriteBehind::new()
///     .max_delay(Duration::from_millis(20))
///     .max_pending(50_000);
/// assert_eq!(mode.delay(), Duration::from_millis(20));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteBehind {
    max_delay: Duration,
    max_pending: Option<usize>,
}

impl WriteBehind {
    /// Defaults: batches written at most 10 ms after their first change, at
    /// most [`PersistentMapBuilder::max_pending`] changes queued.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            max_delay: Duration::from_millis(10),
            max_pending: None,
        }
    }

    /// How long the writer waits for more changes before it writes a batch
    /// that is not full (the batch size limit is
    /// [`PersistentMapBuilder::max_batch`]). [`Duration::MAX`] means no
    /// limit: a batch is written when it is full or when someone waits
    /// (`flush`, `close`, `reload`).
    #[must_use]
    pub const fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// How many changes may wait in the queue before writers wait for room
    /// (values below 1 count as 1). A single write larger than the room left
    /// (an `insert_many`, a transaction) is admitted whole once the queue is
    /// below the bound. Overrides [`PersistentMapBuilder::max_pending`].
    #[must_use]
    pub const fn max_pending(mut self, changes: usize) -> Self {
        self.max_pending = Some(if changes == 0 { 1 } else { changes });
        self
    }

    /// The configured delay.
    #[must_use]
    pub const fn delay(&self) -> Duration {
        self.max_delay
    }

    /// The queue bound set with [`max_pending`](Self::max_pending), if any.
    #[must_use]
    pub const fn pending(&self) -> Option<usize> {
        self.max_pending
    }
}

impl Default for WriteBehind {
    fn default() -> Self {
        Self::new()
    }
}

/// Options for opening a [`PersistentMap`]; start with [`PersistentMap::builder`].
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct PersistentMapBuilder<K, V, B> {
    backend: B,
    max_batch: usize,
    max_pending: usize,
    write_behind: Option<WriteBehind>,
    name: String,
    default_ttl: Option<Duration>,
    sweep_interval: Duration,
    event_capacity: usize,
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
            max_batch: DEFAULT_MAX_BATCH,
            max_pending: DEFAULT_MAX_PENDING,
            write_behind: None,
            name: String::from(DEFAULT_MAP_NAME),
            default_ttl: None,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            _types: PhantomData,
        }
    }

    /// The most changes the writer hands the backend in one batch
    /// (default [`DEFAULT_MAX_BATCH`]; values below 1 count as 1). A single
    /// `insert_many`, `apply` or transaction is never split.
    pub fn max_batch(mut self, changes: usize) -> Self {
        self.max_batch = changes.max(1);
        self
    }

    /// How many changes may wait in the queue, in either mode, before
    /// writers wait for room (default [`DEFAULT_MAX_PENDING`]; values below
    /// 1 count as 1). In write-through mode callers wait for their own
    /// change anyway, so only many concurrent or cancelled calls reach it.
    /// A single write larger than the room left is admitted whole once the
    /// queue is below the bound.
    pub fn max_pending(mut self, changes: usize) -> Self {
        self.max_pending = changes.max(1);
        self
    }

    /// Write-through (the default): every write returns once the backend
    /// accepted it.
    pub fn write_through(mut self) -> Self {
        self.write_behind = None;
        self
    }

    /// Write-behind: writes return once queued; see [`WriteBehind`].
    pub fn write_behind(mut self, mode: WriteBehind) -> Self {
        self.write_behind = Some(mode);
        self
    }

    /// The map's name (default [`DEFAULT_MAP_NAME`], `"default"`): the `map`
    /// field of its `tracing` spans and, with the `metrics` feature, the
    /// `map` label of its metrics. Give each map of a process its own name
    /// to tell their figures apart.
    ///
    /// ```
    /// use persistent_map_core::PersistentMap;
    /// use persistent_map_memory::InMemoryBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map_core::Result<()> {
    /// let map: PersistentMap<String, u32, _> = PersistentMap::builder(InMemoryBackend::new())
    ///     .name("sessions")
    ///     .build()
    ///     .await?;
    /// assert_eq!(map.name(), "sessions");
    /// # Ok(())
    /// # }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Gives every entry written without a time to live (`insert`,
    /// `insert_many`, `extend`, batches, transactions, and entries created by
    /// `update` or `get_or_insert_with`) this one. An `update` of an existing
    /// entry keeps its deadline; [`PersistentMap::persist`] drops it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use persistent_map_core::PersistentMap;
    /// use persistent_map_memory::InMemoryBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map_core::Result<()> {
    /// let cache = PersistentMap::builder(InMemoryBackend::new())
    ///     .default_ttl(Duration::from_secs(300))
    ///     .build()
    ///     .await?;
    /// cache.insert("GET /users".to_string(), "[...]".to_string()).await?;
    /// assert!(cache.ttl("GET /users").is_some());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Opening fails with [`PersistentError::Unsupported`](crate::PersistentError::Unsupported)
    /// when the backend stores no deadlines.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// How often the background sweep deletes expired entries from the
    /// store and the cache (default [`DEFAULT_SWEEP_INTERVAL`]). Expired
    /// entries are invisible from their deadline on whatever this is; it
    /// only bounds how long they take room. Each sweep deletes at most
    /// [`max_batch`](Self::max_batch) entries, in one batch through the
    /// write pipeline.
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How many events a [`subscribe`](PersistentMap::subscribe)r may fall
    /// behind by before it loses the oldest (default
    /// [`DEFAULT_EVENT_CAPACITY`]; values below 1 count as 1, and the
    /// buffer is rounded up to a power of two). Writers never wait for a
    /// subscriber: one that falls further behind gets a
    /// [`MapEvent::Lagged`](crate::MapEvent::Lagged) and goes on from the
    /// present. The buffer, one slot per event, is shared by every
    /// subscription of the map and allocated on the first `subscribe`.
    ///
    /// ```
    /// use persistent_map_core::{MapEvent, PersistentMap};
    /// use persistent_map_memory::InMemoryBackend;
    /// use futures::StreamExt as _;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> persistent_map_core::Result<()> {
    /// let map = PersistentMap::builder(InMemoryBackend::new())
    ///     .event_capacity(2)
    ///     .build()
    ///     .await?;
    /// let mut events = map.subscribe();
    /// for n in 0..5_u32 {
    ///     map.insert(n, n).await?; // never waits for the subscriber
    /// }
    /// assert_eq!(events.next().await, Some(MapEvent::Lagged { missed: 5 }));
    /// # Ok(())
    /// # }
    /// ```
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.event_capacity = events.clamp(1, usize::MAX >> 1);
        self
    }

    /// Opens the map: loads every stored entry and starts the writer task.
    ///
    /// # Errors
    ///
    /// As [`PersistentMap::new`]; [`PersistentError::Unsupported`](crate::PersistentError::Unsupported)
    /// for a [`default_ttl`](Self::default_ttl) on a backend that stores no
    /// deadlines.
    pub async fn build(self) -> Result<PersistentMap<K, V, B>> {
        if self.default_ttl.is_some() && !self.backend.capabilities().expiry {
            return Err(crate::PersistentError::Unsupported {
                backend: std::any::type_name::<B>(),
                feature: "expiry",
            });
        }
        let config = PipelineConfig {
            max_batch: self.max_batch,
            max_pending: self
                .write_behind
                .and_then(|mode| mode.max_pending)
                .unwrap_or(self.max_pending),
            behind_delay: self.write_behind.map(|mode| mode.max_delay),
            default_ttl: self.default_ttl,
            sweep_interval: self.sweep_interval,
            event_capacity: self.event_capacity,
        };
        PersistentMap::open(self.backend, config, self.name.into()).await
    }
}

impl<K, V, B> fmt::Debug for PersistentMapBuilder<K, V, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentMapBuilder")
            .field("backend", &std::any::type_name::<B>())
            .field("max_batch", &self.max_batch)
            .field("max_pending", &self.max_pending)
            .field("write_behind", &self.write_behind)
            .field("name", &self.name)
            .field("default_ttl", &self.default_ttl)
            .field("sweep_interval", &self.sweep_interval)
            .field("event_capacity", &self.event_capacity)
            .finish()
    }
}
