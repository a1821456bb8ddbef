//! Shared set-up of the benchmarks: data sets and backends opened the same way
//! for every bench, so their figures compare.

use std::path::Path;

use persistent_map_core::{PersistentMap, StorageBackend};
use persistent_map_csv::CsvBackend;
use persistent_map_memory::InMemoryBackend;
use persistent_map_sqlite::{SqliteBackend, Synchronous};

/// A value of about 100 bytes, different for every `i`.
pub fn value(i: u64) -> String {
    format!("{i:020}-{}", "v".repeat(79))
}

/// The key of entry `i`.
pub fn key(i: u64) -> String {
    format!("key-{i:012}")
}

/// The backends the benches compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `InMemoryBackend`.
    Memory,
    /// `SqliteBackend`, WAL, synchronous NORMAL (the default).
    SqliteNormal,
    /// `SqliteBackend`, WAL, synchronous FULL.
    SqliteFull,
    /// `CsvBackend` with its defaults.
    Csv,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 4] = [
        Kind::Memory,
        Kind::SqliteNormal,
        Kind::SqliteFull,
        Kind::Csv,
    ];

    /// The name used in bench ids.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::SqliteNormal => "sqlite-normal",
            Kind::SqliteFull => "sqlite-full",
            Kind::Csv => "csv",
        }
    }
}

/// Opens a SQLite backend in `dir` at the given synchronous level.
///
/// # Panics
///
/// When the backend cannot be opened: a bench cannot go on without it.
pub async fn sqlite(dir: &Path, level: Synchronous) -> SqliteBackend {
    SqliteBackend::builder(dir.join("bench.db"))
        .synchronous(level)
        .build()
        .await
        .expect("sqlite opens")
}

/// A CSV backend in `dir`.
pub fn csv(dir: &Path) -> CsvBackend {
    CsvBackend::new(dir.join("bench.csv"))
}

/// A memory backend.
pub fn memory() -> InMemoryBackend {
    InMemoryBackend::new()
}

/// Opens a map of `String` to `String` on `backend`.
///
/// # Panics
///
/// When the map cannot be opened.
pub async fn open<B>(backend: B) -> PersistentMap<String, String, B>
where
    B: StorageBackend<String, String> + Send + Sync + 'static,
{
    PersistentMap::new(backend).await.expect("map opens")
}

/// Runs `$body` with `$backend` bound to a fresh backend of each kind, in a
/// new temporary directory, and `$name` to the kind's name.
#[macro_export]
macro_rules! for_each_backend {
    ($rt:expr, |$name:ident, $backend:ident| $body:block) => {{
        for kind in $crate::Kind::ALL {
            let dir = tempfile::tempdir().expect("temporary directory");
            let $name = kind.name();
            match kind {
                $crate::Kind::Memory => {
                    let $backend = $crate::memory();
                    $body
                }
                $crate::Kind::SqliteNormal => {
                    let $backend = $rt.block_on($crate::sqlite(
                        dir.path(),
                        persistent_map_sqlite::Synchronous::Normal,
                    ));
                    $body
                }
                $crate::Kind::SqliteFull => {
                    let $backend = $rt.block_on($crate::sqlite(
                        dir.path(),
                        persistent_map_sqlite::Synchronous::Full,
                    ));
                    $body
                }
                $crate::Kind::Csv => {
                    let $backend = $crate::csv(dir.path());
                    $body
                }
            }
        }
    }};
}
