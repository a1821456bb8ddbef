//! [`encode_batch`]: a batch's net changes in stored (text) form, for
//! backends that write a batch as one statement or transaction.

use std::collections::HashMap;

use persistent_map_core::codec::{value_to_json, KeyFormat};
use persistent_map_core::{render_key, BatchOp, EntryPart, Location, PersistentError};
use serde::Serialize;

/// Encodes a batch into its net changes: `(key text, Some(value JSON))` for
/// a put and `(key text, None)` for a removal, with keys in the store's
/// `format` and values by [`value_to_json`], keeping only the last change per key.
///
/// Inside one transaction only the final state of each key matters, and
/// distinct keys can then be written in any order (some statements, such as
/// a multi-row upsert, may not touch a row twice). The changes kept stay in
/// the batch's order, each at the place of its key's last change, so keys
/// that arrive sorted stay sorted. A batch of one change is encoded without
/// any hashing, and no key text is copied. `backend` (the backend's name)
/// and `store` are what errors name.
///
/// ```
/// use persistent_map_core::codec::KeyFormat;
/// use persistent_map_core::BatchOp;
/// use persistent_map_server_support::encode_batch;
///
/// let batch = vec![
///     BatchOp::Put { key: "a", value: 1 },
///     BatchOp::Put { key: "b", value: 2 },
///     BatchOp::Delete { key: "a" },
/// ];
/// assert_eq!(
///     encode_batch(&batch, "mine", "kv.db", KeyFormat::Distinct)?,
///     [("b".to_string(), Some("2".to_string())), ("a".to_string(), None)]
/// );
/// # Ok::<(), persistent_map_core::PersistentError>(())
/// ```
///
/// # Errors
///
/// * [`PersistentError::Codec`] (encoding) for the first key or value (in
///   batch order) that cannot be encoded, located in `store` with the key
///   rendered by [`render_key`];
/// * [`PersistentError::Unsupported`] naming `backend` for a kind of
///   [`BatchOp`] this release does not know (it is `#[non_exhaustive]`).
pub fn encode_batch<K: Serialize, V: Serialize>(
    batch: &[BatchOp<K, V>],
    backend: &'static str,
    store: &str,
    format: KeyFormat,
) -> Result<Vec<(String, Option<String>)>, PersistentError> {
    let mut encoded = Vec::with_capacity(batch.len());
    for op in batch {
        let key = op.key();
        let fail = |part: EntryPart, e: serde_json::Error| {
            PersistentError::encode(part, Location::new(store).with_key(render_key(key)), e)
        };
        let key_text = format.encode(key).map_err(|e| fail(EntryPart::Key, e))?;
        let value = match op {
            BatchOp::Put { value, .. } => {
                Some(value_to_json(value).map_err(|e| fail(EntryPart::Value, e))?)
            }
            BatchOp::Delete { .. } => None,
            // A kind of change this release does not know: never skipped.
            _ => {
                return Err(PersistentError::Unsupported {
                    backend,
                    feature: "a kind of batch change this release does not know",
                })
            }
        };
        encoded.push((key_text, value));
    }
    if encoded.len() < 2 {
        return Ok(encoded);
    }
    let keep: Vec<bool> = {
        let mut last: HashMap<&str, usize, ahash::RandomState> =
            HashMap::with_capacity_and_hasher(encoded.len(), ahash::RandomState::new());
        for (i, (key, _)) in encoded.iter().enumerate() {
            last.insert(key.as_str(), i);
        }
        if last.len() == encoded.len() {
            return Ok(encoded);
        }
        encoded
            .iter()
            .enumerate()
            .map(|(i, (key, _))| last.get(key.as_str()) == Some(&i))
            .collect()
    };
    Ok(encoded
        .into_iter()
        .zip(keep)
        .filter_map(|(change, keep)| keep.then_some(change))
        .collect())
}

#[cfg(test)]
mod tests {
    use persistent_map_core::CodecDirection;

    use super::*;

    fn put(key: &str, value: u32) -> BatchOp<String, u32> {
        BatchOp::Put {
            key: key.to_owned(),
            value,
        }
    }

    fn delete(key: &str) -> BatchOp<String, u32> {
        BatchOp::Delete {
            key: key.to_owned(),
        }
    }

    fn net(changes: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        changes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn batches_keep_the_last_change_per_key_in_order() {
        assert_eq!(
            encode_batch::<String, u32>(&[], "test", "s", KeyFormat::Legacy).expect("encodes"),
            net(&[])
        );
        assert_eq!(
            encode_batch(&[put("a", 1)], "test", "s", KeyFormat::Legacy).expect("encodes"),
            net(&[("a", Some("1"))])
        );
        let sorted = [put("a", 1), delete("b"), put("c", 3)];
        assert_eq!(
            encode_batch(&sorted, "test", "s", KeyFormat::Legacy).expect("encodes"),
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
            encode_batch(&repeated, "test", "s", KeyFormat::Legacy).expect("encodes"),
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
}
