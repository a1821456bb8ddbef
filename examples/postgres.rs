//! The PostgreSQL backend: a map shared by every instance of an application.
//!
//! `cargo run --example postgres` needs a server: it uses
//! `PERSISTENT_MAP_POSTGRES_URL`, or `postgres://postgres@127.0.0.1:5432/test`
//! (`scripts/test-servers.sh cargo run --example postgres` finds or starts one).
//! Each run adds one to a counter that survives between runs, and shows a
//! second instance following the first one's writes through LISTEN/NOTIFY.

use std::time::{Duration, Instant};

use persistent_map::postgres::PostgresBackend;
use persistent_map::{PersistentMap, Result};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[tokio::main]
async fn main() -> Result<()> {
    let url =
        std::env::var("PERSISTENT_MAP_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());

    // Table "example_counters" in schema "public", created if missing.
    let open = || {
        PostgresBackend::builder(url.as_str())
            .table("example_counters")
            .build()
    };
    let web: PersistentMap<String, u64, _> = PersistentMap::new(open().await?).await?;
    let worker: PersistentMap<String, u64, _> = PersistentMap::new(open().await?).await?;
    println!(
        "connected to {} ({})",
        web.backend().endpoint(),
        web.backend().database()
    );

    // The "web" instance writes; the "worker" instance, with its own pool
    // and listener as a second process would have, follows.
    let runs = web.get("runs").unwrap_or(0) + 1;
    web.insert("runs".to_string(), runs).await?;
    let written = Instant::now();
    while worker.get("runs") != Some(runs) {
        if written.elapsed() > Duration::from_secs(5) {
            println!("the worker did not see the write (is LISTEN/NOTIFY blocked?)");
            break;
        }
        tokio::task::yield_now().await;
    }
    println!(
        "this is run #{runs}; the second instance saw it after {:?}",
        written.elapsed()
    );

    // Values are JSONB, queryable with SQL (psql, or `backend().pool()`).
    println!(
        "query it with SQL: SELECT key, value FROM \"{}\".\"{}\";",
        web.backend().schema(),
        web.backend().table()
    );

    web.close().await?;
    worker.close().await?;
    Ok(())
}
