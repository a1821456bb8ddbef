#![doc = include_str!("../README.md")]

pub use persistent_map_core::*;

/// The in-memory backend: [`in_memory::InMemoryBackend`].
#[cfg(feature = "in_memory")]
pub use persistent_map_memory as in_memory;

/// The SQLite backend: [`sqlite::SqliteBackend`].
#[cfg(feature = "sqlite")]
pub use persistent_map_sqlite as sqlite;

/// The CSV backend: [`csv::CsvBackend`].
#[cfg(feature = "csv_backend")]
pub use persistent_map_csv as csv;

/// The PostgreSQL backend: [`postgres::PostgresBackend`].
#[cfg(feature = "postgres")]
pub use persistent_map_postgres as postgres;

/// The Redis backend: [`redis::RedisBackend`].
#[cfg(feature = "redis")]
pub use persistent_map_redis as redis;
