//! Deadlines (expiry) on real SQLite files: the round trip across a
//! reopen, the conditional removal of expired entries, the upgrade of
//! tables of older format versions in place, and damaged deadlines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use persistent_map_core::codec::KeyFormat;
use persistent_map_core::{BatchOp, PersistentError, StorageBackend};
use persistent_map_sqlite::{SqliteBackend, FORMAT_VERSION};
use tempfile::TempDir;

const FIXTURE_0_1_3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v0_1_3.sqlite3");
const FIXTURE_0_2_0: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v0_2_0.sqlite3");

type Op = BatchOp<String, u32>;
type Stored = BTreeMap<String, (u32, Option<SystemTime>)>;

/// The instant `ms` milliseconds after the Unix epoch (before it if negative).
fn at(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

fn put(key: &str, value: u32) -> Op {
    BatchOp::Put {
        key: key.to_string(),
        value,
    }
}

fn put_until(key: &str, value: u32, ms: i64) -> Op {
    BatchOp::PutExpiring {
        key: key.to_string(),
        value,
        expires_at: at(ms),
    }
}

fn sweep(key: &str, now_ms: i64) -> Op {
    BatchOp::DeleteExpired {
        key: key.to_string(),
        now: at(now_ms),
    }
}

fn del(key: &str) -> Op {
    BatchOp::Delete {
        key: key.to_string(),
    }
}

async fn apply(backend: &SqliteBackend, batch: &[Op]) {
    StorageBackend::<String, u32>::apply_batch(backend, batch)
        .await
        .expect("batch applies");
}

async fn stored(backend: &SqliteBackend) -> Stored {
    let mut all = Stored::new();
    StorageBackend::<String, u32>::load_with_expiry_into(backend, &mut |k, v, d| {
        all.insert(k, (v, d));
    })
    .await
    .expect("loads with deadlines");
    all
}

async fn reopen(backend: SqliteBackend) -> SqliteBackend {
    let path = backend.path().to_path_buf();
    backend.close().await;
    drop(backend);
    SqliteBackend::new(&path).await.expect("reopens")
}

fn expected(entries: &[(&str, u32, Option<i64>)]) -> Stored {
    entries
        .iter()
        .map(|&(k, v, d)| (k.to_string(), (v, d.map(at))))
        .collect()
}

async fn version(path: &Path) -> i64 {
    let backend = SqliteBackend::new(path).await.expect("opens");
    let version = sqlx::query_scalar(
        "SELECT format_version FROM persistent_map_meta WHERE table_name = 'kv'",
    )
    .fetch_one(backend.pool())
    .await
    .expect("meta row");
    backend.close().await;
    version
}

async fn schema(backend: &SqliteBackend) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE tbl_name = 'kv' AND sql IS NOT NULL ORDER BY name",
    )
    .fetch_all(backend.pool())
    .await
    .expect("schema")
}

async fn exec(backend: &SqliteBackend, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(backend.pool())
        .await
        .expect("sql runs");
}

async fn copy_fixture(fixture: &str, dir: &TempDir) -> PathBuf {
    let path = dir.path().join("old.db");
    tokio::fs::copy(fixture, &path).await.expect("copy fixture");
    path
}

#[tokio::test]
async fn deadlines_round_trip_exactly_across_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = SqliteBackend::new(dir.path().join("ttl.db"))
        .await
        .expect("opens");
    assert!(StorageBackend::<String, u32>::capabilities(&backend).expiry);
    apply(
        &backend,
        &[
            put_until("soon", 1, 1_767_225_600_123),
            put_until("past", 2, 1_000),
            put_until("before-epoch", 3, -86_400_001),
            put("never", 4),
        ],
    )
    .await;
    // A single change goes through the one-statement path.
    apply(&backend, &[put_until("alone", 5, 4_102_444_800_999)]).await;

    let backend = reopen(backend).await;
    let want = expected(&[
        ("soon", 1, Some(1_767_225_600_123)),
        ("past", 2, Some(1_000)),
        ("before-epoch", 3, Some(-86_400_001)),
        ("never", 4, None),
        ("alone", 5, Some(4_102_444_800_999)),
    ]);
    assert_eq!(stored(&backend).await, want);

    // Expired entries are returned as stored, by every load.
    let all = StorageBackend::<String, u32>::load_all(&backend)
        .await
        .expect("loads");
    assert_eq!(all.len(), 5);
    assert_eq!(all.get("past"), Some(&2));

    let keys: Vec<String> = ["past", "missing", "never", "past"]
        .iter()
        .map(ToString::to_string)
        .collect();
    let got = StorageBackend::<String, u32>::load_keys_with_expiry(&backend, &keys)
        .await
        .expect("loads keys");
    assert_eq!(
        got,
        vec![
            ("past".to_string(), Some((2, Some(at(1_000))))),
            ("missing".to_string(), None),
            ("never".to_string(), Some((4, None))),
            ("past".to_string(), Some((2, Some(at(1_000))))),
        ]
    );
    let plain = StorageBackend::<String, u32>::load_keys(&backend, &keys)
        .await
        .expect("loads keys");
    assert_eq!(plain[0], ("past".to_string(), Some(2)));
    assert_eq!(plain[1], ("missing".to_string(), None));

    let raw: i64 = sqlx::query_scalar("SELECT expires_at FROM kv WHERE key = 'soon'")
        .fetch_one(backend.pool())
        .await
        .expect("row");
    assert_eq!(
        raw, 1_767_225_600_123,
        "stored as milliseconds since the epoch"
    );
    backend.close().await;
}

#[tokio::test]
async fn a_put_clears_the_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = SqliteBackend::new(dir.path().join("ttl.db"))
        .await
        .expect("opens");
    apply(
        &backend,
        &[put_until("a", 1, 5_000), put_until("b", 1, 5_000)],
    )
    .await;
    apply(&backend, &[put("a", 2)]).await;
    apply(&backend, &[put("b", 2), put("c", 3)]).await;
    let backend = reopen(backend).await;
    assert_eq!(
        stored(&backend).await,
        expected(&[("a", 2, None), ("b", 2, None), ("c", 3, None)])
    );
    backend.close().await;
}

#[tokio::test]
async fn delete_expired_removes_only_what_has_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = SqliteBackend::new(dir.path().join("ttl.db"))
        .await
        .expect("opens");
    apply(
        &backend,
        &[
            put_until("expired", 1, 1_000),
            put_until("due-now", 2, 2_000),
            put_until("later", 3, 9_000),
            put("forever", 4),
        ],
    )
    .await;
    apply(
        &backend,
        &[
            sweep("expired", 2_000),
            sweep("due-now", 2_000),
            sweep("later", 2_000),
            sweep("forever", 2_000),
            sweep("missing", 2_000),
        ],
    )
    .await;
    // One at a time too (the one-statement path).
    apply(&backend, &[sweep("missing", 2_000)]).await;
    apply(&backend, &[sweep("later", 8_999)]).await;
    let backend = reopen(backend).await;
    assert_eq!(
        stored(&backend).await,
        expected(&[("later", 3, Some(9_000)), ("forever", 4, None)])
    );
    apply(&backend, &[sweep("later", 9_000)]).await;
    assert_eq!(stored(&backend).await, expected(&[("forever", 4, None)]));
    backend.close().await;
}

#[tokio::test]
async fn a_batch_applies_conditional_removals_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = SqliteBackend::new(dir.path().join("ttl.db"))
        .await
        .expect("opens");
    apply(
        &backend,
        &[put_until("kept", 1, 1_000), put_until("back", 1, 1_000)],
    )
    .await;
    apply(
        &backend,
        &[
            // Written with a past deadline, then swept: gone.
            put_until("swept", 1, 1_000),
            sweep("swept", 5_000),
            // A put without a deadline, then a sweep: stays.
            put("kept", 2),
            sweep("kept", 5_000),
            // Swept, then written again with a past deadline: stays, with it.
            sweep("back", 5_000),
            put_until("back", 2, 2_000),
            // Removed, written with a deadline, swept with a clock before it.
            del("later"),
            put_until("later", 3, 9_000),
            sweep("later", 5_000),
        ],
    )
    .await;
    let backend = reopen(backend).await;
    assert_eq!(
        stored(&backend).await,
        expected(&[
            ("kept", 2, None),
            ("back", 2, Some(2_000)),
            ("later", 3, Some(9_000)),
        ])
    );
    backend.close().await;
}

#[tokio::test]
async fn batches_larger_than_a_statement_keep_their_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = SqliteBackend::new(dir.path().join("ttl.db"))
        .await
        .expect("opens");
    let keys: Vec<String> = (0..700).map(|i| format!("k{i}")).collect();
    let mut batch: Vec<Op> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| put_until(k, 1, if i % 3 == 0 { 1_000 } else { 9_000 }))
        .collect();
    batch.extend(keys.iter().map(|k| sweep(k, 5_000)));
    apply(&backend, &batch).await;
    let backend = reopen(backend).await;
    let got = stored(&backend).await;
    assert_eq!(got.len(), 466);
    assert!(!got.contains_key("k255") && got.contains_key("k256"));
    assert!(got.values().all(|&(_, d)| d == Some(at(9_000))));
    backend.close().await;
}

#[tokio::test]
async fn the_deadline_index_is_partial_and_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = SqliteBackend::new(dir.path().join("ttl.db"))
        .await
        .expect("opens");
    assert_eq!(backend.format_version(), FORMAT_VERSION);
    assert_eq!(
        schema(&backend).await,
        [
            "CREATE TABLE \"kv\" (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at INTEGER)",
            "CREATE INDEX \"kv_expires_at\" ON \"kv\" (expires_at) WHERE expires_at IS NOT NULL",
        ]
    );
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT key FROM kv WHERE expires_at IS NOT NULL AND expires_at <= 5",
    )
    .fetch_all(backend.pool())
    .await
    .expect("plan");
    assert!(
        plan.iter()
            .any(|(.., detail)| detail.contains("kv_expires_at")),
        "{plan:?}"
    );
    backend.close().await;
}

#[tokio::test]
async fn a_version_2_table_opens_unchanged_and_upgrades_with_its_first_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = copy_fixture(FIXTURE_0_2_0, &dir).await;
    let backend = SqliteBackend::new(&path).await.expect("opens");
    assert_eq!(backend.format_version(), 2);
    assert_eq!(backend.key_format(), KeyFormat::Distinct);
    let before = schema(&backend).await;
    assert_eq!(
        before,
        ["CREATE TABLE \"kv\" (key TEXT PRIMARY KEY, value TEXT NOT NULL)"]
    );
    assert_eq!(
        stored(&backend).await,
        expected(&[("alice", 30, None), ("bob", 25, None), ("42", 42, None)])
    );
    // Plain writes and sweeps leave the format as it is.
    apply(&backend, &[put("carol", 7), del("bob")]).await;
    apply(&backend, &[sweep("alice", 5_000), sweep("carol", 5_000)]).await;
    assert_eq!(schema(&backend).await, before);
    let backend = reopen(backend).await;
    assert_eq!(backend.format_version(), 2);
    assert_eq!(version(&path).await, 2);

    // The first deadline adds the column, its index and the version, in
    // the batch's own transaction.
    apply(
        &backend,
        &[put("dave", 1), put_until("alice", 31, 1_767_225_600_123)],
    )
    .await;
    assert_eq!(backend.format_version(), 4);
    assert_eq!(
        schema(&backend).await,
        [
            "CREATE TABLE \"kv\" (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires_at INTEGER)",
            "CREATE INDEX \"kv_expires_at\" ON \"kv\" (expires_at) WHERE expires_at IS NOT NULL",
        ]
    );
    let backend = reopen(backend).await;
    assert_eq!(version(&path).await, i64::from(FORMAT_VERSION));
    assert_eq!(backend.key_format(), KeyFormat::Distinct);
    assert_eq!(
        stored(&backend).await,
        expected(&[
            ("alice", 31, Some(1_767_225_600_123)),
            ("42", 42, None),
            ("carol", 7, None),
            ("dave", 1, None),
        ])
    );
    backend.close().await;
}

#[tokio::test]
async fn a_0_1_3_table_keeps_its_legacy_keys_when_it_gets_deadlines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = copy_fixture(FIXTURE_0_1_3, &dir).await;
    let backend = SqliteBackend::new(&path).await.expect("opens");
    // Opening stamps a 0.1.x table with version 1, as before.
    assert_eq!(backend.format_version(), 1);
    let mut plain = BTreeMap::new();
    StorageBackend::<String, String>::load_with_expiry_into(&backend, &mut |k, v, d| {
        plain.insert(k, (v, d));
    })
    .await
    .expect("loads");
    assert_eq!(plain.len(), 4);
    assert!(plain.values().all(|(_, d)| d.is_none()));

    let op = BatchOp::PutExpiring {
        key: "42".to_string(),
        value: "answer".to_string(),
        expires_at: at(86_400_000),
    };
    StorageBackend::<String, String>::apply_batch(&backend, &[op])
        .await
        .expect("applies");
    assert_eq!(backend.format_version(), 3);
    let backend = reopen(backend).await;
    assert_eq!(version(&path).await, 3);
    assert_eq!(backend.key_format(), KeyFormat::Legacy);
    let got = StorageBackend::<String, String>::load_keys_with_expiry(
        &backend,
        &["42".to_string(), "alice".to_string()],
    )
    .await
    .expect("loads");
    assert_eq!(
        got,
        vec![
            (
                "42".to_string(),
                Some(("answer".to_string(), Some(at(86_400_000))))
            ),
            (
                "alice".to_string(),
                Some(("Alice Liddell".to_string(), None))
            ),
        ]
    );
    let key: String = sqlx::query_scalar("SELECT key FROM kv WHERE expires_at IS NOT NULL")
        .fetch_one(backend.pool())
        .await
        .expect("row");
    assert_eq!(key, "42", "a legacy table's keys stay unquoted");
    backend.close().await;
}

/// Two backends on one version 2 table: one adds the deadline column while
/// the other has the table open. The other's later writes and loads see it.
#[tokio::test]
async fn an_upgrade_by_another_backend_is_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = copy_fixture(FIXTURE_0_2_0, &dir).await;
    let first = SqliteBackend::new(&path).await.expect("opens");
    let second = SqliteBackend::new(&path).await.expect("opens");
    assert_eq!(first.format_version(), 2);
    apply(
        &second,
        &[put_until("alice", 1, 1_000), put_until("bob", 1, 1_000)],
    )
    .await;
    assert_eq!(second.format_version(), 4);

    // A put from the backend that has not looked since clears the deadline.
    apply(&first, &[put("alice", 2)]).await;
    assert_eq!(first.format_version(), 2);
    let got = StorageBackend::<String, u32>::load_keys_with_expiry(
        &second,
        &["alice".to_string(), "bob".to_string()],
    )
    .await
    .expect("loads");
    assert_eq!(got[0], ("alice".to_string(), Some((2, None))));
    assert_eq!(got[1], ("bob".to_string(), Some((1, Some(at(1_000))))));

    // Its next load with deadlines sees the column, and so do its writes.
    let seen = stored(&first).await;
    assert_eq!(seen.get("bob"), Some(&(1, Some(at(1_000)))));
    assert_eq!(first.format_version(), 4);
    apply(&first, &[sweep("bob", 2_000), put_until("carol", 3, 7_000)]).await;
    assert_eq!(
        stored(&second).await,
        expected(&[
            ("alice", 2, None),
            ("42", 42, None),
            ("carol", 3, Some(7_000))
        ])
    );

    // A backend that writes a deadline after another one added the column
    // does not add it twice.
    let third_dir = tempfile::tempdir().expect("tempdir");
    let path = copy_fixture(FIXTURE_0_2_0, &third_dir).await;
    let a = SqliteBackend::new(&path).await.expect("opens");
    let b = SqliteBackend::new(&path).await.expect("opens");
    apply(&a, &[put_until("alice", 1, 1_000)]).await;
    apply(&b, &[put_until("bob", 2, 2_000)]).await;
    assert_eq!(b.format_version(), 4);
    assert_eq!(
        stored(&b).await,
        expected(&[
            ("alice", 1, Some(1_000)),
            ("bob", 2, Some(2_000)),
            ("42", 42, None)
        ])
    );
    for backend in [first, second, a, b] {
        backend.close().await;
    }
}

#[tokio::test]
async fn a_damaged_deadline_is_an_error_naming_table_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = SqliteBackend::new(dir.path().join("ttl.db"))
        .await
        .expect("opens");
    apply(
        &backend,
        &[put_until("good", 1, 1_000), put_until("bad", 2, 1_000)],
    )
    .await;
    for damage in ["'soon'", "1.5", "x'00'"] {
        exec(
            &backend,
            &format!("UPDATE kv SET expires_at = {damage} WHERE key = 'bad'"),
        )
        .await;
        let err = StorageBackend::<String, u32>::load_with_expiry_into(&backend, &mut |_, _, _| {})
            .await
            .expect_err("a damaged deadline fails the load");
        let PersistentError::Corrupt { location, reason } = &err else {
            panic!("{damage}: expected Corrupt, got {err:?}");
        };
        let text = location.to_string();
        assert!(
            text.contains("table \"kv\"") && text.contains("bad"),
            "{damage}: {text}"
        );
        assert!(reason.contains("deadline"), "{damage}: {reason}");
        let err =
            StorageBackend::<String, u32>::load_keys_with_expiry(&backend, &["bad".to_string()])
                .await
                .expect_err("and a lookup of its key");
        assert!(matches!(err, PersistentError::Corrupt { .. }), "{err:?}");
    }
    // Reading without deadlines does not look at them; nothing was changed.
    let all = StorageBackend::<String, u32>::load_all(&backend)
        .await
        .expect("loads");
    assert_eq!(all.len(), 2);
    backend.close().await;
}

#[tokio::test]
async fn a_deadline_version_without_the_column_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = copy_fixture(FIXTURE_0_2_0, &dir).await;
    let backend = SqliteBackend::new(&path).await.expect("opens");
    exec(
        &backend,
        "UPDATE persistent_map_meta SET format_version = 4 WHERE table_name = 'kv'",
    )
    .await;
    backend.close().await;
    let err = SqliteBackend::new(&path).await.expect_err("refused");
    let PersistentError::Corrupt { reason, .. } = &err else {
        panic!("expected Corrupt, got {err:?}");
    };
    assert!(reason.contains("expires_at"), "{reason}");
}

/// A table created in the legacy key format (by a tool copying a legacy
/// table) is created as 0.2.0 created one, and gets the column the same way.
#[tokio::test]
async fn a_new_legacy_key_table_is_version_1_until_its_first_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = SqliteBackend::builder(dir.path().join("legacy.db"))
        .new_store_key_format(KeyFormat::Legacy)
        .build()
        .await
        .expect("opens");
    assert_eq!(backend.format_version(), 1);
    assert_eq!(
        schema(&backend).await,
        ["CREATE TABLE \"kv\" (key TEXT PRIMARY KEY, value TEXT NOT NULL)"]
    );
    apply(&backend, &[put_until("42", 1, 1_000)]).await;
    assert_eq!(backend.format_version(), 3);
    let backend = reopen(backend).await;
    assert_eq!(backend.key_format(), KeyFormat::Legacy);
    assert_eq!(stored(&backend).await, expected(&[("42", 1, Some(1_000))]));
    backend.close().await;
}
