//! Groups of changes applied together: [`Batch`] (prepared up front) and
//! [`Transaction`] (built by a closure that can read the map).

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

use std::time::Duration;

use crate::backend::BatchOp;
use crate::cache::deadline_in;
use crate::queue::{put_op, Cache};

/// An ordered list of puts and removes, applied atomically by
/// [`PersistentMap::apply`](crate::PersistentMap::apply).
///
/// ```
/// use persistent_map_core::{Batch, PersistentMap};
/// use persistent_map_memory::InMemoryBackend;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> persistent_map_core::Result<()> {
/// let map = PersistentMap::new(InMemoryBackend::new()).await?;
/// map.insert("from".to_string(), 10_i64).await?;
///
/// let mut batch = Batch::new();
/// batch.insert("to".to_string(), 10).remove("from".to_string());
/// map.apply(batch).await?;
///
/// assert_eq!(map.get("to"), Some(10));
/// assert!(!map.contains_key("from"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Batch<K, V> {
    pub(crate) ops: Vec<BatchOp<K, V>>,
}

impl<K, V> Batch<K, V> {
    /// An empty batch.
    #[must_use]
    pub fn new() -> Self {
        Self { ops: Vec::new() }
    }

    /// Adds a put of `value` under `key`.
    pub fn insert(&mut self, key: K, value: V) -> &mut Self {
        self.ops.push(BatchOp::Put { key, value });
        self
    }

    /// Adds a removal of `key`.
    pub fn remove(&mut self, key: K) -> &mut Self {
        self.ops.push(BatchOp::Delete { key });
        self
    }

    /// Adds a put of `value` under `key` that expires `ttl` from now (see
    /// [`PersistentMap::insert_with_ttl`](crate::PersistentMap::insert_with_ttl)).
    pub fn insert_with_ttl(&mut self, key: K, value: V, ttl: Duration) -> &mut Self {
        self.ops.push(put_op(key, value, deadline_in(ttl)));
        self
    }

    /// The number of changes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no changes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The changes, in order.
    #[must_use]
    pub fn ops(&self) -> &[BatchOp<K, V>] {
        &self.ops
    }
}

impl<K, V> Default for Batch<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for Batch<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("len", &self.ops.len())
            .finish()
    }
}

impl<K, V> FromIterator<BatchOp<K, V>> for Batch<K, V> {
    fn from_iter<I: IntoIterator<Item = BatchOp<K, V>>>(iter: I) -> Self {
        Self {
            ops: iter.into_iter().collect(),
        }
    }
}

/// The view a [`PersistentMap::transaction`](crate::PersistentMap::transaction)
/// closure works on: reads see the map plus the transaction's own changes, and
/// no other write of the map happens while the closure runs.
pub struct Transaction<'a, K, V> {
    cache: &'a Cache<K, V>,
    overlay: HashMap<K, Option<V>>,
    ops: Vec<BatchOp<K, V>>,
}

impl<'a, K, V> Transaction<'a, K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    pub(crate) fn new(cache: &'a Cache<K, V>) -> Self {
        Self {
            cache,
            overlay: HashMap::new(),
            ops: Vec::new(),
        }
    }

    /// The value under `key` as this transaction sees it.
    pub fn get(&self, key: &K) -> Option<V> {
        match self.overlay.get(key) {
            Some(value) => value.clone(),
            None => self.cache.get(key),
        }
    }

    /// Whether `key` is present as this transaction sees it.
    pub fn contains_key(&self, key: &K) -> bool {
        match self.overlay.get(key) {
            Some(value) => value.is_some(),
            None => self.cache.contains_key(key),
        }
    }

    /// Puts `value` under `key` (with the map's default time to live, if
    /// it has one); returns the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = self.get(&key);
        self.overlay.insert(key.clone(), Some(value.clone()));
        self.ops.push(BatchOp::Put { key, value });
        old
    }

    /// Puts `value` under `key`, expiring `ttl` from now; returns the value
    /// it replaces. The transaction fails with
    /// [`PersistentError::Unsupported`](crate::PersistentError::Unsupported)
    /// when the backend stores no deadlines.
    pub fn insert_with_ttl(&mut self, key: K, value: V, ttl: Duration) -> Option<V> {
        let old = self.get(&key);
        self.overlay.insert(key.clone(), Some(value.clone()));
        self.ops.push(put_op(key, value, deadline_in(ttl)));
        old
    }

    /// Removes `key`; returns the value it had.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let old = self.get(key);
        if old.is_some() {
            self.overlay.insert(key.clone(), None);
            self.ops.push(BatchOp::Delete { key: key.clone() });
        }
        old
    }

    /// Drops every change made so far in this transaction.
    pub fn rollback(&mut self) {
        self.overlay.clear();
        self.ops.clear();
    }

    pub(crate) fn into_ops(self) -> Vec<BatchOp<K, V>> {
        self.ops
    }
}

impl<K, V> fmt::Debug for Transaction<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("changes", &self.ops.len())
            .finish_non_exhaustive()
    }
}
