//! The in-memory backend: the same map API, nothing written to disk.
//!
//! `cargo run --example in_memory`

use persistent_map::in_memory::InMemoryBackend;
use persistent_map::{PersistentMap, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    user: String,
    hits: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    let store = InMemoryBackend::new();
    let map = PersistentMap::new(store.clone()).await?;
    for (id, user) in [(1_u64, "ada"), (2, "grace"), (3, "linus")] {
        map.insert(
            id,
            Session {
                user: user.into(),
                hits: 0,
            },
        )
        .await?;
    }
    if let Some(mut session) = map.get(&2) {
        session.hits += 1;
        map.insert(2, session).await?;
    }
    map.remove(&3).await?;
    let mut sessions: Vec<_> = map.iter().collect();
    sessions.sort_by_key(|(id, _)| *id);
    println!("sessions: {sessions:?}");
    map.close().await?;

    // A map reopened on a clone of the backend sees what the first one stored.
    let reopened: PersistentMap<u64, Session, _> = PersistentMap::new(store).await?;
    println!("after reopen: {} sessions", reopened.len());
    Ok(())
}
