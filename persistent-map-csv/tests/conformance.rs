//! The shared conformance suite against `CsvBackend`, on files in a temporary directory.

use std::path::PathBuf;

use persistent_map_conformance::{async_trait, conformance_tests, StoreFactory};
use persistent_map_csv::CsvBackend;
use tempfile::TempDir;

/// Opens a store at `store.csv` in a temporary directory the factory owns,
/// so the directory outlives every backend of one case. In a child process
/// the directory is the parent's, and only its path is kept.
struct CsvFactory {
    dir: Option<TempDir>,
    path: Option<PathBuf>,
}

impl CsvFactory {
    fn new() -> Self {
        Self {
            dir: None,
            path: None,
        }
    }

    fn store(&self) -> persistent_map_core::Result<CsvBackend> {
        let path = self.path.as_ref().ok_or_else(|| {
            persistent_map_core::PersistentError::Other("reopen called before fresh".into())
        })?;
        Ok(CsvBackend::new(path))
    }
}

#[async_trait]
impl StoreFactory for CsvFactory {
    type Backend = CsvBackend;

    async fn fresh(&mut self) -> persistent_map_core::Result<CsvBackend> {
        let dir = tempfile::tempdir()?;
        self.path = Some(dir.path().join("store.csv"));
        self.dir = Some(dir);
        self.store()
    }

    async fn reopen(&mut self) -> persistent_map_core::Result<CsvBackend> {
        self.store()
    }

    fn locator(&self) -> Option<String> {
        Some(self.path.as_ref()?.to_str()?.to_owned())
    }

    async fn attach(&mut self, locator: &str) -> persistent_map_core::Result<CsvBackend> {
        self.path = Some(PathBuf::from(locator));
        self.store()
    }

    fn files(&self) -> Vec<PathBuf> {
        // The data file, its lock and compaction's temporary file.
        self.dir.iter().map(|dir| dir.path().to_owned()).collect()
    }

    // No `fail_writes_of`: a batch reaches the file as one append, and the
    // file system offers no honest way to refuse one key of it.
}

conformance_tests!(CsvFactory::new());
