//! The shared conformance suite, on a real PostgreSQL server: each case in a
//! schema of its own, dropped afterwards. Needs `PERSISTENT_MAP_POSTGRES_URL`.

mod common;

use common::Scratch;
use persistent_map_conformance::{async_trait, conformance_tests, StoreFactory};
use persistent_map_postgres::PostgresBackend;

/// Opens each fresh store as a new table in the case's own schema.
struct PostgresFactory {
    scratch: Scratch,
    stores: u32,
}

impl PostgresFactory {
    fn new() -> Self {
        let url = std::env::var(common::URL_VAR).expect("checked by skip_if");
        Self {
            scratch: Scratch::new(url),
            stores: 0,
        }
    }

    async fn open(&self) -> persistent_map_core::Result<PostgresBackend> {
        PostgresBackend::builder(&self.scratch.url)
            .schema(&self.scratch.schema)
            .table(format!("map_{}", self.stores))
            .pool_size(2)
            .build()
            .await
    }
}

#[async_trait]
impl StoreFactory for PostgresFactory {
    type Backend = PostgresBackend;

    async fn fresh(&mut self) -> persistent_map_core::Result<PostgresBackend> {
        self.stores += 1;
        self.open().await
    }

    async fn reopen(&mut self) -> persistent_map_core::Result<PostgresBackend> {
        self.open().await
    }
}

conformance_tests!(PostgresFactory::new(), skip_if = common::skip_reason());
