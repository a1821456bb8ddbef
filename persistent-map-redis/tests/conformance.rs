//! The shared conformance suite, on a real Redis server: each case under a
//! key prefix of its own, deleted afterwards. Needs `PERSISTENT_MAP_REDIS_URL`.

mod common;

use common::Scratch;
use persistent_map_conformance::{async_trait, conformance_tests, StoreFactory};
use persistent_map_redis::RedisBackend;

/// Opens each fresh store as a new hash under the case's own prefix.
struct RedisFactory {
    scratch: Scratch,
    stores: u32,
}

impl RedisFactory {
    fn new() -> Self {
        let url = std::env::var(common::URL_VAR).expect("checked by skip_if");
        Self {
            scratch: Scratch::new(url),
            stores: 0,
        }
    }

    async fn open(&self) -> persistent_map_core::Result<RedisBackend> {
        RedisBackend::builder(&self.scratch.url)
            .prefix(&self.scratch.prefix)
            .name(format!("map{}", self.stores))
            // Small chunks, so loading exercises several HSCAN rounds.
            .scan_count(3)
            .build()
            .await
    }
}

#[async_trait]
impl StoreFactory for RedisFactory {
    type Backend = RedisBackend;

    async fn fresh(&mut self) -> persistent_map_core::Result<RedisBackend> {
        self.stores += 1;
        self.open().await
    }

    async fn reopen(&mut self) -> persistent_map_core::Result<RedisBackend> {
        self.open().await
    }
}

conformance_tests!(RedisFactory::new(), skip_if = common::skip_reason());
