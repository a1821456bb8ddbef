//! Write-behind changes, made by the caller: each one is decided, applied to
//! the cache and queued for the writer inside the queue's critical section,
//! so the order of the queue is the order of the cache, and a user closure
//! runs with no lock of the cache held (it may read the map).

use std::hash::Hash;
use std::sync::atomic::Ordering;

use crate::backend::BatchOp;
use crate::batch::Transaction;
use crate::cache::{now, time_of};
use crate::closure::{guarded, Panic};
use crate::error::{PersistentError, Result};
use crate::events::Origin;
use crate::queue::{Cache, Command, Decision, Pipeline};

/// What a write-behind change did to the cache.
pub(crate) enum Change<K, V, R> {
    /// Nothing: answer `R`.
    Unchanged(R),
    /// Applied to the cache; the command persists it. Answer `R`.
    Queued(Command<K, V>, R),
    /// Refused before anything was applied.
    Refused(PersistentError),
}

impl<K, V> Pipeline<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `change` in the queue's critical section and queues what it
    /// returns. A panic of user code inside it resumes here, after the lock
    /// is released, with nothing applied.
    async fn change_behind<R>(
        &self,
        change: impl FnOnce(&Cache<K, V>) -> Result<Change<K, V, R>, Panic>,
    ) -> Result<R> {
        self.health.check()?;
        let mut state = self.admit().await?;
        match change(&self.cache) {
            Ok(Change::Unchanged(answer)) => Ok(answer),
            Ok(Change::Refused(err)) => Err(err),
            Ok(Change::Queued(command, answer)) => {
                let weight = command.weight() as u64;
                self.enqueue(&mut state, command, false);
                self.health.queued.fetch_add(weight, Ordering::AcqRel);
                Ok(answer)
            }
            Err(panic) => {
                drop(state);
                std::panic::resume_unwind(panic)
            }
        }
    }

    pub(crate) async fn insert_behind(&self, op: BatchOp<K, V>) -> Result<Option<V>> {
        self.change_behind(|_| {
            let replaced = self.apply(op.clone());
            Ok(Change::Queued(Command::Persist(op), replaced))
        })
        .await
    }

    pub(crate) async fn remove_behind(&self, key: K) -> Result<Option<V>> {
        self.change_behind(|cache| {
            let removed = cache.remove(&key);
            self.events.removed(&key, removed.as_ref(), Origin::Local);
            Ok(self.delete_change(key, removed.is_some(), removed))
        })
        .await
    }

    /// Queues the removal of `key` unless the store is this map's alone and
    /// never had it.
    fn delete_change<R>(&self, key: K, was_cached: bool, answer: R) -> Change<K, V, R> {
        if !was_cached && self.exclusive {
            Change::Unchanged(answer)
        } else {
            Change::Queued(Command::Persist(BatchOp::Delete { key }), answer)
        }
    }

    /// A read-modify-write of `key`; returns the value it leaves.
    pub(crate) async fn update_behind(
        &self,
        key: K,
        decide: impl FnOnce(Option<&V>) -> Decision<V>,
    ) -> Result<Option<V>> {
        self.change_behind(|cache| {
            // A clone, so no lock of the cache is held while user code runs.
            let current = cache.get_with_deadline(&key);
            let decision = guarded(|| decide(current.as_ref().map(|(value, _)| value)))?;
            let (op, after) = self.decided(key, current, decision);
            Ok(match op {
                None => Change::Unchanged(after),
                Some(BatchOp::Delete { key }) => {
                    let removed = cache.remove(&key);
                    self.events.removed(&key, removed.as_ref(), Origin::Local);
                    self.delete_change(key, removed.is_some(), None)
                }
                Some(op) => {
                    self.apply(op.clone());
                    Change::Queued(Command::Persist(op), after)
                }
            })
        })
        .await
    }

    /// Changes stored all or none; returns the values they replaced.
    pub(crate) async fn many_behind(&self, ops: Vec<BatchOp<K, V>>) -> Result<Vec<Option<V>>> {
        self.change_behind(|_| {
            let replaced = ops.iter().map(|op| self.apply(op.clone())).collect();
            Ok(Change::Queued(Command::PersistGroup(ops), replaced))
        })
        .await
    }

    pub(crate) async fn transaction_behind<R>(
        &self,
        body: impl FnOnce(&mut Transaction<'_, K, V>) -> R,
    ) -> Result<R> {
        self.change_behind(|cache| {
            let mut tx = Transaction::new(cache);
            let answer = guarded(|| body(&mut tx))?;
            let ops = self.stamp_all(tx.into_ops());
            if ops.is_empty() {
                return Ok(Change::Unchanged(answer));
            }
            if let Err(err) = self.require_expiry(&ops) {
                return Ok(Change::Refused(err));
            }
            for op in &ops {
                self.apply(op.clone());
            }
            Ok(Change::Queued(Command::PersistGroup(ops), answer))
        })
        .await
    }

    pub(crate) async fn retain_behind(
        &self,
        mut keep: impl FnMut(&K, &V) -> bool,
    ) -> Result<usize> {
        self.change_behind(|cache| {
            // Only readers can hold a lock of the cache now (writers wait for
            // the queue's lock), so `keep` may read the map.
            let doomed: Vec<K> = guarded(|| {
                let mut doomed = Vec::new();
                cache.for_each(|key, value| {
                    if !keep(key, value) {
                        doomed.push(key.clone());
                    }
                });
                doomed
            })?;
            if doomed.is_empty() {
                return Ok(Change::Unchanged(0));
            }
            for key in &doomed {
                let removed = cache.remove(key);
                self.events.removed(key, removed.as_ref(), Origin::Local);
            }
            let removed = doomed.len();
            let ops = doomed
                .into_iter()
                .map(|key| BatchOp::Delete { key })
                .collect();
            Ok(Change::Queued(Command::PersistGroup(ops), removed))
        })
        .await
    }

    pub(crate) async fn clear_behind(&self) -> Result<()> {
        self.change_behind(|cache| {
            cache.clear();
            self.events.cleared(Origin::Local);
            Ok(Change::Queued(Command::Clear(None), ()))
        })
        .await
    }

    /// Removes expired entries from the cache and queues their deletion
    /// from the store, as one bounded group of conditional deletes.
    pub(crate) async fn sweep_behind(&self) -> Result<usize> {
        self.change_behind(|cache| {
            let now = now();
            let keys = cache.expired(now, self.config.max_batch);
            if keys.is_empty() {
                return Ok(Change::Unchanged(0));
            }
            let swept = keys.len();
            cache.unstale(&keys);
            self.stats.expired_swept(keys.len() as u64);
            let at = time_of(now);
            let ops: Vec<BatchOp<K, V>> = keys
                .into_iter()
                .map(|key| BatchOp::DeleteExpired { key, now: at })
                .collect();
            // Each cached one goes, and is published as expired.
            for op in &ops {
                self.apply(op.clone());
            }
            Ok(Change::Queued(Command::PersistGroup(ops), swept))
        })
        .await
    }

    /// Queues a reload and makes writers wait until it is done, whatever
    /// becomes of the caller's future.
    pub(crate) async fn reload_behind(&self, command: Command<K, V>) -> Result<()> {
        let mut state = self.admit().await?;
        state.reloading = true;
        self.enqueue(&mut state, command, true);
        Ok(())
    }
}
