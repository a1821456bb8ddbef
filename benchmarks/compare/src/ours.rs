//! The workloads on persistent-map itself.

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use persistent_map_core::{PersistentMap, WriteBehind};
use persistent_map_csv::CsvBackend;
use persistent_map_sqlite::{SqliteBackend, Synchronous};

use crate::data::{key, value, Run};

pub type SqliteMap = PersistentMap<String, String, SqliteBackend>;

pub async fn sqlite_map(path: &Path, level: Synchronous) -> SqliteMap {
    let backend = SqliteBackend::builder(path)
        .synchronous(level)
        .build()
        .await
        .expect("sqlite opens");
    PersistentMap::new(backend).await.expect("map opens")
}

pub async fn sequential_inserts(path: &Path, level: Synchronous, n: u64) -> Run {
    let map = sqlite_map(path, level).await;
    let start = Instant::now();
    for i in 0..n {
        map.insert(key(i), value(i)).await.expect("insert");
    }
    let run = Run { ops: n, secs: start.elapsed().as_secs_f64() };
    map.close().await.expect("close");
    run
}

pub async fn concurrent_inserts(path: &Path, level: Synchronous, tasks: u64, n: u64) -> Run {
    let map = sqlite_map(path, level).await;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let map = map.clone();
            tokio::spawn(async move {
                for i in (t..n).step_by(tasks as usize) {
                    map.insert(key(i), value(i)).await.expect("insert");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("task");
    }
    let run = Run { ops: n, secs: start.elapsed().as_secs_f64() };
    map.close().await.expect("close");
    run
}

pub async fn bulk_insert_many(path: &Path, n: u64) -> Run {
    let map = sqlite_map(path, Synchronous::Normal).await;
    let entries: Vec<(String, String)> = (0..n).map(|i| (key(i), value(i))).collect();
    let start = Instant::now();
    map.extend(entries).await.expect("extend");
    map.flush().await.expect("flush");
    let run = Run { ops: n, secs: start.elapsed().as_secs_f64() };
    map.close().await.expect("close");
    run
}

pub async fn bulk_write_behind(path: &Path, n: u64) -> Run {
    let backend = SqliteBackend::new(path).await.expect("sqlite opens");
    let map: SqliteMap = PersistentMap::builder(backend)
        .max_batch(16_384)
        .write_behind(WriteBehind::new())
        .build()
        .await
        .expect("map opens");
    let start = Instant::now();
    for i in 0..n {
        map.insert(key(i), value(i)).await.expect("insert");
    }
    map.flush().await.expect("flush");
    let run = Run { ops: n, secs: start.elapsed().as_secs_f64() };
    map.close().await.expect("close");
    run
}

/// Write-behind inserts on SQLite from `tasks` tasks, of owned clones of
/// prepared keys and values (as [`crate::baselines::dashmap_inserts`]); the
/// queue holds them all, so this is the caller's cost. The flush after the
/// timed part is not counted.
pub async fn behind_inserts(path: &Path, tasks: u64, n: u64) -> Run {
    let backend = SqliteBackend::new(path).await.expect("sqlite opens");
    let map: SqliteMap = PersistentMap::builder(backend)
        .max_batch(16_384)
        .write_behind(WriteBehind::new().max_pending(n as usize + 1))
        .build()
        .await
        .expect("map opens");
    let data = Arc::new(crate::baselines::prepared(n));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (map, data) = (map.clone(), Arc::clone(&data));
            tokio::spawn(async move {
                for (k, v) in data.iter().skip(t as usize).step_by(tasks as usize) {
                    black_box(map.insert(k.clone(), v.clone()).await.expect("insert"));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("task");
    }
    let run = Run { ops: n, secs: start.elapsed().as_secs_f64() };
    map.close().await.expect("close");
    run
}

pub async fn reopen(path: &Path, expected: u64) -> Run {
    let start = Instant::now();
    let map = sqlite_map(path, Synchronous::Normal).await;
    let run = Run { ops: map.len() as u64, secs: start.elapsed().as_secs_f64() };
    assert_eq!(run.ops, expected);
    map.close().await.expect("close");
    run
}

pub fn gets(map: &SqliteMap, entries: u64, n: u64) -> Run {
    let keys: Vec<String> = (0..entries).map(|i| key((i * 7919) % entries)).collect();
    let start = Instant::now();
    for i in 0..n {
        black_box(map.get(&keys[(i % entries) as usize]));
    }
    Run { ops: n, secs: start.elapsed().as_secs_f64() }
}

/// `get` throughput on a warm map while `writers` write-through writers run.
pub async fn gets_with_writers(map: SqliteMap, entries: u64, writers: u64, n: u64) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let map = map.clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    map.insert(key(i % entries), value(i)).await.expect("write");
                    i += writers;
                }
            })
        })
        .collect();
    // Let the writers get going before the clock starts.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let reader = map.clone();
    let run = tokio::task::spawn_blocking(move || gets(&reader, entries, n))
        .await
        .expect("reader");
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("writer");
    }
    run
}

pub async fn csv_sequential_inserts(path: &Path, n: u64) -> Run {
    let map: PersistentMap<String, String, _> =
        PersistentMap::new(CsvBackend::new(path)).await.expect("csv opens");
    let start = Instant::now();
    for i in 0..n {
        map.insert(key(i), value(i)).await.expect("insert");
    }
    let run = Run { ops: n, secs: start.elapsed().as_secs_f64() };
    map.close().await.expect("close");
    run
}

/// The cost of one `flush` after every 1,000 acknowledged inserts.
pub async fn csv_flush_per_thousand(path: &Path, rounds: u64) -> Run {
    let map: PersistentMap<String, String, _> =
        PersistentMap::new(CsvBackend::new(path)).await.expect("csv opens");
    let mut flushing = 0.0;
    for round in 0..rounds {
        for i in round * 1000..(round + 1) * 1000 {
            map.insert(key(i), value(i)).await.expect("insert");
        }
        let start = Instant::now();
        map.flush().await.expect("flush");
        flushing += start.elapsed().as_secs_f64();
    }
    map.close().await.expect("close");
    Run { ops: rounds, secs: flushing }
}
