//! Opening a store from the parent, to see what a child left behind.

use std::path::Path;

use persistent_map_core::{PersistentError, Result, StorageBackend};
use persistent_map_csv::CsvBackend;
use persistent_map_sqlite::SqliteBackend;

use crate::child::Backend;
use crate::model::State;

/// What reopening a store found.
#[derive(Debug)]
pub struct Reopened {
    /// The entries, as a load returned them.
    pub state: State,
    /// SQLite: the answer of `PRAGMA integrity_check` (`ok` when sound).
    pub integrity: Option<String>,
}

/// Opens the store at `path` as a new process would (recovering a torn CSV
/// tail, replaying the SQLite WAL), loads it, and for SQLite runs
/// `PRAGMA integrity_check`. The store is released before this returns.
///
/// # Errors
///
/// Whatever opening or loading returns.
pub async fn reopen(backend: Backend, path: &Path) -> Result<Reopened> {
    match backend {
        Backend::Csv => {
            let csv = CsvBackend::new(path);
            let state = StorageBackend::<String, u64>::load_all(&csv).await?;
            Ok(Reopened {
                state: state.into_iter().collect(),
                integrity: None,
            })
        }
        Backend::Sqlite => {
            let db = SqliteBackend::new(path).await?;
            let loaded = StorageBackend::<String, u64>::load_all(&db).await;
            let integrity = integrity_check(&db).await;
            db.close().await;
            Ok(Reopened {
                state: loaded?.into_iter().collect(),
                integrity: Some(integrity?),
            })
        }
    }
}

/// Runs `PRAGMA integrity_check` on an open SQLite backend; `ok` when sound.
///
/// # Errors
///
/// When the query itself fails.
pub async fn integrity_check(db: &SqliteBackend) -> Result<String> {
    let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(db.pool())
        .await
        .map_err(|e| PersistentError::Other(Box::new(e)))?;
    Ok(rows.join("; "))
}
