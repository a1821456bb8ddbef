//! A backend written the way a third party would, against persistent-map-core
//! only, driving a `PersistentMap`. Run it twice: the second run finds what the
//! first one stored.
//!
//! `cargo run --example custom_backend`

use persistent_map_core::{PersistentMap, Result};
use persistent_map_examples::json_file_backend::JsonFileBackend;

#[tokio::main]
async fn main() -> Result<()> {
    let path = std::env::temp_dir().join("persistent-map-custom-backend.json");
    let map: PersistentMap<String, u64, _> =
        PersistentMap::new(JsonFileBackend::new(&path)).await?;

    let runs = map.get("runs").unwrap_or(0) + 1;
    map.insert("runs".to_string(), runs).await?;
    map.flush().await?;
    println!(
        "{} now holds {} entries; this is run {runs}",
        path.display(),
        map.len()
    );
    map.close().await
}
