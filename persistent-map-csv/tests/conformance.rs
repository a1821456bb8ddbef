//! The shared conformance suite against `CsvBackend`, on files in a temporary directory.

use persistent_map_conformance::{async_trait, conformance_tests, StoreFactory};
use persistent_map_csv::CsvBackend;
use tempfile::TempDir;

/// Opens a store at `store.csv` in a temporary directory the factory owns,
/// so the directory outlives every backend of one case.
struct CsvFactory {
    dir: Option<TempDir>,
}

impl CsvFactory {
    fn new() -> Self {
        Self { dir: None }
    }

    fn store(&self) -> persistent_map_core::Result<CsvBackend> {
        let dir = self.dir.as_ref().ok_or_else(|| {
            persistent_map_core::PersistentError::Other("reopen called before fresh".into())
        })?;
        Ok(CsvBackend::new(dir.path().join("store.csv")))
    }
}

#[async_trait]
impl StoreFactory for CsvFactory {
    type Backend = CsvBackend;

    async fn fresh(&mut self) -> persistent_map_core::Result<CsvBackend> {
        self.dir = Some(tempfile::tempdir()?);
        self.store()
    }

    async fn reopen(&mut self) -> persistent_map_core::Result<CsvBackend> {
        self.store()
    }
}

conformance_tests!(CsvFactory::new());
