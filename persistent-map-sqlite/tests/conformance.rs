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
}

conformance_tests!(SqliteFactory::new());
