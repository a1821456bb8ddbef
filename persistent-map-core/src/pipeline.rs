//! The write pipeline: every change flows, in order, through one queue that a
//! single task drains into the backend in batches.
//!
//! In write-through mode the writer task is the only code that mutates the
//! cache: it applies a batch to the cache after the backend acknowledged it,
//! so the cache never holds a change the store refused, persistence is never
//! reordered behind the cache's back, and concurrent callers share one
//! backend commit (group commit). Conditional writes (`update`,
//! `transaction`) are evaluated here against committed state only, so a
//! failed batch never invalidates a decision taken from it.
//!
//! In write-behind mode callers update the cache themselves and queue the
//! change in the same critical section; the writer only persists.

use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::backend::{BatchOp, RemoteChange, StorageBackend};
use crate::batch::Transaction;
use crate::error::{PersistentError, Result};

/// The cache: a concurrent map with a fast keyed hasher (aHash, seeded at
/// random per process, so keys chosen by an attacker cannot force collisions).
pub(crate) type Cache<K, V> = DashMap<K, V, ahash::RandomState>;

/// How long the writer waits before it retries a failed refresh of the cache
/// from a shared store.
const RESYNC_RETRY: Duration = Duration::from_millis(500);

/// A reply channel for one caller.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// A predicate for `retain`, run by the writer task against the cache.
pub(crate) type Keep<K, V> = Box<dyn FnMut(&K, &V) -> bool + Send>;

/// A read-modify-write of one key.
pub(crate) type UpdateFn<V> = Box<dyn FnOnce(Option<&V>) -> Decision<V> + Send>;

/// A transaction body.
pub(crate) type TxFn<K, V> = Box<dyn for<'a> FnOnce(&mut Transaction<'a, K, V>) + Send>;

/// What a read-modify-write decided.
pub(crate) enum Decision<V> {
    /// Leave the key as it is.
    Keep,
    /// Store this value.
    Put(V),
    /// Remove the key.
    Delete,
}

/// One request to the writer task.
pub(crate) enum Command<K, V> {
    /// Write-through changes, applied to the cache once committed.
    Commit(Unit<K, V>),
    /// A write-through read-modify-write of one key.
    Update(K, UpdateFn<V>, Reply<Option<V>>),
    /// A write-through transaction.
    Transaction(TxFn<K, V>, Reply<()>),
    /// Write-behind changes, already in the cache.
    Persist(Unit<K, V>),
    /// Remove (write-through) every entry for which the predicate is `false`.
    Retain(Keep<K, V>, Reply<usize>),
    /// Empty the store (and, write-through, the cache). Write-behind clears
    /// have no reply: a failure poisons the map.
    Clear(Option<Reply<()>>),
    /// Make everything acknowledged so far durable.
    Flush(Reply<()>),
    /// Replace the cache with what the store holds and clear a poisoned state.
    Reload(Reply<()>),
    /// Another instance changed the shared store.
    Remote(RemoteChange<K>),
    /// Flush, then stop: commands queued behind it are refused.
    Close(Reply<()>),
}

/// Changes that succeed or fail together for one caller.
pub(crate) struct Unit<K, V> {
    pub(crate) ops: Vec<BatchOp<K, V>>,
    pub(crate) waiter: Waiter<V>,
}

/// Who to tell when a unit is settled.
pub(crate) enum Waiter<V> {
    /// One change; replies with the value it replaced.
    One(Reply<Option<V>>),
    /// Several changes; replies with the values they replaced.
    Many(Reply<Vec<Option<V>>>),
    /// A read-modify-write; replies with the value it stored.
    Updated(Reply<Option<V>>, Option<V>),
    /// A transaction; replies when committed.
    Done(Reply<()>),
    /// Write-behind: nobody waits; the queue slots are freed when settled.
    Detached {
        /// Held for its drop, which frees the slots.
        _slots: OwnedSemaphorePermit,
    },
}

/// Tuning of the writer task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PipelineConfig {
    /// Upper bound on changes per backend batch.
    pub(crate) max_batch: usize,
    /// Write-behind: how long the writer waits for more changes before it
    /// writes a batch that is not full. `None` means write-through.
    pub(crate) behind_delay: Option<Duration>,
}

/// State shared by the map and its writer: a background failure, and how many
/// write-behind changes were queued versus made durable.
#[derive(Debug, Default)]
pub(crate) struct Health {
    poisoned: AtomicBool,
    failure: Mutex<Option<Arc<PersistentError>>>,
    pub(crate) queued: AtomicU64,
    persisted: AtomicU64,
    pub(crate) durable: AtomicU64,
}

impl Health {
    /// The background failure, if any, as an error for a caller.
    pub(crate) fn check(&self) -> Result<()> {
        if !self.poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        let failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        match failure.as_ref() {
            Some(err) => Err(PersistentError::Shared(Arc::clone(err))),
            None => Ok(()),
        }
    }

    fn poison(&self, err: PersistentError) {
        tracing::error!(error = %err, "background write failed; the map refuses writes until reload()");
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            *failure = Some(Arc::new(err));
        }
        self.poisoned.store(true, Ordering::Release);
    }

    fn cure(&self) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        *failure = None;
        self.poisoned.store(false, Ordering::Release);
        let queued = self.queued.load(Ordering::Acquire);
        self.persisted.store(queued, Ordering::Release);
        self.durable.store(queued, Ordering::Release);
    }

    /// Write-behind changes queued but not yet covered by a flush.
    pub(crate) fn unflushed(&self) -> u64 {
        self.queued
            .load(Ordering::Acquire)
            .saturating_sub(self.durable.load(Ordering::Acquire))
    }
}

pub(crate) fn spawn_writer<K, V, B>(
    cache: Arc<Cache<K, V>>,
    backend: Arc<B>,
    health: Arc<Health>,
    config: PipelineConfig,
) -> (
    mpsc::UnboundedSender<Command<K, V>>,
    tokio::task::JoinHandle<()>,
)
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let atomic = backend.capabilities().atomic_batch;
    let writer = Writer {
        cache,
        backend,
        health,
        config,
        atomic,
        rx,
        myself: tx.downgrade(),
        resync_pending: false,
    };
    let handle = tokio::spawn(writer.run());
    (tx, handle)
}

struct Writer<K, V, B> {
    cache: Arc<Cache<K, V>>,
    backend: Arc<B>,
    health: Arc<Health>,
    config: PipelineConfig,
    atomic: bool,
    rx: mpsc::UnboundedReceiver<Command<K, V>>,
    /// To queue a retry of a failed refresh behind later commands.
    myself: mpsc::WeakUnboundedSender<Command<K, V>>,
    /// A retry of a failed refresh is queued.
    resync_pending: bool,
}

/// The batch being gathered.
struct Gather<K, V> {
    units: Vec<Unit<K, V>>,
    ops: usize,
}

impl<K: Eq + Hash, V> Gather<K, V> {
    fn new() -> Self {
        Self {
            units: Vec::new(),
            ops: 0,
        }
    }

    fn push(&mut self, unit: Unit<K, V>) {
        self.ops += unit.ops.len();
        self.units.push(unit);
    }

    /// Whether a change to `key` is already in this batch. A scan rather than
    /// an index: it is only needed for the rare commands that decide on the
    /// current value, and an index would cost every bulk write a key clone.
    fn touches(&self, key: &K) -> bool {
        self.units
            .iter()
            .any(|unit| unit.ops.iter().any(|op| op.key() == key))
    }
}

/// What happened to a command offered to the batch being gathered.
enum Admit<K, V> {
    Taken,
    /// It must run after the current batch commits.
    Later(Command<K, V>),
}

impl<K, V, B> Writer<K, V, B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    fn write_behind(&self) -> bool {
        self.config.behind_delay.is_some()
    }

    async fn run(mut self) {
        let mut pending: Option<Command<K, V>> = None;
        loop {
            let command = match pending.take() {
                Some(command) => command,
                None => match self.rx.recv().await {
                    Some(command) => command,
                    None => break,
                },
            };
            pending = match command {
                Command::Commit(_)
                | Command::Update(..)
                | Command::Transaction(..)
                | Command::Persist(_) => self.gather_and_commit(command).await,
                Command::Flush(reply) => self.flush_group(reply).await,
                Command::Clear(reply) => {
                    let result = self.clear().await;
                    match reply {
                        Some(reply) => {
                            let _ = reply.send(result);
                        }
                        None => {
                            if let Err(err) = result {
                                self.health.poison(err);
                            }
                        }
                    }
                    None
                }
                Command::Retain(keep, reply) => {
                    let _ = reply.send(self.retain(keep).await);
                    None
                }
                Command::Reload(reply) => {
                    let _ = reply.send(self.reload().await);
                    None
                }
                Command::Remote(change) => {
                    if matches!(change, RemoteChange::Resync) {
                        self.resync_pending = false;
                    }
                    if let Err(err) = self.follow(change).await {
                        tracing::warn!(error = %err, "could not refresh the cache from the shared store; retrying");
                        self.retry_resync();
                    }
                    None
                }
                Command::Close(reply) => {
                    let _ = reply.send(self.flush_now().await);
                    break;
                }
            };
        }
        tracing::trace!("write pipeline stopped");
    }

    /// Gathers every change already queued behind `first` (write-behind: also
    /// those arriving within the configured delay), up to the batch limit, and
    /// commits them together. Returns the first command that must run after
    /// this batch.
    async fn gather_and_commit(&mut self, first: Command<K, V>) -> Option<Command<K, V>> {
        let deadline = self.config.behind_delay.map(|delay| Instant::now() + delay);
        let mut batch = Gather::new();
        let mut later = None;
        let mut next = Some(first);
        let mut yielded = false;
        while let Some(command) = next.take() {
            if let Admit::Later(command) = self.admit(&mut batch, command) {
                later = Some(command);
                break;
            }
            if batch.ops >= self.config.max_batch {
                break;
            }
            next = match self.rx.try_recv() {
                Ok(command) => Some(command),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) => match deadline {
                    Some(deadline) if !batch.units.is_empty() => {
                        tokio::time::timeout_at(deadline, self.rx.recv())
                            .await
                            .ok()
                            .flatten()
                    }
                    _ if !yielded => {
                        // Group commit: writers woken by the previous batch
                        // are about to queue their next change; let them run
                        // once before committing without them.
                        yielded = true;
                        tokio::task::yield_now().await;
                        self.rx.try_recv().ok()
                    }
                    _ => None,
                },
            };
        }
        self.commit(batch).await;
        later
    }

    fn admit(&mut self, batch: &mut Gather<K, V>, command: Command<K, V>) -> Admit<K, V> {
        match command {
            Command::Commit(unit) => {
                if let ([BatchOp::Delete { key }], Waiter::One(_)) = (&unit.ops[..], &unit.waiter) {
                    if !self.cache.contains_key(key) && !batch.touches(key) {
                        // Removing a missing key changes nothing: answer without writing.
                        settle_reply(unit.waiter, vec![None]);
                        return Admit::Taken;
                    }
                }
                batch.push(unit);
                Admit::Taken
            }
            Command::Persist(unit) => {
                if self.health.check().is_err() {
                    // After a failure nothing later may be stored, or the
                    // store would keep a later change without an earlier one.
                    return Admit::Taken;
                }
                batch.push(unit);
                Admit::Taken
            }
            Command::Update(key, decide, reply) => {
                if batch.touches(&key) {
                    // Decide on committed state only.
                    return Admit::Later(Command::Update(key, decide, reply));
                }
                let current = self.cache.get(&key).map(|entry| entry.value().clone());
                let unit = match decide(current.as_ref()) {
                    Decision::Keep => {
                        let _ = reply.send(Ok(current));
                        return Admit::Taken;
                    }
                    Decision::Delete if current.is_none() => {
                        let _ = reply.send(Ok(None));
                        return Admit::Taken;
                    }
                    Decision::Delete => Unit {
                        ops: vec![BatchOp::Delete { key: key.clone() }],
                        waiter: Waiter::Updated(reply, None),
                    },
                    Decision::Put(value) => Unit {
                        ops: vec![BatchOp::Put {
                            key: key.clone(),
                            value: value.clone(),
                        }],
                        waiter: Waiter::Updated(reply, Some(value)),
                    },
                };
                batch.push(unit);
                Admit::Taken
            }
            Command::Transaction(body, reply) => {
                if !batch.units.is_empty() {
                    return Admit::Later(Command::Transaction(body, reply));
                }
                let mut tx = Transaction::new(&self.cache);
                body(&mut tx);
                let ops = tx.into_ops();
                if ops.is_empty() {
                    let _ = reply.send(Ok(()));
                    return Admit::Taken;
                }
                batch.push(Unit {
                    ops,
                    waiter: Waiter::Done(reply),
                });
                Admit::Taken
            }
            other => Admit::Later(other),
        }
    }

    async fn commit(&mut self, batch: Gather<K, V>) {
        if batch.ops == 0 {
            for unit in batch.units {
                self.settle(unit, Vec::new());
            }
            return;
        }
        let mut units = batch.units;
        let mut ops = Vec::with_capacity(batch.ops);
        let mut lens = Vec::with_capacity(units.len());
        for unit in &mut units {
            lens.push(unit.ops.len());
            ops.append(&mut unit.ops);
        }
        match self.backend.apply_batch(&ops).await {
            Ok(()) => {
                let mut ops = ops.into_iter();
                for (unit, len) in units.into_iter().zip(lens) {
                    let unit_ops = ops.by_ref().take(len).collect();
                    self.settle(unit, unit_ops);
                }
            }
            Err(err) if self.write_behind() => {
                // The callers were answered long ago; report at the next flush.
                self.health.poison(err);
            }
            Err(err) if units.len() == 1 => {
                if let Some(unit) = units.into_iter().next() {
                    self.fail(unit, ops, err).await;
                }
            }
            Err(err) => {
                // Replay unit by unit so one bad change fails only its own
                // caller. Changes are idempotent, so replaying a prefix the
                // backend already applied is safe.
                tracing::debug!(error = %err, units = units.len(), "batch failed; replaying unit by unit");
                let mut ops = ops.into_iter();
                for (unit, len) in units.into_iter().zip(lens) {
                    let unit_ops: Vec<BatchOp<K, V>> = ops.by_ref().take(len).collect();
                    match self.backend.apply_batch(&unit_ops).await {
                        Ok(()) => self.settle(unit, unit_ops),
                        Err(err) => self.fail(unit, unit_ops, err).await,
                    }
                }
            }
        }
    }

    /// A unit the backend refused. On a backend without atomic batches a
    /// prefix of it may be stored, so its changes are replayed one by one to
    /// bring the cache to what the store holds; the caller gets the error.
    async fn fail(&mut self, unit: Unit<K, V>, ops: Vec<BatchOp<K, V>>, err: PersistentError) {
        if ops.len() > 1 && !self.atomic {
            for op in ops {
                match self.backend.apply_batch(std::slice::from_ref(&op)).await {
                    Ok(()) => {
                        self.apply_to_cache(op);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "change of a failed batch refused on replay");
                    }
                }
            }
        }
        reply_error(unit.waiter, err);
    }

    fn settle(&self, unit: Unit<K, V>, ops: Vec<BatchOp<K, V>>) {
        if let Waiter::Detached { .. } = unit.waiter {
            self.health
                .persisted
                .fetch_add(ops.len() as u64, Ordering::AcqRel);
            return;
        }
        let replaced = ops.into_iter().map(|op| self.apply_to_cache(op)).collect();
        settle_reply(unit.waiter, replaced);
    }

    fn apply_to_cache(&self, op: BatchOp<K, V>) -> Option<V> {
        match op {
            BatchOp::Put { key, value } => self.cache.insert(key, value),
            BatchOp::Delete { key } => self.cache.remove(&key).map(|(_, v)| v),
        }
    }

    /// Runs one backend flush for `first` and every flush queued right behind it.
    async fn flush_group(&mut self, first: Reply<()>) -> Option<Command<K, V>> {
        let mut replies = vec![first];
        let mut later = None;
        while let Ok(command) = self.rx.try_recv() {
            match command {
                Command::Flush(reply) => replies.push(reply),
                other => {
                    later = Some(other);
                    break;
                }
            }
        }
        let result = self.flush_now().await;
        reply_all(replies, result);
        later
    }

    async fn flush_now(&mut self) -> Result<()> {
        self.health.check()?;
        let covered = self.health.persisted.load(Ordering::Acquire);
        self.backend.flush().await?;
        self.health.durable.fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }

    async fn clear(&mut self) -> Result<()> {
        self.health.check()?;
        self.backend.clear().await?;
        if !self.write_behind() {
            self.cache.clear();
        }
        Ok(())
    }

    async fn retain(&mut self, mut keep: Keep<K, V>) -> Result<usize> {
        let doomed: Vec<BatchOp<K, V>> = self
            .cache
            .iter()
            .filter(|entry| !keep(entry.key(), entry.value()))
            .map(|entry| BatchOp::Delete {
                key: entry.key().clone(),
            })
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let removed = doomed.len();
        let (reply, answer) = oneshot::channel();
        self.commit(Gather {
            ops: doomed.len(),
            units: vec![Unit {
                ops: doomed,
                waiter: Waiter::Many(reply),
            }],
        })
        .await;
        answer
            .await
            .map_err(|_| PersistentError::Closed)?
            .map(|_| removed)
    }

    /// Queues a full refresh after a pause, so a cache never stays stale
    /// because one refresh failed (for example while the server restarts).
    fn retry_resync(&mut self) {
        if self.resync_pending {
            return;
        }
        self.resync_pending = true;
        let myself = self.myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RESYNC_RETRY).await;
            if let Some(queue) = myself.upgrade() {
                let _ = queue.send(Command::Remote(RemoteChange::Resync));
            }
        });
    }

    /// Brings the cache in line with changes another instance made. Runs in
    /// order with this map's own writes, so a value read here can never
    /// overwrite a newer local write.
    async fn follow(&mut self, change: RemoteChange<K>) -> Result<()> {
        match change {
            RemoteChange::Resync => self.reload().await,
            RemoteChange::Changed(keys) => {
                for (key, value) in self.backend.load_keys(&keys).await? {
                    match value {
                        Some(value) => {
                            self.cache.insert(key, value);
                        }
                        None => {
                            self.cache.remove(&key);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    async fn reload(&mut self) -> Result<()> {
        let fresh = Cache::with_capacity_and_hasher(self.cache.len(), ahash::RandomState::new());
        self.backend
            .load_into(&mut |k, v| {
                fresh.insert(k, v);
            })
            .await?;
        self.cache.retain(|k, _| fresh.contains_key(k));
        for (k, v) in fresh {
            self.cache.insert(k, v);
        }
        self.health.cure();
        Ok(())
    }
}

fn settle_reply<V>(waiter: Waiter<V>, mut replaced: Vec<Option<V>>) {
    // A caller may have stopped waiting; the change stands either way.
    match waiter {
        Waiter::One(reply) => {
            let _ = reply.send(Ok(replaced.pop().flatten()));
        }
        Waiter::Many(reply) => {
            let _ = reply.send(Ok(replaced));
        }
        Waiter::Updated(reply, value) => {
            let _ = reply.send(Ok(value));
        }
        Waiter::Done(reply) => {
            let _ = reply.send(Ok(()));
        }
        Waiter::Detached { .. } => {}
    }
}

fn reply_error<V>(waiter: Waiter<V>, err: PersistentError) {
    match waiter {
        Waiter::One(reply) | Waiter::Updated(reply, _) => {
            let _ = reply.send(Err(err));
        }
        Waiter::Many(reply) => {
            let _ = reply.send(Err(err));
        }
        Waiter::Done(reply) => {
            let _ = reply.send(Err(err));
        }
        Waiter::Detached { .. } => {}
    }
}

fn reply_all(replies: Vec<Reply<()>>, result: Result<()>) {
    match result {
        Ok(()) => {
            for reply in replies {
                let _ = reply.send(Ok(()));
            }
        }
        Err(err) if replies.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(err));
            }
        }
        Err(err) => {
            let shared = Arc::new(err);
            for reply in replies {
                let _ = reply.send(Err(PersistentError::Shared(Arc::clone(&shared))));
            }
        }
    }
}
