#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod error;
mod format;
mod load;
mod statements;
mod write;

pub use backend::SqliteBackend;
pub use config::{
    JournalMode, SqliteBuilder, SqliteOptions, Synchronous, DEFAULT_BUSY_TIMEOUT,
    DEFAULT_POOL_SIZE, DEFAULT_TABLE,
};
pub use format::{has_deadlines, key_format_of, FORMAT_VERSION};

/// The sqlx pool type accepted by [`SqliteBackend::from_pool`], re-exported so
/// callers need not depend on the same sqlx version by hand.
pub use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
