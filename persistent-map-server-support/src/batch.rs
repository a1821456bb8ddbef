//! [`encode_batch`]: a batch's net changes in stored (text) form, for
//! backends that write a batch as one statement or transaction.

use std::collections::HashMap;

use persistent_map_core::codec::{value_to_json, KeyFormat};
use persistent_map_core::{render_key, BatchOp, EntryPart, Location, Operation, PersistentError};
use serde::Serialize;

use persistent_map_core::codec::deadline_to_millis;

/// What a batch does to one key, all of its changes in the batch taken
/// together, in stored form. Deadlines are milliseconds since the Unix
/// epoch ([`deadline_to_millis`](persistent_map_core::codec::deadline_to_millis)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetChange {
    /// Store the value (its JSON text), with this deadline or none: a
    /// [`BatchOp::Put`] clears a stored deadline, a
    /// [`BatchOp::PutExpiring`] replaces it.
    Put {
        /// The value's JSON text.
        value: String,
        /// The deadline to store, `None` for an entry that never expires.
        expires_at: Option<i64>,
    },
    /// Remove the key.
    Delete,
    /// Remove the key only if its stored deadline is at or before `now`
    /// (the sweep of an expired entry, [`BatchOp::DeleteExpired`]).
    DeleteExpired {
        /// The sweep's clock.
        now: i64,
    },
}

impl NetChange {
    /// The value to store, for a put.
    #[must_use]
    pub fn value(&self) -> Option<&str> {
        match self {
            NetChange::Put { value, .. } => Some(value),
            NetChange::Delete | NetChange::DeleteExpired { .. } => None,
        }
    }

    /// The net change of `self` followed by `later` on the same key.
    ///
    /// A put or a delete replaces whatever came before. A conditional
    /// delete depends on it: it removes an earlier put only if that put's
    /// deadline is not after its clock, leaves a put without deadline, and
    /// after an earlier conditional delete removes what either would have
    /// (the later clock).
    fn then(self, later: NetChange) -> NetChange {
        let NetChange::DeleteExpired { now } = later else {
            return later;
        };
        match self {
            NetChange::Put {
                expires_at: Some(deadline),
                ..
            } if deadline <= now => NetChange::Delete,
            put @ NetChange::Put { .. } => put,
            NetChange::Delete => NetChange::Delete,
            NetChange::DeleteExpired { now: earlier } => NetChange::DeleteExpired {
                now: earlier.max(now),
            },
        }
    }
}

/// Encodes a batch into its net changes: one [`NetChange`] per key, keys in
/// the store's `format`, values by [`value_to_json`].
///
/// Inside one transaction only the final state of each key matters, and
/// distinct keys can then be written in any order (some statements, such as
/// a multi-row upsert, may not touch a row twice). Several changes of one key
/// are folded into the one with the same result: usually the last, but a
/// [`BatchOp::DeleteExpired`] is conditional, so after a put in the same
/// batch it becomes a [`NetChange::Delete`] (the put's deadline is not after
/// the sweep's clock) or leaves the put as it is. The changes kept stay in
/// the batch's order, each at the place of its key's last change, so keys
/// that arrive sorted stay sorted. A batch of one change is encoded without
/// any hashing, and no key text is copied. `backend` (the backend's name)
/// and `store` are what errors name.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use persistent_map_core::codec::KeyFormat;
/// use persistent_map_core::BatchOp;
/// use persistent_map_server_support::{encode_batch, NetChange};
///
/// let at = |ms| UNIX_EPOCH + Duration::from_millis(ms);
/// let batch = vec![
///     BatchOp::Put { key: "a", value: 1 },
///     BatchOp::PutExpiring { key: "b", value: 2, expires_at: at(1_000) },
///     BatchOp::Delete { key: "a" },
///     BatchOp::DeleteExpired { key: "b", now: at(5_000) },
/// ];
/// assert_eq!(
///     encode_batch(&batch, "mine", "kv.db", KeyFormat::Distinct)?,
///     [("a".to_string(), NetChange::Delete), ("b".to_string(), NetChange::Delete)]
/// );
/// # Ok::<(), persistent_map_core::PersistentError>(())
/// ```
///
/// # Errors
///
/// * [`PersistentError::Codec`] (encoding) for the first key or value (in
///   batch order) that cannot be encoded, located in `store` with the key
///   rendered by [`render_key`];
/// * [`PersistentError::Backend`] naming `backend`, `store` and the key for
///   a deadline or sweep clock beyond the range of an `i64` of milliseconds;
/// * [`PersistentError::Unsupported`] naming `backend` for a kind of
///   [`BatchOp`] this release does not know (it is `#[non_exhaustive]`).
pub fn encode_batch<K: Serialize, V: Serialize>(
    batch: &[BatchOp<K, V>],
    backend: &'static str,
    store: &str,
    format: KeyFormat,
) -> Result<Vec<(String, NetChange)>, PersistentError> {
    let mut keys = Vec::with_capacity(batch.len());
    let mut changes = Vec::with_capacity(batch.len());
    for op in batch {
        let key = op.key();
        let at = || Location::new(store).with_key(render_key(key));
        let fail = |part: EntryPart, e: serde_json::Error| PersistentError::encode(part, at(), e);
        let millis = |time| {
            deadline_to_millis(time).ok_or_else(|| {
                PersistentError::backend(
                    backend,
                    Operation::Write,
                    at(),
                    "a deadline beyond the range of an i64 of milliseconds since 1970",
                )
            })
        };
        let key_text = format.encode(key).map_err(|e| fail(EntryPart::Key, e))?;
        let change = match op {
            BatchOp::Put { value, .. } => NetChange::Put {
                value: value_to_json(value).map_err(|e| fail(EntryPart::Value, e))?,
                expires_at: None,
            },
            BatchOp::PutExpiring {
                value, expires_at, ..
            } => NetChange::Put {
                value: value_to_json(value).map_err(|e| fail(EntryPart::Value, e))?,
                expires_at: Some(millis(*expires_at)?),
            },
            BatchOp::Delete { .. } => NetChange::Delete,
            BatchOp::DeleteExpired { now, .. } => NetChange::DeleteExpired { now: millis(*now)? },
            // A kind of change this release does not know: never skipped.
            _ => {
                return Err(PersistentError::Unsupported {
                    backend,
                    feature: "a kind of batch change this release does not know",
                })
            }
        };
        keys.push(key_text);
        changes.push(Some(change));
    }
    if keys.len() >= 2 {
        fold_per_key(&keys, &mut changes);
    }
    Ok(keys
        .into_iter()
        .zip(changes)
        .filter_map(|(key, change)| change.map(|change| (key, change)))
        .collect())
}

/// Folds every key's changes into the place of its last change, leaving
/// `None` at the places of its earlier ones.
fn fold_per_key(keys: &[String], changes: &mut [Option<NetChange>]) {
    let mut latest: HashMap<&str, usize, ahash::RandomState> =
        HashMap::with_capacity_and_hasher(keys.len(), ahash::RandomState::new());
    for (i, key) in keys.iter().enumerate() {
        let Some(earlier) = latest.insert(key.as_str(), i) else {
            continue;
        };
        if let (Some(earlier), Some(later)) = (changes[earlier].take(), changes[i].take()) {
            changes[i] = Some(earlier.then(later));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use persistent_map_core::CodecDirection;

    use super::*;

    fn put(key: &str, value: u32) -> BatchOp<String, u32> {
        BatchOp::Put {
            key: key.to_owned(),
            value,
        }
    }

    fn put_expiring(key: &str, value: u32, ms: u64) -> BatchOp<String, u32> {
        BatchOp::PutExpiring {
            key: key.to_owned(),
            value,
            expires_at: at(ms),
        }
    }

    fn delete(key: &str) -> BatchOp<String, u32> {
        BatchOp::Delete {
            key: key.to_owned(),
        }
    }

    fn delete_expired(key: &str, ms: u64) -> BatchOp<String, u32> {
        BatchOp::DeleteExpired {
            key: key.to_owned(),
            now: at(ms),
        }
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn stored(value: &str, expires_at: Option<i64>) -> NetChange {
        NetChange::Put {
            value: value.to_owned(),
            expires_at,
        }
    }

    fn net(changes: &[(&str, Option<&str>)]) -> Vec<(String, NetChange)> {
        changes
            .iter()
            .map(|(k, v)| {
                let change = v.map_or(NetChange::Delete, |v| stored(v, None));
                ((*k).to_owned(), change)
            })
            .collect()
    }

    fn encoded(batch: &[BatchOp<String, u32>]) -> Vec<(String, NetChange)> {
        encode_batch(batch, "test", "s", KeyFormat::Legacy).expect("encodes")
    }

    #[test]
    fn batches_keep_the_last_change_per_key_in_order() {
        assert_eq!(encoded(&[]), net(&[]));
        assert_eq!(encoded(&[put("a", 1)]), net(&[("a", Some("1"))]));
        let sorted = [put("a", 1), delete("b"), put("c", 3)];
        assert_eq!(
            encoded(&sorted),
            net(&[("a", Some("1")), ("b", None), ("c", Some("3"))])
        );
        let repeated = [
            put("a", 1),
            put("b", 2),
            delete("a"),
            put("c", 3),
            put("b", 4),
        ];
        assert_eq!(
            encoded(&repeated),
            net(&[("a", None), ("c", Some("3")), ("b", Some("4"))])
        );
        let keys = [
            BatchOp::Put {
                key: 1_u8,
                value: "x",
            },
            BatchOp::Delete { key: 1_u8 },
        ];
        assert_eq!(
            encode_batch(&keys, "test", "s", KeyFormat::Legacy).expect("encodes"),
            net(&[("1", None)])
        );
    }

    #[test]
    fn deadlines_are_stored_and_cleared_as_milliseconds() {
        assert_eq!(
            encoded(&[put_expiring("a", 1, 1_700_000_000_123)]),
            [("a".to_owned(), stored("1", Some(1_700_000_000_123)))]
        );
        assert_eq!(
            encoded(&[put_expiring("a", 1, 5_000), put("a", 2)]),
            [("a".to_owned(), stored("2", None))],
            "a put clears the deadline"
        );
        assert_eq!(
            encoded(&[put("a", 1), put_expiring("a", 2, 5_000)]),
            [("a".to_owned(), stored("2", Some(5_000)))]
        );
        assert_eq!(
            encoded(&[delete_expired("a", 7)]),
            [("a".to_owned(), NetChange::DeleteExpired { now: 7 })]
        );
    }

    #[test]
    fn a_conditional_delete_is_folded_by_what_came_before_it() {
        // An expired put is removed; the sweep's clock is inclusive.
        for deadline in [4_000, 5_000] {
            assert_eq!(
                encoded(&[put_expiring("a", 1, deadline), delete_expired("a", 5_000)]),
                [("a".to_owned(), NetChange::Delete)],
                "{deadline}"
            );
        }
        // A later deadline, or none, stays.
        assert_eq!(
            encoded(&[put_expiring("a", 1, 5_001), delete_expired("a", 5_000)]),
            [("a".to_owned(), stored("1", Some(5_001)))]
        );
        assert_eq!(
            encoded(&[put("a", 1), delete_expired("a", 5_000)]),
            [("a".to_owned(), stored("1", None))]
        );
        assert_eq!(
            encoded(&[delete("a"), delete_expired("a", 5_000)]),
            [("a".to_owned(), NetChange::Delete)]
        );
        // Two sweeps remove what either would.
        assert_eq!(
            encoded(&[delete_expired("a", 9), delete_expired("a", 3)]),
            [("a".to_owned(), NetChange::DeleteExpired { now: 9 })]
        );
        // Unconditional changes after a sweep replace it.
        assert_eq!(
            encoded(&[delete_expired("a", 9), put("a", 2)]),
            [("a".to_owned(), stored("2", None))]
        );
        assert_eq!(
            encoded(&[delete_expired("a", 9), delete("a")]),
            [("a".to_owned(), NetChange::Delete)]
        );
        // Folded in order: the put after the sweep is kept, at its place.
        assert_eq!(
            encoded(&[
                put_expiring("a", 1, 1),
                delete_expired("a", 2),
                put("b", 3),
                put_expiring("a", 4, 1),
            ]),
            [
                ("b".to_owned(), stored("3", None)),
                ("a".to_owned(), stored("4", Some(1)))
            ]
        );
    }

    #[test]
    fn batch_errors_name_the_store_and_key() {
        let bad_key: HashMap<Vec<u8>, u8> = HashMap::from([(vec![1], 1)]);
        let batch = [BatchOp::Delete { key: bad_key }];
        let err = encode_batch::<_, u8>(&batch, "test", "kv.db", KeyFormat::Legacy)
            .expect_err("map keys must be strings");
        assert!(
            matches!(&err, PersistentError::Codec { direction: CodecDirection::Encode, part: EntryPart::Key, location, .. }
                if location.store == "kv.db" && location.key.is_some()),
            "{err:?}"
        );

        let bad_value: HashMap<Vec<u8>, u8> = HashMap::from([(vec![1], 1)]);
        let batch = [
            BatchOp::Put {
                key: "ok",
                value: HashMap::new(),
            },
            BatchOp::Put {
                key: "bad",
                value: bad_value,
            },
        ];
        let err = encode_batch(&batch, "test", "kv.db", KeyFormat::Legacy)
            .expect_err("map keys must be strings");
        assert!(
            matches!(&err, PersistentError::Codec { direction: CodecDirection::Encode, part: EntryPart::Value, location, .. }
                if location.key.as_deref() == Some("\"bad\"")),
            "{err:?}"
        );
    }

    #[test]
    fn a_deadline_beyond_an_i64_of_milliseconds_is_refused_naming_its_key() {
        let Some(far) = UNIX_EPOCH.checked_add(Duration::from_secs(u64::MAX / 2)) else {
            return; // this platform's clock cannot even hold it
        };
        let batch = [BatchOp::PutExpiring {
            key: "far",
            value: 1,
            expires_at: far,
        }];
        let err =
            encode_batch(&batch, "test", "kv.db", KeyFormat::Legacy).expect_err("out of range");
        assert!(
            matches!(&err, PersistentError::Backend { backend: "test", location, .. }
                if location.store == "kv.db" && location.key.as_deref() == Some("\"far\"")),
            "{err:?}"
        );
    }
}
