//! The SQLite backend: data that outlives the program.
//!
//! `cargo run --example sqlite` twice: each run finds what the runs before it
//! stored, and adds one. Pass a file path to use another database:
//! `cargo run --example sqlite -- /tmp/counter.db`.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use persistent_map::sqlite::SqliteBackend;
use persistent_map::{PersistentMap, Result};

/// Under the workspace's `target/`, so it survives between runs but not `cargo clean`.
const DEFAULT_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/persistent-map-examples/sqlite.db"
);

#[tokio::main]
async fn main() -> Result<()> {
    let path = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from);

    // The default table "kv" holds counters; a second table in the same file
    // holds one row per run.
    let counters: PersistentMap<String, u64, _> =
        PersistentMap::new(SqliteBackend::new(&path).await?).await?;
    let history: PersistentMap<u64, u64, _> =
        PersistentMap::new(SqliteBackend::builder(&path).table("runs").build().await?).await?;

    let run = counters.get("runs").unwrap_or(0) + 1;
    counters.insert("runs".to_string(), run).await?;

    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    history.insert(run, started).await?;

    println!("database: {}", path.display());
    println!("this is run #{run}");
    let mut runs: Vec<(u64, u64)> = history.iter().collect();
    runs.sort_unstable();
    for (n, at) in &runs {
        println!("  run #{n} started at unix time {at}");
    }

    // Make both maps durable on disk (not only safe from a crash) and stop
    // their writers.
    counters.close().await?;
    history.close().await?;
    println!("run the example again: the counter goes on from {run}");
    Ok(())
}
