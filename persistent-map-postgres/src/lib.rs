#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod error;
mod format;
mod stored;
mod watch;
mod write;

pub use backend::PostgresBackend;
pub use config::{
    PostgresBuilder, PostgresOptions, Watch, DEFAULT_CONNECT_TIMEOUT, DEFAULT_POOL_SIZE,
    DEFAULT_SCHEMA, DEFAULT_TABLE,
};
pub use format::{has_deadlines, key_format_of, layout_of, FORMAT_VERSION};
pub use stored::{load_key, load_value, store_key, store_value, VALUE_MARKER};

/// The sqlx pool types accepted by [`PostgresBackend::from_pool`], re-exported
/// so callers need not depend on the same sqlx version by hand.
pub use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
