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
use std::time::SystemTime;

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
    let mut wanted: HashMap<&K, Want<'_, V>> = HashMap::with_capacity(ops.len());
    let mut keys = Vec::with_capacity(ops.len());
    for op in ops {
        let want = match op {
            BatchOp::Put { value, .. } => Want::Entry(value, None),
            BatchOp::PutExpiring {
                value, expires_at, ..
            } => Want::Entry(value, Some(*expires_at)),
            BatchOp::Delete { .. } => Want::Absent,
            // A sweep may rightly leave an entry written again since: its
            // outcome says nothing, and a missed one is swept again.
            _ => Want::Either,
        };
        if wanted.insert(op.key(), want).is_none() {
            keys.push(op.key().clone());
        }
    }
    let stored = guard_backend(backend.load_keys_with_expiry(&keys), "read keys back").await?;
    for (key, found) in &stored {
        let Some(want) = wanted.get(key) else {
            return Ok(false);
        };
        if !want.met_by(found.as_ref())? {
            return Ok(false);
        }
    }
    Ok(stored.len() == keys.len())
}

/// What a batch leaves under one key.
enum Want<'a, V> {
    Entry(&'a V, Option<SystemTime>),
    Absent,
    Either,
}

impl<V: Serialize> Want<'_, V> {
    /// Compares values through their JSON form (`V` need not be `PartialEq`).
    fn met_by(&self, found: Option<&(V, Option<SystemTime>)>) -> Result<bool> {
        match (self, found) {
            (Want::Either, _) | (Want::Absent, None) => Ok(true),
            (Want::Entry(want, want_deadline), Some((value, deadline))) => {
                Ok(want_deadline == deadline && json(*want)? == json(value)?)
            }
            _ => Ok(false),
        }
    }
}

fn json<V: Serialize>(value: &V) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(PersistentError::from)
}
