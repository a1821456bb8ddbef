//! Redis errors -> [`PersistentError`], in one place.

use persistent_map_core::{Location, Operation, PersistentError};

/// The backend name used in every error.
pub(crate) const BACKEND: &str = "redis";

/// Maps a redis error met while doing `operation` on `location`, against the
/// server at `endpoint` (`host:port`, never credentials).
///
/// * the server cannot be reached, dropped the connection or did not answer
///   in time: [`PersistentError::Connection`] naming the endpoint,
/// * anything else (a refused command, a wrong type, a refused login):
///   [`PersistentError::Backend`] with the server's error as its source.
pub(crate) fn map_redis_error(
    err: redis::RedisError,
    operation: Operation,
    location: Location,
    endpoint: &str,
) -> PersistentError {
    if is_connection_error(&err) {
        PersistentError::Connection {
            backend: BACKEND,
            endpoint: endpoint.to_owned(),
            source: Box::new(err),
        }
    } else {
        PersistentError::backend(BACKEND, operation, location, err)
    }
}

pub(crate) fn is_connection_error(err: &redis::RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_refusal()
        || err.is_connection_dropped()
        || err.is_timeout()
        || err.is_unrecoverable_error()
}

/// Whether a failed write may nevertheless have been applied: the
/// connection broke while the outcome was on its way back.
pub(crate) fn outcome_unknown(err: &PersistentError) -> bool {
    matches!(err, PersistentError::Connection { .. })
}
