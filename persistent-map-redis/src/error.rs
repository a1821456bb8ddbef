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

/// Maps an error of the request that commits (`EXEC`, or the pipeline
/// holding it). The driver does not tell whether a request it fails was
/// sent, so every loss of the connection other than a refused connection
/// (nothing was sent) counts as a lost reply: [`PersistentError::OutcomeUnknown`].
/// A refused connection, or an error the server answered with (nothing
/// applied), is mapped as by [`map_redis_error`].
pub(crate) fn exec_error(
    err: redis::RedisError,
    operation: Operation,
    location: Location,
    endpoint: &str,
) -> PersistentError {
    if is_connection_error(&err) && !err.is_connection_refusal() {
        PersistentError::OutcomeUnknown {
            backend: BACKEND,
            operation,
            location,
            source: Box::new(err),
        }
    } else {
        map_redis_error(err, operation, location, endpoint)
    }
}
