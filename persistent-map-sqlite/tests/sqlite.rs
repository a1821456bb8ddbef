//! Behaviour of the SQLite backend on real files: round trips, the 0.1.x
//! format, damaged and foreign files, several tables, group commit, pragmas.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use persistent_map_core::codec::KeyFormat;
use persistent_map_core::{
    async_trait, BatchOp, Capabilities, CodecDirection, EntryPart, ErrorKind, PersistentError,
    PersistentMap, Result, StorageBackend,
};
use persistent_map_sqlite::{JournalMode, SqliteBackend, SqliteOptions, Synchronous};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

const FIXTURE_0_1_3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v0_1_3.sqlite3");

fn db_in(dir: &TempDir) -> PathBuf {
    dir.path().join("store.db")
}

async fn open<K, V>(path: &Path) -> PersistentMap<K, V, SqliteBackend>
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let backend = SqliteBackend::new(path).await.expect("backend opens");
    PersistentMap::new(backend).await.expect("map opens")
}

async fn open_err<K, V>(path: &Path) -> PersistentError
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    match SqliteBackend::new(path).await {
        Err(err) => err,
        Ok(backend) => match PersistentMap::<K, V, _>::new(backend).await {
            Err(err) => err,
            Ok(_) => panic!("opening {} should fail", path.display()),
        },
    }
}

/// Rows of `table` as stored, read with plain SQL.
async fn raw_rows(path: &Path, table: &str) -> Vec<(String, String)> {
    let backend = SqliteBackend::new(path).await.expect("opens");
    let rows = sqlx::query_as(&format!("SELECT key, value FROM \"{table}\" ORDER BY key"))
        .fetch_all(backend.pool())
        .await
        .expect("reads");
    backend.close().await;
    rows
}

/// Runs SQL on the file outside any map.
async fn exec(path: &Path, sql: &str) {
    let backend = SqliteBackend::new(path).await.expect("opens");
    sqlx::raw_sql(sql)
        .execute(backend.pool())
        .await
        .expect("sql runs");
    backend.close().await;
}

fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        text.push_str(" / ");
        text.push_str(&e.to_string());
        cur = e.source();
    }
    text
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Account {
    id: u32,
    region: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    tags: Vec<String>,
    score: f64,
}

#[tokio::test]
async fn string_keys_round_trip_and_stay_plain_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let map = open::<String, Profile>(&path).await;
    let alice = Profile {
        name: "Alice".into(),
        tags: vec!["admin".into()],
        score: 1.5,
    };
    assert_eq!(
        map.insert("alice".into(), alice.clone())
            .await
            .expect("insert"),
        None
    );
    map.insert("bob".into(), alice.clone())
        .await
        .expect("insert");
    assert_eq!(
        map.remove(&"bob".to_string()).await.expect("remove"),
        Some(alice.clone())
    );
    map.insert("42".into(), alice.clone())
        .await
        .expect("insert");
    map.close().await.expect("close");
    drop(map);

    let again = open::<String, Profile>(&path).await;
    assert_eq!(again.len(), 2);
    assert_eq!(again.get("alice"), Some(alice.clone()));
    assert_eq!(again.get("42"), Some(alice));
    again.close().await.expect("close");
    drop(again);

    let rows = raw_rows(&path, "kv").await;
    // A string whose text is JSON is quoted, so it cannot be taken for the number.
    assert_eq!(rows[0].0, "\"42\"");
    assert_eq!(rows[1].0, "alice");
    assert_eq!(
        rows[1].1,
        r#"{"name":"Alice","tags":["admin"],"score":1.5}"#
    );
}

#[tokio::test]
async fn integer_tuple_and_struct_keys_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");

    let ints = dir.path().join("ints.db");
    let map = open::<i64, String>(&ints).await;
    for k in [-3_i64, 0, 42, i64::MAX] {
        map.insert(k, format!("v{k}")).await.expect("insert");
    }
    map.close().await.expect("close");
    drop(map);
    let map = open::<i64, String>(&ints).await;
    assert_eq!(map.len(), 4);
    assert_eq!(map.get(&i64::MAX), Some(format!("v{}", i64::MAX)));
    assert_eq!(map.get(&-3), Some("v-3".to_string()));
    map.close().await.expect("close");
    drop(map);
    assert!(raw_rows(&ints, "kv").await.iter().any(|(k, _)| k == "-3"));

    let tuples = dir.path().join("tuples.db");
    let map = open::<(u32, String), bool>(&tuples).await;
    map.insert((1, "a".into()), true).await.expect("insert");
    map.insert((2, "b,c".into()), false).await.expect("insert");
    map.close().await.expect("close");
    drop(map);
    let map = open::<(u32, String), bool>(&tuples).await;
    assert_eq!(map.get(&(1, "a".to_string())), Some(true));
    assert_eq!(map.get(&(2, "b,c".to_string())), Some(false));
    map.close().await.expect("close");
    drop(map);
    assert_eq!(raw_rows(&tuples, "kv").await[0].0, r#"[1,"a"]"#);

    let structs = dir.path().join("structs.db");
    let key = Account {
        id: 7,
        region: "eu".into(),
    };
    let map = open::<Account, u64>(&structs).await;
    map.insert(key.clone(), 100).await.expect("insert");
    map.close().await.expect("close");
    drop(map);
    let map = open::<Account, u64>(&structs).await;
    assert_eq!(map.get(&key), Some(100));
    map.close().await.expect("close");
    drop(map);
    assert_eq!(
        raw_rows(&structs, "kv").await[0].0,
        r#"{"id":7,"region":"eu"}"#
    );
}

#[tokio::test]
async fn acknowledged_writes_survive_dropping_the_map_without_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let map = open::<u32, u32>(&path).await;
    for i in 0..200 {
        map.insert(i, i * 2).await.expect("insert");
    }
    for i in 0..50 {
        map.remove(&i).await.expect("remove");
    }
    // No flush, no close: as after a crash of the process, only what the
    // backend acknowledged counts.
    drop(map);

    let again = open::<u32, u32>(&path).await;
    assert_eq!(again.len(), 150);
    assert_eq!(again.get(&50), Some(100));
    assert_eq!(again.get(&10), None);
}

#[tokio::test]
async fn flush_checkpoints_the_wal_into_the_database_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let map = open::<String, u32>(&path).await;
    for i in 0..100 {
        map.insert(format!("k{i}"), i).await.expect("insert");
    }
    map.flush().await.expect("flush");

    // The database file alone, without its WAL, already holds every row:
    // the checkpoint wrote (and synced) them into it.
    let copy = dir.path().join("copy.db");
    tokio::fs::copy(&path, &copy).await.expect("copy");
    assert!(!dir.path().join("copy.db-wal").exists());
    let snapshot = open::<String, u32>(&copy).await;
    assert_eq!(snapshot.len(), 100);
    map.close().await.expect("close");
}

#[tokio::test]
async fn a_0_1_3_file_loads_every_entry_and_stays_readable_after_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("legacy.db");
    tokio::fs::copy(FIXTURE_0_1_3, &path)
        .await
        .expect("copy fixture");
    let path_str = path.to_str().expect("utf-8 path");

    // 0.1.x code passed a &str.
    let backend = SqliteBackend::new(path_str).await.expect("opens");
    let map: PersistentMap<String, String, _> = PersistentMap::new(backend).await.expect("loads");
    let expected: HashMap<String, String> = [
        ("alice", "Alice Liddell"),
        ("bob", "Bob, the builder"),
        ("42", "a key that looks like a number"),
        ("café au lait", "quotes \" and\nnewlines"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(map.iter().collect::<HashMap<_, _>>(), expected);

    map.insert("carol".into(), "new".into())
        .await
        .expect("insert");
    map.insert("7".into(), "seven".into())
        .await
        .expect("insert");
    map.remove(&"bob".to_string()).await.expect("remove");
    map.close().await.expect("close");
    drop(map);

    // Stamped with the legacy format version, table layout and key format
    // unchanged, so 0.1.x (which reads only `kv`) still reads it.
    let backend = SqliteBackend::new(&path).await.expect("reopens");
    assert_eq!(backend.key_format(), KeyFormat::Legacy);
    let version: i64 = sqlx::query_scalar(
        "SELECT format_version FROM persistent_map_meta WHERE table_name = 'kv'",
    )
    .fetch_one(backend.pool())
    .await
    .expect("meta row");
    assert_eq!(version, 1);
    let seven: String = sqlx::query_scalar("SELECT value FROM kv WHERE key = '7'")
        .fetch_one(backend.pool())
        .await
        .expect("a string key that looks like JSON is stored unquoted, as 0.1.x did");
    assert_eq!(seven, "\"seven\"");
    let schema: String = sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'kv'")
        .fetch_one(backend.pool())
        .await
        .expect("schema");
    assert_eq!(
        schema,
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
    );
    let carol: String = sqlx::query_scalar("SELECT value FROM kv WHERE key = 'carol'")
        .fetch_one(backend.pool())
        .await
        .expect("row");
    assert_eq!(carol, "\"new\"");

    let map: PersistentMap<String, String, _> = PersistentMap::new(backend).await.expect("loads");
    assert_eq!(map.len(), 5);
    assert_eq!(map.get("7"), Some("seven".to_string()));
    assert_eq!(map.get("carol"), Some("new".to_string()));
    assert_eq!(map.get("bob"), None);
    assert_eq!(
        map.get("café au lait"),
        expected.get("café au lait").cloned()
    );
}

#[tokio::test]
async fn an_undecodable_row_names_table_and_key_and_deletes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let map = open::<String, u32>(&path).await;
    for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
        map.insert(k.into(), v).await.expect("insert");
    }
    map.close().await.expect("close");
    drop(map);
    // The value type changed for one row, as after a release changing `V`.
    exec(&path, "UPDATE kv SET value = '\"three\"' WHERE key = 'c'").await;
    let before = raw_rows(&path, "kv").await;

    let err = open_err::<String, u32>(&path).await;
    match &err {
        PersistentError::Codec {
            direction: CodecDirection::Decode,
            part: EntryPart::Value,
            location,
            ..
        } => {
            assert!(location.store.contains("table \"kv\""), "{location}");
            assert!(
                location.store.contains(&path.display().to_string()),
                "{location}"
            );
            assert_eq!(location.key.as_deref(), Some("\"c\""));
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert!(err.to_string().contains("key \"c\""), "{err}");
    assert_eq!(raw_rows(&path, "kv").await, before);

    // A key that no longer decodes is reported the same way.
    let err = open_err::<u32, u32>(&path).await;
    assert!(
        matches!(&err, PersistentError::Codec { direction: CodecDirection::Decode, part: EntryPart::Key, location, .. }
            if location.key.as_deref() == Some("\"a\"") || location.key.as_deref() == Some("\"b\"") || location.key.as_deref() == Some("\"c\"")),
        "{err:?}"
    );
    assert_eq!(raw_rows(&path, "kv").await, before);
}

#[tokio::test]
async fn null_and_blob_cells_are_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");

    for (file, key_sql, kind) in [
        ("null.db", "NULL", "NULL"),
        ("blob-key.db", "X'00FF'", "BLOB"),
    ] {
        let path = dir.path().join(file);
        exec(
            &path,
            &format!("INSERT INTO kv (key, value) VALUES ({key_sql}, '1')"),
        )
        .await;
        let err = open_err::<String, u32>(&path).await;
        assert!(
            matches!(
                &err,
                PersistentError::Codec {
                    direction: CodecDirection::Decode,
                    part: EntryPart::Key,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(source_chain(&err).contains(kind), "{}", source_chain(&err));
    }

    let blob_value = dir.path().join("blob-value.db");
    exec(
        &blob_value,
        "INSERT INTO kv (key, value) VALUES ('k', X'31')",
    )
    .await;
    let err = open_err::<String, u32>(&blob_value).await;
    match &err {
        PersistentError::Codec {
            direction: CodecDirection::Decode,
            part: EntryPart::Value,
            location,
            ..
        } => assert_eq!(location.key.as_deref(), Some("\"k\"")),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_table_of_many_chunks_loads_whole_and_a_bad_row_deep_in_it_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let expected: HashMap<String, Option<u64>> = (0..10_000_u64)
        .map(|i| {
            let value = (i % 7 != 0).then_some(i * 1_000_003);
            (format!("k{i:05}"), value)
        })
        .collect();
    let map = open::<String, Option<u64>>(&path).await;
    map.extend(expected.clone()).await.expect("extend");
    map.insert("\"quoted\", comma".into(), Some(u64::MAX))
        .await
        .expect("insert");
    map.close().await.expect("close");
    drop(map);

    let map = open::<String, Option<u64>>(&path).await;
    let mut want = expected;
    want.insert("\"quoted\", comma".into(), Some(u64::MAX));
    let loaded: HashMap<String, Option<u64>> = map.iter().collect();
    assert_eq!(loaded.len(), want.len());
    assert_eq!(loaded, want, "every row of every chunk, exactly");
    map.close().await.expect("close");
    drop(map);

    // One value deep in the third chunk no longer decodes.
    exec(
        &path,
        "UPDATE kv SET value = '\"text\"' WHERE key = 'k09000'",
    )
    .await;
    let err = open_err::<String, Option<u64>>(&path).await;
    match &err {
        PersistentError::Codec {
            direction: CodecDirection::Decode,
            part: EntryPart::Value,
            location,
            ..
        } => assert_eq!(location.key.as_deref(), Some("\"k09000\"")),
        other => panic!("expected a decode error naming k09000, got {other:?}"),
    }

    // Text that is not JSON at all deep in a later chunk (SQLite's json()
    // refuses to pack it) is named too.
    exec(&path, "UPDATE kv SET value = '7' WHERE key = 'k09000'").await;
    exec(
        &path,
        "UPDATE kv SET value = 'not json' WHERE key = 'k09500'",
    )
    .await;
    let err = open_err::<String, Option<u64>>(&path).await;
    match &err {
        PersistentError::Codec { location, .. } => {
            assert_eq!(location.key.as_deref(), Some("\"k09500\""));
        }
        other => panic!("expected a decode error naming k09500, got {other:?}"),
    }
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.db");
    let content = "these are my notes, not a database\n".repeat(200);
    tokio::fs::write(&path, &content).await.expect("write");

    let err = SqliteBackend::new(&path).await.expect_err("not a database");
    assert!(matches!(err, PersistentError::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("not a sqlite database"), "{text}");
    assert_eq!(
        tokio::fs::read_to_string(&path).await.expect("read"),
        content
    );
}

#[tokio::test]
async fn a_newer_format_version_is_unsupported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let map = open::<String, u32>(&path).await;
    map.insert("a".into(), 1).await.expect("insert");
    map.close().await.expect("close");
    drop(map);
    exec(
        &path,
        "UPDATE persistent_map_meta SET format_version = 99 WHERE table_name = 'kv'",
    )
    .await;
    let err = SqliteBackend::new(&path).await.expect_err("too new");
    match &err {
        PersistentError::UnsupportedFormat {
            found, supported, ..
        } => {
            assert_eq!(*found, 99);
            assert_eq!(*supported, persistent_map_sqlite::FORMAT_VERSION);
        }
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
    assert!(err.to_string().contains("table \"kv\""), "{err}");
}

#[tokio::test]
async fn a_directory_that_cannot_be_created_is_a_typed_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("blocker");
    tokio::fs::write(&blocker, b"a regular file")
        .await
        .expect("write");
    let path = blocker.join("sub").join("store.db");

    let err = SqliteBackend::new(&path)
        .await
        .expect_err("parent is a file");
    match &err {
        PersistentError::Io {
            path: Some(failed), ..
        } => assert!(failed.starts_with(&blocker), "{}", failed.display()),
        other => panic!("expected an i/o error, got {other:?}"),
    }
    assert!(err.to_string().contains("blocker"), "{err}");
}

#[tokio::test]
async fn several_tables_share_one_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let users = SqliteBackend::builder(&path)
        .table("users")
        .build()
        .await
        .expect("users");
    let orders = SqliteBackend::builder(&path)
        .table("orders")
        .build()
        .await
        .expect("orders");
    let users: PersistentMap<String, Profile, _> = PersistentMap::new(users).await.expect("map");
    let orders: PersistentMap<u64, Vec<String>, _> = PersistentMap::new(orders).await.expect("map");
    let p = Profile {
        name: "Ann".into(),
        tags: vec![],
        score: 0.0,
    };
    users.insert("ann".into(), p.clone()).await.expect("insert");
    orders.insert(1, vec!["book".into()]).await.expect("insert");
    orders.insert(2, vec![]).await.expect("insert");
    users.close().await.expect("close");
    orders.close().await.expect("close");
    drop((users, orders));

    let backend = SqliteBackend::new(&path).await.expect("default table");
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT table_name FROM persistent_map_meta ORDER BY table_name")
            .fetch_all(backend.pool())
            .await
            .expect("meta");
    assert_eq!(tables, ["kv", "orders", "users"]);
    let default: PersistentMap<String, String, _> = PersistentMap::new(backend).await.expect("map");
    assert!(default.is_empty());

    let users: PersistentMap<String, Profile, _> = PersistentMap::new(
        SqliteBackend::open(&path, SqliteOptions::new().table("users"))
            .await
            .expect("users"),
    )
    .await
    .expect("map");
    assert_eq!(users.get("ann"), Some(p));
    assert_eq!(users.len(), 1);
    let orders: PersistentMap<u64, Vec<String>, _> = PersistentMap::new(
        SqliteBackend::open(&path, SqliteOptions::new().table("orders"))
            .await
            .expect("orders"),
    )
    .await
    .expect("map");
    assert_eq!(orders.len(), 2);
}

#[tokio::test]
async fn invalid_table_names_and_foreign_tables_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    for bad in [
        "",
        "1abc",
        "drop table\"",
        "sqlite_master",
        "persistent_map_meta",
        "a-b",
    ] {
        let err = SqliteBackend::builder(&path)
            .table(bad)
            .build()
            .await
            .expect_err("invalid name");
        assert!(
            source_chain(&err).contains("invalid table name"),
            "{bad}: {}",
            source_chain(&err)
        );
    }

    exec(
        &path,
        "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT)",
    )
    .await;
    let err = SqliteBackend::builder(&path)
        .table("events")
        .build()
        .await
        .expect_err("foreign table");
    assert!(matches!(err, PersistentError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("table \"events\""), "{err}");
}

/// Counts the transactions (batches) that reach the SQLite backend.
#[derive(Debug, Clone)]
struct Counting {
    inner: SqliteBackend,
    batches: Arc<AtomicUsize>,
}

#[async_trait]
impl<K, V> StorageBackend<K, V> for Counting
where
    K: Eq + Hash + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load_all(&self) -> Result<HashMap<K, V>> {
        StorageBackend::<K, V>::load_all(&self.inner).await
    }
    async fn save(&self, key: K, value: V) -> Result<()> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.inner.save(key, value).await
    }
    async fn delete(&self, key: &K) -> Result<()> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        StorageBackend::<K, V>::delete(&self.inner, key).await
    }
    async fn apply_batch(&self, batch: &[BatchOp<K, V>]) -> Result<()> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.inner.apply_batch(batch).await
    }
    async fn flush(&self) -> Result<()> {
        StorageBackend::<K, V>::flush(&self.inner).await
    }
    async fn load_into(&self, sink: &mut (dyn FnMut(K, V) + Send)) -> Result<()> {
        self.inner.load_into(sink).await
    }
    fn capabilities(&self) -> Capabilities {
        StorageBackend::<K, V>::capabilities(&self.inner)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_share_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let batches = Arc::new(AtomicUsize::new(0));
    let backend = Counting {
        inner: SqliteBackend::builder(&path)
            .synchronous(Synchronous::Full)
            .build()
            .await
            .expect("opens"),
        batches: Arc::clone(&batches),
    };
    let map: PersistentMap<u32, String, _> = PersistentMap::new(backend).await.expect("map");

    const OPS: u32 = 2000;
    let tasks: Vec<_> = (0..OPS)
        .map(|i| {
            let map = map.clone();
            tokio::spawn(async move { map.insert(i, format!("value {i}")).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("insert");
    }
    let commits = batches.load(Ordering::SeqCst);
    assert!(commits >= 1);
    assert!(
        commits * 10 <= OPS as usize,
        "{commits} commits for {OPS} inserts: no group commit"
    );
    assert_eq!(map.len(), OPS as usize);
    map.close().await.expect("close");
    drop(map);
    assert_eq!(raw_rows(&path, "kv").await.len(), OPS as usize);
}

#[tokio::test]
async fn every_pooled_connection_has_the_configured_pragmas() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (journal, sync, name) in [
        (JournalMode::Wal, Synchronous::Normal, "wal.db"),
        (JournalMode::Wal, Synchronous::Full, "wal-full.db"),
        (JournalMode::Delete, Synchronous::Full, "delete.db"),
        (JournalMode::Truncate, Synchronous::Extra, "truncate.db"),
    ] {
        let backend = SqliteBackend::builder(dir.path().join(name))
            .journal_mode(journal)
            .synchronous(sync)
            .busy_timeout(Duration::from_millis(1234))
            .pool_size(3)
            .build()
            .await
            .expect("opens");
        // Hold three connections at once, so the pool must open three.
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(backend.pool().acquire().await.expect("connection"));
        }
        for conn in &mut conns {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut **conn)
                .await
                .expect("pragma");
            let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut **conn)
                .await
                .expect("pragma");
            let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
                .fetch_one(&mut **conn)
                .await
                .expect("pragma");
            assert_eq!(mode, journal.pragma_name(), "{name}");
            assert_eq!(level, sync.pragma_value(), "{name}");
            assert_eq!(busy, 1234, "{name}");
        }
        assert_eq!(backend.pool().size(), 3);
        drop(conns);

        // The backend works in every mode, flush included.
        let map: PersistentMap<u8, u8, _> = PersistentMap::new(backend).await.expect("map");
        map.insert(1, 2).await.expect("insert");
        map.flush().await.expect("flush");
        map.close().await.expect("close");
    }
}

#[tokio::test]
async fn a_batch_is_encoded_first_and_applied_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = SqliteBackend::new(db_in(&dir)).await.expect("opens");
    type Value = HashMap<Vec<u8>, u8>;
    let good: Value = HashMap::new();
    // JSON object keys must be strings: this value cannot be encoded.
    let bad: Value = [(vec![1_u8], 1_u8)].into_iter().collect();
    let batch = vec![
        BatchOp::Put {
            key: "first".to_string(),
            value: good.clone(),
        },
        BatchOp::Put {
            key: "bad".to_string(),
            value: bad,
        },
    ];
    let err = backend.apply_batch(&batch).await.expect_err("unencodable");
    match &err {
        PersistentError::Codec {
            direction: CodecDirection::Encode,
            part: EntryPart::Value,
            location,
            ..
        } => assert_eq!(location.key.as_deref(), Some("\"bad\"")),
        other => panic!("expected an encode error, got {other:?}"),
    }
    assert_eq!(
        StorageBackend::<String, Value>::len(&backend)
            .await
            .expect("len"),
        0
    );

    // Order within a batch: the last change to a key wins.
    let ops: Vec<BatchOp<String, u32>> = vec![
        BatchOp::Put {
            key: "a".into(),
            value: 1,
        },
        BatchOp::Delete { key: "a".into() },
        BatchOp::Put {
            key: "b".into(),
            value: 2,
        },
        BatchOp::Put {
            key: "b".into(),
            value: 3,
        },
        BatchOp::Delete {
            key: "missing".into(),
        },
        BatchOp::Put {
            key: "c".into(),
            value: 4,
        },
        BatchOp::Delete { key: "c".into() },
        BatchOp::Put {
            key: "c".into(),
            value: 5,
        },
    ];
    backend.apply_batch(&ops).await.expect("batch");
    let all: HashMap<String, u32> = backend.load_all().await.expect("load");
    assert_eq!(
        all,
        HashMap::from([("b".to_string(), 3), ("c".to_string(), 5)])
    );

    // Large batches are split into chunks under SQLite's parameter limit.
    let many: Vec<BatchOp<String, u32>> = (0..5000)
        .map(|i| BatchOp::Put {
            key: format!("k{i}"),
            value: i,
        })
        .collect();
    backend.apply_batch(&many).await.expect("large batch");
    let deletes: Vec<BatchOp<String, u32>> = (0..3001)
        .map(|i| BatchOp::Delete {
            key: format!("k{i}"),
        })
        .collect();
    backend.apply_batch(&deletes).await.expect("large delete");
    assert_eq!(
        StorageBackend::<String, u32>::len(&backend)
            .await
            .expect("len"),
        1999 + 2
    );
    assert!(
        StorageBackend::<String, u32>::contains_key(&backend, &"k4999".to_string())
            .await
            .expect("contains")
    );
    assert!(
        !StorageBackend::<String, u32>::contains_key(&backend, &"k0".to_string())
            .await
            .expect("contains")
    );

    StorageBackend::<String, u32>::clear(&backend)
        .await
        .expect("clear");
    assert!(StorageBackend::<String, u32>::is_empty(&backend)
        .await
        .expect("empty"));
}

#[tokio::test]
async fn a_busy_database_is_reported_as_busy_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let holder = SqliteBackend::new(&path).await.expect("opens");
    let waiter = SqliteBackend::builder(&path)
        .busy_timeout(Duration::from_millis(100))
        .build()
        .await
        .expect("opens");

    let lock = holder
        .pool()
        .begin_with("BEGIN IMMEDIATE")
        .await
        .expect("write lock");
    let err = waiter.save("k".to_string(), 1_u32).await.expect_err("busy");
    assert!(
        matches!(
            err,
            PersistentError::Timeout {
                backend: "sqlite",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_temporary(), "a busy database may free up");
    assert!(
        source_chain(&err).contains("busy"),
        "{}",
        source_chain(&err)
    );
    lock.rollback().await.expect("rollback");

    assert_eq!(
        StorageBackend::<String, u32>::len(&waiter)
            .await
            .expect("len"),
        0
    );
    waiter
        .save("k".to_string(), 1_u32)
        .await
        .expect("free again");
}

#[tokio::test]
async fn two_maps_on_one_file_see_each_other_after_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let a = open::<String, u32>(&path).await;
    let b = open::<String, u32>(&path).await;
    let writers: Vec<_> = (0..50)
        .map(|i| {
            let (a, b) = (&a, &b);
            async move {
                a.insert(format!("a{i}"), i).await.expect("a writes");
                b.insert(format!("b{i}"), i).await.expect("b writes");
            }
        })
        .collect();
    futures::future::join_all(writers).await;
    // Not coherent: each map sees only its own writes until it reloads.
    assert_eq!(a.len(), 50);
    assert_eq!(a.get("b0"), None);
    a.reload().await.expect("reload");
    assert_eq!(a.len(), 100);
    assert_eq!(a.get("b7"), Some(7));
    a.close().await.expect("close");
    b.close().await.expect("close");
}

#[tokio::test]
async fn the_synchronous_level_decides_the_declared_durability() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (level, durability) in [
        (
            Synchronous::Normal,
            persistent_map_core::Durability::OnFlush,
        ),
        (
            Synchronous::Full,
            persistent_map_core::Durability::OnAcknowledge,
        ),
        (
            Synchronous::Extra,
            persistent_map_core::Durability::OnAcknowledge,
        ),
    ] {
        let backend = SqliteBackend::builder(dir.path().join(format!("{level:?}.db")))
            .synchronous(level)
            .build()
            .await
            .expect("opens");
        let map: PersistentMap<String, u32, _> = PersistentMap::new(backend).await.expect("map");
        assert_eq!(map.durability(), durability, "{level:?}");
        map.close().await.expect("close");
    }
}

#[tokio::test]
async fn a_closed_backend_refuses_writes_as_well_as_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = SqliteBackend::new(db_in(&dir)).await.expect("opens");
    backend.close().await;
    let err = backend
        .save("k".to_string(), 1_u32)
        .await
        .expect_err("closed");
    assert!(matches!(err, PersistentError::Closed), "{err:?}");
}

/// A key that is a string or a number, as an untagged enum: `"42"` and
/// `42` are two keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
enum TextOrNumber {
    Text(String),
    Number(u32),
}

/// `Option<String>` keys whose texts collide in the legacy key format.
fn awkward_keys() -> Vec<(Option<String>, u32)> {
    [
        None,
        Some("null"),
        Some("42"),
        Some(""),
        Some("\"x\""),
        Some("alice"),
    ]
    .into_iter()
    .map(|k| k.map(str::to_owned))
    .zip(1..)
    .collect()
}

#[tokio::test]
async fn keys_that_share_a_legacy_text_stay_distinct_across_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let map = open::<Option<String>, u32>(&path).await;
    assert_eq!(map.backend().key_format(), KeyFormat::Distinct);
    for (k, v) in awkward_keys() {
        map.insert(k, v).await.expect("insert");
    }
    map.close().await.expect("close");
    drop(map);
    let map = open::<Option<String>, u32>(&path).await;
    let mut got: Vec<(Option<String>, u32)> = map.iter().collect();
    got.sort_by_key(|(_, v)| *v);
    assert_eq!(got, awkward_keys());
    for (k, _) in awkward_keys() {
        assert!(
            StorageBackend::<Option<String>, u32>::contains_key(map.backend(), &k)
                .await
                .expect("contains"),
            "{k:?}"
        );
    }
    map.close().await.expect("close");
    drop(map);

    let path = dir.path().join("enum.db");
    let map = open::<TextOrNumber, u32>(&path).await;
    map.insert(TextOrNumber::Text("42".into()), 1)
        .await
        .expect("insert");
    map.insert(TextOrNumber::Number(42), 2)
        .await
        .expect("insert");
    map.close().await.expect("close");
    drop(map);
    let map = open::<TextOrNumber, u32>(&path).await;
    assert_eq!(map.len(), 2);
    assert_eq!(map.get(&TextOrNumber::Text("42".into())), Some(1));
    assert_eq!(map.get(&TextOrNumber::Number(42)), Some(2));
    map.close().await.expect("close");

    let version: i64 = sqlx::query_scalar(
        "SELECT format_version FROM persistent_map_meta WHERE table_name = 'kv'",
    )
    .fetch_one(map.backend().pool())
    .await
    .expect("meta row");
    assert_eq!(version, i64::from(persistent_map_sqlite::FORMAT_VERSION));
}

#[tokio::test]
async fn a_version_1_table_keeps_the_legacy_key_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_in(&dir);
    let map = open::<String, u32>(&path).await;
    map.close().await.expect("close");
    drop(map);
    // A table an earlier 0.2 created: version 1, no key format recorded.
    exec(
        &path,
        "UPDATE persistent_map_meta SET format_version = 1 WHERE table_name = 'kv'",
    )
    .await;
    let map = open::<String, u32>(&path).await;
    assert_eq!(map.backend().key_format(), KeyFormat::Legacy);
    map.insert("42".into(), 1).await.expect("insert");
    map.close().await.expect("close");
    drop(map);
    assert_eq!(
        raw_rows(&path, "kv").await,
        [("42".to_string(), "1".to_string())]
    );
    let backend = SqliteBackend::new(&path).await.expect("opens");
    let version: i64 = sqlx::query_scalar(
        "SELECT format_version FROM persistent_map_meta WHERE table_name = 'kv'",
    )
    .fetch_one(backend.pool())
    .await
    .expect("meta row");
    assert_eq!(version, 1, "the table is not moved to the new format");
}
