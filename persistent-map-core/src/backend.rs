//! The contract between [`PersistentMap`](crate::PersistentMap) and a storage engine.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{PersistentError, Result};

/// One change in an ordered batch handed to [`StorageBackend::apply_batch`].
///
/// More kinds of change may come in later releases (it is
/// `#[non_exhaustive]`): a backend that meets one it does not know must
/// refuse the batch with [`PersistentError::Unsupported`], never skip it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchOp<K, V> {
    /// Store `value` under `key`, replacing what was there.
    Put {
        /// The key.
        key: K,
        /// The new value.
        value: V,
    },
    /// Remove `key`; removing a missing key is not an error.
    Delete {
        /// The key.
        key: K,
    },
    /// Store `value` under `key` until the wall-clock deadline `expires_at`,
    /// replacing what was there (value and deadline). Only sent to a backend
    /// that declares [`Capabilities::expiry`].
    ///
    /// The deadline is stored with the entry, so that it survives a restart
    /// and every instance sharing the store sees it: loading returns it
    /// through [`StorageBackend::load_with_expiry_into`] and
    /// [`StorageBackend::load_keys_with_expiry`]. The map hands over whole
    /// milliseconds since the Unix epoch, so a backend that stores
    /// milliseconds keeps the deadline exactly.
    PutExpiring {
        /// The key.
        key: K,
        /// The new value.
        value: V,
        /// When the entry expires.
        expires_at: SystemTime,
    },
    /// Remove `key` only if its stored entry has a deadline at or before
    /// `now`: the sweep of an expired entry. An entry with no deadline, or
    /// with a later one (it was written again since it expired, perhaps by
    /// another instance), stays as it is; a missing key is not an error.
    /// Only sent to a backend that declares [`Capabilities::expiry`].
    DeleteExpired {
        /// The key.
        key: K,
        /// The sweep's clock: entries whose deadline is not after it go.
        now: SystemTime,
    },
}

impl<K, V> BatchOp<K, V> {
    /// The key this change concerns.
    pub fn key(&self) -> &K {
        match self {
            BatchOp::Put { key, .. }
            | BatchOp::Delete { key }
            | BatchOp::PutExpiring { key, .. }
            | BatchOp::DeleteExpired { key, .. } => key,
        }
    }
}

/// Optional behaviour a backend declares, so the map and the conformance suite
/// know what they may rely on.
///
/// ```
/// use persistent_map_core::{Capabilities, Durability};
///
/// let caps = Capabilities::new()
///     .with_atomic_batch(true)
///     .with_durability(Durability::OnFlush);
/// assert!(caps.atomic_batch);
/// assert!(!caps.exclusive_lock);
/// assert_eq!(caps.durability, Durability::OnFlush);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// [`StorageBackend::apply_batch`] applies a batch all or nothing, even across a crash.
    pub atomic_batch: bool,
    /// A second instance opened on the same store while this one is open is
    /// refused with [`PersistentError::Locked`].
    pub exclusive_lock: bool,
    /// When an acknowledged change survives a power cut, and so what
    /// [`StorageBackend::flush`] must do.
    pub durability: Durability,
    /// The backend stores a deadline with an entry: it applies
    /// [`BatchOp::PutExpiring`] and [`BatchOp::DeleteExpired`] and returns
    /// deadlines from [`StorageBackend::load_with_expiry_into`] and
    /// [`StorageBackend::load_keys_with_expiry`]. Without it a map refuses
    /// expiry with [`PersistentError::Unsupported`].
    pub expiry: bool,
}

/// When an acknowledged change survives a power cut, as a backend declares
/// it. [`StorageBackend::flush`] may do nothing only for [`OnAcknowledge`],
/// [`ServerManaged`] and [`Volatile`]; a map reports the declaration
/// ([`PersistentMap::durability`](crate::PersistentMap::durability)).
///
/// [`OnAcknowledge`]: Durability::OnAcknowledge
/// [`ServerManaged`]: Durability::ServerManaged
/// [`Volatile`]: Durability::Volatile
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Durability {
    /// Not declared (a backend written for persistent-map 0.1.x): the map
    /// calls `flush` and trusts what it says.
    #[default]
    Undeclared,
    /// An acknowledged change survives a process crash; `flush` syncs it to
    /// the medium, so that it survives a power cut too.
    OnFlush,
    /// Every acknowledged change already survives a power cut (each commit
    /// is synced): `flush` has nothing left to do.
    OnAcknowledge,
    /// A server persists acknowledged changes on its own schedule, and
    /// `flush` cannot force it (for example Redis without an append-only
    /// file): a power cut of the server may lose recent changes.
    ServerManaged,
    /// Nothing outlives the process: `flush` does nothing.
    Volatile,
}

impl Capabilities {
    /// No optional behaviour: batches are applied change by change, no
    /// lock, durability not declared.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            atomic_batch: false,
            exclusive_lock: false,
            durability: Durability::Undeclared,
            expiry: false,
        }
    }

    /// Declares all-or-nothing batches.
    #[must_use]
    pub const fn with_atomic_batch(mut self, yes: bool) -> Self {
        self.atomic_batch = yes;
        self
    }

    /// Declares that a second opener of the same store is refused.
    #[must_use]
    pub const fn with_exclusive_lock(mut self, yes: bool) -> Self {
        self.exclusive_lock = yes;
        self
    }

    /// Declares when acknowledged changes survive a power cut.
    #[must_use]
    pub const fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Declares that entries can carry a stored deadline (expiry).
    #[must_use]
    pub const fn with_expiry(mut self, yes: bool) -> Self {
        self.expiry = yes;
        self
    }
}

/// A storage engine behind a [`PersistentMap`](crate::PersistentMap).
///
/// Only [`load_all`](Self::load_all), [`save`](Self::save) and
/// [`delete`](Self::delete) are required; everything else has a default body,
/// so a backend written for persistent-map 0.1.x compiles unchanged.
///
/// # The contract
///
/// Every sentence below is checked by the published conformance suite
/// (`persistent-map-conformance`), and the bundled backends keep each one.
///
/// ## Calls
///
/// * **One writer per map.** A map calls the write methods (`save`,
///   `delete`, `apply_batch`, `clear`, `flush`) one at a time, in the order
///   its cache saw the changes, and calls `load_keys` and `load_into` for a
///   reload in order with them. Callers outside the map (another map on a
///   clone of the backend, your own code through
///   [`PersistentMap::backend`](crate::PersistentMap::backend)) may call any
///   method at any time, concurrently: each call must be safe and atomic on
///   its own. Two maps on one store are two writers; they stay coherent only
///   through a [`watch`](Self::watch) feed, otherwise through
///   [`reload`](crate::PersistentMap::reload).
/// * **Opening.** A write-through map calls [`watch`](Self::watch) first,
///   then [`load_into`](Self::load_into). Loading happens again on a reload
///   and on a resync, and the default bodies of `clear`, `len`,
///   `contains_key` and `load_keys` load everything too: a backend must not
///   assume it loads once.
/// * **Any batch size.** `apply_batch` accepts a batch of any size (an
///   `insert_many` of 1,000,000 changes), splitting it internally where its
///   driver limits statements or parameters, and keeping it atomic when it
///   declares [`Capabilities::atomic_batch`].
///
/// ## Guarantees
///
/// * **Acknowledged means kept.** When `save`, `delete`, `apply_batch` or
///   `clear` returns `Ok`, the change must survive the process being killed
///   (`kill -9`) right after: it has reached the operating system, a server, or
///   whatever the backend's medium is. It need not yet survive a power cut.
/// * **Flushed means durable.** When [`flush`](Self::flush) returns `Ok`, every
///   change acknowledged before the call is durable on the medium (fsync or the
///   medium's equivalent), so it survives a power cut.
/// * **Failed means not applied.** When `save`, `delete` or `clear` returns
///   `Err`, its change did not happen, and neither did a failed batch on a
///   backend that declares [`Capabilities::atomic_batch`]. A backend without
///   atomic batches may have applied a prefix of a failed batch: the changes
///   before the one that failed, never one after it; the map reads the
///   store's state back by replaying them one by one (every change is
///   idempotent). The one exception is an error of kind
///   [`ErrorKind::OutcomeUnknown`](crate::ErrorKind::OutcomeUnknown)
///   ([`PersistentError::OutcomeUnknown`]): the backend could not tell
///   whether the change happened (its connection broke while the result was
///   on its way), and the map finds out with [`load_keys`](Self::load_keys).
/// * **In order, not necessarily one by one.** The result of a batch must
///   equal applying its changes one by one in order. How a backend gets
///   there is its own business: inside one transaction it may keep only the
///   last change of each key, or group consecutive changes into one
///   statement. What it must never do is reorder changes across calls.
/// * **Idempotent.** Saving the same value twice, or deleting a missing key,
///   is not an error and leaves the same state.
/// * **No holes.** After a crash the store holds a prefix of the changes in
///   the order they were given: never a later change without an earlier one.
/// * **Reading is honest.** `load_all`, `load_into` and `load_keys` return
///   exactly what is stored. A record that no longer decodes is an error
///   naming where it is (file and line, or table and key); it is never
///   skipped or deleted, and loading never changes what a complete record
///   says. The one repair allowed is of what a crash leaves at the end of an
///   append-only log: an incomplete last record (or last batch), which a
///   backend may cut off at load, with a warning.
///
/// # Example
///
/// A backend that keeps its data in a shared `HashMap` of JSON text:
///
/// ```
/// use std::collections::HashMap;
/// use std::hash::Hash;
/// use std::sync::{Arc, Mutex};
///
/// use persistent_map_core::{PersistentError, PersistentMap, StorageBackend};
/// use serde::{de::DeserializeOwned, Serialize};
///
/// #[derive(Debug, Clone, Default)]
/// struct JsonCells(Arc<Mutex<HashMap<String, String>>>);
///
/// #[async_trait::async_trait]
/// impl<K, V> StorageBackend<K, V> for JsonCells
/// where
///     K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
///     V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
/// {
///     async fn load_all(&self) -> Result<HashMap<K, V>, PersistentError> {
///         let cells = self.0.lock().expect("not poisoned");
///         let mut out = HashMap::new();
///         for (k, v) in cells.iter() {
///             out.insert(serde_json::from_str(k)?, serde_json::from_str(v)?);
///         }
///         Ok(out)
///     }
///
///     async fn save(&self, key: K, value: V) -> Result<(), PersistentError> {
///         let (k, v) = (serde_json::to_string(&key)?, serde_json::to_string(&value)?);
///         self.0.lock().expect("not poisoned").insert(k, v);
///         Ok(())
///     }
///
///     async fn delete(&self, key: &K) -> Result<(), PersistentError> {
///         let k = serde_json::to_string(key)?;
///         self.0.lock().expect("not poisoned").remove(&k);
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> persistent_map_core::Result<()> {
/// let cells = JsonCells::default();
/// let map = PersistentMap::new(cells.clone()).await?;
/// map.insert(1_u32, "one".to_string()).await?;
/// drop(map);
///
/// let again: PersistentMap<u32, String, _> = PersistentMap::new(cells).await?;
/// assert_eq!(again.get(&1), Some("one".to_string()));
/// # Ok(())
/// # }
/// ```
#[async_trait::async_trait]
pub trait StorageBackend<K, V>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Returns every stored entry. Called when a map opens (through the
    /// default [`load_into`](Self::load_into)), on every reload, and by the
    /// default bodies of other methods.
    ///
    /// An empty or not yet created store is an empty map, not an error.
    ///
    /// # Errors
    ///
    /// A record that does not decode, a damaged file, an unreachable server.
    /// Loading never changes what a complete record says (see "Reading is
    /// honest" above).
    async fn load_all(&self) -> Result<HashMap<K, V>, PersistentError>;

    /// Stores `value` under `key`, replacing what was there.
    ///
    /// `Ok` means the change survives a process crash (see the contract above).
    ///
    /// # Errors
    ///
    /// When the change could not be stored; it was then not applied.
    async fn save(&self, key: K, value: V) -> Result<(), PersistentError>;

    /// Removes `key`. Removing a missing key is `Ok`.
    ///
    /// # Errors
    ///
    /// When the removal could not be stored; it was then not applied.
    async fn delete(&self, key: &K) -> Result<(), PersistentError>;

    /// Makes every change acknowledged so far durable on the medium.
    ///
    /// The default does nothing, which is right only for a backend that
    /// declares [`Durability::OnAcknowledge`], [`Durability::ServerManaged`]
    /// or [`Durability::Volatile`] in its [`capabilities`](Self::capabilities).
    ///
    /// # Errors
    ///
    /// When durability cannot be confirmed (for example fsync failed). A
    /// backend must never return `Ok` after a failed sync.
    async fn flush(&self) -> Result<(), PersistentError> {
        Ok(())
    }

    /// Returns whether `key` is stored. The default loads everything; the map
    /// itself never calls it (its cache answers), it is kept for 0.1.x code.
    ///
    /// # Errors
    ///
    /// As [`load_all`](Self::load_all).
    async fn contains_key(&self, key: &K) -> Result<bool, PersistentError> {
        Ok(self.load_all().await?.contains_key(key))
    }

    /// Returns the number of stored entries. The default loads everything.
    ///
    /// # Errors
    ///
    /// As [`load_all`](Self::load_all).
    async fn len(&self) -> Result<usize, PersistentError> {
        Ok(self.load_all().await?.len())
    }

    /// Returns whether the store is empty. The default uses [`len`](Self::len).
    ///
    /// # Errors
    ///
    /// As [`load_all`](Self::load_all).
    async fn is_empty(&self) -> Result<bool, PersistentError> {
        Ok(self.len().await? == 0)
    }

    /// Applies an ordered batch of changes.
    ///
    /// The default applies them one by one with [`save`](Self::save) and
    /// [`delete`](Self::delete) and stops at the first error, so after a failure
    /// a prefix of the batch is applied. A backend that declares
    /// [`Capabilities::atomic_batch`] overrides this to apply the batch in one
    /// transaction: all of it or none of it, even across a crash.
    ///
    /// # Errors
    ///
    /// The first change that could not be applied.
    async fn apply_batch(&self, batch: &[BatchOp<K, V>]) -> Result<(), PersistentError> {
        for op in batch {
            match op {
                BatchOp::Put { key, value } => self.save(key.clone(), value.clone()).await?,
                BatchOp::Delete { key } => self.delete(key).await?,
                BatchOp::PutExpiring { .. } | BatchOp::DeleteExpired { .. } => {
                    return Err(PersistentError::Unsupported {
                        backend: std::any::type_name::<Self>(),
                        feature: "expiry",
                    })
                }
            }
        }
        Ok(())
    }

    /// Removes every entry. The default loads every key and deletes it in one batch.
    ///
    /// # Errors
    ///
    /// As [`apply_batch`](Self::apply_batch).
    async fn clear(&self) -> Result<(), PersistentError> {
        let all = self.load_all().await?;
        let batch: Vec<BatchOp<K, V>> =
            all.into_keys().map(|key| BatchOp::Delete { key }).collect();
        self.apply_batch(&batch).await
    }

    /// Streams every stored entry into `sink`, for opening large stores without
    /// building an intermediate `HashMap`. The default calls
    /// [`load_all`](Self::load_all).
    ///
    /// # Errors
    ///
    /// As [`load_all`](Self::load_all).
    async fn load_into(&self, sink: &mut (dyn FnMut(K, V) + Send)) -> Result<(), PersistentError> {
        for (key, value) in self.load_all().await? {
            sink(key, value);
        }
        Ok(())
    }

    /// Returns the current stored value of each of `keys` (`None` for a
    /// missing key), in order. Used to refresh the cache after another
    /// instance changed those keys. The default loads everything.
    ///
    /// # Errors
    ///
    /// As [`load_all`](Self::load_all).
    async fn load_keys(&self, keys: &[K]) -> Result<Vec<(K, Option<V>)>, PersistentError> {
        let all = self.load_all().await?;
        // A key asked twice is answered twice: `get`, not `remove`.
        Ok(keys
            .iter()
            .map(|key| (key.clone(), all.get(key).cloned()))
            .collect())
    }

    /// [`load_into`](Self::load_into) with each entry's deadline (`None`: it
    /// never expires). Entries whose deadline has passed are returned too,
    /// as stored: the map leaves them out of its cache and sweeps them.
    ///
    /// A backend that declares [`Capabilities::expiry`] overrides it; the
    /// default gives every entry of `load_into` no deadline.
    ///
    /// # Errors
    ///
    /// As [`load_all`](Self::load_all); a deadline that does not decode is
    /// an error naming where it is, like a value.
    async fn load_with_expiry_into(
        &self,
        sink: &mut (dyn FnMut(K, V, Option<SystemTime>) + Send),
    ) -> Result<(), PersistentError> {
        self.load_into(&mut |key, value| sink(key, value, None))
            .await
    }

    /// [`load_keys`](Self::load_keys) with each present entry's deadline
    /// (`None`: it never expires), expired entries included, as stored.
    ///
    /// A backend that declares [`Capabilities::expiry`] overrides it; the
    /// default gives every entry of `load_keys` no deadline.
    ///
    /// # Errors
    ///
    /// As [`load_keys`](Self::load_keys).
    #[allow(clippy::type_complexity)]
    async fn load_keys_with_expiry(
        &self,
        keys: &[K],
    ) -> Result<Vec<(K, Option<(V, Option<SystemTime>)>)>, PersistentError> {
        Ok(self
            .load_keys(keys)
            .await?
            .into_iter()
            .map(|(key, value)| (key, value.map(|value| (value, None))))
            .collect())
    }

    /// For a store shared by several instances (a database server): a feed
    /// of the keys other instances change, so this instance's cache follows
    /// them. The default (and any backend that returns `None`) has no feed.
    ///
    /// A write-through map calls it once, when it opens, **before** it loads
    /// the store with [`load_into`](Self::load_into): a feed subscribed when
    /// `watch` returns misses nothing, since the load covers what happened
    /// before and the feed what happens after. Write-behind maps do not call
    /// it (their cache may be ahead of the store).
    ///
    /// The backend must leave out changes made through itself, and must send
    /// [`RemoteChange::Resync`] whenever notifications may have been missed
    /// (for example after a reconnect). The map reacts from its writer task,
    /// in order with its own writes, by reading the keys' current values with
    /// [`load_keys`](Self::load_keys).
    ///
    /// # Errors
    ///
    /// When the feed cannot be set up; the map then fails to open.
    async fn watch(&self) -> Result<Option<RemoteChanges<K>>, PersistentError> {
        Ok(None)
    }

    /// Declares optional behaviour. The default declares none.
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
    }
}

/// A [`StorageBackend::watch`] feed: a stream of what other instances
/// changed, ending when the feed stops. Any [`Stream`](futures::Stream)
/// will do, whatever runtime or channel produces it:
///
/// ```
/// use persistent_map_core::{RemoteChange, RemoteChanges};
///
/// let changes: RemoteChanges<String> = Box::pin(futures::stream::iter([
///     RemoteChange::Changed(vec!["a".to_string()]),
///     RemoteChange::Resync,
/// ]));
/// # drop(changes);
/// ```
pub type RemoteChanges<K> =
    std::pin::Pin<Box<dyn futures::Stream<Item = RemoteChange<K>> + Send + 'static>>;

/// What another instance sharing the store did, as announced by a
/// [`StorageBackend::watch`] feed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteChange<K> {
    /// These keys were written or removed; their current values must be read.
    Changed(Vec<K>),
    /// Notifications may have been lost: everything must be read again.
    Resync,
}
