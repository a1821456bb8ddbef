//! The shared conformance suite, on real SQLite files in a temporary directory.

use std::path::PathBuf;

use persistent_map_conformance::{async_trait, conformance_tests, StoreFactory};
use persistent_map_sqlite::SqliteBackend;
use tempfile::TempDir;

/// Opens each fresh store as a new file in its own temporary directory.
struct SqliteFactory {
    dir: TempDir,
    stores: u32,
    current: Option<PathBuf>,
}

impl SqliteFactory {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
            stores: 0,
            current: None,
        }
    }
}

#[async_trait]
impl StoreFactory for SqliteFactory {
    type Backend = SqliteBackend;

    async fn fresh(&mut self) -> persistent_map_core::Result<SqliteBackend> {
        self.stores += 1;
        // A subdirectory that does not exist yet also checks that `new` creates it.
        let path = self
            .dir
            .path()
            .join(format!("store-{}", self.stores))
            .join("map.db");
        let backend = SqliteBackend::new(&path).await?;
        self.current = Some(path);
        Ok(backend)
    }

    async fn reopen(&mut self) -> persistent_map_core::Result<SqliteBackend> {
        let path = self.current.as_ref().expect("fresh was called first");
        SqliteBackend::new(path).await
    }

    fn locator(&self) -> Option<String> {
        Some(self.current.as_ref()?.to_str()?.to_owned())
    }

    async fn attach(&mut self, locator: &str) -> persistent_map_core::Result<SqliteBackend> {
        self.current = Some(PathBuf::from(locator));
        SqliteBackend::new(locator).await
    }

    fn files(&self) -> Vec<PathBuf> {
        // The database, its journal and its WAL all live in the store's directory.
        self.current
            .iter()
            .filter_map(|path| path.parent().map(PathBuf::from))
            .collect()
    }

    /// A trigger on the map's table that aborts any insert or update of the
    /// key, created through a connection of its own.
    async fn fail_writes_of(&mut self, key: &str) -> persistent_map_core::Result<bool> {
        use sqlx::{ConnectOptions as _, Connection as _};
        let path = self.current.as_ref().expect("fresh was called first");
        let io = |err: sqlx::Error| persistent_map_core::PersistentError::Other(Box::new(err));
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(std::time::Duration::from_secs(30))
            .connect()
            .await
            .map_err(io)?;
        let key = key.replace('\'', "''");
        for event in ["INSERT", "UPDATE"] {
            let sql = format!(
                "CREATE TRIGGER \"fail_{event}\" BEFORE {event} ON kv \
                 WHEN instr(NEW.key, '{key}') > 0 \
                 BEGIN SELECT RAISE(ABORT, 'injected failure for the conformance suite'); END"
            );
            sqlx::query(&sql).execute(&mut conn).await.map_err(io)?;
        }
        conn.close().await.map_err(io)?;
        Ok(true)
    }
}

conformance_tests!(SqliteFactory::new());
