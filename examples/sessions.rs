//! Expiry: login sessions and a rate limit that survive a restart.
//!
//! `cargo run --example sessions`: sessions are stored in SQLite with a time
//! to live, so a restarted server still knows who is logged in and forgets
//! a session when its time is up. A per-user request counter lives in a
//! one-minute window: `update` keeps the window's deadline while it counts.
//! Pass a directory to keep the database elsewhere:
//! `cargo run --example sessions -- /tmp/sessions`.

use std::path::PathBuf;
use std::time::Duration;

use persistent_map::sqlite::SqliteBackend;
use persistent_map::PersistentMap;

/// Under the workspace's `target/`, so it survives between runs but not `cargo clean`.
const DEFAULT_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/persistent-map-examples"
);

/// Requests a user may make per window.
const LIMIT: u32 = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from);
    tokio::fs::create_dir_all(&dir).await?;
    let db = dir.join("sessions.db");

    let sessions: PersistentMap<String, String, _> = PersistentMap::builder(
        SqliteBackend::builder(&db)
            .table("sessions")
            .build()
            .await?,
    )
    // Expired sessions are invisible at once; the sweep deletes them.
    .sweep_interval(Duration::from_millis(100))
    .build()
    .await?;
    sessions
        .insert_with_ttl(
            "token-alice".into(),
            "alice".into(),
            Duration::from_secs(3600),
        )
        .await?;
    sessions
        .insert_with_ttl(
            "token-once".into(),
            "bob".into(),
            Duration::from_millis(200),
        )
        .await?;
    println!(
        "alice's session has {:?} left",
        sessions.ttl("token-alice").map(|left| left.as_secs())
    );

    let requests: PersistentMap<String, u32, _> = PersistentMap::builder(
        SqliteBackend::builder(&db)
            .table("requests")
            .build()
            .await?,
    )
    .default_ttl(Duration::from_secs(60))
    .build()
    .await?;
    for attempt in 1..=5 {
        let count = requests
            .update(&"alice".to_string(), |n| Some(n.copied().unwrap_or(0) + 1))
            .await?
            .unwrap_or(0);
        let verdict = if count <= LIMIT { "allowed" } else { "refused" };
        println!("request {attempt} of alice: {verdict} ({count} in this window)");
    }

    // A restart: close both maps and open the sessions again.
    sessions.close().await?;
    requests.close().await?;
    drop((sessions, requests));
    let sessions: PersistentMap<String, String, _> = PersistentMap::new(
        SqliteBackend::builder(&db)
            .table("sessions")
            .build()
            .await?,
    )
    .await?;
    println!(
        "after the restart: alice's session is {}, with its deadline kept ({:?} s left)",
        if sessions.contains_key("token-alice") {
            "there"
        } else {
            "gone"
        },
        sessions.ttl("token-alice").map(|left| left.as_secs())
    );
    // Wait (with a generous limit) for bob's short session to run out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sessions.contains_key("token-once") && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "bob's 200 ms session: {}",
        if sessions.contains_key("token-once") {
            "still there"
        } else {
            "expired"
        }
    );
    let swept = sessions.sweep_expired().await?;
    println!("swept {swept} expired session(s) from the database");
    sessions.close().await?;
    Ok(())
}
