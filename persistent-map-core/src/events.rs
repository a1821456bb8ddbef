//! Change subscriptions: [`PersistentMap::subscribe`] gives a [`Subscription`],
//! a stream of [`MapEvent`]s in the order the map applied the changes.
//!
//! Events are published by the code that applies a change to the cache, at
//! the moment it applies it: the writer task (or a caller leading its own
//! commit) after the backend acknowledged a write-through change, and the
//! caller inside the queue's critical section for a write-behind change. So
//! they leave in exactly the cache's order, and a write-through event is
//! never one the backend refused.
//!
//! The channel is a `tokio::sync::broadcast` of bounded capacity: a sender
//! never waits, and a subscriber that falls behind loses the oldest events,
//! which its [`Subscription`] reports as one [`MapEvent::Lagged`] before it
//! goes on from the present. Its buffer is allocated on the first
//! `subscribe`, so a map nobody subscribes to pays nothing for it.
//!
//! With no subscriber, a write builds no event (no clone of a key or a
//! value): every publication point first reads a counter of live
//! subscriptions, one relaxed atomic load. `broadcast::Sender::receiver_count`
//! would take a lock on every write.
//!
//! [`PersistentMap::subscribe`]: crate::PersistentMap::subscribe

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::backend::BatchOp;

/// One change of a [`PersistentMap`](crate::PersistentMap), as a
/// [`Subscription`] delivers it.
///
/// Events arrive in the order the map applied the changes to its cache,
/// which is also the order they reach the store. See
/// [`PersistentMap::subscribe`](crate::PersistentMap::subscribe) for what an
/// event promises in each mode.
///
/// New kinds may be added in minor releases: match with a `_` arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapEvent<K, V> {
    /// `key` now holds `value`: an insert, or an update of a present key.
    Inserted {
        /// The key written.
        key: K,
        /// The value it replaced, as this map's cache knew it (`None` for a
        /// new key). On a shared store the cache may not have seen another
        /// instance's latest write yet.
        old: Option<V>,
        /// The value it holds now.
        value: V,
        /// Whether this map made the change or followed another instance.
        origin: Origin,
    },
    /// `key` was removed.
    ///
    /// `old` is the value it had, as this map's cache knew it. It is `None`
    /// only for a removal this map wrote to a store others may write (one
    /// without an exclusive lock) of a key its cache did not hold: the
    /// removal was written anyway, since another instance may have added
    /// the key. On a store this map holds exclusively, and for remote
    /// changes, removing a key the cache lacks changes nothing and gives no
    /// event.
    Removed {
        /// The key removed.
        key: K,
        /// The value it had, as the cache knew it.
        old: Option<V>,
        /// Whether this map made the change or followed another instance.
        origin: Origin,
    },
    /// An entry's deadline passed and the sweep removed it.
    Expired {
        /// The key that expired.
        key: K,
        /// The value it held.
        value: V,
    },
    /// Every entry was removed ([`clear`](crate::PersistentMap::clear)).
    Cleared {
        /// Whether this map made the change or followed another instance.
        origin: Origin,
    },
    /// The whole cache was replaced with what the store holds: a
    /// [`reload`](crate::PersistentMap::reload), or a resync after the
    /// change feed of a shared store lost notifications. The changes it
    /// brought in are not itemized: re-read what you care about.
    Resynced,
    /// This subscription fell behind and `missed` events were dropped for
    /// it. The next item is the next change from the present.
    ///
    /// `missed` counts exactly the events this subscription will never
    /// yield: those the channel overwrote before they were read, plus those
    /// still buffered that it skipped to catch up. Other subscriptions and
    /// the map's writers are not affected.
    Lagged {
        /// How many events this subscription lost.
        missed: u64,
    },
}

/// Who made a change that a [`MapEvent`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// This map, through any of its handles.
    Local,
    /// Another instance on a shared store: the map learned of it through the
    /// backend's change feed ([`StorageBackend::watch`](crate::StorageBackend::watch))
    /// and re-read the key.
    Remote,
}

/// A stream of the [`MapEvent`]s of one map, from
/// [`PersistentMap::subscribe`](crate::PersistentMap::subscribe).
///
/// It yields every change applied after it was created, in order. A
/// subscription that is not read does not slow the map down: once it is
/// more events behind than the map's
/// [`event_capacity`](crate::PersistentMapBuilder::event_capacity), it loses
/// the oldest ones and then yields one [`MapEvent::Lagged`] saying how many,
/// followed by the changes from that moment on.
///
/// The stream ends (yields `None`) once the map is closed, or its last
/// handle dropped, and the events published before that were read.
/// Dropping a subscription unsubscribes it.
pub struct Subscription<K, V> {
    events: Pin<Box<dyn Stream<Item = MapEvent<K, V>> + Send + Sync>>,
    _counted: Counted,
}

/// Keeps one subscription in the map's count of live subscriptions.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<K, V> Stream for Subscription<K, V> {
    type Item = MapEvent<K, V>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.as_mut().poll_next(cx)
    }
}

impl<K, V> fmt::Debug for Subscription<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// The subscriptions of one map and the channel that feeds them.
pub(crate) struct Events<K, V> {
    capacity: usize,
    /// The store is this map's alone: removing a key the cache lacks changes
    /// nothing, so it gives no event.
    exclusive: bool,
    /// Live subscriptions; read on every write.
    subscribers: Arc<AtomicUsize>,
    channel: Mutex<Channel<K, V>>,
}

enum Channel<K, V> {
    /// Nobody subscribed yet: no buffer is allocated.
    Unused,
    Open(broadcast::Sender<MapEvent<K, V>>),
    /// The map is closed: subscriptions end once they read what is buffered.
    Closed,
}

/// What a change will publish once the value it replaced is known; nothing
/// when nobody listens.
#[must_use = "a change is published by `publish`"]
pub(crate) struct Pending<'a, K, V> {
    events: &'a Events<K, V>,
    // Boxed, so that with no subscriber this is one null pointer, not a
    // key-and-value-sized `None` the write path copies around.
    change: Option<Box<Change<K, V>>>,
}

enum Change<K, V> {
    Put(K, V, Origin),
    Delete(K, Origin),
    Expire(K),
}

impl<K, V> Events<K, V> {
    /// `capacity` is the builder's `event_capacity` (at least 1).
    pub(crate) fn new(capacity: usize, exclusive: bool) -> Self {
        Self {
            capacity,
            exclusive,
            subscribers: Arc::default(),
            channel: Mutex::new(Channel::Unused),
        }
    }

    /// Whether anyone subscribed: publication points build nothing otherwise.
    #[inline]
    pub(crate) fn watched(&self) -> bool {
        // Relaxed is enough: a subscription created before a write is made
        // visible to the task applying that write by the queue's lock (or the
        // task hand-off) the write went through.
        self.subscribers.load(Ordering::Relaxed) > 0
    }

    fn channel(&self) -> MutexGuard<'_, Channel<K, V>> {
        // Nothing that can panic runs under this lock.
        self.channel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The map stopped: every subscription ends after what is buffered.
    pub(crate) fn close(&self) {
        let sender = std::mem::replace(&mut *self.channel(), Channel::Closed);
        drop(sender);
    }
}

impl<K, V> Events<K, V>
where
    K: Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A new subscription, seeing every change published from now on.
    pub(crate) fn subscribe(&self) -> Subscription<K, V> {
        let receiver = {
            let mut channel = self.channel();
            // Counted before it can receive, so no write applied once this
            // returns skips building its event.
            self.subscribers.fetch_add(1, Ordering::AcqRel);
            match &mut *channel {
                Channel::Open(sender) => sender.subscribe(),
                Channel::Unused => {
                    let (sender, receiver) = broadcast::channel(self.capacity);
                    *channel = Channel::Open(sender);
                    receiver
                }
                Channel::Closed => {
                    // Ends at once: the sender is gone.
                    broadcast::channel(1).1
                }
            }
        };
        Subscription {
            events: Box::pin(receive(receiver)),
            _counted: Counted(Arc::clone(&self.subscribers)),
        }
    }

    /// Publishes `event`; the caller checked [`watched`](Self::watched).
    fn send(&self, event: MapEvent<K, V>) {
        if let Channel::Open(sender) = &*self.channel() {
            // An error only means every subscription was dropped meanwhile.
            let _ = sender.send(event);
        }
    }

    /// The change `op` is about to make to the cache; `publish` it with the
    /// value it replaced. An expiring removal publishes
    /// [`MapEvent::Expired`] when it removed something.
    #[inline]
    pub(crate) fn op(&self, op: &BatchOp<K, V>, origin: Origin) -> Pending<'_, K, V> {
        Pending {
            events: self,
            change: self.watched().then(|| Change::of(op, origin)),
        }
    }

    /// `key` is about to hold `value` (`None`: be removed); `publish` it
    /// with the value it replaced.
    #[inline]
    pub(crate) fn change(&self, key: &K, value: Option<&V>, origin: Origin) -> Pending<'_, K, V> {
        Pending {
            events: self,
            change: self.watched().then(|| Change::new(key, value, origin)),
        }
    }

    /// `key` was removed; it held `old`.
    #[inline]
    pub(crate) fn removed(&self, key: &K, old: Option<&V>, origin: Origin) {
        self.change(key, None, origin).publish(old);
    }

    /// Every entry was removed.
    #[inline]
    pub(crate) fn cleared(&self, origin: Origin) {
        if self.watched() {
            self.send(MapEvent::Cleared { origin });
        }
    }

    /// The cache was replaced with what the store holds.
    #[inline]
    pub(crate) fn resynced(&self) {
        if self.watched() {
            self.send(MapEvent::Resynced);
        }
    }
}

impl<K: Clone, V: Clone> Change<K, V> {
    // Out of line: the write path with no subscriber only needs the check.
    #[inline(never)]
    fn of(op: &BatchOp<K, V>, origin: Origin) -> Box<Self> {
        Box::new(match op {
            BatchOp::Put { key, value } | BatchOp::PutExpiring { key, value, .. } => {
                Change::Put(key.clone(), value.clone(), origin)
            }
            BatchOp::Delete { key } => Change::Delete(key.clone(), origin),
            BatchOp::DeleteExpired { key, .. } => Change::Expire(key.clone()),
        })
    }

    #[inline(never)]
    fn new(key: &K, value: Option<&V>, origin: Origin) -> Box<Self> {
        Box::new(match value {
            Some(value) => Change::Put(key.clone(), value.clone(), origin),
            None => Change::Delete(key.clone(), origin),
        })
    }
}

impl<K, V> Pending<'_, K, V>
where
    K: Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Publishes the change, now applied; `old` is the value it replaced.
    #[inline]
    pub(crate) fn publish(self, old: Option<&V>) {
        if let Some(change) = self.change {
            self.events.publish_change(*change, old);
        }
    }
}

impl<K, V> Events<K, V>
where
    K: Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    #[inline(never)]
    fn publish_change(&self, change: Change<K, V>, old: Option<&V>) {
        let event = match change {
            Change::Put(key, value, origin) => MapEvent::Inserted {
                key,
                old: old.cloned(),
                value,
                origin,
            },
            Change::Delete(key, origin) => {
                if old.is_none() && (self.exclusive || origin == Origin::Remote) {
                    // Nothing changed, in the store either.
                    return;
                }
                MapEvent::Removed {
                    key,
                    old: old.cloned(),
                    origin,
                }
            }
            Change::Expire(key) => match old {
                Some(value) => MapEvent::Expired {
                    key,
                    value: value.clone(),
                },
                None => return,
            },
        };
        self.send(event);
    }
}

/// The events `receiver` gets, with a lag turned into one
/// [`MapEvent::Lagged`] followed by the present.
fn receive<K, V>(
    receiver: broadcast::Receiver<MapEvent<K, V>>,
) -> impl Stream<Item = MapEvent<K, V>> + Send + Sync
where
    K: Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    futures::stream::unfold(receiver, |mut receiver| async move {
        let event = match receiver.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(overwritten)) => MapEvent::Lagged {
                missed: overwritten.saturating_add(skip_buffered(&mut receiver)),
            },
            Err(RecvError::Closed) => return None,
        };
        Some((event, receiver))
    })
}

/// Skips the events buffered for `receiver` now, so that it goes on from
/// the present; returns how many it skipped. Bounded by what was buffered
/// when it started, so writers that keep publishing cannot keep it here.
fn skip_buffered<T: Clone>(receiver: &mut broadcast::Receiver<T>) -> u64 {
    let mut skipped: u64 = 0;
    for _ in 0..receiver.len() {
        match receiver.try_recv() {
            Ok(_) => skipped += 1,
            // Overwritten again while skipping: those are lost too.
            Err(TryRecvError::Lagged(overwritten)) => {
                skipped = skipped.saturating_add(overwritten);
            }
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    skipped
}
