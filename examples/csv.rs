//! The CSV backend: a human-readable file that outlives the program.
//!
//! `cargo run --example csv` twice: each run finds the visits the runs before
//! it stored, and adds one. Pass a file path to use another file:
//! `cargo run --example csv -- /tmp/visits.csv`, then look at it with any
//! text editor or spreadsheet.

use std::path::PathBuf;

use persistent_map::csv::{Compaction, CsvBackend};
use persistent_map::{PersistentMap, Result};
use serde::{Deserialize, Serialize};

/// Under the workspace's `target/`, so it survives between runs but not `cargo clean`.
const DEFAULT_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/persistent-map-examples/visits.csv"
);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Visits {
    count: u64,
    /// The program's arguments of the last run, to show a nested value.
    last_args: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let path = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from);

    // Every run appends one record; compact once ten of them are outdated.
    let backend = CsvBackend::builder(&path)
        .compaction(Compaction::when_dead(10, 50))
        .build();
    let map: PersistentMap<String, Visits, _> = PersistentMap::new(backend).await?;

    let mut visits = map.get("example").unwrap_or(Visits {
        count: 0,
        last_args: Vec::new(),
    });
    visits.count += 1;
    visits.last_args = std::env::args().skip(1).collect();
    map.insert("example".to_string(), visits.clone()).await?;

    // Make the visit durable on disk (not only safe from a crash) and stop
    // the map's writer; dropping the map releases the file's lock.
    map.close().await?;
    drop(map);

    println!("file: {}", path.display());
    println!("this is visit #{}", visits.count);
    println!("its contents:");
    print!("{}", tokio::fs::read_to_string(&path).await?);
    println!(
        "run the example again: the counter goes on from {}",
        visits.count
    );
    Ok(())
}
