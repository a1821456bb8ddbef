#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod error;
mod load;
mod write;

pub use backend::{key_format_of, SqliteBackend, FORMAT_VERSION};
pub use config::{
    JournalMode, SqliteBuilder, SqliteOptions, Synchronous, DEFAULT_BUSY_TIMEOUT,
    DEFAULT_POOL_SIZE, DEFAULT_TABLE,
};

/// The sqlx pool type accepted by [`SqliteBackend::from_pool`], re-exported so
/// callers need not depend on the same sqlx version by hand.
pub use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
