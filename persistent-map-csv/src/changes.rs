//! A batch's changes as the file writes them: keys, values and deadlines
//! encoded as text before anything is written, the records a batch
//! appends (where a removal of an expired entry is decided), and a stored
//! entry decoded back.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use persistent_map_core::codec::{value_from_json, value_to_json, KeyFormat};
use persistent_map_core::{render_key, BatchOp, EntryPart, PersistentError, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::at;
use persistent_map_core::codec::{
    deadline_from_millis as from_millis, deadline_to_millis as to_millis,
};

/// A change with its key, value and deadline encoded as text (once the
/// file's key format is known) before anything is written, so a change that
/// cannot be encoded fails without changing the file.
pub(crate) enum Prepared {
    Put {
        key: String,
        value: String,
        expires_at: Option<i64>,
    },
    Del {
        key: String,
    },
    /// The removal of `key` if its deadline is at or before `now`: a `del`
    /// record or nothing, decided against the file's deadlines when written.
    DelExpired {
        key: String,
        now: i64,
    },
}

/// A record to append, as a batch's changes decide it.
pub(crate) enum Record<'a> {
    Put {
        key: &'a str,
        value: &'a str,
        expires_at: Option<i64>,
    },
    Del {
        key: &'a str,
    },
}

impl Record<'_> {
    pub(crate) fn key(&self) -> &str {
        match self {
            Record::Put { key, .. } | Record::Del { key } => key,
        }
    }
}

/// The records a batch appends, in order: its puts and removals, and a
/// tombstone for each removal of an expired entry whose key has, at that
/// point of the batch, a deadline at or before the removal's clock
/// (`deadlines` holds the file's before the batch). Any other removal of an
/// expired entry writes nothing: the entry has no deadline, a later one, or
/// is not there.
pub(crate) fn decide<'a>(
    changes: &'a [Prepared],
    deadlines: &HashMap<String, i64>,
) -> Vec<Record<'a>> {
    // Only a batch with a sweep needs to know what it changed: the others
    // (nearly all) skip the bookkeeping.
    let sweeps = changes
        .iter()
        .any(|change| matches!(change, Prepared::DelExpired { .. }));
    // The deadline of each key the batch has changed so far (`None`: no
    // deadline, or removed).
    let mut changed: HashMap<&str, Option<i64>> = HashMap::new();
    let mut records = Vec::with_capacity(changes.len());
    for change in changes {
        match change {
            Prepared::Put {
                key,
                value,
                expires_at,
            } => {
                if sweeps {
                    changed.insert(key, *expires_at);
                }
                records.push(Record::Put {
                    key,
                    value,
                    expires_at: *expires_at,
                });
            }
            Prepared::Del { key } => {
                if sweeps {
                    changed.insert(key, None);
                }
                records.push(Record::Del { key });
            }
            Prepared::DelExpired { key, now } => {
                let deadline = match changed.get(key.as_str()) {
                    Some(deadline) => *deadline,
                    None => deadlines.get(key).copied(),
                };
                if deadline.is_some_and(|deadline| deadline <= *now) {
                    changed.insert(key, None);
                    records.push(Record::Del { key });
                }
            }
        }
    }
    records
}

/// Encodes a change of a batch, naming its key on failure.
pub(crate) fn prepare<K: Serialize, V: Serialize>(
    path: &Path,
    key_format: KeyFormat,
    op: &BatchOp<K, V>,
) -> Result<Prepared> {
    Ok(match op {
        BatchOp::Put { key, value } => Prepared::Put {
            key: encode_key(path, key_format, key)?,
            value: encode_value(path, key, value)?,
            expires_at: None,
        },
        BatchOp::PutExpiring {
            key,
            value,
            expires_at,
        } => Prepared::Put {
            key: encode_key(path, key_format, key)?,
            value: encode_value(path, key, value)?,
            expires_at: Some(encode_millis(path, key, *expires_at)?),
        },
        BatchOp::Delete { key } => Prepared::Del {
            key: encode_key(path, key_format, key)?,
        },
        BatchOp::DeleteExpired { key, now } => Prepared::DelExpired {
            key: encode_key(path, key_format, key)?,
            now: encode_millis(path, key, *now)?,
        },
        _ => return Err(PersistentError::unknown_change("csv")),
    })
}

/// A key's text in the file's key format.
pub(crate) fn encode_key<K: Serialize>(
    path: &Path,
    key_format: KeyFormat,
    key: &K,
) -> Result<String> {
    key_format
        .encode(key)
        .map_err(|e| PersistentError::encode(EntryPart::Key, at(path).with_key(render_key(key)), e))
}

/// A value's JSON text.
pub(crate) fn encode_value<K: Serialize, V: Serialize>(
    path: &Path,
    key: &K,
    value: &V,
) -> Result<String> {
    value_to_json(value).map_err(|e| {
        PersistentError::encode(EntryPart::Value, at(path).with_key(render_key(key)), e)
    })
}

/// A deadline (or a sweep's clock) in milliseconds since the Unix epoch.
pub(crate) fn encode_millis<K: Serialize>(path: &Path, key: &K, time: SystemTime) -> Result<i64> {
    to_millis(time).ok_or_else(|| {
        PersistentError::encode(
            EntryPart::Value,
            at(path).with_key(render_key(key)),
            "the deadline is out of range (more than i64::MAX milliseconds from the Unix epoch)",
        )
    })
}

/// Decodes a stored value and deadline, naming the line and key on failure.
pub(crate) fn decode_stored<V: DeserializeOwned>(
    path: &Path,
    line: u64,
    key_text: &str,
    json: &str,
    expires_at: Option<i64>,
) -> Result<(V, Option<SystemTime>)> {
    let location = || at(path).with_line(line).with_key(render_key(key_text));
    let value: V = value_from_json(json)
        .map_err(|e| PersistentError::decode(EntryPart::Value, location(), e))?;
    let deadline = match expires_at {
        None => None,
        Some(ms) => Some(from_millis(ms).ok_or_else(|| {
            PersistentError::corrupt(
                location(),
                format!("the deadline {ms} is out of this platform's time range"),
            )
        })?),
    };
    Ok((value, deadline))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, expires_at: Option<i64>) -> Prepared {
        Prepared::Put {
            key: key.into(),
            value: "1".into(),
            expires_at,
        }
    }

    fn sweep(key: &str, now: i64) -> Prepared {
        Prepared::DelExpired {
            key: key.into(),
            now,
        }
    }

    fn shape(records: &[Record<'_>]) -> Vec<String> {
        records
            .iter()
            .map(|record| match record {
                Record::Put {
                    key, expires_at, ..
                } => format!("put {key} {expires_at:?}"),
                Record::Del { key } => format!("del {key}"),
            })
            .collect()
    }

    #[test]
    fn a_sweep_sees_the_deadline_the_batch_has_left() {
        let stored = HashMap::from([("old".to_string(), 5), ("late".to_string(), 50)]);
        let changes = [
            sweep("old", 10),
            sweep("late", 10),
            sweep("none", 10),
            put("fresh", Some(1)),
            sweep("fresh", 10),
            put("late", None),
            sweep("late", 100),
            Prepared::Del { key: "gone".into() },
            sweep("gone", 10),
            sweep("old", 10),
        ];
        assert_eq!(
            shape(&decide(&changes, &stored)),
            [
                "del old",
                "put fresh Some(1)",
                "del fresh",
                "put late None",
                "del gone",
            ]
        );
    }
}
