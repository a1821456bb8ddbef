//! A short tour of persistent-map on SQLite: open, insert, get, remove,
//! iterate, flush, close, and reopen to see the data again.
//!
//! `cargo run --example quickstart`

use persistent_map::sqlite::SqliteBackend;
use persistent_map::{PersistentMap, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    age: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    // A fresh directory for this run; the file is created with its parents.
    let dir =
        std::env::temp_dir().join(format!("persistent-map-quickstart-{}", std::process::id()));
    let path = dir.join("quickstart.db");

    println!("opening {}", path.display());
    let backend = SqliteBackend::new(&path).await?;
    let users: PersistentMap<String, User, _> = PersistentMap::new(backend).await?;

    // `insert` returns once SQLite committed the change, and returns the
    // value it replaced.
    for (name, age) in [("alice", 30), ("bob", 25), ("carol", 41)] {
        let user = User {
            name: name.to_string(),
            age,
        };
        users.insert(name.to_string(), user).await?;
        println!("inserted {name}");
    }
    let previous = users
        .insert(
            "alice".to_string(),
            User {
                name: "alice".to_string(),
                age: 31,
            },
        )
        .await?;
    println!("updated alice, previous value: {previous:?}");

    // Reads come from the in-memory cache: no await, no I/O.
    println!("get(\"bob\") = {:?}", users.get("bob"));
    println!("contains_key(\"dave\") = {}", users.contains_key("dave"));

    let removed = users.remove(&"bob".to_string()).await?;
    println!("removed bob: {removed:?}");

    let mut all: Vec<(String, User)> = users.iter().collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    println!("{} users:", users.len());
    for (key, user) in &all {
        println!("  {key}: {} is {}", user.name, user.age);
    }

    // `flush` makes every acknowledged change durable on disk (fsync), so it
    // survives a power cut; `close` flushes and stops the writer.
    users.flush().await?;
    println!("flushed");
    users.close().await?;
    println!("closed");
    drop(users);

    let reopened: PersistentMap<String, User, _> =
        PersistentMap::new(SqliteBackend::new(&path).await?).await?;
    println!(
        "reopened: {} users, alice is {:?}",
        reopened.len(),
        reopened.get("alice").map(|u| u.age)
    );
    reopened.close().await?;
    drop(reopened);

    if let Err(err) = tokio::fs::remove_dir_all(&dir).await {
        println!("could not remove {}: {err}", dir.display());
    }
    Ok(())
}
