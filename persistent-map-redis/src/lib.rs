#![doc = include_str!("../README.md")]

mod backend;
mod batch;
mod config;
mod error;
mod expiry;
mod watch;

pub use backend::{RedisBackend, FORMAT_VERSION};
pub use config::{
    RedisBuilder, RedisOptions, Watch, DEFAULT_CONNECT_TIMEOUT, DEFAULT_NAME, DEFAULT_PREFIX,
    DEFAULT_RESPONSE_TIMEOUT, DEFAULT_SCAN_COUNT,
};
pub use expiry::score_millis;

/// The reconnecting connection type returned by [`RedisBackend::connection`],
/// re-exported so callers need not depend on the same `redis` version by hand.
pub use redis::aio::ConnectionManager;
