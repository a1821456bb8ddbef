//! The ordered queue every change of a map goes through, shared by the
//! map's handles (which push) and its writer task (which drains).
//!
//! One lock orders everything: a change is queued, and in write-behind mode
//! also applied to the cache, inside one critical section, so the cache and
//! the store see the same changes in the same order in both modes. The lock
//! is a plain mutex held for a few map operations, never across an `.await`.
//!
//! The queue is bounded in both modes: a writer waits (asynchronously, before
//! it takes the lock) while the changes queued and not yet settled reach the
//! bound. A single write larger than the room left is admitted whole once the
//! queue is below the bound, so a large transaction can never wait forever.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::backend::BatchOp;
use crate::batch::Transaction;
pub(crate) use crate::cache::Cache;
use crate::cache::{deadline_in, millis_of, time_of, Deadline, NEVER};
use crate::error::{PersistentError, Result};
use crate::events::{Events, Origin};
use crate::health::Health;
use crate::stats::Stats;

/// A reply channel for one caller.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// A `retain` predicate run by the writer; `None` means it panicked and the
/// whole call is abandoned.
pub(crate) type Keep<K, V> = Box<dyn FnMut(&K, &V) -> Option<bool> + Send>;

/// A read-modify-write of one key, run by the writer.
pub(crate) type UpdateFn<V> = Box<dyn FnOnce(Option<&V>) -> Decision<V> + Send>;

/// A transaction body run by the writer; `false` means it panicked and
/// nothing of it may be applied.
pub(crate) type TxFn<K, V> = Box<dyn for<'a> FnOnce(&mut Transaction<'a, K, V>) -> bool + Send>;

/// What a read-modify-write decided.
pub(crate) enum Decision<V> {
    /// Leave the key as it is.
    Keep,
    /// Store this value, keeping the entry's deadline (a new entry gets the
    /// map's default time to live).
    Put(V),
    /// Keep the value and give it this deadline ([`NEVER`]: none); nothing
    /// when the key is missing.
    SetDeadline(Deadline),
    /// Remove the key.
    Delete,
}

/// One request to the writer task.
pub(crate) enum Command<K, V> {
    /// Write-behind: one change, already in the cache.
    Persist(BatchOp<K, V>),
    /// Write-behind: changes that are stored all or none, already in the cache.
    PersistGroup(Vec<BatchOp<K, V>>),
    /// Write-through changes, applied to the cache once committed.
    Commit(Unit<K, V>),
    /// A write-through read-modify-write of one key.
    Update(K, UpdateFn<V>, Reply<Option<V>>),
    /// A write-through transaction.
    Transaction(TxFn<K, V>, Reply<()>),
    /// Write-through: remove every entry for which the predicate is `false`.
    Retain(Keep<K, V>, Reply<usize>),
    /// Empty the store (and, write-through, the cache). Write-behind clears
    /// have no reply: a failure poisons the map.
    Clear(Option<Reply<()>>),
    /// Make everything acknowledged so far durable.
    Flush(Reply<()>),
    /// Replace the cache with what the store holds and clear a poisoned state.
    Reload(Reply<()>),
    /// Flush, then stop.
    Close(Reply<()>),
    /// Write-through: delete entries whose deadline passed (one bounded
    /// batch); the reply, if any, gets how many.
    Sweep(Option<Reply<usize>>),
}

impl<K, V> Command<K, V> {
    /// A write-behind change, already in the cache.
    pub(crate) fn is_write_behind(&self) -> bool {
        matches!(self, Command::Persist(_) | Command::PersistGroup(_))
    }

    /// A write-through change, applied to the cache once committed.
    pub(crate) fn is_write_through(&self) -> bool {
        matches!(
            self,
            Command::Commit(_) | Command::Update(..) | Command::Transaction(..)
        )
    }

    /// The changes it counts for against the queue's bound.
    pub(crate) fn weight(&self) -> usize {
        match self {
            Command::PersistGroup(ops) => ops.len().max(1),
            Command::Commit(unit) => unit.ops.len().max(1),
            _ => 1,
        }
    }
}

/// Write-through changes that succeed or fail together for one caller.
pub(crate) struct Unit<K, V> {
    pub(crate) ops: Vec<BatchOp<K, V>>,
    pub(crate) waiter: Waiter<V>,
}

/// Who to tell when a write-through unit is settled.
pub(crate) enum Waiter<V> {
    /// One change; replies with the value it replaced.
    One(Reply<Option<V>>),
    /// Several changes; replies with the values they replaced.
    Many(Reply<Vec<Option<V>>>),
    /// A read-modify-write; replies with the value it stored.
    Updated(Reply<Option<V>>, Option<V>),
    /// A transaction or a retain; replies when committed.
    Done(Reply<()>),
}

/// Tuning of the pipeline, fixed when the map opens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PipelineConfig {
    /// Upper bound on changes per backend batch.
    pub(crate) max_batch: usize,
    /// Changes queued and not yet settled before writers wait.
    pub(crate) max_pending: usize,
    /// Write-behind: how long the writer gathers changes before it writes a
    /// batch that is not full. `None` means write-through.
    pub(crate) behind_delay: Option<Duration>,
    /// The time to live of an entry written without one.
    pub(crate) default_ttl: Option<Duration>,
    /// How often the sweep looks for expired entries.
    pub(crate) sweep_interval: Duration,
    /// Events buffered per subscription before a slow one loses the oldest.
    pub(crate) event_capacity: usize,
}

/// What the writer task is doing, as far as waking it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterState {
    /// Working through commands: it looks at the queue again by itself.
    Running,
    /// Waiting for a command: any push wakes it.
    Idle,
    /// Write-behind: gathering a batch until its delay ends; only a full
    /// batch or a command that someone waits for wakes it early.
    Delaying,
    /// Write-through: the writer task waits, and a caller that found the
    /// map idle commits its own change (no hand-off); commands queued
    /// meanwhile go to the writer task when it is done.
    Leading,
}

/// The part of the pipeline behind the lock.
pub(crate) struct State<K, V> {
    pub(crate) commands: VecDeque<Command<K, V>>,
    /// Write-behind changes in `commands`, to wake the writer at a full batch.
    pub(crate) changes: usize,
    pub(crate) writer: WriterState,
    /// `close` was called, or the writer stopped: nothing more is accepted.
    pub(crate) closing: bool,
    /// Every handle is gone: the writer finishes the queue and stops.
    pub(crate) dropped: bool,
    /// Write-behind: a reload is replacing the cache; writers wait for it.
    pub(crate) reloading: bool,
    /// Callers may lead commits: off while writers run concurrently, since
    /// their changes are better gathered into one batch by the writer task
    /// (group commit) than committed one by one by leaders.
    pub(crate) lead_ok: bool,
    /// The backend, kept alive for the writer when the last handle is
    /// dropped with work still queued.
    pub(crate) keepalive: Option<Arc<dyn Any + Send + Sync>>,
}

/// The shared state of one map: the cache, the queue and the health.
pub(crate) struct Pipeline<K, V> {
    pub(crate) cache: Cache<K, V>,
    pub(crate) health: Health,
    pub(crate) stats: Stats,
    pub(crate) events: Events<K, V>,
    pub(crate) config: PipelineConfig,
    /// The store is this map's alone (it holds an exclusive lock), so the
    /// cache knows every stored key and a removal of a key it lacks can be
    /// skipped. On a store others may write, the removal is always written.
    pub(crate) exclusive: bool,
    /// Callers may commit their own change when the map is idle: only
    /// without a change feed, whose events the writer task must handle in
    /// order with every commit.
    lead_allowed: bool,
    /// The backend stores deadlines.
    pub(crate) expiry: bool,
    /// The backend's type, for errors.
    pub(crate) backend_name: &'static str,
    /// A sweep is queued: the sweeper does not queue another.
    pub(crate) sweep_queued: AtomicBool,
    state: Mutex<State<K, V>>,
    /// Wakes the writer.
    pub(crate) wake: Notify,
    /// Wakes writers waiting for room, or for a reload to end.
    room: Notify,
    /// Changes queued (or being written) and not yet settled.
    pending: AtomicUsize,
}

impl<K, V> Pipeline<K, V> {
    pub(crate) fn new(
        cache: Cache<K, V>,
        config: PipelineConfig,
        exclusive: bool,
        lead_allowed: bool,
        expiry: bool,
        backend_name: &'static str,
        stats: Stats,
    ) -> Self {
        Self {
            cache,
            health: Health::default(),
            stats,
            events: Events::new(config.event_capacity, exclusive),
            config,
            exclusive,
            lead_allowed: lead_allowed && config.behind_delay.is_none(),
            expiry,
            backend_name,
            sweep_queued: AtomicBool::new(false),
            state: Mutex::new(State {
                commands: VecDeque::new(),
                changes: 0,
                writer: WriterState::Running,
                closing: false,
                dropped: false,
                reloading: false,
                lead_ok: true,
                keepalive: None,
            }),
            wake: Notify::new(),
            room: Notify::new(),
            pending: AtomicUsize::new(0),
        }
    }

    pub(crate) fn write_behind(&self) -> bool {
        self.config.behind_delay.is_some()
    }

    /// Refuses changes with a deadline when the backend stores none.
    pub(crate) fn require_expiry(&self, ops: &[BatchOp<K, V>]) -> Result<()> {
        if self.expiry || !ops.iter().any(uses_expiry) {
            return Ok(());
        }
        Err(self.expiry_unsupported())
    }

    pub(crate) fn expiry_unsupported(&self) -> PersistentError {
        PersistentError::Unsupported {
            backend: self.backend_name,
            feature: "expiry",
        }
    }

    /// Changes (and other commands) queued or being written, not yet settled.
    pub(crate) fn queue_depth(&self) -> u64 {
        self.pending.load(Ordering::Relaxed) as u64
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State<K, V>> {
        // Nothing that can panic runs under this lock (user closures are
        // guarded), so a poisoned lock is only ever a formality.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses new work once the map is closing or its writer stopped.
    pub(crate) fn ensure_open(&self, state: &State<K, V>) -> Result<()> {
        if self.health.is_stopped() {
            return Err(self.health.stopped_error());
        }
        if state.closing {
            return Err(PersistentError::Closed);
        }
        Ok(())
    }

    /// Waits while the queue is at its bound (or, write-behind, while a
    /// reload runs), then returns the lock. Cancelling it has no effect.
    pub(crate) async fn admit(&self) -> Result<MutexGuard<'_, State<K, V>>> {
        loop {
            let room = self.room.notified();
            let mut room = std::pin::pin!(room);
            room.as_mut().enable();
            if self.pending.load(Ordering::Acquire) < self.config.max_pending {
                let state = self.lock();
                if !state.reloading || state.closing {
                    self.ensure_open(&state)?;
                    return Ok(state);
                }
            } else if self.health.is_stopped() {
                return Err(self.health.stopped_error());
            }
            room.await;
        }
    }

    /// Queues `command` and wakes the writer when it needs waking. `urgent`
    /// commands (someone waits for them) cut a write-behind delay short.
    pub(crate) fn enqueue(&self, state: &mut State<K, V>, command: Command<K, V>, urgent: bool) {
        let weight = command.weight();
        if matches!(command, Command::Persist(_) | Command::PersistGroup(_)) {
            state.changes += weight;
        }
        state.commands.push_back(command);
        self.pending.fetch_add(weight, Ordering::AcqRel);
        let wake = match state.writer {
            WriterState::Idle => true,
            WriterState::Delaying => urgent || state.changes >= self.config.max_batch,
            // A leader hands over to the writer task when it is done.
            WriterState::Running | WriterState::Leading => false,
        };
        if wake {
            state.writer = WriterState::Running;
            self.wake.notify_one();
        }
    }

    /// Queues a command someone waits for, after waiting for room.
    pub(crate) async fn submit(&self, command: Command<K, V>) -> Result<()> {
        let mut state = self.admit().await?;
        self.enqueue(&mut state, command, true);
        Ok(())
    }

    /// Write-through: when nothing is queued or being written, makes the
    /// caller the one that commits its own change, with no hand-off to the
    /// writer task and back. Returns whether it leads; it must then call
    /// [`end_lead`](Self::end_lead) once its change is settled.
    pub(crate) fn try_lead(&self) -> bool {
        if !self.lead_allowed {
            return false;
        }
        let mut state = self.lock();
        let idle = state.lead_ok && state.writer == WriterState::Idle && state.commands.is_empty();
        if !idle || state.closing || state.dropped || self.health.is_stopped() {
            return false;
        }
        state.writer = WriterState::Leading;
        true
    }

    /// The leading caller is done: hands what was queued meanwhile (or the
    /// news that every handle is gone) to the writer task.
    pub(crate) fn end_lead(&self) {
        let mut state = self.lock();
        if state.writer != WriterState::Leading {
            return;
        }
        if state.commands.is_empty() && !state.dropped {
            state.writer = WriterState::Idle;
        } else {
            // Others wrote meanwhile: let the writer task batch them.
            state.lead_ok = false;
            state.writer = WriterState::Running;
            self.wake.notify_one();
        }
    }

    /// A leading caller's commit was abandoned with no runtime to finish it:
    /// its outcome is unknown, so the map stops rather than guess.
    pub(crate) fn abandoned_lead(&self) {
        self.writer_stopped(crate::health::Stop::Failed(String::from(
            "a commit was interrupted with no tokio runtime left to finish it",
        )));
    }

    /// The writer settled commands of this total weight.
    pub(crate) fn release(&self, weight: usize) {
        if weight == 0 {
            return;
        }
        let before = self.pending.fetch_sub(weight, Ordering::AcqRel);
        if before >= self.config.max_pending {
            self.room.notify_waiters();
        }
    }

    /// Writers blocked by a reload may go on.
    pub(crate) fn end_reload(&self) {
        self.lock().reloading = false;
        self.room.notify_waiters();
    }

    /// The error for a caller whose reply channel closed: the writer is
    /// stopping, so wait for it to say why.
    pub(crate) async fn gone(&self) -> PersistentError {
        self.health.wait_stopped().await;
        self.health.stopped_error()
    }

    /// Every handle was dropped: let the writer finish what is queued (keeping
    /// `backend` alive for it only if there is something) and stop.
    pub(crate) fn handles_dropped(&self, backend: Arc<dyn Any + Send + Sync>) {
        let mut state = self.lock();
        state.dropped = true;
        let busy = !state.commands.is_empty() || state.writer != WriterState::Idle;
        if busy && !self.health.is_stopped() {
            state.keepalive = Some(backend);
        }
        // A leader wakes the writer task itself when it is done.
        if state.writer != WriterState::Leading {
            state.writer = WriterState::Running;
            self.wake.notify_one();
        }
    }

    /// The writer stopped: refuse everything from now on, drop what is queued
    /// (its callers learn why through [`gone`](Self::gone)) and wake waiters.
    pub(crate) fn writer_stopped(&self, stop: crate::health::Stop) {
        let (commands, keepalive) = {
            let mut state = self.lock();
            state.closing = true;
            state.reloading = false;
            state.changes = 0;
            (std::mem::take(&mut state.commands), state.keepalive.take())
        };
        self.health.mark_stopped(stop);
        self.events.close();
        // Dropped outside the lock: dropping the backend may take a while.
        drop(commands);
        drop(keepalive);
        self.room.notify_waiters();
    }
}

impl<K, V> Pipeline<K, V>
where
    K: Eq + std::hash::Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Applies a committed change to the cache and publishes it to
    /// subscribers; returns the value it replaced (for a sweep's
    /// `DeleteExpired`, the value it removed, if the entry had expired).
    pub(crate) fn apply(&self, op: BatchOp<K, V>) -> Option<V> {
        let event = self.events.op(&op, Origin::Local);
        let replaced = match op {
            BatchOp::Put { key, value } => self.cache.put(key, value, NEVER),
            BatchOp::PutExpiring {
                key,
                value,
                expires_at,
            } => self.cache.put(key, value, millis_of(expires_at)),
            BatchOp::Delete { key } => self.cache.remove(&key),
            BatchOp::DeleteExpired { key, now } => self.cache.remove_expired(&key, millis_of(now)),
        };
        event.publish(replaced.as_ref());
        replaced
    }

    /// The deadline an entry written now without one gets: the default time
    /// to live, if the map has one.
    #[inline]
    pub(crate) fn default_deadline(&self) -> Deadline {
        match self.config.default_ttl {
            None => NEVER,
            Some(ttl) => deadline_in(ttl),
        }
    }

    /// Gives a put without a deadline the map's default time to live.
    pub(crate) fn stamp(&self, op: BatchOp<K, V>) -> BatchOp<K, V> {
        match (op, self.config.default_ttl) {
            (BatchOp::Put { key, value }, Some(ttl)) => put_op(key, value, deadline_in(ttl)),
            (op, _) => op,
        }
    }

    /// [`stamp`](Self::stamp) on every change.
    pub(crate) fn stamp_all(&self, ops: Vec<BatchOp<K, V>>) -> Vec<BatchOp<K, V>> {
        if self.config.default_ttl.is_none() {
            return ops;
        }
        ops.into_iter().map(|op| self.stamp(op)).collect()
    }

    /// The change a read-modify-write decided on the current entry (its
    /// value and deadline), and the value it leaves; no change when it
    /// changes nothing.
    pub(crate) fn decided(
        &self,
        key: K,
        current: Option<(V, Deadline)>,
        decision: Decision<V>,
    ) -> (Option<BatchOp<K, V>>, Option<V>)
    where
        V: Clone,
    {
        match (decision, current) {
            (Decision::Keep, current) => (None, current.map(|(value, _)| value)),
            (Decision::Delete, None) => (None, None),
            (Decision::Delete, Some(_)) => (Some(BatchOp::Delete { key }), None),
            (Decision::Put(value), current) => {
                let deadline = current.map_or_else(|| self.default_deadline(), |(_, d)| d);
                (Some(put_op(key, value.clone(), deadline)), Some(value))
            }
            (Decision::SetDeadline(_), None) => (None, None),
            (Decision::SetDeadline(deadline), Some((value, current))) if deadline == current => {
                (None, Some(value))
            }
            (Decision::SetDeadline(deadline), Some((value, _))) => {
                (Some(put_op(key, value.clone(), deadline)), Some(value))
            }
        }
    }
}

/// A put of `value` under `key` with `deadline`.
#[inline]
pub(crate) fn put_op<K, V>(key: K, value: V, deadline: Deadline) -> BatchOp<K, V> {
    if deadline == NEVER {
        BatchOp::Put { key, value }
    } else {
        BatchOp::PutExpiring {
            key,
            value,
            expires_at: time_of(deadline),
        }
    }
}

/// Whether a change carries or sweeps a deadline.
pub(crate) fn uses_expiry<K, V>(op: &BatchOp<K, V>) -> bool {
    !matches!(op, BatchOp::Put { .. } | BatchOp::Delete { .. })
}
