//! The writer task: the one place that talks to the backend. It drains the
//! queue in order and hands the backend batches.
//!
//! Write-through: the writer is the only code that changes the cache. It
//! applies a batch to the cache after the backend acknowledged it, so the
//! cache never holds a change the store refused, and concurrent callers share
//! one backend commit (group commit). Conditional writes (`update`,
//! `transaction`, `retain`) are decided here against committed state only.
//!
//! Write-behind: callers apply changes to the cache and queue them in one
//! critical section; the writer gathers them for up to the configured delay
//! and persists them. After a failure it persists nothing more (that would
//! leave a hole) until a reload.
//!
//! The writer holds the backend only weakly: when the last handle of an idle
//! map is dropped, the backend goes with it at once (files, locks, pools).

use std::collections::VecDeque;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::{BatchOp, RemoteChange, RemoteChanges, StorageBackend};
use crate::batch::Transaction;
use crate::cache::{deadline_of, now, time_of, Cache, NEVER};
use crate::closure::{guard_backend, panic_message};
use crate::error::{PersistentError, Result};
use crate::events::Origin;
use crate::health::Stop;
use crate::queue::{Command, Keep, Pipeline, Reply, Unit, Waiter, WriterState};
use crate::stats::{flush_backend, write_batch};

/// How long the writer waits before it retries a failed refresh of the cache
/// from a shared store.
const RESYNC_RETRY: Duration = Duration::from_millis(500);

/// Starts the writer task of `pipeline`.
pub(crate) fn spawn<K, V, B>(
    pipeline: Arc<Pipeline<K, V>>,
    backend: &Arc<B>,
    feed: Option<RemoteChanges<K>>,
) where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    let writer = Writer {
        pipeline: Arc::clone(&pipeline),
        atomic: backend.capabilities().atomic_batch,
        backend: Arc::downgrade(backend),
        feed,
        local: VecDeque::new(),
        resync_at: None,
        last_batch_units: 0,
    };
    tokio::spawn(async move {
        let mut guard = StopGuard {
            pipeline,
            stop: None,
        };
        let outcome = AssertUnwindSafe(writer.run()).catch_unwind().await;
        guard.stop = Some(match outcome {
            Ok(()) => Stop::Closed,
            Err(payload) => Stop::Failed(format!(
                "the writer task panicked: {}",
                panic_message(payload.as_ref())
            )),
        });
    });
}

/// Tells the pipeline why the writer stopped, however it stopped: returning,
/// panicking, or being dropped with its runtime.
struct StopGuard<K, V> {
    pipeline: Arc<Pipeline<K, V>>,
    stop: Option<Stop>,
}

impl<K, V> Drop for StopGuard<K, V> {
    fn drop(&mut self) {
        let stop = self.stop.take().unwrap_or_else(|| {
            Stop::Failed(String::from(
                "the tokio runtime that ran the map's writer task shut down",
            ))
        });
        self.pipeline.writer_stopped(stop);
    }
}

struct Writer<K, V, B> {
    pipeline: Arc<Pipeline<K, V>>,
    backend: Weak<B>,
    atomic: bool,
    feed: Option<RemoteChanges<K>>,
    /// Commands taken from the shared queue, oldest first.
    local: VecDeque<Command<K, V>>,
    /// When to retry a refresh from the shared store that failed.
    resync_at: Option<Instant>,
    /// Callers whose changes the last write-through batch carried: one
    /// means no concurrent writers, so callers may lead again.
    last_batch_units: usize,
}

/// The write-through batch being gathered.
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

async fn next_remote<K>(feed: &mut Option<RemoteChanges<K>>) -> Option<RemoteChange<K>> {
    match feed {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl<K, V, B> Writer<K, V, B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    fn cache(&self) -> &Cache<K, V> {
        &self.pipeline.cache
    }

    fn max_batch(&self) -> usize {
        self.pipeline.config.max_batch
    }

    fn backend(&self) -> Result<Arc<B>> {
        self.backend.upgrade().ok_or(PersistentError::Closed)
    }

    async fn run(mut self) {
        while let Some(command) = self.next().await {
            let Some(settled) = self.handle(command).await else {
                return;
            };
            self.pipeline.release(settled);
            #[cfg(feature = "metrics")]
            self.pipeline.publish_gauges();
            self.follow_waiting().await;
        }
        tracing::trace!("write pipeline stopped: every handle was dropped");
    }

    /// Runs `command` (and, for a change, those that join its batch).
    /// Returns the weight settled, or `None` when the writer must stop.
    async fn handle(&mut self, command: Command<K, V>) -> Option<usize> {
        if command.is_write_behind() {
            return Some(self.persist_behind(command).await);
        }
        if command.is_write_through() {
            return Some(self.commit_through(command).await);
        }
        let weight = command.weight();
        match command {
            Command::Flush(reply) => return Some(self.flush_group(reply).await),
            Command::Clear(reply) => {
                let result = self.clear().await;
                match reply {
                    Some(reply) => {
                        let _ = reply.send(result);
                    }
                    None => {
                        if let Err(err) = result {
                            self.pipeline.health.poison(err);
                        }
                    }
                }
            }
            Command::Retain(keep, reply) => {
                let _ = reply.send(self.retain(keep).await);
            }
            Command::Reload(reply) => {
                let result = self.reload("reload").await;
                if self.pipeline.write_behind() {
                    self.pipeline.end_reload();
                }
                let _ = reply.send(result);
            }
            Command::Close(reply) => {
                let _ = reply.send(self.flush_now().await);
                self.pipeline.release(weight);
                return None;
            }
            Command::Sweep(reply) => {
                let swept = self.sweep().await;
                match reply {
                    Some(reply) => {
                        let _ = reply.send(swept);
                    }
                    None => {
                        if let Err(err) = swept {
                            tracing::warn!(error = %err, "could not delete expired entries; retrying at the next sweep");
                        }
                    }
                }
            }
            // Changes were dispatched above.
            Command::Persist(_)
            | Command::PersistGroup(_)
            | Command::Commit(_)
            | Command::Update(..)
            | Command::Transaction(..) => {}
        }
        Some(weight)
    }

    /// The next command in order, waiting for one (and following the shared
    /// store meanwhile); `None` once every handle is gone and nothing is left.
    async fn next(&mut self) -> Option<Command<K, V>> {
        loop {
            if let Some(command) = self.local.pop_front() {
                return Some(command);
            }
            {
                let mut state = self.pipeline.lock();
                // While a caller leads a commit, the queue waits for it.
                if state.writer != WriterState::Leading {
                    if !state.commands.is_empty() {
                        std::mem::swap(&mut self.local, &mut state.commands);
                        state.changes = 0;
                        state.writer = WriterState::Running;
                        continue;
                    }
                    if state.dropped {
                        return None;
                    }
                    state.writer = WriterState::Idle;
                    state.lead_ok = self.last_batch_units <= 1;
                }
            }
            self.idle().await;
        }
    }

    /// Moves what callers queued since into `local`; `false` when nothing was.
    fn refill(&mut self) -> bool {
        let mut state = self.pipeline.lock();
        if state.commands.is_empty() {
            return false;
        }
        self.local.append(&mut state.commands);
        state.changes = 0;
        state.writer = WriterState::Running;
        true
    }

    /// The next command of a batch being gathered, without waiting.
    fn next_ready(&mut self) -> Option<Command<K, V>> {
        if let Some(command) = self.local.pop_front() {
            return Some(command);
        }
        if self.refill() {
            self.local.pop_front()
        } else {
            None
        }
    }

    /// Waits for a push, a remote change or a retry.
    async fn idle(&mut self) {
        let wake = self.pipeline.wake.notified();
        tokio::select! {
            biased;
            () = wake => {}
            change = next_remote(&mut self.feed) => match change {
                Some(change) => self.follow(change).await,
                None => self.feed = None,
            },
            () = sleep_until(self.resync_at) => {
                self.resync_at = None;
                self.follow(RemoteChange::Resync).await;
            }
        }
    }

    /// Follows at most one waiting remote change between two commands, so a
    /// busy map still keeps up with the shared store.
    async fn follow_waiting(&mut self) {
        if self.resync_at.is_some_and(|at| Instant::now() >= at) {
            self.resync_at = None;
            self.follow(RemoteChange::Resync).await;
        }
        let Some(feed) = &mut self.feed else { return };
        match feed.next().now_or_never() {
            Some(Some(change)) => self.follow(change).await,
            Some(None) => self.feed = None,
            None => {}
        }
    }

    // ---- write-behind -------------------------------------------------

    /// Gathers queued write-behind changes (waiting up to the delay for
    /// more, unless a command someone waits for arrives) and persists them
    /// as one batch. Returns the weight settled.
    async fn persist_behind(&mut self, first: Command<K, V>) -> usize {
        let deadline = self
            .pipeline
            .config
            .behind_delay
            .and_then(|delay| Instant::now().checked_add(delay));
        let mut ops = Vec::new();
        let mut weight = 0;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Persist(op) => {
                    weight += 1;
                    ops.push(op);
                }
                Command::PersistGroup(group)
                    if ops.is_empty() || ops.len() + group.len() <= self.max_batch() =>
                {
                    weight += group.len().max(1);
                    ops.extend(group);
                }
                other => {
                    self.local.push_front(other);
                    break;
                }
            }
            if ops.len() >= self.max_batch() {
                break;
            }
            next = self.next_behind(deadline).await;
        }
        self.persist(ops).await;
        weight
    }

    /// The next command of a write-behind batch, waiting for one until `deadline`.
    async fn next_behind(&mut self, deadline: Option<Instant>) -> Option<Command<K, V>> {
        loop {
            if let Some(command) = self.next_ready() {
                return Some(command);
            }
            if !self.delay(deadline).await {
                return None;
            }
        }
    }

    /// Write-behind: waits for more changes until `deadline`; `false` when
    /// there is no point waiting (the delay is over, or the map is going away).
    async fn delay(&mut self, deadline: Option<Instant>) -> bool {
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return false;
        }
        {
            let mut state = self.pipeline.lock();
            if !state.commands.is_empty() {
                return true;
            }
            if state.dropped {
                return false;
            }
            state.writer = WriterState::Delaying;
        }
        let wake = self.pipeline.wake.notified();
        match deadline {
            Some(deadline) => {
                let _ = tokio::time::timeout_at(deadline, wake).await;
            }
            None => wake.await,
        }
        true
    }

    async fn persist(&mut self, ops: Vec<BatchOp<K, V>>) {
        if ops.is_empty() || self.pipeline.health.check().is_err() {
            // After a failure nothing later may be stored, or the store would
            // keep a later change without an earlier one.
            return;
        }
        match self.apply(&ops).await {
            Ok(()) => {
                self.pipeline
                    .health
                    .persisted
                    .fetch_add(ops.len() as u64, Ordering::AcqRel);
            }
            Err(err) => self.pipeline.health.poison(err),
        }
    }

    // ---- write-through ------------------------------------------------

    /// Gathers every write-through change already queued behind `first`, up
    /// to the batch limit, and commits them together. Returns the weight settled.
    async fn commit_through(&mut self, first: Command<K, V>) -> usize {
        let mut batch = Gather::new();
        let mut weight = 0;
        // Up to as many pauses as callers the last batch answered (at least
        // one, at most 8), while fewer callers than then have queued: each
        // lets more of the woken callers queue their next change. A lone
        // writer pays one pause; it mostly commits its own changes anyway
        // (`Pipeline::try_lead`).
        let max_yields = self.last_batch_units.clamp(1, 8);
        let mut yields = 0;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            let command_weight = command.weight();
            match self.admit(&mut batch, command) {
                Admit::Taken => weight += command_weight,
                Admit::Later(command) => {
                    self.local.push_front(command);
                    break;
                }
            }
            if batch.ops >= self.max_batch() {
                break;
            }
            next = match self.next_ready() {
                Some(command) => Some(command),
                None if yields < max_yields && batch.units.len() < self.last_batch_units.max(2) => {
                    // Group commit: writers woken by the previous batch are
                    // about to queue their next change; let them run before
                    // committing without them.
                    yields += 1;
                    tokio::task::yield_now().await;
                    self.next_ready()
                }
                None => None,
            };
        }
        self.last_batch_units = batch.units.len();
        self.commit(batch).await;
        weight
    }

    fn admit(&mut self, batch: &mut Gather<K, V>, command: Command<K, V>) -> Admit<K, V> {
        match command {
            Command::Commit(unit) => {
                if let ([BatchOp::Delete { key }], Waiter::One(_)) = (&unit.ops[..], &unit.waiter) {
                    if self.pipeline.exclusive
                        && !self.cache().contains_key(key)
                        && !batch.touches(key)
                    {
                        // The store is this map's alone and lacks the key:
                        // removing it changes nothing, so nothing is written.
                        settle_reply(unit.waiter, vec![None]);
                        return Admit::Taken;
                    }
                }
                batch.push(unit);
                Admit::Taken
            }
            Command::Update(key, decide, reply) => {
                if batch.touches(&key) {
                    // Decide on committed state only.
                    return Admit::Later(Command::Update(key, decide, reply));
                }
                let current = self.cache().get_with_deadline(&key);
                let decision = decide(current.as_ref().map(|(value, _)| value));
                let (op, after) = self.pipeline.decided(key, current, decision);
                let Some(op) = op else {
                    let _ = reply.send(Ok(after));
                    return Admit::Taken;
                };
                if let Err(err) = self.pipeline.require_expiry(std::slice::from_ref(&op)) {
                    let _ = reply.send(Err(err));
                    return Admit::Taken;
                }
                batch.push(Unit {
                    ops: vec![op],
                    waiter: Waiter::Updated(reply, after),
                });
                Admit::Taken
            }
            Command::Transaction(body, reply) => {
                if !batch.units.is_empty() {
                    return Admit::Later(Command::Transaction(body, reply));
                }
                let mut tx = Transaction::new(self.cache());
                let completed = body(&mut tx);
                let ops = self.pipeline.stamp_all(tx.into_ops());
                if !completed || ops.is_empty() {
                    let _ = reply.send(Ok(()));
                    return Admit::Taken;
                }
                if let Err(err) = self.pipeline.require_expiry(&ops) {
                    let _ = reply.send(Err(err));
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

    /// Hands `ops` to the backend; a write whose outcome was lost is read
    /// back to find out whether it happened.
    async fn apply(&mut self, ops: &[BatchOp<K, V>]) -> Result<()> {
        let backend = self.backend()?;
        write_batch(&*backend, ops, &self.pipeline.stats).await
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
        match self.apply(&ops).await {
            Ok(()) => {
                let mut ops = ops.into_iter();
                for (unit, len) in units.into_iter().zip(lens) {
                    let unit_ops = ops.by_ref().take(len).collect();
                    self.settle(unit, unit_ops);
                }
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
                    match self.apply(&unit_ops).await {
                        Ok(()) => self.settle(unit, unit_ops),
                        Err(err) => self.fail(unit, unit_ops, err).await,
                    }
                }
            }
        }
    }

    /// A unit the backend refused. On a backend without atomic batches a
    /// prefix of it may be stored, so its changes are replayed one by one,
    /// up to the first that fails, to bring the cache to what the store
    /// holds; the caller gets the error.
    async fn fail(&mut self, unit: Unit<K, V>, ops: Vec<BatchOp<K, V>>, err: PersistentError) {
        if ops.len() > 1 && !self.atomic {
            for op in ops {
                if let Err(e) = self.apply(std::slice::from_ref(&op)).await {
                    // Applying what follows would store a later change
                    // without an earlier one.
                    tracing::debug!(error = %e, "change of a failed batch refused on replay");
                    break;
                }
                self.pipeline.apply(op);
            }
        }
        reply_error(unit.waiter, err);
    }

    fn settle(&self, unit: Unit<K, V>, ops: Vec<BatchOp<K, V>>) {
        let replaced = ops.into_iter().map(|op| self.pipeline.apply(op)).collect();
        settle_reply(unit.waiter, replaced);
    }

    async fn retain(&mut self, mut keep: Keep<K, V>) -> Result<usize> {
        let mut doomed = Vec::new();
        let completed = self
            .cache()
            .try_for_each(|key, value| match keep(key, value) {
                Some(true) => true,
                Some(false) => {
                    doomed.push(BatchOp::Delete { key: key.clone() });
                    true
                }
                // The predicate panicked: nothing of this call is applied.
                None => false,
            });
        if !completed {
            return Ok(0);
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        let removed = doomed.len();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let mut batch = Gather::new();
        batch.push(Unit {
            ops: doomed,
            waiter: Waiter::Done(reply),
        });
        self.commit(batch).await;
        answer
            .await
            .map_err(|_| PersistentError::Closed)?
            .map(|()| removed)
    }

    // ---- both modes ---------------------------------------------------

    /// Runs one backend flush for `first` and every flush queued right
    /// behind it. Returns the weight settled.
    async fn flush_group(&mut self, first: Reply<()>) -> usize {
        let mut replies = vec![first];
        while let Some(command) = self.next_ready() {
            match command {
                Command::Flush(reply) => replies.push(reply),
                other => {
                    self.local.push_front(other);
                    break;
                }
            }
        }
        let weight = replies.len();
        let result = self.flush_now().await;
        reply_all(replies, result);
        weight
    }

    async fn flush_now(&mut self) -> Result<()> {
        self.pipeline.health.check()?;
        let covered = self.pipeline.health.persisted.load(Ordering::Acquire);
        let backend = self.backend()?;
        flush_backend(&*backend, &self.pipeline.stats).await?;
        self.pipeline
            .health
            .durable
            .fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }

    async fn clear(&mut self) -> Result<()> {
        self.pipeline.health.check()?;
        let backend = self.backend()?;
        guard_backend(backend.clear(), "clear the store")
            .await
            .inspect_err(|err| self.pipeline.stats.write_failed(err))?;
        if !self.pipeline.write_behind() {
            self.cache().clear();
            self.pipeline.events.cleared(Origin::Local);
        }
        self.cache().clear_stale();
        Ok(())
    }

    /// Brings the cache in line with changes another instance made; on
    /// failure retries a full refresh later, so a cache never stays stale
    /// because one refresh failed (for example while the server restarts).
    /// Runs in order with this map's own writes, so a value read here can
    /// never overwrite a newer local write.
    async fn follow(&mut self, change: RemoteChange<K>) {
        let result = match change {
            RemoteChange::Resync => self.reload("feed").await,
            RemoteChange::Changed(keys) => self.refresh(&keys).await,
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, "could not refresh the cache from the shared store; retrying");
            if self.resync_at.is_none() {
                self.resync_at = Some(Instant::now() + RESYNC_RETRY);
            }
        }
    }

    async fn refresh(&mut self, keys: &[K]) -> Result<()> {
        let backend = self.backend()?;
        let fresh = guard_backend(backend.load_keys_with_expiry(keys), "read changed keys").await?;
        self.pipeline.stats.remote_applied(fresh.len());
        let now = now();
        for (key, found) in fresh {
            let (value, deadline) = match found {
                Some((value, deadline)) => (Some(value), deadline_of(deadline)),
                None => (None, NEVER),
            };
            // An entry that expired before it was read counts as removed
            // (and is swept, here or by the instance that wrote it).
            let live = value.filter(|_| deadline == NEVER || now < deadline);
            let event = self
                .pipeline
                .events
                .change(&key, live.as_ref(), Origin::Remote);
            let replaced = match live {
                Some(value) => self.cache().put(key, value, deadline),
                None => {
                    let replaced = self.cache().remove(&key);
                    if deadline != NEVER {
                        self.cache().note_stale(key);
                    }
                    replaced
                }
            };
            event.publish(replaced.as_ref());
        }
        Ok(())
    }

    /// Replaces the cache with what the store holds, inside a `resync` span;
    /// `reason` says who asked: `"reload"` (a caller) or `"feed"` (the change
    /// feed lost notifications, or a refresh failed).
    async fn reload(&mut self, reason: &'static str) -> Result<()> {
        let span = tracing::info_span!(
            "persistent_map.resync",
            map = self.pipeline.stats.name(),
            reason,
            entries = tracing::field::Empty,
        );
        self.replace_cache().instrument(span.clone()).await?;
        span.record("entries", self.cache().held());
        Ok(())
    }

    async fn replace_cache(&mut self) -> Result<()> {
        let backend = self.backend()?;
        let fresh = Cache::with_capacity(self.cache().held());
        guard_backend(
            backend.load_with_expiry_into(&mut fresh.loader()),
            "load the store",
        )
        .await?;
        // Counted before the cache changes, so whoever sees the new cache
        // also sees the resync in the stats.
        self.pipeline.stats.resynced();
        self.cache().replace_with(fresh);
        self.pipeline.events.resynced();
        self.pipeline.health.cure();
        Ok(())
    }

    /// Deletes entries whose deadline passed, from the store and then from
    /// the cache, as one bounded batch of conditional deletes: an entry
    /// written again since it expired (here or by another instance) stays.
    async fn sweep(&mut self) -> Result<usize> {
        self.pipeline.sweep_queued.store(false, Ordering::Release);
        let now = now();
        let keys = self.cache().expired(now, self.max_batch());
        if keys.is_empty() {
            return Ok(0);
        }
        let at = time_of(now);
        let ops: Vec<BatchOp<K, V>> = keys
            .iter()
            .map(|key| BatchOp::DeleteExpired {
                key: key.clone(),
                now: at,
            })
            .collect();
        self.apply(&ops).await?;
        // Every key was expired (or stale) when gathered, and only this
        // task changes the cache meanwhile: each cached one goes, and is
        // published as expired.
        for op in ops {
            self.pipeline.apply(op);
        }
        self.cache().unstale(&keys);
        self.pipeline.stats.expired_swept(keys.len() as u64);
        Ok(keys.len())
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
