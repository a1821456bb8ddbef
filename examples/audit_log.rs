//! Change subscriptions: an audit log of every change made to a map.
//!
//! `cargo run --example audit_log`: a task subscribes to a map of account
//! balances (in cents, stored in SQLite) and appends one JSON line per change
//! to an audit file, while the program opens accounts, moves money between
//! them in a transaction and opens and closes a temporary account. Each run
//! appends to the same log, in the order the map applied the changes. Pass a
//! directory to keep the files elsewhere:
//! `cargo run --example audit_log -- /tmp/audit`.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use persistent_map::sqlite::SqliteBackend;
use persistent_map::{MapEvent, Origin, PersistentMap, Subscription};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt as _;

/// Under the workspace's `target/`, so it survives between runs but not `cargo clean`.
const DEFAULT_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/persistent-map-examples"
);

/// Cents moved from alice to bob on each run.
const TRANSFER: u64 = 2_500;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from);
    tokio::fs::create_dir_all(&dir).await?;
    let log = dir.join("audit.jsonl");

    let backend = SqliteBackend::builder(dir.join("audit.db"))
        .table("accounts")
        .build()
        .await?;
    let accounts: PersistentMap<String, u64, _> = PersistentMap::new(backend).await?;

    // Subscribe before the first write: the log misses nothing from here on.
    let auditor = tokio::spawn(audit(accounts.subscribe(), log.clone()));

    let (alice, bob) = ("alice".to_string(), "bob".to_string());
    accounts
        .get_or_insert_with(alice.clone(), || 10_000)
        .await?;
    accounts.get_or_insert_with(bob.clone(), || 5_000).await?;
    let moved = accounts
        .transaction({
            let (alice, bob) = (alice.clone(), bob.clone());
            move |tx| {
                let from = tx.get(&alice).unwrap_or(0);
                if from < TRANSFER {
                    return false;
                }
                let to = tx.get(&bob).unwrap_or(0);
                tx.insert(alice, from - TRANSFER);
                tx.insert(bob, to + TRANSFER);
                true
            }
        })
        .await?;
    if !moved {
        println!("alice cannot pay {TRANSFER} cents any more: no transfer this run");
    }
    accounts.insert("carol".to_string(), 0).await?;
    accounts.remove(&"carol".to_string()).await?;

    // Closing ends the subscription once the auditor has read every event.
    accounts.close().await?;
    let written = auditor.await??;
    println!(
        "alice has {} cents, bob {}",
        accounts.get(&alice).unwrap_or(0),
        accounts.get(&bob).unwrap_or(0)
    );
    println!("{written} changes appended to {}", log.display());
    Ok(())
}

/// Appends one JSON line per event to `path` until the map closes; returns
/// how many lines it wrote.
async fn audit(mut events: Subscription<String, u64>, path: PathBuf) -> std::io::Result<u64> {
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await?;
    let mut written = 0;
    while let Some(event) = events.next().await {
        let line = describe(&event).to_string();
        println!("audit: {line}");
        file.write_all(line.as_bytes()).await?;
        file.write_all(b"\n").await?;
        written += 1;
    }
    file.sync_all().await?;
    Ok(written)
}

/// One audit record.
fn describe(event: &MapEvent<String, u64>) -> Value {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let origin = |origin: &Origin| match origin {
        Origin::Remote => "another instance",
        _ => "this program",
    };
    match event {
        MapEvent::Inserted {
            key,
            old,
            value,
            origin: by,
        } => json!({ "at_ms": at, "account": key, "old": old, "new": value, "by": origin(by) }),
        MapEvent::Removed {
            key,
            old,
            origin: by,
        } => json!({ "at_ms": at, "account": key, "old": old, "new": null, "by": origin(by) }),
        MapEvent::Expired { key, value } => {
            json!({ "at_ms": at, "account": key, "old": value, "new": null, "by": "expiry" })
        }
        MapEvent::Cleared { origin: by } => {
            json!({ "at_ms": at, "cleared": true, "by": origin(by) })
        }
        // The log can no longer say what changed one by one: mark the gap,
        // so a reader knows to compare with the store.
        MapEvent::Resynced => json!({ "at_ms": at, "gap": "reloaded from the store" }),
        MapEvent::Lagged { missed } => {
            json!({ "at_ms": at, "gap": format!("{missed} changes not logged") })
        }
        other => json!({ "at_ms": at, "unknown": format!("{other:?}") }),
    }
}
