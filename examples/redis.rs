//! The Redis backend: a map shared by every instance of an application.
//!
//! `cargo run --example redis` needs a server: it uses
//! `PERSISTENT_MAP_REDIS_URL`, or `redis://127.0.0.1:6379`
//! (`scripts/test-servers.sh cargo run --example redis` finds or starts one).
//! Each run adds one to a counter kept in the hash `persistent-map:example`,
//! and shows a second instance following the first one's writes through
//! pub/sub.

use std::time::{Duration, Instant};

use persistent_map::redis::RedisBackend;
use persistent_map::{PersistentMap, Result};

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::var("PERSISTENT_MAP_REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());

    let open = || RedisBackend::builder(url.as_str()).name("example").build();
    let web: PersistentMap<String, u64, _> = PersistentMap::new(open().await?).await?;
    let worker: PersistentMap<String, u64, _> = PersistentMap::new(open().await?).await?;
    println!(
        "connected to {} (db {}), hash {}",
        web.backend().endpoint(),
        web.backend().db(),
        web.backend().hash_key()
    );

    // The "web" instance writes; the "worker" instance, with its own
    // connection and subscriber as a second process would have, follows.
    let runs = web.get("runs").unwrap_or(0) + 1;
    web.insert("runs".to_string(), runs).await?;
    let written = Instant::now();
    while worker.get("runs") != Some(runs) {
        if written.elapsed() > Duration::from_secs(5) {
            println!("the worker did not see the write (is pub/sub blocked?)");
            break;
        }
        tokio::task::yield_now().await;
    }
    println!(
        "this is run #{runs}; the second instance saw it after {:?}",
        written.elapsed()
    );
    println!("look at it: redis-cli HGETALL {}", web.backend().hash_key());

    // flush: on Redis 7.2+ with appendonly, waits for the fsync of the
    // append-only file; otherwise durability is the server's configuration.
    web.close().await?;
    worker.close().await?;
    Ok(())
}
