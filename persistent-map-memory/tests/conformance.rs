//! The shared conformance suite against `InMemoryBackend`.

use persistent_map_conformance::{async_trait, conformance_tests, StoreFactory};
use persistent_map_memory::InMemoryBackend;

#[derive(Default)]
struct MemoryFactory {
    current: Option<InMemoryBackend>,
}

#[async_trait]
impl StoreFactory for MemoryFactory {
    type Backend = InMemoryBackend;

    async fn fresh(&mut self) -> persistent_map_core::Result<InMemoryBackend> {
        let store = InMemoryBackend::new();
        self.current = Some(store.clone());
        Ok(store)
    }

    async fn reopen(&mut self) -> persistent_map_core::Result<InMemoryBackend> {
        Ok(self.current.clone().expect("fresh is called before reopen"))
    }
}

conformance_tests!(MemoryFactory::default());
