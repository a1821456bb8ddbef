//! sqlx errors -> [`PersistentError`], in one place.

use persistent_map_core::{Location, Operation, PersistentError};

/// The backend name used in every error.
pub(crate) const BACKEND: &str = "postgres";

/// Maps a sqlx error met while doing `operation` on `location`, against the
/// server at `endpoint` (`host:port`, never credentials).
///
/// * the server cannot be reached, refused the login, went away or is
///   shutting down: [`PersistentError::Connection`] naming the endpoint,
/// * anything else: [`PersistentError::Backend`] naming the table (and key,
///   where known) with sqlx's error as its source.
pub(crate) fn map_sqlx_error(
    err: sqlx::Error,
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

/// Whether `err` means the server is unreachable or the session is gone,
/// rather than that the statement itself was refused.
pub(crate) fn is_connection_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; 28: invalid authorization;
            // 57P01-57P03: the server is shutting down or starting up;
            // 3D000: the database does not exist.
            code.starts_with("08")
                || code.starts_with("28")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "3D000")
        }),
        _ => false,
    }
}

/// Maps an error of `COMMIT`: a connection lost while its reply was awaited
/// (or while it was being sent) leaves the outcome unknown,
/// [`PersistentError::OutcomeUnknown`]; any other error is mapped as by
/// [`map_sqlx_error`] (the server refused the commit, nothing is applied).
pub(crate) fn commit_error(
    err: sqlx::Error,
    operation: Operation,
    location: Location,
    endpoint: &str,
) -> PersistentError {
    if is_connection_error(&err) {
        PersistentError::OutcomeUnknown {
            backend: BACKEND,
            operation,
            location,
            source: Box::new(err),
        }
    } else {
        map_sqlx_error(err, operation, location, endpoint)
    }
}
