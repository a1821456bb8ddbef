//! sqlx errors -> [`PersistentError`], in one place.

use std::fmt;
use std::path::Path;

use persistent_map_core::{Location, Operation, PersistentError};

/// The backend name used in every error.
pub(crate) const BACKEND: &str = "sqlite";

// SQLite primary result codes (https://www.sqlite.org/rescode.html); sqlx
// reports the extended code, whose low byte is the primary one.
const SQLITE_BUSY: u32 = 5;
const SQLITE_LOCKED: u32 = 6;
const SQLITE_CORRUPT: u32 = 11;
const SQLITE_FULL: u32 = 13;
const SQLITE_NOTADB: u32 = 26;

/// Maps a sqlx error met while doing `operation` on the database file `path`
/// (`location` names the file, and where known the table and key).
///
/// * a full disk becomes [`PersistentError::StorageFull`] naming the file,
/// * a file that is not a database, or a damaged one, becomes
///   [`PersistentError::Corrupt`] naming the file,
/// * an I/O error becomes [`PersistentError::Io`] naming the file,
/// * a busy or locked database becomes [`PersistentError::Timeout`] saying so,
/// * anything else a backend error with sqlx's error as its source.
pub(crate) fn map_sqlx_error(
    err: sqlx::Error,
    operation: Operation,
    location: Location,
    path: &Path,
) -> PersistentError {
    let primary = primary_code(&err);
    match (err, primary) {
        (err, Some(SQLITE_FULL)) => PersistentError::StorageFull {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::StorageFull, err),
        },
        (err, Some(code @ (SQLITE_NOTADB | SQLITE_CORRUPT))) => {
            let what = if code == SQLITE_NOTADB {
                "not a sqlite database"
            } else {
                "the sqlite database is damaged"
            };
            let detail = match &err {
                sqlx::Error::Database(db) => db.message().to_owned(),
                other => other.to_string(),
            };
            PersistentError::corrupt(location, format!("{what} ({detail})"))
        }
        (err, Some(code @ (SQLITE_BUSY | SQLITE_LOCKED))) => PersistentError::Timeout {
            backend: BACKEND,
            operation,
            location,
            source: Box::new(Busy {
                locked: code == SQLITE_LOCKED,
                source: err,
            }),
        },
        (sqlx::Error::PoolClosed, _) => PersistentError::Closed,
        (sqlx::Error::Io(source), _) => PersistentError::io(path, source),
        (err, _) => PersistentError::backend(BACKEND, operation, location, err),
    }
}

/// Whether `err` says the database file was busy (`SQLITE_BUSY`, not a
/// table locked within this process).
pub(crate) fn is_busy(err: &PersistentError) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(busy) = cause.downcast_ref::<Busy>() {
            return !busy.locked;
        }
        source = cause.source();
    }
    false
}

/// Whether `err` is an I/O error of SQLite (`SQLITE_IOERR_*`) or of the driver.
pub(crate) fn is_io_error(err: &sqlx::Error) -> bool {
    const SQLITE_IOERR: u32 = 10;
    matches!(err, sqlx::Error::Io(_)) || primary_code(err) == Some(SQLITE_IOERR)
}

fn primary_code(err: &sqlx::Error) -> Option<u32> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    let code: u32 = db.code()?.parse().ok()?;
    Some(code & 0xff)
}

/// The database stayed busy (another connection or process held its lock)
/// for longer than the busy timeout.
#[derive(Debug)]
struct Busy {
    locked: bool,
    source: sqlx::Error,
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.locked {
            f.write_str("database table is locked by another connection of this process")
        } else {
            f.write_str("database is busy: another connection or process held its lock for longer than the busy timeout")
        }
    }
}

impl std::error::Error for Busy {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
