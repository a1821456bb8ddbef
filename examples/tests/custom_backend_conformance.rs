//! The third-party style backend of the `custom_backend` example passes the
//! shared conformance suite, exactly as an outside crate would run it.

use std::path::PathBuf;

use persistent_map_conformance::{async_trait, conformance_tests, StoreFactory};
use persistent_map_examples::json_file_backend::JsonFileBackend;

struct JsonFactory {
    dir: tempfile::TempDir,
    stores: u32,
    /// The store a child process opened by its locator.
    attached: Option<PathBuf>,
}

impl JsonFactory {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
            stores: 0,
            attached: None,
        }
    }

    fn path(&self) -> PathBuf {
        self.attached.clone().unwrap_or_else(|| {
            self.dir
                .path()
                .join(format!("store-{}/data.json", self.stores))
        })
    }
}

#[async_trait]
impl StoreFactory for JsonFactory {
    type Backend = JsonFileBackend;

    async fn fresh(&mut self) -> persistent_map_core::Result<JsonFileBackend> {
        self.stores += 1;
        Ok(JsonFileBackend::new(self.path()))
    }

    async fn reopen(&mut self) -> persistent_map_core::Result<JsonFileBackend> {
        Ok(JsonFileBackend::new(self.path()))
    }

    fn locator(&self) -> Option<String> {
        Some(self.path().to_str()?.to_owned())
    }

    async fn attach(&mut self, locator: &str) -> persistent_map_core::Result<JsonFileBackend> {
        self.attached = Some(PathBuf::from(locator));
        Ok(JsonFileBackend::new(self.path()))
    }

    fn files(&self) -> Vec<PathBuf> {
        // The data file and the temporary file renamed over it.
        self.path()
            .parent()
            .map(PathBuf::from)
            .into_iter()
            .collect()
    }
}

conformance_tests!(JsonFactory::new());
