//! Expiry on a real PostgreSQL server: deadlines stored in `expires_at`,
//! conditional sweeps, what other instances are told, and tables of older
//! formats (opened unchanged; format 3 moved to format 4 by its first
//! deadline, formats 1 and 2 without expiry).

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{url_or_skip, Scratch};
use persistent_map_core::codec::KeyFormat;
use persistent_map_core::{BatchOp, PersistentError, StorageBackend};
use persistent_map_postgres::PostgresBackend;

type Op = BatchOp<String, u32>;
type Entries = HashMap<String, (u32, Option<SystemTime>)>;

async fn open(scratch: &Scratch, table: &str) -> PostgresBackend {
    PostgresBackend::builder(&scratch.url)
        .schema(&scratch.schema)
        .table(table)
        .pool_size(2)
        .build()
        .await
        .expect("backend opens")
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Now, in whole milliseconds (as the map hands deadlines over).
fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(since.as_millis()).expect("fits")
}

fn put(key: &str, value: u32) -> Op {
    BatchOp::Put {
        key: key.to_owned(),
        value,
    }
}

fn put_expiring(key: &str, value: u32, ms: u64) -> Op {
    BatchOp::PutExpiring {
        key: key.to_owned(),
        value,
        expires_at: at(ms),
    }
}

fn sweep(key: &str, ms: u64) -> Op {
    BatchOp::DeleteExpired {
        key: key.to_owned(),
        now: at(ms),
    }
}

async fn apply(backend: &PostgresBackend, batch: &[Op]) {
    StorageBackend::<String, u32>::apply_batch(backend, batch)
        .await
        .expect("batch applies");
}

async fn entries(backend: &PostgresBackend) -> Entries {
    let mut all = HashMap::new();
    StorageBackend::<String, u32>::load_with_expiry_into(backend, &mut |k, v, d| {
        all.insert(k, (v, d));
    })
    .await
    .expect("loads");
    all
}

fn expect(list: &[(&str, u32, Option<u64>)]) -> Entries {
    list.iter()
        .map(|(k, v, d)| ((*k).to_owned(), (*v, d.map(at))))
        .collect()
}

async fn version(scratch: &Scratch, table: &str) -> i32 {
    let pool = sqlx::PgPool::connect(&scratch.url).await.expect("connect");
    let version = sqlx::query_scalar(&format!(
        "SELECT format_version FROM \"{}\".persistent_map_meta WHERE table_name = $1",
        scratch.schema
    ))
    .bind(table)
    .fetch_one(&pool)
    .await
    .expect("meta row");
    pool.close().await;
    version
}

/// The table's columns, and the definitions of its indexes.
async fn layout(scratch: &Scratch, table: &str) -> (Vec<String>, Vec<String>) {
    let pool = sqlx::PgPool::connect(&scratch.url).await.expect("connect");
    let columns = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
    )
    .bind(&scratch.schema)
    .bind(table)
    .fetch_all(&pool)
    .await
    .expect("columns");
    let indexes = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = $2 ORDER BY indexname",
    )
    .bind(&scratch.schema)
    .bind(table)
    .fetch_all(&pool)
    .await
    .expect("indexes");
    pool.close().await;
    (columns, indexes)
}

fn has_deadline_index(indexes: &[String]) -> bool {
    indexes
        .iter()
        .any(|i| i.contains("(expires_at)") && i.contains("WHERE (expires_at IS NOT NULL)"))
}

#[tokio::test]
async fn a_format_3_table_opens_unchanged_and_moves_to_format_4_with_its_first_deadline() {
    let Some(url) = url_or_skip("a_format_3_table_opens_unchanged") else {
        return;
    };
    let scratch = Scratch::new(url);
    common::create_pre_expiry_table(&scratch.url, &scratch.schema, "three", 3, &[("kept", "1")])
        .await;
    let before = layout(&scratch, "three").await;
    let backend = open(&scratch, "three").await;
    assert_eq!(backend.key_format(), KeyFormat::Distinct);
    assert!(StorageBackend::<String, u32>::capabilities(&backend).expiry);
    assert_eq!(entries(&backend).await, expect(&[("kept", 1, None)]));
    apply(&backend, &[put("plain", 2), sweep("kept", now_ms())]).await;
    assert_eq!(
        version(&scratch, "three").await,
        3,
        "opened and written unchanged"
    );
    assert_eq!(layout(&scratch, "three").await, before);

    let later = now_ms() + 3_600_000;
    apply(&backend, &[put_expiring("expiring", 3, later)]).await;
    assert_eq!(version(&scratch, "three").await, 4);
    let (columns, indexes) = layout(&scratch, "three").await;
    assert_eq!(columns, ["key", "value", "key_hash", "expires_at"]);
    assert!(has_deadline_index(&indexes), "{indexes:?}");
    drop(backend);

    let backend = open(&scratch, "three").await;
    assert_eq!(
        entries(&backend).await,
        expect(&[
            ("kept", 1, None),
            ("plain", 2, None),
            ("expiring", 3, Some(later))
        ])
    );
}

#[tokio::test]
async fn instances_that_opened_a_format_3_table_follow_its_move_by_another() {
    let Some(url) = url_or_skip("instances_that_opened_a_format_3_table_follow_its_move") else {
        return;
    };
    let scratch = Scratch::new(url);
    common::create_pre_expiry_table(&scratch.url, &scratch.schema, "three", 3, &[]).await;
    // All opened in format 3, before the move.
    let mover = open(&scratch, "three").await;
    let writer = open(&scratch, "three").await;
    let reader = open(&scratch, "three").await;
    let sweeper = open(&scratch, "three").await;
    let now = now_ms();
    let later = now + 3_600_000;
    apply(
        &mover,
        &[
            put_expiring("rewritten", 1, later),
            put_expiring("read", 2, later),
            put_expiring("swept", 3, now - 1),
        ],
    )
    .await;
    assert_eq!(version(&scratch, "three").await, 4);

    // Its put must clear the deadline the column now holds.
    apply(&writer, &[put("rewritten", 10)]).await;
    // Its read must return the deadlines.
    let got = StorageBackend::<String, u32>::load_keys_with_expiry(&reader, &["read".to_owned()])
        .await
        .expect("loads keys");
    assert_eq!(got, [("read".to_owned(), Some((2, Some(at(later)))))]);
    // Its sweep must see the deadline.
    apply(&sweeper, &[sweep("swept", now)]).await;

    let backend = open(&scratch, "three").await;
    assert_eq!(
        entries(&backend).await,
        expect(&[("rewritten", 10, None), ("read", 2, Some(later))])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_moving_a_table_at_once_both_succeed() {
    let Some(url) = url_or_skip("instances_moving_a_table_at_once_both_succeed") else {
        return;
    };
    let scratch = Scratch::new(url);
    common::create_pre_expiry_table(&scratch.url, &scratch.schema, "three", 3, &[]).await;
    let one = open(&scratch, "three").await;
    let two = open(&scratch, "three").await;
    let later = now_ms() + 3_600_000;
    let batch_one = [put_expiring("one", 1, later)];
    let batch_two = [put_expiring("two", 2, later)];
    let (a, b) = tokio::join!(
        StorageBackend::<String, u32>::apply_batch(&one, &batch_one),
        StorageBackend::<String, u32>::apply_batch(&two, &batch_two),
    );
    a.expect("first mover");
    b.expect("second mover");
    assert_eq!(version(&scratch, "three").await, 4);
    assert_eq!(
        entries(&open(&scratch, "three").await).await,
        expect(&[("one", 1, Some(later)), ("two", 2, Some(later))])
    );
}

#[tokio::test]
async fn tables_with_legacy_keys_have_no_expiry() {
    let Some(url) = url_or_skip("tables_with_legacy_keys_have_no_expiry") else {
        return;
    };
    let scratch = Scratch::new(url);
    common::create_pre_expiry_table(&scratch.url, &scratch.schema, "two", 2, &[("kept", "1")])
        .await;
    let before = layout(&scratch, "two").await;
    let backend = open(&scratch, "two").await;
    assert!(!StorageBackend::<String, u32>::capabilities(&backend).expiry);
    assert_eq!(entries(&backend).await, expect(&[("kept", 1, None)]));
    let err = StorageBackend::<String, u32>::apply_batch(
        &backend,
        &[put("plain", 2), put_expiring("x", 1, now_ms())],
    )
    .await
    .expect_err("no deadline in a legacy table");
    assert!(
        matches!(
            err,
            PersistentError::Unsupported {
                backend: "postgres",
                ..
            }
        ),
        "{err:?}"
    );
    // Nothing there can be expired: a sweep changes nothing.
    apply(&backend, &[sweep("kept", now_ms())]).await;
    assert_eq!(entries(&backend).await, expect(&[("kept", 1, None)]));
    assert_eq!(version(&scratch, "two").await, 2);
    assert_eq!(layout(&scratch, "two").await, before);

    // A table created in the legacy key format gets format 2, without expiry.
    let created = PostgresBackend::builder(&scratch.url)
        .schema(&scratch.schema)
        .table("legacy")
        .new_store_key_format(KeyFormat::Legacy)
        .build()
        .await
        .expect("opens");
    assert!(!StorageBackend::<String, u32>::capabilities(&created).expiry);
    assert_eq!(version(&scratch, "legacy").await, 2);
    assert_eq!(
        layout(&scratch, "legacy").await.0,
        ["key", "value", "key_hash"]
    );
}

#[tokio::test]
async fn an_undecodable_deadline_column_is_refused_naming_the_table() {
    let Some(url) = url_or_skip("an_undecodable_deadline_column_is_refused_naming_the_table")
    else {
        return;
    };
    let scratch = Scratch::new(url);
    let setup = sqlx::PgPool::connect(&scratch.url).await.expect("connect");
    // A deadline column of another type; one in a table with legacy keys;
    // none in a table recorded as format 4.
    for (table, recorded, column) in [
        ("texty", 4, Some("expires_at TEXT")),
        ("legacy", 2, Some("expires_at BIGINT")),
        ("dropped", 4, None),
    ] {
        common::create_pre_expiry_table(
            &scratch.url,
            &scratch.schema,
            table,
            recorded,
            &[("k", "1")],
        )
        .await;
        if let Some(column) = column {
            sqlx::query(&format!(
                "ALTER TABLE \"{}\".\"{table}\" ADD COLUMN {column}",
                scratch.schema
            ))
            .execute(&setup)
            .await
            .expect("alter");
        }
        let err = PostgresBackend::builder(&scratch.url)
            .schema(&scratch.schema)
            .table(table)
            .build()
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, PersistentError::Corrupt { location, .. }
                if location.store.contains(&format!("\"{table}\""))),
            "{err:?}"
        );
        assert_eq!(version(&scratch, table).await, recorded, "left as it was");
    }
    setup.close().await;
}
