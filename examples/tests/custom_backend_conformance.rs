//! The third-party style backend of the `custom_backend` example passes the
//! shared conformance suite, exactly as an outside crate would run it.

use persistent_map_conformance::{async_trait, conformance_tests, StoreFactory};
use persistent_map_examples::json_file_backend::JsonFileBackend;

struct JsonFactory {
    dir: tempfile::TempDir,
    stores: u32,
}

impl JsonFactory {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
            stores: 0,
        }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir
            .path()
            .join(format!("store-{}/data.json", self.stores))
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
}

conformance_tests!(JsonFactory::new());
