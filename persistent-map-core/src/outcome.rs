//! Finding out whether a write whose outcome was lost happened.
//!
//! A backend that cannot tell whether a write was applied (its connection
//! broke after sending it) returns an [`ErrorKind::OutcomeUnknown`] error.
//! The map then reads the written keys back: if the store holds exactly
//! what the write would have left, it was applied and the caller gets `Ok`;
//! otherwise the caller gets the error, as it does when the keys cannot be
//! read at all.

use std::collections::HashMap;
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::{BatchOp, StorageBackend};
use crate::closure::guard_backend;
use crate::error::{ErrorKind, PersistentError, Result};

/// Turns an outcome-unknown failure of `ops` into `Ok` when the store shows
/// the write happened; any other result is returned unchanged.
pub(crate) async fn settle_unknown<K, V, B>(
    backend: &B,
    ops: &[BatchOp<K, V>],
    result: Result<()>,
) -> Result<()>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Sync + ?Sized,
{
    let err = match result {
        Err(err) if err.kind() == ErrorKind::OutcomeUnknown => err,
        other => return other,
    };
    match applied(backend, ops).await {
        Ok(true) => {
            tracing::debug!(error = %err, "a write whose outcome was lost turned out applied");
            Ok(())
        }
        Ok(false) => Err(err),
        Err(unreachable) => {
            tracing::warn!(error = %unreachable, "could not read back a write whose outcome was lost");
            Err(err)
        }
    }
}

/// Whether the store holds, for every key of `ops`, what `ops` leave there.
async fn applied<K, V, B>(backend: &B, ops: &[BatchOp<K, V>]) -> Result<bool>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    B: StorageBackend<K, V> + Sync + ?Sized,
{
    let mut wanted: HashMap<&K, Option<&V>> = HashMap::with_capacity(ops.len());
    let mut keys = Vec::with_capacity(ops.len());
    for op in ops {
        let (key, value) = match op {
            BatchOp::Put { key, value } => (key, Some(value)),
            BatchOp::Delete { key } => (key, None),
        };
        if wanted.insert(key, value).is_none() {
            keys.push(key.clone());
        }
    }
    let stored = guard_backend(backend.load_keys(&keys), "read keys back").await?;
    for (key, found) in &stored {
        let Some(want) = wanted.get(key) else {
            return Ok(false);
        };
        if !same(found.as_ref(), *want)? {
            return Ok(false);
        }
    }
    Ok(stored.len() == keys.len())
}

/// Compares values through their JSON form (`V` need not be `PartialEq`).
fn same<V: Serialize>(a: Option<&V>, b: Option<&V>) -> Result<bool> {
    match (a, b) {
        (None, None) => Ok(true),
        (Some(a), Some(b)) => Ok(json(a)? == json(b)?),
        _ => Ok(false),
    }
}

fn json<V: Serialize>(value: &V) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(PersistentError::from)
}
