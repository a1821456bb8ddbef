//! Runs the comparison workloads on persistent-map 0.1.3 and prints one line
//! per workload: `name ops seconds`.

use std::time::Instant;

use persistent_map::sqlite::SqliteBackend;
use persistent_map::PersistentMap;

fn value(i: u64) -> String {
    format!("{i:020}-{}", "v".repeat(79))
}

fn key(i: u64) -> String {
    format!("key-{i:012}")
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).expect("usage: legacy <dir> <inserts> <entries>"));
    let inserts: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(500);
    let entries: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    std::fs::create_dir_all(&dir).expect("dir");

    // Sequential acknowledged inserts.
    let path = dir.join("legacy-inserts.db");
    let _ = std::fs::remove_file(&path);
    let map = PersistentMap::new(SqliteBackend::new(path.to_str().expect("utf-8")).await.expect("open"))
        .await
        .expect("map");
    let start = Instant::now();
    for i in 0..inserts {
        map.insert(key(i), value(i)).await.expect("insert");
    }
    println!("insert_sequential {inserts} {}", start.elapsed().as_secs_f64());

    // Fill a store for the read and reopen workloads (outside the clock:
    // one by one it would take minutes).
    let path = dir.join("legacy-read.db");
    let _ = std::fs::remove_file(&path);
    {
        let conn = tokio_rusqlite::Connection::open(&path).await.expect("open");
        conn.call(move |c| {
            c.execute_batch("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")?;
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare("INSERT INTO kv (key, value) VALUES (?1, ?2)")?;
                for i in 0..entries {
                    let json = format!("\"{}\"", value(i));
                    stmt.execute((key(i), json))?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .expect("fill");
    }
    let start = Instant::now();
    let map: PersistentMap<String, String, _> =
        PersistentMap::new(SqliteBackend::new(path.to_str().expect("utf-8")).await.expect("open"))
            .await
            .expect("reopen");
    println!("reopen {entries} {}", start.elapsed().as_secs_f64());
    assert_eq!(map.len() as u64, entries);

    let gets = 1_000_000_u64;
    let keys: Vec<String> = (0..entries).map(|i| key((i * 7919) % entries)).collect();
    let start = Instant::now();
    let mut found = 0_u64;
    for n in 0..gets {
        if map.get(&keys[(n % entries) as usize]).is_some() {
            found += 1;
        }
    }
    println!("get_warm {gets} {}", start.elapsed().as_secs_f64());
    assert_eq!(found, gets);
}
