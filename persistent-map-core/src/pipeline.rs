//! The write pipeline: every change flows, in order, through one queue that a
//! single task drains into the backend in batches.
//!
//! The writer task is the only code that mutates the cache. It applies a
//! batch to the cache after the backend acknowledged it, so the cache never
//! holds a change the store refused, persistence can never be reordered
//! behind the cache's back, and concurrent callers share one backend commit
//! (group commit).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use dashmap::DashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::backend::{BatchOp, StorageBackend};
use crate::error::{PersistentError, Result};

/// A reply channel for one caller.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// A predicate for `retain`, run by the writer task against the cache.
pub(crate) type Keep<K, V> = Box<dyn FnMut(&K, &V) -> bool + Send>;

/// One request to the writer task.
pub(crate) enum Command<K, V> {
    /// One change; the reply carries the value it replaced.
    Write(BatchOp<K, V>, Reply<Option<V>>),
    /// Remove every entry for which the predicate returns `false`; the reply
    /// carries the number removed.
    Retain(Keep<K, V>, Reply<usize>),
    /// Empty the store and the cache.
    Clear(Reply<()>),
    /// Make everything acknowledged so far durable.
    Flush(Reply<()>),
    /// Replace the cache with what the store holds.
    Reload(Reply<()>),
    /// Flush, then stop: commands queued behind it are refused.
    Close(Reply<()>),
}

/// Tuning of the writer task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PipelineConfig {
    /// Upper bound on changes per backend batch.
    pub(crate) max_batch: usize,
}

/// Who to tell when a change in a batch is settled.
type Waiter<V> = Reply<Option<V>>;

pub(crate) fn spawn_writer<K, V, B>(
    cache: Arc<DashMap<K, V>>,
    backend: Arc<B>,
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
    let writer = Writer {
        cache,
        backend,
        config,
        rx,
    };
    let handle = tokio::spawn(writer.run());
    (tx, handle)
}

struct Writer<K, V, B> {
    cache: Arc<DashMap<K, V>>,
    backend: Arc<B>,
    config: PipelineConfig,
    rx: mpsc::UnboundedReceiver<Command<K, V>>,
}

impl<K, V, B> Writer<K, V, B>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Send + Sync + 'static,
{
    async fn run(mut self) {
        let mut next = self.rx.recv().await;
        while let Some(command) = next.take() {
            next = match command {
                Command::Write(..) => self.write_group(command).await,
                Command::Flush(reply) => self.flush_group(reply).await,
                Command::Clear(reply) => {
                    let _ = reply.send(self.clear().await);
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
                Command::Close(reply) => {
                    let _ = reply.send(self.backend.flush().await);
                    break;
                }
            };
            if next.is_none() {
                next = self.rx.recv().await;
            }
        }
        tracing::trace!("write pipeline stopped");
    }

    /// Gathers every write already queued behind `first` (up to the batch
    /// limit) and commits them together. Returns the first non-write command
    /// met, which must run after this batch.
    async fn write_group(&mut self, first: Command<K, V>) -> Option<Command<K, V>> {
        let mut ops = Vec::new();
        let mut waiters = Vec::new();
        let mut barrier = None;
        let mut command = Some(first);
        while let Some(c) = command.take() {
            match c {
                Command::Write(op, reply) => {
                    ops.push(op);
                    waiters.push(reply);
                }
                other => {
                    barrier = Some(other);
                    break;
                }
            }
            if ops.len() >= self.config.max_batch {
                break;
            }
            command = self.rx.try_recv().ok();
        }
        self.commit(ops, waiters).await;
        barrier
    }

    async fn commit(&mut self, ops: Vec<BatchOp<K, V>>, waiters: Vec<Waiter<V>>) {
        let (ops, waiters) = self.drop_noop_deletes(ops, waiters);
        if ops.is_empty() {
            return;
        }
        match self.backend.apply_batch(&ops).await {
            Ok(()) => {
                for (op, waiter) in ops.into_iter().zip(waiters) {
                    let replaced = self.apply_to_cache(op);
                    answer(waiter, Ok(replaced));
                }
            }
            Err(err) if ops.len() == 1 => {
                if let Some(waiter) = waiters.into_iter().next() {
                    answer(waiter, Err(err));
                }
            }
            Err(err) => {
                // Replay change by change so that one bad change fails only
                // its own caller. Every change is idempotent, so replaying a
                // prefix the backend already applied is safe.
                tracing::debug!(error = %err, changes = ops.len(), "batch failed; replaying change by change");
                for (op, waiter) in ops.into_iter().zip(waiters) {
                    match self.backend.apply_batch(std::slice::from_ref(&op)).await {
                        Ok(()) => {
                            let replaced = self.apply_to_cache(op);
                            answer(waiter, Ok(replaced));
                        }
                        Err(err) => answer(waiter, Err(err)),
                    }
                }
            }
        }
    }

    /// A delete of a key that is neither cached nor put earlier in the batch
    /// changes nothing: answer it now instead of writing it.
    fn drop_noop_deletes(
        &self,
        ops: Vec<BatchOp<K, V>>,
        waiters: Vec<Waiter<V>>,
    ) -> (Vec<BatchOp<K, V>>, Vec<Waiter<V>>) {
        if !ops.iter().any(|op| matches!(op, BatchOp::Delete { .. })) {
            return (ops, waiters);
        }
        let mut present: HashMap<K, bool> = HashMap::new();
        let mut kept_ops = Vec::with_capacity(ops.len());
        let mut kept_waiters = Vec::with_capacity(waiters.len());
        for (op, waiter) in ops.into_iter().zip(waiters) {
            match &op {
                BatchOp::Put { key, .. } => {
                    present.insert(key.clone(), true);
                }
                BatchOp::Delete { key } => {
                    let exists = present
                        .get(key)
                        .copied()
                        .unwrap_or_else(|| self.cache.contains_key(key));
                    if !exists {
                        answer(waiter, Ok(None));
                        continue;
                    }
                    present.insert(key.clone(), false);
                }
            }
            kept_ops.push(op);
            kept_waiters.push(waiter);
        }
        (kept_ops, kept_waiters)
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
        let mut barrier = None;
        while let Ok(command) = self.rx.try_recv() {
            match command {
                Command::Flush(reply) => replies.push(reply),
                other => {
                    barrier = Some(other);
                    break;
                }
            }
        }
        let result = self.backend.flush().await;
        reply_all(replies, result);
        barrier
    }

    async fn clear(&mut self) -> Result<()> {
        self.backend.clear().await?;
        self.cache.clear();
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
        self.backend.apply_batch(&doomed).await?;
        let removed = doomed.len();
        for op in doomed {
            self.apply_to_cache(op);
        }
        Ok(removed)
    }

    async fn reload(&mut self) -> Result<()> {
        let fresh = DashMap::with_capacity(self.cache.len());
        self.backend
            .load_into(&mut |k, v| {
                fresh.insert(k, v);
            })
            .await?;
        self.cache.retain(|k, _| fresh.contains_key(k));
        for (k, v) in fresh {
            self.cache.insert(k, v);
        }
        Ok(())
    }
}

fn answer<V>(waiter: Waiter<V>, result: Result<Option<V>>) {
    // The caller may have stopped waiting; the change stands either way.
    let _ = waiter.send(result);
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
