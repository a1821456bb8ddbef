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
    /// The prefix and name a child process opened by their locator (the
    /// parent's scratch prefix, whose keys the parent deletes).
    attached: Option<(String, String)>,
}

impl RedisFactory {
    fn new() -> Self {
        let url = std::env::var(common::URL_VAR).expect("checked by skip_if");
        Self {
            scratch: Scratch::new(url),
            stores: 0,
            attached: None,
        }
    }

    fn names(&self) -> (String, String) {
        self.attached
            .clone()
            .unwrap_or_else(|| (self.scratch.prefix.clone(), format!("map{}", self.stores)))
    }

    async fn open(&self) -> persistent_map_core::Result<RedisBackend> {
        let (prefix, name) = self.names();
        RedisBackend::builder(&self.scratch.url)
            .prefix(prefix)
            .name(name)
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

    fn locator(&self) -> Option<String> {
        let (prefix, name) = self.names();
        Some(format!("{prefix} {name}"))
    }

    async fn attach(&mut self, locator: &str) -> persistent_map_core::Result<RedisBackend> {
        let (prefix, name) = locator.split_once(' ').ok_or_else(|| {
            persistent_map_core::PersistentError::Other(format!("bad locator {locator:?}").into())
        })?;
        self.attached = Some((prefix.to_owned(), name.to_owned()));
        self.open().await
    }

    // No `fail_writes_of`: Redis has no trigger or per-field permission that
    // refuses one field of an `HSET`, so a failure inside a batch cannot be
    // injected with the server's own means.
}

conformance_tests!(RedisFactory::new(), skip_if = common::skip_reason());
