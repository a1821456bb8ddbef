//! The reference points: raw sqlx, redb, sled, fjall, rusqlite, a bare
//! DashMap and bare file loops.

use std::fs::OpenOptions;
use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::str::FromStr;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures::TryStreamExt;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row};

use crate::data::{key, value, Run};

const TABLE: TableDefinition<&str, &str> = TableDefinition::new("kv");

pub async fn sqlx_pool(path: &Path, sync: SqliteSynchronous) -> SqlitePool {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .expect("url")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(sync);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("connect");
    sqlx::query("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("create");
    pool
}

/// One autocommit single-row upsert per acknowledged insert.
pub async fn sqlx_sequential_inserts(path: &Path, sync: SqliteSynchronous, n: u64) -> Run {
    let pool = sqlx_pool(path, sync).await;
    let start = Instant::now();
    for i in 0..n {
        sqlx::query("INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            .bind(key(i))
            .bind(serde_json::to_string(&value(i)).expect("json"))
            .execute(&pool)
            .await
            .expect("insert");
    }
    let run = Run { ops: n, secs: start.elapsed().as_secs_f64() };
    pool.close().await;
    run
}

/// One autocommit single-row upsert per acknowledged insert, on one
/// connection held for the whole run (no pool acquire per statement).
pub async fn sqlx_held_sequential_inserts(path: &Path, sync: SqliteSynchronous, n: u64) -> Run {
    let pool = sqlx_pool(path, sync).await;
    let mut conn = pool.connect_options().connect().await.expect("connect");
    let start = Instant::now();
    for i in 0..n {
        sqlx::query("INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            .bind(key(i))
            .bind(serde_json::to_string(&value(i)).expect("json"))
            .execute(&mut conn)
            .await
            .expect("insert");
    }
    let run = Run { ops: n, secs: start.elapsed().as_secs_f64() };
    conn.close().await.expect("close");
    pool.close().await;
    run
}

/// A full-table scan that only reads the rows (key and value text), as
/// `SELECT key, value` returns them: the floor of any reopen.
pub async fn sqlx_row_scan(path: &Path) -> Run {
    let start = Instant::now();
    let pool = sqlx_pool(path, SqliteSynchronous::Normal).await;
    let mut rows = sqlx::query("SELECT key, value FROM kv").fetch(&pool);
    let mut n = 0_u64;
    while let Some(row) = rows.try_next().await.expect("row") {
        black_box((row.get::<&str, _>(0), row.get::<&str, _>(1)));
        n += 1;
    }
    drop(rows);
    let run = Run { ops: n, secs: start.elapsed().as_secs_f64() };
    pool.close().await;
    run
}

/// One transaction, prepared 256-row multi-row inserts. Encoding the values
/// as JSON (the stored format) is inside the clock, as it is for the map.
pub async fn sqlx_bulk(path: &Path, n: u64) -> Run {
    let pool = sqlx_pool(path, SqliteSynchronous::Normal).await;
    let data: Vec<(String, String)> = (0..n).map(|i| (key(i), value(i))).collect();
    const CHUNK: usize = 256;
    let statement = format!(
        "INSERT INTO kv (key, value) VALUES {}",
        vec!["(?, ?)"; CHUNK].join(", ")
    );
    let start = Instant::now();
    let rows: Vec<(&str, String)> = data
        .iter()
        .map(|(k, v)| (k.as_str(), serde_json::to_string(v).expect("json")))
        .collect();
    let mut tx = pool.begin().await.expect("begin");
    for chunk in rows.chunks(CHUNK) {
        if chunk.len() == CHUNK {
            let mut query = sqlx::query(&statement);
            for (k, v) in chunk {
                query = query.bind(k).bind(v);
            }
            query.execute(&mut *tx).await.expect("insert");
        } else {
            for (k, v) in chunk {
                sqlx::query("INSERT INTO kv (key, value) VALUES (?, ?)")
                    .bind(k)
                    .bind(v)
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
            }
        }
    }
    tx.commit().await.expect("commit");
    sqlx::query("PRAGMA wal_checkpoint(FULL)").execute(&pool).await.expect("checkpoint");
    let run = Run { ops: n, secs: start.elapsed().as_secs_f64() };
    pool.close().await;
    run
}

/// A full-table scan decoding every row (key text, JSON value).
pub async fn sqlx_scan(path: &Path) -> Run {
    let start = Instant::now();
    let pool = sqlx_pool(path, SqliteSynchronous::Normal).await;
    let mut rows = sqlx::query("SELECT key, value FROM kv").fetch(&pool);
    let map = DashMap::new();
    while let Some(row) = rows.try_next().await.expect("row") {
        let k: String = row.get(0);
        let v: String = serde_json::from_str(row.get::<&str, _>(1)).expect("json");
        map.insert(k, v);
    }
    drop(rows);
    let run = Run { ops: map.len() as u64, secs: start.elapsed().as_secs_f64() };
    pool.close().await;
    run
}

/// One durable write transaction per insert.
pub fn redb_sequential_inserts(path: &Path, n: u64) -> Run {
    let db = redb::Database::create(path).expect("redb");
    let start = Instant::now();
    for i in 0..n {
        let tx = db.begin_write().expect("begin");
        {
            let mut table = tx.open_table(TABLE).expect("table");
            table.insert(key(i).as_str(), value(i).as_str()).expect("insert");
        }
        tx.commit().expect("commit");
    }
    Run { ops: n, secs: start.elapsed().as_secs_f64() }
}

/// `threads` OS threads inserting `n` disjoint keys in total (thread `t`
/// takes `(t..n).step_by(threads)`), each insert durable before the
/// thread's next one: `insert(t, i)` does one acknowledged durable insert.
fn threaded_inserts(threads: u64, n: u64, insert: impl Fn(u64, u64) + Sync) -> Run {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let insert = &insert;
            scope.spawn(move || {
                for i in (t..n).step_by(threads as usize) {
                    insert(t, i);
                }
            });
        }
    });
    Run { ops: n, secs: start.elapsed().as_secs_f64() }
}

/// One durable write transaction per insert from each of `threads` threads;
/// redb serialises write transactions, so they queue for the writer.
pub fn redb_concurrent_inserts(path: &Path, threads: u64, n: u64) -> Run {
    let db = redb::Database::create(path).expect("redb");
    threaded_inserts(threads, n, |_, i| {
        let tx = db.begin_write().expect("begin");
        {
            let mut table = tx.open_table(TABLE).expect("table");
            table.insert(key(i).as_str(), value(i).as_str()).expect("insert");
        }
        tx.commit().expect("commit");
    })
}

/// sled 0.34: `insert` then `flush` per insert. `flush` waits until the log
/// up to the insert is written and synced; concurrent callers share a sync.
/// On Linux that sync is `sync_file_range`, not `fsync`/`fdatasync`.
pub fn sled_sequential_inserts(path: &Path, n: u64) -> Run {
    let db = sled::open(path).expect("sled");
    let start = Instant::now();
    for i in 0..n {
        db.insert(key(i).as_bytes(), value(i).as_bytes()).expect("insert");
        db.flush().expect("flush");
    }
    Run { ops: n, secs: start.elapsed().as_secs_f64() }
}

pub fn sled_concurrent_inserts(path: &Path, threads: u64, n: u64) -> Run {
    let db = sled::open(path).expect("sled");
    threaded_inserts(threads, n, |_, i| {
        db.insert(key(i).as_bytes(), value(i).as_bytes()).expect("insert");
        db.flush().expect("flush");
    })
}

fn fjall_open(path: &Path) -> (fjall::Keyspace, fjall::PartitionHandle) {
    let keyspace = fjall::Config::new(path).open().expect("fjall");
    let partition = keyspace
        .open_partition("kv", fjall::PartitionCreateOptions::default())
        .expect("partition");
    (keyspace, partition)
}

/// fjall 2: `insert` (journal write to the OS) then
/// `keyspace.persist(SyncAll)` (fsync of the journal) per insert.
pub fn fjall_sequential_inserts(path: &Path, n: u64) -> Run {
    let (keyspace, partition) = fjall_open(path);
    let start = Instant::now();
    for i in 0..n {
        partition.insert(key(i).as_bytes(), value(i).as_bytes()).expect("insert");
        keyspace.persist(fjall::PersistMode::SyncAll).expect("persist");
    }
    Run { ops: n, secs: start.elapsed().as_secs_f64() }
}

/// The journal fsync runs under the journal lock, so concurrent persists
/// queue; one fsync covers every insert written before it.
pub fn fjall_concurrent_inserts(path: &Path, threads: u64, n: u64) -> Run {
    let (keyspace, partition) = fjall_open(path);
    threaded_inserts(threads, n, |_, i| {
        partition.insert(key(i).as_bytes(), value(i).as_bytes()).expect("insert");
        keyspace.persist(fjall::PersistMode::SyncAll).expect("persist");
    })
}

const UPSERT: &str = "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value";

/// A rusqlite connection in WAL mode at synchronous=FULL, with the table.
fn rusqlite_connection(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("rusqlite");
    conn.busy_timeout(Duration::from_secs(5)).expect("busy_timeout");
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .expect("journal_mode");
    assert_eq!(mode.to_ascii_lowercase(), "wal");
    conn.pragma_update(None, "synchronous", "FULL").expect("synchronous");
    conn.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)", [])
        .expect("create");
    conn
}

/// rusqlite (bundled SQLite), WAL, synchronous=FULL: one autocommit upsert
/// per insert on one held connection; the commit fsyncs the WAL.
pub fn rusqlite_sequential_inserts(path: &Path, n: u64) -> Run {
    let conn = rusqlite_connection(path);
    let start = Instant::now();
    for i in 0..n {
        conn.prepare_cached(UPSERT)
            .expect("prepare")
            .execute(rusqlite::params![key(i), serde_json::to_string(&value(i)).expect("json")])
            .expect("insert");
    }
    Run { ops: n, secs: start.elapsed().as_secs_f64() }
}

/// One connection per thread (WAL, FULL, busy_timeout 5 s), one autocommit
/// upsert per insert: writers take SQLite's write lock in turn, each commit
/// with its own WAL fsync.
pub fn rusqlite_concurrent_inserts(path: &Path, threads: u64, n: u64) -> Run {
    drop(rusqlite_connection(path));
    let conns: Vec<std::sync::Mutex<rusqlite::Connection>> =
        (0..threads).map(|_| std::sync::Mutex::new(rusqlite_connection(path))).collect();
    threaded_inserts(threads, n, |t, i| {
        let conn = conns[t as usize].lock().expect("connection");
        conn.prepare_cached(UPSERT)
            .expect("prepare")
            .execute(rusqlite::params![key(i), serde_json::to_string(&value(i)).expect("json")])
            .expect("insert");
    })
}

pub fn redb_bulk(path: &Path, n: u64) -> Run {
    let db = redb::Database::create(path).expect("redb");
    let start = Instant::now();
    let tx = db.begin_write().expect("begin");
    {
        let mut table = tx.open_table(TABLE).expect("table");
        for i in 0..n {
            table.insert(key(i).as_str(), value(i).as_str()).expect("insert");
        }
    }
    tx.commit().expect("commit");
    Run { ops: n, secs: start.elapsed().as_secs_f64() }
}

pub fn redb_scan(path: &Path) -> Run {
    let start = Instant::now();
    let db = redb::Database::create(path).expect("redb");
    let tx = db.begin_read().expect("begin");
    let table = tx.open_table(TABLE).expect("table");
    let map = DashMap::new();
    for entry in table.iter().expect("iter") {
        let (k, v) = entry.expect("entry");
        map.insert(k.value().to_owned(), v.value().to_owned());
    }
    Run { ops: map.len() as u64, secs: start.elapsed().as_secs_f64() }
}

pub fn dashmap_gets(entries: u64, n: u64) -> Run {
    let map: DashMap<String, String> = (0..entries).map(|i| (key(i), value(i))).collect();
    let keys: Vec<String> = (0..entries).map(|i| key((i * 7919) % entries)).collect();
    let start = Instant::now();
    for i in 0..n {
        black_box(map.get(&keys[(i % entries) as usize]).map(|v| v.value().clone()));
    }
    Run { ops: n, secs: start.elapsed().as_secs_f64() }
}

/// Bare `DashMap::insert` of owned clones of prepared keys and values, from
/// `tasks` tokio tasks each inserting its share.
pub async fn dashmap_inserts(tasks: u64, n: u64) -> Run {
    let map: Arc<DashMap<String, String>> = Arc::new(DashMap::new());
    let data = Arc::new(prepared(n));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (map, data) = (Arc::clone(&map), Arc::clone(&data));
            tokio::spawn(async move {
                for (k, v) in data.iter().skip(t as usize).step_by(tasks as usize) {
                    black_box(map.insert(k.clone(), v.clone()));
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("task");
    }
    Run { ops: n, secs: start.elapsed().as_secs_f64() }
}

/// The keys and values an insert workload clones from.
pub fn prepared(n: u64) -> Vec<(String, String)> {
    (0..n).map(|i| (key(i), value(i))).collect()
}

/// The floor for surviving a power cut record by record: append, fdatasync.
pub fn fdatasync_loop(path: &Path, n: u64) -> Run {
    let mut file = OpenOptions::new().create(true).append(true).open(path).expect("open");
    let start = Instant::now();
    for i in 0..n {
        file.write_all(format!("put,{},\"{}\"\n", key(i), value(i)).as_bytes()).expect("write");
        file.sync_data().expect("fdatasync");
    }
    Run { ops: n, secs: start.elapsed().as_secs_f64() }
}

/// The floor for surviving kill -9 record by record: one write call each.
pub fn append_loop(path: &Path, n: u64) -> Run {
    let mut file = OpenOptions::new().create(true).append(true).open(path).expect("open");
    let start = Instant::now();
    for i in 0..n {
        file.write_all(format!("put,{},\"{}\"\n", key(i), value(i)).as_bytes()).expect("write");
    }
    Run { ops: n, secs: start.elapsed().as_secs_f64() }
}

/// One fdatasync after 1,000 appended records, averaged over `rounds`.
pub fn one_fdatasync_per_thousand(path: &Path, rounds: u64) -> Run {
    let mut file = OpenOptions::new().create(true).append(true).open(path).expect("open");
    let mut syncing = 0.0;
    for round in 0..rounds {
        for i in round * 1000..(round + 1) * 1000 {
            file.write_all(format!("put,{},\"{}\"\n", key(i), value(i)).as_bytes()).expect("write");
        }
        let start = Instant::now();
        file.sync_data().expect("fdatasync");
        syncing += start.elapsed().as_secs_f64();
    }
    Run { ops: rounds, secs: syncing }
}
