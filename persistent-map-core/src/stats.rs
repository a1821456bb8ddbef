//! What a map did: counters kept by the code that talks to the backend (the
//! writer task, or a caller leading its own commit), read as a [`MapStats`]
//! snapshot and, with the `metrics` feature, sent to the `metrics` facade.
//!
//! Counters are bumped once per backend call, never once per caller, and
//! only by the one task writing at a time, so callers never contend on them.
//! They sit on their own cache lines, away from the queue's counters that
//! every caller bumps.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::backend::{BatchOp, Durability, StorageBackend};
use crate::closure::guard_backend;
use crate::error::{ErrorKind, PersistentError, Result};
use crate::outcome::settle_unknown;
use crate::queue::Pipeline;

/// The map name used when [`PersistentMapBuilder::name`] was not called.
///
/// [`PersistentMapBuilder::name`]: crate::PersistentMapBuilder::name
pub const DEFAULT_MAP_NAME: &str = "default";

/// A snapshot of what a map did since it was opened, from
/// [`PersistentMap::stats`](crate::PersistentMap::stats).
///
/// Every counter starts at zero when the map opens and only grows; each
/// handle (clone) of a map reads the same counters. A backend *batch* is one
/// [`StorageBackend::apply_batch`] call made by the map; a *change* is one
/// put or delete in it.
///
/// New fields may be added in minor releases, so the struct cannot be built or
/// matched exhaustively outside this crate.
///
/// ```
/// use persistent_map_core::PersistentMap;
/// use persistent_map_memory::InMemoryBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> persistent_map_core::Result<()> {
/// let map = PersistentMap::builder(InMemoryBackend::new())
///     .name("sessions")
///     .build()
///     .await?;
/// map.insert("a".to_string(), 1_u32).await?;
/// map.extend([("b".to_string(), 2), ("c".to_string(), 3)]).await?;
/// map.flush().await?;
///
/// let stats = map.stats();
/// assert_eq!(stats.entries, 3);
/// assert_eq!(stats.commits, 2); // one batch per call: a lone writer shares nothing
/// assert_eq!(stats.changes_written, 3);
/// assert_eq!(stats.max_batch, 2);
/// assert_eq!(stats.mean_batch, 1.5);
/// assert_eq!(stats.write_errors, 0);
/// assert_eq!(stats.unflushed, 0);
/// assert!(stats.since_last_flush.is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MapStats {
    /// Entries in the map (in its cache) now.
    pub entries: usize,
    /// Backend batches written successfully, by the writer task or by a
    /// caller that committed its own change. A batch that failed and was
    /// replayed unit by unit counts once per replayed part that succeeded.
    pub commits: u64,
    /// Changes (puts and deletes) in those batches. A `clear` writes no
    /// batch and is not counted here.
    pub changes_written: u64,
    /// `changes_written / commits`: how many changes the average batch
    /// carried (group commit and write-behind make it grow); 0 before the
    /// first commit.
    pub mean_batch: f64,
    /// The most changes one batch carried.
    pub max_batch: u64,
    /// Changes (and other requests, such as flushes) queued for the writer
    /// task or being written by it, not yet settled. A caller that commits
    /// its own change on an idle map adds nothing here.
    pub queue_depth: u64,
    /// Changes acknowledged to callers that a [`flush`] would still have to
    /// make durable, in the meaning of the backend's declared
    /// [`Durability`]:
    ///
    /// * write-behind: changes accepted since the map opened (or was last
    ///   reloaded) and not yet covered by a successful flush, whatever the
    ///   durability, since a flush is what writes them out; the same figure
    ///   as [`PersistentMap::unflushed`];
    /// * write-through on a [`Durability::OnFlush`] or
    ///   [`Durability::Undeclared`] backend: changes written since the start
    ///   of the last successful flush (they survive a process crash, not a
    ///   power cut);
    /// * write-through on a [`Durability::OnAcknowledge`],
    ///   [`Durability::ServerManaged`] or [`Durability::Volatile`] backend:
    ///   always 0, since a flush cannot make an acknowledged change any more
    ///   durable than it already is.
    ///
    /// [`flush`]: crate::PersistentMap::flush
    /// [`PersistentMap::unflushed`]: crate::PersistentMap::unflushed
    pub unflushed: u64,
    /// Backend calls that failed while writing: a batch (after a write whose
    /// outcome was lost was read back and found missing), a `clear` or a
    /// `flush`. A failed batch that is then replayed unit by unit counts
    /// once, plus once per replayed part that fails again.
    pub write_errors: u64,
    /// The [`ErrorKind`] of the most recent of those failures.
    pub last_error_kind: Option<ErrorKind>,
    /// Entries refreshed in the cache because another instance changed them
    /// in a shared store (announced through [`StorageBackend::watch`]).
    pub remote_changes_applied: u64,
    /// Times the whole cache was replaced with what the store holds: a
    /// [`reload`](crate::PersistentMap::reload) call, or a resync after the
    /// change feed lost notifications or a refresh failed.
    pub resyncs: u64,
    /// Entries whose deadline passed that the sweep deleted from the store
    /// and the cache (see [`PersistentMap::insert_with_ttl`]).
    ///
    /// [`PersistentMap::insert_with_ttl`]: crate::PersistentMap::insert_with_ttl
    pub expired_swept: u64,
    /// Time since the last successful flush of the backend (by
    /// [`flush`](crate::PersistentMap::flush) or
    /// [`close`](crate::PersistentMap::close)); `None` before the first.
    pub since_last_flush: Option<Duration>,
}

/// The counters of one map.
// Aligned so that these counters, bumped by the one writing task, do not
// share a cache line with the queue's counters that every caller bumps.
#[repr(align(128))]
pub(crate) struct Stats {
    name: Arc<str>,
    durability: Durability,
    opened: Instant,
    commits: AtomicU64,
    changes_written: AtomicU64,
    max_batch: AtomicU64,
    write_errors: AtomicU64,
    last_error: Mutex<Option<ErrorKind>>,
    remote_applied: AtomicU64,
    resyncs: AtomicU64,
    expired_swept: AtomicU64,
    /// `changes_written` as it was when the last successful flush started.
    flushed_through: AtomicU64,
    /// Nanoseconds from `opened` to the end of the last successful flush,
    /// plus one; 0 means never.
    last_flush: AtomicU64,
    #[cfg(feature = "metrics")]
    pub(crate) telemetry: crate::telemetry::Telemetry,
}

impl Stats {
    pub(crate) fn new(name: Arc<str>, durability: Durability) -> Self {
        Self {
            #[cfg(feature = "metrics")]
            telemetry: crate::telemetry::Telemetry::new(&name),
            name,
            durability,
            opened: Instant::now(),
            commits: AtomicU64::new(0),
            changes_written: AtomicU64::new(0),
            max_batch: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            remote_applied: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            expired_swept: AtomicU64::new(0),
            flushed_through: AtomicU64::new(0),
            last_flush: AtomicU64::new(0),
        }
    }

    /// The map's name, for spans and metric labels.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A clock for a backend call, only when something will read it: a
    /// span that is enabled, or the `metrics` feature's histogram. Reading
    /// the clock is not free, and most maps have neither.
    fn timer(span: &tracing::Span) -> Option<Instant> {
        (cfg!(feature = "metrics") || !span.is_disabled()).then(Instant::now)
    }

    fn batch_written(&self, changes: usize, elapsed: Option<Duration>) {
        let changes = changes as u64;
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.changes_written.fetch_add(changes, Ordering::Relaxed);
        // A plain load first: the maximum rarely changes, and `fetch_max` is
        // a compare-and-swap loop on most targets.
        if changes > self.max_batch.load(Ordering::Relaxed) {
            self.max_batch.fetch_max(changes, Ordering::Relaxed);
        }
        #[cfg(feature = "metrics")]
        self.telemetry.batch_written(changes, elapsed);
        #[cfg(not(feature = "metrics"))]
        let _ = elapsed;
    }

    /// Counts a backend call that failed while writing.
    pub(crate) fn write_failed(&self, err: &PersistentError) {
        let kind = err.kind();
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(kind);
        #[cfg(feature = "metrics")]
        self.telemetry.write_failed(&self.name, kind);
    }

    fn flushed(&self, covered: u64) {
        self.flushed_through.fetch_max(covered, Ordering::Relaxed);
        let since_open = u64::try_from(self.opened.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_flush.store(since_open + 1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.telemetry.flushed();
    }

    /// Counts entries refreshed from a shared store.
    pub(crate) fn remote_applied(&self, entries: usize) {
        self.remote_applied
            .fetch_add(entries as u64, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.telemetry.remote_applied(entries as u64);
    }

    /// Counts a replacement of the whole cache.
    pub(crate) fn resynced(&self) {
        self.resyncs.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.telemetry.resynced();
    }

    /// Counts entries deleted by the expiry sweep.
    pub(crate) fn expired_swept(&self, entries: u64) {
        if entries == 0 {
            return;
        }
        self.expired_swept.fetch_add(entries, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        self.telemetry.expired_swept(entries);
    }

    fn since_last_flush(&self) -> Option<Duration> {
        match self.last_flush.load(Ordering::Relaxed) {
            0 => None,
            at => Some(
                self.opened
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(at - 1)),
            ),
        }
    }

    /// Write-through changes a flush would still make durable.
    fn unflushed_through(&self) -> u64 {
        match self.durability {
            Durability::OnFlush | Durability::Undeclared => self
                .changes_written
                .load(Ordering::Relaxed)
                .saturating_sub(self.flushed_through.load(Ordering::Relaxed)),
            Durability::OnAcknowledge | Durability::ServerManaged | Durability::Volatile => 0,
        }
    }
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats")
            .field("name", &self.name)
            .field("commits", &self.commits)
            .field("changes_written", &self.changes_written)
            .finish_non_exhaustive()
    }
}

impl<K, V> Pipeline<K, V>
where
    K: Eq + std::hash::Hash,
{
    /// Reads every counter; holds no lock but, briefly, the one around the
    /// last error's kind and a read lock of each cache shard in turn.
    pub(crate) fn snapshot(&self) -> MapStats {
        let stats = &self.stats;
        let commits = stats.commits.load(Ordering::Relaxed);
        let changes_written = stats.changes_written.load(Ordering::Relaxed);
        MapStats {
            entries: self.cache.len(),
            commits,
            changes_written,
            mean_batch: if commits == 0 {
                0.0
            } else {
                changes_written as f64 / commits as f64
            },
            max_batch: stats.max_batch.load(Ordering::Relaxed),
            queue_depth: self.queue_depth(),
            unflushed: self.unflushed(),
            write_errors: stats.write_errors.load(Ordering::Relaxed),
            last_error_kind: *stats.last_error.lock().unwrap_or_else(|p| p.into_inner()),
            remote_changes_applied: stats.remote_applied.load(Ordering::Relaxed),
            resyncs: stats.resyncs.load(Ordering::Relaxed),
            expired_swept: stats.expired_swept.load(Ordering::Relaxed),
            since_last_flush: stats.since_last_flush(),
        }
    }

    /// [`MapStats::unflushed`].
    pub(crate) fn unflushed(&self) -> u64 {
        if self.write_behind() {
            self.health.unflushed()
        } else {
            self.stats.unflushed_through()
        }
    }

    /// Sends the gauges (entries, queue depth, unflushed) to the `metrics`
    /// facade; called after each command the writer settles and each commit
    /// a caller leads.
    #[cfg(feature = "metrics")]
    pub(crate) fn publish_gauges(&self) {
        self.stats
            .telemetry
            .gauges(self.cache.len(), self.queue_depth(), self.unflushed());
    }
}

/// Hands `ops` to the backend as one batch, inside a `commit` span; a write
/// whose outcome was lost is read back to find out whether it happened.
/// Counts the outcome.
pub(crate) async fn write_batch<K, V, B>(
    backend: &B,
    ops: &[BatchOp<K, V>],
    stats: &Stats,
) -> Result<()>
where
    K: Eq + std::hash::Hash + Clone + serde::Serialize + serde::de::DeserializeOwned,
    K: Send + Sync + 'static,
    V: Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Sync + ?Sized,
{
    // Most maps run with no subscriber listening at debug level: their
    // commits build no span at all, and the traced path, boxed, does not
    // enlarge this future (even a disabled span, entered and left around
    // the commit, cost about 15% of an in-memory insert).
    if tracing::enabled!(tracing::Level::DEBUG) {
        return Box::pin(write_batch_traced(backend, ops, stats)).await;
    }
    let started = cfg!(feature = "metrics").then(Instant::now);
    let result = guard_backend(backend.apply_batch(ops), "apply a batch").await;
    let result = settle_unknown(backend, ops, result).await;
    count_batch(stats, ops.len(), started.map(|s| s.elapsed()), &result);
    result
}

/// [`write_batch`] inside its `commit` span.
async fn write_batch_traced<K, V, B>(
    backend: &B,
    ops: &[BatchOp<K, V>],
    stats: &Stats,
) -> Result<()>
where
    K: Eq + std::hash::Hash + Clone + serde::Serialize + serde::de::DeserializeOwned,
    K: Send + Sync + 'static,
    V: Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Sync + ?Sized,
{
    let span = tracing::debug_span!(
        "persistent_map.commit",
        map = stats.name(),
        batch = ops.len(),
        duration_us = tracing::field::Empty,
    );
    let started = Stats::timer(&span);
    let result = async {
        let result = guard_backend(backend.apply_batch(ops), "apply a batch").await;
        settle_unknown(backend, ops, result).await
    }
    .instrument(span.clone())
    .await;
    let elapsed = started.map(|started| started.elapsed());
    if let Some(elapsed) = elapsed {
        span.record("duration_us", micros(elapsed));
    }
    count_batch(stats, ops.len(), elapsed, &result);
    result
}

fn count_batch(stats: &Stats, changes: usize, elapsed: Option<Duration>, result: &Result<()>) {
    match result {
        Ok(()) => stats.batch_written(changes, elapsed),
        Err(err) => stats.write_failed(err),
    }
}

/// Flushes the backend inside a `flush` span and counts the outcome.
pub(crate) async fn flush_backend<K, V, B>(backend: &B, stats: &Stats) -> Result<()>
where
    K: Eq + std::hash::Hash + Clone + serde::Serialize + serde::de::DeserializeOwned,
    K: Send + Sync + 'static,
    V: Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Sync + ?Sized,
{
    // Everything written before the flush starts is covered by it.
    let covered = stats.changes_written.load(Ordering::Relaxed);
    let span = tracing::debug_span!(
        "persistent_map.flush",
        map = stats.name(),
        duration_us = tracing::field::Empty,
    );
    let started = Stats::timer(&span);
    let work = guard_backend(backend.flush(), "flush");
    let result = if span.is_disabled() {
        work.await
    } else {
        work.instrument(span.clone()).await
    };
    if let Some(started) = started {
        span.record("duration_us", micros(started.elapsed()));
    }
    match &result {
        Ok(()) => stats.flushed(covered),
        Err(err) => stats.write_failed(err),
    }
    result
}

/// Whole microseconds, saturating, for span fields.
pub(crate) fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}
