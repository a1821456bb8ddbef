//! The map's cache: the entries readers hit, each with its deadline, and an
//! index of the deadlines that the expiry sweep works from.
//!
//! An entry whose deadline has passed is invisible at once to every read
//! (`get`, `contains_key`, `len`, iteration, transactions), before the sweep
//! deletes it: readers compare the deadline with the wall clock.
//!
//! One writer at a time changes the cache (the writer task or a leading
//! caller in write-through mode, a caller holding the queue's lock in
//! write-behind mode), so the entries and the deadline index never race
//! each other; readers may see one a moment before the other, which only
//! affects `len` under concurrent writes.
//!
//! A map where no entry has a deadline pays one integer compare per read,
//! and writes skip the index entirely.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

/// A deadline in whole milliseconds since the Unix epoch; [`NEVER`] for an
/// entry that does not expire.
pub(crate) type Deadline = u64;

/// The deadline of an entry that does not expire.
pub(crate) const NEVER: Deadline = 0;

/// The wall clock, in the unit of deadlines.
pub(crate) fn now() -> Deadline {
    millis_of(SystemTime::now())
}

/// `time` in whole milliseconds since the epoch, rounded up (an entry never
/// expires before the time asked), and never [`NEVER`].
pub(crate) fn millis_of(time: SystemTime) -> Deadline {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let millis = since.as_millis() + u128::from(!since.subsec_nanos().is_multiple_of(1_000_000));
    Deadline::try_from(millis).unwrap_or(Deadline::MAX).max(1)
}

/// The deadline `ttl` from now.
pub(crate) fn deadline_in(ttl: Duration) -> Deadline {
    let at = SystemTime::now()
        .checked_add(ttl)
        .unwrap_or_else(|| UNIX_EPOCH + Duration::from_millis(Deadline::MAX));
    millis_of(at)
}

/// A deadline as the wall-clock time handed to a backend.
pub(crate) fn time_of(deadline: Deadline) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(deadline)
}

/// The deadline of a stored entry, as loaded.
pub(crate) fn deadline_of(stored: Option<SystemTime>) -> Deadline {
    stored.map_or(NEVER, millis_of)
}

/// A cached value and its deadline.
pub(crate) struct Slot<V> {
    pub(crate) value: V,
    pub(crate) deadline: Deadline,
}

impl<V> Slot<V> {
    /// Whether the entry is visible at `now`.
    fn live_at(&self, now: Deadline) -> bool {
        self.deadline == NEVER || now < self.deadline
    }

    /// Whether the entry is visible now; reads the clock only for an entry
    /// that has a deadline.
    fn live(&self) -> bool {
        self.deadline == NEVER || now() < self.deadline
    }
}

/// The entries, and where their deadlines are.
pub(crate) struct Cache<K, V> {
    /// A fast keyed hasher (aHash, seeded at random per process, so keys
    /// chosen by an attacker cannot force collisions).
    entries: DashMap<K, Slot<V>, ahash::RandomState>,
    /// The keys of entries that have a deadline, by deadline.
    deadlines: Mutex<BTreeMap<Deadline, Vec<K>>>,
    /// How many keys `deadlines` holds: 0 lets writes skip it.
    expiring: AtomicUsize,
    /// Keys found expired in the store but never cached (at open, or in a
    /// refresh): the sweep deletes them from the store.
    stale: Mutex<Vec<K>>,
}

impl<K: Eq + Hash, V> Default for Cache<K, V> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<K: Eq + Hash, V> Cache<K, V> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: DashMap::with_capacity_and_hasher(capacity, ahash::RandomState::new()),
            deadlines: Mutex::new(BTreeMap::new()),
            expiring: AtomicUsize::new(0),
            stale: Mutex::new(Vec::new()),
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, BTreeMap<Deadline, Vec<K>>> {
        // Nothing that can panic runs under this lock.
        self.deadlines.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stale_keys(&self) -> std::sync::MutexGuard<'_, Vec<K>> {
        self.stale.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether some entry has a deadline.
    pub(crate) fn has_deadlines(&self) -> bool {
        self.expiring.load(Ordering::Acquire) > 0
    }

    /// A clone of the visible value under `key`.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let slot = self.entries.get(key)?;
        slot.live().then(|| slot.value.clone())
    }

    /// The visible value under `key` and its deadline.
    pub(crate) fn get_with_deadline<Q>(&self, key: &Q) -> Option<(V, Deadline)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let slot = self.entries.get(key)?;
        slot.live().then(|| (slot.value.clone(), slot.deadline))
    }

    /// The deadline of the visible entry under `key`.
    pub(crate) fn deadline<Q>(&self, key: &Q) -> Option<Deadline>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let slot = self.entries.get(key)?;
        slot.live().then_some(slot.deadline)
    }

    /// Whether a visible entry is under `key`.
    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).is_some_and(|slot| slot.live())
    }

    /// The number of visible entries.
    pub(crate) fn len(&self) -> usize {
        let all = self.entries.len();
        if !self.has_deadlines() {
            return all;
        }
        let now = now();
        let expired: usize = self.index().range(..=now).map(|(_, keys)| keys.len()).sum();
        all.saturating_sub(expired)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries held, expired ones included (for sizing a reload).
    pub(crate) fn held(&self) -> usize {
        self.entries.len()
    }

    /// Calls `f` on every visible entry, with a shard of the cache
    /// read-locked.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        let now = if self.has_deadlines() { now() } else { NEVER };
        for entry in self.entries.iter() {
            if entry.value().live_at(now) {
                f(entry.key(), &entry.value().value);
            }
        }
    }

    /// Calls `f` on every visible entry until it returns `false`; returns
    /// whether it went through all of them.
    pub(crate) fn try_for_each(&self, mut f: impl FnMut(&K, &V) -> bool) -> bool {
        let now = if self.has_deadlines() { now() } else { NEVER };
        for entry in self.entries.iter() {
            if entry.value().live_at(now) && !f(entry.key(), &entry.value().value) {
                return false;
            }
        }
        true
    }
}

impl<K: Eq + Hash + Clone, V> Cache<K, V> {
    /// Puts `value` under `key` with `deadline`; returns the visible value it
    /// replaced.
    pub(crate) fn put(&self, key: K, value: V, deadline: Deadline) -> Option<V> {
        if deadline == NEVER && !self.has_deadlines() {
            // No entry has a deadline: nothing to index.
            return self
                .entries
                .insert(key, Slot { value, deadline })
                .map(|old| old.value);
        }
        if deadline != NEVER {
            self.index_add(deadline, key.clone());
        }
        let indexed = key.clone();
        let old = self.entries.insert(key, Slot { value, deadline })?;
        self.forget(&indexed, old.deadline);
        old.live().then_some(old.value)
    }

    /// Removes `key`; returns the visible value it had.
    ///
    /// An entry that had expired is invisible, so a removal of it may write
    /// nothing to a store the map holds alone; it stays stale, so that the
    /// sweep still deletes it from the store.
    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (key, old) = self.entries.remove(key)?;
        self.forget(&key, old.deadline);
        if old.live() {
            Some(old.value)
        } else {
            self.note_stale(key);
            None
        }
    }

    /// Removes `key` if its deadline is at or before `now`; returns its
    /// value if it did.
    pub(crate) fn remove_expired(&self, key: &K, now: Deadline) -> Option<V> {
        let (key, old) = self.entries.remove_if(key, |_, slot| !slot.live_at(now))?;
        self.forget(&key, old.deadline);
        Some(old.value)
    }

    /// Removes every entry.
    pub(crate) fn clear(&self) {
        self.entries.clear();
        self.index().clear();
        self.expiring.store(0, Ordering::Release);
    }

    /// Keeps only the entries for which `keep` is true.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&K) -> bool) {
        let mut dropped = Vec::new();
        self.entries.retain(|key, slot| {
            let kept = keep(key);
            if !kept && slot.deadline != NEVER {
                dropped.push((key.clone(), slot.deadline));
            }
            kept
        });
        for (key, deadline) in dropped {
            self.forget(&key, deadline);
        }
    }

    /// A sink for [`StorageBackend::load_with_expiry_into`] that caches the
    /// live entries and notes the expired ones as stale.
    ///
    /// [`StorageBackend::load_with_expiry_into`]: crate::StorageBackend::load_with_expiry_into
    pub(crate) fn loader(&self) -> impl FnMut(K, V, Option<SystemTime>) + Send + '_
    where
        K: Send + Sync,
        V: Send + Sync,
    {
        let now = now();
        move |key, value, stored| {
            let deadline = deadline_of(stored);
            if deadline == NEVER || now < deadline {
                self.put(key, value, deadline);
            } else {
                self.note_stale(key);
            }
        }
    }

    /// Makes this cache hold what `fresh` holds (a reload), changing only
    /// what differs so readers never see it empty.
    pub(crate) fn replace_with(&self, fresh: Cache<K, V>) {
        self.retain(|key| fresh.entries.contains_key(key));
        let stale = std::mem::take(&mut *fresh.stale_keys());
        for (key, slot) in fresh.entries {
            self.put(key, slot.value, slot.deadline);
        }
        let mut mine = self.stale_keys();
        mine.clear();
        mine.extend(stale);
    }

    /// Forgets the stale keys (the store was cleared).
    pub(crate) fn clear_stale(&self) {
        self.stale_keys().clear();
    }

    /// Up to `limit` keys whose deadline is at or before `now`, oldest
    /// first, then the stale keys (expired in the store, never cached).
    pub(crate) fn expired(&self, now: Deadline, limit: usize) -> Vec<K> {
        let mut keys: Vec<K> = self
            .index()
            .range(..=now)
            .flat_map(|(_, keys)| keys.iter().cloned())
            .take(limit)
            .collect();
        let room = limit.saturating_sub(keys.len());
        if room > 0 {
            let stale = self.stale_keys();
            keys.extend(stale.iter().take(room).cloned());
        }
        keys
    }

    /// Whether an entry is due for the sweep at `now`.
    pub(crate) fn sweep_due(&self, now: Deadline) -> bool {
        let cached = self.has_deadlines()
            && self
                .index()
                .first_key_value()
                .is_some_and(|(first, _)| *first <= now);
        cached || !self.stale_keys().is_empty()
    }

    /// Notes a key that is expired in the store but not cached.
    pub(crate) fn note_stale(&self, key: K) {
        let mut stale = self.stale_keys();
        // Few keys wait here at a time: the sweep takes them.
        if !stale.contains(&key) {
            stale.push(key);
        }
    }

    /// The sweep deleted `keys` from the store (where they were expired):
    /// they are no longer stale.
    pub(crate) fn unstale(&self, keys: &[K]) {
        let mut stale = self.stale_keys();
        if !stale.is_empty() {
            stale.retain(|key| !keys.contains(key));
        }
    }

    fn index_add(&self, deadline: Deadline, key: K) {
        self.index().entry(deadline).or_default().push(key);
        self.expiring.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops `key` from the index, where it was under `deadline`.
    fn forget(&self, key: &K, deadline: Deadline) {
        if deadline == NEVER {
            return;
        }
        let mut index = self.index();
        let Some(keys) = index.get_mut(&deadline) else {
            return;
        };
        if let Some(at) = keys.iter().position(|k| k == key) {
            keys.swap_remove(at);
            self.expiring.fetch_sub(1, Ordering::AcqRel);
        }
        if keys.is_empty() {
            index.remove(&deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_entry_is_invisible_before_it_is_removed() {
        let cache = Cache::default();
        cache.put("gone", 1, now().saturating_sub(1).max(1));
        cache.put("kept", 2, NEVER);
        cache.put("later", 3, deadline_in(Duration::from_secs(3600)));
        assert_eq!(cache.get("gone"), None);
        assert!(!cache.contains_key("gone"));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.held(), 3);
        let mut seen = Vec::new();
        cache.for_each(|k, _| seen.push(*k));
        seen.sort_unstable();
        assert_eq!(seen, ["kept", "later"]);
        assert_eq!(cache.expired(now(), 10), ["gone"]);
    }

    #[test]
    fn replacing_or_removing_an_entry_drops_its_deadline() {
        let cache = Cache::default();
        let soon = now().saturating_sub(1).max(1);
        cache.put("a", 1, soon);
        // The expired value was invisible: nothing visible was replaced.
        assert_eq!(cache.put("a", 2, NEVER), None);
        assert_eq!(cache.get("a"), Some(2));
        assert!(!cache.has_deadlines());
        cache.put("b", 1, deadline_in(Duration::from_secs(60)));
        assert_eq!(cache.remove("b"), Some(1));
        assert!(!cache.has_deadlines());
        assert!(cache.expired(Deadline::MAX, 10).is_empty());
    }

    #[test]
    fn the_sweep_removes_only_what_expired() {
        let cache = Cache::default();
        let past = now().saturating_sub(1).max(1);
        cache.put("old", 1, past);
        cache.put("new", 2, NEVER);
        assert_eq!(cache.remove_expired(&"new", now()), None);
        assert_eq!(cache.remove_expired(&"old", now()), Some(1));
        assert_eq!(cache.held(), 1);
        assert!(!cache.sweep_due(now()));
        cache.note_stale("stored");
        assert!(cache.sweep_due(now()));
        assert_eq!(cache.expired(now(), 10), ["stored"]);
        cache.unstale(&["stored"]);
        assert!(!cache.sweep_due(now()));
    }

    #[test]
    fn deadlines_round_up_to_whole_milliseconds() {
        let at = UNIX_EPOCH + Duration::new(5, 1);
        assert_eq!(millis_of(at), 5_001);
        assert_eq!(
            time_of(millis_of(at)),
            UNIX_EPOCH + Duration::from_millis(5_001)
        );
        assert_eq!(millis_of(UNIX_EPOCH), 1, "never confused with NEVER");
    }
}
